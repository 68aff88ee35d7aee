//! Bounded LRU of verified chunk bytes, and the crate's only `unsafe`: mapping chunk files.
//!
//! Invariant: a chunk enters the cache only after its length and blake3 hash were checked, so
//! a cached chunk is always the bytes its name promises. A bad chunk is never cached; every
//! read of it returns an error and logs the chunk id.
//!
//! Re-verification memo: a chunk evicted from the LRU and mapped again is not hashed again
//! when (a) its file is the same one, unchanged, as when it was last verified (same device,
//! inode, size, mtime and ctime: any write through the kernel changes ctime) and (b) every
//! page of it is still in the page cache (`mincore`), so no byte of it came from the disk
//! since it was hashed. Pages read back from the disk are always hashed again.

use super::{ChunkBytes, ChunkStore};
use crate::error::{FsError, Result};
use crate::hash::ChunkId;
use lru::LruCache;
use parking_lot::Mutex;
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

/// Chunks whose last verification the memo remembers (~100 bytes each).
const MEMO_ENTRIES: usize = 1 << 16;
/// Most chunks the cache holds, whatever their size: each mapped one is a kernel mapping, and
/// a process gets 65530 of them by default (vm.max_map_count); past that, mmap fails.
const MAX_ENTRIES: usize = 32 << 10;
/// Chunk files smaller than this are read into memory rather than mapped: a mapping costs a
/// whole page and one of the process's limited mappings, and a read is cheaper for them.
const MAP_MIN: u64 = 16 << 10;

/// Which file, in which state, a mapping was made from, and which range of it a chunk is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// Offset of the chunk in the file (0 for a loose chunk file).
    offset: u64,
}

impl FileStamp {
    fn of(md: &std::fs::Metadata, offset: u64) -> FileStamp {
        FileStamp {
            dev: md.dev(),
            ino: md.ino(),
            len: md.len(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
            offset,
        }
    }
}

/// A read-only mapping of a whole file: a loose chunk file, or a pack.
pub struct FileMap {
    map: memmap2::Mmap,
    /// The file mapped: stat'ed again for every chunk taken from the mapping, so the
    /// re-verification memo sees any change made to it since (ctime).
    file: File,
}

impl FileMap {
    /// Maps all of `file` read-only.
    pub fn new(file: File) -> std::io::Result<FileMap> {
        FileMap::with_room(file, 0)
    }

    /// Maps `file` read-only, at least `min_len` bytes of it: a pack still being appended to
    /// is mapped once with room to grow, instead of again (and with another mapping) each time
    /// a reader needs a record past the end of the last mapping.
    pub fn with_room(file: File, min_len: u64) -> std::io::Result<FileMap> {
        let len = file.metadata()?.len().max(min_len);
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        // SAFETY: the files mapped here are loose chunk files, packs and the block files of a
        // remote volume's range cache. Block files, like loose chunk files, are written under a
        // temporary name, renamed into place and never written again (eviction and a refetch
        // unlink them: remote/range_cache.rs). Loose chunk files are
        // written under a temporary name (or as an anonymous file), linked into place and never
        // modified again (docs/design.md, "Chunk files"); a repair replaces the file by rename,
        // which leaves this mapping on the old inode. Packs are append-only: bytes below the
        // length mapped here are never rewritten, and a pack is truncated (torn tail) only when
        // the store opens, before anything maps it; compaction unlinks a pack, which leaves
        // existing mappings valid (docs/design.md, "Pack files"). Only someone editing the store
        // by hand could change the bytes under us; the hash check on load catches damage done
        // before that point. A mapping may reach past the end of the file (room to grow):
        // touching such a page would raise SIGBUS, so `chunk` hands out only ranges that lie
        // within the file's current length (a record is complete before anyone reads it).
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(&file)? };
        Ok(FileMap { map, file })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// All mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Asks the kernel to read `[start, start+len)` ahead (a cold sequential read then turns
    /// into large reads of the file instead of a fault per page).
    pub fn will_need(&self, start: usize, len: usize) {
        let page = rustix::param::page_size();
        let s = start / page * page;
        let e = (start + len).min(self.map.len());
        if e > s {
            let _ = self.map.advise_range(memmap2::Advice::WillNeed, s, e - s);
        }
    }

    /// Bytes `[start, start+len)` as a chunk (the caller checked the range).
    pub fn chunk(self: &Arc<Self>, start: usize, len: usize) -> std::io::Result<MappedChunk> {
        let md = self.file.metadata()?;
        let end = start.checked_add(len).filter(|&e| e <= self.map.len());
        if end.is_none_or(|e| e as u64 > md.len()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "bytes {start}..{} lie past the end of the file ({} bytes)",
                    start.saturating_add(len),
                    md.len()
                ),
            ));
        }
        let resident = all_resident(&self.map, start, len);
        if !resident {
            // The whole chunk is about to be hashed: one read-ahead instead of a fault per page.
            self.will_need(start, len);
        }
        Ok(MappedChunk {
            file: self.clone(),
            start,
            len,
            stamp: FileStamp::of(&md, start as u64),
            resident,
            transient: false,
        })
    }
}

/// A chunk: a range of a mapped file.
pub struct MappedChunk {
    file: Arc<FileMap>,
    start: usize,
    len: usize,
    stamp: FileStamp,
    /// Every page was in the page cache when it was mapped.
    resident: bool,
    /// A slice of a range-cache block file (evicted and re-created at will): the memo never
    /// vouches for it (a re-created block can reuse the inode and, with coarse timestamps,
    /// the whole stamp), and the chunk cache keeps a copy, not the mapping (which would keep
    /// the block file allocated, and a descriptor open, after its eviction).
    transient: bool,
}

impl MappedChunk {
    /// Every page was in the page cache when the chunk was taken from the mapping.
    pub fn is_resident(&self) -> bool {
        self.resident
    }

    pub fn bytes(&self) -> &[u8] {
        &self.file.map[self.start..self.start + self.len]
    }

    /// Marks a slice of a range-cache block (see `transient`).
    pub fn transient(mut self) -> MappedChunk {
        self.transient = true;
        self
    }
}

/// Maps a chunk file read-only.
pub fn map_chunk_file(file: File) -> std::io::Result<ChunkBytes> {
    let len = file.metadata()?.len();
    if len < MAP_MIN {
        // Also an empty file, which mmap refuses (and the caller reports as damage).
        let mut buf = Vec::with_capacity(len as usize);
        std::io::Read::read_to_end(&mut &file, &mut buf)?;
        return Ok(ChunkBytes::Owned(Arc::new(buf)));
    }
    let map = Arc::new(FileMap::new(file)?);
    Ok(ChunkBytes::Mapped(map.chunk(0, len as usize)?))
}

/// Write-behind of a file written once and read later, if at all (pack files): starts the
/// write-out of `start` (asynchronous), then waits until `settle` is on the disk and drops
/// its pages from the page cache. Pages a mapping uses stay. This makes no data durable (no
/// device cache flush, no metadata); `fdatasync` still does that. An error of the wait is
/// returned and must be treated like a failed fdatasync: waiting consumes the file's
/// write-back error (errseq), so the next fdatasync would not report it; the pages are then
/// kept.
///
/// Why: page-cache pages of new data are fresh memory, and in a VM whose balloon reports free
/// memory to the host (virtio free page reporting) each one first touched costs a host fault:
/// buffered writes of 1 GiB took 4-5 s of system time there, 0.4-0.5 s when the written pages
/// were dropped every 64 MiB and so reused (docs/design.md, "Write-behind").
pub fn write_behind(
    file: &File,
    start: std::ops::Range<u64>,
    settle: std::ops::Range<u64>,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let span = |r: &std::ops::Range<u64>| {
        (
            i64::try_from(r.start).unwrap_or(i64::MAX),
            i64::try_from(r.end.saturating_sub(r.start)).unwrap_or(0),
        )
    };
    if !start.is_empty() {
        let (off, len) = span(&start);
        // SAFETY: sync_file_range(2) takes a descriptor (valid: borrowed from `file` for the
        // call), two integers and flags; it touches no memory of ours.
        unsafe { libc::sync_file_range(fd, off, len, libc::SYNC_FILE_RANGE_WRITE) };
    }
    if !settle.is_empty() {
        let (off, len) = span(&settle);
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: as above.
        if unsafe { libc::sync_file_range(fd, off, len, flags) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let _ = rustix::fs::fadvise(
            file,
            settle.start,
            std::num::NonZeroU64::new(settle.end - settle.start),
            rustix::fs::Advice::DontNeed,
        );
    }
    Ok(())
}

/// Is every page of `map[start..start+len]` in the page cache?
fn all_resident(map: &memmap2::Mmap, start: usize, len: usize) -> bool {
    let page = rustix::param::page_size();
    let s = start / page * page;
    let e = (start + len).min(map.len());
    if e <= s {
        return true;
    }
    let mut vec = vec![0u8; (e - s).div_ceil(page)];
    // SAFETY: `map` is a live mapping of `map.len()` bytes starting at a page boundary (mmap
    // returns page-aligned addresses); `s` is a multiple of the page size and `e <= map.len()`,
    // so `[s, e)` lies inside it, and `vec` has one byte per page of that range, as mincore(2)
    // requires. mincore only writes into `vec`.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr().add(s) as *mut libc::c_void,
            e - s,
            vec.as_mut_ptr(),
        )
    };
    rc == 0 && vec.iter().all(|b| b & 1 == 1)
}

struct Lru {
    map: LruCache<ChunkId, Arc<ChunkBytes>>,
    bytes: usize,
}

/// Cache of verified chunks, bounded by total bytes and by count.
pub struct ChunkCache {
    store: Arc<dyn ChunkStore>,
    /// The store's chunk naming, which verification checks against.
    hasher: crate::hash::Hasher,
    lru: Mutex<Lru>,
    capacity: usize,
    /// The file each recently verified chunk was verified from (see the module comment).
    memo: Mutex<LruCache<ChunkId, FileStamp>>,
}

impl ChunkCache {
    pub fn new(store: Arc<dyn ChunkStore>, capacity_bytes: usize) -> ChunkCache {
        ChunkCache {
            hasher: store.hasher(),
            store,
            lru: Mutex::new(Lru {
                map: LruCache::unbounded(),
                bytes: 0,
            }),
            capacity: capacity_bytes,
            memo: Mutex::new(LruCache::new(
                NonZeroUsize::new(MEMO_ENTRIES).expect("non-zero"),
            )),
        }
    }

    pub fn store(&self) -> &Arc<dyn ChunkStore> {
        &self.store
    }

    /// How the store names chunks.
    pub fn hasher(&self) -> crate::hash::Hasher {
        self.hasher
    }

    /// Verified bytes of chunk `id`, which metadata says is `len` bytes long.
    pub fn get(&self, id: &ChunkId, len: u64) -> Result<Arc<ChunkBytes>> {
        self.load(id, len, true)
    }

    /// Loads chunk `id` into the cache ahead of a read (read-ahead). A chunk that cannot be
    /// loaded is not logged: the chunk may have been overwritten and removed since it was
    /// queued, and a reader that does ask for it gets (and logs) the error.
    pub fn prefetch(&self, id: &ChunkId, len: u64) {
        let _ = self.load(id, len, false);
    }

    fn load(&self, id: &ChunkId, len: u64, log_missing: bool) -> Result<Arc<ChunkBytes>> {
        if let Some(hit) = self.lru.lock().map.get(id) {
            return Ok(hit.clone());
        }
        let mut fetched_again = false;
        let mut bytes = match self.store.get(id) {
            Ok(b) => b,
            // Stored bytes that do not decompress: a damaged cached copy is fetched again.
            Err(FsError::CorruptChunk { .. }) if let Some(again) = self.store.get_again(id)? => {
                fetched_again = true;
                again
            }
            Err(e) => {
                if log_missing {
                    tracing::error!(chunk = %id, "cannot load chunk: {e}");
                } else {
                    tracing::debug!(chunk = %id, "read-ahead: cannot load chunk: {e}");
                }
                return Err(e);
            }
        };
        // Bytes from a cache of a remote pack (its range cache) are checked here only: when
        // they fail, the store fetches them again, once, and they are checked again.
        loop {
            let right_len = bytes.len() as u64 == len;
            let trusted = right_len
                && match &bytes {
                    ChunkBytes::Mapped(m) => {
                        !m.transient && m.resident && self.memo.lock().get(id) == Some(&m.stamp)
                    }
                    ChunkBytes::Owned(_) => false,
                };
            if trusted {
                break;
            }
            if right_len && self.hasher.id(&bytes) == *id {
                if let ChunkBytes::Mapped(m) = &bytes
                    && !m.transient
                {
                    self.memo.lock().put(*id, m.stamp);
                }
                break;
            }
            if !fetched_again {
                fetched_again = true;
                if let Some(again) = self.store.get_again(id)? {
                    bytes = again;
                    continue;
                }
            }
            self.memo.lock().pop(id);
            if !right_len {
                tracing::error!(chunk = %id, expected = len, actual = bytes.len(), "chunk has the wrong length");
                return Err(FsError::ChunkLength {
                    id: *id,
                    expected: len,
                    actual: bytes.len() as u64,
                });
            }
            tracing::error!(chunk = %id, "chunk content does not match its hash; refusing to serve it");
            return Err(FsError::CorruptChunk { id: *id });
        }
        let bytes = match bytes {
            ChunkBytes::Mapped(m) if m.transient => ChunkBytes::Owned(Arc::new(m.bytes().to_vec())),
            b => b,
        };
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
        while lru.bytes > self.capacity || lru.map.len() > MAX_ENTRIES {
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
        self.memo.lock().pop(id);
        let mut lru = self.lru.lock();
        if let Some(old) = lru.map.pop(id) {
            lru.bytes -= old.len();
        }
    }

    /// Forgets every verification (another reader, such as fsck, may have brought chunk
    /// pages back from the disk without the cache checking them).
    pub fn forget_verified(&self) {
        self.memo.lock().clear();
    }

    /// Drops every cached chunk that is a slice of a mapped file (packs compacted away stay
    /// allocated on the device while mapped). Chunks held in memory stay.
    pub fn drop_mapped(&self) {
        let mut lru = self.lru.lock();
        let mapped: Vec<ChunkId> = lru
            .map
            .iter()
            .filter(|(_, b)| matches!(***b, ChunkBytes::Mapped(_)))
            .map(|(id, _)| *id)
            .collect();
        for id in mapped {
            if let Some(old) = lru.map.pop(&id) {
                lru.bytes -= old.len();
            }
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
    fn chunk_file_changed_in_place_after_verification_is_caught() {
        // The memo skips re-hashing an unchanged, fully cached chunk file; a file edited in
        // place (same length) must be hashed again and refused.
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::LocalDirStore::open(dir.path()).unwrap());
        let good = vec![7u8; 100_000];
        let other = vec![9u8; 100_000];
        let id = ChunkId::of(&good);
        let id2 = ChunkId::of(&other);
        store.put(&id, &good).unwrap();
        store.put(&id2, &other).unwrap();
        let cache = ChunkCache::new(store.clone(), 150_000); // room for one chunk
        assert_eq!(&**cache.get(&id, 100_000).unwrap(), &good[..]);
        cache.get(&id2, 100_000).unwrap(); // evicts `id`
        assert!(!cache.contains(&id));
        assert_eq!(&**cache.get(&id, 100_000).unwrap(), &good[..], "unchanged");
        cache.get(&id2, 100_000).unwrap();
        let mut bad = good.clone();
        bad[50_000] ^= 1;
        std::fs::write(store.path_of(&id), &bad).unwrap();
        assert!(matches!(
            cache.get(&id, 100_000),
            Err(FsError::CorruptChunk { .. })
        ));
    }

    #[test]
    fn many_tiny_chunks_do_not_exhaust_the_mapping_limit() {
        // A byte budget alone would keep every tiny chunk mapped: 70k of them pass the
        // kernel's default limit of 65530 mappings per process and mmap starts failing.
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::LocalDirStore::open(dir.path()).unwrap());
        let cache = ChunkCache::new(store.clone(), 256 << 20);
        let n = 70_000u32;
        let ids: Vec<ChunkId> = (0..n)
            .map(|i| {
                let data = format!("tiny chunk {i}").into_bytes();
                let id = ChunkId::of(&data);
                store.put(&id, &data).unwrap();
                id
            })
            .collect();
        for (i, id) in ids.iter().enumerate() {
            let want = format!("tiny chunk {i}");
            let got = cache.get(id, want.len() as u64).unwrap();
            assert_eq!(&**got, want.as_bytes());
        }
    }

    #[test]
    fn cache_holds_a_bounded_number_of_chunks() {
        let store = Arc::new(MemoryStore::new());
        let cache = ChunkCache::new(store.clone(), 1 << 30);
        for i in 0..MAX_ENTRIES + 100 {
            let data = (i as u64).to_le_bytes();
            let id = ChunkId::of(&data);
            store.put(&id, &data).unwrap();
            cache.get(&id, 8).unwrap();
        }
        assert_eq!(cache.lru.lock().map.len(), MAX_ENTRIES);
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
