//! Model-based random operations through a real FUSE mount, checked byte for byte against a
//! sparse in-memory model.
//!
//! Guards against corruption that only shows up through the kernel: the page cache and the
//! attribute cache disagreeing with the daemon after truncates, punched holes, zeroed ranges
//! and reference copies; offsets past 2 GiB and 4 GiB mangled on the way through FUSE; chunks
//! re-cut wrongly when small writes land on and around existing chunk boundaries (one file is
//! cut into fixed blocks, the others content-defined; half the cases use the default 64 KiB
//! chunks, half 4 KiB ones); SEEK_HOLE reporting a hole over data; pages kept across opens,
//! written through, or read back by a concurrent reader while an operation ran, showing stale
//! bytes afterwards; and data lost across close, reopen and a clean unmount.
//!
//! Three files on one volume get random mixes of pwrite, ftruncate (shrink and grow, to 0 and
//! past 4 GiB), fallocate (PUNCH_HOLE, ZERO_RANGE, plain), copy_file_range (between and within
//! files), fsync, page-cache drops (of one file, or the whole page cache), reopen and remount.
//! Offsets cluster in a few windows near 0, 1, 2, 3 and 4 GiB, on and around 64 KiB
//! multiples, and near existing data and the end of file. The model keeps only the written
//! runs, so multi-GiB sparse files cost kilobytes.
//!
//! The kernel's caches take part: the read-write descriptor the operations use is closed at
//! times (the next operation that needs it opens it again), and read-only descriptors are
//! kept open across operations at times. So reads go through the page cache and keep it
//! across opens (FOPEN_KEEP_CACHE) while no writer is open, writers write through the page
//! cache when they open while a kept reader is open, and are direct otherwise. The reads that
//! check a step go, by turns, through the read-write descriptor, the kept read-only one and a
//! read-only one opened for the read. In half the cases a background thread also reads the
//! files through fresh read-only opens while operations run; the reads that began and ended
//! between two operations are compared with the model when the next operation begins.
//!
//! Every operation is followed by a read-back of the range it touched and a size check of all
//! files (fstat, or stat(2) by path); every few operations the edges of all modelled runs are
//! read back; at the end (and after every remount) whole files, or all runs plus every hole's
//! edges and middle, are compared, and a SEEK_DATA/SEEK_HOLE walk must never report a hole
//! over data.
//!
//! The remote variant runs the same operations on an encrypted remote volume in a Garage
//! server started by the test (skipped, with a `SKIP:` line, without Garage), whose local
//! cache has no room for whole packs: once uploaded, packs are evicted and their chunks read
//! back through the range cache. Half the cases' volumes share a prefix and dedup against
//! each other; in half of them the volume also publishes in the background every second,
//! concurrently with the operations. It adds writes of several MiB, `dedupfs sync`
//! (sometimes waiting for the eviction; sometimes followed by a comparison through a
//! read-only mount of a fresh attach while the writer stays mounted, or by kill -9 of the
//! daemon and a mount of the same store again) and fresh attaches into an empty store
//! directory. Every case ends with one, so that everything is read from the bucket at least
//! once, and with `fsck --verify-data` of that store directory. It guards against data that
//! reads back right from local packs and wrong once evicted or attached elsewhere (lost
//! writes between a publication and the next, a pack evicted while it still gets records,
//! ranges fetched at the wrong offsets, records sealed or opened wrongly), and against
//! writers that hang or fail while they wait for uploads to make room in a tiny cache.
//!
//! A failure prints the seed, the minimal failing operation list found by shrinking and the
//! concrete operations (resolved offsets and lengths) that ran. Environment:
//! `DEDUPFS_MODEL_SEED=N` reruns with a given seed (random by default, printed on failure),
//! `PROPTEST_CASES=N` changes the number of cases, `PROPTEST_MAX_SHRINK_TIME=ms` and
//! `PROPTEST_MAX_SHRINK_ITERS=N` bound the shrinking (each step mounts a fresh volume).
//! Failing cases are also saved in `mount_model.proptest-regressions` and replayed first.

mod common;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::garage::Garage;
use common::{GIB, KIB, MIB, Volume, copy_file_range, fuse_available, random_bytes};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{
    Config, FileFailurePersistence, RngSeed, TestCaseError, TestError, TestRunner,
};

/// The files under test. `*.img` is cut into fixed blocks (the store is initialised with
/// `--fixed-for *.img`), the others content-defined.
const FILES: [&str; 3] = ["f0.img", "f1", "f2"];
const FIXED_FOR: &str = "*.img";
/// The default average chunk size, and the fixed block size of `f0.img` with it (some cases
/// use 4 KiB chunks: see [`Chunks`]).
const CUT: u64 = 64 * KIB;
/// Where offsets cluster: near 0, around 1 GiB, 2 GiB (i32 overflow), 3 GiB and 4 GiB (u32
/// overflow). All multiples of CUT.
const WINDOWS: [u64; 5] = [
    0,
    GIB - MIB,
    2 * GIB - MIB,
    3 * GIB + 4 * MIB,
    4 * GIB - MIB,
];
const WINDOW_LEN: u64 = 2 * MIB;
/// Longest write or copy.
const MAX_IO: u64 = 256 * KIB;
/// Longest write of the remote variant.
const BIG_IO: u64 = 6 * MIB;
/// Bytes read back on each side of a modified range.
const MARGIN: u64 = 4 * KIB;
/// Files up to this size are compared whole at the end.
const WHOLE_FILE_LIMIT: u64 = 16 * MIB;
/// Longest single pread.
const READ_PIECE: u64 = 2 * MIB;
/// Edges of all runs are read back after every this many operations.
const SWEEP_EVERY: usize = 10;
const MIN_OPS: usize = 40;
const MAX_OPS: usize = 80;
const DEFAULT_CASES: u32 = 16;
/// Each shrink step mounts a fresh volume: bound the search (PROPTEST_MAX_SHRINK_TIME, ms).
const DEFAULT_SHRINK_MS: u32 = 180_000;
const DEFAULT_SHRINK_ITERS: u32 = 2000;

/// Write contents: seed 0 is zeros (may become holes); few seeds, so content recurs and chunks
/// are shared between offsets and files.
fn content(seed: u8, len: u64) -> Vec<u8> {
    if seed == 0 {
        vec![0; len as usize]
    } else {
        random_bytes(seed as u64, len as usize)
    }
}

// ---------------------------------------------------------------- the model

/// A sparse file: its size and the runs of bytes written and not zeroed since. Everything
/// else below `size` reads as zeros. Runs never overlap and never extend past `size`.
#[derive(Clone, Default)]
struct ModelFile {
    size: u64,
    runs: BTreeMap<u64, Vec<u8>>,
}

impl ModelFile {
    /// The runs overlapping `[a, b)`, in order.
    fn overlapping(&self, a: u64, b: u64) -> impl Iterator<Item = (u64, &Vec<u8>)> {
        let first = self
            .runs
            .range(..=a)
            .next_back()
            .filter(|(s, v)| *s + v.len() as u64 > a)
            .map_or(a, |(s, _)| *s);
        self.runs.range(first..b.max(first)).map(|(s, v)| (*s, v))
    }

    /// Forgets the bytes of `[a, b)` (they read as zeros below the size).
    fn zero(&mut self, a: u64, b: u64) {
        if a >= b {
            return;
        }
        let hit: Vec<u64> = self.overlapping(a, b).map(|(s, _)| s).collect();
        for s in hit {
            let v = self.runs.remove(&s).unwrap();
            let e = s + v.len() as u64;
            if s < a {
                self.runs.insert(s, v[..(a - s) as usize].to_vec());
            }
            if e > b {
                self.runs.insert(b, v[(b - s) as usize..].to_vec());
            }
        }
    }

    fn write(&mut self, off: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = off + data.len() as u64;
        self.zero(off, end);
        self.runs.insert(off, data.to_vec());
        self.size = self.size.max(end);
    }

    fn truncate(&mut self, size: u64) {
        self.zero(size, u64::MAX);
        self.size = size;
    }

    /// What a read of `len` bytes at `off` returns (short at the end of file).
    fn read(&self, off: u64, len: u64) -> Vec<u8> {
        if off >= self.size {
            return Vec::new();
        }
        let end = self.size.min(off.saturating_add(len));
        let mut out = vec![0u8; (end - off) as usize];
        for (s, v) in self.overlapping(off, end) {
            let (a, b) = (s.max(off), (s + v.len() as u64).min(end));
            out[(a - off) as usize..(b - off) as usize]
                .copy_from_slice(&v[(a - s) as usize..(b - s) as usize]);
        }
        out
    }

    /// The first non-zero byte in `[a, b)`, if any.
    fn first_nonzero(&self, a: u64, b: u64) -> Option<u64> {
        self.overlapping(a, b).find_map(|(s, v)| {
            let (lo, hi) = (s.max(a), (s + v.len() as u64).min(b));
            v[(lo - s) as usize..(hi - s) as usize]
                .iter()
                .position(|&x| x != 0)
                .map(|i| lo + i as u64)
        })
    }

    /// The parts of runs inside `[a, b)`, as (start, end).
    fn spans_in(&self, a: u64, b: u64) -> Vec<(u64, u64)> {
        self.overlapping(a, b)
            .map(|(s, v)| (s.max(a), (s + v.len() as u64).min(b)))
            .collect()
    }

    /// The runs as (start, end).
    fn spans(&self) -> Vec<(u64, u64)> {
        self.runs
            .iter()
            .map(|(s, v)| (*s, s + v.len() as u64))
            .collect()
    }
}

// ---------------------------------------------------------------- operations

#[derive(Clone, Copy, Debug)]
enum Edge {
    Start,
    Mid,
    End,
}

/// An offset, resolved against the current model of the file it applies to.
#[derive(Clone, Copy, Debug)]
enum Place {
    /// `WINDOWS[w] + o`.
    In { w: usize, o: u64 },
    /// Near a chunk-size multiple: `WINDOWS[w] + k * CUT + d`.
    Cut { w: usize, k: u64, d: i64 },
    /// Near an edge (or the middle) of one of the file's runs, `+ d` (near 0 if it has none).
    Data { pick: Index, edge: Edge, d: i64 },
    /// `size + d`.
    Eof { d: i64 },
}

#[derive(Clone, Copy, Debug)]
enum Size {
    Zero,
    At(Place),
    /// `4 GiB + x`.
    Past4G(u64),
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Write {
        f: usize,
        at: Place,
        len: u64,
        seed: u8,
    },
    Truncate {
        f: usize,
        to: Size,
    },
    /// FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE.
    Punch {
        f: usize,
        at: Place,
        len: u64,
    },
    /// FALLOC_FL_ZERO_RANGE, with or without FALLOC_FL_KEEP_SIZE.
    ZeroRange {
        f: usize,
        at: Place,
        len: u64,
        keep: bool,
    },
    /// Plain fallocate (mode 0 grows the size) or KEEP_SIZE alone (changes nothing).
    Allocate {
        f: usize,
        at: Place,
        len: u64,
        keep: bool,
    },
    /// copy_file_range; within one file the destination is moved past an overlap.
    Copy {
        from: usize,
        at_in: Place,
        to: usize,
        at_out: Place,
        len: u64,
    },
    Read {
        f: usize,
        at: Place,
        len: u64,
        via: Via,
    },
    /// SEEK_HOLE and SEEK_DATA from one offset.
    Seek {
        f: usize,
        at: Place,
    },
    Fsync {
        f: usize,
        data_only: bool,
    },
    /// posix_fadvise(DONTNEED) on the file, or (`global`) `echo 1 > /proc/sys/vm/drop_caches`:
    /// later reads go to the daemon, not the page cache.
    DropCache {
        f: usize,
        global: bool,
    },
    /// Close the read-write descriptor and open it again.
    Reopen {
        f: usize,
    },
    /// Close the read-write descriptor; the next operation that needs it opens it again.
    CloseWriter {
        f: usize,
    },
    /// Open (again) a read-only descriptor kept across operations; with `close_writer`, close
    /// the read-write one first, so that the reader uses the page cache and the next writer
    /// writes through it.
    OpenReader {
        f: usize,
        close_writer: bool,
    },
    /// Close the kept read-only descriptor.
    CloseReader {
        f: usize,
    },
    /// Close all files, unmount cleanly, mount again, compare everything, reopen.
    Remount,
    /// Remote volumes only: `dedupfs sync MOUNTPOINT` (seals the open packs, uploads them,
    /// publishes a generation); with `settle`, then wait until the uploader has evicted every
    /// local pack file (the cache has no room for whole packs), so that the data written so
    /// far is read back through the range cache from the bucket.
    Sync {
        settle: bool,
    },
    /// Remote volumes only: close all files, unmount (publishes), `attach` the volume into a
    /// new, empty store directory and mount that, compare everything (all of it read from the
    /// bucket), reopen.
    Reattach,
    /// Remote volumes only: `dedupfs sync MOUNTPOINT`, then `attach` the volume into a new
    /// store directory and mount that read-only (another machine's view, while this mount
    /// goes on writing) and compare everything there: a publication holds every write that
    /// returned before it.
    AttachReadOnly,
    /// Remote volumes only: `dedupfs sync MOUNTPOINT`, then kill -9 the daemon and mount the
    /// same store directory again (its recovery, and the lease taken again by the same
    /// session); nothing was written since the sync, so nothing may be missing.
    Crash,
}

/// The descriptor that reads go through.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// The read-write descriptor of the operations (the kept reader, or a fresh read-only
    /// one, while it is closed).
    Writer,
    /// The kept read-only descriptor (a fresh one while none is kept).
    Kept,
    /// A read-only descriptor opened for the read and closed after it.
    Fresh,
}

const VIAS: [Via; 3] = [Via::Writer, Via::Kept, Via::Fresh];

fn file() -> impl Strategy<Value = usize> {
    0..FILES.len()
}

fn window() -> impl Strategy<Value = usize> {
    prop_oneof![4 => Just(0usize), 3 => 1..WINDOWS.len()]
}

fn place() -> impl Strategy<Value = Place> {
    let edge = prop_oneof![Just(Edge::Start), Just(Edge::Mid), Just(Edge::End)];
    prop_oneof![
        3 => (window(), 0..WINDOW_LEN).prop_map(|(w, o)| Place::In { w, o }),
        3 => (window(), 0..WINDOW_LEN / CUT, prop_oneof![Just(0i64), -300i64..300])
            .prop_map(|(w, k, d)| Place::Cut { w, k, d }),
        4 => (any::<Index>(), edge, prop_oneof![Just(0i64), -8192i64..8192])
            .prop_map(|(pick, edge, d)| Place::Data { pick, edge, d }),
        1 => (-128 * KIB as i64..128 * KIB as i64).prop_map(|d| Place::Eof { d }),
    ]
}

fn io_len() -> impl Strategy<Value = u64> {
    prop_oneof![2 => 1..512u64, 3 => 1..16 * KIB, 3 => 1..=MAX_IO]
}

/// Lengths for fallocate: mostly small, sometimes gigabytes (across windows).
fn range_len() -> impl Strategy<Value = u64> {
    prop_oneof![5 => io_len(), 2 => 1..4 * MIB, 1 => 1..3 * GIB]
}

fn size() -> impl Strategy<Value = Size> {
    prop_oneof![
        1 => Just(Size::Zero),
        6 => place().prop_map(Size::At),
        2 => (0..GIB).prop_map(Size::Past4G),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        28 => (file(), place(), io_len(), 0u8..10)
            .prop_map(|(f, at, len, seed)| Op::Write { f, at, len, seed }),
        4 => (file(), size()).prop_map(|(f, to)| Op::Truncate { f, to }),
        6 => (file(), place(), range_len()).prop_map(|(f, at, len)| Op::Punch { f, at, len }),
        4 => (file(), place(), range_len(), any::<bool>())
            .prop_map(|(f, at, len, keep)| Op::ZeroRange { f, at, len, keep }),
        1 => (file(), place(), range_len(), any::<bool>())
            .prop_map(|(f, at, len, keep)| Op::Allocate { f, at, len, keep }),
        8 => (file(), place(), file(), place(), io_len())
            .prop_map(|(from, at_in, to, at_out, len)| Op::Copy { from, at_in, to, at_out, len }),
        10 => (file(), place(), prop_oneof![1..4 * KIB, 1..=512 * KIB, 1..=2 * MIB], 0..VIAS.len())
            .prop_map(|(f, at, len, v)| Op::Read { f, at, len, via: VIAS[v] }),
        4 => (file(), place()).prop_map(|(f, at)| Op::Seek { f, at }),
        3 => (file(), any::<bool>()).prop_map(|(f, data_only)| Op::Fsync { f, data_only }),
        3 => (file(), prop::bool::weighted(0.25))
            .prop_map(|(f, global)| Op::DropCache { f, global }),
        2 => file().prop_map(|f| Op::Reopen { f }),
        5 => file().prop_map(|f| Op::CloseWriter { f }),
        5 => (file(), prop::bool::weighted(0.75))
            .prop_map(|(f, close_writer)| Op::OpenReader { f, close_writer }),
        1 => file().prop_map(|f| Op::CloseReader { f }),
        1 => Just(Op::Remount),
    ]
}

/// The operations of the remote variant: those of [`op`], some writes of several MiB, and
/// publications (some waiting for the eviction of the local packs, some followed by a
/// read-only attach or a kill -9) and fresh attaches, together about one operation in seven,
/// so that most of a case's data is read back from the bucket before the case ends.
fn remote_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        56 => op(),
        // Writes of several packs: enough data for the uploader to evict while a case runs,
        // and for a writer to wait for room in the tiny cache (looked at every 4 MiB).
        2 => (file(), place(), MIB..=BIG_IO, 1u8..10)
            .prop_map(|(f, at, len, seed)| Op::Write { f, at, len, seed }),
        3 => Just(Op::Sync { settle: false }),
        3 => Just(Op::Sync { settle: true }),
        2 => Just(Op::Reattach),
        1 => Just(Op::AttachReadOnly),
        1 => Just(Op::Crash),
    ]
}

/// The store's average chunk size (also the fixed block size of `f0.img`).
#[derive(Clone, Copy, Debug)]
enum Chunks {
    /// 64 KiB, the default.
    Default,
    /// 4 KiB: the same writes re-cut many more chunks.
    Small,
}

fn chunks() -> impl Strategy<Value = Chunks> {
    prop_oneof![Just(Chunks::Default), Just(Chunks::Small)]
}

/// Operations; a `None` does nothing. Shrinking only removes operations (turns them into
/// `None`, which a length range with a minimum could not do), one pass over the list: each step
/// mounts a fresh volume, and shrinking parameters too would take many more steps.
fn ops(
    op: impl Strategy<Value = Op>,
    n: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = Vec<Option<Op>>> {
    prop::collection::vec(prop::option::weighted(0.97, op.no_shrink()), n)
}

// ---------------------------------------------------------------- remote volumes

/// Cases of the remote variant (each also publishes, evicts and attaches afresh: slower).
const REMOTE_CASES: u32 = 5;
const REMOTE_MIN_OPS: usize = 30;
const REMOTE_MAX_OPS: usize = 60;
/// How long the uploader may take to evict the local packs after a publication (it runs
/// every 2 s).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
/// The daemon's chunk cache at its smallest, so that reads of evicted packs reach the range
/// cache instead of chunks kept in memory.
const REMOTE_MOUNT_ARGS: [&str; 2] = ["--cache-mib", "1"];

/// The local cache of a remote case: `cache_bytes` in `STORE/remote.json`, written after
/// `init` and `attach`, because `--cache-disk-gib` takes 0.125 at least, and the 64 MiB of it
/// left for whole packs would keep every pack of a case local. The range cache takes a
/// quarter of the budget, 64 MiB at least: with either budget nothing is left for whole
/// packs, and every uploaded pack is evicted at the uploader's next pass.
#[derive(Clone, Copy, Debug)]
enum Budget {
    /// 64 MiB: the range cache's minimum.
    NoPacks,
    /// 1 MiB: also, a writer whose packs not uploaded pass 1 MiB waits for the uploader,
    /// which then seals the packs open for appends and uploads them.
    Tiny,
}

/// How a remote case's store directories are set up (`STORE/remote.json`, after `init` and
/// every `attach`).
#[derive(Clone, Copy, Debug)]
struct Setup {
    cache: Budget,
    /// `publish_secs`: 1 publishes in the background about every second while operations
    /// run (sealing the open packs, taking the durable snapshot and uploading concurrently
    /// with writes); 0 only at `dedupfs sync` and unmount.
    publish_secs: u64,
    /// The volume shares its prefix with the other cases' volumes that do: they all write
    /// the same few contents with the same key, so a chunk another one published is named
    /// in that volume's pack instead of being stored again (shared dedup), and read from it
    /// through the range cache.
    shared: bool,
}

impl Setup {
    fn apply(self, store: &Path) {
        let path = store.join("remote.json");
        let mut c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read remote.json"))
                .expect("remote.json is JSON");
        for field in ["cache_bytes", "publish_secs"] {
            assert!(c[field].is_u64(), "no {field} in {c}");
        }
        c["cache_bytes"] = match self.cache {
            Budget::NoPacks => 64 * MIB,
            Budget::Tiny => MIB,
        }
        .into();
        c["publish_secs"] = self.publish_secs.into();
        std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).expect("write remote.json");
    }
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop_oneof![Just(Budget::NoPacks), Just(Budget::Tiny)],
        prop_oneof![Just(0u64), Just(1)],
        any::<bool>(),
    )
        .prop_map(|(cache, publish_secs, shared)| Setup {
            cache,
            publish_secs,
            shared,
        })
}

/// What the cases of the remote variant share: a Garage server, its credentials, a volume
/// key and a temp dir for store directories. Each case is a volume of its own, alone under a
/// prefix of the bucket or sharing one with the other cases that do ([`Setup::shared`]):
/// `init --remote --encrypt`, 1 MiB packs, a cache with no room for whole packs
/// ([`Budget`]) and the smallest chunk cache, so that once the uploader has evicted the packs
/// (`dedupfs sync` and waiting, or a remount and its first upload pass) reads go through the
/// range cache to the bucket, and after a fresh `attach` (`Op::Reattach`, and at the end of
/// every case) all of them do.
struct RemoteRig {
    g: Garage,
    env: common::remote::Env,
    dirs: common::remote::Dirs,
    key: PathBuf,
    cases: AtomicUsize,
}

impl RemoteRig {
    /// `None` (with a SKIP line) without FUSE or Garage.
    fn start() -> Option<RemoteRig> {
        let (g, env, dirs) = common::remote::rig(false)?;
        let key = dirs.path("volume.key");
        common::remote::ok(
            common::remote::dedupfs(&env, &["keygen", key.to_str().unwrap()]),
            "dedupfs keygen",
        );
        Some(RemoteRig {
            g,
            env,
            dirs,
            key,
            cases: AtomicUsize::new(0),
        })
    }
}

/// One remote case: its volume, and the store directories attached to it so far.
struct RemoteCase {
    rig: Arc<RemoteRig>,
    prefix: String,
    /// The volume's name under the prefix.
    name: String,
    setup: Setup,
    stores: usize,
    syncs: usize,
    settled: usize,
    crashes: usize,
    /// Warnings and errors the daemons of the store directories done with logged, for the
    /// case summary (they fail nothing by themselves: a fetch retried is fine).
    logged: Vec<String>,
}

impl RemoteCase {
    /// A new encrypted volume made with `init_args` too, mounted.
    fn create(rig: &Arc<RemoteRig>, setup: Setup, init_args: &[&str]) -> (Volume, RemoteCase) {
        let n = rig.cases.fetch_add(1, Ordering::Relaxed);
        let case = RemoteCase {
            rig: Arc::clone(rig),
            prefix: if setup.shared {
                "shared".to_string()
            } else {
                format!("case{n}")
            },
            name: format!("case{n}"),
            setup,
            stores: 0,
            syncs: 0,
            settled: 0,
            crashes: 0,
            logged: Vec::new(),
        };
        let store = case.store_dir();
        let key = rig.key.to_str().unwrap();
        let mut args = init_args.to_vec();
        args.extend([
            "--volume",
            &case.name,
            "--pack-mib",
            "1",
            "--cache-disk-gib",
            "0.125",
            "--encrypt",
            key,
        ]);
        common::remote::init_remote(&rig.g, &store, &case.prefix, &args);
        setup.apply(&store);
        let vol = Volume::mount_existing(&store, &REMOTE_MOUNT_ARGS, &rig.env);
        (vol, case)
    }

    fn store_dir(&self) -> PathBuf {
        self.rig
            .dirs
            .path(&format!("{}-store{}", self.name, self.stores))
    }

    /// `attach` of the volume into a new store directory (nothing local), mounted.
    fn attach_new(&mut self) -> Volume {
        self.attach_new_with(&[])
    }

    /// [`RemoteCase::attach_new`], mounted with `mount_args` too.
    fn attach_new_with(&mut self, mount_args: &[&str]) -> Volume {
        self.stores += 1;
        let store = self.store_dir();
        let key = self.rig.key.to_str().unwrap();
        common::remote::attach(
            &self.rig.g,
            &store,
            &self.prefix,
            &[
                "--volume",
                &self.name,
                "--encrypt",
                key,
                "--cache-disk-gib",
                "0.125",
            ],
        );
        self.setup.apply(&store);
        let mut args = REMOTE_MOUNT_ARGS.to_vec();
        args.extend_from_slice(mount_args);
        Volume::mount_existing(&store, &args, &self.rig.env)
    }

    /// Keeps the warnings and errors in the log of `vol`, which is done with.
    fn keep_log(&mut self, vol: &Volume) {
        self.logged.extend(
            vol.log()
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                // fuser's own unmount after umount(8) already did it.
                .filter(|l| !l.contains("Failed to umount filesystem"))
                .map(str::to_string),
        );
    }

    /// What the case did with the bucket, for the case summary.
    fn report(&mut self, vol: &Volume) {
        self.keep_log(vol);
        for l in self.logged.iter().take(20) {
            eprintln!("  daemon log: {l}");
        }
        let cached: u64 = std::fs::read_dir(vol.store.join("remote/cache"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        // Packs of other volumes it names: the packs.log lines that give an origin.
        let foreign = std::fs::read_to_string(vol.store.join("remote/packs.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split(' ').count() == 4)
            .count();
        eprintln!(
            "  remote: {:?}, {} dedupfs sync ({} waiting for eviction), {} kill -9, {} fresh \
             attaches; the last one's range cache holds {cached} bytes, it names {} packs of \
             other volumes",
            self.setup, self.syncs, self.settled, self.crashes, self.stores, foreign
        );
    }
}

// ---------------------------------------------------------------- the system under test

struct Sut {
    /// The read-write descriptors of the operations (`None` while closed). Declared before
    /// `vol`, like `readers` and `background`, so that they close before it unmounts.
    files: Vec<Option<File>>,
    /// Read-only descriptors kept across operations.
    readers: Vec<Option<File>>,
    /// The background reader, in the cases that have one (stopped while remounting).
    background: Option<Background>,
    vol: Volume,
    /// Whether this case runs a background reader, and how many of its reads were checked.
    with_background: bool,
    background_checked: std::cell::Cell<usize>,
    /// Whether the open read-write and kept read-only descriptors should be page-cache
    /// opens by the daemon's rule (a reader unless a direct writer is open; a writer if a
    /// page-cache reader is open), and the checking reads served direct and through the page
    /// cache by that rule: for the case summary only (a background open can change the
    /// daemon's decision).
    writer_cached: Vec<bool>,
    reader_cached: Vec<bool>,
    reads_by_mode: std::cell::Cell<[usize; 2]>,
    /// Where the reads that check the current step go.
    via: Via,
    model: Vec<ModelFile>,
    /// The concrete operations run so far (resolved offsets), for the failure report.
    trace: Vec<String>,
    /// The kernel refused FALLOC_FL_ZERO_RANGE (older kernels do for FUSE).
    zero_range_unsupported: bool,
    /// The operation running (`ops.len()` for the final checks).
    step: usize,
    /// The remote variant's volume (`None`: a local volume).
    remote: Option<RemoteCase>,
}

fn open(vol: &Volume, i: usize, create: bool) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .open(vol.path(FILES[i]))
        .unwrap_or_else(|e| panic!("open {}: {e}", FILES[i]))
}

fn pread_full(f: &File, off: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let mut got = 0;
    while got < buf.len() {
        let n = f.read_at(&mut buf[got..], off + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(buf)
}

fn lseek(f: &File, off: u64, whence: libc::c_int) -> io::Result<u64> {
    // SAFETY: lseek has no memory-safety preconditions; the descriptor is open.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

fn fallocate(f: &File, mode: libc::c_int, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate has no memory-safety preconditions; the descriptor is open.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as libc::off_t, len as libc::off_t) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn fadvise_dontneed(f: &File, ctx: &str) {
    // SAFETY: posix_fadvise has no memory-safety preconditions; the descriptor is open.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "{ctx}: posix_fadvise DONTNEED");
}

// ---------------------------------------------------------------- the background reader

/// Reads to check: (file, offset, length asked, bytes read).
type Seen = Vec<(usize, u64, u64, Vec<u8>)>;

/// Ranges the background reader favours (the last ones the checks read).
const HINTS: usize = 16;

/// What the operations thread and the background reader share.
#[derive(Default)]
struct Gate {
    /// Bumped when an operation begins. A read is kept for checking only if no operation
    /// began while it ran and none was under way when it began: then the model of that quiet
    /// period says what it must return.
    epoch: u64,
    busy: bool,
    /// (file, offset, length) of recent checks: where the last operations changed things.
    hints: Vec<(usize, u64, u64)>,
    seen: Seen,
    errors: Vec<String>,
}

/// A thread reading the files through fresh read-only opens while the operations run.
struct Background {
    gate: Arc<Mutex<Gate>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Background {
    fn start(paths: Vec<PathBuf>, seed: u64) -> Background {
        let gate = Arc::new(Mutex::new(Gate::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, st) = (Arc::clone(&gate), Arc::clone(&stop));
        let thread = thread::spawn(move || background_reads(&paths, &g, &st, seed));
        Background {
            gate,
            stop,
            thread: Some(thread),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An operation begins; returns the reads of the quiet period that ends, and any errors.
    fn begin(&self) -> (Seen, Vec<String>) {
        let mut g = self.lock();
        g.busy = true;
        g.epoch += 1;
        (std::mem::take(&mut g.seen), std::mem::take(&mut g.errors))
    }

    /// The operation's changes are modelled: a quiet period begins.
    fn quiet(&self) {
        self.lock().busy = false;
    }

    fn hint(&self, f: usize, off: u64, len: u64) {
        let mut g = self.lock();
        if g.hints.len() == HINTS {
            g.hints.remove(0);
        }
        g.hints.push((f, off, len));
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The background reader's loop: a fresh read-only open and one pread (up to 256 KiB, in or
/// near a recently checked range, or anywhere near the start of a file) at a time, paced so
/// that it costs the case little time.
fn background_reads(paths: &[PathBuf], gate: &Mutex<Gate>, stop: &AtomicBool, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::SeqCst) {
        let pick = {
            let g = gate.lock().unwrap_or_else(|p| p.into_inner());
            if g.busy {
                None
            } else if !g.hints.is_empty() && rng.random_bool(0.8) {
                let (f, off, len) = g.hints[rng.random_range(0..g.hints.len())];
                let at = off.saturating_sub(MARGIN) + rng.random_range(0..len.min(MAX_IO) + MARGIN);
                Some((g.epoch, f, at, rng.random_range(1..=MAX_IO)))
            } else {
                let f = rng.random_range(0..paths.len());
                Some((
                    g.epoch,
                    f,
                    rng.random_range(0..WINDOW_LEN),
                    rng.random_range(1..=MAX_IO),
                ))
            }
        };
        let Some((epoch, f, off, len)) = pick else {
            thread::sleep(Duration::from_micros(200));
            continue;
        };
        let r = File::open(&paths[f]).and_then(|file| pread_full(&file, off, len));
        let mut g = gate.lock().unwrap_or_else(|p| p.into_inner());
        match r {
            Ok(data) if g.epoch == epoch && !g.busy => g.seen.push((f, off, len, data)),
            Ok(_) => {}
            Err(e) => {
                let what = format!("background read of {} {off}+{len}: {e}", FILES[f]);
                g.errors.push(what);
            }
        }
        drop(g);
        thread::sleep(Duration::from_millis(2));
    }
}

/// A descriptor to read through: one of the Sut's, or one opened for the read.
enum ReadFd<'a> {
    Borrowed(&'a File),
    Fresh(File),
}

impl Deref for ReadFd<'_> {
    type Target = File;

    fn deref(&self) -> &File {
        match self {
            ReadFd::Borrowed(f) => f,
            ReadFd::Fresh(f) => f,
        }
    }
}

impl Sut {
    fn new(chunks: Chunks, with_background: bool, remote: Option<(&Arc<RemoteRig>, Setup)>) -> Sut {
        let avg = match chunks {
            Chunks::Default => CUT,
            Chunks::Small => 4 * KIB,
        }
        .to_string();
        let init = ["--fixed-for", FIXED_FOR, "--avg-chunk", &avg];
        let (vol, remote) = match remote {
            None => (Volume::with_args(&init, &[]), None),
            Some((rig, setup)) => {
                let (vol, case) = RemoteCase::create(rig, setup, &init);
                (vol, Some(case))
            }
        };
        let files = (0..FILES.len())
            .map(|i| Some(open(&vol, i, true)))
            .collect();
        let mut sut = Sut {
            files,
            readers: (0..FILES.len()).map(|_| None).collect(),
            background: None,
            vol,
            with_background,
            background_checked: std::cell::Cell::new(0),
            writer_cached: vec![false; FILES.len()],
            reader_cached: vec![false; FILES.len()],
            reads_by_mode: std::cell::Cell::new([0; 2]),
            via: Via::Writer,
            model: vec![ModelFile::default(); FILES.len()],
            trace: Vec::new(),
            zero_range_unsupported: false,
            step: 0,
            remote,
        };
        sut.start_background();
        sut
    }

    fn start_background(&mut self) {
        if self.with_background {
            let paths = FILES.iter().map(|n| self.vol.path(n)).collect();
            self.background = Some(Background::start(paths, self.trace.len() as u64));
        }
    }

    /// The read-write descriptor of `f`; open it with [`Sut::writer`] first.
    fn file(&self, f: usize) -> &File {
        self.files[f].as_ref().expect("file is open")
    }

    /// Opens the read-write descriptor of `f` if it was closed.
    fn writer(&mut self, f: usize) -> &File {
        if self.files[f].is_none() {
            self.open_writer(f);
        }
        self.file(f)
    }

    /// Opens (again) the read-write descriptor of `f`.
    fn open_writer(&mut self, f: usize) {
        self.files[f] = None;
        self.files[f] = Some(open(&self.vol, f, false));
        self.writer_cached[f] = self.readers[f].is_some() && self.reader_cached[f];
    }

    /// The descriptor the checking reads of `f` go through now (see [`Via`]).
    fn read_fd(&self, f: usize) -> ReadFd<'_> {
        let (writer, kept) = (self.files[f].as_ref(), self.readers[f].as_ref());
        let (fd, cached) = match self.via {
            Via::Writer if writer.is_some() => (writer, self.writer_cached[f]),
            Via::Writer | Via::Kept if kept.is_some() => (kept, self.reader_cached[f]),
            _ => (None, writer.is_none() || self.writer_cached[f]),
        };
        let mut n = self.reads_by_mode.get();
        n[usize::from(cached)] += 1;
        self.reads_by_mode.set(n);
        match fd {
            Some(fd) => ReadFd::Borrowed(fd),
            None => ReadFd::Fresh(
                File::open(self.vol.path(FILES[f]))
                    .unwrap_or_else(|e| panic!("open {} read-only: {e}", FILES[f])),
            ),
        }
    }

    /// The model matches the files again (an operation's changes are modelled): background
    /// reads from now on are checked against it.
    fn quiet(&self) {
        if let Some(b) = &self.background {
            b.quiet();
        }
    }

    /// An operation begins: the background reads of the quiet period that ends must match
    /// the model as it is.
    fn check_background(&self, ctx: &str) {
        let Some(b) = &self.background else {
            return;
        };
        let (seen, errors) = b.begin();
        if let Some(e) = errors.first() {
            panic!("{ctx}: {e}");
        }
        self.background_checked
            .set(self.background_checked.get() + seen.len());
        for (f, off, len, got) in seen {
            let want = self.model[f].read(off, len);
            if let Some(i) = common::first_difference(&got, &want) {
                panic!(
                    "{ctx}: background read of {} {off}+{len} through a fresh read-only open, \
                     begun and ended with no operation under way, returned {} bytes, model has {} \
                     (size {}); first difference at file offset {}: got {:?}, want {:?}",
                    FILES[f],
                    got.len(),
                    want.len(),
                    self.model[f].size,
                    off + i as u64,
                    &got[i..got.len().min(i + 8)],
                    &want[i..want.len().min(i + 8)],
                );
            }
        }
    }

    fn resolve(&self, p: Place, f: usize) -> u64 {
        let m = &self.model[f];
        let at: i128 = match p {
            Place::In { w, o } => (WINDOWS[w] + o) as i128,
            Place::Cut { w, k, d } => (WINDOWS[w] + k * CUT) as i128 + d as i128,
            Place::Data { pick, edge, d } => {
                let base = if m.runs.is_empty() {
                    0
                } else {
                    let (s, v) = m.runs.iter().nth(pick.index(m.runs.len())).unwrap();
                    match edge {
                        Edge::Start => *s,
                        Edge::Mid => s + v.len() as u64 / 2,
                        Edge::End => s + v.len() as u64,
                    }
                };
                base as i128 + d as i128
            }
            Place::Eof { d } => m.size as i128 + d as i128,
        };
        at.max(0) as u64
    }

    /// Reads `[off, off + len)` through the mount and compares it with the model.
    fn check_range(&self, f: usize, off: u64, len: u64, ctx: &str) {
        self.quiet();
        if let Some(b) = &self.background {
            b.hint(f, off, len);
        }
        let fd = self.read_fd(f);
        let mut at = off;
        let end = off.saturating_add(len);
        while at < end {
            let n = READ_PIECE.min(end - at);
            let got = pread_full(&fd, at, n)
                .unwrap_or_else(|e| panic!("{ctx}: pread {} {at}+{n}: {e}", FILES[f]));
            let want = self.model[f].read(at, n);
            if let Some(i) = common::first_difference(&got, &want) {
                let i = i as u64;
                let bad = at + i;
                let near: Vec<(u64, u64)> = self.model[f]
                    .spans()
                    .into_iter()
                    .filter(|&(s, e)| s < bad + 2 * MIB && e + 2 * MIB > bad)
                    .collect();
                panic!(
                    "{ctx}: pread {} {at}+{n} returned {} bytes, model has {} (size {}); first \
                     difference at file offset {bad}: got {:?}, want {:?}; modelled runs near \
                     it: {near:?}",
                    FILES[f],
                    got.len(),
                    want.len(),
                    self.model[f].size,
                    &got[i as usize..got.len().min(i as usize + 8)],
                    &want[i as usize..want.len().min(i as usize + 8)],
                );
            }
            if (got.len() as u64) < n {
                break;
            }
            at += n;
        }
    }

    /// Reads `[a, b)` widened by MARGIN; a long range only around its edges.
    fn check_around(&self, f: usize, a: u64, b: u64, ctx: &str) {
        let (a, b) = (a.saturating_sub(MARGIN), b.saturating_add(MARGIN));
        if b - a <= 2 * MIB {
            self.check_range(f, a, b - a, ctx);
        } else {
            self.check_range(f, a, 64 * KIB, ctx);
            self.check_range(f, b - 64 * KIB, 64 * KIB, ctx);
        }
    }

    /// After `[a, b)` was cleared: its edges, and where data was before (`old`, from
    /// [`ModelFile::spans_in`] before the operation) even when the range is too long to read.
    fn check_cleared(&self, f: usize, a: u64, b: u64, old: &[(u64, u64)], ctx: &str) {
        self.check_around(f, a, b, ctx);
        for &(s, e) in old {
            self.check_range(f, s, (e - s).min(MIB), ctx);
        }
    }

    /// fstat of every file through the descriptor reads go through now, or stat(2) of its
    /// path when that would be a fresh one.
    fn check_sizes(&self, ctx: &str) {
        self.quiet();
        for (f, name) in FILES.iter().enumerate() {
            let size = match self.via {
                Via::Fresh => std::fs::metadata(self.vol.path(name)),
                _ => self.read_fd(f).metadata(),
            }
            .unwrap_or_else(|e| panic!("{ctx}: stat {name}: {e}"))
            .len();
            assert_eq!(size, self.model[f].size, "{ctx}: st_size of {name}");
        }
    }

    /// The edges of every run and the end of file.
    fn sweep(&self, ctx: &str) {
        for f in 0..FILES.len() {
            for (s, e) in self.model[f].spans() {
                self.check_range(f, s.saturating_sub(MARGIN), 2 * MARGIN, ctx);
                self.check_range(f, e.saturating_sub(MARGIN), 2 * MARGIN, ctx);
            }
            let size = self.model[f].size;
            self.check_range(f, size.saturating_sub(64 * KIB), 128 * KIB, ctx);
        }
    }

    /// Walks the whole file with SEEK_DATA/SEEK_HOLE: data may be reported over zeros, a hole
    /// never over data, and no offset at or past the end is data or hole.
    fn seek_walk(&self, f: usize, ctx: &str) {
        self.quiet();
        let fd = self.read_fd(f);
        let (m, file, name) = (&self.model[f], &*fd, FILES[f]);
        for whence in [libc::SEEK_DATA, libc::SEEK_HOLE] {
            let e = lseek(file, m.size, whence).expect_err("seek at the end of file");
            assert_eq!(e.raw_os_error(), Some(libc::ENXIO), "{ctx}: {name}");
        }
        let mut p = 0;
        let mut steps = 0;
        while p < m.size {
            steps += 1;
            assert!(steps < 1_000_000, "{ctx}: seek walk of {name} does not end");
            let d = match lseek(file, p, libc::SEEK_DATA) {
                Ok(d) => {
                    assert!(
                        d >= p && d < m.size,
                        "{ctx}: SEEK_DATA {name} from {p} = {d} (size {})",
                        m.size
                    );
                    d
                }
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => m.size,
                Err(e) => panic!("{ctx}: SEEK_DATA {name} from {p}: {e}"),
            };
            if let Some(x) = m.first_nonzero(p, d) {
                panic!("{ctx}: SEEK_DATA {name} from {p} = {d} skips data at {x}");
            }
            if d >= m.size {
                break;
            }
            let h = lseek(file, d, libc::SEEK_HOLE)
                .unwrap_or_else(|e| panic!("{ctx}: SEEK_HOLE {name} from {d}: {e}"));
            assert!(
                h >= d && h <= m.size,
                "{ctx}: SEEK_HOLE {name} from {d} = {h} (size {})",
                m.size
            );
            p = h;
        }
    }

    /// Everything: sizes, whole files (or all runs and the edges and middle of every hole),
    /// and a SEEK_DATA/SEEK_HOLE walk.
    fn check_all(&self, ctx: &str) {
        self.check_sizes(ctx);
        for f in 0..FILES.len() {
            let m = &self.model[f];
            if m.size <= WHOLE_FILE_LIMIT {
                self.check_range(f, 0, m.size + 1, ctx);
            } else {
                let mut holes = Vec::new();
                let mut prev = 0;
                for (s, e) in m.spans() {
                    if s > prev {
                        holes.push((prev, s));
                    }
                    self.check_range(f, s.saturating_sub(MARGIN), e - s + 2 * MARGIN, ctx);
                    prev = e;
                }
                if m.size > prev {
                    holes.push((prev, m.size));
                }
                // Each hole's start, middle and end.
                for (a, b) in holes {
                    let n = (b - a).min(64 * KIB);
                    self.check_range(f, a, n, ctx);
                    self.check_range(f, a + (b - a) / 2 - n / 2, n, ctx);
                    self.check_range(f, b - n, n, ctx);
                }
                self.check_range(f, m.size - 64 * KIB, 128 * KIB, ctx);
            }
            self.seek_walk(f, ctx);
        }
    }

    fn close_all(&mut self) {
        self.background = None;
        for f in self.files.iter_mut().chain(&mut self.readers) {
            *f = None;
        }
    }

    fn reopen_all(&mut self) {
        for i in 0..FILES.len() {
            self.open_writer(i);
        }
    }

    fn remount(&mut self, ctx: &str) {
        self.close_all();
        self.vol.remount();
        self.reopen_all();
        self.start_background();
        self.check_all(&format!("{ctx}, after remount"));
    }

    /// Unmounts (which publishes), attaches the volume into a new store directory and mounts
    /// that, then compares everything: every byte comes from the bucket.
    fn reattach(&mut self, ctx: &str) {
        assert!(self.remote.is_some(), "{ctx}: attach of a local volume");
        self.close_all();
        self.vol.unmount();
        if let Some(remote) = self.remote.as_mut() {
            remote.keep_log(&self.vol);
            self.vol = remote.attach_new();
        }
        self.reopen_all();
        self.start_background();
        self.check_all(&format!("{ctx}, after a fresh attach"));
    }

    /// `dedupfs sync MOUNTPOINT`, then compares everything through a read-only mount of a
    /// fresh attach (the checks read through it while it stands in for the volume).
    fn check_published(&mut self, ctx: &str) {
        self.sync(false, ctx);
        self.close_all();
        let Some(remote) = self.remote.as_mut() else {
            panic!("{ctx}: attach of a local volume");
        };
        let mut other = remote.attach_new_with(&["-o", "ro"]);
        std::mem::swap(&mut self.vol, &mut other);
        let checked = catch_unwind(AssertUnwindSafe(|| {
            self.check_all(&format!(
                "{ctx}, through a read-only mount of a fresh attach"
            ))
        }));
        std::mem::swap(&mut self.vol, &mut other);
        if let Err(p) = checked {
            std::panic::resume_unwind(p);
        }
        other.unmount();
        if let Some(remote) = self.remote.as_mut() {
            remote.keep_log(&other);
        }
        self.reopen_all();
        self.start_background();
    }

    /// `dedupfs sync MOUNTPOINT`, kill -9 of the daemon, a mount of the same store again,
    /// and everything compared.
    fn crash_after_sync(&mut self, ctx: &str) {
        self.sync(false, ctx);
        self.close_all();
        self.vol.kill9();
        if let Some(r) = self.remote.as_mut() {
            r.crashes += 1;
        }
        self.vol.remount();
        self.reopen_all();
        self.start_background();
        self.check_all(&format!("{ctx}, after the mount that followed kill -9"));
    }

    /// `dedupfs sync MOUNTPOINT`; with `settle`, then waits until no pack file is left in the
    /// store directory (all of them uploaded, the cache has no room for any).
    fn sync(&mut self, settle: bool, ctx: &str) {
        let Some(remote) = self.remote.as_mut() else {
            panic!("{ctx}: dedupfs sync of a local volume");
        };
        let out = common::remote::sync(&remote.rig.env, &self.vol.mnt);
        assert!(
            out.status.success(),
            "{ctx}: {}\n--- daemon log ---\n{}",
            common::output_text(&out),
            self.vol.log()
        );
        remote.syncs += 1;
        if settle {
            let packs = self.vol.store.join("packs");
            let local = || {
                std::fs::read_dir(&packs)
                    .map(|d| {
                        d.flatten()
                            .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
                            .count()
                    })
                    .unwrap_or(0)
            };
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            while local() > 0 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            let left = local();
            assert!(
                left == 0,
                "{ctx}: {left} pack files still local {SETTLE_TIMEOUT:?} after a publication, \
                 with a cache that has no room for whole packs\n--- daemon log ---\n{}",
                self.vol.log()
            );
            remote.settled += 1;
        }
    }

    fn apply(&mut self, step: usize, op: Op) {
        self.check_background(&format!("step {step}: before {op:?}"));
        self.via = match op {
            Op::Read { via, .. } => via,
            _ => VIAS[step % VIAS.len()],
        };
        match op {
            Op::Write { f, at, len, seed } => {
                let off = self.resolve(at, f);
                let ctx = self.note(step, format!("pwrite {} {off}+{len} seed {seed}", FILES[f]));
                let data = content(seed, len);
                self.writer(f)
                    .write_all_at(&data, off)
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                self.model[f].write(off, &data);
                self.check_around(f, off, off + len, &ctx);
            }
            Op::Truncate { f, to } => {
                let old = self.model[f].size;
                let size = match to {
                    Size::Zero => 0,
                    Size::At(p) => self.resolve(p, f),
                    Size::Past4G(x) => 4 * GIB + x,
                };
                let ctx = self.note(step, format!("ftruncate {} {size} (was {old})", FILES[f]));
                self.writer(f)
                    .set_len(size)
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                self.model[f].truncate(size);
                self.check_around(f, size, size, &ctx);
                self.check_around(f, old, old, &ctx);
            }
            Op::Punch { f, at, len } => {
                let off = self.resolve(at, f);
                let ctx = self.note(step, format!("punch {} {off}+{len}", FILES[f]));
                let old = self.model[f].spans_in(off, off + len);
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                fallocate(self.writer(f), mode, off, len).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                self.model[f].zero(off, off + len);
                self.check_cleared(f, off, off + len, &old, &ctx);
            }
            Op::ZeroRange { f, at, len, keep } => {
                let off = self.resolve(at, f);
                let ctx = self.note(
                    step,
                    format!(
                        "zero-range{} {} {off}+{len}",
                        if keep { " keep-size" } else { "" },
                        FILES[f]
                    ),
                );
                let old = self.model[f].spans_in(off, off + len);
                let mut mode = libc::FALLOC_FL_ZERO_RANGE;
                if keep {
                    mode |= libc::FALLOC_FL_KEEP_SIZE;
                }
                match fallocate(self.writer(f), mode, off, len) {
                    Ok(()) => {
                        let m = &mut self.model[f];
                        m.zero(off, off + len);
                        if !keep {
                            m.size = m.size.max(off + len);
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                        if !self.zero_range_unsupported {
                            eprintln!("FALLOC_FL_ZERO_RANGE not supported here: {e}");
                        }
                        self.zero_range_unsupported = true;
                    }
                    Err(e) => panic!("{ctx}: {e}"),
                }
                self.check_cleared(f, off, off + len, &old, &ctx);
            }
            Op::Allocate { f, at, len, keep } => {
                let off = self.resolve(at, f);
                let ctx = self.note(
                    step,
                    format!(
                        "fallocate{} {} {off}+{len}",
                        if keep { " keep-size" } else { "" },
                        FILES[f]
                    ),
                );
                let mode = if keep { libc::FALLOC_FL_KEEP_SIZE } else { 0 };
                fallocate(self.writer(f), mode, off, len).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                if !keep {
                    let m = &mut self.model[f];
                    m.size = m.size.max(off + len);
                }
                self.check_around(f, off, off + len, &ctx);
            }
            Op::Copy {
                from,
                at_in,
                to,
                at_out,
                len,
            } => {
                let off_in = self.resolve(at_in, from);
                let mut off_out = self.resolve(at_out, to);
                let src_size = self.model[from].size;
                let n = len.min(src_size.saturating_sub(off_in));
                if from == to && n > 0 && off_in < off_out + n && off_out < off_in + n {
                    // Overlapping copies within a file are EINVAL: copy just past the source.
                    off_out = off_in + n + off_out % 4096;
                }
                let ctx = self.note(
                    step,
                    format!(
                        "copy_file_range {} {off_in}+{len} -> {} {off_out} (source size {src_size})",
                        FILES[from], FILES[to]
                    ),
                );
                self.writer(from);
                self.writer(to);
                let mut done = 0;
                while done < n {
                    let c = copy_file_range(
                        self.file(from),
                        off_in + done,
                        self.file(to),
                        off_out + done,
                        len - done,
                    )
                    .unwrap_or_else(|e| panic!("{ctx}: after {done} bytes: {e}"));
                    if c == 0 {
                        break;
                    }
                    done += c;
                }
                if n == 0 {
                    let c = copy_file_range(self.file(from), off_in, self.file(to), off_out, len)
                        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    assert_eq!(c, 0, "{ctx}: copy from at or past the end of file");
                }
                assert_eq!(done, n, "{ctx}: bytes copied");
                let data = self.model[from].read(off_in, n);
                self.model[to].write(off_out, &data);
                self.check_around(to, off_out, off_out + n, &ctx);
                self.check_around(from, off_in, off_in + n, &ctx);
            }
            Op::Read { f, at, len, via: _ } => {
                let off = self.resolve(at, f);
                let ctx = self.note(step, format!("pread {} {off}+{len}", FILES[f]));
                self.check_range(f, off, len, &ctx);
            }
            Op::Seek { f, at } => {
                let off = self.resolve(at, f);
                let ctx = self.note(
                    step,
                    format!("lseek {} {off} SEEK_HOLE, SEEK_DATA", FILES[f]),
                );
                self.check_seek(f, off, &ctx);
            }
            Op::Fsync { f, data_only } => {
                let ctx = self.note(
                    step,
                    format!(
                        "{} {}",
                        if data_only { "fdatasync" } else { "fsync" },
                        FILES[f]
                    ),
                );
                let r = if data_only {
                    self.writer(f).sync_data()
                } else {
                    self.writer(f).sync_all()
                };
                r.unwrap_or_else(|e| panic!("{ctx}: {e}"));
            }
            Op::DropCache { f, global: true } => {
                let ctx = self.note(step, "echo 1 > /proc/sys/vm/drop_caches".to_string());
                if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", b"1\n") {
                    // Not root: drop this file's pages instead.
                    eprintln!("{ctx}: {e}; fadvise DONTNEED {} instead", FILES[f]);
                    fadvise_dontneed(&self.read_fd(f), &ctx);
                }
            }
            Op::DropCache { f, global: false } => {
                let ctx = self.note(step, format!("fadvise DONTNEED {}", FILES[f]));
                fadvise_dontneed(&self.read_fd(f), &ctx);
            }
            Op::Reopen { f } => {
                let ctx = self.note(step, format!("close and reopen {}", FILES[f]));
                self.open_writer(f);
                let size = self.model[f].size;
                self.check_range(f, size.saturating_sub(64 * KIB), 128 * KIB, &ctx);
            }
            Op::CloseWriter { f } => {
                self.note(
                    step,
                    format!("close the read-write descriptor of {}", FILES[f]),
                );
                self.files[f] = None;
            }
            Op::OpenReader { f, close_writer } => {
                let ctx = self.note(
                    step,
                    format!(
                        "{}open a kept read-only {}",
                        if close_writer {
                            "close the read-write descriptor, "
                        } else {
                            ""
                        },
                        FILES[f]
                    ),
                );
                if close_writer {
                    self.files[f] = None;
                }
                self.readers[f] = None;
                let r =
                    File::open(self.vol.path(FILES[f])).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                self.readers[f] = Some(r);
                self.reader_cached[f] = self.files[f].is_none() || self.writer_cached[f];
                let size = self.model[f].size;
                self.check_range(f, size.saturating_sub(64 * KIB), 128 * KIB, &ctx);
            }
            Op::CloseReader { f } => {
                self.note(step, format!("close the kept read-only {}", FILES[f]));
                self.readers[f] = None;
            }
            Op::Remount => {
                let ctx = self.note(step, "unmount, mount again".to_string());
                self.remount(&ctx);
            }
            Op::Sync { settle } => {
                let ctx = self.note(
                    step,
                    format!(
                        "dedupfs sync{}",
                        if settle {
                            ", wait for the local packs to be evicted"
                        } else {
                            ""
                        }
                    ),
                );
                self.sync(settle, &ctx);
            }
            Op::AttachReadOnly => {
                let ctx = self.note(
                    step,
                    "dedupfs sync, attach into a new store directory, mount that read-only, \
                     compare"
                        .to_string(),
                );
                self.check_published(&ctx);
            }
            Op::Crash => {
                let ctx = self.note(
                    step,
                    "dedupfs sync, kill -9 the daemon, mount the store again".to_string(),
                );
                self.crash_after_sync(&ctx);
            }
            Op::Reattach => {
                let ctx = self.note(
                    step,
                    "unmount, attach into a new store directory, mount that".to_string(),
                );
                self.reattach(&ctx);
            }
        }
        let ctx = format!("step {step}: after {op:?}");
        self.check_sizes(&ctx);
        if (step + 1).is_multiple_of(SWEEP_EVERY) {
            self.sweep(&ctx);
        }
    }

    /// SEEK_HOLE and SEEK_DATA from `off`: a reported hole must read as zeros in the model up
    /// to where SEEK_DATA finds data again; SEEK_DATA must not skip data.
    fn check_seek(&self, f: usize, off: u64, ctx: &str) {
        self.quiet();
        let fd = self.read_fd(f);
        let (m, file, name) = (&self.model[f], &*fd, FILES[f]);
        let data_at = |p: u64| match lseek(file, p, libc::SEEK_DATA) {
            Ok(d) => {
                assert!(
                    d >= p && d < m.size,
                    "{ctx}: SEEK_DATA {name} from {p} = {d} (size {})",
                    m.size
                );
                d
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => m.size,
            Err(e) => panic!("{ctx}: SEEK_DATA {name} from {p}: {e}"),
        };
        if off >= m.size {
            for whence in [libc::SEEK_DATA, libc::SEEK_HOLE] {
                let e = lseek(file, off, whence)
                    .expect_err("lseek SEEK_DATA/SEEK_HOLE at or past the end of file");
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::ENXIO),
                    "{ctx}: {name} at {off}"
                );
            }
            return;
        }
        let d = data_at(off);
        if let Some(x) = m.first_nonzero(off, d) {
            panic!("{ctx}: SEEK_DATA {name} from {off} = {d} skips data at {x}");
        }
        let h = lseek(file, off, libc::SEEK_HOLE)
            .unwrap_or_else(|e| panic!("{ctx}: SEEK_HOLE {name} from {off}: {e}"));
        assert!(
            h >= off && h <= m.size,
            "{ctx}: SEEK_HOLE {name} from {off} = {h} (size {})",
            m.size
        );
        if h < m.size {
            let d = data_at(h);
            assert!(
                d > h,
                "{ctx}: SEEK_HOLE {name} = {h} but SEEK_DATA from it = {d}"
            );
            if let Some(x) = m.first_nonzero(h, d) {
                panic!("{ctx}: hole {h}..{d} reported in {name} over data at {x}");
            }
            // And the hole reads as zeros through the mount (its first 64 KiB).
            self.check_range(f, h, (d - h).min(64 * KIB), ctx);
        }
    }

    /// Records a concrete operation; returns the context string for its assertions.
    fn note(&mut self, step: usize, what: String) -> String {
        let line = format!("step {step}: {what} [reads via {:?}]", self.via);
        self.trace.push(line.clone());
        line
    }
}

// ---------------------------------------------------------------- running a case

fn execute(
    sut: &mut Option<Sut>,
    chunks: Chunks,
    background: bool,
    remote: Option<(&Arc<RemoteRig>, Setup)>,
    ops: &[Option<Op>],
) {
    let s = sut.insert(Sut::new(chunks, background, remote));
    for (step, op) in ops.iter().enumerate() {
        if let Some(op) = op {
            s.step = step;
            s.apply(step, *op);
        }
    }
    let runs: usize = s.model.iter().map(|m| m.runs.len()).sum();
    let sizes: Vec<u64> = s.model.iter().map(|m| m.size).collect();
    eprintln!(
        "case: {chunks:?} chunks, {} operations{}, {} modelled runs, sizes {sizes:?}{}",
        ops.iter().flatten().count(),
        if background {
            ", background reader"
        } else {
            ""
        },
        runs,
        if s.zero_range_unsupported {
            ", ZERO_RANGE unsupported"
        } else {
            ""
        }
    );
    s.step = ops.len();
    s.note(ops.len(), "end: compare everything".to_string());
    s.check_background("end");
    s.check_all("end, files open");
    s.note(
        ops.len(),
        "end: close, unmount, mount again, compare".to_string(),
    );
    s.remount("end");
    s.check_background("end, after remount");
    if s.remote.is_some() {
        s.note(
            ops.len(),
            "end: close, unmount, attach into a new store directory, mount that, compare"
                .to_string(),
        );
        s.reattach("end");
        s.check_background("end, after a fresh attach");
        if let Some(r) = s.remote.as_mut() {
            r.report(&s.vol);
        }
    }
    let [direct, cached] = s.reads_by_mode.get();
    eprintln!(
        "  checking reads: {direct} direct, {cached} through the page cache; background reads \
         checked: {}",
        s.background_checked.get()
    );
    s.close_all();
    s.vol.unmount();
    if let Some(r) = &s.remote {
        // The last store directory holds what was published: its metadata must agree with
        // its chunks, and every pack object it names must hold the bytes uploaded.
        let store = s.vol.store.to_str().unwrap();
        let out = common::remote::dedupfs(&r.rig.env, &["fsck", store, "--verify-data"]);
        assert!(
            out.status.success(),
            "end: dedupfs fsck --verify-data of the last store directory: {}",
            common::output_text(&out)
        );
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "<non-string panic>".to_string())
}

thread_local! {
    /// The step at which the last failing case stopped (for the report of the minimal case).
    static FAILED_AT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs one case (on a remote volume with `remote`); a failure carries the concrete
/// operations that ran.
fn run_case(
    chunks: Chunks,
    background: bool,
    remote: Option<(&Arc<RemoteRig>, Setup)>,
    ops: &[Option<Op>],
) -> Result<(), TestCaseError> {
    let mut sut = None;
    let r = catch_unwind(AssertUnwindSafe(|| {
        execute(&mut sut, chunks, background, remote, ops)
    }));
    let Err(p) = r else {
        return Ok(());
    };
    let trace = sut.as_ref().map_or_else(Vec::new, |s| s.trace.clone());
    FAILED_AT.set(sut.as_ref().map_or(0, |s| s.step));
    // Close the files, so that the daemon exits as soon as Drop detaches the mount.
    if let Some(s) = sut.as_mut() {
        s.close_all();
    }
    drop(sut);
    Err(TestCaseError::fail(format!(
        "{}\nconcrete operations run (the last one failed):\n  {}",
        panic_message(&*p),
        trace.join("\n  ")
    )))
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

#[test]
fn random_operations_on_sparse_files_match_the_model() {
    if !fuse_available() {
        return;
    }
    let cases = (chunks(), any::<bool>(), ops(op(), MIN_OPS..=MAX_OPS))
        .prop_map(|(chunks, background, ops)| (chunks, background, None, ops));
    run_model(
        "random_operations_on_sparse_files_match_the_model",
        DEFAULT_CASES,
        cases,
        None,
    );
}

/// The remote variant: the same files and operations on an encrypted remote volume in a
/// Garage server, whose local cache has no room for whole packs, plus publications and fresh
/// attaches (see [`RemoteRig`]).
#[test]
fn random_operations_on_a_remote_encrypted_volume_match_the_model() {
    let Some(rig) = RemoteRig::start() else {
        return;
    };
    let cases = (
        chunks(),
        any::<bool>(),
        setup(),
        ops(remote_op(), REMOTE_MIN_OPS..=REMOTE_MAX_OPS),
    )
        .prop_map(|(chunks, background, setup, ops)| (chunks, background, Some(setup), ops));
    run_model(
        "random_operations_on_a_remote_encrypted_volume_match_the_model",
        REMOTE_CASES,
        cases,
        Some(&Arc::new(rig)),
    );
}

/// Runs the cases of `strategy` (the seed, case count and shrinking from the environment),
/// on local volumes or, with `rig`, on remote ones; a failure reports the seed and the
/// minimal failing case.
fn run_model(
    test_name: &'static str,
    default_cases: u32,
    strategy: impl Strategy<Value = (Chunks, bool, Option<Setup>, Vec<Option<Op>>)>,
    rig: Option<&Arc<RemoteRig>>,
) {
    let seed = env_u64("DEDUPFS_MODEL_SEED").unwrap_or_else(rand::random);
    eprintln!("{test_name}: seed {seed} (rerun with DEDUPFS_MODEL_SEED={seed})");
    let config = Config {
        cases: env_u64("PROPTEST_CASES").map_or(default_cases, |n| n as u32),
        max_shrink_time: env_u64("PROPTEST_MAX_SHRINK_TIME")
            .map_or(DEFAULT_SHRINK_MS, |n| n as u32),
        max_shrink_iters: env_u64("PROPTEST_MAX_SHRINK_ITERS")
            .map_or(DEFAULT_SHRINK_ITERS, |n| n as u32),
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        source_file: Some(file!()),
        test_name: Some(test_name),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    match runner.run(&strategy, |(chunks, background, setup, ops)| {
        let remote = rig.zip(setup);
        run_case(chunks, background, remote, &ops)
    }) {
        Ok(()) => {}
        Err(TestError::Fail(why, (chunks, background, setup, ops))) => {
            // The operations up to the failing one; `None`s were removed by shrinking.
            let last = FAILED_AT.get().min(ops.len().saturating_sub(1));
            let listed: Vec<String> = ops[..=last]
                .iter()
                .enumerate()
                .filter_map(|(i, op)| op.map(|op| format!("{i}: {op:?}")))
                .collect();
            panic!(
                "seed {seed} (DEDUPFS_MODEL_SEED={seed}): {why}\nminimal failing case: \
                 {chunks:?} chunks, background reader: {background}{}, {} operations up to the \
                 failing one (later ones never ran):\n  {}",
                setup.map_or_else(String::new, |s| format!(", {s:?}")),
                listed.len(),
                listed.join("\n  ")
            );
        }
        Err(e) => panic!("seed {seed}: {e}"),
    }
}

// Hand-picked sequences: every operation kind, on a file larger than 4 GiB, runs on every run
// of the suite whatever the random draws.

fn at(w: usize, o: u64) -> Place {
    Place::In { w, o }
}

#[test]
fn every_operation_kind_across_the_4_gib_boundary_matches_the_model() {
    if !fuse_available() {
        return;
    }
    let w4 = 4; // the window around 4 GiB
    let ops = [
        Op::Write {
            f: 0,
            at: at(w4, MIB - 1000),
            len: 200 * KIB,
            seed: 1,
        },
        Op::Write {
            f: 1,
            at: at(0, 5),
            len: 150 * KIB,
            seed: 2,
        },
        Op::Copy {
            from: 0,
            at_in: at(w4, MIB - 1000),
            to: 1,
            at_out: at(1, 0),
            len: 200 * KIB,
        },
        Op::Fsync {
            f: 1,
            data_only: false,
        },
        Op::Punch {
            f: 0,
            at: at(w4, MIB - 64),
            len: 128,
        },
        Op::ZeroRange {
            f: 1,
            at: at(0, 70 * KIB),
            len: 3 * KIB,
            keep: true,
        },
        Op::Write {
            f: 0,
            at: Place::Cut {
                w: w4,
                k: 17,
                d: -3,
            },
            len: 6,
            seed: 3,
        },
        Op::DropCache {
            f: 0,
            global: false,
        },
        Op::Read {
            f: 0,
            at: at(w4, MIB - 2000),
            len: 210 * KIB,
            via: Via::Writer,
        },
        // Page-cache reads of a closed file, kept across opens, then changed by a writer
        // opened while a reader is kept (it writes through the page cache).
        Op::CloseWriter { f: 0 },
        Op::Read {
            f: 0,
            at: at(w4, MIB - 2000),
            len: 210 * KIB,
            via: Via::Fresh,
        },
        Op::OpenReader {
            f: 0,
            close_writer: false,
        },
        Op::Read {
            f: 0,
            at: at(w4, MIB - 2000),
            len: 210 * KIB,
            via: Via::Kept,
        },
        Op::Write {
            f: 0,
            at: at(w4, MIB - 100),
            len: 5000,
            seed: 5,
        },
        Op::Read {
            f: 0,
            at: at(w4, MIB - 2000),
            len: 210 * KIB,
            via: Via::Kept,
        },
        Op::DropCache { f: 1, global: true },
        Op::CloseReader { f: 0 },
        Op::Seek { f: 0, at: at(0, 0) },
        Op::Seek {
            f: 0,
            at: at(w4, MIB - 64),
        },
        Op::Copy {
            from: 1,
            at_in: at(0, 0),
            to: 1,
            at_out: at(0, 10 * KIB),
            len: 100 * KIB,
        },
        Op::Truncate {
            f: 1,
            to: Size::Past4G(3),
        },
        Op::ZeroRange {
            f: 2,
            at: at(3, 0),
            len: 5000,
            keep: false,
        },
        Op::Allocate {
            f: 2,
            at: at(w4, 0),
            len: 3 * MIB,
            keep: false,
        },
        Op::Reopen { f: 1 },
        Op::Remount,
        Op::Truncate {
            f: 0,
            to: Size::At(at(w4, MIB + 100)),
        },
        Op::Write {
            f: 0,
            at: Place::Eof { d: 50 },
            len: 10,
            seed: 4,
        },
        Op::Punch {
            f: 1,
            at: at(0, 1),
            len: 2 * GIB,
        },
        Op::Truncate {
            f: 2,
            to: Size::Zero,
        },
    ];
    let ops: Vec<Option<Op>> = ops.into_iter().map(Some).collect();
    if let Err(e) = run_case(Chunks::Default, true, None, &ops) {
        panic!("{e}");
    }
}
