//! The attack library: each `attack-*` scenario plays one attacker among the
//! providers, on node cores ([`crate::cores`]), against the honest providers
//! of the same hardware, and [`run_seeds`] runs it on many seeds.
//!
//! - `attack-lazy`: three providers skip 10 %, 50 % and 90 % of each job's
//!   work and fake the rest of the result.
//! - `attack-units`: a provider does the work and claims the contract's
//!   whole `max_units`, where requesters' estimates leave a margin over the
//!   measure.
//! - `attack-self-deal` (and `attack-self-deal-split`): a provider buys its
//!   own compute through a second key, to farm the epoch's mint; the split
//!   variant spreads one provider's bond and slots over several keys.
//! - `attack-flood`: 100,000 fake contracts, each with a fake receipt,
//!   between made-up keys.
//! - `attack-whitewash`: a lazy provider that, once caught and slashed,
//!   carries on under a fresh bonded key.
//!
//! An attacker's **net** is what its keys were paid by requesters, plus what
//! they minted, less what was slashed, less what its compute cost (its
//! profile's cost per CU for the work it really did); a self-dealer's buying
//! key adds what it spent. An honest provider's net is the same sum, averaged
//! over the honest providers of the attacker's profile. Every seed must show
//! ([`AttackReport::failures`]):
//!
//! - every attacker's net below the honest provider's;
//! - the lazy and unit attackers at a net loss;
//! - no escrow open past its bound (every real escrow settled or refunded),
//!   and the ledger's other invariants;
//! - no honest provider slashed.

use serde::Serialize;

use crate::metrics::Metrics;
use crate::scenario::{AttackKind, Scenario};

/// One attacker: its keys and what they came to.
#[derive(Debug, Clone, Serialize)]
pub struct Attacker {
    pub label: String,
    /// Its provider keys (indices among the providers).
    pub keys: Vec<usize>,
    /// Paid by requesters + minted − slashed over its keys, and for a
    /// self-dealer what its buying key spent (negative) or kept, in tokens.
    pub tokens: f64,
    /// What its compute cost, in tokens.
    pub cost: f64,
    /// What its keys minted (part of `tokens`).
    pub minted: f64,
    /// Its wrong results caught, and settled jobs.
    pub caught: u64,
    pub jobs: u64,
    /// A self-dealer: the jobs its keys ran for its own buyer, and what
    /// their compute cost, in tokens (part of `jobs` and `cost`).
    pub bought_jobs: u64,
    pub bought_cost: f64,
}

impl Attacker {
    /// Tokens less cost.
    pub fn net(&self) -> f64 {
        self.tokens - self.cost
    }
}

/// What one run of an attack scenario came to.
#[derive(Debug, Clone, Serialize)]
pub struct AttackReport {
    pub kind: AttackKind,
    pub attackers: Vec<Attacker>,
    /// The mean honest provider of the attackers' profile: tokens and cost.
    pub honest_tokens: f64,
    pub honest_cost: f64,
    /// Honest providers (of any profile) that lost bond to a slash.
    pub honest_slashed: usize,
    /// The run's broken invariants (an escrow open past its bound among them).
    pub invariant_violations: Vec<String>,
    /// Flood: fake contracts sent.
    pub fakes: u64,
}

impl AttackReport {
    /// The mean honest provider's net.
    pub fn honest_net(&self) -> f64 {
        self.honest_tokens - self.honest_cost
    }

    /// What this run breaks of the library's rules; empty when the attack
    /// lost as it must.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let honest = self.honest_net();
        for a in &self.attackers {
            if a.net() >= honest {
                out.push(format!(
                    "{} nets {:.1} tokens, not less than an honest provider's {honest:.1}",
                    a.label,
                    a.net()
                ));
            }
            // An attacker no requester chose nets 0: it did not gain.
            if matches!(self.kind, AttackKind::Lazy | AttackKind::Units) && a.net() > 0.0 {
                out.push(format!(
                    "{} is not at a net loss: {:.1} tokens",
                    a.label,
                    a.net()
                ));
            }
        }
        if self.honest_slashed > 0 {
            out.push(format!(
                "{} honest providers were slashed",
                self.honest_slashed
            ));
        }
        out.extend(self.invariant_violations.iter().cloned());
        out
    }
}

/// The attacker keys' and honest providers' accounts, from a finished run's
/// metrics and each provider's compute cost (µ-tokens). `buyer_delta` is what
/// a self-dealer's buying key gained (negative: spent), µ-tokens.
pub(crate) fn report(
    sc: &Scenario,
    m: &Metrics,
    cost: &[f64],
    buyer_delta: Option<i128>,
    bought: Option<(u64, f64)>,
    fakes: u64,
) -> Option<AttackReport> {
    let a = sc.attack.as_ref()?;
    let keys = sc.attack_keys();
    let tokens = |i: usize| {
        (m.provider_earned[i] as f64 + m.provider_minted[i] as f64 - m.provider_slashed[i] as f64)
            / 1e6
    };
    let line = |label: String, ks: &[usize]| Attacker {
        label,
        keys: ks.to_vec(),
        tokens: ks.iter().map(|&i| tokens(i)).sum(),
        cost: ks.iter().map(|&i| cost[i]).sum::<f64>() / 1e6,
        minted: ks.iter().map(|&i| m.provider_minted[i] as f64).sum::<f64>() / 1e6,
        caught: ks
            .iter()
            .map(|i| m.caught_by_provider.get(i).map_or(0, |c| c.0))
            .sum(),
        jobs: ks.iter().map(|&i| m.provider_jobs[i]).sum(),
        bought_jobs: 0,
        bought_cost: 0.0,
    };
    let attackers = match a.kind {
        AttackKind::Lazy => keys
            .iter()
            .zip(&a.skip)
            .map(|(&k, f)| line(format!("lazy, skips {:.0} %", f * 100.0), &[k]))
            .collect(),
        AttackKind::Units => vec![line(
            format!("claims {:.1}× the units", a.estimate_margin),
            &keys,
        )],
        AttackKind::SelfDeal => {
            let mut l = line(
                format!(
                    "self-dealer, {} key{}",
                    keys.len(),
                    if keys.len() == 1 { "" } else { "s" }
                ),
                &keys,
            );
            l.tokens += buyer_delta.unwrap_or(0) as f64 / 1e6;
            if let Some((jobs, cost)) = bought {
                l.bought_jobs = jobs;
                l.bought_cost = cost / 1e6;
            }
            vec![l]
        }
        AttackKind::Whitewash => vec![line(format!("whitewasher, {} keys", keys.len()), &keys)],
        AttackKind::Flood => vec![Attacker {
            label: format!("flooder, {fakes} fakes"),
            keys: Vec::new(),
            tokens: 0.0,
            cost: 0.0,
            minted: 0.0,
            caught: 0,
            jobs: 0,
            bought_jobs: 0,
            bought_cost: 0.0,
        }],
    };
    let honest: Vec<usize> = (0..m.providers)
        .filter(|i| m.provider_profiles.get(*i) == Some(&a.profile))
        .filter(|i| !keys.contains(i) && !m.cheaters.contains(i))
        .collect();
    let mean = |f: &dyn Fn(usize) -> f64| {
        if honest.is_empty() {
            0.0
        } else {
            honest.iter().map(|&i| f(i)).sum::<f64>() / honest.len() as f64
        }
    };
    let honest_slashed = (0..m.providers)
        .filter(|i| !keys.contains(i) && !m.cheaters.contains(i))
        .filter(|&i| m.provider_slashed[i] > 0)
        .count();
    Some(AttackReport {
        kind: a.kind,
        attackers,
        honest_tokens: mean(&tokens),
        honest_cost: mean(&|i| cost[i]) / 1e6,
        honest_slashed,
        invariant_violations: m.invariant_violations.clone(),
        fakes,
    })
}

/// Run an attack scenario on `seeds`, on up to `threads` threads; `done` is
/// told each seed as it ends. Results come back in seed order (see
/// [`crate::report::run_parallel`]).
pub fn run_seeds(
    sc: &Scenario,
    seeds: &[u64],
    threads: usize,
    done: impl Fn(u64) + Sync,
) -> Vec<(u64, Metrics)> {
    crate::report::run_parallel(
        seeds,
        threads,
        |&seed| {
            let m = crate::report::run_one(sc, seed, None, None, |_| {});
            done(seed);
            (seed, m)
        },
        |_| {},
    )
}

/// The table of a many-seed run: per attacker, its net against the honest
/// provider's (mean, lowest and highest over the seeds), and the seeds that
/// broke a rule.
pub fn table(runs: &[(u64, AttackReport)]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let Some((_, first)) = runs.first() else {
        return out;
    };
    let stats = |v: &[f64]| {
        let n = v.len().max(1) as f64;
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (v.iter().sum::<f64>() / n, lo, hi)
    };
    let _ = writeln!(
        out,
        "{:<28} {:>30} {:>30} {:>9}",
        "attacker (net tokens)", "attacker: mean [min, max]", "honest: mean [min, max]", "caught"
    );
    let honest: Vec<f64> = runs.iter().map(|(_, r)| r.honest_net()).collect();
    let (hm, hl, hh) = stats(&honest);
    for (k, a) in first.attackers.iter().enumerate() {
        let nets: Vec<f64> = runs
            .iter()
            .filter_map(|(_, r)| r.attackers.get(k).map(Attacker::net))
            .collect();
        let caught: u64 = runs
            .iter()
            .filter_map(|(_, r)| r.attackers.get(k).map(|a| a.caught))
            .sum();
        let jobs: u64 = runs
            .iter()
            .filter_map(|(_, r)| r.attackers.get(k).map(|a| a.jobs))
            .sum();
        let (m, l, h) = stats(&nets);
        let _ = writeln!(
            out,
            "{:<28} {:>30} {:>30} {:>9}",
            a.label,
            format!("{m:.1} [{l:.1}, {h:.1}]"),
            format!("{hm:.1} [{hl:.1}, {hh:.1}]"),
            format!("{caught}/{jobs}")
        );
    }
    let failed: Vec<String> = runs
        .iter()
        .filter_map(|(seed, r)| {
            let f = r.failures();
            (!f.is_empty()).then(|| format!("seed {seed}: {}", f.join("; ")))
        })
        .collect();
    let _ = writeln!(
        out,
        "{} of {} seeds held every rule",
        runs.len() - failed.len(),
        runs.len()
    );
    for f in failed {
        let _ = writeln!(out, "  {f}");
    }
    out
}
