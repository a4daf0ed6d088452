//! Bring your own data: a CSV file to the safetensors a training job takes.
//!
//! One column is the label; every other column is a numeric feature. To
//! classify, the label's distinct values become the classes, in numeric order
//! when every value is a number and in text order otherwise; to regress, the
//! label is a number (the target), standardized with the features if asked
//! (`target_mean`, `target_scale` give it back: y = output · scale + mean). Rows go to a test split by a
//! hash of the file and the row number (the same file always splits the same),
//! and features may be standardized with the training rows' mean and spread.
//!
//! Output: `x` f32 `[rows, features]`, `y` u32 `[rows]`, and with a test share
//! `x_test`, `y_test`; metadata `name`, `task` (`classify`), `label`,
//! `classes` (how many), `class_names` and `feature_names` (JSON arrays),
//! `features` (comma-separated, as the built-in sets have it), `source_blake3`
//! (the CSV file's hash), the rows of each split, and with `--standardize`
//! `standardize_mean` and `standardize_std` (JSON arrays: apply them to new
//! rows before predicting).

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{ComputeError, Result};
use crate::mlp::{Labels, Task};
use crate::tensors::Writer;

/// The most cells (rows × features) an import holds: 1 GiB of f32.
pub const MAX_CELLS: usize = 1 << 28;
/// The most distinct label values a classification data set may have.
pub const MAX_CLASSES: usize = 1_024;
/// The most columns a CSV file may have.
pub const MAX_COLUMNS: usize = 4_096;

/// How to import a CSV file.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportOptions {
    /// The label column's header.
    pub label: String,
    /// The share of rows held out as the test split, in [0, 0.9].
    pub test_share: f64,
    /// Standardize each feature by the training rows' mean and standard deviation.
    pub standardize: bool,
    /// The data set's name in its metadata.
    pub name: String,
    /// Classify (the label's values are classes) or regress (it is a number).
    pub task: Task,
}

/// What an import produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    /// The safetensors file.
    pub bytes: Vec<u8>,
    pub features: Vec<String>,
    pub classes: Vec<String>,
    pub train_rows: usize,
    pub test_rows: usize,
    /// BLAKE3 of the CSV file.
    pub source: String,
}

fn bad(msg: String) -> ComputeError {
    ComputeError::Data(msg)
}

/// A reader of CSV bytes (a header line, fields trimmed), and the header's
/// column names: what the importer and the predictor both read.
pub(crate) fn csv_with_header(bytes: &[u8]) -> Result<(csv::Reader<&[u8]>, Vec<String>)> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| bad(format!("the header line: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    Ok((reader, header))
}

/// Import a CSV file's bytes (a header line, then one row per line).
pub fn import_csv(csv_bytes: &[u8], opts: &ImportOptions) -> Result<Imported> {
    if !(0.0..=0.9).contains(&opts.test_share) {
        return Err(ComputeError::Spec(format!(
            "the test share must be between 0 and 0.9, not {}",
            opts.test_share
        )));
    }
    let source = blake3::hash(csv_bytes);
    let (mut reader, header) = csv_with_header(csv_bytes)?;
    if header.len() > MAX_COLUMNS {
        return Err(bad(format!(
            "{} columns (at most {MAX_COLUMNS})",
            header.len()
        )));
    }
    let mut seen = BTreeSet::new();
    for h in &header {
        if h.is_empty() {
            return Err(bad("a column has no name in the header line".into()));
        }
        if !seen.insert(h) {
            return Err(bad(format!("two columns are named `{h}`")));
        }
    }
    let Some(label_at) = header.iter().position(|h| *h == opts.label) else {
        return Err(bad(format!(
            "no column `{}` (the columns are: {})",
            opts.label,
            header.join(", ")
        )));
    };
    let features: Vec<String> = header
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != label_at)
        .map(|(_, h)| h.clone())
        .collect();
    if features.is_empty() {
        return Err(bad("no feature columns besides the label".into()));
    }
    let mut x: Vec<f32> = Vec::new();
    let mut labels: Vec<String> = Vec::new();
    for (r, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| bad(format!("row {}: {e}", r + 1)))?;
        let line = rec.position().map_or(r as u64 + 2, |p| p.line());
        if x.len() + features.len() > MAX_CELLS {
            return Err(bad(format!(
                "more than {MAX_CELLS} values (rows × features): too large to import"
            )));
        }
        for (i, v) in rec.iter().enumerate() {
            if i == label_at {
                if v.is_empty() {
                    return Err(bad(format!(
                        "line {line}: the label `{}` is empty",
                        opts.label
                    )));
                }
                labels.push(v.to_string());
                continue;
            }
            let f: f32 = v.parse().map_err(|_| {
                bad(format!(
                    "line {line}, column `{}`: `{v}` is not a number",
                    header[i]
                ))
            })?;
            if !f.is_finite() {
                return Err(bad(format!(
                    "line {line}, column `{}`: `{v}` is not a finite number",
                    header[i]
                )));
            }
            x.push(f);
        }
    }
    let rows = labels.len();
    if rows == 0 {
        return Err(bad("no rows after the header line".into()));
    }
    let (classes, y) = match opts.task {
        Task::Classify => {
            let classes = class_names(&labels)?;
            let index: BTreeMap<&str, u32> = classes
                .iter()
                .enumerate()
                .map(|(i, c)| (c.as_str(), i as u32))
                .collect();
            let y = labels.iter().map(|l| index[l.as_str()]).collect();
            (classes, Labels::Classes(y))
        }
        Task::Regress => {
            let parse =
                |(r, l): (usize, &String)| {
                    l.parse::<f32>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                    bad(format!(
                        "row {}: the target `{}` is `{l}`, not a finite number (a regression \
                         predicts a number; to classify, drop --task regress)",
                        r + 1,
                        opts.label
                    ))
                })
                };
            let y = labels
                .iter()
                .enumerate()
                .map(parse)
                .collect::<Result<_>>()?;
            (Vec::new(), Labels::Values(y))
        }
    };

    // The split: a row is held out when the hash of the file and its number
    // falls under the share.
    let test: Vec<bool> = (0..rows)
        .map(|r| {
            let mut h = blake3::Hasher::new_derive_key("cloudchain/v1/csv-test-split");
            h.update(source.as_bytes());
            h.update(&(r as u64).to_le_bytes());
            let mut b = [0u8; 8];
            b.copy_from_slice(&h.finalize().as_bytes()[..8]);
            (u64::from_le_bytes(b) as f64 / u64::MAX as f64) < opts.test_share
        })
        .collect();
    let nf = features.len();
    let split = |want: bool| -> (Vec<f32>, Labels) {
        let idx: Vec<usize> = (0..rows).filter(|r| test[*r] == want).collect();
        let mut sx = Vec::with_capacity(idx.len() * nf);
        for r in &idx {
            sx.extend_from_slice(&x[r * nf..(r + 1) * nf]);
        }
        (sx, y.gather(&idx))
    };
    let (mut xtr, mut ytr) = split(false);
    let (mut xte, mut yte) = split(true);
    if ytr.is_empty() {
        return Err(bad(format!(
            "no training rows left of {rows} with a test share of {}",
            opts.test_share
        )));
    }
    let mut w = Writer::new();
    if opts.standardize {
        let n = ytr.len() as f64;
        let mut mean = vec![0f64; nf];
        for row in xtr.chunks(nf) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += f64::from(*v);
            }
        }
        for m in &mut mean {
            *m /= n;
        }
        let mut std = vec![0f64; nf];
        for row in xtr.chunks(nf) {
            for ((s, v), m) in std.iter_mut().zip(row).zip(&mean) {
                *s += (f64::from(*v) - m).powi(2) / n;
            }
        }
        // A constant feature keeps a spread of 1 (it only loses its mean);
        // so does one whose spread is rounding noise.
        let std: Vec<f64> = std
            .iter()
            .zip(&mean)
            .map(|(v, m)| {
                let s = v.sqrt();
                if s > 1e-9 * m.abs().max(1.0) { s } else { 1.0 }
            })
            .collect();
        for part in [&mut xtr, &mut xte] {
            for row in part.chunks_mut(nf) {
                for ((v, m), s) in row.iter_mut().zip(&mean).zip(&std) {
                    *v = ((f64::from(*v) - m) / s) as f32;
                }
            }
        }
        w = w
            .meta("standardize_mean", json(&mean)?)
            .meta("standardize_std", json(&std)?);
        // A regression's target too, by the training rows' figures.
        if let Labels::Values(t) = &ytr {
            let n = t.len() as f64;
            let mean = t.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var = t
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n;
            let scale = if var.sqrt() > 1e-9 * mean.abs().max(1.0) {
                var.sqrt()
            } else {
                1.0
            };
            for part in [&mut ytr, &mut yte] {
                if let Labels::Values(v) = part {
                    for t in v.iter_mut() {
                        *t = ((f64::from(*t) - mean) / scale) as f32;
                    }
                }
            }
            w = w
                .meta("target_mean", json(&mean)?)
                .meta("target_scale", json(&scale)?);
        }
    }
    let (train_rows, test_rows) = (ytr.len(), yte.len());
    let targets = |w: Writer, name: &str, y: &Labels| match y {
        Labels::Classes(c) => w.u32(name, &[c.len()], c),
        Labels::Values(v) => w.f32(name, &[v.len()], v),
    };
    w = targets(w.f32("x", &[train_rows, nf], &xtr), "y", &ytr);
    if test_rows > 0 {
        w = targets(w.f32("x_test", &[test_rows, nf], &xte), "y_test", &yte);
    }
    if opts.task == Task::Classify {
        w = w
            .meta("classes", classes.len().to_string())
            .meta("class_names", json(&classes)?);
    }
    let bytes = w
        .meta("name", opts.name.clone())
        .meta("task", opts.task.name())
        .meta("label", opts.label.clone())
        .meta("feature_names", json(&features)?)
        .meta("features", features.join(","))
        .meta("source_blake3", source.to_hex().to_string())
        .meta("rows_train", train_rows.to_string())
        .meta("rows_test", test_rows.to_string())
        .to_bytes()?;
    Ok(Imported {
        bytes,
        features,
        classes,
        train_rows,
        test_rows,
        source: source.to_hex().to_string(),
    })
}

/// The distinct labels in class order: numeric when all are numbers.
fn class_names(labels: &[String]) -> Result<Vec<String>> {
    let distinct: BTreeSet<&str> = labels.iter().map(String::as_str).collect();
    if distinct.len() > MAX_CLASSES {
        return Err(bad(format!(
            "the label has {} distinct values (at most {MAX_CLASSES} classes): is it a \
             continuous target? Only classification is supported",
            distinct.len()
        )));
    }
    let mut names: Vec<&str> = distinct.into_iter().collect();
    let numbers: Option<Vec<f64>> = names.iter().map(|s| s.parse::<f64>().ok()).collect();
    if let Some(nums) = numbers {
        let mut pairs: Vec<(f64, &str)> = nums.into_iter().zip(names).collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        names = pairs.into_iter().map(|(_, s)| s).collect();
    }
    Ok(names.into_iter().map(str::to_string).collect())
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| ComputeError::Data(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mlp::Data;

    fn opts(label: &str) -> ImportOptions {
        ImportOptions {
            label: label.into(),
            test_share: 0.0,
            standardize: false,
            name: "t".into(),
            task: Task::Classify,
        }
    }

    #[test]
    fn a_regression_target_is_a_number_standardized_with_its_scale_kept() {
        let mut csv = String::from("size,rooms,price\n");
        for i in 0..50 {
            csv.push_str(&format!(
                "{},{},{}\n",
                40 + i,
                1 + i % 4,
                1000.0 + 25.0 * f64::from(i)
            ));
        }
        let o = ImportOptions {
            task: Task::Regress,
            standardize: true,
            ..opts("price")
        };
        let got = import_csv(csv.as_bytes(), &o).unwrap();
        assert!(got.classes.is_empty());
        let meta = crate::tensors::metadata(&got.bytes).unwrap();
        assert_eq!(meta["task"], "regress");
        assert!(!meta.contains_key("class_names"));
        let mean: f64 = serde_json::from_str(&meta["target_mean"]).unwrap();
        let scale: f64 = serde_json::from_str(&meta["target_scale"]).unwrap();
        assert!((mean - 1612.5).abs() < 1e-9, "{mean}");
        let d = Data::read(&got.bytes, "x", "y", Task::Regress).unwrap();
        let Labels::Values(y) = &d.y else {
            panic!("not values")
        };
        // Standardized, and given back by the scale and mean.
        let back = f64::from(y[3]) * scale + mean;
        assert!((back - 1075.0).abs() < 1e-3, "{back}");
        // A target that is no number is refused with its row.
        let e = import_csv(b"a,price\n1,cheap\n", &o)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("row 1") && e.contains("not a finite number"),
            "{e}"
        );
    }

    #[test]
    fn a_csv_becomes_training_data_with_names() {
        let csv = b"a, b ,kind\n1,2,cat\n3,4,dog\n5,6,cat\n";
        let got = import_csv(csv, &opts("kind")).unwrap();
        assert_eq!(got.features, ["a", "b"]);
        assert_eq!(got.classes, ["cat", "dog"]);
        let d = Data::from_safetensors(&got.bytes, "x", "y").unwrap();
        assert_eq!((d.rows, d.cols), (3, 2));
        assert_eq!(d.x, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(d.y.classes().unwrap(), [0, 1, 0]);
        let meta = crate::tensors::metadata(&got.bytes).unwrap();
        assert_eq!(meta["class_names"], r#"["cat","dog"]"#);
        assert_eq!(meta["classes"], "2");
        assert_eq!(
            meta["source_blake3"],
            blake3::hash(csv).to_hex().to_string()
        );
    }

    #[test]
    fn numeric_labels_are_classes_in_numeric_order() {
        let csv = b"x,q\n0,10\n1,9\n2,10\n3,8\n";
        let got = import_csv(csv, &opts("q")).unwrap();
        assert_eq!(got.classes, ["8", "9", "10"]);
        let d = Data::from_safetensors(&got.bytes, "x", "y").unwrap();
        assert_eq!(d.y.classes().unwrap(), [2, 1, 2, 0]);
    }

    #[test]
    fn the_split_is_fixed_by_the_file_and_standardizing_uses_the_training_rows() {
        let mut csv = String::from("f,g,y\n");
        for i in 0..200 {
            csv.push_str(&format!("{},{},{}\n", i, 7, i % 3));
        }
        let o = ImportOptions {
            test_share: 0.25,
            standardize: true,
            ..opts("y")
        };
        let a = import_csv(csv.as_bytes(), &o).unwrap();
        let b = import_csv(csv.as_bytes(), &o).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.train_rows + a.test_rows, 200);
        assert!((30..70).contains(&a.test_rows), "{}", a.test_rows);
        let d = Data::from_safetensors(&a.bytes, "x", "y").unwrap();
        let n = d.rows as f32;
        let mean: f32 = d.x.chunks(2).map(|r| r[0]).sum::<f32>() / n;
        assert!(mean.abs() < 1e-4, "{mean}");
        // The constant feature loses its mean and keeps its scale.
        assert!(d.x.chunks(2).all(|r| r[1] == 0.0));
        assert!(Data::from_safetensors(&a.bytes, "x_test", "y_test").is_ok());
    }

    #[test]
    fn bad_files_say_where_and_why() {
        let cases: [(&[u8], &str, &str); 7] = [
            (b"a,b\n1,2\n", "c", "no column `c`"),
            (b"a,a,y\n1,2,0\n", "y", "two columns are named `a`"),
            (
                b"a,y\n1,0\nx,1\n",
                "y",
                "line 3, column `a`: `x` is not a number",
            ),
            (b"a,y\nNaN,0\n", "y", "not a finite number"),
            (b"a,y\n1,\n", "y", "the label `y` is empty"),
            (b"a,y\n1,0\n2\n", "y", "row 2"),
            (b"a,y\n", "y", "no rows"),
        ];
        for (csv, label, want) in cases {
            let e = import_csv(csv, &opts(label)).unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
        let e = import_csv(b"y\n1\n", &opts("y")).unwrap_err().to_string();
        assert!(e.contains("no feature columns"), "{e}");
        let mut many = String::from("x,y\n");
        for i in 0..(MAX_CLASSES + 1) {
            many.push_str(&format!("1,{i}.5\n"));
        }
        let e = import_csv(many.as_bytes(), &opts("y"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("continuous target"), "{e}");
    }
}

#[cfg(test)]
mod header_tests {
    use super::*;

    #[test]
    fn the_header_is_read_without_the_data_and_a_lying_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let got = import_csv(
            b"a,b,kind\n1,2,cat\n3,4,dog\n",
            &ImportOptions {
                label: "kind".into(),
                test_share: 0.0,
                standardize: false,
                name: "pets".into(),
                task: Task::Classify,
            },
        )
        .unwrap();
        let p = dir.path().join("d.safetensors");
        std::fs::write(&p, &got.bytes).unwrap();
        let h = crate::tensors::read_header(&p).unwrap();
        let names: Vec<&str> = h.tensors.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(names, ["x", "y"]);
        assert_eq!(h.tensors[0].1, "F32");
        assert_eq!(h.tensors[0].2, [2, 2]);
        assert_eq!(h.metadata["name"], "pets");
        assert_eq!(h.metadata["class_names"], r#"["cat","dog"]"#);
        // A header length past the file, or past any sane size: refused
        // before anything that size is allocated.
        for n in [u64::MAX, 1 << 40, 200] {
            let mut b = n.to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            std::fs::write(&p, &b).unwrap();
            let e = crate::tensors::read_header(&p).unwrap_err().to_string();
            assert!(e.contains("not a safetensors file"), "{e}");
        }
        std::fs::write(&p, b"abc").unwrap();
        assert!(crate::tensors::read_header(&p).is_err());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes give a data set or an error, never a panic; what is
        /// imported reads back with as many labels as rows.
        #[test]
        fn any_file_imports_or_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                          share in 0.0f64..0.9, standardize: bool) {
            let o = ImportOptions { label: "y".into(), test_share: share, standardize, name: "p".into(), task: Task::Classify };
            if let Ok(got) = import_csv(&bytes, &o) {
                let d = crate::mlp::Data::from_safetensors(&got.bytes, "x", "y").unwrap();
                prop_assert_eq!(d.rows, got.train_rows);
                prop_assert!(d.y.classes().unwrap().iter().all(|c| (*c as usize) < got.classes.len()));
            }
        }

        /// Well-formed numeric files with a `y` column always import.
        #[test]
        fn numeric_files_import(rows in proptest::collection::vec((any::<i16>(), any::<i16>(), 0u8..5), 1..60)) {
            let mut s = String::from("a,b,y\n");
            for (a, b, y) in &rows {
                s.push_str(&format!("{a},{b},{y}\n"));
            }
            let o = ImportOptions { label: "y".into(), test_share: 0.0, standardize: true, name: "p".into(), task: Task::Classify };
            let got = import_csv(s.as_bytes(), &o).unwrap();
            prop_assert_eq!(got.train_rows, rows.len());
        }
    }
}
