//! The virtual xattr `user.dedupfs.blake3` on a real mount, against `b3sum` (Debian package).
//!
//! Guards against a digest that is stale after any way of changing a file (append, overwrite in
//! the middle, truncate, hole punch, copy_file_range, rename over it), that misses data still
//! dirty in the daemon's memory, that `listxattr` (and so `cp -a`) exposes, that can be set or
//! removed, or that appears on things that are not regular files.

mod common;

use common::xattr::{getxattr, listxattr, removexattr, setxattr};
use common::{Volume, errno_of, fuse_available, random_bytes};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

const NAME: &str = "user.dedupfs.blake3";

fn b3sum(p: &Path) -> String {
    let out = common::run(Command::new("b3sum").arg("--no-names").arg(p));
    out.trim().to_string()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The attribute equals blake3 of `want` (computed here) and what b3sum reads from the mount.
fn check(p: &Path, want: &[u8], what: &str) {
    let got = getxattr(p, NAME).unwrap_or_else(|e| panic!("{what}: getxattr: {e}"));
    assert_eq!(got.len(), 32, "{what}: the raw 32-byte digest");
    let expected = blake3::hash(want);
    assert_eq!(
        hex(&got),
        expected.to_hex().as_str(),
        "{what}: digest of the content"
    );
    assert_eq!(hex(&got), b3sum(p), "{what}: b3sum agrees");
}

fn b3sum_available() -> bool {
    if common::which("b3sum").is_none() {
        eprintln!("skipped: b3sum is not installed (scripts/install-deps installs it)");
        return false;
    }
    fuse_available()
}

#[test]
fn the_digest_follows_every_kind_of_change() {
    if !b3sum_available() {
        return;
    }
    let vol = Volume::new();
    let p = vol.path("f");
    let mut content = random_bytes(1, 700_000);
    fs::write(&p, &content).unwrap();
    check(&p, &content, "new file");
    check(&p, &content, "asked again (cached)");

    // Append.
    let more = random_bytes(2, 300_000);
    OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(&more)
        .unwrap();
    content.extend_from_slice(&more);
    check(&p, &content, "after an append");

    // Overwrite in the middle (same size: the cached fingerprint must still change).
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"xyz", 400_000).unwrap();
    content[400_000..400_003].copy_from_slice(b"xyz");
    drop(f);
    check(&p, &content, "after an overwrite in the middle");

    // Truncate down and up.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(123_456).unwrap();
    content.truncate(123_456);
    check(&p, &content, "after truncate down");
    f.set_len(2_000_000).unwrap();
    content.resize(2_000_000, 0);
    drop(f);
    check(&p, &content, "after truncate up (a hole)");

    // Punch a hole.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    // SAFETY: a valid fd; fallocate has no memory-safety preconditions.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            10_000,
            50_000,
        )
    };
    assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
    content[10_000..60_000].fill(0);
    drop(f);
    check(&p, &content, "after a punched hole");

    // copy_file_range from another file into the middle.
    let src = vol.path("src");
    let src_data = random_bytes(3, 200_000);
    fs::write(&src, &src_data).unwrap();
    let (s, d) = (
        File::open(&src).unwrap(),
        OpenOptions::new().write(true).open(&p).unwrap(),
    );
    let (mut off_in, mut off_out) = (50_000i64, 1_500_000i64);
    // SAFETY: valid fds and offsets; no buffers are passed.
    let n = unsafe {
        libc::copy_file_range(
            s.as_raw_fd(),
            &mut off_in,
            d.as_raw_fd(),
            &mut off_out,
            100_000,
            0,
        )
    };
    assert_eq!(
        n,
        100_000,
        "copy_file_range: {}",
        std::io::Error::last_os_error()
    );
    content[1_500_000..1_600_000].copy_from_slice(&src_data[50_000..150_000]);
    drop((s, d));
    check(&p, &content, "after copy_file_range into it");

    // Data still dirty in the daemon's memory: written, not flushed, file still open.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"dirty", 7).unwrap();
    content[7..12].copy_from_slice(b"dirty");
    check(&p, &content, "with dirty data not yet written back");
    f.write_all_at(b"again", 1_999_990).unwrap();
    content[1_999_990..1_999_995].copy_from_slice(b"again");
    check(&p, &content, "with more dirty data");
    drop(f);
    check(&p, &content, "after close");

    // Rename another file over it.
    let other = random_bytes(4, 90_000);
    fs::write(vol.path("other"), &other).unwrap();
    fs::rename(vol.path("other"), &p).unwrap();
    check(&p, &other, "after a rename over it");

    // Empty file.
    fs::write(vol.path("empty"), b"").unwrap();
    check(&vol.path("empty"), b"", "an empty file");
}

#[test]
fn the_digest_is_virtual_unlisted_and_read_only() {
    if !b3sum_available() {
        return;
    }
    let mut vol = Volume::new();
    let p = vol.path("f");
    let data = random_bytes(5, 100_000);
    fs::write(&p, &data).unwrap();
    // Reading the digest is not a read of the file: its access time stays (relatime would
    // move it at the first read after the write), also while the file is open.
    let atime = |p: &Path| {
        let m = fs::metadata(p).unwrap();
        (m.atime(), m.atime_nsec())
    };
    let open = File::open(&p).unwrap();
    let before = atime(&p);
    assert_eq!(getxattr(&p, NAME).unwrap().len(), 32);
    drop(open);
    vol.remount(); // past the kernel's cached attributes
    assert_eq!(
        atime(&p),
        before,
        "reading the digest moved the access time"
    );
    setxattr(&p, "user.real", b"1", 0).unwrap();
    check(&p, &data, "before");
    assert_eq!(
        listxattr(&p).unwrap(),
        vec!["user.real".to_string()],
        "not listed"
    );
    assert_eq!(
        errno_of("setxattr of the digest", setxattr(&p, NAME, &[0; 32], 0)),
        libc::EPERM
    );
    assert_eq!(
        errno_of("removexattr of the digest", removexattr(&p, NAME)),
        libc::EPERM
    );
    check(&p, &data, "after the refused changes");

    // Only regular files have one.
    fs::create_dir(vol.path("d")).unwrap();
    assert_eq!(
        errno_of("digest of a directory", getxattr(&vol.path("d"), NAME)),
        libc::ENODATA
    );

    // cp -a copies real xattrs but not the digest; the copy has its own (equal) digest.
    common::run(Command::new("cp").arg("-a").arg(&p).arg(vol.path("copy")));
    assert_eq!(listxattr(&vol.path("copy")).unwrap(), vec!["user.real"]);
    check(&vol.path("copy"), &data, "a cp -a copy");

    // getfattr shows it as hex, as the README says.
    let out = common::run(
        Command::new("getfattr")
            .args(["-n", NAME, "-e", "hex"])
            .arg(&p),
    );
    assert!(
        out.lines()
            .any(|l| l == format!("{NAME}=0x{}", blake3::hash(&data).to_hex())),
        "getfattr -e hex: {out}"
    );
}

#[test]
fn the_digest_survives_a_remount_and_works_read_only() {
    if !b3sum_available() {
        return;
    }
    let mut vol = Volume::new();
    let data = random_bytes(6, 3_000_000);
    fs::write(vol.path("f"), &data).unwrap();
    vol.unmount();
    vol.set_mount_args(&["-o", "ro"]);
    vol.remount();
    check(&vol.path("f"), &data, "on a read-only mount");
    vol.unmount();
}
