//! The daemon's side of a remote volume: the lease taken before mounting, the background
//! thread that uploads packs and publishes generations, and the final publication at unmount.

use crate::fs::Fs;
use crate::remote::config::hex16;
use crate::remote::lease::{Holder, Lease, LeaseConfig, LeaseError, RenewerHandle};
use crate::remote::packs::RemotePacks;
use crate::remote::readers::ReaderHold;
use crate::remote::sync::RemoteVolume;
use crate::store::PackStore;
use crate::store::remote::RemoteStore;
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Between two upload passes.
const STEP: Duration = Duration::from_secs(2);
/// How often a mounted volume looks for a bucket gc mark to acknowledge
/// (`DEDUPFS_GC_MARK_CHECK_SECS` overrides it: tests that stage the gc race).
fn mark_check() -> Duration {
    let secs = std::env::var("DEDUPFS_GC_MARK_CHECK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

pub struct RemoteDaemon {
    pub vol: Arc<RemoteVolume>,
    keeper: Arc<LeaseKeeper>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    publisher: Option<std::thread::JoinHandle<()>>,
}

/// The lease while mounted: renewed in the background. Taken over (`Lost`, `Deleted`): the
/// volume stops writing. Not renewable for too long (the object store unreachable): the
/// lease has lapsed; local writes go on into the local journal, nothing is published until the
/// lease is taken again (and if another machine took it meanwhile, the volume stops writing).
struct LeaseKeeper {
    client: Arc<RemoteStore>,
    key: String,
    me: Holder,
    cfg: LeaseConfig,
    held: parking_lot::Mutex<Option<(Arc<Lease>, RenewerHandle)>>,
    /// One attempt to take a lapsed lease again at a time.
    retaking: parking_lot::Mutex<()>,
    vol: Arc<RemoteVolume>,
    fs: OnceLock<Weak<Fs>>,
}

impl LeaseKeeper {
    fn fence(&self, why: String) {
        match self.fs.get().and_then(Weak::upgrade) {
            Some(fs) => self.vol.fence(&fs, why),
            None => tracing::error!("{why}"),
        }
    }

    /// Starts renewing `lease`.
    fn keep(self: &Arc<Self>, lease: Lease) {
        let lease = Arc::new(lease);
        let weak = Arc::downgrade(self);
        let on_lost = Box::new(move |e: LeaseError| {
            let Some(k) = weak.upgrade() else { return };
            match e {
                LeaseError::Lost { .. } | LeaseError::Deleted { .. } => {
                    k.fence(format!("another machine took the volume over: {e}"));
                }
                e => {
                    tracing::error!(
                        "{e}; writes go on into the local store, nothing is published until \
                         the lease is taken again"
                    );
                    k.vol.set_lapsed(true);
                }
            }
        });
        let renewer = Lease::spawn_renewer(
            lease.clone(),
            self.client.clone(),
            self.cfg.clone(),
            on_lost,
        );
        if let Some((_, old)) = self.held.lock().replace((lease, renewer)) {
            old.stop();
        }
    }

    /// After a lapse: takes the lease again when the object store answers.
    fn retake(self: &Arc<Self>) {
        let _one = self.retaking.lock();
        if !self.vol.lapsed() || self.vol.fenced().is_some() {
            return;
        }
        match Lease::acquire(&self.client, &self.key, self.me.clone(), &self.cfg) {
            Ok(a) => {
                if let Some((old, age)) = &a.took_over {
                    tracing::warn!(
                        "took the lease of the volume again from {old}, whose lease expired {} s ago",
                        age.as_secs()
                    );
                }
                self.keep(a.lease);
                self.vol.set_lapsed(false);
                tracing::info!("the lease of the volume is held again");
            }
            Err(e @ LeaseError::Held { .. }) => {
                self.fence(format!("another machine holds the volume now: {e}"));
            }
            Err(e) => tracing::debug!("lease not taken again yet: {e}"),
        }
    }

    /// Stops renewing; releases the lease when `release`.
    fn finish(&self, release: bool) {
        if let Some((lease, renewer)) = self.held.lock().take() {
            renewer.stop();
            if !release || self.vol.lapsed() {
                return;
            }
            match Arc::try_unwrap(lease) {
                Ok(l) => {
                    if let Err(e) = l.release(&self.client) {
                        tracing::warn!("cannot release the lease: {e}");
                    }
                }
                Err(_) => tracing::warn!("the lease is still in use; it will expire"),
            }
        }
    }
}

impl RemoteDaemon {
    /// Before mounting a remote volume writable: takes its lease (refused, with the holder
    /// named, while another machine holds it).
    pub fn start(
        dir: &Path,
        packs: Arc<PackStore>,
        remote: Arc<RemotePacks>,
    ) -> Result<RemoteDaemon> {
        let vol = Arc::new(RemoteVolume::new(dir, packs, remote.clone())?);
        let client = remote.client()?;
        let config = remote.config();
        let me = Holder::this_process(&hex16(config.writer), dir);
        let cfg = LeaseConfig::default();
        let key = remote.keys().lease();
        let acquired = Lease::acquire(&client, &key, me, &cfg).with_context(|| {
            format!(
                "cannot mount volume {} of {} for writing (`-o ro` mounts this store's copy read-only)",
                config.volume, config.url
            )
        })?;
        if let Some((old, age)) = &acquired.took_over {
            let state = crate::remote::sync::PublishState::load(dir)?;
            tracing::warn!(
                "took over volume {} from {} (pid {}, store {}), whose lease expired {} s ago: \
                 what it wrote after it last published (and after the generation this store \
                 has, {}) is not visible here",
                config.volume,
                old.host,
                old.pid,
                old.store_dir,
                age.as_secs(),
                state.generation
            );
        }
        let keeper = Arc::new(LeaseKeeper {
            client,
            key,
            me: acquired.lease.holder().clone(),
            cfg,
            held: parking_lot::Mutex::new(None),
            retaking: parking_lot::Mutex::new(()),
            vol: vol.clone(),
            fs: OnceLock::new(),
        });
        keeper.keep(acquired.lease);
        // A store whose base is not the volume's head (another machine published since, or
        // this store was fenced) must not take writes it can never publish.
        let state = crate::remote::sync::PublishState::load(dir)?;
        if let Err(why) =
            crate::remote::sync::check_head(&keeper.client, remote.keys(), &state, config.writer)?
        {
            keeper.finish(true);
            anyhow::bail!(
                "cannot mount volume {} of {} for writing: {why}. `-o ro` mounts this store's \
                 copy read-only; `dedupfs attach` into a new directory gives the volume as \
                 published",
                config.volume,
                config.url
            );
        }
        if let Err(e) = vol.mounted_for_writing() {
            keeper.finish(true);
            return Err(e).context("cannot record the store as written to (remote/state.json)");
        }
        // Shared dedup: chunks other volumes under the prefix published are named, not stored
        // again. Without the bucket now, the volume works, and dedups against them later.
        remote.enable_sharing()?;
        match remote.install_marks().and_then(|_| remote.refresh_shared()) {
            Ok(r) => tracing::info!(
                volumes = r.volumes,
                generations = r.generations_merged,
                chunks = r.chunks_added,
                "shared chunk index refreshed"
            ),
            Err(e) => tracing::warn!("cannot refresh the shared chunk index: {e}"),
        }
        let weak = Arc::downgrade(&keeper);
        vol.set_retaker(Box::new(move || {
            if let Some(k) = weak.upgrade() {
                k.retake();
            }
        }));
        Ok(RemoteDaemon {
            vol,
            keeper,
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            publisher: None,
        })
    }

    /// Once the filesystem is open: uploads in the background and publishes every
    /// `publish_secs` while the metadata changes.
    pub fn run(&mut self, fs: &Arc<Fs>) {
        let _ = self.keeper.fs.set(Arc::downgrade(fs));
        let (vol, stop, weak) = (self.vol.clone(), self.stop.clone(), Arc::downgrade(fs));
        let keeper = self.keeper.clone();
        let step_fs = Arc::downgrade(fs);
        let every = Duration::from_secs(vol.remote().config().publish_secs);
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Woken at once by a writer waiting for room (at most every 100 ms, so that
                // `stop` is seen).
                let until = Instant::now() + STEP;
                let mut writer_waits = false;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    if vol.wait_for_work(Duration::from_millis(100)) {
                        writer_waits = true;
                        break;
                    }
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                keeper.retake();
                if vol.step(writer_waits) > 0
                    && let Some(fs) = step_fs.upgrade()
                {
                    // Cached slices of evicted packs would keep their space allocated.
                    fs.drop_mapped_chunks();
                }
            }
        }));
        // Publications on their own thread: one waits for the state lock, which a writer
        // holding it may keep while it waits for uploads to make room.
        let (vol, stop) = (self.vol.clone(), self.stop.clone());
        self.publisher = Some(std::thread::spawn(move || {
            let mut last_publish = Instant::now();
            let mut last_mark_check = Instant::now();
            let mark_every = mark_check();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                // A bucket gc waits for every volume to acknowledge its mark: published
                // soon, even when nothing changed here.
                let mark_waits = last_mark_check.elapsed() >= mark_every && {
                    last_mark_check = Instant::now();
                    vol.gc_mark_waiting()
                };
                if !mark_waits && (every.is_zero() || last_publish.elapsed() < every) {
                    continue;
                }
                last_publish = Instant::now();
                let Some(fs) = weak.upgrade() else { break };
                if vol.fenced().is_none()
                    && !vol.lapsed()
                    && let Err(e) = vol.publish(&fs)
                {
                    tracing::warn!("periodic publication failed: {e}");
                }
            }
        }));
    }

    /// Stops the background threads (once).
    fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in [self.thread.take(), self.publisher.take()]
            .into_iter()
            .flatten()
        {
            let _ = t.join();
        }
    }

    /// At unmount: stops the background thread, publishes everything (the volume's state in
    /// the bucket is then this mount's last one) and releases the lease.
    pub fn finish(mut self, fs: &Fs) -> Result<()> {
        self.stop_threads();
        self.keeper.retake();
        let published = if self.vol.fenced().is_some() {
            Ok(())
        } else {
            self.vol.publish(fs).map(|_| ())
        };
        self.vol.write_status();
        // Kept (to expire) when the last publication failed: the next mount of this store
        // takes it again at once (same session) and publishes what this one could not.
        self.keeper.finish(published.is_ok());
        published.context("the final upload to the object store failed: the data is safe in the local store and goes up at the next mount")
    }
}

impl Drop for RemoteDaemon {
    /// A mount that ended without `finish` (a failed final sync, a failed mount): the threads
    /// stop before the store is unlocked; the lease is left to expire (nothing was published).
    fn drop(&mut self) {
        self.stop_threads();
        self.keeper.finish(false);
    }
}

/// A read-only mount's hold on the generation it serves (`remote/readers.rs`), so that bucket
/// gc keeps the packs it reads. Taken in the background, so an unreachable store never delays
/// the mount, and tried again every 30 s until it lands; released at unmount. A store that
/// never published (generation 0) has nothing in the bucket to hold.
pub struct ReadHolder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Option<ReaderHold>>>,
}

/// Between two attempts to take a reader hold.
const HOLD_RETRY: Duration = Duration::from_secs(30);

impl ReadHolder {
    pub fn start(dir: &Path, remote: Arc<RemotePacks>) -> ReadHolder {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let dir = dir.to_path_buf();
        let thread = std::thread::spawn(move || {
            let state = match crate::remote::sync::PublishState::load(&dir) {
                Ok(s) if s.generation > 0 => s,
                Ok(_) => return None,
                Err(e) => {
                    tracing::warn!("cannot read remote/state.json ({e}): no reader hold");
                    return None;
                }
            };
            let mut held: Option<ReaderHold> = None;
            let lost = Arc::new(AtomicBool::new(false));
            let mut next_try = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                if lost.swap(false, Ordering::SeqCst)
                    && let Some(old) = held.take()
                {
                    // Lapsed: its object is left to expire; a new hold replaces it.
                    drop(old);
                }
                if held.is_none() && Instant::now() >= next_try {
                    // A volume deleted from the bucket (delete-volume): nothing to hold.
                    let deleted = remote.client().is_ok_and(|c| {
                        matches!(
                            c.head(&remote.keys().volume_json()),
                            Err(crate::error::RemoteError::NotFound { .. })
                        )
                    });
                    if deleted {
                        tracing::warn!(
                            "volume {} was deleted from the bucket: this read-only mount \
                             reads its local copy; what it must fetch from the bucket may be \
                             gone (EIO)",
                            remote.config().volume
                        );
                        return None;
                    }
                    let taken = remote.client().and_then(|c| {
                        ReaderHold::take(
                            c,
                            remote.keys(),
                            state.generation,
                            state.writer,
                            &dir,
                            &flag,
                            lost.clone(),
                        )
                    });
                    match taken {
                        Ok(h) => held = Some(h),
                        Err(e) => {
                            tracing::warn!(
                                "cannot hold generation {} against bucket gc ({e}): until it is \
                                 held, a gc-bucket run may delete packs this read-only mount \
                                 reads (they would read as EIO); trying again in {} s",
                                state.generation,
                                HOLD_RETRY.as_secs()
                            );
                            next_try = Instant::now() + HOLD_RETRY;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            held
        });
        ReadHolder {
            stop,
            thread: Some(thread),
        }
    }

    /// At unmount: releases the hold (or stops trying to take it).
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && let Ok(Some(hold)) = t.join()
        {
            hold.release();
        }
    }
}
