//! Contract of `store::remote` against a real Garage server on loopback (never a mock): what
//! remote volumes will build on. Guards against a client that reads the wrong bytes of a range,
//! lists across prefixes, hangs on a dead endpoint, reports refused credentials or a missing
//! bucket as something else, or gives up on a store that restarts. It also records how Garage
//! treats conditional writes and Last-Modified, which the lease and fencing design depends on:
//! if a Garage upgrade changes either, a test here fails and says what to revisit.
//!
//! Skips (with a `SKIP:` line) only when the `garage` binary is absent.

mod common;

use common::garage::{self, Garage};
use dedupfs::error::RemoteError;
use dedupfs::store::remote::{RemoteConfig, RemoteStore};
use rand::RngCore;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

fn config(g: &Garage) -> RemoteConfig {
    g.client_config()
}

fn open(g: &Garage) -> RemoteStore {
    g.client()
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rng().fill_bytes(&mut v);
    v
}

#[test]
fn objects_round_trip_with_size_and_server_time() {
    if !garage::garage_available() {
        return;
    }
    let g = Garage::single();
    let s = open(&g);
    // Larger than Garage's 1 MiB block, and not a multiple of it.
    let data = random(3 * 1024 * 1024 + 17);
    let before = SystemTime::now();
    s.put("packs/0001", data.clone()).unwrap();
    assert_eq!(s.get("packs/0001").unwrap(), data);
    let info = s.head("packs/0001").unwrap();
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.key, "packs/0001");
    assert!(info.e_tag.is_some(), "Garage returns an ETag");
    // Same machine, so the server's clock is ours; Last-Modified has whole seconds.
    let lm = info.last_modified;
    assert!(
        lm + Duration::from_secs(2) >= before && lm <= SystemTime::now() + Duration::from_secs(2),
        "Last-Modified {lm:?} is not around the upload time {before:?}"
    );
    // An empty object is an object.
    s.put("empty", Vec::new()).unwrap();
    assert_eq!(s.get("empty").unwrap(), Vec::<u8>::new());
    assert_eq!(s.head("empty").unwrap().size, 0);
}

/// Files (metadata generations) go up as one PUT up to 16 MiB and as a multipart upload in
/// 16 MiB parts beyond, and come down in ranges, into a file: the bytes round trip exactly,
/// and a multipart upload replaces an object like a PUT.
#[test]
fn files_round_trip_in_parts() {
    if !garage::garage_available() {
        return;
    }
    use std::io::{Read, Seek, Write};
    let g = Garage::single();
    let s = open(&g);
    let part = dedupfs::store::remote::PART_LEN as usize;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("multipart");
    for (i, len) in [0, 5, part, part + 1, 2 * part + 3 * 1024 * 1024 + 7]
        .into_iter()
        .enumerate()
    {
        let data = random(len);
        let mut f = tempfile::tempfile_in(dir.path()).unwrap();
        f.write_all(&data).unwrap();
        // Longer than what is sent: only the first `len` bytes go.
        f.write_all(b"not sent").unwrap();
        s.put_file("gens/g", &f, len as u64, &journal).unwrap();
        assert!(!journal.exists(), "a finished upload stays in the journal");
        assert_eq!(s.head("gens/g").unwrap().size, len as u64, "size #{i}");
        let mut back = tempfile::tempfile_in(dir.path()).unwrap();
        assert_eq!(s.get_to("gens/g", &mut back).unwrap(), len as u64);
        back.rewind().unwrap();
        let mut got = Vec::new();
        back.read_to_end(&mut got).unwrap();
        assert!(got == data, "bytes of #{i} ({len} bytes) differ");
        if len > 10 {
            let r = (len as u64 - 10)..len as u64;
            assert_eq!(s.get_range("gens/g", r.clone()).unwrap(), data[len - 10..]);
        }
    }
    match s.get_to("missing", &mut tempfile::tempfile_in(dir.path()).unwrap()) {
        Err(RemoteError::NotFound { key }) => assert_eq!(key, "missing"),
        other => panic!("download of a missing object: {other:?}"),
    }
}

/// A multipart upload a killed process left open is recorded in its journal and aborted
/// from there (its parts deleted); the object never appears, and a later upload works.
#[test]
fn an_abandoned_multipart_upload_is_aborted_from_its_journal() {
    if !garage::garage_available() {
        return;
    }
    use std::io::Write;
    let g = Garage::single();
    let s = open(&g);
    let bucket = config(&g).bucket;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("multipart");
    let len = 2 * dedupfs::store::remote::PART_LEN as usize + 5;
    let data = random(len);
    let mut f = tempfile::tempfile_in(dir.path()).unwrap();
    f.write_all(&data).unwrap();
    let unfinished = || {
        // Garage 2.5 shows the line only while there are some.
        let info = g.cli(0, &["bucket", "info", &bucket]);
        let Some(line) = info
            .lines()
            .find(|l| l.to_lowercase().contains("multipart"))
        else {
            return 0;
        };
        // "Unfinished uploads:   2 multipart uploads"
        line.split_whitespace()
            .find_map(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{line}"))
    };
    assert_eq!(unfinished(), 0);
    for key in ["gens/a", "gens/b"] {
        s.put_file_abandoned_after(key, &f, len as u64, &journal, 1)
            .unwrap();
    }
    let info = g.cli(0, &["bucket", "info", &bucket]);
    assert_eq!(unfinished(), 2, "two abandoned uploads:\n{info}");
    let recorded = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(recorded.lines().count(), 2, "{recorded}");
    assert!(matches!(
        s.head("gens/a"),
        Err(RemoteError::NotFound { .. })
    ));
    assert_eq!(s.abort_abandoned(&journal).unwrap(), 2);
    assert!(!journal.exists());
    assert_eq!(unfinished(), 0, "the abandoned uploads were not aborted");
    assert_eq!(s.abort_abandoned(&journal).unwrap(), 0);
    // An upload aborted already (by the store's own cleanup) is forgotten, not an error.
    s.put_file_abandoned_after("gens/c", &f, len as u64, &journal, 1)
        .unwrap();
    assert_eq!(s.abort_abandoned(&journal).unwrap(), 1);
    std::fs::write(&journal, recorded.lines().next().unwrap()).unwrap();
    assert_eq!(s.abort_abandoned(&journal).unwrap(), 1);
    assert!(!journal.exists());
    s.put_file("gens/a", &f, len as u64, &journal).unwrap();
    assert_eq!(s.head("gens/a").unwrap().size, len as u64);
    assert_eq!(unfinished(), 0);
}

#[test]
fn range_reads_return_exactly_the_asked_bytes() {
    if !garage::garage_available() {
        return;
    }
    let g = Garage::single();
    let s = open(&g);
    let data = random(3 * 1024 * 1024 + 5);
    let len = data.len() as u64;
    s.put("pack", data.clone()).unwrap();
    let mib = 1024 * 1024;
    for r in [
        0..1,
        0..4096,
        mib - 10..mib + 10, // across Garage's block boundary
        2 * mib - 1..3 * mib + 1,
        len - 1..len,
        0..len,
    ] {
        let got = s.get_range("pack", r.clone()).unwrap();
        assert_eq!(got.len() as u64, r.end - r.start, "length of {r:?}");
        assert!(
            got == data[r.start as usize..r.end as usize],
            "bytes of {r:?}"
        );
    }
    assert!(s.get_range("pack", 5..5).unwrap().is_empty());
    // Past the end: an error, never a short read passed off as the range. Garage answers a
    // range that starts inside the object with the bytes it has (206), one that starts at or
    // past the end with 416 InvalidRange.
    let e = s.get_range("pack", len - 1..len + 1).unwrap_err();
    assert!(
        matches!(e, RemoteError::ShortRead { got: 1, .. }),
        "range past the end: {e}"
    );
    for r in [len..len + 10, len + 100..len + 200] {
        let e = s.get_range("pack", r.clone()).unwrap_err();
        assert!(e.to_string().contains("InvalidRange"), "{r:?}: {e}");
    }
    match s.get_range("missing", 0..10) {
        Err(RemoteError::NotFound { key }) => assert_eq!(key, "missing"),
        other => panic!("range of a missing object: {other:?}"),
    }
}

#[test]
fn overwrite_replaces_bytes_size_etag_and_last_modified() {
    if !garage::garage_available() {
        return;
    }
    let g = Garage::single();
    let s = open(&g);
    s.put("lease", b"holder A, generation 1".to_vec()).unwrap();
    let first = s.head("lease").unwrap();
    // Last-Modified from HEAD is an HTTP date: whole seconds. Wait past the next second so
    // the overwrite must show a later one.
    thread::sleep(Duration::from_millis(1100));
    s.put("lease", b"holder B".to_vec()).unwrap();
    assert_eq!(s.get("lease").unwrap(), b"holder B");
    let second = s.head("lease").unwrap();
    assert_eq!(second.size, 8);
    assert_ne!(first.e_tag, second.e_tag, "ETag changes with the content");
    assert!(
        second.last_modified > first.last_modified,
        "an overwrite moves Last-Modified: {:?} then {:?}",
        first.last_modified,
        second.last_modified
    );
    // Listing reports the same object (its time possibly finer than HEAD's seconds).
    let listed = s.list("").unwrap();
    assert_eq!(listed.len(), 1);
    let lm_list = listed[0].last_modified;
    let lm_head = second.last_modified;
    let diff = lm_list
        .duration_since(lm_head)
        .unwrap_or_else(|e| e.duration());
    assert!(
        diff < Duration::from_secs(1),
        "LIST {lm_list:?} vs HEAD {lm_head:?}"
    );
    eprintln!(
        "Last-Modified: HEAD {:?}, LIST {:?} (sub-second part of HEAD: {} ns)",
        lm_head,
        lm_list,
        lm_head
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    // The same bytes again (a retried PUT) leave one object with those bytes.
    s.put("lease", b"holder B".to_vec()).unwrap();
    assert_eq!(s.get("lease").unwrap(), b"holder B");
    assert_eq!(s.list("").unwrap().len(), 1);
}

#[test]
fn list_is_by_whole_prefix_segments_in_key_order() {
    if !garage::garage_available() {
        return;
    }
    let g = Garage::single();
    let s = open(&g);
    for (k, n) in [
        ("packs/0002", 2),
        ("packs/0001", 1),
        ("packs/00/deep", 3),
        ("packs2/x", 4),
        ("meta/g1", 5),
    ] {
        s.put(k, vec![7; n]).unwrap();
    }
    let keys = |p: &str| -> Vec<(String, u64)> {
        s.list(p)
            .unwrap()
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect()
    };
    assert_eq!(
        keys("packs"),
        [
            ("packs/00/deep".to_string(), 3),
            ("packs/0001".to_string(), 1),
            ("packs/0002".to_string(), 2)
        ]
    );
    assert_eq!(keys("packs/"), keys("packs"));
    assert_eq!(keys("meta"), [("meta/g1".to_string(), 5)]);
    assert_eq!(keys("").len(), 5);
    assert!(keys("nothing").is_empty());

    // Volumes under different prefixes of one bucket see only their own keys, by relative name.
    let vol = |prefix: &str| {
        RemoteStore::open(&RemoteConfig {
            prefix: prefix.to_string(),
            ..config(&g)
        })
        .unwrap()
    };
    let (a, b) = (vol("vols/a"), vol("vols/b"));
    a.put("meta/g1", b"a".to_vec()).unwrap();
    b.put("meta/g1", b"b".to_vec()).unwrap();
    assert_eq!(a.get("meta/g1").unwrap(), b"a");
    assert_eq!(b.get("meta/g1").unwrap(), b"b");
    let a_keys: Vec<String> = a.list("").unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(a_keys, ["meta/g1"]);
    assert!(
        s.head("vols/b/meta/g1").is_ok(),
        "the prefix is part of the key"
    );
}

#[test]
fn delete_removes_and_deleting_a_missing_object_succeeds() {
    if !garage::garage_available() {
        return;
    }
    let g = Garage::single();
    let s = open(&g);
    s.put("k", b"v".to_vec()).unwrap();
    s.delete("k").unwrap();
    assert!(matches!(s.head("k"), Err(RemoteError::NotFound { .. })));
    assert!(matches!(s.get("k"), Err(RemoteError::NotFound { .. })));
    assert!(s.list("").unwrap().is_empty());
    s.delete("k").unwrap();
    s.delete("never-was").unwrap();
}

#[test]
fn unreachable_endpoint_is_an_error_within_seconds() {
    if !garage::garage_available() {
        return;
    }
    // Nothing listens on this port: every connection is refused, and retried with backoff
    // until the bounded retry budget is spent.
    let endpoint = format!("http://127.0.0.1:{}", garage::closed_port());
    let cfg = RemoteConfig {
        endpoint: Some(endpoint.clone()),
        region: "garage".to_string(),
        ..RemoteConfig::new("bucket", "GKid", "secret")
    };
    let start = Instant::now();
    let e = match RemoteStore::open(&cfg) {
        Err(e) => e,
        Ok(_) => panic!("open of a dead endpoint succeeded"),
    };
    let took = start.elapsed();
    eprintln!("open after {took:?}: {e}");
    assert!(
        matches!(&e, RemoteError::Unreachable { endpoint: ep, .. } if *ep == endpoint),
        "{e}"
    );
    assert!(e.to_string().contains(&endpoint), "{e}");
    assert!(took < Duration::from_secs(15), "took {took:?}");

    let s = RemoteStore::new(&cfg).unwrap();
    let start = Instant::now();
    let e = s.put("k", vec![1; 1000]).unwrap_err();
    assert!(matches!(e, RemoteError::Unreachable { .. }), "{e}");
    assert!(start.elapsed() < Duration::from_secs(15));
}

#[test]
fn endpoint_that_never_answers_times_out() {
    if !garage::garage_available() {
        return;
    }
    // The kernel completes connections into the listen backlog; nobody reads or answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let cfg = RemoteConfig {
        endpoint: Some(endpoint),
        region: "garage".to_string(),
        request_timeout: Duration::from_secs(1),
        max_retries: 2,
        ..RemoteConfig::new("bucket", "GKid", "secret")
    };
    let s = RemoteStore::new(&cfg).unwrap();
    let times_out = |what: &str, op: &dyn Fn() -> Result<(), RemoteError>| {
        let start = Instant::now();
        let e = op().unwrap_err();
        eprintln!("{what} to a silent endpoint: {e}");
        assert!(matches!(e, RemoteError::Timeout { .. }), "{what}: {e}");
        // Up to 3 attempts of 1 s and the backoffs between them.
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
    };
    times_out("GET", &|| s.get("k").map(|_| ()));
    times_out("PUT", &|| s.put("k", vec![1; 1000]));
    drop(silent);
}

#[test]
fn refused_credentials_and_missing_bucket_are_named() {
    if !garage::garage_available() {
        return;
    }
    let g = Garage::single();
    let wrong_secret = RemoteConfig {
        secret_access_key: "0".repeat(64),
        ..config(&g)
    };
    let e = RemoteStore::open(&wrong_secret)
        .err()
        .expect("wrong secret refused");
    eprintln!("wrong secret: {e}");
    assert!(matches!(e, RemoteError::Auth { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&g.key_id) && msg.contains("AWS_SECRET_ACCESS_KEY"),
        "{msg}"
    );

    let unknown_key = RemoteConfig {
        access_key_id: "GK000000000000000000000000".to_string(),
        ..config(&g)
    };
    let e = RemoteStore::open(&unknown_key)
        .err()
        .expect("unknown key refused");
    eprintln!("unknown key: {e}");
    assert!(matches!(e, RemoteError::Auth { .. }), "{e}");

    // A refusal is not retried: it comes back at once.
    let s = RemoteStore::new(&wrong_secret).unwrap();
    let start = Instant::now();
    assert!(matches!(
        s.put("k", b"v".to_vec()),
        Err(RemoteError::Auth { .. })
    ));
    assert!(start.elapsed() < Duration::from_secs(2));

    let no_bucket = RemoteConfig {
        bucket: "no-such-bucket".to_string(),
        ..config(&g)
    };
    let e = RemoteStore::open(&no_bucket)
        .err()
        .expect("missing bucket refused");
    eprintln!("missing bucket: {e}");
    assert!(
        matches!(&e, RemoteError::NoBucket { bucket, .. } if bucket == "no-such-bucket"),
        "{e}"
    );

    let wrong_region = RemoteConfig {
        region: "us-east-1".to_string(),
        ..config(&g)
    };
    let e = RemoteStore::open(&wrong_region)
        .err()
        .expect("wrong region refused");
    eprintln!("wrong region: {e}");
    assert!(matches!(e, RemoteError::Auth { .. }), "{e}");
    assert!(
        e.to_string().contains("'20"),
        "the expected scope is quoted: {e}"
    );
}

/// Garage 2.5 accepts `If-None-Match: *` and `If-Match` on PUT and ignores them: the write
/// overwrites. The lease therefore cannot rely on them on Garage (issue 11: fence by checking
/// published generations). If this test fails, Garage now honours them: update the design.
#[test]
fn garage_ignores_conditional_put_headers() {
    if !garage::garage_available() {
        return;
    }
    let g = Garage::single();
    let s = open(&g);
    s.create("gen/00000001", b"writer A".to_vec()).unwrap();
    let created = s.create("gen/00000001", b"writer B".to_vec());
    assert!(
        created.is_ok(),
        "Garage now refuses a create of an existing key: {created:?}"
    );
    assert_eq!(
        s.get("gen/00000001").unwrap(),
        b"writer B",
        "If-None-Match: * was ignored: the second create overwrote"
    );

    let stale = "\"00000000000000000000000000000000\"";
    let replaced = s.replace_if("gen/00000001", b"writer C".to_vec(), stale);
    assert!(
        replaced.is_ok(),
        "Garage now refuses If-Match with a stale ETag: {replaced:?}"
    );
    assert_eq!(s.get("gen/00000001").unwrap(), b"writer C");
    // If-Match on a missing object also writes it.
    s.replace_if("gen/missing", b"x".to_vec(), stale).unwrap();
    assert_eq!(s.get("gen/missing").unwrap(), b"x");

    assert!(!s.conditional_create_honoured("probe/cond").unwrap());
    assert!(matches!(
        s.head("probe/cond"),
        Err(RemoteError::NotFound { .. })
    ));
}

#[test]
fn put_retries_until_a_restarted_server_answers() {
    if !garage::garage_available() {
        return;
    }
    let mut g = Garage::single();
    let s = RemoteStore::open(&RemoteConfig {
        max_retries: 100,
        retry_timeout: Duration::from_secs(30),
        ..config(&g)
    })
    .unwrap();
    g.stop();
    let data = random(100_000);
    let put = {
        let data = data.clone();
        thread::spawn(move || {
            let start = Instant::now();
            let r = s.put("after-restart", data);
            (s, r, start.elapsed())
        })
    };
    thread::sleep(Duration::from_secs(1));
    g.restart();
    let (s, r, took) = put.join().unwrap();
    r.unwrap_or_else(|e| panic!("put across a restart: {e}\nlog:\n{}", g.log(0)));
    assert!(
        took >= Duration::from_secs(1),
        "the put waited for the server"
    );
    assert_eq!(s.get("after-restart").unwrap(), data);
}

#[test]
fn three_node_cluster_serves_with_one_node_down() {
    if !garage::garage_available() {
        return;
    }
    let mut g = Garage::cluster3();
    assert_eq!(g.node_count(), 3);
    let s = open(&g);
    let data = random(2 * 1024 * 1024 + 3);
    s.put("before", data.clone()).unwrap();

    g.stop_node(2);
    assert_eq!(g.healthy_seen_by(2), 0);
    let start = Instant::now();
    s.put("during", data.clone()).unwrap();
    assert_eq!(s.get("before").unwrap(), data);
    assert_eq!(s.get("during").unwrap(), data);
    eprintln!("put + 2 gets with node 2 down: {:?}", start.elapsed());

    g.restart_node(2);
    assert_eq!(g.healthy_seen_by(0), 3);
    // Requests through the restarted node see what was written while it was down.
    let via_2 = RemoteStore::open(&RemoteConfig {
        endpoint: Some(g.endpoint_of(2)),
        ..config(&g)
    })
    .unwrap();
    assert_eq!(via_2.get("during").unwrap(), data);
    assert_eq!(via_2.list("").unwrap().len(), 2);
}
