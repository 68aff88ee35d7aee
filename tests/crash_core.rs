//! Guards the durability of data that was already safe: a partial write-back (the periodic
//! flusher on an open file) must never leave committed metadata with a hole where fsynced
//! bytes were, even for a moment, because any other file's fsync makes that metadata durable.
//! Found by the kill -9 harness (tests/crash.rs): a fsynced file read zeros after a crash.
//!
//! Also guards `dedupfs sync` (`Fs::sync_fs`): it must make every file durable as `fsync` of
//! each would, including the unfinished tail chunk of a file still open for writing, which
//! the periodic flusher deliberately keeps in memory.
//!
//! And guards the deletion of a snapshot interrupted by a crash (`fs/snapshots.rs`,
//! `finish_deletions`): a crash after the snapshot file was renamed to `.deleting-` must be
//! finished by the next open, freeing the chunks only that snapshot held and none that another
//! snapshot or the live tree still names (those would read EIO there).
//!
//! And guards inode numbers across a failed metadata commit (CI, mount_enospc: fsck found
//! "entry later0 says Dir but inode 52652 is a File"): the commit is dropped as a crash would
//! drop it, numbers it handed out go back to the database's allocator, but the kernel and an
//! open handle still hold them. A later mkdir got the number of a dropped file, whose
//! write-back then overwrote the directory's inode. Numbers must never be handed out twice in
//! one mount, and the dropped file's data must go as in a crash, without failing other syncs.
//!
//! And guards the attributes of files already open across such a failed commit: their
//! in-memory size and link count kept what the dropped commit recorded. A size past the
//! committed data was then committed by a later write-back (the lost bytes read as NULs), and
//! the last close deleted a file whose unlink had been rolled back (its entry left dangling).

use dedupfs::chunker::ChunkParams;
use dedupfs::error::FsError;
use dedupfs::fs::{Caller, Fs, FsConfig, SetAttr};
use dedupfs::hash::ChunkId;
use dedupfs::maint::fsck::{FsckOptions, Severity, fsck};
use dedupfs::meta::snapshot::{self, Holders, SnapshotDb};
use dedupfs::meta::{Kind, MetaDb, ROOT_INO};
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
/// `chunks/`, snapshot files in `snapshots/`. Dropping it without a sync is a crash.
fn open_fs(dir: &Path) -> Fs {
    let db = dir.join("meta.redb");
    let meta = if db.exists() {
        MetaDb::open(&db).unwrap()
    } else {
        MetaDb::create(&db, ChunkParams::default(), 0, 0).unwrap()
    };
    let store: Arc<dyn ChunkStore> = Arc::new(LocalDirStore::open(&dir.join("chunks")).unwrap());
    let cfg = FsConfig {
        store_dir: Some(dir.to_path_buf()),
        ..FsConfig::default()
    };
    Fs::new(meta, store, cfg).unwrap()
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

/// Three files of distinct data in the root of a fresh volume at `dir`; snapshot `old` of the
/// volume; `own` unlinked; snapshot `new`; `shared` unlinked; closed cleanly. Then `old` alone
/// names the chunks of `own`, both snapshots those of `shared`, and the live tree (and both
/// snapshots) those of `live`. Returns the three files' data and chunk ids.
fn two_snapshots(dir: &Path) -> [(&'static str, Vec<u8>, Vec<ChunkId>); 3] {
    let who = Caller::default();
    let fs = open_fs(dir);
    let files = [("live", 31), ("shared", 32), ("own", 33)].map(|(name, seed)| {
        let data = noise(250_000, seed);
        let (ino, _, fh) = fs.create(who, ROOT_INO, name.as_bytes(), 0o644).unwrap();
        fs.write(ino, 0, &data).unwrap();
        fs.release(fh).unwrap();
        fs.fsync(ino).unwrap();
        let ids: Vec<ChunkId> = fs
            .meta()
            .begin_read()
            .unwrap()
            .extents(ino, 0, u64::MAX)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert!(
            ids.len() > 1,
            "{name}: want several chunks, got {}",
            ids.len()
        );
        (name, data, ids)
    });
    fs.snapshot_create("old", ROOT_INO, "").unwrap();
    fs.unlink(ROOT_INO, b"own").unwrap();
    fs.snapshot_create("new", ROOT_INO, "").unwrap();
    fs.unlink(ROOT_INO, b"shared").unwrap();
    fs.sync_fs().unwrap();
    for (name, _, ids) in &files {
        for id in ids {
            assert!(
                fs.store().stat(id).is_ok(),
                "{name}: a chunk a snapshot holds was removed before any deletion"
            );
        }
    }
    drop(fs);
    let old = dir.join(snapshot::DIR).join(snapshot::file_name(1));
    assert_eq!(SnapshotDb::open(&old).unwrap().info.name, "old");
    files
}

/// After the open that finished deleting `old`: no `.deleting-` file, `new` alone listed, the
/// chunks of `own` gone, those of `shared` (held by `new`) and `live` kept and reading back
/// through the snapshot and the live tree, and fsck finds nothing wrong.
fn assert_old_deleted(dir: &Path, files: &[(&'static str, Vec<u8>, Vec<ChunkId>); 3]) {
    let fs = open_fs(dir);
    let left: Vec<String> = std::fs::read_dir(dir.join(snapshot::DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        [snapshot::file_name(2)],
        "snapshot files after the open"
    );
    let listed: Vec<String> = fs
        .snapshot_list()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(listed, ["new"]);
    for (name, _, ids) in files {
        for id in ids {
            let stat = fs.store().stat(id);
            if *name == "own" {
                assert!(
                    matches!(stat, Err(FsError::MissingChunk { .. })),
                    "a chunk only the deleted snapshot held is still there: {stat:?}"
                );
            } else {
                assert!(
                    stat.is_ok(),
                    "{name}: a chunk still named by {} was removed: {stat:?}",
                    if *name == "live" {
                        "the live tree"
                    } else {
                        "snapshot new"
                    }
                );
            }
        }
    }
    let read = |parent, name: &str, want: &[u8]| {
        let (ino, attr) = fs.lookup(parent, name.as_bytes()).unwrap();
        assert_eq!(attr.size, want.len() as u64, "size of {name}");
        let got = fs.read(ino, 0, want.len() as u32).unwrap();
        assert!(got == want, "{name} reads back other bytes");
    };
    let (snapdir, _) = fs.lookup(ROOT_INO, b".snapshots").unwrap();
    let (new, _) = fs.lookup(snapdir, b"new").unwrap();
    read(new, "shared", &files[1].1);
    read(new, "live", &files[0].1);
    read(ROOT_INO, "live", &files[0].1);
    assert!(
        fs.lookup(new, b"own").is_err(),
        "own was unlinked before new"
    );
    drop(fs);
    assert_fsck_clean(dir, "after the finished deletion");
}

/// `fsck --verify-data` of the unmounted store at `dir` finds nothing to warn about.
fn assert_fsck_clean(dir: &Path, when: &str) {
    let meta = MetaDb::open(&dir.join("meta.redb")).unwrap();
    let store = LocalDirStore::open(&dir.join("chunks")).unwrap();
    let holders = Holders::open(dir).unwrap();
    let opts = FsckOptions {
        repair: false,
        verify_data: true,
    };
    let report = fsck(&meta, &store, &holders, opts, &mut |_| {}).unwrap();
    let bad: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.severity != Severity::Info)
        .collect();
    assert!(bad.is_empty(), "fsck {when}: {bad:#?}");
}

#[test]
fn snapshot_delete_interrupted_after_the_rename_is_finished_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let files = two_snapshots(dir.path());
    // The crash: `old` renamed to `.deleting-` and the directory synced, nothing else (its
    // holds handed back by commits no durable point covered, which a crash drops).
    let snaps = dir.path().join(snapshot::DIR);
    let name = snapshot::file_name(1);
    std::fs::rename(snaps.join(&name), snaps.join(format!(".deleting-{name}"))).unwrap();
    assert_fsck_clean(dir.path(), "of the crashed store");
    assert_old_deleted(dir.path(), &files);
}

#[test]
fn snapshot_delete_interrupted_before_the_file_went_is_finished_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let files = two_snapshots(dir.path());
    // The crash: the deletion ran up to its durable point (holds handed back, the chunks only
    // `old` held removed), but the `.deleting-` file was not removed yet.
    let snaps = dir.path().join(snapshot::DIR);
    let name = snapshot::file_name(1);
    let kept = dir.path().join("old-snapshot-copy");
    std::fs::copy(snaps.join(&name), &kept).unwrap();
    {
        let fs = open_fs(dir.path());
        fs.snapshot_delete("old").unwrap();
    }
    std::fs::rename(&kept, snaps.join(format!(".deleting-{name}"))).unwrap();
    // The chunks only `old` named are gone, rightly: fsck must not call them missing.
    assert_fsck_clean(dir.path(), "of the crashed store");
    assert_old_deleted(dir.path(), &files);
}

#[track_caller]
fn errno<T: std::fmt::Debug>(r: Result<T, FsError>) -> i32 {
    r.expect_err("operation should fail").errno()
}

#[test]
fn a_file_dropped_with_a_failed_commit_never_lends_its_inode_number_to_a_new_directory() {
    let dir = tempfile::tempdir().unwrap();
    let who = Caller::default();
    // A small total dirty budget, to see below that the dropped file's bytes left it.
    let budget = 64 << 10;
    let cfg = FsConfig {
        store_dir: Some(dir.path().to_path_buf()),
        total_dirty_limit: budget,
        file_dirty_limit: 1 << 20,
        ..FsConfig::default()
    };
    let db = dir.path().join("meta.redb");
    let meta = MetaDb::create(&db, ChunkParams::default(), 0, 0).unwrap();
    let store: Arc<dyn ChunkStore> =
        Arc::new(LocalDirStore::open(&dir.path().join("chunks")).unwrap());
    let fs = Fs::new(meta, store, cfg).unwrap();
    let (kept, _) = fs.mkdir(who, ROOT_INO, b"kept", 0o755).unwrap();
    fs.sync_dir().unwrap();

    // A new file, open, with dirty data; its creation is committed but not durable.
    let (lost, _, lost_fh) = fs.create(who, ROOT_INO, b"lost", 0o644).unwrap();
    fs.write(lost, 0, &noise(40_000, 1)).unwrap();
    // The disk fills: the durable commit fails, and the database goes back to its last
    // durable commit, which has no `lost`.
    fs.meta().fail_writes(Some(libc::ENOSPC));
    assert_eq!(errno(fs.sync_dir()), libc::ENOSPC);
    fs.meta().fail_writes(None);

    // Space is back. A new directory must not get the dropped file's number.
    let (d, _) = fs.mkdir(who, ROOT_INO, b"dir", 0o755).unwrap();
    assert_ne!(
        d, lost,
        "the dropped file's inode number was handed out again"
    );
    // Still open and dirty, but no longer in the metadata: reads and attribute changes
    // through its handle are refused.
    assert_eq!(errno(fs.read(lost, 0, 10)), libc::ESTALE);
    let chmod = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    assert_eq!(errno(fs.setattr(lost, chmod)), libc::ESTALE);
    let (inner, _, inner_fh) = fs.create(who, d, b"inner", 0o644).unwrap();
    let inner_data = noise(5_000, 2);
    fs.write(inner, 0, &inner_data).unwrap();
    // The periodic flusher writes back every open file, the dropped one included: it must
    // succeed, and leave the directory alone.
    fs.sync_all(false).unwrap();
    assert_eq!(fs.getattr(d).unwrap().kind, Kind::Dir, "dir overwritten");
    assert_ne!(inner, lost);

    // The dropped file's handle: ESTALE, and no operation brings its inode back. Every close
    // reports the loss (nothing reported it to this file yet: the failed sync was another
    // caller's); an fsync, every time (the file cannot be made durable). Once an fsync
    // reported it, closes need not.
    assert_eq!(errno(fs.read(lost, 0, 10)), libc::ESTALE);
    assert_eq!(errno(fs.write(lost, 0, b"again")), libc::ESTALE);
    assert_eq!(errno(fs.flush(lost)), libc::ESTALE);
    assert_eq!(errno(fs.flush(lost)), libc::ESTALE);
    assert_eq!(errno(fs.fsync(lost)), libc::ESTALE);
    assert_eq!(errno(fs.fsync(lost)), libc::ESTALE);
    fs.flush(lost)
        .expect("a close after an fsync reported the loss must not report it again");
    assert_eq!(errno(fs.getattr(lost)), libc::ESTALE);
    assert_eq!(errno(fs.setattr(lost, chmod)), libc::ESTALE);
    assert_eq!(errno(fs.truncate(lost, 1)), libc::ESTALE);
    assert_eq!(errno(fs.setxattr(lost, b"user.x", b"v", 0)), libc::ESTALE);
    assert_eq!(errno(fs.link(lost, kept, b"relinked")), libc::ESTALE);
    fs.release(lost_fh).unwrap();
    fs.fsync(inner).unwrap();

    // Its 40 000 dirty bytes left the budget: 2 x 30 000 more bytes of another file fit in
    // 64 KiB and stay dirty (counted still, they would force that file's write-back).
    let (other, _, other_fh) = fs.create(who, kept, b"other", 0o644).unwrap();
    fs.write(other, 0, &noise(30_000, 3)).unwrap();
    fs.write(other, 30_000, &noise(30_000, 4)).unwrap();
    assert!(
        !fs.allocated_settled(other).unwrap().1,
        "the dropped file's dirty bytes are still counted against the budget"
    );

    fs.release(inner_fh).unwrap();
    fs.release(other_fh).unwrap();
    // The final sync of an unmount.
    fs.sync_all(true).unwrap();
    assert!(fs.lookup(ROOT_INO, b"lost").is_err());
    drop(fs);

    assert_fsck_clean(dir.path(), "after the dropped commit");
    let fs = open_fs(dir.path());
    let (d2, attr) = fs.lookup(ROOT_INO, b"dir").unwrap();
    assert_eq!((d2, attr.kind, attr.nlink), (d, Kind::Dir, 2));
    let (i2, attr) = fs.lookup(d, b"inner").unwrap();
    assert_eq!(attr.size, inner_data.len() as u64);
    assert_eq!(fs.read(i2, 0, 10_000).unwrap(), inner_data);
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 4, "root: ., kept, dir");
    // After a remount the dropped numbers may be used again: the kernel forgot them.
    fs.create(who, ROOT_INO, b"after", 0o644).unwrap();
    fs.sync_all(true).unwrap();
    drop(fs);
    assert_fsck_clean(dir.path(), "after the remount");
}

/// New files are written and fsynced on a full disk: the fsync's own commit fails and takes
/// the file's creation with it. The fsync reports the loss (ENOSPC); the close must not report
/// it a second time (ESTALE, as the mount test of a full disk once saw), unless the file was
/// written after that fsync: those bytes are lost too, and only the close can say so.
#[test]
fn a_file_whose_creation_its_own_failed_fsync_dropped_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let who = Caller::default();
    let fs = open_fs(dir.path());
    let (kept, _, kept_fh) = fs.create(who, ROOT_INO, b"kept", 0o644).unwrap();
    fs.write(kept, 0, &noise(20_000, 11)).unwrap();
    fs.fsync(kept).unwrap();
    fs.sync_dir().unwrap();

    let (f, _, f_fh) = fs.create(who, ROOT_INO, b"f", 0o644).unwrap();
    fs.write(f, 0, &noise(4_096, 12)).unwrap();
    let (g, _, g_fh) = fs.create(who, ROOT_INO, b"g", 0o644).unwrap();
    fs.write(g, 0, &noise(4_096, 13)).unwrap();
    // The disk stays full while both fail, and while `g` is written once more.
    fs.meta().fail_writes(Some(libc::ENOSPC));
    assert_eq!(errno(fs.fsync(f)), libc::ENOSPC);
    assert_eq!(errno(fs.fsync(g)), libc::ENOSPC);
    fs.write(g, 4_096, b"after the fsync").unwrap();
    // A file the failed commit did not drop: its fsync fails too.
    fs.write(kept, 0, b"later").unwrap();
    assert_eq!(errno(fs.fsync(kept)), libc::ENOSPC);
    fs.meta().fail_writes(None);

    fs.flush(f)
        .expect("the close of a file whose loss its fsync reported must not report it again");
    assert_eq!(
        errno(fs.flush(g)),
        libc::ESTALE,
        "bytes written after the failed fsync were dropped unreported"
    );
    assert_eq!(
        errno(fs.flush(g)),
        libc::ESTALE,
        "every close reports it until an fsync did"
    );
    for ino in [f, g] {
        assert_eq!(
            errno(fs.fsync(ino)),
            libc::ESTALE,
            "a gone file is never durable"
        );
        assert_eq!(errno(fs.write(ino, 0, b"x")), libc::ESTALE);
    }
    fs.release(f_fh).unwrap();
    fs.release(g_fh).unwrap();
    assert!(fs.lookup(ROOT_INO, b"f").is_err());
    assert!(fs.lookup(ROOT_INO, b"g").is_err());
    // The file that is still there keeps working.
    fs.flush(kept).unwrap();
    fs.write(kept, 0, b"again").unwrap();
    fs.fsync(kept).unwrap();
    assert_eq!(fs.read(kept, 0, 5).unwrap(), b"again");
    fs.release(kept_fh).unwrap();
    fs.sync_all(true).unwrap();
    drop(fs);
    assert_fsck_clean(dir.path(), "after the dropped files");
}

#[test]
fn an_open_file_rolled_back_by_a_failed_commit_keeps_its_committed_bytes_and_links() {
    let dir = tempfile::tempdir().unwrap();
    let who = Caller::default();
    // A small per-file dirty limit: writes write back themselves, without a durable point.
    let meta = MetaDb::create(&dir.path().join("meta.redb"), ChunkParams::default(), 0, 0).unwrap();
    let store: Arc<dyn ChunkStore> =
        Arc::new(LocalDirStore::open(&dir.path().join("chunks")).unwrap());
    let cfg = FsConfig {
        store_dir: Some(dir.path().to_path_buf()),
        file_dirty_limit: 16 << 10,
        ..FsConfig::default()
    };
    let fs = Fs::new(meta, store, cfg).unwrap();
    let a = noise(50_000, 5);
    let (f, _, f_fh) = fs.create(who, ROOT_INO, b"f", 0o644).unwrap();
    fs.write(f, 0, &a).unwrap();
    let kept = noise(20_000, 6);
    let (g, _, g_fh) = fs.create(who, ROOT_INO, b"g", 0o644).unwrap();
    fs.write(g, 0, &kept).unwrap();
    fs.sync_fs().unwrap();

    // Both files stay open. `f` grows by B, in pieces that write back B's start into the
    // open group; `g` loses its only link in the same group. Then the disk fills and the
    // commit fails: the database goes back to its last durable commit, without B's extents
    // and without the unlink.
    let b = noise(30_000, 7);
    for (i, piece) in b.chunks(10_000).enumerate() {
        fs.write(f, (a.len() + i * 10_000) as u64, piece).unwrap();
    }
    fs.unlink(ROOT_INO, b"g").unwrap();
    fs.meta().fail_writes(Some(libc::ENOSPC));
    assert_eq!(errno(fs.fsync(f)), libc::ENOSPC);
    fs.meta().fail_writes(None);

    // The file is A, or A+B; never A followed by NULs.
    let ab = [a.clone(), b.clone()].concat();
    let check = |fs: &Fs, ino, extra: &[u8], when: &str| {
        let size = fs.getattr(ino).unwrap().size;
        let got = fs.read(ino, 0, size as u32 + 1).unwrap();
        assert!(
            got == [&a[..], extra].concat() || got == [&ab[..], extra].concat(),
            "{when}: {} bytes read, expected A or A+B (then {} more bytes)",
            got.len(),
            extra.len()
        );
    };
    check(&fs, f, &[], "after the failed commit");
    // An appending writer writes at the size it sees; a later write-back commits it.
    let c = noise(10_000, 8);
    let end = fs.getattr(f).unwrap().size;
    fs.write(f, end, &c).unwrap();
    fs.fsync(f).unwrap();
    check(&fs, f, &c, "after an append and fsync");

    // The unlink was rolled back: the entry is still there, and the last close keeps the file.
    assert_eq!(fs.lookup(ROOT_INO, b"g").unwrap().0, g);
    assert_eq!(
        fs.getattr(g).unwrap().nlink,
        1,
        "link count of the rolled-back unlink"
    );
    fs.release(g_fh).unwrap();
    fs.release(f_fh).unwrap();
    fs.sync_fs().unwrap();
    assert_eq!(fs.read(g, 0, 30_000).unwrap(), kept);
    drop(fs);

    assert_fsck_clean(dir.path(), "after the rolled-back commit");
    let fs = open_fs(dir.path());
    let (f2, _) = fs.lookup(ROOT_INO, b"f").unwrap();
    check(&fs, f2, &c, "after a remount");
    let (g2, attr) = fs.lookup(ROOT_INO, b"g").unwrap();
    assert_eq!(attr.nlink, 1);
    assert_eq!(fs.read(g2, 0, 30_000).unwrap(), kept);
}
