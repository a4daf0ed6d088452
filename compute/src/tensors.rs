//! Reading and writing tensors in safetensors bytes. Everything read here may come
//! from another peer, so every dtype, shape and length is checked.

use crate::error::{ComputeError, Result};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::{BTreeMap, HashMap};

/// Parses safetensors bytes.
pub fn parse(bytes: &[u8]) -> Result<SafeTensors<'_>> {
    Ok(SafeTensors::deserialize(bytes)?)
}

/// The one metadata key [`Writer`] writes. safetensors stores metadata as a hash map,
/// whose order would make the bytes (and so their hashes) differ run to run; a single
/// key holding sorted `key=value` lines keeps the output deterministic.
pub const META_KEY: &str = "cloudchain";

/// Reads the metadata [`Writer`] wrote (plus any other plain keys), sorted by key.
pub fn metadata(bytes: &[u8]) -> Result<BTreeMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes)?;
    Ok(expand_metadata(meta.metadata().clone().unwrap_or_default()))
}

/// What a safetensors file's header says, read without loading its data.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// (name, dtype, shape) of each tensor, by name.
    pub tensors: Vec<(String, String, Vec<usize>)>,
    pub metadata: BTreeMap<String, String>,
    /// Bytes of the file after the header.
    pub data_bytes: u64,
}

/// The largest header read (safetensors' own limit).
pub const MAX_HEADER: u64 = 100_000_000;

/// Read a safetensors file's header only: its length is checked against the
/// file before anything is allocated, and every tensor's data range against
/// the data that follows.
pub fn read_header(path: &std::path::Path) -> Result<Header> {
    use std::io::Read;
    let io = |source| ComputeError::Io {
        path: path.display().to_string(),
        source,
    };
    let bad = |s: String| ComputeError::SafeTensors(format!("{}: {s}", path.display()));
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| bad("shorter than a safetensors header".into()))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || n > len.saturating_sub(8) {
        return Err(bad(format!(
            "its header claims {n} bytes, the file holds {len}: not a safetensors file"
        )));
    }
    let mut head = vec![0u8; n as usize];
    f.read_exact(&mut head).map_err(io)?;
    let v: serde_json::Value =
        serde_json::from_slice(&head).map_err(|e| bad(format!("header: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("header is not an object".into()))?;
    let data_bytes = len - 8 - n;
    let mut tensors = Vec::new();
    let mut metadata = HashMap::new();
    for (name, t) in obj {
        if name == "__metadata__" {
            metadata =
                serde_json::from_value(t.clone()).map_err(|e| bad(format!("metadata: {e}")))?;
            continue;
        }
        let dtype = t["dtype"].as_str().unwrap_or("?").to_string();
        let shape: Vec<usize> = serde_json::from_value(t["shape"].clone())
            .map_err(|e| bad(format!("tensor `{name}`: shape: {e}")))?;
        let offsets: [u64; 2] = serde_json::from_value(t["data_offsets"].clone())
            .map_err(|e| bad(format!("tensor `{name}`: offsets: {e}")))?;
        if offsets[0] > offsets[1] || offsets[1] > data_bytes {
            return Err(bad(format!(
                "tensor `{name}` lies outside the file's {data_bytes} data bytes"
            )));
        }
        tensors.push((name.clone(), dtype, shape));
    }
    tensors.sort();
    Ok(Header {
        tensors,
        metadata: expand_metadata(metadata),
        data_bytes,
    })
}

/// Metadata as a sorted map: [`Writer`]'s one key split into its lines.
fn expand_metadata(meta: HashMap<String, String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in meta {
        if k == META_KEY {
            for line in v.lines() {
                if let Some((k, v)) = line.split_once('=') {
                    out.insert(k.to_string(), v.to_string());
                }
            }
        } else {
            out.insert(k, v);
        }
    }
    out
}

fn get<'a>(st: &'a SafeTensors<'a>, name: &str) -> Result<TensorView<'a>> {
    st.tensor(name)
        .map_err(|_| ComputeError::MissingTensor(name.to_string()))
}

/// Whether a tensor of that name exists.
pub fn has(st: &SafeTensors<'_>, name: &str) -> bool {
    st.names().contains(&name)
}

fn words<const N: usize>(data: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    data.chunks_exact(N).map(|c| {
        let mut w = [0u8; N];
        w.copy_from_slice(c);
        w
    })
}

/// Reads a float tensor (F32 or F64, converted to f32) and its shape.
pub fn read_f32(st: &SafeTensors<'_>, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let t = get(st, name)?;
    let v: Vec<f32> = match t.dtype() {
        Dtype::F32 => words::<4>(t.data()).map(f32::from_le_bytes).collect(),
        Dtype::F64 => words::<8>(t.data())
            .map(|w| f64::from_le_bytes(w) as f32)
            .collect(),
        d => {
            return Err(ComputeError::Dtype {
                name: name.into(),
                dtype: format!("{d:?}"),
            });
        }
    };
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(ComputeError::Data(format!(
            "tensor `{name}` has a non-finite value at {i}"
        )));
    }
    Ok((t.shape().to_vec(), v))
}

/// Reads a 2-D float tensor as (rows, cols, data).
pub fn read_matrix(st: &SafeTensors<'_>, name: &str) -> Result<(usize, usize, Vec<f32>)> {
    let (shape, v) = read_f32(st, name)?;
    match shape.as_slice() {
        [r, c] => Ok((*r, *c, v)),
        [n] => Ok((*n, 1, v)),
        s => Err(ComputeError::Data(format!(
            "tensor `{name}` must be 2-D, has shape {s:?}"
        ))),
    }
}

/// Reads integer class labels (U8/U16/U32/I32/I64, or integral F32) as `u32`.
pub fn read_labels(st: &SafeTensors<'_>, name: &str) -> Result<Vec<u32>> {
    let t = get(st, name)?;
    let bad = |what: String| ComputeError::Data(format!("labels `{name}`: {what}"));
    let v: Vec<i64> = match t.dtype() {
        Dtype::U8 => t.data().iter().map(|&b| i64::from(b)).collect(),
        Dtype::U16 => words::<2>(t.data())
            .map(|w| i64::from(u16::from_le_bytes(w)))
            .collect(),
        Dtype::U32 => words::<4>(t.data())
            .map(|w| i64::from(u32::from_le_bytes(w)))
            .collect(),
        Dtype::I32 => words::<4>(t.data())
            .map(|w| i64::from(i32::from_le_bytes(w)))
            .collect(),
        Dtype::I64 => words::<8>(t.data()).map(i64::from_le_bytes).collect(),
        Dtype::F32 => {
            let f: Vec<f32> = words::<4>(t.data()).map(f32::from_le_bytes).collect();
            if let Some(x) = f.iter().find(|x| x.fract() != 0.0 || !x.is_finite()) {
                return Err(bad(format!("non-integral label {x}")));
            }
            f.iter().map(|&x| x as i64).collect()
        }
        d => {
            return Err(ComputeError::Dtype {
                name: name.into(),
                dtype: format!("{d:?}"),
            });
        }
    };
    v.into_iter()
        .map(|x| u32::try_from(x).map_err(|_| bad(format!("label {x} out of range"))))
        .collect()
}

/// Reads real-valued regression targets (F32/F64, `[rows]` or `[rows, 1]`;
/// [`read_f32`] refuses non-finite values).
pub fn read_targets(st: &SafeTensors<'_>, name: &str) -> Result<Vec<f32>> {
    let dtype = get(st, name)?.dtype();
    if !matches!(dtype, Dtype::F32 | Dtype::F64) {
        return Err(ComputeError::Data(format!(
            "targets `{name}` are {dtype:?} (class numbers?); a regression takes real values (F32 or F64)"
        )));
    }
    let (shape, v) = read_f32(st, name)?;
    if !(shape.len() == 1 || (shape.len() == 2 && shape[1] == 1)) {
        return Err(ComputeError::Data(format!(
            "targets `{name}` have shape {shape:?}; a regression takes one value per row"
        )));
    }
    Ok(v)
}

/// Builds safetensors bytes tensor by tensor.
#[derive(Debug, Default)]
pub struct Writer {
    tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
    metadata: BTreeMap<String, String>,
}

impl Writer {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an f32 tensor.
    pub fn f32(mut self, name: &str, shape: &[usize], data: &[f32]) -> Self {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors
            .push((name.into(), Dtype::F32, shape.to_vec(), bytes));
        self
    }

    /// Adds a u32 tensor.
    pub fn u32(mut self, name: &str, shape: &[usize], data: &[u32]) -> Self {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors
            .push((name.into(), Dtype::U32, shape.to_vec(), bytes));
        self
    }

    /// Adds a metadata entry (`=` in the key and line breaks are replaced by `_`/` `).
    pub fn meta(mut self, key: &str, value: impl Into<String>) -> Self {
        let (k, v) = clean_meta(key, value.into());
        self.metadata.insert(k, v);
        self
    }

    /// Serializes.
    pub fn to_bytes(self) -> Result<Vec<u8>> {
        let views = self
            .tensors
            .iter()
            .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(safetensors::serialize(views, encode_meta(&self.metadata))?)
    }
}

fn clean_meta(key: &str, value: String) -> (String, String) {
    let clean = |s: String| s.replace(['\n', '\r'], " ");
    (clean(key.replace('=', "_")), clean(value))
}

/// Metadata as the one sorted [`META_KEY`] entry (none if empty).
fn encode_meta(meta: &BTreeMap<String, String>) -> Option<HashMap<String, String>> {
    (!meta.is_empty()).then(|| {
        let lines: Vec<String> = meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
        HashMap::from([(META_KEY.to_string(), lines.join("\n"))])
    })
}

/// `bytes` with `extra` added to its metadata (replacing keys it already
/// has); the tensors are copied unchanged, in name order.
pub fn with_metadata(bytes: &[u8], extra: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let st = parse(bytes)?;
    let mut meta = metadata(bytes)?;
    for (k, v) in extra {
        let (k, v) = clean_meta(k, v.clone());
        meta.insert(k, v);
    }
    let mut names = st.names();
    names.sort();
    let views = names
        .into_iter()
        .map(|n| Ok((n.to_string(), st.tensor(n)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, encode_meta(&meta))?)
}
