//! Damaged chunk files must never turn into wrong bytes: a chunk whose content no longer
//! matches its name, a chunk file deleted or truncated by hand, each gives EIO to the reader
//! (through a real mount, also after the cache was warm), a log line naming the chunk and the
//! file, and an fsck error naming the file; undamaged files stay readable.

mod common;

use common::*;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_dedupfs");

/// Chunk files: `chunks/xx/<64 hex>`.
fn chunk_files(store: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for a in fs::read_dir(store.join("chunks")).unwrap().flatten() {
        if a.file_name() == "tmp" || !a.path().is_dir() {
            continue;
        }
        for b in fs::read_dir(a.path()).unwrap().flatten() {
            if b.file_name().len() == 64 && b.path().is_file() {
                out.push(b.path());
            }
        }
    }
    out.sort();
    out
}

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
    for (i, n) in names.iter().enumerate() {
        let data = random_bytes(60 + i as u64, 12 * 1024);
        fs::write(vol.path(n), &data).unwrap();
        contents.push(data);
    }
    // Warm the cache with one file, so the damage must be caught on a later load too.
    assert_eq!(read_all(&vol.path("corrupt")), contents[0]);
    vol.unmount();
    let chunks = chunk_files(&vol.store);
    assert_eq!(chunks.len(), 4, "one chunk per file: {chunks:?}");
    let name_of = |data: &[u8]| -> PathBuf {
        let hex = blake3::hash(data).to_hex().to_string();
        chunks
            .iter()
            .find(|p| p.file_name().unwrap().to_string_lossy() == hex)
            .unwrap_or_else(|| panic!("no chunk file {hex}"))
            .clone()
    };
    // Corrupt one byte in place, delete one, truncate one.
    let corrupt = name_of(&contents[0]);
    let mut bytes = fs::read(&corrupt).unwrap();
    bytes[1000] ^= 0xFF;
    OpenOptions::new()
        .write(true)
        .open(&corrupt)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    fs::remove_file(name_of(&contents[1])).unwrap();
    let trunc = name_of(&contents[2]);
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
    let hex = corrupt.file_name().unwrap().to_string_lossy().to_string();
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
