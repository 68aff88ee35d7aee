//! Attributes and names of live inodes: getattr, lookup, readlink, setattr.

use super::{Fs, NAME_MAX, SNAPDIR_NAME, SetAttr, in_snapshot, missing};
use crate::error::{FsError, Ino, Result};
use crate::meta::{Attr, Kind, ROOT_INO, Ts};

impl Fs {
    /// The attributes of `ino`; of an inode whose last name went, those it had then (link
    /// count 0) until [`Fs::forget`] (module `ghosts`).
    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        match self.getattr_linked(ino) {
            Err(FsError::NotFound) => self.ghosts.get(ino).ok_or(FsError::NotFound),
            r => r,
        }
    }

    /// The kernel forgot `ino` (FUSE FORGET): an unlinked inode need not be shown any more.
    pub fn forget(&self, ino: Ino) {
        self.ghosts.forget(ino);
    }

    pub(super) fn getattr_linked(&self, ino: Ino) -> Result<Attr> {
        if in_snapshot(ino) {
            return self.snap_getattr(ino);
        }
        let mut st = self.state.lock();
        self.catch_up(&mut st);
        if let Some(o) = st.open.get(&ino) {
            return Ok(o.attr);
        }
        if let Some(p) = &st.pending {
            let a = p.tx.inode(ino)?.ok_or_else(|| missing(&st, ino))?;
            // Deleted, only not yet removed (see `reap`).
            if a.nlink == 0 && st.reap.contains(&ino) {
                return Err(FsError::NotFound);
            }
            return Ok(a);
        }
        let queued = !st.reap.is_empty();
        let stale = st.stale.contains_key(&ino);
        drop(st);
        let a = self.meta.begin_read()?.inode(ino)?.ok_or(if stale {
            FsError::Stale
        } else {
            FsError::NotFound
        })?;
        if queued && a.nlink == 0 && self.state.lock().reap.contains(&ino) {
            return Err(FsError::NotFound);
        }
        Ok(a)
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<(Ino, Attr)> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if name == b"." {
            // Path walks never ask for "."; the kernel does when it decodes a file handle
            // (open_by_handle_at, an NFS export: FUSE_EXPORT_SUPPORT) of an inode it no
            // longer holds, of any kind. An inode whose last name and handle went is stale
            // (ENOENT here, ESTALE to the caller), and so is any in a snapshot: a deleted
            // snapshot's slot and inode numbers are used again by a later one.
            if in_snapshot(parent) {
                return Err(FsError::NotFound);
            }
            return Ok((parent, self.getattr_linked(parent)?));
        }
        if in_snapshot(parent) {
            return self.snap_lookup(parent, name);
        }
        let found = self.with_view(|r| {
            let pattr = r.inode(parent)?.ok_or(FsError::NotFound)?;
            if pattr.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            Ok(match name {
                b".." => pattr.parent,
                _ => r.lookup(parent, name)?.ok_or(FsError::NotFound)?.0,
            })
        });
        let ino = match found {
            // The snapshots directory, unless the root has an entry of that name.
            Err(FsError::NotFound)
                if parent == ROOT_INO && name == SNAPDIR_NAME && self.snaps.any() =>
            {
                return self.snapdir_lookup();
            }
            r => r?,
        };
        Ok((ino, self.getattr_linked(ino)?))
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        if in_snapshot(ino) {
            return self.with_snap(ino, |r, i| {
                r.symlink(i)?.ok_or(FsError::Invalid("not a symlink"))
            });
        }
        self.with_view(|r| r.symlink(ino)?.ok_or(FsError::Invalid("not a symlink")))
    }

    pub fn setattr(&self, ino: Ino, set: SetAttr) -> Result<Attr> {
        self.writable_ino(ino)?;
        if let Some(size) = set.size {
            self.content_changed(ino);
            self.truncate(ino, size)?;
        }
        let mut st = self.state.lock();
        let now = Ts::now();
        if st.open.contains_key(&ino) && self.view(&st)?.inode(ino)?.is_none() {
            // Its creation was dropped by a failed commit (see `discard_gone`).
            return Err(FsError::Stale);
        }
        if let Some(o) = st.open.get_mut(&ino) {
            // An open (or just closed, write-back pending) file: change the authoritative
            // in-memory copy; its write-back commits it with the data. `tar x` sets times,
            // owner and mode right after close: this saves three commits per file.
            apply_set(&mut o.attr, &set, now);
            o.attr_dirty = true;
            let (a, closed) = (o.attr, o.opens == 0);
            // A write-back queued or in flight commits the attributes as they are when it
            // ends (under the state lock): nothing more to do for it.
            let in_hand = o.flushing.is_some() || o.queued;
            if closed && !in_hand {
                if o.dirty.is_empty() {
                    // Closed and written back: only the attributes changed. Commit them
                    // with the open group instead of waking a writer for them.
                    self.group(&mut st, |st, tx| self.set_attr_in(st, tx, ino, a))?;
                    self.forget_if_idle(&mut st, ino);
                } else if !self.queue_writeback(&mut st, ino) {
                    self.writeback(&mut st, ino, true)?;
                }
            }
            return Ok(a);
        }
        self.group(&mut st, |st, tx| {
            let mut a = self.attr_in(st, tx, ino)?;
            apply_set(&mut a, &set, now);
            self.set_attr_in(st, tx, ino, a)?;
            Ok(a)
        })
    }
}

/// Applies the non-size changes of a setattr to `a`.
fn apply_set(a: &mut Attr, set: &SetAttr, now: Ts) {
    if let Some(mode) = set.mode {
        a.perm = (mode & 0o7777) as u16;
    }
    if let Some(uid) = set.uid {
        a.uid = uid;
    }
    if let Some(gid) = set.gid {
        a.gid = gid;
    }
    if (set.uid.is_some() || set.gid.is_some()) && a.kind != Kind::Dir && set.mode.is_none() {
        // chown clears set-user-ID, and set-group-ID when group-executable (Linux does so
        // for root too since 2.2.13).
        a.perm &= !(libc::S_ISUID as u16);
        if a.perm & libc::S_IXGRP as u16 != 0 {
            a.perm &= !(libc::S_ISGID as u16);
        }
    }
    if let Some(t) = set.atime {
        a.atime = t.resolve();
    }
    if let Some(t) = set.mtime {
        a.mtime = t.resolve();
    }
    a.ctime = set.ctime.unwrap_or(now);
}
