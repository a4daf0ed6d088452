//! A small deterministic network of node cores on virtual time: every peer has
//! its own ledger replica (in memory) and real automerge sync; messages travel
//! through the same wire encoding the binary uses. Work the cores ask for is
//! answered by stand-ins: a run produces a result blob named by its contract (or
//! a wrong one for a cheating provider), a check compares it, a fetch succeeds.

#![allow(dead_code, clippy::unwrap_used)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use crdt_ledger::{Genesis, GenesisEntry, Ledger, MemStore, Params};
use node_core::{
    CoreConfig, Direct, Fetched, Input, NodeCore, Output, PreparedJob, RanJob, Timing, Via,
};
use protocol::market::{PricingConfig, ProviderConfig};
use protocol::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub const T0: Timestamp = Timestamp(1_767_225_600_000);
/// One-way delay of every message.
pub const HOP: DurationMs = DurationMs(5);
/// How often every core gets a tick (as the binary's loop does).
pub const TICK: DurationMs = DurationMs(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Oracle,
    Provider { cheat: bool },
    Requester,
}

/// The network most tests use: three oracles (the committee), a provider and
/// a requester.
pub const ROLES: [Role; 5] = [
    Role::Oracle,
    Role::Oracle,
    Role::Oracle,
    Role::Provider { cheat: false },
    Role::Requester,
];
pub const PROV: usize = 3;
pub const REQ: usize = 4;
/// A requester's genesis balance: 1,000 tokens.
pub const TOKENS: u64 = 1_000_000_000;

/// Where the requester's job `job` stands.
pub fn state(net: &Net, job: &Hash32) -> node_core::JobState {
    let n = &net.nodes[REQ];
    n.job(job).unwrap().state(n.requester())
}

/// Whether one of the requester's events of job `job` contains `phrase`;
/// `Err` lists the events, for the assert's message.
pub fn told(net: &Net, job: &Hash32, phrase: &str) -> Result<(), String> {
    let events = &net.nodes[REQ].job(job).unwrap().events;
    if events.iter().any(|(_, e)| e.contains(phrase)) {
        Ok(())
    } else {
        Err(format!("no event says {phrase:?}: {events:?}"))
    }
}

/// Decides whether a message from `from` reaches `to` (true: it does).
pub type Filter = Box<dyn Fn(usize, usize, &Message) -> bool>;
/// What becomes of a direct message other than a protocol frame (ledger sync,
/// the committee's traffic): delivered after `Some(extra delay)`, or lost.
pub type DirectFilter = Box<dyn FnMut(Timestamp, usize, usize, &Direct) -> Option<DurationMs>>;
/// Whether the samples `seeds` name land on a faked part of a receipt's work.
pub type Faked = Box<dyn Fn(&protocol::Receipt, &[u64]) -> bool>;

pub struct Net {
    pub now: Timestamp,
    pub nodes: Vec<NodeCore<MemStore>>,
    pub roles: Vec<Role>,
    pub ids: Vec<Identity>,
    by_account: HashMap<AccountId, usize>,
    rng: ChaCha8Rng,
    queue: BinaryHeap<Reverse<(Timestamp, u64)>>,
    pending: HashMap<u64, (usize, Input)>,
    seq: u64,
    next_tick: Timestamp,
    /// Gossip is delivered as direct messages instead (to show both take one path).
    pub gossip_as_direct: bool,
    pub filter: Option<Filter>,
    pub direct_filter: Option<DirectFilter>,
    /// Every message delivered: (from, to, via, kind).
    pub log: Vec<(usize, usize, Via, &'static str)>,
    pub genesis: GenesisEntry,
    /// Peers that are down: they get nothing, and the work they started dies
    /// with them.
    pub down: Vec<bool>,
    /// Each peer's last persisted state, and how many times it saved one.
    pub saved: Vec<Option<Vec<u8>>>,
    pub saves: Vec<u32>,
    /// Each peer's incarnation: work started by an earlier one is dropped.
    life: Vec<u32>,
    /// The incarnation each pending event was scheduled for.
    event_life: HashMap<u64, u32>,
    /// How long a provider's run takes.
    pub run_time: DurationMs,
    /// Every run started: (peer, contract).
    pub runs: Vec<(usize, Hash32)>,
    /// A result faked in part: whether the samples `seeds` name land on a
    /// faked part of the receipt's work (the check then fails).
    pub faked: Option<Faked>,
    /// Every check handed to a driver: (member, seeds).
    pub checks: Vec<(usize, Vec<u64>)>,
    /// Runs fail for good (the run's error, not a crash).
    pub runs_fail: bool,
    /// Every message handed to the network, as it went: (arrival, to,
    /// from, gossip or direct).
    pub tape: Vec<(Timestamp, usize, AccountId, Wire)>,
}

/// A message as it travelled.
#[derive(Debug, Clone)]
pub enum Wire {
    Gossip(Message),
    Direct(Direct),
}

pub fn genesis(ids: &[Identity], roles: &[Role], requester_micro: u64) -> GenesisEntry {
    genesis_bonded(ids, roles, requester_micro, REQUESTER_BOND)
}

/// [`genesis`] with each requester bonding `requester_bond`.
pub fn genesis_bonded(
    ids: &[Identity],
    roles: &[Role],
    requester_micro: u64,
    requester_bond: Amount,
) -> GenesisEntry {
    genesis_with(ids, roles, requester_micro, requester_bond, |_| {})
}

/// [`genesis_bonded`] with its parameters changed by `f`.
pub fn genesis_with(
    ids: &[Identity],
    roles: &[Role],
    requester_micro: u64,
    requester_bond: Amount,
    f: impl FnOnce(&mut Params),
) -> GenesisEntry {
    let mut params = Params {
        epoch_length: DurationMs::secs(5),
        stall_timeout: DurationMs::secs(3),
        // One seat per oracle (three in most tests), at most seven.
        committee_size: roles
            .iter()
            .filter(|r| **r == Role::Oracle)
            .count()
            .clamp(1, 7) as u16,
        ..Params::default()
    };
    f(&mut params);
    let mut balances = Vec::new();
    let mut stakes = Vec::new();
    let mut bonds = Vec::new();
    for (id, r) in ids.iter().zip(roles) {
        match r {
            Role::Oracle => {
                balances.push((id.account(), Amount::tokens(10)));
                stakes.push((id.account(), params.min_stake));
            }
            Role::Provider { .. } => balances.push((id.account(), Amount::tokens(10))),
            // A requester's bond backs its escrows before they are final:
            // providers start on them at once.
            Role::Requester => {
                balances.push((id.account(), Amount(requester_micro)));
                if requester_bond > Amount::ZERO {
                    bonds.push((id.account(), requester_bond));
                }
            }
        }
    }
    balances.sort_by_key(|(a, _)| *a);
    stakes.sort_by_key(|(a, _)| *a);
    bonds.sort_by_key(|(a, _)| *a);
    GenesisEntry::create(
        &Identity::from_seed(999),
        Genesis {
            name: "core-tests".into(),
            genesis_time: T0,
            params,
            balances,
            stakes,
            bonds,
        },
    )
    .unwrap()
}

/// Each requester's bond at genesis.
pub const REQUESTER_BOND: Amount = Amount::tokens(10);

pub fn provider_config(account: &AccountId) -> ProviderConfig {
    ProviderConfig {
        contact: vec![format!("provider-{}", account.short())],
        offer_ttl: DurationMs::secs(60),
        pricing: PricingConfig {
            cost: PricePerCu(10),
            initial: PricePerCu(20),
            ..PricingConfig::default()
        },
        ..ProviderConfig::default()
    }
}

/// A peer's core of role `r` around `ledger`.
pub fn core(id: &Identity, r: Role, ledger: Ledger<MemStore>) -> NodeCore<MemStore> {
    NodeCore::new(
        id.clone(),
        ledger,
        CoreConfig {
            provider: matches!(r, Role::Provider { .. }).then(|| provider_config(&id.account())),
            oracle: r == Role::Oracle,
            bond: Amount::tokens(5),
            contact: vec![format!("peer-{}", id.account().short())],
            timing: Timing::quick(),
            book: Default::default(),
            persist: true,
            submits: true,
        },
    )
}

impl Net {
    /// A network of `roles`; requesters start with `requester_micro` µ-tokens.
    pub fn new(roles: &[Role], requester_micro: u64, seed: u64) -> Net {
        Net::new_bonded(roles, requester_micro, seed, REQUESTER_BOND)
    }

    /// [`Net::new`] with each requester bonding `requester_bond` at genesis.
    pub fn new_bonded(
        roles: &[Role],
        requester_micro: u64,
        seed: u64,
        requester_bond: Amount,
    ) -> Net {
        Net::new_with(roles, requester_micro, seed, requester_bond, |_| {})
    }

    /// [`Net::new_bonded`] with the genesis parameters changed by `f`.
    pub fn new_with(
        roles: &[Role],
        requester_micro: u64,
        seed: u64,
        requester_bond: Amount,
        f: impl FnOnce(&mut Params),
    ) -> Net {
        let ids: Vec<Identity> = (0..roles.len())
            .map(|i| Identity::from_seed(seed * 1000 + i as u64))
            .collect();
        let g = genesis_with(&ids, roles, requester_micro, requester_bond, f);
        let nodes = ids
            .iter()
            .zip(roles)
            .map(|(id, r)| core(id, *r, Ledger::new(g.clone(), &id.account().0).unwrap()))
            .collect();
        let by_account = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.account(), i))
            .collect();
        let mut net = Net {
            now: T0,
            nodes,
            roles: roles.to_vec(),
            ids,
            by_account,
            rng: ChaCha8Rng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            pending: HashMap::new(),
            seq: 0,
            next_tick: T0,
            gossip_as_direct: false,
            filter: None,
            direct_filter: None,
            faked: None,
            checks: Vec::new(),
            runs_fail: false,
            tape: Vec::new(),
            log: Vec::new(),
            genesis: g,
            down: vec![false; roles.len()],
            saved: vec![None; roles.len()],
            saves: vec![0; roles.len()],
            life: vec![0; roles.len()],
            event_life: HashMap::new(),
            run_time: DurationMs(100),
            runs: Vec::new(),
        };
        for i in 0..roles.len() {
            net.at(T0, i, Input::Start);
            for j in 0..roles.len() {
                if i != j {
                    let a = net.ids[j].account();
                    net.at(T0, i, Input::PeerUp(a));
                }
            }
        }
        net
    }

    pub fn index(&self, a: &AccountId) -> Option<usize> {
        self.by_account.get(a).copied()
    }

    fn at(&mut self, t: Timestamp, node: usize, input: Input) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq)));
        self.pending.insert(self.seq, (node, input));
        self.event_life.insert(self.seq, self.life[node]);
    }

    /// Peer `i` crashes: it gets nothing until [`Net::restart`], and what it
    /// was doing is lost (its ledger keeps what it had made durable).
    pub fn kill(&mut self, i: usize) {
        self.down[i] = true;
        self.life[i] += 1;
    }

    /// Peer `i` starts again from its ledger's store and its last saved state.
    pub fn restart(&mut self, i: usize) {
        let id = self.ids[i].clone();
        let placeholder = core(
            &id,
            self.roles[i],
            Ledger::new(self.genesis.clone(), &id.account().0).unwrap(),
        );
        let old = std::mem::replace(&mut self.nodes[i], placeholder);
        let store = old.into_ledger().into_store();
        let (ledger, _) = Ledger::open(self.genesis.clone(), &id.account().0, store).unwrap();
        self.nodes[i] = core(&id, self.roles[i], ledger);
        self.down[i] = false;
        if let Some(bytes) = self.saved[i].clone() {
            let mut out = Vec::new();
            let now = self.now;
            self.nodes[i]
                .restore(now, &bytes, &mut self.rng, &mut out)
                .unwrap();

            self.carry(i, out);
        }
        self.handle(i, Input::Start);
        for j in 0..self.nodes.len() {
            if j != i && !self.down[j] {
                let (a, b) = (self.ids[j].account(), self.ids[i].account());
                self.handle(i, Input::PeerUp(a));
                self.handle(j, Input::PeerUp(b));
            }
        }
    }

    /// Run until `until`, or until `done` holds (checked after every event).
    pub fn run(&mut self, until: Timestamp, mut done: impl FnMut(&mut Net) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let next_ev = self.queue.peek().map(|Reverse((t, _))| *t);
            let t = match next_ev {
                Some(t) if t < self.next_tick => t,
                _ => self.next_tick,
            };
            if t > until {
                return false;
            }
            self.now = t;
            if next_ev == Some(t) && t < self.next_tick {
                let Some(Reverse((_, s))) = self.queue.pop() else {
                    continue;
                };
                let (node, input) = self.pending.remove(&s).unwrap();
                let life = self.event_life.remove(&s).unwrap();
                if self.down[node] || life != self.life[node] {
                    continue; // lost in a crash
                }
                self.handle(node, input);
            } else {
                self.next_tick = t.plus(TICK);
                for i in 0..self.nodes.len() {
                    if !self.down[i] {
                        self.handle(i, Input::Tick);
                    }
                }
            }
        }
    }

    pub fn handle(&mut self, i: usize, input: Input) {
        let _peer = tracing::info_span!("peer", i, t = self.now.0 - T0.0).entered();
        let mut out = Vec::new();
        let now = self.now;
        self.nodes[i].handle(now, input, &mut self.rng, &mut out);
        self.carry(i, out);
    }

    pub fn submit(&mut self, i: usize, spec: JobSpec) -> Hash32 {
        let mut out = Vec::new();
        let now = self.now;
        let id = self.nodes[i]
            .submit(
                now,
                PreparedJob {
                    spec,
                    key: node_core::JobKey::from_bytes([i as u8 + 1; 32]),
                    note: "stand-in inputs".into(),
                },
                &mut self.rng,
                &mut out,
            )
            .unwrap();
        self.carry(i, out);
        id
    }

    fn deliver(&mut self, from: usize, to: usize, via: Via, msg: Message) {
        if let Some(f) = &self.filter
            && !f(from, to, &msg)
        {
            return;
        }
        self.log.push((from, to, via, msg.kind()));
        let t = self.now.plus(HOP);
        let account = self.ids[from].account();
        let (wire, input) = match via {
            Via::Gossip => (Wire::Gossip(msg.clone()), Input::gossip(Some(account), msg)),
            Via::Direct => {
                let d = Direct::Frame(protocol::Frame::new(self.genesis.network(), msg));
                (Wire::Direct(d.clone()), Input::direct(account, d))
            }
        };
        self.tape.push((t, to, account, wire));
        self.at(t, to, input);
    }

    fn carry(&mut self, i: usize, out: Vec<Output>) {
        let network = self.genesis.network();
        for o in out {
            match o {
                Output::Publish(m) => {
                    let via = if self.gossip_as_direct {
                        Via::Direct
                    } else {
                        Via::Gossip
                    };
                    for j in 0..self.nodes.len() {
                        if j != i {
                            self.deliver(i, j, via, m.clone());
                        }
                    }
                }
                Output::Send { to, msg } => {
                    let Some(j) = self.index(&to) else { continue };
                    // Through the wire encoding, as the binary sends it.
                    let bytes = msg.to_bytes().unwrap();
                    let from = self.ids[i].account();
                    match Direct::from_bytes(&bytes, &network).unwrap() {
                        Direct::Frame(f) => self.deliver(i, j, Via::Direct, f.message),
                        d => {
                            if matches!(d, Direct::Challenge { .. }) {
                                self.log.push((i, j, Via::Direct, "challenge"));
                            }
                            let mut extra = DurationMs(0);
                            if let Some(f) = self.direct_filter.as_mut() {
                                match f(self.now, i, j, &d) {
                                    Some(d) => extra = d,
                                    None => continue,
                                }
                            }
                            let t = self.now.plus(HOP).plus(extra);
                            self.tape.push((t, j, from, Wire::Direct(d.clone())));
                            self.at(t, j, Input::direct(from, d));
                        }
                    }
                }
                Output::Run {
                    contract, terms, ..
                } => {
                    self.runs.push((i, contract));
                    let cheat = matches!(self.roles[i], Role::Provider { cheat: true });
                    let result = BlobRef {
                        hash: result_hash(&contract, cheat),
                        size: 1_000,
                    };
                    let t = self.now.plus(self.run_time);
                    if self.runs_fail {
                        let e = node_core::WorkError::fatal("out of memory (stand-in)");
                        self.at(
                            t,
                            i,
                            Input::Ran {
                                contract,
                                result: Err(e),
                            },
                        );
                        continue;
                    }
                    self.at(
                        t,
                        i,
                        Input::Ran {
                            contract,
                            result: Ok(RanJob {
                                result,
                                units: terms.max_units,
                                commitment: result.hash,
                                checkpoint_every: 1,
                                checkpoints: 1,
                                inputs_ready_at: self.now,
                                started_at: self.now,
                                secs: 0.1,
                                backend: "stand-in".into(),
                            }),
                        },
                    );
                }
                Output::Check {
                    contract,
                    receipt,
                    seeds,
                    ..
                } => {
                    self.checks.push((i, seeds.clone()));
                    let faked = self.faked.as_ref().is_some_and(|f| f(&receipt, &seeds));
                    let ok = receipt.result.hash == result_hash(&contract, false) && !faked;
                    let t = self.now.plus(DurationMs(50));
                    let result = if ok {
                        Ok("the stand-in result matches".to_string())
                    } else {
                        Err(node_core::WorkError::fatal("the stand-in result differs"))
                    };
                    self.at(t, i, Input::Checked { contract, result });
                }
                Output::FetchResult { job, receipt, .. } => {
                    let t = self.now.plus(DurationMs(20));
                    let result = Ok(Fetched {
                        path: format!("results/{}", job.short()).into(),
                        bytes: receipt.result.size,
                        metrics: serde_json::Value::Null,
                        summary: "fetched (stand-in)".into(),
                    });
                    self.at(t, i, Input::Fetched { job, result });
                }
                Output::Persist(bytes) => {
                    self.saved[i] = Some(bytes);
                    self.saves[i] += 1;
                }
                other => panic!("an output the harness does not know: {other:?}"),
            }
        }
    }

    /// Every account's balance + stake + escrow, from node `i`'s replica.
    pub fn balances(&mut self, i: usize) -> BTreeMap<AccountId, Amount> {
        let st = self.nodes[i].ledger().state().clone();
        st.balances.clone()
    }

    /// Whether `kind` went from `from` to `to`.
    pub fn sent(&self, from: usize, to: usize, kind: &str) -> bool {
        self.log
            .iter()
            .any(|(f, t, _, k)| *f == from && *t == to && *k == kind)
    }

    pub fn job_spec(&self, requester: usize, units: u64, max_price: u64) -> JobSpec {
        JobSpec {
            requester: self.ids[requester].account(),
            kind: JobKind::Infer { batch: 16 },
            model: None,
            dataset: BlobRef {
                hash: Hash32::of(b"dataset"),
                size: 1_000,
            },
            estimated_units: ComputeUnits::from_milli(units * 1000),
            result_bytes: 1 << 20,
            max_price: PricePerCu(max_price),
            deadline: self.now.plus(DurationMs::secs(60)),
            sla: SlaRequirement {
                min_availability: Bps(9_000),
                min_penalty: Bps(500),
            },
            privacy: None,
            issued_at: self.now,
            expires_at: self.now.plus(DurationMs::secs(60)),
            nonce: 7,
        }
    }
}

/// The stand-in result of a contract (a cheater's differs).
pub fn result_hash(contract: &Hash32, wrong: bool) -> Hash32 {
    Hash32::of(&[&contract.0[..], if wrong { b"wrong" } else { b"right" }].concat())
}
