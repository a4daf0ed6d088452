//! Running a contract's job and checking one, on the compute backend.
//!
//! Everything here is blocking and CPU/GPU-bound: the node calls it from
//! `tokio::task::spawn_blocking`. Inputs are the decrypted bytes of the job's blobs
//! (safetensors); the result travels as one [`JobResult`] bundle: the output, and
//! for training the checkpoint chain with the checkpointed weights, so that a
//! committee member can re-execute one link of the chain without asking anyone.

use anyhow::{Context, bail};
use compute::workload::{chain_next, chain_start};
use compute::{Backend, Checkpoint, DataShape, DpConfig, Metrics, TrainSpec, WorkloadSpec};
use protocol::{ComputeUnits, Hash32, JobKind, Receipt};
use serde::{Deserialize, Serialize};

/// Tolerance of a re-execution (relative, per parameter or logit). The CPU and wgpu
/// backends agree to ~1e-5 on the jobs we run; a wrong result is off by far more.
pub const CHECK_TOLERANCE: f32 = 1e-3;
/// Rows of an inference job that a committee member re-runs.
pub const INFER_SAMPLE: usize = 64;
/// Largest result bundle accepted (decoded from a provider's blob).
pub const MAX_RESULT: usize = 1 << 30;
const RESULT_KIND: &str = "job-result";

/// What a provider delivers (encrypted to the job key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// The output as safetensors: the trained model, the logits, the new data set.
    pub output: Vec<u8>,
    /// Training only: the weight-checkpoint chain and the weights at each link.
    pub chain: Vec<Checkpoint>,
    pub checkpoint_models: Vec<Vec<u8>>,
    pub metrics: Metrics,
}

impl JobResult {
    pub fn to_bytes(&self) -> anyhow::Result<Vec<u8>> {
        Ok(protocol::codec::encode_unbounded(RESULT_KIND, self)?)
    }

    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Self> {
        protocol::codec::decode_limited(RESULT_KIND, MAX_RESULT, bytes)
            .context("the result bundle is malformed")
    }
}

/// A finished run, as the receipt reports it.
#[derive(Debug, Clone)]
pub struct Ran {
    pub result: JobResult,
    pub units: ComputeUnits,
    pub commitment: Hash32,
    pub checkpoint_every: u32,
    pub checkpoints: u32,
    pub elapsed_s: f64,
    pub backend: String,
}

/// The compute crate's workload for a job kind (`model` names the layers of an
/// inference job).
pub fn workload_spec(kind: &JobKind, model: Option<&[u8]>) -> anyhow::Result<WorkloadSpec> {
    Ok(match kind {
        JobKind::Train {
            layers,
            epochs,
            batch,
            learning_rate,
            dp,
            seed,
            task,
        } => {
            let mut ts = TrainSpec::new(
                layers.iter().map(|&w| w as usize).collect(),
                *epochs as usize,
                *batch as usize,
                *learning_rate,
                *seed,
            );
            ts.dp = dp.map(|d| DpConfig {
                clip: d.clip_norm,
                sigma: d.noise_multiplier,
                delta: 1e-5,
            });
            ts.task = match task {
                protocol::TrainTask::Classify => compute::Task::Classify,
                protocol::TrainTask::Regress => compute::Task::Regress,
            };
            WorkloadSpec::Train(ts)
        }
        JobKind::Infer { .. } => {
            let m = model.context("an inference job needs a model")?;
            let mlp = compute::mlp::Mlp::from_safetensors(m)?;
            WorkloadSpec::Infer { layers: mlp.layers }
        }
        JobKind::Preprocess { op, seed } => WorkloadSpec::Preprocess {
            op: match op {
                protocol::PreprocessOp::Standardize => compute::PreprocessOp::Standardize,
                protocol::PreprocessOp::Normalize => compute::PreprocessOp::Normalize,
                protocol::PreprocessOp::ShuffleSplit { test_share } => {
                    compute::PreprocessOp::Split {
                        test_fraction: f32::from(test_share.0) / 10_000.0,
                        seed: *seed,
                    }
                }
            },
        },
    })
}

/// Rows and columns of a data set (its `x`, and `x_test` if present).
pub fn data_shape(data: &[u8]) -> anyhow::Result<DataShape> {
    let st = compute::tensors::parse(data)?;
    let (rows, features, _) = compute::tensors::read_matrix(&st, "x")?;
    let test_rows = if compute::tensors::has(&st, "x_test") {
        compute::tensors::read_matrix(&st, "x_test")?.0
    } else {
        0
    };
    Ok(DataShape {
        rows,
        features,
        test_rows,
    })
}

/// Compute units the job will take (1 CU = 1 GFLOP), from the FLOP model. Refuses
/// a data set whose width does not fit the model, before anything is paid.
pub fn estimate_units(kind: &JobKind, data: &[u8], model: Option<&[u8]>) -> anyhow::Result<f64> {
    let spec = workload_spec(kind, model)?;
    let shape = data_shape(data)?;
    let layers = match &spec {
        WorkloadSpec::Train(ts) => Some(&ts.layers),
        WorkloadSpec::Infer { layers } => Some(layers),
        _ => None,
    };
    if let Some(&input) = layers.and_then(|l| l.first())
        && input != shape.features
    {
        bail!(
            "the data set has {} features per row, but the model's first layer takes {input}",
            shape.features
        );
    }
    if let WorkloadSpec::Train(ts) = &spec {
        check_labels(data, ts.task, ts.layers.last().copied().unwrap_or(0))?;
    }
    Ok(compute::compute_units_for(&spec, shape))
}

/// A training set's targets must fit the job's task, caught at submit,
/// before anything is escrowed, rather than by the provider after the job is
/// paid for: class numbers the model's last layer has an output for, or (a
/// regression) real values.
fn check_labels(data: &[u8], task: compute::Task, outputs: usize) -> anyhow::Result<()> {
    let st = compute::tensors::parse(data)?;
    let names = ["y", "y_test"];
    for name in names.iter().filter(|n| compute::tensors::has(&st, n)) {
        if task == compute::Task::Regress {
            compute::tensors::read_targets(&st, name)?;
            continue;
        }
        let labels = compute::tensors::read_labels(&st, name).map_err(|e| {
            anyhow::anyhow!(
                "{e}: a classification's labels are class numbers 0, 1, …; for real-valued \
                 targets set task = \"regress\" under [train] (and one output)"
            )
        })?;
        if let Some(&top) = labels.iter().max()
            && top as usize >= outputs
        {
            bail!(
                "the data set's `{name}` has labels up to {top} ({} classes), but the model's \
                 last layer has {outputs} outputs",
                u64::from(top) + 1
            );
        }
    }
    Ok(())
}

fn units(cu: f64) -> ComputeUnits {
    ComputeUnits {
        milli: (cu * 1000.0).ceil().max(1.0) as u64,
    }
}

/// How a provider cheats, for tests and demos of the committee catching it.
/// Each result is wrong in a way only a check reveals; each receipt is well
/// formed and signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Cheat {
    /// An honest provider.
    #[default]
    None,
    /// Fake the result: training weights drift after the first link (the
    /// chain is re-hashed so it stays consistent), logits are scaled, data is
    /// shifted.
    Fake,
    /// Train only up to the first link and claim the whole job: a chain of
    /// two links, whose one segment is right. A challenge fixed in advance
    /// could only name that segment.
    Truncate,
    /// Do the work, and claim every unit the contract pays for, whatever it
    /// took.
    InflateUnits,
}

/// Run a job, honestly unless `cheat` says otherwise.
pub fn run(
    backend: &dyn Backend,
    kind: &JobKind,
    data: &[u8],
    model: Option<&[u8]>,
    cheat: Cheat,
) -> anyhow::Result<Ran> {
    let spec = workload_spec(kind, model)?;
    let out = compute::run_workload(backend, &spec, data, model)?;
    let mut result = JobResult {
        output: out.output.clone(),
        chain: out.checkpoints.clone(),
        checkpoint_models: out.checkpoint_models.clone(),
        metrics: out.metrics.clone(),
    };
    match cheat {
        Cheat::None | Cheat::InflateUnits => {}
        Cheat::Fake => fake(&spec, &mut result)?,
        Cheat::Truncate if result.chain.len() > 2 => {
            result.chain.truncate(2);
            result.checkpoint_models.truncate(2);
            result.output = result.checkpoint_models[1].clone();
        }
        Cheat::Truncate => {}
    }
    let (commitment, every, n) = match (&spec, result.chain.last()) {
        (WorkloadSpec::Train(ts), Some(last)) => (
            Hash32(last.hash),
            ts.checkpoint_every.min(u64::from(u32::MAX)) as u32,
            result.chain.len() as u32,
        ),
        _ => (Hash32(*blake3::hash(&result.output).as_bytes()), 0, 0),
    };
    Ok(Ran {
        result,
        units: units(out.compute_units()),
        commitment,
        checkpoint_every: every,
        checkpoints: n,
        elapsed_s: out.elapsed_s,
        backend: out.backend.name,
    })
}

/// The verdict over several samples: the first that fails, else one that
/// names them all.
fn all_of(
    checks: impl Iterator<Item = compute::Result<compute::verify::Verdict>>,
) -> anyhow::Result<compute::verify::Verdict> {
    let mut reasons = Vec::new();
    let mut worst = 0f32;
    for v in checks {
        let v = v?;
        if !v.ok {
            return Ok(v);
        }
        worst = worst.max(v.max_abs_diff);
        reasons.push(v.reason);
    }
    Ok(compute::verify::Verdict {
        ok: true,
        max_abs_diff: worst,
        reason: reasons.join("; "),
    })
}

/// Why a training chain does not cover the whole job, if it does not: link `i`
/// must sit at step `min(i·every, total)`, with `every` the spec's checkpoint
/// interval (which the receipt must state) and `total` the job's steps. A
/// chain that stops early, skips links or spaces them otherwise proves only
/// part of the training.
fn incomplete_chain(
    ts: &TrainSpec,
    rows: usize,
    chain: &[Checkpoint],
    receipt: &Receipt,
) -> Option<String> {
    let (every, total) = (ts.checkpoint_every, ts.total_steps(rows));
    if u64::from(receipt.checkpoint_every) != every {
        return Some(format!(
            "the receipt states a link every {} steps; the job's spec says {every}",
            receipt.checkpoint_every
        ));
    }
    let links = total.div_ceil(every) + 1;
    if chain.len() as u64 != links {
        return Some(format!(
            "{} links for a job of {total} steps with a link every {every}: {links} expected",
            chain.len()
        ));
    }
    chain
        .iter()
        .enumerate()
        .find(|(i, c)| c.step != (*i as u64).saturating_mul(every).min(total))
        .map(|(i, c)| {
            format!(
                "link {i} is at step {}, not a step the job's spacing allows",
                c.step
            )
        })
}

/// Make a result wrong in a way only re-execution reveals: training weights drift
/// after the first link (the chain is re-hashed so it stays consistent), logits
/// are scaled (predictions unchanged), data is shifted.
fn fake(spec: &WorkloadSpec, r: &mut JobResult) -> anyhow::Result<()> {
    match spec {
        WorkloadSpec::Train(ts) => {
            for i in 1..r.chain.len() {
                let mut m = compute::mlp::Mlp::from_safetensors(&r.checkpoint_models[i])?;
                for w in m.w.iter_mut().chain(m.b.iter_mut()) {
                    for p in w.iter_mut() {
                        *p += 0.05;
                    }
                }
                r.chain[i].hash = chain_next(&r.chain[i - 1].hash, r.chain[i].step, &m);
                r.checkpoint_models[i] = m.to_safetensors_as(ts.task)?;
            }
            if let Some(last) = r.checkpoint_models.last() {
                r.output = last.clone();
            }
        }
        _ => {
            let st = compute::tensors::parse(&r.output)?;
            let name = if compute::tensors::has(&st, "logits") {
                "logits"
            } else {
                "x"
            };
            let (rows, cols, mut v) = compute::tensors::read_matrix(&st, name)?;
            for x in &mut v {
                *x = *x * 1.5 + 0.25;
            }
            let mut w = compute::tensors::Writer::new().f32(name, &[rows, cols], &v);
            if name == "logits" {
                w = w.u32(
                    "pred",
                    &[rows],
                    &compute::tensors::read_labels(&st, "pred")?,
                );
            }
            r.output = w.to_bytes()?;
        }
    }
    Ok(())
}

/// A committee member's check of a delivered result, after the provider
/// committed to it in its receipt:
/// - the units claimed are at most what the FLOP model gives for the job's spec
///   and data shape (units are measured, not the provider's word);
/// - a training chain is complete: a link every `checkpoint_every` steps of the
///   spec, from step 0 to the job's last step, as the receipt says;
/// - then the sample each of `seeds` names (the member's own challenge and
///   those the other members revealed, all drawn after the receipt; see
///   `node_core::oracle::challenge`) is re-executed: one link of a training
///   chain, a sample of inference rows; or the whole of a preprocessing job.
///   The result checks only if every sample does, so one member's sample
///   that lands on a faked part fails it for every member that holds it.
pub fn check(
    backend: &dyn Backend,
    kind: &JobKind,
    data: &[u8],
    model: Option<&[u8]>,
    result: &JobResult,
    receipt: &Receipt,
    seeds: &[u64],
) -> anyhow::Result<compute::verify::Verdict> {
    let spec = workload_spec(kind, model)?;
    let fail = |reason: String| compute::verify::Verdict {
        ok: false,
        max_abs_diff: 0.0,
        reason,
    };
    let shape = data_shape(data)?;
    let measured = units(compute::compute_units_for(&spec, shape));
    if receipt.units_used > measured {
        return Ok(fail(format!(
            "the receipt claims {:.3} CU; the FLOP model gives {:.3} CU for this job",
            receipt.units_used.as_f64(),
            measured.as_f64()
        )));
    }
    match &spec {
        WorkloadSpec::Train(ts) => {
            let chain = &result.chain;
            if let Some(why) = incomplete_chain(ts, shape.rows, chain, receipt) {
                return Ok(fail(why));
            }
            if chain.len() != result.checkpoint_models.len()
                || chain.len() != receipt.checkpoints as usize
            {
                return Ok(fail(format!(
                    "{} links, {} models, the receipt says {}",
                    chain.len(),
                    result.checkpoint_models.len(),
                    receipt.checkpoints
                )));
            }
            let Some(last) = chain.last() else {
                return Ok(fail("an empty checkpoint chain".into()));
            };
            if Hash32(last.hash) != receipt.commitment {
                return Ok(fail(
                    "the chain does not end at the receipt's commitment".into(),
                ));
            }
            let start = compute::mlp::Mlp::from_safetensors(&result.checkpoint_models[0])?;
            let expected = match model {
                Some(m) => compute::mlp::Mlp::from_safetensors(m)?,
                None => compute::mlp::Mlp::init(&ts.layers, ts.seed)?,
            };
            if start != expected || chain[0].hash != chain_start(ts.seed, &start) {
                return Ok(fail("the chain does not start from the job's model".into()));
            }
            if result.output != result.checkpoint_models[chain.len() - 1] {
                return Ok(fail("the output is not the last checkpoint".into()));
            }
            let mut links: Vec<usize> = seeds
                .iter()
                .filter_map(|s| compute::verify::challenge_segment(chain, *s))
                .collect();
            links.sort_unstable();
            links.dedup();
            if links.is_empty() {
                return Ok(fail("a chain of one link proves no training".into()));
            }
            all_of(links.into_iter().map(|index| {
                compute::verify::verify_training_segment(
                    backend,
                    ts,
                    data,
                    chain,
                    index,
                    &result.checkpoint_models[index - 1],
                    &result.checkpoint_models[index],
                    CHECK_TOLERANCE,
                )
            }))
        }
        WorkloadSpec::Infer { .. } => {
            let Some(m) = model else {
                bail!("an inference job needs a model");
            };
            all_of(seeds.iter().map(|seed| {
                compute::verify::verify_inference_sample(
                    backend,
                    m,
                    data,
                    &result.output,
                    INFER_SAMPLE,
                    *seed,
                    CHECK_TOLERANCE,
                )
            }))
        }
        WorkloadSpec::Preprocess { .. } => {
            let ours = compute::run_workload(backend, &spec, data, model)?;
            let a = compute::tensors::parse(&ours.output)?;
            let b = compute::tensors::parse(&result.output)?;
            let (_, _, x) = compute::tensors::read_matrix(&a, "x")?;
            let (_, _, y) = compute::tensors::read_matrix(&b, "x")?;
            if x.len() != y.len() {
                return Ok(fail(format!("{} values, expected {}", y.len(), x.len())));
            }
            let worst = x
                .iter()
                .zip(&y)
                .map(|(p, q)| (p - q).abs() / (1.0 + p.abs()))
                .fold(0f32, f32::max);
            Ok(compute::verify::Verdict {
                ok: worst <= CHECK_TOLERANCE,
                max_abs_diff: worst,
                reason: format!("re-ran the job: max relative difference {worst:.3e}"),
            })
        }
        other => bail!("no check for {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wine() -> Vec<u8> {
        compute::datasets::builtin(compute::datasets::Builtin::WineQuality).unwrap()
    }

    fn train_kind() -> JobKind {
        train_with(vec![11, 16, 6])
    }

    fn train_with(layers: Vec<u32>) -> JobKind {
        JobKind::Train {
            layers,
            epochs: 2,
            batch: 64,
            learning_rate: 0.05,
            dp: None,
            seed: 7,
            task: Default::default(),
        }
    }

    fn receipt(ran: &Ran) -> Receipt {
        Receipt {
            contract: Hash32([1; 32]),
            provider: protocol::Identity::from_seed(2).account(),
            result: protocol::BlobRef {
                hash: Hash32([3; 32]),
                size: 1,
            },
            units_used: ran.units,
            timings: protocol::Timings {
                accepted_at: protocol::Timestamp(0),
                inputs_ready_at: protocol::Timestamp(0),
                started_at: protocol::Timestamp(0),
                finished_at: protocol::Timestamp(0),
            },
            commitment: ran.commitment,
            checkpoint_every: ran.checkpoint_every,
            checkpoints: ran.checkpoints,
        }
    }

    /// Data that cannot train the model is refused at submit, before any
    /// escrow: float (regression) labels, more classes than outputs, a
    /// feature count the first layer does not take.
    #[test]
    fn a_job_whose_data_does_not_fit_its_model_is_refused_before_escrow() {
        let data = wine();
        assert!(estimate_units(&train_kind(), &data, None).is_ok());
        let narrow = train_with(vec![11, 16, 4]);
        let e = format!("{:#}", estimate_units(&narrow, &data, None).unwrap_err());
        assert!(
            e.contains("labels up to 5 (6 classes)") && e.contains("4 outputs"),
            "{e}"
        );
        let wide = train_with(vec![12, 16, 6]);
        let e = format!("{:#}", estimate_units(&wide, &data, None).unwrap_err());
        assert!(e.contains("11 features per row"), "{e}");
        let regress = compute::tensors::Writer::new()
            .f32("x", &[2, 11], &[0.5; 22])
            .f32("y", &[2], &[0.25, 3.5])
            .to_bytes()
            .unwrap();
        let e = format!(
            "{:#}",
            estimate_units(&train_kind(), &regress, None).unwrap_err()
        );
        assert!(
            e.contains("non-integral label") && e.contains("task = \"regress\""),
            "{e}"
        );
        // Declared as a regression, the same data fits a one-output model.
        let as_regression = |layers: Vec<u32>| {
            let mut k = train_with(layers);
            if let JobKind::Train { task, .. } = &mut k {
                *task = protocol::TrainTask::Regress;
            }
            k
        };
        assert!(estimate_units(&as_regression(vec![11, 16, 1]), &regress, None).is_ok());
        // Class numbers are no regression targets.
        let e = format!(
            "{:#}",
            estimate_units(&as_regression(vec![11, 16, 1]), &data, None).unwrap_err()
        );
        assert!(e.contains("a regression takes real values"), "{e}");
    }

    #[test]
    fn honest_training_and_inference_pass_and_faked_ones_fail() {
        let be = compute::CpuBackend::new();
        let data = wine();
        for faulty in [false, true] {
            let cheat = if faulty { Cheat::Fake } else { Cheat::None };
            let ran = run(&be, &train_kind(), &data, None, cheat).unwrap();
            let bundle = JobResult::from_bytes(&ran.result.to_bytes().unwrap()).unwrap();
            let v = check(
                &be,
                &train_kind(),
                &data,
                None,
                &bundle,
                &receipt(&ran),
                &[9],
            )
            .unwrap();
            assert_eq!(v.ok, !faulty, "training, faulty={faulty}: {}", v.reason);

            let honest = run(&be, &train_kind(), &data, None, Cheat::None).unwrap();
            let model = honest.result.output;
            let infer = JobKind::Infer { batch: 256 };
            let ran = run(&be, &infer, &data, Some(&model), cheat).unwrap();
            let v = check(
                &be,
                &infer,
                &data,
                Some(&model),
                &ran.result,
                &receipt(&ran),
                &[9],
            )
            .unwrap();
            assert_eq!(v.ok, !faulty, "inference, faulty={faulty}: {}", v.reason);
        }
    }

    #[test]
    fn estimates_are_positive_and_bad_bundles_are_refused() {
        let data = wine();
        let cu = estimate_units(&train_kind(), &data, None).unwrap();
        assert!(cu > 0.0, "{cu}");
        let err = JobResult::from_bytes(&[1, 2, 3]).unwrap_err().to_string();
        assert!(err.contains("malformed"), "{err}");
        let wide = JobKind::Train {
            layers: vec![12, 8, 6],
            epochs: 1,
            batch: 8,
            learning_rate: 0.1,
            dp: None,
            seed: 1,
            task: Default::default(),
        };
        let err = estimate_units(&wide, &data, None).unwrap_err().to_string();
        assert!(
            err.contains("11 features") && err.contains("takes 12"),
            "{err}"
        );
    }

    /// The checks that need no re-execution to find a cheat: a truncated
    /// chain, a chain spaced otherwise than the spec, a receipt that states
    /// another interval, and units above the FLOP model's, on whatever seed.
    #[test]
    fn incomplete_chains_and_inflated_units_fail_on_every_seed() {
        let be = compute::CpuBackend::new();
        let data = wine();
        let honest = run(&be, &train_kind(), &data, None, Cheat::None).unwrap();
        let check_with = |r: &JobResult, rc: &Receipt, seed: u64| {
            check(&be, &train_kind(), &data, None, r, rc, &[seed]).unwrap()
        };
        let truncated = run(&be, &train_kind(), &data, None, Cheat::Truncate).unwrap();
        assert_eq!(truncated.result.chain.len(), 2);
        // A chain with links dropped in the middle, re-hashed so it stays
        // consistent: every link that is left is right.
        let mut sparse = honest.result.clone();
        let keep: Vec<usize> = (0..sparse.chain.len())
            .filter(|i| i % 2 == 0 || *i == sparse.chain.len() - 1)
            .collect();
        sparse.chain = keep.iter().map(|&i| honest.result.chain[i]).collect();
        sparse.checkpoint_models = keep
            .iter()
            .map(|&i| honest.result.checkpoint_models[i].clone())
            .collect();
        for i in 1..sparse.chain.len() {
            let m = compute::mlp::Mlp::from_safetensors(&sparse.checkpoint_models[i]).unwrap();
            sparse.chain[i].hash = chain_next(&sparse.chain[i - 1].hash, sparse.chain[i].step, &m);
        }
        let mut sparse_receipt = receipt(&honest);
        sparse_receipt.checkpoints = sparse.chain.len() as u32;
        sparse_receipt.commitment = Hash32(sparse.chain.last().unwrap().hash);
        let mut other_interval = receipt(&honest);
        other_interval.checkpoint_every += 1;
        let mut inflated = receipt(&honest);
        inflated.units_used.milli += 1;
        for seed in 0..8 {
            assert!(check_with(&honest.result, &receipt(&honest), seed).ok);
            let v = check_with(&truncated.result, &receipt(&truncated), seed);
            assert!(
                !v.ok && v.reason.contains("links for a job of"),
                "{}",
                v.reason
            );
            let v = check_with(&sparse, &sparse_receipt, seed);
            assert!(!v.ok, "seed {seed}: {}", v.reason);
            let v = check_with(&honest.result, &other_interval, seed);
            assert!(!v.ok && v.reason.contains("link every"), "{}", v.reason);
            let v = check_with(&honest.result, &inflated, seed);
            assert!(!v.ok && v.reason.contains("FLOP model"), "{}", v.reason);
        }
    }
}
