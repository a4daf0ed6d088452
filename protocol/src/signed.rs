//! Signed envelopes.
//!
//! A [`Signed<T>`] carries the signer, the body's canonical encoding and an ed25519
//! signature over a domain-separated message:
//!
//! ```text
//! "cloudchain/v1/" KIND 0x00 network_id(32) body_bytes
//! ```
//!
//! so a signature made for one kind, or on one network, is worthless for any other.
//! Keeping the body as bytes means the signature covers exactly what travelled; the
//! typed body is only handed out by [`Signed::verify`].
//!
//! **One verification equation.** Replicas must agree on which signatures are
//! valid whether they check them one by one or in a batch. ed25519-dalek's
//! `verify_strict` is cofactorless and its `verify_batch` is cofactorless with
//! random weights, so a signature whose `R` (or key) has a small torsion
//! component fails the first and passes the second in some batches only. Every
//! check here uses the cofactored equation `[8]([s]B − [k]A − R) = 0` instead
//! (as ZIP-215 does), alone ([`verify_signature`]) or batched with weights
//! derived from the whole batch ([`verify_signatures`]), and refuses a
//! non-canonical `s` and a small-order key or `R` on both paths.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

use crate::codec::{self, CodecError, Wire};
use crate::identity::{AccountId, Identity};
use crate::types::{Hash32, NetworkId};

/// Why a signed thing was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureError {
    #[error("{kind}: signer {signer:?} is not a valid public key")]
    BadSigner {
        kind: &'static str,
        signer: AccountId,
    },
    #[error("{kind}: bad signature by {signer:?}")]
    BadSignature {
        kind: &'static str,
        signer: AccountId,
    },
    #[error("{kind}: signed by {got:?}, expected {expected:?}")]
    WrongSigner {
        kind: &'static str,
        got: AccountId,
        expected: AccountId,
    },
    #[error("{kind}: missing signature of {signer:?}")]
    MissingSignature {
        kind: &'static str,
        signer: AccountId,
    },
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// The message that is actually signed.
pub fn signing_message(kind: &str, network: &NetworkId, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + kind.len() + 1 + 32 + body.len());
    m.extend_from_slice(b"cloudchain/v1/");
    m.extend_from_slice(kind.as_bytes());
    m.push(0);
    m.extend_from_slice(&network.0);
    m.extend_from_slice(body);
    m
}

/// A raw ed25519 signature, serialized as 64 bytes with no length prefix.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sig(#[serde(with = "crate::codec::bytes64")] pub [u8; 64]);

impl std::fmt::Debug for Sig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sig({}…)", hex::encode(&self.0[..4]))
    }
}

/// Sign `body` (already encoded) as `kind` on `network`.
pub fn sign_bytes(identity: &Identity, kind: &str, network: &NetworkId, body: &[u8]) -> Sig {
    Sig(identity
        .sign_raw(&signing_message(kind, network, body))
        .to_bytes())
}

/// Verify one signature strictly (no small-order keys, canonical S).
///
/// A signature that passed once in this process passes again without the curve
/// arithmetic: see [`SigCheck`] for why and how that is used.
pub fn verify_bytes(
    kind: &'static str,
    network: &NetworkId,
    signer: &AccountId,
    body: &[u8],
    sig: &Sig,
) -> Result<(), SignatureError> {
    let digest = check_digest(kind, network, signer, body, sig);
    if verified().contains(&digest) {
        return Ok(());
    }
    let key = verifying_key(signer).ok_or(SignatureError::BadSigner {
        kind,
        signer: *signer,
    })?;
    if !verify_signature(&key, &signing_message(kind, network, body), &sig.0) {
        return Err(SignatureError::BadSignature {
            kind,
            signer: *signer,
        });
    }
    verified().insert(digest);
    Ok(())
}

/// What identifies one signature check: the signer, the signature and the exact
/// signed message (kind, network, body), hashed.
fn check_digest(
    kind: &str,
    network: &NetworkId,
    signer: &AccountId,
    body: &[u8],
    sig: &Sig,
) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&signer.0);
    h.update(&sig.0);
    h.update(&(kind.len() as u64).to_le_bytes());
    h.update(kind.as_bytes());
    h.update(&network.0);
    h.update(body);
    *h.finalize().as_bytes()
}

/// Checks remembered per generation; two generations are kept.
const VERIFIED_CACHE: usize = 1 << 16;

/// The signature checks that passed in this process, bounded: when the current
/// generation is full it becomes the old one and the older is forgotten. Only
/// passes are kept, keyed by a hash of everything the check reads, and a check
/// of the same bytes always gives the same answer; so the cache changes the cost
/// of a check, never its result.
#[derive(Default)]
struct Verified {
    current: foldhash::HashSet<[u8; 32]>,
    old: foldhash::HashSet<[u8; 32]>,
}

struct VerifiedCache(Mutex<Verified>);

impl VerifiedCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Verified> {
        // A panic elsewhere cannot leave a half-inserted hash: still sound.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    fn contains(&self, d: &[u8; 32]) -> bool {
        let v = self.lock();
        v.current.contains(d) || v.old.contains(d)
    }
    fn insert(&self, d: [u8; 32]) {
        let mut v = self.lock();
        if v.current.len() >= VERIFIED_CACHE {
            v.old = std::mem::take(&mut v.current);
        }
        v.current.insert(d);
    }
}

fn verified() -> &'static VerifiedCache {
    static CACHE: OnceLock<VerifiedCache> = OnceLock::new();
    CACHE.get_or_init(|| VerifiedCache(Mutex::default()))
}

/// One signature check, detached from its envelope so that it can run ahead of
/// need, e.g. on another core.
///
/// A replica folds each settlement's certificate and each escrow lock's contract
/// when it refolds, long after the verdicts and signatures were made. A peer (or
/// the simulator) that sees them earlier can [`SigCheck::run`] them meanwhile;
/// the later [`verify_bytes`] of the same bytes then finds the pass remembered.
/// Whether or not that happened first, every check gives the same answer.
#[derive(Clone, Debug)]
pub struct SigCheck {
    pub kind: &'static str,
    pub network: NetworkId,
    pub signer: AccountId,
    pub body: Vec<u8>,
    pub signature: Sig,
}

impl SigCheck {
    /// Verify (and remember a pass).
    pub fn run(&self) -> Result<(), SignatureError> {
        verify_bytes(
            self.kind,
            &self.network,
            &self.signer,
            &self.body,
            &self.signature,
        )
    }
}

/// Most decoded keys [`verifying_key`] keeps; a network has far fewer active signers.
const KEY_CACHE: usize = 8_192;

/// The decoded public key of `signer`, or `None` if it is not a valid point.
///
/// Decoding decompresses a curve point, about a tenth of the cost of a
/// verification, and the same few thousand signers sign nearly everything, so
/// decoded keys are kept, process-wide (the cache is emptied when full). Only
/// valid keys are kept, and a key decodes the same way every time, so the cache
/// changes nothing but the cost.
fn verifying_key(signer: &AccountId) -> Option<VerifyingKey> {
    static KEYS: OnceLock<Mutex<HashMap<[u8; 32], VerifyingKey>>> = OnceLock::new();
    let keys = KEYS.get_or_init(Mutex::default);
    // A poisoned lock only means another thread panicked mid-insert; the map
    // holds whole entries only, so it is still sound to use.
    if let Some(k) = keys
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&signer.0)
    {
        return Some(*k);
    }
    let key = VerifyingKey::from_bytes(&signer.0).ok()?;
    let mut keys = keys
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if keys.len() >= KEY_CACHE {
        keys.clear();
    }
    keys.insert(signer.0, key);
    Some(key)
}

/// A body of kind `T` signed by one account.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    pub signer: AccountId,
    /// Shared by clones: a message gossiped to many engines (or, in the
    /// simulator, to many peers) is one allocation. Encoded as `Vec<u8>` is.
    body: Arc<[u8]>,
    pub signature: Sig,
    /// What was computed from this envelope, shared by its clones; never
    /// encoded, so whatever arrives from the network starts with none.
    #[serde(skip)]
    memo: Arc<Memo<T>>,
    #[serde(skip)]
    _kind: PhantomData<fn() -> T>,
}

/// Results computed from an envelope's bytes, each kept with the signer and
/// signature it was computed for. The body cannot change (it is private and
/// shared), but `signer` and `signature` are public fields: a clone whose
/// signature was altered finds the memo does not match and computes afresh.
/// Only a passed check is kept, so the memo changes the cost of
/// [`Signed::verify`] and [`Signed::id`], never their answer.
struct Memo<T> {
    id: OnceLock<(AccountId, Sig, Hash32)>,
    passed: OnceLock<(NetworkId, AccountId, Sig)>,
    /// The decoded body (it depends on the body alone), shared: a simulator's
    /// thousand order books hold one copy of an offer.
    body: OnceLock<Arc<T>>,
}

impl<T> Default for Memo<T> {
    fn default() -> Self {
        Memo {
            id: OnceLock::new(),
            passed: OnceLock::new(),
            body: OnceLock::new(),
        }
    }
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Signed {
            signer: self.signer,
            body: Arc::clone(&self.body),
            signature: self.signature,
            memo: Arc::clone(&self.memo),
            _kind: PhantomData,
        }
    }
}
impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.signer == other.signer && self.body == other.body && self.signature == other.signature
    }
}
impl<T> Eq for Signed<T> {}

impl<T: Wire> std::fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Signed<{}>({} bytes by {:?})",
            T::KIND,
            self.body.len(),
            self.signer
        )
    }
}

impl<T: Wire> Signed<T> {
    /// Encode and sign a body.
    pub fn sign(identity: &Identity, network: &NetworkId, body: &T) -> Result<Self, CodecError> {
        let body = codec::encode(body)?;
        let signature = sign_bytes(identity, T::KIND, network, &body);
        Ok(Signed {
            signer: identity.account(),
            body: body.into(),
            signature,
            memo: Arc::default(),
            _kind: PhantomData,
        })
    }

    /// The signature check of this envelope, to run elsewhere (see [`SigCheck`]).
    pub fn sig_check(&self, network: &NetworkId) -> SigCheck {
        SigCheck {
            kind: T::KIND,
            network: *network,
            signer: self.signer,
            body: self.body.to_vec(),
            signature: self.signature,
        }
    }

    /// Check the signature, then decode the body.
    pub fn verify(&self, network: &NetworkId) -> Result<T, SignatureError> {
        Ok(T::clone(&*self.verify_shared(network)?))
    }

    /// [`Signed::verify`], the body shared with this envelope's clones.
    pub fn verify_shared(&self, network: &NetworkId) -> Result<Arc<T>, SignatureError> {
        let me = (*network, self.signer, self.signature);
        if self.memo.passed.get() != Some(&me) {
            verify_bytes(T::KIND, network, &self.signer, &self.body, &self.signature)?;
            // A clone checked on another network (or with another signature)
            // may have filled it first: then this pass is simply not kept.
            let _ = self.memo.passed.set(me);
        }
        Ok(self.body_shared_unverified()?)
    }

    /// [`Signed::verify`], and also require a particular signer.
    pub fn verify_by(
        &self,
        network: &NetworkId,
        expected: &AccountId,
    ) -> Result<T, SignatureError> {
        if &self.signer != expected {
            return Err(SignatureError::WrongSigner {
                kind: T::KIND,
                got: self.signer,
                expected: *expected,
            });
        }
        self.verify(network)
    }

    /// Decode the body WITHOUT checking the signature: for display of data that
    /// was verified before it was stored.
    pub fn body_unverified(&self) -> Result<T, CodecError> {
        Ok(T::clone(&*self.body_shared_unverified()?))
    }

    /// [`Signed::body_unverified`], shared with this envelope's clones.
    pub fn body_shared_unverified(&self) -> Result<Arc<T>, CodecError> {
        if let Some(t) = self.memo.body.get() {
            return Ok(Arc::clone(t));
        }
        let t = Arc::new(codec::decode::<T>(&self.body)?);
        let _ = self.memo.body.set(Arc::clone(&t));
        Ok(t)
    }

    /// The signed body bytes.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    /// The hash of the whole envelope: a stable id for offers, bids, receipts.
    pub fn id(&self) -> Hash32 {
        if let Some((signer, sig, id)) = self.memo.id.get()
            && *signer == self.signer
            && *sig == self.signature
        {
            return *id;
        }
        let mut h = blake3::Hasher::new();
        h.update(T::KIND.as_bytes());
        h.update(&self.signer.0);
        h.update(&self.body);
        h.update(&self.signature.0);
        let id = Hash32(*h.finalize().as_bytes());
        let _ = self.memo.id.set((self.signer, self.signature, id));
        id
    }
}

/// A signature's parts, decoded: `None` if it can never be valid (an `R` that
/// is no point or of small order, a non-canonical `s`, a small-order key).
struct Parts {
    a: EdwardsPoint,
    r: EdwardsPoint,
    s: Scalar,
    k: Scalar,
}

fn parts(key: &VerifyingKey, msg: &[u8], sig: &[u8; 64]) -> Option<Parts> {
    if key.is_weak() {
        return None;
    }
    let mut r_bytes = [0u8; 32];
    r_bytes.copy_from_slice(&sig[..32]);
    let mut s_bytes = [0u8; 32];
    s_bytes.copy_from_slice(&sig[32..]);
    let r = CompressedEdwardsY(r_bytes).decompress()?;
    if r.is_small_order() {
        return None;
    }
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))?;
    let mut h = Sha512::new();
    h.update(r_bytes);
    h.update(key.as_bytes());
    h.update(msg);
    let wide: [u8; 64] = h.finalize().into();
    Some(Parts {
        a: key.to_edwards(),
        r,
        s,
        k: Scalar::from_bytes_mod_order_wide(&wide),
    })
}

/// Check one ed25519 signature with the cofactored equation (see the module
/// docs): exactly what [`verify_signatures`] accepts in any batch.
pub fn verify_signature(key: &VerifyingKey, msg: &[u8], sig: &[u8; 64]) -> bool {
    let Some(p) = parts(key, msg, sig) else {
        return false;
    };
    let sb_minus_ka = EdwardsPoint::vartime_double_scalar_mul_basepoint(&(-p.k), &p.a, &p.s);
    (sb_minus_ka - p.r).mul_by_cofactor().is_identity()
}

/// Check many signatures at once: `[8](Σ zᵢRᵢ + Σ zᵢkᵢAᵢ − (Σ zᵢsᵢ)B) = 0`
/// with 128-bit weights `zᵢ` derived from the whole batch (so the answer is
/// a function of the batch, and nobody can choose signatures that cancel).
/// True only if every signature passes [`verify_signature`] (but for a
/// negligible chance); false says some does not: check them one by one.
pub fn verify_signatures(items: &[(VerifyingKey, &[u8], [u8; 64])]) -> bool {
    let mut w = blake3::Hasher::new_derive_key("cloudchain/v1/ed25519-batch-weights");
    let mut all = Vec::with_capacity(items.len());
    for (key, msg, sig) in items {
        let Some(p) = parts(key, msg, sig) else {
            return false;
        };
        w.update(key.as_bytes());
        w.update(sig);
        w.update(&(msg.len() as u64).to_le_bytes());
        w.update(msg);
        all.push(p);
    }
    let mut xof = w.finalize_xof();
    let mut scalars = Vec::with_capacity(2 * all.len() + 1);
    let mut points = Vec::with_capacity(2 * all.len() + 1);
    let mut b = Scalar::ZERO;
    for p in &all {
        let mut z16 = [0u8; 16];
        xof.fill(&mut z16);
        let z = Scalar::from(u128::from_le_bytes(z16));
        b -= z * p.s;
        scalars.push(z);
        points.push(p.r);
        scalars.push(z * p.k);
        points.push(p.a);
    }
    scalars.push(b);
    points.push(curve25519_dalek::constants::ED25519_BASEPOINT_POINT);
    EdwardsPoint::vartime_multiscalar_mul(scalars, points)
        .mul_by_cofactor()
        .is_identity()
}

/// Verify many envelopes of one kind at once with ed25519 batch verification.
///
/// On success every body is returned in order. If the batch fails, the envelopes are
/// checked one by one, so the error names the first bad one (by index).
pub fn verify_batch<T: Wire>(
    network: &NetworkId,
    items: &[Signed<T>],
) -> Result<Vec<T>, (usize, SignatureError)> {
    let mut keys = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        keys.push(verifying_key(&it.signer).ok_or((
            i,
            SignatureError::BadSigner {
                kind: T::KIND,
                signer: it.signer,
            },
        ))?);
    }
    let messages: Vec<Vec<u8>> = items
        .iter()
        .map(|it| signing_message(T::KIND, network, &it.body))
        .collect();
    let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    let batch: Vec<(VerifyingKey, &[u8], [u8; 64])> = keys
        .iter()
        .zip(&refs)
        .zip(items)
        .map(|((k, m), it)| (*k, *m, it.signature.0))
        .collect();
    if verify_signatures(&batch) {
        return items
            .iter()
            .enumerate()
            .map(|(i, it)| codec::decode(&it.body).map_err(|e| (i, e.into())))
            .collect();
    }
    items
        .iter()
        .enumerate()
        .map(|(i, it)| it.verify(network).map_err(|e| (i, e)))
        .collect()
}

/// A body signed by several accounts (a contract, a quorum certificate).
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct MultiSigned<T> {
    body: Vec<u8>,
    /// Sorted by signer, at most one per signer.
    pub signatures: Vec<(AccountId, Sig)>,
    #[serde(skip)]
    _kind: PhantomData<fn() -> T>,
}

impl<T> Clone for MultiSigned<T> {
    fn clone(&self) -> Self {
        MultiSigned {
            body: self.body.clone(),
            signatures: self.signatures.clone(),
            _kind: PhantomData,
        }
    }
}
impl<T> PartialEq for MultiSigned<T> {
    fn eq(&self, other: &Self) -> bool {
        self.body == other.body && self.signatures == other.signatures
    }
}
impl<T> Eq for MultiSigned<T> {}

impl<T: Wire> std::fmt::Debug for MultiSigned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MultiSigned<{}>({} bytes, {} signatures)",
            T::KIND,
            self.body.len(),
            self.signatures.len()
        )
    }
}

impl<T: Wire> MultiSigned<T> {
    /// Start with the body and no signatures.
    pub fn new(body: &T) -> Result<Self, CodecError> {
        Ok(MultiSigned {
            body: codec::encode(body)?,
            signatures: Vec::new(),
            _kind: PhantomData,
        })
    }

    /// Add (or replace) this identity's signature.
    pub fn add_signature(&mut self, identity: &Identity, network: &NetworkId) {
        let sig = sign_bytes(identity, T::KIND, network, &self.body);
        self.insert(identity.account(), sig);
    }

    /// Add a signature made elsewhere (it is checked by `verify_signers`).
    pub fn insert(&mut self, signer: AccountId, sig: Sig) {
        match self.signatures.binary_search_by(|(a, _)| a.cmp(&signer)) {
            Ok(i) => self.signatures[i].1 = sig,
            Err(i) => self.signatures.insert(i, (signer, sig)),
        }
    }

    /// Check that each of `required` signed, that every signature present is valid,
    /// and that signers are sorted and unique; then decode the body.
    pub fn verify_signers(
        &self,
        network: &NetworkId,
        required: &[AccountId],
    ) -> Result<T, SignatureError> {
        if self.signatures.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(CodecError::NonCanonical { kind: T::KIND }.into());
        }
        for r in required {
            if !self.signatures.iter().any(|(a, _)| a == r) {
                return Err(SignatureError::MissingSignature {
                    kind: T::KIND,
                    signer: *r,
                });
            }
        }
        for (signer, sig) in &self.signatures {
            verify_bytes(T::KIND, network, signer, &self.body, sig)?;
        }
        Ok(codec::decode(&self.body)?)
    }

    /// The check of each signature present (see [`SigCheck`]).
    pub fn sig_checks(&self, network: &NetworkId) -> Vec<SigCheck> {
        self.signatures
            .iter()
            .map(|(signer, sig)| SigCheck {
                kind: T::KIND,
                network: *network,
                signer: *signer,
                body: self.body.clone(),
                signature: *sig,
            })
            .collect()
    }

    /// Decode without checking signatures.
    pub fn body_unverified(&self) -> Result<T, CodecError> {
        codec::decode(&self.body)
    }

    /// The signed body bytes.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    /// The hash of the body: the same whoever signed it.
    pub fn body_hash(&self) -> Hash32 {
        Hash32(*blake3::hash(&self.body).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Probe;
    use crate::types::Timestamp;

    fn probe(identity: &Identity, network: &NetworkId) -> Signed<Probe> {
        let body = Probe {
            oracle: identity.account(),
            provider: identity.account(),
            sent_at: Timestamp(1),
            nonce: 7,
        };
        Signed::sign(identity, network, &body).unwrap()
    }

    /// A remembered pass covers exactly the bytes that passed: any change to the
    /// signer, signature, kind, network or body is checked afresh, and fails.
    #[test]
    fn a_remembered_pass_covers_only_the_same_bytes() {
        let id = Identity::from_seed(9);
        let other = Identity::from_seed(10);
        let net = NetworkId([3; 32]);
        let s = probe(&id, &net);
        let check = s.sig_check(&net);
        check.run().unwrap();
        check.run().unwrap();
        assert!(s.verify(&net).is_ok());

        let mut bad_sig = check.clone();
        bad_sig.signature.0[5] ^= 1;
        assert!(bad_sig.run().is_err());
        let mut bad_body = check.clone();
        bad_body.body[0] ^= 1;
        assert!(bad_body.run().is_err());
        let mut bad_signer = check.clone();
        bad_signer.signer = other.account();
        assert!(bad_signer.run().is_err());
        let mut bad_kind = check.clone();
        bad_kind.kind = "probe-reply";
        assert!(bad_kind.run().is_err());
        let mut bad_net = check.clone();
        bad_net.network = NetworkId([4; 32]);
        assert!(bad_net.run().is_err());
        // And the pass is still there.
        assert!(check.run().is_ok());
    }

    /// Clones share what was computed from their envelope, but an altered
    /// clone, another network, or the same bytes decoded afresh are checked
    /// again: the memo never turns a failing check into a pass.
    #[test]
    fn an_envelope_memo_is_shared_by_clones_and_covers_only_what_passed() {
        let id = Identity::from_seed(12);
        let other = Identity::from_seed(13);
        let net = NetworkId([6; 32]);
        let s = probe(&id, &net);
        assert!(s.verify(&net).is_ok());
        let twin = s.clone();
        assert!(Arc::ptr_eq(&s.memo, &twin.memo));
        assert_eq!(twin.memo.passed.get(), Some(&(net, s.signer, s.signature)));
        assert_eq!(twin.id(), s.id());

        let mut bad_sig = s.clone();
        bad_sig.signature.0[5] ^= 1;
        assert!(bad_sig.verify(&net).is_err());
        assert_ne!(bad_sig.id(), s.id());
        let mut bad_signer = s.clone();
        bad_signer.signer = other.account();
        assert!(bad_signer.verify(&net).is_err());
        assert_ne!(bad_signer.id(), s.id());
        assert!(s.clone().verify(&NetworkId([7; 32])).is_err());
        // The memo is not encoded: what arrives starts with none.
        let bytes = crate::codec::encode_unbounded("test", &s).unwrap();
        let back: Signed<Probe> = crate::codec::decode_limited("test", 1 << 10, &bytes).unwrap();
        assert!(back.memo.passed.get().is_none() && back.memo.body.get().is_none());
        assert_eq!(back, s);
        assert!(back.verify(&net).is_ok());
        // And the shared pass still stands for the original bytes.
        assert!(twin.verify(&net).is_ok());
        assert_eq!(twin.id(), s.id());
    }

    #[test]
    fn the_cache_forgets_an_old_generation_and_still_verifies() {
        let id = Identity::from_seed(11);
        let net = NetworkId([5; 32]);
        let s = probe(&id, &net);
        s.sig_check(&net).run().unwrap();
        // Fill two generations with other digests: the pass is forgotten, and a
        // check verifies again (and passes).
        for i in 0..(2 * VERIFIED_CACHE as u64 + 1) {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&i.to_le_bytes());
            d[31] = 0xAB;
            verified().insert(d);
        }
        let digest = check_digest("probe", &net, &s.signer, s.body_bytes(), &s.signature);
        assert!(!verified().contains(&digest));
        assert!(s.verify(&net).is_ok());
        assert!(verified().contains(&digest));
    }

    /// A signature whose `R` carries a point of order 2: the signer's own,
    /// valid under the cofactored equation, refused by the cofactorless one.
    fn torsioned(sk: &ed25519_dalek::SigningKey, msg: &[u8]) -> [u8; 64] {
        let a = sk.to_scalar();
        let r = Scalar::from_bytes_mod_order([9; 32]);
        let mut t = [0xff; 32];
        t[0] = 0xec;
        t[31] = 0x7f; // y = −1: the point (0, −1), of order 2
        let t = CompressedEdwardsY(t).decompress().unwrap();
        assert!(t.is_small_order() && !t.is_identity());
        let r_point = (EdwardsPoint::mul_base(&r) + t).compress();
        let mut h = Sha512::new();
        h.update(r_point.as_bytes());
        h.update(sk.verifying_key().as_bytes());
        h.update(msg);
        let wide: [u8; 64] = h.finalize().into();
        let s = r + Scalar::from_bytes_mod_order_wide(&wide) * a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(r_point.as_bytes());
        sig[32..].copy_from_slice(s.as_bytes());
        sig
    }

    /// #14: ed25519-dalek's cofactorless batch passed a torsioned signature in
    /// some batches and not in others, while single checks refused it, so two
    /// replicas could disagree on which entries exist. Our single and batch
    /// checks give one answer for it in every batch.
    #[test]
    fn batch_and_single_checks_agree_on_a_torsioned_signature() {
        use ed25519_dalek::ed25519::signature::Signer;
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let key = sk.verifying_key();
        let msg = b"a message with a torsioned R".as_slice();
        let bad = torsioned(&sk, msg);
        // The library's two paths disagree (this is what the fix is for).
        let sig = ed25519_dalek::Signature::from_bytes(&bad);
        assert!(key.verify_strict(msg, &sig).is_err());
        let mut dalek_passed = 0;
        let mut ours = Vec::new();
        for i in 0..64u32 {
            let other = format!("companion {i}");
            let other_sig = sk.sign(other.as_bytes());
            let dalek = ed25519_dalek::verify_batch(
                &[msg, other.as_bytes()],
                &[sig, other_sig],
                &[key, key],
            );
            dalek_passed += usize::from(dalek.is_ok());
            ours.push(verify_signatures(&[
                (key, msg, bad),
                (key, other.as_bytes(), other_sig.to_bytes()),
            ]));
        }
        assert!(
            dalek_passed > 0 && dalek_passed < 64,
            "the cofactorless batch passed it {dalek_passed} times in 64"
        );
        // Ours: the same answer alone and in every batch.
        let single = verify_signature(&key, msg, &bad);
        assert!(single, "valid under the cofactored equation");
        assert!(ours.iter().all(|b| *b == single), "{ours:?}");
    }

    /// The torsion-signature scenario on 100 seeds: a signer's torsioned
    /// signature, in a batch of 1 to 8 with valid companions, gets the
    /// single check's answer on every seed.
    #[test]
    fn a_hundred_torsioned_signatures_get_one_answer_in_any_batch() {
        use ed25519_dalek::ed25519::signature::Signer;
        for seed in 0..100u64 {
            let r = *blake3::hash(&seed.to_le_bytes()).as_bytes();
            let sk = ed25519_dalek::SigningKey::from_bytes(&r);
            let key = sk.verifying_key();
            let msg = r[..(usize::from(r[0]) % 32) + 1].to_vec();
            let bad = torsioned(&sk, &msg);
            let single = verify_signature(&key, &msg, &bad);
            let companions: Vec<Vec<u8>> = (0..usize::from(r[1]) % 8)
                .map(|i| format!("companion {seed} {i}").into_bytes())
                .collect();
            let sigs: Vec<[u8; 64]> = companions.iter().map(|m| sk.sign(m).to_bytes()).collect();
            let mut items: Vec<(VerifyingKey, &[u8], [u8; 64])> = vec![(key, &msg, bad)];
            items.extend(
                companions
                    .iter()
                    .zip(&sigs)
                    .map(|(m, s)| (key, m.as_slice(), *s)),
            );
            assert_eq!(verify_signatures(&items), single, "seed {seed}");
        }
    }

    #[test]
    fn single_and_batch_checks_refuse_what_is_not_a_signature() {
        use ed25519_dalek::ed25519::signature::Signer;
        let sk = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let key = sk.verifying_key();
        let good: Vec<(Vec<u8>, [u8; 64])> = (0..5u8)
            .map(|i| (vec![i; 10], sk.sign(&[i; 10]).to_bytes()))
            .collect();
        let batch = |v: &[(Vec<u8>, [u8; 64])]| {
            let items: Vec<(VerifyingKey, &[u8], [u8; 64])> =
                v.iter().map(|(m, s)| (key, m.as_slice(), *s)).collect();
            verify_signatures(&items)
        };
        assert!(batch(&good));
        assert!(good.iter().all(|(m, s)| verify_signature(&key, m, s)));
        // A flipped bit in R, in s, or in the message; s not canonical.
        for case in 0..4 {
            let mut v = good.clone();
            match case {
                0 => v[2].1[3] ^= 1,
                1 => v[2].1[40] ^= 1,
                2 => v[2].0[0] ^= 1,
                _ => v[2].1[63] |= 0xf0,
            }
            assert!(!batch(&v), "case {case}");
            assert!(!verify_signature(&key, &v[2].0, &v[2].1), "case {case}");
        }
        // A small-order key signs nothing.
        let mut ident = [0u8; 32];
        ident[0] = 1; // the identity point
        let weak = VerifyingKey::from_bytes(&ident).unwrap();
        assert!(!verify_signature(&weak, &good[0].0, &good[0].1));
        assert!(!verify_signatures(&[(weak, &good[0].0, good[0].1)]));
    }
}
