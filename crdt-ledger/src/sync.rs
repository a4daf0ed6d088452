//! Sync over automerge's sync protocol, with validation before anything counts.
//!
//! The ledger never knows who carries the bytes: the node calls
//! [`Ledger::generate_sync_message`] per peer and sends what it returns, and
//! passes what arrives to [`Ledger::receive_sync_message`].
//!
//! Before a received message touches the document, every change in it is decoded
//! and every operation checked: the only operation allowed is putting a byte value
//! at a fresh `author/seq` key of the root map (no overwrite, no delete, no other
//! object), and the value must be an entry signed by that author for that seq
//! (signatures checked in batches). One bad operation refuses the whole message and
//! counts against the peer; after [`MAX_PEER_ERRORS`] the peer is ignored.

use std::collections::HashSet;

use automerge::legacy::{Key, ObjectId, OpType};
use automerge::sync::{Message, State as AmState, SyncDoc};
use automerge::{AutoCommit, Change, ReadDoc, ScalarValue};

use crate::entry::{Entry, EntryKey};
use crate::error::{InvalidReason, SyncError};
use crate::ledger::{Ledger, collect_doc_entries, verify_entries};
use crate::store::Store;

/// Bad messages tolerated from one peer before it is ignored.
pub const MAX_PEER_ERRORS: u32 = 16;

/// Per-peer sync state: automerge's, and how this peer has behaved.
#[derive(Debug, Default)]
pub struct PeerState {
    sync: AmState,
    /// Messages refused from this peer.
    pub errors: u32,
    /// The last refusal, for logs.
    pub last_error: Option<String>,
    /// New valid entries received from this peer.
    pub entries_received: u64,
    /// Our heads when a message for this peer was last generated, if nothing
    /// came from it since: automerge would then say nothing new (its state
    /// for the peer has not moved), so it is not asked, which saves the bloom
    /// filter and change-graph walk every idle sync would cost.
    quiet: Option<Vec<automerge::ChangeHash>>,
}

impl PeerState {
    pub fn new() -> Self {
        Self::default()
    }
    /// Whether the peer sent too much garbage to be listened to.
    pub fn banned(&self) -> bool {
        self.errors >= MAX_PEER_ERRORS
    }
}

/// What a received message brought.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub changes: usize,
    pub new_entries: usize,
}

impl<S: Store> Ledger<S> {
    /// The next message for this peer, if there is anything to say.
    pub fn generate_sync_message(&mut self, peer: &mut PeerState) -> Option<Vec<u8>> {
        let heads = self.doc.get_heads();
        if peer.quiet.as_ref() == Some(&heads) {
            return None;
        }
        let msg = self
            .doc
            .sync()
            .generate_sync_message(&mut peer.sync)
            .map(Message::encode);
        peer.quiet = Some(heads);
        msg
    }

    /// Merge two replicas in process by running the sync protocol between them
    /// until neither has anything to send (tests, the simulator, local tools).
    /// Both sides validate what they receive. Returns the messages exchanged.
    pub fn merge_with<T: Store>(&mut self, other: &mut Ledger<T>) -> Result<usize, SyncError> {
        let (mut mine, mut theirs) = (PeerState::new(), PeerState::new());
        let mut messages = 0;
        // Each round trip brings the two sides closer; automerge converges in a
        // handful. The bound only guards against a bug looping forever.
        for _ in 0..64 {
            let a = self.generate_sync_message(&mut mine);
            if let Some(m) = &a {
                other.receive_sync_message(&mut theirs, m)?;
                messages += 1;
            }
            let b = other.generate_sync_message(&mut theirs);
            if let Some(m) = &b {
                self.receive_sync_message(&mut mine, m)?;
                messages += 1;
            }
            if a.is_none() && b.is_none() {
                return Ok(messages);
            }
        }
        Err(SyncError::Apply(
            "sync did not converge in 64 rounds".into(),
        ))
    }

    /// Validate and apply a message from this peer; new entries are saved durably
    /// before this returns. An error counts against the peer.
    pub fn receive_sync_message(
        &mut self,
        peer: &mut PeerState,
        bytes: &[u8],
    ) -> Result<SyncReport, SyncError> {
        peer.quiet = None;
        if peer.banned() {
            return Err(SyncError::PeerBanned {
                errors: peer.errors,
            });
        }
        match self.receive_inner(peer, bytes) {
            Ok(r) => {
                peer.entries_received += r.new_entries as u64;
                Ok(r)
            }
            Err(e) => {
                peer.errors += 1;
                peer.last_error = Some(e.to_string());
                tracing::debug!(errors = peer.errors, error = %e, "sync message refused");
                Err(e)
            }
        }
    }

    fn receive_inner(
        &mut self,
        peer: &mut PeerState,
        bytes: &[u8],
    ) -> Result<SyncReport, SyncError> {
        let mut msg = Message::decode(bytes).map_err(|e| SyncError::Decode(e.to_string()))?;
        let mut found: Vec<(EntryKey, Entry)> = Vec::new();
        let mut n_changes = 0;
        let mut whole: Option<(Vec<u8>, AutoCommit)> = None;
        let mut pieces = 0;
        let chunks: Vec<Vec<u8>> = msg.changes.iter().map(<[u8]>::to_vec).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            for piece in split_chunks(i, chunk)? {
                pieces += 1;
                match Change::try_from(piece) {
                    Ok(change) => {
                        self.check_change(n_changes, &change, &mut found)?;
                        n_changes += 1;
                    }
                    Err(automerge::LoadChangeError::WrongChunkType) => {
                        // A whole saved document (sent when much is missing).
                        let doc = check_doc(i, piece, &mut found)?;
                        n_changes += doc.1;
                        whole = Some((piece.to_vec(), doc.0));
                    }
                    Err(e) => {
                        return Err(SyncError::BadChange {
                            index: i,
                            reason: e.to_string(),
                        });
                    }
                }
            }
        }
        // Values we already hold need no second check.
        found.retain(|(_, e)| !self.knows(&e.hash()));
        let mut seen = HashSet::new();
        found.retain(|(_, e)| seen.insert(e.hash()));
        let (ok, bad) = verify_entries(&self.network(), found);
        if let Some((key, reason)) = bad.into_iter().next() {
            return Err(SyncError::BadEntry {
                key: key.to_key(),
                reason,
            });
        }
        let fresh = self.doc.get_heads().is_empty();
        let record = match whole {
            // A message that is one whole document (what automerge sends when
            // much is missing) is stored as it came. A fresh replica also takes
            // the validated document as its own instead of loading it a second
            // time; the sync state still sees the message.
            Some((bytes, mut doc)) if pieces == 1 => {
                if fresh {
                    doc.set_actor(self.doc.get_actor().clone());
                    self.doc = doc;
                    msg.changes = automerge::sync::ChunkList::empty();
                }
                Some(bytes)
            }
            _ => None,
        };
        self.doc
            .sync()
            .receive_sync_message(&mut peer.sync, msg)
            .map_err(|e| SyncError::Apply(e.to_string()))?;
        let n = self
            .after_sync(ok, record.as_deref())
            .map_err(|e| match e {
                crate::LedgerError::Store(s) => SyncError::Store(s),
                other => SyncError::Apply(other.to_string()),
            })?;
        Ok(SyncReport {
            changes: n_changes,
            new_entries: n,
        })
    }

    fn check_change(
        &self,
        index: usize,
        change: &Change,
        found: &mut Vec<(EntryKey, Entry)>,
    ) -> Result<(), SyncError> {
        let bad = |reason: &str| SyncError::BadChange {
            index,
            reason: reason.to_string(),
        };
        // Expanding a change indexes its actor table without checks; a crafted
        // change must cost the peer an error, not this process a panic.
        let expanded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| change.decode()))
            .map_err(|_| bad("undecodable operations"))?;
        for op in expanded.operations {
            if op.obj != ObjectId::Root || op.insert {
                return Err(bad("operation outside the root map"));
            }
            if !op.pred.is_empty() {
                return Err(bad("overwrites or deletes an existing value"));
            }
            let Key::Map(k) = &op.key else {
                return Err(bad("not a map key"));
            };
            let OpType::Put(ScalarValue::Bytes(b)) = &op.action else {
                return Err(bad("not a put of bytes"));
            };
            let key = EntryKey::parse(k).ok_or_else(|| bad("key is not author/seq"))?;
            let entry = Entry::from_bytes(b).map_err(|e| SyncError::BadEntry {
                key: k.to_string(),
                reason: InvalidReason::Malformed(e.to_string()),
            })?;
            found.push((key, entry));
        }
        Ok(())
    }
}

/// The automerge chunks (changes, or a saved document) one element of a sync
/// message's change list holds.
fn split_chunks(index: usize, chunk: &[u8]) -> Result<Vec<&[u8]>, SyncError> {
    let mut out = Vec::new();
    let mut rest = chunk;
    while !rest.is_empty() {
        let len = chunk_len(rest).ok_or_else(|| SyncError::BadChange {
            index,
            reason: "truncated chunk".into(),
        })?;
        let (one, tail) = rest.split_at(len);
        out.push(one);
        rest = tail;
    }
    Ok(out)
}

/// Check a whole saved document from a peer without decoding its changes: every
/// value must be an entry at a root key, and there must be exactly one operation
/// per value — so nothing was overwritten, deleted or nested.
fn check_doc(
    index: usize,
    bytes: &[u8],
    found: &mut Vec<(EntryKey, Entry)>,
) -> Result<(AutoCommit, usize), SyncError> {
    let loaded =
        std::panic::catch_unwind(|| AutoCommit::load(bytes)).map_err(|_| SyncError::BadChange {
            index,
            reason: "undecodable document".into(),
        })?;
    let doc = loaded.map_err(|e| SyncError::BadChange {
        index,
        reason: e.to_string(),
    })?;
    let (entries, rejected, values) = collect_doc_entries(&doc, |_| false);
    if let Some((key, reason)) = rejected.into_iter().next() {
        return Err(SyncError::BadEntry { key, reason });
    }
    let stats = doc.stats();
    if stats.num_ops != values {
        return Err(SyncError::BadChange {
            index,
            reason: format!(
                "{} operations for {values} values: something was overwritten, deleted or nested",
                stats.num_ops
            ),
        });
    }
    found.extend(entries);
    Ok((doc, stats.num_changes as usize))
}

/// The length of the automerge chunk at the start of `b`: magic (4), checksum (4),
/// type (1), a LEB128 length, then that many bytes.
fn chunk_len(b: &[u8]) -> Option<usize> {
    let mut at = 9;
    let mut len: u64 = 0;
    let mut shift = 0;
    loop {
        let byte = *b.get(at)?;
        at += 1;
        if shift >= 64 {
            return None;
        }
        len |= u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let total = at.checked_add(usize::try_from(len).ok()?)?;
    (total <= b.len()).then_some(total)
}
