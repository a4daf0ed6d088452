//! Is this backend exact? A start-up self-test: every kernel, and whole training
//! steps with and without DP-SGD, run on the backend and on the exact CPU
//! backend ([`crate::canon`]), compared bit for bit.
//!
//! Exactness is a property of a driver, not a promise of WGSL: lavapipe computes
//! the canonical arithmetic bit for bit (CI checks it), a real GPU's driver may
//! contract `acc + a*b` into a fused multiply-add or round `sqrt` and `/` its own
//! way. A provider runs this once at start-up and says in its offers whether its
//! results are exact (`SlaTerms::exact`); the committee then compares its weights
//! by hash, or within [`crate::verify::tolerance`] where it is not.

use crate::backend::{Backend, GemmShape, NoiseParams};
use crate::error::Result;
use crate::mlp::{Data, Labels, Mlp, Ops};
use crate::workload::{TrainSpec, chain_start, train_steps};
use crate::{CpuBackend, DpConfig, rng};

/// What the self-test found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfTest {
    /// The backend tested.
    pub backend: String,
    /// Every check gave the exact CPU backend's bits.
    pub exact: bool,
    /// The checks that did not, each with what differed.
    pub mismatches: Vec<String>,
    /// How many checks ran.
    pub checks: usize,
}

impl std::fmt::Display for SelfTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.exact {
            write!(
                f,
                "{}: exact ({} checks gave the canonical bits)",
                self.backend, self.checks
            )
        } else {
            write!(
                f,
                "{}: not exact ({} of {} checks differ: {})",
                self.backend,
                self.mismatches.len(),
                self.checks,
                self.mismatches.join("; ")
            )
        }
    }
}

fn data(len: usize, salt: u32, scale: f32) -> Vec<f32> {
    (0..len as u32)
        .map(|i| (rng::uniform(0x5e1f, salt, i) * 2.0 - 1.0) * scale)
        .collect()
}

/// Runs the self-test of `be` against the exact CPU backend. An error is a
/// backend that failed to run a kernel at all.
pub fn run(be: &dyn Backend) -> Result<SelfTest> {
    let cpu = CpuBackend::new();
    let mut out = SelfTest {
        backend: be.info().to_string(),
        exact: true,
        mismatches: Vec::new(),
        checks: 0,
    };
    let mut same = |what: &str, got: &[f32], want: &[f32]| {
        out.checks += 1;
        let differ = got.len() != want.len()
            || got
                .iter()
                .zip(want)
                .any(|(a, b)| a.to_bits() != b.to_bits());
        if differ {
            let n = got
                .iter()
                .zip(want)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            out.mismatches
                .push(format!("{what}: {n} of {} values", want.len()));
        }
    };
    // Products: a shape that is no multiple of any tile, every transpose.
    let (m, k, n) = (257, 129, 301);
    let (a, b) = (data(m * k, 1, 1.0), data(k * n, 2, 1.0));
    for s in GemmShape::layouts(m, k, n) {
        let name = format!("gemm {m}×{k}×{n} ta={} tb={}", s.ta, s.tb);
        same(
            &name,
            &be.gemm(&a, &b, m, k, n, s.ta, s.tb)?,
            &cpu.gemm(&a, &b, m, k, n, s.ta, s.tb)?,
        );
    }
    // Element-wise kernels, softmax over logits wide enough to reach exp's
    // clamp, norms, noise, updates and column statistics.
    let (rows, cols) = (97, 37);
    let x = data(rows * cols, 3, 4.0);
    let bias = data(cols, 4, 1.0);
    for relu in [false, true] {
        same(
            "bias_act",
            &be.bias_act(&x, &bias, rows, cols, relu)?,
            &cpu.bias_act(&x, &bias, rows, cols, relu)?,
        );
    }
    let act = data(rows * cols, 5, 1.0);
    same(
        "relu_backward",
        &be.relu_backward(&x, &act)?,
        &cpu.relu_backward(&x, &act)?,
    );
    let logits = data(rows * cols, 6, 60.0);
    let labels: Vec<u32> = (0..rows as u32).map(|r| r % cols as u32).collect();
    let (gl, gg) = be.softmax_xent(&logits, &labels, rows, cols)?;
    let (cl, cg) = cpu.softmax_xent(&logits, &labels, rows, cols)?;
    same("softmax_xent loss", &gl, &cl);
    same("softmax_xent gradient", &gg, &cg);
    same(
        "col_sums",
        &be.col_sums(&x, rows, cols)?,
        &cpu.col_sums(&x, rows, cols)?,
    );
    same(
        "row_sq_norms",
        &be.row_sq_norms(&x, rows, cols)?,
        &cpu.row_sq_norms(&x, rows, cols)?,
    );
    let s = data(rows, 7, 1.0);
    same(
        "scale_rows",
        &be.scale_rows(&x, rows, cols, &s)?,
        &cpu.scale_rows(&x, rows, cols, &s)?,
    );
    let p = NoiseParams {
        seed: 17,
        stream: 3,
        offset: 1001,
        std: 1.3,
        scale: 1.0 / 64.0,
    };
    same("dp_noise", &be.dp_noise(&x, p)?, &cpu.dp_noise(&x, p)?);
    same(
        "sgd_update",
        &be.sgd_update(&x, &act, 0.05)?,
        &cpu.sgd_update(&x, &act, 0.05)?,
    );
    same(
        "dp_sgd_update",
        &be.dp_sgd_update(&x, &act, 0.05, p)?,
        &cpu.dp_sgd_update(&x, &act, 0.05, p)?,
    );
    let (gs, cs) = (
        be.col_stats(&x, rows, cols)?,
        cpu.col_stats(&x, rows, cols)?,
    );
    same("col_stats mean", &gs.mean, &cs.mean);
    same("col_stats std", &gs.std, &cs.std);
    same("col_stats min", &gs.min, &cs.min);
    same("col_stats max", &gs.max, &cs.max);
    same(
        "affine_cols",
        &be.affine_cols(&x, rows, cols, &cs.mean, &cs.std)?,
        &cpu.affine_cols(&x, rows, cols, &cs.mean, &cs.std)?,
    );
    // Whole training steps, plain and DP-SGD: the weights' chain hashes.
    for dp in [
        None,
        Some(DpConfig {
            clip: 1.0,
            sigma: 1.1,
            delta: 1e-5,
        }),
    ] {
        let d = Data {
            rows: 200,
            cols: 11,
            x: data(200 * 11, 8, 2.0),
            y: Labels::Classes((0..200).map(|r| r % 6).collect()),
        };
        let spec = TrainSpec {
            layers: vec![11, 32, 6],
            epochs: 1,
            batch: 32,
            lr: 0.1,
            dp,
            seed: 99,
            checkpoint_every: 5,
            sampling: Default::default(),
            task: Default::default(),
        };
        let train = |on: &dyn Backend| -> Result<[u8; 32]> {
            let mut model = Mlp::init(&spec.layers, spec.seed)?;
            train_steps(&Ops::new(on), &spec, &d, &mut model, 0, 6, |_, _, _| Ok(()))?;
            Ok(chain_start(spec.seed, &model))
        };
        out.checks += 1;
        if train(be)? != train(&cpu)? {
            let what = if dp.is_some() { "DP-SGD" } else { "SGD" };
            out.mismatches
                .push(format!("6 {what} steps: the weights' hash differs"));
        }
    }
    out.exact = out.mismatches.is_empty();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exact_cpu_backend_passes_and_matrixmultiply_does_not() {
        let exact = run(&CpuBackend::new()).expect("runs");
        assert!(exact.exact, "{exact}");
        let fast = run(&CpuBackend::fast()).expect("runs");
        assert!(!fast.exact, "{fast}");
        assert!(
            fast.mismatches.iter().any(|m| m.starts_with("gemm")),
            "{fast}"
        );
        assert!(
            fast.mismatches.iter().any(|m| m.contains("steps")),
            "{fast}"
        );
    }
}
