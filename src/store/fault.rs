//! Fault injection inside the pack store: the n-th record write fails part-way (a short write,
//! then an errno), or the n-th pack fdatasync fails. Tests arm it through
//! [`PackStore::faults`](super::PackStore::faults); a daemon started with
//! `DEDUPFS_FAULTS=write:N:ERRNO,sync:N:ERRNO` (ERRNO: eio or enospc) arms it too, so mount
//! tests can break a real daemon's pack I/O. Unarmed, it costs one atomic load per write.

use std::io;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

#[derive(Default)]
pub struct Faults {
    writes: AtomicU64,
    syncs: AtomicU64,
    /// Fail the write with this 1-based index (0 = never).
    fail_write_at: AtomicU64,
    write_errno: AtomicI32,
    fail_sync_at: AtomicU64,
    sync_errno: AtomicI32,
}

impl Faults {
    /// Armed from `DEDUPFS_FAULTS` when set (see the module comment); unarmed otherwise.
    pub fn from_env() -> Faults {
        let f = Faults::default();
        if let Ok(spec) = std::env::var("DEDUPFS_FAULTS") {
            for part in spec.split(',').filter(|p| !p.is_empty()) {
                let fields: Vec<&str> = part.split(':').collect();
                let errno = match fields.get(2).copied() {
                    Some("enospc") => libc::ENOSPC,
                    _ => libc::EIO,
                };
                let n = fields.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
                match fields.first().copied() {
                    Some("write") => f.fail_nth_write(n, errno),
                    Some("sync") => f.fail_nth_sync(n, errno),
                    _ => tracing::warn!("DEDUPFS_FAULTS: ignoring {part:?}"),
                }
                tracing::warn!("fault injection armed: {part}");
            }
        }
        f
    }

    /// The `n`-th record write from now writes half the record and fails with `errno`.
    pub fn fail_nth_write(&self, n: u64, errno: i32) {
        self.write_errno.store(errno, Ordering::SeqCst);
        self.fail_write_at
            .store(self.writes.load(Ordering::SeqCst) + n, Ordering::SeqCst);
    }

    /// The `n`-th pack fdatasync from now fails with `errno`.
    pub fn fail_nth_sync(&self, n: u64, errno: i32) {
        self.sync_errno.store(errno, Ordering::SeqCst);
        self.fail_sync_at
            .store(self.syncs.load(Ordering::SeqCst) + n, Ordering::SeqCst);
    }

    /// Called before each record write: the error it must fail with, if armed for this one.
    pub(super) fn on_write(&self) -> Option<io::Error> {
        let at = self.fail_write_at.load(Ordering::Relaxed);
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        (at != 0 && n == at)
            .then(|| io::Error::from_raw_os_error(self.write_errno.load(Ordering::SeqCst)))
    }

    /// Called before each pack fdatasync.
    pub(super) fn on_sync(&self) -> Option<io::Error> {
        let at = self.fail_sync_at.load(Ordering::Relaxed);
        let n = self.syncs.fetch_add(1, Ordering::SeqCst) + 1;
        (at != 0 && n == at)
            .then(|| io::Error::from_raw_os_error(self.sync_errno.load(Ordering::SeqCst)))
    }
}
