//! POSIX semantics of the filesystem core, driven directly through `dedupfs::fs::Fs` (no FUSE).
//!
//! Guards against: reads that miss buffered writes, overwrites and truncates that corrupt
//! neighbouring chunks, holes that read stale data, unlinked-but-open files that vanish early
//! or never vanish, rename corner cases (replace, NOREPLACE, EXCHANGE, moving a directory into
//! itself), wrong directory link counts, lost data or renumbered inodes across a remount, a
//! reopened store cutting with the binary's default chunk params instead of its own,
//! deduplication that silently stops working (identical, shifted, copied data), a small
//! overwrite that re-chunks the whole file, and write-back faults (I/O error, full disk) that
//! lose buffered data or wedge the filesystem.

use dedupfs::chunker::{ChunkParams, Chunker, DEFAULT_AVG};
use dedupfs::error::{FsError, Ino};
use dedupfs::fs::{Caller, Fs, FsConfig, RenameFlags, SeekWhence, SetAttr};
use dedupfs::meta::{Kind, MetaDb, ROOT_INO};
use dedupfs::store::{ChunkStore, FailingStore, LocalDirStore, MemoryStore};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
const ROOT: Ino = ROOT_INO;
const WHO: Caller = Caller { uid: 0, gid: 0 };

/// xorshift64 noise: incompressible, never all-zero, reproducible from the seed.
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

fn small_cfg() -> FsConfig {
    FsConfig {
        cache_bytes: 8 << 20,
        file_dirty_limit: MIB as usize,
        total_dirty_limit: 4 * MIB as usize,
        ..FsConfig::default()
    }
}

/// A filesystem over a metadata db in a temp dir and a given store; can be remounted.
struct Vol {
    dir: TempDir,
    store: Arc<dyn ChunkStore>,
    cfg: FsConfig,
    fs: Option<Fs>,
}

impl Vol {
    fn with(store: Arc<dyn ChunkStore>, params: ChunkParams, cfg: FsConfig) -> Vol {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaDb::create(&dir.path().join("meta.redb"), params, 0, 0).unwrap();
        let fs = Fs::new(meta, store.clone(), cfg.clone()).unwrap();
        Vol {
            dir,
            store,
            cfg,
            fs: Some(fs),
        }
    }

    fn mem() -> Vol {
        Vol::with(
            Arc::new(MemoryStore::new()),
            ChunkParams::default(),
            FsConfig::default(),
        )
    }

    fn db_path(&self) -> PathBuf {
        self.dir.path().join("meta.redb")
    }

    fn fs(&self) -> &Fs {
        self.fs.as_ref().unwrap()
    }

    /// Clean unmount and mount again: write everything back, drop the Fs (closing the db),
    /// reopen the db and the same store.
    fn remount(&mut self) {
        self.fs().sync_all(true).unwrap();
        self.crash_and_reopen();
    }

    /// Drop the Fs without any write-back (open handles and dirty data are lost), reopen.
    fn crash_and_reopen(&mut self) {
        drop(self.fs.take());
        let meta = MetaDb::open(&self.db_path()).unwrap();
        self.fs = Some(Fs::new(meta, self.store.clone(), self.cfg.clone()).unwrap());
    }

    fn create(&self, parent: Ino, name: &str) -> (Ino, u64) {
        let (ino, attr, fh) = self
            .fs()
            .create(WHO, parent, name.as_bytes(), 0o644)
            .unwrap();
        assert_eq!(attr.kind, Kind::File);
        (ino, fh)
    }

    fn mkdir(&self, parent: Ino, name: &str) -> Ino {
        self.fs()
            .mkdir(WHO, parent, name.as_bytes(), 0o755)
            .unwrap()
            .0
    }

    fn lookup(&self, parent: Ino, name: &str) -> Result<Ino, FsError> {
        self.fs().lookup(parent, name.as_bytes()).map(|(i, _)| i)
    }

    fn write(&self, ino: Ino, off: u64, data: &[u8]) {
        assert_eq!(self.fs().write(ino, off, data).unwrap(), data.len());
    }

    /// Writes in pieces of `piece` bytes, as the kernel does.
    fn write_in_pieces(&self, ino: Ino, off: u64, data: &[u8], piece: usize) {
        for (i, c) in data.chunks(piece).enumerate() {
            self.write(ino, off + (i * piece) as u64, c);
        }
    }

    fn read(&self, ino: Ino, off: u64, len: u64) -> Vec<u8> {
        self.fs()
            .read(ino, off, u32::try_from(len).unwrap())
            .unwrap()
    }

    fn read_all(&self, ino: Ino) -> Vec<u8> {
        let size = self.size(ino);
        let mut out = Vec::with_capacity(size as usize);
        while (out.len() as u64) < size {
            let got = self.read(
                ino,
                out.len() as u64,
                (16 * MIB).min(size - out.len() as u64),
            );
            assert!(!got.is_empty(), "short read at {} of {size}", out.len());
            out.extend_from_slice(&got);
        }
        out
    }

    fn size(&self, ino: Ino) -> u64 {
        self.fs().getattr(ino).unwrap().size
    }

    fn nlink(&self, ino: Ino) -> u32 {
        self.fs().getattr(ino).unwrap().nlink
    }

    fn physical(&self) -> u64 {
        self.fs().usage().unwrap().physical_bytes
    }

    /// A file named `name` holding `data`, written back and closed.
    fn file_with(&self, name: &str, data: &[u8]) -> Ino {
        let (ino, fh) = self.create(ROOT, name);
        self.write_in_pieces(ino, 0, data, 128 * KIB as usize);
        self.fs().fsync(ino).unwrap();
        self.fs().release(fh).unwrap();
        ino
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
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i}: got {:#x}, want {:#x}",
            got[i], want[i]
        );
    }
}

fn errno<T: std::fmt::Debug>(r: Result<T, FsError>) -> i32 {
    r.expect_err("operation should fail").errno()
}

// ---------------------------------------------------------------- basic data path

#[test]
fn created_file_reads_back_what_was_written() {
    let v = Vol::mem();
    let (ino, fh) = v.create(ROOT, "f");
    let data = noise(300 * KIB as usize, 1);
    v.write(ino, 0, &data);
    assert_eq!(v.size(ino), data.len() as u64);
    v.fs().flush(ino).unwrap();
    v.fs().release(fh).unwrap();
    assert_eq!(v.lookup(ROOT, "f").unwrap(), ino);
    assert_same(&v.read_all(ino), &data, "after release");
    assert_eq!(
        v.read(ino, data.len() as u64, 100),
        b"",
        "read at EOF is empty"
    );
    assert_eq!(v.read(ino, 100, 50), &data[100..150]);
    assert_eq!(errno(v.fs().read(ROOT, 0, 10)), libc::EISDIR);
}

#[test]
fn reads_see_writes_before_any_flush() {
    let v = Vol::mem();
    let (ino, fh) = v.create(ROOT, "f");
    let a = noise(200_000, 2);
    v.write(ino, 0, &a);
    assert_same(&v.read(ino, 0, 200_000), &a, "dirty read");
    // Partly committed, partly dirty.
    v.fs().fsync(ino).unwrap();
    let b = noise(5000, 3);
    v.write(ino, 150_000, &b);
    v.write(ino, 199_000, &b);
    let mut want = a.clone();
    want[150_000..155_000].copy_from_slice(&b);
    want.resize(204_000, 0);
    want[199_000..204_000].copy_from_slice(&b);
    assert_eq!(v.size(ino), 204_000);
    assert_same(&v.read_all(ino), &want, "mixed dirty and committed");
    assert!(v.fs().allocated(ino).unwrap() >= 204_000);
    v.fs().release(fh).unwrap();
    assert_same(&v.read_all(ino), &want, "after release");
}

#[test]
fn overwrite_in_the_middle_of_a_multi_chunk_file_keeps_the_rest() {
    for (name, cfg) in [
        ("default", FsConfig::default()),
        ("small dirty limits", small_cfg()),
    ] {
        let v = Vol::with(Arc::new(MemoryStore::new()), ChunkParams::default(), cfg);
        let mut want = noise(3 * MIB as usize + 12345, 4);
        let ino = v.file_with("f", &want);
        let fh = v.fs().open(ino, true).unwrap();
        let patch = noise(100_000, 5);
        let at = 3 * MIB as usize / 2 + 123;
        v.write_in_pieces(ino, at as u64, &patch, 4096);
        want[at..at + patch.len()].copy_from_slice(&patch);
        assert_same(&v.read_all(ino), &want, &format!("{name}: before flush"));
        // Tiny overwrites straddling the ends of the patch.
        v.write(ino, at as u64 - 1, b"<");
        v.write(ino, (at + patch.len()) as u64, b">");
        want[at - 1] = b'<';
        want[at + patch.len()] = b'>';
        v.fs().fsync(ino).unwrap();
        assert_same(&v.read_all(ino), &want, &format!("{name}: after fsync"));
        v.fs().release(fh).unwrap();
        let mut v = v;
        v.remount();
        assert_same(&v.read_all(ino), &want, &format!("{name}: after remount"));
    }
}

#[test]
fn streaming_write_under_small_dirty_limits_reads_back() {
    let v = Vol::with(
        Arc::new(MemoryStore::new()),
        ChunkParams::default(),
        small_cfg(),
    );
    let data = noise(9 * MIB as usize + 777, 6);
    let (ino, fh) = v.create(ROOT, "big");
    v.write_in_pieces(ino, 0, &data, 128 * KIB as usize);
    assert_same(&v.read_all(ino), &data, "while open");
    v.fs().release(fh).unwrap();
    assert_same(&v.read_all(ino), &data, "after release");
}

#[test]
fn truncate_grows_with_zeros_and_shrinks() {
    let v = Vol::mem();
    let data = noise(500_000, 7);
    let ino = v.file_with("f", &data);
    v.fs().truncate(ino, 800_000).unwrap();
    let mut want = data.clone();
    want.resize(800_000, 0);
    assert_same(&v.read_all(ino), &want, "grown");
    // Shrink into the middle of a chunk, then grow again: the cut-off bytes must not return.
    v.fs().truncate(ino, 123_457).unwrap();
    assert_eq!(v.size(ino), 123_457);
    assert_same(&v.read_all(ino), &data[..123_457], "shrunk");
    v.fs().truncate(ino, 400_000).unwrap();
    want = data[..123_457].to_vec();
    want.resize(400_000, 0);
    assert_same(&v.read_all(ino), &want, "shrunk then grown");
    // Shrink with dirty data past the new end, through setattr.
    let fh = v.fs().open(ino, true).unwrap();
    v.write(ino, 350_000, &[9u8; 10_000]);
    let attr = v
        .fs()
        .setattr(
            ino,
            SetAttr {
                size: Some(300_000),
                ..SetAttr::default()
            },
        )
        .unwrap();
    assert_eq!(attr.size, 300_000);
    want.truncate(300_000);
    v.fs().truncate(ino, 360_000).unwrap();
    want.resize(360_000, 0);
    assert_same(
        &v.read_all(ino),
        &want,
        "dirty data past a shrink is dropped",
    );
    v.fs().release(fh).unwrap();
    v.fs().truncate(ino, 0).unwrap();
    assert_eq!(v.read_all(ino), b"");
    assert_eq!(v.fs().allocated(ino).unwrap(), 0);
}

#[test]
fn petabyte_truncate_is_a_hole_that_reads_zeros_and_seeks() {
    let v = Vol::mem();
    let (ino, fh) = v.create(ROOT, "sparse");
    let head = noise(4096, 8);
    v.write(ino, 0, &head);
    v.fs().fsync(ino).unwrap();
    let pib = 1u64 << 50;
    v.fs().truncate(ino, pib).unwrap();
    assert_eq!(v.size(ino), pib);
    assert_eq!(
        v.read(ino, pib - 4096, 8192),
        vec![0u8; 4096],
        "end of a 1 PiB hole"
    );
    assert_eq!(v.read(ino, pib / 2, 65536), vec![0u8; 65536]);
    assert!(
        v.fs().allocated(ino).unwrap() <= 4096,
        "a hole allocates nothing"
    );
    assert_eq!(v.fs().seek(ino, 0, SeekWhence::Data).unwrap(), 0);
    assert_eq!(v.fs().seek(ino, 0, SeekWhence::Hole).unwrap(), 4096);
    assert_eq!(v.fs().seek(ino, 5000, SeekWhence::Hole).unwrap(), 5000);
    assert_eq!(errno(v.fs().seek(ino, 4096, SeekWhence::Data)), libc::ENXIO);
    assert_eq!(errno(v.fs().seek(ino, pib, SeekWhence::Hole)), libc::ENXIO);
    // Data far out, first dirty, then committed.
    let far = 1u64 << 49;
    v.write(ino, far, &head);
    for state in ["dirty", "committed"] {
        assert_eq!(
            v.fs().seek(ino, 4096, SeekWhence::Data).unwrap(),
            far,
            "{state}"
        );
        assert_eq!(
            v.fs().seek(ino, far, SeekWhence::Hole).unwrap(),
            far + 4096,
            "{state}"
        );
        assert_eq!(v.read(ino, far - 10, 4106)[10..], head[..], "{state}");
        v.fs().fsync(ino).unwrap();
    }
    // The last hole ends at EOF: SEEK_HOLE reports the size.
    assert_eq!(
        v.fs().seek(ino, far + 4096, SeekWhence::Hole).unwrap(),
        far + 4096
    );
    assert_eq!(
        errno(v.fs().seek(ino, far + 4096, SeekWhence::Data)),
        libc::ENXIO
    );
    v.fs().release(fh).unwrap();
    assert_eq!(errno(v.fs().truncate(ino, u64::MAX)), libc::EFBIG);
}

// ---------------------------------------------------------------- names, links, renames

#[test]
fn unlinked_open_file_stays_readable_until_release() {
    let v = Vol::mem();
    let data = noise(200_000, 9);
    let (ino, fh) = v.create(ROOT, "f");
    v.write(ino, 0, &data);
    v.fs().fsync(ino).unwrap();
    v.fs().unlink(ROOT, b"f").unwrap();
    assert_eq!(errno(v.fs().lookup(ROOT, b"f")), libc::ENOENT);
    assert_eq!(v.nlink(ino), 0);
    assert_same(&v.read_all(ino), &data, "read through the open handle");
    v.write(ino, 0, b"still writable");
    v.fs().release(fh).unwrap();
    // Deleted, but shown (link count 0) until the kernel forgets it (`fs::ghosts`).
    assert_eq!(v.nlink(ino), 0);
    v.fs().forget(ino);
    assert_eq!(
        errno(v.fs().getattr(ino)),
        libc::ENOENT,
        "inode gone after the last release and the kernel's forget"
    );
    v.fs().sync_dir().unwrap();
    assert_eq!(v.fs().usage().unwrap().chunk_count, 0);
    assert_eq!(v.physical(), 0);
    let mut n = 0;
    v.store.for_each(&mut |_| n += 1).unwrap();
    assert_eq!(n, 0, "the deleted file's chunks are removed from the store");
}

#[test]
fn unlinked_open_file_is_deleted_at_mount_after_a_crash() {
    let mut v = Vol::mem();
    let (ino, _fh) = v.create(ROOT, "f");
    v.write(ino, 0, &noise(100_000, 10));
    v.fs().fsync(ino).unwrap();
    v.fs().unlink(ROOT, b"f").unwrap();
    v.fs().sync_dir().unwrap();
    v.crash_and_reopen(); // the handle is never released
    assert_eq!(errno(v.fs().getattr(ino)), libc::ENOENT);
    assert_eq!(v.fs().usage().unwrap().chunk_count, 0);
    let mut n = 0;
    v.store.for_each(&mut |_| n += 1).unwrap();
    assert_eq!(n, 0, "orphan's chunks removed");
}

#[test]
fn stores_with_chunks_larger_than_the_gather_block_keep_all_data() {
    // max chunk 8 MiB (avg 2 MiB) exceeds the 4 MiB re-chunking block: the gather must still
    // give the cutter max bytes of look-ahead, or data past the block would be dropped.
    let mut v = Vol::with(
        Arc::new(MemoryStore::new()),
        ChunkParams::from_avg(2 << 20).unwrap(),
        FsConfig::default(),
    );
    let data = noise(12 * MIB as usize, 33);
    let ino = v.file_with("big", &data);
    assert_same(&v.read_all(ino), &data, "before remount");
    v.remount();
    assert_same(&v.read_all(ino), &data, "after remount");
}

#[test]
fn grouped_operations_are_seen_at_once_and_a_refusal_keeps_the_group() {
    // Namespace operations share one open metadata transaction (group commit): each must
    // see the ones before it, a refused one (EEXIST) must not undo its neighbours, and all of
    // them become durable at the next durable point.
    let mut v = Vol::mem();
    let d = v.mkdir(ROOT, "d");
    let (a, fh) = v.create(d, "a");
    v.fs().release(fh).unwrap();
    assert_eq!(
        errno(v.fs().create(WHO, d, b"a", 0o644)),
        libc::EEXIST,
        "second create of one name"
    );
    v.fs().setxattr(a, b"user.k", b"v", 0).unwrap();
    v.fs().link(a, ROOT, b"a2").unwrap();
    assert_eq!(errno(v.fs().rmdir(ROOT, b"d")), libc::ENOTEMPTY);
    v.fs().rename(d, b"a", d, b"b", Default::default()).unwrap();
    assert_eq!(v.names(d), vec!["b"], "readdir through the open group");
    assert_eq!(v.fs().getxattr(a, b"user.k").unwrap(), b"v");
    assert_eq!(v.nlink(a), 2);
    v.fs().sync_dir().unwrap();
    v.crash_and_reopen();
    assert_eq!(
        v.lookup(d, "b").unwrap(),
        a,
        "renamed file after the durable point"
    );
    assert_eq!(v.lookup(ROOT, "a2").unwrap(), a);
    assert_eq!(v.fs().getxattr(a, b"user.k").unwrap(), b"v");
    assert_eq!(v.nlink(a), 2);
}

#[test]
fn rename_moves_and_replaces_files() {
    let v = Vol::mem();
    let a = v.file_with("a", b"AAAA");
    let b = v.file_with("b", b"BBBB");
    let d = v.mkdir(ROOT, "d");
    // Plain rename into another directory.
    v.fs()
        .rename(ROOT, b"a", d, b"a2", RenameFlags::default())
        .unwrap();
    assert_eq!(v.lookup(d, "a2").unwrap(), a);
    assert_eq!(errno(v.fs().lookup(ROOT, b"a")), libc::ENOENT);
    // Over an existing file: the target's inode is dropped.
    v.fs()
        .rename(d, b"a2", ROOT, b"b", RenameFlags::default())
        .unwrap();
    assert_eq!(v.lookup(ROOT, "b").unwrap(), a);
    assert_eq!(v.read_all(a), b"AAAA");
    assert_eq!(v.nlink(b), 0, "shown until forgotten");
    v.fs().forget(b);
    assert_eq!(errno(v.fs().getattr(b)), libc::ENOENT);
    assert_eq!(v.names(ROOT), ["b", "d"]);
    assert!(v.names(d).is_empty());
    // Missing source.
    assert_eq!(
        errno(
            v.fs()
                .rename(ROOT, b"nope", ROOT, b"x", RenameFlags::default())
        ),
        libc::ENOENT
    );
    // Renaming one name of an inode onto another name of it does nothing.
    v.fs().link(a, ROOT, b"b2").unwrap();
    v.fs()
        .rename(ROOT, b"b", ROOT, b"b2", RenameFlags::default())
        .unwrap();
    assert_eq!(v.names(ROOT), ["b", "b2", "d"]);
    assert_eq!(v.nlink(a), 2);
}

#[test]
fn rename_over_directories_follows_posix() {
    let v = Vol::mem();
    let src = v.mkdir(ROOT, "src");
    v.file_with("file", b"x");
    let empty = v.mkdir(ROOT, "empty");
    let full = v.mkdir(ROOT, "full");
    v.mkdir(full, "child");
    assert_eq!(v.nlink(ROOT), 2 + 3);
    let none = RenameFlags::default();
    assert_eq!(
        errno(v.fs().rename(ROOT, b"src", ROOT, b"full", none)),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno(v.fs().rename(ROOT, b"src", ROOT, b"file", none)),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(v.fs().rename(ROOT, b"file", ROOT, b"empty", none)),
        libc::EISDIR
    );
    // Over an empty directory: replaced, and the parent loses that directory's link.
    v.fs().rename(ROOT, b"src", ROOT, b"empty", none).unwrap();
    assert_eq!(v.lookup(ROOT, "empty").unwrap(), src);
    let gone = v.fs().getattr(empty).unwrap();
    assert_eq!(
        (gone.nlink, gone.kind),
        (0, Kind::Dir),
        "shown until forgotten"
    );
    v.fs().forget(empty);
    assert_eq!(errno(v.fs().getattr(empty)), libc::ENOENT);
    assert_eq!(v.nlink(ROOT), 2 + 2);
    assert_eq!(v.names(ROOT), ["empty", "file", "full"]);
}

#[test]
fn rename_whiteout_puts_a_device_owned_by_the_caller_at_the_old_name_in_one_transaction() {
    use dedupfs::fs::Caller;
    use dedupfs::meta::Kind;
    let v = Vol::mem();
    let a = v.file_with("a", b"A");
    let who = Caller {
        uid: 1234,
        gid: 567,
    };
    let whiteout = RenameFlags {
        whiteout: Some(who),
        ..RenameFlags::default()
    };
    v.fs().rename(ROOT, b"a", ROOT, b"b", whiteout).unwrap();
    assert_eq!(v.lookup(ROOT, "b").unwrap(), a);
    let w = v.lookup(ROOT, "a").unwrap();
    assert_ne!(w, a);
    let attr = v.fs().getattr(w).unwrap();
    assert_eq!(attr.kind, Kind::CharDev);
    assert_eq!(
        (attr.rdev, attr.perm, attr.uid, attr.gid),
        (0, 0, 1234, 567)
    );
    // A failed rename makes no whiteout.
    assert_eq!(
        errno(v.fs().rename(ROOT, b"missing", ROOT, b"x", whiteout)),
        libc::ENOENT
    );
    assert!(v.lookup(ROOT, "missing").is_err());
    let both = RenameFlags {
        exchange: true,
        ..whiteout
    };
    assert_eq!(
        errno(v.fs().rename(ROOT, b"b", ROOT, b"a", both)),
        libc::EINVAL
    );
}

#[test]
fn rename_noreplace_and_exchange() {
    let v = Vol::mem();
    let a = v.file_with("a", b"A");
    let b = v.file_with("b", b"B");
    let noreplace = RenameFlags {
        noreplace: true,
        exchange: false,
        ..RenameFlags::default()
    };
    let exchange = RenameFlags {
        noreplace: false,
        exchange: true,
        ..RenameFlags::default()
    };
    assert_eq!(
        errno(v.fs().rename(ROOT, b"a", ROOT, b"b", noreplace)),
        libc::EEXIST
    );
    assert_eq!(
        v.lookup(ROOT, "b").unwrap(),
        b,
        "NOREPLACE failure changes nothing"
    );
    v.fs().rename(ROOT, b"a", ROOT, b"c", noreplace).unwrap();
    v.fs().rename(ROOT, b"c", ROOT, b"b", exchange).unwrap();
    assert_eq!(v.lookup(ROOT, "b").unwrap(), a);
    assert_eq!(v.lookup(ROOT, "c").unwrap(), b);
    assert_eq!(v.read_all(v.lookup(ROOT, "b").unwrap()), b"A");
    assert_eq!(
        errno(v.fs().rename(ROOT, b"c", ROOT, b"missing", exchange)),
        libc::ENOENT
    );
    let both = RenameFlags {
        noreplace: true,
        exchange: true,
        ..RenameFlags::default()
    };
    assert_eq!(
        errno(v.fs().rename(ROOT, b"c", ROOT, b"b", both)),
        libc::EINVAL
    );

    // Exchange a directory and a file across parents: link counts and ".." follow.
    let p = v.mkdir(ROOT, "p");
    let q = v.mkdir(ROOT, "q");
    let sub = v.mkdir(p, "sub");
    let (f, fh) = v.create(q, "f");
    v.fs().release(fh).unwrap();
    assert_eq!((v.nlink(p), v.nlink(q)), (3, 2));
    v.fs().rename(p, b"sub", q, b"f", exchange).unwrap();
    assert_eq!(v.lookup(p, "sub").unwrap(), f);
    assert_eq!(v.lookup(q, "f").unwrap(), sub);
    assert_eq!((v.nlink(p), v.nlink(q)), (2, 3));
    assert_eq!(v.lookup(sub, "..").unwrap(), q);
    assert_eq!(v.fs().getattr(sub).unwrap().parent, q);
}

#[test]
fn directory_cannot_move_into_its_own_subtree() {
    let v = Vol::mem();
    let a = v.mkdir(ROOT, "a");
    let b = v.mkdir(a, "b");
    let c = v.mkdir(b, "c");
    let none = RenameFlags::default();
    assert_eq!(
        errno(v.fs().rename(ROOT, b"a", c, b"a", none)),
        libc::EINVAL
    );
    assert_eq!(
        errno(v.fs().rename(ROOT, b"a", a, b"self", none)),
        libc::EINVAL
    );
    let exchange = RenameFlags {
        noreplace: false,
        exchange: true,
        ..RenameFlags::default()
    };
    assert_eq!(
        errno(v.fs().rename(ROOT, b"a", c, b"x", exchange)),
        libc::EINVAL,
        "exchange with src above dst"
    );
    v.mkdir(c, "x");
    assert_eq!(
        errno(v.fs().rename(ROOT, b"a", c, b"x", exchange)),
        libc::EINVAL
    );
    assert_eq!(
        errno(v.fs().rename(c, b"x", ROOT, b"a", exchange)),
        libc::EINVAL,
        "exchange with dst above src"
    );
    assert_eq!(v.lookup(ROOT, "a").unwrap(), a, "nothing moved");
    // Moving the subtree up is fine.
    v.fs().rename(b, b"c", ROOT, b"c", none).unwrap();
    assert_eq!(v.lookup(c, "..").unwrap(), ROOT);
}

#[test]
fn directory_link_counts_follow_subdirectories() {
    let v = Vol::mem();
    assert_eq!(v.nlink(ROOT), 2);
    let a = v.mkdir(ROOT, "a");
    assert_eq!((v.nlink(ROOT), v.nlink(a)), (3, 2));
    let b = v.mkdir(a, "b");
    v.file_with("f", b"");
    assert_eq!(
        (v.nlink(ROOT), v.nlink(a), v.nlink(b)),
        (3, 3, 2),
        "files do not count"
    );
    v.fs()
        .rename(a, b"b", ROOT, b"b", RenameFlags::default())
        .unwrap();
    assert_eq!(
        (v.nlink(ROOT), v.nlink(a)),
        (4, 2),
        "moving a dir moves its link"
    );
    assert_eq!(errno(v.fs().rmdir(ROOT, b"f")), libc::ENOTDIR);
    assert_eq!(errno(v.fs().unlink(ROOT, b"a")), libc::EISDIR);
    v.mkdir(a, "c");
    assert_eq!(errno(v.fs().rmdir(ROOT, b"a")), libc::ENOTEMPTY);
    v.fs().rmdir(a, b"c").unwrap();
    v.fs().rmdir(ROOT, b"a").unwrap();
    v.fs().rmdir(ROOT, b"b").unwrap();
    assert_eq!(v.nlink(ROOT), 2);
    assert_eq!(
        errno(v.fs().mkdir(WHO, a, b"x", 0o755)),
        libc::ENOENT,
        "mkdir in a removed dir"
    );
}

#[test]
fn hard_links_share_one_inode() {
    let v = Vol::mem();
    let data = noise(70_000, 11);
    let ino = v.file_with("a", &data);
    let d = v.mkdir(ROOT, "d");
    let attr = v.fs().link(ino, d, b"b").unwrap();
    assert_eq!(attr.nlink, 2);
    assert_eq!(v.lookup(d, "b").unwrap(), ino);
    assert_eq!(errno(v.fs().link(ino, d, b"b")), libc::EEXIST);
    assert_eq!(errno(v.fs().link(d, ROOT, b"dirlink")), libc::EPERM);
    let phys = v.physical();
    v.fs().unlink(ROOT, b"a").unwrap();
    assert_eq!(v.nlink(ino), 1);
    assert_same(&v.read_all(ino), &data, "data through the other name");
    assert_eq!(v.physical(), phys);
    // Write through one name, see it through the other after remount.
    let fh = v.fs().open(ino, true).unwrap();
    v.write(ino, 0, b"changed");
    v.fs().release(fh).unwrap();
    let mut v = v;
    v.remount();
    assert_eq!(v.lookup(d, "b").unwrap(), ino);
    assert_eq!(&v.read(ino, 0, 7), b"changed");
    assert_eq!(v.nlink(ino), 1);
}

#[test]
fn xattrs_set_get_list_remove() {
    let mut v = Vol::mem();
    let ino = v.file_with("f", b"x");
    let fs = v.fs();
    assert_eq!(errno(fs.getxattr(ino, b"user.a")), libc::ENODATA);
    fs.setxattr(ino, b"user.a", b"1", 0).unwrap();
    fs.setxattr(ino, b"user.b", &[0u8; 4000], 0).unwrap();
    fs.setxattr(ino, b"user.empty", b"", 0).unwrap();
    assert_eq!(fs.getxattr(ino, b"user.a").unwrap(), b"1");
    assert_eq!(fs.getxattr(ino, b"user.empty").unwrap(), b"");
    assert_eq!(fs.listxattr(ino).unwrap(), b"user.a\0user.b\0user.empty\0");
    assert_eq!(
        errno(fs.setxattr(ino, b"user.a", b"2", libc::XATTR_CREATE)),
        libc::EEXIST
    );
    assert_eq!(
        errno(fs.setxattr(ino, b"user.c", b"2", libc::XATTR_REPLACE)),
        libc::ENODATA
    );
    fs.setxattr(ino, b"user.a", b"22", libc::XATTR_REPLACE)
        .unwrap();
    assert_eq!(fs.getxattr(ino, b"user.a").unwrap(), b"22");
    fs.removexattr(ino, b"user.b").unwrap();
    assert_eq!(errno(fs.removexattr(ino, b"user.b")), libc::ENODATA);
    // Directories have xattrs too, and they do not leak between inodes.
    fs.setxattr(ROOT, b"user.root", b"r", 0).unwrap();
    assert_eq!(fs.listxattr(ROOT).unwrap(), b"user.root\0");
    v.remount();
    assert_eq!(v.fs().listxattr(ino).unwrap(), b"user.a\0user.empty\0");
    assert_eq!(v.fs().getxattr(ino, b"user.a").unwrap(), b"22");
    // A deleted inode's xattrs go with it.
    v.fs().unlink(ROOT, b"f").unwrap();
    let again = v.file_with("g", b"y");
    assert_eq!(v.fs().listxattr(again).unwrap(), b"");
}

#[test]
fn names_of_255_bytes_work_and_256_are_too_long() {
    let v = Vol::mem();
    let ok = "n".repeat(255);
    let long = "n".repeat(256);
    let (ino, fh) = v.create(ROOT, &ok);
    v.fs().release(fh).unwrap();
    assert_eq!(v.lookup(ROOT, &ok).unwrap(), ino);
    let d = v.mkdir(ROOT, &"d".repeat(255));
    v.fs()
        .symlink(WHO, d, "s".repeat(255).as_bytes(), b"target")
        .unwrap();
    v.fs().link(ino, d, ok.as_bytes()).unwrap();
    let too_long = libc::ENAMETOOLONG;
    assert_eq!(
        errno(v.fs().create(WHO, ROOT, long.as_bytes(), 0o644)),
        too_long
    );
    assert_eq!(
        errno(v.fs().mkdir(WHO, ROOT, long.as_bytes(), 0o755)),
        too_long
    );
    assert_eq!(
        errno(v.fs().symlink(WHO, ROOT, long.as_bytes(), b"t")),
        too_long
    );
    assert_eq!(errno(v.fs().link(ino, ROOT, long.as_bytes())), too_long);
    assert_eq!(errno(v.fs().lookup(ROOT, long.as_bytes())), too_long);
    assert_eq!(errno(v.fs().unlink(ROOT, long.as_bytes())), too_long);
    assert_eq!(
        errno(v.fs().rename(
            ROOT,
            ok.as_bytes(),
            ROOT,
            long.as_bytes(),
            RenameFlags::default()
        )),
        too_long
    );
    assert_eq!(errno(v.fs().create(WHO, ROOT, b"a/b", 0o644)), libc::EINVAL);
    assert_eq!(errno(v.fs().create(WHO, ROOT, b"", 0o644)), libc::EINVAL);
    assert_eq!(v.names(ROOT), ["d".repeat(255), ok]);
}

// ---------------------------------------------------------------- persistence

fn persistence_round_trip(store: Arc<dyn ChunkStore>) {
    let mut v = Vol::with(store, ChunkParams::default(), FsConfig::default());
    let d = v.mkdir(ROOT, "dir");
    let big = noise(2 * MIB as usize + 5, 12);
    let (f1, fh1) = v.create(d, "big");
    v.write_in_pieces(f1, 0, &big, 128 * KIB as usize);
    let f2 = v.file_with("small", b"hello");
    let (sl, _) = v.fs().symlink(WHO, d, b"link", b"../small").unwrap();
    let (sparse, fh2) = v.create(ROOT, "sparse");
    v.write(sparse, 1 << 40, b"far");
    v.fs().setxattr(f2, b"user.k", b"v", 0).unwrap();
    v.fs()
        .setattr(
            f2,
            SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            },
        )
        .unwrap();
    let before: Vec<_> = [d, f1, f2, sl, sparse]
        .iter()
        .map(|&i| v.fs().getattr(i).unwrap())
        .collect();
    // Handles are still open: sync_all(true) must write everything back.
    v.remount();
    let _ = (fh1, fh2);
    assert_eq!(v.lookup(ROOT, "dir").unwrap(), d, "same inode numbers");
    assert_eq!(v.lookup(d, "big").unwrap(), f1);
    assert_eq!(v.lookup(ROOT, "small").unwrap(), f2);
    assert_eq!(v.lookup(d, "link").unwrap(), sl);
    assert_eq!(v.lookup(ROOT, "sparse").unwrap(), sparse);
    for (i, ino) in [d, f1, f2, sl, sparse].into_iter().enumerate() {
        let a = v.fs().getattr(ino).unwrap();
        let b = before[i];
        assert_eq!(
            (a.kind, a.perm, a.nlink, a.size, a.parent),
            (b.kind, b.perm, b.nlink, b.size, b.parent),
            "attr of {ino}"
        );
        assert_eq!(a.mtime, b.mtime, "mtime of {ino}");
    }
    assert_same(&v.read_all(f1), &big, "big file after remount");
    assert_eq!(v.read_all(f2), b"hello");
    assert_eq!(v.fs().readlink(sl).unwrap(), b"../small");
    assert_eq!(v.read(sparse, (1 << 40) - 2, 10), b"\0\0far");
    assert_eq!(v.fs().getxattr(f2, b"user.k").unwrap(), b"v");
    let after = v.fs().usage().unwrap();
    assert_eq!(after.logical_bytes, big.len() as u64 + 5 + (1 << 40) + 3);
    assert!(after.physical_bytes >= big.len() as u64 + 5 + 3);
    assert_eq!(after.files, 3);
    // New inodes do not reuse old numbers.
    let (n, fh) = v.create(ROOT, "new");
    v.fs().release(fh).unwrap();
    assert!(n > sparse, "inode {n} reused after remount");
}

#[test]
fn data_and_inode_numbers_survive_remount_with_memory_store() {
    persistence_round_trip(Arc::new(MemoryStore::new()));
}

#[test]
fn data_and_inode_numbers_survive_remount_with_local_dir_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalDirStore::open(&dir.path().join("chunks")).unwrap();
    persistence_round_trip(Arc::new(store));
}

#[test]
fn a_store_keeps_its_chunk_params_across_remount_whatever_the_default() {
    // Chunk params are chosen at init and recorded in the metadata; they are on-disk format.
    // A reopened store must cut new data with its own params, never with the binary's default
    // (else a release that changes DEFAULT_AVG would make every new write in an existing store
    // stop sharing chunks with its old data).
    for avg in [DEFAULT_AVG / 4, DEFAULT_AVG * 4] {
        let params = ChunkParams::from_avg(avg).unwrap();
        let mut v = Vol::with(Arc::new(MemoryStore::new()), params, FsConfig::default());
        v.file_with("before", &noise(4 * MIB as usize, 18));
        v.remount();
        assert_eq!(
            v.fs().chunk_params(),
            params,
            "avg {avg}: params after remount"
        );
        let data = noise(8 * MIB as usize, 19);
        let chunks = v.fs().usage().unwrap().chunk_count;
        v.file_with("after", &data);
        let added = v.fs().usage().unwrap().chunk_count - chunks;
        let own = Chunker::new(params).cut_all(&data).len() as u64;
        let default = Chunker::new(ChunkParams::default()).cut_all(&data).len() as u64;
        assert_ne!(own, default, "the test needs params that cut differently");
        assert_eq!(added, own, "avg {avg}: chunks of a write after remount");
    }
}

// ---------------------------------------------------------------- deduplication

#[test]
fn identical_files_are_stored_once() {
    let v = Vol::mem();
    let data = noise(8 * MIB as usize, 13);
    v.file_with("a", &data);
    let one = v.physical();
    assert!(one >= data.len() as u64);
    v.file_with("b", &data);
    let two = v.physical();
    assert!(
        two - one <= one / 100,
        "second copy grew physical bytes from {one} to {two}"
    );
    let u = v.fs().usage().unwrap();
    assert_eq!(u.referenced_bytes, 2 * data.len() as u64);
    assert_eq!(u.logical_bytes, 2 * data.len() as u64);
}

#[test]
fn shifted_file_shares_most_chunks() {
    let v = Vol::mem();
    let data = noise(8 * MIB as usize, 14);
    v.file_with("a", &data);
    let one = v.physical();
    let mut shifted = vec![0x5A];
    shifted.extend_from_slice(&data);
    let ino = v.file_with("b", &shifted);
    let growth = v.physical() - one;
    assert!(
        growth * 10 <= one,
        "a 1-byte shift added {growth} of {one} physical bytes"
    );
    assert_same(&v.read_all(ino), &shifted, "shifted copy");
}

#[test]
fn small_overwrite_in_a_large_file_rewrites_few_chunks() {
    let store = Arc::new(FailingStore::new(Arc::new(MemoryStore::new())));
    let v = Vol::with(store.clone(), ChunkParams::default(), FsConfig::default());
    let mut data = noise(64 * MIB as usize, 15);
    let ino = v.file_with("big", &data);
    let chunks = v.fs().usage().unwrap().chunk_count;
    assert!(chunks > 500, "{chunks} chunks");
    let fh = v.fs().open(ino, true).unwrap();
    let at = 32 * MIB as usize + 1000;
    let patch = noise(4096, 16);
    let before = store.puts();
    v.write(ino, at as u64, &patch);
    v.fs().fsync(ino).unwrap();
    let puts = store.puts() - before;
    assert!(
        puts <= 4,
        "a 4 KiB overwrite stored {puts} chunks (re-chunking is not local)"
    );
    assert!(puts >= 1);
    data[at..at + 4096].copy_from_slice(&patch);
    v.fs().release(fh).unwrap();
    assert_same(&v.read_all(ino), &data, "after the overwrite");
    let growth = v.fs().usage().unwrap().chunk_count as i64 - chunks as i64;
    assert!(growth.abs() <= 4, "chunk count changed by {growth}");
}

#[test]
fn copy_range_shares_chunks_and_copies_are_independent() {
    let v = Vol::mem();
    let data = noise(4 * MIB as usize + 99, 17);
    let src = v.file_with("src", &data);
    let phys = v.physical();
    let (dst, fh) = v.create(ROOT, "dst");
    let n = v.fs().copy_range(src, 0, dst, 0, 1 << 40).unwrap();
    assert_eq!(n, data.len() as u64, "copy stops at EOF");
    assert_eq!(v.physical(), phys, "a whole-file copy costs no data");
    assert_same(&v.read_all(dst), &data, "copy");
    // An unaligned copy slices at most two chunks at its edges.
    let (dst2, fh2) = v.create(ROOT, "dst2");
    let n = v.fs().copy_range(src, 1000, dst2, 7, 2 * MIB).unwrap();
    assert_eq!(n, 2 * MIB);
    let growth = v.physical() - phys;
    assert!(
        growth <= 2 * 256 * KIB,
        "unaligned copy added {growth} bytes"
    );
    let mut want2 = vec![0u8; 7];
    want2.extend_from_slice(&data[1000..1000 + 2 * MIB as usize]);
    assert_same(&v.read_all(dst2), &want2, "unaligned copy");
    // Writing the copy leaves the source alone, and the reverse.
    v.write(dst, 100, b"copy changed");
    v.fs().fsync(dst).unwrap();
    v.fs().release(fh).unwrap();
    v.fs().release(fh2).unwrap();
    assert_same(&v.read_all(src), &data, "source after writing the copy");
    let fh = v.fs().open(src, true).unwrap();
    v.write(src, 3 * MIB, b"source changed");
    v.fs().release(fh).unwrap();
    let mut want = data.clone();
    want[100..112].copy_from_slice(b"copy changed");
    assert_same(&v.read_all(dst), &want, "copy after writing the source");
    // Overlapping copy inside one file is refused.
    assert_eq!(errno(v.fs().copy_range(src, 0, src, 10, 100)), libc::EINVAL);
}

#[test]
fn copy_range_sees_dirty_source_data_and_overwrites_destination() {
    let v = Vol::mem();
    let (src, fh1) = v.create(ROOT, "src");
    let (dst, fh2) = v.create(ROOT, "dst");
    let a = noise(300_000, 18);
    let b = noise(500_000, 19);
    v.write(src, 0, &a); // dirty, never flushed
    v.write(dst, 0, &b);
    assert_eq!(
        v.fs()
            .copy_range(src, 50_000, dst, 100_000, 200_000)
            .unwrap(),
        200_000
    );
    let mut want = b.clone();
    want[100_000..300_000].copy_from_slice(&a[50_000..250_000]);
    assert_same(&v.read_all(dst), &want, "dst");
    v.fs().release(fh1).unwrap();
    v.fs().release(fh2).unwrap();
    assert_same(&v.read_all(dst), &want, "dst after release");
}

#[test]
fn punch_hole_reads_zeros_and_frees_allocation() {
    let v = Vol::mem();
    let data = noise(MIB as usize, 20);
    let ino = v.file_with("f", &data);
    let full = v.fs().allocated(ino).unwrap();
    assert_eq!(full, MIB);
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    v.fs()
        .fallocate(ino, 256 * KIB + 5, 300 * KIB, mode)
        .unwrap();
    let mut want = data.clone();
    want[(256 * KIB + 5) as usize..(556 * KIB + 5) as usize].fill(0);
    assert_eq!(v.size(ino), MIB, "KEEP_SIZE");
    assert_same(&v.read_all(ino), &want, "after punch");
    assert_eq!(v.fs().allocated(ino).unwrap(), full - 300 * KIB);
    // Answers come in 4 KiB blocks: the hole is the blocks wholly inside the punched range.
    assert_eq!(v.fs().seek(ino, 0, SeekWhence::Hole).unwrap(), 260 * KIB);
    assert_eq!(
        v.fs().seek(ino, 260 * KIB, SeekWhence::Data).unwrap(),
        556 * KIB
    );
    assert_eq!(
        v.fs().seek(ino, 256 * KIB + 5, SeekWhence::Data).unwrap(),
        256 * KIB + 5,
        "the block holds data before the punched range"
    );
    // Punch past EOF does not grow the file; plain fallocate does.
    v.fs().fallocate(ino, MIB - 10, MIB, mode).unwrap();
    assert_eq!(v.size(ino), MIB);
    want[(MIB - 10) as usize..].fill(0);
    v.fs().fallocate(ino, MIB, 4096, 0).unwrap();
    assert_eq!(v.size(ino), MIB + 4096);
    want.resize((MIB + 4096) as usize, 0);
    assert_same(&v.read_all(ino), &want, "after grow");
    assert_eq!(
        errno(v.fs().fallocate(ino, 0, 10, libc::FALLOC_FL_PUNCH_HOLE)),
        libc::EOPNOTSUPP,
        "punch without KEEP_SIZE"
    );
    let mut v = v;
    v.remount();
    assert_same(&v.read_all(ino), &want, "after remount");
}

// ---------------------------------------------------------------- faults

#[test]
fn failed_put_during_fsync_keeps_data_dirty_and_recovers() {
    let store = Arc::new(FailingStore::new(Arc::new(MemoryStore::new())));
    let mut v = Vol::with(store.clone(), ChunkParams::default(), FsConfig::default());
    let mut want = noise(2 * MIB as usize, 21);
    let ino = v.file_with("f", &want);
    let fh = v.fs().open(ino, true).unwrap();
    let patch = noise(MIB as usize, 22);
    v.write(ino, 512 * KIB, &patch);
    v.write(ino, 2 * MIB, &patch); // and an append
    want[512 * KIB as usize..1536 * KIB as usize].copy_from_slice(&patch);
    want.extend_from_slice(&patch);
    store.fail_nth_put(2);
    let e = v
        .fs()
        .fsync(ino)
        .expect_err("fsync must report the failed put");
    assert_eq!(e.errno(), libc::EIO);
    assert_same(&v.read_all(ino), &want, "reads after a failed fsync");
    assert_eq!(v.size(ino), 3 * MIB);
    // More writes while the earlier ones are still dirty.
    v.write(ino, 100, b"later");
    want[100..105].copy_from_slice(b"later");
    v.fs().fsync(ino).unwrap();
    assert_same(&v.read_all(ino), &want, "after a successful fsync");
    v.fs().release(fh).unwrap();
    v.remount();
    assert_same(&v.read_all(ino), &want, "after remount");
}

#[test]
fn failed_write_back_keeps_chunks_that_durable_metadata_still_names() {
    // f is durable; its unlink is not yet, so its chunks sit at refcount 0. A write-back of the
    // same bytes (plus new ones) stores them again, then fails: cleaning up after it must not
    // remove them, since a crash now would bring f back from the durable metadata.
    let store = Arc::new(FailingStore::new(Arc::new(MemoryStore::new())));
    let v = Vol::with(store.clone(), ChunkParams::default(), FsConfig::default());
    let data = noise(MIB as usize, 31);
    let f = v.file_with("f", &data);
    v.fs().sync_dir().unwrap();
    let durable: Vec<dedupfs::hash::ChunkId> = {
        let r = v.fs().meta().begin_read().unwrap();
        r.all_extents(f).unwrap().iter().map(|e| e.id).collect()
    };
    v.fs().unlink(ROOT, b"f").unwrap();
    // Delete f now (an unlink only queues it) without a durable point: its chunks' refcounts
    // fall to 0 in the open group, not durably.
    v.fs().reap_some().unwrap();
    // Commit the open metadata group: the write-back's snapshot then shows refcount 0.
    let _ = v.fs().meta();
    let (g, _fh) = v.create(ROOT, "g");
    let mut gdata = data.clone();
    gdata.extend_from_slice(&noise(MIB as usize, 32));
    v.write(g, 0, &gdata);
    let before = store.puts();
    store.fail_nth_put(24); // after f's ~16 chunks were stored again
    v.fs().fsync(g).expect_err("the failed put is reported");
    assert!(
        store.puts() - before >= 16,
        "f's chunks were stored again first"
    );
    for id in &durable {
        assert!(
            store.get(id).is_ok(),
            "chunk {id} of the durable f was removed after the failed write-back"
        );
    }
}

#[test]
fn failed_write_back_on_release_reports_and_keeps_the_data() {
    let store = Arc::new(FailingStore::new(Arc::new(MemoryStore::new())));
    let mut v = Vol::with(store.clone(), ChunkParams::default(), FsConfig::default());
    let (ino, fh) = v.create(ROOT, "f");
    let data = noise(700_000, 23);
    v.write(ino, 0, &data);
    store.fail_nth_put(1);
    assert_eq!(errno(v.fs().release(fh)), libc::EIO);
    assert_same(&v.read_all(ino), &data, "after failed release");
    v.remount(); // sync_all(true) retries the write-back
    assert_same(&v.read_all(ino), &data, "after remount");
}

#[test]
fn full_store_gives_enospc_and_recovers_when_space_returns() {
    let store = Arc::new(FailingStore::new(Arc::new(MemoryStore::new())));
    let mut v = Vol::with(store.clone(), ChunkParams::default(), small_cfg());
    let (ino, fh) = v.create(ROOT, "f");
    let data = noise(3 * MIB as usize, 24);
    store.set_full(true);
    // Buffered writes are accepted until the dirty limit forces a write-back, which fails.
    let mut written = 0usize;
    let err = loop {
        match v.fs().write(
            ino,
            written as u64,
            &data[written..written + 64 * KIB as usize],
        ) {
            Ok(n) => written += n,
            Err(e) => break e,
        }
        assert!(written < data.len(), "writes never hit the full store");
    };
    assert_eq!(err.errno(), libc::ENOSPC, "{err:?}");
    assert!(written as u64 <= MIB);
    assert_eq!(errno(v.fs().fsync(ino)), libc::ENOSPC);
    assert_same(&v.read_all(ino), &data[..written], "buffered data kept");
    store.set_full(false);
    v.write_in_pieces(ino, written as u64, &data[written..], 64 * KIB as usize);
    v.fs().fsync(ino).unwrap();
    assert_same(&v.read_all(ino), &data, "after space returned");
    v.fs().release(fh).unwrap();
    v.remount();
    assert_same(&v.read_all(ino), &data, "after remount");
}

/// Runs `f` on a thread and fails if it does not finish in `secs` (a hang is a failure, not a
/// stuck test run). The thread is left behind on timeout.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not finish within {secs} s (hang)"))
}

#[test]
fn write_larger_than_the_total_dirty_limit_does_not_hang() {
    // A write of more than the total dirty limit, to a file whose write-back keeps its
    // unfinished tail chunk dirty, must still complete.
    let v = Vol::with(
        Arc::new(MemoryStore::new()),
        ChunkParams::default(),
        FsConfig {
            file_dirty_limit: MIB as usize,
            total_dirty_limit: MIB as usize,
            ..small_cfg()
        },
    );
    let data = noise(4 * MIB as usize, 25);
    let v = within(20, "two 2 MiB writes with a 1 MiB dirty limit", move || {
        let (ino, fh) = v.create(ROOT, "f");
        v.write(ino, 0, &data[..2 * MIB as usize]);
        v.write(ino, 2 * MIB, &data[2 * MIB as usize..]);
        v.fs().release(fh).unwrap();
        assert_same(&v.read_all(ino), &data, "after release");
        v
    });
    drop(v);
}

#[test]
fn many_open_streaming_files_do_not_wedge_the_total_dirty_limit() {
    // Each open file being streamed keeps its last partial chunk dirty; when those tails alone
    // exceed the total dirty limit, a new write must still make progress.
    let v = Vol::with(
        Arc::new(MemoryStore::new()),
        ChunkParams::default(),
        FsConfig {
            file_dirty_limit: 4 * MIB as usize,
            total_dirty_limit: 2 * MIB as usize,
            ..small_cfg()
        },
    );
    within(
        30,
        "32 streamed files with a 2 MiB total dirty limit",
        move || {
            let mut files = Vec::new();
            for i in 0..32u64 {
                let (ino, fh) = v.create(ROOT, &format!("f{i}"));
                files.push((ino, fh, noise(600 * KIB as usize, 100 + i)));
            }
            for piece in 0..5usize {
                for (ino, _, data) in &files {
                    let r = piece * 120 * KIB as usize..(piece + 1) * 120 * KIB as usize;
                    v.write(*ino, r.start as u64, &data[r]);
                }
            }
            for (ino, fh, data) in &files {
                assert_same(&v.read_all(*ino), data, "streamed file");
                v.fs().release(*fh).unwrap();
            }
        },
    );
}

#[test]
fn read_only_fs_refuses_changes() {
    let mut v = Vol::mem();
    let ino = v.file_with("f", b"data");
    v.fs().sync_all(true).unwrap();
    drop(v.fs.take());
    v.cfg.read_only = true;
    let meta = MetaDb::open(&v.db_path()).unwrap();
    v.fs = Some(Fs::new(meta, v.store.clone(), v.cfg.clone()).unwrap());
    assert_eq!(v.read_all(ino), b"data");
    assert_eq!(errno(v.fs().write(ino, 0, b"x")), libc::EROFS);
    assert_eq!(errno(v.fs().open(ino, true)), libc::EROFS);
    assert_eq!(errno(v.fs().mkdir(WHO, ROOT, b"d", 0o755)), libc::EROFS);
    assert_eq!(errno(v.fs().unlink(ROOT, b"f")), libc::EROFS);
    let fh = v.fs().open(ino, false).unwrap();
    v.fs().release(fh).unwrap();
}

#[test]
fn rewrite_straddling_an_old_boundary_keeps_the_new_bytes() {
    // Same bytes around an old chunk boundary make re-chunking cut there again; the dirty
    // range goes on past it with new bytes, which must not be dropped by the resync.
    let v = Vol::mem();
    let mut want = noise(2 * MIB as usize, 26);
    let ino = v.file_with("f", &want);
    let extents = v
        .fs()
        .meta()
        .begin_read()
        .unwrap()
        .all_extents(ino)
        .unwrap();
    assert!(extents.len() >= 8);
    let fh = v.fs().open(ino, true).unwrap();
    // Boundaries far apart, so no other dirty range re-chunks the bytes after them.
    for e in [&extents[2], &extents[6]] {
        let c = e.offset as usize;
        // Unchanged bytes up to the boundary and a little past it (FastCDC's cut at c looks at
        // the byte at c), then new bytes.
        let mut patch = want[c - 3000..c + 8].to_vec();
        patch.extend_from_slice(&noise(2992, c as u64));
        v.write(ino, (c - 3000) as u64, &patch);
        want[c - 3000..c + 3000].copy_from_slice(&patch);
    }
    v.fs().fsync(ino).unwrap();
    assert_same(&v.read_all(ino), &want, "after fsync");
    v.fs().release(fh).unwrap();
    let mut v = v;
    v.remount();
    assert_same(&v.read_all(ino), &want, "after remount");
}

#[test]
fn concurrent_writers_deleters_and_syncs_keep_every_file_intact() {
    // Write-back runs with the state lock released; other threads write, read, fsync, delete
    // files that share chunks, and sync meanwhile. Every file must end up exactly as its
    // writer left it, and every chunk the metadata references must be in the store.
    let store: Arc<dyn ChunkStore> = Arc::new(MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("meta.redb");
    let params = ChunkParams::from_avg(4096).unwrap();
    let cfg = FsConfig {
        file_dirty_limit: 256 * KIB as usize,
        total_dirty_limit: 4 * MIB as usize,
        ..small_cfg()
    };
    let fs = Arc::new(
        Fs::new(
            MetaDb::create(&db, params, 0, 0).unwrap(),
            store.clone(),
            cfg.clone(),
        )
        .unwrap(),
    );
    fs.start_background();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let results = within(120, "concurrent workload", {
        let fs = fs.clone();
        let stop = stop.clone();
        move || {
            std::thread::scope(|s| {
                let syncer = s.spawn(|| {
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        fs.sync_all(false).unwrap();
                        std::thread::sleep(Duration::from_millis(2));
                    }
                });
                let workers: Vec<_> = (0..4u64)
                    .map(|t| {
                        let fs = &fs;
                        s.spawn(move || {
                            let mut rng = t * 7919 + 1;
                            let mut next = move |n: u64| {
                                rng ^= rng << 13;
                                rng ^= rng >> 7;
                                rng ^= rng << 17;
                                rng % n
                            };
                            let name = format!("w{t}");
                            let mut kept = Vec::new();
                            for round in 0..6 {
                                let fname = format!("{name}-{round}");
                                let (ino, _, fh) =
                                    fs.create(WHO, ROOT, fname.as_bytes(), 0o644).unwrap();
                                let mut model = vec![0u8; 0];
                                for _ in 0..60 {
                                    let off = next(600 * KIB);
                                    let len = 1 + next(64 * KIB) as usize;
                                    // Shared seeds: the same chunks appear in many files.
                                    let data = noise(len, next(4));
                                    fs.write(ino, off, &data).unwrap();
                                    let end = off as usize + len;
                                    if model.len() < end {
                                        model.resize(end, 0);
                                    }
                                    model[off as usize..end].copy_from_slice(&data);
                                    match next(10) {
                                        0 => fs.fsync(ino).unwrap(),
                                        1 => {
                                            let size = next(model.len() as u64 + 1);
                                            fs.truncate(ino, size).unwrap();
                                            model.resize(size as usize, 0);
                                        }
                                        2 => {
                                            let r = fs.read(ino, 0, model.len() as u32).unwrap();
                                            assert!(r == model, "{fname}: read while writing");
                                        }
                                        _ => {}
                                    }
                                }
                                fs.release(fh).unwrap();
                                if round % 2 == 1 {
                                    // Drop a file sharing chunks with files still being written.
                                    fs.unlink(ROOT, fname.as_bytes()).unwrap();
                                } else {
                                    kept.push((ino, model));
                                }
                            }
                            kept
                        })
                    })
                    .collect();
                let kept: Vec<_> = workers
                    .into_iter()
                    .flat_map(|w| w.join().unwrap())
                    .collect();
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
                syncer.join().unwrap();
                kept
            })
        }
    });
    fs.stop_background();
    fs.sync_all(true).unwrap();
    for (ino, model) in &results {
        let got = fs.read(*ino, 0, model.len() as u32 + 10).unwrap();
        assert_same(&got, model, "file after the concurrent workload");
    }
    let r = fs.meta().begin_read().unwrap();
    let mut missing = Vec::new();
    r.for_each_extent(&mut |ino, e| {
        if store.get(&e.id).is_err() {
            missing.push((ino, e.offset));
        }
    })
    .unwrap();
    assert!(
        missing.is_empty(),
        "extents name chunks missing from the store: {missing:?}"
    );
}

/// A store whose puts block while the gate is closed: holds a write-back in flight (with the
/// state lock released) so a test can look at the file meanwhile.
struct GateStore {
    inner: MemoryStore,
    closed: parking_lot::Mutex<bool>,
    changed: parking_lot::Condvar,
    waiting: std::sync::atomic::AtomicU64,
}

impl GateStore {
    fn new() -> GateStore {
        GateStore {
            inner: MemoryStore::new(),
            closed: parking_lot::Mutex::new(false),
            changed: parking_lot::Condvar::new(),
            waiting: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn set_closed(&self, closed: bool) {
        *self.closed.lock() = closed;
        self.changed.notify_all();
    }

    fn wait_for_blocked_put(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.waiting.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no put reached the store"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl ChunkStore for GateStore {
    fn put(&self, id: &dedupfs::hash::ChunkId, data: &[u8]) -> dedupfs::error::Result<()> {
        let mut closed = self.closed.lock();
        if *closed {
            self.waiting
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            while *closed {
                self.changed.wait(&mut closed);
            }
        }
        drop(closed);
        self.inner.put(id, data)
    }
    fn get(
        &self,
        id: &dedupfs::hash::ChunkId,
    ) -> dedupfs::error::Result<dedupfs::store::ChunkBytes> {
        self.inner.get(id)
    }
    fn remove(&self, id: &dedupfs::hash::ChunkId) -> dedupfs::error::Result<()> {
        self.inner.remove(id)
    }
    fn sync(&self) -> dedupfs::error::Result<()> {
        self.inner.sync()
    }
    fn for_each(&self, f: &mut dyn FnMut(dedupfs::hash::ChunkId)) -> dedupfs::error::Result<()> {
        self.inner.for_each(f)
    }
    fn space(&self) -> dedupfs::error::Result<dedupfs::store::SpaceUsage> {
        self.inner.space()
    }
}

/// A file with 100 KiB of data after a 1 MiB hole, its fsync stuck in the store on another
/// thread. Returns the fs, store, inode, data and the fsync thread.
type InFlight = (
    Arc<Fs>,
    Arc<GateStore>,
    Ino,
    Vec<u8>,
    std::thread::JoinHandle<dedupfs::error::Result<()>>,
);

fn file_with_write_back_in_flight() -> InFlight {
    let store = Arc::new(GateStore::new());
    let dir = tempfile::tempdir().unwrap();
    let meta = MetaDb::create(&dir.path().join("meta.redb"), ChunkParams::default(), 0, 0).unwrap();
    let fs = Arc::new(Fs::new(meta, store.clone(), FsConfig::default()).unwrap());
    let (ino, _, _fh) = fs.create(WHO, ROOT, b"f", 0o644).unwrap();
    let data = noise(100 * KIB as usize, 27);
    fs.write(ino, MIB, &data).unwrap();
    store.set_closed(true);
    let t = {
        let fs = fs.clone();
        std::thread::spawn(move || {
            let _keep = dir;
            fs.fsync(ino)
        })
    };
    store.wait_for_blocked_put();
    (fs, store, ino, data, t)
}

#[test]
fn reads_see_data_whose_write_back_is_in_flight() {
    let (fs, store, ino, data, t) = file_with_write_back_in_flight();
    let got = fs.read(ino, MIB, data.len() as u32);
    store.set_closed(false);
    t.join().unwrap().unwrap();
    assert_same(&got.unwrap(), &data, "read during write-back");
    assert_same(
        &fs.read(ino, MIB, data.len() as u32).unwrap(),
        &data,
        "after",
    );
}

#[test]
fn seek_data_and_hole_answer_in_4k_blocks_over_dirty_and_committed_data() {
    let v = Vol::mem();
    let (ino, fh) = v.create(ROOT, "blocks");
    // One byte at 2 (fstests' seek_sanity_test sizes its probes by what SEEK_DATA says here).
    v.write(ino, 2, b"a");
    for state in ["dirty", "committed"] {
        assert_eq!(v.fs().seek(ino, 0, SeekWhence::Data).unwrap(), 0, "{state}");
        assert_eq!(v.fs().seek(ino, 1, SeekWhence::Data).unwrap(), 1, "{state}");
        assert_eq!(
            v.fs().seek(ino, 0, SeekWhence::Hole).unwrap(),
            3,
            "{state}: EOF"
        );
        v.fs().fsync(ino).unwrap();
    }
    // Data in blocks 1 (one byte), 3 (a run into block 4) and 6 (a dirty byte); size 7 blocks.
    const B: u64 = 4096;
    v.fs().truncate(ino, 0).unwrap();
    v.write(ino, B + 100, b"x");
    v.write(ino, 3 * B + 4000, &noise(200, 1));
    v.fs().fsync(ino).unwrap();
    v.write(ino, 6 * B + 7, b"y");
    v.fs().truncate(ino, 7 * B).unwrap();
    let data = |p| v.fs().seek(ino, p, SeekWhence::Data).map_err(|e| e.errno());
    let hole = |p| v.fs().seek(ino, p, SeekWhence::Hole).map_err(|e| e.errno());
    assert_eq!(data(0), Ok(B), "the data block's start, not the byte");
    assert_eq!(
        data(B + 101),
        Ok(B + 101),
        "inside a data block: the offset"
    );
    assert_eq!(data(2 * B), Ok(3 * B));
    assert_eq!(data(5 * B - 1), Ok(5 * B - 1));
    assert_eq!(data(5 * B), Ok(6 * B), "a dirty byte makes its block data");
    assert_eq!(data(7 * B - 1), Ok(7 * B - 1));
    assert_eq!(hole(0), Ok(0));
    assert_eq!(hole(B), Ok(2 * B), "the rest of a data block is not a hole");
    assert_eq!(hole(B + 101), Ok(2 * B));
    assert_eq!(
        hole(2 * B + 5),
        Ok(2 * B + 5),
        "inside a hole block: the offset"
    );
    assert_eq!(hole(3 * B), Ok(5 * B), "a run across a block edge");
    assert_eq!(hole(6 * B), Ok(7 * B), "EOF ends the last hole");
    assert_eq!(data(7 * B), Err(libc::ENXIO));
    assert_eq!(hole(7 * B), Err(libc::ENXIO));
    v.fs().release(fh).unwrap();
}

#[test]
fn seek_hole_follows_a_long_run_of_extents_in_batches() {
    // Over a thousand 8 KiB chunks back to back (several batches), a hole, more data.
    let v = Vol::with(
        Arc::new(MemoryStore::new()),
        ChunkParams::from_avg(8192).unwrap(),
        FsConfig::default(),
    );
    let data = noise(8 * MIB as usize, 3);
    let ino = v.file_with("run", &data);
    let fh = v.fs().open(ino, true).unwrap();
    v.write(ino, 12 * MIB, b"tail");
    v.fs().fsync(ino).unwrap();
    assert_eq!(
        v.fs().seek(ino, 0, SeekWhence::Hole).unwrap(),
        8 * MIB,
        "the run ends where the data does"
    );
    assert_eq!(
        v.fs().seek(ino, 8 * MIB, SeekWhence::Data).unwrap(),
        12 * MIB
    );
    assert_eq!(
        v.fs().seek(ino, 12 * MIB, SeekWhence::Hole).unwrap(),
        12 * MIB + 4,
        "EOF"
    );
    v.fs().release(fh).unwrap();
}

#[test]
fn seek_data_and_hole_see_data_whose_write_back_is_in_flight() {
    let (fs, store, ino, data, t) = file_with_write_back_in_flight();
    let data_at = fs.seek(ino, 0, SeekWhence::Data).map_err(|e| e.errno());
    let hole_at = fs.seek(ino, MIB, SeekWhence::Hole).map_err(|e| e.errno());
    store.set_closed(false);
    t.join().unwrap().unwrap();
    let end = MIB + data.len() as u64;
    assert_eq!(
        data_at,
        Ok(MIB),
        "SEEK_DATA during write-back skipped the data"
    );
    assert_eq!(
        hole_at,
        Ok(end),
        "SEEK_HOLE during write-back reported a hole over data"
    );
    assert_eq!(fs.seek(ino, 0, SeekWhence::Data).unwrap(), MIB, "after");
}

#[test]
fn allocated_counts_data_whose_write_back_is_in_flight() {
    let (fs, store, ino, data, t) = file_with_write_back_in_flight();
    let during = fs.allocated(ino);
    store.set_closed(false);
    t.join().unwrap().unwrap();
    assert!(
        during.unwrap() >= data.len() as u64,
        "st_blocks dropped to nothing while the data was being written back"
    );
    assert_eq!(fs.allocated(ino).unwrap(), data.len() as u64, "after");
}

/// Another file's failed durable commit takes the database back to its last durable point,
/// losing a write-back of `f` committed since (not durable yet). `f`'s next fsync must say
/// so (EIO, once, as Linux reports a write-back error), never return success over lost data.
#[test]
fn writes_a_failed_commit_lost_are_reported_by_the_next_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let meta = MetaDb::create(&dir.path().join("meta.redb"), ChunkParams::default(), 0, 0).unwrap();
    let fs = Fs::new(meta, Arc::new(MemoryStore::new()), FsConfig::default()).unwrap();
    let (f, _, _f_fh) = fs.create(WHO, ROOT, b"f", 0o644).unwrap();
    let (g, _, _g_fh) = fs.create(WHO, ROOT, b"g", 0o644).unwrap();
    let a = noise(50_000, 40);
    fs.write(f, 0, &a).unwrap();
    fs.fsync(f).unwrap();
    // B is committed, not durable (a truncate to the same size writes back first).
    let b = noise(20_000, 41);
    fs.write(f, a.len() as u64, &b).unwrap();
    fs.truncate(f, (a.len() + b.len()) as u64).unwrap();
    fs.meta().fail_writes(Some(libc::ENOSPC));
    assert_eq!(errno(fs.fsync(g)), libc::ENOSPC);
    fs.meta().fail_writes(None);
    assert_eq!(
        errno(fs.fsync(f)),
        libc::EIO,
        "the fsync of a file whose committed write-back a failed commit lost"
    );
    fs.fsync(f).expect("the loss is reported once");
    assert_eq!(fs.getattr(f).unwrap().size, a.len() as u64);
    assert_same(&fs.read(f, 0, 100_000).unwrap(), &a, "f after the loss");
    // A file with nothing lost does not get the error.
    fs.fsync(g).unwrap();
}

fn extent_lens(fs: &Fs, ino: Ino) -> Vec<u32> {
    let r = fs.meta().begin_read().unwrap();
    r.all_extents(ino).unwrap().iter().map(|e| e.len).collect()
}

#[test]
fn streamed_file_is_cut_like_a_single_write() {
    // Chunk boundaries must not depend on how the data arrived: in 4 KiB pieces under small
    // dirty limits (many non-final write-backs that keep their tail), with the background
    // writer, or in one piece. Otherwise identical files written differently stop sharing.
    let data = noise(5 * MIB as usize + 4321, 28);
    let one = Vol::mem();
    let whole = one.file_with("whole", &data);
    let want = extent_lens(one.fs(), whole);
    let small = Vol::with(
        Arc::new(MemoryStore::new()),
        ChunkParams::default(),
        small_cfg(),
    );
    let (ino, fh) = small.create(ROOT, "streamed");
    small.write_in_pieces(ino, 0, &data, 4096);
    small.fs().sync_all(false).unwrap(); // the periodic flusher, mid-stream
    small.fs().release(fh).unwrap();
    assert_eq!(
        extent_lens(small.fs(), ino),
        want,
        "4 KiB pieces, small dirty limits"
    );
    let bg = Arc::new(
        Fs::new(
            MetaDb::create(
                &small.dir.path().join("bg.redb"),
                ChunkParams::default(),
                0,
                0,
            )
            .unwrap(),
            Arc::new(MemoryStore::new()),
            small_cfg(),
        )
        .unwrap(),
    );
    bg.start_background();
    let (ino, _, fh) = bg.create(WHO, ROOT, b"bg", 0o644).unwrap();
    for (i, c) in data.chunks(128 * KIB as usize).enumerate() {
        bg.write(ino, i as u64 * 128 * KIB, c).unwrap();
    }
    bg.release(fh).unwrap();
    // With a background writer, close queues the write-back; a sync waits for it.
    bg.sync_all(true).unwrap();
    bg.stop_background();
    assert_eq!(extent_lens(&bg, ino), want, "background writer");
}

#[test]
fn a_stream_over_many_dirty_segments_is_cut_like_one_buffer() {
    // Write-back cuts long dirty ranges in place and gathers only the seams between them (and
    // committed data around them) into blocks: the boundaries must still be those of the data
    // cut as one buffer, whatever the write size, with a non-final write-back mid-stream (its
    // tail stays dirty, the rest is committed and re-cut from there) and an overwrite across a
    // seam after it.
    let data = noise(13 * MIB as usize + 4321, 31);
    let want: Vec<u32> = Chunker::new(ChunkParams::default())
        .cut_all(&data)
        .iter()
        .map(|&l| l as u32)
        .collect();
    for piece in [
        MIB as usize,
        3 * MIB as usize + 17,
        128 * KIB as usize,
        4097,
    ] {
        let v = Vol::mem();
        let (ino, fh) = v.create(ROOT, "f");
        let half = 6 * MIB as usize + 999;
        v.write_in_pieces(ino, 0, &data[..half], piece);
        v.fs().sync_all(false).unwrap();
        v.write_in_pieces(ino, half as u64, &data[half..], piece);
        // Rewrites the same bytes across the 4 MiB seam of the second write's buffer.
        let seam = half + 4 * MIB as usize - 100;
        v.write(ino, seam as u64, &data[seam..seam + 300_000]);
        v.fs().release(fh).unwrap();
        assert_eq!(extent_lens(v.fs(), ino), want, "pieces of {piece}");
        assert!(v.read_all(ino) == data, "pieces of {piece}: other bytes");
    }
}

#[test]
fn append_after_a_flush_is_cut_like_a_single_write() {
    // close() flushes and cuts the file's last piece as final; appending later (reopen with
    // O_APPEND, a log file) must re-cut that piece so the file ends up with the boundaries of
    // one continuous write.
    let mut differ = Vec::new();
    for (k, split) in [10_000usize, 100_000, 300_000, 555_555, 1_000_000, 1_234_567]
        .into_iter()
        .enumerate()
    {
        let data = noise(2 * MIB as usize, 40 + k as u64);
        let v = Vol::mem();
        let whole = v.file_with("whole", &data);
        let (ino, fh) = v.create(ROOT, "appended");
        v.write(ino, 0, &data[..split]);
        v.fs().flush(ino).unwrap();
        v.write(ino, split as u64, &data[split..]);
        v.fs().release(fh).unwrap();
        assert_same(&v.read_all(ino), &data, "appended file");
        if extent_lens(v.fs(), ino) != extent_lens(v.fs(), whole) {
            differ.push(split);
        }
    }
    assert!(
        differ.is_empty(),
        "boundaries differ from a single write when split at {differ:?}"
    );
}

// ---------------------------------------------------------------- deletion off the request path

#[test]
fn an_inode_opened_after_its_last_unlink_keeps_its_bytes_until_released() {
    // The kernel may send OPEN for an inode whose name was looked up before another process
    // unlinked it (an open without O_CREAT does not lock the directory). The unlink only
    // queues the closed inode for deletion: the open must not find it emptied by the reaper.
    let v = Vol::mem();
    let data = noise(300 * KIB as usize, 77);
    let f = v.file_with("f", &data);
    v.fs().unlink(ROOT, b"f").unwrap();
    let fh = v.fs().open(f, false).unwrap();
    v.fs().reap_some().unwrap();
    v.fs().sync_dir().unwrap(); // a durable point reaps everything queued, too
    assert_same(&v.read_all(f), &data, "read after the reaper ran");
    v.fs().release(fh).unwrap();
    v.fs().sync_dir().unwrap();
    assert_eq!(v.nlink(f), 0);
    v.fs().forget(f);
    assert_eq!(errno(v.fs().getattr(f)), libc::ENOENT);
    assert_eq!(v.physical(), 0, "its chunks are freed once released");
}

#[test]
fn an_unlinked_inode_is_shown_with_no_links_until_the_kernel_forgets_it() {
    // An O_PATH descriptor or an open directory holds an inode without a handle the
    // daemon knows of: fstat must still answer after the last name went (generic/035).
    let v = Vol::mem();
    let f = v.file_with("f", b"12345");
    let d = v.fs().mkdir(WHO, ROOT, b"d", 0o755).unwrap().0;
    v.fs().unlink(ROOT, b"f").unwrap();
    v.fs().rmdir(ROOT, b"d").unwrap();
    v.fs().sync_dir().unwrap(); // reaped: the rows are gone
    let (fa, da) = (v.fs().getattr(f).unwrap(), v.fs().getattr(d).unwrap());
    assert_eq!((fa.nlink, fa.size, fa.kind), (0, 5, Kind::File));
    assert_eq!((da.nlink, da.kind), (0, Kind::Dir));
    assert_eq!(v.physical(), 0, "its data is freed all the same");
    // A file handle's lookup of "." finds live inodes of any kind, never a deleted one.
    assert_eq!(errno(v.fs().lookup(f, b".")), libc::ENOENT);
    assert_eq!(errno(v.fs().lookup(d, b".")), libc::ENOENT);
    let g = v.file_with("g", b"live");
    assert_eq!(v.fs().lookup(g, b".").unwrap().1.size, 4);
    // Forgetting a linked inode (the kernel evicted it) changes nothing.
    v.fs().forget(ROOT);
    assert_eq!(v.fs().getattr(ROOT).unwrap().kind, Kind::Dir);
    v.fs().forget(f);
    assert_eq!(errno(v.fs().getattr(f)), libc::ENOENT);
    assert_eq!(v.fs().getattr(d).unwrap().nlink, 0);
    v.fs().forget(d);
    assert_eq!(errno(v.fs().getattr(d)), libc::ENOENT);
}

#[test]
fn unlinked_files_are_gone_at_the_next_durable_point() {
    let v = Vol::mem();
    let f = v.file_with("f", &noise(200 * KIB as usize, 78));
    assert!(v.physical() > 0);
    v.fs().unlink(ROOT, b"f").unwrap();
    // Queued, not deleted yet: nothing reaches it by name, and by number only its last
    // attributes (link count 0) until the kernel forgets it.
    assert_eq!(errno(v.fs().lookup(ROOT, b"f")), libc::ENOENT);
    assert_eq!(v.nlink(f), 0);
    v.fs().forget(f);
    assert_eq!(errno(v.fs().getattr(f)), libc::ENOENT);
    v.fs().sync_dir().unwrap();
    assert_eq!(v.physical(), 0);
    assert!(
        v.fs()
            .meta()
            .begin_read()
            .unwrap()
            .inode(f)
            .unwrap()
            .is_none()
    );
}

/// A directory with `n` files named by `name(i)` (in name order).
fn big_dir(n: usize) -> (Vol, Ino, fn(usize) -> String) {
    fn name(i: usize) -> String {
        format!("f{i:07}")
    }
    let v = Vol::mem();
    let d = v.mkdir(ROOT, "big");
    for i in 0..n {
        v.fs()
            .mknod(WHO, d, name(i).as_bytes(), libc::S_IFREG | 0o644, 0)
            .unwrap();
    }
    (v, d, name)
}

/// Lists handle `fh` from `from` as the kernel does: `per_reply` entries per call, each call
/// resumed from the last position given, until a call gives nothing; at most `limit` entries.
fn list_raw(
    v: &Vol,
    fh: u64,
    from: u64,
    plus: bool,
    per_reply: usize,
    limit: usize,
) -> Vec<(u64, Vec<u8>)> {
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut off = from;
    while out.len() < limit {
        let mut got: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut take = |next: u64, e: &dedupfs::meta::DirEntry| {
            got.push((next, e.name.clone()));
            got.len() == per_reply
        };
        if plus {
            v.fs()
                .readdir_plus(fh, off, &mut |next, e, _| take(next, e))
                .unwrap();
        } else {
            v.fs().readdir(fh, off, &mut take).unwrap();
        }
        let Some(&(last, _)) = got.last() else { break };
        off = last;
        out.extend(got);
    }
    out.truncate(limit);
    out
}

/// [`list_raw`] with names as strings.
fn list_from(
    v: &Vol,
    fh: u64,
    from: u64,
    plus: bool,
    per_reply: usize,
    limit: usize,
) -> Vec<(u64, String)> {
    list_raw(v, fh, from, plus, per_reply, limit)
        .into_iter()
        .map(|(p, n)| (p, String::from_utf8(n).unwrap()))
        .collect()
}

/// A directory larger than what a handle's listing keeps in memory (it is sorted in a scratch
/// file) is listed whole, each name once, with offsets that only go up, with readdir and
/// readdirplus resumed as the kernel resumes them; a seekdir back finds the same entries; and
/// names removed after the listing was read do not end it early.
#[test]
fn a_directory_larger_than_the_in_memory_listing_is_listed_whole_and_once() {
    use dedupfs::fs::LISTING_IN_MEMORY as MEM;
    let n = 2 * MEM + 10;
    let (v, d, name) = big_dir(n);
    let mut want: Vec<String> = vec![".".into(), "..".into()];
    want.extend((0..n).map(name));
    for plus in [false, true] {
        let fh = v.fs().opendir(d).unwrap();
        let got = list_from(&v, fh, 0, plus, 1000, usize::MAX);
        v.fs().releasedir(fh);
        let mut names: Vec<&String> = got.iter().map(|(_, n)| n).collect();
        assert_eq!(names[..2], [".", ".."], "plus {plus}");
        names.sort();
        let mut sorted: Vec<&String> = want.iter().collect();
        sorted.sort();
        assert_eq!(names, sorted, "plus {plus}");
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "offsets go up, plus {plus}"
        );
    }
    let fh = v.fs().opendir(d).unwrap();
    let first = list_from(&v, fh, 0, false, 4096, 2 * MEM + 5);
    assert_eq!(first.len(), 2 * MEM + 5);
    let back = list_from(&v, fh, first[999].0, false, 3, 3);
    assert_eq!(
        back,
        first[1000..1003].to_vec(),
        "seekdir back to the start"
    );
    // Rewind, take 10, then remove the names that come next, past the in-memory part's
    // worth: the next call goes on with the first name left instead of ending the listing.
    let head = list_from(&v, fh, 0, true, 10, 10);
    assert_eq!(head, first[..10].to_vec());
    for (_, gone) in &first[10..MEM + 100] {
        v.fs().unlink(d, gone.as_bytes()).unwrap();
    }
    let rest = list_from(&v, fh, head[9].0, true, 5, 5);
    assert_eq!(
        rest.first(),
        Some(&first[MEM + 100]),
        "after a run of removed names"
    );
    v.fs().releasedir(fh);
}

/// telldir/seekdir: an offset keeps leading to the same entries after names were removed
/// (whether it is early in the listing or far into it). And a handle that never read (the
/// kernel's listing cache served the start, then went stale) resumes from an offset of an
/// older listing with exactly the names after it that are still there.
#[test]
fn seekdir_back_after_removals_finds_the_same_entries() {
    use dedupfs::fs::LISTING_IN_MEMORY as MEM;
    let (v, d, name) = big_dir(2 * MEM + 1000);
    let fh = v.fs().opendir(d).unwrap();
    let all = list_from(&v, fh, 0, false, 4096, usize::MAX);
    assert_eq!(all.len(), 2 * MEM + 1002);
    let mut names: Vec<&String> = all[2..].iter().map(|(_, n)| n).collect();
    names.sort();
    assert!(names.iter().enumerate().all(|(i, n)| **n == name(i)));
    for i in 0..MEM + 2000 {
        v.fs().unlink(d, name(i).as_bytes()).unwrap();
    }
    let left = |n: &String| n.as_str() >= name(MEM + 2000).as_str();
    for pos in [1000, MEM + 1500, 2 * MEM - 3] {
        let back = list_from(&v, fh, all[pos - 1].0, false, 3, 3);
        assert_eq!(back, all[pos..pos + 3].to_vec(), "seekdir to {pos}");
        let fresh = v.fs().opendir(d).unwrap();
        let resumed = list_from(&v, fresh, all[pos - 1].0, false, 4096, usize::MAX);
        v.fs().releasedir(fresh);
        let want: Vec<(u64, String)> = all[pos..]
            .iter()
            .filter(|(_, n)| left(n))
            .cloned()
            .collect();
        assert_eq!(resumed, want, "a new handle resuming after {pos}");
    }
    v.fs().releasedir(fh);
}

/// The kernel resumes inside its last reply when the reader's buffer took only part of it
/// (a small getdents buffer): after removals, the entries after the one taken come next.
#[test]
fn a_resume_inside_the_last_reply_after_removals_goes_on_where_it_was() {
    use dedupfs::fs::LISTING_IN_MEMORY as MEM;
    let (v, d, _) = big_dir(MEM + 1000);
    for plus in [false, true] {
        let fh = v.fs().opendir(d).unwrap();
        let a = list_from(&v, fh, 0, plus, 4096, MEM);
        assert_eq!(a.len(), MEM);
        // One reply after those; the reader takes its first entry.
        let straddle = list_from(&v, fh, a[MEM - 1].0, plus, 10, 10);
        assert_eq!(straddle.len(), 10);
        // Names before it go.
        for (_, gone) in &a[2..502] {
            v.fs().unlink(d, gone.as_bytes()).unwrap();
        }
        let next = list_from(&v, fh, straddle[0].0, plus, 3, 3);
        v.fs().releasedir(fh);
        assert_eq!(next, straddle[1..4].to_vec(), "plus {plus}");
    }
}

/// Names of every byte value and length (up to NAME_MAX) survive the scratch file.
#[test]
fn odd_and_long_names_are_listed_exactly() {
    use dedupfs::fs::{LISTING_IN_MEMORY as MEM, NAME_MAX};
    let v = Vol::mem();
    let d = v.mkdir(ROOT, "odd");
    let mut names: Vec<Vec<u8>> = Vec::new();
    let mut i = 0u32;
    while names.len() < MEM + 5000 {
        let base: Vec<u8> = i.to_be_bytes().iter().map(|x| *x.max(&1)).collect();
        for suf in [&b""[..], b"\x01", b"\xff", b"a", b"\xff\xff"] {
            let mut n = vec![b'p'];
            n.extend(&base);
            n.extend(suf);
            n.resize(1 + (i as usize * 7) % NAME_MAX, b'z');
            if !n.contains(&b'/') && !n.contains(&0) {
                names.push(n);
            }
        }
        i += 1;
    }
    names.sort();
    names.dedup();
    for n in &names {
        v.fs().mknod(WHO, d, n, libc::S_IFREG | 0o644, 0).unwrap();
    }
    for plus in [false, true] {
        let fh = v.fs().opendir(d).unwrap();
        let got: Vec<Vec<u8>> = list_raw(&v, fh, 0, plus, 777, usize::MAX)
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        v.fs().releasedir(fh);
        assert_eq!(&got[..2], &[b".".to_vec(), b"..".to_vec()]);
        let mut sorted = got[2..].to_vec();
        sorted.sort();
        assert_eq!(sorted, names, "plus {plus}");
    }
}

#[test]
fn readdirplus_leaves_out_names_changed_since_the_listing_was_read() {
    // The kernel turns each READDIRPLUS entry into a cached name: an entry of the handle's
    // listing whose name was removed or now names another inode must not come back.
    let v = Vol::mem();
    let a = v.file_with("a", b"A");
    v.file_with("b", b"B");
    let c = v.file_with("c", b"C");
    let fh = v.fs().opendir(ROOT).unwrap();
    let mut first = 0;
    v.fs()
        .readdir_plus(fh, 0, &mut |next, _, _| {
            first = next;
            true // the reply buffer is full after one entry
        })
        .unwrap();
    assert_eq!(first, 1, "one entry (\".\") taken");
    v.fs().unlink(ROOT, b"b").unwrap();
    v.fs()
        .rename(ROOT, b"a", ROOT, b"c", RenameFlags::default())
        .unwrap();
    let mut rest = Vec::new();
    v.fs()
        .readdir_plus(fh, first, &mut |_, e, attr| {
            rest.push((String::from_utf8(e.name.clone()).unwrap(), e.ino, attr.size));
            false
        })
        .unwrap();
    v.fs().releasedir(fh);
    let names: Vec<&str> = rest.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [".."],
        "a and b are gone, c names another inode now: {rest:?}"
    );
    // The same names listed afresh: c is the renamed a.
    assert_eq!(v.names(ROOT), ["c"]);
    assert_eq!(v.lookup(ROOT, "c").unwrap(), a);
    assert_ne!(a, c);
}

/// A pack store (in a new directory) whose every pack holds live records and is seven eighths
/// dead, past the background compaction step's thresholds; with the chunks kept.
#[allow(clippy::type_complexity)]
fn mostly_dead_packs() -> (
    tempfile::TempDir,
    Arc<dedupfs::store::PackStore>,
    Vec<(dedupfs::hash::ChunkId, Vec<u8>)>,
) {
    let packs = tempfile::tempdir().unwrap();
    let store = Arc::new(dedupfs::store::PackStore::open(packs.path()).unwrap());
    store.set_codec(dedupfs::store::codec::Codec::None);
    // 96 chunks of 1 MiB, one in eight kept: every pack holds live records and is seven
    // eighths dead, past the background step's threshold (64 MiB dead, a quarter of the
    // packs) and short of the rule that deletes packs with nothing live.
    let mut kept = Vec::new();
    let mut dead = Vec::new();
    for i in 0..96u64 {
        let data = noise(MIB as usize, 100 + i);
        let id = dedupfs::hash::ChunkId::of(&data);
        store.put(&id, &data).unwrap();
        if i % 8 == 0 {
            kept.push((id, data));
        } else {
            dead.push(id);
        }
    }
    store.sync().unwrap();
    for id in &dead {
        store.remove(id).unwrap();
    }
    store.sync().unwrap();
    assert!(
        store.usage().unwrap().dead_bytes >= 64 * MIB,
        "setup: {:?}",
        store.usage().unwrap()
    );
    (packs, store, kept)
}

#[test]
fn background_compaction_changes_nothing_on_a_read_only_or_fenced_filesystem() {
    let (packs, store, kept) = mostly_dead_packs();
    let pack_files = || -> Vec<(String, u64)> {
        let mut f: Vec<(String, u64)> = std::fs::read_dir(packs.path().join("packs"))
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                let len = e.metadata().unwrap().len();
                (e.file_name().to_string_lossy().into_owned(), len)
            })
            .collect();
        f.sort();
        f
    };
    let before = pack_files();

    let cfg = FsConfig {
        read_only: true,
        ..FsConfig::default()
    };
    let mut v = Vol::with(store.clone(), ChunkParams::default(), cfg);
    assert_eq!(v.fs().compact_step().unwrap(), 0, "read-only");
    v.cfg.read_only = false;
    v.remount();
    v.fs().fence("test: another writer took the volume");
    assert_eq!(v.fs().compact_step().unwrap(), 0, "fenced");
    assert_eq!(pack_files(), before, "the packs changed");

    v.remount();
    assert!(
        v.fs().compact_step().unwrap() > 0,
        "a writable step compacts"
    );
    assert_ne!(pack_files(), before);
    for (id, data) in &kept {
        assert_eq!(&*store.get(id).unwrap(), &data[..]);
    }
}

/// Compaction changes only the pack index, durably, outside any durable point. The next
/// durable point must still count as a change (move the durable epoch): a remote volume
/// publishes a new generation only then, and otherwise its head would keep naming the old
/// packs once the uploader had sent the new ones.
#[test]
fn a_background_compaction_step_makes_the_next_durable_point_a_change() {
    let (_packs, store, kept) = mostly_dead_packs();
    let v = Vol::with(store.clone(), ChunkParams::default(), FsConfig::default());
    v.fs().sync_fs().unwrap();
    let before = v.fs().durable_epoch();
    v.fs().sync_fs().unwrap();
    assert_eq!(v.fs().durable_epoch(), before, "nothing changed");
    assert!(v.fs().compact_step().unwrap() > 0, "the step compacts");
    v.fs().sync_fs().unwrap();
    assert!(
        v.fs().durable_epoch() > before,
        "the durable point after a compaction step says nothing changed"
    );
    let after = v.fs().durable_epoch();
    v.fs().sync_fs().unwrap();
    assert_eq!(v.fs().durable_epoch(), after, "counted once");
    // Counted once too when an open metadata group makes the durable point a change anyway.
    let (_packs2, store2, _) = mostly_dead_packs();
    let v2 = Vol::with(store2, ChunkParams::default(), FsConfig::default());
    v2.fs().sync_fs().unwrap();
    assert!(v2.fs().compact_step().unwrap() > 0, "the step compacts");
    v2.fs().mkdir(WHO, ROOT, b"d", 0o755).unwrap();
    v2.fs().sync_fs().unwrap();
    let once = v2.fs().durable_epoch();
    v2.fs().sync_fs().unwrap();
    assert_eq!(
        v2.fs().durable_epoch(),
        once,
        "the flag outlived the durable point"
    );
    for (id, data) in &kept {
        assert_eq!(&*store.get(id).unwrap(), &data[..]);
    }
}

/// Reads `dir` without a handle from `at`, taking at most `max` entries (the reply buffer is
/// full at the next); returns (name, cookie) pairs.
fn handleless_piece(v: &Vol, dir: Ino, at: u64, max: usize) -> Vec<(String, u64)> {
    let mut got = Vec::new();
    v.fs()
        .readdir_at(dir, at, &mut |next, e| {
            if got.len() == max {
                return true;
            }
            got.push((String::from_utf8(e.name.clone()).unwrap(), next));
            false
        })
        .unwrap();
    got
}

/// Handle-less directory reads (the kernel's opens once OPENDIR was answered ENOSYS): a
/// listing read in pieces, each continuing from the last cookie, returns every name present
/// throughout exactly once although names come and go between the pieces (as with handles:
/// the continuation may be served by a newer listing), and a read from 0 shows the directory
/// as it is now.
#[test]
fn handleless_reads_continue_from_cookies_across_changes() {
    let v = Vol::mem();
    v.fs().hold_listings();
    let d = v.mkdir(ROOT, "d");
    for i in 0..300 {
        v.create(d, &format!("f{i:03}"));
    }
    let mut seen: Vec<String> = Vec::new();
    let mut at = 0;
    for round in 0.. {
        let piece = handleless_piece(&v, d, at, 40);
        if piece.is_empty() {
            break;
        }
        at = piece.last().unwrap().1;
        seen.extend(piece.into_iter().map(|(n, _)| n));
        // Between pieces: ten names go, ten new ones come; and another reader starts over,
        // so that the next piece continues in a newer listing (read in part: the one shared
        // for continuations) or in one built for it (read to the end: none is kept).
        for j in 0..10 {
            let k = round * 10 + j;
            if k < 100 {
                v.fs().unlink(d, format!("f{k:03}").as_bytes()).unwrap();
            }
            v.create(d, &format!("n{round}-{j}"));
        }
        let other = if round % 2 == 0 { 5 } else { usize::MAX };
        handleless_piece(&v, d, 0, other);
    }
    let mut count = std::collections::HashMap::new();
    for n in &seen {
        *count.entry(n.as_str()).or_insert(0) += 1;
    }
    for (n, c) in &count {
        assert_eq!(*c, 1, "{n} listed {c} times");
    }
    for i in 100..300 {
        let n = format!("f{i:03}");
        assert!(
            count.contains_key(n.as_str()),
            "{n}, present throughout, was skipped"
        );
    }
    for n in [".", ".."] {
        assert!(count.contains_key(n), "{n} missing");
    }
    // From 0: exactly what is there now.
    let mut now: Vec<String> = handleless_piece(&v, d, 0, usize::MAX)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n != "." && n != "..")
        .collect();
    now.sort();
    assert_eq!(now, v.names(d));
}

/// With handle-less opens the kernel keeps every listing it reads, and drops it itself when
/// one of its requests changes the directory. The daemon must tell it (the notifier thread
/// drains `stale_listings`) of the other changes, and of those only: the `..` of a directory
/// moved to another parent, and everything a failed commit dropped, for each directory read
/// since it was last told.
#[test]
fn the_kernel_is_told_of_listings_that_change_behind_its_back_and_only_of_those() {
    let v = Vol::mem();
    let fs = v.fs();
    let stale = || {
        let (mut dirs, upto) = fs.stale_listings(Duration::ZERO).unwrap();
        fs.listings_invalidated(upto);
        dirs.sort();
        dirs
    };
    let list = |dir| drop(handleless_piece(&v, dir, 0, usize::MAX));
    let (a, b) = (v.mkdir(ROOT, "a"), v.mkdir(ROOT, "b"));
    let x = v.mkdir(a, "x");
    // Before `hold_listings` (directories opened with handles) nothing is tracked.
    list(x);
    fs.rename(a, b"x", b, b"x", RenameFlags::default()).unwrap();
    assert_eq!(stale(), Vec::<Ino>::new(), "told before hold_listings");

    fs.hold_listings();
    for dir in [a, b, x] {
        list(dir);
    }
    // Changes made through the kernel: it drops its own copy.
    v.create(b, "new");
    fs.unlink(b, b"new").unwrap();
    fs.rename(b, b"x", b, b"x2", RenameFlags::default())
        .unwrap();
    assert_eq!(
        stale(),
        Vec::<Ino>::new(),
        "told of changes the kernel made"
    );
    // x moves to another parent: its `..` changed.
    fs.rename(b, b"x2", a, b"x", RenameFlags::default())
        .unwrap();
    assert_eq!(stale(), vec![x], "x moved from b to a");
    // Told once: x was not read since.
    fs.rename(a, b"x", b, b"x", RenameFlags::default()).unwrap();
    assert_eq!(
        stale(),
        Vec::<Ino>::new(),
        "x, not read since it was told, told again"
    );

    // A failed commit: every directory read since it was last told.
    list(x);
    let (g, _) = v.create(ROOT, "g");
    v.write(g, 0, b"data");
    fs.meta().fail_writes(Some(libc::ENOSPC));
    assert_eq!(errno(fs.fsync(g)), libc::ENOSPC);
    fs.meta().fail_writes(None);
    let mut want = vec![a, b, x];
    want.sort();
    assert_eq!(stale(), want, "after a failed commit");
}

/// A failed commit takes the database back to its last durable point: a handle-less reader
/// continuing a listing afterwards must not be served the names it dropped (from a listing
/// shared before the failure), and gets every durable name once.
#[test]
fn a_handleless_reader_continuing_after_a_failed_commit_sees_no_dropped_name() {
    let v = Vol::mem();
    let fs = v.fs();
    fs.hold_listings();
    let d = v.mkdir(ROOT, "d");
    for i in 0..50 {
        v.create(d, &format!("durable-{i:02}"));
    }
    fs.sync_all(false).unwrap();
    for i in 0..200 {
        v.create(d, &format!("dropped-{i:03}"));
    }
    let first = handleless_piece(&v, d, 0, 10);
    let (g, _) = v.create(ROOT, "g");
    v.write(g, 0, b"data");
    fs.meta().fail_writes(Some(libc::ENOSPC));
    assert_eq!(errno(fs.fsync(g)), libc::ENOSPC);
    fs.meta().fail_writes(None);
    let rest = handleless_piece(&v, d, first.last().unwrap().1, usize::MAX);
    let names: Vec<&str> = first.iter().chain(&rest).map(|(n, _)| n.as_str()).collect();
    let late: Vec<&str> = rest
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| n.starts_with("dropped-"))
        .collect();
    assert!(
        late.is_empty(),
        "names the failed commit dropped, served after it: {late:?}"
    );
    for i in 0..50 {
        let n = format!("durable-{i:02}");
        let c = names.iter().filter(|m| **m == n).count();
        assert_eq!(c, 1, "{n} listed {c} times");
    }
}
