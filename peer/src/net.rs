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
//! - request-response with a bounded length-prefixed codec, for proposals,
//!   contracts and ledger sync.
//! - mDNS on a LAN (config flag), connection limits.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, TopicHash};
use libp2p::kad::{self, store::MemoryStore};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, connection_limits, identify, mdns, noise, ping, tcp,
    yamux,
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
/// The request-response protocol.
pub const RR_PROTOCOL: StreamProtocol = StreamProtocol::new("/cloudchain/rr/1");
/// Our Kademlia protocol name (a private DHT, not the IPFS one).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/cloudchain/kad/1");

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
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
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
    pub rr: request_response::Behaviour<BytesCodec>,
    mdns: Toggle<mdns::tokio::Behaviour>,
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
        }
    }
}

fn gossip_config(network: &NetworkId) -> anyhow::Result<gossipsub::Config> {
    gossipsub::ConfigBuilder::default()
        .max_transmit_size(MAX_GOSSIP_BYTES)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .heartbeat_interval(Duration::from_millis(500))
        // Content-addressed ids: the same signed message is one message.
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes()[..20].to_vec())
        })
        .protocol_id_prefix(format!(
            "/cloudchain/{}/meshsub",
            hex::encode(&network.0[..4])
        ))
        .build()
        .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))
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
    let gcfg = gossip_config(&opts.network)?;
    let (params, thresholds) = peer_score(&topics);
    let mdns_on = opts.mdns;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(identity.libp2p_keypair())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_dns()?
        .with_behaviour(|key| {
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
                        .with_max_established_per_peer(Some(2))
                        .with_max_pending_incoming(Some(64))
                        .with_max_pending_outgoing(Some(64)),
                ),
                identify: identify::Behaviour::new(identify::Config::new(
                    "/cloudchain/1.0.0".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(ping::Config::new()),
                kad,
                gossipsub,
                rr: request_response::Behaviour::new(
                    [(RR_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(30)),
                ),
                mdns: Toggle::from(mdns),
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
    for addr in &opts.bootstrap {
        add_bootstrap(&mut swarm, addr)?;
    }
    Ok((swarm, topics))
}

fn add_bootstrap(swarm: &mut Swarm<Behaviour>, addr: &Multiaddr) -> anyhow::Result<()> {
    let peer = addr
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(id) => Some(id),
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

    /// Send a request and wait for the response.
    pub async fn request(&self, peer: PeerId, data: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        self.call(|reply| Command::Request { peer, data, reply })
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
    pending_requests: HashMap<OutboundRequestId, Reply<Vec<u8>>>,
    pending_dials: HashMap<libp2p::swarm::ConnectionId, Reply<()>>,
    pending_providing: HashMap<kad::QueryId, Reply<()>>,
    pending_providers: HashMap<kad::QueryId, (Reply<Vec<PeerId>>, Vec<PeerId>)>,
    rebootstrap: Duration,
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
            Command::Request { peer, data, reply } => {
                let id = self.swarm.behaviour_mut().rr.send_request(&peer, data);
                self.pending_requests.insert(id, reply);
            }
            Command::Respond { channel, data } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .rr
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
                ..
            } => {
                if let Some(reply) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Ok(()));
                }
                if num_established.get() == 1 {
                    self.emit(NetEvent::Connected(peer_id)).await;
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => self.emit(NetEvent::Disconnected(peer_id)).await,
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
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
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
            SwarmEvent::Behaviour(BehaviourEvent::Rr(request_response::Event::Message {
                peer,
                message,
                ..
            })) => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    self.emit(NetEvent::Request {
                        from: peer,
                        data: request,
                        channel,
                    })
                    .await;
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.pending_requests.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Rr(
                request_response::Event::OutboundFailure {
                    request_id,
                    error,
                    peer,
                    ..
                },
            )) => {
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(anyhow::anyhow!("request to {peer}: {error}")));
                }
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

fn describe(e: &protocol::FrameError) -> String {
    match e {
        protocol::FrameError::Codec(CodecError::TooLarge { len, limit, .. }) => {
            format!("oversized frame ({len} > {limit} bytes)")
        }
        other => other.to_string(),
    }
}
