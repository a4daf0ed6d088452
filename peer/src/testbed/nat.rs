//! `cloudchain sim --testbed N --netns`: the testbed across real NATs.
//!
//! Builds a [`crate::netns::Topology`]: a public network and one home network
//! per provider or requester, each behind its own NAT router that drops
//! unsolicited inbound packets, as home routers do. The public network holds
//! the committee (three oracles, the first of them a libp2p relay server and
//! everyone's bootstrap peer) and a blob relay (`cloudchain relay`). Every
//! other node sits alone in its home, reachable only through the relays until
//! a hole is punched.
//!
//! Each requester submits a training job; the testbed waits for every job to
//! settle, then moves a test blob of `probe_mb` from each requester to the
//! provider it worked with. The report says, per pair, how libp2p connected
//! them (direct after a hole punch, or relayed) and, per blob fetch, which path
//! iroh used and the throughput. All processes are real `cloudchain`
//! binaries, driven through their control APIs by the CLI run inside their
//! namespaces (a namespace's loopback is its own). Everything is torn down on
//! exit, on error and on Ctrl-C.
//!
//! The kernel here has no `netem`: links have no added latency or loss, only
//! an optional rate limit (`tbf`) on each home's uplink.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;

use super::{Proc, Procs, data_dirs, stop};
use crate::demo::wait;
use crate::netns::{Options, Topology};

/// What to run.
#[derive(Debug, Clone)]
pub struct NatOptions {
    /// Processes in all: 3 oracles, then providers and requesters (≥ 5).
    pub processes: usize,
    /// Rate limit of each home's uplink, Mbit/s.
    pub rate_mbit: Option<u32>,
    /// Size of the blob each requester sends its provider after the job.
    pub probe_mb: u64,
    /// Symmetric NATs, where hole punching cannot work: everything relayed.
    pub symmetric: bool,
}

/// How one requester and its provider were connected.
#[derive(Debug, Clone, Serialize)]
pub struct PairReport {
    pub requester: String,
    pub provider: String,
    pub job: String,
    pub job_state: String,
    pub job_ok: bool,
    /// How libp2p connected them, seen by the requester: "direct" (hole
    /// punched: they are behind different NATs), "relayed", or "none".
    pub libp2p: String,
    /// The remote addresses of the requester's connections to the provider
    /// (a `/tcp/` or `/udp/…/quic-v1` address for a direct one, one with
    /// `/p2p-circuit` for a relayed one).
    pub libp2p_addrs: Vec<String>,
    /// Hole punches the requester's node made in all.
    pub hole_punches: u64,
    /// Each blob fetch between the two: the data set and the probe (by the
    /// provider), the result (by the requester).
    pub fetches: Vec<FetchReport>,
}

/// One blob fetch.
#[derive(Debug, Clone, Serialize)]
pub struct FetchReport {
    pub what: String,
    pub by: String,
    pub bytes: u64,
    pub secs: f64,
    pub mbit_per_s: f64,
    /// "direct" or "relayed" (iroh's selected path at the end).
    pub path: String,
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct NatReport {
    pub processes: usize,
    pub homes: usize,
    pub symmetric_nat: bool,
    pub rate_mbit: Option<u32>,
    pub relay_url: String,
    pub pairs: Vec<PairReport>,
    /// Packets the routers dropped because they were headed out of the
    /// testbed's addresses (must be 0).
    pub guard_drops: u64,
    /// The namespaces the run made (and removed).
    pub namespaces: Vec<String>,
    pub wall_s: f64,
}

/// Ports in the public namespace: oracle k listens on BASE + 10k (TCP and
/// QUIC) and binds its blob endpoint on the port after.
const BASE: u16 = crate::net::DEFAULT_PORT;

/// Run the NAT testbed of the binary `exe` under `out`.
pub async fn run(
    exe: &Path,
    opts: &NatOptions,
    out: &Path,
    progress: impl Fn(&str),
) -> anyhow::Result<NatReport> {
    if opts.processes < 5 {
        bail!("a testbed needs at least 5 processes (3 oracles, a provider, a requester)");
    }
    crate::netns::available().map_err(|e| anyhow::anyhow!("--netns: {e}"))?;
    let started = Instant::now();
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let roles = super::roles(opts.processes);
    let homes = opts.processes - 3;
    let topo = Topology::up(&Options {
        homes,
        rate_mbit: opts.rate_mbit,
        symmetric: opts.symmetric,
    })?;
    progress(&format!(
        "namespaces up: a public network and {homes} homes behind {}NAT{}",
        if opts.symmetric { "symmetric " } else { "" },
        opts.rate_mbit
            .map(|r| format!(", uplinks limited to {r} Mbit/s"))
            .unwrap_or_default()
    ));
    let dirs = data_dirs(out, &roles)?;
    let public = Topology::PUBLIC_ADDR;
    let ns_of = |i: usize| -> &str {
        if i < 3 {
            topo.public_ns()
        } else {
            topo.home_ns(i - 3)
        }
    };

    let mut procs = Procs(Vec::new());
    // The blob relay, first: every node names it.
    let relay_dir = out.join("relay");
    std::fs::create_dir_all(&relay_dir)?;
    let mut relay = topo.command(topo.public_ns(), exe);
    relay
        .arg("--json")
        .arg("--data-dir")
        .arg(&relay_dir)
        .args(["relay", "--bind", &public.to_string()])
        .arg("--dir")
        .arg(&relay_dir)
        .env("RUST_LOG", "info,iroh=warn,iroh_relay=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(relay_dir.join("relay.log"))?);
    let mut child = relay
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let stdout = child.stdout.take().context("relay stdout")?;
    procs.0.push(Proc {
        role: "relay".into(),
        dir: relay_dir.clone(),
        child,
    });
    let line = tokio::time::timeout(
        Duration::from_secs(60),
        // `--json` prints one pretty-printed object: read up to its last line.
        tokio::task::spawn_blocking(move || {
            let mut text = String::new();
            let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
            for line in lines.by_ref() {
                let line = line?;
                text.push_str(&line);
                text.push('\n');
                if line == "}" {
                    break;
                }
            }
            Ok::<_, std::io::Error>(text)
        }),
    )
    .await
    .context("the relay did not start in 60 s")???;
    let up: Value = serde_json::from_str(&line)
        .with_context(|| format!("the relay printed {line:?}, not its address"))?;
    let relay_url = up["url"].as_str().context("relay url")?.to_string();
    let relay_cert = up["cert"].as_str().context("relay cert")?.to_string();
    progress(&format!("blob relay at {relay_url}"));

    let boot = format!(
        "/ip4/{public}/tcp/{BASE}/p2p/{}",
        dirs[0].identity.peer_id()
    );
    for (i, (d, role)) in dirs.iter().zip(&roles).enumerate() {
        let (ip, port) = if i < 3 {
            (public.to_string(), BASE + 10 * i as u16)
        } else {
            ("0.0.0.0".to_string(), BASE)
        };
        let log = std::fs::File::create(d.path.join("node.log"))?;
        let mut c = topo.command(ns_of(i), exe);
        c.arg("--data-dir")
            .arg(&d.path)
            .args(["run", "--quick-timing", "--no-mdns", "--no-port-mapping"])
            .args(["--metrics", "127.0.0.1:0"])
            .args(["--listen", &format!("/ip4/{ip}/tcp/{port}")])
            .args(["--listen", &format!("/ip4/{ip}/udp/{port}/quic-v1")])
            .args(["--blob-bind", &format!("{ip}:{}", port + 1)])
            .args(["--relay-url", &relay_url, "--relay-cert", &relay_cert])
            .env(
                "RUST_LOG",
                "info,libp2p=warn,libp2p_autonat=error,iroh=warn,iroh_blobs=warn",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if i < 3 {
            c.args(["--external-addr", &format!("/ip4/{ip}/tcp/{port}")])
                .args(["--external-addr", &format!("/ip4/{ip}/udp/{port}/quic-v1")])
                .arg("--oracle");
        }
        if i == 0 {
            c.arg("--relay-server");
        } else {
            c.args(["--bootstrap", &boot]);
        }
        if role.starts_with("provider") {
            c.arg("--provider");
        }
        let child = c
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        procs.0.push(Proc {
            role: role.clone(),
            dir: d.path.clone(),
            child,
        });
        if i == 0 {
            ready(&topo, ns_of(0), exe, &d.path).await?;
        }
    }
    for (i, d) in dirs.iter().enumerate() {
        ready(&topo, ns_of(i), exe, &d.path).await?;
    }
    let requesters: Vec<usize> = (0..roles.len())
        .filter(|&i| roles[i].starts_with("requester"))
        .collect();
    let providers = roles.iter().filter(|r| r.starts_with("provider")).count();
    progress(&format!(
        "{} processes up; waiting for offers to cross the NATs",
        roles.len()
    ));
    for &i in &requesters {
        let (ns, dir) = (ns_of(i), &dirs[i].path);
        wait(
            Duration::from_secs(180),
            "every provider's offer",
            || async {
                let offers = cli(&topo, ns, exe, dir, &["offers"]).await?;
                Ok((offers.as_array().map_or(0, Vec::len) >= providers).then_some(()))
            },
        )
        .await?;
    }

    let data = out.join("winequality.safetensors");
    compute::datasets::write_builtin(compute::datasets::Builtin::WineQuality, &data)?;
    let mut jobs = Vec::new();
    for (k, &i) in requesters.iter().enumerate() {
        let job = out.join(format!("job-{k}.toml"));
        std::fs::write(&job, job_toml(&data, k as u64))?;
        let child = topo
            .command(ns_of(i), exe)
            .arg("--json")
            .arg("--data-dir")
            .arg(&dirs[i].path)
            .arg("submit")
            .arg(&job)
            .args(["--wait", "--timeout", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        jobs.push((i, child));
    }
    progress(&format!("{} training jobs submitted", jobs.len()));
    let mut pairs = Vec::new();
    for (i, child) in jobs {
        let v = finished(child).await?;
        let job = v["id"].as_str().unwrap_or_default().to_string();
        let state = v["state"].as_str().unwrap_or_default().to_string();
        let ok = v["ok"].as_bool().unwrap_or(false);
        let provider_acc = v["provider"].as_str().unwrap_or_default().to_string();
        progress(&format!(
            "{}: job {} {state}",
            roles[i],
            &job[..job.len().min(12)]
        ));
        let Some(p) = dirs
            .iter()
            .position(|d| d.identity.account().to_string() == provider_acc)
        else {
            pairs.push(PairReport {
                requester: roles[i].clone(),
                provider: String::new(),
                job,
                job_state: state,
                job_ok: ok,
                libp2p: "none".into(),
                libp2p_addrs: vec![],
                hole_punches: 0,
                fetches: vec![],
            });
            continue;
        };
        let pair = measure_pair(&topo, exe, &dirs, &roles, i, p, ns_of, opts.probe_mb, out)
            .await
            .with_context(|| format!("measuring {} and {}", roles[i], roles[p]))?;
        pairs.push(PairReport {
            job,
            job_state: state,
            job_ok: ok,
            ..pair
        });
    }
    let guard_drops = topo.guard_drops()?;
    let namespaces = topo.namespaces().to_vec();
    let clean = stop(&mut procs).await?;
    progress(&format!(
        "{clean} of {} processes stopped cleanly",
        procs.0.len()
    ));
    drop(procs);
    topo.down()?;
    let report = NatReport {
        processes: roles.len(),
        homes,
        symmetric_nat: opts.symmetric,
        rate_mbit: opts.rate_mbit,
        relay_url,
        pairs,
        guard_drops,
        namespaces,
        wall_s: started.elapsed().as_secs_f64(),
    };
    std::fs::write(
        out.join("testbed_nat.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(report)
}

/// The libp2p link between requester `r` and provider `p`, and their blob
/// fetches: the ones the job made, and a probe blob sent after it.
#[allow(clippy::too_many_arguments)]
async fn measure_pair<'a>(
    topo: &'a Topology,
    exe: &Path,
    dirs: &[crate::config::DataDir],
    roles: &[String],
    r: usize,
    p: usize,
    ns_of: impl Fn(usize) -> &'a str,
    probe_mb: u64,
    out: &Path,
) -> anyhow::Result<PairReport> {
    let (rns, rdir) = (ns_of(r), &dirs[r].path);
    let (pns, pdir) = (ns_of(p), &dirs[p].path);
    let provider_peer = dirs[p].identity.peer_id().to_string();
    // A probe blob from the requester to its provider.
    if probe_mb > 0 {
        let file = out.join(format!("probe-{r}.bin"));
        write_probe(&file, probe_mb, r as u64)?;
        let added = cli(topo, rns, exe, rdir, &["blob", "add", &path_str(&file)?]).await?;
        let ticket = added["ticket"].as_str().context("blob add: no ticket")?;
        let got = out.join(format!("probe-{r}.got"));
        cli(
            topo,
            pns,
            exe,
            pdir,
            &["blob", "get", ticket, &path_str(&got)?],
        )
        .await?;
        let same = std::fs::read(&got)? == std::fs::read(&file)?;
        if !same {
            bail!("the probe blob arrived changed");
        }
        let _ = std::fs::remove_file(&got);
        let _ = std::fs::remove_file(&file);
    }
    let rs = cli(topo, rns, exe, rdir, &["status"]).await?;
    let ps = cli(topo, pns, exe, pdir, &["status"]).await?;
    let link = rs["peers"].as_array().and_then(|peers| {
        peers
            .iter()
            .find(|l| l["peer"].as_str() == Some(provider_peer.as_str()))
    });
    let libp2p_addrs = link
        .and_then(|l| l["addrs"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let libp2p = link
        .map(|l| {
            let direct = l["direct"].as_u64().unwrap_or(0);
            let relayed = l["relayed"].as_u64().unwrap_or(0);
            // After a hole punch the relayed connection stays open until it
            // idles out; the direct one carries the traffic.
            match (direct > 0, relayed > 0) {
                (true, _) => "direct",
                (false, true) => "relayed",
                _ => "none",
            }
        })
        .unwrap_or("none")
        .to_string();
    let mut fetches = Vec::new();
    for (who, status, probe_size) in [(&roles[p], &ps, probe_mb << 20), (&roles[r], &rs, u64::MAX)]
    {
        for f in status["fetched"].as_array().into_iter().flatten() {
            let bytes = f["bytes"].as_u64().unwrap_or(0);
            let secs = f["secs"].as_f64().unwrap_or(0.0);
            let what = if bytes == probe_size {
                "probe blob"
            } else if who == &roles[p] {
                "job input"
            } else {
                "job result"
            };
            fetches.push(FetchReport {
                what: what.into(),
                by: who.clone(),
                bytes,
                secs,
                mbit_per_s: bytes as f64 * 8.0 / 1e6 / secs.max(1e-9),
                path: f["path"].as_str().unwrap_or("unknown").into(),
            });
        }
    }
    Ok(PairReport {
        requester: roles[r].clone(),
        provider: roles[p].clone(),
        job: String::new(),
        job_state: String::new(),
        job_ok: false,
        libp2p,
        libp2p_addrs,
        hole_punches: rs["hole_punches"].as_u64().unwrap_or(0),
        fetches,
    })
}

fn path_str(p: &Path) -> anyhow::Result<String> {
    p.to_str()
        .map(str::to_string)
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// `mb` MiB of bytes that do not compress (a keyed hash stream).
fn write_probe(path: &Path, mb: u64, seed: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    let mut xof = h.finalize_xof();
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mb {
        xof.fill(&mut buf);
        f.write_all(&buf)?;
    }
    f.flush()?;
    Ok(())
}

fn job_toml(data: &Path, seed: u64) -> String {
    format!(
        "kind = \"train\"\ndataset = {:?}\nmax_price = 10000000\ndeadline_minutes = 10\n\n\
         [train]\nlayers = [11, 32, 6]\nepochs = 50\nbatch = 32\nlearning_rate = 0.05\nseed = {seed}\n",
        data.display().to_string()
    )
}

/// Run the CLI with `--json` inside `ns` against the node in `dir`.
async fn cli(
    topo: &Topology,
    ns: &str,
    exe: &Path,
    dir: &Path,
    args: &[&str],
) -> anyhow::Result<Value> {
    let mut c = topo.command(ns, exe);
    c.arg("--json").arg("--data-dir").arg(dir).args(args);
    let c = tokio::process::Command::from(c)
        .stdin(Stdio::null())
        .output()
        .await?;
    if !c.status.success() {
        bail!(
            "cloudchain {} in {ns}: {}",
            args.join(" "),
            String::from_utf8_lossy(&c.stderr).trim()
        );
    }
    serde_json::from_slice(&c.stdout).with_context(|| {
        format!(
            "cloudchain {} printed {:?}",
            args.join(" "),
            String::from_utf8_lossy(&c.stdout)
        )
    })
}

/// The JSON a finished `submit --wait --json` printed (also when the job failed).
async fn finished(child: Child) -> anyhow::Result<Value> {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).with_context(|| {
        format!(
            "submit printed {text:?}; {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// Wait for a started node's control API, asked from inside its namespace.
async fn ready(topo: &Topology, ns: &str, exe: &Path, dir: &Path) -> anyhow::Result<()> {
    wait(Duration::from_secs(90), "a node's control API", || async {
        if !dir.join(crate::control::ADDR_FILE).exists() {
            return Ok(None);
        }
        Ok(cli(topo, ns, exe, dir, &["status"]).await.ok().map(|_| ()))
    })
    .await
    .with_context(|| format!("see {}", dir.join("node.log").display()))
}

/// Where a run's files go by default.
pub fn default_out() -> PathBuf {
    std::env::temp_dir().join("cloudchain-testbed-nat")
}
