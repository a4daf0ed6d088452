//! Work that failed because a peer could not be reached is tried again.
//!
//! A provider cannot fetch the inputs while the requester is down (or has come
//! back on another address); a committee member cannot fetch a result while the
//! provider restarts; a requester cannot fetch its result just then either.
//! None of these says anything about the job, so the driver reports them as a
//! [`WorkError`] with `retry` set, and the core asks for the same work again
//! after a backoff (2 s, doubling, at most 30 s), with the latest addresses it
//! knows. A provider retries until its contract's deadline (then it gives the
//! contract up); a member and a requester at most [`MAX_ATTEMPTS`] times, after
//! which a member judges the result wrong (a result nobody can fetch is no
//! result) and a requester says so in the job's timeline.

use std::collections::{BTreeMap, HashMap};

use protocol::{DurationMs, Hash32, Timestamp};

/// Why work the core asked for did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkError {
    pub reason: String,
    /// A peer or a blob could not be reached: the same work may succeed later.
    /// Otherwise the failure is final (the computation failed, or the result
    /// does not check).
    pub retry: bool,
}

impl WorkError {
    /// A final failure.
    pub fn fatal(reason: impl Into<String>) -> Self {
        WorkError {
            reason: reason.into(),
            retry: false,
        }
    }
    /// A peer or blob that could not be reached.
    pub fn unreachable(reason: impl Into<String>) -> Self {
        WorkError {
            reason: reason.into(),
            retry: true,
        }
    }
}

impl std::fmt::Display for WorkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl<S: crdt_ledger::Store> crate::NodeCore<S> {
    /// A provider serves blobs from a new address (it restarted, say): checks
    /// and fetches of its results that wait for their next try go at once.
    pub(crate) fn provider_moved<R: rand::Rng + ?Sized>(
        &mut self,
        cx: &mut crate::Cx<'_, R>,
        provider: protocol::AccountId,
    ) {
        for c in self.checks_of(&provider) {
            if self.retries.waiting(Retry::Check(c)) {
                self.retries.done(Retry::Check(c));
                self.recheck(cx, c);
            }
        }
        for j in self.fetches_of(&provider) {
            if self.retries.waiting(Retry::Fetch(j)) {
                self.retries.done(Retry::Fetch(j));
                self.refetch(cx, j);
            }
        }
    }
}

/// Most tries of a check or a result fetch.
pub const MAX_ATTEMPTS: u32 = 8;
const FIRST: DurationMs = DurationMs(2_000);
const MOST: DurationMs = DurationMs(30_000);

/// What to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Retry {
    Run(Hash32),
    Check(Hash32),
    Fetch(Hash32),
}

/// Retries due, and how many times each was tried.
#[derive(Debug, Default)]
pub(crate) struct Retries {
    due: BTreeMap<(Timestamp, Retry), ()>,
    attempts: HashMap<Retry, u32>,
}

impl Retries {
    /// Schedule `what` again after its backoff; `false` once it has had
    /// `max` tries.
    pub(crate) fn schedule(&mut self, now: Timestamp, what: Retry, max: u32) -> bool {
        let n = self.attempts.entry(what).or_default();
        *n += 1;
        if *n > max {
            self.attempts.remove(&what);
            return false;
        }
        let wait = FIRST.0.saturating_mul(1 << (*n - 1).min(8)).min(MOST.0);
        self.due.insert((now.plus(DurationMs(wait)), what), ());
        true
    }

    /// The retries due at `now`, earliest first.
    pub(crate) fn pop_due(&mut self, now: Timestamp) -> Vec<Retry> {
        let mut out = Vec::new();
        while let Some((&(at, what), _)) = self.due.first_key_value() {
            if at > now {
                break;
            }
            self.due.pop_first();
            out.push(what);
        }
        out
    }

    /// Whether `what` waits for its next try.
    pub(crate) fn waiting(&self, what: Retry) -> bool {
        self.due.keys().any(|(_, w)| *w == what)
    }

    /// `what` succeeded or ended: forget it.
    pub(crate) fn done(&mut self, what: Retry) {
        self.attempts.remove(&what);
        self.due.retain(|(_, w), _| *w != what);
    }

    /// Whether a check or a result fetch waits for its next try.
    pub(crate) fn any_check_or_fetch(&self) -> bool {
        self.due
            .keys()
            .any(|(_, w)| matches!(w, Retry::Check(_) | Retry::Fetch(_)))
    }

    pub(crate) fn next(&self) -> Option<Timestamp> {
        self.due.keys().next().map(|(at, _)| *at)
    }
}
