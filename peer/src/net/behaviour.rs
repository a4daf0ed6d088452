//! The behaviours of the node's swarm and how they are configured: transports,
//! identify, ping, Kademlia, gossipsub (ids, scoring), request-response (one
//! protocol per purpose), relay v2 client and server, DCUtR, AutoNAT v2, UPnP.

use std::time::Duration;

use anyhow::Context;
use libp2p::gossipsub;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, behaviour::toggle::Toggle};
use libp2p::{
    Multiaddr, Swarm, autonat, connection_limits, dcutr, identify, mdns, noise, ping, relay, tcp,
    upnp, yamux,
};
use tracing::warn;

use super::codec::BytesCodec;
use super::{
    KAD_PROTOCOL, MAX_GOSSIP_BYTES, MAX_RR_BYTES, NetOptions, Purpose, Topics, agent_version,
};

/// All behaviours of the node.
#[allow(missing_debug_implementations)] // the derive cannot see through the behaviours
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub(super) limits: connection_limits::Behaviour,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    pub kad: kad::Behaviour<MemoryStore>,
    pub gossipsub: gossipsub::Behaviour,
    pub(super) rr_sync: request_response::Behaviour<BytesCodec>,
    pub(super) rr_market: request_response::Behaviour<BytesCodec>,
    pub(super) rr_committee: request_response::Behaviour<BytesCodec>,
    pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(super) relay_client: relay::client::Behaviour,
    pub(super) relay_server: Toggle<relay::Behaviour>,
    pub(super) dcutr: dcutr::Behaviour,
    pub(super) autonat_client: autonat::v2::client::Behaviour,
    pub(super) autonat_server: autonat::v2::server::Behaviour,
    pub(super) upnp: Toggle<upnp::tokio::Behaviour>,
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
    for t in topics.market.iter().chain([&topics.oracle]) {
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
    let topics = Topics::new(&opts.network, &opts.markets);
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
    let heard: Vec<&gossipsub::IdentTopic> = if opts.markets.all {
        topics.market.iter().collect()
    } else {
        vec![topics.own_market()]
    };
    for t in heard.into_iter().chain([&topics.oracle]) {
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
