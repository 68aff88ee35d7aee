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
pub mod codec;
pub mod compact;
pub mod failing;
pub mod fault;
pub mod local_dir;
pub mod memory;
pub mod pack;
pub mod pack_index;
pub mod pack_store;
pub mod remote;

use crate::error::Result;
use crate::hash::ChunkId;
use std::ops::Deref;
use std::sync::Arc;

pub use cache::ChunkCache;
pub use failing::FailingStore;
pub use local_dir::LocalDirStore;
pub use memory::MemoryStore;
pub use pack_store::PackStore;

/// Bytes of one chunk as loaded from a store: mapped from a file, or owned.
pub enum ChunkBytes {
    Mapped(cache::MappedChunk),
    Owned(Arc<Vec<u8>>),
}

impl ChunkBytes {
    /// The bytes as a vector of their own (no copy when owned and not shared).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            ChunkBytes::Owned(v) => Arc::try_unwrap(v).unwrap_or_else(|v| v.to_vec()),
            ChunkBytes::Mapped(m) => m.bytes().to_vec(),
        }
    }
}

impl Deref for ChunkBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ChunkBytes::Mapped(m) => m.bytes(),
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

/// What a store's data takes, beyond the chunk figures metadata keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreUsage {
    /// Bytes of live chunks as stored (after compression, record headers excluded).
    pub stored_bytes: u64,
    /// Bytes of the store's data files (packs, including dead records).
    pub disk_bytes: u64,
    /// Bytes of packs no live chunk uses (reclaimed by compaction).
    pub dead_bytes: u64,
    pub packs: u64,
}

/// Space figures of the filesystem holding `dir`.
pub fn space_of(dir: &std::fs::File) -> Result<SpaceUsage> {
    let st = rustix::fs::fstatvfs(dir).map_err(std::io::Error::from)?;
    Ok(SpaceUsage {
        total_bytes: st.f_blocks * st.f_frsize,
        free_bytes: st.f_bfree * st.f_frsize,
        avail_bytes: st.f_bavail * st.f_frsize,
    })
}

/// Makes `path` a file of `bytes` really allocated bytes (the reserve given back on a nearly
/// full device), unless it exists. No room (or no fallocate): no reserve rather than a sparse
/// pretend one.
pub fn make_reserve(path: &std::path::Path, bytes: u64) {
    if path.exists() {
        return;
    }
    let made = std::fs::File::create(path).and_then(|f| {
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, bytes)
            .map_err(std::io::Error::from)
    });
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
}

pub trait ChunkStore: Send + Sync {
    /// Stores `data` under `id`, replacing any file of that name (a damaged copy is repaired
    /// this way). Not durable until [`ChunkStore::sync`].
    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<()>;
    /// How chunks of this store are named (keyed for an encrypted volume): every computation
    /// or check of a chunk id from its bytes goes through it.
    fn hasher(&self) -> crate::hash::Hasher {
        crate::hash::Hasher::PLAIN
    }
    /// Loads a chunk's bytes, unverified (the cache verifies). Missing is `MissingChunk`.
    fn get(&self, id: &ChunkId) -> Result<ChunkBytes>;
    /// The bytes `get` served for `id` failed their hash or length: reads them again where a
    /// cached copy may have been damaged (a remote pack's range cache). `None`: no other
    /// source (the damage is in the store).
    fn get_again(&self, id: &ChunkId) -> Result<Option<ChunkBytes>> {
        let _ = id;
        Ok(None)
    }
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
    /// The length of chunk `id` as stored, checked without reading its data where the store
    /// can (fsck without `--verify-data`). Missing is `MissingChunk`.
    fn stat(&self, id: &ChunkId) -> Result<u64> {
        Ok(self.get(id)?.len() as u64)
    }
    /// Stored, on-disk and dead bytes (zero where the store does not know them).
    fn usage(&self) -> Result<StoreUsage> {
        Ok(StoreUsage::default())
    }
    /// The pack store behind this one, for pack maintenance (compaction, verification).
    fn packs(&self) -> Option<&PackStore> {
        None
    }
    /// Gives the space of removed chunks back to the device where the store keeps dead bytes
    /// (packs): deletes packs no live chunk uses, and with `low_space` (or when the store finds
    /// the device nearly full, or the dead bytes large next to the free space) also compacts
    /// packs whose dead share is high. Returns the bytes freed. Called after every durable
    /// point, with no write-back in flight.
    fn reclaim(&self, low_space: bool) -> Result<u64> {
        let _ = low_space;
        Ok(0)
    }
    /// A bounded step of background compaction, when dead bytes are worth it. Returns the
    /// bytes freed. Needs no lock of the caller: it runs beside reads and writes.
    fn compact_step(&self) -> Result<u64> {
        Ok(0)
    }
}
