//! lseek(2) with SEEK_DATA and SEEK_HOLE.
//!
//! Answers come in 4 KiB blocks, as on ext4, xfs or tmpfs: a block that holds any data byte
//! is data, a hole is a run of blocks that hold none, and the end of the file ends the last
//! hole. Byte-exact answers would be just as legal, but tools and test suites size their
//! probes by what SEEK_DATA reports (fstests' seek_sanity_test takes a file with one byte at
//! offset 2 to mean 2-byte allocation units and then probes offsets a filesystem of blocks
//! never sees). Reporting a few zeros around data as data is always allowed; reporting a hole
//! over data never is.
//!
//! Data is a committed extent, a range being written back, or a dirty range in memory. The
//! walk over a run of data reads the extents table in batches, not one lookup per extent.

use super::Fs;
use crate::error::{FsError, Ino, Result};
use crate::meta::MetaRead;

/// The unit of SEEK_DATA / SEEK_HOLE answers (the st_blksize the daemon reports).
pub const SEEK_BLOCK: u64 = 4096;

/// Extents read at a time while following a run of data.
const BATCH: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeekWhence {
    Data,
    Hole,
}

fn nxio() -> FsError {
    FsError::Io(std::io::Error::from_raw_os_error(libc::ENXIO))
}

impl Fs {
    /// lseek(2) with SEEK_DATA or SEEK_HOLE, in [`SEEK_BLOCK`] units.
    pub fn seek(&self, ino: Ino, offset: u64, whence: SeekWhence) -> Result<u64> {
        if super::in_snapshot(ino) {
            let (s, i) = self.snap_of(ino)?;
            let r = s.begin_read()?;
            let size = r.inode(i)?.ok_or(FsError::NotFound)?.size;
            return DataMap::new(&r, i, size, Vec::new()).seek(offset, whence);
        }
        let st = self.state.lock();
        let tx = self.view(&st)?;
        let attr = self.attr_in(&st, &*tx, ino)?;
        let mut dirty = Vec::new();
        if let Some(o) = st.open.get(&ino) {
            if let Some(f) = &o.flushing {
                dirty.extend(f.iter().map(|(k, v)| (*k, k + v.len() as u64)));
            }
            dirty.extend(o.dirty.spans());
        }
        DataMap::new(&*tx, ino, attr.size, dirty).seek(offset, whence)
    }
}

/// Where a file's data is, byte by byte: committed extents plus in-memory spans.
struct DataMap<'a> {
    tx: &'a dyn MetaRead,
    ino: Ino,
    size: u64,
    /// `[start, end)` spans of data not committed yet, sorted by start (may overlap).
    dirty: Vec<(u64, u64)>,
}

impl<'a> DataMap<'a> {
    fn new(tx: &'a dyn MetaRead, ino: Ino, size: u64, mut dirty: Vec<(u64, u64)>) -> Self {
        dirty.sort_unstable();
        DataMap {
            tx,
            ino,
            size,
            dirty,
        }
    }

    fn seek(&self, offset: u64, whence: SeekWhence) -> Result<u64> {
        if offset >= self.size {
            return Err(nxio());
        }
        match whence {
            SeekWhence::Data => {
                let block = offset / SEEK_BLOCK * SEEK_BLOCK;
                let d = self.data_from(block)?.ok_or_else(nxio)?;
                if d < block + SEEK_BLOCK {
                    Ok(offset)
                } else {
                    Ok(d / SEEK_BLOCK * SEEK_BLOCK)
                }
            }
            SeekWhence::Hole => {
                let mut p = offset;
                while p < self.size {
                    let block = p / SEEK_BLOCK * SEEK_BLOCK;
                    match self.data_from(block)? {
                        Some(d) if d < block + SEEK_BLOCK => {
                            p = self.run_end(d)?.div_ceil(SEEK_BLOCK) * SEEK_BLOCK;
                        }
                        _ => return Ok(p),
                    }
                }
                Ok(self.size)
            }
        }
    }

    /// The end of the data that holds byte `p`, if any does (one extent or dirty span).
    fn covering(&self, p: u64) -> Result<Option<u64>> {
        if let Some(&(_, e)) = self.dirty.iter().find(|&&(s, e)| s <= p && p < e) {
            return Ok(Some(e));
        }
        Ok(self
            .tx
            .extents(self.ino, p, p + 1)?
            .first()
            .map(|e| e.end()))
    }

    /// The first data byte at or after `p` and before the end of the file.
    fn data_from(&self, p: u64) -> Result<Option<u64>> {
        if self.covering(p)?.is_some() {
            return Ok(Some(p));
        }
        let extent = self
            .tx
            .extents_from(self.ino, p, 1)?
            .first()
            .map(|e| e.offset);
        let dirty = self.dirty.iter().map(|&(s, _)| s).find(|&s| s >= p);
        let first = match (extent, dirty) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(first.filter(|&d| d < self.size))
    }

    /// The end of the run of data that holds byte `p` (`p` itself when none does).
    fn run_end(&self, mut p: u64) -> Result<u64> {
        while p < self.size {
            let Some(end) = self.covering(p)? else {
                break;
            };
            p = end;
            // Extents that follow without a gap, a batch at a time.
            'batches: loop {
                let batch = self.tx.extents_from(self.ino, p, BATCH)?;
                for e in &batch {
                    if e.offset != p {
                        break 'batches;
                    }
                    p = e.end();
                }
                if batch.len() < BATCH {
                    break;
                }
            }
        }
        Ok(p.min(self.size))
    }
}
