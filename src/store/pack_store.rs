//! The pack store (store format 3, the default): chunks appended as records to pack files
//! `STORE/packs/<16 hex>.pack`, compressed one by one, located through the pack index
//! (`STORE/index.redb`, see `pack_index.rs`).
//!
//! Invariants (docs/design.md, "Pack files"):
//! - A record is written completely before its location enters the (pending) index, so a
//!   reader that finds a location finds the whole record.
//! - `sync` fdatasyncs every pack written since the last sync, fsyncs the packs directory when a
//!   pack was created, and only then commits the index durably: a chunk is durable before any
//!   durable index entry (and so any durable metadata) names it.
//! - Pack bytes below the index's durable length are never modified. A pack longer than that
//!   length at open has a torn or uncommitted tail, which is cut before anything maps it; a
//!   pack is appended to only by the process that created it, so nothing is ever appended after
//!   a torn tail.
//! - A pack is deleted only after a durable index commit that no longer points into it
//!   (compaction); a reader that found the old location and then misses the file looks the chunk
//!   up again.
//!
//! Stores of format 2 keep their loose chunk files (`STORE/chunks/`): they are read, listed and
//! removed through a [`LocalDirStore`]; new chunks go to packs; `gc --repack` moves the loose
//! ones into packs.

use super::cache::FileMap;
use super::codec::{CODEC_NONE, Codec, decompress};
use super::pack::{
    PACK_HEADER_LEN, RecordHeader, ScanItem, decode_pack_header, encode_pack_header,
    pack_file_name, parse_pack_file_name, scan,
};
use super::pack_index::{IndexOp, Loc, PackIndex, PackRow, PackState};
use super::{ChunkBytes, ChunkStore, LocalDirStore, SpaceUsage, StoreUsage};
use crate::error::{FsError, Result};
use crate::hash::ChunkId;
use lru::LruCache;
use parking_lot::{Mutex, RwLock};
use std::cell::Cell;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// A pack is sealed once it holds this many bytes, unless the store was made with another
/// size (`init --pack-mib`, kept in the index). Chosen by measurement (docs/design.md):
/// large enough that a 4 GiB volume is ~130 files and a sequential read streams tens of MiB
/// from one file; small enough that compaction rewrites little at a time and that an object
/// store (later) uploads a pack in one request.
pub const PACK_TARGET: u64 = 32 << 20;
/// Bounds of a store's pack size (`init --pack-mib`).
pub const MIN_PACK_TARGET: u64 = 1 << 20;
pub const MAX_PACK_TARGET: u64 = 1 << 30;
/// Open packs: a writer thread appends to its own (threads are given slots in turn), or to its
/// file's while it stores a file's chunks (`with_placement`), so one file's chunks lie together.
const SLOTS: usize = 4;
/// Packs kept mapped (address space only: the pages are the page cache's). Each also holds a
/// file descriptor, hence well below the usual limit of 1024.
const MAPPED_PACKS: usize = 256;
/// Largest record: a chunk is at most 16 MiB (4 x the largest average), stored raw at worst.
const MAX_RECORD: u64 = (16 << 20) + 4096;
/// How far a sequential reader of a pack has the kernel read ahead.
const READAHEAD: usize = 8 << 20;
/// Write-behind step of open packs: each time a pack grows past a multiple of this, the
/// write-out of the step just filled is started and the step before it is waited for and
/// dropped from the page cache (`cache::write_behind`; docs/design.md, "Write-behind").
const WRITE_BEHIND: u64 = 8 << 20;
/// Pending index changes past which `put` commits them (non-durably) to bound memory.
const PENDING_MAX: usize = 1 << 16;
/// Bytes kept allocated in `packs/reserve` and given back when the device is nearly full.
const RESERVE_BYTES: u64 = 8 << 20;
/// New chunks are refused (ENOSPC) while the device has less than this free: the metadata and
/// index commits that record a delete need room, and with packs a delete frees space only
/// after those commits (compaction), not by removing chunk files at once.
const DATA_HEADROOM: u64 = 16 << 20;
/// Background compaction starts once this many bytes are dead and they are a quarter of the
/// store's pack bytes; each step (every 5 s) rewrites packs that are at least half dead (cheap:
/// at most half a pack copied per pack freed), deadest first, for at most
/// `BACKGROUND_STEP_TIME` and `BACKGROUND_PACKS` packs. Measured (fio random 4 KiB writes into
/// a 1 GiB image, README): 4 packs per step could not keep up with the 14x write amplification
/// of random writes (7.5x the live bytes on disk after 3 minutes).
const BACKGROUND_MIN_DEAD_BYTES: u64 = 64 << 20;
const BACKGROUND_PACKS: usize = 64;
/// Dead share from which the background step rewrites a pack.
const BACKGROUND_MIN_DEAD_SHARE: f64 = 0.5;
const BACKGROUND_STEP_TIME: std::time::Duration = std::time::Duration::from_secs(2);
/// Bytes appended between two measurements of a remote volume's upload backlog.
const BACKLOG_CHECK_EVERY: u64 = 4 << 20;
/// Longest a writer waits for uploads to make room before it gets ENOSPC.
const BACKLOG_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// ... and while uploads are failing (the object store may have just come back: the
/// uploader's next attempt is at most a backoff away).
const BACKLOG_WAIT_FAILING: std::time::Duration = std::time::Duration::from_secs(15);
/// Bytes appended between two looks at the free space, while it is plentiful.
const SPACE_CHECK_EVERY: u64 = 64 << 20;
/// Below this much free space a durable point compacts packs with live records too (at least
/// `COMPACT_MIN_DEAD` dead), not only packs with none: new chunks are refused not far below
/// (`DATA_HEADROOM`), and the next look at the space may be `SPACE_CHECK_EVERY` away.
const RECLAIM_LOW_SPACE: u64 = 2 * DATA_HEADROOM + SPACE_CHECK_EVERY;
/// ... and also with more free space, while it is at most this many times the dead bytes
/// (compacting would give back at least half as much again as is free). A user who
/// deletes a file that took much of the free space expects it back at the next durable point;
/// the background step (`BACKGROUND_MIN_DEAD_BYTES`) only follows seconds later, and only
/// once a quarter of all pack bytes are dead.
const RECLAIM_FREE_PER_DEAD: u64 = 2;
/// Compaction passes of one reclaim at most (a pass after one that passed a pack over for lack
/// of space and freed some).
const RECLAIM_PASSES: usize = 4;

/// Numbers of packs another volume uploaded that this store names (shared dedup of a remote
/// volume): far above any pack this store creates (it counts from 1), so never a local
/// file's, and left out of the count of local packs.
pub const FOREIGN_PACK_BASE: u64 = 1 << 62;

/// Where packs whose files are not in the packs directory are kept: the bucket of a remote
/// volume (`remote::packs`). A pack it has may be evicted from the local directory at any time
/// once sealed; reads of it then go through `read`.
pub trait PackSource: Send + Sync {
    /// Whether pack `pack` is kept there (uploaded), so its local file may be missing.
    fn has(&self, pack: u64) -> bool;
    /// Bytes `range` of pack `pack` (unverified: records carry checksums and chunks are
    /// verified by their hash above), mapped from a local copy where it can.
    fn read(&self, pack: u64, range: std::ops::Range<u64>) -> Result<ChunkBytes>;
    /// [`PackSource::read`] again, bypassing any local copy: the bytes it served for this
    /// range failed their chunk's hash.
    fn reread(&self, pack: u64, range: std::ops::Range<u64>) -> Result<ChunkBytes> {
        self.read(pack, range)
    }
    /// Bytes of packs not in the source yet that the store may hold: past it, new data is
    /// refused (ENOSPC) until uploads catch up. `None`: no limit.
    fn backlog_limit(&self) -> Option<u64> {
        None
    }
    /// The backlog is over the limit: waits (briefly) for uploads to make room. False when
    /// uploads are failing (the source is unreachable): the data is refused sooner.
    fn wait_for_room(&self) -> bool {
        false
    }
    /// Shared dedup: when a pack the source keeps for another volume holds chunk `id`, calls
    /// `record` with its location here (and the pack's length) while the choice cannot be
    /// overtaken by a bucket gc mark, and returns true: the chunk is not stored again.
    fn share(&self, id: &ChunkId, record: &mut dyn FnMut(Loc, u64)) -> Result<bool> {
        let _ = (id, record);
        Ok(false)
    }
    /// Every pack kept there: (id, length).
    fn packs(&self) -> Vec<(u64, u64)> {
        Vec::new()
    }
    /// fsck: the packs the source should have and has not, or has damaged (with `verify`,
    /// which reads them all): (pack, what is wrong).
    fn check(&self, verify: bool) -> Result<Vec<(u64, String)>> {
        let _ = verify;
        Ok(Vec::new())
    }
}

static NEXT_THREAD_SLOT: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static THREAD_SLOT: usize = NEXT_THREAD_SLOT.fetch_add(1, Ordering::Relaxed);
    /// The placement group `with_placement` set on this thread.
    static PLACEMENT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Runs `f` with the chunks this thread appends placed by `group` (a file) rather than by
/// thread: the several threads that hash and store one file's chunks then append to the same
/// open pack, so a file written in one go lies in one run of one pack (read back as one
/// stream; deleted, it leaves whole dead runs, not dead bytes spread over every open pack).
pub fn with_placement<R>(group: u64, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<u64>);
    impl Drop for Restore {
        fn drop(&mut self) {
            PLACEMENT.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(PLACEMENT.with(|p| p.replace(Some(group))));
    f()
}

/// The open-pack slot of the calling thread's next append.
fn slot_index() -> usize {
    match PLACEMENT.with(|p| p.get()) {
        Some(g) => (g % SLOTS as u64) as usize,
        None => THREAD_SLOT.with(|s| *s) % SLOTS,
    }
}

struct OpenPack {
    id: u64,
    file: Arc<File>,
    /// End of the last complete record.
    pos: u64,
    /// Write-behind (`WRITE_BEHIND`): the write-out of pages below `kicked` has been started;
    /// pages below `settled` were written out and dropped from the page cache.
    kicked: u64,
    settled: u64,
}

/// A pack written since the last sync.
struct Dirty {
    file: Arc<File>,
    /// Every record below this offset is complete.
    end: u64,
    /// Created since the last sync: its directory entry needs an fsync of the directory.
    created: bool,
    sealed: bool,
    /// Bumped on every change, so a sync forgets only what it made durable.
    generation: u64,
}

/// Index changes not yet committed: `None` is a removal.
#[derive(Default)]
struct Pending {
    ops: HashMap<ChunkId, (Option<Loc>, u64)>,
    generation: u64,
}

/// A mapped pack, and where its last read ended (a read starting there is sequential).
struct PackMap {
    map: Arc<FileMap>,
    last_end: AtomicU64,
}

pub struct PackStore {
    dir: PathBuf,
    dir_fd: File,
    index: PackIndex,
    slots: Vec<Mutex<Option<OpenPack>>>,
    pending: Mutex<Pending>,
    dirty: Mutex<HashMap<u64, Dirty>>,
    next_pack: AtomicU64,
    codec: RwLock<Codec>,
    codec_dirty: AtomicBool,
    maps: Mutex<LruCache<u64, Arc<PackMap>>>,
    /// Loose chunk files of a store created before packs (format 2).
    loose: Option<LocalDirStore>,
    loose_dirty: AtomicBool,
    /// One sync (or compaction commit) at a time.
    sync_lock: Mutex<()>,
    /// Free bytes on the device at the last look, and bytes appended since.
    space_seen: AtomicU64,
    appended_since: AtomicU64,
    /// Seal packs at this size.
    target: AtomicU64,
    /// One compaction at a time (gc, the low-space reclaim and the background step).
    compacting: Mutex<()>,
    /// An fdatasync of a pack failed: no later sync may claim durability.
    sync_failed: Mutex<Option<String>>,
    /// A chunk was removed since the last reclaim (dead packs may be deletable).
    removed_since_reclaim: AtomicBool,
    /// Packs compaction deleted: a reader that opened one just before must not put its
    /// mapping back into `maps` (it would pin the deleted file's space).
    retired: Mutex<std::collections::HashSet<u64>>,
    /// Injected I/O errors (tests; `DEDUPFS_FAULTS`).
    faults: super::fault::Faults,
    /// Where evicted packs are read from (remote volumes).
    source: Option<Arc<dyn PackSource>>,
    /// Bytes appended since the backlog (packs not in the source) was last measured, and
    /// whether it was over the source's limit then.
    backlog_since: AtomicU64,
    backlog_over: AtomicBool,
    /// Packs known to have no local file (evicted, or never here after an attach): read from
    /// the source without trying the file first.
    evicted: RwLock<std::collections::HashSet<u64>>,
    /// Other volumes' packs that pending entries name: (id, length), recorded as sealed packs
    /// in the index with them.
    foreign_rows: Mutex<HashMap<u64, u64>>,
    /// The index was rebuilt from the packs at this open.
    rebuilt: AtomicBool,
    /// The volume key of an encrypted volume: records are sealed with it and chunks named by
    /// its keyed hash.
    key: Option<crate::crypto::Key>,
    hasher: crate::hash::Hasher,
}

/// Index meta key: the key id (8 bytes) of an encrypted store. A store that has it is never
/// opened without that key (its chunk names are keyed: plain names would silently miss).
pub const META_KEY_ID: &str = "key_id";

fn corrupt(msg: String) -> FsError {
    FsError::Corrupt(msg)
}

/// Pack files present in `dir`, by id.
fn list_pack_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        if let Some(id) = e.file_name().to_str().and_then(parse_pack_file_name) {
            out.push((id, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

impl PackStore {
    /// Opens the pack store of the store directory `store_dir`, creating its packs directory
    /// and index when missing. A lost index is rebuilt from the packs.
    /// The `packs` directory (in the store directory).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn open(store_dir: &Path) -> Result<PackStore> {
        PackStore::open_with(store_dir, None)
    }

    /// [`PackStore::open`] for a store whose sealed packs are also kept in `source`: their
    /// local files may be missing (evicted), and are then read from there.
    pub fn open_with(store_dir: &Path, source: Option<Arc<dyn PackSource>>) -> Result<PackStore> {
        PackStore::open_keyed(store_dir, source, None)
    }

    /// [`PackStore::open_with`] for an encrypted volume's store (`key`), or a plain one
    /// (`None`). Refuses a key the index does not record, and a store that records one when
    /// it is not given.
    pub fn open_keyed(
        store_dir: &Path,
        source: Option<Arc<dyn PackSource>>,
        key: Option<crate::crypto::Key>,
    ) -> Result<PackStore> {
        let dir = store_dir.join("packs");
        fs::create_dir_all(&dir)?;
        let index_path = store_dir.join("index.redb");
        let files = list_pack_files(&dir)?;
        let created = !index_path.exists();
        let (index, rebuild) = if index_path.exists() {
            let idx = PackIndex::open(&index_path).map_err(|e| match e {
                // Open in another handle (another process): busy, not damaged.
                e if e.is_held_elsewhere() => FsError::Db(format!(
                    "the pack index {} is open in another process ({e})",
                    index_path.display()
                )),
                e => corrupt(format!(
                    "the pack index {} cannot be opened ({e}); `dedupfs fsck --repair` rebuilds it from the packs",
                    index_path.display()
                )),
            })?;
            // A rebuild that did not finish (crash, I/O error) is done again.
            let unfinished = idx.meta_u64("rebuilding")? == Some(1);
            (idx, unfinished)
        } else {
            // Packs to rebuild it from: local files, or those only the source keeps.
            let remote_packs = source.as_ref().is_some_and(|s| !s.packs().is_empty());
            (
                PackIndex::create(&index_path)?,
                !files.is_empty() || remote_packs,
            )
        };
        let loose_dir = store_dir.join("chunks");
        let loose = if loose_dir.is_dir() {
            Some(LocalDirStore::open(&loose_dir)?)
        } else {
            None
        };
        let codec = match index.meta("codec")? {
            Some(c) => String::from_utf8_lossy(&c)
                .parse()
                .map_err(|e: String| corrupt(format!("pack index: {e}")))?,
            None => Codec::default(),
        };
        let store = PackStore {
            dir_fd: File::open(&dir)?,
            dir,
            index,
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
            pending: Mutex::new(Pending::default()),
            dirty: Mutex::new(HashMap::new()),
            next_pack: AtomicU64::new(1),
            codec: RwLock::new(codec),
            codec_dirty: AtomicBool::new(false),
            maps: Mutex::new(LruCache::new(
                NonZeroUsize::new(MAPPED_PACKS).expect("non-zero"),
            )),
            loose,
            loose_dirty: AtomicBool::new(false),
            sync_lock: Mutex::new(()),
            space_seen: AtomicU64::new(0),
            appended_since: AtomicU64::new(u64::MAX / 2),
            target: AtomicU64::new(PACK_TARGET),
            compacting: Mutex::new(()),
            sync_failed: Mutex::new(None),
            removed_since_reclaim: AtomicBool::new(true),
            retired: Mutex::new(std::collections::HashSet::new()),
            faults: super::fault::Faults::from_env(),
            source,
            backlog_since: AtomicU64::new(0),
            backlog_over: AtomicBool::new(false),
            evicted: RwLock::new(std::collections::HashSet::new()),
            foreign_rows: Mutex::new(HashMap::new()),
            rebuilt: AtomicBool::new(false),
            hasher: key
                .as_ref()
                .map_or(crate::hash::Hasher::PLAIN, |k| k.hasher()),
            key,
        };
        store.check_key(created || rebuild)?;
        if let Some(t) = store.index.meta_u64("pack_target")? {
            store
                .target
                .store(t.clamp(MIN_PACK_TARGET, MAX_PACK_TARGET), Ordering::Relaxed);
        }
        if rebuild {
            tracing::warn!(
                "the pack index {} is missing or was half rebuilt: rebuilding it from {} packs",
                index_path.display(),
                files.len()
            );
            store.rebuild_index()?;
            store.rebuilt.store(true, Ordering::Relaxed);
        }
        store.recover(&files)?;
        store.restore_reserve();
        Ok(store)
    }

    /// Refuses a key the index does not record and a missing one; records the key in an index
    /// made now (`init`, or a lost index rebuilt from the packs).
    fn check_key(&self, new_index: bool) -> Result<()> {
        let recorded = self.index.meta(META_KEY_ID)?;
        match (&self.key, recorded) {
            (None, None) => Ok(()),
            (Some(k), Some(r)) if r == k.id() => Ok(()),
            (Some(k), None) if new_index => self
                .index
                .apply(&[IndexOp::SetMeta(META_KEY_ID, k.id().to_vec())], true),
            (Some(k), Some(r)) => Err(FsError::Refused(format!(
                "wrong key: the store was encrypted with key id {}, this key's id is {}",
                crate::remote::config::hex(&r),
                k.id_hex()
            ))),
            (Some(_), None) => Err(FsError::Refused(
                "the store is not encrypted, but a key was given".into(),
            )),
            (None, Some(r)) => Err(FsError::Refused(format!(
                "the store is encrypted (key id {}): it opens only with its key",
                crate::remote::config::hex(&r)
            ))),
        }
    }

    /// The volume key of an encrypted store.
    pub fn key(&self) -> Option<&crate::crypto::Key> {
        self.key.as_ref()
    }

    /// The stored (compressed) bytes of the record at `loc` from its payload (nonce |
    /// stored | MAC): opened with the volume key when sealed. A failed tag is damage (EIO),
    /// logged with the chunk and pack only.
    pub fn open_payload<'a>(
        &self,
        id: &ChunkId,
        loc: &Loc,
        payload: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>> {
        let plain = loc.key_id == 0 && loc.nonce_len == 0 && loc.mac_len == 0;
        // An encrypted store takes only sealed records (the bucket is not trusted to slip in
        // a plaintext one), and a plain store cannot open sealed ones.
        let opened = match (&self.key, plain) {
            (None, true) => return Ok(std::borrow::Cow::Borrowed(payload)),
            (Some(k), false) if loc.key_id == crate::crypto::RECORD_KEY_ID => {
                k.open_record(id, loc.codec, loc.raw_len, payload)
            }
            _ => None,
        };
        opened.map(std::borrow::Cow::Owned).ok_or_else(|| {
            tracing::error!(chunk = %id, pack = %pack_file_name(loc.pack), offset = loc.offset,
                "encrypted record fails authentication (damaged, or sealed with another key)");
            FsError::CorruptChunk { id: *id }
        })
    }

    /// Whether reading the record at `loc` goes through [`PackStore::open_payload`].
    fn sealed_read(&self, loc: &Loc) -> bool {
        self.key.is_some() || loc.key_id != 0 || loc.nonce_len != 0 || loc.mac_len != 0
    }

    /// Bytes of a record from the start of its payload to its end.
    fn payload_range(loc: &Loc) -> std::ops::Range<u64> {
        loc.offset + super::pack::RECORD_HEADER_LEN as u64..loc.end()
    }

    /// Brings packs in line with the index after an unclean stop: cuts torn tails, seals packs
    /// a previous run left open, deletes retired packs.
    fn recover(&self, files: &[(u64, PathBuf)]) -> Result<()> {
        let rows = self.index.packs()?;
        let mut ops = Vec::new();
        let mut max_id = self
            .index
            .meta_u64("next_pack")?
            .unwrap_or(1)
            .saturating_sub(1);
        for (id, row) in &rows {
            if *id < FOREIGN_PACK_BASE {
                max_id = max_id.max(*id);
            }
            let path = self.dir.join(pack_file_name(*id));
            if row.state == PackState::Retired {
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
                ops.push(IndexOp::DropPack(*id));
                continue;
            }
            let len = match fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound && self.is_remote(*id) => {
                    // Evicted: read from the bucket when needed.
                    if row.state == PackState::Open {
                        ops.push(IndexOp::Pack {
                            id: *id,
                            len: row.len,
                            state: PackState::Sealed,
                        });
                    }
                    continue;
                }
                // Nothing lives in it: forgotten (a bucket gc may have deleted it).
                Err(e) if e.kind() == io::ErrorKind::NotFound && row.live_records == 0 => {
                    ops.push(IndexOp::DropPack(*id));
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tracing::error!(
                        pack = %path.display(),
                        "pack file is missing: its {} chunks are lost (fsck names the files)",
                        row.live_records
                    );
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if len > row.len {
                tracing::warn!(
                    pack = %path.display(),
                    "cutting {} bytes of torn or uncommitted tail",
                    len - row.len
                );
                let f = fs::OpenOptions::new().write(true).open(&path)?;
                f.set_len(row.len)?;
                f.sync_all()?;
            } else if len < row.len {
                tracing::error!(
                    pack = %path.display(),
                    "pack is {len} bytes, the index says {}: chunks past the end are lost",
                    row.len
                );
            }
            if row.state == PackState::Open {
                ops.push(IndexOp::Pack {
                    id: *id,
                    len: row.len.min(len),
                    state: PackState::Sealed,
                });
            }
        }
        for (id, path) in files {
            max_id = max_id.max(*id);
            if !rows.iter().any(|(r, _)| r == id) {
                tracing::warn!(
                    pack = %path.display(),
                    "pack unknown to the index (written after the last durable point, or copied in): `dedupfs gc` removes it"
                );
            }
        }
        self.next_pack.store(max_id + 1, Ordering::Relaxed);
        ops.push(IndexOp::SetMeta(
            "next_pack",
            (max_id + 1).to_le_bytes().to_vec(),
        ));
        self.index.apply(&ops, true)
    }

    /// Whether the index was rebuilt from the packs when this store was opened.
    pub fn was_rebuilt(&self) -> bool {
        self.rebuilt.load(Ordering::Relaxed)
    }

    /// After a rebuild: forgets the chunks found in other volumes' packs that `keep` says no
    /// metadata of this volume knows. A rebuild indexes every record of such a pack, most of
    /// them the other volume's; left in the index, they would make this volume's generations
    /// name that pack (and hold it against a bucket gc) for nothing. Returns how many.
    pub fn forget_foreign_strays(&self, keep: &dyn Fn(&ChunkId) -> bool) -> Result<u64> {
        let mut ops = Vec::new();
        self.index.for_each(&mut |id, loc| {
            if loc.pack >= FOREIGN_PACK_BASE && !keep(&id) {
                ops.push(IndexOp::Remove(id));
            }
        })?;
        let n = ops.len() as u64;
        for batch in ops.chunks(4096) {
            self.index.apply(batch, true)?;
        }
        Ok(n)
    }

    pub fn index(&self) -> &PackIndex {
        &self.index
    }

    /// The source of evicted packs, for a remote volume.
    pub fn source(&self) -> Option<&Arc<dyn PackSource>> {
        self.source.as_ref()
    }

    /// Whether pack `pack` is kept in the source (its local file may be evicted).
    pub fn is_remote(&self, pack: u64) -> bool {
        self.source.as_ref().is_some_and(|s| s.has(pack))
    }

    /// Bytes of packs the source does not have yet (written since the last sync included).
    pub fn backlog_bytes(&self) -> Result<u64> {
        let mut ends = self.unsynced_ends();
        for (id, row) in self.index.packs()? {
            if row.state != PackState::Retired {
                let e = ends.entry(id).or_insert(0);
                *e = (*e).max(row.len);
            }
        }
        Ok(ends
            .into_iter()
            .filter(|(id, _)| !self.is_remote(*id))
            .map(|(_, len)| len)
            .sum())
    }

    /// Packs written since the last sync, and where their complete records end.
    fn unsynced_ends(&self) -> HashMap<u64, u64> {
        self.dirty
            .lock()
            .iter()
            .map(|(id, d)| (*id, d.end))
            .collect()
    }

    /// Whether the local file of pack `pack` is present.
    pub fn is_local(&self, pack: u64) -> bool {
        self.pack_path(pack).exists()
    }

    /// Bytes `range` of pack `pack`: from its local file, or from the source when the file was
    /// evicted.
    pub fn read_pack(&self, pack: u64, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        match File::open(self.pack_path(pack)) {
            Ok(f) => {
                let mut buf = vec![0u8; (range.end - range.start) as usize];
                f.read_exact_at(&mut buf, range.start)?;
                Ok(buf)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.is_remote(pack) => {
                self.source.as_ref().map_or_else(
                    || Err(FsError::Io(e)),
                    |s| Ok(s.read(pack, range)?.into_vec()),
                )
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the local file of sealed pack `pack`, which the source keeps: reads of it go
    /// there from now on. Returns the bytes freed; 0 when the pack is open, written since
    /// the last sync, or not in the source.
    pub fn evict(&self, pack: u64) -> Result<u64> {
        if !self.is_remote(pack)
            || self.open_pack_ids().contains(&pack)
            || self.dirty.lock().contains_key(&pack)
        {
            return Ok(0);
        }
        let path = self.pack_path(pack);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        self.unmap(pack);
        self.evicted.write().insert(pack);
        fs::remove_file(&path)?;
        Ok(len)
    }

    /// Reads chunk `id` at `loc` from the source (its pack was evicted); `again`: bypassing
    /// its local copy of those bytes.
    fn read_remote(&self, id: &ChunkId, loc: &Loc, again: bool) -> Result<ChunkBytes> {
        let Some(source) = &self.source else {
            return Err(FsError::MissingChunk { id: *id });
        };
        let read = |range: std::ops::Range<u64>| {
            if again {
                source.reread(loc.pack, range)
            } else {
                source.read(loc.pack, range)
            }
        };
        let stored = if self.sealed_read(loc) {
            let payload = read(Self::payload_range(loc))?;
            ChunkBytes::Owned(Arc::new(self.open_payload(id, loc, &payload)?.into_owned()))
        } else {
            let start = loc.stored_start();
            read(start..start + loc.stored_len as u64)?
        };
        if loc.codec == CODEC_NONE {
            return Ok(stored);
        }
        match decompress(loc.codec, &stored, loc.raw_len) {
            Ok(v) => Ok(ChunkBytes::Owned(Arc::new(v))),
            Err(e) => {
                tracing::error!(chunk = %id, pack = %pack_file_name(loc.pack), offset = loc.offset, "{e}");
                Err(FsError::CorruptChunk { id: *id })
            }
        }
    }

    pub fn packs_dir(&self) -> &Path {
        &self.dir
    }

    pub fn pack_path(&self, id: u64) -> PathBuf {
        self.dir.join(pack_file_name(id))
    }

    pub fn codec(&self) -> Codec {
        *self.codec.read()
    }

    /// Size at which packs are sealed.
    pub fn target(&self) -> u64 {
        self.target.load(Ordering::Relaxed)
    }

    /// Sets (durably) the size at which this store seals packs; for `init`.
    pub fn set_target(&self, bytes: u64) -> Result<()> {
        if !(MIN_PACK_TARGET..=MAX_PACK_TARGET).contains(&bytes) {
            return Err(FsError::Invalid("pack size out of range (1 MiB to 1 GiB)"));
        }
        self.target.store(bytes, Ordering::Relaxed);
        self.index.apply(
            &[IndexOp::SetMeta(
                "pack_target",
                bytes.to_le_bytes().to_vec(),
            )],
            true,
        )
    }

    /// Compression of chunks written from now on; recorded at the next sync.
    pub fn set_codec(&self, codec: Codec) {
        *self.codec.write() = codec;
        self.codec_dirty.store(true, Ordering::Relaxed);
    }

    pub fn loose(&self) -> Option<&LocalDirStore> {
        self.loose.as_ref()
    }

    /// Creates pack `id` with its header.
    fn create_pack(&self) -> Result<OpenPack> {
        let id = self.next_pack.fetch_add(1, Ordering::Relaxed);
        let path = self.pack_path(id);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        if let Err(e) = file.write_all_at(&encode_pack_header(id), 0) {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(e.into());
        }
        let file = Arc::new(file);
        self.mark_dirty(id, &file, PACK_HEADER_LEN, true, false);
        Ok(OpenPack {
            id,
            file,
            pos: PACK_HEADER_LEN,
            kicked: 0,
            settled: 0,
        })
    }

    fn mark_dirty(&self, id: u64, file: &Arc<File>, end: u64, created: bool, sealed: bool) {
        let mut d = self.dirty.lock();
        let e = d.entry(id).or_insert_with(|| Dirty {
            file: file.clone(),
            end,
            created: false,
            sealed: false,
            generation: 0,
        });
        e.end = e.end.max(end);
        e.created |= created;
        e.sealed |= sealed;
        e.generation += 1;
    }

    fn set_pending(&self, id: ChunkId, loc: Option<Loc>) -> usize {
        let mut p = self.pending.lock();
        p.generation += 1;
        let g = p.generation;
        p.ops.insert(id, (loc, g));
        p.ops.len()
    }

    /// Refuses new data while the device is nearly full (`DATA_HEADROOM`). Looks at the free
    /// space only when it may have run low since the last look.
    fn check_space(&self, len: u64) -> Result<()> {
        if let Some(source) = &self.source
            && let Some(limit) = source.backlog_limit()
        {
            let since = self.backlog_since.fetch_add(len, Ordering::Relaxed) + len;
            if since >= BACKLOG_CHECK_EVERY || self.backlog_over.load(Ordering::Relaxed) {
                self.backlog_since.store(0, Ordering::Relaxed);
                // Over the limit: a writer waits while uploads make room (as it would for a
                // slow disk), and is refused only when they fail, or make no room in time.
                let started = std::time::Instant::now();
                let over = loop {
                    if self.backlog_bytes()? + len <= limit {
                        break false;
                    }
                    let uploading = source.wait_for_room();
                    let waited = started.elapsed();
                    if waited >= BACKLOG_WAIT || !uploading && waited >= BACKLOG_WAIT_FAILING {
                        break true;
                    }
                };
                self.backlog_over.store(over, Ordering::Relaxed);
            }
            if self.backlog_over.load(Ordering::Relaxed) {
                return Err(FsError::NoSpace);
            }
        }
        let since = self.appended_since.fetch_add(len, Ordering::Relaxed) + len;
        let seen = self.space_seen.load(Ordering::Relaxed);
        if seen.saturating_sub(since) >= DATA_HEADROOM + SPACE_CHECK_EVERY {
            return Ok(());
        }
        let avail = super::space_of(&self.dir_fd)?.avail_bytes;
        self.space_seen.store(avail, Ordering::Relaxed);
        self.appended_since.store(0, Ordering::Relaxed);
        if avail < DATA_HEADROOM + len {
            return Err(FsError::NoSpace);
        }
        Ok(())
    }

    /// Appends one record (header and payload: nonce, stored bytes, MAC) to this thread's
    /// open pack.
    fn append(&self, header: &RecordHeader, stored: &[u8]) -> Result<Loc> {
        self.check_space(header.record_len())?;
        let slot = &self.slots[slot_index()];
        let mut g = slot.lock();
        if g.as_ref().is_none_or(|p| p.pos >= self.target()) {
            if let Some(old) = g.take() {
                self.mark_dirty(old.id, &old.file, old.pos, false, true);
            }
            *g = Some(self.create_pack()?);
        }
        let Some(p) = g.as_mut() else {
            return Err(FsError::Corrupt("no open pack".into()));
        };
        let offset = p.pos;
        let payload_at = offset + super::pack::RECORD_HEADER_LEN as u64;
        let written = match self.faults.on_write() {
            // An injected fault: a short write (the header and half the payload), then the
            // error, as a device that fails part-way through.
            Some(e) => p
                .file
                .write_all_at(&header.encode(), offset)
                .and_then(|()| p.file.write_all_at(&stored[..stored.len() / 2], payload_at))
                .and(Err(e)),
            None => p
                .file
                .write_all_at(&header.encode(), offset)
                .and_then(|()| p.file.write_all_at(stored, payload_at)),
        };
        if let Err(e) = written {
            // The record may be partly written past `pos`: seal the pack at `pos` (the tail is
            // cut at the next open) and start a new one for the next chunk.
            if let Some(old) = g.take() {
                self.mark_dirty(old.id, &old.file, old.pos, false, true);
            }
            return Err(e.into());
        }
        p.pos += header.record_len();
        self.mark_dirty(p.id, &p.file, p.pos, false, false);
        // Not for a remote volume's packs: their upload reads them back soon after sealing.
        let behind = (self.source.is_none() && p.pos >= p.kicked + WRITE_BEHIND).then(|| {
            let kick_end = p.pos / WRITE_BEHIND * WRITE_BEHIND;
            let ranges = (p.file.clone(), p.kicked..kick_end, p.settled..p.kicked);
            (p.settled, p.kicked) = (p.kicked, kick_end);
            ranges
        });
        let loc = Loc::of_record(p.id, offset, header);
        // Recorded before the slot is released: once a pack is sealed (by the next put in this
        // slot), every record in it is in the pending map or the index, which is what
        // compaction goes by when it decides a pack holds nothing live.
        let pending = self.set_pending(header.id, Some(loc));
        drop(g);
        if let Some((file, start, settle)) = behind
            // Outside the slot's lock: the wait must not hold up other appends.
            && let Err(e) = super::cache::write_behind(&file, start, settle)
        {
            // The wait took the file's write-back error: the next fdatasync would not see it.
            tracing::error!(pack = %pack_file_name(loc.pack), "writing the pack out failed: {e}");
            self.sync_failed
                .lock()
                .get_or_insert_with(|| format!("{}: {e}", pack_file_name(loc.pack)));
        }
        if pending > PENDING_MAX {
            self.flush_pending()?;
        }
        Ok(loc)
    }

    /// Why the store can make nothing durable any more, if so: an fdatasync of a pack failed
    /// (its unsynced records may be gone, and Linux may report success on a retry).
    pub fn sync_failure(&self) -> Option<String> {
        self.sync_failed.lock().clone()
    }

    /// Fault injection (tests).
    pub fn faults(&self) -> &super::fault::Faults {
        &self.faults
    }

    /// Where chunk `id` lives now: pending changes first, then the index. `Ok(None)`: not in
    /// any pack.
    pub fn locate(&self, id: &ChunkId) -> Result<Option<Loc>> {
        if let Some((loc, _)) = self.pending.lock().ops.get(id) {
            return Ok(*loc);
        }
        self.index.get(id)
    }

    /// The mapping of pack `pack`, covering at least `need_end` bytes.
    fn map_pack(&self, pack: u64, need_end: u64) -> io::Result<Arc<PackMap>> {
        if let Some(m) = self.maps.lock().get(&pack)
            && m.map.len() as u64 >= need_end
        {
            return Ok(m.clone());
        }
        let file = File::open(self.pack_path(pack))?;
        // A pack still open for appends is mapped with room for all it can grow to.
        let room = if self.open_pack_ids().contains(&pack) {
            self.target() + MAX_RECORD
        } else {
            0
        };
        let m = Arc::new(PackMap {
            map: Arc::new(FileMap::with_room(file, room)?),
            last_end: AtomicU64::new(u64::MAX),
        });
        if (m.map.len() as u64) < need_end {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "pack {} is {} bytes, a record ends at {need_end}",
                    pack_file_name(pack),
                    m.map.len()
                ),
            ));
        }
        let mut maps = self.maps.lock();
        if !self.retired.lock().contains(&pack) {
            maps.put(pack, m.clone());
        }
        Ok(m)
    }

    /// The chunk at `loc`, from its pack's mapping: a slice when stored raw, decompressed
    /// otherwise. Unverified (the cache checks the hash).
    fn read_at(&self, id: &ChunkId, loc: &Loc, m: &PackMap) -> Result<ChunkBytes> {
        let sealed = self.sealed_read(loc);
        let (start, len) = if sealed {
            let r = Self::payload_range(loc);
            (r.start as usize, (r.end - r.start) as usize)
        } else {
            (loc.stored_start() as usize, loc.stored_len as usize)
        };
        let chunk = m.map.chunk(start, len)?;
        // A read of data not in the page cache close after the last read of this pack is part
        // of a sequential read (read-ahead threads fetch the next chunks out of order): have
        // the kernel read the pack ahead in one large request instead of faulting page by page.
        let last = m.last_end.swap((start + len) as u64, Ordering::Relaxed);
        if !chunk.is_resident() && loc.offset.abs_diff(last) <= READAHEAD as u64 {
            m.map.will_need(start, READAHEAD);
        }
        if sealed {
            let stored = self.open_payload(id, loc, chunk.bytes())?.into_owned();
            if loc.codec == CODEC_NONE {
                return Ok(ChunkBytes::Owned(Arc::new(stored)));
            }
            return match decompress(loc.codec, &stored, loc.raw_len) {
                Ok(v) => Ok(ChunkBytes::Owned(Arc::new(v))),
                Err(e) => {
                    tracing::error!(chunk = %id, pack = %pack_file_name(loc.pack), offset = loc.offset, "{e}");
                    Err(FsError::CorruptChunk { id: *id })
                }
            };
        }
        if loc.codec == CODEC_NONE {
            return Ok(ChunkBytes::Mapped(chunk));
        }
        match decompress(loc.codec, chunk.bytes(), loc.raw_len) {
            Ok(v) => Ok(ChunkBytes::Owned(Arc::new(v))),
            Err(e) => {
                tracing::error!(chunk = %id, pack = %pack_file_name(loc.pack), offset = loc.offset, "{e}");
                Err(FsError::CorruptChunk { id: *id })
            }
        }
    }

    /// Commits pending index changes to bound their memory: a full `sync` (packs first),
    /// never a non-durable commit, which a later durable commit (compaction's) would make
    /// durable before the packs it names were synced. Skipped while a sync is running.
    fn flush_pending(&self) -> Result<()> {
        if self.sync_lock.is_locked() {
            return Ok(());
        }
        self.sync()
    }

    /// Applies `snapshot` (plus `extra` ops first) to the index and forgets the pending entries
    /// that have not changed since.
    fn commit_pending(
        &self,
        snapshot: &[(ChunkId, Option<Loc>, u64)],
        mut ops: Vec<IndexOp>,
        durable: bool,
    ) -> Result<()> {
        ops.extend(snapshot.iter().map(|(id, loc, _)| match loc {
            Some(l) => IndexOp::Put(*id, *l),
            None => IndexOp::Remove(*id),
        }));
        self.index.apply(&ops, durable)?;
        let mut p = self.pending.lock();
        for (id, _, g) in snapshot {
            if p.ops.get(id).is_some_and(|(_, pg)| pg == g) {
                p.ops.remove(id);
            }
        }
        Ok(())
    }

    /// Seals every open pack (no more appends to them); the next chunk starts a new pack.
    pub fn seal_open_packs(&self) {
        for slot in &self.slots {
            if let Some(old) = slot.lock().take() {
                self.mark_dirty(old.id, &old.file, old.pos, false, true);
            }
        }
    }

    /// Ids of the packs currently open for appends.
    fn open_pack_ids(&self) -> Vec<u64> {
        self.slots
            .iter()
            .filter_map(|s| s.lock().as_ref().map(|p| p.id))
            .collect()
    }

    /// Forgets the mapping of a pack about to be deleted (readers holding it keep it alive),
    /// and keeps any reader from caching it again.
    fn unmap(&self, pack: u64) {
        let mut maps = self.maps.lock();
        self.retired.lock().insert(pack);
        maps.pop(&pack);
    }

    /// Rebuilds the index from the packs alone: every record with a valid header and payload
    /// checksum becomes the location of its chunk (a later record of the same chunk wins).
    /// Chunks no metadata names are garbage afterwards, for `gc`.
    pub fn rebuild_index(&self) -> Result<RebuildReport> {
        let _s = self.sync_lock.lock();
        self.pending.lock().ops.clear();
        self.index.clear()?;
        let mut report = RebuildReport::default();
        let mut max_id = 0;
        // Local files, then the packs only the source has (evicted ones of a remote volume),
        // read whole from there.
        let mut all: Vec<(u64, PathBuf, Option<u64>)> = list_pack_files(&self.dir)?
            .into_iter()
            .map(|(id, p)| (id, p, None))
            .collect();
        if let Some(source) = &self.source {
            for (id, len) in source.packs() {
                if !all.iter().any(|(l, _, _)| *l == id) {
                    all.push((id, self.pack_path(id), Some(len)));
                }
            }
        }
        // Other volumes' packs first: a later record of a chunk wins, and a chunk this volume
        // stored itself must stay in its own pack (another volume's pack may be deleted by a
        // bucket gc once this volume's generations stop naming it). Then its own packs in
        // number order: a compaction's copy (a newer pack) wins over the pack it replaced,
        // which a bucket gc deletes once no generation names it.
        all.sort_by_key(|(id, _, _)| (*id < FOREIGN_PACK_BASE, *id));
        for (id, path, remote_len) in all {
            if id < FOREIGN_PACK_BASE {
                max_id = max_id.max(id);
            }
            let data = match remote_len {
                None => fs::read(&path)?,
                // Past the local cache of it: a damaged cached block must not cost records.
                Some(len) => match self.source.as_ref().map(|s| s.reread(id, 0..len)) {
                    Some(Ok(d)) => d.into_vec(),
                    Some(Err(e)) => {
                        report.damaged.push(format!(
                            "pack {} in the bucket cannot be read ({e}); skipped",
                            pack_file_name(id)
                        ));
                        continue;
                    }
                    None => continue,
                },
            };
            match decode_pack_header(&data) {
                Ok(hid) if hid == id => {}
                // Another volume's pack carries its number there.
                Ok(_) if id >= FOREIGN_PACK_BASE => {}
                Ok(hid) => {
                    report.damaged.push(format!(
                        "{}: header names pack {hid:016x}; skipped",
                        path.display()
                    ));
                    continue;
                }
                Err(e) => {
                    report
                        .damaged
                        .push(format!("{}: {e}; skipped", path.display()));
                    continue;
                }
            }
            report.packs += 1;
            let mut ops = Vec::new();
            scan(&data, |item| match item {
                ScanItem::Record {
                    offset,
                    header,
                    payload_ok: true,
                } => {
                    report.records += 1;
                    ops.push(IndexOp::Put(header.id, Loc::of_record(id, offset, &header)));
                }
                ScanItem::Record { offset, header, .. } => {
                    report.damaged.push(format!(
                        "{} at {offset}: chunk {} fails its checksum; skipped",
                        path.display(),
                        header.id
                    ));
                }
                ScanItem::Garbage { offset, len } => report.damaged.push(format!(
                    "{} at {offset}: {len} bytes are no valid record",
                    path.display()
                )),
                ScanItem::Torn { offset } => report.damaged.push(format!(
                    "{} at {offset}: torn record at the end",
                    path.display()
                )),
            });
            // The whole file: a false "torn" ending or a resynchronisation inside a payload
            // must not make the next open cut intact records off the pack.
            ops.push(IndexOp::Pack {
                id,
                len: data.len() as u64,
                state: PackState::Sealed,
            });
            self.index.apply(&ops, false)?;
        }
        self.next_pack.fetch_max(max_id + 1, Ordering::Relaxed);
        self.index.apply(
            &[
                IndexOp::SetMeta(
                    "next_pack",
                    self.next_pack
                        .load(Ordering::Relaxed)
                        .to_le_bytes()
                        .to_vec(),
                ),
                IndexOp::SetMeta("rebuilding", 0u64.to_le_bytes().to_vec()),
            ],
            true,
        )?;
        Ok(report)
    }
}

/// What a rebuild of the index from the packs found.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct RebuildReport {
    pub packs: u64,
    pub records: u64,
    pub damaged: Vec<String>,
}

impl ChunkStore for PackStore {
    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<()> {
        let raw_len: u32 = data.len().try_into().map_err(|_| FsError::TooBig)?;
        if let Some(source) = &self.source {
            let mut pending = 0;
            let shared = source.share(id, &mut |loc, pack_len| {
                self.foreign_rows.lock().insert(loc.pack, pack_len);
                pending = self.set_pending(*id, Some(loc));
            })?;
            if shared {
                if pending > PENDING_MAX {
                    self.flush_pending()?;
                }
                return Ok(());
            }
        }
        let codec = self.codec();
        let compressed = codec.compress(data);
        let (codec_id, stored) = match &compressed {
            Some(c) => (codec.id(), c.as_slice()),
            None => (CODEC_NONE, data),
        };
        match &self.key {
            None => {
                let header = RecordHeader::plain(*id, codec_id, raw_len, stored);
                self.append(&header, stored)?;
            }
            Some(k) => {
                let (header, payload) = k.seal_record(id, codec_id, raw_len, stored)?;
                self.append(&header, &payload)?;
            }
        }
        Ok(())
    }

    fn hasher(&self) -> crate::hash::Hasher {
        self.hasher
    }

    fn get(&self, id: &ChunkId) -> Result<ChunkBytes> {
        let mut retried = false;
        loop {
            let Some(loc) = self.locate(id)? else {
                return match &self.loose {
                    Some(l) => l.get(id),
                    None => Err(FsError::MissingChunk { id: *id }),
                };
            };
            if self.evicted.read().contains(&loc.pack) {
                return self.read_remote(id, &loc, false);
            }
            match self.map_pack(loc.pack, loc.end()) {
                Ok(m) => return self.read_at(id, &loc, &m),
                // Evicted: the bucket has it.
                Err(e) if e.kind() == io::ErrorKind::NotFound && self.is_remote(loc.pack) => {
                    self.evicted.write().insert(loc.pack);
                    return self.read_remote(id, &loc, false);
                }
                // Compaction may have moved the chunk and deleted the pack since the lookup.
                Err(e) if e.kind() == io::ErrorKind::NotFound && !retried => retried = true,
                Err(e) => {
                    tracing::error!(chunk = %id, pack = %pack_file_name(loc.pack), "cannot read chunk: {e}");
                    return Err(match e.kind() {
                        io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof => {
                            FsError::MissingChunk { id: *id }
                        }
                        _ => e.into(),
                    });
                }
            }
        }
    }

    fn get_again(&self, id: &ChunkId) -> Result<Option<ChunkBytes>> {
        // Only bytes that came through the source's cache can be read differently.
        match self.locate(id)? {
            Some(loc) if self.is_remote(loc.pack) && !self.is_local(loc.pack) => {
                tracing::warn!(
                    chunk = %id,
                    pack = %pack_file_name(loc.pack),
                    "bytes from the local cache of the bucket fail their check; fetching them again"
                );
                self.read_remote(id, &loc, true).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn remove(&self, id: &ChunkId) -> Result<()> {
        self.set_pending(*id, None);
        self.removed_since_reclaim.store(true, Ordering::Relaxed);
        if let Some(l) = &self.loose {
            l.remove(id)?;
            self.loose_dirty.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let _s = self.sync_lock.lock();
        let snapshot: Vec<(ChunkId, Option<Loc>, u64)> = self
            .pending
            .lock()
            .ops
            .iter()
            .map(|(id, (l, g))| (*id, *l, *g))
            .collect();
        let dirty: Vec<(u64, Arc<File>, u64, bool, bool, u64)> = self
            .dirty
            .lock()
            .iter()
            .map(|(id, d)| {
                (
                    *id,
                    d.file.clone(),
                    d.end,
                    d.created,
                    d.sealed,
                    d.generation,
                )
            })
            .collect();
        let codec_changed = self.codec_dirty.swap(false, Ordering::Relaxed);
        if snapshot.is_empty() && dirty.is_empty() && !codec_changed {
            if self.loose_dirty.swap(false, Ordering::Relaxed)
                && let Some(l) = &self.loose
            {
                l.sync()?;
            }
            return Ok(());
        }
        if let Some(e) = self.sync_failed.lock().as_ref() {
            return Err(FsError::Io(io::Error::other(format!(
                "an earlier sync of the packs failed ({e}); their data may be lost, so nothing more is committed: unmount and run `dedupfs fsck`"
            ))));
        }
        // After the pending snapshot: a foreign pack is recorded before an entry names it.
        let foreign: Vec<(u64, u64)> = self.foreign_rows.lock().drain().collect();
        let result = (|| {
            for (id, file, ..) in &dirty {
                let synced = match self.faults.on_sync() {
                    Some(e) => Err(e),
                    None => file.sync_data(),
                };
                if let Err(e) = synced {
                    // Linux may drop dirty pages after a failed fdatasync and report success on
                    // a retry: never trust this pack's unsynced records again.
                    *self.sync_failed.lock() = Some(format!("{}: {e}", pack_file_name(*id)));
                    return Err(e.into());
                }
            }
            if dirty.iter().any(|d| d.3) {
                self.dir_fd.sync_all()?;
            }
            if self.loose_dirty.swap(false, Ordering::Relaxed)
                && let Some(l) = &self.loose
            {
                l.sync()?;
            }
            let mut ops: Vec<IndexOp> = foreign
                .iter()
                .map(|&(id, len)| IndexOp::Pack {
                    id,
                    len,
                    state: PackState::Sealed,
                })
                .collect();
            ops.extend(
                dirty
                    .iter()
                    .map(|(id, _, end, _, sealed, _)| IndexOp::Pack {
                        id: *id,
                        len: *end,
                        state: if *sealed {
                            PackState::Sealed
                        } else {
                            PackState::Open
                        },
                    }),
            );
            ops.push(IndexOp::SetMeta(
                "next_pack",
                self.next_pack
                    .load(Ordering::Relaxed)
                    .to_le_bytes()
                    .to_vec(),
            ));
            ops.push(IndexOp::SetMeta(
                "codec",
                self.codec().to_string().into_bytes(),
            ));
            self.commit_pending(&snapshot, ops, true)
        })();
        if result.is_err() {
            if codec_changed {
                self.codec_dirty.store(true, Ordering::Relaxed);
            }
            self.foreign_rows.lock().extend(foreign);
            return result;
        }
        let mut d = self.dirty.lock();
        for (id, _, _, _, _, generation) in &dirty {
            match d.get_mut(id) {
                Some(e) if e.generation == *generation => {
                    d.remove(id);
                }
                Some(e) => e.created = false,
                None => {}
            }
        }
        Ok(())
    }

    fn for_each(&self, f: &mut dyn FnMut(ChunkId)) -> Result<()> {
        let pending: HashMap<ChunkId, Option<Loc>> = self
            .pending
            .lock()
            .ops
            .iter()
            .map(|(id, (l, _))| (*id, *l))
            .collect();
        self.index.for_each(&mut |id, _| {
            if !pending.contains_key(&id) {
                f(id);
            }
        })?;
        for (id, loc) in &pending {
            if loc.is_some() {
                f(*id);
            }
        }
        if let Some(l) = &self.loose {
            let mut loose_ids = Vec::new();
            l.for_each(&mut |id| loose_ids.push(id))?;
            for id in loose_ids {
                if self.locate(&id)?.is_none() {
                    f(id);
                }
            }
        }
        Ok(())
    }

    fn space(&self) -> Result<SpaceUsage> {
        super::space_of(&self.dir_fd)
    }

    fn release_reserve(&self) -> bool {
        fs::remove_file(self.dir.join("reserve")).is_ok()
    }

    fn restore_reserve(&self) {
        super::make_reserve(&self.dir.join("reserve"), RESERVE_BYTES);
    }

    fn usage(&self) -> Result<StoreUsage> {
        let mut u = StoreUsage {
            stored_bytes: self.index.meta_u64("stored_bytes")?.unwrap_or(0),
            ..StoreUsage::default()
        };
        // Packs written since the last sync are longer than the index says, or not in it yet.
        let mut unsynced = self.unsynced_ends();
        for (id, row) in self.index.packs()? {
            let len = unsynced.remove(&id).unwrap_or(row.len).max(row.len);
            // Another volume's pack holds this one's chunks, not its bytes.
            if row.state == PackState::Retired || id >= FOREIGN_PACK_BASE {
                continue;
            }
            u.packs += 1;
            u.disk_bytes += len;
            u.dead_bytes += len.saturating_sub(PACK_HEADER_LEN + row.live_bytes);
        }
        u.packs += unsynced.len() as u64;
        u.disk_bytes += unsynced.values().sum::<u64>();
        // Pending puts are not in the index's stored total yet.
        for (loc, _) in self.pending.lock().ops.values() {
            if let Some(l) = loc {
                u.stored_bytes += l.stored_len as u64;
            }
        }
        Ok(u)
    }

    fn stat(&self, id: &ChunkId) -> Result<u64> {
        match self.locate(id)? {
            Some(loc) => match super::compact::check_loc(self, id, &loc) {
                None => Ok(loc.raw_len as u64),
                Some(p) => {
                    tracing::error!(chunk = %id, pack = %p.pack, "{}", p.what);
                    Err(FsError::MissingChunk { id: *id })
                }
            },
            None => match &self.loose {
                Some(l) => l.stat(id),
                None => Err(FsError::MissingChunk { id: *id }),
            },
        }
    }

    fn packs(&self) -> Option<&PackStore> {
        Some(self)
    }

    fn compact_step(&self) -> Result<u64> {
        if self.compaction_busy() {
            return Ok(0);
        }
        let u = self.usage()?;
        if u.dead_bytes < BACKGROUND_MIN_DEAD_BYTES || u.dead_bytes * 4 < u.disk_bytes {
            return Ok(0);
        }
        // A remote volume's step compacts only its uploaded packs still in the local cache
        // (it downloads nothing): with none worth it, it does not even sync.
        if self.source.is_some() {
            let worth = self.sealed_packs()?.into_iter().any(|(id, row)| {
                id < FOREIGN_PACK_BASE
                    && super::compact::worth_compacting(&row, BACKGROUND_MIN_DEAD_SHARE)
                    && self.is_remote(id)
                    && self.is_local(id)
            });
            if !worth {
                return Ok(0);
            }
        }
        let until = std::time::Instant::now() + BACKGROUND_STEP_TIME;
        let r = super::compact::compact_at_most(
            self,
            BACKGROUND_MIN_DEAD_SHARE,
            false,
            false,
            BACKGROUND_PACKS,
            Some(until),
            false,
        )?;
        Ok(r.bytes_reclaimed)
    }

    fn reclaim(&self, low_space: bool) -> Result<u64> {
        if self.source.is_some() {
            // Remote volumes: local space comes back by eviction; their packs are compacted
            // only by `dedupfs gc` (which may download evicted ones).
            return Ok(0);
        }
        let removed = self.removed_since_reclaim.swap(false, Ordering::Relaxed);
        let avail = super::space_of(&self.dir_fd)?.avail_bytes;
        // Near the point where new chunks are refused, dead bytes must go back now.
        let low_space = low_space || avail < RECLAIM_LOW_SPACE;
        if !removed && !low_space {
            // No removal since the last sync: nothing new can have died.
            return Ok(0);
        }
        self.sync()?;
        // The rule (docs/design.md, "Compaction"): packs with nothing live always go; packs
        // with live records too (at least `COMPACT_MIN_DEAD` dead) when the device is nearly
        // full, or when the dead bytes are a large share of the free space (deleting a big
        // file whose records share packs with live data must make room when the delete's
        // durable point returns, whatever the timing of the writes put its records).
        let dead = self.usage()?.dead_bytes;
        let pressure = low_space || dead.saturating_mul(RECLAIM_FREE_PER_DEAD) >= avail;
        // An open pack whose every record died (a large file written and deleted) is sealed
        // so it can go too; under pressure, so is one that is mostly dead. Other open packs
        // keep filling.
        let rows = self.index.packs()?;
        for slot in &self.slots {
            let mut g = slot.lock();
            let dead = g.as_ref().is_some_and(|p| {
                rows.iter().any(|(id, r)| {
                    *id == p.id
                        && !self.pending_has_pack(p.id)
                        && (r.live_records == 0
                            || pressure
                                && r.dead_bytes() as f64
                                    >= super::compact::COMPACT_MIN_DEAD * r.len as f64)
                })
            });
            if dead && let Some(old) = g.take() {
                self.mark_dirty(old.id, &old.file, old.pos, false, true);
            }
        }
        self.sync()?;
        let min_dead = if pressure {
            super::compact::COMPACT_MIN_DEAD
        } else {
            f64::INFINITY
        };
        // A pack passed over for lack of space may fit once the packs after it are gone:
        // another pass follows one that freed some.
        let mut freed = 0;
        for _ in 0..RECLAIM_PASSES {
            let r = super::compact::compact(self, min_dead, false, false)?;
            freed += r.bytes_reclaimed;
            if r.skipped_for_space == 0 || r.packs_compacted == 0 {
                break;
            }
        }
        Ok(freed)
    }
}

/// Pack figures for maintenance: `(id, row)` of every pack the index knows, except those
/// being appended to now.
impl PackStore {
    pub fn sealed_packs(&self) -> Result<Vec<(u64, PackRow)>> {
        let open = self.open_pack_ids();
        Ok(self
            .index
            .packs()?
            .into_iter()
            .filter(|(id, row)| row.state == PackState::Sealed && !open.contains(id))
            .collect())
    }

    /// Pack files on disk the index does not know (left by a crash before the index commit
    /// that would have named them, or copied in).
    pub fn unknown_pack_files(&self) -> Result<Vec<(u64, PathBuf)>> {
        // Files first: a pack created meanwhile is either not listed or already known.
        let files = list_pack_files(&self.dir)?;
        let dirty = self.dirty.lock().keys().copied().collect::<Vec<_>>();
        let open = self.open_pack_ids();
        let rows = self.index.packs()?;
        Ok(files
            .into_iter()
            .filter(|(id, _)| {
                !rows.iter().any(|(r, _)| r == id) && !dirty.contains(id) && !open.contains(id)
            })
            .collect())
    }
}

// Compaction, repacking and verification live in `compact.rs`; they use these.
impl PackStore {
    pub(super) fn sync_lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.sync_lock.lock()
    }
    /// One compaction at a time; a publication of a remote volume waits on it for the pack a
    /// compaction writes to be complete (`remote/sync.rs`).
    pub fn compaction_lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.compacting.lock()
    }
    /// Whether a compaction runs now.
    pub fn compaction_busy(&self) -> bool {
        self.compacting.is_locked()
    }
    pub(super) fn pending_contains(&self, id: &ChunkId) -> bool {
        self.pending.lock().ops.contains_key(id)
    }
    /// Whether a pending (uncommitted) put points into pack `pack`.
    pub(super) fn pending_has_pack(&self, pack: u64) -> bool {
        self.pending
            .lock()
            .ops
            .values()
            .any(|(l, _)| l.is_some_and(|l| l.pack == pack))
    }
    pub(super) fn forget_mapping(&self, pack: u64) {
        self.unmap(pack)
    }
    pub(super) fn new_pack_for_compaction(&self) -> Result<(u64, Arc<File>)> {
        let p = self.create_pack()?;
        // Compaction syncs and records its packs itself.
        self.dirty.lock().remove(&p.id);
        Ok((p.id, p.file))
    }
    pub(super) fn dir_fd(&self) -> &File {
        &self.dir_fd
    }
}
