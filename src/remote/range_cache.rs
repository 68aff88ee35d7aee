//! A bounded local cache of byte ranges of packs whose local files were evicted: reads of a
//! remote volume's cold data fetch aligned blocks of the pack object once, and later reads of
//! the same block never touch the network.
//!
//! ```text
//! STORE/remote/cache/<pack id: 16 hex>-<block number: 8 hex>   BLOCK bytes (less at the end
//!                                                               of a pack)
//! ```
//!
//! A block file is written under a temporary name and renamed, without fsync: the cache is not
//! durable state. It is never written again once renamed into place (eviction and a refetch
//! unlink it), so reads map it: a chunk that lies within one block is served as a slice of the
//! mapping (`ChunkBytes::Mapped`, checked like a chunk of a local pack, with the same
//! re-verification memo), with no copy; a chunk across two blocks is copied out of both. A block of the wrong length (a crash left it short) is deleted and fetched
//! again. Its bytes are not hashed on every load: every chunk read from them is verified by its
//! blake3 above (the chunk cache), and a chunk that fails there is read again with
//! [`RangeCache::reread`], which drops the cached blocks under it and fetches them anew — so
//! the cache never serves bytes the bucket did not send, and a damaged block costs one fetch.
//! (Block files of session 7 carried a blake3 trailer: their length differs, so they are
//! fetched again once.)
//!
//! A miss fetches the missing blocks in one ranged GET; a miss right after the previous block
//! of the same pack (a sequential read) fetches `AHEAD` more blocks with it. Blocks are evicted
//! least recently used first once their bytes pass the limit.

use crate::error::{FsError, Result};
use crate::store::ChunkBytes;
use crate::store::cache::FileMap;
use lru::LruCache;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Block size: a random 4 KiB read costs one 1 MiB GET; a sequential read streams 16 MiB GETs.
pub const BLOCK: u64 = 1 << 20;
/// Extra blocks fetched by a sequential miss.
const AHEAD: u64 = 15;

struct State {
    /// (pack, block) -> bytes on disk, least recently used first out.
    lru: LruCache<(u64, u64), u64>,
    total: u64,
    /// Pack -> first block after its last fetch: a miss there is sequential.
    last_fetch: HashMap<u64, u64>,
}

/// (pack, block number).
type BlockKey = (u64, u64);

/// A block's bytes for one read: its cache file mapped, or in memory when it could not be
/// kept on disk (a full disk).
enum Block {
    Mapped(Arc<FileMap>),
    Held(Vec<u8>),
}

impl Block {
    fn bytes(&self) -> &[u8] {
        match self {
            Block::Mapped(m) => m.bytes(),
            Block::Held(v) => v,
        }
    }
}

/// Block files kept mapped, so that the chunks of one block (16 of 64 KiB in 1 MiB) do not
/// each open and map it again.
const HOT_BLOCKS: usize = 16;

pub struct RangeCache {
    dir: PathBuf,
    limit: u64,
    state: Mutex<State>,
    hot: Mutex<LruCache<BlockKey, Arc<FileMap>>>,
    /// One fetch per pack at a time: readers missing the same blocks (read-ahead threads of
    /// one file) wait for the first one's fetch instead of each fetching them again.
    fetching: Mutex<HashMap<u64, Arc<Mutex<()>>>>,
}

fn block_name(pack: u64, block: u64) -> String {
    format!("{pack:016x}-{block:08x}")
}

fn parse_block_name(name: &str) -> Option<(u64, u64)> {
    let (p, b) = name.split_once('-')?;
    if p.len() != 16 || b.len() != 8 {
        return None;
    }
    Some((
        u64::from_str_radix(p, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

/// Deletes the cached blocks of pack `pack` from the cache at `dir` (not open: `attach::
/// catch_up` runs before the volume is opened), best effort.
pub fn forget_pack(dir: &Path, pack: u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_str()
            .and_then(parse_block_name)
            .is_some_and(|(p, _)| p == pack)
        {
            let _ = fs::remove_file(e.path());
        }
    }
}

impl RangeCache {
    /// Opens (creating) the cache at `dir`, keeping at most `limit` bytes: blocks already there
    /// are kept, oldest evicted first; unfinished temporary files are removed.
    pub fn open(dir: &Path, limit: u64) -> Result<RangeCache> {
        fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            match parse_block_name(name) {
                Some(key) => {
                    let m = e.metadata()?;
                    found.push((m.modified().ok(), key, m.len()));
                }
                None if name.starts_with(".tmp-") => {
                    let _ = fs::remove_file(e.path());
                }
                None => {}
            }
        }
        found.sort();
        let mut state = State {
            lru: LruCache::unbounded(),
            total: 0,
            last_fetch: HashMap::new(),
        };
        for (_, key, len) in found {
            state.lru.put(key, len);
            state.total += len;
        }
        let cache = RangeCache {
            dir: dir.to_path_buf(),
            limit,
            state: Mutex::new(state),
            hot: Mutex::new(LruCache::new(
                NonZeroUsize::new(HOT_BLOCKS).expect("non-zero"),
            )),
            fetching: Mutex::new(HashMap::new()),
        };
        cache.evict_over_limit();
        Ok(cache)
    }

    /// Bytes the cache holds on disk.
    pub fn bytes(&self) -> u64 {
        self.state.lock().total
    }

    /// Bytes `range` of pack `pack` (whose object is `pack_len` bytes long), from cached blocks
    /// or fetched with `fetch(byte range of the object)`: a slice of a block file's mapping
    /// when the range lies within one block kept on disk, a copy otherwise.
    pub fn read(
        &self,
        pack: u64,
        pack_len: u64,
        range: Range<u64>,
        fetch: &dyn Fn(Range<u64>) -> Result<Vec<u8>>,
    ) -> Result<ChunkBytes> {
        if range.is_empty() {
            return Ok(ChunkBytes::Owned(Arc::new(Vec::new())));
        }
        let first = range.start / BLOCK;
        let last = (range.end - 1) / BLOCK;
        let last_block = pack_len.saturating_sub(1) / BLOCK;
        let block_len = |b: u64| (pack_len - b * BLOCK).min(BLOCK);
        let mut blocks: Vec<Option<Block>> = (first..=last)
            .map(|b| self.load(pack, b, block_len(b)).map(Block::Mapped))
            .collect();
        let fetch_lock = if blocks.iter().any(Option::is_none) {
            let lock = self.fetching.lock().entry(pack).or_default().clone();
            Some(lock)
        } else {
            None
        };
        let _fetching = fetch_lock.as_ref().map(|l| l.lock());
        if fetch_lock.is_some() {
            // Fetched by another reader while this one waited?
            for (k, b) in blocks.iter_mut().enumerate() {
                if b.is_none() {
                    let block = first + k as u64;
                    *b = self.load(pack, block, block_len(block)).map(Block::Mapped);
                }
            }
        }
        let mut i = 0;
        while i < blocks.len() {
            if blocks[i].is_some() {
                i += 1;
                continue;
            }
            // A run of missing blocks, fetched in one request.
            let mut j = i;
            while j + 1 < blocks.len() && blocks[j + 1].is_none() {
                j += 1;
            }
            let (a, b) = (first + i as u64, first + j as u64);
            let sequential = {
                let mut st = self.state.lock();
                let seq = st.last_fetch.get(&pack) == Some(&a);
                let mut end_block = b;
                // Ahead, up to the first block already cached.
                while seq
                    && end_block < (b + AHEAD).min(last_block)
                    && !st.lru.contains(&(pack, end_block + 1))
                {
                    end_block += 1;
                }
                if st.last_fetch.len() >= 4096 {
                    st.last_fetch.clear();
                }
                st.last_fetch.insert(pack, end_block + 1);
                end_block
            };
            let start = a * BLOCK;
            let end = ((sequential + 1) * BLOCK).min(pack_len);
            let data = fetch(start..end)?;
            for (k, piece) in data.chunks(BLOCK as usize).enumerate() {
                let block = a + k as u64;
                let kept = self.store(pack, block, piece);
                if block <= b {
                    blocks[(block - first) as usize] = Some(match kept {
                        Some(map) => Block::Mapped(map),
                        None => Block::Held(piece.to_vec()),
                    });
                }
            }
            i = j + 1;
        }
        // Where `range` lies in each block.
        let mut parts = Vec::with_capacity(blocks.len());
        for (k, data) in blocks.into_iter().enumerate() {
            let Some(data) = data else {
                return Err(FsError::Corrupt(format!(
                    "pack {pack:016x}: block {} was not read",
                    first + k as u64
                )));
            };
            let base = (first + k as u64) * BLOCK;
            let len = data.bytes().len() as u64;
            let from = range.start.max(base) - base;
            let to = (range.end.min(base + len)).saturating_sub(base);
            if from > to || to > len {
                return Err(FsError::Corrupt(format!(
                    "pack {pack:016x}: block {} is shorter than the range read",
                    first + k as u64
                )));
            }
            parts.push((data, from as usize..to as usize));
        }
        let total: usize = parts.iter().map(|(_, r)| r.len()).sum();
        if total as u64 != range.end - range.start {
            return Err(FsError::Corrupt(format!(
                "pack {pack:016x}: bytes {}..{} are past the end of the pack",
                range.start, range.end
            )));
        }
        if let [(Block::Mapped(map), r)] = &parts[..] {
            return Ok(ChunkBytes::Mapped(map.chunk(r.start, r.len())?.transient()));
        }
        let mut out = Vec::with_capacity(total);
        for (data, r) in &parts {
            out.extend_from_slice(&data.bytes()[r.clone()]);
        }
        Ok(ChunkBytes::Owned(Arc::new(out)))
    }

    /// Reads `range` with the cached blocks under it dropped and fetched anew (the bytes served
    /// for it failed their check above, or a rebuild must not trust them).
    pub fn reread(
        &self,
        pack: u64,
        pack_len: u64,
        range: Range<u64>,
        fetch: &dyn Fn(Range<u64>) -> Result<Vec<u8>>,
    ) -> Result<ChunkBytes> {
        if !range.is_empty() {
            for block in range.start / BLOCK..=(range.end - 1) / BLOCK {
                self.forget(pack, block);
            }
        }
        self.read(pack, pack_len, range, fetch)
    }

    /// A cached block of `len` bytes, mapped; `None` when absent or of another length (then
    /// removed). Not hashed here: see the module comment.
    fn load(&self, pack: u64, block: u64, len: u64) -> Option<Arc<FileMap>> {
        self.state.lock().lru.get(&(pack, block))?;
        if let Some(b) = self.hot.lock().get(&(pack, block)) {
            return Some(b.clone());
        }
        let path = self.dir.join(block_name(pack, block));
        let file = match fs::File::open(&path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            // Out of descriptors, an I/O error: the block stays; this read fetches it.
            Err(e) => {
                tracing::warn!(block = %path.display(), "cannot open cached block: {e}");
                return None;
            }
        };
        let found = file.is_some();
        // The mapping has the file's length (an empty file does not map).
        let map = file
            .and_then(|f| FileMap::new(f).ok())
            .filter(|m| m.len() as u64 == len);
        let Some(map) = map else {
            if found {
                tracing::warn!(block = %path.display(), "cached block has the wrong length; fetching it again");
            }
            self.forget(pack, block);
            return None;
        };
        // The block is read as a whole: one read-ahead of it rather than a fault (and a small
        // read) per chunk.
        map.will_need(0, len as usize);
        let map = Arc::new(map);
        self.hot.lock().put((pack, block), map.clone());
        Some(map)
    }

    fn forget(&self, pack: u64, block: u64) {
        self.hot.lock().pop(&(pack, block));
        let mut st = self.state.lock();
        if let Some(len) = st.lru.pop(&(pack, block)) {
            st.total -= len;
        }
        drop(st);
        let _ = fs::remove_file(self.dir.join(block_name(pack, block)));
    }

    /// Keeps a fetched block and returns its file mapped (best effort: `None` when it could
    /// not be kept, which a full disk causes; it only costs a later fetch).
    fn store(&self, pack: u64, block: u64, data: &[u8]) -> Option<Arc<FileMap>> {
        let name = block_name(pack, block);
        let tmp = self.dir.join(format!(
            ".tmp-{name}-{:x}",
            crate::remote::config::random_u64()
        ));
        let kept = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(data)?;
                let map = FileMap::new(f)?;
                fs::rename(&tmp, self.dir.join(&name))?;
                Ok(Arc::new(map))
            });
        let map = match kept {
            Ok(map) => map,
            Err(_) => {
                let _ = fs::remove_file(&tmp);
                return None;
            }
        };
        self.hot.lock().put((pack, block), map.clone());
        let mut st = self.state.lock();
        if let Some(old) = st.lru.put((pack, block), data.len() as u64) {
            st.total -= old;
        }
        st.total += data.len() as u64;
        drop(st);
        self.evict_over_limit();
        Some(map)
    }

    fn evict_over_limit(&self) {
        loop {
            let victim = {
                let mut st = self.state.lock();
                if st.total <= self.limit {
                    return;
                }
                match st.lru.pop_lru() {
                    Some((key, len)) => {
                        st.total -= len;
                        key
                    }
                    None => return,
                }
            };
            self.hot.lock().pop(&victim);
            let _ = fs::remove_file(self.dir.join(block_name(victim.0, victim.1)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn pack_bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn reads_exact_ranges_and_serves_them_again_without_fetching() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RangeCache::open(dir.path(), 64 << 20).unwrap();
        let pack = pack_bytes(5 * BLOCK as usize + 1234);
        let fetches = RefCell::new(Vec::new());
        let fetch = |r: Range<u64>| {
            fetches.borrow_mut().push(r.clone());
            Ok(pack[r.start as usize..r.end as usize].to_vec())
        };
        let len = pack.len() as u64;
        for r in [
            0..10,
            BLOCK - 5..BLOCK + 5,
            3 * BLOCK + 17..5 * BLOCK + 1000,
            len - 7..len,
        ] {
            let got = cache.read(9, len, r.clone(), &fetch).unwrap();
            assert_eq!(&*got, &pack[r.start as usize..r.end as usize], "{r:?}");
        }
        let n = fetches.borrow().len();
        for r in [0..BLOCK, BLOCK..2 * BLOCK + 3, len - 100..len] {
            let got = cache.read(9, len, r.clone(), &fetch).unwrap();
            assert_eq!(&*got, &pack[r.start as usize..r.end as usize]);
        }
        assert_eq!(
            fetches.borrow().len(),
            n,
            "cached blocks were fetched again"
        );
        assert!(cache.read(9, len, len - 1..len + 1, &fetch).is_err());
        // Within one block: a slice of the block file's mapping; across two: a copy.
        assert!(matches!(
            cache.read(9, len, 2 * BLOCK + 10..2 * BLOCK + 5000, &fetch),
            Ok(ChunkBytes::Mapped(_))
        ));
        assert!(matches!(
            cache.read(9, len, 2 * BLOCK - 10..2 * BLOCK + 10, &fetch),
            Ok(ChunkBytes::Owned(_))
        ));
    }

    #[test]
    fn blocks_that_cannot_be_kept_are_served_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RangeCache::open(&dir.path().join("cache"), 64 << 20).unwrap();
        fs::remove_dir_all(dir.path().join("cache")).unwrap();
        let pack = pack_bytes(3 * BLOCK as usize);
        let fetch = |r: Range<u64>| Ok(pack[r.start as usize..r.end as usize].to_vec());
        let len = pack.len() as u64;
        for r in [5..500, BLOCK - 3..BLOCK + 3, 0..len] {
            let got = cache.read(4, len, r.clone(), &fetch).unwrap();
            assert_eq!(&*got, &pack[r.start as usize..r.end as usize], "{r:?}");
        }
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn damaged_blocks_are_fetched_again_and_the_limit_holds() {
        let dir = tempfile::tempdir().unwrap();
        let pack = pack_bytes(8 * BLOCK as usize);
        let len = pack.len() as u64;
        let fetch = |r: Range<u64>| Ok(pack[r.start as usize..r.end as usize].to_vec());
        {
            let cache = RangeCache::open(dir.path(), 3 * BLOCK).unwrap();
            for b in 0..8 {
                cache
                    .read(1, len, b * BLOCK..b * BLOCK + 1, &fetch)
                    .unwrap();
                assert!(cache.bytes() <= 3 * BLOCK);
            }
        }
        // Cut every block file left (a crash): reopened, the cache fetches them again.
        for e in fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            let mut raw = fs::read(&p).unwrap();
            raw.truncate(raw.len() - 1);
            fs::write(&p, raw).unwrap();
        }
        let cache = RangeCache::open(dir.path(), 3 * BLOCK).unwrap();
        let got = cache.read(1, len, 7 * BLOCK..8 * BLOCK, &fetch).unwrap();
        assert_eq!(&*got, &pack[7 * BLOCK as usize..]);
        // A flipped byte is not seen here (the chunk hash above sees it): reread fetches the
        // blocks under the range anew, and later reads serve the good bytes.
        drop(cache);
        let p = dir.path().join(block_name(1, 7));
        let mut raw = fs::read(&p).unwrap();
        raw[100] ^= 1;
        fs::write(&p, raw).unwrap();
        let cache = RangeCache::open(dir.path(), 3 * BLOCK).unwrap();
        let bad = cache
            .read(1, len, 7 * BLOCK..7 * BLOCK + 200, &fetch)
            .unwrap();
        assert_ne!(&*bad, &pack[7 * BLOCK as usize..7 * BLOCK as usize + 200]);
        let good = cache
            .reread(1, len, 7 * BLOCK..7 * BLOCK + 200, &fetch)
            .unwrap();
        assert_eq!(&*good, &pack[7 * BLOCK as usize..7 * BLOCK as usize + 200]);
        let failing = |_: Range<u64>| Err(crate::error::FsError::Corrupt("offline".into()));
        assert_eq!(
            &*cache
                .read(1, len, 7 * BLOCK + 5..7 * BLOCK + 9, &failing)
                .unwrap(),
            &pack[7 * BLOCK as usize + 5..7 * BLOCK as usize + 9],
            "a block fetched again is served from the cache"
        );
        assert!(cache.read(1, len, 0..1, &failing).is_err());
    }

    /// Bytes `r` of a pack of noise (no two 64 KiB ranges alike), made without the rest.
    fn pack_range(r: Range<u64>) -> Vec<u8> {
        (r.start..r.end)
            .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
            .collect()
    }

    /// A store whose chunks are ranges of one remote pack read through a range cache.
    struct ThroughCache {
        cache: RangeCache,
        len: u64,
        at: HashMap<crate::hash::ChunkId, Range<u64>>,
    }

    impl crate::store::ChunkStore for ThroughCache {
        fn put(&self, _: &crate::hash::ChunkId, _: &[u8]) -> Result<()> {
            Ok(())
        }
        fn get(&self, id: &crate::hash::ChunkId) -> Result<ChunkBytes> {
            let r = self.at[id].clone();
            self.cache
                .read(1, self.len, r, &|r: Range<u64>| Ok(pack_range(r)))
        }
        fn remove(&self, _: &crate::hash::ChunkId) -> Result<()> {
            Ok(())
        }
        fn sync(&self) -> Result<()> {
            Ok(())
        }
        fn for_each(&self, _: &mut dyn FnMut(crate::hash::ChunkId)) -> Result<()> {
            Ok(())
        }
        fn space(&self) -> Result<crate::store::SpaceUsage> {
            Ok(crate::store::SpaceUsage::default())
        }
    }

    #[test]
    fn chunks_kept_by_the_chunk_cache_hold_no_block_file_open() {
        // A chunk cache entry that kept a slice of a block's mapping would keep the block
        // file open and, once evicted, allocated: 300 chunks in 300 blocks, a cache of 8
        // blocks, and the chunk cache holding them all.
        let dir = tempfile::tempdir().unwrap();
        let blocks = 300u64;
        let mut at = HashMap::new();
        for b in 0..blocks {
            let r = b * BLOCK + 4096..b * BLOCK + 4096 + 65536;
            let id = crate::hash::ChunkId::of(&pack_range(r.clone()));
            at.insert(id, r);
        }
        let ids: Vec<_> = at.keys().copied().collect();
        assert_eq!(ids.len(), blocks as usize);
        let store = Arc::new(ThroughCache {
            cache: RangeCache::open(&dir.path().join("cache"), 8 * BLOCK).unwrap(),
            len: blocks * BLOCK,
            at,
        });
        let chunks = crate::store::ChunkCache::new(store.clone(), 256 << 20);
        for id in &ids {
            chunks.get(id, 65536).unwrap();
        }
        assert_eq!(chunks.cached_bytes(), ids.len() * 65536);
        let open: Vec<_> = fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| fs::read_link(e.unwrap().path()).ok())
            .filter(|t| t.starts_with(dir.path()))
            .collect();
        assert!(
            open.len() <= HOT_BLOCKS,
            "{} block files open: {:?}",
            open.len(),
            &open[..open.len().min(5)]
        );
        assert!(store.cache.bytes() <= 8 * BLOCK);
    }
}
