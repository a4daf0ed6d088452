//! Federated averaging (McMahan et al. 2017) with DP-SGD at every provider.
//!
//! Each provider holds a private shard that never leaves it. In round `t` it receives
//! the global model, trains locally with DP-SGD ([`local_update`]) and returns only
//! the difference to the global weights — already noised, so releasing it is
//! post-processing of a DP mechanism. The requester averages the updates weighted by
//! shard size ([`aggregate`]). [`fedavg`] runs the whole protocol in-process (what the
//! simulator and the tests use); on the network the same two functions run on the
//! provider and the requester.
//!
//! Privacy: every local step is a subsampled Gaussian step on that provider's shard
//! with rate q = batch/rows, so after all rounds provider i has spent
//! [`crate::dp::rdp_epsilon`]`(σ, qᵢ, stepsᵢ, δ)`, reported per provider.

use crate::backend::Backend;
use crate::dp;
use crate::error::{ComputeError, Result};
use crate::mlp::{Data, Mlp, Ops};
use crate::rng;
use crate::workload::{TrainSpec, train_steps};
use serde::{Deserialize, Serialize};

/// A FedAvg job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FedAvgSpec {
    /// Communication rounds.
    pub rounds: usize,
    /// What each provider runs per round (`epochs` = local epochs; `dp` should be set
    /// for private shards; `seed` is the job seed).
    pub local: TrainSpec,
}

/// One provider's answer for one round.
#[derive(Debug, Clone)]
pub struct LocalUpdate {
    /// `local − global` for every parameter, as a model-shaped tensor set.
    pub delta: Mlp,
    /// Rows in the provider's shard (the aggregation weight).
    pub rows: usize,
    /// Local steps taken this round.
    pub steps: u64,
    /// FLOPs spent this round.
    pub flops: u64,
}

/// Privacy and work of one provider over the whole job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderReport {
    /// Index of the shard.
    pub provider: usize,
    /// Rows in its shard.
    pub rows: usize,
    /// DP-SGD steps over all rounds.
    pub steps: u64,
    /// ε spent at the spec's δ (`None` without DP: no guarantee).
    pub epsilon: Option<f64>,
    /// FLOPs spent.
    pub flops: u64,
}

/// Result of [`fedavg`].
#[derive(Debug, Clone)]
pub struct FedAvgOutput {
    /// Final global model.
    pub model: Mlp,
    /// Per-provider privacy and work.
    pub providers: Vec<ProviderReport>,
}

/// The local seed of provider `p` in round `t`: distinct noise and shuffles for each.
pub fn local_seed(job_seed: u64, provider: usize, round: usize) -> u64 {
    let hi = rng::rand_u32(job_seed, rng::STREAM_DATA + 10, provider as u32);
    let lo = rng::rand_u32(job_seed, rng::STREAM_DATA + 11, round as u32 ^ hi);
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Runs on provider `provider`: trains the global model on its shard for one round.
pub fn local_update(
    backend: &dyn Backend,
    spec: &FedAvgSpec,
    round: usize,
    provider: usize,
    global: &Mlp,
    shard: &Data,
) -> Result<LocalUpdate> {
    let mut local_spec = spec.local.clone();
    local_spec.seed = local_seed(spec.local.seed, provider, round);
    let ops = Ops::new(backend);
    let mut model = global.clone();
    let steps = local_spec.total_steps(shard.rows);
    train_steps(&ops, &local_spec, shard, &mut model, 0, steps, |_, _, _| {
        Ok(())
    })?;
    let sub = |a: &Vec<Vec<f32>>, b: &Vec<Vec<f32>>| -> Vec<Vec<f32>> {
        a.iter()
            .zip(b)
            .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p - q).collect())
            .collect()
    };
    Ok(LocalUpdate {
        delta: Mlp {
            layers: model.layers.clone(),
            w: sub(&model.w, &global.w),
            b: sub(&model.b, &global.b),
        },
        rows: shard.rows,
        steps,
        flops: ops.flops(),
    })
}

/// Runs on the requester: `global + Σ (nᵢ/N)·deltaᵢ`.
pub fn aggregate(global: &Mlp, updates: &[LocalUpdate]) -> Result<Mlp> {
    let total: usize = updates.iter().map(|u| u.rows).sum();
    if total == 0 {
        return Err(ComputeError::Data("no updates to aggregate".into()));
    }
    let mut out = global.clone();
    for u in updates {
        if u.delta.layers != global.layers {
            return Err(ComputeError::Data(format!(
                "update has layers {:?}, model has {:?}",
                u.delta.layers, global.layers
            )));
        }
        let wgt = u.rows as f32 / total as f32;
        for (o, d) in out
            .w
            .iter_mut()
            .chain(out.b.iter_mut())
            .zip(u.delta.w.iter().chain(&u.delta.b))
        {
            for (p, q) in o.iter_mut().zip(d) {
                *p += wgt * q;
            }
        }
    }
    Ok(out)
}

/// FedAvg over `shards` (each safetensors with `x`, `y`), starting from the job
/// seed's initialization.
pub fn fedavg(backend: &dyn Backend, spec: &FedAvgSpec, shards: &[&[u8]]) -> Result<FedAvgOutput> {
    if shards.is_empty() || spec.rounds == 0 {
        return Err(ComputeError::Spec(
            "FedAvg needs ≥ 1 shard and ≥ 1 round".into(),
        ));
    }
    let data: Vec<Data> = shards
        .iter()
        .map(|s| Data::from_safetensors(s, "x", "y"))
        .collect::<Result<_>>()?;
    let mut global = Mlp::init(&spec.local.layers, spec.local.seed)?;
    let mut reports: Vec<ProviderReport> = data
        .iter()
        .enumerate()
        .map(|(i, d)| ProviderReport {
            provider: i,
            rows: d.rows,
            steps: 0,
            epsilon: None,
            flops: 0,
        })
        .collect();
    for round in 0..spec.rounds {
        let _span = tracing::info_span!("fedavg_round", round).entered();
        let updates = data
            .iter()
            .enumerate()
            .map(|(p, d)| local_update(backend, spec, round, p, &global, d))
            .collect::<Result<Vec<_>>>()?;
        for (r, u) in reports.iter_mut().zip(&updates) {
            r.steps += u.steps;
            r.flops += u.flops;
        }
        global = aggregate(&global, &updates)?;
    }
    if let Some(d) = spec.local.dp {
        for r in &mut reports {
            let q = (spec.local.batch as f64 / r.rows.max(1) as f64).min(1.0);
            r.epsilon = Some(dp::rdp_epsilon(f64::from(d.sigma), q, r.steps, d.delta));
        }
    }
    Ok(FedAvgOutput {
        model: global,
        providers: reports,
    })
}

/// The ε a data owner spends on its `rows` rows over a whole federated job
/// of `rounds` rounds of `spec` (its `epochs` the local epochs): every local
/// DP-SGD step, in every round, composed by the RDP accountant (rate
/// batch/rows). `None` without DP.
pub fn job_epsilon(spec: &TrainSpec, rows: usize, rounds: usize) -> Option<f64> {
    let d = spec.dp?;
    let q = (spec.batch as f64 / rows.max(1) as f64).min(1.0);
    let steps = spec.total_steps(rows).saturating_mul(rounds as u64);
    Some(dp::rdp_epsilon(f64::from(d.sigma), q, steps, d.delta))
}

/// The seed of round `round` at the owner of data set `dataset`: its noise
/// and batches are its own, so that no two owners (and no two rounds) share
/// noise that a requester could cancel by differencing their updates.
pub fn round_seed(job_seed: u64, dataset: &[u8; 32], federation: &[u8; 32], round: u32) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"cloudchain-fedavg-round-seed-v1");
    h.update(&job_seed.to_le_bytes());
    h.update(dataset);
    h.update(federation);
    h.update(&round.to_le_bytes());
    let b = h.finalize();
    let mut s = [0u8; 8];
    s.copy_from_slice(&b.as_bytes()[..8]);
    u64::from_le_bytes(s)
}

/// The largest L2 norm that an honest round of `spec` (DP-SGD, its `epochs`
/// the local epochs) on `rows` rows can move a model of `params`
/// parameters, but with a chance below 1e-12 a step. Each step adds
/// `lr/batch · (Σ clipped gradients + N(0, σ²C²))`: the clipped sum is at
/// most (rows in the batch) · C, the rows of a Poisson batch exceed
/// `batch + 8√batch + 22` with a chance below 1e-13, and the noise's norm
/// exceeds `σC(√params + 8)` with a chance below e^-32. Summed over the
/// steps, whatever their direction. `None` without DP (no bound holds).
pub fn update_norm_bound(spec: &TrainSpec, rows: usize, params: usize) -> Option<f64> {
    let d = spec.dp?;
    let b = spec.batch.max(1) as f64;
    let in_batch = (b + 8.0 * b.sqrt() + 22.0).min(rows.max(1) as f64);
    let c = f64::from(d.clip);
    let noise = f64::from(d.sigma) * c * ((params as f64).sqrt() + 8.0);
    let step = f64::from(spec.lr) / b * (in_batch * c + noise);
    Some(step * spec.total_steps(rows) as f64)
}

/// A quarter of the L2 norm the DP noise alone gives a round of `spec` on
/// `rows` rows of a model of `params` parameters (`lr/batch · σC` a
/// coordinate a step, over `√(steps · params)`): an honest round moves the
/// model by more (0.96 to 32 times that norm in five configurations
/// measured, from noise-dominated to gradient-dominated), a round not run
/// (the model returned as it came, or barely moved) by less. `None`
/// without DP.
pub fn update_norm_floor(spec: &TrainSpec, rows: usize, params: usize) -> Option<f64> {
    let d = spec.dp?;
    let per_step =
        f64::from(spec.lr) / spec.batch.max(1) as f64 * f64::from(d.sigma) * f64::from(d.clip);
    Some(0.25 * per_step * (spec.total_steps(rows) as f64 * params as f64).sqrt())
}

/// The L2 distance between two models of the same layers.
pub fn distance(a: &Mlp, b: &Mlp) -> Result<f64> {
    if a.layers != b.layers {
        return Err(ComputeError::Data(format!(
            "layers {:?} and {:?} differ",
            a.layers, b.layers
        )));
    }
    let sq: f64 =
        a.w.iter()
            .chain(&a.b)
            .zip(b.w.iter().chain(&b.b))
            .flat_map(|(x, y)| x.iter().zip(y))
            .map(|(p, q)| (f64::from(*p) - f64::from(*q)).powi(2))
            .sum();
    Ok(sq.sqrt())
}
