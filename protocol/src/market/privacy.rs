//! A data owner's privacy budgets: what each federated job spent of each
//! private data set it offers, and whether a new one fits.
//!
//! A federated job ([`JobKind::FedRound`]) states the ε it spends on a data
//! set in all its rounds (at δ); the owner counts it once per job, however
//! many rounds it serves, and takes a job only while what that requester
//! spent before plus the job's ε stays within the per-requester budget, and
//! what everyone spent (and the jobs it accepted and has not settled) plus
//! the job's ε within the total. What was spent comes from the ledger (the
//! driver hands it over, [`PrivacyBudgets::set_spent`]), so it survives
//! restarts and is the same for everyone who reads the ledger.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::identity::AccountId;
use crate::messages::{DataOffer, JobKind, JobSpec, RejectReason};
use crate::types::Hash32;

/// ε that one federated job spent on one data set, as the ledger records it,
/// and the rounds of it the owner served.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct PrivacySpend {
    pub dataset: Hash32,
    pub federation: Hash32,
    pub requester: AccountId,
    pub epsilon: f64,
    pub rounds: Vec<u32>,
}

impl PrivacySpend {
    /// What job `spec` spends, if it is a federated round with a budget.
    pub fn of(spec: &JobSpec) -> Option<PrivacySpend> {
        match (&spec.kind, spec.privacy) {
            (
                JobKind::FedRound {
                    federation, round, ..
                },
                Some(p),
            ) => Some(PrivacySpend {
                dataset: spec.dataset.hash,
                federation: *federation,
                requester: spec.requester,
                epsilon: p.epsilon,
                rounds: vec![*round],
            }),
            _ => None,
        }
    }
}

/// One federated job's spend of a data set: its requester, the ε, the
/// rounds served.
type JobSpend = (AccountId, f64, BTreeSet<u32>);

/// Per data set, per federated job: who spent how much, in which rounds.
#[derive(Clone, Debug, Default)]
pub struct PrivacyBudgets {
    spent: BTreeMap<Hash32, BTreeMap<Hash32, JobSpend>>,
}

impl PrivacyBudgets {
    /// What the ledger says was spent (every spend of this owner's data sets).
    pub fn set_spent(&mut self, spends: impl IntoIterator<Item = PrivacySpend>) {
        self.spent.clear();
        for s in spends {
            let e = self
                .spent
                .entry(s.dataset)
                .or_default()
                .entry(s.federation)
                .or_insert((s.requester, 0.0, BTreeSet::new()));
            e.1 = e.1.max(s.epsilon);
            e.2.extend(s.rounds);
        }
    }

    /// ε spent on `dataset`: by everyone, and by `requester` (`None`: by
    /// no one in particular).
    fn spent(&self, dataset: &Hash32, requester: Option<&AccountId>) -> f64 {
        self.spent.get(dataset).map_or(0.0, |m| {
            m.values()
                .filter(|(r, ..)| requester.is_none_or(|q| q == r))
                .map(|(_, e, _)| e)
                .sum()
        })
    }

    fn counted(&self, s: &PrivacySpend) -> bool {
        self.spent
            .get(&s.dataset)
            .is_some_and(|m| m.contains_key(&s.federation))
    }

    /// What is left of `d`'s total budget (its `epsilon_left` is the total
    /// the owner set), less what `pending` jobs (accepted, not yet on the
    /// ledger) will spend.
    pub fn left<'a>(&self, d: &DataOffer, pending: impl Iterator<Item = &'a JobSpec>) -> f64 {
        let reserved: f64 = self
            .uncounted(pending)
            .iter()
            .filter(|s| s.dataset == d.id)
            .map(|s| s.epsilon)
            .sum();
        (d.epsilon_left - self.spent(&d.id, None) - reserved).max(0.0)
    }

    /// Spends of `pending` jobs not on the ledger yet, one per federation.
    fn uncounted<'a>(&self, pending: impl Iterator<Item = &'a JobSpec>) -> Vec<PrivacySpend> {
        let mut seen = BTreeSet::new();
        pending
            .filter_map(PrivacySpend::of)
            .filter(|s| !self.counted(s) && seen.insert((s.dataset, s.federation)))
            .collect()
    }

    /// Whether `spec`, a federated round on `d`, fits its budgets beside
    /// `pending` jobs; a round of a job already counted costs nothing more.
    pub fn admit<'a>(
        &self,
        d: &DataOffer,
        spec: &JobSpec,
        pending: impl Iterator<Item = &'a JobSpec>,
    ) -> Result<(), RejectReason> {
        let Some(s) = PrivacySpend::of(spec) else {
            return Err(RejectReason::Invalid("no privacy budget stated".into()));
        };
        let delta = spec.privacy.map_or(1.0, |p| p.delta);
        if delta > d.delta {
            return Err(RejectReason::Unsupported(format!(
                "δ = {delta:e} is above the owner's {:e}",
                d.delta
            )));
        }
        let pending: Vec<&JobSpec> = pending.collect();
        // Each round of a job is served once: a requester that asked for the
        // same round again (or reused the job) would get a second release
        // of the data that its stated ε does not cover.
        let round = s.rounds.first().copied().unwrap_or(0);
        let served = self
            .spent
            .get(&s.dataset)
            .and_then(|m| m.get(&s.federation))
            .is_some_and(|(.., rounds)| rounds.contains(&round))
            || pending.iter().filter_map(|p| PrivacySpend::of(p)).any(|p| {
                p.dataset == s.dataset && p.federation == s.federation && p.rounds == s.rounds
            });
        if served {
            return Err(RejectReason::Invalid(format!(
                "round {round} of this federated job was served already"
            )));
        }
        let others = self.uncounted(pending.iter().copied());
        if self.counted(&s)
            || others
                .iter()
                .any(|p| p.dataset == s.dataset && p.federation == s.federation)
        {
            return Ok(());
        }
        let mine: f64 = self.spent(&d.id, Some(&s.requester))
            + others
                .iter()
                .filter(|p| p.dataset == d.id && p.requester == s.requester)
                .map(|p| p.epsilon)
                .sum::<f64>();
        let left = self
            .left(d, pending.into_iter())
            .min(d.epsilon_per_requester - mine)
            .max(0.0);
        if s.epsilon > left {
            let micro = |e: f64| (e * 1e6).round() as u64;
            return Err(RejectReason::PrivacyBudget {
                asked_micro: micro(s.epsilon),
                left_micro: micro(left),
            });
        }
        Ok(())
    }
}
