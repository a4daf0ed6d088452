//! Figures measured on a real machine that a run and its report take as inputs:
//! the DP-SGD overhead by batch size (the paper's Fig. 6) and storage latency
//! by object size (Fig. 2).
//!
//! simnet is a logic crate and times nothing itself. `cloudchain sim` measures
//! them (the compute crate with and without DP-SGD; the real iroh blob store
//! and ledger with a 3-member committee on loopback, as `cloudchain bench
//! storage` does), caches them per machine, and hands them in through
//! [`crate::Scenario::calibration`]. A scenario file may also pin one, so that
//! a run is reproduced bit for bit elsewhere: a DP job's compute units depend
//! on it. Without one, a run uses [`DP_OVERHEAD_MODEL`] and the scenario's
//! stated bandwidths, and the report labels them a model.

use serde::{Deserialize, Serialize};

/// DP-SGD's extra compute when no calibration is given: a model, labelled so in
/// the report. (The compute crate measured +38–44 % for a [256, 512, 512, 10]
/// MLP at batch 256 on a 2-core machine before its noise sampler vectorized.)
pub const DP_OVERHEAD_MODEL: f64 = 0.40;

/// Measured figures, and where they came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// The machine, the date and the program that measured them, for the report.
    pub source: String,
    /// One training epoch with and without DP-SGD, by batch size.
    #[serde(default)]
    pub dp: Vec<DpPoint>,
    /// Blob and ledger latency by object size.
    #[serde(default)]
    pub storage: Vec<StoragePoint>,
    /// Epoch of the network the storage points were measured on, in seconds.
    #[serde(default)]
    pub storage_epoch_s: f64,
}

/// One training epoch of the same model and data, with and without DP-SGD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpPoint {
    pub batch: u32,
    /// The MLP's layer widths.
    pub layers: Vec<usize>,
    pub rows: usize,
    pub plain_s: f64,
    pub dp_s: f64,
}

impl DpPoint {
    /// `dp / plain − 1`, never below 0 (timing noise on a busy machine).
    pub fn overhead(&self) -> f64 {
        (self.dp_s / self.plain_s - 1.0).max(0.0)
    }
}

/// Storage latency of one object, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoragePoint {
    pub size_mb: u64,
    /// Added to the writer's blob store (hashed and stored).
    pub blob_write_s: f64,
    /// Fetched by ticket from another node over iroh and written out.
    pub blob_read_s: f64,
    /// Written again, then a ledger record of it, until the committee's next
    /// checkpoint makes the record final.
    pub ledger_write_s: f64,
}

/// `T_r = S/B_r` and `T_w = S/B_w + T_c`, fitted to [`StoragePoint`]s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StorageFit {
    pub read_mb_s: f64,
    pub write_mb_s: f64,
    /// `T_c` on the measuring network: the ledger write's time beyond the blob
    /// write, averaged over the sizes.
    pub tc_measured_s: f64,
    /// What `T_c` adds beyond the mean wait for the next checkpoint (half an
    /// epoch): the committee's signing round and the sync, `≥ 0`.
    pub commit_s: f64,
}

impl StorageFit {
    /// `T_c` on a network with `epoch_s` epochs: half an epoch's wait for the
    /// next checkpoint, plus the commit measured.
    pub fn tc(&self, epoch_s: f64) -> f64 {
        epoch_s / 2.0 + self.commit_s
    }
}

/// Why a calibration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("calibration `{field}`: {reason}")]
pub struct CalibrationError {
    pub field: String,
    pub reason: String,
}

impl Calibration {
    /// The measured overhead at `batch`, from the point with the nearest batch
    /// size (on a log scale); `None` without DP points.
    pub fn dp_overhead(&self, batch: u32) -> Option<f64> {
        let dist = |p: &DpPoint| {
            (f64::from(p.batch.max(1)) / f64::from(batch.max(1)))
                .ln()
                .abs()
        };
        self.dp
            .iter()
            .min_by(|a, b| dist(a).total_cmp(&dist(b)))
            .map(DpPoint::overhead)
    }

    /// Least squares through the origin for the bandwidths (`T = S/B`), and the
    /// mean excess of a ledger write over a blob write for `T_c`. `None`
    /// without storage points.
    pub fn storage_fit(&self) -> Option<StorageFit> {
        if self.storage.is_empty() {
            return None;
        }
        let s2: f64 = self
            .storage
            .iter()
            .map(|p| (p.size_mb as f64).powi(2))
            .sum();
        let slope = |t: fn(&StoragePoint) -> f64| {
            let st: f64 = self.storage.iter().map(|p| p.size_mb as f64 * t(p)).sum();
            st / s2
        };
        let (read, write) = (slope(|p| p.blob_read_s), slope(|p| p.blob_write_s));
        let tc = self
            .storage
            .iter()
            .map(|p| p.ledger_write_s - p.size_mb as f64 * write)
            .sum::<f64>()
            / self.storage.len() as f64;
        let tc = tc.max(0.0);
        Some(StorageFit {
            read_mb_s: 1.0 / read,
            write_mb_s: 1.0 / write,
            tc_measured_s: tc,
            commit_s: (tc - self.storage_epoch_s / 2.0).max(0.0),
        })
    }

    /// Every figure finite and positive, and sizes and batches that exist.
    pub fn validate(&self) -> Result<(), CalibrationError> {
        let bad = |field: String, reason: &str| CalibrationError {
            field,
            reason: reason.to_string(),
        };
        // A time is a positive number of seconds, at most 10⁶ (11 days): a
        // calibration step takes seconds, and the fit divides by them.
        let positive = |x: f64| x.is_finite() && x > 0.0 && x <= 1e6;
        for (i, p) in self.dp.iter().enumerate() {
            if p.batch == 0 || p.rows == 0 || p.layers.len() < 2 {
                return Err(bad(
                    format!("dp[{i}]"),
                    "needs a batch, rows and at least two layer widths",
                ));
            }
            if !(positive(p.plain_s) && positive(p.dp_s)) {
                return Err(bad(
                    format!("dp[{i}]"),
                    "times must be positive seconds, at most 10⁶",
                ));
            }
        }
        for (i, p) in self.storage.iter().enumerate() {
            if !(1..=1_000_000).contains(&p.size_mb) {
                return Err(bad(
                    format!("storage[{i}].size_mb"),
                    "must be in 1..=1000000 MB",
                ));
            }
            if ![p.blob_write_s, p.blob_read_s, p.ledger_write_s]
                .into_iter()
                .all(positive)
            {
                return Err(bad(
                    format!("storage[{i}]"),
                    "times must be positive seconds",
                ));
            }
        }
        if !self.storage.is_empty() && !positive(self.storage_epoch_s) {
            return Err(bad(
                "storage_epoch_s".into(),
                "the measuring network's epoch must be positive seconds",
            ));
        }
        Ok(())
    }

    /// The DP batch sizes and storage sizes of `wanted` that this one lacks.
    pub fn missing(&self, batches: &[u32], sizes_mb: &[u64]) -> (Vec<u32>, Vec<u64>) {
        let b = batches
            .iter()
            .copied()
            .filter(|b| !self.dp.iter().any(|p| p.batch == *b))
            .collect();
        let s = sizes_mb
            .iter()
            .copied()
            .filter(|s| !self.storage.iter().any(|p| p.size_mb == *s))
            .collect();
        (b, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cal() -> Calibration {
        let point = |mb: u64, tc: f64| StoragePoint {
            size_mb: mb,
            blob_write_s: mb as f64 / 200.0,
            blob_read_s: mb as f64 / 100.0,
            ledger_write_s: mb as f64 / 200.0 + tc,
        };
        Calibration {
            source: "test".into(),
            dp: [(64, 1.30), (256, 1.10), (1024, 1.02)]
                .into_iter()
                .map(|(batch, f)| DpPoint {
                    batch,
                    layers: vec![64, 256, 10],
                    rows: 4096,
                    plain_s: 1.0,
                    dp_s: f,
                })
                .collect(),
            storage: vec![point(50, 1.2), point(100, 1.6), point(200, 1.4)],
            storage_epoch_s: 2.0,
        }
    }

    #[test]
    fn the_fit_recovers_bandwidths_and_the_commit_time() {
        let f = cal().storage_fit().unwrap();
        assert!((f.read_mb_s - 100.0).abs() < 1e-6, "{f:?}");
        assert!((f.write_mb_s - 200.0).abs() < 1e-6, "{f:?}");
        assert!((f.tc_measured_s - 1.4).abs() < 1e-9, "{f:?}");
        // 1.4 s on 2 s epochs: 1 s of waiting and 0.4 s of committing; on
        // 60-minute epochs, 1,800 s of waiting and the same commit.
        assert!((f.commit_s - 0.4).abs() < 1e-9);
        assert!((f.tc(3600.0) - 1800.4).abs() < 1e-9);
        assert_eq!(
            Calibration {
                storage: vec![],
                ..cal()
            }
            .storage_fit(),
            None
        );
    }

    #[test]
    fn the_overhead_comes_from_the_nearest_batch() {
        let c = cal();
        assert!((c.dp_overhead(64).unwrap() - 0.30).abs() < 1e-9);
        assert!((c.dp_overhead(200).unwrap() - 0.10).abs() < 1e-9);
        assert!((c.dp_overhead(4096).unwrap() - 0.02).abs() < 1e-9);
        assert_eq!(Calibration { dp: vec![], ..c }.dp_overhead(64), None);
        let (b, s) = cal().missing(&[64, 512], &[50, 400]);
        assert_eq!((b, s), (vec![512], vec![400]));
    }

    #[test]
    fn nonsense_figures_are_refused_by_name() {
        assert_eq!(cal().validate(), Ok(()));
        let mut c = cal();
        c.dp[1].dp_s = f64::NAN;
        assert_eq!(c.validate().unwrap_err().field, "dp[1]");
        let mut c = cal();
        c.storage[2].size_mb = 0;
        assert_eq!(c.validate().unwrap_err().field, "storage[2].size_mb");
        let mut c = cal();
        c.storage[0].blob_read_s = 1e308;
        assert_eq!(c.validate().unwrap_err().field, "storage[0]");
        let mut c = cal();
        c.storage_epoch_s = 0.0;
        assert_eq!(c.validate().unwrap_err().field, "storage_epoch_s");
    }
}
