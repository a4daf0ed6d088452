//! Checkpoints and the committee draw.
//!
//! Each epoch `e` has a committee of k seats. The committee of epoch 1 is drawn
//! from the genesis stakers; the committee of epoch `e + 1` is named by the
//! checkpoint of epoch `e`, drawn (see [`draw_committee`]) by stake, from the
//! stakes frozen at the checkpoint before (each capped by what is left of it),
//! and seeded by that checkpoint's [`Beacon`]: a quorum of the precommits that
//! made it final, which nobody could compute when those stakes froze. An
//! account may hold several seats, and its vote counts once per seat
//! ([`protocol::seats`]), so splitting a stake over accounts gains nothing. The
//! seat order is the proposer order: seat `r` (mod k) proposes in round `r`, a
//! round lasting `stall_timeout` after the epoch's end.
//!
//! A checkpoint is final with precommits of one round holding ⌈2k/3⌉ seats (see
//! [`Proposal`] for the two voting steps and the locks), and **finality never
//! rewinds**: a replica never leaves a final checkpoint for another one.
//! Members send their votes to the whole committee, so a leader that withholds
//! a final checkpoint cannot keep it from the others, and a round whose votes
//! split (a late body against the next round's) is resolved in a later round.
//!
//! If a committee stalls so that its epoch gets no final checkpoint for a
//! whole further epoch, its members that precommitted nothing sign a
//! [`SkipBody`] ("epoch e abandoned", and they never precommit in it after).
//! With a quorum of skips (a skip certificate) the *backup committee* the last
//! final checkpoint named (drawn with another seed) may finalize the next epoch
//! on top of the last final checkpoint; its body carries the certificates of
//! every epoch it skips. A final checkpoint and a skip certificate for one
//! epoch share ⌈k/3⌉ signers, each of whom signed a precommit and a skip: a
//! double sign, slashed. So with fewer than a third of a committee dishonest,
//! at most one of them exists and every replica finalizes the same.

use std::collections::BTreeMap;

use protocol::codec::Wire;
use protocol::{AccountId, Amount, Hash32, MultiSigned};
use serde::{Deserialize, Serialize};

/// One author's last entry included by a checkpoint.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct FrontierItem {
    pub author: AccountId,
    pub seq: u64,
    pub hash: Hash32,
}

/// What the committee signs at the end of an epoch.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct CheckpointBody {
    pub epoch: u64,
    /// The previous final checkpoint (the network id for the first).
    pub prev: Hash32,
    pub prev_epoch: u64,
    /// Proposer round within the epoch: the proposer is `committee[round % k]`.
    pub round: u32,
    pub proposer: AccountId,
    /// The authors whose chains advanced since `prev`, sorted by author, each with
    /// its last included entry. Every entry between the previous frontier and this
    /// one (following `prev_hash` links back) is included.
    pub frontier: Vec<FrontierItem>,
    /// The epoch's reward mint, sorted by account.
    pub mint: Vec<(AccountId, Amount)>,
    /// The root of the state after this checkpoint (before `last_checkpoint` moves).
    pub state_root: Hash32,
    /// The committee of epoch `epoch + 1`, in draw order.
    pub next_committee: Vec<AccountId>,
    /// The fallback committee for any later epoch if the next one stalls.
    pub backup_committee: Vec<AccountId>,
    /// For a checkpoint of a later epoch than `prev_epoch + 1`: the skip
    /// certificate of each epoch in between, in order (the first signed by a
    /// quorum of its committee, the others by the backup committee's).
    pub skipped: Vec<MultiSigned<SkipBody>>,
    /// The committee draw's randomness: a quorum of the precommits that made
    /// `prev` final (none on the genesis). See [`Beacon`].
    pub beacon: Option<Beacon>,
}

/// A quorum of the precommits that made the previous checkpoint final: the
/// seed of the committees a checkpoint draws.
///
/// Nobody can compute it before the members have signed the previous
/// checkpoint (each signature needs its member's key), and the stakes the
/// draw weighs were frozen at that checkpoint, before its signatures
/// existed. So the leader that chose the previous checkpoint's entries could
/// not try variants of them for a better draw (with the checkpoint's own
/// hash as the seed, it could). The proposer only chooses which quorum of
/// the signatures it holds to name: at most C(k, q) seeds (35 for k = 7).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Beacon {
    /// The round of the certificate the signatures are from (its body is
    /// `prev`'s content in that round, by that round's proposer).
    pub round: u32,
    /// Precommits by `prev`'s committee holding a quorum of its seats, and
    /// none more than needed (without the last, they would not), sorted by
    /// signer.
    pub sigs: Vec<(AccountId, protocol::Sig)>,
}

impl Beacon {
    /// The beacon of a final checkpoint signed by `committee`: its first
    /// signatures (by signer) that hold a quorum of seats.
    pub fn of(ms: &MultiSigned<CheckpointBody>, committee: &[AccountId]) -> Option<Beacon> {
        let body = ms.body_unverified().ok()?;
        let q = protocol::quorum(committee.len());
        let mut sigs = Vec::new();
        for (a, sig) in &ms.signatures {
            if protocol::seats(committee, sigs.iter().map(|(s, _)| s)) >= q {
                break;
            }
            if committee.contains(a) {
                sigs.push((*a, *sig));
            }
        }
        (q > 0 && protocol::seats(committee, sigs.iter().map(|(s, _)| s)) >= q).then_some(Beacon {
            round: body.round,
            sigs,
        })
    }

    /// The seed material the draw hashes.
    pub fn hash(beacon: Option<&Beacon>) -> Hash32 {
        let mut h = blake3::Hasher::new_derive_key("cloudchain/v1/committee-beacon");
        if let Some(b) = beacon {
            for (a, sig) in &b.sigs {
                h.update(&a.0);
                h.update(&sig.0);
            }
        }
        Hash32(*h.finalize().as_bytes())
    }
}

/// A committee member's statement that `epoch` is abandoned on top of the final
/// checkpoint `prev`: it signed no checkpoint of that epoch and never will.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SkipBody {
    pub epoch: u64,
    pub prev: Hash32,
}

impl Wire for SkipBody {
    const KIND: &'static str = "ledger-checkpoint-skip";
    const MAX_SIZE: usize = 1024;
}

impl Wire for CheckpointBody {
    const KIND: &'static str = "ledger-checkpoint";
    const MAX_SIZE: usize = 768 * 1024;
}

/// Draw `k` seats from `stakes` (those with at least `min_stake`), by stake,
/// in a shuffled order (the proposer order): an account may hold several
/// seats (see [`protocol::seats`]).
///
/// Systematic sampling: the accounts are laid out in an order the seed
/// shuffles, each over a stretch as long as its stake, and the seats are `k`
/// points spaced `total / k` apart from an offset the seed draws. So each
/// account holds ⌊k·share⌋ or ⌈k·share⌉ seats, k·share on average: a stake
/// split over several accounts draws no more seats than in one, and an
/// account with at most 1/k of the stake never holds two (with four equal
/// stakers and k = 4, each holds one seat, always). Deterministic in the
/// seed.
pub fn draw_committee(
    seed: &Hash32,
    stakes: &BTreeMap<AccountId, Amount>,
    min_stake: Amount,
    k: usize,
) -> Vec<AccountId> {
    let hash = |tag: &[u8], data: &[u8]| {
        let mut h = blake3::Hasher::new_derive_key("cloudchain/v1/committee-draw");
        h.update(&seed.0);
        h.update(tag);
        h.update(data);
        *h.finalize().as_bytes()
    };
    let mut pool: Vec<([u8; 32], AccountId, u128)> = stakes
        .iter()
        .filter(|(_, s)| **s >= min_stake && s.0 > 0)
        .map(|(a, s)| (hash(b"order", &a.0), *a, u128::from(s.0)))
        .collect();
    if pool.is_empty() || k == 0 {
        return Vec::new();
    }
    pool.sort_unstable();
    let total: u128 = pool.iter().map(|(_, _, w)| *w).sum();
    let mut r16 = [0u8; 16];
    r16.copy_from_slice(&hash(b"offset", &[])[..16]);
    let offset = u128::from_le_bytes(r16) % total;
    let k128 = k as u128;
    let mut out = Vec::with_capacity(k);
    let (mut at, mut end) = (0usize, pool[0].2);
    for i in 0..k128 {
        // The i-th point, (offset + i·total) / k, in [0, total); increasing.
        let point = (offset + i * total) / k128;
        while point >= end && at + 1 < pool.len() {
            at += 1;
            end += pool[at].2;
        }
        out.push((hash(b"seat", &i.to_le_bytes()), pool[at].1));
    }
    // The proposer order: the seats shuffled, so that an account leads
    // round 0 with the chance of its share of the seats.
    out.sort_unstable();
    out.into_iter().map(|(_, a)| a).collect()
}

/// The seed of the committee named by a checkpoint of `epoch` on top of
/// `prev`, with the beacon it carries (see [`Beacon::hash`]).
pub fn committee_seed(purpose: &str, prev: &Hash32, epoch: u64, beacon: &Hash32) -> Hash32 {
    let mut h = blake3::Hasher::new_derive_key("cloudchain/v1/committee-seed");
    h.update(purpose.as_bytes());
    h.update(&[0]);
    h.update(&prev.0);
    h.update(&epoch.to_le_bytes());
    h.update(&beacon.0);
    Hash32(*h.finalize().as_bytes())
}

/// Largest skip statement accepted from a peer (a body and a committee's
/// signatures).
pub const MAX_SKIP: usize = 64 * 1024;
const SKIP_KIND: &str = "checkpoint-skip";

/// Encode a (partly) signed skip statement for the committees.
pub fn encode_skip(s: &MultiSigned<SkipBody>) -> Result<Vec<u8>, protocol::CodecError> {
    protocol::codec::encode_unbounded(SKIP_KIND, s)
}

/// Decode an untrusted skip statement (its signatures are checked by
/// `Ledger::apply_skip`).
pub fn decode_skip(bytes: &[u8]) -> Result<MultiSigned<SkipBody>, protocol::CodecError> {
    protocol::codec::decode_limited(SKIP_KIND, MAX_SKIP, bytes)
}

/// Largest checkpoint proposal accepted from a peer (the frontier names every
/// author that wrote in the epoch).
pub const MAX_PROPOSAL: usize = 4 << 20;
const PROPOSAL_KIND: &str = "checkpoint-proposal";

/// A checkpoint body as its round's proposer put it forward, with the votes
/// collected on it so far.
///
/// Votes come in two steps, as in Tendermint, and a body's `round` is the
/// round they are cast in (a body proposed again in a later round is another
/// body with the same [`CheckpointBody::content_hash`]):
/// - a **prevote** (domain [`PREVOTE_KIND`]) says "this body is valid here";
/// - a **precommit** (the checkpoint domain, the signatures of `checkpoint`)
///   may follow once a quorum prevoted the body: the member is then *locked*
///   on its content. A quorum of precommits makes the checkpoint final.
///
/// A locked member prevotes another content only with a newer quorum of
/// prevotes for it (`valid`, a *proof of lock change*). A member signs at most
/// one prevote and one precommit per round, and never in a round before one it
/// signed in. So two final checkpoints of one epoch need a third of a
/// committee to sign against these rules, and a vote split (a late body
/// against the next round's) is resolved in a later round instead of
/// stalling the epoch.
///
/// Proposing binds nobody: `by` is the proposer's signature in a domain of its
/// own ("this is my round's proposal"), not a vote.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Proposal {
    /// The body, with the precommits collected on it.
    pub checkpoint: MultiSigned<CheckpointBody>,
    pub by: protocol::Sig,
    /// The prevotes collected on the body, sorted by signer.
    pub prevotes: Vec<(AccountId, protocol::Sig)>,
    /// For a body proposed again: the quorum of prevotes its content had in
    /// an earlier round (on that round's body, which the receiver rebuilds
    /// with [`CheckpointBody::in_round`]).
    pub valid: Option<Pol>,
}

/// A proof of lock change: a quorum of prevotes for a body's content in
/// `round`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Pol {
    pub round: u32,
    pub prevotes: Vec<(AccountId, protocol::Sig)>,
}

/// The signing domain of a proposer's `Proposal::by`.
pub const PROPOSED_KIND: &str = "ledger-checkpoint-proposed";

/// The signing domain of a prevote (over the body's bytes).
pub const PREVOTE_KIND: &str = "ledger-checkpoint-prevote";

impl Proposal {
    /// The proposal's body hash (what votes sign).
    pub fn hash(&self) -> Hash32 {
        self.checkpoint.body_hash()
    }
}

impl CheckpointBody {
    /// What the body says apart from its round and proposer: the same for a
    /// body proposed again in a later round (what a lock is on).
    pub fn content_hash(&self) -> Hash32 {
        let mut b = self.clone();
        b.round = 0;
        b.proposer = AccountId([0; 32]);
        // A body that encodes at all (every body a replica holds does) encodes
        // again with another round and proposer.
        let bytes =
            protocol::codec::encode_unbounded("ledger-checkpoint-content", &b).unwrap_or_default();
        let mut h = blake3::Hasher::new_derive_key("cloudchain/v1/checkpoint-content");
        h.update(&bytes);
        Hash32(*h.finalize().as_bytes())
    }

    /// This body's content proposed in `round` by `proposer`.
    ///
    /// (The content hash is the checkpoint's identity, `prev` of the next
    /// one: certificates of one content from two rounds are one checkpoint,
    /// as a block's hash in Tendermint leaves out the round it was committed
    /// in.)
    pub fn in_round(&self, round: u32, proposer: AccountId) -> CheckpointBody {
        let mut b = self.clone();
        b.round = round;
        b.proposer = proposer;
        b
    }
}

/// A final checkpoint's identity: its body's content hash (see
/// [`CheckpointBody::content_hash`]); `None` for bytes that do not decode.
pub fn checkpoint_id(ms: &MultiSigned<CheckpointBody>) -> Option<Hash32> {
    ms.body_unverified().ok().map(|b| b.content_hash())
}

/// Encode a checkpoint proposal for a committee member.
pub fn encode_proposal(p: &Proposal) -> Result<Vec<u8>, protocol::CodecError> {
    protocol::codec::encode_unbounded(PROPOSAL_KIND, p)
}

/// Decode an untrusted proposal (its signatures are checked when it is signed).
pub fn decode_proposal(bytes: &[u8]) -> Result<Proposal, protocol::CodecError> {
    protocol::codec::decode_limited(PROPOSAL_KIND, MAX_PROPOSAL, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(i: u8) -> AccountId {
        AccountId([i; 32])
    }

    #[test]
    fn draw_is_deterministic_and_respects_min_stake() {
        let mut stakes = BTreeMap::new();
        for i in 0..20u8 {
            stakes.insert(acct(i), Amount(u64::from(i) * 100));
        }
        let seed = Hash32([9; 32]);
        let a = draw_committee(&seed, &stakes, Amount(500), 7);
        let b = draw_committee(&seed, &stakes, Amount(500), 7);
        assert_eq!(a, b);
        assert_eq!(a.len(), 7);
        assert!(a.iter().all(|x| x.0[0] >= 5));
        let c = draw_committee(&Hash32([8; 32]), &stakes, Amount(500), 7);
        assert_ne!(a, c);
        // Fewer eligible than k: k seats among them.
        let few = draw_committee(&seed, &stakes, Amount(1_800), 7);
        assert_eq!(few.len(), 7);
        assert!(few.iter().all(|x| x.0[0] >= 18));
        assert!(draw_committee(&seed, &stakes, Amount(1_000_000), 7).is_empty());
    }

    #[test]
    fn draw_is_weighted_by_stake() {
        let mut stakes = BTreeMap::new();
        stakes.insert(acct(1), Amount(9_000));
        stakes.insert(acct(2), Amount(1_000));
        let mut first = 0;
        for s in 0..400u16 {
            let mut seed = [0u8; 32];
            seed[..2].copy_from_slice(&s.to_le_bytes());
            if draw_committee(&Hash32(seed), &stakes, Amount(1), 1)[0] == acct(1) {
                first += 1;
            }
        }
        assert!((320..=400).contains(&first), "{first} of 400");
    }
}
