//! fsck and gc on pack stores (store format 3), driven through `dedupfs::fs::Fs` and the
//! `dedupfs` binary without a mount.
//!
//! Guards against: fsck passing a pack whose record was damaged (or naming the wrong file),
//! a lost or damaged pack index that cannot be rebuilt, gc that leaves dead pack bytes on
//! disk after deletes (or compacts a live chunk away), and format-2 stores (loose chunk files)
//! that stop reading or are not moved into packs by `gc --repack`.

use dedupfs::chunker::ChunkParams;
use dedupfs::fs::{Caller, Fs, FsConfig};
use dedupfs::hash::ChunkId;
use dedupfs::maint::fsck::{FindingKind, FsckOptions, Severity, fsck};
use dedupfs::maint::gc::{GcOptions, gc_with};
use dedupfs::meta::snapshot::Holders;
use dedupfs::meta::{MetaDb, ROOT_INO};
use dedupfs::store::codec::Codec;
use dedupfs::store::{ChunkStore, LocalDirStore};
use dedupfs::volume;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

const WHO: Caller = Caller { uid: 0, gid: 0 };
const BIN: &str = env!("CARGO_BIN_EXE_dedupfs");

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Writes `files` (name, content) into the root of the store at `dir` through the core.
fn write_files(dir: &Path, files: &[(String, Vec<u8>)]) {
    let vol = volume::open(dir).unwrap();
    let fs = Fs::new(vol.meta, vol.chunks, FsConfig::default()).unwrap();
    for (name, data) in files {
        let (ino, _, fh) = fs.create(WHO, ROOT_INO, name.as_bytes(), 0o644).unwrap();
        fs.write(ino, 0, data).unwrap();
        fs.release(fh).unwrap();
    }
    fs.sync_all(true).unwrap();
}

fn read_file(fs: &Fs, name: &str) -> dedupfs::error::Result<Vec<u8>> {
    let (ino, attr) = fs.lookup(ROOT_INO, name.as_bytes())?;
    fs.read(ino, 0, attr.size as u32 + 1)
}

fn assert_files(dir: &Path, files: &[(String, Vec<u8>)]) {
    let vol = volume::open(dir).unwrap();
    let fs = Fs::new(vol.meta, vol.chunks, FsConfig::default()).unwrap();
    for (name, data) in files {
        assert!(
            read_file(&fs, name).unwrap() == *data,
            "{name} reads back byte-exact"
        );
    }
}

fn run_fsck(dir: &Path, verify_data: bool) -> dedupfs::maint::fsck::FsckReport {
    let vol = volume::open(dir).unwrap();
    fsck(
        &vol.meta,
        vol.chunks.as_ref(),
        &Holders::default(),
        FsckOptions {
            repair: false,
            verify_data,
        },
        &mut |_| {},
    )
    .unwrap()
}

fn new_store(codec: Codec) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    volume::init(
        &store,
        ChunkParams::from_avg(16384).unwrap(),
        &[],
        codec,
        dedupfs::store::pack_store::PACK_TARGET,
    )
    .unwrap();
    dir
}

#[test]
fn fsck_names_the_file_whose_pack_record_is_damaged() {
    let tmp = new_store(Codec::default());
    let dir = tmp.path().join("s");
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("f{i}"), noise(i, 100_000)))
        .collect();
    write_files(&dir, &files);
    let clean = run_fsck(&dir, true);
    assert!(!clean.has_errors(), "{:?}", clean.findings);
    assert!(clean.packs_checked >= 1 && clean.bytes_verified >= 400_000);

    // Flip one byte inside the data of f2's first chunk.
    let (id, loc) = {
        let vol = volume::open(&dir).unwrap();
        let ino = vol
            .meta
            .begin_read()
            .unwrap()
            .lookup(ROOT_INO, b"f2")
            .unwrap()
            .unwrap()
            .0;
        let id = vol.meta.begin_read().unwrap().all_extents(ino).unwrap()[0].id;
        (id, vol.chunks.locate(&id).unwrap().unwrap())
    };
    let pack = dir
        .join("packs")
        .join(dedupfs::store::pack::pack_file_name(loc.pack));
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(loc.stored_start() + 7) as usize] ^= 1;
    std::fs::write(&pack, &bytes).unwrap();

    for verify in [false, true] {
        let r = run_fsck(&dir, verify);
        assert!(r.has_errors());
        let lost: Vec<_> = r
            .of_kind(FindingKind::FileDataLost)
            .filter_map(|f| f.path.clone())
            .collect();
        assert_eq!(
            lost,
            vec!["/f2".to_string()],
            "verify={verify}: {:?}",
            r.findings
        );
        assert!(
            r.of_kind(FindingKind::PackDamaged)
                .any(|f| f.chunk.as_deref() == Some(id.to_hex().as_str())
                    && f.severity == Severity::Error),
            "{:?}",
            r.findings
        );
    }
    // Reads of f2 fail with EIO; the others are intact.
    let vol = volume::open(&dir).unwrap();
    let fs = Fs::new(vol.meta, vol.chunks, FsConfig::default()).unwrap();
    assert_eq!(read_file(&fs, "f2").unwrap_err().errno(), libc::EIO);
    for (name, data) in files.iter().filter(|f| f.0 != "f2") {
        assert!(read_file(&fs, name).unwrap() == *data);
    }
}

#[test]
fn fsck_repair_rebuilds_a_damaged_index_from_the_packs() {
    let tmp = new_store(Codec::default());
    let dir = tmp.path().join("s");
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("f{i}"), noise(10 + i, 70_000)))
        .collect();
    write_files(&dir, &files);
    std::fs::write(dir.join("index.redb"), vec![0x5a; 8192]).unwrap();

    let out = Command::new(BIN).arg("stats").arg(&dir).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pack index") && err.contains("fsck --repair"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["fsck", "--repair"])
        .arg(&dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("rebuilt it from the packs"), "{text}");
    assert_files(&dir, &files);
    assert!(!run_fsck(&dir, true).has_errors());
}

#[test]
fn gc_gives_the_bytes_of_deleted_files_back_to_the_disk() {
    let tmp = new_store(Codec::None);
    let dir = tmp.path().join("s");
    // 16 files of 4 MiB written one after another; then every second one is deleted.
    let files: Vec<(String, Vec<u8>)> = (0..16)
        .map(|i| (format!("f{i:02}"), noise(100 + i, 4 << 20)))
        .collect();
    write_files(&dir, &files);
    let disk0 = {
        let vol = volume::open(&dir).unwrap();
        vol.chunks.usage().unwrap().disk_bytes
    };
    {
        let vol = volume::open(&dir).unwrap();
        let fs = Fs::new(vol.meta, vol.chunks, FsConfig::default()).unwrap();
        for (name, _) in files.iter().step_by(2) {
            fs.unlink(ROOT_INO, name.as_bytes()).unwrap();
        }
        fs.sync_all(true).unwrap();
    }
    let vol = volume::open(&dir).unwrap();
    let report = gc_with(
        &vol.meta,
        vol.chunks.as_ref(),
        &Holders::default(),
        GcOptions::default(),
    )
    .unwrap();
    let disk1 = vol.chunks.usage().unwrap().disk_bytes;
    let deleted = 8u64 * (4 << 20);
    assert!(
        (disk0 - disk1) * 10 >= deleted * 9,
        "disk bytes fell by {} of {deleted} deleted: {report:?}",
        disk0 - disk1
    );
    drop(vol);
    let kept: Vec<_> = files.iter().skip(1).step_by(2).cloned().collect();
    assert_files(&dir, &kept);
    assert!(!run_fsck(&dir, true).has_errors());
}

#[test]
fn each_files_chunks_lie_in_one_run_of_one_pack() {
    // Several threads hash and store one file's chunks; they must not spread it over every
    // open pack (a cold read would seek between packs, and deleting the file would leave
    // dead bytes in all of them instead of a whole dead run).
    let tmp = new_store(Codec::None);
    let dir = tmp.path().join("s");
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("f{i}"), noise(300 + i, 3 << 20)))
        .collect();
    write_files(&dir, &files);
    // And files written in two steps: 3 MiB, fsync, then a tail small enough to be written
    // back on the closing thread, which must follow the body.
    let mut files = files;
    {
        let vol = volume::open(&dir).unwrap();
        let fs = Fs::new(vol.meta, vol.chunks, FsConfig::default()).unwrap();
        for i in 0..4u64 {
            let name = format!("t{i}");
            let data = noise(400 + i, (3 << 20) + (512 << 10));
            let (ino, _, fh) = fs.create(WHO, ROOT_INO, name.as_bytes(), 0o644).unwrap();
            fs.write(ino, 0, &data[..3 << 20]).unwrap();
            fs.fsync(ino).unwrap();
            fs.write(ino, 3 << 20, &data[3 << 20..]).unwrap();
            fs.release(fh).unwrap();
            files.push((name, data));
        }
        fs.sync_all(true).unwrap();
    }
    assert_files(&dir, &files);
    let vol = volume::open(&dir).unwrap();
    let tx = vol.meta.begin_read().unwrap();
    // (pack, first record, last record) of each file.
    let mut runs = Vec::new();
    for (name, _) in &files {
        let ino = tx.lookup(ROOT_INO, name.as_bytes()).unwrap().unwrap().0;
        let locs: Vec<_> = tx
            .extents(ino, 0, u64::MAX)
            .unwrap()
            .iter()
            .map(|e| vol.chunks.locate(&e.id).unwrap().unwrap())
            .collect();
        assert!(locs.len() > 20, "{name}: {} chunks", locs.len());
        let packs: std::collections::BTreeSet<u64> = locs.iter().map(|l| l.pack).collect();
        assert_eq!(packs.len(), 1, "{name} is spread over packs {packs:?}");
        let first = locs.iter().map(|l| l.offset).min().unwrap();
        let last = locs.iter().map(|l| l.offset).max().unwrap();
        runs.push((name, locs[0].pack, first, last));
    }
    for a in &runs {
        for b in &runs {
            let apart = a.0 == b.0 || a.1 != b.1 || a.3 < b.2 || b.3 < a.2;
            assert!(apart, "{} and {} are interleaved in pack {}", a.0, b.0, a.1);
        }
    }
}

#[test]
fn a_format_2_store_keeps_reading_and_gc_repack_moves_its_chunks_into_packs() {
    // Build a store the way dedupfs 0.1 did: loose chunk files, metadata format 2.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("old");
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("f{i}"), noise(200 + i, 90_000)))
        .collect();
    {
        let meta = MetaDb::create(
            &dir.join("meta.redb"),
            ChunkParams::from_avg(16384).unwrap(),
            0,
            0,
        )
        .unwrap();
        let store = Arc::new(LocalDirStore::open(&dir.join("chunks")).unwrap());
        let fs = Fs::new(meta, store, FsConfig::default()).unwrap();
        for (name, data) in &files {
            let (ino, _, fh) = fs.create(WHO, ROOT_INO, name.as_bytes(), 0o644).unwrap();
            fs.write(ino, 0, data).unwrap();
            fs.release(fh).unwrap();
        }
        fs.sync_all(true).unwrap();
        drop(fs);
        let meta = MetaDb::open(&dir.join("meta.redb")).unwrap();
        let mut tx = meta.begin_write().unwrap();
        tx.set_meta("format_version", &2u64.to_le_bytes()).unwrap();
        tx.commit(true).unwrap();
    }
    std::fs::write(dir.join("DEDUPFS"), "dedupfs store\nformat 2\n").unwrap();
    let loose_count = || {
        let s = LocalDirStore::open(&dir.join("chunks")).unwrap();
        let mut n = 0;
        s.for_each(&mut |_| n += 1).unwrap();
        n
    };
    assert!(loose_count() >= 15);

    // Read as it is, and new writes go to packs.
    assert_files(&dir, &files);
    let more = vec![("new".to_string(), noise(300, 50_000))];
    write_files(&dir, &more);
    assert!(!run_fsck(&dir, true).has_errors());

    let out = Command::new(BIN)
        .args(["gc", "--repack", "--json"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["repacked"]["chunks"].as_u64().unwrap() >= 15,
        "{report}"
    );
    assert_eq!(loose_count(), 0, "loose chunk files moved into packs");
    assert_files(&dir, &files);
    assert_files(&dir, &more);
    let r = run_fsck(&dir, true);
    assert!(!r.has_errors(), "{:?}", r.findings);
    // Every chunk is in a pack now.
    let vol = volume::open(&dir).unwrap();
    vol.meta
        .begin_read()
        .unwrap()
        .for_each_chunk(&mut |id: ChunkId, rc, _| {
            if rc > 0 {
                assert!(
                    vol.chunks.locate(&id).unwrap().is_some(),
                    "{id} not in a pack"
                );
            }
        })
        .unwrap();
}

#[test]
fn set_compression_applies_to_new_chunks_and_survives_reopen() {
    let tmp = new_store(Codec::None);
    let dir = tmp.path().join("s");
    let out = Command::new(BIN)
        .arg("set")
        .arg(&dir)
        .args(["compression", "lz4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = Command::new(BIN)
        .arg("set")
        .arg(&dir)
        .args(["compression", "gzip"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let vol = volume::open(&dir).unwrap();
    assert_eq!(vol.chunks.codec(), Codec::Lz4);
    drop(vol);
    let text: Vec<u8> = b"compressible text, over and over. "
        .iter()
        .cycle()
        .take(200_000)
        .copied()
        .collect();
    write_files(&dir, &[("t".into(), text.clone())]);
    let out = Command::new(BIN)
        .args(["stats", "--json"])
        .arg(&dir)
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stored = s["stored_bytes"].as_u64().unwrap();
    assert!(stored > 0 && stored < 50_000, "{s}");
    assert!(s["compression_ratio"].as_f64().unwrap() > 4.0, "{s}");
    assert_files(&dir, &[("t".into(), text)]);
}

#[test]
fn an_index_open_in_another_handle_is_busy_not_damaged() {
    let tmp = new_store(Codec::default());
    let dir = tmp.path().join("s");
    // Another handle on the store's databases (as another process would hold them) without
    // the store lock: opening the store must not call either file damaged, or advise a repair.
    for db in ["index.redb", "meta.redb"] {
        let held = redb::Database::open(dir.join(db)).unwrap();
        let e = match volume::open(&dir) {
            Ok(_) => panic!("{db} is held open elsewhere: the open must fail"),
            Err(e) => e,
        };
        assert!(
            !matches!(
                e,
                volume::VolumeError::IndexDamaged { .. } | volume::VolumeError::MetaDamaged { .. }
            ),
            "{db} held elsewhere was called damaged: {e}"
        );
        assert!(!e.to_string().contains("--repair"), "{e}");
        drop(held);
    }
    assert!(volume::open(&dir).is_ok(), "opens once released");
}
