//! The simulated world: providers, requesters and oracles, each running the real
//! sans-IO engine of its role, connected by the [`Net`] model on virtual time.
//!
//! The driver loop pops the next event, hands it to the engine it concerns, and
//! turns the engine's outputs into future events: messages arrive after the
//! network's delay (gossip via the sampled model, direct messages one hop),
//! timers fire when the engine's `poll_timeout` says, jobs finish after the
//! input-transfer time `T_r = S/B_r` plus the compute time `C/speed` of the
//! provider's profile (late with the profile's unreliability), and checks take
//! the re-execution time of a sample. Tokens live in the real ledger
//! ([`SimLedger`]): requesters lock escrows, oracles write settlements, and each
//! epoch ends with a checkpoint by the committee the ledger drew — the committee
//! the oracle engines serve as.
//!
//! **Offers.** An offer reaches a region's requesters after one sampled gossip
//! delay and joins that region's feed. A requester with a job to place
//! ([`RequesterEngine::awaits_offers`]) takes it at once; the others take the
//! offers they have not seen, each at its arrival time and in order, just
//! before anything else reaches their engine. For them an offer only updates
//! the book, so the result is the same as taking it on arrival, and one book at
//! a time is touched instead of every book of the region per offer. Offers
//! still in a feed when the run ends are never read.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use protocol::market::{
    BookConfig, MatchConfig, PricingConfig, ProviderConfig, ProviderEngine, ProviderInput,
    ProviderOutput, RequesterConfig, RequesterEngine, RequesterInput, RequesterOutput,
    UniformReputation,
};
use protocol::oracle::{
    DeferredChecker, OracleConfig, OracleEngine, OracleInput, OracleOutput, SettlementInstruction,
};
use protocol::*;
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crdt_ledger::{Genesis, GenesisEntry};

use crate::ledger::{LockRefused, SimLedger};
use crate::metrics::Metrics;
use crate::netmodel::Net;
use crate::profiles::{Profile, ProfileParams};
use crate::scenario::{Arrival, AttackKind, Scenario};
use crate::sched::{Progress, Scheduler};

/// Virtual time starts here (2026-01-01T00:00:00Z), so timestamps look real.
pub const T0: Timestamp = Timestamp(1_767_225_600_000);
/// Whether engines check the signatures of what they receive. Every message is
/// still really signed; checking is off because every simulated peer signs
/// honestly (cheaters cheat on results, which oracles catch by re-execution), the
/// engines decide the same either way (a protocol test says so), and checking
/// would triple the cost of `scale-1k`. Signature checks are covered by the
/// protocol, ledger and node tests. The ledger in the simulation does check:
/// every contract, certificate and entry signature it folds, once each (see
/// [`crate::ledger`]).
pub const VERIFY_SIGNATURES: bool = false;

/// Events between two steps in which idle requesters take their offers ahead,
/// on two cores (see [`World::take_offers_in_parallel`]): often enough that most
/// offers are taken there rather than when a requester acts.
const OFFER_STEP_EVERY: u64 = 2_048;

/// Tokens every requester starts with.
pub const REQUESTER_GENESIS: Amount = Amount::tokens(1_000_000);
/// What every requester holds bonded at genesis, besides: a requester's
/// final bond backs the escrows it locks before they are final, so that
/// providers start on them at once (a fork of its chain burns a share of
/// it). Without one, every job would wait for its escrow's checkpoint.
pub const REQUESTER_BOND: Amount = Amount::tokens(100_000);
/// The committee's fee: the oracle engines charge it and the ledger's genesis
/// fixes it, so payouts agree.
pub const ORACLE_FEE: Bps = Bps(100);
/// The most a verified CU mints, µ-tokens: half the cost of the cheapest
/// profile's compute (community nodes, 8 µ-tokens/CU), so buying one's own
/// compute to earn the mint loses on every unit, on any profile.
pub const MINT_PER_CU: PricePerCu = PricePerCu(4);

/// Which peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerRef {
    Provider(usize),
    Requester(usize),
    Oracle(usize),
}

#[derive(Debug)]
enum Ev {
    Deliver {
        to: PeerRef,
        msg: Message,
    },
    /// An offer reaching every requester of a region (one sampled gossip delay per
    /// region: requesters in one region hear it at about the same time).
    Offer {
        region: usize,
        id: Hash32,
        offer: Arc<Offer>,
    },
    /// A peer's engine timer, armed for this time (stale if re-armed since).
    Timer(PeerRef, Timestamp),
    Arrival(usize),
    Finish {
        provider: usize,
        contract: Hash32,
        started: Timestamp,
        ready: Timestamp,
        units: ComputeUnits,
    },
    CheckDone {
        oracle: usize,
        contract: Hash32,
        correct: bool,
    },
    Epoch(u64),
    Down(usize),
    Up(usize),
}

struct ProviderPeer {
    engine: ProviderEngine,
    region: usize,
    profile: Profile,
    params: ProfileParams,
    cheating: bool,
    online: bool,
    timer_at: Option<Timestamp>,
}

struct RequesterPeer {
    engine: RequesterEngine,
    region: usize,
    timer_at: Option<Timestamp>,
    /// How many offers of its region's feed this requester's engine has handled.
    heard: usize,
}

/// Idle requesters in `reqs` take their region's offers they have not taken
/// yet (see [`World::take_offers_in_parallel`]); what went wrong, if anything.
fn take_pending_offers(reqs: &mut [RequesterPeer], feeds: &[OfferFeed]) -> Vec<String> {
    let rep = UniformReputation(0.9);
    let mut wrong = Vec::new();
    for r in reqs {
        if r.engine.awaits_offers() {
            continue; // caught up as each offer arrived
        }
        let feed = &feeds[r.region];
        while r.heard < feed.end() {
            let (at, id, offer) = feed.items[r.heard - feed.base].clone();
            r.heard += 1;
            let out = r.engine.handle(
                at,
                RequesterInput::VerifiedOffer { id, offer },
                &rep,
                &mut NoRandomness,
            );
            if !out.is_empty() {
                wrong.push(format!(
                    "an idle requester acted on an offer it took ahead: {out:?}"
                ));
            }
        }
    }
    wrong
}

/// The randomness an idle requester is given while it takes offers: none. An
/// idle requester never draws (it does not match); if it did, taking offers
/// ahead would change the run, so drawing stops the run with this message.
#[derive(Debug)]
struct NoRandomness;

impl rand::TryRng for NoRandomness {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        panic!("{}", NO_RANDOMNESS)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        panic!("{}", NO_RANDOMNESS)
    }
    fn try_fill_bytes(&mut self, _: &mut [u8]) -> Result<(), Self::Error> {
        panic!("{}", NO_RANDOMNESS)
    }
}

const NO_RANDOMNESS: &str = "an idle requester drew randomness while taking offers ahead; \
     simnet's parallel offer step is unsound for this engine";

/// The offers that reached a region, in arrival order, kept until every
/// requester there has handled them (see [`World::catch_up`]).
#[derive(Default)]
struct OfferFeed {
    /// The feed index of `items[0]` (handled everywhere before it are dropped).
    base: usize,
    items: VecDeque<(Timestamp, Hash32, Arc<Offer>)>,
}

impl OfferFeed {
    fn end(&self) -> usize {
        self.base + self.items.len()
    }
}

struct OraclePeer {
    engine: OracleEngine<DeferredChecker>,
    region: usize,
    timer_at: Option<Timestamp>,
}

/// One run of a scenario.
pub struct World {
    sc: Scenario,
    network: NetworkId,
    net: Net,
    rng: ChaCha8Rng,
    sched: Scheduler<Ev>,
    end: Timestamp,
    /// The committee's grace for late receipts (part of every escrow's bound).
    grace: DurationMs,
    providers: Vec<ProviderPeer>,
    requesters: Vec<RequesterPeer>,
    oracles: Vec<OraclePeer>,
    by_account: HashMap<AccountId, PeerRef>,
    committee: Vec<usize>,
    epoch: u64,
    ledger: SimLedger,
    /// Per region: the offers heard there, for requesters that take them later.
    offer_feeds: Vec<OfferFeed>,
    /// Contract → (requester, provider), learned when the escrow is locked.
    parties: HashMap<Hash32, (usize, usize)>,
    /// Contract → the committee that watches it (the one of the epoch it began in).
    watchers: HashMap<Hash32, Vec<PeerRef>>,
    /// Contract → the epoch its escrow was locked in and that epoch's
    /// committee, which watches and settles it.
    locked_in: HashMap<Hash32, (u64, Vec<AccountId>)>,
    wrong: HashSet<Hash32>,
    settled: HashSet<Hash32>,
    /// Whether idle requesters take offers ahead, on two cores.
    offer_steps: bool,
    pub metrics: Metrics,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "World({}, {:?})", self.sc.name, self.sched)
    }
}

/// A provider's bond in the genesis: a quarter of a token per CU/s of
/// capacity (speed × slots), so a provider's cap on the epoch's mint (its
/// share of all bonds) follows what it can serve. A community GPU (8,000 CU/s,
/// one slot) bonds 2,000 tokens; a hyperscaler node (19,500 CU/s, 8 slots)
/// 39,000.
pub(crate) fn provider_bond(p: &ProfileParams) -> Amount {
    Amount::tokens((p.speed_cu_s * f64::from(p.slots) / 4.0).ceil() as u64)
}

/// Provider `i`'s bond in the genesis: [`provider_bond`], split evenly over
/// the keys of a self-dealing attacker (one provider's bond in all).
pub(crate) fn provider_bond_at(sc: &Scenario, i: usize, p: &ProfileParams) -> Amount {
    let b = provider_bond(p);
    match &sc.attack {
        Some(a) if a.kind == AttackKind::SelfDeal && sc.attack_keys().contains(&i) => {
            Amount(b.0 / u64::from(a.keys.max(1)))
        }
        _ => b,
    }
}

/// A provider of profile `p` in `region`, as both drivers configure it.
pub(crate) fn provider_config(
    p: &ProfileParams,
    region: &str,
    verify_signatures: bool,
) -> ProviderConfig {
    ProviderConfig {
        class: if p.gpu {
            ResourceClass::Gpu
        } else {
            ResourceClass::Cpu
        },
        device: p.label.into(),
        speed_milli_cu_per_s: (p.speed_cu_s * 1000.0) as u64,
        memory_bytes: 80 << 30,
        bandwidth_bytes_per_s: (p.bandwidth_mb_s * 1e6) as u64,
        region: region.to_string(),
        contact: vec![],
        slots: p.slots,
        queue_capacity: usize::from(p.slots) * 2,
        sla: SlaTerms {
            deadline_slack: DurationMs::secs(120),
            availability: Bps(p.availability_bps),
            penalty: Bps(p.penalty_bps),
        },
        // Offers are re-gossiped only on change, or every 16 hours
        // (two thirds of the longest lifetime an offer may claim).
        offer_ttl: MAX_TTL,
        answer_ttl: DurationMs::secs(30),
        pricing: PricingConfig {
            cost: PricePerCu(p.cost),
            initial: PricePerCu(p.price),
            ceiling: PricePerCu(p.price * 4),
            ..PricingConfig::default()
        },
        replay_capacity: 10_000,
        verify_signatures,
    }
}

/// The ledger's genesis: requesters hold [`REQUESTER_GENESIS`] each, and
/// bond [`REQUESTER_BOND`]; oracles
/// stake unequally (1, 2 or 3 thousand tokens), so the committee draw's
/// weighting matters; each provider holds a bond in proportion to its
/// capacity ([`provider_bond`]). Epochs are the scenario's.
pub(crate) fn genesis(sc: &Scenario, seed: u64, n_req: usize) -> (GenesisEntry, Vec<Identity>) {
    let requesters: Vec<Identity> = (0..n_req)
        .map(|i| Identity::from_seed(seed_for(seed, 2, i)))
        .collect();
    let oracles: Vec<Identity> = (0..sc.oracles.count as usize)
        .map(|i| Identity::from_seed(seed_for(seed, 3, i)))
        .collect();
    let balances = requesters
        .iter()
        .map(|r| (r.account(), REQUESTER_GENESIS))
        .collect();
    let stakes = oracles
        .iter()
        .enumerate()
        .map(|(i, o)| (o.account(), Amount::tokens(1_000 * (1 + i as u64 % 3))))
        .collect();
    let mut bonds: Vec<(protocol::AccountId, Amount)> = Vec::new();
    for g in &sc.providers {
        let p = g.profile.params();
        for _ in 0..g.count {
            let id = Identity::from_seed(seed_for(seed, 1, bonds.len()));
            bonds.push((id.account(), provider_bond_at(sc, bonds.len(), &p)));
        }
    }
    bonds.extend(requesters.iter().map(|r| (r.account(), REQUESTER_BOND)));
    let params = crdt_ledger::Params {
        epoch_length: DurationMs(sc.epoch_minutes * 60_000),
        committee_size: u16::try_from(sc.oracles.committee).unwrap_or(u16::MAX),
        min_stake: Amount::tokens(100),
        oracle_fee: ORACLE_FEE,
        mint_per_cu: MINT_PER_CU,
        ..crdt_ledger::Params::default()
    };
    let founder = Identity::from_seed(seed_for(seed, 0, 0));
    let writers = requesters.into_iter().chain(oracles).collect();
    let genesis = GenesisEntry::create(
        &founder,
        Genesis {
            name: format!("simnet/{}", sc.name),
            genesis_time: T0,
            params,
            balances,
            stakes,
            bonds,
        },
    )
    // Only an absurd scenario (supply past u64 micro-tokens) fails here.
    .expect("the scenario's genesis is valid");
    (genesis, writers)
}

/// Which providers cheat: the scenario's share of them, drawn from every
/// profile alike.
pub(crate) fn draw_cheaters(sc: &Scenario, rng: &mut impl Rng) -> Vec<usize> {
    let n_prov = sc.provider_count() as usize;
    let n_cheat = (sc.faults.cheating_share * n_prov as f64).round() as usize;
    let mut order: Vec<usize> = (0..n_prov).collect();
    for i in (1..order.len()).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    order.truncate(n_cheat);
    order
}

/// Exponential gap for a rate per day.
pub(crate) fn next_gap(rng: &mut impl Rng, per_day: f64) -> DurationMs {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    DurationMs((-u.ln() / per_day * 86_400_000.0) as u64)
}

/// The gap to a requester's next job after `now`.
pub(crate) fn arrival_gap(sc: &Scenario, rng: &mut impl Rng, now: Timestamp) -> DurationMs {
    let rate = sc.requesters.jobs_per_day;
    match sc.requesters.arrival {
        Arrival::Poisson => next_gap(rng, rate),
        Arrival::Diurnal => {
            // Thinning: draw at the peak rate, keep with probability rate(t)/peak.
            let peak = rate * 1.8;
            let mut t = now;
            loop {
                t = t.plus(next_gap(rng, peak));
                let hour = ((t.0 - T0.0) % 86_400_000) as f64 / 3_600_000.0;
                let r = rate * (1.0 + 0.8 * ((hour - 8.0) / 24.0 * std::f64::consts::TAU).sin());
                if rng.random_bool((r / peak).clamp(0.0, 1.0)) {
                    return t.since(now);
                }
            }
        }
    }
}

/// A requester's next job, drawn from the scenario's mix.
pub(crate) struct NewJob {
    pub spec: JobSpec,
    pub kind: String,
    pub dp: bool,
}

/// Draw `requester`'s next job at `now` from the scenario's mix.
pub(crate) fn new_job(
    sc: &Scenario,
    rng: &mut impl Rng,
    requester: AccountId,
    now: Timestamp,
) -> NewJob {
    let mix = &sc.requesters.mix;
    let total: f64 = mix.values().sum();
    let mut x = rng.random_range(0.0..total);
    let mut kind_name = "infer";
    for (k, v) in mix {
        if x < *v {
            kind_name = k;
            break;
        }
        x -= v;
    }
    // Job sizes (CU) log-uniform per kind; data sizes in MB.
    let (lo, hi, data_mb): (f64, f64, f64) = match kind_name {
        "train" => (2e5, 2e7, 200.0),
        "preprocess" => (1e3, 1e5, 100.0),
        _ => (1e4, 1e6, 50.0),
    };
    let cu = (lo * (hi / lo).powf(rng.random_range(0.0..1.0))).round();
    let dp = kind_name == "train" && rng.random_bool(sc.requesters.dp_share);
    let kind = match kind_name {
        "train" => JobKind::Train {
            layers: vec![64, 256, 10],
            epochs: 10,
            batch: 64,
            learning_rate: 0.05,
            dp: dp.then_some(DpParams {
                clip_norm: 1.0,
                noise_multiplier: 1.1,
            }),
            seed: rng.random(),
            task: Default::default(),
        },
        "preprocess" => JobKind::Preprocess {
            op: PreprocessOp::Standardize,
            seed: 0,
        },
        _ => JobKind::Infer { batch: 256 },
    };
    // DP-SGD costs more compute: per-example gradients (measured overhead of the
    // compute crate's DP epoch; see the report).
    let cu = if dp {
        cu * (1.0 + crate::metrics::DP_OVERHEAD)
    } else {
        cu
    };
    let units = ComputeUnits::from_milli((cu * 1000.0) as u64);
    // Requesters will pay up to a random markup over the cheapest list price.
    let max_price = PricePerCu(rng.random_range(20..90));
    let slack_h = rng.random_range(1.0..12.0);
    let deadline = now.plus(DurationMs(
        (slack_h * 3_600_000.0) as u64 + (cu / 5_000.0 * 1000.0) as u64,
    ));
    let spec = JobSpec {
        requester,
        kind,
        model: None,
        dataset: BlobRef {
            hash: Hash32::of(&rng.random::<[u8; 32]>()),
            size: (data_mb * 1e6) as u64,
        },
        estimated_units: units,
        max_price,
        deadline,
        sla: SlaRequirement {
            min_availability: Bps(9_000),
            min_penalty: Bps(500),
        },
        privacy: dp.then_some(PrivacyTarget {
            epsilon: 8.0,
            delta: 1e-5,
        }),
        issued_at: now,
        expires_at: now.plus(DurationMs::secs(3_600)),
        nonce: rng.random(),
    };
    NewJob {
        spec,
        kind: kind_name.to_string(),
        dp,
    }
}

pub(crate) fn seed_for(scenario_seed: u64, role: u64, i: usize) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&scenario_seed.to_le_bytes());
    h.update(&role.to_le_bytes());
    h.update(&(i as u64).to_le_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

impl World {
    /// Build the world of `sc` with `seed`, optionally overriding the number of
    /// requesters and the duration (for sweeps).
    pub fn new(sc: &Scenario, seed: u64, requesters: Option<u32>, days: Option<f64>) -> World {
        let n_req = requesters.unwrap_or(sc.requesters.count) as usize;
        let ledger = Self::genesis(sc, seed, n_req);
        let network = ledger.network();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let net = Net::new(&sc.network, &sc.faults.partitions);
        let days = days.unwrap_or(sc.days);
        let end = T0.plus(DurationMs((days * 86_400_000.0) as u64));
        let mut by_account = HashMap::new();
        let mut providers = Vec::new();
        let n_prov = sc.provider_count() as usize;
        let cheaters = draw_cheaters(sc, &mut rng);
        for g in &sc.providers {
            let p = g.profile.params();
            for _ in 0..g.count {
                let i = providers.len();
                let id = Identity::from_seed(seed_for(seed, 1, i));
                by_account.insert(id.account(), PeerRef::Provider(i));
                let cfg = provider_config(&p, &g.region, VERIFY_SIGNATURES);
                providers.push(ProviderPeer {
                    engine: ProviderEngine::new(id, network, cfg),
                    region: sc.region_index(&g.region),
                    profile: g.profile,
                    params: p,
                    cheating: cheaters.contains(&i),
                    online: true,
                    timer_at: None,
                });
            }
        }
        let mut reqs = Vec::new();
        for i in 0..n_req {
            let id = Identity::from_seed(seed_for(seed, 2, i));
            by_account.insert(id.account(), PeerRef::Requester(i));
            let region = sc.region_index(&sc.requesters.regions[i % sc.requesters.regions.len()]);
            let cfg = RequesterConfig {
                book: BookConfig {
                    capacity: n_prov * 2 + 16,
                    replay_capacity: n_prov * 8 + 64,
                },
                matching: MatchConfig::default(),
                verify_signatures: VERIFY_SIGNATURES,
                ..RequesterConfig::default()
            };
            reqs.push(RequesterPeer {
                engine: RequesterEngine::new(id, network, cfg),
                region,
                timer_at: None,
                heard: 0,
            });
        }
        let mut oracles = Vec::new();
        for i in 0..sc.oracles.count as usize {
            let id = Identity::from_seed(seed_for(seed, 3, i));
            by_account.insert(id.account(), PeerRef::Oracle(i));
            let cfg = OracleConfig {
                fee: ORACLE_FEE,
                verify_share: Bps((sc.oracles.verify_share * 10_000.0) as u16),
                // Probing every 30 minutes per contract and member keeps scale-1k
                // within budget; availability is still measured on long jobs.
                probe_every: DurationMs::secs(1800),
                verify_signatures: VERIFY_SIGNATURES,
                ..OracleConfig::default()
            };
            oracles.push(OraclePeer {
                engine: OracleEngine::new(id, network, cfg, DeferredChecker),
                region: i % sc.network.regions.len(),
                timer_at: None,
            });
        }
        let metrics = Metrics::new(&sc.name, seed, n_prov, n_req, days);
        let mut w = World {
            sc: sc.clone(),
            network,
            net,
            rng,
            sched: Scheduler::new(T0),
            end,
            grace: OracleConfig::default().grace,
            providers,
            requesters: reqs,
            oracles,
            by_account,
            committee: Vec::new(),
            epoch: 0,
            ledger,
            offer_feeds: (0..sc.network.regions.len())
                .map(|_| OfferFeed::default())
                .collect(),
            parties: HashMap::new(),
            watchers: HashMap::new(),
            locked_in: HashMap::new(),
            wrong: HashSet::new(),
            settled: HashSet::new(),
            offer_steps: true,
            metrics,
        };
        w.bootstrap();
        w
    }

    fn genesis(sc: &Scenario, seed: u64, n_req: usize) -> SimLedger {
        let (genesis, writers) = genesis(sc, seed, n_req);
        SimLedger::from_genesis(genesis, writers).expect("the scenario's genesis is valid")
    }

    fn bootstrap(&mut self) {
        self.sched.at(T0, Ev::Epoch(1));
        for i in 0..self.providers.len() {
            // Providers come up over the first minute.
            let at = T0.plus(DurationMs(self.rng.random_range(0..60_000)));
            self.sched.at(at, Ev::Up(i));
            if self.sc.faults.churn_per_day > 0.0 {
                let t = self.next_gap(self.sc.faults.churn_per_day);
                self.sched.at(at.plus(t), Ev::Down(i));
            }
        }
        for i in 0..self.requesters.len() {
            let first = T0.plus(DurationMs::secs(120)).plus(self.arrival_gap(T0));
            self.sched.at(first, Ev::Arrival(i));
        }
    }

    fn next_gap(&mut self, per_day: f64) -> DurationMs {
        next_gap(&mut self.rng, per_day)
    }

    fn arrival_gap(&mut self, now: Timestamp) -> DurationMs {
        arrival_gap(&self.sc, &mut self.rng, now)
    }

    fn t_ms(&self) -> f64 {
        (self.sched.now().0 - T0.0) as f64
    }

    fn region_of(&self, p: PeerRef) -> usize {
        match p {
            PeerRef::Provider(i) => self.providers[i].region,
            PeerRef::Requester(i) => self.requesters[i].region,
            PeerRef::Oracle(i) => self.oracles[i].region,
        }
    }

    fn peers_in_mesh(&self) -> usize {
        self.providers.len() + self.requesters.len() + self.oracles.len()
    }

    /// Send `msg` from `from` to `to` directly (one hop), if they can talk.
    fn send(&mut self, from: PeerRef, to: PeerRef, msg: Message) {
        let t = self.t_ms();
        let (a, b) = (self.region_of(from), self.region_of(to));
        match self.net.direct_delay(t, a, b) {
            Some(d) => {
                self.metrics.messages += 1;
                let at = self.sched.now().plus(DurationMs(d as u64));
                self.sched.at(at, Ev::Deliver { to, msg });
            }
            None => self.metrics.partitioned_messages += 1,
        }
    }

    /// Gossip `msg` from `from` to the engines that consume it (lost across a
    /// partition).
    fn gossip(&mut self, from: PeerRef, to: &[PeerRef], msg: &Message) {
        self.spread(from, to, msg, false);
    }

    /// Carry `msg` as ledger sync does: as gossip when the peers can talk,
    /// else once the partition between them heals.
    fn sync_to(&mut self, from: PeerRef, to: &[PeerRef], msg: &Message) {
        self.spread(from, to, msg, true);
    }

    fn spread(&mut self, from: PeerRef, to: &[PeerRef], msg: &Message, after_heal: bool) {
        let t = self.t_ms();
        let n = self.peers_in_mesh();
        let a = self.region_of(from);
        for &p in to {
            if p == from {
                continue;
            }
            let b = self.region_of(p);
            let d = match self.net.gossip_delay(t, a, b, n, &mut self.rng) {
                Some(d) => d,
                None => {
                    self.metrics.partitioned_messages += 1;
                    if !after_heal {
                        continue;
                    }
                    let heal = self.net.heals_at(t, a, b).unwrap_or(t);
                    heal - t + self.net.latency(a, b)
                }
            };
            self.metrics.messages += 1;
            let at = self.sched.now().plus(DurationMs(d.max(0.0) as u64));
            self.sched.at(
                at,
                Ev::Deliver {
                    to: p,
                    msg: msg.clone(),
                },
            );
        }
    }

    fn committee_refs(&self) -> Vec<PeerRef> {
        self.committee.iter().map(|&i| PeerRef::Oracle(i)).collect()
    }

    /// Who must hear about `contract`: its watching committee (or today's).
    fn watchers_of(&self, contract: &Hash32) -> Vec<PeerRef> {
        self.watchers
            .get(contract)
            .cloned()
            .unwrap_or_else(|| self.committee_refs())
    }

    /// The contract a message is about, for routing.
    fn contract_of(m: &Message) -> Option<Hash32> {
        match m {
            Message::Receipt(s) => s.body_unverified().ok().map(|r| r.contract),
            Message::Verdict(s) => s.body_unverified().ok().map(|v| v.contract),
            Message::Dispute(s) => s.body_unverified().ok().map(|d| d.contract),
            Message::Contract(c) => Some(c.body_hash()),
            _ => None,
        }
    }

    /// Run to the end; returns the metrics.
    /// Idle requesters take offers only when they next act, never ahead in a
    /// parallel step ([`World::take_offers_in_parallel`]): the same run, on one
    /// core (a test shows the digests agree).
    pub fn without_offer_steps(mut self) -> World {
        self.offer_steps = false;
        self
    }

    pub fn run(mut self, mut progress: impl FnMut(f64)) -> Metrics {
        let mut done = Progress::new(T0, self.end);
        let mut handled = 0u64;
        while let Some((now, ev)) = self.sched.next_until(self.end) {
            self.handle(now, ev);
            handled += 1;
            if self.offer_steps && handled.is_multiple_of(OFFER_STEP_EVERY) {
                self.take_offers_in_parallel();
            }
            done.at(now, &mut progress);
        }
        progress(1.0);
        self.finish()
    }

    fn handle(&mut self, now: Timestamp, ev: Ev) {
        let kind = match &ev {
            Ev::Deliver { msg, .. } => msg.kind(),
            Ev::Offer { .. } => "offer-delivery",
            Ev::Timer(PeerRef::Provider(_), _) => "timer-provider",
            Ev::Timer(PeerRef::Requester(_), _) => "timer-requester",
            Ev::Timer(PeerRef::Oracle(_), _) => "timer-oracle",
            Ev::Arrival(_) => "arrival",
            Ev::Finish { .. } => "finish",
            Ev::CheckDone { .. } => "check",
            Ev::Epoch(_) => "epoch",
            Ev::Down(_) => "down",
            Ev::Up(_) => "up",
        };
        *self.metrics.events_by_kind.entry(kind).or_default() += 1;
        match ev {
            Ev::Epoch(e) => self.on_epoch(now, e),
            Ev::Up(i) => {
                self.providers[i].online = true;
                let out = self.providers[i]
                    .engine
                    .handle(now, ProviderInput::Start, &mut self.rng);
                self.on_provider_out(i, out);
            }
            Ev::Down(i) => {
                // A crash: the provider is unreachable for a while, its running jobs lost.
                self.providers[i].online = false;
                self.metrics.crashes += 1;
                let back = self.next_gap(24.0 * 6.0); // mean 10 minutes
                self.sched.at(now.plus(back), Ev::Up(i));
                let next = self.next_gap(self.sc.faults.churn_per_day);
                self.sched.at(now.plus(back).plus(next), Ev::Down(i));
            }
            Ev::Arrival(i) => {
                self.submit_job(now, i);
                let gap = self.arrival_gap(now);
                self.sched.at(now.plus(gap), Ev::Arrival(i));
            }
            Ev::Offer { region, id, offer } => {
                self.offer_feeds[region].items.push_back((now, id, offer));
                // Requesters with a job to place take it now (in index order, as
                // every requester used to); the others when they next act.
                for to in 0..self.requesters.len() {
                    if self.requesters[to].region == region
                        && self.requesters[to].engine.awaits_offers()
                    {
                        self.catch_up(to);
                    }
                }
            }
            Ev::Deliver { to, msg } => self.deliver(now, to, msg),
            Ev::Timer(p, at) => {
                if self.timer_slot(p) == Some(at) {
                    self.on_timer(now, p);
                }
            }
            Ev::Finish {
                provider,
                contract,
                started,
                ready,
                units,
            } => {
                let p = &self.providers[provider];
                if !p.online {
                    return; // lost in the crash
                }
                let wrong = p.cheating;
                let tag: &[u8] = if wrong { b"wrong" } else { b"right" };
                let mut h = blake3::Hasher::new();
                h.update(&contract.0);
                h.update(tag);
                let result = BlobRef {
                    hash: Hash32(*h.finalize().as_bytes()),
                    size: 1 << 20,
                };
                if wrong {
                    self.wrong.insert(contract);
                }
                let input = ProviderInput::Finished {
                    contract,
                    result,
                    units_used: units,
                    commitment: result.hash,
                    checkpoint_every: 100,
                    checkpoints: 1,
                    inputs_ready_at: ready,
                    started_at: started,
                };
                let out = self.providers[provider]
                    .engine
                    .handle(now, input, &mut self.rng);
                self.on_provider_out(provider, out);
            }
            Ev::CheckDone {
                oracle,
                contract,
                correct,
            } => {
                let out = self.oracles[oracle].engine.handle(
                    now,
                    OracleInput::CheckDone { contract, correct },
                    &mut self.rng,
                );
                self.on_oracle_out(oracle, out);
            }
        }
    }

    fn on_epoch(&mut self, now: Timestamp, e: u64) {
        // Epoch e starts as e − 1 ends: its checkpoint draws e's committee (k
        // seats weighted by stake, with replacement, seeded by the beacon).
        if e > 1 {
            self.ledger.checkpoint(e - 1, now);
        }
        let (members, beacon) = self.ledger.committee(e);
        let mut idx: Vec<usize> = members
            .iter()
            .filter_map(|a| match self.by_account.get(a) {
                Some(PeerRef::Oracle(i)) => Some(*i),
                _ => None,
            })
            .collect();
        idx.sort_unstable();
        idx.dedup(); // an oracle drawn to several seats hears once
        self.committee = idx;
        self.epoch = e;
        for i in 0..self.oracles.len() {
            let out = self.oracles[i].engine.handle(
                now,
                OracleInput::Epoch {
                    epoch: e,
                    committee: members.clone(),
                    beacon,
                },
                &mut self.rng,
            );
            self.on_oracle_out(i, out);
        }
        self.metrics.epochs += 1;
        if self.offer_steps {
            self.take_offers_in_parallel();
        }
        self.trim_feeds();
        let next = now.plus(DurationMs(self.sc.epoch_minutes * 60_000));
        self.sched.at(next, Ev::Epoch(e + 1));
    }

    fn submit_job(&mut self, now: Timestamp, i: usize) {
        let requester = self.requesters[i].engine.account();
        let NewJob {
            spec,
            kind: kind_name,
            dp,
        } = new_job(&self.sc, &mut self.rng, requester, now);
        let units = spec.estimated_units;
        self.metrics.job_submitted(i, &kind_name, dp, units);
        let out = self.requester_handle(i, now, RequesterInput::Submit(Box::new(spec)));
        self.on_requester_out(i, out);
    }

    fn deliver(&mut self, now: Timestamp, to: PeerRef, msg: Message) {
        match to {
            PeerRef::Provider(i) => {
                if !self.providers[i].online {
                    return;
                }
                let input = match msg {
                    Message::Proposal(p) => ProviderInput::Proposal(p),
                    Message::Bid(b) => ProviderInput::Bid(b),
                    Message::Answer(a) => ProviderInput::Answer(a),
                    Message::Contract(c) => ProviderInput::Contract(c),
                    Message::Probe(p) => ProviderInput::Probe(p),
                    _ => return,
                };
                let out = self.providers[i].engine.handle(now, input, &mut self.rng);
                self.on_provider_out(i, out);
            }
            PeerRef::Requester(i) => {
                let input = match msg {
                    Message::Answer(a) => RequesterInput::Answer(a),
                    Message::Proposal(p) => RequesterInput::Proposal(p),
                    Message::Contract(c) => RequesterInput::Contract(c),
                    Message::Receipt(r) => RequesterInput::Receipt(r),
                    Message::Offer(o) => RequesterInput::Offer(o),
                    _ => return,
                };
                let out = self.requester_handle(i, now, input);
                self.on_requester_out(i, out);
            }
            PeerRef::Oracle(i) => {
                let input = match msg {
                    // Watched under the committee of the epoch it was locked in.
                    Message::Contract(c) => match self.locked_in.get(&c.body_hash()) {
                        Some((epoch, committee)) => OracleInput::Watch {
                            contract: c,
                            epoch: *epoch,
                            committee: committee.clone(),
                            receipt: None,
                            verdict: None,
                        },
                        None => OracleInput::Contract(c),
                    },
                    Message::Receipt(r) => OracleInput::Receipt(r),
                    Message::ProbeReply(p) => OracleInput::ProbeReply(p),
                    Message::Dispute(d) => OracleInput::Dispute(d),
                    Message::Verdict(v) => OracleInput::Verdict(v),
                    _ => return,
                };
                let out = self.oracles[i].engine.handle(now, input, &mut self.rng);
                self.on_oracle_out(i, out);
            }
        }
    }

    /// Hand requester `i` the offers of its region's feed it has not handled yet,
    /// each at its arrival time, in order. Called before anything else reaches the
    /// requester's engine: an offer is handed over at once only to a requester
    /// that [`RequesterEngine::awaits_offers`]; for the others handling it only
    /// updates the book (no output, no draw from the RNG), and nothing else
    /// happens to their engine before this catch-up, so the book ends up the same
    /// as if it had taken each offer on arrival. Taking a requester's backlog in
    /// one go keeps its book in the cache, where handing each offer to all the
    /// requesters of a region in turn touched every book once per offer.
    fn catch_up(&mut self, i: usize) {
        let region = self.requesters[i].region;
        let rep = UniformReputation(0.9);
        while self.requesters[i].heard < self.offer_feeds[region].end() {
            let feed = &self.offer_feeds[region];
            let (at, id, offer) = feed.items[self.requesters[i].heard - feed.base].clone();
            self.requesters[i].heard += 1;
            let out = self.requesters[i].engine.handle(
                at,
                RequesterInput::VerifiedOffer { id, offer },
                &rep,
                &mut self.rng,
            );
            debug_assert!(
                out.is_empty() || at == self.sched.now(),
                "a deferred offer made the requester act"
            );
            self.on_requester_out(i, out);
        }
    }

    /// Idle requesters take the offers waiting for them now, the requesters split
    /// in two halves taken at once on two cores (the offers they take are most of
    /// `scale-1k`'s work besides signing).
    ///
    /// **Same result as taking them later.** An idle requester (no job waiting
    /// for offers: [`RequesterEngine::awaits_offers`]) takes offers without
    /// acting, drawing no randomness and sending nothing; each offer goes in with
    /// its own arrival time. So the calls its engine sees, in order, are the same
    /// whether an offer goes in here or when the requester next acts
    /// ([`World::catch_up`]). Requesters that await offers were caught up when
    /// each arrived. The halves are disjoint and the feeds only read, so nothing
    /// else is shared; the step ends (both halves joined) before the simulation
    /// goes on. Should an idle requester act or draw randomness after all, the
    /// run reports it as a violation (or stops), rather than diverge silently.
    #[allow(clippy::disallowed_methods)] // the scoped step above (see clippy.toml)
    fn take_offers_in_parallel(&mut self) {
        let feeds = &self.offer_feeds;
        let mid = self.requesters.len() / 2;
        let (a, b) = self.requesters.split_at_mut(mid);
        let (from_a, from_b) = std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .name("simnet-offers".into())
                .spawn_scoped(s, || take_pending_offers(a, feeds));
            let from_b = take_pending_offers(b, feeds);
            let from_a = match h {
                Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                // No thread to be had: this half on this core too.
                Err(_) => Vec::new(),
            };
            (from_a, from_b)
        });
        // The first half, if its thread could not start, is taken here (else
        // this finds nothing left to take).
        let rest = take_pending_offers(&mut self.requesters[..mid], &self.offer_feeds);
        self.metrics
            .invariant_violations
            .extend(from_a.into_iter().chain(from_b).chain(rest));
    }

    /// Drop the feed's offers every requester of the region has handled.
    fn trim_feeds(&mut self) {
        for (region, feed) in self.offer_feeds.iter_mut().enumerate() {
            let low = self
                .requesters
                .iter()
                .filter(|r| r.region == region)
                .map(|r| r.heard)
                .min()
                .unwrap_or(feed.end());
            let drop = low.saturating_sub(feed.base).min(feed.items.len());
            feed.items.drain(..drop);
            feed.base += drop;
        }
    }

    /// Requester `i`'s engine handles `input` (after the offers it has not taken yet).
    fn requester_handle(
        &mut self,
        i: usize,
        now: Timestamp,
        input: RequesterInput,
    ) -> Vec<RequesterOutput> {
        self.catch_up(i);
        let rep = UniformReputation(0.9);
        self.requesters[i]
            .engine
            .handle(now, input, &rep, &mut self.rng)
    }

    fn on_timer(&mut self, now: Timestamp, p: PeerRef) {
        match p {
            PeerRef::Provider(i) => {
                self.providers[i].timer_at = None;
                let out = self.providers[i].engine.handle_timeout(now, &mut self.rng);
                self.on_provider_out(i, out);
            }
            PeerRef::Requester(i) => {
                // Before the slot is cleared: the timer firing now is still armed.
                self.catch_up(i);
                self.requesters[i].timer_at = None;
                let rep = UniformReputation(0.9);
                let out = self.requesters[i]
                    .engine
                    .handle_timeout(now, &rep, &mut self.rng);
                self.on_requester_out(i, out);
            }
            PeerRef::Oracle(i) => {
                self.oracles[i].timer_at = None;
                let out = self.oracles[i].engine.handle_timeout(now, &mut self.rng);
                self.on_oracle_out(i, out);
            }
        }
    }

    fn timer_slot(&self, p: PeerRef) -> Option<Timestamp> {
        match p {
            PeerRef::Provider(i) => self.providers[i].timer_at,
            PeerRef::Requester(i) => self.requesters[i].timer_at,
            PeerRef::Oracle(i) => self.oracles[i].timer_at,
        }
    }

    /// Keep one live timer event per peer, at its engine's `poll_timeout`; an
    /// event left behind by an earlier arming is stale and ignored when it fires.
    fn arm(&mut self, p: PeerRef) {
        let (next, slot) = match p {
            PeerRef::Provider(i) => (
                self.providers[i].engine.poll_timeout(),
                &mut self.providers[i].timer_at,
            ),
            PeerRef::Requester(i) => (
                self.requesters[i].engine.poll_timeout(),
                &mut self.requesters[i].timer_at,
            ),
            PeerRef::Oracle(i) => (
                self.oracles[i].engine.poll_timeout(),
                &mut self.oracles[i].timer_at,
            ),
        };
        if let Some(at) = next
            && slot.is_none_or(|cur| at < cur)
        {
            *slot = Some(at);
            self.sched.at(at, Ev::Timer(p, at));
        }
    }

    fn on_provider_out(&mut self, i: usize, out: Vec<ProviderOutput>) {
        let me = PeerRef::Provider(i);
        for o in out {
            match o {
                ProviderOutput::Publish(Message::Offer(s)) => self.publish_offer(i, s),
                ProviderOutput::Publish(m @ Message::Receipt(_)) => {
                    let mut to = Self::contract_of(&m)
                        .map(|c| self.watchers_of(&c))
                        .unwrap_or_default();
                    if let Message::Receipt(s) = &m
                        && let Ok(r) = s.body_unverified()
                        && let Some(&(req, _)) = self.parties.get(&r.contract)
                    {
                        to.push(PeerRef::Requester(req));
                    }
                    self.gossip(me, &to, &m);
                }
                ProviderOutput::Publish(m) => {
                    let to = Self::contract_of(&m)
                        .map(|c| self.watchers_of(&c))
                        .unwrap_or_default();
                    self.gossip(me, &to, &m);
                }
                ProviderOutput::Send { to, message } => {
                    if let Message::Answer(a) = &message
                        && let Ok(ProposalAnswer::Accept(contract)) = a.body_unverified()
                    {
                        self.ledger.expect_lock(&contract);
                    }
                    if let Some(&p) = self.by_account.get(&to) {
                        self.send(me, p, message);
                    }
                }
                ProviderOutput::ScheduleTimer { .. } => {}
                ProviderOutput::Run { contract, terms } => self.run_job(i, contract, &terms),
                ProviderOutput::Rejected { .. } => self.metrics.rejections += 1,
                ProviderOutput::PriceChanged { .. } => self.metrics.price_change(),
                _ => {}
            }
        }
        self.arm(me);
    }

    fn publish_offer(&mut self, i: usize, s: Signed<Offer>) {
        let Ok(offer) = s.verify(&self.network) else {
            return;
        };
        self.metrics.offers_published += 1;
        let id = s.id();
        let offer = Arc::new(offer);
        let t = self.t_ms();
        let n = self.peers_in_mesh();
        let from = self.providers[i].region;
        for region in 0..self.net.regions.len() {
            if let Some(d) = self.net.gossip_delay(t, from, region, n, &mut self.rng) {
                let at = self.sched.now().plus(DurationMs(d as u64));
                self.sched.at(
                    at,
                    Ev::Offer {
                        region,
                        id,
                        offer: offer.clone(),
                    },
                );
            }
        }
        // Competitors of the same class see the price (a sample of them: a provider
        // watches the few offers its own book samples, not all thousand).
        let class = offer.class;
        for _ in 0..8.min(self.providers.len().saturating_sub(1)) {
            let j = self.rng.random_range(0..self.providers.len());
            if j != i {
                let input = ProviderInput::CompetitorPrice {
                    provider: offer.provider,
                    class,
                    price: offer.price,
                };
                let now = self.sched.now();
                let out = self.providers[j].engine.handle(now, input, &mut self.rng);
                self.on_provider_out(j, out);
            }
        }
    }

    fn run_job(&mut self, i: usize, contract: Hash32, terms: &ContractTerms) {
        let now = self.sched.now();
        let p = self.providers[i].params;
        let transfer_ms = terms.spec.dataset.size as f64 / (p.bandwidth_mb_s * 1e6) * 1000.0;
        let compute_ms = terms.spec.estimated_units.as_f64() / p.speed_cu_s * 1000.0;
        let ready = now.plus(DurationMs(transfer_ms as u64));
        let mut run_ms = compute_ms;
        if !self.rng.random_bool(p.reliability) {
            // Late: the job runs past its deadline.
            let to_deadline = terms.deadline.since(now).0 as f64;
            run_ms = run_ms.max(to_deadline - transfer_ms)
                + self.rng.random_range(60_000.0..1_800_000.0);
        }
        let done = ready.plus(DurationMs(run_ms as u64));
        self.metrics
            .busy(i, now.since(T0).0 as f64, transfer_ms + run_ms);
        self.sched.at(
            done,
            Ev::Finish {
                provider: i,
                contract,
                started: ready,
                ready,
                units: terms.spec.estimated_units,
            },
        );
    }

    fn on_requester_out(&mut self, i: usize, out: Vec<RequesterOutput>) {
        let me = PeerRef::Requester(i);
        let now = self.sched.now();
        for o in out {
            match o {
                RequesterOutput::Publish(m @ Message::Bid(_)) => {
                    let to: Vec<PeerRef> =
                        (0..self.providers.len()).map(PeerRef::Provider).collect();
                    self.gossip(me, &to, &m);
                }
                RequesterOutput::Publish(m @ Message::Contract(_)) => {
                    let watchers = self.committee_refs();
                    if let Some(c) = Self::contract_of(&m) {
                        self.watchers.insert(c, watchers.clone());
                        let members = watchers
                            .iter()
                            .filter_map(|p| match p {
                                PeerRef::Oracle(i) => Some(self.oracles[*i].engine.account()),
                                _ => None,
                            })
                            .collect();
                        self.locked_in.insert(c, (self.epoch, members));
                    }
                    if let Message::Contract(c) = &m
                        && let Ok(t) = c.body_unverified()
                        && let Some(&PeerRef::Provider(p)) = self.by_account.get(&t.provider)
                    {
                        self.gossip(me, &[PeerRef::Provider(p)], &m);
                    }
                    // The committee watches what the ledger escrows: the lock
                    // reaches it by ledger sync, which a partition delays but
                    // does not lose.
                    self.sync_to(me, &watchers, &m);
                }
                RequesterOutput::Publish(m) => {
                    let to = Self::contract_of(&m)
                        .map(|c| self.watchers_of(&c))
                        .unwrap_or_default();
                    self.gossip(me, &to, &m);
                }
                RequesterOutput::Send { to, message } => {
                    if let Some(&p) = self.by_account.get(&to) {
                        self.send(me, p, message);
                    }
                }
                RequesterOutput::LockEscrow { contract, amount } => {
                    let id = contract.body_hash();
                    let Ok(t) = contract.body_unverified() else {
                        continue;
                    };
                    if t.escrow() != Some(amount) {
                        self.metrics.invariant_violations.push(format!(
                            "engine locks {amount:?} for {id:?}, its terms say {:?}",
                            t.escrow()
                        ));
                    }
                    if let Err(why) = self.ledger.lock_escrow(&contract, now) {
                        if let LockRefused::Other(e) = why {
                            self.metrics
                                .invariant_violations
                                .push(format!("escrow lock of {id:?} refused: {e}"));
                        }
                        self.metrics.escrow_failures += 1;
                        let out = self.requester_handle(
                            i,
                            now,
                            RequesterInput::EscrowFailed { contract: id },
                        );
                        self.on_requester_out(i, out);
                        continue;
                    }
                    if let Some(&PeerRef::Provider(p)) = self.by_account.get(&t.provider) {
                        self.parties.insert(id, (i, p));
                    }
                    self.metrics.contract_made(i, now, &t);
                }
                RequesterOutput::NoMatch { reasons, .. } => self.metrics.no_match(&reasons),
                RequesterOutput::Failed { .. } => self.metrics.failed += 1,
                RequesterOutput::BidExpired { .. } => self.metrics.bids_expired += 1,
                RequesterOutput::Settled { .. } => {
                    // Finished deals leave the engine's memory.
                    self.requesters[i].engine.drain_finished();
                }
                _ => {}
            }
        }
        self.arm(me);
    }

    fn on_oracle_out(&mut self, i: usize, out: Vec<OracleOutput>) {
        let me = PeerRef::Oracle(i);
        let now = self.sched.now();
        for o in out {
            match o {
                OracleOutput::Send { to, message } => {
                    if let Some(&p) = self.by_account.get(&to) {
                        if let PeerRef::Provider(pi) = p
                            && !self.providers[pi].online
                        {
                            continue; // an offline provider does not answer probes
                        }
                        self.send(me, p, message);
                    }
                }
                OracleOutput::Publish(m) => {
                    let to = Self::contract_of(&m)
                        .map(|c| self.watchers_of(&c))
                        .unwrap_or_default();
                    self.gossip(me, &to, &m);
                }
                OracleOutput::ScheduleTimer { .. } => {}
                OracleOutput::Check {
                    contract, terms, ..
                } => {
                    // Re-execute a 5% sample on the oracle's own device.
                    let ms = terms.spec.estimated_units.as_f64() * 0.05 / 19_500.0 * 1000.0;
                    let correct = !self.wrong.contains(&contract);
                    self.metrics.checks += 1;
                    self.sched.at(
                        now.plus(DurationMs(ms as u64)),
                        Ev::CheckDone {
                            oracle: i,
                            contract,
                            correct,
                        },
                    );
                }
                OracleOutput::Settle(si) => self.settle(i, now, *si),
                _ => {}
            }
        }
        self.arm(me);
    }

    fn settle(&mut self, oracle: usize, now: Timestamp, si: SettlementInstruction) {
        if !self.settled.insert(si.contract) {
            return; // another member of the quorum settled it already
        }
        self.watchers.remove(&si.contract);
        self.locked_in.remove(&si.contract);
        let Some(amount) = self.ledger.escrow(&si.contract) else {
            self.metrics.settle_unknown += 1;
            return;
        };
        let p = &si.payout;
        if p.total() != Some(amount) {
            self.metrics.invariant_violations.push(format!(
                "settlement of {:?} pays {:?}, escrow was {amount:?}",
                si.contract,
                p.total()
            ));
        }
        let author = self.oracles[oracle].engine.account();
        self.ledger.settle(author, now, &si);
        let wrong = self.wrong.contains(&si.contract);
        self.metrics.settled(now, &si, wrong);
        if let Some(&PeerRef::Provider(pi)) = self.by_account.get(&si.terms.provider) {
            self.metrics.provider_paid(pi, p.provider, si.outcome.units);
            if wrong {
                let e = self.metrics.caught_by_provider.entry(pi).or_default();
                if si.outcome.result_ok {
                    e.1 += 1;
                } else {
                    e.0 += 1;
                }
            }
            let out = self.providers[pi].engine.handle(
                now,
                ProviderInput::Settlement(Box::new(si.clone())),
                &mut self.rng,
            );
            self.on_provider_out(pi, out);
        }
        if let Some(&PeerRef::Requester(ri)) = self.by_account.get(&si.terms.requester) {
            let out = self.requester_handle(ri, now, RequesterInput::Settlement(Box::new(si)));
            self.on_requester_out(ri, out);
        }
    }

    fn finish(mut self) -> Metrics {
        let totals = self.ledger.finish();
        let violations = std::mem::take(&mut self.ledger.violations);
        self.metrics.invariant_violations.extend(violations);
        self.metrics.still_locked = totals.open_escrows;
        // Every escrow ends: none is open past its bound (the committee's grace,
        // the protocol's settling slack, and two epochs to reach the replica).
        let epoch = DurationMs(self.sc.epoch_minutes * 60_000);
        for (c, deadline) in &totals.open_deadlines {
            let bound = escrow_bound(*deadline, self.grace).plus(epoch).plus(epoch);
            if bound < self.end {
                self.metrics.invariant_violations.push(format!(
                    "the escrow of contract {} is still open {:.0} s past its bound (deadline {})",
                    c.short(),
                    self.end.since(bound).as_secs_f64(),
                    deadline.0
                ));
            }
        }
        self.metrics.minted = totals.minted;
        self.metrics.burned = totals.burned;
        for (i, p) in self.providers.iter().enumerate() {
            let a = p.engine.account();
            self.metrics.provider_minted[i] = self.ledger.minted_to.get(&a).copied().unwrap_or(0);
            let left = totals.bonds.get(&a).copied().unwrap_or(0);
            self.metrics.provider_slashed[i] = provider_bond(&p.params).0.saturating_sub(left);
        }
        self.metrics.checkpoints = self.ledger.checkpoints;
        self.metrics.ledger_entries = self.ledger.entries_written;
        self.metrics.events = self.sched.processed();
        self.metrics.cheaters = self
            .providers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.cheating)
            .map(|(i, _)| i)
            .collect();
        self.metrics.provider_labels = self
            .providers
            .iter()
            .map(|p| format!("{} ({})", p.params.label, self.net.regions[p.region]))
            .collect();
        self.metrics.provider_profiles = self.providers.iter().map(|p| p.profile).collect();
        self.metrics.provider_slots = self.providers.iter().map(|p| p.params.slots).collect();
        self.metrics.final_prices = self.providers.iter().map(|p| p.engine.price().0).collect();
        self.metrics.balances = totals.balances;
        self.metrics
    }
}
