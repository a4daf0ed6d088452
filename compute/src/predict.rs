//! A trained model where its requester is: what the model file says besides
//! its weights ([`ModelInfo`]), rows to run it on from a CSV file or a data set
//! ([`read_inputs`]), and its predictions ([`predict`]) on the CPU backend.
//!
//! The predictions are computed step for step as the graph that
//! [`crate::onnx::export`] writes computes them: raw features standardized in
//! f64 and rounded to f32 (as [`crate::import`] did to the training rows), the
//! MLP in f32, the regression target scaled back in f64. So a runtime that runs
//! the exported file agrees with [`predict`] to float rounding.
//!
//! A model file is a safetensors file (`w{l}` `[in, out]`, `b{l}` `[out]`) whose
//! metadata, all optional, says: `layers` ("11,32,6"), `task` (`classify`, the
//! default, or `regress`), `feature_names` and `class_names` (JSON arrays of
//! strings), `standardize_mean` and `standardize_std` (JSON arrays of numbers,
//! one per feature: the model was trained on (x − mean)/std), and for a
//! regression `target_mean` and `target_scale` (JSON numbers: the model's one
//! output o means y = o·scale + mean). The file may come from anywhere: every
//! key is checked against the weights before anything runs.

mod info;
mod inputs;

pub use info::{KNOWN_KEYS, ModelInfo, Scaler, TargetScale, Task};
pub use inputs::{InputScale, Inputs, read_inputs};

use serde::Serialize;
use serde::ser::{SerializeSeq, SerializeStruct};

use crate::cpu::CpuBackend;
use crate::error::{ComputeError, Result};
use crate::mlp::{self, Mlp, Ops};
use crate::tensors;

/// Rows per forward pass.
const BATCH: usize = 256;

/// A model file read and checked: weights and what they mean.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub mlp: Mlp,
    pub info: ModelInfo,
}

impl Model {
    /// Reads a model file; see the module's documentation for what is checked.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        let mlp = Mlp::from_safetensors(bytes)?;
        let info = ModelInfo::read(tensors::metadata(bytes)?, &mlp)?;
        Ok(Self { mlp, info })
    }

    /// Runs the model on `rows × features` values.
    pub fn predict(&self, x: &[f32], rows: usize, scale: InputScale) -> Result<Predictions> {
        let f = self.info.features();
        if Some(x.len()) != rows.checked_mul(f) {
            return Err(ComputeError::Data(format!(
                "{} values are not {rows} rows of {f} features",
                x.len()
            )));
        }
        let standardized;
        let x = match (&self.info.scaler, scale) {
            (Some(s), InputScale::Raw) => {
                standardized = s.apply(x);
                &standardized[..]
            }
            _ => x,
        };
        let be = CpuBackend::new();
        let ops = Ops::new(&be);
        let out = self.info.outputs();
        let mut o = Vec::with_capacity(rows * out);
        for start in (0..rows).step_by(BATCH) {
            let n = BATCH.min(rows - start);
            let acts = self.mlp.forward(&ops, &x[start * f..(start + n) * f], n)?;
            o.extend_from_slice(&acts[self.mlp.depth()]);
        }
        if let Some(i) = o.iter().position(|v| !v.is_finite()) {
            return Err(ComputeError::Data(format!(
                "row {}: the model's output overflows (are the features on the scale it was \
                 trained on?)",
                i / out
            )));
        }
        Ok(match self.info.task {
            Task::Classify => Predictions::Classes {
                class_names: self.info.class_labels(),
                probabilities: o.chunks(out).flat_map(softmax).collect(),
                labels: mlp::argmax_rows(&o, out),
                logits: o,
            },
            Task::Regress => Predictions::Values {
                y: match self.info.target {
                    Some(t) => o.iter().map(|v| t.apply(*v)).collect(),
                    None => o,
                },
            },
        })
    }
}

/// Softmax of one row, in f64 (rounded to f32 at the end).
fn softmax(z: &[f32]) -> Vec<f32> {
    let max = z
        .iter()
        .fold(f64::NEG_INFINITY, |m, v| m.max(f64::from(*v)));
    let e: Vec<f64> = z.iter().map(|v| (f64::from(*v) - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| (v / sum) as f32).collect()
}

/// What a model says about each row.
#[derive(Debug, Clone, PartialEq)]
pub enum Predictions {
    /// A classifier's: per row, its logits and probabilities (`rows × classes`,
    /// row-major) and the index of its most likely class.
    Classes {
        class_names: Vec<String>,
        logits: Vec<f32>,
        probabilities: Vec<f32>,
        labels: Vec<u32>,
    },
    /// A regression's: one number per row.
    Values { y: Vec<f32> },
}

impl Predictions {
    /// Rows predicted.
    pub fn rows(&self) -> usize {
        match self {
            Predictions::Classes { labels, .. } => labels.len(),
            Predictions::Values { y } => y.len(),
        }
    }

    /// A CSV file: `row,label,p_<class>…` (rows from 0, a probability column
    /// per class in class order), or `row,y`.
    pub fn to_csv(&self) -> Result<Vec<u8>> {
        let mut w = csv::Writer::from_writer(Vec::new());
        let err = |e: csv::Error| ComputeError::Data(format!("writing CSV: {e}"));
        match self {
            Predictions::Classes {
                class_names,
                probabilities,
                labels,
                ..
            } => {
                let mut head = vec!["row".to_string(), "label".to_string()];
                head.extend(class_names.iter().map(|c| format!("p_{c}")));
                w.write_record(&head).map_err(err)?;
                let c = class_names.len().max(1);
                for (r, (label, p)) in labels.iter().zip(probabilities.chunks(c)).enumerate() {
                    let mut rec = vec![r.to_string(), name(class_names, *label).to_string()];
                    rec.extend(p.iter().map(f32::to_string));
                    w.write_record(&rec).map_err(err)?;
                }
            }
            Predictions::Values { y } => {
                w.write_record(["row", "y"]).map_err(err)?;
                for (r, v) in y.iter().enumerate() {
                    w.write_record([r.to_string(), v.to_string()])
                        .map_err(err)?;
                }
            }
        }
        w.into_inner()
            .map_err(|e| ComputeError::Data(format!("writing CSV: {e}")))
    }
}

/// Class `i`'s name (`?` for an index past the names: the fields are public).
fn name(class_names: &[String], i: u32) -> &str {
    class_names.get(i as usize).map_or("?", String::as_str)
}

/// One JSON object per row: `{row, label, class, probabilities, logits}` or
/// `{row, y}` (f32 values written as their shortest decimal).
impl Serialize for Predictions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.rows()))?;
        match self {
            Predictions::Classes {
                class_names,
                logits,
                probabilities,
                labels,
            } => {
                let c = class_names.len().max(1);
                for (row, ((label, p), z)) in labels
                    .iter()
                    .zip(probabilities.chunks(c))
                    .zip(logits.chunks(c))
                    .enumerate()
                {
                    seq.serialize_element(&ClassRow {
                        row,
                        label: name(class_names, *label),
                        class: *label,
                        probabilities: p,
                        logits: z,
                    })?;
                }
            }
            Predictions::Values { y } => {
                for (row, y) in y.iter().enumerate() {
                    seq.serialize_element(&ValueRow { row, y: *y })?;
                }
            }
        }
        seq.end()
    }
}

struct ClassRow<'a> {
    row: usize,
    label: &'a str,
    class: u32,
    probabilities: &'a [f32],
    logits: &'a [f32],
}

impl Serialize for ClassRow<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ClassRow", 5)?;
        st.serialize_field("row", &self.row)?;
        st.serialize_field("label", self.label)?;
        st.serialize_field("class", &self.class)?;
        st.serialize_field("probabilities", self.probabilities)?;
        st.serialize_field("logits", self.logits)?;
        st.end()
    }
}

#[derive(Serialize)]
struct ValueRow {
    row: usize,
    y: f32,
}

/// Runs a model file on raw features (`rows × features`, row-major): the
/// model's standardization is applied first.
pub fn predict(model_bytes: &[u8], x: &[f32], rows: usize) -> Result<Predictions> {
    Model::from_safetensors(model_bytes)?.predict(x, rows, InputScale::Raw)
}

/// Model files for tests.
#[cfg(test)]
pub(crate) mod testing {
    use crate::mlp::Mlp;
    use crate::tensors::Writer;

    /// A model file: the weights of `Mlp::init(layers, 1)` and `meta`.
    pub fn model_file(layers: &[usize], meta: &[(&str, &str)]) -> Vec<u8> {
        let m = Mlp::init(layers, 1).unwrap();
        let mut w = Writer::new();
        for (k, v) in meta {
            w = w.meta(k, *v);
        }
        for l in 0..m.depth() {
            w = w
                .f32(&format!("w{l}"), &[layers[l], layers[l + 1]], &m.w[l])
                .f32(&format!("b{l}"), &[layers[l + 1]], &m.b[l]);
        }
        w.to_bytes().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::model_file;
    use super::*;

    #[test]
    fn a_classifier_standardizes_and_its_probabilities_sum_to_one() {
        let f = model_file(
            &[2, 5, 3],
            &[
                ("feature_names", r#"["a","b"]"#),
                ("class_names", r#"["x","y","z"]"#),
                ("standardize_mean", "[10.0, -2.0]"),
                ("standardize_std", "[2.0, 0.5]"),
            ],
        );
        let m = Model::from_safetensors(&f).unwrap();
        let raw = [12.0, -1.5, 10.0, -2.0];
        let got = m.predict(&raw, 2, InputScale::Raw).unwrap();
        let same = m
            .predict(&[1.0, 1.0, 0.0, 0.0], 2, InputScale::Standardized)
            .unwrap();
        assert_eq!(got, same);
        let Predictions::Classes {
            probabilities,
            labels,
            logits,
            class_names,
        } = &got
        else {
            panic!("a classifier's predictions")
        };
        assert_eq!(class_names, &["x", "y", "z"]);
        for (p, z) in probabilities.chunks(3).zip(logits.chunks(3)) {
            assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert_eq!(mlp::argmax_rows(p, 3), mlp::argmax_rows(z, 3));
        }
        assert_eq!(labels.len(), 2);
        let csv = String::from_utf8(got.to_csv().unwrap()).unwrap();
        assert!(csv.starts_with("row,label,p_x,p_y,p_z\n0,"), "{csv}");
        let json = serde_json::to_value(&got).unwrap();
        assert_eq!(json[1]["row"], 1);
        assert_eq!(json[0]["probabilities"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn a_regression_scales_its_output_back() {
        let plain = model_file(&[3, 4, 1], &[("task", "regress")]);
        let scaled = model_file(
            &[3, 4, 1],
            &[
                ("task", "regress"),
                ("target_mean", "100"),
                ("target_scale", "4"),
            ],
        );
        let x = [0.5, -1.0, 2.0, 1.0, 1.0, 1.0];
        let (Predictions::Values { y: o }, Predictions::Values { y }) = (
            predict(&plain, &x, 2).unwrap(),
            predict(&scaled, &x, 2).unwrap(),
        ) else {
            panic!("a regression's predictions")
        };
        for (o, y) in o.iter().zip(&y) {
            assert_eq!(*y, (f64::from(*o) * 4.0 + 100.0) as f32);
        }
        let csv = String::from_utf8(predict(&scaled, &x, 2).unwrap().to_csv().unwrap()).unwrap();
        assert!(csv.starts_with("row,y\n0,"), "{csv}");
    }
}
