//! Making remote volumes (`init --remote`) and local caches of existing ones (`attach`).

use super::config::{VolumeConfig, VolumeInfo, hostname, now_unix, write_durably_with};
use super::generation::{self, Header};
use super::packs::PackTable;
use super::sync::{PublishState, list_generations, put_generation};
use crate::error::{FsError, Result};
use crate::store::remote::RemoteStore;
use std::path::Path;

/// What `init --remote` or `attach` did.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AttachReport {
    pub url: String,
    pub volume: String,
    pub generation: u64,
    /// When that generation was published (its writer's clock, unix seconds).
    pub published_unix: u64,
    pub packs: u64,
    pub snapshots: u64,
    /// Newer generation objects that could not be used (damaged), with the reason.
    pub skipped: Vec<String>,
}

fn who() -> String {
    format!("{} (pid {})", hostname(), std::process::id())
}

/// Names of the volumes under the URL's prefix.
pub fn list_volumes(client: &RemoteStore) -> Result<Vec<String>> {
    let mut names: Vec<String> = client
        .list("volumes")?
        .into_iter()
        .filter_map(|o| {
            let rest = o.key.strip_prefix("volumes/")?;
            let (name, file) = rest.split_once('/')?;
            (file == "volume.json").then(|| name.to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// The identity object of volume `name` under the prefix, and its id as a number.
pub fn volume_info(client: &RemoteStore, name: &str) -> Result<(VolumeInfo, u64)> {
    let key = super::config::Keys::for_volume(name, "").volume_json();
    let info: VolumeInfo = serde_json::from_slice(&client.get(&key)?)
        .map_err(|e| FsError::Corrupt(format!("{key}: {e}")))?;
    let id = u64::from_str_radix(&info.volume_id, 16)
        .map_err(|_| FsError::Corrupt(format!("{key}: volume id {:?}", info.volume_id)))?;
    Ok((info, id))
}

/// Checks a volume name: one path segment of plain characters.
pub fn check_volume_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(FsError::Refused(format!(
            "volume name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

/// After `volume::init` made a local store at `dir`: makes it the first generation of the new
/// volume `config.volume` in the bucket. Refuses a name that exists there.
pub fn init_remote(
    dir: &Path,
    config: &VolumeConfig,
    key: Option<&crate::crypto::Key>,
) -> Result<AttachReport> {
    check_volume_name(&config.volume)?;
    let client = RemoteStore::open(&config.client_config()?)?;
    let keys = config.keys();
    if client.head(&keys.volume_json()).is_ok() || !list_generations(&client, &keys)?.is_empty() {
        return Err(FsError::Refused(format!(
            "volume {:?} exists already in {}: `dedupfs attach STORE --remote {} --volume {}` \
             makes a local cache of it",
            config.volume, config.url, config.url, config.volume
        )));
    }
    let mut info = VolumeInfo::new(&config.volume_id, &who());
    info.key_id = key.map(|k| k.id_hex());
    client.put(
        &keys.volume_json(),
        serde_json::to_vec_pretty(&info).map_err(std::io::Error::other)?,
    )?;
    config.save(dir)?;
    PackTable::replace(dir, &[])?;
    let header = Header {
        generation: 1,
        writer: config.writer,
        parent: 0,
        created_ns: now_unix() * 1_000_000_000,
    };
    // The marks of a bucket gc under way: generation 1 names no pack, and the store installs
    // them before it can place a chunk in another volume's pack, so it acknowledges them.
    let gc_ack = super::shared::SharedIndex::open(&super::config::state_dir(dir)?)?
        .install_marks(&client)?;
    put_generation(
        &client,
        &keys,
        header,
        &dir.join("meta.redb"),
        &dir.join("index.redb"),
        Vec::new(),
        Vec::new(),
        gc_ack,
        key,
        &super::config::state_dir(dir)?,
    )?;
    PublishState {
        generation: 1,
        writer: config.writer,
        skipped: Vec::new(),
        published_unix: now_unix(),
        gc_ack,
        attached_only: false,
    }
    .save(dir)?;
    Ok(AttachReport {
        url: config.url.clone(),
        volume: config.volume.clone(),
        generation: 1,
        published_unix: now_unix(),
        packs: 0,
        snapshots: 0,
        skipped: Vec::new(),
    })
}

/// Makes `dir` (missing or empty) a local cache of the volume at `config.url`: the newest
/// complete generation's metadata, pack index and snapshots; packs are read from the bucket
/// when needed. `config.volume` empty: the only volume under the prefix.
///
/// An encrypted volume needs its key (`key`), checked against the id `volume.json` records
/// before anything is written locally.
pub fn attach(
    dir: &Path,
    mut config: VolumeConfig,
    volume_key: Option<&crate::crypto::Key>,
) -> Result<AttachReport> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        return Err(FsError::Refused(format!(
            "{} exists and is not empty; attach makes a new store directory",
            dir.display()
        )));
    }
    let client = RemoteStore::open(&config.client_config()?)?;
    if config.volume.is_empty() {
        let names = list_volumes(&client)?;
        config.volume = match names.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(FsError::Refused(format!(
                    "there is no dedupfs volume in {}",
                    config.url
                )));
            }
            many => {
                return Err(FsError::Refused(format!(
                    "{} holds several volumes ({}): name one with --volume",
                    config.url,
                    many.join(", ")
                )));
            }
        };
    }
    check_volume_name(&config.volume)?;
    let keys = config.keys();
    let info: VolumeInfo = match client.get(&keys.volume_json()) {
        Ok(raw) => serde_json::from_slice(&raw)
            .map_err(|e| FsError::Corrupt(format!("{}: {e}", keys.volume_json())))?,
        Err(crate::error::RemoteError::NotFound { .. }) => {
            let names = list_volumes(&client).unwrap_or_default();
            return Err(FsError::Refused(format!(
                "there is no volume {:?} in {}{}",
                config.volume,
                config.url,
                if names.is_empty() {
                    String::new()
                } else {
                    format!(" (there is: {})", names.join(", "))
                }
            )));
        }
        Err(e) => return Err(e.into()),
    };
    match (&info.key_id, volume_key) {
        (None, None) => {}
        (Some(id), Some(k)) => k.check_id(id, "the key file given")?,
        (Some(id), None) => {
            return Err(FsError::Refused(format!(
                "volume {:?} is encrypted (key id {id}): attach needs its key, --encrypt KEYFILE",
                config.volume
            )));
        }
        (None, Some(_)) => {
            return Err(FsError::Refused(format!(
                "volume {:?} is not encrypted: attach it without --encrypt",
                config.volume
            )));
        }
    }
    config.key_id = info.key_id.clone();
    config.volume_id = info.volume_id;
    let keys = config.keys();
    let mut skipped = Vec::new();
    let mut skipped_keys = Vec::new();
    let mut found = None;
    // The object is downloaded into the store directory (unnamed files: nothing is left),
    // on the disk that will hold the metadata anyway; a failed attach removes the directory
    // again (the caller's undo).
    std::fs::create_dir_all(dir)?;
    let scratch = dir.to_path_buf();
    for (g, w, key) in list_generations(&client, &keys)? {
        // An object store that does not answer is no damaged generation: attach fails.
        let mut obj = generation::scratch_file(&scratch)?;
        client.get_to(&key, &mut obj)?;
        match generation::open_object(obj, volume_key, &scratch) {
            Ok(found_gen) if found_gen.header.generation == g && found_gen.header.writer == w => {
                found = Some(found_gen);
                break;
            }
            Ok(_) => {
                skipped.push(format!("{key}: its header names another generation"));
                skipped_keys.push(key);
            }
            // A newer format is no damage to skip: refused.
            Err(e @ FsError::Refused(_)) => return Err(e),
            Err(e) => {
                skipped.push(format!("{key}: {e}"));
                skipped_keys.push(key);
            }
        }
    }
    let found_gen = found.ok_or_else(|| {
        FsError::Corrupt(format!(
            "volume {:?} in {} has no usable metadata generation{}",
            config.volume,
            config.url,
            if skipped.is_empty() {
                String::new()
            } else {
                format!(" ({})", skipped.join("; "))
            }
        ))
    })?;
    std::fs::create_dir_all(dir)?;
    std::fs::create_dir_all(dir.join("packs"))?;
    // A new writer id: this store's generations are its own.
    config.writer = super::config::random_u64();
    config.save(dir)?;
    let published_unix = install(dir, &found_gen, skipped_keys)?;
    crate::volume::write_marker(dir)
        .map_err(|e| FsError::Io(std::io::Error::other(e.to_string())))?;
    Ok(AttachReport {
        url: config.url.clone(),
        volume: config.volume.clone(),
        generation: found_gen.header.generation,
        published_unix,
        packs: found_gen.packs.len() as u64,
        snapshots: found_gen.snapshot_names().len() as u64,
        skipped,
    })
}

/// `remote/installing`: the generation an install is bringing the store to, written before
/// the first file is replaced and removed once `state.json` names it. While it names another
/// generation than `state.json`, the store is between two generations: not mounted.
pub const INSTALLING: &str = "installing";

/// Whether an install of another generation than the one `state.json` names was cut short
/// (a finished one whose marker a crash left is cleared here).
pub fn install_cut_short(dir: &Path) -> Result<bool> {
    let marker = dir.join(super::config::STATE_DIR).join(INSTALLING);
    let target = match std::fs::read_to_string(&marker) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if target.trim().parse::<u64>().ok() == Some(PublishState::load(dir)?.generation) {
        std::fs::remove_file(&marker)?;
        return Ok(false);
    }
    Ok(true)
}

/// Makes generation `found` the store's state: its metadata, pack index, snapshots and pack
/// table, then (last, so that an interrupted install is done again) the publish state, which
/// marks the store as attached only. Returns when the generation was published.
fn install(dir: &Path, found: &generation::GenerationFile, skipped: Vec<String>) -> Result<u64> {
    let state_dir = super::config::state_dir(dir)?;
    super::config::write_durably(
        &state_dir,
        INSTALLING,
        found.header.generation.to_string().as_bytes(),
    )?;
    // Local pack files belong to no generation (an offline `gc` of this store made them,
    // numbered like the writer's next packs): they would shadow the generation's packs.
    if let Ok(entries) = std::fs::read_dir(dir.join("packs")) {
        for e in entries {
            let e = e?;
            if e.file_type()?.is_file() {
                std::fs::remove_file(e.path())?;
            }
        }
    }
    // Cached ranges of a pack number that names other bytes in this generation (another
    // volume's pack numbered anew by a new writer) go before the table changes.
    if let Ok(old) = super::packs::PackTable::open(dir) {
        let cache = state_dir.join("cache");
        for p in old.all() {
            let same = found
                .packs
                .iter()
                .any(|n| n.id == p.id && n.len == p.len && n.hash == p.hash);
            if !same {
                super::range_cache::forget_pack(&cache, p.id);
            }
        }
    }
    write_durably_with(dir, "meta.redb", |f| found.copy_meta(f))?;
    write_durably_with(dir, "index.redb", |f| found.copy_index(f))?;
    let sdir = dir.join("snapshots");
    let names = found.snapshot_names();
    if !names.is_empty() || sdir.exists() {
        std::fs::create_dir_all(&sdir)?;
        for (i, name) in names.iter().enumerate() {
            write_durably_with(&sdir, name, |f| found.copy_snapshot(i, f))?;
        }
        // Snapshots the volume no longer has.
        for e in std::fs::read_dir(&sdir)? {
            let e = e?;
            let name = e.file_name();
            let kept = name
                .to_str()
                .is_some_and(|n| n.starts_with('.') || names.contains(&n));
            if !kept && e.file_type()?.is_file() {
                std::fs::remove_file(e.path())?;
            }
        }
        std::fs::File::open(&sdir)?.sync_all()?;
    }
    super::packs::PackTable::replace(dir, &found.packs)?;
    let published_unix = found.header.created_ns / 1_000_000_000;
    PublishState {
        generation: found.header.generation,
        writer: found.header.writer,
        skipped,
        published_unix,
        gc_ack: found.gc_ack,
        attached_only: true,
    }
    .save(dir)?;
    std::fs::remove_file(state_dir.join(INSTALLING))?;
    Ok(published_unix)
}

/// A mount of a store that `attach` made and no mount has written to since
/// ([`PublishState::attached_only`]): brings it to the volume's newest generation, as a new
/// `attach` would, keeping its cached ranges. `Ok(None)`: nothing newer (or not such a store).
/// The caller holds the store's lock and has opened nothing in it yet.
pub fn catch_up(
    dir: &Path,
    config: &VolumeConfig,
    volume_key: Option<&crate::crypto::Key>,
) -> Result<Option<AttachReport>> {
    let state = PublishState::load(dir)?;
    if !state.attached_only {
        return Ok(None);
    }
    let mut client_config = config.client_config()?;
    // A mount waits for this: an unreachable store fails it quickly (the copy is mounted).
    client_config.max_retries = 1;
    client_config.retry_timeout = std::time::Duration::from_secs(5);
    // The generation itself may be large: only the small requests get a short timeout.
    let client = RemoteStore::new(&client_config)?;
    client_config.request_timeout = std::time::Duration::from_secs(15);
    let quick = RemoteStore::new(&client_config)?;
    let keys = config.keys();
    // Still the volume this store was attached to (a volume deleted and made again under
    // the same name is another one, whose packs this store's cache knows nothing of).
    let (info, _) = volume_info(&quick, &config.volume)?;
    if info.volume_id != config.volume_id || info.key_id != config.key_id {
        return Err(FsError::Refused(format!(
            "volume {:?} in {} is not the one this store was attached to (its id or key \
             changed: deleted and made again?); attach it into a new directory",
            config.volume, config.url
        )));
    }
    let mut skipped = state.skipped.clone();
    let mut newly_skipped = Vec::new();
    let state_dir = super::config::state_dir(dir)?;
    for (g, w, key) in list_generations(&quick, &keys)? {
        if g <= state.generation {
            break;
        }
        if skipped.contains(&key) {
            continue;
        }
        let mut obj = generation::scratch_file(&state_dir)?;
        client.get_to(&key, &mut obj)?;
        match generation::open_object(obj, volume_key, &state_dir) {
            Ok(found) if found.header.generation == g && found.header.writer == w => {
                // Failed part-way, the store is between two generations: not mounted (its
                // publish state still names the old one, so the next mount does it again).
                let published_unix = install(dir, &found, skipped).map_err(|e| {
                    FsError::Refused(format!(
                        "bringing this store to generation {g} of the volume failed part-way \
                         ({e}); mounting it again finishes it"
                    ))
                })?;
                return Ok(Some(AttachReport {
                    url: config.url.clone(),
                    volume: config.volume.clone(),
                    generation: g,
                    published_unix,
                    packs: found.packs.len() as u64,
                    snapshots: found.snapshot_names().len() as u64,
                    skipped: newly_skipped,
                }));
            }
            Err(e @ FsError::Refused(_)) => return Err(e),
            Ok(_) => {
                newly_skipped.push(format!("{key}: its header names another generation"));
                skipped.push(key);
            }
            Err(e) => {
                newly_skipped.push(format!("{key}: {e}"));
                skipped.push(key);
            }
        }
    }
    Ok(None)
}
