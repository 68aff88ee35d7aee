//! Pack maintenance: compaction (rewriting packs whose live share is low), repacking loose
//! chunk files of older stores into packs, removing packs the index does not know, and
//! verifying every record of every pack.
//!
//! Compaction's crash-safety argument (docs/design.md, "Compaction"), borg's segment order:
//! the live records of an old pack are copied, byte for byte, to a new pack; the new pack is
//! fdatasynced and the directory fsynced; one durable index commit moves the chunks (each only
//! if it still lives where compaction read it) and marks the old pack retired; only then is the
//! old pack unlinked. A crash before the commit leaves the old pack authoritative (the new one
//! is unknown garbage); a crash after it leaves a retired pack that the next open deletes.
//! Space: at most the pack being written plus the one being read, beyond what is live.
//! Memory: one pack's bytes at a time.

use super::ChunkStore;
use super::codec::decompress;
use super::pack::{
    PACK_HEADER_LEN, RECORD_HEADER_LEN, RecordHeader, ScanItem, decode_pack_header, pack_file_name,
    scan,
};
use super::pack_index::{IndexOp, Loc, PackRow, PackState};
use super::pack_store::{FOREIGN_PACK_BASE, PackStore};
use crate::error::{FsError, Result};
use crate::hash::ChunkId;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// A sealed pack is compacted when at least this share of its bytes is dead. Borg compacts
/// segments at 10 % by default; random 4 KiB writes into images kill whole chunks at a high
/// rate, so a lower bar would rewrite the same live bytes over and over.
pub const COMPACT_MIN_DEAD: f64 = 0.2;

/// What compaction did (or, dry, would do).
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompactReport {
    /// Sealed packs looked at.
    pub packs_examined: u64,
    /// Packs whose live chunks were copied to new packs (or that had none), then deleted.
    pub packs_compacted: u64,
    /// Live chunk records copied.
    pub chunks_moved: u64,
    /// Bytes copied into new packs.
    pub bytes_copied: u64,
    /// Bytes of pack files deleted, less bytes written anew: what the disk got back.
    pub bytes_reclaimed: u64,
    /// Packs left alone although they qualified, with the reason (e.g. a damaged record).
    pub skipped: Vec<String>,
    /// Of those, packs whose live chunks did not fit the free space (worth another pass once
    /// other packs are gone).
    #[serde(default)]
    pub skipped_for_space: u64,
}

/// Compacts every sealed pack whose dead share is at least `min_dead` (0.0 rewrites every
/// pack with any dead byte; a pack with no live chunk is always deleted). With `seal_open`,
/// the packs open for appends are sealed first, so their dead bytes count too (new chunks
/// then start new packs).
pub fn compact(
    store: &PackStore,
    min_dead: f64,
    dry_run: bool,
    seal_open: bool,
) -> Result<CompactReport> {
    compact_at_most(store, min_dead, dry_run, seal_open, usize::MAX, None, true)
}

/// Whether a pack is compacted at dead share `min_dead`: nothing live in it, or at least that
/// share of it dead.
pub fn worth_compacting(row: &PackRow, min_dead: f64) -> bool {
    row.live_records == 0
        || row.dead_bytes() as f64 >= min_dead * row.len as f64 && row.dead_bytes() > 0
}

/// `compact`, rewriting at most `max_packs` packs (the deadest first) and starting none after
/// `until`: the daemon's background compaction does a bounded amount at a time. Without
/// `download`, packs of a remote volume whose local file was evicted are left alone (the
/// background step reads nothing from the bucket; `dedupfs gc` does).
pub fn compact_at_most(
    store: &PackStore,
    min_dead: f64,
    dry_run: bool,
    seal_open: bool,
    max_packs: usize,
    until: Option<std::time::Instant>,
    download: bool,
) -> Result<CompactReport> {
    let _one = store.compaction_lock();
    let mut report = CompactReport::default();
    let remote = store.source().is_some();
    if !dry_run {
        // Everything put so far goes into the index, durably.
        if seal_open {
            store.seal_open_packs();
        }
        store.sync()?;
    }
    let mut not_uploaded = 0;
    let mut evicted = 0;
    let mut candidates: Vec<(u64, PackRow)> = store
        .sealed_packs()?
        .into_iter()
        // A remote volume compacts its own packs once uploaded (docs/design.md, "Remote
        // compaction"); other volumes' packs it names are theirs.
        .filter(|(id, _)| !remote || *id < FOREIGN_PACK_BASE)
        .inspect(|_| report.packs_examined += 1)
        .filter(|(_, row)| worth_compacting(row, min_dead))
        .filter(|(id, _)| {
            let wait = remote && !store.is_remote(*id);
            not_uploaded += usize::from(wait);
            !wait
        })
        .filter(|(id, _)| {
            let skip = remote && !download && !store.is_local(*id);
            evicted += usize::from(skip);
            !skip
        })
        .collect();
    if not_uploaded > 0 {
        report.skipped.push(format!(
            "{not_uploaded} packs: not uploaded yet (compacted once they are in the bucket)"
        ));
    }
    if evicted > 0 {
        report.skipped.push(format!(
            "{evicted} packs: evicted from the local cache (`dedupfs gc` downloads them)"
        ));
    }
    // Packs with nothing live first (deleting them needs no space), then the deadest: on a
    // nearly full disk the space freed early pays for the copies made later.
    candidates.sort_by(|a, b| {
        let share = |r: &PackRow| r.live_bytes as f64 / r.len.max(1) as f64;
        share(&a.1).total_cmp(&share(&b.1))
    });
    candidates.truncate(max_packs);
    if dry_run {
        for (_, row) in &candidates {
            report.packs_compacted += 1;
            report.chunks_moved += row.live_records;
            report.bytes_copied += row.live_bytes;
            report.bytes_reclaimed += row.dead_bytes();
        }
        return Ok(report);
    }
    let mut out: Option<Out> = None;
    let run = compact_candidates(store, candidates, until, &mut out, &mut report);
    // Whatever happened, the pack compaction wrote to is complete now (up to what was
    // committed): left open, nothing would seal it before the next open (a remote volume
    // uploads only sealed packs, and could publish nothing naming it).
    let closed = close_out(store, out);
    run?;
    closed?;
    Ok(report)
}

fn compact_candidates(
    store: &PackStore,
    candidates: Vec<(u64, PackRow)>,
    until: Option<std::time::Instant>,
    out: &mut Option<Out>,
    report: &mut CompactReport,
) -> Result<()> {
    for (id, row) in candidates {
        if until.is_some_and(|t| std::time::Instant::now() >= t) {
            break;
        }
        // On a nearly full device, a pack whose live records do not fit the free space is
        // passed over rather than started: the copy would fail part-way, having filled the
        // disk for nothing, and a deader pack later in the list may still fit (or fit once
        // the packs after it are gone: `reclaim` makes another pass).
        if row.live_records > 0 && !fits(store, &row)? {
            report.skipped.push(format!(
                "{}: no space for its live chunks",
                pack_file_name(id)
            ));
            report.skipped_for_space += 1;
            continue;
        }
        match compact_one(store, id, &row, out, report) {
            Ok(()) => {}
            Err(FsError::NoSpace) => {
                report.skipped.push(format!(
                    "{}: no space for its live chunks",
                    pack_file_name(id)
                ));
                report.skipped_for_space += 1;
                // `compact_one` gave back what the failed copy wrote; what is committed in the
                // pack being written stays (sealed at the end). Other candidates may still fit.
                if out.as_ref().is_some_and(|o| o.committed == PACK_HEADER_LEN) {
                    drop_uncommitted(store, out);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Ends the pack compaction wrote to: deleted when no commit names it, else recorded sealed
/// at the end of its committed records (unless the commit that filled it did).
fn close_out(store: &PackStore, mut out: Option<Out>) -> Result<()> {
    if out.as_ref().is_some_and(|o| o.committed == PACK_HEADER_LEN) {
        drop_uncommitted(store, &mut out);
    }
    if let Some(o) = out.filter(|o| !o.sealed && o.committed > PACK_HEADER_LEN) {
        // Copies past the last commit (a skipped or failed candidate) go: a sealed pack
        // ends at its last committed record.
        if o.pos > o.committed {
            o.file.set_len(o.committed)?;
            o.file.sync_data()?;
        }
        let _s = store.sync_lock();
        store.index().apply(
            &[IndexOp::Pack {
                id: o.id,
                len: o.committed,
                state: PackState::Sealed,
            }],
            true,
        )?;
    }
    Ok(())
}

/// Whether the live records of `row` fit the device's free space, with room to spare for the
/// index commit that moves them (`COPY_MARGIN`).
fn fits(store: &PackStore, row: &PackRow) -> Result<bool> {
    let avail = store.space()?.avail_bytes;
    Ok(row.live_bytes + COPY_MARGIN <= avail)
}

/// Free space kept beyond a pack's live bytes before compaction copies them: the record
/// headers, the new pack's header and the index commit that moves the chunks.
const COPY_MARGIN: u64 = 1 << 20;

/// Deletes the pack compaction created when no index commit names it yet (its first copy
/// failed, or it was never used): nothing can have mapped it, and left behind it would hold
/// its partial copies as garbage until `gc`.
fn drop_uncommitted(store: &PackStore, out: &mut Option<Out>) {
    if let Some(o) = out.take()
        && let Err(e) = fs::remove_file(store.pack_path(o.id))
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(
            "cannot remove the unused compaction pack {}: {e}",
            pack_file_name(o.id)
        );
    }
}

/// The pack compaction writes into.
struct Out {
    id: u64,
    file: Arc<File>,
    pos: u64,
    /// Not yet made durable by a directory fsync.
    new: bool,
    /// Full: recorded sealed by the commit that filled it.
    sealed: bool,
    /// End of the records a durable index commit covers (`pos` may be ahead after a failure).
    committed: u64,
}

fn compact_one(
    store: &PackStore,
    id: u64,
    row: &PackRow,
    out: &mut Option<Out>,
    report: &mut CompactReport,
) -> Result<()> {
    let path = store.pack_path(id);
    let mut ops = Vec::new();
    // Whether the commit below records the output pack full (sealed); None: nothing copied.
    let mut seal: Option<bool> = None;
    if row.live_records > 0 {
        let data = match fs::read(&path) {
            Ok(d) => d,
            // Evicted from a remote volume's cache: fetched from the bucket (the records'
            // checksums are checked below; the copies are the same bytes).
            Err(e) if e.kind() == io::ErrorKind::NotFound && store.is_remote(id) => {
                store.read_pack(id, 0..row.len)?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                report
                    .skipped
                    .push(format!("{}: file missing (see fsck)", pack_file_name(id)));
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if decode_pack_header(&data).ok() != Some(id) {
            report.skipped.push(format!(
                "{}: damaged pack header (see fsck)",
                pack_file_name(id)
            ));
            return Ok(());
        }
        let data = &data[..(row.len as usize).min(data.len())];
        let mut live: Vec<(u64, RecordHeader)> = Vec::new();
        let mut damaged = false;
        let mut err = None;
        scan(data, |item| {
            if let ScanItem::Record {
                offset,
                header,
                payload_ok,
            } = item
            {
                let here = |l: &Loc| l.pack == id && l.offset == offset;
                match store.index().get(&header.id) {
                    Ok(Some(l)) if here(&l) && !store.pending_contains(&header.id) => {
                        if payload_ok {
                            live.push((offset, header));
                        } else {
                            damaged = true;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => err = Some(e),
                }
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        if damaged {
            report.skipped.push(format!(
                "{}: a live record fails its checksum (see fsck); left in place",
                pack_file_name(id)
            ));
            return Ok(());
        }
        if out.as_ref().is_none_or(|o| o.pos >= store.target()) {
            // A full one was recorded sealed by the commit that filled it.
            out.take();
            let (oid, file) = store.new_pack_for_compaction()?;
            *out = Some(Out {
                id: oid,
                file,
                pos: PACK_HEADER_LEN,
                new: true,
                sealed: false,
                committed: PACK_HEADER_LEN,
            });
        }
        let Some(o) = out.as_mut() else {
            return Ok(());
        };
        let copied = (|| -> Result<()> {
            for (offset, h) in &live {
                let rec = &data[*offset as usize..(*offset + h.record_len()) as usize];
                o.file.write_all_at(rec, o.pos)?;
                ops.push(IndexOp::Move {
                    id: h.id,
                    from: Loc::of_record(id, *offset, h),
                    to: Loc::of_record(o.id, o.pos, h),
                });
                o.pos += h.record_len();
            }
            o.file.sync_data()?;
            if o.new {
                store.dir_fd().sync_all()?;
                o.new = false;
            }
            Ok(())
        })();
        if let Err(e) = copied {
            // Nothing refers to the copies: the next candidate writes over them. Their bytes
            // are given back now (on a full disk they are the space a failed copy took): no
            // index location points at or past `committed`, so no reader touches the cut
            // range, and the bytes below it are not modified.
            o.pos = o.committed;
            if o.committed > PACK_HEADER_LEN
                && let Err(cut) = o.file.set_len(o.committed)
            {
                tracing::warn!(
                    "cannot cut the failed copies off {}: {cut}",
                    pack_file_name(o.id)
                );
            }
            return Err(e);
        }
        // Open (appended to by the next candidate) until full; a crash leaves it open in the
        // index, and the next open cuts anything past `len` and seals it. Recorded sealed
        // only once the commit below succeeds (`close_out` seals what it left open).
        let full = o.pos >= store.target();
        seal = Some(full);
        ops.push(IndexOp::Pack {
            id: o.id,
            len: o.pos,
            state: if full {
                PackState::Sealed
            } else {
                PackState::Open
            },
        });
    }
    ops.push(IndexOp::RetireIfDead(id));
    {
        let _s = store.sync_lock();
        // A put whose record is in this pack but whose location is still pending (not in the
        // index compaction read) would be lost with the pack: leave the pack for later.
        if store.pending_has_pack(id) {
            if let Some(o) = out.as_mut() {
                o.pos = o.committed;
            }
            report.skipped.push(format!(
                "{}: holds chunks not yet in the index; left for later",
                pack_file_name(id)
            ));
            return Ok(());
        }
        store.index().apply(&ops, true)?;
    }
    if let Some(o) = out.as_mut() {
        o.committed = o.pos;
        if let Some(full) = seal {
            o.sealed = full;
        }
    }
    // Retired only if nothing lives in it any more (a chunk the scan could not see, such as
    // one behind a damaged header, keeps it).
    let retired = store
        .index()
        .packs()?
        .iter()
        .any(|(p, r)| *p == id && r.state == PackState::Retired);
    if !retired {
        report.skipped.push(format!(
            "{}: still holds live chunks compaction could not read (see fsck); left in place",
            pack_file_name(id)
        ));
        return Ok(());
    }
    for op in &ops {
        if let IndexOp::Move { to, .. } = op {
            report.chunks_moved += 1;
            report.bytes_copied += to.record_len();
        }
    }
    store.forget_mapping(id);
    let freed = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    store.index().apply(&[IndexOp::DropPack(id)], false)?;
    report.packs_compacted += 1;
    let copied: u64 = ops
        .iter()
        .map(|op| match op {
            IndexOp::Move { to, .. } => to.record_len(),
            _ => 0,
        })
        .sum();
    report.bytes_reclaimed += freed.saturating_sub(copied);
    Ok(())
}

/// Deletes pack files the index does not know: they were written after the last durable
/// index commit (a crash) and no durable metadata can name their chunks. A pack holding a valid
/// record of a chunk that `referenced` says metadata names, and that the index cannot locate,
/// is kept and reported instead (the index lost it: `fsck --repair` rebuilds the index).
/// Returns the packs removed and their bytes, and what was kept.
pub fn remove_unknown_packs(
    store: &PackStore,
    dry_run: bool,
    referenced: &dyn Fn(&ChunkId) -> bool,
) -> Result<(u64, u64, Vec<String>)> {
    // Not while a compaction writes a new pack (not in the index until its first commit).
    let _one = store.compaction_lock();
    let (mut n, mut bytes, mut kept) = (0, 0, Vec::new());
    for (_, path) in store.unknown_pack_files()? {
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let mut needed = false;
        scan(&data, |item| {
            if let ScanItem::Record {
                header,
                payload_ok: true,
                ..
            } = item
                && !needed
                && referenced(&header.id)
                && matches!(store.locate(&header.id), Ok(None))
            {
                needed = true;
            }
        });
        if needed {
            kept.push(format!(
                "{} holds chunks the metadata names but the index does not locate: kept; run `dedupfs fsck --repair`",
                path.display()
            ));
            continue;
        }
        bytes += data.len() as u64;
        n += 1;
        if !dry_run {
            fs::remove_file(&path)?;
        }
    }
    Ok((n, bytes, kept))
}

/// Moves the loose chunk files of a format-2 store into packs: each is verified (blake3),
/// appended, made durable, and only then its file removed. Damaged ones stay and are counted.
pub fn repack_loose(store: &PackStore) -> Result<RepackReport> {
    let mut report = RepackReport::default();
    let Some(loose) = store.loose() else {
        return Ok(report);
    };
    let mut ids = Vec::new();
    loose.for_each(&mut |id| ids.push(id))?;
    let mut done: Vec<ChunkId> = Vec::new();
    let flush = |done: &mut Vec<ChunkId>| -> Result<()> {
        store.sync()?;
        for id in done.drain(..) {
            loose.remove(&id)?;
        }
        Ok(())
    };
    for id in ids {
        if store.locate(&id)?.is_some() {
            done.push(id);
            continue;
        }
        let bytes = loose.get(&id)?;
        if store.hasher().id(&bytes) != id {
            report.damaged += 1;
            continue;
        }
        store.put(&id, &bytes)?;
        report.chunks += 1;
        report.bytes += bytes.len() as u64;
        done.push(id);
        if done.len() >= 4096 {
            flush(&mut done)?;
        }
    }
    flush(&mut done)?;
    loose.sync()?;
    Ok(report)
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepackReport {
    pub chunks: u64,
    pub bytes: u64,
    /// Loose chunk files whose content does not match their name (left in place).
    pub damaged: u64,
}

/// One problem `verify_packs` found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackProblem {
    pub pack: String,
    pub offset: Option<u64>,
    /// The live chunk whose data is affected, when there is one (hex).
    pub chunk: Option<String>,
    pub what: String,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PackCheck {
    pub packs: u64,
    pub records: u64,
    pub bytes_verified: u64,
    /// Packs of a remote volume whose local file was evicted (scanned only with verify_data,
    /// from the bucket).
    pub remote_packs: u64,
    pub problems: Vec<PackProblem>,
}

impl PackCheck {
    /// Live chunks whose record is damaged or missing.
    pub fn damaged_chunks(&self) -> impl Iterator<Item = ChunkId> + '_ {
        self.problems
            .iter()
            .filter_map(|p| p.chunk.as_deref().and_then(ChunkId::from_hex))
    }
}

/// Reads every pack the index knows and checks every record's header and payload checksum;
/// with `verify_data`, also decompresses every live record and checks its blake3. A live chunk
/// (one the index points at) with a bad record is reported with its id, so fsck can name files.
/// Memory: one pack at a time.
pub fn verify_packs(store: &PackStore, verify_data: bool) -> Result<PackCheck> {
    let mut check = PackCheck::default();
    for (id, row) in store.index().packs()? {
        if row.state == PackState::Retired {
            continue;
        }
        check.packs += 1;
        let name = pack_file_name(id);
        let problem = |offset, chunk, what: String| PackProblem {
            pack: name.clone(),
            offset,
            chunk,
            what,
        };
        let data = match fs::read(store.pack_path(id)) {
            Ok(d) => d,
            // Evicted from a remote volume's cache: fetched only to verify data.
            Err(e) if e.kind() == io::ErrorKind::NotFound && store.is_remote(id) => {
                check.remote_packs += 1;
                if !verify_data {
                    continue;
                }
                match store.read_pack(id, 0..row.len) {
                    Ok(d) => d,
                    Err(e) => {
                        check.problems.push(problem(
                            None,
                            None,
                            format!("cannot read the pack from the bucket: {e}"),
                        ));
                        continue;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                check
                    .problems
                    .push(problem(None, None, "pack file is missing".into()));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if let Err(e) = decode_pack_header(&data) {
            check.problems.push(problem(Some(0), None, e));
        }
        if (data.len() as u64) < row.len {
            check.problems.push(problem(
                None,
                None,
                format!("pack is {} bytes, the index says {}", data.len(), row.len),
            ));
        }
        let data = &data[..(row.len as usize).min(data.len())];
        let mut err = None;
        scan(data, |item| match item {
            ScanItem::Record {
                offset,
                header,
                payload_ok,
            } => {
                check.records += 1;
                let live = match store.locate(&header.id) {
                    Ok(Some(l)) => l.pack == id && l.offset == offset,
                    Ok(None) => false,
                    Err(e) => {
                        err = Some(e);
                        false
                    }
                };
                let chunk = live.then(|| header.id.to_hex());
                if !payload_ok {
                    check.problems.push(problem(
                        Some(offset),
                        chunk,
                        "record payload fails its checksum".into(),
                    ));
                } else if verify_data && live {
                    let s = offset as usize + RECORD_HEADER_LEN;
                    let payload = &data[s..s + header.payload_len() as usize];
                    check.bytes_verified += header.raw_len as u64;
                    let loc = Loc::of_record(id, offset, &header);
                    match store.open_payload(&header.id, &loc, payload) {
                        Err(_) => check.problems.push(problem(
                            Some(offset),
                            chunk,
                            "encrypted record fails authentication (damaged, or another key)"
                                .into(),
                        )),
                        Ok(stored) => {
                            let ok = decompress(header.codec, &stored, header.raw_len)
                                .is_ok_and(|raw| store.hasher().id(&raw) == header.id);
                            if !ok {
                                check.problems.push(problem(
                                    Some(offset),
                                    chunk,
                                    "chunk content does not match its name (blake3)".into(),
                                ));
                            }
                        }
                    }
                }
            }
            ScanItem::Garbage { offset, len } => check.problems.push(problem(
                Some(offset),
                None,
                format!("{len} bytes are no valid record"),
            )),
            ScanItem::Torn { offset } => check.problems.push(problem(
                Some(offset),
                None,
                "record runs past the pack's durable length".into(),
            )),
        });
        if let Some(e) = err {
            return Err(e);
        }
    }
    // The bucket of a remote volume: every uploaded pack there, intact (with verify_data).
    let mut bad_remote = std::collections::HashMap::new();
    if let Some(source) = store.source() {
        let found = source.check(verify_data).unwrap_or_else(|e| {
            check.problems.push(PackProblem {
                pack: "(bucket)".into(),
                offset: None,
                chunk: None,
                what: format!("the packs in the bucket could not be checked: {e}"),
            });
            Vec::new()
        });
        // A pack no chunk lives in any more may be gone from the bucket: `gc-bucket` deletes
        // what no volume names.
        let live: std::collections::HashSet<u64> = store
            .index()
            .packs()?
            .into_iter()
            .filter(|(_, r)| r.live_records > 0)
            .map(|(id, _)| id)
            .collect();
        for (pack, what) in found {
            if !live.contains(&pack) {
                continue;
            }
            check.problems.push(PackProblem {
                pack: pack_file_name(pack),
                offset: None,
                chunk: None,
                what: what.clone(),
            });
            bad_remote.insert(pack, what);
        }
    }
    // Index entries that point where no matching record starts.
    let mut bad = Vec::new();
    store.index().for_each(&mut |cid, loc| {
        if let Some(p) = check_loc(store, &cid, &loc) {
            bad.push(p);
        } else if let Some(what) = bad_remote.get(&loc.pack)
            && !store.is_local(loc.pack)
        {
            bad.push(PackProblem {
                pack: pack_file_name(loc.pack),
                offset: Some(loc.offset),
                chunk: Some(cid.to_hex()),
                what: format!("evicted pack unreadable from the bucket: {what}"),
            });
        }
    })?;
    check.problems.extend(bad);
    Ok(check)
}

/// Whether the record at `loc` is chunk `id` with the lengths the index says; a problem
/// otherwise. Reads only the record header.
pub fn check_loc(store: &PackStore, id: &ChunkId, loc: &Loc) -> Option<PackProblem> {
    let name = pack_file_name(loc.pack);
    let problem = |what: String| {
        Some(PackProblem {
            pack: name.clone(),
            offset: Some(loc.offset),
            chunk: Some(id.to_hex()),
            what,
        })
    };
    let f = match File::open(store.pack_path(loc.pack)) {
        Ok(f) => f,
        // Evicted from a remote volume's cache: checked by `verify_packs` with verify_data.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && store.is_remote(loc.pack) => {
            return None;
        }
        Err(e) => return problem(format!("cannot open the pack: {e}")),
    };
    let mut h = [0u8; RECORD_HEADER_LEN];
    if let Err(e) = f.read_exact_at(&mut h, loc.offset) {
        return problem(format!("cannot read the record: {e}"));
    }
    match RecordHeader::decode(&h) {
        Some(h)
            if h.id == *id
                && h.stored_len == loc.stored_len
                && h.raw_len == loc.raw_len
                && h.codec == loc.codec =>
        {
            let end = loc.end();
            match f.metadata() {
                Ok(m) if m.len() >= end => None,
                _ => problem("the record runs past the end of the pack".into()),
            }
        }
        Some(_) => problem("the index points at a record of another chunk".into()),
        None => problem("no valid record header where the index points".into()),
    }
}
