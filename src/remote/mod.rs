//! Remote volumes (issue 11): a volume whose packs and metadata live in an S3-compatible bucket,
//! with the store directory as its local cache and journal.
//!
//! - [`lease`]: one writer per volume: the lease object, judged by the object store's clock.

pub mod lease;
