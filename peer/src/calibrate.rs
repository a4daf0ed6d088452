//! The calibration step of `cloudchain sim`: the figures simnet takes as inputs
//! rather than assuming (see `simnet::calibration`), measured on this machine
//! and cached per machine.
//!
//! - **DP-SGD overhead** (Fig. 6): one epoch of the simulated jobs' MLP with and
//!   without DP-SGD on the compute crate's CPU backend, at the scenario's batch
//!   sizes and at 64, 256 and 1024, best of [`DP_RUNS`] interleaved runs.
//! - **Storage latency** (Fig. 2): `cloudchain bench storage`, the real iroh
//!   blob store and ledger of a 7-node loopback swarm with a 3-oracle
//!   committee, at the scenario's object sizes.
//!
//! The cache (`$XDG_CACHE_HOME/cloudchain/calibration.json`, else
//! `~/.cache/…`) names the machine it was measured on, with its CPU backend. Another machine, an
//! unreadable file or `--recalibrate` measures afresh; sizes or batches the
//! cache lacks are measured and added.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use simnet::calibration::{Calibration, DpPoint, StoragePoint};

/// Runs of each epoch (with and without DP) per batch size; the minimum is
/// kept, since interference on a shared machine only ever adds time.
pub const DP_RUNS: usize = 7;

/// Batch sizes Fig. 6 always shows, beside the scenario's own.
pub const FIGURE_BATCHES: [u32; 3] = [64, 256, 1024];

/// Training steps an epoch of the DP calibration takes at any batch size.
const DP_STEPS: usize = 16;

/// Where `cloudchain sim` takes its calibration from (`--calibration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// This machine's cache, measuring what it lacks.
    Auto,
    /// None: simnet's model figures, labelled so in the report.
    Model,
    /// A calibration file (JSON, as the cache holds or `--calibration-out` writes).
    File(PathBuf),
}

impl std::str::FromStr for Source {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Source, Self::Err> {
        Ok(match s {
            "auto" => Source::Auto,
            "model" => Source::Model,
            path => Source::File(PathBuf::from(path)),
        })
    }
}

/// The cache file: one machine's calibration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cache {
    machine: String,
    calibration: Calibration,
}

/// This machine, as the cache and the report name it: host, CPU model and
/// cores, and this program's version (a new build may compute faster).
pub fn machine() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "this host".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The backend's name says which GEMM it runs: a cache measured on another
    // kernel is another machine's.
    let backend = compute::Backend::info(&compute::CpuBackend::new()).name;
    format!(
        "{host} ({cpu}, {cores} cores), {backend}, cloudchain {}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The cache file's path, if a home or cache directory is known.
pub fn cache_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("cloudchain").join("calibration.json"))
}

/// Read a calibration file (a bare calibration, or the cache's form).
pub fn read_file(path: &Path) -> anyhow::Result<Calibration> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the calibration {}", path.display()))?;
    let cal = match serde_json::from_str::<Cache>(&text) {
        Ok(c) => c.calibration,
        Err(_) => serde_json::from_str::<Calibration>(&text)
            .with_context(|| format!("{} is not a calibration file", path.display()))?,
    };
    cal.validate()
        .with_context(|| format!("the calibration {}", path.display()))?;
    Ok(cal)
}

/// The calibration for `sc` from `source` (`None` for the model), measuring
/// what this machine's cache lacks. `say` gets a line per step.
pub fn for_scenario(
    sc: &simnet::Scenario,
    source: &Source,
    fresh: bool,
    mut say: impl FnMut(&str),
) -> anyhow::Result<Option<Calibration>> {
    if let Some(c) = &sc.calibration {
        say("calibration: the scenario's own");
        return Ok(Some(c.clone()));
    }
    match source {
        Source::Model => Ok(None),
        Source::File(path) => read_file(path).map(Some),
        Source::Auto => {
            let path = cache_path();
            let me = machine();
            let cached = (!fresh)
                .then_some(path.as_deref())
                .flatten()
                .and_then(|p| cached(p, &me, &mut say));
            let mut cal = cached.unwrap_or_else(|| Calibration {
                source: String::new(),
                dp: Vec::new(),
                storage: Vec::new(),
                storage_epoch_s: 0.0,
            });
            let mut batches = sc.requesters.train_batches.clone();
            batches.extend(FIGURE_BATCHES);
            batches.sort_unstable();
            batches.dedup();
            let (batches, sizes) = cal.missing(&batches, &sc.storage.sizes_mb);
            if batches.is_empty() && sizes.is_empty() {
                say(&format!("calibration: {}", cal.source));
                return Ok(Some(cal));
            }
            measure(&mut cal, &batches, &sizes, &mut say)?;
            cal.source = format!(
                "on {me}, {}, by `cloudchain sim`",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            );
            if let Some(p) = &path {
                match save(p, &me, &cal) {
                    Ok(()) => say(&format!("calibration: saved in {}", p.display())),
                    Err(e) => say(&format!("calibration: not cached ({e:#})")),
                }
            }
            Ok(Some(cal))
        }
    }
}

/// This machine's cached calibration, if the file holds one.
fn cached(path: &Path, me: &str, say: &mut impl FnMut(&str)) -> Option<Calibration> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str::<Cache>(&text) {
        Ok(c) if c.machine == me && c.calibration.validate().is_ok() => Some(c.calibration),
        Ok(_) => {
            say("calibration: the cache is another machine's; measuring afresh");
            None
        }
        Err(e) => {
            say(&format!(
                "calibration: cannot read {} ({e}); measuring afresh",
                path.display()
            ));
            None
        }
    }
}

fn save(path: &Path, me: &str, cal: &Calibration) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(&Cache {
        machine: me.to_string(),
        calibration: cal.clone(),
    })?;
    // Written aside and renamed: a crash leaves the old cache or the new one.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Measure the DP overhead at `batches` and storage at `sizes`, into `cal`.
fn measure(
    cal: &mut Calibration,
    batches: &[u32],
    sizes: &[u64],
    say: &mut impl FnMut(&str),
) -> anyhow::Result<()> {
    let cpu = compute::CpuBackend::new();
    let layers: Vec<usize> = simnet::setup::TRAIN_LAYERS
        .iter()
        .map(|&w| w as usize)
        .collect();
    for &batch in batches {
        let started = Instant::now();
        let rows = batch as usize * DP_STEPS;
        let dp = compute::DpConfig {
            clip: 1.0,
            sigma: 1.0,
            delta: 1e-5,
        };
        let (mut plain_s, mut dp_s) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..DP_RUNS {
            let p = compute::bench::epoch_seconds(&cpu, &layers, rows, batch as usize, None)?;
            let d = compute::bench::epoch_seconds(&cpu, &layers, rows, batch as usize, Some(dp))?;
            plain_s = plain_s.min(p);
            dp_s = dp_s.min(d);
        }
        let point = DpPoint {
            batch,
            layers: layers.clone(),
            rows,
            plain_s,
            dp_s,
        };
        say(&format!(
            "calibration: DP-SGD at batch {batch}: {:+.1} % ({:.0} ms)",
            point.overhead() * 100.0,
            started.elapsed().as_secs_f64() * 1e3
        ));
        cal.dp.push(point);
    }
    cal.dp.sort_by_key(|p| p.batch);
    if !sizes.is_empty() {
        say(&format!(
            "calibration: storage at {sizes:?} MB on a 7-node loopback swarm (about {} s)",
            10 + sizes.iter().sum::<u64>() / 20
        ));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let rows = rt.block_on(crate::netbench::storage(sizes))?;
        rt.shutdown_timeout(Duration::from_secs(5));
        for r in rows {
            say(&format!(
                "calibration: {} MB: blob write {:.3} s, read {:.3} s, ledger-finalized write {:.3} s",
                r.size_mb, r.blob_write_s, r.blob_read_s, r.ledger_write_s
            ));
            cal.storage.push(StoragePoint {
                size_mb: r.size_mb,
                blob_write_s: r.blob_write_s,
                blob_read_s: r.blob_read_s,
                ledger_write_s: r.ledger_write_s,
            });
        }
        cal.storage.sort_by_key(|p| p.size_mb);
        cal.storage_epoch_s = crate::netbench::EPOCH_SECS as f64;
    }
    cal.validate().context("the measured calibration")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_files_of_either_form_read_back() {
        assert_eq!("auto".parse::<Source>().unwrap(), Source::Auto);
        assert_eq!("model".parse::<Source>().unwrap(), Source::Model);
        let dir = tempfile::tempdir().unwrap();
        let cal = Calibration {
            source: "a test".into(),
            dp: vec![DpPoint {
                batch: 64,
                layers: vec![64, 256, 10],
                rows: 1024,
                plain_s: 0.01,
                dp_s: 0.012,
            }],
            storage: vec![],
            storage_epoch_s: 0.0,
        };
        let bare = dir.path().join("bare.json");
        std::fs::write(&bare, serde_json::to_string(&cal).unwrap()).unwrap();
        assert_eq!(read_file(&bare).unwrap(), cal);
        let cache = dir.path().join("cache.json");
        save(&cache, "m", &cal).unwrap();
        assert_eq!(read_file(&cache).unwrap(), cal);
        // Another machine's cache is not taken as this one's.
        let mut lines = Vec::new();
        assert_eq!(
            cached(&cache, "m", &mut |l: &str| lines.push(l.to_string())),
            Some(cal.clone())
        );
        assert_eq!(
            cached(&cache, "other", &mut |l: &str| lines.push(l.to_string())),
            None
        );
        assert!(lines[0].contains("another machine"), "{lines:?}");
        // Nonsense is refused with the field named.
        let mut bad = cal;
        bad.dp[0].plain_s = -1.0;
        std::fs::write(&bare, serde_json::to_string(&bad).unwrap()).unwrap();
        let err = format!("{:#}", read_file(&bare).unwrap_err());
        assert!(err.contains("dp[0]"), "{err}");
        std::fs::write(&bare, "{").unwrap();
        assert!(read_file(&bare).is_err());
    }
}
