//! What a model file says besides its weights: its task, feature and class
//! names, the standardization its inputs need and a regression's output
//! scale, each checked against the weights.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{ComputeError, Result};
use crate::mlp::Mlp;

/// The metadata keys [`ModelInfo`] reads; `model inspect` lists the others as
/// they are.
pub const KNOWN_KEYS: [&str; 8] = [
    "layers",
    "task",
    "feature_names",
    "class_names",
    "standardize_mean",
    "standardize_std",
    "target_mean",
    "target_scale",
];

/// What a model predicts (the task it was trained for).
pub use crate::mlp::Task;

/// Per-feature standardization: the model takes (x − mean)/std.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scaler {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Scaler {
    /// Standardize `rows × mean.len()` raw features: in f64, rounded to f32.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let f = self.mean.len().max(1);
        x.chunks(f)
            .flat_map(|row| {
                row.iter()
                    .zip(&self.mean)
                    .zip(&self.std)
                    .map(|((v, m), s)| ((f64::from(*v) - m) / s) as f32)
            })
            .collect()
    }
}

/// A regression model's output scale: y = o·scale + mean.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TargetScale {
    pub mean: f64,
    pub scale: f64,
}

impl TargetScale {
    /// The target for output `o`, computed in f64 and rounded to f32.
    pub fn apply(self, o: f32) -> f32 {
        (f64::from(o) * self.scale + self.mean) as f32
    }
}

/// What a model file says besides its weights, checked against them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    /// Layer widths, features first, outputs last.
    pub layers: Vec<usize>,
    pub task: Task,
    /// One per feature, when the file names them.
    pub feature_names: Option<Vec<String>>,
    /// A classifier's class names, when the file has them: one per output,
    /// or fewer (see [`ModelInfo::class_labels`]).
    pub class_names: Option<Vec<String>>,
    /// The standardization the model expects its inputs to have had.
    pub scaler: Option<Scaler>,
    /// A regression's output scale.
    pub target: Option<TargetScale>,
    /// Every metadata entry of the file, the keys above included.
    pub metadata: BTreeMap<String, String>,
}

impl ModelInfo {
    /// Features the model takes.
    pub fn features(&self) -> usize {
        self.layers.first().copied().unwrap_or(0)
    }

    /// Outputs of the last layer (classes, or 1).
    pub fn outputs(&self) -> usize {
        self.layers.last().copied().unwrap_or(0)
    }

    /// A name for each output of a classifier: the file's class names, the
    /// outputs past them `output_<i>`; without names, the indices.
    pub fn class_labels(&self) -> Vec<String> {
        match &self.class_names {
            Some(n) => (0..self.outputs())
                .map(|i| n.get(i).cloned().unwrap_or_else(|| format!("output_{i}")))
                .collect(),
            None => (0..self.outputs()).map(|i| i.to_string()).collect(),
        }
    }

    /// Reads and checks the metadata of a model whose weights are `mlp`.
    pub(crate) fn read(meta: BTreeMap<String, String>, mlp: &Mlp) -> Result<Self> {
        let layers = mlp.layers.clone();
        let (features, outputs) = (layers[0], layers[layers.len() - 1]);
        if let Some(l) = meta.get("layers") {
            let said: Option<Vec<usize>> = l.split(',').map(|w| w.trim().parse().ok()).collect();
            if said.as_ref() != Some(&layers) {
                return Err(bad(format!(
                    "its metadata says layers `{l}`, its weights are {layers:?}"
                )));
            }
        }
        let task = match meta.get("task").map(String::as_str) {
            None | Some("classify") => Task::Classify,
            Some("regress") => Task::Regress,
            Some(t) => {
                return Err(bad(format!("unknown task `{t}` (classify or regress)")));
            }
        };
        let names = |key: &str, fits: &dyn Fn(usize) -> bool, want: &str| {
            let Some(v) = meta.get(key) else {
                return Ok(None);
            };
            let n: Vec<String> = serde_json::from_str(v)
                .map_err(|e| bad(format!("`{key}` is not a JSON array of strings: {e}")))?;
            if !fits(n.len()) {
                return Err(bad(format!("`{key}` names {} but {want}", n.len())));
            }
            Ok(Some(n))
        };
        let feature_names = names(
            "feature_names",
            &|n| n == features,
            &format!("the model takes {features} features"),
        )?;
        // A classifier may have more outputs than its data set had classes
        // (labels need only be below the width): the rest go unnamed.
        let class_names = names(
            "class_names",
            &|n| n <= outputs,
            &format!("the model has {outputs} outputs"),
        )?;
        let scaler = match (meta.get("standardize_mean"), meta.get("standardize_std")) {
            (None, None) => None,
            (Some(m), Some(s)) => {
                let mean = numbers("standardize_mean", m, features).map_err(bad)?;
                let std = numbers("standardize_std", s, features).map_err(bad)?;
                if let Some(i) = std.iter().position(|s| *s <= 0.0) {
                    return Err(bad(format!(
                        "`standardize_std` has {} for feature {i}: a deviation must be positive",
                        std[i]
                    )));
                }
                Some(Scaler { mean, std })
            }
            _ => {
                return Err(bad(
                    "it has one of `standardize_mean` and `standardize_std` without the other"
                        .into(),
                ));
            }
        };
        let number = |key: &str| -> Result<Option<f64>> {
            let Some(v) = meta.get(key) else {
                return Ok(None);
            };
            match exact(v) {
                x if x.is_finite() => Ok(Some(x)),
                _ => Err(bad(format!("`{key}` is `{v}`, not a finite number"))),
            }
        };
        let (t_mean, t_scale) = (number("target_mean")?, number("target_scale")?);
        let target = match task {
            Task::Classify => {
                if t_mean.is_some() || t_scale.is_some() {
                    return Err(bad(
                        "a classifier with `target_mean`/`target_scale` (regression keys)".into(),
                    ));
                }
                None
            }
            Task::Regress => {
                if outputs != 1 {
                    return Err(bad(format!(
                        "a regression model must have 1 output, its weights have {outputs}"
                    )));
                }
                if class_names.is_some() {
                    return Err(bad("a regression model with `class_names`".into()));
                }
                if t_scale == Some(0.0) {
                    return Err(bad("`target_scale` is 0".into()));
                }
                (t_mean.is_some() || t_scale.is_some()).then(|| TargetScale {
                    mean: t_mean.unwrap_or(0.0),
                    scale: t_scale.unwrap_or(1.0),
                })
            }
        };
        Ok(Self {
            layers,
            task,
            feature_names,
            class_names,
            scaler,
            target,
            metadata: meta,
        })
    }
}

fn bad(msg: String) -> ComputeError {
    ComputeError::Data(format!("model file: {msg}"))
}

/// A JSON array of `want` finite numbers, or what is wrong with it.
pub(super) fn numbers(key: &str, v: &str, want: usize) -> std::result::Result<Vec<f64>, String> {
    let n: Vec<f64> = serde_json::from_str(v)
        .map_err(|e| format!("`{key}` is not a JSON array of numbers: {e}"))?;
    if n.len() != want {
        return Err(format!(
            "`{key}` has {} values but the model takes {want} features",
            n.len()
        ));
    }
    // serde_json's own parse may miss by an ulp; these are the numbers the
    // training rows were standardized with, so parse each one exactly.
    let n: Vec<f64> = v
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(exact)
        .collect();
    if let Some(i) = n.iter().position(|x| !x.is_finite()) {
        return Err(format!("`{key}` has a non-finite value at {i}"));
    }
    Ok(n)
}

/// A JSON number, correctly rounded (NaN if it is not one).
fn exact(s: &str) -> f64 {
    let s = s.trim();
    match serde_json::from_str::<f64>(s) {
        Ok(_) => s.parse().unwrap_or(f64::NAN),
        Err(_) => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::Model;
    use crate::predict::testing::model_file;

    #[test]
    fn inconsistent_metadata_is_refused_with_the_key_that_is_wrong() {
        /// Layers, metadata, the error wanted.
        type Case = (
            &'static [usize],
            &'static [(&'static str, &'static str)],
            &'static str,
        );
        let cases: &[Case] = &[
            (&[2, 3], &[("layers", "2,4")], "layers `2,4`"),
            (&[2, 3], &[("task", "cluster")], "unknown task `cluster`"),
            (
                &[2, 3],
                &[("feature_names", r#"["a"]"#)],
                "`feature_names` names 1",
            ),
            (&[2, 3], &[("class_names", "cat,dog")], "not a JSON array"),
            (
                &[2, 3],
                &[("standardize_mean", "[0,0]")],
                "without the other",
            ),
            (
                &[2, 3],
                &[("standardize_mean", "[0,0]"), ("standardize_std", "[1]")],
                "`standardize_std` has 1 values",
            ),
            (
                &[2, 3],
                &[("standardize_mean", "[0,0]"), ("standardize_std", "[1,0]")],
                "must be positive",
            ),
            (
                &[2, 3],
                &[
                    ("standardize_mean", "[0,1e999]"),
                    ("standardize_std", "[1,1]"),
                ],
                "standardize_mean",
            ),
            (&[2, 3], &[("task", "regress")], "must have 1 output"),
            (
                &[2, 1],
                &[("task", "regress"), ("target_scale", "NaN")],
                "not a finite number",
            ),
            (
                &[2, 1],
                &[("task", "regress"), ("target_scale", "0")],
                "is 0",
            ),
            (&[2, 3], &[("target_mean", "1")], "a classifier with"),
        ];
        for (layers, meta, want) in cases {
            let e = Model::from_safetensors(&model_file(layers, meta))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
    }

    #[test]
    fn outputs_past_the_class_names_are_named_by_index() {
        let m = Model::from_safetensors(&model_file(&[2, 4], &[("class_names", r#"["a","b"]"#)]))
            .unwrap();
        assert_eq!(m.info.class_labels(), ["a", "b", "output_2", "output_3"]);
        let m = Model::from_safetensors(&model_file(&[2, 3], &[])).unwrap();
        assert_eq!(m.info.class_labels(), ["0", "1", "2"]);
    }

    #[test]
    fn scaler_numbers_are_read_exactly() {
        // serde_json alone reads this one an ulp off.
        let v = numbers("k", "[113.44609548446769, -1e-3 ,2]", 3).unwrap();
        assert_eq!(v, [113.44609548446769, -0.001, 2.0]);
        assert!(numbers("k", "[1, NaN]", 2).is_err());
        assert!(numbers("k", "[1, 1e999]", 2).is_err());
        assert!(exact("0x10").is_nan());
    }
}
