//! Snapshots (`dedupfs snapshot create/list/delete`, `MOUNT/.snapshots/NAME`) on real mounts,
//! driven through the real binary and the tools people use on them.
//!
//! Guards against: a snapshot that misses data still dirty in the daemon or picks up changes
//! made after `create`, or shows a file being written with NULs it never held; hard links, symlinks, xattrs or holes lost in the copy; inode numbers
//! that collide with live ones or change; `.snapshots` showing up in `ls -a`, `cp -a`, `tar`,
//! `find` or `du` of the volume; a snapshot, or `.snapshots` itself, that can be written to,
//! removed, renamed or replaced; `--path` copying more than
//! its tree or counting hard links outside it; a restore that copies data instead of
//! referencing it; exclusive bytes that are not what a delete frees; kernel caches (positive
//! and negative dentries) that show a deleted snapshot or hide a new one; gc, compaction or
//! the volume's own removal freeing chunks only a snapshot holds; snapshots lost or resurrected
//! by kill -9 (or a crash in the middle of a delete); `snapshot list` out of creation order;
//! bad input that changes anything or fails without one clear line.

mod common;

use common::tree::{self, Entry};
use common::xattr::{getxattr, setxattr};
use common::{
    BIN, MIB, Volume, assert_bytes_eq, errno_of, fuse_available, random_bytes, read_all, run,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Inode bits of the snapshot slot (src/fs/snapshots.rs: `slot << 48 | live_ino`).
const SLOT_SHIFT: u32 = 48;
const LIVE_MASK: u64 = (1 << SLOT_SHIFT) - 1;

/// `dedupfs ARGS...`, never failing itself.
fn dedupfs<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run dedupfs")
}

fn text(o: &Output) -> String {
    common::output_text(o)
}

#[track_caller]
fn ok(o: Output, what: &str) -> String {
    assert!(o.status.success(), "{what}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `dedupfs snapshot VERB MNT ARGS...`, which must succeed; its stdout.
#[track_caller]
fn snapshot_ok(vol: &Volume, verb: &str, args: &[&OsStr]) -> String {
    let mut all = vec![
        OsStr::new("snapshot"),
        OsStr::new(verb),
        vol.mnt.as_os_str(),
    ];
    all.extend_from_slice(args);
    let what = all
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    ok(dedupfs(all), &what)
}

/// `dedupfs snapshot create MNT NAME`.
#[track_caller]
fn create(vol: &Volume, name: &str) -> String {
    snapshot_ok(vol, "create", &[OsStr::new(name)])
}

/// `dedupfs snapshot create MNT NAME --path PATH`.
#[track_caller]
fn create_of(vol: &Volume, name: &str, path: &Path) -> String {
    snapshot_ok(
        vol,
        "create",
        &[OsStr::new(name), OsStr::new("--path"), path.as_os_str()],
    )
}

/// `dedupfs snapshot delete MNT NAME`.
#[track_caller]
fn delete(vol: &Volume, name: &str) -> String {
    snapshot_ok(vol, "delete", &[OsStr::new(name)])
}

/// `dedupfs snapshot list MNT --json`, parsed.
#[track_caller]
fn list(vol: &Volume) -> Vec<Value> {
    let out = snapshot_ok(vol, "list", &[OsStr::new("--json")]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("snapshot list --json: {e}: {out}"))
}

fn names(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|s| s["name"].as_str().expect("name").to_string())
        .collect()
}

/// The entry of snapshot `name` in `list`.
#[track_caller]
fn entry<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no snapshot {name:?} in {list:?}"))
}

#[track_caller]
fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

/// A refused command: non-zero exit, exactly one line on stderr, containing `needle`.
#[track_caller]
fn refused(o: &Output, needle: &str, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what}: must fail: {}", text(o));
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{what}: one line on stderr: {}",
        text(o)
    );
    assert!(
        err.contains(needle),
        "{what}: stderr should mention {needle:?}: {}",
        text(o)
    );
}

/// A tool that must fail with "Read-only file system".
#[track_caller]
fn erofs(cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        !out.status.success(),
        "{cmd:?} succeeded inside a snapshot: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{cmd:?}: EROFS expected: {}",
        text(&out)
    );
}

fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script);
    c
}

/// stat(2) itself, which the kernel answers from its caches while they are valid (std's
/// `metadata` asks statx for more than the kernel caches for FUSE, which may send it to the
/// daemon and so hide a stale cache entry): the attributes, or the errno.
fn stat(p: &Path) -> Result<libc::stat, i32> {
    let c = common::cstr(p);
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid C string and room for one struct stat.
    let rc = unsafe { libc::stat(c.as_ptr(), st.as_mut_ptr()) };
    if rc == 0 {
        // SAFETY: stat(2) filled it in.
        Ok(unsafe { st.assume_init() })
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// The errno of a stat(2) that must fail.
#[track_caller]
fn stat_errno(p: &Path) -> i32 {
    match stat(p) {
        Ok(st) => panic!("stat {}: exists (inode {:#x})", p.display(), st.st_ino),
        Err(e) => e,
    }
}

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
        .ino()
}

/// Inode number of every entry under `root` by relative path, from lstat alone (no file is
/// opened, so nothing open elsewhere is flushed).
fn inos(root: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        if m.is_dir() {
            for e in fs::read_dir(&p).unwrap_or_else(|e| panic!("readdir {}: {e}", p.display())) {
                stack.push(e.unwrap().path());
            }
        }
        out.insert(p.strip_prefix(root).unwrap().to_path_buf(), m.ino());
    }
    out
}

/// The names `ls -a DIR` prints.
fn ls_a(dir: &Path) -> Vec<String> {
    run(Command::new("ls").arg("-a").arg(dir))
        .lines()
        .map(str::to_string)
        .collect()
}

/// Fills `p` with `data` and closes it.
fn write_file(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

/// Everything written so far durable, and the published statistics fresh.
fn sync(vol: &Volume) {
    ok(
        dedupfs([OsStr::new("sync"), vol.mnt.as_os_str()]),
        "dedupfs sync",
    );
}

/// `dedupfs fsck STORE --json` (mounted or not) exits 0 and finds neither errors nor warnings.
#[track_caller]
fn fsck_clean(vol: &Volume, what: &str) {
    let out = dedupfs([
        OsStr::new("fsck"),
        vol.store.as_os_str(),
        OsStr::new("--verify-data"),
        OsStr::new("--json"),
    ]);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: fsck --json: {e}: {}", text(&out)));
    let bad: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] != "info")
        .collect();
    assert!(
        out.status.success() && bad.is_empty(),
        "{what}: fsck not clean: {bad:?}\n{}",
        text(&out)
    );
}

/// The metadata tree::snapshot records of every entry but `skip`.
fn tree_without(root: &Path, skip: &[&str]) -> BTreeMap<PathBuf, Entry> {
    let mut t = tree::snapshot(root);
    for s in skip {
        t.remove(Path::new(s));
    }
    t
}

fn set_mtime(p: &Path, secs: i64, nsecs: i64) {
    tree::set_times(p, (secs, 0), (secs, nsecs));
}

// ---------------------------------------------------------------------------------------------

/// Item 1: everything written before `create` (dirty data of a file still open included), and
/// nothing after; hard links, symlinks, xattrs, holes, modes and times as they were; inode
/// numbers distinct from live ones and stable across stats and a remount.
#[test]
fn a_snapshot_is_the_tree_as_it_was_when_create_ran() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let m = |r: &str| vol.path(r);
    fs::create_dir_all(m("docs/deep")).unwrap();
    fs::create_dir(m("hl")).unwrap();
    fs::create_dir(m("empty-dir")).unwrap();
    write_file(&m("docs/a.txt"), "alpha beta\n".repeat(3000).as_bytes());
    let b = random_bytes(1, 1_300_017);
    write_file(&m("docs/b.bin"), &b);
    fs::hard_link(m("docs/b.bin"), m("hl/b-link")).unwrap();
    write_file(&m("docs/deep/c.txt"), b"deep file\n");
    fs::set_permissions(m("docs/deep/c.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    write_file(&m("empty.dat"), b"");
    std::os::unix::fs::symlink("docs/a.txt", m("link")).unwrap();
    std::os::unix::fs::symlink("no/such/target", m("dangling")).unwrap();
    setxattr(&m("docs/a.txt"), "user.tag", b"v1", 0).unwrap();
    setxattr(&m("docs"), "user.dirtag", b"a directory's", 0).unwrap();
    {
        let f = File::create(m("sparse.img")).unwrap();
        f.set_len(64 * MIB).unwrap();
        f.write_all_at(b"in the middle", 32 * MIB).unwrap();
        f.write_all_at(b"end", 64 * MIB - 3).unwrap();
    }
    set_mtime(&m("docs/a.txt"), 1_500_000_000, 123_456_789);
    set_mtime(&m("docs/deep"), 1_400_000_000, 5);

    // The reference: a copy made before the snapshot, on another filesystem.
    let reference = vol.scratch().join("ref");
    run(Command::new("cp")
        .arg("-a")
        .arg(vol.mnt.join("."))
        .arg(&reference));

    // A file written and still open, neither closed nor fsynced: its data is dirty in the
    // daemon when create runs. (The reference gets the same bytes.)
    let dirty = random_bytes(2, 300_017);
    let mut open = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m("open.log"))
        .unwrap();
    open.write_all(&dirty).unwrap();
    write_file(&reference.join("open.log"), &dirty);
    // And an existing file changed in place through an open descriptor, also dirty.
    let grow = OpenOptions::new()
        .write(true)
        .open(m("docs/b.bin"))
        .unwrap();
    grow.write_all_at(b"DIRTY IN PLACE", 700_000).unwrap();
    let mut b_then = b.clone();
    b_then[700_000..700_014].copy_from_slice(b"DIRTY IN PLACE");
    {
        let r = OpenOptions::new()
            .write(true)
            .open(reference.join("docs/b.bin"))
            .unwrap();
        r.write_all_at(b"DIRTY IN PLACE", 700_000).unwrap();
    }

    let live_then = inos(&vol.mnt);
    // What stat showed of the dirty files just before (lstat opens nothing, so flushes nothing).
    let attrs = |p: &Path| {
        let m = fs::symlink_metadata(p).unwrap();
        (m.len(), m.mtime(), m.mtime_nsec(), m.blocks())
    };
    let dirty_attrs_then = [attrs(&m("open.log")), attrs(&m("docs/b.bin"))];
    let out = create(&vol, "s1");
    let snap = m(".snapshots/s1");
    assert!(
        out.contains(&snap.display().to_string()),
        "create names where the snapshot is: {out}"
    );

    // Writes after create are not in it, whatever happens to the live tree.
    open.write_all(b"written after the snapshot").unwrap();
    drop(open);
    grow.write_all_at(b"AFTER", 10).unwrap();
    drop(grow);
    fs::remove_file(m("docs/a.txt")).unwrap();
    OpenOptions::new()
        .append(true)
        .open(m("docs/deep/c.txt"))
        .unwrap()
        .write_all(b"appended later\n")
        .unwrap();
    File::options()
        .write(true)
        .open(m("sparse.img"))
        .unwrap()
        .set_len(1000)
        .unwrap();
    fs::rename(m("docs/deep"), m("docs/moved")).unwrap();
    fs::hard_link(m("hl/b-link"), m("docs/third-name")).unwrap();
    fs::remove_file(m("dangling")).unwrap();
    fs::remove_file(m("link")).unwrap();
    std::os::unix::fs::symlink("elsewhere", m("link")).unwrap();
    setxattr(&m("docs"), "user.dirtag", b"changed", 0).unwrap();
    fs::set_permissions(m("hl"), fs::Permissions::from_mode(0o700)).unwrap();
    write_file(&m("new-after.txt"), b"new");
    fs::remove_dir(m("empty-dir")).unwrap();
    sync(&vol);

    // Contents: diff -r of the snapshot against the reference (symlinks compared as links).
    run(Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(&reference)
        .arg(&snap));
    assert_bytes_eq(
        "dirty data of a file open at create",
        &read_all(&snap.join("open.log")),
        &dirty,
    );
    assert_bytes_eq(
        "a file changed in place, dirty at create",
        &read_all(&snap.join("docs/b.bin")),
        &b_then,
    );
    assert_eq!(
        [
            attrs(&snap.join("open.log")),
            attrs(&snap.join("docs/b.bin"))
        ],
        dirty_attrs_then,
        "size, mtime and blocks of the files dirty at create, as stat showed them then"
    );
    // Metadata: modes, owners, times, xattrs, link targets, hard-link structure and nlink.
    // (The files written through the descriptors have other mtimes in the reference.)
    let dirty_names = ["open.log", "docs/b.bin", "hl/b-link"];
    tree::assert_same_tree(
        "snapshot against the reference copy",
        &tree_without(&snap, &dirty_names),
        &tree_without(&reference, &dirty_names),
        false,
    );
    assert_eq!(
        getxattr(&snap.join("docs"), "user.dirtag").unwrap(),
        b"a directory's",
        "a directory's xattr as it was"
    );
    // The hole stayed a hole.
    let sparse = fs::metadata(snap.join("sparse.img")).unwrap();
    assert_eq!(sparse.len(), 64 * MIB);
    assert!(
        sparse.blocks() * 512 < MIB,
        "a sparse file in a snapshot allocates only its data: {} blocks",
        sparse.blocks()
    );
    let mut probe = vec![0u8; 13];
    File::open(snap.join("sparse.img"))
        .unwrap()
        .read_exact_at(&mut probe, 32 * MIB)
        .unwrap();
    assert_eq!(&probe, b"in the middle");

    // Hard links: one inode, nlink counting the names inside the snapshot (the live file has
    // three names now).
    let (b1, b2) = (
        fs::metadata(snap.join("docs/b.bin")).unwrap(),
        fs::metadata(snap.join("hl/b-link")).unwrap(),
    );
    assert_eq!(
        b1.ino(),
        b2.ino(),
        "hard links share an inode in the snapshot"
    );
    assert_eq!(
        (b1.nlink(), b2.nlink()),
        (2, 2),
        "nlink counts the snapshot's names"
    );
    assert_eq!(fs::metadata(m("hl/b-link")).unwrap().nlink(), 3);

    // Inode numbers: slot << 48 | the live inode number at create, never a live one, the same
    // on every stat and after a remount.
    let snap_inos = inos(&snap);
    assert_eq!(snap_inos.len(), live_then.len(), "{snap_inos:?}");
    let live_now: std::collections::BTreeSet<u64> = inos(&vol.mnt).into_values().collect();
    let slot = snap_inos[Path::new("")] >> SLOT_SHIFT;
    assert!(slot >= 1, "a snapshot's inodes carry its slot");
    for (p, i) in &snap_inos {
        assert_eq!(i >> SLOT_SHIFT, slot, "{}: {i:#x}", p.display());
        assert_eq!(
            i & LIVE_MASK,
            live_then[p],
            "{}: the live inode number at create, in the low bits",
            p.display()
        );
        assert!(
            !live_now.contains(i),
            "{}: {i:#x} is a live inode",
            p.display()
        );
    }
    assert_eq!(inos(&snap), snap_inos, "stable across stats");
    assert_eq!(
        ino(&snap.join("..")),
        ino(&m(".snapshots")),
        "the snapshot root's parent is .snapshots"
    );
    let before_remount = tree::snapshot(&snap);
    vol.remount();
    assert_eq!(inos(&snap), snap_inos, "stable across a remount");
    tree::assert_same_tree(
        "the snapshot after a remount",
        &tree::snapshot(&snap),
        &before_remount,
        true,
    );
    run(Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(&reference)
        .arg(&snap));
    vol.unmount();
}

/// Item 2: `.snapshots` is entered by name but not listed, so tools that walk the volume do not
/// copy, archive, find or count what only snapshots hold.
#[test]
fn snapshots_are_hidden_from_listings_and_tree_walkers() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::new();
    fs::create_dir(vol.path("sub")).unwrap();
    write_file(&vol.path("keep.txt"), b"kept\n");
    write_file(&vol.path("sub/inner.txt"), b"inner\n");
    // 4 MiB only the snapshots will hold: a walker that enters .snapshots counts them.
    write_file(&vol.path("gone.bin"), &random_bytes(3, (4 * MIB) as usize));
    create(&vol, "s1");
    create(&vol, "s2");
    fs::remove_file(vol.path("gone.bin")).unwrap();
    sync(&vol);

    let root = ls_a(&vol.mnt);
    assert!(
        root.contains(&"keep.txt".to_string()) && !root.iter().any(|l| l.contains(".snapshots")),
        "ls -a of the root: {root:?}"
    );
    assert!(
        !fs::read_dir(&vol.mnt)
            .unwrap()
            .any(|e| e.unwrap().file_name() == ".snapshots"),
        "readdir of the root"
    );
    // Yet it is there by name.
    let snaps = ls_a(&vol.path(".snapshots"));
    assert_eq!(snaps, [".", "..", "s1", "s2"], "ls -a .snapshots");
    let meta = fs::metadata(vol.path(".snapshots")).unwrap();
    assert!(meta.is_dir());
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o555,
        "read-only directory"
    );
    assert!(
        ls_a(&vol.path(".snapshots/s1")).contains(&"gone.bin".to_string()),
        "the snapshot has the deleted file"
    );
    assert!(
        !vol.path(".snapshots/s1/.snapshots").exists(),
        "a snapshot of the volume does not hold .snapshots again"
    );

    // find
    let found = run(Command::new("find").arg(&vol.mnt));
    assert!(
        !found.contains(".snapshots") && !found.contains("gone.bin") && found.contains("inner.txt"),
        "find of the volume: {found}"
    );
    // tar
    let archive = vol.scratch().join("vol.tar");
    run(Command::new("tar")
        .arg("cf")
        .arg(&archive)
        .arg("-C")
        .arg(&vol.mnt)
        .arg("."));
    let listed = run(Command::new("tar").arg("tf").arg(&archive));
    assert!(
        !listed.contains(".snapshots")
            && !listed.contains("gone.bin")
            && listed.contains("./sub/inner.txt"),
        "tar of the volume: {listed}"
    );
    // cp -a
    let copy = vol.scratch().join("copy");
    run(Command::new("cp")
        .arg("-a")
        .arg(vol.mnt.join("."))
        .arg(&copy));
    let copied: Vec<String> = fs::read_dir(&copy)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !copy.join(".snapshots").exists() && !copy.join("gone.bin").exists(),
        "cp -a of the volume copied {copied:?}"
    );
    assert_eq!(fs::read(copy.join("sub/inner.txt")).unwrap(), b"inner\n");
    // du
    let du_k = |p: &Path| -> u64 {
        run(Command::new("du").arg("-s").arg("-k").arg(p))
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let whole = du_k(&vol.mnt);
    assert!(
        whole < 1024,
        "du -s of the volume counts {whole} KiB: it entered .snapshots"
    );
    assert!(
        du_k(&vol.path(".snapshots/s1")) >= 4096,
        "du of a snapshot itself counts its data"
    );
}

/// Item 3: every way of writing inside a snapshot (or to `.snapshots`) fails with EROFS, and
/// nothing changes.
#[test]
fn nothing_inside_a_snapshot_can_be_changed() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::new();
    fs::create_dir(vol.path("d")).unwrap();
    write_file(&vol.path("f"), b"original\n");
    write_file(&vol.path("d/g"), b"in a directory\n");
    setxattr(&vol.path("f"), "user.tag", b"x", 0).unwrap();
    std::os::unix::fs::symlink("f", vol.path("l")).unwrap();
    write_file(&vol.path("live.txt"), b"live\n");
    create(&vol, "s");
    let s = vol.path(".snapshots/s");
    let (f, d, mnt) = (s.join("f"), s.join("d"), vol.mnt.clone());
    let before = tree::snapshot(&s);
    let listed = list(&vol);
    let live_before = tree::snapshot(&vol.mnt);

    erofs(Command::new("touch").arg(&f));
    erofs(Command::new("touch").arg(s.join("new")));
    erofs(&mut sh(&format!("echo x > '{}'", f.display())));
    erofs(&mut sh(&format!("echo x >> '{}'", f.display())));
    erofs(&mut sh(&format!("echo x > '{}'", s.join("new").display())));
    erofs(Command::new("rm").arg(&f));
    erofs(Command::new("rm").arg("-rf").arg(&d));
    erofs(Command::new("rm").arg(s.join("l")));
    erofs(Command::new("rmdir").arg(&d));
    erofs(Command::new("mkdir").arg(s.join("newdir")));
    erofs(Command::new("mv").arg(&f).arg(s.join("renamed")));
    erofs(Command::new("mv").arg(&f).arg(mnt.join("moved-out")));
    erofs(
        Command::new("mv")
            .arg(mnt.join("live.txt"))
            .arg(d.join("moved-in")),
    );
    erofs(Command::new("cp").arg(mnt.join("live.txt")).arg(&d));
    erofs(Command::new("ln").arg(&f).arg(mnt.join("hard-out")));
    erofs(
        Command::new("ln")
            .arg(mnt.join("live.txt"))
            .arg(d.join("hard-in")),
    );
    erofs(Command::new("ln").arg("-s").arg("x").arg(d.join("sym")));
    erofs(Command::new("chmod").arg("777").arg(&f));
    erofs(Command::new("chmod").arg("700").arg(&d));
    erofs(Command::new("chown").arg("1234").arg(&f));
    erofs(
        Command::new("setfattr")
            .args(["-n", "user.new", "-v", "1"])
            .arg(&f),
    );
    erofs(Command::new("setfattr").args(["-x", "user.tag"]).arg(&f));
    erofs(Command::new("truncate").args(["-s", "0"]).arg(&f));
    erofs(Command::new("truncate").args(["-s", "1G"]).arg(&f));
    // The snapshot itself and the .snapshots directory.
    erofs(Command::new("rmdir").arg(&s));
    erofs(Command::new("rm").arg("-rf").arg(&s));
    erofs(Command::new("mv").arg(&s).arg(vol.path(".snapshots/t")));
    erofs(Command::new("mkdir").arg(vol.path(".snapshots/t")));
    erofs(Command::new("touch").arg(vol.path(".snapshots")));
    erofs(Command::new("chmod").arg("777").arg(vol.path(".snapshots")));
    // The system calls themselves.
    assert_eq!(
        errno_of(
            "open for writing",
            OpenOptions::new().read(true).write(true).open(&f)
        ),
        libc::EROFS
    );
    assert_eq!(
        errno_of("setxattr", setxattr(&f, "user.tag", b"y", 0)),
        libc::EROFS
    );
    assert_eq!(
        errno_of("rename within", fs::rename(&f, d.join("f"))),
        libc::EROFS
    );
    assert_eq!(errno_of("unlink", fs::remove_file(&f)), libc::EROFS);

    tree::assert_same_tree(
        "the snapshot after every refused change",
        &tree::snapshot(&s),
        &before,
        true,
    );
    assert_eq!(fs::read(&f).unwrap(), b"original\n");
    assert_eq!(list(&vol), listed, "snapshot list unchanged");
    tree::assert_same_tree(
        "the live tree after the refused changes",
        &tree::snapshot(&vol.mnt),
        &live_before,
        true,
    );
}

/// Item 3, the `.snapshots` directory itself: it cannot be removed, renamed, or replaced by
/// a directory renamed over it (which would hide every snapshot behind an empty directory).
#[test]
fn the_snapshots_directory_cannot_be_removed_renamed_or_replaced() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::new();
    write_file(&vol.path("f"), b"f\n");
    fs::create_dir(vol.path("userdir")).unwrap();
    create(&vol, "s");
    let dot = vol.path(".snapshots");
    let listed = list(&vol);

    erofs(Command::new("rmdir").arg(&dot));
    erofs(Command::new("mv").arg(&dot).arg(vol.path("elsewhere")));
    erofs(
        Command::new("mv")
            .arg("-T")
            .arg(vol.path("userdir"))
            .arg(&dot),
    );
    assert_eq!(errno_of("rmdir", fs::remove_dir(&dot)), libc::EROFS);
    assert_eq!(
        errno_of("rename away", fs::rename(&dot, vol.path("x"))),
        libc::EROFS
    );
    assert_eq!(
        errno_of("rename over", fs::rename(vol.path("userdir"), &dot)),
        libc::EROFS
    );
    let (a, b) = (common::cstr(&vol.path("userdir")), common::cstr(&dot));
    // SAFETY: two valid NUL-terminated paths; renameat2 has no other preconditions.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(
        errno_of("RENAME_EXCHANGE with it", common::cvt(rc)),
        libc::EROFS
    );
    // Creating the name: it exists.
    assert_eq!(errno_of("mkdir", fs::create_dir(&dot)), libc::EEXIST);
    assert_eq!(
        errno_of("symlink", std::os::unix::fs::symlink("f", &dot)),
        libc::EEXIST
    );

    assert_eq!(
        ls_a(&dot),
        [".", "..", "s"],
        "the snapshots are still there"
    );
    assert_eq!(fs::read(dot.join("s/f")).unwrap(), b"f\n");
    assert!(vol.path("userdir").is_dir() && !vol.path("elsewhere").exists());
    assert_eq!(ls_a(&vol.mnt), [".", "..", "f", "userdir"]);
    assert_eq!(list(&vol), listed);
}

/// Item 4: `--path` copies one tree, and hard links count only the names inside it.
#[test]
fn a_snapshot_of_a_subtree_holds_that_tree_alone() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::new();
    fs::create_dir_all(vol.path("proj/src/deep")).unwrap();
    fs::create_dir(vol.path("other")).unwrap();
    write_file(&vol.path("proj/README"), b"project\n");
    write_file(&vol.path("proj/src/main.rs"), b"fn main() {}\n");
    let data = random_bytes(4, 500_000);
    write_file(&vol.path("proj/src/deep/data.bin"), &data);
    write_file(&vol.path("other/outside.txt"), b"not in the snapshot\n");
    write_file(&vol.path("top.txt"), b"not in the snapshot either\n");
    // One name inside the tree, one outside.
    fs::hard_link(vol.path("proj/README"), vol.path("other/readme-link")).unwrap();
    // Two names inside.
    fs::hard_link(vol.path("proj/src/main.rs"), vol.path("proj/main-link")).unwrap();
    let want = tree::snapshot(&vol.path("proj"));

    // A relative --path, from inside the mount.
    let out = Command::new(BIN)
        .args(["snapshot", "create"])
        .arg(&vol.mnt)
        .arg("p1")
        .args(["--path", "proj"])
        .current_dir(&vol.mnt)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    ok(out, "snapshot create --path proj (relative)");
    let snap = vol.path(".snapshots/p1");
    let got = tree::snapshot(&snap);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the snapshot has proj's entries and nothing else"
    );
    let readme = fs::metadata(snap.join("README")).unwrap();
    assert_eq!(
        readme.nlink(),
        1,
        "the name outside the tree is not in the snapshot"
    );
    assert_eq!(fs::metadata(vol.path("proj/README")).unwrap().nlink(), 2);
    let (a, b) = (
        fs::metadata(snap.join("src/main.rs")).unwrap(),
        fs::metadata(snap.join("main-link")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink(), b.nlink()), (b.ino(), 2, 2));
    // Everything else as in the live tree at create (nlink of README aside).
    let mut want_adj = want.clone();
    want_adj.get_mut(Path::new("README")).unwrap().nlink = 1;
    tree::assert_same_tree("a --path snapshot", &got, &want_adj, false);
    assert_bytes_eq(
        "data in a --path snapshot",
        &read_all(&snap.join("src/deep/data.bin")),
        &data,
    );
    let l = list(&vol);
    assert_eq!(entry(&l, "p1")["path"], "proj", "{l:?}");
    assert_eq!(
        n(entry(&l, "p1"), "files"),
        3,
        "three files, each once: {l:?}"
    );
    assert_eq!(
        n(entry(&l, "p1"), "logical_bytes"),
        8 + 13 + 500_000,
        "{l:?}"
    );

    // An absolute --path of a deeper tree; the first snapshot does not change.
    create_of(&vol, "p2", &vol.path("proj/src/deep"));
    assert_eq!(ls_a(&vol.path(".snapshots/p2")), [".", "..", "data.bin"]);
    fs::remove_dir_all(vol.path("proj")).unwrap();
    tree::assert_same_tree(
        "a --path snapshot after its tree was deleted",
        &tree::snapshot(&snap),
        &got,
        true,
    );
    assert_bytes_eq(
        "the deeper snapshot",
        &read_all(&vol.path(".snapshots/p2/data.bin")),
        &data,
    );
    // --path of the mount point itself is the whole volume.
    create_of(&vol, "whole", &vol.mnt);
    let l = list(&vol);
    assert_eq!(entry(&l, "whole")["path"], "", "{l:?}");
    assert!(vol.path(".snapshots/whole/other/outside.txt").exists());
}

/// Item 5: restoring is `cp` out of the snapshot: the same bytes, and the volume stores
/// (almost) nothing new, because the copy references the snapshot's chunks.
#[test]
fn restoring_a_file_is_a_copy_by_reference() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::new();
    let big = random_bytes(5, (64 * MIB) as usize);
    write_file(&vol.path("big.img"), &big);
    create(&vol, "s");
    fs::remove_file(vol.path("big.img")).unwrap();
    sync(&vol);
    let stored = vol.stat_u64("stored_bytes");
    assert!(
        stored >= 64 * MIB,
        "the snapshot keeps the deleted file's data: {stored}"
    );

    // Space alone cannot tell a reference from a byte copy (the copy's chunks would dedup
    // against the snapshot's): the daemon's request counts can.
    let ops = |op: &str| vol.stats()["requests"]["by_op"][op].as_u64().unwrap_or(0);
    let (copies, writes) = (ops("copy_file_range"), ops("write"));
    run(Command::new("cp")
        .arg(vol.path(".snapshots/s/big.img"))
        .arg(vol.path("restored.img")));
    sync(&vol);
    assert!(
        ops("copy_file_range") > copies && ops("write") - writes < 8,
        "cp out of a snapshot is served by copy_file_range, not writes: {}",
        vol.stats()["requests"]
    );
    assert_bytes_eq(
        "the restored file",
        &read_all(&vol.path("restored.img")),
        &big,
    );
    let grown = vol.stat_u64("stored_bytes").saturating_sub(stored);
    assert!(
        grown < MIB,
        "a restore of 64 MiB stored {grown} new bytes: it copied instead of referencing"
    );
    // dedupfs du: the restored file's data is all shared with the snapshot.
    let out = ok(
        dedupfs([
            OsStr::new("du"),
            OsStr::new("--json"),
            vol.path("restored.img").as_os_str(),
        ]),
        "dedupfs du",
    );
    let du: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(n(&du[0], "logical_bytes"), 64 * MIB);
    assert!(
        n(&du[0], "exclusive_bytes") < MIB && n(&du[0], "shared_bytes") >= 64 * MIB,
        "the restored file shares its chunks with the snapshot: {}",
        du[0]
    );
    // With the snapshot gone, the restored file is what keeps the data.
    delete(&vol, "s");
    sync(&vol);
    assert!(vol.stat_u64("stored_bytes") >= 64 * MIB);
    assert_bytes_eq(
        "the restored file after the snapshot's delete",
        &read_all(&vol.path("restored.img")),
        &big,
    );
}

/// Item 6: exclusive bytes are what only the snapshot keeps and what `delete` frees; the
/// kernel shows snapshots appear and go at once (no stale positive or negative dentries).
#[test]
fn exclusive_bytes_are_what_a_delete_frees() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::new();
    let (a, b, c) = (
        random_bytes(6, (8 * MIB) as usize),
        random_bytes(7, (4 * MIB) as usize),
        random_bytes(8, (2 * MIB) as usize),
    );
    write_file(&vol.path("a"), &a);
    write_file(&vol.path("b"), &b);
    write_file(&vol.path("c"), &c);
    create(&vol, "s1");
    let l = list(&vol);
    let s1 = entry(&l, "s1");
    assert_eq!(n(s1, "files"), 3);
    assert_eq!(n(s1, "logical_bytes"), 14 * MIB);
    assert_eq!(
        n(s1, "exclusive_bytes"),
        0,
        "everything is still in the live tree: {s1}"
    );
    assert!(n(s1, "created") > 1_700_000_000, "{s1}");

    // a deleted, b overwritten: only the snapshot keeps their 12 MiB; c is still live.
    fs::remove_file(vol.path("a")).unwrap();
    write_file(&vol.path("b"), &random_bytes(9, (4 * MIB) as usize));
    sync(&vol);
    let l = list(&vol);
    let s1 = entry(&l, "s1").clone();
    let excl = n(&s1, "exclusive_bytes");
    let chunks = n(&s1, "chunks");
    assert!(
        (12 * MIB..12 * MIB + 64 * chunks + 4096).contains(&excl),
        "exclusive ≈ the stored size of a and b (random data is stored raw): {s1}"
    );
    // The text listing shows it too.
    let table = ok(
        dedupfs([
            OsStr::new("snapshot"),
            OsStr::new("list"),
            vol.mnt.as_os_str(),
        ]),
        "snapshot list",
    );
    assert!(
        table.lines().any(|l| l.starts_with("s1 ")),
        "text listing: {table}"
    );

    // s2 is taken without a's and b's old data; it shares c with s1 and the live tree.
    create(&vol, "s2");
    let before = vol.stat_u64("stored_bytes");
    // Cache s1's dentries in the kernel before the delete.
    assert!(vol.path(".snapshots/s1/c").exists());
    assert_eq!(ls_a(&vol.path(".snapshots/s1")), [".", "..", "a", "b", "c"]);
    let out = delete(&vol, "s1");
    assert!(out.contains("s1"), "{out}");
    let freed = before - vol.stat_u64("stored_bytes");
    assert!(
        freed <= excl && excl - freed <= 64 * chunks,
        "delete freed {freed} bytes; snapshot list promised {excl} (+ record headers)"
    );
    assert_eq!(
        stat_errno(&vol.path(".snapshots/s1")),
        libc::ENOENT,
        "the kernel's cached entry went with the snapshot"
    );
    assert_eq!(stat_errno(&vol.path(".snapshots/s1/c")), libc::ENOENT);
    assert!(
        Command::new("ls")
            .arg(vol.path(".snapshots/s1"))
            .output()
            .map(|o| !o.status.success())
            .unwrap(),
        "ls of a deleted snapshot fails at once"
    );
    assert_eq!(ls_a(&vol.path(".snapshots")), [".", "..", "s2"]);
    assert_eq!(names(&list(&vol)), ["s2"]);

    // The last one goes: .snapshots goes with it.
    assert!(vol.path(".snapshots/s2/c").exists());
    delete(&vol, "s2");
    assert_eq!(
        stat_errno(&vol.path(".snapshots")),
        libc::ENOENT,
        ".snapshots is gone with the last snapshot"
    );
    assert!(list(&vol).is_empty());

    // Negative entries: a name looked up (and cached as absent) is there as soon as created.
    assert_eq!(stat_errno(&vol.path(".snapshots")), libc::ENOENT);
    assert_eq!(stat_errno(&vol.path(".snapshots/n1")), libc::ENOENT);
    create(&vol, "n1");
    assert!(stat(&vol.path(".snapshots/n1/c")).is_ok());
    assert!(
        vol.path(".snapshots/n1/c").exists(),
        "a snapshot created after a failed lookup of .snapshots is visible at once"
    );
    assert_eq!(stat_errno(&vol.path(".snapshots/n2")), libc::ENOENT);
    let out = Command::new("ls")
        .arg(vol.path(".snapshots/n2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    create(&vol, "n2");
    assert_eq!(
        ls_a(&vol.path(".snapshots/n2")),
        [".", "..", "b", "c"],
        "a snapshot created after a failed ls of its name is visible at once"
    );
    assert_eq!(
        fs::metadata(vol.path(".snapshots")).unwrap().nlink(),
        4,
        ".snapshots' attributes follow its entries"
    );

    // Data two snapshots share is exclusive to neither: deleting one frees nothing, and
    // then it is the other's.
    write_file(&vol.path("d"), &random_bytes(10, (3 * MIB) as usize));
    create(&vol, "x1");
    create(&vol, "x2");
    fs::remove_file(vol.path("d")).unwrap();
    sync(&vol);
    let l = list(&vol);
    assert_eq!(
        (
            n(entry(&l, "x1"), "exclusive_bytes"),
            n(entry(&l, "x2"), "exclusive_bytes")
        ),
        (0, 0),
        "{l:?}"
    );
    let before = vol.stat_u64("stored_bytes");
    delete(&vol, "x1");
    assert_eq!(
        vol.stat_u64("stored_bytes"),
        before,
        "deleting one of two snapshots that share data frees none of it"
    );
    let x2 = n(entry(&list(&vol), "x2"), "exclusive_bytes");
    assert!(
        (3 * MIB..3 * MIB + 64 * 1024).contains(&x2),
        "the data is the remaining snapshot's own now: {x2}"
    );
    delete(&vol, "x2");
    let freed = before - vol.stat_u64("stored_bytes");
    assert!(
        freed <= x2 && x2 - freed < 64 * 1024,
        "freed {freed}, promised {x2}"
    );
}

/// Item 6, kernel caches: a snapshot deleted and re-created under the same name (which may
/// reuse its slot, and so its inode numbers) shows the new content, not what the kernel had
/// cached for the old one.
#[test]
fn a_snapshot_recreated_under_the_same_name_shows_its_new_content() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::new();
    write_file(&vol.path("f"), b"first version\n");
    create(&vol, "s");
    let f = vol.path(".snapshots/s/f");
    assert_eq!(fs::read(&f).unwrap(), b"first version\n");
    assert_eq!(stat(&f).unwrap().st_size, 14);
    delete(&vol, "s");
    write_file(&vol.path("f"), b"the second, longer version\n");
    create(&vol, "s");
    assert_eq!(stat(&f).unwrap().st_size, 27, "fresh attributes");
    assert_eq!(fs::read(&f).unwrap(), b"the second, longer version\n");

    // The same while a process holds a file of the old snapshot open.
    let held = File::open(&f).unwrap();
    delete(&vol, "s");
    write_file(&vol.path("f"), b"third\n");
    create(&vol, "s");
    assert_eq!(
        stat(&f).unwrap().st_size,
        6,
        "fresh attributes while the old snapshot's file is open"
    );
    assert_eq!(fs::read(&f).unwrap(), b"third\n");
    drop(held);
}

/// Item 7: chunks only a snapshot holds survive the volume's own removal, gc (mounted and
/// not), pack compaction, and fsck agrees.
#[test]
fn gc_and_fsck_keep_what_a_snapshot_holds() {
    if !fuse_available() {
        return;
    }
    // 1 MiB packs: deleting files leaves packs partly dead, which gc compacts. Which records
    // share a pack depends on write-back timing (two writer threads, the 5 s flusher), so a
    // run where no pack came out mixed enough to compact is set up again on a fresh volume.
    let (mut vol, whole, half, report) = {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let vol = Volume::with_args(&["--pack-mib", "1"], &[]);
            fs::create_dir(vol.path("held")).unwrap();
            fs::create_dir(vol.path("other")).unwrap();
            // One file written in one go (one write-back: its chunks follow each other in the packs),
            // whose first half the snapshot gets by reference: once the live tree deletes it, the pack
            // where the halves meet holds records only the snapshot keeps next to dead ones.
            let whole = random_bytes(100, (5 * MIB) as usize);
            write_file(&vol.path("other/whole"), &whole);
            let half = whole.len() as u64 / 2;
            {
                let src = File::open(vol.path("other/whole")).unwrap();
                let dst = File::create(vol.path("held/half")).unwrap();
                let mut done = 0;
                while done < half {
                    done += common::copy_file_range(&src, done, &dst, done, half - done).unwrap();
                }
            }
            create_of(&vol, "s", &vol.path("held"));
            fs::remove_dir_all(vol.path("held")).unwrap();
            fs::remove_dir_all(vol.path("other")).unwrap();
            sync(&vol);
            let stored = vol.stat_u64("stored_bytes");
            assert!(
                stored >= half,
                "the snapshot's data is still stored: {stored}"
            );

            let out = ok(
                dedupfs([
                    OsStr::new("gc"),
                    vol.store.as_os_str(),
                    OsStr::new("--json"),
                ]),
                "gc of the mounted store",
            );
            let report: Value = serde_json::from_str(&out).unwrap();
            let moved = report["compaction"]["chunks_moved"].as_u64().unwrap_or(0);
            if moved > 0 || attempt == 4 {
                break (vol, whole, half, report);
            }
            let copy = vol.path(".snapshots/s/half");
            assert_bytes_eq(
                "a held file after gc",
                &read_all(&copy),
                &whole[..half as usize],
            );
        }
    };
    let held = &whole[..half as usize];
    let copy = vol.path(".snapshots/s/half");
    let check = |what: &str| assert_bytes_eq(what, &read_all(&copy), held);
    // (The daemon compacts on its own only past 64 MiB dead: this is gc's doing.)
    assert!(
        report["compaction"]["chunks_moved"].as_u64().unwrap_or(0) > 0,
        "gc moved live records out of mixed packs, the snapshot's among them: {report}"
    );
    check("a held file after gc of the mounted store");
    fsck_clean(&vol, "fsck of the mounted store");
    vol.unmount();
    fsck_clean(&vol, "fsck after unmount");
    ok(
        dedupfs([
            OsStr::new("gc"),
            vol.store.as_os_str(),
            OsStr::new("--repack"),
        ]),
        "gc of the unmounted store",
    );
    fsck_clean(&vol, "fsck after gc of the unmounted store");
    // fsck --repair rebuilds the volume's chunk bookkeeping from its own tree: it must not
    // take what only a snapshot names for garbage either.
    let out = dedupfs([
        OsStr::new("fsck"),
        vol.store.as_os_str(),
        OsStr::new("--repair"),
        OsStr::new("--json"),
    ]);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("fsck --repair --json: {e}: {}", text(&out)));
    assert!(
        out.status.success() && report["repaired"] == 0,
        "fsck --repair found nothing to repair: {}",
        text(&out)
    );
    fsck_clean(&vol, "fsck after fsck --repair");
    vol.remount();
    check("a held file after gc and a remount");
    // Deleting the snapshot frees it all, and fsck is still clean.
    delete(&vol, "s");
    sync(&vol);
    assert!(
        vol.stat_u64("stored_bytes") < MIB,
        "the delete freed the snapshot's data: {}",
        vol.stats()
    );
    vol.unmount();
    fsck_clean(&vol, "fsck after the delete");
}

/// Item 8: a snapshot survives kill -9 right after `create` returned, with the data written
/// before it (never fsynced); one deleted before a kill -9 stays deleted.
#[test]
fn snapshots_survive_kill_9_and_deletes_stay_done() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    fs::create_dir(vol.path("d")).unwrap();
    let data = random_bytes(10, 3_000_000);
    // Neither fsynced nor synced: create makes it durable.
    write_file(&vol.path("d/data"), &data);
    write_file(&vol.path("small"), b"small\n");
    create(&vol, "kept");
    vol.kill9();
    vol.remount();
    assert_eq!(names(&list(&vol)), ["kept"]);
    assert_bytes_eq(
        "a snapshot after kill -9",
        &read_all(&vol.path(".snapshots/kept/d/data")),
        &data,
    );
    assert_eq!(
        fs::read(vol.path(".snapshots/kept/small")).unwrap(),
        b"small\n"
    );

    let doomed = random_bytes(11, 2_000_000);
    write_file(&vol.path("doomed"), &doomed);
    create(&vol, "gone");
    fs::remove_file(vol.path("doomed")).unwrap();
    sync(&vol);
    let with_it = vol.stat_u64("stored_bytes");
    delete(&vol, "gone");
    vol.kill9();
    vol.remount();
    sync(&vol);
    assert_eq!(
        names(&list(&vol)),
        ["kept"],
        "a deleted snapshot stays deleted"
    );
    assert_eq!(stat_errno(&vol.path(".snapshots/gone")), libc::ENOENT);
    assert!(
        vol.stat_u64("stored_bytes") + 1_900_000 <= with_it,
        "its data stays freed"
    );

    // A crash in the middle of a delete (its file renamed aside, what it held not yet handed
    // back; meta::snapshot) is finished at the next mount, and a snapshot a crash left half
    // written is dropped.
    let dir = vol.store.join("snapshots");
    let files = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = files(&dir);
    write_file(&vol.path("mid"), &random_bytes(13, 1_500_000));
    create(&vol, "interrupted");
    fs::remove_file(vol.path("mid")).unwrap();
    sync(&vol);
    let with_mid = vol.stat_u64("stored_bytes");
    let new: Vec<String> = files(&dir)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    assert_eq!(new.len(), 1, "one file per snapshot: {new:?}");
    vol.kill9();
    fs::rename(dir.join(&new[0]), dir.join(format!(".deleting-{}", new[0]))).unwrap();
    fs::copy(dir.join(&before[0]), dir.join(".tmp-00077.redb")).unwrap();
    vol.remount();
    sync(&vol);
    assert_eq!(names(&list(&vol)), ["kept"], "{}", vol.log());
    assert_eq!(files(&dir), before, "both leftovers are gone");
    assert!(
        vol.stat_u64("stored_bytes") + 1_400_000 <= with_mid,
        "the interrupted delete freed what only it held"
    );
    assert_bytes_eq(
        "the surviving snapshot",
        &read_all(&vol.path(".snapshots/kept/d/data")),
        &data,
    );
    vol.unmount();
    fsck_clean(&vol, "fsck after the crashes");
}

/// Item 9: bad input fails with one line and changes nothing.
#[test]
fn bad_snapshot_requests_fail_with_one_line_and_change_nothing() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::new();
    fs::create_dir(vol.path("dir")).unwrap();
    write_file(&vol.path("dir/file"), b"x");
    create(&vol, "s1");
    let before = list(&vol);
    let files_before = fs::read_dir(vol.store.join("snapshots")).unwrap().count();
    let mnt = vol.mnt.as_os_str();
    let snap = |args: &[&OsStr]| {
        let mut v: Vec<&OsStr> = vec![OsStr::new("snapshot")];
        v.extend_from_slice(args);
        dedupfs(v)
    };
    let create_args = |name: &str| snap(&[OsStr::new("create"), mnt, OsStr::new(name)]);
    refused(&create_args("a/b"), "'/'", "a name with /");
    refused(&create_args(".."), "bad snapshot name", "..");
    refused(&create_args("."), "bad snapshot name", ".");
    refused(&create_args(""), "empty", "an empty name");
    refused(&create_args(&"x".repeat(256)), "255", "a name too long");
    refused(&create_args("tab\there"), "control", "a control character");
    refused(&create_args("s1"), "exists already", "an existing name");
    let outside = vol.scratch();
    let with_path = |p: &Path| {
        snap(&[
            OsStr::new("create"),
            mnt,
            OsStr::new("new"),
            OsStr::new("--path"),
            p.as_os_str(),
        ])
    };
    refused(&with_path(&outside), "outside the volume", "--path outside");
    refused(&with_path(Path::new("/")), "outside the volume", "--path /");
    refused(
        &with_path(&vol.path("dir/file")),
        "not a directory",
        "--path a file",
    );
    refused(
        &with_path(&vol.path("missing")),
        "cannot access",
        "--path missing",
    );
    refused(
        &with_path(&vol.path(".snapshots/s1/dir")),
        "inside a snapshot",
        "--path inside a snapshot",
    );
    refused(
        &snap(&[
            OsStr::new("create"),
            vol.path("dir").as_os_str(),
            OsStr::new("new"),
        ]),
        "not the mount point",
        "MOUNTPOINT a subdirectory",
    );
    refused(
        &snap(&[OsStr::new("create"), outside.as_os_str(), OsStr::new("new")]),
        "not on a dedupfs mount",
        "a path not on dedupfs",
    );
    refused(
        &snap(&[OsStr::new("list"), outside.as_os_str()]),
        "not on a dedupfs mount",
        "list of a path not on dedupfs",
    );
    refused(
        &snap(&[OsStr::new("delete"), mnt, OsStr::new("nosuch")]),
        "no snapshot named",
        "delete of an unknown name",
    );
    refused(
        &snap(&[
            OsStr::new("delete"),
            vol.path("dir").as_os_str(),
            OsStr::new("s1"),
        ]),
        "not the mount point",
        "delete with a subdirectory as MOUNTPOINT",
    );
    refused(
        &with_path(&vol.path(".snapshots")),
        "inside a snapshot",
        "--path .snapshots",
    );
    refused(
        &dedupfs([OsStr::new("du"), vol.path(".snapshots/s1/dir").as_os_str()]),
        "inside a snapshot",
        "dedupfs du inside a snapshot",
    );
    // A relative MOUNTPOINT is fine: list from inside the mount.
    let out = Command::new(BIN)
        .args(["snapshot", "list", ".", "--json"])
        .current_dir(&vol.mnt)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Vec<Value>>(&ok(out, "list .").into_bytes()).unwrap(),
        before
    );
    assert_eq!(list(&vol), before, "snapshot list unchanged");
    assert_eq!(ls_a(&vol.path(".snapshots")), [".", "..", "s1"]);
    assert_eq!(
        fs::read_dir(vol.store.join("snapshots")).unwrap().count(),
        files_before,
        "no file left behind in STORE/snapshots"
    );
}

/// Item 9: a root with an entry of its own named `.snapshots`: create is refused (saying
/// why), and the user's entry stays what the name shows.
#[test]
fn a_users_own_dot_snapshots_is_left_alone() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::new();
    fs::create_dir(vol.path(".snapshots")).unwrap();
    write_file(&vol.path(".snapshots/mine.txt"), b"the user's\n");
    let out = dedupfs([
        OsStr::new("snapshot"),
        OsStr::new("create"),
        vol.mnt.as_os_str(),
        OsStr::new("s"),
    ]);
    refused(
        &out,
        ".snapshots",
        "create with a user's .snapshots in the root",
    );
    assert!(list(&vol).is_empty());
    assert_eq!(
        fs::read(vol.path(".snapshots/mine.txt")).unwrap(),
        b"the user's\n"
    );
    assert!(
        ls_a(&vol.mnt).contains(&".snapshots".to_string()),
        "listed as any entry"
    );
    assert!(
        !vol.store.join("snapshots").exists()
            || fs::read_dir(vol.store.join("snapshots")).unwrap().count() == 0
    );
    // Renamed away, create works and the name shows the snapshots.
    fs::rename(vol.path(".snapshots"), vol.path("mine")).unwrap();
    create(&vol, "s");
    assert_eq!(ls_a(&vol.path(".snapshots")), [".", "..", "s"]);
    assert_eq!(
        fs::read(vol.path(".snapshots/s/mine/mine.txt")).unwrap(),
        b"the user's\n"
    );
}

/// Item 10: snapshots survive a clean unmount; a read-only mount serves them and refuses
/// create and delete with a clear message.
#[test]
fn snapshots_survive_remounts_and_a_read_only_mount_serves_them() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let data = random_bytes(12, 1_000_000);
    write_file(&vol.path("f"), &data);
    create(&vol, "daily 2026-12-01 ñ");
    write_file(&vol.path("g"), b"later\n");
    create(&vol, "two");
    fs::remove_file(vol.path("f")).unwrap();
    let listed = list(&vol);
    let trees = (
        tree::snapshot(&vol.path(".snapshots/daily 2026-12-01 ñ")),
        tree::snapshot(&vol.path(".snapshots/two")),
    );
    vol.unmount();
    vol.remount();
    assert_eq!(list(&vol), listed, "the same list after a remount");
    tree::assert_same_tree(
        "daily",
        &tree::snapshot(&vol.path(".snapshots/daily 2026-12-01 ñ")),
        &trees.0,
        true,
    );
    tree::assert_same_tree(
        "two",
        &tree::snapshot(&vol.path(".snapshots/two")),
        &trees.1,
        true,
    );
    vol.unmount();

    vol.set_mount_args(&["-o", "ro"]);
    vol.remount();
    assert_eq!(list(&vol), listed, "the list on a read-only mount");
    assert_bytes_eq(
        "a snapshot on a read-only mount",
        &read_all(&vol.path(".snapshots/daily 2026-12-01 ñ/f")),
        &data,
    );
    tree::assert_same_tree(
        "two, read-only",
        &tree::snapshot(&vol.path(".snapshots/two")),
        &trees.1,
        true,
    );
    let out = dedupfs([
        OsStr::new("snapshot"),
        OsStr::new("create"),
        vol.mnt.as_os_str(),
        OsStr::new("three"),
    ]);
    refused(&out, "read-only", "create on a read-only mount");
    let out = dedupfs([
        OsStr::new("snapshot"),
        OsStr::new("delete"),
        vol.mnt.as_os_str(),
        OsStr::new("daily 2026-12-01 ñ"),
    ]);
    refused(&out, "read-only", "delete on a read-only mount");
    assert_eq!(list(&vol), listed, "nothing changed");
    vol.unmount();

    vol.set_mount_args(&[]);
    vol.remount();
    assert_eq!(list(&vol), listed);
    delete(&vol, "daily 2026-12-01 ñ");
    assert_eq!(names(&list(&vol)), ["two"]);
    // The list is in the order the snapshots were taken, also when a newer one reuses the
    // number of one deleted before it.
    create(&vol, "three");
    assert_eq!(names(&list(&vol)), ["two", "three"]);
    let table = ok(
        dedupfs([
            OsStr::new("snapshot"),
            OsStr::new("list"),
            vol.mnt.as_os_str(),
        ]),
        "snapshot list",
    );
    let rows: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(rows, ["two", "three"], "{table}");
    vol.remount();
    assert_eq!(names(&list(&vol)), ["two", "three"], "after a remount");
    vol.unmount();
}

/// A snapshot taken while a process appends 4 KiB records to a file: the snapshot's copy of
/// the file, and how many appends had returned before `create` started and when it returned.
fn snapshot_during_appends() -> (Vec<u8>, u64, u64) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let vol = Volume::new();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (done, stop, p) = (done.clone(), stop.clone(), vol.path("log"));
        std::thread::spawn(move || {
            let mut f = OpenOptions::new()
                .append(true)
                .create(true)
                .open(p)
                .unwrap();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                f.write_all(&record(i)).unwrap();
                i += 1;
                done.store(i, Ordering::SeqCst);
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = done.load(Ordering::SeqCst);
    create(&vol, "s");
    let after = done.load(Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    (read_all(&vol.path(".snapshots/s/log")), before, after)
}

const REC: usize = 4096;

fn record(i: u64) -> Vec<u8> {
    let mut r = format!("record {i:010} ").into_bytes();
    r.resize(REC - 1, b'.');
    r.push(b'\n');
    r
}

/// How `got` reads as the log: how many whole, correct records it starts with, how many
/// bytes of the next record follow them (a write under way when the snapshot was taken), and
/// how many NULs then run to its end (`None` if anything else follows).
fn parse_log(got: &[u8]) -> (u64, usize, Option<usize>) {
    let good = got
        .chunks(REC)
        .enumerate()
        .take_while(|(i, r)| *r == record(*i as u64).as_slice())
        .count();
    let rest = &got[good * REC..];
    let next = record(good as u64);
    let torn = rest.iter().zip(&next).take_while(|(a, b)| a == b).count();
    let after = &rest[torn..];
    (
        good as u64,
        torn,
        after.iter().all(|&b| b == 0).then_some(after.len()),
    )
}

/// Item 1, under load: a snapshot taken while a process appends records holds every record
/// whose write returned before `create` started, in order, and none written after `create`
/// returned (a write under way meanwhile may be in part).
#[test]
fn a_snapshot_taken_during_writes_has_every_write_that_returned_before_it() {
    if !fuse_available() {
        return;
    }
    let (got, before, after) = snapshot_during_appends();
    let (good, torn, nuls) = parse_log(&got);
    let what = format!(
        "the snapshot's file: {} bytes, {good} whole records, {torn} bytes of the next, then \
         {nuls:?} NULs; {before} records were written before create, {after} when it returned",
        got.len()
    );
    assert!(nuls.is_some(), "records, then something else: {what}");
    assert!(
        good >= before,
        "a record written before create is missing: {what}"
    );
    assert!(
        got.len() as u64 <= after * REC as u64,
        "it has more than was written when create returned: {what}"
    );
}

/// The same, strictly: the snapshot's file never holds NULs where the file had none. (A
/// write-back's metadata commit used to record the inode's in-memory size while data written
/// since it took its ranges, and the unfinished tail chunk it keeps dirty, were not committed
/// yet, so the durable state a snapshot copies ended in megabytes of NULs.)
#[test]
fn a_snapshot_taken_during_writes_has_no_nuls_the_file_never_held() {
    if !fuse_available() {
        return;
    }
    let (got, before, after) = snapshot_during_appends();
    let (good, torn, nuls) = parse_log(&got);
    assert_eq!(
        nuls,
        Some(0),
        "the snapshot's file: {} bytes, {good} whole records, {torn} bytes of the next, then \
         NULs the file never held; {before} records were written before create, {after} when \
         it returned",
        got.len()
    );
}

/// Item 6, kernel caches: a directory stream of `.snapshots` kept open and rewound (no new
/// open, no lookup: only the kernel's listing cache, which snapshots do not change through a
/// request) shows each snapshot created or deleted since.
#[test]
fn a_rewound_listing_of_the_snapshots_directory_shows_snapshots_come_and_go() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::new();
    write_file(&vol.path("f"), b"data\n");
    // `.snapshots` exists while some snapshot does.
    create(&vol, "keep");
    let dir = common::cstr(&vol.path(".snapshots"));
    // SAFETY: `dir` is a NUL-terminated path; the stream is closed below and used only while
    // open; each dirent is read before the next readdir call.
    let stream = unsafe { libc::opendir(dir.as_ptr()) };
    assert!(!stream.is_null(), "opendir .snapshots");
    let names = || {
        let mut out = Vec::new();
        unsafe {
            libc::rewinddir(stream);
            loop {
                let e = libc::readdir(stream);
                if e.is_null() {
                    break;
                }
                let n = std::ffi::CStr::from_ptr((*e).d_name.as_ptr());
                let n = n.to_string_lossy().into_owned();
                if n != "." && n != ".." {
                    out.push(n);
                }
            }
        }
        out.sort();
        out
    };
    assert_eq!(names(), ["keep"]);
    assert_eq!(names(), ["keep"], "listed again");
    for round in 0..5 {
        let s = format!("s{round}");
        create(&vol, &s);
        assert_eq!(names(), ["keep", s.as_str()], "round {round}: after create");
        delete(&vol, &s);
        assert_eq!(names(), ["keep"], "round {round}: after delete");
    }
    // SAFETY: opened above, closed once.
    unsafe { libc::closedir(stream) };
}
