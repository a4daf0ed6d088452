//! Workloads: what a job asks a provider to run. Inputs and outputs are safetensors
//! bytes; the output reports the FLOPs dispatched (1 compute unit = 1 GFLOP), the
//! time taken, metrics, and — for training — a hash chain committing to the weights
//! every `checkpoint_every` steps, which [`crate::verify`] challenges.
//!
//! Tensor names. Data: `x` (`[rows, features]`, f32/f64) and `y` (`[rows]` labels),
//! optionally `x_test`/`y_test`. Models ([`Mlp::to_safetensors`]): `w0, b0, w1, …`.

use crate::backend::{Backend, BackendInfo};
use crate::dp;
use crate::error::{ComputeError, Result};
pub use crate::mlp::DpConfig;
use crate::mlp::{self, Data, Labels, Mlp, Ops, Task, cost};
use crate::rng;
use crate::tensors::{self, Writer};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Rows per forward pass for inference and evaluation.
pub const EVAL_BATCH: usize = 256;

/// Most links after the start that a training job's commitment chain has: the
/// spacing of links grows with a long job ([`TrainSpec::link_every`]), so the
/// weights a provider keeps for challenges, and the index that names them,
/// stay bounded whatever the job's length.
pub const MAX_LINKS: u64 = 256;

/// Training parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    /// Layer widths: features first, classes last (e.g. `[11, 32, 6]`).
    pub layers: Vec<usize>,
    /// Passes over the data.
    pub epochs: usize,
    /// Examples per step.
    pub batch: usize,
    /// Learning rate.
    pub lr: f32,
    /// DP-SGD parameters; `None` trains without privacy.
    pub dp: Option<DpConfig>,
    /// Job seed: initialization, shuffling and DP noise all derive from it.
    pub seed: u64,
    /// Steps between weight checkpoints in the commitment chain.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// How each step's batch is drawn.
    #[serde(default)]
    pub sampling: Sampling,
    /// Classify (labels are class numbers) or regress (one real target per
    /// row, one output).
    #[serde(default)]
    pub task: Task,
}

/// How training batches are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Sampling {
    /// A seeded shuffle per epoch, cut into batches of `batch` rows (the last may be
    /// short). The usual practice; the accountant's Poisson assumption is then an
    /// approximation.
    #[default]
    Shuffle,
    /// Each row joins each step's batch independently with probability
    /// q = batch/rows (Poisson subsampling), exactly the mechanism the RDP accountant
    /// analyses. Batches vary in size (even empty: DP-SGD then releases pure noise);
    /// DP noise is divided by the expected batch size.
    Poisson,
}

fn default_checkpoint_every() -> u64 {
    20
}

impl TrainSpec {
    /// A spec with the defaults for the optional parts (no DP, checkpoints every 20
    /// steps, shuffled batches); set the public fields to change them.
    pub fn new(layers: Vec<usize>, epochs: usize, batch: usize, lr: f32, seed: u64) -> Self {
        Self {
            layers,
            epochs,
            batch,
            lr,
            dp: None,
            seed,
            checkpoint_every: default_checkpoint_every(),
            sampling: Sampling::Shuffle,
            task: Task::Classify,
        }
    }

    /// Steps per epoch for a data set of `rows` rows (the last batch may be short).
    pub fn steps_per_epoch(&self, rows: usize) -> u64 {
        rows.div_ceil(self.batch.max(1)) as u64
    }

    /// Steps of the whole job.
    pub fn total_steps(&self, rows: usize) -> u64 {
        self.steps_per_epoch(rows) * self.epochs as u64
    }

    /// Steps between links of the commitment chain on `rows` rows:
    /// `checkpoint_every`, or more for a job so long that it would otherwise
    /// have more than [`MAX_LINKS`] links.
    pub fn link_every(&self, rows: usize) -> u64 {
        self.checkpoint_every
            .max(self.total_steps(rows).div_ceil(MAX_LINKS))
            .max(1)
    }

    /// The links of the chain on `rows` rows, the start included.
    pub fn links(&self, rows: usize) -> u64 {
        self.total_steps(rows).div_ceil(self.link_every(rows)) + 1
    }

    fn validate(&self, data: &Data) -> Result<()> {
        if self.batch == 0 || self.epochs == 0 || self.checkpoint_every == 0 {
            return Err(ComputeError::Spec(
                "batch, epochs and checkpoint_every must be positive".into(),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(ComputeError::Spec(format!("learning rate {}", self.lr)));
        }
        if let Some(d) = self.dp
            && !(d.clip > 0.0 && d.sigma >= 0.0 && d.delta > 0.0 && d.delta < 1.0)
        {
            return Err(ComputeError::Spec(format!("invalid DP parameters {d:?}")));
        }
        if self.layers.first() != Some(&data.cols) {
            return Err(ComputeError::Spec(format!(
                "layers {:?} do not start with the data's {} features",
                self.layers, data.cols
            )));
        }
        let width = *self.layers.last().unwrap_or(&0);
        match &data.y {
            Labels::Classes(_) | Labels::Values(_) if data.y.task() != self.task => {
                return Err(ComputeError::Spec(format!(
                    "a {} job on {} targets",
                    self.task.name(),
                    data.y.task().name()
                )));
            }
            Labels::Classes(c) => {
                if let Some(&y) = c.iter().find(|&&y| y as usize >= width) {
                    return Err(ComputeError::Data(format!(
                        "label {y} but the model has {width} classes"
                    )));
                }
            }
            Labels::Values(_) if width != 1 => {
                return Err(ComputeError::Spec(format!(
                    "a regression model has one output; layers {:?} end with {width}",
                    self.layers
                )));
            }
            Labels::Values(_) => {}
        }
        if data.rows == 0 {
            return Err(ComputeError::Data("empty training set".into()));
        }
        Ok(())
    }

    /// The rows of training step `step` (epoch-wise shuffle keyed by the seed, or a
    /// Poisson sample keyed by seed and step). `perm` caches the epoch's permutation.
    pub fn batch_rows(
        &self,
        rows: usize,
        step: u64,
        perm: &mut Option<(u64, Vec<usize>)>,
    ) -> Vec<usize> {
        if self.sampling == Sampling::Poisson {
            // Integer threshold: exact and identical on every machine.
            let q = (self.batch as f64 / rows.max(1) as f64).min(1.0);
            let threshold = (q * 4_294_967_296.0) as u64;
            let key = rng::stream_key(self.seed ^ 0x5851_f42d_4c95_7f2d, step as u32);
            return (0..rows)
                .filter(|&r| u64::from(rng::rand_keyed(key, r as u32)) < threshold)
                .collect();
        }
        let spe = self.steps_per_epoch(rows).max(1);
        let epoch = step / spe;
        let j = (step % spe) as usize;
        if perm.as_ref().map(|p| p.0) != Some(epoch) {
            *perm = Some((
                epoch,
                rng::permutation(
                    rows,
                    self.seed,
                    rng::STREAM_SHUFFLE.wrapping_add(epoch as u32),
                ),
            ));
        }
        let p = perm.as_ref().map(|p| p.1.as_slice()).unwrap_or(&[]);
        p[j * self.batch..((j + 1) * self.batch).min(rows)].to_vec()
    }

    /// Divisor of the noised gradient sum: the expected batch size under Poisson
    /// sampling, the actual one otherwise.
    fn dp_divisor(&self, rows: usize, batch_rows: usize) -> usize {
        match self.sampling {
            Sampling::Poisson => self.batch.min(rows),
            Sampling::Shuffle => batch_rows,
        }
    }
}

/// Preprocessing operations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PreprocessOp {
    /// Zero mean, unit variance per column (outputs `mean`, `std` too).
    Standardize,
    /// Min-max scaling to [0, 1] per column (outputs `min`, `max` too).
    Normalize,
    /// Shuffle rows.
    Shuffle {
        /// Seed of the permutation.
        seed: u64,
    },
    /// Shuffle, then split into `x, y` and `x_test, y_test`.
    Split {
        /// Fraction of rows for the test set.
        test_fraction: f32,
        /// Seed of the shuffle.
        seed: u64,
    },
}

/// A job's workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkloadSpec {
    /// Train an MLP classifier.
    Train(TrainSpec),
    /// Run a model on inputs; `layers` is the expected architecture (for pricing).
    Infer {
        /// Layer widths of the model.
        layers: Vec<usize>,
    },
    /// Transform a data set.
    Preprocess {
        /// The transformation.
        op: PreprocessOp,
    },
}

/// Shape of a job's data set, enough to price it with [`flops_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataShape {
    /// Training (or input) rows.
    pub rows: usize,
    /// Features per row.
    pub features: usize,
    /// Held-out rows evaluated after training (0 if none).
    pub test_rows: usize,
}

/// One link of the checkpoint chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Steps completed when the weights were committed.
    pub step: u64,
    /// `blake3(previous hash ‖ step ‖ weights)` (the first link hashes the seed).
    pub hash: [u8; 32],
}

/// Metrics a workload reports; fields that do not apply are `None`/empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Mean training loss of each epoch (as seen during the epoch).
    pub loss_per_epoch: Vec<f64>,
    /// Mean loss on the training set after training.
    pub train_loss: Option<f64>,
    /// Accuracy on the training set after training (or on labelled inference inputs).
    pub train_accuracy: Option<f64>,
    /// Mean loss on `x_test`/`y_test`.
    pub test_loss: Option<f64>,
    /// Accuracy on `x_test`/`y_test`.
    pub test_accuracy: Option<f64>,
    /// Regression: root mean squared error and R² on the training set and on
    /// `x_test`/`y_test` (the losses above are then mean squared errors).
    #[serde(default)]
    pub train_rmse: Option<f64>,
    #[serde(default)]
    pub train_r2: Option<f64>,
    #[serde(default)]
    pub test_rmse: Option<f64>,
    #[serde(default)]
    pub test_r2: Option<f64>,
    /// ε spent (DP-SGD only), at the spec's δ.
    pub epsilon: Option<f64>,
    /// Rows processed.
    pub rows: usize,
}

impl Metrics {
    /// The scores in a line: accuracy, or RMSE and R², on the held-out rows
    /// (else on the training rows), and ε under DP-SGD; empty if none apply.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        let (on, acc, rmse, r2) = if self.test_loss.is_some() {
            ("test", self.test_accuracy, self.test_rmse, self.test_r2)
        } else {
            ("train", self.train_accuracy, self.train_rmse, self.train_r2)
        };
        if let Some(a) = acc {
            parts.push(format!("{on} accuracy {:.1}%", a * 100.0));
        }
        if let (Some(e), Some(r)) = (rmse, r2) {
            parts.push(format!("{on} RMSE {e:.4}, R² {r:.3}"));
        }
        if let Some(eps) = self.epsilon {
            parts.push(format!("ε {eps:.2}"));
        }
        parts.join(", ")
    }
}

/// What a provider returns for a workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadOutput {
    /// Result tensors (model, outputs or transformed data) as safetensors.
    pub output: Vec<u8>,
    /// FLOPs dispatched to the backend.
    pub flops: u64,
    /// Seconds the workload took on this backend.
    pub elapsed_s: f64,
    /// The backend that ran it.
    pub backend: BackendInfo,
    /// Weight-checkpoint commitment chain (training only).
    pub checkpoints: Vec<Checkpoint>,
    /// Metrics.
    pub metrics: Metrics,
    /// The checkpointed models (safetensors), one per link of `checkpoints`. The
    /// provider keeps these to answer an oracle's challenge; they are not sent.
    #[serde(skip)]
    pub checkpoint_models: Vec<Vec<u8>>,
}

impl WorkloadOutput {
    /// BLAKE3 hash of `output`, what a receipt names as the result.
    pub fn output_hash(&self) -> [u8; 32] {
        *blake3::hash(&self.output).as_bytes()
    }

    /// Compute units (1 CU = 1 GFLOP).
    pub fn compute_units(&self) -> f64 {
        self.flops as f64 / 1e9
    }
}

/// Hash of the first link: commits to the seed and the initial weights.
pub fn chain_start(seed: u64, model: &Mlp) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"cloudchain-compute-checkpoint-v1");
    h.update(&seed.to_le_bytes());
    h.update(&0u64.to_le_bytes());
    h.update(&model.commit_bytes());
    *h.finalize().as_bytes()
}

/// Hash of the next link.
pub fn chain_next(prev: &[u8; 32], step: u64, model: &Mlp) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(prev);
    h.update(&step.to_le_bytes());
    h.update(&model.commit_bytes());
    *h.finalize().as_bytes()
}

/// Runs steps `start..end` of a training job on `model` in place; returns the
/// (loss sum, rows) seen. `on_step(step_done, model)` runs after each step.
pub fn train_steps(
    ops: &Ops<'_>,
    spec: &TrainSpec,
    data: &Data,
    model: &mut Mlp,
    start: u64,
    end: u64,
    mut on_step: impl FnMut(u64, &Mlp, &mlp::StepStats) -> Result<()>,
) -> Result<()> {
    spec.validate(data)?;
    let mut perm = None;
    for step in start..end {
        let rows = spec.batch_rows(data.rows, step, &mut perm);
        let (x, y) = data.gather(&rows);
        let divisor = spec.dp_divisor(data.rows, rows.len());
        let st = model.train_step(ops, &x, &y, spec.lr, spec.dp, spec.seed, step, divisor)?;
        on_step(step + 1, model, &st)?;
    }
    Ok(())
}

struct TrainResult {
    model: Mlp,
    checkpoints: Vec<Checkpoint>,
    checkpoint_models: Vec<Vec<u8>>,
    metrics: Metrics,
}

/// A training job's progress, after each epoch.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Steps done, of `steps`.
    pub step: u64,
    pub steps: u64,
    /// Epochs done, of `epochs`.
    pub epoch: u32,
    pub epochs: u32,
    /// The mean training loss of the last epoch.
    pub loss: f64,
}

fn train(
    ops: &Ops<'_>,
    spec: &TrainSpec,
    data: &Data,
    test: Option<&Data>,
    init: Option<Mlp>,
    on_epoch: &mut dyn FnMut(Progress),
) -> Result<TrainResult> {
    spec.validate(data)?;
    let mut model = match init {
        Some(m) if m.layers == spec.layers => m,
        Some(m) => {
            return Err(ComputeError::Spec(format!(
                "initial model has layers {:?}, spec asks for {:?}",
                m.layers, spec.layers
            )));
        }
        None => Mlp::init(&spec.layers, spec.seed)?,
    };
    let total = spec.total_steps(data.rows);
    let spe = spec.steps_per_epoch(data.rows);
    let every = spec.link_every(data.rows);
    let mut checkpoints = vec![Checkpoint {
        step: 0,
        hash: chain_start(spec.seed, &model),
    }];
    let mut checkpoint_models = vec![model.to_safetensors_as(spec.task)?];
    let mut metrics = Metrics {
        rows: data.rows,
        ..Default::default()
    };
    let (mut ep_loss, mut ep_rows) = (0f64, 0usize);
    let span =
        tracing::info_span!("train", layers = ?spec.layers, steps = total, dp = spec.dp.is_some());
    let _g = span.enter();
    train_steps(ops, spec, data, &mut model, 0, total, |done, m, st| {
        ep_loss += st.loss_sum;
        ep_rows += st.rows;
        if done % spe == 0 {
            let mean = ep_loss / ep_rows.max(1) as f64;
            tracing::debug!(epoch = done / spe, loss = mean, "epoch done");
            metrics.loss_per_epoch.push(mean);
            on_epoch(Progress {
                step: done,
                steps: total,
                epoch: (done / spe).min(u64::from(u32::MAX)) as u32,
                epochs: spec.epochs.min(u32::MAX as usize) as u32,
                loss: mean,
            });
            (ep_loss, ep_rows) = (0.0, 0);
        }
        if done % every == 0 || done == total {
            let prev = checkpoints.last().map(|c| c.hash).unwrap_or([0; 32]);
            checkpoints.push(Checkpoint {
                step: done,
                hash: chain_next(&prev, done, m),
            });
            checkpoint_models.push(m.to_safetensors_as(spec.task)?);
        }
        Ok(())
    })?;
    let (tl, ta) = model.evaluate(ops, data, EVAL_BATCH)?;
    metrics.train_loss = Some(tl);
    match spec.task {
        Task::Classify => metrics.train_accuracy = Some(ta),
        Task::Regress => (metrics.train_rmse, metrics.train_r2) = (Some(tl.sqrt()), Some(ta)),
    }
    if let Some(t) = test {
        let (l, a) = model.evaluate(ops, t, EVAL_BATCH)?;
        metrics.test_loss = Some(l);
        match spec.task {
            Task::Classify => metrics.test_accuracy = Some(a),
            Task::Regress => (metrics.test_rmse, metrics.test_r2) = (Some(l.sqrt()), Some(a)),
        }
    }
    if let Some(d) = spec.dp {
        let q = (spec.batch as f64 / data.rows as f64).min(1.0);
        metrics.epsilon = Some(dp::rdp_epsilon(f64::from(d.sigma), q, total, d.delta));
    }
    Ok(TrainResult {
        model,
        checkpoints,
        checkpoint_models,
        metrics,
    })
}

fn read_test(bytes: &[u8], task: Task) -> Result<Option<Data>> {
    let st = tensors::parse(bytes)?;
    if tensors::has(&st, "x_test") {
        Ok(Some(Data::read(bytes, "x_test", "y_test", task)?))
    } else {
        Ok(None)
    }
}

/// Runs a workload. `data` holds the data set; `model` is required for
/// [`WorkloadSpec::Infer`] and, for training, optionally warm-starts it.
///
/// Blocking and CPU/GPU-bound: from async code, call it on a blocking thread
/// (`tokio::task::spawn_blocking`).
pub fn run_workload(
    backend: &dyn Backend,
    spec: &WorkloadSpec,
    data: &[u8],
    model: Option<&[u8]>,
) -> Result<WorkloadOutput> {
    run_workload_observed(backend, spec, data, model, &mut |_| {})
}

/// [`run_workload`], telling `on_epoch` of a training job's progress after
/// each epoch.
pub fn run_workload_observed(
    backend: &dyn Backend,
    spec: &WorkloadSpec,
    data: &[u8],
    model: Option<&[u8]>,
    on_epoch: &mut dyn FnMut(Progress),
) -> Result<WorkloadOutput> {
    let t0 = Instant::now();
    let ops = Ops::new(backend);
    let (output, checkpoints, checkpoint_models, metrics) = match spec {
        WorkloadSpec::Train(ts) => {
            let d = Data::read(data, "x", "y", ts.task)?;
            let test = read_test(data, ts.task)?;
            let init = model.map(Mlp::from_safetensors).transpose()?;
            let r = train(&ops, ts, &d, test.as_ref(), init, on_epoch)?;
            (
                r.model.to_safetensors_as(ts.task)?,
                r.checkpoints,
                r.checkpoint_models,
                r.metrics,
            )
        }
        WorkloadSpec::Infer { layers } => {
            let bytes = model.ok_or_else(|| ComputeError::MissingTensor("model (w0…)".into()))?;
            let m = Mlp::from_safetensors(bytes)?;
            if &m.layers != layers {
                return Err(ComputeError::Spec(format!(
                    "model has layers {:?}, the job declared {layers:?}",
                    m.layers
                )));
            }
            let (out, metrics) = infer(&ops, &m, bytes, data)?;
            (out, vec![], vec![], metrics)
        }
        WorkloadSpec::Preprocess { op } => {
            let (out, metrics) = preprocess(&ops, op, data)?;
            (out, vec![], vec![], metrics)
        }
    };
    let out = WorkloadOutput {
        output,
        flops: ops.flops(),
        elapsed_s: t0.elapsed().as_secs_f64(),
        backend: backend.info(),
        checkpoints,
        metrics,
        checkpoint_models,
    };
    tracing::info!(
        flops = out.flops,
        cu = out.compute_units(),
        secs = out.elapsed_s,
        "workload done"
    );
    Ok(out)
}

/// [`run_workload`] for a [`WorkloadSpec::Preprocess`] job, which needs no model.
pub fn run_preprocess(
    backend: &dyn Backend,
    op: PreprocessOp,
    data: &[u8],
) -> Result<WorkloadOutput> {
    run_workload(backend, &WorkloadSpec::Preprocess { op }, data, None)
}

/// Logits of `x` in batches of [`EVAL_BATCH`].
pub fn infer_logits(ops: &Ops<'_>, m: &Mlp, x: &[f32], rows: usize) -> Result<Vec<f32>> {
    let cols = m.layers[0];
    if x.len() != rows * cols {
        return Err(ComputeError::Data(format!(
            "input has {} values, expected {rows}×{cols}",
            x.len()
        )));
    }
    let mut out = Vec::with_capacity(rows * m.layers[m.depth()]);
    for start in (0..rows).step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(rows);
        let acts = m.forward(ops, &x[start * cols..end * cols], end - start)?;
        out.extend_from_slice(&acts[m.depth()]);
    }
    Ok(out)
}

/// A model's predictions on `data`. A classifier's output is `logits`
/// (`rows × classes`) and `pred` (the most likely class of each row); a
/// regression's (as its file's `task` says) is `logits` (`rows × 1`, the
/// model's own output) and `y` (each row's target, scaled back to its units
/// when the file says how). Labels in `data` (`y`) give the accuracy, or the
/// RMSE and R² of `logits` (on the scale the model was trained on).
fn infer(ops: &Ops<'_>, m: &Mlp, model: &[u8], data: &[u8]) -> Result<(Vec<u8>, Metrics)> {
    let info = crate::predict::ModelInfo::read(tensors::metadata(model)?, m)?;
    let st = tensors::parse(data)?;
    let (rows, cols, x) = tensors::read_matrix(&st, "x")?;
    if cols != m.layers[0] {
        return Err(ComputeError::Data(format!(
            "data has {cols} features, the model takes {}",
            m.layers[0]
        )));
    }
    let classes = m.layers[m.depth()];
    let logits = infer_logits(ops, m, &x, rows)?;
    let mut metrics = Metrics {
        rows,
        ..Default::default()
    };
    let labelled = tensors::has(&st, "y");
    let out = match info.task {
        Task::Classify => {
            let pred = mlp::argmax_rows(&logits, classes);
            if labelled {
                let y = tensors::read_labels(&st, "y")?;
                if y.len() == rows {
                    let ok = pred.iter().zip(&y).filter(|(p, y)| p == y).count();
                    metrics.train_accuracy = Some(ok as f64 / rows.max(1) as f64);
                }
            }
            Writer::new()
                .f32("logits", &[rows, classes], &logits)
                .u32("pred", &[rows], &pred)
        }
        Task::Regress => {
            if labelled {
                let t = tensors::read_targets(&st, "y")?;
                if t.len() == rows {
                    let sse: f64 = logits
                        .iter()
                        .zip(&t)
                        .map(|(o, t)| (f64::from(*o) - f64::from(*t)).powi(2))
                        .sum();
                    metrics.train_rmse = Some((sse / rows.max(1) as f64).sqrt());
                    metrics.train_r2 = Some(mlp::r_squared(sse, &t));
                }
            }
            Writer::new().f32("logits", &[rows, classes], &logits).f32(
                "y",
                &[rows],
                &regression_targets(&info, &logits),
            )
        }
    };
    Ok((out.to_bytes()?, metrics))
}

/// A regression's targets for its outputs: scaled back to the target's
/// units when the model says how (as [`crate::predict`] does).
pub fn regression_targets(info: &crate::predict::ModelInfo, outputs: &[f32]) -> Vec<f32> {
    match info.target {
        Some(t) => outputs.iter().map(|o| t.apply(*o)).collect(),
        None => outputs.to_vec(),
    }
}

fn preprocess(ops: &Ops<'_>, op: &PreprocessOp, data: &[u8]) -> Result<(Vec<u8>, Metrics)> {
    let st = tensors::parse(data)?;
    let (rows, cols, x) = tensors::read_matrix(&st, "x")?;
    let y = if tensors::has(&st, "y") {
        // Class numbers, or else (regression) real targets.
        let y = match tensors::read_labels(&st, "y") {
            Ok(c) => Labels::Classes(c),
            Err(_) => Labels::Values(tensors::read_targets(&st, "y")?),
        };
        if y.len() != rows {
            return Err(ComputeError::Data(format!(
                "{rows} rows but {} labels",
                y.len()
            )));
        }
        Some(y)
    } else {
        None
    };
    let metrics = Metrics {
        rows,
        ..Default::default()
    };
    let with_y = |w: Writer, name: &str, y: &Option<Labels>, idx: Option<&[usize]>| match y {
        Some(y) => {
            let v = match idx {
                Some(i) => y.gather(i),
                None => y.clone(),
            };
            match v {
                Labels::Classes(c) => w.u32(name, &[c.len()], &c),
                Labels::Values(v) => w.f32(name, &[v.len()], &v),
            }
        }
        None => w,
    };
    let gather = |idx: &[usize]| -> Vec<f32> {
        idx.iter()
            .flat_map(|&i| x[i * cols..(i + 1) * cols].iter().copied())
            .collect()
    };
    let out = match op {
        PreprocessOp::Standardize | PreprocessOp::Normalize => {
            if rows == 0 {
                return Err(ComputeError::Data("empty data set".into()));
            }
            ops.add(cost::col_stats(rows, cols) + cost::affine_cols(rows, cols));
            let s = ops.be.col_stats(&x, rows, cols)?;
            let inv = |d: f32| if d > 1e-12 { 1.0 / d } else { 1.0 };
            let (shift, scale, names, a, b) = if *op == PreprocessOp::Standardize {
                let scale: Vec<f32> = s.std.iter().map(|&d| inv(d)).collect();
                (s.mean.clone(), scale, ("mean", "std"), s.mean, s.std)
            } else {
                let scale: Vec<f32> = s
                    .min
                    .iter()
                    .zip(&s.max)
                    .map(|(lo, hi)| inv(hi - lo))
                    .collect();
                (s.min.clone(), scale, ("min", "max"), s.min, s.max)
            };
            let t = ops.be.affine_cols(&x, rows, cols, &shift, &scale)?;
            let w = Writer::new()
                .f32("x", &[rows, cols], &t)
                .f32(names.0, &[cols], &a)
                .f32(names.1, &[cols], &b);
            with_y(w, "y", &y, None).to_bytes()?
        }
        PreprocessOp::Shuffle { seed } => {
            let p = rng::permutation(rows, *seed, rng::STREAM_DATA);
            let w = Writer::new().f32("x", &[rows, cols], &gather(&p));
            with_y(w, "y", &y, Some(&p)).to_bytes()?
        }
        PreprocessOp::Split {
            test_fraction,
            seed,
        } => {
            if !(0.0..=1.0).contains(test_fraction) {
                return Err(ComputeError::Spec(format!("test_fraction {test_fraction}")));
            }
            let p = rng::permutation(rows, *seed, rng::STREAM_DATA);
            let n_test = ((rows as f32) * test_fraction).round() as usize;
            let (te, tr) = p.split_at(n_test.min(rows));
            let w = Writer::new().f32("x", &[tr.len(), cols], &gather(tr)).f32(
                "x_test",
                &[te.len(), cols],
                &gather(te),
            );
            let w = with_y(w, "y", &y, Some(tr));
            with_y(w, "y_test", &y, Some(te)).to_bytes()?
        }
    };
    Ok((out, metrics))
}

/// FLOPs a workload will dispatch, computed from the spec and the data's shape alone:
/// exactly what [`run_workload`] counts, except under [`Sampling::Poisson`] where
/// batch sizes are random and this is the expected count. 1 compute unit = 1 GFLOP.
pub fn flops_for(spec: &WorkloadSpec, shape: DataShape) -> u64 {
    match spec {
        WorkloadSpec::Train(ts) => {
            if ts.layers.len() < 2 || ts.batch == 0 {
                return 0;
            }
            let rows = shape.rows;
            let dp = ts.dp.is_some();
            let epoch = match ts.sampling {
                Sampling::Shuffle => {
                    let (full, rest) = (rows / ts.batch, rows % ts.batch);
                    full as u64 * mlp::step_flops(&ts.layers, ts.batch, dp)
                        + mlp::step_flops(&ts.layers, rest, dp)
                }
                // Expected value: batches of `batch` rows on average.
                Sampling::Poisson => {
                    ts.steps_per_epoch(rows) * mlp::step_flops(&ts.layers, ts.batch.min(rows), dp)
                }
            };
            epoch * ts.epochs as u64
                + mlp::eval_flops(&ts.layers, rows, EVAL_BATCH)
                + mlp::eval_flops(&ts.layers, shape.test_rows, EVAL_BATCH)
        }
        WorkloadSpec::Infer { layers } => {
            if layers.len() < 2 {
                return 0;
            }
            let full = shape.rows / EVAL_BATCH;
            let rest = shape.rows % EVAL_BATCH;
            full as u64 * mlp::forward_flops(layers, EVAL_BATCH) + mlp::forward_flops(layers, rest)
        }
        WorkloadSpec::Preprocess { op } => match op {
            PreprocessOp::Standardize | PreprocessOp::Normalize => {
                cost::col_stats(shape.rows, shape.features)
                    + cost::affine_cols(shape.rows, shape.features)
            }
            PreprocessOp::Shuffle { .. } | PreprocessOp::Split { .. } => 0,
        },
    }
}

/// [`flops_for`] in compute units.
pub fn compute_units_for(spec: &WorkloadSpec, shape: DataShape) -> f64 {
    flops_for(spec, shape) as f64 / 1e9
}
