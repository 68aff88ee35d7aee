//! Model-based random operations on the filesystem core, checked byte for byte against a
//! trivially correct in-memory model.
//!
//! Guards against data corruption from the interaction of the data paths: buffered writes,
//! write-back under dirty-memory pressure, local re-chunking and its resynchronisation with
//! old boundaries, tails kept dirty, truncates into the middle of chunks, holes (also near
//! 1 TiB), reference-copying `copy_range`, punched holes, and remounts. Small chunks
//! (avg 4 KiB: min 1 KiB, max 16 KiB) and small dirty limits make every one of those paths
//! run many times per case. After the last operation the test also checks that every chunk
//! the metadata references is in the store and that the byte counters add up.
//!
//! `PROPTEST_CASES=N` raises the case count (default keeps the run under a minute in release).

use dedupfs::chunker::ChunkParams;
use dedupfs::error::Ino;
use dedupfs::fs::{Caller, Fs, FsConfig, SeekWhence};
use dedupfs::hash::ChunkId;
use dedupfs::meta::{MetaDb, ROOT_INO};
use dedupfs::store::{ChunkStore, MemoryStore};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tempfile::TempDir;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// The low region of each file: offsets [0, LOW_CAP).
const LOW_CAP: u64 = 4 * MIB + 512 * KIB;
/// The high region: [HIGH_BASE, HIGH_BASE + HIGH_CAP), past a 1 TiB hole.
const HIGH_BASE: u64 = 1 << 40;
const HIGH_CAP: u64 = MIB;
/// Longest write / copy: more than the total dirty limit (192 KiB), so a write must sometimes
/// force every other file's write-back to make room (fs_core.rs pins the hang this once was:
/// `write_larger_than_the_total_dirty_limit_does_not_hang`).
const MAX_IO: u64 = 256 * KIB;
const FILES: usize = 2;
const DEFAULT_CASES: u32 = 128;

fn cfg() -> FsConfig {
    FsConfig {
        cache_bytes: 512 * KIB as usize,
        file_dirty_limit: 64 * KIB as usize,
        total_dirty_limit: 192 * KIB as usize,
        ..FsConfig::default()
    }
}

fn params() -> ChunkParams {
    ChunkParams::from_avg(4096).unwrap()
}

/// Reproducible bytes. Seed 0 is zeros (writes of zeros become holes); few seeds, so the
/// same content recurs and chunks are shared between offsets and files.
fn fill(len: usize, seed: u8) -> Vec<u8> {
    if seed == 0 {
        return vec![0; len];
    }
    let mut s = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------- the model

#[derive(Clone)]
struct ModelFile {
    low: Vec<u8>,
    high: Vec<u8>,
    size: u64,
}

impl ModelFile {
    fn new() -> ModelFile {
        ModelFile {
            low: vec![0; LOW_CAP as usize],
            high: vec![0; HIGH_CAP as usize],
            size: 0,
        }
    }

    /// The regions as (base, bytes).
    fn regions_mut(&mut self) -> [(u64, &mut Vec<u8>); 2] {
        [(0, &mut self.low), (HIGH_BASE, &mut self.high)]
    }

    fn regions(&self) -> [(u64, &Vec<u8>); 2] {
        [(0, &self.low), (HIGH_BASE, &self.high)]
    }

    fn read(&self, off: u64, len: u64) -> Vec<u8> {
        if off >= self.size {
            return Vec::new();
        }
        let end = self.size.min(off + len);
        let mut out = vec![0u8; (end - off) as usize];
        for (base, bytes) in self.regions() {
            let s = off.max(base);
            let t = end.min(base + bytes.len() as u64);
            if s < t {
                out[(s - off) as usize..(t - off) as usize]
                    .copy_from_slice(&bytes[(s - base) as usize..(t - base) as usize]);
            }
        }
        out
    }

    fn write(&mut self, off: u64, data: &[u8]) {
        let end = off + data.len() as u64;
        let mut done = data.is_empty();
        for (base, bytes) in self.regions_mut() {
            if off >= base && end <= base + bytes.len() as u64 {
                bytes[(off - base) as usize..(end - base) as usize].copy_from_slice(data);
                done = true;
            }
        }
        assert!(
            done,
            "model write {off}+{} outside the modelled regions",
            data.len()
        );
        self.size = self.size.max(end);
    }

    fn zero(&mut self, from: u64, to: u64) {
        for (base, bytes) in self.regions_mut() {
            let s = from.max(base);
            let t = to.min(base + bytes.len() as u64);
            if s < t {
                bytes[(s - base) as usize..(t - base) as usize].fill(0);
            }
        }
    }

    fn truncate(&mut self, size: u64) {
        if size < self.size {
            self.zero(size, self.size);
        }
        self.size = size;
    }
}

// ---------------------------------------------------------------- operations

#[derive(Clone, Copy, Debug)]
enum Op {
    Write {
        f: usize,
        off: u64,
        len: u64,
        seed: u8,
    },
    Truncate {
        f: usize,
        size: u64,
    },
    Read {
        f: usize,
        off: u64,
        len: u64,
    },
    Fsync {
        f: usize,
    },
    Flush {
        f: usize,
    },
    /// Close the handle (last close: final write-back) and open again.
    Reopen {
        f: usize,
    },
    Copy {
        from: usize,
        off_in: u64,
        to: usize,
        off_out: u64,
        len: u64,
    },
    Punch {
        f: usize,
        off: u64,
        len: u64,
    },
    SeekHole {
        f: usize,
        off: u64,
    },
    /// Clean unmount (sync_all(true)), drop the Fs, mount again from the same db and store.
    Remount,
    /// The periodic flusher: write back everything, keep streaming tails.
    SyncAll,
}

/// An offset where a write of up to MAX_IO bytes still fits a modelled region: mostly in a
/// small window (so operations overlap), sometimes anywhere low, sometimes past 1 TiB.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        5 => 0..256 * KIB,
        3 => 0..LOW_CAP - MAX_IO,
        2 => (0..HIGH_CAP - MAX_IO).prop_map(|o| HIGH_BASE + o),
    ]
}

fn io_len() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 1..4 * KIB,
        3 => 1..32 * KIB,
        2 => 1..=MAX_IO,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let f = 0..FILES;
    prop_oneof![
        12 => (f.clone(), offset(), io_len(), 0u8..6).prop_map(|(f, off, len, seed)| Op::Write { f, off, len, seed }),
        2 => (f.clone(), prop_oneof![Just(0u64), 0..LOW_CAP, (0..HIGH_CAP).prop_map(|o| HIGH_BASE + o)])
            .prop_map(|(f, size)| Op::Truncate { f, size }),
        5 => (f.clone(), offset(), io_len()).prop_map(|(f, off, len)| Op::Read { f, off, len }),
        2 => f.clone().prop_map(|f| Op::Fsync { f }),
        1 => f.clone().prop_map(|f| Op::Flush { f }),
        1 => f.clone().prop_map(|f| Op::Reopen { f }),
        3 => (f.clone(), offset(), f.clone(), offset(), io_len())
            .prop_map(|(from, off_in, to, off_out, len)| Op::Copy { from, off_in, to, off_out, len }),
        2 => (f.clone(), offset(), io_len()).prop_map(|(f, off, len)| Op::Punch { f, off, len }),
        1 => (f.clone(), offset()).prop_map(|(f, off)| Op::SeekHole { f, off }),
        1 => Just(Op::Remount),
        1 => Just(Op::SyncAll),
    ]
}

// ---------------------------------------------------------------- the system under test

struct Sut {
    dir: TempDir,
    store: Arc<MemoryStore>,
    fs: Option<Arc<Fs>>,
    /// Run the background writer, racing the operations (write-back with the lock released).
    background: bool,
    inos: [Ino; FILES],
    fhs: [u64; FILES],
}

impl Sut {
    fn new(background: bool) -> Sut {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaDb::create(&dir.path().join("meta.redb"), params(), 0, 0).unwrap();
        let store = Arc::new(MemoryStore::new());
        let fs = Arc::new(Fs::new(meta, store.clone(), cfg()).unwrap());
        if background {
            fs.start_background();
        }
        let mut inos = [0; FILES];
        let mut fhs = [0; FILES];
        for i in 0..FILES {
            let (ino, _, fh) = fs
                .create(
                    Caller::default(),
                    ROOT_INO,
                    format!("f{i}").as_bytes(),
                    0o644,
                )
                .unwrap();
            inos[i] = ino;
            fhs[i] = fh;
        }
        Sut {
            dir,
            store,
            fs: Some(fs),
            background,
            inos,
            fhs,
        }
    }

    fn fs(&self) -> &Fs {
        self.fs.as_ref().unwrap()
    }

    fn remount(&mut self) {
        self.fs().stop_background();
        self.fs()
            .sync_all(true)
            .expect("sync_all(true) before unmount");
        let mut fs = self.fs.take().unwrap();
        // The background thread may still hold the Fs for a moment; the db must be closed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Arc::try_unwrap(fs) {
                Ok(inner) => break drop(inner),
                Err(again) => fs = again,
            }
            assert!(
                std::time::Instant::now() < deadline,
                "background writer never let go"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let meta = MetaDb::open(&self.dir.path().join("meta.redb")).unwrap();
        let fs = Arc::new(Fs::new(meta, self.store.clone(), cfg()).expect("mount again"));
        if self.background {
            fs.start_background();
        }
        for i in 0..FILES {
            let (ino, _) = fs.lookup(ROOT_INO, format!("f{i}").as_bytes()).unwrap();
            assert_eq!(ino, self.inos[i], "inode number changed across remount");
            self.fhs[i] = fs.open(ino, true).unwrap();
        }
        self.fs = Some(fs);
    }

    fn read(&self, f: usize, off: u64, len: u64) -> Vec<u8> {
        self.fs()
            .read(self.inos[f], off, len as u32)
            .unwrap_or_else(|e| panic!("read f{f} {off}+{len}: {e}"))
    }
}

fn first_diff(got: &[u8], want: &[u8]) -> Option<usize> {
    if got.len() != want.len() {
        return Some(got.len().min(want.len()));
    }
    got.iter().zip(want).position(|(a, b)| a != b)
}

fn check_read(sut: &Sut, model: &[ModelFile], f: usize, off: u64, len: u64, ctx: &str) {
    let got = sut.read(f, off, len);
    let want = model[f].read(off, len);
    if let Some(i) = first_diff(&got, &want) {
        panic!(
            "{ctx}: read f{f} {off}+{len}: {} bytes, want {}; first difference at file offset {} \
             (got {:?}, want {:?})",
            got.len(),
            want.len(),
            off + i as u64,
            got.get(i),
            want.get(i)
        );
    }
}

/// Compares both whole files (both regions, and the bytes around the size) with the model.
fn check_all(sut: &Sut, model: &[ModelFile], ctx: &str) {
    for f in 0..FILES {
        let attr = sut.fs().getattr(sut.inos[f]).unwrap();
        assert_eq!(attr.size, model[f].size, "{ctx}: size of f{f}");
        for (base, cap) in [(0, LOW_CAP), (HIGH_BASE, HIGH_CAP)] {
            let mut at = base;
            while at < base + cap {
                let n = (MIB).min(base + cap - at);
                check_read(sut, model, f, at, n, ctx);
                at += n;
            }
        }
        let size = model[f].size;
        check_read(sut, model, f, size.saturating_sub(100), 200, ctx);
    }
}

/// Metadata and store agree after a clean sync: every referenced chunk is stored with the
/// right bytes, counters add up, no dead chunk is left behind.
fn check_store(sut: &Sut, ctx: &str) {
    sut.fs().sync_all(true).unwrap();
    let r = sut.fs().meta().begin_read().unwrap();
    let mut refs: HashMap<ChunkId, (u64, u32)> = HashMap::new();
    let mut per_ino: HashMap<Ino, u64> = HashMap::new();
    let mut last_end: HashMap<Ino, u64> = HashMap::new();
    r.for_each_extent(&mut |ino, e| {
        let prev = last_end.insert(ino, e.end()).unwrap_or(0);
        assert!(
            e.offset >= prev,
            "{ctx}: extents of {ino} overlap at {}",
            e.offset
        );
        assert!(e.len > 0, "{ctx}: empty extent");
        let r = refs.entry(e.id).or_insert((0, e.len));
        r.0 += 1;
        assert_eq!(r.1, e.len, "{ctx}: chunk {} with two lengths", e.id);
        *per_ino.entry(ino).or_default() += e.len as u64;
    })
    .unwrap();
    let mut stored = HashSet::new();
    sut.store
        .for_each(&mut |id| {
            stored.insert(id);
        })
        .unwrap();
    let mut physical = 0u64;
    for (id, (rc, len)) in &refs {
        assert!(
            stored.contains(id),
            "{ctx}: referenced chunk {id} is not in the store"
        );
        let bytes = sut.store.get(id).unwrap();
        assert_eq!(bytes.len(), *len as usize, "{ctx}: stored length of {id}");
        assert_eq!(ChunkId::of(&bytes), *id, "{ctx}: stored bytes of {id}");
        assert_eq!(
            r.chunk(id).unwrap(),
            Some((*rc, *len)),
            "{ctx}: refcount of {id}"
        );
        physical += *len as u64;
    }
    let mut listed = 0;
    r.for_each_chunk(&mut |id, rc, _| {
        listed += 1;
        assert!(
            rc > 0 && refs.contains_key(&id),
            "{ctx}: dead chunk {id} (rc {rc}) left in metadata"
        );
    })
    .unwrap();
    assert_eq!(listed, refs.len());
    assert!(
        r.zero_refs().unwrap().is_empty(),
        "{ctx}: zero-ref chunks left after sync"
    );
    assert_eq!(
        stored.len(),
        refs.len(),
        "{ctx}: store holds unreferenced chunks"
    );
    let u = sut.fs().usage().unwrap();
    assert_eq!(u.physical_bytes, physical, "{ctx}: physical_bytes counter");
    assert_eq!(
        u.chunk_count,
        refs.len() as u64,
        "{ctx}: chunk_count counter"
    );
    let referenced: u64 = per_ino.values().sum();
    assert_eq!(
        u.referenced_bytes, referenced,
        "{ctx}: referenced_bytes counter"
    );
    for (i, ino) in sut.inos.iter().enumerate() {
        let a = sut.fs().allocated(*ino).unwrap();
        assert_eq!(
            a,
            per_ino.get(ino).copied().unwrap_or(0),
            "{ctx}: allocated of f{i}"
        );
    }
}

fn apply(sut: &mut Sut, model: &mut [ModelFile], op: Op, step: usize) {
    let ctx = format!("step {step} {op:?}");
    match op {
        Op::Write { f, off, len, seed } => {
            let data = fill(len as usize, seed);
            let n = sut
                .fs()
                .write(sut.inos[f], off, &data)
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert_eq!(n, data.len(), "{ctx}");
            model[f].write(off, &data);
        }
        Op::Truncate { f, size } => {
            sut.fs()
                .truncate(sut.inos[f], size)
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            model[f].truncate(size);
        }
        Op::Read { f, off, len } => check_read(sut, model, f, off, len, &ctx),
        Op::Fsync { f } => sut
            .fs()
            .fsync(sut.inos[f])
            .unwrap_or_else(|e| panic!("{ctx}: {e}")),
        Op::Flush { f } => sut
            .fs()
            .flush(sut.inos[f])
            .unwrap_or_else(|e| panic!("{ctx}: {e}")),
        Op::Reopen { f } => {
            sut.fs()
                .release(sut.fhs[f])
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            sut.fhs[f] = sut.fs().open(sut.inos[f], true).unwrap();
        }
        Op::Copy {
            from,
            off_in,
            to,
            off_out,
            len,
        } => {
            let src_size = model[from].size;
            let r = sut
                .fs()
                .copy_range(sut.inos[from], off_in, sut.inos[to], off_out, len);
            if off_in >= src_size {
                assert_eq!(
                    r.unwrap_or_else(|e| panic!("{ctx}: {e}")),
                    0,
                    "{ctx}: copy from EOF"
                );
                return;
            }
            let n = len.min(src_size - off_in);
            let overlap = from == to && off_in < off_out + n && off_out < off_in + n;
            if overlap {
                let e = r.expect_err(&format!("{ctx}: overlapping copy in one file must fail"));
                assert_eq!(e.errno(), libc::EINVAL, "{ctx}");
                return;
            }
            assert_eq!(
                r.unwrap_or_else(|e| panic!("{ctx}: {e}")),
                n,
                "{ctx}: bytes copied"
            );
            let data = model[from].read(off_in, n);
            model[to].write(off_out, &data);
        }
        Op::Punch { f, off, len } => {
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            sut.fs()
                .fallocate(sut.inos[f], off, len, mode)
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            let end = (off + len).min(model[f].size);
            if off < end {
                model[f].zero(off, end);
            }
        }
        Op::SeekHole { f, off } => {
            let m = &model[f];
            match sut.fs().seek(sut.inos[f], off, SeekWhence::Hole) {
                Ok(h) => {
                    assert!(off < m.size, "{ctx}: SEEK_HOLE at/after EOF must be ENXIO");
                    assert!(h >= off && h <= m.size, "{ctx}: hole {h} out of range");
                    // Holes may be reported late (data may be zeros), never early: a reported
                    // hole inside the file must read as zeros over its whole length, up to
                    // where SEEK_DATA says data starts again (a hole may be shorter than a
                    // block: unwritten bytes between two writes).
                    if h < m.size {
                        let data_at = match sut.fs().seek(sut.inos[f], h, SeekWhence::Data) {
                            Ok(d) => d,
                            Err(e) if e.errno() == libc::ENXIO => m.size,
                            Err(e) => panic!("{ctx}: SEEK_DATA after the hole at {h}: {e}"),
                        };
                        assert!(
                            data_at > h,
                            "{ctx}: SEEK_DATA {data_at} inside the hole at {h}"
                        );
                        // (The first MiB of it: holes near 1 TiB are modelled sparsely.)
                        assert!(
                            m.read(h, (data_at - h).min(1 << 20))
                                .iter()
                                .all(|&b| b == 0),
                            "{ctx}: hole at {h}..{data_at} has data"
                        );
                    }
                }
                Err(e) => {
                    assert!(
                        off >= m.size,
                        "{ctx}: SEEK_HOLE failed inside the file: {e}"
                    );
                    assert_eq!(e.errno(), libc::ENXIO, "{ctx}");
                }
            }
        }
        Op::Remount => {
            sut.remount();
            check_all(sut, model, &ctx);
        }
        Op::SyncAll => sut
            .fs()
            .sync_all(false)
            .unwrap_or_else(|e| panic!("{ctx}: {e}")),
    }
    for (f, (ino, m)) in sut.inos.iter().zip(model.iter()).enumerate() {
        let size = sut.fs().getattr(*ino).unwrap().size;
        assert_eq!(size, m.size, "{ctx}: size of f{f} after the operation");
    }
}

fn run(background: bool, ops: &[Op]) {
    let mut sut = Sut::new(background);
    let mut model = vec![ModelFile::new(); FILES];
    for (step, op) in ops.iter().enumerate() {
        apply(&mut sut, &mut model, *op, step);
    }
    check_all(&sut, &model, "end, files open");
    for f in 0..FILES {
        sut.fs().release(sut.fhs[f]).unwrap();
    }
    check_all(&sut, &model, "end, files closed");
    check_store(&sut, "end");
    sut.remount();
    check_all(&sut, &model, "end, after remount");
    check_store(&sut, "end, after remount");
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_operations_match_the_model(
        background in any::<bool>(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run(background, &ops);
    }
}

// Hand-picked sequences that exercise one path each; they run fast and fail with a clear name.

#[test]
fn overwrite_straddling_chunk_boundaries_matches_the_model() {
    let mut ops = vec![
        Op::Write {
            f: 0,
            off: 0,
            len: 128 * KIB,
            seed: 1,
        },
        Op::Fsync { f: 0 },
    ];
    for (i, off) in [1000u64, 5000, 16_383, 16_384, 60_000, 127 * KIB]
        .into_iter()
        .enumerate()
    {
        ops.push(Op::Write {
            f: 0,
            off,
            len: 3000,
            seed: 2 + (i % 3) as u8,
        });
        if i % 2 == 0 {
            ops.push(Op::Fsync { f: 0 });
        }
    }
    ops.push(Op::Remount);
    run(false, &ops);
    run(true, &ops);
}

#[test]
fn truncate_into_a_chunk_then_append_matches_the_model() {
    run(
        false,
        &[
            Op::Write {
                f: 0,
                off: 0,
                len: 100 * KIB,
                seed: 1,
            },
            Op::Fsync { f: 0 },
            Op::Truncate { f: 0, size: 50_001 },
            Op::Write {
                f: 0,
                off: 70_000,
                len: 10_000,
                seed: 2,
            },
            Op::Read {
                f: 0,
                off: 49_000,
                len: 40_000,
            },
            Op::Fsync { f: 0 },
            Op::Truncate { f: 0, size: 100 },
            Op::Truncate { f: 0, size: 90_000 },
            Op::Remount,
        ],
    );
}

#[test]
fn copies_and_punches_near_one_tebibyte_match_the_model() {
    run(
        false,
        &[
            Op::Write {
                f: 0,
                off: HIGH_BASE + 1000,
                len: 100 * KIB,
                seed: 3,
            },
            Op::Copy {
                from: 0,
                off_in: HIGH_BASE,
                to: 1,
                off_out: 77,
                len: 120 * KIB,
            },
            Op::Punch {
                f: 1,
                off: 5000,
                len: 10_000,
            },
            Op::Copy {
                from: 1,
                off_in: 0,
                to: 0,
                off_out: HIGH_BASE + 200 * KIB,
                len: 50 * KIB,
            },
            Op::Write {
                f: 1,
                off: 4000,
                len: 2000,
                seed: 4,
            },
            Op::Remount,
            Op::Punch {
                f: 0,
                off: HIGH_BASE,
                len: 20 * KIB,
            },
        ],
    );
}
