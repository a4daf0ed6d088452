//! # simnet — CloudChain's market on virtual time
//!
//! A deterministic discrete-event simulation of many peers that
//! drives the same sans-IO engines the node runs (`protocol`'s market and oracle
//! engines, `crdt-ledger`), with time and randomness as inputs: the same scenario
//! and seed give the same result, bit for bit.
//!
//! - [`sched`]: the event queue on virtual time.
//! - [`scenario`]: scenarios as TOML data (`simnet/scenarios/`).
//! - [`profiles`]: provider profiles (hyperscalers, GPU clouds, community nodes).
//! - [`ledger`]: the real `crdt_ledger::Ledger` as the converged view of every
//!   replica: genesis, escrow locks, settlements and a checkpoint per epoch.
//! - [`netmodel`]: latency by region, loss, partitions, and a sampled gossip model
//!   whose cost grows with the engines that consume messages, not with the peers
//!   that forward them.
//! - [`prewarm`]: the signature-checking helper.
//!
//! **Not yet on the node core.** The binary now runs one sans-IO node core per
//! peer (`peer/core`, crate `node-core`), which owns the engines, the ledger
//! replica and every decision between them. This crate still wires the engines
//! itself ([`world`]), so its figures describe the engines and the ledger, not
//! yet the core's glue (the escrow gate, key grants, retries, persistence).
//! What it shares with the core so far: committee members watch what the
//! ledger escrows, under the committee of the lock epoch (delivered as ledger
//! sync would, delayed by a partition rather than lost), and every run checks
//! that no escrow is open past `protocol::escrow_bound`. Moving `World` onto
//! `node-core` (a core per simulated peer, with a switch for a ledger replica
//! per peer and real sync) is the next step of the core's issue.
//!
//! Events are handled one at a time, in time order. A second core helps in two
//! ways that cannot change a run: [`prewarm`] checks the signatures the ledger
//! will fold ahead of time (into a cache of pure results), and idle requesters
//! take gossiped offers ahead in a scoped, two-way step
//! (`World::take_offers_in_parallel`), in the same order they would later.

pub mod cores;
pub mod ledger;
pub mod metrics;
pub mod netmodel;
pub mod prewarm;
pub mod profiles;
pub mod report;
pub mod scenario;
pub mod sched;
pub mod world;

pub use metrics::{Metrics, Summary};
pub use scenario::Scenario;
pub use world::World;

/// Run `scenario` with `seed` (its own seed when `None`); `progress` gets the
/// share done, from 0 to 1.
pub fn run(scenario: &Scenario, seed: Option<u64>, progress: impl FnMut(f64)) -> Metrics {
    World::new(scenario, seed.unwrap_or(scenario.seed), None, None).run(progress)
}
