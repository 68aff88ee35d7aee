//! Which opens may use the kernel's page cache, and when the cache the kernel kept from an
//! earlier open still holds the file's current bytes (FOPEN_KEEP_CACHE).
//!
//! Writes go past the page cache (FOPEN_DIRECT_IO: measured 2-5x faster through FUSE than
//! write-through), so the page cache is only coherent while nobody writes that way. The rule,
//! per inode:
//! - a read-only open uses the page cache unless a direct writer has the file open;
//! - an open for writing is direct unless page-cache opens of the file exist; then it writes
//!   through the page cache (the kernel updates its cached pages with every write), slower
//!   but coherent for the readers.
//!
//! So direct writers and page-cache opens never coexist. Truncate, fallocate and
//! copy_file_range drop the affected cached pages in the kernel themselves.
//!
//! A page-cache open keeps what the kernel cached before (KEEP_CACHE) only if the file's
//! bytes did not change since the last page-cache open; otherwise the kernel drops the
//! inode's cached pages at open. "Unchanged" is remembered for a bounded number of inodes:
//! one that was forgotten is simply opened without KEEP_CACHE.

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

#[derive(Default, Clone, Copy)]
struct Opens {
    direct_writers: u32,
    cached: u32,
}

pub(super) struct PageCachePolicy {
    opens: HashMap<Ino, Opens>,
    /// Inodes unchanged since their last page-cache open.
    current: LruCache<Ino, ()>,
}

impl Default for PageCachePolicy {
    fn default() -> Self {
        PageCachePolicy {
            opens: HashMap::new(),
            current: LruCache::new(NonZeroUsize::new(REMEMBERED).expect("non-zero")),
        }
    }
}

impl PageCachePolicy {
    /// Decides how a new open of `ino` is served and records it; `release` must follow.
    pub fn open(&mut self, ino: Ino, write: bool) -> CacheMode {
        let o = self.opens.entry(ino).or_default();
        let cached = if write {
            o.cached > 0
        } else {
            o.direct_writers == 0
        };
        if !cached {
            if write {
                o.direct_writers += 1;
            }
            return CacheMode::Direct;
        }
        o.cached += 1;
        // After this open the kernel's pages are current either way: kept because nothing
        // changed, or dropped by the kernel at open.
        let keep = self.current.put(ino, ()).is_some();
        CacheMode::Cached { keep }
    }

    /// An open made with `mode` was closed.
    pub fn release(&mut self, ino: Ino, write: bool, mode: CacheMode) {
        let Some(o) = self.opens.get_mut(&ino) else {
            return;
        };
        match mode {
            CacheMode::Direct if write => o.direct_writers = o.direct_writers.saturating_sub(1),
            CacheMode::Direct => {}
            CacheMode::Cached { .. } => o.cached = o.cached.saturating_sub(1),
        }
        if o.direct_writers == 0 && o.cached == 0 {
            self.opens.remove(&ino);
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
        assert_eq!(p.open(5, false), Cached { keep: false });
        p.release(5, false, Cached { keep: false });
        assert_eq!(p.open(5, false), Cached { keep: true });
        p.release(5, false, Cached { keep: true });
        p.changed(5);
        assert_eq!(p.open(5, false), Cached { keep: false });
    }

    #[test]
    fn direct_writers_and_cached_opens_never_coexist() {
        let mut p = PageCachePolicy::default();
        // A direct writer first: readers go direct too.
        assert_eq!(p.open(1, true), Direct);
        assert_eq!(p.open(1, false), Direct);
        p.release(1, false, Direct);
        p.release(1, true, Direct);
        // Writer gone: readers cached again, but the writer changed the file.
        p.changed(1);
        let m = p.open(1, false);
        assert_eq!(m, Cached { keep: false });
        // A writer arriving while a cached reader is open writes through the cache.
        let w = p.open(1, true);
        assert_eq!(w, Cached { keep: true });
        p.release(1, false, m);
        p.release(1, true, w);
        // All closed: the next writer is direct again.
        assert_eq!(p.open(1, true), Direct);
        p.release(1, true, Direct);
        assert!(p.opens.is_empty());
    }

    #[test]
    fn forgotten_inodes_are_opened_without_keep_cache() {
        let mut p = PageCachePolicy::default();
        for ino in 0..(REMEMBERED as u64 + 1) {
            let m = p.open(ino, false);
            p.release(ino, false, m);
        }
        assert_eq!(p.open(0, false), Cached { keep: false }, "evicted");
        assert_eq!(p.open(REMEMBERED as u64, false), Cached { keep: true });
    }
}
