//! The local control API: HTTP + JSON on a loopback address, guarded by a token.
//!
//! `cloudchain run` binds it (the `net.control` address, port 0 by default) and
//! writes two files into the data directory, both mode 0600: `control.addr` (the
//! bound address) and `control.token` (32 random bytes, hex). Every request must
//! carry `Authorization: Bearer <token>`; only a user who can read the data
//! directory can drive the node. The CLI reads both files and talks to the node;
//! scripts can do the same with any HTTP client.
//!
//! Routes (all JSON):
//! - `GET  /v1/status` — identity, addresses, peers
//! - `GET  /v1/offers` — fresh offers seen on the market topic
//! - `POST /v1/blobs` `{path}` — add a file to the blob store: `{hash, size, ticket}`
//! - `POST /v1/blobs/get` `{source, out}` — fetch a blob by hash or ticket and
//!   write it to `out`: `{hash, bytes_fetched}`
//! - `POST /v1/jobs` [`JobRequest`] — submit a job: its [`JobView`]
//! - `GET  /v1/jobs`, `GET /v1/jobs/{id}` — the node's jobs and what happened to them
//! - `GET  /v1/balance?account=ID` — an account's balance (this node's by default)
//! - `GET  /v1/ledger?tail=N` — the ledger's summary and its last `N` entries
//! - `POST /v1/transfer` `{to, amount}` — move micro-tokens: the entry written

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub const ADDR_FILE: &str = "control.addr";
pub const TOKEN_FILE: &str = "control.token";

/// A request from the control API to the node loop.
#[derive(Debug)]
pub enum ControlRequest {
    Status(oneshot::Sender<anyhow::Result<Status>>),
    /// A Prometheus scrape: the metrics as text.
    Metrics(oneshot::Sender<anyhow::Result<crate::metrics::Snapshot>>),
    Offers(oneshot::Sender<anyhow::Result<Vec<OfferView>>>),
    AddBlob {
        path: PathBuf,
        collection: bool,
        reply: oneshot::Sender<anyhow::Result<BlobAdded>>,
    },
    GetBlob {
        source: String,
        out: PathBuf,
        reply: oneshot::Sender<anyhow::Result<BlobFetched>>,
    },
    Submit {
        job: Box<JobRequest>,
        reply: oneshot::Sender<anyhow::Result<JobView>>,
    },
    Federate {
        request: Box<crate::node::federated::FedRequest>,
        reply: oneshot::Sender<anyhow::Result<crate::node::federated::FedView>>,
    },
    Federations(oneshot::Sender<anyhow::Result<Vec<crate::node::federated::FedView>>>),
    Federation {
        id: String,
        reply: oneshot::Sender<anyhow::Result<crate::node::federated::FedView>>,
    },
    Jobs(oneshot::Sender<anyhow::Result<Vec<JobView>>>),
    Job {
        id: String,
        reply: oneshot::Sender<anyhow::Result<JobView>>,
    },
    Balance {
        account: Option<String>,
        reply: oneshot::Sender<anyhow::Result<BalanceView>>,
    },
    Ledger {
        tail: usize,
        reply: oneshot::Sender<anyhow::Result<LedgerView>>,
    },
    Transfer {
        body: TransferBody,
        reply: oneshot::Sender<anyhow::Result<EntryView>>,
    },
    Earnings {
        account: Option<String>,
        reply: oneshot::Sender<anyhow::Result<EarningsView>>,
    },
    Committee(oneshot::Sender<anyhow::Result<CommitteeView>>),
}

/// Move tokens to another account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferBody {
    pub to: String,
    /// Micro-tokens.
    pub amount: u64,
}

/// A job to submit (what `cloudchain submit` makes of a JOB.toml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    pub kind: protocol::JobKind,
    /// The data set (safetensors with `x`, `y`), read by the node.
    pub dataset: PathBuf,
    /// The model (safetensors), for inference or a warm start.
    pub model: Option<PathBuf>,
    /// Highest price accepted, micro-tokens per compute unit.
    pub max_price: u64,
    /// Seconds from now until the result is due.
    pub deadline_secs: u64,
    /// Compute units, when the FLOP model's estimate should be overridden.
    pub estimated_cu: Option<f64>,
    pub sla: protocol::SlaRequirement,
    pub privacy: Option<protocol::PrivacyTarget>,
}

impl JobRequest {
    /// A small classifier (11→32→6 MLP) trained on a data set such as the UCI
    /// wine-quality data: the job the demo, the testbed and the tests run.
    pub fn train_mlp(dataset: PathBuf, epochs: u32, seed: u64) -> Self {
        JobRequest {
            kind: protocol::JobKind::Train {
                layers: vec![11, 32, 6],
                epochs,
                batch: 32,
                learning_rate: 0.05,
                dp: None,
                seed,
                task: Default::default(),
            },
            dataset,
            model: None,
            max_price: 10_000_000,
            deadline_secs: 300,
            estimated_cu: None,
            sla: protocol::SlaRequirement {
                min_availability: protocol::Bps(9_000),
                min_penalty: protocol::Bps(500),
            },
            privacy: None,
        }
    }
}

impl From<crate::jobfile::JobFile> for JobRequest {
    fn from(j: crate::jobfile::JobFile) -> Self {
        JobRequest {
            kind: j.kind,
            dataset: j.dataset,
            model: j.model,
            max_price: j.max_price,
            deadline_secs: j.deadline_minutes.saturating_mul(60),
            estimated_cu: j.estimated_cu,
            sla: j.sla,
            privacy: j.privacy,
        }
    }
}

/// One thing that happened to a job.
#[derive(PartialEq, Debug, Clone, Serialize, Deserialize)]
pub struct JobEvent {
    /// Seconds since the job was submitted.
    pub at_s: f64,
    pub what: String,
}

/// A job as its requester sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub kind: String,
    /// matching, proposed, running, delivered, failing, settled, expired, refused
    pub state: String,
    /// When it was submitted, ms since the Unix epoch.
    #[serde(default)]
    pub submitted_at_ms: u64,
    /// How it ended, or why it is failing: `ok`, `failed: wrong result
    /// (refunded)`, `refunded: not delivered`, `expired: …`, `refused: …`.
    pub outcome: Option<String>,
    /// Whether the job reached its end (settled, failed or expired).
    pub done: bool,
    /// Whether it ended well: settled with a correct, delivered result.
    pub ok: bool,
    pub provider: Option<String>,
    pub contract: Option<String>,
    pub price_micro_per_cu: Option<u64>,
    pub estimated_cu: f64,
    pub units_used: Option<f64>,
    /// Amounts in micro-tokens, each with its decimal token string beside it
    /// (`escrow_tokens`, …).
    pub escrow: Option<u64>,
    pub escrow_tokens: Option<String>,
    pub paid: Option<u64>,
    pub paid_tokens: Option<String>,
    pub refund: Option<u64>,
    pub refund_tokens: Option<String>,
    /// The provider's bond slashed for this job (a result the committee
    /// proved wrong); half of it came back to us.
    pub slashed: Option<u64>,
    pub slashed_tokens: Option<String>,
    pub verdict: Option<VerdictView>,
    pub result: Option<PathBuf>,
    pub metrics: Option<compute::Metrics>,
    pub events: Vec<JobEvent>,
    /// The provider's last progress report, while a training job runs.
    #[serde(default)]
    pub progress: Option<node_core::TrainProgress>,
}

/// The committee's certified verdict on a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictView {
    pub delivered: bool,
    pub result_ok: bool,
    pub sla_ok: bool,
    pub violations: u32,
}

impl std::fmt::Display for VerdictView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "delivered={} result_ok={} sla_ok={} violations={}",
            self.delivered, self.result_ok, self.sla_ok, self.violations
        )
    }
}

/// Micro-tokens as a decimal token string (`1.500000`).
pub fn token_string(micro: u64) -> String {
    protocol::Amount(micro).to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BalanceView {
    pub account: String,
    /// Micro-tokens, pending entries included (each amount has its decimal
    /// token string beside it: `balance_tokens`, …).
    pub balance: u64,
    pub balance_tokens: String,
    /// What the account may spend now (finalized, minus its own pending debits).
    pub spendable: u64,
    pub spendable_tokens: String,
    pub stake: u64,
    pub stake_tokens: String,
    /// Bonded (a provider's is slashed by a proven wrong result; a
    /// requester's backs its escrows before they are final).
    pub bond: u64,
    pub bond_tokens: String,
    pub finalized_epoch: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryView {
    pub author: String,
    pub seq: u64,
    pub kind: String,
    pub created_at_ms: u64,
    pub hash: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LedgerView {
    pub network: String,
    pub entries: usize,
    pub finalized_epoch: u64,
    pub invalid: usize,
    pub total_supply: u64,
    pub tail: Vec<EntryView>,
}

/// An account's earnings: what settlements paid it as a provider, what the
/// epoch mints gave it, its oracle fees, and what proven wrong results slashed
/// of its bond, as this replica holds them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EarningsView {
    pub account: String,
    /// Micro-tokens, each with its decimal token string beside it.
    pub paid: u64,
    pub paid_tokens: String,
    pub minted: u64,
    pub minted_tokens: String,
    pub fees: u64,
    pub fees_tokens: String,
    pub slashed: u64,
    pub slashed_tokens: String,
    /// paid + minted + fees − slashed, micro-tokens.
    pub net: i64,
    pub net_tokens: String,
    /// Each credit or slash, oldest first.
    pub history: Vec<EarningView>,
}

/// One credit (or slash) in an account's earnings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EarningView {
    /// When: the settlement entry's time, or the end of the minting epoch.
    pub at_ms: u64,
    pub epoch: Option<u64>,
    /// `paid`, `minted`, `fee` or `slashed`.
    pub kind: String,
    pub amount: u64,
    pub amount_tokens: String,
    pub contract: Option<String>,
    /// The net earnings after this one, micro-tokens.
    pub total: i64,
}

/// The committee, the epochs and finality.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitteeView {
    /// The epoch running now.
    pub epoch: u64,
    pub finalized_epoch: u64,
    /// Epochs that have ended but are not finalized yet.
    pub finality_lag: u64,
    pub epoch_length_s: f64,
    /// When the current epoch's checkpoint is due.
    pub epoch_ends_at_ms: u64,
    /// The committee that finalizes the next checkpoint, in draw order.
    pub committee: Vec<String>,
    /// Its round-0 proposer.
    pub leader: Option<String>,
    /// Whether this node sits on it.
    pub member: bool,
    pub backup: Vec<String>,
    /// The last final checkpoints, newest first.
    pub checkpoints: Vec<CheckpointView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointView {
    pub epoch: u64,
    pub round: u32,
    pub proposer: String,
    pub signatures: usize,
    /// Authors whose chains advanced in it.
    pub authors: usize,
    pub minted: u64,
    pub minted_tokens: String,
    /// When its epoch ended.
    pub at_ms: u64,
}

/// Signed micro-tokens as a decimal token string (`-1.500000`).
pub fn signed_token_string(micro: i64) -> String {
    let s = token_string(micro.unsigned_abs());
    if micro < 0 { format!("-{s}") } else { s }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub account: String,
    pub peer_id: String,
    pub endpoint_id: String,
    pub network: String,
    pub listen: Vec<String>,
    pub blob_addrs: Vec<String>,
    pub connected_peers: usize,
    /// Blob fetches in flight.
    pub transfers: Vec<crate::blobs::Transfer>,
    /// The last finished blob fetches, with the path each took.
    #[serde(default)]
    pub fetched: Vec<crate::blobs::Fetched>,
    /// Addresses confirmed reachable from outside (given, AutoNAT, UPnP).
    #[serde(default)]
    pub external: Vec<String>,
    /// Relays holding a slot for us (libp2p peer ids).
    #[serde(default)]
    pub relays: Vec<String>,
    /// Each connected peer and how: direct or relayed.
    #[serde(default)]
    pub peers: Vec<crate::net::PeerLink>,
    /// Relayed connections upgraded to direct ones by hole punching.
    #[serde(default)]
    pub hole_punches: u64,
    pub roles: Vec<String>,
    /// Where `/metrics` is served, if it is.
    #[serde(default)]
    pub metrics: Option<String>,
    pub ledger_entries: usize,
    pub finalized_epoch: u64,
    /// This account's balance, micro-tokens.
    pub balance: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OfferView {
    pub provider: String,
    pub class: String,
    pub device: String,
    pub speed_cu_per_s: f64,
    pub price_micro_per_cu: u64,
    pub free_slots: u16,
    pub region: String,
    pub expires_in_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobAdded {
    pub hash: String,
    pub size: u64,
    pub ticket: String,
    /// A collection (a directory, or a file added with --collection): its
    /// files, each with its size.
    #[serde(default)]
    pub files: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobFetched {
    pub hash: String,
    pub bytes_fetched: u64,
    pub out: PathBuf,
    /// For a collection: the files written under `out`, each with its size.
    #[serde(default)]
    pub files: Vec<(String, u64)>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct BalanceQuery {
    pub account: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct LedgerQuery {
    pub tail: Option<usize>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct AddBlobBody {
    pub path: PathBuf,
    /// Add as a collection (always so for a directory).
    #[serde(default)]
    pub collection: bool,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct GetBlobBody {
    pub source: String,
    pub out: PathBuf,
}

#[derive(Clone)]
struct AppState {
    token: String,
    tx: mpsc::Sender<ControlRequest>,
}

struct ApiError(StatusCode, String);

/// An error the CLI reports with a stable code (`--json` prints both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    pub code: &'static str,
    pub message: String,
}

impl CliError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}"))
    }
}

async fn ask<T>(
    st: &AppState,
    make: impl FnOnce(oneshot::Sender<anyhow::Result<T>>) -> ControlRequest,
) -> Result<Json<T>, ApiError> {
    let (tx, rx) = oneshot::channel();
    st.tx.send(make(tx)).await.map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is shutting down".into(),
        )
    })?;
    let res = rx.await.map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node dropped the request".into(),
        )
    })?;
    Ok(Json(res?))
}

async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.as_bytes(), st.token.as_bytes()));
    if !ok {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong control token".into(),
        )
        .into_response();
    }
    next.run(req).await
}

#[derive(Debug, Deserialize)]
struct DashboardQuery {
    token: Option<String>,
}

/// The cookie that lets a browser that opened the login link reload the page
/// (the page drops the token from its address). Only `/dashboard` reads it;
/// the API takes the token in its header alone, so no other site can make a
/// browser call the API with it.
const DASHBOARD_COOKIE: &str = "cloudchain-dashboard";

/// The dashboard page, for the holder of the token (in the login link's
/// query, or in the cookie that link sets).
async fn dashboard(
    State(st): State<AppState>,
    Query(q): Query<DashboardQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    let valid = |t: &str| constant_time_eq(t.as_bytes(), st.token.as_bytes());
    let from_cookie = headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .any(|(k, v)| k == DASHBOARD_COOKIE && valid(v));
    let from_link = q.token.as_deref().is_some_and(valid);
    let h = axum::http::header::HeaderName::from_static;
    let common = [
        (h("content-type"), "text/html; charset=utf-8".to_string()),
        (
            h("content-security-policy"),
            crate::dashboard::CSP.to_string(),
        ),
        (h("cache-control"), "no-store".to_string()),
        (h("referrer-policy"), "no-referrer".to_string()),
        (h("x-content-type-options"), "nosniff".to_string()),
    ];
    if !(from_cookie || from_link) {
        return (StatusCode::UNAUTHORIZED, common, crate::dashboard::REFUSED).into_response();
    }
    let cookie = format!(
        "{DASHBOARD_COOKIE}={}; Path=/dashboard; HttpOnly; SameSite=Strict",
        st.token
    );
    (
        StatusCode::OK,
        common,
        [(axum::http::header::SET_COOKIE, cookie)],
        crate::dashboard::page(),
    )
        .into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

type Reply<T> = oneshot::Sender<anyhow::Result<T>>;

/// `GET` a route that takes no input.
fn plain<T: Serialize + Send + 'static>(
    make: fn(Reply<T>) -> ControlRequest,
) -> MethodRouter<AppState> {
    get(move |State(st): State<AppState>| async move { ask(&st, make).await })
}

/// `POST` a route whose input is a JSON body.
fn with_json<B, T>(make: fn(B, Reply<T>) -> ControlRequest) -> MethodRouter<AppState>
where
    B: serde::de::DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
{
    post(
        move |State(st): State<AppState>, Json(b): Json<B>| async move {
            ask(&st, |reply| make(b, reply)).await
        },
    )
}

/// `GET` a route whose input is the query string.
fn with_query<Q, T>(make: fn(Q, Reply<T>) -> ControlRequest) -> MethodRouter<AppState>
where
    Q: serde::de::DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
{
    get(
        move |State(st): State<AppState>, Query(q): Query<Q>| async move {
            ask(&st, |reply| make(q, reply)).await
        },
    )
}

/// `GET` a route whose input is the last path segment.
fn with_path<T: Serialize + Send + 'static>(
    make: fn(String, Reply<T>) -> ControlRequest,
) -> MethodRouter<AppState> {
    get(
        move |State(st): State<AppState>, UrlPath(p): UrlPath<String>| async move {
            ask(&st, |reply| make(p, reply)).await
        },
    )
}

/// Bind the control API and write `control.addr` and `control.token`.
pub async fn serve(
    data_dir: &Path,
    bind: SocketAddr,
    tx: mpsc::Sender<ControlRequest>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    if !bind.ip().is_loopback() {
        bail!("the control API binds to loopback only, not {bind}");
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("OS random number generator: {e}"))?;
    let token = hex::encode(raw);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot bind the control API on {bind}"))?;
    let addr = listener.local_addr()?;
    write_private(&data_dir.join(TOKEN_FILE), &token)?;
    write_private(&data_dir.join(ADDR_FILE), addr.to_string())?;
    let st = AppState { token, tx };
    let app = Router::new()
        .route("/v1/status", plain(ControlRequest::Status))
        .route("/v1/offers", plain(ControlRequest::Offers))
        .route(
            "/v1/blobs",
            with_json(|b: AddBlobBody, reply| ControlRequest::AddBlob {
                path: b.path,
                collection: b.collection,
                reply,
            }),
        )
        .route(
            "/v1/blobs/get",
            with_json(|b: GetBlobBody, reply| ControlRequest::GetBlob {
                source: b.source,
                out: b.out,
                reply,
            }),
        )
        .route(
            "/v1/jobs",
            with_json(|job: JobRequest, reply| ControlRequest::Submit {
                job: Box::new(job),
                reply,
            })
            .merge(plain(ControlRequest::Jobs)),
        )
        .route(
            "/v1/jobs/{id}",
            with_path(|id, reply| ControlRequest::Job { id, reply }),
        )
        .route(
            "/v1/federations",
            with_json(|request: crate::node::federated::FedRequest, reply| {
                ControlRequest::Federate {
                    request: Box::new(request),
                    reply,
                }
            })
            .merge(plain(ControlRequest::Federations)),
        )
        .route(
            "/v1/federations/{id}",
            with_path(|id, reply| ControlRequest::Federation { id, reply }),
        )
        .route(
            "/v1/balance",
            with_query(|q: BalanceQuery, reply| ControlRequest::Balance {
                account: q.account,
                reply,
            }),
        )
        .route(
            "/v1/ledger",
            with_query(|q: LedgerQuery, reply| ControlRequest::Ledger {
                tail: q.tail.unwrap_or(20).min(10_000),
                reply,
            }),
        )
        .route(
            "/v1/earnings",
            with_query(|q: BalanceQuery, reply| ControlRequest::Earnings {
                account: q.account,
                reply,
            }),
        )
        .route("/v1/committee", plain(ControlRequest::Committee))
        .route(
            "/v1/transfer",
            with_json(|body: TransferBody, reply| ControlRequest::Transfer { body, reply }),
        )
        .layer(middleware::from_fn_with_state(st.clone(), auth))
        // The page checks the token itself (it comes in the query of the
        // login link, as a browser cannot set a header on a link).
        .route("/dashboard", get(dashboard))
        .with_state(st);
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(%e, "control API stopped");
        }
    });
    Ok((addr, handle))
}

/// Write a file only its owner can read, atomically (temporary file, fsync,
/// rename).
pub fn write_private(path: &Path, bytes: impl AsRef<[u8]>) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes.as_ref())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The CLI's side: finds the running node through the data directory.
#[derive(Debug, Clone)]
pub struct ControlClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ControlClient {
    pub fn from_data_dir(data_dir: &Path) -> anyhow::Result<Self> {
        let read = |name: &str| -> anyhow::Result<String> {
            let p = data_dir.join(name);
            std::fs::read_to_string(&p)
                .map(|s| s.trim().to_string())
                .with_context(|| {
                    format!(
                        "no running node found ({} is missing); start one with `cloudchain run --data-dir {}`",
                        p.display(),
                        data_dir.display()
                    )
                })
        };
        let addr: SocketAddr = read(ADDR_FILE)?
            .parse()
            .context("control.addr does not hold an address")?;
        // reqwest insists on a TLS provider even for plain HTTP on loopback.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(ControlClient {
            base: format!("http://{addr}"),
            token: read(TOKEN_FILE)?,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .context("HTTP client")?,
        })
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let resp = req.bearer_auth(&self.token).send().await.with_context(|| {
            format!(
                "cannot reach the node at {}; is `cloudchain run` still running?",
                self.base
            )
        })?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|b| b["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| {
                    let t: String = text.trim().chars().take(500).collect();
                    if t.is_empty() {
                        "the node gave no reason".to_string()
                    } else {
                        t
                    }
                });
            let code = match status.as_u16() {
                400 | 422 => "invalid_request",
                401 | 403 => "unauthorized",
                404 => "not_found",
                503 => "unavailable",
                _ => "node_error",
            };
            return Err(CliError::new(code, msg).into());
        }
        resp.json()
            .await
            .context("the node's answer is not the expected JSON")
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post<T: serde::de::DeserializeOwned, B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn status(&self) -> anyhow::Result<Status> {
        self.get("/v1/status").await
    }

    pub async fn offers(&self) -> anyhow::Result<Vec<OfferView>> {
        self.get("/v1/offers").await
    }

    pub async fn add_blob(&self, path: &Path, collection: bool) -> anyhow::Result<BlobAdded> {
        let path = std::path::absolute(path)?;
        self.post("/v1/blobs", &AddBlobBody { path, collection })
            .await
    }

    pub async fn get_blob(&self, source: &str, out: &Path) -> anyhow::Result<BlobFetched> {
        let out = std::path::absolute(out)?;
        let body = GetBlobBody {
            source: source.to_string(),
            out,
        };
        self.post("/v1/blobs/get", &body).await
    }

    pub async fn submit(&self, job: &JobRequest) -> anyhow::Result<JobView> {
        let mut job = job.clone();
        job.dataset = std::path::absolute(&job.dataset)?;
        job.model = job.model.as_deref().map(std::path::absolute).transpose()?;
        self.post("/v1/jobs", &job).await
    }

    /// Start a federated job (see [`crate::node::federated`]).
    pub async fn federate(
        &self,
        request: &crate::node::federated::FedRequest,
    ) -> anyhow::Result<crate::node::federated::FedView> {
        let mut request = request.clone();
        request.like = request
            .like
            .as_deref()
            .map(std::path::absolute)
            .transpose()?;
        self.post("/v1/federations", &request).await
    }

    pub async fn federations(&self) -> anyhow::Result<Vec<crate::node::federated::FedView>> {
        self.get("/v1/federations").await
    }

    pub async fn federation(&self, id: &str) -> anyhow::Result<crate::node::federated::FedView> {
        self.get(&format!("/v1/federations/{id}")).await
    }

    pub async fn jobs(&self) -> anyhow::Result<Vec<JobView>> {
        self.get("/v1/jobs").await
    }

    pub async fn job(&self, id: &str) -> anyhow::Result<JobView> {
        self.get(&format!("/v1/jobs/{id}")).await
    }

    pub async fn balance(&self, account: Option<&str>) -> anyhow::Result<BalanceView> {
        match account {
            Some(a) => self.get(&format!("/v1/balance?account={a}")).await,
            None => self.get("/v1/balance").await,
        }
    }

    pub async fn ledger(&self, tail: usize) -> anyhow::Result<LedgerView> {
        self.get(&format!("/v1/ledger?tail={tail}")).await
    }

    /// Poll a job until it is done, calling `progress` on each change of state.
    pub async fn wait_job(
        &self,
        id: &str,
        timeout: std::time::Duration,
        mut progress: impl FnMut(&JobView),
    ) -> anyhow::Result<JobView> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = (0usize, None);
        loop {
            let v = self.job(id).await?;
            let now = (v.events.len(), v.progress.map(|p| p.step));
            if now != seen {
                seen = now;
                progress(&v);
            }
            if v.done {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "job {id} is still {} after {timeout:?}; see `cloudchain job {id}`",
                    v.state
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// The dashboard's login link (it carries the token: keep it private).
    pub fn dashboard_url(&self) -> String {
        format!("{}/dashboard?token={}", self.base, self.token)
    }

    pub async fn earnings(&self, account: Option<&str>) -> anyhow::Result<EarningsView> {
        match account {
            Some(a) => self.get(&format!("/v1/earnings?account={a}")).await,
            None => self.get("/v1/earnings").await,
        }
    }

    pub async fn committee(&self) -> anyhow::Result<CommitteeView> {
        self.get("/v1/committee").await
    }

    pub async fn transfer(&self, to: &str, amount: u64) -> anyhow::Result<EntryView> {
        let body = TransferBody {
            to: to.to_string(),
            amount,
        };
        self.post("/v1/transfer", &body).await
    }
}
