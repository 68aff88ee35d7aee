//! Shared dedup: the chunks that the other volumes under the same bucket prefix have published,
//! so that a chunk one volume uploaded is named, not uploaded again, by another; and the bucket
//! gc marks this store has installed (packs it must not start naming: gc.rs, docs/design.md
//! "Shared dedup and gc").
//!
//! `STORE/remote/shared.redb`, a cache rebuilt from the bucket at any time (deleting it loses
//! nothing but dedup hits until the next refresh):
//!
//! ```text
//! chunks     chunk id (32)            -> location (32, pack = a shared-pack number below)
//! packs      shared-pack number (u64) -> origin volume (u64 LE), origin pack (u64 LE),
//!                                        length (u64 LE), hash (16): 40 bytes
//! pack_ids   origin volume, origin pack, hash (32) -> shared-pack number
//! seen       volume name              -> generation (u64 LE), writer (u64 LE) merged last
//! condemned  origin volume, origin pack (16) -> epoch of the mark that listed it
//! meta       "installed_mark", "next_pack" -> u64 LE
//! ```
//!
//! The one rule the gc protocol needs from this side: a lookup and the recording of its
//! answer in the pack index happen under `gate` (read), and installing a mark takes `gate`
//! (write). So once `install_marks` returns, no chunk can newly be placed in a condemned pack,
//! and every placement made before is in the pack index the next durable point copies.

use super::config::{self, GC_MARKS, Keys};
use super::generation::{GenerationFile, Origin};
use crate::error::Result;
use crate::hash::ChunkId;
use crate::store::pack_index::{Loc, PackIndex};
use crate::store::remote::RemoteStore;
use parking_lot::RwLock;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;

const CHUNKS: TableDefinition<&[u8; 32], &[u8; 32]> = TableDefinition::new("chunks");
const PACKS: TableDefinition<u64, &[u8; 40]> = TableDefinition::new("packs");
const PACK_IDS: TableDefinition<&[u8; 32], u64> = TableDefinition::new("pack_ids");
const SEEN: TableDefinition<&str, &[u8; 16]> = TableDefinition::new("seen");
const CONDEMNED: TableDefinition<&[u8; 16], u64> = TableDefinition::new("condemned");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub const FILE: &str = "shared.redb";

/// A bucket gc mark (`gc/marks/EPOCH`): the packs no volume's head named when it was made.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Mark {
    pub epoch: u64,
    pub created_unix: u64,
    /// Object keys (`packs/VOLID/ID-HASH`).
    pub candidates: Vec<String>,
}

/// A chunk another volume has, as `lookup` finds it.
#[derive(Clone, Copy, Debug)]
pub struct SharedChunk {
    pub origin: Origin,
    pub pack_len: u64,
    pub pack_hash: [u8; 16],
    /// Offset, lengths and codec of its record (`pack` is meaningless here).
    pub loc: Loc,
}

/// What a refresh merged.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RefreshReport {
    pub volumes: u64,
    pub generations_merged: u64,
    pub chunks_added: u64,
}

pub struct SharedIndex {
    db: Database,
    /// Read: a lookup until its answer is recorded. Write: installing marks.
    gate: RwLock<()>,
}

fn origin_key(o: Origin) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&o.volume.to_le_bytes());
    k[8..].copy_from_slice(&o.pack.to_le_bytes());
    k
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default())
}

impl SharedIndex {
    pub fn open(state_dir: &Path) -> Result<SharedIndex> {
        let db = Database::builder()
            .set_cache_size(16 << 20)
            .create(state_dir.join(FILE))?;
        let w = db.begin_write()?;
        {
            w.open_table(CHUNKS)?;
            w.open_table(PACKS)?;
            w.open_table(PACK_IDS)?;
            w.open_table(SEEN)?;
            w.open_table(CONDEMNED)?;
            w.open_table(META)?;
        }
        w.commit()?;
        Ok(SharedIndex {
            db,
            gate: RwLock::new(()),
        })
    }

    /// The newest mark installed (0: none).
    pub fn installed_mark(&self) -> Result<u64> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(META)?
            .get("installed_mark")?
            .map_or(0, |v| v.value()))
    }

    /// Where another volume keeps chunk `id`, unless its pack is condemned by a mark. `then`
    /// runs with the answer while no mark can be installed (it records the placement).
    pub fn lookup<T>(
        &self,
        id: &ChunkId,
        then: impl FnOnce(SharedChunk) -> Result<T>,
    ) -> Result<Option<T>> {
        let _gate = self.gate.read();
        let r = self.db.begin_read()?;
        let Some(loc) = r
            .open_table(CHUNKS)?
            .get(&id.0)?
            .map(|v| Loc::decode(v.value()))
        else {
            return Ok(None);
        };
        let Some(p) = r.open_table(PACKS)?.get(loc.pack)?.map(|v| *v.value()) else {
            return Ok(None);
        };
        let origin = Origin {
            volume: u64_at(&p, 0),
            pack: u64_at(&p, 8),
        };
        if r.open_table(CONDEMNED)?.get(&origin_key(origin))?.is_some() {
            return Ok(None);
        }
        let found = SharedChunk {
            origin,
            pack_len: u64_at(&p, 16),
            pack_hash: p[24..40].try_into().unwrap_or_default(),
            loc,
        };
        then(found).map(Some)
    }

    /// Installs every mark in the bucket newer than the last one installed: their packs are
    /// never chosen again. Returns the newest mark installed. After it returns, every
    /// placement in a condemned pack is one made before (see the module comment).
    pub fn install_marks(&self, client: &RemoteStore) -> Result<u64> {
        let installed = self.installed_mark()?;
        let mut epochs: Vec<(u64, String)> = client
            .list(GC_MARKS)?
            .into_iter()
            .filter_map(|o| config::parse_epoch(&o.key).map(|e| (e, o.key)))
            .filter(|(e, _)| *e > installed)
            .collect();
        epochs.sort();
        if epochs.is_empty() {
            return Ok(installed);
        }
        let mut marks = Vec::new();
        let mut newest = installed;
        for (e, key) in &epochs {
            let raw = match client.get(key) {
                Ok(r) => r,
                // Removed since the listing (by hand: a sweep needs this store's
                // acknowledgement first): nothing of it is deleted.
                Err(crate::error::RemoteError::NotFound { .. }) => {
                    newest = *e;
                    continue;
                }
                Err(err) => return Err(err.into()),
            };
            match serde_json::from_slice::<Mark>(&raw) {
                Ok(m) if m.epoch == *e => {
                    marks.push(m);
                    newest = *e;
                }
                // Installed up to the one before: this store acknowledges no further, and the
                // bucket gc waits (and says why) until the object is deleted.
                bad => {
                    let why =
                        bad.map_or_else(|e| e.to_string(), |m| format!("names epoch {}", m.epoch));
                    tracing::error!(
                        "bucket gc mark {key} is damaged ({why}): delete it (only a sweep of it \
                         would delete packs); marks are acknowledged up to the one before"
                    );
                    break;
                }
            }
        }
        if newest == installed && marks.is_empty() {
            return Ok(installed);
        }
        let _gate = self.gate.write();
        let mut w = self.db.begin_write()?;
        w.set_durability(Durability::Immediate)?;
        {
            let mut condemned = w.open_table(CONDEMNED)?;
            for m in &marks {
                for key in &m.candidates {
                    if let Some((volume, pack, _)) = config::parse_pack_key(key) {
                        condemned.insert(&origin_key(Origin { volume, pack }), m.epoch)?;
                    }
                }
            }
            w.open_table(META)?.insert("installed_mark", newest)?;
        }
        // Every volume is merged again at the next refresh: a chunk known in a pack just
        // condemned (its volume compacted it) takes the place that volume's head gives now,
        // even if that head merged already.
        if !marks.is_empty() {
            w.delete_table(SEEN)?;
            w.open_table(SEEN)?;
        }
        w.commit()?;
        Ok(newest)
    }

    /// Merges the newest readable generation of every other volume under the prefix that
    /// changed since the last refresh. `own`: this volume's id (its own packs are skipped).
    ///
    /// Only volumes encrypted with the same key (`key`), or unencrypted ones when `key` is
    /// `None`, are merged: a key defines a dedup domain (chunk names are keyed with it, and
    /// another key's records would not open).
    pub fn refresh(
        &self,
        client: &RemoteStore,
        own: u64,
        work: &Path,
        volume_key: Option<&crate::crypto::Key>,
    ) -> Result<RefreshReport> {
        let mut report = RefreshReport::default();
        for name in super::attach::list_volumes(client)? {
            let keys = Keys::for_volume(&name, "");
            let Ok((info, volume)) = super::attach::volume_info(client, &name) else {
                continue;
            };
            if volume == own || info.key_id != volume_key.map(|k| k.id_hex()) {
                continue;
            }
            report.volumes += 1;
            let seen = {
                let r = self.db.begin_read()?;
                r.open_table(SEEN)?.get(name.as_str())?.map(|v| *v.value())
            };
            // The head only. Not an older generation when it cannot be read: that one may name
            // packs a bucket gc has deleted since (this volume is skipped until the next
            // refresh; it costs dedup hits, never data).
            let Some((g, w, key)) = super::sync::list_generations(client, &keys)?
                .into_iter()
                .next()
            else {
                continue;
            };
            let mut tag = [0u8; 16];
            tag[..8].copy_from_slice(&g.to_le_bytes());
            tag[8..].copy_from_slice(&w.to_le_bytes());
            if seen == Some(tag) {
                continue;
            }
            let decoded = super::generation::fetch(client, &key, volume_key, work);
            match decoded {
                Ok(generation)
                    if (generation.header.generation, generation.header.writer) == (g, w) =>
                {
                    report.chunks_added += self.merge(&name, tag, volume, &generation, work)?;
                    report.generations_merged += 1;
                }
                Ok(_) => tracing::warn!("{key} names another generation; volume {name} skipped"),
                Err(e) => tracing::warn!("{key}: {e}; volume {name} skipped for shared dedup"),
            }
        }
        Ok(report)
    }

    /// Adds the chunks of `g` (volume `volume`) that are not known yet.
    fn merge(
        &self,
        name: &str,
        tag: [u8; 16],
        volume: u64,
        g: &GenerationFile,
        work: &Path,
    ) -> Result<u64> {
        let tmp = work.join(".shared-index.redb");
        let _ = std::fs::remove_file(&tmp);
        let result = (|| {
            {
                let f = std::fs::File::create(&tmp)?;
                let mut w = std::io::BufWriter::new(&f);
                g.copy_index(&mut w)?;
                std::io::Write::flush(&mut w)?;
            }
            let index = PackIndex::open(&tmp)?;
            let refs: std::collections::HashMap<u64, super::generation::PackRef> =
                g.packs.iter().map(|p| (p.id, *p)).collect();
            let mut w = self.db.begin_write()?;
            w.set_durability(Durability::Immediate)?;
            let mut added = 0;
            {
                let mut chunks = w.open_table(CHUNKS)?;
                let mut packs = w.open_table(PACKS)?;
                let mut pack_ids = w.open_table(PACK_IDS)?;
                let condemned = w.open_table(CONDEMNED)?;
                let mut meta = w.open_table(META)?;
                let mut next = meta.get("next_pack")?.map_or(1, |v| v.value());
                let mut err = None;
                index.for_each(&mut |id, loc| {
                    if err.is_some() {
                        return;
                    }
                    let step = (|| -> Result<()> {
                        let Some(p) = refs.get(&loc.pack) else {
                            return Ok(());
                        };
                        let origin = p.origin.unwrap_or(Origin { volume, pack: p.id });
                        let ok = origin_key(origin);
                        if condemned.get(&ok)?.is_some() {
                            return Ok(());
                        }
                        // A chunk known already keeps its place, unless that pack is condemned
                        // (its volume compacted it, or dropped it): this one takes over, or
                        // the chunk would be stored again here for good.
                        let known = chunks.get(&id.0)?.map(|v| Loc::decode(v.value()));
                        if let Some(old) = known {
                            let row = packs.get(old.pack)?.map(|v| *v.value());
                            let old_origin = row.map(|p| Origin {
                                volume: u64_at(&p, 0),
                                pack: u64_at(&p, 8),
                            });
                            let live = match old_origin {
                                Some(o) => condemned.get(&origin_key(o))?.is_none(),
                                None => false,
                            };
                            if live {
                                return Ok(());
                            }
                        }
                        let mut pk = [0u8; 32];
                        pk[..16].copy_from_slice(&ok);
                        pk[16..].copy_from_slice(&p.hash);
                        let known = pack_ids.get(&pk)?.map(|v| v.value());
                        let sp = match known {
                            Some(sp) => sp,
                            None => {
                                let sp = next;
                                next += 1;
                                let mut row = [0u8; 40];
                                row[..16].copy_from_slice(&ok);
                                row[16..24].copy_from_slice(&p.len.to_le_bytes());
                                row[24..].copy_from_slice(&p.hash);
                                packs.insert(sp, &row)?;
                                pack_ids.insert(&pk, sp)?;
                                sp
                            }
                        };
                        chunks.insert(&id.0, &Loc { pack: sp, ..loc }.encode())?;
                        added += 1;
                        Ok(())
                    })();
                    if let Err(e) = step {
                        err = Some(e);
                    }
                })?;
                if let Some(e) = err {
                    return Err(e);
                }
                meta.insert("next_pack", next)?;
                w.open_table(SEEN)?.insert(name, &tag)?;
            }
            w.commit()?;
            Ok(added)
        })();
        let _ = std::fs::remove_file(&tmp);
        result
    }
}
