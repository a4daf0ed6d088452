//! # simnet — CloudChain's market on virtual time
//!
//! A deterministic discrete-event simulation of many peers, each running the
//! binary's own node core (`peer/core`, crate `node-core`): the market and
//! oracle engines, the ledger replica and every decision between them — the
//! escrow gate, key grants, the challenge and its reveal, settlement writing,
//! resends, persistence and restarts. Time and randomness are inputs: the same
//! scenario and seed give the same result, bit for bit.
//!
//! - [`cores`]: the driver, a node core per peer on virtual time (see there
//!   for the network, work and churn models, and what a large run costs).
//! - [`setup`]: identities, the genesis, provider configurations and the jobs
//!   requesters submit, from a scenario and a seed.
//! - [`sched`]: the event queue on virtual time.
//! - [`scenario`]: scenarios as TOML data (`simnet/scenarios/`).
//! - [`profiles`]: provider profiles (hyperscalers, GPU clouds, community nodes).
//! - [`netmodel`]: latency by region, loss, partitions, and a sampled gossip model
//!   whose cost grows with the peers that consume messages, not with the peers
//!   that forward them.
//! - [`metrics`], [`report`], [`attack`]: what a run measures, the report, and
//!   attack scenarios on several seeds.
//! - [`calibration`]: figures measured on a real machine (DP-SGD overhead,
//!   storage latency) that a run and its report take as inputs.
//!
//! The cores share one converged ledger replica, lent to each in turn, or each
//! keeps its own with real automerge sync ([`cores::Replicas`],
//! `replica_per_peer` in a scenario). Every run checks at its end that no
//! escrow is open past `protocol::escrow_bound`.

pub mod attack;
pub mod calibration;
pub mod cores;
pub mod metrics;
pub mod netmodel;
pub mod profiles;
pub mod report;
pub mod scenario;
pub mod sched;
pub mod setup;

pub use metrics::{Metrics, Summary};
pub use scenario::Scenario;

/// Run `scenario` with `seed` (its own seed when `None`); `progress` gets the share done, from 0 to 1.
pub fn run(scenario: &Scenario, seed: Option<u64>, progress: impl FnMut(f64)) -> Metrics {
    report::run_one(
        scenario,
        seed.unwrap_or(scenario.seed),
        None,
        None,
        progress,
    )
}
