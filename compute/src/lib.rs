//! # compute — what CloudChain providers sell and oracles check
//!
//! This crate owns everything that touches numbers on a device:
//!
//! - **Backends** behind one trait, [`Backend`]: [`WgpuBackend`] runs WGSL compute
//!   shaders (tiled matrix product, bias + ReLU, softmax cross-entropy, SGD,
//!   per-example clipping and Gaussian noise, standardization) and [`CpuBackend`] is
//!   the pure-Rust reference (an order-fixed GEMM + rayon). [`select_backend`] picks
//!   one and says why.
//! - **The canonical arithmetic** ([`canon`]): fixed summation orders, `acc + a*b`
//!   never fused, hand-written `exp`/`ln`. The CPU backend computes it, the WGSL
//!   kernels follow it line for line, and [`selftest`] finds at start-up whether a
//!   backend gives its bits (lavapipe does). Checks of an exact provider compare
//!   weight hashes; only a backend that is not exact is checked within a tolerance.
//! - **Workloads** ([`WorkloadSpec`]: train an MLP, run inference, preprocess a data
//!   set) that read and write [safetensors](https://github.com/huggingface/safetensors)
//!   bytes, count their FLOPs (1 compute unit = 1 GFLOP, [`flops_for`] predicts the
//!   count without running) and commit to a hash chain of weight checkpoints.
//! - **Data**: the wine-quality and iris sets shipped by `linfa-datasets`, converted to
//!   safetensors ([`datasets`]), and generated data of any size.
//! - **Verification** for oracles ([`verify`]): Freivalds' check of products,
//!   re-execution of a random training segment, re-running sampled inference rows.
//! - **Differential privacy** ([`dp`]): DP-SGD (clip each example's gradient, then
//!   noise from a counter-based RNG keyed by job seed and step, [`rng`]; batches
//!   shuffled or Poisson-sampled, [`Sampling`]) and a Rényi-DP accountant for the
//!   subsampled Gaussian mechanism; [`fedavg`] runs federated averaging over private
//!   shards and reports the ε each provider spent.
//! - **Benchmarks**: [`bench::device_gflops`] measures what a provider advertises.
//!
//! Everything is deterministic given the job seed: the CPU backend reproduces a run bit
//! for bit on any machine, and so does an exact wgpu driver; a driver that is not
//! exact reproduces it within [`verify::tolerance`], which is what the verifiers
//! then allow for. Nothing here does networking or reads the clock except to report how
//! long a workload took.

pub mod backend;
pub mod bench;
pub mod canon;
mod cpu;
pub mod datasets;
pub mod dp;
mod error;
pub mod fedavg;
mod gemm_ordered;
mod gemm_safe;
pub mod import;
pub mod mlp;
pub mod onnx;
pub mod predict;
pub mod rng;
pub mod selftest;
pub mod tensors;
pub mod verify;
mod wgpu_backend;
pub mod workload;

pub use backend::{Backend, BackendInfo, BackendKind, ColStats, GemmShape, NoiseParams};
pub use cpu::CpuBackend;
pub use error::{ComputeError, Result};
pub use mlp::Task;
pub use wgpu_backend::WgpuBackend;
pub use workload::{
    Checkpoint, DataShape, DpConfig, Metrics, PreprocessOp, Progress, Sampling, TrainSpec,
    WorkloadOutput, WorkloadSpec, compute_units_for, flops_for, run_preprocess, run_workload,
    run_workload_observed,
};

use serde::{Deserialize, Serialize};

/// Which backend the caller wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum BackendPreference {
    /// wgpu on a real GPU (discrete or integrated), else the CPU.
    #[default]
    Auto,
    /// The CPU backend.
    Cpu,
    /// wgpu on whatever adapter it finds, even a software one (lavapipe).
    Wgpu,
}

/// A backend chosen by [`select_backend`], with a sentence saying why.
#[derive(Debug)]
pub struct SelectedBackend {
    /// The backend.
    pub backend: Box<dyn Backend>,
    /// Human-readable reason, e.g. for the provider's startup log.
    pub reason: String,
}

/// Picks the backend: wgpu when asked or when a real GPU adapter exists, otherwise
/// the CPU (a software wgpu adapter such as lavapipe is ~60× slower than the CPU GEMM).
pub fn select_backend(pref: BackendPreference) -> Result<SelectedBackend> {
    let cpu = || Box::new(CpuBackend::new()) as Box<dyn Backend>;
    let sel = match pref {
        BackendPreference::Cpu => SelectedBackend {
            backend: cpu(),
            reason: "CPU backend: requested".into(),
        },
        BackendPreference::Wgpu => {
            let w = WgpuBackend::new()?;
            let reason = format!("wgpu backend: requested; {}", w.info());
            SelectedBackend {
                backend: Box::new(w),
                reason,
            }
        }
        BackendPreference::Auto => match WgpuBackend::new() {
            Ok(w)
                if matches!(
                    w.device_type(),
                    wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu
                ) =>
            {
                let reason = format!("wgpu backend: found a GPU; {}", w.info());
                SelectedBackend {
                    backend: Box::new(w),
                    reason,
                }
            }
            Ok(w) => SelectedBackend {
                backend: cpu(),
                reason: format!(
                    "CPU backend: wgpu's only adapter is {} ({:?}), not a GPU; the CPU GEMM is faster",
                    w.info().name,
                    w.device_type()
                ),
            },
            Err(e) => SelectedBackend {
                backend: cpu(),
                reason: format!("CPU backend: no wgpu adapter ({e})"),
            },
        },
    };
    tracing::info!(reason = %sel.reason, "compute backend selected");
    Ok(sel)
}
