//! `JOB.toml`: what a requester asks for, as a file a person writes.
//!
//! ```toml
//! kind = "train"              # train | infer | preprocess
//! dataset = "wine.safetensors"
//! max_price = 2000            # micro-tokens per compute unit (1 CU = 1 GFLOP)
//! deadline_minutes = 30
//! estimated_cu = 5.0          # optional: computed from the data when absent
//!
//! [train]                     # for kind = "train"
//! task = "classify"           # classify (labels are classes) | regress (one real target)
//! layers = [11, 32, 6]        # features first; classes last (1 for regress)
//! epochs = 20
//! batch = 32
//! learning_rate = 0.05
//! seed = 7
//! dp = { clip_norm = 1.0, noise_multiplier = 1.1 }   # optional DP-SGD
//!
//! [sla]                       # optional
//! min_availability = 0.95
//! min_penalty = 0.05
//!
//! [privacy]                   # optional: the (ε, δ) the data owner accepts
//! epsilon = 8.0
//! delta = 1e-5
//! ```
//!
//! Errors name the line and the field (toml's spans), or the field whose value is
//! out of range.

use std::path::{Path, PathBuf};

use protocol::{Bps, DpParams, JobKind, PreprocessOp, PrivacyTarget, SlaRequirement, TrainTask};
use serde::Deserialize;

/// A parsed, checked job file.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFile {
    pub kind: JobKind,
    pub dataset: PathBuf,
    pub model: Option<PathBuf>,
    pub max_price: u64,
    pub deadline_minutes: u64,
    pub estimated_cu: Option<f64>,
    pub sla: SlaRequirement,
    pub privacy: Option<PrivacyTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    kind: String,
    dataset: PathBuf,
    #[serde(default)]
    model: Option<PathBuf>,
    max_price: u64,
    deadline_minutes: u64,
    #[serde(default)]
    estimated_cu: Option<f64>,
    #[serde(default)]
    train: Option<RawTrain>,
    #[serde(default)]
    infer: Option<RawInfer>,
    #[serde(default)]
    preprocess: Option<RawPreprocess>,
    #[serde(default)]
    sla: Option<RawSla>,
    #[serde(default)]
    privacy: Option<RawPrivacy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrain {
    #[serde(default)]
    task: Option<String>,
    layers: Vec<u32>,
    epochs: u32,
    batch: u32,
    learning_rate: f32,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    dp: Option<RawDp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDp {
    clip_norm: f32,
    noise_multiplier: f32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInfer {
    batch: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreprocess {
    op: String,
    #[serde(default)]
    test_share: Option<f64>,
    #[serde(default)]
    seed: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSla {
    min_availability: f64,
    min_penalty: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrivacy {
    epsilon: f64,
    delta: f64,
}

/// Why a job file was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: `{field}`: {reason}")]
    Invalid {
        origin: String,
        field: &'static str,
        reason: String,
    },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn share(field: &'static str, v: f64, origin: &str) -> Result<Bps, JobFileError> {
    if !(0.0..=1.0).contains(&v) {
        return Err(JobFileError::Invalid {
            origin: origin.into(),
            field,
            reason: format!("{v} is not a share in [0, 1]"),
        });
    }
    Ok(Bps((v * 10_000.0).round() as u16))
}

/// A job file's TOML, as `T`; `origin` names it in errors.
fn from_toml<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, JobFileError> {
    toml::from_str(text).map_err(|e| JobFileError::Parse {
        origin: origin.into(),
        message: e.to_string(),
    })
}

/// A field of `origin` that is not what it must be.
fn invalid(origin: &str) -> impl Fn(&'static str, String) -> JobFileError + '_ {
    move |field, reason| JobFileError::Invalid {
        origin: origin.into(),
        field,
        reason,
    }
}

impl RawTrain {
    /// Its task (classify when it says none).
    fn task(&self, origin: &str) -> Result<TrainTask, JobFileError> {
        match self.task.as_deref() {
            None | Some("classify") => Ok(TrainTask::Classify),
            Some("regress") => Ok(TrainTask::Regress),
            Some(other) => Err(invalid(origin)(
                "train.task",
                format!("{other:?}: give \"classify\" or \"regress\""),
            )),
        }
    }
}

impl JobFile {
    /// Read and check a job file; relative paths are taken from its folder.
    pub fn load(path: &Path) -> Result<JobFile, JobFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| JobFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut job = JobFile::parse(&text, &path.display().to_string())?;
        let base = path.parent().unwrap_or(Path::new("."));
        job.dataset = base.join(&job.dataset);
        job.model = job.model.map(|m| base.join(m));
        Ok(job)
    }

    /// Load a job file as the request a node takes: its paths, relative to
    /// the file, made absolute (the node runs in a directory of its own).
    pub fn request(path: &Path) -> anyhow::Result<crate::control::JobRequest> {
        use anyhow::Context;
        let mut req = crate::control::JobRequest::from(JobFile::load(path)?);
        let absolute =
            |p: &Path| std::path::absolute(p).with_context(|| format!("{}", p.display()));
        req.dataset = absolute(&req.dataset)?;
        req.model = req.model.as_deref().map(absolute).transpose()?;
        Ok(req)
    }

    /// Parse job-file text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<JobFile, JobFileError> {
        let raw: Raw = from_toml(text, origin)?;
        let bad = invalid(origin);
        let missing = |section: &'static str| {
            bad(
                section,
                format!("kind = {:?} needs a [{section}] section", raw.kind),
            )
        };
        let kind = match raw.kind.as_str() {
            "train" => {
                let t = raw.train.as_ref().ok_or_else(|| missing("train"))?;
                let task = t.task(origin)?;
                if task == TrainTask::Regress && t.layers.last() != Some(&1) {
                    return Err(bad(
                        "train.layers",
                        "a regression model has one output: end the layers with 1".into(),
                    ));
                }
                JobKind::Train {
                    task,
                    layers: t.layers.clone(),
                    epochs: t.epochs,
                    batch: t.batch,
                    learning_rate: t.learning_rate,
                    dp: t.dp.as_ref().map(|d| DpParams {
                        clip_norm: d.clip_norm,
                        noise_multiplier: d.noise_multiplier,
                    }),
                    seed: t.seed,
                }
            }
            "infer" => {
                if raw.model.is_none() {
                    return Err(bad("model", "an inference job needs a model file".into()));
                }
                let i = raw.infer.as_ref().ok_or_else(|| missing("infer"))?;
                JobKind::Infer { batch: i.batch }
            }
            "preprocess" => {
                let p = raw
                    .preprocess
                    .as_ref()
                    .ok_or_else(|| missing("preprocess"))?;
                let op = match p.op.as_str() {
                    "standardize" => PreprocessOp::Standardize,
                    "normalize" => PreprocessOp::Normalize,
                    "shuffle-split" => PreprocessOp::ShuffleSplit {
                        test_share: share(
                            "preprocess.test_share",
                            p.test_share.unwrap_or(0.2),
                            origin,
                        )?,
                    },
                    other => {
                        return Err(bad(
                            "preprocess.op",
                            format!("{other:?}; use standardize, normalize or shuffle-split"),
                        ));
                    }
                };
                JobKind::Preprocess { op, seed: p.seed }
            }
            other => {
                return Err(bad(
                    "kind",
                    format!("{other:?}; use train, infer or preprocess"),
                ));
            }
        };
        if raw.max_price == 0 {
            return Err(bad("max_price", "must be positive".into()));
        }
        if raw.deadline_minutes == 0 || raw.deadline_minutes > 7 * 24 * 60 {
            return Err(bad(
                "deadline_minutes",
                "must be in 1..=10080 (a week)".into(),
            ));
        }
        if let Some(cu) = raw.estimated_cu
            && !(cu.is_finite() && cu > 0.0)
        {
            return Err(bad("estimated_cu", format!("{cu} must be positive")));
        }
        let sla = match &raw.sla {
            Some(s) => SlaRequirement {
                min_availability: share("sla.min_availability", s.min_availability, origin)?,
                min_penalty: share("sla.min_penalty", s.min_penalty, origin)?,
            },
            None => SlaRequirement {
                min_availability: Bps(9_000),
                min_penalty: Bps(0),
            },
        };
        let privacy = match &raw.privacy {
            Some(p) => {
                if !(p.epsilon.is_finite() && p.epsilon > 0.0) {
                    return Err(bad("privacy.epsilon", "must be positive".into()));
                }
                if !(0.0..1.0).contains(&p.delta) {
                    return Err(bad("privacy.delta", "must be in [0, 1)".into()));
                }
                Some(PrivacyTarget {
                    epsilon: p.epsilon,
                    delta: p.delta,
                })
            }
            None => None,
        };
        Ok(JobFile {
            kind,
            dataset: raw.dataset,
            model: raw.model,
            max_price: raw.max_price,
            deadline_minutes: raw.deadline_minutes,
            estimated_cu: raw.estimated_cu,
            sla,
            privacy,
        })
    }
}

/// A federated job file (`kind = "federated"`):
///
/// ```toml
/// kind = "federated"
/// like = "wine-sample.safetensors"  # or: schema = "<64 hex digits>"
/// owners = 3                        # data owners to train with
/// min_owners = 2                    # the fewest a round may end with
/// rounds = 5
/// max_price = 1000000               # micro-tokens per compute unit
/// round_minutes = 10                # how long each round may take
///
/// [train]
/// task = "classify"
/// layers = [11, 16, 6]
/// epochs = 2                        # local epochs per round
/// batch = 128
/// learning_rate = 0.5
/// seed = 3
/// dp = { clip_norm = 1.0, noise_multiplier = 1.2 }   # required
///
/// [privacy]
/// epsilon = 20.0                    # the most the job may spend of any owner's data
/// delta = 1e-5
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFed {
    kind: String,
    #[serde(default)]
    like: Option<PathBuf>,
    #[serde(default)]
    schema: Option<String>,
    owners: usize,
    #[serde(default)]
    min_owners: Option<usize>,
    rounds: u32,
    max_price: u64,
    round_minutes: u64,
    train: RawTrain,
    privacy: RawPrivacy,
}

/// Read a federated job file as the request a node takes (`like`, relative
/// to the file, made absolute).
pub fn federated(path: &Path) -> anyhow::Result<crate::node::federated::FedRequest> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).map_err(|source| JobFileError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut req = parse_federated(&text, &path.display().to_string())?;
    let base = path.parent().unwrap_or(Path::new("."));
    if let Some(l) = &req.like {
        req.like =
            Some(std::path::absolute(base.join(l)).with_context(|| format!("{}", l.display()))?);
    }
    Ok(req)
}

/// Parse a federated job file's text; `origin` names it in errors.
pub fn parse_federated(
    text: &str,
    origin: &str,
) -> Result<crate::node::federated::FedRequest, JobFileError> {
    let raw: RawFed = from_toml(text, origin)?;
    let bad = invalid(origin);
    if raw.kind != "federated" {
        return Err(bad(
            "kind",
            format!("{:?}; a federated job file says \"federated\"", raw.kind),
        ));
    }
    let t = &raw.train;
    let task = t.task(origin)?;
    let dp = t.dp.as_ref().ok_or_else(|| {
        bad(
            "train.dp",
            "a federated job trains with DP-SGD: give dp".into(),
        )
    })?;
    let req = crate::node::federated::FedRequest {
        schema: raw.schema,
        like: raw.like,
        owners: raw.owners,
        min_owners: raw.min_owners.unwrap_or(raw.owners),
        rounds: raw.rounds,
        layers: t.layers.clone(),
        local_epochs: t.epochs,
        batch: t.batch,
        learning_rate: t.learning_rate,
        dp: DpParams {
            clip_norm: dp.clip_norm,
            noise_multiplier: dp.noise_multiplier,
        },
        seed: t.seed,
        task,
        epsilon: raw.privacy.epsilon,
        delta: raw.privacy.delta,
        max_price: raw.max_price,
        round_secs: raw.round_minutes.saturating_mul(60),
    };
    req.check()
        .map_err(|e| bad("federated", format!("{e:#}")))?;
    // The rounds must be valid jobs too.
    let kind = req.round_kind(
        protocol::Hash32::default(),
        1,
        &protocol::DataOffer {
            id: protocol::Hash32::default(),
            schema: protocol::Hash32::default(),
            rows: 1,
            features: 1,
            classes: 1,
            bytes: 1,
            epsilon_per_requester: 1.0,
            epsilon_left: 1.0,
            delta: 0.5,
        },
    );
    let mut spec = protocol::JobSpec::inference(
        protocol::AccountId([0; 32]),
        protocol::BlobRef {
            hash: protocol::Hash32::default(),
            size: 1,
        },
        protocol::ComputeUnits::from_milli(1),
        protocol::PricePerCu(1),
        protocol::Timestamp(1),
        protocol::Timestamp(2),
        0,
    );
    spec.kind = kind;
    spec.model = Some(spec.dataset);
    spec.privacy = Some(PrivacyTarget {
        epsilon: req.epsilon,
        delta: req.delta,
    });
    spec.validate(protocol::Timestamp(1))
        .map_err(|e| bad("train", e.to_string()))?;
    Ok(req)
}

#[cfg(test)]
mod tests {
    /// Paths in a job file are relative to it, once: submitting
    /// `data/x.toml` from elsewhere looked for `data/data/…`.
    #[test]
    fn paths_are_relative_to_the_job_file_once_and_made_absolute() {
        // A relative path (under the crate's directory, where tests run).
        let tmp = tempfile::tempdir_in(".").unwrap();
        let cwd = std::env::current_dir().unwrap();
        let rel = tmp.path().strip_prefix(&cwd).unwrap_or(tmp.path());
        assert!(rel.is_relative());
        let sub = rel.join("data");
        std::fs::create_dir(&sub).unwrap();
        let job = sub.join("x.toml");
        std::fs::write(
            &job,
            "kind = \"train\"\ndataset = \"wine.safetensors\"\nmax_price = 1000\n\
             deadline_minutes = 10\n[train]\nlayers = [11, 6]\nepochs = 1\nbatch = 8\n\
             learning_rate = 0.1\n",
        )
        .unwrap();
        let req = super::JobFile::request(&job).unwrap();
        let want = std::path::absolute(sub.join("wine.safetensors")).unwrap();
        assert_eq!(req.dataset, want);
    }

    use super::*;

    const TRAIN: &str = r#"kind = "train"
dataset = "wine.safetensors"
max_price = 2000
deadline_minutes = 30

[train]
layers = [11, 32, 6]
epochs = 20
batch = 32
learning_rate = 0.05
seed = 7
dp = { clip_norm = 1.0, noise_multiplier = 1.1 }

[privacy]
epsilon = 8.0
delta = 1e-5
"#;

    /// Every job file the README shows (a `toml` block that sets `kind`)
    /// parses: the examples a user copies stay true.
    #[test]
    fn every_job_file_in_the_readme_parses() {
        let readme = include_str!("../../README.md");
        let blocks: Vec<&str> = readme
            .split("```toml\n")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .filter(|b| b.lines().any(|l| l.starts_with("kind = ")))
            .collect();
        let kinds: Vec<&str> = blocks
            .iter()
            .map(|b| {
                let r = if b.contains("kind = \"federated\"") {
                    super::parse_federated(b, "README.md").map(|_| "federated")
                } else {
                    JobFile::parse(b, "README.md").map(|j| j.kind.name())
                };
                r.unwrap_or_else(|e| panic!("{e}\n{b}"))
            })
            .collect();
        for kind in ["train", "infer", "preprocess", "federated"] {
            assert!(
                kinds.contains(&kind),
                "no {kind} job in the README: {kinds:?}"
            );
        }
    }

    #[test]
    fn a_good_training_job_parses() {
        let j = JobFile::parse(TRAIN, "JOB.toml").unwrap();
        assert!(matches!(
            j.kind,
            JobKind::Train {
                epochs: 20,
                dp: Some(_),
                ..
            }
        ));
        assert_eq!(j.privacy.unwrap().epsilon, 8.0);
        assert_eq!(j.sla.min_availability, Bps(9_000));
    }

    #[test]
    fn a_regression_says_so_and_has_one_output() {
        let j = JobFile::parse(
            &TRAIN.replace(
                "layers = [11, 32, 6]",
                "task = \"regress\"\nlayers = [11, 32, 1]",
            ),
            "JOB.toml",
        )
        .unwrap();
        assert!(matches!(
            j.kind,
            JobKind::Train {
                task: TrainTask::Regress,
                ..
            }
        ));
        let e = refused(&TRAIN.replace(
            "layers = [11, 32, 6]",
            "task = \"regress\"\nlayers = [11, 32, 6]",
        ));
        assert!(e.contains("one output"), "{e}");
        let e = refused(&TRAIN.replace(
            "layers = [11, 32, 6]",
            "task = \"cluster\"\nlayers = [11, 32, 6]",
        ));
        assert!(e.contains("train.task") && e.contains("cluster"), "{e}");
    }

    /// The error a job file is refused with.
    fn refused(text: &str) -> String {
        JobFile::parse(text, "JOB.toml").unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let e = refused(&TRAIN.replace("epochs = 20", "epochs = \"many\""));
        assert!(
            e.contains("JOB.toml") && e.contains("line 8") && e.contains("epochs"),
            "{e}"
        );
        let e = refused(&TRAIN.replace("batch = 32", "batch = 32\nbatchh = 1"));
        assert!(e.contains("batchh") && e.contains("line"), "{e}");
        let e = refused(&TRAIN.replace("\"train\"", "\"fly\""));
        assert!(e.contains("`kind`") && e.contains("fly"), "{e}");
        let e = refused(&TRAIN.replace("delta = 1e-5", "delta = 2.0"));
        assert!(e.contains("privacy.delta"), "{e}");
        let infer = "kind = \"infer\"\ndataset = \"x\"\nmax_price = 1\ndeadline_minutes = 5\n[infer]\nbatch = 8\n";
        let e = refused(infer);
        assert!(e.contains("`model`"), "{e}");
        let e = refused("kind = \"train\"\ndataset = \"x\"\nmax_price = 1\ndeadline_minutes = 5\n");
        assert!(e.contains("[train]"), "{e}");
    }
}
