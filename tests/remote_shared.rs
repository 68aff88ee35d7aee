//! Shared dedup between the volumes under one bucket prefix, and the bucket gc that deletes
//! the packs no volume names (`dedupfs gc-bucket`), on a real Garage server.
//!
//! Guards against: a second volume uploading data another volume already stored; a volume
//! that names another's pack and cannot read it back (after attach, or offline fsck); and
//! above all the gc race of the naive protocol — volume B starts naming an old pack (by
//! dedup) just after volume A dropped it and the collector marked it: the sweep must keep it,
//! and must wait until every volume has acknowledged the mark.
//!
//! Skips (with a `SKIP:` line) when FUSE or the `garage` binary is absent.

mod common;

use common::garage;
use common::remote::*;
use common::tree;
use common::{Volume, assert_bytes_eq, random_bytes, read_all};
use std::fs;
use std::path::Path;

const MIB: usize = 1 << 20;

/// `dedupfs gc-bucket` of the prefix, as JSON.
fn gc_bucket(g: &garage::Garage, env: &[(String, String)], prefix: &str) -> serde_json::Value {
    let url = url_of(g, prefix);
    let out = ok(
        dedupfs(env, &["gc-bucket", &url, "--json"]),
        "dedupfs gc-bucket",
    );
    serde_json::from_str(&out).expect("gc-bucket json")
}

/// The daemons of the race test look for gc marks only when told to (`dedupfs sync`).
fn env_without_mark_polls(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut e = env.to_vec();
    e.push(("DEDUPFS_GC_MARK_CHECK_SECS".into(), "100000".into()));
    e
}

#[test]
fn a_second_volume_of_the_same_data_uploads_almost_nothing_and_reads_it_back() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let image = random_bytes(21, 24 * MIB);
    let a = dirs.path("a");
    init_remote(&g, &a, "pool", &["--volume", "a"]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    fs::write(va.path("image"), &image).unwrap();
    tree::make_tree(&va.path("tree"), 5, 200);
    let want = tree::snapshot(&va.mnt);
    va.unmount();
    let a_bytes = own_pack_bytes(&g, "pool", &a);
    assert!(
        a_bytes >= 24 * MIB as u64,
        "volume a uploaded {a_bytes} bytes"
    );

    // Volume b, same prefix: the same bytes are named in a's packs, not uploaded again.
    let b = dirs.path("b");
    init_remote(&g, &b, "pool", &["--volume", "b"]);
    let mut vb = Volume::mount_existing(&b, &[], &env);
    fs::write(vb.path("image"), &image).unwrap();
    tree::make_tree(&vb.path("tree"), 5, 200);
    ok(sync(&env, &vb.mnt), "dedupfs sync of b");
    let b_bytes = own_pack_bytes(&g, "pool", &b);
    eprintln!("volume a uploaded {a_bytes} bytes of packs, volume b {b_bytes}");
    assert!(
        b_bytes * 100 < a_bytes,
        "the second volume uploaded {b_bytes} bytes of packs for data the first has ({a_bytes})"
    );
    assert_bytes_eq("image on b", &read_all(&vb.path("image")), &image);
    // The same paths and contents as on a (written separately: other times).
    let want_b = tree::snapshot(&vb.mnt);
    assert_eq!(
        want_b.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the trees on a and b differ"
    );
    for (path, e) in &want {
        let got = &want_b[path];
        assert_eq!(
            (&got.kind, got.size, got.content_hash),
            (&e.kind, e.size, e.content_hash),
            "{} differs on b",
            path.display()
        );
    }
    vb.unmount();

    // Offline fsck of b reads a's packs in the bucket (with --verify-data, every byte).
    ok(
        dedupfs(&env, &["fsck", b.to_str().unwrap(), "--verify-data"]),
        "fsck --verify-data of b",
    );
    // Another machine attaches b: it reads a's packs.
    let c2 = dirs.path("c2");
    attach(&g, &c2, "pool", &["--volume", "b"]);
    let vc2 = Volume::mount_existing(&c2, &["-o", "ro"], &env);
    assert_bytes_eq(
        "image on an attached b",
        &read_all(&vc2.path("image")),
        &image,
    );
    tree::assert_same_tree(
        "tree on an attached b",
        &tree::snapshot(&vc2.mnt),
        &want_b,
        true,
    );
}

#[test]
fn bucket_gc_keeps_a_pack_named_again_in_the_race_and_deletes_it_once_unnamed() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let env = env_without_mark_polls(&env);
    let kept = random_bytes(31, 6 * MIB);
    let doomed = random_bytes(32, 12 * MIB);
    let doomed2 = random_bytes(33, 4 * MIB);

    // Volume a: a kept file, then (in packs of its own) the file that will be dropped.
    let a = dirs.path("a");
    init_remote(&g, &a, "race", &["--volume", "a", "--pack-mib", "1"]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    fs::write(va.path("kept"), &kept).unwrap();
    ok(sync(&env, &va.mnt), "sync a (kept)");
    fs::write(va.path("doomed"), &doomed).unwrap();
    fs::write(va.path("doomed2"), &doomed2).unwrap();
    ok(sync(&env, &va.mnt), "sync a (doomed)");

    // Volume b mounts now: its shared index learns a's chunks, the doomed file's included.
    let b = dirs.path("b");
    init_remote(&g, &b, "race", &["--volume", "b"]);
    let mut vb = Volume::mount_existing(&b, &[], &env);

    // a drops the file and publishes: no head names its packs any more; the collector marks.
    fs::remove_file(va.path("doomed")).unwrap();
    fs::remove_file(va.path("doomed2")).unwrap();
    ok(sync(&env, &va.mnt), "sync a (after the delete)");
    let r1 = gc_bucket(&g, &env, "race");
    let mark = r1["marked"].as_u64().expect("a mark was made");
    assert!(
        r1["marked_bytes"].as_u64().unwrap() >= 16 * MIB as u64,
        "the dropped file's packs were not marked: {r1}"
    );
    assert_eq!(r1["deleted_packs"], 0, "{r1}");

    // The race: b has not seen the mark, and writes the same bytes: they are named in a's
    // marked packs (nothing uploaded).
    let b_before = own_pack_bytes(&g, "race", &b);
    fs::write(vb.path("same-as-doomed"), &doomed).unwrap();

    // The collector may not sweep: neither volume has acknowledged the mark.
    let r2 = gc_bucket(&g, &env, "race");
    assert_eq!(r2["waiting"].as_u64(), Some(mark), "{r2}");
    assert_eq!(r2["deleted_packs"], 0, "{r2}");
    let waits = r2["waiting_for"].to_string();
    assert!(waits.contains("\"a ") && waits.contains("\"b "), "{r2}");

    // Both publish (and so acknowledge); b's generation names a's packs.
    ok(sync(&env, &vb.mnt), "sync b (acknowledges)");
    let b_after = own_pack_bytes(&g, "race", &b);
    assert!(
        b_after - b_before < MIB as u64,
        "b uploaded {} bytes for data a's packs hold: the race was not staged",
        b_after - b_before
    );
    // b has installed the mark: bytes of the marked packs it had not named before are now
    // stored by b itself, never placed in them.
    fs::write(vb.path("same-as-doomed2"), &doomed2).unwrap();
    ok(sync(&env, &vb.mnt), "sync b (doomed2)");
    let b_own = own_pack_bytes(&g, "race", &b);
    assert!(
        b_own - b_after >= 4 * MIB as u64,
        "after acknowledging the mark b placed chunks in the marked packs ({} bytes uploaded)",
        b_own - b_after
    );
    let r3 = gc_bucket(&g, &env, "race");
    assert_eq!(
        r3["waiting"].as_u64(),
        Some(mark),
        "a has not acknowledged: {r3}"
    );
    ok(sync(&env, &va.mnt), "sync a (acknowledges)");
    let r4 = gc_bucket(&g, &env, "race");
    assert_eq!(r4["swept"].as_u64(), Some(mark), "{r4}");
    assert!(
        r4["kept_named"].as_u64().unwrap() >= 1,
        "the sweep did not find the packs b names again: {r4}"
    );
    // Deleted: what only doomed2 used (b stored its own copy); kept: what b names.
    let deleted = r4["deleted_bytes"].as_u64().unwrap();
    assert!(
        deleted < 12 * MIB as u64,
        "the sweep deleted {deleted} bytes, more than b does not name: {r4}"
    );

    // What b wrote reads back from the bucket alone: a fresh attach of b.
    let c = dirs.path("c");
    attach(&g, &c, "race", &["--volume", "b"]);
    let vc = Volume::mount_existing(&c, &["-o", "ro"], &env);
    assert_bytes_eq(
        "b's file after the sweep",
        &read_all(&vc.path("same-as-doomed")),
        &doomed,
    );
    assert_bytes_eq(
        "b's copy of doomed2 after the sweep",
        &read_all(&vc.path("same-as-doomed2")),
        &doomed2,
    );
    drop(vc);

    // Once nothing names a's packs, two runs with acknowledgements between delete them.
    fs::remove_file(vb.path("same-as-doomed")).unwrap();
    ok(sync(&env, &vb.mnt), "sync b (drops the name)");
    let r5 = gc_bucket(&g, &env, "race");
    let mark2 = r5["marked"].as_u64().expect("second mark");
    assert!(
        r5["marked_bytes"].as_u64().unwrap() >= 12 * MIB as u64,
        "{r5}"
    );
    ok(sync(&env, &va.mnt), "sync a (acknowledges 2)");
    ok(sync(&env, &vb.mnt), "sync b (acknowledges 2)");
    let r6 = gc_bucket(&g, &env, "race");
    assert_eq!(r6["swept"].as_u64(), Some(mark2), "{r6}");
    assert!(
        r6["deleted_bytes"].as_u64().unwrap() >= 12 * MIB as u64,
        "{r6}"
    );

    // Nothing either volume names was lost: both read back whole, from fresh attaches too.
    assert_bytes_eq("a's kept file", &read_all(&va.path("kept")), &kept);
    assert_bytes_eq(
        "b's doomed2",
        &read_all(&vb.path("same-as-doomed2")),
        &doomed2,
    );
    va.unmount();
    vb.unmount();
    for (name, vol, file, want) in [
        ("a2", "a", "kept", &kept),
        ("b2", "b", "same-as-doomed2", &doomed2),
    ] {
        let s = dirs.path(name);
        attach(&g, &s, "race", &["--volume", vol]);
        ok(
            dedupfs(&env, &["fsck", s.to_str().unwrap()]),
            "fsck of a fresh attach",
        );
        let v = Volume::mount_existing(&s, &["-o", "ro"], &env);
        assert_bytes_eq(file, &read_all(&v.path(file)), want);
    }
}

/// The reader holds under `volumes/NAME/readers/`.
fn holds(g: &garage::Garage, prefix: &str, volume: &str) -> Vec<String> {
    client(g, prefix)
        .list(&format!("volumes/{volume}/readers"))
        .expect("list holds")
        .into_iter()
        .map(|o| o.key)
        .collect()
}

/// Waits (up to 60 s) until `volume` has `n` reader holds.
fn wait_for_holds(g: &garage::Garage, prefix: &str, volume: &str, n: usize, v: &Volume) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let h = holds(g, prefix, volume);
        if h.len() == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{volume} has reader holds {h:?}, expected {n}\n--- daemon log ---\n{}",
            v.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A read-only mount of an attached cache serves the generation it attached while the writer
/// moves on (issue 11). The packs only that generation names must survive bucket gc for as
/// long as the mount lives (its reader hold); once it is unmounted, or killed and its hold has
/// expired, gc takes them as before.
#[test]
fn a_read_only_mount_keeps_the_packs_of_its_generation_from_bucket_gc() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let mut env = env_without_mark_polls(&env);
    env.push(("DEDUPFS_READER_HOLD_SECS".into(), "4".into()));
    let old = random_bytes(41, 8 * MIB);
    let new = random_bytes(42, MIB);

    let a = dirs.path("a");
    init_remote(&g, &a, "readers", &["--volume", "a", "--pack-mib", "1"]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    fs::write(va.path("old"), &old).unwrap();
    ok(sync(&env, &va.mnt), "sync a (old)");

    // Two other machines attach that generation and mount it read-only; nothing read yet,
    // so every byte of `old` must come from the bucket later. One of them dies at once: its
    // hold stays in the bucket until it expires (4 s here).
    let c = dirs.path("c");
    attach(&g, &c, "readers", &["--volume", "a"]);
    let mut vc = Volume::mount_existing(&c, &["-o", "ro"], &env);
    wait_for_holds(&g, "readers", "a", 1, &vc);
    let d = dirs.path("d");
    attach(&g, &d, "readers", &["--volume", "a"]);
    let mut vd = Volume::mount_existing(&d, &["-o", "ro"], &env);
    wait_for_holds(&g, "readers", "a", 2, &vd);
    vd.kill9();
    let killed = std::time::Instant::now();

    // The writer replaces the file: its head no longer names old's packs.
    fs::remove_file(va.path("old")).unwrap();
    fs::write(va.path("new"), &new).unwrap();
    ok(sync(&env, &va.mnt), "sync a (old replaced)");
    let r1 = gc_bucket(&g, &env, "readers");
    assert!(
        r1["marked_bytes"].as_u64().unwrap_or(0) < MIB as u64,
        "gc marked the packs a live read-only mount reads: {r1}"
    );
    ok(sync(&env, &va.mnt), "sync a (acknowledges)");
    let r2 = gc_bucket(&g, &env, "readers");
    assert_eq!(
        r2["deleted_packs"].as_u64().unwrap_or(0),
        0,
        "gc deleted packs a live read-only mount reads: {r2}"
    );
    assert_bytes_eq(
        "old, read by the read-only mount after gc",
        &read_all(&vc.path("old")),
        &old,
    );
    assert!(!vc.path("new").exists(), "the read-only mount moved on");

    // Unmounted: its hold goes. The killed mount's hold is left, expired: it keeps nothing,
    // so old's packs are marked and then swept.
    vc.unmount();
    assert_eq!(
        holds(&g, "readers", "a").len(),
        1,
        "the hold stayed after unmount (or the killed mount's went)"
    );
    std::thread::sleep(std::time::Duration::from_secs(7).saturating_sub(killed.elapsed()));
    let r3 = gc_bucket(&g, &env, "readers");
    assert_eq!(r3["readers"][0]["live"], false, "{r3}");
    assert!(
        r3["marked_bytes"].as_u64().unwrap_or(0) >= 8 * MIB as u64,
        "old's packs were not marked once no live mount read them: {r3}"
    );
    ok(sync(&env, &va.mnt), "sync a (acknowledges 2)");
    let r4 = gc_bucket(&g, &env, "readers");
    assert!(
        r4["deleted_bytes"].as_u64().unwrap_or(0) >= 8 * MIB as u64,
        "old's packs were not swept: {r4}"
    );
    let text = ok(
        dedupfs(&env, &["gc-bucket", &url_of(&g, "readers")]),
        "gc-bucket",
    );
    assert!(text.contains("expired"), "{text}");
    // A dry run writes nothing, not even a clock probe: it counts every hold as live.
    let text = ok(
        dedupfs(&env, &["gc-bucket", &url_of(&g, "readers"), "--dry-run"]),
        "gc-bucket --dry-run",
    );
    assert!(text.contains("holds generation"), "{text}");
    assert!(
        client(&g, "readers").list("gc/clock").unwrap().is_empty(),
        "a clock probe was left behind"
    );
    assert_bytes_eq("a's new file", &read_all(&va.path("new")), &new);
    va.unmount();
}

#[test]
fn a_volume_killed_while_naming_another_volumes_packs_loses_nothing_fsynced() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let shared = random_bytes(41, 8 * MIB);
    let own = random_bytes(42, 3 * MIB);
    let a = dirs.path("a");
    init_remote(&g, &a, "crash", &["--volume", "a"]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    fs::write(va.path("shared"), &shared).unwrap();
    va.unmount();

    let b = dirs.path("b");
    init_remote(&g, &b, "crash", &["--volume", "b", "--pack-mib", "1"]);
    let mut vb = Volume::mount_existing(&b, &[], &env);
    for (name, data) in [("shared", &shared), ("own", &own)] {
        use std::io::Write;
        let mut f = fs::File::create(vb.path(name)).unwrap();
        f.write_all(data).unwrap();
        f.sync_all().unwrap();
    }
    // Killed before any publication: the placements in a's packs are only in b's local
    // journal (packs.log, index) now.
    vb.kill9();
    vb.remount();
    assert_bytes_eq(
        "shared after kill -9",
        &read_all(&vb.path("shared")),
        &shared,
    );
    assert_bytes_eq("own after kill -9", &read_all(&vb.path("own")), &own);
    vb.unmount();
    ok(
        dedupfs(&env, &["fsck", b.to_str().unwrap(), "--verify-data"]),
        "fsck --verify-data of b after the crash",
    );
    assert!(
        own_pack_bytes(&g, "crash", &b) < 5 * MIB as u64,
        "b uploaded the chunks a has"
    );
    let c = dirs.path("c");
    attach(&g, &c, "crash", &["--volume", "b"]);
    let vc = Volume::mount_existing(&c, &["-o", "ro"], &env);
    assert_bytes_eq("shared attached", &read_all(&vc.path("shared")), &shared);
    assert_bytes_eq("own attached", &read_all(&vc.path("own")), &own);
}

#[test]
fn gc_bucket_refuses_what_it_cannot_judge_and_marks_nothing() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let a = dirs.path("a");
    init_remote(&g, &a, "judge", &["--volume", "a"]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    fs::write(va.path("f"), random_bytes(51, 2 * MIB)).unwrap();
    va.unmount();
    let url = url_of(&g, "judge");
    let c = client(&g, "judge");
    // One run at a time: another run's lease is respected, and named.
    {
        use dedupfs::remote::lease::{Holder, Lease, LeaseConfig, new_session_id};
        let other = Holder::this_process(&new_session_id(), Path::new("(another run)"));
        let held = Lease::acquire(&c, "gc/lease", other, &LeaseConfig::default()).unwrap();
        let said = fails(
            dedupfs(&env, &["gc-bucket", &url]),
            "gc-bucket beside another run",
        );
        assert!(said.contains("another gc-bucket run"), "{said}");
        held.lease.release(&c).unwrap();
    }
    // A damaged mark: gc-bucket names it and the remedy; volumes still publish (and
    // acknowledge no further than the mark before it).
    c.put("gc/marks/0000000000000001", b"{not json".to_vec())
        .unwrap();
    let said = fails(
        dedupfs(&env, &["gc-bucket", &url]),
        "gc-bucket with a damaged mark",
    );
    assert!(
        said.contains("gc/marks/0000000000000001") && said.contains("delete it"),
        "{said}"
    );
    let mut va = Volume::mount_existing(&a, &[], &env);
    fs::write(va.path("g"), b"more").unwrap();
    ok(sync(&env, &va.mnt), "sync beside a damaged mark");
    va.unmount();
    c.delete("gc/marks/0000000000000001").unwrap();
    // An empty prefix: nothing to do, said plainly.
    let said = ok(
        dedupfs(&env, &["gc-bucket", &url_of(&g, "nothing-here")]),
        "gc-bucket of an empty prefix",
    );
    assert!(said.contains("nothing to mark"), "{said}");
    // A volume whose identity object is gone: its packs are not taken for garbage.
    c.delete("volumes/a/volume.json").unwrap();
    let said = fails(
        dedupfs(&env, &["gc-bucket", &url]),
        "gc-bucket without volume.json",
    );
    assert!(said.contains("no volume.json"), "{said}");
    assert!(c.list("gc/marks").unwrap().is_empty(), "a mark was made");
    // An unreachable object store: one clear error, soon.
    let dead = format!("http://127.0.0.1:{}", garage::closed_port());
    let started = std::time::Instant::now();
    let said = fails(
        dedupfs(&env, &["gc-bucket", &url, "--endpoint", &dead]),
        "gc-bucket of an unreachable store",
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{said}"
    );
    assert!(said.to_lowercase().contains("127.0.0.1"), "{said}");
}

#[test]
fn a_rebuilt_index_keeps_own_chunks_in_own_packs_so_a_sweep_cannot_take_them() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let env = env_without_mark_polls(&env);
    let x = random_bytes(61, 4 * MIB);
    let y = random_bytes(62, 4 * MIB);
    let (a, b) = (dirs.path("a"), dirs.path("b"));
    init_remote(&g, &a, "rebuild", &["--volume", "a"]);
    init_remote(&g, &b, "rebuild", &["--volume", "b"]);
    // b stores x itself (a has published nothing yet).
    let mut vb = Volume::mount_existing(&b, &[], &env);
    fs::write(vb.path("x"), &x).unwrap();
    ok(sync(&env, &vb.mnt), "sync b (x)");
    // a stores x and y in its own packs.
    let mut va = Volume::mount_existing(&a, &[], &env);
    fs::write(va.path("x"), &x).unwrap();
    fs::write(va.path("y"), &y).unwrap();
    ok(sync(&env, &va.mnt), "sync a (x, y)");
    // b learns a's chunks, and names a's packs for y.
    ok(sync(&env, &vb.mnt), "sync b (refresh)");
    fs::write(vb.path("y"), &y).unwrap();
    ok(sync(&env, &vb.mnt), "sync b (y)");
    // Both drop y, a drops x: no head names a's packs; they are marked and acknowledged.
    fs::remove_file(vb.path("y")).unwrap();
    ok(sync(&env, &vb.mnt), "sync b (y gone)");
    fs::remove_file(va.path("x")).unwrap();
    fs::remove_file(va.path("y")).unwrap();
    ok(sync(&env, &va.mnt), "sync a (all gone)");
    let r1 = gc_bucket(&g, &env, "rebuild");
    assert!(r1["marked"].as_u64().is_some(), "{r1}");
    ok(sync(&env, &va.mnt), "sync a (ack)");
    ok(sync(&env, &vb.mnt), "sync b (ack)");
    // b's pack index is lost and rebuilt (its packs, a's packs it lists): x's chunks are in
    // both b's own pack and a's; they must stay in b's.
    vb.unmount();
    fs::remove_file(b.join("index.redb")).unwrap();
    fs::remove_file(b.join("remote/status.json")).unwrap();
    let mut vb = Volume::mount_existing(&b, &[], &env);
    // The daemon's own figures (written within seconds of the mount).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !b.join("remote/status.json").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let s = stats(&env, &b);
    assert_eq!(
        s["remote"]["shared_packs"], 0,
        "after the rebuild b's chunks live in a's packs: {s}"
    );
    let r2 = gc_bucket(&g, &env, "rebuild");
    assert!(r2["swept"].as_u64().is_some(), "{r2}");
    assert!(r2["deleted_packs"].as_u64().unwrap() >= 1, "{r2}");
    // Read from the packs, not from caches: remount.
    vb.unmount();
    vb.remount();
    assert_bytes_eq(
        "x on b after the rebuild and the sweep",
        &read_all(&vb.path("x")),
        &x,
    );
    vb.unmount();
    va.unmount();
    let c = dirs.path("c");
    attach(&g, &c, "rebuild", &["--volume", "b"]);
    let vc = Volume::mount_existing(&c, &["-o", "ro"], &env);
    assert_bytes_eq("x on an attached b", &read_all(&vc.path("x")), &x);
}

/// Volume a compacts its packs (`dedupfs gc`): its chunks move to new packs and the old ones
/// go with the bucket gc. Volume b, which learnt a's chunks in the old packs, must dedup
/// against the new ones once the old ones are condemned, not store those chunks again for
/// good; and nothing b names may be lost by the sweep.
#[test]
fn another_volume_dedups_against_a_compacted_volumes_new_packs() {
    use std::io::Write;
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let env = env_without_mark_polls(&env);
    const PIECE: usize = 128 << 10;
    let keep = random_bytes(81, 32 * PIECE);
    let junk = random_bytes(82, 64 * PIECE);
    let a = dirs.path("a");
    init_remote(&g, &a, "moved", &["--volume", "a", "--pack-mib", "1"]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    {
        let mut k = fs::File::create(va.path("keep")).unwrap();
        let mut j = fs::File::create(va.path("junk")).unwrap();
        for (pk, pj) in keep.chunks(PIECE).zip(junk.chunks(2 * PIECE)) {
            k.write_all(pk).unwrap();
            k.sync_all().unwrap();
            j.write_all(pj).unwrap();
            j.sync_all().unwrap();
        }
    }
    ok(sync(&env, &va.mnt), "sync a");
    // b learns a's chunks where they are now.
    let b = dirs.path("b");
    init_remote(&g, &b, "moved", &["--volume", "b"]);
    let mut vb = Volume::mount_existing(&b, &[], &env);

    // a drops the junk and compacts: keep's chunks move to new packs.
    fs::remove_file(va.path("junk")).unwrap();
    ok(
        dedupfs(&env, &["gc", a.to_str().unwrap()]),
        "dedupfs gc of a",
    );
    ok(sync(&env, &va.mnt), "sync a (compacted)");
    let r1 = gc_bucket(&g, &env, "moved");
    assert!(
        r1["marked_bytes"].as_u64().unwrap_or(0) >= (keep.len() + junk.len()) as u64 * 9 / 10,
        "a's old packs were not marked: {r1}"
    );
    ok(sync(&env, &va.mnt), "sync a (acknowledges)");
    ok(sync(&env, &vb.mnt), "sync b (acknowledges)");

    // b writes the same bytes: named in a's new packs, not uploaded again.
    let before = own_pack_bytes(&g, "moved", &b);
    fs::write(vb.path("same"), &keep).unwrap();
    ok(sync(&env, &vb.mnt), "sync b (same)");
    let uploaded = own_pack_bytes(&g, "moved", &b) - before;
    assert!(
        uploaded < keep.len() as u64 / 10,
        "b uploaded {uploaded} bytes for {} bytes a holds in its compacted packs",
        keep.len()
    );
    let r2 = gc_bucket(&g, &env, "moved");
    assert!(r2["deleted_packs"].as_u64().unwrap_or(0) > 0, "{r2}");
    assert_bytes_eq(
        "b's copy after the sweep",
        &read_all(&vb.path("same")),
        &keep,
    );
    assert_bytes_eq(
        "a's file after the sweep",
        &read_all(&va.path("keep")),
        &keep,
    );
    vb.unmount();
    va.unmount();
    let c = dirs.path("c");
    attach(&g, &c, "moved", &["--volume", "b"]);
    ok(
        dedupfs(&env, &["fsck", c.to_str().unwrap(), "--verify-data"]),
        "fsck --verify-data of a fresh attach of b",
    );
    let vc = Volume::mount_existing(&c, &["-o", "ro"], &env);
    assert_bytes_eq(
        "b's copy from a fresh attach",
        &read_all(&vc.path("same")),
        &keep,
    );
}

/// `dedupfs delete-volume`: refused while the volume is mounted (for writing, or read-only
/// by another machine); then its generations and identity go, its store can no longer
/// publish, and `gc-bucket` deletes its packs, except those another volume still names
/// (shared dedup), whose files keep reading back.
#[test]
fn a_deleted_volume_is_refused_while_mounted_and_its_packs_go_with_the_bucket_gc() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let env = env_without_mark_polls(&env);
    let own = random_bytes(91, 6 * MIB);
    let shared = random_bytes(92, 3 * MIB);
    let url = url_of(&g, "del");
    let delete = || dedupfs(&env, &["delete-volume", &url, "--volume", "a", "--json"]);

    let a = dirs.path("a");
    init_remote(&g, &a, "del", &["--volume", "a", "--pack-mib", "1"]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    fs::write(va.path("own"), &own).unwrap();
    fs::write(va.path("shared"), &shared).unwrap();
    ok(sync(&env, &va.mnt), "sync a");
    // b stores a copy of `shared`: named in a's packs.
    let b = dirs.path("b");
    init_remote(&g, &b, "del", &["--volume", "b"]);
    let mut vb = Volume::mount_existing(&b, &[], &env);
    fs::write(vb.path("copy"), &shared).unwrap();
    ok(sync(&env, &vb.mnt), "sync b");
    assert!(
        own_pack_bytes(&g, "del", &b) < MIB as u64,
        "b did not dedup against a"
    );

    // Mounted for writing: refused, naming the holder.
    let said = fails(delete(), "delete-volume of a mounted volume");
    assert!(said.contains("mounted for writing"), "{said}");
    va.unmount();
    // Mounted read-only elsewhere: refused too.
    let c = dirs.path("c");
    attach(&g, &c, "del", &["--volume", "a"]);
    let mut vc = Volume::mount_existing(&c, &["-o", "ro"], &env);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while client(&g, "del")
        .list("volumes/a/readers")
        .unwrap()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "no reader hold");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let said = fails(delete(), "delete-volume of a volume read elsewhere");
    assert!(said.contains("mounted read-only"), "{said}");
    vc.unmount();

    let r: serde_json::Value = serde_json::from_str(&ok(delete(), "delete-volume")).unwrap();
    assert!(r["generations_deleted"].as_u64().unwrap() >= 2, "{r}");
    assert!(
        client(&g, "del").list("volumes/a").unwrap().is_empty(),
        "objects of the deleted volume are left"
    );
    // Its store can no longer publish: a writable mount is refused, saying why.
    let said = Volume::mount_refused(&a, &[], &env);
    assert!(said.contains("deleted"), "{said}");
    let said = fails(
        dedupfs(
            &env,
            &[
                "attach",
                dirs.path("d").to_str().unwrap(),
                "--remote",
                &url,
                "--volume",
                "a",
            ],
        ),
        "attach of a deleted volume",
    );
    assert!(said.contains("no volume"), "{said}");

    // The bucket gc: a's packs go, except what b names.
    // (Packs holding records of both files are named by b: a's packs of `own` alone go.)
    let r1 = gc_bucket(&g, &env, "del");
    let marked = r1["marked_bytes"].as_u64().unwrap_or(0);
    assert!(
        marked >= own.len() as u64 / 2,
        "a's packs were not marked: {r1}"
    );
    ok(sync(&env, &vb.mnt), "sync b (acknowledges)");
    let r2 = gc_bucket(&g, &env, "del");
    assert_eq!(r2["deleted_bytes"].as_u64(), Some(marked), "{r2}");
    // What b names of a's packs was never marked, and stays.
    let left = own_pack_bytes(&g, "del", &a);
    assert!(
        left >= shared.len() as u64 * 9 / 10,
        "{left} bytes of a's packs left (b names {} of them): {r2}",
        shared.len()
    );
    assert_bytes_eq(
        "b's copy after the sweep",
        &read_all(&vb.path("copy")),
        &shared,
    );
    vb.unmount();
    let e = dirs.path("e");
    attach(&g, &e, "del", &["--volume", "b"]);
    ok(
        dedupfs(&env, &["fsck", e.to_str().unwrap(), "--verify-data"]),
        "fsck --verify-data of b after a's deletion",
    );
}
