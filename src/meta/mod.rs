//! Metadata in redb: inodes, directory entries, chunk lists (extents), chunk refcounts,
//! symlink targets, xattrs and orphans. The schema is in docs/design.md.
//!
//! Invariants kept here:
//! - a chunk's refcount equals the number of extents (over all inodes) that name it;
//! - a chunk whose refcount fell to 0 is listed in `zero_refs` until its file is removed, which
//!   happens only after a durable commit (so a crash can never revert to metadata that
//!   references a removed chunk);
//! - `counters` hold the physical bytes and chunk count of live chunks, and referenced bytes.

pub mod attr;
mod backend;
pub mod backup;
#[cfg(test)]
mod cache_model_tests;
pub mod snapshot;

pub use attr::{Attr, Kind, Ts};

use crate::chunker::ChunkParams;
use crate::error::{FsError, Ino, Result};
use crate::hash::ChunkId;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// Schema version of the metadata database. Bump on any incompatible change to a table.
/// 2: chunk files at `chunks/xx/<hex>` (1: `chunks/xx/yy/<hex>`, still read; a store of
/// format 1 is marked 2 when opened, so an older dedupfs refuses it rather than miss chunks).
/// 3: new chunks go to pack files (`packs/`, `index.redb`); the tables here are unchanged, so
/// stores of format 1 and 2 are marked 3 when opened (their loose chunk files are still read),
/// and an older dedupfs then refuses them rather than miss chunks that live in packs.
pub const FORMAT_VERSION: u64 = 3;
pub const ROOT_INO: Ino = 1;
/// The error of opening a database that has no format version (not dedupfs metadata, or
/// damaged).
pub const NO_FORMAT_VERSION: &str = "metadata has no format version";

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
const DIRENTS: TableDefinition<(u64, &[u8]), (u64, u8)> = TableDefinition::new("dirents");
const EXTENTS: TableDefinition<(u64, u64), (&[u8; 32], u32)> = TableDefinition::new("extents");
const CHUNKS: TableDefinition<&[u8; 32], (u64, u32)> = TableDefinition::new("chunks");
const ZERO_REFS: TableDefinition<&[u8; 32], ()> = TableDefinition::new("zero_refs");
const SYMLINKS: TableDefinition<u64, &[u8]> = TableDefinition::new("symlinks");
const XATTRS: TableDefinition<(u64, &[u8]), &[u8]> = TableDefinition::new("xattrs");
const ORPHANS: TableDefinition<u64, ()> = TableDefinition::new("orphans");
/// Bytes of chunk data referenced by each regular file (its st_blocks, holes excluded).
const ALLOCATED: TableDefinition<u64, u64> = TableDefinition::new("allocated");

pub const C_PHYSICAL: &str = "physical_bytes";
pub const C_CHUNKS: &str = "chunk_count";
pub const C_REFERENCED: &str = "referenced_bytes";
/// Sum of the sizes of regular files, and their number (kept so `stats` is O(1)).
pub const C_LOGICAL: &str = "logical_bytes";
pub const C_FILES: &str = "files";

/// One entry of a file's chunk list: bytes `[offset, offset+len)` are chunk `id`.
/// Offsets not covered by any extent are holes and read as zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub id: ChunkId,
    pub len: u32,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.len as u64
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: Kind,
}

pub struct MetaDb {
    /// The database (`None` after a failed reopen) and how many times it was reopened.
    db: parking_lot::RwLock<(Option<Database>, u64)>,
    path: std::path::PathBuf,
    /// Set by [`MetaDb::abandon`]: the backend writes nothing more.
    abandoned: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Armed by [`MetaDb::fail_writes`]: the errno the backend's writes fail with (0: none).
    fail_errno: std::sync::Arc<std::sync::atomic::AtomicI32>,
}

/// Bytes of pages redb keeps in memory for an open metadata database. redb's default, 1 GiB
/// (each for this database and the pack index), let the daemon grow toward 2 GiB with the
/// volume. Misses are reads of the database file, which the kernel's page cache usually serves
/// (shared, and given back under memory pressure), but they cost: measured in-process (1M
/// files of 3 KB in 400 directories, a 272 MiB database, quiet machine), a lookup+open+read of
/// files in uniformly random order took 21.4 s with 256 MiB, 21.8-23.5 s with 1 GiB, 30.3 s with
/// 128 MiB and 34.1-34.3 s with 64 MiB; peak RSS 239, 257, 148 and 81 MiB; creating them and a
/// lookup+getattr walk in name order took the same with every size. So no cost until the
/// metadata outgrows 256 MiB (about a million files), and a bound of 512 MiB for both.
pub const CACHE: usize = 256 << 20;

/// The page cache size databases opened from now on get (`CACHE` unless the mount option
/// `meta_cache_mib` set it).
static DB_CACHE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(CACHE);

/// Sets the page cache size of the metadata database and the pack index for this process
/// (`mount -o meta_cache_mib=N`, before the store is opened).
pub fn set_db_cache(bytes: usize) {
    DB_CACHE.store(bytes, std::sync::atomic::Ordering::Relaxed);
}

/// Page cache size for a metadata database or pack index opened now.
pub fn db_cache() -> usize {
    DB_CACHE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Opens (or with `create`, creates) the database file at `path` on an abandonable backend.
fn open_db(
    path: &Path,
    create: bool,
    abandoned: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    fail_errno: &std::sync::Arc<std::sync::atomic::AtomicI32>,
) -> Result<Database> {
    let backend = backend::Backend::open(path, create, abandoned.clone(), fail_errno.clone())
        .map_err(|e| FsError::Db(format!("{}: {e}", path.display())))?;
    Ok(Database::builder()
        .set_cache_size(db_cache())
        .create_with_backend(backend)?)
}

/// redb refuses all work after an I/O error in a commit (a full disk): the handle must be
/// closed and the file reopened, which recovers the last durable commit.
fn poisoned(e: &FsError) -> bool {
    matches!(e, FsError::Db(m) if m.contains("Previous I/O error"))
}

fn kind_of(code: u8) -> Result<Kind> {
    Kind::from_code(code).ok_or_else(|| FsError::Corrupt(format!("bad kind {code} in dirent")))
}

impl MetaDb {
    /// Creates a new database with an empty root directory.
    pub fn create(path: &Path, params: ChunkParams, uid: u32, gid: u32) -> Result<MetaDb> {
        let (abandoned, fail_errno) = Default::default();
        let db = open_db(path, true, &abandoned, &fail_errno)?;
        let meta = MetaDb {
            db: parking_lot::RwLock::new((Some(db), 0)),
            path: path.to_path_buf(),
            abandoned,
            fail_errno,
        };
        let mut tx = meta.begin_write()?;
        tx.set_meta("format_version", &FORMAT_VERSION.to_le_bytes())?;
        let p = serde_json::to_vec(&params).map_err(|e| FsError::Corrupt(e.to_string()))?;
        tx.set_meta("chunk_params", &p)?;
        tx.set_meta("next_ino", &(ROOT_INO + 1).to_le_bytes())?;
        let mut root = Attr::new(Kind::Dir, 0o755, uid, gid);
        root.nlink = 2;
        root.parent = ROOT_INO;
        tx.put_inode(ROOT_INO, &root)?;
        // Touch every table so read transactions never meet a missing one.
        {
            let t = &tx.tx;
            t.open_table(COUNTERS)?;
            t.open_table(DIRENTS)?;
            t.open_table(EXTENTS)?;
            t.open_table(CHUNKS)?;
            t.open_table(ZERO_REFS)?;
            t.open_table(SYMLINKS)?;
            t.open_table(XATTRS)?;
            t.open_table(ORPHANS)?;
            t.open_table(ALLOCATED)?;
        }
        tx.commit(true)?;
        Ok(meta)
    }

    /// Opens an existing database, checking its format version.
    pub fn open(path: &Path) -> Result<MetaDb> {
        let (abandoned, fail_errno) = Default::default();
        let db = open_db(path, false, &abandoned, &fail_errno)?;
        let meta = MetaDb {
            db: parking_lot::RwLock::new((Some(db), 0)),
            path: path.to_path_buf(),
            abandoned,
            fail_errno,
        };
        let version = {
            let r = meta.begin_read()?;
            r.meta_u64("format_version")?
        };
        match version {
            Some(FORMAT_VERSION) => Ok(meta),
            Some(1 | 2) => {
                let mut tx = meta.begin_write()?;
                tx.set_meta("format_version", &FORMAT_VERSION.to_le_bytes())?;
                tx.commit(true)?;
                Ok(meta)
            }
            Some(v) if v > FORMAT_VERSION => Err(FsError::Corrupt(format!(
                "store format version {v} is newer than this dedupfs supports ({FORMAT_VERSION}); upgrade dedupfs"
            ))),
            Some(v) => Err(FsError::Corrupt(format!(
                "store format version {v} is not supported"
            ))),
            None => Err(FsError::Corrupt(NO_FORMAT_VERSION.into())),
        }
    }

    pub fn begin_write(&self) -> Result<WTx> {
        self.with_db(|db| Ok(WTx::new(db.begin_write()?)))
    }

    /// Copies the read snapshot `snap` into a new database file `dst` (every table, committed
    /// durably): a consistent copy of the metadata while it changes.
    pub fn copy_to(snap: &RTx, dst: &std::path::Path) -> Result<u64> {
        backup::copy_snapshot(snap, dst)
    }

    pub fn begin_read(&self) -> Result<RTx> {
        self.with_db(|db| {
            Ok(RTx {
                tx: db.begin_read()?,
            })
        })
    }

    /// Runs `f` on the open database; after redb reports an earlier I/O error (a commit that
    /// failed on a full disk), closes and reopens the file and tries once more.
    fn with_db<T>(&self, f: impl Fn(&Database) -> Result<T>) -> Result<T> {
        let seen = {
            let g = self.db.read();
            if let Some(db) = g.0.as_ref() {
                match f(db) {
                    Err(e) if poisoned(&e) => {}
                    other => return other,
                }
            }
            g.1
        };
        self.reopen(seen)?;
        let g = self.db.read();
        let db =
            g.0.as_ref()
                .ok_or_else(|| FsError::Db("metadata database is closed".into()))?;
        f(db)
    }

    /// Reopens the database unless someone did since generation `seen`.
    fn reopen(&self, seen: u64) -> Result<()> {
        let mut g = self.db.write();
        if g.1 != seen && g.0.is_some() {
            return Ok(());
        }
        tracing::error!(
            "metadata database failed after an I/O error (disk full?): reopening it; changes \
             not yet made durable are lost, as in a crash"
        );
        g.0.take();
        if self.abandoned.load(std::sync::atomic::Ordering::Acquire) {
            return Err(FsError::Db("metadata database is closed".into()));
        }
        g.0 = Some(open_db(
            &self.path,
            false,
            &self.abandoned,
            &self.fail_errno,
        )?);
        g.1 += 1;
        Ok(())
    }

    /// redb's full check of the file (every page's checksum); may repair what redb can.
    /// `Ok(false)`: damage was found and repaired.
    pub fn check_integrity(&self) -> Result<bool> {
        let mut g = self.db.write();
        let db =
            g.0.as_mut()
                .ok_or_else(|| FsError::Db("metadata database is closed".into()))?;
        Ok(db.check_integrity()?)
    }

    /// Closes the database *without* redb's clean shutdown, which would make every commit
    /// durable, including non-durable ones that name chunks the store never synced. The file
    /// then recovers to its last durable commit at the next open, exactly as after a crash.
    /// Later calls fail ("metadata database is closed").
    pub fn abandon(&self) {
        self.abandoned
            .store(true, std::sync::atomic::Ordering::Release);
        self.db.write().0.take();
    }

    /// Fault injection for tests: from now on every write, resize and sync of the database
    /// file fails with `errno` and changes nothing (`libc::ENOSPC`: a full disk), until called
    /// with `None`. A commit that meets it fails, and redb then refuses all work until the
    /// file is reopened, which recovers the last durable commit (`with_db`).
    pub fn fail_writes(&self, errno: Option<i32>) {
        self.fail_errno
            .store(errno.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    /// How many times the database was reopened after an I/O error: each reopen went back to
    /// the last durable commit, dropping every commit made since.
    pub fn generation(&self) -> u64 {
        self.db.read().1
    }

    /// Size of the database file (an upper bound of a copy of it).
    pub fn file_len(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// A durable empty commit: makes every earlier non-durable commit durable.
    pub fn make_durable(&self) -> Result<()> {
        self.begin_write()?.commit(true)
    }

    /// Name patterns whose new files get fixed-size chunking (set at `init`).
    pub fn fixed_patterns(&self) -> Result<Vec<String>> {
        let r = self.begin_read()?;
        match r.meta("fixed_patterns")? {
            Some(raw) => serde_json::from_slice(&raw).map_err(|e| FsError::Corrupt(e.to_string())),
            None => Ok(Vec::new()),
        }
    }

    pub fn set_fixed_patterns(&self, patterns: &[String]) -> Result<()> {
        let raw = serde_json::to_vec(patterns).map_err(|e| FsError::Corrupt(e.to_string()))?;
        let mut tx = self.begin_write()?;
        tx.set_meta("fixed_patterns", &raw)?;
        tx.commit(true)
    }

    pub fn chunk_params(&self) -> Result<ChunkParams> {
        let r = self.begin_read()?;
        let raw = r
            .meta("chunk_params")?
            .ok_or_else(|| FsError::Corrupt("no chunk_params".into()))?;
        serde_json::from_slice(&raw).map_err(|e| FsError::Corrupt(e.to_string()))
    }
}

/// Shared read operations of read and write transactions, over any readable tables.
macro_rules! read_ops {
    () => {
        pub fn meta_u64(&self, key: &str) -> Result<Option<u64>> {
            Ok(self
                .meta(key)?
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map(u64::from_le_bytes))
        }

        fn table_lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<(Ino, Kind)>> {
            let t = self.tx.open_table(DIRENTS)?;
            match t.get((parent, name))? {
                Some(v) => {
                    let (ino, k) = v.value();
                    Ok(Some((ino, kind_of(k)?)))
                }
                None => Ok(None),
            }
        }

        fn table_list_dir(&self, dir: Ino) -> Result<Vec<DirEntry>> {
            let mut out = Vec::new();
            self.table_each_in_dir(dir, &mut |e| {
                out.push(e);
                Ok(())
            })?;
            Ok(out)
        }

        fn table_each_in_dir(&self, dir: Ino, f: &mut EntryFn) -> Result<()> {
            let t = self.tx.open_table(DIRENTS)?;
            let empty: &[u8] = &[];
            for r in t.range((dir, empty)..)? {
                let (k, v) = r?;
                let (p, name) = k.value();
                if p != dir {
                    break;
                }
                let (ino, kind) = v.value();
                f(DirEntry {
                    name: name.to_vec(),
                    ino,
                    kind: kind_of(kind)?,
                })?;
            }
            Ok(())
        }

        fn table_dir_is_empty(&self, dir: Ino) -> Result<bool> {
            let t = self.tx.open_table(DIRENTS)?;
            let empty: &[u8] = &[];
            let first = t.range((dir, empty)..)?.next();
            match first {
                Some(r) => Ok(r?.0.value().0 != dir),
                None => Ok(true),
            }
        }

        /// Extents of `ino` that overlap `[from, to)`, in offset order.
        fn table_extents(&self, ino: Ino, from: u64, to: u64) -> Result<Vec<Extent>> {
            let t = self.tx.open_table(EXTENTS)?;
            let mut out = Vec::new();
            if from >= to {
                return Ok(out);
            }
            // The extent containing `from` starts at or before it: the last key <= from.
            if let Some(r) = t.range((ino, 0)..=(ino, from))?.next_back() {
                let (k, v) = r?;
                let (id, len) = v.value();
                let e = Extent {
                    offset: k.value().1,
                    id: ChunkId(*id),
                    len,
                };
                if e.end() > from {
                    out.push(e);
                }
            }
            if from < u64::MAX {
                for r in t.range((ino, from + 1)..(ino, to))? {
                    let (k, v) = r?;
                    let (id, len) = v.value();
                    out.push(Extent {
                        offset: k.value().1,
                        id: ChunkId(*id),
                        len,
                    });
                }
            }
            Ok(out)
        }

        /// The extent that ends exactly at `offset`, if any (used to extend a re-chunk region
        /// backwards over a short tail chunk).
        pub fn extent_ending_at(&self, ino: Ino, offset: u64) -> Result<Option<Extent>> {
            if offset == 0 {
                return Ok(None);
            }
            Ok(self
                .extents(ino, offset - 1, offset)?
                .into_iter()
                .find(|e| e.end() == offset))
        }

        /// Every extent of `ino` in offset order, streamed: bounded memory for any file size.
        pub fn for_each_extent_of(
            &self,
            ino: Ino,
            f: &mut dyn FnMut(Extent) -> Result<()>,
        ) -> Result<()> {
            let t = self.tx.open_table(EXTENTS)?;
            for r in t.range((ino, 0)..=(ino, u64::MAX))? {
                let (k, v) = r?;
                let (id, len) = v.value();
                f(Extent {
                    offset: k.value().1,
                    id: ChunkId(*id),
                    len,
                })?;
            }
            Ok(())
        }

        /// All extents of an inode.
        pub fn all_extents(&self, ino: Ino) -> Result<Vec<Extent>> {
            self.extents(ino, 0, u64::MAX)
        }

        /// Refcount and length of a chunk, if the metadata knows it.
        pub fn chunk(&self, id: &ChunkId) -> Result<Option<(u64, u32)>> {
            let t = self.tx.open_table(CHUNKS)?;
            Ok(t.get(&id.0)?.map(|v| v.value()))
        }

        pub fn for_each_chunk(&self, f: &mut dyn FnMut(ChunkId, u64, u32)) -> Result<()> {
            let t = self.tx.open_table(CHUNKS)?;
            for r in t.iter()? {
                let (k, v) = r?;
                let (rc, len) = v.value();
                f(ChunkId(*k.value()), rc, len);
            }
            Ok(())
        }

        /// Up to `limit` extents of `ino` that start at or after `from`, in offset order.
        pub fn extents_from(&self, ino: Ino, from: u64, limit: usize) -> Result<Vec<Extent>> {
            let t = self.tx.open_table(EXTENTS)?;
            let mut out = Vec::new();
            for r in t.range((ino, from)..=(ino, u64::MAX))?.take(limit) {
                let (k, v) = r?;
                let (id, len) = v.value();
                out.push(Extent {
                    offset: k.value().1,
                    id: ChunkId(*id),
                    len,
                });
            }
            Ok(out)
        }

        /// Up to `limit` chunk rows (id, refcount, length) after `after`, in id order.
        pub fn chunks_after(
            &self,
            after: Option<&ChunkId>,
            limit: usize,
        ) -> Result<Vec<(ChunkId, u64, u32)>> {
            let t = self.tx.open_table(CHUNKS)?;
            let mut out = Vec::new();
            let rows = match after {
                Some(a) => t.range::<&[u8; 32]>((
                    std::ops::Bound::Excluded(&a.0),
                    std::ops::Bound::Unbounded,
                ))?,
                None => t.iter()?,
            };
            for r in rows.take(limit) {
                let (k, v) = r?;
                let (rc, len) = v.value();
                out.push((ChunkId(*k.value()), rc, len));
            }
            Ok(out)
        }

        pub fn for_each_extent(&self, f: &mut dyn FnMut(Ino, Extent)) -> Result<()> {
            let t = self.tx.open_table(EXTENTS)?;
            for r in t.iter()? {
                let (k, v) = r?;
                let (ino, offset) = k.value();
                let (id, len) = v.value();
                f(
                    ino,
                    Extent {
                        offset,
                        id: ChunkId(*id),
                        len,
                    },
                );
            }
            Ok(())
        }

        fn table_for_each_dirent(&self, f: &mut DirentFn) -> Result<()> {
            let t = self.tx.open_table(DIRENTS)?;
            for r in t.iter()? {
                let (k, v) = r?;
                let (parent, name) = k.value();
                let (ino, kind) = v.value();
                f(parent, name, ino, kind_of(kind)?);
            }
            Ok(())
        }

        pub fn zero_refs(&self) -> Result<Vec<ChunkId>> {
            let t = self.tx.open_table(ZERO_REFS)?;
            let mut out = Vec::new();
            for r in t.iter()? {
                out.push(ChunkId(*r?.0.value()));
            }
            Ok(out)
        }

        pub fn symlink(&self, ino: Ino) -> Result<Option<Vec<u8>>> {
            let t = self.tx.open_table(SYMLINKS)?;
            Ok(t.get(ino)?.map(|v| v.value().to_vec()))
        }

        fn table_xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
            let t = self.tx.open_table(XATTRS)?;
            Ok(t.get((ino, name))?.map(|v| v.value().to_vec()))
        }

        fn table_xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
            let t = self.tx.open_table(XATTRS)?;
            let empty: &[u8] = &[];
            let mut out = Vec::new();
            for r in t.range((ino, empty)..)? {
                let (k, _) = r?;
                let (i, name) = k.value();
                if i != ino {
                    break;
                }
                out.push(name.to_vec());
            }
            Ok(out)
        }

        pub fn orphans(&self) -> Result<Vec<Ino>> {
            let t = self.tx.open_table(ORPHANS)?;
            let mut out = Vec::new();
            for r in t.iter()? {
                out.push(r?.0.value());
            }
            Ok(out)
        }

        // --- maintenance (fsck) ---
    };
}

/// What the filesystem core reads from either kind of transaction (a snapshot, or the open
/// group of uncommitted changes).
pub trait MetaRead {
    fn inode(&self, ino: Ino) -> Result<Option<Attr>>;
    fn extents(&self, ino: Ino, from: u64, to: u64) -> Result<Vec<Extent>>;
    /// Up to `limit` extents of `ino` that start at or after `from`, in offset order.
    fn extents_from(&self, ino: Ino, from: u64, limit: usize) -> Result<Vec<Extent>>;
    fn chunk(&self, id: &ChunkId) -> Result<Option<(u64, u32)>>;
    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<(Ino, Kind)>>;
    /// The entries of `dir` one by one in name order, without holding them all.
    fn each_in_dir(&self, dir: Ino, f: &mut EntryFn) -> Result<()>;
    fn symlink(&self, ino: Ino) -> Result<Option<Vec<u8>>>;
    fn xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>>;
    fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>>;
    fn allocated(&self, ino: Ino) -> Result<u64>;
    fn meta_u64(&self, key: &str) -> Result<Option<u64>>;
}

macro_rules! meta_read {
    ($t:ty) => {
        impl MetaRead for $t {
            fn inode(&self, ino: Ino) -> Result<Option<Attr>> {
                <$t>::inode(self, ino)
            }
            fn extents(&self, ino: Ino, from: u64, to: u64) -> Result<Vec<Extent>> {
                <$t>::extents(self, ino, from, to)
            }
            fn extents_from(&self, ino: Ino, from: u64, limit: usize) -> Result<Vec<Extent>> {
                <$t>::extents_from(self, ino, from, limit)
            }
            fn chunk(&self, id: &ChunkId) -> Result<Option<(u64, u32)>> {
                <$t>::chunk(self, id)
            }
            fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<(Ino, Kind)>> {
                <$t>::lookup(self, parent, name)
            }
            fn each_in_dir(&self, dir: Ino, f: &mut EntryFn) -> Result<()> {
                <$t>::each_in_dir(self, dir, f)
            }
            fn symlink(&self, ino: Ino) -> Result<Option<Vec<u8>>> {
                <$t>::symlink(self, ino)
            }
            fn xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
                <$t>::xattr(self, ino, name)
            }
            fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
                <$t>::xattr_names(self, ino)
            }
            fn allocated(&self, ino: Ino) -> Result<u64> {
                <$t>::allocated(self, ino)
            }
            fn meta_u64(&self, key: &str) -> Result<Option<u64>> {
                <$t>::meta_u64(self, key)
            }
        }
    };
}
meta_read!(RTx);
meta_read!(WTx);

pub struct RTx {
    tx: redb::ReadTransaction,
}

impl RTx {
    read_ops!();

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<(Ino, Kind)>> {
        self.table_lookup(parent, name)
    }

    pub fn list_dir(&self, dir: Ino) -> Result<Vec<DirEntry>> {
        self.table_list_dir(dir)
    }

    pub fn each_in_dir(&self, dir: Ino, f: &mut EntryFn) -> Result<()> {
        self.table_each_in_dir(dir, f)
    }

    pub fn dir_is_empty(&self, dir: Ino) -> Result<bool> {
        self.table_dir_is_empty(dir)
    }

    pub fn for_each_dirent(&self, f: &mut DirentFn) -> Result<()> {
        self.table_for_each_dirent(f)
    }

    /// Extents of `ino` that overlap `[from, to)`, in offset order.
    pub fn extents(&self, ino: Ino, from: u64, to: u64) -> Result<Vec<Extent>> {
        self.table_extents(ino, from, to)
    }

    pub fn xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
        self.table_xattr(ino, name)
    }

    pub fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.table_xattr_names(ino)
    }

    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let t = self.tx.open_table(META)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    pub fn counter(&self, key: &str) -> Result<u64> {
        let t = self.tx.open_table(COUNTERS)?;
        Ok(t.get(key)?.map(|v| v.value()).unwrap_or(0))
    }

    pub fn inode(&self, ino: Ino) -> Result<Option<Attr>> {
        let t = self.tx.open_table(INODES)?;
        match t.get(ino)? {
            Some(v) => Ok(Some(Attr::decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Every inode, in inode order (maintenance and stats).
    pub fn for_each_inode(&self, f: &mut dyn FnMut(Ino, Attr) -> Result<()>) -> Result<()> {
        let t = self.tx.open_table(INODES)?;
        for r in t.iter()? {
            let (k, v) = r?;
            f(k.value(), Attr::decode(v.value())?)?;
        }
        Ok(())
    }
    /// Bytes of data (not holes) that the chunk list of `ino` covers.
    pub fn allocated(&self, ino: Ino) -> Result<u64> {
        let t = self.tx.open_table(ALLOCATED)?;
        Ok(t.get(ino)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Every row of the `allocated` table, in inode order (fsck compares it with the
    /// extents).
    pub fn for_each_allocated(&self, f: &mut dyn FnMut(Ino, u64)) -> Result<()> {
        let t = self.tx.open_table(ALLOCATED)?;
        for r in t.iter()? {
            let (k, v) = r?;
            f(k.value(), v.value());
        }
        Ok(())
    }
}

/// A write transaction. Rows that every operation of a group touches again and again (the
/// inode records of a file and its directory, their `allocated` rows, the directory entries,
/// the counters, `next_ino`) are kept decoded here
/// and written to their tables once, at commit: each redb table open and B-tree lookup costs
/// more than the operation's own work (a `tar x` of 5k files opened a table ~40 times per
/// file). Only `commit` makes them reach the database, and the transaction is all or nothing,
/// so what a crash, a failed commit or a dropped transaction loses is unchanged; reads through
/// this transaction see them as if written.
pub struct WTx {
    tx: redb::WriteTransaction,
    /// Inode records read or written by this transaction (`None`: no such inode), and whether
    /// each differs from the table's row (written at commit).
    inodes: RefCell<HashMap<Ino, Cached<Option<Attr>>>>,
    /// `allocated` rows read or written by this transaction (0: no row), likewise.
    allocated: RefCell<HashMap<Ino, Cached<u64>>>,
    /// Directory entries looked up or written by this transaction, by parent and name
    /// (`None`: no such name), likewise. Listings write them first.
    dirents: RefCell<HashMap<Ino, DirCache>>,
    /// Rows in `dirents`, and the sizes of `inodes`, `allocated` and `dirents` at which their
    /// clean rows are dropped ([`trim`]).
    dirent_rows: Cell<usize>,
    limits: [Cell<usize>; 3],
    /// Inodes this transaction created ([`WTx::create_inode`]) and whose extents, resp.
    /// xattrs, it has not written since: they have none, so reading them needs no table.
    no_extents: HashSet<Ino>,
    no_xattrs: HashSet<Ino>,
    /// Counter values changed by this transaction, written at commit.
    counters: BTreeMap<String, u64>,
    /// `meta` values set by this transaction, written at commit.
    meta_writes: BTreeMap<String, Vec<u8>>,
    /// A write of cached rows to their tables failed part-way: rows it marked written may be
    /// missing from the tables, so the transaction must never commit ([`WTx::commit`]).
    broken: Cell<bool>,
}

/// What a directory entry names: the inode and its kind.
type Dirent = (Ino, Kind);
/// The entries of one directory a write transaction knows, by name (`None`: no such name).
type DirCache = HashMap<Vec<u8>, Cached<Option<Dirent>>>;
/// A visitor of directory entries: parent, name, inode, kind.
pub type DirentFn<'a> = dyn FnMut(Ino, &[u8], Ino, Kind) + 'a;
/// Called with each entry of one directory; an error stops the walk and is returned.
pub type EntryFn<'a> = dyn FnMut(DirEntry) -> Result<()> + 'a;

/// A row as this transaction sees it; `dirty`: the table still holds an older value.
#[derive(Clone, Copy)]
struct Cached<T> {
    value: T,
    dirty: bool,
}

/// Rows a write transaction's cache holds before it drops those equal to the table's (clean
/// ones). Reads through the open group (a `readdir_plus` or `getattr` walk of a big tree
/// between two writes) fill the cache with clean rows that no operation count bounds.
const CACHED_ROWS_MAX: usize = 16_384;

/// Drops the clean rows of `map` once it holds `limit` rows; the next limit is twice the rows
/// left (dirty ones), so that a transaction with many dirty rows does not trim at every read.
fn trim<T>(map: &mut HashMap<Ino, Cached<T>>, limit: &Cell<usize>) {
    if map.len() >= limit.get() {
        map.retain(|_, c| c.dirty);
        limit.set((map.len() * 2).max(CACHED_ROWS_MAX));
    }
}

impl WTx {
    read_ops!();

    fn new(tx: redb::WriteTransaction) -> WTx {
        WTx {
            tx,
            inodes: RefCell::new(HashMap::new()),
            allocated: RefCell::new(HashMap::new()),
            dirents: RefCell::new(HashMap::new()),
            dirent_rows: Cell::new(0),
            limits: std::array::from_fn(|_| Cell::new(CACHED_ROWS_MAX)),
            no_extents: HashSet::new(),
            no_xattrs: HashSet::new(),
            counters: BTreeMap::new(),
            meta_writes: BTreeMap::new(),
            broken: Cell::new(false),
        }
    }

    /// Passes on the result of writing cached rows to their tables; a failure breaks the
    /// transaction (see `broken`).
    fn flushed(&self, r: Result<()>) -> Result<()> {
        if r.is_err() {
            self.broken.set(true);
        }
        r
    }

    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.meta_writes.get(key) {
            return Ok(Some(v.clone()));
        }
        let t = self.tx.open_table(META)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    pub fn counter(&self, key: &str) -> Result<u64> {
        if let Some(&v) = self.counters.get(key) {
            return Ok(v);
        }
        let t = self.tx.open_table(COUNTERS)?;
        Ok(t.get(key)?.map(|v| v.value()).unwrap_or(0))
    }

    pub fn inode(&self, ino: Ino) -> Result<Option<Attr>> {
        if let Some(c) = self.inodes.borrow().get(&ino) {
            return Ok(c.value);
        }
        let attr = {
            let t = self.tx.open_table(INODES)?;
            match t.get(ino)? {
                Some(v) => Some(Attr::decode(v.value())?),
                None => None,
            }
        };
        let mut cache = self.inodes.borrow_mut();
        trim(&mut cache, &self.limits[0]);
        cache.insert(
            ino,
            Cached {
                value: attr,
                dirty: false,
            },
        );
        Ok(attr)
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<(Ino, Kind)>> {
        if let Some(c) = self.dirents.borrow().get(&parent).and_then(|d| d.get(name)) {
            return Ok(c.value);
        }
        let found = self.table_lookup(parent, name)?;
        let mut cache = self.dirents.borrow_mut();
        self.trim_dirents(&mut cache);
        self.dirent_rows.set(self.dirent_rows.get() + 1);
        cache.entry(parent).or_default().insert(
            name.to_vec(),
            Cached {
                value: found,
                dirty: false,
            },
        );
        Ok(found)
    }

    pub fn list_dir(&self, dir: Ino) -> Result<Vec<DirEntry>> {
        self.flush_dirents()?;
        self.table_list_dir(dir)
    }

    pub fn each_in_dir(&self, dir: Ino, f: &mut EntryFn) -> Result<()> {
        self.flush_dirents()?;
        self.table_each_in_dir(dir, f)
    }

    pub fn dir_is_empty(&self, dir: Ino) -> Result<bool> {
        self.flush_dirents()?;
        self.table_dir_is_empty(dir)
    }

    pub fn for_each_dirent(&self, f: &mut DirentFn) -> Result<()> {
        self.flush_dirents()?;
        self.table_for_each_dirent(f)
    }

    fn set_dirent(&mut self, parent: Ino, name: &[u8], value: Option<(Ino, Kind)>) {
        let c = Cached { value, dirty: true };
        if let Some(e) = self
            .dirents
            .get_mut()
            .get_mut(&parent)
            .and_then(|d| d.get_mut(name))
        {
            *e = c;
            return;
        }
        let cache = self.dirents.get_mut();
        let (rows, limit) = (&self.dirent_rows, &self.limits[2]);
        Self::trim_dirent_cache(cache, rows, limit);
        rows.set(rows.get() + 1);
        cache.entry(parent).or_default().insert(name.to_vec(), c);
    }

    /// [`trim`] for the directory entries.
    fn trim_dirents(&self, cache: &mut HashMap<Ino, DirCache>) {
        Self::trim_dirent_cache(cache, &self.dirent_rows, &self.limits[2]);
    }

    fn trim_dirent_cache(
        cache: &mut HashMap<Ino, DirCache>,
        rows: &Cell<usize>,
        limit: &Cell<usize>,
    ) {
        if rows.get() < limit.get() {
            return;
        }
        let mut left = 0;
        cache.retain(|_, d| {
            d.retain(|_, c| c.dirty);
            left += d.len();
            !d.is_empty()
        });
        rows.set(left);
        limit.set((left * 2).max(CACHED_ROWS_MAX));
    }

    /// Writes the directory entries changed since the last flush to the table, in key order.
    fn flush_dirents(&self) -> Result<()> {
        self.flushed(self.write_dirents())
    }

    fn write_dirents(&self) -> Result<()> {
        let mut cache = self.dirents.borrow_mut();
        let mut dirty: Vec<(Ino, &[u8], Option<Dirent>)> = Vec::new();
        for (&parent, dir) in cache.iter_mut() {
            for (name, c) in dir.iter_mut() {
                if c.dirty {
                    c.dirty = false;
                    dirty.push((parent, name.as_slice(), c.value));
                }
            }
        }
        if dirty.is_empty() {
            return Ok(());
        }
        dirty.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut t = self.tx.open_table(DIRENTS)?;
        for (parent, name, value) in dirty {
            match value {
                Some((ino, kind)) => {
                    t.insert((parent, name), (ino, kind.code()))?;
                }
                None => {
                    t.remove((parent, name))?;
                }
            }
        }
        Ok(())
    }

    /// Extents of `ino` that overlap `[from, to)`, in offset order.
    pub fn extents(&self, ino: Ino, from: u64, to: u64) -> Result<Vec<Extent>> {
        if self.no_extents.contains(&ino) {
            return Ok(Vec::new());
        }
        self.table_extents(ino, from, to)
    }

    pub fn xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
        if self.no_xattrs.contains(&ino) {
            return Ok(None);
        }
        self.table_xattr(ino, name)
    }

    pub fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        if self.no_xattrs.contains(&ino) {
            return Ok(Vec::new());
        }
        self.table_xattr_names(ino)
    }

    /// Bytes of data (not holes) that the chunk list of `ino` covers.
    pub fn allocated(&self, ino: Ino) -> Result<u64> {
        if let Some(c) = self.allocated.borrow().get(&ino) {
            return Ok(c.value);
        }
        let bytes = {
            let t = self.tx.open_table(ALLOCATED)?;
            t.get(ino)?.map(|v| v.value()).unwrap_or(0)
        };
        let mut cache = self.allocated.borrow_mut();
        trim(&mut cache, &self.limits[1]);
        cache.insert(
            ino,
            Cached {
                value: bytes,
                dirty: false,
            },
        );
        Ok(bytes)
    }

    /// Every row of the `allocated` table, in inode order (fsck compares it with the
    /// extents).
    pub fn for_each_allocated(&self, f: &mut dyn FnMut(Ino, u64)) -> Result<()> {
        self.flush_allocated()?;
        let t = self.tx.open_table(ALLOCATED)?;
        for r in t.iter()? {
            let (k, v) = r?;
            f(k.value(), v.value());
        }
        Ok(())
    }

    /// Sets the allocated bytes of `ino` (written at commit; 0 removes the row).
    fn put_allocated(&mut self, ino: Ino, bytes: u64) {
        trim(self.allocated.get_mut(), &self.limits[1]);
        self.allocated.get_mut().insert(
            ino,
            Cached {
                value: bytes,
                dirty: true,
            },
        );
    }

    /// Writes the `allocated` rows changed since the last flush to the table.
    fn flush_allocated(&self) -> Result<()> {
        self.flushed(self.write_allocated())
    }

    fn write_allocated(&self) -> Result<()> {
        let mut cache = self.allocated.borrow_mut();
        let mut dirty: Vec<(Ino, u64)> = cache
            .iter_mut()
            .filter(|(_, c)| c.dirty)
            .map(|(&ino, c)| {
                c.dirty = false;
                (ino, c.value)
            })
            .collect();
        if dirty.is_empty() {
            return Ok(());
        }
        dirty.sort_unstable_by_key(|&(ino, _)| ino);
        let mut t = self.tx.open_table(ALLOCATED)?;
        for (ino, bytes) in dirty {
            if bytes == 0 {
                t.remove(ino)?;
            } else {
                t.insert(ino, bytes)?;
            }
        }
        Ok(())
    }

    /// Every inode, in inode order (maintenance and stats).
    pub fn for_each_inode(&self, f: &mut dyn FnMut(Ino, Attr) -> Result<()>) -> Result<()> {
        self.flush_inodes()?;
        let t = self.tx.open_table(INODES)?;
        for r in t.iter()? {
            let (k, v) = r?;
            f(k.value(), Attr::decode(v.value())?)?;
        }
        Ok(())
    }

    /// Writes the inode records changed since the last flush to the table, in inode order.
    fn flush_inodes(&self) -> Result<()> {
        self.flushed(self.write_inodes())
    }

    fn write_inodes(&self) -> Result<()> {
        let mut cache = self.inodes.borrow_mut();
        let mut dirty: Vec<(Ino, Attr)> = cache
            .iter_mut()
            .filter(|(_, c)| c.dirty)
            .filter_map(|(&ino, c)| {
                c.dirty = false;
                c.value.map(|a| (ino, a))
            })
            .collect();
        if dirty.is_empty() {
            return Ok(());
        }
        dirty.sort_unstable_by_key(|&(ino, _)| ino);
        let mut t = self.tx.open_table(INODES)?;
        for (ino, a) in dirty {
            t.insert(ino, a.encode().as_slice())?;
        }
        Ok(())
    }

    /// Writes what this transaction keeps in memory (inode records, counters, `meta` values)
    /// to the tables.
    fn flush(&mut self) -> Result<()> {
        self.flush_inodes()?;
        self.flush_allocated()?;
        self.flush_dirents()?;
        if !self.counters.is_empty() {
            let mut t = self.tx.open_table(COUNTERS)?;
            for (k, v) in std::mem::take(&mut self.counters) {
                t.insert(k.as_str(), v)?;
            }
        }
        if !self.meta_writes.is_empty() {
            let mut t = self.tx.open_table(META)?;
            for (k, v) in std::mem::take(&mut self.meta_writes) {
                t.insert(k.as_str(), v.as_slice())?;
            }
        }
        Ok(())
    }

    /// Commits. `durable` commits fsync the database; others become durable with the next
    /// durable commit. The caller must have synced the chunk store before a durable commit.
    pub fn commit(mut self, durable: bool) -> Result<()> {
        self.flush()?;
        if self.broken.get() {
            return Err(FsError::Db(
                "a write of cached rows failed earlier in this transaction: not committed".into(),
            ));
        }
        self.tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        self.tx.commit()?;
        Ok(())
    }

    pub fn set_meta(&mut self, key: &str, value: &[u8]) -> Result<()> {
        match self.meta_writes.get_mut(key) {
            Some(v) => {
                v.clear();
                v.extend_from_slice(value);
            }
            None => {
                self.meta_writes.insert(key.to_owned(), value.to_vec());
            }
        }
        Ok(())
    }

    fn add_counter(&mut self, key: &str, delta: i64) -> Result<()> {
        let cur = self.counter(key)?;
        self.set_counter(key, cur.saturating_add_signed(delta))
    }

    pub fn set_counter(&mut self, key: &str, value: u64) -> Result<()> {
        match self.counters.get_mut(key) {
            Some(v) => *v = value,
            None => {
                self.counters.insert(key.to_owned(), value);
            }
        }
        Ok(())
    }

    pub fn alloc_ino(&mut self) -> Result<Ino> {
        self.alloc_ino_from(0)
    }

    /// [`WTx::alloc_ino`], never below `floor`. The filesystem passes the number after the
    /// highest it handed out in this mount: numbers of operations whose commit was dropped
    /// (a failed commit) are no longer in the database, but the kernel and open handles may
    /// still name them. The new `next_ino` is above `floor`, so the commit stores it.
    pub fn alloc_ino_from(&mut self, floor: Ino) -> Result<Ino> {
        let next = self
            .meta_u64("next_ino")?
            .ok_or_else(|| FsError::Corrupt("no next_ino".into()))?
            .max(floor);
        // Inode numbers from 2^48 up name inodes inside snapshots (`fs::snapshots`).
        if next >= 1 << 48 {
            return Err(FsError::NoSpace);
        }
        self.set_meta("next_ino", &(next + 1).to_le_bytes())?;
        Ok(next)
    }

    pub fn put_inode(&mut self, ino: Ino, attr: &Attr) -> Result<()> {
        let old = self.inode(ino)?;
        self.account_file(old.as_ref(), Some(attr))?;
        trim(self.inodes.get_mut(), &self.limits[0]);
        self.inodes.get_mut().insert(
            ino,
            Cached {
                value: Some(*attr),
                dirty: true,
            },
        );
        Ok(())
    }

    /// Creates inode `ino`, a number the allocator ([`WTx::alloc_ino_from`]) just handed out.
    /// No table has rows for such a number (`next_ino` is above every inode number in use;
    /// fsck checks it), so until this transaction writes some, the inode's extents, xattrs
    /// and allocated bytes are known to be empty without reading their tables.
    pub fn create_inode(&mut self, ino: Ino, attr: &Attr) -> Result<()> {
        self.inodes.get_mut().entry(ino).or_insert(Cached {
            value: None,
            dirty: false,
        });
        self.put_inode(ino, attr)?;
        self.no_extents.insert(ino);
        self.no_xattrs.insert(ino);
        self.allocated.get_mut().entry(ino).or_insert(Cached {
            value: 0,
            dirty: false,
        });
        Ok(())
    }

    /// Removes an inode and everything it owns: extents (dropping chunk references),
    /// symlink target, xattrs, orphan mark.
    pub fn delete_inode(&mut self, ino: Ino) -> Result<()> {
        let extents = self.all_extents(ino)?;
        self.replace_extents(ino, &extents, &[])?;
        let old = self.inode(ino)?;
        self.account_file(old.as_ref(), None)?;
        self.tx.open_table(INODES)?.remove(ino)?;
        trim(self.inodes.get_mut(), &self.limits[0]);
        self.inodes.get_mut().insert(
            ino,
            Cached {
                value: None,
                dirty: false,
            },
        );
        self.tx.open_table(SYMLINKS)?.remove(ino)?;
        for name in self.xattr_names(ino)? {
            self.tx.open_table(XATTRS)?.remove((ino, name.as_slice()))?;
        }
        self.tx.open_table(ORPHANS)?.remove(ino)?;
        Ok(())
    }

    /// Keeps the logical-bytes and file counters in step with an inode record change.
    fn account_file(&mut self, old: Option<&Attr>, new: Option<&Attr>) -> Result<()> {
        let size = |a: Option<&Attr>| a.filter(|a| a.kind == Kind::File).map(|a| a.size);
        let (o, n) = (size(old), size(new));
        if o != n {
            let delta = n.unwrap_or(0) as i128 - o.unwrap_or(0) as i128;
            let delta = delta.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
            self.add_counter(C_LOGICAL, delta)?;
        }
        match (o.is_some(), n.is_some()) {
            (false, true) => self.add_counter(C_FILES, 1),
            (true, false) => self.add_counter(C_FILES, -1),
            _ => Ok(()),
        }
    }

    pub fn put_dirent(&mut self, parent: Ino, name: &[u8], ino: Ino, kind: Kind) -> Result<()> {
        self.set_dirent(parent, name, Some((ino, kind)));
        Ok(())
    }

    pub fn del_dirent(&mut self, parent: Ino, name: &[u8]) -> Result<()> {
        self.set_dirent(parent, name, None);
        Ok(())
    }

    /// Replaces extents `old` (which must exist) by `new` in one step. References are taken
    /// on the new chunks before the old ones are dropped, so a chunk present in both never
    /// reaches refcount 0. Every chunk named in `new` must already be registered with
    /// [`WTx::register_chunk`] or be live.
    pub fn replace_extents(&mut self, ino: Ino, old: &[Extent], new: &[Extent]) -> Result<()> {
        self.no_extents.remove(&ino);
        {
            let mut t = self.tx.open_table(EXTENTS)?;
            for e in old {
                t.remove((ino, e.offset))?;
            }
            for e in new {
                t.insert((ino, e.offset), (&e.id.0, e.len))?;
            }
        }
        let added: u64 = new.iter().map(|e| e.len as u64).sum();
        let removed: u64 = old.iter().map(|e| e.len as u64).sum();
        if added != removed {
            let cur = self.allocated(ino)?;
            self.put_allocated(ino, (cur + added).saturating_sub(removed));
        }
        for e in new {
            self.add_ref(&e.id, e.len)?;
        }
        for e in old {
            self.drop_ref(&e.id)?;
        }
        Ok(())
    }

    fn add_ref(&mut self, id: &ChunkId, len: u32) -> Result<()> {
        let prev = {
            let mut t = self.tx.open_table(CHUNKS)?;
            let prev = t.get(&id.0)?.map(|v| v.value());
            let rc = prev.map(|(rc, _)| rc).unwrap_or(0);
            t.insert(&id.0, (rc + 1, len))?;
            prev
        };
        if prev.map(|(rc, _)| rc).unwrap_or(0) == 0 {
            self.tx.open_table(ZERO_REFS)?.remove(&id.0)?;
            self.add_counter(C_PHYSICAL, len as i64)?;
            self.add_counter(C_CHUNKS, 1)?;
        }
        self.add_counter(C_REFERENCED, len as i64)
    }

    fn drop_ref(&mut self, id: &ChunkId) -> Result<()> {
        let (rc, len) = self
            .chunk(id)?
            .ok_or_else(|| FsError::Corrupt(format!("extent names unknown chunk {id}")))?;
        let rc = rc.saturating_sub(1);
        self.tx.open_table(CHUNKS)?.insert(&id.0, (rc, len))?;
        if rc == 0 {
            self.tx.open_table(ZERO_REFS)?.insert(&id.0, ())?;
            self.add_counter(C_PHYSICAL, -(len as i64))?;
            self.add_counter(C_CHUNKS, -1)?;
        }
        self.add_counter(C_REFERENCED, -(len as i64))
    }

    /// Forgets a chunk whose refcount is 0 (its file has been removed).
    pub fn forget_chunk(&mut self, id: &ChunkId) -> Result<()> {
        if let Some((0, _)) = self.chunk(id)? {
            self.tx.open_table(CHUNKS)?.remove(&id.0)?;
        }
        self.tx.open_table(ZERO_REFS)?.remove(&id.0)?;
        Ok(())
    }

    /// Sets a chunk's refcount directly (fsck repair).
    pub fn set_chunk_ref(&mut self, id: &ChunkId, rc: u64, len: u32) -> Result<()> {
        self.tx.open_table(CHUNKS)?.insert(&id.0, (rc, len))?;
        if rc == 0 {
            self.tx.open_table(ZERO_REFS)?.insert(&id.0, ())?;
        } else {
            self.tx.open_table(ZERO_REFS)?.remove(&id.0)?;
        }
        Ok(())
    }

    pub fn set_symlink(&mut self, ino: Ino, target: &[u8]) -> Result<()> {
        self.tx.open_table(SYMLINKS)?.insert(ino, target)?;
        Ok(())
    }

    pub fn set_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) -> Result<()> {
        self.no_xattrs.remove(&ino);
        self.tx.open_table(XATTRS)?.insert((ino, name), value)?;
        Ok(())
    }

    pub fn remove_xattr(&mut self, ino: Ino, name: &[u8]) -> Result<bool> {
        self.no_xattrs.remove(&ino);
        Ok(self.tx.open_table(XATTRS)?.remove((ino, name))?.is_some())
    }

    pub fn add_orphan(&mut self, ino: Ino) -> Result<()> {
        self.tx.open_table(ORPHANS)?.insert(ino, ())?;
        Ok(())
    }

    pub fn remove_orphan(&mut self, ino: Ino) -> Result<()> {
        self.tx.open_table(ORPHANS)?.remove(ino)?;
        Ok(())
    }

    // --- maintenance (fsck repair) ---

    /// Sets the allocated bytes of `ino` directly (fsck repair); 0 removes the row, as
    /// [`WTx::replace_extents`] does.
    pub fn set_allocated(&mut self, ino: Ino, bytes: u64) -> Result<()> {
        self.put_allocated(ino, bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, MetaDb) {
        let d = tempfile::tempdir().unwrap();
        let m = MetaDb::create(&d.path().join("m.redb"), ChunkParams::default(), 0, 0).unwrap();
        (d, m)
    }

    #[test]
    fn extents_lookup_finds_the_containing_extent() {
        let (_d, m) = db();
        let a = ChunkId::of(b"a");
        let b = ChunkId::of(b"b");
        let mut tx = m.begin_write().unwrap();
        let ex = [
            Extent {
                offset: 0,
                id: a,
                len: 100,
            },
            Extent {
                offset: 100,
                id: b,
                len: 50,
            },
            Extent {
                offset: 1000,
                id: a,
                len: 100,
            },
        ];
        tx.replace_extents(7, &[], &ex).unwrap();
        tx.commit(false).unwrap();
        let r = m.begin_read().unwrap();
        assert_eq!(r.extents(7, 120, 130).unwrap(), vec![ex[1]]);
        assert_eq!(r.extents(7, 150, 1000).unwrap(), vec![]);
        assert_eq!(r.extents(7, 99, 1001).unwrap(), ex.to_vec());
        assert_eq!(r.chunk(&a).unwrap(), Some((2, 100)));
        assert_eq!(r.counter(C_PHYSICAL).unwrap(), 150);
        assert_eq!(r.counter(C_REFERENCED).unwrap(), 250);
    }

    #[test]
    fn dropping_the_last_reference_lists_the_chunk_for_removal() {
        let (_d, m) = db();
        let a = ChunkId::of(b"a");
        let e = Extent {
            offset: 0,
            id: a,
            len: 1,
        };
        let mut tx = m.begin_write().unwrap();
        tx.replace_extents(5, &[], &[e]).unwrap();
        tx.replace_extents(5, &[e], &[]).unwrap();
        assert_eq!(tx.zero_refs().unwrap(), vec![a]);
        assert_eq!(tx.counter(C_CHUNKS).unwrap(), 0);
        tx.replace_extents(6, &[], &[e]).unwrap();
        assert!(tx.zero_refs().unwrap().is_empty());
    }

    #[test]
    fn format_1_store_opens_and_is_marked_2() {
        let (d, m) = db();
        let mut tx = m.begin_write().unwrap();
        tx.set_meta("format_version", &1u64.to_le_bytes()).unwrap();
        tx.commit(true).unwrap();
        drop(m);
        let m = MetaDb::open(&d.path().join("m.redb")).unwrap();
        let v = m.begin_read().unwrap().meta_u64("format_version").unwrap();
        assert_eq!(v, Some(FORMAT_VERSION));
    }

    #[test]
    fn newer_format_version_is_refused() {
        let (d, m) = db();
        let mut tx = m.begin_write().unwrap();
        tx.set_meta("format_version", &99u64.to_le_bytes()).unwrap();
        tx.commit(true).unwrap();
        drop(m);
        let err = MetaDb::open(&d.path().join("m.redb")).err().unwrap();
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
