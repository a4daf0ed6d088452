//! The running node: the network loop, the blob node and the control API, and the
//! node loop that ties them to the engines.
//!
//! Tasks: the libp2p [`net::EventLoop`] (owns the swarm), the iroh router (owns
//! the blob endpoint), the control API server, and the node loop here, which
//! receives validated network events and control requests and answers them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use libp2p::Multiaddr;
use protocol::{AccountId, Hash32, Message, NetworkId, Offer, Signed, Timestamp};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, info, info_span};

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

/// Fresh offers seen on the market topic, newest per provider, bounded.
#[derive(Debug, Default)]
struct OfferCache {
    by_provider: HashMap<AccountId, (Signed<Offer>, Offer)>,
}

impl OfferCache {
    const CAPACITY: usize = 10_000;

    fn insert(&mut self, now: Timestamp, signed: Signed<Offer>, offer: Offer) {
        self.by_provider.retain(|_, (_, o)| o.expires_at > now);
        if let Some((_, old)) = self.by_provider.get(&offer.provider)
            && old.issued_at > offer.issued_at
        {
            return;
        }
        if self.by_provider.len() >= Self::CAPACITY
            && !self.by_provider.contains_key(&offer.provider)
        {
            // Evict the offer that expires first.
            if let Some(k) = self
                .by_provider
                .iter()
                .min_by_key(|(_, (_, o))| o.expires_at)
                .map(|(k, _)| *k)
            {
                self.by_provider.remove(&k);
            }
        }
        self.by_provider.insert(offer.provider, (signed, offer));
    }

    fn fresh(&self, now: Timestamp) -> Vec<&Offer> {
        let mut v: Vec<&Offer> = self
            .by_provider
            .values()
            .map(|(_, o)| o)
            .filter(|o| o.expires_at > now)
            .collect();
        v.sort_by_key(|o| (o.price, o.provider));
        v
    }
}

struct NodeLoop {
    dir: DataDir,
    network: NetworkId,
    net: net::Client,
    blobs: BlobNode,
    offers: OfferCache,
    connected: std::collections::HashSet<libp2p::PeerId>,
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
    let (stop_tx, stop_rx) = oneshot::channel();
    let node = NodeLoop {
        dir,
        network: opts.network,
        net: client.clone(),
        blobs: blobs.clone(),
        offers: OfferCache::default(),
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
        loop {
            tokio::select! {
                Some(e) = events.recv() => self.on_net(e),
                Some(r) = control.recv() => self.on_control(r).await,
                _ = &mut stop => break,
            }
        }
        info!("node stopped");
    }

    fn on_net(&mut self, e: NetEvent) {
        match e {
            NetEvent::Gossip { frame, .. } => {
                if let Message::Offer(s) = frame.message
                    && let Ok(o) = s.body_unverified()
                {
                    // The validator verified it before it got here.
                    self.offers.insert(net::now(), s, o);
                }
            }
            NetEvent::Connected(p) => {
                self.connected.insert(p);
            }
            NetEvent::Request { .. } | NetEvent::Rejected { .. } => {}
        }
    }

    async fn on_control(&mut self, r: ControlRequest) {
        match r {
            ControlRequest::Status(reply) => {
                let _ = reply.send(self.status().await);
            }
            ControlRequest::Offers(reply) => {
                let now = net::now();
                let v = self
                    .offers
                    .fresh(now)
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
