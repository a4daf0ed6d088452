//! The work the core asks for and the driver does beside its loop: benchmark
//! the device, prepare a job's inputs, run a job, check a delivered result,
//! fetch a result. Each takes what the core's output carries and returns what
//! the core's next input needs; none decides anything.

use std::path::PathBuf;

use anyhow::Context;
use node_core::{Fetched, Grant, JobKey, PreparedJob, RanJob, WorkError};
use protocol::market::{PricingConfig, ProviderConfig};
use protocol::{
    AccountId, BlobRef, Bps, ComputeUnits, ContractTerms, Hash32, JobSpec, PricePerCu, Receipt,
    ResourceClass, SlaTerms, Timestamp,
};
use tracing::{info, warn};

use super::{RunOptions, fetch_logged};
use crate::blobs::BlobNode;
use crate::config::DataDir;
use crate::control::JobRequest;
use crate::crypto;
use crate::net;

pub(super) fn backend_preference(dir: &DataDir) -> compute::BackendPreference {
    match dir.config.provider.backend.as_str() {
        "cpu" => compute::BackendPreference::Cpu,
        "wgpu" => compute::BackendPreference::Wgpu,
        _ => compute::BackendPreference::Auto,
    }
}

/// Benchmark the device and describe what this provider sells.
pub(super) async fn provider_config(
    dir: &DataDir,
    blobs: &BlobNode,
    opts: &RunOptions,
) -> anyhow::Result<ProviderConfig> {
    let pref = backend_preference(dir);
    let (reason, bench, selftest) = tokio::task::spawn_blocking(move || {
        let sel = compute::select_backend(pref)?;
        let bench = compute::bench::device_gflops(&*sel.backend)?;
        let selftest = compute::selftest::run(&*sel.backend)?;
        Ok::<_, compute::ComputeError>((sel.reason, bench, selftest))
    })
    .await
    .context("the benchmark task failed")??;
    info!(%reason, gflops = format!("{:.1}", bench.gflops), "benchmarked the device");
    if selftest.exact {
        info!(%selftest, "the backend is exact: results are checked bit for bit");
    } else {
        warn!(
            %selftest,
            "the backend is not exact: offers say so, and the committee checks results within its tolerance (`provider.backend = \"cpu\"` is exact)"
        );
    }
    let gpu = matches!(
        bench.backend.device_type.as_str(),
        "DiscreteGpu" | "IntegratedGpu"
    );
    let floor = dir.config.provider.price_floor.max(1);
    let held = crate::held::load(&dir.path)?;
    for h in &held {
        info!(
            name = %h.name,
            id = %h.offer.id.short(),
            rows = h.offer.rows,
            epsilon = h.offer.epsilon_left,
            "offering a private data set to federated jobs"
        );
    }
    Ok(ProviderConfig {
        datasets: held.into_iter().map(|h| h.offer).collect(),
        class: if gpu {
            ResourceClass::Gpu
        } else {
            ResourceClass::Cpu
        },
        device: bench
            .backend
            .name
            .chars()
            .take(protocol::MAX_TEXT)
            .collect(),
        speed_milli_cu_per_s: (bench.gflops * 1000.0).max(1.0) as u64,
        region: dir.config.provider.region.clone(),
        contact: blobs.contact(),
        slots: dir.config.provider.slots,
        sla: SlaTerms {
            deadline_slack: opts.timing.deadline_slack,
            availability: Bps(9_500),
            penalty: Bps(1_000),
            exact: selftest.exact,
        },
        offer_ttl: opts.timing.offer_ttl,
        pricing: PricingConfig {
            cost: PricePerCu(floor),
            initial: PricePerCu(floor.saturating_mul(2)),
            ..PricingConfig::default()
        },
        ..ProviderConfig::default()
    })
}

/// The additional data of a job's inputs: the requester's account.
fn input_aad(requester: &AccountId) -> Hash32 {
    Hash32(requester.0)
}

/// Read, encrypt and store a job's inputs; price it with the FLOP model.
pub(super) async fn prepare(
    blobs: BlobNode,
    me: AccountId,
    req: JobRequest,
    submitted: Timestamp,
) -> anyhow::Result<(PreparedJob, JobNotes)> {
    // The header first: a file that is not a data set is refused before it
    // is read whole into memory.
    let path = req.dataset.clone();
    tokio::task::spawn_blocking(move || compute::tensors::read_header(&path))
        .await?
        .with_context(|| format!("{} is not a data set", req.dataset.display()))?;
    let data = tokio::fs::read(&req.dataset)
        .await
        .with_context(|| format!("cannot read the data set {}", req.dataset.display()))?;
    let model = match &req.model {
        Some(p) => Some(
            tokio::fs::read(p)
                .await
                .with_context(|| format!("cannot read the model {}", p.display()))?,
        ),
        None => None,
    };
    let described = describe_dataset(&data)?;
    let kind = req.kind.clone();
    let (cu, limits, data, model) = tokio::task::spawn_blocking(move || {
        let cu = crate::work::estimate_units(&kind, &data, model.as_deref());
        let limits = crate::work::data_shape(&data)
            .and_then(|shape| crate::work::limits(&kind, model.as_deref(), shape));
        (cu, limits, data, model)
    })
    .await?;
    // The estimate also checks that the data fits the model: do it even when the
    // user gives the compute units.
    let cu = req
        .estimated_cu
        .unwrap_or(cu.context("the job does not fit its data")?);
    let limits = limits.context("the job does not fit its data")?;
    if limits.output > crate::work::MAX_OUTPUT {
        anyhow::bail!(
            "this job's result could be {} MiB; a requester takes at most {} MiB",
            limits.output >> 20,
            crate::work::MAX_OUTPUT >> 20
        );
    }
    let key = crypto::random_key();
    let aad = input_aad(&me);
    let deadline = Timestamp(
        submitted
            .0
            .saturating_add(req.deadline_secs.saturating_mul(1000)),
    );
    let until = keep_until(deadline);
    let store = |label: &'static str, plain: Vec<u8>| {
        let blobs = blobs.clone();
        let key = key.clone();
        async move {
            let ct =
                tokio::task::spawn_blocking(move || crypto::encrypt(&key, label, &aad, &plain))
                    .await?;
            let size = ct.len() as u64;
            let hash = blobs.add_bytes_until(ct, until, "job-input").await?;
            anyhow::Ok(BlobRef { hash, size })
        }
    };
    let data_len = data.len();
    let dataset = store("dataset", data).await?;
    let model = match model {
        Some(m) => Some(store("model", m).await?),
        None => None,
    };
    let spec = JobSpec {
        requester: me,
        kind: req.kind,
        model,
        dataset,
        estimated_units: ComputeUnits {
            milli: (cu * 1000.0).ceil().max(1.0) as u64,
        },
        result_bytes: limits.stored().max(1),
        max_price: PricePerCu(req.max_price),
        deadline,
        sla: req.sla,
        privacy: req.privacy,
        issued_at: submitted,
        expires_at: deadline,
        nonce: {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b)
                .map_err(|e| anyhow::anyhow!("OS random number generator: {e}"))?;
            u64::from_le_bytes(b)
        },
    };
    let prepared = PreparedJob {
        spec,
        key,
        note: format!(
            "inputs encrypted and stored ({data_len} bytes of data); estimated {cu:.3} CU"
        ),
    };
    Ok((
        prepared,
        JobNotes {
            dataset: described,
            limits: Some(limits),
        },
    ))
}

/// What a trained model should say of the data it learnt from: the data
/// set's metadata that tells how to feed it and read its outputs.
pub(super) type DatasetMeta = std::collections::BTreeMap<String, String>;

/// What the requester keeps beside a job from submit until its result comes
/// (a file, so a restart in between keeps it): what the model should carry,
/// and how large the result's blobs may be.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct JobNotes {
    pub dataset: DatasetMeta,
    pub limits: Option<crate::work::Limits>,
}

impl JobNotes {
    pub(super) fn read(results: &std::path::Path, job: &Hash32) -> JobNotes {
        std::fs::read(notes_path(results, job))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
}

/// The keys of a data set's metadata that its model carries.
const MODEL_KEYS: [&str; 9] = [
    "feature_names",
    "class_names",
    "label",
    "standardize_mean",
    "standardize_std",
    "target_mean",
    "target_scale",
    "name",
    "source_blake3",
];

fn describe_dataset(data: &[u8]) -> anyhow::Result<DatasetMeta> {
    let meta = compute::tensors::metadata(data)?;
    Ok(MODEL_KEYS
        .iter()
        .filter_map(|k| meta.get(*k).map(|v| (k.to_string(), v.clone())))
        .map(|(k, v)| match k.as_str() {
            // Under names that say they describe the data set.
            "name" => ("dataset".into(), v),
            "source_blake3" => ("dataset_source_blake3".into(), v),
            _ => (k, v),
        })
        .collect())
}

/// Where the requester keeps a job's [`JobNotes`].
pub(super) fn notes_path(results: &std::path::Path, job: &Hash32) -> PathBuf {
    results.join(format!("{}.job.json", job.short()))
}

/// How long a job's blobs are kept past its deadline: the core's
/// [`node_core::RESULT_KEEP`] (two hours, past the escrow's bound), for which
/// the provider also keeps the receipt. The store then collects them.
pub(super) const JOB_KEEP: protocol::DurationMs = node_core::RESULT_KEEP;

/// How long the blobs of a job due at `deadline` are kept: [`JOB_KEEP`]
/// past it, or, over the store's quota, a quarter of an hour (past the
/// escrow's bound with the default grace of a minute).
pub(super) fn keep_until(deadline: Timestamp) -> crate::blobs::Keep {
    crate::blobs::Keep {
        until: deadline.plus(JOB_KEEP).0,
        early: deadline.plus(protocol::DurationMs::secs(15 * 60)).0,
    }
}

/// A blob from `from`'s store into ours (kept until `until`, ms since the
/// Unix epoch), then its bytes: a failure here means a peer could not be
/// reached (or did not serve it), which may pass.
async fn fetch_bytes(
    blobs: &BlobNode,
    from: &AccountId,
    contact: &[String],
    blob: &BlobRef,
    until: crate::blobs::Keep,
) -> Result<bytes::Bytes, WorkError> {
    let hash = &blob.hash;
    let got = async {
        let addr = BlobNode::peer_addr(from, contact)?;
        fetch_logged(blobs, addr, hash, Some(blob.size)).await?;
        blobs.keep(hash, until, "job").await?;
        blobs.get_bytes(hash).await
    }
    .await;
    got.map_err(|e| {
        WorkError::unreachable(format!(
            "cannot fetch blob {} from {}: {e:#}",
            hash.short(),
            from.short()
        ))
    })
}

/// Decrypt a fetched blob beside the loop; a failure is final (wrong key or
/// tampered bytes).
async fn open_blob(
    key: JobKey,
    label: &'static str,
    aad: Hash32,
    ct: bytes::Bytes,
) -> Result<Vec<u8>, WorkError> {
    tokio::task::spawn_blocking(move || crypto::decrypt(&key, label, &aad, &ct))
        .await
        .map_err(|e| WorkError::fatal(format!("the decryption task failed: {e}")))?
        .map_err(|e| WorkError::fatal(format!("the {label} does not decrypt: {e}")))
}

/// Fetch a job's encrypted inputs from its requester and decrypt them.
async fn fetch_inputs(
    blobs: &BlobNode,
    grant: &Grant,
    terms: &ContractTerms,
    held: Option<&std::path::Path>,
) -> Result<(Vec<u8>, Option<Vec<u8>>), WorkError> {
    let aad = input_aad(&grant.requester);
    let get = async |r: &BlobRef, label: &'static str| -> Result<Vec<u8>, WorkError> {
        let until = keep_until(terms.spec.deadline);
        let ct = fetch_bytes(blobs, &grant.requester, &grant.contact, r, until).await?;
        open_blob(grant.key.clone(), label, aad, ct).await
    };
    // A federated round trains on a data set we hold; nobody else has it.
    let data = match (terms.spec.kind.held_data(), held) {
        (true, Some(dir)) => crate::held::read(dir, &terms.spec.dataset.hash)
            .map_err(|e| WorkError::fatal(format!("{e:#}")))?,
        (true, None) => {
            return Err(WorkError::fatal(
                "a federated round's data set is its owner's alone".to_string(),
            ));
        }
        (false, _) => get(&terms.spec.dataset, "dataset").await?,
    };
    let model = match &terms.spec.model {
        Some(m) => Some(get(m, "model").await?),
        None => None,
    };
    Ok((data, model))
}

/// Labels under which a result's blobs are encrypted (with the contract as
/// additional data): a blob cannot pass for another kind of blob.
const INDEX_LABEL: &str = "result";
const OUTPUT_LABEL: &str = "result-output";
const MODEL_LABEL: &str = "result-model";

/// Fetch a delivered result's index from its provider: its declared size is
/// checked against the job's limit before anything is fetched.
async fn fetch_index(
    blobs: &BlobNode,
    contact: &[String],
    receipt: &Receipt,
    key: &JobKey,
    limits: &crate::work::Limits,
    until: crate::blobs::Keep,
) -> Result<crate::work::ResultIndex, WorkError> {
    if receipt.result.size > limits.index {
        return Err(WorkError::fatal(format!(
            "the receipt names a result index of {} bytes; this job's is at most {}",
            receipt.result.size, limits.index
        )));
    }
    let ct = fetch_bytes(blobs, &receipt.provider, contact, &receipt.result, until).await?;
    let plain = open_blob(key.clone(), INDEX_LABEL, receipt.contract, ct).await?;
    let limit = limits.index;
    let index =
        tokio::task::spawn_blocking(move || crate::work::ResultIndex::from_bytes(&plain, limit))
            .await
            .map_err(|e| WorkError::fatal(format!("the decoding task failed: {e}")))?
            .map_err(|e| WorkError::fatal(format!("{e:#}")))?;
    if let Some(why) = index.oversized(limits) {
        return Err(WorkError::fatal(format!("the result index names {why}")));
    }
    Ok(index)
}

/// Fetch and decrypt one blob a result index names (its size is within the
/// job's limits: [`fetch_index`] checked).
async fn fetch_part(
    blobs: &BlobNode,
    contact: &[String],
    receipt: &Receipt,
    key: &JobKey,
    label: &'static str,
    blob: &BlobRef,
    until: crate::blobs::Keep,
) -> Result<Vec<u8>, WorkError> {
    let ct = fetch_bytes(blobs, &receipt.provider, contact, blob, until).await?;
    open_blob(key.clone(), label, receipt.contract, ct).await
}

/// Encrypt a run's result blob by blob, store each, and give the index that
/// names them (stored too) as the receipt's result.
async fn store_result(
    blobs: &BlobNode,
    key: &JobKey,
    contract: Hash32,
    result: crate::work::JobResult,
    until: crate::blobs::Keep,
) -> anyhow::Result<BlobRef> {
    let key = key.clone();
    let (output, models, metrics, chain) = (
        result.output,
        result.checkpoint_models,
        result.metrics,
        result.chain,
    );
    // Training: the output is the last link's weights, stored once.
    let output_is_last = !models.is_empty() && models.last() == Some(&output);
    let k = key.clone();
    let sealed = tokio::task::spawn_blocking(move || {
        let models: Vec<Vec<u8>> = models
            .iter()
            .map(|m| crypto::encrypt(&k, MODEL_LABEL, &contract, m))
            .collect();
        let output =
            (!output_is_last).then(|| crypto::encrypt(&k, OUTPUT_LABEL, &contract, &output));
        (models, output)
    })
    .await?;
    let mut refs = Vec::with_capacity(sealed.0.len());
    for ct in sealed.0 {
        let size = ct.len() as u64;
        refs.push(BlobRef {
            hash: blobs.add_bytes_until(ct, until, "job-result").await?,
            size,
        });
    }
    let output = match sealed.1 {
        Some(ct) => {
            let size = ct.len() as u64;
            BlobRef {
                hash: blobs.add_bytes_until(ct, until, "job-result").await?,
                size,
            }
        }
        None => *refs.last().context("no weights for the output")?,
    };
    let index = crate::work::ResultIndex {
        output,
        chain,
        models: refs,
        metrics,
    };
    let ct = crypto::encrypt(&key, INDEX_LABEL, &contract, &index.to_bytes()?);
    let size = ct.len() as u64;
    Ok(BlobRef {
        hash: blobs.add_bytes_until(ct, until, "job-result").await?,
        size,
    })
}

/// Run a contract's job on the selected backend; store the encrypted result.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_job(
    blobs: BlobNode,
    held: PathBuf,
    grant: Grant,
    terms: ContractTerms,
    contract: Hash32,
    pref: compute::BackendPreference,
    cheat: crate::work::Cheat,
    report: impl Fn(node_core::TrainProgress) + Send + 'static,
) -> Result<RanJob, WorkError> {
    let (data, model) = fetch_inputs(&blobs, &grant, &terms, Some(&held)).await?;
    let inputs_ready_at = net::now();
    let private = terms.spec.kind.held_data();
    let kind = if private {
        // Our own data: the job must state at least what the accountant says
        // its rounds spend (the ledger records what it states), and we train
        // with our own round seed.
        let fatal = |e: anyhow::Error| WorkError::fatal(format!("{e:#}"));
        let spends = crate::work::fed_epsilon(&terms.spec).map_err(fatal)?;
        let stated = terms.spec.privacy.map_or(0.0, |p| p.epsilon);
        if spends > stated * (1.0 + 1e-9) {
            return Err(WorkError::fatal(format!(
                "the job states ε = {stated:.4} for its rounds; the accountant says they spend {spends:.4}"
            )));
        }
        crate::work::fed_local_kind(&terms.spec.kind, Some(&terms.spec.dataset.hash))
            .map_err(fatal)?
    } else {
        terms.spec.kind.clone()
    };
    // The room we kept is what the job declared: run it only if its inputs
    // bear that out (a requester that declares less has its escrow back).
    let limits = crate::work::data_shape(&data)
        .and_then(|shape| crate::work::limits(&kind, model.as_deref(), shape))
        .map_err(|e| WorkError::fatal(format!("{e:#}")))?;
    if limits.stored() > terms.spec.result_bytes {
        return Err(WorkError::fatal(format!(
            "the job declares a result of at most {} bytes, but its inputs call for up to {}",
            terms.spec.result_bytes,
            limits.stored()
        )));
    }
    let key = grant.key.clone();
    let ran = async {
        let mut ran = tokio::task::spawn_blocking(move || {
            let sel = compute::select_backend(pref)?;
            // At most one report a second, and the last epoch's.
            let mut last: Option<std::time::Instant> = None;
            let mut on_epoch = |p: compute::Progress| {
                let due = last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1));
                // A loss on private data is not the requester's to see.
                if !private && (due || p.epoch == p.epochs) {
                    last = Some(std::time::Instant::now());
                    report(node_core::TrainProgress {
                        step: p.step,
                        steps: p.steps,
                        epoch: p.epoch,
                        epochs: p.epochs,
                        loss: p.loss,
                    });
                }
            };
            let be = &*sel.backend;
            crate::work::run_observed(be, &kind, &data, model.as_deref(), cheat, &mut on_epoch)
        })
        .await??;
        let mut result = std::mem::replace(
            &mut ran.result,
            crate::work::JobResult {
                output: Vec::new(),
                chain: Vec::new(),
                checkpoint_models: Vec::new(),
                metrics: Default::default(),
            },
        );
        if private {
            // Losses and scores on private data are not DP releases: only
            // the ε goes back.
            result.metrics = compute::Metrics {
                epsilon: result.metrics.epsilon,
                ..Default::default()
            };
        }
        let until = keep_until(terms.spec.deadline);
        let index = store_result(&blobs, &key, contract, result, until).await?;
        anyhow::Ok((ran, index))
    }
    .await;
    let (ran, result) = ran.map_err(|e| WorkError::fatal(format!("{e:#}")))?;
    if ran.units > terms.max_units {
        warn!(
            used = ran.units.milli,
            max = terms.max_units.milli,
            "the job took more compute units than the contract pays for"
        );
    }
    let started_at = Timestamp(
        inputs_ready_at
            .0
            .max(net::now().0.saturating_sub((ran.elapsed_s * 1000.0) as u64)),
    );
    Ok(RanJob {
        result,
        // An honest provider claims what it used, at most what the contract
        // pays for.
        units: match cheat {
            crate::work::Cheat::InflateUnits => terms.max_units,
            _ => ran.units.min(terms.max_units),
        },
        commitment: ran.commitment,
        checkpoint_every: ran.checkpoint_every,
        checkpoints: ran.checkpoints,
        inputs_ready_at,
        started_at,
        secs: ran.elapsed_s,
        backend: ran.backend,
    })
}

/// A committee member's re-execution of the samples `seeds` name (its own
/// challenge and the other members'), on the reference backend: `Ok(why)`
/// when the result checks; an error when it does not, or (to try again) when
/// the inputs or the result could not be fetched.
pub(super) async fn check_job(
    blobs: BlobNode,
    grant: Grant,
    terms: ContractTerms,
    receipt: Receipt,
    provider_contact: Vec<String>,
    seeds: Vec<u64>,
) -> Result<String, WorkError> {
    if terms.spec.kind.held_data() {
        return check_fed_round(blobs, grant, terms, receipt, provider_contact).await;
    }
    let (data, model) = fetch_inputs(&blobs, &grant, &terms, None).await?;
    let kind = terms.spec.kind.clone();
    let limits = crate::work::data_shape(&data)
        .and_then(|shape| crate::work::limits(&kind, model.as_deref(), shape))
        .map_err(|e| WorkError::fatal(format!("{e:#}")))?;
    let key = &grant.key;
    let until = keep_until(terms.spec.deadline);
    let index = fetch_index(&blobs, &provider_contact, &receipt, key, &limits, until).await?;
    // Only what the check uses: the weights at the ends of the challenged
    // links and of the last one, or the output.
    let (links, want_output) = crate::work::to_fetch(&kind, &index.chain, &seeds);
    let mut models = std::collections::BTreeMap::new();
    for link in links {
        if let Some(blob) = index.models.get(link) {
            let (c, r) = (&provider_contact, &receipt);
            let m = fetch_part(&blobs, c, r, key, MODEL_LABEL, blob, until).await?;
            models.insert(link, m);
        }
    }
    let output = if want_output {
        let blob = index.output;
        let (c, r) = (&provider_contact, &receipt);
        Some(fetch_part(&blobs, c, r, key, OUTPUT_LABEL, &blob, until).await?)
    } else {
        None
    };
    let result = crate::work::FetchedResult {
        index,
        models,
        output,
    };
    let verdict = tokio::task::spawn_blocking(move || {
        // The reference backend: what every member agrees on.
        let be = compute::CpuBackend::new();
        crate::work::check(
            &be,
            &terms.spec.kind,
            &data,
            model.as_deref(),
            &result,
            &receipt,
            &seeds,
            crate::work::compare_for(&terms.sla),
        )
    })
    .await
    .map_err(|e| WorkError::fatal(format!("the check task failed: {e}")))?
    .map_err(|e| WorkError::fatal(format!("{e:#}")))?;
    if verdict.ok {
        Ok(verdict.reason)
    } else {
        Err(WorkError::fatal(verdict.reason))
    }
}

/// [`check_job`] for a federated round, whose data never leaves its owner:
/// the round's model, the result's index and its output, checked by
/// [`crate::work::check_fed_round`].
async fn check_fed_round(
    blobs: BlobNode,
    grant: Grant,
    terms: ContractTerms,
    receipt: Receipt,
    provider_contact: Vec<String>,
) -> Result<String, WorkError> {
    let fatal = |e: anyhow::Error| WorkError::fatal(format!("{e:#}"));
    let Some(m) = &terms.spec.model else {
        return Err(WorkError::fatal(
            "a federated round without its model".to_string(),
        ));
    };
    let until = keep_until(terms.spec.deadline);
    let ct = fetch_bytes(&blobs, &grant.requester, &grant.contact, m, until).await?;
    let aad = input_aad(&grant.requester);
    let model = open_blob(grant.key.clone(), "model", aad, ct).await?;
    let protocol::JobKind::FedRound { rows, layers, .. } = &terms.spec.kind else {
        return Err(WorkError::fatal("not a federated round".to_string()));
    };
    let shape = compute::DataShape {
        rows: usize::try_from(*rows).unwrap_or(usize::MAX),
        features: layers.first().map_or(0, |&f| f as usize),
        test_rows: 0,
    };
    let limits = crate::work::limits(&terms.spec.kind, Some(&model), shape).map_err(fatal)?;
    let key = &grant.key;
    let index = fetch_index(&blobs, &provider_contact, &receipt, key, &limits, until).await?;
    let blob = index.output;
    let output = fetch_part(
        &blobs,
        &provider_contact,
        &receipt,
        key,
        MODEL_LABEL,
        &blob,
        until,
    )
    .await?;
    let verdict = tokio::task::spawn_blocking(move || {
        crate::work::check_fed_round(&terms.spec, &model, &index, &output, &receipt)
    })
    .await
    .map_err(|e| WorkError::fatal(format!("the check task failed: {e}")))?
    .map_err(fatal)?;
    if verdict.ok {
        Ok(verdict.reason)
    } else {
        Err(WorkError::fatal(verdict.reason))
    }
}

/// Encrypt and store a federated round's model for `owner`, and make its
/// job: the owner's data set by its hash (it never moves), the units and
/// result limits for its rows, and the ε the job spends of it.
pub(super) async fn prepare_round(
    blobs: &BlobNode,
    me: AccountId,
    kind: protocol::JobKind,
    owner: &super::federated::Owner,
    model: &[u8],
    req: &super::federated::FedRequest,
    submitted: Timestamp,
) -> anyhow::Result<(PreparedJob, JobNotes)> {
    let d = owner.data;
    let (round, rounds) = match &kind {
        protocol::JobKind::FedRound { round, rounds, .. } => (*round, *rounds),
        _ => anyhow::bail!("not a federated round"),
    };
    let shape = compute::DataShape {
        rows: usize::try_from(d.rows)?,
        features: d.features as usize,
        test_rows: 0,
    };
    let spec_w = crate::work::workload_spec(&kind, Some(model))?;
    let cu = compute::compute_units_for(&spec_w, shape);
    let limits = crate::work::limits(&kind, Some(model), shape)?;
    let key = crypto::random_key();
    let aad = input_aad(&me);
    let deadline = Timestamp(
        submitted
            .0
            .saturating_add(req.round_secs.saturating_mul(1000)),
    );
    let ct = {
        let (key, plain) = (key.clone(), model.to_vec());
        tokio::task::spawn_blocking(move || crypto::encrypt(&key, "model", &aad, &plain)).await?
    };
    let size = ct.len() as u64;
    let hash = blobs
        .add_bytes_until(ct, keep_until(deadline), "job-input")
        .await?;
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("OS random number generator: {e}"))?;
    let spec = JobSpec {
        requester: me,
        kind,
        model: Some(BlobRef { hash, size }),
        dataset: BlobRef {
            hash: d.id,
            size: d.bytes,
        },
        estimated_units: ComputeUnits {
            milli: (cu * 1000.0).ceil().max(1.0) as u64,
        },
        result_bytes: limits.stored().max(1),
        max_price: PricePerCu(req.max_price),
        deadline,
        sla: protocol::SlaRequirement {
            min_availability: protocol::Bps(9_000),
            min_penalty: protocol::Bps(0),
        },
        privacy: Some(protocol::PrivacyTarget {
            epsilon: owner.epsilon,
            delta: req.delta,
        }),
        issued_at: submitted,
        expires_at: deadline,
        nonce: u64::from_le_bytes(nonce),
    };
    Ok((
        PreparedJob {
            spec,
            key,
            note: format!(
                "federated round {round}/{rounds} for {} ({} rows, ε {:.3} in all rounds); \
                 estimated {cu:.3} CU",
                owner.account.short(),
                d.rows,
                owner.epsilon
            ),
        },
        JobNotes {
            dataset: Default::default(),
            limits: Some(limits),
        },
    ))
}

/// A trained model with what its data set said (feature and class names,
/// scalers; see [`MODEL_KEYS`]) and its metrics added to its metadata; any
/// other result as it came.
fn describe_model(dataset: &DatasetMeta, output: &[u8], metrics: &compute::Metrics) -> Vec<u8> {
    let is_model = compute::tensors::parse(output).is_ok_and(|st| compute::tensors::has(&st, "w0"));
    if !is_model {
        return output.to_vec();
    }
    let mut meta = dataset.clone();
    if let Ok(m) = serde_json::to_string(metrics) {
        meta.insert("metrics".into(), m);
    }
    compute::tensors::with_metadata(output, &meta).unwrap_or_else(|e| {
        tracing::warn!(%e, "the model is saved without its data set's names");
        output.to_vec()
    })
}

/// Fetch, decrypt and save a requester's result under `results/`.
pub(super) async fn fetch_for_requester(
    blobs: BlobNode,
    results: PathBuf,
    job: Hash32,
    receipt: Receipt,
    key: JobKey,
    provider_contact: Vec<String>,
) -> Result<Fetched, WorkError> {
    let notes = JobNotes::read(&results, &job);
    // A job submitted before its limits were kept: the largest a requester takes.
    let limits = notes.limits.unwrap_or(crate::work::Limits {
        index: 64 << 20,
        output: crate::work::MAX_OUTPUT,
        model: crate::work::MAX_OUTPUT,
        links: 0,
    });
    // The result is written to `results/` at once: its blobs need not stay.
    let until = crate::blobs::Keep::fetched();
    let index = fetch_index(&blobs, &provider_contact, &receipt, &key, &limits, until).await?;
    // Only the output: the committee checked the chain.
    let trained = !index.models.is_empty();
    let label = if trained { MODEL_LABEL } else { OUTPUT_LABEL };
    let blob = index.output;
    let out = fetch_part(
        &blobs,
        &provider_contact,
        &receipt,
        &key,
        label,
        &blob,
        until,
    )
    .await?;
    if trained {
        crate::work::check_output(&index, &out).map_err(|e| WorkError::fatal(format!("{e:#}")))?;
    }
    let r = crate::work::JobResult {
        output: out,
        chain: index.chain,
        checkpoint_models: Vec::new(),
        metrics: index.metrics,
    };
    let path = results.join(format!("{}.safetensors", job.short()));
    let output = describe_model(&notes.dataset, &r.output, &r.metrics);
    let saved = async {
        tokio::fs::create_dir_all(&results).await?;
        tokio::fs::write(&path, &output)
            .await
            .with_context(|| format!("cannot write {}", path.display()))
    }
    .await;
    saved.map_err(|e| WorkError::fatal(format!("{e:#}")))?;
    let acc = match r.metrics.summary() {
        s if s.is_empty() => s,
        s => format!(", {s}"),
    };
    let bytes = r.output.len() as u64;
    Ok(Fetched {
        summary: format!(
            "result fetched over iroh and decrypted: {bytes} bytes in {}{acc}",
            path.display()
        ),
        path,
        bytes,
        metrics: serde_json::to_value(&r.metrics).unwrap_or_default(),
    })
}
