//! `dedupfs stats`: logical, referenced and unique (physical) bytes, stored bytes after
//! compression, bytes on disk, chunk count, dedup and compression ratios.

use crate::error::Result;
use crate::fs::{RequestCounts, Usage, usage_of};
use crate::meta::MetaDb;
use crate::store::ChunkStore;
use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StatsReport {
    pub logical_bytes: u64,
    pub referenced_bytes: u64,
    pub physical_bytes: u64,
    pub chunk_count: u64,
    pub files: u64,
    /// Bytes of live chunks as stored, after compression.
    pub stored_bytes: u64,
    /// Bytes of the store's pack files on disk, dead records included.
    pub disk_bytes: u64,
    /// Bytes of pack files no live chunk uses (compaction reclaims them).
    pub dead_bytes: u64,
    pub packs: u64,
    /// referenced / physical: how many times each stored byte is used on average.
    pub dedup_ratio: f64,
    /// physical / stored: what compression saves on the unique chunks.
    pub compression_ratio: f64,
    /// True when the figures come from a mounted daemon's last published snapshot.
    pub from_mounted_daemon: bool,
    /// Requests the mounted daemon served since it was mounted, by operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<RequestCounts>,
    /// A remote volume's upload backlog and last publication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<crate::remote::sync::RemoteStatus>,
}

impl StatsReport {
    pub fn from_usage(u: Usage, from_mounted_daemon: bool) -> StatsReport {
        StatsReport {
            logical_bytes: u.logical_bytes,
            referenced_bytes: u.referenced_bytes,
            physical_bytes: u.physical_bytes,
            chunk_count: u.chunk_count,
            files: u.files,
            stored_bytes: u.store.stored_bytes,
            disk_bytes: u.store.disk_bytes,
            dead_bytes: u.store.dead_bytes,
            packs: u.store.packs,
            compression_ratio: if u.store.stored_bytes == 0 {
                1.0
            } else {
                u.physical_bytes as f64 / u.store.stored_bytes as f64
            },
            dedup_ratio: if u.physical_bytes == 0 {
                1.0
            } else {
                u.referenced_bytes as f64 / u.physical_bytes as f64
            },
            from_mounted_daemon,
            requests: None,
            remote: None,
        }
    }
}

pub fn stats(meta: &MetaDb, store: &dyn ChunkStore) -> Result<StatsReport> {
    Ok(StatsReport::from_usage(usage_of(meta, store)?, false))
}
