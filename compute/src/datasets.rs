//! Data sets as safetensors: the real wine-quality (red, 1 599 rows, 11 features,
//! quality 3–8 → classes 0–5) and iris (150 rows, 4 features, 3 classes) sets that
//! `linfa-datasets` ships, and generated Gaussian-blob classification data of any size.
//!
//! Output tensors: `x` f32 `[rows, features]`, `y` u32 `[rows]`; metadata `name`,
//! `classes`, `features` (comma-separated names) and `label_offset` (subtracted from
//! the original labels).

use crate::error::{ComputeError, Result};
use crate::rng;
use crate::tensors::Writer;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::str::FromStr;

/// The real data sets this crate can export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Builtin {
    /// UCI wine quality, red (Cortez et al. 2009).
    WineQuality,
    /// Fisher's iris.
    Iris,
}

impl FromStr for Builtin {
    type Err = ComputeError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "winequality" | "wine" => Ok(Self::WineQuality),
            "iris" => Ok(Self::Iris),
            _ => Err(ComputeError::Spec(format!(
                "unknown data set `{s}` (known: winequality, iris)"
            ))),
        }
    }
}

impl Builtin {
    /// Name used in metadata and file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::WineQuality => "winequality",
            Self::Iris => "iris",
        }
    }
}

/// Converts a built-in data set to safetensors bytes.
pub fn builtin(which: Builtin) -> Result<Vec<u8>> {
    let ds = match which {
        Builtin::WineQuality => linfa_datasets::winequality(),
        Builtin::Iris => linfa_datasets::iris(),
    };
    let records = &ds.records;
    let (rows, cols) = (records.nrows(), records.ncols());
    let x: Vec<f32> = records.iter().map(|&v| v as f32).collect();
    let raw: Vec<usize> = ds.targets.iter().copied().collect();
    let offset = raw.iter().copied().min().unwrap_or(0);
    let y: Vec<u32> = raw
        .iter()
        .map(|&t| u32::try_from(t - offset).map_err(|_| ComputeError::Data(format!("label {t}"))))
        .collect::<Result<_>>()?;
    let classes = y.iter().copied().max().map_or(0, |m| m + 1);
    Writer::new()
        .f32("x", &[rows, cols], &x)
        .u32("y", &[rows], &y)
        .meta("name", which.name())
        .meta("classes", classes.to_string())
        .meta("label_offset", offset.to_string())
        .meta("features", ds.feature_names().join(","))
        .to_bytes()
}

/// Writes a built-in data set to `path` as safetensors (the `cloudchain data export`
/// command calls this).
pub fn write_builtin(which: Builtin, path: &Path) -> Result<()> {
    let bytes = builtin(which)?;
    std::fs::write(path, bytes).map_err(|source| ComputeError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Generated classification data: `classes` Gaussian blobs in `features` dimensions
/// (centres drawn from N(0, 2²), unit-variance points), `rows` rows, fully determined
/// by `seed`. Learnable but not linearly trivial when centres are close.
pub fn generate_classification(
    rows: usize,
    features: usize,
    classes: usize,
    seed: u64,
) -> Result<Vec<u8>> {
    if classes == 0 || features == 0 {
        return Err(ComputeError::Spec("need ≥ 1 class and ≥ 1 feature".into()));
    }
    u32::try_from(rows * features + classes * features)
        .map_err(|_| ComputeError::Spec(format!("{rows}×{features} is too large to generate")))?;
    let centres: Vec<f32> = (0..(classes * features) as u32)
        .map(|i| 2.0 * rng::gaussian(seed, rng::STREAM_DATA + 1, i))
        .collect();
    let mut x = Vec::with_capacity(rows * features);
    let mut y = Vec::with_capacity(rows);
    for r in 0..rows {
        let c = (rng::rand_u32(seed, rng::STREAM_DATA + 2, r as u32) as usize) % classes;
        y.push(c as u32);
        for f in 0..features {
            let z = rng::gaussian(seed, rng::STREAM_DATA + 3, (r * features + f) as u32);
            x.push(centres[c * features + f] + z);
        }
    }
    Writer::new()
        .f32("x", &[rows, features], &x)
        .u32("y", &[rows], &y)
        .meta("name", "generated")
        .meta("classes", classes.to_string())
        .to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mlp::Data;

    #[test]
    fn winequality_converts_with_real_shape_and_labels() {
        let bytes = builtin(Builtin::WineQuality).unwrap();
        let d = Data::from_safetensors(&bytes, "x", "y").unwrap();
        assert_eq!((d.rows, d.cols), (1599, 11));
        assert_eq!(d.y.classes().unwrap().iter().max(), Some(&5));
        // Quality 5 (class 2) is the majority class: 681 of 1599 wines.
        assert_eq!(
            d.y.classes().unwrap().iter().filter(|&&y| y == 2).count(),
            681
        );
        let meta = crate::tensors::metadata(&bytes).unwrap();
        assert_eq!(meta["label_offset"], "3");
        assert_eq!(meta["classes"], "6");
    }

    #[test]
    fn iris_converts_and_roundtrips_through_a_file() {
        let dir = std::env::temp_dir().join(format!("cc-iris-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("iris.safetensors");
        write_builtin(Builtin::Iris, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let d = Data::from_safetensors(&bytes, "x", "y").unwrap();
        assert_eq!((d.rows, d.cols), (150, 4));
        for c in 0..3 {
            assert_eq!(
                d.y.classes().unwrap().iter().filter(|&&y| y == c).count(),
                50
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert!("Wine-Quality".parse::<Builtin>().is_ok());
        assert!("mnist".parse::<Builtin>().is_err());
    }

    #[test]
    fn generated_data_is_deterministic() {
        let a = generate_classification(100, 5, 3, 7).unwrap();
        let b = generate_classification(100, 5, 3, 7).unwrap();
        let c = generate_classification(100, 5, 3, 8).unwrap();
        assert!(a == b, "same seed, same bytes");
        assert!(a != c);
    }
}
