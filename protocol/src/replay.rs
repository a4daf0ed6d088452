//! Replay protection with bounded memory.
//!
//! Every offer, bid and proposal carries `(signer, nonce, expires_at)`. A message is
//! fresh if it has not expired and its `(signer, nonce)` was not seen before. The
//! guard remembers seen pairs until they expire, and never more than `capacity` of
//! them.
//!
//! **Eviction rule.** When full, the guard forgets the pair that expires first and
//! raises a *watermark* to that expiry. From then on it refuses every message that
//! expires at or before the watermark. So forgetting never lets a replay through:
//! a replayed message carries its original expiry, which is at or below the
//! watermark if its pair was forgotten. The cost is that under a flood, fresh
//! messages with short lifetimes may be refused (`Saturated`); they are never
//! wrongly accepted.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use foldhash::{HashSet, HashSetExt};

use crate::identity::AccountId;
use crate::types::Timestamp;

/// Why the guard refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    #[error("expired at {0:?}")]
    Expired(Timestamp),
    #[error("already seen (replay)")]
    Replayed,
    #[error("expires at {expires_at:?}, at or before the guard's watermark {watermark:?}")]
    Saturated {
        expires_at: Timestamp,
        watermark: Timestamp,
    },
}

/// Remembers `(signer, nonce)` pairs until they expire; see the module docs.
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    capacity: usize,
    /// Earliest expiry first. Pairs only ever leave in that order (pruned or
    /// evicted), so a heap serves: cheaper than an ordered set, and pops the
    /// same smallest `(expiry, signer, nonce)` one would.
    by_expiry: BinaryHeap<Reverse<(Timestamp, AccountId, u64)>>,
    seen: HashSet<(AccountId, u64)>,
    watermark: Timestamp,
}

impl ReplayGuard {
    /// A guard remembering at most `capacity` pairs (at least 1).
    pub fn new(capacity: usize) -> Self {
        ReplayGuard {
            capacity: capacity.max(1),
            by_expiry: BinaryHeap::new(),
            seen: HashSet::new(),
            watermark: Timestamp(0),
        }
    }

    /// Accept and remember a message, or say why not.
    pub fn check(
        &mut self,
        now: Timestamp,
        signer: AccountId,
        nonce: u64,
        expires_at: Timestamp,
    ) -> Result<(), ReplayError> {
        self.prune(now);
        if expires_at <= now {
            return Err(ReplayError::Expired(expires_at));
        }
        if expires_at <= self.watermark {
            return Err(ReplayError::Saturated {
                expires_at,
                watermark: self.watermark,
            });
        }
        if self.seen.contains(&(signer, nonce)) {
            return Err(ReplayError::Replayed);
        }
        if self.seen.len() >= self.capacity
            && let Some(Reverse(first)) = self.by_expiry.pop()
        {
            self.seen.remove(&(first.1, first.2));
            self.watermark = self.watermark.max(first.0);
            if expires_at <= self.watermark {
                // Put nothing in; the evicted pair stays covered by the watermark.
                return Err(ReplayError::Saturated {
                    expires_at,
                    watermark: self.watermark,
                });
            }
        }
        self.seen.insert((signer, nonce));
        self.by_expiry.push(Reverse((expires_at, signer, nonce)));
        Ok(())
    }

    /// Forget pairs that have expired: a replay of them fails the expiry check.
    pub fn prune(&mut self, now: Timestamp) {
        while let Some(Reverse(first)) = self.by_expiry.peek() {
            if first.0 > now {
                break;
            }
            let (_, s, n) = *first;
            self.by_expiry.pop();
            self.seen.remove(&(s, n));
        }
    }

    /// Pairs remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn acct(i: u8) -> AccountId {
        AccountId([i; 32])
    }

    #[test]
    fn replays_and_expired_are_refused() {
        let mut g = ReplayGuard::new(10);
        let now = Timestamp(1_000);
        assert_eq!(g.check(now, acct(1), 7, Timestamp(2_000)), Ok(()));
        assert_eq!(
            g.check(now, acct(1), 7, Timestamp(2_000)),
            Err(ReplayError::Replayed)
        );
        assert_eq!(g.check(now, acct(2), 7, Timestamp(2_000)), Ok(()));
        assert_eq!(
            g.check(now, acct(3), 1, Timestamp(1_000)),
            Err(ReplayError::Expired(Timestamp(1_000)))
        );
        // After expiry the pair is forgotten but a replay is still refused.
        let later = Timestamp(2_500);
        assert_eq!(
            g.check(later, acct(1), 7, Timestamp(2_000)),
            Err(ReplayError::Expired(Timestamp(2_000)))
        );
        assert!(g.is_empty());
    }

    proptest! {
        /// Whatever the capacity and the sequence, no message is ever accepted
        /// twice, and memory stays within capacity.
        #[test]
        fn never_accepts_a_replay(
            capacity in 1usize..8,
            msgs in proptest::collection::vec((0u8..4, 0u64..6, 1u64..50, 0u64..3), 1..200),
        ) {
            let mut g = ReplayGuard::new(capacity);
            let mut now = 0u64;
            let mut accepted: Vec<(u8, u64, u64)> = Vec::new();
            for (s, n, ttl, dt) in msgs {
                now += dt;
                let exp = now + ttl;
                let ok = g.check(Timestamp(now), acct(s), n, Timestamp(exp)).is_ok();
                if ok {
                    // The same message (signer, nonce, expiry) is never accepted twice.
                    prop_assert!(!accepted.contains(&(s, n, exp)));
                    accepted.push((s, n, exp));
                }
                prop_assert!(g.len() <= capacity);
            }
        }
    }
}
