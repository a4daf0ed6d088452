//! # tests — cross-crate integration tests
//!
//! Real swarms of `cloudchain` nodes on 127.0.0.1 (libp2p, iroh), driven through
//! the same code the binary runs. Helpers here start nodes and wait for events
//! with bounded timeouts; the tests live in `tests/`.

use std::time::Duration;

use anyhow::Context;
use libp2p::Multiaddr;
use peer::net::{self, BasicValidator, Client, NetEvent, NetOptions};
use protocol::{Identity, NetworkId};
use tokio::sync::mpsc;

/// A genesis for a test network: `funded` accounts hold 10 000 tokens, `staked`
/// ones 100 tokens and a stake of 1 000 (the committee); epochs of 2 s.
pub fn genesis(
    name: &str,
    funded: &[protocol::AccountId],
    staked: &[protocol::AccountId],
) -> crdt_ledger::GenesisEntry {
    let mut balances: Vec<_> = funded
        .iter()
        .map(|a| (*a, protocol::Amount::tokens(10_000)))
        .collect();
    balances.extend(staked.iter().map(|a| (*a, protocol::Amount::tokens(100))));
    let stakes = staked
        .iter()
        .map(|a| (*a, protocol::Amount::tokens(1_000)))
        .collect();
    let k = staked.len().max(1) as u16;
    peer::genesis::build(
        &Identity::from_seed(u64::MAX),
        name,
        peer::net::now(),
        peer::genesis::local_params(protocol::DurationMs::secs(2), k),
        balances,
        stakes,
    )
    .expect("a test genesis is valid")
}

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running network node: its identity, client and event stream.
#[derive(Debug)]
pub struct TestNode {
    pub identity: Identity,
    pub client: Client,
    pub events: mpsc::Receiver<NetEvent>,
    pub addr: Multiaddr,
}

/// Start a node on loopback, bootstrapping from `bootstrap`.
pub async fn start_node(
    seed: u64,
    network: NetworkId,
    bootstrap: Vec<Multiaddr>,
) -> anyhow::Result<TestNode> {
    let identity = Identity::from_seed(seed);
    let mut opts = NetOptions::loopback(network);
    opts.bootstrap = bootstrap;
    let (client, event_loop, events) = net::new(&identity, &opts, BasicValidator::new(network))?;
    tokio::spawn(event_loop.run());
    let addr = wait_for("a listen address", async {
        loop {
            if let Some(a) = client.listen_addrs().await?.into_iter().next() {
                return Ok(a);
            }
            tokio::task::yield_now().await;
        }
    })
    .await?;
    let addr = addr.with(libp2p::multiaddr::Protocol::P2p(client.peer_id));
    Ok(TestNode {
        identity,
        client,
        events,
        addr,
    })
}

/// Await `fut`, failing with a clear message after [`WAIT`].
pub async fn wait_for<T>(
    what: &str,
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(WAIT, fut)
        .await
        .with_context(|| format!("timed out after {WAIT:?} waiting for {what}"))?
}

/// Wait until `node`'s market mesh has at least `n` peers (meshes form on the
/// gossipsub heartbeat; there is no event for it, so this polls, bounded).
pub async fn wait_for_mesh(node: &TestNode, n: usize) -> anyhow::Result<()> {
    wait_for("the gossip mesh to form", async {
        loop {
            if node.client.mesh_peers().await?.len() >= n {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Next event matching `pick`, skipping others.
pub async fn next_event<T>(
    node: &mut TestNode,
    what: &str,
    mut pick: impl FnMut(NetEvent) -> Option<T>,
) -> anyhow::Result<T> {
    wait_for(what, async {
        loop {
            let e = node
                .events
                .recv()
                .await
                .context("the node's event stream ended")?;
            if let Some(t) = pick(e) {
                return Ok(t);
            }
        }
    })
    .await
}
