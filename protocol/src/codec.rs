//! The wire codec: the only place in the workspace that names `bincode`.
//!
//! Every byte string that comes from the network, a file or a user goes through
//! [`decode`], which
//! - refuses input longer than the limit of the message kind before reading it,
//! - bounds every allocation the decoder makes by that limit,
//! - requires the whole input to be consumed, and
//! - requires the encoding to be canonical (re-encoding the value gives the same
//!   bytes), so one value has exactly one byte string: hashes and signatures over
//!   encodings are unambiguous and equivocation is a byte comparison.
//!
//! It never panics on any input; errors say what was wrong.

use serde::{Serialize, de::DeserializeOwned};

/// The hard ceiling on any single decoded value (frames included).
pub const MAX_DECODE_BYTES: usize = 16 * 1024 * 1024;

/// What went wrong while encoding or decoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// The input is larger than the kind allows; it was not read.
    #[error("{kind}: {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        kind: &'static str,
        len: usize,
        limit: usize,
    },
    /// The bytes do not decode as the expected type.
    #[error("{kind}: malformed encoding: {reason}")]
    Malformed { kind: &'static str, reason: String },
    /// The value decoded but bytes were left over.
    #[error("{kind}: {extra} trailing bytes after the value")]
    TrailingBytes { kind: &'static str, extra: usize },
    /// The value decoded but is not in its one canonical encoding.
    #[error("{kind}: non-canonical encoding")]
    NonCanonical { kind: &'static str },
    /// The value could not be encoded (a bug, or a value over the limit).
    #[error("{kind}: cannot encode: {reason}")]
    Encode { kind: &'static str, reason: String },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<MAX_DECODE_BYTES>()
}

/// A type with a name (for errors and signature domains) and a size limit.
pub trait Wire: Serialize + DeserializeOwned + Clone {
    /// Short, stable name: part of the signature domain `cloudchain/v1/<KIND>`.
    const KIND: &'static str;
    /// Largest encoding accepted for this kind, in bytes.
    const MAX_SIZE: usize;
}

/// Encode a value. Fails only if the encoding would exceed the kind's limit.
pub fn encode<T: Wire>(value: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = encode_unbounded(T::KIND, value)?;
    if bytes.len() > T::MAX_SIZE {
        return Err(CodecError::TooLarge {
            kind: T::KIND,
            len: bytes.len(),
            limit: T::MAX_SIZE,
        });
    }
    Ok(bytes)
}

/// Decode untrusted bytes as `T`: bounded, complete and canonical, never panics.
pub fn decode<T: Wire>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_limited(T::KIND, T::MAX_SIZE, bytes)
}

/// Encode any serde value (used for hashing and for types without a [`Wire`] kind).
pub fn encode_unbounded<T: Serialize + ?Sized>(
    kind: &'static str,
    value: &T,
) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode {
        kind,
        reason: e.to_string(),
    })
}

/// The blake3 hash of [`encode_unbounded`]'s bytes, without holding them: the
/// encoding streams through a small buffer into the hasher (a ledger state is
/// megabytes, and a fresh buffer that size costs more in page faults than the
/// encoding itself).
pub fn hash_unbounded<T: Serialize + ?Sized>(
    kind: &'static str,
    value: &T,
) -> Result<[u8; 32], CodecError> {
    use std::io::Write;
    let fail = |reason: String| CodecError::Encode { kind, reason };
    let mut hasher = blake3::Hasher::new();
    {
        let mut w = std::io::BufWriter::with_capacity(64 * 1024, &mut hasher);
        bincode::serde::encode_into_std_write(value, &mut w, config())
            .map_err(|e| fail(e.to_string()))?;
        w.flush().map_err(|e| fail(e.to_string()))?;
    }
    Ok(*hasher.finalize().as_bytes())
}

/// [`decode`] with an explicit kind name and limit.
pub fn decode_limited<T: Serialize + DeserializeOwned>(
    kind: &'static str,
    limit: usize,
    bytes: &[u8],
) -> Result<T, CodecError> {
    let limit = limit.min(MAX_DECODE_BYTES);
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            kind,
            len: bytes.len(),
            limit,
        });
    }
    let (value, read): (T, usize) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| CodecError::Malformed {
            kind,
            reason: e.to_string(),
        })?;
    if read != bytes.len() {
        return Err(CodecError::TrailingBytes {
            kind,
            extra: bytes.len() - read,
        });
    }
    let again = encode_unbounded(kind, &value)?;
    if again != bytes {
        return Err(CodecError::NonCanonical { kind });
    }
    Ok(value)
}

/// Decode a value at the start of `bytes`, ignoring what follows (used to read a
/// version number before the rest). Bounded like [`decode`]; not canonical-checked.
pub fn decode_prefix<T: DeserializeOwned>(
    kind: &'static str,
    bytes: &[u8],
) -> Result<T, CodecError> {
    let bytes = &bytes[..bytes.len().min(MAX_DECODE_BYTES)];
    bincode::serde::decode_from_slice(bytes, config())
        .map(|(v, _)| v)
        .map_err(|e| CodecError::Malformed {
            kind,
            reason: e.to_string(),
        })
}

/// Serde helpers for fixed-size byte arrays as a compact tuple (no length prefix).
pub(crate) mod bytes64 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        let (a, b) = v.split_at(32);
        let mut lo = [0u8; 32];
        let mut hi = [0u8; 32];
        lo.copy_from_slice(a);
        hi.copy_from_slice(b);
        (lo, hi).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let (lo, hi): ([u8; 32], [u8; 32]) = Deserialize::deserialize(d)?;
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&lo);
        out[32..].copy_from_slice(&hi);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Small {
        a: u64,
        b: Vec<u8>,
        c: bool,
    }
    impl Wire for Small {
        const KIND: &'static str = "small";
        const MAX_SIZE: usize = 64;
    }

    /// Streaming into the hasher hashes exactly the bytes `encode_unbounded`
    /// makes, also past the stream's buffer size.
    #[test]
    fn hash_unbounded_is_the_hash_of_the_encoding() {
        for n in [0usize, 3, 70_000, 300_000] {
            let v: Vec<Small> = (0..n / 10)
                .map(|i| Small {
                    a: i as u64 * 977,
                    b: vec![i as u8; i % 7],
                    c: i % 2 == 0,
                })
                .collect();
            let bytes = encode_unbounded("small-list", &v).unwrap();
            assert_eq!(
                hash_unbounded("small-list", &v).unwrap(),
                *blake3::hash(&bytes).as_bytes(),
                "{n}"
            );
        }
    }

    #[test]
    fn round_trip_and_limits() {
        let v = Small {
            a: 300,
            b: vec![1, 2, 3],
            c: true,
        };
        let bytes = encode(&v).unwrap();
        assert_eq!(decode::<Small>(&bytes).unwrap(), v);

        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode::<Small>(&long),
            Err(CodecError::TrailingBytes { extra: 1, .. })
        ));
        assert!(matches!(
            decode::<Small>(&[0u8; 65]),
            Err(CodecError::TooLarge { len: 65, .. })
        ));
        let big = Small {
            a: 1,
            b: vec![0; 100],
            c: false,
        };
        assert!(matches!(encode(&big), Err(CodecError::TooLarge { .. })));
    }

    #[test]
    fn huge_length_prefix_is_an_error_not_an_allocation() {
        // a = 0, then a Vec length of u64::MAX (varint marker 253 + 8 bytes).
        let mut bytes = vec![0u8, 253];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode::<Small>(&bytes),
            Err(CodecError::Malformed { .. })
        ));
    }

    #[test]
    fn non_canonical_varint_is_refused() {
        // a = 5 written with the 2-byte form (251 marker) instead of one byte.
        let bytes = vec![251u8, 5, 0, 0, 0];
        assert!(matches!(
            decode::<Small>(&bytes),
            Err(CodecError::NonCanonical { .. } | CodecError::Malformed { .. })
        ));
    }

    #[test]
    fn invalid_bool_is_malformed() {
        let bytes = vec![1u8, 0, 2];
        assert!(matches!(
            decode::<Small>(&bytes),
            Err(CodecError::Malformed { .. })
        ));
    }
}
