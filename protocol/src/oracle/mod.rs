//! The oracle engine: one member of the epoch's committee.
//!
//! ## Order of events
//!
//! 1. [`OracleInput::Epoch`] names the epoch, its committee and a beacon (the
//!    previous checkpoint's hash).
//! 2. [`OracleInput::Contract`]: a signed contract to watch. The engine probes the
//!    provider every `probe_every` while the work runs ([`OracleOutput::Send`] of a
//!    [`Probe`]) and sets a timer at `deadline + grace`.
//! 3. [`OracleInput::Receipt`]: the provider's signed receipt. The engine decides
//!    whether to verify the result: always when the contract is disputed, otherwise
//!    for a sample of share `verify_share`, drawn from `hash(beacon, contract,
//!    result)` so that every member samples the same contracts (a member checking
//!    alone could not outvote the others) and the provider cannot know the draw
//!    before its epoch's beacon. The check is done by [`ResultChecker`] (the
//!    `compute` crate re-executes a sample); a checker may answer later
//!    ([`CheckResult::Pending`], then [`OracleInput::CheckDone`]).
//! 4. After `dispute_window` (so that a party may still force a check), the engine
//!    signs its [`Verdict`] and publishes it. No receipt by `deadline + grace`: the
//!    verdict is "not delivered", which refunds the requester.
//! 5. [`OracleInput::Verdict`]s of the committee (its own included) are aggregated
//!    ([`aggregate`]); ⌈2k/3⌉ matching ones yield an [`OracleOutput::Settle`].
//!    Verdicts of a committee this oracle is not on are dropped on arrival.
//!    A contract is judged by the committee of the epoch it started in, however
//!    many epochs later its deadline falls: the engine pins that committee in the
//!    aggregator while it watches the contract.
//! 6. [`OracleInput::Watch`] hands the engine a contract with the epoch and
//!    committee it is judged by (the epoch its escrow was locked in), whatever
//!    the current epoch is: how a driver has members watch what the ledger
//!    escrows, and, after a restart, what a member watched before
//!    ([`OracleEngine::watch_epoch`] names those to persist) with the receipt
//!    and its own verdict if it had them. The engine watches it from step 2.
//!
//! ## The SLA model
//!
//! With deadline `D`, the receipt's signed finish time `f` and the time `r` it
//! reached this oracle, delivery counts at `t = max(f, r − delivery_tolerance)`
//! (the provider cannot date its work back by more than the gossip tolerance, and
//! honest receipts give every member the same `t`). Violations `R`:
//! - lateness: `⌈(t − D) / late_unit⌉` when `t > D`;
//! - availability: one if at least `min_probes` probes were sent and the share
//!   answered is below the promised availability;
//! - latency: one if the mean probe round-trip exceeds `max_latency`.
//!
//! `sla_ok` is `R = 0`. The units accepted are the receipt's, capped at the
//! contract's maximum. A wrong result pays the provider nothing
//! ([`crate::settlement::payout`]).

pub mod aggregate;

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::{Rng, RngExt};

pub use aggregate::{Aggregator, SettlementInstruction, VerdictError};

use crate::codec::Wire;
use crate::identity::{AccountId, Identity};
use crate::market::{open, signed_by_both};
use crate::messages::{
    Contract, ContractTerms, Dispute, Message, Probe, ProbeReply, Receipt, Verdict, Withdrawal,
};
use crate::signed::Signed;
use crate::types::{Bps, ComputeUnits, DurationMs, Hash32, NetworkId, Timestamp};

/// Most receipts kept while their contract has not arrived yet.
pub const EARLY_RECEIPTS: usize = 1_024;

/// What a result check says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckResult {
    Correct,
    Wrong,
    /// The check runs elsewhere; its answer comes as [`OracleInput::CheckDone`].
    Pending,
}

/// Result verification (re-execution of a sample), done by the `compute` crate.
pub trait ResultChecker {
    fn check(&mut self, terms: &ContractTerms, receipt: &Receipt) -> CheckResult;
}

/// A checker that defers every check to the driver ([`OracleOutput::Check`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct DeferredChecker;

impl ResultChecker for DeferredChecker {
    fn check(&mut self, _: &ContractTerms, _: &Receipt) -> CheckResult {
        CheckResult::Pending
    }
}

impl<F: FnMut(&ContractTerms, &Receipt) -> CheckResult> ResultChecker for F {
    fn check(&mut self, terms: &ContractTerms, receipt: &Receipt) -> CheckResult {
        self(terms, receipt)
    }
}

/// Parameters of an oracle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OracleConfig {
    /// The committee's fee, a share of the escrow, split among the quorum.
    pub fee: Bps,
    /// How long after the deadline a receipt is still awaited.
    pub grace: DurationMs,
    /// How long after a receipt the verdict waits for a dispute.
    pub dispute_window: DurationMs,
    /// Share of undisputed receipts whose result is re-checked.
    pub verify_share: Bps,
    pub probe_every: DurationMs,
    pub probe_timeout: DurationMs,
    pub max_latency: DurationMs,
    pub min_probes: u32,
    pub late_unit: DurationMs,
    pub delivery_tolerance: DurationMs,
    /// How long a member holding a quorum waits for the remaining verdicts before
    /// settling (see [`aggregate`]).
    pub quorum_wait: DurationMs,
    /// Most contracts watched at once (new ones beyond are ignored and counted).
    pub max_contracts: usize,
    /// Check signatures (turn off only in simulation; see `market::open`).
    pub verify_signatures: bool,
}

impl Default for OracleConfig {
    fn default() -> Self {
        OracleConfig {
            fee: Bps(100),
            grace: DurationMs::secs(60),
            dispute_window: DurationMs::secs(30),
            verify_share: Bps(1_000),
            probe_every: DurationMs::secs(60),
            probe_timeout: DurationMs::secs(10),
            max_latency: DurationMs::secs(2),
            min_probes: 3,
            late_unit: DurationMs::secs(60),
            delivery_tolerance: DurationMs::secs(30),
            quorum_wait: DurationMs::secs(10),
            max_contracts: 100_000,
            verify_signatures: true,
        }
    }
}

/// What the driver hands the oracle engine.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum OracleInput {
    Epoch {
        epoch: u64,
        committee: Vec<AccountId>,
        beacon: Hash32,
    },
    Contract(Contract),
    /// A contract to watch under the committee of `epoch` (the epoch its escrow
    /// was locked in): how a member takes up a contract whose escrow the ledger
    /// holds, and, after a restart, one it watched before. `receipt` if one had
    /// come,
    /// with when it reached this member (lateness is judged from that, as it was
    /// before the restart); `verdict`, this member's own, if it had signed one:
    /// it is counted and published again, never signed anew (a second, different
    /// verdict would be an equivocation). Ignored unless this member is on that
    /// committee and the contract is one it would watch (signed by both
    /// parties, not settled, not watched, capacity left). The committee is
    /// learnt for `epoch` if the engine does not know it; the current epoch
    /// stays as it is.
    Watch {
        contract: Contract,
        epoch: u64,
        committee: Vec<AccountId>,
        receipt: Option<Box<(Signed<Receipt>, Timestamp)>>,
        verdict: Option<Box<Signed<Verdict>>>,
    },
    /// The ledger finalized a watched contract's escrow lock in `epoch`, not
    /// the epoch it was watched under (the lock stayed pending across a
    /// checkpoint): judge it for that epoch's `committee`, signing again a
    /// verdict already signed for the old one.
    Rebind {
        contract: Hash32,
        epoch: u64,
        committee: Vec<AccountId>,
    },
    Receipt(Signed<Receipt>),
    ProbeReply(Signed<ProbeReply>),
    Dispute(Signed<Dispute>),
    /// The contract's provider gave it up before delivering.
    Withdrawal(Signed<Withdrawal>),
    Verdict(Signed<Verdict>),
    CheckDone {
        contract: Hash32,
        correct: bool,
    },
}

/// What the oracle engine asks its driver to do.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum OracleOutput {
    Send {
        to: AccountId,
        message: Message,
    },
    /// Gossip (verdicts go to the committee topic).
    Publish(Message),
    ScheduleTimer {
        at: Timestamp,
    },
    /// Run this check, then feed [`OracleInput::CheckDone`].
    Check {
        contract: Hash32,
        terms: Box<ContractTerms>,
        receipt: Box<Receipt>,
    },
    /// A quorum settled a contract: write the settlement entry.
    Settle(Box<SettlementInstruction>),
    /// Every member judged the contract and no outcome reached a quorum. The
    /// escrow stays locked; the node reports it (the next epoch's committee may
    /// judge it again).
    NoQuorum {
        contract: Hash32,
    },
}

impl crate::timers::ScheduleTimer for OracleOutput {
    fn schedule_timer(at: Timestamp) -> Self {
        OracleOutput::ScheduleTimer { at }
    }
}

/// Counters of what the oracle did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OracleStats {
    pub contracts: u64,
    /// Of `contracts`, those watched again after a restart.
    pub resumed: u64,
    pub verdicts: u64,
    pub checks: u64,
    pub wrong_results: u64,
    pub not_delivered: u64,
    pub disputes: u64,
    pub late_disputes: u64,
    pub probes_sent: u64,
    pub ignored: u64,
    pub settlements: u64,
    /// Contracts every member judged without a quorum.
    pub no_quorum: u64,
    /// Verdicts refused because their epoch's committee is not known (also
    /// counted in `ignored`).
    pub unknown_epoch: u64,
    /// Verdicts of a committee this oracle is not on (also counted in
    /// `ignored`).
    pub not_our_committee: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    NotNeeded,
    Pending,
    Done(bool),
}

#[derive(Debug)]
struct Watch {
    terms: ContractTerms,
    /// The epoch whose committee (with us in it) judges this contract.
    epoch: u64,
    receipt: Option<(Receipt, Timestamp)>,
    probes_sent: u32,
    probes_answered: u32,
    latency_sum: u64,
    outstanding: Vec<(Hash32, Timestamp)>,
    disputed: bool,
    check: Check,
    verdict_due: Option<Timestamp>,
    verdict_sent: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Probe(Hash32),
    Deadline(Hash32),
    Verdict(Hash32),
    Settle(Hash32),
}

/// One committee member; see the module docs.
#[derive(Debug)]
pub struct OracleEngine<C> {
    identity: Identity,
    network: NetworkId,
    cfg: OracleConfig,
    checker: C,
    epoch: u64,
    beacon: Hash32,
    member: bool,
    watches: HashMap<Hash32, Watch>,
    /// How many watches ended (see [`OracleEngine::watches_ended`]).
    ended: u64,
    timers: crate::timers::Timers<Timer>,
    /// Receipts that came before their contract (at most [`EARLY_RECEIPTS`]).
    early: HashMap<Hash32, (Signed<Receipt>, Timestamp)>,
    /// Contracts with a `Settle` timer pending.
    settle_timers: HashSet<Hash32>,
    aggregator: Aggregator,
    stats: OracleStats,
    /// Probes since the driver last took the tally, by provider.
    tally: BTreeMap<AccountId, ProbeTally>,
}

/// What this member's probes of one provider found, since the driver last
/// took the tally ([`OracleEngine::take_probe_tally`]): what an SLA record
/// reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeTally {
    pub sent: u32,
    pub answered: u32,
    pub latency_ms_sum: u64,
}

impl<C: ResultChecker> OracleEngine<C> {
    pub fn new(identity: Identity, network: NetworkId, cfg: OracleConfig, checker: C) -> Self {
        OracleEngine {
            aggregator: {
                let mut a = Aggregator::new(network, cfg.fee, cfg.max_contracts);
                a.set_verify_signatures(cfg.verify_signatures);
                a
            },
            identity,
            network,
            cfg,
            checker,
            epoch: 0,
            beacon: Hash32::default(),
            member: false,
            watches: HashMap::new(),
            ended: 0,
            timers: crate::timers::Timers::default(),
            settle_timers: HashSet::new(),
            early: HashMap::new(),
            stats: OracleStats::default(),
            tally: BTreeMap::new(),
        }
    }

    pub fn account(&self) -> AccountId {
        self.identity.account()
    }
    pub fn stats(&self) -> &OracleStats {
        &self.stats
    }
    pub fn checker_mut(&mut self) -> &mut C {
        &mut self.checker
    }
    /// Take what the probes found since the last call, by provider (a driver
    /// writes them into SLA records once an epoch).
    pub fn take_probe_tally(&mut self) -> BTreeMap<AccountId, ProbeTally> {
        std::mem::take(&mut self.tally)
    }
    /// Contracts watched now.
    pub fn watching(&self) -> usize {
        self.watches.len()
    }
    /// The epoch whose committee judges `contract`, while this member watches it
    /// (what a driver persists to [`OracleInput::Watch`] it after a restart).
    pub fn watch_epoch(&self, contract: &Hash32) -> Option<u64> {
        self.watches.get(contract).map(|w| w.epoch)
    }

    /// How many watches ended so far (settled, or given up): a driver that
    /// mirrors the watches prunes its copy only when this moved.
    pub fn watches_ended(&self) -> u64 {
        self.ended
    }

    /// Whether this member's aggregator settled `contract`.
    pub fn is_settled(&self, contract: &Hash32) -> bool {
        self.aggregator.is_settled(contract)
    }

    /// A settlement of `contract` this engine made did not take in the ledger
    /// (its certificate's epoch is not the lock's, as it turned out once the
    /// lock was final): forget it, so that a new watch judges it again.
    pub fn unsettle(&mut self, contract: &Hash32) {
        self.unwatch(contract);
        self.aggregator.unsettle(contract);
    }

    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.next()
    }

    fn sign<T: Wire>(&self, body: &T) -> Option<Signed<T>> {
        Signed::sign(&self.identity, &self.network, body).ok()
    }

    /// Whether `contract` is in the verification sample (see the module docs).
    pub fn sampled(&self, contract: &Hash32, result: &Hash32) -> bool {
        let mut h = blake3::Hasher::new();
        h.update(b"cloudchain/v1/verify-sample");
        h.update(&self.beacon.0);
        h.update(&contract.0);
        h.update(&result.0);
        let d = h.finalize();
        let x = u16::from_le_bytes([d.as_bytes()[0], d.as_bytes()[1]]) % 10_000;
        x < self.cfg.verify_share.0
    }

    /// Handle one input at `now`.
    pub fn handle<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        input: OracleInput,
        rng: &mut R,
    ) -> Vec<OracleOutput> {
        let mut out = Vec::new();
        match input {
            OracleInput::Epoch {
                epoch,
                committee,
                beacon,
            } => {
                self.member = committee.contains(&self.account());
                self.epoch = epoch;
                self.beacon = beacon;
                self.aggregator.set_committee(epoch, committee);
            }
            OracleInput::Contract(c) => self.on_contract(now, c, rng, &mut out),
            OracleInput::Watch {
                contract,
                epoch,
                committee,
                receipt,
                verdict,
            } => {
                // The aggregator's committee for `epoch`, if it has one, is the one
                // our verdict will be counted against.
                let member = self
                    .aggregator
                    .committee_at(epoch)
                    .unwrap_or(&committee)
                    .contains(&self.account());
                let Some((id, terms)) = self.admit(&contract, member) else {
                    return out;
                };
                self.aggregator.learn_committee(epoch, committee);
                self.stats.resumed += 1;
                self.watch(now, id, terms, epoch, rng, &mut out);
                if let Some(r) = receipt
                    && self.watches.contains_key(&id)
                {
                    let (sr, at) = *r;
                    self.on_receipt(at.min(now), sr, &mut out);
                }
                if let Some(sv) = verdict {
                    self.resume_verdict(now, id, epoch, *sv, &mut out);
                }
            }
            OracleInput::Rebind {
                contract,
                epoch,
                committee,
            } => self.rebind(now, contract, epoch, committee, &mut out),
            OracleInput::Receipt(sr) => self.on_receipt(now, sr, &mut out),
            OracleInput::ProbeReply(sp) => {
                let Some(r) = self.open_or_ignore(&sp) else {
                    return out;
                };
                for w in self.watches.values_mut() {
                    if w.terms.provider != r.provider || sp.signer != r.provider {
                        continue;
                    }
                    if let Some(k) = w.outstanding.iter().position(|(id, _)| *id == r.probe) {
                        let (_, sent) = w.outstanding.swap_remove(k);
                        if now.since(sent) <= self.cfg.probe_timeout {
                            w.probes_answered += 1;
                            w.latency_sum += now.since(sent).0;
                            let t = self.tally.entry(r.provider).or_default();
                            t.answered = t.answered.saturating_add(1);
                            t.latency_ms_sum = t.latency_ms_sum.saturating_add(now.since(sent).0);
                        }
                    }
                }
            }
            OracleInput::Dispute(sd) => self.on_dispute(now, sd, &mut out),
            OracleInput::Withdrawal(sw) => self.on_withdrawal(now, sw, &mut out),
            OracleInput::Verdict(sv) => self.on_verdict(now, sv, &mut out),
            OracleInput::CheckDone { contract, correct } => {
                if let Some(w) = self.watches.get_mut(&contract)
                    && w.check == Check::Pending
                {
                    w.check = Check::Done(correct);
                    if !correct {
                        self.stats.wrong_results += 1;
                    }
                    if w.verdict_due.is_some_and(|t| t <= now) {
                        self.issue_verdict(contract, now, &mut out);
                    }
                }
            }
        }
        out
    }

    fn on_contract<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        c: Contract,
        rng: &mut R,
        out: &mut Vec<OracleOutput>,
    ) {
        // Only the committee of the epoch a contract starts in watches it.
        if let Some((id, terms)) = self.admit(&c, self.member) {
            self.watch(now, id, terms, self.epoch, rng, out);
        }
    }

    /// The id and terms of a contract that this member, on its committee if
    /// `member`, is to watch; `None` if not.
    fn admit(&mut self, c: &Contract, member: bool) -> Option<(Hash32, ContractTerms)> {
        let id = c.body_hash();
        if self.watches.contains_key(&id) || self.aggregator.is_settled(&id) {
            return None;
        }
        let Ok(terms) = c.body_unverified() else {
            self.stats.ignored += 1;
            return None;
        };
        // Membership first: it spares non-members the signature checks.
        if !member
            || terms.network != self.network
            || !signed_by_both(c, &terms, &self.network, self.cfg.verify_signatures)
            || self.watches.len() >= self.cfg.max_contracts
        {
            self.stats.ignored += 1;
            return None;
        }
        Some((id, terms))
    }

    /// Watch contract `id` for the committee of `epoch`: probe its provider and
    /// wait for its receipt until the deadline plus grace.
    fn watch<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        id: Hash32,
        terms: ContractTerms,
        epoch: u64,
        rng: &mut R,
        out: &mut Vec<OracleOutput>,
    ) {
        self.stats.contracts += 1;
        let deadline = terms.deadline;
        if let Some(si) = self.aggregator.set_terms(id, terms.clone()) {
            // Every verdict was in already: nothing left to watch.
            self.early.remove(&id);
            self.settled(si, out);
            return;
        }
        // Its verdicts, however late, are counted against this epoch's committee.
        self.aggregator.pin_epoch(epoch);
        if let Some(si) = self.aggregator.bind(id, epoch) {
            self.early.remove(&id);
            self.aggregator.unpin_epoch(epoch);
            self.settled(si, out);
            return;
        }
        self.watches.insert(
            id,
            Watch {
                terms,
                epoch,
                receipt: None,
                probes_sent: 0,
                probes_answered: 0,
                latency_sum: 0,
                outstanding: Vec::new(),
                disputed: false,
                check: Check::NotNeeded,
                verdict_due: None,
                verdict_sent: false,
            },
        );
        // Members probe at jittered times so they do not hit the provider at once.
        let jitter = rng.random_range(0..self.cfg.probe_every.0.max(1));
        self.timers
            .schedule(out, now.plus(DurationMs(jitter)), Timer::Probe(id));
        self.timers
            .schedule(out, deadline.plus(self.cfg.grace), Timer::Deadline(id));
        if let Some((sr, at)) = self.early.remove(&id) {
            self.on_receipt(at, sr, out);
        }
    }

    /// See [`OracleInput::Rebind`].
    fn rebind(
        &mut self,
        now: Timestamp,
        id: Hash32,
        epoch: u64,
        committee: Vec<AccountId>,
        out: &mut Vec<OracleOutput>,
    ) {
        if !committee.contains(&self.account()) {
            return;
        }
        let Some(w) = self.watches.get_mut(&id) else {
            return;
        };
        if w.epoch == epoch {
            return;
        }
        w.epoch = epoch;
        let resign = std::mem::take(&mut w.verdict_sent);
        self.aggregator.learn_committee(epoch, committee);
        self.aggregator.pin_epoch(epoch);
        // Verdicts other members sent for the lock's epoch before this one
        // rebound count now.
        if let Some(si) = self.aggregator.bind(id, epoch) {
            return self.settled(si, out);
        }
        if resign {
            self.issue_verdict(id, now, out);
        }
    }

    fn on_receipt(&mut self, now: Timestamp, sr: Signed<Receipt>, out: &mut Vec<OracleOutput>) {
        let Some(r) = self.open_or_ignore(&sr) else {
            return;
        };
        let id = r.contract;
        let Some(w) = self.watches.get_mut(&id) else {
            // Gossip may bring the receipt before the contract: keep it a while.
            if self.early.len() >= EARLY_RECEIPTS {
                let keep = self.cfg.grace.max(self.cfg.dispute_window);
                self.early.retain(|_, (_, at)| now.since(*at) <= keep);
            }
            if self.aggregator.is_settled(&id) || self.early.len() >= EARLY_RECEIPTS {
                self.stats.ignored += 1;
            } else {
                self.early.insert(id, (sr, now));
            }
            return;
        };
        if w.receipt.is_some()
            || w.verdict_sent
            || sr.signer != w.terms.provider
            || r.provider != w.terms.provider
        {
            self.stats.ignored += 1;
            return;
        }
        w.receipt = Some((r, now));
        let due = now.plus(self.cfg.dispute_window);
        w.verdict_due = Some(due);
        self.maybe_check(id, false, out);
        self.timers.schedule(out, due, Timer::Verdict(id));
    }

    /// Start the result check if one is needed and not yet done.
    fn maybe_check(&mut self, id: Hash32, forced: bool, out: &mut Vec<OracleOutput>) {
        let sampled = {
            let Some(w) = self.watches.get(&id) else {
                return;
            };
            let Some((r, _)) = &w.receipt else {
                return;
            };
            if w.check != Check::NotNeeded {
                return;
            }
            forced || w.disputed || self.sampled(&id, &r.result.hash)
        };
        if !sampled {
            return;
        }
        let Some(w) = self.watches.get_mut(&id) else {
            return;
        };
        let Some((r, _)) = &w.receipt else {
            return;
        };
        self.stats.checks += 1;
        w.check = match self.checker.check(&w.terms, r) {
            CheckResult::Correct => Check::Done(true),
            CheckResult::Wrong => {
                self.stats.wrong_results += 1;
                Check::Done(false)
            }
            CheckResult::Pending => {
                out.push(OracleOutput::Check {
                    contract: id,
                    terms: Box::new(w.terms.clone()),
                    receipt: Box::new(r.clone()),
                });
                Check::Pending
            }
        };
    }

    /// The provider gave the contract up before delivering: judge it not
    /// delivered now, rather than at the deadline. Only the contract's
    /// provider can, and only before a receipt.
    fn on_withdrawal(
        &mut self,
        now: Timestamp,
        sw: Signed<Withdrawal>,
        out: &mut Vec<OracleOutput>,
    ) {
        let Some(wd) = self.open_or_ignore(&sw) else {
            return;
        };
        let Some(w) = self.watches.get(&wd.contract) else {
            self.stats.ignored += 1;
            return;
        };
        if w.receipt.is_some()
            || w.verdict_sent
            || sw.signer != w.terms.provider
            || wd.provider != w.terms.provider
            || wd.validate().is_err()
        {
            self.stats.ignored += 1;
            return;
        }
        self.issue_verdict(wd.contract, now, out);
    }

    /// A signed message's body, if it opens here; else it is counted as
    /// ignored.
    fn open_or_ignore<T: crate::codec::Wire>(&mut self, s: &Signed<T>) -> Option<T> {
        let body = open(s, &self.network, self.cfg.verify_signatures).ok();
        if body.is_none() {
            self.stats.ignored += 1;
        }
        body
    }

    fn on_dispute(&mut self, now: Timestamp, sd: Signed<Dispute>, out: &mut Vec<OracleOutput>) {
        let Some(d) = self.open_or_ignore(&sd) else {
            return;
        };
        let Some(w) = self.watches.get_mut(&d.contract) else {
            self.stats.ignored += 1;
            return;
        };
        if d.by != sd.signer || (d.by != w.terms.requester && d.by != w.terms.provider) {
            self.stats.ignored += 1;
            return;
        }
        if w.verdict_sent {
            self.stats.late_disputes += 1;
            return;
        }
        self.stats.disputes += 1;
        w.disputed = true;
        let _ = now;
        self.maybe_check(d.contract, true, out);
    }

    fn on_verdict(&mut self, now: Timestamp, sv: Signed<Verdict>, out: &mut Vec<OracleOutput>) {
        let body = sv.body_unverified();
        // A committee we are not on can never count us in its quorum, nor
        // would we write its settlement: its verdicts are not kept (gossip
        // brings every verdict to every oracle).
        if let Ok(v) = &body
            && let Some(c) = self.aggregator.committee_at(v.epoch)
            && !c.contains(&self.account())
        {
            self.stats.ignored += 1;
            self.stats.not_our_committee += 1;
            return;
        }
        let contract = body.map(|v| v.contract);
        match self.aggregator.add(sv) {
            Ok(Some(si)) => self.settled(si, out),
            Ok(None) => {
                if let Ok(c) = contract {
                    self.await_rest(now, c, out);
                }
            }
            Err(e) => {
                self.stats.ignored += 1;
                if let VerdictError::UnknownEpoch(_) = e {
                    self.stats.unknown_epoch += 1;
                }
            }
        }
    }

    /// Stop watching `contract`, releasing its epoch's committee.
    fn unwatch(&mut self, contract: &Hash32) {
        if let Some(w) = self.watches.remove(contract) {
            self.ended += 1;
            self.aggregator.unpin_epoch(w.epoch);
        }
    }

    /// A quorum is in but not every verdict: settle after `quorum_wait` at the latest.
    fn await_rest(&mut self, now: Timestamp, contract: Hash32, out: &mut Vec<OracleOutput>) {
        if self.aggregator.is_deadlocked(&contract) {
            self.stats.no_quorum += 1;
            out.push(OracleOutput::NoQuorum { contract });
            return;
        }
        if self.aggregator.has_quorum(&contract) && self.settle_timers.insert(contract) {
            self.timers
                .schedule(out, now.plus(self.cfg.quorum_wait), Timer::Settle(contract));
        }
    }

    fn settled(&mut self, si: SettlementInstruction, out: &mut Vec<OracleOutput>) {
        self.stats.settlements += 1;
        // The contract is done, whether or not our own verdict was in.
        self.unwatch(&si.contract);
        out.push(OracleOutput::Settle(Box::new(si)));
    }

    /// The verdict this member reaches on a watched contract now.
    fn judge(&self, w: &Watch) -> (bool, u32, bool, ComputeUnits) {
        let Some((r, received)) = &w.receipt else {
            return (false, 0, false, ComputeUnits::default());
        };
        let mut violations = 0u32;
        let t = r.timings.finished_at.max(Timestamp(
            received.0.saturating_sub(self.cfg.delivery_tolerance.0),
        ));
        if t > w.terms.deadline {
            let late = t.since(w.terms.deadline).0;
            violations +=
                u32::try_from(late.div_ceil(self.cfg.late_unit.0.max(1))).unwrap_or(u32::MAX);
        }
        if w.probes_sent >= self.cfg.min_probes.max(1) {
            let share = u64::from(w.probes_answered) * 10_000 / u64::from(w.probes_sent);
            if share < u64::from(w.terms.sla.availability.0) {
                violations = violations.saturating_add(1);
            }
        }
        if w.probes_answered > 0
            && w.latency_sum / u64::from(w.probes_answered) > self.cfg.max_latency.0
        {
            violations = violations.saturating_add(1);
        }
        let result_ok = !matches!(w.check, Check::Done(false));
        let units = ComputeUnits::from_milli(r.units_used.milli.min(w.terms.max_units.milli));
        (true, violations, result_ok, units)
    }

    /// Our own verdict on `id`, signed before a restart: count it and publish
    /// it again (the others may not have it), and never sign another.
    fn resume_verdict(
        &mut self,
        now: Timestamp,
        id: Hash32,
        epoch: u64,
        sv: Signed<Verdict>,
        out: &mut Vec<OracleOutput>,
    ) {
        let Some(v) = self.open_or_ignore(&sv) else {
            return;
        };
        if v.contract != id || v.epoch != epoch || v.oracle != self.account() {
            self.stats.ignored += 1;
            return;
        }
        let Some(w) = self.watches.get_mut(&id) else {
            return;
        };
        w.verdict_sent = true;
        self.publish_own(now, id, v, sv, out);
    }

    /// Publish our own verdict on `id` and count it.
    fn publish_own(
        &mut self,
        now: Timestamp,
        id: Hash32,
        v: Verdict,
        sv: Signed<Verdict>,
        out: &mut Vec<OracleOutput>,
    ) {
        out.push(OracleOutput::Publish(Message::Verdict(sv.clone())));
        match self.aggregator.add_verified(v, sv) {
            Ok(Some(si)) => self.settled(si, out),
            Ok(None) => self.await_rest(now, id, out),
            Err(_) => {}
        }
        if self.aggregator.is_settled(&id) {
            self.unwatch(&id);
        }
    }

    fn issue_verdict(&mut self, id: Hash32, now: Timestamp, out: &mut Vec<OracleOutput>) {
        let Some(w) = self.watches.get(&id) else {
            return;
        };
        if w.verdict_sent || w.check == Check::Pending {
            return;
        }
        let epoch = w.epoch;
        let (delivered, violations, result_ok, units) = self.judge(w);
        let v = Verdict {
            contract: id,
            epoch,
            oracle: self.account(),
            sla_ok: delivered && violations == 0,
            violations,
            result_ok: delivered && result_ok,
            units,
            delivered,
        };
        if !delivered {
            self.stats.not_delivered += 1;
        }
        if let Some(w) = self.watches.get_mut(&id) {
            w.verdict_sent = true;
        }
        let Some(sv) = self.sign(&v) else {
            return;
        };
        self.stats.verdicts += 1;
        self.publish_own(now, id, v, sv, out);
    }

    /// Fire the timers due at `now`.
    pub fn handle_timeout<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        rng: &mut R,
    ) -> Vec<OracleOutput> {
        let mut out = Vec::new();
        while let Some(t) = self.timers.pop_due(now) {
            match t {
                Timer::Probe(id) => {
                    let me = self.account();
                    let Some(w) = self.watches.get_mut(&id) else {
                        continue;
                    };
                    if w.receipt.is_some() || w.verdict_sent {
                        continue;
                    }
                    // Forget probes that timed out; they stay counted as sent.
                    let timeout = self.cfg.probe_timeout;
                    w.outstanding.retain(|(_, s)| now.since(*s) <= timeout);
                    let probe = Probe {
                        oracle: me,
                        provider: w.terms.provider,
                        sent_at: now,
                        nonce: rng.random(),
                    };
                    let provider = w.terms.provider;
                    if let Ok(sp) = Signed::sign(&self.identity, &self.network, &probe) {
                        if let Some(w) = self.watches.get_mut(&id) {
                            w.probes_sent += 1;
                            if w.outstanding.len() >= 16 {
                                w.outstanding.remove(0);
                            }
                            w.outstanding.push((sp.id(), now));
                        }
                        self.stats.probes_sent += 1;
                        let t = self.tally.entry(provider).or_default();
                        t.sent = t.sent.saturating_add(1);
                        out.push(OracleOutput::Send {
                            to: provider,
                            message: Message::Probe(sp),
                        });
                    }
                    let next = now.plus(self.cfg.probe_every);
                    self.timers.schedule(&mut out, next, Timer::Probe(id));
                }
                Timer::Deadline(id) => {
                    if self.watches.get(&id).is_some_and(|w| w.receipt.is_none()) {
                        self.issue_verdict(id, now, &mut out);
                    }
                }
                Timer::Verdict(id) => self.issue_verdict(id, now, &mut out),
                Timer::Settle(id) => {
                    self.settle_timers.remove(&id);
                    if let Some(si) = self.aggregator.settle_now(id) {
                        self.settled(si, &mut out);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
