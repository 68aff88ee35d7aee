//! Which opens may use the kernel's page cache, and when the cache the kernel kept from an
//! earlier open still holds the file's current bytes (FOPEN_KEEP_CACHE).
//!
//! Writes always go past the page cache (FOPEN_DIRECT_IO: measured 2-5x faster through FUSE
//! than write-through). A read-only open uses the page cache unless a writer has the file open
//! at that moment. Readers that opened first keep their page cache while a writer comes and
//! writes: the kernel drops the written range from the page cache before each direct write and
//! again after it (the second drop, for reads that raced the write, is in Linux 6.19 and 6.18.3
//! on; the adapter does not offer the page cache on older kernels). Truncate, fallocate and
//! copy_file_range drop the affected pages in the kernel themselves.
//!
//! Writing through the page cache (an earlier version of this policy, for writers arriving
//! while cached readers were open) is not coherent: the kernel marks fully written pages
//! up to date before the daemon has the write, so an open without KEEP_CACHE racing it could
//! drop them and a racing read cache the old bytes again (`tests/mount_cache.rs` caught it).
//!
//! A page-cache open keeps what the kernel cached before (KEEP_CACHE) only if the file's
//! bytes did not change since the last page-cache open; otherwise the kernel drops the
//! inode's cached pages at open (no writer is open then, so nothing races that drop). What is
//! unchanged is remembered for a bounded number of inodes: one that was forgotten is simply
//! opened without KEEP_CACHE. The mark is a second line of defence, not a guarantee: of two
//! racing opens, one granted KEEP_CACHE may read before the other's drop happened; on the
//! kernels that get page-cache reads, every changed range was already dropped by the kernel.

use crate::error::Ino;
use lru::LruCache;
use std::collections::HashMap;
use std::num::NonZeroUsize;

/// Inodes whose kernel page cache is remembered as current.
const REMEMBERED: usize = 1 << 16;

/// How an open file is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// Past the page cache (FOPEN_DIRECT_IO).
    Direct,
    /// Through the page cache; `keep`: what the kernel cached before is still current.
    Cached { keep: bool },
}

pub(super) struct PageCachePolicy {
    /// Open writers by inode (absent: none).
    writers: HashMap<Ino, u32>,
    /// Inodes unchanged since their last page-cache open.
    current: LruCache<Ino, ()>,
}

impl Default for PageCachePolicy {
    fn default() -> Self {
        PageCachePolicy {
            writers: HashMap::new(),
            current: LruCache::new(NonZeroUsize::new(REMEMBERED).expect("non-zero")),
        }
    }
}

impl PageCachePolicy {
    /// Decides how a new open of `ino` is served and records it; `release` must follow.
    /// `atime_due`: the file's next read must reach the daemon to update its access time, so
    /// the kernel's cached pages are not kept.
    pub fn open(&mut self, ino: Ino, write: bool, atime_due: bool) -> CacheMode {
        if write {
            *self.writers.entry(ino).or_default() += 1;
            return CacheMode::Direct;
        }
        if self.writers.contains_key(&ino) {
            return CacheMode::Direct;
        }
        // After this open the kernel's pages are current either way: kept because nothing
        // changed, or dropped by the kernel at open.
        let keep = self.current.put(ino, ()).is_some() && !atime_due;
        CacheMode::Cached { keep }
    }

    /// An open of `ino` (for writing or not) was closed.
    pub fn release(&mut self, ino: Ino, write: bool) {
        if !write {
            return;
        }
        if let Some(n) = self.writers.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                self.writers.remove(&ino);
            }
        }
    }

    /// The bytes of `ino` changed (or may have): the next page-cache open drops the kernel's
    /// pages. Cheap when nothing is remembered for it.
    pub fn changed(&mut self, ino: Ino) {
        self.current.pop(&ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CacheMode::*;

    #[test]
    fn readers_use_the_cache_and_keep_it_while_nothing_changes() {
        let mut p = PageCachePolicy::default();
        assert_eq!(p.open(5, false, false), Cached { keep: false });
        p.release(5, false);
        assert_eq!(p.open(5, false, false), Cached { keep: true });
        p.release(5, false);
        p.changed(5);
        assert_eq!(p.open(5, false, false), Cached { keep: false });
    }

    #[test]
    fn a_reader_whose_access_time_is_due_does_not_keep_the_cached_pages() {
        let mut p = PageCachePolicy::default();
        p.open(5, false, false);
        p.release(5, false);
        assert_eq!(p.open(5, false, true), Cached { keep: false });
        p.release(5, false);
        assert_eq!(p.open(5, false, false), Cached { keep: true });
    }

    #[test]
    fn writers_are_direct_and_readers_go_direct_while_one_is_open() {
        let mut p = PageCachePolicy::default();
        let r = p.open(1, false, false);
        assert_eq!(r, Cached { keep: false });
        // A writer arriving while a cached reader is open is still direct.
        assert_eq!(p.open(1, true, false), Direct);
        p.changed(1);
        // Readers opening while it is open go direct.
        assert_eq!(p.open(1, false, false), Direct);
        p.release(1, false);
        p.release(1, true);
        // Writer gone: cached again, without the pages from before its writes.
        assert_eq!(p.open(1, false, false), Cached { keep: false });
        p.release(1, false);
        assert_eq!(p.open(1, false, false), Cached { keep: true });
        p.release(1, false);
        assert!(p.writers.is_empty());
    }

    #[test]
    fn forgotten_inodes_are_opened_without_keep_cache() {
        let mut p = PageCachePolicy::default();
        for ino in 0..(REMEMBERED as u64 + 1) {
            p.open(ino, false, false);
            p.release(ino, false);
        }
        assert_eq!(p.open(0, false, false), Cached { keep: false }, "evicted");
        assert_eq!(
            p.open(REMEMBERED as u64, false, false),
            Cached { keep: true }
        );
    }
}
