//! A testbed of real `cloudchain` processes on loopback completes a job per
//! requester and stops cleanly.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_processes_complete_a_job_per_requester() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_cloudchain"));
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        peer::testbed::run(exe, 5, tmp.path(), |_| {}),
    )
    .await??;
    assert_eq!((r.oracles, r.providers, r.requesters), (3, 1, 1));
    assert_eq!(r.jobs_ok, r.jobs_submitted);
    assert_eq!(r.sla_compliance, 1.0);
    assert!(r.provider_earnings[0] > 0, "{r:?}");
    assert!(tmp.path().join("testbed_jobs.csv").exists());
    Ok(())
}
