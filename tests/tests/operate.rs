//! Operating a swarm: after a job settles on loopback,
//! - each node's `/metrics` is valid OpenMetrics (checked by the reference
//!   parser, Python's `prometheus_client`), and its job, earnings, verdict
//!   and blob counters moved;
//! - the web dashboard, loaded in headless Chromium, shows the job and its
//!   outcome (the requester's), the earnings (the provider's) and the peers
//!   (both), and leaves screenshots under `target/dashboard/`.
//!
//! The parser is Debian's `python3-prometheus-client` under `/usr/bin/python3`
//! (`$PROM_PYTHON` to use another); Chromium is Debian's `chromium`
//! (`$CHROMIUM`). `.ci/run` installs both; without them each part says so and
//! passes, unless `CLOUDCHAIN_REQUIRE_TOOLS` is set.
//!
//! Promtool (Debian's `prometheus`, 2.42) is not used: it lints the older
//! Prometheus text format only, and rejects OpenMetrics' `_total` counters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use peer::control::ControlClient;
use peer::node::RunOptions;
use tests::{requester, stop, swarm, wait_job, wine_job};

/// The value of the sample `series` (name and labels exactly as written) in
/// OpenMetrics `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split(' ').next()?.parse().ok()
    })
}

async fn scrape(c: &ControlClient) -> anyhow::Result<String> {
    let addr = c
        .status()
        .await?
        .metrics
        .context("the node serves no metrics")?;
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text)
}

/// Scrape until every `(series, at least)` holds, within a generous bound
/// (settlements and checkpoints reach each replica in their own time).
async fn scrape_until(c: &ControlClient, want: &[(&str, f64)]) -> anyhow::Result<String> {
    let wait = async {
        loop {
            let text = scrape(c).await?;
            if want
                .iter()
                .all(|(s, min)| sample(&text, s).is_some_and(|v| v >= *min))
            {
                return anyhow::Ok(text);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    match tokio::time::timeout(Duration::from_secs(180), wait).await {
        Ok(text) => text,
        Err(_) => {
            let text = scrape(c).await?;
            anyhow::bail!("the metrics never showed {want:?}:\n{text}")
        }
    }
}

/// Parse `text` with the reference OpenMetrics parser (strict: types,
/// suffixes, label syntax, histogram buckets, the closing `# EOF`); the
/// families it found, by name, with their types.
fn openmetrics_families(python: &Path, text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    use std::io::Write;
    const PARSE: &str = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n    print(f.name, f.type)\n";
    let mut child = std::process::Command::new(python)
        .args(["-c", PARSE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", python.display()))?;
    child
        .stdin
        .take()
        .context("the parser's stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "not valid OpenMetrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect())
}

/// Where the screenshots go: `target/dashboard/` of this workspace (or of
/// `$CARGO_TARGET_DIR`), kept as CI artifacts.
fn artifacts() -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("dashboard");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Headless Chromium on `url`: the DOM once the page's scripts have run
/// (virtual time waits for their requests), and a screenshot into `png`.
/// Chromium is kept off the network but for loopback, with a fresh profile.
async fn chromium(bin: &Path, url: &str, png: &Path) -> anyhow::Result<String> {
    let profile = tempfile::tempdir()?;
    let run = |extra: Vec<String>| {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=8000",
            "--window-size=1280,1800",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .kill_on_drop(true);
        cmd
    };
    let dom = tokio::time::timeout(
        Duration::from_secs(120),
        run(vec!["--dump-dom".into()]).output(),
    )
    .await
    .context("chromium --dump-dom did not finish in 120 s")??;
    anyhow::ensure!(
        dom.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let shot = tokio::time::timeout(
        Duration::from_secs(120),
        run(vec![format!("--screenshot={}", png.display())]).output(),
    )
    .await
    .context("chromium --screenshot did not finish in 120 s")??;
    anyhow::ensure!(
        shot.status.success() && png.is_file(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    Ok(String::from_utf8(dom.stdout)?)
}

/// The element of `dom` that has `attr` (`data-job="…"`, say): its opening tag
/// through the end of its table row or list item, enough to read its cells.
fn element<'a>(dom: &'a str, attr: &str) -> Option<&'a str> {
    let at = dom.find(attr)?;
    let start = dom[..at].rfind('<')?;
    let end = ["</tr>", "</li>"]
        .iter()
        .filter_map(|t| dom[at..].find(t).map(|i| at + i + t.len()))
        .min()?;
    Some(&dom[start..end])
}

/// The text of the first element carrying `id="…"` in `dom`, tags stripped.
fn text_of(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let open = at + dom[at..].find('>')? + 1;
    let close = open + dom[open..].find("</")?;
    Some(dom[open..close].trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_job_shows_in_the_metrics_and_on_the_dashboard() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let metrics = |o: &mut RunOptions| o.metrics = Some(([127, 0, 0, 1], 0).into());
    let (nodes, acc, _) = swarm(tmp.path(), "operate", 1, 1, true, metrics).await?;
    let requester_c = requester(tmp.path(), 1).await?;
    let provider_c = ControlClient::from_data_dir(&tmp.path().join("n3"))?;
    let job = requester_c.submit(&wine_job(tmp.path(), 20, 60)?).await?;
    let done = wait_job(&requester_c, &job.id, Duration::from_secs(180), |v| v.done).await;
    assert!(done.ok, "{done:#?}");
    assert_eq!(done.provider, Some(acc[3].to_string()));

    // The counters moved, on each side of the job.
    let req = scrape_until(
        &requester_c,
        &[
            ("cloudchain_jobs_ended_total{outcome=\"ok\"}", 1.0),
            ("cloudchain_job_submit_to_end_seconds_count", 1.0),
            ("cloudchain_blob_bytes_total{direction=\"in\"}", 1.0),
        ],
    )
    .await?;
    assert_eq!(
        sample(&req, "cloudchain_jobs_ended_total{outcome=\"failed\"}"),
        Some(0.0)
    );
    let prov = scrape_until(
        &provider_c,
        &[
            ("cloudchain_earned_tokens_total{kind=\"paid\"}", 1e-6),
            ("cloudchain_earned_tokens_total{kind=\"minted\"}", 1e-6),
            ("cloudchain_blob_bytes_total{direction=\"out\"}", 1.0),
            ("cloudchain_blob_store_bytes", 1.0),
        ],
    )
    .await?;
    assert_eq!(
        sample(&prov, "cloudchain_earned_tokens_total{kind=\"slashed\"}"),
        Some(0.0)
    );
    let mut verdicts = 0.0;
    let mut oracle = String::new();
    for i in 0..3 {
        let c = ControlClient::from_data_dir(&tmp.path().join(format!("n{i}")))?;
        oracle = scrape(&c).await?;
        verdicts += sample(&oracle, "cloudchain_verdicts_signed_total").unwrap_or(0.0);
    }
    assert!(
        verdicts >= 2.0,
        "a quorum signed verdicts: {verdicts}\n{oracle}"
    );

    // Valid OpenMetrics, by the reference parser.
    let python = std::env::var_os("PROM_PYTHON")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/bin/python3")).filter(|p| p.is_file()));
    let parser = python.filter(|p| {
        std::process::Command::new(p)
            .args(["-c", "import prometheus_client"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    match parser {
        Some(py) => {
            for text in [&req, &prov, &oracle] {
                let fams = openmetrics_families(&py, text)?;
                for (name, kind) in [
                    ("cloudchain_jobs_ended", "counter"),
                    ("cloudchain_job_submit_to_end_seconds", "histogram"),
                    ("cloudchain_earned_tokens", "counter"),
                    ("cloudchain_peers", "gauge"),
                    ("cloudchain_finality_lag_epochs", "gauge"),
                    ("libp2p_swarm_connections_established", "counter"),
                ] {
                    assert_eq!(
                        fams.get(name).map(String::as_str),
                        Some(kind),
                        "{name}: {fams:?}"
                    );
                }
            }
        }
        None => {
            assert!(
                std::env::var_os("CLOUDCHAIN_REQUIRE_TOOLS").is_none(),
                "no Python with prometheus_client (python3-prometheus-client), and CLOUDCHAIN_REQUIRE_TOOLS is set"
            );
            eprintln!("skipped the OpenMetrics parse: no python3-prometheus-client");
        }
    }

    // The dashboard, in a real browser.
    if let Some(bin) = tests::tool("CHROMIUM", &["chromium", "chromium-browser"]) {
        let out = artifacts()?;
        let dom = chromium(
            &bin,
            &requester_c.dashboard_url(),
            &out.join("requester.png"),
        )
        .await?;
        assert!(
            dom.contains("data-loaded=\"1\""),
            "the page never loaded its data:\n{dom}"
        );
        let row = element(&dom, &format!("data-job=\"{}\"", done.id))
            .with_context(|| format!("no row for job {} in\n{dom}", done.id))?;
        assert!(
            row.contains(">settled<") && row.contains(">ok<"),
            "the job's row: {row}"
        );
        let peers = dom.matches("data-peer=\"").count();
        assert!(peers >= 4, "{peers} peers shown, not the swarm's 4:\n{dom}");
        assert!(dom.contains(">direct<"), "no peer shown as direct:\n{dom}");

        let dom = chromium(&bin, &provider_c.dashboard_url(), &out.join("provider.png")).await?;
        assert!(
            dom.contains("data-loaded=\"1\""),
            "the page never loaded its data:\n{dom}"
        );
        let earnings = provider_c.earnings(None).await?;
        let paid = text_of(&dom, "earned-paid").context("no #earned-paid")?;
        assert!(
            paid.contains(&earnings.paid_tokens),
            "paid shows {paid:?}, the API says {}",
            earnings.paid_tokens
        );
        assert!(earnings.paid > 0 && earnings.minted > 0, "{earnings:?}");
        assert!(dom.contains("class=\"total\""), "no earnings chart:\n{dom}");
        assert!(
            dom.matches("data-peer=\"").count() >= 4,
            "the provider's peers:\n{dom}"
        );

        // Without the token there is no page; the login link's cookie
        // brings it back on a reload (the page drops the token from its
        // address).
        let link = requester_c.dashboard_url();
        let (bare, token) = link.split_once("?token=").context("the link")?;
        let resp = reqwest::get(bare).await?;
        assert_eq!(resp.status(), reqwest::StatusCode::UNAUTHORIZED);
        let resp = reqwest::get(&link).await?;
        let cookie = resp
            .headers()
            .get(reqwest::header::SET_COOKIE)
            .context("the login link sets no cookie")?
            .to_str()?
            .to_string();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let reload = reqwest::Client::new()
            .get(bare)
            .header(
                reqwest::header::COOKIE,
                cookie.split(';').next().unwrap_or_default(),
            )
            .send()
            .await?;
        assert_eq!(reload.status(), reqwest::StatusCode::OK);
        let wrong = reqwest::Client::new()
            .get(bare)
            .header(
                reqwest::header::COOKIE,
                format!("cloudchain-dashboard={}x", &token[1..]),
            )
            .send()
            .await?;
        assert_eq!(wrong.status(), reqwest::StatusCode::UNAUTHORIZED);
        eprintln!("screenshots in {}", out.display());
    }
    stop(nodes).await
}
