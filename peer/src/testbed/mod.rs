//! `cloudchain sim --testbed N`: a swarm of N real `cloudchain` processes on
//! loopback, driven through their control APIs.
//!
//! Roles: three oracles (the committee), then providers and requesters in equal
//! shares (requesters get the odd one). Every node gets its own data directory
//! under the output directory, one genesis, and a log file. The first oracle is
//! everyone's bootstrap peer. Each requester submits a training job on the UCI
//! wine-quality data; the testbed waits for every job to settle, gathers the
//! metrics the simulator reports (throughput, SLA compliance, latency, token
//! distribution and Gini, Jain's index), writes them as CSV and JSON, and stops
//! every process with SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use protocol::{Amount, DurationMs};
use serde::Serialize;

use crate::config::DataDir;
use crate::control::{ControlClient, JobRequest, JobView};
use crate::demo::wait;

pub mod nat;

/// What a testbed run measured.
#[derive(Debug, Clone, Serialize)]
pub struct TestbedReport {
    pub processes: usize,
    pub oracles: usize,
    pub providers: usize,
    pub requesters: usize,
    pub jobs_submitted: usize,
    pub jobs_ok: usize,
    pub sla_compliance: f64,
    pub throughput_jobs_per_s: f64,
    pub latency_p50_s: f64,
    pub latency_p95_s: f64,
    pub contract_p50_ms: f64,
    /// Micro-tokens earned per provider (settlements and minted rewards).
    pub provider_earnings: Vec<u64>,
    pub gini_earnings: f64,
    /// Jain's index of the requesters' job latencies.
    pub jain_latency: f64,
    pub startup_s: f64,
    pub wall_s: f64,
}

struct Proc {
    role: String,
    dir: PathBuf,
    child: Child,
}

/// Stops every child on drop, so that an error leaves no process behind.
struct Procs(Vec<Proc>);

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.0 {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

fn roles(n: usize) -> Vec<String> {
    let rest = n - 3;
    let providers = rest / 2;
    (0..n)
        .map(|i| match i {
            0..3 => format!("oracle-{}", i + 1),
            i if i < 3 + providers => format!("provider-{}", i - 2),
            i => format!("requester-{}", i - 2 - providers),
        })
        .collect()
}

/// Run a testbed of `n` processes (at least 5) of the binary `exe` under `out`.
pub async fn run(
    exe: &Path,
    n: usize,
    out: &Path,
    progress: impl Fn(&str),
) -> anyhow::Result<TestbedReport> {
    if n < 5 {
        bail!("a testbed needs at least 5 processes (3 oracles, a provider, a requester)");
    }
    let started = Instant::now();
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let roles = roles(n);
    let dirs = data_dirs(out, &roles)?;
    let spawn = |dir: &Path, role: &str, boot: Option<&str>| -> anyhow::Result<Child> {
        let log = std::fs::File::create(dir.join("node.log"))?;
        let mut c = Command::new(exe);
        c.arg("--data-dir")
            .arg(dir)
            .args(["run", "--quick-timing", "--no-mdns"])
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(["--blob-bind", "127.0.0.1:0", "--no-port-mapping"])
            .args(["--metrics", "127.0.0.1:0"])
            .env("RUST_LOG", "info,libp2p=warn,iroh=warn,iroh_blobs=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(b) = boot {
            c.args(["--bootstrap", b]);
        }
        if role.starts_with("oracle") {
            c.arg("--oracle");
        }
        if role.starts_with("provider") {
            c.arg("--provider");
        }
        c.spawn()
            .with_context(|| format!("cannot start {}", exe.display()))
    };
    let mut procs = Procs(Vec::new());
    let mut boot: Option<String> = None;
    for (d, r) in dirs.iter().zip(&roles) {
        let _ = std::fs::remove_file(d.path.join(crate::control::ADDR_FILE));
        let child = spawn(&d.path, r, boot.as_deref())?;
        procs.0.push(Proc {
            role: r.clone(),
            dir: d.path.clone(),
            child,
        });
        if boot.is_none() {
            let c = ready(&d.path).await?;
            let s = c.status().await?;
            let listen = s.listen.first().context("the first node has no address")?;
            boot = Some(format!("{listen}/p2p/{}", s.peer_id));
        }
    }
    let mut ctl = Vec::new();
    for p in &procs.0 {
        ctl.push(ready(&p.dir).await?);
    }
    progress(&format!("{n} processes started; waiting for offers"));
    let requesters: Vec<usize> = (0..n)
        .filter(|&i| roles[i].starts_with("requester"))
        .collect();
    let providers: Vec<usize> = (0..n)
        .filter(|&i| roles[i].starts_with("provider"))
        .collect();
    for &i in &requesters {
        wait(
            Duration::from_secs(60),
            "every provider's offer",
            || async { Ok((ctl[i].offers().await?.len() >= providers.len()).then_some(())) },
        )
        .await?;
    }
    // A gossipsub heartbeat to graft the meshes.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let startup_s = started.elapsed().as_secs_f64();
    let earnings0 = earnings(&ctl, &providers, &ctl[requesters[0]]).await?;

    let data = out.join("winequality.safetensors");
    compute::datasets::write_builtin(compute::datasets::Builtin::WineQuality, &data)?;
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for (k, &i) in requesters.iter().enumerate() {
        let job = JobRequest::train_mlp(data.clone(), 50, k as u64);
        ids.push((i, ctl[i].submit(&job).await?.id));
    }
    progress(&format!("{} jobs submitted", ids.len()));
    let mut done: Vec<(JobView, f64)> = Vec::new();
    for (i, id) in &ids {
        let v = ctl[*i]
            .wait_job(id, Duration::from_secs(180), |_| {})
            .await?;
        let settled = v.events.last().map(|e| e.at_s).unwrap_or_default();
        progress(&format!(
            "{}: job {} {} after {settled:.1} s",
            procs.0[*i].role,
            &v.id[..12],
            v.state
        ));
        done.push((v, settled));
    }
    let span = t0.elapsed().as_secs_f64();
    // Let the settlements reach the reader, then count what providers earned.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let earnings1 = earnings(&ctl, &providers, &ctl[requesters[0]]).await?;
    let earned: Vec<u64> = earnings1
        .iter()
        .zip(&earnings0)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();

    let mut lat: Vec<f64> = done.iter().map(|(_, s)| *s).collect();
    lat.sort_by(f64::total_cmp);
    let q = |v: &[f64], p: f64| {
        if v.is_empty() {
            0.0
        } else {
            v[((v.len() - 1) as f64 * p).round() as usize]
        }
    };
    let mut contract_ms: Vec<f64> = done
        .iter()
        .filter_map(|(v, _)| {
            let at = |p: &str| {
                v.events
                    .iter()
                    .find(|e| e.what.starts_with(p))
                    .map(|e| e.at_s)
            };
            Some((at("contract")? - at("submitted")?) * 1000.0)
        })
        .collect();
    contract_ms.sort_by(f64::total_cmp);
    let ok = done.iter().filter(|(v, _)| v.ok).count();
    let sla_ok = done
        .iter()
        .filter(|(v, _)| v.verdict.is_some_and(|v| v.sla_ok))
        .count();
    let earned_f: Vec<f64> = earned.iter().map(|&e| e as f64).collect();
    let report = TestbedReport {
        processes: n,
        oracles: 3,
        providers: providers.len(),
        requesters: requesters.len(),
        jobs_submitted: ids.len(),
        jobs_ok: ok,
        sla_compliance: sla_ok as f64 / ids.len().max(1) as f64,
        throughput_jobs_per_s: ok as f64 / span.max(1e-9),
        latency_p50_s: q(&lat, 0.5),
        latency_p95_s: q(&lat, 0.95),
        contract_p50_ms: q(&contract_ms, 0.5),
        provider_earnings: earned,
        gini_earnings: simnet::metrics::gini(&earned_f),
        jain_latency: protocol::accounting::jain_index(&lat),
        startup_s,
        wall_s: 0.0,
    };
    write_outputs(out, &report, &done)?;

    let clean = stop(&mut procs).await?;
    progress(&format!("{clean} of {n} processes stopped cleanly"));
    Ok(TestbedReport {
        wall_s: started.elapsed().as_secs_f64(),
        ..report
    })
}

/// A data directory per role under `out` (cleared first), all with one
/// genesis: oracles staked, requesters funded and bonded, 5 s epochs.
fn data_dirs(out: &Path, roles: &[String]) -> anyhow::Result<Vec<DataDir>> {
    let mut dirs = Vec::new();
    for r in roles {
        let path = out.join(r);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("cannot clear {}", path.display()))?;
        }
        dirs.push(DataDir::init(&path)?);
    }
    let mut balances = Vec::new();
    let mut stakes = Vec::new();
    let mut bonds = Vec::new();
    for (d, r) in dirs.iter().zip(roles) {
        let a = d.identity.account();
        if r.starts_with("oracle") {
            stakes.push((a, Amount::tokens(1_000)));
            balances.push((a, Amount::tokens(100)));
        } else if r.starts_with("requester") {
            balances.push((a, Amount::tokens(10_000)));
            bonds.push((a, Amount::tokens(1_000)));
        } else {
            balances.push((a, Amount::tokens(100)));
        }
    }
    let genesis = crate::genesis::build(
        &dirs[0].identity,
        "cloudchain-testbed",
        crate::net::now(),
        crate::genesis::local_params(DurationMs::secs(5), 3),
        balances,
        stakes,
        bonds,
    )?;
    for d in &dirs {
        d.install_genesis(&genesis)?;
    }
    Ok(dirs)
}

/// Stop every process with SIGTERM (the node closes its stores) and wait up to
/// 10 s each; returns how many exited cleanly.
async fn stop(procs: &mut Procs) -> anyhow::Result<usize> {
    for p in &mut procs.0 {
        let _ = Command::new("kill")
            .args(["-TERM", &p.child.id().to_string()])
            .status();
    }
    for p in &mut procs.0 {
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.child.try_wait()?.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut clean = 0;
    for p in &mut procs.0 {
        if matches!(p.child.try_wait(), Ok(Some(s)) if s.success()) {
            clean += 1;
        }
    }
    Ok(clean)
}

/// Wait for a started node's control API.
async fn ready(dir: &Path) -> anyhow::Result<ControlClient> {
    wait(Duration::from_secs(60), "a node's control API", || async {
        if !dir.join(crate::control::ADDR_FILE).exists() {
            return Ok(None);
        }
        let c = ControlClient::from_data_dir(dir)?;
        Ok(c.status().await.ok().map(|_| c))
    })
    .await
    .with_context(|| format!("see {}", dir.join("node.log").display()))
}

async fn earnings(
    ctl: &[ControlClient],
    providers: &[usize],
    reader: &ControlClient,
) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::new();
    for &i in providers {
        let acc = ctl[i].status().await?.account;
        out.push(reader.balance(Some(&acc)).await?.balance);
    }
    Ok(out)
}

fn write_outputs(out: &Path, r: &TestbedReport, jobs: &[(JobView, f64)]) -> anyhow::Result<()> {
    let mut csv = String::from("job,kind,state,ok,provider,price_micro_per_cu,units,latency_s\n");
    for (v, s) in jobs {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{s:.3}\n",
            v.id,
            v.kind,
            v.state,
            v.ok,
            v.provider.as_deref().unwrap_or(""),
            v.price_micro_per_cu.unwrap_or_default(),
            v.units_used.unwrap_or_default()
        ));
    }
    std::fs::write(out.join("testbed_jobs.csv"), csv)?;
    std::fs::write(
        out.join("testbed_summary.json"),
        serde_json::to_string_pretty(r)?,
    )?;
    Ok(())
}
