//! # simnet — CloudChain's market on virtual time
//!
//! A deterministic discrete-event simulation of many peers that
//! drives the same sans-IO engines the node runs (`protocol`'s market and oracle
//! engines, `crdt-ledger`), with time and randomness as inputs: the same scenario
//! and seed give the same result, bit for bit.
//!
//! - [`cores`]: a node core per peer (see below).
//! - [`world`]: the engines around one converged ledger (see below).
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
//! **Two drivers.** [`cores`] runs every simulated peer as the binary's own
//! node core (`peer/core`, crate `node-core`), which owns the engines, the
//! ledger replica and every decision between them: the escrow gate, key
//! grants, the challenge and its reveal, settlement writing, resends,
//! persistence and restarts. The cores share one converged replica, lent to
//! each in turn, or each keeps its own with real automerge sync
//! ([`cores::Replicas`]). Scenarios with `cores = true` (`smoke`, `faults`,
//! the attacks, `paper-30d`, `requesters-sweep`) run there. [`world`] wires
//! the engines to one converged ledger itself, without the core's glue; it is
//! about 8× faster on `scale-1k`, which still runs there (see [`cores`] for
//! what the cores cost at that size). Both
//! check at the end of every run that no escrow is open past
//! `protocol::escrow_bound`.
//!
//! Events are handled one at a time, in time order. A second core helps in two
//! ways that cannot change a run: [`prewarm`] checks the signatures the ledger
//! will fold ahead of time (into a cache of pure results), and idle requesters
//! take gossiped offers ahead in a scoped, two-way step
//! (`World::take_offers_in_parallel`), in the same order they would later.

pub mod attack;
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

/// Run `scenario` with `seed` (its own seed when `None`) on the driver it
/// names; `progress` gets the share done, from 0 to 1.
pub fn run(scenario: &Scenario, seed: Option<u64>, progress: impl FnMut(f64)) -> Metrics {
    report::run_one(
        scenario,
        seed.unwrap_or(scenario.seed),
        None,
        None,
        progress,
    )
}
