//! Metadata generations: one immutable object per publication of a remote volume's metadata,
//! holding everything `attach` needs besides the packs.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "DDFSGEN\0"
//!      8     4  format (u32 LE) = 2 (1 is still read: see below)
//!     12     8  generation (u64 LE): 1 at init, +1 per publication
//!     20     8  writer (u64 LE): the store directory that published it
//!     28     8  parent (u64 LE): the generation the writer started from (0: none)
//!     36     8  created (u64 LE): unix nanoseconds, the writer's clock (informational)
//!     44     4  section count n (u32 LE)
//!     48        n sections, each:
//!                 0  4  kind (u32 LE): 1 meta.redb, 2 index.redb, 3 pack table, 4 snapshot
//!                       file, 5 gc acknowledgement
//!                 4  4  flags (u32 LE): bit 0 = zstd-compressed
//!                 8  8  raw length (u64 LE)
//!                16  8  stored length s (u64 LE)
//!                24  s  bytes
//!   end-32    32  blake3 of every byte before it
//! ```
//!
//! Pack table (kind 3), raw: per pack 48 bytes:
//!
//! ```text
//!      0  8  id (u64 LE): the pack's number in this volume's index
//!      8  8  length (u64 LE)
//!     16 16  the first 16 bytes of the blake3 of the pack's bytes (they name its object)
//!     32  8  origin volume (u64 LE): 0 = this volume uploaded it; otherwise the id of the
//!            volume that did (shared dedup: `packs/ORIGIN/PACK-HASH`)
//!     40  8  origin pack (u64 LE): the pack's number in the origin volume (0 when own)
//! ```
//!
//! Format 1 (read, never written): 32 bytes per pack (the first three fields, all own packs),
//! and no kind 5.
//! Snapshot file (kind 4), raw: u32 LE length of the file name, the name, the redb file.
//! Gc acknowledgement (kind 5), raw: u64 LE, the newest bucket gc mark the writer had
//! installed before it took this generation's durable point (0: none; docs/design.md,
//! "Shared dedup and gc").
//!
//! An object that fails its checksum, has an unknown kind or format, is not a generation: the
//! newest generation that passes is the volume's state.
//!
//! An encrypted volume's generation objects are this encoding sealed whole in an envelope
//! (`crypto.rs`, docs/design.md "Encryption"):
//!
//! ```text
//!      0   8  magic "DDFSGENX"
//!      8   4  format (u32 LE) = 1
//!     12   8  key id (the volume key's id)
//!     20  24  nonce (random)
//!     44   n  XChaCha20-Poly1305 ciphertext of the generation above (AAD: bytes 0..44)
//!   44+n  16  Poly1305 tag
//! ```

use crate::error::{FsError, Result};

const MAGIC: &[u8; 8] = b"DDFSGEN\0";
const FORMAT: u32 = 2;
/// Format 1: 32-byte pack entries, no gc acknowledgement.
const FORMAT_V1: u32 = 1;
const HEADER_LEN: usize = 48;
const SECTION_HEADER_LEN: usize = 24;
const FLAG_ZSTD: u32 = 1;
const ZSTD_LEVEL: i32 = 3;
/// Largest raw section accepted when decoding (a damaged length must not allocate wildly).
const MAX_SECTION: u64 = 64 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Meta = 1,
    Index = 2,
    Packs = 3,
    Snapshot = 4,
    Gc = 5,
}

impl Kind {
    fn of(v: u32) -> Option<Kind> {
        Some(match v {
            1 => Kind::Meta,
            2 => Kind::Index,
            3 => Kind::Packs,
            4 => Kind::Snapshot,
            5 => Kind::Gc,
            _ => return None,
        })
    }
}

/// One pack as a generation names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackRef {
    /// Its number in this volume's index.
    pub id: u64,
    pub len: u64,
    pub hash: [u8; 16],
    /// `None`: this volume uploaded it. Otherwise another volume under the same prefix did
    /// (shared dedup), and this is where its object is.
    pub origin: Option<Origin>,
}

/// A pack another volume uploaded: that volume's id and the pack's number there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub volume: u64,
    pub pack: u64,
}

impl PackRef {
    /// A pack this volume uploads.
    pub fn own(id: u64, len: u64, hash: [u8; 16]) -> PackRef {
        PackRef {
            id,
            len,
            hash,
            origin: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub generation: u64,
    pub writer: u64,
    pub parent: u64,
    pub created_ns: u64,
}

/// A decoded generation.
#[derive(Debug)]
pub struct Generation {
    pub header: Header,
    pub meta: Vec<u8>,
    pub index: Vec<u8>,
    pub packs: Vec<PackRef>,
    /// (file name, redb file) of each snapshot.
    pub snapshots: Vec<(String, Vec<u8>)>,
    /// The newest bucket gc mark installed before the durable point (0: none).
    pub gc_ack: u64,
}

fn section(out: &mut Vec<u8>, kind: Kind, raw: &[u8], compress: bool) -> Result<()> {
    let (flags, stored) = if compress {
        (FLAG_ZSTD, zstd::bulk::compress(raw, ZSTD_LEVEL)?)
    } else {
        (0, raw.to_vec())
    };
    out.extend_from_slice(&(kind as u32).to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    out.extend_from_slice(&(stored.len() as u64).to_le_bytes());
    out.extend_from_slice(&stored);
    Ok(())
}

/// Encodes a generation (sections compressed with zstd).
pub fn encode(g: &Generation) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(g.meta.len() / 2 + g.index.len() / 2 + 4096);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&g.header.generation.to_le_bytes());
    out.extend_from_slice(&g.header.writer.to_le_bytes());
    out.extend_from_slice(&g.header.parent.to_le_bytes());
    out.extend_from_slice(&g.header.created_ns.to_le_bytes());
    let count = 4 + g.snapshots.len() as u32;
    out.extend_from_slice(&count.to_le_bytes());
    section(&mut out, Kind::Meta, &g.meta, true)?;
    section(&mut out, Kind::Index, &g.index, true)?;
    let mut packs = Vec::with_capacity(g.packs.len() * 48);
    for p in &g.packs {
        let o = p.origin.unwrap_or(Origin { volume: 0, pack: 0 });
        packs.extend_from_slice(&p.id.to_le_bytes());
        packs.extend_from_slice(&p.len.to_le_bytes());
        packs.extend_from_slice(&p.hash);
        packs.extend_from_slice(&o.volume.to_le_bytes());
        packs.extend_from_slice(&o.pack.to_le_bytes());
    }
    section(&mut out, Kind::Packs, &packs, true)?;
    section(&mut out, Kind::Gc, &g.gc_ack.to_le_bytes(), false)?;
    for (name, file) in &g.snapshots {
        let mut raw = Vec::with_capacity(4 + name.len() + file.len());
        raw.extend_from_slice(&(name.len() as u32).to_le_bytes());
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(file);
        section(&mut out, Kind::Snapshot, &raw, true)?;
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    Ok(out)
}

/// Encodes a generation, sealed with `key` for an encrypted volume.
pub fn encode_for(g: &Generation, key: Option<&crate::crypto::Key>) -> Result<Vec<u8>> {
    let plain = encode(g)?;
    match key {
        None => Ok(plain),
        Some(k) => k.seal_generation(&plain),
    }
}

/// Decodes a generation object of a volume encrypted with `key` (`None`: not encrypted). A
/// sealed object without a key, or a plain one when a key is given (the bucket is not
/// trusted to downgrade a volume), is refused.
pub fn decode_for(b: &[u8], key: Option<&crate::crypto::Key>) -> Result<Generation> {
    match (key, crate::crypto::sealed_generation_key_id(b)) {
        (None, None) => decode(b),
        (Some(k), Some(_)) => decode(&k.open_generation(b)?),
        (None, Some(id)) => Err(FsError::Refused(format!(
            "the volume is encrypted (key id {id}): its metadata opens only with its key (--encrypt KEYFILE)"
        ))),
        (Some(_), None) => Err(bad(
            "not encrypted, but the volume is (refused: an unencrypted object in an encrypted volume is not its own)",
        )),
    }
}

fn bad(what: &str) -> FsError {
    FsError::Corrupt(format!("metadata generation: {what}"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| bad("truncated"))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| bad("truncated"))
}

/// The header alone (after checking the magic and format; the checksum is not checked).
pub fn decode_header(b: &[u8]) -> Result<Header> {
    decode_format(b)?;
    Ok(Header {
        generation: u64_at(b, 12)?,
        writer: u64_at(b, 20)?,
        parent: u64_at(b, 28)?,
        created_ns: u64_at(b, 36)?,
    })
}

fn decode_format(b: &[u8]) -> Result<u32> {
    if b.len() < HEADER_LEN + 32 || &b[..8] != MAGIC {
        return Err(bad("not a dedupfs generation (no magic)"));
    }
    let format = u32_at(b, 8)?;
    if format > FORMAT {
        // Written by a newer dedupfs: not damage, and no older generation may stand in for it
        // (a writer would publish above it from older metadata).
        return Err(FsError::Refused(format!(
            "metadata generation format {format} was written by a newer dedupfs (this one reads \
             up to {FORMAT}): upgrade dedupfs"
        )));
    }
    if format != FORMAT && format != FORMAT_V1 {
        return Err(bad(&format!(
            "format {format} is not supported by this dedupfs ({FORMAT})"
        )));
    }
    Ok(format)
}

/// Decodes and checks a whole generation object.
pub fn decode(b: &[u8]) -> Result<Generation> {
    let header = decode_header(b)?;
    let format = decode_format(b)?;
    let entry = if format == FORMAT_V1 { 32 } else { 48 };
    let body_end = b.len() - 32;
    if blake3::hash(&b[..body_end]).as_bytes() != &b[body_end..] {
        return Err(bad("checksum mismatch (damaged or incomplete object)"));
    }
    let count = u32_at(b, 44)?;
    let mut at = HEADER_LEN;
    let mut g = Generation {
        header,
        meta: Vec::new(),
        index: Vec::new(),
        packs: Vec::new(),
        snapshots: Vec::new(),
        gc_ack: 0,
    };
    let mut seen = [false; 5];
    for _ in 0..count {
        let kind = Kind::of(u32_at(b, at)?).ok_or_else(|| bad("unknown section kind"))?;
        let flags = u32_at(b, at + 4)?;
        let raw_len = u64_at(b, at + 8)?;
        let stored_len = u64_at(b, at + 16)?;
        let start = at + SECTION_HEADER_LEN;
        let end = start
            .checked_add(usize::try_from(stored_len).map_err(|_| bad("section too long"))?)
            .filter(|&e| e <= body_end)
            .ok_or_else(|| bad("section runs past the end"))?;
        if raw_len > MAX_SECTION || flags & !FLAG_ZSTD != 0 {
            return Err(bad("bad section header"));
        }
        let stored = &b[start..end];
        let raw = if flags & FLAG_ZSTD != 0 {
            zstd::bulk::decompress(stored, raw_len as usize)
                .map_err(|e| bad(&format!("section does not decompress: {e}")))?
        } else {
            stored.to_vec()
        };
        if raw.len() as u64 != raw_len {
            return Err(bad("section length mismatch"));
        }
        match kind {
            Kind::Meta => g.meta = raw,
            Kind::Index => g.index = raw,
            Kind::Packs => {
                if raw.len() % entry != 0 {
                    return Err(bad("pack table length"));
                }
                let at = |r: &[u8], i: usize| {
                    u64::from_le_bytes(r[i..i + 8].try_into().unwrap_or_default())
                };
                g.packs = raw
                    .chunks_exact(entry)
                    .map(|r| PackRef {
                        id: at(r, 0),
                        len: at(r, 8),
                        hash: r[16..32].try_into().unwrap_or_default(),
                        origin: (entry == 48 && at(r, 32) != 0).then(|| Origin {
                            volume: at(r, 32),
                            pack: at(r, 40),
                        }),
                    })
                    .collect();
            }
            Kind::Gc if format == FORMAT_V1 => return Err(bad("unknown section kind")),
            Kind::Gc if seen[4] || raw.len() != 8 => return Err(bad("gc section")),
            Kind::Gc => g.gc_ack = u64_at(&raw, 0)?,
            Kind::Snapshot => {
                let n = u32_at(&raw, 0)? as usize;
                let name = raw
                    .get(4..4 + n)
                    .and_then(|s| std::str::from_utf8(s).ok())
                    .filter(|s| !s.is_empty() && !s.contains('/') && !s.starts_with('.'))
                    .ok_or_else(|| bad("snapshot file name"))?
                    .to_string();
                g.snapshots.push((name, raw[4 + n..].to_vec()));
            }
        }
        seen[kind as usize - 1] = true;
        at = end;
    }
    if at != body_end || !seen[0] || !seen[1] || !seen[2] {
        return Err(bad("sections missing or trailing bytes"));
    }
    Ok(g)
}
