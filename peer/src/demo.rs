//! `cloudchain demo`: a whole market on loopback, in one process.
//!
//! Three providers, three oracles (the committee) and one requester, each a full
//! node with its own data directory, key, libp2p swarm, iroh endpoint, ledger and
//! control API, start from one genesis. The requester trains a classifier on the
//! UCI wine-quality data, then runs inference with the trained model; both jobs
//! are matched, escrowed, run on the compute backend, checked by the committee by
//! re-execution, settled in the ledger, and their results fetched and decrypted.
//! The demo drives the requester through its control API, as the CLI does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use protocol::{Amount, DurationMs, Identity, JobKind};

use crate::config::DataDir;
use crate::control::{ControlClient, JobRequest, JobView};
use crate::node::{self, RunOptions, RunningNode, Timing};

/// What a demo run is made of.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the nodes' data directories go (a temporary directory if `None`).
    pub dir: Option<PathBuf>,
    /// How many providers cheat (to watch the committee catch them), and how.
    pub cheaters: usize,
    pub cheat: crate::work::Cheat,
    /// Print the story as it happens.
    pub verbose: bool,
    /// Tell the federated story instead: three providers each hold a shard
    /// of the data, which never leaves them.
    pub federated: bool,
}

/// A node's holdings: role, account, then balance, stake and provider bond
/// in micro-tokens.
pub type Holding = (String, String, u64, u64, u64);

/// The outcome, for `--json` and for tests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    pub jobs: Vec<JobView>,
    /// The federated story's job, when it was told.
    pub federation: Option<crate::node::federated::FedView>,
    pub balances: Vec<Holding>,
    pub finalized_epoch: u64,
    pub phases: Vec<(String, f64)>,
    pub wall_s: f64,
    pub ok: bool,
}

/// Epochs are short so that a checkpoint finalizes the demo's settlements.
const EPOCH_SECS: u64 = 3;

pub const ROLES: [&str; 7] = [
    "oracle-1",
    "oracle-2",
    "oracle-3",
    "provider-1",
    "provider-2",
    "provider-3",
    "requester",
];

/// Seven nodes on loopback from one genesis: three oracles (the committee),
/// three providers (price floors 0.4, 0.55 and 0.7 tokens per CU), a requester
/// holding 10 000 tokens. Used by the demo and the network benchmarks.
#[derive(Debug)]
pub struct LocalSwarm {
    pub root: PathBuf,
    pub genesis: crdt_ledger::GenesisEntry,
    pub nodes: Vec<RunningNode>,
    /// Control clients, in the order of [`ROLES`].
    pub ctl: Vec<ControlClient>,
}

impl LocalSwarm {
    /// Start the nodes under `root` (reusing directories already there) and wait
    /// until the requester holds all three offers and knows every peer.
    pub async fn start(
        root: &Path,
        cheaters: usize,
        cheat: crate::work::Cheat,
        epoch_secs: u64,
    ) -> anyhow::Result<Self> {
        let mut dirs = Vec::new();
        for (i, role) in ROLES.iter().enumerate() {
            let path = root.join(role);
            let mut d = if path.join(crate::config::KEY_FILE).exists() {
                DataDir::open(&path)?
            } else {
                DataDir::init(&path)?
            };
            if role.starts_with("provider") {
                // Three price floors, so the market has a choice to make.
                d.config.provider.price_floor = [400_000, 550_000, 700_000][i - 3];
                d.config.provider.slots = 2;
                d.config.provider.backend = "auto".into();
            }
            dirs.push(d);
        }
        let ids: Vec<Identity> = dirs.iter().map(|d| d.identity.clone()).collect();
        let genesis_path = root.join(crate::genesis::GENESIS_FILE);
        let genesis = if genesis_path.exists() {
            crate::genesis::load(&genesis_path)?
        } else {
            let mut balances = Vec::new();
            let mut stakes = Vec::new();
            // The requester's bond backs its escrows before they are final,
            // so providers start at once.
            let mut bonds = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                let tokens = if i == 6 { 10_000 } else { 100 };
                balances.push((id.account(), Amount::tokens(tokens)));
                if i == 6 {
                    bonds.push((id.account(), Amount::tokens(1_000)));
                }
                if i < 3 {
                    stakes.push((id.account(), Amount::tokens(1_000)));
                }
            }
            let g = crate::genesis::build(
                &ids[6],
                "cloudchain-demo",
                crate::net::now(),
                crate::genesis::local_params(DurationMs::secs(epoch_secs), 3),
                balances,
                stakes,
                bonds,
            )?;
            crate::genesis::save(&genesis_path, &g)?;
            g
        };
        // The first oracle is everyone's bootstrap peer.
        let timing = Timing {
            grace: DurationMs::secs(20),
            dispute_window: DurationMs::secs(1),
            probe_every: DurationMs::secs(5),
            offer_ttl: DurationMs::secs(120),
            deadline_slack: DurationMs::secs(5),
            ..Timing::default()
        };
        let mut nodes: Vec<RunningNode> = Vec::new();
        let mut boot = Vec::new();
        for (i, d) in dirs.into_iter().enumerate() {
            let path = d.path.clone();
            let mut o = RunOptions::loopback(genesis.clone(), boot.clone());
            o.oracle = i < 3;
            o.provider = (3..6).contains(&i);
            if (3..3 + cheaters).contains(&i) {
                o.cheat = cheat;
            }
            o.timing = timing;
            let n = node::start(d, o)
                .await
                .with_context(|| format!("cannot start {}", path.display()))?;
            if i == 0 {
                boot.push(n.dial_addr().await?);
            }
            nodes.push(n);
        }
        let ctl: Vec<ControlClient> = ROLES
            .iter()
            .map(|r| ControlClient::from_data_dir(&root.join(r)))
            .collect::<anyhow::Result<_>>()?;
        let req = &ctl[6];
        wait(
            Duration::from_secs(30),
            "the three providers' offers",
            || async {
                let o = req.offers().await?;
                let s = req.status().await?;
                Ok((o.len() >= 3 && s.connected_peers >= 6).then_some(()))
            },
        )
        .await?;
        // Give gossipsub a heartbeat to graft the oracle topic's mesh.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        Ok(LocalSwarm {
            root: root.to_path_buf(),
            genesis,
            nodes,
            ctl,
        })
    }

    pub fn requester(&self) -> &ControlClient {
        &self.ctl[6]
    }

    pub async fn shutdown(self) -> anyhow::Result<()> {
        for n in self.nodes {
            n.shutdown().await?;
        }
        Ok(())
    }
}

/// The UCI wine-quality data standardized, its training rows split into `n`
/// shards (each a data set written under `dir`, saying it has the six
/// classes whichever rows it drew) and its test rows as one data set.
pub fn wine_shards(dir: &Path, n: usize) -> anyhow::Result<(Vec<PathBuf>, Vec<u8>)> {
    use compute::{PreprocessOp, run_preprocess, tensors};
    let be = compute::CpuBackend::new();
    let raw = compute::datasets::builtin(compute::datasets::Builtin::WineQuality)?;
    let std = run_preprocess(&be, PreprocessOp::Standardize, &raw)?;
    let split = PreprocessOp::Split {
        test_fraction: 0.2,
        seed: 1,
    };
    let split = run_preprocess(&be, split, &std.output)?;
    let st = tensors::parse(&split.output)?;
    let (rows, cols, x) = tensors::read_matrix(&st, "x")?;
    let y = tensors::read_labels(&st, "y")?;
    let per = rows.div_ceil(n.max(1));
    let mut files = Vec::new();
    for k in 0..n {
        let (a, b) = (k * per, ((k + 1) * per).min(rows));
        let bytes = tensors::Writer::new()
            .f32("x", &[b - a, cols], &x[a * cols..b * cols])
            .u32("y", &[b - a], &y[a..b])
            .meta("classes", "6")
            .meta("name", format!("winery-{}", k + 1))
            .to_bytes()?;
        let path = dir.join(format!("winery-{}.safetensors", k + 1));
        std::fs::write(&path, bytes)?;
        files.push(path);
    }
    let (tr, _, xt) = tensors::read_matrix(&st, "x_test")?;
    let yt = tensors::read_labels(&st, "y_test")?;
    let test = tensors::Writer::new()
        .f32("x", &[tr, cols], &xt)
        .u32("y", &[tr], &yt)
        .to_bytes()?;
    Ok((files, test))
}

/// A model's accuracy on a labelled data set.
pub fn accuracy(model: &[u8], data: &[u8]) -> anyhow::Result<f64> {
    let m = compute::mlp::Mlp::from_safetensors(model)?;
    let d = compute::mlp::Data::from_safetensors(data, "x", "y")?;
    let be = compute::CpuBackend::new();
    Ok(m.evaluate(&compute::mlp::Ops::new(&be), &d, 256)?.1)
}

/// The federated job of the demo (and the tests): three owners, five rounds
/// of two local epochs of DP-SGD (σ 1.2, clip 1) on an MLP 11→16→6, at most
/// `epsilon` of any owner's data; the owners' schema is `like`'s.
pub fn wine_federation(like: &Path, epsilon: f64) -> crate::node::federated::FedRequest {
    crate::node::federated::FedRequest {
        schema: None,
        like: Some(like.to_path_buf()),
        owners: 3,
        min_owners: 2,
        rounds: 5,
        layers: vec![11, 16, 6],
        local_epochs: 2,
        batch: 128,
        learning_rate: 0.5,
        dp: protocol::DpParams {
            clip_norm: 1.0,
            noise_multiplier: 1.2,
        },
        seed: 3,
        task: protocol::TrainTask::Classify,
        epsilon,
        delta: 1e-5,
        max_price: 10_000_000,
        round_secs: 120,
    }
}

/// The federated story: three wineries each offer their shard of the wine
/// data with a privacy budget; a requester's federated job trains across
/// them, round by round, without a row leaving its owner.
async fn run_federated(opts: &DemoOptions, root: &Path) -> anyhow::Result<DemoReport> {
    let started = Instant::now();
    let say = |s: String| {
        if opts.verbose {
            println!("{s}");
        }
    };
    std::fs::create_dir_all(root)?;
    let (files, test) = wine_shards(root, 3)?;
    for (k, f) in files.iter().enumerate() {
        let budget = crate::held::Budget {
            epsilon: 60.0,
            per_requester: 30.0,
            delta: 1e-5,
        };
        let h = crate::held::offer(&root.join(ROLES[3 + k]), f, budget)?;
        say(format!(
            "held      {} keeps {} ({} wines), offered with ε 60 in all, 30 per requester",
            ROLES[3 + k],
            h.name,
            h.offer.rows
        ));
    }
    let swarm = LocalSwarm::start(root, 0, crate::work::Cheat::None, EPOCH_SECS).await?;
    say(format!(
        "started   7 nodes on 127.0.0.1 in {:.1} s: 3 oracles, 3 data owners, a requester",
        started.elapsed().as_secs_f64()
    ));
    let req = swarm.requester();
    let fed = wine_federation(&files[0], 20.0);
    say(format!(
        "
federate  an MLP 11→16→6, {} rounds of {} local epochs of DP-SGD (σ {}, clip {}) at each owner",
        fed.rounds, fed.local_epochs, fed.dp.noise_multiplier, fed.dp.clip_norm
    ));
    let v = req.federate(&fed).await?;
    let mut shown = 0;
    let until = Instant::now() + Duration::from_secs(600);
    let done = loop {
        let v = req.federation(&v.id).await?;
        for e in &v.events[shown..] {
            say(format!("  {:>6.2} s  {}", e.at_s, e.what));
        }
        shown = v.events.len();
        if v.done {
            break v;
        }
        if Instant::now() > until {
            bail!("timed out waiting for the federated job to end");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The ledger records each owner's ε once its rounds settled.
    let done = wait(
        Duration::from_secs(30),
        "the owners' ε in the ledger",
        || async {
            let v = req.federation(&done.id).await?;
            Ok(v.owners
                .iter()
                .all(|o| o.epsilon_in_ledger.is_some())
                .then_some(v))
        },
    )
    .await
    .unwrap_or(done);
    say("
owners    (ε the accountant gives the job's rounds; what the ledger recorded)"
        .into());
    for o in &done.owners {
        say(format!(
            "          {}  {} rows  {} rounds  ε {:.3}  ledger {}",
            &o.account[..12],
            o.rows,
            o.rounds_done,
            o.epsilon,
            o.epsilon_in_ledger
                .map_or_else(|| "-".to_string(), |e| format!("{e:.3}"))
        ));
    }
    let mut ok = done.state == "done";
    if let Some(m) = &done.model {
        let model = std::fs::read(m)?;
        let acc = accuracy(&model, &test)?;
        let alone = {
            // One winery on its own, at the same privacy cost.
            let mut spec = compute::TrainSpec::new(vec![11, 16, 6], 10, 128, 0.5, 3);
            spec.dp = Some(compute::DpConfig {
                clip: 1.0,
                sigma: 1.2,
                delta: 1e-5,
            });
            let own = std::fs::read(&files[0])?;
            let be = compute::CpuBackend::new();
            let out = compute::run_workload(&be, &compute::WorkloadSpec::Train(spec), &own, None)?;
            accuracy(&out.output, &test)?
        };
        say(format!(
            "
model     {}: test accuracy {:.1} % on 320 held-out wines (one winery alone, same DP-SGD: {:.1} %)",
            m.display(),
            acc * 100.0,
            alone * 100.0
        ));
        ok &= acc > 0.45;
    }
    let wall = started.elapsed().as_secs_f64();
    say(format!(
        "
{} in {wall:.1} s",
        if ok {
            "demo OK: the federated job trained across three owners"
        } else {
            "demo FAILED"
        }
    ));
    let finalized_epoch = req.ledger(0).await?.finalized_epoch;
    swarm.shutdown().await?;
    Ok(DemoReport {
        jobs: Vec::new(),
        federation: Some(done),
        balances: Vec::new(),
        finalized_epoch,
        phases: Vec::new(),
        wall_s: wall,
        ok,
    })
}

/// Run the demo. `Ok(report)` with `report.ok` false when a step failed.
pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoReport> {
    let tmp;
    let root = match &opts.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
            tmp.path().to_path_buf()
        }
    };
    if opts.federated {
        return run_federated(&opts, &root).await;
    }
    let started = Instant::now();
    let say = |s: String| {
        if opts.verbose {
            println!("{s}");
        }
    };
    let mut phases: Vec<(String, f64)> = Vec::new();
    let mut phase_start = Instant::now();
    let mut phase = |name: &str, phases: &mut Vec<(String, f64)>| {
        phases.push((name.to_string(), phase_start.elapsed().as_secs_f64()));
        phase_start = Instant::now();
    };

    let swarm = LocalSwarm::start(&root, opts.cheaters, opts.cheat, EPOCH_SECS).await?;
    say(format!(
        "genesis   network {} — 3 oracles staked 1000 tokens each, the requester holds 10000",
        &swarm.genesis.network().to_string()[..16]
    ));
    say(format!(
        "started   7 nodes on 127.0.0.1 (libp2p + iroh + ledger + control API each) in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let ctl = &swarm.ctl;
    let req = swarm.requester();
    let offers = req.offers().await?;
    phase("swarm and offers", &mut phases);
    say("offers    the requester's order book:".into());
    for o in &offers {
        say(format!(
            "          {}  {:<20} {:>8.1} CU/s  {} tokens/CU",
            &o.provider[..12],
            o.device,
            o.speed_cu_per_s,
            fmt_tokens(o.price_micro_per_cu)
        ));
    }
    let before = balances(ctl, req).await?;
    let data = root.join("winequality.safetensors");
    compute::datasets::write_builtin(compute::datasets::Builtin::WineQuality, &data)?;
    let train = JobRequest {
        max_price: 5_000_000,
        deadline_secs: 120,
        ..JobRequest::train_mlp(data.clone(), 100, 42)
    };
    let mut jobs = Vec::new();
    say("\ntrain     an MLP 11→32→6 on UCI wine quality (1599 wines), 100 epochs".into());
    let trained = run_job(req, &train, &say).await?;
    phase("training job", &mut phases);
    let model = trained.result.clone();
    jobs.push(trained);
    if let Some(model) = model {
        say("\ninfer     the trained model on the same 1599 wines".into());
        let infer = JobRequest {
            kind: JobKind::Infer { batch: 256 },
            model: Some(model),
            ..train.clone()
        };
        jobs.push(run_job(req, &infer, &say).await?);
        phase("inference job", &mut phases);
    }

    // Let the settlements reach every node before reading balances.
    let after = wait(
        Duration::from_secs(10),
        "the settlements to sync",
        || async {
            let b = balances(ctl, req).await?;
            let moved = b.iter().zip(&before).any(|(a, b)| a.2 != b.2);
            Ok(moved.then_some(b))
        },
    )
    .await
    .unwrap_or(before.clone());
    phase("settlement sync", &mut phases);
    // The next checkpoint finalizes the settlements: the committee proposes it at
    // the end of the epoch, the members check its state root and sign.
    let fin0 = req.ledger(0).await?.finalized_epoch;
    let ledger = wait(
        Duration::from_secs(4 * EPOCH_SECS + 5),
        "a checkpoint after the settlements",
        || async {
            let l = req.ledger(12).await?;
            Ok((l.finalized_epoch > fin0).then_some(l))
        },
    )
    .await?;
    let after = balances(ctl, req).await.unwrap_or(after);
    phase("checkpoint", &mut phases);
    say(format!(
        "\ncheckpoint epoch {} final: proposed by the epoch's leader, signed by the committee; its reward is minted to providers by verified compute units",
        ledger.finalized_epoch
    ));
    say("\nbalances  (tokens; before → after)".into());
    for ((role, acc, b0, ..), (_, _, b1, ..)) in before.iter().zip(&after) {
        say(format!(
            "          {role:<11} {}  {:>14} → {:>14}  ({}{})",
            &acc[..12],
            fmt_tokens(*b0),
            fmt_tokens(*b1),
            if b1 >= b0 { "+" } else { "−" },
            fmt_tokens(b1.abs_diff(*b0))
        ));
    }
    say(format!(
        "ledger    {} entries on the requester's replica, finalized epoch {}, supply {} tokens, {} invalid",
        ledger.entries,
        ledger.finalized_epoch,
        fmt_tokens(ledger.total_supply),
        ledger.invalid
    ));
    for e in ledger.tail.iter().rev().take(6).rev() {
        say(format!("          {:<12} {}", e.kind, e.detail));
    }
    let ok = jobs.len() == 2 && jobs.iter().all(|j| j.ok);
    let wall = started.elapsed().as_secs_f64();
    say("\nphases".into());
    for (p, s) in &phases {
        say(format!("          {p:<20} {s:>6.2} s"));
    }
    say(format!(
        "\n{} in {wall:.1} s",
        if ok {
            "demo OK: every step succeeded"
        } else {
            "demo FAILED"
        }
    ));
    swarm.shutdown().await?;
    Ok(DemoReport {
        jobs,
        federation: None,
        balances: after,
        finalized_epoch: ledger.finalized_epoch,
        phases,
        wall_s: wall,
        ok,
    })
}

pub async fn run_job(
    req: &ControlClient,
    job: &JobRequest,
    say: &impl Fn(String),
) -> anyhow::Result<JobView> {
    let v = req.submit(job).await?;
    say(format!(
        "          job {}: estimated {:.3} CU by the FLOP model",
        &v.id[..12],
        v.estimated_cu
    ));
    let mut shown = 0;
    let done = req
        .wait_job(&v.id, Duration::from_secs(90), |v| {
            for e in &v.events[shown..] {
                say(format!("  {:>6.2} s  {}", e.at_s, e.what));
            }
            shown = v.events.len();
        })
        .await?;
    say(format!(
        "          → {}: {} tokens/CU × {:.3} CU, provider paid {}, requester refunded {}{}",
        if done.ok { "OK" } else { "FAILED" },
        fmt_tokens(done.price_micro_per_cu.unwrap_or_default()),
        done.units_used.unwrap_or_default(),
        fmt_tokens(done.paid.unwrap_or_default()),
        fmt_tokens(done.refund.unwrap_or_default()),
        match done.slashed.filter(|s| *s > 0) {
            Some(s) => format!(
                ", provider's bond slashed by {} (half to the requester)",
                fmt_tokens(s)
            ),
            None => String::new(),
        }
    ));
    Ok(done)
}

async fn balances(ctl: &[ControlClient], req: &ControlClient) -> anyhow::Result<Vec<Holding>> {
    let mut out = Vec::new();
    for (role, c) in ROLES.iter().zip(ctl) {
        let acc = c.status().await?.account;
        let b = req.balance(Some(&acc)).await?;
        out.push((role.to_string(), acc, b.balance, b.stake, b.bond));
    }
    Ok(out)
}

fn fmt_tokens(micro: u64) -> String {
    format!("{}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

/// Poll `check` until it yields, at most `limit`.
pub async fn wait<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = check().await? {
            return Ok(t);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where `cloudchain demo --keep DIR` leaves the nodes' directories.
pub fn describe_dir(p: &Path) -> String {
    format!("the nodes' data directories are in {}", p.display())
}
