//! The protocol's message types, version 1.
//!
//! Everything a peer says to another is one of these bodies inside a
//! [`Signed`](crate::Signed) envelope (or a [`MultiSigned`](crate::MultiSigned) one
//! for contracts), framed by [`Frame`] on the wire. Each body type has a
//! [`Wire`] kind, which names its signature domain and bounds its size.
//!
//! `validate(now)` on each body checks what a signature cannot: ranges, lengths,
//! expiry. Receivers call it after `verify`.

use serde::{Deserialize, Serialize};

use crate::codec::Wire;
use crate::identity::AccountId;
use crate::signed::{MultiSigned, Signed};
use crate::types::{
    Amount, Bps, ComputeUnits, DurationMs, Hash32, NetworkId, PricePerCu, Timestamp,
};

/// The protocol version carried by every frame.
pub const PROTOCOL_VERSION: u16 = 1;

/// How far in the future `issued_at` may lie (clock skew we tolerate).
pub const MAX_CLOCK_SKEW: DurationMs = DurationMs::secs(30);
/// The longest lifetime an offer or bid may claim.
pub const MAX_TTL: DurationMs = DurationMs::secs(24 * 3600);
/// Longest free-text field (device names, regions, reasons).
pub const MAX_TEXT: usize = 128;

/// Why a decoded body is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidMessage {
    #[error("expired at {expires_at:?} (now {now:?})")]
    Expired {
        expires_at: Timestamp,
        now: Timestamp,
    },
    #[error("issued at {issued_at:?}, too far in the future (now {now:?})")]
    FromTheFuture {
        issued_at: Timestamp,
        now: Timestamp,
    },
    #[error("lifetime from {issued_at:?} to {expires_at:?} is empty or longer than allowed")]
    BadLifetime {
        issued_at: Timestamp,
        expires_at: Timestamp,
    },
    #[error("field `{field}`: {reason}")]
    Field { field: &'static str, reason: String },
}

fn field(field: &'static str, reason: impl Into<String>) -> InvalidMessage {
    InvalidMessage::Field {
        field,
        reason: reason.into(),
    }
}

fn check_text(name: &'static str, s: &str) -> Result<(), InvalidMessage> {
    if s.len() > MAX_TEXT {
        return Err(field(
            name,
            format!("{} bytes, at most {MAX_TEXT}", s.len()),
        ));
    }
    // Printable ASCII (the common case) has no control characters; anything else
    // is decoded and checked in full.
    let printable = |b: &u8| (0x20..0x7f).contains(b);
    if !s.as_bytes().iter().all(printable) && s.chars().any(char::is_control) {
        return Err(field(name, "contains control characters"));
    }
    Ok(())
}

fn check_lifetime(
    now: Timestamp,
    issued_at: Timestamp,
    expires_at: Timestamp,
) -> Result<(), InvalidMessage> {
    if expires_at <= issued_at || expires_at.since(issued_at) > MAX_TTL {
        return Err(InvalidMessage::BadLifetime {
            issued_at,
            expires_at,
        });
    }
    if issued_at > now.plus(MAX_CLOCK_SKEW) {
        return Err(InvalidMessage::FromTheFuture { issued_at, now });
    }
    if now >= expires_at {
        return Err(InvalidMessage::Expired { expires_at, now });
    }
    Ok(())
}

fn check_f32(name: &'static str, v: f32, lo: f32, hi: f32) -> Result<(), InvalidMessage> {
    if !v.is_finite() || v < lo || v > hi {
        return Err(field(name, format!("{v} is not in [{lo}, {hi}]")));
    }
    Ok(())
}

/// A content-addressed blob (iroh-blobs BLAKE3 hash) and its size in bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct BlobRef {
    pub hash: Hash32,
    pub size: u64,
}

/// What kind of device an offer sells; offers are announced in the DHT per class.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum ResourceClass {
    Cpu,
    Gpu,
}

impl ResourceClass {
    /// The DHT key under which providers of this class announce themselves.
    pub fn dht_key(self) -> &'static str {
        match self {
            ResourceClass::Cpu => "cloudchain/v1/providers/cpu",
            ResourceClass::Gpu => "cloudchain/v1/providers/gpu",
        }
    }
}

/// The service level a provider promises.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct SlaTerms {
    /// Extra time over the estimated run time the provider asks for.
    pub deadline_slack: DurationMs,
    /// Share of probes it promises to answer.
    pub availability: Bps,
    /// λ: share of the contract value refunded per violation.
    pub penalty: Bps,
    /// The provider's backend is exact: it passed the start-up self-test
    /// (`compute::selftest`), so its results are the canonical arithmetic's bits
    /// and the committee compares them bit for bit. `false`: the committee
    /// compares within `compute::verify::tolerance`.
    pub exact: bool,
}

/// A provider's signed advertisement, gossiped on the market topic.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Offer {
    pub provider: AccountId,
    pub class: ResourceClass,
    pub device: String,
    /// Benchmarked speed, in milli-CU per second (MFLOP/s).
    pub speed_milli_cu_per_s: u64,
    pub memory_bytes: u64,
    pub bandwidth_bytes_per_s: u64,
    pub price: PricePerCu,
    pub sla: SlaTerms,
    pub region: String,
    /// Jobs it can run at once, and how many it is running now.
    pub slots: u16,
    pub busy_slots: u16,
    /// Blobs it already holds (a model it holds need not be moved).
    pub holds: Vec<Hash32>,
    /// Private data sets it holds and trains on where they are (federated
    /// rounds, [`JobKind::FedRound`]): never the rows, only what matching needs.
    pub datasets: Vec<DataOffer>,
    /// Where to reach its blob endpoint (socket addresses as text).
    pub contact: Vec<String>,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub nonce: u64,
}

impl Wire for Offer {
    const KIND: &'static str = "offer";
    const MAX_SIZE: usize = 4 * 1024;
}

impl Offer {
    pub const MAX_HOLDS: usize = 64;
    pub const MAX_CONTACT: usize = 8;
    pub const MAX_DATASETS: usize = 8;

    /// The private data set `id`, if it offers one.
    pub fn dataset(&self, id: &Hash32) -> Option<&DataOffer> {
        self.datasets.iter().find(|d| d.id == *id)
    }

    /// Whether it holds blob or data set `hash` (so nothing need be moved).
    pub fn has(&self, hash: &Hash32) -> bool {
        self.holds.contains(hash) || self.dataset(hash).is_some()
    }

    pub fn validate(&self, now: Timestamp) -> Result<(), InvalidMessage> {
        check_lifetime(now, self.issued_at, self.expires_at)?;
        check_text("device", &self.device)?;
        check_text("region", &self.region)?;
        if self.speed_milli_cu_per_s == 0 {
            return Err(field("speed_milli_cu_per_s", "must be positive"));
        }
        if self.bandwidth_bytes_per_s == 0 {
            return Err(field("bandwidth_bytes_per_s", "must be positive"));
        }
        if self.slots == 0 || self.busy_slots > self.slots {
            return Err(field(
                "slots",
                format!("{} busy of {} slots", self.busy_slots, self.slots),
            ));
        }
        if !self.sla.availability.is_valid() || !self.sla.penalty.is_valid() {
            return Err(field("sla", "shares must be at most 10000 bps"));
        }
        if self.holds.len() > Self::MAX_HOLDS {
            return Err(field("holds", format!("more than {}", Self::MAX_HOLDS)));
        }
        if self.datasets.len() > Self::MAX_DATASETS {
            return Err(field(
                "datasets",
                format!("more than {}", Self::MAX_DATASETS),
            ));
        }
        for d in &self.datasets {
            d.validate()?;
        }
        check_contact(&self.contact)
    }
}

/// A private data set on offer: its owner trains on it where it is, for a
/// federated job, and spends at most the privacy budget it states. The rows
/// never leave; this is what a requester needs to find and match it.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
pub struct DataOffer {
    /// Its content hash (BLAKE3 of the data set file): what a job names.
    pub id: Hash32,
    /// The hash of its schema (feature names and types, the label, the
    /// classes or the target): data sets that fit one model share it.
    pub schema: Hash32,
    pub rows: u64,
    pub features: u32,
    /// Classes of its label (1: a regression's one real target).
    pub classes: u32,
    /// Its size in bytes.
    pub bytes: u64,
    /// The ε its owner accepts to spend for one requester, in all, and
    /// what is left of its total budget, at δ.
    pub epsilon_per_requester: f64,
    pub epsilon_left: f64,
    pub delta: f64,
}

impl DataOffer {
    pub fn validate(&self) -> Result<(), InvalidMessage> {
        if self.rows == 0 || self.features == 0 || self.classes == 0 {
            return Err(field(
                "datasets",
                "rows, features and classes must be positive",
            ));
        }
        let eps = |e: f64| e.is_finite() && (0.0..=1e6).contains(&e);
        if !eps(self.epsilon_per_requester) || !eps(self.epsilon_left) {
            return Err(field("datasets", "ε must be in 0..=1e6"));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(field("datasets", "δ must be in (0, 1)"));
        }
        Ok(())
    }

    /// The DHT key under which owners of data sets of `schema` announce
    /// themselves (as providers of resource classes do under theirs).
    pub fn dht_key(schema: &Hash32) -> String {
        format!("cloudchain/v1/data/{}", hex::encode(schema.0))
    }

    /// The most ε a job of a requester may spend on it now (the owner also
    /// counts what that requester spent before).
    pub fn epsilon_available(&self) -> f64 {
        self.epsilon_per_requester.min(self.epsilon_left)
    }
}

fn check_contact(contact: &[String]) -> Result<(), InvalidMessage> {
    if contact.len() > Offer::MAX_CONTACT {
        return Err(field(
            "contact",
            format!("more than {}", Offer::MAX_CONTACT),
        ));
    }
    for c in contact {
        check_text("contact", c)?;
    }
    Ok(())
}

/// Per-example clipping norm C and noise multiplier σ for DP-SGD.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
pub struct DpParams {
    pub clip_norm: f32,
    pub noise_multiplier: f32,
}

/// The (ε, δ) a data owner accepts to spend.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
pub struct PrivacyTarget {
    pub epsilon: f64,
    pub delta: f64,
}

/// Preprocessing operations.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum PreprocessOp {
    Standardize,
    Normalize,
    /// Shuffle with the job's seed, then split off `test_share` for testing.
    ShuffleSplit {
        test_share: Bps,
    },
}

/// What a training job learns: a class (softmax cross-entropy), or one real
/// value (squared error, a model with one output).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
pub enum TrainTask {
    #[default]
    Classify,
    Regress,
}

/// The three workload kinds of the paper, with their parameters.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum JobKind {
    Train {
        /// Layer widths, input first, classes last (1 for a regression).
        layers: Vec<u32>,
        epochs: u32,
        batch: u32,
        learning_rate: f32,
        dp: Option<DpParams>,
        seed: u64,
        task: TrainTask,
    },
    Infer {
        batch: u32,
    },
    Preprocess {
        op: PreprocessOp,
        seed: u64,
    },
    /// One round of a federated job at one data owner: train the model the
    /// job names (the round's global model) on the owner's private data set
    /// (the job's `dataset`, which never moves) with DP-SGD for
    /// `local_epochs`, and return the local model. The job's `privacy` is the
    /// ε the whole federated job spends on that data set, which the owner
    /// checks against the accountant and its budget.
    FedRound {
        /// The federated job all its rounds and owners share.
        federation: Hash32,
        /// This round (1-based) of `rounds`.
        round: u32,
        rounds: u32,
        /// The rows of the data set, as its owner offers it (what the
        /// round's steps, units and ε follow from).
        rows: u64,
        layers: Vec<u32>,
        local_epochs: u32,
        batch: u32,
        learning_rate: f32,
        dp: DpParams,
        seed: u64,
        task: TrainTask,
    },
}

impl JobKind {
    pub const MAX_LAYERS: usize = 16;
    pub const MAX_WIDTH: u32 = 1 << 16;

    pub fn name(&self) -> &'static str {
        match self {
            JobKind::Train { .. } => "train",
            JobKind::Infer { .. } => "infer",
            JobKind::Preprocess { .. } => "preprocess",
            JobKind::FedRound { .. } => "fed-round",
        }
    }

    /// The private data set a job trains on where it is (a federated round's).
    pub fn held_data(&self) -> bool {
        matches!(self, JobKind::FedRound { .. })
    }

    fn validate(&self) -> Result<(), InvalidMessage> {
        match self {
            JobKind::Train {
                layers,
                epochs,
                batch,
                learning_rate,
                dp,
                task,
                ..
            } => {
                check_model(layers, *task)?;
                if *epochs == 0 || *epochs > 10_000 {
                    return Err(field("epochs", "must be in 1..=10000"));
                }
                if *batch == 0 || *batch > 1 << 20 {
                    return Err(field("batch", "must be in 1..=1048576"));
                }
                check_f32("learning_rate", *learning_rate, f32::MIN_POSITIVE, 100.0)?;
                if let Some(dp) = dp {
                    check_f32("dp.clip_norm", dp.clip_norm, f32::MIN_POSITIVE, 1e6)?;
                    check_f32("dp.noise_multiplier", dp.noise_multiplier, 0.0, 1e3)?;
                }
            }
            JobKind::Infer { batch } => {
                if *batch == 0 || *batch > 1 << 20 {
                    return Err(field("batch", "must be in 1..=1048576"));
                }
            }
            JobKind::FedRound {
                round,
                rounds,
                rows,
                layers,
                local_epochs,
                batch,
                learning_rate,
                dp,
                task,
                ..
            } => {
                if *rounds == 0 || *rounds > 1_000 || *round == 0 || round > rounds {
                    return Err(field("round", "need 1 ≤ round ≤ rounds ≤ 1000"));
                }
                check_model(layers, *task)?;
                if *rows == 0 || *rows > 1 << 40 {
                    return Err(field("rows", "must be in 1..=2^40"));
                }
                if *local_epochs == 0 || *local_epochs > 10_000 {
                    return Err(field("local_epochs", "must be in 1..=10000"));
                }
                if *batch == 0 || *batch > 1 << 20 {
                    return Err(field("batch", "must be in 1..=1048576"));
                }
                check_f32("learning_rate", *learning_rate, f32::MIN_POSITIVE, 100.0)?;
                check_f32("dp.clip_norm", dp.clip_norm, f32::MIN_POSITIVE, 1e6)?;
                // Noise there must be: the owner's data is the point.
                check_f32("dp.noise_multiplier", dp.noise_multiplier, 0.01, 1e3)?;
            }
            JobKind::Preprocess { op, .. } => {
                if let PreprocessOp::ShuffleSplit { test_share } = op
                    && !test_share.is_valid()
                {
                    return Err(field("test_share", "at most 10000 bps"));
                }
            }
        }
        Ok(())
    }
}

/// A model's layers fit the protocol's bounds and its task.
fn check_model(layers: &[u32], task: TrainTask) -> Result<(), InvalidMessage> {
    if task == TrainTask::Regress && layers.last() != Some(&1) {
        return Err(field("layers", "a regression model has one output"));
    }
    if layers.len() < 2 || layers.len() > JobKind::MAX_LAYERS {
        return Err(field(
            "layers",
            format!("{} layers, need 2..={}", layers.len(), JobKind::MAX_LAYERS),
        ));
    }
    if layers.iter().any(|&w| w == 0 || w > JobKind::MAX_WIDTH) {
        return Err(field(
            "layers",
            format!("widths must be in 1..={}", JobKind::MAX_WIDTH),
        ));
    }
    Ok(())
}

/// What the requester requires of a provider's service level.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct SlaRequirement {
    pub min_availability: Bps,
    /// The smallest penalty λ the provider must accept on violation.
    pub min_penalty: Bps,
}

/// A job a requester wants run: gossiped as an open bid, or sent in a proposal.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct JobSpec {
    pub requester: AccountId,
    pub kind: JobKind,
    pub model: Option<BlobRef>,
    pub dataset: BlobRef,
    pub estimated_units: ComputeUnits,
    /// The most bytes its result may take in a provider's store, every blob
    /// of it (the index, the output, each link's weights), as the requester
    /// computed it from the job and its inputs. A provider keeps room for it
    /// (and the inputs) before it accepts, and runs the job only if its
    /// inputs bear it out.
    pub result_bytes: u64,
    pub max_price: PricePerCu,
    /// Absolute time by which the result must be delivered.
    pub deadline: Timestamp,
    pub sla: SlaRequirement,
    pub privacy: Option<PrivacyTarget>,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub nonce: u64,
}

impl Wire for JobSpec {
    const KIND: &'static str = "job";
    const MAX_SIZE: usize = 4 * 1024;
}

impl JobSpec {
    /// The largest result a job may declare.
    pub const MAX_RESULT_BYTES: u64 = 1 << 40;

    /// What a provider stores for this job at most: its inputs and its
    /// result.
    pub fn storage_bytes(&self) -> u64 {
        self.dataset
            .size
            .saturating_add(self.model.as_ref().map_or(0, |m| m.size))
            .saturating_add(self.result_bytes)
    }

    /// An inference job (batch 1) on `dataset` with no model, no service-level
    /// floor and no privacy target, standing from `issued_at` until its deadline.
    pub fn inference(
        requester: AccountId,
        dataset: BlobRef,
        estimated_units: ComputeUnits,
        max_price: PricePerCu,
        issued_at: Timestamp,
        deadline: Timestamp,
        nonce: u64,
    ) -> JobSpec {
        JobSpec {
            requester,
            kind: JobKind::Infer { batch: 1 },
            model: None,
            dataset,
            estimated_units,
            result_bytes: 1 << 20,
            max_price,
            deadline,
            sla: SlaRequirement {
                min_availability: Bps(0),
                min_penalty: Bps(0),
            },
            privacy: None,
            issued_at,
            expires_at: deadline,
            nonce,
        }
    }

    pub fn validate(&self, now: Timestamp) -> Result<(), InvalidMessage> {
        check_lifetime(now, self.issued_at, self.expires_at)?;
        self.kind.validate()?;
        if self.estimated_units.milli == 0 {
            return Err(field("estimated_units", "must be positive"));
        }
        if self.result_bytes == 0 || self.result_bytes > Self::MAX_RESULT_BYTES {
            return Err(field("result_bytes", "must be positive and at most 1 TiB"));
        }
        if self.deadline <= now {
            return Err(field("deadline", "already passed"));
        }
        if self.max_price.cost(self.estimated_units).is_none() {
            return Err(field("max_price", "price × units overflows"));
        }
        if !self.sla.min_availability.is_valid() || !self.sla.min_penalty.is_valid() {
            return Err(field("sla", "shares must be at most 10000 bps"));
        }
        if let Some(p) = self.privacy
            && (!p.epsilon.is_finite() || p.epsilon <= 0.0 || !(0.0..1.0).contains(&p.delta))
        {
            return Err(field("privacy", "need ε > 0 and 0 ≤ δ < 1"));
        }
        if self.kind.held_data() {
            if self.model.is_none() {
                return Err(field("model", "a federated round trains the round's model"));
            }
            if self.privacy.is_none_or(|p| p.delta <= 0.0) {
                return Err(field(
                    "privacy",
                    "a federated round states the ε the job spends, at δ > 0",
                ));
            }
        }
        Ok(())
    }
}

/// A requester's (or, for an open bid, a provider's) proposal of a contract.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Proposal {
    pub job: Signed<JobSpec>,
    pub provider: AccountId,
    /// The offer it answers (the id of the signed offer), if any.
    pub offer: Option<Hash32>,
    pub price: PricePerCu,
    pub sla: SlaTerms,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub nonce: u64,
}

impl Wire for Proposal {
    const KIND: &'static str = "proposal";
    const MAX_SIZE: usize = 8 * 1024;
}

impl Proposal {
    pub fn validate(&self, now: Timestamp) -> Result<(), InvalidMessage> {
        check_lifetime(now, self.issued_at, self.expires_at)?;
        if !self.sla.availability.is_valid() || !self.sla.penalty.is_valid() {
            return Err(field("sla", "shares must be at most 10000 bps"));
        }
        Ok(())
    }
}

/// Why a provider refuses a proposal.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum RejectReason {
    /// Every slot is taken; the provider expects one to free at `free_at`
    /// (requesters pass it over until then, see `OrderBook::hold_off`).
    NoCapacity {
        free_at: Timestamp,
    },
    PriceBelowFloor {
        floor: PricePerCu,
    },
    DeadlineInfeasible,
    /// Every slot and the queue are taken; as `NoCapacity`.
    QueueFull {
        free_at: Timestamp,
    },
    Unsupported(String),
    Invalid(String),
    /// The job would take `needed` bytes of the provider's store, which has
    /// `room` left for new jobs.
    NoStorage {
        needed: u64,
        room: u64,
    },
    /// A federated round would spend ε of the owner's data set beyond what
    /// remains for this requester (both in millionths of ε).
    PrivacyBudget {
        asked_micro: u64,
        left_micro: u64,
    },
}

/// A provider's answer to a proposal.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum ProposalAnswer {
    /// The provider accepts: its signature on the contract terms is included.
    Accept(MultiSigned<ContractTerms>),
    Reject {
        proposal: Hash32,
        reason: RejectReason,
    },
}

impl Wire for ProposalAnswer {
    const KIND: &'static str = "proposal-answer";
    const MAX_SIZE: usize = 8 * 1024;
}

/// The terms both parties sign. Its body hash is the contract id.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct ContractTerms {
    pub network: NetworkId,
    pub job: Hash32,
    pub spec: JobSpec,
    pub requester: AccountId,
    pub provider: AccountId,
    pub price: PricePerCu,
    /// The most units the requester pays for; the escrow is `price · max_units`.
    pub max_units: ComputeUnits,
    pub sla: SlaTerms,
    pub deadline: Timestamp,
    pub created_at: Timestamp,
}

impl Wire for ContractTerms {
    const KIND: &'static str = "contract";
    const MAX_SIZE: usize = 8 * 1024;
}

impl ContractTerms {
    /// The amount the requester locks in escrow.
    pub fn escrow(&self) -> Option<Amount> {
        self.price.cost(self.max_units)
    }
}

/// A contract: the terms signed by requester and provider.
pub type Contract = MultiSigned<ContractTerms>;

/// When the provider fetched, started and finished.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Timings {
    pub accepted_at: Timestamp,
    pub inputs_ready_at: Timestamp,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
}

/// The provider's signed account of a finished job.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Receipt {
    pub contract: Hash32,
    pub provider: AccountId,
    pub result: BlobRef,
    pub units_used: ComputeUnits,
    pub timings: Timings,
    /// Head of the hash chain of intermediate states (weight checkpoints every
    /// `checkpoint_every` steps for training), so a verifier can re-run a segment.
    pub commitment: Hash32,
    pub checkpoint_every: u32,
    pub checkpoints: u32,
}

impl Wire for Receipt {
    const KIND: &'static str = "receipt";
    const MAX_SIZE: usize = 2 * 1024;
}

/// An oracle's liveness and latency probe of a provider.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Probe {
    pub oracle: AccountId,
    pub provider: AccountId,
    pub sent_at: Timestamp,
    pub nonce: u64,
}

impl Wire for Probe {
    const KIND: &'static str = "probe";
    const MAX_SIZE: usize = 256;
}

/// The provider's signed answer to a probe.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct ProbeReply {
    pub probe: Hash32,
    pub provider: AccountId,
    pub replied_at: Timestamp,
    pub busy_slots: u16,
}

impl Wire for ProbeReply {
    const KIND: &'static str = "probe-reply";
    const MAX_SIZE: usize = 256;
}

/// A committee member's judgement of a delivered (or undelivered) contract.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Verdict {
    pub contract: Hash32,
    pub epoch: u64,
    pub oracle: AccountId,
    pub sla_ok: bool,
    /// R_i: the number of SLA violations found.
    pub violations: u32,
    pub result_ok: bool,
    /// The units the oracle accepts as used (at most the contract's maximum).
    pub units: ComputeUnits,
    pub delivered: bool,
}

impl Wire for Verdict {
    const KIND: &'static str = "verdict";
    const MAX_SIZE: usize = 512;
}

/// Why a party disputes a contract.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum DisputeReason {
    WrongResult,
    NotDelivered,
    SlaViolated,
    Other(String),
}

/// A party's claim that a contract went wrong; forces verification.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Dispute {
    pub contract: Hash32,
    pub by: AccountId,
    pub reason: DisputeReason,
    pub evidence: Option<BlobRef>,
    pub raised_at: Timestamp,
}

impl Wire for Dispute {
    const KIND: &'static str = "dispute";
    const MAX_SIZE: usize = 1024;
}

/// A provider gives a contract up before delivering (its run failed, or its
/// inputs or key never came): the committee judges it not delivered at once,
/// and the escrow is refunded, rather than at the deadline. Sent directly to
/// the committee and the requester (never gossiped).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Withdrawal {
    pub contract: Hash32,
    pub provider: AccountId,
    /// Why, for the requester (at most [`MAX_TEXT`] bytes, no control
    /// characters).
    pub reason: String,
    pub at: Timestamp,
}

impl Wire for Withdrawal {
    const KIND: &'static str = "withdrawal";
    const MAX_SIZE: usize = 512;
}

impl Withdrawal {
    pub fn validate(&self) -> Result<(), InvalidMessage> {
        check_text("reason", &self.reason)
    }
}

/// The requester hands a contract's job key to one reader: the provider that runs
/// the job, or a committee member that re-executes it to verify. Sent directly
/// (never gossiped); `sealed` opens only with the reader's key.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct KeyGrant {
    pub contract: Hash32,
    pub requester: AccountId,
    pub reader: AccountId,
    /// The job key sealed to `reader` (X25519 from the two ed25519 keys).
    pub sealed: Vec<u8>,
    /// Where the requester serves the encrypted inputs (iroh addresses).
    pub contact: Vec<String>,
    pub issued_at: Timestamp,
}

impl KeyGrant {
    /// Most bytes of a sealed key (a 32-byte key and its 16-byte tag).
    pub const MAX_SEALED: usize = 64;

    pub fn validate(&self) -> Result<(), InvalidMessage> {
        if self.sealed.len() > Self::MAX_SEALED {
            return Err(field("sealed", format!("{} bytes", self.sealed.len())));
        }
        check_contact(&self.contact)
    }
}

impl Wire for KeyGrant {
    const KIND: &'static str = "key-grant";
    const MAX_SIZE: usize = 2 * 1024;
}

/// Every message a peer may put on the wire.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Message {
    Offer(Signed<Offer>),
    Bid(Signed<JobSpec>),
    Proposal(Signed<Proposal>),
    Answer(Signed<ProposalAnswer>),
    Contract(Contract),
    Receipt(Signed<Receipt>),
    Probe(Signed<Probe>),
    ProbeReply(Signed<ProbeReply>),
    Verdict(Signed<Verdict>),
    Dispute(Signed<Dispute>),
    KeyGrant(Signed<KeyGrant>),
    Withdrawal(Signed<Withdrawal>),
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Offer(_) => Offer::KIND,
            Message::Bid(_) => JobSpec::KIND,
            Message::Proposal(_) => Proposal::KIND,
            Message::Answer(_) => ProposalAnswer::KIND,
            Message::Contract(_) => ContractTerms::KIND,
            Message::Receipt(_) => Receipt::KIND,
            Message::Probe(_) => Probe::KIND,
            Message::ProbeReply(_) => ProbeReply::KIND,
            Message::Verdict(_) => Verdict::KIND,
            Message::Dispute(_) => Dispute::KIND,
            Message::KeyGrant(_) => KeyGrant::KIND,
            Message::Withdrawal(_) => Withdrawal::KIND,
        }
    }
}

/// A versioned frame: what gossip and request-response actually carry.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Frame {
    pub version: u16,
    pub network: NetworkId,
    pub message: Message,
}

impl Wire for Frame {
    const KIND: &'static str = "frame";
    const MAX_SIZE: usize = 64 * 1024;
}

/// Errors reading a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    #[error(transparent)]
    Codec(#[from] crate::codec::CodecError),
    #[error("protocol version {0} is not supported (this peer speaks {PROTOCOL_VERSION})")]
    Version(u16),
    #[error("frame is for network {got:?}, this peer is on {expected:?}")]
    Network { got: NetworkId, expected: NetworkId },
}

impl Frame {
    pub fn new(network: NetworkId, message: Message) -> Self {
        Frame {
            version: PROTOCOL_VERSION,
            network,
            message,
        }
    }

    /// Encode for the wire.
    pub fn to_bytes(&self) -> Result<Vec<u8>, crate::codec::CodecError> {
        crate::codec::encode(self)
    }

    /// Decode untrusted bytes and check version and network (not signatures:
    /// the engines verify the inner envelope for its kind).
    pub fn from_bytes(bytes: &[u8], network: &NetworkId) -> Result<Self, FrameError> {
        if bytes.len() > Frame::MAX_SIZE {
            return Err(crate::codec::CodecError::TooLarge {
                kind: Frame::KIND,
                len: bytes.len(),
                limit: Frame::MAX_SIZE,
            }
            .into());
        }
        // Read the version first, so a newer peer gets "unsupported version" rather
        // than "malformed" from us.
        let version: u16 = crate::codec::decode_prefix(Frame::KIND, bytes)?;
        if version != PROTOCOL_VERSION {
            return Err(FrameError::Version(version));
        }
        let frame: Frame = crate::codec::decode(bytes)?;
        if frame.version != PROTOCOL_VERSION {
            return Err(FrameError::Version(frame.version));
        }
        if &frame.network != network {
            return Err(FrameError::Network {
                got: frame.network,
                expected: *network,
            });
        }
        Ok(frame)
    }
}
