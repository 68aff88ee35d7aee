//! Remote volumes (issue 11): a volume whose packs and metadata live in an S3-compatible bucket,
//! with the store directory as its local cache and journal.
//!
//! - [`config`]: `STORE/remote.json` and the keys of a volume in the bucket.
//! - [`lease`]: one writer per volume: the lease object, judged by the object store's clock.
//! - [`generation`]: the metadata generation object (format, golden-tested).
//! - [`range_cache`]: cached byte ranges of evicted packs.
//! - [`packs`]: the uploaded-pack table and reads of evicted packs (the pack store's source).
//! - [`gc`]: `dedupfs gc-bucket`: deleting packs no volume names (mark, acknowledge, sweep).
//! - [`readers`]: read-only mounts hold the generation they serve against gc.
//! - [`shared`]: chunks of the other volumes under the prefix (shared dedup), gc marks.
//! - [`sync`]: a mounted volume's uploads, evictions and publications (fencing).
//! - [`attach`]: `init --remote` and `attach`.
//! - [`delete`]: `delete-volume`: a volume out of the bucket (its packs left to `gc-bucket`).

pub mod attach;
pub mod config;
pub mod delete;
pub mod gc;
pub mod generation;
pub mod lease;
pub mod packs;
pub mod range_cache;
pub mod readers;
pub mod shared;
pub mod sync;
