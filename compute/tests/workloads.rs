//! Workloads on real data (red wine quality, shipped by `linfa-datasets`), FLOP
//! accounting, determinism, verification and federated learning.
//!
//! Stated baselines (test split = 20 % of 1 599 wines, seed 1):
//! - majority-class accuracy ("always quality 5") on the test split; training must
//!   beat it by ≥ 8 points without DP and ≥ 5 points with DP-SGD (σ = 1, C = 1);
//! - FedAvg over 3 shards with DP-SGD must reach within 5 points of centralized
//!   non-private training on the same split.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns unwrap too

use compute::datasets::{Builtin, builtin, generate_classification};
use compute::fedavg::{FedAvgSpec, fedavg};
use compute::mlp::{Data, Mlp, Ops};
use compute::verify::{
    Compare, MatRef, challenge_segment, freivalds, verify_inference_sample, verify_training_segment,
};
use compute::workload::DataShape;
use compute::{
    Backend, CpuBackend, DpConfig, PreprocessOp, TrainSpec, WgpuBackend, WorkloadSpec, flops_for,
    run_preprocess, run_workload, tensors,
};

fn wine_split() -> Vec<u8> {
    let be = CpuBackend::new();
    let raw = builtin(Builtin::WineQuality).unwrap();
    let std = run_preprocess(&be, PreprocessOp::Standardize, &raw).unwrap();
    run_preprocess(
        &be,
        PreprocessOp::Split {
            test_fraction: 0.2,
            seed: 1,
        },
        &std.output,
    )
    .unwrap()
    .output
}

fn majority_baseline(split: &[u8]) -> f64 {
    let test = Data::from_safetensors(split, "x_test", "y_test").unwrap();
    let train = Data::from_safetensors(split, "x", "y").unwrap();
    let mut counts = [0usize; 6];
    for &y in train.y.classes().unwrap() {
        counts[y as usize] += 1;
    }
    let majority = (0..6).max_by_key(|&c| counts[c]).unwrap() as u32;
    test.y
        .classes()
        .unwrap()
        .iter()
        .filter(|&&y| y == majority)
        .count() as f64
        / test.rows as f64
}
/// A wine model trained for `epochs` on `split` (plain SGD).
fn wine_model(be: &dyn Backend, split: &[u8], epochs: usize) -> Vec<u8> {
    let spec = WorkloadSpec::Train(TrainSpec {
        epochs,
        ..wine_spec(None)
    });
    run_workload(be, &spec, split, None).unwrap().output
}

fn wine_spec(dp: Option<DpConfig>) -> TrainSpec {
    TrainSpec {
        layers: vec![11, 32, 6],
        epochs: 30,
        batch: 32,
        lr: 0.05,
        dp,
        seed: 7,
        checkpoint_every: 20,
        sampling: Default::default(),
        task: Default::default(),
    }
}

const DP: DpConfig = DpConfig {
    clip: 1.0,
    sigma: 1.0,
    delta: 1e-5,
};

#[test]
fn training_on_wine_lowers_loss_and_beats_majority_baseline() {
    let split = wine_split();
    let base = majority_baseline(&split);
    assert!((0.35..0.5).contains(&base), "baseline {base}");
    let out = run_workload(
        &CpuBackend::new(),
        &WorkloadSpec::Train(wine_spec(None)),
        &split,
        None,
    )
    .unwrap();
    let m = &out.metrics;
    let (first, last) = (m.loss_per_epoch[0], *m.loss_per_epoch.last().unwrap());
    assert!(last < 0.8 * first, "loss {first} → {last}");
    let acc = m.test_accuracy.unwrap();
    eprintln!(
        "wine: loss {first:.3} → {last:.3}, test accuracy {acc:.3}, majority baseline {base:.3}"
    );
    assert!(acc >= base + 0.08, "test accuracy {acc} vs majority {base}");
    assert!(m.epsilon.is_none());
    // The output is a loadable model.
    let model = Mlp::from_safetensors(&out.output).unwrap();
    assert_eq!(model.layers, vec![11, 32, 6]);
}

#[test]
fn dp_sgd_on_wine_still_learns_and_reports_epsilon() {
    let split = wine_split();
    let base = majority_baseline(&split);
    let out = run_workload(
        &CpuBackend::new(),
        &WorkloadSpec::Train(wine_spec(Some(DP))),
        &split,
        None,
    )
    .unwrap();
    let m = &out.metrics;
    let acc = m.test_accuracy.unwrap();
    eprintln!(
        "wine DP-SGD: test accuracy {acc:.3} (majority {base:.3}), eps = {:?}",
        m.epsilon
    );
    assert!(
        acc >= base + 0.05,
        "DP test accuracy {acc} vs majority {base}"
    );
    assert!(m.loss_per_epoch.last().unwrap() < &m.loss_per_epoch[0]);
    let eps = m.epsilon.unwrap();
    let q = 32.0 / 1279.0;
    assert_eq!(eps, compute::dp::rdp_epsilon(1.0, q, 30 * 40, 1e-5));
    assert!(eps.is_finite() && eps > 0.0);
}

#[test]
fn flops_for_predicts_what_run_workload_counts() {
    let split = wine_split();
    let train = Data::from_safetensors(&split, "x", "y").unwrap();
    let test = Data::from_safetensors(&split, "x_test", "y_test").unwrap();
    let shape = DataShape {
        rows: train.rows,
        features: 11,
        test_rows: test.rows,
    };
    let be = CpuBackend::new();
    for dp in [None, Some(DP)] {
        let mut spec = wine_spec(dp);
        spec.epochs = 2;
        let ws = WorkloadSpec::Train(spec);
        let out = run_workload(&be, &ws, &split, None).unwrap();
        assert_eq!(out.flops, flops_for(&ws, shape), "dp = {}", dp.is_some());
        assert!(out.compute_units() > 0.0);
    }
    let model = wine_model(&be, &split, 1);
    let infer = WorkloadSpec::Infer {
        layers: vec![11, 32, 6],
    };
    let out = run_workload(&be, &infer, &split, Some(&model)).unwrap();
    assert_eq!(out.flops, flops_for(&infer, shape));
    let pre = WorkloadSpec::Preprocess {
        op: PreprocessOp::Normalize,
    };
    let out = run_workload(&be, &pre, &split, None).unwrap();
    assert_eq!(out.flops, flops_for(&pre, shape));
    // 2·m·k·n dominates: a 1000-row inference through [11, 32, 6] is ≈ 2·1000·(11·32 + 32·6).
    let f = flops_for(
        &infer,
        DataShape {
            rows: 1000,
            features: 11,
            test_rows: 0,
        },
    );
    let gemm = 2 * 1000 * (11 * 32 + 32 * 6);
    assert!((gemm..gemm * 11 / 10).contains(&f), "{f}");
}

#[test]
fn cpu_training_is_bit_for_bit_reproducible() {
    let data = generate_classification(300, 8, 3, 5).unwrap();
    let spec = WorkloadSpec::Train(TrainSpec {
        layers: vec![8, 16, 3],
        epochs: 3,
        batch: 25,
        lr: 0.1,
        dp: Some(DP),
        seed: 11,
        checkpoint_every: 5,
        sampling: Default::default(),
        task: Default::default(),
    });
    let be = CpuBackend::new();
    let a = run_workload(&be, &spec, &data, None).unwrap();
    let b = run_workload(&be, &spec, &data, None).unwrap();
    assert!(a.output == b.output);
    assert_eq!(a.checkpoints, b.checkpoints);
    assert_eq!(a.checkpoints.len(), 1 + 36 / 5 + 1);
    let mut other = spec.clone();
    if let WorkloadSpec::Train(t) = &mut other {
        t.seed = 12;
    }
    let c = run_workload(&be, &other, &data, None).unwrap();
    assert!(
        a.output != c.output,
        "a different seed must change the noise and the model"
    );
}

#[test]
fn wgpu_training_matches_cpu_within_tolerance() {
    let gpu = WgpuBackend::new().expect("wgpu adapter required (install mesa-vulkan-drivers)");
    let data = generate_classification(96, 6, 3, 2).unwrap();
    for dp in [None, Some(DP)] {
        let spec = WorkloadSpec::Train(TrainSpec {
            layers: vec![6, 16, 3],
            epochs: 2,
            batch: 32,
            lr: 0.1,
            dp,
            seed: 3,
            checkpoint_every: 3,
            sampling: Default::default(),
            task: Default::default(),
        });
        let c = run_workload(&CpuBackend::new(), &spec, &data, None).unwrap();
        let g = run_workload(&gpu, &spec, &data, None).unwrap();
        let (mc, mg) = (
            Mlp::from_safetensors(&c.output).unwrap(),
            Mlp::from_safetensors(&g.output).unwrap(),
        );
        let diff = mc.max_abs_diff(&mg);
        assert!(diff < 1e-3, "dp={} max |Δw| = {diff}", dp.is_some());
        assert_eq!(c.flops, g.flops);
    }
}

#[test]
fn preprocess_ops_do_what_they_say() {
    let be = CpuBackend::new();
    let raw = builtin(Builtin::Iris).unwrap();
    let norm = run_preprocess(&be, PreprocessOp::Normalize, &raw).unwrap();
    let st = tensors::parse(&norm.output).unwrap();
    let (_, _, x) = tensors::read_matrix(&st, "x").unwrap();
    assert!(x.iter().all(|v| (-1e-6..=1.0 + 1e-6).contains(v)));
    let sh = run_preprocess(&be, PreprocessOp::Shuffle { seed: 4 }, &raw).unwrap();
    let a = Data::from_safetensors(&raw, "x", "y").unwrap();
    let b = Data::from_safetensors(&sh.output, "x", "y").unwrap();
    assert_ne!(a.y, b.y);
    let mut ya = a.y.classes().unwrap().to_vec();
    let mut yb = b.y.classes().unwrap().to_vec();
    ya.sort();
    yb.sort();
    assert_eq!(ya, yb, "shuffle keeps the multiset of labels");
    let split = run_preprocess(
        &be,
        PreprocessOp::Split {
            test_fraction: 0.2,
            seed: 4,
        },
        &raw,
    )
    .unwrap();
    let tr = Data::from_safetensors(&split.output, "x", "y").unwrap();
    let te = Data::from_safetensors(&split.output, "x_test", "y_test").unwrap();
    assert_eq!((tr.rows, te.rows), (120, 30));
}

#[test]
fn inference_runs_and_sampled_rows_verify() {
    let be = CpuBackend::new();
    let split = wine_split();
    let model = wine_model(&be, &split, 3);
    let spec = WorkloadSpec::Infer {
        layers: vec![11, 32, 6],
    };
    let out = run_workload(&be, &spec, &split, Some(&model)).unwrap();
    assert!(out.metrics.train_accuracy.unwrap() > 0.4);
    let v =
        verify_inference_sample(&be, &model, &split, &out.output, 50, 9, Compare::Exact).unwrap();
    assert!(v.ok, "{v:?}");
    // A provider that returns logits of a different (cheaper) model is caught.
    let other = Mlp::init(&[11, 32, 6], 99)
        .unwrap()
        .to_safetensors()
        .unwrap();
    let fake = run_workload(&be, &spec, &split, Some(&other)).unwrap();
    let v =
        verify_inference_sample(&be, &model, &split, &fake.output, 50, 9, Compare::Exact).unwrap();
    assert!(!v.ok, "{v:?}");
    // Wrong architecture is refused before running.
    assert!(
        run_workload(
            &be,
            &WorkloadSpec::Infer {
                layers: vec![11, 8, 6]
            },
            &split,
            Some(&model)
        )
        .is_err()
    );
}

fn rand_mat(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    (0..(rows * cols) as u32)
        .map(|i| compute::rng::uniform(seed, 1, i) * 2.0 - 1.0)
        .collect()
}

#[test]
fn freivalds_accepts_correct_products_and_rejects_one_corrupted_entry() {
    let (m, k, n) = (40, 48, 36);
    let a = rand_mat(m, k, 1);
    let b = rand_mat(k, n, 2);
    let c = CpuBackend::new()
        .gemm(&a, &b, m, k, n, false, false)
        .unwrap();
    let am = MatRef::new(m, k, &a).unwrap();
    let bm = MatRef::new(k, n, &b).unwrap();
    // Correct products (CPU and GPU-computed) pass for every seed.
    let gpu = WgpuBackend::new().expect("wgpu adapter required");
    let cg = gpu.gemm(&a, &b, m, k, n, false, false).unwrap();
    for seed in 0..50 {
        assert!(freivalds(am, bm, MatRef::new(m, n, &c).unwrap(), 10, seed, 1e-4).unwrap());
        assert!(freivalds(am, bm, MatRef::new(m, n, &cg).unwrap(), 10, seed, 1e-4).unwrap());
    }
    // One corrupted entry: one round catches it about half the time…
    let mut bad = c.clone();
    bad[17 * n + 5] += 0.5;
    let badm = MatRef::new(m, n, &bad).unwrap();
    let trials = 400;
    let caught = (0..trials)
        .filter(|&s| !freivalds(am, bm, badm, 1, s, 1e-4).unwrap())
        .count();
    let rate = caught as f64 / trials as f64;
    assert!(
        (0.4..0.6).contains(&rate),
        "single-round detection rate {rate}"
    );
    // k = 3 rounds: caught with probability 1 − 2⁻³ = 0.875 (binomial sd over 400
    // seeds ≈ 0.017, so 0.82 is > 3 sd below).
    let caught3 = (0..trials)
        .filter(|&s| !freivalds(am, bm, badm, 3, s, 1e-4).unwrap())
        .count() as f64
        / trials as f64;
    assert!(caught3 >= 0.82, "3-round detection rate {caught3}");
    // …and k = 20 rounds catch it for every seed (false accept ≤ 2⁻²⁰ each).
    for seed in 0..trials {
        assert!(
            !freivalds(am, bm, badm, 20, seed, 1e-4).unwrap(),
            "seed {seed}"
        );
    }
    assert!(freivalds(am, bm, MatRef::new(m, k, &a).unwrap(), 1, 0, 1e-4).is_err());
}

/// A training job of `spec` on `data`, on the CPU.
fn train_on_cpu(spec: &TrainSpec, data: &[u8]) -> compute::WorkloadOutput {
    run_workload(
        &CpuBackend::new(),
        &WorkloadSpec::Train(spec.clone()),
        data,
        None,
    )
    .unwrap()
}

fn train_for_verification() -> (Vec<u8>, TrainSpec, compute::WorkloadOutput) {
    let data = generate_classification(200, 8, 3, 21).unwrap();
    let spec = TrainSpec {
        layers: vec![8, 16, 3],
        epochs: 4,
        batch: 20,
        lr: 0.1,
        dp: Some(DP),
        seed: 5,
        checkpoint_every: 7,
        sampling: Default::default(),
        task: Default::default(),
    };
    let out = train_on_cpu(&spec, &data);
    (data, spec, out)
}

/// Three challenged segments of an honest run re-execute bit for bit on the
/// CPU, and on wgpu: bit for bit where its self-test finds it exact (lavapipe),
/// else within the tolerance.
fn segments_verify(spec: &TrainSpec, data: &[u8], out: &compute::WorkloadOutput) {
    let chain = &out.checkpoints;
    let gpu = WgpuBackend::new().expect("wgpu adapter required");
    let on_gpu = if compute::selftest::run(&gpu).unwrap().exact {
        Compare::Exact
    } else {
        Compare::Tolerant
    };
    for seed in 0..3 {
        let i = challenge_segment(chain, seed).unwrap();
        let (s, e) = (&out.checkpoint_models[i - 1], &out.checkpoint_models[i]);
        let cpu = CpuBackend::new();
        let v = verify_training_segment(&cpu, spec, data, chain, i, s, e, Compare::Exact).unwrap();
        assert!(
            v.ok && v.max_abs_diff == 0.0,
            "CPU re-execution is exact: {v:?}"
        );
        let v = verify_training_segment(&gpu, spec, data, chain, i, s, e, on_gpu).unwrap();
        assert!(v.ok, "{v:?}");
    }
}

#[test]
fn honest_training_segment_verifies_on_cpu_and_gpu() {
    let (data, spec, out) = train_for_verification();
    segments_verify(&spec, &data, &out);
    let chain = &out.checkpoints;
    // The final model is the last link.
    let last = chain.len() - 1;
    let final_model = Mlp::from_safetensors(&out.output).unwrap();
    assert!(compute::verify::matches_link(
        chain,
        last,
        spec.seed,
        &final_model
    ));
}

#[test]
fn tampered_training_segment_is_caught() {
    let (data, spec, out) = train_for_verification();
    let mut chain = out.checkpoints.clone();
    let i = 3;
    // A provider that skipped work: it commits to weights it did not compute
    // (here: the start weights slightly perturbed), with a consistent chain.
    let mut lazy = Mlp::from_safetensors(&out.checkpoint_models[i - 1]).unwrap();
    lazy.w[0][0] += 0.01;
    chain[i].hash = compute::workload::chain_next(&chain[i - 1].hash, chain[i].step, &lazy);
    let lazy_bytes = lazy.to_safetensors().unwrap();
    // Re-execute link `i` of `chain` from the honest start weights to `end`.
    let check = |chain: &[compute::Checkpoint], end: &[u8]| {
        verify_training_segment(
            &CpuBackend::new(),
            &spec,
            &data,
            chain,
            i,
            &out.checkpoint_models[i - 1],
            end,
            Compare::Tolerant,
        )
        .unwrap()
    };
    let v = check(&chain, &lazy_bytes);
    assert!(!v.ok, "{v:?}");
    // Revealing weights that do not match the committed chain is caught by the hash.
    let v = check(&out.checkpoints, &lazy_bytes);
    assert!(!v.ok && v.reason.contains("do not match"), "{v:?}");
    // A single flipped weight in the honest end weights: hash mismatch.
    let mut end = Mlp::from_safetensors(&out.checkpoint_models[i]).unwrap();
    end.b[1][0] = f32::from_bits(end.b[1][0].to_bits() ^ 1);
    let v = check(&out.checkpoints, &end.to_safetensors().unwrap());
    assert!(!v.ok);
}

#[test]
fn fedavg_over_three_dp_shards_approaches_centralized_training() {
    let split = wine_split();
    let be = CpuBackend::new();
    let central = run_workload(&be, &WorkloadSpec::Train(wine_spec(None)), &split, None).unwrap();
    let central_acc = central.metrics.test_accuracy.unwrap();
    // Three providers, each with a private third of the training rows.
    let train = Data::from_safetensors(&split, "x", "y").unwrap();
    let shards: Vec<Vec<u8>> = (0..3)
        .map(|p| {
            let idx: Vec<usize> = (0..train.rows).filter(|r| r % 3 == p).collect();
            let (x, y) = train.gather(&idx);
            tensors::Writer::new()
                .f32("x", &[idx.len(), 11], &x)
                .u32("y", &[idx.len()], y.classes().unwrap())
                .to_bytes()
                .unwrap()
        })
        .collect();
    let refs: Vec<&[u8]> = shards.iter().map(Vec::as_slice).collect();
    let spec = FedAvgSpec {
        rounds: 10,
        local: TrainSpec {
            epochs: 3,
            ..wine_spec(Some(DP))
        },
    };
    let out = fedavg(&be, &spec, &refs).unwrap();
    let test = Data::from_safetensors(&split, "x_test", "y_test").unwrap();
    let (_, acc) = out.model.evaluate(&Ops::new(&be), &test, 256).unwrap();
    eprintln!(
        "FedAvg (3 DP shards) test accuracy {acc:.3} vs centralized {central_acc:.3}; eps per provider {:?}",
        out.providers.iter().map(|p| p.epsilon).collect::<Vec<_>>()
    );
    assert!(
        acc >= central_acc - 0.05,
        "FedAvg {acc} vs centralized {central_acc}"
    );
    assert_eq!(out.providers.len(), 3);
    for p in &out.providers {
        let steps = 10 * 3 * p.rows.div_ceil(32) as u64;
        assert_eq!(p.steps, steps);
        let q = 32.0 / p.rows as f64;
        assert_eq!(
            p.epsilon,
            Some(compute::dp::rdp_epsilon(1.0, q, steps, 1e-5))
        );
        assert!(p.flops > 0);
    }
}

#[test]
fn poisson_sampled_dp_sgd_learns_and_matches_its_cost_estimate() {
    let split = wine_split();
    let base = majority_baseline(&split);
    let mut spec = wine_spec(Some(DP));
    spec.sampling = compute::Sampling::Poisson;
    // Batches are Poisson: their mean size is the nominal batch.
    let rows = Data::from_safetensors(&split, "x", "y").unwrap().rows;
    let sizes: Vec<usize> = (0..200)
        .map(|s| spec.batch_rows(rows, s, &mut None).len())
        .collect();
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    assert!((mean - 32.0).abs() < 2.0, "mean Poisson batch {mean}");
    assert!(sizes.iter().any(|&s| s != 32));
    let ws = WorkloadSpec::Train(spec);
    let out = run_workload(&CpuBackend::new(), &ws, &split, None).unwrap();
    let acc = out.metrics.test_accuracy.unwrap();
    eprintln!(
        "wine DP-SGD (Poisson sampling): test accuracy {acc:.3}, eps {:?}",
        out.metrics.epsilon
    );
    assert!(acc >= base + 0.05, "{acc} vs {base}");
    let shape = DataShape {
        rows,
        features: 11,
        test_rows: 320,
    };
    let est = flops_for(&ws, shape) as f64;
    assert!(
        (out.flops as f64 / est - 1.0).abs() < 0.05,
        "{} vs {est}",
        out.flops
    );
    // Re-execution reproduces the sampled batches too.
    let again = run_workload(&CpuBackend::new(), &ws, &split, None).unwrap();
    assert!(again.output == out.output);
}

/// y = 2·x₀ − x₁ + 0.5·x₂² + noise, 400 rows (320 train, 80 test).
fn regression_data() -> Vec<u8> {
    let (rows, cols) = (400usize, 3usize);
    let x: Vec<f32> = (0..(rows * cols) as u32)
        .map(|i| compute::rng::gaussian(11, 0, i))
        .collect();
    let y: Vec<f32> = x
        .chunks(cols)
        .enumerate()
        .map(|(i, r)| {
            2.0 * r[0] - r[1] + 0.5 * r[2] * r[2] + 0.1 * compute::rng::gaussian(11, 1, i as u32)
        })
        .collect();
    let (tr, te) = (320, 80);
    tensors::Writer::new()
        .f32("x", &[tr, cols], &x[..tr * cols])
        .f32("y", &[tr], &y[..tr])
        .f32("x_test", &[te, cols], &x[tr * cols..])
        .f32("y_test", &[te], &y[tr..])
        .to_bytes()
        .unwrap()
}

fn regression_spec() -> TrainSpec {
    TrainSpec {
        task: compute::mlp::Task::Regress,
        checkpoint_every: 16,
        ..TrainSpec::new(vec![3, 32, 1], 60, 32, 0.02, 3)
    }
}

#[test]
fn regression_learns_a_nonlinear_target_and_its_segments_verify() {
    let data = regression_data();
    let spec = regression_spec();
    let out = train_on_cpu(&spec, &data);
    let m = &out.metrics;
    let (rmse, r2) = (m.test_rmse.unwrap(), m.test_r2.unwrap());
    // The target's spread is about 2.4: a linear fit leaves the x₂² part
    // (R² ≈ 0.9); the hidden layer must do better.
    assert!(r2 > 0.93 && rmse < 0.7, "test RMSE {rmse}, R² {r2}: {m:?}");
    assert!(m.train_accuracy.is_none() && m.test_accuracy.is_none());
    assert!(m.loss_per_epoch.first() > m.loss_per_epoch.last(), "{m:?}");
    // The model says what it was trained for.
    let meta = tensors::metadata(&out.output).unwrap();
    assert_eq!(meta.get("task").map(String::as_str), Some("regress"));
    // Units come from the FLOP model whatever the task.
    let shape = DataShape {
        rows: 320,
        features: 3,
        test_rows: 80,
    };
    assert_eq!(
        flops_for(&WorkloadSpec::Train(spec.clone()), shape),
        out.flops
    );
    // A segment re-executes exactly on the CPU, and within tolerance on wgpu.
    segments_verify(&spec, &data, &out);
}

#[test]
fn a_task_that_does_not_fit_its_targets_is_refused() {
    let be = CpuBackend::new();
    // Real targets as classes: not class numbers.
    let classify = TrainSpec {
        task: compute::mlp::Task::Classify,
        ..regression_spec()
    };
    let e = run_workload(
        &be,
        &WorkloadSpec::Train(classify),
        &regression_data(),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("non-integral label"), "{e}");
    // Class numbers as a regression: the job says classify or the data is wrong.
    let classes = generate_classification(50, 3, 2, 1).unwrap();
    let e = run_workload(&be, &WorkloadSpec::Train(regression_spec()), &classes, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("targets"), "{e}");
    // A regression with more than one output.
    let wide = TrainSpec {
        layers: vec![3, 8, 2],
        ..regression_spec()
    };
    let e = run_workload(&be, &WorkloadSpec::Train(wide), &regression_data(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("one output"), "{e}");
}

/// An inference job on a regression model: the model's output and each row's
/// target in its own units (the model file's scale), with RMSE and R² against
/// labelled rows; a committee's sample re-run accepts it, and catches targets
/// that do not follow from the outputs.
#[test]
fn a_regression_model_infers_targets_that_a_check_can_verify() {
    let data = regression_data();
    let trained = train_on_cpu(&regression_spec(), &data);
    // The requester's copy says how the target was scaled.
    let scale = [("target_mean", "100"), ("target_scale", "4")]
        .map(|(k, v)| (k.to_string(), v.to_string()));
    let model = tensors::with_metadata(&trained.output, &scale.into_iter().collect()).unwrap();
    let layers = vec![3, 32, 1];
    let be = CpuBackend::new();
    // The held-out rows, as a data set of their own.
    let st = tensors::parse(&data).unwrap();
    let (rows, cols, x) = tensors::read_matrix(&st, "x_test").unwrap();
    let y = tensors::read_targets(&st, "y_test").unwrap();
    let test = tensors::Writer::new()
        .f32("x", &[rows, cols], &x)
        .f32("y", &[rows], &y)
        .to_bytes()
        .unwrap();
    let out = run_workload(&be, &WorkloadSpec::Infer { layers }, &test, Some(&model)).unwrap();
    // Its RMSE and R² are the training run's on the same rows.
    let m = &out.metrics;
    let (rmse, r2) = (m.train_rmse.unwrap(), m.train_r2.unwrap());
    assert!(
        (rmse - trained.metrics.test_rmse.unwrap()).abs() < 1e-4,
        "{m:?} vs {:?}",
        trained.metrics
    );
    assert!(r2 > 0.93, "{m:?}");
    assert!(m.train_accuracy.is_none(), "{m:?}");
    let o = tensors::parse(&out.output).unwrap();
    let (lr, width, logits) = tensors::read_matrix(&o, "logits").unwrap();
    let targets = tensors::read_targets(&o, "y").unwrap();
    assert_eq!((lr, width, targets.len()), (rows, 1, rows));
    for (t, z) in targets.iter().zip(&logits) {
        assert_eq!(*t, (f64::from(*z) * 4.0 + 100.0) as f32);
    }
    assert!(!tensors::has(&o, "pred"), "a regression has no classes");
    let verdict =
        verify_inference_sample(&be, &model, &test, &out.output, 16, 5, Compare::Exact).unwrap();
    assert!(verdict.ok, "{verdict:?}");
    // A provider that reports other targets than its outputs give.
    let mut forged = targets.clone();
    for t in &mut forged {
        *t += 1.0;
    }
    let claimed = tensors::Writer::new()
        .f32("logits", &[rows, 1], &logits)
        .f32("y", &[rows], &forged)
        .to_bytes()
        .unwrap();
    let verdict =
        verify_inference_sample(&be, &model, &test, &claimed, 16, 5, Compare::Exact).unwrap();
    assert!(!verdict.ok, "{verdict:?}");
    assert!(verdict.reason.contains("does not follow"), "{verdict:?}");
}

/// A local round under DP-SGD, warm-started from a global model, moves it
/// by more than the floor and less than the bound a committee checks
/// without the data, and spends
/// the ε the job's accountant says (one round: the training's own).
#[test]
fn a_local_dp_round_stays_within_its_update_bound_and_spends_the_stated_epsilon() {
    use compute::fedavg::{distance, job_epsilon, update_norm_bound, update_norm_floor};
    let data = wine_split();
    let rows = Data::from_safetensors(&data, "x", "y").unwrap().rows;
    let spec = TrainSpec {
        dp: Some(DpConfig {
            clip: 1.0,
            sigma: 1.1,
            delta: 1e-5,
        }),
        ..TrainSpec::new(vec![11, 16, 6], 2, 64, 0.05, 9)
    };
    let global = Mlp::init(&[11, 16, 6], 3).unwrap();
    let out = run_workload(
        &CpuBackend::new(),
        &WorkloadSpec::Train(spec.clone()),
        &data,
        Some(&global.to_safetensors().unwrap()),
    )
    .unwrap();
    let local = Mlp::from_safetensors(&out.output).unwrap();
    let moved = distance(&local, &global).unwrap();
    let bound = update_norm_bound(&spec, rows, global.params()).unwrap();
    let floor = update_norm_floor(&spec, rows, global.params()).unwrap();
    assert!(
        moved > floor && moved < bound,
        "moved {moved}, not in [{floor}, {bound}]"
    );
    let eps = job_epsilon(&spec, rows, 1).unwrap();
    assert!(
        (eps - out.metrics.epsilon.unwrap()).abs() < 1e-9,
        "{eps} vs {:?}",
        out.metrics
    );
    // Three rounds spend more than one, less than three times as much (RDP).
    let three = job_epsilon(&spec, rows, 3).unwrap();
    assert!(three > eps && three < 3.0 * eps, "{eps} → {three}");
    // A model moved far beyond it (a scaled, poisoned update) is out.
    let mut poisoned = local.clone();
    for w in poisoned.w.iter_mut().flatten() {
        *w *= 1_000.0;
    }
    assert!(distance(&poisoned, &global).unwrap() > bound);
}
