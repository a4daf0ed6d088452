//! How an escrow is split once a committee has judged a contract.
//!
//! The oracle engine and the ledger both use [`payout`]: the engine to emit a
//! settlement instruction, the ledger to check that a settlement entry pays exactly
//! what the quorum certificate says. Money is integer micro-tokens throughout.
//!
//! With escrow `E = P · C_max`, accepted units `C ≤ C_max`, value `V = P · C`,
//! violations `R` and penalty factor `λ` (basis points of `V` per violation):
//! - oracle fees `F = fee · E` (the requester pays for verification);
//! - if the result was delivered and correct, the provider gets
//!   `min(V − min(V, λ·R·V), E − F)`; otherwise nothing;
//! - the requester is refunded the rest, `E − F − provider`.
//!
//! So `provider + refund + F = E` exactly, for every input (a property test says so).

use serde::{Deserialize, Serialize};

use crate::identity::AccountId;
use crate::messages::{ContractTerms, Verdict};
use crate::signed::Signed;
use crate::types::{Amount, Bps, ComputeUnits, Hash32, NetworkId};

/// How long after `deadline + grace` a settlement may take to be written:
/// the dispute window, the committee's check of a late receipt (tried again
/// while the provider cannot be reached, a few minutes at most), the wait for
/// the last verdicts and a second writer's fallback delay. See
/// [`escrow_bound`].
pub const SETTLE_SLACK: crate::types::DurationMs = crate::types::DurationMs::secs(300);

/// The time by which an escrow whose contract is due at `deadline` is settled
/// (or refunded) in the ledger, whatever crashes and restarts happen, given
/// the committee's `grace` for late receipts: `deadline + grace + 5 min`. The
/// settlement is final at the checkpoint after that, within two epochs more.
/// Tests and simnet check that no escrow is open past it.
pub fn escrow_bound(
    deadline: crate::types::Timestamp,
    grace: crate::types::DurationMs,
) -> crate::types::Timestamp {
    deadline.plus(grace).plus(SETTLE_SLACK)
}

/// ⌈2k/3⌉: the seats whose matching votes a committee of `k` seats needs.
pub fn quorum(k: usize) -> usize {
    (2 * k).div_ceil(3)
}

/// The seats `signers` hold on `committee`.
///
/// A committee is its `k` seats in draw order, drawn by stake with
/// replacement: an account drawn twice holds two seats, and its one vote
/// counts twice. So splitting a stake over several accounts wins no more
/// seats than holding it in one. Each distinct signer counts once.
pub fn seats<'a>(
    committee: &[AccountId],
    signers: impl IntoIterator<Item = &'a AccountId>,
) -> usize {
    let mut seen: Vec<&AccountId> = Vec::new();
    let mut n = 0;
    for s in signers {
        if !seen.contains(&s) {
            seen.push(s);
            n += committee.iter().filter(|m| *m == s).count();
        }
    }
    n
}

/// Whether `signers` hold a quorum of `committee`'s seats.
pub fn has_quorum<'a>(
    committee: &[AccountId],
    signers: impl IntoIterator<Item = &'a AccountId>,
) -> bool {
    !committee.is_empty() && seats(committee, signers) >= quorum(committee.len())
}

/// The distinct accounts on a committee, in draw order (whom to send to).
pub fn members(committee: &[AccountId]) -> Vec<AccountId> {
    let mut out: Vec<AccountId> = Vec::with_capacity(committee.len());
    for m in committee {
        if !out.contains(m) {
            out.push(*m);
        }
    }
    out
}

/// What the committee agreed on (the verdict without who signed it).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Outcome {
    pub delivered: bool,
    pub result_ok: bool,
    pub sla_ok: bool,
    pub violations: u32,
    pub units: ComputeUnits,
}

impl Outcome {
    pub fn of(v: &Verdict) -> Self {
        Outcome {
            delivered: v.delivered,
            result_ok: v.result_ok,
            sla_ok: v.sla_ok,
            violations: v.violations,
            units: v.units,
        }
    }

    /// What verdicts must agree on to count together: delivery, the result
    /// and the units. Members may count SLA violations differently (each
    /// times a receipt's arrival and its own probes), and a quorum that
    /// agrees on the rest settles with the median of their counts
    /// ([`Outcome::combine`]). Requiring equal counts too left a committee
    /// split on them (a receipt arriving around the deadline) with no quorum
    /// and the escrow locked for good.
    pub fn key(&self) -> (bool, bool, ComputeUnits) {
        (self.delivered, self.result_ok, self.units)
    }

    /// The outcome of verdicts that agree on [`Outcome::key`]: their lower
    /// median count of violations (SLA met if it is 0). `None` if empty.
    pub fn combine(group: &[Outcome]) -> Option<Outcome> {
        let first = group.first()?;
        let mut counts: Vec<u32> = group.iter().map(|o| o.violations).collect();
        counts.sort_unstable();
        let violations = counts[(counts.len() - 1) / 2];
        Some(Outcome {
            sla_ok: violations == 0,
            violations,
            ..*first
        })
    }
}

/// Signed verdicts on one contract from members of one epoch's committee.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct QuorumCert {
    pub contract: Hash32,
    pub epoch: u64,
    pub verdicts: Vec<Signed<Verdict>>,
}

/// Why a quorum certificate does not hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuorumError {
    #[error("verdict {index}: {source}")]
    BadVerdict {
        index: usize,
        #[source]
        source: crate::signed::SignatureError,
    },
    #[error("verdict {index} is about another contract or epoch")]
    Mismatch { index: usize },
    #[error("verdict {index} is by {oracle:?}, who is not on the committee")]
    NotMember { index: usize, oracle: AccountId },
    #[error("verdict {index} repeats oracle {oracle:?}")]
    Duplicate { index: usize, oracle: AccountId },
    #[error("{got} matching verdicts, need {need}")]
    NoQuorum { got: usize, need: usize },
}

impl QuorumCert {
    /// Check signatures and membership, and return the outcome at least
    /// ⌈2k/3⌉ members agree on, with the members who signed it (sorted).
    pub fn check(
        &self,
        network: &NetworkId,
        committee: &[AccountId],
    ) -> Result<(Outcome, Vec<AccountId>), QuorumError> {
        let mut seen: Vec<AccountId> = Vec::new();
        let mut votes: Vec<(Outcome, Vec<(AccountId, Outcome)>)> = Vec::new();
        for (index, sv) in self.verdicts.iter().enumerate() {
            let v = sv
                .verify(network)
                .map_err(|source| QuorumError::BadVerdict { index, source })?;
            if v.contract != self.contract || v.epoch != self.epoch || v.oracle != sv.signer {
                return Err(QuorumError::Mismatch { index });
            }
            if !committee.contains(&v.oracle) {
                return Err(QuorumError::NotMember {
                    index,
                    oracle: v.oracle,
                });
            }
            if seen.contains(&v.oracle) {
                return Err(QuorumError::Duplicate {
                    index,
                    oracle: v.oracle,
                });
            }
            seen.push(v.oracle);
            let o = Outcome::of(&v);
            match votes.iter_mut().find(|(x, _)| x.key() == o.key()) {
                Some((_, who)) => who.push((v.oracle, o)),
                None => votes.push((o, vec![(v.oracle, o)])),
            }
        }
        let need = quorum(committee.len());
        let best = votes
            .into_iter()
            .max_by_key(|(_, who)| seats(committee, who.iter().map(|(a, _)| a)));
        match best {
            Some((_, group))
                if seats(committee, group.iter().map(|(a, _)| a)) >= need && need > 0 =>
            {
                let outcomes: Vec<Outcome> = group.iter().map(|(_, o)| *o).collect();
                let o =
                    Outcome::combine(&outcomes).ok_or(QuorumError::NoQuorum { got: 0, need })?;
                let mut who: Vec<AccountId> = group.into_iter().map(|(a, _)| a).collect();
                who.sort();
                Ok((o, who))
            }
            Some((_, group)) => Err(QuorumError::NoQuorum {
                got: seats(committee, group.iter().map(|(a, _)| a)),
                need,
            }),
            None => Err(QuorumError::NoQuorum { got: 0, need }),
        }
    }
}

/// The split of one escrow.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Payout {
    pub escrow: Amount,
    pub provider: Amount,
    pub refund: Amount,
    pub penalty: Amount,
    /// Oracle fees, one entry per oracle in the quorum (sorted by account).
    pub fees: Vec<(AccountId, Amount)>,
}

impl Payout {
    /// Sum of everything paid out; equals `escrow`.
    pub fn total(&self) -> Option<Amount> {
        let mut t = self.provider.checked_add(self.refund)?;
        for (_, f) in &self.fees {
            t = t.checked_add(*f)?;
        }
        Some(t)
    }
}

/// Split the escrow of `terms` by the rule in the module docs. `oracles` are the
/// quorum members who share the fee `fee` (basis points of the escrow); the
/// remainder of an uneven split goes to the first. `None` if the terms' escrow
/// overflows.
pub fn payout(
    terms: &ContractTerms,
    outcome: &Outcome,
    fee: Bps,
    oracles: &[AccountId],
) -> Option<Payout> {
    let escrow = terms.escrow()?;
    let fee_total = if oracles.is_empty() {
        Amount::ZERO
    } else {
        fee.of(escrow)
    };
    let units = ComputeUnits::from_milli(outcome.units.milli.min(terms.max_units.milli));
    let value = terms.price.cost(units)?.min(escrow);
    let per_violation = terms.sla.penalty.of(value);
    let penalty = Amount(
        per_violation
            .0
            .saturating_mul(u64::from(outcome.violations))
            .min(value.0),
    );
    let provider = if outcome.delivered && outcome.result_ok {
        value
            .saturating_sub(penalty)
            .min(escrow.saturating_sub(fee_total))
    } else {
        Amount::ZERO
    };
    let refund = escrow.saturating_sub(fee_total).saturating_sub(provider);
    let mut fees = Vec::with_capacity(oracles.len());
    if !oracles.is_empty() {
        let n = oracles.len() as u64;
        let each = fee_total.0 / n;
        let rest = fee_total.0 - each * n;
        for (i, o) in oracles.iter().enumerate() {
            fees.push((*o, Amount(each + if i == 0 { rest } else { 0 })));
        }
    }
    Some(Payout {
        escrow,
        provider,
        refund,
        penalty: if outcome.delivered && outcome.result_ok {
            penalty
        } else {
            value
        },
        fees,
    })
}
