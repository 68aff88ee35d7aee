//! fsck's check of the chunk store: every live chunk exists with the right length (and, with
//! `verify_data`, the right blake3 hash); for a pack store, every record of every pack has a
//! valid header and payload checksum and every index entry points at its chunk's record; the
//! files that lost data are named; chunks and packs no metadata knows are reported for `gc`.

use super::{
    FindingKind, FsckReport, GARBAGE_LISTED, Item, PROGRESS_EVERY, Phase, Progress, Severity, item,
};
use crate::error::{FsError, Ino, Result};
use crate::hash::ChunkId;
use crate::meta::snapshot::Holders;
use crate::meta::{C_CHUNKS, RTx};
use crate::store::ChunkStore;
use crate::store::compact::verify_packs;
use std::collections::BTreeMap;

#[derive(Clone, Copy)]
enum Damage {
    Missing,
    Length(u64),
    Corrupt,
}

/// Checks the chunk files of live (and `extra`) chunks, names the files whose data is lost,
/// and reports chunk files no metadata knows.
pub(super) fn scan_store(
    r: &RTx,
    store: &dyn ChunkStore,
    verify: bool,
    extra: &[(ChunkId, u32)],
    holders: &Holders,
    report: &mut FsckReport,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<Item>> {
    use FindingKind as K;
    use Severity::{Error, Info, Warning};
    let total = r.counter(C_CHUNKS)?;
    progress(Progress {
        phase: Phase::Chunks,
        done: 0,
        total: Some(total),
    });
    let mut damaged: BTreeMap<ChunkId, (Damage, u32)> = BTreeMap::new();
    let packs = store.packs();
    let mut err: Option<FsError> = None;
    let mut check = |id: ChunkId, len: u32, report: &mut FsckReport| {
        if err.is_some() {
            return;
        }
        report.chunks_checked += 1;
        if report.chunks_checked.is_multiple_of(PROGRESS_EVERY) || verify {
            progress(Progress {
                phase: Phase::Chunks,
                done: report.chunks_checked,
                total: Some(total),
            });
        }
        // Chunks in packs are hashed by the pack scan below, pack by pack in file order;
        // here only their record header is checked. Loose chunk files are hashed here.
        let in_pack = packs.is_some_and(|p| matches!(p.locate(&id), Ok(Some(_))));
        let checked = if verify && !in_pack {
            store.get(&id).map(|b| {
                report.bytes_verified += b.len() as u64;
                (b.len() as u64, store.hasher().id(&b) == id)
            })
        } else {
            store.stat(&id).map(|n| (n, true))
        };
        match checked {
            Err(FsError::MissingChunk { .. }) => {
                damaged.insert(id, (Damage::Missing, len));
            }
            Err(e) => err = Some(e),
            Ok((n, _)) if n != len as u64 => {
                damaged.insert(id, (Damage::Length(n), len));
            }
            Ok((_, false)) => {
                damaged.insert(id, (Damage::Corrupt, len));
            }
            Ok((_, true)) => {}
        }
    };
    r.for_each_chunk(&mut |id, rc, len| {
        if rc > 0 {
            check(id, len, report);
        }
    })?;
    for &(id, len) in extra {
        check(id, len, report);
    }
    if let Some(e) = err {
        return Err(e);
    }

    let mut items = Vec::new();
    if let Some(packs) = packs {
        progress(Progress {
            phase: Phase::Packs,
            done: 0,
            total: None,
        });
        let check = verify_packs(packs, verify)?;
        report.bytes_verified += check.bytes_verified;
        report.packs_checked += check.packs;
        for p in &check.problems {
            let live = p
                .chunk
                .as_deref()
                .and_then(ChunkId::from_hex)
                .and_then(|id| match r.chunk(&id) {
                    Ok(Some((rc, len))) if rc > 0 => Some((id, len)),
                    _ => None,
                });
            // Damage to a chunk only a snapshot keeps is as serious: its files read EIO there.
            let held = p
                .chunk
                .as_deref()
                .and_then(ChunkId::from_hex)
                .is_some_and(|id| holders.holds(&id));
            let at = p
                .offset
                .map(|o| format!(" at offset {o}"))
                .unwrap_or_default();
            let mut it = item(
                K::PackDamaged,
                if live.is_some() || held {
                    Error
                } else {
                    Warning
                },
                format!(
                    "pack {}{at}: {}{}",
                    p.pack,
                    p.what,
                    if live.is_none() && held {
                        " (a chunk a snapshot keeps)"
                    } else {
                        ""
                    }
                ),
            );
            if let Some((id, len)) = live {
                damaged.entry(id).or_insert((Damage::Corrupt, len));
                it = it.chunk(&id);
            }
            items.push(it);
        }
        for (_, path) in packs.unknown_pack_files()? {
            items.push(item(
                K::UnknownPack,
                Info,
                format!(
                    "pack file {} is unknown to the index (written after the last durable point before a crash): garbage, run gc",
                    path.display()
                ),
            ));
        }
    }
    for (id, (d, len)) in &damaged {
        let (kind, msg) = match d {
            Damage::Missing => (K::MissingChunkFile, "chunk file is missing".to_string()),
            Damage::Length(actual) => (
                K::ChunkLengthMismatch,
                format!("chunk file has {actual} bytes, metadata says {len}"),
            ),
            Damage::Corrupt => (
                K::CorruptChunk,
                "chunk file content does not match its name (blake3)".to_string(),
            ),
        };
        items.push(item(kind, Error, msg).chunk(id));
    }
    if !damaged.is_empty() {
        // Name every file that references a damaged chunk.
        struct Lost {
            extents: u64,
            bytes: u64,
            first: ChunkId,
            ranges: Vec<(u64, u64)>,
        }
        let mut lost: BTreeMap<Ino, Lost> = BTreeMap::new();
        r.for_each_extent(&mut |ino, e| {
            if damaged.contains_key(&e.id) {
                let l = lost.entry(ino).or_insert(Lost {
                    extents: 0,
                    bytes: 0,
                    first: e.id,
                    ranges: Vec::new(),
                });
                l.extents += 1;
                l.bytes += e.len as u64;
                if l.ranges.len() < 8 {
                    l.ranges.push((e.offset, e.end()));
                }
            }
        })?;
        for (ino, l) in lost {
            let ranges: Vec<String> = l.ranges.iter().map(|(s, t)| format!("{s}..{t}")).collect();
            let more = if (l.ranges.len() as u64) < l.extents {
                ", ..."
            } else {
                ""
            };
            items.push(
                item(
                    K::FileDataLost,
                    Error,
                    format!(
                        "file lost data: {} bytes in {} chunks missing or corrupt (byte ranges {}{more}); reads there fail with EIO",
                        l.bytes,
                        l.extents,
                        ranges.join(", ")
                    ),
                )
                .ino(ino)
                .chunk(&l.first),
            );
        }
    }

    // Chunk files no metadata knows: garbage a crash left behind, for gc.
    progress(Progress {
        phase: Phase::StoreFiles,
        done: 0,
        total: None,
    });
    let mut garbage: Vec<ChunkId> = Vec::new();
    let mut garbage_count: u64 = 0;
    let mut garbage_bytes: u64 = 0;
    let mut err: Option<FsError> = None;
    store.for_each(&mut |id| {
        if err.is_some() {
            return;
        }
        match r.chunk(&id) {
            Ok(Some(_)) => {}
            Ok(None) if holders.holds(&id) => {}
            Ok(None) => {
                garbage_count += 1;
                match store.stat(&id) {
                    Ok(n) => garbage_bytes += n,
                    Err(FsError::MissingChunk { .. }) => {}
                    Err(e) => err = Some(e),
                }
                if garbage.len() < GARBAGE_LISTED {
                    garbage.push(id);
                }
            }
            Err(e) => err = Some(e),
        }
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    garbage.sort_unstable();
    for id in &garbage {
        items.push(
            item(
                K::GarbageChunk,
                Info,
                "chunk file is unknown to the metadata: garbage, run gc".into(),
            )
            .chunk(id),
        );
    }
    items.extend(check_snapshots(store, holders)?);
    if garbage_count > garbage.len() as u64 {
        items.push(item(
            K::GarbageChunk,
            Info,
            format!(
                "{garbage_count} chunk files ({garbage_bytes} bytes) in all are unknown to the metadata: garbage, run gc"
            ),
        ));
    }
    Ok(items)
}

/// Every chunk a snapshot names is in the store (its data is hashed by the pack scan with
/// `verify_data`, like the volume's own). Not those of interrupted deletions
/// (`Holders::deleting`): past the deletion's durable point their own chunks are gone.
fn check_snapshots(store: &dyn ChunkStore, holders: &Holders) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for s in &holders.dbs {
        let r = s.begin_read()?;
        let mut missing = 0u64;
        let mut first = None;
        let mut err = None;
        r.for_each_chunk(&mut |id, _, _| {
            if err.is_some() {
                return;
            }
            match store.stat(&id) {
                Ok(_) => {}
                Err(FsError::MissingChunk { .. }) => {
                    missing += 1;
                    first.get_or_insert(id);
                }
                Err(e) => err = Some(e),
            }
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        if let Some(id) = first {
            items.push(
                item(
                    FindingKind::SnapshotChunkMissing,
                    Severity::Error,
                    format!(
                        "snapshot {:?}: {missing} chunk(s) it names are missing from the store \
                         (its files read EIO there)",
                        s.info.name
                    ),
                )
                .chunk(&id),
            );
        }
    }
    Ok(items)
}
