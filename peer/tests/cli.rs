//! The CLI as a user runs it: `data import` and `data inspect`, its conventions.

use std::process::Command;

/// Run the binary and require it to succeed (its stderr says why not).
fn ok(args: &[&str]) -> std::process::Output {
    let out = cloudchain(args);
    assert!(
        out.status.success(),
        "cloudchain {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn cloudchain(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cloudchain"))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn a_csv_file_is_imported_and_inspected() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("pets.csv");
    let mut s = String::from("weight,height,kind\n");
    for i in 0..50 {
        s.push_str(&format!("{},{},{}\n", i, i % 7, ["cat", "dog"][i % 2]));
    }
    std::fs::write(&csv, s).unwrap();
    let p = csv.to_str().unwrap();
    let out = ok(&[
        "--json",
        "data",
        "import",
        p,
        "--label",
        "kind",
        "--standardize",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["classes"], serde_json::json!(["cat", "dog"]));
    assert_eq!(v["features"], serde_json::json!(["weight", "height"]));
    let (train, test) = (
        v["rows_train"].as_u64().unwrap(),
        v["rows_test"].as_u64().unwrap(),
    );
    assert_eq!(train + test, 50);
    assert!(test > 0, "a fifth is held out by default");
    let st = tmp.path().join("pets.safetensors");
    assert!(st.exists());

    let out = ok(&["--json", "data", "inspect", st.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["metadata"]["class_names"], r#"["cat","dog"]"#);
    assert_eq!(v["metadata"]["label"], "kind");
    assert!(v["metadata"]["standardize_mean"].is_string());
    let names: Vec<&str> = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["x", "x_test", "y", "y_test"]);

    // A bad value names its line and column; nothing is written.
    std::fs::write(&csv, "weight,kind\n1,cat\nheavy,dog\n").unwrap();
    let bad = tmp.path().join("bad.safetensors");
    let out = cloudchain(&[
        "data",
        "import",
        p,
        "--label",
        "kind",
        "-o",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3, column `weight`"), "{err}");
    assert!(!bad.exists());
    // A file that is not safetensors is refused from its first bytes.
    let out = cloudchain(&["data", "inspect", p]);
    assert!(!out.status.success());
}

/// A reader that goes away (`| head`) ends the command quietly: no panic.
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let mut w = compute::tensors::Writer::new().f32("x", &[1, 1], &[1.0]);
    for i in 0..20_000 {
        w = w.meta(
            &format!("key{i:05}"),
            "a value long enough to fill the pipe",
        );
    }
    let st = tmp.path().join("big.safetensors");
    std::fs::write(&st, w.to_bytes().unwrap()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudchain"))
        .args(["data", "inspect", st.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with('x'), "{first}");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "a panic's exit code");
}

/// Under `--json` an error is a JSON object with a code and a message.
#[test]
fn errors_under_json_are_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let out = cloudchain(&[
        "--json",
        "--data-dir",
        tmp.path().to_str().unwrap(),
        "balance",
    ]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"]["code"].is_string(), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no running node")
    );
}

/// `id --account` prints the account alone, for scripts.
#[test]
fn id_account_prints_the_account_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    ok(&["--data-dir", d, "init"]);
    let out = ok(&["--data-dir", d, "id", "--account"]);
    let s = String::from_utf8(out.stdout).unwrap();
    assert_eq!(s.lines().count(), 1, "{s}");
    let a = s.trim();
    assert!(
        a.len() == 64 && a.chars().all(|c| c.is_ascii_hexdigit()),
        "{a}"
    );
}

/// A joining node runs `init` to learn its account, the operator puts that
/// account in the genesis, and `join` installs it on the same directory,
/// keeping the key (`init --genesis` refused: the key existed).
#[test]
fn a_node_joins_with_the_key_it_has() {
    let tmp = tempfile::tempdir().unwrap();
    let (op, me) = (tmp.path().join("op"), tmp.path().join("me"));
    let (op, me) = (op.to_str().unwrap(), me.to_str().unwrap());
    ok(&["--data-dir", op, "init"]);
    ok(&["--data-dir", me, "init"]);
    let account = |d: &str| {
        let out = cloudchain(&["--data-dir", d, "id", "--account"]);
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let mine = account(me);
    let g = tmp.path().join("genesis.bin");
    let bal = format!("{mine}=100");
    ok(&[
        "--data-dir",
        op,
        "genesis",
        g.to_str().unwrap(),
        "--balance",
        &bal,
    ]);
    let out = ok(&["--json", "--data-dir", me, "join", g.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["key_kept"], true);
    assert_eq!(v["account"], mine.as_str());
    assert_eq!(account(me), mine);
    assert!(std::path::Path::new(me).join("genesis.bin").exists());
    // Again: the same network is fine; another is refused.
    ok(&["--data-dir", me, "join", g.to_str().unwrap()]);
    let other = tmp.path().join("other.bin");
    ok(&[
        "--data-dir",
        op,
        "genesis",
        other.to_str().unwrap(),
        "--name",
        "other",
        "--balance",
        &bal,
    ]);
    let out = cloudchain(&["--data-dir", me, "join", other.to_str().unwrap()]);
    assert!(!out.status.success());
}
