//! Criterion benches: matrix product on each backend and the `matrixmultiply`
//! baseline, and one training epoch with and without DP-SGD.
//! `cargo bench -p compute` (the wgpu group needs an adapter; lavapipe is slow, so
//! its sizes stop at 1024 here — `examples/bench_report.rs` prints the full table).

#![allow(clippy::unwrap_used)] // a bench panics loudly on bad setup

use compute::{Backend, CpuBackend, WgpuBackend};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::time::Duration;

fn mat(n: usize, seed: u64) -> Vec<f32> {
    (0..(n * n) as u32)
        .map(|i| compute::rng::uniform(seed, 5, i) - 0.5)
        .collect()
}

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    let cpu = CpuBackend::new();
    let gpu = WgpuBackend::new().ok();
    for n in [256usize, 512, 1024, 2048] {
        let (a, b) = (mat(n, 1), mat(n, 2));
        g.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
        g.bench_with_input(BenchmarkId::new("cpu", n), &n, |bn, &n| {
            bn.iter(|| cpu.gemm(&a, &b, n, n, n, false, false))
        });
        if let Some(gpu) = gpu.as_ref().filter(|_| n <= 1024) {
            g.bench_with_input(BenchmarkId::new("wgpu", n), &n, |bn, &n| {
                bn.iter(|| gpu.gemm(&a, &b, n, n, n, false, false))
            });
        }
        let mut c = vec![0f32; n * n];
        g.bench_with_input(BenchmarkId::new("matrixmultiply", n), &n, |bn, &n| {
            bn.iter(|| compute::bench::raw_sgemm(&a, &b, &mut c, n).unwrap())
        });
    }
    g.finish();
}

fn epoch(c: &mut Criterion) {
    let mut g = c.benchmark_group("train_epoch");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    let cpu = CpuBackend::new();
    let layers = [256usize, 512, 512, 10];
    let data = compute::datasets::generate_classification(4096, 256, 10, 1).unwrap();
    let d = compute::mlp::Data::from_safetensors(&data, "x", "y").unwrap();
    for dp in [false, true] {
        let spec = compute::TrainSpec {
            layers: layers.to_vec(),
            epochs: 1,
            batch: 256,
            lr: 0.01,
            dp: dp.then_some(compute::DpConfig {
                clip: 1.0,
                sigma: 1.0,
                delta: 1e-5,
            }),
            seed: 1,
            checkpoint_every: u64::MAX,
            sampling: Default::default(),
            task: Default::default(),
        };
        g.bench_function(if dp { "cpu_dp" } else { "cpu_plain" }, |bn| {
            bn.iter(|| {
                let ops = compute::mlp::Ops::new(&cpu);
                let mut m = compute::mlp::Mlp::init(&layers, 1).unwrap();
                compute::workload::train_steps(
                    &ops,
                    &spec,
                    &d,
                    &mut m,
                    0,
                    spec.total_steps(d.rows),
                    |_, _, _| Ok(()),
                )
                .unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, gemm, epoch);
criterion_main!(benches);
