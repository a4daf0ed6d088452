//! What nodes send each other directly (request-response), as opposed to gossip.
//!
//! A request is one tag byte and a body: a protocol [`Frame`] (proposals, answers,
//! probes, key grants), a ledger sync message (automerge's sync protocol, carried
//! opaquely), the committee's checkpoint traffic, or a member's challenge of a
//! receipt. Each body has its own bound; the driver's transport bounds the whole.

use crdt_ledger::{Proposal, SkipBody};
use protocol::{AccountId, Frame, Hash32, MultiSigned, NetworkId, Sig};

const TAG_FRAME: u8 = 0;
const TAG_SYNC: u8 = 1;
const TAG_PROPOSAL: u8 = 2;
// Tag 3 carried a member's vote back to its leader only; members now send
// the proposal with their signatures to the whole committee.
const TAG_CHALLENGE: u8 = 4;
const TAG_SKIP: u8 = 5;
const TAG_PROGRESS: u8 = 6;
/// A challenge's body: contract, member, signature.
const CHALLENGE_LEN: usize = 32 + 32 + 64;
/// A progress report's body: contract, step, steps, epoch, epochs, loss.
const PROGRESS_LEN: usize = 32 + 8 + 8 + 4 + 4 + 8;

/// How far a provider is with a training job, after an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct TrainProgress {
    /// Steps done, of `steps`.
    pub step: u64,
    pub steps: u64,
    /// Epochs done, of `epochs`.
    pub epoch: u32,
    pub epochs: u32,
    /// The last epoch's mean training loss.
    pub loss: f64,
}

/// One direct message.
#[derive(Debug, Clone)]
pub enum Direct {
    Frame(Frame),
    LedgerSync(Vec<u8>),
    /// A checkpoint proposal, to be signed: from its leader, or forwarded by a
    /// member with the signatures it holds (so a leader cannot withhold it).
    Proposal(Box<Proposal>),
    /// A member's skip of a stalled epoch, with the other signatures it holds.
    Skip(Box<MultiSigned<SkipBody>>),
    /// A committee member's challenge of a receipt: its signature over the
    /// receipt, which fixes the sample it checks
    /// ([`crate::oracle::challenge_seed`]); the other members check that
    /// sample too.
    Challenge {
        contract: Hash32,
        member: AccountId,
        sig: Sig,
    },
    /// A provider's progress with a contract's training job, to its
    /// requester (the transport says who sent it; the requester takes it only
    /// from its job's provider). Informative: it decides nothing.
    Progress {
        contract: Hash32,
        progress: TrainProgress,
    },
}

/// Why a direct message was refused.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    #[error("empty direct message")]
    Empty,
    #[error("unknown direct message type {0}")]
    Tag(u8),
    #[error(transparent)]
    Frame(#[from] protocol::FrameError),
    #[error(transparent)]
    Codec(#[from] protocol::CodecError),
    #[error("a challenge of {0} bytes (expected {CHALLENGE_LEN})")]
    Challenge(usize),
    #[error("a progress report of {0} bytes (expected {PROGRESS_LEN})")]
    ProgressLen(usize),
    #[error("a progress report that makes no sense: {0}")]
    Progress(&'static str),
}

impl Direct {
    pub fn to_bytes(&self) -> Result<Vec<u8>, protocol::CodecError> {
        let (tag, body) = match self {
            Direct::Frame(f) => (TAG_FRAME, f.to_bytes()?),
            Direct::LedgerSync(b) => (TAG_SYNC, b.clone()),
            Direct::Proposal(p) => (TAG_PROPOSAL, crdt_ledger::checkpoint::encode_proposal(p)?),
            Direct::Skip(s) => (TAG_SKIP, crdt_ledger::checkpoint::encode_skip(s)?),
            Direct::Challenge {
                contract,
                member,
                sig,
            } => (
                TAG_CHALLENGE,
                [&contract.0[..], &member.0[..], &sig.0[..]].concat(),
            ),
            Direct::Progress { contract, progress } => (
                TAG_PROGRESS,
                [
                    &contract.0[..],
                    &progress.step.to_le_bytes(),
                    &progress.steps.to_le_bytes(),
                    &progress.epoch.to_le_bytes(),
                    &progress.epochs.to_le_bytes(),
                    &progress.loss.to_le_bytes(),
                ]
                .concat(),
            ),
        };
        let mut out = Vec::with_capacity(body.len() + 1);
        out.push(tag);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decode untrusted bytes (signatures are checked by whoever consumes them).
    pub fn from_bytes(bytes: &[u8], network: &NetworkId) -> Result<Direct, DirectError> {
        let (&tag, body) = bytes.split_first().ok_or(DirectError::Empty)?;
        Ok(match tag {
            TAG_FRAME => Direct::Frame(Frame::from_bytes(body, network)?),
            TAG_SYNC => Direct::LedgerSync(body.to_vec()),
            TAG_PROPOSAL => {
                Direct::Proposal(Box::new(crdt_ledger::checkpoint::decode_proposal(body)?))
            }
            TAG_SKIP => Direct::Skip(Box::new(crdt_ledger::checkpoint::decode_skip(body)?)),
            TAG_CHALLENGE => {
                let b: &[u8; CHALLENGE_LEN] = body
                    .try_into()
                    .map_err(|_| DirectError::Challenge(body.len()))?;
                let (contract, rest) = b.split_at(32);
                let (member, sig) = rest.split_at(32);
                let mut c = Hash32([0; 32]);
                c.0.copy_from_slice(contract);
                let mut m = [0u8; 32];
                m.copy_from_slice(member);
                let mut s = [0u8; 64];
                s.copy_from_slice(sig);
                Direct::Challenge {
                    contract: c,
                    member: AccountId(m),
                    sig: Sig(s),
                }
            }
            TAG_PROGRESS => {
                let b: &[u8; PROGRESS_LEN] = body
                    .try_into()
                    .map_err(|_| DirectError::ProgressLen(body.len()))?;
                let mut c = Hash32([0; 32]);
                c.0.copy_from_slice(&b[..32]);
                let u64_at = |i: usize| {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(&b[i..i + 8]);
                    w
                };
                let u32_at = |i: usize| {
                    let mut w = [0u8; 4];
                    w.copy_from_slice(&b[i..i + 4]);
                    u32::from_le_bytes(w)
                };
                let progress = TrainProgress {
                    step: u64::from_le_bytes(u64_at(32)),
                    steps: u64::from_le_bytes(u64_at(40)),
                    epoch: u32_at(48),
                    epochs: u32_at(52),
                    loss: f64::from_le_bytes(u64_at(56)),
                };
                if progress.step > progress.steps || progress.epoch > progress.epochs {
                    return Err(DirectError::Progress("more done than there is"));
                }
                if !progress.loss.is_finite() {
                    return Err(DirectError::Progress("a loss that is not a number"));
                }
                Direct::Progress {
                    contract: c,
                    progress,
                }
            }
            t => return Err(DirectError::Tag(t)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_without_panic() {
        let n = NetworkId::named("direct");
        assert!(matches!(
            Direct::from_bytes(&[], &n),
            Err(DirectError::Empty)
        ));
        assert!(matches!(
            Direct::from_bytes(&[9, 1], &n),
            Err(DirectError::Tag(9))
        ));
        let p = Direct::Progress {
            contract: Hash32([5; 32]),
            progress: TrainProgress {
                step: 40,
                steps: 100,
                epoch: 2,
                epochs: 5,
                loss: 0.25,
            },
        };
        let back = Direct::from_bytes(&p.to_bytes().unwrap(), &n).unwrap();
        assert!(
            matches!(back, Direct::Progress { contract, progress } if contract == Hash32([5; 32]) && progress.epoch == 2 && progress.loss == 0.25)
        );
        let mut bad = p.to_bytes().unwrap();
        bad[33 + 8] = 0; // steps 0 < step 40
        assert!(matches!(
            Direct::from_bytes(&bad, &n),
            Err(DirectError::Progress(_))
        ));
        for tag in 0..7u8 {
            for len in [0usize, 1, 7, 300] {
                let mut b = vec![tag];
                b.extend((0..len).map(|i| (i * 31 + 7) as u8));
                let _ = Direct::from_bytes(&b, &n);
            }
        }
        let id = protocol::Identity::from_seed(1);
        let mut skip = MultiSigned::new(&SkipBody {
            epoch: 4,
            prev: Hash32([1; 32]),
        })
        .unwrap();
        skip.add_signature(&id, &n);
        let back =
            Direct::from_bytes(&Direct::Skip(Box::new(skip)).to_bytes().unwrap(), &n).unwrap();
        assert!(
            matches!(back, Direct::Skip(s) if s.verify_signers(&n, &[id.account()]).is_ok_and(|b| b.epoch == 4))
        );
        let c = Direct::Challenge {
            contract: Hash32([3; 32]),
            member: protocol::Identity::from_seed(2).account(),
            sig: Sig([4; 64]),
        };
        let back = Direct::from_bytes(&c.to_bytes().unwrap(), &n).unwrap();
        assert!(
            matches!(back, Direct::Challenge { contract, sig, .. } if contract == Hash32([3; 32]) && sig == Sig([4; 64]))
        );
        assert!(matches!(
            Direct::from_bytes(&[4; 128], &n),
            Err(DirectError::Challenge(127))
        ));
    }
}
