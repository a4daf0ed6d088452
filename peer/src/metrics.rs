//! `/metrics` in the Prometheus text format (`prometheus-client`).
//!
//! Two sources share one registry:
//! - libp2p's own metrics (`libp2p-metrics`: swarm, identify, kad, gossipsub,
//!   ping, relay, DCUtR), recorded by the network event loop as events happen;
//! - ours, under `cloudchain_`: read from the node when a scrape arrives
//!   ([`Snapshot`]), so they are never stale and cost nothing between scrapes.
//!   Totals the node keeps (earnings, verdicts, blob bytes, jobs ended) are
//!   counters: each scrape advances them to the node's figure, so they only
//!   grow, and start again (as Prometheus expects) when the process does.
//!
//! The endpoint is plain HTTP on its own address (`net.metrics`, loopback by
//! default, `--metrics`), without the control token: it tells what the node
//! does, not what it holds. Its bound address goes to `metrics.addr` in the
//! data directory.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
use tokio::sync::{mpsc, oneshot};

use crate::control::ControlRequest;

/// Where the bound metrics address is written.
pub const ADDR_FILE: &str = "metrics.addr";

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

/// What the node reports at a scrape.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// This node's jobs (as requester) by state.
    pub jobs: BTreeMap<String, i64>,
    /// Its ended jobs by outcome: ok, failed, expired, refused.
    pub jobs_ended: BTreeMap<&'static str, u64>,
    /// Each ended job's id and the seconds from its submission to its end.
    pub ended_after: Vec<(String, f64)>,
    pub ledger_entries: i64,
    pub ledger_invalid: i64,
    /// The epoch running now, and the last finalized one.
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
    /// Verdicts this node signed as a committee member, and its re-executions.
    pub verdicts_signed: u64,
    pub checks: u64,
    pub wrong_results_found: u64,
    /// This account's earnings in tokens by kind: paid, minted, fees, slashed.
    pub earned: BTreeMap<&'static str, f64>,
    /// Blob payload bytes received and sent since start.
    pub blob_bytes_in: u64,
    pub blob_bytes_out: u64,
    /// Bytes of the last finished blob fetches, by path ("direct"/"relayed").
    pub recent_fetch_bytes: BTreeMap<String, i64>,
}

/// The registry and our gauges.
pub struct NodeMetrics {
    registry: Registry,
    jobs: Family<Labels, Gauge>,
    jobs_ended: Family<Labels, Counter>,
    settle_seconds: Histogram,
    /// Jobs already in `settle_seconds`.
    observed: HashSet<String>,
    ledger_entries: Family<Labels, Gauge>,
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
    verdicts_signed: Counter,
    checks: Counter,
    wrong_results_found: Counter,
    earned: Family<Labels, FloatCounter>,
    blob_bytes: Family<Labels, Counter>,
    blob_store_bytes: Gauge,
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
        let jobs_ended = metric(r, "jobs_ended", "This node's jobs that ended, by outcome");
        // 1 s to about 9 h, doubling.
        let settle_seconds = Histogram::new(exponential_buckets(1.0, 2.0, 16));
        r.register_with_unit(
            "job_submit_to_end",
            "From a job's submission to its settlement (or expiry)",
            prometheus_client::registry::Unit::Seconds,
            settle_seconds.clone(),
        );
        let ledger_entries = metric(
            r,
            "ledger_entries",
            "Entries in the ledger replica, valid and invalid",
        );
        let epoch = metric(r, "epoch", "The epoch running now");
        let finalized_epoch = metric(r, "finalized_epoch", "The last finalized epoch");
        let finality_lag = metric(r, "finality_lag_epochs", "Ended epochs not yet finalized");
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
        let verdicts_signed = metric(
            r,
            "verdicts_signed",
            "Verdicts signed as a committee member",
        );
        let checks = metric(
            r,
            "checks",
            "Delivered jobs re-executed as a committee member",
        );
        let wrong_results_found = metric(
            r,
            "wrong_results_found",
            "Re-executions that found a provider's result wrong",
        );
        let earned = metric(
            r,
            "earned_tokens",
            "This account's earnings by kind: paid (as provider), minted, fees (as oracle), slashed (of its bond)",
        );
        let blob_bytes = metric(r, "blob_bytes", "Blob payload bytes by direction (in, out)");
        let blob_store_bytes = metric(r, "blob_store_bytes", "Size of the blob store on disk");
        let recent_fetch_bytes = metric(
            r,
            "recent_fetch_bytes",
            "Bytes of the last finished blob fetches, by path",
        );
        let m = NodeMetrics {
            registry,
            jobs,
            jobs_ended,
            settle_seconds,
            observed: HashSet::new(),
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
            verdicts_signed,
            checks,
            wrong_results_found,
            earned,
            blob_bytes,
            blob_store_bytes,
            recent_fetch_bytes,
        };
        (m, p2p)
    }

    /// Set our metrics from `s` (and the blob store's size) and render
    /// everything as Prometheus text.
    pub fn render(&mut self, s: &Snapshot, store_bytes: u64) -> anyhow::Result<String> {
        set_by_label(
            &self.jobs,
            "state",
            s.jobs.iter().map(|(k, n)| (k.as_str(), *n)),
        );
        let outcomes = ["ok", "failed", "expired", "refused"];
        advance_by_label(&self.jobs_ended, "outcome", &outcomes, &s.jobs_ended);
        for (id, secs) in &s.ended_after {
            if self.observed.insert(id.clone()) {
                self.settle_seconds.observe(*secs);
            }
        }
        let valid = s.ledger_entries - s.ledger_invalid;
        let entries = [("valid", valid), ("invalid", s.ledger_invalid)];
        set_by_label(&self.ledger_entries, "state", entries);
        self.epoch.set(s.epoch);
        self.finalized_epoch.set(s.finalized_epoch);
        // The running epoch has not ended: it is not lagging.
        self.finality_lag
            .set((s.epoch - 1 - s.finalized_epoch).max(0));
        // Both kinds always, at 0 when none: a scrape shows what is absent.
        let peers = ["direct", "relayed"].map(|k| (k, s.peers.get(k).copied().unwrap_or(0)));
        set_by_label(&self.peers, "connection", peers);
        self.hole_punches.set(s.hole_punches);
        self.relay_slots.set(s.relay_slots);
        self.balance.set(s.balance);
        self.stake.set(s.stake);
        self.bond.set(s.bond);
        self.committee_member.set(i64::from(s.committee_member));
        advance(&self.verdicts_signed, s.verdicts_signed);
        advance(&self.checks, s.checks);
        advance(&self.wrong_results_found, s.wrong_results_found);
        let kinds = ["paid", "minted", "fees", "slashed"];
        advance_by_label(&self.earned, "kind", &kinds, &s.earned);
        let blob_bytes = BTreeMap::from([("in", s.blob_bytes_in), ("out", s.blob_bytes_out)]);
        advance_by_label(&self.blob_bytes, "direction", &["in", "out"], &blob_bytes);
        self.blob_store_bytes
            .set(i64::try_from(store_bytes).unwrap_or(i64::MAX));
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

fn label(name: &str, value: &str) -> Labels {
    vec![(name.to_string(), value.to_string())]
}

/// Move a counter up to `to` (a total the node keeps); never down.
fn advance<N, A>(c: &Counter<N, A>, to: N)
where
    N: PartialOrd + std::ops::Sub<Output = N> + Copy,
    A: prometheus_client::metrics::counter::Atomic<N> + Default,
{
    let now = c.get();
    if to > now {
        c.inc_by(to - now);
    }
}

/// Advance a one-label family of counters to the node's `totals`, one series
/// per value in `values`: a value without a total stays (or starts) at 0, so
/// a scrape shows what is absent.
fn advance_by_label<N, A>(
    family: &Family<Labels, Counter<N, A>>,
    label: &str,
    values: &[&str],
    totals: &BTreeMap<&'static str, N>,
) where
    N: PartialOrd + std::ops::Sub<Output = N> + Copy + Default,
    A: prometheus_client::metrics::counter::Atomic<N> + Default,
{
    for value in values {
        let to = totals.get(value).copied().unwrap_or_default();
        advance(&family.get_or_create(&self::label(label, value)), to);
    }
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
        family.get_or_create(&self::label(label, value)).set(n);
    }
}

/// What a scrape needs: the node to ask, our metrics, and the blob store.
struct Scrape {
    tx: mpsc::Sender<ControlRequest>,
    metrics: Mutex<NodeMetrics>,
    blob_dir: PathBuf,
}

/// Serve `GET /metrics` on `bind` (loopback unless the operator says
/// otherwise), asking the node for each scrape; writes `metrics.addr`.
pub async fn serve(
    data_dir: &Path,
    bind: SocketAddr,
    tx: mpsc::Sender<ControlRequest>,
    metrics: NodeMetrics,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot bind the metrics endpoint on {bind}"))?;
    let addr = listener.local_addr()?;
    std::fs::write(data_dir.join(ADDR_FILE), addr.to_string())
        .with_context(|| format!("cannot write {}", data_dir.join(ADDR_FILE).display()))?;
    let state = Arc::new(Scrape {
        tx,
        metrics: Mutex::new(metrics),
        blob_dir: data_dir.join("blobs"),
    });
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(state);
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(%e, "metrics endpoint stopped");
        }
    });
    Ok((addr, handle))
}

/// Bytes of the files under `dir`, recursively (0 if it cannot be read).
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

async fn scrape(State(st): State<Arc<Scrape>>) -> impl IntoResponse {
    let (reply, rx) = oneshot::channel();
    let snap = match st.tx.send(ControlRequest::Metrics(reply)).await {
        Ok(()) => rx.await.ok(),
        Err(_) => None,
    };
    let dir = st.blob_dir.clone();
    let store_bytes = tokio::task::spawn_blocking(move || dir_bytes(&dir))
        .await
        .unwrap_or(0);
    let text = snap.map(|s| {
        s.and_then(|s| {
            let mut m = st
                .metrics
                .lock()
                .map_err(|_| anyhow::anyhow!("the metrics lock is poisoned"))?;
            m.render(&s, store_bytes)
        })
    });
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
