//! `dedupfs du` on a real mount.
//!
//! Guards against space accounting that counts shared chunks as exclusive (or the reverse), a
//! file with several names counted twice, exclusive bytes that are not what deleting the tree
//! frees, and `du` on a path outside any dedupfs volume doing anything but failing clearly.

mod common;

use common::{BIN, Volume, fuse_available, random_bytes};
use std::fs;
use std::path::Path;
use std::process::Command;

fn du(paths: &[&Path]) -> Vec<serde_json::Value> {
    let out = Command::new(BIN)
        .arg("du")
        .arg("--json")
        .args(paths)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dedupfs du: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

fn n(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

#[test]
fn du_tells_exclusive_from_shared_and_exclusive_is_what_a_delete_frees() {
    if !fuse_available() {
        eprintln!("skipped: no FUSE");
        return;
    }
    let vol = Volume::new();
    let mb = 1 << 20;
    // a/: a unique file, a copy of it (reference copy via copy_file_range), and a hard link.
    fs::create_dir_all(vol.path("a/sub")).unwrap();
    fs::write(vol.path("a/unique"), random_bytes(1, 3 * mb)).unwrap();
    common::run(
        Command::new("cp")
            .arg(vol.path("a/unique"))
            .arg(vol.path("a/sub/copy")),
    );
    fs::hard_link(vol.path("a/unique"), vol.path("a/sub/link")).unwrap();
    // b/: its own data, plus a copy of a file that also lives in a/.
    fs::create_dir(vol.path("b")).unwrap();
    fs::write(vol.path("b/own"), random_bytes(2, 2 * mb)).unwrap();
    common::run(
        Command::new("cp")
            .arg(vol.path("a/unique"))
            .arg(vol.path("b/shared")),
    );

    let r = du(&[
        &vol.path("a"),
        &vol.path("a/unique"),
        &vol.path("b"),
        &vol.path("b/own"),
    ]);
    let (a, a_unique, b, b_own) = (&r[0], &r[1], &r[2], &r[3]);
    assert_eq!(
        n(a, "logical_bytes"),
        6 * mb as u64,
        "a: unique + copy, the hard link once: {a}"
    );
    assert_eq!(n(a, "files"), 2, "{a}");
    assert_eq!(
        n(a, "exclusive_bytes"),
        0,
        "all of a is also in b/shared: {a}"
    );
    assert!(n(a, "shared_bytes") >= 3 * mb as u64, "{a}");
    assert_eq!(n(a_unique, "exclusive_bytes"), 0, "{a_unique}");
    assert_eq!(n(a_unique, "shared_bytes"), n(a, "shared_bytes"));
    assert_eq!(n(b, "logical_bytes"), 5 * mb as u64, "{b}");
    assert_eq!(n(b, "exclusive_bytes"), n(b_own, "exclusive_bytes"), "{b}");
    assert!(
        n(b_own, "exclusive_bytes") >= 2 * mb as u64,
        "random data is stored raw: {b_own}"
    );
    assert_eq!(n(b_own, "shared_bytes"), 0);
    let whole = &du(&[&vol.mnt])[0];
    assert_eq!(
        n(whole, "shared_bytes"),
        0,
        "nothing outside the volume: {whole}"
    );
    assert_eq!(
        n(whole, "exclusive_bytes"),
        n(a, "shared_bytes") + n(b_own, "exclusive_bytes"),
        "{whole}"
    );

    // Deleting b frees its exclusive bytes: the stored bytes fall by exactly the records'
    // payloads (du adds their 64-byte headers).
    let before = vol.stat_u64("stored_bytes");
    fs::remove_dir_all(vol.path("b")).unwrap();
    fs::File::open(&vol.mnt).unwrap().sync_all().unwrap();
    let freed = before - vol.stat_u64("stored_bytes");
    let chunks_only_in_b = n(b_own, "chunks");
    assert_eq!(
        n(b, "exclusive_bytes"),
        freed + 64 * chunks_only_in_b,
        "exclusive = what the delete freed (+ record headers): {b}"
    );
    // a's data is exclusive to a now.
    let a = &du(&[&vol.path("a")])[0];
    assert_eq!(n(a, "shared_bytes"), 0, "{a}");
    assert!(n(a, "exclusive_bytes") >= 3 * mb as u64, "{a}");
}

#[test]
fn du_outside_a_dedupfs_volume_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("du")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not on a dedupfs mount") && err.lines().count() == 1,
        "{err}"
    );
    let out = Command::new(BIN)
        .arg("du")
        .arg(dir.path().join("missing"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}
