//! The real chunk store: one file per chunk under `chunks/xx/yy/<hex>`.
//!
//! A chunk is written to an anonymous file (`O_TMPFILE`) in its final directory and linked
//! under its name when complete, so a crash leaves no partial chunk under a chunk's name and no
//! temporary file at all. Where `O_TMPFILE` is missing, or to replace an existing file (a
//! damaged leftover), it is written to `chunks/tmp/` and renamed into place. A cross-directory
//! rename takes the backing filesystem's rename lock, which serialised the hashing threads.
//! Chunk files are never modified after they get their name.
//! Durability is batched: `put` does not fsync; `sync` calls syncfs(2) on the backing
//! filesystem once, which makes every earlier file and rename durable. That turns one fsync
//! per chunk (16k/s at 1 GB/s of 64 KiB chunks) into one per metadata commit.

use super::cache::map_chunk_file;
use super::{ChunkBytes, ChunkStore, SpaceUsage};
use crate::error::{FsError, Result};
use crate::hash::ChunkId;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Bytes kept allocated in `chunks/reserve` and given back when the device is nearly full,
/// so the metadata commit that records a delete still finds room (redb copies pages on
/// write) and the delete can then free its chunks.
const RESERVE_BYTES: u64 = 8 << 20;

pub struct LocalDirStore {
    root: PathBuf,
    tmp: PathBuf,
    dir_fd: File,
    seq: AtomicU64,
    /// `O_TMPFILE` and linking it by fd work here (cleared at the first refusal).
    tmpfile_ok: AtomicBool,
}

impl LocalDirStore {
    /// Opens (creating if needed) the chunk directory `root`. Leftover temporary files from a
    /// crash are removed: they were never renamed, so nothing can reference them.
    pub fn open(root: &Path) -> Result<LocalDirStore> {
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp)?;
        for entry in fs::read_dir(&tmp)? {
            let _ = fs::remove_file(entry?.path());
        }
        for b in 0..=255u8 {
            let d = root.join(format!("{b:02x}"));
            if !d.is_dir() {
                fs::create_dir_all(&d)?;
            }
        }
        let dir_fd = File::open(root)?;
        let store = LocalDirStore {
            root: root.to_path_buf(),
            tmp,
            dir_fd,
            seq: AtomicU64::new(0),
            tmpfile_ok: AtomicBool::new(true),
        };
        store.restore_reserve();
        Ok(store)
    }

    pub fn path_of(&self, id: &ChunkId) -> PathBuf {
        self.root.join(id.rel_path())
    }

    /// Where a store of format 1 kept the chunk (`xx/yy/<hex>`); read when `path_of` is absent.
    fn legacy_path_of(&self, id: &ChunkId) -> PathBuf {
        self.root.join(id.legacy_rel_path())
    }
}

impl LocalDirStore {
    /// Writes `data` to an anonymous file in `dest`'s directory and links it as `dest`.
    /// `Ok(false)`: not possible here (no `O_TMPFILE`, or `dest` exists); nothing was created.
    fn put_linked(&self, dest: &Path, data: &[u8]) -> io::Result<bool> {
        let dir = dest.parent().expect("chunk paths have a directory");
        let open = || {
            fs::OpenOptions::new()
                .write(true)
                .mode(0o644)
                .custom_flags(libc::O_TMPFILE)
                .open(dir)
        };
        let mut f = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(dir)?;
                open()?
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
                self.tmpfile_ok.store(false, Ordering::Relaxed);
                return Ok(false);
            }
            other => other?,
        };
        f.write_all(data)?;
        use rustix::fs::{AtFlags, CWD, linkat};
        // Linking an fd by itself needs CAP_DAC_READ_SEARCH; through /proc it does not.
        let linked = linkat(&f, "", CWD, dest, AtFlags::EMPTY_PATH).or_else(|e| {
            if e == rustix::io::Errno::NOENT || e == rustix::io::Errno::PERM {
                let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
                linkat(CWD, proc.as_str(), CWD, dest, AtFlags::SYMLINK_FOLLOW)
            } else {
                Err(e)
            }
        });
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e == rustix::io::Errno::EXIST => Ok(false),
            Err(e) if e == rustix::io::Errno::NOENT || e == rustix::io::Errno::PERM => {
                // No usable /proc: use temporary names from now on.
                self.tmpfile_ok.store(false, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl ChunkStore for LocalDirStore {
    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<()> {
        let dest = self.path_of(id);
        if self.tmpfile_ok.load(Ordering::Relaxed) && self.put_linked(&dest, data)? {
            return Ok(());
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .tmp
            .join(format!("{}.{}.{n}", id.to_hex(), std::process::id()));
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        let renamed = match fs::rename(&tmp, &dest) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent)?;
                }
                fs::rename(&tmp, &dest)
            }
            other => other,
        };
        if let Err(e) = renamed {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        Ok(())
    }

    fn get(&self, id: &ChunkId) -> Result<ChunkBytes> {
        let file = match File::open(self.path_of(id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => File::open(self.legacy_path_of(id)),
            other => other,
        };
        let file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(FsError::MissingChunk { id: *id });
            }
            Err(e) => return Err(e.into()),
        };
        Ok(map_chunk_file(file)?)
    }

    fn remove(&self, id: &ChunkId) -> Result<()> {
        for path in [self.path_of(id), self.legacy_path_of(id)] {
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        rustix::fs::syncfs(&self.dir_fd).map_err(io::Error::from)?;
        Ok(())
    }

    fn for_each(&self, f: &mut dyn FnMut(ChunkId)) -> Result<()> {
        // `xx/<hex>`, and `xx/yy/<hex>` left by format 1 (a chunk in both is listed twice).
        for a in fs::read_dir(&self.root)? {
            let a = a?;
            if a.file_name() == "tmp" || !a.file_type()?.is_dir() {
                continue;
            }
            for b in fs::read_dir(a.path())? {
                let b = b?;
                if !b.file_type()?.is_dir() {
                    if let Some(id) = b.file_name().to_str().and_then(ChunkId::from_hex) {
                        f(id);
                    }
                    continue;
                }
                for c in fs::read_dir(b.path())? {
                    let c = c?;
                    if let Some(id) = c.file_name().to_str().and_then(ChunkId::from_hex) {
                        f(id);
                    }
                }
            }
        }
        Ok(())
    }

    fn release_reserve(&self) -> bool {
        fs::remove_file(self.root.join("reserve")).is_ok()
    }

    fn restore_reserve(&self) {
        super::make_reserve(&self.root.join("reserve"), RESERVE_BYTES);
    }

    fn space(&self) -> Result<SpaceUsage> {
        super::space_of(&self.dir_fd)
    }
}
