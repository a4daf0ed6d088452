//! The running node: the network loop, the blob node, the ledger and the control
//! API, and the node loop that ties them to the engines.
//!
//! Tasks: the libp2p [`net::EventLoop`] (owns the swarm), the iroh router (owns the
//! blob endpoint), the control API server, and the node loop here. The node loop
//! owns the engines (requester always; provider and oracle by role) and the
//! ledger, and runs `tokio::select!` over network events, control requests, the
//! results of background work (fetching blobs, running and checking jobs) and the
//! engines' timers. Engines never wait: what takes long runs beside the loop and
//! comes back as a [`Work`] event.
//!
//! The roles' halves of a job's life are in [`requester`], [`provider`] and
//! [`oracle`]; the ledger's sync and the committee's checkpoints in [`ledger`].

mod ledger;
mod oracle;
mod provider;
mod requester;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use crdt_ledger::{FileStore, GenesisEntry, Ledger, PeerState};
use libp2p::{Multiaddr, PeerId};
use protocol::market::{
    ProviderEngine, ProviderInput, RequesterConfig, RequesterEngine, RequesterInput,
};
use protocol::oracle::{DeferredChecker, OracleConfig, OracleEngine};
use protocol::{
    AccountId, Bps, DurationMs, Frame, Hash32, Identity, Message, NetworkId, Timestamp,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::blobs::{BlobNode, StoreKind};
use crate::config::DataDir;
use crate::control::{self, BlobAdded, BlobFetched, ControlRequest, OfferView, Status};
use crate::direct::Direct;
use crate::net::{self, BasicValidator, NetEvent, NetOptions};

pub use requester::JobRequest;

/// How often the loop does its housekeeping (ledger sync refresh, committee
/// timers, retries).
const TICK: std::time::Duration = std::time::Duration::from_millis(250);
/// How often the DHT is asked for providers (the first time at start).
const DISCOVER_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Timing of the market and the committee. The defaults suit a real network; a
/// demo or a test shortens them.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long after a deadline a receipt is still awaited.
    pub grace: DurationMs,
    /// How long after a receipt the committee waits for a dispute.
    pub dispute_window: DurationMs,
    /// How often oracles probe a provider while it works.
    pub probe_every: DurationMs,
    /// How long an offer lives before the provider refreshes it.
    pub offer_ttl: DurationMs,
    /// The margin a provider adds to its estimated finish time (its SLA term).
    pub deadline_slack: DurationMs,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            grace: DurationMs::secs(60),
            dispute_window: DurationMs::secs(10),
            probe_every: DurationMs::secs(30),
            offer_ttl: DurationMs::secs(600),
            deadline_slack: DurationMs::secs(30),
        }
    }
}

impl Timing {
    /// Short timeouts for local testbeds and tests.
    pub fn quick() -> Self {
        Timing {
            grace: DurationMs::secs(5),
            dispute_window: DurationMs::secs(1),
            probe_every: DurationMs::secs(2),
            offer_ttl: DurationMs::secs(120),
            deadline_slack: DurationMs::secs(2),
        }
    }
}

/// How the node runs (from the config file and the command line).
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub genesis: GenesisEntry,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    pub blob_bind: SocketAddr,
    pub relay: bool,
    pub control: SocketAddr,
    /// Sell compute: benchmark the device, publish and refresh offers, run jobs.
    pub provider: bool,
    /// Serve on the committee when drawn: probe, verify, sign verdicts and
    /// checkpoints.
    pub oracle: bool,
    /// A provider that fakes its results (to show the committee catching it).
    pub faulty: bool,
    pub timing: Timing,
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
            blob_bind: c
                .net
                .blob_bind
                .parse()
                .with_context(|| format!("net.blob_bind {:?}", c.net.blob_bind))?,
            relay: c.net.relay,
            control: c.net.control.parse().context("net.control")?,
            provider: false,
            oracle: false,
            faulty: false,
            timing: Timing::default(),
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
            blob_bind: lo,
            relay: false,
            control: lo,
            provider: false,
            oracle: false,
            faulty: false,
            timing: Timing::default(),
        }
    }
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
    /// The provider ran (or failed to run) a contract's job.
    Ran {
        contract: Hash32,
        result: anyhow::Result<provider::RanJob>,
    },
    /// A committee member checked a delivered result.
    Checked {
        contract: Hash32,
        result: anyhow::Result<compute::verify::Verdict>,
    },
    /// The requester fetched and decrypted a result.
    Fetched {
        job: Hash32,
        result: anyhow::Result<requester::Fetched>,
    },
    /// Providers found in the DHT under a resource class.
    Providers(Vec<PeerId>),
    /// The requester's inputs are encrypted and stored: submit the job.
    Prepared {
        result: anyhow::Result<requester::Prepared>,
        reply: oneshot::Sender<anyhow::Result<control::JobView>>,
    },
}

/// A job key handed to this node (as provider or committee member).
#[derive(Debug, Clone)]
struct Grant {
    key: crate::crypto::JobKey,
    requester: AccountId,
    contact: Vec<String>,
}

struct NodeLoop {
    dir: DataDir,
    identity: Identity,
    network: NetworkId,
    opts: RunOptions,
    net: net::Client,
    blobs: BlobNode,
    ledger: Ledger<FileStore>,
    /// Automerge sync state per connected peer.
    sync: HashMap<PeerId, PeerState>,
    /// Every node is a requester: it keeps the order book of offers it hears.
    requester: RequesterEngine,
    provider: Option<ProviderEngine>,
    oracle: Option<OracleEngine<DeferredChecker>>,
    /// The epoch last handed to the oracle engine.
    oracle_epoch: Option<u64>,
    /// The provider's latest signed offer, handed to each peer that connects so a
    /// late joiner need not wait for the next refresh.
    last_offer: Option<protocol::Signed<protocol::Offer>>,
    /// Where each provider serves blobs (from its offers).
    contacts: HashMap<AccountId, Vec<String>>,
    rng: ChaCha20Rng,
    connected: HashSet<PeerId>,
    work_tx: mpsc::Sender<Work>,
    /// The requester's jobs by job id, and contract → job.
    jobs: BTreeMap<Hash32, requester::LocalJob>,
    job_of: HashMap<Hash32, Hash32>,
    /// Keys handed to us, by contract.
    grants: HashMap<Hash32, Grant>,
    prov: provider::State,
    orc: oracle::State,
    ckpt: ledger::CommitteeState,
    /// The ledger changed since the engines last looked.
    ledger_dirty: bool,
}

/// Start a node from its data directory.
pub async fn start(dir: DataDir, opts: RunOptions) -> anyhow::Result<RunningNode> {
    let account = dir.identity.account();
    let span = info_span!("peer", id = %account.short());
    dir.install_genesis(&opts.genesis)?;
    let network = opts.genesis.network();
    let store = FileStore::open(&dir.path.join("ledger"))
        .with_context(|| format!("cannot open the ledger in {}", dir.path.display()))?;
    let (ledger, report) =
        Ledger::open(opts.genesis.clone(), &account.0, store).context("cannot load the ledger")?;
    info!(parent: &span, entries = report.entries, network = %network, "ledger loaded");
    let blob_dir = dir.path.join("blobs");
    std::fs::create_dir_all(&blob_dir)
        .with_context(|| format!("cannot create {}", blob_dir.display()))?;
    let blobs = BlobNode::spawn(
        &dir.identity,
        StoreKind::Dir(&blob_dir),
        opts.blob_bind,
        opts.relay,
    )
    .instrument(span.clone())
    .await?;
    let net_opts = NetOptions {
        network,
        listen: opts.listen.clone(),
        bootstrap: opts.bootstrap.clone(),
        mdns: opts.mdns,
        rebootstrap: std::time::Duration::from_secs(60),
    };
    let (client, event_loop, events) =
        net::new(&dir.identity, &net_opts, BasicValidator::new(network))?;
    let net_task = tokio::spawn(event_loop.run().instrument(span.clone()));
    let (ctl_tx, ctl_rx) = mpsc::channel(64);
    let (control_addr, _server) = control::serve(&dir.path, opts.control, ctl_tx).await?;
    info!(parent: &span, %control_addr, "control API listening");
    let provider = if opts.provider {
        let cfg = provider::config(&dir, &blobs, &opts)
            .instrument(span.clone())
            .await?;
        Some(ProviderEngine::new(dir.identity.clone(), network, cfg))
    } else {
        None
    };
    let oracle = opts.oracle.then(|| {
        let cfg = OracleConfig {
            // Every receipt is re-checked: one link of a chain or a sample of rows
            // costs little next to the job, and a node has few contracts.
            verify_share: Bps(10_000),
            // The ledger checks settlements against the genesis fee.
            fee: opts.genesis.genesis().params.oracle_fee,
            grace: opts.timing.grace,
            dispute_window: opts.timing.dispute_window,
            probe_every: opts.timing.probe_every,
            delivery_tolerance: DurationMs::secs(5),
            quorum_wait: DurationMs::secs(2),
            ..OracleConfig::default()
        };
        OracleEngine::new(dir.identity.clone(), network, cfg, DeferredChecker)
    });
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("OS random number generator: {e}"))?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let (work_tx, work_rx) = mpsc::channel(256);
    let node = NodeLoop {
        requester: RequesterEngine::new(
            dir.identity.clone(),
            network,
            RequesterConfig {
                grace: opts.timing.grace,
                ..RequesterConfig::default()
            },
        ),
        provider,
        oracle,
        oracle_epoch: None,
        last_offer: None,
        contacts: HashMap::new(),
        rng: ChaCha20Rng::from_seed(seed),
        identity: dir.identity.clone(),
        dir,
        network,
        opts,
        net: client.clone(),
        blobs: blobs.clone(),
        ledger,
        sync: HashMap::new(),
        connected: Default::default(),
        work_tx,
        jobs: BTreeMap::new(),
        job_of: HashMap::new(),
        grants: HashMap::new(),
        prov: Default::default(),
        orc: Default::default(),
        ckpt: Default::default(),
        ledger_dirty: false,
    };
    let task = tokio::spawn(node.run(events, ctl_rx, work_rx, stop_rx).instrument(span));
    Ok(RunningNode {
        account,
        control_addr,
        net: client,
        blobs,
        stop: Some(stop_tx),
        task,
        net_task,
    })
}

impl NodeLoop {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<NetEvent>,
        mut control: mpsc::Receiver<ControlRequest>,
        mut work: mpsc::Receiver<Work>,
        mut stop: oneshot::Receiver<()>,
    ) {
        if let Some(p) = &self.provider {
            // Announce ourselves in the DHT under our resource class.
            let (net, class) = (self.net.clone(), p.config().class);
            tokio::spawn(async move {
                if let Err(e) = net.start_providing(class).await {
                    debug!(%e, "cannot announce in the DHT yet");
                }
            });
            let out = self.provider_handle(ProviderInput::Start);
            self.on_provider_out(out).await;
        }
        let mut discover = tokio::time::interval(DISCOVER_EVERY);
        if self.oracle.is_some() {
            self.stake_for_committee();
        }
        self.on_ledger_changed().await;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = self.next_timer();
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
                Some(w) = work.recv() => self.on_work(w).await,
                _ = timer => self.on_timers().await,
                _ = tick.tick() => self.on_tick().await,
                _ = discover.tick() => self.discover_providers(),
                _ = &mut stop => break,
            }
            // What the event wrote or synced into the ledger may settle or
            // finalize something; acting on it may write again (bounded).
            for _ in 0..8 {
                if !std::mem::take(&mut self.ledger_dirty) {
                    break;
                }
                self.on_ledger_changed().await;
                self.sync_all().await;
            }
        }
        info!("node stopped");
    }

    /// The earliest engine timer.
    fn next_timer(&self) -> Option<Timestamp> {
        [
            self.requester.poll_timeout(),
            self.provider
                .as_ref()
                .and_then(ProviderEngine::poll_timeout),
            self.oracle.as_ref().and_then(OracleEngine::poll_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    async fn on_timers(&mut self) {
        let now = net::now();
        if let Some(p) = self.provider.as_mut() {
            let out = p.handle_timeout(now, &mut self.rng);
            self.on_provider_out(out).await;
        }
        if let Some(o) = self.oracle.as_mut() {
            let out = o.handle_timeout(now, &mut self.rng);
            self.on_oracle_out(out).await;
        }
        let rep = self.reputation();
        let out = self.requester.handle_timeout(now, &rep, &mut self.rng);
        self.on_requester_out(out).await;
    }

    /// Housekeeping: the committee's checkpoint timer, retries, ledger sync.
    async fn on_tick(&mut self) {
        self.checkpoint_tick().await;
        self.oracle_tick().await;
        self.sync_all().await;
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

    /// Where a provider serves blobs (from its offers).
    fn contact_of(&self, provider: &AccountId) -> Vec<String> {
        self.contacts.get(provider).cloned().unwrap_or_default()
    }

    async fn send(&self, to: &AccountId, message: Message) {
        let peer = match to.peer_id() {
            Ok(p) => p,
            Err(e) => return warn!(%e, "cannot address a peer"),
        };
        self.send_direct(peer, Direct::Frame(Frame::new(self.network, message)));
    }

    /// Send a direct message beside the loop (answers come back as messages of
    /// their own; the response is an empty ack).
    fn send_direct(&self, peer: PeerId, d: Direct) {
        if peer == self.net.peer_id {
            return;
        }
        let bytes = match d.to_bytes() {
            Ok(b) => b,
            Err(e) => return warn!(%e, "cannot encode a direct message"),
        };
        let net = self.net.clone();
        tokio::spawn(async move {
            if let Err(e) = net.request(peer, bytes).await {
                debug!(%peer, %e, "direct message not delivered");
            }
        });
    }

    async fn publish(&self, message: Message) {
        if let Err(e) = self.net.publish(Frame::new(self.network, message)).await {
            // No peer subscribed yet is normal at start; the next refresh retries.
            debug!(%e, "publish failed");
        }
    }

    async fn on_net(&mut self, e: NetEvent) {
        match e {
            NetEvent::Gossip { frame, .. } => self.on_message(frame.message, true).await,
            NetEvent::Request {
                from,
                data,
                channel,
            } => {
                let _ = self.net.respond(channel, Vec::new()).await;
                match Direct::from_bytes(&data, &self.network) {
                    Ok(Direct::Frame(f)) => self.on_message(f.message, false).await,
                    Ok(Direct::LedgerSync(b)) => self.on_sync(from, &b).await,
                    Ok(Direct::Proposal(p)) => self.on_proposal(from, *p).await,
                    Ok(Direct::Vote {
                        proposal,
                        signer,
                        sig,
                    }) => self.on_vote(proposal, signer, sig).await,
                    Err(e) => debug!(%from, %e, "bad direct message"),
                }
            }
            NetEvent::Connected(p) => {
                if self.connected.insert(p) {
                    if let Some(offer) = self.last_offer.clone() {
                        let m = Frame::new(self.network, Message::Offer(offer));
                        self.send_direct(p, Direct::Frame(m));
                    }
                    self.sync.insert(p, PeerState::new());
                    self.sync_with(p);
                }
            }
            NetEvent::Rejected { .. } => {}
        }
    }

    /// A message from gossip (already validated by the net loop) or sent directly.
    async fn on_message(&mut self, m: Message, gossip: bool) {
        let now = net::now();
        match m {
            Message::Offer(s) => {
                if let Ok(o) = s.body_unverified() {
                    self.contacts.insert(o.provider, o.contact.clone());
                    let input = ProviderInput::CompetitorPrice {
                        provider: o.provider,
                        class: o.class,
                        price: o.price,
                    };
                    let out = self.provider_handle(input);
                    self.on_provider_out(out).await;
                }
                self.requester_handle(RequesterInput::Offer(s)).await;
            }
            Message::Bid(b) if gossip => {
                let out = self.provider_handle(ProviderInput::Bid(b));
                self.on_provider_out(out).await;
            }
            Message::Proposal(p) if !gossip => {
                let out = self.provider_handle(ProviderInput::Proposal(p));
                self.on_provider_out(out).await;
            }
            Message::Answer(a) if !gossip => {
                self.requester_handle(RequesterInput::Answer(a)).await;
            }
            Message::Probe(p) if !gossip => {
                let out = self.provider_handle(ProviderInput::Probe(p));
                self.on_provider_out(out).await;
            }
            Message::ProbeReply(r) if !gossip => {
                self.oracle_handle(protocol::oracle::OracleInput::ProbeReply(r))
                    .await;
            }
            Message::KeyGrant(g) if !gossip => self.on_grant(g, now).await,
            Message::Contract(c) if gossip => {
                self.provider_saw_contract(c.clone()).await;
                self.oracle_handle(protocol::oracle::OracleInput::Contract(c))
                    .await;
            }
            Message::Receipt(r) if gossip => {
                self.requester_handle(RequesterInput::Receipt(r.clone()))
                    .await;
                self.oracle_handle(protocol::oracle::OracleInput::Receipt(r))
                    .await;
            }
            Message::Verdict(v) if gossip => {
                self.oracle_handle(protocol::oracle::OracleInput::Verdict(v))
                    .await;
            }
            Message::Dispute(d) if gossip => {
                self.oracle_handle(protocol::oracle::OracleInput::Dispute(d))
                    .await;
            }
            other => debug!(kind = other.kind(), gossip, "message ignored"),
        }
    }

    async fn on_work(&mut self, w: Work) {
        match w {
            Work::Ran { contract, result } => self.on_ran(contract, result).await,
            Work::Checked { contract, result } => self.on_checked(contract, result).await,
            Work::Fetched { job, result } => self.on_fetched(job, result),
            Work::Prepared { result, reply } => self.on_prepared(result, reply).await,
            Work::Providers(peers) => {
                // Talking to a provider connects us, and a provider hands its
                // offer to every peer that connects: a late joiner need not wait
                // for the next gossip refresh.
                for p in peers {
                    if p != self.net.peer_id && !self.connected.contains(&p) {
                        self.sync.entry(p).or_default();
                        self.sync_with(p);
                    }
                }
            }
        }
    }

    /// Something new in the ledger (our write, or a peer's through sync): hand
    /// what it settles or finalizes to the engines.
    async fn on_ledger_changed(&mut self) {
        self.oracle_epoch_update().await;
        self.provider_contracts_ready().await;
        self.settlements_seen().await;
    }

    async fn on_control(&mut self, r: ControlRequest) {
        match r {
            ControlRequest::Status(reply) => {
                let _ = reply.send(self.status().await);
            }
            ControlRequest::Offers(reply) => {
                let _ = reply.send(Ok(self.offers()));
            }
            ControlRequest::AddBlob { path, reply } => {
                let _ = reply.send(self.add_blob(path).await);
            }
            ControlRequest::GetBlob { source, out, reply } => {
                // Transfers can be long: run them beside the loop.
                let blobs = self.blobs.clone();
                tokio::spawn(async move {
                    let _ = reply.send(get_blob(&blobs, &source, out).await);
                });
            }
            ControlRequest::Submit { job, reply } => self.submit(*job, reply),
            ControlRequest::Jobs(reply) => {
                let _ = reply.send(Ok(self.jobs.values().map(|j| j.view()).collect()));
            }
            ControlRequest::Job { id, reply } => {
                let _ = reply.send(self.job_view(&id));
            }
            ControlRequest::Balance { account, reply } => {
                let _ = reply.send(self.balance(account));
            }
            ControlRequest::Ledger { tail, reply } => {
                let _ = reply.send(Ok(self.ledger_view(tail)));
            }
            ControlRequest::Transfer { body, reply } => {
                let _ = reply.send(self.transfer(body));
            }
        }
    }

    fn offers(&self) -> Vec<OfferView> {
        let now = net::now();
        let mut offers: Vec<&protocol::Offer> = self
            .requester
            .book()
            .iter()
            .map(|e| &*e.offer)
            .filter(|o| o.expires_at > now)
            .collect();
        offers.sort_by_key(|o| (o.price, o.provider));
        offers
            .into_iter()
            .map(|o| OfferView {
                provider: o.provider.to_string(),
                class: format!("{:?}", o.class),
                device: o.device.clone(),
                speed_cu_per_s: o.speed_milli_cu_per_s as f64 / 1000.0,
                price_micro_per_cu: o.price.0,
                free_slots: o.slots.saturating_sub(o.busy_slots),
                region: o.region.clone(),
                expires_in_s: o.expires_at.since(now).as_secs_f64(),
            })
            .collect()
    }

    async fn status(&mut self) -> anyhow::Result<Status> {
        let id = &self.dir.identity;
        let me = id.account();
        let roles = [
            (true, "requester"),
            (self.provider.is_some(), "provider"),
            (self.oracle.is_some(), "oracle"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, r)| r.to_string())
        .collect();
        Ok(Status {
            account: me.to_string(),
            peer_id: id.peer_id().to_string(),
            endpoint_id: id.endpoint_id().to_string(),
            network: self.network.to_string(),
            listen: self
                .net
                .listen_addrs()
                .await?
                .iter()
                .map(ToString::to_string)
                .collect(),
            blob_addrs: self.blobs.contact(),
            connected_peers: self.connected.len(),
            transfers: self.blobs.transfers(),
            roles,
            ledger_entries: self.ledger.entry_count(),
            finalized_epoch: self.ledger.finalized_epoch(),
            balance: self.ledger.balance(&me).0,
        })
    }

    async fn add_blob(&self, path: PathBuf) -> anyhow::Result<BlobAdded> {
        let size = std::fs::metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        let hash = self.blobs.add_path(&path).await?;
        Ok(BlobAdded {
            hash: hash.to_string(),
            size,
            ticket: self.blobs.ticket(&hash).to_string(),
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
        let n = fetch_logged(blobs, ticket.addr().clone(), &hash).await?;
        (hash, n)
    };
    blobs.export(&hash, &out).await?;
    Ok(BlobFetched {
        hash: hash.to_string(),
        bytes_fetched: fetched,
        out,
    })
}

/// Fetch a delivered result from its provider, decrypt it and read the bundle.
async fn fetch_result(
    blobs: &BlobNode,
    contact: &[String],
    receipt: &protocol::Receipt,
    key: crate::crypto::JobKey,
) -> anyhow::Result<crate::work::JobResult> {
    let from = BlobNode::peer_addr(&receipt.provider, contact)?;
    fetch_logged(blobs, from, &receipt.result.hash).await?;
    let ct = blobs.get_bytes(&receipt.result.hash).await?;
    let contract = receipt.contract;
    tokio::task::spawn_blocking(move || {
        let plain = crate::crypto::decrypt(&key, "result", &contract, &ct)?;
        crate::work::JobResult::from_bytes(&plain)
    })
    .await?
}

/// Fetch a blob, logging progress every 16 MiB.
async fn fetch_logged(
    blobs: &BlobNode,
    from: iroh::EndpointAddr,
    hash: &Hash32,
) -> anyhow::Result<u64> {
    let mut last = 0u64;
    blobs
        .fetch(from, hash, |b| {
            if b >= last + (16 << 20) {
                last = b;
                info!(hash = %hash.short(), mib = b >> 20, "fetching");
            }
        })
        .await
}
