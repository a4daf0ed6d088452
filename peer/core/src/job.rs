//! A requester's job as its user sees it: one state, derived from the market
//! engine's deal and from the settlement entry in the ledger, never kept beside
//! them.

use protocol::market::{Phase, RequesterEngine};
use protocol::{
    AccountId, Amount, ComputeUnits, Contract, ContractTerms, Hash32, JobSpec, Outcome, Receipt,
    Timestamp,
};

use crate::JobKey;
use crate::requester::Fetched;

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// Settled: the committee found it delivered, correct and on time.
    Ok,
    /// Settled: delivered and correct, with an SLA penalty.
    OkLate { violations: u32 },
    /// Settled: the committee found the result wrong; the requester is refunded.
    WrongResult,
    /// Settled: nothing was delivered by the deadline; the escrow is refunded.
    NotDelivered,
    /// No offer fitted before the bid expired.
    Expired,
    /// Refused before any escrow (why: funds, an invalid job, …).
    Refused(String),
}

impl JobEnd {
    /// The end a settlement's outcome means.
    pub fn of(o: &Outcome) -> JobEnd {
        match (o.delivered, o.result_ok, o.sla_ok) {
            (false, _, _) => JobEnd::NotDelivered,
            (true, false, _) => JobEnd::WrongResult,
            (true, true, true) => JobEnd::Ok,
            (true, true, false) => JobEnd::OkLate {
                violations: o.violations,
            },
        }
    }

    /// Whether the job gave its requester a correct result.
    pub fn is_ok(&self) -> bool {
        matches!(self, JobEnd::Ok | JobEnd::OkLate { .. })
    }
}

impl std::fmt::Display for JobEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobEnd::Ok => f.write_str("ok"),
            JobEnd::OkLate { violations } => {
                write!(f, "ok, with an SLA penalty ({violations} violations)")
            }
            JobEnd::WrongResult => f.write_str("failed: wrong result (refunded)"),
            JobEnd::NotDelivered => f.write_str("refunded: not delivered"),
            JobEnd::Expired => f.write_str("expired: no offer fitted"),
            JobEnd::Refused(why) => write!(f, "refused: {why}"),
        }
    }
}

/// Where a job stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Looking for a provider (an open bid once nothing fits).
    Matching,
    /// Proposed to a provider, awaiting its answer.
    Proposed,
    /// Both signed, the escrow locked; the provider works.
    Running,
    /// A receipt is in; the committee checks it.
    Delivered,
    /// The deal failed (why); the committee's settlement refunds the escrow.
    Failing(String),
    /// Over.
    Ended(JobEnd),
}

impl JobState {
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Matching => "matching",
            JobState::Proposed => "proposed",
            JobState::Running => "running",
            JobState::Delivered => "delivered",
            JobState::Failing(_) => "failing",
            JobState::Ended(JobEnd::Expired) => "expired",
            JobState::Ended(JobEnd::Refused(_)) => "refused",
            JobState::Ended(_) => "settled",
        }
    }
}

/// How the event that records a job's settlement begins.
pub(crate) const SETTLED_EVENT: &str = "settled in the ledger:";

/// What the ledger's settlement entry said about a job's contract.
#[derive(Debug, Clone)]
pub struct Settled {
    pub outcome: Outcome,
    pub payout: protocol::Payout,
    /// The epoch of the committee whose quorum certified it.
    pub epoch: u64,
    pub verdicts: usize,
    /// What it slashed of the provider's bond (the ledger's record).
    pub slashed: Amount,
}

/// A job this node submitted.
#[derive(Debug)]
pub struct Job {
    pub id: Hash32,
    pub spec: JobSpec,
    pub key: JobKey,
    pub submitted: Timestamp,
    /// The provider proposed to last (then the contract's).
    pub provider: Option<AccountId>,
    pub terms: Option<ContractTerms>,
    pub contract: Option<Hash32>,
    pub escrow: Option<Amount>,
    /// The contract both signed, once its escrow is locked.
    pub signed: Option<Contract>,
    /// The provider's receipt, once delivered.
    pub receipt: Option<Receipt>,
    /// Who was handed the job's key (the provider and the committee).
    pub readers: Vec<AccountId>,
    /// Why the deal failed before its settlement, if it did.
    pub failure: Option<String>,
    pub settled: Option<Settled>,
    /// An end without a settlement (expired, refused).
    pub ended: Option<JobEnd>,
    pub result: Option<Fetched>,
    pub events: Vec<(Timestamp, String)>,
    /// The provider's last progress report (training), not kept across a
    /// restart: the next report brings it back.
    pub progress: Option<crate::TrainProgress>,
}

impl Job {
    /// The job's state now: its end if it has one, else its deal's phase in the
    /// engine.
    pub fn state(&self, engine: &RequesterEngine) -> JobState {
        if let Some(s) = &self.settled {
            return JobState::Ended(JobEnd::of(&s.outcome));
        }
        if let Some(e) = &self.ended {
            return JobState::Ended(e.clone());
        }
        if let Some(why) = &self.failure {
            return JobState::Failing(why.clone());
        }
        let Some(c) = self.contract else {
            return if self.provider.is_some() {
                JobState::Proposed
            } else {
                JobState::Matching
            };
        };
        match engine.deal(&c).map(|d| d.phase()) {
            Some(Phase::Delivered | Phase::Verified | Phase::Disputed) => JobState::Delivered,
            _ if self.receipt.is_some() => JobState::Delivered,
            _ => JobState::Running,
        }
    }

    /// Whether nothing more will happen: it ended, and a correct result was
    /// fetched (or could not be).
    pub fn done(&self, engine: &RequesterEngine) -> bool {
        match self.state(engine) {
            JobState::Ended(e) if e.is_ok() => self.result.is_some(),
            JobState::Ended(_) => true,
            _ => false,
        }
    }

    /// When this node learned of the job's settlement (from the ledger entry
    /// that settled its contract).
    pub fn settled_at(&self) -> Option<Timestamp> {
        self.settled.as_ref()?;
        self.events
            .iter()
            .rev()
            .find(|(_, e)| e.starts_with(SETTLED_EVENT))
            .map(|(t, _)| *t)
    }

    /// The compute units its receipt claims.
    pub fn units(&self) -> Option<ComputeUnits> {
        self.receipt.as_ref().map(|r| r.units_used)
    }

    pub(crate) fn event(&mut self, now: Timestamp, what: String) {
        tracing::info!(job = %self.id.short(), "{what}");
        self.events.push((now, what));
    }
}
