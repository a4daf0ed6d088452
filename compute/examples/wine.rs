//! Trains an MLP on the red wine-quality set with and without DP-SGD and prints the
//! metrics: `cargo run -p compute --release --example wine [epochs]`.

use compute::datasets::{Builtin, builtin};
use compute::{
    CpuBackend, DpConfig, PreprocessOp, TrainSpec, WorkloadSpec, run_preprocess, run_workload,
};

fn main() -> anyhow::Result<()> {
    let epochs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let be = CpuBackend::new();
    let raw = builtin(Builtin::WineQuality)?;
    let std = run_preprocess(&be, PreprocessOp::Standardize, &raw)?;
    let split = run_preprocess(
        &be,
        PreprocessOp::Split {
            test_fraction: 0.2,
            seed: 1,
        },
        &std.output,
    )?;
    for dp in [
        None,
        Some(DpConfig {
            clip: 1.0,
            sigma: 1.0,
            delta: 1e-5,
        }),
    ] {
        for (lr, hidden) in [(0.05f32, 32usize), (0.1, 32), (0.2, 64)] {
            let spec = WorkloadSpec::Train(TrainSpec {
                layers: vec![11, hidden, 6],
                epochs,
                batch: 32,
                lr,
                dp,
                seed: 7,
                checkpoint_every: 20,
                sampling: Default::default(),
                task: Default::default(),
            });
            let out = run_workload(&be, &spec, &split.output, None)?;
            let m = &out.metrics;
            println!(
                "dp={} lr={lr} h={hidden}: loss {:.3} → {:.3}, train acc {:.3}, test acc {:.3}, ε {:?}, {:.3} GFLOP in {:.2}s",
                dp.is_some(),
                m.loss_per_epoch[0],
                m.loss_per_epoch[m.loss_per_epoch.len() - 1],
                m.train_accuracy.unwrap_or(0.0),
                m.test_accuracy.unwrap_or(0.0),
                m.epsilon,
                out.compute_units(),
                out.elapsed_s
            );
        }
    }
    Ok(())
}
