//! Fixtures the protocol's test binaries share.

#![allow(dead_code)] // each test binary uses its own part

use protocol::{DataOffer, DpParams, Hash32, JobKind, TrainTask};

/// A private data set `id` of the wine schema: 1,000 rows, 11 features,
/// 6 classes, with an owner's budget of `per_requester` ε for any one
/// requester and `left` in all.
pub fn wine_data(id: &[u8], per_requester: f64, left: f64) -> DataOffer {
    DataOffer {
        id: Hash32::of(id),
        schema: Hash32::of(b"wine"),
        rows: 1_000,
        features: 11,
        classes: 6,
        bytes: 60_000,
        epsilon_per_requester: per_requester,
        epsilon_left: left,
        delta: 1e-5,
    }
}

/// Round `round` of 3 of federated job `federation` on a [`wine_data`] set,
/// training a model of `layers` (DP-SGD, σ 1.1, clip 1).
pub fn wine_round(federation: &[u8], round: u32, layers: Vec<u32>) -> JobKind {
    JobKind::FedRound {
        federation: Hash32::of(federation),
        round,
        rounds: 3,
        rows: 1_000,
        layers,
        local_epochs: 1,
        batch: 32,
        learning_rate: 0.05,
        dp: DpParams {
            clip_norm: 1.0,
            noise_multiplier: 1.1,
        },
        seed: 1,
        task: TrainTask::Classify,
    }
}
