//! Benchmarks of the node on a local swarm (`cloudchain bench storage`,
//! `cloudchain bench contracts`): figures printed, never asserted.
//!
//! Both start the seven nodes of [`LocalSwarm`] on loopback, in this process.

use std::time::{Duration, Instant};

use anyhow::Context;
use protocol::{Bps, JobKind, PreprocessOp, SlaRequirement};
use serde::Serialize;

use crate::control::JobRequest;
use crate::demo::{LocalSwarm, wait};

/// Epochs of the bench network: a ledger write waits for the next checkpoint.
pub const EPOCH_SECS: u64 = 2;

/// Storage latency for one object size (the paper's Fig. 2).
#[derive(Debug, Clone, Serialize)]
pub struct StorageRow {
    pub size_mb: u64,
    /// Add to the writer's blob store (hash + fsync'd store): `T_w = S/B_w + T_c`.
    pub blob_write_s: f64,
    /// Fetch by ticket from another node over iroh and write it out: `T_r = S/B_r`.
    pub blob_read_s: f64,
    /// The blob write plus a ledger entry recording it, finalized by the
    /// 3-oracle committee's next checkpoint.
    pub ledger_write_s: f64,
    /// The blob read plus the reader's check that the record is final.
    pub ledger_read_s: f64,
}

/// Wait (up to `limit`) until `client` sees `target`'s spendable balance above
/// `before`: the record's transfer is final in that node's ledger.
async fn record_final(
    client: &crate::control::ControlClient,
    target: &str,
    before: u64,
    limit: Duration,
    what: &str,
) -> anyhow::Result<()> {
    wait(limit, what, || async {
        let b = client.balance(Some(target)).await?;
        Ok((b.spendable > before).then_some(()))
    })
    .await
}

pub async fn storage(sizes_mb: &[u64]) -> anyhow::Result<Vec<StorageRow>> {
    let tmp = tempfile::tempdir()?;
    let swarm = LocalSwarm::start(tmp.path(), 0, crate::work::Cheat::None, EPOCH_SECS).await?;
    let (writer, reader) = (&swarm.ctl[6], &swarm.ctl[3]);
    let target = swarm.ctl[4].status().await?.account;
    let mut rows = Vec::new();
    for (i, &mb) in sizes_mb.iter().enumerate() {
        let file = tmp.path().join(format!("object-{mb}.bin"));
        std::fs::write(&file, object(mb, 2 * i as u64))?;
        let t = Instant::now();
        let added = writer.add_blob(&file, false).await?;
        let blob_write_s = t.elapsed().as_secs_f64();
        let out = tmp.path().join(format!("read-{mb}.bin"));
        let t = Instant::now();
        reader.get_blob(&added.ticket, &out).await?;
        let blob_read_s = t.elapsed().as_secs_f64();
        std::fs::remove_file(&out)?;

        // The ledger-finalized write: the object again (a new one, so the store
        // does the work), then its record, until a checkpoint makes it final.
        std::fs::write(&file, object(mb, 2 * i as u64 + 1))?;
        let before = writer.balance(Some(&target)).await?.spendable;
        let t = Instant::now();
        let added = writer.add_blob(&file, false).await?;
        writer.transfer(&target, 1).await?;
        record_final(
            writer,
            &target,
            before,
            Duration::from_secs(10 * EPOCH_SECS + 10),
            "the checkpoint that finalizes the record",
        )
        .await?;
        let ledger_write_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        reader.get_blob(&added.ticket, &out).await?;
        record_final(
            reader,
            &target,
            before,
            Duration::from_secs(30),
            "the record at the reader",
        )
        .await?;
        let ledger_read_s = t.elapsed().as_secs_f64();
        std::fs::remove_file(&out)?;
        std::fs::remove_file(&file)?;
        rows.push(StorageRow {
            size_mb: mb,
            blob_write_s,
            blob_read_s,
            ledger_write_s,
            ledger_read_s,
        });
    }
    swarm.shutdown().await?;
    Ok(rows)
}

/// `mb` MiB of incompressible-looking bytes, different for each `salt`.
fn object(mb: u64, salt: u64) -> Vec<u8> {
    (0..mb << 20)
        .map(|j| ((j ^ (salt << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect()
}

/// Offer-to-signed-contract latency over `jobs` submissions.
#[derive(Debug, Clone, Serialize)]
pub struct ContractLatency {
    pub jobs: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
}

pub async fn contracts(jobs: usize) -> anyhow::Result<ContractLatency> {
    let tmp = tempfile::tempdir()?;
    let swarm = LocalSwarm::start(tmp.path(), 0, crate::work::Cheat::None, 10).await?;
    let req = swarm.requester();
    let data = tmp.path().join("winequality.safetensors");
    compute::datasets::write_builtin(compute::datasets::Builtin::WineQuality, &data)?;
    let mut lat = Vec::new();
    for _ in 0..jobs {
        let job = JobRequest {
            kind: JobKind::Preprocess {
                op: PreprocessOp::Standardize,
                seed: 0,
            },
            dataset: data.clone(),
            model: None,
            max_price: 5_000_000,
            deadline_secs: 120,
            estimated_cu: None,
            sla: SlaRequirement {
                min_availability: Bps(0),
                min_penalty: Bps(0),
            },
            privacy: None,
        };
        let v = req.submit(&job).await?;
        let v = wait(Duration::from_secs(20), "a signed contract", || async {
            let v = req.job(&v.id).await?;
            Ok((v.contract.is_some() || v.done).then_some(v))
        })
        .await?;
        let at = |p: &str| {
            v.events
                .iter()
                .find(|e| e.what.starts_with(p))
                .map(|e| e.at_s)
        };
        let (Some(a), Some(b)) = (at("submitted"), at("contract")) else {
            anyhow::bail!("job {} got no contract: {:?}", v.id, v.events);
        };
        lat.push((b - a) * 1000.0);
    }
    swarm.shutdown().await?;
    lat.sort_by(f64::total_cmp);
    let pick = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    Ok(ContractLatency {
        jobs,
        p50_ms: pick(0.5),
        p95_ms: pick(0.95),
        max_ms: *lat.last().context("no jobs")?,
    })
}
