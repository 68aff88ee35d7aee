//! Access times: reads update them as the mount options say (`relatime`, the default;
//! `strictatime`; `noatime`; `nodiratime` for directories), never on a read-only mount, a
//! fenced one or in a snapshot.
//!
//! The kernel leaves a FUSE inode's access time to the daemon (it marks such inodes
//! S_NOATIME) and drops its cached atime after every read and every directory read that
//! reached the daemon. So the daemon updates it where reads reach it:
//! - a READ of a file: in memory, on the open inode, committed with its other attributes at
//!   its write-back or last release (as `setattr` of an open file). Reads served from the
//!   kernel's page cache never reach the daemon, so an open for reading whose atime is due
//!   does not keep the kernel's cached pages (no KEEP_CACHE, `Fs::open_with_mode`): its first
//!   read comes here.
//! - a directory read from offset 0 (`opendir` + `readdir`, or a rewind): committed with the
//!   open group. A listing the kernel keeps is read again after a change to the directory,
//!   which is when relatime wants the next update; a kept listing is not read again for
//!   `strictatime` or after 24 hours.
//!
//! `relatime` is Linux's rule (`relatime_need_update`): update when the access time is not
//! after the modification or change time, or is a day old.

use super::{Fs, OpenInode};
use crate::error::{Ino, Result};
use crate::meta::{Attr, Kind, Ts};

/// When reads update access times (mount options).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Atime {
    /// `noatime`: never.
    Never,
    /// `relatime` (the default, also `atime`): when the access time is not after the
    /// modification or change time, or is 24 hours old.
    #[default]
    Relative,
    /// `strictatime`: every read.
    Strict,
}

const DAY_SECS: i64 = 24 * 60 * 60;

impl Atime {
    /// Whether a read at `now` sets the access time of `a`.
    pub fn due(self, a: &Attr, now: Ts) -> bool {
        match self {
            Atime::Never => false,
            Atime::Strict => a.atime != now,
            Atime::Relative => {
                a.atime <= a.mtime || a.atime <= a.ctime || now.secs - a.atime.secs >= DAY_SECS
            }
        }
    }
}

impl Fs {
    /// The rule for reads of an inode of kind `kind` on this mount.
    pub(super) fn atime_rule(&self, kind: Kind) -> Atime {
        if self.cfg.read_only || self.is_fenced() || (kind == Kind::Dir && !self.cfg.dir_atime) {
            Atime::Never
        } else {
            self.cfg.atime
        }
    }

    /// A read of open file `o` reached the daemon (state lock held): committed with the
    /// file's other attributes at its write-back or last release.
    pub(super) fn file_accessed(&self, o: &mut OpenInode) {
        let now = Ts::now();
        if self.atime_rule(o.attr.kind).due(&o.attr, now) {
            o.attr.atime = now;
            o.attr_dirty = true;
        }
    }

    /// Directory `dir` is read from its start.
    pub(super) fn dir_accessed(&self, dir: Ino) -> Result<()> {
        let rule = self.atime_rule(Kind::Dir);
        // Of a live directory only: one whose last name went (a kept ghost) has no row.
        if rule == Atime::Never || !rule.due(&self.getattr_linked(dir)?, Ts::now()) {
            return Ok(());
        }
        // Committed with the open group (also the in-memory copy of a directory that has
        // one: `set_attr_in`).
        let mut st = self.state.lock();
        self.group(&mut st, |st, tx| {
            let mut a = self.attr_in(st, tx, dir)?;
            let now = Ts::now();
            if rule.due(&a, now) {
                a.atime = now;
                self.set_attr_in(st, tx, dir, a)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Ts {
        Ts { secs, nsecs: 0 }
    }

    fn attr(atime: i64, mtime: i64, ctime: i64) -> Attr {
        let mut a = Attr::new(Kind::File, 0o644, 0, 0);
        (a.atime, a.mtime, a.ctime) = (ts(atime), ts(mtime), ts(ctime));
        a
    }

    #[test]
    fn relatime_updates_after_a_change_or_a_day_and_not_otherwise() {
        let now = 1_000_000;
        let r = Atime::Relative;
        assert!(
            r.due(&attr(now - 10, now - 10, now - 20), ts(now)),
            "atime == mtime"
        );
        assert!(
            r.due(&attr(now - 10, now - 5, now - 20), ts(now)),
            "mtime after atime"
        );
        assert!(
            r.due(&attr(now - 10, now - 20, now - 5), ts(now)),
            "ctime after atime"
        );
        assert!(
            !r.due(&attr(now - 10, now - 20, now - 20), ts(now)),
            "read since"
        );
        let day = 24 * 3600;
        assert!(!r.due(&attr(now - day + 1, 0, 0), ts(now)));
        assert!(r.due(&attr(now - day, 0, 0), ts(now)), "a day old");
        assert!(Atime::Strict.due(&attr(now - 1, 0, 0), ts(now)));
        assert!(!Atime::Never.due(&attr(0, 10, 10), ts(now)));
    }
}
