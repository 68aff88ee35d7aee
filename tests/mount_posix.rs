//! POSIX semantics through a real FUSE mount.
//!
//! Guards against the gap between the core (tested without FUSE) and what the kernel actually
//! sends: wrong errno values, attributes or sizes the kernel caches wrongly, writes lost between
//! the page cache and the chunk store, offsets that overflow 32 bits, readdir offsets that skip or
//! repeat entries, rename flags ignored, and memory use proportional to a file's apparent size.
//! Several tests remount and check again, so the data must also have reached the store.

mod common;

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::xattr::{getxattr, listxattr, removexattr, setxattr};
use common::{
    GIB, KIB, MIB, Volume, assert_bytes_eq, cstr, cvt, errno_of, fuse_available, random_bytes,
    read_all, readdir_raw,
};

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    let (f, t) = (cstr(from), cstr(to));
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
    cvt(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

fn utimensat(p: &Path, times: [libc::timespec; 2]) -> std::io::Result<()> {
    let c = cstr(p);
    // SAFETY: valid C string and a valid array of two timespecs.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

fn ts(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn create_write_read_roundtrip_survives_remount() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let small = b"hello, dedupfs\n".to_vec();
    let big = random_bytes(1, 3 * MIB as usize + 12345);
    fs::write(vol.path("small"), &small).unwrap();
    fs::write(vol.path("big"), &big).unwrap();
    fs::write(vol.path("empty"), b"").unwrap();

    assert_eq!(read_all(&vol.path("small")), small);
    assert_bytes_eq("big before remount", &read_all(&vol.path("big")), &big);
    assert_eq!(
        fs::metadata(vol.path("big")).unwrap().len(),
        big.len() as u64
    );
    assert_eq!(fs::metadata(vol.path("empty")).unwrap().len(), 0);

    vol.remount();
    assert_eq!(read_all(&vol.path("small")), small);
    assert_bytes_eq("big after remount", &read_all(&vol.path("big")), &big);
    assert_eq!(fs::metadata(vol.path("empty")).unwrap().len(), 0);
    vol.unmount();
}

/// ioctls the filesystem has no use for (`lsattr`'s FS_IOC_GETFLAGS, FIEMAP) get ENOTTY, as
/// from a file without such requests, and the daemon does not log a line per call (`cp` and
/// `fsstress` ask on every file: thousands of lines per run before).
#[test]
fn unsupported_ioctls_and_poll_get_errors_and_no_log_line() {
    if !fuse_available() {
        return;
    }
    use std::os::fd::AsRawFd;
    let mut vol = Volume::new();
    fs::write(vol.path("f"), b"data").unwrap();
    let f = fs::File::open(vol.path("f")).unwrap();
    const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
    const FS_IOC_FIEMAP: libc::c_ulong = 0xc020_660b;
    for _ in 0..50 {
        let mut flags: libc::c_long = 0;
        // SAFETY: FS_IOC_GETFLAGS writes one long through the pointer, which is valid.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS, &mut flags) };
        assert_eq!(r, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOTTY)
        );
    }
    let mut fiemap = [0u64; 8];
    // SAFETY: the buffer is a zeroed struct fiemap with no extents asked for (32 bytes).
    let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP, fiemap.as_mut_ptr()) };
    assert_eq!(r, -1);
    // poll(2) is not implemented either: a regular file is always ready, as on a disk.
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, and its count.
    let r = unsafe { libc::poll(&mut p, 1, 1000) };
    assert_eq!((r, p.revents & libc::POLLIN), (1, libc::POLLIN));
    drop(f);
    vol.unmount();
    let log = vol.log();
    for what in ["ioctl", "poll("] {
        assert!(
            !log.contains(what),
            "the daemon logged {what}:\n{}",
            log.lines()
                .filter(|l| l.contains(what))
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn reads_past_eof_return_nothing_and_short_reads_stop_at_eof() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    fs::write(vol.path("f"), b"0123456789").unwrap();
    let f = File::open(vol.path("f")).unwrap();
    let mut buf = [0xAAu8; 32];
    assert_eq!(f.read_at(&mut buf, 100).unwrap(), 0, "read past EOF");
    assert_eq!(f.read_at(&mut buf, 10).unwrap(), 0, "read at EOF");
    assert_eq!(f.read_at(&mut buf, 7).unwrap(), 3, "read straddling EOF");
    assert_eq!(&buf[..3], b"789");
    drop(f);
    vol.unmount();
}

#[test]
fn append_mode_writes_land_at_end() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let p = vol.path("log");
    fs::write(&p, b"first\n").unwrap();
    for i in 0..100 {
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        // A positioned seek before an O_APPEND write must not matter.
        f.seek(SeekFrom::Start(0)).unwrap();
        writeln!(f, "line {i}").unwrap();
    }
    let mut want = b"first\n".to_vec();
    for i in 0..100 {
        want.extend_from_slice(format!("line {i}\n").as_bytes());
    }
    assert_eq!(read_all(&p), want);
    vol.remount();
    assert_eq!(read_all(&p), want);
    vol.unmount();
}

#[test]
fn overwrite_in_middle_preserves_surrounding_bytes() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let p = vol.path("f");
    let mut model = random_bytes(2, 4 * MIB as usize);
    fs::write(&p, &model).unwrap();
    // Patches of several sizes at awkward offsets: inside a page, across pages, across what is
    // likely a chunk boundary, and one large patch.
    let patches: &[(u64, usize)] = &[
        (1, 1),
        (4095, 2),
        (100_000, 5000),
        (MIB - 7, 300_000),
        (2 * MIB + 3, 1_000_000),
    ];
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    for (i, &(off, len)) in patches.iter().enumerate() {
        let patch = random_bytes(100 + i as u64, len);
        f.write_all_at(&patch, off).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&patch);
    }
    drop(f);
    assert_eq!(fs::metadata(&p).unwrap().len(), model.len() as u64);
    assert_bytes_eq("after patches", &read_all(&p), &model);
    vol.remount();
    assert_bytes_eq("after patches + remount", &read_all(&p), &model);
    vol.unmount();
}

#[test]
fn random_pwrites_match_in_memory_model() {
    use rand::{Rng, SeedableRng};
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let p = vol.path("model");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut model: Vec<u8> = Vec::new();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    for step in 0..300 {
        match rng.random_range(0..10) {
            0 => {
                let len = rng.random_range(0..6 * MIB) as usize;
                f.set_len(len as u64).unwrap();
                model.resize(len, 0);
            }
            1..=7 => {
                let off = rng.random_range(0..6 * MIB) as usize;
                let len = rng.random_range(1..300 * KIB) as usize;
                let data = random_bytes(1000 + step, len);
                f.write_all_at(&data, off as u64).unwrap();
                if model.len() < off + len {
                    model.resize(off + len, 0);
                }
                model[off..off + len].copy_from_slice(&data);
            }
            _ => {
                let off = rng.random_range(0..7 * MIB) as usize;
                let len = rng.random_range(1..400 * KIB) as usize;
                let mut buf = vec![0u8; len];
                let mut got = 0;
                while got < len {
                    let n = f.read_at(&mut buf[got..], (off + got) as u64).unwrap();
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                let want = model.get(off..(off + len).min(model.len())).unwrap_or(&[]);
                assert_bytes_eq(
                    &format!("step {step}: pread({off}, {len})"),
                    &buf[..got],
                    want,
                );
            }
        }
    }
    drop(f);
    assert_eq!(fs::metadata(&p).unwrap().len(), model.len() as u64);
    assert_bytes_eq("final contents", &read_all(&p), &model);
    vol.remount();
    assert_bytes_eq("final contents after remount", &read_all(&p), &model);
    vol.unmount();
}

#[test]
fn truncate_grow_reads_zeros_and_shrink_discards_tail() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let p = vol.path("t");
    let data = random_bytes(3, 300_000);
    fs::write(&p, &data).unwrap();

    // Shrink by path (setattr without a handle)...
    let c = cstr(&p);
    // SAFETY: valid C string.
    cvt(unsafe { libc::truncate(c.as_ptr(), 1000) }).unwrap();
    assert_eq!(read_all(&p), &data[..1000]);

    // ...grow by handle: the new range must read as zeros, not as the old discarded bytes.
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.set_len(200_000).unwrap();
    let got = read_all(&p);
    assert_eq!(got.len(), 200_000);
    assert_eq!(&got[..1000], &data[..1000]);
    assert!(
        got[1000..].iter().all(|&b| b == 0),
        "grown region not zero (first nonzero at {:?})",
        got[1000..].iter().position(|&b| b != 0).map(|i| i + 1000)
    );

    // Shrink to zero, write past EOF: the gap is zeros.
    f.set_len(0).unwrap();
    f.write_all_at(b"xyz", 5000).unwrap();
    drop(f);
    let got = read_all(&p);
    assert_eq!(got.len(), 5003);
    assert!(got[..5000].iter().all(|&b| b == 0));
    assert_eq!(&got[5000..], b"xyz");

    // O_TRUNC on open truncates too.
    let before_remount = got;
    vol.remount();
    assert_eq!(read_all(&p), before_remount);
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
    vol.unmount();
}

#[test]
fn unlinked_file_stays_readable_through_open_descriptor() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let p = vol.path("doomed");
    let data = random_bytes(4, 2 * MIB as usize);
    fs::write(&p, &data).unwrap();
    let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    assert_eq!(
        errno_of("stat after unlink", fs::metadata(&p)),
        libc::ENOENT
    );
    assert!(
        !fs::read_dir(&vol.mnt)
            .unwrap()
            .any(|e| e.unwrap().file_name() == "doomed")
    );
    // Still fully readable and even writable via the descriptor.
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    assert_bytes_eq("unlinked file via fd", &got, &data);
    f.write_all_at(b"still alive", 10).unwrap();
    let mut buf = [0u8; 11];
    f.read_exact_at(&mut buf, 10).unwrap();
    assert_eq!(&buf, b"still alive");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    // A new file with the same name is a different file.
    fs::write(&p, b"new").unwrap();
    f.read_exact_at(&mut buf[..3], 0).unwrap();
    assert_eq!(&buf[..3], &data[..3]);
    drop(f);
    assert_eq!(read_all(&p), b"new");
    vol.unmount();
}

#[test]
fn mkdir_rmdir_and_rmdir_of_nonempty_dir_fails_enotempty() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let d = vol.path("d");
    fs::create_dir(&d).unwrap();
    assert!(fs::metadata(&d).unwrap().is_dir());
    assert_eq!(errno_of("mkdir existing", fs::create_dir(&d)), libc::EEXIST);
    fs::create_dir_all(vol.path("d/e/f/g")).unwrap();
    fs::write(vol.path("d/e/file"), b"x").unwrap();
    assert_eq!(
        errno_of("rmdir non-empty", fs::remove_dir(&d)),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno_of("rmdir of a file", fs::remove_dir(vol.path("d/e/file"))),
        libc::ENOTDIR
    );
    assert_eq!(
        errno_of("rmdir missing", fs::remove_dir(vol.path("nope"))),
        libc::ENOENT
    );
    assert_eq!(
        errno_of("mkdir under a file", fs::create_dir(vol.path("d/e/file/x"))),
        libc::ENOTDIR
    );
    fs::remove_dir(vol.path("d/e/f/g")).unwrap();
    fs::remove_dir(vol.path("d/e/f")).unwrap();
    assert!(!vol.path("d/e/f").exists());
    vol.remount();
    assert!(!vol.path("d/e/f").exists());
    assert_eq!(read_all(&vol.path("d/e/file")), b"x");
    fs::remove_file(vol.path("d/e/file")).unwrap();
    fs::remove_dir(vol.path("d/e")).unwrap();
    fs::remove_dir(&d).unwrap();
    assert_eq!(fs::read_dir(&vol.mnt).unwrap().count(), 0);
    vol.unmount();
}

#[test]
fn rename_over_existing_file_replaces_it_and_keeps_source_inode() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let (a, b) = (vol.path("a"), vol.path("b"));
    fs::write(&a, b"contents of a").unwrap();
    fs::write(&b, b"contents of b").unwrap();
    let ino_a = fs::metadata(&a).unwrap().ino();
    // Hold b open: the replaced file must stay readable through its descriptor.
    let old_b = File::open(&b).unwrap();
    fs::rename(&a, &b).unwrap();
    assert!(!a.exists());
    assert_eq!(read_all(&b), b"contents of a");
    assert_eq!(fs::metadata(&b).unwrap().ino(), ino_a);
    let mut s = String::new();
    (&old_b).read_to_string(&mut s).unwrap();
    assert_eq!(s, "contents of b");
    drop(old_b);
    vol.remount();
    assert!(!a.exists());
    assert_eq!(read_all(&b), b"contents of a");
    assert_eq!(fs::metadata(&b).unwrap().ino(), ino_a);
    vol.unmount();
}

#[test]
fn rename_dir_over_empty_dir_succeeds_and_over_nonempty_dir_fails() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    fs::create_dir_all(vol.path("src/sub")).unwrap();
    fs::write(vol.path("src/sub/f"), b"payload").unwrap();
    fs::create_dir(vol.path("empty")).unwrap();
    fs::create_dir(vol.path("full")).unwrap();
    fs::write(vol.path("full/x"), b"x").unwrap();

    assert_eq!(
        errno_of(
            "rename dir over non-empty dir",
            fs::rename(vol.path("src"), vol.path("full"))
        ),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno_of(
            "rename dir over file",
            fs::rename(vol.path("src"), vol.path("full/x"))
        ),
        libc::ENOTDIR
    );
    assert_eq!(
        errno_of(
            "rename file over dir",
            fs::rename(vol.path("full/x"), vol.path("empty"))
        ),
        libc::EISDIR
    );
    fs::rename(vol.path("src"), vol.path("empty")).unwrap();
    assert!(!vol.path("src").exists());
    assert_eq!(read_all(&vol.path("empty/sub/f")), b"payload");
    // ".." of the moved subtree still resolves.
    assert_eq!(
        fs::metadata(vol.path("empty/sub/..")).unwrap().ino(),
        fs::metadata(vol.path("empty")).unwrap().ino()
    );
    vol.remount();
    assert!(!vol.path("src").exists());
    assert_eq!(read_all(&vol.path("empty/sub/f")), b"payload");
    assert_eq!(read_all(&vol.path("full/x")), b"x");
    vol.unmount();
}

#[test]
fn rename_across_directories_moves_entry_and_updates_parent() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    fs::create_dir_all(vol.path("a/b")).unwrap();
    fs::create_dir_all(vol.path("x/y")).unwrap();
    fs::write(vol.path("a/b/file"), b"moving").unwrap();
    fs::create_dir(vol.path("a/b/dir")).unwrap();
    fs::write(vol.path("a/b/dir/inner"), b"inner").unwrap();
    let ino = fs::metadata(vol.path("a/b/file")).unwrap().ino();

    fs::rename(vol.path("a/b/file"), vol.path("x/y/renamed")).unwrap();
    fs::rename(vol.path("a/b/dir"), vol.path("x/dir")).unwrap();

    assert!(!vol.path("a/b/file").exists());
    assert!(!vol.path("a/b/dir").exists());
    assert_eq!(fs::read_dir(vol.path("a/b")).unwrap().count(), 0);
    assert_eq!(read_all(&vol.path("x/y/renamed")), b"moving");
    assert_eq!(fs::metadata(vol.path("x/y/renamed")).unwrap().ino(), ino);
    assert_eq!(read_all(&vol.path("x/dir/inner")), b"inner");
    let x_ino = fs::metadata(vol.path("x")).unwrap().ino();
    let dotdot = readdir_raw(&vol.path("x/dir"))
        .into_iter()
        .find(|(n, _, _)| n == "..")
        .expect("..");
    assert_eq!(
        dotdot.1, x_ino,
        "'..' of moved dir must point at new parent"
    );

    vol.remount();
    assert_eq!(read_all(&vol.path("x/y/renamed")), b"moving");
    assert_eq!(read_all(&vol.path("x/dir/inner")), b"inner");
    assert!(fs::remove_dir(vol.path("a/b")).is_ok(), "a/b must be empty");
    vol.unmount();
}

/// RENAME_WHITEOUT (what overlayfs asks of its upper layer, and fsstress of any
/// filesystem): the file moves and a whiteout, a character device 0/0 of mode 0 owned by the
/// caller, takes its old name, atomically and durably; with RENAME_EXCHANGE it is EINVAL.
#[test]
fn rename_whiteout_leaves_a_whiteout_device_at_the_old_name() {
    if !fuse_available() {
        return;
    }
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut vol = Volume::new();
    let (a, b, c) = (vol.path("a"), vol.path("b"), vol.path("c"));
    fs::write(&a, b"A").unwrap();
    fs::write(&c, b"C").unwrap();
    renameat2(&a, &b, libc::RENAME_WHITEOUT).unwrap();
    assert_eq!(read_all(&b), b"A");
    let check = |what: &str| {
        let m = fs::symlink_metadata(&a).unwrap_or_else(|e| panic!("{what}: no whiteout: {e}"));
        assert!(m.file_type().is_char_device(), "{what}: {m:?}");
        assert_eq!(
            (m.rdev(), m.mode() & 0o7777, m.nlink()),
            (0, 0, 1),
            "{what}"
        );
        assert_eq!((m.uid(), m.gid()), (0, 0), "{what}: owner");
    };
    check("after the rename");
    // Onto an existing name too (it is replaced), and never with EXCHANGE.
    renameat2(&b, &c, libc::RENAME_WHITEOUT).unwrap();
    assert_eq!(read_all(&c), b"A");
    assert!(
        fs::symlink_metadata(&b)
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert_eq!(
        errno_of(
            "renameat2(EXCHANGE|WHITEOUT)",
            renameat2(&c, &a, libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT)
        ),
        libc::EINVAL
    );
    vol.remount();
    check("after a remount");
    assert_eq!(read_all(&c), b"A");
    vol.unmount();
}

#[test]
fn rename_noreplace_fails_eexist_and_leaves_both_files() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let (a, b) = (vol.path("a"), vol.path("b"));
    fs::write(&a, b"A").unwrap();
    fs::write(&b, b"B").unwrap();
    assert_eq!(
        errno_of(
            "renameat2(NOREPLACE) onto existing",
            renameat2(&a, &b, libc::RENAME_NOREPLACE)
        ),
        libc::EEXIST
    );
    assert_eq!(read_all(&a), b"A");
    assert_eq!(read_all(&b), b"B");
    // Without a target it is a plain rename.
    renameat2(&a, &vol.path("c"), libc::RENAME_NOREPLACE).unwrap();
    assert!(!a.exists());
    assert_eq!(read_all(&vol.path("c")), b"A");
    vol.unmount();
}

#[test]
fn rename_exchange_swaps_file_and_directory_atomically() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let (f, d) = (vol.path("f"), vol.path("d"));
    fs::write(&f, b"file").unwrap();
    fs::create_dir(&d).unwrap();
    fs::write(vol.path("d/inner"), b"inner").unwrap();
    let (ino_f, ino_d) = (
        fs::metadata(&f).unwrap().ino(),
        fs::metadata(&d).unwrap().ino(),
    );
    renameat2(&f, &d, libc::RENAME_EXCHANGE).unwrap();
    assert!(fs::metadata(&f).unwrap().is_dir());
    assert_eq!(fs::metadata(&f).unwrap().ino(), ino_d);
    assert_eq!(read_all(&vol.path("f/inner")), b"inner");
    assert_eq!(read_all(&d), b"file");
    assert_eq!(fs::metadata(&d).unwrap().ino(), ino_f);

    // Exchange across directories, and with a missing target (ENOENT).
    fs::write(vol.path("f/other"), b"other").unwrap();
    renameat2(&vol.path("f/other"), &d, libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(read_all(&d), b"other");
    assert_eq!(read_all(&vol.path("f/other")), b"file");
    assert_eq!(
        errno_of(
            "RENAME_EXCHANGE with missing target",
            renameat2(&d, &vol.path("missing"), libc::RENAME_EXCHANGE)
        ),
        libc::ENOENT
    );

    vol.remount();
    assert!(fs::metadata(&f).unwrap().is_dir());
    assert_eq!(read_all(&d), b"other");
    assert_eq!(read_all(&vol.path("f/other")), b"file");
    assert_eq!(read_all(&vol.path("f/inner")), b"inner");
    vol.unmount();
}

#[test]
fn symlink_readlink_and_resolution() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    fs::create_dir(vol.path("dir")).unwrap();
    fs::write(vol.path("dir/target"), b"through the link").unwrap();
    std::os::unix::fs::symlink("dir/target", vol.path("rel")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/abs/path", vol.path("dangling")).unwrap();
    let long_target = "x/".repeat(1000) + "end"; // 2003 bytes, well past one page of names
    std::os::unix::fs::symlink(&long_target, vol.path("long")).unwrap();
    std::os::unix::fs::symlink("dir", vol.path("dirlink")).unwrap();

    let check = |vol: &Volume| {
        assert_eq!(
            fs::read_link(vol.path("rel")).unwrap(),
            Path::new("dir/target")
        );
        assert_eq!(read_all(&vol.path("rel")), b"through the link");
        assert_eq!(
            fs::read_link(vol.path("dangling")).unwrap(),
            Path::new("/nonexistent/abs/path")
        );
        assert_eq!(
            fs::read_link(vol.path("long")).unwrap(),
            Path::new(&long_target)
        );
        let lm = fs::symlink_metadata(vol.path("rel")).unwrap();
        assert!(lm.file_type().is_symlink());
        assert_eq!(lm.len(), "dir/target".len() as u64, "symlink st_size");
        assert_eq!(read_all(&vol.path("dirlink/target")), b"through the link");
        assert_eq!(
            errno_of("follow dangling", File::open(vol.path("dangling"))),
            libc::ENOENT
        );
    };
    check(&vol);
    assert_eq!(
        errno_of(
            "readlink of a regular file",
            fs::read_link(vol.path("dir/target"))
        ),
        libc::EINVAL
    );
    vol.remount();
    check(&vol);
    vol.unmount();
}

#[test]
fn hard_links_share_inode_nlink_and_data() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    fs::create_dir(vol.path("sub")).unwrap();
    fs::write(vol.path("orig"), b"shared bytes").unwrap();
    fs::hard_link(vol.path("orig"), vol.path("sub/link")).unwrap();
    let m1 = fs::metadata(vol.path("orig")).unwrap();
    let m2 = fs::metadata(vol.path("sub/link")).unwrap();
    assert_eq!(m1.ino(), m2.ino());
    assert_eq!(m1.nlink(), 2);
    assert_eq!(m2.nlink(), 2);

    // A write through one name is visible through the other.
    OpenOptions::new()
        .write(true)
        .open(vol.path("sub/link"))
        .unwrap()
        .write_all_at(b"SHARED", 0)
        .unwrap();
    assert_eq!(read_all(&vol.path("orig")), b"SHARED bytes");
    assert_eq!(
        errno_of(
            "link onto existing name",
            fs::hard_link(vol.path("orig"), vol.path("sub/link"))
        ),
        libc::EEXIST
    );
    assert_eq!(
        errno_of(
            "hard link to a directory",
            fs::hard_link(vol.path("sub"), vol.path("sublink"))
        ),
        libc::EPERM
    );

    vol.remount();
    let m1b = fs::metadata(vol.path("orig")).unwrap();
    assert_eq!(m1b.ino(), m1.ino());
    assert_eq!(m1b.nlink(), 2);
    fs::remove_file(vol.path("orig")).unwrap();
    let m2b = fs::metadata(vol.path("sub/link")).unwrap();
    assert_eq!(m2b.nlink(), 1);
    assert_eq!(read_all(&vol.path("sub/link")), b"SHARED bytes");
    vol.remount();
    assert_eq!(fs::metadata(vol.path("sub/link")).unwrap().nlink(), 1);
    assert_eq!(read_all(&vol.path("sub/link")), b"SHARED bytes");
    vol.unmount();
}

#[test]
fn chmod_and_chown_change_attributes_and_persist() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let p = vol.path("f");
    fs::write(&p, b"x").unwrap();
    fs::create_dir(vol.path("d")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4751)).unwrap();
    fs::set_permissions(vol.path("d"), fs::Permissions::from_mode(0o1700)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o4751);
    assert_eq!(fs::metadata(vol.path("d")).unwrap().mode() & 0o7777, 0o1700);

    if common::is_root() {
        std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
        // chown(-1, gid) leaves the uid alone.
        std::os::unix::fs::chown(&p, None, Some(42)).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 42));
    } else {
        eprintln!("note: not root, chown to other ids not exercised");
    }
    let before = fs::metadata(&p).unwrap();
    vol.remount();
    let after = fs::metadata(&p).unwrap();
    assert_eq!(after.mode(), before.mode());
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
    assert_eq!(fs::metadata(vol.path("d")).unwrap().mode() & 0o7777, 0o1700);
    assert!(fs::metadata(vol.path("d")).unwrap().is_dir());
    vol.unmount();
}

#[test]
fn utimensat_sets_times_and_honours_utime_omit_and_utime_now() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let p = vol.path("f");
    fs::write(&p, b"x").unwrap();

    utimensat(
        &p,
        [
            ts(1_000_000_000, 123_456_789),
            ts(1_500_000_000, 987_654_321),
        ],
    )
    .unwrap();
    let m = fs::metadata(&p).unwrap();
    assert_eq!((m.atime(), m.atime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_500_000_000, 987_654_321));

    // UTIME_OMIT on atime, explicit mtime: atime unchanged.
    utimensat(&p, [ts(0, libc::UTIME_OMIT), ts(1_600_000_000, 5)]).unwrap();
    let m = fs::metadata(&p).unwrap();
    assert_eq!((m.atime(), m.atime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 5));

    // UTIME_NOW on atime, UTIME_OMIT on mtime.
    let before = now_secs();
    utimensat(&p, [ts(0, libc::UTIME_NOW), ts(0, libc::UTIME_OMIT)]).unwrap();
    let after = now_secs();
    let m = fs::metadata(&p).unwrap();
    assert!(
        m.atime() >= before - 1 && m.atime() <= after + 1,
        "UTIME_NOW atime {} not within [{before}, {after}]",
        m.atime()
    );
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 5));

    // Times before the epoch are valid too.
    utimensat(&vol.path("f"), [ts(-1, 0), ts(-86_400, 0)]).unwrap();
    let m = fs::metadata(&p).unwrap();
    assert_eq!((m.atime(), m.mtime()), (-1, -86_400));

    // A write moves mtime forward to about now.
    utimensat(&p, [ts(1_000_000_000, 0), ts(1_000_000_000, 0)]).unwrap();
    let before = now_secs();
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .write_all_at(b"y", 0)
        .unwrap();
    let m = fs::metadata(&p).unwrap();
    assert!(
        m.mtime() >= before - 1,
        "mtime {} not updated by write",
        m.mtime()
    );

    utimensat(&p, [ts(1_234_567_890, 1), ts(1_234_567_891, 2)]).unwrap();
    vol.remount();
    let m = fs::metadata(&p).unwrap();
    assert_eq!((m.atime(), m.atime_nsec()), (1_234_567_890, 1));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_234_567_891, 2));
    vol.unmount();
}

#[test]
fn fstat_after_the_last_name_went_shows_no_links_for_open_directories_and_o_path() {
    // fstests generic/035, and an O_PATH descriptor: the kernel holds these inodes without a
    // file handle the daemon knows of.
    if !fuse_available() {
        return;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let mut vol = Volume::new();
    for d in ["a", "b", "c"] {
        fs::create_dir(vol.path(d)).unwrap();
    }
    fs::write(vol.path("f"), b"12345").unwrap();
    fs::write(vol.path("g"), b"g").unwrap();
    fs::write(vol.path("h"), b"hh").unwrap();
    let over = File::open(vol.path("b")).unwrap();
    let removed = File::open(vol.path("c")).unwrap();
    let path = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(vol.path("f"))
        .unwrap();
    let open_file = File::open(vol.path("h")).unwrap();
    fs::rename(vol.path("a"), vol.path("b")).unwrap();
    fs::remove_dir(vol.path("c")).unwrap();
    fs::remove_file(vol.path("f")).unwrap();
    fs::rename(vol.path("g"), vol.path("h")).unwrap();
    for (what, fd) in [
        ("directory renamed over", &over),
        ("removed directory", &removed),
        ("O_PATH of an unlinked file", &path),
        ("open file renamed over", &open_file),
    ] {
        let m = fd
            .metadata()
            .unwrap_or_else(|e| panic!("fstat of {what}: {e}"));
        assert_eq!(m.nlink(), 0, "{what}");
    }
    assert!(over.metadata().unwrap().is_dir());
    assert_eq!(path.metadata().unwrap().len(), 5);
    drop((over, removed, path, open_file));
    let names = |vol: &Volume| {
        let mut n: Vec<String> = fs::read_dir(vol.path(""))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&vol), ["b", "h"]);
    vol.remount();
    assert_eq!(names(&vol), ["b", "h"]);
    assert_eq!(fs::read(vol.path("h")).unwrap(), b"g");
    vol.unmount();
}

/// A `struct file_handle` with room for any handle (MAX_HANDLE_SZ 128).
#[repr(C)]
struct Handle {
    bytes: u32,
    kind: i32,
    data: [u8; 128],
}

fn name_to_handle(p: &Path) -> Handle {
    let mut h = Handle {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_id = 0;
    let c = cstr(p);
    // SAFETY: valid C string; `h` starts as a file_handle with room for `bytes` bytes.
    cvt(unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c.as_ptr(),
            (&mut h as *mut Handle).cast(),
            &mut mount_id,
            0,
        )
    })
    .unwrap_or_else(|e| panic!("name_to_handle_at {}: {e}", p.display()));
    h
}

fn open_by_handle(mount: &File, h: &mut Handle, flags: i32) -> std::io::Result<File> {
    // SAFETY: `h` is a file_handle filled by name_to_handle_at; the fd returned is ours.
    let fd = cvt(unsafe {
        libc::open_by_handle_at(mount.as_raw_fd(), (h as *mut Handle).cast(), flags)
    })?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[test]
fn file_handles_open_files_and_directories_after_a_remount_and_go_stale_once_deleted() {
    // open_by_handle_at (fstests generic/426, 467, 477) and NFS exports decode a handle whose
    // inode the kernel no longer holds by asking the daemon for "." of it.
    if !fuse_available() || !common::is_root() {
        return; // open_by_handle_at needs CAP_DAC_READ_SEARCH
    }
    let mut vol = Volume::new();
    fs::create_dir_all(vol.path("d/e")).unwrap();
    let data = random_bytes(41, 300 * KIB as usize);
    fs::write(vol.path("d/f"), &data).unwrap();
    fs::write(vol.path("g"), b"to be deleted").unwrap();
    let mut hf = name_to_handle(&vol.path("d/f"));
    let mut hd = name_to_handle(&vol.path("d/e"));
    let mut hg = name_to_handle(&vol.path("g"));
    fs::remove_file(vol.path("g")).unwrap();
    fs::rename(vol.path("d/f"), vol.path("d/e/moved")).unwrap();
    // A fresh mount: the kernel holds none of these inodes.
    vol.remount();
    let root = File::open(vol.path("")).unwrap();
    let mut f = open_by_handle(&root, &mut hf, libc::O_RDONLY).unwrap();
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    assert_bytes_eq(
        "file opened by handle after a rename and a remount",
        &got,
        &data,
    );
    let d = open_by_handle(&root, &mut hd, libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
    assert!(d.metadata().unwrap().is_dir());
    let names: Vec<String> = fs::read_dir(format!("/proc/self/fd/{}", d.as_raw_fd()))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["moved"]);
    assert_eq!(
        errno_of(
            "deleted file by handle",
            open_by_handle(&root, &mut hg, libc::O_RDONLY)
        ),
        libc::ESTALE
    );
    drop((f, d, root));
    vol.unmount();
}

#[test]
fn a_handle_of_a_file_lost_to_a_crash_goes_stale_instead_of_opening_its_successor() {
    // A file whose creation never became durable is gone after kill -9, and its inode number
    // is handed out again; a handle taken before the crash must not open the new file.
    if !fuse_available() || !common::is_root() {
        return; // open_by_handle_at needs CAP_DAC_READ_SEARCH
    }
    let mut vol = Volume::new();
    for _ in 0..5 {
        fs::write(vol.path("lost"), b"created, never made durable").unwrap();
        let ino = fs::metadata(vol.path("lost")).unwrap().ino();
        let mut h = name_to_handle(&vol.path("lost"));
        vol.kill9();
        vol.remount();
        if vol.path("lost").exists() {
            // A durable point came between the write and the kill: try again.
            fs::remove_file(vol.path("lost")).unwrap();
            continue;
        }
        fs::write(vol.path("successor"), b"another file").unwrap();
        assert_eq!(
            fs::metadata(vol.path("successor")).unwrap().ino(),
            ino,
            "precondition: the lost file's inode number is used again"
        );
        let root = File::open(vol.path("")).unwrap();
        let got = open_by_handle(&root, &mut h, libc::O_RDONLY).map(|mut f| {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).map(|_| buf)
        });
        assert!(
            matches!(&got, Err(e) if e.raw_os_error() == Some(libc::ESTALE)),
            "the lost file's handle: {got:?}"
        );
        drop(root);
        vol.unmount();
        return;
    }
    panic!("the file became durable before every one of 5 kills");
}

/// Access time, modification time and change time, each as (seconds, nanoseconds).
fn times(p: &Path) -> [(i64, i64); 3] {
    let m = fs::metadata(p).unwrap();
    [
        (m.atime(), m.atime_nsec()),
        (m.mtime(), m.mtime_nsec()),
        (m.ctime(), m.ctime_nsec()),
    ]
}

#[test]
fn reads_update_access_times_as_relatime_strictatime_noatime_and_nodiratime_say() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let (f, d) = (vol.path("f"), vol.path("d"));
    fs::write(&f, b"hello").unwrap();
    fs::create_dir(&d).unwrap();
    fs::write(d.join("x"), b"x").unwrap();

    // relatime (the default): the first read after a change sets atime, later reads do not
    // (the second `cat` is served from the kernel's page cache).
    let t0 = times(&f);
    assert_eq!(fs::read(&f).unwrap(), b"hello");
    let t1 = times(&f);
    assert!(
        t1[0] > t0[0],
        "first read: atime {:?} -> {:?}",
        t0[0],
        t1[0]
    );
    assert_eq!(t1[1..], t0[1..], "a read changes no other time");
    assert_eq!(fs::read(&f).unwrap(), b"hello");
    assert_eq!(times(&f), t1, "second read");
    let d0 = times(&d);
    assert_eq!(fs::read_dir(&d).unwrap().count(), 1);
    let d1 = times(&d);
    assert!(
        d1[0] > d0[0],
        "first listing: atime {:?} -> {:?}",
        d0[0],
        d1[0]
    );
    assert_eq!(d1[1..], d0[1..]);
    fs::read_dir(&d).unwrap().count();
    assert_eq!(times(&d), d1, "second listing");
    // A write makes the next read update it again, also through a read-write open (direct I/O).
    let rw = OpenOptions::new().read(true).write(true).open(&f).unwrap();
    rw.write_all_at(b"J", 0).unwrap();
    let t2 = times(&f);
    let mut buf = [0u8; 5];
    rw.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"Jello");
    let t3 = times(&f);
    assert!(
        t3[0] > t2[0],
        "read after a write: atime {:?} -> {:?}",
        t2[0],
        t3[0]
    );
    rw.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(times(&f), t3);
    drop(rw);
    // Durable like any attribute.
    vol.remount();
    assert_eq!(times(&f), t3, "after remount");
    assert_eq!(times(&d), d1, "directory after remount");

    // strictatime: every read, also of pages the kernel had cached.
    vol.set_mount_args(&["-o", "strictatime"]);
    vol.remount();
    let mut last = times(&f)[0];
    for i in 0..3 {
        assert_eq!(fs::read(&f).unwrap(), b"Jello");
        let now = times(&f)[0];
        assert!(
            now > last,
            "strictatime read {i}: atime {last:?} -> {now:?}"
        );
        last = now;
    }

    // nodiratime: files as relatime, directories never.
    vol.set_mount_args(&["-o", "nodiratime"]);
    vol.remount();
    fs::write(d.join("y"), b"y").unwrap();
    fs::write(&f, b"again").unwrap();
    let (dt, ft) = (times(&d), times(&f));
    assert_eq!(fs::read_dir(&d).unwrap().count(), 2);
    assert_eq!(fs::read(&f).unwrap(), b"again");
    assert_eq!(times(&d), dt, "nodiratime listing");
    assert!(times(&f)[0] > ft[0], "nodiratime file read");

    // noatime and ro: never.
    for opts in ["noatime", "ro"] {
        vol.set_mount_args(&["-o", opts]);
        vol.remount();
        if opts == "noatime" {
            fs::write(&f, b"third").unwrap();
            fs::write(d.join("z"), b"z").unwrap();
        }
        let (dt, ft) = (times(&d), times(&f));
        fs::read(&f).unwrap();
        fs::read_dir(&d).unwrap().count();
        vol.remount();
        assert_eq!((times(&f), times(&d)), (ft, dt), "{opts}");
    }
    vol.unmount();
}

#[test]
fn xattrs_set_get_list_remove_with_correct_errnos() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let p = vol.path("f");
    fs::write(&p, b"x").unwrap();
    fs::create_dir(vol.path("d")).unwrap();

    setxattr(&p, "user.alpha", b"one", 0).unwrap();
    setxattr(&p, "user.empty", b"", 0).unwrap();
    let big: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    setxattr(&p, "user.binary", &big, 0).unwrap();
    setxattr(&vol.path("d"), "user.ondir", b"dir value", 0).unwrap();

    assert_eq!(getxattr(&p, "user.alpha").unwrap(), b"one");
    assert_eq!(getxattr(&p, "user.empty").unwrap(), b"");
    assert_eq!(getxattr(&p, "user.binary").unwrap(), big);
    assert_eq!(
        getxattr(&vol.path("d"), "user.ondir").unwrap(),
        b"dir value"
    );
    assert_eq!(
        errno_of("getxattr missing", getxattr(&p, "user.missing")),
        libc::ENODATA
    );
    let mut names = listxattr(&p).unwrap();
    names.sort();
    assert_eq!(names, ["user.alpha", "user.binary", "user.empty"]);

    // XATTR_CREATE on an existing name, XATTR_REPLACE on a missing one.
    assert_eq!(
        errno_of(
            "XATTR_CREATE existing",
            setxattr(&p, "user.alpha", b"two", libc::XATTR_CREATE)
        ),
        libc::EEXIST
    );
    assert_eq!(
        errno_of(
            "XATTR_REPLACE missing",
            setxattr(&p, "user.nope", b"two", libc::XATTR_REPLACE)
        ),
        libc::ENODATA
    );
    setxattr(&p, "user.alpha", b"replaced", libc::XATTR_REPLACE).unwrap();
    assert_eq!(getxattr(&p, "user.alpha").unwrap(), b"replaced");

    // Too-small buffer gives ERANGE.
    let (cp, cn) = (cstr(&p), std::ffi::CString::new("user.binary").unwrap());
    let mut small = [0u8; 10];
    // SAFETY: valid C strings; small is valid for 10 bytes.
    let rc = unsafe { libc::getxattr(cp.as_ptr(), cn.as_ptr(), small.as_mut_ptr().cast(), 10) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ERANGE)
    );

    removexattr(&p, "user.empty").unwrap();
    assert_eq!(
        errno_of("removexattr missing", removexattr(&p, "user.empty")),
        libc::ENODATA
    );
    assert_eq!(
        errno_of("getxattr removed", getxattr(&p, "user.empty")),
        libc::ENODATA
    );

    vol.remount();
    let mut names = listxattr(&p).unwrap();
    names.sort();
    assert_eq!(names, ["user.alpha", "user.binary"]);
    assert_eq!(getxattr(&p, "user.alpha").unwrap(), b"replaced");
    assert_eq!(getxattr(&p, "user.binary").unwrap(), big);
    assert_eq!(
        getxattr(&vol.path("d"), "user.ondir").unwrap(),
        b"dir value"
    );
    vol.unmount();
}

#[test]
fn mkfifo_creates_a_working_fifo() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let p = vol.path("pipe");
    let c = cstr(&p);
    // SAFETY: valid C string.
    cvt(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }).unwrap();
    let m = fs::symlink_metadata(&p).unwrap();
    assert!(m.file_type().is_fifo(), "not a fifo: {:?}", m.file_type());
    assert_eq!(m.mode() & 0o777, 0o640);
    // O_RDWR on a fifo never blocks on Linux; data goes through the kernel pipe.
    let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.write_all(b"through the fifo").unwrap();
    let mut buf = [0u8; 16];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"through the fifo");
    drop(f);
    vol.remount();
    assert!(fs::symlink_metadata(&p).unwrap().file_type().is_fifo());
    vol.unmount();
}

#[test]
fn readdir_lists_dot_dotdot_and_every_entry_exactly_once() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let d = vol.path("parent/dir");
    fs::create_dir_all(&d).unwrap();
    // Enough entries, with long names, to need several readdir round trips.
    let mut want = BTreeMap::new();
    for i in 0..1500 {
        let name = format!("entry-{i:05}-{}", "n".repeat(i % 200));
        if i % 10 == 0 {
            fs::create_dir(d.join(&name)).unwrap();
            want.insert(name, libc::DT_DIR);
        } else if i % 10 == 1 {
            std::os::unix::fs::symlink("target", d.join(&name)).unwrap();
            want.insert(name, libc::DT_LNK);
        } else {
            File::create(d.join(&name)).unwrap();
            want.insert(name, libc::DT_REG);
        }
    }
    let check = |vol: &Volume| {
        let dir_ino = fs::metadata(&d).unwrap().ino();
        let parent_ino = fs::metadata(vol.path("parent")).unwrap().ino();
        let entries = readdir_raw(&d);
        let mut seen = BTreeMap::new();
        for (name, ino, ty) in &entries {
            assert!(
                seen.insert(name.clone(), (*ino, *ty)).is_none(),
                "{name} listed twice"
            );
        }
        assert_eq!(seen.get(".").map(|e| e.0), Some(dir_ino), "'.' d_ino");
        assert_eq!(seen.get("..").map(|e| e.0), Some(parent_ino), "'..' d_ino");
        seen.remove(".");
        seen.remove("..");
        let got: Vec<&String> = seen.keys().collect();
        let wanted: Vec<&String> = want.keys().collect();
        assert_eq!(got.len(), wanted.len(), "entry count");
        assert_eq!(got, wanted);
        for (name, (ino, ty)) in &seen {
            let m = fs::symlink_metadata(d.join(name)).unwrap();
            assert_eq!(*ino, m.ino(), "{name}: d_ino vs st_ino");
            if *ty != libc::DT_UNKNOWN {
                assert_eq!(*ty, want[name], "{name}: d_type");
            }
        }
        // `ls -a` agrees (it uses getdents64 with its own buffer size).
        let ls = common::run(std::process::Command::new("ls").arg("-a1").arg(&d));
        let ls: Vec<&str> = ls.lines().collect();
        assert_eq!(ls.len(), want.len() + 2);
        assert!(ls.contains(&".") && ls.contains(&".."));
    };
    check(&vol);
    vol.remount();
    check(&vol);

    // Root lists "." and ".." too.
    let root: Vec<String> = readdir_raw(&vol.mnt).into_iter().map(|e| e.0).collect();
    assert!(root.contains(&".".to_string()) && root.contains(&"..".to_string()));
    assert!(root.contains(&"parent".to_string()));
    vol.unmount();
}

#[test]
fn name_of_255_bytes_works_and_256_bytes_fails_enametoolong() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let ok = "a".repeat(255);
    let too_long = "b".repeat(256);
    fs::write(vol.path(&ok), b"max name").unwrap();
    fs::create_dir(vol.path(&("d".repeat(255)))).unwrap();
    // Multi-byte UTF-8: 85 three-byte characters = 255 bytes.
    let utf8 = "€".repeat(85);
    assert_eq!(utf8.len(), 255);
    fs::write(vol.path(&utf8), b"euro").unwrap();

    assert_eq!(
        errno_of("create 256-byte name", File::create(vol.path(&too_long))),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno_of("mkdir 256-byte name", fs::create_dir(vol.path(&too_long))),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno_of(
            "rename to 256-byte name",
            fs::rename(vol.path(&ok), vol.path(&too_long))
        ),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno_of(
            "symlink with 256-byte name",
            std::os::unix::fs::symlink("t", vol.path(&too_long))
        ),
        libc::ENAMETOOLONG
    );
    vol.remount();
    assert_eq!(read_all(&vol.path(&ok)), b"max name");
    assert_eq!(read_all(&vol.path(&utf8)), b"euro");
    assert!(vol.path(&("d".repeat(255))).is_dir());
    let names: Vec<String> = fs::read_dir(&vol.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    vol.unmount();
}

#[test]
fn statfs_reports_plausible_values() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let c = cstr(&vol.mnt);
    // SAFETY: statvfs is plain old data; zeroed is a valid initial value.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and a valid out pointer.
    cvt(unsafe { libc::statvfs(c.as_ptr(), &mut sv) }).unwrap();
    assert!(sv.f_bsize > 0, "f_bsize {}", sv.f_bsize);
    assert!(sv.f_frsize > 0, "f_frsize {}", sv.f_frsize);
    assert!(sv.f_blocks > 0, "f_blocks {}", sv.f_blocks);
    assert!(
        sv.f_bfree <= sv.f_blocks,
        "bfree {} > blocks {}",
        sv.f_bfree,
        sv.f_blocks
    );
    assert!(
        sv.f_bavail <= sv.f_blocks,
        "bavail {} > blocks {}",
        sv.f_bavail,
        sv.f_blocks
    );
    assert_eq!(sv.f_namemax, 255, "f_namemax");
    // SAFETY: statfs is plain old data.
    let mut sf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and a valid out pointer.
    cvt(unsafe { libc::statfs(c.as_ptr(), &mut sf) }).unwrap();
    assert_eq!(sf.f_type, 0x6573_5546, "FUSE_SUPER_MAGIC");

    // fallocate past the end of a file asking for more than is free: ENOSPC, nothing
    // changed (fstests generic/213); within the free space it extends the file.
    let avail = sv.f_bavail * sv.f_frsize;
    let f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(vol.path("big"))
        .unwrap();
    assert_eq!(
        errno_of("fallocate 2x free", common::fallocate(&f, 0, 0, 2 * avail)),
        libc::ENOSPC
    );
    assert_eq!(
        errno_of(
            "fallocate 2x free, keep size",
            common::fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 4096, 2 * avail)
        ),
        libc::ENOSPC
    );
    assert_eq!(f.metadata().unwrap().len(), 0);
    common::fallocate(&f, 0, 0, MIB).unwrap();
    assert_eq!(f.metadata().unwrap().len(), MIB);
    // Punching a hole never needs space.
    common::fallocate(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        0,
        2 * avail,
    )
    .unwrap();
    drop(f);
    vol.unmount();
}

#[test]
fn file_larger_than_4gib_reads_back_across_32bit_boundaries() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let p = vol.path("huge");
    let at5g = random_bytes(5, 1 << 20);
    let across4g = random_bytes(6, 8192);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(&across4g, 4 * GIB - 4096).unwrap();
    f.write_all_at(&at5g, 5 * GIB).unwrap();
    drop(f);

    let check = |p: &Path| {
        assert_eq!(fs::metadata(p).unwrap().len(), 5 * GIB + MIB);
        let f = File::open(p).unwrap();
        let mut buf = vec![0u8; MIB as usize];
        f.read_exact_at(&mut buf, 5 * GIB).unwrap();
        assert_bytes_eq("1 MiB at 5 GiB", &buf, &at5g);
        let mut buf = vec![0u8; 8192];
        f.read_exact_at(&mut buf, 4 * GIB - 4096).unwrap();
        assert_bytes_eq("8 KiB across 4 GiB", &buf, &across4g);
        let mut head = [0u8; 4];
        f.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(
            &head, b"head",
            "data at 0 must not be aliased by data at 4 GiB"
        );
        let mut hole = vec![0xFFu8; 65536];
        f.read_exact_at(&mut hole, 4 * GIB + 100 * MIB).unwrap();
        assert!(hole.iter().all(|&b| b == 0), "hole at 4.1 GiB not zero");
        f.read_exact_at(&mut hole, GIB).unwrap();
        assert!(hole.iter().all(|&b| b == 0), "hole at 1 GiB not zero");
        // Reading the last bytes straddling EOF.
        let mut tail = [0u8; 100];
        assert_eq!(f.read_at(&mut tail, 5 * GIB + MIB - 10).unwrap(), 10);
        assert_eq!(&tail[..10], &at5g[at5g.len() - 10..]);
    };
    check(&p);
    vol.remount();
    check(&p);
    vol.unmount();
}

#[test]
fn mmap_read_sees_file_contents() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let p = vol.path("m");
    let data = random_bytes(8, 3 * MIB as usize + 100);
    fs::write(&p, &data).unwrap();
    let f = File::open(&p).unwrap();
    // SAFETY: nothing else modifies the file while the map is alive.
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    assert_bytes_eq("mmap read", &map[..], &data);
    drop(map);
    drop(f);
    vol.unmount();
}

#[test]
fn mmap_shared_write_with_msync_is_visible_to_read_and_persists() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let p = vol.path("m");
    let mut model = random_bytes(9, 2 * MIB as usize);
    fs::write(&p, &model).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    // SAFETY: this test is the only user of the file while the map is alive.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&f) }.unwrap();
    for (i, off) in [
        0usize,
        4095,
        4096,
        100_000,
        MIB as usize,
        2 * MIB as usize - 3,
    ]
    .into_iter()
    .enumerate()
    {
        let patch = [0xA0 + i as u8; 3];
        map[off..off + 3].copy_from_slice(&patch);
        model[off..off + 3].copy_from_slice(&patch);
    }
    map.flush().unwrap(); // msync(MS_SYNC)
    // Read through a different descriptor with read(2).
    assert_bytes_eq("read() after msync", &read_all(&p), &model);
    drop(map);
    f.sync_all().unwrap();
    drop(f);
    vol.remount();
    assert_bytes_eq("after remount", &read_all(&p), &model);

    // A file grown by ftruncate and then filled through a shared mapping.
    let q = vol.path("grown");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&q)
        .unwrap();
    f.set_len(256 * KIB).unwrap();
    // SAFETY: only this test uses the file.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&f) }.unwrap();
    let fill = random_bytes(10, 256 * KIB as usize);
    map.copy_from_slice(&fill);
    map.flush().unwrap();
    drop(map);
    drop(f);
    assert_bytes_eq("mmap-filled file", &read_all(&q), &fill);
    vol.remount();
    assert_bytes_eq("mmap-filled file after remount", &read_all(&q), &fill);
    vol.unmount();
}

#[test]
fn one_pib_sparse_file_reads_zeros_at_end_without_memory_growth() {
    if !fuse_available() {
        return;
    }
    const PIB: u64 = 1 << 50;
    let mut vol = Volume::new();
    let p = vol.path("sparse");
    fs::write(&p, b"start").unwrap();
    let rss_before = vol.daemon_rss_kib();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.set_len(PIB).unwrap();
    assert_eq!(f.metadata().unwrap().len(), PIB);
    let mut buf = [0xFFu8; 4096];
    f.read_exact_at(&mut buf, PIB - 4096).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "last 4 KiB of 1 PiB not zero");
    f.read_exact_at(&mut buf, PIB / 2 + 12345).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "middle of 1 PiB not zero");
    let mut start = [0u8; 5];
    f.read_exact_at(&mut start, 0).unwrap();
    assert_eq!(&start, b"start");
    // Write a few bytes near the end, then fsync: must not materialise the hole.
    f.write_all_at(b"end", PIB - 3).unwrap();
    f.sync_all().unwrap();
    let mut end = [0u8; 3];
    f.read_exact_at(&mut end, PIB - 3).unwrap();
    assert_eq!(&end, b"end");
    drop(f);
    let rss_after = vol.daemon_rss_kib();
    assert!(
        rss_after < rss_before + 64 * 1024,
        "daemon RSS grew from {rss_before} KiB to {rss_after} KiB on a sparse 1 PiB file"
    );
    assert!(
        rss_after < 512 * 1024,
        "daemon RSS {rss_after} KiB is not small"
    );
    vol.remount();
    assert_eq!(fs::metadata(&p).unwrap().len(), PIB);
    let f = File::open(&p).unwrap();
    f.read_exact_at(&mut end, PIB - 3).unwrap();
    assert_eq!(&end, b"end");
    f.read_exact_at(&mut buf, PIB - 8192).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    drop(f);
    // Unlinking it must not walk the hole either (unmount has a timeout).
    fs::remove_file(&p).unwrap();
    vol.unmount();
}

#[test]
fn read_only_mount_rejects_writes_with_erofs_but_serves_reads() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    fs::write(vol.path("f"), b"readable").unwrap();
    fs::create_dir(vol.path("d")).unwrap();
    vol.set_mount_args(&["-o", "ro"]);
    vol.remount();
    assert_eq!(read_all(&vol.path("f")), b"readable");
    common::assert_changes_refused("ro mount", &vol.mnt, &vol.path("f"));
    assert_eq!(
        errno_of("rmdir on ro", fs::remove_dir(vol.path("d"))),
        libc::EROFS
    );
    // Maintenance through the daemon that would change the store is refused too; what only
    // reads is served.
    let cli = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let store = vol.store.to_str().unwrap();
    for args in [
        &["set", store, "compression", "lz4"][..],
        &["gc", store][..],
    ] {
        let out = cli(args);
        let text = common::output_text(&out);
        assert!(
            !out.status.success() && text.contains("read-only"),
            "{args:?} on a read-only mount: {text}"
        );
    }
    let out = cli(&["gc", store, "--dry-run"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    vol.unmount();
}

#[test]
fn concurrent_writers_to_distinct_files_do_not_mix_data() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let datas: Vec<Vec<u8>> = (0..4)
        .map(|i| random_bytes(50 + i, 3 * MIB as usize))
        .collect();
    std::thread::scope(|s| {
        for (i, data) in datas.iter().enumerate() {
            let p = vol.path(&format!("w{i}"));
            s.spawn(move || {
                let mut f = File::create(&p).unwrap();
                for piece in data.chunks(64 * 1024 + i) {
                    f.write_all(piece).unwrap();
                }
                f.sync_all().unwrap();
            });
        }
    });
    for (i, data) in datas.iter().enumerate() {
        assert_bytes_eq(
            &format!("w{i}"),
            &read_all(&vol.path(&format!("w{i}"))),
            data,
        );
    }
    vol.remount();
    for (i, data) in datas.iter().enumerate() {
        assert_bytes_eq(
            &format!("w{i} after remount"),
            &read_all(&vol.path(&format!("w{i}"))),
            data,
        );
    }
    vol.unmount();
}

#[test]
fn readdir_interleaved_with_unlink_returns_every_remaining_entry() {
    // `rm -rf` and many cleanup tools read a directory while unlinking what they have read.
    // Entries not yet removed must still be returned exactly once (offset cookies must not
    // shift when earlier entries disappear).
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let d = vol.path("big");
    fs::create_dir(&d).unwrap();
    let n = 3000;
    for i in 0..n {
        File::create(d.join(format!("f{i:05}"))).unwrap();
    }
    let c = cstr(&d);
    // SAFETY: valid C string; DIR* checked and closed below.
    let dir = unsafe { libc::opendir(c.as_ptr()) };
    assert!(!dir.is_null());
    let mut seen = std::collections::BTreeSet::new();
    loop {
        // SAFETY: dir is a valid open DIR*.
        let ent = unsafe { libc::readdir(dir) };
        if ent.is_null() {
            break;
        }
        // SAFETY: ent is valid until the next readdir; d_name is NUL-terminated.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        if name == "." || name == ".." {
            continue;
        }
        assert!(seen.insert(name.clone()), "{name} returned twice");
        fs::remove_file(d.join(&name)).unwrap();
    }
    // SAFETY: dir is valid and not yet closed.
    unsafe { libc::closedir(dir) };
    let left: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        seen.len(),
        n,
        "readdir while unlinking returned {} of {n} entries; still present: {} (e.g. {:?})",
        seen.len(),
        left.len(),
        &left[..left.len().min(5)]
    );
    assert!(left.is_empty());
    fs::remove_dir(&d).unwrap();
    vol.unmount();
}

#[test]
fn copy_file_range_within_volume_copies_exact_bytes() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let data = random_bytes(20, 5 * MIB as usize + 333);
    fs::write(vol.path("src"), &data).unwrap();
    let src = File::open(vol.path("src")).unwrap();
    let dst = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(vol.path("dst"))
        .unwrap();
    // Copy [1 MiB + 7, end) to offset 3 of dst, in several calls.
    let mut off_in: i64 = MIB as i64 + 7;
    let mut off_out: i64 = 3;
    let end = data.len() as i64;
    while off_in < end {
        // SAFETY: valid descriptors and valid pointers to the offsets.
        let n = unsafe {
            libc::copy_file_range(
                std::os::fd::AsRawFd::as_raw_fd(&src),
                &mut off_in,
                std::os::fd::AsRawFd::as_raw_fd(&dst),
                &mut off_out,
                (end - off_in) as usize,
                0,
            )
        };
        assert!(
            n > 0,
            "copy_file_range: {}",
            std::io::Error::last_os_error()
        );
    }
    drop((src, dst));
    let mut want = vec![0u8; 3];
    want.extend_from_slice(&data[MIB as usize + 7..]);
    assert_bytes_eq("copy_file_range result", &read_all(&vol.path("dst")), &want);
    // The source is untouched, and a later write to the copy does not affect it.
    OpenOptions::new()
        .write(true)
        .open(vol.path("dst"))
        .unwrap()
        .write_all_at(b"changed", 100)
        .unwrap();
    assert_bytes_eq("source after copy", &read_all(&vol.path("src")), &data);
    vol.remount();
    want[100..107].copy_from_slice(b"changed");
    assert_bytes_eq("copy after remount", &read_all(&vol.path("dst")), &want);
    assert_bytes_eq("source after remount", &read_all(&vol.path("src")), &data);
    vol.unmount();
}

#[test]
fn st_blocks_counts_dense_data_and_not_holes() {
    // du, cp --sparse and tar --sparse judge files by st_blocks.
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    fs::write(vol.path("dense"), random_bytes(21, 4 * MIB as usize)).unwrap();
    let f = File::create(vol.path("sparse")).unwrap();
    f.set_len(64 * GIB).unwrap();
    f.write_all_at(b"x", 32 * GIB).unwrap();
    drop(f);
    let check = |vol: &Volume| {
        let dense = fs::metadata(vol.path("dense")).unwrap();
        assert!(
            dense.blocks() * 512 >= 4 * MIB,
            "4 MiB dense file reports st_blocks {}",
            dense.blocks()
        );
        assert!(
            dense.blocks() * 512 <= 5 * MIB,
            "4 MiB dense file reports st_blocks {}",
            dense.blocks()
        );
        let sparse = fs::metadata(vol.path("sparse")).unwrap();
        assert_eq!(sparse.len(), 64 * GIB);
        assert!(
            sparse.blocks() * 512 < 64 * MIB,
            "64 GiB file with one byte written reports st_blocks {}",
            sparse.blocks()
        );
    };
    check(&vol);
    vol.remount();
    check(&vol);
    vol.unmount();
}

#[test]
fn directory_mtime_and_file_ctime_advance_on_changes() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let d = vol.path("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("f"), b"x").unwrap();
    let old = ts(1_000_000_000, 0);
    let set_old = |p: &Path| utimensat(p, [old, old]).unwrap();
    let recent = |p: &Path, what: &str| {
        let m = fs::metadata(p).unwrap();
        let now = now_secs();
        assert!(
            m.mtime() >= now - 5,
            "{what}: directory mtime {} not updated (now {now})",
            m.mtime()
        );
    };
    set_old(&d);
    File::create(d.join("g")).unwrap();
    recent(&d, "create in dir");
    set_old(&d);
    fs::remove_file(d.join("g")).unwrap();
    recent(&d, "unlink in dir");
    set_old(&d);
    fs::rename(d.join("f"), d.join("f2")).unwrap();
    recent(&d, "rename within dir");
    set_old(&d);
    fs::create_dir(d.join("sub")).unwrap();
    recent(&d, "mkdir in dir");

    // chmod, chown, link and setxattr change ctime (strictly later) but not mtime.
    let f = d.join("f2");
    set_old(&f);
    let ctime_of = |p: &Path| {
        let m = fs::metadata(p).unwrap();
        (m.ctime(), m.ctime_nsec())
    };
    let mut last = ctime_of(&f);
    let chmod = || fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    let chown = || std::os::unix::fs::chown(&f, None, Some(7)).unwrap();
    let link = || fs::hard_link(&f, d.join("f3")).unwrap();
    let xattr = || setxattr(&f, "user.k", b"v", 0).unwrap();
    let ops: [(&str, &dyn Fn()); 4] = [
        ("chmod", &chmod),
        ("chown", &chown),
        ("link", &link),
        ("setxattr", &xattr),
    ];
    for (what, op) in ops {
        std::thread::sleep(std::time::Duration::from_millis(50));
        op();
        let now = ctime_of(&f);
        assert!(
            now > last,
            "{what} did not advance ctime ({last:?} -> {now:?})"
        );
        last = now;
        assert_eq!(
            fs::metadata(&f).unwrap().mtime(),
            1_000_000_000,
            "{what} changed mtime"
        );
    }
    vol.unmount();
}

/// Synchronous writes: an O_DSYNC or O_SYNC open, and pwritev2 with RWF_DSYNC on a plain one.
/// Each such write returns only once its data is durable; the kernel syncs after a write only
/// through the page cache, which direct I/O bypasses, so the daemon must. After kill -9 and a
/// remount every such write is there, though no fsync was called and the files are still
/// open (found by fstests-style triage: 50 O_DSYNC writes were all lost).
#[test]
fn synchronous_writes_survive_kill_9_without_an_fsync() {
    use std::os::unix::fs::OpenOptionsExt;
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let dsync = random_bytes(81, 50 * 512);
    let osync = random_bytes(82, 70_000);
    let rwf = random_bytes(83, 9000);
    let mut open = Vec::new();
    for (name, flag, data) in [
        ("dsync", libc::O_DSYNC, &dsync),
        ("osync", libc::O_SYNC, &osync),
    ] {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .custom_flags(flag)
            .open(vol.path(name))
            .unwrap();
        for piece in data.chunks(512) {
            f.write_all(piece).unwrap();
        }
        open.push(f);
    }
    let f = File::create(vol.path("rwf")).unwrap();
    let iov = libc::iovec {
        iov_base: rwf.as_ptr() as *mut libc::c_void,
        iov_len: rwf.len(),
    };
    // SAFETY: `iov` describes `rwf`, alive for the call; the descriptor is open.
    let n = unsafe {
        libc::pwritev2(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            &iov,
            1,
            0,
            libc::RWF_DSYNC,
        )
    };
    assert_eq!(n, rwf.len() as isize, "{}", std::io::Error::last_os_error());
    open.push(f);
    vol.kill9();
    drop(open);
    vol.remount();
    assert_bytes_eq("dsync", &read_all(&vol.path("dsync")), &dsync);
    assert_bytes_eq("osync", &read_all(&vol.path("osync")), &osync);
    assert_bytes_eq("rwf", &read_all(&vol.path("rwf")), &rwf);
    vol.unmount();
}
