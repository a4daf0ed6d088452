//! Jobs end to end on real swarms on 127.0.0.1: libp2p gossip and request-response,
//! iroh blob transfer of encrypted inputs and results, the compute backend, the
//! oracle committee's re-execution and verdicts, and the automerge ledger's
//! escrow, settlement and checkpoints.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::Duration;

use peer::config::DataDir;
use peer::control::ControlClient;
use peer::demo::{self, DemoOptions};
use peer::node;
use peer::work::Cheat;
use tests::{node_opts, providers, requester, stop, swarm, wait_job, wine_job};

/// The demo in a fresh directory (returned, so results stay readable), with
/// `cheaters` providers cheating as `cheat` says. The demo's own steps wait
/// with their own bounds; this is the backstop, wide enough for a loaded
/// 2-core machine running other tests beside it.
async fn demo_with(
    cheaters: usize,
    cheat: Cheat,
) -> anyhow::Result<(tempfile::TempDir, demo::DemoReport)> {
    tests::logs();
    let tmp = tempfile::tempdir()?;
    let opts = DemoOptions {
        dir: Some(tmp.path().to_path_buf()),
        cheaters,
        cheat,
        verbose: false,
        federated: false,
    };
    let report = tokio::time::timeout(Duration::from_secs(120), demo::run(opts))
        .await
        .map_err(|_| anyhow::anyhow!("the demo did not finish in 120 s"))??;
    Ok((tmp, report))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_trains_and_infers_end_to_end_and_settles_in_the_ledger() -> anyhow::Result<()> {
    let (_dir, r) = demo_with(0, Cheat::None).await?;
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

/// Every provider cheats as `cheat` says: the training job is matched with a
/// cheat, the committee finds its result wrong, the escrow comes back less the
/// committee's fee, and the cheat's whole bond is slashed (far more than the
/// contract's escrow), half of it to the requester.
async fn a_cheat_is_caught_and_slashed(cheat: Cheat) -> anyhow::Result<demo::DemoReport> {
    let (_dir, r) = demo_with(3, cheat).await?;
    assert!(!r.ok);
    let j = &r.jobs[0];
    assert_eq!(j.state, "settled", "{j:#?}");
    assert!(!j.ok);
    assert!(!j.verdict.unwrap().result_ok, "{j:?}");
    assert_eq!(j.paid, Some(0), "{j:?}");
    // Everything but the committee's fee (2% in the genesis) comes back, and
    // the cheat's whole bond is slashed, not only what the contract reserved
    // (all of its escrow).
    let escrow = j.escrow.unwrap();
    assert_eq!(j.refund.unwrap(), escrow - escrow * 2 / 100, "{j:?}");
    assert!(j.slashed.unwrap() > escrow, "{j:?}");
    Ok(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_returning_wrong_results_is_caught_and_slashed() -> anyhow::Result<()> {
    let r = a_cheat_is_caught_and_slashed(Cheat::Fake).await?;
    // Every result of a faking provider is wrong: whatever it ran, it ends
    // with its 100 tokens less what the catches slashed of its bond.
    let cheat = r.jobs[0].provider.clone().unwrap();
    let slashed: u64 = r
        .jobs
        .iter()
        .filter(|j| j.provider.as_ref() == Some(&cheat))
        .map(|j| j.slashed.unwrap_or_default())
        .sum();
    let h = r.balances.iter().find(|b| b.1 == cheat).unwrap();
    assert_eq!(h.2 + h.4, 100_000_000 - slashed, "{h:?}");
    Ok(())
}

/// Under the old rule the challenged link came from the contract and the last
/// checkpoint, both known before the run, and a chain was never checked to
/// reach the job's last step: a provider that trained one link of 20 steps and
/// stopped passed for the whole job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_trains_one_link_and_claims_the_whole_job_is_caught() -> anyhow::Result<()>
{
    a_cheat_is_caught_and_slashed(Cheat::Truncate).await?;
    Ok(())
}

/// Units were the provider's word: a verdict paid what the receipt claimed, up
/// to the contract's cap, which the requester's estimate sets. A requester
/// that leaves a margin (here ten times the FLOP model's estimate) met a
/// provider that claimed all of it. Members now recompute the units.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_that_inflates_its_units_is_caught() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let inflate = providers(|o| o.cheat = Cheat::InflateUnits);
    let (nodes, acc, _) = swarm(tmp.path(), "inflate", 1, 1, true, inflate).await?;
    let c = requester(tmp.path(), 1).await?;
    let mut job = wine_job(tmp.path(), 20, 120)?;
    let cu = peer::work::estimate_units(&job.kind, &std::fs::read(&job.dataset)?, None)?;
    job.estimated_cu = Some(cu * 10.0);
    let v = c.submit(&job).await?;
    let done = wait_job(&c, &v.id, Duration::from_secs(120), |v| v.done).await;
    assert_eq!(done.provider, Some(acc[3].to_string()));
    assert_eq!(
        done.outcome.as_deref(),
        Some("failed: wrong result (refunded)"),
        "{done:#?}"
    );
    assert_eq!(done.paid, Some(0), "{done:?}");
    // Its whole bond (50 tokens), not only the contract's reservation.
    assert_eq!(done.slashed, Some(50_000_000), "{done:?}");
    stop(nodes).await
}

/// A provider that holds no bond has nothing a wrong result could cost it:
/// its offer is heard, but the requester matches nobody and says why; the
/// job expires unmatched, and nothing was escrowed.
/// A job on a one-provider swarm whose provider is set up by `setup`,
/// once it ended: it must have expired unmatched with nothing escrowed, and
/// its timeline must say `why` (the provider's refusal, or the matcher's).
async fn refused_everywhere(
    name: &str,
    setup: impl Fn(&mut peer::node::RunOptions),
    why: &[&str],
) -> anyhow::Result<peer::control::JobView> {
    let tmp = tempfile::tempdir()?;
    let (nodes, _, _) = swarm(tmp.path(), name, 1, 1, true, providers(setup)).await?;
    let c = requester(tmp.path(), 1).await?;
    let v = c.submit(&wine_job(tmp.path(), 20, 15)?).await?;
    let done = wait_job(&c, &v.id, Duration::from_secs(120), |v| v.done).await;
    assert_eq!(
        done.outcome.as_deref(),
        Some("expired: no offer fitted"),
        "{done:#?}"
    );
    assert_eq!(done.escrow, None, "{done:#?}");
    assert!(
        done.events
            .iter()
            .any(|e| why.iter().all(|w| e.what.contains(w))),
        "the requester did not say why: {:#?}",
        done.events
    );
    stop(nodes).await?;
    Ok(done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_with_no_bond_gets_no_contract() -> anyhow::Result<()> {
    let done = refused_everywhere("unbonded", |o| o.bond = Some(0), &["NoBond"]).await?;
    // Not even proposed to.
    assert_eq!(done.provider, None, "{done:#?}");
    Ok(())
}

/// A provider whose blob store is over its quota takes no job it could not
/// store: it refuses the proposal before any escrow, and the requester's
/// timeline says how much the job needs and how much room is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_over_its_store_quota_refuses_jobs_and_says_why() -> anyhow::Result<()> {
    // A quota of one byte: its store is over it from the first measure.
    let full = |o: &mut peer::node::RunOptions| o.blob.quota = Some(1);
    let why = [
        "refused it: the job needs",
        "which has 0.0 MiB for new jobs",
    ];
    refused_everywhere("store-full", full, &why).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_no_offer_fits_is_posted_as_a_bid_answered_and_settled() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    // The requester keeps no order book: whatever it submits fits no offer it
    // knows, so it posts an open bid; the provider answers with a proposal, the
    // requester accepts, and the provider sends the contract back directly.
    let (nodes, acc, _) = swarm(
        tmp.path(),
        "open-bid",
        1,
        1,
        true,
        |o: &mut peer::node::RunOptions| {
            if !o.provider && !o.oracle {
                o.book_capacity = 0;
            }
        },
    )
    .await?;
    let c = requester(tmp.path(), 0).await?;
    assert!(
        c.offers().await?.is_empty(),
        "a requester with no book kept an offer"
    );
    let v = c.submit(&wine_job(tmp.path(), 20, 60)?).await?;
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
    stop(nodes).await
}

/// The provider dies mid-job for good: the committee's "not delivered" verdict
/// refunds the escrow once the deadline (20 epochs of 2 s after the contract,
/// more than the 16 committees an oracle keeps by default) and the grace have
/// passed; a restarted requester keeps its ledger and its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_killed_mid_job_ends_in_a_refund_and_a_restart_keeps_the_ledger()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (mut nodes, acc, g) = swarm(tmp.path(), "killed-provider", 1, 1, true, |_| {}).await?;
    let req_dir = tmp.path().join("n4");
    let c = requester(tmp.path(), 1).await?;
    // Long enough (seconds) to be killed in the middle.
    let v = c.submit(&wine_job(tmp.path(), 10_000, 40)?).await?;
    let running = wait_job(&c, &v.id, Duration::from_secs(60), |v| {
        v.state == "running" || v.done
    })
    .await;
    let offers = c.offers().await?;
    assert_eq!(running.state, "running", "{running:#?} {offers:#?}");
    assert_eq!(running.provider, Some(acc[3].to_string()));
    nodes[3].take().unwrap().kill().await;

    let done = wait_job(&c, &v.id, Duration::from_secs(150), |v| v.done).await;
    assert_eq!(done.state, "settled", "{done:#?}");
    assert_eq!(done.outcome.as_deref(), Some("refunded: not delivered"));
    assert!(!done.verdict.unwrap().delivered, "{done:?}");
    assert_eq!(done.paid, Some(0));
    let escrow = done.escrow.unwrap();
    assert_eq!(done.refund.unwrap(), escrow - escrow * 2 / 100, "{done:?}");
    let before = c.balance(None).await?;
    let ledger = c.ledger(100).await?;
    assert!(ledger.tail.iter().any(|e| e.kind == "escrow-lock"));
    assert!(ledger.tail.iter().any(|e| e.kind == "settlement"));

    // Restart the requester from its data directory: the ledger and the job
    // are all there.
    nodes[4].take().unwrap().shutdown().await?;
    let r = node::start(DataDir::open(&req_dir)?, node_opts(&g, &[])).await?;
    let c = ControlClient::from_data_dir(&req_dir)?;
    let again = c.ledger(100).await?;
    assert!(again.entries >= ledger.entries, "{again:?}");
    assert_eq!(c.balance(None).await?.balance, before.balance);
    let kept = c.job(&v.id).await?;
    assert_eq!(kept.outcome, done.outcome, "{kept:#?}");
    // A data directory of another network is refused, not silently reused.
    r.shutdown().await?;
    let other = tests::genesis("another", &[], &[]);
    let err = node::start(DataDir::open(&req_dir)?, node_opts(&other, &[]))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("belongs to network"), "{err}");
    stop(nodes).await
}

/// Three Gaussian blobs with named classes and features, as a CSV file.
fn blobs_csv(rows: usize) -> String {
    let mut s = String::from("sepal,petal,width,species\n");
    let names = ["setosa", "versicolor", "virginica"];
    for r in 0..rows {
        let c = r % 3;
        let jitter = |k: usize| ((r * 7919 + k * 104_729) % 1000) as f32 / 1000.0 - 0.5;
        let (a, b, w) = (
            c as f32 * 3.0 + jitter(1),
            -(c as f32) * 2.0 + jitter(2),
            1.0 + jitter(3),
        );
        s.push_str(&format!("{a},{b},{w},{}\n", names[c]));
    }
    s
}

/// Houses: a price from size and rooms, with a curve and noise.
fn houses_csv(rows: usize) -> String {
    let mut s = String::from("size,rooms,age,price\n");
    for r in 0..rows {
        let jitter = |k: usize| ((r * 7919 + k * 104_729) % 1000) as f64 / 1000.0 - 0.5;
        let size = 40.0 + (r % 97) as f64;
        let rooms = 1.0 + (r % 5) as f64;
        let age = (r % 31) as f64;
        let price = 1500.0 * size + 8000.0 * rooms - 0.5 * age * age + 3000.0 * jitter(1);
        s.push_str(&format!("{size},{rooms},{age},{price:.2}\n"));
    }
    s
}

/// Your own data: CSV files imported (the code `cloudchain data import`
/// runs) train on a swarm, a classification and a regression; each job
/// settles ok, its training segments re-executed by the committee, and the
/// model is scored on the held-out rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_files_imported_train_on_a_swarm_to_classify_and_to_regress() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let got = compute::import::import_csv(
        blobs_csv(300).as_bytes(),
        &compute::import::ImportOptions {
            label: "species".into(),
            test_share: 0.2,
            standardize: true,
            name: "blobs".into(),
            task: compute::Task::Classify,
        },
    )?;
    assert_eq!(got.classes, ["setosa", "versicolor", "virginica"]);
    let data = tmp.path().join("blobs.safetensors");
    std::fs::write(&data, &got.bytes)?;
    let (nodes, _, _) = swarm(tmp.path(), "csv", 1, 1, true, |_| {}).await?;
    let c = requester(tmp.path(), 1).await?;
    let mut job = peer::control::JobRequest::train_mlp(data, 30, 1);
    if let protocol::JobKind::Train { layers, .. } = &mut job.kind {
        *layers = vec![3, 16, 3];
    }
    let v = c.submit(&job).await?;
    let done = wait_job(&c, &v.id, Duration::from_secs(120), |v| v.done).await;
    assert_eq!(done.outcome.as_deref(), Some("ok"), "{done:#?}");
    let m = done.metrics.as_ref().expect("training metrics");
    let acc = m.test_accuracy.expect("the held-out rows were scored");
    assert!(acc > 0.9, "test accuracy {acc}");
    // The provider told the requester how far the training was; its last
    // report (always sent) says all 30 epochs.
    let last = |v: &peer::control::JobView| v.progress.is_some_and(|p| p.epoch == p.epochs);
    let reported = wait_job(&c, &v.id, Duration::from_secs(60), last).await;
    let p = reported.progress.expect("a progress report");
    assert_eq!((p.epoch, p.epochs, p.step), (30, 30, p.steps), "{p:?}");
    assert!(p.loss.is_finite() && p.loss < 1.0, "{p:?}");
    // The model says how to feed it and read it: its data set's names and
    // scalers, its activations, its metrics.
    let model = std::fs::read(done.result.as_ref().expect("the model's path"))?;
    let meta = compute::tensors::metadata(&model)?;
    assert_eq!(
        meta["class_names"],
        r#"["setosa","versicolor","virginica"]"#
    );
    assert_eq!(meta["feature_names"], r#"["sepal","petal","width"]"#);
    assert_eq!(meta["task"], "classify");
    assert_eq!(meta["activations"], "relu,softmax");
    assert!(meta.contains_key("standardize_mean") && meta["metrics"].contains("test_accuracy"));

    // A regression: the price of a house.
    let got = compute::import::import_csv(
        houses_csv(400).as_bytes(),
        &compute::import::ImportOptions {
            label: "price".into(),
            test_share: 0.2,
            standardize: true,
            name: "houses".into(),
            task: compute::Task::Regress,
        },
    )?;
    let houses = tmp.path().join("houses.safetensors");
    std::fs::write(&houses, &got.bytes)?;
    let mut regress = peer::control::JobRequest::train_mlp(houses, 40, 2);
    if let protocol::JobKind::Train { layers, task, .. } = &mut regress.kind {
        *layers = vec![3, 16, 1];
        *task = protocol::TrainTask::Regress;
    }
    let v = c.submit(&regress).await?;
    let done = wait_job(&c, &v.id, Duration::from_secs(120), |v| v.done).await;
    assert_eq!(done.outcome.as_deref(), Some("ok"), "{done:#?}");
    let m = done.metrics.as_ref().expect("training metrics");
    let (rmse, r2) = (m.test_rmse.expect("test RMSE"), m.test_r2.expect("test R²"));
    // Standardized target: an RMSE of 1 is guessing the mean.
    eprintln!("regression on the swarm: test RMSE {rmse:.3} (standardized target), R² {r2:.3}");
    assert!(r2 > 0.9 && rmse < 0.35, "test RMSE {rmse}, R² {r2}");
    assert!(m.test_accuracy.is_none(), "{m:?}");
    let model = std::fs::read(done.result.as_ref().expect("the model's path"))?;
    let meta = compute::tensors::metadata(&model)?;
    assert_eq!(meta["task"], "regress");
    assert_eq!(meta["activations"], "relu,linear");
    assert!(meta.contains_key("target_mean") && meta.contains_key("target_scale"));
    assert!(!meta.contains_key("class_names"));
    // The model infers on the network: each row's price in its own units,
    // checked by the committee, with RMSE and R² on the labelled rows.
    let infer = peer::control::JobRequest {
        kind: protocol::JobKind::Infer { batch: 64 },
        model: Some(done.result.clone().expect("the model's path")),
        ..regress.clone()
    };
    let v = c.submit(&infer).await?;
    let inferred = wait_job(&c, &v.id, Duration::from_secs(120), |v| v.done).await;
    assert_eq!(inferred.outcome.as_deref(), Some("ok"), "{inferred:#?}");
    let im = inferred.metrics.as_ref().expect("inference metrics");
    assert!(im.train_r2.expect("R²") > 0.9, "{im:?}");
    let out = std::fs::read(inferred.result.as_ref().expect("the output's path"))?;
    let out = compute::tensors::parse(&out)?;
    let prices = compute::tensors::read_targets(&out, "y")?;
    assert_eq!(prices.len(), im.rows);
    // Prices in price units, not standardized ones.
    let mean = prices.iter().map(|p| f64::from(*p)).sum::<f64>() / prices.len() as f64;
    assert!(mean > 1_000.0, "mean predicted price {mean}");
    // Declared as a classification, the same data is refused at submit.
    let mut wrong = regress.clone();
    if let protocol::JobKind::Train { layers, task, .. } = &mut wrong.kind {
        *layers = vec![3, 16, 4];
        *task = protocol::TrainTask::Classify;
    }
    let err = format!("{:#}", c.submit(&wrong).await.unwrap_err());
    assert!(err.contains("task = \"regress\""), "{err}");
    // A gigabyte that is not a data set (a sparse file) is refused from its
    // header, before it is read into memory.
    let junk = tmp.path().join("junk.bin");
    std::fs::File::create(&junk)?.set_len(1 << 30)?;
    job.dataset = junk;
    let err = format!("{:#}", c.submit(&job).await.unwrap_err());
    assert!(err.contains("is not a data set"), "{err}");
    stop(nodes).await
}
