//! A remote volume's local configuration (`STORE/remote.json`) and its keys in the bucket.
//!
//! ```text
//! STORE/remote.json                 this file: where the volume lives, its ids, cache size
//! STORE/remote/packs.log            packs uploaded: "<pack id hex> <len> <hash hex>" per line
//! STORE/remote/state.json           the newest generation this store published or attached
//! STORE/remote/status.json          upload backlog, for `stats` (published by the daemon)
//! STORE/remote/cache/               byte ranges of evicted packs (range_cache.rs)
//!
//! PREFIX/volumes/NAME/volume.json   the volume: id, created, by whom
//! PREFIX/volumes/NAME/gens/GEN-WRITER  metadata generation GEN (16 hex) by WRITER (16 hex)
//! PREFIX/volumes/NAME/lease         the writer's lease (lease.rs)
//! PREFIX/volumes/NAME/readers/GEN-WRITER-SESSION  a read-only mount's hold on a generation
//!                                   (readers.rs)
//! PREFIX/packs/VOLID/ID-HASH        pack ID (16 hex) of volume VOLID, HASH = its blake3
//!                                   (first 16 bytes, hex): immutable, content-named; other
//!                                   volumes under the prefix may name it (shared dedup)
//! PREFIX/gc/marks/EPOCH             a bucket gc mark: packs no head named (gc.rs)
//! PREFIX/gc/swept/EPOCH             what the sweep of that mark deleted
//! STORE/remote/shared.redb          chunks of the other volumes, and the marks installed
//! ```
//!
//! Credentials are never stored: they come from the environment at every run.

use crate::error::{FsError, RemoteError, Result};
use crate::store::remote::{RemoteConfig, RemoteStore};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "remote.json";
pub const STATE_DIR: &str = "remote";
const FORMAT: u32 = 1;
/// Default local cache (`--cache-disk-gib`): packs not uploaded yet, uploaded packs kept, and
/// ranges of evicted packs.
pub const DEFAULT_CACHE_BYTES: u64 = 10 << 30;
/// Default interval between automatic publications of the metadata while it changes.
pub const DEFAULT_PUBLISH_SECS: u64 = 300;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeConfig {
    pub format: u32,
    /// `s3://BUCKET/PREFIX`.
    pub url: String,
    /// `--endpoint` given at init or attach; `AWS_ENDPOINT_URL` otherwise.
    pub endpoint: Option<String>,
    /// The volume's name under the prefix.
    pub volume: String,
    /// Random id of the volume (names its packs), chosen at init.
    pub volume_id: String,
    /// Random id of this store directory: the writer of its generations and the session of
    /// its lease. A new one for every `init` or `attach`.
    pub writer: u64,
    /// Local bytes the cache may take (packs and ranges).
    pub cache_bytes: u64,
    /// Seconds between automatic publications while the metadata changes (0: only at
    /// `dedupfs sync` and unmount).
    pub publish_secs: u64,
    /// Encrypted volume (`--encrypt`): the key file's absolute path (never the key), read at
    /// every open; `DEDUPFS_KEY_FILE` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// ... and the key's id (hex), which the key read must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

impl VolumeConfig {
    pub fn new(url: &str, endpoint: Option<String>, volume: &str, cache_bytes: u64) -> Self {
        VolumeConfig {
            format: FORMAT,
            url: url.to_string(),
            endpoint,
            volume: volume.to_string(),
            volume_id: hex16(random_u64()),
            writer: random_u64(),
            cache_bytes,
            publish_secs: DEFAULT_PUBLISH_SECS,
            key_file: None,
            key_id: None,
        }
    }

    /// The volume key of an encrypted volume (`None`: not encrypted): from `DEDUPFS_KEY_FILE`
    /// or the recorded file, refused unless its id is the volume's.
    pub fn load_key(&self) -> Result<Option<crate::crypto::Key>> {
        let Some(id) = &self.key_id else {
            return Ok(None);
        };
        let path = self.key_file.clone().unwrap_or_default();
        crate::crypto::Key::load_for_volume(&path, id).map(Some)
    }

    /// The config of the store at `dir`; `None` for a local volume.
    pub fn load(dir: &Path) -> Result<Option<VolumeConfig>> {
        let raw = match fs::read(dir.join(CONFIG_FILE)) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let c: VolumeConfig = serde_json::from_slice(&raw)
            .map_err(|e| FsError::Corrupt(format!("{}: {e}", dir.join(CONFIG_FILE).display())))?;
        if c.format != FORMAT {
            return Err(FsError::Corrupt(format!(
                "{}: remote volume format {} is not supported by this dedupfs ({FORMAT})",
                dir.join(CONFIG_FILE).display(),
                c.format
            )));
        }
        Ok(Some(c))
    }

    /// Writes the config durably (temporary file, rename, directory fsync).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_durably(dir, CONFIG_FILE, &json)
    }

    /// The client settings: endpoint and credentials from the environment, `--endpoint` first.
    pub fn client_config(&self) -> Result<RemoteConfig, RemoteError> {
        let mut c = RemoteConfig::from_env(&self.url)?;
        if let Some(e) = &self.endpoint {
            c.endpoint = Some(e.clone());
        }
        Ok(c)
    }

    /// A client of the bucket (no request made).
    pub fn client(&self) -> Result<RemoteStore, RemoteError> {
        RemoteStore::new(&self.client_config()?)
    }

    pub fn keys(&self) -> Keys {
        Keys {
            volume: self.volume.clone(),
            volume_id: self.volume_id.clone(),
        }
    }
}

/// Object keys of one volume (relative to the URL's prefix).
#[derive(Clone, Debug)]
pub struct Keys {
    volume: String,
    volume_id: String,
}

impl Keys {
    /// The keys of volume `volume` (its id is needed only for its packs).
    pub fn for_volume(volume: &str, volume_id: &str) -> Keys {
        Keys {
            volume: volume.to_string(),
            volume_id: volume_id.to_string(),
        }
    }
    pub fn volume_dir(&self) -> String {
        format!("volumes/{}", self.volume)
    }
    pub fn volume_json(&self) -> String {
        format!("volumes/{}/volume.json", self.volume)
    }
    pub fn gens(&self) -> String {
        format!("volumes/{}/gens", self.volume)
    }
    pub fn gen_key(&self, generation: u64, writer: u64) -> String {
        format!("{}/{}", self.gens(), gen_name(generation, writer))
    }
    pub fn lease(&self) -> String {
        format!("volumes/{}/lease", self.volume)
    }
    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.volume
    }
    /// Where read-only mounts hold the generations they serve (readers.rs).
    pub fn readers(&self) -> String {
        format!("volumes/{}/readers", self.volume)
    }
    pub fn pack(&self, id: u64, hash: &[u8; 16]) -> String {
        format!("packs/{}/{id:016x}-{}", self.volume_id, hex(hash))
    }
    /// The object of a pack this volume names: its own, or another volume's (shared dedup).
    pub fn pack_of(&self, p: &super::generation::PackRef) -> String {
        match p.origin {
            None => self.pack(p.id, &p.hash),
            Some(o) => foreign_pack_key(o, &p.hash),
        }
    }
    /// The volume's id as a number (it names the volume's packs).
    pub fn volume_id(&self) -> u64 {
        u64::from_str_radix(&self.volume_id, 16).unwrap_or(0)
    }
}

/// The object of pack `o.pack` of volume `o.volume`.
pub fn foreign_pack_key(o: super::generation::Origin, hash: &[u8; 16]) -> String {
    format!("packs/{:016x}/{:016x}-{}", o.volume, o.pack, hex(hash))
}

/// (volume, pack, hash) of a pack object's key `packs/VOLID/ID-HASH`.
pub fn parse_pack_key(key: &str) -> Option<(u64, u64, [u8; 16])> {
    let mut it = key.rsplit('/');
    let name = it.next()?;
    let vol = it.next()?;
    let (id, h) = name.split_once('-')?;
    if vol.len() != 16 || id.len() != 16 || h.len() != 32 {
        return None;
    }
    let mut hash = [0u8; 16];
    for (i, b) in hash.iter_mut().enumerate() {
        *b = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((
        u64::from_str_radix(vol, 16).ok()?,
        u64::from_str_radix(id, 16).ok()?,
        hash,
    ))
}

/// Bucket gc marks (`gc/marks/EPOCH`) and the records of finished sweeps (`gc/swept/EPOCH`).
pub const GC_MARKS: &str = "gc/marks";
pub const GC_SWEPT: &str = "gc/swept";

pub fn gc_mark_key(epoch: u64) -> String {
    format!("{GC_MARKS}/{epoch:016x}")
}

pub fn gc_swept_key(epoch: u64) -> String {
    format!("{GC_SWEPT}/{epoch:016x}")
}

/// The epoch of a key ending in a 16-hex-digit number.
pub fn parse_epoch(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?;
    (name.len() == 16)
        .then(|| u64::from_str_radix(name, 16).ok())
        .flatten()
}

/// `GEN-WRITER` of a generation object.
pub fn gen_name(generation: u64, writer: u64) -> String {
    format!("{generation:016x}-{writer:016x}")
}

/// (generation, writer) of a key ending in `GEN-WRITER`.
pub fn parse_gen_name(key: &str) -> Option<(u64, u64)> {
    let name = key.rsplit('/').next()?;
    let (g, w) = name.split_once('-')?;
    if g.len() != 16 || w.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(g, 16).ok()?,
        u64::from_str_radix(w, 16).ok()?,
    ))
}

/// What the bucket keeps of a volume besides its generations: its identity.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub format: u32,
    pub volume_id: String,
    pub created_unix: u64,
    pub created_by: String,
    /// Chunking and pack settings are in the metadata; the codec in the index.
    pub note: String,
    /// Encrypted volume: the id (hex) of its key. Shared dedup merges only volumes with the
    /// same key id (a key is a dedup domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

impl VolumeInfo {
    pub fn new(volume_id: &str, created_by: &str) -> Self {
        VolumeInfo {
            format: FORMAT,
            volume_id: volume_id.to_string(),
            created_unix: now_unix(),
            created_by: created_by.to_string(),
            note: "a dedupfs remote volume: `dedupfs attach STORE --remote URL --volume NAME`"
                .into(),
            key_id: None,
        }
    }
}

/// The local state directory (`STORE/remote`), created when missing.
pub fn state_dir(dir: &Path) -> Result<PathBuf> {
    let d = dir.join(STATE_DIR);
    if !d.is_dir() {
        fs::create_dir_all(&d)?;
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(d)
}

/// Writes `name` in `dir` atomically and durably.
pub fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    write_durably_with(dir, name, |f| {
        f.write_all(bytes)?;
        Ok(())
    })
}

/// [`write_durably`] of what `fill` writes (through a buffer) into the new file.
pub fn write_durably_with<T>(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut dyn std::io::Write) -> Result<T>,
) -> Result<T> {
    use std::io::Write;
    let tmp = dir.join(format!(".{name}.tmp"));
    let out = (|| {
        let f = fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &f);
        let out = fill(&mut w)?;
        w.flush()?;
        drop(w);
        f.sync_all()?;
        Ok(out)
    })();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()?;
    Ok(out)
}

pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).is_err() {
        // No getrandom: the clock and pid still make a collision unlikely.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return t ^ ((std::process::id() as u64) << 32);
    }
    u64::from_le_bytes(b)
}

pub fn hex16(v: u64) -> String {
    format!("{v:016x}")
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `host` as the lease and messages name this machine.
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}
