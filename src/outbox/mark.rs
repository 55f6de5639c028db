//! The high-water mark: a small side file (`outbox.hwm`) that says what the outbox held after its
//! latest commit, kept outside the database so that damage to the WAL or the main file cannot
//! take it along.
//!
//! After every commit the writer records {commit sequence, highest id handed out, live rows,
//! lowest live id, clean flag} into one of two 64-byte slots, alternately, each with a checksum:
//! one `pwrite`, no fsync. A kill -9 keeps it exact (the page cache survives the process); a
//! power cut may leave it a little older than the database (whose commits are fsynced), which can
//! only make a loss look smaller, never invent one. A write torn by a power cut leaves the other
//! slot valid. The clean close fsyncs it.
//!
//! At open, a database whose highest id is below the mark's has gone back in time: the rows the
//! mark counted in `[lowest, highest]` that the database no longer has are lost, and are
//! reported with their count.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"FBHW";
const VERSION: u32 = 1;
const SLOT: u64 = 64;
/// magic, version, then five u64/i64 fields, then the checksum.
const BODY: usize = 4 + 4 + 5 * 8;

/// What the outbox held after one commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub seq: u64,
    /// The highest id ever handed out.
    pub last_id: i64,
    /// Rows in the table after that commit.
    pub rows: i64,
    /// The lowest id still in the table (0 when empty).
    pub low_id: i64,
    /// Written by a clean close: the WAL was checkpointed into the main file.
    pub clean: bool,
}

/// FNV-1a, 64 bit: enough to tell a torn or foreign slot from a written one.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Mark {
    fn encode(&self) -> [u8; SLOT as usize] {
        let mut b = [0u8; SLOT as usize];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.last_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.rows.to_le_bytes());
        b[32..40].copy_from_slice(&self.low_id.to_le_bytes());
        b[40..48].copy_from_slice(&u64::from(self.clean).to_le_bytes());
        let sum = checksum(&b[..BODY]);
        b[BODY..BODY + 8].copy_from_slice(&sum.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Mark> {
        if b.len() < BODY + 8 || &b[0..4] != MAGIC {
            return None;
        }
        let u = |r: std::ops::Range<usize>| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(r)?.try_into().ok()?))
        };
        if u32::from_le_bytes(b[4..8].try_into().ok()?) != VERSION
            || u(BODY..BODY + 8)? != checksum(&b[..BODY])
        {
            return None;
        }
        Some(Mark {
            seq: u(8..16)?,
            last_id: u(16..24)? as i64,
            rows: u(24..32)? as i64,
            low_id: u(32..40)? as i64,
            clean: u(40..48)? != 0,
        })
    }
}

/// The newest valid slot of the file at `path`; `None` if there is no file or no valid slot.
pub fn read(path: &Path) -> io::Result<Option<Mark>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(bytes
        .chunks(SLOT as usize)
        .take(2)
        .filter_map(Mark::decode)
        .max_by_key(|m| m.seq))
}

/// The open side file; each `record` overwrites the older of the two slots.
#[derive(Debug)]
pub struct MarkFile {
    file: File,
    path: PathBuf,
}

impl MarkFile {
    pub fn open(path: &Path) -> io::Result<MarkFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(MarkFile {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn record(&self, mark: &Mark) -> io::Result<()> {
        self.file
            .write_all_at(&mark.encode(), (mark.seq % 2) * SLOT)
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_valid_slot_wins_and_a_torn_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.hwm");
        assert_eq!(read(&path).unwrap(), None);
        let f = MarkFile::open(&path).unwrap();
        let m = |seq| Mark {
            seq,
            last_id: 1000 + seq as i64,
            rows: 10,
            low_id: 991,
            clean: false,
        };
        f.record(&m(1)).unwrap();
        assert_eq!(read(&path).unwrap(), Some(m(1)));
        f.record(&m(2)).unwrap();
        f.record(&m(3)).unwrap();
        assert_eq!(read(&path).unwrap(), Some(m(3)));
        // tear slot 1 (seq 3): the other slot (seq 2) is used
        f.file.write_all_at(&[0xFF; 8], SLOT + 20).unwrap();
        assert_eq!(read(&path).unwrap(), Some(m(2)));
        std::fs::write(&path, [0u8; 5]).unwrap();
        assert_eq!(read(&path).unwrap(), None);
    }
}
