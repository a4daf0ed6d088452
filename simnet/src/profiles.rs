//! Provider profiles: the kinds of seller the paper's evaluation mixes.
//!
//! Figures are stated assumptions, not measurements: speeds are effective fp32
//! throughput of a typical instance in compute units per second (1 CU = 1 GFLOP),
//! prices are in micro-tokens per CU with ratios taken from public list prices
//! (hyperscalers dearest, GPU clouds about half, community nodes cheapest), and
//! reliability reflects the SLAs each class advertises. Edit a scenario to
//! study other mixes; these only name sensible defaults.
//!
//! **Outages** (a model): with `faults.profile_outages`, a provider is up the
//! share of time its profile advertises (`availability_bps`), in outages whose
//! mean length its profile gives (`outage_min`: minutes for a data centre,
//! hours for a home node). The crash rate follows: `(1 − a)/(a·D)` a day.
//! `faults.churn_per_day` adds crashes on top, the same for every provider.

use serde::{Deserialize, Serialize};

/// A provider profile named in a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Aws,
    Gcp,
    Azure,
    Hetzner,
    Lambda,
    Community,
}

impl Profile {
    /// Three letters, for a plot's axis.
    pub fn short(self) -> &'static str {
        match self {
            Profile::Aws => "AWS",
            Profile::Gcp => "GCP",
            Profile::Azure => "AZR",
            Profile::Hetzner => "HTZ",
            Profile::Lambda => "LMB",
            Profile::Community => "COM",
        }
    }
}

/// What a profile means for the simulation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProfileParams {
    pub label: &'static str,
    pub gpu: bool,
    /// Effective speed, CU per second.
    pub speed_cu_s: f64,
    /// List price, micro-tokens per CU.
    pub price: u64,
    /// The provider's own cost per CU (its pricing floor).
    pub cost: u64,
    pub slots: u16,
    /// Probability a job finishes without an SLA violation (late delivery).
    pub reliability: f64,
    pub bandwidth_mb_s: f64,
    /// Promised availability and accepted penalty λ, basis points.
    pub availability_bps: u16,
    pub penalty_bps: u16,
    /// Mean length of an outage, minutes (with `faults.profile_outages`).
    pub outage_min: f64,
}

impl ProfileParams {
    /// Crashes a day that keep the provider up `availability_bps` of the
    /// time with outages of `outage_min` on average: `(1 − a)/(a·D)`.
    pub fn outages_per_day(&self) -> f64 {
        let a = f64::from(self.availability_bps) / 10_000.0;
        let d = self.outage_min / 1_440.0;
        if a >= 1.0 || d <= 0.0 {
            return 0.0;
        }
        (1.0 - a) / (a * d)
    }
}

impl Profile {
    pub const ALL: [Profile; 6] = [
        Profile::Aws,
        Profile::Gcp,
        Profile::Azure,
        Profile::Hetzner,
        Profile::Lambda,
        Profile::Community,
    ];

    pub fn params(self) -> ProfileParams {
        match self {
            Profile::Aws => ProfileParams {
                label: "AWS",
                gpu: true,
                speed_cu_s: 19_500.0,
                price: 60,
                cost: 38,
                slots: 8,
                reliability: 0.995,
                bandwidth_mb_s: 1_200.0,
                availability_bps: 9_990,
                penalty_bps: 1_000,
                outage_min: 15.0,
            },
            Profile::Gcp => ProfileParams {
                label: "Google Cloud",
                gpu: true,
                speed_cu_s: 19_500.0,
                price: 56,
                cost: 36,
                slots: 8,
                reliability: 0.995,
                bandwidth_mb_s: 1_200.0,
                availability_bps: 9_990,
                penalty_bps: 1_000,
                outage_min: 15.0,
            },
            Profile::Azure => ProfileParams {
                label: "Azure",
                gpu: true,
                speed_cu_s: 19_500.0,
                price: 58,
                cost: 37,
                slots: 8,
                reliability: 0.994,
                bandwidth_mb_s: 1_000.0,
                availability_bps: 9_990,
                penalty_bps: 1_000,
                outage_min: 15.0,
            },
            Profile::Hetzner => ProfileParams {
                label: "Hetzner",
                gpu: true,
                speed_cu_s: 14_000.0,
                price: 28,
                cost: 18,
                slots: 4,
                reliability: 0.985,
                bandwidth_mb_s: 500.0,
                availability_bps: 9_950,
                penalty_bps: 1_500,
                outage_min: 30.0,
            },
            Profile::Lambda => ProfileParams {
                label: "Lambda Labs",
                gpu: true,
                speed_cu_s: 19_500.0,
                price: 32,
                cost: 21,
                slots: 4,
                reliability: 0.985,
                bandwidth_mb_s: 600.0,
                availability_bps: 9_950,
                penalty_bps: 1_500,
                outage_min: 30.0,
            },
            Profile::Community => ProfileParams {
                label: "community",
                gpu: true,
                speed_cu_s: 8_000.0,
                price: 15,
                cost: 8,
                slots: 1,
                reliability: 0.95,
                bandwidth_mb_s: 60.0,
                availability_bps: 9_500,
                penalty_bps: 2_000,
                outage_min: 120.0,
            },
        }
    }
}
