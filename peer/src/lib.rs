//! # peer — the `cloudchain` node
//!
//! The binary anyone runs. It owns everything that touches the outside world: the
//! data directory and its key, the libp2p swarm, the iroh blob endpoint, the local
//! control API and the command line, and it drives the sans-IO engines of
//! `protocol` and `crdt-ledger` and the workloads of `compute` from them.

pub mod blobs;
pub mod cli;
pub mod config;
pub mod control;
pub mod crypto;
pub mod demo;
pub mod direct;
pub mod genesis;
pub mod jobfile;
pub mod net;
pub mod netbench;
pub mod node;
pub mod testbed;
pub mod work;
