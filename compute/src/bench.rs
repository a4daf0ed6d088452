//! Device benchmarks: what a provider measures at start-up and advertises
//! (`cloudchain bench`), and the figures of the crate's bench note.

use crate::backend::{Backend, BackendInfo};
use crate::error::Result;
use crate::mlp::{Mlp, Ops};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// A measured matrix-product throughput.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GemmBench {
    /// The device.
    pub backend: BackendInfo,
    /// Square size n of the n×n product.
    pub n: usize,
    /// Products timed.
    pub reps: u32,
    /// Mean seconds per product.
    pub secs_per_op: f64,
    /// 2n³ / time, in GFLOP/s (= compute units per second).
    pub gflops: f64,
}

fn bench_matrix(n: usize, seed: u64) -> Vec<f32> {
    (0..(n * n) as u32)
        .map(|i| crate::rng::uniform(seed, 0xB0B0, i) - 0.5)
        .collect()
}

/// Times `n×n` products on `backend` (one warm-up, then until `budget` is spent, at
/// least once and at most 50 times). Transfers are included for wgpu, as in a job.
pub fn gemm_gflops(backend: &dyn Backend, n: usize, budget: Duration) -> Result<GemmBench> {
    let a = bench_matrix(n, 1);
    let b = bench_matrix(n, 2);
    backend.gemm(&a, &b, n, n, n, false, false)?;
    let start = Instant::now();
    let mut reps = 0u32;
    while reps == 0 || (start.elapsed() < budget && reps < 50) {
        std::hint::black_box(backend.gemm(&a, &b, n, n, n, false, false)?);
        reps += 1;
    }
    let secs = start.elapsed().as_secs_f64() / f64::from(reps);
    Ok(GemmBench {
        backend: backend.info(),
        n,
        reps,
        secs_per_op: secs,
        gflops: 2.0 * (n as f64).powi(3) / secs / 1e9,
    })
}

/// `c = a·b` for square row-major `n×n` matrices through `matrixmultiply::sgemm`
/// directly, with no backend layer or allocation: the baseline of the benches.
pub fn raw_sgemm(a: &[f32], b: &[f32], c: &mut [f32], n: usize) -> Result<()> {
    let nn = n * n;
    if a.len() != nn || b.len() != nn || c.len() != nn {
        return Err(crate::error::shape_err(
            "raw_sgemm",
            format!("{}, {}, {} values for n = {n}", a.len(), b.len(), c.len()),
        ));
    }
    crate::gemm_safe::sgemm(a, b, c, n, n, n, [n as isize, 1, n as isize, 1]);
    Ok(())
}

/// The `matrixmultiply` crate called directly (no backend layer), as a baseline.
pub fn matrixmultiply_gflops(n: usize, budget: Duration) -> GemmBench {
    let a = bench_matrix(n, 1);
    let b = bench_matrix(n, 2);
    let mut c = vec![0f32; n * n];
    let s = [n as isize, 1, n as isize, 1];
    crate::gemm_safe::sgemm(&a, &b, &mut c, n, n, n, s);
    let start = Instant::now();
    let mut reps = 0u32;
    while reps == 0 || (start.elapsed() < budget && reps < 50) {
        crate::gemm_safe::sgemm(&a, &b, &mut c, n, n, n, s);
        std::hint::black_box(&c);
        reps += 1;
    }
    let secs = start.elapsed().as_secs_f64() / f64::from(reps);
    GemmBench {
        backend: BackendInfo {
            kind: crate::BackendKind::Cpu,
            name: "matrixmultiply::sgemm (direct)".into(),
            api: "native".into(),
            device_type: "Cpu".into(),
        },
        n,
        reps,
        secs_per_op: secs,
        gflops: 2.0 * (n as f64).powi(3) / secs / 1e9,
    }
}

/// The short benchmark a provider runs at start (about half a second): a 512²
/// product on the CPU backend, 1024² on a GPU (transfers included, as in a job),
/// 256² on a software wgpu adapter such as lavapipe.
pub fn device_gflops(backend: &dyn Backend) -> Result<GemmBench> {
    let info = backend.info();
    let n = match (info.kind, info.device_type.as_str()) {
        (crate::BackendKind::Wgpu, "Cpu" | "Other" | "VirtualGpu") => 256,
        (crate::BackendKind::Wgpu, _) => 1024,
        _ => 512,
    };
    gemm_gflops(backend, n, Duration::from_millis(500))
}

/// Seconds for one training epoch of an MLP over generated data, with or without
/// DP-SGD. The DP overhead of the bench note is `dp / plain − 1`.
pub fn epoch_seconds(
    backend: &dyn Backend,
    layers: &[usize],
    rows: usize,
    batch: usize,
    dp: Option<crate::DpConfig>,
) -> Result<f64> {
    let classes = *layers.last().unwrap_or(&2);
    let data = crate::datasets::generate_classification(rows, layers[0], classes, 1)?;
    let d = crate::mlp::Data::from_safetensors(&data, "x", "y")?;
    let spec = crate::TrainSpec {
        layers: layers.to_vec(),
        epochs: 1,
        batch,
        lr: 0.01,
        dp,
        seed: 1,
        checkpoint_every: u64::MAX,
        sampling: Default::default(),
        task: Default::default(),
    };
    let ops = Ops::new(backend);
    let mut model = Mlp::init(layers, 1)?;
    let steps = spec.total_steps(d.rows);
    let start = Instant::now();
    crate::workload::train_steps(&ops, &spec, &d, &mut model, 0, steps, |_, _, _| Ok(()))?;
    Ok(start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_benchmark_reports_positive_throughput() {
        let r = device_gflops(&crate::CpuBackend::new()).unwrap();
        assert_eq!(r.n, 512);
        assert!(r.gflops.is_finite() && r.gflops > 0.0 && r.reps >= 1);
        let r = matrixmultiply_gflops(64, Duration::from_millis(1));
        assert!(r.gflops > 0.0);
    }
}
