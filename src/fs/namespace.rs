//! Namespace operations: creating, linking, removing and renaming names (mknod, mkdir,
//! symlink, create, link, unlink, rmdir, rename), each one operation in the open metadata
//! group.

use super::{Caller, Fs, NAME_MAX, RenameFlags, State, check_name};
use crate::chunker::{POLICY_XATTR, glob_match};
use crate::error::{FsError, Ino, Result};
use crate::meta::{Attr, Kind, ROOT_INO, Ts, WTx};

impl Fs {
    /// Creates a new inode named `name` in `parent`.
    fn make_node(
        &self,
        parent: Ino,
        name: &[u8],
        attr: Attr,
        symlink: Option<&[u8]>,
    ) -> Result<(Ino, Attr)> {
        self.writable_ino(parent)?;
        check_name(name)?;
        let mut st = self.state.lock();
        self.group(&mut st, |st, tx| {
            self.make_node_in(st, tx, parent, name, attr, symlink)
        })
    }

    fn make_node_in(
        &self,
        st: &mut State,
        tx: &mut WTx,
        parent: Ino,
        name: &[u8],
        mut attr: Attr,
        symlink: Option<&[u8]>,
    ) -> Result<(Ino, Attr)> {
        let mut pattr = self.attr_in(st, tx, parent)?;
        if pattr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if pattr.nlink == 0 {
            return Err(FsError::NotFound);
        }
        if tx.lookup(parent, name)?.is_some() || self.shows_snapdir(parent, name) {
            return Err(FsError::Exists);
        }
        let ino = tx.alloc_ino_from(st.ino_floor)?;
        st.ino_floor = ino + 1;
        if attr.kind == Kind::Dir {
            attr.nlink = 2;
            attr.parent = parent;
            pattr.nlink += 1;
        }
        if pattr.perm & libc::S_ISGID as u16 != 0 {
            // BSD group semantics of a setgid directory.
            attr.gid = pattr.gid;
            if attr.kind == Kind::Dir {
                attr.perm |= libc::S_ISGID as u16;
            }
        }
        if let Some(target) = symlink {
            attr.size = target.len() as u64;
            tx.set_symlink(ino, target)?;
        }
        tx.create_inode(ino, &attr)?;
        tx.put_dirent(parent, name, ino, attr.kind)?;
        let now = Ts::now();
        pattr.mtime = now;
        pattr.ctime = now;
        self.set_attr_in(st, tx, parent, pattr)?;
        Ok((ino, attr))
    }

    pub fn mknod(
        &self,
        who: Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> Result<(Ino, Attr)> {
        let kind = Kind::from_mode(mode).ok_or(FsError::Invalid("bad file type"))?;
        if kind == Kind::Dir || kind == Kind::Symlink {
            return Err(FsError::Invalid("mknod of a directory or symlink"));
        }
        let mut attr = Attr::new(kind, mode as u16, who.uid, who.gid);
        if matches!(kind, Kind::CharDev | Kind::BlockDev) {
            attr.rdev = rdev;
        }
        self.make_node(parent, name, attr, None)
    }

    pub fn mkdir(&self, who: Caller, parent: Ino, name: &[u8], mode: u32) -> Result<(Ino, Attr)> {
        let attr = Attr::new(Kind::Dir, mode as u16, who.uid, who.gid);
        self.make_node(parent, name, attr, None)
    }

    pub fn symlink(
        &self,
        who: Caller,
        parent: Ino,
        name: &[u8],
        target: &[u8],
    ) -> Result<(Ino, Attr)> {
        if target.is_empty() || target.len() > 4096 {
            return Err(FsError::Invalid("symlink target length"));
        }
        let attr = Attr::new(Kind::Symlink, 0o777, who.uid, who.gid);
        self.make_node(parent, name, attr, Some(target))
    }

    /// Creates and opens a regular file. Returns the new inode, its attributes and a handle.
    pub fn create(
        &self,
        who: Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
    ) -> Result<(Ino, Attr, u64)> {
        let attr = Attr::new(Kind::File, mode as u16, who.uid, who.gid);
        let (ino, attr) = self.make_node(parent, name, attr, None)?;
        let opened = (|| {
            if self
                .fixed_patterns
                .iter()
                .any(|p| glob_match(p.as_bytes(), name))
            {
                // Recorded on the inode, so the choice survives renames and is visible.
                let mut st = self.state.lock();
                self.group(&mut st, |st, tx| {
                    // (Gone if a failed commit dropped the create in between.)
                    self.attr_in(st, tx, ino)?;
                    tx.set_xattr(ino, POLICY_XATTR, b"fixed")
                })?;
            }
            self.open(ino, true)
        })();
        match opened {
            Ok(fh) => Ok((ino, attr, fh)),
            Err(e) => {
                // The name exists, but the kernel hears of a failed create and does not drop
                // the parent's cached listing itself.
                self.state.lock().held.changed(parent, &self.stale);
                self.listings_told();
                Err(e)
            }
        }
    }

    pub fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> Result<Attr> {
        self.writable_ino(ino)?;
        self.writable_ino(parent)?;
        check_name(name)?;
        let mut st = self.state.lock();
        self.group(&mut st, |st, tx| self.link_in(st, tx, ino, parent, name))
    }

    fn link_in(
        &self,
        st: &mut State,
        tx: &mut WTx,
        ino: Ino,
        parent: Ino,
        name: &[u8],
    ) -> Result<Attr> {
        let mut attr = self.attr_in(st, tx, ino)?;
        if attr.kind == Kind::Dir {
            return Err(FsError::NotPermitted);
        }
        let mut pattr = self.attr_in(st, tx, parent)?;
        if pattr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if tx.lookup(parent, name)?.is_some() || self.shows_snapdir(parent, name) {
            return Err(FsError::Exists);
        }
        if attr.nlink == 0 {
            return Err(FsError::NotFound);
        }
        let now = Ts::now();
        attr.nlink += 1;
        attr.ctime = now;
        tx.remove_orphan(ino)?;
        tx.put_dirent(parent, name, ino, attr.kind)?;
        self.set_attr_in(st, tx, ino, attr)?;
        pattr.mtime = now;
        pattr.ctime = now;
        self.set_attr_in(st, tx, parent, pattr)?;
        Ok(attr)
    }

    /// Drops one link of `ino`: deletes it when no name and no open handle remain.
    fn drop_link(&self, st: &mut State, tx: &mut WTx, ino: Ino, now: Ts) -> Result<()> {
        let mut attr = self.attr_in(st, tx, ino)?;
        attr.nlink = if attr.kind == Kind::Dir {
            0
        } else {
            attr.nlink.saturating_sub(1)
        };
        attr.ctime = now;
        if attr.nlink > 0 {
            return self.set_attr_in(st, tx, ino, attr);
        }
        self.ghosts.add(ino, attr);
        match st.open.get(&ino) {
            Some(o) if o.opens > 0 || o.flushing.is_some() => {
                // Deferred delete: an open handle keeps the data readable until release.
                self.set_attr_in(st, tx, ino, attr)?;
                tx.add_orphan(ino)
            }
            _ => {
                if let Some(o) = st.open.remove(&ino) {
                    st.dirty_total -= o.dirty.bytes();
                }
                self.set_attr_in(st, tx, ino, attr)?;
                self.orphan_closed(st, tx, ino)
            }
        }
    }

    fn remove_entry(&self, parent: Ino, name: &[u8], dir: bool) -> Result<()> {
        self.writable_ino(parent)?;
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        let mut st = self.state.lock();
        self.group(&mut st, |st, tx| {
            self.remove_entry_in(st, tx, parent, name, dir)
        })
    }

    /// The entry a remove or rename acts on: ENOENT if there is none, EROFS for the
    /// `.snapshots` directory where it shows (it is not an entry of the root).
    fn existing_entry(&self, tx: &WTx, parent: Ino, name: &[u8]) -> Result<(Ino, Kind)> {
        match tx.lookup(parent, name)? {
            Some(found) => Ok(found),
            None if self.shows_snapdir(parent, name) => Err(FsError::ReadOnly),
            None => Err(FsError::NotFound),
        }
    }

    fn remove_entry_in(
        &self,
        st: &mut State,
        tx: &mut WTx,
        parent: Ino,
        name: &[u8],
        dir: bool,
    ) -> Result<()> {
        let (ino, kind) = self.existing_entry(tx, parent, name)?;
        if dir {
            if kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            if !tx.dir_is_empty(ino)? {
                return Err(FsError::NotEmpty);
            }
        } else if kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let now = Ts::now();
        tx.del_dirent(parent, name)?;
        self.drop_link(st, tx, ino, now)?;
        let mut pattr = self.attr_in(st, tx, parent)?;
        if dir {
            pattr.nlink = pattr.nlink.saturating_sub(1);
        }
        pattr.mtime = now;
        pattr.ctime = now;
        self.set_attr_in(st, tx, parent, pattr)
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.remove_entry(parent, name, false)
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        if name == b"." {
            return Err(FsError::Invalid("rmdir ."));
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        self.remove_entry(parent, name, true)
    }

    /// Is `dir` equal to `ancestor` or below it?
    fn is_within(&self, tx: &WTx, mut dir: Ino, ancestor: Ino) -> Result<bool> {
        for _ in 0..100_000 {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == ROOT_INO {
                return Ok(false);
            }
            dir = tx.inode(dir)?.ok_or(FsError::NotFound)?.parent;
        }
        Err(FsError::Corrupt("directory parent chain loops".into()))
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        self.writable_ino(parent)?;
        self.writable_ino(newparent)?;
        check_name(name)?;
        check_name(newname)?;
        if flags.exchange && (flags.noreplace || flags.whiteout.is_some()) {
            return Err(FsError::Invalid(
                "RENAME_EXCHANGE with RENAME_NOREPLACE or RENAME_WHITEOUT",
            ));
        }
        let mut st = self.state.lock();
        let queued = self.stale.queued();
        let r = self.group(&mut st, |st, tx| {
            self.rename_in(st, tx, parent, name, newparent, newname, flags)
        });
        drop(st);
        // A directory the kernel may hold moved: its `..` changed, and the kernel must have
        // dropped its listing before this returns. (Or another thread queued an invalidation
        // meanwhile: then this waits needlessly, 1 s at most.)
        if self.stale.queued() != queued {
            self.listings_told();
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn rename_in(
        &self,
        st: &mut State,
        tx: &mut WTx,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        let (src, skind) = self.existing_entry(tx, parent, name)?;
        if self.attr_in(st, tx, newparent)?.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let dst = tx.lookup(newparent, newname)?;
        if dst.is_none() && self.shows_snapdir(newparent, newname) {
            return Err(FsError::ReadOnly);
        }
        let now = Ts::now();
        if skind == Kind::Dir && newparent != parent && self.is_within(tx, newparent, src)? {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        if flags.exchange {
            let (dino, dkind) = dst.ok_or(FsError::NotFound)?;
            if dkind == Kind::Dir && newparent != parent && self.is_within(tx, parent, dino)? {
                return Err(FsError::Invalid("cannot move a directory into itself"));
            }
            tx.put_dirent(parent, name, dino, dkind)?;
            tx.put_dirent(newparent, newname, src, skind)?;
            for (ino, kind, to) in [(src, skind, newparent), (dino, dkind, parent)] {
                let mut a = self.attr_in(st, tx, ino)?;
                if kind == Kind::Dir && a.parent != to {
                    a.parent = to;
                    // Its `..` changed: a listing the kernel cached is stale.
                    st.held.changed(ino, &self.stale);
                }
                a.ctime = now;
                self.set_attr_in(st, tx, ino, a)?;
            }
            if parent != newparent && (skind == Kind::Dir) != (dkind == Kind::Dir) {
                let (gain, lose) = if skind == Kind::Dir {
                    (newparent, parent)
                } else {
                    (parent, newparent)
                };
                let mut g = self.attr_in(st, tx, gain)?;
                g.nlink += 1;
                self.set_attr_in(st, tx, gain, g)?;
                let mut l = self.attr_in(st, tx, lose)?;
                l.nlink = l.nlink.saturating_sub(1);
                self.set_attr_in(st, tx, lose, l)?;
            }
        } else {
            if let Some((dino, dkind)) = dst {
                if flags.noreplace {
                    return Err(FsError::Exists);
                }
                if dino == src {
                    // Two names of one inode: POSIX says do nothing.
                    return Ok(());
                }
                match (skind == Kind::Dir, dkind == Kind::Dir) {
                    (true, false) => return Err(FsError::NotDir),
                    (false, true) => return Err(FsError::IsDir),
                    (true, true) if !tx.dir_is_empty(dino)? => return Err(FsError::NotEmpty),
                    _ => {}
                }
                tx.del_dirent(newparent, newname)?;
                self.drop_link(st, tx, dino, now)?;
                if dkind == Kind::Dir {
                    let mut np = self.attr_in(st, tx, newparent)?;
                    np.nlink = np.nlink.saturating_sub(1);
                    self.set_attr_in(st, tx, newparent, np)?;
                }
            }
            tx.del_dirent(parent, name)?;
            tx.put_dirent(newparent, newname, src, skind)?;
            let mut a = self.attr_in(st, tx, src)?;
            a.ctime = now;
            if skind == Kind::Dir {
                a.parent = newparent;
                if parent != newparent {
                    // Its `..` changed: a listing the kernel cached is stale.
                    st.held.changed(src, &self.stale);
                    let mut op = self.attr_in(st, tx, parent)?;
                    op.nlink = op.nlink.saturating_sub(1);
                    self.set_attr_in(st, tx, parent, op)?;
                    let mut np = self.attr_in(st, tx, newparent)?;
                    np.nlink += 1;
                    self.set_attr_in(st, tx, newparent, np)?;
                }
            }
            self.set_attr_in(st, tx, src, a)?;
            if let Some(who) = flags.whiteout {
                let w = Attr::new(Kind::CharDev, 0, who.uid, who.gid);
                self.make_node_in(st, tx, parent, name, w, None)?;
            }
        }
        for p in [parent, newparent] {
            let mut pa = self.attr_in(st, tx, p)?;
            pa.mtime = now;
            pa.ctime = now;
            self.set_attr_in(st, tx, p, pa)?;
        }
        Ok(())
    }
}
