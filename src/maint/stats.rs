//! `dedupfs stats`: logical, referenced and physical bytes, chunk count, dedup ratio.

use crate::error::Result;
use crate::fs::{Usage, usage_of};
use crate::meta::MetaDb;
use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StatsReport {
    pub logical_bytes: u64,
    pub referenced_bytes: u64,
    pub physical_bytes: u64,
    pub chunk_count: u64,
    pub files: u64,
    /// referenced / physical: how many times each stored byte is used on average.
    pub dedup_ratio: f64,
    /// True when the figures come from a mounted daemon's last published snapshot.
    pub from_mounted_daemon: bool,
}

impl StatsReport {
    pub fn from_usage(u: Usage, from_mounted_daemon: bool) -> StatsReport {
        StatsReport {
            logical_bytes: u.logical_bytes,
            referenced_bytes: u.referenced_bytes,
            physical_bytes: u.physical_bytes,
            chunk_count: u.chunk_count,
            files: u.files,
            dedup_ratio: if u.physical_bytes == 0 {
                1.0
            } else {
                u.referenced_bytes as f64 / u.physical_bytes as f64
            },
            from_mounted_daemon,
        }
    }
}

pub fn stats(meta: &MetaDb) -> Result<StatsReport> {
    Ok(StatsReport::from_usage(usage_of(meta)?, false))
}
