//! The public surface other crates use: backend selection and serializable specs.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns unwrap too

use compute::{
    BackendKind, BackendPreference, DpConfig, PreprocessOp, TrainSpec, WorkloadSpec, select_backend,
};

#[test]
fn select_backend_explains_its_choice() {
    let cpu = select_backend(BackendPreference::Cpu).unwrap();
    assert_eq!(cpu.backend.info().kind, BackendKind::Cpu);
    assert!(cpu.reason.contains("requested"));

    // CI has lavapipe: asking for wgpu must give wgpu (and fail if no adapter).
    let w = select_backend(BackendPreference::Wgpu).expect("wgpu adapter required");
    assert_eq!(w.backend.info().kind, BackendKind::Wgpu);

    let auto = select_backend(BackendPreference::Auto).unwrap();
    let info = w.backend.info();
    let real_gpu = info.device_type == "DiscreteGpu" || info.device_type == "IntegratedGpu";
    let want = if real_gpu {
        BackendKind::Wgpu
    } else {
        BackendKind::Cpu
    };
    assert_eq!(auto.backend.info().kind, want, "{}", auto.reason);
    assert!(!auto.reason.is_empty());
    eprintln!("auto: {}", auto.reason);
}

#[test]
fn workload_specs_roundtrip_through_serde() {
    let specs = [
        WorkloadSpec::Train(TrainSpec {
            layers: vec![11, 32, 6],
            epochs: 3,
            batch: 32,
            lr: 0.05,
            dp: Some(DpConfig {
                clip: 1.0,
                sigma: 1.1,
                delta: 1e-5,
            }),
            seed: 42,
            checkpoint_every: 10,
            sampling: Default::default(),
            task: Default::default(),
        }),
        WorkloadSpec::Infer { layers: vec![4, 3] },
        WorkloadSpec::Preprocess {
            op: PreprocessOp::Split {
                test_fraction: 0.25,
                seed: 1,
            },
        },
    ];
    for s in specs {
        let json = serde_json::to_string(&s).unwrap();
        let back: WorkloadSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(s, back, "{json}");
    }
    // Defaults keep job files short.
    let s: WorkloadSpec = serde_json::from_str(
        r#"{"kind":"train","layers":[4,3],"epochs":1,"batch":8,"lr":0.1,"dp":{"clip":1.0,"sigma":1.0},"seed":1}"#,
    )
    .unwrap();
    let WorkloadSpec::Train(t) = s else {
        panic!("not train")
    };
    assert_eq!(t.checkpoint_every, 20);
    assert_eq!(t.dp.unwrap().delta, 1e-5);
}

/// One epoch of plain SGD through `layers`, for the error-path checks.
fn small_train(layers: [usize; 2]) -> WorkloadSpec {
    WorkloadSpec::Train(TrainSpec {
        layers: layers.to_vec(),
        epochs: 1,
        batch: 8,
        lr: 0.1,
        dp: None,
        seed: 1,
        checkpoint_every: 10,
        sampling: Default::default(),
        task: Default::default(),
    })
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let be = compute::CpuBackend::new();
    let spec = small_train([4, 3]);
    assert!(compute::run_workload(&be, &spec, b"not safetensors", None).is_err());
    let iris = compute::datasets::builtin(compute::datasets::Builtin::Iris).unwrap();
    // Two classes declared, three in the data.
    let bad = small_train([4, 2]);
    assert!(compute::run_workload(&be, &bad, &iris, None).is_err());
    // Infer without a model.
    assert!(
        compute::run_workload(
            &be,
            &WorkloadSpec::Infer { layers: vec![4, 3] },
            &iris,
            None
        )
        .is_err()
    );
    // Truncated file.
    assert!(compute::run_workload(&be, &spec, &iris[..iris.len() / 2], None).is_err());
    // The spec trains fine on iris.
    assert!(compute::run_workload(&be, &spec, &iris, None).is_ok());
}
