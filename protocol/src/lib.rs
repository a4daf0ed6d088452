//! # protocol — what CloudChain peers say to each other, and the engines that decide
//!
//! This crate owns:
//! - [`identity`]: one ed25519 key per peer, which is at once its ledger account,
//!   its libp2p `PeerId` and its iroh endpoint id; the key file.
//! - [`signed`]: [`Signed<T>`] and [`MultiSigned<T>`] envelopes whose signatures are
//!   domain-separated by message kind and network id; batch verification.
//! - [`codec`]: the wire codec (the only place bincode is named): bounded, complete,
//!   canonical decoding that never panics.
//! - [`messages`]: the versioned message types of a job's life (offer, bid,
//!   proposal, contract, receipt, probe, verdict, dispute) and the wire [`Frame`].
//! - [`replay`]: a bounded-memory [`ReplayGuard`] (expiry + nonce).
//!
//! It knows nothing of sockets, tasks or clocks: time comes in as a [`Timestamp`]
//! argument and randomness as a seeded RNG, so the node and the simulator run the
//! same code.
//!
//! The order of events in a job's life (DESIGN.md §3): a provider gossips a signed
//! [`Offer`]; a requester signs a [`JobSpec`] and sends a [`Proposal`]; the provider
//! answers with a [`ProposalAnswer`] carrying its signature on the
//! [`ContractTerms`]; the requester adds its own, making a [`Contract`]; the
//! provider delivers a [`Receipt`]; oracles [`Probe`] and judge with a [`Verdict`];
//! either party may raise a [`Dispute`].

pub mod accounting;
pub mod codec;
pub mod identity;
pub mod market;
pub mod messages;
pub mod oracle;
pub mod replay;
pub mod settlement;
pub mod signed;
pub mod timers;
pub mod types;

pub use codec::{CodecError, Wire};
pub use identity::{AccountId, Identity, IdentityError};
pub use messages::*;
pub use replay::{ReplayError, ReplayGuard};
pub use settlement::{
    Outcome, Payout, QuorumCert, QuorumError, SETTLE_SLACK, escrow_bound, has_quorum, members,
    payout, quorum, seats,
};
pub use signed::{MultiSigned, Sig, SigCheck, SignatureError, Signed, verify_batch};
pub use types::{Amount, Bps, ComputeUnits, DurationMs, Hash32, NetworkId, PricePerCu, Timestamp};
