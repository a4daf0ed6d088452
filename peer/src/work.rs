//! Running a contract's job and checking one, on the compute backend.
//!
//! Everything here is blocking and CPU/GPU-bound: the node calls it from
//! `tokio::task::spawn_blocking`. Inputs are the decrypted bytes of the job's blobs
//! (safetensors). A run gives a [`JobResult`]: the output, and for training the
//! checkpoint chain with the weights at each link. It travels as blobs of its
//! own, named by a small [`ResultIndex`] that the receipt points to: the
//! requester fetches the index and the output, a committee member the index and
//! the weights of the links it challenges (and the last), so nobody fetches
//! what it does not use. Every blob's size is bounded in advance by
//! [`limits`], which follow from the job alone: an honest result always fits.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail};
use compute::verify::Compare;
use compute::workload::{chain_next, chain_start};
use compute::{Backend, Checkpoint, DataShape, DpConfig, Metrics, TrainSpec, WorkloadSpec};
use protocol::{BlobRef, ComputeUnits, Hash32, JobKind, Receipt};
use serde::{Deserialize, Serialize};

/// Rows of an inference job that a committee member re-runs.
pub const INFER_SAMPLE: usize = 64;
/// The largest output a requester takes (checked at submit, from the job).
pub const MAX_OUTPUT: u64 = 4 << 30;
const INDEX_KIND: &str = "job-result-index";

/// A run's result, in memory: the output, and for training the chain with the
/// weights at each link.
#[derive(Debug, Clone, PartialEq)]
pub struct JobResult {
    /// The output as safetensors: the trained model, the logits, the new data set.
    pub output: Vec<u8>,
    /// Training only: the weight-checkpoint chain and the weights at each link.
    pub chain: Vec<Checkpoint>,
    pub checkpoint_models: Vec<Vec<u8>>,
    pub metrics: Metrics,
}

/// What a receipt names: the blobs of a result (each encrypted to the job
/// key on its own), the chain and the metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultIndex {
    /// The output; for training, the last link's weights (`models`' last).
    pub output: BlobRef,
    /// Training only: the chain, and the blob of each link's weights.
    pub chain: Vec<Checkpoint>,
    pub models: Vec<BlobRef>,
    pub metrics: Metrics,
}

impl ResultIndex {
    pub fn to_bytes(&self) -> anyhow::Result<Vec<u8>> {
        Ok(protocol::codec::encode_unbounded(INDEX_KIND, self)?)
    }

    /// Decode an index of at most `limit` bytes (see [`Limits::index`]).
    pub fn from_bytes(bytes: &[u8], limit: u64) -> anyhow::Result<Self> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        protocol::codec::decode_limited(INDEX_KIND, limit, bytes)
            .context("the result index is malformed")
    }

    /// A blob it names that is larger than `limits` allow, if any.
    pub fn oversized(&self, limits: &Limits) -> Option<String> {
        if self.output.size > limits.output {
            return Some(format!(
                "an output of {} bytes; this job's output is at most {}",
                self.output.size, limits.output
            ));
        }
        self.models.iter().find(|m| m.size > limits.model).map(|m| {
            format!(
                "weights of {} bytes; this job's model is at most {}",
                m.size, limits.model
            )
        })
    }
}

/// The largest blobs of a job's result, from the job alone (its spec, its
/// data's shape, its model): an honest result always fits, and nobody
/// fetches more. Blob sizes include encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub index: u64,
    pub output: u64,
    /// One link's weights (training).
    pub model: u64,
    /// The links of the chain, the start included (training; 0 otherwise).
    #[serde(default)]
    pub links: u64,
}

impl Limits {
    /// Every blob of the result together: what a job declares as its
    /// `result_bytes` and a provider keeps room for. A chain's output is its
    /// last link's weights, stored once.
    pub fn stored(&self) -> u64 {
        let body = if self.links > 0 {
            self.links.saturating_mul(self.model)
        } else {
            self.output
        };
        self.index.saturating_add(body)
    }
}

/// Room for safetensors headers, metadata and encryption.
const SLACK: u64 = 64 << 10;

/// Safetensors bytes of a model with `layers`, at most.
fn model_bytes(layers: &[usize]) -> u64 {
    let params: u64 = layers
        .windows(2)
        .map(|w| (w[0] as u64).saturating_mul(w[1] as u64 + 1))
        .fold(0, u64::saturating_add);
    params.saturating_mul(4).saturating_add(SLACK)
}

/// The [`Limits`] of a job.
pub fn limits(kind: &JobKind, model: Option<&[u8]>, shape: DataShape) -> anyhow::Result<Limits> {
    let spec = workload_spec(kind, model)?;
    let rows = (shape.rows + shape.test_rows) as u64;
    Ok(match &spec {
        WorkloadSpec::Train(ts) => {
            let m = model_bytes(&ts.layers);
            let links = ts.links(shape.rows);
            // A link (step, hash) and a blob reference (hash, size) each, with
            // the codec's length prefixes; a loss per epoch; the metrics.
            let index = links
                .saturating_mul(128)
                .saturating_add(ts.epochs as u64 * 16)
                .saturating_add(SLACK);
            Limits {
                index,
                output: m,
                model: m,
                links,
            }
        }
        WorkloadSpec::Infer { layers } => {
            let classes = *layers.last().unwrap_or(&1) as u64;
            Limits {
                index: SLACK,
                // Logits (f32) and a prediction (u32) per row.
                output: rows.saturating_mul(4 * (classes + 1)).saturating_add(SLACK),
                model: 0,
                links: 0,
            }
        }
        WorkloadSpec::Preprocess { .. } => Limits {
            index: SLACK,
            // The features and a target per row, as f32 (f64 inputs shrink).
            output: rows
                .saturating_mul(4 * (shape.features as u64 + 1))
                .saturating_add(SLACK),
            model: 0,
            links: 0,
        },
        other => bail!("no limits for {other:?}"),
    })
}

/// A delivered result as a check sees it: the chain, and the blobs a check
/// asks for, fetched by then ([`to_fetch`] says which).
pub trait Delivered {
    fn chain(&self) -> &[Checkpoint];
    /// How many link weights it names.
    fn links(&self) -> usize;
    /// Whether the output is the last link's weights.
    fn output_is_last_link(&self) -> bool;
    fn model(&self, link: usize) -> anyhow::Result<&[u8]>;
    fn output(&self) -> anyhow::Result<&[u8]>;
}

impl Delivered for JobResult {
    fn chain(&self) -> &[Checkpoint] {
        &self.chain
    }
    fn links(&self) -> usize {
        self.checkpoint_models.len()
    }
    fn output_is_last_link(&self) -> bool {
        self.checkpoint_models.last() == Some(&self.output)
    }
    fn model(&self, link: usize) -> anyhow::Result<&[u8]> {
        self.checkpoint_models
            .get(link)
            .map(Vec::as_slice)
            .with_context(|| format!("no weights for link {link}"))
    }
    fn output(&self) -> anyhow::Result<&[u8]> {
        Ok(&self.output)
    }
}

/// An index and the blobs fetched of it.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchedResult {
    pub index: ResultIndex,
    pub models: BTreeMap<usize, Vec<u8>>,
    pub output: Option<Vec<u8>>,
}

impl Delivered for FetchedResult {
    fn chain(&self) -> &[Checkpoint] {
        &self.index.chain
    }
    fn links(&self) -> usize {
        self.index.models.len()
    }
    fn output_is_last_link(&self) -> bool {
        self.index.models.last() == Some(&self.index.output)
    }
    fn model(&self, link: usize) -> anyhow::Result<&[u8]> {
        self.models
            .get(&link)
            .map(Vec::as_slice)
            .with_context(|| format!("the weights of link {link} were not fetched"))
    }
    fn output(&self) -> anyhow::Result<&[u8]> {
        self.output.as_deref().context("the output was not fetched")
    }
}

/// That a trained model `output` is the weights the index's chain ends at
/// (what a requester checks of the model it fetched; the committee checked
/// the chain).
pub fn check_output(index: &ResultIndex, output: &[u8]) -> anyhow::Result<()> {
    let chain = &index.chain;
    let n = chain.len();
    if n < 2 {
        bail!("a result chain of {n} links");
    }
    let m = compute::mlp::Mlp::from_safetensors(output)?;
    if chain_next(&chain[n - 2].hash, chain[n - 1].step, &m) != chain[n - 1].hash {
        bail!("the model fetched is not the one the result's chain ends at");
    }
    Ok(())
}

/// What a check of a result with `chain` needs fetched, for `seeds`: the
/// weights at both ends of each link the seeds challenge and of the last link
/// (training); otherwise the output.
pub fn to_fetch(kind: &JobKind, chain: &[Checkpoint], seeds: &[u64]) -> (BTreeSet<usize>, bool) {
    if !matches!(kind, JobKind::Train { .. }) {
        return (BTreeSet::new(), true);
    }
    let mut links: BTreeSet<usize> = seeds
        .iter()
        .filter_map(|s| compute::verify::challenge_segment(chain, *s))
        .flat_map(|i| [i - 1, i])
        .collect();
    if let Some(last) = chain.len().checked_sub(1) {
        links.insert(last);
    }
    (links, false)
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
        // A round's local training, with the job's seed (its owner's run
        // uses its own, [`fed_local_kind`]): what its limits and units follow.
        JobKind::FedRound { .. } => return workload_spec(&fed_local_kind(kind, None)?, model),
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

/// A federated round as the training its owner runs: DP-SGD for the local
/// epochs from the round's model, with the round's seed at the owner of
/// `dataset` ([`compute::fedavg::round_seed`]; the job's own seed without
/// one).
pub fn fed_local_kind(kind: &JobKind, dataset: Option<&Hash32>) -> anyhow::Result<JobKind> {
    let JobKind::FedRound {
        federation,
        round,
        layers,
        local_epochs,
        batch,
        learning_rate,
        dp,
        seed,
        task,
        ..
    } = kind
    else {
        bail!("not a federated round");
    };
    Ok(JobKind::Train {
        layers: layers.clone(),
        epochs: *local_epochs,
        batch: *batch,
        learning_rate: *learning_rate,
        dp: Some(*dp),
        seed: dataset.map_or(*seed, |d| {
            compute::fedavg::round_seed(*seed, &d.0, &federation.0, *round)
        }),
        task: *task,
    })
}

/// The ε a federated round's job spends on its owner's data in all its
/// rounds, by the accountant at the job's δ.
pub fn fed_epsilon(spec: &protocol::JobSpec) -> anyhow::Result<f64> {
    let JobKind::FedRound { rows, rounds, .. } = &spec.kind else {
        bail!("not a federated round");
    };
    let WorkloadSpec::Train(mut ts) = workload_spec(&spec.kind, None)? else {
        bail!("a federated round is training");
    };
    if let (Some(d), Some(p)) = (ts.dp.as_mut(), spec.privacy) {
        d.delta = p.delta;
    }
    compute::fedavg::job_epsilon(&ts, usize::try_from(*rows)?, *rounds as usize)
        .context("a federated round without DP")
}

/// A committee member's check of a federated round without its data (which
/// never leaves its owner): the chain starts from the round's model with
/// the owner's round seed and has the steps the job's rows and epochs call
/// for; the output is its last link; the units are at most the FLOP
/// model's; and the update (output − round's model) is within the norm an
/// honest DP-SGD round can reach ([`compute::fedavg::update_norm_bound`])
/// and above a quarter of what its noise alone gives
/// ([`compute::fedavg::update_norm_floor`]: a model returned unchanged is
/// no round). What it cannot see: whether the owner trained on the data it
/// offered, or only added noise of the right scale.
pub fn check_fed_round(
    spec: &protocol::JobSpec,
    global: &[u8],
    index: &ResultIndex,
    output: &[u8],
    receipt: &Receipt,
) -> anyhow::Result<compute::verify::Verdict> {
    let fail = |reason: String| compute::verify::Verdict {
        ok: false,
        max_abs_diff: 0.0,
        reason,
    };
    let JobKind::FedRound { rows, .. } = &spec.kind else {
        bail!("not a federated round");
    };
    let rows = usize::try_from(*rows)?;
    let local = fed_local_kind(&spec.kind, Some(&spec.dataset.hash))?;
    let WorkloadSpec::Train(ts) = workload_spec(&local, Some(global))? else {
        bail!("a federated round is training");
    };
    let shape = DataShape {
        rows,
        features: ts.layers.first().copied().unwrap_or(0),
        test_rows: 0,
    };
    let measured = units(compute::compute_units_for(
        &WorkloadSpec::Train(ts.clone()),
        shape,
    ));
    if receipt.units_used > measured {
        return Ok(fail(format!(
            "the receipt claims {:.3} CU; the FLOP model gives {:.3} CU for this round",
            receipt.units_used.as_f64(),
            measured.as_f64()
        )));
    }
    let chain = &index.chain;
    if let Some(why) = incomplete_chain(&ts, rows, chain, receipt) {
        return Ok(fail(why));
    }
    let Some(last) = chain.last() else {
        return Ok(fail("an empty checkpoint chain".into()));
    };
    if Hash32(last.hash) != receipt.commitment {
        return Ok(fail(
            "the chain does not end at the receipt's commitment".into(),
        ));
    }
    let start = compute::mlp::Mlp::from_safetensors(global)?;
    if chain[0].hash != chain_start(ts.seed, &start) {
        return Ok(fail(
            "the chain does not start from the round's model with the owner's round seed".into(),
        ));
    }
    if index.models.last() != Some(&index.output) {
        return Ok(fail("the output is not the last checkpoint".into()));
    }
    if let Err(e) = check_output(index, output) {
        return Ok(fail(format!("{e:#}")));
    }
    let end = compute::mlp::Mlp::from_safetensors(output)?;
    let moved = compute::fedavg::distance(&end, &start)?;
    let bound = compute::fedavg::update_norm_bound(&ts, rows, start.params())
        .context("a federated round without DP")?;
    if moved.is_nan() || moved > bound {
        return Ok(fail(format!(
            "the update moves the model by {moved:.4}; an honest round moves it at most {bound:.4}"
        )));
    }
    let floor = compute::fedavg::update_norm_floor(&ts, rows, start.params())
        .context("a federated round without DP")?;
    if moved < floor {
        return Ok(fail(format!(
            "the update moves the model by {moved:.4}; the round's DP noise alone moves it by \
             about {:.4}: the round was not run",
            floor * 4.0
        )));
    }
    Ok(compute::verify::Verdict {
        ok: true,
        max_abs_diff: 0.0,
        reason: format!(
            "chain of {} links from the round's model, update norm {moved:.4} within \
             [{floor:.4}, {bound:.4}] (the data stays with its owner: not re-executed)",
            chain.len()
        ),
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
    match (&spec, model) {
        (WorkloadSpec::Train(ts), _) => {
            check_labels(data, ts.task, ts.layers.last().copied().unwrap_or(0))?;
        }
        // Labelled rows to infer on: labels of the model's kind.
        (WorkloadSpec::Infer { layers }, Some(m)) => {
            let task = compute::predict::Model::from_safetensors(m)?.info.task;
            check_labels(data, task, layers.last().copied().unwrap_or(0))?;
        }
        _ => {}
    }
    Ok(compute::compute_units_for(&spec, shape))
}

/// A data set's targets must fit the job's task (a training job's, or the
/// model's for an inference job), caught at submit,
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
                 targets, train a regression: task = \"regress\" under [train] (and one output)"
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
    run_observed(backend, kind, data, model, cheat, &mut |_| {})
}

/// [`run`], telling `on_epoch` how far a training job is after each epoch.
pub fn run_observed(
    backend: &dyn Backend,
    kind: &JobKind,
    data: &[u8],
    model: Option<&[u8]>,
    cheat: Cheat,
    on_epoch: &mut dyn FnMut(compute::Progress),
) -> anyhow::Result<Ran> {
    let spec = workload_spec(kind, model)?;
    let out = compute::run_workload_observed(backend, &spec, data, model, on_epoch)?;
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
            ts.link_every(data_shape(data)?.rows)
                .min(u64::from(u32::MAX)) as u32,
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
    let (every, total) = (ts.link_every(rows), ts.total_steps(rows));
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

/// How the committee compares a re-execution with a contract's result: bit for
/// bit when the provider's offer said its backend is exact.
pub fn compare_for(sla: &protocol::SlaTerms) -> Compare {
    if sla.exact {
        Compare::Exact
    } else {
        Compare::Tolerant
    }
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
///
/// `compare` says how: bit for bit where the contract says the provider's
/// backend is exact ([`compare_for`]), else within the tolerance.
#[allow(clippy::too_many_arguments)]
pub fn check(
    backend: &dyn Backend,
    kind: &JobKind,
    data: &[u8],
    model: Option<&[u8]>,
    result: &dyn Delivered,
    receipt: &Receipt,
    seeds: &[u64],
    compare: Compare,
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
            let chain = result.chain();
            if let Some(why) = incomplete_chain(ts, shape.rows, chain, receipt) {
                return Ok(fail(why));
            }
            if chain.len() != result.links() || chain.len() != receipt.checkpoints as usize {
                return Ok(fail(format!(
                    "{} links, {} models, the receipt says {}",
                    chain.len(),
                    result.links(),
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
            let expected = match model {
                Some(m) => compute::mlp::Mlp::from_safetensors(m)?,
                None => compute::mlp::Mlp::init(&ts.layers, ts.seed)?,
            };
            if chain[0].hash != chain_start(ts.seed, &expected) {
                return Ok(fail("the chain does not start from the job's model".into()));
            }
            // The output is the last link's weights, and they are the ones
            // the chain commits to.
            let n = chain.len();
            if !result.output_is_last_link() {
                return Ok(fail("the output is not the last checkpoint".into()));
            }
            if n >= 2 {
                let m = compute::mlp::Mlp::from_safetensors(result.model(n - 1)?)?;
                if chain_next(&chain[n - 2].hash, chain[n - 1].step, &m) != chain[n - 1].hash {
                    return Ok(fail(
                        "the output's weights are not the chain's last link".into(),
                    ));
                }
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
            let mut checks = Vec::new();
            for index in links {
                checks.push(compute::verify::verify_training_segment(
                    backend,
                    ts,
                    data,
                    chain,
                    index,
                    result.model(index - 1)?,
                    result.model(index)?,
                    compare,
                ));
            }
            all_of(checks.into_iter())
        }
        WorkloadSpec::Infer { .. } => {
            let Some(m) = model else {
                bail!("an inference job needs a model");
            };
            let output = result.output()?;
            all_of(seeds.iter().map(|seed| {
                compute::verify::verify_inference_sample(
                    backend,
                    m,
                    data,
                    output,
                    INFER_SAMPLE,
                    *seed,
                    compare,
                )
            }))
        }
        WorkloadSpec::Preprocess { .. } => {
            let ours = compute::run_workload(backend, &spec, data, model)?;
            let a = compute::tensors::parse(&ours.output)?;
            let b = compute::tensors::parse(result.output()?)?;
            let (_, _, x) = compute::tensors::read_matrix(&a, "x")?;
            let (_, _, y) = compute::tensors::read_matrix(&b, "x")?;
            Ok(compute::verify::compare_values(
                &x,
                &y,
                compare,
                "re-ran the job",
            ))
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
            let v = check(
                &be,
                &train_kind(),
                &data,
                None,
                &ran.result,
                &receipt(&ran),
                &[9],
                Compare::Exact,
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
                Compare::Exact,
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
        let err = ResultIndex::from_bytes(&[1, 2, 3], 1 << 20)
            .unwrap_err()
            .to_string();
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

    /// A result as the node stores it: an index of blobs, here named by the
    /// hash and size of their plain bytes.
    fn index_of(r: &JobResult) -> (ResultIndex, BTreeMap<usize, Vec<u8>>) {
        let blob = |b: &[u8]| BlobRef {
            hash: Hash32(*blake3::hash(b).as_bytes()),
            size: b.len() as u64,
        };
        let models: Vec<BlobRef> = r.checkpoint_models.iter().map(|m| blob(m)).collect();
        let index = ResultIndex {
            output: blob(&r.output),
            chain: r.chain.clone(),
            models,
            metrics: r.metrics.clone(),
        };
        let all = r.checkpoint_models.iter().cloned().enumerate().collect();
        (index, all)
    }

    /// A federated round on the owner's data, as the owner runs it and a
    /// committee checks it without the data: an honest round passes; a
    /// round run with the requester's seed (noise a requester could cancel),
    /// a poisoned update with a consistent chain, or inflated units fail. The
    /// job must state at least the ε the accountant gives its rounds.
    #[test]
    fn a_federated_round_is_checked_without_its_data() {
        let be = compute::CpuBackend::new();
        let data = wine();
        let rows = data_shape(&data).unwrap().rows as u64;
        let global = compute::mlp::Mlp::init(&[11, 16, 6], 5)
            .unwrap()
            .to_safetensors()
            .unwrap();
        let kind = JobKind::FedRound {
            federation: Hash32([9; 32]),
            round: 2,
            rounds: 3,
            rows,
            layers: vec![11, 16, 6],
            local_epochs: 1,
            batch: 64,
            learning_rate: 0.05,
            dp: protocol::DpParams {
                clip_norm: 1.0,
                noise_multiplier: 1.1,
            },
            seed: 7,
            task: Default::default(),
        };
        let dataset = Hash32::of(&data);
        let mut spec = protocol::JobSpec::inference(
            protocol::Identity::from_seed(1).account(),
            protocol::BlobRef {
                hash: dataset,
                size: data.len() as u64,
            },
            protocol::ComputeUnits::from_milli(1),
            protocol::PricePerCu(1),
            protocol::Timestamp(0),
            protocol::Timestamp(1),
            1,
        );
        spec.kind = kind.clone();
        let eps = fed_epsilon(&spec).unwrap();
        assert!(eps > 0.0 && eps.is_finite(), "{eps}");
        spec.privacy = Some(protocol::PrivacyTarget {
            epsilon: eps,
            delta: 1e-5,
        });
        let local = fed_local_kind(&kind, Some(&dataset)).unwrap();
        let honest = run(&be, &local, &data, Some(&global), Cheat::None).unwrap();
        let (index, _) = index_of(&honest.result);
        let r = receipt(&honest);
        let ok = check_fed_round(&spec, &global, &index, &honest.result.output, &r).unwrap();
        assert!(ok.ok, "{ok:?}");

        // Run with the job's own seed: not the owner's round seed.
        let shared = fed_local_kind(&kind, None).unwrap();
        let other = run(&be, &shared, &data, Some(&global), Cheat::None).unwrap();
        let (oi, _) = index_of(&other.result);
        let v =
            check_fed_round(&spec, &global, &oi, &other.result.output, &receipt(&other)).unwrap();
        assert!(!v.ok && v.reason.contains("round seed"), "{v:?}");

        // A poisoned update (scaled 1000×) with the chain made to match it.
        let mut bad = compute::mlp::Mlp::from_safetensors(&honest.result.output).unwrap();
        for w in bad.w.iter_mut().flatten() {
            *w *= 1_000.0;
        }
        let bad_bytes = bad.to_safetensors().unwrap();
        let mut poisoned = honest.result.clone();
        let n = poisoned.chain.len();
        poisoned.chain[n - 1].hash = chain_next(
            &poisoned.chain[n - 2].hash,
            poisoned.chain[n - 1].step,
            &bad,
        );
        poisoned.checkpoint_models[n - 1] = bad_bytes.clone();
        poisoned.output = bad_bytes.clone();
        let (pi, _) = index_of(&poisoned);
        let mut pr = receipt(&honest);
        pr.commitment = Hash32(poisoned.chain[n - 1].hash);
        let v = check_fed_round(&spec, &global, &pi, &bad_bytes, &pr).unwrap();
        assert!(!v.ok && v.reason.contains("moves the model"), "{v:?}");

        // A free rider: the round's model back unchanged, the chain made
        // to match it.
        let start = compute::mlp::Mlp::from_safetensors(&global).unwrap();
        let mut idle = honest.result.clone();
        let mut prev = idle.chain[0].hash;
        for link in idle.chain.iter_mut().skip(1) {
            link.hash = chain_next(&prev, link.step, &start);
            prev = link.hash;
        }
        for m in &mut idle.checkpoint_models {
            m.clone_from(&global);
        }
        idle.output = global.clone();
        let (ii, _) = index_of(&idle);
        let mut ir = receipt(&honest);
        ir.commitment = Hash32(prev);
        let v = check_fed_round(&spec, &global, &ii, &global, &ir).unwrap();
        assert!(!v.ok && v.reason.contains("not run"), "{v:?}");

        // Units beyond the FLOP model's.
        let mut inflated = receipt(&honest);
        inflated.units_used = protocol::ComputeUnits::from_milli(inflated.units_used.milli * 2);
        let v = check_fed_round(&spec, &global, &index, &honest.result.output, &inflated).unwrap();
        assert!(!v.ok && v.reason.contains("FLOP model"), "{v:?}");
    }

    /// A long job's chain is spaced to at most MAX_LINKS links; its blobs fit
    /// the limits the job gives; a check fetches only the challenged links'
    /// weights and the last, and passes on them; a requester's model is the
    /// one the chain ends at.
    #[test]
    fn results_fit_their_limits_and_a_check_fetches_only_what_it_uses() {
        let be = compute::CpuBackend::new();
        let data = wine();
        // 1,599 rows in batches of 8 for 30 epochs: 6,000 steps, more than
        // links every 20 steps would allow under MAX_LINKS.
        let mut kind = train_with(vec![11, 16, 6]);
        if let JobKind::Train { epochs, batch, .. } = &mut kind {
            (*epochs, *batch) = (30, 8);
        }
        let ran = run(&be, &kind, &data, None, Cheat::None).unwrap();
        let shape = data_shape(&data).unwrap();
        let links = ran.result.chain.len() as u64;
        assert!(links <= compute::workload::MAX_LINKS + 1, "{links} links");
        assert!(
            u64::from(ran.checkpoint_every) > 20,
            "{}",
            ran.checkpoint_every
        );
        let limits = limits(&kind, None, shape).unwrap();
        let (index, all) = index_of(&ran.result);
        assert_eq!(index.oversized(&limits), None);
        assert!((index.to_bytes().unwrap().len() as u64) < limits.index);
        for seed in 0..4 {
            let (want, output) = to_fetch(&kind, &index.chain, &[seed]);
            assert!(!output && want.len() <= 3, "{want:?}");
            let fetched = FetchedResult {
                index: index.clone(),
                models: want.iter().map(|&i| (i, all[&i].clone())).collect(),
                output: None,
            };
            let v = check(
                &be,
                &kind,
                &data,
                None,
                &fetched,
                &receipt(&ran),
                &[seed],
                Compare::Exact,
            )
            .unwrap();
            assert!(v.ok, "seed {seed}: {}", v.reason);
        }
        check_output(&index, &ran.result.output).unwrap();
        let other = run(&be, &train_kind(), &data, None, Cheat::None).unwrap();
        assert!(check_output(&index, &other.result.output).is_err());
        // A blob larger than the job allows is named before it is fetched.
        let mut big = index.clone();
        big.models[1].size = limits.model + 1;
        assert!(big.oversized(&limits).is_some());
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
            check(
                &be,
                &train_kind(),
                &data,
                None,
                r,
                rc,
                &[seed],
                Compare::Exact,
            )
            .unwrap()
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
