//! Signature checks run ahead, on a second core.
//!
//! The ledger checks every verdict of a settlement's certificate when it folds the
//! epoch's batch, and both signatures of a contract when its escrow is locked. In
//! a simulation those checks are the largest cost left besides signing. The
//! verdicts exist long before the fold (the oracle that completes the quorum
//! writes the settlement during the epoch, the fold comes at its checkpoint), and
//! the provider's contract signature a little before the lock. [`Prewarm`] hands
//! such checks to a helper thread, which runs them through
//! [`protocol::signed::SigCheck::run`]; the ledger's own check of the same bytes
//! then finds the pass remembered (see `protocol::signed::verify_bytes`).
//!
//! **Determinism is untouched.** The helper only fills a cache of pure results:
//! a check gives the same answer whether or not the helper got to it first, and
//! nothing the simulation decides reads the helper. If the helper is behind, a
//! check is simply done twice. This is the one thread simnet starts (see
//! `clippy.toml`); on a one-core machine it is not started at all.

use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use protocol::SigCheck;

/// Batches of checks waiting for the helper; when full, a batch is dropped (the
/// ledger checks it itself, as without a helper).
const QUEUE: usize = 1_024;

/// Checks gathered before a batch is handed over: each hand-over may wake the
/// helper (a system call), which cost more than batching loses.
const BATCH: usize = 64;

/// The helper thread and its queue; stops (and is joined) on drop.
#[derive(Debug)]
pub struct Prewarm {
    tx: Option<SyncSender<Vec<SigCheck>>>,
    worker: Option<JoinHandle<()>>,
    /// Checks not urgent enough to hand over alone.
    gathered: Vec<SigCheck>,
    dropped: u64,
}

impl Prewarm {
    /// Start the helper if this machine has a core to spare for it.
    pub fn start() -> Prewarm {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        if cores < 2 {
            return Prewarm::off();
        }
        let (tx, rx) = sync_channel::<Vec<SigCheck>>(QUEUE);
        // The thread owns nothing but the receiver; results go to the process-wide
        // cache of passes, and failures are left for the ledger to find and report.
        #[allow(clippy::disallowed_methods)]
        let worker = std::thread::Builder::new()
            .name("simnet-prewarm".into())
            .spawn(move || {
                while let Ok(batch) = rx.recv() {
                    for check in &batch {
                        let _ = check.run();
                    }
                }
            });
        match worker {
            Ok(w) => Prewarm {
                tx: Some(tx),
                worker: Some(w),
                gathered: Vec::new(),
                dropped: 0,
            },
            Err(_) => Prewarm::off(),
        }
    }

    /// No helper: every check is left to the ledger.
    pub fn off() -> Prewarm {
        Prewarm {
            tx: None,
            worker: None,
            gathered: Vec::new(),
            dropped: 0,
        }
    }

    /// Queue checks needed a while from now (by the end of the epoch): they go
    /// to the helper in batches.
    pub fn submit_later(&mut self, checks: Vec<SigCheck>) {
        if self.tx.is_none() {
            return;
        }
        self.gathered.extend(checks);
        if self.gathered.len() >= BATCH {
            self.flush();
        }
    }

    /// Hand what was gathered to the helper now (before the checks are needed).
    pub fn flush(&mut self) {
        let batch = std::mem::take(&mut self.gathered);
        self.submit(batch);
    }

    /// Queue checks needed soon for the helper now, without waiting.
    pub fn submit(&mut self, checks: Vec<SigCheck>) {
        let Some(tx) = &self.tx else {
            return;
        };
        if checks.is_empty() {
            return;
        }
        match tx.try_send(checks) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped += 1,
            Err(TrySendError::Disconnected(_)) => self.tx = None,
        }
    }

    /// Batches dropped because the helper was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl Drop for Prewarm {
    fn drop(&mut self) {
        self.tx = None; // the helper's `recv` fails once the queue is drained
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::messages::Probe;
    use protocol::{Identity, NetworkId, Signed, Timestamp};

    /// The helper's passes are the ledger's passes: a check it ran is found
    /// remembered, and a bad signature it saw still fails when checked again.
    #[test]
    fn the_helper_checks_and_stops() {
        let id = Identity::from_seed(77);
        let net = NetworkId([8; 32]);
        let mut good = Vec::new();
        for nonce in 0..32 {
            let body = Probe {
                oracle: id.account(),
                provider: id.account(),
                sent_at: Timestamp(nonce),
                nonce,
            };
            good.push(Signed::sign(&id, &net, &body).unwrap().sig_check(&net));
        }
        let mut bad = good[0].clone();
        bad.signature.0[0] ^= 1;
        let mut p = Prewarm::start();
        p.submit(good[..16].to_vec());
        p.submit_later(good[16..].to_vec());
        p.submit_later(vec![bad.clone()]);
        p.flush();
        drop(p); // joins: every queued check has run
        for c in &good {
            assert!(c.run().is_ok());
        }
        assert!(bad.run().is_err());
    }
}
