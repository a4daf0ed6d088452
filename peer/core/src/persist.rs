//! What a peer must remember across a restart, besides its ledger (which has
//! its own store): its jobs and their keys, the job keys handed to it, the
//! contracts it accepted as a provider and has not been paid for, and the
//! contracts it watches as a committee member with their receipts.
//!
//! After each input whose handling changed any of it, the core hands the driver
//! an [`Output::Persist`](crate::Output::Persist) with the whole state encoded;
//! the driver writes it atomically (temporary file, fsync, rename). On start the
//! driver passes the last one to [`NodeCore::restore`], which gives each engine
//! back what it had: a provider resumes its accepted contracts (it runs them
//! again, or gives them up at their deadline), a member
//! watches its contracts again under the committee of the epoch each started
//! in, and a requester follows its jobs to their settlement.
//!
//! **Format.** A 32-byte blake3 hash of the body, then the body: the canonical
//! bincode encoding of [`Snapshot`], version-tagged. A file that fails its hash
//! or does not decode is refused with [`PersistError`], never half-read.

use crdt_ledger::Store;
use protocol::market::{ProviderInput, RequesterInput};
use protocol::oracle::OracleInput;
use protocol::{
    AccountId, Amount, Contract, ContractTerms, Hash32, JobSpec, Outcome, Payout, Receipt, Signed,
    Timestamp, Verdict,
};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::job::{Job, JobEnd, Settled};
use crate::requester::Fetched;
use crate::{Cx, Grant, JobKey, NodeCore, Output};

const KIND: &str = "node-core-state";
const VERSION: u16 = 1;
/// Largest state accepted (the codec's own bound).
pub const MAX_STATE: usize = protocol::codec::MAX_DECODE_BYTES;
/// Ended jobs kept (the oldest are dropped first), which bounds the state.
pub const MAX_ENDED_JOBS: usize = 1_000;
/// Timeline lines kept per job.
pub const MAX_EVENTS: usize = 64;

/// Why a saved state was not restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistError {
    #[error("the saved node state is {0} bytes, shorter than its checksum")]
    Short(usize),
    #[error("the saved node state fails its checksum (corrupted on disk)")]
    Checksum,
    #[error("the saved node state does not decode: {0}")]
    Decode(#[from] protocol::CodecError),
    #[error("the saved node state is of version {0}; this build reads version {VERSION}")]
    Version(u16),
    #[error("the saved node state belongs to account {0}, not this one")]
    Account(AccountId),
}

#[derive(Serialize, Deserialize)]
struct SavedJob {
    id: Hash32,
    spec: JobSpec,
    key: [u8; 32],
    submitted: Timestamp,
    provider: Option<AccountId>,
    terms: Option<ContractTerms>,
    contract: Option<Hash32>,
    escrow: Option<Amount>,
    signed: Option<Contract>,
    receipt: Option<Receipt>,
    readers: Vec<AccountId>,
    failure: Option<String>,
    settled: Option<(Outcome, Payout, u64, u32)>,
    ended: Option<SavedEnd>,
    /// (path, bytes, metrics as JSON, summary)
    result: Option<(String, u64, String, String)>,
    events: Vec<(Timestamp, String)>,
}

#[derive(Serialize, Deserialize)]
enum SavedEnd {
    Expired,
    Refused(String),
}

#[derive(Serialize, Deserialize)]
struct SavedGrant {
    contract: Hash32,
    key: [u8; 32],
    requester: AccountId,
    contact: Vec<String>,
}

/// A contract this member watches: under the committee of `epoch`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Watched {
    pub(crate) contract: Contract,
    pub(crate) epoch: u64,
    pub(crate) committee: Vec<AccountId>,
    /// The provider's receipt, and when it reached us.
    pub(crate) receipt: Option<(Signed<Receipt>, Timestamp)>,
    /// Our own verdict, once signed (never to be signed anew).
    pub(crate) verdict: Option<Signed<Verdict>>,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u16,
    account: AccountId,
    jobs: Vec<SavedJob>,
    grants: Vec<SavedGrant>,
    /// Contracts this provider accepted and has not been settled for.
    provided: Vec<Contract>,
    watched: Vec<Watched>,
}

/// What [`NodeCore::restore`] brought back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    pub jobs: usize,
    pub open_jobs: usize,
    pub grants: usize,
    pub provided: usize,
    pub watched: usize,
}

fn save_job(j: &Job) -> SavedJob {
    SavedJob {
        id: j.id,
        spec: j.spec.clone(),
        key: *j.key.expose(),
        submitted: j.submitted,
        provider: j.provider,
        terms: j.terms.clone(),
        contract: j.contract,
        escrow: j.escrow,
        signed: j.signed.clone(),
        receipt: j.receipt.clone(),
        readers: j.readers.clone(),
        failure: j.failure.clone(),
        settled: j.settled.as_ref().map(|s| {
            (
                s.outcome,
                s.payout.clone(),
                s.epoch,
                u32::try_from(s.verdicts).unwrap_or(u32::MAX),
            )
        }),
        ended: j.ended.as_ref().and_then(|e| match e {
            JobEnd::Expired => Some(SavedEnd::Expired),
            JobEnd::Refused(why) => Some(SavedEnd::Refused(why.clone())),
            _ => None,
        }),
        result: j.result.as_ref().map(|r| {
            (
                r.path.to_string_lossy().into_owned(),
                r.bytes,
                r.metrics.to_string(),
                r.summary.clone(),
            )
        }),
        events: j.events.clone(),
    }
}

fn load_job(s: SavedJob) -> Job {
    Job {
        id: s.id,
        spec: s.spec,
        key: JobKey::from_bytes(s.key),
        submitted: s.submitted,
        provider: s.provider,
        terms: s.terms,
        contract: s.contract,
        escrow: s.escrow,
        signed: s.signed,
        receipt: s.receipt,
        readers: s.readers,
        failure: s.failure,
        settled: s.settled.map(|(outcome, payout, epoch, verdicts)| Settled {
            outcome,
            payout,
            epoch,
            verdicts: verdicts as usize,
            // Read back from the ledger once the job is restored.
            slashed: Amount::ZERO,
        }),
        ended: s.ended.map(|e| match e {
            SavedEnd::Expired => JobEnd::Expired,
            SavedEnd::Refused(why) => JobEnd::Refused(why),
        }),
        result: s.result.map(|(path, bytes, metrics, summary)| Fetched {
            path: path.into(),
            bytes,
            metrics: serde_json::from_str(&metrics).unwrap_or_default(),
            summary,
        }),
        events: s.events,
        progress: None,
    }
}

impl<S: Store> NodeCore<S> {
    /// The escrow lock this node wrote for `job`, if any (a scan of its own
    /// entries, at restore only).
    fn lock_of_job(&mut self, job: &Hash32) -> Option<Contract> {
        let me = self.account();
        self.ledger
            .entries_by(&me)
            .into_iter()
            .find_map(|e| match &e.data.body {
                crdt_ledger::Body::EscrowLock { contract }
                    if contract.body_unverified().is_ok_and(|t| t.job == *job) =>
                {
                    Some(contract.clone())
                }
                _ => None,
            })
    }

    /// What [`Output::Persist`](crate::Output::Persist) would hand out now:
    /// the state to give [`NodeCore::restore`] after a restart. A simulator
    /// that crashes peers on purpose takes it at the crash instead of on every
    /// change (with `persist` off): the last state persisted on every change
    /// is the state at the crash.
    pub fn state_to_save(&self) -> Vec<u8> {
        self.encode_state()
    }

    /// The state to persist, encoded with its checksum.
    fn encode_state(&self) -> Vec<u8> {
        let snap = Snapshot {
            version: VERSION,
            account: self.account(),
            jobs: self.jobs.iter().map(save_job).collect(),
            grants: self
                .grants
                .iter()
                .map(|(c, g)| SavedGrant {
                    contract: *c,
                    key: *g.key.expose(),
                    requester: g.requester,
                    contact: g.contact.clone(),
                })
                .collect(),
            provided: self.prov.accepted.values().cloned().collect(),
            watched: self.orc.watched.values().cloned().collect(),
        };
        // Plain data: encoding cannot fail.
        let body = protocol::codec::encode_unbounded(KIND, &snap).unwrap_or_default();
        let mut out = Vec::with_capacity(32 + body.len());
        out.extend_from_slice(blake3::hash(&body).as_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// After an input: if what must survive a restart changed, hand it out.
    pub(crate) fn persist_if_changed<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        let changed = self.jobs.take_dirty() | std::mem::take(&mut self.state_dirty);
        if !self.persist || !changed {
            return;
        }
        self.jobs.trim(MAX_ENDED_JOBS, MAX_EVENTS);
        let bytes = self.encode_state();
        let h = blake3::hash(&bytes);
        if self.persisted == Some(*h.as_bytes()) {
            return;
        }
        if bytes.len() > MAX_STATE {
            warn!(
                bytes = bytes.len(),
                "the node state outgrew its bound; it is not saved"
            );
            return;
        }
        self.persisted = Some(*h.as_bytes());
        cx.out.push(Output::Persist(bytes));
    }

    /// Bring back what a previous run persisted (before `Input::Start`), and
    /// give each engine back what it had.
    pub fn restore<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        bytes: &[u8],
        rng: &mut R,
        out: &mut Vec<Output>,
    ) -> Result<Restored, PersistError> {
        if bytes.len() < 32 {
            return Err(PersistError::Short(bytes.len()));
        }
        let (sum, body) = bytes.split_at(32);
        if blake3::hash(body).as_bytes() != sum {
            return Err(PersistError::Checksum);
        }
        let snap: Snapshot = protocol::codec::decode_limited(KIND, MAX_STATE, body)?;
        if snap.version != VERSION {
            return Err(PersistError::Version(snap.version));
        }
        if snap.account != self.account() {
            return Err(PersistError::Account(snap.account));
        }
        let mut report = Restored::default();
        let mut cx = Cx { now, rng, out };
        for g in snap.grants {
            report.grants += 1;
            self.grants.insert(
                g.contract,
                Grant {
                    key: JobKey::from_bytes(g.key),
                    requester: g.requester,
                    contact: g.contact,
                },
            );
        }
        for sj in snap.jobs {
            let mut job = load_job(sj);
            report.jobs += 1;
            if let (Some(s), Some(c), Some(t)) = (job.settled.as_mut(), job.contract, &job.terms) {
                s.slashed = self.slash_of(&t.provider, &c, t, &s.outcome);
            }
            let open = job.settled.is_none() && job.ended.is_none();
            if open && job.contract.is_none() {
                // A crash between the escrow lock (durable in the ledger) and
                // this state's save: the ledger knows the contract.
                if let Some(c) = self.lock_of_job(&job.id) {
                    job.contract = Some(c.body_hash());
                    job.terms = c.body_unverified().ok();
                    job.escrow = job.terms.as_ref().and_then(ContractTerms::escrow);
                    job.signed = Some(c);
                }
            }
            let (contract, delivered) = (job.contract, job.receipt.clone());
            let (id, key, spec) = (job.id, job.key.clone(), job.spec.clone());
            let fetched = job.result.is_some();
            self.jobs.insert(job);
            if !open {
                continue;
            }
            report.open_jobs += 1;
            match (contract, delivered) {
                (Some(_), Some(receipt)) if !fetched => {
                    // Delivered before the restart: fetch the result again.
                    let provider_contact = self.contact_of(&receipt.provider);
                    cx.out.push(Output::FetchResult {
                        job: id,
                        receipt: Box::new(receipt),
                        key,
                        provider_contact,
                    });
                }
                (Some(_), Some(_)) => {}
                (Some(c), None) => {
                    // Escrowed, not delivered: await the receipt again until
                    // the deadline (the committee refunds it if none comes).
                    if let Some(contract) = self.escrowed_contract(&c) {
                        self.requester_handle(&mut cx, RequesterInput::Resume(contract));
                    }
                }
                (None, _) => {
                    // Not matched yet: look for a provider again (the engine
                    // signs the same spec to the same id; an expired bid ends
                    // as such).
                    self.requester_handle(&mut cx, RequesterInput::Submit(Box::new(spec)));
                }
            }
        }
        for c in snap.provided {
            report.provided += 1;
            self.provider_handle(&mut cx, ProviderInput::Resume(c));
        }
        for w in snap.watched {
            report.watched += 1;
            let id = w.contract.body_hash();
            self.orc.watched.insert(id, w.clone());
            self.oracle_handle(
                &mut cx,
                OracleInput::Watch {
                    contract: w.contract,
                    epoch: w.epoch,
                    committee: w.committee,
                    receipt: w.receipt.map(Box::new),
                    verdict: w.verdict.map(Box::new),
                },
            );
        }
        info!(?report, "restored the node's state");
        self.ledger_dirty = true;
        self.settle_ledger(&mut cx);
        // What was restored is what is on disk.
        self.persisted = Some(*blake3::hash(&self.encode_state()).as_bytes());
        Ok(report)
    }
}
