//! `cloudchain data import` and `data inspect`, run as a user runs them.

use std::process::Command;

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
    let out = cloudchain(&[
        "--json",
        "data",
        "import",
        p,
        "--label",
        "kind",
        "--standardize",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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

    let out = cloudchain(&["--json", "data", "inspect", st.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
