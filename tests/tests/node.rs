//! Whole nodes (network, blob store, control API) on loopback, driven through the
//! control API as the CLI drives them.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use crdt_ledger::GenesisEntry;
use peer::config::DataDir;
use peer::control::ControlClient;
use peer::node::{self, RunOptions};
use tests::wait_for;

/// The offers in a node's book, once there is one (bounded by `wait_for`).
async fn offers_seen(
    client: &ControlClient,
    what: &str,
) -> anyhow::Result<Vec<peer::control::OfferView>> {
    wait_for(what, async {
        loop {
            let o = client.offers().await?;
            if !o.is_empty() {
                return Ok(o);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
}

fn loopback_opts(network: &GenesisEntry, bootstrap: Vec<libp2p::Multiaddr>) -> RunOptions {
    RunOptions::loopback(network.clone(), bootstrap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_added_on_one_node_is_fetched_by_ticket_on_another_and_survives_restart()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let network = tests::genesis("node-test", &[], &[]);
    let a_dir = tmp.path().join("a");
    let b_dir = tmp.path().join("b");
    let a = node::start(DataDir::init(&a_dir)?, loopback_opts(&network, vec![])).await?;
    // The listener comes up a moment after start: wait for it.
    let a_addr = a.dial_addr().await?;
    let b = node::start(
        DataDir::init(&b_dir)?,
        loopback_opts(&network, vec![a_addr]),
    )
    .await?;

    let file = tmp.path().join("model.bin");
    let content: Vec<u8> = (0..2_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &content)?;

    let ca = ControlClient::from_data_dir(&a_dir)?;
    let cb = ControlClient::from_data_dir(&b_dir)?;
    let added = ca.add_blob(&file, false).await?;
    assert_eq!(added.size, content.len() as u64);
    assert_eq!(added.hash, blake3::hash(&content).to_hex().to_string());

    let out = tmp.path().join("fetched.bin");
    let got = wait_for("the blob transfer", cb.get_blob(&added.ticket, &out)).await?;
    assert_eq!(got.bytes_fetched, content.len() as u64);
    assert_eq!(std::fs::read(&out)?, content);

    // By hash only: B holds it now; A's unknown-hash error is clear.
    let out2 = tmp.path().join("again.bin");
    cb.get_blob(&added.hash, &out2).await?;
    assert_eq!(std::fs::read(&out2)?, content);
    let missing = "ab".repeat(32);
    let err = cb.get_blob(&missing, &out2).await.unwrap_err().to_string();
    assert!(err.contains("not held here"), "{err}");

    // A directory goes as a collection (the format iroh's file-sending tools
    // use): its files come out under a new directory, byte-exact, and never
    // the collection's index as a file.
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("sub"))?;
    std::fs::write(tree.join("a.txt"), b"alpha")?;
    std::fs::write(tree.join("sub").join("model.bin"), &content)?;
    let coll = ca.add_blob(&tree, false).await?;
    assert_eq!(coll.files.len(), 2);
    assert_eq!(coll.size, 5 + content.len() as u64);
    let ticket: iroh_blobs::ticket::BlobTicket = coll.ticket.parse()?;
    assert_eq!(ticket.format(), iroh_blobs::BlobFormat::HashSeq);
    let outdir = tmp.path().join("tree-copy");
    let got = wait_for(
        "the collection transfer",
        cb.get_blob(&coll.ticket, &outdir),
    )
    .await?;
    assert_eq!(got.files.len(), 2);
    assert_eq!(std::fs::read(outdir.join("a.txt"))?, b"alpha");
    assert_eq!(
        std::fs::read(outdir.join("sub").join("model.bin"))?,
        content
    );
    // Into a directory that already holds something: refused, nothing written.
    let err = cb
        .get_blob(&coll.ticket, &outdir)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not empty"), "{err}");
    // One file as a one-file collection (what sendme receives).
    let one = ca.add_blob(&file, true).await?;
    assert_eq!(
        one.files,
        vec![("model.bin".to_string(), content.len() as u64)]
    );
    let onedir = tmp.path().join("one");
    cb.get_blob(&one.ticket, &onedir).await?;
    assert_eq!(std::fs::read(onedir.join("model.bin"))?, content);

    // A wrong token is refused.
    std::fs::write(b_dir.join(peer::control::TOKEN_FILE), "not-the-token")?;
    let bad = ControlClient::from_data_dir(&b_dir)?;
    let err = bad.status().await.unwrap_err();
    let code = err
        .downcast_ref::<peer::control::CliError>()
        .map(|e| e.code);
    assert_eq!(code, Some("unauthorized"), "{err}");

    // A second node on B's data directory is refused, and says why.
    let again = node::start(DataDir::open(&b_dir)?, loopback_opts(&network, vec![])).await;
    let Err(err) = again else {
        panic!("a second node started on one data directory");
    };
    let err = format!("{err:#}");
    assert!(
        err.contains(&format!("another node (pid {})", std::process::id())),
        "{err}"
    );

    // Restart B: its blobs persist in the data directory.
    b.shutdown().await?;
    let b = node::start(DataDir::open(&b_dir)?, loopback_opts(&network, vec![])).await?;
    assert!(b.blobs.has(&added.hash.parse()?).await?);
    let status = ControlClient::from_data_dir(&b_dir)?.status().await?;
    assert_eq!(status.account, b.account.to_string());

    b.shutdown().await?;
    a.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_benchmarks_its_device_and_its_offer_reaches_a_requester() -> anyhow::Result<()>
{
    let tmp = tempfile::tempdir()?;
    let network = tests::genesis("provider-test", &[], &[]);
    let p_dir = tmp.path().join("provider");
    let r_dir = tmp.path().join("requester");
    let mut opts = loopback_opts(&network, vec![]);
    opts.provider = true;
    let mut pd = DataDir::init(&p_dir)?;
    pd.config.provider.backend = "cpu".into();
    let p = node::start(pd, opts).await?;
    let p_addr = p.dial_addr().await?;
    let r = node::start(
        DataDir::init(&r_dir)?,
        loopback_opts(&network, vec![p_addr]),
    )
    .await?;
    let cr = ControlClient::from_data_dir(&r_dir)?;
    // The provider's first offer may go out before the requester joins the mesh;
    // it refreshes, and the requester also learns it on its first mesh message.
    // Wait (bounded) until the requester's order book holds it.
    let offers = offers_seen(&cr, "the provider's offer in the requester's book").await?;
    assert_eq!(offers[0].provider, p.account.to_string());
    assert!(offers[0].speed_cu_per_s > 0.0, "{offers:?}");
    assert_eq!(offers[0].class, "Cpu");
    r.shutdown().await?;
    p.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_gets_an_existing_offer_without_waiting_for_a_refresh() -> anyhow::Result<()>
{
    let tmp = tempfile::tempdir()?;
    let network = tests::genesis("late-joiner", &[], &[]);
    let mut pd = DataDir::init(&tmp.path().join("p"))?;
    pd.config.provider.backend = "cpu".into();
    let mut po = loopback_opts(&network, vec![]);
    po.provider = true;
    let p = node::start(pd, po).await?;
    let b = node::start(
        DataDir::init(&tmp.path().join("b"))?,
        loopback_opts(&network, vec![p.dial_addr().await?]),
    )
    .await?;
    // The provider's offer went out before this node existed; it knows only B.
    let r_dir = tmp.path().join("r");
    let r = node::start(
        DataDir::init(&r_dir)?,
        loopback_opts(&network, vec![b.dial_addr().await?]),
    )
    .await?;
    let cr = ControlClient::from_data_dir(&r_dir)?;
    let offers = offers_seen(&cr, "the existing offer at the late joiner").await?;
    assert_eq!(offers[0].provider, p.account.to_string());
    tests::stop([r, b, p].map(Some)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_the_prometheus_text_format() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let g = tests::genesis("metrics-test", &[], &[]);
    let a_dir = tmp.path().join("a");
    let mut opts = loopback_opts(&g, vec![]);
    opts.metrics = Some("127.0.0.1:0".parse()?);
    let a = node::start(DataDir::init(&a_dir)?, opts).await?;
    let b = node::start(
        DataDir::init(&tmp.path().join("b"))?,
        loopback_opts(&g, vec![a.dial_addr().await?]),
    )
    .await?;
    let status = ControlClient::from_data_dir(&a_dir)?.status().await?;
    let addr = status.metrics.expect("the metrics address in status");
    assert_eq!(
        std::fs::read_to_string(a_dir.join(peer::metrics::ADDR_FILE))?,
        addr
    );
    let url = format!("http://{addr}/metrics");
    // Wait for B's connection to show: one direct peer.
    let text = wait_for("a scrape that shows the peer", async {
        loop {
            let text = reqwest::get(&url).await?.error_for_status()?.text().await?;
            if text.contains("cloudchain_peers{connection=\"direct\"} 1") {
                return Ok(text);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await?;
    for want in [
        "# TYPE cloudchain_ledger_entries gauge",
        "cloudchain_finality_lag_epochs",
        "cloudchain_balance_tokens",
        "cloudchain_committee_member",
        // libp2p's own: the swarm's connections, identify, gossipsub.
        "libp2p_swarm_connections_established_total",
        "libp2p_identify_",
        "libp2p_gossipsub_",
        "# EOF",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    b.shutdown().await?;
    a.shutdown().await?;
    Ok(())
}
