//! Guards the per-file chunking policy: files named by a store's `--fixed-for` patterns (or
//! with `user.dedupfs.chunking=fixed`) are cut into offset-aligned fixed blocks, so an
//! in-place overwrite rewrites exactly the blocks it touches; other files stay
//! content-defined, and a bad policy value is refused.

use dedupfs::chunker::{ChunkParams, POLICY_XATTR};
use dedupfs::fs::{Caller, Fs, FsConfig};
use dedupfs::meta::{MetaDb, ROOT_INO};
use dedupfs::store::{ChunkStore, FailingStore, MemoryStore};
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

struct Setup {
    _dir: tempfile::TempDir,
    fs: Fs,
    store: Arc<FailingStore>,
}

fn setup(patterns: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let meta = MetaDb::create(
        &dir.path().join("meta.redb"),
        ChunkParams::from_avg(16 * 1024).unwrap(),
        0,
        0,
    )
    .unwrap();
    let patterns: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
    meta.set_fixed_patterns(&patterns).unwrap();
    let store = Arc::new(FailingStore::new(Arc::new(MemoryStore::new())));
    let fs = Fs::new(
        meta,
        store.clone() as Arc<dyn ChunkStore>,
        FsConfig::default(),
    )
    .unwrap();
    Setup {
        _dir: dir,
        fs,
        store,
    }
}

/// Writes `data` to a new file `name`, fsyncs, then overwrites 4 KiB at `at` and fsyncs;
/// returns the number of chunks stored by the overwrite.
fn overwrite_cost(s: &Setup, name: &str, data: &[u8], at: u64) -> u64 {
    let (ino, _, fh) =
        s.fs.create(Caller::default(), ROOT_INO, name.as_bytes(), 0o644)
            .unwrap();
    s.fs.write(ino, 0, data).unwrap();
    s.fs.fsync(ino).unwrap();
    let before = s.store.puts();
    s.fs.write(ino, at, &[0xAB; 4096]).unwrap();
    s.fs.fsync(ino).unwrap();
    let mut expect = data.to_vec();
    expect[at as usize..at as usize + 4096].fill(0xAB);
    let got = s.fs.read(ino, 0, data.len() as u32).unwrap();
    assert!(got == expect, "{name}: content differs after the overwrite");
    s.fs.release(fh).unwrap();
    s.store.puts() - before
}

#[test]
fn fixed_pattern_file_rewrites_exactly_one_block_per_aligned_overwrite() {
    let s = setup(&["*.img"]);
    let data = noise(8 << 20, 1);
    let (ino, _, fh) =
        s.fs.create(Caller::default(), ROOT_INO, b"disk.img", 0o644)
            .unwrap();
    assert_eq!(s.fs.getxattr(ino, POLICY_XATTR).unwrap(), b"fixed");
    s.fs.release(fh).unwrap();
    // An aligned 4 KiB overwrite inside one 16 KiB block: exactly one new block.
    assert_eq!(overwrite_cost(&s, "vm.img", &data, 5 * 16384 + 4096), 1);
}

#[test]
fn unmatched_file_stays_content_defined() {
    let s = setup(&["*.img"]);
    let data = noise(8 << 20, 2);
    let (ino, _, fh) =
        s.fs.create(Caller::default(), ROOT_INO, b"notes.txt", 0o644)
            .unwrap();
    assert!(s.fs.getxattr(ino, POLICY_XATTR).is_err());
    s.fs.release(fh).unwrap();
    // Content-defined: still local (a few chunks), not the whole file.
    let puts = overwrite_cost(&s, "data.bin", &data, 3 << 20);
    assert!((1..=4).contains(&puts), "overwrite stored {puts} chunks");
}

#[test]
fn policy_xattr_switches_a_file_to_fixed_blocks() {
    let s = setup(&[]);
    let data = noise(4 << 20, 3);
    let (ino, _, fh) =
        s.fs.create(Caller::default(), ROOT_INO, b"raw", 0o644)
            .unwrap();
    s.fs.setxattr(ino, POLICY_XATTR, b"fixed", 0).unwrap();
    s.fs.write(ino, 0, &data).unwrap();
    s.fs.fsync(ino).unwrap();
    s.fs.release(fh).unwrap();
    // Every chunk of a fixed-policy file is one whole block (the last may be short).
    let r = s.fs.meta().begin_read().unwrap();
    let ext = r.all_extents(ino).unwrap();
    assert_eq!(ext.len(), 4 << 20 >> 14);
    assert!(ext.iter().all(|e| e.offset % 16384 == 0 && e.len == 16384));
}

#[test]
fn bad_policy_value_is_refused() {
    let s = setup(&[]);
    let (ino, _, fh) =
        s.fs.create(Caller::default(), ROOT_INO, b"f", 0o644)
            .unwrap();
    let err =
        s.fs.setxattr(ino, POLICY_XATTR, b"sometimes", 0)
            .unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
    s.fs.release(fh).unwrap();
}
