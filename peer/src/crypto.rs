//! Job blobs encrypted so that only the requester and the chosen provider read them.
//!
//! - **Sealing the job key.** Both parties turn their ed25519 keys into X25519 keys
//!   (the standard birational map: the secret's clamped scalar, the public key's
//!   Montgomery form) and do a static-static Diffie-Hellman. The shared secret,
//!   bound to the contract id, derives a wrapping key; the random per-job key is
//!   encrypted under it. Only the two parties can derive the wrapping key.
//! - **Blobs.** Each blob is encrypted under a subkey derived from the job key and
//!   a label (`model`, `dataset`, `result`), so no (key, nonce) pair is ever reused.
//!   The plaintext is cut into 1 MiB chunks, each sealed with ChaCha20-Poly1305;
//!   the nonce is the chunk index plus a last-chunk flag (the STREAM construction),
//!   so reordering, truncation or extension of chunks fails authentication.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use protocol::{AccountId, Hash32, Identity};
use zeroize::Zeroizing;

/// Plaintext bytes per chunk.
pub const CHUNK: usize = 1 << 20;
const TAG: usize = 16;

/// Errors decrypting or unsealing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("{0:?} is not a valid ed25519 public key")]
    BadKey(AccountId),
    #[error("ciphertext chunk {0} failed authentication (wrong key, or tampered)")]
    Chunk(u64),
    #[error("ciphertext of {0} bytes is truncated")]
    Truncated(usize),
    #[error("the sealed job key failed authentication")]
    Seal,
}

/// A per-job symmetric key.
#[derive(Clone)]
pub struct JobKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for JobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobKey(..)")
    }
}

impl JobKey {
    /// A fresh random key from the OS.
    pub fn random() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        // The OS RNG failing is not recoverable for a node.
        getrandom::fill(k.as_mut()).expect("the OS random number generator failed");
        JobKey(k)
    }

    pub fn from_bytes(b: [u8; 32]) -> Self {
        JobKey(Zeroizing::new(b))
    }

    fn subkey(&self, label: &str) -> ChaCha20Poly1305 {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(b"cloudchain/v1/blob-subkey/");
        h.update(label.as_bytes());
        let sub = Zeroizing::new(*h.finalize().as_bytes());
        ChaCha20Poly1305::new(Key::from_slice(sub.as_ref()))
    }
}

fn nonce(index: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_le_bytes());
    n[8] = u8::from(last);
    *Nonce::from_slice(&n)
}

/// Encrypt a blob's bytes under `key` for `label`, bound to `aad` (the contract id).
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

/// The wrapping key shared by `me` and `peer` for one contract.
fn wrap_key(
    me: &Identity,
    peer: &AccountId,
    contract: &Hash32,
) -> Result<ChaCha20Poly1305, CryptoError> {
    let signing = ed25519_dalek::SigningKey::from_bytes(&me.secret_bytes());
    let secret = x25519_dalek::StaticSecret::from(signing.to_scalar_bytes());
    let their = peer
        .verifying_key()
        .map_err(|_| CryptoError::BadKey(*peer))?;
    let their = x25519_dalek::PublicKey::from(their.to_montgomery().to_bytes());
    let shared = Zeroizing::new(secret.diffie_hellman(&their).to_bytes());
    if shared.iter().all(|&b| b == 0) {
        // A small-order public key: refuse rather than derive a known key.
        return Err(CryptoError::BadKey(*peer));
    }
    let mut h = blake3::Hasher::new_derive_key("cloudchain/v1/job-key-wrap");
    h.update(shared.as_ref());
    h.update(&contract.0);
    let k = Zeroizing::new(*h.finalize().as_bytes());
    Ok(ChaCha20Poly1305::new(Key::from_slice(k.as_ref())))
}

/// Seal the job key to `peer` (48 bytes: the key and its tag).
pub fn seal_job_key(
    me: &Identity,
    peer: &AccountId,
    contract: &Hash32,
    key: &JobKey,
) -> Result<Vec<u8>, CryptoError> {
    let w = wrap_key(me, peer, contract)?;
    Ok(w.encrypt(&nonce(0, true), &key.0[..])
        .expect("sealing 32 bytes cannot fail"))
}

/// Open a job key sealed by `peer` to `me`.
pub fn open_job_key(
    me: &Identity,
    peer: &AccountId,
    contract: &Hash32,
    sealed: &[u8],
) -> Result<JobKey, CryptoError> {
    let w = wrap_key(me, peer, contract)?;
    let pt = Zeroizing::new(
        w.decrypt(&nonce(0, true), sealed)
            .map_err(|_| CryptoError::Seal)?,
    );
    let bytes: [u8; 32] = pt.as_slice().try_into().map_err(|_| CryptoError::Seal)?;
    Ok(JobKey::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_two_parties_can_open() {
        let req = Identity::from_seed(1);
        let prov = Identity::from_seed(2);
        let eve = Identity::from_seed(3);
        let c = Hash32::of(b"contract");
        let key = JobKey::random();
        let sealed = seal_job_key(&req, &prov.account(), &c, &key).unwrap();
        let opened = open_job_key(&prov, &req.account(), &c, &sealed).unwrap();
        assert_eq!(*opened.0, *key.0);
        assert_eq!(
            open_job_key(&eve, &req.account(), &c, &sealed).unwrap_err(),
            CryptoError::Seal
        );
        let other = Hash32::of(b"other contract");
        assert_eq!(
            open_job_key(&prov, &req.account(), &other, &sealed).unwrap_err(),
            CryptoError::Seal
        );
    }

    #[test]
    fn blobs_round_trip_and_tampering_fails() {
        let key = JobKey::random();
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
