//! In-memory chunk store, for tests and for driving the core without a disk.

use super::{ChunkBytes, ChunkStore, SpaceUsage};
use crate::error::{FsError, Result};
use crate::hash::ChunkId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Default)]
pub struct MemoryStore {
    chunks: Mutex<HashMap<ChunkId, Arc<Vec<u8>>>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    pub fn len(&self) -> usize {
        self.chunks.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ChunkStore for MemoryStore {
    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<()> {
        self.chunks.lock().insert(*id, Arc::new(data.to_vec()));
        Ok(())
    }

    fn get(&self, id: &ChunkId) -> Result<ChunkBytes> {
        self.chunks
            .lock()
            .get(id)
            .map(|v| ChunkBytes::Owned(v.clone()))
            .ok_or(FsError::MissingChunk { id: *id })
    }

    fn remove(&self, id: &ChunkId) -> Result<()> {
        self.chunks.lock().remove(id);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn for_each(&self, f: &mut dyn FnMut(ChunkId)) -> Result<()> {
        let ids: Vec<ChunkId> = self.chunks.lock().keys().copied().collect();
        ids.into_iter().for_each(f);
        Ok(())
    }

    fn space(&self) -> Result<SpaceUsage> {
        let used: u64 = self.chunks.lock().values().map(|v| v.len() as u64).sum();
        let total = 1u64 << 40;
        Ok(SpaceUsage {
            total_bytes: total,
            free_bytes: total - used,
            avail_bytes: total - used,
        })
    }
}
