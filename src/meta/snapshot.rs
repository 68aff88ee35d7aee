//! Snapshot files (`STORE/snapshots/NNNNN.redb`): a read-only copy of one tree's metadata at a
//! point in time, in the schema of the volume's own metadata database (docs/design.md,
//! "Snapshots").
//!
//! A snapshot file holds the inodes, directory entries, extents, symlink targets and xattrs of
//! the tree under its root, with the live volume's inode numbers, and its own `chunks` table:
//! the refcount of each chunk *within the snapshot*. That table is what keeps the snapshot's
//! chunks alive: the volume removes a chunk only when its own refcount is 0 and no snapshot
//! file names it (`fs::snapshots`). The file's `meta` table carries [`SnapshotInfo`].
//!
//! A snapshot is written to `.tmp-NNNNN.redb`, committed durably, renamed into place and the
//! directory synced: a crash leaves either no snapshot or a whole one (a `.tmp-` file is
//! removed at the next open). Deleting renames the file to `.deleting-NNNNN.redb` first; what
//! it held is handed back to the volume before the file goes (again after a crash).

use super::{Attr, Kind, MetaDb, ROOT_INO, RTx, WTx};
use crate::chunker::ChunkParams;
use crate::error::{FsError, Ino, Result};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::Path;

/// Directory of the snapshot files, under the store directory.
pub const DIR: &str = "snapshots";
/// Key of [`SnapshotInfo`] in a snapshot file's `meta` table.
const INFO_KEY: &str = "snapshot";
/// Rows copied per (non-durable) commit while a snapshot is written: bounds the memory of
/// one write transaction whatever the tree size.
const ROWS_PER_COMMIT: usize = 20_000;
/// Extents read per step when copying one file's chunk list.
const EXTENT_BATCH: usize = 4096;

/// What a snapshot is, stored in its file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Its number: inode numbers inside it are `slot << SLOT_SHIFT | inode`.
    pub slot: u16,
    pub name: String,
    /// Creation time, nanoseconds since the epoch.
    pub created_ns: u64,
    /// The live inode its root was a copy of.
    pub root: Ino,
    /// The tree it copies, as the user named it relative to the volume root ("" = all).
    pub path: String,
}

/// File name of the snapshot in `slot`.
pub fn file_name(slot: u16) -> String {
    format!("{slot:05}.redb")
}

/// The slot of a snapshot file name (`NNNNN.redb`), if it is one.
pub fn slot_of(name: &str) -> Option<u16> {
    let n = name.strip_suffix(".redb")?;
    (n.len() == 5 && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
        .filter(|&s| s > 0)
}

/// A snapshot name the user may give: a single path component, printable.
pub fn check_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(FsError::Refused(format!(
            "bad snapshot name {name:?}: {why}"
        )))
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name == "." || name == ".." {
        return bad("not a name");
    }
    if name.contains('/') {
        return bad("contains '/'");
    }
    if name.len() > 255 {
        return bad("longer than 255 bytes");
    }
    if name.chars().any(|c| c.is_control()) {
        return bad("contains a control character");
    }
    Ok(())
}

/// Figures of a copy.
#[derive(Clone, Copy, Debug, Default)]
pub struct CopyReport {
    pub inodes: u64,
    pub dirents: u64,
    pub extents: u64,
}

/// Writes a snapshot of the tree under `root` as `src` shows it to a new file at `path`
/// (which must not exist), durably. Memory is bounded by the widest directory and the
/// directories waiting to be visited, not by the tree or file sizes.
pub fn write(
    src: &RTx,
    root: Ino,
    params: ChunkParams,
    info: &SnapshotInfo,
    path: &Path,
) -> Result<CopyReport> {
    let root_attr = src.inode(root)?.ok_or(FsError::NotFound)?;
    if root_attr.kind != Kind::Dir {
        return Err(FsError::NotDir);
    }
    if root == ROOT_INO {
        return write_whole(src, info, path);
    }
    let db = MetaDb::create(path, params, 0, 0)?;
    let mut report = CopyReport::default();
    let mut tx = db.begin_write()?;
    if root != ROOT_INO {
        tx.delete_inode(ROOT_INO)?;
    }
    let mut rows = 0usize;
    let mut root_copy = root_attr;
    // Its ".." is the snapshots directory, which the file does not hold.
    root_copy.parent = root;
    tx.put_inode(root, &root_copy)?;
    copy_owned(src, &mut tx, root, &mut rows)?;
    report.inodes += 1;
    let mut dirs = VecDeque::from([root]);
    // An Option so the walk's callback can commit and begin the next transaction.
    let mut open = Some(tx);
    while let Some(dir) = dirs.pop_front() {
        src.each_in_dir(dir, &mut |e| {
            let tx = open.as_mut().expect("a write transaction is open");
            tx.put_dirent(dir, &e.name, e.ino, e.kind)?;
            report.dirents += 1;
            rows += 1;
            match tx.inode(e.ino)? {
                // Another name of a file copied already (a hard link).
                Some(mut a) if a.kind != Kind::Dir => {
                    a.nlink += 1;
                    tx.put_inode(e.ino, &a)?;
                }
                Some(_) => {
                    return Err(FsError::Corrupt(format!(
                        "directory {} has two names",
                        e.ino
                    )));
                }
                None => {
                    let mut a: Attr = src.inode(e.ino)?.ok_or_else(|| {
                        FsError::Corrupt(format!("entry {dir}/{:?} names no inode", e.name))
                    })?;
                    if a.kind != Kind::Dir {
                        // Counted again per name inside the tree: names outside it are not
                        // in the snapshot.
                        a.nlink = 1;
                    } else {
                        dirs.push_back(e.ino);
                    }
                    tx.put_inode(e.ino, &a)?;
                    report.extents += copy_owned(src, tx, e.ino, &mut rows)?;
                    report.inodes += 1;
                }
            }
            if rows >= ROWS_PER_COMMIT {
                open.take().expect("open").commit(false)?;
                open = Some(db.begin_write()?);
                rows = 0;
            }
            Ok(())
        })?;
    }
    let mut tx = open.expect("a write transaction is open");
    let raw = serde_json::to_vec(info).map_err(|e| FsError::Corrupt(e.to_string()))?;
    tx.set_meta(INFO_KEY, &raw)?;
    tx.commit(true)?;
    // Closed cleanly here, so it opens read-only (a file needing recovery would not).
    drop(db);
    Ok(report)
}

/// A snapshot of the whole volume: every table copied in key order, as a metadata backup is
/// (about ten times faster than a walk, and a compact file), then what is not part of the tree
/// dropped: inodes already unlinked (orphans, still open or waiting to be deleted) and the
/// refcount-0 chunks the volume has not removed yet, so that the file's `chunks` table names
/// exactly the chunks its extents do.
fn write_whole(src: &RTx, info: &SnapshotInfo, path: &Path) -> Result<CopyReport> {
    super::backup::copy_snapshot(src, path)?;
    let db = MetaDb::open(path)?;
    let mut tx = db.begin_write()?;
    for ino in tx.orphans()? {
        tx.delete_inode(ino)?;
    }
    for id in tx.zero_refs()? {
        tx.forget_chunk(&id)?;
    }
    let raw = serde_json::to_vec(info).map_err(|e| FsError::Corrupt(e.to_string()))?;
    tx.set_meta(INFO_KEY, &raw)?;
    let mut report = CopyReport::default();
    tx.for_each_inode(&mut |_, _| {
        report.inodes += 1;
        Ok(())
    })?;
    tx.commit(true)?;
    drop(db);
    Ok(report)
}

/// Copies what inode `ino` owns besides its record: extents, symlink target, xattrs.
/// Returns the extents copied.
fn copy_owned(src: &RTx, tx: &mut WTx, ino: Ino, rows: &mut usize) -> Result<u64> {
    let mut extents = 0u64;
    let mut from = 0u64;
    // By cursor over the extents, not by offset windows: a sparse file of 8 EiB has few.
    loop {
        let batch = src.extents_from(ino, from, EXTENT_BATCH)?;
        let Some(last) = batch.last() else { break };
        from = last.offset + 1;
        tx.replace_extents(ino, &[], &batch)?;
        extents += batch.len() as u64;
        *rows += batch.len();
    }
    if let Some(target) = src.symlink(ino)? {
        tx.set_symlink(ino, &target)?;
    }
    for name in src.xattr_names(ino)? {
        if let Some(v) = src.xattr(ino, &name)? {
            tx.set_xattr(ino, &name, &v)?;
        }
    }
    Ok(extents)
}

/// An open snapshot file, read-only: opening never writes to it (a snapshot file is immutable
/// once renamed into place), and its cache is small (the daemon may have many).
pub struct SnapshotDb {
    pub info: SnapshotInfo,
    db: redb::ReadOnlyDatabase,
}

/// Page cache of one open snapshot file.
const SNAPSHOT_CACHE: usize = 8 << 20;

impl SnapshotDb {
    pub fn open(path: &Path) -> Result<SnapshotDb> {
        let db = redb::Builder::new()
            .set_cache_size(SNAPSHOT_CACHE)
            .open_read_only(path)
            .map_err(|e| FsError::Db(format!("{}: {e}", path.display())))?;
        let s = SnapshotDb {
            info: SnapshotInfo {
                slot: 0,
                name: String::new(),
                created_ns: 0,
                root: 0,
                path: String::new(),
            },
            db,
        };
        let r = s.begin_read()?;
        match r.meta_u64("format_version")? {
            Some(super::FORMAT_VERSION) => {}
            v => {
                return Err(FsError::Corrupt(format!(
                    "{}: snapshot of metadata format {v:?}, this dedupfs reads {}",
                    path.display(),
                    super::FORMAT_VERSION
                )));
            }
        }
        let raw = r
            .meta(INFO_KEY)?
            .ok_or_else(|| FsError::Corrupt(format!("{}: not a snapshot", path.display())))?;
        let info = serde_json::from_slice(&raw)
            .map_err(|e| FsError::Corrupt(format!("{}: {e}", path.display())))?;
        drop(r);
        Ok(SnapshotDb { info, ..s })
    }

    pub fn begin_read(&self) -> Result<RTx> {
        use redb::ReadableDatabase;
        Ok(RTx {
            tx: self.db.begin_read()?,
        })
    }

    /// Logical bytes of its files (each inode once).
    pub fn logical_bytes(&self) -> Result<u64> {
        self.begin_read()?.counter(super::C_LOGICAL)
    }
}

/// The snapshot files of a store as chunk removal sees them: every chunk one of them names is
/// kept, and every chunk a snapshot being written will name (`pending`: the read snapshot it
/// copies from). Files of interrupted deletions count until the deletion is finished. Reads
/// through one read transaction per file, opened when this is built.
#[derive(Default)]
pub struct Holders {
    /// The snapshots: fsck checks that every chunk they name is in the store.
    pub dbs: Vec<std::sync::Arc<SnapshotDb>>,
    /// Files of deletions a crash interrupted (`.deleting-`, unmounted stores only). They keep
    /// their chunks until the next mount finishes the deletion, but nothing requires those to
    /// be there: a crash after the deletion's durable point has rightly removed the chunks
    /// only they named.
    pub deleting: Vec<std::sync::Arc<SnapshotDb>>,
    txs: Vec<(u16, RTx)>,
    pending: Vec<std::sync::Arc<RTx>>,
}

impl Holders {
    /// Holders of open snapshot files and snapshots being written.
    pub fn of(
        dbs: Vec<std::sync::Arc<SnapshotDb>>,
        pending: Vec<std::sync::Arc<RTx>>,
    ) -> Result<Holders> {
        Holders::with_deleting(dbs, Vec::new(), pending)
    }

    fn with_deleting(
        dbs: Vec<std::sync::Arc<SnapshotDb>>,
        deleting: Vec<std::sync::Arc<SnapshotDb>>,
        pending: Vec<std::sync::Arc<RTx>>,
    ) -> Result<Holders> {
        let txs = dbs
            .iter()
            .chain(&deleting)
            .map(|s| Ok((s.info.slot, s.begin_read()?)))
            .collect::<Result<_>>()?;
        Ok(Holders {
            dbs,
            deleting,
            txs,
            pending,
        })
    }

    /// Opens the snapshot files of the (unmounted) store at `store_dir`.
    pub fn open(store_dir: &Path) -> Result<Holders> {
        let dir = store_dir.join(DIR);
        let (mut dbs, mut deleting) = (Vec::new(), Vec::new());
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Holders::default()),
            Err(e) => return Err(e.into()),
        };
        for e in entries {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let live = slot_of(&name).is_some();
            let interrupted = name
                .strip_prefix(".deleting-")
                .is_some_and(|n| slot_of(n).is_some());
            if live || interrupted {
                let s = SnapshotDb::open(&e.path()).map_err(|err| {
                    FsError::Corrupt(format!("snapshot file {}: {err}", e.path().display()))
                })?;
                if live {
                    dbs.push(std::sync::Arc::new(s));
                } else {
                    deleting.push(std::sync::Arc::new(s));
                }
            }
        }
        dbs.sort_by_key(|s| s.info.slot);
        deleting.sort_by_key(|s| s.info.slot);
        Holders::with_deleting(dbs, deleting, Vec::new())
    }

    /// Does a snapshot (other than the one in slot `except`) name chunk `id`? (Yes when a
    /// file cannot be read: keeping is the safe answer.)
    pub fn holds_except(&self, id: &crate::hash::ChunkId, except: Option<u16>) -> bool {
        self.pending
            .iter()
            .any(|r| !matches!(r.chunk(id), Ok(Some((0, _)) | None)))
            || self
                .txs
                .iter()
                .any(|(slot, r)| Some(*slot) != except && !matches!(r.chunk(id), Ok(None)))
    }

    pub fn holds(&self, id: &crate::hash::ChunkId) -> bool {
        self.holds_except(id, None)
    }
}
