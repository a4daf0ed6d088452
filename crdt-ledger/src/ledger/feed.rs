//! The feed of open-escrow changes: which contracts' escrows opened or closed
//! in the current state since a reader last looked, so that a node core does
//! not scan every open escrow at every ledger change (a committee member
//! looking for escrows to watch, a provider for contracts it missed).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::{AccountId, Hash32};

use crate::state::Escrow;

/// Where a reader stands in a replica's feed ([`super::Ledger::escrow_changes`]).
/// A new cursor (the default) reads everything once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EscrowCursor {
    /// The replica it was read on (0: none yet).
    replica: u64,
    /// The feed position read up to.
    at: u64,
    /// The finality moves seen.
    fin: u64,
}

/// What changed since a cursor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EscrowChanges {
    /// The contracts whose escrow opened or closed in the current state (in
    /// order of id, each once), or `None` when the reader must look at
    /// every open escrow: its cursor is new, from another replica, or so old
    /// that the feed forgot what came after it.
    pub changed: Option<Vec<Hash32>>,
    /// Whether finality moved (a checkpoint became final, or finality was
    /// refolded), so the finalized escrows may differ.
    pub finality_moved: bool,
}

/// A replica's feed: the open escrows as last reported (with their
/// providers, and indexed by provider), and the log of changes to that set.
#[derive(Debug)]
pub(crate) struct EscrowFeed {
    replica: u64,
    reported: BTreeMap<Hash32, AccountId>,
    by_provider: BTreeSet<(AccountId, Hash32)>,
    /// The position of `log[0]`; positions start at 1.
    base: u64,
    log: VecDeque<Hash32>,
    fin_moves: u64,
}

/// The log keeps at least this many changes, and twice the open escrows.
const MIN_LOG: usize = 4_096;

impl EscrowFeed {
    pub(crate) fn new() -> Self {
        // Unique per replica in this process: a cursor read on one replica
        // (a simulator lends replicas to cores) never reads another's log.
        static NEXT: AtomicU64 = AtomicU64::new(1);
        EscrowFeed {
            replica: NEXT.fetch_add(1, Ordering::Relaxed),
            reported: BTreeMap::new(),
            by_provider: BTreeSet::new(),
            base: 1,
            log: VecDeque::new(),
            fin_moves: 0,
        }
    }

    pub(crate) fn finality_moved(&mut self) {
        self.fin_moves += 1;
    }

    fn push(&mut self, id: Hash32) {
        self.log.push_back(id);
        let keep = MIN_LOG.max(2 * self.reported.len());
        while self.log.len() > keep {
            self.log.pop_front();
            self.base += 1;
        }
    }

    /// Contract `id`'s escrow is now open (with its provider) or not.
    pub(crate) fn note(&mut self, id: Hash32, provider: Option<AccountId>) {
        let changed = match provider {
            Some(p) => match self.reported.insert(id, p) {
                None => {
                    self.by_provider.insert((p, id));
                    true
                }
                Some(_) => false,
            },
            None => match self.reported.remove(&id) {
                Some(provider) => {
                    self.by_provider.remove(&(provider, id));
                    true
                }
                None => false,
            },
        };
        if changed {
            self.push(id);
        }
    }

    /// The view was refolded: log the difference between what was reported
    /// and `open`, walking both in order.
    pub(crate) fn resync(&mut self, open: &BTreeMap<Hash32, Escrow>) {
        let mut closed = Vec::new();
        let mut opened = Vec::new();
        let mut was = self.reported.keys().peekable();
        let mut now = open.iter().peekable();
        loop {
            match (was.peek().copied(), now.peek().copied()) {
                (None, None) => break,
                (Some(a), None) => {
                    closed.push(*a);
                    was.next();
                }
                (None, Some(b)) => {
                    opened.push(b);
                    now.next();
                }
                (Some(a), Some(b)) => match a.cmp(b.0) {
                    std::cmp::Ordering::Equal => {
                        was.next();
                        now.next();
                    }
                    std::cmp::Ordering::Less => {
                        closed.push(*a);
                        was.next();
                    }
                    std::cmp::Ordering::Greater => {
                        opened.push(b);
                        now.next();
                    }
                },
            }
        }
        for id in closed {
            self.note(id, None);
        }
        for (id, e) in opened {
            self.note(*id, Some(e.provider));
        }
    }

    /// The open escrows of `provider`'s contracts, by contract id.
    pub(crate) fn open_of(&self, provider: &AccountId) -> impl Iterator<Item = Hash32> + '_ {
        self.by_provider
            .range((*provider, Hash32([0; 32]))..=(*provider, Hash32([0xff; 32])))
            .map(|(_, id)| *id)
    }

    /// Whether the set last reported is `open` (checked in tests).
    pub(crate) fn reports(&self, open: &BTreeMap<Hash32, Escrow>) -> bool {
        self.reported
            .iter()
            .map(|(id, p)| (*id, *p))
            .eq(open.iter().map(|(id, e)| (*id, e.provider)))
            && self.by_provider.len() == self.reported.len()
    }

    pub(crate) fn read(&self, cursor: &mut EscrowCursor) -> EscrowChanges {
        let end = self.base + self.log.len() as u64;
        // A backlog longer than the open escrows costs more to read than
        // looking at every open escrow.
        let unread = end.saturating_sub(cursor.at);
        let changed = (cursor.replica == self.replica
            && cursor.at >= self.base
            && unread <= self.reported.len() as u64 + 64)
            .then(|| {
                let from = usize::try_from(cursor.at - self.base).unwrap_or(usize::MAX);
                let ids: BTreeSet<Hash32> = self.log.iter().skip(from).copied().collect();
                ids.into_iter().collect()
            });
        let finality_moved = cursor.replica != self.replica || cursor.fin != self.fin_moves;
        *cursor = EscrowCursor {
            replica: self.replica,
            at: end,
            fin: self.fin_moves,
        };
        EscrowChanges {
            changed,
            finality_moved,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> Hash32 {
        Hash32([i; 32])
    }

    const P: Option<AccountId> = Some(AccountId([9; 32]));

    #[test]
    fn a_reader_sees_each_change_once_and_a_lost_place_reads_everything() {
        let mut feed = EscrowFeed::new();
        let mut reader = EscrowCursor::default();
        // A new cursor reads everything, and finality as moved.
        let first = feed.read(&mut reader);
        assert_eq!(first.changed, None);
        assert!(first.finality_moved);
        assert_eq!(
            feed.read(&mut reader),
            EscrowChanges {
                changed: Some(vec![]),
                finality_moved: false
            }
        );
        feed.note(id(2), P);
        feed.note(id(1), P);
        feed.note(id(2), P); // no change: not logged again
        feed.note(id(1), None);
        assert_eq!(feed.read(&mut reader).changed, Some(vec![id(1), id(2)]));
        assert_eq!(
            feed.open_of(&AccountId([9; 32])).collect::<Vec<_>>(),
            vec![id(2)]
        );
        // A second reader on the same replica reads from its own place.
        let mut late = reader;
        feed.note(id(3), P);
        feed.finality_moved();
        assert_eq!(feed.read(&mut reader).changed, Some(vec![id(3)]));
        let read = feed.read(&mut late);
        assert_eq!(read.changed, Some(vec![id(3)]));
        assert!(read.finality_moved);
        // A cursor of another replica reads everything.
        let other = EscrowFeed::new();
        assert_eq!(other.read(&mut reader).changed, None);
        // A backlog longer than the open escrows, or one the log forgot,
        // reads everything.
        let mut old = EscrowCursor::default();
        feed.read(&mut old);
        for i in 0..MIN_LOG as u64 + 1 {
            let mut b = [0; 32];
            b[..8].copy_from_slice(&i.to_le_bytes());
            feed.note(Hash32(b), P);
            feed.note(Hash32(b), None);
        }
        assert!(feed.log.len() <= MIN_LOG);
        assert_eq!(feed.read(&mut old).changed, None);
        assert_eq!(feed.read(&mut old).changed, Some(vec![]));
    }
}
