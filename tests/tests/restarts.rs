//! Real nodes killed at the worst moments and restarted from their data
//! directories: every escrow ends, and every job shows its outcome.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::Path;
use std::time::Duration;

use peer::config::DataDir;
use peer::control::{ControlClient, JobView};
use peer::node::{self, RunOptions, RunningNode};
use tests::{node_opts, requester, stop, swarm, wait_job, wine_job};

/// Restart node `i` of a swarm from its directory, bootstrapping from `from`.
async fn restart(
    tmp: &Path,
    i: usize,
    g: &crdt_ledger::GenesisEntry,
    from: &RunningNode,
    setup: impl Fn(&mut RunOptions),
) -> anyhow::Result<RunningNode> {
    let mut d = DataDir::open(&tmp.join(format!("n{i}")))?;
    d.config.provider.backend = "cpu".into();
    let mut o = node_opts(g, &[from.dial_addr().await?]);
    setup(&mut o);
    node::start(d, o).await
}

/// No escrow is left open in `c`'s replica once the settlement has spread.
async fn no_escrow_open(c: &ControlClient) -> anyhow::Result<()> {
    let l = c.ledger(10_000).await?;
    let locks = l.tail.iter().filter(|e| e.kind == "escrow-lock").count();
    let settled = l.tail.iter().filter(|e| e.kind == "settlement").count();
    assert_eq!(locks, settled, "{locks} escrows locked, {settled} settled");
    Ok(())
}

/// Settled with a correct result, fetched. (A provider that was down while
/// the committee probed it may carry an SLA penalty: it was unavailable.)
fn assert_ok(done: &JobView) {
    assert_eq!(done.state, "settled", "{done:#?}");
    let outcome = done.outcome.as_deref().unwrap_or_default();
    assert!(outcome.starts_with("ok"), "{done:#?}");
    assert!(done.ok, "the result was not fetched: {done:#?}");
    assert!(done.paid.unwrap_or_default() > 0, "{done:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_killed_after_its_escrow_finds_its_job_after_a_restart() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (mut nodes, _, g) = swarm(tmp.path(), "killed-requester", 1, 1, true, |_| {}).await?;
    let c = requester(tmp.path(), 1).await?;
    let v = c.submit(&wine_job(tmp.path(), 2_000, 90)?).await?;
    wait_job(&c, &v.id, Duration::from_secs(60), |v| v.escrow.is_some()).await;
    nodes[4].take().unwrap().kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let from = nodes[1].as_ref().unwrap();
    nodes[4] = Some(restart(tmp.path(), 4, &g, from, |_| {}).await?);
    let c = ControlClient::from_data_dir(&tmp.path().join("n4"))?;
    let back = c.job(&v.id).await?;
    assert!(
        back.contract.is_some(),
        "the job came back without its contract"
    );
    let done = wait_job(&c, &v.id, Duration::from_secs(150), |v| v.done).await;
    assert_ok(&done);
    no_escrow_open(&c).await?;
    stop(nodes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_killed_mid_job_resumes_it_after_a_restart() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (mut nodes, acc, g) = swarm(tmp.path(), "resumed-provider", 1, 1, true, |_| {}).await?;
    let c = requester(tmp.path(), 1).await?;
    let v = c.submit(&wine_job(tmp.path(), 2_000, 120)?).await?;
    let running = wait_job(&c, &v.id, Duration::from_secs(60), |v| {
        v.state == "running" || v.done
    })
    .await;
    assert_eq!(running.state, "running", "{running:#?}");
    assert_eq!(running.provider, Some(acc[3].to_string()));
    nodes[3].take().unwrap().kill().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let from = nodes[0].as_ref().unwrap();
    nodes[3] = Some(restart(tmp.path(), 3, &g, from, |o| o.provider = true).await?);
    let done = wait_job(&c, &v.id, Duration::from_secs(300), |v| v.done).await;
    assert_ok(&done);
    no_escrow_open(&c).await?;
    stop(nodes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_oracles_killed_after_a_receipt_still_settle_it() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (mut nodes, _, g) = swarm(tmp.path(), "killed-oracles", 1, 1, true, |_| {}).await?;
    let c = requester(tmp.path(), 1).await?;
    let v = c.submit(&wine_job(tmp.path(), 200, 90)?).await?;
    // The requester holds the receipt: the committee got it at about the same
    // time. Kill two of the three members now.
    let delivered = wait_job(&c, &v.id, Duration::from_secs(90), |v| {
        v.units_used.is_some() || v.done
    })
    .await;
    assert!(!delivered.done, "settled before the kill: {delivered:#?}");
    nodes[0].take().unwrap().kill().await;
    nodes[1].take().unwrap().kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let from = nodes[2].as_ref().unwrap();
    let oracle = |o: &mut RunOptions| o.oracle = true;
    let n0 = restart(tmp.path(), 0, &g, from, oracle).await?;
    let n1 = restart(tmp.path(), 1, &g, from, oracle).await?;
    nodes[0] = Some(n0);
    nodes[1] = Some(n1);
    let done = wait_job(&c, &v.id, Duration::from_secs(150), |v| v.done).await;
    assert_ok(&done);
    no_escrow_open(&c).await?;
    stop(nodes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_its_requester_cannot_pay_ends_refused_at_once_and_stays_so() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    // The requester holds no tokens: its escrow cannot be locked.
    let (mut nodes, _, g) = swarm(tmp.path(), "refused", 1, 1, false, |_| {}).await?;
    let c = requester(tmp.path(), 1).await?;
    let v = c.submit(&wine_job(tmp.path(), 20, 600)?).await?;
    // Long before its 600 s deadline.
    let done = wait_job(&c, &v.id, Duration::from_secs(60), |v| v.done).await;
    assert_eq!(done.state, "refused", "{done:#?}");
    let why = done.outcome.clone().unwrap();
    assert!(why.contains("escrow"), "{why}");
    nodes[4].take().unwrap().kill().await;
    let from = nodes[0].as_ref().unwrap();
    nodes[4] = Some(restart(tmp.path(), 4, &g, from, |_| {}).await?);
    let c = ControlClient::from_data_dir(&tmp.path().join("n4"))?;
    let again = c.job(&v.id).await?;
    assert_eq!(again.state, "refused");
    assert_eq!(again.outcome, done.outcome);
    stop(nodes).await
}
