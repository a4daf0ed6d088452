//! Store records, snapshots, compaction and starting from a snapshot.

use super::*;

impl<S: Store> Ledger<S> {
    // ----------------------------------------------------------- snapshots

    /// The snapshot of the last final checkpoint (state, frontier, chain of
    /// checkpoints) followed by the whole document.
    pub fn snapshot(&mut self) -> Result<Vec<u8>, LedgerError> {
        self.refresh();
        let meta = SnapshotMeta {
            chain: self.fin.chain.clone(),
            state: self.fin.state.clone(),
            frontier: self
                .fin
                .frontier
                .iter()
                .map(|(a, (s, h))| FrontierItem {
                    author: *a,
                    seq: *s,
                    hash: *h,
                })
                .collect(),
        };
        let meta = codec::encode(&meta)?;
        let doc = self.doc.save();
        let mut out = Vec::with_capacity(8 + meta.len() + doc.len());
        out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&doc);
        Ok(out)
    }

    /// Compact the store: replace its log by a snapshot. What this replica
    /// signed is local, not part of a shareable snapshot: its notes go into the
    /// new log in the same atomic step, so no crash leaves a store that forgot
    /// them (and lets a member sign twice after a restart).
    pub fn compact(&mut self) -> Result<(), LedgerError> {
        let snap = self.snapshot()?;
        let mut notes = Vec::new();
        for ((who, epoch), votes) in &self.signed {
            if let Some(h) = votes.legacy {
                notes.push(signed_record(*who, *epoch, h)?);
            }
            for note in votes.notes() {
                notes.push(vote_record(*who, *epoch, note)?);
            }
        }
        self.store.compact(&snap, &notes)?;
        self.saved_heads = self.doc.get_heads();
        self.compacted_at = self.store.size();
        self.compactions += 1;
        Ok(())
    }

    /// Compact when the store has grown past twice its size after the last
    /// compaction (and past [`Ledger::set_compact_threshold`]'s floor): the
    /// cost of a compaction, a save of the whole document, is spread over as
    /// many bytes of appends. A failed compaction leaves the store as it was
    /// and is only logged; the next append tries again.
    pub(crate) fn maybe_compact(&mut self) {
        let size = self.store.size();
        if size < self.compact_floor || size < self.compacted_at.saturating_mul(2) {
            return;
        }
        match self.compact() {
            Ok(()) => tracing::info!(
                before = size,
                after = self.store.size(),
                "ledger store compacted"
            ),
            Err(e) => {
                // Try again only after as many bytes again.
                self.compacted_at = size;
                tracing::warn!(%e, "could not compact the ledger store");
            }
        }
    }

    /// The store size below which the ledger never compacts on its own
    /// (default [`COMPACT_FLOOR`]).
    pub fn set_compact_threshold(&mut self, bytes: u64) {
        self.compact_floor = bytes;
    }

    /// How many times this replica compacted its store.
    pub fn compactions(&self) -> u64 {
        self.compactions
    }

    /// Commit the local put and append its change to the store (durably). Only
    /// the new change is written (`save_after` would walk the change graph).
    pub(super) fn commit_local(&mut self) -> Result<(), LedgerError> {
        self.doc.commit();
        match self.doc.get_last_local_change() {
            Some(change) => {
                let record = doc_record(change.raw_bytes());
                self.store_doc(&record)
            }
            None => self.persist(),
        }
    }

    /// Append the changes made since the last save to the store (durably).
    pub(crate) fn persist(&mut self) -> Result<(), LedgerError> {
        let record = self.doc.save_after(&self.saved_heads);
        if !record.is_empty() {
            self.store_doc(&doc_record(&record))?;
        }
        self.saved_heads = self.doc.get_heads();
        Ok(())
    }

    /// Append a record of the document's new changes. If the store refuses
    /// it, the replica goes back to what the store holds (see
    /// [`Ledger::recover_from_store`]): a write that was refused leaves no
    /// trace for sync to carry, and its key is free again.
    fn store_doc(&mut self, record: &[u8]) -> Result<(), LedgerError> {
        match self.store.append(record) {
            Ok(()) => {
                self.saved_heads = self.doc.get_heads();
                Ok(())
            }
            Err(e) => {
                tracing::warn!(%e, "the ledger store refused a write; reloading what it holds");
                if let Err(again) = self.recover_from_store() {
                    tracing::error!(%again, "cannot reload the ledger store");
                }
                Err(e.into())
            }
        }
    }

    /// Rebuild the document, the index and finality from what the store holds
    /// (after a store error: the document may hold changes the store lost).
    /// Peers' sync states must start afresh after this (see
    /// [`Ledger::recoveries`]): they may believe this replica has what it lost.
    pub fn recover_from_store(&mut self) -> Result<(), LedgerError> {
        let actor = self.doc.get_actor().clone();
        let Reloaded {
            mut doc,
            fin,
            signed,
            report,
        } = reload(&self.genesis, &mut self.store)?;
        doc.set_actor(actor);
        self.saved_heads = doc.get_heads();
        self.doc = doc;
        self.fin0 = fin.clone();
        self.fin = fin;
        self.rewind = false;
        self.escrow_feed.finality_moved();
        self.signed = signed;
        self.recoveries += 1;
        let (n, _) = self.reindex();
        tracing::info!(
            entries = n,
            records = report.records,
            "ledger reloaded from its store"
        );
        Ok(())
    }

    /// How many times this replica reloaded its store after an error.
    pub fn recoveries(&self) -> u64 {
        self.recoveries
    }

    /// Record what a validated sync message brought: `whole` is a saved document
    /// the message carried (stored as is: compact, and `load_incremental` takes
    /// it), else the new changes are saved. Then the entries join the index.
    pub(crate) fn after_sync(
        &mut self,
        new: Vec<VerifiedEntry>,
        whole: Option<&[u8]>,
    ) -> Result<usize, LedgerError> {
        match whole {
            Some(doc) => {
                // Every change now in the document was saved before or is in `doc`.
                self.store_doc(&doc_record(doc))?;
            }
            None => self.persist()?,
        }
        let mut n = 0;
        for ve in new {
            if self.index(ve) {
                n += 1;
            }
        }
        self.maybe_compact();
        Ok(n)
    }

    pub(crate) fn knows(&self, h: &Hash32) -> bool {
        self.by_hash.contains_key(h) || self.finals.contains_key(h)
    }
}

/// Store record types: a piece of the document (changes or a saved document),
/// or a note that a local identity signed a committee statement: a checkpoint
/// (`REC_SIGNED`, before rounds had two steps: nothing more is signed for
/// its epoch) or a prevote, precommit or skip (`REC_VOTE`).
pub(crate) const REC_DOC: u8 = 0;
pub(crate) const REC_SIGNED: u8 = 1;
pub(crate) const REC_VOTE: u8 = 2;
pub(crate) const VOTE_NOTE_KIND: &str = "ledger-local-vote-note";

fn doc_record(bytes: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(bytes.len() + 1);
    r.push(REC_DOC);
    r.extend_from_slice(bytes);
    r
}

pub(crate) fn signed_record(who: AccountId, epoch: u64, h: Hash32) -> Result<Vec<u8>, LedgerError> {
    let mut r = vec![REC_SIGNED];
    r.extend(codec::encode_unbounded(
        "ledger-local-vote",
        &(who, epoch, h),
    )?);
    Ok(r)
}

pub(crate) fn vote_record(
    who: AccountId,
    epoch: u64,
    note: VoteNote,
) -> Result<Vec<u8>, LedgerError> {
    let mut r = vec![REC_VOTE];
    r.extend(codec::encode_unbounded(
        VOTE_NOTE_KIND,
        &(who, epoch, note),
    )?);
    Ok(r)
}

pub(super) fn split_snapshot(snap: &[u8]) -> Result<(SnapshotMeta, &[u8]), LedgerError> {
    let bad = |s: &str| LedgerError::Snapshot(s.to_string());
    if snap.len() < 8 {
        return Err(bad("too short"));
    }
    let mut l = [0u8; 8];
    l.copy_from_slice(&snap[..8]);
    let len = usize::try_from(u64::from_le_bytes(l)).map_err(|_| bad("bad length"))?;
    let rest = &snap[8..];
    if len > rest.len() {
        return Err(bad("metadata longer than the snapshot"));
    }
    let meta: SnapshotMeta =
        codec::decode(&rest[..len]).map_err(|e| LedgerError::Snapshot(e.to_string()))?;
    Ok((meta, &rest[len..]))
}

/// Check a snapshot without replaying history: each checkpoint in the chain must
/// carry a quorum of the committee the one before it named (the genesis draw for
/// the first; the backup committee after a skipped epoch), link to it, and the
/// last one's state root must be the snapshot state's. The frontier (which
/// entries the state holds) is not in the root: it must be the one the chain's
/// bodies name, each author at the last entry a checkpoint included.
pub(super) fn verify_snapshot(
    genesis: &GenesisEntry,
    meta: SnapshotMeta,
) -> Result<Finalized, LedgerError> {
    let bad = |s: String| LedgerError::Snapshot(s);
    let network = genesis.network();
    let g = State::genesis(genesis)?;
    let (mut next, mut backup) = (
        g.schedule.get(&1).cloned().unwrap_or_default(),
        g.backup.clone(),
    );
    let mut prev = g.last_checkpoint;
    let mut prev_epoch = 0;
    let mut last_body = None;
    let mut frontier: BTreeMap<AccountId, (u64, Hash32)> = BTreeMap::new();
    for (i, ms) in meta.chain.iter().enumerate() {
        let body = ms
            .body_unverified()
            .map_err(|e| bad(format!("checkpoint {i}: {e}")))?;
        if body.prev != prev || body.prev_epoch != prev_epoch || body.epoch <= prev_epoch {
            return Err(bad(format!("checkpoint {i} does not link")));
        }
        let committee = if body.epoch == prev_epoch + 1 {
            &next
        } else {
            &backup
        };
        ms.verify_signers(&network, &[])
            .map_err(|e| bad(format!("checkpoint {i}: {e}")))?;
        if ms.signatures.iter().any(|(s, _)| !committee.contains(s))
            || !super::committee::held_quorum(committee, &ms.signatures)
        {
            return Err(bad(format!("checkpoint {i} lacks a committee quorum")));
        }
        for f in &body.frontier {
            frontier.insert(f.author, (f.seq, f.hash));
        }
        prev = body.content_hash();
        prev_epoch = body.epoch;
        next = body.next_committee.clone();
        backup = body.backup_committee.clone();
        last_body = Some(body);
    }
    let claimed: BTreeMap<AccountId, (u64, Hash32)> = meta
        .frontier
        .iter()
        .map(|f| (f.author, (f.seq, f.hash)))
        .collect();
    if claimed != frontier || claimed.len() != meta.frontier.len() {
        return Err(bad(
            "the frontier is not the one the checkpoints name".into()
        ));
    }
    let state = meta.state;
    match &last_body {
        None => {
            if state != g {
                return Err(bad(
                    "no checkpoint but the state is not the genesis state".into()
                ));
            }
        }
        Some(body) => {
            let mut check = state.clone();
            check.last_checkpoint = body.prev;
            if check.root() != body.state_root || state.last_checkpoint != prev {
                return Err(bad("state does not match the last checkpoint's root".into()));
            }
        }
    }
    Ok(Finalized {
        state,
        frontier,
        chain: meta.chain,
        invalid: Vec::new(),
    })
}

/// Start a new replica from another peer's snapshot: the checkpoint chain's
/// signatures and the state root are checked, history is not replayed.
pub fn open_from_snapshot<S: Store>(
    genesis: GenesisEntry,
    actor: &[u8],
    mut store: S,
    snapshot: &[u8],
) -> Result<(Ledger<S>, OpenReport), LedgerError> {
    split_snapshot(snapshot).and_then(|(meta, _)| verify_snapshot(&genesis, meta))?;
    store.compact(snapshot, &[])?;
    Ledger::open(genesis, actor, store)
}
