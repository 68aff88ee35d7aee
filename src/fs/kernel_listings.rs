//! Directory listings the kernel keeps, for directories opened without a handle.
//!
//! With handle-less directory opens (the daemon answers the first OPENDIR with ENOSYS, and
//! the kernel then sends neither OPENDIR nor RELEASEDIR again), every open may be served from
//! the listing the kernel cached, for as long as the kernel thinks it current: it drops its
//! copy itself when one of its own requests changes the directory. What changes a listing
//! otherwise must be told to the kernel (an inode invalidation, sent by the adapter's notifier
//! thread, never on a request thread or under the state lock): the `..` of a directory moved
//! to another parent, a create that committed its name and then failed, everything a failed
//! commit dropped, and the snapshots that come and go through the control socket.
//!
//! `Held` remembers which directories the kernel may hold a listing of (those served a
//! READDIR since their last invalidation), bounded: one that is forgotten is invalidated
//! then. `Stale` is the queue of invalidations owed, which the notifier thread drains.
//! (docs/design.md, "What the kernel caches".)

use super::dir_listing::Listing;
use crate::error::Ino;
use lru::LruCache;
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Directories remembered as held by the kernel; one more makes the least recently served
/// one invalidated (about 50 bytes each).
const HELD: usize = 1 << 16;
/// Listings kept for readers that continue from an offset (each bounded by `dir_listing`: in
/// memory up to 16,384 entries, ~1.5 MiB; past that in the scratch file). A listing read to
/// its end is dropped at once, so these are the directories being read.
const SHARED: usize = 64;

/// Directories whose listing the kernel may hold, and the listings continuing readers share.
/// Lives in the state; every change is reported to `Stale` while the state lock is held.
pub(super) struct Held {
    /// `None` until `Fs::hold_listings`: directories are opened with handles, whose listings
    /// the kernel does not keep.
    held: Option<LruCache<Ino, ()>>,
    /// The last listing built for each recently read directory: a READDIR from an offset
    /// past 0 continues in it (its cookies are valid in any listing of the directory).
    shared: LruCache<Ino, Arc<Mutex<Listing>>>,
    /// Directories whose listing is being built (`building`), with how many builds are
    /// under way and how many changes of the directory were reported since the first began:
    /// a listing built while its directory's count moved may be older than an invalidation
    /// already sent, and is built again (`Fs::shared_listing`). Per directory, so that
    /// changes elsewhere never hold a build back. Bounded by the builds under way.
    building: HashMap<Ino, (u32, u64)>,
}

impl Default for Held {
    fn default() -> Self {
        Held {
            held: None,
            shared: LruCache::new(NonZeroUsize::new(SHARED).expect("non-zero")),
            building: HashMap::new(),
        }
    }
}

impl Held {
    pub(super) fn enable(&mut self) {
        self.held
            .get_or_insert_with(|| LruCache::new(NonZeroUsize::new(HELD).expect("non-zero")));
    }

    /// A READDIR of `dir` is about to be answered: the kernel may keep what it gets.
    pub(super) fn hold(&mut self, dir: Ino, stale: &Stale) {
        if let Some(held) = &mut self.held
            && let Some((old, ())) = held.push(dir, ())
            && old != dir
        {
            stale.push(&[old]);
        }
    }

    /// The listing of `dir` changed behind the kernel's back.
    pub(super) fn changed(&mut self, dir: Ino, stale: &Stale) {
        if let Some((_, changes)) = self.building.get_mut(&dir) {
            *changes += 1;
        }
        self.shared.pop(&dir);
        if let Some(held) = &mut self.held
            && held.pop(&dir).is_some()
        {
            stale.push(&[dir]);
        }
    }

    /// Every listing `which` selects changed behind the kernel's back.
    pub(super) fn changed_where(&mut self, which: &dyn Fn(Ino) -> bool, stale: &Stale) {
        for (_, changes) in self
            .building
            .iter_mut()
            .filter_map(|(&i, b)| which(i).then_some(b))
        {
            *changes += 1;
        }
        pop_where(&mut self.shared, which);
        if let Some(held) = &mut self.held {
            stale.push(&pop_where(held, which));
        }
    }

    /// Every listing may have changed (a failed commit).
    pub(super) fn all_changed(&mut self, stale: &Stale) {
        self.changed_where(&|_| true, stale);
    }

    pub(super) fn shared(&mut self, dir: Ino) -> Option<Arc<Mutex<Listing>>> {
        self.shared.get(&dir).cloned()
    }

    pub(super) fn share(&mut self, dir: Ino, listing: Arc<Mutex<Listing>>) {
        self.shared.put(dir, listing);
    }

    /// A reader reached the end of `listing`: no continuation needs it any more (a reader
    /// still inside it keeps its own reference; a later continuation builds anew).
    pub(super) fn unshare(&mut self, dir: Ino, listing: &Arc<Mutex<Listing>>) {
        if self
            .shared
            .peek(&dir)
            .is_some_and(|l| Arc::ptr_eq(l, listing))
        {
            self.shared.pop(&dir);
        }
    }

    /// A build of `dir`'s listing begins: the changes of `dir` reported so far (compare with
    /// `built`'s).
    pub(super) fn building(&mut self, dir: Ino) -> u64 {
        let b = self.building.entry(dir).or_insert((0, 0));
        b.0 += 1;
        b.1
    }

    /// A build of `dir`'s listing ended: the changes of `dir` reported by now.
    pub(super) fn built(&mut self, dir: Ino) -> u64 {
        let Some(b) = self.building.get_mut(&dir) else {
            return 0;
        };
        let changes = b.1;
        b.0 -= 1;
        if b.0 == 0 {
            self.building.remove(&dir);
        }
        changes
    }
}

/// Removes the directories `which` selects from `lru`; returns them.
fn pop_where<V>(lru: &mut LruCache<Ino, V>, which: &dyn Fn(Ino) -> bool) -> Vec<Ino> {
    let gone: Vec<Ino> = lru.iter().map(|(&i, _)| i).filter(|&i| which(i)).collect();
    for i in &gone {
        lru.pop(i);
    }
    gone
}

/// Invalidations owed to the kernel, numbered so that a caller can wait for its own.
#[derive(Default)]
pub(super) struct Stale {
    q: Mutex<Queue>,
    cv: Condvar,
}

#[derive(Default)]
struct Queue {
    inos: Vec<Ino>,
    /// Invalidations queued so far, and sent so far (the drainer reports them).
    queued: u64,
    sent: u64,
    /// No more will be sent (the session ended).
    ended: bool,
}

impl Stale {
    fn push(&self, inos: &[Ino]) {
        if inos.is_empty() {
            return;
        }
        let mut q = self.q.lock();
        q.inos.extend_from_slice(inos);
        q.queued += inos.len() as u64;
        self.cv.notify_all();
    }

    /// Waits up to `timeout` for invalidations; returns them with the number to report as
    /// sent (`sent`) once the kernel has them. `None` once `end` was called.
    pub(super) fn take(&self, timeout: Duration) -> Option<(Vec<Ino>, u64)> {
        let mut q = self.q.lock();
        if q.inos.is_empty() && !q.ended {
            self.cv.wait_for(&mut q, timeout);
        }
        if q.ended {
            return None;
        }
        let inos = std::mem::take(&mut q.inos);
        Some((inos, q.queued))
    }

    /// The session ended: the drainer stops, and nobody waits for it any more.
    pub(super) fn end(&self) {
        let mut q = self.q.lock();
        q.ended = true;
        q.sent = q.queued;
        self.cv.notify_all();
    }

    /// Invalidations queued so far.
    pub(super) fn queued(&self) -> u64 {
        self.q.lock().queued
    }

    pub(super) fn sent(&self, upto: u64) {
        let mut q = self.q.lock();
        q.sent = q.sent.max(upto);
        self.cv.notify_all();
    }

    /// Waits (at most `limit`) until every invalidation queued so far was sent. Bounded:
    /// with no drainer, or one stuck in the kernel, the caller goes on after `limit`.
    pub(super) fn wait_sent(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut q = self.q.lock();
        let want = q.queued;
        while q.sent < want && !q.ended {
            if self.cv.wait_until(&mut q, deadline).timed_out() {
                return;
            }
        }
    }
}
