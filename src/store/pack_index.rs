//! The pack index: chunk id -> location in a pack, and per-pack figures, kept in redb
//! (`STORE/index.redb`).
//!
//! The index is the pack store's own database, not a table of `meta.redb`: the store layer
//! knows nothing of inodes, and redb allows one writer at a time, while the filesystem keeps a
//! metadata write transaction open for its group commit. The order of commits keeps the two
//! consistent: at every durable point the store commits its index durably before the
//! filesystem commits metadata durably (`ChunkStore::sync`), so every chunk durable metadata
//! names has a durable index entry. The reverse may not hold (a chunk put but never committed
//! by the filesystem): such entries are garbage that `gc` removes.
//!
//! Tables (all integers little-endian; `tests/golden_pack.rs` pins the encodings):
//!
//! | table | key | value |
//! |---|---|---|
//! | `locs` | chunk id [32] | 32-byte [`Loc`]: pack u64, record offset u64, stored_len u32, raw_len u32, codec u8, nonce_len u8, mac_len u8, key id u8, reserved u32 |
//! | `packs` | pack id u64 | 32-byte [`PackRow`]: durable length u64, live bytes u64, live records u64, state u8, reserved [7] |
//! | `meta` | &str | `format` (u64), `codec` (text), `next_pack` (u64), `stored_bytes` (u64), `pack_target` (u64), `rebuilding` (u64: 1 while a rebuild from the packs is under way) |

use super::pack::{PACK_HEADER_LEN, RECORD_HEADER_LEN, RecordHeader};
use crate::error::{FsError, Result};
use crate::hash::ChunkId;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

const LOCS: TableDefinition<&[u8; 32], &[u8; 32]> = TableDefinition::new("locs");
const PACKS: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("packs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Version of the index schema.
pub const INDEX_FORMAT: u64 = 1;

/// Where a chunk's record lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub pack: u64,
    /// Offset of the record (its header) in the pack.
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: u8,
    pub nonce_len: u8,
    pub mac_len: u8,
    pub key_id: u8,
}

impl Loc {
    /// Where the record with header `h` at `offset` of pack `pack` lies.
    pub fn of_record(pack: u64, offset: u64, h: &RecordHeader) -> Loc {
        Loc {
            pack,
            offset,
            stored_len: h.stored_len,
            raw_len: h.raw_len,
            codec: h.codec,
            nonce_len: h.nonce_len,
            mac_len: h.mac_len,
            key_id: h.key_id,
        }
    }

    pub fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&self.pack.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.stored_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.raw_len.to_le_bytes());
        b[24] = self.codec;
        b[25] = self.nonce_len;
        b[26] = self.mac_len;
        b[27] = self.key_id;
        b
    }

    pub fn decode(b: &[u8; 32]) -> Loc {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        Loc {
            pack: u64_at(0),
            offset: u64_at(8),
            stored_len: u32_at(16),
            raw_len: u32_at(20),
            codec: b[24],
            nonce_len: b[25],
            mac_len: b[26],
            key_id: b[27],
        }
    }

    /// Bytes of the whole record (header, nonce, stored bytes, MAC).
    pub fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64
            + self.nonce_len as u64
            + self.stored_len as u64
            + self.mac_len as u64
    }

    /// Offset of the stored bytes in the pack.
    /// (Saturating: a damaged index entry gives an offset past any pack, not an overflow.)
    pub fn stored_start(&self) -> u64 {
        self.offset
            .saturating_add(RECORD_HEADER_LEN as u64 + self.nonce_len as u64)
    }

    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.record_len())
    }
}

/// The life of a pack file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackState {
    /// Being appended to by a running store.
    Open = 0,
    /// Complete: never written again.
    Sealed = 1,
    /// Compacted away: its live chunks live elsewhere now; the file is deleted (at once, or
    /// at the next open after a crash).
    Retired = 2,
}

/// What the index knows of one pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackRow {
    /// Bytes of the pack known durable: a longer file has a torn or uncommitted tail.
    pub len: u64,
    /// Bytes of records the index points at.
    pub live_bytes: u64,
    pub live_records: u64,
    pub state: PackState,
}

impl PackRow {
    fn new() -> PackRow {
        PackRow {
            len: PACK_HEADER_LEN,
            live_bytes: 0,
            live_records: 0,
            state: PackState::Open,
        }
    }

    /// Bytes of the pack no live chunk uses.
    pub fn dead_bytes(&self) -> u64 {
        self.len.saturating_sub(PACK_HEADER_LEN + self.live_bytes)
    }

    pub fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..16].copy_from_slice(&self.live_bytes.to_le_bytes());
        b[16..24].copy_from_slice(&self.live_records.to_le_bytes());
        b[24] = self.state as u8;
        b
    }

    pub fn decode(b: &[u8; 32]) -> PackRow {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        PackRow {
            len: u64_at(0),
            live_bytes: u64_at(8),
            live_records: u64_at(16),
            state: match b[24] {
                0 => PackState::Open,
                2 => PackState::Retired,
                _ => PackState::Sealed,
            },
        }
    }
}

/// One change to the index.
#[derive(Clone, Debug)]
pub enum IndexOp {
    /// The chunk now lives at this location (any older record of it becomes dead).
    Put(ChunkId, Loc),
    /// The chunk is gone.
    Remove(ChunkId),
    /// Compaction moved the chunk: applied only if it still lives at `from`.
    Move {
        id: ChunkId,
        from: Loc,
        to: Loc,
    },
    /// A pack's durable length and state (live figures are kept).
    Pack {
        id: u64,
        len: u64,
        state: PackState,
    },
    /// Mark a pack retired, only if no chunk lives in it any more (after the moves before it
    /// in the same transaction); otherwise it stays as it is.
    RetireIfDead(u64),
    /// Forget a pack (its file is gone).
    DropPack(u64),
    SetMeta(&'static str, Vec<u8>),
}

pub struct PackIndex {
    db: parking_lot::RwLock<Option<Database>>,
    path: PathBuf,
}

fn u64_of(v: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(v.try_into().ok()?))
}

impl PackIndex {
    /// Creates an empty index.
    pub fn create(path: &Path) -> Result<PackIndex> {
        let db = Database::builder()
            .set_cache_size(crate::meta::db_cache())
            .create(path)?;
        let idx = PackIndex {
            db: parking_lot::RwLock::new(Some(db)),
            path: path.to_path_buf(),
        };
        idx.apply(
            &[
                IndexOp::SetMeta("format", INDEX_FORMAT.to_le_bytes().to_vec()),
                IndexOp::SetMeta("next_pack", 1u64.to_le_bytes().to_vec()),
            ],
            true,
        )?;
        Ok(idx)
    }

    /// Opens an existing index, checking its format.
    pub fn open(path: &Path) -> Result<PackIndex> {
        let db = Database::builder()
            .set_cache_size(crate::meta::db_cache())
            .open(path)?;
        let idx = PackIndex {
            db: parking_lot::RwLock::new(Some(db)),
            path: path.to_path_buf(),
        };
        match idx.meta_u64("format")? {
            Some(INDEX_FORMAT) => Ok(idx),
            Some(v) => Err(FsError::Corrupt(format!(
                "pack index format {v} is not supported by this dedupfs ({INDEX_FORMAT})"
            ))),
            None => Err(FsError::Corrupt("pack index has no format version".into())),
        }
    }

    fn read<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Result<T>) -> Result<T> {
        // Recursive: a `for_each` callback may look chunks up (fsck's stat), and a plain read
        // lock taken again while a writer (the reopen after a failed commit) waits deadlocks.
        let g = self.db.read_recursive();
        let db = g
            .as_ref()
            .ok_or_else(|| FsError::Db("pack index is closed".into()))?;
        let tx = db.begin_read()?;
        f(&tx)
    }

    pub fn get(&self, id: &ChunkId) -> Result<Option<Loc>> {
        self.read(|tx| {
            let t = match tx.open_table(LOCS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            Ok(t.get(&id.0)?.map(|v| Loc::decode(v.value())))
        })
    }

    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.read(|tx| {
            let t = match tx.open_table(META) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            Ok(t.get(key)?.map(|v| v.value().to_vec()))
        })
    }

    pub fn meta_u64(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.meta(key)?.as_deref().and_then(u64_of))
    }

    /// Every pack the index knows, in id order.
    pub fn packs(&self) -> Result<Vec<(u64, PackRow)>> {
        self.read(|tx| {
            let t = match tx.open_table(PACKS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((k.value(), PackRow::decode(v.value())));
            }
            Ok(out)
        })
    }

    /// A read snapshot of the whole index (for [`PackIndex::copy_snapshot`]).
    pub fn begin_read(&self) -> Result<redb::ReadTransaction> {
        let g = self.db.read_recursive();
        let db = g
            .as_ref()
            .ok_or_else(|| FsError::Db("pack index is closed".into()))?;
        Ok(db.begin_read()?)
    }

    /// Copies every table of the read snapshot `tx` into a new index file `dst` (committed
    /// durably). Returns the packs the copy knows, retired ones left out.
    pub fn copy_snapshot(tx: &redb::ReadTransaction, dst: &Path) -> Result<Vec<(u64, PackRow)>> {
        let db = Database::builder().set_cache_size(16 << 20).create(dst)?;
        let mut w = db.begin_write()?;
        fn copy<K: redb::Key + 'static, V: redb::Value + 'static>(
            src: &redb::ReadTransaction,
            dst: &redb::WriteTransaction,
            def: TableDefinition<K, V>,
        ) -> Result<()> {
            let from = match src.open_table(def) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let mut to = dst.open_table(def)?;
            for row in from.iter()? {
                let (k, v) = row?;
                to.insert(k.value(), v.value())?;
            }
            Ok(())
        }
        copy(tx, &w, LOCS)?;
        copy(tx, &w, PACKS)?;
        copy(tx, &w, META)?;
        w.set_durability(Durability::Immediate)?;
        w.commit()?;
        drop(db);
        std::fs::File::open(dst)?.sync_all()?;
        let mut packs = Vec::new();
        if let Ok(t) = tx.open_table(PACKS) {
            for row in t.iter()? {
                let (k, v) = row?;
                let r = PackRow::decode(v.value());
                if r.state != PackState::Retired {
                    packs.push((k.value(), r));
                }
            }
        }
        Ok(packs)
    }

    /// Calls `f` with every chunk and its location.
    pub fn for_each(&self, f: &mut dyn FnMut(ChunkId, Loc)) -> Result<()> {
        self.read(|tx| {
            let t = match tx.open_table(LOCS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            for row in t.iter()? {
                let (k, v) = row?;
                f(ChunkId(*k.value()), Loc::decode(v.value()));
            }
            Ok(())
        })
    }

    /// Applies `ops` in one transaction, keeping the per-pack live figures and the stored-bytes
    /// total in step. After a failed commit (a full disk) the database is reopened, as
    /// `MetaDb` does: the changes are lost, and the caller still holds them to retry.
    pub fn apply(&self, ops: &[IndexOp], durable: bool) -> Result<()> {
        let out = self.try_apply(ops, durable);
        if out.is_err() {
            let mut g = self.db.write();
            g.take();
            match Database::builder()
                .set_cache_size(crate::meta::db_cache())
                .open(&self.path)
            {
                Ok(db) => *g = Some(db),
                Err(e) => tracing::error!("cannot reopen the pack index: {e}"),
            }
        }
        out
    }

    fn try_apply(&self, ops: &[IndexOp], durable: bool) -> Result<()> {
        let g = self.db.read();
        let db = g
            .as_ref()
            .ok_or_else(|| FsError::Db("pack index is closed".into()))?;
        let mut tx = db.begin_write()?;
        tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        {
            let mut locs = tx.open_table(LOCS)?;
            let mut packs = tx.open_table(PACKS)?;
            let mut meta = tx.open_table(META)?;
            let mut stored: i64 = 0;
            let mut adjust =
                |packs: &mut redb::Table<u64, &[u8; 32]>, loc: &Loc, sign: i64| -> Result<()> {
                    let row = packs.get(loc.pack)?.map(|v| PackRow::decode(v.value()));
                    let mut row = match row {
                        Some(r) => r,
                        // A removal from a pack already forgotten: no row to bring back.
                        None if sign < 0 => {
                            stored -= loc.stored_len as i64;
                            return Ok(());
                        }
                        None => PackRow::new(),
                    };
                    let rl = loc.record_len();
                    if sign > 0 {
                        row.live_bytes += rl;
                        row.live_records += 1;
                    } else {
                        row.live_bytes = row.live_bytes.saturating_sub(rl);
                        row.live_records = row.live_records.saturating_sub(1);
                    }
                    packs.insert(loc.pack, &row.encode())?;
                    stored += sign * loc.stored_len as i64;
                    Ok(())
                };
            for op in ops {
                match op {
                    IndexOp::Put(id, loc) => {
                        let old = locs
                            .insert(&id.0, &loc.encode())?
                            .map(|v| Loc::decode(v.value()));
                        if let Some(old) = old {
                            adjust(&mut packs, &old, -1)?;
                        }
                        adjust(&mut packs, loc, 1)?;
                    }
                    IndexOp::Remove(id) => {
                        let old = locs.remove(&id.0)?.map(|v| Loc::decode(v.value()));
                        if let Some(old) = old {
                            adjust(&mut packs, &old, -1)?;
                        }
                    }
                    IndexOp::Move { id, from, to } => {
                        let cur = locs.get(&id.0)?.map(|v| Loc::decode(v.value()));
                        if cur == Some(*from) {
                            locs.insert(&id.0, &to.encode())?;
                            adjust(&mut packs, from, -1)?;
                            adjust(&mut packs, to, 1)?;
                        }
                    }
                    IndexOp::Pack { id, len, state } => {
                        let mut row = packs
                            .get(*id)?
                            .map(|v| PackRow::decode(v.value()))
                            .unwrap_or_else(PackRow::new);
                        row.len = *len;
                        row.state = *state;
                        packs.insert(*id, &row.encode())?;
                    }
                    IndexOp::RetireIfDead(id) => {
                        let row = packs.get(*id)?.map(|v| PackRow::decode(v.value()));
                        if let Some(mut row) = row.filter(|r| r.live_records == 0) {
                            row.state = PackState::Retired;
                            packs.insert(*id, &row.encode())?;
                        }
                    }
                    IndexOp::DropPack(id) => {
                        packs.remove(*id)?;
                    }
                    IndexOp::SetMeta(k, v) => {
                        meta.insert(*k, v.as_slice())?;
                    }
                }
            }
            if stored != 0 {
                let cur = meta
                    .get("stored_bytes")?
                    .and_then(|v| u64_of(v.value()))
                    .unwrap_or(0);
                let new = (cur as i64 + stored).max(0) as u64;
                meta.insert("stored_bytes", new.to_le_bytes().as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Empties the index of chunks and packs (before a rebuild from the packs).
    pub fn clear(&self) -> Result<()> {
        let g = self.db.read();
        let db = g
            .as_ref()
            .ok_or_else(|| FsError::Db("pack index is closed".into()))?;
        let tx = db.begin_write()?;
        tx.delete_table(LOCS)?;
        tx.delete_table(PACKS)?;
        {
            let mut meta = tx.open_table(META)?;
            meta.insert("stored_bytes", 0u64.to_le_bytes().as_slice())?;
            // Until the rebuild that follows sets it back to 0, an open rebuilds again: a
            // half-rebuilt index would make packs look unknown (and gc delete them).
            meta.insert("rebuilding", 1u64.to_le_bytes().as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(pack: u64, offset: u64, stored: u32) -> Loc {
        Loc {
            pack,
            offset,
            stored_len: stored,
            raw_len: stored * 2,
            codec: 1,
            nonce_len: 0,
            mac_len: 0,
            key_id: 0,
        }
    }

    #[test]
    fn live_figures_follow_puts_moves_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let idx = PackIndex::create(&dir.path().join("index.redb")).unwrap();
        let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        let (la, lb) = (loc(1, 32, 100), loc(1, 196, 50));
        idx.apply(&[IndexOp::Put(a, la), IndexOp::Put(b, lb)], false)
            .unwrap();
        let row = idx.packs().unwrap()[0].1;
        assert_eq!(row.live_records, 2);
        assert_eq!(row.live_bytes, la.record_len() + lb.record_len());
        assert_eq!(idx.meta_u64("stored_bytes").unwrap(), Some(150));
        // A move that lost a race (the chunk is elsewhere by now) is not applied.
        let to = loc(2, 32, 100);
        idx.apply(
            &[IndexOp::Move {
                id: a,
                from: lb,
                to,
            }],
            false,
        )
        .unwrap();
        assert_eq!(idx.get(&a).unwrap(), Some(la));
        idx.apply(
            &[IndexOp::Move {
                id: a,
                from: la,
                to,
            }],
            false,
        )
        .unwrap();
        assert_eq!(idx.get(&a).unwrap(), Some(to));
        idx.apply(&[IndexOp::Remove(b)], true).unwrap();
        let packs = idx.packs().unwrap();
        assert_eq!(packs[0].1.live_records, 0);
        assert_eq!(packs[1].1.live_bytes, to.record_len());
        assert_eq!(idx.meta_u64("stored_bytes").unwrap(), Some(100));
        // A pack is retired only when nothing lives in it.
        idx.apply(&[IndexOp::RetireIfDead(2)], false).unwrap();
        assert_eq!(idx.packs().unwrap()[1].1.state, PackState::Open);
        idx.apply(&[IndexOp::RetireIfDead(1)], false).unwrap();
        assert_eq!(idx.packs().unwrap()[0].1.state, PackState::Retired);
        drop(idx);
        let idx = PackIndex::open(&dir.path().join("index.redb")).unwrap();
        assert_eq!(idx.get(&a).unwrap(), Some(to));
        assert_eq!(idx.get(&b).unwrap(), None);
        // A removal from a forgotten pack does not bring its row back.
        idx.apply(&[IndexOp::DropPack(2), IndexOp::Remove(a)], false)
            .unwrap();
        let packs = idx.packs().unwrap();
        assert_eq!(packs.len(), 1, "{packs:?}");
        assert_eq!(packs[0].0, 1);
    }
}
