//! A directory handle's listing: the directory's entries as they were when the listing was
//! read (at the first readdir, and again at each rewind), numbered by position.
//!
//! Positions are the offsets the kernel gives back to resume, and telldir/seekdir hand them to
//! the reader, so they must stay valid for the handle's life whatever happens to the
//! directory: an entry keeps its position while names are added and removed (POSIX leaves
//! unspecified only whether such names are seen). A snapshot of the listing is the simplest
//! thing that guarantees it. Held in memory it costs ~80 B a name (~800 MB per open handle of
//! a 10M-entry directory), so past [`IN_MEMORY`] entries the listing goes, [`BLOCK`] entries
//! at a time, to the filesystem's one [`Scratch`] file, and memory holds where each block is
//! plus one decoded block: bounded whatever the directory's size.
//!
//! One scratch file for all handles: a descriptor per handle would let a reader holding many
//! handles of big directories exhaust the daemon's descriptors. Blocks are appended under a
//! short lock (a build never holds it while it reads the directory), punched out when their
//! listing goes, and the file is cut to nothing when no listing holds a block. On a nearly full
//! device, or when a block cannot be written (ENOSPC), the listing stays in memory instead:
//! listing (and so deleting) a big directory must work when the disk is full.
//!
//! A scratch record is `ino u64 LE | kind u8 | name length u16 LE | name`; the file is unnamed
//! and vanishes with the process.

use crate::error::{FsError, Ino, Result};
use crate::meta::{DirEntry, Kind};
use parking_lot::Mutex;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Entries a listing keeps in memory; a larger directory's listing goes to the scratch file.
pub const IN_MEMORY: usize = 16 * 1024;
/// Entries per block of the scratch file (the unit written, read back and kept decoded).
const BLOCK: usize = 1024;
/// Free bytes the scratch file's device must keep for a listing to go there (a delete on a
/// nearly full device needs its room for metadata, not for listings).
const MIN_FREE: u64 = 256 << 20;

/// The scratch file that spilled listings share.
pub(super) struct Scratch {
    /// Where the file is made (the store directory, else the system's temporary one).
    dir: Option<PathBuf>,
    state: Mutex<ScratchState>,
    /// Test hook: appends fail with ENOSPC (a full device).
    #[cfg(test)]
    fail: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct ScratchState {
    file: Option<Arc<File>>,
    end: u64,
    /// Blocks that listings hold.
    live: usize,
}

impl Scratch {
    pub(super) fn new(dir: Option<PathBuf>) -> Scratch {
        Scratch {
            dir,
            state: Mutex::new(ScratchState::default()),
            #[cfg(test)]
            fail: Default::default(),
        }
    }

    /// An unnamed file in the store directory (where the volume's space is; /tmp may be
    /// memory), or in the system's temporary directory when that one cannot take it.
    fn open(&self) -> Result<File> {
        if let Some(Ok(f)) = self.dir.as_ref().map(tempfile::tempfile_in) {
            return Ok(f);
        }
        Ok(tempfile::tempfile()?)
    }

    /// Appends one block; returns the file and the block's place in it.
    fn append(&self, bytes: &[u8]) -> Result<(Arc<File>, (u64, u32))> {
        #[cfg(test)]
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC).into());
        }
        let mut st = self.state.lock();
        let file = match &st.file {
            Some(f) => f.clone(),
            None => {
                let f = Arc::new(self.open()?);
                st.file = Some(f.clone());
                f
            }
        };
        // Checked at every block (on the file's own device: it may be in the temporary
        // directory): a huge listing, or several at once, must not fill the device either.
        if crate::store::space_of(&file).is_ok_and(|s| s.avail_bytes < MIN_FREE) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC).into());
        }
        let at = st.end;
        file.write_all_at(bytes, at)?;
        st.end += bytes.len() as u64;
        st.live += 1;
        Ok((file, (at, bytes.len() as u32)))
    }

    /// Gives back the space of `blocks` (their listing is gone).
    fn release(&self, file: &File, blocks: &[(u64, u32)]) {
        // Under the lock throughout: once the file is cut to nothing, new blocks start at
        // offset 0 again, where a punch made late would hit them.
        let mut st = self.state.lock();
        st.live -= blocks.len();
        if st.live == 0 {
            let _ = file.set_len(0);
            st.end = 0;
            return;
        }
        use rustix::fs::FallocateFlags as F;
        for &(at, len) in blocks {
            // Best effort: without hole punching the space comes back when the last listing
            // holding a block goes.
            let _ = rustix::fs::fallocate(file, F::PUNCH_HOLE | F::KEEP_SIZE, at, len as u64);
        }
    }
}

pub(super) struct Listing {
    body: Body,
}

enum Body {
    Memory(Vec<DirEntry>),
    Spilled(Spilled),
}

struct Spilled {
    scratch: Arc<Scratch>,
    file: Arc<File>,
    /// Place of each block in the file.
    blocks: Vec<(u64, u32)>,
    len: usize,
    /// The block last read back: its number and entries.
    held: Option<(usize, Vec<DirEntry>)>,
}

impl Drop for Spilled {
    fn drop(&mut self) {
        self.scratch.release(&self.file, &self.blocks);
    }
}

impl Spilled {
    fn block(&self, b: usize) -> Result<Vec<DirEntry>> {
        let (at, len) = self.blocks[b];
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, at)?;
        decode(&buf)
    }
}

impl Listing {
    /// Number of entries.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        match &self.body {
            Body::Memory(v) => v.len(),
            Body::Spilled(s) => s.len,
        }
    }

    /// Entry at position `i` (0-based), if any.
    pub(super) fn get(&mut self, i: usize) -> Result<Option<DirEntry>> {
        let s = match &mut self.body {
            Body::Memory(v) => return Ok(v.get(i).cloned()),
            Body::Spilled(s) => s,
        };
        if i >= s.len {
            return Ok(None);
        }
        let b = i / BLOCK;
        if s.held.as_ref().is_none_or(|(n, _)| *n != b) {
            s.held = Some((b, s.block(b)?));
        }
        let (_, entries) = s.held.as_ref().expect("just read");
        entries
            .get(i % BLOCK)
            .cloned()
            .map(Some)
            .ok_or_else(|| FsError::Corrupt("short directory listing block".into()))
    }
}

fn encode(e: &DirEntry, out: &mut Vec<u8>) -> Result<()> {
    let n = u16::try_from(e.name.len())
        .map_err(|_| FsError::Corrupt("directory entry name too long".into()))?;
    out.extend_from_slice(&e.ino.to_le_bytes());
    out.push(e.kind.code());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&e.name);
    Ok(())
}

fn decode(mut p: &[u8]) -> Result<Vec<DirEntry>> {
    let mut out = Vec::with_capacity(BLOCK);
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
    scratch: Arc<Scratch>,
    /// Entries held in memory: all of them, or the block being filled once spilling.
    memory: Vec<DirEntry>,
    spilled: Option<Spilled>,
    /// The listing stays in memory (no room on the scratch device, or a block failed).
    in_memory: bool,
}

impl Builder {
    pub(super) fn new(scratch: Arc<Scratch>) -> Builder {
        Builder {
            scratch,
            memory: Vec::new(),
            spilled: None,
            in_memory: false,
        }
    }

    /// The "." and ".." entries that start every listing.
    pub(super) fn dots(&mut self, dir: Ino, parent: Ino) -> Result<()> {
        for (name, ino) in [(&b"."[..], dir), (&b".."[..], parent)] {
            self.push(DirEntry {
                name: name.to_vec(),
                ino,
                kind: Kind::Dir,
            })?;
        }
        Ok(())
    }

    pub(super) fn push(&mut self, e: DirEntry) -> Result<()> {
        self.memory.push(e);
        if self.in_memory {
            return Ok(());
        }
        if self.spilled.is_none() {
            if self.memory.len() <= IN_MEMORY {
                return Ok(());
            }
            // Everything so far goes out, block by block (back to memory if the first block
            // finds the device nearly full).
            let all = std::mem::take(&mut self.memory);
            for block in all.chunks(BLOCK) {
                self.memory.extend_from_slice(block);
                if !self.in_memory && self.memory.len() == BLOCK {
                    self.write_block()?;
                }
            }
            return Ok(());
        }
        if self.memory.len() == BLOCK {
            self.write_block()?;
        }
        Ok(())
    }

    /// Writes the full block in `memory` out; if it cannot be written, the whole listing goes
    /// back to memory.
    fn write_block(&mut self) -> Result<()> {
        let mut bytes = Vec::with_capacity(BLOCK * 32);
        for e in &self.memory {
            encode(e, &mut bytes)?;
        }
        let (file, place) = match self.scratch.append(&bytes) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(
                    "cannot write a directory listing to its scratch file ({e}): kept in memory"
                );
                return self.back_to_memory();
            }
        };
        let s = self.spilled.get_or_insert_with(|| Spilled {
            scratch: self.scratch.clone(),
            file,
            blocks: Vec::new(),
            len: 0,
            held: None,
        });
        s.blocks.push(place);
        s.len += self.memory.len();
        self.memory.clear();
        Ok(())
    }

    fn back_to_memory(&mut self) -> Result<()> {
        self.in_memory = true;
        let Some(s) = self.spilled.take() else {
            return Ok(());
        };
        let mut all = Vec::with_capacity(s.len + self.memory.len());
        for b in 0..s.blocks.len() {
            all.extend(s.block(b)?);
        }
        all.append(&mut self.memory);
        self.memory = all;
        Ok(())
    }

    pub(super) fn finish(mut self) -> Result<Listing> {
        if self.spilled.is_some() && !self.memory.is_empty() {
            self.write_block()?;
        }
        // (A last block that could not be written put the listing back in memory.)
        let body = match self.spilled.take() {
            Some(s) => Body::Spilled(s),
            None => Body::Memory(std::mem::take(&mut self.memory)),
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

    fn build(scratch: &Arc<Scratch>, n: usize) -> Listing {
        let mut b = Builder::new(scratch.clone());
        for i in 0..n {
            b.push(entry(i)).unwrap();
        }
        b.finish().unwrap()
    }

    fn check(l: &mut Listing, n: usize) {
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

    fn scratch_len(s: &Scratch) -> u64 {
        let st = s.state.lock();
        st.file.as_ref().map_or(0, |f| f.metadata().unwrap().len())
    }

    #[test]
    fn a_small_listing_stays_in_memory_and_a_large_one_is_spilled() {
        let s = Arc::new(Scratch::new(None));
        assert!(matches!(build(&s, IN_MEMORY).body, Body::Memory(_)));
        assert!(matches!(build(&s, IN_MEMORY + 1).body, Body::Spilled(_)));
    }

    #[test]
    fn every_position_reads_back_its_entry_in_any_order() {
        let s = Arc::new(Scratch::new(None));
        for n in [0, 5, IN_MEMORY, IN_MEMORY + 1, 3 * IN_MEMORY + BLOCK / 2] {
            check(&mut build(&s, n), n);
        }
    }

    #[test]
    fn listings_share_one_scratch_file_which_is_emptied_when_the_last_goes() {
        let s = Arc::new(Scratch::new(None));
        let n = IN_MEMORY + 3 * BLOCK + 7;
        let mut ls: Vec<Listing> = (0..5).map(|_| build(&s, n)).collect();
        let one = scratch_len(&s) / 5;
        assert!(one > 0);
        // Read in turns: each listing's blocks are its own.
        for l in ls.iter_mut() {
            check(l, n);
        }
        ls.truncate(1);
        assert_eq!(scratch_len(&s), 5 * one, "the file only shrinks when empty");
        check(&mut ls[0], n);
        ls.clear();
        assert_eq!(scratch_len(&s), 0);
        assert_eq!(s.state.lock().live, 0);
        // And it is used again from the start.
        check(&mut build(&s, n), n);
    }

    #[test]
    fn listings_built_read_and_dropped_concurrently_keep_their_own_entries() {
        let s = Arc::new(Scratch::new(None));
        let n = IN_MEMORY + 2 * BLOCK + 1;
        std::thread::scope(|t| {
            for _ in 0..4 {
                t.spawn(|| {
                    for _ in 0..12 {
                        let mut l = build(&s, n);
                        check(&mut l, n);
                    }
                });
            }
        });
        assert_eq!(s.state.lock().live, 0);
        assert_eq!(scratch_len(&s), 0);
    }

    #[test]
    fn a_listing_that_cannot_be_written_stays_in_memory_whole() {
        let s = Arc::new(Scratch::new(None));
        // From the start (a full device)...
        s.fail.store(true, std::sync::atomic::Ordering::Relaxed);
        let n = IN_MEMORY + 2 * BLOCK + 3;
        let mut l = build(&s, n);
        assert!(matches!(l.body, Body::Memory(_)));
        check(&mut l, n);
        // ...and after some blocks went out: those come back.
        s.fail.store(false, std::sync::atomic::Ordering::Relaxed);
        let mut b = Builder::new(s.clone());
        for i in 0..n {
            if i == IN_MEMORY + BLOCK + 10 {
                s.fail.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            b.push(entry(i)).unwrap();
        }
        let mut l = b.finish().unwrap();
        assert!(matches!(l.body, Body::Memory(_)));
        check(&mut l, n);
        assert_eq!(
            s.state.lock().live,
            0,
            "blocks written before the failure are given back"
        );
    }
}
