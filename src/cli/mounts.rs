//! The mount table: is a path a mountpoint, and which dedupfs store is mounted above a path.

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// Is `path` the root of a mount? (Its device differs from its parent's, or it is listed
/// in the mount table.)
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else {
        return false;
    };
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    table.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| unescape_mount_path(m) == canon.as_os_str().to_string_lossy())
    })
}

fn unescape_mount_path(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The store of the dedupfs volume `path` lies on: the innermost mount above it must be a FUSE mount whose
/// source is a dedupfs store (the daemon names its store as the mount source).
pub fn store_of(path: &Path) -> Result<PathBuf> {
    let canon = path
        .canonicalize()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut best: Option<(PathBuf, String, String)> = None;
    for line in table.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mp), Some(fstype), Some(source)) =
            (fields.get(4), fields.get(dash + 1), fields.get(dash + 2))
        else {
            continue;
        };
        let mp = PathBuf::from(unescape_mount_path(mp));
        if canon.starts_with(&mp)
            && best
                .as_ref()
                .is_none_or(|(b, _, _)| mp.components().count() >= b.components().count())
        {
            best = Some((mp, fstype.to_string(), unescape_mount_path(source)));
        }
    }
    match best {
        Some((_, fstype, source))
            if (fstype == "fuse" || fstype.starts_with("fuse."))
                && Path::new(&source).join("DEDUPFS").is_file() =>
        {
            Ok(PathBuf::from(source))
        }
        _ => bail!("{} is not on a mounted dedupfs volume", path.display()),
    }
}
