//! Job keys and how they are handed over: each job's inputs and result are
//! encrypted under a per-job key (the driver encrypts blobs with it), which the
//! requester seals to each reader it chooses: the provider, and the committee
//! members who re-execute the job.
//!
//! **Sealing.** Both parties turn their ed25519 keys into X25519 keys (the
//! standard birational map: the secret's clamped scalar, the public key's
//! Montgomery form) and do a static-static Diffie-Hellman. The shared secret,
//! bound to the contract id, derives a wrapping key; the job key is encrypted
//! under it. Only the two parties can derive the wrapping key.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use protocol::{AccountId, Hash32, Identity};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use zeroize::Zeroizing;

/// Why a job key could not be sealed or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    #[error("{0:?} is not a valid ed25519 public key")]
    BadKey(AccountId),
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
    /// A key from 32 secret bytes (the driver draws them from the OS).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        JobKey(Zeroizing::new(b))
    }

    /// A ChaCha20-Poly1305 cipher under the subkey for `label` (`model`,
    /// `dataset`, `result`), so no (key, nonce) pair is used for two blobs.
    pub fn subkey(&self, label: &str) -> ChaCha20Poly1305 {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(b"cloudchain/v1/blob-subkey/");
        h.update(label.as_bytes());
        let sub = Zeroizing::new(*h.finalize().as_bytes());
        ChaCha20Poly1305::new(Key::from_slice(sub.as_ref()))
    }

    /// The key's bytes, to persist it with the job it belongs to.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The nonce of chunk `index` (the STREAM construction: a last-chunk flag).
pub fn nonce(index: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_le_bytes());
    n[8] = u8::from(last);
    *Nonce::from_slice(&n)
}

/// The wrapping key shared by `me` and `peer` for one contract.
fn wrap_key(
    me: &Identity,
    peer: &AccountId,
    contract: &Hash32,
) -> Result<ChaCha20Poly1305, KeyError> {
    let shared = shared_secret(me, peer)?;
    let mut h = blake3::Hasher::new_derive_key("cloudchain/v1/job-key-wrap");
    h.update(shared.as_ref());
    h.update(&contract.0);
    let k = Zeroizing::new(*h.finalize().as_bytes());
    Ok(ChaCha20Poly1305::new(Key::from_slice(k.as_ref())))
}

/// Shared secrets kept per generation; two generations are kept (at most
/// about 13 MB).
const SHARED_CACHE: usize = 1 << 16;

/// The static-static X25519 secret of `me` and `peer`.
///
/// A requester seals to the same committee members job after job, and a member
/// opens grants from the same requesters, so the Diffie-Hellman (a scalar
/// multiplication, more than a signature costs) is done once per pair and kept,
/// process-wide and bounded: when the current generation is full it becomes
/// the old one and the older is dropped (and zeroed); a secret found in the
/// old generation moves to the current one, so the pairs in use stay. An
/// account is its key, so the pair of accounts names the secret, in either
/// order (X25519 gives both parties the same secret: a simulator that runs
/// both does the multiplication once); the cache changes the cost, never the
/// key. It holds nothing that the identities in this process could not derive.
fn shared_secret(me: &Identity, peer: &AccountId) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    static CACHE: OnceLock<Mutex<Generations>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    let me_ = me.account();
    let pair = (me_.min(*peer), me_.max(*peer));
    {
        // A poisoned lock only means a panic elsewhere; whole entries only.
        let mut c = cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = c.0.get(&pair) {
            return Ok(s.clone());
        }
        if let Some(s) = c.1.remove(&pair) {
            remember(&mut c, pair, s.clone());
            return Ok(s);
        }
    }
    let signing = ed25519_dalek::SigningKey::from_bytes(&me.secret_bytes());
    let secret = x25519_dalek::StaticSecret::from(signing.to_scalar_bytes());
    let their = peer.verifying_key().map_err(|_| KeyError::BadKey(*peer))?;
    let their = x25519_dalek::PublicKey::from(their.to_montgomery().to_bytes());
    let shared = Zeroizing::new(secret.diffie_hellman(&their).to_bytes());
    if shared.iter().all(|&b| b == 0) {
        // A small-order public key: refuse rather than derive a known key.
        return Err(KeyError::BadKey(*peer));
    }
    let mut c = cache.lock().unwrap_or_else(PoisonError::into_inner);
    remember(&mut c, pair, shared.clone());
    Ok(shared)
}

/// The generations of [`shared_secret`]'s cache, current first.
type Generations = (
    HashMap<(AccountId, AccountId), Zeroizing<[u8; 32]>>,
    HashMap<(AccountId, AccountId), Zeroizing<[u8; 32]>>,
);

/// Put a secret in the current generation, which becomes the old one when full.
fn remember(c: &mut Generations, pair: (AccountId, AccountId), s: Zeroizing<[u8; 32]>) {
    if c.0.len() >= SHARED_CACHE {
        c.1 = std::mem::take(&mut c.0);
    }
    c.0.insert(pair, s);
}

/// Seal the job key to `peer` (48 bytes: the key and its tag).
pub fn seal_job_key(
    me: &Identity,
    peer: &AccountId,
    contract: &Hash32,
    key: &JobKey,
) -> Result<Vec<u8>, KeyError> {
    let w = wrap_key(me, peer, contract)?;
    w.encrypt(&nonce(0, true), &key.0[..])
        .map_err(|_| KeyError::Seal)
}

/// Open a job key sealed by `peer` to `me`.
pub fn open_job_key(
    me: &Identity,
    peer: &AccountId,
    contract: &Hash32,
    sealed: &[u8],
) -> Result<JobKey, KeyError> {
    let w = wrap_key(me, peer, contract)?;
    let pt = Zeroizing::new(
        w.decrypt(&nonce(0, true), sealed)
            .map_err(|_| KeyError::Seal)?,
    );
    let bytes: [u8; 32] = pt.as_slice().try_into().map_err(|_| KeyError::Seal)?;
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
        let key = JobKey::from_bytes([7; 32]);
        let sealed = seal_job_key(&req, &prov.account(), &c, &key).unwrap();
        let opened = open_job_key(&prov, &req.account(), &c, &sealed).unwrap();
        assert_eq!(opened.expose(), key.expose());
        assert_eq!(
            open_job_key(&eve, &req.account(), &c, &sealed).unwrap_err(),
            KeyError::Seal
        );
        let other = Hash32::of(b"other contract");
        assert_eq!(
            open_job_key(&prov, &req.account(), &other, &sealed).unwrap_err(),
            KeyError::Seal
        );
    }
}
