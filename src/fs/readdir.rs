//! Directory handles: opendir, readdir, readdir_plus (READDIRPLUS) and releasedir over the
//! listing each handle holds (`dir_listing`; docs/design.md, "Directory handles").

use super::{CacheMode, Fs, Handle, dir_listing, in_snapshot};
use crate::error::{FsError, Ino, Result};
use crate::meta::{Attr, DirEntry, Kind, MetaRead};
use parking_lot::Mutex;
use std::sync::Arc;

impl Fs {
    /// Opens directory `ino`: its handle, and whether the kernel may cache its listing
    /// (`Cached`, with `keep` if what it cached before is still current). Not inside
    /// snapshots: they appear and go through the control socket, not through a request.
    pub fn opendir_with_mode(&self, ino: Ino) -> Result<(u64, CacheMode)> {
        if self.getattr(ino)?.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let mut st = self.state.lock();
        // A failed commit not yet caught up with (one outside the group, such as gc's) clears
        // the marks before one of them is trusted.
        self.catch_up(&mut st);
        let fh = st.next_fh;
        st.next_fh += 1;
        st.handles.insert(fh, Handle::Dir { ino, entries: None });
        let mode = if in_snapshot(ino) || st.meta_gen.is_none() {
            CacheMode::Direct
        } else {
            CacheMode::Cached {
                keep: st.listings.open(ino),
            }
        };
        Ok((fh, mode))
    }

    pub fn opendir(&self, ino: Ino) -> Result<u64> {
        self.opendir_with_mode(ino).map(|(fh, _)| fh)
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
        let mut b = dir_listing::Builder::new(self.listings.clone());
        if in_snapshot(ino) {
            self.snap_entries(ino, &mut b)?;
        } else {
            self.with_view(|r| Self::dir_entries(r, ino, &mut b))?;
        }
        let listed = Arc::new(Mutex::new(b.finish()?));
        if let Some(Handle::Dir { entries, .. }) = self.state.lock().handles.get_mut(&fh) {
            *entries = Some(listed.clone());
        }
        Ok((ino, listed))
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
    /// listing of the directory (`dir_listing`), so a handle that never read (the kernel's
    /// listing cache went stale after serving the start) resumes where that cache stopped.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        f: &mut dyn FnMut(u64, &DirEntry) -> bool,
    ) -> Result<()> {
        let (_, listing) = self.load_dir(fh, offset)?;
        let mut listing = listing.lock();
        let mut at = offset;
        while let Some((cookie, e)) = listing.after(at)? {
            at = cookie;
            if f(cookie, &e) {
                break;
            }
        }
        Ok(())
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
        let mut at = offset;
        loop {
            let Some((cookie, e)) = listing.lock().after(at)? else {
                return Ok(());
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
                return Ok(());
            }
        }
    }

    pub fn releasedir(&self, fh: u64) {
        self.state.lock().handles.remove(&fh);
    }
}
