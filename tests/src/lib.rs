//! # tests — cross-crate integration tests
//!
//! Real swarms of `cloudchain` nodes on 127.0.0.1 (libp2p, iroh), driven through
//! the same code the binary runs. Helpers here start nodes and wait for events
//! with bounded timeouts; the tests live in `tests/`.

use std::time::Duration;

use anyhow::Context;
use crdt_ledger::GenesisEntry;
use libp2p::Multiaddr;
use peer::config::DataDir;
use peer::control::{ControlClient, JobRequest, JobView};
use peer::net::{self, BasicValidator, Client, NetEvent, NetOptions};
use peer::node::{self, RunOptions, RunningNode, Timing};
use protocol::DurationMs;
use protocol::{Identity, NetworkId};
use tokio::sync::mpsc;

/// Capture the nodes' logs in the test's output (shown when a test fails):
/// `RUST_LOG` if set, else the node's and the core's info lines. Call it first
/// in a test; later calls do nothing.
pub fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,peer=info,node_core=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A genesis for a test network: `funded` accounts hold 10 000 tokens, `staked`
/// ones 100 tokens and a stake of 1 000 (the committee); epochs of 2 s. Nobody
/// is bonded: providers bond from their balance when they start, requesters at
/// their first job (whose escrow providers run once it is final).
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
        vec![],
    )
    .expect("a test genesis is valid")
}

/// An outside program a test drives (sendme, promtool, chromium): `$env` if
/// set, else the first of `names` on PATH. Without it the test says so and
/// passes, unless `CLOUDCHAIN_REQUIRE_TOOLS` is set (as `.ci/run` does, after
/// installing them), where a missing tool fails the test.
pub fn tool(env: &str, names: &[&str]) -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(p.into());
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .flat_map(|d| names.iter().map(move |n| d.join(n)))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        missing(env, &format!("none of {names:?} on PATH"));
    }
    found
}

/// An outside program at a known place rather than on PATH (a virtual
/// environment's Python): `$env` if set, else `path` if it exists. Without
/// it, as [`tool`]: the test says so and passes, unless
/// `CLOUDCHAIN_REQUIRE_TOOLS` is set.
pub fn tool_at(env: &str, path: &std::path::Path) -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(p.into());
    }
    if path.is_file() {
        return Some(path.to_path_buf());
    }
    missing(env, &format!("no {}", path.display()));
    None
}

fn missing(env: &str, what: &str) {
    assert!(
        std::env::var_os("CLOUDCHAIN_REQUIRE_TOOLS").is_none(),
        "{what} (or ${env}), and CLOUDCHAIN_REQUIRE_TOOLS is set"
    );
    eprintln!("skipped: {what} (set {env} to point at one)");
}

/// The workspace's target directory: `$CARGO_TARGET_DIR` (relative to the
/// workspace root when relative), else `target` in the workspace root.
pub fn target_dir() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace root")
        .to_path_buf();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => root.join(t),
        None => root.join("target"),
    }
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

/// Loopback options with short market timeouts for tests.
pub fn node_opts(g: &GenesisEntry, boot: &[Multiaddr]) -> RunOptions {
    let mut o = RunOptions::loopback(g.clone(), boot.to_vec());
    o.timing = Timing {
        grace: DurationMs::secs(2),
        dispute_window: DurationMs::secs(1),
        probe_every: DurationMs::secs(1),
        offer_ttl: DurationMs::secs(60),
        deadline_slack: DurationMs::secs(1),
        ..Timing::default()
    };
    o
}

/// Wait, up to `bound`, for the job to satisfy `pred`. Bounds are generous: a
/// job's own deadline and grace, plus a loaded machine.
pub async fn wait_job(
    c: &ControlClient,
    id: &str,
    bound: Duration,
    pred: impl Fn(&JobView) -> bool,
) -> JobView {
    let wait = async {
        loop {
            let v = c.job(id).await?;
            if pred(&v) {
                return anyhow::Ok(v);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    match tokio::time::timeout(bound, wait).await {
        Ok(v) => v.expect("the job view"),
        Err(_) => panic!(
            "the job did not reach the state awaited in {bound:?}: {:#?}",
            c.job(id).await
        ),
    }
}

/// A swarm on loopback: nodes 0..3 the committee, then `providers` providers
/// (CPU backend), then `requesters` requesters; each node gets
/// `setup(&mut RunOptions)` before it starts (its roles already set). Providers and requesters are
/// funded unless `fund_requesters` is false. Returns the nodes, their accounts
/// and the genesis.
pub async fn swarm(
    tmp: &std::path::Path,
    name: &str,
    providers: usize,
    requesters: usize,
    fund_requesters: bool,
    setup: impl Fn(&mut RunOptions),
) -> anyhow::Result<(
    Vec<Option<RunningNode>>,
    Vec<protocol::AccountId>,
    GenesisEntry,
)> {
    logs();
    let n = 3 + providers + requesters;
    let dirs: Vec<DataDir> = (0..n)
        .map(|i| DataDir::init(&tmp.join(format!("n{i}"))))
        .collect::<anyhow::Result<_>>()?;
    let acc: Vec<_> = dirs.iter().map(|d| d.identity.account()).collect();
    let funded = if fund_requesters {
        &acc[3..]
    } else {
        &acc[3..3 + providers]
    };
    let g = genesis(name, funded, &acc[0..3]);
    let mut nodes: Vec<Option<RunningNode>> = Vec::new();
    let mut boot = Vec::new();
    for (i, mut d) in dirs.into_iter().enumerate() {
        let mut o = node_opts(&g, &boot);
        o.oracle = i < 3;
        o.provider = (3..3 + providers).contains(&i);
        setup(&mut o);
        d.config.provider.backend = "cpu".into();
        let n = node::start(d, o).await?;
        if i == 0 {
            boot.push(n.dial_addr().await?);
        }
        nodes.push(Some(n));
    }
    Ok((nodes, acc, g))
}

/// `setup` for the providers of a [`swarm`] only.
pub fn providers(setup: impl Fn(&mut RunOptions)) -> impl Fn(&mut RunOptions) {
    move |o: &mut RunOptions| {
        if o.provider {
            setup(o);
        }
    }
}

/// The control client of the requester of a one-provider [`swarm`] (node 4),
/// once it sees the whole swarm and `offers` offers.
pub async fn requester(tmp: &std::path::Path, offers: usize) -> anyhow::Result<ControlClient> {
    let c = ControlClient::from_data_dir(&tmp.join("n4"))?;
    settled_in(&c, 4, offers).await?;
    Ok(c)
}

/// A small classifier trained on the wine data (written into `dir`) for
/// `epochs`, due in `deadline_secs`.
pub fn wine_job(
    dir: &std::path::Path,
    epochs: u32,
    deadline_secs: u64,
) -> anyhow::Result<JobRequest> {
    let data = dir.join("wine.safetensors");
    compute::datasets::write_builtin(compute::datasets::Builtin::WineQuality, &data)?;
    Ok(JobRequest {
        deadline_secs,
        ..JobRequest::train_mlp(data, epochs, 1)
    })
}

/// Shut down every node still up.
pub async fn stop(nodes: impl IntoIterator<Item = Option<RunningNode>>) -> anyhow::Result<()> {
    for n in nodes.into_iter().flatten() {
        n.shutdown().await?;
    }
    Ok(())
}

/// Wait until a node sees `peers` peers (and, for a requester that keeps a
/// book, `offers` offers), then one gossip heartbeat for the mesh.
pub async fn settled_in(c: &ControlClient, peers: usize, offers: usize) -> anyhow::Result<()> {
    wait_for("a full swarm", async {
        loop {
            if c.offers().await?.len() >= offers && c.status().await?.connected_peers >= peers {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1_500)).await; // gossip mesh heartbeat
    Ok(())
}

/// A plausible CPU offer by `id`, issued `now`, valid for `ttl`.
pub fn test_offer(
    id: &Identity,
    now: protocol::Timestamp,
    ttl: DurationMs,
    nonce: u64,
) -> protocol::Offer {
    use protocol::*;
    Offer {
        provider: id.account(),
        class: ResourceClass::Cpu,
        device: "test cpu".into(),
        speed_milli_cu_per_s: 90_000,
        memory_bytes: 1 << 30,
        bandwidth_bytes_per_s: 100 << 20,
        price: PricePerCu(1_000),
        sla: SlaTerms {
            deadline_slack: DurationMs::secs(30),
            availability: Bps(9_900),
            penalty: Bps(1_000),
            exact: true,
        },
        region: "local".into(),
        slots: 2,
        busy_slots: 0,
        holds: vec![],
        datasets: vec![],
        contact: vec![],
        issued_at: now,
        expires_at: now.plus(ttl),
        nonce,
    }
}
