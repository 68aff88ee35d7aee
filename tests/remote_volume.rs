//! Remote volumes on a real Garage server (never a mock): `init --remote`, `attach`, mounts
//! that upload packs and publish metadata generations, the lease, fencing and an object store
//! that goes away.
//!
//! Guards against: a volume that another machine cannot attach, or attaches with other bytes or
//! another tree; `dedupfs sync` or unmount returning before the data is in the bucket; evicted
//! packs that read back wrong or not at all; a second writer let in while the first holds the
//! lease, or not stopped when it publishes over another's generation; a damaged generation
//! object taken for the volume's state; a dead object store that loses writes or hangs them;
//! a PUT whose reply is lost after the server stored the object (retried, never taken for
//! another writer's generation, never a second copy of a pack).
//!
//! Skips (with a `SKIP:` line) when FUSE or the `garage` binary is absent.

mod common;

use common::garage;
use common::remote::*;
use common::tree;
use common::{Volume, assert_bytes_eq, fallocate, pack_files, random_bytes, read_all};
use std::fs;

#[test]
fn a_volume_written_here_is_attached_elsewhere_with_the_same_tree_and_bytes() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let a = dirs.path("a");
    // 1 MiB packs: many packs, so uploads and reads cross pack boundaries.
    init_remote(&g, &a, "team", &["--pack-mib", "1"]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    tree::make_tree(&va.path("tree"), 7, 300);
    let big = random_bytes(11, 9 << 20);
    fs::write(va.path("big.bin"), &big).unwrap();
    fs::write(va.path("big-copy.bin"), &big).unwrap();
    std::os::unix::fs::symlink("big.bin", va.path("link")).unwrap();
    fs::hard_link(va.path("big.bin"), va.path("hard")).unwrap();
    let want = tree::snapshot(&va.mnt);
    va.unmount();
    // Unmount published everything: nothing waits for upload.
    let s = stats(&env, &a);
    assert_eq!(s["remote"]["not_uploaded_bytes"], 0, "{s}");
    assert!(s["remote"]["uploaded_packs"].as_u64().unwrap() >= 8, "{s}");
    let gen_a = s["remote"]["generation"].as_u64().unwrap();
    assert!(gen_a >= 2, "{s}");

    let b = dirs.path("b");
    let said = attach(&g, &b, "team", &[]);
    assert!(said.contains(&format!("generation {gen_a}")), "{said}");
    // Nothing is local yet: every read goes to the bucket.
    assert_eq!(
        fs::read_dir(b.join("packs")).unwrap().count(),
        0,
        "attach downloaded packs"
    );
    let mut vb = Volume::mount_existing(&b, &[], &env);
    tree::assert_same_tree("attached volume", &tree::snapshot(&vb.mnt), &want, true);
    assert_bytes_eq("big.bin", &read_all(&vb.path("big.bin")), &big);
    // The second volume writes on; the first store attaches that later.
    fs::write(vb.path("from-b"), b"written on b").unwrap();
    vb.unmount();
    let c = dirs.path("c");
    attach(&g, &c, "team", &["--volume", "default"]);
    let vc = Volume::mount_existing(&c, &["-o", "ro"], &env);
    assert_eq!(fs::read(vc.path("from-b")).unwrap(), b"written on b");
    assert_bytes_eq("big-copy.bin", &read_all(&vc.path("big-copy.bin")), &big);
    // A few hundred objects at most for this much data: packs, not chunks.
    let objects = client(&g, "team").list("").unwrap().len();
    assert!(objects < 60, "{objects} objects");
}

#[test]
fn sync_publishes_while_mounted_and_a_second_writer_is_refused() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let a = dirs.path("a");
    init_remote(&g, &a, "v", &[]);
    let va = Volume::mount_existing(&a, &[], &env);
    let data = random_bytes(3, 3 << 20);
    fs::write(va.path("f"), &data).unwrap();
    ok(sync(&env, &va.mnt), "dedupfs sync");
    let s = stats(&env, &a);
    assert_eq!(s["remote"]["not_uploaded_bytes"], 0, "{s}");
    // Nothing written since: no new generation.
    ok(sync(&env, &va.mnt), "dedupfs sync again");
    assert_eq!(
        stats(&env, &a)["remote"]["generation"],
        s["remote"]["generation"],
        "an unchanged volume published again"
    );

    // Another machine attaches what was synced, while the first still writes.
    fs::write(va.path("after-sync"), b"not published").unwrap();
    let vb = attached_ro(&g, &dirs, "b", "v");
    assert_bytes_eq("f", &read_all(&vb.path("f")), &data);
    assert!(!vb.path("after-sync").exists(), "saw data never synced");
    let b = vb.store.clone();
    drop(vb);
    // Writable: refused, naming the holder.
    let said = Volume::mount_refused(&b, &[], &env);
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(said.contains(host.trim()), "{said}");
    assert!(said.contains(&va.child.id().to_string()), "{said}");
}

/// Nothing changed since a sync, nothing new to publish: an fsync of an unchanged file or
/// directory, another sync, and the unmount send no second whole copy of the metadata to the
/// bucket.
#[test]
fn an_unmount_right_after_a_sync_publishes_no_new_generation() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let a = dirs.path("a");
    init_remote(&g, &a, "quiet", &[]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    fs::write(va.path("f"), random_bytes(4, 1 << 20)).unwrap();
    ok(sync(&env, &va.mnt), "dedupfs sync");
    let synced = stats(&env, &a)["remote"]["generation"].clone();
    fs::File::open(va.path("f")).unwrap().sync_all().unwrap();
    fs::File::open(&va.mnt).unwrap().sync_all().unwrap();
    ok(sync(&env, &va.mnt), "dedupfs sync after fsyncs");
    assert_eq!(
        stats(&env, &a)["remote"]["generation"],
        synced,
        "an fsync of unchanged files made the sync publish again"
    );
    va.unmount();
    let objects = client(&g, "quiet").list("").unwrap();
    assert_eq!(
        stats(&env, &a)["remote"]["generation"],
        synced,
        "the unmount published again: {:?}",
        objects.iter().map(|o| &o.key).collect::<Vec<_>>()
    );
}

/// Compaction changes only where chunks live (the pack index), not the files. Once its new
/// packs are uploaded (the uploader does not wait for a sync), the next sync must still
/// publish a generation naming them: otherwise the head keeps naming the old packs and the
/// bucket can never drop them.
#[test]
fn a_sync_after_compaction_publishes_even_when_the_new_packs_are_uploaded_already() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let a = dirs.path("a");
    init_remote(&g, &a, "moved", &["--pack-mib", "1"]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    let keep = random_bytes(81, 3 << 20);
    {
        use std::io::Write;
        // Alternating fsynced pieces: every pack holds records of both files.
        let mut k = fs::File::create(va.path("keep")).unwrap();
        let mut d = fs::File::create(va.path("gone")).unwrap();
        for (i, piece) in keep.chunks(128 << 10).enumerate() {
            k.write_all(piece).unwrap();
            k.sync_all().unwrap();
            d.write_all(&random_bytes(900 + i as u64, 256 << 10))
                .unwrap();
            d.sync_all().unwrap();
        }
    }
    fs::remove_file(va.path("gone")).unwrap();
    ok(sync(&env, &va.mnt), "sync (gone deleted)");
    let published = stats(&env, &a)["remote"]["generation"].as_u64().unwrap();
    let out = ok(
        dedupfs(&env, &["gc", a.to_str().unwrap(), "--json"]),
        "dedupfs gc",
    );
    let r: serde_json::Value = serde_json::from_str(&out).expect("gc json");
    assert!(
        r["compaction"]["packs_compacted"].as_u64().unwrap_or(0) > 0,
        "nothing compacted: {r}"
    );
    // The uploader sends the new packs on its own.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stats(&env, &a)["remote"]["not_uploaded_bytes"] != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "compacted packs not uploaded in 30 s: {}",
            stats(&env, &a)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    ok(sync(&env, &va.mnt), "sync after the compaction");
    let now = stats(&env, &a)["remote"]["generation"].as_u64().unwrap();
    assert!(
        now > published,
        "no generation published after the compaction (still {published})"
    );
    va.unmount();
    // What that generation says reads back elsewhere.
    let b = dirs.path("b");
    attach(&g, &b, "moved", &[]);
    let vb = Volume::mount_existing(&b, &["-o", "ro"], &env);
    assert_bytes_eq("keep, attached", &read_all(&vb.path("keep")), &keep);
}

#[test]
fn evicted_packs_are_read_back_from_the_bucket() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let a = dirs.path("a");
    // The smallest cache: 128 MiB, of which 64 MiB for whole packs.
    init_remote(
        &g,
        &a,
        "small",
        &["--cache-disk-gib", "0.125", "--pack-mib", "4"],
    );
    let mut va = Volume::mount_existing(&a, &[], &env);
    let data = random_bytes(5, 160 << 20);
    fs::write(va.path("f"), &data).unwrap();
    ok(sync(&env, &va.mnt), "sync");
    // The uploader evicts in the background after the uploads.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let local = || {
        fs::read_dir(a.join("packs"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".pack")
            })
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum::<u64>()
    };
    while local() > 80 << 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        local() <= 80 << 20,
        "{} MiB of packs kept locally",
        local() >> 20
    );
    va.unmount();
    va.remount();
    assert_bytes_eq("f after eviction", &read_all(&va.path("f")), &data);
    // Damaged cached blocks (a byte flipped in each): the chunk hashes catch them and the
    // blocks are fetched again; the reader gets the right bytes.
    va.unmount();
    let mut damaged = 0;
    for e in fs::read_dir(a.join("remote/cache")).unwrap() {
        let p = e.unwrap().path();
        let mut raw = fs::read(&p).unwrap();
        if raw.len() > 1000 {
            raw[999] ^= 0x40;
            fs::write(&p, raw).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no cached block to damage");
    va.remount();
    assert_bytes_eq(
        "f with damaged cached blocks",
        &read_all(&va.path("f")),
        &data,
    );
    assert!(
        va.log().contains("fetching them again"),
        "no log line about the damaged blocks:\n{}",
        va.log()
    );
}

#[test]
fn a_dead_object_store_keeps_writes_local_until_it_returns() {
    let Some((mut g, env, dirs)) = rig(false) else {
        return;
    };
    let a = dirs.path("a");
    init_remote(&g, &a, "v", &["--pack-mib", "1"]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    g.stop();
    // Writes go on into the local journal.
    let data = random_bytes(9, 6 << 20);
    fs::write(va.path("f"), &data).unwrap();
    let said = fails(sync(&env, &va.mnt), "sync with the store down");
    assert!(said.contains("object store"), "{said}");
    assert_bytes_eq("f", &read_all(&va.path("f")), &data);
    g.restart();
    ok(sync(&env, &va.mnt), "sync after the store came back");
    va.unmount();
    let vb = attached_ro(&g, &dirs, "b", "v");
    assert_bytes_eq("f attached", &read_all(&vb.path("f")), &data);
}

#[test]
fn a_writer_that_lost_the_volume_stops_and_nothing_published_is_lost() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let a = dirs.path("a");
    init_remote(&g, &a, "v", &[]);
    let va = Volume::mount_existing(&a, &[], &env);
    fs::write(va.path("base"), b"base").unwrap();
    ok(sync(&env, &va.mnt), "sync a");
    let b = dirs.path("b");
    attach(&g, &b, "v", &[]);
    // Forced past the lease (as if it had expired under a partition): delete it.
    client(&g, "v").delete("volumes/default/lease").unwrap();
    let vb = Volume::mount_existing(&b, &[], &env);
    fs::write(vb.path("from-b"), b"b's data").unwrap();
    ok(sync(&env, &vb.mnt), "sync b");
    // A publishes on top of a generation it did not build on: refused, and A stops writing.
    fs::write(va.path("from-a"), b"a's data").unwrap();
    let said = fails(sync(&env, &va.mnt), "sync of the fenced writer");
    assert!(said.contains("another writer"), "{said}");
    let e = fs::write(va.path("later"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    // What B published is the volume.
    let vc = attached_ro(&g, &dirs, "c", "v");
    assert_eq!(fs::read(vc.path("from-b")).unwrap(), b"b's data");
    assert_eq!(fs::read(vc.path("base")).unwrap(), b"base");
    assert!(!vc.path("from-a").exists());
    // Once B is gone, A (whose base is behind the head) may not take writes it could never
    // publish: its writable mount is refused even with the lease free.
    drop(vc);
    let mut va = va;
    let mut vb = vb;
    vb.unmount();
    va.unmount();
    let said = Volume::mount_refused(&a, &[], &env);
    assert!(said.contains("not the generation"), "{said}");
}

#[test]
fn bad_remote_input_gets_one_clear_line_and_leaves_nothing() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let a = dirs.path("a");
    init_remote(&g, &a, "v", &[]);
    // The same volume again.
    let a2 = dirs.path("a2");
    let url = url_of(&g, "v");
    let said = fails(
        dedupfs(&env, &["init", a2.to_str().unwrap(), "--remote", &url]),
        "init of an existing volume",
    );
    assert!(said.contains("exists already"), "{said}");
    assert!(!a2.exists(), "a refused init left {}", a2.display());
    // An endpoint nobody listens on.
    let mut dead = env.clone();
    dead.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
    dead.push((
        "AWS_ENDPOINT_URL".into(),
        format!("http://127.0.0.1:{}", garage::closed_port()),
    ));
    let said = fails(
        dedupfs(
            &dead,
            &["init", a2.to_str().unwrap(), "--remote", &url_of(&g, "w")],
        ),
        "init against a dead endpoint",
    );
    assert!(said.contains("cannot reach"), "{said}");
    assert!(!a2.exists());
    // No credentials.
    let said = fails(
        dedupfs(&[], &["attach", a2.to_str().unwrap(), "--remote", &url]),
        "attach without credentials",
    );
    assert!(said.contains("AWS_ACCESS_KEY_ID"), "{said}");
    // A volume that is not there, and a store directory in use.
    let said = fails(
        dedupfs(
            &env,
            &[
                "attach",
                a2.to_str().unwrap(),
                "--remote",
                &url,
                "--volume",
                "nope",
            ],
        ),
        "attach of a missing volume",
    );
    assert!(said.contains("no volume \"nope\""), "{said}");
    let said = fails(
        dedupfs(&env, &["attach", a.to_str().unwrap(), "--remote", &url]),
        "attach into a used directory",
    );
    assert!(said.contains("not empty"), "{said}");
    assert!(a.join("meta.redb").exists());
}

#[test]
fn a_damaged_generation_is_skipped_for_the_previous_one() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let a = dirs.path("a");
    init_remote(&g, &a, "v", &[]);
    let va = Volume::mount_existing(&a, &[], &env);
    fs::write(va.path("one"), b"1").unwrap();
    ok(sync(&env, &va.mnt), "sync 1");
    fs::write(va.path("two"), b"2").unwrap();
    ok(sync(&env, &va.mnt), "sync 2");
    let c = client(&g, "v");
    let gens: Vec<_> = c.list("volumes/default/gens").unwrap();
    let newest = gens.last().unwrap().key.clone();
    let mut raw = c.get(&newest).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0x40;
    c.put(&newest, raw).unwrap();
    // fsck of the writer's store (mounted) names it with --verify-data; without, it only
    // checks that the object is there.
    let a_arg = a.to_str().unwrap();
    ok(
        dedupfs(&env, &["fsck", a_arg]),
        "fsck without --verify-data",
    );
    let said = fails(
        dedupfs(&env, &["fsck", "--verify-data", a_arg]),
        "fsck --verify-data of a store whose generation is damaged",
    );
    assert!(
        said.contains(&newest) && said.contains("checksum"),
        "{said}"
    );
    let b = dirs.path("b");
    let out = dedupfs(
        &env,
        &["attach", b.to_str().unwrap(), "--remote", &url_of(&g, "v")],
    );
    let said = ok(out.clone(), "attach");
    assert!(
        common::output_text(&out).contains("checksum"),
        "{}",
        common::output_text(&out)
    );
    let _ = said;
    let vb = Volume::mount_existing(&b, &["-o", "ro"], &env);
    assert_eq!(fs::read(vb.path("one")).unwrap(), b"1");
    assert!(!vb.path("two").exists());
    // The store that skipped the damaged head can write the volume on once A is gone (killed,
    // so it publishes nothing more; its lease forced away): its generation goes above the
    // damaged one, and another attach gets it.
    drop(vb);
    let mut va = va;
    va.kill9();
    c.delete("volumes/default/lease").unwrap();
    let vb = Volume::mount_existing(&b, &[], &env);
    fs::write(vb.path("three"), b"3").unwrap();
    ok(sync(&env, &vb.mnt), "sync above a damaged head");
    let vc = attached_ro(&g, &dirs, "c", "v");
    assert_eq!(fs::read(vc.path("three")).unwrap(), b"3");
}

/// A generation whose checksum is right but whose metadata section does not decode (a
/// writer's bug, or an unencrypted bucket edited) is skipped like a damaged one by `attach`
/// and by the catch-up of an attached store: every section is decoded before a generation
/// counts as good, never found bad half-way through an install. `attach` also makes the
/// missing parents of its store directory (it downloads into it).
#[test]
fn a_generation_whose_sections_do_not_decode_is_skipped_like_a_damaged_one() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    use dedupfs::remote::generation;
    let a = dirs.path("a");
    init_remote(&g, &a, "v", &[]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    fs::write(va.path("one"), b"1").unwrap();
    ok(sync(&env, &va.mnt), "sync");
    va.unmount();
    let b = dirs.path("b");
    ok(
        dedupfs(
            &env,
            &["attach", b.to_str().unwrap(), "--remote", &url_of(&g, "v")],
        ),
        "attach b",
    );
    // The head again, one generation up, with the metadata's zstd frame broken and the
    // checksum made right.
    let c = client(&g, "v");
    let gens = c.list("volumes/default/gens").unwrap();
    let raw = c.get(&gens.last().unwrap().key).unwrap();
    let mut next = generation::decode(&raw).unwrap();
    next.header.parent = next.header.generation;
    next.header.generation += 1;
    let mut bad = generation::encode(&next).unwrap();
    assert_eq!(
        u32::from_le_bytes(bad[48..52].try_into().unwrap()),
        1,
        "meta first"
    );
    bad[48 + 24] ^= 0xff;
    let body = bad.len() - 32;
    let sum = *blake3::hash(&bad[..body]).as_bytes();
    bad[body..].copy_from_slice(&sum);
    let bad_key = format!(
        "volumes/default/gens/{:016x}-{:016x}",
        next.header.generation, next.header.writer
    );
    c.put(&bad_key, bad).unwrap();
    // The attached store's catch-up skips it and mounts what it has.
    let vb = Volume::mount_existing(&b, &["-o", "ro"], &env);
    assert_eq!(fs::read(vb.path("one")).unwrap(), b"1");
    drop(vb);
    // A new attach, into a directory whose parents do not exist yet.
    let nested = dirs.path("x/y/c");
    let out = dedupfs(
        &env,
        &[
            "attach",
            nested.to_str().unwrap(),
            "--remote",
            &url_of(&g, "v"),
        ],
    );
    let text = common::output_text(&out);
    ok(out, "attach past a generation that does not decode");
    assert!(text.contains("does not decompress"), "{text}");
    let vc = Volume::mount_existing(&nested, &["-o", "ro"], &env);
    assert_eq!(fs::read(vc.path("one")).unwrap(), b"1");
}

#[test]
fn fsck_checks_the_bucket_and_names_the_files_of_a_lost_pack() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let a = dirs.path("a");
    init_remote(&g, &a, "v", &["--pack-mib", "1", "--compression", "none"]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    for i in 0..3u64 {
        fs::write(va.path(&format!("f{i}")), random_bytes(20 + i, 3 << 20)).unwrap();
    }
    va.unmount();
    // A cache with nothing local: every pack is read from the bucket.
    let b = dirs.path("b");
    attach(&g, &b, "v", &[]);
    let fsck = |args: &[&str]| {
        let mut all = vec!["fsck", b.to_str().unwrap()];
        all.extend_from_slice(args);
        dedupfs(&env, &all)
    };
    ok(fsck(&["--verify-data"]), "fsck of an intact remote volume");
    let c = client(&g, "v");
    // Damage one object in place (same size): only reading it tells.
    let packs = damage_first_big_pack(&c);
    ok(
        fsck(&[]),
        "fsck without --verify-data does not read the bucket's data",
    );
    let said = fails(fsck(&["--verify-data"]), "fsck of a damaged object");
    assert!(said.contains("damaged"), "{said}");
    assert!(said.contains("(file /f"), "no file named: {said}");
    // The files fsck names for the damaged object (all with a record in it: only the one
    // holding the flipped byte must fail) and for the lost one (all must fail).
    let named = |said: &str| -> Vec<u64> {
        said.match_indices("(file /f")
            .filter_map(|(at, m)| said[at + m.len()..].chars().next()?.to_digit(10))
            .map(u64::from)
            .collect()
    };
    let damaged = named(&said);
    // A lost object is found by listing.
    c.delete(&packs[packs.len() - 1].key).unwrap();
    let said = fails(fsck(&[]), "fsck of a lost object");
    assert!(said.contains("missing from the bucket"), "{said}");
    assert!(said.contains("(file /f"), "no file named: {said}");
    let lost = named(&said);
    // Reads of the lost or damaged data fail; they never return other bytes. (A fresh cache:
    // b's holds the ranges the first fsck fetched and verified.)
    let vb = attached_ro(&g, &dirs, "d", "v");
    for i in 0..3u64 {
        match fs::read(vb.path(&format!("f{i}"))) {
            Ok(d) => {
                assert!(!lost.contains(&i), "f{i} read although its pack is lost");
                assert_bytes_eq("intact file", &d, &random_bytes(20 + i, 3 << 20));
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                assert!(
                    lost.contains(&i) || damaged.contains(&i),
                    "f{i} failed although fsck did not name it"
                );
            }
        }
    }
}

#[test]
fn a_daemon_killed_while_uploading_publishes_everything_at_the_next_mount() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let a = dirs.path("a");
    init_remote(&g, &a, "v", &["--pack-mib", "1"]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    let data = random_bytes(31, 24 << 20);
    {
        use std::io::Write;
        let mut f = fs::File::create(va.path("f")).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    va.kill9();
    // The same store takes its own lease back at once (no wait for expiry).
    let started = std::time::Instant::now();
    va.remount();
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_bytes_eq("f after kill -9", &read_all(&va.path("f")), &data);
    va.unmount();
    let vb = attached_ro(&g, &dirs, "b", "v");
    assert_bytes_eq("f attached", &read_all(&vb.path("f")), &data);
}

#[test]
fn with_the_store_down_writes_stop_at_the_cache_limit_and_uncached_reads_fail_fast() {
    let Some((mut g, env, dirs)) = rig(false) else {
        return;
    };
    let a = dirs.path("a");
    init_remote(
        &g,
        &a,
        "v",
        &["--cache-disk-gib", "0.125", "--pack-mib", "4"],
    );
    let mut va = Volume::mount_existing(&a, &[], &env);
    let old = random_bytes(41, 8 << 20);
    fs::write(va.path("old"), &old).unwrap();
    va.unmount();
    // A second cache with nothing local, to read from while the store is down.
    let b = dirs.path("b");
    attach(&g, &b, "v", &[]);
    va.remount();
    g.stop();
    let vb = Volume::mount_existing(&b, &["-o", "ro"], &env);
    let started = std::time::Instant::now();
    let e = fs::read(vb.path("old")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "an uncached read took {:?} with the store down",
        started.elapsed()
    );
    assert!(
        vb.log().contains("cannot read from the object store"),
        "{}",
        vb.log()
    );
    drop(vb);
    // Writes go into the local journal until the not-uploaded bytes reach the 128 MiB budget.
    let mut f = fs::File::create(va.path("big")).unwrap();
    let mut written = 0u64;
    let err = loop {
        use std::io::Write;
        // Unique data: repeated blocks would dedup into nothing.
        let chunk = random_bytes(1000 + (written >> 20), 1 << 20);
        match f.write_all(&chunk).and_then(|()| {
            if written.is_multiple_of(16 << 20) {
                f.sync_data()
            } else {
                Ok(())
            }
        }) {
            Ok(()) => written += 1 << 20,
            Err(e) => break e,
        }
        assert!(
            written < 400 << 20,
            "no ENOSPC after {written} bytes with the store down"
        );
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(
        written >= 64 << 20,
        "ENOSPC after only {} MiB",
        written >> 20
    );
    drop(f);
    // The store is back: everything goes up, and writing works again.
    g.restart();
    ok(sync(&env, &va.mnt), "sync after the store came back");
    fs::write(va.path("after"), b"after").unwrap();
    ok(sync(&env, &va.mnt), "sync");
    va.unmount();
    let vc = attached_ro(&g, &dirs, "c", "v");
    assert_bytes_eq("old", &read_all(&vc.path("old")), &old);
    assert_eq!(fs::read(vc.path("after")).unwrap(), b"after");
    assert!(fs::metadata(vc.path("big")).unwrap().len() >= written);
}

#[test]
fn a_three_node_cluster_losing_a_node_keeps_the_volume_working() {
    let Some((mut g, env, dirs)) = rig(true) else {
        return;
    };
    let a = dirs.path("a");
    init_remote(&g, &a, "v", &["--pack-mib", "1"]);
    let va = Volume::mount_existing(&a, &[], &env);
    let one = random_bytes(51, 6 << 20);
    fs::write(va.path("one"), &one).unwrap();
    // Node 2 stops mid-run (the mount talks to node 0).
    g.stop_node(2);
    let two = random_bytes(52, 6 << 20);
    fs::write(va.path("two"), &two).unwrap();
    ok(sync(&env, &va.mnt), "sync with a node down");
    g.restart_node(2);
    let vb = attached_ro(&g, &dirs, "b", "v");
    assert_bytes_eq("one", &read_all(&vb.path("one")), &one);
    assert_bytes_eq("two", &read_all(&vb.path("two")), &two);
}

#[test]
fn a_lost_pack_index_is_rebuilt_from_the_packs_in_the_bucket() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let a = dirs.path("a");
    init_remote(&g, &a, "v", &["--pack-mib", "1"]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    let data = random_bytes(61, 5 << 20);
    fs::write(va.path("f"), &data).unwrap();
    va.unmount();
    // A cache with no pack file of its own loses its index.
    let b = dirs.path("b");
    attach(&g, &b, "v", &[]);
    fs::write(b.join("index.redb"), b"not a database").unwrap();
    let said = ok(
        dedupfs(&env, &["fsck", "--repair", b.to_str().unwrap()]),
        "fsck --repair",
    );
    assert!(said.contains("consistent"), "{said}");
    let vb = Volume::mount_existing(&b, &["-o", "ro"], &env);
    assert_bytes_eq("f after the rebuild", &read_all(&vb.path("f")), &data);
}

/// Crash trials over the remote formats (packs.log, state.json, generations in the bucket):
/// the daemon is killed at a random moment while files are written and fsynced and
/// `dedupfs sync` publishes; after a remount every fsynced file is intact, and after the
/// remount's unmount another store attaches exactly the same files. Trials:
/// `DEDUPFS_REMOTE_CRASH_TRIALS` (default 4).
#[test]
fn kill_9_at_random_moments_loses_nothing_fsynced_locally_or_in_the_bucket() {
    use rand::{Rng, SeedableRng};
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let trials: u64 = std::env::var("DEDUPFS_REMOTE_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seed: u64 = rand::random();
    eprintln!("remote crash trials: seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let a = dirs.path("a");
    init_remote(&g, &a, "v", &["--pack-mib", "1"]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    // name -> content of every file whose fsync returned.
    let mut durable: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    for trial in 0..trials {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let syncer = {
            let (env, mnt, stop) = (env.clone(), va.mnt.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Fails once the daemon is killed: fine.
                    let _ = sync(&env, &mnt);
                }
            })
        };
        let kill_at = std::time::Instant::now()
            + std::time::Duration::from_millis(rng.random_range(300..2500));
        let mut i = 0;
        while std::time::Instant::now() < kill_at {
            let name = format!("t{trial}-{i}");
            let data = random_bytes(seed ^ (trial << 32) ^ i, rng.random_range(1..600_000));
            let f = fs::File::create(va.path(&name));
            let written = f.and_then(|mut f| {
                std::io::Write::write_all(&mut f, &data)?;
                f.sync_all()
            });
            if written.is_ok() {
                durable.insert(name, data);
            }
            i += 1;
        }
        va.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = syncer.join();
        va.remount();
        for (name, data) in &durable {
            assert_bytes_eq(
                &format!("{name} after kill -9 (seed {seed}, trial {trial})"),
                &read_all(&va.path(name)),
                data,
            );
        }
    }
    va.unmount();
    let vb = attached_ro(&g, &dirs, "b", "v");
    for (name, data) in &durable {
        assert_bytes_eq(
            &format!("{name} attached (seed {seed})"),
            &read_all(&vb.path(name)),
            data,
        );
    }
    let names = fs::read_dir(&vb.mnt).unwrap().count();
    assert!(
        names >= durable.len(),
        "{names} files, {} fsynced",
        durable.len()
    );
}

/// PUTs whose replies are lost after Garage stored the objects (a proxy closes the
/// connection instead of answering): the ambiguous outcome of a timeout. The first pack PUT
/// loses one reply (the client's own retry stores the same key again); the
/// generation PUT loses every reply until the client gives up, so the publication fails with
/// its generation in the bucket. The next `dedupfs sync` must build on that generation of its
/// own (not take it for another writer's and fence the volume), another machine attaches the
/// same bytes, and each pack is one object.
#[test]
fn puts_whose_replies_are_lost_are_retried_and_publish_once() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let proxy = common::reply_drop::ReplyDropper::start(&g.endpoint, &[]);
    let penv: Env = env
        .iter()
        .map(|(k, v)| match k.as_str() {
            "AWS_ENDPOINT_URL" => (k.clone(), proxy.endpoint.clone()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let a = dirs.path("a");
    let url = url_of(&g, "v");
    ok(
        dedupfs(
            &penv,
            &[
                "init",
                a.to_str().unwrap(),
                "--remote",
                &url,
                "--pack-mib",
                "1",
            ],
        ),
        "init through the proxy",
    );
    let mut va = Volume::mount_existing(&a, &[], &penv);
    let one = random_bytes(71, 4 << 20);
    fs::write(va.path("one"), &one).unwrap();
    // One attempt and six retries (`RemoteConfig::max_retries`): all seven replies lost.
    proxy.lose("PUT", "/packs/", 1);
    proxy.lose("PUT", "/gens/", 7);
    let mut said = Vec::new();
    let synced = (0..3).any(|_| {
        let o = sync(&penv, &va.mnt);
        said.push(common::output_text(&o));
        o.status.success()
    });
    let lost = proxy.lost();
    eprintln!("replies lost: {lost:?}; syncs: {said:?}");
    assert!(synced, "no sync succeeded: {said:?}");
    let gens_lost = lost.iter().filter(|l| l.contains("/gens/")).count();
    assert!(
        lost.iter().any(|l| l.contains("/packs/")) && gens_lost == 7,
        "the faults were not injected (replies lost: {lost:?}, still to lose: {})",
        proxy.pending()
    );
    // Not fenced by its own generation: later writes publish too.
    let two = random_bytes(72, 1 << 20);
    fs::write(va.path("two"), &two).unwrap();
    ok(sync(&penv, &va.mnt), "sync after the lost replies");
    va.unmount();

    let vb = attached_ro(&g, &dirs, "b", "v");
    assert_bytes_eq("one", &read_all(&vb.path("one")), &one);
    assert_bytes_eq("two", &read_all(&vb.path("two")), &two);
    // Each pack is one object: a retried upload stored the same key again.
    let c = client(&g, "v");
    let packs: Vec<String> = c
        .list("packs/")
        .unwrap()
        .into_iter()
        .map(|o| o.key.rsplit('/').next().unwrap().to_string())
        .collect();
    let mut ids: Vec<&str> = packs.iter().map(|k| k.split('-').next().unwrap()).collect();
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!(
        ids.len(),
        n,
        "a pack number uploaded under two names: {packs:?}"
    );
}

/// Remote volumes compact too (`dedupfs gc`, mounted): the live records of mostly-dead packs
/// move to new packs, which are uploaded and named by the next generation; the old pack
/// objects, named by no head any more, go with the bucket gc, so deleted data stops costing
/// bucket space. Evicted packs are fetched from the bucket for it. Nothing live is lost: the
/// volume, a fresh attach and fsck --verify-data agree.
#[test]
fn gc_compacts_a_remote_volumes_packs_and_the_bucket_gc_takes_the_old_ones() {
    use std::io::Write;
    let Some((mut g, env, dirs)) = rig(false) else {
        return;
    };
    let a = dirs.path("a");
    init_remote(&g, &a, "compact", &["--volume", "a", "--pack-mib", "1"]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    // Two files written in alternating fsynced pieces: every pack holds records of both, two
    // thirds or more of them of the file deleted below (four fifths in the later packs).
    const PIECE: usize = 128 << 10;
    let keep = random_bytes(71, 36 * PIECE);
    let gone = random_bytes(72, 96 * PIECE);
    {
        let mut k = fs::File::create(va.path("keep")).unwrap();
        let mut d = fs::File::create(va.path("gone")).unwrap();
        let pieces = keep[..24 * PIECE]
            .chunks(PIECE)
            .chain(keep[24 * PIECE..].chunks(PIECE / 2));
        for (pk, pd) in pieces.zip(gone.chunks(2 * PIECE)) {
            k.write_all(pk).unwrap();
            k.sync_all().unwrap();
            d.write_all(pd).unwrap();
            d.sync_all().unwrap();
        }
    }
    va.unmount();
    // Every pack is uploaded now: evict the older half by hand (as the cache budget would).
    // The later, deader packs stay local and are compacted first.
    let packs = pack_files(&a);
    assert!(packs.len() >= 12, "{} packs", packs.len());
    for p in &packs[..packs.len() / 2] {
        fs::remove_file(p).unwrap();
    }
    va.remount();
    fs::remove_file(va.path("gone")).unwrap();
    ok(sync(&env, &va.mnt), "sync (gone deleted)");

    // A gc that fails part-way (the bucket down when it needs an evicted pack, after it
    // compacted local ones): publication must go on once the bucket is back.
    g.stop();
    let failed = dedupfs(&env, &["gc", a.to_str().unwrap()]);
    assert!(
        !failed.status.success(),
        "gc with the bucket down succeeded: {}",
        String::from_utf8_lossy(&failed.stdout)
    );
    // It did compact local packs before it failed (so its output pack was left to close).
    let gone_local = packs[packs.len() / 2..]
        .iter()
        .filter(|p| !p.exists())
        .count();
    assert!(
        gone_local > 0,
        "the failed gc compacted nothing: the test does not stage a failure part-way"
    );
    g.restart();
    ok(sync(&env, &va.mnt), "sync after a gc that failed part-way");
    assert_bytes_eq("keep after a failed gc", &read_all(&va.path("keep")), &keep);
    let before = own_pack_bytes(&g, "compact", &a);
    assert!(
        before >= 3 * keep.len() as u64,
        "{before} bytes of packs in the bucket"
    );

    let out = ok(
        dedupfs(&env, &["gc", a.to_str().unwrap(), "--json"]),
        "dedupfs gc",
    );
    let r: serde_json::Value = serde_json::from_str(&out).expect("gc json");
    let compacted = r["compaction"]["packs_compacted"].as_u64().unwrap_or(0);
    // What the failed run left (it stopped at the first evicted pack with live records) is
    // compacted now, the evicted packs included: the bucket bytes below say whether all were.
    assert!(compacted > 0, "nothing compacted: {r}");
    assert_bytes_eq("keep after compaction", &read_all(&va.path("keep")), &keep);
    ok(sync(&env, &va.mnt), "sync (compacted packs uploaded)");

    // The old pack objects: named by no head now, marked, acknowledged, swept.
    let url = url_of(&g, "compact");
    let run = |what: &str| -> serde_json::Value {
        let out = ok(dedupfs(&env, &["gc-bucket", &url, "--json"]), what);
        serde_json::from_str(&out).expect("gc-bucket json")
    };
    let r1 = run("gc-bucket (mark)");
    assert!(
        r1["marked_bytes"].as_u64().unwrap_or(0) >= before - keep.len() as u64 * 3 / 2,
        "the compacted packs were not marked: {r1}"
    );
    ok(sync(&env, &va.mnt), "sync (acknowledges)");
    let r2 = run("gc-bucket (sweep)");
    assert!(r2["deleted_packs"].as_u64().unwrap_or(0) > 0, "{r2}");
    let after = own_pack_bytes(&g, "compact", &a);
    assert!(
        after <= keep.len() as u64 * 13 / 10,
        "the bucket still holds {after} bytes of packs for {} live bytes ({before} before)",
        keep.len()
    );

    assert_bytes_eq("keep after the sweep", &read_all(&va.path("keep")), &keep);
    assert!(!va.path("gone").exists());
    va.unmount();
    ok(
        dedupfs(&env, &["fsck", a.to_str().unwrap(), "--verify-data"]),
        "fsck --verify-data of the compacted store",
    );
    fresh_attach_reads(&g, &env, &dirs.path("b"), "compact", "keep", &keep);
}

/// `attach` of volume `a` under `prefix` into `store`: fsck --verify-data passes and `file`
/// reads `want` on a read-only mount, which is returned.
fn fresh_attach_reads(
    g: &garage::Garage,
    env: &[(String, String)],
    store: &std::path::Path,
    prefix: &str,
    file: &str,
    want: &[u8],
) -> Volume {
    attach(g, store, prefix, &["--volume", "a"]);
    ok(
        dedupfs(env, &["fsck", store.to_str().unwrap(), "--verify-data"]),
        "fsck --verify-data of a fresh attach",
    );
    let v = Volume::mount_existing(store, &["-o", "ro"], env);
    assert_bytes_eq(
        &format!("{file} from a fresh attach"),
        &read_all(&v.path(file)),
        want,
    );
    v
}

#[test]
fn the_daemon_compacts_a_remote_volumes_local_packs_in_the_background() {
    use std::io::Write;
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let a = dirs.path("a");
    init_remote(&g, &a, "bgcompact", &["--volume", "a", "--pack-mib", "4"]);
    let va = Volume::mount_existing(&a, &[], &env);
    // One file of 80 MiB written in fsynced pieces, then seven eighths of every MiB punched
    // out: every pack keeps live records and is mostly dead (past the background step's
    // threshold of 64 MiB dead and a quarter of the pack bytes), so no delete frees a whole
    // pack and only compaction gives the space back.
    const PIECE: usize = 1 << 20;
    const KEPT: usize = PIECE / 8;
    let data = random_bytes(81, 80 * PIECE);
    {
        let mut f = fs::File::create(va.path("img")).unwrap();
        for piece in data.chunks(PIECE) {
            f.write_all(piece).unwrap();
            f.sync_all().unwrap();
        }
    }
    ok(sync(&env, &va.mnt), "sync (everything uploaded)");
    let local = || -> u64 {
        pack_files(&a)
            .iter()
            .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum()
    };
    let before = local();
    assert!(before >= data.len() as u64, "{before} bytes of local packs");
    let mut keep = data.clone();
    {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(va.path("img"))
            .unwrap();
        for i in 0..80 {
            let (off, len) = (i * PIECE + KEPT, PIECE - KEPT);
            fallocate(
                &f,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off as u64,
                len as u64,
            )
            .unwrap();
            keep[off..off + len].fill(0);
        }
        f.sync_all().unwrap();
    }
    let live = (80 * KEPT) as u64;
    ok(sync(&env, &va.mnt), "sync (holes punched)");
    assert!(
        local() >= before * 3 / 4,
        "a durable point freed {} of {before} bytes of packs by itself: the packs do not \
         hold live and dead records together, the test would not see the background step",
        before - local()
    );
    // No `dedupfs gc`: the daemon's background step (every 5 s) rewrites the uploaded packs
    // that are mostly dead.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while local() > 4 * live && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let after = local();
    assert!(
        after <= 4 * live,
        "local packs still hold {after} bytes for {live} live ({before} before): no background \
         compaction\n{}",
        va.log()
    );
    // ...and until no step is under way: a step deletes the packs it compacted as it goes,
    // and a sync in the middle of one rightly publishes the packs not yet compacted, which
    // the mark below would then keep (this failed about one run in six). Steps start every
    // 5 s and last at most 2 s: 6 s without a change in the local packs means none runs.
    let (mut seen, mut since) = (local(), std::time::Instant::now());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while since.elapsed() < std::time::Duration::from_secs(6) {
        assert!(
            std::time::Instant::now() < deadline,
            "background compaction did not settle in 60 s\n{}",
            va.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
        let now = local();
        if now != seen {
            (seen, since) = (now, std::time::Instant::now());
        }
    }
    // The uploader sends the compacted packs on its own; the next sync must still publish a
    // generation that names them instead of the old ones (compaction changed no file, only
    // where chunks live), which the bucket gc then marks. (Measured: with the moved-packs
    // flag removed from both compaction paths this still passes, as that sync finds one
    // more pack to upload; `fs_core::a_background_compaction_step_makes_the_next_durable_
    // point_a_change` is what guards the flag.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stats(&env, &a)["remote"]["not_uploaded_bytes"] != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "compacted packs not uploaded in 30 s: {}",
            stats(&env, &a)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    ok(sync(&env, &va.mnt), "sync (compacted packs uploaded)");
    let out = ok(
        dedupfs(&env, &["gc-bucket", &url_of(&g, "bgcompact"), "--json"]),
        "gc-bucket (mark)",
    );
    let r: serde_json::Value = serde_json::from_str(&out).expect("gc-bucket json");
    assert!(
        r["marked_bytes"].as_u64().unwrap_or(0) >= before / 2,
        "the old packs were not marked: {r}"
    );
    // Read only now: a read before the sync would update the file's atime, a change of its
    // own that the publication would carry even if compaction were not counted as one.
    assert_bytes_eq("img after compaction", &read_all(&va.path("img")), &keep);
    drop(va);
    fresh_attach_reads(&g, &env, &dirs.path("b"), "bgcompact", "img", &keep);
}

#[test]
fn an_attached_store_catches_up_with_the_volume_each_time_it_is_mounted() {
    let Some((mut g, env, dirs)) = rig(false) else {
        return;
    };
    let (a, b, c) = (dirs.path("a"), dirs.path("b"), dirs.path("c"));
    init_remote(&g, &a, "follow", &["--volume", "v"]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    let one = random_bytes(91, 3 << 20);
    fs::write(va.path("one"), &one).unwrap();
    ok(sync(&env, &va.mnt), "sync 1");
    attach(&g, &b, "follow", &["--volume", "v"]);
    let mut vb = Volume::mount_existing(&b, &["-o", "ro"], &env);
    assert_bytes_eq("one", &read_all(&vb.path("one")), &one);

    // The writer goes on: a file changed, a new one, a snapshot.
    let one2 = random_bytes(92, 3 << 20);
    let two = random_bytes(93, 2 << 20);
    fs::write(va.path("one"), &one2).unwrap();
    fs::write(va.path("two"), &two).unwrap();
    ok(
        dedupfs(
            &env,
            &["snapshot", "create", va.mnt.to_str().unwrap(), "s1"],
        ),
        "snapshot create",
    );
    ok(sync(&env, &va.mnt), "sync 2");
    // A mounted reader keeps the generation it mounted; mounted again, it has the newest.
    assert!(!vb.path("two").exists());
    vb.unmount();
    vb.remount();
    assert_bytes_eq("one, changed", &read_all(&vb.path("one")), &one2);
    assert_bytes_eq("two", &read_all(&vb.path("two")), &two);
    assert_bytes_eq(
        "one in the snapshot",
        &read_all(&vb.path(".snapshots/s1/one")),
        &one2,
    );
    assert!(vb.log().contains("caught up"), "{}", vb.log());

    // The bucket out of reach: the copy it has is mounted, with a line saying so.
    vb.unmount();
    g.stop();
    vb.remount();
    assert_bytes_eq("two, bucket down", &read_all(&vb.path("two")), &two);
    assert!(
        vb.log().contains("cannot look for a newer generation"),
        "{}",
        vb.log()
    );
    vb.unmount();
    g.restart();
    va.unmount();

    // Attached and never written to, a store also catches up before a mount for writing
    // (which its base being the head requires): c attaches now, b then writes.
    attach(&g, &c, "follow", &["--volume", "v"]);
    vb.set_mount_args(&[]);
    vb.remount();
    let three = random_bytes(94, 1 << 20);
    fs::write(vb.path("three"), &three).unwrap();
    vb.unmount();
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(b.join("remote/state.json")).unwrap()).unwrap();
    assert_eq!(state["attached_only"], false, "{state}");
    let mut vc = Volume::mount_existing(&c, &[], &env);
    assert_bytes_eq("three, from c", &read_all(&vc.path("three")), &three);
    let four = random_bytes(95, 1 << 20);
    fs::write(vc.path("four"), &four).unwrap();
    vc.unmount();

    // b has been written to: its own state stays as it is (a mount for writing is refused
    // with c's generation above its base; read-only it serves its own copy).
    vb.set_mount_args(&["-o", "ro"]);
    vb.remount();
    assert_bytes_eq("three, b's own", &read_all(&vb.path("three")), &three);
    assert!(!vb.path("four").exists());
    vb.unmount();
    vb.set_mount_args(&[]);
    let said = Volume::mount_refused(&b, &[], &env);
    assert!(said.contains("another writer"), "{said}");
}

/// `dedupfs gc` on a store attach made (not mounted) compacts the volume's packs into new
/// local pack files numbered like the writer's next packs; catching up later installs an
/// index naming the writer's packs of those numbers, and the stale local files shadow them.
#[test]
fn pack_files_an_offline_gc_left_in_an_attached_store_do_not_shadow_the_writers_packs() {
    use std::io::Write;
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let (a, b) = (dirs.path("a"), dirs.path("b"));
    init_remote(&g, &a, "stray", &["--volume", "v", "--pack-mib", "1"]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    const PIECE: usize = 128 << 10;
    let keep = random_bytes(171, 24 * PIECE);
    let gone = random_bytes(172, 48 * PIECE);
    {
        let mut k = fs::File::create(va.path("keep")).unwrap();
        let mut d = fs::File::create(va.path("gone")).unwrap();
        for (pk, pd) in keep.chunks(PIECE).zip(gone.chunks(2 * PIECE)) {
            k.write_all(pk).unwrap();
            k.sync_all().unwrap();
            d.write_all(pd).unwrap();
            d.sync_all().unwrap();
        }
    }
    va.unmount();
    // Evicted (as the cache budget would): the writer's background compaction leaves them.
    for p in pack_files(&a) {
        fs::remove_file(p).unwrap();
    }
    va.remount();
    fs::remove_file(va.path("gone")).unwrap();
    va.unmount();

    attach(&g, &b, "stray", &["--volume", "v"]);
    let out = ok(
        dedupfs(&env, &["gc", b.to_str().unwrap(), "--json"]),
        "gc b",
    );
    let made = pack_files(&b);
    assert!(
        !made.is_empty(),
        "gc on the attached store compacted nothing: {out}"
    );

    // The writer goes on: its next packs take the numbers b's gc used.
    va.remount();
    let new = random_bytes(173, 4 << 20);
    fs::write(va.path("new"), &new).unwrap();
    va.unmount();

    let vb = Volume::mount_existing(&b, &["-o", "ro"], &env);
    assert!(vb.log().contains("caught up"), "{}", vb.log());
    assert_bytes_eq("keep on b", &read_all(&vb.path("keep")), &keep);
    let got = fs::read(vb.path("new"));
    assert!(got.is_ok(), "new on b: {got:?}\n{}", vb.log());
    assert_bytes_eq("new on b", &got.unwrap(), &new);
}

/// An install cut short (a file could not be replaced), then a mount with the bucket out of
/// reach: refused (the copy is half old, half new); with the bucket back, finished.
#[test]
fn a_catch_up_cut_short_is_finished_by_the_next_mount_and_never_mounted_half_done() {
    let Some((mut g, env, dirs)) = rig(false) else {
        return;
    };
    let (a, b) = (dirs.path("a"), dirs.path("b"));
    init_remote(&g, &a, "cut", &["--volume", "v"]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    let one = random_bytes(181, 3 << 20);
    fs::write(va.path("one"), &one).unwrap();
    ok(sync(&env, &va.mnt), "sync 1");
    attach(&g, &b, "cut", &["--volume", "v"]);
    let two = random_bytes(182, 3 << 20);
    fs::write(va.path("two"), &two).unwrap();
    va.unmount();

    // The install fails after meta.redb was replaced (as a full disk would).
    fs::create_dir(b.join(".index.redb.tmp")).unwrap();
    let said = Volume::mount_refused(&b, &["-o", "ro"], &env);
    assert!(said.contains("failed part-way"), "{said}");
    fs::remove_dir(b.join(".index.redb.tmp")).unwrap();

    g.stop();
    let said = Volume::mount_refused(&b, &["-o", "ro"], &env);
    assert!(said.contains("cut short"), "{said}");
    g.restart();
    let vb = Volume::mount_existing(&b, &["-o", "ro"], &env);
    assert_bytes_eq("one", &read_all(&vb.path("one")), &one);
    assert_bytes_eq("two", &read_all(&vb.path("two")), &two);
}
