//! dedupfs: a FUSE filesystem that stores file data as content-defined chunks, once each.
//!
//! Modules in dependency order (each depends only on those above it):
//! - [`error`]: typed errors and the one errno table.
//! - [`hash`]: `ChunkId`, the blake3 name of a chunk.
//! - [`chunker`]: FastCDC parameters and cut points (boundaries are on-disk format).
//! - [`store`]: the `ChunkStore` trait (local dir, memory, fault-injecting) and the verified
//!   mmap LRU cache (the crate's only `unsafe`); `store::remote`, a blocking client of an
//!   S3-compatible bucket (for remote volumes).
//! - [`meta`]: metadata in redb: inodes, dirents, extents, refcounts, xattrs.
//! - [`fs`]: the filesystem core, FUSE-free, every operation returns `Result`.
//! - [`mounts`]: the kernel's mount table: is a path a mount point, is a store mounted, which
//!   dedupfs mount holds a path.
//! - [`volume`]: the store directory, its marker and its lock.
//! - [`remote`]: remote volumes (issue 11): the one-writer lease, judged by the object
//!   store's clock.
//! - [`maint`]: fsck, gc and stats as report structs.
//! - [`fuse`]: the thin fuser adapter.
//! - [`cli`]: subcommands and report rendering; mount options, the control socket
//!   and systemd notification of a mounted daemon.

pub mod chunker;
pub mod cli;
pub mod crypto;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod hash;
pub mod maint;
pub mod meta;
pub mod mounts;
pub mod remote;
pub mod store;
pub mod volume;
