//! A usable model out (#16): the ONNX file `cloudchain model export` writes
//! gives, run by an independent runtime (Python's onnxruntime) on the raw
//! features, the predictions `cloudchain predict` gives, within 1e-5.
//!
//! The model is made as a requester gets it: a CSV file imported with
//! `--standardize`, a classifier trained on it, and the data set's metadata
//! (task, feature and class names, scaler) copied into the model file, as the
//! requester's node does. A regression model (one output, a target scale) is
//! checked the same way.
//!
//! Needs a Python with onnxruntime and numpy: `$ONNX_PYTHON`, else
//! `target/onnx-venv/bin/python` (`python3 -m venv target/onnx-venv &&
//! target/onnx-venv/bin/pip install onnxruntime numpy`); without it the test
//! says so and passes, unless `CLOUDCHAIN_REQUIRE_TOOLS` is set.

use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use compute::mlp::Mlp;
use compute::predict::Predictions;
use compute::tensors::{self, Writer};
use compute::workload::{TrainSpec, WorkloadSpec, run_workload};
use serde_json::Value;

/// How far the runtime's numbers may be from ours.
const TOL: f32 = 1e-5;

/// Runs the exported model on the CSV file's raw feature columns (by name) and
/// prints every output as JSON; checks the file with `onnx.checker` too when
/// the `onnx` package is installed.
const RUN_ONNX: &str = r#"
import csv, json, sys
import numpy as np
import onnxruntime as ort

model, data, features = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
try:
    import onnx
    onnx.checker.check_model(onnx.load(model), full_check=True)
    checked = onnx.__version__
except ImportError:
    checked = None
with open(data, newline="") as f:
    rows = list(csv.DictReader(f))
x = np.array([[float(r[c]) for c in features] for r in rows], dtype=np.float32)
s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
names = [o.name for o in s.get_outputs()]
out = dict(zip(names, s.run(None, {"x": x})))
meta = s.get_modelmeta().custom_metadata_map
json.dump({
    "ort": ort.__version__,
    "checked": checked,
    "inputs": [[i.name, i.type, i.shape] for i in s.get_inputs()],
    "meta": meta,
    "out": {k: v.tolist() for k, v in out.items()},
}, sys.stdout)
"#;

/// The Python that runs onnxruntime, or `None` (the test then skips).
fn python() -> Option<PathBuf> {
    tests::tool_at(
        "ONNX_PYTHON",
        &tests::target_dir().join("onnx-venv/bin/python"),
    )
}

/// 300 rows of 4 features on very different scales (standardizing matters)
/// and 3 named classes, the label column between the features; the same
/// every time.
fn csv_file() -> String {
    let mut s = String::from("length,weight,species,temp,depth\n");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let species = ["alpha", "beta", "gamma"];
    for i in 0..300 {
        let c = i % 3;
        let length = 120.0 + 15.0 * c as f64 + 10.0 * next();
        let weight = 0.02 * (1.0 + c as f64) + 0.01 * next();
        let temp = -5.0 - 3.0 * c as f64 + 4.0 * next();
        let depth = 1500.0 + 400.0 * next();
        s.push_str(&format!(
            "{length:.3},{weight:.5},{},{temp:.3},{depth:.1}\n",
            species[c]
        ));
    }
    s
}

/// The data set's metadata that the requester's node copies into the model.
const COPIED: [&str; 5] = [
    "task",
    "feature_names",
    "class_names",
    "standardize_mean",
    "standardize_std",
];

/// `model` with `meta` in its metadata (besides its own `layers`).
fn with_metadata(model: &Mlp, meta: &[(&str, String)]) -> anyhow::Result<Vec<u8>> {
    let mut w = Writer::new().meta(
        "layers",
        model
            .layers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
    );
    for (k, v) in meta {
        w = w.meta(k, v.clone());
    }
    for l in 0..model.depth() {
        let (i, o) = (model.layers[l], model.layers[l + 1]);
        w = w
            .f32(&format!("w{l}"), &[i, o], &model.w[l])
            .f32(&format!("b{l}"), &[o], &model.b[l]);
    }
    Ok(w.to_bytes()?)
}

/// The CSV file imported with `--standardize`, and a classifier trained on it
/// with the data set's metadata: what a requester gets back.
fn trained_classifier(csv: &str) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let data = compute::import::import_csv(
        csv.as_bytes(),
        &compute::import::ImportOptions {
            label: "species".into(),
            test_share: 0.2,
            standardize: true,
            name: "fish".into(),
            task: compute::Task::Classify,
        },
    )?;
    let spec = WorkloadSpec::Train(TrainSpec::new(vec![4, 16, 3], 30, 32, 0.1, 7));
    let out = run_workload(&compute::CpuBackend::new(), &spec, &data.bytes, None)?;
    let acc = out.metrics.test_accuracy.context("a test split")?;
    ensure!(
        acc > 0.8,
        "the classifier learned little: test accuracy {acc}"
    );
    let meta = tensors::metadata(&data.bytes)?;
    let copied: Vec<(&str, String)> = COPIED
        .iter()
        .filter_map(|k| meta.get(*k).map(|v| (*k, v.clone())))
        .collect();
    ensure!(
        copied.len() == COPIED.len(),
        "the data set lacks {COPIED:?}"
    );
    let model = with_metadata(&Mlp::from_safetensors(&out.output)?, &copied)?;
    Ok((data.bytes, model))
}

/// `cloudchain ARGS…`, in this process.
fn cloudchain(args: &[&Path]) -> anyhow::Result<()> {
    let mut argv = vec![std::ffi::OsString::from("cloudchain")];
    argv.extend(args.iter().map(|a| a.as_os_str().to_owned()));
    peer::cli::run_args(argv)
}

/// The exported model run by onnxruntime on the CSV file's raw columns.
/// In `dir` (holding `model.safetensors` and `fish.csv`): `cloudchain
/// predict` into `predicted.csv` and `cloudchain model export` into
/// `model.onnx`; gives the library's own predictions of the CSV's rows.
fn predict_and_export(dir: &Path, model: &[u8], csv: &str) -> anyhow::Result<Predictions> {
    let p = |n: &str| dir.join(n);
    cloudchain(&[
        "predict".as_ref(),
        &p("model.safetensors"),
        &p("fish.csv"),
        "--out".as_ref(),
        &p("predicted.csv"),
    ])?;
    cloudchain(&[
        "model".as_ref(),
        "export".as_ref(),
        &p("model.safetensors"),
        "--onnx".as_ref(),
        &p("model.onnx"),
    ])?;
    let m = compute::predict::Model::from_safetensors(model)?;
    let inputs = compute::predict::read_inputs(csv.as_bytes(), &m.info)?;
    Ok(m.predict(&inputs.x, inputs.rows, inputs.scale)?)
}

/// onnxruntime in `py` on `dir`'s `model.onnx`, fed the raw features of
/// `fish.csv`.
fn run_onnx(py: &Path, dir: &Path) -> anyhow::Result<Value> {
    let (model, csv) = (dir.join("model.onnx"), dir.join("fish.csv"));
    let features = "length,weight,temp,depth";
    let script = model.with_file_name("run_onnx.py");
    std::fs::write(&script, RUN_ONNX)?;
    let out = std::process::Command::new(py)
        .arg(&script)
        .arg(&model)
        .arg(&csv)
        .arg(features)
        .output()
        .with_context(|| format!("cannot run {}", py.display()))?;
    ensure!(
        out.status.success(),
        "onnxruntime failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    eprintln!(
        "onnxruntime {} ran {}; onnx.checker {}",
        v["ort"],
        model.display(),
        v["checked"]
            .as_str()
            .map_or("not installed: not checked".into(), |c| format!(
                "{c}: passed"
            ))
    );
    Ok(v)
}

/// A `[rows][cols]` JSON array of numbers, flattened to f32.
fn floats(v: &Value) -> anyhow::Result<Vec<f32>> {
    let mut out = Vec::new();
    for row in v.as_array().context("an array")? {
        match row.as_array() {
            Some(r) => out.extend(r.iter().filter_map(Value::as_f64).map(|x| x as f32)),
            None => out.push(row.as_f64().context("a number")? as f32),
        }
    }
    Ok(out)
}

/// The largest difference between `ours` and `theirs`, relative to the size
/// of the value when that exceeds 1; fails past [`TOL`].
fn agree(what: &str, ours: &[f32], theirs: &[f32]) -> anyhow::Result<f32> {
    ensure!(
        ours.len() == theirs.len(),
        "{what}: {} values here, {} from onnxruntime",
        ours.len(),
        theirs.len()
    );
    let mut worst = 0f32;
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let d = (a - b).abs() / a.abs().max(1.0);
        ensure!(d <= TOL, "{what}[{i}]: {a} here, {b} from onnxruntime");
        worst = worst.max(d);
    }
    eprintln!(
        "{what}: largest difference {worst:e} over {} values",
        ours.len()
    );
    Ok(worst)
}

#[test]
fn an_exported_classifier_predicts_in_onnxruntime_what_cloudchain_predicts() -> anyhow::Result<()> {
    let Some(py) = python() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let csv = csv_file();
    let (data, model) = trained_classifier(&csv)?;
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("fish.csv"), &csv)?;
    std::fs::write(p("fish.safetensors"), &data)?;
    std::fs::write(p("model.safetensors"), &model)?;

    // `cloudchain predict` on the raw CSV file, `cloudchain model export`,
    // and the same predictions through the library, for the logits.
    let ours = predict_and_export(dir.path(), &model, &csv)?;
    ensure!(
        std::fs::read(p("predicted.csv"))? == ours.to_csv()?,
        "`cloudchain predict` wrote other predictions than the library gives"
    );
    let Predictions::Classes {
        class_names,
        logits,
        probabilities,
        labels,
    } = &ours
    else {
        anyhow::bail!("a classifier predicted values");
    };
    ensure!(
        class_names == &["alpha", "beta", "gamma"],
        "{class_names:?}"
    );
    ensure!(labels.len() == 300);

    let got = run_onnx(&py, dir.path())?;
    ensure!(
        got["inputs"] == serde_json::json!([["x", "tensor(float)", ["rows", 4]]]),
        "input {}",
        got["inputs"]
    );
    ensure!(got["meta"]["class_names"] == r#"["alpha","beta","gamma"]"#);
    ensure!(got["meta"]["task"] == "classify");
    agree("logits", logits, &floats(&got["out"]["logits"])?)?;
    agree(
        "probabilities",
        probabilities,
        &floats(&got["out"]["probabilities"])?,
    )?;
    let theirs: Vec<u32> = got["out"]["label"]
        .as_array()
        .context("labels")?
        .iter()
        .filter_map(Value::as_u64)
        .map(|l| l as u32)
        .collect();
    ensure!(&theirs == labels, "labels differ");

    // The data set's own rows, already standardized by the same scaler, are
    // taken as they are (standardized twice, they would predict little).
    let m = compute::predict::Model::from_safetensors(&model)?;
    let from_set = compute::predict::read_inputs(&data, &m.info)?;
    ensure!(from_set.scale == compute::predict::InputScale::Standardized);
    let Predictions::Classes { labels, .. } =
        m.predict(&from_set.x, from_set.rows, from_set.scale)?
    else {
        anyhow::bail!("a classifier predicted values");
    };
    let y = compute::mlp::Data::from_safetensors(&data, "x", "y")?.y;
    let y = y.classes().context("class labels")?;
    let right = labels.iter().zip(y).filter(|(a, b)| a == b).count();
    ensure!(right * 10 > y.len() * 8, "{right} of {} right", y.len());
    Ok(())
}

#[test]
fn an_exported_regression_predicts_in_onnxruntime_what_cloudchain_predicts() -> anyhow::Result<()> {
    let Some(py) = python() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let p = |n: &str| dir.path().join(n);
    let csv = csv_file();
    std::fs::write(p("fish.csv"), &csv)?;
    let features = r#"["length","weight","temp","depth"]"#;
    let model = with_metadata(
        &Mlp::init(&[4, 8, 8, 1], 11)?,
        &[
            ("task", "regress".into()),
            ("feature_names", features.into()),
            ("standardize_mean", "[127.5,0.045,-8.0,1700.0]".into()),
            ("standardize_std", "[12.5,0.02,3.0,115.0]".into()),
            ("target_mean", "250.0".into()),
            ("target_scale", "40.0".into()),
        ],
    )?;
    std::fs::write(p("model.safetensors"), &model)?;
    let ours = predict_and_export(dir.path(), &model, &csv)?;
    ensure!(std::fs::read(p("predicted.csv"))? == ours.to_csv()?);
    let Predictions::Values { y } = &ours else {
        anyhow::bail!("a regression predicted classes");
    };
    // Not the untrained network's raw output: the scale is applied.
    ensure!(y.iter().any(|v| (v - 250.0).abs() > 1.0), "{y:?}");

    let got = run_onnx(&py, dir.path())?;
    ensure!(got["meta"]["task"] == "regress");
    ensure!(got["out"].as_object().map(|o| o.len()) == Some(1));
    agree("y", y, &floats(&got["out"]["y"])?)?;
    Ok(())
}
