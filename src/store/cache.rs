//! Bounded LRU of verified chunk bytes, and the crate's only `unsafe`: mapping chunk files.
//!
//! Invariant: a chunk enters the cache only after its length and blake3 hash were checked, so
//! a cached chunk is always the bytes its name promises. A bad chunk is never cached; every
//! read of it returns an error and logs the chunk id.

use super::{ChunkBytes, ChunkStore};
use crate::error::{FsError, Result};
use crate::hash::ChunkId;
use lru::LruCache;
use parking_lot::Mutex;
use std::fs::File;
use std::sync::Arc;

/// Maps a chunk file read-only.
pub fn map_chunk_file(file: &File) -> std::io::Result<ChunkBytes> {
    let len = file.metadata()?.len();
    if len == 0 {
        // mmap of an empty file fails; an empty chunk file is damage the caller reports.
        return Ok(ChunkBytes::Owned(Arc::new(Vec::new())));
    }
    // SAFETY: chunk files are written to a temporary name, then renamed into place and never
    // modified again (docs/design.md, "Chunk files"); a repair replaces the file by rename, which
    // leaves this mapping on the old inode. Only someone editing the store by hand could change
    // the bytes under us; the hash check on load catches damage done before that point.
    // MAP_POPULATE: a chunk is hashed in full right after mapping, so fault it in with one
    // read-ahead instead of a page fault per 4 KiB.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(file)? };
    Ok(ChunkBytes::Mapped(map))
}

struct Lru {
    map: LruCache<ChunkId, Arc<ChunkBytes>>,
    bytes: usize,
}

/// Cache of verified chunks, bounded by total bytes.
pub struct ChunkCache {
    store: Arc<dyn ChunkStore>,
    lru: Mutex<Lru>,
    capacity: usize,
}

impl ChunkCache {
    pub fn new(store: Arc<dyn ChunkStore>, capacity_bytes: usize) -> ChunkCache {
        ChunkCache {
            store,
            lru: Mutex::new(Lru {
                map: LruCache::unbounded(),
                bytes: 0,
            }),
            capacity: capacity_bytes,
        }
    }

    pub fn store(&self) -> &Arc<dyn ChunkStore> {
        &self.store
    }

    /// Verified bytes of chunk `id`, which metadata says is `len` bytes long.
    pub fn get(&self, id: &ChunkId, len: u64) -> Result<Arc<ChunkBytes>> {
        if let Some(hit) = self.lru.lock().map.get(id) {
            return Ok(hit.clone());
        }
        let bytes = self.store.get(id).inspect_err(|e| {
            tracing::error!(chunk = %id, "cannot load chunk: {e}");
        })?;
        if bytes.len() as u64 != len {
            tracing::error!(chunk = %id, expected = len, actual = bytes.len(), "chunk has the wrong length");
            return Err(FsError::ChunkLength {
                id: *id,
                expected: len,
                actual: bytes.len() as u64,
            });
        }
        if ChunkId::of(&bytes) != *id {
            tracing::error!(chunk = %id, "chunk content does not match its hash; refusing to serve it");
            return Err(FsError::CorruptChunk { id: *id });
        }
        let bytes = Arc::new(bytes);
        self.insert(*id, bytes.clone());
        Ok(bytes)
    }

    /// Inserts bytes known to be correct (just written by us).
    pub fn insert(&self, id: ChunkId, bytes: Arc<ChunkBytes>) {
        let mut lru = self.lru.lock();
        let n = bytes.len();
        if n > self.capacity {
            return;
        }
        if let Some(old) = lru.map.put(id, bytes) {
            lru.bytes -= old.len();
        }
        lru.bytes += n;
        while lru.bytes > self.capacity {
            match lru.map.pop_lru() {
                Some((_, old)) => lru.bytes -= old.len(),
                None => break,
            }
        }
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.lru.lock().map.contains(id)
    }

    /// Forgets a chunk (it was removed from the store).
    pub fn forget(&self, id: &ChunkId) {
        let mut lru = self.lru.lock();
        if let Some(old) = lru.map.pop(id) {
            lru.bytes -= old.len();
        }
    }

    pub fn cached_bytes(&self) -> usize {
        self.lru.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn corrupt_chunk_is_an_error_and_never_cached() {
        let store = Arc::new(MemoryStore::new());
        let good = b"good bytes".to_vec();
        let id = ChunkId::of(&good);
        store.put(&id, b"evil bytes").unwrap();
        let cache = ChunkCache::new(store.clone(), 1 << 20);
        assert!(matches!(
            cache.get(&id, 10),
            Err(FsError::CorruptChunk { .. })
        ));
        assert_eq!(cache.cached_bytes(), 0);
        store.put(&id, &good).unwrap();
        assert_eq!(&**cache.get(&id, 10).unwrap(), &good[..]);
    }

    #[test]
    fn cache_stays_within_its_byte_budget() {
        let store = Arc::new(MemoryStore::new());
        let cache = ChunkCache::new(store.clone(), 1000);
        for i in 0..50u32 {
            let data = vec![i as u8; 100];
            let id = ChunkId::of(&data);
            store.put(&id, &data).unwrap();
            cache.get(&id, 100).unwrap();
            assert!(cache.cached_bytes() <= 1000);
        }
    }
}
