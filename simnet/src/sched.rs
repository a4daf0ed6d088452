//! The discrete-event scheduler: virtual time, a priority queue, ties broken by
//! insertion order so that the same inputs always give the same run.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use protocol::Timestamp;

struct Entry<E> {
    at: Timestamp,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<E> Eq for Entry<E> {}
impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<E> Ord for Entry<E> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Events waiting for their time. Single-threaded by design: determinism first.
pub struct Scheduler<E> {
    now: Timestamp,
    seq: u64,
    heap: BinaryHeap<Reverse<Entry<E>>>,
    processed: u64,
}

impl<E> std::fmt::Debug for Scheduler<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Scheduler(now {:?}, {} waiting)",
            self.now,
            self.heap.len()
        )
    }
}

impl<E> Scheduler<E> {
    pub fn new(start: Timestamp) -> Self {
        Scheduler {
            now: start,
            seq: 0,
            heap: BinaryHeap::new(),
            processed: 0,
        }
    }

    /// Virtual now: the time of the event being processed.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Events processed so far.
    pub fn processed(&self) -> u64 {
        self.processed
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Schedule `event` at `at` (an event in the past runs at `now`).
    pub fn at(&mut self, at: Timestamp, event: E) {
        let at = at.max(self.now);
        self.heap.push(Reverse(Entry {
            at,
            seq: self.seq,
            event,
        }));
        self.seq += 1;
    }

    /// The next event, advancing virtual time; `None` when nothing is left or the
    /// next event lies after `until`.
    pub fn next_until(&mut self, until: Timestamp) -> Option<(Timestamp, E)> {
        if self.heap.peek()?.0.at > until {
            return None;
        }
        let Reverse(e) = self.heap.pop()?;
        self.now = e.at;
        self.processed += 1;
        Some((e.at, e.event))
    }

    /// Time of the next event.
    pub fn peek_time(&self) -> Option<Timestamp> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }
}

/// Reports the share of a run done, from 0 to 1, at most once per percent.
#[derive(Debug)]
pub struct Progress {
    start: Timestamp,
    span: f64,
    reported: f64,
}

impl Progress {
    /// A run from `start` to `end`.
    pub fn new(start: Timestamp, end: Timestamp) -> Progress {
        Progress {
            start,
            span: end.0.saturating_sub(start.0).max(1) as f64,
            reported: 0.0,
        }
    }

    /// Virtual time reached `now`: tell `report` if a percent passed.
    pub fn at(&mut self, now: Timestamp, report: &mut impl FnMut(f64)) {
        let done = now.0.saturating_sub(self.start.0) as f64 / self.span;
        if done - self.reported >= 0.01 {
            self.reported = done;
            report(done);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_in_time_order_with_stable_ties() {
        let mut s = Scheduler::new(Timestamp(0));
        s.at(Timestamp(30), "c");
        s.at(Timestamp(10), "a");
        s.at(Timestamp(10), "b");
        s.at(Timestamp(20), "x");
        let mut out = vec![];
        while let Some((t, e)) = s.next_until(Timestamp(25)) {
            out.push((t.0, e));
            if e == "a" {
                // Scheduling in the past runs now, after what is already due now.
                s.at(Timestamp(5), "late");
            }
        }
        assert_eq!(out, vec![(10, "a"), (10, "b"), (10, "late"), (20, "x")]);
        assert_eq!(s.peek_time(), Some(Timestamp(30)));
        assert_eq!(s.processed(), 4);
    }
}
