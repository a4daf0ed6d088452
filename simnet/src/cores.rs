//! Every simulated peer as the node's own core: a [`NodeCore`] per provider,
//! requester and oracle, each with its own ledger replica and real automerge
//! sync, driven on virtual time.
//!
//! This is the driver the binary's protocol decisions are measured by: the
//! escrow gate, key grants, the commit-then-challenge reveal, settlement
//! writing and its stagger, checkpoint proposals and votes, resends,
//! persistence and restarts all run as `cloudchain run` runs them, because
//! they *are* the core's code. What the driver adds is the world around the
//! cores:
//!
//! - **The network.** A published message reaches each other peer after a
//!   sampled gossip delay ([`Net::gossip_delay`]), and is lost across a
//!   partition. A direct message takes one hop of its regions' latency, and is
//!   lost across a partition. Ledger sync runs over a random overlay of
//!   [`SYNC_DEGREE`] neighbours per peer (every oracle also links every other
//!   oracle), as connections would; a partition closes the connections it
//!   cuts (`PeerDown`) and its end opens them again (`PeerUp`).
//! - **Work.** Nothing is computed: a job's run takes its modelled duration
//!   (input transfer from the requester, then `C/speed` of the provider's
//!   profile, late with the profile's unreliability), and a result is a
//!   stand-in, fetched back by the requester.
//! - **Links** (a model). Blob transfers, inputs and results, share the
//!   links of both ends: each peer's link carries one transfer after another
//!   at the slower end's bandwidth (a provider's profile's, 100 MB/s for
//!   others), so a busy requester's jobs wait for its uplink and a provider's
//!   for its downlink (`CoreWorld::transfer`). A check is a
//!   stand-in too, but its *samples* are the core's: each seed the core hands
//!   out (the member's signature over the receipt, and those the others
//!   revealed) names a segment of the result through the node's own
//!   `compute::verify::challenge_link`. An honest result checks; a cheater
//!   fakes the last [`FAKED_SHARE`] of its segments, and is caught when any
//!   seed lands there. A receipt that claims more units than the job's
//!   estimate (the model's measure here) fails too.
//! - **Churn.** A crashed provider loses what it had in memory and in flight;
//!   it restarts from its ledger's store and its last persisted state, as the
//!   binary does.
//!
//! Every peer ticks when its core asks ([`NodeCore::poll_timeout`]); nothing
//! else runs on a clock.
//!
//! What a large run costs, and how it is kept down:
//!
//! - **Offers are held back** for a core that would only file them
//!   ([`NodeCore::acts_on_offers`]: no job of its waits for an offer, no
//!   retry waits for a provider to move) and handed over, each at its arrival
//!   time and in order, just before anything else reaches it (or once
//!   [`MAX_HELD`] are waiting). Every offer still reaches every core, through
//!   the core's own `handle`; a thousand idle cores just do not each wake for
//!   it. In `scale-1k` offers were three quarters of all events.
//! - **Who a gossiped message concerns** is read once per message
//!   ([`node_core::dispatch::audience`]), not decoded again at every peer.
//! - **With the shared replica**, each core holds a one-account placeholder
//!   ledger while it is not lent the replica (a replica of a genesis of a
//!   thousand accounts per core was half the memory of `scale-1k`).
//!
//! - **Signed envelopes share what was computed from them** among clones (the
//!   body, its id, its decoding and a passed check: `protocol::signed`), so a
//!   message gossiped to a thousand cores is hashed, decoded and checked
//!   once; a requester's Diffie-Hellman with each committee member is done
//!   once per pair (`node_core::keys`).
//!
//! What is left is the protocol's own work, done once per message as a node
//! does it: at `scale-1k` (1,321 peers, 2 simulated days, 3,550 jobs) about
//! 200,000 signatures made and as many checked (probes and their replies a
//! third, proposals and answers a quarter), the requesters' order books, and
//! the ledger's folds. See the README for what `scale-1k` costs.
//!
//! With a replica per peer, sync dominates: it suits scenarios of tens of
//! peers (`smoke`, `faults`, the attacks).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

use crdt_ledger::store::MAX_RECORD;
use crdt_ledger::{GenesisEntry, Ledger, Loaded, MemStore, Params, Store, StoreError};
use node_core::{
    CoreConfig, Fetched, Input, JobKey, NodeCore, Output, PreparedJob, RanJob, Timing,
};
use protocol::market::BookConfig;
use protocol::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::metrics::Metrics;
use crate::netmodel::Net;
use crate::profiles::{Profile, ProfileParams};
use crate::scenario::{AttackKind, Scenario};
use crate::sched::{Progress, Scheduler};
use crate::setup::{
    NewJob, T0, arrival_gap, draw_cheaters, genesis, new_job, next_gap, provider_bond_at,
    provider_config, seed_for,
};

/// Ledger-sync neighbours each peer opens (besides the oracles' full mesh).
pub const SYNC_DEGREE: usize = 2;
/// Segments a stand-in result is made of (links of a training chain, blocks of
/// rows of an inference or preprocessing job).
pub const SEGMENTS: u32 = 10;
/// The share of its segments, at the end, that a cheater fakes.
pub const FAKED_SHARE: f64 = 0.5;
/// How fast a committee member re-executes one segment, CU/s (a reference
/// GPU).
const CHECK_CU_S: f64 = 8_000.0;
/// A requester's (or oracle's) link, MB/s; a provider's is its profile's.
const PEER_LINK_MB_S: f64 = 100.0;
/// Stand-in result size.
const RESULT_BYTES: u64 = 1 << 20;
/// Offers held back for one peer before those that have arrived are filed
/// anyway (a provider may not act for hours): bounds their memory.
const MAX_HELD: usize = 64;
/// Fake contracts a flooder sends in one burst.
const FLOOD_BURST: u32 = 1_000;

/// How a simulated provider works.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    Honest,
    /// Skips the last `skip` share of each job's segments and fakes them.
    Lazy(f64),
    /// Does the work, and claims the contract's whole `max_units`.
    Inflates,
}

impl Behaviour {
    fn cheats(self) -> bool {
        self != Behaviour::Honest
    }

    /// The share of the work it skips.
    fn skip(self) -> f64 {
        match self {
            Behaviour::Lazy(f) => f,
            _ => 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Provider {
        profile: Profile,
        params: ProfileParams,
    },
    Requester,
    Oracle,
}

impl Role {
    fn roles(&self) -> node_core::dispatch::Roles {
        node_core::dispatch::Roles {
            provider: matches!(self, Role::Provider { .. }),
            oracle: *self == Role::Oracle,
            requester: *self == Role::Requester,
        }
    }
}

struct Peer {
    core: NodeCore<SimStore>,
    cfg: CoreConfig,
    role: Role,
    region: usize,
    up: bool,
    /// Each crash starts a new life; what an earlier one scheduled is dropped.
    life: u32,
    /// The tick armed for this peer, if any.
    timer_at: Option<Timestamp>,
    saved: Option<Vec<u8>>,
    behaviour: Behaviour,
    /// A key held back, or one its attacker dropped: it never comes up.
    dormant: bool,
    neighbours: BTreeSet<usize>,
    /// Offers gossiped to this peer while its core would only file them
    /// ([`NodeCore::acts_on_offers`]), in order of arrival (time, sender,
    /// offer). They are handed over, each at its arrival time, just before
    /// anything else reaches the core; a crash loses them.
    inbox: BinaryHeap<Reverse<Held>>,
}

/// An offer held back for a peer ([`Peer::inbox`]), ordered by arrival, then
/// by when it was held.
struct Held {
    at: Timestamp,
    seq: u64,
    from: AccountId,
    msg: Message,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

enum Ev {
    /// An input for peer `to`, scheduled in its life `life`.
    Input {
        to: usize,
        life: u32,
        input: Input,
    },
    Timer(usize, Timestamp),
    Arrival(usize),
    Down(usize),
    Up(usize),
    /// A partition starts or ends: connections it cuts close, or open again.
    Links,
    /// A flooder gossips a burst of fake contracts and receipts.
    Flood,
}

/// One run of a scenario with a core per peer.
pub struct CoreWorld {
    sc: Scenario,
    net: Net,
    rng: ChaCha8Rng,
    sched: Scheduler<Ev>,
    end: Timestamp,
    genesis: GenesisEntry,
    params: Params,
    timing: Timing,
    peers: Vec<Peer>,
    n_prov: usize,
    n_req: usize,
    by_account: HashMap<AccountId, usize>,
    /// Peers by role (providers, requesters, oracles), each ascending: whom
    /// a message for some roles can concern.
    by_role: [Vec<usize>; 3],
    /// Providers and requesters by market shard, each ascending.
    markets: Vec<Vec<usize>>,
    /// Pairs of peers whose link is open (i < j).
    open: BTreeSet<(usize, usize)>,
    /// The one converged replica lent to each core in turn, unless every
    /// peer has its own ([`Replicas`]).
    shared: Option<Ledger<SimStore>>,
    /// Contract → (requester, provider), from escrow locks (shared replica).
    parties: HashMap<Hash32, (usize, usize)>,
    /// When each peer's link is next free of the blob transfers queued on it.
    link_free: Vec<Timestamp>,
    /// The peer whose link each peer's transfers use: itself, except that a
    /// machine split over several keys (the split self-dealer) has one link
    /// for all of them, as its slots do when it is one key.
    link_of: Vec<usize>,
    metrics: Metrics,
    /// Requesters' estimates over a job's measured units.
    margin: f64,
    /// What each provider's compute cost it, µ-tokens (its profile's cost per
    /// CU for the work it did).
    cost: Vec<f64>,
    attack: Option<Attacking>,
    /// Where a new core's ledger comes from.
    ledgers: Ledgers,
    /// Offers held back so far (orders those that arrive at one time).
    held: u64,
    /// Whether offers are held back for cores that would only file them.
    hold_offers: bool,
    /// What each provider earned in the jobs folded into the metrics so far:
    /// paid µ-tokens, jobs, milli-units and slashed µ-tokens.
    earned: HashMap<AccountId, (u64, u64, u64, u64)>,
    /// When requesters' finished jobs are next folded into the metrics and
    /// dropped (see [`CoreWorld::harvest`]).
    next_harvest: Timestamp,
}

/// How often requesters' finished jobs are folded into the metrics and
/// dropped from their cores.
const HARVEST_EVERY: DurationMs = DurationMs::secs(6 * 3600);

/// The store of a replica that nothing reopens (the cores' shared replica,
/// and the placeholders of cores lent it): every record is appended (and refused if too
/// large) as in a node, but only counted. Keeping the records, as `MemStore`
/// does, held a second copy of every entry besides the document. Its size
/// stays 0, so the ledger never compacts it: a compaction only saves the
/// whole document for a reload that never comes (at 1,000 providers over 30
/// days those saves took about 340 MB at their peak).
#[derive(Debug, Default)]
pub struct CountingStore {
    pub records: u64,
    pub bytes: u64,
}

impl Store for CountingStore {
    fn append(&mut self, record: &[u8]) -> Result<(), StoreError> {
        if record.len() > MAX_RECORD {
            return Err(StoreError::TooLarge(record.len()));
        }
        self.records += 1;
        self.bytes += record.len() as u64;
        Ok(())
    }
    fn load(&mut self) -> Result<Loaded, StoreError> {
        Ok(Loaded::default())
    }
    fn compact(&mut self, _snapshot: &[u8], _log: &[Vec<u8>]) -> Result<(), StoreError> {
        Ok(())
    }
    fn size(&self) -> u64 {
        0
    }
}

/// A simulated replica's store. A replica of a peer's own keeps its records
/// in memory, as a node keeps them on disk, and the peer reopens it when it
/// restarts. The shared replica and the placeholders are never reopened:
/// their records are only counted ([`CountingStore`]), and
/// they never compact.
#[derive(Debug)]
pub enum SimStore {
    Kept(MemStore),
    Counted(CountingStore),
}

impl Store for SimStore {
    fn append(&mut self, record: &[u8]) -> Result<(), StoreError> {
        match self {
            SimStore::Kept(s) => s.append(record),
            SimStore::Counted(s) => s.append(record),
        }
    }
    fn load(&mut self) -> Result<Loaded, StoreError> {
        match self {
            SimStore::Kept(s) => s.load(),
            SimStore::Counted(s) => s.load(),
        }
    }
    fn compact(&mut self, snapshot: &[u8], log: &[Vec<u8>]) -> Result<(), StoreError> {
        match self {
            SimStore::Kept(s) => s.compact(snapshot, log),
            SimStore::Counted(s) => s.compact(snapshot, log),
        }
    }
    fn size(&self) -> u64 {
        match self {
            SimStore::Kept(s) => s.size(),
            SimStore::Counted(s) => s.size(),
        }
    }
}

/// A replica of `genesis` on `store`.
fn replica(genesis: &GenesisEntry, actor: &[u8], store: SimStore) -> Ledger<SimStore> {
    Ledger::open(genesis.clone(), actor, store)
        .expect("a genesis opens on an empty store")
        .0
}

/// How cores get their ledger: a replica of the genesis each, or the shared
/// replica while lent and a small placeholder otherwise.
struct Ledgers {
    genesis: GenesisEntry,
    /// The shared replica, while the world is built (then [`CoreWorld::shared`]).
    shared: Option<Ledger<SimStore>>,
    /// The genesis of each core's placeholder: one account, so that a
    /// thousand idle cores do not each hold a replica of a genesis of a
    /// thousand accounts (most of a large run's memory otherwise).
    placeholder: GenesisEntry,
}

impl Ledgers {
    fn new(genesis: &GenesisEntry, replicas: Replicas) -> Ledgers {
        let founder = Identity::from_seed(seed_for(0, 7, 0));
        let placeholder = GenesisEntry::create(
            &founder,
            crdt_ledger::Genesis {
                name: "simnet/placeholder".into(),
                genesis_time: T0,
                params: genesis.genesis().params.clone(),
                balances: vec![],
                stakes: vec![(founder.account(), Amount::tokens(1_000))],
                bonds: vec![],
            },
        )
        .expect("the placeholder genesis is valid");
        let shared = (replicas == Replicas::Shared).then(|| {
            replica(
                genesis,
                b"simnet-shared",
                SimStore::Counted(Default::default()),
            )
        });
        Ledgers {
            genesis: genesis.clone(),
            shared,
            placeholder,
        }
    }

    /// A new core for `id` (see [`Ledgers::core_on`]), while the world is built.
    fn core(&mut self, id: Identity, cfg: CoreConfig) -> NodeCore<SimStore> {
        let mut shared = self.shared.take();
        let core = self.core_on(shared.as_mut(), id, cfg);
        self.shared = shared;
        core
    }

    /// A new core for `id`: on a replica of its own, or built on `shared`
    /// (the core reads its network and parameters there) and left holding
    /// its placeholder.
    fn core_on(
        &self,
        shared: Option<&mut Ledger<SimStore>>,
        id: Identity,
        cfg: CoreConfig,
    ) -> NodeCore<SimStore> {
        let actor = id.account().0;
        let Some(shared) = shared else {
            let ledger = replica(&self.genesis, &actor, SimStore::Kept(MemStore::new()));
            return NodeCore::new(id, ledger, cfg);
        };
        let mut ledger = replica(
            &self.placeholder,
            &actor,
            SimStore::Counted(Default::default()),
        );
        std::mem::swap(shared, &mut ledger);
        let mut core = NodeCore::new(id, ledger, cfg);
        core.lend_ledger(shared);
        core
    }
}

/// An attack under way.
struct Attacking {
    kind: AttackKind,
    /// Its provider keys, in order of use.
    keys: Vec<usize>,
    /// Whitewash: the key in use.
    current: usize,
    /// Self-deal: the requester that buys from the attacker's keys only.
    buyer: Option<usize>,
    buyer_rate: f64,
    /// Self-deal: the jobs the attacker's keys ran for its buyer, and what
    /// their compute cost (µ-tokens).
    bought_jobs: u64,
    bought_cost: f64,
    /// Flood: fake contracts still to send, and the keys that sign them.
    fakes_left: u32,
    fake_keys: Vec<Identity>,
    /// The flooder's own draws, apart from the world's: the same seed
    /// without the flood runs the same market.
    fake_rng: ChaCha8Rng,
    sent: u64,
}

/// Where the simulated peers keep the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicas {
    /// One replica per peer, with real automerge sync over the overlay: what
    /// the binary does, and what attacks on the ledger need. Sync dominates
    /// the cost (a simulated day of `faults`, 75 peers, takes minutes).
    PerPeer,
    /// One converged replica, lent to each core for each call. An entry is
    /// visible to every core at once; the cores it concerns (the parties of a
    /// lock or settlement, the oracles, everyone at a checkpoint) are told
    /// after one hop, as sync would bring it. No sync runs, and partitions
    /// do not delay ledger entries (only messages).
    Shared,
}

impl std::fmt::Debug for CoreWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CoreWorld({}, {:?})", self.sc.name, self.sched)
    }
}

/// The stand-in result of `contract` (a lazy provider's differs).
fn result_hash(contract: &Hash32, lazy: bool) -> Hash32 {
    let tag: &[u8] = if lazy { b"faked" } else { b"right" };
    Hash32::of(&[&contract.0[..], tag].concat())
}

/// Whether the samples `seeds` name a segment of a result whose last `skip`
/// share was faked, through the node's own choice of segment.
pub fn lands_on_faked(seeds: &[u64], skip: f64) -> bool {
    let honest = (f64::from(SEGMENTS) * (1.0 - skip)).round() as usize;
    seeds.iter().any(|s| {
        compute::verify::challenge_link(SEGMENTS as usize + 1, *s).is_some_and(|l| l > honest)
    })
}

impl CoreWorld {
    /// Build the world of `sc` with `seed`.
    pub fn new(sc: &Scenario, seed: u64, replicas: Replicas) -> CoreWorld {
        let n_req = sc.requesters.count as usize;
        let (genesis, _) = genesis(sc, seed, n_req);
        let params = genesis.genesis().params.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let net = Net::new(&sc.network, &sc.faults.partitions);
        let end = T0.plus(DurationMs((sc.days * 86_400_000.0) as u64));
        let n_prov = sc.provider_count() as usize;
        let cheaters: BTreeSet<usize> = draw_cheaters(sc, &mut rng).into_iter().collect();
        let attack_keys = sc.attack_keys();
        let timing = Timing {
            // Probing every 30 minutes per contract and member, as the engines'
            // simulation does: availability is still measured on long jobs.
            probe_every: DurationMs::secs(1800),
            offer_ttl: MAX_TTL,
            ..Timing::default()
        };
        // A crashed peer restarts from the state it would have persisted
        // last, taken at the crash (see `down`): the same state, without
        // encoding it at every change.
        let persist = false;
        let book = BookConfig {
            capacity: n_prov * 2 + 16,
            per_class: sc.requesters.book_per_class as usize,
            replay_capacity: n_prov * 8 + 64,
        };
        // Providers and oracles submit no jobs: they keep no order book.
        let no_book = BookConfig {
            capacity: 0,
            per_class: 0,
            replay_capacity: 0,
        };
        let mut ledgers = Ledgers::new(&genesis, replicas);
        let mut peers = Vec::new();
        for g in &sc.providers {
            for _ in 0..g.count {
                let i = peers.len();
                let mut params = g.profile.params();
                let id = Identity::from_seed(seed_for(seed, 1, i));
                let mut behaviour = if cheaters.contains(&i) {
                    Behaviour::Lazy(FAKED_SHARE)
                } else {
                    Behaviour::Honest
                };
                let mut dormant = false;
                if let (Some(k), Some(a)) =
                    (attack_keys.iter().position(|&x| x == i), sc.attack.as_ref())
                {
                    match a.kind {
                        AttackKind::Lazy => behaviour = Behaviour::Lazy(a.skip[k]),
                        AttackKind::Units => behaviour = Behaviour::Inflates,
                        AttackKind::SelfDeal => {
                            // One machine's slots over its keys.
                            let keys = u16::try_from(a.keys).unwrap_or(u16::MAX);
                            params.slots = (params.slots / keys).max(1);
                            behaviour = Behaviour::Honest;
                        }
                        AttackKind::Whitewash => {
                            behaviour = Behaviour::Lazy(a.skip[0]);
                            // Bonded and held back until the key before is caught.
                            dormant = k > 0;
                        }
                        AttackKind::Flood => {}
                    }
                }
                let cfg = CoreConfig {
                    provider: Some(provider_config(&params, &g.region, true)),
                    oracle: false,
                    bond: provider_bond_at(sc, i, &params),
                    contact: vec![],
                    timing,
                    book: no_book,
                    persist,
                    submits: false,
                };
                let mut peer = Peer::new(
                    id,
                    &mut ledgers,
                    cfg,
                    Role::Provider {
                        profile: g.profile,
                        params,
                    },
                    sc.region_index(&g.region),
                    behaviour,
                );
                peer.dormant = dormant;
                peers.push(peer);
            }
        }
        for i in 0..n_req {
            let id = Identity::from_seed(seed_for(seed, 2, i));
            let region = sc.region_index(&sc.requesters.regions[i % sc.requesters.regions.len()]);
            let cfg = CoreConfig {
                provider: None,
                oracle: false,
                bond: Amount::ZERO,
                contact: vec![],
                timing,
                book,
                persist,
                submits: true,
            };
            peers.push(Peer::new(
                id,
                &mut ledgers,
                cfg,
                Role::Requester,
                region,
                Behaviour::Honest,
            ));
        }
        for i in 0..sc.oracles.count as usize {
            let id = Identity::from_seed(seed_for(seed, 3, i));
            let cfg = CoreConfig {
                provider: None,
                oracle: true,
                bond: Amount::ZERO,
                contact: vec![],
                timing,
                book: no_book,
                persist,
                submits: false,
            };
            let region = i % sc.network.regions.len();
            peers.push(Peer::new(
                id,
                &mut ledgers,
                cfg,
                Role::Oracle,
                region,
                Behaviour::Honest,
            ));
        }
        let by_account = peers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.core.account(), i))
            .collect();
        let shards = params.market_shards.max(1);
        let mut by_role: [Vec<usize>; 3] = Default::default();
        let mut markets = vec![Vec::new(); usize::from(shards)];
        for (i, p) in peers.iter().enumerate() {
            let role = match p.role {
                Role::Provider { .. } => 0,
                Role::Requester => 1,
                Role::Oracle => 2,
            };
            by_role[role].push(i);
            if role < 2 {
                let k = protocol::market::market_shard(&p.core.account(), shards);
                markets[usize::from(k)].push(i);
            }
        }
        let metrics = Metrics::new(&sc.name, seed, n_prov, n_req, sc.days);
        let attack = sc.attack.as_ref().map(|a| Attacking {
            kind: a.kind,
            keys: attack_keys.clone(),
            current: 0,
            buyer: (a.kind == AttackKind::SelfDeal).then(|| n_prov + n_req - 1),
            buyer_rate: a.jobs_per_day,
            bought_jobs: 0,
            bought_cost: 0.0,
            fakes_left: if a.kind == AttackKind::Flood {
                a.fakes
            } else {
                0
            },
            fake_keys: if a.kind == AttackKind::Flood {
                (0..64)
                    .map(|k| Identity::from_seed(seed_for(seed, 5, k)))
                    .collect()
            } else {
                Vec::new()
            },
            fake_rng: ChaCha8Rng::seed_from_u64(seed_for(seed, 6, 0)),
            sent: 0,
        });
        let margin = sc.attack.as_ref().map_or(1.0, |a| a.estimate_margin);
        let mut link_of: Vec<usize> = (0..peers.len()).collect();
        if sc
            .attack
            .as_ref()
            .is_some_and(|a| a.kind == AttackKind::SelfDeal)
            && let Some(&first) = attack_keys.first()
        {
            for &k in &attack_keys {
                link_of[k] = first;
            }
        }
        let mut w = CoreWorld {
            sc: sc.clone(),
            net,
            rng,
            sched: Scheduler::new(T0),
            end,
            genesis,
            params,
            timing,
            peers,
            n_prov,
            n_req,
            by_account,
            by_role,
            markets,
            open: BTreeSet::new(),
            shared: ledgers.shared.take(),
            ledgers,
            held: 0,
            hold_offers: true,
            earned: HashMap::new(),
            next_harvest: T0.plus(HARVEST_EVERY),

            parties: HashMap::new(),
            link_free: Vec::new(),
            link_of,
            metrics,
            margin,
            cost: vec![0.0; n_prov],
            attack,
        };
        w.overlay();
        w.bootstrap();
        w
    }

    /// The sync overlay: each peer links [`SYNC_DEGREE`] others at random, and
    /// every oracle links every other.
    fn overlay(&mut self) {
        let n = self.peers.len();
        for i in 0..n {
            for _ in 0..SYNC_DEGREE {
                let j = self.rng.random_range(0..n);
                if j != i {
                    self.peers[i].neighbours.insert(j);
                    self.peers[j].neighbours.insert(i);
                }
            }
        }
        let oracles: Vec<usize> = (self.n_prov + self.n_req..n).collect();
        for &a in &oracles {
            for &b in &oracles {
                if a != b {
                    self.peers[a].neighbours.insert(b);
                }
            }
        }
    }

    fn bootstrap(&mut self) {
        for i in 0..self.peers.len() {
            // Peers come up over the first minute.
            let at = T0.plus(DurationMs(self.rng.random_range(0..60_000)));
            if self.peers[i].dormant {
                continue;
            }
            self.sched.at(at, Ev::Up(i));
            self.churn_after(i, at);
        }
        let fakes = self.attack.as_ref().map_or(0, |a| a.fakes_left);
        if fakes > 0 {
            // Bursts over the first day, from its tenth minute.
            let bursts = u64::from(fakes.div_ceil(FLOOD_BURST));
            let start = T0.plus(DurationMs::secs(600));
            let gap = (86_400_000 - 600_000) / bursts;
            for b in 0..bursts {
                self.sched.at(start.plus(DurationMs(b * gap)), Ev::Flood);
            }
        }
        for r in 0..self.n_req {
            let first =
                T0.plus(DurationMs::secs(600))
                    .plus(arrival_gap(&self.sc, &mut self.rng, T0));
            self.sched.at(first, Ev::Arrival(r));
        }
        for p in &self.sc.faults.partitions {
            let start = T0.plus(DurationMs((p.start_hours * 3_600_000.0) as u64));
            let end = start.plus(DurationMs((p.hours * 3_600_000.0) as u64));
            self.sched.at(start, Ev::Links);
            self.sched.at(end, Ev::Links);
        }
    }

    /// Peer `i`'s link bandwidth, MB/s.
    fn link_mb_s(&self, i: usize) -> f64 {
        match &self.peers[i].role {
            Role::Provider { params, .. } => params.bandwidth_mb_s,
            _ => PEER_LINK_MB_S,
        }
    }

    /// Move a blob of `bytes` between peers `a` and `b` (either may be
    /// unknown), from now: the delay until it has arrived. A model of shared
    /// links: transfers through a peer's link go one after another, each at
    /// the slower end's bandwidth, so a link carries no more than its
    /// bandwidth however many jobs use it (the total of a fairly shared
    /// link, served first come first served).
    fn transfer(&mut self, a: Option<usize>, b: Option<usize>, bytes: u64) -> DurationMs {
        let now = self.sched.now();
        if self.link_free.len() < self.peers.len() {
            self.link_free.resize(self.peers.len(), T0);
        }
        let ends: Vec<usize> = [a, b]
            .into_iter()
            .flatten()
            .map(|i| self.link_of.get(i).copied().unwrap_or(i))
            .collect();
        let bw = ends
            .iter()
            .map(|&i| self.link_mb_s(i))
            .fold(f64::INFINITY, f64::min)
            .min(1e6);
        let start = ends
            .iter()
            .map(|&i| self.link_free[i])
            .fold(now, Timestamp::max);
        let end = start.plus(DurationMs(
            (bytes as f64 / (bw * 1e6) * 1000.0).ceil() as u64
        ));
        for &i in &ends {
            self.link_free[i] = end;
        }
        end.since(now)
    }

    /// Schedule provider `i`'s next crash after `at`, if the scenario churns.
    fn churn_after(&mut self, i: usize, at: Timestamp) {
        let rate = self.crash_rate(i);
        if i < self.n_prov && rate > 0.0 {
            let t = next_gap(&mut self.rng, rate);
            self.sched.at(at.plus(t), Ev::Down(i));
        }
    }

    /// Provider `i`'s crashes a day: the scenario's churn, plus its profile's
    /// outages when the scenario models them.
    fn crash_rate(&self, i: usize) -> f64 {
        let profile = match &self.peers[i].role {
            Role::Provider { params, .. } if self.sc.faults.profile_outages => {
                params.outages_per_day()
            }
            _ => 0.0,
        };
        self.sc.faults.churn_per_day + profile
    }

    /// Outages per day (a rate) of provider `i`'s mean outage: its profile's
    /// with profile outages, else 10 minutes.
    fn outage_rate(&self, i: usize) -> f64 {
        match &self.peers[i].role {
            Role::Provider { params, .. }
                if self.sc.faults.profile_outages && params.outage_min > 0.0 =>
            {
                1_440.0 / params.outage_min
            }
            _ => 24.0 * 6.0, // mean 10 minutes
        }
    }

    fn t_ms(&self) -> f64 {
        (self.sched.now().0 - T0.0) as f64
    }

    /// Check every pending view a replica keeps across an entry (appended,
    /// or from sync) against a refold, and panic on a difference (for tests:
    /// a refold per entry).
    pub fn checking_views(mut self, on: bool) -> CoreWorld {
        match self.shared.as_mut() {
            Some(l) => l.check_incremental_views(on),
            // Each replica of its own (a core restarted after a crash opens
            // a new one, unchecked).
            None => {
                for p in &mut self.peers {
                    p.core.ledger().check_incremental_views(on);
                }
            }
        }
        self
    }

    /// Run to the end; the metrics, and how many entries the replicas
    /// folded on top of their pending view ([`Ledger::views_kept`]).
    pub fn run_counting_views(mut self, progress: impl FnMut(f64)) -> (Metrics, u64) {
        self.run_to_end(progress);
        let kept = match self.shared.as_ref() {
            Some(l) => l.views_kept(),
            None => self
                .peers
                .iter_mut()
                .map(|p| p.core.ledger().views_kept())
                .sum(),
        };
        (self.finish(), kept)
    }

    /// Hold offers back for cores that would only file them (the default),
    /// or hand each over as an event of its own on arrival.
    pub fn holding_offers(mut self, on: bool) -> CoreWorld {
        self.hold_offers = on;
        self
    }

    /// Run to the end; returns the metrics.
    pub fn run(mut self, progress: impl FnMut(f64)) -> Metrics {
        self.run_to_end(progress);
        self.finish()
    }

    fn run_to_end(&mut self, mut progress: impl FnMut(f64)) {
        let mut done = Progress::new(T0, self.end);
        while let Some((now, ev)) = self.sched.next_until(self.end) {
            self.event(now, ev);
            if now >= self.next_harvest {
                self.harvest();
                self.next_harvest = now.plus(HARVEST_EVERY);
            }
            done.at(now, &mut progress);
        }
        progress(1.0);
    }

    fn event(&mut self, now: Timestamp, ev: Ev) {
        let kind = match &ev {
            Ev::Input { input, .. } => match input {
                Input::Message { msg, .. } => msg.kind(),
                Input::Sync { .. } => "ledger-sync",
                Input::Proposal { .. } => "proposal",
                Input::Skip(_) => "skip",
                Input::Challenge { .. } => "challenge",
                Input::Ran { .. } => "finish",
                Input::Checked { .. } => "check",
                Input::Fetched { .. } => "fetch",
                _ => "link",
            },
            Ev::Timer(..) => "timer",
            Ev::Arrival(_) => "arrival",
            Ev::Down(_) => "down",
            Ev::Up(_) => "up",
            Ev::Links => "links",
            Ev::Flood => "flood",
        };
        *self.metrics.events_by_kind.entry(kind).or_default() += 1;
        match ev {
            Ev::Input { to, life, input } => {
                if self.peers[to].up && self.peers[to].life == life {
                    self.handle(to, input);
                }
            }
            Ev::Timer(i, at) => {
                if self.peers[i].up && self.peers[i].timer_at == Some(at) {
                    self.peers[i].timer_at = None;
                    self.handle(i, Input::Tick);
                }
            }
            Ev::Arrival(r) => {
                self.submit(now, r);
                let gap = match &self.attack {
                    Some(a) if a.buyer == Some(self.n_prov + r) => {
                        next_gap(&mut self.rng, a.buyer_rate)
                    }
                    _ => arrival_gap(&self.sc, &mut self.rng, now),
                };
                self.sched.at(now.plus(gap), Ev::Arrival(r));
            }
            Ev::Up(i) if self.peers[i].dormant => {}
            Ev::Down(i) if self.peers[i].dormant => {}
            Ev::Up(i) => self.up(i),
            Ev::Down(i) => {
                self.down(i);
                let (outages, crashes) = (self.outage_rate(i), self.crash_rate(i));
                let back = next_gap(&mut self.rng, outages);
                self.sched.at(now.plus(back), Ev::Up(i));
                if let Some(d) = self.metrics.provider_down_ms.get_mut(i) {
                    // Counted to the end of the run at most.
                    let left = self.end.0.saturating_sub(now.0);
                    *d += back.0.min(left) as f64;
                }
                if crashes > 0.0 {
                    let next = next_gap(&mut self.rng, crashes);
                    self.sched.at(now.plus(back).plus(next), Ev::Down(i));
                }
            }
            Ev::Links => self.relink(),
            Ev::Flood => self.flood(),
        }
    }

    /// Peer `i` starts: from scratch the first time, else from its ledger's
    /// store and its last persisted state, as the binary restarts.
    fn up(&mut self, i: usize) {
        if self.peers[i].life > 0 {
            let p = &mut self.peers[i];
            let cfg = p.cfg.clone();
            let id = p.core.identity().clone();
            if let Some(shared) = self.shared.as_mut() {
                p.core = self.ledgers.core_on(Some(shared), id, cfg);
            } else {
                let fresh = self.ledgers.core_on(None, id.clone(), cfg.clone());
                let old = std::mem::replace(&mut p.core, fresh);
                let store = old.into_ledger().into_store();
                // The store was written by this same replica: it opens.
                let (ledger, _) = Ledger::open(self.genesis.clone(), &id.account().0, store)
                    .expect("a replica's own store opens");
                p.core = NodeCore::new(id, ledger, cfg);
            }
            self.peers[i].up = true;
            if let Some(bytes) = self.peers[i].saved.clone() {
                self.call(i, |core, now, rng, out| {
                    // A state this core saved decodes; if not, it starts afresh.
                    let _ = core.restore(now, &bytes, rng, out);
                });
            }
        }
        self.peers[i].up = true;
        self.peers[i].timer_at = None;
        self.handle(i, Input::Start);
        if self.shared.is_some() {
            return; // no sync to run
        }
        let t = self.t_ms();
        let neighbours: Vec<usize> = self.peers[i].neighbours.iter().copied().collect();
        for j in neighbours {
            if self.peers[j].up
                && self
                    .net
                    .connected(t, self.peers[i].region, self.peers[j].region)
            {
                self.open.insert((i.min(j), i.max(j)));
                let (a, b) = (self.peers[j].core.account(), self.peers[i].core.account());
                self.handle(i, Input::PeerUp(a));
                self.handle(j, Input::PeerUp(b));
            }
        }
    }

    /// Peer `i` crashes: its memory and what it had in flight are lost; its
    /// neighbours see the connection close.
    fn down(&mut self, i: usize) {
        self.take_offers(i);
        self.metrics.crashes += 1;
        self.peers[i].saved = Some(self.peers[i].core.state_to_save());
        self.peers[i].up = false;
        self.peers[i].inbox.clear();
        self.peers[i].life += 1;
        let me = self.peers[i].core.account();
        let links: Vec<(usize, usize)> = self
            .open
            .iter()
            .filter(|(a, b)| *a == i || *b == i)
            .copied()
            .collect();
        for (a, b) in links {
            self.open.remove(&(a, b));
            let j = if a == i { b } else { a };
            self.handle(j, Input::PeerDown(me));
        }
    }

    /// A partition began or ended: close the links it cuts, open those it no
    /// longer cuts.
    fn relink(&mut self) {
        if self.shared.is_some() {
            return; // no sync links: messages alone see the partition
        }
        let t = self.t_ms();
        for i in 0..self.peers.len() {
            let neighbours: Vec<usize> = self.peers[i]
                .neighbours
                .iter()
                .copied()
                .filter(|&j| j > i)
                .collect();
            for j in neighbours {
                if !(self.peers[i].up && self.peers[j].up) {
                    continue;
                }
                let can = self
                    .net
                    .connected(t, self.peers[i].region, self.peers[j].region);
                let is = self.open.contains(&(i, j));
                let (a, b) = (self.peers[j].core.account(), self.peers[i].core.account());
                if can && !is {
                    self.open.insert((i, j));
                    self.handle(i, Input::PeerUp(a));
                    self.handle(j, Input::PeerUp(b));
                } else if !can && is {
                    self.open.remove(&(i, j));
                    self.handle(i, Input::PeerDown(a));
                    self.handle(j, Input::PeerDown(b));
                }
            }
        }
    }

    fn submit(&mut self, now: Timestamp, r: usize) {
        let i = self.n_prov + r;
        if !self.peers[i].up {
            return;
        }
        let requester = self.peers[i].core.account();
        let NewJob { mut spec, kind, dp } = new_job(&self.sc, &mut self.rng, requester, now);
        let units = spec.estimated_units;
        if self.margin > 1.0 {
            // The requester's estimate leaves a margin over the measure.
            spec.estimated_units =
                ComputeUnits::from_milli((units.milli as f64 * self.margin).round() as u64);
        }
        self.metrics.job_submitted(r, &kind, dp, units);
        let key = JobKey::from_bytes(self.rng.random());
        let prepared = PreparedJob {
            spec,
            key,
            note: format!("simulated {kind} job"),
        };
        let refused = self.call(i, |core, now, rng, out| {
            core.submit(now, prepared, rng, out).is_err()
        });
        if refused {
            self.metrics.rejections += 1;
        }
    }

    fn handle(&mut self, i: usize, input: Input) {
        self.call(i, |core, now, rng, out| core.handle(now, input, rng, out));
    }

    /// Call peer `i`'s core (with the shared replica lent to it, if there is
    /// one), carry out its outputs, tell the cores its new ledger entries
    /// concern, and re-arm its tick.
    fn call<T>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut NodeCore<SimStore>, Timestamp, &mut ChaCha8Rng, &mut Vec<Output>) -> T,
    ) -> T {
        self.take_offers(i);
        self.call_at(i, self.sched.now(), f)
    }

    /// Hand peer `i` the offers held back for it that have arrived by now,
    /// each at its arrival time.
    fn take_offers(&mut self, i: usize) {
        let now = self.sched.now();
        while self.peers[i].inbox.peek().is_some_and(|h| h.0.at <= now) {
            let Some(Reverse(Held { at, from, msg, .. })) = self.peers[i].inbox.pop() else {
                break;
            };
            let input = Input::gossip(Some(from), msg);
            self.call_at(i, at, |core, now, rng, out| {
                core.handle(now, input, rng, out)
            });
        }
    }

    /// [`CoreWorld::call`] at `now`, with nothing held back handed over first.
    fn call_at<T>(
        &mut self,
        i: usize,
        now: Timestamp,
        f: impl FnOnce(&mut NodeCore<SimStore>, Timestamp, &mut ChaCha8Rng, &mut Vec<Output>) -> T,
    ) -> T {
        let mut out = Vec::new();
        let p = &mut self.peers[i];
        if let Some(l) = self.shared.as_mut() {
            p.core.lend_ledger(l);
        }
        let before = p.core.ledger().entry_count();
        let r = f(&mut p.core, now, &mut self.rng, &mut out);
        let wrote = p.core.ledger().entry_count().saturating_sub(before);
        let next = p.core.poll_timeout();
        if let Some(l) = self.shared.as_mut() {
            p.core.lend_ledger(l);
        }
        self.carry(i, out);
        if wrote > 0 && self.shared.is_some() {
            self.tell_concerned(i, wrote);
        }
        self.arm(i, next);
        r
    }

    /// Peer `i` wrote `n` entries to the shared replica: tell the cores they
    /// concern, one hop later, as sync would.
    fn tell_concerned(&mut self, i: usize, n: usize) {
        let Some(ledger) = self.shared.as_mut() else {
            return;
        };
        let author = self.peers[i].core.account();
        let mut told = BTreeSet::new();
        let mut caught = Vec::new();
        let mut everyone = false;
        // The members that watch a contract: the committee of its escrow's
        // epoch for a lock, the one that certified it for a settlement (a
        // lock that folds into another epoch once final is watched anew at
        // that checkpoint, which everyone hears of). Other members' cores
        // would find nothing of theirs in it.
        let by_account = &self.by_account;
        let watchers = |state: &crdt_ledger::State, epoch: u64, told: &mut BTreeSet<usize>| {
            let members = state.committee_for(epoch).unwrap_or_default();
            told.extend(members.iter().filter_map(|a| by_account.get(a).copied()));
        };
        let written: Vec<_> = ledger.latest_by(&author, n).cloned().collect();
        for e in &written {
            match &e.data.body {
                crdt_ledger::Body::EscrowLock { contract } => {
                    if let Ok(t) = contract.body_unverified() {
                        let r = self.by_account.get(&t.requester).copied();
                        let p = self.by_account.get(&t.provider).copied();
                        if let (Some(r), Some(p)) = (r, p) {
                            self.parties.insert(contract.body_hash(), (r, p));
                            told.insert(p);
                        }
                    }
                    let state = ledger.state();
                    if let Some(x) = state.escrows.get(&contract.body_hash()) {
                        watchers(state, x.epoch, &mut told);
                    }
                }
                crdt_ledger::Body::Settlement { cert, .. } => {
                    if let Some((r, p)) = self.parties.remove(&cert.contract) {
                        told.insert(r);
                        told.insert(p);
                        if proves_wrong(cert) {
                            caught.push(p);
                        }
                    }
                    watchers(ledger.state(), cert.epoch, &mut told);
                }
                crdt_ledger::Body::Checkpoint(_) => everyone = true,
                _ => {}
            }
        }
        for p in caught {
            self.rotate(p);
        }
        if everyone {
            told.extend(0..self.peers.len());
        }
        told.remove(&i);
        let a = self.peers[i].region;
        for j in told {
            if self.peers[j].up {
                let b = self.peers[j].region;
                let d = self.net.latency(a, b);
                self.at(DurationMs(d as u64), j, Input::LedgerChanged);
            }
        }
    }

    /// Arm peer `i`'s tick for `next`, when its core next wants one.
    fn arm(&mut self, i: usize, next: Option<Timestamp>) {
        let p = &mut self.peers[i];
        let Some(t) = next else {
            return;
        };
        // A tick is never due sooner than a millisecond ahead, so a timer the
        // core keeps due cannot spin the clock.
        let t = t.max(self.sched.now().plus(DurationMs(1)));
        if p.timer_at.is_some_and(|at| at <= t) {
            return;
        }
        p.timer_at = Some(t);
        self.sched.at(t, Ev::Timer(i, t));
    }

    fn at(&mut self, after: DurationMs, to: usize, input: Input) {
        let t = self.sched.now().plus(after);
        let life = self.peers[to].life;
        self.sched.at(t, Ev::Input { to, life, input });
    }

    fn carry(&mut self, i: usize, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Publish(msg) => self.publish(i, &msg),
                Output::Send { to, msg } => {
                    let Some(&j) = self.by_account.get(&to) else {
                        continue;
                    };
                    let t = self.t_ms();
                    let (a, b) = (self.peers[i].region, self.peers[j].region);
                    match self.net.direct_delay(t, a, b) {
                        Some(d) if self.peers[j].up => {
                            self.metrics.messages += 1;
                            let from = self.peers[i].core.account();
                            self.at(DurationMs(d as u64), j, Input::direct(from, msg));
                        }
                        _ => self.metrics.partitioned_messages += 1,
                    }
                }
                Output::Run {
                    contract, terms, ..
                } => self.run_job(i, contract, &terms),
                Output::Check {
                    contract,
                    terms,
                    receipt,
                    seeds,
                    ..
                } => {
                    self.metrics.checks += 1;
                    let honest = receipt.result.hash == result_hash(&contract, false);
                    let skip = self
                        .by_account
                        .get(&receipt.provider)
                        .map_or(FAKED_SHARE, |&p| self.peers[p].behaviour.skip());
                    let faked = !honest && lands_on_faked(&seeds, skip);
                    let inflated = receipt.units_used > self.measure(&terms);
                    let result = if faked || inflated {
                        Err(node_core::WorkError::fatal(if inflated {
                            "the receipt claims more units than the job's measure"
                        } else {
                            "a challenged segment differs"
                        }))
                    } else {
                        Ok(format!("{} samples check", seeds.len()))
                    };
                    let cu = self.measure(&terms).as_f64() / f64::from(SEGMENTS);
                    let ms = cu / CHECK_CU_S * 1000.0 * seeds.len().max(1) as f64;
                    self.at(
                        DurationMs(ms as u64),
                        i,
                        Input::Checked { contract, result },
                    );
                }
                Output::FetchResult { job, receipt, .. } => {
                    let from = self.by_account.get(&receipt.provider).copied();
                    let delay = self.transfer(from, Some(i), receipt.result.size);
                    let result = Ok(Fetched {
                        path: format!("results/{}", job.short()).into(),
                        bytes: receipt.result.size,
                        metrics: serde_json::Value::Null,
                        summary: "fetched (simulated)".into(),
                    });
                    self.at(delay, i, Input::Fetched { job, result });
                }
                Output::Persist(bytes) => self.peers[i].saved = Some(bytes),
                _ => {}
            }
        }
    }

    /// Gossip `msg` from peer `i` to every other peer that is up and
    /// consumes it (lost across a partition).
    fn publish(&mut self, i: usize, msg: &Message) {
        let offer = matches!(msg, Message::Offer(_));
        if offer {
            self.metrics.offers_published += 1;
        }
        let from = self.peers[i].core.account();
        let region = self.peers[i].region;
        let t = self.t_ms();
        let n = self.peers.len();
        // Who it concerns, read once (not at each of a thousand peers), and
        // the peers of those roles (in that market shard), not all of them.
        let audience = node_core::dispatch::audience(msg, self.params.market_shards);
        let mut to: Vec<usize> = match &audience.accounts {
            Some(accounts) => accounts
                .iter()
                .filter_map(|a| self.by_account.get(a).copied())
                .collect(),
            None => {
                let r = audience.roles;
                let mut to = Vec::new();
                match audience.shard {
                    Some(k) => {
                        let market = self.markets.get(usize::from(k)).map_or(&[][..], |m| m);
                        to.extend(market.iter().copied().filter(|&j| {
                            let has = self.peers[j].role.roles();
                            (r.provider && has.provider) || (r.requester && has.requester)
                        }));
                    }
                    None => {
                        let [providers, requesters, _] = &self.by_role;
                        if r.provider {
                            to.extend_from_slice(providers);
                        }
                        if r.requester {
                            to.extend_from_slice(requesters);
                        }
                    }
                }
                if r.oracle {
                    to.extend_from_slice(&self.by_role[2]);
                }
                to
            }
        };
        // In peer order, as the world's randomness is drawn.
        to.sort();
        to.dedup();
        let requester = self.requester_of(msg);
        for j in to {
            if j == i || !self.peers[j].up {
                continue;
            }
            let p = &self.peers[j];
            if !audience.includes(&p.core.account(), p.role.roles()) {
                continue; // forwarded there, consumed by nothing
            }
            if p.role == Role::Requester && requester.is_some_and(|r| r != j) {
                continue; // a receipt or withdrawal of another requester's job
            }
            if !self.buyer_sees(msg, j) {
                continue;
            }
            let b = self.peers[j].region;
            match self.net.gossip_delay(t, region, b, n, &mut self.rng) {
                Some(d) if offer && self.hold_offers && !self.peers[j].core.acts_on_offers() => {
                    // Filed when the core next acts, at its arrival time:
                    // the same state, without waking it.
                    self.metrics.messages += 1;
                    let at = self.sched.now().plus(DurationMs(d.max(0.0) as u64));
                    self.held += 1;
                    self.peers[j].inbox.push(Reverse(Held {
                        at,
                        seq: self.held,
                        from,
                        msg: msg.clone(),
                    }));
                    if self.peers[j].inbox.len() > MAX_HELD {
                        // A core that rarely acts: file what has arrived.
                        self.take_offers(j);
                    }
                }
                Some(d) => {
                    self.metrics.messages += 1;
                    let input = Input::gossip(Some(from), msg.clone());
                    self.at(DurationMs(d.max(0.0) as u64), j, input);
                }
                None => self.metrics.partitioned_messages += 1,
            }
        }
    }

    /// A self-dealing attacker's buyer deals with its own keys only: it
    /// takes no other provider's offer.
    fn buyer_sees(&self, msg: &Message, j: usize) -> bool {
        let Some(a) = &self.attack else {
            return true;
        };
        if a.buyer != Some(j) {
            return true;
        }
        let Message::Offer(o) = msg else {
            return true;
        };
        o.body_unverified().is_ok_and(|o| {
            self.by_account
                .get(&o.provider)
                .is_some_and(|p| a.keys.contains(p))
        })
    }

    /// The requester a receipt or a withdrawal is about, if the driver knows
    /// it (the engines ignore another's; the driver knows each contract's
    /// parties from its run).
    fn requester_of(&self, msg: &Message) -> Option<usize> {
        let contract = match msg {
            Message::Receipt(r) => r.body_unverified().map(|r| r.contract),
            Message::Withdrawal(w) => w.body_unverified().map(|w| w.contract),
            _ => return None,
        };
        contract
            .ok()
            .and_then(|c| self.parties.get(&c).map(|&(r, _)| r))
    }

    /// A provider's run: the input transfer, then the compute time of its
    /// profile (late with its unreliability); then the stand-in result.
    fn run_job(&mut self, i: usize, contract: Hash32, terms: &ContractTerms) {
        let Role::Provider { params: p, .. } = self.peers[i].role else {
            return;
        };
        if let Some(&r) = self.by_account.get(&terms.spec.requester) {
            self.parties.insert(contract, (r, i));
        }
        let now = self.sched.now();
        let behaviour = self.peers[i].behaviour;
        let measure = self.measure(terms);
        // A lazy provider computes (and pays for) only what it does not skip.
        let done = 1.0 - behaviour.skip();
        let cost = measure.as_f64() * done * p.cost as f64;
        self.cost[i] += cost;
        if let Some(a) = self.attack.as_mut()
            && a.buyer.is_some()
            && a.buyer == self.by_account.get(&terms.spec.requester).copied()
        {
            a.bought_jobs += 1;
            a.bought_cost += cost;
        }
        let owner = self.by_account.get(&terms.spec.requester).copied();
        let transfer_ms = self.transfer(owner, Some(i), terms.spec.dataset.size).0 as f64;
        let mut run_ms = measure.as_f64() * done / p.speed_cu_s * 1000.0;
        if !self.rng.random_bool(p.reliability) {
            let to_deadline = terms.deadline.since(now).0 as f64;
            run_ms = run_ms.max(to_deadline - transfer_ms)
                + self.rng.random_range(60_000.0..1_800_000.0);
        }
        self.metrics
            .busy(i, now.since(T0).0 as f64, transfer_ms + run_ms);
        let ready = now.plus(DurationMs(transfer_ms as u64));
        let result = BlobRef {
            hash: result_hash(&contract, behaviour.skip() > 0.0),
            size: RESULT_BYTES,
        };
        let ran = RanJob {
            result,
            units: if behaviour == Behaviour::Inflates {
                terms.max_units
            } else {
                measure
            },
            commitment: result.hash,
            checkpoint_every: 1,
            checkpoints: SEGMENTS,
            inputs_ready_at: ready,
            started_at: ready,
            secs: run_ms / 1000.0,
            backend: "simulated".into(),
        };
        let input = Input::Ran {
            contract,
            result: Ok(ran),
        };
        self.at(DurationMs((transfer_ms + run_ms) as u64), i, input);
    }

    /// A job's measured units: what an honest run counts, and what the
    /// committee's FLOP model recomputes (the estimate less the requesters'
    /// margin).
    fn measure(&self, terms: &ContractTerms) -> ComputeUnits {
        let e = terms.spec.estimated_units.milli;
        if self.margin > 1.0 {
            ComputeUnits::from_milli((e as f64 / self.margin).round() as u64)
        } else {
            ComputeUnits::from_milli(e)
        }
    }

    /// A burst of fake contracts between made-up keys, each with a receipt
    /// its made-up provider signed, gossiped to every peer they concern (the
    /// committee, for receipts; nobody, for contracts no key of theirs is
    /// party to). Requesters drop a receipt of a contract they do not hold
    /// on a lookup, so they are not sent them.
    fn flood(&mut self) {
        let Some(a) = self.attack.as_mut() else {
            return;
        };
        let n = a.fakes_left.min(FLOOD_BURST);
        a.fakes_left -= n;
        let network = self.genesis.network();
        let now = self.sched.now();
        let mut msgs = Vec::with_capacity(2 * n as usize);
        for _ in 0..n {
            let a = self.attack.as_mut().expect("an attack floods");
            a.sent += 1;
            let k = a.fake_keys.len();
            let req = a.fake_keys[(a.sent as usize * 7) % k].clone();
            let prov = a.fake_keys[(a.sent as usize * 13 + 1) % k].clone();
            let NewJob { spec, .. } = new_job(&self.sc, &mut a.fake_rng, req.account(), now);
            let terms = ContractTerms {
                network,
                job: Hash32::of(&a.fake_rng.random::<[u8; 32]>()),
                requester: req.account(),
                provider: prov.account(),
                price: PricePerCu(1),
                max_units: spec.estimated_units,
                sla: SlaTerms {
                    deadline_slack: DurationMs::secs(60),
                    availability: Bps(9_900),
                    penalty: Bps(1_000),
                    exact: true,
                },
                deadline: spec.deadline,
                created_at: now,
                spec,
            };
            let Ok(mut c) = MultiSigned::new(&terms) else {
                continue;
            };
            c.add_signature(&req, &network);
            c.add_signature(&prov, &network);
            let receipt = Receipt {
                contract: c.body_hash(),
                provider: prov.account(),
                result: BlobRef {
                    hash: Hash32::of(&c.body_hash().0),
                    size: RESULT_BYTES,
                },
                units_used: terms.max_units,
                timings: Timings {
                    accepted_at: now,
                    inputs_ready_at: now,
                    started_at: now,
                    finished_at: now,
                },
                commitment: Hash32::of(b"fake"),
                checkpoint_every: 1,
                checkpoints: SEGMENTS,
            };
            msgs.push((req.account(), Message::Contract(c)));
            if let Ok(r) = Signed::sign(&prov, &network, &receipt) {
                msgs.push((prov.account(), Message::Receipt(r)));
            }
        }
        for (from, msg) in msgs {
            self.flood_to_all(from, &msg);
        }
    }

    /// A flooder's message to every peer that consumes it, one hop of
    /// latency later (drawing nothing from the world's randomness).
    fn flood_to_all(&mut self, from: AccountId, msg: &Message) {
        for j in 0..self.peers.len() {
            let p = &self.peers[j];
            if !p.up
                || p.role == Role::Requester
                || !node_core::dispatch::concerns(
                    msg,
                    &p.core.account(),
                    p.role.roles(),
                    self.params.market_shards,
                )
            {
                continue;
            }
            let d = self.net.latency(0, p.region);
            self.metrics.messages += 1;
            self.at(
                DurationMs(d as u64),
                j,
                Input::gossip(Some(from), msg.clone()),
            );
        }
    }

    /// Whitewash: the attacker's key in use was just caught; drop it and go
    /// on with the next bonded key, if one is left.
    fn rotate(&mut self, caught: usize) {
        let Some(a) = self.attack.as_mut() else {
            return;
        };
        if a.kind != AttackKind::Whitewash
            || a.keys.get(a.current) != Some(&caught)
            || a.current + 1 >= a.keys.len()
        {
            return;
        }
        a.current += 1;
        let next = a.keys[a.current];
        let old = &mut self.peers[caught];
        old.dormant = true;
        old.up = false;
        old.life += 1;
        self.peers[next].dormant = false;
        // A fresh key takes a few minutes to set up and announce.
        let at = self.sched.now().plus(DurationMs::secs(300));
        self.sched.at(at, Ev::Up(next));
        self.churn_after(next, at);
    }

    /// Fold the jobs that are over into the metrics and drop them from their
    /// requesters' cores: a requester's records of finished jobs otherwise
    /// grew with the run (about 90 MB a simulated day at 3,000 requesters).
    /// Nothing a core does depends on a job that is over.
    fn harvest(&mut self) {
        self.fold_jobs(false);
    }

    /// Take requesters' jobs that are over (or with `all` every job) out of
    /// their cores and count them in the metrics.
    fn fold_jobs(&mut self, all: bool) {
        for r in 0..self.n_req {
            let jobs = self.peers[self.n_prov + r].core.take_jobs(all);
            for (j, state) in &jobs {
                self.fold_job(r, j, state);
            }
        }
    }

    /// Count requester `r`'s job `j`, in state `state`, in the metrics.
    fn fold_job(&mut self, r: usize, j: &node_core::Job, state: &node_core::JobState) {
        let m = &mut self.metrics;
        match state {
            node_core::JobState::Ended(node_core::JobEnd::Expired) => m.bids_expired += 1,
            node_core::JobState::Ended(node_core::JobEnd::Refused(_)) => m.escrow_failures += 1,
            _ => {}
        }
        let (Some(terms), Some(s)) = (&j.terms, &j.settled) else {
            if j.contract.is_some() {
                m.contracts += 1;
            }
            return;
        };
        m.contracts += 1;
        let at = j.settled_at().unwrap_or(self.end);
        m.contract_at
            .insert(terms.job, (r, terms.spec.issued_at, at));
        let cheater = self
            .by_account
            .get(&terms.provider)
            .is_some_and(|&p| self.peers[p].behaviour.cheats());
        m.settled_outcome(at, &s.outcome, terms, cheater);
        let e = self.earned.entry(terms.provider).or_default();
        e.0 += s.payout.provider.0;
        e.1 += 1;
        e.2 += s.outcome.units.milli;
        e.3 += s.slashed.0;
        if cheater && let Some(&p) = self.by_account.get(&terms.provider) {
            let c = m.caught_by_provider.entry(p).or_default();
            if s.outcome.result_ok {
                c.1 += 1;
            } else {
                c.0 += 1;
            }
        }
    }

    fn finish(mut self) -> Metrics {
        let end = self.end;
        let m = &mut self.metrics;
        m.events = self.sched.processed();
        let epoch = self.params.epoch_length;
        // Jobs, from each requester's own records (those not folded yet).
        self.fold_jobs(true);
        let earned = std::mem::take(&mut self.earned);
        let m = &mut self.metrics;
        // The books, from an oracle's replica (or the shared one); every
        // replica is checked.
        let genesis_state = crdt_ledger::State::genesis(&self.genesis).expect("the genesis folds");
        let mut replicas: Vec<(String, &mut Ledger<SimStore>)> = match self.shared.as_mut() {
            Some(l) => vec![("the shared replica".to_string(), l)],
            None => self
                .peers
                .iter_mut()
                .enumerate()
                .map(|(i, p)| (format!("replica {i}"), p.core.ledger()))
                .collect(),
        };
        for (name, ledger) in &mut replicas {
            let st = ledger.state();
            let (held, expected) = (st.total_supply(), st.supply.expected());
            if held.is_none() || held != expected {
                m.invariant_violations.push(format!(
                    "{name}: supply not conserved: held {held:?}, genesis + minted − burned = {expected:?}"
                ));
            }
            // Every escrow ends: none is open past its bound (the committee's
            // grace, the protocol's settling slack, and two epochs to reach
            // the replica).
            for (c, e) in &st.escrows {
                let bound = escrow_bound(e.terms.deadline, self.timing.grace)
                    .plus(epoch)
                    .plus(epoch);
                if bound < end {
                    m.invariant_violations.push(format!(
                        "{name}: the escrow of contract {} is still open {:.0} s past its bound",
                        c.short(),
                        end.since(bound).as_secs_f64()
                    ));
                }
            }
        }
        let (_, reference) = replicas.pop().expect("at least one replica");
        m.checkpoints = reference.finalized_epoch();
        m.ledger_entries = reference.entry_count() as u64;
        let st = reference.state().clone();
        m.still_locked = st.escrows.len() as u64;
        m.minted = st.supply.minted.0;
        m.burned = st.supply.burned.0;
        m.balances = st.balances.values().map(|a| a.0).collect();
        for i in 0..self.n_prov {
            let p = &self.peers[i];
            let a = p.core.account();
            let (paid, jobs, units, slashed) = earned.get(&a).copied().unwrap_or_default();
            m.provider_paid(i, Amount(paid), ComputeUnits::from_milli(units));
            m.provider_jobs[i] = jobs;
            m.provider_slashed[i] = slashed;
            // What it holds now, less what it held at genesis and was paid,
            // plus what was slashed, is what the epochs minted it.
            let holds =
                |s: &crdt_ledger::State| s.balance(&a).0 + s.bonds.get(&a).map_or(0, |b| b.0);
            let gained = holds(&st).saturating_add(slashed);
            m.provider_minted[i] = gained.saturating_sub(holds(&genesis_state) + paid);
            if let Role::Provider { profile, params } = p.role {
                m.provider_profiles.push(profile);
                m.provider_slots.push(params.slots);
                m.provider_labels
                    .push(format!("{} ({})", params.label, self.net.regions[p.region]));
            }
            m.final_prices
                .push(p.core.provider().map_or(0, |e| e.price().0));
        }
        m.cheaters = (0..self.n_prov)
            .filter(|&i| self.peers[i].behaviour.cheats())
            .collect();
        m.epochs = st.epoch;
        // A self-dealer's buying key: what it holds now (with its escrows
        // still open) against its genesis balance.
        let buyer_delta = self.attack.as_ref().and_then(|a| a.buyer).map(|b| {
            let who = self.peers[b].core.account();
            let locked: u64 = st
                .escrows
                .values()
                .filter(|e| e.terms.requester == who)
                .map(|e| e.amount.0)
                .sum();
            i128::from(st.balance(&who).0) + i128::from(locked)
                - i128::from(crate::setup::REQUESTER_GENESIS.0)
        });
        let fakes = self.attack.as_ref().map_or(0, |a| a.sent);
        let bought = self
            .attack
            .as_ref()
            .filter(|a| a.buyer.is_some())
            .map(|a| (a.bought_jobs, a.bought_cost));
        m.attack = crate::attack::report(&self.sc, m, &self.cost, buyer_delta, bought, fakes);
        self.metrics
    }
}

/// Whether a settlement's certificate says delivered and wrong (what slashes
/// a bond): most of its verdicts do.
fn proves_wrong(cert: &protocol::settlement::QuorumCert) -> bool {
    let wrong = cert
        .verdicts
        .iter()
        .filter(|v| {
            v.body_unverified()
                .is_ok_and(|v| v.delivered && !v.result_ok)
        })
        .count();
    2 * wrong > cert.verdicts.len()
}

impl Peer {
    fn new(
        id: Identity,
        ledgers: &mut Ledgers,
        cfg: CoreConfig,
        role: Role,
        region: usize,
        behaviour: Behaviour,
    ) -> Peer {
        Peer {
            core: ledgers.core(id, cfg.clone()),
            cfg,
            role,
            region,
            up: false,
            life: 0,
            timer_at: None,
            saved: None,
            behaviour,
            dormant: false,
            neighbours: BTreeSet::new(),
            inbox: BinaryHeap::new(),
        }
    }
}

/// Run `scenario` with `seed`, a core per peer.
pub fn run(
    scenario: &Scenario,
    seed: u64,
    replicas: Replicas,
    progress: impl FnMut(f64),
) -> Metrics {
    CoreWorld::new(scenario, seed, replicas).run(progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Transfers through one peer's link wait for each other; transfers
    /// between other peers do not; each goes at the slower end's bandwidth.
    #[test]
    fn blob_transfers_share_the_links_of_both_ends() {
        let sc = Scenario::load("smoke").unwrap();
        let mut w = CoreWorld::new(&sc, 1, Replicas::Shared);
        let (p0, p1) = (0, 1);
        let r = w.n_prov; // the first requester
        let other = w.n_prov + 1;
        let mb = |n: u64| n * 1_000_000;
        let alone = w.transfer(Some(r), Some(p0), mb(100));
        let bw = w.link_mb_s(r).min(w.link_mb_s(p0));
        assert_eq!(alone.0, (100.0 / bw * 1000.0).ceil() as u64);
        // The same requester's next input waits for its link to be free.
        let queued = w.transfer(Some(r), Some(p1), mb(100));
        assert!(queued.0 >= alone.0 + (100.0 / w.link_mb_s(r) * 1000.0) as u64 - 1);
        // Another requester to another provider goes at once.
        let apart = w.transfer(Some(other), Some(p1 + 1), mb(1));
        assert!(apart.0 < alone.0, "{apart:?} vs {alone:?}");
    }
}
