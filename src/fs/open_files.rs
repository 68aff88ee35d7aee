//! Open files: open, flush, release (the write-back of a closed file, the delete of an
//! unlinked one), the background writer's queue, and what a write clears (set-ID bits).

use super::{
    CacheMode, Fs, Guard, Handle, INLINE_WRITEBACK, OpenInode, RELEASE_WAIT, State, in_snapshot,
};
use crate::error::{FsError, Ino, Result};
use crate::meta::{Kind, Ts};

impl Fs {
    pub fn open(&self, ino: Ino, write: bool) -> Result<u64> {
        self.open_with_mode(ino, write).map(|(fh, _)| fh)
    }

    /// Opens `ino` and says whether the open may use the kernel's page cache (see
    /// `page_cache`); the handle remembers it until `release`.
    pub fn open_with_mode(&self, ino: Ino, write: bool) -> Result<(u64, CacheMode)> {
        if in_snapshot(ino) {
            // A snapshot never changes, but a slot and its inode numbers are used again by a
            // later snapshot: pages cached for an earlier one must not be kept.
            return Ok((
                self.snap_open(ino, write)?,
                CacheMode::Cached { keep: false },
            ));
        }
        if write {
            self.writable()?;
        }
        let mut st = self.state.lock();
        let o = self.open_entry(&mut st, ino)?;
        if o.attr.kind == Kind::Dir && write {
            return Err(FsError::IsDir);
        }
        o.opens += 1;
        // A read whose access time is due must reach the daemon (module `atime`).
        let atime_due = self.atime_rule(o.attr.kind).due(&o.attr, Ts::now());
        let mode = self.page_cache.lock().open(ino, write, atime_due);
        let fh = st.next_fh;
        st.next_fh += 1;
        st.handles.insert(fh, Handle::File { ino, write });
        Ok((fh, mode))
    }

    /// Closes a handle: writes the file back when it was the last one, and deletes an
    /// unlinked inode.
    pub fn release(&self, fh: u64) -> Result<()> {
        let mut st = self.state.lock();
        st.flushed.remove(&fh);
        let Some(Handle::File { ino, write }) = st.handles.remove(&fh) else {
            return Ok(());
        };
        // `sync_dir` may wait for this release (an unlinked file closed before it).
        self.flush_done.notify_all();
        if in_snapshot(ino) {
            return Ok(());
        }
        self.page_cache.lock().release(ino, write);
        let last = match st.open.get_mut(&ino) {
            Some(o) => {
                o.opens = o.opens.saturating_sub(1);
                o.opens == 0
            }
            None => false,
        };
        if !last {
            return Ok(());
        }
        self.catch_up(&mut st);
        let nlink = st.open.get(&ino).map(|o| o.attr.nlink).unwrap_or(1);
        if nlink == 0 {
            // Unlinked and now closed: its data goes with it.
            self.wait_idle(&mut st, ino);
            if let Some(o) = st.open.remove(&ino) {
                st.dirty_total -= o.dirty.bytes();
                self.ghosts.refresh(ino, o.attr);
            }
            return self.group(&mut st, |_, tx| tx.delete_inode(ino));
        }
        // A small file is written back right here: the closer does not wait for a release,
        // and handing it to a writer thread would cost more (a wake-up per file) than the
        // write-back itself. Larger ones go to the background writer.
        // (Not while a write-back of it is queued or in flight: this thread would wait for it.)
        let small = st.open.get(&ino).is_some_and(|o| {
            o.dirty.bytes() <= INLINE_WRITEBACK && o.flushing.is_none() && !o.queued
        });
        if !small && self.queue_writeback(&mut st, ino) {
            self.forget_if_idle(&mut st, ino);
            return Ok(());
        }
        let result = self.writeback_reclaiming(&mut st, ino, true);
        // Keep the entry while write-back failed: its dirty data is the only copy.
        if result.is_ok() {
            self.forget_if_idle(&mut st, ino);
        }
        result
    }

    /// FLUSH of handle `fh` (a close(2) of a descriptor of it): its RELEASE follows
    /// asynchronously unless the descriptor was duplicated.
    pub fn note_flushed(&self, fh: u64) {
        let mut st = self.state.lock();
        if st.handles.contains_key(&fh) {
            st.flushed.insert(fh);
        }
    }

    /// Waits (at most `RELEASE_WAIT`, the state lock released meanwhile) while an unlinked
    /// file is held open only by handles whose descriptors were closed (FLUSH received): the
    /// kernel sends their RELEASE asynchronously after close(2) returns, so a process that
    /// closes, unlinks and fsyncs the directory can get here before the release, and the
    /// durable point would keep the file's chunks (a full disk would stay full).
    pub(super) fn wait_closing_unlinked(&self, st: &mut Guard<'_>) {
        let deadline = std::time::Instant::now() + RELEASE_WAIT;
        loop {
            let closing = st.open.iter().any(|(&ino, o)| {
                o.attr.nlink == 0 && o.opens > 0 && {
                    let mut fhs = st.handles.iter().filter_map(|(fh, h)| match h {
                        Handle::File { ino: i, .. } if *i == ino => Some(fh),
                        _ => None,
                    });
                    fhs.all(|fh| st.flushed.contains(fh))
                }
            });
            if !closing || self.flush_done.wait_until(st, deadline).timed_out() {
                return;
            }
        }
    }

    /// FLUSH at close(2): a file whose last write-back failed is written back here, so the
    /// closer gets the error. Otherwise nothing: the write-back follows at the last close
    /// (`release`, which the closer does not wait for), so close returns at once and the
    /// file is chunked once, whole, instead of once at each close.
    ///
    /// A file whose creation a failed commit dropped gets ESTALE, once that was found, at
    /// every close, unless an fsync of it reported the loss and nothing was written to it
    /// since: its data written through the handle is lost, as in a crash. (Per file, not per
    /// open file description: an fsync through another descriptor counts too.)
    pub fn flush(&self, ino: Ino) -> Result<()> {
        let mut st = self.state.lock();
        if st.open.get(&ino).is_some_and(|o| o.wb_failed) {
            self.writeback_reclaiming(&mut st, ino, true)?;
        }
        self.catch_up(&mut st);
        if st.open.get(&ino).is_some_and(|o| o.gone_at.is_some()) {
            // Bytes written to it since its last fsync are lost: this close says so.
            self.wait_idle(&mut st, ino);
            self.discard_gone(&mut st, ino);
        }
        match st.stale.get(&ino) {
            Some(false) => Err(FsError::Stale),
            _ => Ok(()),
        }
    }

    /// Queues `ino` for the background writer. False when the caller must write back itself:
    /// no background writer, a full queue, or a failed last write-back.
    pub(super) fn queue_writeback(&self, st: &mut State, ino: Ino) -> bool {
        let Some(o) = st.open.get_mut(&ino) else {
            return true;
        };
        if o.dirty.is_empty() && !o.attr_dirty {
            return true;
        }
        if o.wb_failed {
            return false;
        }
        if o.queued {
            return true;
        }
        let sent = self.send_to_writer(ino);
        if sent {
            o.queued = true;
        }
        sent
    }

    /// Hands `ino` to the background writer; false when there is none or its queue is full.
    pub(super) fn send_to_writer(&self, ino: Ino) -> bool {
        self.background
            .lock()
            .as_ref()
            .is_some_and(|bg| bg.try_send(ino).is_ok())
    }

    /// Drops the in-memory entry of a closed inode with nothing left to write.
    pub(super) fn forget_if_idle(&self, st: &mut State, ino: Ino) {
        if st.open.get(&ino).is_some_and(OpenInode::idle) {
            st.open.remove(&ino);
        }
    }

    /// Clears set-user-ID, and set-group-ID where Linux does, after a write by a writer
    /// without CAP_FSETID (the kernel asks with FUSE_WRITE_KILL_SUIDGID): set-group-ID goes
    /// when the file is group-executable or the writer is not in the file's group
    /// (`in_group`, asked only then), as the kernel's `setattr_should_drop_sgid`.
    /// `in_group` may read from /proc: it is called without the state lock.
    pub fn kill_suid(&self, ino: Ino, in_group: &dyn Fn(u32) -> bool) -> Result<()> {
        let (perm, gid) = {
            let mut st = self.state.lock();
            let o = self.open_entry(&mut st, ino)?;
            (o.attr.perm, o.attr.gid)
        };
        let kill = set_id_to_drop(perm, || in_group(gid));
        if kill != 0 {
            let mut st = self.state.lock();
            let o = self.open_entry(&mut st, ino)?;
            if o.attr.perm & kill != 0 {
                o.attr.perm &= !kill;
                o.attr_dirty = true;
            }
        }
        Ok(())
    }
}

/// The set-ID bits Linux drops from a file with permission bits `perm` when a caller without
/// CAP_FSETID writes to it, truncates or fallocates it: set-user-ID, and set-group-ID when
/// the file is group-executable or the caller is outside its group (the kernel's
/// `setattr_should_drop_sgid`); `in_group` is asked only in the last case.
pub fn set_id_to_drop(perm: u16, in_group: impl FnOnce() -> bool) -> u16 {
    let mut kill = perm & libc::S_ISUID as u16;
    if perm & libc::S_ISGID as u16 != 0 && (perm & libc::S_IXGRP as u16 != 0 || !in_group()) {
        kill |= libc::S_ISGID as u16;
    }
    kill
}
