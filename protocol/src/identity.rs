//! One ed25519 secret key, one identity.
//!
//! The same 32 public-key bytes are the ledger [`AccountId`], the libp2p `PeerId`
//! (an identity multihash of the ed25519 public key) and the iroh endpoint id.
//! The secret key lives in a key file in the data directory, mode 0600.

use std::fmt;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The header of a key file; the 64 hex digits of the secret key follow it.
const KEY_FILE_HEADER: &str = "cloudchain-ed25519-secret-v1:";

/// A ledger account: the 32 bytes of an ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AccountId(pub [u8; 32]);

impl AccountId {
    /// The public key as an ed25519 verifying key (fails for bytes off the curve).
    pub fn verifying_key(&self) -> Result<VerifyingKey, IdentityError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::BadPublicKey(*self))
    }

    /// The first 8 hex digits, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// The libp2p peer id of this account.
    pub fn peer_id(&self) -> Result<libp2p_identity::PeerId, IdentityError> {
        let pk = libp2p_identity::ed25519::PublicKey::try_from_bytes(&self.0)
            .map_err(|_| IdentityError::BadPublicKey(*self))?;
        Ok(libp2p_identity::PublicKey::from(pk).to_peer_id())
    }

    /// The iroh endpoint id of this account.
    pub fn endpoint_id(&self) -> Result<iroh_base::EndpointId, IdentityError> {
        iroh_base::PublicKey::from_bytes(&self.0).map_err(|_| IdentityError::BadPublicKey(*self))
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({})", self.short())
    }
}

impl std::str::FromStr for AccountId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out)
            .map_err(|e| IdentityError::BadAccountText(format!("{s:?}: {e}")))?;
        Ok(AccountId(out))
    }
}

/// Errors about keys, key files and account ids.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("key file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions { path: String, mode: u32 },
    #[error("key file {path} is malformed: {reason}")]
    Malformed { path: String, reason: String },
    #[error("key file {path} already exists; refusing to overwrite it")]
    Exists { path: String },
    #[error("{0:?} is not a valid ed25519 public key")]
    BadPublicKey(AccountId),
    #[error("not an account id (64 hex digits): {0}")]
    BadAccountText(String),
}

/// A peer's secret key and everything derived from it.
pub struct Identity {
    key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.account().short())
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity::from_secret_bytes(&self.key.to_bytes())
    }
}

impl Identity {
    /// A fresh identity from a cryptographically secure RNG (the caller picks it:
    /// the OS in the node, a seeded one in the simulator and tests).
    pub fn generate<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Identity {
            key: SigningKey::generate(rng),
        }
    }

    /// The identity with this 32-byte secret.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        Identity {
            key: SigningKey::from_bytes(secret),
        }
    }

    /// A deterministic identity for simulations and tests: not secret.
    pub fn from_seed(seed: u64) -> Self {
        let hash = blake3::derive_key("cloudchain/v1/test-identity", &seed.to_le_bytes());
        Identity::from_secret_bytes(&hash)
    }

    /// The account id (the public key).
    pub fn account(&self) -> AccountId {
        AccountId(self.key.verifying_key().to_bytes())
    }

    /// The ed25519 verifying key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Sign raw bytes. Prefer [`crate::Signed`], which adds domain separation.
    pub fn sign_raw(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }

    /// The secret key bytes (handle with care).
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    /// The libp2p keypair with the same key.
    pub fn libp2p_keypair(&self) -> libp2p_identity::Keypair {
        let mut bytes = self.key.to_bytes();
        // `ed25519_from_bytes` zeroizes its input; it only fails on a wrong length.
        libp2p_identity::Keypair::ed25519_from_bytes(&mut bytes)
            .expect("32 bytes are always a valid ed25519 secret key")
    }

    /// The libp2p peer id.
    pub fn peer_id(&self) -> libp2p_identity::PeerId {
        self.libp2p_keypair().public().to_peer_id()
    }

    /// The iroh secret key with the same key.
    pub fn iroh_secret_key(&self) -> iroh_base::SecretKey {
        iroh_base::SecretKey::from_bytes(&self.key.to_bytes())
    }

    /// The iroh endpoint id.
    pub fn endpoint_id(&self) -> iroh_base::EndpointId {
        self.iroh_secret_key().public()
    }

    /// Write the key file: created new with mode 0600, fsync'd. Refuses to overwrite.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                IdentityError::Exists {
                    path: path.display().to_string(),
                }
            } else {
                io(e)
            }
        })?;
        let text = Zeroizing::new(format!(
            "{KEY_FILE_HEADER}{}\n",
            hex::encode(self.key.to_bytes())
        ));
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(())
    }

    /// Read a key file. Refuses one readable by group or others, and any content
    /// that is not exactly the header and 64 hex digits (a trailing newline allowed).
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let p = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| IdentityError::Io {
            path: p.clone(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::Permissions { path: p, mode });
            }
        }
        if meta.len() > 256 {
            return Err(IdentityError::Malformed {
                path: p,
                reason: format!("{} bytes is far too long for a key file", meta.len()),
            });
        }
        let raw = Zeroizing::new(std::fs::read(path).map_err(|source| IdentityError::Io {
            path: p.clone(),
            source,
        })?);
        Self::parse_key_file(&raw, &p)
    }

    /// Parse the content of a key file (`path` only names it in errors).
    pub fn parse_key_file(raw: &[u8], path: &str) -> Result<Self, IdentityError> {
        let malformed = |reason: String| IdentityError::Malformed {
            path: path.to_string(),
            reason,
        };
        let text = std::str::from_utf8(raw).map_err(|_| malformed("not UTF-8 text".into()))?;
        let body = text
            .strip_prefix(KEY_FILE_HEADER)
            .ok_or_else(|| malformed(format!("does not start with {KEY_FILE_HEADER:?}")))?;
        let body = body.strip_suffix('\n').unwrap_or(body);
        if body.len() < 64 {
            return Err(malformed(format!(
                "truncated: {} of 64 hex digits",
                body.len()
            )));
        }
        if body.len() > 64 {
            return Err(malformed(format!(
                "{} characters after the header, expected 64 hex digits",
                body.len()
            )));
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(body, secret.as_mut())
            .map_err(|e| malformed(format!("bad hex: {e}")))?;
        Ok(Identity::from_secret_bytes(&secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn ident() -> Identity {
        Identity::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(7))
    }

    #[test]
    fn account_peer_id_and_endpoint_id_share_the_public_key() {
        let id = ident();
        let account = id.account();
        // libp2p: the peer id of an ed25519 key is the identity multihash of its
        // protobuf-encoded public key, and the key inside is our 32 bytes.
        let lp = id.libp2p_keypair().public();
        let ed = lp.clone().try_into_ed25519().unwrap();
        assert_eq!(ed.to_bytes(), account.0);
        assert_eq!(lp.to_peer_id(), id.peer_id());
        assert_eq!(account.peer_id().unwrap(), id.peer_id());
        let peer_bytes = id.peer_id().to_bytes();
        assert_eq!(&peer_bytes[peer_bytes.len() - 32..], &account.0);
        // iroh: the endpoint id is the public key itself.
        assert_eq!(id.endpoint_id().as_bytes(), &account.0);
        assert_eq!(account.endpoint_id().unwrap(), id.endpoint_id());
        // And a signature by one verifies under the others.
        let sig = id.sign_raw(b"hello");
        assert!(lp.verify(b"hello", &sig.to_bytes()));
        let iroh_sig = id.iroh_secret_key().sign(b"hello");
        assert_eq!(iroh_sig.to_bytes(), sig.to_bytes());
    }

    #[test]
    fn account_text_round_trip() {
        let a = ident().account();
        assert_eq!(a.to_string().parse::<AccountId>().unwrap(), a);
        assert!("zz".parse::<AccountId>().is_err());
    }

    #[test]
    fn key_file_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let id = ident();
        id.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(Identity::load(&path).unwrap().account(), id.account());
        assert!(matches!(id.save(&path), Err(IdentityError::Exists { .. })));
    }

    #[cfg(unix)]
    #[test]
    fn group_readable_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        ident().save(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = Identity::load(&path).unwrap_err();
        assert!(matches!(
            err,
            IdentityError::Permissions { mode: 0o640, .. }
        ));
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn malformed_and_truncated_key_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        ident().save(&path).unwrap();
        let good = std::fs::read_to_string(&path).unwrap();
        let cases: Vec<(String, &str)> = vec![
            (good[..good.len() - 10].to_string(), "truncated"),
            (String::new(), "does not start"),
            ("hello".into(), "does not start"),
            (format!("{KEY_FILE_HEADER}{}\n", "g".repeat(64)), "bad hex"),
            (format!("{}00\n", good.trim_end()), "expected 64"),
        ];
        for (content, why) in cases {
            std::fs::write(&path, &content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let err = Identity::load(&path).unwrap_err();
            assert!(
                matches!(err, IdentityError::Malformed { .. }),
                "{content:?}: {err}"
            );
            assert!(err.to_string().contains(why), "{content:?}: {err}");
        }
        let missing = Identity::load(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, IdentityError::Io { .. }));
    }
}
