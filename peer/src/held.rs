//! Private data sets a node holds and offers to federated jobs: their rows
//! never leave it; its offers say what matching needs (a [`DataOffer`]), and
//! it trains on them where they are.
//!
//! `cloudchain data offer FILE --budget-epsilon E` copies the data set into
//! the data directory (`datasets/<hash>.safetensors`, so a later change to
//! the original cannot change what was offered) with its budget beside it
//! (`datasets/<hash>.json`). A provider node offers them from its next
//! start; what its budgets spent is in the ledger.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use protocol::{DataOffer, Hash32};
use serde::{Deserialize, Serialize};

/// The folder under a data directory.
pub const DIR: &str = "datasets";
/// The largest data set a node offers (read whole to train on).
pub const MAX_BYTES: u64 = 1 << 30;

/// The privacy budget an owner sets for one data set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// ε in all, over every job of every requester.
    pub epsilon: f64,
    /// ε for the jobs of any one requester.
    pub per_requester: f64,
    /// The largest δ a job may state.
    pub delta: f64,
}

impl Budget {
    pub fn check(&self) -> anyhow::Result<()> {
        let ok = |e: f64| e.is_finite() && e > 0.0 && e <= 1e6;
        if !ok(self.epsilon) || !ok(self.per_requester) {
            bail!("a budget's ε must be positive (at most 10⁶)");
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            bail!("δ must be between 0 and 1");
        }
        Ok(())
    }
}

/// What is kept beside a held data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sidecar {
    name: String,
    budget: Budget,
}

/// A data set this node holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub name: String,
    pub path: PathBuf,
    /// What offers say of it; `epsilon_left` is the whole budget (the
    /// provider engine states what is left of it).
    pub offer: DataOffer,
}

/// The rows, features, label classes and schema of a data set (its `x`,
/// `y`), for a [`DataOffer`] with `budget`.
pub fn describe(bytes: &[u8], budget: Budget) -> anyhow::Result<DataOffer> {
    budget.check()?;
    let st = compute::tensors::parse(bytes).context("not a safetensors data set")?;
    let (rows, features, _) = compute::tensors::read_matrix(&st, "x")?;
    let meta = compute::tensors::metadata(bytes)?;
    let task: compute::Task = meta
        .get("task")
        .map_or(Ok(compute::Task::Classify), |t| t.parse())?;
    let classes = match task {
        compute::Task::Regress => {
            compute::tensors::read_targets(&st, "y")?;
            1
        }
        compute::Task::Classify => {
            let y = compute::tensors::read_labels(&st, "y")?;
            let seen = y.iter().max().map_or(0, |m| m + 1);
            // The import's class count, when it says (a shard may miss a class).
            meta.get("classes")
                .and_then(|c| c.parse::<u32>().ok())
                .unwrap_or(seen)
                .max(seen)
        }
    };
    if rows == 0 || features == 0 || classes == 0 {
        bail!("the data set has no rows, features or classes");
    }
    // What a model must fit: the features (named, when the import named
    // them), the label and its classes, the task; not the rows.
    let schema = serde_json::json!({
        "features": meta.get("feature_names").cloned().unwrap_or_else(|| features.to_string()),
        "label": meta.get("label"),
        "classes": meta.get("class_names").cloned().unwrap_or_else(|| classes.to_string()),
        "task": task.name(),
    });
    Ok(DataOffer {
        id: Hash32::of(bytes),
        schema: Hash32::of(schema.to_string().as_bytes()),
        rows: rows as u64,
        features: u32::try_from(features)?,
        classes,
        bytes: bytes.len() as u64,
        epsilon_per_requester: budget.per_requester,
        epsilon_left: budget.epsilon,
        delta: budget.delta,
    })
}

/// Hold `file` under `data_dir` and offer it with `budget` (an existing
/// one's budget is replaced).
pub fn offer(data_dir: &Path, file: &Path, budget: Budget) -> anyhow::Result<Held> {
    let len = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    if len > MAX_BYTES {
        bail!(
            "{} is {len} bytes; a held data set is at most {MAX_BYTES}",
            file.display()
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let offer = describe(&bytes, budget)
        .with_context(|| format!("{} cannot be offered", file.display()))?;
    let dir = data_dir.join(DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let hex = hex::encode(offer.id.0);
    let path = dir.join(format!("{hex}.safetensors"));
    write_atomic(&path, &bytes)?;
    let name = file
        .file_stem()
        .map_or_else(|| hex.clone(), |s| s.to_string_lossy().into_owned());
    let side = Sidecar {
        name: name.clone(),
        budget,
    };
    write_atomic(
        &dir.join(format!("{hex}.json")),
        serde_json::to_string_pretty(&side)?.as_bytes(),
    )?;
    Ok(Held { name, path, offer })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Every data set held under `data_dir`, each checked against its hash
/// (one that changed on disk is refused, with a warning).
pub fn load(data_dir: &Path) -> anyhow::Result<Vec<Held>> {
    let dir = data_dir.join(DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries {
        let path = e?.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        match load_one(&path) {
            Ok(h) => out.push(h),
            Err(e) => tracing::warn!(file = %path.display(), "not offered: {e:#}"),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.offer.id.cmp(&b.offer.id)));
    Ok(out)
}

fn load_one(sidecar: &Path) -> anyhow::Result<Held> {
    let side: Sidecar = serde_json::from_slice(&std::fs::read(sidecar)?)?;
    let path = sidecar.with_extension("safetensors");
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let offer = describe(&bytes, side.budget)?;
    if sidecar.file_stem().and_then(|s| s.to_str()) != Some(hex::encode(offer.id.0).as_str()) {
        bail!("its contents changed since it was offered");
    }
    Ok(Held {
        name: side.name,
        path,
        offer,
    })
}

/// The rows of held data set `id`, checked against its hash.
pub fn read(data_dir: &Path, id: &Hash32) -> anyhow::Result<Vec<u8>> {
    let path = data_dir
        .join(DIR)
        .join(format!("{}.safetensors", hex::encode(id.0)));
    let bytes = std::fs::read(&path)
        .with_context(|| format!("this node holds no data set {}", id.short()))?;
    if Hash32::of(&bytes) != *id {
        bail!(
            "the data set {} changed on disk since it was offered",
            id.short()
        );
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn budget() -> Budget {
        Budget {
            epsilon: 10.0,
            per_requester: 4.0,
            delta: 1e-5,
        }
    }

    /// A data set offered is held, described, loaded back and read by its
    /// hash; one that changes on disk is no longer offered.
    #[test]
    fn a_data_set_offered_is_held_and_its_changes_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("wine.safetensors");
        compute::datasets::write_builtin(compute::datasets::Builtin::WineQuality, &file).unwrap();
        let held = offer(tmp.path(), &file, budget()).unwrap();
        assert_eq!(held.name, "wine");
        let o = held.offer;
        assert_eq!((o.features, o.classes), (11, 6), "{o:?}");
        assert!(o.rows > 1_000, "{o:?}");
        assert_eq!((o.epsilon_left, o.epsilon_per_requester), (10.0, 4.0));
        assert_eq!(load(tmp.path()).unwrap(), vec![held.clone()]);
        assert_eq!(Hash32::of(&read(tmp.path(), &o.id).unwrap()), o.id);
        // The same data elsewhere has the same schema; other data another id.
        let again = describe(&std::fs::read(&file).unwrap(), budget()).unwrap();
        assert_eq!((again.id, again.schema), (o.id, o.schema));
        // A bad budget.
        let bad = Budget {
            epsilon: -1.0,
            ..budget()
        };
        assert!(offer(tmp.path(), &file, bad).is_err());
        // Changed on disk: refused, and not offered.
        let mut bytes = std::fs::read(&held.path).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        std::fs::write(&held.path, bytes).unwrap();
        assert!(read(tmp.path(), &o.id).is_err());
        assert!(load(tmp.path()).unwrap().is_empty());
    }
}
