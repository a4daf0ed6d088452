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

use std::time::Duration;

use libp2p::gossipsub::IdentTopic;
use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use protocol::{Frame, Message, NetworkId, ResourceClass, Timestamp, Wire};
use tokio::sync::{mpsc, oneshot};

mod behaviour;
mod codec;
mod event_loop;
mod validate;

pub use behaviour::{Behaviour, BehaviourEvent, build_swarm, message_id};
pub use codec::BytesCodec;
pub use event_loop::{EventLoop, new};
pub use validate::{BasicValidator, Validation, Validator};

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
    /// Offers and open bids: one topic per market shard
    /// (`protocol::market::market_shard`), or the one `market` topic of a
    /// network with a single shard.
    pub market: Vec<IdentTopic>,
    /// Contracts (for the committee to watch), receipts, verdicts and disputes.
    pub oracle: IdentTopic,
    /// The market shard this node trades in.
    pub own: u16,
}

impl Topics {
    /// The topics of `network`, its market split into `markets.shards`
    /// shards.
    pub fn new(network: &NetworkId, markets: &Markets) -> Self {
        let short = hex::encode(&network.0[..8]);
        let market = if markets.shards <= 1 {
            vec![IdentTopic::new(format!("cloudchain/v1/{short}/market"))]
        } else {
            (0..markets.shards)
                .map(|k| IdentTopic::new(format!("cloudchain/v1/{short}/market/{k}")))
                .collect()
        };
        Topics {
            market,
            oracle: IdentTopic::new(format!("cloudchain/v1/{short}/oracle")),
            own: markets.own,
        }
    }

    /// The market topic of `account`'s shard.
    pub fn market_of(&self, account: &protocol::AccountId) -> &IdentTopic {
        let shards = u16::try_from(self.market.len()).unwrap_or(u16::MAX);
        let k = usize::from(protocol::market::market_shard(account, shards));
        &self.market[k.min(self.market.len() - 1)]
    }

    /// The market topic of this node's own shard.
    pub fn own_market(&self) -> &IdentTopic {
        &self.market[usize::from(self.own).min(self.market.len() - 1)]
    }

    /// The topic a message belongs on, if it is gossiped at all: an offer in
    /// its provider's market shard, a bid in its requester's.
    pub fn for_message(&self, m: &Message) -> Option<&IdentTopic> {
        match m {
            Message::Offer(o) => Some(self.market_of(&o.body_unverified().ok()?.provider)),
            Message::Bid(b) => Some(self.market_of(&b.body_unverified().ok()?.requester)),
            Message::Contract(_)
            | Message::Receipt(_)
            | Message::Verdict(_)
            | Message::Dispute(_) => Some(&self.oracle),
            _ => None,
        }
    }
}

/// The market shards of a network (its genesis's `market_shards`) and the
/// ones a node hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Markets {
    pub shards: u16,
    /// This node's own shard, where it trades.
    pub own: u16,
    /// Hear every shard's offers: a committee member fetches results from
    /// any provider.
    pub all: bool,
}

impl Markets {
    /// One market.
    pub fn one() -> Markets {
        Markets {
            shards: 1,
            own: 0,
            all: false,
        }
    }

    /// `shards` shards, for a node of account `me` (hearing all if `all`).
    pub fn of(shards: u16, me: &protocol::AccountId, all: bool) -> Markets {
        Markets {
            shards: shards.max(1),
            own: protocol::market::market_shard(me, shards),
            all,
        }
    }
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
    /// The market shards, and which this node hears.
    pub markets: Markets,
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
            markets: Markets::one(),
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
        key: String,
        reply: Reply<()>,
    },
    GetProviders {
        key: String,
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
        self.start_providing_key(class.dht_key().to_string()).await
    }

    /// Providers of a resource class found in the DHT.
    pub async fn get_providers(&self, class: ResourceClass) -> anyhow::Result<Vec<PeerId>> {
        self.get_providers_key(class.dht_key().to_string()).await
    }

    /// Announce ourselves in the DHT under `key` (a resource class's, or a
    /// data schema's, [`protocol::DataOffer::dht_key`]).
    pub async fn start_providing_key(&self, key: String) -> anyhow::Result<()> {
        self.call(|reply| Command::StartProviding { key, reply })
            .await
    }

    /// The peers announced under `key` in the DHT.
    pub async fn get_providers_key(&self, key: String) -> anyhow::Result<Vec<PeerId>> {
        self.call(|reply| Command::GetProviders { key, reply })
            .await
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

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{
        Bps, DurationMs, Identity, Offer, PricePerCu, ResourceClass, SlaTerms, Timestamp,
        signed::Signed,
    };

    fn offer_by(id: &Identity, network: &NetworkId) -> Message {
        let o = Offer {
            provider: id.account(),
            class: ResourceClass::Gpu,
            device: "gpu".into(),
            speed_milli_cu_per_s: 1_000_000,
            memory_bytes: 1 << 30,
            bandwidth_bytes_per_s: 10 << 20,
            price: PricePerCu(1_000),
            sla: SlaTerms {
                deadline_slack: DurationMs::secs(5),
                availability: Bps(9_900),
                penalty: Bps(1_000),
                exact: true,
            },
            region: "eu".into(),
            slots: 1,
            busy_slots: 0,
            holds: vec![],
            datasets: vec![],
            contact: vec![],
            issued_at: Timestamp(0),
            expires_at: Timestamp(60_000),
            nonce: 1,
        };
        Message::Offer(Signed::sign(id, network, &o).expect("sign"))
    }

    /// One shard keeps the one `market` topic; many put each offer on its
    /// provider's shard's topic, and a node subscribes to its own.
    #[test]
    fn offers_go_on_their_providers_market_shard() {
        let network = NetworkId([7; 32]);
        let one = Topics::new(&network, &Markets::one());
        let id = Identity::from_seed(3);
        let m = offer_by(&id, &network);
        assert_eq!(one.market.len(), 1);
        assert_eq!(
            one.for_message(&m).map(|t| t.to_string()),
            Some("cloudchain/v1/0707070707070707/market".to_string())
        );
        let me = Identity::from_seed(4).account();
        let many = Topics::new(&network, &Markets::of(8, &me, false));
        assert_eq!(many.market.len(), 8);
        let k = protocol::market::market_shard(&id.account(), 8);
        assert_eq!(
            many.for_message(&m).map(|t| t.to_string()),
            Some(format!("cloudchain/v1/0707070707070707/market/{k}"))
        );
        let own = protocol::market::market_shard(&me, 8);
        assert_eq!(
            many.own_market().to_string(),
            format!("cloudchain/v1/0707070707070707/market/{own}")
        );
    }
}
