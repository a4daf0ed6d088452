//! The command line: `cloudchain <command>`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{DataDir, default_data_dir};

/// CloudChain: a peer-to-peer marketplace for AI compute.
///
/// Providers sell GPU/CPU time, requesters buy it for training, inference and
/// preprocessing, oracles check the work. Balances live in a signed CRDT ledger
/// that a rotating oracle committee finalizes; there is no global chain.
#[derive(Debug, Parser)]
#[command(name = "cloudchain", version, propagate_version = true)]
pub struct Cli {
    /// The node's data directory (key, config, ledger, blobs).
    #[arg(long, global = true, env = "CLOUDCHAIN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the data directory: a new secret key (mode 0600) and a commented
    /// config.toml.
    Init,
    /// Print this node's account id, libp2p PeerId and iroh endpoint id (one key,
    /// three views).
    Id,
}

impl Cli {
    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init => {
            let path = cli.data_dir();
            let dir = DataDir::init(&path)?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "data_dir": dir.path,
                        "account": dir.identity.account().to_string(),
                    })
                );
            } else {
                println!("initialized {}", dir.path.display());
                println!("account  {}", dir.identity.account());
                println!(
                    "config   {}",
                    dir.path.join(crate::config::CONFIG_FILE).display()
                );
            }
        }
        Command::Id => {
            let path = cli.data_dir();
            let dir = DataDir::open(&path).with_context(|| "cannot read this node's identity")?;
            let id = &dir.identity;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "account": id.account().to_string(),
                        "peer_id": id.peer_id().to_string(),
                        "endpoint_id": id.endpoint_id().to_string(),
                    })
                );
            } else {
                println!("account      {}", id.account());
                println!("peer id      {}", id.peer_id());
                println!("endpoint id  {}", id.endpoint_id());
            }
        }
    }
    Ok(())
}
