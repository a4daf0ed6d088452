//! The crate's error type.

/// Everything that can go wrong in this crate, with the input that caused it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComputeError {
    /// No wgpu adapter could be found (no GPU and no software Vulkan/GL driver).
    #[error("no wgpu adapter found: {0}")]
    NoAdapter(String),
    /// The wgpu device could not be created or reported an error.
    #[error("wgpu device error: {0}")]
    Device(String),
    /// Shapes of the operands do not fit together.
    #[error("shape mismatch in {op}: {detail}")]
    Shape {
        /// The operation that was called.
        op: &'static str,
        /// What did not fit.
        detail: String,
    },
    /// A safetensors file could not be parsed or written.
    #[error("safetensors: {0}")]
    SafeTensors(String),
    /// A tensor the workload needs is missing from the input.
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    /// A tensor has a dtype this crate cannot read.
    #[error("tensor `{name}` has unsupported dtype {dtype}")]
    Dtype {
        /// The tensor's name.
        name: String,
        /// Its dtype as written in the file.
        dtype: String,
    },
    /// The workload specification is invalid.
    #[error("invalid workload spec: {0}")]
    Spec(String),
    /// Invalid input data (labels out of range, NaN, empty set…).
    #[error("invalid data: {0}")]
    Data(String),
    /// Reading or writing a file failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = ComputeError> = std::result::Result<T, E>;

impl From<safetensors::SafeTensorError> for ComputeError {
    fn from(e: safetensors::SafeTensorError) -> Self {
        ComputeError::SafeTensors(e.to_string())
    }
}

pub(crate) fn shape_err(op: &'static str, detail: impl Into<String>) -> ComputeError {
    ComputeError::Shape {
        op,
        detail: detail.into(),
    }
}
