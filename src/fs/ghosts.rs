//! Inodes whose last name went while the kernel still holds them.
//!
//! An open directory, an `O_PATH` descriptor, a process's working directory: the kernel can
//! hold an inode without a file handle the daemon knows of (directories are opened without
//! handles, `O_PATH` opens send nothing). When the inode's last name goes (unlink, rmdir,
//! rename over it) it is deleted once no handle holds it (`reap`), yet `fstat` of such a
//! descriptor must still answer, with a link count of 0, as on ext4 (fstests generic/035).
//! So the inode's last attributes are kept here, in memory only, until the kernel sends
//! FORGET for it: the kernel forgets an inode only after its last reference went, and it
//! looked up every inode whose name it removes, so a FORGET follows each unlink. A number
//! is never handed out again in a mount, so a kept inode cannot be mistaken for a new one.
//!
//! Bounded: past `KEPT` the oldest are let go (their `fstat` gets ENOENT, as before this
//! module). FORGET takes only this module's lock, never the state lock.

use crate::error::Ino;
use crate::meta::Attr;
use lru::LruCache;
use parking_lot::Mutex;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Unlinked inodes kept for the kernel at most.
const KEPT: usize = 1 << 16;

pub(super) struct Ghosts {
    kept: Mutex<LruCache<Ino, Attr>>,
    /// How many are kept: FORGET of any other inode (nearly all of them) looks no further.
    len: AtomicUsize,
}

impl Default for Ghosts {
    fn default() -> Self {
        Ghosts {
            kept: Mutex::new(LruCache::new(NonZeroUsize::new(KEPT).expect("non-zero"))),
            len: AtomicUsize::new(0),
        }
    }
}

impl Ghosts {
    /// `ino`'s last name went; `attr` (link count 0) is what `fstat` shows from now on.
    pub fn add(&self, ino: Ino, attr: Attr) {
        let mut kept = self.kept.lock();
        kept.put(ino, attr);
        self.len.store(kept.len(), Ordering::Relaxed);
    }

    /// `ino`'s attributes changed after its last name went (an open file written to until
    /// its last release): shown from now on if it is still kept. Not added back once the
    /// kernel forgot it (its FORGET may come before the RELEASE).
    pub fn refresh(&self, ino: Ino, attr: Attr) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(a) = self.kept.lock().peek_mut(&ino) {
            *a = attr;
        }
    }

    pub fn get(&self, ino: Ino) -> Option<Attr> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.kept.lock().get(&ino).copied()
    }

    /// The kernel forgot `ino`.
    pub fn forget(&self, ino: Ino) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut kept = self.kept.lock();
        if kept.pop(&ino).is_some() {
            self.len.store(kept.len(), Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Kind;

    #[test]
    fn kept_until_forgotten_and_bounded() {
        let g = Ghosts::default();
        let mut a = Attr::new(Kind::Dir, 0o755, 0, 0);
        a.nlink = 0;
        g.add(7, a);
        assert_eq!(g.get(7).map(|a| a.nlink), Some(0));
        g.forget(8);
        assert_eq!(g.len(), 1);
        let mut b = a;
        b.size = 9;
        g.refresh(7, b);
        assert_eq!(g.get(7).map(|a| a.size), Some(9));
        g.forget(7);
        assert_eq!((g.get(7), g.len()), (None, 0));
        g.refresh(7, b);
        assert_eq!(g.get(7), None, "not added back");
        for ino in 0..KEPT as u64 + 10 {
            g.add(ino, a);
        }
        assert_eq!(g.len(), KEPT);
        assert!(g.get(0).is_none() && g.get(KEPT as u64 + 9).is_some());
    }
}
