//! Chunk store contract: every `ChunkStore` (local dir, memory, fault-injecting wrapper) must
//! behave the same, or code tested against the in-memory store breaks on the real one.
//!
//! Guards against: a `put` that does not replace a damaged copy (repair silently fails), a
//! missing chunk reported as a generic I/O error instead of `MissingChunk`, `for_each` listing
//! temporary files or missing ids, fault injection that never fires or never clears, and a
//! cache that serves (or keeps) chunk bytes that do not match their name.

use dedupfs::error::FsError;
use dedupfs::hash::ChunkId;
use dedupfs::store::codec::Codec;
use dedupfs::store::{ChunkCache, ChunkStore, FailingStore, LocalDirStore, MemoryStore, PackStore};
use std::collections::BTreeSet;
use std::sync::Arc;

fn blob(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

fn put_blob(store: &dyn ChunkStore, data: &[u8]) -> ChunkId {
    let id = ChunkId::of(data);
    store.put(&id, data).expect("put");
    id
}

fn listed(store: &dyn ChunkStore) -> BTreeSet<ChunkId> {
    let mut out = BTreeSet::new();
    store
        .for_each(&mut |id| assert!(out.insert(id), "{id} listed twice"))
        .expect("for_each");
    out
}

/// The behaviour every chunk store promises. `name` says which store failed.
fn contract(name: &str, store: &dyn ChunkStore) {
    assert!(listed(store).is_empty(), "{name}: a new store is empty");

    // Round trip, including an empty chunk and one larger than any default chunk.
    let mut ids = BTreeSet::new();
    for (seed, len) in [(1, 0), (2, 1), (3, 4096), (4, 70_000), (5, 300_000)] {
        let data = blob(seed, len);
        let id = put_blob(store, &data);
        ids.insert(id);
        assert_eq!(
            &*store.get(&id).expect("get"),
            &data[..],
            "{name}: round trip of {len} bytes"
        );
    }
    // A second put of identical bytes is harmless.
    let again = blob(3, 4096);
    put_blob(store, &again);
    assert_eq!(&*store.get(&ChunkId::of(&again)).unwrap(), &again[..]);

    // for_each lists exactly the ids put.
    assert_eq!(
        listed(store),
        ids,
        "{name}: for_each lists exactly the chunks put"
    );

    // A put of an existing id replaces its bytes (the repair path for a damaged copy).
    let good = blob(6, 5000);
    let id = ChunkId::of(&good);
    store.put(&id, b"damaged copy").unwrap();
    assert_eq!(
        &*store.get(&id).unwrap(),
        b"damaged copy",
        "{name}: store keeps bytes unverified"
    );
    store.put(&id, &good).unwrap();
    assert_eq!(
        &*store.get(&id).unwrap(),
        &good[..],
        "{name}: put replaces an existing chunk"
    );
    ids.insert(id);
    assert_eq!(
        listed(store),
        ids,
        "{name}: a replaced chunk is listed once"
    );

    // Missing chunks.
    let missing = ChunkId::of(b"never stored");
    match store.get(&missing) {
        Err(FsError::MissingChunk { id }) => assert_eq!(id, missing),
        Err(e) => panic!("{name}: get of a missing chunk gave {e:?}, want MissingChunk"),
        Ok(_) => panic!("{name}: get of a missing chunk succeeded"),
    }
    store
        .remove(&missing)
        .unwrap_or_else(|e| panic!("{name}: remove of missing chunk: {e}"));

    // Remove really removes, and twice is fine.
    store.remove(&id).unwrap();
    store.remove(&id).unwrap();
    ids.remove(&id);
    assert!(
        matches!(store.get(&id), Err(FsError::MissingChunk { .. })),
        "{name}: removed chunk is gone"
    );
    assert_eq!(listed(store), ids, "{name}: for_each after remove");

    store.sync().unwrap_or_else(|e| panic!("{name}: sync: {e}"));
    let space = store
        .space()
        .unwrap_or_else(|e| panic!("{name}: space: {e}"));
    assert!(space.total_bytes >= space.free_bytes, "{name}: {space:?}");
    assert!(space.free_bytes >= space.avail_bytes, "{name}: {space:?}");

    // Concurrent puts of distinct and identical chunks from several threads.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || {
                for i in 0..20u64 {
                    let data = blob(1000 + (t * 20 + i) % 40, 2000);
                    put_blob(store, &data);
                }
            });
        }
    });
    for i in 0..40u64 {
        let data = blob(1000 + i, 2000);
        ids.insert(ChunkId::of(&data));
        assert_eq!(
            &*store.get(&ChunkId::of(&data)).unwrap(),
            &data[..],
            "{name}: concurrent put"
        );
    }
    assert_eq!(listed(store), ids, "{name}: for_each after concurrent puts");
}

#[test]
fn local_dir_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalDirStore::open(&dir.path().join("chunks")).unwrap();
    contract("LocalDirStore", &store);
}

#[test]
fn local_dir_store_survives_reopen_and_ignores_leftover_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("chunks");
    let store = LocalDirStore::open(&root).unwrap();
    let data = blob(9, 10_000);
    let id = put_blob(&store, &data);
    store.sync().unwrap();
    drop(store);
    // A crash between write and rename leaves a temp file; it must not be listed as a chunk.
    std::fs::write(
        root.join("tmp").join(format!("{}.1.0", id.to_hex())),
        b"partial",
    )
    .unwrap();
    let store = LocalDirStore::open(&root).unwrap();
    assert_eq!(listed(&store), BTreeSet::from([id]));
    assert_eq!(&*store.get(&id).unwrap(), &data[..]);
    assert_eq!(
        std::fs::read_dir(root.join("tmp")).unwrap().count(),
        0,
        "temp files are cleaned"
    );
}

#[test]
fn pack_store_keeps_the_contract_with_every_codec() {
    for codec in [Codec::default(), Codec::Zstd(9), Codec::Lz4, Codec::None] {
        let dir = tempfile::tempdir().unwrap();
        let store = PackStore::open(dir.path()).unwrap();
        store.set_codec(codec);
        contract(&format!("PackStore({codec})"), &store);
        // The same chunks after a sync and a reopen.
        let before = listed(&store);
        store.sync().unwrap();
        drop(store);
        let store = PackStore::open(dir.path()).unwrap();
        assert_eq!(listed(&store), before, "PackStore({codec}) after reopen");
        assert_eq!(store.codec(), codec, "the codec setting survives a reopen");
    }
}

#[test]
fn pack_store_over_loose_chunks_of_a_format_2_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let loose = LocalDirStore::open(&dir.path().join("chunks")).unwrap();
    let old = blob(77, 50_000);
    let old_id = put_blob(&loose, &old);
    loose.sync().unwrap();
    drop(loose);
    let store = PackStore::open(dir.path()).unwrap();
    assert_eq!(&*store.get(&old_id).unwrap(), &old[..], "loose chunk read");
    assert_eq!(listed(&store), BTreeSet::from([old_id]));
    store.remove(&old_id).unwrap();
    assert!(listed(&store).is_empty(), "loose chunk removed");
    contract("PackStore over loose chunks", &store);
}

#[test]
fn failing_pack_store_without_faults_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = FailingStore::new(Arc::new(PackStore::open(dir.path()).unwrap()));
    contract("FailingStore(PackStore)", &store);
}

#[test]
fn memory_store_keeps_the_contract() {
    contract("MemoryStore", &MemoryStore::new());
}

#[test]
fn failing_store_without_faults_keeps_the_contract() {
    let store = FailingStore::new(Arc::new(MemoryStore::new()));
    contract("FailingStore(MemoryStore)", &store);
}

#[test]
fn failing_store_fails_exactly_the_nth_put() {
    let inner = Arc::new(MemoryStore::new());
    let store = FailingStore::new(inner.clone());
    put_blob(&store, b"before");
    store.fail_nth_put(3);
    put_blob(&store, b"one");
    put_blob(&store, b"two");
    let three = b"three";
    let err = store
        .put(&ChunkId::of(three), three)
        .expect_err("third put fails");
    assert!(
        matches!(err, FsError::Io(_)),
        "injected fault is an I/O error: {err:?}"
    );
    assert_eq!(err.errno(), libc::EIO);
    assert!(
        matches!(
            store.get(&ChunkId::of(three)),
            Err(FsError::MissingChunk { .. })
        ),
        "failed put stored nothing"
    );
    // The fault fires once only.
    put_blob(&store, three);
    put_blob(&store, b"four");
    assert_eq!(inner.len(), 5);
    assert_eq!(store.puts(), 6, "every attempted put is counted");
}

#[test]
fn failing_store_fails_the_nth_sync_once() {
    let store = FailingStore::new(Arc::new(MemoryStore::new()));
    store.fail_nth_sync(2);
    store.sync().unwrap();
    assert_eq!(
        store.sync().expect_err("second sync fails").errno(),
        libc::EIO
    );
    store.sync().unwrap();
}

#[test]
fn full_failing_store_reports_no_space_until_cleared() {
    let inner = Arc::new(MemoryStore::new());
    let store = FailingStore::new(inner.clone());
    store.set_full(true);
    let data = b"does not fit";
    let err = store.put(&ChunkId::of(data), data).expect_err("full disk");
    assert!(matches!(err, FsError::NoSpace), "{err:?}");
    assert_eq!(err.errno(), libc::ENOSPC);
    assert!(inner.is_empty(), "nothing stored while full");
    store.set_full(false);
    put_blob(&store, data);
    assert_eq!(&*store.get(&ChunkId::of(data)).unwrap(), data);
}

/// Stores `bad` under the name of `good` in a memory store, behind a cache.
fn corrupted_cache(good: &[u8], bad: &[u8]) -> (Arc<MemoryStore>, ChunkCache, ChunkId) {
    let store = Arc::new(MemoryStore::new());
    let id = ChunkId::of(good);
    store.put(&id, bad).unwrap();
    let cache = ChunkCache::new(store.clone(), 1 << 20);
    (store, cache, id)
}

#[test]
fn cache_refuses_corrupted_chunk_and_never_caches_it() {
    let good = blob(11, 8192);
    let mut bad = good.clone();
    bad[4000] ^= 0x40; // same length, one bit flipped
    let (store, cache, id) = corrupted_cache(&good, &bad);
    for _ in 0..3 {
        match cache.get(&id, good.len() as u64) {
            Err(FsError::CorruptChunk { id: got }) => assert_eq!(got, id),
            Err(e) => panic!("want CorruptChunk, got {e:?}"),
            Ok(_) => panic!("corrupted chunk was served"),
        }
        assert_eq!(cache.cached_bytes(), 0, "a corrupted chunk is never cached");
    }
    assert_eq!(FsError::CorruptChunk { id }.errno(), libc::EIO);
    // Repair by putting the right bytes: the next read is served and cached.
    store.put(&id, &good).unwrap();
    assert_eq!(&**cache.get(&id, good.len() as u64).unwrap(), &good[..]);
    assert_eq!(cache.cached_bytes(), good.len());
}

#[test]
fn cache_reports_missing_chunk() {
    let store = Arc::new(MemoryStore::new());
    let cache = ChunkCache::new(store, 1 << 20);
    let id = ChunkId::of(b"absent");
    assert!(matches!(
        cache.get(&id, 6),
        Err(FsError::MissingChunk { .. })
    ));
    assert_eq!(cache.cached_bytes(), 0);
}

#[test]
fn chunks_of_the_format_1_layout_are_read_listed_and_removed() {
    // Format 1 stores kept chunks at xx/yy/<hex>; format 2 writes xx/<hex> and still reads,
    // lists and removes the old ones.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("chunks");
    let store = LocalDirStore::open(&root).unwrap();
    let data = blob(14, 30_000);
    let id = ChunkId::of(&data);
    let hex = id.to_hex();
    let old = root.join(&hex[..2]).join(&hex[2..4]).join(&hex);
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::write(&old, &data).unwrap();
    assert!(!store.path_of(&id).exists());
    assert_eq!(&*store.get(&id).unwrap(), &data[..]);
    assert_eq!(listed(&store), BTreeSet::from([id]));
    store.remove(&id).unwrap();
    assert!(!old.exists());
    assert!(matches!(store.get(&id), Err(FsError::MissingChunk { .. })));
}

#[test]
fn corrupted_chunk_file_on_disk_is_refused_by_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalDirStore::open(&dir.path().join("chunks")).unwrap());
    let good = blob(12, 20_000);
    let id = put_blob(&*store, &good);
    let path = store.path_of(&id);
    let mut bad = std::fs::read(&path).unwrap();
    bad[123] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let cache = ChunkCache::new(store.clone(), 1 << 20);
    assert!(matches!(
        cache.get(&id, good.len() as u64),
        Err(FsError::CorruptChunk { .. })
    ));
    assert_eq!(cache.cached_bytes(), 0);
}

#[test]
fn truncated_chunk_file_gives_chunk_length_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalDirStore::open(&dir.path().join("chunks")).unwrap());
    let good = blob(13, 20_000);
    let id = put_blob(&*store, &good);
    let path = store.path_of(&id);
    let cache = ChunkCache::new(store.clone(), 1 << 20);
    for cut in [10_000u64, 0] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        match cache.get(&id, good.len() as u64) {
            Err(FsError::ChunkLength {
                id: got,
                expected,
                actual,
            }) => {
                assert_eq!((got, expected, actual), (id, good.len() as u64, cut));
            }
            Err(e) => panic!("truncated to {cut}: want ChunkLength, got {e:?}"),
            Ok(_) => panic!("truncated to {cut}: chunk was served"),
        }
        assert_eq!(cache.cached_bytes(), 0);
    }
    assert_eq!(
        FsError::ChunkLength {
            id,
            expected: 1,
            actual: 0
        }
        .errno(),
        libc::EIO
    );
}
