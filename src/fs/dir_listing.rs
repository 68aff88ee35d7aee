//! A directory handle's listing: the directory's entries as they were when the listing was
//! read (at the first readdir, and again at each rewind), numbered by position.
//!
//! Positions are the offsets the kernel gives back to resume, and telldir/seekdir hand them to
//! the reader, so they must stay valid for the handle's life whatever happens to the
//! directory: an entry keeps its position while names are added and removed (POSIX leaves
//! unspecified only whether such names are seen). A snapshot of the listing is the simplest
//! thing that guarantees it. Held in memory it costs ~80 B a name (~800 MB per open handle of
//! a 10M-entry directory), so past [`IN_MEMORY`] entries the listing goes to an unnamed
//! scratch file (it vanishes with the handle or a crash) and memory holds one file offset per
//! [`BLOCK`] entries and one decoded block: bounded whatever the directory's size.
//!
//! A scratch record is `ino u64 LE | kind u8 | name length u16 LE | name`.

use crate::error::{FsError, Result};
use crate::meta::{DirEntry, Kind};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// Entries a listing keeps in memory; a larger directory's listing goes to a scratch file.
pub const IN_MEMORY: usize = 16 * 1024;
/// Entries per block of a scratch file (the unit read back and kept decoded).
const BLOCK: usize = 1024;

pub(super) struct Listing {
    body: Body,
}

enum Body {
    Memory(Vec<DirEntry>),
    Spilled {
        file: File,
        /// File offset of entry `i * BLOCK`, for each block, then the file's length.
        starts: Vec<u64>,
        len: usize,
        /// The block last read back: its number and entries.
        held: Option<(usize, Vec<DirEntry>)>,
    },
}

impl Listing {
    /// Number of entries.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        match &self.body {
            Body::Memory(v) => v.len(),
            Body::Spilled { len, .. } => *len,
        }
    }

    /// Entry at position `i` (0-based), if any.
    pub(super) fn get(&mut self, i: usize) -> Result<Option<DirEntry>> {
        match &mut self.body {
            Body::Memory(v) => Ok(v.get(i).cloned()),
            Body::Spilled {
                file,
                starts,
                len,
                held,
            } => {
                if i >= *len {
                    return Ok(None);
                }
                let b = i / BLOCK;
                if held.as_ref().is_none_or(|(n, _)| *n != b) {
                    *held = Some((b, read_block(file, starts[b], starts[b + 1])?));
                }
                let (_, entries) = held.as_ref().expect("just read");
                entries
                    .get(i % BLOCK)
                    .cloned()
                    .map(Some)
                    .ok_or_else(|| FsError::Corrupt("short directory listing block".into()))
            }
        }
    }
}

/// Reads the records in `[from, to)` of a scratch file.
fn read_block(file: &File, from: u64, to: u64) -> Result<Vec<DirEntry>> {
    let mut buf = vec![0u8; (to - from) as usize];
    file.read_exact_at(&mut buf, from)?;
    let mut out = Vec::with_capacity(BLOCK);
    let mut p = &buf[..];
    while !p.is_empty() {
        let bad = || FsError::Corrupt("bad directory listing record".into());
        if p.len() < 11 {
            return Err(bad());
        }
        let ino = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
        let kind = Kind::from_code(p[8]).ok_or_else(bad)?;
        let n = u16::from_le_bytes([p[9], p[10]]) as usize;
        let name = p.get(11..11 + n).ok_or_else(bad)?.to_vec();
        out.push(DirEntry { name, ino, kind });
        p = &p[11 + n..];
    }
    Ok(out)
}

/// Builds a [`Listing`] from entries given in order.
pub(super) struct Builder {
    memory: Vec<DirEntry>,
    spill: Option<Spill>,
    /// Where a scratch file is made (the store directory, else the system's temporary one).
    scratch_dir: Option<PathBuf>,
}

struct Spill {
    out: BufWriter<File>,
    starts: Vec<u64>,
    pos: u64,
    len: usize,
}

impl Spill {
    fn push(&mut self, e: &DirEntry) -> Result<()> {
        if self.len.is_multiple_of(BLOCK) {
            self.starts.push(self.pos);
        }
        let n = u16::try_from(e.name.len())
            .map_err(|_| FsError::Corrupt("directory entry name too long".into()))?;
        self.out.write_all(&e.ino.to_le_bytes())?;
        self.out.write_all(&[e.kind.code()])?;
        self.out.write_all(&n.to_le_bytes())?;
        self.out.write_all(&e.name)?;
        self.pos += 11 + e.name.len() as u64;
        self.len += 1;
        Ok(())
    }
}

impl Builder {
    pub(super) fn new(scratch_dir: Option<PathBuf>) -> Builder {
        Builder {
            memory: Vec::new(),
            spill: None,
            scratch_dir,
        }
    }

    pub(super) fn push(&mut self, e: DirEntry) -> Result<()> {
        if let Some(s) = &mut self.spill {
            return s.push(&e);
        }
        if self.memory.len() < IN_MEMORY {
            self.memory.push(e);
            return Ok(());
        }
        let mut s = Spill {
            out: BufWriter::with_capacity(256 << 10, self.scratch_file()?),
            starts: Vec::new(),
            pos: 0,
            len: 0,
        };
        for m in std::mem::take(&mut self.memory) {
            s.push(&m)?;
        }
        s.push(&e)?;
        self.spill = Some(s);
        Ok(())
    }

    /// An unnamed file in the store directory (where the volume's space is; /tmp may be
    /// memory), or in the system's temporary directory when that one cannot take it (a
    /// read-only store directory).
    fn scratch_file(&self) -> Result<File> {
        if let Some(Ok(f)) = self.scratch_dir.as_ref().map(tempfile::tempfile_in) {
            return Ok(f);
        }
        Ok(tempfile::tempfile()?)
    }

    pub(super) fn finish(self) -> Result<Listing> {
        let body = match self.spill {
            None => Body::Memory(self.memory),
            Some(mut s) => {
                s.starts.push(s.pos);
                let file = s.out.into_inner().map_err(|e| e.into_error())?;
                Body::Spilled {
                    file,
                    starts: s.starts,
                    len: s.len,
                    held: None,
                }
            }
        };
        Ok(Listing { body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> DirEntry {
        DirEntry {
            // Names of every length up to 255 bytes, so records straddle buffer sizes.
            name: format!("{i:08}-{}", "x".repeat(i % 247)).into_bytes(),
            ino: i as u64 * 7 + 1,
            kind: if i.is_multiple_of(3) {
                Kind::Dir
            } else {
                Kind::File
            },
        }
    }

    fn build(n: usize) -> Listing {
        let mut b = Builder::new(None);
        for i in 0..n {
            b.push(entry(i)).unwrap();
        }
        b.finish().unwrap()
    }

    #[test]
    fn a_small_listing_stays_in_memory_and_a_large_one_is_spilled() {
        assert!(matches!(build(IN_MEMORY).body, Body::Memory(_)));
        assert!(matches!(build(IN_MEMORY + 1).body, Body::Spilled { .. }));
    }

    #[test]
    fn every_position_reads_back_its_entry_in_any_order() {
        for n in [0, 5, IN_MEMORY, IN_MEMORY + 1, 3 * IN_MEMORY + BLOCK / 2] {
            let mut l = build(n);
            assert_eq!(l.len(), n);
            for i in 0..n {
                assert_eq!(l.get(i).unwrap(), Some(entry(i)), "n {n} i {i}");
            }
            // Backwards and jumping across blocks (seekdir).
            for i in (0..n).rev().step_by(997) {
                assert_eq!(l.get(i).unwrap(), Some(entry(i)), "n {n} i {i}");
            }
            assert_eq!(l.get(n).unwrap(), None);
            assert_eq!(l.get(n + BLOCK).unwrap(), None);
        }
    }
}
