//! Reader holds: a read-only mount keeps the packs of the generation it serves from bucket gc.
//!
//! A read-only mount of a remote volume's store (`mount -o ro` on an attached cache, while
//! another machine writes) serves generation G: the one this store attached or last published.
//! Its writer moves on, and `gc-bucket` deletes the packs no volume's *head* names, which can
//! include packs only G names: the mount would then get EIO for files its metadata still has.
//! So the mount takes a *hold*: a lease (`lease.rs`: holder, ttl, judged by the store's clock)
//! at its own key
//!
//! ```text
//! PREFIX/volumes/NAME/readers/GEN-WRITER-SESSION   GEN, WRITER: 16 hex (the generation held);
//!                                                  SESSION: 32 hex (the mount)
//! ```
//!
//! renewed while mounted and deleted at unmount. `gc-bucket` counts what the generation of
//! every *live* hold names as named: never marked, never swept. A hold not renewed within its
//! ttl (the reader crashed, or lost the store for that long) no longer holds anything:
//! gc-bucket reports it as expired, and the reader may then get EIO (never other bytes) for
//! packs a later sweep deletes.
//!
//! The race: a gc run reads the holds at its start, and again right before its sweep deletes
//! anything; a hold created after that second reading is not seen by that run. Only one run
//! goes at a time, under `gc/lease`: the thread that took the hold then waits while that lease
//! is live (up to [`GC_WAIT`], then it warns), and logs when it is held. The mount does not
//! wait for any of this (an unreachable store must not delay it): what it reads before its
//! hold is in place is exposed to a sweep running at that moment. A hold that lapses (not
//! renewed for its ttl less a renewal interval) is replaced by a new one.
//!
//! Not covered: a read-only mount of a store whose local metadata is newer than its last
//! publication (a writer fenced by another, mounted `-o ro`): what it wrote after that
//! generation is named by no generation, and a sweep the new writer acknowledged may delete
//! it. Attach a new store to read the volume as published.

use super::config::Keys;
use super::gc::GC_LEASE;
use super::lease::{self, Holder, Lease, LeaseConfig, LeaseError, RenewerHandle, Seen};
use crate::error::{FsError, Result};
use crate::store::remote::RemoteStore;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// How long a hold lives without renewal, by the store's clock (a reader's store may be
/// unreachable for that long before gc may take what it reads). `DEDUPFS_READER_HOLD_SECS`
/// overrides it (tests); holds are renewed every tenth of it.
fn hold_ttl() -> Duration {
    let secs = std::env::var("DEDUPFS_READER_HOLD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&s: &u64| s >= 2)
        .unwrap_or(600);
    Duration::from_secs(secs)
}

/// How long a new hold waits for a gc run in progress to end.
pub const GC_WAIT: Duration = Duration::from_secs(30);

/// The hold key of `session` on generation `generation` by `writer`.
pub fn hold_key(keys: &Keys, generation: u64, writer: u64, session: &str) -> String {
    format!(
        "{}/{}-{session}",
        keys.readers(),
        super::config::gen_name(generation, writer)
    )
}

/// `(generation, writer, session)` of a hold key's last component: 16, 16 and 32 hex digits.
fn parse_hold(name: &str) -> Option<(u64, u64, &str)> {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let mut parts = name.splitn(3, '-');
    let (g, w, s) = (parts.next()?, parts.next()?, parts.next()?);
    if !(hex(g, 16) && hex(w, 16) && hex(s, 32)) {
        return None;
    }
    Some((
        u64::from_str_radix(g, 16).ok()?,
        u64::from_str_radix(w, 16).ok()?,
        s,
    ))
}

/// A hold as gc sees it.
#[derive(Clone, Debug)]
pub struct Hold {
    pub key: String,
    pub generation: u64,
    pub writer: u64,
    pub seen: Seen,
}

/// The holds on `keys`' volume, judged at `now` (the store's clock). A key that does not
/// parse, or a hold object this version cannot read, is an error: gc cannot tell what it
/// holds.
pub fn holds(client: &RemoteStore, keys: &Keys, now: SystemTime) -> Result<Vec<Hold>> {
    let prefix = format!("{}/", keys.readers());
    let mut out = Vec::new();
    for o in client.list(&keys.readers())? {
        let Some(name) = o.key.strip_prefix(&prefix) else {
            continue;
        };
        let (generation, writer, _) = parse_hold(name).ok_or_else(|| {
            FsError::Refused(format!(
                "{} is not a reader hold this version can read; if no read-only mount uses \
                 it, delete it",
                o.key
            ))
        })?;
        let seen = match lease::inspect(client, &o.key, now) {
            Ok(Some(seen)) => seen,
            // Released since the listing.
            Ok(None) => continue,
            Err(LeaseError::Remote(e)) => return Err(e.into()),
            Err(e) => {
                return Err(FsError::Refused(format!(
                    "{}: {e}; if no read-only mount uses it, delete it",
                    o.key
                )));
            }
        };
        out.push(Hold {
            key: o.key,
            generation,
            writer,
            seen,
        });
    }
    Ok(out)
}

/// A read-only mount's hold, renewed until [`ReaderHold::release`] (or drop, which leaves
/// the object to expire).
pub struct ReaderHold {
    lease: Arc<Lease>,
    client: Arc<RemoteStore>,
    renewer: Option<RenewerHandle>,
}

impl ReaderHold {
    /// Takes a hold on generation `generation` by `writer` for a mount of `store_dir`, then
    /// waits while a gc run is in progress (see the module doc; until `stop` is set, and a
    /// failure to judge that only warns). `lost` is set if the hold lapses later (the renewer
    /// gave up): the caller takes a new one.
    pub fn take(
        client: Arc<RemoteStore>,
        keys: &Keys,
        generation: u64,
        writer: u64,
        store_dir: &Path,
        stop: &AtomicBool,
        lost: Arc<AtomicBool>,
    ) -> Result<ReaderHold> {
        let session = lease::new_session_id();
        let key = hold_key(keys, generation, writer, &session);
        let ttl = hold_ttl();
        let cfg = LeaseConfig {
            ttl,
            renew_every: ttl / 10,
            // The key is this mount's alone: no acquirer to race.
            settle: Duration::ZERO,
        };
        let me = Holder::this_process(&session, store_dir);
        let acquired = Lease::acquire(&client, &key, me, &cfg)
            .map_err(|e| FsError::Refused(format!("cannot take the reader hold {key}: {e}")))?;
        let lease = Arc::new(acquired.lease);
        let probe = format!("{}.clock/{session}", keys.readers());
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let run = lease::store_now(&client, &probe)
                .and_then(|now| lease::inspect(&client, GC_LEASE, now));
            match run {
                Err(e) => {
                    tracing::warn!("cannot tell whether a gc-bucket run is in progress: {e}");
                    break;
                }
                Ok(Some(run)) if run.live => {
                    if start.elapsed() >= GC_WAIT {
                        tracing::warn!(
                            "a gc-bucket run ({}) is still in progress after {} s: it may \
                             delete packs this read-only mount reads (they would read as EIO)",
                            run.holder,
                            GC_WAIT.as_secs()
                        );
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                _ => break,
            }
        }
        let key_for_log = key.clone();
        let renewer = Lease::spawn_renewer(
            lease.clone(),
            client.clone(),
            cfg,
            Box::new(move |e| {
                tracing::warn!(
                    "the reader hold {key_for_log} lapsed ({e}): until a new one is taken, \
                     gc-bucket may delete packs this read-only mount reads (they would read \
                     as EIO)"
                );
                lost.store(true, Ordering::SeqCst);
            }),
        );
        tracing::info!(key, "holding generation {generation} against bucket gc");
        Ok(ReaderHold {
            lease,
            client,
            renewer: Some(renewer),
        })
    }

    /// Stops renewing and deletes the hold.
    pub fn release(mut self) {
        if let Some(r) = self.renewer.take() {
            r.stop();
        }
        match Arc::try_unwrap(self.lease) {
            Ok(l) => {
                if let Err(e) = l.release(&self.client) {
                    tracing::warn!("cannot delete the reader hold: {e} (it expires by itself)");
                }
            }
            Err(_) => tracing::warn!("the reader hold is still in use; it expires by itself"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_keys_parse_back() {
        let keys = Keys::for_volume("vm", "00000000000000aa");
        let k = hold_key(&keys, 0x1f, 0xab, "0123456789abcdef0123456789abcdef");
        assert_eq!(
            k,
            "volumes/vm/readers/000000000000001f-00000000000000ab-0123456789abcdef0123456789abcdef"
        );
        let name = k.rsplit('/').next().unwrap();
        assert_eq!(
            parse_hold(name),
            Some((0x1f, 0xab, "0123456789abcdef0123456789abcdef"))
        );
        assert_eq!(parse_hold("1f-ab"), None);
        assert_eq!(parse_hold("1f-ab-"), None);
        assert_eq!(parse_hold("zz-ab-00"), None);
        assert_eq!(parse_hold("1f-ab-00.clock"), None);
        assert_eq!(
            parse_hold("+00000000000001f-00000000000000ab-0123456789abcdef0123456789abcdef"),
            None
        );
        assert_eq!(
            parse_hold("000000000000001f-00000000000000ab-0123456789abcdef0123456789abcdef.clock"),
            None
        );
    }
}
