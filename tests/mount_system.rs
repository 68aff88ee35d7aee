//! dedupfs as a system filesystem: `mount -t fuse.dedupfs`, an /etc/fstab line, systemd units,
//! `dedupfs sync`, completions and the man page.
//!
//! Guards against: mount(8) failing or hanging because the program does not accept the form
//! mount.fuse3 runs (`dedupfs STORE MOUNTPOINT -o OPTIONS`, no subcommand) or an option it
//! passes (dev, suid, noatime, fstab-only options), returning before the mount is live, or
//! ignoring `ro` and the kernel flags; `dedupfs sync` returning before the data is durable (a
//! crash right after it must lose nothing, although sync(2) never reaches a FUSE mount), or
//! accepting a path that is not on a dedupfs mount; a systemd unit that does not parse; a
//! `Type=notify` unit declared started before the mount is live; completions or a man page
//! that are empty or malformed; a daemon that releases the store lock before closing its
//! databases, so that a remount right after `umount` was told the pack index was damaged.
//!
//! The mount(8) tests run in a private mount namespace (`unshare -m`) with a temporary
//! /etc/fstab and /usr/local/sbin bind-mounted over the real ones: mount(8) gives its helpers
//! no PATH, so mount.fuse3's shell looks for `dedupfs` in the default directories only, and the
//! machine's own fstab and binaries stay untouched.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    BIN, Volume, fuse_available, is_mountpoint, is_root, pids_mentioning, random_bytes, read_all,
    which,
};

/// Runs `dedupfs ARGS`; returns (success, stdout, stderr).
fn dedupfs(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run dedupfs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Requires a failure with exactly one line on stderr; returns that line.
#[track_caller]
fn one_line_failure(what: &str, args: &[&std::ffi::OsStr]) -> String {
    let (ok, stdout, stderr) = dedupfs(args);
    assert!(!ok, "{what}: succeeded (stdout {stdout:?})");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "{what}: the error must be one line, got {stderr:?}"
    );
    stderr.trim().to_string()
}

/// SIGKILLs every daemon of `store` (failure paths: a daemon started by mount(8) is no child
/// of ours, and may live in a mount namespace that only it keeps alive).
fn kill_daemons_of(store: &Path) {
    for pid in pids_mentioning(&store.display().to_string()) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// Where mount.fuse3 is, if fuse3 is installed.
fn mount_fuse3() -> Option<PathBuf> {
    ["/sbin/mount.fuse3", "/usr/sbin/mount.fuse3"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

#[test]
fn sync_refuses_paths_that_are_not_on_a_dedupfs_mount_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let e = one_line_failure(
        "sync of a plain directory",
        &["sync".as_ref(), tmp.path().as_os_str()],
    );
    assert!(e.contains("not on a dedupfs mount"), "{e}");
    let missing = tmp.path().join("missing");
    let e = one_line_failure(
        "sync of a missing path",
        &["sync".as_ref(), missing.as_os_str()],
    );
    assert!(e.contains(&missing.display().to_string()), "{e}");
}

#[test]
fn dedupfs_sync_makes_unsynced_writes_to_open_files_survive_kill_9() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    fs::create_dir(vol.path("dir")).unwrap();
    // Never fsynced, still open: the periodic flusher keeps the unfinished tail chunk of an
    // open file in memory, so only a real durable point saves all of it.
    let data = random_bytes(7, 3 * (1 << 20) + 12_345);
    let f = fs::File::create(vol.path("dir/open")).unwrap();
    f.write_all_at(&data, 0).unwrap();
    fs::write(vol.path("closed"), b"closed, never fsynced").unwrap();

    // Any path inside the mount names it.
    let (ok, stdout, stderr) = dedupfs(&["sync".as_ref(), vol.path("dir").as_os_str()]);
    assert!(
        ok,
        "dedupfs sync failed: {stderr}\n--- daemon log ---\n{}",
        vol.log()
    );
    assert!(
        stdout.is_empty(),
        "sync prints nothing on success: {stdout:?}"
    );
    // Right away, well within the 5 s flush interval.
    vol.kill9();
    drop(f);
    vol.remount();
    common::assert_bytes_eq(
        "open file after dedupfs sync and kill -9",
        &read_all(&vol.path("dir/open")),
        &data,
    );
    assert_eq!(read_all(&vol.path("closed")), b"closed, never fsynced");
    vol.unmount();
}

#[test]
fn mount_helper_form_refuses_bad_input_with_one_line_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let store = root.join("store");
    let mnt = root.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let (ok, _, stderr) = dedupfs(&["init".as_ref(), store.as_os_str()]);
    assert!(ok, "init: {stderr}");
    let listing = |p: &Path| {
        let mut v: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let before = listing(&store);

    let e = one_line_failure(
        "an unknown option",
        &[
            store.as_os_str(),
            mnt.as_os_str(),
            "-o".as_ref(),
            "rw,bogus_opt,noatime".as_ref(),
        ],
    );
    assert!(e.contains("'bogus_opt'"), "the option must be named: {e}");
    let e = one_line_failure(
        "a missing mountpoint",
        &[store.as_os_str(), root.join("nowhere").as_os_str()],
    );
    assert!(e.contains("nowhere"), "{e}");
    let e = one_line_failure(
        "a directory that is not a store",
        &[mnt.as_os_str(), mnt.as_os_str()],
    );
    assert!(e.contains("not a dedupfs store"), "{e}");
    // A store a newer dedupfs made (its marker's format line): refused before anything in it
    // is opened, by the mount and by every other command.
    let newer = root.join("newer");
    let (ok, _, stderr) = dedupfs(&["init".as_ref(), newer.as_os_str()]);
    assert!(ok, "init: {stderr}");
    let marker = fs::read_to_string(newer.join("DEDUPFS")).unwrap();
    assert!(marker.starts_with("dedupfs store\nformat "), "{marker:?}");
    fs::write(newer.join("DEDUPFS"), "dedupfs store\nformat 99\n").unwrap();
    let newer_before = listing(&newer);
    for args in [
        vec![newer.as_os_str(), mnt.as_os_str()],
        vec!["fsck".as_ref(), "--repair".as_ref(), newer.as_os_str()],
        vec!["stats".as_ref(), newer.as_os_str()],
    ] {
        let e = one_line_failure("a store of a newer dedupfs", &args);
        assert!(
            e.contains("newer dedupfs") && e.contains("format 99"),
            "{e}"
        );
    }
    assert_eq!(listing(&newer), newer_before, "a refused store was changed");
    let e = one_line_failure("a mistyped command", &["stat".as_ref(), store.as_os_str()]);
    assert!(
        e.contains("'stat'") && e.contains("did you mean 'stats'"),
        "{e}"
    );
    // With two paths after it, it reads like the mount form with one argument too many:
    // still named as the mistyped command it is, not as a clap conflict about the last path.
    let e = one_line_failure(
        "a mistyped command with two paths",
        &["moutn".as_ref(), store.as_os_str(), mnt.as_os_str()],
    );
    assert!(
        e.contains("'moutn'") && e.contains("did you mean 'mount'"),
        "{e}"
    );
    // A real command with an argument missing keeps clap's message about the argument.
    let (ok, _, stderr) = dedupfs(&["completions".as_ref()]);
    assert!(
        !ok && stderr.contains("required") && !stderr.contains("neither a command"),
        "{stderr}"
    );

    assert!(!is_mountpoint(&mnt), "a refused mount left a mount behind");
    assert_eq!(listing(&store), before, "a refused mount changed the store");
    assert!(pids_mentioning(&store.display().to_string()).is_empty());
}

#[test]
fn mount_helper_form_returns_silently_once_the_mount_is_live_and_honours_options() {
    if !fuse_available() {
        return;
    }
    let (vol, guard) = unmounted_store_with_a_file();

    // Exactly as mount.fuse3 runs it (options as observed from fuse3 3.14 for
    // `mount -t fuse.dedupfs -o ro,noatime,x-systemd.automount,...`).
    let (ok, stdout, stderr) = dedupfs(&[
        vol.store.as_os_str(),
        vol.mnt.as_os_str(),
        "-o".as_ref(),
        "ro,allow_other,noatime,x-systemd.automount,default_permissions,dev,suid".as_ref(),
    ]);
    assert!(ok, "helper form failed: {stderr}");
    assert!(
        stdout.is_empty() && stderr.is_empty(),
        "a mount helper prints nothing on success: {stdout:?} {stderr:?}"
    );
    // No polling: live when the command returned.
    assert!(is_mountpoint(&vol.mnt));
    assert_eq!(read_all(&vol.path("f")), b"persisted");
    let err = fs::write(vol.path("new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "write on ro: {err}");
    let opts = mount_options(&vol.mnt);
    for want in ["ro", "noatime", "allow_other", "default_permissions"] {
        assert!(opts.contains(&want.to_string()), "{want} missing: {opts:?}");
    }
    for unwanted in ["nodev", "nosuid"] {
        assert!(
            !opts.contains(&unwanted.to_string()),
            "dev,suid asked for, {unwanted} set: {opts:?}"
        );
    }
    let fstype = mount_fstype(&vol.mnt);
    assert_eq!(fstype, "fuse.dedupfs");
    umount(&vol.mnt);
    wait_store_free(&vol.store);
    drop(guard);
}

/// `umount MNT`, retried while the kernel still reports it busy (it releases files closed a
/// moment ago asynchronously), as the harness's own unmount does.
fn umount(mnt: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("umount")
            .arg(mnt)
            .stdin(Stdio::null())
            .output()
            .expect("run umount");
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if !(err.contains("busy") && Instant::now() < deadline) {
            panic!("umount {} failed ({}): {err}", mnt.display(), out.status);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The per-mount and superblock options of the mount at `mnt` (mountinfo fields 6 and last).
fn mount_options(mnt: &Path) -> Vec<String> {
    let line = mountinfo_line(mnt);
    let fields: Vec<&str> = line.split(' ').collect();
    let mut opts: Vec<String> = fields[5].split(',').map(String::from).collect();
    let superopts = line.rsplit(' ').next().unwrap();
    opts.extend(superopts.split(',').map(String::from));
    opts
}

fn mount_fstype(mnt: &Path) -> String {
    let line = mountinfo_line(mnt);
    let right = line.split(" - ").nth(1).unwrap().to_string();
    right.split(' ').next().unwrap().to_string()
}

fn mountinfo_line(mnt: &Path) -> String {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = mnt.display().to_string();
    info.lines()
        .find(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .unwrap_or_else(|| panic!("{want} not in the mount table"))
        .to_string()
}

/// Waits until no process holds the store's lock (the daemon exits after its final sync,
/// which follows the unmount).
fn wait_store_free(store: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pids_mentioning(&store.display().to_string()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the daemon of {} still runs 60 s after umount",
            store.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// On drop (a failed assertion included), detaches the mount and kills the store's daemons.
struct KillDaemons(PathBuf, PathBuf);

/// A store holding `/f` = "persisted", unmounted, for tests that mount it in other ways; the
/// guard kills whatever daemon of it is left when the test ends.
fn unmounted_store_with_a_file() -> (Volume, KillDaemons) {
    let mut vol = Volume::new();
    fs::write(vol.path("f"), b"persisted").unwrap();
    vol.unmount();
    let guard = KillDaemons(vol.store.clone(), vol.mnt.clone());
    (vol, guard)
}

impl Drop for KillDaemons {
    fn drop(&mut self) {
        if is_mountpoint(&self.1) {
            let _ = Command::new("umount").arg("-l").arg(&self.1).status();
        }
        kill_daemons_of(&self.0);
    }
}

/// The script run by `unshare -m`: every step prints a marker the test checks, and a failing
/// step stops it. Arguments: STORE MOUNTPOINT BINDIR FSTAB.
const MOUNT_SCRIPT: &str = r#"
set -eu
STORE=$1 MNT=$2 BINDIR=$3 FSTAB=$4
trap 'if mountpoint -q "$MNT"; then umount -l "$MNT"; fi' EXIT
# mount(8) passes no PATH to its helpers; set the default one so that a dedupfs elsewhere
# on the caller's PATH cannot be picked instead of the binary under test.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount --bind "$BINDIR" /usr/local/sbin
mount --bind "$FSTAB" /etc/fstab
# Retried while busy: the kernel releases files closed a moment ago asynchronously.
umount_mnt() {
    for _ in $(seq 100); do
        if umount "$MNT" 2>"$BINDIR/umount.err"; then return 0; fi
        grep -q busy "$BINDIR/umount.err" || break
        sleep 0.1
    done
    cat "$BINDIR/umount.err"; return 1
}
wait_store_free() {
    flock -w 60 "$STORE/lock" true || { echo "DAEMON-STILL-RUNNING"; exit 1; }
}

echo "== unknown option"
if mount -t fuse.dedupfs -o noatime,bogus_opt "$STORE" "$MNT" 2>"$BINDIR/err"; then
    echo "BAD-OPTION-ACCEPTED"; exit 1
fi
echo "error: $(cat "$BINDIR/err")"
if mountpoint -q "$MNT"; then echo "MOUNTED-DESPITE-BAD-OPTION"; exit 1; fi

echo "== mount -t fuse.dedupfs -o ro"
mount -t fuse.dedupfs -o ro,noatime,nodev,nosuid,noexec "$STORE" "$MNT"
echo "content: $(cat "$MNT/f")"
echo "findmnt: $(findmnt -n -o FSTYPE,VFS-OPTIONS "$MNT")"
if touch "$MNT/new" 2>"$BINDIR/err"; then echo "RO-WRITE-SUCCEEDED"; exit 1; fi
echo "ro write: $(cat "$BINDIR/err")"
if mount -o remount,rw "$MNT" 2>"$BINDIR/err"; then echo "RO-DAEMON-REMOUNTED-RW"; exit 1; fi
echo "ro remount rw: $(cat "$BINDIR/err")"
umount_mnt
wait_store_free

echo "== mount MOUNTPOINT from fstab"
mount "$MNT"
echo "content: $(cat "$MNT/f")"
echo "findmnt: $(findmnt -n -o FSTYPE,VFS-OPTIONS,FS-OPTIONS "$MNT")"
echo "from fstab" > "$MNT/g"
mount -o remount,ro "$MNT"
echo "remounted: $(findmnt -n -o VFS-OPTIONS "$MNT")"
if touch "$MNT/h" 2>"$BINDIR/err"; then echo "REMOUNT-RO-WRITE-SUCCEEDED"; exit 1; fi
echo "remount ro write: $(cat "$BINDIR/err")"
mount -o remount,rw "$MNT"
echo "after remount rw" > "$MNT/h"
dedupfs sync "$MNT"
echo "synced"
umount_mnt
wait_store_free
echo "== done"
"#;

#[test]
fn mount_t_fuse_dedupfs_and_an_fstab_line_work_through_mount_fuse3() {
    if !fuse_available() {
        return;
    }
    if !is_root() {
        eprintln!("SKIP: mount(8) of a fuse.dedupfs volume with a private namespace needs root");
        return;
    }
    let Some(helper) = mount_fuse3() else {
        eprintln!(
            "SKIP: /sbin/mount.fuse3 missing (package fuse3; scripts/install-deps installs it)"
        );
        return;
    };
    for tool in [
        "unshare",
        "mount",
        "umount",
        "findmnt",
        "mountpoint",
        "flock",
    ] {
        assert!(which(tool).is_some(), "{tool} (util-linux) missing");
    }
    eprintln!("mount helper: {}", helper.display());
    let (mut vol, guard) = unmounted_store_with_a_file();

    let work = vol.scratch();
    let bindir = work.join("sbin");
    fs::create_dir(&bindir).unwrap();
    std::os::unix::fs::symlink(BIN, bindir.join("dedupfs")).unwrap();
    let fstab = work.join("fstab");
    let mut tab = fs::File::create(&fstab).unwrap();
    writeln!(
        tab,
        "# dedupfs test fstab\n{} {} fuse.dedupfs noatime,allow_other,nofail,_netdev,x-systemd.device-timeout=5s 0 0",
        vol.store.display(),
        vol.mnt.display()
    )
    .unwrap();
    drop(tab);

    let out_path = work.join("script.out");
    let out = fs::File::create(&out_path).unwrap();
    let mut child = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-c",
            MOUNT_SCRIPT,
            "bash",
        ])
        .arg(&vol.store)
        .arg(&vol.mnt)
        .arg(&bindir)
        .arg(&fstab)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("run unshare");
    let status = wait_or_kill(&mut child, Duration::from_secs(180));
    let output = fs::read_to_string(&out_path).unwrap_or_default();
    let log = fs::read_to_string(vol.store.join("daemon.log")).unwrap_or_default();
    let context = format!("--- script output ---\n{output}--- STORE/daemon.log ---\n{log}");
    assert!(
        status.is_some_and(|s| s.success()),
        "script failed ({status:?})\n{context}"
    );

    assert!(output.contains("== done"), "{context}");
    assert!(
        output.contains("error: dedupfs: error: unknown mount option 'bogus_opt'"),
        "mount(8) must pass on the one-line error naming the option\n{context}"
    );
    assert_eq!(
        output.matches("content: persisted").count(),
        2,
        "both mounts must serve the volume as soon as mount(8) returns\n{context}"
    );
    assert!(output.contains("Read-only file system"), "{context}");
    let findmnt: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("findmnt:"))
        .collect();
    assert_eq!(findmnt.len(), 2, "{context}");
    for want in ["fuse.dedupfs", "ro", "noatime", "nodev", "nosuid", "noexec"] {
        assert!(
            findmnt[0].split([' ', ',']).any(|o| o == want),
            "mount -t -o ro,noatime,nodev,nosuid,noexec: {want} missing\n{context}"
        );
    }
    // mount.fuse3 adds dev,suid for root; fstab asked for noatime and allow_other.
    for want in ["fuse.dedupfs", "rw", "noatime", "allow_other"] {
        assert!(
            findmnt[1].split([' ', ',']).any(|o| o == want),
            "fstab mount: {want} missing\n{context}"
        );
    }
    for unwanted in ["nodev", "nosuid"] {
        assert!(
            !findmnt[1].split([' ', ',']).any(|o| o == unwanted),
            "fstab mount: {unwanted} set although mount.fuse3 passed dev,suid\n{context}"
        );
    }
    // `mount -o remount,...` (through the helper): ro and back to rw on a read-write daemon;
    // rw refused, with the reason, on a daemon that serves the volume read-only.
    let line = |prefix: &str| {
        output
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix}\n{context}"))
            .to_string()
    };
    assert!(
        line("remounted:").split([' ', ',']).any(|o| o == "ro"),
        "{context}"
    );
    assert!(
        line("remount ro write:").contains("Read-only file system"),
        "{context}"
    );
    assert!(
        line("ro remount rw:").contains("serves the volume read-only"),
        "{context}"
    );
    drop(guard);

    // What the fstab mount wrote is in the store.
    vol.remount();
    assert_eq!(read_all(&vol.path("g")), b"from fstab\n");
    assert_eq!(read_all(&vol.path("h")), b"after remount rw\n");
    vol.unmount();
}

/// Waits for `child` up to `timeout`; kills it (and returns None) after that.
fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("poll child") {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn foreground_mount_tells_systemd_ready_only_once_the_mount_is_live() {
    if !fuse_available() {
        return;
    }
    let (vol, guard) = unmounted_store_with_a_file();
    let sock_path = vol.scratch().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log_path = vol.scratch().join("notify-daemon.log");
    let log = fs::File::create(&log_path).unwrap();
    let mut child = Command::new(BIN)
        .arg("mount")
        .arg(&vol.store)
        .arg(&vol.mnt)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let log = || fs::read_to_string(&log_path).unwrap_or_default();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no READY=1 within 30 s ({e})\n--- daemon log ---\n{}",
            log()
        )
    });
    // Freeze the daemon at once, so a READY=1 sent before the mount(2) is caught as such
    // rather than overtaken by the mount while this thread wakes up.
    // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGSTOP) };
    let mounted = is_mountpoint(&vol.mnt);
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
    assert_eq!(&buf[..n], b"READY=1");
    // Nothing polled: the unit is started now, so the mount must be usable now.
    assert!(mounted, "READY=1 before the mount");
    assert_eq!(read_all(&vol.path("f")), b"persisted");
    umount(&vol.mnt);
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no STOPPING=1 ({e})\n--- daemon log ---\n{}", log()));
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = wait_or_kill(&mut child, Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "daemon exit {status:?}\n{}",
        log()
    );
    drop(guard);
}

#[test]
fn shipped_systemd_units_pass_systemd_analyze_verify() {
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("SKIP: systemd-analyze not installed (package systemd)");
        return;
    };
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let tmp = tempfile::tempdir().unwrap();
    // The template as an instance (the mountpoint /srv/vms, escaped), and the mount example.
    let service = fs::read_to_string(contrib.join("dedupfs@.service")).unwrap();
    assert!(
        service.contains("ExecStart=/usr/local/bin/dedupfs mount "),
        "the unit runs dedupfs from where the README installs it"
    );
    // systemd-analyze checks that ExecStart names an executable: point it at the binary
    // under test instead of the installed one.
    let service = service.replace("/usr/local/bin/dedupfs", BIN);
    let units = [
        ("dedupfs@srv-vms.service", service),
        (
            "srv-vms.mount",
            fs::read_to_string(contrib.join("srv-vms.mount")).unwrap(),
        ),
    ];
    let mut paths = Vec::new();
    for (name, text) in &units {
        let p = tmp.path().join(name);
        fs::write(&p, text).unwrap();
        paths.push(p);
    }
    // Documentation=man:dedupfs(1) is checked with man(1) when it is there: against the
    // pages `dedupfs man --dir` writes, as the README installs them.
    let mut cmd = Command::new(analyze);
    cmd.arg("verify");
    if which("man").is_some() {
        let man1 = tmp.path().join("man/man1");
        let (ok, _, stderr) = dedupfs(&["man".as_ref(), "--dir".as_ref(), man1.as_os_str()]);
        assert!(ok, "dedupfs man --dir: {stderr}");
        cmd.env("MANPATH", tmp.path().join("man"));
    } else {
        cmd.arg("--man=no");
    }
    let out = cmd.args(&paths).stdin(Stdio::null()).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    // Unknown settings and bad values are only warnings: none may name our units.
    for (name, _) in &units {
        assert!(
            !text.contains(name),
            "systemd-analyze verify complained about {name}:\n{text}"
        );
    }
}

#[test]
fn completions_and_man_pages_are_generated_from_the_cli() {
    let subcommands = [
        "init",
        "mount",
        "sync",
        "stats",
        "fsck",
        "gc",
        "set",
        "completions",
        "man",
    ];
    let (ok, bash, err) = dedupfs(&["completions".as_ref(), "bash".as_ref()]);
    assert!(ok, "{err}");
    for sub in subcommands {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    if let Some(bash_bin) = which("bash") {
        let mut c = Command::new(bash_bin)
            .arg("-n")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(bash.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "bash -n rejects the completion script: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (shell, marker) in [("zsh", "#compdef dedupfs"), ("fish", "complete -c dedupfs")] {
        let (ok, text, err) = dedupfs(&["completions".as_ref(), shell.as_ref()]);
        assert!(ok && text.contains(marker), "{shell}: {err}{text}");
    }
    refused_by_clap(&["completions".as_ref(), "tcsh".as_ref()]);

    let (ok, page, err) = dedupfs(&["man".as_ref()]);
    assert!(ok, "{err}");
    assert!(page.starts_with(".ie") || page.starts_with(".TH"), "{page}");
    assert!(page.contains(".TH dedupfs 1"), "{page}");
    assert!(
        page.contains("fuse.dedupfs"),
        "the page explains the mount(8) form"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("man1");
    let (ok, _, err) = dedupfs(&["man".as_ref(), "--dir".as_ref(), dir.as_os_str()]);
    assert!(ok, "{err}");
    for sub in subcommands {
        let p = dir.join(format!("dedupfs-{sub}.1"));
        let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(text.contains(&format!(".TH dedupfs-{sub} 1")), "{text}");
    }
    // Rendered by man(1) itself, with warnings on, when it is installed.
    if which("man").is_some() {
        for name in ["dedupfs.1", "dedupfs-sync.1", "dedupfs-mount.1"] {
            let out = Command::new("man")
                .args(["--warnings", "-l"])
                .arg(dir.join(name))
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "80")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "man -l {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(text.contains("SYNOPSIS"), "man -l {name}: {text}");
        }
    } else {
        eprintln!("note: man(1) not installed; man pages checked as text only");
    }
}

/// An unknown shell is refused (by clap, with its usage text) and prints nothing on stdout.
fn refused_by_clap(args: &[&std::ffi::OsStr]) {
    let (ok, stdout, stderr) = dedupfs(args);
    assert!(!ok && stdout.is_empty(), "{args:?} accepted: {stdout}");
    assert!(stderr.contains("invalid value"), "{stderr}");
}

#[test]
fn the_store_is_unlocked_only_after_the_daemon_closed_its_databases() {
    use dedupfs::volume::{self, VolumeError};
    if !fuse_available() {
        return;
    }
    let (mut vol, guard) = unmounted_store_with_a_file();
    for round in 0..5 {
        let (ok, _, stderr) = dedupfs(&[vol.store.as_os_str(), vol.mnt.as_os_str()]);
        assert!(ok, "round {round}: mount failed: {stderr}");
        umount(&vol.mnt);
        // Like `umount MP && mount MP`, only faster: open the store the moment its lock is
        // free. That first open must succeed.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match volume::open(&vol.store) {
                Ok(v) => {
                    drop(v);
                    break;
                }
                Err(VolumeError::Locked(_)) if Instant::now() < deadline => {}
                Err(e) => panic!(
                    "round {round}: the first open after the daemon unlocked the store failed: {e}"
                ),
            }
        }
    }
    drop(guard);
    vol.remount();
    assert_eq!(read_all(&vol.path("f")), b"persisted");
    vol.unmount();
}

/// `umount` returns before the daemon has finished (final sync, metadata backup): a mount right
/// after it (`umount MP && mount MP`, a restart of a mount unit) must wait for that daemon, not
/// fail with "in use by another dedupfs process". The finishing daemon says so in the store's
/// lock file; a store in use otherwise is still refused at once.
/// Takes the lock of `store` while `held` (its lock) is let go 400 ms from now: the take must
/// wait for that, not fail.
fn lock_once_released(store: &Path, held: fs::File, what: &str) -> fs::File {
    let t0 = Instant::now();
    let releaser = thread::spawn(move || {
        thread::sleep(Duration::from_millis(400));
        drop(held);
    });
    let got = dedupfs::volume::lock(store).expect(what);
    assert!(
        t0.elapsed() >= Duration::from_millis(350),
        "{what}: took the lock after {:?}",
        t0.elapsed()
    );
    releaser.join().unwrap();
    got
}

#[test]
fn a_mount_right_after_umount_waits_for_the_finishing_daemon() {
    use dedupfs::volume::{self, VolumeError};
    let (mut vol, guard) = unmounted_store_with_a_file();

    // Deterministic: a holder that marked itself as unmounting and lets go 400 ms later.
    let held = volume::lock(&vol.store).expect("lock the unmounted store");
    assert!(
        matches!(volume::lock(&vol.store), Err(VolumeError::Locked(_))),
        "a store held by a process that is not unmounting is busy"
    );
    volume::mark_unmounting(&held);
    let got = lock_once_released(&vol.store, held, "waits for the unmounting holder");
    assert_eq!(
        fs::metadata(vol.store.join("lock")).unwrap().len(),
        0,
        "the new holder clears the old holder's note"
    );
    drop(got);

    // A holder that serves a control socket but whose mount is not in the mount table and
    // that has not written its note yet (a daemon in the moments between `umount` returning
    // and its request threads seeing the end): waited for too, not called busy.
    let held = volume::lock(&vol.store).expect("lock the unmounted store");
    fs::write(vol.store.join("control.sock"), b"").unwrap();
    drop(lock_once_released(
        &vol.store,
        held,
        "waits for the holder whose mount is gone",
    ));
    fs::remove_file(vol.store.join("control.sock")).unwrap();

    // Real daemons: each umount is followed at once by the next mount, with data to write
    // back and a metadata backup to take at each unmount.
    if !fuse_available() {
        return;
    }
    for round in 0..3u8 {
        let t0 = Instant::now();
        let (ok, _, stderr) = dedupfs(&[vol.store.as_os_str(), vol.mnt.as_os_str()]);
        assert!(
            ok,
            "round {round}: mount right after umount failed: {stderr}"
        );
        // A short wait is silent (fstests, for one, fails on any output of a mount).
        if t0.elapsed() < Duration::from_millis(2500) {
            assert_eq!(stderr.trim(), "", "round {round}: mount printed");
        }
        let data = common::random_bytes(round as u64, 48 << 20);
        fs::write(vol.path(&format!("r{round}")), &data).unwrap();
        umount(&vol.mnt);
    }
    // The last daemon may still be finishing: wait for it (the guard would kill it).
    drop(volume::lock(&vol.store).expect("the last daemon lets go of the store"));
    drop(guard);
    vol.remount();
    assert_eq!(read_all(&vol.path("f")), b"persisted");
    for round in 0..3u8 {
        let data = common::random_bytes(round as u64, 48 << 20);
        assert!(
            read_all(&vol.path(&format!("r{round}"))) == data,
            "r{round}"
        );
    }
    // A store that a live mount serves is refused at once, by the library and by a second
    // mount elsewhere, with the line that says why.
    let t0 = Instant::now();
    assert!(
        matches!(volume::lock(&vol.store), Err(VolumeError::Locked(_))),
        "a mounted store is busy"
    );
    let other = vol.store.parent().unwrap().join("second-mnt");
    fs::create_dir_all(&other).unwrap();
    let (ok, _, stderr) = dedupfs(&[vol.store.as_os_str(), other.as_os_str()]);
    assert!(
        !ok && stderr.contains("in use by another dedupfs process"),
        "{stderr}"
    );
    assert!(!is_mountpoint(&other));
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "refused only after {:?}",
        t0.elapsed()
    );
    assert_eq!(read_all(&vol.path("f")), b"persisted");
    vol.unmount();
}
