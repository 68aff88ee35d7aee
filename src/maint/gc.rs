//! `dedupfs gc`: removes chunks that no committed metadata references, then compacts packs
//! (`store/compact.rs`) so that the bytes of removed chunks go back to the disk.
//!
//! Guards the crash-ordering invariant from the other side (docs/design.md): chunk files are
//! synced before the metadata that names them is committed, so a crash can leave chunk files
//! nothing references (garbage), and chunks whose refcount fell to 0 wait in `zero_refs` until
//! a durable commit allows their removal. gc removes both, and never a chunk that durable
//! metadata still names:
//! - it first syncs the store and commits the metadata durably, so the snapshot it judges by is
//!   the one a crash would come back to (a chunk dropped only by a non-durable commit would
//!   otherwise be deleted while durable metadata still referenced it);
//! - a chunk file is live when the `chunks` table gives it a refcount > 0, or a snapshot file
//!   names it (`meta::snapshot::Holders`).
//!
//! Memory: the live set is a sorted `Vec<u64>` of the first 8 bytes of each live id (8 bytes
//! per chunk, not a hash set of 32-byte ids). A store file whose prefix is absent is garbage;
//! on a prefix hit an exact metadata lookup decides, so a prefix collision can neither delete a
//! live chunk nor keep garbage.
//!
//! Safe to run on a volume mounted in-process when the caller holds the daemon's state lock
//! (no write-back can put a chunk and not yet commit it meanwhile): everything is read from
//! `meta` transactions on the shared `MetaDb`, which is never reopened.

use crate::error::{FsError, Result};
use crate::hash::ChunkId;
use crate::meta::MetaDb;
use crate::meta::snapshot::Holders;
use crate::store::ChunkStore;
use crate::store::compact::{
    COMPACT_MIN_DEAD, CompactReport, RepackReport, compact, remove_unknown_packs, repack_loose,
};
use serde::{Deserialize, Serialize};

/// Bytes of memory the live-chunk index costs per live chunk.
pub const BYTES_PER_CHUNK_INDEX: usize = std::mem::size_of::<u64>();

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GcReport {
    /// Nothing was removed; the figures say what would have been.
    pub dry_run: bool,
    /// Chunk files found in the store.
    pub scanned_files: u64,
    /// Chunk files removed (or, in a dry run, that would be).
    pub removed_chunks: u64,
    pub removed_bytes: u64,
    /// Chunk files kept because live metadata references them.
    pub kept_chunks: u64,
    /// Metadata entries of refcount-0 chunks forgotten (their files removed or already gone).
    pub forgotten_chunks: u64,
    /// Memory cost of the live-chunk index, per live chunk.
    pub bytes_per_chunk_index: usize,
    /// Pack files the index did not know (written after the last durable point before a
    /// crash), removed.
    #[serde(default)]
    pub unknown_packs_removed: u64,
    #[serde(default)]
    pub unknown_pack_bytes: u64,
    /// Unknown packs kept because they hold chunks metadata names that the index lost.
    #[serde(default)]
    pub unknown_packs_kept: Vec<String>,
    /// Pack compaction (pack stores only).
    #[serde(default)]
    pub compaction: Option<CompactReport>,
    /// Loose chunk files moved into packs (`--repack`).
    #[serde(default)]
    pub repacked: Option<RepackReport>,
}

/// What `gc` does besides removing garbage chunks.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    pub dry_run: bool,
    /// Move loose chunk files (stores made before packs) into packs.
    pub repack: bool,
    /// Compact packs with at least this share of dead bytes.
    pub min_dead: f64,
}

impl Default for GcOptions {
    fn default() -> GcOptions {
        GcOptions {
            dry_run: false,
            repack: false,
            min_dead: COMPACT_MIN_DEAD,
        }
    }
}

/// The first 8 bytes of a chunk id: the key of the live index.
fn prefix(id: &ChunkId) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id.0[..8]);
    u64::from_be_bytes(b)
}

/// Removes unreferenced chunk files and forgets refcount-0 chunks. With `dry_run`, changes
/// nothing (not even the durable commit) and reports what would be removed.
pub fn gc(
    meta: &MetaDb,
    store: &dyn ChunkStore,
    holders: &Holders,
    dry_run: bool,
) -> Result<GcReport> {
    gc_with(
        meta,
        store,
        holders,
        GcOptions {
            dry_run,
            ..GcOptions::default()
        },
    )
}

/// `gc` with its options: garbage chunks first, then (pack stores) unknown packs, loose chunk
/// files into packs when asked, and compaction of packs whose dead share is high.
/// Chunks the snapshots in `holders` name are kept.
pub fn gc_with(
    meta: &MetaDb,
    store: &dyn ChunkStore,
    holders: &Holders,
    opts: GcOptions,
) -> Result<GcReport> {
    let mut report = remove_garbage(meta, store, holders, opts.dry_run)?;
    if let Some(packs) = store.packs() {
        let r = meta.begin_read()?;
        let referenced =
            |id: &ChunkId| matches!(r.chunk(id), Ok(Some((rc, _))) if rc > 0) || holders.holds(id);
        let (n, bytes, kept) = remove_unknown_packs(packs, opts.dry_run, &referenced)?;
        drop(r);
        report.unknown_packs_removed = n;
        report.unknown_pack_bytes = bytes;
        report.unknown_packs_kept = kept;
        if opts.repack && !opts.dry_run {
            report.repacked = Some(repack_loose(packs)?);
        }
        report.compaction = Some(compact(packs, opts.min_dead, opts.dry_run, true)?);
    }
    Ok(report)
}

fn remove_garbage(
    meta: &MetaDb,
    store: &dyn ChunkStore,
    holders: &Holders,
    dry_run: bool,
) -> Result<GcReport> {
    if !dry_run {
        // Judge by durable metadata: chunk files first, then the metadata that names them.
        store.sync()?;
        meta.make_durable()?;
    }
    let mut report = GcReport {
        dry_run,
        bytes_per_chunk_index: BYTES_PER_CHUNK_INDEX,
        ..GcReport::default()
    };
    let r = meta.begin_read()?;
    let mut live: Vec<u64> = Vec::new();
    r.for_each_chunk(&mut |id, rc, _| {
        if rc > 0 {
            live.push(prefix(&id));
        }
    })?;
    live.sort_unstable();
    live.dedup();

    // Candidates are collected, not removed during the scan: the store's directory walk is
    // not disturbed, and the exact lookups share one read snapshot.
    let mut garbage: Vec<ChunkId> = Vec::new();
    let mut err: Option<FsError> = None;
    store.for_each(&mut |id| {
        if err.is_some() {
            return;
        }
        report.scanned_files += 1;
        let is_live = live.binary_search(&prefix(&id)).is_ok()
            && match r.chunk(&id) {
                Ok(c) => c.is_some_and(|(rc, _)| rc > 0),
                Err(e) => {
                    err = Some(e);
                    return;
                }
            };
        if is_live || holders.holds(&id) {
            report.kept_chunks += 1;
        } else {
            garbage.push(id);
        }
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    drop(live);
    let zero_refs = r.zero_refs()?;
    drop(r);

    for id in &garbage {
        let len = match store.stat(id) {
            Ok(n) => n,
            // Removed since the scan (by a concurrent remover): nothing left to do.
            Err(FsError::MissingChunk { .. }) => continue,
            Err(e) => return Err(e),
        };
        report.removed_chunks += 1;
        report.removed_bytes += len;
    }
    if dry_run {
        report.forgotten_chunks = zero_refs.len() as u64;
        return Ok(report);
    }

    let mut tx = meta.begin_write()?;
    for id in &garbage {
        store.remove(id)?;
        // A refcount-0 entry not listed in zero_refs is forgotten too; forget_chunk leaves a
        // chunk with references alone.
        if let Some((0, _)) = tx.chunk(id)? {
            tx.forget_chunk(id)?;
            report.forgotten_chunks += 1;
        }
    }
    for id in &zero_refs {
        if let Some((0, _)) | None = tx.chunk(id)? {
            // Usually removed above already; removing a missing chunk is not an error.
            if !holders.holds(id) {
                store.remove(id)?;
            }
            if tx.chunk(id)?.is_some() {
                report.forgotten_chunks += 1;
            }
            tx.forget_chunk(id)?;
        }
    }
    // Removals first, then the metadata that forgets them (as Fs::remove_dead_chunks does):
    // a crash in between leaves a zero_refs entry whose file is gone, which is harmless.
    store.sync()?;
    tx.commit(false)?;
    Ok(report)
}
