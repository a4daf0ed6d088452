//! # crdt-ledger — CloudChain's signed CRDT ledger
//!
//! Token balances, stakes, escrows, SLA records and reputation with no global
//! chain (DESIGN.md §4). This crate owns:
//!
//! - [`entry`]: signed entries `{author, seq, prev_hash, created_at, body}` forming
//!   one hash chain per author; the genesis, whose hash is the network id.
//! - storage of entries in an **automerge** document, one byte value per key
//!   `author_hex/seq`. Balances are never automerge values (concurrent integer
//!   writes lose updates): two values at one key are a fork, i.e. equivocation.
//! - [`state`]: the deterministic fold of valid entries into [`State`].
//! - [`checkpoint`]: the committee draw and epoch checkpoints.
//! - [`sync`]: automerge's sync protocol with validation and per-peer error counts.
//! - [`store`]: the [`Store`] trait, [`MemStore`] and the fsync'd [`FileStore`].
//!
//! It is sans-IO in time and randomness: `now` and epochs come in as arguments,
//! and nothing spawns or sleeps. (The [`FileStore`] does file IO when the ledger
//! calls it, so that a write is durable before it is acknowledged.)
//!
//! ## Canonical order and finality
//!
//! The state is a fold over valid entries in this order: the batch of each final
//! checkpoint in checkpoint order, then the pending batch. An author's pending
//! entries are its *canonical chain* after its finalized frontier: at each seq the
//! entry whose `prev_hash` is the previous entry's hash (the lowest hash if a fork
//! offers several). Within a batch: phase (transfers, stakes, escrow locks, SLA
//! records first; settlements; slashes last), then `(author, seq)`.
//!
//! **No double spend.** A debit is valid only if the author's balance at the start
//! of the batch (for pending entries: its finalized balance) minus its own earlier
//! debits in the batch covers it. Credits become spendable when a checkpoint
//! finalizes them. A fork of an author's chain (e.g. one spend on each side of a
//! partition) leaves only one branch in the fold — the checkpoint's, else the one of
//! lowest hash — and is itself the slashing proof ([`Ledger::slash_proofs`]).
//!
//! **Committee and checkpoints.** Each epoch's committee is k seats drawn by stake
//! from the stakes frozen a checkpoint earlier, seeded by a beacon nobody can
//! grind (see [`checkpoint`]); the member of the round
//! proposes ([`Ledger::handle_timeout`] says when, [`Ledger::propose_checkpoint`]:
//! proposing binds nobody), members check the state root with their own fold
//! and vote in two steps, as in Tendermint ([`Ledger::vote`]: a prevote, then a
//! precommit once ⌈2k/3⌉ prevoted the body, which locks the member on it),
//! sending what they voted on with every vote they hold to the whole committee
//! ([`Ledger::track_proposal`]); ⌈2k/3⌉ precommits of one round make it final
//! wherever they meet, and anyone then publishes it as an entry. A round whose
//! votes split is resolved in a later one. Finality never rewinds while fewer
//! than a third of a committee break the voting rules; a member that signs two
//! bodies in one round, or a precommit and the epoch's skip, is caught and
//! slashed. See [`checkpoint`] for the skip of a stalled epoch.
//!
//! **Provider bonds.** A provider bonds tokens (`Body::Bond`, or in the genesis).
//! Each escrow lock reserves `Params::provider_bond` of its escrow from the
//! provider's bond (the reservation never fails, so locks by different
//! requesters commute; requesters match only providers whose free bond covers
//! a contract). A settlement releases it; one whose certificate says the
//! result was delivered and wrong slashes it (`Params::slashed`):
//! `bond_to_requester` of it to the requester, the rest burned. `Body::Unbond`
//! frees only bond no open escrow reserves, through the unbonding queue, which
//! holds a bond for `Params::bond_unbonding_epochs` (a day by default, longer
//! than the stake's: a fork across a partition must meet its slash).
//!
//! **Supply.** Tokens are created only by the genesis and by the epoch reward in
//! each checkpoint (`CheckpointBody::mint`: `reward_base` halving every
//! `reward_halving_epochs`, never more in all than `reward_cap`, split over
//! providers in proportion to the compute units their settled contracts verified,
//! each share capped by the provider's share of all bonds and by `mint_per_cu`
//! for each of its verified units, what the caps hold back not minted; an
//! epoch skipped after a stall mints nothing), and destroyed
//! only by slashing (`Params::slash` of an offender's bonded and unbonding stake,
//! or the burned part of a slashed provider bond): total supply = genesis +
//! minted − burned, always.
//!
//! **Genesis.** The genesis is a signed [`Genesis`] (balances, stakers, bonds, [`Params`])
//! every peer is configured with; it is not stored at a key. Its envelope hash is
//! the network id, which every entry signature covers.
//!
//! ## Persistence
//!
//! Every local write ([`Ledger::append`], [`Ledger::receive_entry`]) and every
//! accepted sync message is appended to the [`Store`] — the new automerge change(s),
//! or the saved document a sync message carried — and the store makes it durable
//! (fsync) before the call returns. A note of every prevote, precommit and skip a
//! local identity signs is stored the same way before the signature leaves, so a
//! restarted member keeps its locks and never signs twice in a round. [`Ledger::open`] loads the snapshot and the log (a torn tail
//! is cut and reported in [`OpenReport`]) and re-verifies every entry not covered by
//! the snapshot's checkpoint; [`Ledger::compact`] replaces the log by a snapshot;
//! [`open_from_snapshot`] starts a new peer from another's snapshot, checking the
//! chain of checkpoint signatures and the state root instead of replaying history.
//!
//! ## Order of events
//!
//! A node opens a [`Ledger`] on a store ([`Ledger::open`]), then: local writes go
//! through [`Ledger::append`] (durable before it returns); for each peer it keeps a
//! [`PeerState`] and exchanges [`Ledger::generate_sync_message`] /
//! [`Ledger::receive_sync_message`] (or [`Ledger::merge_with`] in process); entries
//! that arrive by other means go to [`Ledger::receive_entry`]; its timer calls
//! [`Ledger::handle_timeout`] at [`Ledger::poll_timeout`] and, on
//! [`Action::Propose`], [`Ledger::propose_checkpoint`]; committee members answer
//! with [`Ledger::vote`] and forward what it gives when they signed, each member
//! collects with [`Ledger::track_proposal`] (which [`Ledger::vote`] calls), and
//! whoever holds the quorum of precommits publishes the final checkpoint
//! with `append(Body::Checkpoint(..))`; on [`Action::Skip`] a member signs
//! [`Ledger::sign_skip`] and the others collect with [`Ledger::apply_skip`];
//! anyone may publish [`Ledger::slash_proofs`] as
//! `Body::Slash`. Reads: [`Ledger::state`], [`Ledger::finalized_state`],
//! [`Ledger::balance`], [`Ledger::spendable`], [`Ledger::invalid`].

pub mod checkpoint;
pub mod entry;
pub mod error;
pub mod ledger;
pub mod state;
pub mod store;
pub mod sync;

pub use checkpoint::{
    Beacon, CheckpointBody, FrontierItem, Pol, Proposal, SkipBody, draw_committee,
};
pub use entry::{
    Body, Entry, EntryData, EntryId, EntryKey, Genesis, GenesisEntry, Offence, Params, SlaRecord,
    SlashProof, VerifiedEntry,
};
pub use error::{Invalid, InvalidReason, LedgerError, StoreError, SyncError};
pub use ledger::{
    Action, CheckpointStatus, EscrowChanges, EscrowCursor, Ledger, OpenReport, SnapshotMeta, Voted,
    open_from_snapshot,
};
pub use state::{Escrow, Reputation, SlaEvent, State, Supply, TRUSTED_SCORE_BPS};
pub use store::{FileStore, Loaded, MemStore, Store, TornTail};
pub use sync::{MAX_PEER_ERRORS, PeerState, SyncReport};
