//! The volume lease (`remote::lease`) against a real Garage server on loopback. Guards against
//! two mounts writing one volume: a second mount let in while the first renews, a refusal that
//! does not say who holds the volume, a crashed holder's lease that never expires (or expires
//! by a local clock instead of the store's), a holder that keeps writing after a takeover, a
//! renewer that cannot be stopped or that hangs with the store, and two racing acquirers that
//! both come away holding the lease (Garage ignores conditional writes: the read-back after
//! the settle time is what catches them).
//!
//! Skips (with a `SKIP:` line) only when the `garage` binary is absent.

mod common;

use common::garage::{self, Garage};
use dedupfs::error::RemoteError;
use dedupfs::remote::lease::{Holder, Lease, LeaseConfig, LeaseError, new_session_id};
use dedupfs::store::remote::{RemoteConfig, RemoteStore};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::{Duration, Instant};

fn config(g: &Garage) -> RemoteConfig {
    g.client_config()
}

fn open(g: &Garage) -> RemoteStore {
    g.client()
}

/// A holder on a made-up host, with a fresh session.
fn holder(name: &str, pid: u32) -> Holder {
    Holder {
        host: format!("host-{name}"),
        pid,
        session: new_session_id(),
        store_dir: format!("/stores/{name}"),
        since_unix: 1_796_061_484,
    }
}

/// Short times for tests: Garage on loopback answers in milliseconds.
fn short(ttl: Duration) -> LeaseConfig {
    LeaseConfig {
        ttl,
        renew_every: ttl / 3,
        settle: Duration::from_millis(300),
    }
}

/// Retries `who`'s acquire (every 250 ms) while the lease is held, until it succeeds or
/// `limit` passes; returns the acquisition and how long the waiting took.
fn acquire_when_expired(
    s: &RemoteStore,
    key: &str,
    who: &Holder,
    cfg: &LeaseConfig,
    limit: Duration,
) -> (dedupfs::remote::lease::Acquired, Duration) {
    let start = Instant::now();
    loop {
        match Lease::acquire(s, key, who.clone(), cfg) {
            Ok(a) => return (a, start.elapsed()),
            Err(LeaseError::Held { .. }) if start.elapsed() < limit => {
                thread::sleep(Duration::from_millis(250))
            }
            Err(e) => panic!("after {:?}: {e}", start.elapsed()),
        }
    }
}

#[test]
fn second_mount_is_refused_naming_the_holder_until_release() {
    if !garage::garage_available() {
        return;
    }
    let g = Garage::single();
    let s = open(&g);
    let key = "volumes/vm/lease";
    let cfg = short(Duration::from_secs(30));
    let a = Holder::this_process(&new_session_id(), Path::new("/stores/a"));
    let b = holder("b", 222);

    let start = Instant::now();
    let got = Lease::acquire(&s, key, a.clone(), &cfg).unwrap();
    eprintln!("acquire of an absent lease took {:?}", start.elapsed());
    assert!(got.took_over.is_none());
    assert_eq!(got.lease.holder(), &a);

    // The object's format (LEASE_FORMAT 1): what other versions of dedupfs will read.
    let obj: serde_json::Value = serde_json::from_slice(&s.get(key).unwrap()).unwrap();
    assert_eq!(obj["format"], 1, "{obj}");
    assert_eq!(obj["ttl_ms"], 30_000, "{obj}");
    assert_eq!(obj["holder"]["session"], a.session.as_str(), "{obj}");
    assert_eq!(obj["holder"]["pid"], std::process::id(), "{obj}");
    assert_eq!(obj["holder"]["store_dir"], "/stores/a", "{obj}");

    let start = Instant::now();
    let refused = Lease::acquire(&s, key, b.clone(), &cfg).unwrap_err();
    eprintln!("refusal took {:?}: {refused}", start.elapsed());
    match &refused {
        LeaseError::Held {
            holder,
            age,
            expires_in,
            ..
        } => {
            assert_eq!(**holder, a);
            assert!(*age <= Duration::from_secs(2), "age {age:?}");
            assert!(
                *expires_in >= Duration::from_secs(28) && *expires_in <= Duration::from_secs(30),
                "expires in {expires_in:?}"
            );
        }
        e => panic!("expected Held, got {e}"),
    }
    let msg = refused.to_string();
    assert!(!a.host.is_empty());
    for part in [
        format!("host {} ", a.host),
        format!("pid {}", std::process::id()),
        "store /stores/a".to_string(),
        "expires in".to_string(),
    ] {
        assert!(msg.contains(&part), "{part:?} not in: {msg}");
    }
    assert!(!refused.is_lost());

    // The same session acquiring again renews its own lease.
    let again = Lease::acquire(&s, key, a.clone(), &cfg).unwrap();
    assert!(again.took_over.is_none());

    again.lease.release(&s).unwrap();
    assert!(matches!(s.head(key), Err(RemoteError::NotFound { .. })));
    // The clock probes are gone too: the lease is the only kind of object left behind.
    assert_eq!(s.list("").unwrap().len(), 0, "{:?}", s.list(""));

    let got_b = Lease::acquire(&s, key, b.clone(), &cfg).unwrap();
    assert!(got_b.took_over.is_none());
    // A's lease object from before release is gone for good: its release leaves B alone.
    got.lease.release(&s).unwrap();
    got_b.lease.renew(&s).unwrap();
    let refused = Lease::acquire(&s, key, a, &cfg).unwrap_err();
    assert!(
        matches!(&refused, LeaseError::Held { holder, .. } if **holder == b),
        "{refused}"
    );
}

#[test]
fn unrenewed_lease_expires_by_the_store_clock_and_is_taken_over() {
    if !garage::garage_available() {
        return;
    }
    let g = Garage::single();
    let s = open(&g);
    let key = "volumes/vm/lease";
    let ttl = Duration::from_secs(3);
    let cfg = short(ttl);
    let (a, b) = (holder("a", 111), holder("b", 222));

    let acquired_at = Instant::now();
    let first = Lease::acquire(&s, key, a.clone(), &cfg).unwrap();
    let refused = Lease::acquire(&s, key, b.clone(), &cfg).unwrap_err();
    assert!(
        matches!(&refused, LeaseError::Held { holder, .. } if **holder == a),
        "{refused}"
    );

    let (taken, waited) = acquire_when_expired(&s, key, &b, &cfg, Duration::from_secs(10));
    let since_acquire = acquired_at.elapsed();
    eprintln!("taken over {since_acquire:?} after the first acquire: {taken:?}");
    // Live unless older than ttl + 1 s by whole-second clock readings: no takeover before the
    // ttl has really passed, and not much later than ttl + 2 s (+ polling and settle).
    assert!(
        since_acquire > ttl,
        "taken over after only {since_acquire:?}"
    );
    assert!(waited < Duration::from_secs(7), "took {waited:?}");
    let (old, age) = taken
        .took_over
        .clone()
        .expect("took_over names the old holder");
    assert_eq!(old, a);
    assert!(
        age > ttl + Duration::from_secs(1) && age <= ttl + Duration::from_secs(4),
        "age {age:?}"
    );
    assert_eq!(taken.lease.holder(), &b);
    // The old holder is refused now, naming the new one.
    let refused = Lease::acquire(&s, key, a, &cfg).unwrap_err();
    assert!(
        matches!(&refused, LeaseError::Held { holder, .. } if **holder == b),
        "{refused}"
    );
    drop(first);
}

#[test]
fn holder_taken_over_learns_it_from_renew_and_from_the_renewer() {
    if !garage::garage_available() {
        return;
    }
    let g = Garage::single();
    let s = Arc::new(open(&g));
    let key = "volumes/vm/lease";
    let cfg = short(Duration::from_secs(1));
    let (a, b) = (holder("a", 111), holder("b", 222));

    let first = Lease::acquire(&s, key, a, &cfg).unwrap().lease;
    let (taken, _) = acquire_when_expired(&s, key, &b, &cfg, Duration::from_secs(8));
    let lost = first.renew(&s).unwrap_err();
    eprintln!("renew after takeover: {lost}");
    match &lost {
        LeaseError::Lost { by, .. } => assert_eq!(by, &b),
        e => panic!("expected Lost, got {e}"),
    }
    assert!(lost.is_lost());
    assert!(lost.to_string().contains("host-b"), "{lost}");
    // Releasing a lease that was taken over leaves the taker's.
    first.release(&s).unwrap();
    taken.lease.renew(&s).unwrap();

    // The renewer hears of an overwrite (as by a racing acquirer on a store that ignores
    // If-Match) at its next renewal, says so once, and stops.
    let cfg = LeaseConfig {
        ttl: Duration::from_secs(10),
        renew_every: Duration::from_millis(300),
        settle: Duration::from_millis(300),
    };
    let c = holder("c", 333);
    let d = holder("d", 444);
    let held = Arc::new(
        Lease::acquire(&s, "vol2/lease", c.clone(), &cfg)
            .unwrap()
            .lease,
    );
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let renewer = Lease::spawn_renewer(
        held.clone(),
        s.clone(),
        cfg.clone(),
        Box::new(move |e| {
            let _ = tx.lock().unwrap().send(e);
        }),
    );
    Lease::acquire(&s, "vol3/lease", d.clone(), &cfg).unwrap();
    // Garage ignores If-Match: a renewal in flight when the overwrite lands (read before it,
    // write after) puts c's lease back over d's, and the overwrite is gone (the race fencing
    // covers). Then the lease names c again, and the overwrite is made again; a lease still
    // naming d with no word from the renewer is the failure.
    let mut heard = None;
    for _ in 0..5 {
        let overwritten_at = Instant::now();
        s.put("vol2/lease", s.get("vol3/lease").unwrap()).unwrap();
        if let Ok(e) = rx.recv_timeout(Duration::from_secs(3)) {
            eprintln!("renewer lost after {:?}: {e}", overwritten_at.elapsed());
            heard = Some(e);
            break;
        }
        let now = dedupfs::remote::lease::inspect(&s, "vol2/lease", std::time::SystemTime::now())
            .unwrap()
            .expect("the lease is there");
        assert_eq!(
            now.holder, c,
            "the lease names d and the renewer did not report it within 3 s"
        );
        eprintln!("an in-flight renewal wrote over the overwrite; again");
    }
    let e = heard.expect("on_lost called");
    assert!(
        matches!(&e, LeaseError::Lost { by, .. } if *by == d),
        "expected Lost by d, got {e}"
    );
    thread::sleep(Duration::from_millis(800));
    assert!(renewer.is_finished());
    assert!(rx.try_recv().is_err(), "on_lost is called once");
    renewer.stop();
    assert!(
        Arc::try_unwrap(held).is_ok(),
        "the renewer let go of the lease"
    );
}

#[test]
fn renewer_keeps_the_lease_past_its_ttl_and_stops_promptly() {
    if !garage::garage_available() {
        return;
    }
    let g = Garage::single();
    let s = Arc::new(open(&g));
    let key = "volumes/vm/lease";
    let cfg = LeaseConfig {
        ttl: Duration::from_secs(3),
        renew_every: Duration::from_secs(1),
        settle: Duration::from_millis(300),
    };
    let (a, b) = (holder("a", 111), holder("b", 222));
    let lease = Arc::new(Lease::acquire(&s, key, a.clone(), &cfg).unwrap().lease);
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let renewer = Lease::spawn_renewer(
        lease.clone(),
        s.clone(),
        cfg.clone(),
        Box::new(move |e| {
            let _ = tx.lock().unwrap().send(e);
        }),
    );
    thread::sleep(Duration::from_secs(6));
    let refused = Lease::acquire(&s, key, b.clone(), &cfg).unwrap_err();
    match &refused {
        LeaseError::Held { holder, age, .. } => {
            assert_eq!(**holder, a);
            assert!(*age <= Duration::from_secs(2), "renewed {age:?} ago");
        }
        e => panic!("expected Held after 2 ttls of renewals, got {e}"),
    }
    assert!(lease.unrenewed_for() < Duration::from_millis(1500));
    if let Ok(e) = rx.try_recv() {
        panic!("on_lost called while the store answered: {e}");
    }

    let start = Instant::now();
    renewer.stop();
    let took = start.elapsed();
    eprintln!("stop took {took:?}");
    assert!(took < Duration::from_secs(1), "stop took {took:?}");
    let lease = Arc::try_unwrap(lease).expect("the renewer let go of the lease");
    lease.release(&s).unwrap();
    Lease::acquire(&s, key, b, &cfg).unwrap();
}

#[test]
fn renewer_gives_up_before_the_ttl_when_the_store_hangs() {
    if !garage::garage_available() {
        return;
    }
    let g = Garage::single();
    let s = open(&g);
    let cfg = LeaseConfig {
        ttl: Duration::from_secs(3),
        renew_every: Duration::from_secs(1),
        settle: Duration::from_millis(300),
    };
    let lease = Arc::new(
        Lease::acquire(&s, "volumes/vm/lease", holder("a", 111), &cfg)
            .unwrap()
            .lease,
    );
    // Renewals go to an endpoint that accepts connections and never answers: each request
    // hangs for request_timeout (4 s), longer than the 2 s the lease may go unrenewed.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = RemoteStore::new(&RemoteConfig {
        endpoint: Some(format!("http://{}", silent.local_addr().unwrap())),
        request_timeout: Duration::from_secs(4),
        max_retries: 0,
        ..config(&g)
    })
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let renewer = Lease::spawn_renewer(
        lease.clone(),
        Arc::new(dead),
        cfg.clone(),
        Box::new(move |e| {
            let _ = tx.lock().unwrap().send(e);
        }),
    );
    let e = rx
        .recv_timeout(Duration::from_secs(4))
        .expect("on_lost within ttl");
    let at = lease.unrenewed_for();
    eprintln!("gave up {at:?} after the last renewal: {e}");
    assert!(
        matches!(&e, LeaseError::Expired { .. }),
        "expected Expired: {e}"
    );
    assert!(e.is_lost());
    assert!(
        at >= Duration::from_secs(2) && at < Duration::from_millis(2900),
        "gave up {at:?} after the last renewal (limit: ttl 3 s - renew_every 1 s)"
    );
    // stop waits for the hung request (bounded by its timeout), so no renewal lands later.
    let start = Instant::now();
    renewer.stop();
    eprintln!("stop with a request in flight took {:?}", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(4));
    assert!(rx.try_recv().is_err(), "on_lost is called once");
    drop(silent);
}

#[test]
fn racing_acquirers_end_with_one_holder() {
    if !garage::garage_available() {
        return;
    }
    let g = Garage::single();
    let s = Arc::new(open(&g));
    let cfg = LeaseConfig {
        ttl: Duration::from_secs(1),
        renew_every: Duration::from_millis(300),
        settle: Duration::from_secs(1),
    };
    // Leases left by crashed holders, to expire while the races on absent leases run.
    let expired: Vec<String> = (0..2).map(|i| format!("expired/{i}/lease")).collect();
    for (i, key) in expired.iter().enumerate() {
        Lease::acquire(&s, key, holder("crashed", 900 + i as u32), &cfg).unwrap();
    }
    let expired_at = Instant::now() + Duration::from_secs(3);
    let absent: Vec<String> = (0..4).map(|i| format!("absent/{i}/lease")).collect();

    let race = |key: &str| {
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = [holder("x", 1), holder("y", 2)]
            .into_iter()
            .map(|h| {
                let (s, barrier, cfg, key) =
                    (s.clone(), barrier.clone(), cfg.clone(), key.to_string());
                thread::spawn(move || {
                    barrier.wait();
                    (h.clone(), Lease::acquire(&s, &key, h, &cfg))
                })
            })
            .collect();
        let results: Vec<_> = racers.into_iter().map(|r| r.join().unwrap()).collect();
        let outcome: Vec<String> = results
            .iter()
            .map(|(h, r)| match r {
                Ok(a) => format!("{} won (took over: {})", h.host, a.took_over.is_some()),
                Err(e) => format!("{} {e}", h.host),
            })
            .collect();
        eprintln!("{key}: {outcome:?}");
        let winners: Vec<&Holder> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(h, _)| h)
            .collect();
        assert_eq!(winners.len(), 1, "{key}: {outcome:?}");
        for (_, r) in &results {
            let named = match r {
                Ok(_) => continue,
                Err(LeaseError::Lost { by, .. }) => by,
                Err(LeaseError::Held { holder, .. }) => &**holder,
                Err(e) => panic!("{key}: the loser got {e}"),
            };
            assert_eq!(named, winners[0], "{key}: the loser names the winner");
        }
        // The lease names the winner: a third mount is refused with its name.
        let third = Lease::acquire(&s, key, holder("z", 3), &cfg).unwrap_err();
        assert!(
            matches!(&third, LeaseError::Held { holder, .. } if **holder == *winners[0]),
            "{key}: {third}"
        );
    };
    for key in &absent {
        race(key);
    }
    thread::sleep(expired_at.saturating_duration_since(Instant::now()));
    for key in &expired {
        race(key);
    }
}

#[test]
fn unreachable_store_fails_acquire_within_bounded_time() {
    if !garage::garage_available() {
        return;
    }
    let cfg = RemoteConfig {
        endpoint: Some(format!("http://127.0.0.1:{}", garage::closed_port())),
        region: garage::REGION.to_string(),
        connect_timeout: Duration::from_secs(1),
        retry_timeout: Duration::from_secs(2),
        max_retries: 1,
        ..RemoteConfig::new("bucket", "GKid", "secret")
    };
    let s = RemoteStore::new(&cfg).unwrap();
    let start = Instant::now();
    let e = Lease::acquire(
        &s,
        "volumes/vm/lease",
        holder("a", 111),
        &LeaseConfig::default(),
    )
    .unwrap_err();
    let took = start.elapsed();
    eprintln!("acquire against a closed port failed after {took:?}: {e}");
    assert!(
        matches!(e, LeaseError::Remote(RemoteError::Unreachable { .. })),
        "{e}"
    );
    assert!(!e.is_lost());
    assert!(took < Duration::from_secs(6), "took {took:?}");
}

#[test]
fn held_message_names_the_holder_and_the_expiry() {
    let e = LeaseError::Held {
        key: "volumes/vm/lease".to_string(),
        holder: Box::new(Holder {
            host: "build-7".to_string(),
            pid: 4242,
            session: "ab12".to_string(),
            store_dir: "/var/lib/dedupfs/vm".to_string(),
            since_unix: 1_796_061_484,
        }),
        age: Duration::from_secs(12),
        expires_in: Duration::from_secs(48),
    };
    assert_eq!(
        e.to_string(),
        "the volume is mounted by host build-7 (pid 4242, store /var/lib/dedupfs/vm) since \
         2026-11-30 17:58:04 UTC; its lease volumes/vm/lease was renewed 12 s ago and \
         expires in 48 s unless renewed"
    );
}

#[test]
fn session_ids_are_random_hex() {
    let (a, b) = (new_session_id(), new_session_id());
    assert_eq!(a.len(), 32, "{a}");
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
    assert_ne!(a, b);
}

#[test]
fn renewal_interval_must_be_shorter_than_ttl() {
    // Refused before any request: the endpoint is never contacted.
    let s = RemoteStore::new(&RemoteConfig {
        endpoint: Some(format!("http://127.0.0.1:{}", garage::closed_port())),
        ..RemoteConfig::new("bucket", "GKid", "secret")
    })
    .unwrap();
    let cfg = LeaseConfig {
        ttl: Duration::from_secs(10),
        renew_every: Duration::from_secs(10),
        ..LeaseConfig::default()
    };
    let e = Lease::acquire(&s, "volumes/vm/lease", holder("a", 1), &cfg).unwrap_err();
    assert!(matches!(e, LeaseError::Config(_)), "{e}");
}
