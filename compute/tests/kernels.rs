//! Every WGSL kernel against the CPU reference, at small sizes so lavapipe runs them
//! quickly. These tests FAIL when wgpu finds no adapter: CI must provide one
//! (`apt-get install mesa-vulkan-drivers libvulkan1` gives lavapipe).
//!
//! On lavapipe (a software adapter, as in CI) every kernel must give the exact CPU
//! backend's bits: both follow the canonical arithmetic (`compute::canon`). On any
//! other adapter, whose driver may fuse or round differently (the start-up
//! self-test says which), they must agree within 1e-4·(1 + |cpu|) element-wise.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns unwrap too

use compute::{Backend, CpuBackend, GemmShape, NoiseParams, WgpuBackend};

fn gpu() -> WgpuBackend {
    WgpuBackend::new()
        .expect("wgpu adapter required for kernel tests (install mesa-vulkan-drivers)")
}

/// Deterministic pseudo-random matrix in [-1, 1).
fn data(len: usize, seed: u64) -> Vec<f32> {
    (0..len as u32)
        .map(|i| compute::rng::uniform(seed, 99, i) * 2.0 - 1.0)
        .collect()
}

/// Whether the adapter is lavapipe, which must be exact.
fn exact_adapter() -> bool {
    gpu().info().device_type == "Cpu"
}

#[track_caller]
fn assert_close(gpu: &[f32], cpu: &[f32], tol: f32) {
    assert_eq!(gpu.len(), cpu.len(), "lengths differ");
    if exact_adapter() {
        for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
            assert!(
                g.to_bits() == c.to_bits(),
                "element {i}: gpu {g} vs cpu {c}: not the canonical bits"
            );
        }
        return;
    }
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(
            (g - c).abs() <= tol * (1.0 + c.abs()),
            "element {i}: gpu {g} vs cpu {c}"
        );
    }
}

#[test]
fn the_self_test_finds_lavapipe_exact() {
    let g = gpu();
    let t = compute::selftest::run(&g).unwrap();
    eprintln!("{t}");
    if exact_adapter() {
        assert!(t.exact, "{t}");
        assert!(t.checks >= 20, "{t}");
    }
}

#[test]
fn adapter_reports_name_backend_and_type() {
    let g = gpu();
    let info = g.info();
    assert!(!info.name.is_empty());
    assert!(!info.api.is_empty() && !info.device_type.is_empty());
    eprintln!("{info}");
}

#[test]
fn gemm_matches_cpu_all_transposes_and_ragged_sizes() {
    let (g, c) = (gpu(), CpuBackend::new());
    // Sizes that are not multiples of the 64×64 tile or the 16-deep k slice.
    for &(m, k, n) in &[
        (1, 1, 1),
        (7, 13, 5),
        (64, 64, 64),
        (70, 33, 129),
        (3, 100, 2),
    ] {
        let a = data(m * k, 1);
        let b = data(k * n, 2);
        for s in GemmShape::layouts(m, k, n) {
            let want = c.gemm(&a, &b, m, k, n, s.ta, s.tb).unwrap();
            let got = g.gemm(&a, &b, m, k, n, s.ta, s.tb).unwrap();
            assert_close(&got, &want, 1e-4);
        }
    }
}

#[test]
fn gemm_cpu_matches_naive_definition() {
    let c = CpuBackend::new();
    let (m, k, n) = (5, 7, 3);
    let a = data(m * k, 3);
    let b = data(k * n, 4);
    let got = c.gemm(&a, &b, m, k, n, false, false).unwrap();
    for i in 0..m {
        for j in 0..n {
            let want: f32 = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
            assert!((got[i * n + j] - want).abs() < 1e-5);
        }
    }
    // A stored transposed: (Aᵀ)ᵀ·B == A·B.
    let at: Vec<f32> = (0..k * m).map(|idx| a[(idx % m) * k + idx / m]).collect();
    assert_close(&c.gemm(&at, &b, m, k, n, true, false).unwrap(), &got, 1e-6);
}

#[test]
fn elementwise_kernels_match_cpu() {
    let (g, c) = (gpu(), CpuBackend::new());
    let (rows, cols) = (37, 19);
    let x = data(rows * cols, 5);
    let bias = data(cols, 6);
    for relu in [false, true] {
        assert_close(
            &g.bias_act(&x, &bias, rows, cols, relu).unwrap(),
            &c.bias_act(&x, &bias, rows, cols, relu).unwrap(),
            1e-6,
        );
    }
    let act = data(rows * cols, 7);
    assert_close(
        &g.relu_backward(&x, &act).unwrap(),
        &c.relu_backward(&x, &act).unwrap(),
        0.0,
    );
    assert_close(
        &g.col_sums(&x, rows, cols).unwrap(),
        &c.col_sums(&x, rows, cols).unwrap(),
        1e-5,
    );
    assert_close(
        &g.row_sq_norms(&x, rows, cols).unwrap(),
        &c.row_sq_norms(&x, rows, cols).unwrap(),
        1e-5,
    );
    let s = data(rows, 8);
    assert_close(
        &g.scale_rows(&x, rows, cols, &s).unwrap(),
        &c.scale_rows(&x, rows, cols, &s).unwrap(),
        1e-6,
    );
    let gr = data(rows * cols, 9);
    assert_close(
        &g.sgd_update(&x, &gr, 0.05).unwrap(),
        &c.sgd_update(&x, &gr, 0.05).unwrap(),
        1e-6,
    );
}

#[test]
fn softmax_xent_matches_cpu_and_gradient_rows_sum_to_zero() {
    let (g, c) = (gpu(), CpuBackend::new());
    let (rows, classes) = (33, 6);
    let z: Vec<f32> = data(rows * classes, 10).iter().map(|v| v * 8.0).collect();
    let y: Vec<u32> = (0..rows as u32).map(|r| r % classes as u32).collect();
    let (lg, gg) = g.softmax_xent(&z, &y, rows, classes).unwrap();
    let (lc, gc) = c.softmax_xent(&z, &y, rows, classes).unwrap();
    assert_close(&lg, &lc, 1e-4);
    assert_close(&gg, &gc, 1e-5);
    for r in 0..rows {
        let s: f32 = gc[r * classes..(r + 1) * classes].iter().sum();
        assert!(
            s.abs() < 1e-5,
            "softmax − onehot must sum to 0, row {r}: {s}"
        );
        assert!(lc[r] >= 0.0);
    }
    assert!(g.softmax_xent(&z, &vec![6; rows], rows, classes).is_err());
}

#[test]
fn dp_noise_matches_cpu_rng() {
    let (g, c) = (gpu(), CpuBackend::new());
    let x = data(5000, 11);
    let p = NoiseParams {
        seed: 0xDEAD_BEEF_1234,
        stream: 17,
        offset: 1000,
        std: 1.5,
        scale: 0.25,
    };
    let got = g.dp_noise(&x, p).unwrap();
    let want = c.dp_noise(&x, p).unwrap();
    // GPU log/cos differ in the last bits; the draws must be the same numbers.
    assert_close(&got, &want, 1e-4);
    // And the noise is really there: its variance is std²·scale².
    let var: f32 = got
        .iter()
        .zip(&x)
        .map(|(o, v)| (o / 0.25 - v).powi(2))
        .sum::<f32>()
        / x.len() as f32;
    assert!((var - 2.25).abs() < 0.15, "noise variance {var}");
}

#[test]
fn fused_dp_sgd_update_matches_noise_then_update() {
    let (g, c) = (gpu(), CpuBackend::new());
    let w = data(3001, 13);
    let gr = data(3001, 14);
    for std in [0.0, 1.3] {
        let p = NoiseParams {
            seed: 77,
            stream: 5,
            offset: 11,
            std,
            scale: 0.125,
        };
        let fused = c.dp_sgd_update(&w, &gr, 0.1, p).unwrap();
        let two = c.sgd_update(&w, &c.dp_noise(&gr, p).unwrap(), 0.1).unwrap();
        // Same arithmetic in the same order: identical bits on the CPU.
        assert!(
            fused
                .iter()
                .zip(&two)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        assert_close(&g.dp_sgd_update(&w, &gr, 0.1, p).unwrap(), &fused, 1e-5);
    }
}

#[test]
fn cpu_noise_pairs_match_the_per_element_definition_at_any_offset() {
    let c = CpuBackend::new();
    let g = vec![0.0f32; 40_001]; // odd length, above the parallel threshold
    for offset in [0u32, 1, 7, u32::MAX - 5] {
        let p = NoiseParams {
            seed: 9,
            stream: 3,
            offset,
            std: 1.0,
            scale: 1.0,
        };
        let out = c.dp_noise(&g, p).unwrap();
        for i in [0usize, 1, 2, 8191, 8192, 8193, 40_000] {
            let want = compute::rng::gaussian(9, 3, offset.wrapping_add(i as u32));
            assert_eq!(
                out[i].to_bits(),
                want.to_bits(),
                "offset {offset} index {i}"
            );
        }
    }
    // And the GPU agrees at an odd offset too.
    let p = NoiseParams {
        seed: 9,
        stream: 3,
        offset: 7,
        std: 1.0,
        scale: 1.0,
    };
    assert_close(
        &gpu().dp_noise(&g[..999], p).unwrap(),
        &c.dp_noise(&g[..999], p).unwrap(),
        1e-4,
    );
}

#[test]
fn standardization_kernels_match_cpu() {
    let (g, c) = (gpu(), CpuBackend::new());
    let (rows, cols) = (101, 7);
    let x: Vec<f32> = data(rows * cols, 12)
        .iter()
        .map(|v| v * 10.0 + 3.0)
        .collect();
    let sg = g.col_stats(&x, rows, cols).unwrap();
    let sc = c.col_stats(&x, rows, cols).unwrap();
    assert_close(&sg.mean, &sc.mean, 1e-5);
    assert_close(&sg.std, &sc.std, 1e-4);
    assert_eq!(sg.min, sc.min);
    assert_eq!(sg.max, sc.max);
    let inv: Vec<f32> = sc.std.iter().map(|s| 1.0 / s).collect();
    let yg = g.affine_cols(&x, rows, cols, &sc.mean, &inv).unwrap();
    let yc = c.affine_cols(&x, rows, cols, &sc.mean, &inv).unwrap();
    assert_close(&yg, &yc, 1e-5);
    let st = c.col_stats(&yc, rows, cols).unwrap();
    assert!(st.mean.iter().all(|m| m.abs() < 1e-5));
    assert!(st.std.iter().all(|s| (s - 1.0).abs() < 1e-4));
}

#[test]
fn shape_errors_are_reported_not_panics() {
    let (g, c) = (gpu(), CpuBackend::new());
    assert!(c.gemm(&[1.0; 5], &[1.0; 6], 2, 3, 2, false, false).is_err());
    assert!(g.gemm(&[1.0; 5], &[1.0; 6], 2, 3, 2, false, false).is_err());
    assert!(g.bias_act(&[1.0; 6], &[1.0; 2], 2, 3, true).is_err());
    // Empty tensors are legal.
    assert!(g.gemm(&[], &[], 0, 0, 0, false, false).unwrap().is_empty());
}
