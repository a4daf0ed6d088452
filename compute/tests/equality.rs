//! Checks by equality: an exact backend reproduces the canonical bits of a whole
//! training job, so a verifier compares weight hashes, and one ulp is a wrong
//! result; a backend that is not exact is held to the one tolerance instead.
//! Needs a wgpu adapter (CI installs lavapipe, which must be exact).

#![allow(clippy::unwrap_used)]

use compute::datasets::generate_classification;
use compute::mlp::Mlp;
use compute::verify::{Compare, tolerance, verify_training_segment};
use compute::workload::chain_next;
use compute::{
    Backend, CpuBackend, DpConfig, TrainSpec, WgpuBackend, WorkloadOutput, WorkloadSpec,
    run_workload,
};

fn spec(epochs: usize, dp: Option<DpConfig>, checkpoint_every: u64) -> TrainSpec {
    TrainSpec {
        layers: vec![8, 16, 3],
        epochs,
        batch: 20,
        lr: 0.1,
        dp,
        seed: 31,
        checkpoint_every,
        sampling: Default::default(),
        task: Default::default(),
    }
}

fn train(be: &dyn compute::Backend, spec: &TrainSpec, data: &[u8]) -> WorkloadOutput {
    run_workload(be, &WorkloadSpec::Train(spec.clone()), data, None).unwrap()
}

#[test]
fn an_honest_wgpu_run_of_2000_steps_reproduces_the_cpu_chain_bit_for_bit() {
    let gpu = WgpuBackend::new().expect("wgpu adapter required (install mesa-vulkan-drivers)");
    let test = compute::selftest::run(&gpu).unwrap();
    if !test.exact {
        // Another adapter than lavapipe may not be exact; it says so.
        eprintln!("skipped: {test}");
        assert_ne!(
            gpu.info().device_type,
            "Cpu",
            "lavapipe must be exact: {test}"
        );
        return;
    }
    // 200 rows in batches of 20 for 200 epochs: 2,000 steps, a link every 100.
    let data = generate_classification(200, 8, 3, 4).unwrap();
    let s = spec(200, None, 100);
    let (on_gpu, on_cpu) = (train(&gpu, &s, &data), train(&CpuBackend::new(), &s, &data));
    assert_eq!(on_cpu.checkpoints.len(), 21);
    assert_eq!(on_cpu.checkpoints.last().unwrap().step, 2_000);
    assert_eq!(on_gpu.checkpoints, on_cpu.checkpoints, "every link's hash");
    assert_eq!(on_gpu.output, on_cpu.output);
    // DP-SGD too: clipping, the counter-based noise and the fused update.
    let dp = DpConfig {
        clip: 1.0,
        sigma: 1.0,
        delta: 1e-5,
    };
    let s = spec(20, Some(dp), 20);
    let (on_gpu, on_cpu) = (train(&gpu, &s, &data), train(&CpuBackend::new(), &s, &data));
    assert_eq!(on_gpu.checkpoints, on_cpu.checkpoints, "DP-SGD links");
}

/// A provider that commits link `i` to `end` (re-hashing the chain so it stays
/// consistent), checked by re-execution from the honest start of the link.
fn check_link(
    s: &TrainSpec,
    data: &[u8],
    honest: &WorkloadOutput,
    i: usize,
    end: &Mlp,
    compare: Compare,
) -> compute::verify::Verdict {
    let mut chain = honest.checkpoints.clone();
    chain[i].hash = chain_next(&chain[i - 1].hash, chain[i].step, end);
    verify_training_segment(
        &CpuBackend::new(),
        s,
        data,
        &chain,
        i,
        &honest.checkpoint_models[i - 1],
        &end.to_safetensors().unwrap(),
        compare,
    )
    .unwrap()
}

#[test]
fn one_ulp_in_one_weight_fails_the_exact_check() {
    let data = generate_classification(200, 8, 3, 5).unwrap();
    let s = spec(2, None, 7);
    let honest = train(&CpuBackend::new(), &s, &data);
    let i = 2;
    let end = Mlp::from_safetensors(&honest.checkpoint_models[i]).unwrap();
    let v = check_link(&s, &data, &honest, i, &end, Compare::Exact);
    assert!(v.ok, "the honest link: {v:?}");
    let mut off = end.clone();
    off.w[1][5] = f32::from_bits(off.w[1][5].to_bits() + 1);
    let v = check_link(&s, &data, &honest, i, &off, Compare::Exact);
    assert!(!v.ok && v.reason.contains("do not match"), "{v:?}");
    // A tolerance would have let it through: that slack is what equality removes.
    let v = check_link(&s, &data, &honest, i, &off, Compare::Tolerant);
    assert!(v.ok, "{v:?}");
}

#[test]
fn a_backend_that_is_not_exact_passes_its_tolerance_and_a_one_percent_fake_does_not() {
    let fast = CpuBackend::fast();
    let test = compute::selftest::run(&fast).unwrap();
    assert!(!test.exact, "{test}");
    // Wide enough that matrixmultiply sums in its own order.
    let data = generate_classification(400, 64, 4, 6).unwrap();
    let mut s = spec(2, None, 7);
    s.layers = vec![64, 256, 4];
    let honest = train(&fast, &s, &data);
    let i = 2;
    let end = Mlp::from_safetensors(&honest.checkpoint_models[i]).unwrap();
    let v = check_link(&s, &data, &honest, i, &end, Compare::Tolerant);
    assert!(v.ok, "an honest inexact run: {v:?}");
    assert!(v.reason.contains(&format!("{:.1e}", tolerance(7))), "{v:?}");
    let mut fake = end.clone();
    for w in fake.w.iter_mut().chain(fake.b.iter_mut()) {
        for p in w.iter_mut() {
            *p *= 1.01;
        }
    }
    let v = check_link(&s, &data, &honest, i, &fake, Compare::Tolerant);
    assert!(!v.ok, "a 1 % perturbation: {v:?}");
}
