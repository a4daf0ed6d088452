//! Running as a service: the systemd unit verifies, and `cloudchain run`
//! tells systemd when it is ready and when it stops (sd_notify), exiting
//! cleanly on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

fn cloudchain(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cloudchain"))
        .args(args)
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "cloudchain {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_unit_file_verifies() {
    let unit = include_str!("../dist/cloudchain-provider.service");
    assert!(unit.contains("Restart=on-failure") && unit.contains("Type=notify"));
    assert!(unit.contains("User=cloudchain") && unit.contains("StateDirectory=cloudchain"));
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped the verify step: no systemd-analyze");
        return;
    };
    assert!(out.status.success());
    // Point it at this build (verify checks that the binary exists).
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cloudchain-provider.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/cloudchain",
            env!("CARGO_BIN_EXE_cloudchain"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_tells_systemd_it_is_ready_and_stops_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let d = dir.to_str().unwrap();
    cloudchain(&["--data-dir", d, "init"]);
    let account = cloudchain(&["--data-dir", d, "id", "--account"]);
    let genesis = tmp.path().join("genesis.bin");
    let g = genesis.to_str().unwrap();
    let fund = format!("{account}=10");
    cloudchain(&[
        "--data-dir",
        d,
        "genesis",
        g,
        "--balance",
        &fund,
        "--stake",
        &fund,
    ]);
    cloudchain(&["--data-dir", d, "join", g]);

    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    // Generous: a loaded machine may take a while to start a node.
    sock.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_cloudchain"))
        .args(["--data-dir", d, "--log-format", "json", "run", "--no-mdns"])
        .args([
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--blob-bind",
            "127.0.0.1:0",
        ])
        .args(["--no-port-mapping", "--metrics", "off"])
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("READY=1 from the node");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("READY=1"), "{msg:?}");
    // The control API answers once ready.
    let status = cloudchain(&["--json", "--data-dir", d, "status"]);
    assert!(status.contains(&account), "{status}");

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let n = sock.recv(&mut buf).expect("STOPPING=1 from the node");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("STOPPING=1"), "{msg:?}");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit {:?}", out.status);
    // Logs were JSON lines, as asked.
    let err = String::from_utf8_lossy(&out.stderr);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "not a JSON log line: {first:?}"
    );
}
