//! A mounted remote volume's traffic with its bucket: uploading sealed packs, evicting local
//! copies past the cache budget, and publishing metadata generations.
//!
//! Ordering (docs/design.md, "Remote volumes"):
//! - a pack is uploaded (content-named key, so a retry or a duplicate stores the same bytes)
//!   and recorded in `packs.log` (fsynced) before any generation naming it is published, and
//!   before its local file may be evicted;
//! - a generation is a consistent pair of metadata and pack index taken at one durable point,
//!   plus the table of the packs that index names; it is published with a number one above
//!   the last one this store published or attached, after checking that no other writer
//!   published above that number (fencing): if one did, this store stops writing.

use super::config::{Keys, now_unix, parse_gen_name, state_dir, write_durably};
use super::generation::{self, Header, PackRef};
use super::packs::RemotePacks;
use crate::error::{FsError, Result};
use crate::fs::Fs;
use crate::meta::MetaDb;
use crate::store::ChunkStore;
use crate::store::PackStore;
use crate::store::pack_index::{PackIndex, PackState};
use crate::store::remote::RemoteStore;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const STATE: &str = "state.json";
const STATUS: &str = "status.json";
/// Packs uploaded at once.
const UPLOADERS: usize = 2;

/// The newest generation this store published or attached (`STORE/remote/state.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PublishState {
    pub generation: u64,
    /// Its writer: this store's, or the one of the generation attached.
    pub writer: u64,
    /// Keys of generations above it that `attach` found damaged and skipped: not the head
    /// (and the next generation is numbered above them).
    #[serde(default)]
    pub skipped: Vec<String>,
    pub published_unix: u64,
    /// The bucket gc mark that generation acknowledged (installed before its durable point).
    #[serde(default)]
    pub gc_ack: u64,
    /// Made by `attach` and never mounted for writing since: nothing here is the store's own,
    /// so a mount first brings it to the volume's newest generation (`attach::catch_up`).
    #[serde(default)]
    pub attached_only: bool,
}

impl PublishState {
    pub fn load(store_dir: &Path) -> Result<PublishState> {
        match std::fs::read(store_dir.join(super::config::STATE_DIR).join(STATE)) {
            Ok(raw) => serde_json::from_slice(&raw)
                .map_err(|e| FsError::Corrupt(format!("remote/{STATE}: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PublishState::default()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn save(&self, store_dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_durably(&state_dir(store_dir)?, STATE, &json)
    }
}

/// What `stats` shows of a remote volume (`STORE/remote/status.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteStatus {
    pub url: String,
    pub volume: String,
    /// Packs and bytes written locally and not in the bucket yet.
    pub not_uploaded_packs: u64,
    pub not_uploaded_bytes: u64,
    /// Packs uploaded, and local copies of them still kept.
    pub uploaded_packs: u64,
    pub local_packs: u64,
    /// Packs of other volumes this one names (shared dedup; not counted above).
    #[serde(default)]
    pub shared_packs: u64,
    pub cached_range_bytes: u64,
    /// The newest generation published from this store (or attached).
    pub generation: u64,
    pub published_unix: u64,
    /// Set when the volume stopped writing (another writer took it over).
    pub fenced: Option<String>,
    pub last_error: Option<String>,
}

/// What one publication did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PublishReport {
    pub generation: u64,
    /// Nothing changed since the last publication: no new generation.
    pub unchanged: bool,
    pub packs_uploaded: u64,
    pub bytes_uploaded: u64,
    pub metadata_bytes: u64,
    pub elapsed_ms: u64,
}

fn is_remote_error(e: &FsError) -> bool {
    matches!(e, FsError::Remote(_))
}

/// Hash (first 16 bytes of blake3) of pack bytes: names the object.
pub fn pack_hash(bytes: &[u8]) -> [u8; 16] {
    let h = blake3::hash(bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.as_bytes()[..16]);
    out
}

/// Newest generations first: (generation, writer, key) of every generation object.
pub fn list_generations(client: &RemoteStore, keys: &Keys) -> Result<Vec<(u64, u64, String)>> {
    let mut gens: Vec<(u64, u64, String)> = client
        .list(&keys.gens())?
        .into_iter()
        .filter_map(|o| parse_gen_name(&o.key).map(|(g, w)| (g, w, o.key)))
        .collect();
    // For equal numbers (two writers past the lease), the lower writer id wins: every reader
    // and writer decides the same way.
    gens.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    Ok(gens)
}

/// Fencing: whether this store may publish on top of the volume's head. The head (the newest
/// generation, lowest writer id among equals, damaged ones `attach` skipped left out: what
/// every reader takes) must be the generation the store built on, or one of its own above it
/// (published, then a crash before the state file was written). `Ok(Ok((base, next)))`: the
/// generation built on and the number to publish; `Ok(Err(why))`: another writer published.
pub fn check_head(
    client: &RemoteStore,
    keys: &Keys,
    state: &PublishState,
    me: u64,
) -> Result<std::result::Result<(u64, u64), String>> {
    // A volume deleted from the bucket (`dedupfs delete-volume`) takes no generation again.
    match client.head(&keys.volume_json()) {
        Ok(_) => {}
        Err(crate::error::RemoteError::NotFound { .. }) => {
            return Ok(Err(format!(
                "volume {} was deleted from the bucket (its volume.json is gone): this store's \
                 data is kept locally but never published",
                keys.name()
            )));
        }
        Err(e) => return Err(e.into()),
    }
    let gens = list_generations(client, keys)?;
    let own = gens
        .iter()
        .filter(|(_, w, _)| *w == me)
        .map(|(g, _, _)| *g)
        .max()
        .unwrap_or(0);
    let (base, base_writer) = if own > state.generation {
        (own, me)
    } else {
        (state.generation, state.writer)
    };
    let skipped_max = gens
        .iter()
        .filter(|(_, _, k)| state.skipped.contains(k))
        .map(|(g, _, _)| *g)
        .max()
        .unwrap_or(0);
    match gens.iter().find(|(_, _, k)| !state.skipped.contains(k)) {
        Some((g, w, _)) if (*g, *w) != (base, base_writer) => Ok(Err(format!(
            "another writer ({w:016x}) published generation {g} of this volume, which is not \
             the generation {base} this store built on: the volume was written elsewhere \
             since this store last published (after this store's lease was released or \
             expired, or while two machines wrote it); this store's changes since are kept \
             locally but not published"
        ))),
        _ => Ok(Ok((base, base.max(skipped_max) + 1))),
    }
}

/// `STORE/remote/multipart`: the multipart uploads of generations not finished yet (key and
/// upload id per line), aborted by the next publication if a crash left them.
pub const MULTIPART_JOURNAL: &str = "multipart";

/// Builds and uploads generation `header` from metadata and index files and snapshot files,
/// as streams through scratch files in `scratch` (memory bounded whatever their size).
/// Returns the object's size.
#[allow(clippy::too_many_arguments)]
pub fn put_generation(
    client: &RemoteStore,
    keys: &Keys,
    header: Header,
    meta_file: &Path,
    index_file: &Path,
    packs: Vec<PackRef>,
    snapshots: Vec<(String, std::fs::File)>,
    gc_ack: u64,
    key: Option<&crate::crypto::Key>,
    scratch: &Path,
) -> Result<u64> {
    let open = |p: &Path| -> Result<(std::io::BufReader<std::fs::File>, u64)> {
        let f = std::fs::File::open(p)?;
        let len = f.metadata()?.len();
        Ok((std::io::BufReader::new(f), len))
    };
    let (mut meta, meta_len) = open(meta_file)?;
    let (mut index, index_len) = open(index_file)?;
    let mut snaps = Vec::with_capacity(snapshots.len());
    for (name, f) in snapshots {
        let len = f.metadata()?.len();
        snaps.push((name, std::io::BufReader::new(f), len));
    }
    let gen_key = keys.gen_key(header.generation, header.writer);
    let parts = generation::Parts {
        header,
        meta: (&mut meta, meta_len),
        index: (&mut index, index_len),
        packs: &packs,
        snapshots: snaps
            .iter_mut()
            .map(|(n, r, len)| (n.clone(), r as &mut dyn std::io::Read, *len))
            .collect(),
        gc_ack,
    };
    let (mut plain, plain_len) = generation::write(parts, generation::scratch_file(scratch)?)?;
    let (object, len) = match key {
        None => (plain, plain_len),
        Some(k) => {
            use std::io::{Seek, Write};
            plain.seek(std::io::SeekFrom::Start(0))?;
            let mut sealed = generation::scratch_file(scratch)?;
            let mut w = std::io::BufWriter::new(&mut sealed);
            let n =
                k.seal_generation_stream(&mut std::io::BufReader::new(plain), plain_len, &mut w)?;
            w.flush()?;
            drop(w);
            (sealed, n)
        }
    };
    let journal = scratch.join(MULTIPART_JOURNAL);
    // Uploads a killed daemon left open (their parts cost storage and nothing reads them).
    if let Err(e) = client.abort_abandoned(&journal) {
        tracing::warn!("cannot abort an unfinished multipart upload yet: {e}");
    }
    client.put_file(&gen_key, &object, len, &journal)?;
    Ok(len)
}

/// The remote side of a mounted (writable) volume.
pub struct RemoteVolume {
    dir: PathBuf,
    packs: Arc<PackStore>,
    remote: Arc<RemotePacks>,
    /// One upload pass at a time (the background thread and a publication).
    uploading: Mutex<()>,
    /// One publication at a time.
    publishing: Mutex<PublishState>,
    /// Durable epoch of the filesystem at the last publication (nothing new: no generation).
    published_epoch: Mutex<Option<u64>>,
    /// (generation, unix time) of the last publication, for `status` (which must not wait
    /// for a publication in progress: the uploader calls it).
    published: Mutex<(u64, u64)>,
    fenced: Mutex<Option<String>>,
    /// The lease could not be renewed (the object store unreachable): nothing is published
    /// until it is taken again.
    lapsed: std::sync::atomic::AtomicBool,
    /// Takes a lapsed lease again (set by the daemon that keeps the lease).
    retaker: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    last_error: Mutex<Option<String>>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl RemoteVolume {
    pub fn new(dir: &Path, packs: Arc<PackStore>, remote: Arc<RemotePacks>) -> Result<Self> {
        let state = PublishState::load(dir)?;
        Ok(RemoteVolume {
            dir: dir.to_path_buf(),
            packs,
            published: Mutex::new((state.generation, state.published_unix)),
            publishing: Mutex::new(state),
            remote,
            uploading: Mutex::new(()),
            published_epoch: Mutex::new(None),
            fenced: Mutex::new(None),
            lapsed: std::sync::atomic::AtomicBool::new(false),
            retaker: std::sync::OnceLock::new(),
            last_error: Mutex::new(None),
        })
    }

    pub fn remote(&self) -> &Arc<RemotePacks> {
        &self.remote
    }

    /// A mount for writing holds the volume now (lease taken, base checked): from here on the
    /// store may hold changes of its own, which no later mount may replace by catching up.
    /// Recorded durably before the first change.
    pub fn mounted_for_writing(&self) -> Result<()> {
        let mut state = self.publishing.lock();
        if state.attached_only {
            state.attached_only = false;
            state.save(&self.dir)?;
        }
        Ok(())
    }

    fn client(&self) -> Result<Arc<RemoteStore>> {
        self.remote.client()
    }

    /// Stops all writing to the bucket and the volume (another writer took it over).
    pub fn fence(&self, fs: &Fs, why: String) {
        fs.fence(&why);
        *self.fenced.lock() = Some(why);
    }

    pub fn fenced(&self) -> Option<String> {
        self.fenced.lock().clone()
    }

    pub fn set_lapsed(&self, lapsed: bool) {
        self.lapsed.store(lapsed, Ordering::Relaxed);
    }

    pub fn lapsed(&self) -> bool {
        self.lapsed.load(Ordering::Relaxed)
    }

    /// How a lapsed lease is taken again (before a publication that finds it lapsed).
    pub fn set_retaker(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.retaker.set(f);
    }

    /// Sealed packs with a local file and not uploaded: (id, durable length).
    fn to_upload(&self) -> Result<Vec<(u64, u64)>> {
        Ok(self
            .packs
            .index()
            .packs()?
            .into_iter()
            .filter(|(id, r)| r.state == PackState::Sealed && !self.remote.table.contains(*id))
            .map(|(id, r)| (id, r.len))
            .collect())
    }

    /// Uploads one sealed pack and records it. Returns the bytes uploaded.
    fn upload_one(&self, client: &RemoteStore, id: u64, len: u64) -> Result<u64> {
        let bytes = self.packs.read_pack(id, 0..len)?;
        let hash = pack_hash(&bytes);
        let key = self.remote.keys().pack(id, &hash);
        client.put(&key, bytes)?;
        self.remote.table.add(PackRef::own(id, len, hash))?;
        self.remote.uploads_failing.store(false, Ordering::Relaxed);
        self.remote.progress.1.notify_all();
        tracing::debug!(pack = %key, len, "uploaded");
        Ok(len)
    }

    /// Uploads every sealed pack not in the bucket yet (`UPLOADERS` at a time). Returns
    /// (packs, bytes) uploaded.
    pub fn upload_pending(&self) -> Result<(u64, u64)> {
        let _one = self.uploading.lock();
        let todo = self.to_upload()?;
        if todo.is_empty() {
            return Ok((0, 0));
        }
        let client = self.client()?;
        let next = std::sync::atomic::AtomicUsize::new(0);
        let done = std::sync::atomic::AtomicU64::new(0);
        let first_err: Mutex<Option<FsError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..UPLOADERS.min(todo.len()) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(id, len)) = todo.get(i) else { break };
                        if first_err.lock().as_ref().is_some_and(is_remote_error) {
                            break;
                        }
                        match self.upload_one(&client, id, len) {
                            Ok(n) => {
                                done.fetch_add(n, Ordering::Relaxed);
                            }
                            // A pack that cannot be read locally does not hold up the others
                            // (fsck names it); the object store failing stops the pass.
                            Err(e) => {
                                if !is_remote_error(&e) {
                                    tracing::error!(pack = id, "cannot upload: {e}");
                                }
                                first_err.lock().get_or_insert(e);
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = first_err.into_inner() {
            return Err(e);
        }
        Ok((todo.len() as u64, done.into_inner()))
    }

    /// Deletes local copies of uploaded packs, oldest first, while the local packs take more
    /// than the cache budget. Returns bytes freed.
    pub fn evict(&self) -> Result<u64> {
        let budget = self.remote.pack_budget();
        let mut local: Vec<(u64, u64)> = Vec::new();
        let mut total = 0;
        for (id, r) in self.packs.index().packs()? {
            if r.state == PackState::Retired {
                continue;
            }
            if let Ok(m) = std::fs::metadata(self.packs.pack_path(id)) {
                total += m.len();
                local.push((id, m.len().max(r.len)));
            }
        }
        let mut freed = 0;
        for (id, _) in local {
            if total <= budget {
                break;
            }
            let n = self.packs.evict(id)?;
            total -= n.min(total);
            freed += n;
        }
        Ok(freed)
    }

    /// Figures for `stats`, also written to `STORE/remote/status.json`.
    pub fn status(&self) -> Result<RemoteStatus> {
        let mut s = RemoteStatus {
            url: self.remote.config().url.clone(),
            volume: self.remote.config().volume.clone(),
            cached_range_bytes: self.remote.cached_range_bytes(),
            fenced: self.fenced(),
            last_error: self.last_error.lock().clone(),
            ..RemoteStatus::default()
        };
        (s.generation, s.published_unix) = *self.published.lock();
        let open = self.packs.index().packs()?;
        for (id, r) in open {
            if r.state == PackState::Retired {
                continue;
            }
            if id >= crate::store::pack_store::FOREIGN_PACK_BASE {
                s.shared_packs += (r.live_records > 0) as u64;
                continue;
            }
            let local = self.packs.is_local(id);
            if self.remote.table.contains(id) {
                s.uploaded_packs += 1;
                s.local_packs += local as u64;
            } else if local {
                s.not_uploaded_packs += 1;
                s.not_uploaded_bytes +=
                    std::fs::metadata(self.packs.pack_path(id)).map_or(r.len, |m| m.len());
                s.local_packs += 1;
            }
        }
        Ok(s)
    }

    pub fn write_status(&self) {
        match self.status() {
            Ok(s) => {
                let json = serde_json::to_vec_pretty(&s).unwrap_or_default();
                let dir = self.dir.join(super::config::STATE_DIR);
                let tmp = dir.join(format!(".{STATUS}.tmp"));
                if std::fs::write(&tmp, json)
                    .and_then(|()| std::fs::rename(&tmp, dir.join(STATUS)))
                    .is_err()
                {
                    tracing::warn!("cannot write {}", dir.join(STATUS).display());
                }
            }
            Err(e) => tracing::warn!("remote status: {e}"),
        }
    }

    /// Waits up to `timeout` for a writer to ask for room; true when one did.
    pub fn wait_for_work(&self, timeout: std::time::Duration) -> bool {
        let mut g = self.remote.progress.0.lock();
        if !*g {
            self.remote.progress.1.wait_for(&mut g, timeout);
        }
        std::mem::take(&mut *g)
    }

    /// One background step: upload what is sealed, evict past the budget, refresh the status.
    /// `writer_waits`: a writer waits for room, so the packs open for appends are sealed
    /// too (they count against the budget and only sealed packs are uploaded). Returns the
    /// bytes evicted (whose mappings the caller's chunk cache should drop).
    pub fn step(&self, writer_waits: bool) -> u64 {
        if writer_waits {
            self.packs.seal_open_packs();
        }
        // Seals recorded in the index (a sync of the packs alone, which any writer may make):
        // a full pack is uploaded at once, not at the next durable point.
        let r = self
            .packs
            .sync()
            .and_then(|()| self.upload_pending())
            .and_then(|_| self.evict());
        let evicted = *r.as_ref().unwrap_or(&0);
        self.remote
            .uploads_failing
            .store(r.is_err(), Ordering::Relaxed);
        self.remote.progress.1.notify_all();
        match r {
            Ok(_) => *self.last_error.lock() = None,
            Err(e) => {
                let msg = e.to_string();
                let mut last = self.last_error.lock();
                if last.as_deref() != Some(&msg) {
                    tracing::warn!("uploading packs: {msg} (retrying)");
                }
                *last = Some(msg);
            }
        }
        self.write_status();
        evicted
    }

    /// Whether the bucket holds a gc mark newer than the last one this store acknowledged
    /// (which then waits for this volume's next publication).
    pub fn gc_mark_waiting(&self) -> bool {
        let acked = self.publishing.lock().gc_ack;
        let Ok(client) = self.client() else {
            return false;
        };
        match client.list(super::config::GC_MARKS) {
            Ok(objs) => objs
                .iter()
                .filter_map(|o| super::config::parse_epoch(&o.key))
                .any(|e| e > acked),
            Err(_) => false,
        }
    }

    /// Makes everything written so far part of a new generation in the bucket: packs first,
    /// then the metadata. Returns when the generation is stored (or failed).
    pub fn publish(&self, fs: &Fs) -> Result<PublishReport> {
        let started = Instant::now();
        let mut state = self.publishing.lock();
        if let Some(why) = self.fenced() {
            return Err(FsError::Refused(format!(
                "this store no longer writes the volume: {why}"
            )));
        }
        if self.lapsed()
            && let Some(retake) = self.retaker.get()
        {
            retake();
        }
        if self.lapsed() {
            return Err(FsError::Refused(
                "the lease of the volume lapsed while the object store was unreachable; the \
                 data is safe in the local store and is published once the lease is taken again"
                    .into(),
            ));
        }
        let client = self.client()?;
        // Bucket gc marks first: from here on no chunk is newly placed in a pack they list,
        // and every placement made before is in the index copied below, so this generation
        // may acknowledge them (docs/design.md, "Shared dedup and gc").
        let gc_ack = self.remote.install_marks()?;
        // What the other volumes published since (shared dedup), if the bucket answers; after
        // the marks, so that a chunk known in a pack just condemned (its volume compacted it)
        // moves to where that volume keeps it now.
        if let Err(e) = self.remote.refresh_shared() {
            tracing::warn!("cannot refresh the shared chunk index: {e}");
        }
        // Everything so far into sealed, durable packs.
        self.packs.seal_open_packs();
        fs.sync_fs()?;
        if *self.published_epoch.lock() == Some(fs.durable_epoch())
            && self.to_upload()?.is_empty()
            && gc_ack == state.gc_ack
        {
            return Ok(PublishReport {
                generation: state.generation,
                unchanged: true,
                ..PublishReport::default()
            });
        }
        let work = state_dir(&self.dir)?;
        let meta_tmp = work.join(".gen-meta.redb");
        let index_tmp = work.join(".gen-index.redb");
        for p in [&meta_tmp, &index_tmp] {
            let _ = std::fs::remove_file(p);
        }
        let result = (|| {
            let mut attempts = 0;
            let (meta_tx, named, snapshot_files, epoch) = loop {
                // The snapshot files present at the durable point hold their chunks in that
                // index; opened there, so a delete afterwards cannot take their bytes away.
                let (meta_tx, (index_tx, snapshot_files, epoch)) =
                    fs.durable_snapshot_with(|| {
                        Ok((
                            self.packs.index().begin_read()?,
                            open_snapshot_files(&self.dir)?,
                            // The epoch of this durable point: unchanged at the next
                            // publication if nothing was written meanwhile.
                            fs.durable_epoch(),
                        ))
                    })?;
                // Packs a writer opened since the seal above hold records the snapshot may
                // name: sealed now, so that they can be uploaded whole.
                self.packs.seal_open_packs();
                self.packs.sync()?;
                let _ = std::fs::remove_file(&index_tmp);
                let named = PackIndex::copy_snapshot(&index_tx, &index_tmp)?;
                drop(index_tx);
                // A pack still open now is one compaction writes (`dedupfs gc`): it cannot be
                // uploaded whole yet. Wait for that compaction to end and take the snapshot
                // again (the lock is taken with no other held: gc holds the filesystem's).
                let states: std::collections::HashMap<u64, PackState> = self
                    .packs
                    .index()
                    .packs()?
                    .into_iter()
                    .map(|(id, r)| (id, r.state))
                    .collect();
                let open = named
                    .iter()
                    .find(|(id, r)| r.live_records > 0 && states.get(id) == Some(&PackState::Open))
                    .map(|(id, _)| *id);
                let Some(open) = open else {
                    break (meta_tx, named, snapshot_files, epoch);
                };
                attempts += 1;
                let still_open = || {
                    self.packs.index().packs().is_ok_and(|p| {
                        p.iter()
                            .any(|(id, r)| *id == open && r.state == PackState::Open)
                    })
                };
                if !self.packs.compaction_busy() && still_open() {
                    // Nothing writes it: compaction seals its pack on every exit.
                    return Err(FsError::Corrupt(format!(
                        "pack {open:016x} is named by the index but is still open and no \
                         compaction writes it: remount the volume (opening it seals the pack)"
                    )));
                }
                if attempts > 20 {
                    return Err(FsError::Refused(
                        "a compaction (dedupfs gc) keeps writing packs: publish again later".into(),
                    ));
                }
                drop((meta_tx, snapshot_files));
                drop(self.packs.compaction_lock());
            };
            MetaDb::copy_to(&meta_tx, &meta_tmp)?;
            drop(meta_tx);
            let (packs_uploaded, bytes_uploaded) = self.upload_pending()?;
            let mut refs = Vec::with_capacity(named.len());
            // Packs no chunk lives in are not named: `gc-bucket` may delete them.
            for (id, _) in named.iter().filter(|(_, r)| r.live_records > 0) {
                let r = self.remote.table.get(*id).ok_or_else(|| {
                    FsError::Corrupt(format!(
                        "pack {id:016x} is named by the index but was not uploaded"
                    ))
                })?;
                refs.push(r);
            }
            // Fencing: nobody else may have published since the generation we build on.
            let keys = self.remote.keys();
            let me = self.remote.config().writer;
            let (base, next) = match check_head(&client, keys, &state, me)? {
                Ok(b) => b,
                Err(why) => {
                    self.fence(fs, why.clone());
                    return Err(FsError::Refused(why));
                }
            };
            let header = Header {
                generation: next,
                writer: me,
                parent: base,
                created_ns: now_ns(),
            };
            let metadata_bytes = put_generation(
                &client,
                keys,
                header.clone(),
                &meta_tmp,
                &index_tmp,
                refs,
                snapshot_files,
                gc_ack,
                self.packs.key(),
                &work,
            )?;
            // A writer that published the same number at the same time: the lower writer id
            // wins, for every reader; the loser stops. (A tie this listing misses is caught by
            // the head check of the next publication.)
            let gens = list_generations(&client, keys)?;
            if let Some((g, w, _)) = gens.iter().find(|(_, _, k)| !state.skipped.contains(k))
                && (*g, *w) != (header.generation, me)
            {
                let why = format!(
                    "another writer ({w:016x}) published generation {g} at the same time as this \
                     store published {}, and wins: this store's generation is ignored",
                    header.generation
                );
                self.fence(fs, why.clone());
                return Err(FsError::Refused(why));
            }
            let report = PublishReport {
                generation: header.generation,
                unchanged: false,
                packs_uploaded,
                bytes_uploaded,
                metadata_bytes,
                elapsed_ms: 0,
            };
            Ok((report, epoch))
        })();
        for p in [&meta_tmp, &index_tmp] {
            let _ = std::fs::remove_file(p);
        }
        let (mut report, epoch) = result?;
        state.generation = report.generation;
        state.writer = self.remote.config().writer;
        state.published_unix = now_unix();
        state.gc_ack = gc_ack;
        *self.published.lock() = (state.generation, state.published_unix);
        state.save(&self.dir)?;
        *self.published_epoch.lock() = Some(epoch);
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            generation = report.generation,
            packs = report.packs_uploaded,
            bytes = report.bytes_uploaded,
            metadata = report.metadata_bytes,
            ms = report.elapsed_ms,
            "published"
        );
        drop(state);
        self.write_status();
        Ok(report)
    }
}

/// Finished snapshot files of the store (`STORE/snapshots/*.redb`), by name, opened.
fn open_snapshot_files(dir: &Path) -> Result<Vec<(String, std::fs::File)>> {
    let sdir = dir.join("snapshots");
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&sdir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".redb") {
            continue;
        }
        out.push((name, std::fs::File::open(e.path())?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
