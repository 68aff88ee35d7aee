//! Deterministic test trees and whole-tree snapshots for the mount tests.
//!
//! `make_tree` builds a tree that looks like real data (thousands of files, nested dirs, odd names,
//! symlinks including dangling and absolute ones, hard links, duplicate contents, xattrs, varied
//! modes, owners and nanosecond mtimes). `snapshot` records everything a copy or a remount must
//! preserve, so tests can compare two trees, or one tree before and after a remount.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::hash::{DefaultHasher, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use super::{cstr, cvt, is_root};

/// What `make_tree` made, for assertions that need counts.
#[derive(Debug, Default)]
pub struct TreeSummary {
    pub files: usize,
    pub dirs: usize,
    pub symlinks: usize,
    pub hard_links: usize,
    pub bytes: u64,
}

const WORDS: &[&str] = &[
    "chunk", "store", "inode", "dedup", "fuse", "kernel", "page", "cache", "write", "read",
    "offset", "length", "hash", "blake3", "metadata", "rename", "unlink", "fsync", "\n",
];

fn text(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 16);
    while v.len() < len {
        v.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())].as_bytes());
        v.push(b' ');
    }
    v.truncate(len);
    v
}

fn name(rng: &mut StdRng, i: usize) -> String {
    match rng.random_range(0..12) {
        0 => format!("with space {i}.txt"),
        1 => format!("ñandú-{i}-日本"),
        2 => format!("-leading-dash-{i}"),
        3 => format!(".hidden-{i}"),
        4 => format!("{i}-{}", "long".repeat(45)), // ~185 bytes
        5 => format!("UPPER_{i}.DAT"),
        _ => format!("file-{i}.{}", ["rs", "c", "md", "bin", "json"][i % 5]),
    }
}

/// Set atime/mtime without following symlinks.
pub fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let c = cstr(p);
    let times = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    // SAFETY: valid C string and two valid timespecs.
    cvt(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let n = std::ffi::CString::new(name).unwrap();
    let c = cstr(p);
    // SAFETY: valid C strings and a buffer valid for value.len() bytes.
    cvt(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
    .unwrap_or_else(|e| panic!("lsetxattr {} {name}: {e}", p.display()));
}

/// `user.*` xattrs of `p` (not following symlinks), sorted, with values.
pub fn user_xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let c = cstr(p);
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        panic!("llistxattr {}: {e}", p.display());
    }
    buf.truncate(n as usize);
    let mut out = Vec::new();
    for name in buf.split(|&b| b == 0).filter(|s| s.starts_with(b"user.")) {
        let cn = std::ffi::CString::new(name).unwrap();
        let mut val = vec![0u8; 64 * 1024];
        // SAFETY: val is valid for val.len() bytes.
        let m =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        if m < 0 {
            let e = std::io::Error::last_os_error();
            panic!("lgetxattr {} {:?}: {e}", p.display(), cn);
        }
        val.truncate(m as usize);
        out.push((String::from_utf8_lossy(name).into_owned(), val));
    }
    out.sort();
    out
}

/// Build a deterministic tree of about `nfiles` regular files under `root` (created if missing).
pub fn make_tree(root: &Path, seed: u64, nfiles: usize) -> TreeSummary {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sum = TreeSummary::default();
    fs::create_dir_all(root).unwrap();
    let mut dirs: Vec<PathBuf> = vec![root.to_path_buf()];
    for i in 0..(nfiles / 40).max(4) {
        let parent = dirs[rng.random_range(0..dirs.len())].clone();
        let d = parent.join(format!("dir-{i}{}", if i % 7 == 0 { " x" } else { "" }));
        fs::create_dir(&d).unwrap();
        dirs.push(d);
        sum.dirs += 1;
    }
    let mut files: Vec<PathBuf> = Vec::new();
    let mut contents: Vec<Vec<u8>> = Vec::new();
    for i in 0..nfiles {
        let dir = &dirs[rng.random_range(0..dirs.len())];
        let p = dir.join(name(&mut rng, i));
        let body = if !contents.is_empty() && rng.random_range(0..10) == 0 {
            // Duplicate content under another name: a dedup opportunity.
            contents[rng.random_range(0..contents.len())].clone()
        } else {
            let r = rng.random_range(0..1000);
            let len = if r < 30 {
                0
            } else if r < 450 {
                rng.random_range(1..512)
            } else if r < 900 {
                rng.random_range(512..16 * 1024)
            } else if r < 995 {
                rng.random_range(16 * 1024..128 * 1024)
            } else {
                rng.random_range(512 * 1024..2 * 1024 * 1024)
            };
            if rng.random_range(0..2) == 0 {
                text(&mut rng, len)
            } else {
                let mut v = vec![0u8; len];
                rng.fill_bytes(&mut v);
                v
            }
        };
        let mut f = File::create(&p).unwrap();
        f.write_all(&body).unwrap();
        drop(f);
        let mode = [0o644, 0o600, 0o755, 0o444, 0o640, 0o700][rng.random_range(0..6)];
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        if rng.random_range(0..20) == 0 {
            set_xattr(&p, "user.origin", format!("generated {i}").as_bytes());
        }
        if is_root() && rng.random_range(0..15) == 0 {
            std::os::unix::fs::lchown(&p, Some(1000 + i as u32 % 3), Some(100)).unwrap();
        }
        sum.files += 1;
        sum.bytes += body.len() as u64;
        files.push(p);
        contents.push(body);
    }
    // Symlinks: relative to files and dirs, upward, absolute, dangling.
    for i in 0..(nfiles / 15).max(5) {
        let dir = dirs[rng.random_range(0..dirs.len())].clone();
        let target: PathBuf = match i % 5 {
            0 => files[rng.random_range(0..files.len())]
                .strip_prefix(root)
                .unwrap()
                .to_path_buf(),
            1 => PathBuf::from("../"),
            2 => PathBuf::from("/etc/hostname"),
            3 => PathBuf::from(format!("does/not/exist-{i}")),
            _ => dirs[rng.random_range(0..dirs.len())]
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".")),
        };
        let link = dir.join(format!("link-{i}"));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        set_times(&link, (1_600_000_000, 0), (1_500_000_000 + i as i64, 7));
        sum.symlinks += 1;
    }
    // Hard links to existing files, possibly in other directories.
    for i in 0..(nfiles / 60).max(3) {
        let src = files[rng.random_range(0..files.len())].clone();
        let dir = &dirs[rng.random_range(0..dirs.len())];
        fs::hard_link(&src, dir.join(format!("hardlink-{i}"))).unwrap();
        sum.hard_links += 1;
    }
    // A few empty directories.
    for i in 0..5 {
        let parent = dirs[rng.random_range(0..dirs.len())].clone();
        fs::create_dir(parent.join(format!("empty-{i}"))).unwrap();
        sum.dirs += 1;
    }
    // Times last (creating entries changes directory mtimes), deepest paths first.
    for p in &files {
        let s = rng.random_range(1_000_000_000..1_700_000_000);
        let ns = rng.random_range(0..1_000_000_000);
        set_times(p, (s, 0), (s, ns));
    }
    let mut all_dirs = dirs.clone();
    all_dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in all_dirs.iter().filter(|d| *d != root) {
        let s = rng.random_range(1_000_000_000..1_700_000_000);
        set_times(d, (s, 0), (s, 123));
    }
    sum
}

/// Everything about one entry that a faithful copy or a remount must preserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub nlink: u64,
    pub ino: u64,
    pub link_target: Option<PathBuf>,
    pub content_hash: Option<u64>,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Walk `root` (not following symlinks) and record every entry by relative path.
/// The root itself is recorded as "." with its own mode and owner (not its mtime, which a copy
/// into an existing directory does not preserve).
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        let ft = m.file_type();
        let (kind, link_target, content_hash) = if ft.is_dir() {
            for e in fs::read_dir(&p).unwrap_or_else(|e| panic!("readdir {}: {e}", p.display())) {
                stack.push(e.unwrap().path());
            }
            ("dir", None, None)
        } else if ft.is_symlink() {
            ("symlink", Some(fs::read_link(&p).unwrap()), None)
        } else if ft.is_file() {
            let mut h = DefaultHasher::new();
            let mut f = File::open(&p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                h.write(&buf[..n]);
                total += n as u64;
            }
            assert_eq!(
                total,
                m.len(),
                "{}: read {total} bytes, st_size {}",
                p.display(),
                m.len()
            );
            ("file", None, Some(h.finish()))
        } else {
            ("other", None, None)
        };
        let rel = p.strip_prefix(root).unwrap();
        let rel = if rel.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            rel.to_path_buf()
        };
        let is_root_entry = rel == Path::new(".");
        let xattrs = if ft.is_symlink() {
            Vec::new()
        } else {
            user_xattrs(&p)
        };
        out.insert(
            rel,
            Entry {
                kind,
                // Symlink permission bits carry no meaning on Linux; compare only the type.
                mode: if ft.is_symlink() {
                    m.mode() & libc::S_IFMT
                } else {
                    m.mode()
                },
                uid: m.uid(),
                gid: m.gid(),
                // Directory sizes are file-system specific.
                size: if ft.is_dir() { 0 } else { m.len() },
                mtime: if is_root_entry {
                    (0, 0)
                } else {
                    (m.mtime(), m.mtime_nsec())
                },
                nlink: if ft.is_dir() { 0 } else { m.nlink() },
                ino: m.ino(),
                link_target,
                content_hash,
                xattrs,
            },
        );
    }
    out
}

/// Assert two snapshots describe the same tree. With `same_inodes`, inode numbers must match too
/// (a remount); otherwise only the hard-link structure must match (a copy).
#[track_caller]
pub fn assert_same_tree(
    what: &str,
    got: &BTreeMap<PathBuf, Entry>,
    want: &BTreeMap<PathBuf, Entry>,
    same_inodes: bool,
) {
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(10)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(10)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: entries differ; missing {missing:?}, unexpected {extra:?}"
    );
    let mut mismatches = Vec::new();
    // Hard-link structure: paths sharing an inode in `want` share one in `got`, and vice versa.
    let mut pairing: BTreeMap<u64, u64> = BTreeMap::new();
    let mut reverse: BTreeMap<u64, u64> = BTreeMap::new();
    for (path, w) in want {
        let g = &got[path];
        let (mut g_cmp, mut w_cmp) = (g.clone(), w.clone());
        if !same_inodes {
            g_cmp.ino = 0;
            w_cmp.ino = 0;
        }
        if path == Path::new(".") {
            // The copy's root may have a different owner/mode than the source root.
            g_cmp.mode = 0;
            w_cmp.mode = 0;
            g_cmp.uid = 0;
            w_cmp.uid = 0;
            g_cmp.gid = 0;
            w_cmp.gid = 0;
            g_cmp.xattrs.clear();
            w_cmp.xattrs.clear();
        }
        if g_cmp != w_cmp {
            mismatches.push(format!(
                "{}:\n   got  {g_cmp:?}\n   want {w_cmp:?}",
                path.display()
            ));
        }
        if w.kind == "file"
            && (*pairing.entry(w.ino).or_insert(g.ino) != g.ino
                || *reverse.entry(g.ino).or_insert(w.ino) != w.ino)
        {
            mismatches.push(format!("{}: hard-link structure differs", path.display()));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{what}: {} entries differ, first ones:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(10)].join("\n")
    );
}
