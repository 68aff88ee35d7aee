//! The virtual xattr `user.dedupfs.blake3`: a regular file's whole-content blake3 digest, as
//! the raw 32 bytes (what Bazel's `--unix_digest_hash_attribute_name` reads).
//!
//! Computed on demand by reading the file as any reader would (dirty data in memory included),
//! and cached per inode under a fingerprint of the file's committed content: a hash of its size
//! and extent list (offset, length and chunk id of every extent). The content is a function of
//! that list, so a cached digest is served only for exactly the content it was computed from,
//! never a stale one, and no write path has to invalidate anything. A file with dirty data or a
//! write-back in flight has no fingerprint: its digest is computed afresh and not cached.
//!
//! It is not stored and not listed by `listxattr` (so `cp -a` and `rsync -X` do not copy a
//! digest that would go stale elsewhere); setting or removing it is refused (EPERM).

use super::Fs;
use crate::error::{FsError, Ino, Result};
use crate::meta::Kind;

pub const DIGEST_XATTR: &[u8] = b"user.dedupfs.blake3";
/// Digests kept (64 bytes of key and value each).
pub(super) const CACHED_DIGESTS: usize = 16384;
/// Inode -> (content fingerprint, digest of that content).
pub(super) type DigestCache = lru::LruCache<Ino, ([u8; 32], [u8; 32])>;
/// Bytes read per step while hashing.
const PIECE: u32 = 1 << 20;

impl Fs {
    /// The digest of `ino`'s current content.
    pub(super) fn blake3_digest(&self, ino: Ino) -> Result<[u8; 32]> {
        let before = self.content_fingerprint(ino)?;
        if let Some(fp) = before
            && let Some((cached_fp, digest)) = self.digests.lock().get(&ino)
            && *cached_fp == fp
        {
            return Ok(*digest);
        }
        let mut h = blake3::Hasher::new();
        let mut offset = 0u64;
        loop {
            let piece = self.read_data(ino, offset, PIECE, false)?;
            if piece.is_empty() {
                break;
            }
            h.update(&piece);
            offset += piece.len() as u64;
        }
        let digest = *h.finalize().as_bytes();
        // Cached only when nothing changed while it was read.
        if let Some(fp) = before
            && self.content_fingerprint(ino)? == Some(fp)
        {
            self.digests.lock().put(ino, (fp, digest));
        }
        Ok(digest)
    }

    /// A hash of `ino`'s size and extent list, or `None` while it has data not yet committed.
    fn content_fingerprint(&self, ino: Ino) -> Result<Option<[u8; 32]>> {
        if super::in_snapshot(ino) {
            // Not cached: inode numbers of a deleted snapshot's slot come back with the next.
            return match self.getattr(ino)?.kind {
                Kind::File => Ok(None),
                _ => Err(FsError::NoXattr),
            };
        }
        let mut st = self.state.lock();
        if st
            .open
            .get(&ino)
            .is_some_and(|o| !o.dirty.is_empty() || o.flushing.is_some())
        {
            return Ok(None);
        }
        let snap = self.snapshot_for(&mut st, ino)?;
        let attr = match &st.pending {
            Some(p) => self.attr_in(&st, &p.tx, ino)?,
            None => self.attr_in(&st, &snap, ino)?,
        };
        drop(st);
        if attr.kind != Kind::File {
            return Err(FsError::NoXattr);
        }
        let mut h = blake3::Hasher::new();
        h.update(&attr.size.to_le_bytes());
        snap.for_each_extent_of(ino, &mut |e| {
            h.update(&e.offset.to_le_bytes());
            h.update(&e.len.to_le_bytes());
            h.update(&e.id.0);
            Ok(())
        })?;
        Ok(Some(*h.finalize().as_bytes()))
    }
}
