//! The CPU reference backend: the canonical arithmetic of [`crate::canon`] (an
//! order-fixed GEMM, hand-written `exp`/`ln`), rayon for the row-parallel
//! element-wise work. Deterministic: same inputs, same bits, on any thread count
//! and any x86-64 or other target. [`CpuBackend::fast`] swaps the product for
//! `matrixmultiply`'s SGEMM, faster on large products but summed in its own order,
//! so it is not exact: for work nobody re-executes to compare.

use crate::backend::{
    Backend, BackendInfo, BackendKind, ColStats, GemmShape, NoiseParams, check_len,
    check_softmax_xent,
};
use crate::canon::{self, madd};
use crate::error::{Result, shape_err};
use crate::rng;
use rayon::prelude::*;

/// Below this many elements rayon's fork/join costs more than it saves.
const PAR_MIN: usize = 1 << 15;

/// Pure-Rust backend; the reference every other backend is checked against.
#[derive(Debug, Clone)]
pub struct CpuBackend {
    /// Products by `matrixmultiply` instead of the order-fixed kernel.
    fast: bool,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// The exact CPU backend (the canonical arithmetic), on all of rayon's threads.
    pub fn new() -> Self {
        Self { fast: false }
    }

    /// The CPU backend with `matrixmultiply`'s SGEMM for products: not exact (its
    /// summation order is its own), for work that is never compared bit for bit.
    pub fn fast() -> Self {
        Self { fast: true }
    }
}

fn map_rows(
    x: &[f32],
    cols: usize,
    f: impl Fn(usize, &[f32], &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    if cols == 0 {
        return out;
    }
    if x.len() >= PAR_MIN {
        out.par_chunks_mut(cols)
            .zip(x.par_chunks(cols))
            .enumerate()
            .for_each(|(r, (o, xr))| f(r, xr, o));
    } else {
        out.chunks_mut(cols)
            .zip(x.chunks(cols))
            .enumerate()
            .for_each(|(r, (o, xr))| f(r, xr, o));
    }
    out
}

/// A `len`-element output filled with `p`'s standard normals (element `i` gets the
/// draw at `p.offset + i`), then finished chunk by chunk by `f(base, chunk)`, where
/// `chunk` starts at element `base`. Chunks run in parallel for large `len`.
fn with_noise(p: NoiseParams, len: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let key = rng::stream_key(p.seed, p.stream);
    let mut out = vec![0f32; len];
    let fill = |base: usize, chunk: &mut [f32]| {
        rng::fill_gaussians(key, p.offset.wrapping_add(base as u32), chunk);
        f(base, chunk);
    };
    const CHUNK: usize = 32_768;
    if len >= PAR_MIN {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| fill(c * CHUNK, chunk));
    } else {
        fill(0, &mut out);
    }
    out
}

impl Backend for CpuBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: BackendKind::Cpu,
            name: format!(
                "CPU ({} threads, {})",
                rayon::current_num_threads(),
                if self.fast {
                    "matrixmultiply"
                } else {
                    "order-fixed"
                }
            ),
            api: "native".into(),
            device_type: "Cpu".into(),
        }
    }

    fn gemm_checked(&self, a: &[f32], b: &[f32], s: GemmShape) -> Result<Vec<f32>> {
        if !self.fast {
            return Ok(crate::gemm_ordered::gemm(a, b, s));
        }
        let GemmShape { m, k, n, ta, tb } = s;
        let mut c = vec![0f32; m * n];
        if m == 0 || n == 0 || k == 0 {
            return Ok(c);
        }
        // Strides express the transposes, so no copy is made.
        let (rsa, csa) = if ta { (1, m as isize) } else { (k as isize, 1) };
        let (rsb, csb) = if tb { (1, k as isize) } else { (n as isize, 1) };
        crate::gemm_safe::sgemm(a, b, &mut c, m, k, n, [rsa, csa, rsb, csb]);
        Ok(c)
    }

    fn bias_act(
        &self,
        x: &[f32],
        bias: &[f32],
        rows: usize,
        cols: usize,
        relu: bool,
    ) -> Result<Vec<f32>> {
        check_len("bias_act", "x", x.len(), rows * cols)?;
        check_len("bias_act", "bias", bias.len(), cols)?;
        Ok(map_rows(x, cols, |_, xr, o| {
            for ((o, &v), &b) in o.iter_mut().zip(xr).zip(bias) {
                let z = v + b;
                *o = if relu { canon::relu(z) } else { z };
            }
        }))
    }

    fn relu_backward(&self, delta: &[f32], act: &[f32]) -> Result<Vec<f32>> {
        check_len("relu_backward", "act", act.len(), delta.len())?;
        Ok(delta
            .iter()
            .zip(act)
            .map(|(&d, &a)| if a > 0.0 { d } else { 0.0 })
            .collect())
    }

    fn softmax_xent(
        &self,
        logits: &[f32],
        labels: &[u32],
        rows: usize,
        classes: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        check_softmax_xent(logits, labels, rows, classes)?;
        let grad = map_rows(logits, classes, |r, z, g| {
            canon::softmax_grad_row(z, labels[r] as usize, g)
        });
        let loss = (0..rows)
            .map(|r| canon::xent_row(&logits[r * classes..(r + 1) * classes], labels[r] as usize))
            .collect();
        Ok((loss, grad))
    }

    fn col_sums(&self, x: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
        check_len("col_sums", "x", x.len(), rows * cols)?;
        let mut s = vec![0f32; cols];
        for r in x.chunks(cols.max(1)) {
            for (s, &v) in s.iter_mut().zip(r) {
                *s += v;
            }
        }
        Ok(s)
    }

    fn row_sq_norms(&self, x: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
        check_len("row_sq_norms", "x", x.len(), rows * cols)?;
        if cols == 0 {
            return Ok(vec![0.0; rows]);
        }
        Ok(x.chunks(cols).map(canon::sq_norm).collect())
    }

    fn scale_rows(&self, x: &[f32], rows: usize, cols: usize, s: &[f32]) -> Result<Vec<f32>> {
        check_len("scale_rows", "x", x.len(), rows * cols)?;
        check_len("scale_rows", "s", s.len(), rows)?;
        Ok(map_rows(x, cols, |r, xr, o| {
            for (o, &v) in o.iter_mut().zip(xr) {
                *o = v * s[r];
            }
        }))
    }

    fn dp_noise(&self, g: &[f32], p: NoiseParams) -> Result<Vec<f32>> {
        if p.std == 0.0 {
            // Same bits as adding 0·z: skip drawing.
            return Ok(g.iter().map(|&v| v * p.scale).collect());
        }
        Ok(with_noise(p, g.len(), |base, chunk| {
            for (o, &v) in chunk.iter_mut().zip(&g[base..]) {
                *o = (v + p.std * *o) * p.scale;
            }
        }))
    }

    fn dp_sgd_update(&self, w: &[f32], g: &[f32], lr: f32, p: NoiseParams) -> Result<Vec<f32>> {
        check_len("dp_sgd_update", "g", g.len(), w.len())?;
        if p.std == 0.0 {
            return Ok(w
                .iter()
                .zip(g)
                .map(|(&w, &g)| w - lr * (g * p.scale))
                .collect());
        }
        Ok(with_noise(p, g.len(), |base, chunk| {
            for ((o, &g), &w) in chunk.iter_mut().zip(&g[base..]).zip(&w[base..]) {
                *o = w - lr * ((g + p.std * *o) * p.scale);
            }
        }))
    }

    fn sgd_update(&self, w: &[f32], g: &[f32], lr: f32) -> Result<Vec<f32>> {
        check_len("sgd_update", "g", g.len(), w.len())?;
        Ok(w.iter().zip(g).map(|(&w, &g)| w - lr * g).collect())
    }

    fn col_stats(&self, x: &[f32], rows: usize, cols: usize) -> Result<ColStats> {
        check_len("col_stats", "x", x.len(), rows * cols)?;
        if rows == 0 {
            return Err(shape_err("col_stats", "no rows"));
        }
        let mut st = ColStats {
            mean: vec![0.0; cols],
            std: vec![0.0; cols],
            min: vec![f32::INFINITY; cols],
            max: vec![f32::NEG_INFINITY; cols],
        };
        // Each column as the WGSL kernel computes it: sums in row order from
        // +0.0, the extremes picked by comparison.
        for c in 0..cols {
            let col = || (0..rows).map(|r| x[r * cols + c]);
            let sum = col().fold(0f32, |s, v| s + v);
            let mean = sum / rows as f32;
            let ss = col().fold(0f32, |s, v| {
                let d = v - mean;
                madd(d, d, s)
            });
            st.mean[c] = mean;
            st.std[c] = (ss / rows as f32).sqrt();
            st.min[c] = col().fold(x[c], |lo, v| if v < lo { v } else { lo });
            st.max[c] = col().fold(x[c], |hi, v| if v > hi { v } else { hi });
        }
        Ok(st)
    }

    fn affine_cols(
        &self,
        x: &[f32],
        rows: usize,
        cols: usize,
        shift: &[f32],
        scale: &[f32],
    ) -> Result<Vec<f32>> {
        check_len("affine_cols", "x", x.len(), rows * cols)?;
        check_len("affine_cols", "shift", shift.len(), cols)?;
        check_len("affine_cols", "scale", scale.len(), cols)?;
        Ok(map_rows(x, cols, |_, xr, o| {
            for (c, (o, &v)) in o.iter_mut().zip(xr).enumerate() {
                *o = (v - shift[c]) * scale[c];
            }
        }))
    }
}
