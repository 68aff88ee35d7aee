//! Real programs on a real mount: cp, tar, git, sqlite, fio, and the mount command itself.
//!
//! Guards against the bugs that unit tests of single operations miss because only real tools
//! combine operations that way: metadata lost by `cp -a`/`tar` (times, modes, owners, xattrs,
//! hard links, symlinks), git's link-then-unlink object writes and mmapped packs, sqlite's
//! journal, WAL and shared-memory mmap, fio's verified random I/O, inode numbers that change
//! across a remount (which breaks NFS export, backup tools and git's index), an inode allocator
//! that reuses live numbers after a remount, and a mount command that does not refuse a second
//! mount of the same store.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::tree::{assert_same_tree, make_tree, snapshot};
use common::{BIN, Volume, fuse_available, is_mountpoint, pids_mentioning, run, which};

/// Number of regular files in the generated trees ("some thousands").
const TREE_FILES: usize = 3000;

fn diff_r(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b)
        .stdin(Stdio::null())
        .output()
        .expect("run diff");
    assert!(
        out.status.success(),
        "diff -r {} {} found differences ({}):\n{}{}",
        a.display(),
        b.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bash(script: &str) -> String {
    run(Command::new("bash").args(["-euo", "pipefail", "-c", script]))
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

#[test]
fn cp_a_of_generated_tree_preserves_everything_and_survives_remount() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let src = vol.scratch().join("src");
    let sum = make_tree(&src, 1, TREE_FILES);
    assert!(sum.files >= TREE_FILES && sum.symlinks > 100 && sum.hard_links > 10);
    let want = snapshot(&src);

    let dst = vol.path("copy");
    run(Command::new("cp").arg("-a").arg(&src).arg(&dst));
    diff_r(&src, &dst);
    assert_same_tree("cp -a into volume", &snapshot(&dst), &want, false);

    vol.remount();
    diff_r(&src, &dst);
    let after = snapshot(&dst);
    assert_same_tree("cp -a copy after remount", &after, &want, false);

    // And back out again: reading through cp must give the same tree.
    let back = vol.scratch().join("back");
    run(Command::new("cp").arg("-a").arg(&dst).arg(&back));
    diff_r(&src, &back);
    assert_same_tree("cp -a back out of volume", &snapshot(&back), &want, false);
    vol.unmount();
}

#[test]
fn cp_a_of_usr_share_doc_matches_diff_r() {
    if !fuse_available() {
        return;
    }
    let src = Path::new("/usr/share/doc");
    if !src.is_dir() {
        eprintln!("SKIP: /usr/share/doc absent on this machine");
        return;
    }
    let mut vol = Volume::new();
    let dst = vol.path("doc");
    run(Command::new("cp").arg("-a").arg(src).arg(&dst));
    diff_r(src, &dst);
    vol.remount();
    diff_r(src, &dst);
    vol.unmount();
}

#[test]
fn tar_pipe_into_volume_and_back_out_preserves_tree() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let src = vol.scratch().join("src");
    make_tree(&src, 2, TREE_FILES);
    let want = snapshot(&src);
    let dst = vol.path("untarred");
    fs::create_dir(&dst).unwrap();
    let tar = "tar --numeric-owner --xattrs --xattrs-include='user.*'";
    bash(&format!(
        "{tar} -C {} -cf - . | {tar} -C {} -xpf -",
        sh_quote(&src),
        sh_quote(&dst)
    ));
    diff_r(&src, &dst);
    assert_same_tree("tar x into volume", &snapshot(&dst), &want, false);

    // A tarball stored inside the volume, then extracted out of it.
    let tarball = vol.path("tree.tar");
    bash(&format!(
        "{tar} -C {} -cf {} .",
        sh_quote(&dst),
        sh_quote(&tarball)
    ));
    let out = vol.scratch().join("out");
    fs::create_dir(&out).unwrap();
    vol.remount();
    bash(&format!(
        "{tar} -C {} -xpf {}",
        sh_quote(&out),
        sh_quote(&tarball)
    ));
    diff_r(&src, &out);
    assert_same_tree("tar x out of volume", &snapshot(&out), &want, false);
    vol.unmount();
}

fn git(dir: &Path, home: &Path, args: &[&str]) -> String {
    run(Command::new("git")
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .args(["-c", "init.defaultBranch=main"])
        // Exercise fsync of objects, refs and directories too.
        .args(["-c", "core.fsync=all", "-c", "core.fsyncMethod=fsync"])
        .args(args))
}

#[test]
fn git_repository_in_volume_commits_gcs_and_fscks_clean() {
    if !fuse_available() {
        return;
    }
    if which("git").is_none() {
        panic!("git is required for this test (the CI script installs it)");
    }
    let mut vol = Volume::new();
    let home = vol.scratch().join("home");
    fs::create_dir(&home).unwrap();
    let repo = vol.path("repo");
    fs::create_dir(&repo).unwrap();
    git(&repo, &home, &["init", "-q"]);
    make_tree(&repo.join("tree"), 3, 600);
    git(&repo, &home, &["add", "-A"]);
    git(&repo, &home, &["commit", "-q", "-m", "first"]);
    let first_files = git(&repo, &home, &["ls-files"]);

    // Second commit: edits, a deletion, a rename.
    let listed: Vec<&str> = first_files.lines().collect();
    assert!(listed.len() > 600, "git ls-files listed {}", listed.len());
    let deleted = listed[10].to_string();
    let mut edited = listed[20].to_string();
    if edited.starts_with('"') || deleted.starts_with('"') {
        // Quoted (non-ASCII) names: pick plain ones.
        edited = listed
            .iter()
            .find(|l| !l.starts_with('"') && !l.contains("link"))
            .unwrap()
            .to_string();
    }
    fs::write(repo.join(&edited), "edited in second commit\n").unwrap();
    git(&repo, &home, &["rm", "-q", "--", &deleted]);
    fs::write(repo.join("new-file"), "added in second commit\n").unwrap();
    git(&repo, &home, &["add", "-A"]);
    git(&repo, &home, &["commit", "-q", "-m", "second"]);
    git(&repo, &home, &["gc", "-q", "--prune=now"]);
    git(
        &repo,
        &home,
        &["fsck", "--full", "--strict", "--no-progress"],
    );
    assert_eq!(
        git(&repo, &home, &["rev-list", "--count", "HEAD"]).trim(),
        "2"
    );
    assert_eq!(git(&repo, &home, &["status", "--porcelain"]), "");

    vol.remount();
    git(
        &repo,
        &home,
        &["fsck", "--full", "--strict", "--no-progress"],
    );
    assert_eq!(git(&repo, &home, &["status", "--porcelain"]), "");
    assert_eq!(
        fs::read_to_string(repo.join(&edited)).unwrap(),
        "edited in second commit\n"
    );
    // Time travel: the first commit brings the deleted file back and drops the new one.
    git(&repo, &home, &["checkout", "-q", "HEAD~1"]);
    assert!(
        repo.join(&deleted).symlink_metadata().is_ok(),
        "{deleted} not restored by checkout"
    );
    assert!(!repo.join("new-file").exists());
    assert_eq!(git(&repo, &home, &["ls-files"]), first_files);
    assert_eq!(git(&repo, &home, &["status", "--porcelain"]), "");
    vol.unmount();
}

fn sqlite(db: &Path, sql: &str) -> String {
    run(Command::new("sqlite3").arg("-batch").arg(db).arg(sql))
}

#[test]
fn sqlite_database_in_volume_passes_integrity_check_in_rollback_and_wal_modes() {
    if !fuse_available() {
        return;
    }
    if which("sqlite3").is_none() {
        eprintln!("SKIP: sqlite3 CLI absent (apt-get install sqlite3); sqlite test not run");
        return;
    }
    let mut vol = Volume::new();
    let summary_sql = "SELECT count(*), sum(id), total(length(v)), sum(unicode(hex(v))) FROM t;";
    let mut summaries = Vec::new();
    for mode in ["delete", "wal"] {
        let db = vol.path(&format!("{mode}.db"));
        let out = sqlite(
            &db,
            &format!(
                "PRAGMA journal_mode={mode};
                 CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v BLOB);
                 CREATE INDEX t_k ON t(k);
                 BEGIN;
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
                   INSERT INTO t SELECT i, hex(randomblob(8)), randomblob(abs(random()) % 700) FROM n;
                 COMMIT;"
            ),
        );
        assert_eq!(out.trim(), mode, "journal_mode not set to {mode}");
        // Many small transactions (each one syncs the journal / WAL).
        for i in 0..50 {
            sqlite(
                &db,
                &format!(
                    "UPDATE t SET v = randomblob(100) WHERE id % 50 = {i};
                     DELETE FROM t WHERE id = {};
                     INSERT INTO t(k, v) VALUES ('late{i}', zeroblob(3000));",
                    i * 97 + 1
                ),
            );
        }
        if mode == "delete" {
            sqlite(&db, "VACUUM;");
        } else {
            sqlite(&db, "PRAGMA wal_checkpoint(TRUNCATE);");
        }
        assert_eq!(sqlite(&db, "PRAGMA integrity_check;").trim(), "ok");
        let s = sqlite(&db, summary_sql);
        assert!(s.starts_with("5000|"), "unexpected row count: {s}");
        summaries.push((db, s));
    }
    vol.remount();
    for (db, before) in &summaries {
        assert_eq!(
            sqlite(db, "PRAGMA integrity_check;").trim(),
            "ok",
            "{}",
            db.display()
        );
        assert_eq!(&sqlite(db, summary_sql), before, "{}", db.display());
    }
    vol.unmount();
}

#[test]
fn fio_verified_random_writes_read_back_correctly() {
    if !fuse_available() {
        return;
    }
    if which("fio").is_none() {
        eprintln!("SKIP: fio absent (apt-get install fio); fio test not run");
        return;
    }
    let mut vol = Volume::new();
    for (engine, rw, bs) in [
        ("psync", "randwrite", "4k"),
        ("psync", "write", "1M"),
        ("mmap", "randwrite", "16k"),
    ] {
        let out = run(Command::new("fio")
            // fio drops verify state files into its working directory: keep them out of the repo.
            .current_dir(vol.scratch())
            .arg("--verify_state_save=0")
            .arg(format!("--name={engine}-{rw}"))
            .arg(format!("--directory={}", vol.mnt.display()))
            .args(["--size=32m", "--numjobs=2", "--group_reporting"])
            .arg(format!("--ioengine={engine}"))
            .arg(format!("--rw={rw}"))
            .arg(format!("--bs={bs}"))
            .args([
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
                "--fsync_on_close=1",
            ]));
        assert!(
            out.contains("err= 0"),
            "fio {engine}/{rw} reported an error:\n{out}"
        );
    }
    vol.unmount();
}

#[test]
fn unmount_and_remount_preserve_tree_and_inode_numbers() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let root = vol.path("tree");
    make_tree(&root, 4, TREE_FILES);
    let before = snapshot(&root);
    assert!(before.len() > TREE_FILES);

    vol.remount();
    assert_same_tree("after first remount", &snapshot(&root), &before, true);
    vol.remount();
    let after = snapshot(&root);
    assert_same_tree("after second remount", &after, &before, true);

    // New inodes after a remount must not reuse numbers of live ones.
    let live: BTreeSet<u64> = after.values().map(|e| e.ino).collect();
    use std::os::unix::fs::MetadataExt;
    for i in 0..200 {
        let p = vol.path(&format!("new-{i}"));
        if i % 2 == 0 {
            fs::write(&p, b"n").unwrap();
        } else {
            fs::create_dir(&p).unwrap();
        }
        let ino = fs::symlink_metadata(&p).unwrap().ino();
        assert!(
            !live.contains(&ino),
            "new-{i} got inode {ino}, already used by a live file"
        );
    }
    vol.unmount();
}

#[test]
fn second_mount_of_same_store_is_refused_and_first_keeps_working() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    fs::write(vol.path("f"), b"first mount").unwrap();
    let other = vol.scratch().join("other-mnt");
    fs::create_dir(&other).unwrap();
    let mut child = Command::new(BIN)
        .arg("mount")
        .arg(&vol.store)
        .arg(&other)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let Some(status) = status else {
        // It is serving a second mount: clean up, then fail.
        let mounted = is_mountpoint(&other);
        let _ = Command::new("umount").arg("-l").arg(&other).status();
        let _ = child.kill();
        let _ = child.wait();
        panic!("second mount of a mounted store still running after 10 s (mounted: {mounted})");
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "second mount exited successfully");
    assert!(!is_mountpoint(&other), "second mount left a mount behind");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "error must be one line, got: {stderr:?}"
    );
    assert_eq!(common::read_all(&vol.path("f")), b"first mount");
    fs::write(vol.path("g"), b"still writable").unwrap();
    vol.remount();
    assert_eq!(common::read_all(&vol.path("g")), b"still writable");
    vol.unmount();
}

/// Run the binary with a timeout; returns (success, stderr).
fn run_bin_with_timeout(args: &[&std::ffi::OsStr], mnt_to_clean: Option<&Path>) -> (bool, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            if let Some(m) = mnt_to_clean {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("dedupfs {args:?} still running after 10 s");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn mount_and_init_refuse_bad_arguments_with_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mnt = tmp.path().join("mnt");
    let not_store = tmp.path().join("not-a-store");
    fs::create_dir(&mnt).unwrap();
    fs::create_dir(&not_store).unwrap();
    fs::write(not_store.join("junk"), b"junk").unwrap();

    let check = |what: &str, args: &[&std::ffi::OsStr], mnt: Option<&Path>| {
        let (ok, stderr) = run_bin_with_timeout(args, mnt);
        assert!(!ok, "{what}: succeeded");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{what}: error must be exactly one line, got {stderr:?}"
        );
    };
    let os = |p: &Path| p.as_os_str().to_owned();
    check(
        "mount of missing store",
        &[
            "mount".as_ref(),
            os(&store).as_os_str(),
            os(&mnt).as_os_str(),
        ],
        Some(&mnt),
    );
    check(
        "mount of a directory that is not a store",
        &[
            "mount".as_ref(),
            os(&not_store).as_os_str(),
            os(&mnt).as_os_str(),
        ],
        Some(&mnt),
    );
    let ok = Command::new(BIN)
        .arg("init")
        .arg(&store)
        .status()
        .unwrap()
        .success();
    assert!(ok, "init of a fresh path failed");
    check(
        "init of an existing store",
        &["init".as_ref(), os(&store).as_os_str()],
        None,
    );
    check(
        "init into a non-empty directory",
        &["init".as_ref(), os(&not_store).as_os_str()],
        None,
    );
    let missing_mnt: PathBuf = tmp.path().join("no-such-mountpoint");
    check(
        "mount on a missing mountpoint",
        &[
            "mount".as_ref(),
            os(&store).as_os_str(),
            os(&missing_mnt).as_os_str(),
        ],
        None,
    );
    assert!(!is_mountpoint(&mnt));
    assert!(
        fs::read(not_store.join("junk")).unwrap() == b"junk",
        "a failed init must not touch an existing directory"
    );
}

#[test]
fn background_mount_is_ready_when_the_command_returns() {
    if !fuse_available() {
        return;
    }
    // Make a store with data via the harness, then mount it again in the background.
    let mut vol = Volume::new();
    fs::write(vol.path("f"), b"persisted").unwrap();
    vol.unmount();

    let (ok, stderr) = run_bin_with_timeout(
        &[
            "mount".as_ref(),
            vol.store.as_os_str(),
            vol.mnt.as_os_str(),
            "--background".as_ref(),
        ],
        Some(&vol.mnt),
    );
    let store_str = vol.store.display().to_string();
    // From here on, make sure a failure does not leave the background daemon running.
    let cleanup = |mnt: &Path| {
        let _ = Command::new("umount").arg("-l").arg(mnt).status();
        for pid in pids_mentioning(&store_str) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    };
    if !ok {
        cleanup(&vol.mnt);
        panic!("mount --background failed: {stderr}");
    }
    // No polling: the mount must already be there and answer.
    let mounted = is_mountpoint(&vol.mnt);
    let content = fs::read(vol.path("f"));
    if !mounted || content.as_deref().ok() != Some(b"persisted".as_slice()) {
        cleanup(&vol.mnt);
        panic!("after mount --background returned: mounted={mounted}, read f = {content:?}");
    }
    fs::write(vol.path("g"), b"written via background daemon").unwrap();
    run(Command::new("umount").arg(&vol.mnt));
    // The daemon exits on its own after the unmount.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pids_mentioning(&store_str).is_empty() {
        if Instant::now() > deadline {
            cleanup(&vol.mnt);
            panic!("background daemon still running 30 s after umount");
        }
        thread::sleep(Duration::from_millis(50));
    }
    vol.remount();
    assert_eq!(
        common::read_all(&vol.path("g")),
        b"written via background daemon"
    );
    vol.unmount();
}

#[test]
fn sigterm_and_sigint_unmount_cleanly_and_keep_unsynced_writes() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let data = common::random_bytes(30, 3 << 20);
    // Written and closed but never fsynced: a clean shutdown must still persist it.
    fs::write(vol.path("term"), &data).unwrap();
    vol.stop_with_signal(libc::SIGTERM);
    vol.remount();
    common::assert_bytes_eq("after SIGTERM", &common::read_all(&vol.path("term")), &data);
    fs::write(vol.path("int"), b"written before SIGINT").unwrap();
    vol.stop_with_signal(libc::SIGINT);
    vol.remount();
    assert_eq!(common::read_all(&vol.path("int")), b"written before SIGINT");
    vol.unmount();
}

/// Whether mounts can run here and a test can act as another user (`as_nobody`); prints
/// why not (a `SKIP:` line) otherwise.
fn can_act_as_nobody() -> bool {
    if !fuse_available() {
        return false;
    }
    if !common::is_root() || which("setpriv").is_none() {
        eprintln!("SKIP: needs root and setpriv to act as another user");
        return false;
    }
    true
}

/// A fresh volume mounted `-o allow_other`, whose temp dir nobody may traverse down to the
/// mountpoint.
fn volume_nobody_can_reach() -> Volume {
    use std::os::unix::fs::PermissionsExt;
    let mut vol = Volume::new();
    fs::set_permissions(vol.scratch(), fs::Permissions::from_mode(0o755)).unwrap();
    vol.set_mount_args(&["-o", "allow_other"]);
    vol.remount();
    vol
}

/// Run `cmd` as uid/gid 65534 (nobody); returns (success, stderr).
fn as_nobody(args: &[&str]) -> (bool, String) {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn allow_other_lets_other_users_in_and_permissions_are_enforced() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !can_act_as_nobody() {
        return;
    }
    let mut vol = Volume::new();
    // Let "nobody" traverse the temp dir down to the mountpoint.
    fs::set_permissions(vol.scratch(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(vol.path("public"), b"readable by all").unwrap();
    fs::set_permissions(vol.path("public"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(vol.path("secret"), b"root only").unwrap();
    fs::set_permissions(vol.path("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(vol.path("shared")).unwrap();
    fs::set_permissions(vol.path("shared"), fs::Permissions::from_mode(0o777)).unwrap();
    let public = vol.path("public").display().to_string();
    let secret = vol.path("secret").display().to_string();
    let created = vol.path("shared/by-nobody").display().to_string();

    // Without allow_other, FUSE refuses every other user.
    let (ok, _) = as_nobody(&["cat", &public]);
    assert!(!ok, "another user read the mount without -o allow_other");

    vol.set_mount_args(&["-o", "allow_other"]);
    vol.remount();
    let (ok, err) = as_nobody(&["cat", &public]);
    assert!(ok, "nobody cannot read a 0644 file with allow_other: {err}");
    let (ok, _) = as_nobody(&["cat", &secret]);
    assert!(!ok, "nobody read a 0600 root file");
    let (ok, _) = as_nobody(&["sh", "-c", &format!("echo x >> '{public}'")]);
    assert!(!ok, "nobody appended to a 0644 root file");
    let (ok, err) = as_nobody(&["touch", &created]);
    assert!(ok, "nobody cannot create in a 0777 dir: {err}");
    let m = fs::metadata(&created).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (65534, 65534),
        "a new file must belong to its creator"
    );
    assert_eq!(common::read_all(&vol.path("public")), b"readable by all");
    vol.unmount();
}

/// Linux clears set-user-ID when a user without CAP_FSETID writes to a file, and
/// set-group-ID too when the file is group-executable or the writer is not in its group
/// (`setattr_should_drop_sgid`); a writer with CAP_FSETID (root here) keeps both. The change
/// must show at once, also to a statx that asks for the mode alone (answered from the
/// kernel's cache, which a direct write does not drop), and survive a remount.
#[test]
fn a_write_clears_set_id_bits_as_linux_does_and_the_mode_shows_it_at_once() {
    use std::io::Write;
    use std::os::unix::fs::{PermissionsExt, chown};
    if !can_act_as_nobody() {
        return;
    }
    let mut vol = volume_nobody_can_reach();
    // Who writes: nobody (uid/gid 65534, no other group), nobody with supplementary group 0,
    // or root (CAP_FSETID).
    #[derive(Clone, Copy)]
    enum Writer {
        Nobody,
        NobodyInGroup0,
        Root,
    }
    // (name, owner gid, mode, writer, mode after the write)
    let nobody = 65534;
    let cases: [(&str, u32, u32, Writer, u32); 6] = [
        ("suid-sgid-gx", nobody, 0o6777, Writer::Nobody, 0o0777),
        ("sgid-in-group", nobody, 0o2666, Writer::Nobody, 0o2666),
        ("sgid-not-in-group", 0, 0o2666, Writer::Nobody, 0o0666),
        (
            "sgid-supplementary",
            0,
            0o2666,
            Writer::NobodyInGroup0,
            0o2666,
        ),
        ("suid-only", nobody, 0o4744, Writer::Nobody, 0o0744),
        ("root-writes", nobody, 0o6777, Writer::Root, 0o6777),
    ];
    for (name, gid, mode, writer, _) in cases {
        let p = vol.path(name);
        // Written back and settled first: a file with data pending has a 1 s attribute
        // timeout anyway, which would hide a stale mode after that second.
        let mut f = fs::File::create(&p).unwrap();
        f.write_all(b"before\n").unwrap();
        f.sync_all().unwrap();
        drop(f);
        chown(&p, Some(nobody), Some(gid)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(common::cached_mode(&p), mode, "{name}: mode as set");
        let append = format!("echo more >> '{}'", p.display());
        let (ok, err) = match writer {
            Writer::Nobody => as_nobody(&["sh", "-c", &append]),
            Writer::NobodyInGroup0 => {
                let out = Command::new("setpriv")
                    .args(["--reuid=65534", "--regid=65534", "--groups=0"])
                    .args(["--inh-caps=-all", "sh", "-c", &append])
                    .stdin(Stdio::null())
                    .output()
                    .expect("run setpriv");
                (out.status.success(), common::output_text(&out))
            }
            Writer::Root => {
                run(Command::new("sh").args(["-c", &append]));
                (true, String::new())
            }
        };
        assert!(ok, "{name}: cannot append: {err}");
    }
    for (name, _, _, _, want) in cases {
        let got = common::cached_mode(&vol.path(name));
        assert_eq!(
            got, want,
            "{name}: mode just after the write {got:o}, want {want:o}"
        );
    }
    vol.remount();
    for (name, _, _, _, want) in cases {
        let got = common::cached_mode(&vol.path(name));
        assert_eq!(
            got, want,
            "{name}: mode after a remount {got:o}, want {want:o}"
        );
        assert_eq!(
            common::read_all(&vol.path(name)),
            b"before\nmore\n",
            "{name}"
        );
    }
    vol.unmount();
}

/// The system's python3, by its path: nobody cannot run root's python3 shims.
const PYTHON: &str = "/usr/bin/python3";

/// fallocate (every mode), truncate and copy_file_range clear set-ID bits by the same rule as
/// a write (fstests generic/683-685): the kernel drops set-group-ID only from
/// group-executable files before it sends FALLOCATE, SETATTR or COPY_FILE_RANGE, and the
/// daemon drops it when the caller is outside the file's group.
#[test]
fn fallocate_truncate_and_copy_file_range_clear_set_id_bits_as_a_write_does() {
    use std::os::unix::fs::{PermissionsExt, chown};
    if !can_act_as_nobody() || which("fallocate").is_none() || !Path::new(PYTHON).exists() {
        return;
    }
    let mut vol = volume_nobody_can_reach();
    let nobody = 65534;
    let cfr_src = vol.path("cfr-src");
    fs::write(&cfr_src, vec![b'y'; 16384]).unwrap();
    let cfr = format!(
        "import os, sys; a = os.open({:?}, os.O_RDONLY); b = os.open(sys.argv[1], os.O_WRONLY); \
         assert os.copy_file_range(a, b, 4096, 0, 8192) == 4096",
        cfr_src.display().to_string()
    );
    // (fallocate's options, owner gid, mode, run as root?, mode after)
    let modes: [&[&str]; 6] = [
        &["fallocate", "-l", "128KiB"],
        &["fallocate", "-p", "-o", "4096", "-l", "4096"],
        &["fallocate", "-z", "-o", "0", "-l", "8192"],
        // A truncate drops them by the same rule (ext4 does; the kernel's FUSE side keeps
        // set-group-ID of a file that is not group-executable).
        &["truncate", "-s", "4096"],
        &["truncate", "-s", "1MiB"],
        // And so does copy_file_range into the file (Linux's file_modified).
        &[PYTHON, "-c", &cfr],
    ];
    let cases: [(u32, u32, bool, u32); 5] = [
        (0, 0o2666, false, 0o0666),
        (0, 0o6766, false, 0o0766),
        (nobody, 0o2666, false, 0o2666),
        (nobody, 0o6777, false, 0o0777),
        (nobody, 0o6666, true, 0o6666),
    ];
    for (m, opts) in modes.iter().enumerate() {
        for (c, &(gid, mode, root, want)) in cases.iter().enumerate() {
            let p = vol.path(&format!("f{m}-{c}"));
            fs::write(&p, vec![b'x'; 64 * 1024]).unwrap();
            chown(&p, Some(nobody), Some(gid)).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            let mut args: Vec<&str> = opts.to_vec();
            let path = p.display().to_string();
            args.push(&path);
            if root {
                run(Command::new(args[0]).args(&args[1..]));
            } else {
                let (ok, err) = as_nobody(&args);
                assert!(ok, "{args:?}: {err}");
            }
            let got = common::cached_mode(&p);
            assert_eq!(
                got,
                want,
                "{args:?} as {}, gid {gid}, mode {mode:o}: got {got:o}, want {want:o}",
                if root { "root" } else { "nobody" }
            );
        }
    }
    vol.remount();
    let got = common::cached_mode(&vol.path("f0-0"));
    assert_eq!(got, 0o0666, "after a remount");
    vol.unmount();
}

/// A change of group or owner drops set-ID bits as on ext4 (Linux's chown_common): set-user-ID
/// whoever asks; set-group-ID from a group-executable file, or when the caller (without
/// CAP_FSETID) is outside the file's group. The kernel's FUSE side applies only the first two;
/// the third is the daemon's (without it, nobody's chgrp below kept 2644).
#[test]
fn chown_and_chgrp_clear_set_id_bits_as_ext4_does() {
    use std::os::unix::fs::{PermissionsExt, chown};
    if !can_act_as_nobody() || !Path::new(PYTHON).exists() {
        return;
    }
    let mut vol = volume_nobody_can_reach();
    let nobody = 65534;
    // (owner gid, mode, run as root?, new group, mode after); the owner is nobody
    let cases: [(u32, u32, bool, &str, u32); 6] = [
        (0, 0o2644, false, "65534", 0o0644),
        (nobody, 0o2644, false, "65534", 0o2644),
        (nobody, 0o4644, false, "65534", 0o0644),
        (0, 0o2644, true, "65534", 0o2644),
        (nobody, 0o6755, true, "0", 0o0755),
        (nobody, 0o6745, true, "0", 0o2745),
    ];
    for (c, &(gid, mode, root, group, want)) in cases.iter().enumerate() {
        let p = vol.path(&format!("f{c}"));
        fs::write(&p, b"x").unwrap();
        chown(&p, Some(nobody), Some(gid)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        let path = p.display().to_string();
        let args = ["chgrp", group, path.as_str()];
        if root {
            run(Command::new(args[0]).args(&args[1..]));
        } else {
            let (ok, err) = as_nobody(&args);
            assert!(ok, "{args:?}: {err}");
        }
        let got = common::cached_mode(&p);
        assert_eq!(
            got,
            want,
            "chgrp {group} as {}, gid {gid}, mode {mode:o}: got {got:o}, want {want:o}",
            if root { "root" } else { "nobody" }
        );
    }
    // chown(2) that changes neither owner nor group (-1, -1) drops them too: with
    // FUSE_HANDLE_KILLPRIV the daemon gets a SETATTR that sets nothing.
    let p = vol.path("same");
    fs::write(&p, b"x").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o6755)).unwrap();
    chown(&p, None, None).unwrap();
    assert_eq!(common::cached_mode(&p), 0o0755, "chown -1 -1 as root");
    chown(&p, Some(nobody), Some(nobody)).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o6745)).unwrap();
    let path = p.display().to_string();
    let (ok, err) = as_nobody(&[
        PYTHON,
        "-c",
        "import os, sys; os.chown(sys.argv[1], -1, -1)",
        &path,
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        common::cached_mode(&p),
        0o2745,
        "chown -1 -1 as the owner, in the group"
    );
    // A directory keeps them (set-group-ID on a directory is inheritance, not privilege).
    let d = vol.path("d");
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o2775)).unwrap();
    chown(&d, Some(nobody), Some(nobody)).unwrap();
    assert_eq!(common::cached_mode(&d), 0o2775);
    vol.remount();
    assert_eq!(
        common::cached_mode(&vol.path("f0")),
        0o0644,
        "after a remount"
    );
    vol.unmount();
}

#[test]
fn kill_9_during_cp_leaves_a_mountable_volume_with_every_entry_readable() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let src = vol.scratch().join("src");
    make_tree(&src, 5, TREE_FILES);
    // Something durable before the crash, to check afterwards.
    fs::write(vol.path("before"), b"durable before crash").unwrap();
    vol.remount();

    // Copy the tree repeatedly so the crash lands mid-copy, after at least one periodic
    // write-back (the daemon commits at least every ~5 s).
    let mut cp = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "for i in $(seq 1 20); do cp -a {} {}/copy$i || exit 1; done",
            sh_quote(&src),
            sh_quote(&vol.mnt)
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_secs(8));
    assert!(
        cp.try_wait().unwrap().is_none(),
        "the copies finished before the kill: the test did not crash mid-copy"
    );
    vol.kill9();
    let _ = cp.kill();
    let _ = cp.wait();

    vol.remount();
    assert_eq!(
        common::read_all(&vol.path("before")),
        b"durable before crash"
    );
    // Whatever part of the copy survived must be consistent: every listed entry can be
    // stat'ed and read in full (no ENOENT for a listed name, no EIO for a missing chunk).
    let snap = snapshot(&vol.mnt);
    let src_entries = snapshot(&src).len();
    let copied = snap
        .keys()
        .filter(|p| p.to_string_lossy().starts_with("copy"))
        .count();
    eprintln!(
        "kill -9 during cp: {copied} entries of the copies survived ({src_entries} per copy)"
    );
    assert!(
        copied > 0,
        "nothing copied in the 8 s before the crash was durable: no periodic write-back?"
    );
    // The volume works normally afterwards.
    run(Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(vol.path("again")));
    diff_r(&src, &vol.path("again"));
    vol.unmount();
    vol.remount();
    diff_r(&src, &vol.path("again"));
    let _ = snapshot(&vol.mnt);
    vol.unmount();
}

/// A write drops the file's capabilities (`security.capability`, what setcap sets), whoever
/// writes, as Linux does: an unprivileged user who may write to a file must not be able to
/// change the code of a program that keeps its capabilities (fstests generic/093). Before,
/// the capability survived every write (direct I/O writes skip the kernel's own removal).
#[test]
fn a_write_drops_file_capabilities_whoever_writes() {
    use common::xattr::{getxattr, setxattr};
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    if !can_act_as_nobody() {
        return;
    }
    let mut vol = volume_nobody_can_reach();
    // VFS_CAP_REVISION_2 with the effective flag, permitted = CAP_CHOWN.
    let mut cap = vec![0u8; 20];
    cap[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    cap[4] = 1;
    for (name, by_nobody) in [("by-root", false), ("by-nobody", true)] {
        let p = vol.path(name);
        fs::write(&p, b"#!/bin/sh\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o777)).unwrap();
        setxattr(&p, "security.capability", &cap, 0).unwrap();
        assert_eq!(getxattr(&p, "security.capability").unwrap(), cap, "{name}");
        if by_nobody {
            let script = format!("echo appended >> {}", p.display());
            let (ok, err) = as_nobody(&["sh", "-c", &script]);
            assert!(ok, "nobody cannot append to a 0777 file: {err}");
        } else {
            let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
            f.write_all(b"echo appended\n").unwrap();
        }
        let e = getxattr(&p, "security.capability").expect_err("capability kept after a write");
        assert_eq!(e.raw_os_error(), Some(libc::ENODATA), "{name}: {e}");
    }
    // A capability set while the file is open for writing, after writes that found none,
    // goes with the next write all the same.
    let p = vol.path("open-across");
    let mut f = fs::File::create(&p).unwrap();
    f.write_all(b"first").unwrap();
    setxattr(&p, "security.capability", &cap, 0).unwrap();
    f.write_all(b"second").unwrap();
    let e = getxattr(&p, "security.capability").expect_err("capability kept");
    assert_eq!(e.raw_os_error(), Some(libc::ENODATA), "open-across: {e}");
    drop(f);
    // Only a write drops it: a read does not.
    let p = vol.path("read-only");
    fs::write(&p, b"x").unwrap();
    setxattr(&p, "security.capability", &cap, 0).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"x");
    assert_eq!(getxattr(&p, "security.capability").unwrap(), cap);
    vol.unmount();
}
