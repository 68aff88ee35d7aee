//! File data: reads, buffered writes, write-back with local re-chunking, truncate, holes,
//! fallocate and reference-copying `copy_file_range`.
//!
//! Write-back of a dirty range re-chunks only the affected region: from the start of the
//! chunk that holds the first dirty byte, cutting with FastCDC over (committed data overlaid
//! with dirty data), until a new cut lands on an old chunk boundary past the last dirty byte
//! (CDC resynchronisation) or the data run ends. Only that run of the chunk list is replaced.
//! Overwriting 4 KiB in a large file therefore re-reads and re-hashes about one chunk, not
//! the file.

use super::{Fs, Guard, MAX_FILE_SIZE, OpenInode, State};
use crate::chunker::Policy;
use crate::error::{FsError, Ino, Result};
use crate::hash::ChunkId;
use crate::meta::{Extent, Kind, MetaRead, RTx, Ts, WTx};
use crate::store::pack_store::with_placement;
use parking_lot::{Mutex, MutexGuard};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Threads that hash, compress and store chunks while the write-back thread cuts (their
/// appends to the file's open pack are serialised; see `with_placement`).
const HASH_THREADS: usize = 3;

/// Chunks queued for prefetch after each read.
const PREFETCH_CHUNKS: usize = 64;

/// Copies bytes of sorted, non-overlapping `ranges` that overlap `[offset, ..)` into `out`.
fn overlay(ranges: &Ranges, offset: u64, out: &mut [u8]) {
    let end = offset + out.len() as u64;
    let first = ranges.partition_point(|r| r.0 + r.1.len() as u64 <= offset);
    for (k, v) in &ranges[first..] {
        if *k >= end {
            break;
        }
        let s = (*k).max(offset);
        let e = (k + v.len() as u64).min(end);
        out[(s - offset) as usize..(e - offset) as usize]
            .copy_from_slice(&v[(s - k) as usize..(e - k) as usize]);
    }
}

fn is_zero(data: &[u8]) -> bool {
    data.iter().all(|&b| b == 0)
}

/// Dirty ranges being written back, sorted and non-overlapping.
type Ranges = [(u64, Vec<u8>)];

/// One re-chunked region: extents in `[start, end)` are replaced by `new`.
struct Region {
    start: u64,
    end: u64,
    new: Vec<Extent>,
}

/// A chunk to hash and store: `block[start..start + len]`, at file offset `offset`.
struct Job<'r> {
    offset: u64,
    block: Gathered<'r>,
    start: usize,
    len: usize,
}

impl Job<'_> {
    fn data(&self) -> &[u8] {
        &self.block.bytes()[self.start..self.start + self.len]
    }
}

/// Bytes the cutter works through: a block gathered from committed and dirty data, shared
/// with the hashing threads, or a stretch of one dirty range cut in place (a streaming writer's
/// data is then not copied again).
#[derive(Clone)]
enum Gathered<'r> {
    Block(Arc<Vec<u8>>),
    Dirty(&'r [u8]),
}

impl Gathered<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Gathered::Block(b) => b,
            Gathered::Dirty(d) => d,
        }
    }
}

/// Write-backs smaller than this hash and store on the calling thread.
const INLINE_WRITE_BACK: usize = 1 << 20;

/// Sets the ids of the new extents from what the hashing side computed.
fn fill_ids(prepared: &mut Prepared, hashed: &HashMap<u64, (ChunkId, u32)>) -> Result<()> {
    for r in &mut prepared.regions {
        for e in &mut r.new {
            let (id, len) = hashed
                .get(&e.offset)
                .copied()
                .ok_or_else(|| FsError::Corrupt("chunk lost between threads".into()))?;
            e.id = id;
            e.len = len;
        }
    }
    Ok(())
}

/// Bytes gathered per block while re-chunking.
const BLOCK: usize = 4 << 20;

/// Result of the unlocked phase of a write-back.
#[derive(Default)]
struct Prepared {
    regions: Vec<Region>,
    /// Trailing pieces without a final cut, to keep dirty.
    tails: Vec<(u64, Vec<u8>)>,
}

impl Fs {
    pub(super) fn open_entry<'a>(&self, st: &'a mut State, ino: Ino) -> Result<&'a mut OpenInode> {
        match st.open.entry(ino) {
            Entry::Occupied(o) => Ok(o.into_mut()),
            Entry::Vacant(v) => {
                let attr = match &st.pending {
                    Some(p) => p.tx.inode(ino)?,
                    None => self.meta.begin_read()?.inode(ino)?,
                }
                .ok_or(if st.stale.contains_key(&ino) {
                    FsError::Stale
                } else {
                    FsError::NotFound
                })?;
                Ok(v.insert(OpenInode {
                    attr,
                    attr_dirty: false,
                    dirty: Default::default(),
                    opens: 0,
                    flushing: None,
                    queued: false,
                    wb_failed: false,
                    committed_at: None,
                    lost_at: 0,
                    told: 0,
                    wrote_since_told: false,
                    gone_at: None,
                    read_end: 0,
                    no_caps: false,
                }))
            }
        }
    }

    /// Copies committed bytes of `ino` at `offset` into `buf`; holes read as zeros.
    pub(super) fn read_committed(
        &self,
        tx: &impl MetaRead,
        ino: Ino,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let end = offset + buf.len() as u64;
        for e in tx.extents(ino, offset, end)? {
            let data = self.cache.get(&e.id, e.len as u64).inspect_err(|err| {
                tracing::error!(
                    ino,
                    offset = e.offset,
                    chunk = %e.id,
                    "file data unreadable, returning EIO: {err}"
                );
            })?;
            let s = e.offset.max(offset);
            let t = e.end().min(end);
            buf[(s - offset) as usize..(t - offset) as usize]
                .copy_from_slice(&data[(s - e.offset) as usize..(t - e.offset) as usize]);
        }
        Ok(())
    }

    /// Reads up to `size` bytes at `offset` for a reader: the file's access time moves as the
    /// mount says (module `atime`). Committed chunks are read with the state lock released
    /// (against a metadata snapshot taken under it, with chunk removal held off), so reads run
    /// in parallel with each other and with write-back.
    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>> {
        self.read_data(ino, offset, size, true)
    }

    /// `read`; `accessed` false for the daemon's own reads (the digest xattr), which leave the
    /// access time alone.
    pub(super) fn read_data(
        &self,
        ino: Ino,
        offset: u64,
        size: u32,
        accessed: bool,
    ) -> Result<Vec<u8>> {
        if super::in_snapshot(ino) {
            return self.snap_read(ino, offset, size);
        }
        let mut st = self.state.lock();
        let snap = self.snapshot_for(&mut st, ino)?;
        // Taking the snapshot may have reopened the database (rolled back).
        self.catch_up(&mut st);
        let attr = match &st.pending {
            Some(p) => self.attr_in(&st, &p.tx, ino)?,
            None => self.attr_in(&st, &snap, ino)?,
        };
        let Some(end) = read_end(&attr, offset, size)? else {
            return Ok(Vec::new());
        };
        let (flushing, dirty, sequential) = match st.open.get_mut(&ino) {
            Some(o) => {
                // Sequential: this read starts where the last one ended (or at 0).
                let sequential = offset == o.read_end;
                o.read_end = end;
                if accessed {
                    self.file_accessed(o);
                }
                (
                    o.flushing.clone(),
                    o.dirty.copy_range(offset, end),
                    sequential,
                )
            }
            None => (None, Vec::new(), true),
        };
        let _no_removal = self.removal.read();
        drop(st);
        let mut buf = vec![0u8; (end - offset) as usize];
        self.read_committed(&snap, ino, offset, &mut buf)?;
        if let Some(f) = &flushing {
            overlay(f, offset, &mut buf);
        }
        overlay(&dirty, offset, &mut buf);
        if sequential {
            // Random reads get no read-ahead: it would load chunks nobody asked for.
            self.prefetch_after(&snap, ino, end);
        }
        Ok(buf)
    }

    /// Queues the chunks after `end` for loading by the prefetch threads, so a sequential
    /// reader finds them verified in the cache (and a cold store is read with parallel I/O).
    fn prefetch_after(&self, snap: &RTx, ino: Ino, end: u64) {
        let Some(q) = &*self.prefetch.lock() else {
            return;
        };
        let window = PREFETCH_CHUNKS as u64 * self.chunker.params().avg as u64;
        let Ok(next) = snap.extents(ino, end, end + window) else {
            return;
        };
        for e in next.into_iter().take(PREFETCH_CHUNKS) {
            if !self.cache.contains(&e.id) && q.try_send((e.id, e.len)).is_err() {
                break;
            }
        }
    }

    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        self.writable_ino(ino)?;
        self.content_changed(ino);
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(FsError::TooBig)?;
        let mut st = self.state.lock();
        let o = self.open_entry(&mut st, ino)?;
        match o.attr.kind {
            Kind::File => {}
            Kind::Dir => return Err(FsError::IsDir),
            _ => return Err(FsError::Invalid("write to a special file")),
        }
        // Make room before accepting the data, so a failed write-back (ENOSPC) refuses this
        // write instead of growing memory without bound.
        if o.dirty.bytes() + data.len() > self.cfg.file_dirty_limit {
            // Double buffering: at most one buffer of this file is in flight. Wait for it,
            // then hand the full one to the background writer and go on filling the next,
            // so receiving writes overlaps with chunking. Without a background writer, or
            // after a failed write-back (whose error this write must report), write back here.
            self.wait_idle(&mut st, ino);
            let o = self.open_entry(&mut st, ino)?;
            let handed = !o.wb_failed
                && o.dirty.bytes() <= self.cfg.file_dirty_limit
                && self.send_to_writer(ino);
            if handed {
                o.queued = true;
            } else {
                self.writeback_reclaiming(&mut st, ino, false)?;
            }
        } else if o.dirty.bytes() + data.len() > self.cfg.file_dirty_limit / 4
            && o.flushing.is_none()
            && !o.queued
            && self.send_to_writer(ino)
        {
            // Hand a quarter-budget to the background writer early.
            o.queued = true;
        }
        if st.dirty_total + data.len() > self.cfg.total_dirty_limit {
            // Over the global budget: write back the largest files, completely (a kept tail
            // would keep the budget full), until this write fits or nothing is left to flush.
            let mut victims: Vec<(usize, Ino)> = st
                .open
                .iter()
                .filter(|(_, o)| !o.dirty.is_empty())
                .map(|(&i, o)| (o.dirty.bytes(), i))
                .collect();
            victims.sort_unstable_by(|a, b| b.cmp(a));
            for (_, victim) in victims {
                if st.dirty_total + data.len() <= self.cfg.total_dirty_limit {
                    break;
                }
                self.writeback(&mut st, victim, true)?;
            }
        }
        let o = self.open_entry(&mut st, ino)?;
        let before = o.dirty.bytes();
        o.dirty.write(offset, data);
        let grown = o.dirty.bytes() - before;
        let now = Ts::now();
        o.attr.size = o.attr.size.max(end);
        o.attr.mtime = now;
        o.attr.ctime = now;
        o.attr_dirty = true;
        o.wrote_since_told = true;
        st.dirty_total += grown;
        Ok(data.len())
    }

    /// Waits until no write-back of `ino` is in flight (the lock is released while waiting).
    pub(super) fn wait_idle(&self, st: &mut Guard<'_>, ino: Ino) {
        while st.open.get(&ino).is_some_and(|o| o.flushing.is_some()) {
            self.flush_done.wait(st);
        }
    }

    /// Writes back the dirty data of `ino` and persists its attributes. With `final_` false,
    /// a trailing piece at end of file that has not reached a final cut stays dirty.
    ///
    /// The expensive part (reading old chunks, cutting, hashing, storing) runs with the state
    /// lock released, against a read snapshot of the metadata; the dirty ranges stay visible to
    /// readers as `flushing` until the commit. Every operation that edits this inode's extents
    /// waits for an in-flight write-back first (`wait_idle`), so the snapshot's extents are
    /// still current when the commit replaces them.
    ///
    /// An inode gone from the metadata (a failed commit dropped the group that created it)
    /// is not written: its open state goes (`discard_gone`) and the write-back succeeds, so
    /// the syncs of other files do not fail for it; its own handles get ESTALE from then on.
    pub(super) fn writeback(&self, st: &mut Guard<'_>, ino: Ino, final_: bool) -> Result<()> {
        loop {
            let mut raced = false;
            let r = self.writeback_pass(st, ino, final_, &mut raced);
            if !raced {
                return r;
            }
        }
    }

    /// One write-back of `ino`'s dirty ranges (`writeback`); sets `raced` when a failed commit
    /// reset the attributes while it was in flight, and nothing was committed.
    fn writeback_pass(
        &self,
        st: &mut Guard<'_>,
        ino: Ino,
        final_: bool,
        raced: &mut bool,
    ) -> Result<()> {
        self.wait_idle(st, ino);
        self.catch_up(st);
        let Some(o) = st.open.get_mut(&ino) else {
            return Ok(());
        };
        o.queued = false;
        if o.dirty.is_empty() && !o.attr_dirty {
            return Ok(());
        }
        if self.view(st)?.inode(ino)?.is_none() {
            self.discard_gone(st, ino);
            return Ok(());
        }
        let Some(o) = st.open.get_mut(&ino) else {
            return Ok(());
        };
        let ranges = Arc::new(o.dirty.take());
        let taken: usize = ranges.iter().map(|(_, v)| v.len()).sum();
        let size = o.attr.size;
        o.flushing = Some(ranges.clone());
        // A failed commit while this write-back is in flight resets the attributes
        // (`reset_open`): the ranges are then checked against the reset size again.
        let meta_gen = st.meta_gen;
        // Chunk files this write-back creates: if it fails they are removed again, so a full
        // disk gets its space back when the writer gives up (not only after gc).
        let fresh = Mutex::new(Vec::new());
        let prepared = self.snapshot_for(st, ino).and_then(|snap| {
            let policy = self.policy(&*self.view(st)?, ino)?;
            // Every chunk of the file, whichever thread stores it, to the open pack of its
            // inode.
            MutexGuard::unlocked(st, || {
                with_placement(ino, || {
                    self.prepare(&snap, ino, &ranges, size, final_, policy, &fresh)
                })
            })
        });
        // Checked again at the commit: the group that created the inode may have been dropped
        // while the state lock was released.
        let mut gone = false;
        let result = prepared.and_then(|p| {
            self.group(st, |st, tx| {
                if tx.inode(ino)?.is_none() {
                    gone = true;
                    return Err(FsError::Stale);
                }
                if st.meta_gen != meta_gen {
                    // Refused before any change: the group carries on.
                    *raced = true;
                    return Err(FsError::Stale);
                }
                for r in &p.regions {
                    let old = tx.extents(ino, r.start, r.end)?;
                    tx.replace_extents(ino, &old, &r.new)?;
                }
                if let Some(o) = st.open.get(&ino) {
                    // Data written since the take, and the tail kept dirty, are not in this
                    // commit: neither is the size they add.
                    let tails = p.tails.iter().map(|(k, v)| (*k, *k + v.len() as u64));
                    let pending = o.dirty.spans().into_iter().chain(tails);
                    let row = tx.inode(ino)?;
                    let committed = row.map_or(0, |a| a.size);
                    let mut a = o.attr;
                    a.size = super::committed_size(committed, a.size, pending);
                    // Link, unlink and rename write the link count to the row themselves: it
                    // is current; the open copy may still hold one a failed commit dropped.
                    a.nlink = row.map_or(a.nlink, |r| r.nlink);
                    tx.put_inode(ino, &a)?;
                }
                Ok(())
            })?;
            if let Some(g) = st.pending.as_mut() {
                g.extents.insert(ino);
                let ids = p.regions.iter().flat_map(|r| r.new.iter().map(|e| e.id));
                self.recent.lock().extend(ids);
            }
            Ok(p.tails)
        });
        let st = &mut **st;
        st.dirty_total -= taken;
        let Some(o) = st.open.get_mut(&ino) else {
            self.flush_done.notify_all();
            return result.map(|_| ());
        };
        o.flushing = None;
        if gone {
            self.discard_gone(st, ino);
            self.discard_fresh(st, &fresh.into_inner());
            self.flush_done.notify_all();
            return Ok(());
        }
        if *raced {
            // The ranges go back to dirty and are cut where the reset cut the dirty bytes
            // (past a gap the lost commits may have left), then written back again: committed
            // as prepared, they could name extents past the reset size, which a later growing
            // truncate or write past the end would expose.
            let before = o.dirty.bytes();
            o.dirty.restore(Arc::unwrap_or_clone(ranges));
            o.dirty.truncate(o.attr.size);
            st.dirty_total += o.dirty.bytes() - before;
            self.discard_fresh(st, &fresh.into_inner());
            self.flush_done.notify_all();
            return Ok(());
        }
        let before = o.dirty.bytes();
        let out = match result {
            Ok(tails) => {
                o.wb_failed = false;
                o.committed_at = Some(self.durable_epoch());
                // Tails go back under anything written since the take.
                o.dirty.restore(tails);
                // (A reader overlaying the ranges may still hold them: then they are freed.)
                if let Ok(done) = Arc::try_unwrap(ranges) {
                    super::dirty::recycle(done);
                }
                if o.dirty.is_empty() {
                    o.attr_dirty = false;
                }
                st.since_durable = true;
                Ok(())
            }
            Err(e) => {
                o.wb_failed = true;
                o.dirty.restore(Arc::unwrap_or_clone(ranges));
                Err(e)
            }
        };
        st.dirty_total += o.dirty.bytes() - before;
        let unlinked_and_closed = o.attr.nlink == 0 && o.opens == 0;
        let fresh = fresh.into_inner();
        if out.is_err() {
            self.discard_fresh(st, &fresh);
        } else {
            st.fresh_since_durable.extend(
                fresh
                    .into_iter()
                    .filter(|&(_, unknown)| unknown)
                    .map(|(id, _)| id),
            );
        }
        self.flush_done.notify_all();
        if unlinked_and_closed {
            // Unlinked while this write-back was in flight: delete it now.
            if let Some(o) = st.open.remove(&ino) {
                st.dirty_total -= o.dirty.bytes();
            }
            self.group(st, |_, tx| tx.delete_inode(ino))?;
        }
        out
    }

    /// Drops the open state of `ino`, whose inode is gone from the metadata because a failed
    /// commit dropped the group that created it: its dirty bytes go (and leave the dirty
    /// budget), as a crash would lose them, and its handles get ESTALE from now on (`stale`).
    /// Its number is never handed out again in this mount (`State::ino_floor`). No write-back
    /// of it is in flight.
    ///
    /// The loss counts as reported (a close does not report it again) when the file's last
    /// failed fsync reported the failure that dropped it and nothing was written since.
    pub(super) fn discard_gone(&self, st: &mut State, ino: Ino) {
        let mut reported = false;
        if let Some(o) = st.open.remove(&ino) {
            reported = o.gone_at.is_some_and(|g| o.told >= g) && !o.wrote_since_told;
            st.dirty_total -= o.dirty.bytes();
            tracing::error!(
                ino,
                "inode {ino} is gone from the metadata (a failed commit dropped its creation): \
                 its {} unwritten bytes are dropped, as in a crash; its open handles get ESTALE",
                o.dirty.bytes()
            );
        }
        *st.stale.entry(ino).or_insert(false) |= reported;
    }

    /// Removes chunk files a failed write-back created, unless metadata references them by
    /// now. Skipped while another write-back is in flight (it may be about to commit the same
    /// chunk); `gc` removes what is left.
    fn discard_fresh(&self, st: &State, ids: &[(ChunkId, bool)]) {
        if ids.is_empty() || super::flush_in_flight(st) {
            return;
        }
        // Through the open group: it may reference a chunk that no snapshot shows yet.
        let Ok(r) = self.view(st) else {
            return;
        };
        let Some(holders) = self.snaps.removal_holders() else {
            return;
        };
        let _exclusive = self.removal.write();
        for (id, unknown) in ids {
            // A chunk metadata knew (refcount 0 now, but durable metadata may still name it,
            // e.g. a file deleted since the last durable point) stays: only chunks no metadata
            // had ever recorded are certainly unreferenced by what is on disk.
            if !unknown || matches!(r.chunk(id), Ok(Some((rc, _))) if rc > 0) || holders.holds(id) {
                continue;
            }
            if self.store().remove(id).is_ok() {
                self.cache.forget(id);
            }
        }
    }

    /// Stores a chunk unless committed metadata (or this operation) already has it. When it
    /// wrote the chunk file, says whether metadata had no record of the chunk at all (then no
    /// durable metadata references it either).
    fn ensure_chunk(
        &self,
        tx: &impl MetaRead,
        written: &mut HashSet<ChunkId>,
        id: &ChunkId,
        data: &[u8],
    ) -> Result<Option<bool>> {
        if written.contains(id) {
            return Ok(None);
        }
        let known = tx.chunk(id)?;
        let put = !matches!(known, Some((rc, _)) if rc > 0) && !self.recent.lock().contains(id);
        if put {
            self.store().put(id, data)?;
            self.unsynced_bytes
                .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        written.insert(*id);
        Ok(put.then_some(known.is_none()))
    }

    /// Appends to `out` the data of `ino` from `at` (up to `want` bytes), dirty bytes over
    /// committed ones. Returns true when the data run ends at the new end of `out`: a hole or
    /// the end of the file follows.
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &self,
        snap: &impl MetaRead,
        ino: Ino,
        ranges: &Ranges,
        size: u64,
        at: u64,
        want: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool> {
        let limit = size.min(at + want as u64);
        let mut p = at;
        while p < limit {
            let j = ranges.partition_point(|r| r.0 <= p);
            if j > 0 {
                let (rs, rv) = &ranges[j - 1];
                let re = rs + rv.len() as u64;
                if re > p {
                    let e = re.min(limit);
                    out.extend_from_slice(&rv[(p - rs) as usize..(e - rs) as usize]);
                    p = e;
                    continue;
                }
            }
            let next_dirty = ranges.get(j).map(|r| r.0).unwrap_or(u64::MAX);
            let Some(ext) = snap.extents(ino, p, p + 1)?.into_iter().next() else {
                return Ok(true);
            };
            let e = ext.end().min(limit).min(next_dirty);
            let chunk = self.cache.get(&ext.id, ext.len as u64)?;
            out.extend_from_slice(&chunk[(p - ext.offset) as usize..(e - ext.offset) as usize]);
            p = e;
        }
        Ok(p >= size)
    }

    /// Hashes a cut chunk and stores it unless it is already live; returns its offset, id
    /// and length.
    fn store_job(
        &self,
        snap: &RTx,
        written: &mut HashSet<ChunkId>,
        job: &Job,
        fresh: &Mutex<Vec<(ChunkId, bool)>>,
    ) -> Result<(u64, (ChunkId, u32))> {
        let data = job.data();
        let id = self.cache.hasher().id(data);
        if let Some(unknown) = self.ensure_chunk(snap, written, &id, data)? {
            fresh.lock().push((id, unknown));
        }
        Ok((job.offset, (id, job.len as u32)))
    }

    /// Re-chunks the regions touched by `ranges` against the snapshot `snap`: cuts on this
    /// thread while helper threads hash and store the chunks (on two cores, chunking is the
    /// bottleneck and never waits for storage). Nothing is committed here.
    #[allow(clippy::too_many_arguments)]
    fn prepare<'r>(
        &self,
        snap: &RTx,
        ino: Ino,
        ranges: &'r Ranges,
        size: u64,
        final_: bool,
        policy: Policy,
        fresh: &Mutex<Vec<(ChunkId, bool)>>,
    ) -> Result<Prepared> {
        let bytes: usize = ranges.iter().map(|(_, v)| v.len()).sum();
        if bytes < INLINE_WRITE_BACK {
            // Small (a file being closed after a few KiB): threads cost more than they save.
            let mut written = HashSet::new();
            let mut hashed = HashMap::new();
            let mut inline = |job: Job<'r>| -> Result<bool> {
                let (offset, id) = self.store_job(snap, &mut written, &job, fresh)?;
                hashed.insert(offset, id);
                Ok(true)
            };
            let mut prepared =
                self.cut_regions(snap, ino, ranges, size, final_, policy, &mut inline)?;
            fill_ids(&mut prepared, &hashed)?;
            return Ok(prepared);
        }
        std::thread::scope(|scope| {
            let (job_tx, job_rx) = crossbeam_channel::bounded::<Job<'r>>(64);
            let workers: Vec<_> = (0..HASH_THREADS)
                .map(|_| {
                    let job_rx = job_rx.clone();
                    // One file's chunks go to one open pack, whichever worker stores them.
                    scope.spawn(move || -> Result<HashMap<u64, (ChunkId, u32)>> {
                        with_placement(ino, || {
                            let mut written = HashSet::new();
                            let mut out = HashMap::new();
                            let mut failed = None;
                            for job in job_rx {
                                // Keep draining after a failure so the cutter never blocks.
                                if failed.is_some() {
                                    continue;
                                }
                                match self.store_job(snap, &mut written, &job, fresh) {
                                    Ok((offset, id)) => {
                                        out.insert(offset, id);
                                    }
                                    Err(e) => failed = Some(e),
                                }
                            }
                            match failed {
                                Some(e) => Err(e),
                                None => Ok(out),
                            }
                        })
                    })
                })
                .collect();
            drop(job_rx);
            let mut send = |job: Job<'r>| Ok(job_tx.send(job).is_ok());
            let cut = self.cut_regions(snap, ino, ranges, size, final_, policy, &mut send);
            drop(job_tx);
            let mut hashed = HashMap::new();
            let mut first_err = None;
            for w in workers {
                match w.join() {
                    Ok(Ok(part)) => hashed.extend(part),
                    Ok(Err(e)) => {
                        first_err.get_or_insert(e);
                    }
                    Err(_) => {
                        first_err.get_or_insert(FsError::Corrupt(
                            "chunk hashing thread panicked".into(),
                        ));
                    }
                }
            }
            let mut prepared = cut?;
            if let Some(e) = first_err {
                return Err(e);
            }
            fill_ids(&mut prepared, &hashed)?;
            Ok(prepared)
        })
    }

    /// The cutting half of [`Fs::prepare`]: finds each region and its cut points, hands every
    /// non-zero chunk to `sink` (false: stop, the hashing side failed), and returns regions
    /// whose extents await their ids.
    #[allow(clippy::too_many_arguments)]
    fn cut_regions<'r>(
        &self,
        snap: &RTx,
        ino: Ino,
        ranges: &'r Ranges,
        size: u64,
        final_: bool,
        policy: Policy,
        sink: &mut dyn FnMut(Job<'r>) -> Result<bool>,
    ) -> Result<Prepared> {
        let max = self.chunker.params().max as usize;
        let mut out = Prepared::default();
        let mut i = 0;
        while i < ranges.len() {
            let d0 = ranges[i].0;
            let s = match snap.extents(ino, d0, d0 + 1)?.first() {
                Some(e) => e.offset,
                None => match snap.extent_ending_at(ino, d0)? {
                    // Re-cut the chunk before: it may be a short tail cut by an earlier final
                    // write-back, and an appender should end up with the boundaries of one
                    // continuous write.
                    Some(e) if out.regions.last().is_none_or(|r| r.end <= e.offset) => e.offset,
                    _ => d0,
                },
            };
            // Chunks travel to the hashing threads as (bytes, start, len). Inside a long dirty
            // range the cutter works on the range itself; elsewhere (committed data around a
            // small write, the seam between two dirty ranges) the bytes are gathered into a
            // block, each copied once.
            let mut block = Gathered::Block(Arc::new(Vec::new()));
            let mut bstart = 0usize; // block[bstart..] holds bytes from `pos`
            let mut pos = s;
            let mut run_ended = false;
            let mut new = Vec::new();
            let end = loop {
                if !run_ended && block.bytes().len() - bstart < max {
                    let j = ranges.partition_point(|r| r.0 + r.1.len() as u64 <= pos);
                    // The dirty range at or after `pos`: (start, end, bytes).
                    let dirty = ranges
                        .get(j)
                        .map(|r| (r.0, (r.0 + r.1.len() as u64).min(size), &r.1));
                    match dirty {
                        // `pos` lies in a dirty range with room for look-ahead: cut in place
                        // (up to where `max` bytes are left, then the seam is gathered below).
                        Some((r0, r_end, v)) if r0 <= pos && r_end >= pos + 2 * max as u64 => {
                            block = Gathered::Dirty(&v[(pos - r0) as usize..(r_end - r0) as usize]);
                            bstart = 0;
                            run_ended = r_end >= size;
                        }
                        _ => {
                            // Gather the dirty bytes ahead plus two maximal chunks (a cut needs
                            // `max` bytes of look-ahead, and resynchronisation usually follows
                            // within one more chunk), at most BLOCK: a random 4 KiB write copies
                            // ~0.5 MiB of old data, not 4 MiB. Only up to two maximal chunks
                            // into a long dirty range ahead: the cutter goes on in place there.
                            let ahead = dirty.map_or(0, |(r0, r_end, _)| {
                                if r_end >= r0 + 4 * max as u64 {
                                    r0.saturating_sub(pos)
                                } else {
                                    r_end.saturating_sub(pos)
                                }
                            });
                            // (Stores with max chunks over 2 MiB get 2 x max: a cut needs max
                            // bytes.)
                            let target = (ahead.min(BLOCK as u64) as usize + 2 * max)
                                .min(BLOCK.max(2 * max));
                            let mut next = Vec::with_capacity(target + max);
                            next.extend_from_slice(&block.bytes()[bstart..]);
                            while !run_ended && next.len() < target {
                                let at = pos + next.len() as u64;
                                let want = target - next.len();
                                run_ended =
                                    self.fill(snap, ino, ranges, size, at, want, &mut next)?;
                            }
                            block = Gathered::Block(Arc::new(next));
                            bstart = 0;
                        }
                    }
                }
                let avail = &block.bytes()[bstart..];
                let Some(len) = self.chunker.next_cut_for(policy, pos, avail, run_ended) else {
                    break pos;
                };
                let c = pos + len as u64;
                if !final_
                    && run_ended
                    && len == avail.len()
                    && c == size
                    && snap.extents(ino, pos, c)?.is_empty()
                {
                    // A streaming writer's last piece: keep it dirty until more data or a
                    // final write-back decides its cut. Only new data may wait like this:
                    // committed bytes in the piece would lose their extents while living only
                    // in memory, and a durable commit of anything else before the next
                    // write-back would then make a hole of data that was already safe.
                    out.tails.push((pos, avail.to_vec()));
                    break c;
                }
                if !is_zero(&avail[..len]) {
                    let job = Job {
                        offset: pos,
                        block: block.clone(),
                        start: bstart,
                        len,
                    };
                    if !sink(job)? {
                        // A hashing thread stopped on an error; it reports it.
                        return Ok(out);
                    }
                    new.push(Extent {
                        offset: pos,
                        id: ChunkId([0; 32]),
                        len: len as u32,
                    });
                }
                bstart += len;
                pos = c;
                if run_ended && bstart == block.bytes().len() {
                    break c;
                }
                // Resynchronised? No dirty range may straddle the cut, and the cut must be an
                // old chunk boundary: from here on the old chunks are what we would cut.
                let j = ranges.partition_point(|r| r.0 < c);
                let straddles = j > 0 && ranges[j - 1].0 + ranges[j - 1].1.len() as u64 > c;
                if !straddles
                    && snap
                        .extents(ino, c, c + 1)?
                        .first()
                        .is_some_and(|e| e.offset == c)
                {
                    break c;
                }
            };
            out.regions.push(Region { start: s, end, new });
            i = ranges.partition_point(|r| r.0 < end).max(i + 1);
        }
        Ok(out)
    }

    /// Removes the data of `[a, b)` from the committed chunk list of `ino`, leaving a hole.
    /// Extents cut by an edge keep their outside part as a new (shorter) chunk.
    fn cut_extents(&self, tx: &mut WTx, ino: Ino, a: u64, b: u64) -> Result<()> {
        if a >= b {
            return Ok(());
        }
        let old = tx.extents(ino, a, b)?;
        let mut new = Vec::new();
        let mut written = HashSet::new();
        for e in &old {
            for (s, t) in [(e.offset, a), (b, e.end())] {
                let (s, t) = (s.max(e.offset), t.min(e.end()));
                if s >= t {
                    continue;
                }
                let chunk = self.cache.get(&e.id, e.len as u64)?;
                let data = &chunk[(s - e.offset) as usize..(t - e.offset) as usize];
                if is_zero(data) {
                    continue;
                }
                let id = self.cache.hasher().id(data);
                self.ensure_chunk(tx, &mut written, &id, data)?;
                new.push(Extent {
                    offset: s,
                    id,
                    len: (t - s) as u32,
                });
            }
        }
        tx.replace_extents(ino, &old, &new)
    }

    /// Sets the size of a regular file. Shrinking drops chunks past the end; growing leaves
    /// a hole that costs nothing (a 1 PiB truncate allocates no memory).
    pub fn truncate(&self, ino: Ino, size: u64) -> Result<()> {
        self.writable_ino(ino)?;
        if size > MAX_FILE_SIZE {
            return Err(FsError::TooBig);
        }
        let mut st = self.state.lock();
        self.writeback(&mut st, ino, true)?;
        let mut tx = self.solo_tx(&mut st)?;
        let mut attr = self.attr_in(&st, &tx, ino)?;
        match attr.kind {
            Kind::File => {}
            Kind::Dir => return Err(FsError::IsDir),
            _ => return Err(FsError::Invalid("truncate of a special file")),
        }
        if size < attr.size {
            self.cut_extents(&mut tx, ino, size, u64::MAX)?;
        }
        if let Some(o) = st.open.get_mut(&ino) {
            let before = o.dirty.bytes();
            o.dirty.truncate(size);
            st.dirty_total -= before - o.dirty.bytes();
        }
        let now = Ts::now();
        attr.size = size;
        attr.mtime = now;
        attr.ctime = now;
        self.set_attr_in(&mut st, &mut tx, ino, attr)?;
        self.commit(&mut st, tx)
    }

    /// fallocate(2): default mode extends the size (space is not reserved: a dedup store
    /// cannot promise it); KEEP_SIZE alone does nothing; PUNCH_HOLE and ZERO_RANGE drop the
    /// range's chunks.
    pub fn fallocate(&self, ino: Ino, offset: u64, len: u64, mode: i32) -> Result<()> {
        self.writable_ino(ino)?;
        self.content_changed(ino);
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(FsError::TooBig)?;
        if len == 0 {
            return Err(FsError::Invalid("fallocate of length 0"));
        }
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 || (punch && !keep) || (punch && zero) {
            return Err(FsError::NotSupported("fallocate mode"));
        }
        let mut st = self.state.lock();
        self.writeback(&mut st, ino, true)?;
        let mut tx = self.solo_tx(&mut st)?;
        let mut attr = self.attr_in(&st, &tx, ino)?;
        if attr.kind != Kind::File {
            return Err(FsError::Invalid("fallocate of a non-regular file"));
        }
        // Nothing is reserved (a deduplicated, compressed store cannot tell what a later write
        // will take), but a request that could not be had even raw is refused, as
        // posix_fallocate must: the part of the range past the end of the file must fit in
        // the free space.
        let beyond = end.saturating_sub(offset.max(attr.size));
        if !punch && beyond > 0 && beyond > self.store().space()?.avail_bytes {
            return Err(FsError::NoSpace);
        }
        let now = Ts::now();
        if punch || zero {
            self.cut_extents(&mut tx, ino, offset, end.min(attr.size))?;
            attr.mtime = now;
            attr.ctime = now;
        }
        if !keep && end > attr.size {
            attr.size = end;
            attr.ctime = now;
        }
        self.set_attr_in(&mut st, &mut tx, ino, attr)?;
        self.commit(&mut st, tx)
    }

    /// copy_file_range(2) by reference: the destination range gets the source's chunk
    /// references (chunks cut by the range's edges are sliced into new chunks), so copying a
    /// large file costs metadata, not data. Returns the bytes copied.
    pub fn copy_range(
        &self,
        src: Ino,
        off_in: u64,
        dst: Ino,
        off_out: u64,
        len: u64,
    ) -> Result<u64> {
        self.writable_ino(dst)?;
        self.content_changed(dst);
        // A source inside a snapshot is read from its file (restoring from a snapshot is a
        // copy by reference too); the state lock keeps the snapshot from being deleted meanwhile.
        let from_snapshot = super::in_snapshot(src);
        let mut st = self.state.lock();
        if !from_snapshot {
            self.writeback(&mut st, src, true)?;
        }
        self.writeback(&mut st, dst, true)?;
        let mut tx = self.solo_tx(&mut st)?;
        let sattr = if from_snapshot {
            self.snap_getattr(src)?
        } else {
            self.attr_in(&st, &tx, src)?
        };
        let mut dattr = self.attr_in(&st, &tx, dst)?;
        if sattr.kind != Kind::File || dattr.kind != Kind::File {
            return Err(FsError::Invalid("copy_file_range of a non-regular file"));
        }
        if off_in >= sattr.size || len == 0 {
            return Ok(0);
        }
        let len = len.min(sattr.size - off_in);
        let end_out = off_out
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(FsError::TooBig)?;
        if src == dst && off_in < end_out && off_out < off_in + len {
            return Err(FsError::Invalid("overlapping copy within one file"));
        }
        let src_extents = if from_snapshot {
            self.with_snap(src, |r, i| r.extents(i, off_in, off_in + len))?
        } else {
            tx.extents(src, off_in, off_in + len)?
        };
        self.cut_extents(&mut tx, dst, off_out, end_out)?;
        let mut new = Vec::new();
        let mut written = HashSet::new();
        for e in src_extents {
            let s = e.offset.max(off_in);
            let t = e.end().min(off_in + len);
            let at = s - off_in + off_out;
            if s == e.offset && t == e.end() {
                new.push(Extent {
                    offset: at,
                    id: e.id,
                    len: e.len,
                });
                continue;
            }
            let chunk = self.cache.get(&e.id, e.len as u64)?;
            let data = &chunk[(s - e.offset) as usize..(t - e.offset) as usize];
            let id = self.cache.hasher().id(data);
            self.ensure_chunk(&tx, &mut written, &id, data)?;
            new.push(Extent {
                offset: at,
                id,
                len: (t - s) as u32,
            });
        }
        tx.replace_extents(dst, &[], &new)?;
        let now = Ts::now();
        dattr.size = dattr.size.max(end_out);
        dattr.mtime = now;
        dattr.ctime = now;
        self.set_attr_in(&mut st, &mut tx, dst, dattr)?;
        self.commit(&mut st, tx)?;
        Ok(len)
    }
}

/// Where a read of `size` bytes at `offset` of a file with `attr` ends (`None`: at or past
/// the end of the file); not a regular file: an error.
pub(super) fn read_end(attr: &crate::meta::Attr, offset: u64, size: u32) -> Result<Option<u64>> {
    match attr.kind {
        Kind::File => {}
        Kind::Dir => return Err(FsError::IsDir),
        _ => return Err(FsError::Invalid("read of a special file")),
    }
    if offset >= attr.size {
        return Ok(None);
    }
    Ok(Some(attr.size.min(offset.saturating_add(size as u64))))
}
