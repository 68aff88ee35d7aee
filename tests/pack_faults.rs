//! Fault injection inside the pack store (`store::fault`): a record write that stops part-way
//! with EIO or ENOSPC (a short write), and a pack fdatasync that fails, driven through the
//! filesystem core over a real store directory, then a reopen (as after a crash or unmount).
//!
//! Guards against: a torn record left in a pack being read back or breaking later appends, a
//! failed write-back reported as success (or the data behind it dropped instead of retried),
//! other files' acknowledged data being touched, an fsync claiming durability after a failed
//! fdatasync, and a store that fsck finds damaged after any of it.

mod common;

use dedupfs::chunker::ChunkParams;
use dedupfs::error::FsError;
use dedupfs::fs::{Caller, Fs, FsConfig};
use dedupfs::maint::fsck::{FsckOptions, fsck};
use dedupfs::meta::ROOT_INO;
use dedupfs::meta::snapshot::Holders;
use dedupfs::store::codec::Codec;
use dedupfs::store::{ChunkStore, PackStore};
use dedupfs::volume;
use std::path::Path;
use std::sync::Arc;

const WHO: Caller = Caller { uid: 0, gid: 0 };

fn noise(seed: u64, len: usize) -> Vec<u8> {
    common::random_bytes(seed, len)
}

fn new_store(dir: &Path) {
    volume::init(
        dir,
        ChunkParams::from_avg(16384).unwrap(),
        &[],
        Codec::default(),
        1 << 20,
    )
    .unwrap();
}

fn open(dir: &Path) -> (Fs, Arc<PackStore>) {
    let vol = volume::open(dir).unwrap();
    let packs = vol.chunks.clone();
    (
        Fs::new(vol.meta, vol.chunks, FsConfig::default()).unwrap(),
        packs,
    )
}

fn create(fs: &Fs, name: &str, data: &[u8]) -> u64 {
    let (ino, _, fh) = fs.create(WHO, ROOT_INO, name.as_bytes(), 0o644).unwrap();
    fs.write(ino, 0, data).unwrap();
    fs.release(fh).unwrap();
    ino
}

fn read(fs: &Fs, name: &str) -> dedupfs::error::Result<Vec<u8>> {
    let (ino, attr) = fs.lookup(ROOT_INO, name.as_bytes())?;
    fs.read(ino, 0, attr.size as u32 + 1)
}

fn assert_clean(dir: &Path) {
    let vol = volume::open(dir).unwrap();
    let r = fsck(
        &vol.meta,
        vol.chunks.as_ref(),
        &Holders::default(),
        FsckOptions {
            repair: false,
            verify_data: true,
        },
        &mut |_| {},
    )
    .unwrap();
    assert!(!r.has_errors(), "fsck after the fault: {:#?}", r.findings);
}

/// The `n`-th record of a write-back is cut short with `errno`: that fsync fails with it, the
/// retry stores the data, and after a reopen every file reads back exactly.
fn short_write(errno: i32) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    new_store(&dir);
    let (a, b, c) = (noise(1, 2 << 20), noise(2, 2 << 20), noise(3, 300_000));
    {
        let (fs, packs) = open(&dir);
        let ia = create(&fs, "a", &a);
        fs.fsync(ia).unwrap();
        packs.faults().fail_nth_write(5, errno);
        let (ib, _, fh) = fs.create(WHO, ROOT_INO, b"b", 0o644).unwrap();
        // The failed write-back surfaces in a write (one that needs room) or in the fsync;
        // the data behind it stays in memory, so the same call succeeds when retried.
        let mut failures = 0;
        let mut retrying = |what: &str, op: &dyn Fn() -> dedupfs::error::Result<()>| loop {
            match op() {
                Ok(()) => break,
                Err(e) => {
                    assert_eq!(e.errno(), errno, "{what}: the device's error: {e}");
                    failures += 1;
                    assert!(failures <= 1, "{what} fails again after one injected fault");
                }
            }
        };
        for (i, piece) in b.chunks(256 * 1024).enumerate() {
            retrying("write", &|| {
                fs.write(ib, (i * 256 * 1024) as u64, piece).map(drop)
            });
        }
        retrying("fsync", &|| fs.fsync(ib));
        fs.release(fh).unwrap();
        if errno == libc::EIO {
            assert_eq!(failures, 1, "an I/O error reaches the writer");
        }
        // (ENOSPC may not: a write-back that meets it reclaims space and tries once more.)
        let ic = create(&fs, "c", &c);
        fs.fsync(ic).unwrap();
        for (n, d) in [("a", &a), ("b", &b), ("c", &c)] {
            assert!(read(&fs, n).unwrap() == *d, "{n} before the reopen");
        }
        fs.sync_all(true).unwrap();
    }
    let (fs, _) = open(&dir);
    for (n, d) in [("a", &a), ("b", &b), ("c", &c)] {
        assert!(read(&fs, n).unwrap() == *d, "{n} after the reopen");
    }
    drop(fs);
    assert_clean(&dir);
}

#[test]
fn a_record_cut_short_by_eio_is_retried_and_nothing_else_is_touched() {
    short_write(libc::EIO);
}

#[test]
fn a_record_cut_short_by_enospc_is_retried_and_nothing_else_is_touched() {
    short_write(libc::ENOSPC);
}

#[test]
fn a_failed_fdatasync_fails_every_later_fsync_and_loses_no_acknowledged_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    new_store(&dir);
    let (a, b) = (noise(4, 1 << 20), noise(5, 1 << 20));
    {
        let (fs, packs) = open(&dir);
        let ia = create(&fs, "a", &a);
        fs.fsync(ia).unwrap();
        packs.faults().fail_nth_sync(1, libc::EIO);
        let ib = create(&fs, "b", &b);
        let e = fs.fsync(ib).expect_err("fsync over a failed fdatasync");
        assert_eq!(e.errno(), libc::EIO, "{e}");
        // Linux may have dropped the pages: no later sync may claim they are on disk.
        let again = fs
            .fsync(ib)
            .expect_err("a later fsync after a failed fdatasync");
        assert!(matches!(again, FsError::Io(_)), "{again}");
        assert!(
            packs.sync().is_err(),
            "the store stays failed until reopened"
        );
    }
    let (fs, _) = open(&dir);
    assert!(
        read(&fs, "a").unwrap() == a,
        "acknowledged before the fault"
    );
    match read(&fs, "b") {
        Err(FsError::NotFound) => {}
        Ok(got) => assert!(got == b, "b is absent or whole, never other bytes"),
        Err(e) => panic!("b after the reopen: {e}"),
    }
    drop(fs);
    assert_clean(&dir);
}
