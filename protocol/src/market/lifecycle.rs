//! A contract's life as types.
//!
//! ```text
//! Proposed ──accept──▶ Accepted ──start──▶ Running ──deliver──▶ Delivered ──verify──▶ Verified ──settle──▶ Settled
//!    │ reject ▶ Rejected   │ fail ▶ Failed     │ fail ▶ Failed        │ dispute                │ dispute
//!    │ expire ▶ Expired    │ dispute           │ dispute              ▼                        ▼
//!                          └──────────────────────────────────▶ Disputed ──resolve──▶ Resolved
//! ```
//!
//! A [`Deal<S>`] is in exactly one state `S`, and only the transitions drawn above
//! exist as methods: `Deal<Proposed>` has `accept`, `reject` and `expire`, and no
//! way to be settled. Each transition consumes the deal and returns it in the new
//! state, so an illegal transition does not compile.
//!
//! ```compile_fail
//! # use protocol::market::lifecycle::{Deal, Proposed};
//! # fn f(d: Deal<Proposed>, p: protocol::Payout) {
//! // A proposal cannot be settled: `Deal<Proposed>` has no `settle`.
//! d.settle(protocol::Timestamp(0), p);
//! # }
//! ```
//!
//! ```
//! # use protocol::market::lifecycle::{Deal, Proposed, Verified};
//! # fn f(d: Deal<Verified>, p: protocol::Payout) {
//! // A verified deal can.
//! let settled = d.settle(protocol::Timestamp(0), p);
//! # }
//! ```
//!
//! Engines that keep many deals of mixed states store [`AnyDeal`] and drive it with
//! [`AnyDeal::apply`], which refuses an illegal [`DealEvent`] with a
//! [`LifecycleError`] and hands the deal back unchanged.

use crate::identity::AccountId;
use crate::messages::{Contract, ContractTerms, Dispute, Receipt, RejectReason};
use crate::settlement::{Outcome, Payout, QuorumCert};
use crate::types::{Hash32, Timestamp};

/// The name of a state, for logs, errors and histories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Proposed,
    Accepted,
    Running,
    Delivered,
    Verified,
    Settled,
    Rejected,
    Expired,
    Failed,
    Disputed,
    Resolved,
}

impl Phase {
    /// No transition leaves this phase.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Settled | Phase::Rejected | Phase::Expired | Phase::Failed | Phase::Resolved
        )
    }
}

/// Why a contract failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailReason {
    /// No receipt by the deadline plus grace: the provider vanished.
    ProviderVanished,
    /// The provider reported that it could not run the job.
    Aborted(String),
    /// The escrow could not be locked.
    EscrowFailed,
}

/// An event that moves a deal (for [`AnyDeal::apply`]).
#[derive(Clone, Debug)]
pub enum DealEvent {
    Accept(Box<Contract>),
    Reject(RejectReason),
    Expire,
    Start,
    Deliver(Box<Receipt>),
    Verify(Box<QuorumCert>, Outcome),
    Settle(Box<Payout>),
    Fail(FailReason),
    Dispute(Box<Dispute>),
    Resolve(Outcome, Box<Payout>),
}

impl DealEvent {
    pub fn name(&self) -> &'static str {
        match self {
            DealEvent::Accept(_) => "accept",
            DealEvent::Reject(_) => "reject",
            DealEvent::Expire => "expire",
            DealEvent::Start => "start",
            DealEvent::Deliver(_) => "deliver",
            DealEvent::Verify(..) => "verify",
            DealEvent::Settle(_) => "settle",
            DealEvent::Fail(_) => "fail",
            DealEvent::Dispute(_) => "dispute",
            DealEvent::Resolve(..) => "resolve",
        }
    }
}

/// A refused transition.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum LifecycleError {
    #[error("contract {deal:?}: cannot {event} a deal that is {from:?}")]
    Illegal {
        deal: Hash32,
        from: Phase,
        event: &'static str,
    },
}

// The states. Each holds what is known once the deal has reached it.

/// Proposed, waiting for the other party's answer until `expires_at`.
#[derive(Clone, Debug)]
pub struct Proposed {
    pub counterparty: AccountId,
    pub expires_at: Timestamp,
}
/// Both parties signed.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub contract: Box<Contract>,
}
/// The escrow is locked and the work under way.
#[derive(Clone, Debug)]
pub struct Running {
    pub contract: Box<Contract>,
    pub started_at: Timestamp,
}
/// The provider published its receipt.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub contract: Box<Contract>,
    pub receipt: Box<Receipt>,
}
/// A quorum of the committee judged it.
#[derive(Clone, Debug)]
pub struct Verified {
    pub contract: Box<Contract>,
    pub receipt: Option<Box<Receipt>>,
    pub cert: Box<QuorumCert>,
    pub outcome: Outcome,
}
/// The escrow was split.
#[derive(Clone, Debug)]
pub struct Settled {
    pub outcome: Outcome,
    pub payout: Box<Payout>,
}
#[derive(Clone, Debug)]
pub struct Rejected {
    pub reason: RejectReason,
}
#[derive(Clone, Debug)]
pub struct Expired;
/// Failed; the refund arrives with the committee's settlement.
#[derive(Clone, Debug)]
pub struct Failed {
    pub reason: FailReason,
    pub contract: Option<Box<Contract>>,
    pub refund: Option<Box<Payout>>,
}
/// A party disputed; verification is forced.
#[derive(Clone, Debug)]
pub struct Disputed {
    pub contract: Box<Contract>,
    pub receipt: Option<Box<Receipt>>,
    pub dispute: Box<Dispute>,
}
/// The committee ruled on the dispute and the escrow was split.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub outcome: Outcome,
    pub payout: Box<Payout>,
}

/// A deal in state `S`; see the module docs.
#[derive(Clone, Debug)]
pub struct Deal<S> {
    /// Before acceptance the proposal's id, then the contract id (the terms' body hash).
    pub id: Hash32,
    pub terms: ContractTerms,
    /// Each phase entered, with when.
    pub history: Vec<(Timestamp, Phase)>,
    pub state: S,
}

impl<S> Deal<S> {
    fn to<T>(self, now: Timestamp, phase: Phase, state: T) -> Deal<T> {
        let mut history = self.history;
        history.push((now, phase));
        Deal {
            id: self.id,
            terms: self.terms,
            history,
            state,
        }
    }
}

impl Deal<Proposed> {
    /// A new proposal (made or received) of `terms`, with the other party.
    pub fn propose(
        now: Timestamp,
        id: Hash32,
        terms: ContractTerms,
        counterparty: AccountId,
        expires_at: Timestamp,
    ) -> Self {
        Deal {
            id,
            terms,
            history: vec![(now, Phase::Proposed)],
            state: Proposed {
                counterparty,
                expires_at,
            },
        }
    }
    /// Both signed: from here on the id is the contract id.
    pub fn accept(self, now: Timestamp, contract: Contract) -> Deal<Accepted> {
        let mut d = self.to(
            now,
            Phase::Accepted,
            Accepted {
                contract: Box::new(contract),
            },
        );
        d.id = d.state.contract.body_hash();
        d
    }
    pub fn reject(self, now: Timestamp, reason: RejectReason) -> Deal<Rejected> {
        self.to(now, Phase::Rejected, Rejected { reason })
    }
    pub fn expire(self, now: Timestamp) -> Deal<Expired> {
        self.to(now, Phase::Expired, Expired)
    }
}

/// The phases with a signed contract and no receipt yet: the deal may still fail
/// or be disputed from either.
pub trait Live {
    fn contract(&self) -> &Contract;
}
impl Live for Accepted {
    fn contract(&self) -> &Contract {
        &self.contract
    }
}
impl Live for Running {
    fn contract(&self) -> &Contract {
        &self.contract
    }
}

impl<S: Live> Deal<S> {
    pub fn fail(self, now: Timestamp, reason: FailReason) -> Deal<Failed> {
        let contract = Some(Box::new(self.state.contract().clone()));
        self.to(
            now,
            Phase::Failed,
            Failed {
                reason,
                contract,
                refund: None,
            },
        )
    }
    pub fn dispute(self, now: Timestamp, dispute: Dispute) -> Deal<Disputed> {
        let contract = Box::new(self.state.contract().clone());
        self.to(
            now,
            Phase::Disputed,
            Disputed {
                contract,
                receipt: None,
                dispute: Box::new(dispute),
            },
        )
    }
}

impl Deal<Accepted> {
    pub fn start(self, now: Timestamp) -> Deal<Running> {
        let contract = self.state.contract.clone();
        self.to(
            now,
            Phase::Running,
            Running {
                contract,
                started_at: now,
            },
        )
    }
}

impl Deal<Running> {
    pub fn deliver(self, now: Timestamp, receipt: Receipt) -> Deal<Delivered> {
        let contract = self.state.contract.clone();
        self.to(
            now,
            Phase::Delivered,
            Delivered {
                contract,
                receipt: Box::new(receipt),
            },
        )
    }
}

impl Deal<Delivered> {
    pub fn verify(self, now: Timestamp, cert: QuorumCert, outcome: Outcome) -> Deal<Verified> {
        let Delivered { contract, receipt } = self.state.clone();
        self.to(
            now,
            Phase::Verified,
            Verified {
                contract,
                receipt: Some(receipt),
                cert: Box::new(cert),
                outcome,
            },
        )
    }
    pub fn dispute(self, now: Timestamp, dispute: Dispute) -> Deal<Disputed> {
        let Delivered { contract, receipt } = self.state.clone();
        self.to(
            now,
            Phase::Disputed,
            Disputed {
                contract,
                receipt: Some(receipt),
                dispute: Box::new(dispute),
            },
        )
    }
}

impl Deal<Verified> {
    pub fn settle(self, now: Timestamp, payout: Payout) -> Deal<Settled> {
        let outcome = self.state.outcome;
        self.to(
            now,
            Phase::Settled,
            Settled {
                outcome,
                payout: Box::new(payout),
            },
        )
    }
    pub fn dispute(self, now: Timestamp, dispute: Dispute) -> Deal<Disputed> {
        let contract = self.state.contract.clone();
        let receipt = self.state.receipt.clone();
        self.to(
            now,
            Phase::Disputed,
            Disputed {
                contract,
                receipt,
                dispute: Box::new(dispute),
            },
        )
    }
}

impl Deal<Disputed> {
    pub fn resolve(self, now: Timestamp, outcome: Outcome, payout: Payout) -> Deal<Resolved> {
        self.to(
            now,
            Phase::Resolved,
            Resolved {
                outcome,
                payout: Box::new(payout),
            },
        )
    }
}

impl Deal<Failed> {
    /// Record the refund the committee settled (the deal stays failed).
    pub fn refunded(&mut self, payout: Payout) {
        self.state.refund = Some(Box::new(payout));
    }
}

/// A refused transition, with the deal handed back unchanged.
#[derive(Clone, Debug)]
pub struct IllegalTransition {
    pub deal: Box<AnyDeal>,
    pub error: LifecycleError,
}

/// A deal in any state, for engines that keep many.
#[derive(Clone, Debug)]
pub enum AnyDeal {
    Proposed(Deal<Proposed>),
    Accepted(Deal<Accepted>),
    Running(Deal<Running>),
    Delivered(Deal<Delivered>),
    Verified(Deal<Verified>),
    Settled(Deal<Settled>),
    Rejected(Deal<Rejected>),
    Expired(Deal<Expired>),
    Failed(Deal<Failed>),
    Disputed(Deal<Disputed>),
    Resolved(Deal<Resolved>),
}

macro_rules! each {
    ($self:expr, $d:ident => $e:expr) => {
        match $self {
            AnyDeal::Proposed($d) => $e,
            AnyDeal::Accepted($d) => $e,
            AnyDeal::Running($d) => $e,
            AnyDeal::Delivered($d) => $e,
            AnyDeal::Verified($d) => $e,
            AnyDeal::Settled($d) => $e,
            AnyDeal::Rejected($d) => $e,
            AnyDeal::Expired($d) => $e,
            AnyDeal::Failed($d) => $e,
            AnyDeal::Disputed($d) => $e,
            AnyDeal::Resolved($d) => $e,
        }
    };
}

impl AnyDeal {
    pub fn phase(&self) -> Phase {
        match self {
            AnyDeal::Proposed(_) => Phase::Proposed,
            AnyDeal::Accepted(_) => Phase::Accepted,
            AnyDeal::Running(_) => Phase::Running,
            AnyDeal::Delivered(_) => Phase::Delivered,
            AnyDeal::Verified(_) => Phase::Verified,
            AnyDeal::Settled(_) => Phase::Settled,
            AnyDeal::Rejected(_) => Phase::Rejected,
            AnyDeal::Expired(_) => Phase::Expired,
            AnyDeal::Failed(_) => Phase::Failed,
            AnyDeal::Disputed(_) => Phase::Disputed,
            AnyDeal::Resolved(_) => Phase::Resolved,
        }
    }
    pub fn id(&self) -> Hash32 {
        each!(self, d => d.id)
    }
    pub fn terms(&self) -> &ContractTerms {
        each!(self, d => &d.terms)
    }
    pub fn history(&self) -> &[(Timestamp, Phase)] {
        each!(self, d => &d.history)
    }
    /// The signed contract, once there is one.
    pub fn contract(&self) -> Option<&Contract> {
        match self {
            AnyDeal::Accepted(d) => Some(&d.state.contract),
            AnyDeal::Running(d) => Some(&d.state.contract),
            AnyDeal::Delivered(d) => Some(&d.state.contract),
            AnyDeal::Verified(d) => Some(&d.state.contract),
            AnyDeal::Disputed(d) => Some(&d.state.contract),
            AnyDeal::Failed(d) => d.state.contract.as_deref(),
            _ => None,
        }
    }

    /// Apply an event; an illegal one is refused and the deal handed back as it was.
    pub fn apply(self, now: Timestamp, event: DealEvent) -> Result<AnyDeal, IllegalTransition> {
        use AnyDeal as A;
        use DealEvent as E;
        Ok(match (self, event) {
            (A::Proposed(d), E::Accept(c)) => A::Accepted(d.accept(now, *c)),
            (A::Proposed(d), E::Reject(r)) => A::Rejected(d.reject(now, r)),
            (A::Proposed(d), E::Expire) => A::Expired(d.expire(now)),
            (A::Accepted(d), E::Start) => A::Running(d.start(now)),
            (A::Accepted(d), E::Fail(r)) => A::Failed(d.fail(now, r)),
            (A::Accepted(d), E::Dispute(x)) => A::Disputed(d.dispute(now, *x)),
            (A::Running(d), E::Deliver(r)) => A::Delivered(d.deliver(now, *r)),
            (A::Running(d), E::Fail(r)) => A::Failed(d.fail(now, r)),
            (A::Running(d), E::Dispute(x)) => A::Disputed(d.dispute(now, *x)),
            (A::Delivered(d), E::Verify(c, o)) => A::Verified(d.verify(now, *c, o)),
            (A::Delivered(d), E::Dispute(x)) => A::Disputed(d.dispute(now, *x)),
            (A::Verified(d), E::Settle(p)) => A::Settled(d.settle(now, *p)),
            (A::Verified(d), E::Dispute(x)) => A::Disputed(d.dispute(now, *x)),
            (A::Disputed(d), E::Resolve(o, p)) => A::Resolved(d.resolve(now, o, *p)),
            (A::Failed(mut d), E::Settle(p)) => {
                d.refunded(*p);
                A::Failed(d)
            }
            (deal, event) => {
                let err = LifecycleError::Illegal {
                    deal: deal.id(),
                    from: deal.phase(),
                    event: event.name(),
                };
                return Err(IllegalTransition {
                    deal: Box::new(deal),
                    error: err,
                });
            }
        })
    }
}
