//! What oracles run to check a provider's work without redoing all of it.
//!
//! - [`freivalds`]: checks `C = A·B` in O(k·(mk + kn + mn)) instead of O(mkn); a
//!   wrong product passes a round with probability ≤ ½, so k rounds accept it with
//!   probability ≤ 2⁻ᵏ (errors below the float tolerance are, by design, accepted).
//! - [`verify_training_segment`]: the provider's receipt commits to a hash chain of
//!   weight checkpoints; the oracle picks a link ([`challenge_segment`]), the provider
//!   reveals the weights at both ends, the oracle checks them against the chain and
//!   re-executes those steps on its own backend.
//! - [`verify_inference_sample`]: re-runs a random sample of rows and compares logits.
//!
//! How a re-execution is compared ([`Compare`]): a provider whose backend is exact
//! (it passed [`crate::selftest`], and its offer says so) is held to the bits: the
//! re-executed weights must hash to the committed link, the logits must be equal.
//! Otherwise, and only then, the one tolerance of the crate applies,
//! [`tolerance`], scaled to the steps re-executed.

use crate::backend::Backend;
use crate::error::{ComputeError, Result, shape_err};
use crate::mlp::{Data, Mlp, Ops, Task, argmax_rows};
use crate::rng;
use crate::tensors;
use crate::workload::{Checkpoint, TrainSpec, chain_next, chain_start, infer_logits, train_steps};
use serde::{Deserialize, Serialize};

/// A borrowed row-major matrix.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows×cols` values.
    pub data: &'a [f32],
}

impl<'a> MatRef<'a> {
    /// Wraps a slice, checking its length.
    pub fn new(rows: usize, cols: usize, data: &'a [f32]) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(shape_err(
                "MatRef",
                format!("{} values for {rows}×{cols}", data.len()),
            ));
        }
        Ok(Self { rows, cols, data })
    }
}

/// Freivalds' check that `c == a·b` within relative tolerance `tol`, with `rounds`
/// random 0/1 vectors drawn from `seed`. Round `t` accepts when for every row `i`
/// `|(A(Br))ᵢ − (Cr)ᵢ| ≤ tol·Σₗ|Aᵢₗ|(|B|r)ₗ`, the rounding error bound of the
/// product scaled by `tol` (1e-4 suits f32 products of inner dimension ≤ 10⁴).
pub fn freivalds(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: MatRef<'_>,
    rounds: u32,
    seed: u64,
    tol: f32,
) -> Result<bool> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || c.rows != m || c.cols != n {
        return Err(shape_err(
            "freivalds",
            format!("A {m}×{k}, B {}×{n}, C {}×{}", b.rows, c.rows, c.cols),
        ));
    }
    for t in 0..rounds {
        let r: Vec<f64> = (0..n as u32)
            .map(|j| f64::from(rng::rand_u32(seed, rng::STREAM_VERIFY.wrapping_add(t), j) >> 31))
            .collect();
        let mut br = vec![0f64; k];
        let mut babs = vec![0f64; k];
        for (l, (br, babs)) in br.iter_mut().zip(&mut babs).enumerate() {
            for (j, &rj) in r.iter().enumerate() {
                let v = f64::from(b.data[l * n + j]);
                *br += v * rj;
                *babs += v.abs() * rj;
            }
        }
        for i in 0..m {
            let arow = &a.data[i * k..(i + 1) * k];
            let (mut abr, mut scale) = (0f64, 0f64);
            for l in 0..k {
                let v = f64::from(arow[l]);
                abr += v * br[l];
                scale += v.abs() * babs[l];
            }
            let cr: f64 = c.data[i * n..(i + 1) * n]
                .iter()
                .zip(&r)
                .map(|(&v, &rj)| f64::from(v) * rj)
                .sum();
            // Written so that NaN anywhere rejects.
            let within = (abr - cr).abs() <= f64::from(tol) * scale;
            if !within {
                tracing::debug!(
                    round = t,
                    row = i,
                    diff = (abr - cr).abs(),
                    bound = f64::from(tol) * scale,
                    "freivalds rejects"
                );
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Picks which link of a checkpoint chain to challenge (1..len), from an oracle's seed.
pub fn challenge_segment(chain: &[Checkpoint], seed: u64) -> Option<usize> {
    challenge_link(chain.len(), seed)
}

/// Picks which link of a chain of `len` checkpoints to challenge (1..len), from
/// an oracle's seed; `None` for a chain of fewer than two.
pub fn challenge_link(len: usize, seed: u64) -> Option<usize> {
    if len < 2 {
        return None;
    }
    let links = u32::try_from(len - 1).unwrap_or(u32::MAX);
    Some(1 + (rng::rand_u32(seed, rng::STREAM_VERIFY, 0xC4A1) % links) as usize)
}

/// How a verifier compares its re-execution with the provider's claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compare {
    /// Bit for bit: the provider's backend is exact, and so must the verifier's
    /// be (the exact [`crate::CpuBackend`]).
    Exact,
    /// Within [`tolerance`] of the work re-executed: the provider said its
    /// backend is not exact.
    Tolerant,
}

/// Relative tolerance per training step re-executed, for a backend that is not
/// exact: its products are summed in another order, a few ulps apart, and the
/// difference grows with the steps.
pub const TOLERANCE_PER_STEP: f32 = 1e-4;

/// The tolerance never exceeds this: a faked share of a percent fails it.
pub const MAX_TOLERANCE: f32 = 1e-3;

/// The relative tolerance, `|ours − theirs| ≤ t·(1 + |ours|)` per value, for
/// `steps` steps of work (1 for inference and preprocessing) on a backend that
/// is not exact: `TOLERANCE_PER_STEP · steps`, at most [`MAX_TOLERANCE`]. The one
/// place a tolerance is set.
pub fn tolerance(steps: u64) -> f32 {
    (TOLERANCE_PER_STEP * steps.max(1) as f32).min(MAX_TOLERANCE)
}

/// An oracle's finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Whether the work checks out.
    pub ok: bool,
    /// Largest difference found (0 when the check failed before comparing).
    pub max_abs_diff: f32,
    /// What was checked, or why it failed.
    pub reason: String,
}

impl Verdict {
    fn fail(reason: impl Into<String>) -> Self {
        Self {
            ok: false,
            max_abs_diff: 0.0,
            reason: reason.into(),
        }
    }
}

/// Does `model` hash to link `index` of `chain` (given the link before it)?
pub fn matches_link(chain: &[Checkpoint], index: usize, seed: u64, model: &Mlp) -> bool {
    match index {
        0 => chain
            .first()
            .is_some_and(|c| c.step == 0 && c.hash == chain_start(seed, model)),
        i if i < chain.len() => {
            chain_next(&chain[i - 1].hash, chain[i].step, model) == chain[i].hash
        }
        _ => false,
    }
}

/// Re-executes link `index` of a training job's checkpoint chain: checks that
/// `start_model` and `end_model` are the committed weights at links `index − 1` and
/// `index`, runs those steps from `start_model` on `backend`, and accepts when the
/// weights it reaches hash to link `index` ([`Compare::Exact`]), or when every
/// parameter is within [`tolerance`]`(steps)·(1 + |w|)` of `end_model`
/// ([`Compare::Tolerant`]).
#[allow(clippy::too_many_arguments)]
pub fn verify_training_segment(
    backend: &dyn Backend,
    spec: &TrainSpec,
    data: &[u8],
    chain: &[Checkpoint],
    index: usize,
    start_model: &[u8],
    end_model: &[u8],
    compare: Compare,
) -> Result<Verdict> {
    if index == 0 || index >= chain.len() {
        return Err(ComputeError::Spec(format!(
            "link {index} outside the chain of {} links",
            chain.len()
        )));
    }
    let start = Mlp::from_safetensors(start_model)?;
    let end = Mlp::from_safetensors(end_model)?;
    if !matches_link(chain, index - 1, spec.seed, &start) {
        return Ok(Verdict::fail(format!(
            "start weights do not match link {}",
            index - 1
        )));
    }
    if !matches_link(chain, index, spec.seed, &end) {
        return Ok(Verdict::fail(format!(
            "end weights do not match link {index}"
        )));
    }
    let d = Data::read(data, "x", "y", spec.task)?;
    let (s0, s1) = (chain[index - 1].step, chain[index].step);
    if s1 <= s0 || s1 > spec.total_steps(d.rows) {
        return Ok(Verdict::fail(format!(
            "link {index} has impossible steps {s0}..{s1}"
        )));
    }
    let ops = Ops::new(backend);
    let mut model = start;
    train_steps(&ops, spec, &d, &mut model, s0, s1, |_, _, _| Ok(()))?;
    let on = backend.info().name;
    if compare == Compare::Exact {
        let ok = chain_next(&chain[index - 1].hash, s1, &model) == chain[index].hash;
        return Ok(Verdict {
            ok,
            max_abs_diff: model.max_abs_diff(&end),
            reason: format!(
                "re-executed steps {s0}..{s1} on {on}: the weights {} link {index} bit for bit",
                if ok { "match" } else { "do not match" }
            ),
        });
    }
    let tol = tolerance(s1 - s0);
    let diff = param_rel_diff(&model, &end);
    Ok(Verdict {
        ok: diff <= tol,
        max_abs_diff: model.max_abs_diff(&end),
        reason: format!(
            "re-executed steps {s0}..{s1} on {on}: max relative difference {diff:.3e} (tolerance {tol:.1e})"
        ),
    })
}

/// Compares a whole re-executed output `ours` with the claimed `theirs`: bit
/// for bit, or within [`tolerance`]`(1)` per value. `what` opens the reason.
pub fn compare_values(ours: &[f32], theirs: &[f32], compare: Compare, what: &str) -> Verdict {
    if ours.len() != theirs.len() {
        return Verdict::fail(format!(
            "{what}: {} values, expected {}",
            theirs.len(),
            ours.len()
        ));
    }
    let worst = ours
        .iter()
        .zip(theirs)
        .map(|(p, q)| (p - q).abs() / (1.0 + p.abs()))
        .fold(0f32, f32::max);
    let unequal = ours
        .iter()
        .zip(theirs)
        .filter(|(p, q)| p.to_bits() != q.to_bits())
        .count();
    judged(compare, unequal, worst, worst, what, "values")
}

/// The verdict on values compared: `unequal` of them differ in their bits,
/// `worst` is the largest relative difference and `max_abs` the largest
/// absolute one. `what` opens the reason; `values` names them.
fn judged(
    compare: Compare,
    unequal: usize,
    worst: f32,
    max_abs: f32,
    what: &str,
    values: &str,
) -> Verdict {
    match compare {
        Compare::Exact => Verdict {
            ok: unequal == 0,
            max_abs_diff: max_abs,
            reason: format!("{what}: {unequal} {values} differ in their bits"),
        },
        Compare::Tolerant => {
            let tol = tolerance(1);
            Verdict {
                ok: worst <= tol,
                max_abs_diff: max_abs,
                reason: format!(
                    "{what}: max relative difference {worst:.3e} (tolerance {tol:.1e})"
                ),
            }
        }
    }
}

fn param_rel_diff(a: &Mlp, b: &Mlp) -> f32 {
    if a.layers != b.layers {
        return f32::INFINITY;
    }
    a.w.iter()
        .chain(&a.b)
        .zip(b.w.iter().chain(&b.b))
        .flat_map(|(x, y)| {
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs() / (1.0 + q.abs()))
        })
        .fold(0.0, f32::max)
}

/// Re-runs `sample` random rows (chosen by `seed`) of an inference job and compares
/// the claimed `logits` (and `pred`): equal bit for bit ([`Compare::Exact`]), or
/// within [`tolerance`]`(1)·(1 + |logit|)` ([`Compare::Tolerant`]).
pub fn verify_inference_sample(
    backend: &dyn Backend,
    model: &[u8],
    data: &[u8],
    claimed: &[u8],
    sample: usize,
    seed: u64,
    compare: Compare,
) -> Result<Verdict> {
    let m = Mlp::from_safetensors(model)?;
    let info = crate::predict::ModelInfo::read(tensors::metadata(model)?, &m)?;
    let st = tensors::parse(data)?;
    let (rows, cols, x) = tensors::read_matrix(&st, "x")?;
    let out = tensors::parse(claimed)?;
    let (lr, classes, logits) = tensors::read_matrix(&out, "logits")?;
    // A classifier's most likely class, or a regression's target, per row:
    // each must follow from its row's logits.
    let (pred, targets) = match info.task {
        Task::Classify => (tensors::read_labels(&out, "pred")?, Vec::new()),
        Task::Regress => (Vec::new(), tensors::read_targets(&out, "y")?),
    };
    if lr != rows
        || classes != m.layers[m.depth()]
        || pred.len().max(targets.len()) != rows
        || cols != m.layers[0]
    {
        return Ok(Verdict::fail(format!(
            "claimed output has shape {lr}×{classes} for {rows} rows of {cols} features"
        )));
    }
    let picks: Vec<usize> = rng::permutation(rows, seed, rng::STREAM_VERIFY.wrapping_add(7))
        .into_iter()
        .take(sample.min(rows))
        .collect();
    let mut xs = Vec::with_capacity(picks.len() * cols);
    for &r in &picks {
        xs.extend_from_slice(&x[r * cols..(r + 1) * cols]);
    }
    let ops = Ops::new(backend);
    let ours = infer_logits(&ops, &m, &xs, picks.len())?;
    let mut worst = 0f32;
    let mut max_abs = 0f32;
    let mut unequal = 0usize;
    for (s, &r) in picks.iter().enumerate() {
        let theirs = &logits[r * classes..(r + 1) * classes];
        let mine = &ours[s * classes..(s + 1) * classes];
        for (t, o) in theirs.iter().zip(mine) {
            worst = worst.max((t - o).abs() / (1.0 + o.abs()));
            max_abs = max_abs.max((t - o).abs());
            unequal += usize::from(t.to_bits() != o.to_bits());
        }
        let follows = match info.task {
            Task::Classify => argmax_rows(theirs, classes)[0] == pred[r],
            Task::Regress => {
                crate::workload::regression_targets(&info, theirs)[..] == targets[r..=r]
            }
        };
        if !follows {
            return Ok(Verdict::fail(format!(
                "row {r}: the prediction does not follow from its logits"
            )));
        }
    }
    let what = format!("re-ran {} of {rows} rows", picks.len());
    Ok(judged(compare, unequal, worst, max_abs, &what, "logits"))
}
