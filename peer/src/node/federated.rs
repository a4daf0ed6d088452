//! A requester's federated jobs: FedAvg over private data sets that stay
//! with their owners.
//!
//! A federated job names a schema (or a data set whose schema to match), a
//! model, rounds, local epochs, DP-SGD parameters, how many owners and a
//! price. Its node picks owners among the offers it knows whose data sets
//! have that schema and whose budget left covers what the job would spend of
//! them (the RDP accountant's ε for all rounds on each owner's rows), and
//! explains each one it passes over. Each round, every owner still in gets
//! one ordinary contract ([`protocol::JobKind::FedRound`]): the round's model
//! travels as an encrypted blob, the owner trains on its data with DP-SGD,
//! the committee checks the round without the data, and once it settled,
//! the node averages the owners' models weighted by their rows. An owner
//! whose round fails is dropped (paid for the rounds it completed); a round
//! left with fewer than `min_owners` updates ends the job with its reason,
//! and no later round is escrowed.
//!
//! A federated job's state is a file under `results/` (`<id>.fed.json`),
//! written at each change: a restarted node takes it up where it was (its
//! round jobs are the core's, persisted with it).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use protocol::{AccountId, DataOffer, DpParams, Hash32, JobKind, TrainTask};
use serde::{Deserialize, Serialize};

use crate::control::JobView;

/// What a requester asks for (what `cloudchain federate` makes of a file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FedRequest {
    /// The schema the owners' data sets must have (hex), or …
    pub schema: Option<String>,
    /// … a data set (safetensors) whose schema they must have.
    pub like: Option<PathBuf>,
    /// Owners to train with, and the fewest a round may end with.
    pub owners: usize,
    pub min_owners: usize,
    pub rounds: u32,
    pub layers: Vec<u32>,
    pub local_epochs: u32,
    pub batch: u32,
    pub learning_rate: f32,
    pub dp: DpParams,
    pub seed: u64,
    pub task: TrainTask,
    /// The most ε the job may spend of any owner's data set, at `delta`.
    pub epsilon: f64,
    pub delta: f64,
    /// Highest price accepted, micro-tokens per compute unit.
    pub max_price: u64,
    /// Seconds each round may take, from its start.
    pub round_secs: u64,
}

impl FedRequest {
    pub fn check(&self) -> anyhow::Result<()> {
        if self.owners == 0 || self.min_owners == 0 || self.min_owners > self.owners {
            bail!("need 1 ≤ min_owners ≤ owners");
        }
        if self.rounds == 0 || self.rounds > 1_000 {
            bail!("rounds must be in 1..=1000");
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            bail!("ε must be positive");
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            bail!("δ must be between 0 and 1");
        }
        if self.round_secs == 0 || self.max_price == 0 {
            bail!("round_secs and max_price must be positive");
        }
        if self.schema.is_none() == self.like.is_none() {
            bail!("name the owners' schema, or a data set (`like`) whose schema to match");
        }
        Ok(())
    }

    /// One owner's round `round` (seed and all), on data set `d`.
    pub fn round_kind(&self, id: Hash32, round: u32, d: &DataOffer) -> JobKind {
        JobKind::FedRound {
            federation: id,
            round,
            rounds: self.rounds,
            rows: d.rows,
            layers: self.layers.clone(),
            local_epochs: self.local_epochs,
            batch: self.batch,
            learning_rate: self.learning_rate,
            dp: self.dp,
            seed: self.seed,
            task: self.task,
        }
    }

    /// What the job spends of an owner's data set `d` in all its rounds.
    pub fn epsilon_of(&self, d: &DataOffer) -> anyhow::Result<f64> {
        let mut spec = protocol::JobSpec::inference(
            AccountId([0; 32]),
            protocol::BlobRef {
                hash: d.id,
                size: d.bytes,
            },
            protocol::ComputeUnits::from_milli(1),
            protocol::PricePerCu(1),
            protocol::Timestamp(0),
            protocol::Timestamp(1),
            0,
        );
        spec.kind = self.round_kind(Hash32::default(), 1, d);
        spec.privacy = Some(protocol::PrivacyTarget {
            epsilon: self.epsilon,
            delta: self.delta,
        });
        crate::work::fed_epsilon(&spec)
    }
}

/// An owner of a federated job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Owner {
    pub account: AccountId,
    pub data: DataOffer,
    /// What the job spends of its data set (the accountant's ε, all rounds).
    pub epsilon: f64,
    /// Rounds it delivered and the committee settled ok.
    pub rounds_done: u32,
    /// Why it left, if it did.
    pub dropped: Option<String>,
}

/// Where a federated job stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FedState {
    /// Round `round` is being prepared (its jobs not yet submitted).
    Preparing,
    /// Round jobs submitted, waiting for them to settle.
    Running,
    Done,
    Failed(String),
}

/// A federated job, as its requester's node keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Federation {
    pub id: Hash32,
    pub request: FedRequest,
    pub owners: Vec<Owner>,
    /// The round under way (1-based; `rounds` once done).
    pub round: u32,
    pub state: FedState,
    /// This round's jobs: (owner, job id).
    pub jobs: Vec<(AccountId, Hash32)>,
    /// The global model so far (the final one once done).
    pub model: PathBuf,
    pub events: Vec<(u64, String)>,
    pub started_ms: u64,
}

impl Federation {
    pub fn path(results: &Path, id: &Hash32) -> PathBuf {
        results.join(format!("{}.fed.json", id.short()))
    }

    pub fn save(&self, results: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(results)?;
        let path = Self::path(results, &self.id);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Every federated job kept under `results`.
    pub fn load_all(results: &Path) -> Vec<Federation> {
        let Ok(dir) = std::fs::read_dir(results) else {
            return Vec::new();
        };
        let mut out: Vec<Federation> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".fed.json"))
            .filter_map(
                |p| match std::fs::read(&p).map(|b| serde_json::from_slice(&b)) {
                    Ok(Ok(f)) => Some(f),
                    _ => {
                        tracing::warn!(file = %p.display(), "not a federated job's state: skipped");
                        None
                    }
                },
            )
            .collect();
        out.sort_by_key(|f: &Federation| f.started_ms);
        out
    }

    pub fn event(&mut self, now_ms: u64, what: String) {
        tracing::info!(federation = %self.id.short(), "{what}");
        self.events.push((now_ms, what));
    }

    pub fn active(&self) -> impl Iterator<Item = &Owner> {
        self.owners.iter().filter(|o| o.dropped.is_none())
    }

    /// Its view, with what `ledger` records each owner spent.
    pub fn view_with<S: crdt_ledger::Store>(&self, ledger: &mut crdt_ledger::Ledger<S>) -> FedView {
        let mut v = self.view();
        let state = ledger.state();
        for (ov, o) in v.owners.iter_mut().zip(&self.owners) {
            ov.epsilon_in_ledger = state
                .privacy_spends(&o.account)
                .into_iter()
                .find(|s| s.federation == self.id && s.dataset == o.data.id)
                .map(|s| s.epsilon);
        }
        v
    }

    pub fn view(&self) -> FedView {
        FedView {
            id: self.id.to_string(),
            state: match &self.state {
                FedState::Preparing | FedState::Running => "running".into(),
                FedState::Done => "done".into(),
                FedState::Failed(_) => "failed".into(),
            },
            reason: match &self.state {
                FedState::Failed(why) => Some(why.clone()),
                _ => None,
            },
            done: matches!(self.state, FedState::Done | FedState::Failed(_)),
            round: self.round,
            rounds: self.request.rounds,
            owners: self
                .owners
                .iter()
                .map(|o| OwnerView {
                    account: o.account.to_string(),
                    dataset: hex::encode(o.data.id.0),
                    rows: o.data.rows,
                    epsilon: o.epsilon,
                    epsilon_in_ledger: None,
                    rounds_done: o.rounds_done,
                    dropped: o.dropped.clone(),
                })
                .collect(),
            jobs: self.jobs.iter().map(|(_, j)| j.to_string()).collect(),
            model: matches!(self.state, FedState::Done).then(|| self.model.clone()),
            events: self
                .events
                .iter()
                .map(|(t, w)| crate::control::JobEvent {
                    at_s: t.saturating_sub(self.started_ms) as f64 / 1000.0,
                    what: w.clone(),
                })
                .collect(),
        }
    }
}

/// A federated job, for the CLI and the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FedView {
    pub id: String,
    pub state: String,
    pub reason: Option<String>,
    pub done: bool,
    pub round: u32,
    pub rounds: u32,
    pub owners: Vec<OwnerView>,
    /// This round's jobs.
    pub jobs: Vec<String>,
    /// The final model, once done.
    pub model: Option<PathBuf>,
    pub events: Vec<crate::control::JobEvent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnerView {
    pub account: String,
    pub dataset: String,
    pub rows: u64,
    /// What the job spends of its data set (the accountant's ε, all rounds).
    pub epsilon: f64,
    /// What the ledger records the job spent of it (once a round settled).
    pub epsilon_in_ledger: Option<f64>,
    pub rounds_done: u32,
    pub dropped: Option<String>,
}

/// The owners to train with: offers whose data sets have `schema`, whose
/// model fits and whose budget left covers what the job spends of them
/// (largest data sets first); or why too few do, owner by owner.
pub fn choose_owners<'a>(
    req: &FedRequest,
    schema: Hash32,
    offers: impl Iterator<Item = &'a protocol::Offer>,
) -> anyhow::Result<Vec<Owner>> {
    let mut fit = Vec::new();
    let mut why = Vec::new();
    for o in offers {
        for d in o.datasets.iter().filter(|d| d.schema == schema) {
            let eps = req.epsilon_of(d)?;
            let who = format!("{} ({} rows)", o.provider.short(), d.rows);
            if req.layers.first() != Some(&d.features) || req.layers.last() != Some(&d.classes) {
                why.push(format!(
                    "{who}: {} features and {} outputs, the model {:?}",
                    d.features, d.classes, req.layers
                ));
            } else if eps > req.epsilon {
                why.push(format!(
                    "{who}: the job would spend ε = {eps:.3} of it, above the job's {:.3}",
                    req.epsilon
                ));
            } else if eps > d.epsilon_available() {
                why.push(format!(
                    "{who}: the job would spend ε = {eps:.3}; its owner has {:.3} left",
                    d.epsilon_available()
                ));
            } else {
                fit.push(Owner {
                    account: o.provider,
                    data: *d,
                    epsilon: eps,
                    rounds_done: 0,
                    dropped: None,
                });
            }
        }
    }
    fit.sort_by(|a, b| {
        b.data
            .rows
            .cmp(&a.data.rows)
            .then(a.account.cmp(&b.account))
    });
    // One data set per owner.
    let mut seen = std::collections::HashSet::new();
    fit.retain(|o| seen.insert(o.account));
    fit.truncate(req.owners);
    if fit.len() < req.min_owners {
        bail!(
            "{} data owner{} of schema {} fit{}, the job needs at least {}{}",
            fit.len(),
            if fit.len() == 1 { "" } else { "s" },
            schema.short(),
            if fit.len() == 1 { "s" } else { "" },
            req.min_owners,
            if why.is_empty() {
                String::new()
            } else {
                format!(": {}", why.join("; "))
            }
        );
    }
    Ok(fit)
}

/// The schema a request names.
pub fn schema_of(req: &FedRequest) -> anyhow::Result<Hash32> {
    if let Some(h) = &req.schema {
        let b = hex::decode(h).context("the schema is not hex")?;
        return Ok(Hash32(
            b.try_into()
                .map_err(|_| anyhow::anyhow!("a schema is 32 bytes"))?,
        ));
    }
    let like = req.like.as_ref().context("no schema")?;
    let bytes = std::fs::read(like).with_context(|| format!("cannot read {}", like.display()))?;
    let budget = crate::held::Budget {
        epsilon: 1.0,
        per_requester: 1.0,
        delta: 1e-5,
    };
    Ok(crate::held::describe(&bytes, budget)?.schema)
}

/// The next global model: FedAvg of the owners' models that came back,
/// weighted by their rows (`(rows, local model bytes)`).
pub fn aggregate(
    global: &[u8],
    updates: &[(u64, Vec<u8>)],
    task: TrainTask,
) -> anyhow::Result<Vec<u8>> {
    let g = compute::mlp::Mlp::from_safetensors(global)?;
    let ups = updates
        .iter()
        .map(|(rows, bytes)| {
            let local = compute::mlp::Mlp::from_safetensors(bytes)?;
            if local.layers != g.layers {
                bail!("an owner's model has layers {:?}", local.layers);
            }
            let sub = |a: &Vec<Vec<f32>>, b: &Vec<Vec<f32>>| -> Vec<Vec<f32>> {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p - q).collect())
                    .collect()
            };
            Ok(compute::fedavg::LocalUpdate {
                delta: compute::mlp::Mlp {
                    layers: g.layers.clone(),
                    w: sub(&local.w, &g.w),
                    b: sub(&local.b, &g.b),
                },
                rows: usize::try_from(*rows)?,
                steps: 0,
                flops: 0,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let next = compute::fedavg::aggregate(&g, &ups)?;
    let task = match task {
        TrainTask::Classify => compute::Task::Classify,
        TrainTask::Regress => compute::Task::Regress,
    };
    Ok(next.to_safetensors_as(task)?)
}

/// What a round job's view says for the coordinator: still going, done
/// with the owner's model, or failed (why).
#[derive(Debug)]
pub enum RoundJob {
    Going,
    Delivered(PathBuf),
    Failed(String),
}

pub fn round_job(v: &JobView) -> RoundJob {
    if !v.done {
        return RoundJob::Going;
    }
    match (&v.result, v.ok) {
        (Some(p), true) => RoundJob::Delivered(p.clone()),
        _ => RoundJob::Failed(
            v.outcome
                .clone()
                .unwrap_or_else(|| "ended without a result".into()),
        ),
    }
}
