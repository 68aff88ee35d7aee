//! Snapshots (docs/design.md, "Snapshots"): read-only, point-in-time copies of the volume or
//! of one directory tree, each a file of its own (`meta::snapshot`), served read-only under
//! `/.snapshots/NAME`, and the chunk holds that keep their data alive.
//!
//! - **Inode numbers.** Live inodes are below 2^48. Inode `i` of the snapshot in slot `s` is
//!   `s << 48 | i`: stable for the snapshot's life, distinct from every live inode and from
//!   other snapshots'. The `.snapshots` directory itself is `0xFFFF << 48 | 1`.
//! - **`.snapshots`** exists while the volume has a snapshot. It is found by a lookup of the
//!   root but not listed by its readdir (so `cp -a`, `du`, `tar` and `find` of the volume do not
//!   descend into it), unless the root has an entry of that name of its own, which then wins
//!   (and `create` is refused until it is renamed).
//! - **Chunk holds.** The volume removes a chunk only when its refcount is 0 *and* no snapshot
//!   file names it, nor the read snapshot a snapshot being written copies from. Deleting a
//!   snapshot hands the chunks only it held back to the volume (refcount-0 rows), and a durable
//!   point then removes them.
//! - **Slots** are given round-robin, so a slot (and with it the inode numbers) is used again
//!   only after 65,534 more snapshots: a handle or a kernel cache entry of a deleted snapshot
//!   gets ESTALE, never another snapshot's data.

use super::{Fs, Handle};
use crate::error::{FsError, Ino, Result};
use crate::hash::ChunkId;
use crate::meta::snapshot::{self, Holders, SnapshotDb, SnapshotInfo};
use crate::meta::{Attr, DirEntry, Kind, MetaRead, ROOT_INO, RTx, Ts};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Inode bits of the snapshot slot.
pub const SLOT_SHIFT: u32 = 48;
/// The `.snapshots` directory.
pub const SNAPDIR_INO: Ino = (0xFFFF << SLOT_SHIFT) | 1;
/// Its name in the root.
pub const SNAPDIR_NAME: &[u8] = b".snapshots";
/// Highest slot a snapshot can have (0xFFFF is the `.snapshots` directory's).
const MAX_SLOT: u16 = 0xFFFE;
/// Chunk rows handed back per commit (and state-lock hold) when a snapshot is deleted.
const RELEASE_BATCH: usize = 4096;
/// Free space a snapshot must leave on the store's device beyond its own size (as backups).
const SPACE_MARGIN: u64 = 64 << 20;

/// Is `ino` inside a snapshot (or the `.snapshots` directory)?
pub fn in_snapshot(ino: Ino) -> bool {
    ino >> SLOT_SHIFT != 0
}

fn encode(slot: u16, ino: Ino) -> Ino {
    ((slot as u64) << SLOT_SHIFT) | ino
}

/// One snapshot as `snapshot list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotReport {
    pub name: String,
    /// The tree it copies, relative to the volume root ("" = the whole volume).
    pub path: String,
    /// Creation time, seconds since the epoch.
    pub created: i64,
    pub files: u64,
    pub logical_bytes: u64,
    /// Distinct chunks it references.
    pub chunks: u64,
    /// Bytes on disk only it keeps (what deleting it frees).
    pub exclusive_bytes: u64,
}

/// The snapshots of a volume.
#[derive(Default)]
pub(super) struct Snapshots {
    /// `STORE/snapshots` (none: an in-memory volume, which cannot have snapshots).
    dir: Option<PathBuf>,
    /// Open snapshot files, by slot.
    list: RwLock<Vec<Arc<SnapshotDb>>>,
    /// Read snapshots that snapshots being written copy from: the chunks they name are held.
    /// (Registered in `list` before they leave here.)
    pending: Mutex<Vec<Arc<RTx>>>,
    /// Serialises create and delete (the state lock is taken inside it, never around it).
    admin: Mutex<()>,
    /// The slot given last (slots go round-robin).
    last_slot: Mutex<u16>,
    /// When a snapshot last appeared or went, ns since the epoch (`.snapshots`' mtime).
    changed_ns: AtomicU64,
}

/// Holds the chunks a snapshot being written will name until it is registered or abandoned.
struct Pending<'a> {
    snaps: &'a Snapshots,
    src: Arc<RTx>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.snaps
            .pending
            .lock()
            .retain(|r| !Arc::ptr_eq(r, &self.src));
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn io_of(e: FsError) -> std::io::Error {
    match e {
        FsError::Io(e) => e,
        e => std::io::Error::other(e.to_string()),
    }
}

impl Snapshots {
    /// Opens the snapshots of the store at `store_dir`: removes files a crash left half
    /// written, and returns the files of deletions a crash interrupted (their holds must be
    /// handed back before they go).
    /// A read-only mount changes nothing: it leaves `.tmp-` files for the next writable open.
    pub(super) fn open(
        store_dir: Option<&Path>,
        read_only: bool,
    ) -> Result<(Snapshots, Vec<PathBuf>)> {
        let Some(store_dir) = store_dir else {
            return Ok((Snapshots::default(), Vec::new()));
        };
        let dir = store_dir.join(snapshot::DIR);
        let mut list = Vec::new();
        let mut deleting = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for e in entries {
                    let e = e?;
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    if name.starts_with(".tmp-") {
                        if read_only {
                            continue;
                        }
                        tracing::info!("removing a snapshot a crash left unfinished: {name}");
                        std::fs::remove_file(e.path())?;
                    } else if name.starts_with(".deleting-") {
                        deleting.push(e.path());
                    } else if let Some(slot) = snapshot::slot_of(&name) {
                        let s = SnapshotDb::open(&e.path()).map_err(|err| {
                            FsError::Corrupt(format!(
                                "snapshot file {}: {err} (move it away to mount without it)",
                                e.path().display()
                            ))
                        })?;
                        if s.info.slot != slot {
                            return Err(FsError::Corrupt(format!(
                                "snapshot file {} says it is slot {}",
                                e.path().display(),
                                s.info.slot
                            )));
                        }
                        list.push(Arc::new(s));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        list.sort_by_key(|s| s.info.slot);
        let last_slot = list.iter().map(|s| s.info.slot).max().unwrap_or(0);
        let changed_ns = list.iter().map(|s| s.info.created_ns).max().unwrap_or(0);
        Ok((
            Snapshots {
                dir: Some(dir),
                list: RwLock::new(list),
                last_slot: Mutex::new(last_slot),
                changed_ns: AtomicU64::new(changed_ns),
                ..Snapshots::default()
            },
            deleting,
        ))
    }

    pub(super) fn any(&self) -> bool {
        !self.list.read().is_empty()
    }

    fn by_slot(&self, slot: u16) -> Option<Arc<SnapshotDb>> {
        self.list
            .read()
            .iter()
            .find(|s| s.info.slot == slot)
            .cloned()
    }

    fn by_name(&self, name: &[u8]) -> Option<Arc<SnapshotDb>> {
        self.list
            .read()
            .iter()
            .find(|s| s.info.name.as_bytes() == name)
            .cloned()
    }

    /// What keeps chunks from removal now: registered snapshots and snapshots being written.
    pub(super) fn holders(&self) -> Result<Holders> {
        // Pending first: a snapshot leaves `pending` only after it entered `list`.
        let pending = self.pending.lock().clone();
        let list = self.list.read().clone();
        Holders::of(list, pending)
    }

    /// `holders` for a removal path: `None` (remove nothing now) when a snapshot file cannot
    /// be read.
    pub(super) fn removal_holders(&self) -> Option<Holders> {
        match self.holders() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!("cannot read the snapshot files; no chunk is removed: {e}");
                None
            }
        }
    }

    /// The next free slot after the last one given (round-robin).
    fn free_slot(&self) -> Result<u16> {
        let list = self.list.read();
        let mut last = self.last_slot.lock();
        let slot = (1..=MAX_SLOT as u32)
            .map(|k| ((*last as u32 + k - 1) % MAX_SLOT as u32 + 1) as u16)
            .find(|slot| !list.iter().any(|s| s.info.slot == *slot))
            .ok_or_else(|| FsError::Refused(format!("the volume has {MAX_SLOT} snapshots")))?;
        *last = slot;
        Ok(slot)
    }
}

/// The attributes of the `.snapshots` directory.
fn snapdir_attr(list: &[Arc<SnapshotDb>], changed_ns: u64) -> Attr {
    let mut a = Attr::new(Kind::Dir, 0o555, 0, 0);
    a.nlink = 2 + list.len() as u32;
    a.parent = ROOT_INO;
    let newest = changed_ns;
    let t = Ts {
        secs: (newest / 1_000_000_000) as i64,
        nsecs: (newest % 1_000_000_000) as u32,
    };
    (a.atime, a.mtime, a.ctime, a.crtime) = (t, t, t, t);
    a
}

impl Fs {
    /// What keeps chunks from removal (snapshots, and snapshots being written), for
    /// maintenance (gc, fsck, du) run on the mounted volume.
    pub fn snapshot_holders(&self) -> Result<Holders> {
        self.snaps.holders()
    }

    /// The snapshot `ino` is in, and its inode number there. ESTALE once that snapshot is
    /// gone (a handle or a kernel cache entry that outlived it).
    pub(super) fn snap_of(&self, ino: Ino) -> Result<(Arc<SnapshotDb>, Ino)> {
        let slot = (ino >> SLOT_SHIFT) as u16;
        let s = self.snaps.by_slot(slot).ok_or(FsError::Stale)?;
        Ok((s, ino & ((1 << SLOT_SHIFT) - 1)))
    }

    /// Attributes of an inode in a snapshot (or of `.snapshots`). Inside a snapshot, `parent`
    /// is translated too (the root's is `.snapshots`).
    pub(super) fn snap_getattr(&self, ino: Ino) -> Result<Attr> {
        if ino == SNAPDIR_INO {
            let list = self.snaps.list.read();
            if list.is_empty() {
                return Err(FsError::NotFound);
            }
            return Ok(snapdir_attr(
                &list,
                self.snaps.changed_ns.load(Ordering::Relaxed),
            ));
        }
        let (s, i) = self.snap_of(ino)?;
        let mut a = s.begin_read()?.inode(i)?.ok_or(FsError::NotFound)?;
        if a.kind == Kind::Dir {
            a.parent = if i == s.info.root {
                SNAPDIR_INO
            } else {
                encode(s.info.slot, a.parent)
            };
        }
        Ok(a)
    }

    /// Is `parent`/`name` where the `.snapshots` directory shows, for a caller that found no
    /// live entry of that name? Removing, renaming or replacing it must fail as the kernel
    /// sees it (a read-only directory): without this, `rmdir .snapshots` said ENOENT, and a
    /// directory renamed over it replaced it, hiding every snapshot behind the user's entry.
    pub(super) fn shows_snapdir(&self, parent: Ino, name: &[u8]) -> bool {
        parent == ROOT_INO && name == SNAPDIR_NAME && self.snaps.any()
    }

    /// The `.snapshots` directory, if the root has no entry of that name of its own.
    pub(super) fn snapdir_lookup(&self) -> Result<(Ino, Attr)> {
        Ok((SNAPDIR_INO, self.snap_getattr(SNAPDIR_INO)?))
    }

    pub(super) fn snap_lookup(&self, parent: Ino, name: &[u8]) -> Result<(Ino, Attr)> {
        let ino = if parent == SNAPDIR_INO {
            match name {
                b"." => SNAPDIR_INO,
                b".." => return Ok((ROOT_INO, self.getattr(ROOT_INO)?)),
                _ => {
                    let s = self.snaps.by_name(name).ok_or(FsError::NotFound)?;
                    encode(s.info.slot, s.info.root)
                }
            }
        } else {
            let a = self.snap_getattr(parent)?;
            if a.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            match name {
                b"." => parent,
                b".." => a.parent,
                _ => {
                    let (s, i) = self.snap_of(parent)?;
                    let (child, _) = s.begin_read()?.lookup(i, name)?.ok_or(FsError::NotFound)?;
                    encode(s.info.slot, child)
                }
            }
        };
        if ino == ROOT_INO {
            return Ok((ino, self.getattr(ino)?));
        }
        Ok((ino, self.snap_getattr(ino)?))
    }

    /// Entries of a directory in a snapshot (or of `.snapshots`), with "." and "..".
    pub(super) fn snap_entries(&self, dir: Ino, b: &mut super::dir_listing::Builder) -> Result<()> {
        let a = self.snap_getattr(dir)?;
        if a.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        b.dots(dir, a.parent)?;
        if dir == SNAPDIR_INO {
            let names: Vec<DirEntry> = self
                .snaps
                .list
                .read()
                .iter()
                .map(|s| DirEntry {
                    name: s.info.name.as_bytes().to_vec(),
                    ino: encode(s.info.slot, s.info.root),
                    kind: Kind::Dir,
                })
                .collect();
            for e in names {
                b.push(e)?;
            }
            return Ok(());
        }
        let (s, i) = self.snap_of(dir)?;
        s.begin_read()?.each_in_dir(i, &mut |mut e| {
            e.ino = encode(s.info.slot, e.ino);
            b.push(e)
        })
    }

    /// Runs `f` on the snapshot file of `ino` and its inode number there.
    pub(super) fn with_snap<T>(
        &self,
        ino: Ino,
        f: impl FnOnce(&dyn MetaRead, Ino) -> Result<T>,
    ) -> Result<T> {
        if ino == SNAPDIR_INO {
            return Err(FsError::Invalid("the snapshots directory"));
        }
        let (s, i) = self.snap_of(ino)?;
        let r = s.begin_read()?;
        f(&r, i)
    }

    /// Reads a file in a snapshot.
    pub(super) fn snap_read(&self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>> {
        // Taken first: a snapshot registered now keeps its chunks until this read is done (a
        // delete removes them only at a durable point, under this lock exclusively).
        let _no_removal = self.removal.read();
        let (s, i) = self.snap_of(ino)?;
        let r = s.begin_read()?;
        let attr = r.inode(i)?.ok_or(FsError::NotFound)?;
        let Some(end) = super::file::read_end(&attr, offset, size)? else {
            return Ok(Vec::new());
        };
        let mut buf = vec![0u8; (end - offset) as usize];
        self.read_committed(&r, i, offset, &mut buf)?;
        Ok(buf)
    }

    /// Opens a file or directory in a snapshot: read-only.
    pub(super) fn snap_open(&self, ino: Ino, write: bool) -> Result<u64> {
        if write {
            return Err(FsError::ReadOnly);
        }
        self.snap_getattr(ino)?;
        let mut st = self.state.lock();
        let fh = st.next_fh;
        st.next_fh += 1;
        st.handles.insert(fh, Handle::File { ino, write: false });
        Ok(fh)
    }

    /// `dedupfs snapshot create`: a read-only copy of the tree under live directory `root`
    /// (the volume root for all of it), named `name`, with every write that returned before
    /// this call in it (dirty data is written back first) and none that starts after it
    /// returned. Other operations go on while the tree is copied.
    pub fn snapshot_create(&self, name: &str, root: Ino, path: &str) -> Result<SnapshotReport> {
        self.writable()?;
        snapshot::check_name(name)?;
        let dir = self.snaps.dir.clone().ok_or_else(|| {
            FsError::Refused("this volume has no store directory for snapshots".into())
        })?;
        let _admin = self.snaps.admin.lock();
        if self.snaps.by_name(name.as_bytes()).is_some() {
            return Err(FsError::Refused(format!(
                "a snapshot named {name:?} exists already"
            )));
        }
        if in_snapshot(root) {
            return Err(FsError::Refused(
                "the tree to snapshot is inside a snapshot; snapshot the live tree".into(),
            ));
        }
        if self
            .with_view(|r| r.lookup(ROOT_INO, SNAPDIR_NAME))?
            .is_some()
        {
            return Err(FsError::Refused(
                "the volume's root has an entry named .snapshots of its own, where snapshots \
                 would appear: rename it first"
                    .into(),
            ));
        }
        // The copy is at most as large as the metadata database; it must not take the room
        // the volume's own commits need.
        let need = self.meta.file_len() + SPACE_MARGIN;
        let avail = self.store().space()?.avail_bytes;
        if avail < need {
            return Err(FsError::Refused(format!(
                "not enough free space for a snapshot on the store's device: {} MiB free, \
                 {} MiB needed",
                avail >> 20,
                need >> 20
            )));
        }
        // Point in time: everything written so far is written back (tails of open files too)
        // and durable, and the copy reads a snapshot of exactly that durable state, whose
        // chunks stay held until the snapshot is registered.
        self.sync_fs()?;
        let src = {
            // Taken and registered as pending under the state lock: maintenance that runs
            // under it (gc through `with_quiesced`) sees either neither or both.
            let mut st = self.state.lock();
            st.since_durable = true;
            self.make_durable(&mut st)?;
            let src = Arc::new(self.meta.begin_read()?);
            self.snaps.pending.lock().push(src.clone());
            src
        };
        let pending = Pending {
            snaps: &self.snaps,
            src: src.clone(),
        };
        match src.inode(root)? {
            Some(a) if a.kind == Kind::Dir => {}
            Some(_) => return Err(FsError::NotDir),
            None => return Err(FsError::NotFound),
        }
        let slot = self.snaps.free_slot()?;
        std::fs::create_dir_all(&dir)?;
        if let Some(store_dir) = dir.parent() {
            sync_dir(store_dir)?;
        }
        let info = SnapshotInfo {
            slot,
            name: name.to_string(),
            created_ns: now_ns(),
            root,
            path: path.to_string(),
        };
        let file = dir.join(snapshot::file_name(slot));
        let tmp = dir.join(format!(".tmp-{}", snapshot::file_name(slot)));
        let _ = std::fs::remove_file(&tmp);
        let started = std::time::Instant::now();
        let written = snapshot::write(&src, root, self.chunk_params(), &info, &tmp)
            .and_then(|c| Ok((c, SnapshotDb::open(&tmp)?)));
        let (copied, db) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::rename(&tmp, &file).and_then(|()| sync_dir(&dir).map_err(io_of)) {
            // Gone again (durably) or kept: never on disk unregistered, its chunks unheld.
            let undone = std::fs::remove_file(&file)
                .or_else(|_| std::fs::remove_file(&tmp))
                .and_then(|()| sync_dir(&dir).map_err(io_of));
            if undone.is_ok() {
                return Err(e.into());
            }
            tracing::error!("snapshot {name}: directory sync failed ({e}); keeping it");
        }
        let db = Arc::new(db);
        {
            let mut list = self.snaps.list.write();
            list.push(db.clone());
            list.sort_by_key(|s| s.info.slot);
        }
        drop(pending);
        drop(src);
        self.snaps
            .changed_ns
            .store(info.created_ns, Ordering::Relaxed);
        {
            // A durable point that moves the durable epoch now that the file is there: a
            // remote volume's publication made between the one above and the rename recorded
            // that epoch without this snapshot, and would otherwise see nothing new to publish.
            // The snapshot itself is durable already (renamed, directory synced): a failure
            // here is logged, not the create's.
            let mut st = self.state.lock();
            // It appears in `.snapshots`, whose listing the kernel may keep.
            st.held.changed(SNAPDIR_INO, &self.stale);
            st.since_durable = true;
            if let Err(e) = self.make_durable(&mut st) {
                tracing::warn!("snapshot {name}: durable point after it failed: {e}");
            }
        }
        self.listings_told();
        tracing::info!(
            name,
            slot,
            inodes = copied.inodes,
            ms = started.elapsed().as_millis() as u64,
            "snapshot created"
        );
        Ok(self.snapshot_report(&db).unwrap_or_else(|e| {
            tracing::warn!("snapshot {name} created; its figures cannot be read: {e}");
            SnapshotReport {
                name: info.name.clone(),
                path: info.path.clone(),
                created: (info.created_ns / 1_000_000_000) as i64,
                files: 0,
                logical_bytes: 0,
                chunks: 0,
                exclusive_bytes: 0,
            }
        }))
    }

    /// `dedupfs snapshot list`, oldest first. (Not in slot order: a new snapshot takes the
    /// lowest free slot, which may be one an older snapshot's delete freed.)
    pub fn snapshot_list(&self) -> Result<Vec<SnapshotReport>> {
        let mut list = self.snaps.list.read().clone();
        list.sort_by_key(|s| (s.info.created_ns, s.info.slot));
        list.iter().map(|s| self.snapshot_report(s)).collect()
    }

    fn snapshot_report(&self, s: &SnapshotDb) -> Result<SnapshotReport> {
        let r = s.begin_read()?;
        // The live metadata as the latest operation left it, read without the state lock.
        let live = {
            let mut st = self.state.lock();
            self.settle(&mut st)?;
            self.meta.begin_read()?
        };
        let holders = self.snaps.holders()?;
        let mut chunks = 0u64;
        let mut exclusive = 0u64;
        let mut err = None;
        r.for_each_chunk(&mut |id, _, raw_len| {
            chunks += 1;
            if err.is_some() {
                return;
            }
            match live.chunk(&id) {
                Ok(Some((rc, _))) if rc > 0 => {}
                Ok(_) if holders.holds_except(&id, Some(s.info.slot)) => {}
                Ok(_) => {
                    exclusive += crate::maint::du::on_disk(self.store().as_ref(), &id, raw_len)
                        .unwrap_or(raw_len as u64)
                }
                Err(e) => err = Some(e),
            }
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        Ok(SnapshotReport {
            name: s.info.name.clone(),
            path: s.info.path.clone(),
            created: (s.info.created_ns / 1_000_000_000) as i64,
            files: r.counter(crate::meta::C_FILES)?,
            logical_bytes: r.counter(crate::meta::C_LOGICAL)?,
            chunks,
            exclusive_bytes: exclusive,
        })
    }

    /// `dedupfs snapshot delete`: the snapshot goes, and a durable point frees what only it
    /// held before this returns.
    pub fn snapshot_delete(&self, name: &str) -> Result<SnapshotReport> {
        self.writable()?;
        let dir = self
            .snaps
            .dir
            .clone()
            .ok_or_else(|| FsError::Refused(format!("no snapshot named {name:?}")))?;
        let _admin = self.snaps.admin.lock();
        let s = self
            .snaps
            .by_name(name.as_bytes())
            .ok_or_else(|| FsError::Refused(format!("no snapshot named {name:?}")))?;
        let report = self.snapshot_report(&s)?;
        let file = dir.join(snapshot::file_name(s.info.slot));
        let gone = dir.join(format!(".deleting-{}", snapshot::file_name(s.info.slot)));
        {
            // Under the state lock: a copy_file_range out of the snapshot finishes first.
            let mut st = self.state.lock();
            std::fs::rename(&file, &gone)?;
            sync_dir(&dir)?;
            self.snaps
                .list
                .write()
                .retain(|x| x.info.slot != s.info.slot);
            // Gone from `.snapshots`; and its slot may serve another snapshot later: no
            // listing of its directories may be kept.
            let slot = s.info.slot;
            st.held.changed_where(
                &|i| i == SNAPDIR_INO || (in_snapshot(i) && (i >> SLOT_SHIFT) as u16 == slot),
                &self.stale,
            );
        }
        self.listings_told();
        self.snaps.changed_ns.store(now_ns(), Ordering::Relaxed);
        self.release_holds(&s)?;
        {
            let mut st = self.state.lock();
            st.since_durable = true;
            self.make_durable(&mut st)?;
        }
        drop(s);
        std::fs::remove_file(&gone)?;
        sync_dir(&dir)?;
        Ok(report)
    }

    /// Hands the chunks that only snapshot `s` (no longer registered) held back to the
    /// volume: a refcount-0 row for each that the volume does not know, so that the next
    /// durable point removes it. In batches, each under the state lock for a moment only:
    /// other operations go on between them (a chunk referenced again meanwhile has a row and
    /// is left alone).
    fn release_holds(&self, s: &SnapshotDb) -> Result<()> {
        let r = s.begin_read()?;
        let mut after: Option<ChunkId> = None;
        loop {
            let batch = r.chunks_after(after.as_ref(), RELEASE_BATCH)?;
            let Some(last) = batch.last() else {
                return Ok(());
            };
            after = Some(last.0);
            let others = self.snaps.holders()?;
            let mut st = self.state.lock();
            let mut tx = self.solo_tx(&mut st)?;
            for (id, _, len) in &batch {
                if tx.chunk(id)?.is_some() || others.holds_except(id, Some(s.info.slot)) {
                    continue;
                }
                tx.set_chunk_ref(id, 0, *len)?;
            }
            self.commit(&mut st, tx)?;
        }
    }

    /// Finishes deletions a crash interrupted (`.deleting-` files): hands their holds back,
    /// makes that durable, removes the files. At open, before dead chunks are removed.
    pub(super) fn finish_deletions(&self, files: Vec<PathBuf>) -> Result<()> {
        for f in files {
            let s = SnapshotDb::open(&f)?;
            self.release_holds(&s)?;
            {
                let mut st = self.state.lock();
                st.since_durable = true;
                self.make_durable(&mut st)?;
            }
            drop(s);
            std::fs::remove_file(&f)?;
            tracing::info!("finished deleting snapshot file {}", f.display());
        }
        Ok(())
    }
}
