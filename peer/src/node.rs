//! The running node: the network loop, the blob node and the control API, and the
//! node loop that ties them to the engines.
//!
//! Tasks: the libp2p [`net::EventLoop`] (owns the swarm), the iroh router (owns
//! the blob endpoint), the control API server, and the node loop here, which
//! receives validated network events and control requests and answers them.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use libp2p::Multiaddr;
use protocol::market::{
    PricingConfig, ProviderConfig, ProviderEngine, ProviderInput, ProviderOutput, RequesterConfig,
    RequesterEngine, RequesterInput, RequesterOutput, UniformReputation,
};
use protocol::{
    AccountId, Bps, DurationMs, Frame, Hash32, Message, NetworkId, PricePerCu, ResourceClass,
    SlaTerms, Timestamp,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::blobs::{BlobNode, StoreKind};
use crate::config::DataDir;
use crate::control::{self, BlobAdded, BlobFetched, ControlRequest, OfferView, Status};
use crate::net::{self, BasicValidator, NetEvent, NetOptions};

/// How the node runs (from the config file and the command line).
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub network: NetworkId,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    pub blob_bind: SocketAddr,
    pub relay: bool,
    pub control: SocketAddr,
    /// Sell compute: benchmark the device, publish and refresh offers.
    pub provider: bool,
}

impl RunOptions {
    /// From a loaded data directory's config.
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
            network: NetworkId::named(&c.network),
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
        })
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
}

impl RunningNode {
    /// Stop the node loop and close the blob store.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        self.blobs.shutdown().await
    }

    /// Wait until the node stops by itself (it does not, unless it fails).
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }
}

struct NodeLoop {
    dir: DataDir,
    network: NetworkId,
    net: net::Client,
    blobs: BlobNode,
    /// Every node is a requester: it keeps the order book of offers it hears.
    requester: RequesterEngine,
    provider: Option<ProviderEngine>,
    /// The provider's latest signed offer, handed to each peer that connects so a
    /// late joiner need not wait for the next refresh.
    last_offer: Option<protocol::Signed<protocol::Offer>>,
    rng: ChaCha20Rng,
    connected: std::collections::HashSet<libp2p::PeerId>,
}

/// Benchmark the device and describe what this provider sells.
async fn provider_config(dir: &DataDir, blobs: &BlobNode) -> anyhow::Result<ProviderConfig> {
    let pref = match dir.config.provider.backend.as_str() {
        "cpu" => compute::BackendPreference::Cpu,
        "wgpu" => compute::BackendPreference::Wgpu,
        _ => compute::BackendPreference::Auto,
    };
    let (reason, bench) = tokio::task::spawn_blocking(move || {
        let sel = compute::select_backend(pref)?;
        let bench = compute::bench::device_gflops(&*sel.backend)?;
        Ok::<_, compute::ComputeError>((sel.reason, bench))
    })
    .await
    .context("the benchmark task failed")??;
    info!(%reason, gflops = format!("{:.1}", bench.gflops), "benchmarked the device");
    let gpu = matches!(
        bench.backend.device_type.as_str(),
        "DiscreteGpu" | "IntegratedGpu"
    );
    let floor = dir.config.provider.price_floor.max(1);
    Ok(ProviderConfig {
        class: if gpu {
            ResourceClass::Gpu
        } else {
            ResourceClass::Cpu
        },
        device: bench
            .backend
            .name
            .chars()
            .take(protocol::MAX_TEXT)
            .collect(),
        speed_milli_cu_per_s: (bench.gflops * 1000.0).max(1.0) as u64,
        region: dir.config.provider.region.clone(),
        contact: blobs.contact(),
        slots: dir.config.provider.slots,
        sla: SlaTerms {
            deadline_slack: DurationMs::secs(30),
            availability: Bps(9_500),
            penalty: Bps(1_000),
        },
        offer_ttl: DurationMs::secs(600),
        pricing: PricingConfig {
            cost: PricePerCu(floor),
            initial: PricePerCu(floor.saturating_mul(2)),
            ..PricingConfig::default()
        },
        ..ProviderConfig::default()
    })
}

/// Start a node from its data directory.
pub async fn start(dir: DataDir, opts: RunOptions) -> anyhow::Result<RunningNode> {
    let account = dir.identity.account();
    let span = info_span!("peer", id = %account.short());
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
        network: opts.network,
        listen: opts.listen.clone(),
        bootstrap: opts.bootstrap.clone(),
        mdns: opts.mdns,
        rebootstrap: std::time::Duration::from_secs(60),
    };
    let (client, event_loop, events) =
        net::new(&dir.identity, &net_opts, BasicValidator::new(opts.network))?;
    tokio::spawn(event_loop.run().instrument(span.clone()));
    let (ctl_tx, ctl_rx) = mpsc::channel(64);
    let (control_addr, _server) = control::serve(&dir.path, opts.control, ctl_tx).await?;
    info!(parent: &span, %control_addr, "control API listening");
    let provider = if opts.provider {
        let cfg = provider_config(&dir, &blobs)
            .instrument(span.clone())
            .await?;
        Some(ProviderEngine::new(dir.identity.clone(), opts.network, cfg))
    } else {
        None
    };
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("OS random number generator: {e}"))?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let node = NodeLoop {
        requester: RequesterEngine::new(
            dir.identity.clone(),
            opts.network,
            RequesterConfig::default(),
        ),
        provider,
        last_offer: None,
        rng: ChaCha20Rng::from_seed(seed),
        dir,
        network: opts.network,
        net: client.clone(),
        blobs: blobs.clone(),
        connected: Default::default(),
    };
    let task = tokio::spawn(node.run(events, ctl_rx, stop_rx).instrument(span));
    Ok(RunningNode {
        account,
        control_addr,
        net: client,
        blobs,
        stop: Some(stop_tx),
        task,
    })
}

impl NodeLoop {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<NetEvent>,
        mut control: mpsc::Receiver<ControlRequest>,
        mut stop: oneshot::Receiver<()>,
    ) {
        if self.provider.is_some() {
            let out = self.provider_handle(ProviderInput::Start);
            self.on_provider_out(out).await;
        }
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
                _ = timer => self.on_timers().await,
                _ = &mut stop => break,
            }
        }
        info!("node stopped");
    }

    /// The earliest engine timer.
    fn next_timer(&self) -> Option<Timestamp> {
        let r = self.requester.poll_timeout();
        let p = self
            .provider
            .as_ref()
            .and_then(ProviderEngine::poll_timeout);
        match (r, p) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn on_timers(&mut self) {
        let now = net::now();
        if let Some(p) = self.provider.as_mut() {
            let out = p.handle_timeout(now, &mut self.rng);
            self.on_provider_out(out).await;
        }
        let out = self
            .requester
            .handle_timeout(now, &UniformReputation(0.9), &mut self.rng);
        self.on_requester_out(out).await;
    }

    fn provider_handle(&mut self, input: ProviderInput) -> Vec<ProviderOutput> {
        let now = net::now();
        match self.provider.as_mut() {
            Some(p) => p.handle(now, input, &mut self.rng),
            None => Vec::new(),
        }
    }

    async fn send(&self, to: &protocol::AccountId, message: Message) {
        let peer = match to.peer_id() {
            Ok(p) => p,
            Err(e) => return warn!(%e, "cannot address a peer"),
        };
        self.send_to_peer(peer, message).await;
    }

    async fn send_to_peer(&self, peer: libp2p::PeerId, message: Message) {
        let bytes = match Frame::new(self.network, message).to_bytes() {
            Ok(b) => b,
            Err(e) => return warn!(%e, "cannot encode a message"),
        };
        // Answers come back as messages of their own; the response is an ack.
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

    async fn on_provider_out(&mut self, out: Vec<ProviderOutput>) {
        for o in out {
            match o {
                ProviderOutput::Publish(m) => {
                    if let Message::Offer(s) = &m {
                        self.last_offer = Some(s.clone());
                        // Our own offer goes into our own book too.
                        let out = self.requester.handle(
                            net::now(),
                            RequesterInput::Offer(s.clone()),
                            &UniformReputation(0.9),
                            &mut self.rng,
                        );
                        Box::pin(self.on_requester_out(out)).await;
                    }
                    self.publish(m).await;
                }
                ProviderOutput::Send { to, message } => self.send(&to, message).await,
                ProviderOutput::Rejected { requester, reason } => {
                    info!(requester = %requester.short(), ?reason, "refused a proposal");
                }
                ProviderOutput::PriceChanged { price } => info!(price = price.0, "price changed"),
                ProviderOutput::Run { contract, .. } => {
                    // Running jobs arrives with the ledger's escrow (next step of the
                    // node): until then the provider reports that it cannot run it.
                    let out = self.provider_handle(ProviderInput::Aborted {
                        contract,
                        reason: "this node does not run jobs yet".into(),
                    });
                    Box::pin(self.on_provider_out(out)).await;
                }
                _ => {}
            }
        }
    }

    async fn on_requester_out(&mut self, out: Vec<RequesterOutput>) {
        for o in out {
            match o {
                RequesterOutput::Publish(m) => self.publish(m).await,
                RequesterOutput::Send { to, message } => self.send(&to, message).await,
                _ => {}
            }
        }
    }

    async fn on_net(&mut self, e: NetEvent) {
        let now = net::now();
        match e {
            NetEvent::Gossip { frame, .. } => match frame.message {
                Message::Offer(s) => {
                    if let Ok(o) = s.body_unverified() {
                        let input = ProviderInput::CompetitorPrice {
                            provider: o.provider,
                            class: o.class,
                            price: o.price,
                        };
                        let out = self.provider_handle(input);
                        self.on_provider_out(out).await;
                    }
                    let out = self.requester.handle(
                        now,
                        RequesterInput::Offer(s),
                        &UniformReputation(0.9),
                        &mut self.rng,
                    );
                    self.on_requester_out(out).await;
                }
                Message::Bid(b) => {
                    let out = self.provider_handle(ProviderInput::Bid(b));
                    self.on_provider_out(out).await;
                }
                _ => {}
            },
            NetEvent::Request {
                from,
                data,
                channel,
            } => {
                let _ = self.net.respond(channel, Vec::new()).await;
                let frame = match Frame::from_bytes(&data, &self.network) {
                    Ok(f) => f,
                    Err(e) => return debug!(%from, %e, "bad direct message"),
                };
                match frame.message {
                    Message::Offer(o) => {
                        // A provider introducing itself (the book verifies it).
                        let out = self.requester.handle(
                            now,
                            RequesterInput::Offer(o),
                            &UniformReputation(0.9),
                            &mut self.rng,
                        );
                        self.on_requester_out(out).await;
                    }
                    Message::Proposal(p) => {
                        let out = self.provider_handle(ProviderInput::Proposal(p));
                        self.on_provider_out(out).await;
                    }
                    Message::Answer(a) => {
                        let out = self.requester.handle(
                            now,
                            RequesterInput::Answer(a),
                            &UniformReputation(0.9),
                            &mut self.rng,
                        );
                        self.on_requester_out(out).await;
                    }
                    Message::Probe(p) => {
                        let out = self.provider_handle(ProviderInput::Probe(p));
                        self.on_provider_out(out).await;
                    }
                    _ => {}
                }
            }
            NetEvent::Connected(p) => {
                if self.connected.insert(p)
                    && let Some(offer) = self.last_offer.clone()
                {
                    self.send_to_peer(p, Message::Offer(offer)).await;
                }
            }
            NetEvent::Rejected { .. } => {}
        }
    }

    async fn on_control(&mut self, r: ControlRequest) {
        match r {
            ControlRequest::Status(reply) => {
                let _ = reply.send(self.status().await);
            }
            ControlRequest::Offers(reply) => {
                let now = net::now();
                let mut offers: Vec<&protocol::Offer> = self
                    .requester
                    .book()
                    .iter()
                    .map(|e| &*e.offer)
                    .filter(|o| o.expires_at > now)
                    .collect();
                offers.sort_by_key(|o| (o.price, o.provider));
                let v = offers
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
                    .collect();
                let _ = reply.send(Ok(v));
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
        }
    }

    async fn status(&self) -> anyhow::Result<Status> {
        let id = &self.dir.identity;
        Ok(Status {
            account: id.account().to_string(),
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
        let mut last = 0u64;
        let n = blobs
            .fetch(ticket.addr().clone(), &hash, |b| {
                if b >= last + (16 << 20) {
                    last = b;
                    info!(hash = %hash.short(), mib = b >> 20, "fetching");
                }
            })
            .await?;
        (hash, n)
    };
    blobs.export(&hash, &out).await?;
    Ok(BlobFetched {
        hash: hash.to_string(),
        bytes_fetched: fetched,
        out,
    })
}
