//! Guards the durability of data that was already safe: a partial write-back (the periodic
//! flusher on an open file) must never leave committed metadata with a hole where fsynced
//! bytes were, even for a moment, because any other file's fsync makes that metadata durable.
//! Found by the kill -9 harness (tests/crash.rs): a fsynced file read zeros after a crash.
//!
//! Also guards `dedupfs sync` (`Fs::sync_fs`): it must make every file durable as `fsync` of
//! each would, including the unfinished tail chunk of a file still open for writing, which
//! the periodic flusher deliberately keeps in memory.

use dedupfs::chunker::ChunkParams;
use dedupfs::fs::{Caller, Fs, FsConfig};
use dedupfs::meta::{MetaDb, ROOT_INO};
use dedupfs::store::{ChunkStore, LocalDirStore};
use std::path::Path;
use std::sync::Arc;

fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// The filesystem over `dir` (created on first use): metadata in `meta.redb`, chunk files in
/// `chunks/`. Dropping it without a sync is a crash.
fn open_fs(dir: &Path) -> Fs {
    let db = dir.join("meta.redb");
    let meta = if db.exists() {
        MetaDb::open(&db).unwrap()
    } else {
        MetaDb::create(&db, ChunkParams::default(), 0, 0).unwrap()
    };
    let store: Arc<dyn ChunkStore> = Arc::new(LocalDirStore::open(&dir.join("chunks")).unwrap());
    Fs::new(meta, store, FsConfig::default()).unwrap()
}

#[test]
fn partial_write_back_then_another_fsync_then_crash_keeps_fsynced_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let open = || open_fs(dir.path());
    let who = Caller::default();
    let data = noise(86_859, 5);
    {
        let fs = open();
        let (a, _, fa) = fs.create(who, ROOT_INO, b"a", 0o644).unwrap();
        fs.write(a, 0, &data).unwrap();
        fs.fsync(a).unwrap();
        // Not fsynced: a small overwrite in the file, still open.
        fs.write(a, 70_001, &[0xEE; 497]).unwrap();
        // The periodic flusher: a partial write-back of the open file.
        fs.sync_all(false).unwrap();
        // Another file's fsync makes all committed metadata durable.
        let (b, _, fb) = fs.create(who, ROOT_INO, b"b", 0o644).unwrap();
        fs.write(b, 0, b"other").unwrap();
        fs.fsync(b).unwrap();
        // Crash: the Fs goes away without a final write-back (no release, no sync); its
        // dirty bytes are lost as in a kill -9.
        let _ = (fa, fb);
        drop(fs);
    }
    let fs = open();
    let (a, attr) = fs.lookup(ROOT_INO, b"a").unwrap();
    assert_eq!(attr.size, data.len() as u64);
    let got = fs.read(a, 0, data.len() as u32).unwrap();
    // Either the fsynced content or the later overwrite may be there; never anything else.
    let mut later = data.clone();
    later[70_001..70_001 + 497].fill(0xEE);
    if got != data && got != later {
        let at = got.iter().zip(&data).position(|(x, y)| x != y).unwrap_or(0);
        panic!(
            "after the crash byte {at} is {:#04x}, fsynced {:#04x}",
            got[at], data[at]
        );
    }
}

#[test]
fn sync_fs_makes_open_files_durable_including_their_unfinished_tails() {
    let dir = tempfile::tempdir().unwrap();
    let open = || open_fs(dir.path());
    let who = Caller::default();
    // Several chunks each, ending in a piece no content-defined cut closes yet.
    let files: Vec<(&[u8], Vec<u8>)> = vec![
        (b"a", noise(300_001, 11)),
        (b"b", noise(77_777, 12)),
        (b"c", b"small".to_vec()),
    ];
    {
        let fs = open();
        let mut handles = Vec::new();
        for (name, data) in &files {
            let (ino, _, fh) = fs.create(who, ROOT_INO, name, 0o644).unwrap();
            fs.write(ino, 0, data).unwrap();
            handles.push(fh);
        }
        // Still open, never fsynced: only the volume-wide sync stands between them and loss.
        fs.sync_fs().unwrap();
        // Crash: no release, no final write-back.
        drop(handles);
        drop(fs);
    }
    let fs = open();
    for (name, data) in &files {
        let (ino, attr) = fs.lookup(ROOT_INO, name).unwrap();
        let name = String::from_utf8_lossy(name);
        assert_eq!(
            attr.size,
            data.len() as u64,
            "size of {name} after the crash"
        );
        let got = fs.read(ino, 0, data.len() as u32).unwrap();
        if let Some(at) = got.iter().zip(data).position(|(x, y)| x != y) {
            panic!(
                "{name}: byte {at} is {:#04x} after the crash, {:#04x} was synced",
                got[at], data[at]
            );
        }
        assert_eq!(got.len(), data.len(), "{name}: short read after the crash");
    }
}
