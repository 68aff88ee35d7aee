//! Real-mount harness shared by the `mount_*` integration tests.
//!
//! A [`Volume`] is a fresh store in a temp dir, mounted by a foreground `dedupfs mount` child.
//! It guards against the ways a mount test harness usually goes wrong: racing the mount (we poll
//! /proc/self/mountinfo until the FUSE mount is really there), losing the daemon's diagnostics
//! (its stderr goes to a log that every panic message quotes), hanging forever on a stuck daemon
//! (a watchdog kills it), and leaving a dead mount behind after a failed assertion (Drop detaches
//! the mount and kills the daemon).
//!
//! Each test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

pub mod garage;
pub mod remote;
pub mod reply_drop;
pub mod tree;
pub mod xattr;

use std::ffi::{CStr, CString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_dedupfs");

/// How long the mount may take to show up in /proc/self/mountinfo.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the daemon may take to exit after `umount` (it flushes buffers and metadata).
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a SIGKILLed daemon may take to die. One that takes longer has a thread stuck in the
/// kernel (state D) that keeps `/dev/fuse` open, so requests to the mount hang until the
/// connection is aborted.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// A test whose daemon lives longer than this is considered hung: the watchdog kills the daemon
/// so that requests blocked on the mount fail with ENOTCONN instead of hanging the suite.
const WATCHDOG: Duration = Duration::from_secs(600);

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;

/// True when real mounts can run here. Otherwise prints why, as a `SKIP:` line on stderr, and the
/// caller returns early. We skip only when FUSE itself is unavailable; any other failure to mount
/// is a test failure.
pub fn fuse_available() -> bool {
    static WHY_NOT: OnceLock<Option<String>> = OnceLock::new();
    let why_not = WHY_NOT.get_or_init(|| {
        let dev = Path::new("/dev/fuse");
        if !dev.exists() {
            return Some("/dev/fuse absent".to_string());
        }
        if let Err(e) = OpenOptions::new().read(true).write(true).open(dev) {
            return Some(format!("/dev/fuse cannot be opened ({e})"));
        }
        // As root the daemon calls mount(2) itself; otherwise it needs the setuid helper.
        if !is_root() && which("fusermount3").is_none() && which("fusermount").is_none() {
            return Some("not root and no fusermount3 on PATH".to_string());
        }
        None
    });
    match why_not {
        None => true,
        Some(why) => {
            eprintln!("SKIP: {why}");
            false
        }
    }
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Full path of `prog` on PATH, if any.
pub fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(prog))
        .find(|p| p.is_file())
}

/// A mounted (or, between `unmount` and `remount`, unmounted) dedupfs volume in a temp dir.
pub struct Volume {
    pub store: PathBuf,
    pub mnt: PathBuf,
    pub child: Child,
    mount_args: Vec<String>,
    /// Environment of the daemon (a remote volume's credentials).
    env: Vec<(String, String)>,
    log: PathBuf,
    mounted: bool,
    watchdog: Watchdog,
    _tmp: TempDir,
}

impl Volume {
    /// A fresh store with default parameters, mounted read-write.
    pub fn new() -> Volume {
        Volume::with_args(&[], &[])
    }

    /// A fresh store made by `dedupfs init STORE <init_args>`, mounted with
    /// `dedupfs mount STORE MNT <mount_args>`.
    pub fn with_args(init_args: &[&str], mount_args: &[&str]) -> Volume {
        let tmp = tempfile::Builder::new()
            .prefix("dedupfs-test-")
            .tempdir()
            .expect("create temp dir");
        let root = tmp.path().canonicalize().expect("canonicalize temp dir");
        let store = root.join("store");
        let mnt = root.join("mnt");
        let log = root.join("daemon.log");
        fs::create_dir(&mnt).expect("create mountpoint");

        let out = Command::new(BIN)
            .arg("init")
            .arg(&store)
            .args(init_args)
            .stdin(Stdio::null())
            .output()
            .expect("run dedupfs init");
        assert!(
            out.status.success(),
            "dedupfs init {} {init_args:?} failed ({}): {}{}",
            store.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let mount_args: Vec<String> = mount_args.iter().map(|s| s.to_string()).collect();
        let child = spawn_mount(&store, &mnt, &mount_args, &log);
        let watchdog = Watchdog::start(child.id(), mnt.clone());
        let mut vol = Volume {
            store,
            mnt,
            child,
            mount_args,
            env: Vec::new(),
            log,
            mounted: true,
            watchdog,
            _tmp: tmp,
        };
        vol.wait_until_mounted();
        vol
    }

    /// A fresh store created at `store` (which must not exist yet; e.g. inside a small tmpfs the
    /// test mounted), mounted read-write at a mountpoint in a temp dir. The daemon log stays in
    /// the temp dir, so it never competes with the store for space.
    pub fn with_store_at(store: &Path, init_args: &[&str]) -> Volume {
        run(Command::new(BIN).arg("init").arg(store).args(init_args));
        Volume::mount_existing(store, &[], &[])
    }

    /// An existing store (made by the caller: `init --remote`, `attach`), mounted with
    /// `mount_args` by a daemon with `env` added to its environment, at a mountpoint in a
    /// temp dir.
    pub fn mount_existing(store: &Path, mount_args: &[&str], env: &[(String, String)]) -> Volume {
        let tmp = tempfile::Builder::new()
            .prefix("dedupfs-test-")
            .tempdir()
            .expect("create temp dir");
        let root = tmp.path().canonicalize().expect("canonicalize temp dir");
        let mnt = root.join("mnt");
        let log = root.join("daemon.log");
        fs::create_dir(&mnt).expect("create mountpoint");
        let mount_args: Vec<String> = mount_args.iter().map(|s| s.to_string()).collect();
        let child = spawn_mount_env(store, &mnt, &mount_args, &log, env);
        let watchdog = Watchdog::start(child.id(), mnt.clone());
        let mut vol = Volume {
            store: store.to_path_buf(),
            mnt,
            child,
            mount_args,
            env: env.to_vec(),
            log,
            mounted: true,
            watchdog,
            _tmp: tmp,
        };
        vol.wait_until_mounted();
        vol
    }

    /// The daemon's exit after a refused mount: `dedupfs mount` of `store` with `env`, which
    /// must fail; returns its output.
    pub fn mount_refused(store: &Path, mount_args: &[&str], env: &[(String, String)]) -> String {
        let tmp = tempfile::tempdir().expect("create temp dir");
        let mnt = tmp.path().canonicalize().expect("canonical temp dir");
        // Output into files, not pipes: a daemon wrongly let in could fill a pipe and block.
        let logs = tempfile::tempdir().expect("create log dir");
        let (out_path, err_path) = (logs.path().join("out"), logs.path().join("err"));
        let mut child = Command::new(BIN)
            .arg("mount")
            .arg(store)
            .arg(&mnt)
            .args(mount_args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("log file"))
            .stderr(std::fs::File::create(&err_path).expect("log file"))
            .spawn()
            .expect("run dedupfs mount");
        // A mount that was wrongly let in serves in the foreground until unmounted: the test
        // fails instead of waiting for it forever.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for dedupfs mount") {
                break status;
            }
            let mounted = is_mountpoint(&mnt);
            if mounted || std::time::Instant::now() >= deadline {
                let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
                std::thread::sleep(std::time::Duration::from_secs(2));
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "mount of {} was expected to fail, and it {}: {}{}",
                    store.display(),
                    if mounted {
                        "mounted"
                    } else {
                        "neither failed nor mounted within 120 s"
                    },
                    std::fs::read_to_string(&out_path).unwrap_or_default(),
                    std::fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let out = std::process::Output {
            status,
            stdout: std::fs::read(&out_path).unwrap_or_default(),
            stderr: std::fs::read(&err_path).unwrap_or_default(),
        };
        let text = output_text(&out);
        assert!(
            !out.status.success(),
            "mount of {} was expected to fail: {text}",
            store.display()
        );
        assert!(!is_mountpoint(&mnt), "refused mount left a mount");
        text
    }

    /// `MNT/rel`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Root of the temp dir, outside the mount: scratch space for source trees.
    pub fn scratch(&self) -> PathBuf {
        self.store
            .parent()
            .expect("store has a parent")
            .to_path_buf()
    }

    pub fn is_mounted(&self) -> bool {
        self.mounted
    }

    /// The daemon's stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("<no log: {e}>"))
    }

    /// Clean unmount: `umount MNT` (or `fusermount3 -u` when not root), then wait for the daemon
    /// and require it to exit successfully.
    pub fn unmount(&mut self) {
        let status = self.unmount_status();
        assert!(
            status.success(),
            "daemon exited with {status} after unmount\n--- daemon log ---\n{}",
            self.log()
        );
    }

    /// `umount MNT` (which must succeed and leave nothing mounted), then the daemon's exit
    /// status: a daemon that could not make everything durable exits non-zero.
    pub fn unmount_status(&mut self) -> std::process::ExitStatus {
        assert!(self.mounted, "unmount of a volume that is not mounted");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = unmount_command(&self.mnt)
                .stdin(Stdio::null())
                .output()
                .expect("run umount");
            if out.status.success() {
                break;
            }
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            // EBUSY right after closing files is possible while the kernel releases them.
            if err.contains("busy") && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            panic!(
                "umount {} failed ({}): {err}\n--- daemon log ---\n{}",
                self.mnt.display(),
                out.status,
                self.log()
            );
        }
        self.mounted = false;
        // Disarm before reaping so the watchdog can never signal a recycled pid;
        // wait_child has its own timeout.
        self.watchdog.disarm();
        let status = self.wait_child(EXIT_TIMEOUT);
        assert!(
            !is_mountpoint(&self.mnt),
            "{} still mounted after the daemon exited",
            self.mnt.display()
        );
        status
    }

    /// Simulated crash: SIGKILL the daemon (no flush, no destroy), then lazily detach the dead
    /// mount so the mountpoint can be reused.
    pub fn kill9(&mut self) {
        if let Err(e) = self.try_kill9() {
            panic!("{e}\n--- daemon log ---\n{}", self.log());
        }
    }

    /// `kill9`, but a daemon that does not die within `KILL_TIMEOUT` is an Err naming what its
    /// remaining threads wait for in the kernel (instead of a test that hangs in `wait`, and
    /// every request to the mount with it). The FUSE connection is then aborted (`umount -f`,
    /// as root), which fails the requests the daemon never answered and lets it die; the
    /// mount is detached either way.
    pub fn try_kill9(&mut self) -> Result<(), String> {
        assert!(self.mounted, "kill9 of a volume that is not mounted");
        self.watchdog.disarm();
        self.child.kill().expect("SIGKILL daemon");
        let deadline = Instant::now() + KILL_TIMEOUT;
        let mut stuck = None;
        while self.child.try_wait().expect("poll daemon").is_none() {
            if Instant::now() > deadline {
                stuck = Some(threads_in_kernel(self.child.id()));
                let c = CString::new(self.mnt.as_os_str().as_bytes()).expect("path without NUL");
                // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_FORCE) };
                // Without the abort (not root) it may never die: give up waiting.
                let give_up = Instant::now() + KILL_TIMEOUT;
                while self.child.try_wait().expect("poll daemon").is_none()
                    && Instant::now() < give_up
                {
                    thread::sleep(Duration::from_millis(20));
                }
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let out = Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .stdin(Stdio::null())
            .output()
            .expect("run umount -l");
        if !out.status.success() {
            // Not root: the setuid helper can detach too.
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mnt)
                .output();
        }
        self.mounted = false;
        assert!(
            !is_mountpoint(&self.mnt),
            "{} still mounted after kill -9 and lazy umount",
            self.mnt.display()
        );
        match stuck {
            None => Ok(()),
            Some(threads) => Err(format!(
                "the daemon did not die within {KILL_TIMEOUT:?} of SIGKILL (FUSE connection \
                 aborted to end it); its threads then:\n{threads}"
            )),
        }
    }

    /// Stop the daemon with a signal (SIGINT or SIGTERM are documented to unmount cleanly);
    /// requires a successful exit and the mount gone.
    pub fn stop_with_signal(&mut self, sig: libc::c_int) {
        assert!(self.mounted, "signal to a volume that is not mounted");
        self.watchdog.disarm();
        // SAFETY: kill(2) has no memory-safety preconditions; the child is not yet reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill: {}", io::Error::last_os_error());
        self.mounted = false;
        let status = self.wait_child(EXIT_TIMEOUT);
        if is_mountpoint(&self.mnt) {
            detach(&self.mnt);
            panic!(
                "{} still mounted after the daemon exited ({status}) on signal {sig}",
                self.mnt.display()
            );
        }
        assert!(
            status.success(),
            "daemon exited with {status} after signal {sig}\n--- daemon log ---\n{}",
            self.log()
        );
    }

    /// Mount the same store again with the same mount arguments (unmounting cleanly first if
    /// still mounted).
    pub fn remount(&mut self) {
        if self.mounted {
            self.unmount();
        }
        self.child = spawn_mount_env(
            &self.store,
            &self.mnt,
            &self.mount_args,
            &self.log,
            &self.env,
        );
        self.watchdog = Watchdog::start(self.child.id(), self.mnt.clone());
        self.mounted = true;
        self.wait_until_mounted();
    }

    /// Mount arguments used by later [`Volume::remount`] calls.
    pub fn set_mount_args(&mut self, args: &[&str]) {
        self.mount_args = args.iter().map(|s| s.to_string()).collect();
    }

    /// `dedupfs stats STORE --json`, parsed. Panics if the command fails or prints no JSON.
    pub fn stats(&self) -> serde_json::Value {
        let out = Command::new(BIN)
            .arg("stats")
            .arg(&self.store)
            .arg("--json")
            .stdin(Stdio::null())
            .output()
            .expect("run dedupfs stats");
        assert!(
            out.status.success(),
            "dedupfs stats failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "dedupfs stats --json printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// One integer field of [`Volume::stats`].
    pub fn stat_u64(&self, field: &str) -> u64 {
        let stats = self.stats();
        stats[field]
            .as_u64()
            .unwrap_or_else(|| panic!("stats field {field:?} missing or not an integer: {stats}"))
    }

    /// Resident set size of the daemon in KiB, from /proc/PID/status.
    pub fn daemon_rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read daemon /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    fn wait_until_mounted(&mut self) {
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll daemon") {
                self.mounted = false;
                self.watchdog.disarm();
                panic!(
                    "dedupfs mount exited with {status} before the mount appeared\n--- daemon log ---\n{}",
                    self.log()
                );
            }
            if is_mountpoint(&self.mnt) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not become a FUSE mount within {MOUNT_TIMEOUT:?}\n--- daemon log ---\n{}",
                    self.mnt.display(),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_child(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll daemon") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                detach(&self.mnt);
                panic!(
                    "daemon did not exit within {timeout:?} after unmount (killed)\n--- daemon log ---\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        self.watchdog.disarm();
        if !self.mounted {
            return;
        }
        // Failure path (a panicking test, or a test that did not unmount): never leave a mount
        // behind. Detach first so nothing new can enter, give the daemon a moment to exit on its
        // own, then kill it.
        detach(&self.mnt);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_mount(store: &Path, mnt: &Path, args: &[String], log: &Path) -> Child {
    spawn_mount_env(store, mnt, args, log, &[])
}

fn spawn_mount_env(
    store: &Path,
    mnt: &Path,
    args: &[String],
    log: &Path,
    env: &[(String, String)],
) -> Child {
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open daemon log");
    let log_err = log_file.try_clone().expect("clone log fd");
    Command::new(BIN)
        .arg("mount")
        .arg(store)
        .arg(mnt)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .spawn()
        .expect("spawn dedupfs mount")
}

fn unmount_command(mnt: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("umount");
        c.arg(mnt);
        c
    } else {
        let mut c = Command::new("fusermount3");
        c.arg("-u").arg(mnt);
        c
    }
}

/// Lazy unmount without spawning anything (usable while unwinding).
/// Each thread of process `pid`: name, state, kernel wait channel and (as root) kernel stack.
fn threads_in_kernel(pid: u32) -> String {
    let mut out = String::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("(no /proc/{pid}/task)");
    };
    for t in tasks.flatten() {
        let p = t.path();
        let read = |f: &str| fs::read_to_string(p.join(f)).unwrap_or_default();
        let stat = read("stat");
        // "tid (comm) S ...": the state follows the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("?");
        out += &format!(
            "{} {} state {state} wchan {}\n{}",
            t.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan"),
            read("stack")
        );
    }
    out
}

fn detach(mnt: &Path) {
    let c = CString::new(mnt.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(mnt)
            .stdin(Stdio::null())
            .output();
    }
}

/// True if `mnt` (canonical path) is the mount point of a FUSE file system in our namespace.
pub fn is_mountpoint(mnt: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let want = mnt.as_os_str().as_bytes();
    info.lines().any(|line| {
        // "id parent maj:min root MOUNTPOINT opts [optional...] - FSTYPE source superopts"
        let mut fields = line.split(' ');
        let mountpoint = fields.nth(4).unwrap_or("");
        let fstype = line
            .split(" - ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or("");
        fstype.starts_with("fuse") && dedupfs::mounts::unescape_mountinfo(mountpoint) == want
    })
}

/// Kills the daemon if the test runs longer than [`WATCHDOG`], so a hung request fails the test
/// (ENOTCONN) instead of hanging the whole suite.
struct Watchdog {
    armed: Arc<AtomicBool>,
}

impl Watchdog {
    fn start(pid: u32, mnt: PathBuf) -> Watchdog {
        let armed = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&armed);
        thread::spawn(move || {
            let deadline = Instant::now() + WATCHDOG;
            while Instant::now() < deadline {
                if !flag.load(Ordering::SeqCst) {
                    return;
                }
                thread::sleep(Duration::from_millis(200));
            }
            if flag.load(Ordering::SeqCst) {
                eprintln!(
                    "WATCHDOG: daemon for {} alive after {WATCHDOG:?}; killing it",
                    mnt.display()
                );
                // SAFETY: kill(2) has no memory-safety preconditions. The pid is still our
                // unreaped child while the watchdog is armed (it is disarmed before reaping).
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
                detach(&mnt);
            }
        });
        Watchdog { armed }
    }

    fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers shared by the tests.

/// Deterministic pseudo-random bytes (incompressible, so chunks do not dedup by accident).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// The errno of a failed call; panics (naming `what`) if it succeeded.
pub fn errno_of<T: std::fmt::Debug>(what: &str, r: io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{what}: error without errno: {e}")),
    }
}

/// Every kind of change in `dir`, which holds the regular file `file`, gets EROFS: create,
/// open for writing, append, mkdir, unlink, rename (`what` names the case in failures).
pub fn assert_changes_refused(what: &str, dir: &Path, file: &Path) {
    let checks = [
        (
            "create",
            errno_of(what, fs::File::create(dir.join("new-file"))),
        ),
        (
            "open for writing",
            errno_of(what, fs::OpenOptions::new().write(true).open(file)),
        ),
        (
            "append",
            errno_of(what, fs::OpenOptions::new().append(true).open(file)),
        ),
        ("mkdir", errno_of(what, fs::create_dir(dir.join("new-dir")))),
        ("unlink", errno_of(what, fs::remove_file(file))),
        (
            "rename",
            errno_of(what, fs::rename(file, dir.join("renamed"))),
        ),
    ];
    for (step, errno) in checks {
        assert_eq!(errno, libc::EROFS, "{what}: {step}");
    }
}

/// Convert a libc return code into `io::Result`.
pub fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// Read a whole file through a fresh descriptor.
pub fn read_all(p: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(p)
        .and_then(|mut f| f.read_to_end(&mut v))
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    v
}

/// Open for writing with O_CREAT|O_TRUNC and given mode.
pub fn create_with_mode(p: &Path, mode: u32) -> File {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(p)
        .unwrap_or_else(|e| panic!("create {}: {e}", p.display()))
}

/// Run a command, panicking with its output if it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// First index where two byte slices differ, for readable assertion messages.
/// A finished command's exit status, stdout and stderr, for an assertion message.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "exit {}; stdout: {}; stderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or(if a.len() != b.len() {
            Some(a.len().min(b.len()))
        } else {
            None
        })
}

/// Assert two byte strings are equal without dumping megabytes into the failure message.
#[track_caller]
pub fn assert_bytes_eq(what: &str, got: &[u8], want: &[u8]) {
    if let Some(i) = first_difference(got, want) {
        panic!(
            "{what}: contents differ at byte {i} (got len {}, want len {}); got {:?}, want {:?}",
            got.len(),
            want.len(),
            &got[i..got.len().min(i + 16)],
            &want[i..want.len().min(i + 16)]
        );
    }
}

/// Pids of processes whose command line mentions `needle` (daemons of a store).
pub fn pids_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// fallocate(2) of `len` bytes at `off` with `mode` (e.g. FALLOC_FL_PUNCH_HOLE).
/// `p`'s permission bits as statx reports them when asked for the mode alone: the kernel
/// answers from its cached attributes, without asking the daemon, until they expire or are
/// dropped (a plain `stat` asks for times too, which a write does drop).
pub fn cached_mode(p: &Path) -> u32 {
    let c = cstr(p);
    // SAFETY: zeroed bytes are a valid `statx` (plain integers); `c` is a NUL-terminated
    // path and `st` a valid out-pointer for the call.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), 0, libc::STATX_MODE, &mut st) };
    cvt(r).unwrap_or_else(|e| panic!("statx {}: {e}", p.display()));
    u32::from(st.stx_mode) & 0o7777
}

pub fn fallocate(f: &File, mode: libc::c_int, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate has no memory-safety preconditions; the descriptor is open.
    cvt(unsafe { libc::fallocate(f.as_raw_fd(), mode, off as libc::off_t, len as libc::off_t) })
        .map(drop)
}

/// One copy_file_range call; returns the bytes copied.
pub fn copy_file_range(
    from: &File,
    off_in: u64,
    to: &File,
    off_out: u64,
    len: u64,
) -> io::Result<u64> {
    let mut i = off_in as libc::loff_t;
    let mut o = off_out as libc::loff_t;
    // SAFETY: both descriptors are open and the offsets point to live locals.
    let r = unsafe {
        libc::copy_file_range(
            from.as_raw_fd(),
            &mut i,
            to.as_raw_fd(),
            &mut o,
            len as usize,
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// The pack files of a store (`packs/<16 hex>.pack`), sorted.
pub fn pack_files(store: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(store.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    out.sort();
    out
}

/// (name, d_ino, d_type) of every entry, via libc opendir/readdir.
pub fn readdir_raw(dir: &Path) -> Vec<(String, u64, u8)> {
    let c = cstr(dir);
    // SAFETY: valid C string; the DIR* is checked for null and closed below.
    let d = unsafe { libc::opendir(c.as_ptr()) };
    assert!(
        !d.is_null(),
        "opendir {}: {}",
        dir.display(),
        std::io::Error::last_os_error()
    );
    let mut out = Vec::new();
    loop {
        // SAFETY: d is a valid open DIR*; the returned dirent is valid until the next readdir.
        let ent = unsafe { libc::readdir(d) };
        if ent.is_null() {
            break;
        }
        // SAFETY: ent points to a valid dirent whose d_name is NUL-terminated.
        let (name, ino, ty) = unsafe {
            (
                CStr::from_ptr((*ent).d_name.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
                (*ent).d_ino,
                (*ent).d_type,
            )
        };
        out.push((name, ino, ty));
    }
    // SAFETY: d is a valid DIR* not yet closed.
    unsafe { libc::closedir(d) };
    out
}
