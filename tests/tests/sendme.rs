//! A directory goes both ways between `cloudchain` and sendme, iroh's own
//! file-sending tool, byte-exact: sendme receives a collection ticket from
//! `cloudchain blob add DIR`, and `cloudchain blob get` receives sendme's.
//!
//! sendme is found through `$SENDME` or on PATH (`.ci/run` installs it with
//! `cargo install sendme`); without it the test says so and passes. Both sides
//! stay on 127.0.0.1 with no relay.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use peer::config::DataDir;
use peer::control::ControlClient;
use peer::node::{self, RunOptions};
use tests::wait_for;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A small tree: a text file and a 3 MB binary in a subdirectory.
fn tree(root: &Path) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    std::fs::create_dir_all(root.join("sub"))?;
    let files = vec![
        (PathBuf::from("a.txt"), b"hello from one side\n".to_vec()),
        (
            PathBuf::from("sub").join("b.bin"),
            (0..3_000_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
                .collect(),
        ),
    ];
    for (rel, bytes) in &files {
        std::fs::write(root.join(rel), bytes)?;
    }
    Ok(files)
}

fn same_tree(dir: &Path, files: &[(PathBuf, Vec<u8>)]) -> anyhow::Result<()> {
    for (rel, bytes) in files {
        let got = std::fs::read(dir.join(rel))
            .with_context(|| format!("{} missing", dir.join(rel).display()))?;
        anyhow::ensure!(&got == bytes, "{} differs", rel.display());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_goes_both_ways_between_cloudchain_and_sendme() -> anyhow::Result<()> {
    let Some(sendme) = tests::tool("SENDME", &["sendme"]) else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let g = tests::genesis("sendme-test", &[], &[]);
    let dir = tmp.path().join("node");
    let node = node::start(DataDir::init(&dir)?, RunOptions::loopback(g, vec![])).await?;
    let ctl = ControlClient::from_data_dir(&dir)?;

    // cloudchain → sendme: a collection ticket that sendme receives.
    let ours = tmp.path().join("ours");
    let files = tree(&ours)?;
    let added = ctl.add_blob(&ours, false).await?;
    let recv_dir = tmp.path().join("sendme-recv");
    std::fs::create_dir_all(&recv_dir)?;
    let out = wait_for("sendme receive", async {
        tokio::process::Command::new(&sendme)
            .args([
                "receive",
                &added.ticket,
                "--relay",
                "disabled",
                "--no-progress",
            ])
            .current_dir(&recv_dir)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("running sendme")
    })
    .await?;
    anyhow::ensure!(
        out.status.success(),
        "sendme receive failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // sendme writes the collection's files into its working directory.
    same_tree(&recv_dir, &files)?;

    // sendme → cloudchain: sendme's ticket, fetched by `blob get`.
    let theirs = tmp.path().join("theirs");
    let files = tree(&theirs)?;
    let mut send = tokio::process::Command::new(&sendme)
        .args(["send", "--relay", "disabled", "--ticket-type", "addresses"])
        .args(["--magic-ipv4-addr", "127.0.0.1:0", "--no-progress"])
        .arg(&theirs)
        // sendme keeps its store in the working directory (and leaves it
        // there when it is killed): the test's own.
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting sendme send")?;
    let stdout = send.stdout.take().context("sendme stdout")?;
    let ticket = wait_for("sendme's ticket", async {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await? {
            if let Some(t) = line.split_whitespace().find(|w| w.starts_with("blob")) {
                return Ok(t.to_string());
            }
        }
        anyhow::bail!("sendme printed no ticket")
    })
    .await?;
    let got = tmp.path().join("got");
    let fetched = tokio::time::timeout(Duration::from_secs(60), ctl.get_blob(&ticket, &got))
        .await
        .context("blob get of sendme's ticket timed out")??;
    // sendme names the files under the directory's own name.
    assert_eq!(fetched.files.len(), 2, "{fetched:?}");
    same_tree(&got.join("theirs"), &files)?;
    let _ = send.kill().await;
    node.shutdown().await?;
    Ok(())
}
