//! The [`Backend`] trait: the handful of tensor operations every workload is built
//! from, implemented by [`crate::CpuBackend`] (the reference) and
//! [`crate::WgpuBackend`] (WGSL kernels). All tensors are row-major `f32` slices.

use crate::error::{Result, shape_err};
use serde::{Deserialize, Serialize};

/// Which implementation a backend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum BackendKind {
    /// Pure Rust on the CPU (`matrixmultiply` + rayon).
    Cpu,
    /// WGSL compute shaders through wgpu.
    Wgpu,
}

/// What a backend runs on, for logs, offers and the `bench` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// Which implementation.
    pub kind: BackendKind,
    /// Device name (wgpu adapter name, or the CPU with its thread count).
    pub name: String,
    /// Graphics API (`Vulkan`, `Gl`, …) for wgpu; `native` for the CPU.
    pub api: String,
    /// Device type (`DiscreteGpu`, `IntegratedGpu`, `Cpu`, …).
    pub device_type: String,
}

impl std::fmt::Display for BackendInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} backend on {} ({}, {})",
            self.kind, self.name, self.api, self.device_type
        )
    }
}

/// Parameters of [`Backend::dp_noise`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseParams {
    /// Job seed.
    pub seed: u64,
    /// RNG stream: the training step.
    pub stream: u32,
    /// Index of the first element in the stream (tensors of one step use disjoint ranges).
    pub offset: u32,
    /// Standard deviation of the noise (σ·C for DP-SGD).
    pub std: f32,
    /// Factor applied after adding noise (1/B for DP-SGD).
    pub scale: f32,
}

/// Per-column statistics (population standard deviation).
#[derive(Debug, Clone, PartialEq)]
pub struct ColStats {
    /// Column means.
    pub mean: Vec<f32>,
    /// Column standard deviations.
    pub std: Vec<f32>,
    /// Column minima.
    pub min: Vec<f32>,
    /// Column maxima.
    pub max: Vec<f32>,
}

/// The shape of a [`Backend::gemm`]: `C = op(A)·op(B)` is `m×n` with inner dimension
/// `k`; `ta`/`tb` say whether `A`/`B` are stored transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmShape {
    /// Rows of `C`.
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Columns of `C`.
    pub n: usize,
    /// `A` is stored `k×m`.
    pub ta: bool,
    /// `B` is stored `n×k`.
    pub tb: bool,
}

impl GemmShape {
    /// `m×k` times `k×n`, neither operand transposed.
    pub fn new(m: usize, k: usize, n: usize) -> Self {
        Self {
            m,
            k,
            n,
            ta: false,
            tb: false,
        }
    }

    /// The product `m×k` times `k×n` in each of its four stored layouts
    /// (neither operand transposed, `A`, `B`, both): what a check of a GEMM
    /// kernel runs through.
    pub fn layouts(m: usize, k: usize, n: usize) -> [Self; 4] {
        let s = Self::new(m, k, n);
        [
            s,
            s.transpose_a(),
            s.transpose_b(),
            s.transpose_a().transpose_b(),
        ]
    }

    /// The same product with `A` stored transposed.
    pub fn transpose_a(self) -> Self {
        Self { ta: true, ..self }
    }

    /// The same product with `B` stored transposed.
    pub fn transpose_b(self) -> Self {
        Self { tb: true, ..self }
    }

    /// The shape checks of [`Backend::gemm`], shared by every backend.
    fn check(self, a: &[f32], b: &[f32]) -> Result<()> {
        check_len("gemm", "A", a.len(), self.m * self.k)?;
        check_len("gemm", "B", b.len(), self.k * self.n)
    }
}

/// The tensor operations a workload needs. Every method validates shapes and returns a
/// new tensor; implementations must agree with [`crate::CpuBackend`] within float
/// tolerance (the tests in `tests/kernels.rs` check this for the wgpu kernels).
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// What this backend runs on.
    fn info(&self) -> BackendInfo;

    /// `C = op(A)·op(B)`, `C` is `m×n`, the inner dimension `k`. `A` is stored `m×k`
    /// (or `k×m` when `ta`), `B` is stored `k×n` (or `n×k` when `tb`).
    ///
    /// Checks the operand lengths, then runs [`Backend::gemm_checked`].
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        a: &[f32],
        b: &[f32],
        m: usize,
        k: usize,
        n: usize,
        ta: bool,
        tb: bool,
    ) -> Result<Vec<f32>> {
        let s = GemmShape { m, k, n, ta, tb };
        s.check(a, b)?;
        self.gemm_checked(a, b, s)
    }

    /// The backend's GEMM, called by [`Backend::gemm`] once `a` and `b` are known to
    /// have the lengths `s` implies. Call [`Backend::gemm`] instead.
    fn gemm_checked(&self, a: &[f32], b: &[f32], s: GemmShape) -> Result<Vec<f32>>;

    /// `y[r][c] = x[r][c] + bias[c]`, then `max(0, ·)` when `relu`.
    fn bias_act(
        &self,
        x: &[f32],
        bias: &[f32],
        rows: usize,
        cols: usize,
        relu: bool,
    ) -> Result<Vec<f32>>;

    /// Back-propagation through ReLU: `delta` where `act > 0`, else 0.
    fn relu_backward(&self, delta: &[f32], act: &[f32]) -> Result<Vec<f32>>;

    /// Row-wise softmax cross-entropy. Returns the per-row loss and the per-row
    /// gradient of that loss w.r.t. the logits, `softmax(z) − onehot(y)`.
    fn softmax_xent(
        &self,
        logits: &[f32],
        labels: &[u32],
        rows: usize,
        classes: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)>;

    /// Column sums of a `rows×cols` matrix (bias gradients).
    fn col_sums(&self, x: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>>;

    /// Squared L2 norm of each row (per-example gradient norms for DP-SGD).
    fn row_sq_norms(&self, x: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>>;

    /// Multiply row `r` by `s[r]` (per-example clipping factors).
    fn scale_rows(&self, x: &[f32], rows: usize, cols: usize, s: &[f32]) -> Result<Vec<f32>>;

    /// `(g[i] + std·N_i)·scale` where `N_i` is [`crate::rng::gaussian`]`(seed, stream, offset + i)`.
    fn dp_noise(&self, g: &[f32], p: NoiseParams) -> Result<Vec<f32>>;

    /// `w − lr·g`.
    fn sgd_update(&self, w: &[f32], g: &[f32], lr: f32) -> Result<Vec<f32>>;

    /// Fused DP-SGD update in one pass: `w − lr·dp_noise(g, p)`, i.e.
    /// `w[i] − lr·(g[i] + std·N_i)·scale`.
    fn dp_sgd_update(&self, w: &[f32], g: &[f32], lr: f32, p: NoiseParams) -> Result<Vec<f32>>;

    /// Per-column mean, standard deviation, min and max.
    fn col_stats(&self, x: &[f32], rows: usize, cols: usize) -> Result<ColStats>;

    /// `y[r][c] = (x[r][c] − shift[c])·scale[c]` (standardization / min-max scaling).
    fn affine_cols(
        &self,
        x: &[f32],
        rows: usize,
        cols: usize,
        shift: &[f32],
        scale: &[f32],
    ) -> Result<Vec<f32>>;
}

// ---- shape checks shared by the implementations ----

pub(crate) fn check_len(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(shape_err(
            op,
            format!("{what} has {got} elements, expected {want}"),
        ))
    }
}

#[allow(clippy::too_many_arguments)]
/// The shape checks of [`Backend::softmax_xent`], shared by every backend.
pub(crate) fn check_softmax_xent(
    logits: &[f32],
    labels: &[u32],
    rows: usize,
    classes: usize,
) -> Result<()> {
    check_len("softmax_xent", "logits", logits.len(), rows * classes)?;
    check_len("softmax_xent", "labels", labels.len(), rows)?;
    if let Some(&bad) = labels.iter().find(|&&y| y as usize >= classes) {
        return Err(crate::error::shape_err(
            "softmax_xent",
            format!("label {bad} out of range for {classes} classes"),
        ));
    }
    Ok(())
}
