//! Garbage collection of the packs in a bucket shared by several volumes
//! (`dedupfs gc-bucket s3://BUCKET/PREFIX`).
//!
//! A volume names its own packs and, by shared dedup, packs other volumes uploaded; a pack
//! object may go only when no volume will ever name it again. The protocol (docs/design.md,
//! "Shared dedup and gc", has the argument):
//!
//! 1. **Mark.** The collector reads every volume's head generation and writes mark E
//!    (`gc/marks/E`) listing the pack objects no head names.
//! 2. **Acknowledge.** A writer, before the durable point of each publication, installs every
//!    mark it has not installed (`shared.rs`): from then on it never places a chunk in a
//!    listed pack, and every placement made before is in the index that the publication
//!    copies. The generation records the newest mark installed (`gc_ack`).
//! 3. **Sweep.** A later run deletes the packs of mark E that no head names, but only once
//!    every volume's head acknowledges E; until then it reports which volumes it waits for.
//!
//! No clock is involved: a volume that newly names a listed pack either did so before it
//! installed the mark (then its acknowledging head names the pack, and the sweep keeps it) or
//! never does.
//!
//! Read-only mounts serve a generation that may be older than the head: what the generation
//! of each live reader hold (`readers.rs`) names counts as named too. Holds are the one place
//! a clock decides: a hold not renewed within its ttl, by the store's clock, holds nothing.

use super::config::{
    self, GC_MARKS, GC_SWEPT, Keys, gc_mark_key, gc_swept_key, parse_epoch, parse_pack_key,
};
use super::generation::{self, Origin};
use super::lease::{Holder, Lease, LeaseConfig, LeaseError, new_session_id};
use super::shared::Mark;
use crate::error::{FsError, Result};
use crate::store::remote::RemoteStore;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// One volume as the collector saw it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VolumeHead {
    pub volume: String,
    pub generation: u64,
    pub gc_ack: u64,
    pub packs_named: u64,
}

/// A read-only mount's hold on a generation (`readers.rs`), as the collector judged it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReaderHoldSeen {
    pub volume: String,
    pub key: String,
    pub generation: u64,
    /// Host, pid and store of the mount.
    pub holder: String,
    /// Since its last renewal, by the store's clock.
    pub age_secs: u64,
    /// Renewed within its ttl: what its generation names is kept. An expired hold keeps
    /// nothing.
    pub live: bool,
    pub packs_named: u64,
}

/// What one `gc-bucket` run did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BucketGcReport {
    pub dry_run: bool,
    pub volumes: Vec<VolumeHead>,
    pub readers: Vec<ReaderHoldSeen>,
    pub pack_objects: u64,
    pub pack_bytes: u64,
    /// The mark swept in this run, and what its sweep deleted and kept.
    pub swept: Option<u64>,
    pub deleted_packs: u64,
    pub deleted_bytes: u64,
    /// Packs of the swept mark that a volume named by then (kept).
    pub kept_named: u64,
    /// The mark waiting for acknowledgements, and the volumes it waits for.
    pub waiting: Option<u64>,
    pub waiting_for: Vec<String>,
    /// The mark made in this run: its packs and bytes (deleted by a later run).
    pub marked: Option<u64>,
    pub marked_packs: u64,
    pub marked_bytes: u64,
}

/// The record of a finished sweep (`gc/swept/E`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Swept {
    epoch: u64,
    swept_unix: u64,
    deleted: Vec<String>,
    kept: Vec<String>,
}

/// Every volume's head: its acknowledgement and the pack objects it names.
/// Pack objects as (volume id, pack number).
type Named = HashSet<(u64, u64)>;

fn heads(
    client: &RemoteStore,
    volume_keys: &[crate::crypto::Key],
    now: std::time::SystemTime,
) -> Result<(Vec<VolumeHead>, Vec<ReaderHoldSeen>, Named)> {
    let mut out = Vec::new();
    let mut readers = Vec::new();
    let mut named = HashSet::new();
    // Generations are downloaded to scratch files (gc-bucket has no store directory).
    let scratch = std::env::temp_dir();
    let volumes = super::attach::list_volumes(client)?;
    // A volume whose identity object is gone still names packs (its own by its id): refuse
    // rather than take them for garbage.
    for o in client.list("volumes")? {
        let name = o
            .key
            .strip_prefix("volumes/")
            .and_then(|r| r.split_once('/'));
        if let Some((name, rest)) = name
            && rest.starts_with("gens/")
            && !volumes.iter().any(|v| v == name)
        {
            return Err(FsError::Refused(format!(
                "volumes/{name} has generations but no volume.json: gc-bucket cannot tell which \
                 packs it names; restore volumes/{name}/volume.json, or finish deleting the \
                 volume (`dedupfs delete-volume s3://BUCKET/PREFIX --volume {name}`) first"
            )));
        }
    }
    for name in volumes {
        let (info, volume) = super::attach::volume_info(client, &name).map_err(|e| match e {
            FsError::Corrupt(why) => FsError::Corrupt(format!("{why}: gc needs every volume")),
            e => e,
        })?;
        let keys = Keys::for_volume(&name, &info.volume_id);
        let gens = super::sync::list_generations(client, &keys)?;
        let Some((g, w, key)) = gens.first() else {
            // `init` PUTs the volume object first: no generation names anything yet.
            out.push(VolumeHead {
                volume: name,
                generation: 0,
                gc_ack: u64::MAX,
                packs_named: 0,
            });
            continue;
        };
        // The newest generation must decode: what a damaged one names is unknown (its writer
        // publishes above it, and the next run goes on).
        // An encrypted volume's generations are sealed: its key must be given.
        let volume_key =
            match &info.key_id {
                None => None,
                Some(id) => Some(volume_keys.iter().find(|k| &k.id_hex() == id).ok_or_else(
                    || {
                        FsError::Refused(format!(
                            "volume {name} is encrypted (key id {id}): give its key file with \
                     --encrypt KEYFILE (once per key) so that gc-bucket can read what it names"
                        ))
                    },
                )?),
            };
        let mut obj = generation::scratch_file(&scratch)?;
        client.get_to(key, &mut obj)?;
        let head = generation::open_object(obj, volume_key, &scratch).map_err(|e| {
            FsError::Refused(format!(
                "volume {name}: its newest generation {key} cannot be read ({e}); gc needs \
                 every volume's head: a publication of that volume (dedupfs sync) puts a good \
                 one above it"
            ))
        })?;
        if (head.header.generation, head.header.writer) != (*g, *w) {
            return Err(FsError::Refused(format!(
                "volume {name}: {key} names another generation"
            )));
        }
        for p in &head.packs {
            let o = p.origin.unwrap_or(Origin { volume, pack: p.id });
            named.insert((o.volume, o.pack));
        }
        // What read-only mounts of older generations still read.
        for hold in super::readers::holds(client, &keys, now)? {
            let mut seen = ReaderHoldSeen {
                volume: name.clone(),
                key: hold.key.clone(),
                generation: hold.generation,
                holder: hold.seen.holder.to_string(),
                age_secs: hold.seen.age.as_secs(),
                live: hold.seen.live,
                packs_named: 0,
            };
            if hold.seen.live {
                let key = keys.gen_key(hold.generation, hold.writer);
                let unreadable = |e: &dyn std::fmt::Display| {
                    FsError::Refused(format!(
                        "volume {name}: the read-only mount of {} holds generation {key}, which \
                         cannot be read ({e}); gc cannot tell what that mount reads. If the \
                         mount is gone, delete {} (or wait {} s for it to expire)",
                        hold.seen.holder,
                        hold.key,
                        (hold.seen.ttl.saturating_sub(hold.seen.age)).as_secs() + 1
                    ))
                };
                let mut obj = generation::scratch_file(&scratch)?;
                match client.get_to(&key, &mut obj) {
                    Ok(_) => {}
                    Err(e @ crate::error::RemoteError::NotFound { .. }) => {
                        return Err(unreadable(&e));
                    }
                    // Transient (the store): the run fails as for any other read.
                    Err(e) => return Err(e.into()),
                };
                let held = generation::open_object(obj, volume_key, &scratch)
                    .map_err(|e| unreadable(&e))?;
                for p in &held.packs {
                    let o = p.origin.unwrap_or(Origin { volume, pack: p.id });
                    named.insert((o.volume, o.pack));
                }
                seen.packs_named = held.packs.len() as u64;
            }
            readers.push(seen);
        }
        out.push(VolumeHead {
            volume: name,
            generation: *g,
            gc_ack: head.gc_ack,
            packs_named: head.packs.len() as u64,
        });
    }
    Ok((out, readers, named))
}

/// The lease of a `gc-bucket` run (one run at a time: two would number their marks alike).
pub const GC_LEASE: &str = "gc/lease";

/// One run: sweeps the waiting mark if every volume acknowledged it, then marks what no head
/// names now. `dry_run`: reports only (and takes no lease). Runs hold `gc/lease` (the volume
/// lease's protocol, `lease.rs`), renewed while they work; a run that loses it stops before
/// its next change.
pub fn gc_bucket(
    client: Arc<RemoteStore>,
    keys: &[crate::crypto::Key],
    dry_run: bool,
) -> Result<BucketGcReport> {
    if dry_run {
        return run(&client, keys, true, &AtomicBool::new(false));
    }
    let me = Holder::this_process(&new_session_id(), Path::new("(dedupfs gc-bucket)"));
    let cfg = LeaseConfig::default();
    let acquired = Lease::acquire(&client, GC_LEASE, me, &cfg).map_err(|e| match e {
        LeaseError::Held { holder, .. } => FsError::Refused(format!(
            "another gc-bucket run holds {GC_LEASE} ({holder}): one run at a time"
        )),
        e => FsError::Refused(format!("cannot take {GC_LEASE}: {e}")),
    })?;
    acquired
        .lease
        .hold_while(&client, cfg, |lost| run(&client, keys, false, lost))
}

fn still_held(lost: &AtomicBool) -> Result<()> {
    if lost.load(Ordering::SeqCst) {
        return Err(FsError::Refused(format!(
            "this run lost {GC_LEASE} (another run took it, or the store was unreachable): \
             stopped; run again"
        )));
    }
    Ok(())
}

fn run(
    client: &RemoteStore,
    keys: &[crate::crypto::Key],
    dry_run: bool,
    lost: &AtomicBool,
) -> Result<BucketGcReport> {
    let mut report = BucketGcReport {
        dry_run,
        ..BucketGcReport::default()
    };
    let marks: Vec<u64> = client
        .list(GC_MARKS)?
        .iter()
        .filter_map(|o| parse_epoch(&o.key))
        .collect();
    let swept: HashSet<u64> = client
        .list(GC_SWEPT)?
        .iter()
        .filter_map(|o| parse_epoch(&o.key))
        .collect();
    let waiting = marks.iter().copied().filter(|e| !swept.contains(e)).max();
    // The store's clock, to judge reader holds by (an empty probe object, deleted at once). A
    // dry run writes nothing: every hold counts as live (judged at the epoch).
    let now = if dry_run {
        std::time::UNIX_EPOCH
    } else {
        let probe = format!("gc/clock/{}", super::lease::new_session_id());
        super::lease::store_now(client, &probe).map_err(|e| match e {
            super::lease::LeaseError::Remote(e) => FsError::from(e),
            e => FsError::Refused(e.to_string()),
        })?
    };
    let (volumes, readers, mut named) = heads(client, keys, now)?;
    // Never a number a volume already acknowledged (marks deleted by hand would otherwise be
    // numbered again, and taken as installed).
    let last_epoch = marks
        .iter()
        .chain(swept.iter())
        .copied()
        .chain(volumes.iter().map(|v| v.gc_ack).filter(|&a| a != u64::MAX))
        .max()
        .unwrap_or(0);
    report.volumes = volumes.clone();
    report.readers = readers;

    if let Some(epoch) = waiting {
        let raw = client.get(&gc_mark_key(epoch))?;
        let mark: Mark = serde_json::from_slice(&raw)
            .ok()
            .filter(|m: &Mark| m.epoch == epoch)
            .ok_or_else(|| {
                FsError::Refused(format!(
                    "the gc mark {} is damaged: delete it (safe: only a sweep of it deletes \
                     packs), then run again",
                    gc_mark_key(epoch)
                ))
            })?;
        let behind: Vec<String> = volumes
            .iter()
            .filter(|v| v.gc_ack < epoch)
            .map(|v| {
                format!(
                    "{} (generation {} acknowledges mark {})",
                    v.volume, v.generation, v.gc_ack
                )
            })
            .collect();
        if !behind.is_empty() {
            report.waiting = Some(epoch);
            report.waiting_for = behind;
            return Ok(report);
        }
        // Read again right before deleting: a read-only mount that came up since the start
        // of this run holds its generation now (`readers.rs`). Heads only move forward and
        // holds judged at the older `now` look younger: the union keeps more, never less.
        named.extend(heads(client, keys, now)?.2);
        // Sizes for the report.
        let sizes: HashMap<String, u64> = client
            .list("packs")?
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect();
        let mut record = Swept {
            epoch,
            swept_unix: config::now_unix(),
            deleted: Vec::new(),
            kept: Vec::new(),
        };
        for key in &mark.candidates {
            let Some((v, p, _)) = parse_pack_key(key) else {
                continue;
            };
            if named.contains(&(v, p)) {
                record.kept.push(key.clone());
                continue;
            }
            let Some(&size) = sizes.get(key) else {
                continue;
            };
            if !dry_run {
                still_held(lost)?;
                client.delete(key)?;
            }
            report.deleted_packs += 1;
            report.deleted_bytes += size;
            record.deleted.push(key.clone());
        }
        report.kept_named = record.kept.len() as u64;
        report.swept = Some(epoch);
        if dry_run {
            return Ok(report);
        }
        still_held(lost)?;
        client.put(
            &gc_swept_key(epoch),
            serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?,
        )?;
        client.delete(&gc_mark_key(epoch))?;
    }

    // A new mark: the pack objects no head names now.
    let mut candidates = Vec::new();
    for o in client.list("packs")? {
        report.pack_objects += 1;
        report.pack_bytes += o.size;
        let Some((v, p, _)) = parse_pack_key(&o.key) else {
            continue;
        };
        if !named.contains(&(v, p)) {
            report.marked_packs += 1;
            report.marked_bytes += o.size;
            candidates.push(o.key);
        }
    }
    if candidates.is_empty() || dry_run {
        return Ok(report);
    }
    still_held(lost)?;
    let epoch = last_epoch + 1;
    let mark = Mark {
        epoch,
        created_unix: config::now_unix(),
        candidates,
    };
    client.put(
        &gc_mark_key(epoch),
        serde_json::to_vec_pretty(&mark).map_err(std::io::Error::other)?,
    )?;
    report.marked = Some(epoch);
    Ok(report)
}
