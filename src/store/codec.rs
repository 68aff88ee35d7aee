//! Per-chunk compression codecs of the pack store.
//!
//! A chunk's id is always the blake3 of its plaintext, so the codec is a storage detail: the
//! same chunk stored with zstd in one pack and raw in another is the same chunk, and dedup
//! works across codec changes.
//!
//! Invariant: a record's codec id (`Codec::id`, pinned in `tests/golden_pack.rs`) says how its
//! stored bytes turn back into the chunk. A chunk is stored raw (codec id 0) whenever
//! compressing it does not save at least 1/8 of its bytes, so a reader pays decompression only
//! where it buys real space. An early-abort probe keeps incompressible data near the speed of
//! `none`: a sample from the middle of the chunk is compressed first, and when it does not
//! shrink the chunk is stored raw without compressing the whole of it.

use crate::error::{FsError, Result};
use std::fmt;
use std::str::FromStr;

/// Codec ids as written in pack records (format constants: never renumber).
pub const CODEC_NONE: u8 = 0;
pub const CODEC_ZSTD: u8 = 1;
pub const CODEC_LZ4: u8 = 2;

/// Default zstd level: chosen by `scripts/bench` (level 1 compresses at several hundred MB/s
/// per core; higher levels cost more CPU than the write path has on two cores).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// Chunks smaller than this are not probed: the whole chunk is the sample.
const PROBE_MIN: usize = 16 << 10;
/// Bytes compressed by the early-abort probe.
const PROBE_LEN: usize = 4 << 10;
/// Largest chunk a record may claim when decompressing: guards against a damaged length.
pub const MAX_RAW_LEN: u32 = 64 << 20;

/// How new chunks are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    None,
    Zstd(i32),
    Lz4,
}

impl Default for Codec {
    fn default() -> Codec {
        Codec::Zstd(DEFAULT_ZSTD_LEVEL)
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Codec::None => write!(f, "none"),
            Codec::Zstd(l) => write!(f, "zstd:{l}"),
            Codec::Lz4 => write!(f, "lz4"),
        }
    }
}

impl FromStr for Codec {
    type Err = String;
    fn from_str(s: &str) -> Result<Codec, String> {
        match s {
            "none" | "raw" => Ok(Codec::None),
            "lz4" => Ok(Codec::Lz4),
            "zstd" => Ok(Codec::Zstd(DEFAULT_ZSTD_LEVEL)),
            _ => {
                let level = s.strip_prefix("zstd:").ok_or_else(|| {
                    format!("unknown compression {s:?}: use zstd[:LEVEL], lz4 or none")
                })?;
                let level: i32 = level
                    .parse()
                    .map_err(|_| format!("bad zstd level {level:?}: use a number from 1 to 19"))?;
                if !(1..=19).contains(&level) {
                    return Err(format!("zstd level {level} out of range: use 1 to 19"));
                }
                Ok(Codec::Zstd(level))
            }
        }
    }
}

impl Codec {
    /// The id new records compressed with this codec carry.
    pub fn id(self) -> u8 {
        match self {
            Codec::None => CODEC_NONE,
            Codec::Zstd(_) => CODEC_ZSTD,
            Codec::Lz4 => CODEC_LZ4,
        }
    }

    /// Compresses `raw`; `None` means "store it raw" (compression would not save 1/8).
    pub fn compress(self, raw: &[u8]) -> Option<Vec<u8>> {
        if self == Codec::None || raw.len() < 64 {
            return None;
        }
        if raw.len() >= PROBE_MIN {
            let mid = raw.len() / 2 - PROBE_LEN / 2;
            let sample = &raw[mid..mid + PROBE_LEN];
            // The probe only has to tell "shrinks" from "does not": lz4 answers that at
            // memory speed whatever the codec is.
            let probe = lz4_flex::block::compress(sample);
            if probe.len() >= PROBE_LEN - PROBE_LEN / 32 {
                return None;
            }
        }
        let out = match self {
            Codec::None => return None,
            Codec::Zstd(level) => zstd_compress(raw, level)?,
            Codec::Lz4 => lz4_flex::block::compress(raw),
        };
        (out.len() <= raw.len() - raw.len() / 8).then_some(out)
    }
}

thread_local! {
    /// A zstd compression context per thread and level: creating one costs more than
    /// compressing a 64 KiB chunk at level 1.
    static ZSTD_C: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static ZSTD_D: std::cell::RefCell<std::io::Result<zstd::bulk::Decompressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new());
}

fn zstd_compress(raw: &[u8], level: i32) -> Option<Vec<u8>> {
    ZSTD_C.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, z) = c.as_mut()?;
        // Output larger than 7/8 of the input is useless (the chunk is kept raw): give the
        // compressor no more room than that, so it stops early.
        let mut out = Vec::with_capacity(raw.len() - raw.len() / 8);
        z.compress_to_buffer(raw, &mut out).ok()?;
        Some(out)
    })
}

/// Turns stored bytes of codec `codec` back into the `raw_len` bytes of the chunk.
pub fn decompress(codec: u8, stored: &[u8], raw_len: u32) -> Result<Vec<u8>> {
    if raw_len > MAX_RAW_LEN {
        return Err(FsError::Corrupt(format!(
            "record claims a chunk of {raw_len} bytes (at most {MAX_RAW_LEN})"
        )));
    }
    let bad = |what: String| FsError::Corrupt(format!("cannot decompress chunk: {what}"));
    let out = match codec {
        CODEC_NONE => stored.to_vec(),
        CODEC_ZSTD => {
            zstd::bulk::decompress(stored, raw_len as usize).map_err(|e| bad(e.to_string()))?
        }
        CODEC_LZ4 => {
            let mut out = vec![0u8; raw_len as usize];
            let n = lz4_flex::block::decompress_into(stored, &mut out)
                .map_err(|e| bad(e.to_string()))?;
            out.truncate(n);
            out
        }
        other => return Err(bad(format!("unknown codec id {other}"))),
    };
    if out.len() != raw_len as usize {
        return Err(bad(format!(
            "{} bytes came out, the record says {raw_len}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize) -> Vec<u8> {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }

    #[test]
    fn codecs_round_trip_and_keep_incompressible_data_raw() {
        let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog. "
            .iter()
            .cycle()
            .take(70_000)
            .copied()
            .collect();
        for codec in [Codec::Zstd(1), Codec::Zstd(3), Codec::Lz4] {
            let c = codec.compress(&text).expect("text compresses");
            assert!(c.len() < text.len() / 4);
            assert_eq!(decompress(codec.id(), &c, text.len() as u32).unwrap(), text);
            assert!(
                codec.compress(&noise(70_000)).is_none(),
                "{codec}: noise stays raw"
            );
            assert!(
                codec.compress(&noise(3000)).is_none(),
                "{codec}: small noise stays raw"
            );
        }
        assert!(Codec::None.compress(&text).is_none());
    }

    #[test]
    fn damaged_or_lying_records_are_errors() {
        let text = vec![b'a'; 10_000];
        let c = Codec::Zstd(1).compress(&text).unwrap();
        assert!(decompress(CODEC_ZSTD, &c, 9_999).is_err());
        assert!(decompress(CODEC_ZSTD, &c[..c.len() / 2], 10_000).is_err());
        assert!(decompress(CODEC_LZ4, &c, 10_000).is_err());
        assert!(decompress(9, &c, 10_000).is_err());
        assert!(decompress(CODEC_ZSTD, &c, u32::MAX).is_err());
    }

    #[test]
    fn codec_names_parse() {
        assert_eq!(
            "zstd".parse::<Codec>().unwrap(),
            Codec::Zstd(DEFAULT_ZSTD_LEVEL)
        );
        assert_eq!("zstd:7".parse::<Codec>().unwrap(), Codec::Zstd(7));
        assert_eq!("lz4".parse::<Codec>().unwrap(), Codec::Lz4);
        assert_eq!("none".parse::<Codec>().unwrap(), Codec::None);
        assert!("zstd:0".parse::<Codec>().is_err());
        assert!("gzip".parse::<Codec>().is_err());
        for c in [Codec::Zstd(5), Codec::Lz4, Codec::None] {
            assert_eq!(c.to_string().parse::<Codec>().unwrap(), c);
        }
    }
}
