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
    /// Run the node in the foreground until Ctrl-C (or SIGTERM).
    Run(RunArgs),
    /// Show the running node's addresses and peers.
    Status,
    /// List the fresh offers the running node has seen.
    Offers,
    /// Content-addressed blobs (models, data sets, results).
    #[command(subcommand)]
    Blob(BlobCommand),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// libp2p listen address (repeatable); replaces `net.listen` from the config.
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Peer to bootstrap from, with /p2p/<peer id> (repeatable); added to the config's.
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Turn mDNS discovery off.
    #[arg(long)]
    pub no_mdns: bool,
}

#[derive(Debug, Subcommand)]
pub enum BlobCommand {
    /// Add a file to the running node's store; prints its hash and a ticket that
    /// iroh's own tools accept.
    Add {
        /// The file to add.
        file: PathBuf,
    },
    /// Fetch a blob by hash (held locally) or by ticket (from the peer in it) and
    /// write it to OUT.
    Get {
        /// A 64-hex-digit BLAKE3 hash, or a blob ticket.
        source: String,
        /// Where to write the blob.
        out: PathBuf,
    },
}

impl Cli {
    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }
}

fn print<T: serde::Serialize>(json: bool, value: &T, text: impl FnOnce(&T)) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        text(value);
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,libp2p=warn,libp2p_kad=error,iroh=warn,iroh_blobs=warn",
        )
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Run(args) => return run_node(&cli, args),
        Command::Status | Command::Offers | Command::Blob(_) => return remote(&cli),
        Command::Init | Command::Id => {}
    }
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
        _ => unreachable!("handled above"),
    }
    Ok(())
}

fn run_node(cli: &Cli, args: &RunArgs) -> anyhow::Result<()> {
    init_logging();
    let dir = DataDir::open(&cli.data_dir())?;
    let mut opts = crate::node::RunOptions::from_config(&dir)?;
    if !args.listen.is_empty() {
        opts.listen = args
            .listen
            .iter()
            .map(|s| {
                s.parse()
                    .with_context(|| format!("--listen {s:?} is not a multiaddr"))
            })
            .collect::<anyhow::Result<_>>()?;
    }
    for b in &args.bootstrap {
        opts.bootstrap.push(
            b.parse()
                .with_context(|| format!("--bootstrap {b:?} is not a multiaddr"))?,
        );
    }
    if args.no_mdns {
        opts.mdns = false;
    }
    runtime()?.block_on(async move {
        let node = crate::node::start(dir, opts).await?;
        tracing::info!(account = %node.account, control = %node.control_addr, "node running; Ctrl-C stops it");
        wait_for_signal().await;
        tracing::info!("stopping");
        node.shutdown().await
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn remote(cli: &Cli) -> anyhow::Result<()> {
    let client = crate::control::ControlClient::from_data_dir(&cli.data_dir())?;
    let json = cli.json;
    runtime()?.block_on(async move {
        match &cli.command {
            Command::Status => {
                let s = client.status().await?;
                print(json, &s, |s| {
                    println!("account      {}", s.account);
                    println!("peer id      {}", s.peer_id);
                    println!("network      {}", s.network);
                    for a in &s.listen {
                        println!("listening    {a}/p2p/{}", s.peer_id);
                    }
                    for a in &s.blob_addrs {
                        println!("blobs on     {a}");
                    }
                    println!("peers        {}", s.connected_peers);
                })
            }
            Command::Offers => {
                let offers = client.offers().await?;
                print(json, &offers, |v| {
                    if v.is_empty() {
                        println!("no fresh offers seen yet");
                    }
                    for o in v {
                        println!(
                            "{}  {:<4} {:<24} {:>10.1} CU/s  {:>8} µ/CU  {} free  {}  (expires in {:.0}s)",
                            &o.provider[..8],
                            o.class,
                            o.device,
                            o.speed_cu_per_s,
                            o.price_micro_per_cu,
                            o.free_slots,
                            o.region,
                            o.expires_in_s
                        );
                    }
                })
            }
            Command::Blob(BlobCommand::Add { file }) => {
                let added = client.add_blob(file).await?;
                print(json, &added, |a| {
                    println!("hash    {}", a.hash);
                    println!("size    {} bytes", a.size);
                    println!("ticket  {}", a.ticket);
                })
            }
            Command::Blob(BlobCommand::Get { source, out }) => {
                let got = client.get_blob(source, out).await?;
                print(json, &got, |g| {
                    println!("wrote {} ({} bytes fetched) to {}", g.hash, g.bytes_fetched, g.out.display());
                })
            }
            _ => unreachable!("only remote commands come here"),
        }
    })
}
