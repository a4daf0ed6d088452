//! Content-addressed blobs over iroh: the node's blob store and endpoint.
//!
//! One iroh `Endpoint` with the node's key (so its endpoint id is the account id),
//! bound to a configured address, with no address lookup service. By default it
//! has no relay and works on loopback or a LAN with no internet. Across NATs it
//! uses relays the config names (a self-hosted `cloudchain relay`, trusted
//! through its certificate file; see [`crate::relay`]) or, if asked, iroh's
//! public ones: the relay carries the first packets and tells each side its
//! public address, and iroh hole-punches a direct path when the NATs allow it.
//! The iroh-blobs store lives in the data directory (or in memory for tests)
//! and is served by an iroh `Router`. Peers tell each other their blob
//! addresses (sockets and relay URL) inside their signed libp2p messages, so
//! fetching needs no discovery service.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use futures::StreamExt;
use iroh::endpoint::presets;
use iroh::protocol::Router;
use iroh::{Endpoint, EndpointAddr, RelayMap, RelayMode, RelayUrl, TransportAddr};
use iroh_blobs::api::remote::GetProgressItem;
use iroh_blobs::format::collection::Collection;
use iroh_blobs::provider::events::EventSender;
use iroh_blobs::{BlobFormat, BlobsProtocol, Hash, HashAndFormat};
use protocol::{AccountId, Hash32, Identity};

/// How long a blob fetch waits for its peer's endpoint to answer.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// How long a blob fetch waits for the next bytes once connected: a peer that
/// accepted and then went quiet (stalled, or restarted under the same key on
/// another port while the connection still looked alive) fails the fetch, so
/// the caller tries again at the peer's latest address.
pub const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// How often the store collects blobs that no tag keeps, and how often the
/// tags that have expired are dropped.
pub const GC_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a fetched blob is kept when nobody says longer (a `blob get`
/// exports it at once; a job's blobs are kept for the job, see
/// [`BlobNode::keep_until`]).
pub const FETCHED_KEEP: std::time::Duration = std::time::Duration::from_secs(3600);
/// Over the quota, how long a fetched blob is kept.
const FETCHED_EARLY_MS: u64 = 10 * 60 * 1000;
/// The prefix of tags that keep a blob until a time:
/// `exp/<until ms>/<early ms>/<why>/<hash>` (see [`Keep`]).
const EXPIRING: &str = "exp/";

/// How long a tag keeps a blob (ms since the Unix epoch): until `until`, or,
/// while the store is over its quota, until `early`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    pub until: u64,
    pub early: u64,
}

impl Keep {
    /// What a fetch keeps: [`FETCHED_KEEP`] from now, ten minutes over
    /// the quota (its caller tags it for a job or exports it within that).
    pub fn fetched() -> Keep {
        let now = crate::net::now().0;
        Keep {
            until: now.saturating_add(FETCHED_KEEP.as_millis() as u64),
            early: now.saturating_add(FETCHED_EARLY_MS),
        }
    }
}

/// Where the blob store lives.
#[derive(Debug, Clone)]
pub enum StoreKind<'a> {
    Memory,
    Dir(&'a Path),
}

/// Which relays the blob endpoint uses.
#[derive(Debug, Clone, Default)]
pub enum Relays {
    /// None: direct addresses only (loopback, a LAN, public hosts).
    #[default]
    Off,
    /// iroh's public relays (needs the internet).
    Public,
    /// Our own relays, e.g. `cloudchain relay`; `ca` holds the DER certificates
    /// to trust for them (self-signed relays), besides the usual web roots.
    Own {
        urls: Vec<RelayUrl>,
        ca: Vec<Vec<u8>>,
    },
}

/// How the blob endpoint meets the network.
#[derive(Debug, Clone)]
pub struct BlobNet {
    pub bind: SocketAddr,
    pub relays: Relays,
    /// Ask the home router for a port mapping (UPnP, PCP, NAT-PMP).
    pub portmapper: bool,
    /// How often blobs no tag keeps are collected ([`GC_EVERY`]; shorter in
    /// tests).
    pub gc_every: std::time::Duration,
    /// The store's quota in bytes (a store on disk), if any.
    pub quota: Option<u64>,
}

impl BlobNet {
    /// Bound to `bind`, no relay, no port mapping: tests and loopback swarms.
    pub fn local(bind: SocketAddr) -> Self {
        BlobNet {
            bind,
            relays: Relays::Off,
            portmapper: false,
            gc_every: GC_EVERY,
            quota: None,
        }
    }
}

/// The node's blob endpoint, store and router.
#[derive(Debug, Clone)]
pub struct BlobNode {
    endpoint: Endpoint,
    /// Our own relays, published in `contact`.
    relays: Vec<RelayUrl>,
    store: iroh_blobs::api::Store,
    router: Router,
    transfers: Arc<Mutex<BTreeMap<Hash32, Transfer>>>,
    /// The last [`RECENT_FETCHES`] finished fetches, oldest first.
    recent: Arc<Mutex<std::collections::VecDeque<Fetched>>>,
    /// [`STALL_TIMEOUT`], shorter in tests.
    stall: std::time::Duration,
    /// Payload bytes received (fetches) and sent (served) since start.
    traffic: Arc<[AtomicU64; 2]>,
    /// The store's room under its quota, as last measured (`None`: no quota,
    /// or a store in memory).
    room: tokio::sync::watch::Receiver<Option<u64>>,
}

/// How many finished fetches [`BlobNode::recent_fetches`] remembers.
pub const RECENT_FETCHES: usize = 32;

/// A finished fetch: how much came, how fast, and over which path.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Fetched {
    pub hash: String,
    pub from: String,
    pub bytes: u64,
    pub secs: f64,
    /// The path the connection used when the transfer ended: "direct" (an IP
    /// path, hole-punched if the peers are behind NATs) or "relayed".
    pub path: String,
}

/// A fetch in flight, for progress displays.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Transfer {
    pub hash: String,
    pub from: String,
    pub bytes: u64,
    /// The blob's size, when known (declared, or asked of the peer).
    #[serde(default)]
    pub total: Option<u64>,
    pub elapsed_s: f64,
    #[serde(skip)]
    started: Option<std::time::Instant>,
}

impl BlobNode {
    /// Bind the endpoint and start serving the store.
    pub async fn spawn(
        identity: &Identity,
        store: StoreKind<'_>,
        net: &BlobNet,
    ) -> anyhow::Result<BlobNode> {
        // Blobs no tag keeps are collected: a job's blobs carry tags that
        // expire after the job (see `keep_until`), what `blob add` stores a
        // tag of its own that never does.
        let gc = iroh_blobs::store::GcConfig {
            interval: net.gc_every,
            add_protected: None,
        };
        let measured = match store {
            StoreKind::Dir(dir) => Some(dir.to_path_buf()),
            StoreKind::Memory => None,
        };
        let store: iroh_blobs::api::Store = match store {
            StoreKind::Memory => {
                iroh_blobs::store::mem::MemStore::new_with_opts(iroh_blobs::store::mem::Options {
                    gc_config: Some(gc),
                })
                .into()
            }
            StoreKind::Dir(dir) => {
                let mut opts = iroh_blobs::store::fs::options::Options::new(dir);
                opts.gc = Some(gc);
                iroh_blobs::store::fs::FsStore::load_with_opts(dir.join("blobs.db"), opts)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot open blob store {}: {e}", dir.display()))?
                    .into()
            }
        };
        let (sweeper, gc_every, quota) = (store.clone(), net.gc_every, net.quota);
        let (room_tx, room) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(gc_every);
            loop {
                every.tick().await;
                let size = match &measured {
                    Some(dir) => {
                        let dir = dir.clone();
                        tokio::task::spawn_blocking(move || crate::metrics::dir_bytes(&dir))
                            .await
                            .unwrap_or(0)
                    }
                    None => 0,
                };
                let over = quota.is_some_and(|q| size > q);
                if measured.is_some() {
                    room_tx.send_replace(quota.map(|q| q.saturating_sub(size)));
                }
                match drop_expired(&sweeper, crate::net::now().0, over).await {
                    Ok(0) if over => tracing::warn!(
                        mib = size >> 20,
                        quota_mib = quota.unwrap_or(0) >> 20,
                        "the blob store is over its quota, with jobs in progress keeping their blobs"
                    ),
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(tags = n, over, "blob tags expired"),
                    // The store is gone (the node stopped).
                    Err(_) => break,
                }
            }
        });
        let endpoint = bind_endpoint(identity, net).await?;
        let traffic: Arc<[AtomicU64; 2]> = Default::default();
        let blobs = BlobsProtocol::new(&store, Some(count_sent(traffic.clone())));
        let router = Router::builder(endpoint.clone())
            .accept(iroh_blobs::ALPN, blobs)
            .spawn();
        let relays = match &net.relays {
            Relays::Own { urls, .. } => urls.clone(),
            _ => Vec::new(),
        };
        Ok(BlobNode {
            endpoint,
            relays,
            store,
            router,
            transfers: Default::default(),
            recent: Default::default(),
            stall: STALL_TIMEOUT,
            traffic,
            room,
        })
    }

    /// The store's room under its quota, updated at each measure (every
    /// `gc_every`); `None` while there is no quota or no measure yet.
    pub fn room(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        self.room.clone()
    }

    /// How peers reach the endpoint (as text, for offers): the bound sockets,
    /// for a socket bound to 0.0.0.0 the interface addresses iroh found, and
    /// the relay URLs (a peer behind another NAT needs only those).
    pub fn contact(&self) -> Vec<String> {
        let mut out: Vec<SocketAddr> = self
            .endpoint
            .bound_sockets()
            .into_iter()
            .filter(|a| !a.ip().is_unspecified())
            .collect();
        out.extend(self.endpoint.addr().ip_addrs().copied());
        out.sort();
        out.dedup();
        // Relays first: they reach the peer from anywhere, and the list is
        // bounded. Our own relays, else the home relay iroh picked among the
        // public ones (known once the endpoint is online).
        let mut relays: Vec<RelayUrl> = self.relays.clone();
        if relays.is_empty() {
            relays.extend(self.endpoint.addr().relay_urls().cloned());
        }
        let mut contact: Vec<String> = relays.iter().map(|u| u.to_string()).collect();
        contact.extend(out.into_iter().map(|a| a.to_string()));
        contact.truncate(protocol::Offer::MAX_CONTACT);
        contact
    }

    /// The relays this endpoint is configured with.
    pub fn relay_urls(&self) -> Vec<RelayUrl> {
        self.relays.clone()
    }

    /// Wait (up to `wait`) until the endpoint has a home relay and knows its
    /// public address, if it uses relays at all. False if it timed out.
    pub async fn online(&self, wait: std::time::Duration) -> bool {
        if self.relays.is_empty() {
            return true;
        }
        tokio::time::timeout(wait, self.endpoint.online())
            .await
            .is_ok()
    }

    /// This endpoint's address (id and sockets).
    pub fn addr(&self) -> EndpointAddr {
        let mut addr = self.endpoint.addr();
        for s in self.endpoint.bound_sockets() {
            if !s.ip().is_unspecified() {
                addr.addrs.insert(TransportAddr::Ip(s));
            }
        }
        addr
    }

    /// Build a peer's address from its account and the contact list it
    /// published: socket addresses, and relay URLs (`http://` or `https://`).
    pub fn peer_addr(account: &AccountId, contact: &[String]) -> anyhow::Result<EndpointAddr> {
        let id = account.endpoint_id()?;
        let mut addrs = Vec::new();
        for c in contact {
            if c.starts_with("https://") || c.starts_with("http://") {
                let url: RelayUrl = c
                    .parse()
                    .with_context(|| format!("bad relay URL {c:?} for {}", account.short()))?;
                addrs.push(TransportAddr::Relay(url));
                continue;
            }
            let s: SocketAddr = c
                .parse()
                .with_context(|| format!("bad blob address {c:?} for {}", account.short()))?;
            addrs.push(TransportAddr::Ip(s));
        }
        if addrs.is_empty() {
            bail!("peer {} published no blob address", account.short());
        }
        Ok(EndpointAddr::from_parts(id, addrs))
    }

    /// Add bytes to the store; returns their BLAKE3 hash.
    /// Add bytes kept until `until` (ms since the Unix epoch) for `why` (a
    /// job's blobs); returns the hash.
    pub async fn add_bytes_until(
        &self,
        bytes: impl Into<bytes::Bytes>,
        keep: Keep,
        why: &str,
    ) -> anyhow::Result<Hash32> {
        let tt = self
            .store
            .add_bytes(bytes)
            .temp_tag()
            .await
            .map_err(|e| anyhow::anyhow!("cannot add blob: {e}"))?;
        let hash = Hash32(*tt.hash().as_bytes());
        self.keep(&hash, keep, why).await?;
        Ok(hash)
    }

    /// Keep a held blob as `keep` says, for `why`; later, unless another tag
    /// keeps it, it is collected. Keeping it again for longer adds a tag.
    pub async fn keep(&self, hash: &Hash32, keep: Keep, why: &str) -> anyhow::Result<()> {
        let name = format!(
            "{EXPIRING}{:020}/{:020}/{why}/{hash}",
            keep.until, keep.early
        );
        self.store
            .tags()
            .set(name, HashAndFormat::raw(Hash::from_bytes(hash.0)))
            .await
            .map_err(|e| anyhow::anyhow!("cannot keep blob {}: {e}", hash.short()))
    }

    pub async fn add_bytes(&self, bytes: impl Into<bytes::Bytes>) -> anyhow::Result<Hash32> {
        let tag = self
            .store
            .add_bytes(bytes)
            .await
            .map_err(|e| anyhow::anyhow!("cannot add blob: {e}"))?;
        Ok(Hash32(*tag.hash.as_bytes()))
    }

    /// Add a file to the store; returns its hash.
    pub async fn add_path(&self, path: &Path) -> anyhow::Result<Hash32> {
        let abs =
            std::path::absolute(path).with_context(|| format!("bad path {}", path.display()))?;
        if !abs.is_file() {
            bail!("{} is not a file", abs.display());
        }
        let tag = self
            .store
            .add_path(abs.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot add {}: {e}", abs.display()))?;
        Ok(Hash32(*tag.hash.as_bytes()))
    }

    /// Whether the store holds the complete blob.
    pub async fn has(&self, hash: &Hash32) -> anyhow::Result<bool> {
        self.store
            .has(Hash::from_bytes(hash.0))
            .await
            .map_err(|e| anyhow::anyhow!("blob store: {e}"))
    }

    /// The whole blob, if held.
    pub async fn get_bytes(&self, hash: &Hash32) -> anyhow::Result<bytes::Bytes> {
        self.store
            .get_bytes(Hash::from_bytes(hash.0))
            .await
            .map_err(|e| anyhow::anyhow!("blob {}: {e}", hash.short()))
    }

    /// Copy a held blob to a file.
    pub async fn export(&self, hash: &Hash32, out: &Path) -> anyhow::Result<()> {
        let abs = std::path::absolute(out)?;
        self.store
            .export(Hash::from_bytes(hash.0), abs)
            .await
            .map_err(|e| anyhow::anyhow!("cannot export {}: {e}", hash.short()))?;
        Ok(())
    }

    /// Fetch a blob from `from`, verified against its hash while it streams;
    /// `progress` is called with the bytes received so far.
    pub async fn fetch(
        &self,
        from: EndpointAddr,
        hash: &Hash32,
        progress: impl FnMut(u64),
    ) -> anyhow::Result<u64> {
        self.fetch_raw(from, hash, None, progress).await
    }

    /// Fetch a blob whose size was declared (in a signed job spec or
    /// receipt): the transfer is cut off as soon as more than `size` bytes
    /// arrive, so a peer that lies about a blob's size costs at most that
    /// much, on disk (the store streams to disk), never in memory.
    pub async fn fetch_sized(
        &self,
        from: EndpointAddr,
        hash: &Hash32,
        size: u64,
        progress: impl FnMut(u64),
    ) -> anyhow::Result<u64> {
        self.fetch_raw(from, hash, Some(size), progress).await
    }

    async fn fetch_raw(
        &self,
        from: EndpointAddr,
        hash: &Hash32,
        limit: Option<u64>,
        progress: impl FnMut(u64),
    ) -> anyhow::Result<u64> {
        if self.has(hash).await? {
            return Ok(0);
        }
        let content = HashAndFormat::raw(Hash::from_bytes(hash.0));
        self.fetch_content(from, content, limit, progress).await
    }

    /// Fetch a collection (a hash sequence and every blob it names), verified
    /// as it streams; only what is missing locally is asked for.
    pub async fn fetch_collection(
        &self,
        from: EndpointAddr,
        root: &Hash32,
        progress: impl FnMut(u64),
    ) -> anyhow::Result<u64> {
        self.fetch_content(
            from,
            HashAndFormat::hash_seq(Hash::from_bytes(root.0)),
            None,
            progress,
        )
        .await
    }

    async fn fetch_content(
        &self,
        from: EndpointAddr,
        content: HashAndFormat,
        limit: Option<u64>,
        mut progress: impl FnMut(u64),
    ) -> anyhow::Result<u64> {
        let hash = &Hash32(*content.hash.as_bytes());
        let peer = from.id;
        let _guard = self.track(hash, peer.fmt_short().to_string());
        // Kept from the start (a collection's index keeps its files): a
        // collection run between the transfer's end and the caller's own tag
        // must not take it.
        let keep = Keep::fetched();
        let name = format!(
            "{EXPIRING}{:020}/{:020}/fetched/{hash}",
            keep.until, keep.early
        );
        self.store
            .tags()
            .set(name, content)
            .await
            .map_err(|e| anyhow::anyhow!("blob store: {e}"))?;
        // A peer that moved (restarted on another port) or went away must not
        // hold a fetch for the transport's own, much longer, timeout.
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.endpoint.connect(from, iroh_blobs::ALPN),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no answer from blob endpoint {} in {CONNECT_TIMEOUT:?}",
                peer.fmt_short()
            )
        })?
        .with_context(|| format!("cannot connect to blob endpoint {}", peer.fmt_short()))?;
        // How much is coming, for progress: the declared size, or for a blob
        // the size its holder states (one short request; unverified, and
        // only shown).
        let total = match limit {
            Some(l) => Some(l),
            None if content.format == BlobFormat::Raw => {
                let ask = iroh_blobs::get::request::get_unverified_size(&conn, &content.hash);
                match tokio::time::timeout(self.stall, ask).await {
                    Ok(Ok((size, _))) => Some(size),
                    // A quiet peer: the fetch's own stall check reports it.
                    _ => None,
                }
            }
            None => None,
        };
        if let Ok(mut t) = self.transfers.lock()
            && let Some(t) = t.get_mut(hash)
        {
            t.total = total;
        }
        let started = std::time::Instant::now();
        let watch = conn.clone();
        let mut stream = self.store.remote().fetch(conn, content).stream();
        loop {
            let Ok(item) = tokio::time::timeout(self.stall, stream.next()).await else {
                bail!(
                    "fetching {} from {}: nothing arrived for {:?}",
                    hash.short(),
                    peer.fmt_short(),
                    self.stall
                );
            };
            let Some(item) = item else {
                break;
            };
            match item {
                GetProgressItem::Progress(n) => {
                    if let Some(limit) = limit
                        && n > limit
                    {
                        // Dropping the stream ends the transfer.
                        bail!(
                            "blob {} from {}: more than the {limit} bytes declared",
                            hash.short(),
                            peer.fmt_short()
                        );
                    }
                    if let Ok(mut t) = self.transfers.lock()
                        && let Some(t) = t.get_mut(hash)
                    {
                        t.bytes = n;
                    }
                    progress(n)
                }
                GetProgressItem::Done(stats) => {
                    self.traffic[0].fetch_add(stats.payload_bytes_read, Ordering::Relaxed);
                    let path = watch
                        .paths()
                        .iter()
                        .find(|p| p.is_selected())
                        .map(|p| if p.is_relay() { "relayed" } else { "direct" })
                        .unwrap_or("unknown");
                    self.remember(Fetched {
                        hash: hash.to_string(),
                        from: peer.fmt_short().to_string(),
                        bytes: stats.payload_bytes_read,
                        secs: started.elapsed().as_secs_f64(),
                        path: path.into(),
                    });
                    return Ok(stats.payload_bytes_read);
                }
                GetProgressItem::Error(e) => {
                    bail!("fetching {} from {}: {e}", hash.short(), peer.fmt_short())
                }
            }
        }
        bail!(
            "fetching {}: the transfer ended without a result",
            hash.short()
        )
    }

    fn remember(&self, f: Fetched) {
        if let Ok(mut r) = self.recent.lock() {
            if r.len() == RECENT_FETCHES {
                r.pop_front();
            }
            r.push_back(f);
        }
    }

    /// Payload bytes received and sent since start.
    pub fn traffic(&self) -> (u64, u64) {
        let [r, s] = &*self.traffic;
        (r.load(Ordering::Relaxed), s.load(Ordering::Relaxed))
    }

    /// The last finished fetches, oldest first.
    pub fn recent_fetches(&self) -> Vec<Fetched> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Fetches in flight.
    pub fn transfers(&self) -> Vec<Transfer> {
        let Ok(t) = self.transfers.lock() else {
            return Vec::new();
        };
        t.values()
            .map(|t| Transfer {
                elapsed_s: t.started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0),
                ..t.clone()
            })
            .collect()
    }

    fn track(&self, hash: &Hash32, from: String) -> TransferGuard {
        if let Ok(mut t) = self.transfers.lock() {
            t.insert(
                *hash,
                Transfer {
                    hash: hash.to_string(),
                    from,
                    bytes: 0,
                    total: None,
                    elapsed_s: 0.0,
                    started: Some(std::time::Instant::now()),
                },
            );
        }
        TransferGuard {
            map: self.transfers.clone(),
            hash: *hash,
        }
    }

    /// A ticket for a held blob, in the format iroh's own tools accept.
    pub fn ticket(&self, hash: &Hash32) -> iroh_blobs::ticket::BlobTicket {
        iroh_blobs::ticket::BlobTicket::new(self.addr(), Hash::from_bytes(hash.0), BlobFormat::Raw)
    }

    /// A ticket for a held collection (what iroh's file-sending tools, such
    /// as sendme, receive).
    pub fn collection_ticket(&self, root: &Hash32) -> iroh_blobs::ticket::BlobTicket {
        iroh_blobs::ticket::BlobTicket::new(
            self.addr(),
            Hash::from_bytes(root.0),
            BlobFormat::HashSeq,
        )
    }

    /// Add a file, or every file under a directory, as a collection named by
    /// relative paths (`/`-separated), kept under a tag; returns its root.
    pub async fn add_collection(
        &self,
        path: &Path,
    ) -> anyhow::Result<(Hash32, Vec<(String, u64)>)> {
        let abs =
            std::path::absolute(path).with_context(|| format!("bad path {}", path.display()))?;
        let files = crate::collection::files_under(&abs)?;
        let mut collection = Collection::default();
        let mut listed = Vec::new();
        for (name, file) in files {
            let size = std::fs::metadata(&file)
                .with_context(|| format!("cannot read {}", file.display()))?
                .len();
            let hash = self.add_path(&file).await?;
            collection.push(name.clone(), Hash::from_bytes(hash.0));
            listed.push((name, size));
        }
        let temp = collection
            .store(&self.store)
            .await
            .map_err(|e| anyhow::anyhow!("cannot store the collection: {e}"))?;
        self.store
            .tags()
            .create(temp.hash_and_format())
            .await
            .map_err(|e| anyhow::anyhow!("cannot tag the collection: {e}"))?;
        Ok((Hash32(*temp.hash().as_bytes()), listed))
    }

    /// Write a held collection's files under `dir` (created; it must not hold
    /// anything yet). Names come from the peer: each is checked to stay under
    /// `dir` before anything is written.
    pub async fn export_collection(
        &self,
        root: &Hash32,
        dir: &Path,
    ) -> anyhow::Result<Vec<(String, u64)>> {
        let collection = Collection::load(Hash::from_bytes(root.0), &self.store)
            .await
            .map_err(|e| anyhow::anyhow!("{} is not a collection: {e}", root.short()))?;
        let entries: Vec<(String, Hash)> = collection.iter().cloned().collect();
        let targets = crate::collection::targets(dir, entries.iter().map(|(n, _)| n.as_str()))?;
        let mut out = Vec::new();
        for ((name, hash), target) in entries.iter().zip(targets) {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let h = Hash32(*hash.as_bytes());
            self.export(&h, &target).await?;
            let size = std::fs::metadata(&target)?.len();
            out.push((name.clone(), size));
        }
        Ok(out)
    }

    /// The endpoint (for other protocols).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Stop serving and close the store.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        self.router
            .shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("blob router shutdown: {e}"))
    }
}

/// An endpoint with the node's key that speaks the blobs protocol, bound to
/// `net.bind`, with the relays `net` names.
async fn bind_endpoint(identity: &Identity, net: &BlobNet) -> anyhow::Result<Endpoint> {
    let bind = net.bind;
    let portmapper = if net.portmapper {
        iroh::endpoint::PortmapperConfig::default()
    } else {
        iroh::endpoint::PortmapperConfig::Disabled
    };
    let mut builder = Endpoint::builder(presets::Minimal)
        .secret_key(identity.iroh_secret_key())
        .alpns(vec![iroh_blobs::ALPN.to_vec()])
        .portmapper_config(portmapper)
        .net_report_config(iroh::endpoint::NetReportConfig::minimal())
        .clear_ip_transports()
        .bind_addr(bind)
        .with_context(|| format!("bad blob bind address {bind}"))?;
    builder = match &net.relays {
        Relays::Off => builder.relay_mode(RelayMode::Disabled),
        Relays::Public => builder.relay_mode(iroh::endpoint::default_relay_mode()),
        Relays::Own { urls, ca } => {
            if urls.is_empty() {
                bail!("no relay URL given");
            }
            let map = RelayMap::from_iter(urls.iter().cloned());
            let mut b = builder.relay_mode(RelayMode::Custom(map));
            if !ca.is_empty() {
                b = b.ca_tls_config(iroh::tls::CaTlsConfig::custom_roots(
                    ca.iter()
                        .map(|d| rustls::pki_types::CertificateDer::from(d.clone())),
                ));
            }
            b
        }
    };
    builder
        .bind()
        .await
        .with_context(|| format!("cannot bind the blob endpoint on {bind}"))
}

/// Removes a finished (or failed) fetch from the registry.
struct TransferGuard {
    map: Arc<Mutex<BTreeMap<Hash32, Transfer>>>,
    hash: Hash32,
}

impl Drop for TransferGuard {
    fn drop(&mut self) {
        if let Ok(mut t) = self.map.lock() {
            t.remove(&self.hash);
        }
    }
}

/// Drop the expiring tags whose time (ms since the Unix epoch) is before
/// `now` (their early time, `over` the quota); gives how many.
async fn drop_expired(store: &iroh_blobs::api::Store, now: u64, over: bool) -> anyhow::Result<u64> {
    let mut tags = store
        .tags()
        .list_prefix(EXPIRING)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut expired = Vec::new();
    while let Some(t) = tags.next().await {
        let t = t.map_err(|e| anyhow::anyhow!("{e}"))?;
        let times: Option<Vec<u64>> = std::str::from_utf8(t.name.as_ref())
            .ok()
            .and_then(|n| n.strip_prefix(EXPIRING))
            .map(|r| {
                r.split('/')
                    .take(2)
                    .filter_map(|ms| ms.parse().ok())
                    .collect()
            });
        let due = match times.as_deref() {
            Some(&[until, early]) => until < now || (over && early < now),
            // A tag whose name does not parse is ours gone wrong: drop it too.
            _ => true,
        };
        if due {
            expired.push(t.name);
        }
    }
    let n = expired.len() as u64;
    for name in expired {
        store
            .tags()
            .delete(name)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(n)
}

/// Provider events that add each served request's payload bytes (whole or
/// aborted) to `traffic[1]`. Only get requests are observed; push stays
/// disabled, as in iroh-blobs' default mask.
fn count_sent(traffic: Arc<[AtomicU64; 2]>) -> EventSender {
    use iroh_blobs::provider::events::{EventMask, ProviderMessage, RequestMode, RequestUpdate};
    let mask = EventMask {
        get: RequestMode::NotifyLog,
        get_many: RequestMode::NotifyLog,
        ..EventMask::DEFAULT
    };
    let (events, mut rx) = EventSender::channel(64, mask);
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let mut updates = match msg {
                ProviderMessage::GetRequestReceivedNotify(m) => m.rx,
                ProviderMessage::GetManyRequestReceivedNotify(m) => m.rx,
                _ => continue,
            };
            let traffic = traffic.clone();
            tokio::spawn(async move {
                while let Ok(Some(u)) = updates.recv().await {
                    if let RequestUpdate::Completed(t) = &u {
                        traffic[1].fetch_add(t.stats.payload_bytes_sent, Ordering::Relaxed);
                    } else if let RequestUpdate::Aborted(t) = &u {
                        traffic[1].fetch_add(t.stats.payload_bytes_sent, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto;

    fn lo() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// A blob store with a short collection interval, and a few blobs
    /// large enough to live in files of their own.
    async fn collected_store(dir: &Path, quota: Option<u64>) -> (BlobNode, impl Fn(u8) -> Vec<u8>) {
        let net = BlobNet {
            gc_every: std::time::Duration::from_millis(100),
            quota,
            ..BlobNet::local(lo())
        };
        let node = BlobNode::spawn(&Identity::from_seed(41), StoreKind::Dir(dir), &net)
            .await
            .unwrap();
        (node, |b: u8| vec![b; 300_000])
    }

    /// Wait (bounded) until `hash` is collected.
    async fn collected(node: &BlobNode, hash: &Hash32) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        while node.has(hash).await.unwrap() {
            assert!(tokio::time::Instant::now() < deadline, "never collected");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// A job's blobs go once their time has passed, on disk too; what is
    /// still kept, and what `blob add` stored, stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_job_blobs_are_collected_and_the_rest_stay() {
        let dir = tempfile::tempdir().unwrap();
        let (node, blob) = collected_store(dir.path(), None).await;
        let now = crate::net::now().0;
        let keep = |until: u64| Keep {
            until,
            early: until,
        };
        let hour = now + 3_600_000;
        let gone = node
            .add_bytes_until(blob(1), keep(now - 1), "job-input")
            .await
            .unwrap();
        let kept = node
            .add_bytes_until(blob(2), keep(hour), "job-input")
            .await
            .unwrap();
        let user = node.add_bytes(blob(3)).await.unwrap();
        // A blob kept twice goes only when both times have passed.
        let twice = node
            .add_bytes_until(blob(4), keep(now - 1), "job")
            .await
            .unwrap();
        node.keep(&twice, keep(hour), "job").await.unwrap();
        collected(&node, &gone).await;
        // More rounds: nothing else goes.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        for h in [kept, user, twice] {
            assert!(node.has(&h).await.unwrap(), "{h} was collected");
            assert_eq!(node.get_bytes(&h).await.unwrap().len(), 300_000);
        }
        // And the expired blob's bytes are gone from the disk.
        let files = crate::metrics::dir_bytes(dir.path());
        assert!(files < 4 * 300_000, "{files} bytes on disk");
    }

    /// Over its quota, a store lets finished jobs' blobs go at once (their
    /// early time), and keeps those of jobs in progress.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_its_quota_a_store_lets_finished_jobs_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let (node, blob) = collected_store(dir.path(), Some(100_000)).await;
        let now = crate::net::now().0;
        let hour = now + 3_600_000;
        let finished = Keep {
            until: hour,
            early: now - 1,
        };
        let running = Keep {
            until: hour,
            early: hour,
        };
        let done = node
            .add_bytes_until(blob(1), finished, "job")
            .await
            .unwrap();
        let busy = node.add_bytes_until(blob(2), running, "job").await.unwrap();
        collected(&node, &done).await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(node.has(&busy).await.unwrap(), "a running job's blob went");
    }

    #[tokio::test]
    async fn encrypted_blob_moves_between_two_nodes_on_loopback() {
        let req_id = Identity::from_seed(11);
        let prov_id = Identity::from_seed(12);
        let dir = tempfile::tempdir().unwrap();
        let req = BlobNode::spawn(&req_id, StoreKind::Memory, &BlobNet::local(lo()))
            .await
            .unwrap();
        let prov = BlobNode::spawn(&prov_id, StoreKind::Dir(dir.path()), &BlobNet::local(lo()))
            .await
            .unwrap();
        assert_eq!(req.addr().id.as_bytes(), &req_id.account().0);

        // The requester encrypts a data set for the provider and adds it.
        let contract = Hash32::of(b"contract-1");
        let key = crypto::random_key();
        let plain: Vec<u8> = (0..3 * crypto::CHUNK / 2)
            .map(|i| (i % 253) as u8)
            .collect();
        let ct = crypto::encrypt(&key, "dataset", &contract, &plain);
        let hash = req.add_bytes(ct.clone()).await.unwrap();
        let sealed = crypto::seal_job_key(&req_id, &prov_id.account(), &contract, &key).unwrap();

        // The provider fetches it by hash from the address the requester published.
        let from = BlobNode::peer_addr(&req_id.account(), &req.contact()).unwrap();
        let mut last = 0;
        // While it comes, the transfer says how much is coming (the holder
        // states it: the ticket did not).
        let mut totals = Vec::new();
        let watching = prov.clone();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            prov.fetch(from, &hash, |n| {
                last = n;
                totals.extend(watching.transfers().iter().map(|t| t.total));
            }),
        )
        .await
        .expect("fetch timed out")
        .unwrap();
        assert_eq!(read, ct.len() as u64);
        assert!(last <= read);
        assert!(!totals.is_empty(), "no progress reported");
        assert!(
            totals.iter().all(|t| *t == Some(ct.len() as u64)),
            "{totals:?}"
        );
        assert!(prov.has(&hash).await.unwrap());
        let got = prov.get_bytes(&hash).await.unwrap();
        let key2 = crypto::open_job_key(&prov_id, &req_id.account(), &contract, &sealed).unwrap();
        assert_eq!(
            crypto::decrypt(&key2, "dataset", &contract, &got).unwrap(),
            plain
        );

        // A blob nobody has fails with an error, not a hang.
        let missing = Hash32::of(b"nobody has this");
        let from = BlobNode::peer_addr(&req_id.account(), &req.contact()).unwrap();
        let res = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            prov.fetch(from, &missing, |_| {}),
        )
        .await
        .expect("fetch of a missing blob timed out");
        assert!(res.is_err());

        prov.shutdown().await.unwrap();
        req.shutdown().await.unwrap();
    }

    /// Accepts blob connections and never answers.
    #[derive(Debug)]
    struct Silent;

    impl iroh::protocol::ProtocolHandler for Silent {
        async fn accept(
            &self,
            conn: iroh::endpoint::Connection,
        ) -> Result<(), iroh::protocol::AcceptError> {
            tokio::time::sleep(std::time::Duration::from_secs(600)).await;
            drop(conn);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_blob_larger_than_declared_is_cut_off() {
        let a_id = Identity::from_seed(31);
        let a = BlobNode::spawn(&a_id, StoreKind::Memory, &BlobNet::local(lo()))
            .await
            .unwrap();
        let b = BlobNode::spawn(
            &Identity::from_seed(32),
            StoreKind::Memory,
            &BlobNet::local(lo()),
        )
        .await
        .unwrap();
        let big = vec![7u8; 4 << 20];
        let hash = a.add_bytes(big.clone()).await.unwrap();
        let from = BlobNode::peer_addr(&a_id.account(), &a.contact()).unwrap();
        // Declared as 64 KiB: refused long before the 4 MiB arrive.
        let e = b
            .fetch_sized(from.clone(), &hash, 64 << 10, |_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than the 65536 bytes declared"), "{e}");
        assert!(!b.has(&hash).await.unwrap());
        // Declared right: it comes, byte-exact (what arrived before the cut
        // is kept and not asked for again).
        let n = b
            .fetch_sized(from, &hash, big.len() as u64, |_| {})
            .await
            .unwrap();
        assert!(n > 0 && n <= big.len() as u64, "{n}");
        assert_eq!(b.get_bytes(&hash).await.unwrap().as_ref(), &big[..]);
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_peer_that_accepts_and_goes_quiet_fails_the_fetch_instead_of_holding_it() {
        let quiet_id = Identity::from_seed(21);
        let endpoint = bind_endpoint(&quiet_id, &BlobNet::local(lo()))
            .await
            .unwrap();
        let router = Router::builder(endpoint.clone())
            .accept(iroh_blobs::ALPN, Silent)
            .spawn();
        let mut me = BlobNode::spawn(
            &Identity::from_seed(22),
            StoreKind::Memory,
            &BlobNet::local(lo()),
        )
        .await
        .unwrap();
        me.stall = std::time::Duration::from_secs(1);
        let mut from = endpoint.addr();
        for s in endpoint.bound_sockets() {
            from.addrs.insert(TransportAddr::Ip(s));
        }
        let hash = Hash32::of(b"never sent");
        // Generous: the connection itself may take a while on a busy machine;
        // without the stall bound the fetch would wait for ever.
        let res = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            me.fetch(from, &hash, |_| {}),
        )
        .await
        .expect("the fetch hung on a silent peer");
        let e = res.unwrap_err().to_string();
        assert!(e.contains("nothing arrived"), "{e}");
        assert!(me.transfers().is_empty());
        me.shutdown().await.unwrap();
        router.shutdown().await.unwrap();
    }
}
