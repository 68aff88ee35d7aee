//! Snapshots through the filesystem core (no FUSE), on a real store directory.
//!
//! Guards against: a snapshot missing writes that returned before `create` (dirty data, the
//! tail of a file still open) or showing writes made after it; a chunk a snapshot names being
//! removed by the volume (a deleted or overwritten live file, a durable point, gc, a remount);
//! `delete` not freeing what only the snapshot held, or freeing what the live tree or another
//! snapshot still names; a crash mid-create or mid-delete leaving a half snapshot or leaked
//! holds; writes inside a snapshot; `.snapshots` listed by the root or shadowing a user's own
//! entry; bad names accepted; a restore by copy_file_range that breaks once the snapshot goes.

use dedupfs::chunker::ChunkParams;
use dedupfs::error::{FsError, Ino};
use dedupfs::fs::{Caller, Fs, FsConfig, RenameFlags, SNAPDIR_INO, SetAttr, in_snapshot};
use dedupfs::maint::gc::gc;
use dedupfs::meta::{Kind, ROOT_INO};
use dedupfs::store::codec::Codec;
use dedupfs::volume;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

const WHO: Caller = Caller { uid: 0, gid: 0 };
const MIB: usize = 1 << 20;

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.truncate(n);
    out
}

struct Vol {
    _tmp: TempDir,
    dir: PathBuf,
    fs: Option<Fs>,
    lock: Option<std::fs::File>,
}

fn open_fs(dir: &Path) -> (Fs, std::fs::File) {
    let v = volume::open(dir).unwrap();
    let cfg = FsConfig {
        cache_bytes: 8 << 20,
        store_dir: Some(dir.to_path_buf()),
        ..FsConfig::default()
    };
    (Fs::new(v.meta, v.chunks, cfg).unwrap(), v.lock)
}

impl Vol {
    fn new() -> Vol {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        volume::init(&dir, ChunkParams::default(), &[], Codec::None, 4 << 20).unwrap();
        let (fs, lock) = open_fs(&dir);
        Vol {
            _tmp: tmp,
            dir,
            fs: Some(fs),
            lock: Some(lock),
        }
    }

    fn fs(&self) -> &Fs {
        self.fs.as_ref().unwrap()
    }

    /// Drops the filesystem without a final sync (what a crash keeps: the durable state).
    fn crash_and_reopen(&mut self) {
        drop(self.fs.take());
        drop(self.lock.take());
        let (fs, lock) = open_fs(&self.dir);
        self.fs = Some(fs);
        self.lock = Some(lock);
    }

    fn remount(&mut self) {
        self.fs().sync_all(true).unwrap();
        self.crash_and_reopen();
    }

    fn mkdir(&self, parent: Ino, name: &str) -> Ino {
        self.fs()
            .mkdir(WHO, parent, name.as_bytes(), 0o755)
            .unwrap()
            .0
    }

    /// A file holding `data`, closed (written back at release).
    fn file(&self, parent: Ino, name: &str, data: &[u8]) -> Ino {
        let (ino, _, fh) = self
            .fs()
            .create(WHO, parent, name.as_bytes(), 0o644)
            .unwrap();
        for (i, c) in data.chunks(128 << 10).enumerate() {
            self.fs().write(ino, (i * (128 << 10)) as u64, c).unwrap();
        }
        self.fs().release(fh).unwrap();
        ino
    }

    fn at(&self, path: &str) -> Result<Ino, FsError> {
        let mut ino = ROOT_INO;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            ino = self.fs().lookup(ino, part.as_bytes())?.0;
        }
        Ok(ino)
    }

    fn read_all(&self, ino: Ino) -> Vec<u8> {
        let size = self.fs().getattr(ino).unwrap().size;
        let mut out = Vec::new();
        while (out.len() as u64) < size {
            let got = self.fs().read(ino, out.len() as u64, 4 << 20).unwrap();
            assert!(!got.is_empty(), "short read");
            out.extend_from_slice(&got);
        }
        out
    }

    fn names(&self, dir: Ino) -> Vec<String> {
        let fh = self.fs().opendir(dir).unwrap();
        let mut out = Vec::new();
        self.fs()
            .readdir(fh, 0, &mut |_, e| {
                out.push(String::from_utf8(e.name.clone()).unwrap());
                false
            })
            .unwrap();
        self.fs().releasedir(fh);
        out.retain(|n| n != "." && n != "..");
        out.sort();
        out
    }

    fn stored_chunks(&self) -> u64 {
        let mut n = 0;
        self.fs().store().for_each(&mut |_| n += 1).unwrap();
        n
    }

    fn snapshot_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.join("snapshots"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn errno<T: std::fmt::Debug>(r: Result<T, FsError>) -> i32 {
    r.expect_err("expected an error").errno()
}

#[test]
fn a_snapshot_is_the_tree_as_every_returned_write_left_it() {
    let v = Vol::new();
    let d = v.mkdir(ROOT_INO, "d");
    let a = noise(3 * MIB, 1);
    let fa = v.file(d, "a", &a);
    v.fs().link(fa, d, b"a2").unwrap();
    v.fs().symlink(WHO, d, b"sl", b"a").expect("symlink");
    v.fs().setxattr(fa, b"user.k", b"v", 0).unwrap();
    // Still open, with dirty data in memory and a tail not cut into a chunk yet.
    let (open_ino, _, open_fh) = v.fs().create(WHO, d, b"open", 0o644).unwrap();
    let tail = noise(MIB + 12345, 2);
    v.fs().write(open_ino, 0, &tail).unwrap();
    // Unlinked but still open: not part of the tree.
    let (gone, _, gone_fh) = v.fs().create(WHO, d, b"gone", 0o644).unwrap();
    v.fs().write(gone, 0, &noise(MIB, 9)).unwrap();
    v.fs().fsync(gone).unwrap();
    v.fs().unlink(d, b"gone").unwrap();

    v.fs().snapshot_create("s1", ROOT_INO, "").unwrap();

    // Changes after the snapshot.
    v.fs().write(open_ino, 0, b"AFTER").unwrap();
    v.fs().release(open_fh).unwrap();
    v.fs().write(fa, 0, b"changed").unwrap();
    v.fs().unlink(d, b"a2").unwrap();
    v.file(d, "new", b"new file");

    let s = v.at(".snapshots/s1/d").unwrap();
    assert!(in_snapshot(s));
    assert_eq!(v.names(s), ["a", "a2", "open", "sl"]);
    let sa = v.fs().lookup(s, b"a").unwrap();
    let sa2 = v.fs().lookup(s, b"a2").unwrap();
    assert_eq!(sa.0, sa2.0, "hard links share an inode in the snapshot");
    assert_ne!(sa.0, fa, "snapshot inodes are not live inodes");
    assert_eq!(sa.1.nlink, 2);
    assert_eq!(v.read_all(sa.0), a);
    assert_eq!(v.read_all(v.fs().lookup(s, b"open").unwrap().0), tail);
    assert_eq!(
        v.fs().readlink(v.fs().lookup(s, b"sl").unwrap().0).unwrap(),
        b"a"
    );
    assert_eq!(v.fs().getxattr(sa.0, b"user.k").unwrap(), b"v");
    // ".." of a snapshot's root is the snapshots directory, whose ".." is the root.
    let root = v.at(".snapshots/s1").unwrap();
    assert_eq!(v.fs().lookup(root, b"..").unwrap().0, SNAPDIR_INO);
    assert_eq!(v.fs().lookup(SNAPDIR_INO, b"..").unwrap().0, ROOT_INO);
    let list = v.fs().snapshot_list().unwrap();
    assert_eq!(
        list[0].files, 2,
        "a (with a2) and open; not the unlinked one"
    );
    assert_eq!(list[0].logical_bytes, (3 * MIB + MIB + 12345) as u64);
    v.fs().release(gone_fh).unwrap();
    // The live tree moved on.
    assert_eq!(&v.read_all(fa)[..7], b"changed");
    assert_eq!(v.names(d), ["a", "new", "open", "sl"]);
}

#[test]
fn snapshots_are_found_by_name_but_not_listed_and_refuse_writes() {
    let v = Vol::new();
    assert_eq!(errno(v.fs().lookup(ROOT_INO, b".snapshots")), libc::ENOENT);
    let d = v.mkdir(ROOT_INO, "d");
    let f = v.file(d, "f", b"data");
    v.fs().snapshot_create("s", ROOT_INO, "").unwrap();
    assert_eq!(
        v.names(ROOT_INO),
        ["d"],
        "the root does not list .snapshots"
    );
    assert_eq!(v.names(SNAPDIR_INO), ["s"]);
    let sd = v.at(".snapshots/s/d").unwrap();
    let sf = v.at(".snapshots/s/d/f").unwrap();
    let ro = libc::EROFS;
    let fs = v.fs();
    assert_eq!(errno(fs.create(WHO, sd, b"x", 0o644)), ro);
    assert_eq!(errno(fs.mkdir(WHO, sd, b"x", 0o755)), ro);
    assert_eq!(errno(fs.mkdir(WHO, SNAPDIR_INO, b"x", 0o755)), ro);
    assert_eq!(errno(fs.unlink(sd, b"f")), ro);
    assert_eq!(errno(fs.rmdir(SNAPDIR_INO, b"s")), ro);
    assert_eq!(
        errno(fs.rename(sd, b"f", ROOT_INO, b"g", RenameFlags::default())),
        ro
    );
    assert_eq!(
        errno(fs.rename(d, b"f", sd, b"g", RenameFlags::default())),
        ro
    );
    assert_eq!(errno(fs.link(sf, ROOT_INO, b"l")), ro);
    assert_eq!(errno(fs.link(f, sd, b"l")), ro);
    assert_eq!(errno(fs.open(sf, true)), ro);
    assert_eq!(errno(fs.write(sf, 0, b"x")), ro);
    assert_eq!(errno(fs.truncate(sf, 0)), ro);
    assert_eq!(errno(fs.fallocate(sf, 0, 10, 0)), ro);
    assert_eq!(
        errno(fs.setattr(
            sf,
            SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            }
        )),
        ro
    );
    assert_eq!(errno(fs.setxattr(sf, b"user.x", b"1", 0)), ro);
    assert_eq!(errno(fs.removexattr(sf, b"user.x")), ro);
    assert_eq!(errno(fs.copy_range(f, 0, sf, 0, 4)), ro);
    // Reading works, through a read-only handle.
    let fh = fs.open(sf, false).unwrap();
    assert_eq!(fs.read(sf, 0, 100).unwrap(), b"data");
    fs.release(fh).unwrap();
}

#[test]
fn chunks_a_snapshot_names_outlive_the_live_files_and_go_with_the_snapshot() {
    let mut v = Vol::new();
    let only_snap = noise(4 * MIB, 3);
    let shared = noise(2 * MIB, 4);
    v.file(ROOT_INO, "gone", &only_snap);
    v.file(ROOT_INO, "kept", &shared);
    v.fs().snapshot_create("s1", ROOT_INO, "").unwrap();
    v.fs().unlink(ROOT_INO, b"gone").unwrap();
    v.fs().sync_fs().unwrap();
    // Durable points, gc and a remount: the snapshot keeps its chunks.
    {
        let holders = v.fs().snapshot_holders().unwrap();
        gc(v.fs().meta(), v.fs().store().as_ref(), &holders, false).unwrap();
    }
    v.remount();
    let listed = v.fs().snapshot_list().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0].exclusive_bytes >= 4 * MIB as u64,
        "exclusive {} must cover the deleted file",
        listed[0].exclusive_bytes
    );
    assert_eq!(v.read_all(v.at(".snapshots/s1/gone").unwrap()), only_snap);
    // A second snapshot that shares the live file's chunks.
    v.fs().snapshot_create("s2", ROOT_INO, "").unwrap();
    let before = v.stored_chunks();
    let r = v.fs().snapshot_delete("s1").unwrap();
    assert!(r.exclusive_bytes >= 4 * MIB as u64);
    let after = v.stored_chunks();
    assert!(
        after < before && before - after >= 32,
        "deleting s1 must free the deleted file's chunks: {before} -> {after}"
    );
    assert_eq!(errno(v.at(".snapshots/s1")), libc::ENOENT);
    assert_eq!(v.read_all(v.at("kept").unwrap()), shared);
    assert_eq!(v.read_all(v.at(".snapshots/s2/kept").unwrap()), shared);
    // The live file goes too; s2 still holds its chunks.
    v.fs().unlink(ROOT_INO, b"kept").unwrap();
    v.fs().sync_fs().unwrap();
    v.remount();
    assert_eq!(v.read_all(v.at(".snapshots/s2/kept").unwrap()), shared);
    v.fs().snapshot_delete("s2").unwrap();
    assert_eq!(v.stored_chunks(), 0, "nothing is left once all are gone");
    assert_eq!(errno(v.fs().lookup(ROOT_INO, b".snapshots")), libc::ENOENT);
    assert!(v.snapshot_files().is_empty(), "{:?}", v.snapshot_files());
}

#[test]
fn a_restore_by_reference_survives_the_snapshot() {
    let mut v = Vol::new();
    let data = noise(5 * MIB + 777, 5);
    v.file(ROOT_INO, "f", &data);
    v.fs().snapshot_create("s", ROOT_INO, "").unwrap();
    v.fs().unlink(ROOT_INO, b"f").unwrap();
    v.fs().sync_fs().unwrap();
    let src = v.at(".snapshots/s/f").unwrap();
    let (dst, _, fh) = v.fs().create(WHO, ROOT_INO, b"back", 0o644).unwrap();
    let n = v
        .fs()
        .copy_range(src, 0, dst, 0, data.len() as u64)
        .unwrap();
    assert_eq!(n, data.len() as u64);
    v.fs().release(fh).unwrap();
    let chunks = v.stored_chunks();
    v.fs().snapshot_delete("s").unwrap();
    assert_eq!(
        v.stored_chunks(),
        chunks,
        "the restored file keeps every chunk"
    );
    v.remount();
    assert_eq!(v.read_all(v.at("back").unwrap()), data);
}

#[test]
fn a_subtree_snapshot_holds_that_tree_only() {
    let v = Vol::new();
    let d = v.mkdir(ROOT_INO, "d");
    let e = v.mkdir(d, "e");
    let f = v.file(e, "f", b"inside");
    v.fs().link(f, ROOT_INO, b"outside-link").unwrap();
    v.file(ROOT_INO, "top", b"outside");
    v.fs().snapshot_create("sub", e, "d/e").unwrap();
    assert_eq!(v.names(v.at(".snapshots/sub").unwrap()), ["f"]);
    let sf = v
        .fs()
        .lookup(v.at(".snapshots/sub").unwrap(), b"f")
        .unwrap();
    assert_eq!(sf.1.nlink, 1, "the name outside the tree is not in it");
    assert_eq!(sf.1.kind, Kind::File);
    let list = v.fs().snapshot_list().unwrap();
    assert_eq!((list[0].path.as_str(), list[0].files), ("d/e", 1));
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let v = Vol::new();
    let d = v.mkdir(ROOT_INO, "d");
    let f = v.file(d, "f", b"x");
    for bad in ["", ".", "..", "a/b", "x\ny"] {
        assert!(
            matches!(
                v.fs().snapshot_create(bad, ROOT_INO, ""),
                Err(FsError::Refused(_))
            ),
            "{bad:?}"
        );
    }
    assert_eq!(
        errno(v.fs().snapshot_create("file", f, "d/f")),
        libc::ENOTDIR
    );
    v.fs().snapshot_create("s", ROOT_INO, "").unwrap();
    let again = v.fs().snapshot_create("s", ROOT_INO, "");
    assert!(matches!(again, Err(FsError::Refused(ref m)) if m.contains("exists")));
    let inside = v.at(".snapshots/s/d").unwrap();
    assert!(matches!(
        v.fs().snapshot_create("t", inside, ""),
        Err(FsError::Refused(_))
    ));
    assert!(matches!(
        v.fs().snapshot_delete("nope"),
        Err(FsError::Refused(_))
    ));
    assert_eq!(v.fs().snapshot_list().unwrap().len(), 1);
    assert_eq!(v.snapshot_files(), ["00001.redb"]);
}

#[test]
fn a_root_entry_named_snapshots_wins_and_blocks_create() {
    let v = Vol::new();
    let mine = v.mkdir(ROOT_INO, ".snapshots");
    let r = v.fs().snapshot_create("s", ROOT_INO, "");
    assert!(matches!(r, Err(FsError::Refused(ref m)) if m.contains(".snapshots")));
    assert_eq!(v.at(".snapshots").unwrap(), mine);
    assert!(v.snapshot_files().is_empty());
}

#[test]
fn crashes_mid_create_and_mid_delete_are_finished_at_open() {
    let mut v = Vol::new();
    let data = noise(3 * MIB, 6);
    v.file(ROOT_INO, "f", &data);
    v.fs().snapshot_create("s", ROOT_INO, "").unwrap();
    v.fs().unlink(ROOT_INO, b"f").unwrap();
    v.fs().sync_fs().unwrap();
    let held = v.stored_chunks();
    assert!(held > 0);
    let dir = v.dir.join("snapshots");
    // A half-written snapshot: removed at open, the finished one stays.
    std::fs::write(dir.join(".tmp-00002.redb"), b"half").unwrap();
    v.crash_and_reopen();
    assert_eq!(v.snapshot_files(), ["00001.redb"]);
    assert_eq!(v.read_all(v.at(".snapshots/s/f").unwrap()), data);
    // A delete that crashed after its rename: finished (holds handed back, chunks freed).
    drop(v.fs.take());
    std::fs::rename(dir.join("00001.redb"), dir.join(".deleting-00001.redb")).unwrap();
    drop(v.lock.take());
    let (fs, lock) = open_fs(&v.dir);
    v.fs = Some(fs);
    v.lock = Some(lock);
    assert!(v.snapshot_files().is_empty(), "{:?}", v.snapshot_files());
    assert_eq!(v.stored_chunks(), 0, "the chunks only it held are freed");
    assert_eq!(errno(v.fs().lookup(ROOT_INO, b".snapshots")), libc::ENOENT);
}

#[test]
fn a_handle_on_a_deleted_snapshot_never_reads_the_next_one() {
    let v = Vol::new();
    v.file(ROOT_INO, "f", b"AAAA");
    v.fs().snapshot_create("daily", ROOT_INO, "").unwrap();
    let old = v.at(".snapshots/daily/f").unwrap();
    let fh = v.fs().open(old, false).unwrap();
    v.fs().write(v.at("f").unwrap(), 0, b"BBBB").unwrap();
    // Rotation: delete, then create under the same name.
    v.fs().snapshot_delete("daily").unwrap();
    v.fs().snapshot_create("daily", ROOT_INO, "").unwrap();
    let new = v.at(".snapshots/daily/f").unwrap();
    assert_ne!(new, old, "a new snapshot gets new inode numbers");
    assert_eq!(v.fs().read(new, 0, 4).unwrap(), b"BBBB");
    assert_eq!(errno(v.fs().read(old, 0, 4)), libc::ESTALE);
    assert_eq!(errno(v.fs().getattr(old)), libc::ESTALE);
    v.fs().release(fh).unwrap();
}

#[test]
fn a_huge_sparse_file_is_snapshotted_by_its_extents_not_its_size() {
    let v = Vol::new();
    let d = v.mkdir(ROOT_INO, "d");
    let f = v.file(d, "sparse", b"head");
    v.fs().write(f, 1 << 50, b"far").unwrap();
    v.fs().truncate(f, 1 << 62).unwrap();
    let t = std::time::Instant::now();
    // A walk (--path) and a whole-volume copy.
    v.fs().snapshot_create("sub", d, "d").unwrap();
    v.fs().snapshot_create("all", ROOT_INO, "").unwrap();
    let s = v.at(".snapshots/sub/sparse").unwrap();
    assert_eq!(v.fs().read(s, 1 << 50, 3).unwrap(), b"far");
    // SEEK_DATA answers in 4 KiB blocks: from the first block past "head", across the hole.
    let data = v.fs().seek(s, 4096, dedupfs::fs::SeekWhence::Data).unwrap();
    assert_eq!(data, 1 << 50);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn the_snapshots_name_in_the_root_cannot_be_taken_or_replaced_while_snapshots_exist() {
    let v = Vol::new();
    let d = v.mkdir(ROOT_INO, "d");
    v.fs().snapshot_create("s", ROOT_INO, "").unwrap();
    let fs = v.fs();
    assert_eq!(
        errno(fs.mkdir(WHO, ROOT_INO, b".snapshots", 0o755)),
        libc::EEXIST
    );
    assert_eq!(
        errno(fs.create(WHO, ROOT_INO, b".snapshots", 0o644)),
        libc::EEXIST
    );
    assert_eq!(
        errno(fs.rename(
            ROOT_INO,
            b"d",
            ROOT_INO,
            b".snapshots",
            RenameFlags::default()
        )),
        libc::EROFS
    );
    v.at(".snapshots/s/d").unwrap();
    // Elsewhere the name is an ordinary one.
    fs.mkdir(WHO, d, b".snapshots", 0o755).unwrap();
}

#[test]
fn a_read_only_open_leaves_a_half_written_snapshot_for_the_next_writable_one() {
    let mut v = Vol::new();
    v.file(ROOT_INO, "f", b"x");
    v.fs().snapshot_create("s", ROOT_INO, "").unwrap();
    drop(v.fs.take());
    drop(v.lock.take());
    let half = v.dir.join("snapshots").join(".tmp-00002.redb");
    std::fs::write(&half, b"half").unwrap();
    {
        let vol = volume::open(&v.dir).unwrap();
        let cfg = FsConfig {
            read_only: true,
            store_dir: Some(v.dir.clone()),
            ..FsConfig::default()
        };
        let fs = Fs::new(vol.meta, vol.chunks, cfg).unwrap();
        let s = fs.lookup(ROOT_INO, b".snapshots").unwrap().0;
        assert!(fs.lookup(s, b"s").is_ok(), "served read-only");
        assert!(half.exists(), "a read-only open changes nothing");
    }
    let (fs, lock) = open_fs(&v.dir);
    v.fs = Some(fs);
    v.lock = Some(lock);
    assert!(!half.exists());
    assert_eq!(v.snapshot_files(), ["00001.redb"]);
}
