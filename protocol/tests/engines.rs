//! Full contract lifecycles: 3 providers, 2 requesters and a 3-member oracle
//! committee, driven through a small in-test event queue on virtual time.
//!
//! Each job's dataset names how its provider behaves (the test's provider driver
//! reads it): on time, late, with a wrong result, or not at all.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
#![allow(clippy::collapsible_match, clippy::map_entry)] // the event router reads better flat

mod common;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use protocol::market::{
    AnyDeal, FailReason, Phase, PrivacySpend, ProviderConfig, ProviderEngine, ProviderInput,
    ProviderOutput, RequesterConfig, RequesterEngine, RequesterInput, RequesterOutput,
    UniformReputation,
};
use protocol::oracle::{
    CheckResult, OracleConfig, OracleEngine, OracleInput, OracleOutput, SettlementInstruction,
};
use protocol::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const LATENCY: DurationMs = DurationMs(50);

/// `(recipient, body)` of the first `Message::$kind` that an engine's `out` sends.
macro_rules! sent {
    ($out:expr, $output:ident, $kind:ident) => {
        $out.iter()
            .find_map(|o| match o {
                $output::Send {
                    to,
                    message: Message::$kind(m),
                } => Some((*to, m.clone())),
                _ => None,
            })
            .expect(concat!("no ", stringify!($kind), " was sent"))
    };
}

fn net() -> NetworkId {
    NetworkId::named("engines-test")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Behaviour {
    OnTime,
    Late,
    Wrong,
    Vanish,
    WrongDisputed,
}

impl Behaviour {
    fn dataset(self) -> BlobRef {
        BlobRef {
            hash: Hash32::of(format!("dataset-{self:?}").as_bytes()),
            size: 10 << 20,
        }
    }
    fn of(spec: &JobSpec) -> Behaviour {
        [
            Behaviour::OnTime,
            Behaviour::Late,
            Behaviour::Wrong,
            Behaviour::Vanish,
            Behaviour::WrongDisputed,
        ]
        .into_iter()
        .find(|b| b.dataset() == spec.dataset)
        .unwrap()
    }
}

fn wrong_blob() -> BlobRef {
    BlobRef {
        hash: Hash32::of(b"a wrong result"),
        size: 100,
    }
}

type Checker = fn(&ContractTerms, &Receipt) -> CheckResult;

fn checker(_: &ContractTerms, r: &Receipt) -> CheckResult {
    if r.result == wrong_blob() {
        CheckResult::Wrong
    } else {
        CheckResult::Correct
    }
}

#[derive(Debug)]
enum Ev {
    Msg {
        to: usize,
        msg: Box<Message>,
    },
    Timer(usize),
    Finished {
        p: usize,
        contract: Hash32,
        result: BlobRef,
        units: ComputeUnits,
        started: Timestamp,
    },
    Settlement {
        to: usize,
        si: Box<SettlementInstruction>,
    },
    Submit {
        r: usize,
        spec: Box<JobSpec>,
    },
}

struct World {
    now: Timestamp,
    seq: u64,
    queue: BinaryHeap<Reverse<(Timestamp, u64, usize)>>,
    events: HashMap<usize, Ev>,
    providers: Vec<ProviderEngine>,
    requesters: Vec<RequesterEngine>,
    oracles: Vec<OracleEngine<Checker>>,
    index: HashMap<AccountId, usize>,
    rng: ChaCha8Rng,
    rep: UniformReputation,
    settlements: BTreeMap<Hash32, SettlementInstruction>,
    /// Every settlement instruction emitted, per contract (to compare members').
    all_settlements: Vec<SettlementInstruction>,
    no_match: usize,
    failed: Vec<(Hash32, FailReason)>,
    jobs: HashMap<Hash32, Behaviour>,
    contract_of: HashMap<Hash32, (usize, Behaviour)>,
}

// Node numbering: providers 0..3, requesters 3..5, oracles 5..8.
const P: usize = 3;
const R: usize = 2;
const O: usize = 3;

impl World {
    fn new(verify_share: Bps, seed: u64) -> Self {
        Self::build(verify_share, seed, true)
    }

    fn build(verify_share: Bps, seed: u64, verify_signatures: bool) -> Self {
        let network = net();
        let mut index = HashMap::new();
        let providers: Vec<_> = (0..P)
            .map(|i| {
                let id = Identity::from_seed(100 + i as u64);
                index.insert(id.account(), i);
                ProviderEngine::new(
                    id,
                    network,
                    ProviderConfig {
                        slots: 2,
                        queue_capacity: 2,
                        verify_signatures,
                        ..ProviderConfig::default()
                    },
                )
            })
            .collect();
        let requesters: Vec<_> = (0..R)
            .map(|i| {
                let id = Identity::from_seed(200 + i as u64);
                index.insert(id.account(), P + i);
                RequesterEngine::new(
                    id,
                    network,
                    RequesterConfig {
                        grace: DurationMs::secs(300),
                        verify_signatures,
                        ..RequesterConfig::default()
                    },
                )
            })
            .collect();
        let cfg = OracleConfig {
            verify_share,
            grace: DurationMs::secs(300),
            fee: Bps(200),
            verify_signatures,
            ..OracleConfig::default()
        };
        let oracles: Vec<_> = (0..O)
            .map(|i| {
                let id = Identity::from_seed(300 + i as u64);
                index.insert(id.account(), P + R + i);
                OracleEngine::new(id, network, cfg, checker as Checker)
            })
            .collect();
        let mut w = World {
            now: Timestamp(1_700_000_000_000),
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            providers,
            requesters,
            oracles,
            index,
            rng: ChaCha8Rng::seed_from_u64(seed),
            rep: UniformReputation(0.9),
            settlements: BTreeMap::new(),
            all_settlements: Vec::new(),
            no_match: 0,
            failed: Vec::new(),
            jobs: HashMap::new(),
            contract_of: HashMap::new(),
        };
        let committee: Vec<AccountId> = w.oracles.iter().map(|o| o.account()).collect();
        for o in 0..O {
            let now = w.now;
            let out = w.oracles[o].handle(
                now,
                OracleInput::Epoch {
                    epoch: 1,
                    committee: committee.clone(),
                    beacon: Hash32::of(b"beacon"),
                },
                &mut w.rng,
            );
            w.route_oracle(P + R + o, out);
        }
        for p in 0..P {
            let now = w.now;
            let out = w.providers[p].handle(now, ProviderInput::Start, &mut w.rng);
            w.route_provider(p, out);
        }
        w
    }

    fn push(&mut self, at: Timestamp, ev: Ev) {
        self.seq += 1;
        self.events.insert(self.seq as usize, ev);
        self.queue.push(Reverse((at, self.seq, self.seq as usize)));
    }

    fn send(&mut self, to: &AccountId, msg: Message) {
        let to = self.index[to];
        self.push(
            self.now.plus(LATENCY),
            Ev::Msg {
                to,
                msg: Box::new(msg),
            },
        );
    }

    fn publish(&mut self, from: usize, msg: Message) {
        for to in 0..P + R + O {
            if to != from {
                self.push(
                    self.now.plus(LATENCY),
                    Ev::Msg {
                        to,
                        msg: Box::new(msg.clone()),
                    },
                );
            }
        }
    }

    fn route_provider(&mut self, p: usize, out: Vec<ProviderOutput>) {
        for o in out {
            match o {
                ProviderOutput::Publish(m) => self.publish(p, m),
                ProviderOutput::Send { to, message } => self.send(&to, message),
                ProviderOutput::ScheduleTimer { at } => self.push(at, Ev::Timer(p)),
                ProviderOutput::Run { contract, terms } => {
                    let b = Behaviour::of(&terms.spec);
                    // 90% of the estimated units are used.
                    let units = ComputeUnits::from_milli(terms.max_units.milli * 9 / 10);
                    let run = DurationMs(units.milli / 1_000);
                    let result = BlobRef {
                        hash: Hash32::of(&contract.0),
                        size: 1_000,
                    };
                    let started = self.now;
                    match b {
                        Behaviour::OnTime => self.push(
                            self.now.plus(run),
                            Ev::Finished {
                                p,
                                contract,
                                result,
                                units,
                                started,
                            },
                        ),
                        Behaviour::Late => self.push(
                            terms.deadline.plus(DurationMs::secs(90)),
                            Ev::Finished {
                                p,
                                contract,
                                result,
                                units,
                                started,
                            },
                        ),
                        Behaviour::Wrong | Behaviour::WrongDisputed => self.push(
                            self.now.plus(run),
                            Ev::Finished {
                                p,
                                contract,
                                result: wrong_blob(),
                                units,
                                started,
                            },
                        ),
                        Behaviour::Vanish => {}
                    }
                }
                _ => {}
            }
        }
    }

    fn route_requester(&mut self, r: usize, out: Vec<RequesterOutput>) {
        for o in out {
            match o {
                RequesterOutput::Publish(m) => {
                    if let Message::Contract(c) = &m {
                        let terms = c.body_unverified().unwrap();
                        let b = self.jobs[&terms.job];
                        self.contract_of.insert(c.body_hash(), (r, b));
                    }
                    self.publish(r, m)
                }
                RequesterOutput::Send { to, message } => self.send(&to, message),
                RequesterOutput::ScheduleTimer { at } => self.push(at, Ev::Timer(r)),
                RequesterOutput::NoMatch { .. } => self.no_match += 1,
                RequesterOutput::Failed { contract, reason } => {
                    self.failed.push((contract, reason))
                }
                RequesterOutput::Delivered { contract, .. } => {
                    if self.contract_of.get(&contract).map(|x| x.1)
                        == Some(Behaviour::WrongDisputed)
                    {
                        let out = self.requesters[r - P].handle(
                            self.now,
                            RequesterInput::Dispute {
                                contract,
                                reason: DisputeReason::WrongResult,
                            },
                            &self.rep,
                            &mut self.rng,
                        );
                        self.route_requester(r, out);
                    }
                }
                _ => {}
            }
        }
    }

    fn route_oracle(&mut self, o: usize, out: Vec<OracleOutput>) {
        for x in out {
            match x {
                OracleOutput::Publish(m) => self.publish(o, m),
                OracleOutput::Send { to, message } => self.send(&to, message),
                OracleOutput::ScheduleTimer { at } => self.push(at, Ev::Timer(o)),
                OracleOutput::Settle(si) => {
                    self.all_settlements.push((*si).clone());
                    if !self.settlements.contains_key(&si.contract) {
                        self.settlements.insert(si.contract, (*si).clone());
                        let r = self.index[&si.terms.requester];
                        let p = self.index[&si.terms.provider];
                        self.push(
                            self.now.plus(LATENCY),
                            Ev::Settlement {
                                to: r,
                                si: si.clone(),
                            },
                        );
                        self.push(self.now.plus(LATENCY), Ev::Settlement { to: p, si });
                    }
                }
                _ => {}
            }
        }
    }

    fn deliver(&mut self, to: usize, msg: Message) {
        let now = self.now;
        if to < P {
            let input = match msg {
                Message::Proposal(x) => ProviderInput::Proposal(x),
                Message::Bid(x) => ProviderInput::Bid(x),
                Message::Answer(x) => ProviderInput::Answer(x),
                Message::Contract(x) => ProviderInput::Contract(x),
                Message::Probe(x) => ProviderInput::Probe(x),
                Message::Offer(x) => {
                    let o = x.body_unverified().unwrap();
                    ProviderInput::CompetitorPrice {
                        provider: o.provider,
                        class: o.class,
                        price: o.price,
                    }
                }
                _ => return,
            };
            let out = self.providers[to].handle(now, input, &mut self.rng);
            self.route_provider(to, out);
        } else if to < P + R {
            let input = match msg {
                Message::Offer(x) => RequesterInput::Offer(x),
                Message::Answer(x) => RequesterInput::Answer(x),
                Message::Proposal(x) => RequesterInput::Proposal(x),
                Message::Contract(x) => RequesterInput::Contract(x),
                Message::Receipt(x) => RequesterInput::Receipt(x),
                _ => return,
            };
            let out = self.requesters[to - P].handle(now, input, &self.rep, &mut self.rng);
            self.route_requester(to, out);
        } else {
            let input = match msg {
                Message::Contract(x) => OracleInput::Contract(x),
                Message::Receipt(x) => OracleInput::Receipt(x),
                Message::ProbeReply(x) => OracleInput::ProbeReply(x),
                Message::Dispute(x) => OracleInput::Dispute(x),
                Message::Verdict(x) => OracleInput::Verdict(x),
                _ => return,
            };
            let out = self.oracles[to - P - R].handle(now, input, &mut self.rng);
            self.route_oracle(to, out);
        }
    }

    fn step(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Msg { to, msg } => self.deliver(to, *msg),
            Ev::Timer(n) => {
                if n < P {
                    if self.providers[n].poll_timeout().is_some_and(|t| t <= now) {
                        let out = self.providers[n].handle_timeout(now, &mut self.rng);
                        self.route_provider(n, out);
                    }
                } else if n < P + R {
                    if self.requesters[n - P]
                        .poll_timeout()
                        .is_some_and(|t| t <= now)
                    {
                        let out =
                            self.requesters[n - P].handle_timeout(now, &self.rep, &mut self.rng);
                        self.route_requester(n, out);
                    }
                } else if self.oracles[n - P - R]
                    .poll_timeout()
                    .is_some_and(|t| t <= now)
                {
                    let out = self.oracles[n - P - R].handle_timeout(now, &mut self.rng);
                    self.route_oracle(n, out);
                }
            }
            Ev::Finished {
                p,
                contract,
                result,
                units,
                started,
            } => {
                let out = self.providers[p].handle(
                    now,
                    ProviderInput::Finished {
                        contract,
                        result,
                        units_used: units,
                        commitment: Hash32::of(b"chain"),
                        checkpoint_every: 1,
                        checkpoints: 1,
                        inputs_ready_at: started,
                        started_at: started,
                    },
                    &mut self.rng,
                );
                self.route_provider(p, out);
            }
            Ev::Settlement { to, si } => {
                if to < P {
                    let out = self.providers[to].handle(
                        now,
                        ProviderInput::Settlement(si),
                        &mut self.rng,
                    );
                    self.route_provider(to, out);
                } else {
                    let out = self.requesters[to - P].handle(
                        now,
                        RequesterInput::Settlement(si),
                        &self.rep,
                        &mut self.rng,
                    );
                    self.route_requester(to, out);
                }
            }
            Ev::Submit { r, spec } => {
                let out = self.requesters[r].handle(
                    now,
                    RequesterInput::Submit(spec),
                    &self.rep,
                    &mut self.rng,
                );
                self.route_requester(P + r, out);
            }
        }
    }

    fn run_until(&mut self, end: Timestamp) {
        while let Some(Reverse((at, _, key))) = self.queue.peek().copied() {
            if at > end {
                break;
            }
            self.queue.pop();
            self.now = self.now.max(at);
            let ev = self.events.remove(&key).unwrap();
            self.step(ev);
        }
        self.now = end;
    }

    fn submit(&mut self, r: usize, b: Behaviour, at: Timestamp) {
        let requester = self.requesters[r].account();
        let spec = JobSpec {
            requester,
            kind: JobKind::Infer { batch: 8 },
            model: None,
            dataset: b.dataset(),
            estimated_units: ComputeUnits::from_milli(60_000_000),
            result_bytes: 1 << 20,
            max_price: PricePerCu(1_000),
            deadline: at.plus(DurationMs::secs(600)),
            sla: SlaRequirement {
                min_availability: Bps(5_000),
                min_penalty: Bps(500),
            },
            privacy: None,
            issued_at: at,
            expires_at: at.plus(DurationMs::secs(300)),
            nonce: b as u64,
        };
        // The job id is the signed envelope's; keep it for routing.
        let signed = Signed::sign(&Identity::from_seed(200 + r as u64), &net(), &spec).unwrap();
        self.jobs.insert(signed.id(), b);
        self.push(
            at,
            Ev::Submit {
                r,
                spec: Box::new(spec),
            },
        );
    }

    fn settlement_for(&self, b: Behaviour) -> &SettlementInstruction {
        let (id, _) = self.contract_of.iter().find(|(_, (_, x))| *x == b).unwrap();
        &self.settlements[id]
    }

    fn requester_deal(&self, b: Behaviour) -> &AnyDeal {
        let (id, (r, _)) = self.contract_of.iter().find(|(_, (_, x))| *x == b).unwrap();
        self.requesters[r - P].deal(id).unwrap()
    }
}

fn check_conservation(si: &SettlementInstruction) {
    let p = &si.payout;
    assert_eq!(p.total(), Some(p.escrow), "{p:?}");
    assert_eq!(Some(p.escrow), si.terms.escrow());
}

#[test]
fn full_lifecycles_happy_late_wrong_vanished() {
    let mut w = World::new(Bps(10_000), 1);
    let t0 = w.now.plus(DurationMs::secs(1));
    w.submit(0, Behaviour::OnTime, t0);
    w.submit(1, Behaviour::Late, t0.plus(DurationMs(10)));
    w.submit(0, Behaviour::Wrong, t0.plus(DurationMs(20)));
    w.submit(1, Behaviour::Vanish, t0.plus(DurationMs(30)));
    w.run_until(t0.plus(DurationMs::secs(3_600)));

    assert_eq!(w.no_match, 0);
    assert_eq!(w.contract_of.len(), 4, "every job found a provider");
    assert_eq!(w.settlements.len(), 4, "every contract settled");
    let committee: Vec<AccountId> = w.oracles.iter().map(|o| o.account()).collect();
    // Every member that settled a contract computed the same instruction.
    for si in &w.all_settlements {
        assert_eq!(si, &w.settlements[&si.contract]);
    }
    for si in w.settlements.values() {
        check_conservation(si);
        let (outcome, signers) = si.cert.check(&net(), &committee).unwrap();
        assert_eq!(outcome, si.outcome);
        assert!(signers.len() >= 2);
        let fee = Bps(200).of(si.payout.escrow);
        let fees: u64 = si.payout.fees.iter().map(|(_, a)| a.0).sum();
        assert_eq!(fees, fee.0);
    }

    // Happy path: paid P·C for the units used, the unused escrow refunded.
    let si = w.settlement_for(Behaviour::OnTime);
    let value = si.terms.price.cost(si.outcome.units).unwrap();
    assert!(si.outcome.delivered && si.outcome.result_ok && si.outcome.sla_ok);
    assert_eq!(si.outcome.violations, 0);
    assert_eq!(si.payout.provider, value);
    assert_eq!(
        si.payout.refund.0,
        si.payout.escrow.0 - value.0 - Bps(200).of(si.payout.escrow).0
    );
    assert_eq!(w.requester_deal(Behaviour::OnTime).phase(), Phase::Settled);

    // Late by 90 s with 60 s units: two violations, λ = 10% each.
    let si = w.settlement_for(Behaviour::Late);
    assert!(si.outcome.delivered && si.outcome.result_ok && !si.outcome.sla_ok);
    assert_eq!(si.outcome.violations, 2);
    let value = si.terms.price.cost(si.outcome.units).unwrap();
    let penalty = si.terms.sla.penalty.of(value).0 * 2;
    assert_eq!(si.payout.provider.0, value.0 - penalty);
    assert_eq!(si.payout.penalty.0, penalty);
    assert_eq!(
        si.payout.refund.0,
        si.payout.escrow.0 - si.payout.provider.0 - Bps(200).of(si.payout.escrow).0
    );
    assert_eq!(w.requester_deal(Behaviour::Late).phase(), Phase::Settled);

    // Wrong result: caught by the check, provider not paid.
    let si = w.settlement_for(Behaviour::Wrong);
    assert!(si.outcome.delivered && !si.outcome.result_ok);
    assert_eq!(si.payout.provider, Amount::ZERO);
    assert_eq!(
        si.payout.refund.0,
        si.payout.escrow.0 - Bps(200).of(si.payout.escrow).0
    );
    assert!(w.oracles.iter().all(|o| o.stats().wrong_results >= 1));

    // Vanished provider: failed at deadline + grace, escrow refunded less fees.
    let si = w.settlement_for(Behaviour::Vanish);
    assert!(!si.outcome.delivered);
    assert_eq!(si.payout.provider, Amount::ZERO);
    assert_eq!(
        si.payout.refund.0,
        si.payout.escrow.0 - Bps(200).of(si.payout.escrow).0
    );
    let AnyDeal::Failed(d) = w.requester_deal(Behaviour::Vanish) else {
        panic!(
            "vanished deal is {:?}",
            w.requester_deal(Behaviour::Vanish).phase()
        );
    };
    assert_eq!(d.state.reason, FailReason::ProviderVanished);
    assert_eq!(d.state.refund.as_ref().unwrap().refund, si.payout.refund);
    assert_eq!(w.failed.len(), 1);

    // The models are computed: profit and utility.
    let total_profit: i128 = w.providers.iter().map(|p| p.ledger().profit()).sum();
    assert!(total_profit != 0);
    let jobs: u64 = w.requesters.iter().map(|r| r.ledger().jobs).sum();
    assert_eq!(jobs, 4);
    // Memory: oracles forget settled contracts.
    assert!(w.oracles.iter().all(|o| o.watching() == 0));
}

#[test]
fn dispute_forces_verification() {
    // No sampling: only a dispute makes the committee re-check.
    let mut w = World::new(Bps(0), 2);
    let t0 = w.now.plus(DurationMs::secs(1));
    w.submit(0, Behaviour::Wrong, t0);
    w.submit(1, Behaviour::WrongDisputed, t0.plus(DurationMs(10)));
    w.submit(0, Behaviour::OnTime, t0.plus(DurationMs(20)));
    w.run_until(t0.plus(DurationMs::secs(3_600)));
    assert_eq!(w.settlements.len(), 3);
    for si in w.settlements.values() {
        check_conservation(si);
    }

    // Undisputed and unsampled: the wrong result goes unnoticed (the sample rate
    // is the deterrent), and is paid.
    let si = w.settlement_for(Behaviour::Wrong);
    assert!(si.outcome.result_ok);
    assert!(si.payout.provider > Amount::ZERO);

    // Disputed: checked by every member, caught, not paid; the deal is resolved.
    let si = w.settlement_for(Behaviour::WrongDisputed);
    assert!(!si.outcome.result_ok);
    assert_eq!(si.payout.provider, Amount::ZERO);
    assert_eq!(
        w.requester_deal(Behaviour::WrongDisputed).phase(),
        Phase::Resolved
    );
    assert!(
        w.oracles
            .iter()
            .all(|o| o.stats().disputes == 1 && o.stats().checks == 1)
    );
    assert_eq!(w.requester_deal(Behaviour::OnTime).phase(), Phase::Settled);
}

#[test]
fn open_bid_is_filled_when_an_offer_arrives() {
    // A requester alone: its job finds no offer, is explained and published as an
    // open bid; a provider that starts later answers it with a priced proposal.
    let network = net();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let rep = UniformReputation(0.9);
    let mut req = RequesterEngine::new(Identity::from_seed(1), network, RequesterConfig::default());
    let mut prov = ProviderEngine::new(Identity::from_seed(2), network, ProviderConfig::default());
    let now = Timestamp(1_000_000);
    let spec = simple_job(&Identity::from_seed(1), now, 1, 1_000_000, 600)
        .body_unverified()
        .unwrap();
    let out = req.handle(now, RequesterInput::Submit(Box::new(spec)), &rep, &mut rng);
    let bid = out
        .iter()
        .find_map(|o| match o {
            RequesterOutput::Publish(Message::Bid(b)) => Some(b.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        out.iter()
            .any(|o| matches!(o, RequesterOutput::NoMatch { examined: 0, .. }))
    );
    assert_eq!(req.open_jobs(), 1);

    let now = now.plus(DurationMs::secs(5));
    let out = prov.handle(now, ProviderInput::Bid(bid), &mut rng);
    let (_, proposal) = sent!(out, ProviderOutput, Proposal);
    let out = req.handle(now, RequesterInput::Proposal(proposal), &rep, &mut rng);
    let (_, answer) = sent!(out, RequesterOutput, Answer);
    let out = prov.handle(now, ProviderInput::Answer(answer), &mut rng);
    assert!(out.iter().any(|o| matches!(o, ProviderOutput::Run { .. })));
    let (_, contract) = sent!(out, ProviderOutput, Contract);
    let out = req.handle(
        now,
        RequesterInput::Contract(contract.clone()),
        &rep,
        &mut rng,
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, RequesterOutput::LockEscrow { .. }))
    );
    assert_eq!(
        req.deal(&contract.body_hash()).unwrap().phase(),
        Phase::Running
    );
    assert_eq!(req.open_jobs(), 0);
}

fn simple_job(
    requester: &Identity,
    now: Timestamp,
    nonce: u64,
    units: u64,
    deadline_s: u64,
) -> Signed<JobSpec> {
    let spec = JobSpec {
        expires_at: now.plus(DurationMs::secs(300)),
        ..JobSpec::inference(
            requester.account(),
            Behaviour::OnTime.dataset(),
            ComputeUnits::from_milli(units),
            PricePerCu(1_000),
            now,
            now.plus(DurationMs::secs(deadline_s)),
            nonce,
        )
    };
    Signed::sign(requester, &net(), &spec).unwrap()
}

fn propose(
    requester: &Identity,
    provider: AccountId,
    job: Signed<JobSpec>,
    price: u64,
    now: Timestamp,
    nonce: u64,
) -> Signed<Proposal> {
    let p = Proposal {
        job,
        provider,
        offer: None,
        price: PricePerCu(price),
        sla: ProviderConfig::default().sla,
        issued_at: now,
        expires_at: now.plus(DurationMs::secs(30)),
        nonce,
    };
    Signed::sign(requester, &net(), &p).unwrap()
}

fn answer_of(out: &[ProviderOutput]) -> ProposalAnswer {
    sent!(out, ProviderOutput, Answer)
        .1
        .body_unverified()
        .unwrap()
}

/// A provider whose backend is not exact offers `exact = false` and refuses a
/// proposal that asks for exact checks: the committee would compare its honest
/// results bit for bit, fail them and slash its bond.
#[test]
fn a_provider_that_is_not_exact_refuses_exact_checks() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let me = Identity::from_seed(54);
    let req = Identity::from_seed(55);
    let mut cfg = ProviderConfig::default();
    cfg.sla.exact = false;
    let mut prov = ProviderEngine::new(me.clone(), net(), cfg);
    let now = Timestamp(5_000_000);
    let out = prov.handle(now, ProviderInput::Start, &mut rng);
    let offer = out
        .iter()
        .find_map(|o| match o {
            ProviderOutput::Publish(Message::Offer(s)) => s.body_unverified().ok(),
            _ => None,
        })
        .expect("an offer");
    assert!(!offer.sla.exact, "its offer says so");
    let mut ask = |nonce: u64, exact: bool| {
        let job = simple_job(&req, now, nonce, 1_000_000, 600);
        let mut p = propose(&req, me.account(), job, 500, now, nonce)
            .body_unverified()
            .unwrap();
        p.sla.exact = exact;
        let p = Signed::sign(&req, &net(), &p).unwrap();
        answer_of(&prov.handle(now, ProviderInput::Proposal(p), &mut rng))
    };
    assert!(matches!(
        ask(1, true),
        ProposalAnswer::Reject {
            reason: RejectReason::Unsupported(why),
            ..
        } if why.contains("not exact")
    ));
    assert!(matches!(ask(2, false), ProposalAnswer::Accept(_)));
}

/// A provider keeps room in its store for the jobs it accepted: a job is
/// refused, saying how much it needs and how much is left, when its inputs and
/// declared result do not fit beside theirs.
#[test]
fn a_provider_accepts_only_jobs_its_store_has_room_for() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let me = Identity::from_seed(52);
    let req = Identity::from_seed(53);
    let mut prov = ProviderEngine::new(me.clone(), net(), ProviderConfig::default());
    let now = Timestamp(5_000_000);
    prov.handle(now, ProviderInput::Start, &mut rng);
    let job = |nonce: u64, result_bytes: u64| {
        let j = simple_job(&req, now, nonce, 1_000_000, 600);
        let spec = JobSpec {
            result_bytes,
            ..j.body_unverified().unwrap()
        };
        Signed::sign(&req, &net(), &spec).unwrap()
    };
    let mut ask = |prov: &mut ProviderEngine, j: Signed<JobSpec>, nonce: u64| {
        let p = propose(&req, me.account(), j, 500, now, nonce);
        answer_of(&prov.handle(now, ProviderInput::Proposal(p), &mut rng))
    };
    let big = job(1, 600 << 20);
    let needed = big.body_unverified().unwrap().storage_bytes();
    assert!(needed > 600 << 20, "inputs count too");

    // No limit said: any size is taken.
    assert!(matches!(
        ask(&mut prov, big.clone(), 1),
        ProposalAnswer::Accept(_)
    ));
    // 1 GiB of room: the accepted job keeps its share of it, so a second
    // job as big is refused, with the figures.
    prov.handle(
        now,
        ProviderInput::StoreRoom(Some(1 << 30)),
        &mut ChaCha8Rng::seed_from_u64(0),
    );
    let why = ask(&mut prov, job(2, 600 << 20), 2);
    assert_eq!(
        why,
        ProposalAnswer::Reject {
            proposal: why_proposal(&why),
            reason: RejectReason::NoStorage {
                needed,
                room: (1 << 30) - needed,
            },
        }
    );
    // A small one still fits.
    assert!(matches!(
        ask(&mut prov, job(3, 1 << 20), 3),
        ProposalAnswer::Accept(_)
    ));
    // A store with no room left refuses even that.
    prov.handle(
        now,
        ProviderInput::StoreRoom(Some(0)),
        &mut ChaCha8Rng::seed_from_u64(0),
    );
    assert!(matches!(
        ask(&mut prov, job(4, 1 << 20), 4),
        ProposalAnswer::Reject {
            reason: RejectReason::NoStorage { room: 0, .. },
            ..
        }
    ));
}

/// A data owner spends its privacy budgets as it said: a federated job's ε
/// is counted once for all its rounds, a requester gets at most its share,
/// what the ledger says was spent counts (so a restart forgets nothing),
/// and its offers state what is left.
#[test]
fn a_data_owner_keeps_within_its_privacy_budgets() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let me = Identity::from_seed(54);
    let (alice, bob) = (Identity::from_seed(55), Identity::from_seed(56));
    let data = common::wine_data(b"shard", 4.0, 6.0);
    let cfg = ProviderConfig {
        datasets: vec![data],
        queue_capacity: 16,
        ..ProviderConfig::default()
    };
    let mut prov = ProviderEngine::new(me.clone(), net(), cfg);
    let now = Timestamp(5_000_000);
    let left_in_offer = |out: &[ProviderOutput]| {
        out.iter()
            .find_map(|o| match o {
                ProviderOutput::Publish(Message::Offer(so)) => {
                    Some(so.body_unverified().unwrap().datasets[0].epsilon_left)
                }
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(
        left_in_offer(&prov.handle(now, ProviderInput::Start, &mut rng)),
        6.0
    );
    let mut nonce = 0;
    let mut ask =
        |prov: &mut ProviderEngine, who: &Identity, federation: &[u8], round: u32, eps: f64| {
            nonce += 1;
            let a = FedAsk {
                who,
                id: data.id,
                federation,
                round,
                eps,
                nonce,
            };
            let p = propose(who, me.account(), fed_job(now, a), 500, now, nonce);
            match answer_of(&prov.handle(now, ProviderInput::Proposal(p), &mut rng)) {
                ProposalAnswer::Accept(_) => None,
                ProposalAnswer::Reject { reason, .. } => Some(reason),
            }
        };
    // Alice's job spends 3: its three rounds count once.
    for round in 1..=3 {
        assert_eq!(
            ask(&mut prov, &alice, b"a1", round, 3.0),
            None,
            "round {round}"
        );
    }
    // A round asked again would release the data twice for one ε.
    assert!(matches!(
        ask(&mut prov, &alice, b"a1", 2, 3.0),
        Some(RejectReason::Invalid(why)) if why.contains("served already")
    ));
    // A second job of hers would pass her share of 4.
    assert_eq!(
        ask(&mut prov, &alice, b"a2", 1, 2.0),
        Some(RejectReason::PrivacyBudget {
            asked_micro: 2_000_000,
            left_micro: 1_000_000
        })
    );
    // Bob has his own share, but 3 of the total 6 are taken.
    assert_eq!(
        ask(&mut prov, &bob, b"b1", 1, 3.5),
        Some(RejectReason::PrivacyBudget {
            asked_micro: 3_500_000,
            left_micro: 3_000_000
        })
    );
    assert_eq!(ask(&mut prov, &bob, b"b1", 1, 3.0), None);
    // A data set it does not hold.
    let stranger = fed_job(
        now,
        FedAsk {
            who: &alice,
            id: Hash32::of(b"elsewhere"),
            federation: b"x",
            round: 1,
            eps: 0.1,
            nonce: 77,
        },
    );
    let p = propose(&alice, me.account(), stranger, 500, now, 999);
    assert!(matches!(
        answer_of(&prov.handle(now, ProviderInput::Proposal(p), &mut rng)),
        ProposalAnswer::Reject {
            reason: RejectReason::Unsupported(_),
            ..
        }
    ));

    // A fresh engine (a restart) learns what was spent from the ledger.
    let mut again = ProviderEngine::new(
        me.clone(),
        net(),
        ProviderConfig {
            datasets: vec![data],
            ..ProviderConfig::default()
        },
    );
    let spent = |who: &Identity, f: &[u8], epsilon: f64| PrivacySpend {
        dataset: data.id,
        federation: Hash32::of(f),
        requester: who.account(),
        epsilon,
        rounds: vec![1],
    };
    again.handle(
        now,
        ProviderInput::PrivacySpent(vec![spent(&alice, b"a1", 3.0), spent(&bob, b"b1", 2.5)]),
        &mut rng,
    );
    assert_eq!(
        left_in_offer(&again.handle(now, ProviderInput::Start, &mut rng)),
        0.5
    );
    // The ledger says round 1 of Alice's job was served: not again; its next
    // round costs nothing more.
    let p = |round: u32, nonce: u64| {
        let a = FedAsk {
            who: &alice,
            id: data.id,
            federation: b"a1",
            round,
            eps: 3.0,
            nonce,
        };
        propose(&alice, me.account(), fed_job(now, a), 500, now, nonce)
    };
    let out = again.handle(now, ProviderInput::Proposal(p(1, 501)), &mut rng);
    assert!(matches!(
        answer_of(&out),
        ProposalAnswer::Reject { reason: RejectReason::Invalid(why), .. } if why.contains("served already")
    ));
    let out = again.handle(now, ProviderInput::Proposal(p(2, 502)), &mut rng);
    assert!(matches!(answer_of(&out), ProposalAnswer::Accept(_)));
}

/// Round `round` (of 3) of federated job `federation` on data set `id` of
/// 1,000 rows, stating ε `eps`, as [`a_data_owner_keeps_within_its_privacy_budgets`] asks.
struct FedAsk<'a> {
    who: &'a Identity,
    id: Hash32,
    federation: &'a [u8],
    round: u32,
    eps: f64,
    nonce: u64,
}

fn fed_job(now: Timestamp, a: FedAsk<'_>) -> Signed<JobSpec> {
    let spec = JobSpec {
        kind: common::wine_round(a.federation, a.round, vec![11, 16, 6]),
        model: Some(Behaviour::OnTime.dataset()),
        dataset: BlobRef {
            hash: a.id,
            size: 60_000,
        },
        privacy: Some(PrivacyTarget {
            epsilon: a.eps,
            delta: 1e-5,
        }),
        ..simple_job(a.who, now, a.nonce, 1_000, 600)
            .body_unverified()
            .unwrap()
    };
    spec.validate(now).unwrap();
    Signed::sign(a.who, &net(), &spec).unwrap()
}

fn why_proposal(a: &ProposalAnswer) -> Hash32 {
    match a {
        ProposalAnswer::Reject { proposal, .. } => *proposal,
        ProposalAnswer::Accept(_) => Hash32::default(),
    }
}

#[test]
fn provider_accepts_queues_and_rejects() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let me = Identity::from_seed(50);
    let req = Identity::from_seed(51);
    let mut prov = ProviderEngine::new(
        me.clone(),
        net(),
        ProviderConfig {
            slots: 1,
            queue_capacity: 1,
            ..ProviderConfig::default()
        },
    );
    let now = Timestamp(5_000_000);
    prov.handle(now, ProviderInput::Start, &mut rng);
    let floor = prov.pricing().accept_floor();

    // A proposal of `units` milli-CU due in `deadline_s`, at `price`: the answer.
    let mut ask =
        |prov: &mut ProviderEngine, nonce: u64, units: u64, deadline_s: u64, price: u64| {
            let job = simple_job(&req, now, nonce, units, deadline_s);
            let p = propose(&req, me.account(), job, price, now, nonce);
            answer_of(&prov.handle(now, ProviderInput::Proposal(p), &mut rng))
        };
    let refused = |a: ProposalAnswer| match a {
        ProposalAnswer::Reject { reason, .. } => Some(reason),
        ProposalAnswer::Accept(_) => None,
    };
    // Below the price floor.
    let why = refused(ask(&mut prov, 1, 1_000_000, 600, floor.0 - 1));
    assert_eq!(why, Some(RejectReason::PriceBelowFloor { floor }));
    // Too much work for the deadline (1000 s of compute, 60 s deadline).
    let why = refused(ask(&mut prov, 2, 1_000_000_000, 60, 500));
    assert_eq!(why, Some(RejectReason::DeadlineInfeasible));
    // Work that fits the deadline, but not after a 600 s wait for the
    // requester's escrow to become final (no bond of its backs it): refused
    // rather than run late.
    prov.set_start_delay(req.account(), DurationMs::secs(600));
    let why = refused(ask(&mut prov, 90, 1_000_000, 600, 500));
    assert_eq!(why, Some(RejectReason::DeadlineInfeasible));
    prov.set_start_delay(req.account(), DurationMs(0));

    // Two accepted (one to run, one to queue), the third refused: queue full.
    let mut contracts = Vec::new();
    for n in 3..6u64 {
        let p = propose(
            &req,
            me.account(),
            simple_job(&req, now, n, 1_000_000, 600),
            500,
            now,
            n,
        );
        let out = prov.handle(now, ProviderInput::Proposal(p.clone()), &mut rng);
        match answer_of(&out) {
            ProposalAnswer::Accept(mut ms) => {
                ms.add_signature(&req, &net());
                contracts.push(ms);
            }
            ProposalAnswer::Reject { reason, .. } => {
                assert_eq!(n, 5);
                // With the time it expects a slot to free: after the work
                // it runs and queues.
                assert!(
                    matches!(reason, RejectReason::QueueFull { free_at } if free_at > now),
                    "{reason:?}"
                );
            }
        }
        // A replayed proposal is ignored.
        assert!(
            prov.handle(now, ProviderInput::Proposal(p), &mut rng)
                .is_empty()
        );
    }
    assert_eq!(contracts.len(), 2);
    let out = prov.handle(now, ProviderInput::Contract(contracts[0].clone()), &mut rng);
    assert!(out.iter().any(|o| matches!(o, ProviderOutput::Run { .. })));
    let out = prov.handle(now, ProviderInput::Contract(contracts[1].clone()), &mut rng);
    assert!(
        !out.iter().any(|o| matches!(o, ProviderOutput::Run { .. })),
        "second job waits"
    );
    assert_eq!((prov.running(), prov.queued()), (1, 1));

    // When the first finishes, its receipt goes out and the queued one starts.
    let first = contracts[0].body_hash();
    let out = prov.handle(
        now.plus(DurationMs::secs(1)),
        ProviderInput::Finished {
            contract: first,
            result: wrong_blob(),
            units_used: ComputeUnits::from_milli(1_000_000),
            commitment: Hash32::default(),
            checkpoint_every: 0,
            checkpoints: 0,
            inputs_ready_at: now,
            started_at: now,
        },
        &mut rng,
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, ProviderOutput::Publish(Message::Receipt(_))))
    );
    assert!(out.iter().any(|o| matches!(o, ProviderOutput::Run { contract, .. } if *contract == contracts[1].body_hash())));
    assert_eq!(prov.deal(&first).unwrap().phase(), Phase::Delivered);
    let s = prov.stats();
    assert_eq!(
        (
            s.accepted,
            s.rejected_price,
            s.rejected_deadline,
            s.rejected_capacity
        ),
        (2, 1, 2, 1)
    );
}

/// After a restart a provider takes up the contracts it had accepted: a fresh
/// engine of the same identity runs each again as a slot frees, delivers its
/// receipt, and closes the deal on settlement. A copy it knows already, one the
/// requester did not sign and one for another provider are ignored.
#[test]
fn provider_resumes_its_accepted_contracts() {
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let (req, me, other, oracle) = (
        Identity::from_seed(120),
        Identity::from_seed(121),
        Identity::from_seed(122),
        Identity::from_seed(123),
    );
    let now = Timestamp(60_000_000);
    let cfg = ProviderConfig {
        slots: 1,
        ..ProviderConfig::default()
    };
    let mut prov = ProviderEngine::new(me.clone(), net(), cfg);
    let runs = |out: &[ProviderOutput]| -> Vec<Hash32> {
        out.iter()
            .filter_map(|o| match o {
                ProviderOutput::Run { contract, .. } => Some(*contract),
                _ => None,
            })
            .collect()
    };
    let (terms, c) = one_unit_contract(&req, &me, now, &net());
    let (_, c2) = one_unit_contract(&req, &me, now.plus(DurationMs(1)), &net());
    let id = c.body_hash();

    let out = prov.handle(now, ProviderInput::Resume(c.clone()), &mut rng);
    assert_eq!(runs(&out), [id]);
    // The slot is taken: the second waits in the queue.
    let out = prov.handle(now, ProviderInput::Resume(c2.clone()), &mut rng);
    assert!(runs(&out).is_empty());
    assert_eq!((prov.running(), prov.queued()), (1, 1));

    let mut unsigned = Contract::new(&terms).unwrap();
    unsigned.add_signature(&me, &net());
    let (_, elsewhere) = one_unit_contract(&req, &other, now, &net());
    for ignored in [c.clone(), c2.clone(), unsigned, elsewhere] {
        assert!(
            prov.handle(now, ProviderInput::Resume(ignored), &mut rng)
                .is_empty()
        );
    }
    let s = prov.stats();
    assert_eq!((s.resumed, s.ignored, s.accepted), (2, 4, 0));

    // It delivers the first; the second runs.
    let t = now.plus(DurationMs::secs(60));
    let out = prov.handle(
        t,
        ProviderInput::Finished {
            contract: id,
            result: Behaviour::OnTime.dataset(),
            units_used: terms.max_units,
            commitment: Hash32::default(),
            checkpoint_every: 0,
            checkpoints: 0,
            inputs_ready_at: now,
            started_at: now,
        },
        &mut rng,
    );
    let receipt = out
        .iter()
        .find_map(|o| match o {
            ProviderOutput::Publish(Message::Receipt(sr)) => Some(sr.clone()),
            _ => None,
        })
        .expect("a receipt");
    assert_eq!(receipt.signer, me.account());
    assert_eq!(receipt.verify(&net()).unwrap().contract, id);
    assert_eq!(runs(&out), [c2.body_hash()]);
    assert_eq!(prov.deal(&id).unwrap().phase(), Phase::Delivered);

    // The second cannot run: released, its slot free.
    prov.handle(
        t,
        ProviderInput::Aborted {
            contract: c2.body_hash(),
            reason: "inputs gone".into(),
        },
        &mut rng,
    );
    assert!(prov.deal(&c2.body_hash()).is_none());
    assert_eq!(
        (prov.running(), prov.queued(), prov.stats().aborted),
        (0, 0, 1)
    );

    // The committee judges the receipt; its settlement closes the deal.
    let cfg = OracleConfig {
        verify_share: Bps(0),
        ..OracleConfig::default()
    };
    let mut o = sole_oracle(&oracle, cfg, 1, now, &mut rng);
    o.handle(now, OracleInput::Contract(c), &mut rng);
    o.handle(t, OracleInput::Receipt(receipt), &mut rng);
    let si = settlement_in(&o.handle_timeout(t.plus(DurationMs::secs(31)), &mut rng));
    assert!(si.outcome.delivered && si.outcome.sla_ok);
    prov.handle(t, ProviderInput::Settlement(si), &mut rng);
    assert!(prov.deal(&id).is_none());
    assert!(prov.ledger().revenue > 0);
}

/// A contract for a one-CU job between `req` and `prov`, both signatures made on
/// `network`.
fn one_unit_contract(
    req: &Identity,
    prov: &Identity,
    now: Timestamp,
    network: &NetworkId,
) -> (ContractTerms, Contract) {
    let spec = simple_job(req, now, 1, 1_000_000, 900)
        .body_unverified()
        .unwrap();
    let terms = ContractTerms {
        network: net(),
        job: Hash32::of(b"j"),
        requester: req.account(),
        provider: prov.account(),
        price: PricePerCu(500),
        max_units: spec.estimated_units,
        sla: ProviderConfig::default().sla,
        deadline: spec.deadline,
        created_at: now,
        spec,
    };
    let mut c = Contract::new(&terms).unwrap();
    c.add_signature(req, network);
    c.add_signature(prov, network);
    (terms, c)
}

/// An oracle engine for `oracle`, made the sole committee member of `epoch`.
fn sole_oracle(
    oracle: &Identity,
    cfg: OracleConfig,
    epoch: u64,
    now: Timestamp,
    rng: &mut ChaCha8Rng,
) -> OracleEngine<Checker> {
    let mut o = OracleEngine::new(oracle.clone(), net(), cfg, checker as Checker);
    o.handle(
        now,
        OracleInput::Epoch {
            epoch,
            committee: vec![oracle.account()],
            beacon: Hash32::default(),
        },
        rng,
    );
    o
}

/// A correct result for `c`, accepted at `now` and finished at `finished`.
fn on_time_receipt(
    prov: &Identity,
    c: &Contract,
    terms: &ContractTerms,
    now: Timestamp,
    finished: Timestamp,
) -> Receipt {
    Receipt {
        contract: c.body_hash(),
        provider: prov.account(),
        result: Behaviour::OnTime.dataset(),
        units_used: terms.max_units,
        timings: Timings {
            accepted_at: now,
            inputs_ready_at: now,
            started_at: now,
            finished_at: finished,
        },
        commitment: Hash32::default(),
        checkpoint_every: 0,
        checkpoints: 0,
    }
}

/// The settlement instruction among an oracle's outputs.
fn settlement_in(out: &[OracleOutput]) -> Box<SettlementInstruction> {
    out.iter()
        .find_map(|x| match x {
            OracleOutput::Settle(si) => Some(si.clone()),
            _ => None,
        })
        .unwrap()
}

/// The provider delivers a correct result at `t`; the oracle's verdict once the
/// dispute window has passed, with everything the oracle output then.
fn deliver_and_judge(
    o: &mut OracleEngine<Checker>,
    prov: &Identity,
    c: &Contract,
    terms: &ContractTerms,
    now: Timestamp,
    t: Timestamp,
    rng: &mut ChaCha8Rng,
) -> (Verdict, Vec<OracleOutput>) {
    let receipt = on_time_receipt(prov, c, terms, now, t);
    o.handle(
        t,
        OracleInput::Receipt(Signed::sign(prov, &net(), &receipt).unwrap()),
        rng,
    );
    let out = o.handle_timeout(t.plus(DurationMs::secs(31)), rng);
    let verdict = out
        .iter()
        .find_map(|x| match x {
            OracleOutput::Publish(Message::Verdict(v)) => Some(v.body_unverified().unwrap()),
            _ => None,
        })
        .unwrap();
    (verdict, out)
}

#[test]
fn unanswered_probes_are_an_availability_violation() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (req, prov) = (Identity::from_seed(60), Identity::from_seed(61));
    let oracle = Identity::from_seed(62);
    let cfg = OracleConfig {
        verify_share: Bps(0),
        ..OracleConfig::default()
    };
    let now = Timestamp(10_000_000);
    let mut o = sole_oracle(&oracle, cfg, 7, now, &mut rng);
    let (terms, c) = one_unit_contract(&req, &prov, now, &net());
    o.handle(now, OracleInput::Contract(c.clone()), &mut rng);
    // Ten minutes of probes, none answered.
    let mut t = now;
    let mut probes = 0;
    while t < now.plus(DurationMs::secs(600)) {
        t = t.plus(DurationMs::secs(1));
        probes += o
            .handle_timeout(t, &mut rng)
            .iter()
            .filter(|x| {
                matches!(
                    x,
                    OracleOutput::Send {
                        message: Message::Probe(_),
                        ..
                    }
                )
            })
            .count();
    }
    assert!(probes >= 9, "{probes}");
    let (verdict, out) = deliver_and_judge(&mut o, &prov, &c, &terms, now, t, &mut rng);
    assert!(verdict.delivered && verdict.result_ok && !verdict.sla_ok);
    assert_eq!(verdict.violations, 1);
    // A committee of one is its own quorum.
    let si = settlement_in(&out);
    assert_eq!(
        si.payout.penalty,
        terms.sla.penalty.of(terms.escrow().unwrap())
    );
}

#[test]
fn refused_proposal_falls_back_to_the_next_provider() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let rep = UniformReputation(0.9);
    let now = Timestamp(20_000_000);
    let mut req = RequesterEngine::new(Identity::from_seed(70), net(), RequesterConfig::default());
    let provs: Vec<ProviderEngine> = (71..73)
        .map(|s| ProviderEngine::new(Identity::from_seed(s), net(), ProviderConfig::default()))
        .collect();
    let mut provs = provs;
    for p in &mut provs {
        for o in p.handle(now, ProviderInput::Start, &mut rng) {
            if let ProviderOutput::Publish(Message::Offer(so)) = o {
                req.handle(now, RequesterInput::Offer(so), &rep, &mut rng);
            }
        }
    }
    assert_eq!(req.book().len(), 2);
    let spec = simple_job(&Identity::from_seed(70), now, 1, 1_000_000, 600)
        .body_unverified()
        .unwrap();
    let out = req.handle(now, RequesterInput::Submit(Box::new(spec)), &rep, &mut rng);
    let (first, proposal) = sent!(out, RequesterOutput, Proposal);
    let first_idx = provs.iter().position(|p| p.account() == first).unwrap();
    let reject = ProposalAnswer::Reject {
        proposal: proposal.id(),
        reason: RejectReason::NoCapacity {
            free_at: now.plus(DurationMs::secs(120)),
        },
    };
    let reject =
        Signed::sign(&Identity::from_seed(71 + first_idx as u64), &net(), &reject).unwrap();
    let out = req.handle(now, RequesterInput::Answer(reject), &rep, &mut rng);
    let (second, _) = sent!(out, RequesterOutput, Proposal);
    assert_ne!(first, second);
    assert_eq!(req.book().load_of(&first), 0);
    assert_eq!(req.book().load_of(&second), 1);
    // The full provider is passed over for the next jobs, until it said a
    // slot frees.
    assert!(req.book().held_off(now.plus(DurationMs::secs(119)), &first));
    assert!(!req.book().held_off(now.plus(DurationMs::secs(120)), &first));
}

#[test]
fn same_seed_same_run() {
    let run = |seed, verify| {
        let mut w = World::build(Bps(5_000), seed, verify);
        let t0 = w.now.plus(DurationMs::secs(1));
        for (k, b) in [
            Behaviour::OnTime,
            Behaviour::Late,
            Behaviour::Wrong,
            Behaviour::Vanish,
        ]
        .into_iter()
        .enumerate()
        {
            w.submit(k % 2, b, t0.plus(DurationMs(k as u64)));
        }
        w.run_until(t0.plus(DurationMs::secs(3_600)));
        let prices: Vec<PricePerCu> = w.providers.iter().map(|p| p.price()).collect();
        (w.settlements, prices, w.seq)
    };
    let a = run(21, true);
    assert_eq!(a, run(21, true));
    assert_eq!(a.0.len(), 4);
    // The simulator's fast path (no signature checks) runs the very same market.
    assert_eq!(a, run(21, false));
}

#[test]
fn receipt_before_contract_is_kept() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (req, prov, oracle) = (
        Identity::from_seed(80),
        Identity::from_seed(81),
        Identity::from_seed(82),
    );
    let cfg = OracleConfig {
        verify_share: Bps(10_000),
        ..OracleConfig::default()
    };
    let now = Timestamp(30_000_000);
    let mut o = sole_oracle(&oracle, cfg, 1, now, &mut rng);
    let (terms, c) = one_unit_contract(&req, &prov, now, &net());
    let receipt = on_time_receipt(&prov, &c, &terms, now, now);
    let sr = Signed::sign(&prov, &net(), &receipt).unwrap();
    assert!(o.handle(now, OracleInput::Receipt(sr), &mut rng).is_empty());
    let out = o.handle(now.plus(DurationMs(10)), OracleInput::Contract(c), &mut rng);
    // The kept receipt was judged (checked, since every result is sampled here).
    assert_eq!(o.stats().checks, 1);
    assert!(!out.is_empty());
    let out = o.handle_timeout(now.plus(DurationMs::secs(60)), &mut rng);
    let si = settlement_in(&out);
    assert!(si.outcome.delivered && si.outcome.result_ok && si.outcome.sla_ok);
    assert_eq!(
        si.payout.provider,
        terms.escrow().unwrap().saturating_sub(si.payout.fees[0].1)
    );
}

#[test]
fn slow_probe_replies_are_a_latency_violation() {
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let (req, prov_id, oracle) = (
        Identity::from_seed(90),
        Identity::from_seed(91),
        Identity::from_seed(92),
    );
    let cfg = OracleConfig {
        verify_share: Bps(0),
        ..OracleConfig::default()
    };
    let mut prov = ProviderEngine::new(prov_id.clone(), net(), ProviderConfig::default());
    let now = Timestamp(40_000_000);
    let mut o = sole_oracle(&oracle, cfg, 1, now, &mut rng);
    let (terms, c) = one_unit_contract(&req, &prov_id, now, &net());
    o.handle(now, OracleInput::Contract(c.clone()), &mut rng);
    // Every probe is answered, but 3 s later (the limit is 2 s).
    let mut t = now;
    while t < now.plus(DurationMs::secs(300)) {
        t = t.plus(DurationMs::secs(1));
        for x in o.handle_timeout(t, &mut rng) {
            if let OracleOutput::Send {
                message: Message::Probe(p),
                ..
            } = x
            {
                let reply = prov.handle(t, ProviderInput::Probe(p), &mut rng);
                let Some(ProviderOutput::Send {
                    message: Message::ProbeReply(r),
                    ..
                }) = reply.into_iter().next()
                else {
                    panic!("no probe reply");
                };
                o.handle(
                    t.plus(DurationMs::secs(3)),
                    OracleInput::ProbeReply(r),
                    &mut rng,
                );
            }
        }
    }
    assert!(prov.stats().probes_answered >= 4);
    let (verdict, _) = deliver_and_judge(&mut o, &prov_id, &c, &terms, now, t, &mut rng);
    // Available (every probe answered), but slow: one violation.
    assert!(verdict.delivered && !verdict.sla_ok);
    assert_eq!(verdict.violations, 1);
}

#[test]
fn signature_checks_can_be_turned_off_for_simulation() {
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let (req, prov, oracle) = (
        Identity::from_seed(95),
        Identity::from_seed(96),
        Identity::from_seed(97),
    );
    let now = Timestamp(50_000_000);
    // Signatures made on another network: invalid here.
    let (_, c) = one_unit_contract(&req, &prov, now, &NetworkId::named("elsewhere"));
    for verify_signatures in [true, false] {
        let cfg = OracleConfig {
            verify_signatures,
            ..OracleConfig::default()
        };
        let mut o = sole_oracle(&oracle, cfg, 1, now, &mut rng);
        o.handle(now, OracleInput::Contract(c.clone()), &mut rng);
        assert_eq!(o.watching(), usize::from(!verify_signatures));
    }
}

/// A requester restarted with an escrowed contract follows it again: the
/// receipt is awaited, and without one the deal fails at the deadline plus
/// grace (so the committee's refund is expected, not a hang).
#[test]
fn requester_resumes_an_escrowed_contract() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let (me, prov, other) = (
        Identity::from_seed(130),
        Identity::from_seed(131),
        Identity::from_seed(132),
    );
    let now = Timestamp(60_000_000);
    let rep = UniformReputation(1.0);
    let new = || RequesterEngine::new(me.clone(), net(), RequesterConfig::default());
    let (terms, c) = one_unit_contract(&me, &prov, now, &net());
    let id = c.body_hash();

    let mut r = new();
    r.handle(now, RequesterInput::Resume(c.clone()), &rep, &mut rng);
    assert!(r.deal(&id).is_some(), "the deal is followed again");
    // A second copy, someone else's contract, or one signed by one party only,
    // change nothing.
    let (_, theirs) = one_unit_contract(&other, &prov, now, &net());
    let mut half = Contract::new(&terms).unwrap();
    half.add_signature(&me, &net());
    for ignored in [c.clone(), theirs, half] {
        let out = r.handle(now, RequesterInput::Resume(ignored), &rep, &mut rng);
        assert!(out.is_empty(), "{out:?}");
    }
    assert_eq!(r.deals().count(), 1);
    // Its receipt is taken.
    let rc = on_time_receipt(&prov, &c, &terms, now, now.plus(DurationMs::secs(1)));
    let sr = Signed::sign(&prov, &net(), &rc).unwrap();
    let out = r.handle(now, RequesterInput::Receipt(sr), &rep, &mut rng);
    assert!(
        out.iter()
            .any(|o| matches!(o, RequesterOutput::Delivered { contract, .. } if *contract == id)),
        "{out:?}"
    );
    // Without a receipt it fails at the deadline plus grace.
    let mut r = new();
    r.handle(now, RequesterInput::Resume(c), &rep, &mut rng);
    let late = terms.deadline.plus(RequesterConfig::default().grace);
    let out = r.handle_timeout(late, &rep, &mut rng);
    assert!(
        out.iter()
            .any(|o| matches!(o, RequesterOutput::Failed { contract, .. } if *contract == id)),
        "{out:?}"
    );
}

/// Bonded or not, as a test sets it.
struct BondSwitch(std::cell::Cell<bool>);

impl protocol::market::Reputation for BondSwitch {
    fn quality(&self, _: &AccountId) -> f64 {
        0.9
    }
    fn bonded(&self, _: &AccountId, _: Amount) -> bool {
        self.0.get()
    }
}

#[test]
fn an_open_bid_is_proposed_once_the_providers_bond_is_final() {
    // The provider's offer is in the book, but its bond is not final yet:
    // nothing fits. When a checkpoint makes it final, a rematch proposes at
    // once, without waiting for the provider's next offer.
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let rep = BondSwitch(std::cell::Cell::new(false));
    let now = Timestamp(30_000_000);
    let mut req = RequesterEngine::new(Identity::from_seed(80), net(), RequesterConfig::default());
    let mut prov = ProviderEngine::new(Identity::from_seed(81), net(), ProviderConfig::default());
    for o in prov.handle(now, ProviderInput::Start, &mut rng) {
        if let ProviderOutput::Publish(Message::Offer(so)) = o {
            req.handle(now, RequesterInput::Offer(so), &rep, &mut rng);
        }
    }
    let spec = simple_job(&Identity::from_seed(80), now, 1, 1_000_000, 600)
        .body_unverified()
        .unwrap();
    let out = req.handle(now, RequesterInput::Submit(Box::new(spec)), &rep, &mut rng);
    assert!(out.iter().any(|o| matches!(
        o,
        RequesterOutput::NoMatch { reasons, .. }
            if reasons.iter().any(|r| r.reason == protocol::market::NoMatchReason::NoBond)
    )));
    // Still unbonded: a rematch changes nothing.
    let out = req.handle(now, RequesterInput::Rematch, &rep, &mut rng);
    assert!(
        !out.iter()
            .any(|o| matches!(o, RequesterOutput::Proposed { .. }))
    );
    rep.0.set(true);
    let later = now.plus(DurationMs::secs(5));
    let out = req.handle(later, RequesterInput::Rematch, &rep, &mut rng);
    let (to, _) = sent!(out, RequesterOutput, Proposal);
    assert_eq!(to, prov.account());
    // A job already waiting on its proposal is not proposed twice.
    let out = req.handle(later, RequesterInput::Rematch, &rep, &mut rng);
    assert!(
        !out.iter()
            .any(|o| matches!(o, RequesterOutput::Proposed { .. }))
    );
}
