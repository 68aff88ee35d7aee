//! fsck and gc on damaged stores, built by driving `dedupfs::fs::Fs` without a mount.
//!
//! Guards against: fsck passing a store whose data is gone or wrong (missing, truncated or
//! corrupted chunk files, wrong refcounts, detached inodes), fsck failing to name the files
//! that lost data, repair guessing or deleting instead of reattaching, and gc deleting a chunk
//! that live metadata or a snapshot references (or keeping garbage).

use dedupfs::chunker::ChunkParams;
use dedupfs::fs::{Caller, Fs, FsConfig};
use dedupfs::hash::ChunkId;
use dedupfs::maint::fsck::{
    Finding, FindingKind, FsckOptions, FsckReport, LOST_FOUND, Severity, fsck,
};
use dedupfs::maint::gc::{GcOptions, gc, gc_with};
use dedupfs::meta::snapshot::Holders;
use dedupfs::meta::{Kind, MetaDb, ROOT_INO};
use dedupfs::store::{ChunkStore, LocalDirStore};
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tempfile::TempDir;

const WHO: Caller = Caller { uid: 0, gid: 0 };

/// Deterministic pseudo-random bytes (xorshift64*), so chunk boundaries are reproducible.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
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

/// A store on disk with a known tree:
/// `/d/a` (+ hard link `/d/a2`), `/b`, `/c` (a copy of `/d/a`: shares all its chunks),
/// `/empty`, `/l -> d/a`.
struct Fixture {
    dir: TempDir,
    /// (path, ino, content) of each regular file.
    files: Vec<(&'static str, u64, Vec<u8>)>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        // Small chunks: each file spans several, so damage hits one file region.
        let params = ChunkParams::from_avg(4096).unwrap();
        let meta = MetaDb::create(&dir.path().join("meta.redb"), params, 0, 0).unwrap();
        let store = Arc::new(LocalDirStore::open(&dir.path().join("chunks")).unwrap());
        let fs = Fs::new(meta, store, FsConfig::default()).unwrap();
        let (d, _) = fs.mkdir(WHO, ROOT_INO, b"d", 0o755).unwrap();
        let a_data = bytes(1, 60_000);
        let b_data = bytes(2, 50_000);
        let mut files = Vec::new();
        for (parent, name, path, data) in [
            (d, &b"a"[..], "/d/a", &a_data),
            (ROOT_INO, b"b", "/b", &b_data),
            (ROOT_INO, b"c", "/c", &a_data),
            (ROOT_INO, b"empty", "/empty", &Vec::new()),
        ] {
            let (ino, _, fh) = fs.create(WHO, parent, name, 0o644).unwrap();
            fs.write(ino, 0, data).unwrap();
            fs.fsync(ino).unwrap();
            fs.release(fh).unwrap();
            files.push((path, ino, data.clone()));
        }
        fs.link(files[0].1, d, b"a2").unwrap();
        fs.symlink(WHO, ROOT_INO, b"l", b"d/a").unwrap();
        fs.sync_all(true).unwrap();
        Fixture { dir, files }
    }

    fn meta_path(&self) -> PathBuf {
        self.dir.path().join("meta.redb")
    }

    fn open(&self) -> (MetaDb, Arc<LocalDirStore>) {
        let meta = MetaDb::open(&self.meta_path()).unwrap();
        let store = Arc::new(LocalDirStore::open(&self.dir.path().join("chunks")).unwrap());
        (meta, store)
    }

    fn fsck(&self, repair: bool, verify_data: bool) -> FsckReport {
        let (meta, store) = self.open();
        fsck(
            &meta,
            store.as_ref(),
            &Holders::default(),
            FsckOptions {
                repair,
                verify_data,
            },
            &mut |_| {},
        )
        .unwrap()
    }

    fn ino(&self, path: &str) -> u64 {
        self.files.iter().find(|f| f.0 == path).unwrap().1
    }

    /// The chunk holding the first bytes of `path`, and its file in the store.
    fn first_chunk(&self, path: &str) -> (ChunkId, PathBuf) {
        let (meta, store) = self.open();
        let ext = meta
            .begin_read()
            .unwrap()
            .all_extents(self.ino(path))
            .unwrap();
        let id = ext[0].id;
        (id, store.path_of(&id))
    }

    /// Opens the filesystem and checks every file reads back byte-exact.
    fn assert_files_intact(&self) {
        let (meta, store) = self.open();
        let fs = Fs::new(meta, store, FsConfig::default()).unwrap();
        for (path, ino, want) in &self.files {
            let got = fs.read(*ino, 0, want.len() as u32 + 10).unwrap();
            assert!(got == *want, "{path} does not read back byte-exact");
        }
    }
}

fn errors(r: &FsckReport) -> Vec<&Finding> {
    r.findings
        .iter()
        .filter(|f| f.severity == Severity::Error && !f.repaired)
        .collect()
}

/// Findings that are not Info, for "the store is clean" assertions.
fn problems(r: &FsckReport) -> Vec<&Finding> {
    r.findings
        .iter()
        .filter(|f| f.severity != Severity::Info && !f.repaired)
        .collect()
}

fn lost_paths(r: &FsckReport) -> Vec<String> {
    let mut v: Vec<String> = r
        .of_kind(FindingKind::FileDataLost)
        .filter_map(|f| f.path.clone())
        .collect();
    v.sort();
    v
}

fn chunk_files(dir: &Path) -> usize {
    let store = LocalDirStore::open(&dir.join("chunks")).unwrap();
    let mut n = 0;
    store.for_each(&mut |_| n += 1).unwrap();
    n
}

#[test]
fn clean_store_has_no_findings_beyond_info() {
    let fx = Fixture::new();
    let r = fx.fsck(false, true);
    assert!(problems(&r).is_empty(), "{:#?}", r.findings);
    assert!(!r.has_errors());
    assert!(r.chunks_checked > 10, "{r:?}");
    assert!(r.inodes_checked >= 7, "{r:?}");
    assert!(r.bytes_verified >= 110_000, "{r:?}");
    // The report is what `--json` prints.
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains("\"findings\""));
}

#[test]
fn deleted_chunk_file_is_an_error_naming_the_file() {
    let fx = Fixture::new();
    let (id, file) = fx.first_chunk("/b");
    std::fs::remove_file(&file).unwrap();
    let r = fx.fsck(false, false);
    assert!(r.has_errors());
    let missing: Vec<_> = r.of_kind(FindingKind::MissingChunkFile).collect();
    assert_eq!(missing.len(), 1, "{:#?}", r.findings);
    assert_eq!(missing[0].chunk.as_deref(), Some(id.to_hex().as_str()));
    assert_eq!(lost_paths(&r), vec!["/b".to_string()]);
    let lost = r.of_kind(FindingKind::FileDataLost).next().unwrap();
    assert_eq!(lost.ino, Some(fx.ino("/b")));
    assert_eq!(lost.severity, Severity::Error);
}

#[test]
fn repair_leaves_lost_data_reported_rather_than_zeroed() {
    let fx = Fixture::new();
    let (_, file) = fx.first_chunk("/b");
    std::fs::remove_file(&file).unwrap();
    let r = fx.fsck(true, false);
    assert!(r.has_errors(), "repair must not hide lost data");
    assert_eq!(r.repaired, 0, "{:#?}", r.findings);
    let again = fx.fsck(false, false);
    assert_eq!(lost_paths(&again), vec!["/b".to_string()]);
}

#[test]
fn truncated_chunk_file_is_an_error() {
    let fx = Fixture::new();
    let (_, file) = fx.first_chunk("/b");
    let len = std::fs::metadata(&file).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let r = fx.fsck(false, false);
    assert_eq!(
        r.of_kind(FindingKind::ChunkLengthMismatch).count(),
        1,
        "{:#?}",
        r.findings
    );
    assert_eq!(lost_paths(&r), vec!["/b".to_string()]);
    assert!(r.has_errors());
}

#[test]
fn corrupted_shared_chunk_is_found_by_verify_and_names_every_file_using_it() {
    let fx = Fixture::new();
    let (_, file) = fx.first_chunk("/d/a");
    let mut f = OpenOptions::new().write(true).open(&file).unwrap();
    f.seek(SeekFrom::Start(10)).unwrap();
    let old = std::fs::read(&file).unwrap()[10];
    f.write_all(&[old ^ 0xff]).unwrap();
    drop(f);

    // Same length: without verify_data only the length is checked, and it passes.
    let quick = fx.fsck(false, false);
    assert!(errors(&quick).is_empty(), "{:#?}", quick.findings);
    assert_eq!(quick.bytes_verified, 0);

    let full = fx.fsck(false, true);
    assert_eq!(full.of_kind(FindingKind::CorruptChunk).count(), 1);
    // /c is a copy of /d/a and shares the chunk; /d/a2 is the same inode as /d/a.
    assert_eq!(
        lost_paths(&full),
        vec!["/c".to_string(), "/d/a".to_string()]
    );
    assert!(full.has_errors());
}

#[test]
fn wrong_refcount_is_an_error_fixed_by_repair() {
    let fx = Fixture::new();
    let (id, _) = fx.first_chunk("/b");
    {
        let (meta, _) = fx.open();
        let (rc, len) = meta.begin_read().unwrap().chunk(&id).unwrap().unwrap();
        let mut tx = meta.begin_write().unwrap();
        tx.set_chunk_ref(&id, rc + 5, len).unwrap();
        tx.commit(true).unwrap();
    }
    let r = fx.fsck(false, false);
    let bad: Vec<_> = r.of_kind(FindingKind::RefcountMismatch).collect();
    assert_eq!(bad.len(), 1, "{:#?}", r.findings);
    assert_eq!(bad[0].severity, Severity::Error);
    assert_eq!(bad[0].chunk.as_deref(), Some(id.to_hex().as_str()));

    let fixed = fx.fsck(true, false);
    assert!(fixed.repaired >= 1);
    assert!(!fixed.has_errors(), "{:#?}", fixed.findings);
    assert!(
        fixed
            .of_kind(FindingKind::RefcountMismatch)
            .all(|f| f.repaired)
    );

    let again = fx.fsck(false, true);
    assert!(problems(&again).is_empty(), "{:#?}", again.findings);
    fx.assert_files_intact();
}

#[test]
fn too_low_refcount_is_fixed_before_the_chunk_could_be_collected() {
    let fx = Fixture::new();
    let (id, _) = fx.first_chunk("/c");
    {
        let (meta, _) = fx.open();
        let (_, len) = meta.begin_read().unwrap().chunk(&id).unwrap().unwrap();
        let mut tx = meta.begin_write().unwrap();
        tx.set_chunk_ref(&id, 0, len).unwrap();
        tx.commit(true).unwrap();
    }
    let r = fx.fsck(true, false);
    assert!(r.of_kind(FindingKind::RefcountMismatch).any(|f| f.repaired));
    let (meta, store) = fx.open();
    let g = gc(&meta, store.as_ref(), &Holders::default(), false).unwrap();
    assert_eq!(g.removed_chunks, 0, "{g:?}");
    drop(meta);
    fx.assert_files_intact();
}

#[test]
fn gc_removes_garbage_and_keeps_live_chunks() {
    let fx = Fixture::new();
    let live = chunk_files(fx.dir.path());
    let garbage = bytes(99, 3000);
    let gid = ChunkId::of(&garbage);
    {
        let (_, store) = fx.open();
        store.put(&gid, &garbage).unwrap();
        store.sync().unwrap();
    }
    let r = fx.fsck(false, true);
    assert!(problems(&r).is_empty(), "{:#?}", r.findings);
    let g: Vec<_> = r.of_kind(FindingKind::GarbageChunk).collect();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].severity, Severity::Info);
    assert_eq!(g[0].chunk.as_deref(), Some(gid.to_hex().as_str()));

    let (meta, store) = fx.open();
    let dry = gc(&meta, store.as_ref(), &Holders::default(), true).unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.removed_chunks, 1, "{dry:?}");
    assert_eq!(dry.removed_bytes, garbage.len() as u64);
    assert!(store.path_of(&gid).exists(), "dry run removed a file");
    assert_eq!(chunk_files(fx.dir.path()), live + 1);

    let done = gc(&meta, store.as_ref(), &Holders::default(), false).unwrap();
    assert_eq!(done.scanned_files, live as u64 + 1);
    assert_eq!(done.removed_chunks, 1);
    assert_eq!(done.removed_bytes, garbage.len() as u64);
    assert_eq!(done.kept_chunks, live as u64);
    assert_eq!(done.bytes_per_chunk_index, 8);
    assert!(!store.path_of(&gid).exists());
    assert_eq!(chunk_files(fx.dir.path()), live);

    let twice = gc(&meta, store.as_ref(), &Holders::default(), false).unwrap();
    assert_eq!(twice.removed_chunks, 0);
    drop((meta, store));

    fx.assert_files_intact();
    let r = fx.fsck(false, true);
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
}

#[test]
fn gc_on_a_live_fs_keeps_every_live_chunk() {
    // The daemon runs gc in-process on its own MetaDb: nothing is reopened.
    let fx = Fixture::new();
    let (meta, store) = fx.open();
    let fs = Fs::new(meta, store.clone(), FsConfig::default()).unwrap();
    let garbage = bytes(7, 5000);
    store.put(&ChunkId::of(&garbage), &garbage).unwrap();
    // A file written but not yet synced: its chunks are committed, not durable.
    let data = bytes(8, 20_000);
    let (ino, _, fh) = fs.create(WHO, ROOT_INO, b"new", 0o644).unwrap();
    fs.write(ino, 0, &data).unwrap();
    fs.flush(ino).unwrap();
    let g = gc(
        fs.meta(),
        fs.store().as_ref(),
        &fs.snapshot_holders().unwrap(),
        false,
    )
    .unwrap();
    assert_eq!(g.removed_chunks, 1, "{g:?}");
    assert_eq!(fs.read(ino, 0, 30_000).unwrap(), data);
    fs.release(fh).unwrap();
    for (path, ino, want) in &fx.files {
        assert!(fs.read(*ino, 0, 100_000).unwrap() == *want, "{path}");
    }
    fs.sync_all(true).unwrap();
    let r = fsck(
        fs.meta(),
        fs.store().as_ref(),
        &Holders::default(),
        FsckOptions {
            repair: false,
            verify_data: true,
        },
        &mut |_| {},
    )
    .unwrap();
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
}

/// A mounted volume's gc (`dedupfs gc` through the control socket: `with_quiesced`) while a
/// snapshot is being written: the snapshot copies the durable state of its start, so chunks
/// the volume dropped since (and gc would judge garbage) are named by it. Found by the crash
/// harness's snapshot loop with the gc loop: a snapshot file naming chunks gc had removed
/// (`SnapshotChunkMissing`, its files reading EIO). Races by nature, so each round gives gc
/// many chances: a large tree to copy, files replaced and gc run meanwhile without pause.
#[test]
fn gc_on_a_live_fs_keeps_the_chunks_of_a_snapshot_being_written() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = TempDir::new().unwrap();
    let meta = MetaDb::create(&dir.path().join("meta.redb"), ChunkParams::default(), 0, 0).unwrap();
    let store: Arc<dyn ChunkStore> =
        Arc::new(LocalDirStore::open(&dir.path().join("chunks")).unwrap());
    let cfg = FsConfig {
        store_dir: Some(dir.path().to_path_buf()),
        ..FsConfig::default()
    };
    let fs = Arc::new(Fs::new(meta, store, cfg).unwrap());
    // Copying this many files takes long enough for several gc runs.
    for i in 0..1000 {
        let (ino, _, fh) = fs
            .create(WHO, ROOT_INO, format!("small{i}").as_bytes(), 0o644)
            .unwrap();
        fs.write(ino, 0, &bytes(i, 100)).unwrap();
        fs.release(fh).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Replaces files over and over: each round drops the chunks of the one before.
    let writer = {
        let (fs, stop) = (fs.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut k = 10_000;
            while !stop.load(Ordering::SeqCst) {
                k += 1;
                let name = format!("f{}", k % 4);
                let _ = fs.unlink(ROOT_INO, name.as_bytes());
                let (ino, _, fh) = fs.create(WHO, ROOT_INO, name.as_bytes(), 0o644).unwrap();
                fs.write(ino, 0, &bytes(k, 20_000)).unwrap();
                fs.release(fh).unwrap();
            }
        })
    };
    let collector = {
        let (fs, stop) = (fs.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                fs.with_quiesced(|meta, store| {
                    gc_with(
                        meta,
                        store,
                        &fs.snapshot_holders().unwrap(),
                        GcOptions::default(),
                    )
                })
                .unwrap();
            }
        })
    };
    let mut missing = Vec::new();
    for round in 0..3 {
        let name = format!("s{round}");
        fs.snapshot_create(&name, ROOT_INO, "").unwrap();
        for s in &fs.snapshot_holders().unwrap().dbs {
            s.begin_read()
                .unwrap()
                .for_each_chunk(&mut |id, _, _| {
                    if fs.store().stat(&id).is_err() {
                        missing.push(format!("snapshot {}: chunk {}", s.info.name, id.to_hex()));
                    }
                })
                .unwrap();
        }
        fs.snapshot_delete(&name).unwrap();
        if !missing.is_empty() {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    collector.join().unwrap();
    assert!(
        missing.is_empty(),
        "gc removed chunks a snapshot names: {missing:#?}"
    );
}

#[test]
fn unreachable_file_is_reattached_to_lost_found_by_repair() {
    let fx = Fixture::new();
    let b = fx.ino("/b");
    {
        let (meta, _) = fx.open();
        let mut tx = meta.begin_write().unwrap();
        tx.del_dirent(ROOT_INO, b"b").unwrap();
        tx.commit(true).unwrap();
    }
    let r = fx.fsck(false, false);
    let u: Vec<_> = r.of_kind(FindingKind::Unreachable).collect();
    assert_eq!(u.len(), 1, "{:#?}", r.findings);
    assert_eq!(u[0].ino, Some(b));
    assert!(r.has_errors());

    let fixed = fx.fsck(true, false);
    assert!(!fixed.has_errors(), "{:#?}", fixed.findings);
    {
        let (meta, _) = fx.open();
        let rt = meta.begin_read().unwrap();
        let (lf, kind) = rt.lookup(ROOT_INO, LOST_FOUND).unwrap().unwrap();
        assert_eq!(kind, Kind::Dir);
        let entry = rt.lookup(lf, format!("#{b}").as_bytes()).unwrap();
        assert_eq!(entry, Some((b, Kind::File)));
        assert_eq!(rt.inode(b).unwrap().unwrap().nlink, 1);
    }
    let again = fx.fsck(false, true);
    assert!(problems(&again).is_empty(), "{:#?}", again.findings);
    fx.assert_files_intact();
}

#[test]
fn detached_directory_moves_to_lost_found_with_its_contents() {
    let fx = Fixture::new();
    let d = {
        let (meta, _) = fx.open();
        let d = meta
            .begin_read()
            .unwrap()
            .lookup(ROOT_INO, b"d")
            .unwrap()
            .unwrap()
            .0;
        let mut tx = meta.begin_write().unwrap();
        tx.del_dirent(ROOT_INO, b"d").unwrap();
        tx.commit(true).unwrap();
        d
    };
    let r = fx.fsck(false, false);
    assert!(
        r.of_kind(FindingKind::Unreachable)
            .any(|f| f.ino == Some(d)),
        "{:#?}",
        r.findings
    );
    // The root's link count still counts /d.
    assert!(
        r.of_kind(FindingKind::NlinkMismatch)
            .any(|f| f.ino == Some(ROOT_INO))
    );

    let fixed = fx.fsck(true, false);
    assert!(!fixed.has_errors(), "{:#?}", fixed.findings);
    let again = fx.fsck(false, true);
    assert!(problems(&again).is_empty(), "{:#?}", again.findings);
    let (meta, _) = fx.open();
    let rt = meta.begin_read().unwrap();
    let (lf, _) = rt.lookup(ROOT_INO, LOST_FOUND).unwrap().unwrap();
    assert_eq!(rt.inode(d).unwrap().unwrap().parent, lf);
    assert!(rt.lookup(d, b"a").unwrap().is_some());
    drop(rt);
    drop(meta);
    fx.assert_files_intact();
}

#[test]
fn dangling_dirent_and_wrong_nlink_are_repaired() {
    let fx = Fixture::new();
    let b = fx.ino("/b");
    {
        let (meta, _) = fx.open();
        let mut tx = meta.begin_write().unwrap();
        tx.put_dirent(ROOT_INO, b"ghost", 999_999, Kind::File)
            .unwrap();
        let mut a = tx.inode(b).unwrap().unwrap();
        a.nlink = 3;
        tx.put_inode(b, &a).unwrap();
        tx.commit(true).unwrap();
    }
    let r = fx.fsck(false, false);
    assert_eq!(
        r.of_kind(FindingKind::DanglingDirent).count(),
        1,
        "{:#?}",
        r.findings
    );
    let n: Vec<_> = r.of_kind(FindingKind::NlinkMismatch).collect();
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].path.as_deref(), Some("/b"));

    let fixed = fx.fsck(true, false);
    assert!(!fixed.has_errors(), "{:#?}", fixed.findings);
    let again = fx.fsck(false, false);
    assert!(problems(&again).is_empty(), "{:#?}", again.findings);
}

#[test]
fn orphan_left_by_a_crash_is_a_warning_and_repair_deletes_it() {
    let fx = Fixture::new();
    let b = fx.ino("/b");
    {
        // What an unlink of an open file commits: no name, nlink 0, orphan mark.
        let (meta, _) = fx.open();
        let mut tx = meta.begin_write().unwrap();
        tx.del_dirent(ROOT_INO, b"b").unwrap();
        let mut a = tx.inode(b).unwrap().unwrap();
        a.nlink = 0;
        tx.put_inode(b, &a).unwrap();
        tx.add_orphan(b).unwrap();
        tx.commit(true).unwrap();
    }
    let r = fx.fsck(false, false);
    assert!(!r.has_errors(), "{:#?}", r.findings);
    assert!(r.of_kind(FindingKind::Orphan).any(|f| f.ino == Some(b)));
    let fixed = fx.fsck(true, false);
    assert!(!fixed.has_errors(), "{:#?}", fixed.findings);
    let (meta, store) = fx.open();
    assert!(meta.begin_read().unwrap().inode(b).unwrap().is_none());
    // /b's chunks now have no references; gc removes them and the rest stays clean.
    let g = gc(&meta, store.as_ref(), &Holders::default(), false).unwrap();
    assert!(g.removed_chunks > 0, "{g:?}");
    drop((meta, store));
    let again = fx.fsck(false, true);
    assert!(again.findings.is_empty(), "{:#?}", again.findings);
}
