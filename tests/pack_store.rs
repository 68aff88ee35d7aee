//! The pack store's own promises, beyond the store contract: what survives a crash (only what
//! `sync` made durable; a torn tail is cut, never appended after), a lost index rebuilt from
//! the packs, compaction giving dead bytes back without losing a live chunk, compression
//! where it pays, and damage (a flipped byte, a truncated or missing pack) reported by the
//! cache and by the pack check rather than served.
//!
//! Guards against: chunks the index names but whose bytes were never synced, appends after
//! garbage, a compaction that deletes a pack still holding a live chunk, a rebuild that misses
//! chunks, and damaged records served as data.

mod common;

use common::pack_files;
use dedupfs::error::FsError;
use dedupfs::hash::ChunkId;
use dedupfs::store::codec::Codec;
use dedupfs::store::compact::{compact, remove_unknown_packs, verify_packs};
use dedupfs::store::pack::{PACK_HEADER_LEN, pack_file_name};
use dedupfs::store::pack_index::PackState;
use dedupfs::store::{ChunkCache, ChunkStore, PackStore};
use std::collections::BTreeSet;
use std::sync::Arc;

fn noise(seed: u64, len: usize) -> Vec<u8> {
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

fn text(seed: u64, len: usize) -> Vec<u8> {
    let words = ["alpha ", "beta ", "gamma ", "delta ", "epsilon ", "zeta "];
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(words[(s % 6) as usize].as_bytes());
    }
    out.truncate(len);
    out
}

fn put(store: &dyn ChunkStore, data: &[u8]) -> ChunkId {
    let id = ChunkId::of(data);
    store.put(&id, data).unwrap();
    id
}

fn listed(store: &dyn ChunkStore) -> BTreeSet<ChunkId> {
    let mut out = BTreeSet::new();
    store
        .for_each(&mut |id| {
            out.insert(id);
        })
        .unwrap();
    out
}

#[test]
fn only_synced_chunks_survive_a_crash_and_the_torn_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    let kept: Vec<ChunkId> = (0..10).map(|i| put(&store, &noise(i, 20_000))).collect();
    store.sync().unwrap();
    let lost: Vec<ChunkId> = (10..20).map(|i| put(&store, &noise(i, 20_000))).collect();
    // A crash: the process goes away without a sync (drop does not sync).
    drop(store);
    let packs = pack_files(dir.path());
    assert_eq!(packs.len(), 1);
    let before = std::fs::metadata(&packs[0]).unwrap().len();
    // A torn record after the tail as well.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&packs[0])
        .unwrap();
    std::io::Write::write_all(&mut f, b"DDRC torn half-written record").unwrap();
    drop(f);

    let store = PackStore::open(dir.path()).unwrap();
    let after = std::fs::metadata(&packs[0]).unwrap().len();
    assert!(after < before, "uncommitted tail cut: {before} -> {after}");
    for id in &kept {
        assert!(store.get(id).is_ok(), "synced chunk {id} survives");
    }
    for id in &lost {
        assert!(
            matches!(store.get(id), Err(FsError::MissingChunk { .. })),
            "unsynced chunk {id} is gone, not half there"
        );
    }
    // New chunks go to a new pack: nothing is appended after the cut.
    let fresh = put(&store, &noise(99, 20_000));
    store.sync().unwrap();
    assert_eq!(pack_files(dir.path()).len(), 2);
    assert_eq!(std::fs::metadata(&packs[0]).unwrap().len(), after);
    assert!(store.get(&fresh).is_ok());
    let check = verify_packs(&store, true).unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
}

#[test]
fn a_lost_index_is_rebuilt_from_the_packs() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    let ids: BTreeSet<ChunkId> = (0..50)
        .map(|i| put(&store, &text(i, 30_000 + i as usize)))
        .collect();
    store.sync().unwrap();
    drop(store);
    std::fs::remove_file(dir.path().join("index.redb")).unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    assert_eq!(listed(&store), ids);
    let cache = ChunkCache::new(Arc::new(store), 1 << 20);
    for i in 0..50u64 {
        let data = text(i, 30_000 + i as usize);
        assert_eq!(
            &**cache.get(&ChunkId::of(&data), data.len() as u64).unwrap(),
            &data[..]
        );
    }
}

#[test]
fn a_damaged_index_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    put(&store, &noise(1, 1000));
    store.sync().unwrap();
    drop(store);
    std::fs::write(dir.path().join("index.redb"), b"garbage, not a database").unwrap();
    let err = PackStore::open(dir.path())
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("fsck --repair"), "{err}");
}

#[test]
fn compressible_chunks_are_stored_compressed_and_noise_raw() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    assert_eq!(store.codec(), Codec::default());
    let t = text(1, 64 << 10);
    let n = noise(2, 64 << 10);
    let (tid, nid) = (put(&store, &t), put(&store, &n));
    store.sync().unwrap();
    let tl = store.locate(&tid).unwrap().unwrap();
    let nl = store.locate(&nid).unwrap().unwrap();
    assert!(
        tl.codec != 0 && (tl.stored_len as usize) < t.len() / 2,
        "{tl:?}"
    );
    assert_eq!(
        (nl.codec, nl.stored_len as usize),
        (0, n.len()),
        "noise kept raw"
    );
    let u = store.usage().unwrap();
    assert_eq!(u.stored_bytes, tl.stored_len as u64 + nl.stored_len as u64);
    assert_eq!(&*store.get(&tid).unwrap(), &t[..]);
    assert_eq!(&*store.get(&nid).unwrap(), &n[..]);
}

#[test]
fn compaction_frees_dead_bytes_and_keeps_every_live_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    store.set_codec(Codec::None);
    // ~80 MiB in 1 MiB chunks: three packs.
    let ids: Vec<ChunkId> = (0..80).map(|i| put(&store, &noise(i, 1 << 20))).collect();
    store.sync().unwrap();
    let disk0 = store.usage().unwrap().disk_bytes;
    let (dead, live): (Vec<_>, Vec<_>) = ids.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    for (_, id) in &dead {
        store.remove(id).unwrap();
    }
    store.sync().unwrap();
    let dry = compact(&store, 0.2, true, true).unwrap();
    assert!(dry.packs_compacted >= 2, "{dry:?}");
    assert_eq!(
        store.usage().unwrap().disk_bytes,
        disk0,
        "dry run changes nothing"
    );
    let done = compact(&store, 0.2, false, true).unwrap();
    assert!(done.skipped.is_empty(), "{done:?}");
    let u = store.usage().unwrap();
    let freed = disk0 - u.disk_bytes;
    let deleted = 40u64 << 20;
    assert!(
        freed * 10 >= deleted * 9,
        "freed {freed} of {deleted} deleted bytes"
    );
    let du: u64 = pack_files(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(du, u.disk_bytes, "usage matches the files");
    for (i, id) in &live {
        assert_eq!(&*store.get(id).unwrap(), &noise(*i as u64, 1 << 20)[..]);
    }
    for (_, id) in &dead {
        assert!(store.get(id).is_err());
    }
    // And after a reopen, from the index alone.
    drop(store);
    let store = PackStore::open(dir.path()).unwrap();
    for (i, id) in &live {
        assert_eq!(&*store.get(id).unwrap(), &noise(*i as u64, 1 << 20)[..]);
    }
    let check = verify_packs(&store, true).unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
}

#[test]
fn a_retired_pack_left_by_a_crash_is_deleted_at_open_and_unknown_packs_by_gc() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    let a = put(&store, &noise(1, 5000));
    store.sync().unwrap();
    store.remove(&a).unwrap();
    store.sync().unwrap();
    // A pack no index commit names (a crash after its creation) is garbage.
    let unknown = dir.path().join("packs").join(pack_file_name(900));
    std::fs::write(&unknown, b"whatever").unwrap();
    drop(store);
    let store = PackStore::open(dir.path()).unwrap();
    assert_eq!(store.unknown_pack_files().unwrap().len(), 1);
    // New packs never reuse its id.
    let b = put(&store, &noise(2, 5000));
    store.sync().unwrap();
    assert!(store.locate(&b).unwrap().unwrap().pack > 900);
    assert_eq!(
        remove_unknown_packs(&store, false, &|_| false).unwrap().0,
        1
    );
    assert!(!unknown.exists());
    // The first pack has no live chunk: compaction deletes it outright.
    let r = compact(&store, 0.2, false, true).unwrap();
    assert!(r.packs_compacted >= 1, "{r:?}");
    assert!(store.get(&b).is_ok());
    let rows = store.index().packs().unwrap();
    assert!(rows.iter().all(|(_, r)| r.state != PackState::Retired));
}

#[test]
fn damaged_records_are_refused_and_reported_with_their_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(PackStore::open(dir.path()).unwrap());
    let raw = noise(5, 100_000);
    let comp = text(6, 100_000);
    let (rid, cid) = (put(store.as_ref(), &raw), put(store.as_ref(), &comp));
    store.sync().unwrap();
    let rl = store.locate(&rid).unwrap().unwrap();
    let cl = store.locate(&cid).unwrap().unwrap();
    let path = store.pack_path(rl.pack);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(rl.stored_start() + 500) as usize] ^= 0x10;
    bytes[(cl.stored_start() + 20) as usize] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let cache = ChunkCache::new(store.clone(), 1 << 20);
    assert!(matches!(
        cache.get(&rid, raw.len() as u64),
        Err(FsError::CorruptChunk { .. })
    ));
    assert!(matches!(
        cache.get(&cid, comp.len() as u64),
        Err(FsError::CorruptChunk { .. })
    ));
    let check = verify_packs(&store, false).unwrap();
    let bad: BTreeSet<ChunkId> = check.damaged_chunks().collect();
    assert_eq!(bad, BTreeSet::from([rid, cid]), "{:?}", check.problems);

    // A truncated pack: the chunks past the cut are missing, not garbage.
    drop(cache);
    drop(store);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(PACK_HEADER_LEN + 10).unwrap();
    drop(f);
    let store2 = PackStore::open(dir.path()).unwrap();
    assert!(store2.get(&rid).is_err());
    assert!(store2.stat(&cid).is_err());
    let check = verify_packs(&store2, false).unwrap();
    let bad: BTreeSet<ChunkId> = check.damaged_chunks().collect();
    assert_eq!(bad, BTreeSet::from([rid, cid]), "{:?}", check.problems);
}

#[test]
fn concurrent_writers_and_syncs_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let store = &store;
            s.spawn(move || {
                for i in 0..200u64 {
                    put(store, &noise(t * 1000 + i, 3000 + (i as usize % 7) * 1000));
                    if i % 50 == 0 {
                        store.sync().unwrap();
                    }
                }
            });
        }
    });
    store.sync().unwrap();
    drop(store);
    let store = PackStore::open(dir.path()).unwrap();
    for t in 0..4u64 {
        for i in 0..200u64 {
            let d = noise(t * 1000 + i, 3000 + (i as usize % 7) * 1000);
            assert_eq!(&*store.get(&ChunkId::of(&d)).unwrap(), &d[..]);
        }
    }
    let check = verify_packs(&store, true).unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
}

#[test]
fn background_compaction_steps_only_when_dead_bytes_are_worth_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    store.set_codec(Codec::None);
    let ids: Vec<ChunkId> = (0..128).map(|i| put(&store, &noise(i, 1 << 20))).collect();
    store.sync().unwrap();
    // A few dead chunks: below the threshold, nothing happens.
    for id in &ids[..8] {
        store.remove(id).unwrap();
    }
    store.sync().unwrap();
    assert_eq!(store.compact_step().unwrap(), 0);
    // Most of the first packs dead: a step frees space, a bounded amount at a time.
    for id in &ids[8..96] {
        store.remove(id).unwrap();
    }
    store.sync().unwrap();
    let before = store.usage().unwrap();
    let freed = store.compact_step().unwrap();
    let after = store.usage().unwrap();
    assert!(freed >= 32 << 20, "freed {freed}: {before:?} -> {after:?}");
    assert_eq!(before.disk_bytes - after.disk_bytes, freed);
    for (i, id) in ids.iter().enumerate().skip(96) {
        assert_eq!(&*store.get(id).unwrap(), &noise(i as u64, 1 << 20)[..]);
    }
    let check = verify_packs(&store, true).unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
}

#[test]
fn a_rebuild_cut_short_is_done_again_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    let ids: BTreeSet<ChunkId> = (0..20).map(|i| put(&store, &noise(i, 9000))).collect();
    store.sync().unwrap();
    // The first step of a rebuild, then a crash: an empty index marked as being rebuilt.
    store.index().clear().unwrap();
    drop(store);
    let store = PackStore::open(dir.path()).unwrap();
    assert_eq!(listed(&store), ids, "rebuilt at open");
    assert!(store.unknown_pack_files().unwrap().is_empty());
    drop(store);
    let store = PackStore::open(dir.path()).unwrap();
    assert_eq!(listed(&store), ids, "and not again");
}

#[test]
fn gc_keeps_an_unknown_pack_that_holds_chunks_metadata_still_names() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    let x = put(&store, &noise(1, 7000));
    store.sync().unwrap();
    let pack = store.locate(&x).unwrap().unwrap().pack;
    let copy = dir.path().join("packs").join(pack_file_name(900));
    std::fs::copy(store.pack_path(pack), &copy).unwrap();
    // The index loses X (as a damaged index would) while metadata still names it.
    store.remove(&x).unwrap();
    store.sync().unwrap();
    let (n, _, kept) = remove_unknown_packs(&store, false, &|id| *id == x).unwrap();
    assert_eq!((n, kept.len()), (0, 1), "{kept:?}");
    assert!(copy.exists());
    // Unreferenced, it goes.
    let (n, _, kept) = remove_unknown_packs(&store, false, &|_| false).unwrap();
    assert_eq!((n, kept.len()), (1, 0));
    assert!(!copy.exists());
}

/// An encrypted store (`crypto.rs`): records are sealed (no plaintext in the pack file), the
/// cache verifies keyed names, the store never opens without its key or with another, a lost
/// index is rebuilt (and records the key again), and a flipped ciphertext byte is an error,
/// never data.
#[test]
fn an_encrypted_store_seals_records_and_opens_only_with_its_key() {
    use dedupfs::crypto::Key;
    let dir = tempfile::tempdir().unwrap();
    let key = Key::from_bytes(&[9; 32]);
    let data = text(5, 100_000);
    let id = key.hasher().id(&data);
    {
        let store = PackStore::open_keyed(dir.path(), None, Some(key.clone())).unwrap();
        store.set_codec(Codec::None);
        store.put(&id, &data).unwrap();
        store.sync().unwrap();
        let store: Arc<dyn ChunkStore> = Arc::new(store);
        let cache = ChunkCache::new(store, 1 << 20);
        assert_eq!(&**cache.get(&id, data.len() as u64).unwrap(), &data[..]);
    }
    let pack = std::fs::read(dir.path().join("packs").join(pack_file_name(1))).unwrap();
    assert!(
        !pack.windows(32).any(|w| w == &data[1000..1032]),
        "plaintext in the pack"
    );
    for (k, what) in [
        (None, "encrypted"),
        (Some(Key::from_bytes(&[8; 32])), "wrong key"),
    ] {
        let e = PackStore::open_keyed(dir.path(), None, k).err().unwrap();
        assert!(e.to_string().contains(what), "{e}");
    }
    // A lost index: rebuilt from the sealed records, the key recorded again.
    std::fs::remove_file(dir.path().join("index.redb")).unwrap();
    let store = PackStore::open_keyed(dir.path(), None, Some(key.clone())).unwrap();
    assert_eq!(&*store.get(&id).unwrap(), &data[..]);
    drop(store);
    assert!(PackStore::open_keyed(dir.path(), None, None).is_err());
    // A flipped ciphertext byte: the tag fails, the read is an error and the check says so.
    let mut bad = pack.clone();
    bad[PACK_HEADER_LEN as usize + 64 + 24 + 500] ^= 1;
    std::fs::write(dir.path().join("packs").join(pack_file_name(1)), &bad).unwrap();
    let store = PackStore::open_keyed(dir.path(), None, Some(key)).unwrap();
    assert!(matches!(store.get(&id), Err(FsError::CorruptChunk { .. })));
    let check = verify_packs(&store, true).unwrap();
    assert!(!check.problems.is_empty(), "{check:?}");
}

/// Bytes of `path` in the page cache (util-linux `fincore`); None without the tool.
fn resident_bytes(path: &std::path::Path) -> Option<u64> {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Write-behind: a pack being filled keeps only its last steps in the page cache (the rest is
/// written out and dropped as it grows, so a long write does not fill memory with fresh
/// page-cache pages), and every chunk still reads back exactly, before and after a sync.
/// Guards against the write-behind dropping pages before they reach the disk (reads would
/// then see zeros or old bytes) and against it being lost (the whole pack stays cached).
#[test]
fn a_growing_pack_is_written_behind_and_its_chunks_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let fs_type = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir.path())
        .output()
        .unwrap();
    if String::from_utf8_lossy(&fs_type.stdout).trim() == "tmpfs" {
        // tmpfs pages are the file: there is nothing to write behind.
        println!("SKIP: the temp dir is on tmpfs");
        return;
    }
    let store = PackStore::open(dir.path()).unwrap();
    let chunks: Vec<(ChunkId, Vec<u8>)> = (0..480)
        .map(|i| {
            let data = noise(1000 + i, 64 << 10);
            (put(&store, &data), data)
        })
        .collect();
    let packs = pack_files(dir.path());
    assert_eq!(packs.len(), 1, "30 MiB fit one pack");
    let len = std::fs::metadata(&packs[0]).unwrap().len();
    assert!(len > 30 << 20, "{len}");
    let Some(res) = resident_bytes(&packs[0]) else {
        println!("SKIP: no fincore");
        return;
    };
    assert!(
        res <= 17 << 20,
        "{res} of the pack's {len} bytes are still in the page cache: at most its last two \
         8 MiB steps should be"
    );
    let check = |what: &str| {
        for (id, data) in &chunks {
            let got = store.get(id).unwrap();
            assert!(
                got[..] == data[..],
                "{what}: chunk {id} reads back other bytes"
            );
        }
    };
    check("before a sync");
    store.sync().unwrap();
    drop(store);
    let store = PackStore::open(dir.path()).unwrap();
    for (id, data) in &chunks {
        assert!(
            store.get(id).unwrap()[..] == data[..],
            "after reopen: chunk {id}"
        );
    }
}
