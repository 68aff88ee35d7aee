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
const EXTENT_WINDOW: u64 = 1 << 30;

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
    copy_owned(src, &mut tx, root, 0, &mut rows)?;
    report.inodes += 1;
    let mut dirs = VecDeque::from([root]);
    while let Some(dir) = dirs.pop_front() {
        for e in src.list_dir(dir)? {
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
                    let size = if a.kind == Kind::File { a.size } else { 0 };
                    report.extents += copy_owned(src, &mut tx, e.ino, size, &mut rows)?;
                    report.inodes += 1;
                }
            }
            if rows >= ROWS_PER_COMMIT {
                tx.commit(false)?;
                tx = db.begin_write()?;
                rows = 0;
            }
        }
    }
    let raw = serde_json::to_vec(info).map_err(|e| FsError::Corrupt(e.to_string()))?;
    tx.set_meta(INFO_KEY, &raw)?;
    tx.commit(true)?;
    Ok(report)
}

/// Copies what inode `ino` (of `size` bytes) owns besides its record: extents, symlink
/// target, xattrs. Returns the extents copied.
fn copy_owned(src: &RTx, tx: &mut WTx, ino: Ino, size: u64, rows: &mut usize) -> Result<u64> {
    let mut extents = 0u64;
    let mut from = 0u64;
    while from < size {
        let to = from.saturating_add(EXTENT_WINDOW);
        // An extent that starts before `from` was copied with the window before.
        let batch: Vec<_> = src
            .extents(ino, from, to)?
            .into_iter()
            .filter(|e| e.offset >= from)
            .collect();
        if !batch.is_empty() {
            tx.replace_extents(ino, &[], &batch)?;
            extents += batch.len() as u64;
            *rows += batch.len();
        }
        from = to;
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

/// An open snapshot file.
pub struct SnapshotDb {
    pub info: SnapshotInfo,
    pub db: MetaDb,
}

impl SnapshotDb {
    pub fn open(path: &Path) -> Result<SnapshotDb> {
        let db = MetaDb::open(path)?;
        let raw = db
            .begin_read()?
            .meta(INFO_KEY)?
            .ok_or_else(|| FsError::Corrupt(format!("{}: not a snapshot", path.display())))?;
        let info = serde_json::from_slice(&raw)
            .map_err(|e| FsError::Corrupt(format!("{}: {e}", path.display())))?;
        Ok(SnapshotDb { info, db })
    }

    /// Logical bytes of its files (each inode once).
    pub fn logical_bytes(&self) -> Result<u64> {
        self.db.begin_read()?.counter(super::C_LOGICAL)
    }
}

/// The snapshot files of a store as maintenance (gc, fsck) sees them: every chunk one of them
/// names is kept. Files of interrupted deletions count until the deletion is finished.
#[derive(Default, Clone)]
pub struct Holders {
    /// The snapshots: fsck checks that every chunk they name is in the store.
    pub dbs: Vec<std::sync::Arc<SnapshotDb>>,
    /// Files of deletions a crash interrupted (`.deleting-`, unmounted stores only). They keep
    /// their chunks until the next mount finishes the deletion, but nothing requires those to
    /// be there: a crash after the deletion's durable point has rightly removed the chunks
    /// only they named.
    pub deleting: Vec<std::sync::Arc<SnapshotDb>>,
    /// A snapshot is being written (a mounted volume's, `Fs::snapshot_holders`): which chunks
    /// it names is not known until it is done, so every chunk counts as held. It copies a
    /// durable state from before this gc's durable point; a chunk the volume dropped since
    /// would otherwise look like garbage.
    pub writing: bool,
}

impl Holders {
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
        Ok(Holders {
            dbs,
            deleting,
            // No daemon: a `.tmp-` snapshot file is one a crash left unfinished.
            writing: false,
        })
    }

    /// Does a snapshot name chunk `id`? (Yes when a file cannot be read: keeping is safe.)
    pub fn holds(&self, id: &crate::hash::ChunkId) -> bool {
        self.writing
            || self
                .dbs
                .iter()
                .chain(&self.deleting)
                .any(|s| !matches!(s.db.begin_read().and_then(|r| r.chunk(id)), Ok(None)))
    }
}
