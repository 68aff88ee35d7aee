//! Chunk identity: a blake3 hash of the chunk's bytes, its hex form and its fan-out path.
//!
//! A volume names its chunks with one [`Hasher`]: plain blake3, or (encrypted volumes) blake3
//! keyed with a key derived from the volume key, so that the names the bucket holds reveal no
//! content hashes. Every place that computes or verifies a chunk's name from its bytes takes
//! the volume's hasher; `ChunkId::of` is plain blake3 only.

use std::fmt;
use std::path::PathBuf;

/// Name of a chunk: the blake3 hash of its content. Two chunks with the same id are the same bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    pub fn from_hex(s: &str) -> Option<ChunkId> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ChunkId(out))
    }

    /// Relative path inside the chunk directory: `xx/<hex>`, 256 directories made when the
    /// store opens, so writing a chunk never creates a directory (ext4 directory creation was
    /// the bottleneck of unique writes). ext4's hashed directories keep lookups fast at
    /// millions of entries each.
    pub fn rel_path(&self) -> PathBuf {
        let hex = self.to_hex();
        let mut p = PathBuf::from(&hex[0..2]);
        p.push(&hex);
        p
    }

    /// Where stores of format 1 put chunks: `xx/yy/<hex>` (still read; see `LocalDirStore`).
    pub fn legacy_rel_path(&self) -> PathBuf {
        let hex = self.to_hex();
        let mut p = PathBuf::from(&hex[0..2]);
        p.push(&hex[2..4]);
        p.push(&hex);
        p
    }
}

/// How a volume names chunks: plain blake3, or keyed blake3 (encrypted volumes: the key is
/// derived from the volume key, `crypto::Key::hasher`). Two volumes dedup against each other
/// only when their hashers agree.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Hasher {
    key: Option<[u8; 32]>,
}

impl Hasher {
    /// Plain blake3 (unencrypted volumes).
    pub const PLAIN: Hasher = Hasher { key: None };

    /// Keyed blake3 with `key` (already derived for chunk naming).
    pub fn keyed(key: [u8; 32]) -> Hasher {
        Hasher { key: Some(key) }
    }

    pub fn is_keyed(&self) -> bool {
        self.key.is_some()
    }

    /// The name of chunk `data`.
    pub fn id(&self, data: &[u8]) -> ChunkId {
        match &self.key {
            None => ChunkId::of(data),
            Some(k) => ChunkId(*blake3::keyed_hash(k, data).as_bytes()),
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.write_str(if self.key.is_some() {
            "Hasher(keyed)"
        } else {
            "Hasher(plain)"
        })
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let id = ChunkId::of(b"hello");
        assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ChunkId::from_hex("zz"), None);
    }

    #[test]
    fn keyed_names_differ_from_plain_and_between_keys() {
        let plain = Hasher::PLAIN.id(b"x");
        assert_eq!(plain, ChunkId::of(b"x"));
        let a = Hasher::keyed([1; 32]).id(b"x");
        let b = Hasher::keyed([2; 32]).id(b"x");
        assert_ne!(a, plain);
        assert_ne!(a, b);
        assert_eq!(a, Hasher::keyed([1; 32]).id(b"x"));
    }

    #[test]
    fn path_fans_out_by_leading_bytes() {
        let id = ChunkId::of(b"hello");
        let hex = id.to_hex();
        assert_eq!(
            id.rel_path(),
            PathBuf::from(format!("{}/{}", &hex[..2], hex))
        );
        assert_eq!(
            id.legacy_rel_path(),
            PathBuf::from(format!("{}/{}/{}", &hex[..2], &hex[2..4], hex))
        );
    }
}
