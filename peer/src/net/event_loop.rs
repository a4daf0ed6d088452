//! The loop that owns the swarm: commands from [`Client`]s in, events to the
//! node out, and the swarm's own events (connections, relays, hole punches,
//! gossip, requests, DHT queries) handled in between.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::gossipsub::{self, MessageAcceptance, TopicHash};
use libp2p::kad;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, dcutr, identify, mdns, relay, upnp};
use protocol::{Frame, NetworkId, codec::CodecError};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::behaviour::{Behaviour, BehaviourEvent, build_swarm};
use super::codec::BytesCodec;
use super::validate::{Validation, Validator};
use super::{
    Client, Command, Link, MAX_RESERVATIONS, NetEvent, NetInfo, NetOptions, PeerLink, Purpose,
    Reply, Topics, now,
};

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
    /// libp2p's own metrics, when the node serves them.
    metrics: Option<libp2p::metrics::Metrics>,
    hole_punches: u64,
    hole_punch_failures: u64,
}

impl<V: Validator> std::fmt::Debug for EventLoop<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventLoop({})", self.swarm.local_peer_id())
    }
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
            metrics: None,
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
                    .mesh_peers(&self.topics.own_market().hash())
                    .copied()
                    .collect();
                let _ = reply.send(Ok(peers));
            }
            Command::Score { peer, reply } => {
                let _ = reply.send(Ok(self.swarm.behaviour().gossipsub.peer_score(&peer)));
            }
            Command::StartProviding { key, reply } => {
                let key = kad::RecordKey::new(&key);
                match self.swarm.behaviour_mut().kad.start_providing(key) {
                    Ok(id) => {
                        self.pending_providing.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(anyhow::anyhow!("start providing: {e}")));
                    }
                }
            }
            Command::GetProviders { key, reply } => {
                let key = kad::RecordKey::new(&key);
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

    /// Record libp2p's metrics into `m` (swarm, identify, kad, gossipsub,
    /// ping, relay, DCUtR).
    pub fn with_metrics(mut self, m: libp2p::metrics::Metrics) -> Self {
        self.metrics = Some(m);
        self
    }

    fn record(&self, event: &SwarmEvent<BehaviourEvent>) {
        use libp2p::metrics::Recorder;
        let Some(m) = &self.metrics else {
            return;
        };
        m.record(event);
        if let SwarmEvent::Behaviour(b) = event {
            match b {
                BehaviourEvent::Gossipsub(e) => m.record(e),
                BehaviourEvent::Identify(e) => m.record(e),
                BehaviourEvent::Kad(e) => m.record(e),
                BehaviourEvent::Ping(e) => m.record(e),
                BehaviourEvent::RelayServer(e) => m.record(e),
                BehaviourEvent::Dcutr(e) => m.record(e),
                _ => {}
            }
        }
    }

    async fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.record(&event);
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
