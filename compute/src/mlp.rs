//! A multi-layer perceptron (ReLU hidden layers; a softmax output for
//! classification, a linear one for regression) trained by SGD or DP-SGD,
//! written once over the [`Backend`] operations so the same code runs on every
//! backend. [`Ops`] counts the FLOPs of every operation it dispatches; [`cost`] holds
//! the per-operation counts that [`crate::flops_for`] predicts from.

use crate::backend::{Backend, GemmShape, NoiseParams};
use crate::error::{ComputeError, Result};
use crate::rng;
use crate::tensors::{self, Writer};
use serde::{Deserialize, Serialize};
use std::cell::Cell;

/// FLOPs of each backend operation (multiply-adds count 2). Host-side work that is
/// O(batch) per step (clip factors, argmax) is not counted.
pub mod cost {
    /// `m×k` by `k×n` product.
    pub fn gemm(m: usize, k: usize, n: usize) -> u64 {
        2 * (m * k * n) as u64
    }
    /// Bias add (+ ReLU).
    pub fn bias_act(rows: usize, cols: usize, relu: bool) -> u64 {
        (rows * cols * if relu { 2 } else { 1 }) as u64
    }
    /// ReLU mask.
    pub fn relu_backward(len: usize) -> u64 {
        len as u64
    }
    /// Max, exp, sum, divide, log per element.
    pub fn softmax_xent(rows: usize, classes: usize) -> u64 {
        (5 * rows * classes) as u64
    }
    /// Column sums.
    pub fn col_sums(rows: usize, cols: usize) -> u64 {
        (rows * cols) as u64
    }
    /// Squared row norms.
    pub fn row_sq_norms(rows: usize, cols: usize) -> u64 {
        (2 * rows * cols) as u64
    }
    /// Row scaling.
    pub fn scale_rows(rows: usize, cols: usize) -> u64 {
        (rows * cols) as u64
    }
    /// Add scaled noise and scale (the RNG's integer work is not counted).
    pub fn dp_noise(len: usize) -> u64 {
        3 * len as u64
    }
    /// `w − lr·g`.
    pub fn sgd_update(len: usize) -> u64 {
        2 * len as u64
    }
    /// Mean, variance, min, max.
    pub fn col_stats(rows: usize, cols: usize) -> u64 {
        (5 * rows * cols) as u64
    }
    /// Shift and scale.
    pub fn affine_cols(rows: usize, cols: usize) -> u64 {
        (2 * rows * cols) as u64
    }
}

/// A backend plus a FLOP counter: every workload goes through this.
#[derive(Debug)]
pub struct Ops<'a> {
    /// The backend that runs the operations.
    pub be: &'a dyn Backend,
    flops: Cell<u64>,
}

impl<'a> Ops<'a> {
    /// Wraps a backend with a zeroed counter.
    pub fn new(be: &'a dyn Backend) -> Self {
        Self {
            be,
            flops: Cell::new(0),
        }
    }
    /// FLOPs dispatched so far.
    pub fn flops(&self) -> u64 {
        self.flops.get()
    }
    pub(crate) fn add(&self, f: u64) {
        self.flops.set(self.flops.get() + f);
    }
    pub(crate) fn gemm(&self, a: &[f32], b: &[f32], s: GemmShape) -> Result<Vec<f32>> {
        let GemmShape { m, k, n, ta, tb } = s;
        self.add(cost::gemm(m, k, n));
        self.be.gemm(a, b, m, k, n, ta, tb)
    }
}

/// MLP parameters. Layer `l` maps `layers[l]` inputs to `layers[l+1]` outputs with
/// weights `w[l]` stored `in×out` row-major and biases `b[l]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    /// Layer widths, input first, classes last.
    pub layers: Vec<usize>,
    /// Weights per layer.
    pub w: Vec<Vec<f32>>,
    /// Biases per layer.
    pub b: Vec<Vec<f32>>,
}

/// What a model learns: a class (softmax cross-entropy over the last layer's
/// outputs), or a number (squared error of the last layer's single output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    #[default]
    Classify,
    Regress,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::Classify => "classify",
            Task::Regress => "regress",
        }
    }
}

impl std::str::FromStr for Task {
    type Err = ComputeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "classify" => Ok(Task::Classify),
            "regress" => Ok(Task::Regress),
            _ => Err(ComputeError::Spec(format!(
                "task {s:?}: give classify or regress"
            ))),
        }
    }
}

/// The targets of a data set: class numbers, or (regression) real values.
#[derive(Debug, Clone, PartialEq)]
pub enum Labels {
    Classes(Vec<u32>),
    Values(Vec<f32>),
}

impl Labels {
    pub fn len(&self) -> usize {
        match self {
            Labels::Classes(c) => c.len(),
            Labels::Values(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn task(&self) -> Task {
        match self {
            Labels::Classes(_) => Task::Classify,
            Labels::Values(_) => Task::Regress,
        }
    }

    /// The class numbers, if these are classes.
    pub fn classes(&self) -> Option<&[u32]> {
        match self {
            Labels::Classes(c) => Some(c),
            Labels::Values(_) => None,
        }
    }

    /// The targets at `idx`.
    pub fn gather(&self, idx: &[usize]) -> Labels {
        match self {
            Labels::Classes(c) => Labels::Classes(idx.iter().map(|&i| c[i]).collect()),
            Labels::Values(v) => Labels::Values(idx.iter().map(|&i| v[i]).collect()),
        }
    }
}

/// Training data held in memory.
#[derive(Debug, Clone)]
pub struct Data {
    /// Rows.
    pub rows: usize,
    /// Features per row.
    pub cols: usize,
    /// `rows×cols` features.
    pub x: Vec<f32>,
    /// One target per row.
    pub y: Labels,
}

impl Data {
    /// Reads `x` and class labels `y` (or other names, e.g. `x_test`/`y_test`).
    pub fn from_safetensors(bytes: &[u8], xname: &str, yname: &str) -> Result<Self> {
        Self::read(bytes, xname, yname, Task::Classify)
    }

    /// Reads `x` and the targets `y` of `task`: class numbers, or finite real
    /// values (`[rows]` or `[rows, 1]`) for regression.
    pub fn read(bytes: &[u8], xname: &str, yname: &str, task: Task) -> Result<Self> {
        let st = tensors::parse(bytes)?;
        let (rows, cols, x) = tensors::read_matrix(&st, xname)?;
        let y = match task {
            Task::Classify => Labels::Classes(tensors::read_labels(&st, yname)?),
            Task::Regress => Labels::Values(tensors::read_targets(&st, yname)?),
        };
        if y.len() != rows {
            return Err(ComputeError::Data(format!(
                "`{xname}` has {rows} rows but `{yname}` has {} targets",
                y.len()
            )));
        }
        Ok(Self { rows, cols, x, y })
    }

    /// The rows at `idx`.
    pub fn gather(&self, idx: &[usize]) -> (Vec<f32>, Labels) {
        let mut x = Vec::with_capacity(idx.len() * self.cols);
        for &i in idx {
            x.extend_from_slice(&self.x[i * self.cols..(i + 1) * self.cols]);
        }
        (x, self.y.gather(idx))
    }
}

/// Squared error of each row's single output against its target, and the
/// gradient of half of it, `output − target` (so a step scales like softmax
/// cross-entropy's `p − onehot`). Plain host arithmetic, the same on every
/// backend, so a re-execution on another backend agrees bit for bit.
pub fn squared_error(out: &[f32], targets: &[f32]) -> (Vec<f32>, Vec<f32>) {
    out.iter()
        .zip(targets)
        .map(|(&o, &t)| {
            let d = o - t;
            (d * d, d)
        })
        .unzip()
}

/// The loss of a batch and its gradient w.r.t. the last layer's outputs.
fn loss_and_grad(
    ops: &Ops<'_>,
    out: &[f32],
    y: &Labels,
    rows: usize,
    width: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    // Either loss is charged as softmax cross-entropy, so a job's units do not
    // depend on its task.
    ops.add(cost::softmax_xent(rows, width));
    match y {
        Labels::Classes(c) => ops.be.softmax_xent(out, c, rows, width),
        Labels::Values(v) if width == 1 => Ok(squared_error(out, v)),
        Labels::Values(_) => Err(ComputeError::Spec(format!(
            "a regression model has one output, not {width}"
        ))),
    }
}

/// Differential-privacy parameters of DP-SGD.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpConfig {
    /// Per-example L2 clip norm C.
    pub clip: f32,
    /// Noise multiplier σ: noise std is σ·C on the summed clipped gradient.
    pub sigma: f32,
    /// δ of the (ε, δ) guarantee the accountant reports.
    #[serde(default = "default_delta")]
    pub delta: f64,
}

fn default_delta() -> f64 {
    1e-5
}

/// Loss and correct predictions of one step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepStats {
    /// Sum of per-example losses (squared errors for regression).
    pub loss_sum: f64,
    /// Examples whose argmax matched the label (0 for regression).
    pub correct: usize,
    /// Examples in the batch.
    pub rows: usize,
}

fn check_layers(layers: &[usize]) -> Result<()> {
    if layers.len() < 2 || layers.contains(&0) {
        return Err(ComputeError::Spec(format!(
            "layers must list ≥ 2 non-zero widths, got {layers:?}"
        )));
    }
    Ok(())
}

impl Mlp {
    /// He-uniform initialization from the job seed (biases zero).
    pub fn init(layers: &[usize], seed: u64) -> Result<Self> {
        check_layers(layers)?;
        let mut w = Vec::new();
        let mut b = Vec::new();
        for (l, win) in layers.windows(2).enumerate() {
            let (fan_in, fan_out) = (win[0], win[1]);
            let bound = (6.0 / fan_in as f32).sqrt();
            w.push(
                (0..(fan_in * fan_out) as u32)
                    .map(|i| {
                        (rng::uniform(seed, rng::STREAM_INIT + l as u32, i) * 2.0 - 1.0) * bound
                    })
                    .collect(),
            );
            b.push(vec![0.0; fan_out]);
        }
        Ok(Self {
            layers: layers.to_vec(),
            w,
            b,
        })
    }

    /// Number of layers with weights.
    pub fn depth(&self) -> usize {
        self.w.len()
    }

    /// Total parameter count.
    pub fn params(&self) -> usize {
        self.w.iter().chain(&self.b).map(Vec::len).sum()
    }

    /// Canonical bytes that checkpoints commit to: per layer `w` then `b`, f32 LE.
    pub fn commit_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.params() * 4);
        for (w, b) in self.w.iter().zip(&self.b) {
            for v in w.iter().chain(b) {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// Largest |a − b| over all parameters (∞ if the shapes differ).
    pub fn max_abs_diff(&self, other: &Mlp) -> f32 {
        if self.layers != other.layers {
            return f32::INFINITY;
        }
        self.w
            .iter()
            .chain(&self.b)
            .zip(other.w.iter().chain(&other.b))
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
            .fold(0.0, f32::max)
    }

    /// Serializes to safetensors: `w{l}` `[in, out]`, `b{l}` `[out]`, metadata `layers`.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        self.writer().to_bytes()
    }

    /// As [`Mlp::to_safetensors`], with the task (`task`) and each layer's
    /// activation (`activations`: `relu,…,softmax`, or `relu,…,linear` for a
    /// regression) in the metadata, so whoever loads the model knows how to
    /// read its outputs.
    pub fn to_safetensors_as(&self, task: Task) -> Result<Vec<u8>> {
        let last = match task {
            Task::Classify => "softmax",
            Task::Regress => "linear",
        };
        let mut acts = vec!["relu"; self.depth().saturating_sub(1)];
        acts.push(last);
        self.writer()
            .meta("task", task.name())
            .meta("activations", acts.join(","))
            .to_bytes()
    }

    fn writer(&self) -> Writer {
        let mut wr = Writer::new().meta(
            "layers",
            self.layers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
        for (l, (w, b)) in self.w.iter().zip(&self.b).enumerate() {
            let (i, o) = (self.layers[l], self.layers[l + 1]);
            wr = wr
                .f32(&format!("w{l}"), &[i, o], w)
                .f32(&format!("b{l}"), &[o], b);
        }
        wr
    }

    /// Reads a model written by [`Mlp::to_safetensors`]; shapes are checked.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        let st = tensors::parse(bytes)?;
        let mut layers = Vec::new();
        let mut w = Vec::new();
        let mut b = Vec::new();
        for l in 0usize.. {
            let wn = format!("w{l}");
            if !tensors::has(&st, &wn) {
                break;
            }
            let (i, o, wv) = tensors::read_matrix(&st, &wn)?;
            let (bs, bv) = tensors::read_f32(&st, &format!("b{l}"))?;
            if bs != [o] {
                return Err(ComputeError::Data(format!(
                    "b{l} has shape {bs:?}, expected [{o}]"
                )));
            }
            match layers.last() {
                None => layers.push(i),
                Some(&prev) if prev == i => {}
                Some(&prev) => {
                    return Err(ComputeError::Data(format!(
                        "w{l} takes {i} inputs but layer {} has {prev} outputs",
                        l.saturating_sub(1)
                    )));
                }
            }
            layers.push(o);
            w.push(wv);
            b.push(bv);
        }
        if layers.is_empty() {
            return Err(ComputeError::MissingTensor("w0".into()));
        }
        check_layers(&layers).map_err(|_| {
            ComputeError::Data(format!("model has invalid layer widths {layers:?}"))
        })?;
        Ok(Self { layers, w, b })
    }

    fn check_input(&self, cols: usize) -> Result<()> {
        if cols != self.layers[0] {
            return Err(ComputeError::Data(format!(
                "data has {cols} features, the model takes {}",
                self.layers[0]
            )));
        }
        Ok(())
    }

    /// Forward pass: the activations of every layer, input first, logits last.
    pub fn forward(&self, ops: &Ops<'_>, x: &[f32], rows: usize) -> Result<Vec<Vec<f32>>> {
        self.check_input(x.len().checked_div(rows).unwrap_or(self.layers[0]))?;
        let mut acts = vec![x.to_vec()];
        for l in 0..self.depth() {
            let (i, o) = (self.layers[l], self.layers[l + 1]);
            let relu = l + 1 < self.depth();
            let z = ops.gemm(&acts[l], &self.w[l], GemmShape::new(rows, i, o))?;
            ops.add(cost::bias_act(rows, o, relu));
            acts.push(ops.be.bias_act(&z, &self.b[l], rows, o, relu)?);
        }
        Ok(acts)
    }

    /// One SGD (or DP-SGD) step on a batch. `step` keys the DP noise; the noised
    /// gradient sum is divided by `divisor` (the batch size, or its expectation
    /// under Poisson sampling).
    #[allow(clippy::too_many_arguments)]
    pub fn train_step(
        &mut self,
        ops: &Ops<'_>,
        x: &[f32],
        y: &Labels,
        lr: f32,
        dp: Option<DpConfig>,
        seed: u64,
        step: u64,
        divisor: usize,
    ) -> Result<StepStats> {
        let rows = y.len();
        if rows == 0 {
            // An empty (Poisson) batch: DP-SGD still releases its noise.
            if let Some(dp) = dp {
                self.dp_update(ops, &[], &[], lr, dp, seed, step, divisor)?;
            }
            return Ok(StepStats::default());
        }
        let width = *self.layers.last().unwrap_or(&0);
        let acts = self.forward(ops, x, rows)?;
        let out = &acts[self.depth()];
        let (loss, grad) = loss_and_grad(ops, out, y, rows, width)?;
        let stats = StepStats {
            loss_sum: loss.iter().map(|&l| f64::from(l)).sum(),
            correct: match y {
                Labels::Classes(c) => count_correct(out, c, width),
                Labels::Values(_) => 0,
            },
            rows,
        };
        // Per-example deltas (gradient of each example's own loss w.r.t. each layer's
        // pre-activation), last layer first.
        let mut deltas = vec![Vec::new(); self.depth()];
        let mut delta = grad;
        for l in (0..self.depth()).rev() {
            let (i, o) = (self.layers[l], self.layers[l + 1]);
            let next = if l > 0 {
                let d = ops.gemm(&delta, &self.w[l], GemmShape::new(rows, o, i).transpose_b())?;
                ops.add(cost::relu_backward(rows * i));
                Some(ops.be.relu_backward(&d, &acts[l])?)
            } else {
                None
            };
            deltas[l] = std::mem::take(&mut delta);
            if let Some(n) = next {
                delta = n;
            }
        }
        match dp {
            None => {
                let step_lr = lr / rows as f32;
                for l in 0..self.depth() {
                    let (i, o) = (self.layers[l], self.layers[l + 1]);
                    let gw = ops.gemm(
                        &acts[l],
                        &deltas[l],
                        GemmShape::new(i, rows, o).transpose_a(),
                    )?;
                    ops.add(cost::col_sums(rows, o));
                    let gb = ops.be.col_sums(&deltas[l], rows, o)?;
                    ops.add(cost::sgd_update(i * o) + cost::sgd_update(o));
                    self.w[l] = ops.be.sgd_update(&self.w[l], &gw, step_lr)?;
                    self.b[l] = ops.be.sgd_update(&self.b[l], &gb, step_lr)?;
                }
            }
            Some(dp) => self.dp_update(ops, &acts, &deltas, lr, dp, seed, step, divisor)?,
        }
        Ok(stats)
    }

    /// DP-SGD: clip each example's whole gradient to norm C, sum, add N(0, σ²C²) to
    /// every coordinate, divide by the batch size. Per-example norms come from the
    /// outer-product identity ‖aᵢ ⊗ dᵢ‖ = ‖aᵢ‖·‖dᵢ‖ (Goodfellow 2015), so no
    /// per-example gradient is materialized and clipping is a row scaling of the
    /// deltas before the usual product: that is why DP costs only a few percent.
    #[allow(clippy::too_many_arguments)]
    fn dp_update(
        &mut self,
        ops: &Ops<'_>,
        acts: &[Vec<f32>],
        deltas: &[Vec<f32>],
        lr: f32,
        dp: DpConfig,
        seed: u64,
        step: u64,
        divisor: usize,
    ) -> Result<()> {
        let rows = deltas.first().map_or(0, |d| d.len() / self.layers[1]);
        let stream = u32::try_from(step)
            .ok()
            .filter(|&s| s < rng::STREAM_DATA)
            .ok_or_else(|| {
                ComputeError::Spec(format!("step {step} exceeds the RNG stream range"))
            })?;
        let mut sq = vec![0f32; rows];
        for l in (0..self.depth()).filter(|_| rows > 0) {
            let (i, o) = (self.layers[l], self.layers[l + 1]);
            ops.add(cost::row_sq_norms(rows, i) + cost::row_sq_norms(rows, o));
            let na = ops.be.row_sq_norms(&acts[l], rows, i)?;
            let nd = ops.be.row_sq_norms(&deltas[l], rows, o)?;
            for r in 0..rows {
                sq[r] += (na[r] + 1.0) * nd[r];
            }
        }
        let factors: Vec<f32> = sq
            .iter()
            .map(|s| 1.0 / (s.sqrt() / dp.clip).max(1.0))
            .collect();
        let noise = |offset: &mut u32, len: usize| {
            let p = NoiseParams {
                seed,
                stream,
                offset: *offset,
                std: dp.sigma * dp.clip,
                scale: 1.0 / divisor.max(1) as f32,
            };
            *offset = offset.wrapping_add(len as u32);
            p
        };
        let mut offset = 0u32;
        for l in 0..self.depth() {
            let (i, o) = (self.layers[l], self.layers[l + 1]);
            let (gw, gb) = if rows == 0 {
                (vec![0.0; i * o], vec![0.0; o])
            } else {
                ops.add(cost::scale_rows(rows, o));
                let d = ops.be.scale_rows(&deltas[l], rows, o, &factors)?;
                let gw = ops.gemm(&acts[l], &d, GemmShape::new(i, rows, o).transpose_a())?;
                ops.add(cost::col_sums(rows, o));
                (gw, ops.be.col_sums(&d, rows, o)?)
            };
            // Noise and update fused: one pass over the parameters.
            ops.add(cost::dp_noise(i * o) + cost::dp_noise(o));
            ops.add(cost::sgd_update(i * o) + cost::sgd_update(o));
            self.w[l] = ops
                .be
                .dp_sgd_update(&self.w[l], &gw, lr, noise(&mut offset, i * o))?;
            self.b[l] = ops
                .be
                .dp_sgd_update(&self.b[l], &gb, lr, noise(&mut offset, o))?;
        }
        Ok(())
    }

    /// Mean loss and accuracy over a data set of classes (batched forward
    /// passes); for regression targets, the mean squared error and R².
    pub fn evaluate(&self, ops: &Ops<'_>, data: &Data, batch: usize) -> Result<(f64, f64)> {
        let width = *self.layers.last().unwrap_or(&0);
        let (mut loss, mut correct) = (0f64, 0usize);
        let idx: Vec<usize> = (0..data.rows).collect();
        for chunk in idx.chunks(batch.max(1)) {
            let (x, y) = data.gather(chunk);
            let acts = self.forward(ops, &x, chunk.len())?;
            let out = &acts[self.depth()];
            let (l, _) = loss_and_grad(ops, out, &y, chunk.len(), width)?;
            loss += l.iter().map(|&v| f64::from(v)).sum::<f64>();
            if let Labels::Classes(c) = &y {
                correct += count_correct(out, c, width);
            }
        }
        let n = data.rows.max(1) as f64;
        Ok(match &data.y {
            Labels::Classes(_) => (loss / n, correct as f64 / n),
            Labels::Values(v) => (loss / n, r_squared(loss, v)),
        })
    }
}

/// R² = 1 − SSE / SST of targets `v` for a sum of squared errors `sse` (0
/// when the targets do not vary).
pub fn r_squared(sse: f64, v: &[f32]) -> f64 {
    let n = v.len().max(1) as f64;
    let mean = v.iter().map(|&t| f64::from(t)).sum::<f64>() / n;
    let sst: f64 = v.iter().map(|&t| (f64::from(t) - mean).powi(2)).sum();
    if sst > 0.0 { 1.0 - sse / sst } else { 0.0 }
}

/// Index of the largest logit in each row.
pub fn argmax_rows(logits: &[f32], classes: usize) -> Vec<u32> {
    logits
        .chunks(classes.max(1))
        .map(|r| {
            let mut best = 0;
            for (i, &v) in r.iter().enumerate() {
                if v > r[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}

fn count_correct(logits: &[f32], y: &[u32], classes: usize) -> usize {
    argmax_rows(logits, classes)
        .iter()
        .zip(y)
        .filter(|(p, y)| p == y)
        .count()
}

/// FLOPs of one training step on a batch of `rows` (what [`Mlp::train_step`] counts).
pub fn step_flops(layers: &[usize], rows: usize, dp: bool) -> u64 {
    if rows == 0 {
        // An empty Poisson batch under DP-SGD still draws noise and updates.
        if !dp {
            return 0;
        }
        return layers
            .windows(2)
            .map(|w| {
                cost::dp_noise(w[0] * w[1])
                    + cost::dp_noise(w[1])
                    + cost::sgd_update(w[0] * w[1])
                    + cost::sgd_update(w[1])
            })
            .sum();
    }
    let depth = layers.len() - 1;
    let mut f = forward_flops(layers, rows) + cost::softmax_xent(rows, layers[depth]);
    for l in 0..depth {
        let (i, o) = (layers[l], layers[l + 1]);
        if l > 0 {
            f += cost::gemm(rows, o, i) + cost::relu_backward(rows * i);
        }
        f += cost::gemm(i, rows, o) + cost::col_sums(rows, o);
        f += cost::sgd_update(i * o) + cost::sgd_update(o);
        if dp {
            f += cost::row_sq_norms(rows, i) + cost::row_sq_norms(rows, o);
            f += cost::scale_rows(rows, o) + cost::dp_noise(i * o) + cost::dp_noise(o);
        }
    }
    f
}

/// FLOPs of a forward pass over `rows` rows.
pub fn forward_flops(layers: &[usize], rows: usize) -> u64 {
    let depth = layers.len() - 1;
    (0..depth)
        .map(|l| {
            cost::gemm(rows, layers[l], layers[l + 1])
                + cost::bias_act(rows, layers[l + 1], l + 1 < depth)
        })
        .sum()
}

/// FLOPs of [`Mlp::evaluate`] over `rows` rows.
pub fn eval_flops(layers: &[usize], rows: usize, batch: usize) -> u64 {
    let classes = layers[layers.len() - 1];
    let batch = batch.max(1);
    let full = rows / batch;
    let rest = rows % batch;
    let one = |r: usize| forward_flops(layers, r) + cost::softmax_xent(r, classes);
    full as u64 * one(batch) + if rest > 0 { one(rest) } else { 0 }
}
