//! Differential test: a write transaction's reads against a plain model, across commits and
//! dropped transactions.
use super::*;
use std::collections::BTreeMap;

#[derive(Clone, Default, Debug)]
struct Model {
    inodes: BTreeMap<Ino, Attr>,
    dirents: BTreeMap<(Ino, Vec<u8>), (Ino, Kind)>,
    extents: BTreeMap<(Ino, u64), (ChunkId, u32)>,
    allocated: BTreeMap<Ino, u64>,
    xattrs: BTreeMap<(Ino, Vec<u8>), Vec<u8>>,
    counters: BTreeMap<String, u64>,
    meta: BTreeMap<String, Vec<u8>>,
    next_ino: u64,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn files(m: &Model) -> u64 {
    m.inodes.values().filter(|a| a.kind == Kind::File).count() as u64
}
fn logical(m: &Model) -> u64 {
    m.inodes
        .values()
        .filter(|a| a.kind == Kind::File)
        .map(|a| a.size)
        .sum()
}

/// The model's answers to the reads both kinds of transaction have.
impl Model {
    fn xattr_names(&self, ino: Ino) -> Vec<Vec<u8>> {
        self.xattrs
            .keys()
            .filter(|(i, _)| *i == ino)
            .map(|(_, n)| n.clone())
            .collect()
    }
    fn inode_rows(&self) -> Vec<(Ino, Attr)> {
        self.inodes.iter().map(|(i, a)| (*i, *a)).collect()
    }
    fn dirent_rows(&self) -> Vec<(Ino, Vec<u8>, Ino)> {
        self.dirents
            .iter()
            .map(|((p, n), (i, _))| (*p, n.clone(), *i))
            .collect()
    }
    fn allocated_rows(&self) -> Vec<(Ino, u64)> {
        self.allocated.iter().map(|(i, b)| (*i, *b)).collect()
    }
}

/// One check, the same for a write transaction (`WTx`, through its caches) and a read one
/// (`RTx`, what was committed): they share method names but no trait for the walks.
macro_rules! check {
    (inodes, $r:expr, $m:expr, $at:expr) => {{
        let mut got = Vec::new();
        $r.for_each_inode(&mut |i, a| {
            got.push((i, a));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, $m.inode_rows(), "for_each_inode {}", $at);
    }};
    (dirents, $r:expr, $m:expr, $at:expr) => {{
        let mut got = Vec::new();
        $r.for_each_dirent(&mut |p, n, i, _| got.push((p, n.to_vec(), i)))
            .unwrap();
        assert_eq!(got, $m.dirent_rows(), "for_each_dirent {}", $at);
    }};
    (allocated, $r:expr, $m:expr, $at:expr) => {{
        let mut got = Vec::new();
        $r.for_each_allocated(&mut |i, b| got.push((i, b))).unwrap();
        assert_eq!(got, $m.allocated_rows(), "for_each_allocated {}", $at);
    }};
    (xattr_names, $r:expr, $m:expr, $at:expr) => {{
        for ino in 0..$m.next_ino + 3 {
            let got = $r.xattr_names(ino).unwrap();
            assert_eq!(got, $m.xattr_names(ino), "xattr names {ino} {}", $at);
        }
    }};
    (values, $r:expr, $m:expr, $at:expr) => {{
        assert_eq!($r.counter(C_FILES).unwrap(), files($m), "files {}", $at);
        let logical_bytes = $r.counter(C_LOGICAL).unwrap();
        assert_eq!(logical_bytes, logical($m), "logical {}", $at);
        let x = $m.counters.get("x").copied().unwrap_or(0);
        assert_eq!($r.counter("x").unwrap(), x, "counter x {}", $at);
        let next = $r.meta_u64("next_ino").unwrap();
        assert_eq!(next, Some($m.next_ino), "next_ino {}", $at);
        let k = $r.meta("k").unwrap();
        assert_eq!(k, $m.meta.get("k").cloned(), "meta k {}", $at);
    }};
}

fn check_all(tx: &WTx, m: &Model, step: usize) {
    // Point reads first (they fill the caches), then walks.
    for ino in 0..m.next_ino + 3 {
        assert_eq!(
            tx.inode(ino).unwrap(),
            m.inodes.get(&ino).copied(),
            "inode {ino} step {step}"
        );
        assert_eq!(
            tx.allocated(ino).unwrap(),
            m.allocated.get(&ino).copied().unwrap_or(0),
            "allocated {ino} step {step}"
        );
        let want: Vec<Extent> = m
            .extents
            .range((ino, 0)..=(ino, u64::MAX))
            .map(|(&(_, o), &(id, len))| Extent { offset: o, id, len })
            .collect();
        assert_eq!(
            tx.all_extents(ino).unwrap(),
            want,
            "extents {ino} step {step}"
        );
        assert_eq!(
            tx.xattr_names(ino).unwrap(),
            m.xattr_names(ino),
            "xattr names {ino} step {step}"
        );
        for n in [b"a".to_vec(), b"b".to_vec()] {
            assert_eq!(
                tx.xattr(ino, &n).unwrap(),
                m.xattrs.get(&(ino, n.clone())).cloned(),
                "xattr {ino} step {step}"
            );
        }
    }
    for p in 1..4u64 {
        for n in [&b"x"[..], b"y", b"z"] {
            assert_eq!(
                tx.lookup(p, n).unwrap(),
                m.dirents.get(&(p, n.to_vec())).copied(),
                "lookup {p} {n:?} step {step}"
            );
        }
    }
    check!(values, tx, m, format!("step {step}"));
}

fn check_walks(tx: &WTx, m: &Model, step: usize, which: u64) {
    let at = format!("step {step}");
    if which == 0 || which == 9 {
        for p in 1..4u64 {
            let want = !m.dirents.keys().any(|(pp, _)| *pp == p);
            assert_eq!(tx.dir_is_empty(p).unwrap(), want, "empty {p} step {step}");
        }
    }
    if which == 1 || which == 9 {
        check!(allocated, tx, m, at);
    }
    if which == 2 || which == 9 {
        check!(inodes, tx, m, at);
    }
    if which == 3 || which == 9 {
        check!(dirents, tx, m, at);
    }
    if which != 9 && which != 4 {
        return;
    }
    for p in 1..4u64 {
        let want: Vec<(Vec<u8>, Ino)> = m
            .dirents
            .iter()
            .filter(|((pp, _), _)| *pp == p)
            .map(|((_, n), (i, _))| (n.clone(), *i))
            .collect();
        let got: Vec<(Vec<u8>, Ino)> = tx
            .list_dir(p)
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.ino))
            .collect();
        assert_eq!(got, want, "list_dir {p} step {step}");
        assert_eq!(
            tx.dir_is_empty(p).unwrap(),
            want.is_empty(),
            "empty {p} step {step}"
        );
    }
    check!(dirents, tx, m, at);
    check!(inodes, tx, m, at);
    check!(allocated, tx, m, at);
    let mut ex = Vec::new();
    tx.for_each_extent(&mut |i, e| ex.push((i, e.offset)))
        .unwrap();
    let want: Vec<_> = m.extents.keys().copied().collect();
    assert_eq!(ex, want, "for_each_extent step {step}");
}

fn check_committed(db: &MetaDb, m: &Model, step: usize) {
    let r = db.begin_read().unwrap();
    let at = format!("committed, step {step}");
    check!(inodes, r, m, at);
    check!(dirents, r, m, at);
    check!(allocated, r, m, at);
    check!(values, r, m, at);
    check!(xattr_names, r, m, at);
}

fn attr(rng: &mut Rng) -> Attr {
    let kind = if rng.below(3) == 0 {
        Kind::Dir
    } else {
        Kind::File
    };
    let mut a = Attr::new(kind, 0o644, 0, 0);
    a.size = rng.below(1000);
    a.nlink = rng.below(3) as u32;
    a
}

fn run(seed: u64, steps: usize) {
    let d = tempfile::tempdir().unwrap();
    let db = MetaDb::create(&d.path().join("m.redb"), ChunkParams::default(), 0, 0).unwrap();
    let mut rng = Rng(seed | 1);
    let mut committed = Model {
        next_ino: ROOT_INO + 1,
        ..Model::default()
    };
    {
        let r = db.begin_read().unwrap();
        committed
            .inodes
            .insert(ROOT_INO, r.inode(ROOT_INO).unwrap().unwrap());
        committed.meta.insert("k".into(), b"0".to_vec());
        let mut tx = db.begin_write().unwrap();
        tx.set_meta("k", b"0").unwrap();
        tx.commit(false).unwrap();
    }
    let mut m = committed.clone();
    let mut tx = db.begin_write().unwrap();
    let chunks: Vec<ChunkId> = (0..4u8).map(|i| ChunkId::of(&[i])).collect();
    for step in 0..steps {
        let existing: Vec<Ino> = m.inodes.keys().copied().collect();
        let any_ino = rng.below(m.next_ino);
        if rng.below(4) == 0 {
            // Trim the caches at their next insert.
            for l in &tx.limits {
                l.set(0);
            }
            tx.dirent_rows.set(tx.dirent_rows.get().max(1));
        }
        match rng.below(22) {
            0 | 1 => {
                let ino = tx.alloc_ino().unwrap();
                assert_eq!(ino, m.next_ino);
                m.next_ino += 1;
                let a = attr(&mut rng);
                tx.create_inode(ino, &a).unwrap();
                m.inodes.insert(ino, a);
            }
            2 | 3 => {
                // Change (or re-create after a delete) an inode below next_ino.
                let ino = if existing.is_empty() || rng.below(4) == 0 {
                    any_ino.min(m.next_ino - 1).max(ROOT_INO)
                } else {
                    existing[rng.below(existing.len() as u64) as usize]
                };
                let a = attr(&mut rng);
                tx.put_inode(ino, &a).unwrap();
                m.inodes.insert(ino, a);
            }
            4 => {
                let ino = any_ino;
                if ino == ROOT_INO {
                    continue;
                }
                tx.delete_inode(ino).unwrap();
                m.inodes.remove(&ino);
                let keys: Vec<_> = m
                    .extents
                    .range((ino, 0)..=(ino, u64::MAX))
                    .map(|(k, _)| *k)
                    .collect();
                let removed: u64 = keys.iter().map(|k| m.extents[k].1 as u64).sum();
                for k in keys {
                    m.extents.remove(&k);
                }
                if removed != 0 {
                    let cur = m.allocated.get(&ino).copied().unwrap_or(0);
                    let next = cur.saturating_sub(removed);
                    if next == 0 {
                        m.allocated.remove(&ino);
                    } else {
                        m.allocated.insert(ino, next);
                    }
                }
                m.xattrs.retain(|(i, _), _| *i != ino);
            }
            5 | 6 => {
                let p = 1 + rng.below(3);
                let n = [&b"x"[..], b"y", b"z"][rng.below(3) as usize];
                let ino = any_ino;
                tx.put_dirent(p, n, ino, Kind::File).unwrap();
                m.dirents.insert((p, n.to_vec()), (ino, Kind::File));
            }
            7 | 8 => {
                let p = 1 + rng.below(3);
                let n = [&b"x"[..], b"y", b"z"][rng.below(3) as usize];
                tx.del_dirent(p, n).unwrap();
                m.dirents.remove(&(p, n.to_vec()));
            }
            9 | 10 => {
                // Add an extent at a free slot or replace one.
                let ino = any_ino;
                let off = rng.below(4) * 10;
                let old = tx.extents(ino, off, off + 1).unwrap();
                let old: Vec<Extent> = old.into_iter().filter(|e| e.offset == off).collect();
                let new = if rng.below(3) == 0 {
                    vec![]
                } else {
                    vec![Extent {
                        offset: off,
                        id: chunks[rng.below(4) as usize],
                        len: 1 + rng.below(9) as u32,
                    }]
                };
                tx.replace_extents(ino, &old, &new).unwrap();
                let removed: u64 = old.iter().map(|e| e.len as u64).sum();
                let added: u64 = new.iter().map(|e| e.len as u64).sum();
                for e in &old {
                    m.extents.remove(&(ino, e.offset));
                }
                for e in &new {
                    m.extents.insert((ino, e.offset), (e.id, e.len));
                }
                if added != removed {
                    let cur = m.allocated.get(&ino).copied().unwrap_or(0);
                    let next = (cur + added).saturating_sub(removed);
                    if next == 0 {
                        m.allocated.remove(&ino);
                    } else {
                        m.allocated.insert(ino, next);
                    }
                }
            }
            11 => {
                let ino = any_ino;
                let v = if rng.below(2) == 0 { 0 } else { rng.below(50) };
                tx.set_allocated(ino, v).unwrap();
                if v == 0 {
                    m.allocated.remove(&ino);
                } else {
                    m.allocated.insert(ino, v);
                }
            }
            12 => {
                let ino = any_ino;
                let n = [&b"a"[..], b"b"][rng.below(2) as usize];
                let v = vec![rng.below(200) as u8];
                tx.set_xattr(ino, n, &v).unwrap();
                m.xattrs.insert((ino, n.to_vec()), v);
            }
            13 => {
                let ino = any_ino;
                let n = [&b"a"[..], b"b"][rng.below(2) as usize];
                let had = tx.remove_xattr(ino, n).unwrap();
                assert_eq!(
                    had,
                    m.xattrs.remove(&(ino, n.to_vec())).is_some(),
                    "step {step}"
                );
            }
            14 => {
                let v = rng.below(100);
                tx.set_counter("x", v).unwrap();
                m.counters.insert("x".into(), v);
            }
            15 => {
                let v = vec![rng.below(200) as u8; rng.below(3) as usize];
                tx.set_meta("k", &v).unwrap();
                m.meta.insert("k".into(), v);
            }
            16 => check_walks(&tx, &m, step, rng.below(5)),
            17 | 18 => check_all(&tx, &m, step),
            19 => {
                tx.commit(false).unwrap();
                committed = m.clone();
                check_committed(&db, &committed, step);
                tx = db.begin_write().unwrap();
            }
            20 => {
                drop(tx);
                m = committed.clone();
                check_committed(&db, &committed, step);
                tx = db.begin_write().unwrap();
            }
            _ => {
                // A lookup of a name (fills the dirent cache, also with "no such name").
                let p = 1 + rng.below(3);
                let n = [&b"x"[..], b"y", b"z"][rng.below(3) as usize];
                assert_eq!(
                    tx.lookup(p, n).unwrap(),
                    m.dirents.get(&(p, n.to_vec())).copied(),
                    "step {step}"
                );
            }
        }
    }
    check_all(&tx, &m, steps);
    check_walks(&tx, &m, steps, 9);
    tx.commit(false).unwrap();
    check_committed(&db, &m, steps);
}

#[test]
fn write_transaction_reads_match_a_model() {
    for seed in 1..200u64 {
        run(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), 300);
    }
}

#[test]
fn reads_through_an_open_group_keep_a_bounded_cache() {
    let d = tempfile::tempdir().unwrap();
    let db = MetaDb::create(&d.path().join("m.redb"), ChunkParams::default(), 0, 0).unwrap();
    const N: u64 = 3 * CACHED_ROWS_MAX as u64;
    let mut tx = db.begin_write().unwrap();
    for i in 0..N {
        let ino = tx.alloc_ino().unwrap();
        tx.create_inode(ino, &Attr::new(Kind::File, 0o644, 0, 0))
            .unwrap();
        tx.put_dirent(ROOT_INO, format!("f{i}").as_bytes(), ino, Kind::File)
            .unwrap();
    }
    tx.commit(false).unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.set_counter("x", 1).unwrap();
    // What readdir_plus does per entry of a big directory, between two writes of a group.
    let entries = tx.list_dir(ROOT_INO).unwrap();
    assert_eq!(entries.len() as u64, N);
    for e in &entries {
        assert_eq!(
            tx.lookup(ROOT_INO, &e.name).unwrap(),
            Some((e.ino, Kind::File))
        );
        assert!(tx.inode(e.ino).unwrap().is_some());
        assert_eq!(tx.allocated(e.ino).unwrap(), 0);
        tx.lookup(ROOT_INO, format!("missing-{}", e.ino).as_bytes())
            .unwrap();
    }
    assert!(tx.inodes.borrow().len() <= CACHED_ROWS_MAX, "inodes");
    assert!(tx.allocated.borrow().len() <= CACHED_ROWS_MAX, "allocated");
    let dirents: usize = tx.dirents.borrow().values().map(|d| d.len()).sum();
    assert!(dirents <= CACHED_ROWS_MAX, "dirents {dirents}");
    // Written rows are never dropped: a transaction writing many keeps them all.
    for e in &entries {
        let mut a = tx.inode(e.ino).unwrap().unwrap();
        a.size = 1;
        tx.put_inode(e.ino, &a).unwrap();
        tx.del_dirent(ROOT_INO, &e.name).unwrap();
    }
    assert_eq!(tx.counter(C_LOGICAL).unwrap(), N);
    assert!(tx.dir_is_empty(ROOT_INO).unwrap());
    tx.commit(false).unwrap();
    let r = db.begin_read().unwrap();
    assert!(r.list_dir(ROOT_INO).unwrap().is_empty());
    assert_eq!(r.inode(entries[0].ino).unwrap().unwrap().size, 1);
    assert_eq!(r.counter(C_LOGICAL).unwrap(), N);
}

/// A write of cached rows that fails part-way (a read-triggered flush, e.g. before a listing)
/// has marked rows written that the tables may lack: the transaction must not commit, or the
/// database would silently miss them. (No fault hook reaches redb's insert failing, so the
/// failure is handed to the flush's result check directly.)
#[test]
fn a_transaction_whose_cached_rows_failed_to_reach_their_tables_never_commits() {
    let d = tempfile::tempdir().unwrap();
    let db = MetaDb::create(&d.path().join("m.redb"), ChunkParams::default(), 0, 0).unwrap();
    let mut tx = db.begin_write().unwrap();
    let ino = tx.alloc_ino().unwrap();
    tx.create_inode(ino, &Attr::new(Kind::File, 0o644, 0, 0))
        .unwrap();
    tx.put_dirent(ROOT_INO, b"f", ino, Kind::File).unwrap();
    tx.flushed(Err(FsError::Db("injected: insert failed".into())))
        .unwrap_err();
    assert!(
        tx.commit(false).is_err(),
        "a transaction with a failed flush committed"
    );
    let r = db.begin_read().unwrap();
    assert_eq!(r.inode(ino).unwrap(), None);
    assert_eq!(r.lookup(ROOT_INO, b"f").unwrap(), None);
    // The next transaction works.
    let mut tx = db.begin_write().unwrap();
    tx.put_dirent(ROOT_INO, b"g", ino, Kind::File).unwrap();
    tx.commit(false).unwrap();
}
