//! Content-defined chunking parameters and cut-point search (FastCDC v2020).
//!
//! Chunk boundaries are part of the on-disk format: the same bytes must always be cut at the
//! same places, or a rewritten file stops sharing chunks with its old self. The fastcdc crate is
//! therefore pinned with `=` in Cargo.toml, normalization is fixed at level 1 (the crate's
//! default), and `tests/golden_chunks.rs` pins the boundaries of a seeded input.
//!
//! The chunker knows nothing of storage: it answers "where is the next cut in this window".

use fastcdc::v2020;
use serde::{Deserialize, Serialize};

/// Default average chunk size: 64 KiB. Large enough that a 4 GiB image is 65k chunks (a small
/// index), small enough that a local change rewrites little; FastCDC + blake3 peaks near here.
/// Measured again with the pack store (README, "Choosing the chunk size"; `scripts/bench`'s
/// chunk-size study): 16 and 32 KiB find 2.6-4.7 points more shared data between successive
/// releases of compiled packages, but with per-chunk compression the bytes on disk do not fall,
/// while writes run at about 0.5x and 0.75x and the metadata per GiB is 4x and 2x.
pub const DEFAULT_AVG: u32 = 64 * 1024;

/// Chunking parameters, recorded in the store at `init` and fixed for its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl ChunkParams {
    /// min = avg/4 and max = avg*4, the FastCDC paper's recommended spread.
    pub fn from_avg(avg: u32) -> Result<ChunkParams, String> {
        let p = ChunkParams {
            min: avg / 4,
            avg,
            max: avg.saturating_mul(4),
        };
        p.validate()?;
        Ok(p)
    }

    pub fn validate(&self) -> Result<(), String> {
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        if !avg.is_power_of_two() {
            return Err(format!("average chunk size {avg} is not a power of two"));
        }
        if !(v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&min)
            || !(v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&avg)
            || !(v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&max)
        {
            return Err(format!(
                "chunk sizes min {min} / avg {avg} / max {max} are outside FastCDC's limits \
                 (avg {}..={})",
                v2020::AVERAGE_MIN * 4,
                v2020::MAXIMUM_MAX / 4
            ));
        }
        if !(min < avg && avg < max) || min % 2 != 0 || max % 2 != 0 {
            return Err(format!(
                "chunk sizes must satisfy min < avg < max, even: {self:?}"
            ));
        }
        Ok(())
    }
}

impl Default for ChunkParams {
    fn default() -> Self {
        ChunkParams {
            min: DEFAULT_AVG / 4,
            avg: DEFAULT_AVG,
            max: DEFAULT_AVG * 4,
        }
    }
}

/// How a file's data is cut into chunks.
///
/// Content-defined chunking finds shifted data again (insertions, successive build trees);
/// fixed-size blocks, aligned to file offsets, suit disk images rewritten in place: a 4 KiB
/// overwrite replaces exactly one block and never moves a boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Cdc,
    Fixed(u32),
}

/// Extended attribute that chooses a file's policy: "fixed" or "cdc".
pub const POLICY_XATTR: &[u8] = b"user.dedupfs.chunking";

impl Policy {
    /// Policy named by the value of [`POLICY_XATTR`].
    pub fn from_xattr(value: &[u8], fixed_block: u32) -> Option<Policy> {
        match value {
            b"fixed" => Some(Policy::Fixed(fixed_block)),
            b"cdc" => Some(Policy::Cdc),
            _ => None,
        }
    }
}

/// Does `name` match the shell-style `pattern` (`*` any run, `?` one byte)?
pub fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = n;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            n = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Finds cut points. Cheap to clone; holds the precomputed masks.
#[derive(Clone, Debug)]
pub struct Chunker {
    params: ChunkParams,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    pub fn new(params: ChunkParams) -> Chunker {
        let (mask_s, mask_l) =
            v2020::select_masks(params.avg as usize, v2020::Normalization::Level1);
        Chunker {
            params,
            mask_s,
            mask_l,
        }
    }

    pub fn params(&self) -> ChunkParams {
        self.params
    }

    /// Length of the first chunk of `window`, if it is final.
    ///
    /// A cut is final only when the window holds at least `max` bytes or ends at the end of the
    /// stream (`at_end`): FastCDC's result for a shorter window depends on the window length, so
    /// cutting early would make boundaries depend on how data arrived. Returns `None` when more
    /// data is needed, or when the window is empty.
    pub fn next_cut(&self, window: &[u8], at_end: bool) -> Option<usize> {
        if window.is_empty() || (!at_end && window.len() < self.params.max as usize) {
            return None;
        }
        let (_, len) = v2020::cut(
            window,
            self.params.min as usize,
            self.params.avg as usize,
            self.params.max as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        Some(len)
    }

    /// Like [`Chunker::next_cut`] under `policy`, for a window that starts at file offset
    /// `pos`. Fixed blocks end at multiples of the block size.
    pub fn next_cut_for(
        &self,
        policy: Policy,
        pos: u64,
        window: &[u8],
        at_end: bool,
    ) -> Option<usize> {
        match policy {
            Policy::Cdc => self.next_cut(window, at_end),
            Policy::Fixed(block) => {
                let block = u64::from(block.max(1));
                let want = (block - pos % block) as usize;
                if window.is_empty() {
                    None
                } else if window.len() >= want {
                    Some(want)
                } else if at_end {
                    Some(window.len())
                } else {
                    None
                }
            }
        }
    }

    /// All chunk lengths of a complete in-memory buffer.
    pub fn cut_all(&self, data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(len) = self.next_cut(&data[pos..], true) {
            out.push(len);
            pos += len;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, mut seed: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    #[test]
    fn cut_all_matches_the_crate_iterator() {
        let p = ChunkParams::default();
        let data = noise(3 << 20, 7);
        let ours = Chunker::new(p).cut_all(&data);
        let theirs: Vec<usize> =
            v2020::FastCDC::new(&data, p.min as usize, p.avg as usize, p.max as usize)
                .map(|c| c.length)
                .collect();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn cuts_do_not_depend_on_how_data_arrives() {
        // Feeding the stream in odd-sized pieces must give the same boundaries as one buffer.
        let c = Chunker::new(ChunkParams::default());
        let data = noise(2 << 20, 99);
        let whole = c.cut_all(&data);
        let mut streamed = Vec::new();
        let (mut start, mut have) = (0usize, 0usize);
        while start < data.len() {
            match c.next_cut(&data[start..have], have == data.len()) {
                Some(len) => {
                    streamed.push(len);
                    start += len;
                }
                None => have = (have + 12_345).min(data.len()),
            }
        }
        assert_eq!(whole, streamed);
    }

    #[test]
    fn fixed_policy_cuts_at_aligned_offsets() {
        let c = Chunker::new(ChunkParams::default());
        let w = vec![1u8; 10_000];
        assert_eq!(
            c.next_cut_for(Policy::Fixed(4096), 100, &w, false),
            Some(3996)
        );
        assert_eq!(
            c.next_cut_for(Policy::Fixed(4096), 0, &w[..100], false),
            None
        );
        assert_eq!(
            c.next_cut_for(Policy::Fixed(4096), 0, &w[..100], true),
            Some(100)
        );
    }

    #[test]
    fn glob_matches_like_the_shell() {
        assert!(glob_match(b"*.img", b"disk.img"));
        assert!(glob_match(b"*.qcow2", b"a.b.qcow2"));
        assert!(!glob_match(b"*.img", b"disk.img.bak"));
        assert!(glob_match(b"vm-??.raw", b"vm-01.raw"));
        assert!(glob_match(b"*", b""));
    }

    #[test]
    fn params_are_validated() {
        assert!(ChunkParams::from_avg(64 * 1024).is_ok());
        assert!(ChunkParams::from_avg(1000).is_err());
        assert!(ChunkParams::from_avg(64).is_err());
    }
}
