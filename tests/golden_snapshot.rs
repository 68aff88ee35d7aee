//! Golden test of the snapshot file format (`meta::snapshot`): a snapshot file written by
//! dedupfs 0.1 with snapshots (tests/data/snapshot-v1.redb) must open and read back exactly
//! the tree it holds, and the names, inode numbering and info encoding are pinned. A change to
//! any of them would make existing snapshots unreadable or misread, so it must fail here and be
//! made on purpose, with a migration.
//!
//! `cargo test --release --test golden_snapshot -- --ignored write_golden_file` rewrites the
//! file (only when the format changes on purpose).

use dedupfs::chunker::ChunkParams;
use dedupfs::fs::{SNAPDIR_INO, SNAPDIR_NAME};
use dedupfs::hash::ChunkId;
use dedupfs::meta::snapshot::{self, SnapshotDb, SnapshotInfo};
use dedupfs::meta::{Attr, Extent, Kind, MetaDb, ROOT_INO, Ts};
use std::path::{Path, PathBuf};

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/snapshot-v1.redb")
}

fn info() -> SnapshotInfo {
    SnapshotInfo {
        slot: 7,
        name: "nightly".into(),
        created_ns: 1_796_000_000_123_456_789,
        root: 2,
        path: "vm".into(),
    }
}

fn ts() -> Ts {
    Ts {
        secs: 1_796_000_000,
        nsecs: 5,
    }
}

/// The live tree the golden snapshot was taken of: /vm (ino 2) holding `disk.img` (ino 3,
/// two extents, one hard link `disk-link`), `notes` (ino 4, a symlink to disk.img) and `sub`
/// (ino 5, a directory with an xattr); /outside (ino 6) is not in the snapshot.
fn build_source(path: &Path) -> MetaDb {
    let m = MetaDb::create(path, ChunkParams::default(), 0, 0).unwrap();
    let mut tx = m.begin_write().unwrap();
    let mut dir = Attr::new(Kind::Dir, 0o755, 1000, 1000);
    dir.nlink = 3;
    dir.parent = ROOT_INO;
    (dir.atime, dir.mtime, dir.ctime, dir.crtime) = (ts(), ts(), ts(), ts());
    tx.put_inode(2, &dir).unwrap();
    tx.put_dirent(ROOT_INO, b"vm", 2, Kind::Dir).unwrap();
    let mut file = Attr::new(Kind::File, 0o640, 1000, 1000);
    file.nlink = 2;
    file.size = 100_000;
    (file.atime, file.mtime, file.ctime, file.crtime) = (ts(), ts(), ts(), ts());
    tx.put_inode(3, &file).unwrap();
    tx.put_dirent(2, b"disk.img", 3, Kind::File).unwrap();
    tx.put_dirent(2, b"disk-link", 3, Kind::File).unwrap();
    let extents = [
        Extent {
            offset: 0,
            id: ChunkId::of(b"first chunk"),
            len: 65_536,
        },
        Extent {
            offset: 65_536,
            id: ChunkId::of(b"second chunk"),
            len: 34_464,
        },
    ];
    tx.replace_extents(3, &[], &extents).unwrap();
    let mut link = Attr::new(Kind::Symlink, 0o777, 1000, 1000);
    link.size = 8;
    (link.atime, link.mtime, link.ctime, link.crtime) = (ts(), ts(), ts(), ts());
    tx.put_inode(4, &link).unwrap();
    tx.set_symlink(4, b"disk.img").unwrap();
    tx.put_dirent(2, b"notes", 4, Kind::Symlink).unwrap();
    let mut sub = dir;
    sub.nlink = 2;
    sub.parent = 2;
    tx.put_inode(5, &sub).unwrap();
    tx.put_dirent(2, b"sub", 5, Kind::Dir).unwrap();
    tx.set_xattr(5, b"user.tag", b"golden").unwrap();
    let outside = file;
    tx.put_inode(6, &outside).unwrap();
    tx.put_dirent(ROOT_INO, b"outside", 6, Kind::File).unwrap();
    tx.commit(true).unwrap();
    m
}

#[test]
#[ignore = "rewrites tests/data/snapshot-v1.redb: only when the format changes on purpose"]
fn write_golden_file() {
    let tmp = tempfile::tempdir().unwrap();
    let src = build_source(&tmp.path().join("meta.redb"));
    let out = tmp.path().join("snap.redb");
    let r = src.begin_read().unwrap();
    snapshot::write(&r, 2, ChunkParams::default(), &info(), &out).unwrap();
    std::fs::copy(&out, golden()).unwrap();
}

/// Checks a snapshot file holds exactly the golden tree.
fn check_tree(s: &SnapshotDb) {
    assert_eq!(s.info, info());
    let r = s.begin_read().unwrap();
    let root = r.inode(2).unwrap().expect("root");
    assert_eq!(root.kind, Kind::Dir);
    assert_eq!(
        root.parent, 2,
        "a snapshot root is its own parent in the file"
    );
    assert_eq!((root.perm, root.uid, root.nlink), (0o755, 1000, 3));
    let mut names: Vec<_> = r
        .list_dir(2)
        .unwrap()
        .into_iter()
        .map(|e| (String::from_utf8(e.name).unwrap(), e.ino, e.kind))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        names,
        [
            ("disk-link".to_string(), 3, Kind::File),
            ("disk.img".to_string(), 3, Kind::File),
            ("notes".to_string(), 4, Kind::Symlink),
            ("sub".to_string(), 5, Kind::Dir),
        ]
    );
    let f = r.inode(3).unwrap().unwrap();
    assert_eq!(
        (f.size, f.nlink, f.perm, f.mtime),
        (100_000, 2, 0o640, ts())
    );
    let ext = r.all_extents(3).unwrap();
    assert_eq!(ext.len(), 2);
    assert_eq!(
        (ext[1].offset, ext[1].id, ext[1].len),
        (65_536, ChunkId::of(b"second chunk"), 34_464)
    );
    assert_eq!(
        r.chunk(&ChunkId::of(b"first chunk")).unwrap(),
        Some((1, 65_536))
    );
    assert_eq!(r.symlink(4).unwrap().unwrap(), b"disk.img");
    assert_eq!(r.xattr(5, b"user.tag").unwrap().unwrap(), b"golden");
    assert!(r.inode(6).unwrap().is_none(), "outside the tree");
    assert!(
        r.inode(ROOT_INO).unwrap().is_none(),
        "the volume root is not in it"
    );
    assert_eq!(s.logical_bytes().unwrap(), 100_000);
}

#[test]
fn the_golden_snapshot_file_reads_back() {
    // Opened from a copy: opening may write (redb recovery), the checked-in file must not change.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join(snapshot::file_name(7));
    std::fs::copy(golden(), &copy).unwrap();
    check_tree(&SnapshotDb::open(&copy).unwrap());
}

#[test]
fn a_snapshot_written_now_reads_back_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let src = build_source(&tmp.path().join("meta.redb"));
    let out = tmp.path().join("snap.redb");
    let r = src.begin_read().unwrap();
    snapshot::write(&r, 2, ChunkParams::default(), &info(), &out).unwrap();
    check_tree(&SnapshotDb::open(&out).unwrap());
}

#[test]
fn names_and_inode_numbering_are_pinned() {
    assert_eq!(snapshot::DIR, "snapshots");
    assert_eq!(snapshot::file_name(7), "00007.redb");
    assert_eq!(snapshot::slot_of("00007.redb"), Some(7));
    assert_eq!(snapshot::slot_of("00000.redb"), None);
    assert_eq!(snapshot::slot_of(".tmp-00007.redb"), None);
    assert_eq!(SNAPDIR_NAME, b".snapshots");
    assert_eq!(SNAPDIR_INO, 0xFFFF_0000_0000_0001);
    // Inode i of the snapshot in slot s is s << 48 | i.
    assert_eq!(dedupfs::fs::SNAPSHOT_SLOT_SHIFT, 48);
    assert_eq!(
        serde_json::to_string(&info()).unwrap(),
        r#"{"slot":7,"name":"nightly","created_ns":1796000000123456789,"root":2,"path":"vm"}"#
    );
}
