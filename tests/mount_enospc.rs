//! A full backing disk under a real mount.
//!
//! Guards against the store's filesystem running out of space turning into data loss or a dead
//! volume (README: "A full backing disk gives ENOSPC to the writer; data already committed is
//! untouched and writing works again once space is freed"). The writer must see ENOSPC (not EIO,
//! not success followed by silent loss), from write, fsync or close; data fsynced earlier must
//! read back intact; the daemon must keep serving; once space is freed (outside the store, or by
//! deleting the file that filled it) writes and fsyncs must work again; the volume must unmount
//! cleanly and fsck clean. This includes the metadata database's own commits failing for lack of
//! space, not only chunk files.
//!
//! The store lives in a small tmpfs the test mounts, so these tests need root; they print a
//! `SKIP:` line and pass otherwise.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

use common::{
    BIN, KIB, MIB, Volume, assert_bytes_eq, fuse_available, is_root, random_bytes, read_all,
};

/// Size of the tmpfs holding the store.
const DISK_MIB: u64 = 64;
/// The file that fills the disk is written in pieces of this size, up to [`BIG_MAX`].
const PIECE: usize = MIB as usize;
/// Far more than the disk holds, so the writer must hit the limit.
const BIG_MAX: usize = 4 * DISK_MIB as usize * MIB as usize;

/// A tmpfs of a given size, mounted for one test and detached on drop (declare it before the
/// [`Volume`] whose store it holds, so the volume goes first).
struct Tmpfs {
    dir: PathBuf,
    _tmp: TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Tmpfs {
        let tmp = tempfile::Builder::new()
            .prefix("dedupfs-enospc-")
            .tempdir()
            .expect("temp dir");
        let dir = tmp
            .path()
            .canonicalize()
            .expect("canonicalize")
            .join("disk");
        fs::create_dir(&dir).expect("mkdir disk");
        common::run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={mib}m,mode=0755"))
                .arg("tmpfs")
                .arg(&dir),
        );
        Tmpfs { dir, _tmp: tmp }
    }

    fn free_bytes(&self) -> u64 {
        let s = rustix::fs::statvfs(&self.dir).expect("statvfs tmpfs");
        s.f_bavail * s.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let c = common::cstr(&self.dir);
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// Root, FUSE and a tmpfs are all needed; prints why not otherwise.
fn can_run() -> bool {
    if !fuse_available() {
        return false;
    }
    if !is_root() {
        eprintln!("SKIP: mounting a small tmpfs for the store needs root");
        return false;
    }
    true
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn errno_name(n: i32) -> String {
    match n {
        libc::ENOSPC => "ENOSPC".into(),
        libc::EIO => "EIO".into(),
        libc::EDQUOT => "EDQUOT".into(),
        libc::ENOTCONN => "ENOTCONN (daemon gone)".into(),
        n => format!("errno {n} ({})", io::Error::from_raw_os_error(n)),
    }
}

/// Every error a writer met, by step.
#[derive(Debug, Default)]
struct Errors(Vec<(String, i32)>);

impl Errors {
    fn push(&mut self, step: String, e: &io::Error) {
        self.0.push((step, errno(e)));
    }

    fn describe(&self) -> String {
        self.0
            .iter()
            .map(|(s, n)| format!("{s}: {}", errno_name(*n)))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// At least one error, and every one ENOSPC.
    #[track_caller]
    fn assert_all_enospc(&self, vol: &Volume, what: &str) {
        assert!(
            !self.0.is_empty(),
            "{what}: no error at all although the data cannot fit the disk\n--- daemon log ---\n{}",
            log_tail(vol)
        );
        assert!(
            self.0.iter().all(|(_, n)| *n == libc::ENOSPC),
            "{what}: the writer must get ENOSPC, got: {}\n--- daemon log ---\n{}",
            self.describe(),
            log_tail(vol)
        );
    }
}

fn log_tail(vol: &Volume) -> String {
    let log = vol.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// close(2) with its result (dropping a `File` ignores it).
fn close(f: File) -> io::Result<()> {
    let fd = f.into_raw_fd();
    // SAFETY: `fd` was just released by the File, so it is open and owned by nobody else.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes random data to `path` in [`PIECE`]s until a write fails or `max` bytes are written,
/// then fsyncs and closes it. Returns the bytes written and every error met.
fn write_until_full(path: &Path, seed: u64, max: usize) -> (usize, Errors) {
    let mut errors = Errors::default();
    let f = match File::create(path) {
        Ok(f) => f,
        Err(e) => {
            errors.push("create".into(), &e);
            return (0, errors);
        }
    };
    let mut off = 0;
    while off < max {
        let piece = random_bytes(seed + off as u64, PIECE);
        if let Err(e) = f.write_all_at(&piece, off as u64) {
            errors.push(format!("write at {} MiB", off as u64 / MIB), &e);
            break;
        }
        off += PIECE;
    }
    if let Err(e) = f.sync_all() {
        errors.push("fsync".into(), &e);
    }
    if let Err(e) = close(f) {
        errors.push("close".into(), &e);
    }
    (off, errors)
}

/// Writes `data` to `path`, fsyncs it and its directory (panics on any error).
fn write_durably(vol: &Volume, rel: &str, data: &[u8]) {
    let p = vol.path(rel);
    let step = |what: &str, r: io::Result<()>| {
        if let Err(e) = r {
            panic!(
                "{what} {rel}: {} ({e})\n--- daemon log ---\n{}",
                errno_name(errno(&e)),
                log_tail(vol)
            );
        }
    };
    let f = match File::create(&p) {
        Ok(f) => f,
        Err(e) => {
            step("create", Err(e));
            unreachable!()
        }
    };
    step("write", f.write_all_at(data, 0));
    step("fsync", f.sync_all());
    step("close", close(f));
    let dir = p.parent().expect("parent");
    step("fsync dir of", File::open(dir).and_then(|d| d.sync_all()));
}

/// Fills the tmpfs from outside the store (zeros in `name`) until it has no space left.
fn fill_outside(disk: &Tmpfs, name: &str) -> u64 {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(disk.dir.join(name))
        .expect("create filler");
    let mut n = 0u64;
    for piece in [MIB as usize, 4 * KIB as usize] {
        let zeros = vec![0u8; piece];
        while f.write_all(&zeros).is_ok() {
            n += piece as u64;
        }
    }
    n
}

#[track_caller]
fn assert_daemon_alive(vol: &mut Volume, when: &str) {
    if let Some(status) = vol.child.try_wait().expect("poll daemon") {
        panic!(
            "daemon died {when}: {status}\n--- daemon log ---\n{}",
            log_tail(vol)
        );
    }
    assert!(
        common::is_mountpoint(&vol.mnt),
        "{} no longer mounted {when}",
        vol.mnt.display()
    );
}

/// `dedupfs fsck STORE --json --verify-data`: no error findings and a zero exit.
#[track_caller]
fn assert_fsck_clean(store: &Path) {
    let out = Command::new(BIN)
        .arg("fsck")
        .arg(store)
        .args(["--json", "--verify-data"])
        .stdin(Stdio::null())
        .output()
        .expect("run fsck");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "fsck printed no JSON ({e}), exit {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let errors: Vec<_> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["severity"] == "error")
        .collect();
    assert!(
        errors.is_empty() && out.status.success(),
        "fsck after the full disk: exit {}, errors: {errors:#?}",
        out.status
    );
}

/// Files fsynced before the disk fills; checked after each phase.
struct Kept(Vec<(String, Vec<u8>)>);

impl Kept {
    fn write(vol: &Volume) -> Kept {
        let mut v = Vec::new();
        for (i, len) in [MIB, 3 * MIB, 100 * KIB].into_iter().enumerate() {
            let data = random_bytes(1000 + i as u64, len as usize);
            let name = format!("kept{i}");
            write_durably(vol, &name, &data);
            v.push((name, data));
        }
        Kept(v)
    }

    #[track_caller]
    fn check(&self, vol: &Volume, when: &str) {
        for (name, data) in &self.0 {
            let got = fs::read(vol.path(name)).unwrap_or_else(|e| {
                panic!(
                    "{when}: reading fsynced {name} failed: {e}\n--- daemon log ---\n{}",
                    log_tail(vol)
                )
            });
            assert_bytes_eq(&format!("{when}: fsynced {name}"), &got, data);
        }
    }
}

/// After space is back: a new file is written, fsynced and read back; the volume unmounts
/// cleanly, fscks clean and still holds everything after a remount.
/// `after_remount` checks what else must have survived.
fn recovers(vol: &mut Volume, kept: &Kept, seed: u64, after_remount: &dyn Fn(&Volume)) {
    let again = random_bytes(seed, 4 * MIB as usize);
    write_durably(vol, "after-space-freed", &again);
    assert_bytes_eq(
        "written after space was freed",
        &read_all(&vol.path("after-space-freed")),
        &again,
    );
    kept.check(vol, "after space was freed");
    vol.unmount();
    assert_fsck_clean(&vol.store);
    vol.remount();
    kept.check(vol, "after remount");
    assert_bytes_eq(
        "written after space was freed, after remount",
        &read_all(&vol.path("after-space-freed")),
        &again,
    );
    after_remount(vol);
    vol.unmount();
}

#[test]
fn writer_gets_enospc_on_a_full_disk_and_writes_work_again_once_space_is_freed_outside() {
    if !can_run() {
        return;
    }
    let disk = Tmpfs::mount(DISK_MIB);
    let mut vol = Volume::with_store_at(&disk.dir.join("store"), &[]);
    let kept = Kept::write(&vol);
    // Space the test can give back from outside the store.
    let filler = disk.dir.join("filler");
    fs::write(&filler, vec![0u8; 16 * MIB as usize]).expect("write filler");

    let (written, errors) = write_until_full(&vol.path("big"), 7, BIG_MAX);
    eprintln!(
        "big file: {} MiB accepted, errors: {}; tmpfs free {} KiB",
        written as u64 / MIB,
        errors.describe(),
        disk.free_bytes() / KIB
    );
    errors.assert_all_enospc(&vol, "writing past the end of the disk");
    assert_daemon_alive(&mut vol, "after ENOSPC");
    kept.check(&vol, "with the disk full");

    fs::remove_file(&filler).expect("remove filler");
    if let Err(e) = fs::remove_file(vol.path("big")) {
        panic!(
            "unlink big after space was freed: {} ({e})\n--- daemon log ---\n{}",
            errno_name(errno(&e)),
            log_tail(&vol)
        );
    }
    assert_daemon_alive(&mut vol, "after freeing space");
    recovers(&mut vol, &kept, 8, &|_| {});
}

#[test]
fn deleting_the_file_that_filled_the_disk_makes_room_again() {
    if !can_run() {
        return;
    }
    let disk = Tmpfs::mount(DISK_MIB);
    let mut vol = Volume::with_store_at(&disk.dir.join("store"), &[]);
    let kept = Kept::write(&vol);
    let free_before = disk.free_bytes();

    let (written, errors) = write_until_full(&vol.path("big"), 17, BIG_MAX);
    eprintln!(
        "big file: {} MiB accepted, errors: {}; tmpfs free {} KiB",
        written as u64 / MIB,
        errors.describe(),
        disk.free_bytes() / KIB
    );
    errors.assert_all_enospc(&vol, "writing past the end of the disk");
    assert_daemon_alive(&mut vol, "after ENOSPC");
    kept.check(&vol, "with the disk full");

    // The user's way out: delete the file that filled the disk, from inside the volume.
    if let Err(e) = fs::remove_file(vol.path("big")) {
        panic!(
            "unlink of the big file on the full disk: {} ({e})\n--- daemon log ---\n{}",
            errno_name(errno(&e)),
            log_tail(&vol)
        );
    }
    if let Err(e) = File::open(&vol.mnt).and_then(|d| d.sync_all()) {
        panic!(
            "fsync of the directory after deleting the big file: {} ({e}); tmpfs free {} KiB\n\
             --- store ---\n{}--- daemon log ---\n{}",
            errno_name(errno(&e)),
            disk.free_bytes() / KIB,
            du(&vol.store),
            log_tail(&vol)
        );
    }
    assert_daemon_alive(&mut vol, "after deleting the big file");
    // The big file's chunks are gone once its removal is durable.
    let free_after = disk.free_bytes();
    eprintln!(
        "tmpfs free: {} KiB before the big file, {} KiB after deleting it",
        free_before / KIB,
        free_after / KIB
    );
    assert!(
        free_after + 2 * MIB >= free_before,
        "deleting the big file gave back only {} of {} KiB: chunk files or temp files leaked\n--- store ---\n{}--- daemon log ---\n{}",
        free_after / KIB,
        free_before / KIB,
        du(&vol.store),
        log_tail(&vol)
    );
    recovers(&mut vol, &kept, 18, &|_| {});
}

#[test]
fn metadata_commits_failing_for_lack_of_space_give_enospc_and_recover() {
    if !can_run() {
        return;
    }
    let disk = Tmpfs::mount(DISK_MIB);
    let mut vol = Volume::with_store_at(&disk.dir.join("store"), &[]);
    let kept = Kept::write(&vol);
    // No byte left on the disk: chunk puts and database commits alike must fail.
    let filled = fill_outside(&disk, "filler");
    eprintln!("filled {} KiB outside the store", filled / KIB);

    // Metadata only (no chunk is written): directories, empty files, renames, each directory
    // fsynced, until the database cannot grow any more.
    let mut errors = Errors::default();
    let mut durable_dirs = 0;
    'outer: for i in 0..5000 {
        let d = vol.path(&format!("dir{i}"));
        if let Err(e) = fs::create_dir(&d) {
            errors.push(format!("mkdir dir{i}"), &e);
            break;
        }
        for k in 0..20 {
            let p = d.join(format!("file{k}"));
            if let Err(e) = File::create(&p).and_then(close) {
                errors.push(format!("create dir{i}/file{k}"), &e);
                break 'outer;
            }
            if let Err(e) = fs::rename(&p, d.join(format!("renamed{k}"))) {
                errors.push(format!("rename dir{i}/file{k}"), &e);
                break 'outer;
            }
        }
        if let Err(e) = File::open(&d).and_then(|f| f.sync_all()) {
            errors.push(format!("fsync dir{i}"), &e);
            break;
        }
        if let Err(e) = File::open(&vol.mnt).and_then(|f| f.sync_all()) {
            errors.push(format!("fsync root after dir{i}"), &e);
            break;
        }
        durable_dirs = i + 1;
    }
    eprintln!(
        "{durable_dirs} directories of 20 renamed files made durable before the first error: {}",
        errors.describe()
    );
    errors.assert_all_enospc(&vol, "metadata operations on a full disk");
    assert_daemon_alive(&mut vol, "after metadata ENOSPC");
    kept.check(&vol, "with the disk full");

    // Data on the full disk: a small file's chunk cannot be stored either.
    let (_, errors) = write_until_full(&vol.path("small"), 27, 4 * KIB as usize);
    errors.assert_all_enospc(&vol, "a small write + fsync on a full disk");
    assert_daemon_alive(&mut vol, "after data ENOSPC");

    fs::remove_file(disk.dir.join("filler")).expect("remove filler");
    // Everything works again, metadata included.
    for i in 0..20 {
        let d = vol.path(&format!("later{i}"));
        if let Err(e) = fs::create_dir(&d).and_then(|()| File::open(&vol.mnt)?.sync_all()) {
            panic!(
                "mkdir + fsync dir later{i} after space was freed: {} ({e})\n--- daemon log ---\n{}",
                errno_name(errno(&e)),
                log_tail(&vol)
            );
        }
    }
    recovers(&mut vol, &kept, 28, &|vol| {
        for i in 0..durable_dirs {
            for k in 0..20 {
                let p = vol.path(&format!("dir{i}/renamed{k}"));
                assert!(
                    p.is_file(),
                    "{} made durable on the nearly full disk is gone",
                    p.display()
                );
            }
        }
        for i in 0..20 {
            assert!(vol.path(&format!("later{i}")).is_dir(), "later{i} lost");
        }
    });
}

/// Space used in the store, for failure messages: `du -sk` of its entries and the number of
/// chunk files.
fn du(store: &Path) -> String {
    let mut out = String::new();
    if let Ok(rd) = fs::read_dir(store) {
        for e in rd.flatten() {
            if let Ok(o) = Command::new("du").arg("-sk").arg(e.path()).output() {
                out.push_str(&String::from_utf8_lossy(&o.stdout));
            }
        }
    }
    let chunks = Command::new("find")
        .arg(store.join("chunks"))
        .args(["-type", "f"])
        .output()
        .map(|o| o.stdout.iter().filter(|&&b| b == b'\n').count())
        .unwrap_or(0);
    out.push_str(&format!("{chunks} chunk files\n"));
    // Pack by pack: which ones kept dead records.
    if let Ok(rd) = fs::read_dir(store.join("packs")) {
        let mut packs: Vec<(String, u64)> = rd
            .flatten()
            .map(|e| {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                (e.file_name().to_string_lossy().into_owned(), len)
            })
            .collect();
        packs.sort();
        for (name, len) in packs {
            out.push_str(&format!("  packs/{name}: {} KiB\n", len / KIB));
        }
    }
    out
}

/// A daemon whose log cannot be written (its disk full: `mount --background` logs to
/// STORE/daemon.log, on the store's own disk) keeps serving and unmounts cleanly. The logging
/// library reported a failed write with `eprintln!`, which panicked on the same failing stderr
/// and took the mount down (found filling a tmpfs store: the writer got ECONNABORTED).
/// stderr on /dev/full makes every log write fail with ENOSPC.
#[test]
fn a_daemon_whose_log_cannot_be_written_keeps_serving() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = tmp.path().join("store");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir mnt");
    common::run(Command::new(BIN).arg("init").arg(&store));
    let full = OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let mut child = Command::new(BIN)
        .arg("mount")
        .arg(&store)
        .arg(&mnt)
        .env("DEDUPFS_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(full)
        .spawn()
        .expect("spawn daemon");
    let start = std::time::Instant::now();
    while !common::is_mountpoint(&mnt) {
        if let Some(status) = child.try_wait().expect("poll daemon") {
            panic!("the daemon exited before mounting: {status}");
        }
        assert!(start.elapsed().as_secs() < 20, "no mount after 20 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let data = random_bytes(5, 300 * 1024);
    let p = mnt.join("f");
    let written = fs::write(&p, &data).and_then(|()| File::open(&p)?.sync_all());
    let back = fs::read(&p);
    let alive = child.try_wait().expect("poll daemon").is_none();
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    let status = child.wait().expect("wait daemon");
    assert!(alive, "the daemon died writing its log");
    written.expect("write + fsync with a failing log");
    assert!(back.expect("read back") == data, "read back other bytes");
    assert!(status.success(), "daemon exit status {status}");
}

/// `dedupfs sync MOUNTPOINT` run for its exit code, with its stderr.
fn dedupfs_sync(vol: &Volume) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("sync")
        .arg(&vol.mnt)
        .stdin(Stdio::null())
        .output()
        .expect("run dedupfs sync");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dedupfs_sync_reports_enospc_on_a_full_disk_and_succeeds_once_space_is_freed() {
    if !can_run() {
        return;
    }
    let disk = Tmpfs::mount(DISK_MIB);
    let mut vol = Volume::with_store_at(&disk.dir.join("store"), &[]);
    let kept = Kept::write(&vol);
    // The file exists durably before the disk fills; its data goes into the daemon's buffers
    // afterwards, so the write succeeds and only making it durable needs space.
    write_durably(&vol, "unsynced", b"");
    let filled = fill_outside(&disk, "filler");
    eprintln!("filled {} KiB outside the store", filled / KIB);
    let data = random_bytes(41, 300 * KIB as usize + 17);
    let f = OpenOptions::new()
        .write(true)
        .open(vol.path("unsynced"))
        .expect("open unsynced");
    if let Err(e) = f.write_all_at(&data, 0) {
        panic!(
            "a buffered write on the full disk failed: {} ({e})",
            errno_name(errno(&e))
        );
    }

    let (ok, stderr) = dedupfs_sync(&vol);
    assert!(
        !ok,
        "dedupfs sync succeeded with no space for the data\n--- daemon log ---\n{}",
        log_tail(&vol)
    );
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one line expected: {stderr:?}"
    );
    assert!(
        stderr.contains("ENOSPC") && stderr.contains(&vol.mnt.display().to_string()),
        "the error must name ENOSPC and the mount: {stderr:?}"
    );
    assert_daemon_alive(&mut vol, "after a failed dedupfs sync");
    kept.check(&vol, "after a failed dedupfs sync");

    fs::remove_file(disk.dir.join("filler")).expect("remove filler");
    let (ok, stderr) = dedupfs_sync(&vol);
    assert!(
        ok,
        "dedupfs sync failed after space was freed: {stderr}\n--- daemon log ---\n{}",
        log_tail(&vol)
    );
    // Durable now, although never fsynced and still open: a crash must not lose it.
    vol.kill9();
    drop(f);
    vol.remount();
    assert_bytes_eq(
        "synced by dedupfs sync, after kill -9",
        &read_all(&vol.path("unsynced")),
        &data,
    );
    kept.check(&vol, "after kill -9 and remount");
    vol.unmount();
    assert_fsck_clean(&vol.store);
}

/// A directory too big for a handle's in-memory listing is listed whole and removed with
/// `rm -rf` on a full disk (its listing cannot go to a scratch file there, and deleting is how
/// a user makes room).
#[test]
fn a_big_directory_is_listed_and_removed_on_a_full_disk() {
    if !can_run() {
        return;
    }
    let n = dedupfs::fs::LISTING_IN_MEMORY + 3000;
    let disk = Tmpfs::mount(DISK_MIB);
    let mut vol = Volume::with_store_at(&disk.dir.join("store"), &[]);
    let big = vol.path("big");
    fs::create_dir(&big).unwrap();
    for i in 0..n {
        File::create(big.join(format!("f{i:06}"))).unwrap();
    }
    File::open(&big).and_then(|d| d.sync_all()).unwrap();
    fill_outside(&disk, "filler");
    let ls = Command::new("ls").arg("-f").arg(&big).output().unwrap();
    assert!(
        ls.status.success(),
        "ls -f on a full disk: {}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&ls.stderr),
        log_tail(&vol)
    );
    assert_eq!(String::from_utf8_lossy(&ls.stdout).lines().count(), n + 2);
    let rm = Command::new("rm").arg("-rf").arg(&big).output().unwrap();
    assert!(
        rm.status.success() && !big.exists(),
        "rm -rf on a full disk: {}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&rm.stderr),
        log_tail(&vol)
    );
    fs::remove_file(disk.dir.join("filler")).unwrap();
    assert_daemon_alive(&mut vol, "after removing the big directory");
}
