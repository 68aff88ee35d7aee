//! Extended attributes: set, get, list and remove, with the virtual digest attribute
//! (`user.dedupfs.blake3`, see `digest.rs`) and the chunking policy attribute.

use super::{DIGEST_XATTR, Fs, SNAPDIR_INO, State, in_snapshot};
use crate::chunker::{POLICY_XATTR, Policy};
use crate::error::{FsError, Ino, Result};
use crate::meta::{Ts, WTx};

/// File capabilities (setcap): dropped by every write (`Fs::kill_priv`).
const CAPABILITY_XATTR: &[u8] = b"security.capability";

impl Fs {
    fn check_xattr_name(name: &[u8]) -> Result<()> {
        if name.is_empty() || name.len() > 255 {
            return Err(FsError::Range);
        }
        if name.starts_with(b"system.posix_acl") {
            // ACLs would need enforcement we do not do; refusing beats storing a lie.
            return Err(FsError::NotSupported("POSIX ACLs"));
        }
        Ok(())
    }

    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        self.writable_ino(ino)?;
        Self::check_xattr_name(name)?;
        if name == DIGEST_XATTR {
            return Err(FsError::NotPermitted);
        }
        if value.len() > 65536 {
            return Err(FsError::Range);
        }
        let mut st = self.state.lock();
        self.group(&mut st, |st, tx| {
            self.setxattr_in(st, tx, ino, name, value, flags)
        })
    }

    fn setxattr_in(
        &self,
        st: &mut State,
        tx: &mut WTx,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        let mut a = self.attr_in(st, tx, ino)?;
        if name == POLICY_XATTR && Policy::from_xattr(value, 0).is_none() {
            return Err(FsError::Invalid(
                "chunking policy must be \"fixed\" or \"cdc\"",
            ));
        }
        let exists = tx.xattr(ino, name)?.is_some();
        if flags & libc::XATTR_CREATE != 0 && exists {
            return Err(FsError::Exists);
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return Err(FsError::NoXattr);
        }
        tx.set_xattr(ino, name, value)?;
        if name == CAPABILITY_XATTR
            && let Some(o) = st.open.get_mut(&ino)
        {
            o.no_caps = false;
        }
        a.ctime = Ts::now();
        self.set_attr_in(st, tx, ino, a)
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        if name == DIGEST_XATTR {
            return Ok(self.blake3_digest(ino)?.to_vec());
        }
        if ino == SNAPDIR_INO {
            self.snap_getattr(ino)?;
            return Err(FsError::NoXattr);
        }
        if in_snapshot(ino) {
            return self.with_snap(ino, |r, i| r.xattr(i, name)?.ok_or(FsError::NoXattr));
        }
        self.with_view(|r| {
            r.inode(ino)?.ok_or(FsError::NotFound)?;
            r.xattr(ino, name)?.ok_or(FsError::NoXattr)
        })
    }

    /// Attribute names, each followed by a NUL, as listxattr(2) returns them.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        if ino == SNAPDIR_INO {
            return Ok(Vec::new());
        }
        let names = self.with_view_of(ino, |r, ino| {
            r.inode(ino)?.ok_or(FsError::NotFound)?;
            r.xattr_names(ino)
        })?;
        let mut out = Vec::new();
        for n in names {
            out.extend_from_slice(&n);
            out.push(0);
        }
        Ok(out)
    }

    /// Drops the file's capabilities (`security.capability`) before a write, as Linux's
    /// file_remove_privs does for every write, whoever writes (root too): the kernel does it
    /// itself only for writes through the page cache, and dedupfs writes with direct I/O.
    pub fn kill_priv(&self, ino: Ino) -> Result<()> {
        if in_snapshot(ino) {
            return Ok(()); // the write itself is refused (EROFS)
        }
        {
            // Looked up and noted under one hold of the state lock, which a setxattr (that
            // clears the note) also takes.
            let mut st = self.state.lock();
            if st.open.get(&ino).is_some_and(|o| o.no_caps) {
                return Ok(());
            }
            let caps = match &st.pending {
                Some(p) => p.tx.xattr(ino, CAPABILITY_XATTR)?,
                None => self.meta.begin_read()?.xattr(ino, CAPABILITY_XATTR)?,
            };
            if caps.is_none() {
                if let Some(o) = st.open.get_mut(&ino) {
                    o.no_caps = true;
                }
                return Ok(());
            }
        }
        match self.removexattr(ino, CAPABILITY_XATTR) {
            Ok(()) | Err(FsError::NoXattr) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.writable_ino(ino)?;
        if name == DIGEST_XATTR {
            return Err(FsError::NotPermitted);
        }
        let mut st = self.state.lock();
        self.group(&mut st, |st, tx| {
            let mut a = self.attr_in(st, tx, ino)?;
            if !tx.remove_xattr(ino, name)? {
                return Err(FsError::NoXattr);
            }
            a.ctime = Ts::now();
            self.set_attr_in(st, tx, ino, a)
        })
    }
}
