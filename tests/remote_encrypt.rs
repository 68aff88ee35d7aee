//! Encrypted remote volumes (`init --encrypt KEYFILE`) on a real Garage server.
//!
//! Guards against: plaintext or plain content hashes (chunk names) reaching the bucket; an
//! encrypted volume that another machine cannot attach with the key, or attaches without it or
//! with another key (a wrong key must be refused before anything is written, and never read
//! as garbage); a damaged sealed record served as data instead of EIO; dedup across volumes
//! whose keys differ (a key is a dedup domain) or no dedup between volumes sharing one.
//!
//! Skips (with a `SKIP:` line) when FUSE or the `garage` binary is absent.

mod common;

use common::garage::Garage;
use common::remote::*;
use common::tree;
use common::{Volume, assert_bytes_eq, random_bytes, read_all};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

const MIB: usize = 1 << 20;
/// A distinctive plaintext, and a file name, that must appear in no object of the bucket.
const MARKER: &[u8] = b"dedupfs-plaintext-marker-5b1e9c";
const SECRET_NAME: &str = "secret-file-name-q9z4";

fn keygen(env: &[(String, String)], path: &Path) {
    ok(
        dedupfs(env, &["keygen", path.to_str().unwrap()]),
        "dedupfs keygen",
    );
}

/// Every object under `prefix`: (key, bytes).
fn all_objects(g: &Garage, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let c = client(g, prefix);
    c.list("")
        .unwrap()
        .into_iter()
        .map(|o| {
            let b = c.get(&o.key).unwrap();
            (o.key, b)
        })
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A checksum of every file under `dir` (path -> blake3 of its bytes).
fn checksums(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let h = blake3::hash(&fs::read(e.path()).unwrap());
                out.insert(e.path(), h.to_hex().to_string());
            }
        }
    }
    out
}

fn with_key_env(env: &[(String, String)], key: &Path) -> Vec<(String, String)> {
    let mut e = env.to_vec();
    e.push(("DEDUPFS_KEY_FILE".into(), key.to_str().unwrap().into()));
    e
}

/// The marker file: 1000 bytes, below the smallest chunk, so it is one chunk whose plain
/// name is the blake3 of the whole file.
fn marker_file() -> Vec<u8> {
    MARKER.iter().copied().cycle().take(1000).collect()
}

/// Writes the marker file, a tree and a random file into `v`; returns the random file.
fn fill(v: &Volume) -> Vec<u8> {
    fs::write(v.path(SECRET_NAME), marker_file()).unwrap();
    tree::make_tree(&v.path("tree"), 3, 60);
    let big = random_bytes(41, 5 * MIB);
    fs::write(v.path("big.bin"), &big).unwrap();
    big
}

#[test]
fn an_encrypted_volume_leaves_no_plaintext_or_plain_hash_in_the_bucket_and_attaches_with_its_key() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let plain_id = *blake3::hash(&marker_file()).as_bytes();

    // Control: an unencrypted volume shows both, so the search below can find them.
    let p = dirs.path("plain");
    init_remote(&g, &p, "plain", &["--compression", "none"]);
    let mut vp = Volume::mount_existing(&p, &[], &env);
    fill(&vp);
    vp.unmount();
    let objects = all_objects(&g, "plain");
    assert!(objects.iter().any(|(_, b)| contains(b, MARKER)));
    assert!(objects.iter().any(|(_, b)| contains(b, &plain_id)));

    let key = dirs.path("k1");
    keygen(&env, &key);
    let a = dirs.path("a");
    init_remote(
        &g,
        &a,
        "secret",
        &[
            "--compression",
            "none",
            "--pack-mib",
            "1",
            "--encrypt",
            key.to_str().unwrap(),
        ],
    );
    let config = fs::read_to_string(a.join("remote.json")).unwrap();
    assert!(config.contains("key_id"), "{config}");
    let key_bytes = fs::read(&key).unwrap();
    assert!(!contains(config.as_bytes(), &key_bytes[..8]), "{config}");
    let mut va = Volume::mount_existing(&a, &[], &env);
    let big = fill(&va);
    let want = tree::snapshot(&va.mnt);
    va.unmount();

    let objects = all_objects(&g, "secret");
    assert!(objects.len() >= 5, "{} objects", objects.len());
    for (k, b) in &objects {
        assert!(!contains(b, MARKER), "{k} holds the plaintext marker");
        assert!(!contains(b, &plain_id), "{k} holds a plain chunk hash");
        assert!(
            !contains(b, SECRET_NAME.as_bytes()),
            "{k} holds a file name"
        );
        assert!(!contains(b, &key_bytes), "{k} holds the key");
    }

    // Another machine with the key reads the same tree and bytes.
    let b = dirs.path("b");
    attach(&g, &b, "secret", &["--encrypt", key.to_str().unwrap()]);
    let vb = Volume::mount_existing(&b, &["-o", "ro"], &env);
    tree::assert_same_tree("attached volume", &tree::snapshot(&vb.mnt), &want, true);
    assert_bytes_eq("big.bin", &read_all(&vb.path("big.bin")), &big);
    assert_eq!(fs::read(vb.path(SECRET_NAME)).unwrap(), marker_file());
}

#[test]
fn a_wrong_or_missing_key_is_refused_before_anything_is_written() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let (k1, k2) = (dirs.path("k1"), dirs.path("k2"));
    keygen(&env, &k1);
    keygen(&env, &k2);
    let said = fails(
        dedupfs(&env, &["keygen", k1.to_str().unwrap()]),
        "keygen over a key",
    );
    assert!(said.contains("never overwrites"), "{said}");
    let a = dirs.path("a");
    init_remote(&g, &a, "v", &["--encrypt", k1.to_str().unwrap()]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    fs::write(va.path("f"), b"encrypted data").unwrap();
    va.unmount();

    // attach: with another key, or without one.
    let x = dirs.path("x");
    let said = fails(
        dedupfs(
            &env,
            &[
                "attach",
                x.to_str().unwrap(),
                "--remote",
                &url_of(&g, "v"),
                "--encrypt",
                k2.to_str().unwrap(),
            ],
        ),
        "attach with the wrong key",
    );
    assert!(said.contains("wrong key"), "{said}");
    assert!(!x.exists(), "a refused attach left {}", x.display());
    let said = fails(
        dedupfs(
            &env,
            &["attach", x.to_str().unwrap(), "--remote", &url_of(&g, "v")],
        ),
        "attach without a key",
    );
    assert!(
        said.contains("encrypted") && said.contains("--encrypt"),
        "{said}"
    );
    assert!(!x.exists(), "a refused attach left {}", x.display());

    // mount: another key, a missing file, a file that is no key. The store is unchanged.
    let before = checksums(&a);
    let said = Volume::mount_refused(&a, &[], &with_key_env(&env, &k2));
    assert!(said.contains("wrong key"), "{said}");
    let said = Volume::mount_refused(&a, &[], &with_key_env(&env, &dirs.path("nokey")));
    assert!(said.contains("cannot read the key file"), "{said}");
    let short = dirs.path("short");
    fs::write(&short, b"too short").unwrap();
    let said = Volume::mount_refused(&a, &[], &with_key_env(&env, &short));
    assert!(said.contains("is no key"), "{said}");
    assert_eq!(checksums(&a), before, "a refused mount changed the store");
    // Offline commands are refused the same way.
    let said = fails(
        dedupfs(&with_key_env(&env, &k2), &["fsck", a.to_str().unwrap()]),
        "fsck with the wrong key",
    );
    assert!(said.contains("wrong key"), "{said}");
    assert_eq!(checksums(&a), before, "a refused fsck changed the store");

    // The key in hex works as well as the raw file, and the right key still mounts.
    let hex: String = fs::read(&k1)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let k1hex = dirs.path("k1.hex");
    fs::write(&k1hex, format!("{hex}\n")).unwrap();
    let va = Volume::mount_existing(&a, &["-o", "ro"], &with_key_env(&env, &k1hex));
    assert_eq!(fs::read(va.path("f")).unwrap(), b"encrypted data");
}

#[test]
fn a_damaged_encrypted_pack_reads_as_eio_and_fsck_names_it() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let key = dirs.path("k");
    keygen(&env, &key);
    let k = key.to_str().unwrap();
    let a = dirs.path("a");
    init_remote(
        &g,
        &a,
        "v",
        &["--pack-mib", "1", "--compression", "none", "--encrypt", k],
    );
    let mut va = Volume::mount_existing(&a, &[], &env);
    for i in 0..3u64 {
        fs::write(va.path(&format!("f{i}")), random_bytes(20 + i, 3 * MIB)).unwrap();
    }
    va.unmount();
    let b = dirs.path("b");
    attach(&g, &b, "v", &["--encrypt", k]);
    ok(
        dedupfs(&env, &["fsck", b.to_str().unwrap(), "--verify-data"]),
        "fsck of an intact encrypted volume",
    );
    let c = client(&g, "v");
    // Damage one object in place (same size): inside a record's ciphertext.
    let packs = damage_first_big_pack(&c);
    let said = fails(
        dedupfs(&env, &["fsck", b.to_str().unwrap(), "--verify-data"]),
        "fsck of a damaged encrypted object",
    );
    let pack_id = packs[0]
        .key
        .rsplit('/')
        .next()
        .unwrap()
        .split('-')
        .next()
        .unwrap();
    assert!(said.contains(pack_id), "pack {pack_id} not named: {said}");
    assert!(said.contains("(file /f"), "no file named: {said}");
    // A fresh cache reads the damaged record from the bucket: EIO, never other bytes.
    let d = dirs.path("d");
    attach(&g, &d, "v", &["--encrypt", k]);
    let vd = Volume::mount_existing(&d, &["-o", "ro"], &env);
    let mut failed = 0;
    for i in 0..3u64 {
        match fs::read(vd.path(&format!("f{i}"))) {
            Ok(data) => assert_bytes_eq("intact file", &data, &random_bytes(20 + i, 3 * MIB)),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                failed += 1;
            }
        }
    }
    assert_eq!(failed, 1, "reads of the one damaged file");
    assert!(
        vd.log().contains("fails authentication"),
        "no log line for the damaged record: {}",
        vd.log()
    );
}

#[test]
fn volumes_dedup_against_each_other_only_when_they_share_the_key() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let (k1, k2) = (dirs.path("k1"), dirs.path("k2"));
    keygen(&env, &k1);
    keygen(&env, &k2);
    let image = random_bytes(51, 16 * MIB);
    let own_bytes = |store: &Path| own_pack_bytes(&g, "pool", store);
    let write = |name: &str, key: &Path| -> PathBuf {
        let s = dirs.path(name);
        init_remote(
            &g,
            &s,
            "pool",
            &["--volume", name, "--encrypt", key.to_str().unwrap()],
        );
        let mut v = Volume::mount_existing(&s, &[], &env);
        fs::write(v.path("image"), &image).unwrap();
        ok(sync(&env, &v.mnt), "dedupfs sync");
        assert_bytes_eq("image", &read_all(&v.path("image")), &image);
        v.unmount();
        s
    };
    let a = write("a", &k1);
    let a_bytes = own_bytes(&a);
    assert!(a_bytes >= 16 * MIB as u64, "a uploaded {a_bytes}");
    let b = write("b", &k1);
    let b_bytes = own_bytes(&b);
    let c = write("c", &k2);
    let c_bytes = own_bytes(&c);
    eprintln!("uploaded: a {a_bytes}, b (same key) {b_bytes}, c (other key) {c_bytes}");
    assert!(
        b_bytes * 100 < a_bytes,
        "b shares a's key and uploaded {b_bytes} bytes"
    );
    assert!(
        c_bytes >= 16 * MIB as u64,
        "c has another key and uploaded only {c_bytes} bytes"
    );
    // Each reads back on another machine with its own key.
    for (name, key) in [("b", &k1), ("c", &k2)] {
        let s = dirs.path(&format!("{name}2"));
        attach(
            &g,
            &s,
            "pool",
            &["--volume", name, "--encrypt", key.to_str().unwrap()],
        );
        let v = Volume::mount_existing(&s, &["-o", "ro"], &env);
        assert_bytes_eq(name, &read_all(&v.path("image")), &image);
    }
    // The bucket gc reads what encrypted volumes name only with their keys.
    let url = url_of(&g, "pool");
    let gc = |keys: &[&Path]| {
        let mut args = vec!["gc-bucket", url.as_str(), "--json"];
        for k in keys {
            args.push("--encrypt");
            args.push(k.to_str().unwrap());
        }
        dedupfs(&env, &args)
    };
    let said = fails(gc(&[]), "gc-bucket without the keys");
    assert!(
        said.contains("--encrypt") && said.contains("encrypted"),
        "{said}"
    );
    let said = fails(gc(&[&k1]), "gc-bucket without c's key");
    assert!(said.contains("volume c"), "{said}");
    // c drops its file: with both keys, its packs are marked, acknowledged and deleted, and
    // a and b (another key) lose nothing.
    let mut vc = Volume::mount_existing(&c, &[], &env);
    fs::remove_file(vc.path("image")).unwrap();
    ok(sync(&env, &vc.mnt), "sync c");
    vc.unmount();
    let r: serde_json::Value =
        serde_json::from_str(&ok(gc(&[&k1, &k2]), "gc-bucket with both keys")).unwrap();
    assert!(
        r["marked_bytes"].as_u64().unwrap() >= 16 * MIB as u64,
        "{r}"
    );
    for s in [&a, &b, &c] {
        let mut v = Volume::mount_existing(s, &[], &env);
        ok(sync(&env, &v.mnt), "sync (acknowledges)");
        v.unmount();
    }
    let r: serde_json::Value =
        serde_json::from_str(&ok(gc(&[&k1, &k2]), "gc-bucket sweep")).unwrap();
    assert!(
        r["deleted_bytes"].as_u64().unwrap() >= 16 * MIB as u64,
        "{r}"
    );
    for name in ["a", "b"] {
        let s = dirs.path(&format!("{name}3"));
        attach(
            &g,
            &s,
            "pool",
            &["--volume", name, "--encrypt", k1.to_str().unwrap()],
        );
        let v = Volume::mount_existing(&s, &["-o", "ro"], &env);
        assert_bytes_eq(name, &read_all(&v.path("image")), &image);
    }
}

/// A cache of an encrypted volume that lost its pack index rebuilds it from the sealed packs
/// in the bucket, with the key; with another key the rebuild is refused (an index rebuilt
/// from records it cannot open would name none of the volume's chunks) and nothing changes.
#[test]
fn a_lost_index_of_an_encrypted_volume_is_rebuilt_from_the_bucket_only_with_its_key() {
    let Some((g, env, dirs)) = rig(false) else {
        return;
    };
    let key = dirs.path("k1");
    keygen(&env, &key);
    let other = dirs.path("k2");
    keygen(&env, &other);
    let a = dirs.path("a");
    let k = key.to_str().unwrap();
    init_remote(&g, &a, "v", &["--pack-mib", "1", "--encrypt", k]);
    let mut va = Volume::mount_existing(&a, &[], &env);
    let big = fill(&va);
    let want = tree::snapshot(&va.mnt);
    va.unmount();

    // Another cache, with no pack file of its own, loses its index.
    let b = dirs.path("b");
    attach(&g, &b, "v", &["--encrypt", k]);
    fs::write(b.join("index.redb"), b"not a database").unwrap();
    // The empty lock file the refused run takes holds nothing.
    let files = |d: &Path| {
        let mut m = checksums(d);
        m.remove(&d.join("lock"));
        m
    };
    let before = files(&b);
    let said = fails(
        dedupfs(
            &with_key_env(&env, &other),
            &["fsck", "--repair", b.to_str().unwrap()],
        ),
        "fsck --repair with another key",
    );
    assert!(said.to_lowercase().contains("key"), "{said}");
    assert_eq!(files(&b), before, "a refused rebuild changed the cache");

    let said = ok(
        dedupfs(&env, &["fsck", "--repair", b.to_str().unwrap()]),
        "fsck --repair",
    );
    assert!(said.contains("consistent"), "{said}");
    let vb = Volume::mount_existing(&b, &["-o", "ro"], &env);
    tree::assert_same_tree("after the rebuild", &tree::snapshot(&vb.mnt), &want, true);
    assert_bytes_eq(
        "big.bin after the rebuild",
        &read_all(&vb.path("big.bin")),
        &big,
    );
    assert_eq!(fs::read(vb.path(SECRET_NAME)).unwrap(), marker_file());
}
