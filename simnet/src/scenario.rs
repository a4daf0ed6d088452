//! Scenarios are data: TOML files in `simnet/scenarios/`, parsed and checked here.
//!
//! A bad file is refused with the line and field at fault (toml's own span), or with
//! the name of the field whose value is out of range.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::profiles::Profile;

/// The scenarios shipped with the crate, by name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("paper-30d", include_str!("../scenarios/paper-30d.toml")),
    ("scale-1k", include_str!("../scenarios/scale-1k.toml")),
    ("scale-10k", include_str!("../scenarios/scale-10k.toml")),
    (
        "requesters-sweep",
        include_str!("../scenarios/requesters-sweep.toml"),
    ),
    ("faults", include_str!("../scenarios/faults.toml")),
    ("smoke", include_str!("../scenarios/smoke.toml")),
    ("attack-lazy", include_str!("../scenarios/attack-lazy.toml")),
    (
        "attack-units",
        include_str!("../scenarios/attack-units.toml"),
    ),
    (
        "attack-self-deal",
        include_str!("../scenarios/attack-self-deal.toml"),
    ),
    (
        "attack-self-deal-split",
        include_str!("../scenarios/attack-self-deal-split.toml"),
    ),
    (
        "attack-flood",
        include_str!("../scenarios/attack-flood.toml"),
    ),
    (
        "attack-whitewash",
        include_str!("../scenarios/attack-whitewash.toml"),
    ),
];

/// Why a scenario was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: `{field}`: {reason}")]
    Invalid {
        origin: String,
        field: String,
        reason: String,
    },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no scenario named {0:?}; built in: {1}")]
    Unknown(String, String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub seed: u64,
    pub days: f64,
    /// Length of a ledger epoch (committee rotation and checkpoint).
    pub epoch_minutes: u64,
    pub network: NetworkModel,
    pub providers: Vec<ProviderGroup>,
    pub requesters: Requesters,
    pub oracles: Oracles,
    #[serde(default)]
    pub sweep: Option<Sweep>,
    #[serde(default)]
    pub faults: Faults,
    #[serde(default)]
    pub storage: Storage,
    /// Give every peer its own ledger replica and run real sync between
    /// them, instead of lending one converged replica to every core
    /// (`cloudchain sim --replica-per-peer`).
    #[serde(default)]
    pub replica_per_peer: bool,
    /// An attacker among the providers, played against the honest ones of
    /// the same profile (on one lent replica).
    #[serde(default)]
    pub attack: Option<Attack>,
    /// Figures measured on a machine (see [`crate::calibration`]): the DP-SGD
    /// overhead a DP job's units carry, and the storage figure. `cloudchain
    /// sim` fills it from its per-machine cache unless the file pins one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<crate::calibration::Calibration>,
}

/// What an attacker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackKind {
    /// Skip a share of each job's work and fake the rest of the result.
    Lazy,
    /// Claim more compute units than the job took.
    Units,
    /// Buy its own compute through a second key, to farm the epoch's mint.
    SelfDeal,
    /// Gossip fake contracts and receipts between made-up keys.
    Flood,
    /// Cheat, and once caught and slashed, carry on under a fresh key.
    Whitewash,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attack {
    pub kind: AttackKind,
    /// The attackers are the last providers of this profile's first group
    /// (same hardware as the honest providers they are compared with).
    pub profile: Profile,
    /// `lazy`: the share of the work each attacker skips (one attacker per
    /// entry); `whitewash`: the share each of its keys skips.
    #[serde(default)]
    pub skip: Vec<f64>,
    /// `self-deal`: provider keys the attacker splits one provider's bond and
    /// slots over; `whitewash`: the bonded keys it holds ready.
    #[serde(default = "one")]
    pub keys: u32,
    /// `self-deal`: jobs a day the attacker's buying key submits (to its own
    /// providers only).
    #[serde(default)]
    pub jobs_per_day: f64,
    /// `flood`: fake contracts (each with a fake receipt) over the first day.
    #[serde(default)]
    pub fakes: u32,
    /// `units`: requesters' estimates exceed a job's measured units by this
    /// factor (a margin), and the attacker claims the whole estimate.
    #[serde(default = "one_f")]
    pub estimate_margin: f64,
}

fn default_book_per_class() -> u32 {
    protocol::market::BookConfig::default().per_class as u32
}

fn default_batches() -> Vec<u32> {
    vec![64]
}

/// Largest training batch a scenario may name.
pub const MAX_TRAIN_BATCH: u32 = 65_536;

fn one() -> u32 {
    1
}

fn one_f() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkModel {
    pub regions: Vec<String>,
    /// One-way latency in ms between regions, a square matrix in region order.
    pub latency_ms: Vec<Vec<f64>>,
    /// Gossip fan-out (mesh degree): a message reaches N peers in ≈ log_fanout(N) hops.
    pub gossip_fanout: u32,
    /// Share of messages lost per hop.
    #[serde(default)]
    pub loss: f64,
    /// Market shards (the genesis's `market_shards`): each provider and
    /// requester hears, books and prices against the offers of its own shard
    /// only. 1 (the default) is one market.
    #[serde(default = "one_shard")]
    pub market_shards: u16,
}

fn one_shard() -> u16 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderGroup {
    pub profile: Profile,
    pub count: u32,
    pub region: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    /// Exponential gaps at a constant rate.
    Poisson,
    /// Poisson with a rate that follows the day: peak at 14:00, trough at 02:00.
    Diurnal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requesters {
    pub count: u32,
    pub regions: Vec<String>,
    pub arrival: Arrival,
    /// Mean jobs per requester per day.
    pub jobs_per_day: f64,
    /// Shares of job kinds (normalized).
    pub mix: BTreeMap<String, f64>,
    /// Share of training jobs with DP-SGD.
    #[serde(default)]
    pub dp_share: f64,
    /// Batch sizes of training jobs, each job one of them at random; DP
    /// overhead is measured at each.
    #[serde(default = "default_batches")]
    pub train_batches: Vec<u32>,
    /// The most offers of each resource class a requester's order book
    /// keeps (its cheapest), as a node's `BookConfig::per_class`.
    #[serde(default = "default_book_per_class")]
    pub book_per_class: u32,
    /// Requesters are split into groups of this size for the fairness figure.
    #[serde(default)]
    pub fairness_groups: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Oracles {
    pub count: u32,
    pub committee: u32,
    /// Share of receipts re-executed when nobody disputes.
    pub verify_share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// Requester counts to run, each for `days`.
    pub requesters: Vec<u32>,
    pub days: f64,
    /// Seeds each count runs on (from the scenario's seed on), for the mean
    /// and its 95 % confidence interval; `cloudchain sim --seeds` sets it.
    #[serde(default = "one_seed")]
    pub seeds: u32,
}

fn one_seed() -> u32 {
    1
}

/// Most seeds a sweep runs each count on.
pub const MAX_SWEEP_SEEDS: u32 = 100;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Share of providers that return wrong results.
    #[serde(default)]
    pub cheating_share: f64,
    /// Share of providers that crash (and later rejoin) per day.
    #[serde(default)]
    pub churn_per_day: f64,
    /// Providers also go down as their profiles' uptime says (a model; see
    /// [`crate::profiles`]): rare short outages in a data centre, longer and
    /// more frequent ones at home.
    #[serde(default)]
    pub profile_outages: bool,
    #[serde(default)]
    pub partitions: Vec<Partition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub start_hours: f64,
    pub hours: f64,
    /// These regions are cut off from the rest (and from each other's rest).
    pub regions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// Object sizes for the storage-latency figure, in MB.
    pub sizes_mb: Vec<u64>,
    /// Read and write bandwidth of a storage peer, MB/s.
    pub read_mb_s: f64,
    pub write_mb_s: f64,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            sizes_mb: vec![50, 100, 200],
            read_mb_s: 250.0,
            write_mb_s: 180.0,
        }
    }
}

impl Scenario {
    /// Parse TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        s.validate(origin)?;
        Ok(s)
    }

    /// A built-in scenario by name, or a file by path.
    pub fn load(name_or_path: &str) -> Result<Scenario, ScenarioError> {
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Scenario::parse(text, &format!("{name_or_path} (built in)"));
        }
        let path = Path::new(name_or_path);
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
                path: path.display().to_string(),
                source,
            })?;
            return Scenario::parse(&text, &path.display().to_string());
        }
        let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
        Err(ScenarioError::Unknown(
            name_or_path.to_string(),
            names.join(", "),
        ))
    }

    fn validate(&self, origin: &str) -> Result<(), ScenarioError> {
        let bad = |field: &str, reason: String| ScenarioError::Invalid {
            origin: origin.to_string(),
            field: field.to_string(),
            reason,
        };
        if !(self.days > 0.0 && self.days <= 366.0) {
            return Err(bad("days", format!("{} is not in (0, 366]", self.days)));
        }
        if self.epoch_minutes == 0 {
            return Err(bad("epoch_minutes", "must be positive".into()));
        }
        let n = self.network.regions.len();
        if n == 0 {
            return Err(bad("network.regions", "at least one region".into()));
        }
        if self.network.latency_ms.len() != n
            || self.network.latency_ms.iter().any(|r| r.len() != n)
        {
            return Err(bad(
                "network.latency_ms",
                format!("must be a {n}×{n} matrix (one row and column per region)"),
            ));
        }
        if self
            .network
            .latency_ms
            .iter()
            .flatten()
            .any(|l| !l.is_finite() || *l < 0.0)
        {
            return Err(bad("network.latency_ms", "latencies must be ≥ 0".into()));
        }
        if self.network.gossip_fanout < 2 {
            return Err(bad("network.gossip_fanout", "at least 2".into()));
        }
        if !(0.0..0.5).contains(&self.network.loss) {
            return Err(bad("network.loss", "must be in [0, 0.5)".into()));
        }
        let shards = self.network.market_shards;
        if !(1..=protocol::market::MAX_MARKET_SHARDS).contains(&shards) {
            return Err(bad(
                "network.market_shards",
                format!(
                    "{shards}: must be 1 to {}",
                    protocol::market::MAX_MARKET_SHARDS
                ),
            ));
        }
        let region_ok = |r: &String| self.network.regions.contains(r);
        if self.providers.is_empty() {
            return Err(bad("providers", "at least one provider group".into()));
        }
        for (i, g) in self.providers.iter().enumerate() {
            if g.count == 0 {
                return Err(bad(
                    &format!("providers[{i}].count"),
                    "at least one provider (remove the group instead)".into(),
                ));
            }
            if !region_ok(&g.region) {
                return Err(bad(
                    &format!("providers[{i}].region"),
                    format!("{:?} is not in network.regions", g.region),
                ));
            }
        }
        let r = &self.requesters;
        if r.regions.is_empty() || !r.regions.iter().all(region_ok) {
            return Err(bad(
                "requesters.regions",
                "must name regions of network.regions".into(),
            ));
        }
        // The main run has `count` requesters; a sweep runs its own counts.
        let most_requesters = self
            .sweep
            .iter()
            .flat_map(|sw| sw.requesters.iter().copied())
            .chain([r.count])
            .max()
            .unwrap_or(r.count);
        if r.count == 0 {
            return Err(bad(
                "requesters.count",
                "at least one requester (a market with none has no figures)".into(),
            ));
        }
        if let Some(sw) = &self.sweep
            && sw.requesters.contains(&0)
        {
            return Err(bad("sweep.requesters", "counts must be at least 1".into()));
        }
        if let Some(g) = r
            .fairness_groups
            .iter()
            .find(|g| **g == 0 || **g > most_requesters)
        {
            return Err(bad(
                "requesters.fairness_groups",
                format!("a group of {g}: sizes must be in 1..={most_requesters} (the requesters)"),
            ));
        }
        if !(r.jobs_per_day > 0.0 && r.jobs_per_day.is_finite()) {
            return Err(bad("requesters.jobs_per_day", "must be positive".into()));
        }
        for (k, v) in &r.mix {
            if !["train", "infer", "preprocess"].contains(&k.as_str()) {
                return Err(bad(
                    "requesters.mix",
                    format!("unknown kind {k:?}; use train, infer, preprocess"),
                ));
            }
            if !(v.is_finite() && *v >= 0.0) {
                return Err(bad("requesters.mix", format!("share of {k} must be ≥ 0")));
            }
        }
        if r.mix.values().sum::<f64>() <= 0.0 {
            return Err(bad("requesters.mix", "shares must not all be 0".into()));
        }
        for (name, v) in [
            ("requesters.dp_share", r.dp_share),
            ("oracles.verify_share", self.oracles.verify_share),
            ("faults.cheating_share", self.faults.cheating_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(bad(name, format!("{v} is not in [0, 1]")));
            }
        }
        if r.train_batches.is_empty()
            || r.train_batches
                .iter()
                .any(|b| !(1..=MAX_TRAIN_BATCH).contains(b))
        {
            return Err(bad(
                "requesters.train_batches",
                format!("one or more batch sizes in 1..={MAX_TRAIN_BATCH}"),
            ));
        }
        if r.book_per_class == 0 {
            return Err(bad(
                "requesters.book_per_class",
                "a book keeps at least one offer of a class".into(),
            ));
        }
        let st = &self.storage;
        if st.sizes_mb.is_empty() || st.sizes_mb.iter().any(|s| !(1..=100_000).contains(s)) {
            return Err(bad(
                "storage.sizes_mb",
                "one or more object sizes in 1..=100000 MB".into(),
            ));
        }
        for (name, v) in [
            ("storage.read_mb_s", st.read_mb_s),
            ("storage.write_mb_s", st.write_mb_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(name, format!("{v} is not a positive bandwidth")));
            }
        }
        if let Some(c) = &self.calibration {
            c.validate()
                .map_err(|e| bad(&format!("calibration.{}", e.field), e.reason))?;
        }
        let churn = self.faults.churn_per_day;
        if !(churn.is_finite() && (0.0..=10.0).contains(&churn)) {
            return Err(bad(
                "faults.churn_per_day",
                format!("{churn} is not in [0, 10] (crashes per provider per day)"),
            ));
        }
        if self.oracles.committee == 0 || self.oracles.committee > self.oracles.count {
            return Err(bad(
                "oracles.committee",
                format!("must be in 1..={} (oracles.count)", self.oracles.count),
            ));
        }
        for (i, p) in self.faults.partitions.iter().enumerate() {
            if !(p.start_hours >= 0.0 && p.hours > 0.0) {
                return Err(bad(
                    &format!("faults.partitions[{i}]"),
                    "needs start ≥ 0, hours > 0".into(),
                ));
            }
            if !p.regions.iter().all(region_ok) {
                return Err(bad(
                    &format!("faults.partitions[{i}].regions"),
                    "unknown region".into(),
                ));
            }
        }
        if let Some(s) = &self.sweep
            && (s.requesters.is_empty() || s.days <= 0.0)
        {
            return Err(bad("sweep", "needs requester counts and days > 0".into()));
        }
        if let Some(s) = &self.sweep
            && !(1..=MAX_SWEEP_SEEDS).contains(&s.seeds)
        {
            return Err(bad(
                "sweep.seeds",
                format!("{} is not in 1..={MAX_SWEEP_SEEDS}", s.seeds),
            ));
        }
        if let Some(s) = &self.sweep
            && s.requesters.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(bad(
                "sweep.requesters",
                "counts must rise from one point to the next".into(),
            ));
        }
        if let Some(a) = &self.attack {
            self.validate_attack(a).map_err(|(f, why)| bad(f, why))?;
        }
        Ok(())
    }

    fn validate_attack(&self, a: &Attack) -> Result<(), (&'static str, String)> {
        if self.replica_per_peer {
            return Err((
                "attack",
                "runs on node cores with one lent replica: leave replica_per_peer unset".into(),
            ));
        }
        let Some(g) = self.providers.iter().find(|g| g.profile == a.profile) else {
            return Err((
                "attack.profile",
                format!("no provider group of profile {:?}", a.profile),
            ));
        };
        let attackers = self.attackers_wanted(a);
        // At least one honest provider of the profile to compare with.
        if attackers >= g.count {
            return Err((
                "attack",
                format!(
                    "{attackers} attacking keys need at least {} providers of {:?} in its first group",
                    attackers + 1,
                    a.profile
                ),
            ));
        }
        if a.skip.iter().any(|f| !(*f > 0.0 && *f <= 1.0)) {
            return Err(("attack.skip", "each share must be in (0, 1]".into()));
        }
        let needs_skip = matches!(a.kind, AttackKind::Lazy | AttackKind::Whitewash);
        if needs_skip && a.skip.is_empty() {
            return Err(("attack.skip", "name the share of work skipped".into()));
        }
        if a.keys == 0 {
            return Err(("attack.keys", "at least 1".into()));
        }
        if a.kind == AttackKind::SelfDeal {
            if !(a.jobs_per_day > 0.0 && a.jobs_per_day.is_finite()) {
                return Err(("attack.jobs_per_day", "must be positive".into()));
            }
            if self.requesters.count < 2 {
                return Err((
                    "requesters.count",
                    "self-deal takes the last requester as the attacker's: at least 2".into(),
                ));
            }
        }
        if a.kind == AttackKind::Flood && a.fakes == 0 {
            return Err(("attack.fakes", "at least 1".into()));
        }
        if !(a.estimate_margin >= 1.0 && a.estimate_margin <= 100.0) {
            return Err(("attack.estimate_margin", "must be in [1, 100]".into()));
        }
        Ok(())
    }

    /// How many provider keys the attack takes from its profile's group.
    pub fn attackers_wanted(&self, a: &Attack) -> u32 {
        match a.kind {
            AttackKind::Lazy => a.skip.len() as u32,
            AttackKind::Units => 1,
            AttackKind::SelfDeal | AttackKind::Whitewash => a.keys,
            AttackKind::Flood => 0,
        }
    }

    /// The provider indices the attack plays (the last of its profile's
    /// first group), in order of use; none without an attack.
    pub fn attack_keys(&self) -> Vec<usize> {
        let Some(a) = &self.attack else {
            return Vec::new();
        };
        let mut start = 0usize;
        for g in &self.providers {
            if g.profile == a.profile {
                let n = self.attackers_wanted(a).min(g.count) as usize;
                let end = start + g.count as usize;
                return (end - n..end).collect();
            }
            start += g.count as usize;
        }
        Vec::new()
    }

    /// Total providers.
    pub fn provider_count(&self) -> u32 {
        self.providers.iter().map(|g| g.count).sum()
    }

    /// Index of a region.
    pub fn region_index(&self, name: &str) -> usize {
        self.network
            .regions
            .iter()
            .position(|r| r == name)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_scenario_parses() {
        for (name, _) in BUILTIN {
            let s = Scenario::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&s.name, name);
        }
        assert_eq!(Scenario::load("paper-30d").unwrap().provider_count(), 28);
        let big = Scenario::load("scale-1k").unwrap();
        assert_eq!(big.provider_count(), 1000);
        assert_eq!(big.requesters.count, 300);
    }

    /// The error a scenario is refused with.
    fn refused(text: &str) -> String {
        Scenario::parse(text, "x.toml").unwrap_err().to_string()
    }

    #[test]
    fn bad_scenarios_name_the_field() {
        let text = BUILTIN[0].1;
        let err = refused(&text.replace("days = 30.0", "days = \"thirty\""));
        assert!(err.contains("days") && err.contains("line"), "{err}");
        let err = refused(&text.replace("committee = 3", "committee = 99"));
        assert!(err.contains("oracles.committee"), "{err}");
        // Values that parse but make no sense are refused by name, not
        // taken silently (a negative churn meant none; no requesters
        // reported a Jain index of 1; a group of 0 fell back silently).
        let with_faults = text.replace(
            "profile_outages = true",
            "profile_outages = true\nchurn_per_day = -0.5",
        );
        assert!(refused(&with_faults).contains("faults.churn_per_day"));
        let err = refused(&text.replacen("count = 50", "count = 0", 1));
        assert!(err.contains("requesters.count"), "{err}");
        let err = refused(&text.replace("fairness_groups = [", "fairness_groups = [0, "));
        assert!(err.contains("requesters.fairness_groups"), "{err}");
        let err = refused(&text.replacen("count = 3", "count = 0", 1));
        assert!(err.contains("providers[0].count"), "{err}");
        let err =
            refused(&text.replace("train_batches = [64, 256, 1024]", "train_batches = [64, 0]"));
        assert!(err.contains("requesters.train_batches"), "{err}");
        let err = refused(&text.replace("sizes_mb = [50, 100, 200]", "sizes_mb = []"));
        assert!(err.contains("storage.sizes_mb"), "{err}");
        let err = refused(&text.replace("read_mb_s = 250.0", "read_mb_s = -250.0"));
        assert!(err.contains("storage.read_mb_s"), "{err}");
        for shards in ["0", "5000"] {
            let err = refused(&text.replace(
                "[network]\n",
                &format!("[network]\nmarket_shards = {shards}\n"),
            ));
            assert!(err.contains("network.market_shards"), "{err}");
        }
        // A pinned calibration is checked as well.
        let pinned = format!(
            "{text}\n[calibration]\nsource = \"x\"\n[[calibration.dp]]\nbatch = 64\nlayers = [64, 10]\nrows = 640\nplain_s = 0.0\ndp_s = 1.0\n"
        );
        let err = refused(&pinned);
        assert!(err.contains("calibration.dp[0]"), "{err}");
        let ok = Scenario::parse(&pinned.replace("plain_s = 0.0", "plain_s = 0.8"), "x").unwrap();
        let c = ok.calibration.as_ref().unwrap();
        assert!(
            (crate::setup::dp_overhead(&ok, 256) - 0.25).abs() < 1e-9,
            "{c:?}"
        );
        let smoke = BUILTIN.iter().find(|(n, _)| *n == "smoke").map(|b| b.1);
        let smoke = smoke.unwrap_or_default();
        assert!(!smoke.contains("[sweep]"));
        let sweep = |body: &str| refused(&format!("{smoke}\n[sweep]\n{body}\n"));
        let err = sweep("requesters = [10, 20]\ndays = 1.0\nseeds = 0");
        assert!(err.contains("sweep.seeds"), "{err}");
        let err = sweep("requesters = [10, 20]\ndays = 1.0\nseeds = 1000");
        assert!(err.contains("sweep.seeds"), "{err}");
        let err = sweep("requesters = [20, 10]\ndays = 1.0");
        assert!(err.contains("sweep.requesters"), "{err}");
        assert!(
            Scenario::load("no-such-scenario")
                .unwrap_err()
                .to_string()
                .contains("paper-30d")
        );
    }
}
