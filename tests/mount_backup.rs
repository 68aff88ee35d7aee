//! Metadata backups on real mounts: a mounted volume copies its metadata into STORE/backups
//! (at unmount, on its timer, on `dedupfs backup`), and `fsck --repair` puts the newest good copy
//! in place of a meta.redb that cannot be read.
//!
//! Guards against: a damaged meta.redb header losing the whole tree; a restore that loses data
//! the backup had, keeps changes it cannot have, or does not say what was lost; a crash or a
//! damaged copy that makes the restore pick a broken backup; rotation that keeps too many or
//! the wrong copies.

mod common;

use common::{BIN, Volume};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn dedupfs(args: &[&str], store: &Path) -> Output {
    let (cmd, rest) = args.split_first().unwrap();
    Command::new(BIN)
        .arg(cmd)
        .args(rest)
        .arg(store)
        .stdin(Stdio::null())
        .output()
        .expect("run dedupfs")
}

fn text(o: &Output) -> String {
    common::output_text(o)
}

fn backups(store: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(store.join("backups"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Overwrites the first 4 KiB of meta.redb (redb's header and its copies of the root pointers).
fn destroy_header(store: &Path) {
    let f = OpenOptions::new()
        .write(true)
        .open(store.join("meta.redb"))
        .unwrap();
    f.write_all_at(&[0x5a; 4096], 0).unwrap();
    f.sync_all().unwrap();
}

fn write_synced(p: &Path, data: &[u8]) {
    let mut f = File::create(p).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// A small tree: text files (compressible) and random data (not).
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("src/deep")).unwrap();
    for i in 0..40 {
        fs::write(
            root.join(format!("src/file{i}.txt")),
            format!("line {i}\n").repeat(50 + i * 30),
        )
        .unwrap();
    }
    fs::write(
        root.join("src/deep/blob.bin"),
        common::random_bytes(7, 3 << 20),
    )
    .unwrap();
    std::os::unix::fs::symlink("file1.txt", root.join("src/link")).unwrap();
}

fn try_mount(vol: &Volume) -> Output {
    Command::new(BIN)
        .arg("mount")
        .arg(&vol.store)
        .arg(&vol.mnt)
        .arg("--background")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_destroyed_metadata_header_is_restored_from_the_backup_taken_at_unmount() {
    if !common::fuse_available() {
        eprintln!("skipped: no FUSE");
        return;
    }
    let mut vol = Volume::new();
    let orig = vol.scratch().join("orig");
    make_tree(&orig);
    common::run(
        Command::new("cp")
            .arg("-a")
            .arg(&orig)
            .arg(vol.path("tree")),
    );
    vol.unmount();
    let first = backups(&vol.store);
    assert_eq!(first.len(), 1, "the unmount took one backup: {first:?}");

    // Changes after that backup, made durable, then a crash (no unmount, so no new backup).
    vol.remount();
    write_synced(&vol.path("late.txt"), b"written after the backup\n");
    vol.kill9();
    assert_eq!(backups(&vol.store), first, "a crash takes no backup");
    destroy_header(&vol.store);

    let out = try_mount(&vol);
    assert!(
        !out.status.success(),
        "mount of a damaged store: {}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("meta.redb cannot be read") && err.contains("fsck --repair"),
        "the mount error says what is wrong and what to do: {err}"
    );

    let out = dedupfs(&["fsck", "--repair", "--json"], &vol.store);
    assert!(out.status.success(), "fsck --repair: {}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["restored_from_backup"]["seq"], 1,
        "the report names the backup: {report}"
    );
    let kept: Vec<_> = fs::read_dir(&vol.store)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("meta.redb.damaged-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "the damaged database is kept, not deleted");

    vol.remount();
    common::run(
        Command::new("diff")
            .arg("-r")
            .arg(&orig)
            .arg(vol.path("tree")),
    );
    assert!(
        !vol.path("late.txt").exists(),
        "a change made after the backup cannot be in it"
    );
    // The restored volume works, and the clean fsck agrees.
    write_synced(&vol.path("after-restore"), b"ok");
    vol.unmount();
    let out = dedupfs(&["fsck", "--verify-data"], &vol.store);
    assert!(
        out.status.success(),
        "fsck after the restore: {}",
        text(&out)
    );
}

#[test]
fn a_restore_names_the_files_whose_data_was_freed_after_the_backup() {
    if !common::fuse_available() {
        eprintln!("skipped: no FUSE");
        return;
    }
    // 1 MiB packs: the deleted file's packs die whole and go at once.
    let mut vol = Volume::with_args(&["--pack-mib", "1"], &[]);
    let gone = common::random_bytes(11, 4 << 20);
    let kept = common::random_bytes(12, 1 << 20);
    write_synced(&vol.path("gone.bin"), &gone);
    write_synced(&vol.path("kept.bin"), &kept);
    let out = dedupfs(&["backup"], &vol.store);
    assert!(
        out.status.success(),
        "backup of a mounted store: {}",
        text(&out)
    );
    fs::remove_file(vol.path("gone.bin")).unwrap();
    let out = dedupfs(&["gc"], &vol.store);
    assert!(out.status.success(), "gc: {}", text(&out));
    vol.kill9();
    destroy_header(&vol.store);

    let out = dedupfs(&["fsck", "--repair", "--json"], &vol.store);
    assert!(
        !out.status.success(),
        "data is lost: fsck must not exit 0: {}",
        text(&out)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!report["restored_from_backup"].is_null(), "{report}");
    let lost: Vec<&serde_json::Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "file_data_lost")
        .collect();
    assert!(
        !lost.is_empty() && lost.iter().all(|f| f["path"] == "/gone.bin"),
        "the lost file is named, and only it: {lost:?}"
    );

    vol.remount();
    common::assert_bytes_eq(
        "a file the backup has, whose data is intact",
        &common::read_all(&vol.path("kept.bin")),
        &kept,
    );
    let e = fs::read(vol.path("gone.bin")).expect_err("reading lost data must fail");
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EIO),
        "lost data reads as EIO: {e}"
    );
    vol.unmount();
}

#[test]
fn backups_rotate_and_a_damaged_newest_copy_is_passed_over() {
    if !common::fuse_available() {
        eprintln!("skipped: no FUSE");
        return;
    }
    let mut vol = Volume::new();
    for i in 0..5 {
        write_synced(&vol.path(&format!("f{i}")), format!("{i}").as_bytes());
        let out = dedupfs(&["backup"], &vol.store);
        assert!(out.status.success(), "backup {i}: {}", text(&out));
    }
    vol.kill9();
    let names: Vec<String> = backups(&vol.store)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "three copies are kept: {names:?}");
    assert!(
        names[0].starts_with("meta-00000003-") && names[2].starts_with("meta-00000005-"),
        "the newest three: {names:?}"
    );
    // A copy left half-written by a crash is not a backup.
    fs::write(
        vol.store.join("backups/meta-00000009-1.redb.tmp"),
        b"half a copy",
    )
    .unwrap();
    // The newest copy is damaged too: the restore takes the one before it and says so.
    let newest = backups(&vol.store)
        .into_iter()
        .find(|p| {
            p.to_string_lossy().ends_with(".redb") && p.to_string_lossy().contains("-00000005-")
        })
        .unwrap();
    OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap()
        .write_all_at(&[0; 4096], 0)
        .unwrap();
    let out = dedupfs(&["fsck", "--json"], &vol.store);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged: Vec<_> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "backup_damaged")
        .collect();
    assert!(
        damaged.len() == 1
            && damaged[0]["message"]
                .as_str()
                .unwrap()
                .contains("-00000005-"),
        "fsck reports the damaged copy: {report}"
    );
    assert_eq!(report["backups"].as_array().unwrap().len(), 3);
    destroy_header(&vol.store);
    let out = dedupfs(&["fsck", "--repair", "--json"], &vol.store);
    assert!(out.status.success(), "fsck --repair: {}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["restored_from_backup"]["seq"], 4, "{report}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used"),
        "the skipped copy is reported: {}",
        text(&out)
    );
    vol.remount();
    for i in 0..4 {
        assert_eq!(
            fs::read(vol.path(&format!("f{i}"))).unwrap(),
            format!("{i}").as_bytes()
        );
    }
    assert!(!vol.path("f4").exists(), "f4 came after backup 4");
    write_synced(&vol.path("f5"), b"5");
    vol.unmount();
    assert!(
        !backups(&vol.store)
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".tmp")),
        "the next backup (at unmount) removed the half-written copy"
    );
    assert_eq!(backups(&vol.store).len(), 3, "still three copies");
}

#[test]
fn a_store_without_backups_says_so_and_keeps_its_damaged_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = Command::new(BIN).arg("init").arg(&store).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    destroy_header(&store);
    let before = fs::read(store.join("meta.redb")).unwrap();
    let out = dedupfs(&["fsck", "--repair"], &store);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no metadata backup"),
        "{}",
        text(&out)
    );
    assert_eq!(
        fs::read(store.join("meta.redb")).unwrap(),
        before,
        "nothing changed"
    );
}

#[test]
fn the_timer_backs_up_a_mounted_volume_whose_metadata_changed() {
    if !common::fuse_available() {
        eprintln!("skipped: no FUSE");
        return;
    }
    let mut vol = Volume::with_args(&[], &["-o", "backup_interval=1"]);
    write_synced(&vol.path("a"), b"a");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while backups(&vol.store).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no backup 20 s after a change with backup_interval=1\n{}",
            vol.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // No change: no new copy, however long the volume stays mounted.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let n = backups(&vol.store).len();
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(
        backups(&vol.store).len(),
        n,
        "an idle volume is not copied again"
    );
    vol.unmount();
    assert_eq!(
        backups(&vol.store).len(),
        n,
        "nothing changed since the last copy: the unmount takes none"
    );
}
