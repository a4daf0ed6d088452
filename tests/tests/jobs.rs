//! Jobs end to end on real swarms on 127.0.0.1: libp2p gossip and request-response,
//! iroh blob transfer of encrypted inputs and results, the compute backend, the
//! oracle committee's re-execution and verdicts, and the automerge ledger's
//! escrow, settlement and checkpoints.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::Duration;

use peer::config::DataDir;
use peer::control::{ControlClient, JobRequest, JobView};
use peer::demo::{self, DemoOptions};
use peer::node::{self, RunOptions, RunningNode, Timing};
use protocol::DurationMs;
use tests::wait_for;

/// The demo in a fresh directory (returned, so results stay readable), with
/// `faulty_providers` faking their results. The demo's own steps wait with their
/// own bounds; this is the backstop, wide enough for a loaded 2-core machine
/// running other tests beside it.
async fn demo_with(
    faulty_providers: usize,
) -> anyhow::Result<(tempfile::TempDir, demo::DemoReport)> {
    let tmp = tempfile::tempdir()?;
    let opts = DemoOptions {
        dir: Some(tmp.path().to_path_buf()),
        faulty_providers,
        verbose: false,
    };
    let report = tokio::time::timeout(Duration::from_secs(120), demo::run(opts))
        .await
        .map_err(|_| anyhow::anyhow!("the demo did not finish in 120 s"))??;
    Ok((tmp, report))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_trains_and_infers_end_to_end_and_settles_in_the_ledger() -> anyhow::Result<()> {
    let (_dir, r) = demo_with(0).await?;
    assert!(r.ok, "{r:#?}");
    assert_eq!(r.jobs.len(), 2);
    for j in &r.jobs {
        assert_eq!(j.state, "settled");
        assert!(j.paid.unwrap() > 0, "{j:?}");
        let out = std::fs::read(j.result.as_ref().unwrap())?;
        assert!(!out.is_empty());
    }
    // The trained model learned something (6 classes; chance is ~17%).
    let acc = r.jobs[0].metrics.as_ref().unwrap().train_accuracy.unwrap();
    assert!(acc > 0.4, "accuracy {acc}");
    assert!(r.finalized_epoch >= 1);
    // The requester paid exactly what providers and oracles received, and the
    // checkpoint minted rewards to providers only.
    let requester = r.balances.iter().find(|b| b.0 == "requester").unwrap();
    assert!(requester.2 < 10_000_000_000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_returning_wrong_results_is_caught_and_paid_nothing() -> anyhow::Result<()> {
    let (_dir, r) = demo_with(3).await?;
    assert!(!r.ok);
    let j = &r.jobs[0];
    assert_eq!(j.state, "settled", "{j:#?}");
    assert!(!j.ok);
    assert!(
        j.verdict.as_ref().unwrap().contains("result_ok=false"),
        "{j:?}"
    );
    assert_eq!(j.paid, Some(0), "{j:?}");
    // Everything but the committee's fee (2% in the genesis) comes back.
    let escrow = j.escrow.unwrap();
    assert_eq!(j.refund.unwrap(), escrow - escrow * 2 / 100, "{j:?}");
    let cheat = r
        .balances
        .iter()
        .find(|b| Some(&b.1) == j.provider.as_ref())
        .unwrap();
    assert_eq!(cheat.2, 100_000_000, "the cheat earned nothing");
    Ok(())
}

fn node_opts(g: &crdt_ledger::GenesisEntry, boot: &[libp2p::Multiaddr]) -> RunOptions {
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
async fn wait_job(
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
        Ok(v) => v.unwrap(),
        Err(_) => panic!(
            "the job did not reach the state awaited in {bound:?}: {:#?}",
            c.job(id).await
        ),
    }
}

/// A swarm of `n` nodes on loopback: 0..3 the committee, then `providers`
/// providers (CPU backend), the rest requesters. Each requester gets
/// `setup(&mut RunOptions)` before it starts.
async fn swarm(
    tmp: &std::path::Path,
    name: &str,
    providers: usize,
    requesters: usize,
    setup: impl Fn(&mut RunOptions),
) -> anyhow::Result<(Vec<Option<RunningNode>>, Vec<protocol::AccountId>)> {
    let n = 3 + providers + requesters;
    let dirs: Vec<DataDir> = (0..n)
        .map(|i| DataDir::init(&tmp.join(format!("n{i}"))).unwrap())
        .collect();
    let acc: Vec<_> = dirs.iter().map(|d| d.identity.account()).collect();
    let g = tests::genesis(name, &acc[3..], &acc[0..3]);
    let mut nodes: Vec<Option<RunningNode>> = Vec::new();
    let mut boot = Vec::new();
    for (i, mut d) in dirs.into_iter().enumerate() {
        let mut o = node_opts(&g, &boot);
        o.oracle = i < 3;
        o.provider = (3..3 + providers).contains(&i);
        if i >= 3 + providers {
            setup(&mut o);
        }
        d.config.provider.backend = "cpu".into();
        let n = node::start(d, o).await?;
        if i == 0 {
            boot.push(n.dial_addr().await?);
        }
        nodes.push(Some(n));
    }
    Ok((nodes, acc))
}

/// Wait until a node sees `peers` peers (and, for a requester that keeps a
/// book, `offers` offers), then one gossip heartbeat for the mesh.
async fn settled_in(c: &ControlClient, peers: usize, offers: usize) -> anyhow::Result<()> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_no_offer_fits_is_posted_as_a_bid_answered_and_settled() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    // The requester keeps no order book: whatever it submits fits no offer it
    // knows, so it posts an open bid; the provider answers with a proposal, the
    // requester accepts, and the provider sends the contract back directly.
    let (nodes, acc) = swarm(tmp.path(), "open-bid", 1, 1, |o| o.book_capacity = 0).await?;
    let c = ControlClient::from_data_dir(&tmp.path().join("n4"))?;
    settled_in(&c, 4, 0).await?;
    assert!(
        c.offers().await?.is_empty(),
        "a requester with no book kept an offer"
    );
    let data = tmp.path().join("wine.safetensors");
    compute::datasets::write_builtin(compute::datasets::Builtin::WineQuality, &data)?;
    let job = JobRequest {
        deadline_secs: 60,
        ..JobRequest::train_mlp(data, 20, 1)
    };
    let v = c.submit(&job).await?;
    let done = wait_job(&c, &v.id, Duration::from_secs(120), |v| v.done).await;
    assert_eq!(done.state, "settled", "{done:#?}");
    assert_eq!(done.outcome.as_deref(), Some("ok"), "{done:#?}");
    assert!(done.ok, "{done:#?}");
    assert_eq!(done.provider, Some(acc[3].to_string()));
    assert!(
        done.events
            .iter()
            .any(|e| e.what.contains("the bid stays open")),
        "the job was not posted as a bid: {done:#?}"
    );
    assert!(done.paid.unwrap() > 0, "{done:?}");
    for n in nodes.into_iter().flatten() {
        n.shutdown().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_killed_mid_job_ends_in_a_refund_and_a_restart_keeps_the_ledger()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dirs: Vec<DataDir> = (0..5)
        .map(|i| DataDir::init(&tmp.path().join(format!("n{i}"))).unwrap())
        .collect();
    let acc: Vec<_> = dirs.iter().map(|d| d.identity.account()).collect();
    // Nodes 0..3 are the committee, 3 the provider, 4 the requester.
    let g = tests::genesis("killed-provider", &acc[3..5], &acc[0..3]);
    let mut nodes: Vec<Option<RunningNode>> = Vec::new();
    let mut boot = Vec::new();
    for (i, mut d) in dirs.into_iter().enumerate() {
        let mut o = node_opts(&g, &boot);
        o.oracle = i < 3;
        o.provider = i == 3;
        d.config.provider.backend = "cpu".into();
        let n = node::start(d, o).await?;
        if i == 0 {
            boot.push(n.dial_addr().await?);
        }
        nodes.push(Some(n));
    }
    let req_dir = tmp.path().join("n4");
    let c = ControlClient::from_data_dir(&req_dir)?;
    wait_for("the provider's offer and a full swarm", async {
        loop {
            if !c.offers().await?.is_empty() && c.status().await?.connected_peers >= 4 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1_500)).await; // gossip mesh heartbeat
    let data = tmp.path().join("wine.safetensors");
    compute::datasets::write_builtin(compute::datasets::Builtin::WineQuality, &data)?;
    // Long enough (seconds) to be killed in the middle.
    let job = JobRequest {
        deadline_secs: 20,
        ..JobRequest::train_mlp(data, 10_000, 1)
    };
    let v = c.submit(&job).await?;
    let running = wait_job(&c, &v.id, Duration::from_secs(60), |v| {
        v.state == "running" || v.done
    })
    .await;
    let offers = c.offers().await?;
    assert_eq!(running.state, "running", "{running:#?} {offers:#?}");
    assert_eq!(running.provider, Some(acc[3].to_string()));
    nodes[3].take().unwrap().kill().await;

    let done = wait_job(&c, &v.id, Duration::from_secs(120), |v| v.done).await;
    assert_eq!(done.state, "settled", "{done:#?}");
    assert_eq!(done.outcome.as_deref(), Some("refunded: not delivered"));
    assert!(
        done.verdict.as_ref().unwrap().contains("delivered=false"),
        "{done:?}"
    );
    assert_eq!(done.paid, Some(0));
    let escrow = done.escrow.unwrap();
    assert_eq!(done.refund.unwrap(), escrow - escrow * 2 / 100, "{done:?}");
    let before = c.balance(None).await?;
    let ledger = c.ledger(100).await?;
    assert!(ledger.tail.iter().any(|e| e.kind == "escrow-lock"));
    assert!(ledger.tail.iter().any(|e| e.kind == "settlement"));

    // Restart the requester from its data directory: the ledger is all there.
    nodes[4].take().unwrap().shutdown().await?;
    let r = node::start(DataDir::open(&req_dir)?, node_opts(&g, &[])).await?;
    let c = ControlClient::from_data_dir(&req_dir)?;
    let again = c.ledger(100).await?;
    assert!(again.entries >= ledger.entries, "{again:?}");
    assert_eq!(c.balance(None).await?.balance, before.balance);
    // A data directory of another network is refused, not silently reused.
    r.shutdown().await?;
    let other = tests::genesis("another", &[], &[]);
    let err = node::start(DataDir::open(&req_dir)?, node_opts(&other, &[]))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("belongs to network"), "{err}");
    for n in nodes.into_iter().flatten() {
        n.shutdown().await?;
    }
    Ok(())
}
