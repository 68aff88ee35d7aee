//! A directory handle's listing: the directory's entries as they were when the listing was
//! read (at the first readdir, and again at each rewind), in the order of their offset
//! cookies.
//!
//! Offsets are what the kernel gives back to resume, what telldir/seekdir hand to the reader,
//! and, with the kernel's listing cache (`FOPEN_CACHE_DIR`), what it resumes from on a later
//! handle after the cached listing went stale. So an entry's offset must mean the same in
//! every listing of its directory, not a position in one handle's copy: it is a cookie made
//! from the entry's name, as ext4's hash-ordered directories do. A listing is sorted by cookie,
//! and a readdir from offset `c` returns the entries whose cookie is above `c`: every name that
//! stays in the directory meanwhile is returned exactly once, whichever listing serves each
//! part (POSIX leaves unspecified only whether names added or removed meanwhile are seen).
//!
//! ```text
//! cookie = blake3(name)[0..8] as u64 LE >> 8   (56 bits; at least 1)
//!            << 7 | rank                         (rank: 0.. among the names of one directory
//!                                                 whose 56 bits are equal, in name order)
//! "." = 1, ".." = 2                               (every other cookie is >= 128 and < 2^63)
//! ```
//!
//! Names share their 56 bits with probability ~n/2^56 per name in a directory of n; the rank
//! tells them apart within one listing. It is stable across listings as long as the names
//! sharing those bits stay the same: a name of such a group added or removed between two
//! listings of one reader could make the reader skip or repeat a name of that group (at most
//! 128 names share a cookie's rank; the 129th and later would all carry rank 127).
//!
//! Held in memory a listing costs ~90 B a name (~900 MB per open handle of a 10M-entry
//! directory), so past [`IN_MEMORY`] entries it is sorted outside memory: runs of
//! `IN_MEMORY + 1` entries are sorted and written to the filesystem's one [`Scratch`] file,
//! then merged into blocks of [`BLOCK`] entries; memory holds each block's place and first
//! cookie plus one decoded block: bounded whatever the directory's size (the merge holds one
//! small block per run, ~3 KiB each: ~2 MiB for 10M entries).
//!
//! One scratch file for all handles: a descriptor per handle would let a reader holding many
//! handles of big directories exhaust the daemon's descriptors. Blocks are appended under a
//! short lock (a build never holds it while it reads the directory), punched out when their
//! listing goes, and the file is cut to nothing when no listing holds a block. On a nearly full
//! device, or when a block cannot be written (ENOSPC), the listing stays in memory instead:
//! listing (and so deleting) a big directory must work when the disk is full.
//!
//! A scratch record is `cookie u64 LE | ino u64 LE | kind u8 | name length u16 LE | name`;
//! the file is unnamed and vanishes with the process.

use crate::error::{FsError, Ino, Result};
use crate::meta::{DirEntry, Kind};
use parking_lot::Mutex;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Entries a listing keeps in memory; a larger directory's listing goes to the scratch file.
pub const IN_MEMORY: usize = 16 * 1024;
/// Entries per block of a sorted listing in the scratch file (the unit written, read back
/// and kept decoded).
const BLOCK: usize = 1024;
/// Entries per block of a sorted run before the merge (the merge holds one block per run).
const RUN_BLOCK: usize = 32;
/// Bits of a cookie that hold the rank among names whose hashes agree.
const RANK_BITS: u32 = 7;
const RANK_MAX: u64 = (1 << RANK_BITS) - 1;

/// An entry and its offset cookie.
pub(super) type Keyed = (u64, DirEntry);

/// The cookie of `name` without its rank (the module comment has the layout).
fn base_cookie(name: &[u8]) -> u64 {
    match name {
        b"." => 1,
        b".." => 2,
        _ => {
            let h = blake3::hash(name);
            let v = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
            (v >> 8).max(1) << RANK_BITS
        }
    }
}

/// Gives each entry, in sorted order, its rank among those of equal base cookie.
#[derive(Default)]
struct Ranker {
    base: u64,
    rank: u64,
}

impl Ranker {
    fn cookie(&mut self, base: u64) -> u64 {
        if base == self.base {
            self.rank += 1;
            if self.rank == RANK_MAX {
                tracing::warn!("128 names in one directory share a cookie's hash bits");
            }
        } else {
            self.base = base;
            self.rank = 0;
        }
        base | self.rank.min(RANK_MAX)
    }
}

/// Sorts entries (base cookies) by cookie and then name.
fn sort(v: &mut [Keyed]) {
    v.sort_unstable_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
}

/// `sort`, then the ranks.
fn sort_ranked(v: &mut [Keyed]) {
    sort(v);
    let mut r = Ranker::default();
    for e in v.iter_mut() {
        e.0 = r.cookie(e.0);
    }
}
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
        if blocks.is_empty() {
            return;
        }
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
    /// Sorted by cookie.
    Memory(Vec<Keyed>),
    Spilled(Spilled),
}

/// Blocks of entries in the scratch file.
struct Blocks {
    scratch: Arc<Scratch>,
    file: Arc<File>,
    /// Place of each block in the file.
    places: Vec<(u64, u32)>,
}

impl Blocks {
    fn read(&self, b: usize) -> Result<Vec<Keyed>> {
        let (at, len) = self.places[b];
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, at)?;
        decode(&buf)
    }

    /// Every entry of every block, in order.
    fn read_all(&self, out: &mut Vec<Keyed>) -> Result<()> {
        for b in 0..self.places.len() {
            out.extend(self.read(b)?);
        }
        Ok(())
    }
}

impl Drop for Blocks {
    fn drop(&mut self) {
        self.scratch.release(&self.file, &self.places);
    }
}

/// A sorted listing in blocks of [`BLOCK`] entries.
struct Spilled {
    blocks: Blocks,
    /// The first cookie of each block.
    firsts: Vec<u64>,
    #[cfg_attr(not(test), allow(dead_code))]
    len: usize,
    /// The block last read back: its number and entries.
    held: Option<(usize, Vec<Keyed>)>,
}

impl Spilled {
    fn block(&mut self, b: usize) -> Result<&[Keyed]> {
        if self.held.as_ref().is_none_or(|(n, _)| *n != b) {
            self.held = Some((b, self.blocks.read(b)?));
        }
        Ok(&self.held.as_ref().expect("just read").1)
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

    /// The first entry whose cookie is above `cookie` (0: the first entry), with its cookie.
    pub(super) fn after(&mut self, cookie: u64) -> Result<Option<Keyed>> {
        let s = match &mut self.body {
            Body::Memory(v) => {
                let i = v.partition_point(|(c, _)| *c <= cookie);
                return Ok(v.get(i).cloned());
            }
            Body::Spilled(s) => s,
        };
        // The last block that starts at or below `cookie` may hold it; if not, the next
        // block's first entry is the one.
        let first = s.firsts.partition_point(|&f| f <= cookie).saturating_sub(1);
        for b in first..(first + 2).min(s.firsts.len()) {
            let entries = s.block(b)?;
            let i = entries.partition_point(|(c, _)| *c <= cookie);
            if let Some(e) = entries.get(i) {
                return Ok(Some(e.clone()));
            }
        }
        Ok(None)
    }
}

fn encode(e: &Keyed, out: &mut Vec<u8>) -> Result<()> {
    let (cookie, e) = e;
    let n = u16::try_from(e.name.len())
        .map_err(|_| FsError::Corrupt("directory entry name too long".into()))?;
    out.extend_from_slice(&cookie.to_le_bytes());
    out.extend_from_slice(&e.ino.to_le_bytes());
    out.push(e.kind.code());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&e.name);
    Ok(())
}

fn decode(mut p: &[u8]) -> Result<Vec<Keyed>> {
    let mut out = Vec::with_capacity(BLOCK);
    while !p.is_empty() {
        let bad = || FsError::Corrupt("bad directory listing record".into());
        if p.len() < 19 {
            return Err(bad());
        }
        let cookie = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
        let ino = u64::from_le_bytes(p[8..16].try_into().expect("8 bytes"));
        let kind = Kind::from_code(p[16]).ok_or_else(bad)?;
        let n = u16::from_le_bytes([p[17], p[18]]) as usize;
        let name = p.get(19..19 + n).ok_or_else(bad)?.to_vec();
        out.push((cookie, DirEntry { name, ino, kind }));
        p = &p[19 + n..];
    }
    Ok(out)
}

/// One entry of the merge: ordered by cookie, then name (reversed: `BinaryHeap` is a
/// max-heap).
struct Head {
    entry: Keyed,
    run: usize,
}

impl PartialEq for Head {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Head {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.entry.0, &o.entry.1.name).cmp(&(self.entry.0, &self.entry.1.name))
    }
}

/// Reads one sorted run a block at a time.
struct RunReader<'a> {
    run: &'a Blocks,
    next: usize,
    buf: std::vec::IntoIter<Keyed>,
}

impl RunReader<'_> {
    fn pop(&mut self) -> Result<Option<Keyed>> {
        loop {
            if let Some(e) = self.buf.next() {
                return Ok(Some(e));
            }
            if self.next == self.run.places.len() {
                return Ok(None);
            }
            self.buf = self.run.read(self.next)?.into_iter();
            self.next += 1;
        }
    }
}

/// Builds a [`Listing`] from entries given in any order.
pub(super) struct Builder {
    scratch: Arc<Scratch>,
    /// Entries (with base cookies) held in memory: all of them, or those after the last run.
    memory: Vec<Keyed>,
    /// Sorted runs written to the scratch file.
    runs: Vec<Blocks>,
    /// The listing stays in memory (no room on the scratch device, or a block failed).
    in_memory: bool,
}

impl Builder {
    pub(super) fn new(scratch: Arc<Scratch>) -> Builder {
        Builder {
            scratch,
            memory: Vec::new(),
            runs: Vec::new(),
            in_memory: false,
        }
    }

    /// The "." and ".." entries of every listing.
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
        self.push_based(base_cookie(&e.name), e)
    }

    /// `push` with the base cookie given (tests make names collide with it).
    fn push_based(&mut self, base: u64, e: DirEntry) -> Result<()> {
        self.memory.push((base, e));
        if !self.in_memory && self.memory.len() > IN_MEMORY {
            self.spill_run()?;
        }
        Ok(())
    }

    /// Writes `entries` out in blocks of `per_block`; `None` (and nothing kept) if a block
    /// cannot be written.
    fn write_blocks(&self, entries: &[Keyed], per_block: usize) -> Result<Option<Blocks>> {
        let mut blocks: Option<Blocks> = None;
        for chunk in entries.chunks(per_block) {
            let mut bytes = Vec::with_capacity(chunk.len() * 48);
            for e in chunk {
                encode(e, &mut bytes)?;
            }
            match self.scratch.append(&bytes) {
                Ok((file, place)) => blocks
                    .get_or_insert_with(|| Blocks {
                        scratch: self.scratch.clone(),
                        file,
                        places: Vec::new(),
                    })
                    .places
                    .push(place),
                Err(e) => {
                    tracing::warn!(
                        "cannot write a directory listing to its scratch file ({e}): kept in memory"
                    );
                    // (Dropping `blocks` gives back what was written.)
                    return Ok(None);
                }
            }
        }
        Ok(blocks)
    }

    /// Sorts the entries in memory and writes them out as a run; if they cannot be written,
    /// the whole listing goes back to memory.
    fn spill_run(&mut self) -> Result<()> {
        sort(&mut self.memory);
        match self.write_blocks(&self.memory, RUN_BLOCK)? {
            Some(run) => {
                self.runs.push(run);
                self.memory.clear();
                Ok(())
            }
            None => self.back_to_memory(),
        }
    }

    fn back_to_memory(&mut self) -> Result<()> {
        self.in_memory = true;
        for run in std::mem::take(&mut self.runs) {
            run.read_all(&mut self.memory)?;
        }
        Ok(())
    }

    pub(super) fn finish(mut self) -> Result<Listing> {
        if !self.runs.is_empty() && !self.in_memory && !self.memory.is_empty() {
            self.spill_run()?;
        }
        if self.runs.is_empty() {
            sort_ranked(&mut self.memory);
            return Ok(Listing {
                body: Body::Memory(std::mem::take(&mut self.memory)),
            });
        }
        match self.merge()? {
            Some(s) => Ok(Listing {
                body: Body::Spilled(s),
            }),
            None => {
                // The merged blocks could not all be written: sorted in memory after all.
                self.back_to_memory()?;
                sort_ranked(&mut self.memory);
                Ok(Listing {
                    body: Body::Memory(std::mem::take(&mut self.memory)),
                })
            }
        }
    }

    /// Merges the runs into blocks of [`BLOCK`] entries, with ranks; `None` if a block cannot
    /// be written (the runs are still there).
    fn merge(&self) -> Result<Option<Spilled>> {
        let mut readers: Vec<RunReader> = self
            .runs
            .iter()
            .map(|run| RunReader {
                run,
                next: 0,
                buf: Vec::new().into_iter(),
            })
            .collect();
        let mut heap = std::collections::BinaryHeap::with_capacity(readers.len());
        for (run, r) in readers.iter_mut().enumerate() {
            if let Some(entry) = r.pop()? {
                heap.push(Head { entry, run });
            }
        }
        let mut ranker = Ranker::default();
        let mut out: Option<Spilled> = None;
        let mut block = Vec::with_capacity(BLOCK);
        loop {
            let next = heap.pop();
            if let Some(Head { mut entry, run }) = next {
                if let Some(e) = readers[run].pop()? {
                    heap.push(Head { entry: e, run });
                }
                entry.0 = ranker.cookie(entry.0);
                block.push(entry);
                if block.len() < BLOCK {
                    continue;
                }
            }
            if block.is_empty() {
                break;
            }
            let Some(mut written) = self.write_blocks(&block, BLOCK)? else {
                return Ok(None);
            };
            let s = out.get_or_insert_with(|| Spilled {
                blocks: Blocks {
                    scratch: self.scratch.clone(),
                    file: written.file.clone(),
                    places: Vec::new(),
                },
                firsts: Vec::new(),
                len: 0,
                held: None,
            });
            s.blocks.places.append(&mut written.places);
            s.firsts.push(block[0].0);
            s.len += block.len();
            block.clear();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

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

    fn build_of(scratch: &Arc<Scratch>, ids: impl IntoIterator<Item = usize>) -> Listing {
        let mut b = Builder::new(scratch.clone());
        for i in ids {
            b.push(entry(i)).unwrap();
        }
        b.finish().unwrap()
    }

    fn build(scratch: &Arc<Scratch>, n: usize) -> Listing {
        build_of(scratch, 0..n)
    }

    /// Everything after `from`, in order.
    fn read_from(l: &mut Listing, from: u64) -> Vec<Keyed> {
        let mut out = Vec::new();
        let mut c = from;
        while let Some(e) = l.after(c).unwrap() {
            assert!(e.0 > c, "cookies go up: {} after {c}", e.0);
            c = e.0;
            out.push(e);
        }
        out
    }

    /// The listing holds entries 0..n, each once, in cookie order, each found again from the
    /// cookie before it (seekdir), in any order.
    fn check(l: &mut Listing, n: usize) {
        assert_eq!(l.len(), n);
        let all = read_from(l, 0);
        assert_eq!(all.len(), n);
        let mut want: Vec<DirEntry> = (0..n).map(entry).collect();
        let mut got: Vec<DirEntry> = all.iter().map(|(_, e)| e.clone()).collect();
        want.sort_by(|a, b| a.name.cmp(&b.name));
        got.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(got, want, "n {n}");
        for (c, e) in &all {
            assert_eq!(*c, base_cookie(&e.name), "no two of these names collide");
        }
        // Backwards and jumping across blocks.
        for i in (1..n).rev().step_by(997) {
            assert_eq!(l.after(all[i - 1].0).unwrap().as_ref(), Some(&all[i]));
        }
        if let Some(last) = all.last() {
            assert_eq!(l.after(last.0).unwrap(), None);
        }
        assert_eq!(l.after(u64::MAX).unwrap(), None);
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
    fn every_entry_is_read_back_once_in_cookie_order_from_any_cookie() {
        let s = Arc::new(Scratch::new(None));
        for n in [0, 5, IN_MEMORY, IN_MEMORY + 1, 3 * IN_MEMORY + BLOCK / 2] {
            check(&mut build(&s, n), n);
        }
        // Only the listings' blocks remain when they go (the runs went after the merge).
        assert_eq!(s.state.lock().live, 0);
    }

    #[test]
    fn dots_come_first_and_cookies_fit_the_kernels_signed_offsets() {
        let s = Arc::new(Scratch::new(None));
        let mut b = Builder::new(s.clone());
        for i in 0..100 {
            b.push(entry(i)).unwrap();
        }
        b.dots(5, 1).unwrap();
        let all = read_from(&mut b.finish().unwrap(), 0);
        assert_eq!((all[0].0, &all[0].1.name[..]), (1, &b"."[..]));
        assert_eq!((all[1].0, &all[1].1.name[..]), (2, &b".."[..]));
        assert!(all[2..].iter().all(|(c, _)| *c >= 128 && *c < 1 << 63));
    }

    /// The point of cookies: a reader that resumes from a cookie of an earlier listing in a
    /// newer one (the kernel's cache went stale, or seekdir after a rewind) gets every name
    /// that stayed exactly once, whatever was added and removed, in memory or spilled.
    #[test]
    fn resuming_in_a_newer_listing_returns_every_name_that_stayed_exactly_once() {
        let s = Arc::new(Scratch::new(None));
        for n in [300, IN_MEMORY + 3 * BLOCK] {
            let mut old = build(&s, n);
            let old_all = read_from(&mut old, 0);
            // Every third entry removed, as many new ones added.
            let now: Vec<usize> = (0..n + n / 3).filter(|i| i % 3 != 1 || *i >= n).collect();
            let mut new = build_of(&s, now.iter().copied());
            for at in [0, 1, n / 7, n / 2, n - 2] {
                let (seen, resume) = (&old_all[..=at], old_all[at].0);
                let rest = read_from(&mut new, resume);
                let mut names: Vec<&[u8]> = seen.iter().map(|(_, e)| &e.name[..]).collect();
                names.extend(rest.iter().map(|(_, e)| &e.name[..]));
                let unique: HashSet<&[u8]> = names.iter().copied().collect();
                assert_eq!(unique.len(), names.len(), "n {n} at {at}: a name twice");
                for i in now.iter().filter(|&&i| i < n) {
                    assert!(
                        unique.contains(&entry(*i).name[..]),
                        "n {n} at {at}: entry {i}, in both listings, was skipped"
                    );
                }
            }
        }
    }

    #[test]
    fn names_whose_hashes_collide_get_ranks_in_name_order_across_runs() {
        let s = Arc::new(Scratch::new(None));
        for n in [50, 3 * IN_MEMORY] {
            let mut b = Builder::new(s.clone());
            // Every 1000th entry shares one base cookie, pushed in reverse name order and so
            // spread over several runs when spilled.
            let shared = 1000 << RANK_BITS;
            for i in (0..n).rev() {
                let base = if i % 1000 == 0 {
                    shared
                } else {
                    base_cookie(&entry(i).name)
                };
                b.push_based(base, entry(i)).unwrap();
            }
            let all = read_from(&mut b.finish().unwrap(), 0);
            assert_eq!(all.len(), n);
            let group: Vec<&Keyed> = all.iter().filter(|(c, _)| c >> RANK_BITS == 1000).collect();
            assert_eq!(group.len(), n.div_ceil(1000));
            for (rank, (c, e)) in group.iter().enumerate() {
                assert_eq!(*c, shared | rank as u64);
                assert_eq!(e.name, entry(rank * 1000).name);
            }
        }
        let mut r = Ranker::default();
        let ranks: Vec<u64> = (0..200)
            .map(|_| r.cookie(1 << RANK_BITS) & RANK_MAX)
            .collect();
        assert_eq!(ranks[..3], [0, 1, 2]);
        assert_eq!(ranks[199], RANK_MAX, "the rank saturates");
    }

    #[test]
    fn listings_share_one_scratch_file_which_is_emptied_when_the_last_goes() {
        let s = Arc::new(Scratch::new(None));
        let n = IN_MEMORY + 3 * BLOCK + 7;
        let mut ls: Vec<Listing> = (0..5).map(|_| build(&s, n)).collect();
        let live = s.state.lock().live;
        assert!(live > 0);
        // Read in turns: each listing's blocks are its own.
        for l in ls.iter_mut() {
            check(l, n);
        }
        let len = scratch_len(&s);
        ls.truncate(1);
        assert_eq!(scratch_len(&s), len, "the file only shrinks when empty");
        assert_eq!(s.state.lock().live, live / 5);
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
        let fail = |on| s.fail.store(on, std::sync::atomic::Ordering::Relaxed);
        // From the start (a full device)...
        fail(true);
        let n = 3 * IN_MEMORY + 2 * BLOCK + 3;
        let mut l = build(&s, n);
        assert!(matches!(l.body, Body::Memory(_)));
        check(&mut l, n);
        // ...after some runs went out: those come back...
        fail(false);
        let mut b = Builder::new(s.clone());
        for i in 0..n {
            if i == 2 * IN_MEMORY + 10 {
                fail(true);
            }
            b.push(entry(i)).unwrap();
        }
        let mut l = b.finish().unwrap();
        assert!(matches!(l.body, Body::Memory(_)));
        check(&mut l, n);
        assert_eq!(
            s.state.lock().live,
            0,
            "runs written before the failure are given back"
        );
        // ...and when the merge cannot write its blocks.
        fail(false);
        let mut b = Builder::new(s.clone());
        for i in 0..n {
            b.push(entry(i)).unwrap();
        }
        fail(true);
        let mut l = b.finish().unwrap();
        assert!(matches!(l.body, Body::Memory(_)));
        check(&mut l, n);
        assert_eq!(
            s.state.lock().live,
            0,
            "runs and merged blocks are given back"
        );
        fail(false);
    }
}
