//! The paper's economic measures, shared by the node (for its status pages) and
//! the simulator (for its reports), so both compute them the same way.
//!
//! - Provider profit `Π_p = Σ (P_i·C_i − λ_i·R_i)`: what a provider was paid for
//!   its contracts, the penalties already taken out, less its own running cost when
//!   one is given ([`ProviderLedger`]).
//! - Requester utility `U_r = Σ (Q_i − P_i)`: the value of each job to its
//!   requester (quality `q ∈ [0, 1]` times the job's value, its maximum price times
//!   its units) less the price actually paid ([`RequesterLedger`]).
//! - Jain's fairness index `J(x) = (Σx)² / (n·Σx²)`, 1 when every `x_i` is equal and
//!   `1/n` when one takes all ([`jain_index`]).
//!
//! Money stays integer ([`Amount`]); only the utility, which mixes money with a
//! quality score, is a float.

use crate::settlement::Payout;
use crate::types::{Amount, ComputeUnits, PricePerCu};

/// Jain's fairness index of `xs`: `(Σx)² / (n·Σx²)`. An empty or all-zero
/// sample is perfectly fair (1.0). Negative values are treated as zero.
pub fn jain_index(xs: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let (sum, sq) = xs.iter().fold((0.0, 0.0), |(s, q), &x| {
        let x = x.max(0.0);
        (s + x, q + x * x)
    });
    if n == 0.0 || sq == 0.0 {
        return 1.0;
    }
    (sum * sum) / (n * sq)
}

/// One contract's contribution to a provider's profit: `P·C − λ·R` as settled
/// (the payout's provider share), less the provider's cost of the units it ran.
/// Signed because a penalised or failed job can lose money.
pub fn contract_profit(payout: &Payout, cost_per_cu: PricePerCu, units: ComputeUnits) -> i128 {
    let cost = cost_per_cu.cost(units).unwrap_or(Amount(u64::MAX));
    i128::from(payout.provider.0) - i128::from(cost.0)
}

/// `Π_p = Σ (P_i·C_i − λ_i·R_i) − cost`: a provider's running profit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderLedger {
    /// Contracts settled.
    pub contracts: u64,
    /// `Σ P_i·C_i` before penalties (micro-tokens).
    pub revenue: u128,
    /// `Σ λ_i·R_i` taken out (micro-tokens).
    pub penalties: u128,
    /// Own cost of the units run (micro-tokens).
    pub cost: u128,
    /// Compute units (milli) run and paid.
    pub units_milli: u128,
}

impl ProviderLedger {
    /// Book one settled contract. `value` is `P·C` for the accepted units.
    pub fn record(&mut self, payout: &Payout, cost_per_cu: PricePerCu, units: ComputeUnits) {
        self.contracts += 1;
        self.revenue += u128::from(payout.provider.0) + u128::from(payout.penalty.0);
        self.penalties += u128::from(payout.penalty.0);
        self.cost += u128::from(cost_per_cu.cost(units).unwrap_or(Amount(u64::MAX)).0);
        self.units_milli += u128::from(units.milli);
    }

    /// `Π_p` in micro-tokens.
    pub fn profit(&self) -> i128 {
        self.revenue as i128 - self.penalties as i128 - self.cost as i128
    }
}

/// `U_r = Σ (Q_i − P_i)`: a requester's running utility.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequesterLedger {
    pub jobs: u64,
    /// `Σ Q_i` (micro-tokens of value).
    pub value: f64,
    /// `Σ P_i` actually paid (micro-tokens).
    pub paid: u128,
}

impl RequesterLedger {
    /// Book one settled job: `quality` in `[0, 1]` (0 for a wrong or missing
    /// result), `worth` the job's value to the requester (its max price times its
    /// units), `paid` what went to the provider and the oracles.
    pub fn record(&mut self, quality: f64, worth: Amount, paid: Amount) {
        self.jobs += 1;
        self.value += quality.clamp(0.0, 1.0) * worth.0 as f64;
        self.paid += u128::from(paid.0);
    }

    /// `U_r` in micro-tokens.
    pub fn utility(&self) -> f64 {
        self.value - self.paid as f64
    }
}

/// A requester's utility for one offer: `U = Q − P` with `Q = q·V`, `V` the job's
/// value (max price × units) and `P` the price × units, in micro-tokens.
pub fn utility(quality: f64, max_price: PricePerCu, price: PricePerCu, units: ComputeUnits) -> f64 {
    let v = max_price.cost(units).map_or(f64::MAX, |a| a.0 as f64);
    let p = price.cost(units).map_or(f64::MAX, |a| a.0 as f64);
    quality.clamp(0.0, 1.0) * v - p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_bounds() {
        assert_eq!(jain_index(&[]), 1.0);
        assert!((jain_index(&[3.0, 3.0, 3.0]) - 1.0).abs() < 1e-12);
        assert!((jain_index(&[1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn profit_and_utility() {
        let payout = Payout {
            escrow: Amount(1_000),
            provider: Amount(800),
            refund: Amount(190),
            penalty: Amount(100),
            fees: vec![],
        };
        let mut l = ProviderLedger::default();
        l.record(&payout, PricePerCu(100), ComputeUnits::from_milli(2_000));
        assert_eq!(l.profit(), 800 - 200);
        assert_eq!(
            contract_profit(&payout, PricePerCu(100), ComputeUnits::from_milli(2_000)),
            600
        );
        let mut r = RequesterLedger::default();
        r.record(0.5, Amount(2_000), Amount(810));
        assert!((r.utility() - 190.0).abs() < 1e-9);
        let u = utility(
            0.9,
            PricePerCu(1_000),
            PricePerCu(500),
            ComputeUnits::from_milli(1_000),
        );
        assert!((u - 400.0).abs() < 1e-9);
    }
}
