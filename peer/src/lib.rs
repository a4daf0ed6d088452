//! # peer — the `cloudchain` node
//!
//! The binary anyone runs. It owns everything that touches the outside world: the
//! data directory and its key, the libp2p swarm, the iroh blob endpoint, the local
//! control API and the command line. It drives the sans-IO node core
//! ([`node_core`]), which owns the engines and the ledger replica, and runs the
//! workloads of `compute` that the core asks for.

pub mod blobs;
pub mod calibrate;
pub mod cli;
pub mod collection;
pub mod config;
pub mod control;
pub mod crypto;
pub mod dashboard;
pub mod demo;
pub mod genesis;
pub mod held;
pub mod jobfile;
pub mod metrics;
pub mod net;
pub mod netbench;
pub mod netns;
pub mod node;
pub mod relay;
pub mod testbed;
pub mod work;
