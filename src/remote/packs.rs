//! The packs of a remote volume in its bucket: which are uploaded (the pack table, kept in
//! `STORE/remote/packs.log`), and reading the ones whose local files were evicted (through
//! the range cache). This is the pack store's [`PackSource`].
//!
//! `packs.log` is append-only, one line per uploaded pack, `<id: 16 hex> <len> <hash: 32 hex>`,
//! with a fourth field `<origin volume: 16 hex>:<origin pack: 16 hex>` for a pack another
//! volume uploaded that this one names (shared dedup: never uploaded from here), fsynced before the upload counts (before any generation naming the pack is published, and
//! before the local file may be evicted). A torn last line (a crash while appending) is
//! ignored: that pack is uploaded again, under the same content-named key.

use super::config::{Keys, VolumeConfig, hex, state_dir};
use super::generation::{Origin, PackRef};
use super::range_cache::RangeCache;
use super::shared::SharedIndex;
use crate::error::{FsError, Result};
use crate::hash::ChunkId;
use crate::store::ChunkBytes;
use crate::store::pack_index::Loc;
use crate::store::pack_store::PackSource;
use crate::store::remote::RemoteStore;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, OnceLock};

const LOG: &str = "packs.log";
const CACHE_DIR: &str = "cache";
/// Share of the local cache budget that ranges of evicted packs may take (the rest is for
/// packs kept whole), at least `MIN_RANGE_CACHE`.
const RANGE_SHARE: u64 = 4;
const MIN_RANGE_CACHE: u64 = 64 << 20;
/// Retries of a read for a waiting reader, and the time after which none starts.
const READ_RETRIES: usize = 2;
const READ_RETRY_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// The uploaded packs, persisted in `packs.log`.
pub struct PackTable {
    log: Mutex<File>,
    packs: RwLock<HashMap<u64, PackRef>>,
    /// The packs of other volumes this one names, by where they are and their content (a
    /// pack number reused with other bytes is another pack).
    foreign: RwLock<HashMap<(Origin, [u8; 16]), u64>>,
}

use crate::store::pack_store::FOREIGN_PACK_BASE as FOREIGN_BASE;

fn parse_line(line: &str) -> Option<PackRef> {
    let mut it = line.split(' ');
    let id = u64::from_str_radix(it.next()?, 16).ok()?;
    let len = it.next()?.parse().ok()?;
    let h = it.next()?;
    let origin = match it.next() {
        None => None,
        Some(o) => {
            let (v, p) = o.split_once(':')?;
            // Whole fields only: a torn line must not parse as another pack.
            if v.len() != 16 || p.len() != 16 {
                return None;
            }
            Some(Origin {
                volume: u64::from_str_radix(v, 16).ok()?,
                pack: u64::from_str_radix(p, 16).ok()?,
            })
        }
    };
    if h.len() != 32 || it.next().is_some() {
        return None;
    }
    let mut hash = [0u8; 16];
    for (i, b) in hash.iter_mut().enumerate() {
        *b = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(PackRef {
        id,
        len,
        hash,
        origin,
    })
}

fn line_of(p: &PackRef) -> String {
    match p.origin {
        None => format!("{:016x} {} {}\n", p.id, p.len, hex(&p.hash)),
        Some(o) => format!(
            "{:016x} {} {} {:016x}:{:016x}\n",
            p.id,
            p.len,
            hex(&p.hash),
            o.volume,
            o.pack
        ),
    }
}

impl PackTable {
    pub fn open(store_dir: &Path) -> Result<PackTable> {
        let path = state_dir(store_dir)?.join(LOG);
        let mut packs = HashMap::new();
        match fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.split_inclusive('\n') {
                    // Only whole lines: a torn last one is a pack to upload again.
                    if let Some(p) = line.strip_suffix('\n').and_then(parse_line) {
                        packs.insert(p.id, p);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let log = OpenOptions::new().create(true).append(true).open(&path)?;
        // A torn tail would glue itself to the next line: end it.
        if fs::metadata(&path)?.len() > 0 && !fs::read(&path)?.ends_with(b"\n") {
            (&log).write_all(b"\n")?;
        }
        let foreign = packs
            .values()
            .filter_map(|p| p.origin.map(|o| ((o, p.hash), p.id)))
            .collect();
        Ok(PackTable {
            log: Mutex::new(log),
            packs: RwLock::new(packs),
            foreign: RwLock::new(foreign),
        })
    }

    /// The number under which this store names another volume's pack `origin`, recorded
    /// durably the first time (before any index entry can name it).
    pub fn foreign_id(&self, origin: Origin, len: u64, hash: [u8; 16]) -> Result<u64> {
        if let Some(id) = self.foreign.read().get(&(origin, hash)) {
            return Ok(*id);
        }
        let log = self.log.lock();
        if let Some(id) = self.foreign.read().get(&(origin, hash)) {
            return Ok(*id);
        }
        let id = self
            .packs
            .read()
            .keys()
            .copied()
            .filter(|&id| id >= FOREIGN_BASE)
            .max()
            .map_or(FOREIGN_BASE, |m| m + 1);
        let p = PackRef {
            id,
            len,
            hash,
            origin: Some(origin),
        };
        (&*log).write_all(line_of(&p).as_bytes())?;
        log.sync_data()?;
        self.packs.write().insert(id, p);
        self.foreign.write().insert((origin, hash), id);
        Ok(id)
    }

    /// Rewrites the table to exactly `packs` (attach), durably.
    pub fn replace(store_dir: &Path, packs: &[PackRef]) -> Result<()> {
        let text: String = packs.iter().map(line_of).collect();
        super::config::write_durably(&state_dir(store_dir)?, LOG, text.as_bytes())
    }

    /// Every pack in the table.
    pub fn all(&self) -> Vec<PackRef> {
        self.packs.read().values().copied().collect()
    }

    pub fn get(&self, id: u64) -> Option<PackRef> {
        self.packs.read().get(&id).copied()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.packs.read().contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.packs.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records an upload, durably.
    pub fn add(&self, p: PackRef) -> Result<()> {
        let log = self.log.lock();
        (&*log).write_all(line_of(&p).as_bytes())?;
        log.sync_data()?;
        self.packs.write().insert(p.id, p);
        if let Some(o) = p.origin {
            self.foreign.write().insert((o, p.hash), p.id);
        }
        Ok(())
    }
}

/// Reads evicted packs from the bucket; the pack store's source.
pub struct RemotePacks {
    config: VolumeConfig,
    keys: Keys,
    pub table: PackTable,
    cache: RangeCache,
    /// Made on first use: offline maintenance of a store whose packs are all local needs no
    /// credentials.
    client: OnceLock<std::result::Result<Arc<RemoteStore>, String>>,
    /// For reads on behalf of a reader waiting in read(2): fewer retries, so that a dead
    /// object store costs a reader seconds, not the uploader's minute and a half.
    read_client: OnceLock<std::result::Result<Arc<RemoteStore>, String>>,
    /// The last upload pass failed: writers over the backlog limit are refused, not held.
    pub uploads_failing: std::sync::atomic::AtomicBool,
    /// Wakes the uploader (a writer waits for room: `true`) and the waiting writers (a pack
    /// was uploaded).
    pub progress: (Mutex<bool>, parking_lot::Condvar),
    /// Chunks of the other volumes under the prefix (shared dedup): opened by a writable
    /// mount only.
    shared: OnceLock<SharedIndex>,
    dir: std::path::PathBuf,
    /// The volume key of an encrypted volume: other volumes' generations are read with it,
    /// and only volumes with the same key are shared with.
    key: Option<crate::crypto::Key>,
}

impl RemotePacks {
    pub fn open(
        store_dir: &Path,
        config: &VolumeConfig,
        key: Option<crate::crypto::Key>,
    ) -> Result<RemotePacks> {
        let range_limit = (config.cache_bytes / RANGE_SHARE).max(MIN_RANGE_CACHE);
        Ok(RemotePacks {
            keys: config.keys(),
            config: config.clone(),
            table: PackTable::open(store_dir)?,
            cache: RangeCache::open(&state_dir(store_dir)?.join(CACHE_DIR), range_limit)?,
            client: OnceLock::new(),
            read_client: OnceLock::new(),
            uploads_failing: std::sync::atomic::AtomicBool::new(false),
            progress: (Mutex::new(false), parking_lot::Condvar::new()),
            shared: OnceLock::new(),
            dir: store_dir.to_path_buf(),
            key,
        })
    }

    /// Opens the shared index (a writable mount): from now on new chunks that another volume
    /// has published are named in its packs instead of being stored again.
    pub fn enable_sharing(&self) -> Result<()> {
        if self.shared.get().is_none() {
            let s = SharedIndex::open(&state_dir(&self.dir)?)?;
            let _ = self.shared.set(s);
        }
        Ok(())
    }

    pub fn shared(&self) -> Option<&SharedIndex> {
        self.shared.get()
    }

    /// Installs new bucket gc marks (returns the newest installed; 0 without sharing or
    /// marks).
    pub fn install_marks(&self) -> Result<u64> {
        match self.shared() {
            Some(s) => s.install_marks(&*self.client()?),
            None => Ok(0),
        }
    }

    /// Merges the chunks other volumes published since the last refresh.
    pub fn refresh_shared(&self) -> Result<super::shared::RefreshReport> {
        match self.shared() {
            Some(s) => s.refresh(
                &*self.client()?,
                self.keys.volume_id(),
                &state_dir(&self.dir)?,
                self.key.as_ref(),
            ),
            None => Ok(Default::default()),
        }
    }

    pub fn config(&self) -> &VolumeConfig {
        &self.config
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The bucket's client, made once (no request is made here).
    pub fn client(&self) -> Result<Arc<RemoteStore>> {
        self.lazy_client(&self.client, |_| {})
    }

    fn read_client(&self) -> Result<Arc<RemoteStore>> {
        self.lazy_client(&self.read_client, |cfg| {
            cfg.max_retries = READ_RETRIES;
            cfg.retry_timeout = READ_RETRY_TIME;
        })
    }

    /// The client in `cell`, made on first use with the volume's settings changed by `tweak`.
    fn lazy_client(
        &self,
        cell: &OnceLock<std::result::Result<Arc<RemoteStore>, String>>,
        tweak: impl FnOnce(&mut crate::store::remote::RemoteConfig),
    ) -> Result<Arc<RemoteStore>> {
        let c = cell.get_or_init(|| {
            let mut cfg = self.config.client_config().map_err(|e| e.to_string())?;
            tweak(&mut cfg);
            RemoteStore::new(&cfg)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        c.clone().map_err(|e| {
            FsError::Refused(format!(
                "cannot use the object store of this volume ({}): {e}",
                self.config.url
            ))
        })
    }

    /// Bytes `range` of pack `pack` through the range cache (`again`: its blocks fetched anew).
    fn read_through_cache(&self, pack: u64, range: Range<u64>, again: bool) -> Result<ChunkBytes> {
        let p = self.table.get(pack).ok_or_else(|| {
            FsError::Corrupt(format!("pack {pack:016x} is neither local nor uploaded"))
        })?;
        let key = self.keys.pack_of(&p);
        let fetch = |r: Range<u64>| -> Result<Vec<u8>> {
            let client = self.read_client()?;
            client.get_range(&key, r).map_err(|e| {
                tracing::error!(pack = %key, "cannot read from the object store: {e}");
                FsError::from(e)
            })
        };
        if again {
            self.cache.reread(pack, p.len, range, &fetch)
        } else {
            self.cache.read(pack, p.len, range, &fetch)
        }
    }

    /// Bytes of ranges of evicted packs cached locally.
    pub fn cached_range_bytes(&self) -> u64 {
        self.cache.bytes()
    }

    /// Bytes the range cache keeps at most: the rest of the budget is for whole packs.
    pub fn pack_budget(&self) -> u64 {
        self.config
            .cache_bytes
            .saturating_sub((self.config.cache_bytes / RANGE_SHARE).max(MIN_RANGE_CACHE))
    }
}

impl PackSource for RemotePacks {
    fn has(&self, pack: u64) -> bool {
        self.table.contains(pack)
    }

    fn share(&self, id: &ChunkId, record: &mut dyn FnMut(Loc, u64)) -> Result<bool> {
        let Some(shared) = self.shared() else {
            return Ok(false);
        };
        let found = shared.lookup(id, |c| {
            let pack = self.table.foreign_id(c.origin, c.pack_len, c.pack_hash)?;
            record(Loc { pack, ..c.loc }, c.pack_len);
            Ok(())
        });
        match found {
            Ok(f) => Ok(f.is_some()),
            // A damaged cache of other volumes' chunks costs dedup hits, never data.
            Err(e) => {
                tracing::warn!("shared chunk index: {e}; storing the chunk here");
                Ok(false)
            }
        }
    }

    fn read(&self, pack: u64, range: Range<u64>) -> Result<ChunkBytes> {
        self.read_through_cache(pack, range, false)
    }

    fn reread(&self, pack: u64, range: Range<u64>) -> Result<ChunkBytes> {
        self.read_through_cache(pack, range, true)
    }

    fn packs(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self
            .table
            .packs
            .read()
            .values()
            .map(|p| (p.id, p.len))
            .collect();
        v.sort_unstable();
        v
    }

    fn check(&self, verify: bool) -> Result<Vec<(u64, String)>> {
        let client = self.client()?;
        // Its own packs and those of other volumes it names.
        let prefix = "packs";
        let present: HashMap<String, u64> = client
            .list(prefix)?
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect();
        let mut table: Vec<PackRef> = self.table.packs.read().values().copied().collect();
        table.sort_by_key(|p| p.id);
        let mut problems = Vec::new();
        for p in table {
            let key = self.keys.pack_of(&p);
            match present.get(&key) {
                None => problems.push((p.id, format!("object {key} is missing from the bucket"))),
                Some(&size) if size != p.len => problems.push((
                    p.id,
                    format!("object {key} is {size} bytes, {} were uploaded", p.len),
                )),
                Some(_) if verify => match client.get(&key) {
                    Ok(bytes) if super::sync::pack_hash(&bytes) == p.hash => {}
                    Ok(_) => problems.push((
                        p.id,
                        format!("object {key} is damaged (its bytes do not match its name)"),
                    )),
                    Err(e) => problems.push((p.id, format!("object {key}: {e}"))),
                },
                Some(_) => {}
            }
        }
        Ok(problems)
    }

    fn backlog_limit(&self) -> Option<u64> {
        Some(self.config.cache_bytes)
    }

    fn wait_for_room(&self) -> bool {
        let mut g = self.progress.0.lock();
        *g = true;
        self.progress.1.notify_all();
        self.progress
            .1
            .wait_for(&mut g, std::time::Duration::from_millis(500));
        !self
            .uploads_failing
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}
