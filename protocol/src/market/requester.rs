//! The requester side of the market.
//!
//! A [`RequesterEngine`] keeps an [`OrderBook`] of the offers it hears, and for
//! each job submitted:
//! - matches it ([`OrderBook::match_job`]) and proposes to the drawn provider;
//!   on a refusal (or no answer within `proposal_ttl`) it proposes to the next
//!   near-best, never twice to the same provider for the same job;
//! - when nothing fits, reports why, offer by offer ([`RequesterOutput::NoMatch`]),
//!   publishes the job as an open bid and keeps it open until filled or expired:
//!   it is matched again whenever a new offer that fits arrives, and providers
//!   may answer it with a priced proposal;
//! - once both have signed: locks the escrow, hands the contract to the oracles
//!   and waits for a receipt until `deadline + grace`, after which the deal is
//!   `Failed` (the provider vanished) and the committee's "not delivered" verdict
//!   refunds the escrow;
//! - follows the deal to `Settled` (or `Resolved` after a dispute) when the
//!   committee's settlement arrives, and books `U_r` ([`RequesterLedger`]).

use std::collections::HashMap;
use std::sync::Arc;

use rand::{Rng, RngExt};

use crate::accounting::RequesterLedger;
use crate::codec::Wire;
use crate::identity::{AccountId, Identity};
use crate::messages::{
    Contract, ContractTerms, Dispute, DisputeReason, JobSpec, Message, Offer, Proposal,
    ProposalAnswer, Receipt, RejectReason,
};
use crate::oracle::SettlementInstruction;
use crate::signed::{MultiSigned, Signed};
use crate::types::{Amount, DurationMs, Hash32, NetworkId, Timestamp};

use super::book::{BookConfig, Explanation, MatchConfig, MatchOutcome, OrderBook};
use super::lifecycle::{AnyDeal, Deal, DealEvent, FailReason, Phase};
use super::{Reputation, open, open_multi, signed_by_both};

/// How a requester behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RequesterConfig {
    pub book: BookConfig,
    pub matching: MatchConfig,
    /// How long a proposal waits for an answer.
    pub proposal_ttl: DurationMs,
    /// How long after the deadline a receipt is still awaited.
    pub grace: DurationMs,
    /// Most jobs open (unmatched bids) at once.
    pub max_open_bids: usize,
    /// Check signatures (turn off only in simulation; see `market::open`).
    pub verify_signatures: bool,
}

impl Default for RequesterConfig {
    fn default() -> Self {
        RequesterConfig {
            book: BookConfig::default(),
            matching: MatchConfig::default(),
            proposal_ttl: DurationMs::secs(30),
            grace: DurationMs::secs(60),
            max_open_bids: 1_000,
            verify_signatures: true,
        }
    }
}

/// What the driver hands the requester engine.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum RequesterInput {
    /// An offer heard on gossip.
    Offer(Signed<Offer>),
    /// An offer whose signature the driver checked (the simulator's fast path).
    /// The `Arc` lets a simulator share one offer among many requesters' books.
    VerifiedOffer {
        id: Hash32,
        offer: Arc<Offer>,
    },
    /// The user submits a job (the engine signs it).
    Submit(Box<JobSpec>),
    /// A provider's answer to our proposal.
    Answer(Signed<ProposalAnswer>),
    /// A provider's proposal for one of our open bids.
    Proposal(Signed<Proposal>),
    /// A provider completed a contract we accepted (open-bid path).
    Contract(Contract),
    Receipt(Signed<Receipt>),
    /// The escrow of a contract could not be locked.
    EscrowFailed {
        contract: Hash32,
    },
    Settlement(Box<SettlementInstruction>),
    /// A contract of ours, signed by both, whose escrow is locked, that this
    /// engine knew before a restart: follow it again (await its receipt until
    /// the deadline plus grace).
    Resume(Contract),
    /// Something matching depends on changed outside the book (a checkpoint
    /// made a provider's bond final): try every open bid again, quietly.
    Rematch,
    /// The user disputes a contract.
    Dispute {
        contract: Hash32,
        reason: DisputeReason,
    },
}

/// What the requester engine asks its driver to do (and tells its user).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum RequesterOutput {
    Publish(Message),
    Send {
        to: AccountId,
        message: Message,
    },
    ScheduleTimer {
        at: Timestamp,
    },
    /// Nothing fits `job` now: why, offer by offer. The bid stays open.
    NoMatch {
        job: Hash32,
        reasons: Vec<Explanation>,
        examined: usize,
    },
    /// Proposed `job` to `provider`.
    Proposed {
        job: Hash32,
        provider: AccountId,
    },
    /// `provider` refused our proposal for `job`, saying why (the next
    /// near-best is tried).
    Refused {
        job: Hash32,
        provider: AccountId,
        reason: RejectReason,
    },
    /// Write the escrow lock entry for this contract.
    LockEscrow {
        contract: Box<Contract>,
        amount: Amount,
    },
    Delivered {
        contract: Hash32,
        receipt: Box<Receipt>,
    },
    Failed {
        contract: Hash32,
        reason: FailReason,
    },
    Settled {
        contract: Hash32,
        phase: Phase,
        refund: Amount,
        paid: Amount,
    },
    /// An open bid expired unfilled.
    BidExpired {
        job: Hash32,
    },
}

impl crate::timers::ScheduleTimer for RequesterOutput {
    fn schedule_timer(at: Timestamp) -> Self {
        RequesterOutput::ScheduleTimer { at }
    }
}

#[derive(Debug)]
struct Job {
    signed: Signed<JobSpec>,
    spec: JobSpec,
    /// Providers that refused or did not answer.
    refused: Vec<AccountId>,
    /// The provider we are waiting on, and the proposal expiry.
    waiting: Option<(AccountId, Timestamp)>,
    /// The id of our proposal awaiting an answer.
    proposal: Option<Hash32>,
    /// The quality of the provider we are waiting on, when matched.
    quality: f64,
    open: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Proposal(Hash32),
    BidExpiry(Hash32),
    Deadline(Hash32),
}

/// The requester's market engine; see the module docs.
#[derive(Debug)]
pub struct RequesterEngine {
    identity: Identity,
    network: NetworkId,
    cfg: RequesterConfig,
    book: OrderBook,
    jobs: HashMap<Hash32, Job>,
    /// Our proposals awaiting an answer: proposal id → job id.
    proposals: HashMap<Hash32, Hash32>,
    deals: HashMap<Hash32, AnyDeal>,
    /// Contract id → (job id, quality of the provider when matched).
    contracts: HashMap<Hash32, (Hash32, f64)>,
    timers: crate::timers::Timers<Timer>,
    ledger: RequesterLedger,
    nonce: u64,
}

impl RequesterEngine {
    pub fn new(identity: Identity, network: NetworkId, cfg: RequesterConfig) -> Self {
        RequesterEngine {
            book: OrderBook::new(cfg.book),
            identity,
            network,
            cfg,
            jobs: HashMap::new(),
            proposals: HashMap::new(),
            deals: HashMap::new(),
            contracts: HashMap::new(),
            timers: crate::timers::Timers::default(),
            ledger: RequesterLedger::default(),
            nonce: 0,
        }
    }

    pub fn account(&self) -> AccountId {
        self.identity.account()
    }
    pub fn book(&self) -> &OrderBook {
        &self.book
    }
    pub fn book_mut(&mut self) -> &mut OrderBook {
        &mut self.book
    }
    /// `U_r` so far.
    pub fn ledger(&self) -> &RequesterLedger {
        &self.ledger
    }
    pub fn deal(&self, contract: &Hash32) -> Option<&AnyDeal> {
        self.deals.get(contract)
    }
    /// Every deal kept, in no particular order.
    pub fn deals(&self) -> impl Iterator<Item = &AnyDeal> {
        self.deals.values()
    }
    /// Jobs not yet under contract.
    pub fn open_jobs(&self) -> usize {
        self.jobs.len()
    }

    /// Whether an offer arriving now could lead to a match: some open job has no
    /// proposal out. When it cannot, handling an offer only updates the book (no
    /// output, no randomness drawn, no timer), so a simulator may hand offers to
    /// an idle requester later, in order and each with its arrival time, with the
    /// same result.
    pub fn awaits_offers(&self) -> bool {
        self.jobs.values().any(|j| j.open && j.waiting.is_none())
    }

    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.next()
    }

    fn sign<T: Wire>(&self, body: &T) -> Option<Signed<T>> {
        Signed::sign(&self.identity, &self.network, body).ok()
    }

    fn forget_proposal(&mut self, job: &Hash32) {
        if let Some(pid) = self.jobs.get_mut(job).and_then(|j| j.proposal.take()) {
            self.proposals.remove(&pid);
        }
    }

    /// Handle one input at `now`; `reputation` is the ledger's view of providers.
    pub fn handle<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        input: RequesterInput,
        reputation: &dyn Reputation,
        rng: &mut R,
    ) -> Vec<RequesterOutput> {
        let mut out = Vec::new();
        match input {
            RequesterInput::Offer(so) => {
                let inserted = if self.cfg.verify_signatures {
                    self.book.insert(now, &self.network, &so)
                } else {
                    match so.body_shared_unverified() {
                        Ok(o) if o.provider == so.signer => {
                            self.book.insert_verified(now, so.id(), o)
                        }
                        _ => Err(super::DropReason::BadSignature),
                    }
                };
                if let Ok(id) = inserted {
                    self.on_new_offer(now, id, reputation, rng, &mut out);
                }
            }
            RequesterInput::VerifiedOffer { id, offer } => {
                if let Ok(id) = self.book.insert_verified(now, id, offer) {
                    self.on_new_offer(now, id, reputation, rng, &mut out);
                }
            }
            RequesterInput::Submit(spec) => self.on_submit(now, *spec, reputation, rng, &mut out),
            RequesterInput::Rematch => {
                let mut open: Vec<Hash32> = self
                    .jobs
                    .iter()
                    .filter(|(_, j)| j.open && j.waiting.is_none())
                    .map(|(id, _)| *id)
                    .collect();
                // Hash order is not deterministic; the simulator needs the same run per seed.
                open.sort_unstable();
                for id in open {
                    self.try_match(now, id, reputation, rng, false, &mut out);
                }
            }
            RequesterInput::Answer(sa) => self.on_answer(now, sa, reputation, rng, &mut out),
            RequesterInput::Proposal(sp) => self.on_proposal(now, sp, reputation, &mut out),
            RequesterInput::Contract(c) => self.on_contract(now, c, &mut out),
            RequesterInput::Receipt(sr) => {
                let Ok(r) = open(&sr, &self.network, self.cfg.verify_signatures) else {
                    return out;
                };
                let Some(deal) = self.deals.remove(&r.contract) else {
                    return out;
                };
                if deal.terms().provider != sr.signer {
                    self.deals.insert(r.contract, deal);
                    return out;
                }
                match deal.apply(now, DealEvent::Deliver(Box::new(r.clone()))) {
                    Ok(d) => {
                        self.deals.insert(r.contract, d);
                        self.book.add_load(&r.provider, -1);
                        out.push(RequesterOutput::Delivered {
                            contract: r.contract,
                            receipt: Box::new(r),
                        });
                    }
                    Err(e) => {
                        let d = *e.deal;
                        self.deals.insert(r.contract, d);
                    }
                }
            }
            RequesterInput::EscrowFailed { contract } => {
                self.fail(now, contract, FailReason::EscrowFailed, &mut out);
            }
            RequesterInput::Settlement(si) => self.on_settlement(now, *si, &mut out),
            RequesterInput::Resume(c) => self.on_resume(now, c, &mut out),
            RequesterInput::Dispute { contract, reason } => {
                let Some(deal) = self.deals.remove(&contract) else {
                    return out;
                };
                let dispute = Dispute {
                    contract,
                    by: self.account(),
                    reason,
                    evidence: None,
                    raised_at: now,
                };
                match deal.apply(now, DealEvent::Dispute(Box::new(dispute.clone()))) {
                    Ok(d) => {
                        self.deals.insert(contract, d);
                        if let Some(s) = self.sign(&dispute) {
                            out.push(RequesterOutput::Publish(Message::Dispute(s)));
                        }
                    }
                    Err(e) => {
                        let d = *e.deal;
                        self.deals.insert(contract, d);
                    }
                }
            }
        }
        out
    }

    fn on_submit<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        mut spec: JobSpec,
        reputation: &dyn Reputation,
        rng: &mut R,
        out: &mut Vec<RequesterOutput>,
    ) {
        spec.requester = self.account();
        if spec.validate(now).is_err() || self.jobs.len() >= self.cfg.max_open_bids {
            return;
        }
        let Some(signed) = self.sign(&spec) else {
            return;
        };
        let id = signed.id();
        let expires = spec.expires_at;
        self.jobs.insert(
            id,
            Job {
                signed,
                spec,
                refused: Vec::new(),
                waiting: None,
                proposal: None,
                quality: 1.0,
                open: false,
            },
        );
        self.timers.schedule(out, expires, Timer::BidExpiry(id));
        self.try_match(now, id, reputation, rng, true, out);
    }

    /// Match job `id` and propose; if nothing fits, explain and open the bid.
    fn try_match<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        id: Hash32,
        reputation: &dyn Reputation,
        rng: &mut R,
        explain: bool,
        out: &mut Vec<RequesterOutput>,
    ) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        if job.waiting.is_some() {
            return;
        }
        let outcome = self.book.match_job(
            now,
            &job.spec,
            reputation,
            &self.cfg.matching,
            &job.refused,
            rng,
        );
        match outcome {
            MatchOutcome::Matched { chosen, .. } => {
                let proposal = Proposal {
                    job: job.signed.clone(),
                    provider: chosen.provider,
                    offer: Some(chosen.offer),
                    price: chosen.price,
                    sla: self
                        .book
                        .get(&chosen.offer)
                        .map(|e| e.offer.sla)
                        .unwrap_or_default_sla(),
                    issued_at: now,
                    expires_at: now.plus(self.cfg.proposal_ttl),
                    nonce: {
                        self.nonce = self.nonce.wrapping_add(1);
                        rng.random::<u64>() ^ self.nonce
                    },
                };
                let Some(sp) = self.sign(&proposal) else {
                    return;
                };
                let expires = proposal.expires_at;
                self.forget_proposal(&id);
                self.proposals.insert(sp.id(), id);
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.proposal = Some(sp.id());
                    job.waiting = Some((chosen.provider, expires));
                    job.quality = chosen.quality;
                }
                self.book.add_load(&chosen.provider, 1);
                self.timers.schedule(out, expires, Timer::Proposal(id));
                out.push(RequesterOutput::Send {
                    to: chosen.provider,
                    message: Message::Proposal(sp),
                });
                out.push(RequesterOutput::Proposed {
                    job: id,
                    provider: chosen.provider,
                });
            }
            MatchOutcome::NoMatch { reasons, examined } => {
                let publish = !job.open;
                let signed = job.signed.clone();
                if explain || publish {
                    out.push(RequesterOutput::NoMatch {
                        job: id,
                        reasons,
                        examined,
                    });
                }
                if publish {
                    if let Some(job) = self.jobs.get_mut(&id) {
                        job.open = true;
                    }
                    out.push(RequesterOutput::Publish(Message::Bid(signed)));
                }
            }
        }
    }

    /// A new offer: retry the open bids it could fill.
    fn on_new_offer<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        offer: Hash32,
        reputation: &dyn Reputation,
        rng: &mut R,
        out: &mut Vec<RequesterOutput>,
    ) {
        let Some(entry) = self.book.get(&offer) else {
            return;
        };
        let fits: Vec<Hash32> = self
            .jobs
            .iter()
            .filter(|(_, j)| {
                j.open && j.waiting.is_none() && !j.refused.contains(&entry.offer.provider)
            })
            .filter(|(_, j)| {
                OrderBook::assess(entry, &j.spec, now, reputation, &self.cfg.matching).is_ok()
            })
            .map(|(id, _)| *id)
            .collect();
        // Hash order is not deterministic; the simulator needs the same run per seed.
        let mut fits = fits;
        fits.sort_unstable();
        for id in fits {
            self.try_match(now, id, reputation, rng, false, out);
        }
    }

    fn on_answer<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        sa: Signed<ProposalAnswer>,
        reputation: &dyn Reputation,
        rng: &mut R,
        out: &mut Vec<RequesterOutput>,
    ) {
        let Ok(answer) = open(&sa, &self.network, self.cfg.verify_signatures) else {
            return;
        };
        match answer {
            ProposalAnswer::Reject { reason, proposal } => {
                let Some(job_id) = self.proposals.get(&proposal).copied() else {
                    return;
                };
                self.refused(now, job_id, sa.signer, Some(reason), reputation, rng, out);
            }
            ProposalAnswer::Accept(mut ms) => {
                let Ok(terms) =
                    open_multi(&ms, &self.network, &[sa.signer], self.cfg.verify_signatures)
                else {
                    return;
                };
                let Some(job) = self.jobs.get(&terms.job) else {
                    return;
                };
                let ok = job.waiting.is_some_and(|(p, _)| p == sa.signer)
                    && terms.provider == sa.signer
                    && terms.requester == self.account()
                    && terms.network == self.network
                    && terms.spec == job.spec
                    && terms.price <= job.spec.max_price
                    && terms.max_units == job.spec.estimated_units
                    && terms.deadline == job.spec.deadline;
                if !ok {
                    return;
                }
                ms.add_signature(&self.identity, &self.network);
                out.push(RequesterOutput::Send {
                    to: terms.provider,
                    message: Message::Contract(ms.clone()),
                });
                self.contracted(now, terms, ms, out);
            }
        }
    }

    /// `provider` refused (or did not answer) job `id`: try the next near-best.
    #[allow(clippy::too_many_arguments)]
    fn refused<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        id: Hash32,
        provider: AccountId,
        reason: Option<RejectReason>,
        reputation: &dyn Reputation,
        rng: &mut R,
        out: &mut Vec<RequesterOutput>,
    ) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if job.waiting.is_none_or(|(p, _)| p != provider) {
            return;
        }
        if let Some(RejectReason::NoCapacity { free_at } | RejectReason::QueueFull { free_at }) =
            reason
        {
            // It would refuse our next job too: pass it over until then.
            self.book.hold_off(now, &provider, free_at);
        }
        if let Some(reason) = reason {
            out.push(RequesterOutput::Refused {
                job: id,
                provider,
                reason,
            });
        }
        job.waiting = None;
        job.refused.push(provider);
        if let Some(pid) = job.proposal.take() {
            self.proposals.remove(&pid);
        }
        self.book.add_load(&provider, -1);
        self.try_match(now, id, reputation, rng, false, out);
    }

    /// A provider proposes for one of our open bids: accept if it fits.
    fn on_proposal(
        &mut self,
        now: Timestamp,
        sp: Signed<Proposal>,
        reputation: &dyn Reputation,
        out: &mut Vec<RequesterOutput>,
    ) {
        let Ok(p) = open(&sp, &self.network, self.cfg.verify_signatures) else {
            return;
        };
        let job_id = p.job.id();
        let Some(job) = self.jobs.get(&job_id) else {
            return;
        };
        if p.provider != sp.signer
            || job.waiting.is_some()
            || p.validate(now).is_err()
            || p.price > job.spec.max_price
            || p.sla.availability < job.spec.sla.min_availability
            || p.sla.penalty < job.spec.sla.min_penalty
            || job.refused.contains(&p.provider)
            || !p
                .price
                .cost(job.spec.estimated_units)
                .is_some_and(|escrow| reputation.bonded(&p.provider, escrow))
        {
            return;
        }
        let terms = ContractTerms {
            network: self.network,
            job: job_id,
            spec: job.spec.clone(),
            requester: self.account(),
            provider: p.provider,
            price: p.price,
            max_units: job.spec.estimated_units,
            sla: p.sla,
            deadline: job.spec.deadline,
            created_at: now,
        };
        let Ok(mut ms) = MultiSigned::new(&terms) else {
            return;
        };
        ms.add_signature(&self.identity, &self.network);
        let expires = now.plus(self.cfg.proposal_ttl);
        let quality = reputation.quality(&p.provider);
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.waiting = Some((p.provider, expires));
            job.quality = quality;
        }
        self.book.add_load(&p.provider, 1);
        self.timers.schedule(out, expires, Timer::Proposal(job_id));
        if let Some(s) = self.sign(&ProposalAnswer::Accept(ms)) {
            out.push(RequesterOutput::Send {
                to: p.provider,
                message: Message::Answer(s),
            });
        }
    }

    /// The provider completed a contract from our open bid.
    fn on_contract(&mut self, now: Timestamp, c: Contract, out: &mut Vec<RequesterOutput>) {
        let Ok(terms) = c.body_unverified() else {
            return;
        };
        let Some(job) = self.jobs.get(&terms.job) else {
            return;
        };
        if job.waiting.is_none_or(|(p, _)| p != terms.provider)
            || terms.requester != self.account()
            || terms.spec != job.spec
            || !signed_by_both(&c, &terms, &self.network, self.cfg.verify_signatures)
        {
            return;
        }
        self.contracted(now, terms, c, out);
    }

    /// A contract we had before a restart: running again, its receipt awaited
    /// until the deadline plus grace. The escrow is already locked, so nothing
    /// is written or published.
    fn on_resume(&mut self, now: Timestamp, c: Contract, out: &mut Vec<RequesterOutput>) {
        let id = c.body_hash();
        let Ok(terms) = c.body_unverified() else {
            return;
        };
        if self.deals.contains_key(&id)
            || terms.requester != self.account()
            || terms.network != self.network
            || !signed_by_both(&c, &terms, &self.network, self.cfg.verify_signatures)
        {
            return;
        }
        let (job, deadline, provider) = (terms.job, terms.deadline, terms.provider);
        let deal = Deal::propose(now, job, terms, provider, now)
            .accept(now, c)
            .start(now);
        self.deals.insert(id, AnyDeal::Running(deal));
        self.contracts.insert(id, (job, 1.0));
        self.timers
            .schedule(out, deadline.plus(self.cfg.grace), Timer::Deadline(id));
    }

    /// Both signed: lock the escrow, tell the oracles, wait for delivery.
    fn contracted(
        &mut self,
        now: Timestamp,
        terms: ContractTerms,
        contract: Contract,
        out: &mut Vec<RequesterOutput>,
    ) {
        self.forget_proposal(&terms.job);
        let Some(job) = self.jobs.remove(&terms.job) else {
            return;
        };
        let id = contract.body_hash();
        let amount = terms.escrow().unwrap_or(Amount::ZERO);
        let deadline = terms.deadline;
        let provider = terms.provider;
        let deal = Deal::propose(now, terms.job, terms, provider, job.spec.expires_at)
            .accept(now, contract.clone())
            .start(now);
        self.deals.insert(id, AnyDeal::Running(deal));
        self.contracts.insert(id, (job.signed.id(), job.quality));
        out.push(RequesterOutput::LockEscrow {
            contract: Box::new(contract.clone()),
            amount,
        });
        out.push(RequesterOutput::Publish(Message::Contract(contract)));
        self.timers
            .schedule(out, deadline.plus(self.cfg.grace), Timer::Deadline(id));
    }

    fn fail(
        &mut self,
        now: Timestamp,
        id: Hash32,
        reason: FailReason,
        out: &mut Vec<RequesterOutput>,
    ) {
        let Some(deal) = self.deals.remove(&id) else {
            return;
        };
        let provider = deal.terms().provider;
        match deal.apply(now, DealEvent::Fail(reason.clone())) {
            Ok(d) => {
                self.deals.insert(id, d);
                self.book.add_load(&provider, -1);
                out.push(RequesterOutput::Failed {
                    contract: id,
                    reason,
                });
            }
            Err(e) => {
                let d = *e.deal;
                self.deals.insert(id, d);
            }
        }
    }

    fn on_settlement(
        &mut self,
        now: Timestamp,
        si: SettlementInstruction,
        out: &mut Vec<RequesterOutput>,
    ) {
        let Some(deal) = self.deals.remove(&si.contract) else {
            return;
        };
        if deal.terms() != &si.terms {
            self.deals.insert(si.contract, deal);
            return;
        }
        let was = deal.phase();
        let applied = match deal {
            AnyDeal::Delivered(_) => deal
                .apply(
                    now,
                    DealEvent::Verify(Box::new(si.cert.clone()), si.outcome),
                )
                .and_then(|d| d.apply(now, DealEvent::Settle(Box::new(si.payout.clone())))),
            AnyDeal::Disputed(_) => deal.apply(
                now,
                DealEvent::Resolve(si.outcome, Box::new(si.payout.clone())),
            ),
            AnyDeal::Running(_) | AnyDeal::Accepted(_) => deal
                .apply(now, DealEvent::Fail(FailReason::ProviderVanished))
                .and_then(|d| d.apply(now, DealEvent::Settle(Box::new(si.payout.clone())))),
            d => d.apply(now, DealEvent::Settle(Box::new(si.payout.clone()))),
        };
        let d = match applied {
            Ok(d) => d,
            Err(e) => *e.deal,
        };
        if matches!(was, Phase::Running | Phase::Accepted) {
            self.book.add_load(&si.terms.provider, -1);
        }
        let quality = if si.outcome.delivered && si.outcome.result_ok {
            self.contracts.get(&si.contract).map_or(1.0, |(_, q)| *q)
        } else {
            0.0
        };
        let worth = si
            .terms
            .spec
            .max_price
            .cost(si.outcome.units)
            .unwrap_or(Amount::ZERO);
        let paid = si.payout.escrow.saturating_sub(si.payout.refund);
        self.ledger.record(quality, worth, paid);
        out.push(RequesterOutput::Settled {
            contract: si.contract,
            phase: d.phase(),
            refund: si.payout.refund,
            paid,
        });
        self.contracts.remove(&si.contract);
        self.deals.insert(si.contract, d);
    }

    /// Forget deals that ended (call now and then to bound memory); returns them.
    pub fn drain_finished(&mut self) -> Vec<AnyDeal> {
        let done: Vec<Hash32> = self
            .deals
            .iter()
            .filter(|(_, d)| {
                d.phase().is_terminal()
                    && !matches!(d, AnyDeal::Failed(f) if f.state.refund.is_none())
            })
            .map(|(id, _)| *id)
            .collect();
        let mut done = done;
        done.sort_unstable();
        done.into_iter()
            .filter_map(|id| self.deals.remove(&id))
            .collect()
    }

    /// Fire the timers due at `now`.
    pub fn handle_timeout<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        reputation: &dyn Reputation,
        rng: &mut R,
    ) -> Vec<RequesterOutput> {
        let mut out = Vec::new();
        while let Some(t) = self.timers.pop_due(now) {
            match t {
                Timer::Proposal(id) => {
                    let waiting = self.jobs.get(&id).and_then(|j| j.waiting);
                    if let Some((p, exp)) = waiting
                        && exp <= now
                    {
                        self.refused(now, id, p, None, reputation, rng, &mut out);
                    }
                }
                Timer::BidExpiry(id) => {
                    self.forget_proposal(&id);
                    if let Some(job) = self.jobs.remove(&id) {
                        if let Some((p, _)) = job.waiting {
                            self.book.add_load(&p, -1);
                        }
                        out.push(RequesterOutput::BidExpired { job: id });
                    }
                }
                Timer::Deadline(id) => {
                    if self
                        .deals
                        .get(&id)
                        .is_some_and(|d| matches!(d.phase(), Phase::Running | Phase::Accepted))
                    {
                        self.fail(now, id, FailReason::ProviderVanished, &mut out);
                    }
                }
            }
        }
        self.book.prune(now);
        out
    }
}

trait OrDefaultSla {
    fn unwrap_or_default_sla(self) -> crate::messages::SlaTerms;
}
impl OrDefaultSla for Option<crate::messages::SlaTerms> {
    fn unwrap_or_default_sla(self) -> crate::messages::SlaTerms {
        self.unwrap_or(crate::messages::SlaTerms {
            deadline_slack: DurationMs(0),
            availability: crate::types::Bps(0),
            penalty: crate::types::Bps(0),
            exact: true,
        })
    }
}
