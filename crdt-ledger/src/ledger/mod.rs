//! The [`Ledger`]: one replica of the signed CRDT ledger.
//!
//! - this file: opening, the entry index, the fold (finalized + pending view),
//!   local writes, finality;
//! - `committee.rs`: the committee timer, proposing, signing and collecting
//!   checkpoint signatures, double-sign detection;
//! - `persist.rs`: store records, snapshots, compaction, bootstrap;
//! - `retire.rs`: final entries leave memory (read back from the document);
//! - `verify.rs`: reading entries out of a document and batch signature
//!   verification.

mod committee;
mod feed;
mod persist;
mod retire;
mod verify;

pub use committee::Voted;
use committee::{Held, MyVotes, VoteNote};
pub use feed::{EscrowChanges, EscrowCursor};
pub use persist::open_from_snapshot;
use persist::{REC_DOC, REC_SIGNED, REC_VOTE, VOTE_NOTE_KIND, split_snapshot, verify_snapshot};
pub(crate) use verify::{collect_doc_entries, verify_entries, verify_received};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use automerge::{AutoCommit, ReadDoc, ScalarValue, Value, transaction::Transactable};
use protocol::codec::{self, Wire};
use protocol::settlement::{Payout, QuorumCert, quorum};
use protocol::signed::{Sig, sign_bytes, verify_bytes};
use protocol::{AccountId, Amount, Hash32, Identity, MultiSigned, NetworkId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    Beacon, CheckpointBody, FrontierItem, PREVOTE_KIND, PROPOSED_KIND, Pol, Proposal, SkipBody,
};
use crate::entry::{
    Body, Entry, EntryData, EntryId, EntryKey, GenesisEntry, Offence, Params, SlashProof, Ve,
    VerifiedEntry, chain_start, check_author,
};
use crate::error::{Invalid, InvalidReason, LedgerError};
use crate::state::{FoldCtx, SigMemo, State};
use crate::store::{MemStore, Store, TornTail};

/// The finalized part of the ledger.
#[derive(Clone, Debug)]
struct Finalized {
    state: State,
    /// Per author: the last finalized entry.
    frontier: BTreeMap<AccountId, (u64, Hash32)>,
    /// The final checkpoints in order.
    chain: Vec<MultiSigned<CheckpointBody>>,
    /// Entries that were included by a checkpoint but invalid in its fold.
    invalid: Vec<Invalid>,
}

/// The pending fold on top of the finalized state.
#[derive(Clone, Debug)]
struct View {
    state: State,
    /// Per author: the tip of its canonical chain (finalized or pending).
    tips: BTreeMap<AccountId, (u64, Hash32)>,
    pending: Vec<Ve>,
    pending_debits: HashMap<AccountId, Amount>,
    pending_unstakes: HashMap<AccountId, Amount>,
    invalid: Vec<Invalid>,
    /// The pending settlements, expiries, SLA records and slashes it applied
    /// or tried, with what each touches: a local one that commutes with every
    /// one that sorts after it is applied on top instead of refolding.
    late: crate::state::LateEntries,
}

/// Where a checkpoint proposal stands.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum CheckpointStatus {
    /// `have` of the `need` signatures.
    Collecting { have: usize, need: usize },
    /// Final: publish it with `append(id, Body::Checkpoint(..))`.
    Final(Box<MultiSigned<CheckpointBody>>),
}

/// What the committee timer asks the node to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Action {
    /// This node proposes the checkpoint of `epoch` in `round`: call
    /// [`Ledger::propose_checkpoint`] and send the result to the committee.
    Propose { epoch: u64, round: u32 },
    /// `epoch` has stalled for a whole further epoch and this member signed
    /// none of its checkpoints: call [`Ledger::sign_skip`] and send the result
    /// to its committee and to the backup committee (again at each round).
    Skip { epoch: u64 },
}

/// What opening a store found.
#[derive(Clone, Debug, Default)]
pub struct OpenReport {
    pub records: usize,
    pub entries: usize,
    pub from_snapshot: bool,
    pub torn_tail: Option<TornTail>,
    /// Stored values that were refused (bad signature, tampering, wrong key).
    pub rejected: Vec<(String, InvalidReason)>,
}

/// The store size below which a replica never compacts on its own. Above it,
/// a replica compacts whenever its store has doubled since the last compaction.
pub const COMPACT_FLOOR: u64 = 64 << 20;

/// The metadata of a snapshot (the document bytes follow it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Every final checkpoint, in order: a new peer checks their signatures from
    /// the genesis committee on, instead of replaying history.
    pub chain: Vec<MultiSigned<CheckpointBody>>,
    pub state: State,
    pub frontier: Vec<FrontierItem>,
}

impl Wire for SnapshotMeta {
    const KIND: &'static str = "ledger-snapshot";
    const MAX_SIZE: usize = protocol::codec::MAX_DECODE_BYTES;
}

/// One replica of the ledger. See the crate docs for the order of events.
#[derive(Debug)]
pub struct Ledger<S: Store = MemStore> {
    genesis: GenesisEntry,
    network: NetworkId,
    params: Params,
    pub(crate) doc: AutoCommit,
    /// The document heads already in the store (what `save_after` starts from).
    pub(crate) saved_heads: Vec<automerge::ChangeHash>,
    pub(crate) store: S,
    /// Every validly signed entry, by key; more than one hash at a key is a fork.
    entries: BTreeMap<EntryKey, Vec<Ve>>,
    /// The keys of `entries` holding more than one entry (forks): the pending
    /// fold reads these below the finalized frontier, and nothing else there.
    forked: BTreeSet<EntryKey>,
    by_hash: HashMap<Hash32, Ve>,
    /// Every final entry below the finalized frontier this replica indexed,
    /// by hash: its key. Most of them are retired: no longer in `entries` or
    /// `by_hash`, read back from the document when asked for (see `retire`).
    finals: HashMap<Hash32, EntryKey>,
    /// How many of `finals` are retired.
    retired: usize,
    /// Accounts whose final entries stay held (`keep_entries_of`).
    keep: BTreeSet<AccountId>,
    /// The contracts whose escrow lock names a kept account.
    kept_contracts: HashSet<Hash32>,
    /// Checkpoint entries that may still become final (of later epochs than
    /// the finalized one).
    checkpoint_entries: Vec<Ve>,
    /// (epoch, prev, body hash) of each checkpoint entry, by entry hash: finality
    /// scans every checkpoint entry at each refresh, and decoding a body (whose
    /// frontier names every active author) each time made that quadratic.
    checkpoint_heads: HashMap<Hash32, Option<(u64, Hash32, Hash32)>>,
    fin: Finalized,
    /// Where finality starts (genesis, or the snapshot opened from): kept to
    /// refold if a conflicting final checkpoint shows up (see `note_competitor`).
    fin0: Finalized,
    rewind: bool,
    /// How many times the replica reloaded its store after a store error.
    recoveries: u64,
    /// The store's size after the last compaction (or at open), the smallest
    /// size that triggers compaction, and how many compactions ran.
    compacted_at: u64,
    compact_floor: u64,
    compactions: u64,
    view: Option<View>,
    /// Checkpoint bodies collecting prevotes and precommits, by body hash.
    votes: BTreeMap<Hash32, Held>,
    /// Skip statements collecting signatures, by epoch, on the last final
    /// checkpoint (dropped when finality moves).
    skips: BTreeMap<u64, MultiSigned<SkipBody>>,
    /// (epoch, round) in which this replica's members were told to skip.
    skip_asked: BTreeSet<(u64, u32)>,
    /// What each local identity signed, per epoch (durable: see `MyVotes`).
    signed: BTreeMap<(AccountId, u64), MyVotes>,
    /// Every committee signature seen, per (signer, epoch): for double signs.
    seen_sigs: BTreeMap<(AccountId, u64), Vec<SeenSig>>,
    double_signs: Vec<SlashProof>,
    /// Forks seen outside the document (see `receive_entry`).
    evidence: Vec<SlashProof>,
    proposed: BTreeSet<(u64, u32)>,
    last_now: Option<Timestamp>,
    /// Signature checks already passed (see `SigMemo`).
    checked: std::sync::Mutex<SigMemo>,
    /// The fold of the last checkpoint that passed `check_checkpoint`.
    checked_fold: Option<CheckedFold>,
    /// The state this replica last proposed a checkpoint of, with its root: when
    /// it checks a proposal whose fold gives the same state (its own, signed by
    /// the members it serves, or the same fold proposed by another member), the
    /// root is known. Comparing states costs far less than encoding one.
    proposed_root: Option<(Box<State>, Hash32)>,
    /// Check every view kept across a local append against a refold (tests).
    check_views: bool,
    /// Entries applied on top of the view instead of refolding it: local
    /// settlements, expiries and SLA records, and any from sync.
    kept_views: u64,
    /// Whether a checkpoint above the finalized epoch was held at the last
    /// refold: one may become final once the entries it covers arrive, so
    /// entries from sync are not folded on top meanwhile.
    checkpoints_waiting: bool,
    /// The open escrows' changes, for readers that follow them.
    escrow_feed: feed::EscrowFeed,
}

/// A checkpoint's fold on a finalized state, kept so that checking the same
/// body again on the same state — each member signing, then finality once it
/// is published with its quorum — costs no second fold (a state copy, the
/// batch, and the state root's encoding). The fold is a function of the
/// finalized state, named by its last checkpoint, and of the body, which names
/// its batch by hash; signatures, proposer and quorum are checked every time.
#[derive(Debug)]
struct CheckedFold {
    body: Hash32,
    on: Hash32,
    next: Box<Finalized>,
}

fn doc_err(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Doc(e.to_string())
}

/// What a store holds, read back: the document, the finalized part a snapshot
/// gave (or genesis), and what this replica's members signed.
struct Reloaded {
    doc: AutoCommit,
    fin: Finalized,
    signed: BTreeMap<(AccountId, u64), MyVotes>,
    report: OpenReport,
}

/// Read a store back (cutting a torn tail): its snapshot, then its records.
fn reload<S: Store>(genesis: &GenesisEntry, store: &mut S) -> Result<Reloaded, LedgerError> {
    let loaded = store.load()?;
    let state = State::genesis(genesis)?;
    let mut report = OpenReport {
        records: loaded.records.len(),
        torn_tail: loaded.torn_tail,
        ..OpenReport::default()
    };
    let mut fin = Finalized {
        state,
        frontier: BTreeMap::new(),
        chain: Vec::new(),
        invalid: Vec::new(),
    };
    let mut doc = match &loaded.snapshot {
        Some(snap) => {
            let (meta, doc_bytes) = split_snapshot(snap)?;
            fin = verify_snapshot(genesis, meta)?;
            report.from_snapshot = true;
            AutoCommit::load(doc_bytes).map_err(doc_err)?
        }
        None => AutoCommit::new(),
    };
    let mut signed = BTreeMap::new();
    for (i, r) in loaded.records.iter().enumerate() {
        match r.split_first() {
            Some((&REC_DOC, bytes)) => {
                doc.load_incremental(bytes).map_err(doc_err)?;
            }
            Some((&REC_SIGNED, bytes)) => {
                let (who, epoch, h): (AccountId, u64, Hash32) =
                    codec::decode_limited("ledger-local-vote", 128, bytes)?;
                signed
                    .entry((who, epoch))
                    .or_insert_with(MyVotes::default)
                    .legacy = Some(h);
            }
            Some((&REC_VOTE, bytes)) => {
                let (who, epoch, note): (AccountId, u64, VoteNote) =
                    codec::decode_limited(VOTE_NOTE_KIND, 256, bytes)?;
                signed
                    .entry((who, epoch))
                    .or_insert_with(MyVotes::default)
                    .apply(note);
            }
            _ => return Err(LedgerError::Doc(format!("record {i}: unknown record type"))),
        }
    }
    Ok(Reloaded {
        doc,
        fin,
        signed,
        report,
    })
}

impl Ledger<MemStore> {
    /// A fresh replica in memory. `actor` names this replica's changes in the
    /// document (use the account id bytes; two replicas must not share one).
    pub fn new(genesis: GenesisEntry, actor: &[u8]) -> Result<Self, LedgerError> {
        Ok(Ledger::open(genesis, actor, MemStore::new())?.0)
    }
}

impl<S: Store> Ledger<S> {
    /// Open a replica on a store: load the snapshot and the log, cut a torn tail,
    /// and re-verify every stored entry.
    pub fn open(
        genesis: GenesisEntry,
        actor: &[u8],
        mut store: S,
    ) -> Result<(Self, OpenReport), LedgerError> {
        let network = genesis.network();
        let params = genesis.genesis().params.clone();
        let Reloaded {
            mut doc,
            fin,
            signed,
            mut report,
        } = reload(&genesis, &mut store)?;
        doc.set_actor(automerge::ActorId::from(actor));
        let mut ledger = Ledger {
            genesis,
            network,
            params,
            saved_heads: Vec::new(),
            doc,
            store,
            entries: BTreeMap::new(),
            forked: BTreeSet::new(),
            by_hash: HashMap::new(),
            finals: HashMap::new(),
            retired: 0,
            keep: BTreeSet::new(),
            kept_contracts: HashSet::new(),
            checkpoint_entries: Vec::new(),
            checkpoint_heads: HashMap::new(),
            fin0: fin.clone(),
            fin,
            view: None,
            rewind: false,
            recoveries: 0,
            compacted_at: 0,
            compact_floor: COMPACT_FLOOR,
            compactions: 0,
            votes: BTreeMap::new(),
            skips: BTreeMap::new(),
            skip_asked: BTreeSet::new(),
            signed,
            seen_sigs: BTreeMap::new(),
            double_signs: Vec::new(),
            evidence: Vec::new(),
            proposed: BTreeSet::new(),
            last_now: None,
            checked: Default::default(),
            checked_fold: None,
            proposed_root: None,
            check_views: false,
            kept_views: 0,
            checkpoints_waiting: true,
            escrow_feed: feed::EscrowFeed::new(),
        };
        // Everything loaded is in the store already.
        ledger.saved_heads = ledger.doc.get_heads();
        let (n, rejected) = ledger.index_document();
        report.entries = n;
        report.rejected = rejected;
        if let Some(t) = report.torn_tail {
            tracing::warn!(
                offset = t.offset,
                dropped = t.dropped,
                "cut a torn tail off the ledger log"
            );
        }
        for (key, why) in &report.rejected {
            tracing::warn!(%key, %why, "stored value refused");
        }
        Ok((ledger, report))
    }

    /// Read every value in the document, verify, and index (entries below the
    /// finalized frontier are covered by the checkpoint and skipped).
    fn index_document(&mut self) -> (usize, Vec<(String, InvalidReason)>) {
        let frontier = &self.fin.frontier;
        let (found, mut rejected, _) = collect_doc_entries(&self.doc, |key| {
            frontier
                .get(&key.author)
                .is_some_and(|(fs, _)| key.seq <= *fs)
        });
        let (ok, bad) = verify_entries(&self.network, found);
        for (key, r) in bad {
            rejected.push((key.to_key(), r));
        }
        let n = ok.len();
        for ve in ok {
            self.index(ve);
        }
        self.view = None;
        (n, rejected)
    }

    /// Add a verified entry to the index (idempotent).
    pub(crate) fn index(&mut self, ve: VerifiedEntry) -> bool {
        if self.knows(&ve.hash) {
            return false;
        }
        let key = ve.key();
        if !self.entries.contains_key(&key) && self.below_frontier(&key) {
            // A fork of a final entry: hold that one again beside it.
            self.unretire(&key);
        }
        let ve = Arc::new(ve);
        self.note_kept(&ve);
        self.by_hash.insert(ve.hash, ve.clone());
        if let Body::Checkpoint(ms) = &ve.data.body {
            self.observe_checkpoint_sigs(ms);
            self.note_competitor(ms);
            self.checkpoint_entries.push(ve.clone());
        }
        let slot = self.entries.entry(key).or_default();
        slot.push(ve.clone());
        slot.sort_by_key(|e| e.hash);
        if slot.len() > 1 {
            self.forked.insert(key);
            self.view = None;
        } else {
            self.fold_on_top(&ve);
        }
        true
    }

    /// Apply entry `ve`, just indexed (from sync), on top of the pending view
    /// when that gives what a refold would: it extends its author's chain at
    /// the view's tip, nothing of its author's waits after it, no checkpoint
    /// waits for entries (one may be final once this arrives), and it
    /// commutes with every pending entry it sorts before
    /// (`Footprint::on_top`). Otherwise the view is refolded when next read.
    fn fold_on_top(&mut self, ve: &Arc<VerifiedEntry>) {
        let start = chain_start(&self.network);
        let (author, seq) = (ve.data.author, ve.data.seq);
        let Some(view) = self.view.as_mut() else {
            return;
        };
        let extends = match view.tips.get(&author) {
            Some((s, h)) => s.checked_add(1) == Some(seq) && *h == ve.data.prev_hash,
            None => seq == 0 && ve.data.prev_hash == start,
        };
        let alone = seq.checked_add(1).is_none_or(|next| {
            self.entries
                .range(EntryKey { author, seq: next }..)
                .next()
                .is_none_or(|(k, _)| k.author != author)
        });
        let key = crate::state::canonical_key(ve);
        let footprint = view.state.footprint(ve);
        let commutes = crate::state::Footprint::on_top(
            footprint.as_ref(),
            &ve.data.body,
            view.late
                .range((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded))
                .map(|(_, f)| f),
        );
        if !(extends && alone && commutes && !self.checkpoints_waiting) {
            self.view = None;
            return;
        }
        let ctx = FoldCtx {
            network: &self.network,
            params: &self.params,
            checked: &self.checked,
            genesis_time: self.genesis.genesis().genesis_time,
        };
        let mut debits = crate::state::BatchDebits {
            balance: std::mem::take(&mut view.pending_debits),
            stake: std::mem::take(&mut view.pending_unstakes),
        };
        let tried = view
            .state
            .apply_prepared(&self.fin.state, &mut debits, ve, ctx);
        view.pending_debits = debits.balance;
        view.pending_unstakes = debits.stake;
        if tried.is_err() {
            // Refold, so that the entry is reported invalid where it sorts.
            self.view = None;
            return;
        }
        view.tips.insert(author, (seq, ve.hash));
        if let Some(f) = footprint {
            view.late.insert(key, f);
        }
        if let Some(id) = State::escrow_touched(&ve.data.body) {
            self.escrow_feed
                .note(id, view.state.escrows.get(&id).map(|e| e.provider));
        }
        view.pending.push(ve.clone());
        self.kept_views += 1;
        if self.check_views {
            self.assert_view_is_a_refold();
        }
    }

    pub fn network(&self) -> NetworkId {
        self.network
    }
    pub fn params(&self) -> &Params {
        &self.params
    }
    pub fn genesis(&self) -> &GenesisEntry {
        &self.genesis
    }
    pub fn store(&self) -> &S {
        &self.store
    }
    /// Close the replica and give its store back (to reopen it).
    pub fn into_store(self) -> S {
        self.store
    }
    /// Number of distinct validly signed entries indexed since this replica
    /// opened: held, or final and retired.
    pub fn entry_count(&self) -> usize {
        self.by_hash.len() + self.retired
    }
    /// An entry by hash: held, or a retired final one read back from the
    /// document.
    pub fn entry(&self, hash: &Hash32) -> Option<Arc<VerifiedEntry>> {
        match self.by_hash.get(hash) {
            Some(e) => Some(e.clone()),
            None => self.read_retired(hash),
        }
    }

    /// Whether a provider may work on the escrow of `contract`: it is final,
    /// or it is pending and its requester's final bond and stake back it.
    ///
    /// A pending escrow can vanish: a requester that signs two chains (across
    /// a partition) keeps only one, and work done on the other is never
    /// paid. That fork is slashed, burning `slash` of the requester's stake
    /// and bond, so a pending escrow is backed only while everything the
    /// requester has pending on this replica is worth less than that share:
    /// the fork then costs the requester more than the work it gets from it.
    pub fn escrow_ready(&mut self, contract: &Hash32) -> bool {
        if self.finalized_state().escrows.contains_key(contract) {
            return true;
        }
        let Some(requester) = self.state().escrows.get(contract).map(|e| e.requester) else {
            return false;
        };
        // The pending escrows counted include this one.
        self.backs(&requester, Amount::ZERO)
    }

    /// The longest a job on an escrow no bond backs may wait for it to be
    /// final before it starts: two epochs (a lock written as an epoch closes
    /// joins the next one's checkpoint) and a stall round.
    pub fn unbacked_wait(&self) -> protocol::DurationMs {
        protocol::DurationMs(
            self.params
                .epoch_length
                .0
                .saturating_mul(2)
                .saturating_add(self.params.stall_timeout.0),
        )
    }

    /// Whether `requester`'s final bond and stake back its pending escrows
    /// plus `more` (see [`Ledger::escrow_ready`]).
    pub fn backs(&mut self, requester: &AccountId, more: Amount) -> bool {
        let (at_risk, backing) = self.backing(requester);
        at_risk.0.saturating_add(more.0) < backing.0
    }

    /// What `requester` has locked in escrows that are not final yet, as this
    /// replica sees them, and what its final stake and bond back: `slash` of
    /// them, what a fork of its chain would burn. Pending escrows are backed
    /// while the first is below the second (see [`Ledger::escrow_ready`]).
    pub fn backing(&mut self, requester: &AccountId) -> (Amount, Amount) {
        self.refresh();
        let Some(view) = self.view.as_ref() else {
            return (Amount::ZERO, Amount::ZERO);
        };
        let (st, fin) = (&view.state, &self.fin.state);
        let at_risk = st
            .escrows
            .iter()
            .filter(|(id, e)| e.requester == *requester && !fin.escrows.contains_key(*id))
            .map(|(_, e)| e.amount.0)
            .fold(0, u64::saturating_add);
        let bond = fin.bonds.get(requester).copied().unwrap_or_default();
        let backing = self
            .params
            .slash
            .of(Amount(fin.stake(requester).0.saturating_add(bond.0)));
        (Amount(at_risk), backing)
    }

    /// The certificate and payout that settled `contract`, from the settlement
    /// entry the state indexes by contract id (no scan). `None` if the contract
    /// is not settled, or if its settlement entry is one a snapshot covers (not
    /// held).
    pub fn settlement(&mut self, contract: &Hash32) -> Option<(QuorumCert, Payout)> {
        let hash = *self.state().settled.get(contract)?;
        match &self.entry(&hash)?.data.body {
            Body::Settlement { cert, payout } => Some((cert.clone(), payout.clone())),
            _ => None,
        }
    }

    /// Whether `contract`'s escrow ended by expiry (`Body::Expire`), not by
    /// a committee's settlement.
    pub fn expired(&mut self, contract: &Hash32) -> bool {
        let Some(hash) = self.state().settled.get(contract).copied() else {
            return false;
        };
        self.entry(&hash)
            .is_some_and(|e| matches!(e.data.body, Body::Expire { .. }))
    }

    /// Whether `contract`'s escrow is open and may be expired now: the last
    /// final epoch ended `Params::expire_after` after its deadline.
    pub fn expiry_due(&mut self, contract: &Hash32) -> bool {
        let after = self.params.expire_after;
        let st = self.state();
        let Some(e) = st.escrows.get(contract) else {
            return false;
        };
        let due = e.terms.deadline.plus(after);
        let epoch = st.epoch;
        self.epoch_end(epoch) >= due
    }

    /// Every entry held, by author then seq (forks included): what
    /// `cloudchain ledger` lists. Entries a snapshot covers are not held, nor
    /// final ones retired (see `keep_entries_of`).
    pub fn entries(&self) -> impl Iterator<Item = &VerifiedEntry> {
        self.entries.values().flat_map(|vs| vs.iter().map(|v| &**v))
    }

    /// The entries held by `author`, by seq (forks included).
    fn authored(
        &self,
        author: &AccountId,
    ) -> std::collections::btree_map::Range<'_, EntryKey, Vec<Ve>> {
        let range = EntryKey {
            author: *author,
            seq: 0,
        }..=EntryKey {
            author: *author,
            seq: u64::MAX,
        };
        self.entries.range(range)
    }

    /// The last `n` entries held by `author`, newest first (forks included).
    pub fn latest_by(&self, author: &AccountId, n: usize) -> impl Iterator<Item = &VerifiedEntry> {
        self.authored(author)
            .rev()
            .flat_map(|(_, vs)| vs.iter().map(|v| &**v))
            .take(n)
    }

    /// Every entry held by `author` (forks included), in seq order: an account's
    /// history for `cloudchain ledger`. Entries a snapshot covers are not held.
    pub fn entries_by(&self, author: &AccountId) -> Vec<&VerifiedEntry> {
        self.authored(author)
            .flat_map(|(_, vs)| vs.iter().map(|v| &**v))
            .collect()
    }

    fn ctx(&self) -> FoldCtx<'_> {
        FoldCtx {
            network: &self.network,
            params: &self.params,
            checked: &self.checked,
            genesis_time: self.genesis.genesis().genesis_time,
        }
    }

    // ---------------------------------------------------------------- the fold

    /// The current state: finalized entries, then pending ones (see the crate docs).
    pub fn state(&mut self) -> &State {
        &self.view().state
    }

    /// The state as of the last final checkpoint.
    pub fn finalized_state(&mut self) -> &State {
        self.refresh();
        &self.fin.state
    }

    /// The last finalized epoch.
    pub fn finalized_epoch(&mut self) -> u64 {
        self.refresh();
        self.fin.state.epoch
    }

    /// The final checkpoints, in order.
    pub fn checkpoints(&mut self) -> &[MultiSigned<CheckpointBody>] {
        self.refresh();
        &self.fin.chain
    }

    /// The balance including pending credits and debits.
    pub fn balance(&mut self, a: &AccountId) -> Amount {
        self.view().state.balance(a)
    }

    /// What `a` may spend now: its finalized balance minus its own pending debits.
    pub fn spendable(&mut self, a: &AccountId) -> Amount {
        let fin = self.finalized_state().balance(a);
        let v = self.view();
        fin.saturating_sub(v.pending_debits.get(a).copied().unwrap_or_default())
    }

    /// Every entry kept out of the fold, and why (finalized and pending).
    pub fn invalid(&mut self) -> Vec<Invalid> {
        self.refresh();
        let mut out = self.fin.invalid.clone();
        if let Some(v) = &self.view {
            out.extend(v.invalid.iter().cloned());
        }
        out
    }

    /// Proofs of offences seen that the current state has not slashed yet and
    /// would: forks (two entries at one author/seq) and double-signed
    /// checkpoints, of offenders with stake left, double signs not too old.
    pub fn slash_proofs(&mut self) -> Vec<SlashProof> {
        let mut out = Vec::new();
        for vs in self.forked.iter().filter_map(|k| self.entries.get(k)) {
            if vs.len() > 1 {
                let a = &vs[0];
                if let Some(b) = vs
                    .iter()
                    .find(|b| b.entry.signed.body_bytes() != a.entry.signed.body_bytes())
                {
                    out.push(SlashProof::Fork {
                        a: a.entry.clone(),
                        b: b.entry.clone(),
                    });
                }
            }
        }
        out.extend(self.double_signs.iter().cloned());
        out.extend(self.evidence.iter().cloned());
        let net = self.network;
        let state = &self.view().state;
        let epoch = state.epoch;
        out.retain(|p| match p.check(&net) {
            Ok((who, offence)) => {
                let fresh = match offence {
                    Offence::DoubleSign(e) => e.saturating_add(crate::state::SLASH_EPOCHS) > epoch,
                    Offence::Fork(_) => true,
                };
                fresh
                    && !state.slashed.contains(&(who, offence))
                    && state.slashable(&who) > Amount::ZERO
            }
            Err(_) => false,
        });
        out
    }

    fn view(&mut self) -> &View {
        self.refresh();
        self.view.get_or_insert_with(unreachable_view)
    }

    /// Advance finality and recompute the pending fold if anything changed.
    fn refresh(&mut self) {
        if self.view.is_some() {
            return;
        }
        if self.rewind {
            // Two final checkpoints on one predecessor: at least a third of a
            // committee broke the voting rules (see `note_competitor`). Every replica
            // follows the lowest (epoch, hash), whatever the order it saw them
            // in, so replicas still converge; the double signers are slashed.
            tracing::error!(
                "two final checkpoints on one predecessor: a third of a committee broke \
                 the voting rules; refolding finality from the start"
            );
            self.fin = self.fin0.clone();
            // The entries above that start were retired as they became final.
            self.reindex();
            self.rewind = false;
            self.escrow_feed.finality_moved();
        }
        let was = self.fin.state.last_checkpoint;
        self.advance_finality();
        if self.fin.state.last_checkpoint != was {
            self.retire_final();
        }
        let fin_epoch = self.fin.state.epoch;
        self.checkpoints_waiting = self
            .checkpoint_heads
            .values()
            .any(|h| h.is_some_and(|(epoch, _, _)| epoch > fin_epoch));
        let view = self.compute_view();
        self.escrow_feed.resync(&view.state.escrows);
        self.view = Some(view);
    }

    /// The canonical chain of each author after the finalized frontier: at each
    /// seq the entry linking to the previous one, the lowest hash on a fork.
    fn compute_view(&self) -> View {
        let mut invalid = Vec::new();
        let mut pending: Vec<Ve> = Vec::new();
        let mut tips = self.fin.frontier.clone();
        let start = chain_start(&self.network);
        // Author by author (a range lookup each: the entries below the finalized
        // frontier, most of them, are not walked at every refold).
        let mut next_author = self.entries.keys().next().map(|k| k.author);
        while let Some(author) = next_author {
            let last = EntryKey {
                author,
                seq: u64::MAX,
            };
            next_author = self
                .entries
                .range((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded))
                .next()
                .map(|(k, _)| k.author);
            let (mut next_seq, mut prev) = match self.fin.frontier.get(&author) {
                Some((s, h)) => (s + 1, *h),
                None => (0, start),
            };
            // At or below the finalized frontier the finalized chain won: only
            // forks there have anything to report.
            for key in self.forked.range(
                EntryKey { author, seq: 0 }..EntryKey {
                    author,
                    seq: next_seq,
                },
            ) {
                for v in self.entries.get(key).into_iter().flatten() {
                    if !self.on_final_chain(v) {
                        invalid.push(Invalid {
                            id: v.id(),
                            reason: InvalidReason::ForkedBranch,
                        });
                    }
                }
            }
            for (key, vs) in self.entries.range(
                EntryKey {
                    author,
                    seq: next_seq,
                }..=last,
            ) {
                let mut chosen = None;
                for v in vs {
                    if key.seq == next_seq && chosen.is_none() && v.data.prev_hash == prev {
                        chosen = Some(v.clone());
                    } else {
                        // A sibling of the chosen entry, or a child of one: a fork.
                        let sibling = key.seq == next_seq && v.data.prev_hash == prev;
                        let forked = sibling
                            || self.by_hash.get(&v.data.prev_hash).is_some_and(|p| {
                                p.data.author == author
                                    && p.data.seq.checked_add(1) == Some(v.data.seq)
                            });
                        invalid.push(Invalid {
                            id: v.id(),
                            reason: if forked {
                                InvalidReason::ForkedBranch
                            } else {
                                InvalidReason::BrokenChain {
                                    got: v.data.prev_hash,
                                }
                            },
                        });
                    }
                }
                if let Some(c) = chosen {
                    prev = c.hash;
                    next_seq = key.seq + 1;
                    tips.insert(author, (key.seq, c.hash));
                    pending.push(c);
                }
            }
        }
        let base = &self.fin.state;
        let mut state = base.clone();
        let mut late = crate::state::LateEntries::new();
        let debits = state.apply_batch(base, &pending, self.ctx(), &mut invalid, Some(&mut late));
        View {
            state,
            tips,
            pending,
            pending_debits: debits.balance,
            pending_unstakes: debits.stake,
            invalid,
            late,
        }
    }

    /// Check, after every local append that keeps the pending view instead
    /// of refolding it, that the view equals a refold, and panic if not. For
    /// tests and simulations: it costs a refold per append.
    pub fn check_incremental_views(&mut self, on: bool) {
        self.check_views = on;
    }

    /// What changed in the open escrows ([`State::escrows`] of the current
    /// state) since `cursor`, which moves to now: a reader that keeps its
    /// cursor looks only at the contracts whose escrow opened or closed,
    /// instead of at every open escrow at every change.
    pub fn escrow_changes(&mut self, cursor: &mut EscrowCursor) -> EscrowChanges {
        self.refresh();
        if self.check_views {
            let open = &self.view.get_or_insert_with(unreachable_view).state.escrows;
            assert!(
                self.escrow_feed.reports(open),
                "the escrow feed lost a change to the open escrows"
            );
        }
        self.escrow_feed.read(cursor)
    }

    /// The open escrows (in the current state) of `provider`'s contracts.
    pub fn open_escrows_of(&mut self, provider: &AccountId) -> Vec<Hash32> {
        self.refresh();
        self.escrow_feed.open_of(provider).collect()
    }

    /// How many local settlements, expiries and SLA records were applied on
    /// top of the pending view instead of refolding it.
    pub fn views_kept(&self) -> u64 {
        self.kept_views
    }

    fn assert_view_is_a_refold(&self) {
        let Some(kept) = &self.view else {
            return;
        };
        let fresh = self.compute_view();
        let ids = |v: &View| {
            let mut ids: Vec<Hash32> = v.pending.iter().map(|e| e.hash).collect();
            ids.sort();
            ids
        };
        let mut a = kept.invalid.clone();
        let mut b = fresh.invalid.clone();
        a.sort_by_key(|i| i.id);
        b.sort_by_key(|i| i.id);
        assert!(
            kept.state == fresh.state
                && kept.tips == fresh.tips
                && ids(kept) == ids(&fresh)
                && kept.pending_debits == fresh.pending_debits
                && kept.pending_unstakes == fresh.pending_unstakes
                && a == b
                && kept.late == fresh.late,
            "a view kept across an entry differs from a refold"
        );
    }

    fn on_final_chain(&self, v: &VerifiedEntry) -> bool {
        if self.finals.contains_key(&v.hash) {
            return true;
        }
        let Some((_, tip)) = self.fin.frontier.get(&v.data.author) else {
            return false;
        };
        let mut h = *tip;
        while let Some(e) = self.by_hash.get(&h) {
            if e.hash == v.hash {
                return true;
            }
            if e.data.seq <= v.data.seq {
                return false;
            }
            h = e.data.prev_hash;
        }
        false
    }

    // ------------------------------------------------------------- writing

    /// Sign and append a local entry by `identity`: checked against the current
    /// state (spending rule included), written to the document, saved and made
    /// durable before its id is returned. After a [`LedgerError::Store`] error the
    /// replica should be reopened from its store (the document may hold the entry
    /// the store does not).
    pub fn append(
        &mut self,
        identity: &Identity,
        body: Body,
        now: Timestamp,
    ) -> Result<EntryId, LedgerError> {
        let author = identity.account();
        let network = self.network;
        let start = chain_start(&network);
        self.refresh();
        if let Body::Checkpoint(ms) = &body {
            // Publish only what is final (or final once missing entries arrive).
            self.check_checkpoint(ms, true)
                .map_err(LedgerError::Rejected)?;
        }
        let ctx_params = self.params.clone();
        let fin_state = &self.fin.state;
        let view = self.view.get_or_insert_with(unreachable_view);
        let (seq, prev_hash) = match view.tips.get(&author) {
            Some((s, h)) => (s + 1, *h),
            None => (0, start),
        };
        let data = EntryData {
            author,
            seq,
            prev_hash,
            created_at: now,
            body,
        };
        let entry = Entry::sign(identity, &network, &data)?;
        let ve = Arc::new(VerifiedEntry {
            hash: entry.hash(),
            data,
            entry,
        });
        // Try it on the current state with the pending debits. A refused entry
        // leaves the state as it was (checks come before changes; credits cannot
        // overflow since the supply is bounded), so no copy is needed.
        let ctx = FoldCtx {
            network: &network,
            params: &ctx_params,
            checked: &self.checked,
            genesis_time: self.genesis.genesis().genesis_time,
        };
        let mut debits = crate::state::BatchDebits {
            balance: std::mem::take(&mut view.pending_debits),
            stake: std::mem::take(&mut view.pending_unstakes),
        };
        let footprint = view.state.footprint(&ve);
        let tried = view.state.apply_prepared(fin_state, &mut debits, &ve, ctx);
        view.pending_debits = debits.balance;
        view.pending_unstakes = debits.stake;
        if let Err(reason) = tried {
            return Err(LedgerError::Rejected(reason));
        }
        // From here on the view has the entry applied: if writing fails, drop it.
        let written = self.write_entry(&ve);
        if let Err(e) = written {
            self.view = None;
            return Err(e);
        }
        let id = ve.id();
        let checkpoint = matches!(ve.data.body, Body::Checkpoint(_));
        // Index without invalidating the view when the entry's effect commutes
        // with every pending entry it sorts before: applied on top, it leaves
        // the fold a refold would make (see `Footprint::on_top`).
        let key = crate::state::canonical_key(&ve);
        let on_top = self.view.as_ref().is_some_and(|v| {
            crate::state::Footprint::on_top(
                footprint.as_ref(),
                &ve.data.body,
                v.late
                    .range((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded))
                    .map(|(_, f)| f),
            )
        });
        self.by_hash.insert(ve.hash, ve.clone());
        self.note_kept(&ve);
        let slot = self.entries.entry(ve.key()).or_default();
        slot.push(ve.clone());
        if slot.len() > 1 {
            self.forked.insert(ve.key());
        }
        if let Body::Checkpoint(ms) = &ve.data.body {
            let ms = ms.clone();
            self.observe_checkpoint_sigs(&ms);
            self.note_competitor(&ms);
            self.checkpoint_entries.push(ve.clone());
        }
        match (&mut self.view, on_top && !checkpoint) {
            (Some(view), true) => {
                if let Some(id) = State::escrow_touched(&ve.data.body) {
                    self.escrow_feed
                        .note(id, view.state.escrows.get(&id).map(|e| e.provider));
                }
                view.tips.insert(author, (seq, ve.hash));
                if let Some(f) = footprint {
                    view.late.insert(key, f);
                    self.kept_views += 1;
                }
                view.pending.push(ve);
                if self.check_views {
                    self.assert_view_is_a_refold();
                }
            }
            _ => self.view = None,
        }
        self.maybe_compact();
        Ok(id)
    }

    /// Put a local entry at its free key, commit and store it durably.
    fn write_entry(&mut self, ve: &VerifiedEntry) -> Result<(), LedgerError> {
        let bytes = ve.entry.to_bytes()?;
        let key = ve.key().to_key();
        if !self
            .doc
            .get_all(automerge::ROOT, key.as_str())
            .map_err(doc_err)?
            .is_empty()
        {
            return Err(LedgerError::KeyTaken { key });
        }
        self.doc
            .put(automerge::ROOT, key.as_str(), ScalarValue::Bytes(bytes))
            .map_err(doc_err)?;
        self.commit_local()
    }

    /// The tip of `author`'s canonical chain: its last entry's seq and hash.
    pub fn tip(&mut self, author: &AccountId) -> Option<(u64, Hash32)> {
        self.view().tips.get(author).copied()
    }

    /// Take an entry that arrived outside sync (gossip, a slashing witness). It is
    /// verified; if its key is free it is written to the document (so sync carries
    /// it on) and joins the fold like any other (an invalid one is reported by
    /// [`Ledger::invalid`]). If the key holds another entry by the author, the
    /// pair is kept only as evidence for [`Ledger::slash_proofs`]: the fold is a
    /// function of the document alone, so every replica computes the same state.
    /// Returns whether the entry joined the fold.
    pub fn receive_entry(&mut self, entry: Entry) -> Result<bool, LedgerError> {
        let data = entry.verify(&self.network)?;
        let ve = VerifiedEntry {
            hash: entry.hash(),
            data,
            entry,
        };
        let mut wrote = false;
        let joined = self.take_received(ve, &mut wrote)?;
        if wrote {
            self.commit_local()?;
        }
        Ok(joined)
    }

    /// [`Ledger::receive_entry`] for several entries that arrived together (a
    /// batch a peer gossiped, the settlements an epoch brought): their
    /// signatures are checked in one batch, as sync does, and the document takes
    /// them in one change. Gives each entry's result in order; the outer error
    /// is the store's (after which the replica should be reopened).
    pub fn receive_entries(
        &mut self,
        entries: Vec<Entry>,
    ) -> Result<Vec<Result<bool, LedgerError>>, LedgerError> {
        let mut wrote = false;
        let out = verify_received(&self.network, entries)
            .into_iter()
            .map(|r| match r {
                Ok(ve) => self.take_received(ve, &mut wrote),
                Err(e) => Err(e.into()),
            })
            .collect();
        if wrote {
            self.commit_local()?;
        }
        Ok(out)
    }

    /// Write a verified received entry to the document (uncommitted: `wrote`
    /// says a commit is due) and index it; see [`Ledger::receive_entry`].
    fn take_received(&mut self, ve: VerifiedEntry, wrote: &mut bool) -> Result<bool, LedgerError> {
        if self.knows(&ve.hash) {
            return Ok(false);
        }
        let key = ve.key();
        let other = match self.entries.get(&key).and_then(|v| v.first()) {
            Some(e) => Some(e.entry.clone()),
            // A retired final entry there is read back from the document.
            None => self
                .doc_entries_at(&key)
                .into_iter()
                .find(|e| self.finals.contains_key(&e.hash())),
        };
        if let Some(other) = other {
            if other.signed.body_bytes() != ve.entry.signed.body_bytes() {
                self.evidence.push(SlashProof::Fork {
                    a: other,
                    b: ve.entry,
                });
            }
            return Ok(false);
        }
        let k = key.to_key();
        if !self
            .doc
            .get_all(automerge::ROOT, k.as_str())
            .map_err(doc_err)?
            .is_empty()
        {
            // Something unreadable holds the key (refused when it was indexed).
            return Ok(false);
        }
        self.doc
            .put(
                automerge::ROOT,
                k.as_str(),
                ScalarValue::Bytes(ve.entry.to_bytes()?),
            )
            .map_err(doc_err)?;
        *wrote = true;
        Ok(self.index(ve))
    }

    // ----------------------------------------------------------- finality

    /// Finalize every checkpoint that can be: valid, with a quorum, and with all
    /// the entries its frontier names present.
    fn advance_finality(&mut self) {
        loop {
            let cur = &self.fin.state;
            let mut cands: Vec<(u64, Hash32, Ve)> = Vec::new();
            for ve in &self.checkpoint_entries {
                let head =
                    *self
                        .checkpoint_heads
                        .entry(ve.hash)
                        .or_insert_with(|| match &ve.data.body {
                            Body::Checkpoint(ms) => ms
                                .body_unverified()
                                .ok()
                                .map(|b| (b.epoch, b.prev, b.content_hash())),
                            _ => None,
                        });
                if let Some((epoch, prev, h)) = head
                    && prev == cur.last_checkpoint
                    && epoch > cur.epoch
                {
                    cands.push((epoch, h, ve.clone()));
                }
            }
            cands.sort_by_key(|(e, h, _)| (*e, *h));
            cands.dedup_by_key(|(_, h, _)| *h);
            let mut advanced = false;
            for (_, _, ve) in cands {
                let Body::Checkpoint(ms) = &ve.data.body else {
                    continue;
                };
                match self.check_checkpoint(ms, true) {
                    Ok(Checked::Ready) => {
                        let Some(next) = self.take_checked_fold(ms) else {
                            break;
                        };
                        tracing::debug!(
                            epoch = next.state.epoch,
                            checkpoint = %next.state.last_checkpoint.short(),
                            "checkpoint final"
                        );
                        let mut next = *next;
                        let mut chain = std::mem::take(&mut self.fin.chain);
                        chain.append(&mut next.chain);
                        next.chain = chain;
                        let mut invalid = std::mem::take(&mut self.fin.invalid);
                        invalid.append(&mut next.invalid);
                        next.invalid = invalid;
                        self.fin = next;
                        self.escrow_feed.finality_moved();
                        advanced = true;
                        break;
                    }
                    Ok(Checked::Waiting) => {}
                    Err(reason) => {
                        let inv = Invalid {
                            id: ve.id(),
                            reason,
                        };
                        if !self.fin.invalid.contains(&inv) {
                            self.fin.invalid.push(inv);
                        }
                    }
                }
            }
            if !advanced {
                break;
            }
        }
    }

    /// If a checkpoint competes with one already final on the same predecessor and
    /// would have been chosen first, finality is refolded from the start. With
    /// fewer than a third of each committee breaking the voting rules this never
    /// happens: a second final checkpoint on one predecessor needs the same
    /// committee's quorum of precommits twice (in one round: a third of it
    /// signed two bodies there, and `slash_proofs` holds each; in two rounds: a
    /// third of it prevoted against its lock), or a quorum of a skip of the
    /// final checkpoint's epoch (a third of it precommitted and skipped, each
    /// proven).
    fn note_competitor(&mut self, ms: &MultiSigned<CheckpointBody>) {
        let Ok(body) = ms.body_unverified() else {
            return;
        };
        if body.prev == self.fin.state.last_checkpoint {
            // It extends the last final checkpoint: no final one shares its prev.
            return;
        }
        let h = body.content_hash();
        for fin in &self.fin.chain {
            if let Ok(b) = fin.body_unverified()
                && b.prev == body.prev
            {
                // The same checkpoint certified in another round is no rival.
                if (body.epoch, h) < (b.epoch, b.content_hash()) {
                    self.rewind = true;
                }
                return;
            }
        }
    }

    /// The committee that may sign a checkpoint of `epoch` on the current final
    /// state (the backup committee after a stall).
    pub fn committee_for_checkpoint(&mut self, epoch: u64) -> Option<Vec<AccountId>> {
        self.refresh();
        let st = &self.fin.state;
        if epoch <= st.epoch {
            return None;
        }
        if epoch == st.epoch + 1 {
            st.schedule.get(&epoch).cloned()
        } else {
            Some(st.backup.clone())
        }
    }

    /// A checkpoint carries a quorum of the precommits that made the last
    /// final checkpoint final (none on the genesis), valid over its body in
    /// the round they name.
    fn check_beacon(&self, body: &CheckpointBody) -> Result<(), InvalidReason> {
        let bad = |s: &str| InvalidReason::BadCheckpoint(s.to_string());
        let cur = &self.fin.state;
        let Some(last) = self.fin.chain.last() else {
            return match body.beacon {
                None if cur.epoch == 0 => Ok(()),
                None => Err(bad("no certificate of the last checkpoint here")),
                Some(_) => Err(bad("a beacon on the genesis")),
            };
        };
        let b = body
            .beacon
            .as_ref()
            .ok_or_else(|| bad("no beacon (the last checkpoint's precommits)"))?;
        let committee = cur
            .schedule
            .get(&cur.epoch)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| bad("the last checkpoint's committee is unknown"))?;
        let k = committee.len();
        let signers: Vec<&AccountId> = b.sigs.iter().map(|(a, _)| a).collect();
        let short = &signers[..signers.len().saturating_sub(1)];
        if !committee::held_quorum(committee, &b.sigs)
            || protocol::seats(committee, short.iter().copied()) >= quorum(k)
        {
            return Err(bad(
                "a beacon is just enough precommits for a quorum of seats",
            ));
        }
        if b.sigs.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(bad("beacon signers not sorted and distinct"));
        }
        let prev = last
            .body_unverified()
            .map_err(|e| InvalidReason::BadCheckpoint(e.to_string()))?
            .in_round(b.round, committee[b.round as usize % k]);
        let prev =
            MultiSigned::new(&prev).map_err(|e| InvalidReason::BadCheckpoint(e.to_string()))?;
        for (signer, sig) in &b.sigs {
            if !committee.contains(signer) {
                return Err(bad("a beacon signer is not on the last committee"));
            }
            verify_bytes(
                <CheckpointBody as Wire>::KIND,
                &self.network,
                signer,
                prev.body_bytes(),
                sig,
            )
            .map_err(|_| bad("a beacon signature does not verify"))?;
        }
        Ok(())
    }

    /// A checkpoint of a later epoch than the next one carries the skip
    /// certificate of each epoch in between, each on the last final checkpoint
    /// and signed by a quorum of that epoch's committee.
    fn check_skipped(&self, body: &CheckpointBody) -> Result<(), InvalidReason> {
        let bad = |s: String| InvalidReason::BadCheckpoint(s);
        let cur = &self.fin.state;
        let first = cur.epoch.saturating_add(1);
        if body.skipped.len() as u64 != body.epoch.saturating_sub(first) {
            return Err(bad(format!(
                "a checkpoint of epoch {} on epoch {} needs {} skip certificates, not {}",
                body.epoch,
                cur.epoch,
                body.epoch.saturating_sub(first),
                body.skipped.len()
            )));
        }
        for (x, cert) in (first..).zip(&body.skipped) {
            let committee: &[AccountId] = if x == first {
                cur.schedule.get(&x).map(Vec::as_slice).unwrap_or_default()
            } else {
                &cur.backup
            };
            let s = cert
                .verify_signers(&self.network, &[])
                .map_err(|e| bad(format!("skip certificate of epoch {x}: {e}")))?;
            if s.epoch != x || s.prev != cur.last_checkpoint {
                return Err(bad(format!(
                    "skip certificate of epoch {x} is for epoch {} on another checkpoint",
                    s.epoch
                )));
            }
            if cert.signatures.iter().any(|(a, _)| !committee.contains(a))
                || !committee::held_quorum(committee, &cert.signatures)
            {
                return Err(bad(format!(
                    "skip certificate of epoch {x} lacks a quorum of its committee"
                )));
            }
        }
        Ok(())
    }

    /// The next finalized state that `check_checkpoint` found for `ms` on the
    /// current one (`chain` holds `ms` itself, with its signatures).
    fn take_checked_fold(&mut self, ms: &MultiSigned<CheckpointBody>) -> Option<Box<Finalized>> {
        let c = self.checked_fold.take()?;
        if c.body != ms.body_hash() || c.on != self.fin.state.last_checkpoint {
            return None;
        }
        let mut next = c.next;
        next.chain = vec![ms.clone()];
        Some(next)
    }

    /// Check a checkpoint against the finalized state; with `need_quorum` also its
    /// signatures. `Ready` leaves the next finalized state in `checked_fold`;
    /// `Waiting` says entries it names are missing here.
    fn check_checkpoint(
        &mut self,
        ms: &MultiSigned<CheckpointBody>,
        need_quorum: bool,
    ) -> Result<Checked, InvalidReason> {
        let bad = |s: &str| InvalidReason::BadCheckpoint(s.to_string());
        let body = ms
            .body_unverified()
            .map_err(|e| InvalidReason::BadCheckpoint(e.to_string()))?;
        let cur = &self.fin.state;
        if body.epoch == u64::MAX {
            return Err(bad("epoch out of range"));
        }
        if body.prev != cur.last_checkpoint
            || body.prev_epoch != cur.epoch
            || body.epoch <= cur.epoch
        {
            return Err(bad("does not extend the last final checkpoint"));
        }
        let committee: Vec<AccountId> = if body.epoch == cur.epoch + 1 {
            cur.schedule.get(&body.epoch).cloned().unwrap_or_default()
        } else {
            cur.backup.clone()
        };
        if committee.is_empty() {
            return Err(bad("no committee (no eligible stakers)"));
        }
        let k = committee.len();
        if committee[body.round as usize % k] != body.proposer {
            return Err(bad("proposer is not the member whose round it is"));
        }
        // Every vote present must be valid; the proposer's is one like any
        // other (a proposer that vanished after proposing blocks nothing).
        ms.verify_signers(&self.network, &[])
            .map_err(|e| InvalidReason::BadCheckpoint(e.to_string()))?;
        if let Some((s, _)) = ms.signatures.iter().find(|(s, _)| !committee.contains(s)) {
            return Err(InvalidReason::BadCheckpoint(format!(
                "signed by {s:?}, not on the committee"
            )));
        }
        self.check_skipped(&body)?;
        self.check_beacon(&body)?;
        if need_quorum && !committee::held_quorum(&committee, &ms.signatures) {
            return Err(InvalidReason::NoQuorum(format!(
                "{} of {} seats",
                protocol::seats(&committee, ms.signatures.iter().map(|(a, _)| a)),
                quorum(k)
            )));
        }
        // Collect the batch the frontier names.
        if body.frontier.windows(2).any(|w| w[0].author >= w[1].author) {
            return Err(bad("frontier not sorted by author"));
        }
        let start = chain_start(&self.network);
        let mut batch: Vec<Ve> = Vec::new();
        let mut frontier = self.fin.frontier.clone();
        for item in &body.frontier {
            let (stop_seq, stop_hash) = match self.fin.frontier.get(&item.author) {
                Some((s, h)) => (Some(*s), *h),
                None => (None, start),
            };
            if stop_seq.is_some_and(|s| item.seq <= s) {
                return Err(bad("frontier goes back"));
            }
            let mut h = item.hash;
            let mut expect_seq = item.seq;
            let mut chain = Vec::new();
            loop {
                let Some(e) = self.by_hash.get(&h) else {
                    return Ok(Checked::Waiting);
                };
                if e.data.author != item.author || e.data.seq != expect_seq {
                    return Err(bad("frontier names an entry of another author or seq"));
                }
                chain.push(e.clone());
                let done = match stop_seq {
                    Some(s) => expect_seq == s + 1,
                    None => expect_seq == 0,
                };
                if done {
                    if e.data.prev_hash != stop_hash {
                        return Err(bad("frontier chain does not link to the finalized one"));
                    }
                    break;
                }
                h = e.data.prev_hash;
                expect_seq -= 1;
            }
            batch.extend(chain);
            frontier.insert(item.author, (item.seq, item.hash));
        }
        let (h, on) = (ms.body_hash(), cur.last_checkpoint);
        if self
            .checked_fold
            .as_ref()
            .is_some_and(|c| c.body == h && c.on == on)
        {
            return Ok(Checked::Ready);
        }
        let mut next = cur.clone();
        let mut invalid = Vec::new();
        next.apply_batch(cur, &batch, self.ctx(), &mut invalid, None);
        let beacon = Beacon::hash(body.beacon.as_ref());
        let mint = next.close_epoch(body.epoch, &body.prev, &beacon, committee, self.ctx())?;
        let root = match &self.proposed_root {
            Some((st, root)) if **st == next => *root,
            _ => next.root(),
        };
        if !next.matches(&body, &mint, root) {
            return Err(bad(
                "state root, mint or committees differ from this replica's fold",
            ));
        }
        next.last_checkpoint = body.content_hash();
        // Only what this checkpoint adds: `advance_finality` appends it to the
        // chain and the invalid list it keeps (copying both at every check made
        // the checks quadratic in the number of checkpoints).
        self.checked_fold = Some(CheckedFold {
            body: h,
            on,
            next: Box::new(Finalized {
                state: next,
                frontier,
                chain: Vec::new(),
                invalid,
            }),
        });
        Ok(Checked::Ready)
    }
}

/// A committee statement a member signed (its slot, bytes and signature).
type SeenSig = (crate::entry::Slot, Vec<u8>, Sig);

enum Checked {
    /// Valid: the next finalized state is in `Ledger::checked_fold`.
    Ready,
    Waiting,
}

fn unreachable_view() -> View {
    // `refresh` always fills the view first; this is only a type-level fallback.
    View {
        late: Default::default(),
        state: State {
            epoch: 0,
            last_checkpoint: Hash32::default(),
            balances: BTreeMap::new(),
            stakes: BTreeMap::new(),
            unbonding: BTreeMap::new(),
            escrows: BTreeMap::new(),
            settled: BTreeMap::new(),
            settled_by_deadline: BTreeSet::new(),
            sla: BTreeMap::new(),
            reputation: BTreeMap::new(),
            schedule: BTreeMap::new(),
            backup: Vec::new(),
            drawn_stakes: BTreeMap::new(),
            epoch_units: BTreeMap::new(),
            supply: Default::default(),
            slashed: BTreeSet::new(),
            bonds: BTreeMap::new(),
            bond_slashed: BTreeMap::new(),
            bond_reserved: BTreeMap::new(),
            sla_records: BTreeSet::new(),
            privacy_spent: BTreeMap::new(),
        },
        tips: BTreeMap::new(),
        pending: Vec::new(),
        pending_debits: HashMap::new(),
        pending_unstakes: HashMap::new(),
        invalid: Vec::new(),
    }
}
