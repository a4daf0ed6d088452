//! The provider side of the market.
//!
//! A [`ProviderEngine`] posts and refreshes its signed offer at the price its
//! [`PricingPolicy`] sets; accepts or rejects proposals by price floor, SLA,
//! capacity, queue and deadline; answers gossiped open bids it can serve with a
//! priced proposal; keeps the accepted jobs in slots and a FIFO queue, asking its
//! driver to run each ([`ProviderOutput::Run`]) when a slot frees; signs a receipt
//! when the driver reports the job finished; and answers oracle probes.
//!
//! After a restart the driver hands back, as [`ProviderInput::Resume`], each
//! contract it had persisted that this provider accepted and was not yet paid
//! for; the engine takes it up as an accepted deal (queued, run when a slot
//! frees) without the admission checks: it already committed to the job.
//!
//! Capacity: `running + queued + awaiting signature ≤ slots + queue_capacity`.
//! A proposal is accepted into a slot when one is free, else into the queue if the
//! queued work still finishes by the job's deadline:
//! `now + backlog/slots + T_r + T_c ≤ deadline`.

use std::collections::{HashMap, VecDeque};

use rand::{Rng, RngExt};

use crate::accounting::ProviderLedger;
use crate::codec::Wire;
use crate::identity::{AccountId, Identity};
use crate::messages::{
    BlobRef, Contract, ContractTerms, DataOffer, JobKind, JobSpec, Message, Offer, Probe,
    ProbeReply, Proposal, ProposalAnswer, Receipt, RejectReason, ResourceClass, SlaTerms, Timings,
};
use crate::oracle::SettlementInstruction;
use crate::replay::ReplayGuard;
use crate::signed::{MultiSigned, Signed};
use crate::types::{ComputeUnits, DurationMs, Hash32, NetworkId, PricePerCu, Timestamp};

use super::lifecycle::{AnyDeal, Deal, DealEvent, FailReason};
use super::pricing::{PricingConfig, PricingPolicy};
use super::{open, open_multi, signed_by_both};

/// What a provider sells and how it behaves.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub class: ResourceClass,
    pub device: String,
    pub speed_milli_cu_per_s: u64,
    pub memory_bytes: u64,
    pub bandwidth_bytes_per_s: u64,
    pub region: String,
    pub contact: Vec<String>,
    pub slots: u16,
    /// Accepted jobs that may wait for a slot.
    pub queue_capacity: usize,
    pub sla: SlaTerms,
    /// Lifetime of each offer; it is refreshed at two thirds of it.
    pub offer_ttl: DurationMs,
    /// How long an acceptance (or a proposal for an open bid) waits for the other
    /// signature.
    pub answer_ttl: DurationMs,
    pub pricing: PricingConfig,
    /// Most proposal nonces remembered against replay.
    pub replay_capacity: usize,
    /// Check signatures (turn off only in simulation; see `market::open`).
    pub verify_signatures: bool,
    /// Private data sets we hold and train on for federated jobs; each one's
    /// `epsilon_left` is the owner's total budget (offers state what is
    /// left of it).
    pub datasets: Vec<DataOffer>,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            class: ResourceClass::Cpu,
            device: "cpu".into(),
            speed_milli_cu_per_s: 1_000_000,
            memory_bytes: 16 << 30,
            bandwidth_bytes_per_s: 100 << 20,
            region: "local".into(),
            contact: Vec::new(),
            slots: 2,
            queue_capacity: 4,
            sla: SlaTerms {
                deadline_slack: DurationMs::secs(10),
                availability: crate::types::Bps(9_000),
                penalty: crate::types::Bps(1_000),
                exact: true,
            },
            offer_ttl: DurationMs::secs(600),
            answer_ttl: DurationMs::secs(30),
            pricing: PricingConfig::default(),
            replay_capacity: 10_000,
            verify_signatures: true,
            datasets: Vec::new(),
        }
    }
}

/// What the driver hands the provider engine.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ProviderInput {
    /// Post the first offer (and start the refresh timer).
    Start,
    /// A requester proposes a contract (request-response).
    Proposal(Signed<Proposal>),
    /// An open bid heard on gossip.
    Bid(Signed<JobSpec>),
    /// A requester's answer to a proposal we made for its open bid.
    Answer(Signed<ProposalAnswer>),
    /// The requester completed a contract we accepted. A cautious driver hands it
    /// over once it has seen the requester's escrow lock on the ledger.
    Contract(Contract),
    /// A contract with this provider, signed by both parties, that it accepted
    /// before a restart or that it finds escrowed in the ledger: run it (a
    /// [`ProviderOutput::Run`] follows when a slot is free). One whose
    /// acceptance awaits the requester's signature is taken as
    /// [`ProviderInput::Contract`]. Ignored unless it is for this network and
    /// provider, both signatures hold, and the engine does not run it already.
    Resume(Contract),
    /// The driver finished running a job.
    Finished {
        contract: Hash32,
        result: BlobRef,
        units_used: ComputeUnits,
        commitment: Hash32,
        checkpoint_every: u32,
        checkpoints: u32,
        inputs_ready_at: Timestamp,
        started_at: Timestamp,
    },
    /// The driver could not run a job.
    Aborted { contract: Hash32, reason: String },
    /// An oracle probes our liveness.
    Probe(Signed<Probe>),
    /// A competitor's posted price (from offers the driver verified).
    CompetitorPrice {
        provider: AccountId,
        class: ResourceClass,
        price: PricePerCu,
    },
    /// The committee settled one of our contracts.
    Settlement(Box<SettlementInstruction>),
    /// Blobs we now hold (models cached), advertised in the next offer.
    Holds(Vec<Hash32>),
    /// How many bytes the driver's store has for new jobs now (`None`: no
    /// limit). A job is accepted only while its inputs and its declared
    /// result ([`JobSpec::storage_bytes`]), with those of the jobs accepted
    /// and not yet run to their end, fit in it.
    StoreRoom(Option<u64>),
    /// What the ledger records as spent of our data sets' privacy budgets
    /// (all of it; it replaces what the engine knew).
    PrivacySpent(Vec<super::PrivacySpend>),
}

/// What the provider engine asks its driver to do.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ProviderOutput {
    /// Gossip on the market topic.
    Publish(Message),
    /// Send to one peer (request-response).
    Send { to: AccountId, message: Message },
    /// Call `handle_timeout` at `at`.
    ScheduleTimer { at: Timestamp },
    /// Fetch the inputs and run this job, then feed `Finished` or `Aborted`.
    Run {
        contract: Hash32,
        terms: Box<ContractTerms>,
    },
    /// A proposal was refused (for logs and metrics).
    Rejected {
        requester: AccountId,
        reason: RejectReason,
    },
    /// The posted price moved.
    PriceChanged { price: PricePerCu },
}

impl crate::timers::ScheduleTimer for ProviderOutput {
    fn schedule_timer(at: Timestamp) -> Self {
        ProviderOutput::ScheduleTimer { at }
    }
}

/// Counters of the provider's decisions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderStats {
    pub accepted: u64,
    pub rejected_price: u64,
    pub rejected_capacity: u64,
    pub rejected_deadline: u64,
    pub rejected_storage: u64,
    pub rejected_privacy: u64,
    pub rejected_invalid: u64,
    pub bids_answered: u64,
    pub completed: u64,
    pub aborted: u64,
    pub probes_answered: u64,
    /// Contracts taken up again after a restart ([`ProviderInput::Resume`]).
    pub resumed: u64,
    pub ignored: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Refresh,
    Pending(Hash32),
}

/// The provider's market engine; see the module docs.
#[derive(Debug)]
pub struct ProviderEngine {
    identity: Identity,
    network: NetworkId,
    cfg: ProviderConfig,
    pricing: PricingPolicy,
    holds: Vec<Hash32>,
    offer: Option<(Hash32, Timestamp)>,
    replay: ReplayGuard,
    /// Terms we signed, waiting for the other signature: contract id → deal.
    pending: HashMap<Hash32, Deal<super::lifecycle::Proposed>>,
    /// Our proposals for open bids: job id → (proposal id, expiry).
    bid_proposals: HashMap<Hash32, Timestamp>,
    deals: HashMap<Hash32, AnyDeal>,
    running: Vec<Hash32>,
    queue: VecDeque<Hash32>,
    timers: crate::timers::Timers<Timer>,
    stats: ProviderStats,
    ledger: ProviderLedger,
    /// How long a contract of each requester would wait before it may start
    /// (its escrow must become final), as the driver last said.
    start_delays: HashMap<AccountId, DurationMs>,
    /// The store's room for new jobs, as the driver last said.
    store_room: Option<u64>,
    /// What our data sets' budgets have spent, as the ledger says.
    privacy: super::PrivacyBudgets,
}

/// Requesters whose start delay an engine remembers (the map is cleared when
/// it is full: the driver sets a requester's delay before each of its jobs).
const MAX_START_DELAYS: usize = 4_096;

fn transfer_ms(bytes: u64, per_s: u64) -> u64 {
    u64::try_from((u128::from(bytes) * 1000).div_ceil(u128::from(per_s.max(1)))).unwrap_or(u64::MAX)
}

impl ProviderEngine {
    pub fn new(identity: Identity, network: NetworkId, cfg: ProviderConfig) -> Self {
        ProviderEngine {
            pricing: PricingPolicy::new(cfg.pricing),
            replay: ReplayGuard::new(cfg.replay_capacity),
            identity,
            network,
            cfg,
            holds: Vec::new(),
            offer: None,
            pending: HashMap::new(),
            bid_proposals: HashMap::new(),
            deals: HashMap::new(),
            running: Vec::new(),
            queue: VecDeque::new(),
            timers: crate::timers::Timers::default(),
            stats: ProviderStats::default(),
            ledger: ProviderLedger::default(),
            start_delays: HashMap::new(),
            store_room: None,
            privacy: Default::default(),
        }
    }

    pub fn account(&self) -> AccountId {
        self.identity.account()
    }

    /// How long a contract of `requester` would wait before it may start: a
    /// provider runs on a pending escrow only when the requester's bond backs
    /// it, else once the escrow is final. The engine adds it to its estimate
    /// of when a job of this requester would finish, so it never promises a
    /// deadline the wait makes it miss (and is judged late for a wait the
    /// protocol set).
    pub fn set_start_delay(&mut self, requester: AccountId, delay: DurationMs) {
        if delay == DurationMs(0) {
            self.start_delays.remove(&requester);
            return;
        }
        if self.start_delays.len() >= MAX_START_DELAYS {
            self.start_delays.clear();
        }
        self.start_delays.insert(requester, delay);
    }
    pub fn config(&self) -> &ProviderConfig {
        &self.cfg
    }

    pub fn price(&self) -> PricePerCu {
        self.pricing.price()
    }
    pub fn pricing(&self) -> &PricingPolicy {
        &self.pricing
    }
    pub fn pricing_mut(&mut self) -> &mut PricingPolicy {
        &mut self.pricing
    }
    pub fn stats(&self) -> &ProviderStats {
        &self.stats
    }
    /// `Π_p` so far.
    pub fn ledger(&self) -> &ProviderLedger {
        &self.ledger
    }
    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }
    /// Jobs waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
    /// The deal with this contract id.
    pub fn deal(&self, id: &Hash32) -> Option<&AnyDeal> {
        self.deals.get(id)
    }
    /// The id of the offer posted last.
    pub fn current_offer(&self) -> Option<Hash32> {
        self.offer.map(|(id, _)| id)
    }

    fn committed(&self) -> usize {
        self.running.len() + self.queue.len() + self.pending.len() + self.bid_proposals.len()
    }

    fn busy_slots(&self) -> u16 {
        (self.running.len() + self.pending.len() + self.bid_proposals.len())
            .min(usize::from(self.cfg.slots)) as u16
    }

    /// The earliest timer, if any.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.next()
    }

    fn sign<T: Wire>(&self, body: &T) -> Option<Signed<T>> {
        Signed::sign(&self.identity, &self.network, body).ok()
    }

    fn publish_offer<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        rng: &mut R,
        out: &mut Vec<ProviderOutput>,
    ) {
        let free = f64::from(self.cfg.slots.saturating_sub(self.busy_slots()))
            + self.cfg.queue_capacity.saturating_sub(self.queue.len()) as f64;
        self.pricing.set_capacity(free.max(0.5));
        let before = self.pricing.price();
        let price = self.pricing.update(now);
        if price != before {
            out.push(ProviderOutput::PriceChanged { price });
        }
        let offer = Offer {
            provider: self.account(),
            class: self.cfg.class,
            device: self.cfg.device.clone(),
            speed_milli_cu_per_s: self.cfg.speed_milli_cu_per_s,
            memory_bytes: self.cfg.memory_bytes,
            bandwidth_bytes_per_s: self.cfg.bandwidth_bytes_per_s,
            price,
            sla: self.cfg.sla,
            region: self.cfg.region.clone(),
            slots: self.cfg.slots,
            busy_slots: self.busy_slots(),
            holds: self.holds.iter().take(Offer::MAX_HOLDS).copied().collect(),
            datasets: self
                .cfg
                .datasets
                .iter()
                .take(Offer::MAX_DATASETS)
                .map(|d| DataOffer {
                    epsilon_left: self.privacy.left(d, self.live_specs()),
                    ..*d
                })
                .collect(),
            contact: self.cfg.contact.clone(),
            issued_at: now,
            expires_at: now.plus(self.cfg.offer_ttl),
            nonce: rng.random(),
        };
        if let Some(s) = self.sign(&offer) {
            self.offer = Some((s.id(), offer.expires_at));
            out.push(ProviderOutput::Publish(Message::Offer(s)));
        }
        let refresh = now.plus(DurationMs(self.cfg.offer_ttl.0 * 2 / 3).max(DurationMs(1)));
        self.timers.retain(|t| *t != Timer::Refresh);
        self.timers.schedule(out, refresh, Timer::Refresh);
    }

    /// When a job of `spec` accepted now would be delivered.
    fn eta(&self, now: Timestamp, spec: &JobSpec) -> Timestamp {
        let mut bytes = 0u64;
        if let Some(m) = &spec.model
            && !self.holds.contains(&m.hash)
        {
            bytes = bytes.saturating_add(m.size);
        }
        if !self.holds.contains(&spec.dataset.hash) {
            bytes = bytes.saturating_add(spec.dataset.size);
        }
        let delay = self.start_delays.get(&spec.requester).map_or(0, |d| d.0);
        let own = transfer_ms(bytes, self.cfg.bandwidth_bytes_per_s)
            .saturating_add(transfer_ms(
                spec.estimated_units.milli,
                self.cfg.speed_milli_cu_per_s,
            ))
            .saturating_add(delay);
        let wait = if self.running.len() + self.pending.len() + self.bid_proposals.len()
            < usize::from(self.cfg.slots)
        {
            0
        } else {
            self.backlog_ms_with(false)
        };
        now.plus(DurationMs(own.saturating_add(wait)))
    }

    /// How long until a slot frees, by the work queued and running, spread over
    /// the slots. With `pending` (accepted, awaiting the contract) counted too,
    /// it is what a refusal for capacity names.
    fn backlog_ms_with(&self, pending: bool) -> u64 {
        let work =
            |t: &ContractTerms| transfer_ms(t.max_units.milli, self.cfg.speed_milli_cu_per_s);
        let mut backlog: u64 = self
            .queue
            .iter()
            .chain(self.running.iter())
            .filter_map(|id| self.deals.get(id))
            .map(|d| work(d.terms()))
            .sum();
        if pending {
            backlog = backlog.saturating_add(self.pending.values().map(|d| work(&d.terms)).sum());
        }
        backlog / u64::from(self.cfg.slots.max(1))
    }

    /// Whether we can take `spec` at `price` with `sla` now, or why not.
    fn admit(
        &self,
        now: Timestamp,
        spec: &JobSpec,
        price: PricePerCu,
        sla: &SlaTerms,
    ) -> Result<(), RejectReason> {
        let floor = self.pricing.accept_floor();
        if price < floor {
            return Err(RejectReason::PriceBelowFloor { floor });
        }
        if sla.penalty > self.cfg.sla.penalty || sla.availability > self.cfg.sla.availability {
            return Err(RejectReason::Unsupported(
                "SLA stricter than offered".into(),
            ));
        }
        // Checks bit for bit would fail every honest result of a backend that
        // is not exact, and slash its bond.
        if sla.exact && !self.cfg.sla.exact {
            return Err(RejectReason::Unsupported(
                "exact results asked of a backend that is not exact".into(),
            ));
        }
        if self.committed() >= usize::from(self.cfg.slots) + self.cfg.queue_capacity {
            let free_at = now.plus(DurationMs(self.backlog_ms_with(true)));
            return Err(if self.cfg.queue_capacity == 0 {
                RejectReason::NoCapacity { free_at }
            } else {
                RejectReason::QueueFull { free_at }
            });
        }
        if self.eta(now, spec) > spec.deadline {
            return Err(RejectReason::DeadlineInfeasible);
        }
        if let JobKind::FedRound { layers, rows, .. } = &spec.kind {
            let Some(d) = self.cfg.datasets.iter().find(|d| d.id == spec.dataset.hash) else {
                return Err(RejectReason::Unsupported(format!(
                    "no data set {}",
                    spec.dataset.hash.short()
                )));
            };
            let (first, last) = (layers.first().copied(), layers.last().copied());
            if first != Some(d.features) || last != Some(d.classes) || *rows != d.rows {
                return Err(RejectReason::Unsupported(format!(
                    "layers {layers:?} on {rows} rows do not fit the data set's {} rows, {} \
                     features and {} outputs",
                    d.rows, d.features, d.classes
                )));
            }
            self.privacy.admit(d, spec, self.live_specs())?;
        }
        if let Some(room) = self.store_room {
            let room = room.saturating_sub(self.storage_reserved());
            let needed = spec.storage_bytes();
            if needed > room {
                return Err(RejectReason::NoStorage { needed, room });
            }
        }
        Ok(())
    }

    /// The jobs accepted and not yet run to their end.
    fn live_specs(&self) -> impl Iterator<Item = &JobSpec> + Clone {
        let live = self.queue.iter().chain(self.running.iter());
        live.filter_map(|id| self.deals.get(id))
            .map(|d| &d.terms().spec)
            .chain(self.pending.values().map(|d| &d.terms.spec))
    }

    /// What the jobs accepted and not yet run to their end may still store.
    fn storage_reserved(&self) -> u64 {
        self.live_specs()
            .map(JobSpec::storage_bytes)
            .fold(0, u64::saturating_add)
    }

    fn reject(
        &mut self,
        out: &mut Vec<ProviderOutput>,
        requester: AccountId,
        proposal: Hash32,
        reason: RejectReason,
    ) {
        match reason {
            RejectReason::PriceBelowFloor { .. } => self.stats.rejected_price += 1,
            RejectReason::NoCapacity { .. } | RejectReason::QueueFull { .. } => {
                self.stats.rejected_capacity += 1;
            }
            RejectReason::DeadlineInfeasible => self.stats.rejected_deadline += 1,
            RejectReason::NoStorage { .. } => self.stats.rejected_storage += 1,
            RejectReason::PrivacyBudget { .. } => self.stats.rejected_privacy += 1,
            _ => self.stats.rejected_invalid += 1,
        }
        let answer = ProposalAnswer::Reject {
            proposal,
            reason: reason.clone(),
        };
        if let Some(s) = self.sign(&answer) {
            out.push(ProviderOutput::Send {
                to: requester,
                message: Message::Answer(s),
            });
        }
        out.push(ProviderOutput::Rejected { requester, reason });
    }

    /// Handle one input at `now`.
    pub fn handle<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        input: ProviderInput,
        rng: &mut R,
    ) -> Vec<ProviderOutput> {
        let mut out = Vec::new();
        match input {
            ProviderInput::Start => self.publish_offer(now, rng, &mut out),
            ProviderInput::Proposal(sp) => self.on_proposal(now, sp, &mut out),
            ProviderInput::Bid(sb) => self.on_bid(now, sb, rng, &mut out),
            ProviderInput::Answer(sa) => self.on_answer(now, sa, &mut out),
            ProviderInput::Contract(c) => self.on_contract(now, c, &mut out),
            ProviderInput::Resume(c) => self.on_resume(now, c, &mut out),
            ProviderInput::Finished {
                contract,
                result,
                units_used,
                commitment,
                checkpoint_every,
                checkpoints,
                inputs_ready_at,
                started_at,
            } => {
                let Some(deal) = self.deals.remove(&contract) else {
                    self.stats.ignored += 1;
                    return out;
                };
                let accepted_at = deal
                    .history()
                    .iter()
                    .find(|(_, p)| *p == super::Phase::Accepted)
                    .map_or(now, |(t, _)| *t);
                let receipt = Receipt {
                    contract,
                    provider: self.account(),
                    result,
                    units_used,
                    timings: Timings {
                        accepted_at,
                        inputs_ready_at,
                        started_at,
                        finished_at: now,
                    },
                    commitment,
                    checkpoint_every,
                    checkpoints,
                };
                let deal = match deal.apply(now, DealEvent::Deliver(Box::new(receipt.clone()))) {
                    Ok(d) => d,
                    Err(e) => *e.deal,
                };
                self.deals.insert(contract, deal);
                if let Some(s) = self.sign(&receipt) {
                    out.push(ProviderOutput::Publish(Message::Receipt(s)));
                }
                self.stats.completed += 1;
                self.free_slot(now, contract, &mut out);
            }
            ProviderInput::Aborted { contract, reason } => {
                if let Some(deal) = self.deals.remove(&contract) {
                    let d = match deal.apply(now, DealEvent::Fail(FailReason::Aborted(reason))) {
                        Ok(d) => d,
                        Err(e) => *e.deal,
                    };
                    self.deals.insert(contract, d);
                    self.stats.aborted += 1;
                }
                self.free_slot(now, contract, &mut out);
            }
            ProviderInput::Probe(sp) => {
                let Ok(p) = open(&sp, &self.network, self.cfg.verify_signatures) else {
                    self.stats.ignored += 1;
                    return out;
                };
                if p.provider != self.account() || p.oracle != sp.signer {
                    self.stats.ignored += 1;
                    return out;
                }
                let reply = ProbeReply {
                    probe: sp.id(),
                    provider: self.account(),
                    replied_at: now,
                    busy_slots: self.busy_slots(),
                };
                if let Some(s) = self.sign(&reply) {
                    self.stats.probes_answered += 1;
                    out.push(ProviderOutput::Send {
                        to: p.oracle,
                        message: Message::ProbeReply(s),
                    });
                }
            }
            ProviderInput::CompetitorPrice {
                provider,
                class,
                price,
            } => {
                if class == self.cfg.class && provider != self.account() {
                    self.pricing.observe_competitor(now, provider, price);
                }
            }
            ProviderInput::Settlement(si) => {
                if si.terms.provider != self.account() {
                    return out;
                }
                self.ledger
                    .record(&si.payout, self.cfg.pricing.cost, si.outcome.units);
                // Feed the observed violation rate into pricing: λ·r̄.
                let paid_share = if self.ledger.revenue > 0 {
                    self.ledger.penalties as f64 / self.ledger.revenue as f64
                } else {
                    0.0
                };
                self.pricing.set_penalty_share(paid_share);
                if let Some(deal) = self.deals.remove(&si.contract) {
                    let d = match deal {
                        AnyDeal::Delivered(_) => {
                            match deal.apply(
                                now,
                                DealEvent::Verify(Box::new(si.cert.clone()), si.outcome),
                            ) {
                                Ok(d) => d,
                                Err(e) => *e.deal,
                            }
                        }
                        d => d,
                    };
                    let _ = d.apply(now, DealEvent::Settle(Box::new(si.payout.clone())));
                    // Settled deals are dropped: memory stays bounded by live work.
                }
                // A job still queued or running when settled (failed on our side).
                self.queue.retain(|c| *c != si.contract);
                if self.running.contains(&si.contract) {
                    self.free_slot(now, si.contract, &mut out);
                }
            }
            ProviderInput::Holds(h) => {
                self.holds = h;
                self.holds.sort_unstable();
                self.holds.dedup();
            }
            ProviderInput::StoreRoom(room) => self.store_room = room,
            ProviderInput::PrivacySpent(spends) => self.privacy.set_spent(spends),
        }
        out
    }

    fn on_proposal(&mut self, now: Timestamp, sp: Signed<Proposal>, out: &mut Vec<ProviderOutput>) {
        let pid = sp.id();
        let Ok(p) = open(&sp, &self.network, self.cfg.verify_signatures) else {
            self.stats.ignored += 1;
            return;
        };
        let Ok(spec) = open(&p.job, &self.network, self.cfg.verify_signatures) else {
            self.stats.ignored += 1;
            return;
        };
        if spec.requester != sp.signer || p.provider != self.account() {
            self.stats.ignored += 1;
            return;
        }
        if let Err(e) = p.validate(now).and_then(|()| spec.validate(now)) {
            self.reject(out, sp.signer, pid, RejectReason::Invalid(e.to_string()));
            return;
        }
        if self
            .replay
            .check(now, sp.signer, p.nonce, p.expires_at)
            .is_err()
        {
            self.stats.ignored += 1;
            return;
        }
        self.pricing.observe_demand(now, spec.max_price);
        if let Err(reason) = self.admit(now, &spec, p.price, &p.sla) {
            self.reject(out, sp.signer, pid, reason);
            return;
        }
        let terms = ContractTerms {
            network: self.network,
            job: p.job.id(),
            requester: spec.requester,
            provider: self.account(),
            price: p.price,
            max_units: spec.estimated_units,
            sla: p.sla,
            deadline: spec.deadline,
            created_at: now,
            spec,
        };
        let Ok(mut ms) = MultiSigned::new(&terms) else {
            return;
        };
        ms.add_signature(&self.identity, &self.network);
        let id = ms.body_hash();
        let expires = now.plus(self.cfg.answer_ttl);
        let requester = terms.requester;
        self.pending
            .insert(id, Deal::propose(now, id, terms, requester, expires));
        self.timers.schedule(out, expires, Timer::Pending(id));
        self.stats.accepted += 1;
        if let Some(s) = self.sign(&ProposalAnswer::Accept(ms)) {
            out.push(ProviderOutput::Send {
                to: requester,
                message: Message::Answer(s),
            });
        }
    }

    fn on_bid<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        sb: Signed<JobSpec>,
        rng: &mut R,
        out: &mut Vec<ProviderOutput>,
    ) {
        let job_id = sb.id();
        if self.bid_proposals.contains_key(&job_id) {
            return;
        }
        let Ok(spec) = open(&sb, &self.network, self.cfg.verify_signatures) else {
            self.stats.ignored += 1;
            return;
        };
        if spec.requester != sb.signer || spec.validate(now).is_err() {
            self.stats.ignored += 1;
            return;
        }
        self.pricing.observe_demand(now, spec.max_price);
        let price = self.pricing.price();
        if spec.max_price < price
            || self.cfg.sla.availability < spec.sla.min_availability
            || self.cfg.sla.penalty < spec.sla.min_penalty
            || self.admit(now, &spec, price, &self.cfg.sla).is_err()
        {
            return;
        }
        let expires = now.plus(self.cfg.answer_ttl).min(spec.expires_at);
        if expires <= now {
            return;
        }
        let proposal = Proposal {
            job: sb,
            provider: self.account(),
            offer: self.current_offer(),
            price,
            sla: self.cfg.sla,
            issued_at: now,
            expires_at: expires,
            nonce: rng.random(),
        };
        if let Some(s) = self.sign(&proposal) {
            self.bid_proposals.insert(job_id, expires);
            self.timers.schedule(out, expires, Timer::Pending(job_id));
            self.stats.bids_answered += 1;
            out.push(ProviderOutput::Send {
                to: spec.requester,
                message: Message::Proposal(s),
            });
        }
    }

    /// The requester accepted our proposal for its open bid: add our signature.
    fn on_answer(
        &mut self,
        now: Timestamp,
        sa: Signed<ProposalAnswer>,
        out: &mut Vec<ProviderOutput>,
    ) {
        let Ok(ProposalAnswer::Accept(mut ms)) =
            open(&sa, &self.network, self.cfg.verify_signatures)
        else {
            return;
        };
        let Ok(terms) = open_multi(&ms, &self.network, &[sa.signer], self.cfg.verify_signatures)
        else {
            self.stats.ignored += 1;
            return;
        };
        if terms.provider != self.account()
            || terms.requester != sa.signer
            || terms.network != self.network
            || self.bid_proposals.remove(&terms.job).is_none()
        {
            self.stats.ignored += 1;
            return;
        }
        if terms.price < self.pricing.accept_floor() || terms.deadline <= now {
            return;
        }
        ms.add_signature(&self.identity, &self.network);
        let id = ms.body_hash();
        out.push(ProviderOutput::Send {
            to: terms.requester,
            message: Message::Contract(ms.clone()),
        });
        let requester = terms.requester;
        let deal = Deal::propose(now, id, terms, requester, now).accept(now, ms);
        self.stats.accepted += 1;
        self.enqueue(now, AnyDeal::Accepted(deal), out);
    }

    fn on_contract(&mut self, now: Timestamp, c: Contract, out: &mut Vec<ProviderOutput>) {
        let id = c.body_hash();
        let Some(deal) = self.pending.remove(&id) else {
            self.stats.ignored += 1;
            return;
        };
        if open_multi(
            &c,
            &self.network,
            &[deal.terms.requester, self.account()],
            self.cfg.verify_signatures,
        )
        .is_err()
        {
            self.stats.ignored += 1;
            self.pending.insert(id, deal);
            return;
        }
        let deal = deal.accept(now, c);
        self.enqueue(now, AnyDeal::Accepted(deal), out);
    }

    /// A contract accepted before a restart: an accepted deal again, past the
    /// admission checks (it may overfill the queue; the provider signed it).
    fn on_resume(&mut self, now: Timestamp, c: Contract, out: &mut Vec<ProviderOutput>) {
        let id = c.body_hash();
        if self.pending.contains_key(&id) {
            // Our acceptance awaits the requester's signature, and here is the
            // contract both signed (from the ledger's escrow lock): as if it had
            // come.
            self.on_contract(now, c, out);
            return;
        }
        let known =
            self.deals.contains_key(&id) || self.queue.contains(&id) || self.running.contains(&id);
        let terms = match c.body_unverified() {
            Ok(t) if !known && t.network == self.network && t.provider == self.account() => t,
            _ => {
                self.stats.ignored += 1;
                return;
            }
        };
        if !signed_by_both(&c, &terms, &self.network, self.cfg.verify_signatures) {
            self.stats.ignored += 1;
            return;
        }
        // Our proposal for its open bid, if the engine made it again, is answered.
        self.bid_proposals.remove(&terms.job);
        // Accepted when it was signed (its history is for logs; `Finished` dates
        // the receipt's `accepted_at` from it).
        let at = terms.created_at.min(now);
        let requester = terms.requester;
        let deal = Deal::propose(at, id, terms, requester, at).accept(at, c);
        self.stats.resumed += 1;
        self.enqueue(now, AnyDeal::Accepted(deal), out);
    }

    fn enqueue(&mut self, now: Timestamp, deal: AnyDeal, out: &mut Vec<ProviderOutput>) {
        let id = deal.id();
        self.deals.insert(id, deal);
        self.queue.push_back(id);
        self.start_queued(now, out);
    }

    fn start_queued(&mut self, now: Timestamp, out: &mut Vec<ProviderOutput>) {
        while self.running.len() < usize::from(self.cfg.slots) {
            let Some(id) = self.queue.pop_front() else {
                break;
            };
            let Some(deal) = self.deals.remove(&id) else {
                continue;
            };
            match deal.apply(now, DealEvent::Start) {
                Ok(d) => {
                    let terms = Box::new(d.terms().clone());
                    self.deals.insert(id, d);
                    self.running.push(id);
                    out.push(ProviderOutput::Run {
                        contract: id,
                        terms,
                    });
                }
                Err(e) => {
                    let d = *e.deal;
                    self.deals.insert(id, d);
                }
            }
        }
    }

    fn free_slot(&mut self, now: Timestamp, id: Hash32, out: &mut Vec<ProviderOutput>) {
        self.running.retain(|c| *c != id);
        if let Some(d) = self.deals.get(&id)
            && d.phase().is_terminal()
        {
            self.deals.remove(&id);
        }
        self.start_queued(now, out);
    }

    /// Fire the timers due at `now`.
    pub fn handle_timeout<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        rng: &mut R,
    ) -> Vec<ProviderOutput> {
        let mut out = Vec::new();
        while let Some(t) = self.timers.pop_due(now) {
            match t {
                Timer::Refresh => self.publish_offer(now, rng, &mut out),
                Timer::Pending(id) => {
                    if let Some(d) = self.pending.remove(&id) {
                        let _ = d.expire(now);
                    }
                    self.bid_proposals.remove(&id);
                }
            }
        }
        out
    }
}
