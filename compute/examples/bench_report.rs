//! Prints the figures of the compute bench note in one run:
//! `cargo run -p compute --release --example bench_report`.

use compute::bench::{epoch_seconds, gemm_gflops, matrixmultiply_gflops};

use compute::{CpuBackend, WgpuBackend};
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let cpu = CpuBackend::new();
    let gpu = WgpuBackend::new();
    match &gpu {
        Ok(g) => println!("wgpu adapter: {}", compute::Backend::info(g)),
        Err(e) => println!("wgpu: {e}"),
    }
    println!(
        "{:>6} {:>14} {:>14} {:>16}",
        "n", "wgpu GFLOP/s", "cpu exact", "matrixmultiply"
    );
    let budget = Duration::from_millis(800);
    let sizes: &[usize] = if std::env::args().any(|a| a == "--epochs-only") {
        &[]
    } else {
        &[256, 512, 1024, 2048]
    };
    for &n in sizes {
        let w = match &gpu {
            Ok(g) => format!("{:.2}", gemm_gflops(g, n, budget)?.gflops),
            Err(_) => "-".into(),
        };
        let c = gemm_gflops(&cpu, n, budget)?.gflops;
        let m = matrixmultiply_gflops(n, budget).gflops;
        println!("{n:>6} {w:>14} {c:>14.1} {m:>16.1}");
    }
    {
        use compute::Backend;
        let g = vec![0.5f32; 400_000];
        let p = compute::NoiseParams {
            seed: 1,
            stream: 2,
            offset: 0,
            std: 1.0,
            scale: 1.0,
        };
        let t = std::time::Instant::now();
        for _ in 0..20 {
            std::hint::black_box(cpu.dp_noise(&g, p)?);
        }
        let per = t.elapsed().as_secs_f64() / 20.0 / 400_000.0 * 1e9;
        let t = std::time::Instant::now();
        let mut out = vec![0f32; 400_000];
        for _ in 0..20 {
            compute::rng::fill_gaussians(7, 0, &mut out);
            std::hint::black_box(&out);
        }
        let single = t.elapsed().as_secs_f64() / 20.0 / 400_000.0 * 1e9;
        let t = std::time::Instant::now();
        let mut x = vec![0f32; 4_000_000];
        for _ in 0..4 {
            for (i, o) in x.iter_mut().enumerate() {
                *o += (i as f32).ln();
            }
            std::hint::black_box(&x);
        }
        let lib = t.elapsed().as_secs_f64() / 16e6 * 1e9;
        println!(
            "noise: dp_noise {per:.2} ns/elem (all threads), fill_gaussians {single:.2} ns/elem (1 thread), libm lnf {lib:.2} ns"
        );
    }
    let dp = |sigma: f32| {
        Some(compute::DpConfig {
            clip: 1.0,
            sigma,
            delta: 1e-5,
        })
    };
    // Best of 11 interleaved runs: on a shared 2-core machine interference only ever
    // adds time, so the minimum is the most stable estimate.
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    for (layers, rows, batch) in [
        (vec![11usize, 32, 6], 1599usize, 32usize),
        (vec![256, 512, 512, 10], 1024, 64),
        (vec![256, 512, 512, 10], 4096, 256),
        (vec![256, 512, 512, 10], 16384, 1024),
    ] {
        let (mut plain, mut clip, mut full) = (vec![], vec![], vec![]);
        for _ in 0..11 {
            plain.push(epoch_seconds(&cpu, &layers, rows, batch, None)?);
            clip.push(epoch_seconds(&cpu, &layers, rows, batch, dp(0.0))?);
            full.push(epoch_seconds(&cpu, &layers, rows, batch, dp(1.0))?);
        }
        let (p, c, f) = (best(&plain), best(&clip), best(&full));
        println!(
            "epoch {layers:?} rows {rows} batch {batch} (cpu): plain {p:.4}s | clip only {c:.4}s ({:+.1}%) | DP-SGD σ=1 {f:.4}s ({:+.1}%)",
            100.0 * (c / p - 1.0),
            100.0 * (f / p - 1.0)
        );
    }
    if let Ok(g) = &gpu {
        let p = epoch_seconds(g, &[11, 32, 6], 1599, 32, None)?;
        let f = epoch_seconds(g, &[11, 32, 6], 1599, 32, dp(1.0))?;
        println!(
            "epoch [11, 32, 6] (wgpu): plain {p:.3}s, DP-SGD {f:.3}s ({:+.1}%)",
            100.0 * (f / p - 1.0)
        );
    }
    Ok(())
}
