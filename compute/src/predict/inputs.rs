//! The rows a model is run on: a CSV file's columns, matched to the model's
//! features by name, or a safetensors data set's `x`.

use crate::error::{ComputeError, Result};
use crate::import::MAX_CELLS;
use crate::tensors;

use super::info::{ModelInfo, Scaler, numbers};

/// Whether rows are as measured or already standardized by the model's
/// [`Scaler`] (the `x` of a data set imported with `--standardize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputScale {
    Raw,
    Standardized,
}

/// Rows to predict, read by [`read_inputs`].
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    /// `rows × features`, in the model's feature order.
    pub x: Vec<f32>,
    pub rows: usize,
    pub scale: InputScale,
}

/// Reads the rows of a CSV file or a safetensors data set for `model`.
///
/// A CSV file has a header line. When the model names its features, each is
/// taken from the column of that name, in the model's order, and other
/// columns (a label) are ignored; otherwise the file must have exactly the
/// model's number of columns, in its order. A data set's `x` (else `x_test`)
/// is read; if it was imported with `--standardize`, its rows are already
/// standardized, which is only right for the very scaler the model has.
pub fn read_inputs(bytes: &[u8], model: &ModelInfo) -> Result<Inputs> {
    if looks_like_safetensors(bytes) {
        read_data_set(bytes, model)
    } else {
        read_csv(bytes, model)
    }
}

/// An 8-byte header length that fits the file, then a JSON object.
fn looks_like_safetensors(bytes: &[u8]) -> bool {
    let Some((len, rest)) = bytes.split_first_chunk::<8>() else {
        return false;
    };
    u64::from_le_bytes(*len) <= rest.len() as u64 && rest.first() == Some(&b'{')
}

fn read_data_set(bytes: &[u8], model: &ModelInfo) -> Result<Inputs> {
    let st = tensors::parse(bytes)?;
    let name = if tensors::has(&st, "x") {
        "x"
    } else if tensors::has(&st, "x_test") {
        "x_test"
    } else {
        return Err(ComputeError::MissingTensor("x (or x_test)".into()));
    };
    let (rows, cols, x) = tensors::read_matrix(&st, name)?;
    if cols != model.features() {
        return Err(ComputeError::Data(format!(
            "the data set's `{name}` has {cols} features, the model takes {}",
            model.features()
        )));
    }
    let meta = tensors::metadata(bytes)?;
    if let (Some(ours), Some(theirs)) = (&model.feature_names, meta.get("feature_names")) {
        let theirs: Vec<String> = serde_json::from_str(theirs)
            .map_err(|e| ComputeError::Data(format!("the data set's `feature_names`: {e}")))?;
        if &theirs != ours {
            return Err(ComputeError::Data(format!(
                "the data set's features are {theirs:?}, the model's {ours:?}"
            )));
        }
    }
    let standardized = match (meta.get("standardize_mean"), meta.get("standardize_std")) {
        (None, None) => false,
        (Some(m), Some(s)) => {
            let f = model.features();
            let parse = |key, v| {
                numbers(key, v, f).map_err(|e| ComputeError::Data(format!("the data set: {e}")))
            };
            let theirs = Scaler {
                mean: parse("standardize_mean", m)?,
                std: parse("standardize_std", s)?,
            };
            if model.scaler.as_ref() != Some(&theirs) {
                return Err(ComputeError::Data(
                    "the data set's rows are standardized, but not as the model's inputs \
                     were: predict on the raw CSV file instead"
                        .into(),
                ));
            }
            true
        }
        _ => {
            return Err(ComputeError::Data(
                "the data set has one of `standardize_mean` and `standardize_std` without \
                 the other"
                    .into(),
            ));
        }
    };
    Ok(Inputs {
        x,
        rows,
        scale: if standardized {
            InputScale::Standardized
        } else {
            InputScale::Raw
        },
    })
}

fn read_csv(bytes: &[u8], model: &ModelInfo) -> Result<Inputs> {
    let bad = |m: String| ComputeError::Data(m);
    let (mut reader, header) = crate::import::csv_with_header(bytes)?;
    let f = model.features();
    let columns: Vec<usize> = match &model.feature_names {
        Some(names) => names
            .iter()
            .map(|n| {
                let mut at = header.iter().enumerate().filter(|(_, h)| *h == n);
                match (at.next(), at.next()) {
                    (Some((i, _)), None) => Ok(i),
                    (Some(_), Some(_)) => Err(bad(format!("two columns are named `{n}`"))),
                    (None, _) => Err(bad(format!(
                        "no column `{n}`: the model takes {} (the file has {})",
                        names.join(", "),
                        header.join(", ")
                    ))),
                }
            })
            .collect::<Result<_>>()?,
        None if header.len() == f => (0..f).collect(),
        None => {
            return Err(bad(format!(
                "the model does not name its features, so the file must have its {f} \
                 columns and no others; it has {}",
                header.len()
            )));
        }
    };
    let mut x = Vec::new();
    let mut rows = 0;
    for (r, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| bad(format!("row {}: {e}", r + 1)))?;
        let line = rec.position().map_or(r as u64 + 2, |p| p.line());
        if x.len() + f > MAX_CELLS {
            return Err(bad(format!(
                "more than {MAX_CELLS} values (rows × features): too large"
            )));
        }
        for &c in &columns {
            let v = rec.get(c).unwrap_or("");
            match v.parse::<f32>() {
                Ok(n) if n.is_finite() => x.push(n),
                _ => {
                    return Err(bad(format!(
                        "line {line}, column `{}`: `{v}` is not a finite number",
                        header[c]
                    )));
                }
            }
        }
        rows += 1;
    }
    if rows == 0 {
        return Err(bad("no rows after the header line".into()));
    }
    Ok(Inputs {
        x,
        rows,
        scale: InputScale::Raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::Model;
    use crate::predict::testing::model_file;
    use crate::tensors::Writer;

    #[test]
    fn csv_columns_are_matched_by_name_and_a_missing_one_is_named() {
        let f = model_file(&[2, 3], &[("feature_names", r#"["a","b"]"#)]);
        let m = Model::from_safetensors(&f).unwrap();
        let got = read_inputs(b"b,label,a\n2,cat,1\n4,dog,3\n", &m.info).unwrap();
        assert_eq!((got.x, got.rows), (vec![1.0, 2.0, 3.0, 4.0], 2));
        let cases: [(&[u8], &str); 4] = [
            (b"a,c\n1,2\n", "no column `b`"),
            (b"a,b,b\n1,2,3\n", "two columns are named `b`"),
            (
                b"a,b\n1,x\n",
                "line 2, column `b`: `x` is not a finite number",
            ),
            (b"a,b\n", "no rows"),
        ];
        for (csv, want) in cases {
            let e = read_inputs(csv, &m.info).unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
        let anon = Model::from_safetensors(&model_file(&[2, 3], &[])).unwrap();
        assert!(read_inputs(b"p,q\n1,2\n", &anon.info).is_ok());
        let e = read_inputs(b"p,q,y\n1,2,3\n", &anon.info)
            .unwrap_err()
            .to_string();
        assert!(e.contains("must have its 2 columns"), "{e}");
    }

    #[test]
    fn a_standardized_data_set_is_taken_as_is_only_with_the_models_scaler() {
        let scaler = [("standardize_mean", "[1.0]"), ("standardize_std", "[2.0]")];
        let m = Model::from_safetensors(&model_file(&[1, 2], &scaler)).unwrap();
        let data = |meta: &[(&str, &str)]| {
            let mut w = Writer::new().f32("x", &[2, 1], &[0.5, -0.5]);
            for (k, v) in meta {
                w = w.meta(k, *v);
            }
            w.to_bytes().unwrap()
        };
        let same = read_inputs(&data(&scaler), &m.info).unwrap();
        assert_eq!(same.scale, InputScale::Standardized);
        let raw = read_inputs(&data(&[]), &m.info).unwrap();
        assert_eq!(raw.scale, InputScale::Raw);
        let other = [("standardize_mean", "[1.0]"), ("standardize_std", "[3.0]")];
        let e = read_inputs(&data(&other), &m.info).unwrap_err().to_string();
        assert!(e.contains("raw CSV"), "{e}");
    }
}
