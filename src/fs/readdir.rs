//! Directory reads: with a handle (opendir, readdir, readdir_plus (READDIRPLUS), releasedir
//! over the listing each handle holds) or without one (`readdir_at`, `readdir_plus_at`, over
//! listings shared per directory, which the kernel keeps: `kernel_listings`). Listings are
//! built by `dir_listing`; docs/design.md, "Directory handles".

use super::{Fs, Handle, dir_listing, in_snapshot};
use crate::error::{FsError, Ino, Result};
use crate::meta::{Attr, DirEntry, Kind, MetaRead};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

impl Fs {
    /// Opens directory `ino` for a reader with a handle (`readdir`): a kernel that cannot open
    /// directories without one (older than Linux 5.1; see `hold_listings`), and tests. The
    /// kernel is not let keep such listings.
    pub fn opendir(&self, ino: Ino) -> Result<u64> {
        if self.getattr(ino)?.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let mut st = self.state.lock();
        let fh = st.next_fh;
        st.next_fh += 1;
        st.handles.insert(fh, Handle::Dir { ino, entries: None });
        Ok(fh)
    }

    /// From now on directories are opened without handles (`readdir_at`) and the kernel keeps
    /// every listing it reads: the daemon tracks which, and queues the invalidations it owes
    /// (`stale_listings`; module `kernel_listings`).
    pub fn hold_listings(&self) {
        self.state.lock().held.enable();
    }

    /// Directories whose listing the kernel must drop (an inode invalidation each), waiting
    /// up to `timeout` for one; report them with `listings_invalidated(n)` once sent. For the
    /// adapter's notifier thread: never called on a request thread. `None` once
    /// `end_listings` was called.
    pub fn stale_listings(&self, timeout: Duration) -> Option<(Vec<Ino>, u64)> {
        self.stale.take(timeout)
    }

    /// The FUSE session ended: no more invalidations are sent or waited for.
    pub fn end_listings(&self) {
        self.stale.end();
    }

    pub fn listings_invalidated(&self, upto: u64) {
        self.stale.sent(upto);
    }

    /// Waits (bounded) until the kernel was told of every listing invalidated so far: for
    /// an operation whose change the kernel must not serve from its cache once it returns.
    /// Not under the state lock.
    pub(super) fn listings_told(&self) {
        self.stale.wait_sent(LISTINGS_TOLD_WAIT);
    }

    /// A directory read from offset 0 updates the directory's access time (module `atime`;
    /// not in snapshots). Best effort: a listing is not refused for its access time.
    fn read_from_start(&self, dir: Ino, offset: u64) {
        if offset == 0
            && !in_snapshot(dir)
            && let Err(e) = self.dir_accessed(dir)
        {
            tracing::debug!("access time of directory {dir} not updated: {e}");
        }
    }

    /// The listing of directory handle `fh` for a readdir from `offset`: read at offset 0
    /// (opendir or rewinddir) or when not read yet.
    fn load_dir(&self, fh: u64, offset: u64) -> Result<(Ino, Arc<Mutex<dir_listing::Listing>>)> {
        let ino = {
            let st = self.state.lock();
            match st.handles.get(&fh) {
                Some(Handle::Dir {
                    ino,
                    entries: Some(l),
                }) if offset > 0 => return Ok((*ino, l.clone())),
                Some(Handle::Dir { ino, .. }) => *ino,
                _ => return Err(FsError::Invalid("not a directory handle")),
            }
        };
        let listed = Arc::new(Mutex::new(self.build_listing(ino)?));
        if let Some(Handle::Dir { entries, .. }) = self.state.lock().handles.get_mut(&fh) {
            *entries = Some(listed.clone());
        }
        Ok((ino, listed))
    }

    /// The listing of `ino` for a reader without a handle, reading from `offset`: a new one
    /// at offset 0, otherwise the last one built for the directory if still kept (a
    /// continuation; any listing serves it, its cookies being the same in all). Marks the
    /// directory as held by the kernel. Built again if a failed commit's reset ran, or a
    /// change behind the kernel's back was reported, while it was built: what the kernel
    /// keeps must never be older than an invalidation already sent.
    fn shared_listing(&self, ino: Ino, offset: u64) -> Result<Arc<Mutex<dir_listing::Listing>>> {
        loop {
            let seen = {
                let mut st = self.state.lock();
                self.catch_up(&mut st);
                if offset > 0
                    && let Some(l) = st.held.shared(ino)
                {
                    st.held.hold(ino, &self.stale);
                    return Ok(l);
                }
                (st.resets, st.held.building(ino))
            };
            let listed = if self.getattr(ino)?.kind != Kind::Dir {
                Err(FsError::NotDir)
            } else {
                self.build_listing(ino)
            };
            let mut st = self.state.lock();
            let now = (st.resets, st.held.built(ino));
            let listed = Arc::new(Mutex::new(listed?));
            if now != seen {
                continue;
            }
            st.held.hold(ino, &self.stale);
            // While a reset is owed the listing may show what it will drop: not shared (the
            // reset, when it runs, invalidates what the kernel holds).
            if st.meta_gen.is_some() {
                st.held.share(ino, listed.clone());
            }
            return Ok(listed);
        }
    }

    fn build_listing(&self, ino: Ino) -> Result<dir_listing::Listing> {
        let mut b = dir_listing::Builder::new(self.listings.clone());
        if in_snapshot(ino) {
            self.snap_entries(ino, &mut b)?;
        } else {
            self.with_view(|r| Self::dir_entries(r, ino, &mut b))?;
        }
        b.finish()
    }

    /// The entries of directory `ino`, with "." and "..", into `b`.
    fn dir_entries(r: &dyn MetaRead, ino: Ino, b: &mut dir_listing::Builder) -> Result<()> {
        let attr = r.inode(ino)?.ok_or(FsError::NotFound)?;
        if attr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        b.dots(ino, attr.parent)?;
        r.each_in_dir(ino, &mut |e| b.push(e))
    }

    /// Directory entries after offset `offset` (0: from the start) of the listing taken at
    /// opendir (or the last rewind). An entry's offset is its cookie, the same in every
    /// listing of the directory (`dir_listing`), so a reader resumes in a newer listing
    /// where it stopped in an older one.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        f: &mut dyn FnMut(u64, &DirEntry) -> bool,
    ) -> Result<()> {
        let (dir, listing) = self.load_dir(fh, offset)?;
        self.read_from_start(dir, offset);
        serve(&listing, offset, f).map(drop)
    }

    /// `readdir` for a reader without a handle (see `hold_listings`).
    pub fn readdir_at(
        &self,
        dir: Ino,
        offset: u64,
        f: &mut dyn FnMut(u64, &DirEntry) -> bool,
    ) -> Result<()> {
        let listing = self.shared_listing(dir, offset)?;
        self.read_from_start(dir, offset);
        let more = serve(&listing, offset, f)?;
        self.finished_with(dir, &listing, more);
        Ok(())
    }

    /// After a handle-less READDIR: a reply that reached the end of the listing (`more`
    /// false) lets it go.
    fn finished_with(&self, dir: Ino, listing: &Arc<Mutex<dir_listing::Listing>>, more: bool) {
        if !more {
            self.state.lock().held.unshare(dir, listing);
        }
    }

    /// `readdir` with each entry's attributes (READDIRPLUS: the kernel caches them and skips
    /// a lookup per name). An entry removed since the directory was opened is left out.
    pub fn readdir_plus(
        &self,
        fh: u64,
        offset: u64,
        f: &mut dyn FnMut(u64, &DirEntry, &Attr) -> bool,
    ) -> Result<()> {
        let (dir, listing) = self.load_dir(fh, offset)?;
        self.read_from_start(dir, offset);
        self.serve_plus(dir, &listing, offset, f).map(drop)
    }

    /// `readdir_plus` for a reader without a handle (see `hold_listings`).
    pub fn readdir_plus_at(
        &self,
        dir: Ino,
        offset: u64,
        f: &mut dyn FnMut(u64, &DirEntry, &Attr) -> bool,
    ) -> Result<()> {
        let listing = self.shared_listing(dir, offset)?;
        self.read_from_start(dir, offset);
        let more = self.serve_plus(dir, &listing, offset, f)?;
        self.finished_with(dir, &listing, more);
        Ok(())
    }

    /// Entries of `listing` after `offset` with their attributes, until `f` says the reply
    /// is full (returns true: more to come) or the listing ends (false).
    fn serve_plus(
        &self,
        dir: Ino,
        listing: &Mutex<dir_listing::Listing>,
        offset: u64,
        f: &mut dyn FnMut(u64, &DirEntry, &Attr) -> bool,
    ) -> Result<bool> {
        let mut at = offset;
        loop {
            let Some((cookie, e)) = listing.lock().after(at)? else {
                return Ok(false);
            };
            at = cookie;
            // The kernel turns each entry into a cached name: one the listing holds but that
            // was removed or now names another inode since must not come back that way.
            let now = if e.name == b"." || e.name == b".." {
                self.getattr(e.ino).map(|a| (e.ino, a))
            } else {
                self.lookup(dir, &e.name)
            };
            let attr = match now {
                Ok((ino, a)) if ino == e.ino => a,
                Ok(_) | Err(FsError::NotFound) => continue,
                Err(err) => return Err(err),
            };
            if f(cookie, &e, &attr) {
                return Ok(true);
            }
        }
    }

    pub fn releasedir(&self, fh: u64) {
        self.state.lock().handles.remove(&fh);
    }
}

/// How long an operation waits for the kernel to be told of the listings it made stale
/// (`Fs::listings_told`) before it returns anyway.
const LISTINGS_TOLD_WAIT: Duration = Duration::from_secs(1);

/// Entries of `listing` after `offset`, until `f` says the reply is full (returns true:
/// more to come) or the listing ends (false).
fn serve(
    listing: &Mutex<dir_listing::Listing>,
    offset: u64,
    f: &mut dyn FnMut(u64, &DirEntry) -> bool,
) -> Result<bool> {
    let mut listing = listing.lock();
    let mut at = offset;
    while let Some((cookie, e)) = listing.after(at)? {
        at = cookie;
        if f(cookie, &e) {
            return Ok(true);
        }
    }
    Ok(false)
}
