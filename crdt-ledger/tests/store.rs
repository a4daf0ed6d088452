//! Persistence: one test body for both stores, crash safety, tampering on disk,
//! snapshots for new peers.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use crdt_ledger::{
    FileStore, Ledger, LedgerError, MemStore, OpenReport, Store, StoreError, open_from_snapshot,
};
use protocol::Amount;

/// Write, reopen, compact, reopen, bootstrap a new peer from a snapshot.
fn store_body<S: Store>(mut reopen: impl FnMut(S) -> S, mut fresh: impl FnMut() -> S) {
    let net = Net::new(8, 4, 4);
    let (mut l, rep) = Ledger::open(net.genesis.clone(), &[1; 16], fresh()).unwrap();
    assert_eq!(rep.entries, 0);
    for i in 0..12 {
        let from = 4 + i % 4;
        l.append(
            &net.ids[from],
            transfer(net.acct((from + 1) % 8), 1 + i as u64),
            T0,
        )
        .unwrap();
    }
    finalize(&net, &mut l, 1, 0);
    l.append(&net.ids[6], transfer(net.acct(0), 7), T0).unwrap();
    let state = l.state().clone();
    let count = l.entry_count();

    // Reopen: everything acknowledged is there, re-verified, same state.
    let store = reopen(l.into_store());
    let (mut l, rep) = Ledger::open(net.genesis.clone(), &[1; 16], store).unwrap();
    assert_eq!(rep.entries, count);
    assert!(rep.torn_tail.is_none() && rep.rejected.is_empty());
    assert_eq!(l.state(), &state);
    assert_eq!(l.finalized_epoch(), 1);

    // Compact: a snapshot replaces the log; reopening starts from it.
    let before = l.store().size();
    l.compact().unwrap();
    assert!(
        l.store().size() < before,
        "{} -> {}",
        before,
        l.store().size()
    );
    let store = reopen(l.into_store());
    let (mut l, rep) = Ledger::open(net.genesis.clone(), &[1; 16], store).unwrap();
    assert!(rep.from_snapshot);
    assert!(rep.entries < count, "finalized entries are not re-verified");
    assert_eq!(l.state(), &state);
    // The chain goes on after a reopen.
    l.append(&net.ids[6], transfer(net.acct(1), 1), T0).unwrap();
    let state = l.state().clone();
    let store = reopen(l.into_store());
    let (mut l, _) = Ledger::open(net.genesis.clone(), &[1; 16], store).unwrap();
    assert_eq!(l.state(), &state);

    // A new peer starts from the snapshot, then syncs the rest.
    let snap = l.snapshot().unwrap();
    let (mut newbie, rep) =
        open_from_snapshot(net.genesis.clone(), &[2; 16], fresh(), &snap).unwrap();
    assert!(rep.from_snapshot);
    assert_eq!(newbie.finalized_epoch(), 1);
    assert_eq!(newbie.state(), &state);
    l.append(&net.ids[5], transfer(net.acct(2), 2), T0).unwrap();
    sync(&mut l, &mut newbie);
    assert_eq!(newbie.state(), l.state());
    // A fresh replica that syncs everything (automerge sends the whole document)
    // stores it and reopens to the same state.
    let (mut copy, _) = Ledger::open(net.genesis.clone(), &[4; 16], fresh()).unwrap();
    sync(&mut l, &mut copy);
    assert_eq!(copy.state(), l.state());
    let store = reopen(copy.into_store());
    let (mut copy, rep) = Ledger::open(net.genesis.clone(), &[4; 16], store).unwrap();
    assert!(rep.rejected.is_empty() && rep.torn_tail.is_none());
    assert_eq!(copy.state(), l.state());
    copy.append(&net.ids[7], transfer(net.acct(1), 1), T0)
        .unwrap();
    sync(&mut l, &mut copy);
    assert_eq!(copy.state(), l.state());
    // A snapshot whose state was tampered with is refused.
    let mut bad = snap.clone();
    let meta_len = u64::from_le_bytes(bad[..8].try_into().unwrap()) as usize;
    bad[8 + meta_len / 2] ^= 0x10;
    assert!(open_from_snapshot(net.genesis.clone(), &[3; 16], fresh(), &bad).is_err());
    conserved(&mut newbie);
}

#[test]
fn memory_store() {
    store_body(|s: MemStore| s, MemStore::new);
}

#[test]
fn boxed_store() {
    store_body(
        |s: Box<dyn Store>| s,
        || Box::new(MemStore::new()) as Box<dyn Store>,
    );
}

#[test]
fn file_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    let base = dir.path().to_path_buf();
    store_body(
        |s: FileStore| {
            let d = s.dir().to_path_buf();
            drop(s);
            FileStore::open(&d).unwrap()
        },
        || {
            n += 1;
            FileStore::open(&base.join(format!("peer{n}"))).unwrap()
        },
    );
}

/// Replica 1 of `net`, on the file store in `dir`.
fn open_file_ledger(
    net: &Net,
    dir: &std::path::Path,
) -> Result<(Ledger<FileStore>, OpenReport), LedgerError> {
    Ledger::open(net.genesis.clone(), &[1; 16], FileStore::open(dir).unwrap())
}

/// A file ledger in a fresh directory holding four acknowledged transfers:
/// the network, the directory, its log's path and the open replica.
fn four_transfers() -> (
    Net,
    tempfile::TempDir,
    std::path::PathBuf,
    Ledger<FileStore>,
) {
    let net = Net::new(6, 4, 4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.log");
    let (mut l, _) = open_file_ledger(&net, dir.path()).unwrap();
    for i in 0..4u64 {
        l.append(&net.ids[4], transfer(net.acct(5), 1 + i), T0)
            .unwrap();
    }
    (net, dir, path, l)
}

#[test]
fn torn_tail_at_every_offset_of_the_last_record_loses_nothing_acknowledged() {
    let (net, dir, path, mut l) = four_transfers();
    let start_last = l.store().log_len();
    l.append(&net.ids[4], transfer(net.acct(5), 100), T0)
        .unwrap();
    let full = std::fs::read(&path).unwrap();
    assert_eq!(full.len() as u64, l.store().log_len());
    let with_last = l.state().clone();
    drop(l);
    let mut without_last = None;
    for cut in start_last..=full.len() as u64 {
        std::fs::write(&path, &full[..cut as usize]).unwrap();
        let (mut l, rep) = open_file_ledger(&net, dir.path()).unwrap();
        if cut == full.len() as u64 {
            assert!(rep.torn_tail.is_none());
            assert_eq!(l.entry_count(), 5);
            assert_eq!(l.state(), &with_last);
        } else {
            assert_eq!(l.entry_count(), 4, "cut at {cut}");
            if cut > start_last {
                let t = rep.torn_tail.expect("torn tail reported");
                assert_eq!(t.offset, start_last);
                assert_eq!(t.dropped, cut - start_last);
            } else {
                assert!(rep.torn_tail.is_none());
            }
            // The cut log is valid again: appending continues the chain.
            assert_eq!(std::fs::metadata(&path).unwrap().len(), start_last);
            let st = l.state().clone();
            match &without_last {
                None => without_last = Some(st),
                Some(w) => assert_eq!(&st, w),
            }
            assert_eq!(l.balance(&net.acct(4)), Amount::tokens(990));
        }
    }
}

/// A crash can leave the log longer than what was written, the rest zeros (the
/// file's length reached the disk, its last block did not). Whether the last
/// record is all zeros or half written and then zeros, it is cut as torn and
/// every acknowledged record stays.
#[test]
fn a_zero_filled_tail_is_cut_as_torn() {
    let (net, dir, path, mut l) = four_transfers();
    let start_last = l.store().log_len() as usize;
    l.append(&net.ids[4], transfer(net.acct(5), 100), T0)
        .unwrap();
    let full = std::fs::read(&path).unwrap();
    drop(l);
    // (Not the whole record but its last byte: that byte may be a zero, and
    // then the record is whole.)
    for written in [0, 2, 4, 11, 12, 30, (full.len() - start_last) / 2] {
        let mut bytes = full[..start_last + written].to_vec();
        bytes.resize(full.len() + 4096, 0);
        std::fs::write(&path, &bytes).unwrap();
        let (mut l, rep) = open_file_ledger(&net, dir.path())
            .unwrap_or_else(|e| panic!("{written} bytes written, then zeros: {e}"));
        assert_eq!(l.entry_count(), 4, "{written} bytes written");
        let t = rep.torn_tail.expect("torn tail reported");
        assert_eq!(t.offset, start_last as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), start_last as u64);
        assert_eq!(l.balance(&net.acct(4)), Amount::tokens(990));
    }
}

#[test]
fn a_flipped_bit_in_a_stored_record_is_detected() {
    let net = Net::new(6, 4, 4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.log");
    let (mut l, _) = open_file_ledger(&net, dir.path()).unwrap();
    l.append(&net.ids[4], transfer(net.acct(5), 1), T0).unwrap();
    let end_first = l.store().log_len();
    l.append(&net.ids[4], transfer(net.acct(5), 2), T0).unwrap();
    drop(l);
    let full = std::fs::read(&path).unwrap();
    // every bit of the first record (header of the log excluded)
    for bit in (8 * 8)..(end_first as usize * 8) {
        let mut b = full.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(&path, &b).unwrap();
        let r = open_file_ledger(&net, dir.path());
        match r {
            Err(LedgerError::Store(StoreError::Corrupt { .. })) => {}
            // A flip in the length field can make the record run to the end of
            // the file: then it is cut as torn, and nothing after it is trusted.
            Ok((l, rep)) => {
                assert!(rep.torn_tail.is_some(), "bit {bit}");
                assert_eq!(l.entry_count(), 0, "bit {bit}");
            }
            Err(e) => panic!("bit {bit}: {e}"),
        }
    }
}

/// A store that keeps a copy of itself as it stands when a compaction
/// returns: what a crash right after it would leave on disk.
#[derive(Debug)]
struct CrashAtCompact {
    inner: MemStore,
    at_compact: std::sync::Arc<std::sync::Mutex<Option<MemStore>>>,
}

impl Store for CrashAtCompact {
    fn append(&mut self, record: &[u8]) -> Result<(), StoreError> {
        self.inner.append(record)
    }
    fn load(&mut self) -> Result<crdt_ledger::Loaded, StoreError> {
        self.inner.load()
    }
    fn compact(&mut self, snapshot: &[u8], log: &[Vec<u8>]) -> Result<(), StoreError> {
        self.inner.compact(snapshot, log)?;
        *self.at_compact.lock().unwrap() = Some(self.inner.clone());
        Ok(())
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
}

#[test]
fn a_restarted_member_does_not_sign_a_second_checkpoint() {
    let net = Net::new(6, 4, 4);
    let (mut l, _) = Ledger::open(net.genesis.clone(), &[1; 16], MemStore::new()).unwrap();
    let committee = l.committee_for_checkpoint(1).unwrap();
    let p1 = l
        .propose_checkpoint(net.id_of(&committee[0]), 1, 0)
        .unwrap();
    let due = l.epoch_end(1);
    assert!(l.vote(net.id_of(&committee[1]), &p1, due).unwrap().prevoted);
    // Compaction keeps the note too, in the same atomic step: the store as
    // it is the moment compaction returns (a crash right then) holds it.
    let at_compact = std::sync::Arc::new(std::sync::Mutex::new(None));
    let store = CrashAtCompact {
        inner: l.into_store(),
        at_compact: at_compact.clone(),
    };
    let (mut l, _) = Ledger::open(net.genesis.clone(), &[1; 16], store).unwrap();
    l.compact().unwrap();
    drop(l);
    let crashed = at_compact.lock().unwrap().take().unwrap();
    let (mut l, _) = Ledger::open(net.genesis.clone(), &[1; 16], crashed).unwrap();
    let mut other = net.ledger(2);
    other
        .append(&net.ids[4], transfer(net.acct(5), 1), T0)
        .unwrap();
    let p2 = other
        .propose_checkpoint(net.id_of(&committee[0]), 1, 0)
        .unwrap();
    sync(&mut l, &mut other);
    let v = l.vote(net.id_of(&committee[1]), &p2, due).unwrap();
    assert!(!v.prevoted);
    let err = v.refused.unwrap();
    assert!(
        matches!(err, LedgerError::AlreadySigned { epoch: 1, .. }),
        "{err}"
    );
    // The same proposal again is fine (idempotent).
    let v = l.vote(net.id_of(&committee[1]), &p1, due).unwrap();
    assert!(!v.prevoted && v.refused.is_none(), "{:?}", v.refused);
}

#[test]
fn a_ledger_can_move_between_threads() {
    fn send<T: Send>() {}
    send::<Ledger<FileStore>>();
    send::<Ledger<MemStore>>();
    send::<crdt_ledger::PeerState>();
}

/// A store whose appends fail while `full` is set (a disk that filled up).
#[derive(Debug, Default)]
struct FullDisk {
    inner: MemStore,
    full: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Store for FullDisk {
    fn append(&mut self, record: &[u8]) -> Result<(), StoreError> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Io {
                path: "ledger.log".into(),
                source: std::io::Error::other("No space left on device"),
            });
        }
        self.inner.append(record)
    }
    fn load(&mut self) -> Result<crdt_ledger::Loaded, StoreError> {
        self.inner.load()
    }
    fn compact(&mut self, snapshot: &[u8], log: &[Vec<u8>]) -> Result<(), StoreError> {
        self.inner.compact(snapshot, log)
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
}

/// A write the store refused leaves no trace: it never reaches a peer, the
/// balance is charged once when the user retries, and the author's next
/// write takes the same seq (no `KeyTaken` for ever after).
#[test]
fn a_write_the_store_refused_leaves_no_trace() {
    let net = Net::new(8, 4, 4);
    let full = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = FullDisk {
        inner: MemStore::new(),
        full: full.clone(),
    };
    let (mut l, _) = Ledger::open(net.genesis.clone(), &[1; 16], store).unwrap();
    let (a, b) = (4, net.acct(5));
    l.append(&net.ids[a], transfer(b, 300), T0).unwrap();
    full.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = l.append(&net.ids[a], transfer(b, 200), T0).unwrap_err();
    assert!(matches!(err, LedgerError::Store(_)), "{err}");
    assert_eq!(l.recoveries(), 1);
    assert_eq!(l.entry_count(), 1);
    assert_eq!(l.balance(&net.acct(a)), Amount::tokens(700));
    // A peer syncing now gets the one acknowledged entry only.
    let mut peer = net.ledger(2);
    sync(&mut peer, &mut l);
    assert_eq!(peer.entry_count(), 1);
    // The disk has room again: the retry is the author's seq 1, paid once.
    full.store(false, std::sync::atomic::Ordering::SeqCst);
    let id = l.append(&net.ids[a], transfer(b, 200), T0).unwrap();
    assert_eq!(id.seq, 1);
    assert_eq!(l.balance(&net.acct(a)), Amount::tokens(500));
    sync(&mut peer, &mut l);
    assert_eq!(peer.balance(&net.acct(a)), Amount::tokens(500));
    // And a restart finds exactly the two.
    let store = l.into_store();
    let (mut again, _) = Ledger::open(net.genesis.clone(), &[1; 16], store).unwrap();
    assert_eq!(again.entry_count(), 2);
    assert_eq!(again.balance(&net.acct(a)), Amount::tokens(500));
    conserved(&mut again);
}

/// `lying-snapshot`: a snapshot whose frontier is not the one its checkpoints
/// name is refused. The frontier says which entries the final state holds; a
/// peer that moved an author's frontier back (so that a spent entry looks
/// pending, to be applied again) or forward (to hide one) lies without touching
/// the state root.
/// A snapshot after two epochs (six transfers by one author, one by
/// another): its metadata, a function that puts (changed) metadata back in
/// front of its document, and the first entry written.
fn two_epoch_snapshot(
    net: &Net,
) -> (
    crdt_ledger::SnapshotMeta,
    impl Fn(&crdt_ledger::SnapshotMeta) -> Vec<u8>,
    crdt_ledger::EntryId,
) {
    use protocol::codec;
    let mut l = net.ledger(1);
    let first = l.append(&net.ids[4], transfer(net.acct(5), 1), T0).unwrap();
    for i in 1..6u64 {
        l.append(&net.ids[4], transfer(net.acct(5), 1 + i), T0)
            .unwrap();
    }
    finalize(net, &mut l, 1, 0);
    l.append(&net.ids[5], transfer(net.acct(6), 1), T0).unwrap();
    finalize(net, &mut l, 2, 0);
    let snap = l.snapshot().unwrap();
    let meta_len = u64::from_le_bytes(snap[..8].try_into().unwrap()) as usize;
    let meta = codec::decode(&snap[8..8 + meta_len]).unwrap();
    let rebuild = move |m: &crdt_ledger::SnapshotMeta| {
        let b = codec::encode(m).unwrap();
        let mut out = (b.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&b);
        out.extend_from_slice(&snap[8 + meta_len..]);
        out
    };
    (meta, rebuild, first)
}

#[test]
fn a_snapshot_whose_frontier_lies_is_refused() {
    use crdt_ledger::FrontierItem;
    let net = Net::new(8, 4, 4);
    let (meta, rebuild, first) = two_epoch_snapshot(&net);
    assert!(
        meta.frontier.len() >= 2,
        "two authors wrote (and checkpoints were published)"
    );
    // The honest snapshot, re-encoded, is accepted.
    assert!(
        open_from_snapshot(
            net.genesis.clone(),
            &[2; 16],
            MemStore::new(),
            &rebuild(&meta)
        )
        .is_ok()
    );
    let at = meta
        .frontier
        .iter()
        .position(|f| f.author == first.author)
        .unwrap();
    assert!(meta.frontier[at].seq >= 5);
    let first = first.hash;
    type Lie = Box<dyn Fn(&mut Vec<FrontierItem>)>;
    let lies: [(&str, Lie); 3] = [
        (
            "moved back",
            Box::new(move |f: &mut Vec<FrontierItem>| {
                f[at].seq = 0;
                f[at].hash = first;
            }),
        ),
        (
            "dropped an author",
            Box::new(|f: &mut Vec<FrontierItem>| {
                f.remove(1);
            }),
        ),
        (
            "added an author",
            Box::new(|f: &mut Vec<FrontierItem>| {
                let mut extra = f[0];
                extra.author = protocol::AccountId([0xee; 32]);
                f.push(extra);
            }),
        ),
    ];
    for (what, lie) in lies {
        let mut m = meta.clone();
        lie(&mut m.frontier);
        match open_from_snapshot(net.genesis.clone(), &[2; 16], MemStore::new(), &rebuild(&m)) {
            Err(LedgerError::Snapshot(e)) => assert!(e.contains("frontier"), "{what}: {e}"),
            other => panic!(
                "{what}: a lying frontier was accepted: {:?}",
                other.map(|_| ())
            ),
        }
    }
}

/// The lying-snapshot scenario on 100 seeds: each seed tells one random lie
/// (a balance, a stake, a frontier entry moved or replaced, a checkpoint
/// dropped from the chain, a certificate cut below its quorum, the epoch), and
/// every lie is refused.
#[test]
fn a_hundred_random_lies_in_a_snapshot_are_refused() {
    let net = Net::new(8, 4, 4);
    let (meta, rebuild, _) = two_epoch_snapshot(&net);
    let mut kinds = [0usize; 7];
    for seed in 0..100u64 {
        let r = blake3::hash(&seed.to_le_bytes());
        let r = r.as_bytes();
        let pick = |i: usize, n: usize| usize::from(r[i]) % n.max(1);
        let mut m = meta.clone();
        let kind = pick(0, 7);
        kinds[kind] += 1;
        match kind {
            0 => {
                let (a, x) = m.state.balances.iter_mut().nth(pick(1, 8)).unwrap();
                let _ = a;
                x.0 += 1 + u64::from(r[2]);
            }
            1 => {
                let x = m.state.stakes.values_mut().nth(pick(1, 4)).unwrap();
                x.0 += 1 + u64::from(r[2]);
            }
            2 => {
                let n = m.frontier.len();
                m.frontier[pick(1, n)].seq += 1 + u64::from(r[2] % 3);
            }
            3 => {
                let n = m.frontier.len();
                m.frontier[pick(1, n)].hash = protocol::Hash32(*blake3::hash(&r[..]).as_bytes());
            }
            4 => {
                let n = m.chain.len();
                m.chain.remove(pick(1, n));
            }
            5 => {
                let n = m.chain.len();
                let c = &mut m.chain[pick(1, n)];
                c.signatures.truncate(protocol::quorum(4) - 1);
            }
            _ => m.state.epoch += 1 + u64::from(r[2] % 3),
        }
        let opened =
            open_from_snapshot(net.genesis.clone(), &[2; 16], MemStore::new(), &rebuild(&m));
        assert!(opened.is_err(), "seed {seed}: lie {kind} accepted");
    }
    assert!(
        kinds.iter().all(|k| *k > 0),
        "every kind of lie told: {kinds:?}"
    );
}

/// A replica compacts on its own once its store has grown past the floor and
/// doubled since the last compaction; what it holds survives a reopen.
#[test]
fn a_growing_store_is_compacted_on_its_own() {
    let net = Net::new(8, 4, 4);
    let dir = tempfile::tempdir().unwrap();
    let (mut l, _) = Ledger::open(
        net.genesis.clone(),
        &[1; 16],
        FileStore::open(dir.path()).unwrap(),
    )
    .unwrap();
    l.set_compact_threshold(16 << 10);
    for i in 0..400u64 {
        let from = 4 + (i % 4) as usize;
        l.append(&net.ids[from], transfer(net.acct((from + 1) % 8), 1), T0)
            .unwrap();
        if i % 100 == 99 {
            finalize(&net, &mut l, 1 + i / 100, 0);
        }
    }
    assert!(l.compactions() >= 2, "{} compactions", l.compactions());
    let state = l.state().clone();
    let count = l.entry_count();
    drop(l);
    let (mut l, rep) = Ledger::open(
        net.genesis.clone(),
        &[1; 16],
        FileStore::open(dir.path()).unwrap(),
    )
    .unwrap();
    assert!(rep.from_snapshot && rep.rejected.is_empty());
    assert_eq!(l.state(), &state);
    assert_eq!(l.finalized_epoch(), 4);
    assert!(l.entry_count() <= count);
    conserved(&mut l);
}
