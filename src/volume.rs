//! The store directory: layout, creation, identification and the mount lock.
//!
//! ```text
//! STORE/DEDUPFS        marker: "dedupfs store" and the format version
//! STORE/meta.redb      metadata database (meta::MetaDb)
//! STORE/packs/         pack files (store::PackStore)
//! STORE/index.redb     pack index: chunk id -> pack, offset, lengths, codec
//! STORE/chunks/        loose chunk files of stores made before packs (format <= 2)
//! STORE/lock           flock(2)ed exclusively by the process that has the store open
//! STORE/stats.json     usage published by a mounted daemon after each durable commit
//! STORE/backups/       rotated copies of meta.redb (meta::backup)
//! ```

use crate::chunker::ChunkParams;
use crate::error::FsError;
use crate::fs::Usage;
use crate::meta::{FORMAT_VERSION, MetaDb};
use crate::remote::config::VolumeConfig;
use crate::remote::packs::RemotePacks;
use crate::store::PackStore;
use crate::store::codec::Codec;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MARKER: &str = "DEDUPFS";
const MARKER_TEXT: &str = "dedupfs store\n";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("store {0} does not exist")]
    Missing(PathBuf),
    #[error("{0} is not a dedupfs store (no {MARKER} marker)")]
    Foreign(PathBuf),
    #[error(
        "store {path} was made by a newer dedupfs (store format {found}; this one knows up to {FORMAT_VERSION}): upgrade dedupfs"
    )]
    Newer { path: PathBuf, found: u64 },
    #[error("{0} already exists and is not empty; refusing to create a store there")]
    NotEmpty(PathBuf),
    #[error("store {0} is in use by another dedupfs process (already mounted?)")]
    Locked(PathBuf),
    #[error("store {path}: {err}")]
    Meta { path: PathBuf, err: FsError },
    #[error(
        "store {path}: the pack index index.redb is damaged ({err}); `dedupfs fsck --repair {path}` rebuilds it from the packs"
    )]
    IndexDamaged { path: PathBuf, err: FsError },
    #[error("store {path}: the metadata database meta.redb cannot be read ({err}); {hint}")]
    MetaDamaged {
        path: PathBuf,
        err: FsError,
        hint: String,
    },
    #[error("store {path}: {err}")]
    Io { path: PathBuf, err: io::Error },
}

/// What to tell the owner of a store whose metadata cannot be read.
fn restore_hint(dir: &Path) -> String {
    match crate::meta::backup::list(dir) {
        Ok(b) if !b.is_empty() => format!(
            "`dedupfs fsck --repair {}` restores it from the newest of {} backups (taken {}) and names what was lost",
            dir.display(),
            b.len(),
            crate::meta::backup::show_time(b[0].taken_unix)
        ),
        _ => format!(
            "there is no metadata backup in {}",
            dir.join(crate::meta::backup::DIR).display()
        ),
    }
}

/// Errors of opening meta.redb that mean the file is damaged (rather than, say, of a newer
/// format, or open in another process): a backup can stand in for it.
fn is_damage(err: &FsError) -> bool {
    (matches!(err, FsError::Db(_)) && !err.is_held_elsewhere())
        || matches!(err, FsError::Corrupt(m) if m == crate::meta::NO_FORMAT_VERSION)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> VolumeError + '_ {
    move |err| VolumeError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// An open store, locked against other processes for as long as it lives.
pub struct Volume {
    pub dir: PathBuf,
    pub meta: MetaDb,
    pub chunks: Arc<PackStore>,
    /// The bucket side of a remote volume (`STORE/remote.json`); `None` for a local one.
    pub remote: Option<Arc<RemotePacks>>,
    pub lock: File,
}

/// Creates an empty store at `dir` (which may exist if empty).
pub fn init(
    dir: &Path,
    params: ChunkParams,
    fixed_patterns: &[String],
    codec: Codec,
    pack_bytes: u64,
) -> Result<(), VolumeError> {
    init_keyed(dir, params, fixed_patterns, codec, pack_bytes, None)
}

/// [`init`] of an encrypted store (`key`): its index records the key id, and its records and
/// chunk names use the key.
pub fn init_keyed(
    dir: &Path,
    params: ChunkParams,
    fixed_patterns: &[String],
    codec: Codec,
    pack_bytes: u64,
    key: Option<crate::crypto::Key>,
) -> Result<(), VolumeError> {
    if dir.exists() {
        let mut entries = fs::read_dir(dir).map_err(io_err(dir))?;
        if entries.next().is_some() {
            return Err(VolumeError::NotEmpty(dir.to_path_buf()));
        }
    } else {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let (uid, gid) = (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    let meta_err = |err| VolumeError::Meta {
        path: dir.to_path_buf(),
        err,
    };
    let meta = MetaDb::create(&dir.join("meta.redb"), params, uid, gid).map_err(meta_err)?;
    meta.set_fixed_patterns(fixed_patterns).map_err(meta_err)?;
    drop(meta);
    let packs = PackStore::open_keyed(dir, None, key).map_err(meta_err)?;
    packs.set_codec(codec);
    packs.set_target(pack_bytes).map_err(meta_err)?;
    crate::store::ChunkStore::sync(&packs).map_err(meta_err)?;
    drop(packs);
    write_marker(dir)
}

/// Removes the store marker (durably): `dir` is no store until [`write_marker`] again.
pub fn unmark(dir: &Path) -> io::Result<()> {
    fs::remove_file(dir.join(MARKER))?;
    File::open(dir)?.sync_all()
}

/// Writes the store marker, durably. Written last: a store without it was never finished.
pub fn write_marker(dir: &Path) -> Result<(), VolumeError> {
    fs::write(
        dir.join(MARKER),
        format!("{MARKER_TEXT}format {FORMAT_VERSION}\n"),
    )
    .map_err(io_err(dir))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

/// Checks that `dir` is a store and takes its lock (non-blocking).
pub fn lock(dir: &Path) -> Result<File, VolumeError> {
    if !dir.is_dir() {
        return Err(VolumeError::Missing(dir.to_path_buf()));
    }
    match fs::read_to_string(dir.join(MARKER)) {
        Ok(s) if s.starts_with(MARKER_TEXT) => {
            // The format line says what made the store (an older one may be upgraded by
            // opening it; meta.redb's own version is checked again when it is opened). A
            // newer one is refused before anything is opened or locked.
            let found = s[MARKER_TEXT.len()..]
                .lines()
                .find_map(|l| l.strip_prefix("format "))
                .and_then(|v| v.trim().parse::<u64>().ok());
            if let Some(found) = found.filter(|&f| f > FORMAT_VERSION) {
                return Err(VolumeError::Newer {
                    path: dir.to_path_buf(),
                    found,
                });
            }
        }
        _ => return Err(VolumeError::Foreign(dir.to_path_buf())),
    }
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(io_err(dir))?;
    // A lock released a moment ago can still be held by a child that a thread of the
    // releasing process was forking (a forked child shares the lock until it execs): wait a
    // little before calling the store busy, unless a daemon is serving it.
    // How long a wait for a finishing daemon goes unmentioned.
    const UNMOUNT_QUIET: std::time::Duration = std::time::Duration::from_secs(3);
    let mut tries = 0;
    let waiting_since = std::time::Instant::now();
    let mut told = false;
    loop {
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                // A note a killed holder left is not ours (a clean one leaves none: nothing
                // is written to a store at rest).
                if f.metadata().is_ok_and(|m| m.len() > 0) {
                    let _ = f.set_len(0);
                }
                return Ok(f);
            }
            // A daemon whose mount has ended and that is finishing (`mark_unmounting`): wait
            // for it, so that `umount` then `mount` (a restart) works.
            Err(rustix::io::Errno::WOULDBLOCK)
                if waiting_since.elapsed() < UNMOUNT_WAIT
                    && fs::read(dir.join("lock")).is_ok_and(|b| b.starts_with(UNMOUNTING)) =>
            {
                // Said only when it takes a while: `umount` then `mount` prints nothing (tools
                // such as fstests take any output of a mount as a failure).
                if !told && waiting_since.elapsed() >= UNMOUNT_QUIET {
                    told = true;
                    tracing::warn!(
                        "{}: waiting for the daemon of its last mount to finish unmounting",
                        dir.display()
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            // A daemon whose mount is gone from the mount table but that has not yet written
            // that note: the kernel sends a plain FUSE daemon no DESTROY, so it learns of the
            // unmount only when its request threads next read /dev/fuse, moments after
            // `umount` returned. Waited for briefly; a daemon whose mount is still there (or
            // is not visible here: another mount namespace, a lazy unmount it still serves)
            // is called busy.
            Err(rustix::io::Errno::WOULDBLOCK)
                if waiting_since.elapsed() < MOUNT_GONE_WAIT
                    && fs::read(dir.join("lock")).is_ok_and(|b| b.is_empty())
                    && dir.join("control.sock").exists()
                    && !mounted_from(dir) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(rustix::io::Errno::WOULDBLOCK)
                if tries < LOCK_RETRIES && !dir.join("control.sock").exists() =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(VolumeError::Locked(dir.to_path_buf()));
            }
            Err(e) => {
                return Err(VolumeError::Io {
                    path: dir.to_path_buf(),
                    err: e.into(),
                });
            }
        }
    }
}

/// Retries (10 ms apart) of a store lock held by a process that serves no control socket.
const LOCK_RETRIES: u32 = 20;
/// How long [`lock`] waits for a serving daemon whose mount has left the mount table to
/// note that it is unmounting (normally milliseconds).
const MOUNT_GONE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Is a dedupfs mount of the store `dir` in this process's mount table? (The daemon mounts
/// with the canonical store directory as the mount's source.)
fn mounted_from(dir: &Path) -> bool {
    let Ok(canon) = dir.canonicalize() else {
        return false;
    };
    let canon = canon.to_string_lossy();
    crate::mounts::entries().is_ok_and(|all| {
        all.iter()
            .any(|e| e.fstype == crate::mounts::FSTYPE && e.source == canon)
    })
}

/// What a daemon writes into `STORE/lock` once its mount has ended, while it finishes (final
/// sync, metadata backup, upload to the bucket): `umount` returns before it is done.
const UNMOUNTING: &[u8] = b"unmounting\n";
/// How long [`lock`] waits for such a daemon before calling the store busy.
const UNMOUNT_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Notes in the held lock file `lock` that its holder's mount has ended and that it is only
/// finishing: [`lock`] callers wait for it instead of calling the store busy.
pub fn mark_unmounting(lock: &File) {
    use std::os::unix::fs::FileExt;
    let _ = lock.set_len(0);
    let _ = lock.write_all_at(UNMOUNTING, 0);
}

/// Opens a store for exclusive use.
pub fn open(dir: &Path) -> Result<Volume, VolumeError> {
    open_with(dir, false)
}

/// Opens a store to mount it: a store `attach` made that no mount has written to is first
/// brought to its volume's newest generation (`remote::attach::catch_up`; with the bucket
/// out of reach, a log line and the copy it has).
pub fn open_to_mount(dir: &Path) -> Result<Volume, VolumeError> {
    open_with(dir, true)
}

fn open_with(dir: &Path, catch_up: bool) -> Result<Volume, VolumeError> {
    let lock = lock(dir)?;
    // A remote volume's config, and an encrypted volume's key first: a missing or wrong key
    // is refused before anything else is opened (and so before anything is written).
    let meta_err = |err| VolumeError::Meta {
        path: dir.to_path_buf(),
        err,
    };
    let config = VolumeConfig::load(dir).map_err(meta_err)?;
    let key = config
        .as_ref()
        .map(|c| c.load_key())
        .transpose()
        .map_err(meta_err)?
        .flatten();
    if catch_up && let Some(config) = &config {
        match crate::remote::attach::catch_up(dir, config, key.as_ref()) {
            Ok(Some(r)) => tracing::info!(
                generation = r.generation,
                packs = r.packs,
                snapshots = r.snapshots,
                "caught up with the volume's newest generation (this store was attached and \
                 never written to)"
            ),
            Ok(None) => {}
            // A newer format, a wrong key: as for attach, refused.
            Err(err @ FsError::Refused(_)) => {
                return Err(VolumeError::Meta {
                    path: dir.to_path_buf(),
                    err,
                });
            }
            Err(e) => tracing::warn!(
                "cannot look for a newer generation of the volume ({e}): mounting the one \
                 this store has"
            ),
        }
    }
    if catch_up {
        let cut_short =
            crate::remote::attach::install_cut_short(dir).map_err(|err| VolumeError::Meta {
                path: dir.to_path_buf(),
                err,
            })?;
        if cut_short {
            return Err(VolumeError::Meta {
                path: dir.to_path_buf(),
                err: FsError::Refused(
                    "bringing this store to the volume's newest generation was cut short (its \
                     files are of two generations); mount it again with the object store \
                     reachable to finish it"
                        .into(),
                ),
            });
        }
    }
    if !dir.join("meta.redb").exists() {
        return Err(VolumeError::MetaDamaged {
            path: dir.to_path_buf(),
            err: FsError::Corrupt("the file is missing".into()),
            hint: restore_hint(dir),
        });
    }
    let meta = MetaDb::open(&dir.join("meta.redb")).map_err(|err| {
        if is_damage(&err) {
            VolumeError::MetaDamaged {
                path: dir.to_path_buf(),
                hint: restore_hint(dir),
                err,
            }
        } else {
            VolumeError::Meta {
                path: dir.to_path_buf(),
                err,
            }
        }
    })?;
    let remote = match &config {
        Some(c) => Some(Arc::new(
            RemotePacks::open(dir, c, key.clone()).map_err(meta_err)?,
        )),
        None => None,
    };
    let source = remote
        .clone()
        .map(|r| r as Arc<dyn crate::store::pack_store::PackSource>);
    let chunks = PackStore::open_keyed(dir, source, key).map_err(|err| {
        let index = dir.join("index.redb");
        match crate::store::pack_index::PackIndex::open(&index) {
            Err(e) if index.exists() && !e.is_held_elsewhere() => VolumeError::IndexDamaged {
                path: dir.to_path_buf(),
                err: e,
            },
            _ => VolumeError::Meta {
                path: dir.to_path_buf(),
                err,
            },
        }
    })?;
    if chunks.was_rebuilt() && remote.is_some() {
        forget_foreign_strays(dir, &meta, &chunks).map_err(|err| VolumeError::Meta {
            path: dir.to_path_buf(),
            err,
        })?;
    }
    Ok(Volume {
        dir: dir.to_path_buf(),
        meta,
        chunks: Arc::new(chunks),
        remote,
        lock,
    })
}

/// After a rebuild of a remote volume's index: the chunks of other volumes' packs that neither
/// its metadata nor a snapshot of it knows are forgotten (`PackStore::forget_foreign_strays`).
fn forget_foreign_strays(
    dir: &Path,
    meta: &MetaDb,
    chunks: &PackStore,
) -> crate::error::Result<()> {
    let holders = crate::meta::snapshot::Holders::open(dir)?;
    let tx = meta.begin_read()?;
    let keep = |id: &crate::hash::ChunkId| !matches!(tx.chunk(id), Ok(None)) || holders.holds(id);
    let n = chunks.forget_foreign_strays(&keep)?;
    if n > 0 {
        tracing::info!(
            "{n} chunks of other volumes' packs that this volume does not use were left out of the rebuilt index"
        );
    }
    Ok(())
}

/// Moves a damaged pack index aside (`index.redb.damaged`), so that the next open rebuilds
/// it from the packs. Returns where it went.
pub fn set_aside_index(dir: &Path) -> Result<PathBuf, VolumeError> {
    let to = dir.join("index.redb.damaged");
    fs::rename(dir.join("index.redb"), &to).map_err(io_err(dir))?;
    Ok(to)
}

/// Publishes usage figures for `stats` on a mounted store (atomically, by rename).
pub fn publish_stats(dir: &Path, usage: &Usage) -> io::Result<()> {
    let tmp = dir.join("stats.json.tmp");
    let json = serde_json::to_vec_pretty(usage).map_err(io::Error::other)?;
    fs::write(&tmp, json)?;
    fs::rename(tmp, dir.join("stats.json"))
}

/// Reads the usage figures a mounted daemon published.
pub fn read_published_stats(dir: &Path) -> io::Result<Usage> {
    let raw = fs::read(dir.join("stats.json"))?;
    serde_json::from_slice(&raw).map_err(io::Error::other)
}
