//! The metadata database's storage backend: redb's file backend, plus a switch that turns it
//! off. redb's clean shutdown makes every commit durable, including non-durable ones; after a
//! failed sync of the chunk store those may name chunks that never reached the disk. An
//! abandoned backend drops every write and sync from then on, so the file stays exactly as a
//! crash at that moment would leave it, and the next open recovers to the last durable commit.
//!
//! Fault injection for tests: while an errno is armed ([`MetaDb::fail_writes`]), every write,
//! resize and sync of the file fails with it and changes nothing, as on a full disk. Unarmed,
//! it costs one atomic load per write.
//!
//! [`MetaDb::fail_writes`]: super::MetaDb::fail_writes

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use std::fs::{File, OpenOptions};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

// redb 4 without `experimental-api-5`: plain I/O errors.
type IoResult<T> = std::io::Result<T>;

#[derive(Debug)]
pub(super) struct Backend {
    file: FileBackend,
    abandoned: Arc<AtomicBool>,
    /// The errno every write fails with (0: none; see the module comment).
    fail_errno: Arc<AtomicI32>,
}

impl Backend {
    /// Opens `path` (`create`: a new file; otherwise it must exist and not be empty, since
    /// redb would turn an empty file into a new, empty database).
    pub(super) fn open(
        path: &Path,
        create: bool,
        abandoned: Arc<AtomicBool>,
        fail_errno: Arc<AtomicI32>,
    ) -> std::io::Result<Backend> {
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .open(path)?;
        if !create && file.metadata()?.len() == 0 {
            return Err(std::io::Error::other(format!(
                "{} is empty: not a redb database",
                path.display()
            )));
        }
        Ok(Backend {
            file: FileBackend::new(file).map_err(std::io::Error::other)?,
            abandoned,
            fail_errno,
        })
    }

    fn off(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    /// The injected failure of a write, resize or sync, when armed.
    fn injected(&self) -> IoResult<()> {
        match self.fail_errno.load(Ordering::Relaxed) {
            0 => Ok(()),
            errno => Err(std::io::Error::from_raw_os_error(errno)),
        }
    }
}

impl StorageBackend for Backend {
    fn len(&self) -> IoResult<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> IoResult<()> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> IoResult<()> {
        if self.off() {
            return Ok(());
        }
        self.injected()?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> IoResult<()> {
        if self.off() {
            return Ok(());
        }
        self.injected()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> IoResult<()> {
        if self.off() {
            return Ok(());
        }
        self.injected()?;
        self.file.write(offset, data)
    }

    fn close(&self) -> IoResult<()> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}
