//! Metadata transactions of the filesystem core: the open group (`group`, `settle`), single
//! transactions (`solo_tx`, `commit`), the views operations read through, and what a failed
//! commit leaves behind (`reset_open`, `catch_up`: open files take their attributes from the
//! committed rows again). The rules are in docs/design.md, "A failed metadata commit".

use super::{Fs, GROUP_AGE, GROUP_OPS, Pending, State, View, committed_size, in_snapshot, missing};
use crate::error::{Ino, Result};
use crate::meta::{self, Attr, MetaRead, WTx};
use std::collections::HashSet;
use std::time::Instant;

impl Fs {
    /// Runs one metadata-changing operation in the open group (starting one if needed) and
    /// commits the group when it is due. A refusal (`FsError::is_refusal`) comes before any
    /// change, so the group carries on; any other failure may have left the operation half
    /// done, so the whole group is dropped, as a crash would (logged).
    pub(super) fn group<T>(
        &self,
        st: &mut State,
        f: impl FnOnce(&mut State, &mut WTx) -> Result<T>,
    ) -> Result<T> {
        let mut p = match st.pending.take() {
            Some(p) => p,
            None => {
                self.catch_up(st);
                let tx = self.meta.begin_write()?;
                // Opening the transaction may have reopened the database (rolled back). (No
                // second write transaction now: redb would wait for this one.)
                if st.meta_gen != Some(self.meta.generation()) {
                    self.reset_open(st, false);
                }
                Pending {
                    tx,
                    ops: 0,
                    since: Instant::now(),
                    extents: HashSet::new(),
                }
            }
        };
        let r = f(st, &mut p.tx);
        if let Err(e) = &r
            && !e.is_refusal()
        {
            tracing::error!(
                "metadata operation failed part-way: {e}; dropping it and the {} operation(s) \
                 not yet committed with it, as a crash would",
                p.ops
            );
            self.recent.lock().clear();
            drop(p);
            self.reset_open(st, true);
            return r;
        }
        if r.is_ok() {
            p.ops += 1;
            st.since_durable = true;
        }
        let due = p.ops >= GROUP_OPS || p.since.elapsed() >= GROUP_AGE;
        st.pending = Some(p);
        if due {
            self.settle(st)?;
        }
        r
    }

    /// Commits the open group, if any (not durably).
    pub(super) fn settle(&self, st: &mut State) -> Result<()> {
        let Some(p) = st.pending.take() else {
            return Ok(());
        };
        let r = p.tx.commit(false);
        self.recent.lock().clear();
        if let Err(e) = &r {
            tracing::error!("metadata group commit failed: {e}");
            self.reset_open(st, true);
        }
        r
    }

    /// After the database was reopened (a failed commit: it went back to its last durable
    /// commit), resets the open inodes' attributes from it (`reset_open`).
    pub(super) fn catch_up(&self, st: &mut State) {
        if st.meta_gen != Some(self.meta.generation()) {
            let reopen = st.pending.is_none();
            self.reset_open(st, reopen);
        }
    }

    /// A failed commit dropped changes the open inodes' in-memory attributes still hold (their
    /// size, link count, mode, times): each takes its attributes from the committed row again,
    /// as a crash would leave them. The write-backs the dropped commits carried are lost, as in
    /// a crash; the bytes still dirty (never in a commit) stay, and the size grows over those
    /// that continue the committed data. Dirty bytes past a gap are dropped with the lost
    /// ones: the gap may be bytes a lost write-back took, which must not read as NULs (a hole
    /// left by a sparse write is lost too, as in a crash). The last close then deletes a file
    /// only if its committed link count is 0.
    ///
    /// redb refuses writes after a failed commit, but its read snapshots still show the lost
    /// commits until the file is reopened: with `reopen` (no write transaction is open), a
    /// write transaction is opened first, which reopens it now, so nobody reads or writes on
    /// top of what is gone. If that fails (the disk is still full), the reset is owed
    /// (`meta_gen` is `None`) and `catch_up` tries again. An inode missing from the database
    /// is left alone, noted `gone_at`: its creation was dropped (`discard_gone`).
    pub(super) fn reset_open(&self, st: &mut State, reopen: bool) {
        if st.meta_gen.is_some() {
            // A new failure; not a retry of a reset still owed.
            st.failures += 1;
        }
        st.meta_gen = None;
        st.resets += 1;
        // Listings the kernel cached may show what was dropped.
        st.held.all_changed(&self.stale);
        let r = if reopen {
            self.meta.begin_write().map(drop)
        } else {
            Ok(())
        };
        let r = r.and_then(|()| self.meta.begin_read());
        let Ok(r) = r else {
            return;
        };
        st.meta_gen = Some(self.meta.generation());
        let mut dropped = 0;
        for (&ino, o) in st.open.iter_mut() {
            // The lost commits may have removed a capability the database has again.
            o.no_caps = false;
            let row = match r.inode(ino) {
                Ok(Some(row)) => row,
                Ok(None) => {
                    // (With a group open, the inode may be new in it.)
                    if st.pending.is_none() {
                        o.gone_at.get_or_insert(st.failures);
                    }
                    continue;
                }
                Err(_) => continue,
            };
            let in_flight = o.flushing.iter().flat_map(|r| r.iter());
            let mut spans: Vec<(u64, u64)> = o
                .dirty
                .spans()
                .into_iter()
                .chain(in_flight.map(|(k, v)| (*k, *k + v.len() as u64)))
                .collect();
            spans.sort_unstable();
            let mut size = row.size;
            for (start, end) in spans {
                if start > size {
                    break;
                }
                size = size.max(end);
            }
            let before = o.dirty.bytes();
            o.dirty.truncate(size);
            dropped += before - o.dirty.bytes();
            // Its committed write-backs went, or dirty bytes did: its next fsync says so.
            let unsynced = o.committed_at == Some(self.durable_epoch());
            if unsynced || o.dirty.bytes() < before {
                o.lost_at = st.failures;
            }
            o.committed_at = None;
            let mut attr = row;
            attr.size = size;
            if !o.dirty.is_empty() {
                // Their write-back commits these with them.
                (attr.mtime, attr.ctime) = (o.attr.mtime, o.attr.ctime);
            }
            o.attr_dirty = attr != row;
            o.attr = attr;
        }
        st.dirty_total -= dropped;
    }

    /// The metadata as the latest operation left it (the caller holds the state lock).
    pub(super) fn view<'a>(&self, st: &'a State) -> Result<View<'a>> {
        match &st.pending {
            Some(p) => Ok(View::Group(&p.tx)),
            None => Ok(View::Snap(self.meta.begin_read()?)),
        }
    }

    /// Runs `f` on the metadata as the latest operation left it: through the open group under
    /// the state lock, or on a snapshot with the lock released when no group is open.
    pub(super) fn with_view<T>(&self, f: impl FnOnce(&dyn MetaRead) -> Result<T>) -> Result<T> {
        let st = self.state.lock();
        if let Some(p) = &st.pending {
            return f(&p.tx);
        }
        drop(st);
        f(&self.meta.begin_read()?)
    }

    /// `with_view` for live inodes; the snapshot's file (and the inode's number there) for
    /// inodes inside a snapshot.
    pub(super) fn with_view_of<T>(
        &self,
        ino: Ino,
        f: impl FnOnce(&dyn MetaRead, Ino) -> Result<T>,
    ) -> Result<T> {
        if in_snapshot(ino) {
            self.with_snap(ino, f)
        } else {
            self.with_view(|r| f(r, ino))
        }
    }

    /// A snapshot for a reader of `ino`'s chunk list that runs with the state lock released:
    /// settles the open group first if it changed that list.
    pub(super) fn snapshot_for(&self, st: &mut State, ino: Ino) -> Result<meta::RTx> {
        if st
            .pending
            .as_ref()
            .is_some_and(|p| p.extents.contains(&ino))
        {
            self.settle(st)?;
        }
        self.meta.begin_read()
    }

    /// Current attributes: the open copy if any, else the database's. Either way the inode
    /// must be in the database: an open copy of an inode whose creation a failed commit
    /// dropped is refused (ESTALE), so that no change of it writes a row for it again.
    pub(super) fn attr_in(
        &self,
        st: &State,
        tx: &(impl MetaRead + ?Sized),
        ino: Ino,
    ) -> Result<Attr> {
        let stored = tx.inode(ino)?.ok_or_else(|| missing(st, ino))?;
        Ok(st.open.get(&ino).map_or(stored, |o| o.attr))
    }

    /// Writes attributes to the database and the open copy. Never creates the inode: one
    /// missing from the database is refused before any change.
    pub(super) fn set_attr_in(
        &self,
        st: &mut State,
        tx: &mut WTx,
        ino: Ino,
        attr: Attr,
    ) -> Result<()> {
        let committed = tx.inode(ino)?.ok_or_else(|| missing(st, ino))?.size;
        let mut stored = attr;
        if let Some(o) = st.open.get(&ino) {
            let in_flight = o.flushing.iter().flat_map(|r| r.iter());
            let pending = o
                .dirty
                .spans()
                .into_iter()
                .chain(in_flight.map(|(k, v)| (*k, *k + v.len() as u64)));
            stored.size = committed_size(committed, attr.size, pending);
        }
        tx.put_inode(ino, &stored)?;
        if let Some(o) = st.open.get_mut(&ino) {
            o.attr = attr;
            o.attr_dirty = stored.size != attr.size;
        }
        Ok(())
    }

    /// Commits an operation that ran in its own transaction (one that may fail part-way
    /// after storing chunks: truncate, fallocate, copy_file_range). The caller settled the
    /// open group before starting it.
    pub(super) fn commit(&self, st: &mut State, tx: WTx) -> Result<()> {
        if let Err(e) = tx.commit(false) {
            self.reset_open(st, true);
            return Err(e);
        }
        st.since_durable = true;
        Ok(())
    }

    /// Starts an operation in its own transaction: settles the open group first (redb has one
    /// writer at a time, and the operation must see the group's changes).
    pub(super) fn solo_tx(&self, st: &mut State) -> Result<WTx> {
        self.settle(st)?;
        self.catch_up(st);
        let tx = self.meta.begin_write()?;
        if st.meta_gen != Some(self.meta.generation()) {
            self.reset_open(st, false);
        }
        Ok(tx)
    }
}
