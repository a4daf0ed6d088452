//! The timer queue every sans-IO engine keeps: timers leave the engine as
//! `ScheduleTimer` outputs and `poll_timeout`, and come back through
//! `handle_timeout(now)`, which pops the due ones in time order.

use std::collections::BTreeSet;

use crate::types::Timestamp;

/// An engine's output type, which has a variant asking the driver to call
/// `handle_timeout` at `at`.
pub trait ScheduleTimer {
    fn schedule_timer(at: Timestamp) -> Self;
}

/// Pending timers of kind `T`, ordered by time (then by `T`, for determinism).
#[derive(Debug, Clone)]
pub struct Timers<T> {
    set: BTreeSet<(Timestamp, T)>,
}

impl<T: Ord + Copy> Default for Timers<T> {
    fn default() -> Self {
        Timers {
            set: BTreeSet::new(),
        }
    }
}

impl<T: Ord + Copy> Timers<T> {
    /// When the earliest timer is due.
    pub fn next(&self) -> Option<Timestamp> {
        self.set.first().map(|&(at, _)| at)
    }

    pub fn insert(&mut self, at: Timestamp, t: T) {
        self.set.insert((at, t));
    }

    /// Insert `t` at `at` and ask the driver, through `out`, to wake the engine then.
    pub fn schedule<O: ScheduleTimer>(&mut self, out: &mut Vec<O>, at: Timestamp, t: T) {
        self.insert(at, t);
        out.push(O::schedule_timer(at));
    }

    /// The earliest timer due at `now`, removed.
    pub fn pop_due(&mut self, now: Timestamp) -> Option<T> {
        let &(at, t) = self.set.first()?;
        if at > now {
            return None;
        }
        self.set.pop_first();
        Some(t)
    }

    /// Keep only the timers for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.set.retain(|(_, t)| keep(t));
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_due_timers_in_order() {
        let mut t = Timers::default();
        t.insert(Timestamp(30), 'c');
        t.insert(Timestamp(10), 'b');
        t.insert(Timestamp(10), 'a');
        assert_eq!(t.next(), Some(Timestamp(10)));
        assert_eq!(t.pop_due(Timestamp(20)), Some('a'));
        assert_eq!(t.pop_due(Timestamp(20)), Some('b'));
        assert_eq!(t.pop_due(Timestamp(20)), None);
        t.retain(|&c| c != 'c');
        assert!(t.is_empty());
    }
}
