//! The kernel's mount table (`/proc/self/mountinfo`) as the CLI and the store lock need it: is
//! a path a mount point, is a store mounted, and which dedupfs mount holds a path (and so
//! which store serves it: the daemon mounts with the canonical store directory as the
//! mount's source).

use anyhow::{Context, Result, bail};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The filesystem type a dedupfs mount shows (`fuse.` + the subtype the daemon sets).
pub const FSTYPE: &str = "fuse.dedupfs";

/// One line of the mount table.
#[derive(Debug, Clone)]
pub struct MountEntry {
    /// `major:minor` of the mounted filesystem, as `stat` reports it in `st_dev`.
    pub dev: (u32, u32),
    pub mount_point: PathBuf,
    /// The mount's own options (`rw,nosuid,nodev,relatime`), not the filesystem's.
    pub options: String,
    pub fstype: String,
    pub source: String,
}

/// Parses one mountinfo line:
/// `id parent maj:min root MOUNTPOINT opts [optional...] - FSTYPE SOURCE superopts`.
fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let dev = l.nth(2)?;
    let mount_point = l.nth(1)?;
    let options = l.next()?;
    let (major, minor) = dev.split_once(':')?;
    let mut r = right.split(' ');
    let fstype = r.next()?;
    let source = r.next()?;
    Some(MountEntry {
        dev: (major.parse().ok()?, minor.parse().ok()?),
        mount_point: PathBuf::from(std::ffi::OsString::from_vec(unescape_mountinfo(
            mount_point,
        ))),
        options: options.to_string(),
        fstype: String::from_utf8_lossy(&unescape_mountinfo(fstype)).into_owned(),
        source: String::from_utf8_lossy(&unescape_mountinfo(source)).into_owned(),
    })
}

/// Mountinfo writes space, tab, newline and backslash as `\ooo` (octal).
pub fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        if let (b'\\', Some(v)) = (b[i], octal) {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Every mount visible to this process.
pub fn entries() -> Result<Vec<MountEntry>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read the mount table /proc/self/mountinfo")?;
    Ok(table.lines().filter_map(parse_line).collect())
}

/// Is `path` the root of a mount? (It is listed as a mount point in the mount table.)
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else {
        return false;
    };
    entries().is_ok_and(|all| all.iter().any(|e| e.mount_point == canon))
}

/// The dedupfs mount that holds `path` (the mount point or anything inside it), found by the
/// device number `stat` gives, so a bind mount of a directory inside the volume counts too.
/// A one-line error when `path` is missing or on another filesystem.
pub fn dedupfs_mount_of(path: &Path) -> Result<MountEntry> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot access {}", path.display()))?;
    let dev = meta.dev();
    let dev = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let all = entries()?;
    if let Some(e) = all.iter().find(|e| e.dev == dev && e.fstype == FSTYPE) {
        return Ok(e.clone());
    }
    match all.iter().rev().find(|e| e.dev == dev) {
        Some(e) => bail!(
            "{} is not on a dedupfs mount (it is on {} {} mounted at {})",
            path.display(),
            e.fstype,
            e.source,
            e.mount_point.display()
        ),
        None => bail!("{} is not on a dedupfs mount", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_fuse_line_with_escaped_paths() {
        let l = "812 29 0:95 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:1 - fuse.dedupfs /srv/my\\040store rw,user_id=0,group_id=0";
        let e = parse_line(l).unwrap();
        assert_eq!(e.dev, (0, 95));
        assert_eq!(e.mount_point, PathBuf::from("/tmp/a b"));
        assert_eq!(e.options, "rw,nosuid,nodev,relatime");
        assert_eq!(e.fstype, "fuse.dedupfs");
        assert_eq!(e.source, "/srv/my store");
    }

    #[test]
    fn parses_a_line_without_optional_fields() {
        let l = "23 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw";
        let e = parse_line(l).unwrap();
        assert_eq!((e.dev, e.fstype.as_str()), ((8, 1), "ext4"));
        assert_eq!(e.mount_point, PathBuf::from("/"));
    }
}
