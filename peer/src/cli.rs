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

    /// Log format on stderr: text, or json (one tracing object per line, for
    /// log collectors).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "CLOUDCHAIN_LOG_FORMAT",
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join a network: install its genesis file in the data directory (created,
    /// with a new key, if it does not exist yet; an existing key is kept).
    Join {
        /// The network's genesis file.
        genesis: PathBuf,
    },
    /// Create the data directory: a new secret key (mode 0600) and a commented
    /// config.toml; with --genesis, join that network (on an existing
    /// directory, its key is kept and only the genesis is installed).
    Init {
        /// The network's genesis file (from `cloudchain genesis` or an operator).
        #[arg(long, value_name = "FILE")]
        genesis: Option<PathBuf>,
    },
    /// Create a network: write a genesis signed by this node's key.
    Genesis(GenesisArgs),
    /// Submit a job described by a JOB.toml to the running node.
    Submit {
        /// The job file (see the README for its fields).
        job: PathBuf,
        /// Wait until the job is settled (or fails), printing what happens.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Start a federated job (a file with kind = "federated", see the
    /// README): FedAvg over private data sets that stay with their owners.
    Federate {
        /// The federated job file.
        file: PathBuf,
        /// Wait until it ends, printing what happens.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, default_value_t = 4 * 3600)]
        timeout: u64,
    },
    /// List the running node's federated jobs, or show one (an id or a
    /// unique prefix): its rounds, owners and the ε each spent.
    Federations { id: Option<String> },
    /// List the running node's jobs.
    Jobs,
    /// Show one job (an id or a unique prefix) and what happened to it.
    Job { id: String },
    /// An account's balance and stake (this node's by default).
    Balance { account: Option<String> },
    /// An account's earnings (this node's by default): paid as provider,
    /// minted, oracle fees and slashed, with each credit's date.
    Earnings {
        account: Option<String>,
        /// How many of the latest credits to list.
        #[arg(long, default_value_t = 20)]
        tail: usize,
    },
    /// The committee that finalizes the next checkpoint, the epochs and the
    /// last checkpoints.
    Committee,
    /// Print the link that opens the running node's web dashboard (it carries
    /// the control token: keep it to yourself).
    Dashboard,
    /// The ledger: entry count, finalized epoch, supply and the last entries.
    Ledger {
        /// How many of the latest entries to list.
        #[arg(long, default_value_t = 20)]
        tail: usize,
    },
    /// Run a whole market on loopback: 3 providers, 3 oracles and a requester
    /// train a model on real data and run inference with it, end to end.
    Demo {
        /// Keep the nodes' data directories here (default: a temporary directory).
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
        /// Make one provider fake its results, to watch the committee catch it.
        #[arg(long)]
        faulty_provider: bool,
        /// Tell the federated story: three data owners keep their shards of
        /// the data, a federated job trains across them with DP-SGD, and the
        /// ledger records what each one's privacy budget spent.
        #[arg(long, conflicts_with = "faulty_provider")]
        federated: bool,
    },
    /// Print this node's account id, libp2p PeerId and iroh endpoint id (one key,
    /// three views).
    Id {
        /// Print the account id alone (for scripts: `--balance $(cloudchain id
        /// --account)=100`).
        #[arg(long)]
        account: bool,
    },
    /// Run the node in the foreground until Ctrl-C (or SIGTERM).
    Run(RunArgs),
    /// Run a blob relay for peers behind NATs (iroh-relay, self-signed, no
    /// internet needed) until Ctrl-C; prints the URL and certificate file that
    /// nodes name in `net.relay_urls` and `net.relay_certs`.
    Relay(RelayArgs),
    /// Show the running node's addresses and peers.
    Status,
    /// List the fresh offers the running node has seen.
    Offers,
    /// Content-addressed blobs (models, data sets, results).
    #[command(subcommand)]
    Blob(BlobCommand),
    /// Your own data: import a CSV file as a training data set, inspect one.
    #[command(subcommand)]
    Data(DataCommand),
    /// A trained model (the safetensors file a training job returns): export
    /// it to ONNX, inspect it.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Run a trained model on this machine (CPU): one prediction per row of
    /// DATA, as CSV (`row,label,p_<class>…`, or `row,y`), or under --json one
    /// object per row.
    Predict {
        /// The model file.
        model: PathBuf,
        /// A CSV file with a header line (the model's features are taken by
        /// name, other columns ignored), or a safetensors data set (`x`, else
        /// `x_test`).
        data: PathBuf,
        /// Write the CSV here instead of to stdout.
        #[arg(long, short, value_name = "FILE.csv")]
        out: Option<PathBuf>,
    },
    /// Simulate the market on virtual time and write a report (CSV, SVG, HTML).
    Sim(SimArgs),
    /// Benchmark this device's matrix-product speed (GFLOP/s = compute units per
    /// second): the figure a provider advertises. `bench storage` and
    /// `bench contracts` measure a local swarm instead.
    Bench {
        /// Backend: auto (a real GPU if found, else the CPU), cpu or wgpu.
        #[arg(long, default_value = "auto")]
        backend: String,
        #[command(subcommand)]
        what: Option<BenchWhat>,
    },
    /// Move tokens to another account.
    Transfer {
        /// The receiving account id.
        to: String,
        /// Tokens (up to six decimals).
        tokens: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// Write and read latency by object size, for blobs and for ledger writes
    /// finalized by a 3-oracle committee (a local swarm of 7 nodes).
    Storage {
        /// Object sizes in MB.
        #[arg(long, value_delimiter = ',', default_value = "50,100,200")]
        sizes: Vec<u64>,
    },
    /// Offer-to-signed-contract latency (p50, p95) on a local swarm.
    Contracts {
        #[arg(long, default_value_t = 50)]
        jobs: usize,
    },
}

#[derive(Debug, clap::Args)]
pub struct GenesisArgs {
    /// Where to write the genesis file.
    pub out: PathBuf,
    /// Network name.
    #[arg(long, default_value = "cloudchain-local")]
    pub name: String,
    /// An initial balance, ACCOUNT=TOKENS (repeatable).
    #[arg(long, value_name = "ACCOUNT=TOKENS")]
    pub balance: Vec<String>,
    /// An initial stake (oracles), ACCOUNT=TOKENS (repeatable).
    #[arg(long, value_name = "ACCOUNT=TOKENS")]
    pub stake: Vec<String>,
    /// An initial bond, ACCOUNT=TOKENS (repeatable): a requester's bond backs
    /// its escrows, so providers start its jobs before the escrow is final; a
    /// provider's is what a proven wrong result slashes.
    #[arg(long, value_name = "ACCOUNT=TOKENS")]
    pub bond: Vec<String>,
    /// Epoch length in seconds (a checkpoint each epoch).
    #[arg(long, default_value_t = 600)]
    pub epoch_secs: u64,
    /// Committee size k.
    #[arg(long, default_value_t = 7)]
    pub committee: u16,
    /// Split the market into this many shards by account: each peer hears
    /// and books the offers of its own shard only. Keep 1 up to some hundreds
    /// of providers; about one shard per 500 providers beyond.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=i64::from(protocol::market::MAX_MARKET_SHARDS)))]
    pub market_shards: u16,
}

#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// A built-in scenario (paper-30d, scale-1k, scale-10k, requesters-sweep, faults, smoke,
    /// attack-lazy, attack-units, attack-self-deal, attack-self-deal-split,
    /// attack-flood, attack-whitewash)
    /// or the path of a scenario TOML file.
    #[arg(required_unless_present = "testbed")]
    pub scenario: Option<String>,
    /// Instead of simulating: start N real `cloudchain` processes on loopback
    /// (3 oracles, providers and requesters), run a job per requester through
    /// their control APIs, report the same metrics and stop them.
    #[arg(long, value_name = "N", conflicts_with = "scenario")]
    pub testbed: Option<usize>,
    /// With --testbed: across NATs, in network namespaces made for the run
    /// (root, `ip` and `nft` needed): the committee and the relays on a public
    /// network, every provider and requester in its own home behind its own
    /// NAT router. Reports how each pair connected (hole-punched or relayed)
    /// and the blob throughput.
    #[arg(long, requires = "testbed")]
    pub netns: bool,
    /// With --netns: limit each home's uplink to this many Mbit/s (tc tbf).
    #[arg(long, value_name = "MBIT", requires = "netns")]
    pub rate_mbit: Option<u32>,
    /// With --netns: after the jobs, each requester sends its provider a blob
    /// of this many MiB, to measure throughput.
    #[arg(long, value_name = "MIB", default_value_t = 8, requires = "netns")]
    pub probe_mib: u64,
    /// With --netns: symmetric NATs (a random port per flow), where no hole
    /// can be punched: shows the relayed paths.
    #[arg(long, requires = "netns")]
    pub symmetric_nat: bool,
    /// Seed of the run (default: the scenario's own). Same seed, same result.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where to write the report (default: out/<scenario>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Give each peer (a node core, as always) its own ledger replica, with
    /// real automerge sync between them, instead of lending one converged
    /// replica to each in turn (slower: minutes per simulated day of
    /// `faults`).
    #[arg(long, conflicts_with = "testbed")]
    pub replica_per_peer: bool,
    /// Run an attack scenario (attack-lazy, attack-units, attack-self-deal,
    /// attack-self-deal-split, attack-flood, attack-whitewash) on N seeds,
    /// from --seed (default: the scenario's) up, and print the attacker's net
    /// against an honest provider's; fails if any seed lets the attack pay.
    /// For a scenario with a sweep (requesters-sweep), run each requester
    /// count on N seeds and report the mean and its 95 % confidence interval.
    #[arg(long, value_name = "N", conflicts_with_all = ["testbed", "replica_per_peer"])]
    pub seeds: Option<u64>,
    /// Where the measured figures come from (DP-SGD overhead, storage
    /// latency; they feed the run and Figs. 2 and 6): `auto` measures on
    /// this machine once and caches them (~/.cache/cloudchain/calibration.json),
    /// `model` uses stated model figures instead, or a calibration file.
    /// A scenario that pins a `[calibration]` uses its own.
    #[arg(long, value_name = "auto|model|FILE", default_value = "auto")]
    pub calibration: crate::calibrate::Source,
    /// Measure the calibration afresh, replacing this machine's cache.
    #[arg(long, conflicts_with = "testbed")]
    pub recalibrate: bool,
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
    /// Sell compute (headless): benchmark the device at start, then publish and
    /// refresh offers priced from `provider.price_floor`.
    #[arg(long)]
    pub provider: bool,
    /// Serve on the oracle committee when drawn (needs stake): probe providers,
    /// verify receipts by re-execution, sign verdicts and checkpoints.
    #[arg(long)]
    pub oracle: bool,
    /// Cheat as a provider (for testing a committee; you will be caught).
    #[arg(long, hide = true, value_enum, default_value_t = crate::work::Cheat::None)]
    pub cheat: crate::work::Cheat,
    /// Short market timeouts (grace 5 s, dispute window 1 s): for local testbeds
    /// and experiments, not for a real network.
    #[arg(long)]
    pub quick_timing: bool,
    /// An address others reach this node on (repeatable), e.g. a public IP
    /// with its port; added to `net.external`.
    #[arg(long, value_name = "MULTIADDR")]
    pub external_addr: Vec<String>,
    /// Relay libp2p connections for peers behind NATs (give --external-addr).
    #[arg(long)]
    pub relay_server: bool,
    /// The blob endpoint's UDP address; replaces `net.blob_bind`.
    #[arg(long, value_name = "IP:PORT")]
    pub blob_bind: Option<String>,
    /// A blob relay to use (repeatable; `cloudchain relay` prints its URL);
    /// replaces `net.relay_urls`.
    #[arg(long, value_name = "URL")]
    pub relay_url: Vec<String>,
    /// A relay certificate to trust (repeatable); replaces `net.relay_certs`.
    #[arg(long, value_name = "FILE")]
    pub relay_cert: Vec<PathBuf>,
    /// Ask no router for port mappings (UPnP, PCP, NAT-PMP).
    #[arg(long)]
    pub no_port_mapping: bool,
    /// Where to serve Prometheus metrics (`/metrics`); "off" serves none;
    /// replaces `net.metrics`.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics: Option<String>,
    /// Also serve a blob relay on this address (as `cloudchain relay --bind
    /// IP` would, certificate in the data directory), and use it.
    #[arg(long, value_name = "IP")]
    pub blob_relay: Option<std::net::IpAddr>,
}

#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// The address to serve on (every port below is on it).
    #[arg(long, value_name = "IP")]
    pub bind: std::net::IpAddr,
    /// The name clients use for the relay, an IP address or host name
    /// (repeatable; the first goes in the URL). Default: the --bind address.
    #[arg(long, value_name = "NAME")]
    pub name: Vec<String>,
    /// The HTTPS port of the relay protocol.
    #[arg(long, default_value_t = crate::relay::DEFAULT_HTTPS_PORT)]
    pub https_port: u16,
    /// The plain HTTP port (probes).
    #[arg(long, default_value_t = crate::relay::DEFAULT_HTTP_PORT)]
    pub http_port: u16,
    /// Where the certificate and key are kept (made on the first run).
    /// Default: the data directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BlobCommand {
    /// Add a file to the running node's store; prints its hash and a ticket that
    /// iroh's own tools accept.
    Add {
        /// The file or directory to add (a directory becomes a collection).
        file: PathBuf,
        /// Add a single file as a one-file collection, the form iroh's
        /// file-sending tools (sendme) receive.
        #[arg(long)]
        collection: bool,
    },
    /// Fetch a blob by hash (held locally) or by ticket (from the peer in it) and
    /// write it to OUT.
    Get {
        /// A 64-hex-digit BLAKE3 hash, or a blob ticket.
        source: String,
        /// Where to write the blob (for a collection ticket: a new or empty
        /// directory for its files).
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Turn a CSV file (a header line, then one row per line) into the
    /// safetensors a training job takes: every column but the label is a
    /// numeric feature; the label's distinct values are the classes. The file
    /// records the feature and class names and the CSV file's hash.
    Import {
        /// The CSV file.
        file: PathBuf,
        /// The label column's name.
        #[arg(long)]
        label: String,
        /// What to learn: `classify` (the label's values are the classes) or
        /// `regress` (the label is a number; with --standardize it is scaled
        /// too, and `target_mean`/`target_scale` give it back).
        #[arg(long, default_value = "classify")]
        task: String,
        /// The share of rows held out as the test split (0 to 0.9); the split
        /// is fixed by the file's contents.
        #[arg(long, default_value_t = 0.2)]
        test_share: f64,
        /// Scale each feature to mean 0 and deviation 1 over the training rows
        /// (the means and deviations are kept in the file's metadata).
        #[arg(long)]
        standardize: bool,
        /// Where to write (default: the CSV file's name with `.safetensors`).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Print a safetensors file's tensors (dtype, shape) and metadata, reading
    /// only its header.
    Inspect {
        /// The file.
        file: PathBuf,
    },
    /// Offer a private data set to federated jobs: the node keeps a copy in
    /// its data directory and trains on it where it is; its offers state its
    /// schema, rows and the privacy budget left, never its rows. A provider
    /// node offers it from its next start.
    Offer {
        /// The data set (safetensors with `x` and `y`, as `data import`
        /// writes).
        file: PathBuf,
        /// The ε all jobs together may spend on it, for good.
        #[arg(long)]
        budget_epsilon: f64,
        /// The ε the jobs of any one requester may spend (default: all of it).
        #[arg(long)]
        per_requester: Option<f64>,
        /// The largest δ a job may state.
        #[arg(long, default_value_t = 1e-5)]
        delta: f64,
    },
    /// List the data sets this node offers, with the budgets set.
    Held,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Write the model as an ONNX file that standard runtimes (onnxruntime and
    /// the others) run. Input `x`: float [rows, features], the raw features
    /// (the model's standardization is in the graph). Outputs: a classifier's
    /// `logits` and `probabilities` [rows, classes] and `label` (int64 class
    /// index, named by the `class_names` metadata); a regression's `y` [rows, 1].
    Export {
        /// The model file.
        model: PathBuf,
        /// Where to write the ONNX file.
        #[arg(long, value_name = "OUT")]
        onnx: PathBuf,
    },
    /// Show a model's layers, task, features, classes, scaler and the rest of
    /// its metadata (such as its metrics).
    Inspect {
        /// The model file.
        model: PathBuf,
    },
}

/// The largest CSV file `data import` and `predict` read.
const MAX_CSV_BYTES: u64 = 4 << 30;
/// The largest model file read (ONNX holds 2 GiB).
const MAX_MODEL_BYTES: u64 = 4 << 30;

/// A whole file, refused past `max` bytes before it is read.
fn read_bounded(file: &std::path::Path, max: u64) -> anyhow::Result<Vec<u8>> {
    let size = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    if size > max {
        anyhow::bail!("{} is {size} bytes; at most {max} are read", file.display());
    }
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}

fn read_model(file: &std::path::Path) -> anyhow::Result<compute::predict::Model> {
    let bytes = read_bounded(file, MAX_MODEL_BYTES)?;
    compute::predict::Model::from_safetensors(&bytes)
        .with_context(|| format!("{} is not a usable model", file.display()))
}

fn model(json: bool, cmd: &ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Export { model, onnx } => {
            let m = read_model(model)?;
            let proto = compute::onnx::model_proto(&m)
                .with_context(|| format!("{} cannot be exported", model.display()))?;
            let bytes = compute::onnx::encode(&proto);
            std::fs::write(onnx, &bytes)
                .with_context(|| format!("cannot write {}", onnx.display()))?;
            let graph = proto.graph.unwrap_or_default();
            let io = |v: &[compute::onnx::proto::ValueInfoProto]| -> Vec<String> {
                v.iter().map(compute::onnx::describe).collect()
            };
            let view = serde_json::json!({
                "file": onnx,
                "bytes": bytes.len(),
                "opset": compute::onnx::OPSET,
                "ir_version": compute::onnx::IR_VERSION,
                "inputs": io(&graph.input),
                "outputs": io(&graph.output),
                "class_names": (m.info.task == compute::predict::Task::Classify)
                    .then(|| m.info.class_labels()),
            });
            print(json, &view, |_| {
                println!(
                    "wrote     {} ({} bytes; ONNX opset {}, IR version {})",
                    onnx.display(),
                    bytes.len(),
                    compute::onnx::OPSET,
                    compute::onnx::IR_VERSION
                );
                let raw = if m.info.scaler.is_some() {
                    ": raw features, standardized in the graph"
                } else {
                    ""
                };
                println!("input     {}{raw}", io(&graph.input).join(", "));
                println!("outputs   {}", io(&graph.output).join(", "));
                if m.info.task == compute::predict::Task::Classify {
                    println!("labels    {}", m.info.class_labels().join(", "));
                }
            })
        }
        ModelCommand::Inspect { model } => {
            let m = read_model(model)?;
            let i = &m.info;
            let view = serde_json::json!({
                "params": m.mlp.params(),
                "info": i,
            });
            print(json, &view, |_| {
                let layers: Vec<String> = i.layers.iter().map(ToString::to_string).collect();
                println!(
                    "layers    {} ({} parameters)",
                    layers.join(","),
                    m.mlp.params()
                );
                println!("task      {}", i.task.name());
                match &i.feature_names {
                    Some(n) => println!("features  {} ({})", n.len(), n.join(", ")),
                    None => println!("features  {} (unnamed)", i.features()),
                }
                match (i.task, &i.class_names) {
                    (compute::predict::Task::Classify, Some(_)) => {
                        let names = i.class_labels();
                        println!("classes   {} ({})", names.len(), names.join(", "));
                    }
                    (compute::predict::Task::Classify, None) => {
                        println!("classes   {} (unnamed)", i.outputs());
                    }
                    _ => {}
                }
                match &i.scaler {
                    Some(s) => {
                        println!("scaler    inputs standardized: (x − mean)/std");
                        println!("  mean    {:?}", s.mean);
                        println!("  std     {:?}", s.std);
                    }
                    None => println!("scaler    none: inputs are taken as they are"),
                }
                if let Some(t) = i.target {
                    println!("target    y = output × {} + {}", t.scale, t.mean);
                }
                for (k, v) in &i.metadata {
                    if compute::predict::KNOWN_KEYS.contains(&k.as_str()) {
                        continue;
                    }
                    // The job's metrics, as scores rather than JSON.
                    match serde_json::from_str::<compute::Metrics>(v) {
                        Ok(m) if k == "metrics" => {
                            println!("{k:<9} {}", m.summary());
                            // A standardized target's error, in its own units.
                            if let (Some(t), Some(e)) = (i.target, m.test_rmse.or(m.train_rmse)) {
                                println!("{:<9} RMSE {:.4} in the target's units", "", e * t.scale);
                            }
                        }
                        _ => println!("{k:<9} {v}"),
                    }
                }
            })
        }
    }
}

fn predict(
    json: bool,
    model: &std::path::Path,
    data: &std::path::Path,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let m = read_model(model)?;
    let bytes = read_bounded(data, MAX_CSV_BYTES)?;
    let inputs = compute::predict::read_inputs(&bytes, &m.info)
        .with_context(|| format!("{} cannot be read for this model", data.display()))?;
    let p = m.predict(&inputs.x, inputs.rows, inputs.scale)?;
    let Some(out) = out else {
        if json {
            println!("{}", serde_json::to_string_pretty(&p)?);
        } else {
            use std::io::Write;
            std::io::stdout().lock().write_all(&p.to_csv()?)?;
        }
        return Ok(());
    };
    std::fs::write(out, p.to_csv()?).with_context(|| format!("cannot write {}", out.display()))?;
    match &p {
        compute::predict::Predictions::Classes {
            class_names,
            labels,
            ..
        } => {
            let mut n = vec![0usize; class_names.len()];
            for l in labels {
                n[*l as usize] += 1;
            }
            let view = serde_json::json!({
                "file": out,
                "rows": p.rows(),
                "predicted": class_names.iter().zip(&n)
                    .map(|(c, n)| serde_json::json!({ "label": c, "rows": n }))
                    .collect::<Vec<_>>(),
            });
            print(json, &view, |_| {
                println!("wrote     {} ({} rows)", out.display(), p.rows());
                let by: Vec<String> = class_names
                    .iter()
                    .zip(&n)
                    .map(|(c, n)| format!("{c} {n}"))
                    .collect();
                println!("predicted {}", by.join(", "));
            })
        }
        compute::predict::Predictions::Values { y } => {
            let lo = y.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = y.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let view = serde_json::json!({
                "file": out, "rows": p.rows(), "y_min": lo, "y_max": hi,
            });
            print(json, &view, |_| {
                println!("wrote     {} ({} rows)", out.display(), p.rows());
                println!("y         from {lo} to {hi}");
            })
        }
    }
}

fn data(json: bool, cmd: &DataCommand, data_dir: &std::path::Path) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Import {
            file,
            label,
            task,
            test_share,
            standardize,
            out,
        } => {
            let task: compute::Task = task.parse()?;
            let bytes = read_bounded(file, MAX_CSV_BYTES)?;
            let name = file
                .file_stem()
                .map_or_else(|| "data".to_string(), |s| s.to_string_lossy().into_owned());
            let got = compute::import::import_csv(
                &bytes,
                &compute::import::ImportOptions {
                    label: label.clone(),
                    test_share: *test_share,
                    standardize: *standardize,
                    name,
                    task,
                },
            )
            .with_context(|| format!("{} cannot be imported", file.display()))?;
            let out = out
                .clone()
                .unwrap_or_else(|| file.with_extension("safetensors"));
            std::fs::write(&out, &got.bytes)
                .with_context(|| format!("cannot write {}", out.display()))?;
            let view = serde_json::json!({
                "file": out,
                "rows_train": got.train_rows,
                "rows_test": got.test_rows,
                "features": got.features,
                "task": task.name(),
                "classes": got.classes,
                "source_blake3": got.source,
            });
            print(json, &view, |_| {
                println!("wrote     {}", out.display());
                println!(
                    "rows      {} to train, {} to test",
                    got.train_rows, got.test_rows
                );
                println!(
                    "features  {} ({})",
                    got.features.len(),
                    got.features.join(", ")
                );
                let outputs = match task {
                    compute::Task::Classify => {
                        println!(
                            "classes   {} ({})",
                            got.classes.len(),
                            got.classes.join(", ")
                        );
                        got.classes.len()
                    }
                    compute::Task::Regress => {
                        println!("target    {label} (a number)");
                        1
                    }
                };
                println!(
                    "train it  a job file with kind = \"train\", task = \"{}\", dataset = \"{}\" \
                     and a first layer of {} inputs, a last of {outputs} output{}",
                    task.name(),
                    out.display(),
                    got.features.len(),
                    if outputs == 1 { "" } else { "s" }
                );
            })
        }
        DataCommand::Offer {
            file,
            budget_epsilon,
            per_requester,
            delta,
        } => {
            let budget = crate::held::Budget {
                epsilon: *budget_epsilon,
                per_requester: per_requester.unwrap_or(*budget_epsilon),
                delta: *delta,
            };
            let h = crate::held::offer(data_dir, file, budget)?;
            print(json, &held_view(&h), |_| {
                println!("held      {} as {}", file.display(), h.path.display());
                print_held(&h);
                println!(
                    "offered   from the provider node's next start (`cloudchain run --provider`)"
                );
            })
        }
        DataCommand::Held => {
            let all = crate::held::load(data_dir)?;
            let view: Vec<_> = all.iter().map(held_view).collect();
            print(json, &view, |_| {
                if all.is_empty() {
                    println!("no data set held (`cloudchain data offer FILE --budget-epsilon E`)");
                }
                for h in &all {
                    println!("{}", h.name);
                    print_held(h);
                }
            })
        }
        DataCommand::Inspect { file } => {
            let h = compute::tensors::read_header(file)?;
            let view = serde_json::json!({
                "tensors": h.tensors.iter().map(|(n, d, s)| serde_json::json!({
                    "name": n, "dtype": d, "shape": s,
                })).collect::<Vec<_>>(),
                "metadata": h.metadata,
                "data_bytes": h.data_bytes,
            });
            print(json, &view, |_| {
                for (n, d, s) in &h.tensors {
                    println!("{n:<10} {d:<5} {s:?}");
                }
                for (k, v) in &h.metadata {
                    println!("{k:<18} {v}");
                }
            })
        }
    }
}

fn held_view(h: &crate::held::Held) -> serde_json::Value {
    let o = &h.offer;
    serde_json::json!({
        "name": h.name, "path": h.path, "id": hex::encode(o.id.0),
        "schema": hex::encode(o.schema.0), "rows": o.rows, "features": o.features,
        "classes": o.classes, "bytes": o.bytes, "budget_epsilon": o.epsilon_left,
        "per_requester_epsilon": o.epsilon_per_requester, "delta": o.delta,
    })
}

fn print_held(h: &crate::held::Held) {
    let o = &h.offer;
    println!("id        {}", hex::encode(o.id.0));
    println!("schema    {}", hex::encode(o.schema.0));
    println!(
        "shape     {} rows, {} features, {} output{}",
        o.rows,
        o.features,
        o.classes,
        if o.classes == 1 { "" } else { "s" }
    );
    println!(
        "budget    ε {} in all, {} per requester, δ ≤ {:e}",
        o.epsilon_left, o.epsilon_per_requester, o.delta
    );
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

/// Logs go to stderr (stdout is the command's output), coloured only on a
/// terminal; `CLOUDCHAIN_LOG_FORMAT=json` writes one JSON object a line.
/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The format `run` was given, for the commands that log.
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            // AutoNAT's server warns whenever a dial-back to a peer behind
            // a NAT times out, which is what it is there to find out.
            "info,libp2p=warn,libp2p_kad=error,libp2p_autonat=error,iroh=warn,iroh_blobs=warn",
        )
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    let _ = if LOG_FORMAT.get() == Some(&LogFormat::Json) {
        b.json().try_init()
    } else {
        b.with_ansi(std::io::stderr().is_terminal()).try_init()
    };
}

/// Let a closed pipe end the process quietly (the default for Unix tools).
#[allow(unsafe_code)] // one libc call, no Rust-side invariant at stake
pub fn quiet_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default has no
    // preconditions; it runs first thing in main, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Parse `args` (the program's name first) and run them, as the binary does:
/// for tests that drive the command line.
pub fn run_args<T: Into<std::ffi::OsString> + Clone>(
    args: impl IntoIterator<Item = T>,
) -> anyhow::Result<()> {
    run(Cli::try_parse_from(args)?)
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let _ = LOG_FORMAT.set(cli.log_format);
    match &cli.command {
        Command::Run(args) => return run_node(&cli, args),
        Command::Status
        | Command::Offers
        | Command::Blob(_)
        | Command::Submit { .. }
        | Command::Federate { .. }
        | Command::Federations { .. }
        | Command::Jobs
        | Command::Job { .. }
        | Command::Balance { .. }
        | Command::Earnings { .. }
        | Command::Committee
        | Command::Dashboard
        | Command::Ledger { .. }
        | Command::Transfer { .. } => return remote(&cli),
        Command::Genesis(args) => return genesis(&cli, args),
        Command::Demo {
            keep,
            faulty_provider,
            federated,
        } => return demo(cli.json, keep.clone(), *faulty_provider, *federated),
        Command::Sim(args) => return sim(cli.json, args),
        Command::Relay(args) => return relay(&cli, args),
        Command::Bench { backend, what } => return bench(cli.json, backend, what.as_ref()),
        Command::Data(cmd) => return data(cli.json, cmd, &cli.data_dir()),
        Command::Model(cmd) => return model(cli.json, cmd),
        Command::Predict { model, data, out } => {
            return predict(cli.json, model, data, out.as_deref());
        }
        Command::Init { .. } | Command::Join { .. } | Command::Id { .. } => {}
    }
    match cli.command {
        Command::Init { .. } | Command::Join { .. } => {
            let genesis = match &cli.command {
                Command::Init { genesis } => genesis.clone(),
                Command::Join { genesis } => Some(genesis.clone()),
                _ => None,
            };
            let path = cli.data_dir();
            let g = genesis.as_deref().map(crate::genesis::load).transpose()?;
            // A node that ran `init` to learn its account (for the genesis)
            // joins with the key it has.
            let keep = g.is_some() && path.join(crate::config::KEY_FILE).exists();
            let dir = if keep {
                DataDir::open(&path)?
            } else {
                DataDir::init(&path)?
            };
            if let Some(g) = &g {
                dir.install_genesis(g)?;
            }
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "data_dir": dir.path,
                        "account": dir.identity.account().to_string(),
                        "network": g.as_ref().map(|g| g.network().to_string()),
                        "key_kept": keep,
                    })
                );
            } else {
                if keep {
                    println!("joined   {} (its key kept)", dir.path.display());
                } else {
                    println!("initialized {}", dir.path.display());
                }
                if let Some(g) = &g {
                    println!("network  {} ({})", g.network(), g.genesis().name);
                }
                println!("account  {}", dir.identity.account());
                println!(
                    "config   {}",
                    dir.path.join(crate::config::CONFIG_FILE).display()
                );
            }
        }
        Command::Id { account } => {
            let path = cli.data_dir();
            let dir = DataDir::open(&path).with_context(|| "cannot read this node's identity")?;
            let id = &dir.identity;
            if account && !cli.json {
                println!("{}", id.account());
            } else if cli.json {
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
    for e in &args.external_addr {
        opts.external.push(
            e.parse()
                .with_context(|| format!("--external-addr {e:?} is not a multiaddr"))?,
        );
    }
    opts.relay_server |= args.relay_server;
    if let Some(b) = &args.blob_bind {
        opts.blob.bind = b
            .parse()
            .with_context(|| format!("--blob-bind {b:?} is not an IP:PORT"))?;
    }
    if !args.relay_url.is_empty() {
        let urls = args
            .relay_url
            .iter()
            .map(|u| {
                u.parse()
                    .with_context(|| format!("--relay-url {u:?} is not a URL"))
            })
            .collect::<anyhow::Result<_>>()?;
        let ca = args
            .relay_cert
            .iter()
            .map(|f| crate::relay::read_cert(f))
            .collect::<anyhow::Result<_>>()?;
        opts.blob.relays = crate::blobs::Relays::Own { urls, ca };
    } else if !args.relay_cert.is_empty() {
        anyhow::bail!("--relay-cert needs --relay-url");
    }
    if let Some(m) = &args.metrics {
        opts.metrics = match m.as_str() {
            "off" => None,
            m => Some(
                m.parse()
                    .with_context(|| format!("--metrics {m:?} is not an IP:PORT"))?,
            ),
        };
    }
    if args.no_port_mapping {
        opts.upnp = false;
        opts.blob.portmapper = false;
    }
    opts.provider = args.provider;
    opts.oracle = args.oracle;
    opts.cheat = args.cheat;
    if args.quick_timing {
        opts.timing = crate::node::Timing::quick();
    }
    let blob_relay = args.blob_relay.map(|ip| crate::relay::RelayOptions {
        bind: ip,
        names: vec![ip.to_string()],
        https_port: crate::relay::DEFAULT_HTTPS_PORT,
        http_port: crate::relay::DEFAULT_HTTP_PORT,
        quic_port: crate::relay::QAD_PORT,
        dir: dir.path.clone(),
    });
    runtime()?.block_on(async move {
        // A relay-server node can carry blobs too: the relay runs in this
        // process, and the node uses it beside any relays the config names.
        let relay = match &blob_relay {
            Some(r) => {
                let server = crate::relay::spawn(r).await?;
                tracing::info!(url = %server.url, cert = %server.cert.display(), "blob relay serving");
                let cert = crate::relay::read_cert(&server.cert)?;
                opts.blob.relays = match std::mem::take(&mut opts.blob.relays) {
                    crate::blobs::Relays::Own { mut urls, mut ca } => {
                        urls.insert(0, server.url.clone());
                        ca.push(cert);
                        crate::blobs::Relays::Own { urls, ca }
                    }
                    _ => crate::blobs::Relays::Own {
                        urls: vec![server.url.clone()],
                        ca: vec![cert],
                    },
                };
                Some(server)
            }
            None => None,
        };
        let node = crate::node::start(dir, opts).await?;
        tracing::info!(account = %node.account, control = %node.control_addr, "node running; Ctrl-C stops it");
        // Under systemd (Type=notify): ready once the node serves. Without
        // NOTIFY_SOCKET this does nothing.
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            tracing::warn!(%e, "cannot tell systemd the node is ready");
        }
        wait_for_signal().await;
        tracing::info!("stopping");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        node.shutdown().await?;
        if let Some(r) = relay {
            r.shutdown().await?;
        }
        Ok(())
    })
}

fn relay(cli: &Cli, args: &RelayArgs) -> anyhow::Result<()> {
    init_logging();
    let names = if args.name.is_empty() {
        vec![args.bind.to_string()]
    } else {
        args.name.clone()
    };
    let opts = crate::relay::RelayOptions {
        bind: args.bind,
        names,
        https_port: args.https_port,
        http_port: args.http_port,
        quic_port: crate::relay::QAD_PORT,
        dir: args.dir.clone().unwrap_or_else(|| cli.data_dir()),
    };
    runtime()?.block_on(async move {
        let server = crate::relay::spawn(&opts).await?;
        #[derive(serde::Serialize)]
        struct Up<'a> {
            url: String,
            cert: &'a std::path::Path,
            https: Option<std::net::SocketAddr>,
            http: Option<std::net::SocketAddr>,
            quic: Option<std::net::SocketAddr>,
        }
        let up = Up {
            url: server.url.to_string(),
            cert: &server.cert,
            https: server.https,
            http: server.http,
            quic: server.quic,
        };
        print(cli.json, &up, |u| {
            println!("relay: {}", u.url);
            println!("certificate: {}", u.cert.display());
            println!(
                "nodes: relay_urls = [\"{}\"], relay_certs = [\"{}\"] in [net]",
                u.url,
                u.cert.display()
            );
        })?;
        wait_for_signal().await;
        tracing::info!("stopping the relay");
        server.shutdown().await
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

fn bench(json: bool, backend: &str, what: Option<&BenchWhat>) -> anyhow::Result<()> {
    match what {
        Some(BenchWhat::Storage { sizes }) => {
            let rows = runtime()?.block_on(crate::netbench::storage(sizes))?;
            return print(json, &rows, |rows| {
                println!(
                    "storage latency on a 7-node loopback swarm (3-oracle committee, 2 s epochs)"
                );
                println!(
                    "{:>8}  {:>12} {:>12} {:>16} {:>16}",
                    "size", "blob write", "blob read", "ledger write", "ledger read"
                );
                for r in rows {
                    println!(
                        "{:>5} MB  {:>10.3} s {:>10.3} s {:>14.3} s {:>14.3} s",
                        r.size_mb, r.blob_write_s, r.blob_read_s, r.ledger_write_s, r.ledger_read_s
                    );
                }
            });
        }
        Some(BenchWhat::Contracts { jobs }) => {
            let l = runtime()?.block_on(crate::netbench::contracts((*jobs).max(1)))?;
            return print(json, &l, |l| {
                println!(
                    "offer-to-signed-contract latency over {} jobs on a 7-node loopback swarm",
                    l.jobs
                );
                println!(
                    "p50 {:.1} ms   p95 {:.1} ms   max {:.1} ms",
                    l.p50_ms, l.p95_ms, l.max_ms
                );
            });
        }
        None => {}
    }
    let pref = match backend {
        "auto" => compute::BackendPreference::Auto,
        "cpu" => compute::BackendPreference::Cpu,
        "wgpu" => compute::BackendPreference::Wgpu,
        other => anyhow::bail!("--backend {other:?}: use auto, cpu or wgpu"),
    };
    let sel = compute::select_backend(pref)?;
    let b = compute::bench::device_gflops(&*sel.backend)?;
    let t = compute::selftest::run(&*sel.backend)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "backend": b.backend.to_string(),
                "reason": sel.reason,
                "n": b.n,
                "gflops": b.gflops,
                "compute_units_per_s": b.gflops,
                "exact": t.exact,
                "selftest": t.to_string(),
            }))?
        );
    } else {
        println!("backend   {}", b.backend);
        println!("why       {}", sel.reason);
        println!("product   {n}×{n} f32, {} timed", b.reps, n = b.n);
        println!(
            "speed     {:.1} GFLOP/s = {:.1} compute units per second",
            b.gflops, b.gflops
        );
        println!(
            "exact     {}: {t}",
            if t.exact {
                "yes, results are checked bit for bit"
            } else {
                "no, results are checked within the tolerance"
            }
        );
    }
    Ok(())
}

fn testbed_nat(json: bool, n: usize, args: &SimArgs) -> anyhow::Result<()> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("out").join(format!("testbed-nat-{n}")));
    let out = std::path::absolute(&out)?;
    let exe = std::env::current_exe().context("cannot find the cloudchain binary")?;
    let opts = crate::testbed::nat::NatOptions {
        processes: n,
        rate_mbit: args.rate_mbit,
        probe_mb: args.probe_mib,
        symmetric: args.symmetric_nat,
    };
    let rt = runtime()?;
    let r = rt.block_on(async {
        // Ctrl-C or SIGTERM: the run is dropped, which stops its processes
        // and deletes its namespaces.
        tokio::select! {
            r = crate::testbed::nat::run(&exe, &opts, &out, |s| {
                if !json {
                    println!("testbed   {s}");
                }
            }) => r,
            _ = wait_for_signal() => Err(anyhow::anyhow!("interrupted; namespaces and processes removed")),
        }
    })?;
    print(json, &r, |r| {
        println!(
            "processes     {} ({} homes behind {}NAT{})",
            r.processes,
            r.homes,
            if r.symmetric_nat { "symmetric " } else { "" },
            r.rate_mbit
                .map(|m| format!(", uplinks at {m} Mbit/s"))
                .unwrap_or_default()
        );
        for p in &r.pairs {
            println!(
                "{} ↔ {}: job {} {}; libp2p {} ({} hole punches)",
                p.requester,
                p.provider,
                &p.job[..p.job.len().min(12)],
                p.job_state,
                p.libp2p,
                p.hole_punches
            );
            for a in &p.libp2p_addrs {
                println!("    libp2p connection to {a}");
            }
            for f in &p.fetches {
                println!(
                    "    {:<11} fetched by {:<12} {:>10} bytes in {:>6.2} s = {:>7.1} Mbit/s over iroh, {}",
                    f.what, f.by, f.bytes, f.secs, f.mbit_per_s, f.path
                );
            }
        }
        println!(
            "guard drops   {} (packets headed out of the testbed)",
            r.guard_drops
        );
        println!("wall time     {:.1} s; JSON in {}", r.wall_s, out.display());
    })?;
    let failed = r.pairs.iter().filter(|p| !p.job_ok).count();
    if failed > 0 || r.pairs.is_empty() {
        anyhow::bail!("{failed} of {} jobs did not complete", r.pairs.len());
    }
    Ok(())
}

fn testbed(json: bool, n: usize, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let out = out
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("out").join(format!("testbed-{n}")));
    let exe = std::env::current_exe().context("cannot find the cloudchain binary")?;
    let r = runtime()?.block_on(crate::testbed::run(&exe, n, &out, |s| {
        if !json {
            println!("testbed   {s}");
        }
    }))?;
    print(json, &r, |r| {
        println!(
            "processes     {} ({} oracles, {} providers, {} requesters), started in {:.1} s",
            r.processes, r.oracles, r.providers, r.requesters, r.startup_s
        );
        println!(
            "jobs          {} submitted, {} settled ok",
            r.jobs_submitted, r.jobs_ok
        );
        println!("SLA           {:.1} % compliant", r.sla_compliance * 100.0);
        println!("throughput    {:.3} jobs/s", r.throughput_jobs_per_s);
        println!(
            "latency       p50 {:.1} s, p95 {:.1} s (submit → settled)",
            r.latency_p50_s, r.latency_p95_s
        );
        println!(
            "contracts     p50 {:.0} ms (submit → signed contract)",
            r.contract_p50_ms
        );
        println!(
            "tokens        Gini {:.3} over provider earnings {:?} µ",
            r.gini_earnings, r.provider_earnings
        );
        println!(
            "fairness      Jain {:.3} over requesters' latencies",
            r.jain_latency
        );
        println!(
            "wall time     {:.1} s; CSV and JSON in {}",
            r.wall_s,
            out.display()
        );
    })?;
    if r.jobs_ok < r.jobs_submitted {
        anyhow::bail!(
            "{} of {} jobs did not complete",
            r.jobs_submitted - r.jobs_ok,
            r.jobs_submitted
        );
    }
    Ok(())
}

fn sim(json: bool, args: &SimArgs) -> anyhow::Result<()> {
    if let Some(n) = args.testbed {
        if args.netns {
            return testbed_nat(json, n, args);
        }
        return testbed(json, n, args.out.as_deref());
    }
    let Some(scenario) = &args.scenario else {
        anyhow::bail!("give a scenario or --testbed N");
    };
    let mut sc = simnet::Scenario::load(scenario)?;
    sc.replica_per_peer |= args.replica_per_peer;
    let seed = args.seed.unwrap_or(sc.seed);
    if let Some(n) = args.seeds {
        match sc.sweep.as_mut() {
            Some(sweep) if sc.attack.is_none() => {
                sweep.seeds = u32::try_from(n)
                    .ok()
                    .filter(|k| (1..=simnet::scenario::MAX_SWEEP_SEEDS).contains(k))
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--seeds {n}: a sweep runs 1 to {} seeds",
                            simnet::scenario::MAX_SWEEP_SEEDS
                        )
                    })?;
            }
            _ => return attack_seeds(json, &sc, seed, n),
        }
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("out").join(&sc.name));
    sc.calibration =
        crate::calibrate::for_scenario(&sc, &args.calibration, args.recalibrate, |l| {
            eprintln!("{l}")
        })
        .context(
            "the calibration step failed (`--calibration model` runs on model figures instead)",
        )?;
    let bar = indicatif::ProgressBar::new(1000);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:28} [{elapsed_precise}] {wide_bar} {percent:>3}%",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let mut stage = String::new();
    // Off a terminal the bar draws nothing: a line every tenth instead.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut tenth = 0;
    let outcome = simnet::report::run_all(&sc, seed, |s, share| {
        if s != stage {
            stage = s.to_string();
            bar.set_message(stage.clone());
            tenth = 0;
            if !tty {
                eprintln!("{stage}: started");
            }
        }
        bar.set_position((share * 1000.0) as u64);
        let now = (share * 10.0).floor() as u32;
        if !tty && now > tenth {
            tenth = now;
            let of = if stage.starts_with("sweep") {
                "of the runs"
            } else {
                "of the simulated time"
            };
            eprintln!(
                "{stage}: {}% {of}, {:.0} s",
                now * 10,
                started.elapsed().as_secs_f64()
            );
        }
    });
    bar.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();
    let page = simnet::report::write_report(&outcome, &out)?;
    let s = &outcome.summary;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "summary": s,
                "sweep": outcome.sweep.iter().map(|p| {
                    let (o, x, u) = (p.offered_per_h(), p.settled_per_h(), p.utilization());
                    serde_json::json!({
                        "requesters": p.requesters,
                        "seeds": p.runs.iter().map(|(k, _)| k).collect::<Vec<_>>(),
                        "offered_jobs_per_h": o.mean,
                        "settled_jobs_per_h": x.mean,
                        "settled_ci95": x.ci95,
                        "utilization": u.mean,
                        "utilization_ci95": u.ci95,
                        "contracted_share": p.contracted_share().mean,
                        "utilization_by_class": p.utilization_by_class(),
                    })
                }).collect::<Vec<_>>(),
                "knee_requesters": simnet::report::knee(&outcome.sweep),
                "report": page,
                "wall_s": wall,
                "digest": outcome.main.digest().to_string(),
            }))?
        );
        return Ok(());
    }
    println!(
        "scenario      {} (seed {seed}), {} days, {} providers, {} requesters",
        sc.name, s.days, s.providers, s.requesters
    );
    println!("driver        {}", simnet::report::driver_line(&sc));
    println!(
        "jobs          {} submitted, {} settled",
        s.jobs_submitted, s.jobs_settled
    );
    println!(
        "throughput    {:.2} jobs/h, {:.1} CU/s",
        s.throughput_jobs_per_s * 3600.0,
        s.throughput_cu_per_s
    );
    println!("SLA           {:.2} % compliant", s.sla_compliance * 100.0);
    println!("utilization   {:.1} %", s.utilization * 100.0);
    println!(
        "latency       p50 {:.0} s, p95 {:.0} s, p99 {:.0} s",
        s.latency_p50_s, s.latency_p95_s, s.latency_p99_s
    );
    println!("tokens        Gini {:.3}", s.gini_earnings);
    for (g, j) in &s.jain_by_group {
        println!("fairness      Jain {j:.3} in requester groups of {g}");
    }
    println!(
        "fairness      Jain {:.3} over providers' work per slot",
        s.jain_providers
    );
    for p in &outcome.sweep {
        let (o, x, u) = (p.offered_per_h(), p.settled_per_h(), p.utilization());
        println!(
            "sweep         {:>5} requesters: {:.1} ± {:.1} jobs/h settled of {:.1} offered, {:.0} % contracted, utilization {:.1} ± {:.1} % ({} seeds)",
            p.requesters,
            x.mean,
            x.ci95,
            o.mean,
            p.contracted_share().mean * 100.0,
            u.mean * 100.0,
            u.ci95 * 100.0,
            p.runs.len()
        );
    }
    if let Some(p) = outcome.sweep.last() {
        let classes: Vec<String> = p
            .utilization_by_class()
            .iter()
            .map(|(c, u)| format!("{c} {:.0} %", u * 100.0))
            .collect();
        println!(
            "sweep         utilization by class at {} requesters: {}",
            p.requesters,
            classes.join(", ")
        );
    }
    if let (Some(e), Some(first), Some(last)) = (
        simnet::report::scaling_efficiency(&outcome.sweep),
        outcome.sweep.first(),
        outcome.sweep.last(),
    ) {
        println!(
            "scaling       efficiency {e:.2} from {} to {} requesters",
            first.requesters, last.requesters
        );
        match simnet::report::knee(&outcome.sweep) {
            Some(k) => println!(
                "knee          at {k} requesters (fewer than {:.0} % of jobs contracted)",
                simnet::report::KNEE_SHARE * 100.0
            ),
            None => println!("knee          none: the market never saturated in the sweep"),
        }
    }
    println!(
        "income        {:.0} tokens paid by requesters, {:.0} minted, {:.0} slashed",
        s.paid_tokens, s.minted_tokens, s.slashed_tokens
    );
    if s.cheaters > 0 {
        println!(
            "cheaters      {} of {} caught ({} wrong results caught, {} missed)",
            s.cheaters_caught, s.cheaters, s.wrong_results_caught, s.wrong_results_missed
        );
        println!(
            "cheaters      net {:.0} tokens each, against {:.0} for an honest provider",
            s.net_per_cheater, s.net_per_honest
        );
    }
    println!(
        "ledger        {} entries, {} checkpoints finalized by the committees",
        s.ledger_entries, s.checkpoints
    );
    if s.invariant_violations.is_empty() {
        println!(
            "ledger        invariants held (no negative balance, supply conserved, no escrow open past its bound)"
        );
    } else {
        println!(
            "ledger        INVARIANTS BROKEN: {}",
            s.invariant_violations.join("; ")
        );
    }
    println!("digest        {}", outcome.main.digest());
    println!(
        "wall time     {wall:.1} s for {} events",
        outcome.main.events
    );
    println!("report        {}", page.display());
    if !s.invariant_violations.is_empty() {
        anyhow::bail!("the simulation broke ledger invariants");
    }
    Ok(())
}

/// `cloudchain sim attack-… --seeds N`: the attack on N seeds, as a table.
fn attack_seeds(json: bool, sc: &simnet::Scenario, first: u64, n: u64) -> anyhow::Result<()> {
    if sc.attack.is_none() {
        anyhow::bail!(
            "--seeds runs an attack scenario (one with an [attack] section, such as attack-lazy) or a sweep (requesters-sweep); {} has neither",
            sc.name
        );
    }
    if n == 0 {
        anyhow::bail!("--seeds needs at least 1");
    }
    let seeds: Vec<u64> = (first..first.saturating_add(n)).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bar = indicatif::ProgressBar::new(n);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:28} [{elapsed_precise}] {wide_bar} {pos}/{len}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{} seeds", sc.name));
    let started = std::time::Instant::now();
    let runs = simnet::attack::run_seeds(sc, &seeds, threads, |_| bar.inc(1));
    bar.finish_and_clear();
    let reports: Vec<(u64, simnet::attack::AttackReport)> = runs
        .into_iter()
        .filter_map(|(seed, m)| m.attack.map(|r| (seed, r)))
        .collect();
    let failed = reports
        .iter()
        .filter(|(_, r)| !r.failures().is_empty())
        .count();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "scenario": sc.name,
                "seeds": reports,
                "failed": failed,
            }))?
        );
    } else {
        println!(
            "scenario      {} on seeds {first}..={}, {} days each",
            sc.name,
            first + n - 1,
            sc.days
        );
        println!("driver        {}", simnet::report::driver_line(sc));
        println!(
            "net tokens    paid + minted − slashed − the cost of the compute done (profile cost per CU)"
        );
        print!("{}", simnet::attack::table(&reports));
        println!(
            "wall time     {:.1} s on {threads} threads",
            started.elapsed().as_secs_f64()
        );
    }
    if failed > 0 {
        anyhow::bail!("the attack paid, or broke a rule, on {failed} of {n} seeds");
    }
    Ok(())
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
                    for a in &s.external {
                        println!("reachable at {a}/p2p/{}", s.peer_id);
                    }
                    for r in &s.relays {
                        println!("relayed by   {r}");
                    }
                    for a in &s.blob_addrs {
                        println!("blobs on     {a}");
                    }
                    println!("peers        {} ({} hole punched)", s.connected_peers, s.hole_punches);
                    for p in &s.peers {
                        println!("  {}  {}", p.peer, p.kind());
                    }
                    println!("roles        {}", s.roles.join(", "));
                    if let Some(m) = &s.metrics {
                        println!("metrics      http://{m}/metrics");
                    }
                    println!("ledger       {} entries, finalized epoch {}", s.ledger_entries, s.finalized_epoch);
                    println!("balance      {} tokens", tokens(s.balance));
                    for t in &s.transfers {
                        println!("fetching     {} from {}: {} bytes in {:.1} s", &t.hash[..12], t.from, t.bytes, t.elapsed_s);
                    }
                    for f in &s.fetched {
                        println!("fetched      {} from {}: {} bytes in {:.2} s, {}", &f.hash[..12], f.from, f.bytes, f.secs, f.path);
                    }
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
            Command::Blob(BlobCommand::Add { file, collection }) => {
                let added = client.add_blob(file, *collection).await?;
                print(json, &added, |a| {
                    println!("hash    {}", a.hash);
                    println!("size    {} bytes", a.size);
                    for (name, size) in &a.files {
                        println!("file    {name} ({size} bytes)");
                    }
                    println!("ticket  {}", a.ticket);
                })
            }
            Command::Blob(BlobCommand::Get { source, out }) => {
                // Show the transfer's progress from the node's status while it runs.
                let bar = (!json).then(|| {
                    let b = indicatif::ProgressBar::new_spinner();
                    b.set_style(
                        indicatif::ProgressStyle::with_template("{spinner} {msg}")
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                    );
                    b
                });
                let fetch = client.get_blob(source, out);
                tokio::pin!(fetch);
                let got = loop {
                    tokio::select! {
                        r = &mut fetch => break r?,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                            if let (Some(b), Ok(s)) = (&bar, client.status().await) {
                                for t in &s.transfers {
                                    b.set_message(transfer_line(t));
                                }
                                b.tick();
                            }
                        }
                    }
                };
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                print(json, &got, |g| {
                    if g.files.is_empty() {
                        println!("wrote {} ({} bytes fetched) to {}", g.hash, g.bytes_fetched, g.out.display());
                    } else {
                        println!("wrote collection {} ({} files, {} bytes fetched) under {}", g.hash, g.files.len(), g.bytes_fetched, g.out.display());
                        for (name, size) in &g.files {
                            println!("  {name} ({size} bytes)");
                        }
                    }
                })
            }
            Command::Submit { job, wait, timeout } => {
                let req = crate::jobfile::JobFile::request(job)?;
                let v = client.submit(&req).await?;
                if !wait {
                    return print(json, &v, |v| {
                        println!("job {} submitted ({}); `cloudchain job {}` follows it", v.id, v.state, &v.id[..12]);
                    });
                }
                if !json {
                    println!("job {} submitted", v.id);
                }
                let mut shown = 0;
                // On a terminal, the training's progress as a bar that the
                // next line of the timeline replaces.
                let tty = !json && std::io::IsTerminal::is_terminal(&std::io::stdout());
                let mut bar = false;
                let done = client
                    .wait_job(&v.id, std::time::Duration::from_secs(*timeout), |v| {
                        if json {
                            return;
                        }
                        if bar && v.events.len() > shown {
                            print!("\r\x1b[K");
                            bar = false;
                        }
                        for e in &v.events[shown..] {
                            println!("{:>8.2} s  {}", e.at_s, e.what);
                        }
                        shown = v.events.len();
                        if let Some(p) = v.progress.filter(|p| tty && p.step < p.steps) {
                            print!("\r\x1b[K{}", progress_bar(&p));
                            let _ = std::io::Write::flush(&mut std::io::stdout());
                            bar = true;
                        }
                    })
                    .await?;
                if bar {
                    print!("\r\x1b[K");
                }
                // The timeline was shown as it came: the outcome only, once.
                print(json, &done, print_job_summary)?;
                if !done.ok {
                    anyhow::bail!(
                        "job {} ended {}",
                        done.id,
                        done.outcome.as_deref().unwrap_or(&done.state)
                    );
                }
                Ok(())
            }
            Command::Federate {
                file,
                wait,
                timeout,
            } => {
                let req = crate::jobfile::federated(file)?;
                let v = client.federate(&req).await?;
                if !wait {
                    return print(json, &v, |v| {
                        print_federation(v);
                        println!("`cloudchain federations {}` follows it", &v.id[..12]);
                    });
                }
                let mut shown = 0;
                let until = std::time::Instant::now() + std::time::Duration::from_secs(*timeout);
                let done = loop {
                    let v = client.federation(&v.id).await?;
                    if !json {
                        for e in &v.events[shown..] {
                            println!("{:>8.2} s  {}", e.at_s, e.what);
                        }
                        shown = v.events.len();
                    }
                    if v.done {
                        break v;
                    }
                    if std::time::Instant::now() > until {
                        anyhow::bail!("the federated job {} is still running", v.id);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                };
                print(json, &done, print_federation)?;
                if done.state != "done" {
                    anyhow::bail!(
                        "federated job {} ended: {}",
                        done.id,
                        done.reason.as_deref().unwrap_or(&done.state)
                    );
                }
                Ok(())
            }
            Command::Federations { id: Some(id) } => {
                let v = client.federation(id).await?;
                print(json, &v, |v| {
                    print_federation(v);
                    for e in &v.events {
                        println!("{:>8.2} s  {}", e.at_s, e.what);
                    }
                })
            }
            Command::Federations { id: None } => {
                let all = client.federations().await?;
                print(json, &all, |all| {
                    if all.is_empty() {
                        println!("no federated jobs on this node");
                    }
                    for f in all {
                        println!(
                            "{}  {:<8} round {}/{}  {} owners",
                            &f.id[..12],
                            f.state,
                            f.round,
                            f.rounds,
                            f.owners.iter().filter(|o| o.dropped.is_none()).count()
                        );
                    }
                })
            }
            Command::Jobs => {
                let jobs = client.jobs().await?;
                print(json, &jobs, |v| {
                    if v.is_empty() {
                        println!("no jobs submitted on this node");
                    }
                    for j in v {
                        println!(
                            "{}  {:<10} {:<9} {:<12} {}",
                            &j.id[..12],
                            j.kind,
                            j.state,
                            j.provider.as_deref().map(|p| &p[..12]).unwrap_or("-"),
                            j.outcome.as_deref().unwrap_or("")
                        );
                    }
                })
            }
            Command::Job { id } => {
                let j = client.job(id).await?;
                print(json, &j, print_job)
            }
            Command::Balance { account } => {
                let b = client.balance(account.as_deref()).await?;
                print(json, &b, |b| {
                    println!("account    {}", b.account);
                    println!("balance    {} tokens", tokens(b.balance));
                    println!("spendable  {} tokens", tokens(b.spendable));
                    println!("stake      {} tokens", tokens(b.stake));
                    println!("bond       {} tokens", tokens(b.bond));
                    println!("finalized  epoch {}", b.finalized_epoch);
                })
            }
            Command::Earnings { account, tail } => {
                let e = client.earnings(account.as_deref()).await?;
                print(json, &e, |e| {
                    println!("account    {}", e.account);
                    println!("paid       {} tokens (as provider)", e.paid_tokens);
                    println!("minted     {} tokens", e.minted_tokens);
                    println!("fees       {} tokens (as oracle)", e.fees_tokens);
                    println!("slashed    {} tokens (of the bond)", e.slashed_tokens);
                    println!("net        {} tokens", e.net_tokens);
                    for p in &e.history[e.history.len().saturating_sub(*tail)..] {
                        let epoch = p.epoch.map(|n| format!("epoch {n}")).unwrap_or_default();
                        let sign = if p.kind == "slashed" { "-" } else { "+" };
                        let contract = p.contract.as_deref().map(|c| &c[..12]).unwrap_or("");
                        println!("{}  {:<8} {sign}{:<14} {:<10} {contract}", date(p.at_ms), p.kind, p.amount_tokens, epoch);
                    }
                })
            }
            Command::Committee => {
                let c = client.committee().await?;
                print(json, &c, |c| {
                    println!("epoch      {} (ends {})", c.epoch, date(c.epoch_ends_at_ms));
                    println!("finalized  epoch {}", c.finalized_epoch);
                    let mut accounts = c.committee.clone();
                    accounts.sort();
                    accounts.dedup();
                    println!("committee  {} seats, {} accounts{}", c.committee.len(), accounts.len(), if c.member { ", this node among them" } else { "" });
                    for (i, m) in c.committee.iter().enumerate() {
                        println!("  seat {i}  {}{}", &m[..16], if i == 0 { "  (leader of round 0)" } else { "" });
                    }
                    for k in &c.checkpoints {
                        println!("checkpoint epoch {:<5} round {} by {}  {} signatures, {} authors, minted {}", k.epoch, k.round, &k.proposer[..12], k.signatures, k.authors, k.minted_tokens);
                    }
                })
            }
            Command::Dashboard => {
                // Only a running node serves it: ask before printing a link.
                client.status().await?;
                let url = client.dashboard_url();
                print(json, &serde_json::json!({ "url": url }), |_| {
                    println!("{url}");
                    eprintln!("(the link carries this node's control token; it opens the dashboard in any browser on this machine)");
                })
            }
            Command::Ledger { tail } => {
                let l = client.ledger(*tail).await?;
                print(json, &l, |l| {
                    println!("network    {}", l.network);
                    println!("entries    {} ({} invalid)", l.entries, l.invalid);
                    println!("finalized  epoch {}", l.finalized_epoch);
                    println!("supply     {} tokens", tokens(l.total_supply));
                    for e in &l.tail {
                        println!("{}  {}#{:<4} {:<12} {}", date(e.created_at_ms), &e.author[..12], e.seq, e.kind, e.detail);
                    }
                })
            }
            Command::Transfer { to, tokens: amount } => {
                let amount = crate::genesis::parse_tokens(amount)?;
                let e = client.transfer(to, amount.0).await?;
                print(json, &e, |e| println!("wrote transfer #{} ({}): {}", e.seq, &e.hash[..12], e.detail))
            }
            _ => unreachable!("only remote commands come here"),
        }
    })
}

/// A ledger timestamp (ms since the Unix epoch) as an RFC 3339 UTC date.
fn date(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

fn tokens(micro: u64) -> String {
    crate::control::token_string(micro)
}

fn print_federation(v: &crate::node::federated::FedView) {
    println!("federated {}", v.id);
    println!("state     {} (round {} of {})", v.state, v.round, v.rounds);
    if let Some(why) = &v.reason {
        println!("reason    {why}");
    }
    for o in &v.owners {
        let ledger = o.epsilon_in_ledger.map_or_else(
            || "not yet in the ledger".to_string(),
            |e| format!("{e:.3} in the ledger"),
        );
        println!(
            "owner     {}  {} rows  {} rounds  ε {:.3} ({ledger}){}",
            &o.account[..12.min(o.account.len())],
            o.rows,
            o.rounds_done,
            o.epsilon,
            o.dropped
                .as_deref()
                .map(|d| format!("  dropped: {d}"))
                .unwrap_or_default()
        );
    }
    if let Some(m) = &v.model {
        println!("model     {}", m.display());
    }
}

fn print_job(j: &crate::control::JobView) {
    print_job_summary(j);
    for e in &j.events {
        println!("{:>8.2} s  {}", e.at_s, e.what);
    }
}

/// `fetching 1a2b3c4d5e6f from 7g8h: 12.0 of 40.0 MiB (30%), 5.1 MiB/s, 6 s left`
fn transfer_line(t: &crate::blobs::Transfer) -> String {
    let mib = |b: u64| b as f64 / 1048576.0;
    let rate = t.bytes as f64 / t.elapsed_s.max(1e-3);
    let head = format!(
        "fetching {} from {}",
        &t.hash[..12.min(t.hash.len())],
        t.from
    );
    match t.total.filter(|&n| n > 0) {
        Some(n) => {
            let left = n.saturating_sub(t.bytes) as f64 / rate.max(1.0);
            format!(
                "{head}: {:.1} of {:.1} MiB ({}%), {:.1} MiB/s, {left:.0} s left",
                mib(t.bytes),
                mib(n),
                t.bytes.saturating_mul(100) / n,
                mib(rate as u64),
            )
        }
        None => format!(
            "{head}: {:.1} MiB, {:.1} MiB/s",
            mib(t.bytes),
            mib(rate as u64)
        ),
    }
}

/// `[#########...........]  45%  epoch 18/40  loss 0.2311`
fn progress_bar(p: &node_core::TrainProgress) -> String {
    const WIDTH: u64 = 30;
    let filled = (p.step.saturating_mul(WIDTH) / p.steps.max(1)).min(WIDTH) as usize;
    format!(
        "[{}{}] {:>3}%  epoch {}/{}  loss {:.4}",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled),
        p.step.saturating_mul(100) / p.steps.max(1),
        p.epoch,
        p.epochs,
        p.loss
    )
}

fn print_job_summary(j: &crate::control::JobView) {
    println!("job        {}", j.id);
    println!("kind       {}", j.kind);
    println!("state      {}{}", j.state, if j.ok { " (ok)" } else { "" });
    if let Some(o) = &j.outcome {
        println!("outcome    {o}");
    }
    if let Some(p) = &j.provider {
        println!("provider   {p}");
    }
    if let Some(c) = &j.contract {
        println!("contract   {c}");
    }
    if let Some(p) = j.price_micro_per_cu {
        println!("price      {p} µ-tokens per compute unit");
    }
    println!("estimated  {:.3} CU", j.estimated_cu);
    if let Some(u) = j.units_used {
        println!("used       {u:.3} CU");
    }
    if let Some(v) = &j.verdict {
        println!("verdict    {v}");
    }
    if let (Some(p), Some(r)) = (j.paid, j.refund) {
        println!("paid       {} tokens, refunded {}", tokens(p), tokens(r));
    }
    if let Some(s) = j.slashed.filter(|s| *s > 0) {
        println!(
            "slashed    {} tokens of the provider's bond (half to us, half burned)",
            tokens(s)
        );
    }
    if let Some(m) = j.metrics.as_ref().map(compute::Metrics::summary)
        && !m.is_empty()
    {
        println!("scores     {m}");
    }
    if let Some(r) = &j.result {
        println!("result     {}", r.display());
    }
}

fn genesis(cli: &Cli, args: &GenesisArgs) -> anyhow::Result<()> {
    let dir =
        DataDir::open(&cli.data_dir()).context("the genesis is signed with this node's key")?;
    let balances = args
        .balance
        .iter()
        .map(|s| crate::genesis::parse_allocation(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let stakes = args
        .stake
        .iter()
        .map(|s| crate::genesis::parse_allocation(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bonds = args
        .bond
        .iter()
        .map(|s| crate::genesis::parse_allocation(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.epoch_secs == 0 || args.committee == 0 {
        anyhow::bail!("--epoch-secs and --committee must be positive");
    }
    let mut params =
        crate::genesis::local_params(protocol::DurationMs::secs(args.epoch_secs), args.committee);
    params.market_shards = args.market_shards;
    let g = crate::genesis::build(
        &dir.identity,
        &args.name,
        crate::net::now(),
        params,
        balances,
        stakes,
        bonds,
    )?;
    crate::genesis::save(&args.out, &g)?;
    print(
        cli.json,
        &serde_json::json!({ "network": g.network().to_string(), "file": args.out }),
        |_| {
            println!("network  {}", g.network());
            println!("wrote    {}", args.out.display());
            println!(
                "join it  cloudchain join {} --data-dir DIR",
                args.out.display()
            );
        },
    )
}

fn demo(json: bool, keep: Option<PathBuf>, faulty: bool, federated: bool) -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        init_logging();
    }
    let report = runtime()?.block_on(crate::demo::run(crate::demo::DemoOptions {
        dir: keep.clone(),
        cheaters: usize::from(faulty),
        cheat: crate::work::Cheat::Fake,
        verbose: !json,
        federated,
    }))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if let Some(k) = &keep {
        eprintln!("{}", crate::demo::describe_dir(k));
    }
    if !report.ok {
        anyhow::bail!("the demo did not complete every step");
    }
    Ok(())
}

#[cfg(test)]
mod date_tests {
    #[test]
    fn ledger_timestamps_print_as_utc_dates() {
        assert_eq!(super::date(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::date(1_796_509_898_150), "2026-12-05T22:31:38Z");
    }
}
