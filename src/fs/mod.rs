//! The filesystem core: every POSIX operation as a `&self` method returning `Result`, with no
//! FUSE types, so it is tested without mounting.
//!
//! State: the metadata database is the truth for everything committed; `State` (one mutex)
//! holds open files, their dirty data and their in-memory attributes, and directory handles.
//! Namespace operations live in `namespace.rs`, attributes and lookups in `attrs.rs`, open,
//! flush and release in `open_files.rs`, extended attributes in `xattr.rs`, file data paths
//! (write-back, re-chunking, reads) in `file.rs`, directory handles in `readdir.rs`, durable
//! points in `durability.rs`, access times in `atime.rs`, unlinked inodes the kernel holds in
//! `ghosts.rs`; transactions, the open group and what a failed commit leaves behind in
//! `txn.rs`.
//!
//! Durability (docs/design.md): ordinary operations commit without fsync; `fsync`, `fsyncdir`,
//! the periodic flusher and unmount first sync the chunk store, then commit durably, and only
//! then remove chunk files whose refcount fell to 0.
//!
//! Group commit: namespace and attribute operations and write-back commits join one open
//! write transaction (`State::pending`), committed when it holds `GROUP_OPS` operations or is
//! `GROUP_AGE` old, at every durable point, and before a snapshot reader needs what it holds.
//! Lookups and getattr read through the open group, so every operation sees the ones before
//! it. A crash loses the same thing as before: non-durable commits were never promised to
//! survive one.

mod atime;
mod attrs;
mod background;
mod counters;
mod digest;
mod dir_listing;
mod dirty;
mod durability;
mod file;
mod ghosts;
mod kernel_listings;
mod namespace;
mod open_files;
mod page_cache;
mod readdir;
mod reap;
mod seek;
mod snapshots;
mod txn;
mod xattr;

/// Entries a directory handle's listing keeps in memory (more go to a scratch file).
pub use dir_listing::IN_MEMORY as LISTING_IN_MEMORY;

pub use atime::Atime;
pub use counters::{Counters, Op, RequestCounts};
pub use digest::DIGEST_XATTR;
pub use open_files::set_id_to_drop;
pub use page_cache::CacheMode;
pub use seek::SeekWhence;
pub use snapshots::{
    SLOT_SHIFT as SNAPSHOT_SLOT_SHIFT, SNAPDIR_INO, SNAPDIR_NAME, SnapshotReport, in_snapshot,
};

use crate::chunker::{ChunkParams, Chunker, POLICY_XATTR, Policy};
use crate::error::{FsError, Ino, Result};
use crate::hash::ChunkId;
use crate::meta::{self, Attr, MetaDb, MetaRead, Ts, WTx};
use crate::store::{ChunkCache, ChunkStore, SpaceUsage, StoreUsage};
use dirty::DirtyMap;
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

/// Operations an open metadata group collects before it is committed.
const GROUP_OPS: u32 = 512;
/// Chunk bytes written since the last store sync above which a durable point first syncs the
/// store with the state lock released.
const PRESYNC_BYTES: u64 = 8 << 20;
/// Read-ahead threads: mostly waiting on the disk, so more of them than cores.
const PREFETCHERS: usize = 8;
/// Dirty bytes up to which the last close writes a file back itself instead of queueing it.
const INLINE_WRITEBACK: usize = 1 << 20;
/// Background write-back threads.
const WRITERS: usize = 2;
/// Age at which an open metadata group is committed by the next operation.
const GROUP_AGE: Duration = Duration::from_millis(20);

/// Free space below which a durable commit first releases the store's reserve.
const LOW_SPACE: u64 = 16 << 20;
/// Longest a directory fsync waits for the RELEASE of a closed, unlinked file
/// (`Fs::wait_closing_unlinked`); a descriptor kept by dup(2) or fork never sends one.
const RELEASE_WAIT: Duration = Duration::from_secs(1);

/// Longest name in a directory, as on ext4.
pub const NAME_MAX: usize = 255;
/// Largest file size: offsets must fit an `off_t`.
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// Tunables of a mounted filesystem.
#[derive(Clone)]
pub struct FsConfig {
    /// Bytes of verified chunks kept in the read cache.
    pub cache_bytes: usize,
    /// Dirty bytes one file may hold before it is written back.
    pub file_dirty_limit: usize,
    /// Dirty bytes all files together may hold.
    pub total_dirty_limit: usize,
    pub read_only: bool,
    /// Called with fresh usage figures after every durable commit (the CLI publishes them
    /// for `stats` on a mounted store).
    pub on_durable: Option<Arc<dyn Fn(Usage) + Send + Sync>>,
    /// The store directory, where snapshot files live (none: no snapshots).
    pub store_dir: Option<std::path::PathBuf>,
    /// When reads update access times (`relatime` by default).
    pub atime: Atime,
    /// Whether directory reads update access times (`nodiratime`: no).
    pub dir_atime: bool,
}

impl std::fmt::Debug for FsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsConfig")
            .field("cache_bytes", &self.cache_bytes)
            .field("file_dirty_limit", &self.file_dirty_limit)
            .field("total_dirty_limit", &self.total_dirty_limit)
            .field("read_only", &self.read_only)
            .field("atime", &self.atime)
            .field("dir_atime", &self.dir_atime)
            .finish()
    }
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            cache_bytes: 256 << 20,
            file_dirty_limit: 64 << 20,
            total_dirty_limit: 256 << 20,
            read_only: false,
            on_durable: None,
            store_dir: None,
            atime: Atime::Relative,
            dir_atime: true,
        }
    }
}

/// Attribute changes requested by setattr; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<Ts>,
}

#[derive(Clone, Copy, Debug)]
pub enum TimeSet {
    Now,
    At(Ts),
}

impl TimeSet {
    fn resolve(self) -> Ts {
        match self {
            TimeSet::Now => Ts::now(),
            TimeSet::At(t) => t,
        }
    }
}

/// Rename flags (renameat2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
    /// RENAME_WHITEOUT (overlayfs upper layers): a whiteout, a character device 0/0 of mode
    /// 0 owned by this caller, takes the source's name in the same transaction.
    pub whiteout: Option<Caller>,
}

/// Who is asking: owner of new inodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// An inode that is open or has dirty data. Its `attr` is authoritative over the database's
/// copy while it is here; `attr_dirty` says the database copy is behind.
struct OpenInode {
    attr: Attr,
    attr_dirty: bool,
    dirty: DirtyMap,
    opens: u32,
    /// Ranges being written back right now, with the state lock released; reads see them
    /// between the committed data and `dirty`.
    flushing: Option<Arc<Ranges>>,
    /// Queued for the background writer.
    queued: bool,
    /// The last write-back failed: the next write that needs room writes back itself, so
    /// the writer sees the error (ENOSPC) instead of memory filling up.
    wb_failed: bool,
    /// The durable epoch (`Fs::durable_epoch`) in which a write-back of it was last
    /// committed: while it is the current one, a failed commit loses that write-back.
    committed_at: Option<u64>,
    /// The failed commit (`State::failures`) that last lost some of its writes (0: none);
    /// its next fsync reports EIO unless it already reported that failure (`told`), as Linux
    /// reports a write-back error once.
    lost_at: u64,
    /// The failed commit this file's last failed fsync reported (it got that commit's error).
    told: u64,
    /// Written to since that fsync: a loss found later covers these bytes, not yet reported.
    wrote_since_told: bool,
    /// The failed commit whose reset first found this inode missing from the database (its
    /// creation dropped): `discard_gone` follows.
    gone_at: Option<u64>,
    /// Where the last read ended: a read starting there is sequential and gets read-ahead.
    read_end: u64,
    /// Known to have no `security.capability` (looked up by a write; a setxattr of that name
    /// clears it): later writes need not look again (`Fs::kill_priv`).
    no_caps: bool,
}

impl OpenInode {
    /// Closed, with nothing to write and nothing in flight or queued: the entry can go.
    fn idle(&self) -> bool {
        self.opens == 0 && self.written_back() && !self.attr_dirty
    }

    /// No data waiting: nothing dirty, nothing queued for or in write-back.
    fn written_back(&self) -> bool {
        self.dirty.is_empty() && self.flushing.is_none() && !self.queued
    }
}

/// The size to commit for a file of `size` bytes whose bytes in `pending` (start, end) are not
/// committed yet, where `committed` is the size committed so far: never past the first
/// pending byte beyond `committed`, so committed metadata never shows a file longer than its
/// committed data (a crash, or a snapshot copying the durable state, would otherwise show
/// NULs where writes were still in memory). The size catches up when they are written back.
fn committed_size(committed: u64, size: u64, pending: impl IntoIterator<Item = (u64, u64)>) -> u64 {
    if size <= committed {
        return size;
    }
    pending
        .into_iter()
        .filter(|&(_, end)| end > committed)
        .map(|(start, _)| start.max(committed))
        .min()
        .map_or(size, |first| first.min(size))
}

/// The error for `ino` missing from the metadata: ESTALE for an inode a handle still names
/// after a failed commit dropped its creation, ENOENT otherwise.
fn missing(st: &State, ino: Ino) -> FsError {
    if st.stale.contains_key(&ino) || st.open.contains_key(&ino) {
        FsError::Stale
    } else {
        FsError::NotFound
    }
}

/// Is a write-back of any inode in flight (its snapshot may count dead chunks as live)?
fn flush_in_flight(st: &State) -> bool {
    st.open.values().any(|o| o.flushing.is_some())
}

type Guard<'a> = parking_lot::MutexGuard<'a, State>;
/// Dirty ranges taken for write-back: sorted, non-overlapping.
type Ranges = Vec<(u64, Vec<u8>)>;

enum Handle {
    File {
        ino: Ino,
        write: bool,
    },
    /// A directory's entries are read at the first readdir from offset 0, and again at each
    /// rewind (so rewinddir sees the directory as it is then), not at opendir: a directory
    /// opened only as a base for *at() calls or fchdir costs no scan.
    Dir {
        ino: Ino,
        entries: Option<Arc<Mutex<dir_listing::Listing>>>,
    },
}

/// The open group of metadata changes: one write transaction shared by operations until it
/// is committed (see the module comment).
struct Pending {
    tx: WTx,
    ops: u32,
    since: Instant,
    /// Inodes whose extents the group changed: a snapshot reader of one settles the group first.
    extents: HashSet<Ino>,
}

/// Metadata as the latest operation left it: the open group, or a snapshot of the committed
/// state when no group is open.
enum View<'a> {
    Group(&'a WTx),
    Snap(meta::RTx),
}

impl<'a> std::ops::Deref for View<'a> {
    type Target = dyn MetaRead + 'a;
    fn deref(&self) -> &Self::Target {
        match self {
            View::Group(tx) => *tx,
            View::Snap(r) => r,
        }
    }
}

#[derive(Default)]
struct State {
    open: HashMap<Ino, OpenInode>,
    handles: HashMap<u64, Handle>,
    /// File handles the kernel has sent FLUSH for (their fd was closed): their RELEASE is
    /// on its way. The kernel sends RELEASE asynchronously after close(2) returns, so it may
    /// reach us after a later unlink and fsyncdir of the same process (`sync_dir` waits).
    flushed: HashSet<u64>,
    next_fh: u64,
    dirty_total: usize,
    /// Something was committed since the last durable commit.
    since_durable: bool,
    /// Chunks written since the last durable commit that metadata did not know before: no
    /// durable metadata references them, so once unreferenced they may go before the next
    /// durable commit (which a full disk may otherwise have no room for).
    fresh_since_durable: HashSet<ChunkId>,
    pending: Option<Pending>,
    /// Closed inodes whose last link is gone, waiting to be deleted (see `reap`).
    reap: Vec<Ino>,
    /// Above every inode number handed out in this mount. A failed commit gives the numbers
    /// of the operations it drops back to the database's allocator, but the kernel and open
    /// handles still know them: a number handed out again would let the dropped file's
    /// write-back overwrite another inode. After a remount they may be used again.
    ino_floor: Ino,
    /// Inodes this mount handed out whose creation a failed commit dropped, found while a
    /// handle still named them (`discard_gone`): their handles get ESTALE. Never reused in
    /// this mount (`ino_floor`), and few (one per file open across a failed commit). The flag
    /// says whether an fsync of the file reported the loss, with nothing written since: its
    /// closes then need not report it again (otherwise each does).
    stale: HashMap<Ino, bool>,
    /// The database generation (`MetaDb::generation`) the open inodes' attributes agree with;
    /// `None` after a failed commit whose reset could not read the database yet.
    meta_gen: Option<u64>,
    /// Failed commits so far (each counted once, when its reset starts).
    failures: u64,
    /// Resets run so far (`reset_open`: a failed commit's, and each retry of one owed).
    resets: u64,
    /// Directories whose listing the kernel may keep (handle-less opens), and the listings
    /// readers share (`kernel_listings`).
    held: kernel_listings::Held,
}

pub struct Fs {
    meta: MetaDb,
    /// Name patterns whose new files are chunked in fixed blocks.
    fixed_patterns: Vec<String>,
    cache: ChunkCache,
    chunker: Chunker,
    cfg: FsConfig,
    state: Mutex<State>,
    /// Signalled whenever a write-back finishes.
    flush_done: Condvar,
    /// Kernel listing invalidations owed (`kernel_listings`).
    stale: kernel_listings::Stale,
    /// Queue of the background writer, when started.
    background: Mutex<Option<crossbeam_channel::Sender<Ino>>>,
    /// Queue of the prefetch threads, when started.
    prefetch: Mutex<Option<crossbeam_channel::Sender<(ChunkId, u32)>>>,
    /// Held shared by readers between their metadata snapshot and their chunk loads, and
    /// exclusively while chunk files are removed: a reader never loses a chunk it was promised.
    removal: RwLock<()>,
    /// Chunks that write-backs in the open metadata group reference: a write-back whose
    /// snapshot does not show them yet finds them here instead of storing them again.
    recent: Mutex<HashSet<ChunkId>>,
    /// Chunk bytes stored since the last sync of the store (a hint: see `make_durable`).
    unsynced_bytes: AtomicU64,
    /// Durable commits made so far: a metadata backup is due once this moved.
    durable_epoch: AtomicU64,
    /// Compaction moved chunks to other packs (a durable change of the pack index alone)
    /// since the last durable point: the next one counts as a change, so that a remote
    /// volume publishes a generation naming the new packs.
    packs_moved: std::sync::atomic::AtomicBool,
    /// blake3 digests of whole files by inode, with the content fingerprint each is valid for.
    digests: Mutex<digest::DigestCache>,
    /// Requests served, by operation (counted by the FUSE adapter).
    counters: Counters,
    /// Which opens use the kernel's page cache (see `page_cache`).
    page_cache: Mutex<page_cache::PageCachePolicy>,
    /// Unlinked inodes the kernel may still ask about (see `ghosts`).
    ghosts: ghosts::Ghosts,
    /// Snapshots, and the chunks they hold.
    snaps: snapshots::Snapshots,
    /// Every change refused from now on (`Fs::fence`).
    fenced: std::sync::atomic::AtomicBool,
    /// Where directory handles' big listings go.
    listings: Arc<dir_listing::Scratch>,
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(FsError::Invalid("bad file name"));
    }
    Ok(())
}

impl Fs {
    /// Opens the filesystem over an opened metadata database and chunk store. Removes inodes
    /// orphaned by a crash (unlinked while open) and chunk files whose refcount reached 0.
    pub fn new(meta: MetaDb, store: Arc<dyn ChunkStore>, cfg: FsConfig) -> Result<Fs> {
        let params = meta.chunk_params()?;
        params.validate().map_err(FsError::Corrupt)?;
        let fixed_patterns = meta.fixed_patterns()?;
        // A pack store knows its store directory: snapshots are found (and their chunks held)
        // whoever opens the volume, not only a daemon that named it.
        let store_dir = cfg.store_dir.clone().or_else(|| {
            store
                .packs()
                .and_then(|p| p.dir().parent().map(std::path::Path::to_path_buf))
        });
        let (snaps, deleting) = snapshots::Snapshots::open(store_dir.as_deref(), cfg.read_only)?;
        let listings = Arc::new(dir_listing::Scratch::new(store_dir));
        let fs = Fs {
            fixed_patterns,
            cache: ChunkCache::new(store, cfg.cache_bytes),
            chunker: Chunker::new(params),
            meta,
            cfg,
            state: Mutex::new(State {
                next_fh: 1,
                // A database just opened was never reopened.
                meta_gen: Some(0),
                ..State::default()
            }),
            flush_done: Condvar::new(),
            stale: kernel_listings::Stale::default(),
            background: Mutex::new(None),
            prefetch: Mutex::new(None),
            removal: RwLock::new(()),
            recent: Mutex::new(HashSet::new()),
            unsynced_bytes: AtomicU64::new(0),
            durable_epoch: AtomicU64::new(0),
            packs_moved: std::sync::atomic::AtomicBool::new(false),
            digests: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(digest::CACHED_DIGESTS).expect("non-zero"),
            )),
            counters: Counters::default(),
            page_cache: Mutex::new(page_cache::PageCachePolicy::default()),
            ghosts: ghosts::Ghosts::default(),
            snaps,
            fenced: std::sync::atomic::AtomicBool::new(false),
            listings,
        };
        if !fs.cfg.read_only {
            let orphans = fs.meta.begin_read()?.orphans()?;
            if !orphans.is_empty() {
                let mut tx = fs.meta.begin_write()?;
                for ino in orphans {
                    tx.delete_inode(ino)?;
                }
                tx.commit(false)?;
            }
            fs.store().sync()?;
            fs.meta.make_durable()?;
            fs.finish_deletions(deleting)?;
            fs.remove_dead_chunks()?;
        }
        Ok(fs)
    }

    /// The bytes of `ino` change: a later page-cache open must not keep the kernel's pages.
    fn content_changed(&self, ino: Ino) {
        self.page_cache.lock().changed(ino);
    }

    /// Requests served so far, by operation.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn chunk_params(&self) -> ChunkParams {
        self.chunker.params()
    }

    pub fn store(&self) -> &Arc<dyn ChunkStore> {
        self.cache.store()
    }

    /// The metadata database, with the open group committed first so that a snapshot shows
    /// every operation so far (a failed commit is logged). For tests and tools, while no
    /// other operation runs: the daemon's maintenance goes through `with_quiesced`.
    pub fn meta(&self) -> &MetaDb {
        let _ = self.settle(&mut self.state.lock());
        &self.meta
    }

    /// `writable`, and `ino` is not inside a snapshot.
    fn writable_ino(&self, ino: Ino) -> Result<()> {
        if in_snapshot(ino) {
            return Err(FsError::ReadOnly);
        }
        self.writable()
    }

    /// Whether the mount may change its store: not read-only, not fenced.
    pub fn is_writable(&self) -> bool {
        self.writable().is_ok()
    }

    fn writable(&self) -> Result<()> {
        if self.cfg.read_only || self.fenced.load(std::sync::atomic::Ordering::Relaxed) {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Refuses every change from now on (EROFS), for the rest of the mount: another machine
    /// took this remote volume over, or the store can make nothing durable any more (`why` is
    /// logged once).
    pub fn fence(&self, why: &str) {
        if !self.fenced.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::error!("the volume is read-only from now on: {why}");
        }
    }

    /// Whether [`Fs::fence`] was called.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn statfs(&self) -> Result<StatFs> {
        let SpaceUsage {
            total_bytes,
            free_bytes,
            avail_bytes,
        } = self.store().space()?;
        let bsize = 4096u64;
        let files = self.with_view(|r| r.meta_u64("next_ino"))?.unwrap_or(2);
        // Used = what the store's data takes on disk, where the store knows it (packs, dead
        // records included); free = what the backing filesystem has left (the metadata reserve
        // is allocated, so it is not counted free).
        let used = self.store().usage()?.disk_bytes;
        let (total_bytes, free_bytes) = if used > 0 {
            (used + avail_bytes, avail_bytes)
        } else {
            (total_bytes, free_bytes)
        };
        Ok(StatFs {
            blocks: total_bytes / bsize,
            bfree: free_bytes / bsize,
            bavail: avail_bytes / bsize,
            files: files + (1 << 32),
            ffree: 1 << 32,
            bsize: bsize as u32,
            namelen: NAME_MAX as u32,
        })
    }

    /// The chunking policy of `ino` (its `user.dedupfs.chunking` xattr; CDC by default).
    /// Fixed blocks are the store's average chunk size.
    fn policy(&self, snap: &dyn MetaRead, ino: Ino) -> Result<Policy> {
        Ok(snap
            .xattr(ino, POLICY_XATTR)?
            .and_then(|v| Policy::from_xattr(&v, self.chunker.params().avg))
            .unwrap_or(Policy::Cdc))
    }

    /// Bytes of data a file holds (its st_blocks): committed chunks plus dirty bytes.
    /// `allocated`, and whether that figure is settled: false while the file has data not
    /// yet written back (a write-back turns runs of zeros into holes, so the figure drops).
    pub fn allocated_settled(&self, ino: Ino) -> Result<(u64, bool)> {
        let settled = self
            .state
            .lock()
            .open
            .get(&ino)
            .is_none_or(OpenInode::written_back);
        Ok((self.allocated(ino)?, settled))
    }

    pub fn allocated(&self, ino: Ino) -> Result<u64> {
        if ino == SNAPDIR_INO {
            return Ok(0);
        }
        if in_snapshot(ino) {
            return self.with_snap(ino, |r, i| r.allocated(i));
        }
        let dirty = {
            let st = self.state.lock();
            st.open
                .get(&ino)
                .map(|o| {
                    let flushing: usize = o
                        .flushing
                        .iter()
                        .flat_map(|f| f.iter())
                        .map(|(_, v)| v.len())
                        .sum();
                    (o.dirty.bytes() + flushing) as u64
                })
                .unwrap_or(0)
        };
        Ok(self.with_view(|r| r.allocated(ino))? + dirty)
    }

    /// Figures for `stats`: logical, referenced and physical bytes, chunk count.
    pub fn usage(&self) -> Result<Usage> {
        usage_of(&self.meta, self.store().as_ref())
    }
}

/// Space accounting of a store.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Sum of the apparent sizes of regular files.
    pub logical_bytes: u64,
    /// Sum of the lengths of all chunk references (data that is not a hole).
    pub referenced_bytes: u64,
    /// Sum of the lengths of distinct live chunks: what the store holds, before compression.
    pub physical_bytes: u64,
    pub chunk_count: u64,
    pub files: u64,
    /// The store's own figures: stored (compressed) bytes, bytes of pack files on disk (dead
    /// records included), dead bytes, pack count.
    #[serde(default, flatten)]
    pub store: StoreUsage,
}

pub fn usage_of(m: &MetaDb, store: &dyn ChunkStore) -> Result<Usage> {
    let r = m.begin_read()?;
    Ok(Usage {
        logical_bytes: r.counter(meta::C_LOGICAL)?,
        referenced_bytes: r.counter(meta::C_REFERENCED)?,
        physical_bytes: r.counter(meta::C_PHYSICAL)?,
        chunk_count: r.counter(meta::C_CHUNKS)?,
        files: r.counter(meta::C_FILES)?,
        store: store.usage()?,
    })
}
