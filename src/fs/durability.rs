//! Durability: durable points (store sync, then a durable metadata commit, then removal of
//! chunks no durable metadata names), fsync/fsyncdir/sync of the whole volume, maintenance
//! with everything quiesced, background compaction steps, and durable snapshots for metadata
//! backups. The ordering is documented in docs/design.md.

use super::{Fs, Guard, LOW_SPACE, PRESYNC_BYTES, State, flush_in_flight};
use crate::error::{FsError, Ino, Result};
use crate::meta::{self, MetaDb};
use crate::store::ChunkStore;
use std::sync::atomic::Ordering;

impl Fs {
    /// Waits (releasing the lock meanwhile) until no write-back of any inode is in flight.
    pub(super) fn wait_no_flush(&self, st: &mut Guard<'_>) {
        while flush_in_flight(st) {
            self.flush_done.wait(st);
        }
    }

    /// Makes everything committed so far durable: chunk files first, then the metadata,
    /// then removes chunk files no durable metadata references any more.
    pub(super) fn make_durable(&self, st: &mut Guard<'_>) -> Result<()> {
        self.durable_point(st, false)
    }

    /// A durable point even when nothing was committed since the last one (fsync, fsyncdir,
    /// the snapshot a remote volume publishes: the store's sync is part of what they ask for).
    /// The durable epoch moves only if something was committed, so that a publication or a
    /// backup after it sees no change where there is none.
    pub(super) fn make_durable_forced(&self, st: &mut Guard<'_>) -> Result<()> {
        self.durable_point(st, true)
    }

    fn durable_point(&self, st: &mut Guard<'_>, force: bool) -> Result<()> {
        // Unlinked files still queued are deleted first: a durable point frees their space.
        self.catch_up(st);
        self.reap_queued(st, usize::MAX)?;
        // (Both read: the flag is consumed even when a group is open anyway.)
        let moved = self.packs_moved.swap(false, Ordering::Relaxed);
        if st.pending.is_some() || moved {
            st.since_durable = true;
        }
        if !st.since_durable && !force {
            return Ok(());
        }
        if self.unsynced_bytes.load(Ordering::Relaxed) > PRESYNC_BYTES {
            // Flush most chunk data with the lock released: a syncfs of seconds' worth of
            // writes held every other operation up for as long. The sync below, under the
            // lock, still covers everything the durable commit references; it then has
            // little left to write.
            self.unsynced_bytes.store(0, Ordering::Relaxed);
            parking_lot::MutexGuard::unlocked(st, || self.store_sync())?;
        }
        // Write-backs in flight hold snapshots that may count a dead chunk as live: let them
        // finish, so the chunks freed below are really freed now (a full disk needs them).
        self.wait_no_flush(st);
        let st: &mut State = st;
        self.settle(st)?;
        self.remove_fresh_dead_chunks(st);
        self.unsynced_bytes.store(0, Ordering::Relaxed);
        // On a nearly full device, give the reserve back first: a failed commit (of the pack
        // index in the store's sync, or of the metadata) would lose the changes it carried (a
        // delete meant to free space).
        let low = self
            .store()
            .space()
            .is_ok_and(|s| s.avail_bytes < LOW_SPACE);
        let released = low && self.store().release_reserve();
        if released {
            tracing::warn!("backing store nearly full: used the metadata reserve");
        }
        self.store_sync()?;
        if let Err(e) = self.meta.make_durable() {
            // The database goes back to its last durable commit (now, or when reopened).
            self.reset_open(st, true);
            return Err(e);
        }
        // (Read now, not at the top: commits made while the lock was released above count.)
        if st.since_durable {
            self.durable_epoch.fetch_add(1, Ordering::Relaxed);
        }
        st.since_durable = false;
        st.fresh_since_durable.clear();
        // No write-back started since the wait above: the state lock was held throughout.
        self.remove_dead_chunks()?;
        // Packs keep removed chunks as dead bytes: give back what is wholly dead now, and
        // compact packs that still hold live records when the device is nearly full or the
        // dead bytes are large next to the free space (the rule is in `PackStore::reclaim`):
        // a deleted file must make room again by the time this durable point returns.
        match self.store().reclaim(low) {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!("reclaimed {n} bytes of dead chunks");
                self.moved_packs();
            }
            Err(e) => {
                tracing::warn!("cannot reclaim the space of deleted chunks: {e}");
                // Packs compacted or deleted before the failure count all the same.
                self.moved_packs();
            }
        }
        if released {
            self.store().restore_reserve();
        }
        if let Some(f) = &self.cfg.on_durable {
            f(self.usage()?);
        }
        Ok(())
    }

    /// The store's sync. When it failed for good (a pack's fdatasync failed: nothing can be
    /// made durable any more), the volume refuses changes from then on (EROFS, as ext4 after
    /// an I/O error aborts its journal) instead of accepting writes that no fsync could keep
    /// and the unmount would drop.
    fn store_sync(&self) -> Result<()> {
        let synced = self.store().sync();
        if synced.is_err()
            && let Some(why) = self.store().packs().and_then(|p| p.sync_failure())
        {
            self.fence(&format!(
                "a sync of the packs failed ({why}): what was written since the last durable \
                 point may be lost and nothing more can be made durable; unmount and run \
                 `dedupfs fsck`"
            ));
        }
        synced
    }

    /// Removes chunk files that were created since the last durable commit and are already
    /// unreferenced again (a file written and deleted in between). Deleting a file that
    /// filled the disk thus frees its space before the durable commit that records it.
    /// Called with no write-back in flight.
    fn remove_fresh_dead_chunks(&self, st: &State) {
        if st.fresh_since_durable.is_empty() {
            return;
        }
        let Some(holders) = self.snaps.removal_holders() else {
            return;
        };
        let Ok(dead) = self.meta.begin_read().and_then(|r| r.zero_refs()) else {
            return;
        };
        let _exclusive = self.removal.write();
        for id in dead.iter().filter(|id| st.fresh_since_durable.contains(id)) {
            // (A chunk a snapshot names may have been stored again since the volume forgot it.)
            if !holders.holds(id) && self.store().remove(id).is_ok() {
                self.cache.forget(id);
            }
        }
    }

    /// Removes chunk files whose refcount is 0 in durable metadata, except those a snapshot
    /// names or one being written will (the volume forgets those; deleting the last snapshot
    /// that names one hands it back).
    /// No metadata group is open (the caller settled it and holds the state lock, or the
    /// filesystem is starting).
    pub(super) fn remove_dead_chunks(&self) -> Result<()> {
        let dead = self.meta.begin_read()?.zero_refs()?;
        if dead.is_empty() {
            return Ok(());
        }
        let Some(holders) = self.snaps.removal_holders() else {
            return Ok(());
        };
        let _exclusive = self.removal.write();
        let mut tx = self.meta.begin_write()?;
        for id in &dead {
            if !holders.holds(id) {
                self.store().remove(id)?;
                self.cache.forget(id);
            }
            tx.forget_chunk(id)?;
        }
        tx.commit(false)?;
        Ok(())
    }

    /// fsync(2): the file's data and metadata are durable when this returns. A file whose
    /// creation a failed commit dropped gets ESTALE: what was written to it is lost.
    pub fn fsync(&self, ino: Ino) -> Result<()> {
        let mut st = self.state.lock();
        let r = self.fsync_locked(&mut st, ino);
        // A failed commit lost writes made to this file (`reset_open`): reported once, by
        // this fsync, even when the rest is durable now; a failed fsync reports the newest
        // failure itself (the reset it owes may come later).
        let failures = st.failures;
        let Some(o) = st.open.get_mut(&ino) else {
            if r.is_err()
                && let Some(reported) = st.stale.get_mut(&ino)
            {
                // Its creation is gone: this error reports that (its close need not).
                *reported = true;
            }
            return r;
        };
        let lost = o.lost_at > o.told;
        if r.is_err() || lost {
            o.told = failures;
            o.wrote_since_told = false;
        }
        r?;
        if lost {
            return Err(FsError::Io(std::io::Error::other(
                "a failed metadata commit lost writes made to this file before this fsync",
            )));
        }
        Ok(())
    }

    fn fsync_locked(&self, st: &mut Guard<'_>, ino: Ino) -> Result<()> {
        self.writeback_reclaiming(st, ino, true)?;
        if st.open.contains_key(&ino) && self.view(st)?.inode(ino)?.is_none() {
            // Nothing was left to write back, so the write-back did not look.
            self.discard_gone(st, ino);
        }
        if st.stale.contains_key(&ino) {
            return Err(FsError::Stale);
        }
        self.make_durable_forced(st)?;
        // The lock was released inside (pre-sync, waits): a failed commit of another caller
        // may have dropped the file's creation meanwhile.
        if st.open.get(&ino).is_some_and(|o| o.gone_at.is_some()) || st.stale.contains_key(&ino) {
            return Err(FsError::Stale);
        }
        Ok(())
    }

    /// Write-back that, on a full backing store, first reclaims what deleted files still
    /// hold (their chunks go only at a durable point) and then tries once more.
    pub(super) fn writeback_reclaiming(
        &self,
        st: &mut Guard<'_>,
        ino: Ino,
        final_: bool,
    ) -> Result<()> {
        match self.writeback(st, ino, final_) {
            Err(FsError::NoSpace) => {
                st.since_durable = true;
                self.make_durable(st)?;
                self.writeback(st, ino, final_)
            }
            other => other,
        }
    }

    /// fsyncdir(2), and sync of the whole volume.
    pub fn sync_dir(&self) -> Result<()> {
        let mut st = self.state.lock();
        // A file unlinked after its last close whose RELEASE has not arrived yet is deleted
        // by that release: let it come, so this durable point frees its space.
        self.wait_closing_unlinked(&mut st);
        self.make_durable_forced(&mut st)
    }

    /// Writes back every file and commits durably. `final_` also cuts the trailing partial
    /// chunk of files still being written (unmount); the periodic flusher keeps those tails
    /// in memory so a streaming writer's chunks do not depend on flush timing.
    pub fn sync_all(&self, final_: bool) -> Result<()> {
        let mut st = self.state.lock();
        let inos: Vec<Ino> = st.open.keys().copied().collect();
        let mut first_err = None;
        for ino in inos {
            let final_here = final_ || st.open.get(&ino).is_some_and(|o| o.opens == 0);
            if let Err(e) = self.writeback(&mut st, ino, final_here) {
                tracing::error!(ino, "write-back failed: {e}");
                first_err.get_or_insert(e);
            }
        }
        st.open.retain(|_, o| !o.idle());
        self.make_durable(&mut st)?;
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Runs `f` (a maintenance command such as gc or a read-only fsck) against this volume's
    /// own metadata and store, with every write-back finished, everything durable, and no
    /// other operation, read or chunk removal running until it returns.
    pub fn with_quiesced<T>(
        &self,
        f: impl FnOnce(&MetaDb, &dyn ChunkStore) -> Result<T>,
    ) -> Result<T> {
        let mut st = self.state.lock();
        // make_durable waits for write-backs in flight; the lock is then held until `f` ends.
        st.since_durable = true;
        self.make_durable(&mut st)?;
        let _exclusive = self.removal.write();
        let out = f(&self.meta, self.store().as_ref());
        // fsck --verify-data reads every chunk file: pages it brought back from the disk are
        // resident now without having been verified by the cache, so the memo must not vouch
        // for them.
        self.cache.forget_verified();
        // gc may have compacted packs away: mappings the cache holds would keep their space
        // allocated (an unlinked file lives while mapped).
        self.cache.drop_mapped();
        out
    }

    /// Drops the chunk cache's mappings of pack files (a remote volume evicted packs: their
    /// space comes back once nothing maps them).
    pub fn drop_mapped_chunks(&self) {
        self.cache.drop_mapped();
    }

    /// One bounded step of background compaction (the flusher calls it between durable
    /// points). Runs without the state lock: compaction only moves chunks between packs.
    /// Nothing on a read-only or fenced mount: it changes nothing in its store.
    pub fn compact_step(&self) -> Result<u64> {
        if self.writable().is_err() {
            return Ok(0);
        }
        let freed = self.store().compact_step().inspect_err(|_| {
            // Packs compacted before the failure moved chunks all the same.
            self.packs_moved.store(true, Ordering::Relaxed);
        })?;
        if freed > 0 {
            tracing::debug!("background compaction freed {freed} bytes");
            self.moved_packs();
        }
        Ok(freed)
    }

    /// Compaction moved chunks and deleted packs: the next durable point is a change (a
    /// publication must name the new packs), and cached slices of deleted packs are unmapped
    /// (a mapping would keep a deleted pack's space allocated).
    fn moved_packs(&self) {
        self.packs_moved.store(true, Ordering::Relaxed);
        self.cache.drop_mapped();
    }

    /// syncfs(2) for the whole volume (`dedupfs sync`; the kernel does not forward sync(2) or
    /// syncfs(2) to a FUSE filesystem): when this returns, everything written so far is
    /// durable, including the tail chunk of files still open for writing (as `fsync` of each
    /// file would). On a full backing store the durable point inside `sync_all` has already
    /// freed what deleted files held, so one more attempt is made, as `fsync` does.
    pub fn sync_fs(&self) -> Result<()> {
        match self.sync_all(true) {
            Err(FsError::NoSpace) => self.sync_all(true),
            other => other,
        }
    }

    /// A read snapshot of exactly the durable state, for a metadata backup: everything
    /// committed so far is made durable (the chunk store first), and the snapshot is taken
    /// before the state lock is released, so no later commit is in it and every chunk it
    /// names is durable.
    /// Also returns the durable epoch the snapshot is of. With nothing committed since the
    /// last durable point that point is the snapshot's and the epoch does not move (a remote
    /// volume publishes when it moved: the backup at unmount, right after a sync, made it
    /// publish the same metadata again).
    pub fn durable_snapshot(&self) -> Result<(meta::RTx, u64)> {
        let mut st = self.state.lock();
        self.make_durable(&mut st)?;
        Ok((self.meta.begin_read()?, self.durable_epoch()))
    }

    /// [`Fs::durable_snapshot`], also running `with` at that same durable point, under the
    /// state lock (a remote volume takes its read snapshot of the pack index there, so that
    /// the two snapshots agree).
    pub fn durable_snapshot_with<T>(
        &self,
        with: impl FnOnce() -> Result<T>,
    ) -> Result<(meta::RTx, T)> {
        let mut st = self.state.lock();
        self.make_durable_forced(&mut st)?;
        Ok((self.meta.begin_read()?, with()?))
    }

    /// Durable commits made since the filesystem was opened.
    pub fn durable_epoch(&self) -> u64 {
        self.durable_epoch.load(Ordering::Relaxed)
    }
}

impl Drop for Fs {
    /// Commits that no durable point covered (a final sync that failed, or none was made) may
    /// name chunks the store never synced: they must not become durable through redb's clean
    /// shutdown. They are dropped, as a crash would drop them.
    fn drop(&mut self) {
        let st = self.state.get_mut();
        if st.since_durable || st.pending.is_some() {
            if !self.cfg.read_only {
                tracing::warn!(
                    "closing with changes that were never made durable: they are dropped, as in a crash"
                );
            }
            self.meta.abandon();
        }
    }
}
