//! The requester's half of a job: submit, lock the escrow once both parties
//! signed, hand the job key to the provider and the committee, fetch the result,
//! and learn the settlement from the ledger entry that settles the contract.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use crdt_ledger::{Body, Store};
use protocol::market::{FailReason, RequesterInput, RequesterOutput};
use protocol::{
    AccountId, Amount, Contract, Hash32, JobSpec, KeyGrant, Message, Receipt, Signed, Timestamp,
};
use rand::Rng;
use tracing::{debug, warn};

use crate::job::{Job, JobEnd, Settled};

/// Proposals a requester keeps to hand again to providers that come up.
const KEPT_PROPOSALS: usize = 64;
use crate::retry::{MAX_ATTEMPTS, Retry};
use crate::{Cx, JobKey, NodeCore, Output, WorkError, keys};

/// A job whose inputs the driver has encrypted (under `key`) and stored.
#[derive(Debug)]
pub struct PreparedJob {
    pub spec: JobSpec,
    pub key: JobKey,
    /// What preparing it did, for the job's timeline.
    pub note: String,
}

/// A result fetched and decrypted by the driver.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub path: PathBuf,
    pub bytes: u64,
    /// The workload's metrics (accuracy, loss, …) as the result carried them.
    pub metrics: serde_json::Value,
    /// A line for the job's timeline.
    pub summary: String,
}

/// Why a job was not submitted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    #[error("the job is not valid: {0}")]
    Invalid(String),
    #[error("cannot sign the job: {0}")]
    Sign(String),
}

/// The requester's jobs by id, and contract → job.
#[derive(Debug, Default)]
pub(crate) struct Jobs {
    by_id: BTreeMap<Hash32, Job>,
    of_contract: HashMap<Hash32, Hash32>,
    /// A job changed since the state was last persisted.
    dirty: bool,
}

impl Jobs {
    fn by_contract(&mut self, contract: &Hash32) -> Option<&mut Job> {
        let id = self.of_contract.get(contract)?;
        self.dirty = true;
        self.by_id.get_mut(id)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn of_contract(&self, contract: &Hash32) -> Option<&Job> {
        self.by_id.get(self.of_contract.get(contract)?)
    }

    fn get_mut(&mut self, id: &Hash32) -> Option<&mut Job> {
        self.dirty = true;
        self.by_id.get_mut(id)
    }

    /// Whether a job changed since the last call.
    pub(crate) fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Job> {
        self.by_id.values()
    }

    fn remove(&mut self, id: &Hash32) -> Option<Job> {
        let j = self.by_id.remove(id)?;
        self.dirty = true;
        if let Some(c) = j.contract {
            self.of_contract.remove(&c);
        }
        Some(j)
    }

    pub(crate) fn insert(&mut self, job: Job) {
        self.dirty = true;
        if let Some(c) = job.contract {
            self.of_contract.insert(c, job.id);
        }
        self.by_id.insert(job.id, job);
    }

    /// Keep at most `max_ended` ended jobs (the oldest submitted go first) and
    /// `max_events` timeline lines per job (the first and the latest).
    pub(crate) fn trim(&mut self, max_ended: usize, max_events: usize) {
        let mut ended: Vec<(Timestamp, Hash32)> = self
            .by_id
            .values()
            .filter(|j| j.settled.is_some() || j.ended.is_some())
            .map(|j| (j.submitted, j.id))
            .collect();
        if ended.len() > max_ended {
            ended.sort();
            for (_, id) in &ended[..ended.len() - max_ended] {
                self.remove(id);
            }
        }
        for j in self.by_id.values_mut() {
            if j.events.len() > max_events {
                let cut = j.events.len() - max_events + 1;
                j.events.drain(1..=cut);
            }
        }
    }
}

/// Providers' quality from their SLA record in the ledger (a provider with
/// none gets the prior of a fresh record), and whether their free bond
/// covers a contract: read from the ledger's state as matching asks, never
/// copied (a node hears an offer per provider per refresh, and copying every
/// provider's record for each would make each offer cost the network's size).
pub(crate) struct LedgerReputation<'a> {
    state: &'a crdt_ledger::State,
    /// The share of an escrow a contract reserves of its provider's bond.
    bond_share: protocol::Bps,
}

impl std::fmt::Debug for LedgerReputation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LedgerReputation(epoch {})", self.state.epoch)
    }
}

impl protocol::market::Reputation for LedgerReputation<'_> {
    fn quality(&self, provider: &AccountId) -> f64 {
        let r = self
            .state
            .reputation
            .get(provider)
            .copied()
            .unwrap_or_default();
        f64::from(r.score_bps()) / 10_000.0
    }
    fn bonded(&self, provider: &AccountId, escrow: Amount) -> bool {
        self.state.free_bond(provider) >= self.bond_share.of(escrow)
    }
    fn is_young(&self, provider: &AccountId) -> bool {
        self.state
            .reputation
            .get(provider)
            .is_none_or(crdt_ledger::Reputation::is_young)
    }
}

impl<S: Store> NodeCore<S> {
    /// What the settlement of `contract` slashed of `provider`'s bond: the
    /// ledger's record while the provider's recent history holds it, else at
    /// least what the contract reserved.
    pub(crate) fn slash_of(
        &mut self,
        provider: &AccountId,
        contract: &Hash32,
        terms: &protocol::ContractTerms,
        outcome: &protocol::settlement::Outcome,
    ) -> Amount {
        if let Some(a) = self.ledger.state().slash_of(provider, contract) {
            return a;
        }
        let p = self.ledger.params();
        let reserved = terms.escrow().map_or(Amount::ZERO, |e| p.contract_bond(e));
        p.slashed(reserved, reserved, outcome)
    }

    /// The jobs this node submitted, oldest id first.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.by_id.values()
    }

    /// Take out the jobs that are over (ended, with their result fetched or
    /// none to fetch), or with `all` every job, in order of id, each with its
    /// state: a simulator folds them into its figures and drops them. Nothing
    /// the core does later needs a job that is over.
    pub fn take_jobs(&mut self, all: bool) -> Vec<(Job, crate::JobState)> {
        let taken: Vec<(Hash32, crate::JobState)> = self
            .jobs
            .by_id
            .values()
            .filter(|j| all || j.done(&self.requester))
            .map(|j| (j.id, j.state(&self.requester)))
            .collect();
        taken
            .into_iter()
            .filter_map(|(id, state)| Some((self.jobs.remove(&id)?, state)))
            .collect()
    }

    pub fn job(&self, id: &Hash32) -> Option<&Job> {
        self.jobs.by_id.get(id)
    }

    pub(crate) fn requester_handle<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        input: RequesterInput,
    ) {
        let bond_share = self.ledger.params().provider_bond;
        let rep = LedgerReputation {
            state: self.ledger.state(),
            bond_share,
        };
        let o = self.requester.handle(cx.now, input, &rep, cx.rng);
        self.on_requester_out(cx, o);
    }

    pub(crate) fn requester_timeout<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        let bond_share = self.ledger.params().provider_bond;
        let rep = LedgerReputation {
            state: self.ledger.state(),
            bond_share,
        };
        let o = self.requester.handle_timeout(cx.now, &rep, cx.rng);
        self.on_requester_out(cx, o);
    }

    /// Submit a prepared job: the engine signs it and looks for a provider.
    pub fn submit<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        p: PreparedJob,
        rng: &mut R,
        out: &mut Vec<crate::Output>,
    ) -> Result<Hash32, SubmitError> {
        p.spec
            .validate(now)
            .map_err(|e| SubmitError::Invalid(e.to_string()))?;
        // Signing is deterministic: the engine's signature gives the same id.
        let id = Signed::sign(&self.identity, &self.network, &p.spec)
            .map_err(|e| SubmitError::Sign(e.to_string()))?
            .id();
        let mut job = Job {
            id,
            spec: p.spec.clone(),
            key: p.key,
            submitted: now,
            provider: None,
            terms: None,
            contract: None,
            escrow: None,
            signed: None,
            receipt: None,
            readers: Vec::new(),
            failure: None,
            settled: None,
            ended: None,
            result: None,
            events: Vec::new(),
            progress: None,
        };
        job.event(now, p.note);
        let offers = self.requester.book().iter().count();
        job.event(now, format!("submitted; {offers} offers in the book"));
        // Say so when no bond of ours backs the escrow: providers then wait
        // for its checkpoint, and decline a deadline the wait makes them miss.
        let escrow = p
            .spec
            .max_price
            .cost(p.spec.estimated_units)
            .unwrap_or(protocol::Amount(u64::MAX));
        if !self.ledger.backs(&self.identity.account(), escrow) {
            let wait = self.ledger.unbacked_wait().0 / 1000;
            let (at_risk, backing) = self.ledger.backing(&self.identity.account());
            job.event(
                now,
                format!(
                    "this account's final bond and stake back pending escrows up to {backing} \
                     tokens ({at_risk} pending), less than this job's escrow could be at its \
                     max_price ({escrow}): a provider starts only once the escrow is final (up \
                     to {wait} s), and declines a deadline that leaves no room for it; a larger \
                     bond (provider.bond, bonded at a first job) lets jobs start at once"
                ),
            );
        }
        self.jobs.insert(job);
        let mut cx = Cx { now, rng, out };
        self.bond_for_contracts(&mut cx);
        self.requester_handle(&mut cx, RequesterInput::Submit(Box::new(p.spec)));
        self.settle_ledger(&mut cx);
        Ok(id)
    }

    fn on_requester_out<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>, out: Vec<RequesterOutput>) {
        for o in out {
            match o {
                RequesterOutput::Publish(m) => cx.out.push(Output::Publish(m)),
                RequesterOutput::Send { to, message } => {
                    self.keep_proposal(cx.now, to, &message);
                    self.send(cx, to, message)
                }
                RequesterOutput::NoMatch {
                    job,
                    reasons,
                    examined,
                } => {
                    if let Some(j) = self.jobs.get_mut(&job) {
                        let why: Vec<String> = reasons
                            .iter()
                            .take(3)
                            .map(|e| format!("{}: {:?}", e.provider.short(), e.reason))
                            .collect();
                        j.event(
                            cx.now,
                            format!(
                                "no offer fits yet ({examined} examined{}{}); the bid stays open",
                                if why.is_empty() { "" } else { ": " },
                                why.join("; ")
                            ),
                        );
                    }
                }
                RequesterOutput::Proposed { job, provider } => {
                    let book = self.requester.book();
                    let offer = book
                        .iter()
                        .find(|e| e.offer.provider == provider)
                        .map(|e| (e.offer.price.0, e.offer.device.clone()));
                    let n = book.iter().count();
                    if let Some(j) = self.jobs.get_mut(&job) {
                        j.provider = Some(provider);
                        let (price, device) = offer.unwrap_or_default();
                        j.event(
                            cx.now,
                            format!(
                                "proposed to {} ({device}, {price} µ-tokens/CU): best utility Q − P of {n} offers",
                                provider.short()
                            ),
                        );
                    }
                }
                RequesterOutput::Refused {
                    job,
                    provider,
                    reason,
                } => {
                    let routine = matches!(
                        reason,
                        protocol::RejectReason::NoCapacity { .. }
                            | protocol::RejectReason::QueueFull { .. }
                    );
                    match self.jobs.get_mut(&job) {
                        // A full provider is routine (the book passes it over
                        // until then): only the log says so.
                        Some(j) if !routine => j.event(
                            cx.now,
                            format!("{} refused it: {}", provider.short(), refusal(&reason)),
                        ),
                        _ => {
                            debug!(provider = %provider.short(), ?reason, "a proposal was refused")
                        }
                    }
                }
                RequesterOutput::LockEscrow { contract, amount } => {
                    self.lock_escrow(cx, *contract, amount);
                }
                RequesterOutput::Delivered { contract, receipt } => {
                    self.on_delivered(cx, contract, *receipt);
                }
                RequesterOutput::Failed { contract, reason } => {
                    if let Some(j) = self.jobs.by_contract(&contract) {
                        let why = match reason {
                            FailReason::ProviderVanished => {
                                "no receipt by the deadline: the provider vanished".to_string()
                            }
                            FailReason::Aborted(r) => format!("the provider gave up: {r}"),
                            FailReason::EscrowFailed => "the escrow could not be locked".into(),
                            other => format!("{other:?}"),
                        };
                        j.event(
                            cx.now,
                            format!("{why}; the committee will refund the escrow"),
                        );
                        j.failure = Some(why);
                    }
                }
                RequesterOutput::BidExpired { job } => {
                    if let Some(j) = self.jobs.get_mut(&job) {
                        j.event(cx.now, "the bid expired unfilled".into());
                        j.ended = Some(JobEnd::Expired);
                    }
                }
                // The job keeps its settlement; the engine's deal is done.
                // Without draining them, a requester kept every deal it
                // ever made (contract, receipt, certificate) in memory.
                RequesterOutput::Settled { .. } => {
                    self.requester.drain_finished();
                }
                _ => {}
            }
        }
    }

    fn lock_escrow<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        contract: Contract,
        amount: Amount,
    ) {
        let id = contract.body_hash();
        let Ok(terms) = contract.body_unverified() else {
            return;
        };
        let job_id = terms.job;
        if let Err(e) = self.append(
            cx.now,
            Body::EscrowLock {
                contract: contract.clone(),
            },
        ) {
            warn!(%e, "cannot lock the escrow");
            if let Some(j) = self.jobs.get_mut(&job_id) {
                j.event(cx.now, format!("cannot lock the escrow: {e}"));
                j.ended = Some(JobEnd::Refused(format!("cannot lock the escrow: {e}")));
            }
            self.requester_handle(cx, RequesterInput::EscrowFailed { contract: id });
            return;
        }
        self.jobs.of_contract.insert(id, job_id);
        let Some(j) = self.jobs.get_mut(&job_id) else {
            return;
        };
        j.contract = Some(id);
        j.signed = Some(contract);
        j.provider = Some(terms.provider);
        j.escrow = Some(amount);
        j.event(
            cx.now,
            format!(
                "contract {} signed by both: {} µ-tokens/CU for at most {:.3} CU; escrow of {amount} tokens locked in the ledger",
                id.short(),
                terms.price.0,
                terms.max_units.as_f64()
            ),
        );
        j.terms = Some(terms.clone());
        // The provider reads the inputs; the committee that watches the contract
        // (the next epoch's, which the oracles serve as now) reads them to
        // re-execute.
        let state = self.ledger.state();
        let committee: Vec<AccountId> = state
            .committee_for(state.epoch + 1)
            .map(<[AccountId]>::to_vec)
            .unwrap_or_default();
        let me = self.account();
        let mut readers = vec![terms.provider];
        readers.extend(
            committee
                .into_iter()
                .filter(|a| *a != me && *a != terms.provider),
        );
        for reader in &readers {
            self.send_grant(cx, job_id, *reader);
        }
        if let Some(j) = self.jobs.get_mut(&job_id) {
            j.readers = readers;
        }
    }

    /// Seal job `job`'s key to `reader` and send it.
    fn send_grant<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>, job: Hash32, reader: AccountId) {
        let Some(j) = self.jobs.by_id.get(&job) else {
            return;
        };
        let (Some(id), key) = (j.contract, j.key.clone()) else {
            return;
        };
        let sealed = match keys::seal_job_key(&self.identity, &reader, &id, &key) {
            Ok(s) => s,
            Err(e) => return warn!(%e, reader = %reader.short(), "cannot seal the job key"),
        };
        let grant = KeyGrant {
            contract: id,
            requester: self.account(),
            reader,
            sealed,
            contact: self.contact.clone(),
            issued_at: cx.now,
        };
        match Signed::sign(&self.identity, &self.network, &grant) {
            Ok(s) => self.send(cx, reader, Message::KeyGrant(s)),
            Err(e) => warn!(%e, "cannot sign a key grant"),
        }
    }

    /// Our provider gave a contract up: say so in the job (the committee's
    /// not-delivered verdict refunds it).
    pub(crate) fn withdrawn<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        w: &protocol::Signed<protocol::Withdrawal>,
    ) {
        let Ok(b) = w.verify(&self.network) else {
            return;
        };
        let Some(j) = self.jobs.by_contract(&b.contract) else {
            return;
        };
        if j.provider != Some(w.signer) || b.validate().is_err() || j.settled.is_some() {
            return;
        }
        j.event(
            cx.now,
            format!(
                "the provider gave the contract up ({}); the committee refunds the escrow",
                b.reason
            ),
        );
    }

    /// A peer came up: hand it again the keys of our unsettled jobs it reads
    /// (it may have been down when they were sent, or lost them in a crash).
    /// Keep a proposal we send until it expires: one sent before the
    /// provider was reachable (a relayed connection still coming up) is lost,
    /// and the provider answers a proposal only once it has it.
    fn keep_proposal(&mut self, now: Timestamp, to: AccountId, m: &Message) {
        let Message::Proposal(p) = m else {
            return;
        };
        let Ok(body) = p.body_unverified() else {
            return;
        };
        self.proposals_out.retain(|(_, _, until)| *until > now);
        if self.proposals_out.len() >= KEPT_PROPOSALS {
            self.proposals_out.remove(0);
        }
        self.proposals_out.push((to, m.clone(), body.expires_at));
    }

    /// A peer came up: hand it again our proposals to it that have not
    /// expired (a copy it has already is ignored as a replay).
    pub(crate) fn resend_proposals<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        peer: AccountId,
    ) {
        let now = cx.now;
        let again: Vec<Message> = self
            .proposals_out
            .iter()
            .filter(|(to, _, until)| *to == peer && *until > now)
            .map(|(_, m, _)| m.clone())
            .collect();
        for m in again {
            self.send(cx, peer, m);
        }
    }

    pub(crate) fn resend_grants<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>, peer: AccountId) {
        let jobs: Vec<Hash32> = self
            .jobs
            .by_id
            .values()
            .filter(|j| j.settled.is_none() && j.contract.is_some() && j.readers.contains(&peer))
            .map(|j| j.id)
            .collect();
        for job in jobs {
            self.send_grant(cx, job, peer);
        }
    }

    /// Hand the key of each unsettled job to the committee that judges it, as
    /// the ledger says once the lock is folded: a lock that lands in a later
    /// epoch than the grants assumed has another committee. With `again`
    /// (a new finalized epoch), every reader of a delivered job gets its key
    /// once more: a grant sent directly can be lost, and without it no member
    /// can check the result.
    pub(crate) fn grant_judges<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>, again: bool) {
        let open: Vec<(Hash32, Hash32, bool)> = self
            .jobs
            .by_id
            .values()
            .filter(|j| j.settled.is_none() && j.ended.is_none())
            .filter_map(|j| Some((j.id, j.contract?, j.receipt.is_some())))
            .collect();
        for (job, contract, delivered) in open {
            let judges = self.judges_of(&contract);
            let me = self.account();
            let Some(j) = self.jobs.get_mut(&job) else {
                continue;
            };
            let new: Vec<AccountId> = judges
                .into_iter()
                .filter(|a| *a != me && !j.readers.contains(a))
                .collect();
            j.readers.extend(&new);
            let to = if again && delivered {
                j.readers.clone()
            } else {
                new
            };
            for reader in to {
                self.send_grant(cx, job, reader);
            }
        }
    }

    fn on_delivered<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        contract: Hash32,
        receipt: Receipt,
    ) {
        let provider_contact = self.contact_of(&receipt.provider);
        let Some(j) = self.jobs.by_contract(&contract) else {
            return;
        };
        let t = receipt.timings;
        j.event(
            cx.now,
            format!(
                "receipt: {:.3} CU used, ran {:.2} s (inputs fetched in {:.2} s); result {} ({} bytes)",
                receipt.units_used.as_f64(),
                t.finished_at.since(t.started_at).as_secs_f64(),
                t.inputs_ready_at.since(t.accepted_at).as_secs_f64(),
                receipt.result.hash.short(),
                receipt.result.size
            ),
        );
        cx.out.push(Output::FetchResult {
            job: j.id,
            receipt: Box::new(receipt.clone()),
            key: j.key.clone(),
            provider_contact,
        });
        j.receipt = Some(receipt);
    }

    /// A receipt for one of our jobs that the engine no longer follows (it gave
    /// the deal up at its deadline, or a restart lost it) while the job has
    /// none: still the provider's signed word on where the result is, so fetch
    /// it. The settlement decides what is paid.
    pub(crate) fn late_receipt<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        sr: &Signed<Receipt>,
    ) {
        let Ok(r) = sr.body_unverified() else {
            return;
        };
        let known = self.jobs.of_contract(&r.contract).is_some_and(|j| {
            j.receipt.is_none() && j.terms.as_ref().is_some_and(|t| t.provider == sr.signer)
        }) && r.provider == sr.signer;
        if !known || sr.verify(&self.network).is_err() {
            return;
        }
        self.on_delivered(cx, r.contract, r);
    }

    /// A provider's progress with one of our jobs: kept for the job's view,
    /// and a line in its timeline at each quarter of the epochs.
    pub(crate) fn on_progress(
        &mut self,
        now: Timestamp,
        from: AccountId,
        contract: Hash32,
        progress: crate::TrainProgress,
    ) {
        let Some(j) = self.jobs.by_contract(&contract) else {
            return;
        };
        if j.provider != Some(from) {
            return; // only the job's own provider reports on it
        }
        if j.progress.is_some_and(|p| p.step >= progress.step) {
            return; // an older report, overtaken on the way
        }
        let quarter =
            |p: &crate::TrainProgress| u64::from(p.epoch) * 4 / u64::from(p.epochs.max(1));
        let before = j.progress.as_ref().map_or(0, quarter);
        if quarter(&progress) > before && progress.epoch < progress.epochs {
            j.event(
                now,
                format!(
                    "training: epoch {} of {}, loss {:.4}",
                    progress.epoch, progress.epochs, progress.loss
                ),
            );
        }
        j.progress = Some(progress);
    }

    pub(crate) fn on_fetched<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        job: Hash32,
        result: Result<Fetched, WorkError>,
    ) {
        let retry = matches!(&result, Err(e) if e.retry)
            && self
                .retries
                .schedule(cx.now, Retry::Fetch(job), MAX_ATTEMPTS);
        if !retry {
            self.retries.done(Retry::Fetch(job));
        }
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        match result {
            Ok(f) => {
                j.event(cx.now, f.summary.clone());
                j.result = Some(f);
            }
            Err(e) if retry => j.event(
                cx.now,
                format!("cannot fetch the result yet: {e}; trying again"),
            ),
            Err(e) => j.event(cx.now, format!("cannot fetch the result: {e}")),
        }
    }

    /// Our jobs whose result `provider` delivered and we have not fetched.
    pub(crate) fn fetches_of(&self, provider: &AccountId) -> Vec<Hash32> {
        self.jobs
            .iter()
            .filter(|j| {
                j.result.is_none() && j.receipt.as_ref().is_some_and(|r| r.provider == *provider)
            })
            .map(|j| j.id)
            .collect()
    }

    /// Ask the driver again for a result, from the provider's latest address.
    pub(crate) fn refetch<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>, job: Hash32) {
        let Some(j) = self.jobs.by_id.get(&job) else {
            return;
        };
        let (Some(receipt), None) = (j.receipt.clone(), &j.result) else {
            return;
        };
        let key = j.key.clone();
        let provider_contact = self.contact_of(&receipt.provider);
        cx.out.push(Output::FetchResult {
            job,
            receipt: Box::new(receipt),
            key,
            provider_contact,
        });
    }

    /// The signed contract of one of our jobs (to follow it after a restart).
    pub(crate) fn escrowed_contract(&self, contract: &Hash32) -> Option<Contract> {
        let id = self.jobs.of_contract.get(contract)?;
        self.jobs.by_id.get(id)?.signed.clone()
    }

    /// An escrow no committee settled long after its deadline (its verdicts
    /// split, or its members vanished): write its expiry once it is due, and
    /// end the job, refunded, once the ledger holds it.
    fn expire_unsettled<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        c: Hash32,
        terms: &protocol::ContractTerms,
    ) {
        if self.ledger.expired(&c) {
            let escrow = terms.price.cost(terms.max_units).unwrap_or_default();
            let epoch = self.ledger.state().epoch;
            if let Some(j) = self.jobs.by_contract(&c) {
                j.event(
                    cx.now,
                    format!(
                        "{} no committee settled it: expired {} s after its deadline, escrow of {} refunded",
                        crate::job::SETTLED_EVENT,
                        self.ledger.params().expire_after.0 / 1000,
                        escrow
                    ),
                );
                j.settled = Some(Settled {
                    outcome: protocol::Outcome {
                        delivered: false,
                        result_ok: false,
                        sla_ok: false,
                        violations: 0,
                        units: protocol::ComputeUnits::default(),
                    },
                    payout: protocol::Payout {
                        escrow,
                        provider: Amount::ZERO,
                        refund: escrow,
                        penalty: Amount::ZERO,
                        fees: Vec::new(),
                    },
                    epoch,
                    verdicts: 0,
                    slashed: Amount::ZERO,
                });
            }
            return;
        }
        if self.ledger.expiry_due(&c) && self.expiring.insert(c) {
            warn!(contract = %c.short(), "no committee settled the escrow long after its deadline: expiring it");
            if let Err(e) = self.append(cx.now, crdt_ledger::Body::Expire { contract: c }) {
                warn!(contract = %c.short(), %e, "cannot expire the escrow");
                self.expiring.remove(&c);
            }
        }
    }

    /// Settlements the ledger now holds for our open contracts: each found by
    /// its contract id, its outcome the one the quorum certified.
    pub(crate) fn requester_ledger_changed<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        let open: Vec<(Hash32, protocol::ContractTerms)> = self
            .jobs
            .by_id
            .values()
            .filter(|j| j.settled.is_none())
            .filter_map(|j| Some((j.contract?, j.terms.clone()?)))
            .collect();
        for (c, terms) in open {
            let Some(si) = self.settlement_of(&c, &terms) else {
                self.expire_unsettled(cx, c, &terms);
                continue;
            };
            let slashed = self.slash_of(&terms.provider, &c, &terms, &si.outcome);
            if let Some(j) = self.jobs.by_contract(&c) {
                let fees = si.payout.fees.iter().map(|(_, a)| a.0).sum::<u64>();
                j.event(
                    cx.now,
                    format!(
                        "committee verdict (quorum of {} in epoch {}): delivered={} result_ok={} sla_ok={}",
                        si.cert.verdicts.len(),
                        si.cert.epoch,
                        si.outcome.delivered,
                        si.outcome.result_ok,
                        si.outcome.sla_ok
                    ),
                );
                j.event(
                    cx.now,
                    format!(
                        "{} provider paid {} tokens (penalty {}), committee fee {}, requester refunded {}",
                        crate::job::SETTLED_EVENT,
                        si.payout.provider,
                        si.payout.penalty,
                        Amount(fees),
                        si.payout.refund
                    ),
                );
                j.settled = Some(Settled {
                    outcome: si.outcome,
                    payout: si.payout.clone(),
                    epoch: si.cert.epoch,
                    verdicts: si.cert.verdicts.len(),
                    slashed,
                });
            }
            self.requester_handle(cx, RequesterInput::Settlement(Box::new(si)));
        }
    }
}

/// A provider's refusal, for a job's timeline.
fn refusal(reason: &protocol::RejectReason) -> String {
    use protocol::RejectReason as R;
    let mib = |b: &u64| format!("{:.1} MiB", *b as f64 / f64::from(1 << 20));
    match reason {
        R::NoCapacity { free_at } | R::QueueFull { free_at } => {
            format!("no free slot until {} ms", free_at.0)
        }
        R::PriceBelowFloor { floor } => format!("the price is below its floor of {}", floor.0),
        R::DeadlineInfeasible => "it cannot meet the deadline".into(),
        R::NoStorage { needed, room } => format!(
            "the job needs {} of its store, which has {} for new jobs",
            mib(needed),
            mib(room)
        ),
        R::PrivacyBudget {
            asked_micro,
            left_micro,
        } => format!(
            "the job would spend ε = {:.3} of its data set, which has {:.3} left for us",
            *asked_micro as f64 / 1e6,
            *left_micro as f64 / 1e6
        ),
        R::Unsupported(why) | R::Invalid(why) => why.clone(),
    }
}
