//! Damaged packs must never turn into wrong bytes: a chunk record whose bytes no longer match
//! its name, a pack deleted or truncated by hand, each gives EIO to the reader
//! (through a real mount, also after the cache was warm), a log line naming the chunk and the
//! file, and an fsck error naming the file; undamaged files stay readable.

mod common;

use common::*;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_dedupfs");

fn read_errno(p: &std::path::Path) -> Result<Vec<u8>, i32> {
    let mut f = fs::File::open(p).map_err(|e| e.raw_os_error().unwrap_or(0))?;
    let mut v = Vec::new();
    f.read_to_end(&mut v)
        .map(|_| v)
        .map_err(|e| e.raw_os_error().unwrap_or(0))
}

#[test]
fn damaged_chunks_give_eio_a_log_line_and_fsck_errors_never_wrong_bytes() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    // Files below the 16 KiB minimum chunk size: exactly one chunk each.
    let names = ["corrupt", "deleted", "truncated", "intact"];
    let mut contents = Vec::new();
    // One mount per file: each mount starts new packs, so each file's chunk has a pack of
    // its own and the damage below hits one file.
    for (i, n) in names.iter().enumerate() {
        let data = random_bytes(60 + i as u64, 12 * 1024);
        fs::write(vol.path(n), &data).unwrap();
        contents.push(data);
        vol.remount();
    }
    // Warm the cache with one file, so the damage must be caught on a later load too.
    assert_eq!(read_all(&vol.path("corrupt")), contents[0]);
    vol.unmount();
    let packs = pack_files(&vol.store);
    let pack_of = |data: &[u8]| -> (PathBuf, usize) {
        let id = blake3::hash(data);
        for p in &packs {
            let bytes = fs::read(p).unwrap();
            if let Some(at) = bytes.windows(32).position(|w| w == id.as_bytes()) {
                return (p.clone(), at);
            }
        }
        panic!("no pack holds chunk {}", id.to_hex())
    };
    let (corrupt, at) = pack_of(&contents[0]);
    let (deleted, _) = pack_of(&contents[1]);
    let (trunc, _) = pack_of(&contents[2]);
    let (intact, _) = pack_of(&contents[3]);
    let distinct: std::collections::BTreeSet<_> = [&corrupt, &deleted, &trunc, &intact].into();
    assert_eq!(distinct.len(), 4, "one pack per file: {packs:?}");
    // Corrupt one byte of the chunk's data in place (the id sits 8 bytes into the record
    // header, the data starts 56 bytes after it), delete one pack, truncate one.
    let mut bytes = fs::read(&corrupt).unwrap();
    bytes[at + 56 + 1000] ^= 0xFF;
    OpenOptions::new()
        .write(true)
        .open(&corrupt)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    fs::remove_file(&deleted).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&trunc)
        .unwrap()
        .set_len(100)
        .unwrap();

    vol.remount();
    for n in &names[..3] {
        match read_errno(&vol.path(n)) {
            Err(e) => assert_eq!(e, libc::EIO, "{n}: errno {e}, want EIO"),
            Ok(v) => panic!("{n}: read returned {} bytes from a damaged chunk", v.len()),
        }
        // A second read fails the same way: the bad chunk was not cached.
        assert_eq!(read_errno(&vol.path(n)).err(), Some(libc::EIO), "{n} again");
    }
    assert_eq!(read_all(&vol.path("intact")), contents[3]);
    let log = vol.log();
    let hex = blake3::hash(&contents[0]).to_hex().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains(&hex) && l.contains("ino") && l.contains("unreadable")),
        "no log line naming chunk {hex} and the file:\n{log}"
    );
    vol.unmount();

    let out = Command::new(BIN)
        .arg("fsck")
        .arg(&vol.store)
        .args(["--verify-data", "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "fsck exit status on a damaged store");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lost: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error")
        .filter_map(|f| f["path"].as_str())
        .collect();
    for n in &names[..3] {
        assert!(
            lost.iter().any(|p| p.ends_with(n)),
            "fsck names no error for /{n}: {lost:?}"
        );
    }
    assert!(!lost.iter().any(|p| p.ends_with("intact")), "{lost:?}");
}

/// A pack's fdatasync fails under a real mount (`DEDUPFS_FAULTS=sync:1:eio`, the first one
/// after the mount): the fsync that needed it gets EIO. From then on nothing can be made
/// durable (Linux may have dropped the pages and would report success on a retry), so the
/// volume refuses every change with EROFS, as ext4 does after an I/O error aborts its journal,
/// instead of accepting writes that no fsync could keep and the unmount would drop. What was
/// durable before reads back intact, now and after a remount; the log and the unmount say what
/// happened; the never-durable file is gone after the remount (as after a crash), fsck is
/// clean, and the volume takes writes again.
#[test]
fn a_failed_pack_sync_gives_eio_then_refuses_changes_and_keeps_what_was_durable() {
    if !fuse_available() {
        return;
    }
    let mut first = Volume::new();
    fs::create_dir(first.path("d")).unwrap();
    let kept = random_bytes(71, 300_000);
    fs::write(first.path("d/kept"), &kept).unwrap();
    first.unmount();
    let store = first.store.clone();
    let faults = [("DEDUPFS_FAULTS".to_string(), "sync:1:eio".to_string())];
    let mut vol = Volume::mount_existing(&store, &[], &faults);
    let names = |vol: &Volume| {
        let mut v: Vec<String> = fs::read_dir(vol.path("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&vol), ["kept"]);

    // One write(2) of less than a FUSE write: it is in the daemon before any sync can fail.
    let mut lost = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(vol.path("d/lost"))
        .unwrap();
    lost.write_all(&random_bytes(72, 100_000)).unwrap();
    assert_eq!(errno_of("fsync of d/lost", lost.sync_all()), libc::EIO);

    // Every change is refused now, on the open descriptor too.
    assert_eq!(
        errno_of("write after the failure", lost.write_all(b"more")),
        libc::EROFS
    );
    assert_changes_refused("after the failed sync", &vol.path("d"), &vol.path("d/kept"));
    drop(lost);
    assert_bytes_eq("d/kept", &read_all(&vol.path("d/kept")), &kept);
    let log = vol.log();
    assert!(
        log.contains("read-only from now on: a sync of the packs failed"),
        "log does not say why the volume refuses changes:\n{log}"
    );
    let status = vol.unmount_status();
    assert!(
        !status.success(),
        "a daemon that could not make everything durable must exit non-zero; log:\n{}",
        vol.log()
    );
    assert!(
        vol.log().contains("final sync failed"),
        "the unmount does not report the failure:\n{}",
        vol.log()
    );

    let mut vol = Volume::mount_existing(&store, &[], &[]);
    assert_eq!(
        names(&vol),
        ["kept"],
        "the never-durable file outlived the remount"
    );
    assert_bytes_eq(
        "d/kept after remount",
        &read_all(&vol.path("d/kept")),
        &kept,
    );
    let again = random_bytes(73, 200_000);
    let mut f = fs::File::create(vol.path("d/again")).unwrap();
    f.write_all(&again).unwrap();
    f.sync_all().unwrap();
    drop(f);
    vol.unmount();
    let out = Command::new(BIN).arg("fsck").arg(&store).output().unwrap();
    assert!(out.status.success(), "fsck: {}", output_text(&out));
    let mut vol = Volume::mount_existing(&store, &[], &[]);
    assert_eq!(names(&vol), ["again", "kept"]);
    assert_bytes_eq("d/again", &read_all(&vol.path("d/again")), &again);
    vol.unmount();
    drop(first);
}
