//! Chunk identity: a blake3 hash of the chunk's bytes, its hex form and its fan-out path.

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
