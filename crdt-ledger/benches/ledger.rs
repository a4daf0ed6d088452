//! Ledger benchmarks: verify + apply, sync to a fresh replica, load from disk,
//! bytes per entry. `cargo bench -p crdt-ledger --bench ledger`.
//!
//! Sizes can be lowered with `LEDGER_BENCH_N` (default 100 000 entries).

// A benchmark measures wall-clock time; the logic it drives never reads a clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::Duration;

mod common;

use crdt_ledger::{Body, FileStore, GenesisEntry, Ledger, MemStore, Params, PeerState, Store};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use protocol::{Amount, Identity, Timestamp};

const AUTHORS: usize = 100;

fn n_entries() -> usize {
    std::env::var("LEDGER_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}

struct Fixture {
    genesis: GenesisEntry,
    source: Ledger,
}

fn fixture(n: usize) -> Fixture {
    let (ids, genesis) = common::network(AUTHORS, 10, Params::default().committee_size);
    let mut source = Ledger::new(genesis.clone(), &[1; 16]).unwrap();
    for i in 0..n {
        common::append_transfer(&mut source, &ids, i);
    }
    Fixture { genesis, source }
}

fn sync_into<S: Store, T: Store>(from: &mut Ledger<S>, to: &mut Ledger<T>) -> (usize, usize) {
    let mut pa = PeerState::new();
    let mut pb = PeerState::new();
    let (mut msgs, mut bytes) = (0, 0);
    loop {
        let m1 = from.generate_sync_message(&mut pa);
        if let Some(m) = &m1 {
            msgs += 1;
            bytes += m.len();
            to.receive_sync_message(&mut pb, m).unwrap();
        }
        let m2 = to.generate_sync_message(&mut pb);
        if let Some(m) = &m2 {
            msgs += 1;
            bytes += m.len();
            from.receive_sync_message(&mut pa, m).unwrap();
        }
        if m1.is_none() && m2.is_none() {
            return (msgs, bytes);
        }
    }
}

fn benches(c: &mut Criterion) {
    let n = n_entries();
    let t = std::time::Instant::now();
    let mut fx = fixture(n);
    eprintln!(
        "[ledger] built {n} entries by append (sign + check + automerge put + save) in {:.2?}: {:.0}/s",
        t.elapsed(),
        n as f64 / t.elapsed().as_secs_f64()
    );
    let snapshot = fx.source.snapshot().unwrap();
    let mut mem = MemStore::new();
    mem.compact(&snapshot, &[]).unwrap();

    // Verify + apply: open a replica on a saved document of n entries (decode,
    // batch-verify every signature, index, fold).
    let mut g = c.benchmark_group("ledger");
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(format!("open_verify_apply_{n}"), |b| {
        b.iter(|| {
            let (mut l, rep) = Ledger::open(fx.genesis.clone(), &[9; 16], mem.clone()).unwrap();
            assert_eq!(rep.entries, n);
            black_box(l.state().balances.len());
        })
    });

    // Sync of n entries into a fresh replica (validation included).
    g.bench_function(format!("sync_{n}_to_fresh"), |b| {
        b.iter(|| {
            let mut fresh = Ledger::new(fx.genesis.clone(), &[8; 16]).unwrap();
            sync_into(&mut fx.source, &mut fresh);
            assert_eq!(fresh.entry_count(), n);
            black_box(fresh.state().balances.len());
        })
    });

    // Load from disk: a compacted file store.
    let dir = tempfile::tempdir().unwrap();
    {
        let mut fs = FileStore::open(dir.path()).unwrap();
        fs.compact(&snapshot, &[]).unwrap();
        let size = fs.size();
        eprintln!(
            "[ledger] on disk (compacted snapshot): {size} bytes, {:.1} bytes/entry",
            size as f64 / n as f64
        );
    }
    g.bench_function(format!("load_{n}_from_disk"), |b| {
        b.iter(|| {
            let fs = FileStore::open(dir.path()).unwrap();
            let (mut l, rep) = Ledger::open(fx.genesis.clone(), &[7; 16], fs).unwrap();
            assert_eq!(rep.entries, n);
            black_box(l.state().balances.len());
        })
    });
    g.finish();

    // One-off figures.
    let mut fresh = Ledger::new(fx.genesis.clone(), &[6; 16]).unwrap();
    let t = std::time::Instant::now();
    let (msgs, bytes) = sync_into(&mut fx.source, &mut fresh);
    eprintln!(
        "[ledger] sync {n} entries to a fresh replica: {:.2?}, {msgs} messages, {bytes} bytes",
        t.elapsed()
    );
    let log_dir = tempfile::tempdir().unwrap();
    let m = 2_000.min(n);
    let small = fixture(m);
    let (mut l, _) = Ledger::open(
        small.genesis.clone(),
        &[5; 16],
        FileStore::open(log_dir.path()).unwrap(),
    )
    .unwrap();
    let mut src = small.source;
    sync_into(&mut src, &mut l);
    let ids: Vec<Identity> = (0..AUTHORS as u64).map(Identity::from_seed).collect();
    let before = l.store().size();
    let t = std::time::Instant::now();
    let k = 500;
    for i in 0..k {
        l.append(
            &ids[i % AUTHORS],
            Body::Transfer {
                to: ids[(i + 3) % AUTHORS].account(),
                amount: Amount(1),
            },
            Timestamp(0),
        )
        .unwrap();
    }
    let el = t.elapsed();
    let per = (l.store().size() - before) as f64 / k as f64;
    eprintln!(
        "[ledger] durable appends to the log (fsync each): {:.0}/s, {per:.0} bytes/entry in the log",
        k as f64 / el.as_secs_f64()
    );
}

criterion_group!(ledger, benches);
criterion_main!(ledger);
