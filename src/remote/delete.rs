//! `dedupfs delete-volume s3://BUCKET/PREFIX --volume NAME`: removes a volume from the bucket.
//!
//! What goes: its generations, its reader holds (expired ones), `volume.json`, its lease. What
//! stays: its pack objects, which other volumes under the prefix may name (shared dedup);
//! named by no head of this volume any more, they are deleted by `gc-bucket` once no other
//! volume names them (the usual mark, acknowledge, sweep).
//!
//! Refused while the volume is in use: a writable mount holds its lease (the deletion takes
//! the lease itself and renews it while it works, so no mount can start meanwhile; an expired
//! lease, maybe a mount cut off from the bucket, is taken over only with `force`), a read-only
//! mount holds a live reader hold. Order: the lease; the generations oldest first, so that an
//! interrupted run leaves the volume's newest generation as its head (a consistent, smaller
//! volume) until the head itself goes; then the holds and `volume.json`, and once more the
//! holds (a read-only mount that came up meanwhile holds nothing now: warned); the lease last.
//! Running it again finishes an interrupted deletion (leftover holds and lease included). A
//! store of the deleted volume can no longer publish: the fencing check (`sync::check_head`)
//! refuses a volume without `volume.json`, and a writable mount of it is refused; a read-only
//! mount takes no hold on it.

use super::attach::list_volumes;
use super::config::Keys;
use super::lease::{Holder, Lease, LeaseConfig, LeaseError, new_session_id};
use super::readers;
use super::sync::list_generations;
use crate::error::{FsError, RemoteError, Result};
use crate::store::remote::RemoteStore;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What `delete-volume` did.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DeleteReport {
    pub volume: String,
    pub generations_deleted: u64,
    pub holds_deleted: u64,
    /// Pack objects of the volume still in the bucket (`gc-bucket` deletes those no other
    /// volume names).
    pub pack_objects_left: u64,
    pub pack_bytes_left: u64,
}

/// Deletes volume `name` from the bucket `client` (see the module doc). `force`: also when
/// the volume's lease has expired (a writer that lost the bucket would then never publish).
pub fn delete_volume(client: Arc<RemoteStore>, name: &str, force: bool) -> Result<DeleteReport> {
    super::attach::check_volume_name(name)?;
    let keys = Keys::for_volume(name, "");
    // Leftovers of an interrupted deletion count as the volume.
    let has_gens = !list_generations(&client, &keys)?.is_empty()
        || !client.list(&keys.readers())?.is_empty()
        || client.head(&keys.lease()).is_ok();
    let missing = |e: &FsError| matches!(e, FsError::Remote(r) if matches!(**r, RemoteError::NotFound { .. }));
    let volume_id = match super::attach::volume_info(&client, name) {
        Ok((info, _)) => Some(info.volume_id),
        Err(e) if missing(&e) && has_gens => None,
        Err(e) if missing(&e) => {
            let names = list_volumes(&client).unwrap_or_default();
            return Err(FsError::Refused(format!(
                "there is no volume {name:?} under this prefix{}",
                if names.is_empty() {
                    String::new()
                } else {
                    format!(" (there is: {})", names.join(", "))
                }
            )));
        }
        Err(e) => return Err(e),
    };
    let me = Holder::this_process(&new_session_id(), Path::new("(dedupfs delete-volume)"));
    let cfg = LeaseConfig::default();
    let acquired = Lease::acquire(&client, &keys.lease(), me, &cfg).map_err(|e| match e {
        LeaseError::Held { holder, .. } => FsError::Refused(format!(
            "volume {name} is mounted for writing by {holder}: unmount it first"
        )),
        LeaseError::Remote(e) => e.into(),
        e => FsError::Refused(format!("cannot take the lease of volume {name}: {e}")),
    })?;
    if let Some((old, age)) = &acquired.took_over
        && !force
    {
        if let Err(e) = acquired.lease.release(&client) {
            tracing::warn!("cannot release the lease of volume {name}: {e} (it expires by itself)");
        }
        return Err(FsError::Refused(format!(
            "volume {name} was mounted for writing by {old}, whose lease expired {} s ago: \
             that machine may only have lost the bucket, and its data not published yet would \
             be lost; delete with --force if it is gone",
            age.as_secs()
        )));
    }
    acquired.lease.hold_while(&client, cfg, |lost| {
        delete_locked(&client, name, &keys, volume_id.as_deref(), lost)
    })
}

/// Before each deletion: the lease is still ours (else another machine may mount the volume).
fn still_held(lost: &AtomicBool, name: &str) -> Result<()> {
    if lost.load(Ordering::SeqCst) {
        return Err(FsError::Refused(format!(
            "lost the lease of volume {name} while deleting it (the bucket unreachable, or \
             taken over): stopped; run again to finish"
        )));
    }
    Ok(())
}

fn delete_locked(
    client: &RemoteStore,
    name: &str,
    keys: &Keys,
    volume_id: Option<&str>,
    lost: &AtomicBool,
) -> Result<DeleteReport> {
    let mut report = DeleteReport {
        volume: name.to_string(),
        ..DeleteReport::default()
    };
    // Read-only mounts still reading it: refused, naming them.
    let probe = format!("{}.clock/{}", keys.readers(), new_session_id());
    let now = super::lease::store_now(client, &probe).map_err(|e| match e {
        LeaseError::Remote(e) => FsError::from(e),
        e => FsError::Refused(e.to_string()),
    })?;
    let holds = readers::holds(client, keys, now)?;
    let live: Vec<String> = holds
        .iter()
        .filter(|h| h.seen.live)
        .map(|h| format!("{} (generation {})", h.seen.holder, h.generation))
        .collect();
    if !live.is_empty() {
        return Err(FsError::Refused(format!(
            "volume {name} is mounted read-only by {}: unmount it first",
            live.join(", ")
        )));
    }
    let mut gens = list_generations(client, keys)?;
    // Oldest first: the head goes last.
    gens.reverse();
    for (_, _, key) in &gens {
        still_held(lost, name)?;
        client.delete(key)?;
        report.generations_deleted += 1;
    }
    for h in &holds {
        client.delete(&h.key)?;
        report.holds_deleted += 1;
    }
    still_held(lost, name)?;
    client.delete(&keys.volume_json())?;
    // A read-only mount that took its hold since the check above: it holds nothing now.
    for o in client.list(&keys.readers())? {
        tracing::warn!(
            "{}: a read-only mount of the volume came up during the deletion; gc-bucket may \
             delete what it reads (it would read EIO)",
            o.key
        );
        client.delete(&o.key)?;
        report.holds_deleted += 1;
    }
    if let Some(id) = volume_id {
        for o in client.list(&format!("packs/{id}"))? {
            report.pack_objects_left += 1;
            report.pack_bytes_left += o.size;
        }
    }
    Ok(report)
}
