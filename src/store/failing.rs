//! Fault-injecting chunk store: wraps another store and fails chosen operations, so tests can
//! check that the filesystem core reports the error, stays consistent and recovers.

use super::{ChunkBytes, ChunkStore, SpaceUsage};
use crate::error::{FsError, Result};
use crate::hash::ChunkId;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub struct FailingStore {
    inner: Arc<dyn ChunkStore>,
    puts: AtomicU64,
    syncs: AtomicU64,
    /// Fail the put with this 1-based index (0 = never).
    fail_put_at: AtomicU64,
    /// Fail the sync with this 1-based index (0 = never).
    fail_sync_at: AtomicU64,
    /// While set, every put fails with ENOSPC (a full disk).
    full: AtomicBool,
}

impl FailingStore {
    pub fn new(inner: Arc<dyn ChunkStore>) -> FailingStore {
        FailingStore {
            inner,
            puts: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            fail_put_at: AtomicU64::new(0),
            fail_sync_at: AtomicU64::new(0),
            full: AtomicBool::new(false),
        }
    }

    /// The `n`-th put from now fails with EIO.
    pub fn fail_nth_put(&self, n: u64) {
        self.fail_put_at
            .store(self.puts.load(Ordering::SeqCst) + n, Ordering::SeqCst);
    }

    /// The `n`-th sync from now fails with EIO.
    pub fn fail_nth_sync(&self, n: u64) {
        self.fail_sync_at
            .store(self.syncs.load(Ordering::SeqCst) + n, Ordering::SeqCst);
    }

    pub fn set_full(&self, full: bool) {
        self.full.store(full, Ordering::SeqCst);
    }

    pub fn puts(&self) -> u64 {
        self.puts.load(Ordering::SeqCst)
    }
}

fn injected() -> FsError {
    FsError::Io(io::Error::other("injected fault"))
}

impl ChunkStore for FailingStore {
    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<()> {
        let n = self.puts.fetch_add(1, Ordering::SeqCst) + 1;
        if self.full.load(Ordering::SeqCst) {
            return Err(FsError::NoSpace);
        }
        if n == self.fail_put_at.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.inner.put(id, data)
    }

    fn get(&self, id: &ChunkId) -> Result<ChunkBytes> {
        self.inner.get(id)
    }

    fn remove(&self, id: &ChunkId) -> Result<()> {
        self.inner.remove(id)
    }

    fn sync(&self) -> Result<()> {
        let n = self.syncs.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fail_sync_at.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.inner.sync()
    }

    fn for_each(&self, f: &mut dyn FnMut(ChunkId)) -> Result<()> {
        self.inner.for_each(f)
    }

    fn space(&self) -> Result<SpaceUsage> {
        self.inner.space()
    }

    fn stat(&self, id: &ChunkId) -> Result<u64> {
        self.inner.stat(id)
    }

    fn usage(&self) -> Result<super::StoreUsage> {
        self.inner.usage()
    }

    fn packs(&self) -> Option<&super::PackStore> {
        self.inner.packs()
    }

    fn reclaim(&self, low_space: bool) -> Result<u64> {
        self.inner.reclaim(low_space)
    }

    fn compact_step(&self) -> Result<u64> {
        self.inner.compact_step()
    }
}
