//! Errors, and the reasons an entry stays out of the fold.

use protocol::{AccountId, Amount, Hash32, SignatureError};

use crate::entry::EntryId;

/// Why an entry (or stored/received value) is kept out of the fold.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidReason {
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("stored at key {key} but says author/seq {actual}")]
    WrongKey { key: String, actual: String },
    #[error("broken chain: prev_hash {got:?} does not name the author's previous entry")]
    BrokenChain { got: Hash32 },
    #[error("on the losing branch of a fork (the canonical branch or a checkpoint chose another)")]
    ForkedBranch,
    #[error("zero amount")]
    ZeroAmount,
    #[error("overspend: {amount} asked, {spendable} spendable")]
    Overspend { amount: Amount, spendable: Amount },
    #[error("unstake of {amount} exceeds bonded stake {bonded}")]
    InsufficientStake { amount: Amount, bonded: Amount },
    #[error("unbond of {amount} exceeds the free bond {free}")]
    InsufficientBond { amount: Amount, free: Amount },
    #[error("bad contract: {0}")]
    BadContract(String),
    #[error("escrow for contract {0:?} is already locked")]
    AlreadyLocked(Hash32),
    #[error("no escrow for contract {0:?}")]
    UnknownContract(Hash32),
    #[error("contract {0:?} is already settled")]
    AlreadySettled(Hash32),
    #[error("no committee known for epoch {0}")]
    NoCommittee(u64),
    #[error("a certificate of epoch {cert} cannot settle an escrow locked in epoch {lock}")]
    CertEpoch { cert: u64, lock: u64 },
    #[error("settlement without a quorum: {0}")]
    NoQuorum(String),
    #[error("settlement pays other amounts than the certified outcome gives")]
    PayoutMismatch,
    #[error("author is not on the committee of epoch {0}")]
    NotCommitteeMember(u64),
    #[error("bad checkpoint: {0}")]
    BadCheckpoint(String),
    #[error("bad slashing proof: {0}")]
    BadProof(String),
    #[error("offence already slashed")]
    AlreadySlashed,
    #[error(
        "a double sign of epoch {0} is too old to slash (the offender's stake has had time to leave)"
    )]
    StaleProof(u64),
    #[error("the offender holds no stake to slash")]
    NothingToSlash,
    #[error("contract {contract:?}: its deadline {} ms is {what}", deadline.0)]
    ContractDeadline {
        contract: Hash32,
        deadline: protocol::Timestamp,
        what: &'static str,
    },
    #[error("amount overflow")]
    Overflow,
}

/// An entry kept out of the fold, and why.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Invalid {
    pub id: EntryId,
    pub reason: InvalidReason,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.id, self.reason)
    }
}

/// Errors of the ledger's operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    #[error("genesis: {0}")]
    Genesis(String),
    #[error("entry rejected: {0}")]
    Rejected(InvalidReason),
    #[error("encoding: {0}")]
    Codec(#[from] protocol::CodecError),
    #[error("signature: {0}")]
    Signature(#[from] SignatureError),
    #[error("document: {0}")]
    Doc(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{who:?} is not on the committee of epoch {epoch}")]
    NotMember { who: AccountId, epoch: u64 },
    #[error("{who:?} is not the proposer of epoch {epoch} round {round}")]
    NotProposer {
        who: AccountId,
        epoch: u64,
        round: u32,
    },
    #[error("epoch {epoch} cannot be checkpointed now: {reason}")]
    Epoch { epoch: u64, reason: String },
    #[error("refusing to sign: {0}")]
    WontSign(String),
    #[error("already signed checkpoint {signed:?} for epoch {epoch}")]
    AlreadySigned { epoch: u64, signed: Hash32 },
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error(
        "key {key} already holds another entry by this author (its chain forked); \
         writing there would overwrite it"
    )]
    KeyTaken { key: String },
}

/// Why a sync message from a peer was refused (the peer's error count goes up).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    #[error("undecodable sync message: {0}")]
    Decode(String),
    #[error("change {index}: {reason}")]
    BadChange { index: usize, reason: String },
    #[error("value at {key}: {reason}")]
    BadEntry { key: String, reason: InvalidReason },
    #[error("applying to the document failed: {0}")]
    Apply(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("peer sent {errors} bad messages; ignoring it")]
    PeerBanned { errors: u32 },
}

/// Errors of a [`Store`](crate::store::Store).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt record at byte {offset}: {reason}")]
    Corrupt {
        path: String,
        offset: u64,
        reason: String,
    },
    #[error("{path}: not a ledger log (bad header)")]
    BadHeader { path: String },
    #[error("record of {0} bytes is too large")]
    TooLarge(usize),
}
