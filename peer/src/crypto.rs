//! Job blobs encrypted so that only the requester and the readers it chose (the
//! provider, the committee) read them.
//!
//! - **Sealing the job key** is the core's ([`node_core::keys`]): the requester
//!   decides who reads a job.
//! - **Blobs.** Each blob is encrypted under a subkey derived from the job key and
//!   a label (`model`, `dataset`, `result`), so no (key, nonce) pair is ever reused.
//!   The plaintext is cut into 1 MiB chunks, each sealed with ChaCha20-Poly1305;
//!   the nonce is the chunk index plus a last-chunk flag (the STREAM construction),
//!   so reordering, truncation or extension of chunks fails authentication.

use chacha20poly1305::aead::{Aead, Payload};
pub use node_core::keys::{JobKey, KeyError, nonce, open_job_key, seal_job_key};
use protocol::Hash32;

/// Plaintext bytes per chunk.
pub const CHUNK: usize = 1 << 20;
const TAG: usize = 16;

/// Errors decrypting a blob.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("ciphertext chunk {0} failed authentication (wrong key, or tampered)")]
    Chunk(u64),
    #[error("ciphertext of {0} bytes is truncated")]
    Truncated(usize),
}

/// A fresh random job key from the OS.
pub fn random_key() -> JobKey {
    let mut k = zeroize::Zeroizing::new([0u8; 32]);
    // The OS RNG failing is not recoverable for a node.
    getrandom::fill(k.as_mut()).expect("the OS random number generator failed");
    JobKey::from_bytes(*k)
}

/// Encrypt a blob's bytes under `key` for `label`, bound to `aad` (a job's inputs to
/// the requester's account id, a result to its contract id).
/// Chunks are independent, so they are sealed in parallel.
pub fn encrypt(key: &JobKey, label: &str, aad: &Hash32, plain: &[u8]) -> Vec<u8> {
    use rayon::prelude::*;
    let cipher = key.subkey(label);
    let chunks = plain.len().div_ceil(CHUNK).max(1);
    let sealed: Vec<Vec<u8>> = (0..chunks)
        .into_par_iter()
        .map(|i| {
            let part = &plain[(i * CHUNK).min(plain.len())..((i + 1) * CHUNK).min(plain.len())];
            cipher
                .encrypt(
                    &nonce(i as u64, i + 1 == chunks),
                    Payload {
                        msg: part,
                        aad: &aad.0,
                    },
                )
                .expect("ChaCha20-Poly1305 encryption of a bounded chunk cannot fail")
        })
        .collect();
    let mut out = Vec::with_capacity(plain.len() + chunks * TAG);
    for c in sealed {
        out.extend_from_slice(&c);
    }
    out
}

/// Decrypt what [`encrypt`] produced; any change to the bytes is an error.
pub fn decrypt(key: &JobKey, label: &str, aad: &Hash32, ct: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let cipher = key.subkey(label);
    if ct.len() < TAG {
        return Err(CryptoError::Truncated(ct.len()));
    }
    use rayon::prelude::*;
    let chunks = ct.len().div_ceil(CHUNK + TAG);
    let opened: Vec<Vec<u8>> = (0..chunks)
        .into_par_iter()
        .map(|i| {
            let part = &ct[i * (CHUNK + TAG)..((i + 1) * (CHUNK + TAG)).min(ct.len())];
            cipher
                .decrypt(
                    &nonce(i as u64, i + 1 == chunks),
                    Payload {
                        msg: part,
                        aad: &aad.0,
                    },
                )
                .map_err(|_| CryptoError::Chunk(i as u64))
        })
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(ct.len());
    for p in opened {
        out.extend_from_slice(&p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_tampering_fails() {
        let key = random_key();
        let c = Hash32::of(b"c");
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 7] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let ct = encrypt(&key, "dataset", &c, &plain);
            assert_eq!(
                decrypt(&key, "dataset", &c, &ct).unwrap(),
                plain,
                "len {len}"
            );
            assert!(
                decrypt(&key, "model", &c, &ct).is_err(),
                "label binds, len {len}"
            );
            let mut bad = ct.clone();
            let at = bad.len() / 2;
            bad[at] ^= 1;
            assert!(
                decrypt(&key, "dataset", &c, &bad).is_err(),
                "flip, len {len}"
            );
            if len > CHUNK {
                // Dropping the last chunk is detected: the new last chunk lacks the flag.
                let cut = &ct[..CHUNK + TAG];
                assert!(
                    decrypt(&key, "dataset", &c, cut).is_err(),
                    "truncation, len {len}"
                );
            }
        }
    }
}
