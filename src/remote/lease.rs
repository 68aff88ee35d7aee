//! The lease: one writer per remote volume (issue 11, section 4).
//!
//! The lease is one small JSON object at a key the caller names (`volumes/NAME/lease`):
//! [`Holder`] (host, pid, session id of the mount, store directory, since when), the ttl the
//! holder promises to renew within, and a renewal counter, so that every renewal writes new
//! bytes: an identical rewrite keeps its ETag (the MD5 of the content on Garage, measured),
//! and `If-Match` could not tell two writes apart.
//!
//! Protocol:
//! - **Expiry is judged by the object store's clock, never a local one.** The lease's age is
//!   the store's "now" minus the object's Last-Modified. The store's now is the Last-Modified
//!   of a probe object the acquirer PUTs under `KEY.clock/SESSION` (then HEADs and deletes).
//!   Both times are HTTP dates, whole seconds, so a measured age is within a second of the
//!   true one either way: a lease counts as live unless its measured age exceeds its ttl plus
//!   [`CLOCK_GRANULARITY`]; a lease taken over was therefore really older than its ttl. Local
//!   clocks only ever shorten a lease (the renewer gives up early, see below).
//! - **Acquire**: no lease object: `create` it (`If-None-Match: *`). Our own session's lease:
//!   renew it. Another holder's live lease: refuse ([`LeaseError::Held`], naming the holder).
//!   Another holder's expired lease: overwrite it with `If-Match` on the ETag read
//!   (`took_over` names the old holder). Then wait [`LeaseConfig::settle`] and read the lease
//!   back: if it no longer names us, another acquirer raced us ([`LeaseError::Lost`]).
//! - **Renew** reads the lease; if it names another session we were taken over
//!   ([`LeaseError::Lost`]: stop writing), else it rewrites it with `If-Match`, which moves
//!   its Last-Modified forward.
//! - **Release** deletes the object only if it still names our session.
//! - The ttl judged is the one written in the object by its holder (its promise), not the
//!   acquirer's configuration, so mounts configured differently still agree on expiry.
//!
//! Reads are a HEAD (Last-Modified, ETag) then a GET (the holder). A write landing between
//! the two leaves an ETag older than the bytes read, so a conditional write based on it fails
//! rather than acting on a mixed view (on stores that honour conditions).
//!
//! What it guarantees:
//! - **Stores that honour conditional writes** (AWS S3 and others; ask
//!   [`RemoteStore::conditional_create_honoured`]): each lease version is replaced by exactly
//!   one writer, so acquisition is exclusive: two acquirers of an absent or expired lease
//!   cannot both succeed, and a holder that renews before expiry cannot be taken over. What is
//!   left is time: a holder paused (SIGSTOP, a suspended VM, a partition) past its ttl may be
//!   taken over and still have writes in flight when it resumes.
//! - **Stores that ignore them** (Garage 2.5: `create` and `replace_if` overwrite): the
//!   read-back after `settle` catches acquirers whose writes landed within `settle` of each
//!   other (the last writer wins, the others see its name and get `Lost`), but an acquirer
//!   delayed by more than `settle` between its read and its write can overwrite a lease that
//!   was taken meanwhile, and both may believe they hold it until the next renewal of the one
//!   overwritten reports `Lost`. A race window remains.
//! - In both cases the lease is an optimisation of who writes, not the safety argument for the
//!   volume's data: fencing by generation numbers (a writer checks that no generation above its
//!   own was published before publishing the next, and stops otherwise) is the safety net.
//!
//! Renewal: a holder must stop writing once it is told `Lost`, and also once it **cannot
//! renew for longer than ttl minus a margin**: by then the lease may have expired by the
//! store's clock and been taken over, and nobody can tell it so. [`Lease::spawn_renewer`]
//! does both (margin: one renewal interval), judging the time since the last successful
//! renewal by the local monotonic clock, which is safe because it only gives up early.
//! Clocks are assumed to run at the same rate, not to agree; the nodes of a replicated store
//! are assumed to agree with each other (NTP): a skew between them adds to the margin needed.

use crate::error::RemoteError;
use crate::store::remote::{ObjectInfo, RemoteStore};
use crossbeam_channel::{Receiver, Sender, select};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Version of the lease object's JSON. A lease of another format is never overwritten (a
/// newer dedupfs may hold it): acquire fails with [`LeaseError::Unreadable`].
pub const LEASE_FORMAT: u32 = 1;

/// Precision of the store's clock as we read it: Last-Modified from HEAD is an HTTP date,
/// whole seconds. Garage truncates its millisecond stamp (taken while serving the PUT; LIST
/// shows the milliseconds) to the second below; other stores may round, hence a margin of
/// a whole second either way, not just below.
pub const CLOCK_GRANULARITY: Duration = Duration::from_secs(1);

/// How often [`Lease::acquire`] re-judges the lease after a conditional write was refused
/// (someone wrote between our read and our write) before reporting it lost to them.
const ACQUIRE_ATTEMPTS: usize = 3;

/// After a renewal failed with a transient error, the renewer tries again this soon (or after
/// `renew_every`, if shorter): the client has retried already, but the deadline is near.
const RENEW_RETRY: Duration = Duration::from_secs(1);

/// Who holds a lease. `since_unix` is the holder's local clock, shown to people only; expiry
/// never depends on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// Random hex id of one mount: what tells two holders apart (a restarted mount on the
    /// same host, even with the same pid, is another holder).
    pub session: String,
    pub store_dir: String,
    /// When this mount acquired the lease, seconds since the epoch (holder's clock).
    pub since_unix: u64,
}

impl Holder {
    /// This process as holder, since now.
    pub fn this_process(session: &str, store_dir: &Path) -> Holder {
        Holder {
            host: hostname(),
            pid: std::process::id(),
            session: session.to_string(),
            store_dir: store_dir.display().to_string(),
            since_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "host {} (pid {}, store {}) since {}",
            self.host,
            self.pid,
            self.store_dir,
            crate::meta::backup::show_time(self.since_unix)
        )
    }
}

/// A new random session id (32 hex digits) for a mount.
pub fn new_session_id() -> String {
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        // No /dev/urandom (a bare chroot): unique enough from the pid, the time and a
        // counter; the id only has to differ between mounts, not resist guessing.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut h = blake3::Hasher::new();
        h.update(&std::process::id().to_le_bytes());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        h.update(&now.as_nanos().to_le_bytes());
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        h.update(&n.to_le_bytes());
        bytes.copy_from_slice(&h.finalize().as_bytes()[..16]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The kernel's host name, as `uname -n` gives it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_string())
}

/// Timing of the lease.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// How long a lease lives after its last renewal, by the store's clock. Written into the
    /// lease: others judge this holder by it.
    pub ttl: Duration,
    /// How often the renewer renews; it gives up (reports the lease lost) when it could not
    /// renew for `ttl - renew_every`. Must be shorter than `ttl`.
    pub renew_every: Duration,
    /// How long an acquirer waits after writing before it reads the lease back, to catch a
    /// racing acquirer on stores that ignore conditional writes. Longer than the store's
    /// write latency under load.
    pub settle: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            ttl: Duration::from_secs(60),
            renew_every: Duration::from_secs(15),
            settle: Duration::from_secs(2),
        }
    }
}

impl LeaseConfig {
    fn check(&self) -> Result<(), LeaseError> {
        if self.renew_every.is_zero() || self.renew_every >= self.ttl {
            return Err(LeaseError::Config(format!(
                "renew_every ({:?}) must be positive and shorter than ttl ({:?})",
                self.renew_every, self.ttl
            )));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "the volume is mounted by {holder}; its lease {key} was renewed {} s ago and expires in \
         {} s unless renewed",
        .age.as_secs(),
        .expires_in.as_secs()
    )]
    Held {
        key: String,
        /// Boxed to keep `Result<_, LeaseError>` small (clippy::result_large_err).
        holder: Box<Holder>,
        /// Since its last renewal, by the store's clock (whole seconds).
        age: Duration,
        /// Until it expires by the store's clock (its ttl minus `age`); a takeover may
        /// come up to two seconds later (whole-second clock readings).
        expires_in: Duration,
    },
    #[error(
        "lease {key} now names {by} (session {}): another mount took it over or won the race \
         to acquire it; this one must not write",
        .by.session
    )]
    Lost { key: String, by: Holder },
    #[error("lease {key} was deleted while this mount held it; this one must not write")]
    Deleted { key: String },
    #[error(
        "lease {key} could not be renewed for {} s (the limit is ttl minus one renewal \
         interval: {} s); it may have expired and been taken over, so this mount must not \
         write{}",
        .unrenewed_for.as_secs(),
        .limit.as_secs(),
        last_error_text(.last_error)
    )]
    Expired {
        key: String,
        unrenewed_for: Duration,
        limit: Duration,
        last_error: Option<Box<RemoteError>>,
    },
    #[error(
        "lease {key} is not a dedupfs lease this version can read ({detail}); if no machine \
         has the volume mounted, delete the object"
    )]
    Unreadable { key: String, detail: String },
    #[error("lease configuration: {0}")]
    Config(String),
    #[error("the lease renewer failed ({0}); this mount must not write")]
    RenewerFailed(String),
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

fn last_error_text(e: &Option<Box<RemoteError>>) -> String {
    match e {
        Some(e) => format!(" (last error: {e})"),
        None => String::new(),
    }
}

impl LeaseError {
    /// True when this mount no longer holds the lease and must stop writing (as opposed to a
    /// transient error a renewal may retry).
    pub fn is_lost(&self) -> bool {
        matches!(
            self,
            LeaseError::Lost { .. }
                | LeaseError::Deleted { .. }
                | LeaseError::Expired { .. }
                | LeaseError::Unreadable { .. }
                | LeaseError::RenewerFailed(_)
        )
    }
}

/// The object's JSON.
#[derive(Serialize, Deserialize)]
struct LeaseObject {
    format: u32,
    holder: Holder,
    /// The ttl the holder promises to renew within, in milliseconds.
    ttl_ms: u64,
    /// Incremented by each write, so each renewal stores new bytes and a new ETag.
    renewal: u64,
}

/// The lease as read from the store.
struct Current {
    holder: Holder,
    ttl: Duration,
    renewal: u64,
    info: ObjectInfo,
}

/// A lease this mount holds (or held: see [`Lease::renew`]).
#[derive(Debug)]
pub struct Lease {
    key: String,
    holder: Holder,
    ttl: Duration,
    /// When the last successful write of the lease was sent (local monotonic clock): the
    /// store stamped it later, so the lease lives at least `ttl` from here, rates agreeing.
    renewed_at: Mutex<Instant>,
}

/// A successful [`Lease::acquire`].
#[derive(Debug)]
pub struct Acquired {
    pub lease: Lease,
    /// The holder whose expired lease was taken over, with the age of its last renewal by
    /// the store's clock. Its fsynced-but-not-uploaded data is not visible to us.
    pub took_over: Option<(Holder, Duration)>,
}

impl Lease {
    /// Acquires the lease at `key` for `me` (see the module doc for the protocol). Takes
    /// at least `cfg.settle`.
    pub fn acquire(
        remote: &RemoteStore,
        key: &str,
        me: Holder,
        cfg: &LeaseConfig,
    ) -> Result<Acquired, LeaseError> {
        cfg.check()?;
        for _ in 0..ACQUIRE_ATTEMPTS {
            let sent = Instant::now();
            let took_over = match read(remote, key)? {
                None => match remote.create(key, encode(&me, cfg.ttl, 0)) {
                    Ok(()) => None,
                    // Created by someone else since we looked: judge theirs.
                    Err(RemoteError::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(e.into()),
                },
                Some(cur) if cur.holder.session == me.session => {
                    if !write_over(remote, key, &me, cfg.ttl, &cur)? {
                        continue;
                    }
                    None
                }
                Some(cur) => {
                    let age = store_age(remote, key, &me.session, cur.info.last_modified)?;
                    if age <= cur.ttl + CLOCK_GRANULARITY {
                        return Err(LeaseError::Held {
                            key: key.to_string(),
                            holder: Box::new(cur.holder),
                            age,
                            expires_in: cur.ttl.saturating_sub(age),
                        });
                    }
                    if !write_over(remote, key, &me, cfg.ttl, &cur)? {
                        continue;
                    }
                    Some((cur.holder, age))
                }
            };
            thread::sleep(cfg.settle);
            return match read(remote, key)? {
                Some(now) if now.holder.session == me.session => {
                    if let Some((old, age)) = &took_over {
                        tracing::warn!(
                            key,
                            age_s = age.as_secs(),
                            "took over the expired lease of {old}"
                        );
                    }
                    Ok(Acquired {
                        lease: Lease {
                            key: key.to_string(),
                            holder: me,
                            ttl: cfg.ttl,
                            renewed_at: Mutex::new(sent),
                        },
                        took_over,
                    })
                }
                Some(now) => Err(LeaseError::Lost {
                    key: key.to_string(),
                    by: now.holder,
                }),
                None => Err(LeaseError::Deleted {
                    key: key.to_string(),
                }),
            };
        }
        // Every conditional write was refused: others keep writing the lease.
        match read(remote, key)? {
            Some(now) => Err(LeaseError::Lost {
                key: key.to_string(),
                by: now.holder,
            }),
            None => Err(LeaseError::Deleted {
                key: key.to_string(),
            }),
        }
    }

    /// Rewrites the lease so its Last-Modified moves forward. `Lost` (or `Deleted`) when it
    /// no longer names our session: we were taken over and must stop writing. Transient
    /// failures are [`LeaseError::Remote`]: retry, but treat failing for longer than ttl minus
    /// a margin as lost too (as [`Lease::spawn_renewer`] does).
    pub fn renew(&self, remote: &RemoteStore) -> Result<(), LeaseError> {
        let sent = Instant::now();
        let cur = read(remote, &self.key)?.ok_or_else(|| LeaseError::Deleted {
            key: self.key.clone(),
        })?;
        if cur.holder.session != self.holder.session {
            return Err(LeaseError::Lost {
                key: self.key.clone(),
                by: cur.holder,
            });
        }
        if !write_over(remote, &self.key, &self.holder, self.ttl, &cur)? {
            // Someone wrote since our read: whoever it was, find out.
            return match read(remote, &self.key)? {
                Some(now) if now.holder.session != self.holder.session => Err(LeaseError::Lost {
                    key: self.key.clone(),
                    by: now.holder,
                }),
                Some(_) => Err(LeaseError::Remote(RemoteError::Precondition {
                    key: self.key.clone(),
                })),
                None => Err(LeaseError::Deleted {
                    key: self.key.clone(),
                }),
            };
        }
        *self.renewed_at.lock() = sent;
        Ok(())
    }

    /// Deletes the lease if it still names our session (otherwise it is someone else's and
    /// stays). On stores that ignore conditions a takeover between our read and our delete
    /// would be deleted too; the taker's next renewal then reports `Deleted`.
    pub fn release(self, remote: &RemoteStore) -> Result<(), LeaseError> {
        match read(remote, &self.key)? {
            Some(cur) if cur.holder.session == self.holder.session => {
                remote.delete(&self.key)?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// The ttl this holder promised (written into the lease).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Local monotonic time since the last successful write of the lease was sent.
    pub fn unrenewed_for(&self) -> Duration {
        self.renewed_at.lock().elapsed()
    }

    /// Runs `f` while holding this lease, renewed in the background; `f` gets a flag that is
    /// set once the lease is lost (it must then stop before its next change). The lease is
    /// released afterwards (left to expire if that fails).
    pub fn hold_while<T>(
        self,
        remote: &Arc<RemoteStore>,
        cfg: LeaseConfig,
        f: impl FnOnce(&std::sync::atomic::AtomicBool) -> T,
    ) -> T {
        use std::sync::atomic::{AtomicBool, Ordering};
        let key = self.key.clone();
        let lease = Arc::new(self);
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        let renewer = Lease::spawn_renewer(
            lease.clone(),
            remote.clone(),
            cfg,
            Box::new(move |_| flag.store(true, Ordering::SeqCst)),
        );
        let out = f(&lost);
        renewer.stop();
        if let Ok(lease) = Arc::try_unwrap(lease)
            && let Err(e) = lease.release(remote)
        {
            tracing::warn!("cannot release the lease {key}: {e} (it expires by itself)");
        }
        out
    }

    /// Starts a thread that renews `lease` every `cfg.renew_every` and calls `on_lost` once,
    /// then stops, when the lease is lost (taken over, deleted, unreadable) or could not be
    /// renewed for `ttl - renew_every` (ttl: the shorter of `cfg.ttl` and the lease's) by the
    /// local monotonic clock. A renewal request that hangs does not delay that: requests run
    /// on a second thread. The caller must stop writing when `on_lost` is called.
    pub fn spawn_renewer(
        lease: Arc<Lease>,
        remote: Arc<RemoteStore>,
        cfg: LeaseConfig,
        on_lost: Box<dyn Fn(LeaseError) + Send>,
    ) -> RenewerHandle {
        if let Err(e) = cfg.check() {
            on_lost(e);
            return RenewerHandle::default();
        }
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        // A rendezvous: a request is taken only by an idle worker, so none is left queued
        // for after the supervisor has gone.
        let (req_tx, req_rx) = crossbeam_channel::bounded::<()>(0);
        let (res_tx, res_rx) = crossbeam_channel::unbounded();
        let worker_lease = lease.clone();
        let worker = thread::Builder::new()
            .name("dedupfs-lease-io".to_string())
            .spawn(move || {
                for () in req_rx.iter() {
                    if res_tx.send(worker_lease.renew(&remote)).is_err() {
                        break;
                    }
                }
            });
        let worker = match worker {
            Ok(w) => w,
            Err(e) => {
                on_lost(LeaseError::RenewerFailed(format!(
                    "cannot start its thread: {e}"
                )));
                return RenewerHandle::default();
            }
        };
        let supervisor = thread::Builder::new()
            .name("dedupfs-lease".to_string())
            .spawn(move || supervise(&lease, &cfg, stop_rx, req_tx, res_rx, on_lost));
        match supervisor {
            Ok(s) => RenewerHandle {
                stop: Some(stop_tx),
                supervisor: Some(s),
                worker: Some(worker),
            },
            Err(_) => {
                // The closure (with on_lost) was dropped; stopping the worker is all we can
                // do, and the lease will expire unrenewed.
                tracing::error!("cannot start the lease renewer thread");
                RenewerHandle {
                    stop: None,
                    supervisor: None,
                    worker: Some(worker),
                }
            }
        }
    }
}

/// The renewer's clock: asks the worker for a renewal every `renew_every`, and gives up at
/// the deadline whether or not a request is still in flight.
fn supervise(
    lease: &Lease,
    cfg: &LeaseConfig,
    stop: Receiver<()>,
    requests: Sender<()>,
    results: Receiver<Result<(), LeaseError>>,
    on_lost: Box<dyn Fn(LeaseError) + Send>,
) {
    let limit = cfg.ttl.min(lease.ttl).saturating_sub(cfg.renew_every);
    let mut next = Instant::now() + cfg.renew_every;
    let mut in_flight = false;
    let mut last_error: Option<Box<RemoteError>> = None;
    loop {
        let now = Instant::now();
        let unrenewed_for = lease.unrenewed_for();
        if unrenewed_for >= limit {
            on_lost(LeaseError::Expired {
                key: lease.key.clone(),
                unrenewed_for,
                limit,
                last_error,
            });
            return;
        }
        let deadline = now + (limit - unrenewed_for);
        if !in_flight && now >= next {
            if requests.send(()).is_err() {
                on_lost(LeaseError::RenewerFailed(
                    "its worker thread died".to_string(),
                ));
                return;
            }
            in_flight = true;
        }
        let wake = if in_flight {
            deadline
        } else {
            next.min(deadline)
        };
        select! {
            recv(stop) -> _ => return,
            recv(results) -> result => {
                in_flight = false;
                match result {
                    Ok(Ok(())) => {
                        last_error = None;
                        next = Instant::now() + cfg.renew_every;
                    }
                    Ok(Err(LeaseError::Remote(e))) => {
                        tracing::warn!(key = lease.key, "cannot renew the lease: {e}");
                        last_error = Some(Box::new(e));
                        next = Instant::now() + cfg.renew_every.min(RENEW_RETRY);
                    }
                    Ok(Err(e)) => {
                        on_lost(e);
                        return;
                    }
                    Err(_) => {
                        on_lost(LeaseError::RenewerFailed("its worker thread died".to_string()));
                        return;
                    }
                }
            }
            default(wake.saturating_duration_since(now)) => {}
        }
    }
}

/// Stops the renewer on [`RenewerHandle::stop`] or drop.
#[derive(Default)]
pub struct RenewerHandle {
    stop: Option<Sender<()>>,
    supervisor: Option<JoinHandle<()>>,
    worker: Option<JoinHandle<()>>,
}

impl RenewerHandle {
    /// Stops renewing. Returns at once, unless a renewal request is in flight: that one is
    /// waited for (bounded by the remote's timeouts), so that no renewal lands after `stop`
    /// returns and a following [`Lease::release`] stays released. Once it returns the threads
    /// have dropped their `Arc<Lease>`.
    pub fn stop(mut self) {
        self.shut_down();
    }

    /// True once the renewer has stopped by itself (after `on_lost`).
    pub fn is_finished(&self) -> bool {
        self.supervisor.as_ref().is_none_or(|s| s.is_finished())
    }

    fn shut_down(&mut self) {
        // Disconnecting wakes the supervisor's select.
        self.stop.take();
        let me = thread::current().id();
        if let Some(s) = self.supervisor.take() {
            if s.thread().id() == me {
                // Called from on_lost: the supervisor returns right after; joining it (or the
                // worker, which waits for it) here would deadlock.
                return;
            }
            let _ = s.join();
        }
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Drop for RenewerHandle {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn encode(holder: &Holder, ttl: Duration, renewal: u64) -> Vec<u8> {
    let obj = LeaseObject {
        format: LEASE_FORMAT,
        holder: holder.clone(),
        ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        renewal,
    };
    // Plain strings and integers: serialising cannot fail.
    serde_json::to_vec(&obj).unwrap_or_default()
}

/// The lease at `key`, or None. HEAD first, then GET (see the module doc).
fn read(remote: &RemoteStore, key: &str) -> Result<Option<Current>, LeaseError> {
    let info = match remote.head(key) {
        Ok(info) => info,
        Err(RemoteError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let bytes = match remote.get(key) {
        Ok(b) => b,
        Err(RemoteError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let unreadable = |detail: String| LeaseError::Unreadable {
        key: key.to_string(),
        detail,
    };
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| unreadable(format!("not JSON: {e}")))?;
    match value.get("format").and_then(|f| f.as_u64()) {
        Some(f) if f == u64::from(LEASE_FORMAT) => {}
        Some(f) => {
            return Err(unreadable(format!(
                "format {f}, this version reads {LEASE_FORMAT}"
            )));
        }
        None => return Err(unreadable("no format field".to_string())),
    }
    let obj: LeaseObject = serde_json::from_value(value).map_err(|e| unreadable(e.to_string()))?;
    Ok(Some(Current {
        holder: obj.holder,
        ttl: Duration::from_millis(obj.ttl_ms),
        renewal: obj.renewal,
        info,
    }))
}

/// Writes our lease over `cur` with `If-Match` on its ETag. False when the store refused
/// because the object changed since it was read.
fn write_over(
    remote: &RemoteStore,
    key: &str,
    me: &Holder,
    ttl: Duration,
    cur: &Current,
) -> Result<bool, LeaseError> {
    let bytes = encode(me, ttl, cur.renewal.wrapping_add(1));
    let written = match &cur.info.e_tag {
        Some(tag) => remote.replace_if(key, bytes, tag),
        // A store without ETags cannot compare: overwrite (as one ignoring If-Match would).
        None => remote.put(key, bytes),
    };
    match written {
        Ok(()) => Ok(true),
        Err(RemoteError::Precondition { .. }) | Err(RemoteError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The age of an object last modified at `last_modified`, by the store's clock: the store's
/// now is the Last-Modified of a probe object we write. Zero if the store's clock seems to
/// have gone back (nodes of a cluster disagreeing): a lease is never aged by a bad clock.
fn store_age(
    remote: &RemoteStore,
    key: &str,
    session: &str,
    last_modified: SystemTime,
) -> Result<Duration, LeaseError> {
    let now = store_now(remote, &format!("{key}.clock/{session}"))?;
    Ok(now.duration_since(last_modified).unwrap_or_default())
}

/// The store's clock now: the Last-Modified of the empty object `probe`, written, read and
/// deleted.
pub fn store_now(remote: &RemoteStore, probe: &str) -> Result<SystemTime, LeaseError> {
    remote.put(probe, Vec::new())?;
    let now = remote.head(probe)?.last_modified;
    if let Err(e) = remote.delete(probe) {
        // A leftover probe is a few bytes, overwritten by this session's next probe.
        tracing::warn!(probe, "cannot delete the clock probe: {e}");
    }
    Ok(now)
}

/// A lease as someone who does not hold it sees it (`inspect`).
#[derive(Clone, Debug)]
pub struct Seen {
    pub holder: Holder,
    /// Since its last renewal, by the store's clock.
    pub age: Duration,
    /// What its holder promised to renew within.
    pub ttl: Duration,
    /// Not expired: `age` is at most `ttl` plus [`CLOCK_GRANULARITY`] (as `acquire` judges).
    pub live: bool,
}

/// The lease at `key` judged at `now` (the store's clock, [`store_now`]), or None when there
/// is none.
pub fn inspect(
    remote: &RemoteStore,
    key: &str,
    now: SystemTime,
) -> Result<Option<Seen>, LeaseError> {
    Ok(read(remote, key)?.map(|cur| {
        let age = now
            .duration_since(cur.info.last_modified)
            .unwrap_or_default();
        Seen {
            live: age <= cur.ttl + CLOCK_GRANULARITY,
            holder: cur.holder,
            age,
            ttl: cur.ttl,
        }
    }))
}
