//! Persistence: where a ledger's document goes.
//!
//! A [`Store`] keeps an optional **snapshot** (a compacted save of everything up to
//! some point) and a **log** of records appended after it (automerge incremental
//! saves). [`Store::append`] returns only once the record is durable, so a write
//! acknowledged to the user survives a crash. [`Store::compact`] replaces snapshot
//! and log by a new snapshot and a new log atomically (the new log carries the
//! records a snapshot must not hold, such as the notes of what this replica
//! signed).
//!
//! [`FileStore`] on-disk layout, in a directory:
//! - `ledger.log`: the 8-byte header `CCLEDG01`, then records
//!   `len: u32 LE | check: 8 bytes | payload`, where `check` is the first 8 bytes of
//!   BLAKE3(`len` ‖ payload). Each append is written with one `write` and
//!   `fdatasync`'d. On open a last record that is incomplete or fails its check is
//!   a **torn tail** (a crash mid-append): it is cut off and reported. A bad record
//!   followed by more data is corruption and an error.
//! - `snapshot`: `CCSNAP01 | BLAKE3(payload) | payload`, written to `snapshot.tmp`,
//!   fsync'd and renamed over the old one; the new log is written to
//!   `ledger.log.tmp`, fsync'd and renamed over the old one after it; then the
//!   directory is fsync'd. A crash at any point leaves a loadable pair: the old
//!   one, the new one, or the new snapshot with the old log (whose records the
//!   snapshot already holds; loading them again changes nothing). No moment
//!   holds a log without the records the new log carries.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::StoreError;

const LOG_HEADER: &[u8; 8] = b"CCLEDG01";
const SNAP_HEADER: &[u8; 8] = b"CCSNAP01";
const RECORD_OVERHEAD: usize = 12;
/// Largest record accepted.
pub const MAX_RECORD: usize = 256 * 1024 * 1024;

/// A cut-off incomplete record found on open.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TornTail {
    /// Where the torn record started (the log now ends here).
    pub offset: u64,
    /// How many bytes were cut.
    pub dropped: u64,
}

/// What a store holds.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub snapshot: Option<Vec<u8>>,
    pub records: Vec<Vec<u8>>,
    pub torn_tail: Option<TornTail>,
}

/// Durable storage of a ledger.
pub trait Store: std::fmt::Debug {
    /// Append a record; returns once it is durable.
    fn append(&mut self, record: &[u8]) -> Result<(), StoreError>;
    /// Read everything back (cutting a torn tail, which is reported).
    fn load(&mut self) -> Result<Loaded, StoreError>;
    /// Atomically replace the snapshot by `snapshot` and the log by `log`.
    fn compact(&mut self, snapshot: &[u8], log: &[Vec<u8>]) -> Result<(), StoreError>;
    /// Bytes held (snapshot and log).
    fn size(&self) -> u64;
}

impl<S: Store + ?Sized> Store for Box<S> {
    fn append(&mut self, record: &[u8]) -> Result<(), StoreError> {
        (**self).append(record)
    }
    fn load(&mut self) -> Result<Loaded, StoreError> {
        (**self).load()
    }
    fn compact(&mut self, snapshot: &[u8], log: &[Vec<u8>]) -> Result<(), StoreError> {
        (**self).compact(snapshot, log)
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
}

/// A store in memory (for tests, the simulator, and peers that keep nothing).
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    snapshot: Option<Vec<u8>>,
    records: Vec<Vec<u8>>,
    /// `size()`, kept as records come (the ledger asks after every write).
    bytes: u64,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemStore {
    fn append(&mut self, record: &[u8]) -> Result<(), StoreError> {
        if record.len() > MAX_RECORD {
            return Err(StoreError::TooLarge(record.len()));
        }
        self.records.push(record.to_vec());
        self.bytes += (record.len() + RECORD_OVERHEAD) as u64;
        Ok(())
    }
    fn load(&mut self) -> Result<Loaded, StoreError> {
        Ok(Loaded {
            snapshot: self.snapshot.clone(),
            records: self.records.clone(),
            torn_tail: None,
        })
    }
    fn compact(&mut self, snapshot: &[u8], log: &[Vec<u8>]) -> Result<(), StoreError> {
        if let Some(r) = log.iter().find(|r| r.len() > MAX_RECORD) {
            return Err(StoreError::TooLarge(r.len()));
        }
        self.snapshot = Some(snapshot.to_vec());
        self.records = log.to_vec();
        let r: usize = self.records.iter().map(|r| r.len() + RECORD_OVERHEAD).sum();
        self.bytes = (snapshot.len() + r) as u64;
        Ok(())
    }
    fn size(&self) -> u64 {
        self.bytes
    }
}

/// A store in a directory: an append-only, checksummed, fsync'd log and a snapshot.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    log: File,
    log_len: u64,
    snap_len: u64,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn check(len: &[u8; 4], payload: &[u8]) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    h.update(len);
    h.update(payload);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    out
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl FileStore {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join("ledger.log");
        let mut log = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut log_len = log.metadata().map_err(io_err(&path))?.len();
        if log_len < LOG_HEADER.len() as u64 {
            // New, or a crash while the header was being written.
            let mut head = Vec::new();
            log.read_to_end(&mut head).map_err(io_err(&path))?;
            if !LOG_HEADER.starts_with(&head) {
                return Err(StoreError::BadHeader {
                    path: path.display().to_string(),
                });
            }
            log.set_len(0).map_err(io_err(&path))?;
            log.seek(SeekFrom::Start(0)).map_err(io_err(&path))?;
            log_len = 0;
        }
        if log_len == 0 {
            log.write_all(LOG_HEADER).map_err(io_err(&path))?;
            log.sync_all().map_err(io_err(&path))?;
            sync_dir(dir)?;
            log_len = LOG_HEADER.len() as u64;
        }
        let snap_len = std::fs::metadata(dir.join("snapshot")).map_or(0, |m| m.len());
        Ok(FileStore {
            dir: dir.to_path_buf(),
            log,
            log_len,
            snap_len,
        })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("ledger.log")
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log's length in bytes (header included).
    pub fn log_len(&self) -> u64 {
        self.log_len
    }
}

/// A record as the log holds it: length, check, payload.
fn frame(record: &[u8]) -> Vec<u8> {
    let len = (record.len() as u32).to_le_bytes();
    let mut buf = Vec::with_capacity(record.len() + RECORD_OVERHEAD);
    buf.extend_from_slice(&len);
    buf.extend_from_slice(&check(&len, record));
    buf.extend_from_slice(record);
    buf
}

impl Store for FileStore {
    fn append(&mut self, record: &[u8]) -> Result<(), StoreError> {
        if record.len() > MAX_RECORD {
            return Err(StoreError::TooLarge(record.len()));
        }
        let path = self.log_path();
        let buf = frame(record);
        let written = self
            .log
            .seek(SeekFrom::Start(self.log_len))
            .and_then(|_| self.log.write_all(&buf))
            .and_then(|()| self.log.sync_data());
        if let Err(e) = written {
            // Nothing of a refused record stays: the next append starts where
            // it did, and no garbage is left behind a shorter record.
            let _ = self.log.set_len(self.log_len);
            return Err(io_err(&path)(e));
        }
        self.log_len += buf.len() as u64;
        Ok(())
    }

    fn load(&mut self) -> Result<Loaded, StoreError> {
        let path = self.log_path();
        let p = path.display().to_string();
        let mut bytes = Vec::new();
        self.log.seek(SeekFrom::Start(0)).map_err(io_err(&path))?;
        self.log.read_to_end(&mut bytes).map_err(io_err(&path))?;
        if bytes.len() < LOG_HEADER.len() || &bytes[..LOG_HEADER.len()] != LOG_HEADER {
            return Err(StoreError::BadHeader { path: p });
        }
        let mut records = Vec::new();
        let mut at = LOG_HEADER.len();
        let mut torn_tail = None;
        while at < bytes.len() {
            let rest = &bytes[at..];
            let complete = rest.len() >= RECORD_OVERHEAD && {
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                rest.len() >= RECORD_OVERHEAD + len
            };
            let good = complete && {
                let lenb = [rest[0], rest[1], rest[2], rest[3]];
                let len = u32::from_le_bytes(lenb) as usize;
                let payload = &rest[RECORD_OVERHEAD..RECORD_OVERHEAD + len];
                rest[4..12] == check(&lenb, payload)
            };
            if good {
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                records.push(rest[RECORD_OVERHEAD..RECORD_OVERHEAD + len].to_vec());
                at += RECORD_OVERHEAD + len;
                continue;
            }
            let len = if rest.len() >= 4 {
                u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize
            } else {
                usize::MAX
            };
            // The last record when nothing but zeros follows where it claims
            // to end: a file may grow by zero-filled blocks whose data a crash
            // never wrote, and a zero length field reads as an empty record.
            let end = RECORD_OVERHEAD.saturating_add(len).min(rest.len());
            let zeros_after = rest[end..].iter().all(|&b| b == 0);
            let is_last = !complete || zeros_after || rest.iter().all(|&b| b == 0);
            if !is_last {
                return Err(StoreError::Corrupt {
                    path: p,
                    offset: at as u64,
                    reason: "checksum mismatch with records after it".into(),
                });
            }
            // A torn (or zero-filled) last record: a crash mid-append. It was never
            // acknowledged, so cutting it loses nothing that was.
            torn_tail = Some(TornTail {
                offset: at as u64,
                dropped: rest.len() as u64,
            });
            self.log.set_len(at as u64).map_err(io_err(&path))?;
            self.log.sync_all().map_err(io_err(&path))?;
            break;
        }
        self.log_len = at as u64;
        let snap_path = self.dir.join("snapshot");
        let snapshot = match std::fs::read(&snap_path) {
            Ok(s) => {
                if s.len() < 40 || &s[..8] != SNAP_HEADER {
                    return Err(StoreError::BadHeader {
                        path: snap_path.display().to_string(),
                    });
                }
                if blake3::hash(&s[40..]).as_bytes() != &s[8..40] {
                    return Err(StoreError::Corrupt {
                        path: snap_path.display().to_string(),
                        offset: 40,
                        reason: "snapshot checksum mismatch".into(),
                    });
                }
                Some(s[40..].to_vec())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&snap_path)(e)),
        };
        Ok(Loaded {
            snapshot,
            records,
            torn_tail,
        })
    }

    fn compact(&mut self, snapshot: &[u8], log: &[Vec<u8>]) -> Result<(), StoreError> {
        if let Some(r) = log.iter().find(|r| r.len() > MAX_RECORD) {
            return Err(StoreError::TooLarge(r.len()));
        }
        let tmp = self.dir.join("snapshot.tmp");
        let fin = self.dir.join("snapshot");
        {
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(SNAP_HEADER).map_err(io_err(&tmp))?;
            f.write_all(blake3::hash(snapshot).as_bytes())
                .map_err(io_err(&tmp))?;
            f.write_all(snapshot).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        let log_tmp = self.dir.join("ledger.log.tmp");
        let log_len;
        {
            let mut buf = LOG_HEADER.to_vec();
            for r in log {
                buf.extend_from_slice(&frame(r));
            }
            log_len = buf.len() as u64;
            let mut f = File::create(&log_tmp).map_err(io_err(&log_tmp))?;
            f.write_all(&buf).map_err(io_err(&log_tmp))?;
            f.sync_all().map_err(io_err(&log_tmp))?;
        }
        std::fs::rename(&tmp, &fin).map_err(io_err(&fin))?;
        // The snapshot holds everything the old log did: now it may go.
        let path = self.log_path();
        std::fs::rename(&log_tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        self.log = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.log_len = log_len;
        self.snap_len = (snapshot.len() + 40) as u64;
        Ok(())
    }

    fn size(&self) -> u64 {
        self.log_len + self.snap_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_half_written_header_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileStore::open(dir.path()).unwrap();
        s.append(b"one").unwrap();
        s.append(b"").unwrap();
        s.append(&[7u8; 1000]).unwrap();
        drop(s);
        let mut s = FileStore::open(dir.path()).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.records, vec![b"one".to_vec(), vec![], vec![7u8; 1000]]);
        assert!(l.torn_tail.is_none() && l.snapshot.is_none());
        s.compact(b"snap", &[b"kept".to_vec()]).unwrap();
        s.append(b"two").unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.snapshot.as_deref(), Some(&b"snap"[..]));
        assert_eq!(l.records, vec![b"kept".to_vec(), b"two".to_vec()]);
        drop(s);
        let mut s = FileStore::open(dir.path()).unwrap();
        assert_eq!(
            s.load().unwrap().records,
            vec![b"kept".to_vec(), b"two".to_vec()]
        );

        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("ledger.log"), &LOG_HEADER[..3]).unwrap();
        let mut s = FileStore::open(other.path()).unwrap();
        assert!(s.load().unwrap().records.is_empty());
        std::fs::write(other.path().join("ledger.log"), b"nope").unwrap();
        assert!(matches!(
            FileStore::open(other.path()),
            Err(StoreError::BadHeader { .. })
        ));
    }
}
