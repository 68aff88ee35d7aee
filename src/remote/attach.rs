//! Making remote volumes (`init --remote`) and local caches of existing ones (`attach`).

use super::config::{VolumeConfig, VolumeInfo, hostname, now_unix};
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
    )?;
    PublishState {
        generation: 1,
        writer: config.writer,
        skipped: Vec::new(),
        published_unix: now_unix(),
        gc_ack,
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
    for (g, w, key) in list_generations(&client, &keys)? {
        // An object store that does not answer is no damaged generation: attach fails.
        let raw = client.get(&key)?;
        match generation::decode_for(&raw, volume_key) {
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
    let write = |name: &Path, bytes: &[u8]| -> Result<()> {
        let f = std::fs::File::create(name)?;
        std::io::Write::write_all(&mut &f, bytes)?;
        f.sync_all()?;
        Ok(())
    };
    write(&dir.join("meta.redb"), &found_gen.meta)?;
    write(&dir.join("index.redb"), &found_gen.index)?;
    if !found_gen.snapshots.is_empty() {
        let sdir = dir.join("snapshots");
        std::fs::create_dir_all(&sdir)?;
        for (name, bytes) in &found_gen.snapshots {
            write(&sdir.join(name), bytes)?;
        }
        std::fs::File::open(&sdir)?.sync_all()?;
    }
    std::fs::create_dir_all(dir.join("packs"))?;
    // A new writer id: this store's generations are its own.
    config.writer = super::config::random_u64();
    config.save(dir)?;
    PackTable::replace(dir, &found_gen.packs)?;
    let published_unix = found_gen.header.created_ns / 1_000_000_000;
    PublishState {
        generation: found_gen.header.generation,
        writer: found_gen.header.writer,
        skipped: skipped_keys,
        published_unix,
        gc_ack: found_gen.gc_ack,
    }
    .save(dir)?;
    crate::volume::write_marker(dir)
        .map_err(|e| FsError::Io(std::io::Error::other(e.to_string())))?;
    Ok(AttachReport {
        url: config.url.clone(),
        volume: config.volume.clone(),
        generation: found_gen.header.generation,
        published_unix,
        packs: found_gen.packs.len() as u64,
        snapshots: found_gen.snapshots.len() as u64,
        skipped,
    })
}
