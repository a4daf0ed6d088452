//! What a run measures, and the figures derived from it.

use std::collections::{BTreeMap, HashMap};

use protocol::accounting::jain_index;
use protocol::market::{Explanation, NoMatchReason};
use protocol::oracle::SettlementInstruction;
use protocol::{Amount, ComputeUnits, ContractTerms, Hash32, Outcome, Timestamp};
use serde::Serialize;

use crate::profiles::Profile;

/// Raw counters and samples of one run.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub scenario: String,
    pub seed: u64,
    pub days: f64,
    pub providers: usize,
    pub requesters: usize,
    pub events: u64,
    pub events_by_kind: BTreeMap<&'static str, u64>,
    pub messages: u64,
    pub partitioned_messages: u64,
    pub offers_published: u64,
    pub epochs: u64,
    pub crashes: u64,
    pub rejections: u64,
    pub escrow_failures: u64,
    pub failed: u64,
    pub bids_expired: u64,
    pub checks: u64,
    pub settle_unknown: u64,
    pub still_locked: u64,
    /// Final checkpoints the committees published.
    pub checkpoints: u64,
    /// Entries the simulation wrote to the ledger (locks, settlements, checkpoints).
    pub ledger_entries: u64,
    /// Micro-tokens the checkpoints minted as rewards, and slashing burned.
    pub minted: u64,
    pub burned: u64,
    pub no_match_reasons: BTreeMap<String, u64>,
    pub invariant_violations: Vec<String>,
    pub submitted: Vec<u64>,
    pub submitted_units: Vec<u64>,
    pub served_units: Vec<u64>,
    pub jobs_by_kind: BTreeMap<String, u64>,
    pub dp_jobs: u64,
    pub contracts: u64,
    pub settled_jobs: u64,
    pub settled_units: u64,
    pub sla_ok: u64,
    pub sla_violated: u64,
    pub wrong_caught: u64,
    pub wrong_missed: u64,
    pub caught_by_provider: HashMap<usize, (u64, u64)>,
    /// Contract → when it was made.
    pub contract_at: HashMap<Hash32, (usize, Timestamp, Timestamp)>,
    /// Submission-to-settlement latency, seconds.
    pub latency_s: Vec<f64>,
    pub provider_earned: Vec<u64>,
    /// Micro-tokens the checkpoints minted to each provider, and what a proven
    /// wrong result slashed of its bond.
    pub provider_minted: Vec<u64>,
    pub provider_slashed: Vec<u64>,
    /// Time each provider spent down (crashed, before its restart), ms.
    pub provider_down_ms: Vec<f64>,
    pub provider_jobs: Vec<u64>,
    pub provider_units: Vec<u64>,
    pub provider_busy_ms: Vec<f64>,
    pub price_changes: u64,
    pub cheaters: Vec<usize>,
    pub provider_labels: Vec<String>,
    pub provider_profiles: Vec<Profile>,
    pub provider_slots: Vec<u16>,
    pub final_prices: Vec<u64>,
    pub balances: Vec<u64>,
    /// An attack scenario's accounts (node-core driver only).
    pub attack: Option<crate::attack::AttackReport>,
}

impl Metrics {
    pub fn new(scenario: &str, seed: u64, providers: usize, requesters: usize, days: f64) -> Self {
        Metrics {
            scenario: scenario.to_string(),
            seed,
            days,
            providers,
            requesters,
            submitted: vec![0; requesters],
            submitted_units: vec![0; requesters],
            served_units: vec![0; requesters],
            provider_earned: vec![0; providers],
            provider_minted: vec![0; providers],
            provider_slashed: vec![0; providers],
            provider_down_ms: vec![0.0; providers],
            provider_jobs: vec![0; providers],
            provider_units: vec![0; providers],
            provider_busy_ms: vec![0.0; providers],
            ..Default::default()
        }
    }

    pub fn job_submitted(&mut self, r: usize, kind: &str, dp: bool, units: ComputeUnits) {
        self.submitted[r] += 1;
        self.submitted_units[r] += units.milli;
        *self.jobs_by_kind.entry(kind.to_string()).or_default() += 1;
        self.dp_jobs += u64::from(dp);
    }

    pub fn price_change(&mut self) {
        self.price_changes += 1;
    }

    /// A provider busy for `ms` from `at_ms` after the start: counted up to
    /// the end of the run only (a long job started near the end counted in
    /// full put utilization above 100 % in short runs).
    pub fn busy(&mut self, provider: usize, at_ms: f64, ms: f64) {
        let left = (self.days * 86_400_000.0 - at_ms).max(0.0);
        self.provider_busy_ms[provider] += ms.min(left);
    }

    pub fn contract_made(&mut self, r: usize, now: Timestamp, t: &ContractTerms) {
        self.contracts += 1;
        self.contract_at.insert(t.job, (r, t.spec.issued_at, now));
    }

    pub fn no_match(&mut self, reasons: &[Explanation]) {
        for e in reasons {
            let k = match e.reason {
                NoMatchReason::PriceAboveMax { .. } => "price above max",
                NoMatchReason::DeadlineInfeasible { .. } => "deadline infeasible",
                NoMatchReason::SlaBelowRequirement => "SLA below requirement",
                NoMatchReason::NoCapacity => "no capacity",
                NoMatchReason::Expired => "expired",
                NoMatchReason::Excluded => "excluded",
                NoMatchReason::NoBond => "no-bond",
                _ => "other",
            };
            *self.no_match_reasons.entry(k.to_string()).or_default() += 1;
        }
    }

    pub fn settled(&mut self, now: Timestamp, si: &SettlementInstruction, wrong: bool) {
        self.settled_outcome(now, &si.outcome, &si.terms, wrong);
    }

    /// A contract settled at `now` with outcome `o`; `wrong` if its provider
    /// returned a wrong result.
    pub fn settled_outcome(
        &mut self,
        now: Timestamp,
        o: &Outcome,
        terms: &ContractTerms,
        wrong: bool,
    ) {
        self.settled_jobs += 1;
        if o.delivered && o.result_ok {
            self.settled_units += o.units.milli;
            if let Some(&(r, issued, _)) = self.contract_at.get(&terms.job) {
                self.served_units[r] += o.units.milli.min(terms.spec.estimated_units.milli);
                self.latency_s.push(now.since(issued).as_secs_f64());
            }
        }
        // Not delivered by the deadline (plus grace) breaks the SLA too.
        if o.delivered && o.sla_ok {
            self.sla_ok += 1;
        } else {
            self.sla_violated += 1;
        }
        if wrong {
            if o.result_ok {
                self.wrong_missed += 1;
            } else {
                self.wrong_caught += 1;
            }
        }
    }

    /// The mean of paid + minted − slashed, in tokens, over the providers
    /// `which` selects (0 if none).
    fn mean_net(&self, which: impl Fn(usize) -> bool) -> f64 {
        let v: Vec<f64> = (0..self.providers)
            .filter(|&i| which(i))
            .map(|i| self.provider_net(i))
            .collect();
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    }

    /// `Σ num / Σ den` over each class's providers (`Profile::short`), from
    /// `f(i) = (num, den)` of provider `i`; 0 where `Σ den` is 0.
    fn by_class(&self, f: impl Fn(usize) -> (f64, f64)) -> BTreeMap<String, f64> {
        let mut by: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for i in 0..self.providers.min(self.provider_busy_ms.len()) {
            let class = self
                .provider_profiles
                .get(i)
                .map_or("?", |p| p.short())
                .to_string();
            let (num, den) = f(i);
            let e = by.entry(class).or_default();
            e.0 += num;
            e.1 += den;
        }
        by.into_iter()
            .map(|(c, (num, den))| (c, if den > 0.0 { num / den } else { 0.0 }))
            .collect()
    }

    /// Provider `i`'s paid + minted − slashed, in tokens.
    pub fn provider_net(&self, i: usize) -> f64 {
        let at = |v: &[u64]| v.get(i).copied().unwrap_or(0) as f64;
        (at(&self.provider_earned) + at(&self.provider_minted) - at(&self.provider_slashed)) / 1e6
    }

    pub fn provider_paid(&mut self, p: usize, amount: Amount, units: ComputeUnits) {
        self.provider_earned[p] += amount.0;
        self.provider_jobs[p] += 1;
        self.provider_units[p] += units.milli;
    }
}

/// The figures of a run: what the report shows and the digest covers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub scenario: String,
    pub seed: u64,
    pub days: f64,
    pub providers: usize,
    pub requesters: usize,
    pub events: u64,
    /// Events by what they carried (a message's kind, a timer, a fetch, …):
    /// where a run's time goes.
    pub events_by_kind: BTreeMap<String, u64>,
    pub messages: u64,
    pub offers_published: u64,
    pub jobs_submitted: u64,
    pub contracts: u64,
    pub jobs_settled: u64,
    pub throughput_jobs_per_s: f64,
    pub throughput_cu_per_s: f64,
    pub sla_compliance: f64,
    pub utilization: f64,
    /// Utilization per provider class (`Profile::short`): where the unused
    /// capacity is.
    pub utilization_by_class: BTreeMap<String, f64>,
    /// Mean income of a provider of each class (paid plus minted minus
    /// slashed, tokens): which classes earn most (the paper's Fig. 4).
    pub income_by_class: BTreeMap<String, f64>,
    /// Share of the run each class's providers were up (crashes and outages
    /// are the only downtime).
    pub uptime_by_class: BTreeMap<String, f64>,
    pub latency_p50_s: f64,
    pub latency_p95_s: f64,
    pub latency_p99_s: f64,
    pub jain_providers: f64,
    /// Jain's index of the service ratio over all requesters.
    pub jain_requesters: f64,
    pub gini_earnings: f64,
    pub jain_by_group: Vec<(u32, f64)>,
    pub cheaters: usize,
    pub cheaters_caught: usize,
    pub wrong_results_caught: u64,
    pub wrong_results_missed: u64,
    pub no_match_reasons: BTreeMap<String, u64>,
    pub failed: u64,
    pub bids_expired: u64,
    pub escrow_failures: u64,
    pub still_locked: u64,
    pub checkpoints: u64,
    pub ledger_entries: u64,
    pub minted_tokens: f64,
    /// Tokens requesters paid providers, and proven wrong results slashed.
    pub paid_tokens: f64,
    pub slashed_tokens: f64,
    /// Paid plus minted minus slashed, per cheating and per honest provider.
    pub net_per_cheater: f64,
    pub net_per_honest: f64,
    pub invariant_violations: Vec<String>,
    pub mean_final_price: f64,
}

impl Summary {
    /// Whether cheating lost: a proven wrong result slashed bond, and the
    /// average cheater netted less than the average honest provider (paid +
    /// minted − slashed). `Err` says how it did not.
    pub fn cheating_lost(&self) -> Result<(), String> {
        if self.slashed_tokens <= 0.0 {
            return Err(format!(
                "no bond was slashed ({} wrong results caught)",
                self.wrong_results_caught
            ));
        }
        if self.net_per_cheater >= self.net_per_honest {
            return Err(format!(
                "a cheater nets {:.0} tokens, an honest provider {:.0}",
                self.net_per_cheater, self.net_per_honest
            ));
        }
        Ok(())
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Gini coefficient of non-negative values.
pub fn gini(xs: &[f64]) -> f64 {
    let n = xs.len();
    let sum: f64 = xs.iter().sum();
    if n == 0 || sum <= 0.0 {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let weighted: f64 = v
        .iter()
        .enumerate()
        .map(|(i, x)| (i as f64 + 1.0) * x)
        .sum();
    (2.0 * weighted) / (n as f64 * sum) - (n as f64 + 1.0) / n as f64
}

impl Metrics {
    /// Jain's index of the service ratio (served / submitted units) among the
    /// requesters of each group of `g` (consecutive ids), averaged over groups.
    pub fn jain_for_group_size(&self, g: usize) -> f64 {
        let ratios: Vec<f64> = (0..self.requesters)
            .map(|r| {
                if self.submitted_units[r] == 0 {
                    1.0
                } else {
                    self.served_units[r] as f64 / self.submitted_units[r] as f64
                }
            })
            .collect();
        let groups: Vec<f64> = ratios
            .chunks(g.max(1))
            .filter(|c| c.len() == g.max(1))
            .map(jain_index)
            .collect();
        if groups.is_empty() {
            return jain_index(&ratios);
        }
        groups.iter().sum::<f64>() / groups.len() as f64
    }

    pub fn summary(&self, groups: &[u32]) -> Summary {
        let secs = self.days * 86_400.0;
        let mut lat = self.latency_s.clone();
        lat.sort_by(f64::total_cmp);
        // Work share per provider over its capacity: equal providers should get
        // equal work per slot.
        let per_slot: Vec<f64> = self
            .provider_units
            .iter()
            .zip(&self.provider_slots)
            .map(|(u, s)| *u as f64 / f64::from((*s).max(1)))
            .collect();
        let capacity_ms: f64 = self
            .provider_slots
            .iter()
            .map(|s| f64::from(*s) * secs * 1000.0)
            .sum();
        let earned: Vec<f64> = self.provider_earned.iter().map(|e| *e as f64).collect();
        let judged = self.sla_ok + self.sla_violated;
        let caught = self
            .cheaters
            .iter()
            .filter(|p| self.caught_by_provider.get(p).is_some_and(|(c, _)| *c > 0))
            .count();
        Summary {
            scenario: self.scenario.clone(),
            seed: self.seed,
            days: self.days,
            providers: self.providers,
            requesters: self.requesters,
            events: self.events,
            events_by_kind: self
                .events_by_kind
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            messages: self.messages,
            offers_published: self.offers_published,
            jobs_submitted: self.submitted.iter().sum(),
            contracts: self.contracts,
            jobs_settled: self.settled_jobs,
            throughput_jobs_per_s: self.settled_jobs as f64 / secs,
            throughput_cu_per_s: self.settled_units as f64 / 1000.0 / secs,
            sla_compliance: if judged == 0 {
                1.0
            } else {
                self.sla_ok as f64 / judged as f64
            },
            utilization: if capacity_ms > 0.0 {
                self.provider_busy_ms.iter().sum::<f64>() / capacity_ms
            } else {
                0.0
            },
            utilization_by_class: self.by_class(|i| {
                let slots = f64::from(self.provider_slots.get(i).copied().unwrap_or(0));
                (self.provider_busy_ms[i], slots * secs * 1000.0)
            }),
            income_by_class: self.by_class(|i| (self.provider_net(i), 1.0)),
            uptime_by_class: self.by_class(|i| {
                let all = secs * 1000.0;
                (
                    all - self.provider_down_ms.get(i).copied().unwrap_or(0.0),
                    all,
                )
            }),
            latency_p50_s: percentile(&lat, 0.5),
            latency_p95_s: percentile(&lat, 0.95),
            latency_p99_s: percentile(&lat, 0.99),
            jain_providers: jain_index(&per_slot),
            jain_requesters: self.jain_for_group_size(self.requesters),
            gini_earnings: gini(&earned),
            jain_by_group: groups
                .iter()
                .map(|&g| (g, self.jain_for_group_size(g as usize)))
                .collect(),
            cheaters: self.cheaters.len(),
            cheaters_caught: caught,
            wrong_results_caught: self.wrong_caught,
            wrong_results_missed: self.wrong_missed,
            no_match_reasons: self.no_match_reasons.clone(),
            failed: self.failed,
            bids_expired: self.bids_expired,
            escrow_failures: self.escrow_failures,
            still_locked: self.still_locked,
            checkpoints: self.checkpoints,
            ledger_entries: self.ledger_entries,
            minted_tokens: self.minted as f64 / 1e6,
            paid_tokens: self.provider_earned.iter().sum::<u64>() as f64 / 1e6,
            slashed_tokens: self.provider_slashed.iter().sum::<u64>() as f64 / 1e6,
            net_per_cheater: self.mean_net(|i| self.cheaters.contains(&i)),
            net_per_honest: self.mean_net(|i| !self.cheaters.contains(&i)),
            invariant_violations: self.invariant_violations.clone(),
            mean_final_price: if self.final_prices.is_empty() {
                0.0
            } else {
                self.final_prices.iter().sum::<u64>() as f64 / self.final_prices.len() as f64
            },
        }
    }

    /// A digest of everything the run produced: equal digests, equal runs.
    pub fn digest(&self) -> Hash32 {
        let mut h = blake3::Hasher::new();
        let s = self.summary(&[1, 2, 5, 10]);
        h.update(format!("{s:?}").as_bytes());
        for v in [
            &self.provider_earned,
            &self.provider_minted,
            &self.provider_slashed,
            &self.provider_units,
            &self.balances,
            &self.final_prices,
        ] {
            for x in v {
                h.update(&x.to_le_bytes());
            }
        }
        // In order of value: the order jobs are counted in is not the run's.
        let mut latency = self.latency_s.clone();
        latency.sort_by(f64::total_cmp);
        for x in &latency {
            h.update(&x.to_bits().to_le_bytes());
        }
        Hash32(*h.finalize().as_bytes())
    }
}
