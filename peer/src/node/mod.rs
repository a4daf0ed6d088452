//! The running node: a thin tokio driver of the [`node_core::NodeCore`].
//!
//! Tasks: the libp2p [`net::EventLoop`] (owns the swarm), the iroh router (owns the
//! blob endpoint), the control API server, and the driver loop here, which owns
//! the core. The loop runs `tokio::select!` over network events, control
//! requests, the results of background work and the core's timer; it turns each
//! into an [`Input`], and the core's [`Output`]s into gossip, direct messages,
//! blob transfers and compute jobs ([`tasks`]), whose results come back as
//! inputs. Every protocol decision is the core's; what this module decides is
//! only how to carry bytes and when to look peers up in the DHT.

pub mod federated;
mod tasks;
mod views;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use crdt_ledger::{FileStore, GenesisEntry, Ledger};
use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use node_core::{CoreConfig, Direct, Input, NodeCore, Output, PreparedJob};
use protocol::{AccountId, Frame, Hash32};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::blobs::{BlobNet, BlobNode, Relays, StoreKind};
use crate::config::DataDir;
use crate::control::{self, BlobAdded, BlobFetched, ControlRequest, JobView, Status};
use crate::net::{self, BasicValidator, NetEvent, NetOptions, Purpose};

pub use crate::control::JobRequest;
pub use node_core::Timing;

/// How often the loop refreshes the ledger sync with every peer (the core's own
/// timers wake it as well).
const TICK: std::time::Duration = std::time::Duration::from_millis(250);
/// The core's state (jobs, keys, accepted contracts, watches) in the data
/// directory.
pub const STATE_FILE: &str = "node-state.bin";
/// How often the DHT is asked for providers (the first time at start).
const DISCOVER_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// How the node runs (from the config file and the command line).
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub genesis: GenesisEntry,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    /// Addresses others reach us on (no relay slot is reserved then).
    pub external: Vec<Multiaddr>,
    /// Relay libp2p connections for peers behind NATs.
    pub relay_server: bool,
    /// UPnP port mapping for libp2p.
    pub upnp: bool,
    /// The blob endpoint's address, relays and port mapping.
    pub blob: BlobNet,
    pub control: SocketAddr,
    /// Where to serve `/metrics` (Prometheus text); none: not served.
    pub metrics: Option<SocketAddr>,
    /// Sell compute: benchmark the device, publish and refresh offers, run jobs.
    pub provider: bool,
    /// Serve on the committee when drawn: probe, verify, sign verdicts and
    /// checkpoints.
    pub oracle: bool,
    /// A provider that cheats (to show the committee catching it).
    pub cheat: crate::work::Cheat,
    pub timing: Timing,
    /// Most offers the requester keeps in its order book; 0 keeps none and
    /// posts every job as an open bid.
    pub book_capacity: usize,
    /// Whole tokens a provider keeps bonded, in place of the config's
    /// `provider.bond`.
    pub bond: Option<u64>,
}

impl RunOptions {
    /// From a loaded data directory's config and genesis.
    pub fn from_config(dir: &DataDir) -> anyhow::Result<Self> {
        let c = &dir.config;
        let parse_all = |v: &[String], what: &str| -> anyhow::Result<Vec<Multiaddr>> {
            v.iter()
                .map(|s| {
                    s.parse()
                        .with_context(|| format!("{what}: {s:?} is not a multiaddr"))
                })
                .collect()
        };
        Ok(RunOptions {
            genesis: dir.genesis()?,
            listen: parse_all(&c.net.listen, "net.listen")?,
            bootstrap: parse_all(&c.net.bootstrap, "net.bootstrap")?,
            mdns: c.net.mdns,
            external: parse_all(&c.net.external, "net.external")?,
            relay_server: c.net.relay_server,
            upnp: c.net.port_mapping,
            blob: BlobNet {
                bind: c
                    .net
                    .blob_bind
                    .parse()
                    .with_context(|| format!("net.blob_bind {:?}", c.net.blob_bind))?,
                relays: relays_from_config(dir)?,
                portmapper: c.net.port_mapping,
                gc_every: crate::blobs::GC_EVERY,
                quota: (c.net.blob_quota_mb > 0)
                    .then(|| c.net.blob_quota_mb.saturating_mul(1 << 20)),
            },
            control: c.net.control.parse().context("net.control")?,
            metrics: match c.net.metrics.as_str() {
                "" | "off" => None,
                m => Some(
                    m.parse()
                        .with_context(|| format!("net.metrics {m:?} is not an address"))?,
                ),
            },
            provider: false,
            oracle: false,
            cheat: crate::work::Cheat::None,
            timing: Timing::default(),
            book_capacity: protocol::market::BookConfig::default().capacity,
            bond: None,
        })
    }

    /// Everything on 127.0.0.1 with ephemeral ports, no mDNS: tests and the demo.
    pub fn loopback(genesis: GenesisEntry, bootstrap: Vec<Multiaddr>) -> Self {
        let lo: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        RunOptions {
            genesis,
            listen: vec![
                Multiaddr::from(std::net::Ipv4Addr::LOCALHOST)
                    .with(libp2p::multiaddr::Protocol::Tcp(0)),
            ],
            bootstrap,
            mdns: false,
            external: vec![],
            relay_server: false,
            upnp: false,
            blob: BlobNet::local(lo),
            control: lo,
            metrics: None,
            provider: false,
            oracle: false,
            cheat: crate::work::Cheat::None,
            timing: Timing::default(),
            book_capacity: protocol::market::BookConfig::default().capacity,
            bond: None,
        }
    }
}

/// The blob relays a config names: its own (with the certificates to trust),
/// else iroh's public ones if `relay` is on, else none.
pub fn relays_from_config(dir: &DataDir) -> anyhow::Result<Relays> {
    let net = &dir.config.net;
    if net.relay_urls.is_empty() {
        return Ok(if net.relay {
            Relays::Public
        } else {
            Relays::Off
        });
    }
    let urls = net
        .relay_urls
        .iter()
        .map(|u| u.parse().with_context(|| format!("net.relay_urls: {u:?}")))
        .collect::<anyhow::Result<_>>()?;
    let ca = net
        .relay_certs
        .iter()
        .map(|f| crate::relay::read_cert(&dir.path.join(f)))
        .collect::<anyhow::Result<_>>()?;
    Ok(Relays::Own { urls, ca })
}

/// A node that runs until [`RunningNode::shutdown`].
#[derive(Debug)]
pub struct RunningNode {
    pub account: AccountId,
    pub control_addr: SocketAddr,
    pub net: net::Client,
    pub blobs: BlobNode,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    net_task: tokio::task::JoinHandle<()>,
    /// The data directory's lock, held while the node runs.
    _lock: DirLock,
}

/// A lock on a data directory (`node.lock`, holding the pid): one node at a
/// time runs on it. It is released when the node stops, or when its process
/// dies (the OS drops the lock with the file).
#[derive(Debug)]
struct DirLock {
    _file: std::fs::File,
}

const LOCK_FILE: &str = "node.lock";

fn lock_dir(path: &std::path::Path) -> anyhow::Result<DirLock> {
    use std::io::{Read, Seek, Write};
    let p = path.join(LOCK_FILE);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&p)
        .with_context(|| format!("cannot open {}", p.display()))?;
    match f.try_lock() {
        Ok(()) => {
            f.set_len(0)
                .and_then(|()| f.rewind())
                .and_then(|()| writeln!(f, "{}", std::process::id()))
                .with_context(|| format!("cannot write {}", p.display()))?;
            Ok(DirLock { _file: f })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            anyhow::bail!(
                "another node (pid {}) runs on the data directory {}: stop it first, or \
                 give this one another --data-dir",
                pid.trim(),
                path.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", p.display()))
        }
    }
}

impl RunningNode {
    /// Stop the node loop, the swarm and the blob store.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        self.net_task.abort();
        self.blobs.shutdown().await
    }

    /// Stop abruptly, as a crash would: the loop and the swarm die mid-step and
    /// nothing is flushed beyond what the ledger and the blob store made durable.
    pub async fn kill(self) {
        self.task.abort();
        self.net_task.abort();
        let _ = self.blobs.shutdown().await;
    }

    /// Wait until the node stops by itself (it does not, unless it fails).
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }

    /// The node's first listen address with its peer id, to bootstrap others from
    /// (waiting, bounded, for the listener to come up).
    pub async fn dial_addr(&self) -> anyhow::Result<Multiaddr> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(a) = self.net.listen_addrs().await?.into_iter().next() {
                return Ok(a.with(libp2p::multiaddr::Protocol::P2p(self.net.peer_id)));
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("the node has no listen address after 10 s");
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// The result of work done beside the loop.
#[derive(Debug)]
enum Work {
    /// The core's input, ready.
    Input(Input),
    /// Providers found in the DHT under a resource class.
    Providers(Vec<PeerId>),
    /// The requester's inputs are encrypted and stored: submit the job.
    Prepared {
        result: anyhow::Result<Box<(PreparedJob, tasks::JobNotes)>>,
        reply: oneshot::Sender<anyhow::Result<JobView>>,
    },
    /// A federated job to start, once its owners were looked up.
    Federate {
        request: Box<federated::FedRequest>,
        reply: oneshot::Sender<anyhow::Result<federated::FedView>>,
    },
    /// A federated job's round is prepared: each owner's job, or why not.
    FedPrepared {
        fed: Hash32,
        round: u32,
        jobs: Vec<(AccountId, anyhow::Result<(PreparedJob, tasks::JobNotes)>)>,
    },
}

struct Driver {
    dir: DataDir,
    opts: RunOptions,
    core: NodeCore<FileStore>,
    net: net::Client,
    blobs: BlobNode,
    rng: ChaCha20Rng,
    connected: HashSet<PeerId>,
    work_tx: mpsc::Sender<Work>,
    out: Vec<Output>,
    /// The sync request being handled, if any: the core's next sync message
    /// for that peer goes back as its response rather than as a request.
    sync_reply: Option<(PeerId, ResponseChannel<Vec<u8>>)>,
    metrics_addr: Option<SocketAddr>,
    /// Our federated jobs (see [`federated`]).
    feds: Vec<federated::Federation>,
}

/// Which protocol a direct message travels on.
fn purpose(d: &Direct) -> Purpose {
    match d {
        Direct::LedgerSync(_) => Purpose::Sync,
        Direct::Frame(_) | Direct::Progress { .. } => Purpose::Market,
        Direct::Proposal(_) | Direct::Skip(_) | Direct::Challenge { .. } => Purpose::Committee,
    }
}

/// The account behind a libp2p peer id (every peer's id is its ed25519 key).
fn account_of(peer: &PeerId) -> Option<AccountId> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if mh.code() != 0 {
        return None; // not an identity multihash: not an inlined ed25519 key
    }
    let pk = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(AccountId(pk.try_into_ed25519().ok()?.to_bytes()))
}

/// Start a node from its data directory.
pub async fn start(dir: DataDir, opts: RunOptions) -> anyhow::Result<RunningNode> {
    let account = dir.identity.account();
    let span = info_span!("peer", id = %account.short());
    let lock = lock_dir(&dir.path)?;
    dir.install_genesis(&opts.genesis)?;
    let network = opts.genesis.network();
    let store = FileStore::open(&dir.path.join("ledger"))
        .with_context(|| format!("cannot open the ledger in {}", dir.path.display()))?;
    let (mut ledger, report) =
        Ledger::open(opts.genesis.clone(), &account.0, store).context("cannot load the ledger")?;
    // Final entries leave memory, except this node's own history (its
    // earnings view lists them); the others are read from the document.
    ledger.keep_entries_of(account);
    info!(parent: &span, entries = report.entries, network = %network, "ledger loaded");
    let blob_dir = dir.path.join("blobs");
    std::fs::create_dir_all(&blob_dir)
        .with_context(|| format!("cannot create {}", blob_dir.display()))?;
    let blobs = BlobNode::spawn(&dir.identity, StoreKind::Dir(&blob_dir), &opts.blob)
        .instrument(span.clone())
        .await?;
    // Our relay and public address go into every offer: wait for them a while.
    if !blobs.online(std::time::Duration::from_secs(10)).await {
        warn!(parent: &span, "the blob relay did not answer in 10 s; offers carry it anyway");
    }
    let net_opts = NetOptions {
        network,
        listen: opts.listen.clone(),
        bootstrap: opts.bootstrap.clone(),
        mdns: opts.mdns,
        rebootstrap: std::time::Duration::from_secs(60),
        external: opts.external.clone(),
        relay_server: opts.relay_server,
        upnp: opts.upnp,
        markets: net::Markets::of(
            ledger.params().market_shards,
            &dir.identity.account(),
            opts.oracle,
        ),
    };
    let (client, event_loop, events) =
        net::new(&dir.identity, &net_opts, BasicValidator::new(network))?;
    let (metrics, p2p_metrics) = crate::metrics::NodeMetrics::new();
    let net_task = tokio::spawn(
        event_loop
            .with_metrics(p2p_metrics)
            .run()
            .instrument(span.clone()),
    );
    let (ctl_tx, ctl_rx) = mpsc::channel(64);
    let _ = std::fs::remove_file(dir.path.join(crate::metrics::ADDR_FILE));
    let metrics_addr = match opts.metrics {
        Some(bind) => {
            let (addr, _) = crate::metrics::serve(&dir.path, bind, ctl_tx.clone(), metrics).await?;
            info!(parent: &span, %addr, "metrics at http://{addr}/metrics");
            Some(addr)
        }
        None => None,
    };
    let (control_addr, _server) = control::serve(&dir.path, opts.control, ctl_tx).await?;
    info!(parent: &span, %control_addr, "control API listening");
    let provider = if opts.provider {
        Some(
            tasks::provider_config(&dir, &blobs, &opts)
                .instrument(span.clone())
                .await?,
        )
    } else {
        None
    };
    let core = NodeCore::new(
        dir.identity.clone(),
        ledger,
        CoreConfig {
            provider,
            oracle: opts.oracle,
            bond: protocol::Amount::tokens(opts.bond.unwrap_or(dir.config.provider.bond)),
            contact: blobs.contact(),
            timing: opts.timing,
            book: protocol::market::BookConfig {
                capacity: opts.book_capacity,
                ..Default::default()
            },
            persist: true,
            submits: true,
        },
    );
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("OS random number generator: {e}"))?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let (work_tx, work_rx) = mpsc::channel(256);
    let mut driver = Driver {
        core,
        rng: ChaCha20Rng::from_seed(seed),
        dir,
        opts,
        net: client.clone(),
        blobs: blobs.clone(),
        connected: HashSet::new(),
        work_tx,
        out: Vec::new(),
        sync_reply: None,
        metrics_addr,
        feds: Vec::new(),
    };
    driver.restore()?;
    driver.feds = federated::Federation::load_all(&driver.dir.path.join("results"));
    // A round that was being prepared when the node stopped: again.
    for f in driver
        .feds
        .iter()
        .filter(|f| f.state == federated::FedState::Preparing)
    {
        driver.start_round(f);
    }
    let task = tokio::spawn(
        driver
            .run(events, ctl_rx, work_rx, stop_rx)
            .instrument(span),
    );
    Ok(RunningNode {
        _lock: lock,
        account,
        control_addr,
        net: client,
        blobs,
        stop: Some(stop_tx),
        task,
        net_task,
    })
}

impl Driver {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<NetEvent>,
        mut control: mpsc::Receiver<ControlRequest>,
        mut work: mpsc::Receiver<Work>,
        mut stop: oneshot::Receiver<()>,
    ) {
        if let Some(cfg) = self.core.provider().map(|p| p.config()) {
            // Announce ourselves in the DHT under our resource class, and the
            // schema of each data set we offer.
            let mut keys = vec![cfg.class.dht_key().to_string()];
            keys.extend(
                cfg.datasets
                    .iter()
                    .map(|d| protocol::DataOffer::dht_key(&d.schema)),
            );
            let net = self.net.clone();
            tokio::spawn(async move {
                for key in keys {
                    if let Err(e) = net.start_providing_key(key).await {
                        debug!(%e, "cannot announce in the DHT yet");
                    }
                }
            });
        }
        self.input(Input::Start);
        let mut discover = tokio::time::interval(DISCOVER_EVERY);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut room = self.blobs.room();
        loop {
            let next = self.core.poll_timeout();
            let timer = async move {
                match next {
                    Some(at) => {
                        let wait = at.since(net::now());
                        tokio::time::sleep(std::time::Duration::from_millis(wait.0)).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(e) = events.recv() => self.on_net(e).await,
                Some(r) = control.recv() => self.on_control(r).await,
                Some(w) = work.recv() => self.on_work(w),
                _ = timer => self.input(Input::Tick),
                _ = tick.tick() => {
                    self.input(Input::Tick);
                    self.poll_federations();
                }
                _ = discover.tick() => self.discover_providers(),
                Ok(()) = room.changed() => {
                    let now = *room.borrow_and_update();
                    self.input(Input::StoreRoom(now));
                }
                _ = &mut stop => break,
            }
        }
        info!("node stopped");
    }

    /// Hand the core one input and carry out what it asks.
    fn input(&mut self, input: Input) {
        self.core
            .handle(net::now(), input, &mut self.rng, &mut self.out);
        self.carry_out();
    }

    fn carry_out(&mut self) {
        let mut outs = std::mem::take(&mut self.out);
        // What must survive a crash is on disk before anything leaves.
        if let Some(i) = outs.iter().rposition(|o| matches!(o, Output::Persist(_))) {
            if let Output::Persist(bytes) = outs.remove(i)
                && let Err(e) = self.save_state(&bytes)
            {
                warn!(error = %format!("{e:#}"), "cannot save the node's state");
            }
            outs.retain(|o| !matches!(o, Output::Persist(_)));
        }
        for o in outs {
            match o {
                Output::Publish(m) => {
                    let (net, frame) = (self.net.clone(), Frame::new(self.core.network(), m));
                    tokio::spawn(async move {
                        // No peer subscribed yet is normal at start; the next
                        // refresh retries.
                        if let Err(e) = net.publish(frame).await {
                            debug!(%e, "publish failed");
                        }
                    });
                }
                Output::Send { to, msg } => match to.peer_id() {
                    Ok(peer) => self.send_direct(peer, msg),
                    Err(e) => warn!(%e, "cannot address a peer"),
                },
                Output::Run {
                    contract,
                    terms,
                    grant,
                } => {
                    let blobs = self.blobs.clone();
                    let pref = tasks::backend_preference(&self.dir);
                    let held = self.dir.path.clone();
                    let cheat = self.opts.cheat;
                    // Progress goes to the core (which tells the requester);
                    // a full queue drops a report, never blocks the run.
                    let tx = self.work_tx.clone();
                    let report = move |progress| {
                        let _ = tx.try_send(Work::Input(Input::RunProgress { contract, progress }));
                    };
                    self.spawn(async move {
                        let result = tasks::run_job(
                            blobs, held, grant, *terms, contract, pref, cheat, report,
                        )
                        .await;
                        Input::Ran { contract, result }
                    });
                }
                Output::Check {
                    contract,
                    terms,
                    receipt,
                    grant,
                    provider_contact,
                    seeds,
                } => {
                    let blobs = self.blobs.clone();
                    self.spawn(async move {
                        let result = tasks::check_job(
                            blobs,
                            grant,
                            *terms,
                            *receipt,
                            provider_contact,
                            seeds,
                        )
                        .await;
                        Input::Checked { contract, result }
                    });
                }
                Output::FetchResult {
                    job,
                    receipt,
                    key,
                    provider_contact,
                } => {
                    let blobs = self.blobs.clone();
                    let results = self.dir.path.join("results");
                    self.spawn(async move {
                        let result = tasks::fetch_for_requester(
                            blobs,
                            results,
                            job,
                            *receipt,
                            key,
                            provider_contact,
                        )
                        .await;
                        Input::Fetched { job, result }
                    });
                }
                other => debug!(?other, "output not carried by this driver"),
            }
        }
    }

    /// The core's state file in the data directory.
    fn state_path(&self) -> PathBuf {
        self.dir.path.join(STATE_FILE)
    }

    /// Write the core's state atomically: a temporary file, fsync'd, renamed
    /// over the last one, and the directory fsync'd.
    fn save_state(&self, bytes: &[u8]) -> anyhow::Result<()> {
        use std::io::Write;
        let path = self.state_path();
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        std::fs::File::open(&self.dir.path)?.sync_all()?;
        Ok(())
    }

    /// Bring back what the last run saved, if anything.
    fn restore(&mut self) -> anyhow::Result<()> {
        let path = self.state_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let report = self
            .core
            .restore(net::now(), &bytes, &mut self.rng, &mut self.out)
            .with_context(|| {
                format!(
                    "{} cannot be restored; move it away to start without it (its jobs and watches are then forgotten)",
                    path.display()
                )
            })?;
        info!(
            ?report,
            "restored the node's jobs, keys, contracts and watches"
        );
        self.carry_out();
        Ok(())
    }

    /// Run work beside the loop; its result comes back as an input.
    fn spawn(&self, work: impl Future<Output = Input> + Send + 'static) {
        let tx = self.work_tx.clone();
        tokio::spawn(async move {
            let input = work.await;
            let _ = tx.send(Work::Input(input)).await;
        });
    }

    /// Send a direct message beside the loop, on the protocol of its purpose.
    /// A sync message answers the sync request being handled if it is for
    /// that peer; the response to a sync request of ours is the peer's next
    /// sync message, fed back to the core. Other answers come back as
    /// messages of their own (the response is an empty ack).
    fn send_direct(&mut self, peer: PeerId, d: Direct) {
        if peer == self.net.peer_id {
            return;
        }
        let purpose = purpose(&d);
        let bytes = match d.to_bytes() {
            Ok(b) => b,
            Err(e) => return warn!(%e, "cannot encode a direct message"),
        };
        if purpose == Purpose::Sync
            && let Some((to, channel)) = self.sync_reply.take_if(|(to, _)| *to == peer)
        {
            let net = self.net.clone();
            tokio::spawn(async move {
                if let Err(e) = net.respond(channel, bytes).await {
                    debug!(peer = %to, %e, "sync response not sent");
                }
            });
            return;
        }
        let (net, tx, network) = (self.net.clone(), self.work_tx.clone(), self.core.network());
        tokio::spawn(async move {
            // A peer we cannot reach yet (its relayed address still unknown
            // here, a connection coming up) gets a few more tries: a market
            // or committee message is sent once, and a proposal lost this way
            // costs the requester that provider. Sync runs again on its own.
            let mut answer = net.request(peer, purpose, bytes.clone()).await;
            if purpose != Purpose::Sync {
                for wait in DIRECT_RETRIES {
                    if answer.is_ok() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
                    answer = net.request(peer, purpose, bytes.clone()).await;
                }
            }
            match answer {
                Ok(answer) if purpose == Purpose::Sync && !answer.is_empty() => {
                    // The answer is a direct message like any request: it must
                    // be a sync message, from the peer we asked.
                    let Some(from) = account_of(&peer) else {
                        return;
                    };
                    match Direct::from_bytes(&answer, &network) {
                        Ok(d @ Direct::LedgerSync(_)) => {
                            let _ = tx.send(Work::Input(Input::direct(from, d))).await;
                        }
                        Ok(_) => debug!(%peer, "a sync answer that is no sync message"),
                        Err(e) => debug!(%peer, %e, "a bad sync answer"),
                    }
                }
                Ok(_) => {}
                Err(e) => debug!(%peer, %e, "direct message not delivered"),
            }
        });
    }

    /// Look providers up in the DHT (beside the loop).
    fn discover_providers(&self) {
        let (net, tx) = (self.net.clone(), self.work_tx.clone());
        tokio::spawn(async move {
            let mut found = Vec::new();
            for class in [protocol::ResourceClass::Gpu, protocol::ResourceClass::Cpu] {
                match net.get_providers(class).await {
                    Ok(p) => found.extend(p),
                    Err(e) => debug!(%e, "DHT provider lookup failed"),
                }
            }
            if !found.is_empty() {
                let _ = tx.send(Work::Providers(found)).await;
            }
        });
    }

    async fn on_net(&mut self, e: NetEvent) {
        match e {
            NetEvent::Gossip { from, frame } => {
                self.input(Input::gossip(account_of(&from), frame.message))
            }
            NetEvent::Request {
                from,
                purpose: on,
                data,
                channel,
            } => {
                let direct = account_of(&from)
                    .ok_or_else(|| "a request from a peer with no ed25519 key".to_string())
                    .and_then(|account| {
                        Direct::from_bytes(&data, &self.core.network())
                            .map(|d| (account, d))
                            .map_err(|e| e.to_string())
                    })
                    .and_then(|(account, d)| {
                        if purpose(&d) == on {
                            Ok((account, d))
                        } else {
                            Err(format!(
                                "a {:?} message on the {:?} protocol",
                                purpose(&d),
                                on
                            ))
                        }
                    });
                let (account, d) = match direct {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = self.net.respond(channel, Vec::new()).await;
                        return debug!(%from, %e, "bad direct message");
                    }
                };
                if on != Purpose::Sync {
                    let _ = self.net.respond(channel, Vec::new()).await;
                    return self.input(Input::direct(account, d));
                }
                self.sync_reply = Some((from, channel));
                self.input(Input::direct(account, d));
                // Nothing new for the peer: an empty answer ends the exchange.
                if let Some((_, channel)) = self.sync_reply.take() {
                    let _ = self.net.respond(channel, Vec::new()).await;
                }
            }
            NetEvent::Connected(p) => {
                self.connected.insert(p);
                if let Some(a) = account_of(&p) {
                    self.input(Input::PeerUp(a));
                }
            }
            NetEvent::Disconnected(p) => {
                self.connected.remove(&p);
                if let Some(a) = account_of(&p) {
                    self.input(Input::PeerDown(a));
                }
            }
            NetEvent::Rejected { .. } => {}
        }
    }

    fn on_work(&mut self, w: Work) {
        match w {
            Work::Input(i) => self.input(i),
            Work::Prepared { result, reply } => {
                let view = result.and_then(|b| {
                    let (p, notes) = *b;
                    let id = self
                        .core
                        .submit(net::now(), p, &mut self.rng, &mut self.out)?;
                    // What the model should carry, kept until the result comes.
                    let results = self.dir.path.join("results");
                    let kept = std::fs::create_dir_all(&results).and_then(|()| {
                        let bytes = serde_json::to_vec(&notes).unwrap_or_default();
                        std::fs::write(tasks::notes_path(&results, &id), bytes)
                    });
                    if let Err(e) = kept {
                        warn!(%e, "the model will come without its data set's names");
                    }
                    self.carry_out();
                    let job = self.core.job(&id).context("the job just submitted")?;
                    Ok(views::job_view(&self.core, job))
                });
                let _ = reply.send(view);
            }
            Work::FedPrepared { fed, round, jobs } => self.fed_prepared(fed, round, jobs),
            Work::Federate { request, reply } => {
                let _ = reply.send(self.federate(*request));
            }
            Work::Providers(peers) => {
                let me = self.net.peer_id;
                let new: Vec<AccountId> = peers
                    .iter()
                    .filter(|p| **p != me && !self.connected.contains(p))
                    .filter_map(account_of)
                    .collect();
                self.input(Input::Discovered(new));
            }
        }
    }

    async fn on_control(&mut self, r: ControlRequest) {
        match r {
            ControlRequest::Status(reply) => {
                let _ = reply.send(self.status().await);
            }
            ControlRequest::Metrics(reply) => {
                let snap = self.net.info().await.map(|info| {
                    views::metrics_snapshot(&mut self.core, net::now(), &info, &self.blobs)
                });
                let _ = reply.send(snap);
            }
            ControlRequest::Earnings { account, reply } => {
                let _ = reply.send(views::earnings(&mut self.core, account));
            }
            ControlRequest::Committee(reply) => {
                let _ = reply.send(Ok(views::committee_view(&mut self.core, net::now())));
            }
            ControlRequest::Offers(reply) => {
                let _ = reply.send(Ok(views::offers(&self.core, net::now())));
            }
            ControlRequest::AddBlob {
                path,
                collection,
                reply,
            } => {
                let _ = reply.send(self.add_blob(path, collection).await);
            }
            ControlRequest::GetBlob { source, out, reply } => {
                // Transfers can be long: run them beside the loop.
                let blobs = self.blobs.clone();
                tokio::spawn(async move {
                    let _ = reply.send(get_blob(&blobs, &source, out).await);
                });
            }
            ControlRequest::Submit { job, reply } => {
                let (blobs, me, tx) = (
                    self.blobs.clone(),
                    self.core.account(),
                    self.work_tx.clone(),
                );
                tokio::spawn(async move {
                    let result = tasks::prepare(blobs, me, *job, net::now())
                        .await
                        .map(Box::new);
                    let _ = tx.send(Work::Prepared { result, reply }).await;
                });
            }
            ControlRequest::Federate { request, reply } => {
                // Owners we have no offer of yet: look them up in the DHT by
                // schema, connect (their offers follow), then choose.
                let known = federated::schema_of(&request)
                    .map(|schema| (schema, self.owners_known(&request, schema)));
                match known {
                    Ok((schema, false)) => {
                        let (net, tx) = (self.net.clone(), self.work_tx.clone());
                        tokio::spawn(async move {
                            let key = protocol::DataOffer::dht_key(&schema);
                            match net.get_providers_key(key).await {
                                Ok(found) if !found.is_empty() => {
                                    let _ = tx.send(Work::Providers(found)).await;
                                    // Their offers come once connected.
                                    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                                }
                                Ok(_) => {}
                                Err(e) => debug!(%e, "DHT lookup of data owners failed"),
                            }
                            let _ = tx.send(Work::Federate { request, reply }).await;
                        });
                    }
                    _ => {
                        let _ = reply.send(self.federate(*request));
                    }
                }
            }
            ControlRequest::Federations(reply) => {
                let ledger = self.core.ledger();
                let _ = reply.send(Ok(self.feds.iter().map(|f| f.view_with(ledger)).collect()));
            }
            ControlRequest::Federation { id, reply } => {
                let found: Vec<_> = self
                    .feds
                    .iter()
                    .filter(|f| f.id.to_string().starts_with(&id))
                    .collect();
                let ledger = self.core.ledger();
                let _ = reply.send(match found.as_slice() {
                    [f] if !id.is_empty() => Ok(f.view_with(ledger)),
                    [] => Err(anyhow::anyhow!("no federated job {id}")),
                    _ => Err(anyhow::anyhow!("{id} names more than one federated job")),
                });
            }
            ControlRequest::Jobs(reply) => {
                let jobs = self
                    .core
                    .jobs()
                    .map(|j| views::job_view(&self.core, j))
                    .collect();
                let _ = reply.send(Ok(jobs));
            }
            ControlRequest::Job { id, reply } => {
                let _ = reply.send(views::find_job(&self.core, &id));
            }
            ControlRequest::Balance { account, reply } => {
                let _ = reply.send(views::balance(&mut self.core, account));
            }
            ControlRequest::Ledger { tail, reply } => {
                let _ = reply.send(Ok(views::ledger_view(&mut self.core, tail)));
            }
            ControlRequest::Transfer { body, reply } => {
                let _ = reply.send(self.transfer(body));
            }
        }
    }

    fn transfer(&mut self, t: control::TransferBody) -> anyhow::Result<control::EntryView> {
        let to: AccountId =
            t.to.parse()
                .map_err(|e| anyhow::anyhow!("{:?} is not an account id: {e}", t.to))?;
        if t.amount == 0 {
            anyhow::bail!("transfer a positive amount");
        }
        let amount = protocol::Amount(t.amount);
        let now = net::now();
        let hash = self
            .core
            .transfer(now, to, amount, &mut self.rng, &mut self.out)?;
        self.carry_out();
        let e = self
            .core
            .ledger()
            .entry(&hash)
            .context("the entry just written")?;
        Ok(control::EntryView {
            author: e.data.author.to_string(),
            seq: e.data.seq,
            kind: e.data.body.name().into(),
            created_at_ms: e.data.created_at.0,
            hash: hash.to_string(),
            detail: views::describe(&e.data.body),
        })
    }

    async fn status(&mut self) -> anyhow::Result<Status> {
        let id = &self.dir.identity;
        let me = id.account();
        let roles = [
            (true, "requester"),
            (self.core.provider().is_some(), "provider"),
            (self.core.oracle().is_some(), "oracle"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, r)| r.to_string())
        .collect();
        let info = self.net.info().await?;
        let network = self.core.network().to_string();
        let ledger = self.core.ledger();
        Ok(Status {
            account: me.to_string(),
            peer_id: id.peer_id().to_string(),
            endpoint_id: id.endpoint_id().to_string(),
            network,
            listen: info.listen,
            blob_addrs: self.blobs.contact(),
            connected_peers: self.connected.len(),
            transfers: self.blobs.transfers(),
            fetched: self.blobs.recent_fetches(),
            external: info.external,
            relays: info.reservations,
            peers: info.peers,
            hole_punches: info.hole_punches,
            roles,
            metrics: self.metrics_addr.map(|a| a.to_string()),
            ledger_entries: ledger.entry_count(),
            finalized_epoch: ledger.finalized_epoch(),
            balance: ledger.balance(&me).0,
        })
    }

    async fn add_blob(&self, path: PathBuf, collection: bool) -> anyhow::Result<BlobAdded> {
        let meta =
            std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if collection || meta.is_dir() {
            let (root, files) = self.blobs.add_collection(&path).await?;
            return Ok(BlobAdded {
                hash: root.to_string(),
                size: files.iter().map(|(_, s)| s).sum(),
                ticket: self.blobs.collection_ticket(&root).to_string(),
                files,
            });
        }
        let hash = self.blobs.add_path(&path).await?;
        Ok(BlobAdded {
            hash: hash.to_string(),
            size: meta.len(),
            ticket: self.blobs.ticket(&hash).to_string(),
            files: vec![],
        })
    }
}

async fn get_blob(blobs: &BlobNode, source: &str, out: PathBuf) -> anyhow::Result<BlobFetched> {
    let (hash, fetched) = if let Ok(hash) = source.parse::<Hash32>() {
        if !blobs.has(&hash).await? {
            anyhow::bail!(
                "blob {} is not held here; pass a ticket (from `cloudchain blob add` on the node that has it)",
                hash.short()
            );
        }
        (hash, 0)
    } else {
        let ticket: iroh_blobs::ticket::BlobTicket = source.parse().with_context(|| {
            format!("{source:?} is neither a blob hash (64 hex digits) nor a blob ticket")
        })?;
        let hash = Hash32(*ticket.hash().as_bytes());
        if ticket.format() == iroh_blobs::BlobFormat::HashSeq {
            // A collection (a file or directory, as iroh's file-sending tools
            // make them): its files go under `out`, never its index.
            let n = blobs
                .fetch_collection(ticket.addr().clone(), &hash, |_| {})
                .await?;
            let files = blobs.export_collection(&hash, &out).await?;
            return Ok(BlobFetched {
                hash: hash.to_string(),
                bytes_fetched: n,
                out,
                files,
            });
        }
        let n = fetch_logged(blobs, ticket.addr().clone(), &hash, None).await?;
        (hash, n)
    };
    blobs.export(&hash, &out).await?;
    Ok(BlobFetched {
        hash: hash.to_string(),
        bytes_fetched: fetched,
        out,
        files: vec![],
    })
}

/// Fetch a blob (of at most `size` bytes, if declared), logging progress
/// every 16 MiB.
async fn fetch_logged(
    blobs: &BlobNode,
    from: iroh::EndpointAddr,
    hash: &Hash32,
    size: Option<u64>,
) -> anyhow::Result<u64> {
    let mut last = 0u64;
    let log = |b: u64| {
        if b >= last + (16 << 20) {
            last = b;
            info!(hash = %hash.short(), mib = b >> 20, "fetching");
        }
    };
    match size {
        Some(size) => blobs.fetch_sized(from, hash, size, log).await,
        None => blobs.fetch(from, hash, log).await,
    }
}

/// Seconds to wait before each further try of a direct message that failed
/// (see `send_direct`).
const DIRECT_RETRIES: [u64; 3] = [2, 4, 8];

impl Driver {
    fn results_dir(&self) -> PathBuf {
        self.dir.path.join("results")
    }

    /// The offers we know now.
    fn known_offers(&self) -> Vec<std::sync::Arc<protocol::Offer>> {
        self.core
            .requester()
            .book()
            .iter()
            .filter(|e| e.offer.expires_at > net::now())
            .map(|e| e.offer.clone())
            .collect()
    }

    /// Whether the offers we know hold enough owners for `req`.
    fn owners_known(&self, req: &federated::FedRequest, schema: Hash32) -> bool {
        let offers = self.known_offers();
        federated::choose_owners(req, schema, offers.iter().map(|o| &**o)).is_ok()
    }

    /// Start a federated job: pick its owners among the offers we know and
    /// prepare its first round.
    fn federate(&mut self, req: federated::FedRequest) -> anyhow::Result<federated::FedView> {
        req.check()?;
        let schema = federated::schema_of(&req)?;
        let offers = self.known_offers();
        let owners = federated::choose_owners(&req, schema, offers.iter().map(|o| &**o))?;
        let mut id = [0u8; 32];
        rand::Rng::fill_bytes(&mut self.rng, &mut id);
        let id = Hash32(id);
        let layers: Vec<usize> = req.layers.iter().map(|&w| w as usize).collect();
        let task = match req.task {
            protocol::TrainTask::Classify => compute::Task::Classify,
            protocol::TrainTask::Regress => compute::Task::Regress,
        };
        let init = compute::mlp::Mlp::init(&layers, req.seed)?.to_safetensors_as(task)?;
        let results = self.results_dir();
        std::fs::create_dir_all(&results)?;
        let model = results.join(format!("{}.r0.safetensors", id.short()));
        std::fs::write(&model, init)?;
        let now = net::now().0;
        let mut fed = federated::Federation {
            id,
            request: req,
            owners,
            round: 1,
            state: federated::FedState::Preparing,
            jobs: Vec::new(),
            model,
            events: Vec::new(),
            started_ms: now,
        };
        let who: Vec<String> = fed
            .owners
            .iter()
            .map(|o| {
                format!(
                    "{} ({} rows, ε {:.3})",
                    o.account.short(),
                    o.data.rows,
                    o.epsilon
                )
            })
            .collect();
        fed.event(now, format!("owners: {}", who.join(", ")));
        fed.save(&results)?;
        let view = fed.view();
        self.start_round(&fed);
        self.feds.push(fed);
        Ok(view)
    }

    /// Prepare every active owner's job of `fed`'s current round, beside the loop.
    fn start_round(&self, fed: &federated::Federation) {
        let model = match std::fs::read(&fed.model) {
            Ok(m) => m,
            Err(e) => {
                warn!(%e, "cannot read the federated job's model");
                return;
            }
        };
        let (blobs, me, tx) = (
            self.blobs.clone(),
            self.core.account(),
            self.work_tx.clone(),
        );
        let (id, round, req) = (fed.id, fed.round, fed.request.clone());
        let owners: Vec<federated::Owner> = fed.active().cloned().collect();
        tokio::spawn(async move {
            let mut jobs = Vec::new();
            for o in owners {
                let kind = req.round_kind(id, round, &o.data);
                let r = tasks::prepare_round(&blobs, me, kind, &o, &model, &req, net::now()).await;
                jobs.push((o.account, r));
            }
            let _ = tx
                .send(Work::FedPrepared {
                    fed: id,
                    round,
                    jobs,
                })
                .await;
        });
    }

    fn fed_prepared(
        &mut self,
        fed: Hash32,
        round: u32,
        jobs: Vec<(AccountId, anyhow::Result<(PreparedJob, tasks::JobNotes)>)>,
    ) {
        let results = self.results_dir();
        let Some(i) = self
            .feds
            .iter()
            .position(|f| f.id == fed && f.round == round)
        else {
            return;
        };
        let mut submitted = Vec::new();
        let mut failed = Vec::new();
        for (owner, r) in jobs {
            // A round submitted before a restart that came before its state
            // was saved: that job, not a second one (which the owner refuses).
            let earlier = self.core.jobs().find(|j| {
                j.provider.is_none_or(|p| p == owner)
                    && matches!(&j.spec.kind, protocol::JobKind::FedRound { federation, round: r, .. }
                        if *federation == fed && *r == round)
                    && self.feds[i].owners.iter().any(|o| o.account == owner && o.data.id == j.spec.dataset.hash)
            });
            if let Some(j) = earlier {
                submitted.push((owner, j.id));
                continue;
            }
            let id = r.and_then(|(p, notes)| {
                let id = self
                    .core
                    .submit(net::now(), p, &mut self.rng, &mut self.out)?;
                let bytes = serde_json::to_vec(&notes)?;
                std::fs::write(tasks::notes_path(&results, &id), bytes)?;
                anyhow::Ok(id)
            });
            match id {
                Ok(id) => submitted.push((owner, id)),
                Err(e) => failed.push((owner, format!("{e:#}"))),
            }
        }
        self.carry_out();
        let f = &mut self.feds[i];
        let now = net::now().0;
        for (owner, why) in failed {
            if let Some(o) = f.owners.iter_mut().find(|o| o.account == owner) {
                o.dropped = Some(format!("round {round}: {why}"));
            }
        }
        f.event(
            now,
            format!(
                "round {round} of {}: {} owner jobs submitted",
                f.request.rounds,
                submitted.len()
            ),
        );
        f.jobs = submitted;
        f.state = federated::FedState::Running;
        if let Err(e) = f.save(&results) {
            warn!(%e, "cannot save a federated job's state");
        }
    }

    /// Move each federated job whose round has ended on: average the
    /// owners' models, then the next round, or the end.
    fn poll_federations(&mut self) {
        let results = self.results_dir();
        for i in 0..self.feds.len() {
            if self.feds[i].state != federated::FedState::Running {
                continue;
            }
            let mut delivered = Vec::new();
            let mut failed = Vec::new();
            let mut going = false;
            for (owner, job) in &self.feds[i].jobs {
                let Some(j) = self.core.job(job) else {
                    failed.push((*owner, "the job is gone".to_string()));
                    continue;
                };
                match federated::round_job(&views::job_view(&self.core, j)) {
                    federated::RoundJob::Going => going = true,
                    federated::RoundJob::Delivered(p) => delivered.push((*owner, p)),
                    federated::RoundJob::Failed(why) => failed.push((*owner, why)),
                }
            }
            if going {
                continue;
            }
            let f = &mut self.feds[i];
            let now = net::now().0;
            let round = f.round;
            for (owner, why) in failed {
                if let Some(o) = f.owners.iter_mut().find(|o| o.account == owner) {
                    o.dropped = Some(format!("round {round}: {why}"));
                }
                f.event(
                    now,
                    format!("round {round}: owner {} dropped: {why}", owner.short()),
                );
            }
            let updates: anyhow::Result<Vec<(u64, Vec<u8>)>> = delivered
                .iter()
                .map(|(owner, path)| {
                    let rows = f
                        .owners
                        .iter()
                        .find(|o| o.account == *owner)
                        .map_or(0, |o| o.data.rows);
                    Ok((rows, std::fs::read(path)?))
                })
                .collect();
            let next = updates.and_then(|u| {
                if u.len() < f.request.min_owners {
                    bail!(
                        "round {round}: {} of the owners delivered, the job needs {}",
                        u.len(),
                        f.request.min_owners
                    );
                }
                let global = std::fs::read(&f.model)?;
                federated::aggregate(&global, &u, f.request.task)
            });
            match next {
                Err(e) => {
                    let why = format!("{e:#}");
                    f.event(now, format!("ended: {why}; no later round is escrowed"));
                    f.state = federated::FedState::Failed(why);
                }
                Ok(model) => {
                    for (owner, _) in &delivered {
                        if let Some(o) = f.owners.iter_mut().find(|o| o.account == *owner) {
                            o.rounds_done += 1;
                        }
                    }
                    let path = results.join(format!("{}.r{round}.safetensors", f.id.short()));
                    if let Err(e) = std::fs::write(&path, &model) {
                        warn!(%e, "cannot write a federated job's model");
                        continue;
                    }
                    f.model = path;
                    f.event(
                        now,
                        format!(
                            "round {round}: averaged {} owners' models, weighted by their rows",
                            delivered.len()
                        ),
                    );
                    if round >= f.request.rounds {
                        f.state = federated::FedState::Done;
                        let final_model = results.join(format!("{}.safetensors", f.id.short()));
                        if std::fs::write(&final_model, &model).is_ok() {
                            f.model = final_model;
                        }
                        let spent: Vec<String> = f
                            .owners
                            .iter()
                            .map(|o| format!("{} ε {:.3}", o.account.short(), o.epsilon))
                            .collect();
                        f.event(
                            now,
                            format!("done: {} ({})", f.model.display(), spent.join(", ")),
                        );
                    } else {
                        f.round += 1;
                        f.state = federated::FedState::Preparing;
                        f.jobs.clear();
                    }
                }
            }
            if let Err(e) = f.save(&results) {
                warn!(%e, "cannot save a federated job's state");
            }
            if self.feds[i].state == federated::FedState::Preparing {
                let f = self.feds[i].clone();
                self.start_round(&f);
            }
        }
    }
}
