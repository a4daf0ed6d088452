//! Final entries leave memory.
//!
//! Once a checkpoint is final, the entries it covers are folded into the
//! finalized state and never folded again (unless finality is refolded, see
//! below). Holding each of them decoded in the index made a replica's memory
//! grow with the whole history of the network: a node that runs for months,
//! or a simulation of thousands of peers, held every escrow lock, settlement
//! certificate and SLA record ever written, three times over (decoded, as
//! signed bytes, and in the document).
//!
//! So at each finality move the replica walks every author's chain back from
//! its new finalized tip and *retires* the entries it passes: they leave
//! `entries` and `by_hash`, and only their hash and key stay (`finals`).
//! The document still holds every one of them: [`Ledger::entry`] reads a
//! retired entry back from it by key, sync serves them as before, and a
//! snapshot contains them. What stays held:
//! - entries above the finalized frontier (the pending fold reads them);
//! - both sides of a fork (slash proofs and `invalid` name them), with the
//!   final side marked in `finals`;
//! - entries that concern an account given to [`Ledger::keep_entries_of`]
//!   (a node's own identity): the ones it wrote, the escrow locks and
//!   settlements of its contracts, fees and transfers paid to it. Its
//!   earnings history reads them, and they grow with its own work only.
//!
//! An entry that arrives later at a key below the frontier is either known
//! (its hash is in `finals`: dropped) or a fork of the final entry there: the
//! final entry is read back from the document and held again beside it, so
//! the fork is seen as before. If finality is ever refolded from its start
//! (two final checkpoints on one predecessor, see `note_competitor`), the
//! index is rebuilt from the document, as a replica reopening its store does.

use super::*;

impl<S: Store> Ledger<S> {
    /// Keep the entries that concern `account` in memory once final (see the
    /// module docs of `retire`): a node passes its own identity, so that its
    /// history stays listed by [`Ledger::entries`].
    pub fn keep_entries_of(&mut self, account: AccountId) {
        if self.keep.insert(account) {
            self.kept_contracts.extend(
                self.by_hash
                    .values()
                    .filter_map(|e| kept_contract(&self.keep, e))
                    .collect::<Vec<_>>(),
            );
        }
    }

    /// How many final entries this replica retired from memory (readable
    /// from the document by [`Ledger::entry`]).
    pub fn entries_retired(&self) -> usize {
        self.retired
    }

    /// Note a contract of a kept account when its escrow lock is indexed.
    pub(super) fn note_kept(&mut self, ve: &VerifiedEntry) {
        if let Some(c) = kept_contract(&self.keep, ve) {
            self.kept_contracts.insert(c);
        }
    }

    /// Whether a final entry stays held: it concerns a kept account.
    fn keeps(&self, e: &VerifiedEntry) -> bool {
        if self.keep.is_empty() {
            return false;
        }
        if self.keep.contains(&e.data.author) {
            return true;
        }
        match &e.data.body {
            Body::EscrowLock { contract } => self.kept_contracts.contains(&contract.body_hash()),
            Body::Settlement { cert, payout } => {
                self.kept_contracts.contains(&cert.contract)
                    || payout.fees.iter().any(|(a, _)| self.keep.contains(a))
            }
            Body::Transfer { to, .. } => self.keep.contains(to),
            _ => false,
        }
    }

    /// After finality moved: mark every entry between each author's old and
    /// new finalized tip as final, and retire those that need not be held.
    /// Checkpoint entries of final epochs leave the candidates too.
    pub(super) fn retire_final(&mut self) {
        let tips: Vec<Hash32> = self.fin.frontier.values().map(|(_, h)| *h).collect();
        for tip in tips {
            let mut h = tip;
            while !self.finals.contains_key(&h) {
                let Some(e) = self.by_hash.get(&h).cloned() else {
                    break; // below where this replica started: never held
                };
                let key = e.key();
                self.finals.insert(h, key);
                let alone = self.entries.get(&key).is_some_and(|s| s.len() == 1);
                if alone && !self.keeps(&e) {
                    self.entries.remove(&key);
                    self.by_hash.remove(&h);
                    self.retired += 1;
                }
                h = e.data.prev_hash;
            }
        }
        let epoch = self.fin.state.epoch;
        let heads = &self.checkpoint_heads;
        let stale = |ve: &Ve| {
            heads
                .get(&ve.hash)
                .is_some_and(|h| h.is_none_or(|(e, _, _)| e <= epoch))
        };
        self.checkpoint_entries.retain(|ve| !stale(ve));
        let live: HashSet<Hash32> = self.checkpoint_entries.iter().map(|v| v.hash).collect();
        self.checkpoint_heads.retain(|h, _| live.contains(h));
    }

    /// The entries the document holds at `key` (all its values: more than
    /// one is a fork), decoded but not verified.
    pub(super) fn doc_entries_at(&self, key: &EntryKey) -> Vec<Entry> {
        let Ok(all) = self.doc.get_all(automerge::ROOT, key.to_key().as_str()) else {
            return Vec::new();
        };
        all.into_iter()
            .filter_map(|(v, _)| match v {
                Value::Scalar(sv) => match sv.as_ref() {
                    ScalarValue::Bytes(b) => Entry::from_bytes(b).ok(),
                    _ => None,
                },
                Value::Object(_) => None,
            })
            .collect()
    }

    /// A retired entry read back from the document: the value at its key
    /// with its hash (checked when it was indexed; the hash covers its
    /// signed bytes).
    pub(super) fn read_retired(&self, hash: &Hash32) -> Option<Ve> {
        let key = self.finals.get(hash)?;
        let e = self
            .doc_entries_at(key)
            .into_iter()
            .find(|e| e.hash() == *hash)?;
        let data = codec::decode::<EntryData>(e.signed.body_bytes()).ok()?;
        Some(Arc::new(VerifiedEntry {
            hash: *hash,
            data,
            entry: e,
        }))
    }

    /// Hold again the retired final entry at `key` (a fork of it arrived).
    pub(super) fn unretire(&mut self, key: &EntryKey) {
        let hashes: Vec<Hash32> = self
            .doc_entries_at(key)
            .iter()
            .map(Entry::hash)
            .filter(|h| self.finals.get(h) == Some(key) && !self.by_hash.contains_key(h))
            .collect();
        for h in hashes {
            if let Some(ve) = self.read_retired(&h) {
                self.by_hash.insert(h, ve.clone());
                let slot = self.entries.entry(*key).or_default();
                slot.push(ve);
                slot.sort_by_key(|e| e.hash);
                self.retired -= 1;
            }
        }
    }

    /// Whether `key` is at or below its author's finalized tip.
    pub(super) fn below_frontier(&self, key: &EntryKey) -> bool {
        self.fin
            .frontier
            .get(&key.author)
            .is_some_and(|(s, _)| key.seq <= *s)
    }

    /// Rebuild the index from the document above the finalized frontier
    /// (after a store reload, or when finality is refolded from its start).
    pub(super) fn reindex(&mut self) -> (usize, Vec<(String, InvalidReason)>) {
        self.entries.clear();
        self.forked.clear();
        self.by_hash.clear();
        self.finals.clear();
        self.retired = 0;
        self.kept_contracts.clear();
        self.checkpoint_entries.clear();
        self.checkpoint_heads.clear();
        self.view = None;
        self.checked_fold = None;
        self.proposed_root = None;
        self.index_document()
    }
}

/// The contract of an escrow lock that names a kept account.
fn kept_contract(keep: &BTreeSet<AccountId>, e: &VerifiedEntry) -> Option<Hash32> {
    let Body::EscrowLock { contract } = &e.data.body else {
        return None;
    };
    if keep.is_empty() {
        return None;
    }
    let t = contract.body_unverified().ok()?;
    (keep.contains(&t.requester) || keep.contains(&t.provider)).then(|| contract.body_hash())
}
