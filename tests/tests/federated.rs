//! Federated learning on a loopback swarm: three providers each hold a shard
//! of the wine-quality data that never leaves them; a requester's federated
//! job trains a model over several rounds of DP-SGD at each owner, checked by
//! the committee without the data, and each owner's ε is in the ledger.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::{Path, PathBuf};
use std::time::Duration;

use compute::mlp::Data;
use compute::{CpuBackend, TrainSpec, WorkloadSpec, run_workload};
use peer::control::ControlClient;
use peer::node::federated::{FedRequest, FedView};
use protocol::DpParams;
use tests::{settled_in, stop, swarm};

fn shards(dir: &Path) -> (Vec<PathBuf>, Vec<u8>) {
    peer::demo::wine_shards(dir, 3).unwrap()
}

fn accuracy(model: &[u8], test: &[u8]) -> f64 {
    peer::demo::accuracy(model, test).unwrap()
}

fn request(like: &Path, epsilon: f64) -> FedRequest {
    peer::demo::wine_federation(like, epsilon)
}

/// A swarm (see [`swarm`]) whose providers, nodes 3, 4 and 5, each hold one
/// shard of the wine data with a budget of ε 60; its requester (node 6) once
/// it sees the three offers. With the shards' files and the test rows.
#[allow(clippy::type_complexity)]
async fn owners(
    tmp: &Path,
    name: &str,
) -> anyhow::Result<(
    Vec<PathBuf>,
    Vec<u8>,
    Vec<Option<peer::node::RunningNode>>,
    Vec<protocol::AccountId>,
    ControlClient,
)> {
    let (files, test) = shards(tmp);
    for (k, f) in files.iter().enumerate() {
        let budget = peer::held::Budget {
            epsilon: 60.0,
            per_requester: 60.0,
            delta: 1e-5,
        };
        peer::held::offer(&tmp.join(format!("n{}", 3 + k)), f, budget)?;
    }
    let (nodes, acc, _) = swarm(tmp, name, 3, 1, true, |_| {}).await?;
    let c = ControlClient::from_data_dir(&tmp.join("n6"))?;
    settled_in(&c, 6, 3).await?;
    Ok((files, test, nodes, acc, c))
}

async fn wait_done(c: &ControlClient, id: &str) -> FedView {
    let wait = async {
        loop {
            let v = c.federation(id).await.unwrap();
            if v.done {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    match tokio::time::timeout(Duration::from_secs(600), wait).await {
        Ok(v) => v,
        Err(_) => panic!(
            "the federated job did not end: {:#?}",
            c.federation(id).await
        ),
    }
}

/// Three owners, five rounds: the job settles every round, the model is
/// within 5 points of DP-SGD on all the rows at the same ε, and each owner's
/// ε in the ledger is the accountant's. A second job that asks more ε than
/// an owner has left is refused, owner by owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_job_trains_across_three_owners_and_spends_their_budgets_in_the_ledger()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (files, test, nodes, acc, c) = owners(tmp.path(), "federated").await?;

    let req = request(&files[0], 40.0);
    let v = c.federate(&req).await?;
    assert_eq!(v.owners.len(), 3, "{v:#?}");
    let done = wait_done(&c, &v.id).await;
    assert_eq!(done.state, "done", "{done:#?}");
    assert_eq!(done.round, req.rounds);
    for o in &done.owners {
        assert_eq!(o.rounds_done, req.rounds, "{done:#?}");
        assert!(o.dropped.is_none(), "{done:#?}");
        assert!(acc[3..6].iter().any(|a| a.to_string() == o.account));
        // The ledger records the accountant's ε (in millionths, rounded up).
        let recorded = o.epsilon_in_ledger.expect("the owner's ε in the ledger");
        assert!((recorded - o.epsilon).abs() <= 1e-6, "{o:?}");
    }
    // Every round's job is an ordinary job of the requester's, saying its round.
    let rounds: Vec<String> = c
        .jobs()
        .await?
        .into_iter()
        .filter(|j| j.kind.starts_with("fed-round"))
        .map(|j| j.kind)
        .collect();
    assert_eq!(rounds.len(), 15, "{rounds:?}");
    assert!(rounds.iter().any(|k| k == "fed-round 5/5"), "{rounds:?}");
    let model = std::fs::read(done.model.as_ref().expect("the final model"))?;
    let fed = accuracy(&model, &test);

    // DP-SGD on all the rows at once, at the largest ε an owner spent.
    let eps = done.owners.iter().map(|o| o.epsilon).fold(0.0, f64::max);
    let all: Vec<u8> = {
        let parts: Vec<Data> = files
            .iter()
            .map(|f| Data::from_safetensors(&std::fs::read(f).unwrap(), "x", "y").unwrap())
            .collect();
        let rows: usize = parts.iter().map(|d| d.rows).sum();
        let x: Vec<f32> = parts.iter().flat_map(|d| d.x.clone()).collect();
        let y: Vec<u32> = parts
            .iter()
            .flat_map(|d| match &d.y {
                compute::mlp::Labels::Classes(c) => c.clone(),
                compute::mlp::Labels::Values(_) => unreachable!(),
            })
            .collect();
        compute::tensors::Writer::new()
            .f32("x", &[rows, 11], &x)
            .u32("y", &[rows], &y)
            .to_bytes()?
    };
    let rows = Data::from_safetensors(&all, "x", "y")?.rows;
    let epochs = (req.rounds * req.local_epochs) as usize;
    let batch = req.batch as usize;
    let mut central = TrainSpec::new(vec![11, 16, 6], epochs, batch, req.learning_rate, 3);
    let q = batch as f64 / rows as f64;
    let sigma = compute::dp::sigma_for(eps, 1e-5, q, central.total_steps(rows)).unwrap();
    central.dp = Some(compute::DpConfig {
        clip: 1.0,
        sigma: sigma as f32,
        delta: 1e-5,
    });
    let out = run_workload(
        &CpuBackend::new(),
        &WorkloadSpec::Train(central),
        &all,
        None,
    )?;
    let centralized = accuracy(&out.output, &test);
    eprintln!(
        "federated: test accuracy {fed:.3} over 3 owners (ε {eps:.2} each at most); \
         centralized DP-SGD at that ε: {centralized:.3}"
    );
    assert!(
        fed >= centralized - 0.05,
        "federated {fed:.3}, centralized {centralized:.3}"
    );
    assert!(fed > 0.45, "federated {fed:.3}");

    // Each owner has 60 − ε left; a job asking more than that is refused
    // before anything is escrowed, owner by owner.
    let greedy = FedRequest {
        rounds: 40,
        dp: DpParams {
            clip_norm: 1.0,
            noise_multiplier: 0.3,
        },
        ..request(&files[0], 1_000.0)
    };
    let err = format!("{:#}", c.federate(&greedy).await.unwrap_err());
    assert!(
        err.contains("0 data owners") && err.contains("left"),
        "{err}"
    );
    stop(nodes).await
}

/// An owner that leaves mid-job is dropped at the round it missed (its
/// round's job ends unanswered or undelivered, its escrow, if one was
/// locked, refunded); the job goes on with the other two, weighted anew, and
/// ends done; the owner keeps what it earned for the rounds it completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_leaves_mid_job_is_dropped_and_the_rest_finish() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (files, _, mut nodes, acc, c) = owners(tmp.path(), "fed-leave").await?;
    // Rounds long enough for a loaded machine; the owner that left is
    // dropped once its round's deadline passed.
    let req = FedRequest {
        rounds: 3,
        round_secs: 40,
        ..request(&files[0], 40.0)
    };
    let v = c.federate(&req).await?;
    // Once round 1 is averaged, the third owner goes for good.
    let wait = async {
        loop {
            if c.federation(&v.id).await?.round >= 2 {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(300), wait).await??;
    let gone = acc[5].to_string();
    if let Some(n) = nodes[5].take() {
        n.shutdown().await?;
    }
    let done = wait_done(&c, &v.id).await;
    assert_eq!(done.state, "done", "{done:#?}");
    let left = done.owners.iter().find(|o| o.account == gone).unwrap();
    assert!(left.dropped.is_some(), "{done:#?}");
    assert!(left.rounds_done >= 1 && left.rounds_done < 3, "{done:#?}");
    for o in done.owners.iter().filter(|o| o.account != gone) {
        assert_eq!(o.rounds_done, 3, "{done:#?}");
        assert!(o.dropped.is_none(), "{done:#?}");
    }
    assert!(
        done.events.iter().any(|e| e.what.contains("dropped")),
        "{:#?}",
        done.events
    );
    // It was paid for the round it completed.
    let earned = c.earnings(Some(&gone)).await?;
    assert!(earned.paid > 0, "{earned:?}");
    stop(nodes).await
}
