//! The libp2p side of the node: transports, behaviours, topics and the event loop.
//!
//! Follows rust-libp2p's `examples/file-sharing`: one [`EventLoop`] owns the
//! `Swarm` and runs `tokio::select!` over swarm events and commands; a cloneable
//! [`Client`] sends commands over a bounded channel with oneshot replies.
//!
//! - Transports: TCP and QUIC, noise, yamux, DNS.
//! - identify (plain config, which js-libp2p accepts too), ping.
//! - Kademlia in server mode: bootstrap from configured addresses, periodic
//!   re-bootstrap, providers announced under their resource class.
//! - gossipsub, signed messages (strict validation), `max_transmit_size` set,
//!   peer scoring on, and every message validated by our [`Validator`] before it
//!   is forwarded: accepted, rejected (the sender's score drops) or ignored.
//! - request-response with a bounded length-prefixed codec, one protocol per
//!   purpose ([`Purpose`]): ledger sync (answered with the next sync
//!   message), market messages and committee traffic (acknowledged).
//! - mDNS on a LAN (config flag), connection limits.
//! - Across NATs: a relay v2 client on every node and a relay server on nodes
//!   started with `--relay-server`; DCUtR upgrades a relayed connection to a
//!   direct (hole-punched) one; AutoNAT v2 confirms external addresses (client
//!   and server on every node); UPnP maps a port on a home router when asked to.
//!   A node that is not a relay server and has no address given with
//!   `--external-addr` reserves a slot on the first relays it meets (up to
//!   [`MAX_RESERVATIONS`]) and advertises the circuit address, so that peers
//!   behind other NATs reach it through the relay, then directly.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Context;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::core::ConnectedPoint;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, TopicHash};
use libp2p::kad::{self, store::MemoryStore};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, autonat, connection_limits, dcutr, identify, mdns,
    noise, ping, relay, tcp, upnp, yamux,
};
use protocol::{
    Frame, Message, NetworkId, ReplayGuard, ResourceClass, Timestamp, Wire, codec::CodecError,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

/// Largest gossip message (a frame) we send or accept.
pub const MAX_GOSSIP_BYTES: usize = Frame::MAX_SIZE;
/// Largest request or response (ledger sync messages are the big ones).
pub const MAX_RR_BYTES: usize = 8 * 1024 * 1024;
/// What a request-response exchange is for: one protocol each, so that a
/// peer (or another implementation) can tell them apart, and each has a
/// response of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Ledger sync: the request is an automerge sync message, the response
    /// the next one (empty when there is nothing to send).
    Sync,
    /// Market messages sent to one peer (proposals, contracts, key grants,
    /// offers to a newcomer): the response is an empty acknowledgement.
    Market,
    /// Committee traffic (checkpoint proposals, skips, challenges): an empty
    /// acknowledgement.
    Committee,
}

impl Purpose {
    pub const ALL: [Purpose; 3] = [Purpose::Sync, Purpose::Market, Purpose::Committee];

    pub fn protocol(self) -> StreamProtocol {
        match self {
            Purpose::Sync => StreamProtocol::new("/cloudchain/sync/1"),
            Purpose::Market => StreamProtocol::new("/cloudchain/market/1"),
            Purpose::Committee => StreamProtocol::new("/cloudchain/committee/1"),
        }
    }
}
/// Our Kademlia protocol name (a private DHT, not the IPFS one).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/cloudchain/kad/1");
/// The port a node listens on (TCP and QUIC) unless its config says otherwise,
/// so that a bootstrap address stays the same across restarts.
pub const DEFAULT_PORT: u16 = 7410;
/// The UDP port of the iroh blob endpoint unless the config says otherwise.
pub const DEFAULT_BLOB_PORT: u16 = 7411;
/// Relays a node behind a NAT reserves a slot on.
pub const MAX_RESERVATIONS: usize = 2;
/// What identify reports as our agent.
pub fn agent_version() -> String {
    format!("cloudchain/{}", env!("CARGO_PKG_VERSION"))
}

/// The gossip topics of one network.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Offers and open bids.
    pub market: IdentTopic,
    /// Contracts (for the committee to watch), receipts, verdicts and disputes.
    pub oracle: IdentTopic,
}

impl Topics {
    pub fn new(network: &NetworkId) -> Self {
        let short = hex::encode(&network.0[..8]);
        Topics {
            market: IdentTopic::new(format!("cloudchain/v1/{short}/market")),
            oracle: IdentTopic::new(format!("cloudchain/v1/{short}/oracle")),
        }
    }

    /// The topic a message belongs on, if it is gossiped at all.
    pub fn for_message(&self, m: &Message) -> Option<&IdentTopic> {
        match m {
            Message::Offer(_) | Message::Bid(_) => Some(&self.market),
            Message::Contract(_)
            | Message::Receipt(_)
            | Message::Verdict(_)
            | Message::Dispute(_) => Some(&self.oracle),
            _ => None,
        }
    }
}

/// A length-prefixed byte codec with a size bound, for request-response.
#[derive(Debug, Clone, Default)]
pub struct BytesCodec;

async fn read_bounded<T: futures::AsyncRead + Unpin + Send>(
    io: &mut T,
) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_RR_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("message of {len} bytes exceeds {MAX_RR_BYTES}"),
        ));
    }
    // Grow with what arrives, not with what the sender claims: a peer that
    // announces 8 MiB and sends nothing costs us nothing.
    let mut buf = Vec::new();
    io.take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("message ended after {} of {len} bytes", buf.len()),
        ));
    }
    Ok(buf)
}

async fn write_bounded<T: futures::AsyncWrite + Unpin + Send>(
    io: &mut T,
    data: Vec<u8>,
) -> std::io::Result<()> {
    if data.len() > MAX_RR_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("message of {} bytes exceeds {MAX_RR_BYTES}", data.len()),
        ));
    }
    io.write_all(&(data.len() as u32).to_be_bytes()).await?;
    io.write_all(&data).await?;
    io.close().await
}

impl request_response::Codec for BytesCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_bounded(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_bounded(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_bounded(io, req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_bounded(io, res).await
    }
}

/// All behaviours of the node.
#[allow(missing_debug_implementations)] // the derive cannot see through the behaviours
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    pub kad: kad::Behaviour<MemoryStore>,
    pub gossipsub: gossipsub::Behaviour,
    rr_sync: request_response::Behaviour<BytesCodec>,
    rr_market: request_response::Behaviour<BytesCodec>,
    rr_committee: request_response::Behaviour<BytesCodec>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    relay_client: relay::client::Behaviour,
    relay_server: Toggle<relay::Behaviour>,
    dcutr: dcutr::Behaviour,
    autonat_client: autonat::v2::client::Behaviour,
    autonat_server: autonat::v2::server::Behaviour,
    upnp: Toggle<upnp::tokio::Behaviour>,
}

/// What the swarm needs to know.
#[derive(Debug, Clone)]
pub struct NetOptions {
    pub network: NetworkId,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    /// How often Kademlia re-bootstraps.
    pub rebootstrap: Duration,
    /// Addresses others reach us on, known in advance (a public server, a
    /// forwarded port): confirmed at once, and no relay slot is reserved.
    pub external: Vec<Multiaddr>,
    /// Serve as a libp2p relay (v2) for peers behind NATs. It needs an
    /// external address (given, or confirmed by AutoNAT) before it offers one.
    pub relay_server: bool,
    /// Ask the home router for a port mapping (UPnP IGD).
    pub upnp: bool,
}

impl NetOptions {
    /// Loopback only, no mDNS: for tests and the local demo.
    pub fn loopback(network: NetworkId) -> Self {
        NetOptions {
            network,
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr")],
            bootstrap: vec![],
            mdns: false,
            rebootstrap: Duration::from_secs(60),
            external: vec![],
            relay_server: false,
            upnp: false,
        }
    }
}

fn rr_behaviour(p: Purpose) -> request_response::Behaviour<BytesCodec> {
    request_response::Behaviour::new(
        [(p.protocol(), ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
    )
}

/// A relay v2 server's limits. A relayed connection carries signalling (our
/// requests and the DCUtR exchange) until the peers meet directly; bulk data
/// goes over iroh. The defaults (2 min, 128 KiB) are too tight for a ledger
/// sync message, so the circuits here are longer and larger, and still bounded.
fn relay_config() -> relay::Config {
    relay::Config {
        max_reservations: 512,
        max_reservations_per_peer: 4,
        reservation_duration: Duration::from_secs(3600),
        max_circuits: 64,
        max_circuits_per_peer: 8,
        max_circuit_duration: Duration::from_secs(600),
        max_circuit_bytes: 4 * MAX_RR_BYTES as u64,
        ..Default::default()
    }
}

/// Gossipsub as other libp2p implementations speak it: the standard protocol
/// ids (`/meshsub/1.3.0` down to `/meshsub/1.0.0`), and the message id that
/// js-libp2p computes by default for signed messages ([`message_id`]). A foreign peer's
/// IHAVE and IWANT then name the messages we know by the same ids, and it is
/// not penalised for promises we could not match. Networks are kept apart by
/// the topic names (which carry the network id) and by the signatures inside
/// every frame. The wire is written down in `protocol/WIRE.md`.
fn gossip_config() -> anyhow::Result<gossipsub::Config> {
    gossipsub::ConfigBuilder::default()
        .max_transmit_size(MAX_GOSSIP_BYTES)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .heartbeat_interval(Duration::from_millis(500))
        .message_id_fn(message_id)
        .build()
        .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))
}

/// A gossip message's id, as js-libp2p computes it for signed messages: the
/// author's public key (the protobuf bytes an identity peer id inlines)
/// followed by the sequence number, 8 bytes big-endian. (go-libp2p puts the
/// whole peer id first, two bytes more; rust-libp2p's default writes both as
/// text.)
pub fn message_id(m: &gossipsub::Message) -> gossipsub::MessageId {
    let mut id = match m.source {
        Some(p) => {
            let mh: &libp2p::multihash::Multihash<64> = p.as_ref();
            if mh.code() == 0 {
                mh.digest().to_vec()
            } else {
                p.to_bytes()
            }
        }
        None => Vec::new(),
    };
    id.extend_from_slice(&m.sequence_number.unwrap_or_default().to_be_bytes());
    gossipsub::MessageId::from(id)
}

fn peer_score(topics: &Topics) -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let mut params = gossipsub::PeerScoreParams::default();
    // Loopback and LAN testbeds put many peers on one address: that is legitimate.
    params
        .ip_colocation_factor_whitelist
        .insert("127.0.0.1".parse().expect("ip"));
    for t in [&topics.market, &topics.oracle] {
        let topic = gossipsub::TopicScoreParams {
            topic_weight: 1.0,
            // A small swarm delivers few messages; do not punish quiet meshes.
            mesh_message_deliveries_weight: 0.0,
            mesh_failure_penalty_weight: 0.0,
            // Invalid messages are what we punish, hard.
            invalid_message_deliveries_weight: -100.0,
            invalid_message_deliveries_decay: 0.5,
            ..Default::default()
        };
        params.topics.insert(t.hash(), topic);
    }
    (params, gossipsub::PeerScoreThresholds::default())
}

/// Build the swarm for `identity` (its key is the libp2p key).
pub fn build_swarm(
    identity: &protocol::Identity,
    opts: &NetOptions,
) -> anyhow::Result<(Swarm<Behaviour>, Topics)> {
    let topics = Topics::new(&opts.network);
    let gcfg = gossip_config()?;
    let (params, thresholds) = peer_score(&topics);
    let mdns_on = opts.mdns;
    let relay_on = opts.relay_server;
    let upnp_on = opts.upnp;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(identity.libp2p_keypair())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_dns()?
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key, relay_client| {
            let peer_id = key.public().to_peer_id();
            let mut gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gcfg,
            )?;
            gossipsub.with_peer_score(params, thresholds)?;
            let mut kcfg = kad::Config::new(KAD_PROTOCOL);
            kcfg.set_query_timeout(Duration::from_secs(30));
            let mut kad = kad::Behaviour::with_config(peer_id, MemoryStore::new(peer_id), kcfg);
            kad.set_mode(Some(kad::Mode::Server));
            let mdns = if mdns_on {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    peer_id,
                )?)
            } else {
                None
            };
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_established(Some(512))
                        // A relayed connection, and one or two direct ones
                        // after a hole punch (QUIC's punch leaves two).
                        .with_max_established_per_peer(Some(3))
                        .with_max_pending_incoming(Some(64))
                        .with_max_pending_outgoing(Some(64)),
                ),
                identify: identify::Behaviour::new(
                    identify::Config::new("/cloudchain/1.0.0".into(), key.public())
                        .with_agent_version(agent_version())
                        // A new circuit address must reach peers (and their
                        // DHT) when the reservation comes, not at the next poll.
                        .with_push_listen_addr_updates(true),
                ),
                ping: ping::Behaviour::new(ping::Config::new()),
                kad,
                gossipsub,
                rr_sync: rr_behaviour(Purpose::Sync),
                rr_market: rr_behaviour(Purpose::Market),
                rr_committee: rr_behaviour(Purpose::Committee),
                mdns: Toggle::from(mdns),
                relay_client,
                relay_server: Toggle::from(
                    relay_on.then(|| relay::Behaviour::new(peer_id, relay_config())),
                ),
                dcutr: dcutr::Behaviour::new(peer_id),
                autonat_client: autonat::v2::client::Behaviour::default(),
                autonat_server: autonat::v2::server::Behaviour::default(),
                upnp: Toggle::from(upnp_on.then(upnp::tokio::Behaviour::default)),
            })
        })
        .map_err(|e| anyhow::anyhow!("building behaviours: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    for t in [&topics.market, &topics.oracle] {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(t)
            .map_err(|e| anyhow::anyhow!("subscribe {t}: {e}"))?;
    }
    for addr in &opts.listen {
        swarm
            .listen_on(addr.clone())
            .with_context(|| format!("cannot listen on {addr}"))?;
    }
    for addr in &opts.external {
        swarm.add_external_address(addr.clone());
    }
    if opts.relay_server && opts.external.is_empty() {
        warn!(
            "--relay-server without --external-addr: the relay serves only once AutoNAT \
             confirms a public address"
        );
    }
    for addr in &opts.bootstrap {
        add_bootstrap(&mut swarm, addr)?;
    }
    Ok((swarm, topics))
}

fn add_bootstrap(swarm: &mut Swarm<Behaviour>, addr: &Multiaddr) -> anyhow::Result<()> {
    let peer = addr
        .iter()
        .find_map(|p| match p {
            Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .with_context(|| format!("bootstrap address {addr} lacks /p2p/<peer id>"))?;
    swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
    swarm
        .dial(addr.clone())
        .with_context(|| format!("cannot dial {addr}"))?;
    Ok(())
}

/// What our validator says of a gossiped frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validation {
    /// Valid: deliver and forward.
    Accept,
    /// Invalid (bad bytes, bad signature, wrong network): drop, and the sender's
    /// score drops.
    Reject(String),
    /// Not harmful but not useful (expired, replayed, duplicate): drop quietly.
    Ignore(String),
}

/// Decides what to do with a gossiped frame. The node plugs the engines in here.
pub trait Validator: Send + 'static {
    fn validate(&mut self, now: Timestamp, frame: &Frame) -> Validation;
}

/// Checks what every gossiped message must pass: the signature of its kind, its
/// fields and lifetime, and freshness against a bounded replay guard.
#[derive(Debug)]
pub struct BasicValidator {
    network: NetworkId,
    replay: ReplayGuard,
}

impl BasicValidator {
    pub fn new(network: NetworkId) -> Self {
        BasicValidator {
            network,
            replay: ReplayGuard::new(100_000),
        }
    }
}

impl Validator for BasicValidator {
    fn validate(&mut self, now: Timestamp, frame: &Frame) -> Validation {
        let net = &self.network;
        let (signer, nonce, expires_at, checked) = match &frame.message {
            Message::Offer(s) => match s.verify(net) {
                Ok(o) if o.provider != s.signer => {
                    return Validation::Reject("offer signed by someone else".into());
                }
                Ok(o) => (s.signer, o.nonce, o.expires_at, o.validate(now)),
                Err(e) => return Validation::Reject(e.to_string()),
            },
            Message::Bid(s) => match s.verify(net) {
                Ok(j) if j.requester != s.signer => {
                    return Validation::Reject("bid signed by someone else".into());
                }
                Ok(j) => (s.signer, j.nonce, j.expires_at, j.validate(now)),
                Err(e) => return Validation::Reject(e.to_string()),
            },
            Message::Receipt(s) => {
                return match s.verify(net) {
                    Ok(r) if r.provider == s.signer => Validation::Accept,
                    Ok(_) => Validation::Reject("receipt signed by someone else".into()),
                    Err(e) => Validation::Reject(e.to_string()),
                };
            }
            Message::Verdict(s) => {
                return match s.verify(net) {
                    Ok(v) if v.oracle == s.signer => Validation::Accept,
                    Ok(_) => Validation::Reject("verdict signed by someone else".into()),
                    Err(e) => Validation::Reject(e.to_string()),
                };
            }
            Message::Contract(c) => {
                return match c.body_unverified() {
                    Ok(t) if &t.network == net => {
                        match c.verify_signers(net, &[t.requester, t.provider]) {
                            Ok(_) => Validation::Accept,
                            Err(e) => Validation::Reject(e.to_string()),
                        }
                    }
                    Ok(_) => Validation::Reject("contract for another network".into()),
                    Err(e) => Validation::Reject(e.to_string()),
                };
            }
            Message::Dispute(s) => {
                return match s.verify(net) {
                    Ok(d) if d.by == s.signer => Validation::Accept,
                    Ok(_) => Validation::Reject("dispute signed by someone else".into()),
                    Err(e) => Validation::Reject(e.to_string()),
                };
            }
            other => {
                return Validation::Reject(format!("{} is not a gossip message", other.kind()));
            }
        };
        if let Err(e) = checked {
            return Validation::Ignore(e.to_string());
        }
        match self.replay.check(now, signer, nonce, expires_at) {
            Ok(()) => Validation::Accept,
            Err(e) => Validation::Ignore(e.to_string()),
        }
    }
}

/// Events the loop hands to the node.
#[derive(Debug)]
pub enum NetEvent {
    /// A gossiped frame that passed validation.
    Gossip { from: PeerId, frame: Frame },
    /// A request from a peer; answer through [`Client::respond`].
    Request {
        from: PeerId,
        purpose: Purpose,
        data: Vec<u8>,
        channel: ResponseChannel<Vec<u8>>,
    },
    /// A peer connected (its first connection).
    Connected(PeerId),
    /// A peer's last connection closed.
    Disconnected(PeerId),
    /// A gossiped message was rejected (for metrics and tests).
    Rejected { from: PeerId, reason: String },
}

type Reply<T> = oneshot::Sender<anyhow::Result<T>>;

/// How one peer is connected.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerLink {
    pub peer: String,
    /// Connections straight to the peer (dialed, accepted or hole-punched).
    pub direct: usize,
    /// Connections through a relay.
    pub relayed: usize,
    /// The remote address of each connection.
    pub addrs: Vec<String>,
}

impl PeerLink {
    /// "direct", "relayed", or "direct+relayed" while both are open.
    pub fn kind(&self) -> &'static str {
        match (self.direct > 0, self.relayed > 0) {
            (true, false) => "direct",
            (false, true) => "relayed",
            _ => "direct+relayed",
        }
    }
}

/// The swarm's view of the network, for status and metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct NetInfo {
    pub listen: Vec<String>,
    /// Addresses confirmed as reachable from outside (given, AutoNAT, UPnP).
    pub external: Vec<String>,
    /// Relays holding a slot for us.
    pub reservations: Vec<String>,
    pub peers: Vec<PeerLink>,
    /// Relayed connections upgraded to direct ones by DCUtR, and attempts
    /// that failed.
    pub hole_punches: u64,
    pub hole_punch_failures: u64,
}

/// One open connection, as the loop tracks it.
#[derive(Debug, Clone)]
struct Link {
    relayed: bool,
    remote: Multiaddr,
    /// We dialed it (so `remote` is an address that reaches the peer).
    dialer: bool,
}

enum Command {
    Publish {
        frame: Frame,
        reply: Reply<()>,
    },
    PublishRaw {
        topic: IdentTopic,
        data: Vec<u8>,
        reply: Reply<()>,
    },
    Request {
        peer: PeerId,
        purpose: Purpose,
        data: Vec<u8>,
        reply: Reply<Vec<u8>>,
    },
    Respond {
        channel: ResponseChannel<Vec<u8>>,
        data: Vec<u8>,
    },
    Dial {
        addr: Multiaddr,
        reply: Reply<()>,
    },
    ListenAddrs {
        reply: Reply<Vec<Multiaddr>>,
    },
    Info {
        reply: Reply<NetInfo>,
    },
    MeshPeers {
        reply: Reply<Vec<PeerId>>,
    },
    Score {
        peer: PeerId,
        reply: Reply<Option<f64>>,
    },
    StartProviding {
        class: ResourceClass,
        reply: Reply<()>,
    },
    GetProviders {
        class: ResourceClass,
        reply: Reply<Vec<PeerId>>,
    },
}

/// A cloneable handle to the event loop.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    pub peer_id: PeerId,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.peer_id)
    }
}

impl Client {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> anyhow::Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| anyhow::anyhow!("the network event loop has stopped"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the network event loop dropped the reply"))?
    }

    /// Gossip a frame on its topic.
    pub async fn publish(&self, frame: Frame) -> anyhow::Result<()> {
        self.call(|reply| Command::Publish { frame, reply }).await
    }

    /// Gossip raw bytes (tests of malformed input use this).
    pub async fn publish_raw(&self, topic: IdentTopic, data: Vec<u8>) -> anyhow::Result<()> {
        self.call(|reply| Command::PublishRaw { topic, data, reply })
            .await
    }

    /// Send a request on the protocol of its purpose and wait for the response.
    pub async fn request(
        &self,
        peer: PeerId,
        purpose: Purpose,
        data: Vec<u8>,
    ) -> anyhow::Result<Vec<u8>> {
        self.call(|reply| Command::Request {
            peer,
            purpose,
            data,
            reply,
        })
        .await
    }

    /// Answer a request.
    pub async fn respond(
        &self,
        channel: ResponseChannel<Vec<u8>>,
        data: Vec<u8>,
    ) -> anyhow::Result<()> {
        self.tx
            .send(Command::Respond { channel, data })
            .await
            .map_err(|_| anyhow::anyhow!("the network event loop has stopped"))
    }

    pub async fn dial(&self, addr: Multiaddr) -> anyhow::Result<()> {
        self.call(|reply| Command::Dial { addr, reply }).await
    }

    pub async fn listen_addrs(&self) -> anyhow::Result<Vec<Multiaddr>> {
        self.call(|reply| Command::ListenAddrs { reply }).await
    }

    /// Our addresses and relays, and how each peer is connected.
    pub async fn info(&self) -> anyhow::Result<NetInfo> {
        self.call(|reply| Command::Info { reply }).await
    }

    /// Peers in our market-topic mesh.
    pub async fn mesh_peers(&self) -> anyhow::Result<Vec<PeerId>> {
        self.call(|reply| Command::MeshPeers { reply }).await
    }

    /// A peer's gossipsub score.
    pub async fn score(&self, peer: PeerId) -> anyhow::Result<Option<f64>> {
        self.call(|reply| Command::Score { peer, reply }).await
    }

    /// Announce in the DHT that we provide this resource class.
    pub async fn start_providing(&self, class: ResourceClass) -> anyhow::Result<()> {
        self.call(|reply| Command::StartProviding { class, reply })
            .await
    }

    /// Providers of a resource class found in the DHT.
    pub async fn get_providers(&self, class: ResourceClass) -> anyhow::Result<Vec<PeerId>> {
        self.call(|reply| Command::GetProviders { class, reply })
            .await
    }
}

/// Owns the swarm; run it with [`EventLoop::run`].
pub struct EventLoop<V: Validator> {
    swarm: Swarm<Behaviour>,
    topics: Topics,
    network: NetworkId,
    validator: V,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    pending_requests: HashMap<(Purpose, OutboundRequestId), Reply<Vec<u8>>>,
    pending_dials: HashMap<libp2p::swarm::ConnectionId, Reply<()>>,
    pending_providing: HashMap<kad::QueryId, Reply<()>>,
    pending_providers: HashMap<kad::QueryId, (Reply<Vec<PeerId>>, Vec<PeerId>)>,
    rebootstrap: Duration,
    /// Every open connection, by peer: dropped when the connection closes,
    /// so a peer that leaves leaves no entry.
    links: HashMap<PeerId, HashMap<ConnectionId, Link>>,
    /// Whether we reserve relay slots (not a relay, no address given).
    reserve: bool,
    /// Relays we asked for a slot, by the listener the circuit address is on.
    reservations: HashMap<libp2p::core::transport::ListenerId, PeerId>,
    accepted: BTreeSet<PeerId>,
    /// Connected peers that serve as relays (identify lists hop).
    relays: BTreeSet<PeerId>,
    hole_punches: u64,
    hole_punch_failures: u64,
}

impl<V: Validator> std::fmt::Debug for EventLoop<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventLoop({})", self.swarm.local_peer_id())
    }
}

/// Wall-clock now, for validation (the node is where time enters).
pub fn now() -> Timestamp {
    Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

/// Build the swarm and its loop; returns the client, the loop and the event stream.
pub fn new<V: Validator>(
    identity: &protocol::Identity,
    opts: &NetOptions,
    validator: V,
) -> anyhow::Result<(Client, EventLoop<V>, mpsc::Receiver<NetEvent>)> {
    let (swarm, topics) = build_swarm(identity, opts)?;
    let (tx, commands) = mpsc::channel(256);
    let (events, rx) = mpsc::channel(1024);
    let peer_id = *swarm.local_peer_id();
    Ok((
        Client { tx, peer_id },
        EventLoop {
            swarm,
            topics,
            network: opts.network,
            validator,
            commands,
            events,
            pending_requests: HashMap::new(),
            pending_dials: HashMap::new(),
            pending_providing: HashMap::new(),
            pending_providers: HashMap::new(),
            rebootstrap: opts.rebootstrap,
            links: HashMap::new(),
            reserve: !opts.relay_server && opts.external.is_empty(),
            reservations: HashMap::new(),
            accepted: BTreeSet::new(),
            relays: BTreeSet::new(),
            hole_punches: 0,
            hole_punch_failures: 0,
        },
        rx,
    ))
}

impl<V: Validator> EventLoop<V> {
    /// Run until every client is dropped.
    pub async fn run(mut self) {
        let mut rebootstrap = tokio::time::interval(self.rebootstrap);
        rebootstrap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event).await,
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                _ = rebootstrap.tick() => {
                    if self.swarm.connected_peers().next().is_some() {
                        // No peers known yet is not an error worth logging.
                        let _ = self.swarm.behaviour_mut().kad.bootstrap();
                    }
                }
            }
        }
        debug!("network event loop stopped");
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Publish { frame, reply } => {
                let res = self.publish(frame);
                let _ = reply.send(res);
            }
            Command::PublishRaw { topic, data, reply } => {
                let res = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(topic, data)
                    .map(drop)
                    .map_err(|e| anyhow::anyhow!("publish: {e}"));
                let _ = reply.send(res);
            }
            Command::Request {
                peer,
                purpose,
                data,
                reply,
            } => {
                if !self.swarm.is_connected(&peer) {
                    self.dial_via_relays(peer);
                }
                let id = self.rr(purpose).send_request(&peer, data);
                self.pending_requests.insert((purpose, id), reply);
            }
            Command::Respond { channel, data } => {
                // A response channel answers on its own stream, whichever
                // protocol it came on.
                if self
                    .rr(Purpose::Market)
                    .send_response(channel, data)
                    .is_err()
                {
                    debug!("response dropped: the requester went away");
                }
            }
            Command::Dial { addr, reply } => {
                let opts = libp2p::swarm::dial_opts::DialOpts::unknown_peer_id()
                    .address(addr.clone())
                    .build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.pending_dials.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(anyhow::anyhow!("dial {addr}: {e}")));
                    }
                }
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(Ok(self.swarm.listeners().cloned().collect()));
            }
            Command::Info { reply } => {
                let _ = reply.send(Ok(self.info()));
            }
            Command::MeshPeers { reply } => {
                let peers = self
                    .swarm
                    .behaviour()
                    .gossipsub
                    .mesh_peers(&self.topics.market.hash())
                    .copied()
                    .collect();
                let _ = reply.send(Ok(peers));
            }
            Command::Score { peer, reply } => {
                let _ = reply.send(Ok(self.swarm.behaviour().gossipsub.peer_score(&peer)));
            }
            Command::StartProviding { class, reply } => {
                let key = kad::RecordKey::new(&class.dht_key());
                match self.swarm.behaviour_mut().kad.start_providing(key) {
                    Ok(id) => {
                        self.pending_providing.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(anyhow::anyhow!("start providing: {e}")));
                    }
                }
            }
            Command::GetProviders { class, reply } => {
                let key = kad::RecordKey::new(&class.dht_key());
                let id = self.swarm.behaviour_mut().kad.get_providers(key);
                self.pending_providers.insert(id, (reply, Vec::new()));
            }
        }
    }

    fn rr(&mut self, p: Purpose) -> &mut request_response::Behaviour<BytesCodec> {
        let b = self.swarm.behaviour_mut();
        match p {
            Purpose::Sync => &mut b.rr_sync,
            Purpose::Market => &mut b.rr_market,
            Purpose::Committee => &mut b.rr_committee,
        }
    }

    async fn on_rr(&mut self, purpose: Purpose, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    self.emit(NetEvent::Request {
                        from: peer,
                        purpose,
                        data: request,
                        channel,
                    })
                    .await;
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.pending_requests.remove(&(purpose, request_id)) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                if let Some(reply) = self.pending_requests.remove(&(purpose, request_id)) {
                    let _ = reply.send(Err(anyhow::anyhow!("request to {peer}: {error}")));
                }
            }
            _ => {}
        }
    }

    fn info(&self) -> NetInfo {
        let mut peers: Vec<PeerLink> = self
            .links
            .iter()
            .map(|(peer, conns)| PeerLink {
                peer: peer.to_string(),
                direct: conns.values().filter(|l| !l.relayed).count(),
                relayed: conns.values().filter(|l| l.relayed).count(),
                addrs: conns.values().map(|l| l.remote.to_string()).collect(),
            })
            .collect();
        peers.sort_by(|a, b| a.peer.cmp(&b.peer));
        NetInfo {
            listen: self.swarm.listeners().map(|a| a.to_string()).collect(),
            external: self
                .swarm
                .external_addresses()
                .map(|a| a.to_string())
                .collect(),
            reservations: self.accepted.iter().map(|p| p.to_string()).collect(),
            peers,
            hole_punches: self.hole_punches,
            hole_punch_failures: self.hole_punch_failures,
        }
    }

    /// Dial `peer` at every address the behaviours know and, besides, through
    /// every relay we are connected to: a peer behind a NAT is reachable only
    /// through the relay it holds a slot on, and the DHT may not have told us
    /// its circuit address yet. The first connection that comes up wins;
    /// DCUtR then tries for a direct one.
    fn dial_via_relays(&mut self, peer: PeerId) {
        let circuits: Vec<Multiaddr> = self
            .relays
            .iter()
            .filter(|r| **r != peer)
            .filter_map(|r| {
                let link = self.links.get(r)?.values().find(|l| !l.relayed)?;
                Some(
                    strip_p2p(link.remote.clone())
                        .with(Protocol::P2p(*r))
                        .with(Protocol::P2pCircuit)
                        .with(Protocol::P2p(peer)),
                )
            })
            .collect();
        if circuits.is_empty() {
            return;
        }
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(circuits)
            .extend_addresses_through_behaviour()
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            debug!(%peer, error = %e, "dial through relays");
        }
    }

    /// Reserve a slot on `relay` (which said it speaks hop) if we are behind a
    /// NAT as far as we know and hold fewer than [`MAX_RESERVATIONS`]. The
    /// circuit is reserved over the address we dialed the relay on.
    fn maybe_reserve(&mut self, relay: PeerId) {
        if !self.reserve
            || self.reservations.len() >= MAX_RESERVATIONS
            || self.reservations.values().any(|p| *p == relay)
        {
            return;
        }
        let Some(addr) = self
            .links
            .get(&relay)
            .and_then(|c| c.values().find(|l| l.dialer && !l.relayed))
            .map(|l| l.remote.clone())
        else {
            debug!(%relay, "a relay we did not dial: no address to reserve over");
            return;
        };
        let addr = strip_p2p(addr)
            .with(Protocol::P2p(relay))
            .with(Protocol::P2pCircuit);
        match self.swarm.listen_on(addr.clone()) {
            Ok(id) => {
                info!(%relay, %addr, "asking the relay for a slot");
                self.reservations.insert(id, relay);
            }
            Err(e) => warn!(%relay, %addr, error = %e, "cannot listen through the relay"),
        }
    }

    fn publish(&mut self, frame: Frame) -> anyhow::Result<()> {
        let topic = self
            .topics
            .for_message(&frame.message)
            .with_context(|| format!("{} is not gossiped", frame.message.kind()))?
            .clone();
        let bytes = frame.to_bytes()?;
        self.swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic, bytes)
            .map(drop)
            .map_err(|e| anyhow::anyhow!("publish: {e}"))
    }

    async fn emit(&mut self, e: NetEvent) {
        // Bounded: if the node falls behind, the loop waits rather than grows.
        if self.events.send(e).await.is_err() {
            debug!("no one listens to network events");
        }
    }

    async fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                num_established,
                endpoint,
                ..
            } => {
                if let Some(reply) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Ok(()));
                }
                let link = Link {
                    relayed: endpoint.is_relayed(),
                    remote: endpoint.get_remote_address().clone(),
                    dialer: matches!(endpoint, ConnectedPoint::Dialer { .. }),
                };
                debug!(peer = %peer_id, relayed = link.relayed, remote = %link.remote, "connected");
                self.links
                    .entry(peer_id)
                    .or_default()
                    .insert(connection_id, link);
                if num_established.get() == 1 {
                    self.emit(NetEvent::Connected(peer_id)).await;
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(conns) = self.links.get_mut(&peer_id) {
                    conns.remove(&connection_id);
                    if conns.is_empty() {
                        self.links.remove(&peer_id);
                        self.relays.remove(&peer_id);
                    }
                }
                if num_established == 0 {
                    self.emit(NetEvent::Disconnected(peer_id)).await;
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some(relay) = self.reservations.remove(&listener_id) {
                    self.accepted.remove(&relay);
                    info!(%relay, ?reason, "relay slot lost; we ask again when we meet it");
                }
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                info!(%address, "external address confirmed");
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                info!(%address, "external address expired");
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(e)) => match e {
                relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal,
                    ..
                } => {
                    if !renewal {
                        info!(relay = %relay_peer_id, "relay slot reserved");
                    }
                    self.accepted.insert(relay_peer_id);
                }
                other => debug!(?other, "relay client"),
            },
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(_) => {
                    self.hole_punches += 1;
                    info!(peer = %remote_peer_id, "hole punched: direct connection");
                }
                Err(e) => {
                    self.hole_punch_failures += 1;
                    info!(peer = %remote_peer_id, error = %e, "hole punch failed; staying relayed");
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::AutonatClient(e)) => match e.result {
                Ok(()) => info!(addr = %e.tested_addr, server = %e.server, "reachable (AutoNAT)"),
                Err(err) => {
                    debug!(addr = %e.tested_addr, server = %e.server, error = %err, "not reachable (AutoNAT)")
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Upnp(e)) => match e {
                upnp::Event::NewExternalAddr { external_addr, .. } => {
                    info!(%external_addr, "UPnP port mapping")
                }
                upnp::Event::GatewayNotFound => debug!("no UPnP gateway"),
                upnp::Event::NonRoutableGateway => debug!("the UPnP gateway is not public"),
                upnp::Event::ExpiredExternalAddr { external_addr, .. } => {
                    info!(%external_addr, "UPnP port mapping expired")
                }
            },
            SwarmEvent::OutgoingConnectionError {
                error,
                connection_id,
                ..
            } => {
                debug!(%error, "outgoing connection failed");
                if let Some(reply) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Err(anyhow::anyhow!("dial failed: {error}")));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                // A peer's loopback address is ours unless it is on our host:
                // keep it only if we reach the peer over loopback.
                let local = self
                    .links
                    .get(&peer_id)
                    .is_some_and(|c| c.values().any(|l| is_loopback(&l.remote)));
                for addr in info.listen_addrs {
                    if local || !is_loopback(&addr) {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
                if info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
                    self.relays.insert(peer_id);
                    self.maybe_reserve(peer_id);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (peer, addr) in list {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    let _ = self.swarm.dial(addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                self.on_gossip(propagation_source, message_id, message.topic, message.data)
                    .await;
            }
            SwarmEvent::Behaviour(BehaviourEvent::RrSync(e)) => self.on_rr(Purpose::Sync, e).await,
            SwarmEvent::Behaviour(BehaviourEvent::RrMarket(e)) => {
                self.on_rr(Purpose::Market, e).await
            }
            SwarmEvent::Behaviour(BehaviourEvent::RrCommittee(e)) => {
                self.on_rr(Purpose::Committee, e).await
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                ..
            })) => self.on_kad(id, result, step.last),
            _ => {}
        }
    }

    fn on_kad(&mut self, id: kad::QueryId, result: kad::QueryResult, last: bool) {
        match result {
            kad::QueryResult::StartProviding(r) => {
                if let Some(reply) = self.pending_providing.remove(&id) {
                    let _ = reply.send(r.map(drop).map_err(|e| anyhow::anyhow!("{e}")));
                }
            }
            kad::QueryResult::GetProviders(r) => {
                if let Some((_, found)) = self.pending_providers.get_mut(&id)
                    && let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = &r
                {
                    found.extend(providers.iter().copied());
                }
                let finished = last || r.is_err();
                if finished && let Some((reply, mut found)) = self.pending_providers.remove(&id) {
                    found.sort();
                    found.dedup();
                    let _ = reply.send(Ok(found));
                }
            }
            _ => {}
        }
    }

    async fn on_gossip(
        &mut self,
        from: PeerId,
        id: gossipsub::MessageId,
        topic: TopicHash,
        data: Vec<u8>,
    ) {
        let verdict = match Frame::from_bytes(&data, &self.network) {
            Ok(frame) => {
                let expected = self.topics.for_message(&frame.message).map(|t| t.hash());
                if expected.as_ref() != Some(&topic) {
                    (
                        Validation::Reject(format!("{} on the wrong topic", frame.message.kind())),
                        None,
                    )
                } else {
                    (self.validator.validate(now(), &frame), Some(frame))
                }
            }
            // A newer protocol version is not an attack: peers of different
            // versions share topics while a network upgrades.
            Err(e @ protocol::FrameError::Version(_)) => (Validation::Ignore(e.to_string()), None),
            Err(e) => (Validation::Reject(describe(&e)), None),
        };
        let acceptance = match &verdict.0 {
            Validation::Accept => MessageAcceptance::Accept,
            Validation::Reject(_) => MessageAcceptance::Reject,
            Validation::Ignore(_) => MessageAcceptance::Ignore,
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &from, acceptance);
        match verdict {
            (Validation::Accept, Some(frame)) => self.emit(NetEvent::Gossip { from, frame }).await,
            (Validation::Reject(reason), _) => {
                warn!(%from, %reason, "rejected gossip");
                self.emit(NetEvent::Rejected { from, reason }).await;
            }
            (Validation::Ignore(reason), _) => debug!(%from, %reason, "ignored gossip"),
            (Validation::Accept, None) => {}
        }
    }
}

fn is_loopback(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// `addr` without a trailing `/p2p/<id>`.
fn strip_p2p(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

fn describe(e: &protocol::FrameError) -> String {
    match e {
        protocol::FrameError::Codec(CodecError::TooLarge { len, limit, .. }) => {
            format!("oversized frame ({len} > {limit} bytes)")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    fn framed(len: u32, body: &[u8]) -> Cursor<Vec<u8>> {
        let mut v = len.to_be_bytes().to_vec();
        v.extend_from_slice(body);
        Cursor::new(v)
    }

    #[tokio::test]
    async fn a_request_is_read_up_to_its_length_and_no_further() {
        let got = read_bounded(&mut framed(3, b"abcdef")).await.unwrap();
        assert_eq!(got, b"abc");
    }

    #[tokio::test]
    async fn a_claimed_length_that_never_arrives_is_an_error_not_an_allocation() {
        // Announces the bound, sends 5 bytes: an error, and the buffer only
        // ever held what came.
        let e = read_bounded(&mut framed(MAX_RR_BYTES as u32, b"hello"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("after 5 of"), "{e}");
    }

    #[tokio::test]
    async fn a_length_past_the_bound_is_refused_before_reading() {
        let e = read_bounded(&mut framed(MAX_RR_BYTES as u32 + 1, b""))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn loopback_and_relay_addresses_are_told_apart() {
        let lo: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let lan: Multiaddr = "/ip4/10.77.1.2/tcp/1".parse().unwrap();
        assert!(is_loopback(&lo));
        assert!(!is_loopback(&lan));
        let id = PeerId::random();
        let with_id = lan.clone().with(Protocol::P2p(id));
        assert_eq!(strip_p2p(with_id), lan);
        assert_eq!(strip_p2p(lan.clone()), lan);
    }
}
