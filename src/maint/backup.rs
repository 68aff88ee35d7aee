//! Metadata backups of a store (format and guarantees in `meta::backup`): taken by a mounted
//! daemon on a timer and at unmount, or on demand (`dedupfs backup`), and restored by
//! `fsck --repair` when `meta.redb` cannot be read.

use crate::error::Result;
use crate::fs::Fs;
use crate::meta::MetaDb;
use crate::meta::backup::{self, KEEP, RestoreReport, TakeReport};
use crate::store::ChunkStore;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Default time between two backups of a mounted volume whose metadata changed.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
/// Wait before trying again after a failed backup (a full disk, say).
const RETRY_AFTER: Duration = Duration::from_secs(600);

/// Serialises backups within the process (the timer, unmount and the control socket).
static TAKING: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// Backs up the metadata of a mounted filesystem now.
pub fn backup_fs(fs: &Fs, store: &Path) -> Result<(TakeReport, u64)> {
    let _one = TAKING.lock();
    let (snap, epoch) = fs.durable_snapshot()?;
    Ok((backup::take(store, &snap, KEEP)?, epoch))
}

/// Backs up the metadata of an opened, unmounted store.
pub fn backup_offline(store: &Path, meta: &MetaDb, chunks: &dyn ChunkStore) -> Result<TakeReport> {
    let _one = TAKING.lock();
    chunks.sync()?;
    meta.make_durable()?;
    backup::take(store, &meta.begin_read()?, KEEP)
}

/// When a mounted daemon backs up: once the metadata changed, at most every `interval` (never
/// with `None`), and at unmount.
pub struct BackupTimer {
    store: PathBuf,
    interval: Option<Duration>,
    /// Durable epoch of the last backup taken by this daemon.
    backed_epoch: Option<u64>,
    /// The newest backup was older than the metadata when the daemon started.
    stale_at_start: bool,
    next_try: Instant,
}

impl BackupTimer {
    /// Call before the store's metadata is opened (opening commits).
    pub fn new(store: &Path, interval: Option<Duration>) -> BackupTimer {
        let meta_mtime = std::fs::metadata(store.join("meta.redb"))
            .and_then(|m| m.modified())
            .ok();
        // The copy's own mtime (when it was finished) has the precision the name lacks.
        let newest = backup::list(store)
            .ok()
            .and_then(|l| l.first().and_then(|b| b.path.metadata().ok()))
            .and_then(|m| m.modified().ok());
        let stale_at_start = match (meta_mtime, newest) {
            (Some(m), Some(copied)) => m > copied,
            _ => true,
        };
        BackupTimer {
            store: store.to_path_buf(),
            interval,
            backed_epoch: None,
            stale_at_start,
            next_try: Instant::now() + interval.unwrap_or(DEFAULT_INTERVAL),
        }
    }

    fn changed(&self, epoch: u64) -> bool {
        match self.backed_epoch {
            Some(b) => epoch != b,
            None => self.stale_at_start || epoch > 0,
        }
    }

    /// Backs up if the timer is due and the metadata changed since the last backup.
    pub fn tick(&mut self, fs: &Fs) {
        if self.interval.is_some()
            && Instant::now() >= self.next_try
            && self.changed(fs.durable_epoch())
        {
            self.run(fs);
        }
    }

    /// At unmount (after the final sync): backs up if anything changed since the last one.
    pub fn at_unmount(&mut self, fs: &Fs) {
        if self.changed(fs.durable_epoch()) {
            self.run(fs);
        }
    }

    fn run(&mut self, fs: &Fs) {
        match backup_fs(fs, &self.store) {
            Ok((r, epoch)) => {
                self.backed_epoch = Some(epoch);
                self.next_try = Instant::now() + self.interval.unwrap_or(DEFAULT_INTERVAL);
                tracing::info!(
                    seq = r.backup.seq,
                    bytes = r.backup.bytes,
                    rows = r.rows,
                    ms = r.elapsed_ms,
                    "metadata backup {}",
                    r.backup.path.display()
                );
            }
            Err(e) => {
                self.next_try = Instant::now() + RETRY_AFTER;
                tracing::warn!("metadata backup failed (retrying later): {e}");
            }
        }
    }
}

/// Restores `meta.redb` of a locked, unmounted store from its newest good backup, and sets the
/// pack index aside so that the next open rebuilds it from the packs (chunks that moved or
/// were dropped from the index since the backup are found wherever a pack still holds them).
pub fn restore(store: &Path) -> Result<(RestoreReport, Option<PathBuf>)> {
    let report = backup::restore(store)?;
    let index = store.join("index.redb");
    let index_aside = if index.exists() {
        let to = store.join(format!("index.redb.before-restore-{}", report.restored.seq));
        std::fs::rename(&index, &to)?;
        std::fs::File::open(store)?.sync_all()?;
        Some(to)
    } else {
        None
    };
    Ok((report, index_aside))
}
