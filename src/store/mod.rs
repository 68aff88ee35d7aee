//! The chunk store: immutable blobs named by their blake3 hash.
//!
//! Behind the [`ChunkStore`] trait are a local-directory store (the real one), an in-memory
//! store and a fault-injecting wrapper for tests; `tests/store_contract.rs` runs one contract
//! suite against each. The store knows nothing of inodes or files: it keeps bytes by name.
//!
//! Contract: `put` may return before the bytes are durable; `sync` makes every earlier `put`
//! durable. The metadata layer calls `sync` before committing durably any metadata that
//! references a chunk (the crash-ordering invariant, see docs/design.md).

pub mod cache;
pub mod failing;
pub mod local_dir;
pub mod memory;

use crate::error::Result;
use crate::hash::ChunkId;
use std::ops::Deref;
use std::sync::Arc;

pub use cache::ChunkCache;
pub use failing::FailingStore;
pub use local_dir::LocalDirStore;
pub use memory::MemoryStore;

/// Bytes of one chunk as loaded from a store: mapped from a file, or owned.
pub enum ChunkBytes {
    Mapped(cache::MappedChunk),
    Owned(Arc<Vec<u8>>),
}

impl Deref for ChunkBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ChunkBytes::Mapped(m) => &m.map,
            ChunkBytes::Owned(v) => v,
        }
    }
}

/// Space on the device that holds the store.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpaceUsage {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub avail_bytes: u64,
}

pub trait ChunkStore: Send + Sync {
    /// Stores `data` under `id`, replacing any file of that name (a damaged copy is repaired
    /// this way). Not durable until [`ChunkStore::sync`].
    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<()>;
    /// Loads a chunk's bytes, unverified (the cache verifies). Missing is `MissingChunk`.
    fn get(&self, id: &ChunkId) -> Result<ChunkBytes>;
    /// Removes a chunk; removing a missing chunk is not an error.
    fn remove(&self, id: &ChunkId) -> Result<()>;
    /// Makes every earlier `put` and `remove` durable.
    fn sync(&self) -> Result<()>;
    /// Calls `f` with every chunk id present, in no particular order.
    fn for_each(&self, f: &mut dyn FnMut(ChunkId)) -> Result<()>;
    /// Space on the backing device.
    fn space(&self) -> Result<SpaceUsage>;
    /// Gives back the space held in reserve for metadata commits on a nearly full device;
    /// false when there is none.
    fn release_reserve(&self) -> bool {
        false
    }
    /// Takes the reserve again (when space allows).
    fn restore_reserve(&self) {}
}
