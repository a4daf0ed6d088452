//! Real libp2p swarms on 127.0.0.1: gossip reaches everyone, bad gossip is
//! rejected and costs its sender, and providers are found in the DHT.

use std::time::Duration;

use libp2p::PeerId;
use peer::net::NetEvent;
use protocol::*;
use tests::*;

fn offer(id: &Identity, now: Timestamp, nonce: u64) -> Offer {
    test_offer(id, now, DurationMs::secs(60), nonce)
}

async fn swarm_of(n: usize, network: NetworkId) -> anyhow::Result<Vec<TestNode>> {
    let first = start_node(100, network, vec![]).await?;
    let boot = vec![first.addr.clone()];
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(start_node(100 + i as u64, network, boot.clone()).await?);
    }
    for node in &nodes {
        wait_for_mesh(node, 1).await?;
    }
    Ok(nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_reach_every_peer_of_a_five_node_swarm() -> anyhow::Result<()> {
    let network = NetworkId::named("swarm-test");
    let mut nodes = swarm_of(5, network).await?;
    let sender = &nodes[2];
    let o = offer(&sender.identity, peer::net::now(), 1);
    let signed = Signed::sign(&sender.identity, &network, &o)?;
    sender
        .client
        .publish(Frame::new(network, Message::Offer(signed.clone())))
        .await?;
    let from = sender.identity.account();
    for (i, node) in nodes.iter_mut().enumerate() {
        if i == 2 {
            continue;
        }
        let got = next_event(node, "the offer", |e| match e {
            NetEvent::Gossip { frame, .. } => match frame.message {
                Message::Offer(s) => Some(s),
                _ => None,
            },
            _ => None,
        })
        .await?;
        assert_eq!(got, signed, "node {i}");
        assert_eq!(got.verify(&network)?.provider, from);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_gossip_is_rejected_and_lowers_the_senders_score()
-> anyhow::Result<()> {
    let network = NetworkId::named("bad-gossip");
    let mut nodes = swarm_of(3, network).await?;
    let bad: PeerId = nodes[1].client.peer_id;
    let forging: PeerId = nodes[2].client.peer_id;
    let topics = peer::net::Topics::new(&network, &peer::net::Markets::one());
    assert_eq!(nodes[0].client.score(bad).await?.unwrap_or(0.0), 0.0);

    // Garbage bytes on the market topic (version 1, then nonsense).
    nodes[1]
        .client
        .publish_raw(
            topics.own_market().clone(),
            vec![0x01, 0xde, 0xad, 0xbe, 0xef],
        )
        .await?;
    let (from, reason) = next_event(&mut nodes[0], "a rejection", |e| match e {
        NetEvent::Rejected { from, reason } => Some((from, reason)),
        _ => None,
    })
    .await?;
    assert_eq!(from, bad);
    assert!(reason.contains("malformed"), "{reason}");

    // A well-formed offer claiming another provider (from a second peer: the
    // first is graylisted by now, its messages are no longer even read).
    let victim = Identity::from_seed(999);
    let mut o = offer(&nodes[2].identity, peer::net::now(), 2);
    o.provider = victim.account();
    let forged = Signed::sign(&nodes[2].identity, &network, &o)?;
    nodes[2]
        .client
        .publish(Frame::new(network, Message::Offer(forged)))
        .await?;
    let (from, reason) = next_event(&mut nodes[0], "a second rejection", |e| match e {
        NetEvent::Rejected { from, reason } => Some((from, reason)),
        _ => None,
    })
    .await?;
    assert_eq!(from, forging);
    assert!(reason.contains("someone else"), "{reason}");

    // An oversized one (larger than a frame may be) never reaches the validator
    // as a frame: gossipsub drops it at max_transmit_size on the sending side.
    let huge = vec![0u8; peer::net::MAX_GOSSIP_BYTES + 1];
    assert!(
        nodes[2]
            .client
            .publish_raw(topics.own_market().clone(), huge)
            .await
            .is_err()
    );

    for p in [bad, forging] {
        let score = nodes[0].client.score(p).await?.unwrap_or(0.0);
        assert!(score < 0.0, "score of {p} is {score}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_finds_providers_in_the_dht() -> anyhow::Result<()> {
    let network = NetworkId::named("dht-test");
    let nodes = swarm_of(3, network).await?;
    nodes[1].client.start_providing(ResourceClass::Cpu).await?;
    let late = start_node(200, network, vec![nodes[0].addr.clone()]).await?;
    wait_for_mesh(&late, 1).await?;
    let found = late.client.get_providers(ResourceClass::Cpu).await?;
    assert!(found.contains(&nodes[1].client.peer_id), "found {found:?}");
    // Data owners are found by their data sets' schema.
    let schema = protocol::Hash32::of(b"wine schema");
    let key = protocol::DataOffer::dht_key(&schema);
    nodes[2].client.start_providing_key(key.clone()).await?;
    let owners = late.client.get_providers_key(key).await?;
    assert_eq!(owners, vec![nodes[2].client.peer_id]);
    let other = protocol::DataOffer::dht_key(&protocol::Hash32::of(b"another schema"));
    assert!(late.client.get_providers_key(other).await?.is_empty());
    Ok(())
}

/// This process's resident set, from /proc (0 where there is none).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// 100 peers come and go, one at a time: a full node's maps (its connections,
/// the core's peers) return to their size each time. The resident set is
/// printed at 10 and at 100 cycles (run with --nocapture to see it); it is a
/// figure, not an assertion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_forgets_peers_that_leave_over_100_cycles() -> anyhow::Result<()> {
    logs();
    let tmp = tempfile::tempdir()?;
    let dir = peer::config::DataDir::init(&tmp.path().join("hub"))?;
    let g = genesis("churn", &[], &[dir.identity.account()]);
    let network = g.network();
    let hub = peer::node::start(dir, node_opts(&g, &[])).await?;
    let hub_addr = hub.dial_addr().await?;
    let ctl = peer::control::ControlClient::from_data_dir(&tmp.path().join("hub"))?;
    let base = ctl.status().await?;
    assert_eq!((base.connected_peers, base.peers.len()), (0, 0));
    let mut rss10 = 0;
    for i in 0..100u64 {
        let visitor = start_node(10_000 + i, network, vec![hub_addr.clone()]).await?;
        let id = visitor.client.peer_id.to_string();
        wait_for("the visitor to connect", async {
            loop {
                let s = ctl.status().await?;
                if s.peers.iter().any(|p| p.peer == id) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await?;
        drop(visitor);
        wait_for("the visitor to be forgotten", async {
            loop {
                let s = ctl.status().await?;
                if s.connected_peers == 0 && s.peers.is_empty() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await?;
        if i == 9 {
            rss10 = rss_kib();
        }
    }
    let rss100 = rss_kib();
    println!(
        "churn: RSS {:.1} MiB after 10 cycles, {:.1} MiB after 100",
        rss10 as f64 / 1024.0,
        rss100 as f64 / 1024.0
    );
    hub.shutdown().await?;
    Ok(())
}
