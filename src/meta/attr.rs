//! Inode attributes and their fixed binary encoding in the `inodes` table.
//!
//! Encoding (little-endian, version byte first) is part of the on-disk format; see
//! docs/design.md. Decoding rejects unknown versions rather than guessing.

use crate::error::{FsError, Result};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    pub fn code(self) -> u8 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::Symlink => 3,
            Kind::Fifo => 4,
            Kind::Socket => 5,
            Kind::CharDev => 6,
            Kind::BlockDev => 7,
        }
    }

    pub fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::Socket,
            6 => Kind::CharDev,
            7 => Kind::BlockDev,
            _ => return None,
        })
    }

    /// Kind from the S_IFMT bits of a mode.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => return None,
        })
    }
}

/// A timestamp: seconds and nanoseconds since the epoch (seconds may be negative).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Ts {
    pub secs: i64,
    pub nsecs: u32,
}

impl Ts {
    pub fn now() -> Ts {
        Ts::from_system(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Ts {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Ts {
                secs: d.as_secs() as i64,
                nsecs: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let (mut secs, mut nsecs) = (-(d.as_secs() as i64), d.subsec_nanos());
                if nsecs > 0 {
                    secs -= 1;
                    nsecs = 1_000_000_000 - nsecs;
                }
                Ts { secs, nsecs }
            }
        }
    }

    pub fn to_system(self) -> SystemTime {
        if self.secs >= 0 {
            UNIX_EPOCH + Duration::new(self.secs as u64, self.nsecs)
        } else {
            UNIX_EPOCH - Duration::from_secs(self.secs.unsigned_abs())
                + Duration::from_nanos(self.nsecs as u64)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub kind: Kind,
    /// Permission bits (mode & 0o7777).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub size: u64,
    pub atime: Ts,
    pub mtime: Ts,
    pub ctime: Ts,
    pub crtime: Ts,
    /// For directories, the parent directory (root: itself); 0 for other kinds.
    pub parent: u64,
}

const ATTR_VERSION: u8 = 1;
pub const ATTR_LEN: usize = 1 + 1 + 2 + 4 * 4 + 8 + 4 * 12 + 8;

impl Attr {
    pub fn new(kind: Kind, perm: u16, uid: u32, gid: u32) -> Attr {
        let now = Ts::now();
        Attr {
            kind,
            perm: perm & 0o7777,
            nlink: 1,
            uid,
            gid,
            rdev: 0,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            parent: 0,
        }
    }

    pub fn encode(&self) -> [u8; ATTR_LEN] {
        let mut b = [0u8; ATTR_LEN];
        let mut w = Writer {
            buf: &mut b,
            pos: 0,
        };
        w.put(&[ATTR_VERSION, self.kind.code()]);
        w.put(&self.perm.to_le_bytes());
        for v in [self.nlink, self.uid, self.gid, self.rdev] {
            w.put(&v.to_le_bytes());
        }
        w.put(&self.size.to_le_bytes());
        for t in [self.atime, self.mtime, self.ctime, self.crtime] {
            w.put(&t.secs.to_le_bytes());
            w.put(&t.nsecs.to_le_bytes());
        }
        w.put(&self.parent.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Attr> {
        if b.len() != ATTR_LEN || b[0] != ATTR_VERSION {
            return Err(FsError::Corrupt(format!(
                "inode record of {} bytes, version {:?}",
                b.len(),
                b.first()
            )));
        }
        let kind = Kind::from_code(b[1])
            .ok_or_else(|| FsError::Corrupt(format!("unknown inode kind {}", b[1])))?;
        let mut r = Reader { buf: b, pos: 2 };
        let perm = u16::from_le_bytes(r.take());
        let nlink = u32::from_le_bytes(r.take());
        let uid = u32::from_le_bytes(r.take());
        let gid = u32::from_le_bytes(r.take());
        let rdev = u32::from_le_bytes(r.take());
        let size = u64::from_le_bytes(r.take());
        let mut ts = [Ts::default(); 4];
        for t in &mut ts {
            t.secs = i64::from_le_bytes(r.take());
            t.nsecs = u32::from_le_bytes(r.take());
        }
        let parent = u64::from_le_bytes(r.take());
        Ok(Attr {
            kind,
            perm,
            nlink,
            uid,
            gid,
            rdev,
            size,
            atime: ts[0],
            mtime: ts[1],
            ctime: ts[2],
            crtime: ts[3],
            parent,
        })
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_round_trips() {
        let mut a = Attr::new(Kind::Dir, 0o755, 1000, 100);
        a.size = 1 << 50;
        a.parent = 42;
        a.mtime = Ts { secs: -5, nsecs: 7 };
        assert_eq!(Attr::decode(&a.encode()).unwrap(), a);
    }

    #[test]
    fn unknown_version_is_rejected() {
        let mut b = Attr::new(Kind::File, 0o644, 0, 0).encode();
        b[0] = 99;
        assert!(Attr::decode(&b).is_err());
    }

    #[test]
    fn negative_times_round_trip_through_system_time() {
        let t = Ts {
            secs: -10,
            nsecs: 250,
        };
        assert_eq!(Ts::from_system(t.to_system()), t);
    }
}
