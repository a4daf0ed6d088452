//! A provider's pricing policy: the leader of a Stackelberg game.
//!
//! The provider moves first by posting a price `p`; requesters follow by taking or
//! leaving its offer. The leader anticipates the followers' response from what it
//! observes, and posts the price that maximizes its expected profit
//!
//! ```text
//! Π_p(p) = Σ (P_i·C_i − λ_i·R_i) − c·Σ C_i
//!        ≈ S(p) · C̄ · (p·(1 − λ·r̄) − c)
//! ```
//!
//! where
//! - `c` is its cost per compute unit and `λ·r̄` the share of contract value it
//!   expects to lose to penalties (its penalty factor times its observed violation
//!   rate);
//! - `S(p) = min(N(p) · s(p), K)` the jobs it expects to serve per period:
//!   - `N(p) = Σ_b w_b · σ((m_b − p) / τ)` the demand at price `p`: every open bid
//!     or proposal it saw is a sample `m_b` of a requester's willingness to pay (its
//!     maximum price), weighted by `w_b = 2^(−age/half_life)`; the logistic `σ`
//!     smooths the step "requester pays iff `p ≤ m_b`";
//!   - `s(p) = e^(−p/τ) / (e^(−p/τ) + Σ_j e^(−p_j/τ))` its share against the
//!     competitors' posted prices `p_j` of the same resource class: a logit model of
//!     the requesters' randomized near-best choice (the scale `τ` matches their
//!     near-best window);
//!   - `K` its capacity per period: free slots, so high utilization raises the
//!     price until demand fits what it can serve.
//!
//! **Bounded and smooth.** The best response `p*` is searched on a grid over
//! `[floor, min(ceiling, max observed willingness to pay)]`, with `floor =
//! c·(1 + min_margin)`. The posted price moves only part of the way,
//! `p ← p + α·(p* − p)`, and by at most `max_step` of itself per update. The smooth
//! demand makes the best response continuous in the competitors' prices and the
//! damping makes the iteration a contraction around the logit equilibrium, so two
//! competitors settle on a stable price instead of undercutting each other in a
//! cycle. A provider alone never posts above the highest price it has seen a
//! requester offer to pay.

use std::collections::{BTreeMap, VecDeque};

use crate::identity::AccountId;
use crate::types::{Bps, DurationMs, PricePerCu, Timestamp};

/// Parameters of the pricing policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PricingConfig {
    /// `c`: the provider's own cost per compute unit.
    pub cost: PricePerCu,
    /// The lowest margin over cost it accepts.
    pub min_margin: Bps,
    /// The highest price it ever posts.
    pub ceiling: PricePerCu,
    /// The price it starts at.
    pub initial: PricePerCu,
    /// `α`: the share of the way to the best response moved per update.
    pub smoothing: Bps,
    /// The largest relative change per update.
    pub max_step: Bps,
    /// `τ` as a share of the highest willingness to pay seen.
    pub temperature: Bps,
    /// How fast demand observations fade.
    pub half_life: DurationMs,
    /// Most demand samples kept (oldest dropped first).
    pub max_samples: usize,
    /// Grid points searched for the best response.
    pub grid: usize,
    /// How long a competitor's price counts after it was last seen.
    pub competitor_ttl: DurationMs,
    /// How far under the posted price a proposal may be and still be accepted.
    pub tolerance: Bps,
}

impl Default for PricingConfig {
    fn default() -> Self {
        PricingConfig {
            cost: PricePerCu(100),
            min_margin: Bps(500),
            ceiling: PricePerCu(1_000_000),
            initial: PricePerCu(200),
            smoothing: Bps(3_000),
            max_step: Bps(1_000),
            temperature: Bps(500),
            half_life: DurationMs::secs(3_600),
            max_samples: 256,
            grid: 48,
            competitor_ttl: DurationMs::secs(3_600),
            tolerance: Bps(1_000),
        }
    }
}

/// The most competitors' prices a provider keeps.
pub const MAX_COMPETITORS: usize = 4_096;

/// The pricing state of one provider; see the module docs.
#[derive(Clone, Debug)]
pub struct PricingPolicy {
    cfg: PricingConfig,
    price: PricePerCu,
    /// `(seen at, willingness to pay)`.
    samples: VecDeque<(Timestamp, u64)>,
    /// Ordered, so that float sums do not depend on hash order (determinism).
    competitors: BTreeMap<AccountId, (PricePerCu, Timestamp)>,
    /// When full `competitors` were last pruned.
    pruned_at: Timestamp,
    /// `K`: jobs it can take per period.
    capacity: f64,
    /// `λ·r̄`: expected share of value lost to penalties.
    penalty_share: f64,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl PricingPolicy {
    pub fn new(cfg: PricingConfig) -> Self {
        let mut p = PricingPolicy {
            cfg,
            price: cfg.initial,
            samples: VecDeque::new(),
            competitors: BTreeMap::new(),
            pruned_at: Timestamp(0),
            capacity: f64::INFINITY,
            penalty_share: 0.0,
        };
        p.price = PricePerCu(p.price.0.clamp(p.floor().0, cfg.ceiling.0.max(p.floor().0)));
        p
    }

    pub fn config(&self) -> &PricingConfig {
        &self.cfg
    }

    /// The posted price.
    pub fn price(&self) -> PricePerCu {
        self.price
    }

    /// `c·(1 + min_margin)`: never sell below this.
    pub fn floor(&self) -> PricePerCu {
        let c = self.cfg.cost.0;
        PricePerCu(c.saturating_add(self.cfg.min_margin.of(crate::types::Amount(c)).0))
    }

    /// The lowest price a proposal may carry and be accepted.
    pub fn accept_floor(&self) -> PricePerCu {
        let below = self.cfg.tolerance.of(crate::types::Amount(self.price.0)).0;
        PricePerCu(self.price.0.saturating_sub(below).max(self.floor().0))
    }

    /// A requester showed it would pay up to `max_price` (an open bid or a proposal).
    pub fn observe_demand(&mut self, now: Timestamp, max_price: PricePerCu) {
        if self.samples.len() >= self.cfg.max_samples.max(1) {
            self.samples.pop_front();
        }
        self.samples.push_back((now, max_price.0));
    }

    /// A competitor of the same class posts `price`. At most
    /// [`MAX_COMPETITORS`] are kept: a flood of offers from fresh keys does
    /// not grow the map past it (stale ones make room; new ones wait until
    /// they do), and the demand model needs no more.
    pub fn observe_competitor(&mut self, now: Timestamp, who: AccountId, price: PricePerCu) {
        if self.competitors.len() >= MAX_COMPETITORS && !self.competitors.contains_key(&who) {
            // Pruning scans them all: at most once a minute.
            if now.since(self.pruned_at) < DurationMs::secs(60) {
                return;
            }
            self.pruned_at = now;
            let ttl = self.cfg.competitor_ttl;
            self.competitors
                .retain(|_, (_, seen)| now.since(*seen) <= ttl);
            if self.competitors.len() >= MAX_COMPETITORS {
                return;
            }
        }
        self.competitors.insert(who, (price, now));
    }

    /// Jobs the provider can take per period (free slots); `∞` if unbounded.
    pub fn set_capacity(&mut self, jobs: f64) {
        self.capacity = jobs.max(0.0);
    }

    /// `λ·r̄`: the share of contract value it expects to lose to penalties.
    pub fn set_penalty_share(&mut self, share: f64) {
        self.penalty_share = share.clamp(0.0, 1.0);
    }

    /// The highest willingness to pay among the samples.
    pub fn max_willingness(&self) -> Option<PricePerCu> {
        self.samples.iter().map(|&(_, m)| m).max().map(PricePerCu)
    }

    /// Expected profit per period at price `p` (in units of `C̄`, micro-tokens).
    pub fn expected_profit(&self, now: Timestamp, p: f64) -> f64 {
        let tau = self.tau();
        let half = self.cfg.half_life.0.max(1) as f64;
        let n: f64 = self
            .samples
            .iter()
            .map(|&(t, m)| {
                let w = (-(now.since(t).0 as f64) / half * std::f64::consts::LN_2).exp();
                w * sigmoid((m as f64 - p) / tau)
            })
            .sum();
        // Softmax share, computed relative to p for numerical safety.
        let others: f64 = self
            .live_competitors(now)
            .map(|pj| (-(pj - p) / tau).exp())
            .sum();
        let share = 1.0 / (1.0 + others);
        let served = (n * share).min(self.capacity);
        served * (p * (1.0 - self.penalty_share) - self.cfg.cost.0 as f64)
    }

    fn tau(&self) -> f64 {
        let scale = self.max_willingness().map_or(self.price.0, |m| m.0).max(1) as f64;
        (self.cfg.temperature.as_f64() * scale).max(1.0)
    }

    fn live_competitors(&self, now: Timestamp) -> impl Iterator<Item = f64> + '_ {
        self.competitors
            .values()
            .filter(move |(_, seen)| now.since(*seen) <= self.cfg.competitor_ttl)
            .map(|(p, _)| p.0 as f64)
    }

    /// `p*`: the price on the grid that maximizes expected profit, or `None` without
    /// demand samples.
    pub fn best_response(&self, now: Timestamp) -> Option<PricePerCu> {
        let hi = self.max_willingness()?.0.min(self.cfg.ceiling.0);
        let lo = self.floor().0;
        if hi <= lo {
            return Some(PricePerCu(lo));
        }
        let g = self.cfg.grid.max(2);
        let mut best = (f64::NEG_INFINITY, lo);
        for k in 0..g {
            let p = lo + (hi - lo) * k as u64 / (g as u64 - 1);
            let v = self.expected_profit(now, p as f64);
            if v > best.0 {
                best = (v, p);
            }
        }
        Some(PricePerCu(best.1))
    }

    /// Move the posted price towards the best response (bounded, damped); returns
    /// the new price.
    pub fn update(&mut self, now: Timestamp) -> PricePerCu {
        self.competitors
            .retain(|_, (_, seen)| now.since(*seen) <= self.cfg.competitor_ttl);
        let Some(target) = self.best_response(now) else {
            return self.price;
        };
        let cur = self.price.0 as f64;
        let step = self.cfg.smoothing.as_f64() * (target.0 as f64 - cur);
        let max = self.cfg.max_step.as_f64() * cur.max(1.0);
        let mut next = (cur + step.clamp(-max, max)).round() as u64;
        let hi = self
            .max_willingness()
            .map_or(self.cfg.ceiling.0, |m| m.0.min(self.cfg.ceiling.0));
        next = next.min(hi).max(self.floor().0);
        self.price = PricePerCu(next);
        self.price
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monopolist_prices_within_willingness_and_above_floor() {
        let mut p = PricingPolicy::new(PricingConfig {
            initial: PricePerCu(5_000),
            ..PricingConfig::default()
        });
        for i in 0..100 {
            p.observe_demand(Timestamp(i), PricePerCu(800 + (i % 5) * 50));
        }
        for t in 0..50 {
            let price = p.update(Timestamp(100 + t));
            assert!(price.0 <= 1_000, "{price:?}");
            assert!(price >= p.floor());
        }
    }

    /// A flood of offers from fresh keys keeps at most MAX_COMPETITORS
    /// prices; known competitors still update theirs, and once the flood's
    /// go stale, new competitors get in again.
    #[test]
    fn competitors_kept_are_bounded_under_a_flood_of_fresh_keys() {
        let mut p = PricingPolicy::new(PricingConfig::default());
        let key = |i: u32| {
            let mut a = [0u8; 32];
            a[..4].copy_from_slice(&i.to_le_bytes());
            AccountId(a)
        };
        let t0 = Timestamp(1_000_000);
        for i in 0..(3 * MAX_COMPETITORS as u32) {
            p.observe_competitor(t0, key(i), PricePerCu(100));
        }
        assert_eq!(p.competitors.len(), MAX_COMPETITORS);
        p.observe_competitor(t0, key(0), PricePerCu(7));
        assert_eq!(p.competitors[&key(0)].0, PricePerCu(7));
        let later = t0.plus(p.cfg.competitor_ttl).plus(DurationMs::secs(61));
        let fresh = key(u32::MAX);
        p.observe_competitor(later, fresh, PricePerCu(9));
        assert_eq!(p.competitors.len(), 1);
        assert!(p.competitors.contains_key(&fresh));
    }
}
