//! `/metrics` in the Prometheus text format (`prometheus-client`).
//!
//! Two sources share one registry:
//! - libp2p's own metrics (`libp2p-metrics`: swarm, identify, kad, gossipsub,
//!   ping, relay, DCUtR), recorded by the network event loop as events happen;
//! - ours, under `cloudchain_`: read from the node when a scrape arrives
//!   ([`Snapshot`]), so they are never stale and cost nothing between scrapes.
//!
//! The endpoint is plain HTTP on its own address (`net.metrics`, loopback by
//! default, `--metrics`), without the control token: it tells what the node
//! does, not what it holds. Its bound address goes to `metrics.addr` in the
//! data directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU64;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};
use tokio::sync::{mpsc, oneshot};

use crate::control::ControlRequest;

/// Where the bound metrics address is written.
pub const ADDR_FILE: &str = "metrics.addr";

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// What the node reports at a scrape.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// This node's jobs (as requester) by state.
    pub jobs: BTreeMap<String, i64>,
    pub ledger_entries: i64,
    pub epoch: i64,
    pub finalized_epoch: i64,
    /// Connected peers by how: "direct" or "relayed".
    pub peers: BTreeMap<&'static str, i64>,
    pub hole_punches: i64,
    pub relay_slots: i64,
    /// Tokens (not micro-tokens).
    pub balance: f64,
    pub stake: f64,
    pub bond: f64,
    /// Whether this node sits on the current committee.
    pub committee_member: bool,
    /// Bytes of the last finished blob fetches, by path ("direct"/"relayed").
    pub recent_fetch_bytes: BTreeMap<String, i64>,
}

/// The registry and our gauges.
pub struct NodeMetrics {
    registry: Registry,
    jobs: Family<Labels, Gauge>,
    ledger_entries: Gauge,
    epoch: Gauge,
    finalized_epoch: Gauge,
    finality_lag: Gauge,
    peers: Family<Labels, Gauge>,
    hole_punches: Gauge,
    relay_slots: Gauge,
    balance: FloatGauge,
    stake: FloatGauge,
    bond: FloatGauge,
    committee_member: Gauge,
    recent_fetch_bytes: Family<Labels, Gauge>,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeMetrics")
    }
}

impl NodeMetrics {
    /// A registry with libp2p's metrics (returned, for the event loop to
    /// record into) and ours.
    pub fn new() -> (NodeMetrics, libp2p::metrics::Metrics) {
        let mut registry = Registry::default();
        let p2p = libp2p::metrics::Metrics::new(&mut registry);
        let r = registry.sub_registry_with_prefix("cloudchain");
        // Each metric once: its name and help where it is made.
        let jobs = metric(r, "jobs", "This node's jobs by state");
        let ledger_entries = metric(r, "ledger_entries", "Entries in the ledger replica");
        let epoch = metric(r, "epoch", "The ledger's current epoch");
        let finalized_epoch = metric(r, "finalized_epoch", "The last finalized epoch");
        let finality_lag = metric(
            r,
            "finality_lag_epochs",
            "Epochs between the current one and the last finalized",
        );
        let peers = metric(r, "peers", "Connected peers by connection type");
        let hole_punches = metric(
            r,
            "hole_punches",
            "Relayed connections upgraded to direct ones (DCUtR) since start",
        );
        let relay_slots = metric(r, "relay_slots", "Relays holding a slot for this node");
        let balance = metric(r, "balance_tokens", "This account's balance");
        let stake = metric(r, "stake_tokens", "This account's stake");
        let bond = metric(r, "bond_tokens", "This account's bond");
        let committee_member = metric(
            r,
            "committee_member",
            "1 if this node sits on the current committee",
        );
        let recent_fetch_bytes = metric(
            r,
            "recent_fetch_bytes",
            "Bytes of the last finished blob fetches, by path",
        );
        let m = NodeMetrics {
            registry,
            jobs,
            ledger_entries,
            epoch,
            finalized_epoch,
            finality_lag,
            peers,
            hole_punches,
            relay_slots,
            balance,
            stake,
            bond,
            committee_member,
            recent_fetch_bytes,
        };
        (m, p2p)
    }

    /// Set our gauges from `s` and render everything as Prometheus text.
    pub fn render(&self, s: &Snapshot) -> anyhow::Result<String> {
        set_by_label(
            &self.jobs,
            "state",
            s.jobs.iter().map(|(k, n)| (k.as_str(), *n)),
        );
        self.ledger_entries.set(s.ledger_entries);
        self.epoch.set(s.epoch);
        self.finalized_epoch.set(s.finalized_epoch);
        self.finality_lag.set((s.epoch - s.finalized_epoch).max(0));
        // Both kinds always, at 0 when none: a scrape shows what is absent.
        let peers = ["direct", "relayed"].map(|k| (k, s.peers.get(k).copied().unwrap_or(0)));
        set_by_label(&self.peers, "connection", peers);
        self.hole_punches.set(s.hole_punches);
        self.relay_slots.set(s.relay_slots);
        self.balance.set(s.balance);
        self.stake.set(s.stake);
        self.bond.set(s.bond);
        self.committee_member.set(i64::from(s.committee_member));
        let fetched = s.recent_fetch_bytes.iter().map(|(k, n)| (k.as_str(), *n));
        set_by_label(&self.recent_fetch_bytes, "path", fetched);
        let mut out = String::new();
        encode(&mut out, &self.registry).context("encoding the metrics")?;
        Ok(out)
    }
}

/// A new metric, registered under `name` with its `help`.
fn metric<M: Metric + Clone + Default>(r: &mut Registry, name: &str, help: &str) -> M {
    let m = M::default();
    r.register(name, help, m.clone());
    m
}

/// Replace a one-label family's series with `values` (a label value and its
/// number each), so that series gone since the last scrape disappear.
fn set_by_label<'a>(
    family: &Family<Labels, Gauge>,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, i64)>,
) {
    family.clear();
    for (value, n) in values {
        family
            .get_or_create(&vec![(label.to_string(), value.to_string())])
            .set(n);
    }
}

/// Serve `GET /metrics` on `bind` (loopback unless the operator says
/// otherwise), asking the node for each scrape; writes `metrics.addr`.
pub async fn serve(
    data_dir: &Path,
    bind: SocketAddr,
    tx: mpsc::Sender<ControlRequest>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot bind the metrics endpoint on {bind}"))?;
    let addr = listener.local_addr()?;
    std::fs::write(data_dir.join(ADDR_FILE), addr.to_string())
        .with_context(|| format!("cannot write {}", data_dir.join(ADDR_FILE).display()))?;
    let app = Router::new().route("/metrics", get(scrape)).with_state(tx);
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(%e, "metrics endpoint stopped");
        }
    });
    Ok((addr, handle))
}

async fn scrape(State(tx): State<mpsc::Sender<ControlRequest>>) -> impl IntoResponse {
    let (reply, rx) = oneshot::channel();
    let text = match tx.send(ControlRequest::Metrics(reply)).await {
        Ok(()) => rx.await.ok(),
        Err(_) => None,
    };
    match text {
        Some(Ok(body)) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Some(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down").into_response(),
    }
}
