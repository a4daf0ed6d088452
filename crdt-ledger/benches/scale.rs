//! A ledger of a million entries: how long it takes to write, its peak
//! memory, its size on disk before compaction (the log of one record per
//! entry) and after, and how long a node takes to load it.
//! `cargo bench -p crdt-ledger --bench scale` (`LEDGER_SCALE_N` entries,
//! 1,000,000 by default). Entries are transfers by 100 authors, final up to
//! the last of ten checkpoints.

// A benchmark measures wall-clock time; the logic it drives never reads a clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::time::Instant;

mod common;

use crdt_ledger::{Body, FileStore, Ledger, MemStore, Store};

const AUTHORS: usize = 100;
const EPOCHS: usize = 10;

/// The process's peak resident memory, from /proc (Linux).
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` asks which benches there are
    }
    let n: usize = std::env::var("LEDGER_SCALE_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let (ids, genesis) = common::network(AUTHORS, 4, 4);
    let by_account: std::collections::HashMap<_, _> =
        ids.iter().map(|i| (i.account(), i.clone())).collect();

    // Write: every entry appended (signed, checked, put, saved as one log
    // record), a checkpoint every n/10 entries signed by the whole committee.
    let (mut l, _) = Ledger::open(genesis.clone(), &[1; 16], MemStore::new()).unwrap();
    l.set_compact_threshold(u64::MAX); // the log as it grows, uncompacted
    let t = Instant::now();
    let per_epoch = n.div_ceil(EPOCHS);
    let mut epoch = 0u64;
    for i in 0..n {
        common::append_transfer(&mut l, &ids, i);
        if (i + 1) % per_epoch == 0 || i + 1 == n {
            epoch += 1;
            let committee = l.committee_for_checkpoint(epoch).unwrap();
            let p = l
                .propose_checkpoint(&by_account[&committee[0]], epoch, 0)
                .unwrap();
            let due = l.epoch_end(epoch);
            let members: Vec<_> = committee.iter().map(|m| &by_account[m]).collect();
            let fin = l.vote_all(&members, &p, due).unwrap().unwrap();
            l.append(&ids[0], Body::Checkpoint(Box::new(fin)), due)
                .unwrap();
        }
    }
    let wrote = t.elapsed();
    assert_eq!(l.finalized_epoch(), epoch);
    let entries = l.entry_count();
    let log_bytes = l.store().size();
    println!(
        "[scale] {entries} entries ({epoch} checkpoints) appended in {wrote:.2?}: {:.0}/s",
        n as f64 / wrote.as_secs_f64()
    );
    println!(
        "[scale] log before compaction: {log_bytes} bytes ({:.0} bytes/entry)",
        log_bytes as f64 / entries as f64
    );

    // Compact into a file store: what a node holds on disk after.
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let snap = l.snapshot().unwrap();
    let mut fs = FileStore::open(dir.path()).unwrap();
    fs.compact(&snap, &[]).unwrap();
    let disk = fs.size();
    println!(
        "[scale] on disk after compaction: {disk} bytes ({:.0} bytes/entry, {:.1} % of the log), written in {:.2?}",
        disk as f64 / entries as f64,
        100.0 * disk as f64 / log_bytes as f64,
        t.elapsed()
    );
    let state = l.state().clone();
    drop(l);
    drop(snap);

    // Load: open the compacted store as a restarted node does.
    let t = Instant::now();
    let (mut back, rep) =
        Ledger::open(genesis, &[2; 16], FileStore::open(dir.path()).unwrap()).unwrap();
    let load = t.elapsed();
    assert!(rep.from_snapshot);
    assert_eq!(back.state(), &state);
    println!("[scale] load from disk: {load:.2?}");
    if let Some(peak) = peak_rss_mib() {
        println!("[scale] peak resident memory of the whole run: {peak:.0} MiB");
    }
}
