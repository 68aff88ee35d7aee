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
//! An encrypted volume's generation objects are this encoding sealed in segments of 1 MiB
//! (`crypto.rs`, [`crate::crypto::Key::seal_generation_stream`], docs/design.md "Encryption"):
//!
//! ```text
//!      0   8  magic "DDFSGENS"
//!      8   4  format (u32 LE) = 1
//!     12   8  key id (the volume key's id)
//!     20   4  segment length L (u32 LE) = 1 MiB
//!     24   8  length P of the generation above (u64 LE)
//!     32  16  salt (random)
//!     48      ceil(P / L) segments: XChaCha20-Poly1305 ciphertext of L bytes (the last one
//!             shorter), then its 16-byte tag; nonce = salt | segment index (u64 LE), AAD =
//!             bytes 0..48
//! ```
//!
//! dedupfs before this version sealed the generation whole (still read, in memory):
//!
//! ```text
//!      0   8  magic "DDFSGENX"
//!      8   4  format (u32 LE) = 1
//!     12   8  key id (the volume key's id)
//!     20  24  nonce (random)
//!     44   n  XChaCha20-Poly1305 ciphertext of the generation above (AAD: bytes 0..44)
//!   44+n  16  Poly1305 tag
//! ```
//!
//! Memory stays bounded whatever the metadata's size: a generation is written to a scratch
//! file section by section (zstd as a stream, the section's lengths patched in after it),
//! sealed segment by segment, uploaded in parts; a downloaded one is written to a scratch
//! file, opened segment by segment, checked whole, and its sections are copied out as
//! streams.

use crate::error::{FsError, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: &[u8; 8] = b"DDFSGEN\0";
const FORMAT: u32 = 2;
/// Format 1: 32-byte pack entries, no gc acknowledgement.
const FORMAT_V1: u32 = 1;
const HEADER_LEN: usize = 48;
const SECTION_HEADER_LEN: usize = 24;
const FLAG_ZSTD: u32 = 1;
const ZSTD_LEVEL: i32 = 3;
/// Largest raw section read into memory (the pack table, the gc acknowledgement): a damaged
/// length must not allocate wildly. The large sections are streamed and have no bound.
const MAX_SMALL_SECTION: u64 = 4 << 30;

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

/// The large parts of a generation as readers with their lengths, for [`write`]: memory
/// stays bounded whatever the size of the metadata (it is read and compressed as a stream).
pub struct Parts<'a> {
    pub header: Header,
    pub meta: (&'a mut dyn Read, u64),
    pub index: (&'a mut dyn Read, u64),
    pub packs: &'a [PackRef],
    /// (file name, redb file, its length) of each snapshot.
    pub snapshots: Vec<(String, &'a mut dyn Read, u64)>,
    pub gc_ack: u64,
}

/// Writes the encoding of a generation (sections compressed with zstd, as a stream) into
/// `out` from its start, then the checksum, read back from `out`. Returns `out` and the
/// encoding's length.
pub fn write<W: Read + Write + Seek>(p: Parts<'_>, mut out: W) -> Result<(W, u64)> {
    out.seek(SeekFrom::Start(0))?;
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&FORMAT.to_le_bytes());
    h.extend_from_slice(&p.header.generation.to_le_bytes());
    h.extend_from_slice(&p.header.writer.to_le_bytes());
    h.extend_from_slice(&p.header.parent.to_le_bytes());
    h.extend_from_slice(&p.header.created_ns.to_le_bytes());
    let count = 4 + p.snapshots.len() as u32;
    h.extend_from_slice(&count.to_le_bytes());
    out.write_all(&h)?;
    let (meta, meta_len) = p.meta;
    write_section(&mut out, Kind::Meta, meta, meta_len, true)?;
    let (index, index_len) = p.index;
    write_section(&mut out, Kind::Index, index, index_len, true)?;
    let mut packs = Vec::with_capacity(p.packs.len() * 48);
    for p in p.packs {
        let o = p.origin.unwrap_or(Origin { volume: 0, pack: 0 });
        packs.extend_from_slice(&p.id.to_le_bytes());
        packs.extend_from_slice(&p.len.to_le_bytes());
        packs.extend_from_slice(&p.hash);
        packs.extend_from_slice(&o.volume.to_le_bytes());
        packs.extend_from_slice(&o.pack.to_le_bytes());
    }
    let n = packs.len() as u64;
    write_section(&mut out, Kind::Packs, &mut &packs[..], n, true)?;
    write_section(
        &mut out,
        Kind::Gc,
        &mut &p.gc_ack.to_le_bytes()[..],
        8,
        false,
    )?;
    for (name, file, len) in p.snapshots {
        let mut prefix = (name.len() as u32).to_le_bytes().to_vec();
        prefix.extend_from_slice(name.as_bytes());
        let raw_len = prefix.len() as u64 + len;
        write_section(
            &mut out,
            Kind::Snapshot,
            &mut (&prefix[..]).chain(file),
            raw_len,
            true,
        )?;
    }
    out.flush()?;
    let body = out.stream_position()?;
    out.seek(SeekFrom::Start(0))?;
    let mut sum = blake3::Hasher::new();
    let hashed = std::io::copy(&mut (&mut out).take(body), &mut sum)?;
    if hashed != body {
        return Err(FsError::Io(std::io::Error::other(
            "generation: short read of what was just written",
        )));
    }
    out.seek(SeekFrom::Start(body))?;
    out.write_all(sum.finalize().as_bytes())?;
    out.flush()?;
    Ok((out, body + 32))
}

/// One section: its header (lengths patched in once the stored bytes are written), then the
/// `raw_len` bytes of `src`, compressed as one zstd frame (content size included) or as
/// they are.
fn write_section<W: Write + Seek>(
    out: &mut W,
    kind: Kind,
    src: &mut dyn Read,
    raw_len: u64,
    compress: bool,
) -> Result<()> {
    let start = out.stream_position()?;
    out.write_all(&[0u8; SECTION_HEADER_LEN])?;
    let mut src = src.take(raw_len);
    let copied = if compress {
        let mut enc = zstd::stream::write::Encoder::new(&mut *out, ZSTD_LEVEL)?;
        enc.set_pledged_src_size(Some(raw_len))?;
        enc.include_contentsize(true)?;
        let n = std::io::copy(&mut src, &mut enc)?;
        if n == raw_len {
            enc.finish()?;
        }
        n
    } else {
        std::io::copy(&mut src, out)?
    };
    if copied != raw_len {
        return Err(FsError::Io(std::io::Error::other(format!(
            "generation: a section's source gave {copied} bytes of {raw_len}"
        ))));
    }
    let end = out.stream_position()?;
    let mut h = [0u8; SECTION_HEADER_LEN];
    h[..4].copy_from_slice(&(kind as u32).to_le_bytes());
    h[4..8].copy_from_slice(&(if compress { FLAG_ZSTD } else { 0 }).to_le_bytes());
    h[8..16].copy_from_slice(&raw_len.to_le_bytes());
    h[16..24].copy_from_slice(&(end - start - SECTION_HEADER_LEN as u64).to_le_bytes());
    out.seek(SeekFrom::Start(start))?;
    out.write_all(&h)?;
    out.seek(SeekFrom::Start(end))?;
    Ok(())
}

/// Encodes a generation held in memory (tests; the daemon streams with [`write`]).
pub fn encode(g: &Generation) -> Result<Vec<u8>> {
    let (mut meta, mut index) = (&g.meta[..], &g.index[..]);
    let mut snaps: Vec<&[u8]> = g.snapshots.iter().map(|(_, b)| &b[..]).collect();
    let parts = Parts {
        header: g.header.clone(),
        meta: (&mut meta, g.meta.len() as u64),
        index: (&mut index, g.index.len() as u64),
        packs: &g.packs,
        snapshots: g
            .snapshots
            .iter()
            .zip(snaps.iter_mut())
            .map(|((name, b), r)| (name.clone(), r as &mut dyn Read, b.len() as u64))
            .collect(),
        gc_ack: g.gc_ack,
    };
    let (out, _) = write(parts, std::io::Cursor::new(Vec::new()))?;
    Ok(out.into_inner())
}

/// Encodes a generation held in memory, sealed with `key` for an encrypted volume (tests).
pub fn encode_for(g: &Generation, key: Option<&crate::crypto::Key>) -> Result<Vec<u8>> {
    let plain = encode(g)?;
    match key {
        None => Ok(plain),
        Some(k) => {
            let mut out = Vec::new();
            k.seal_generation_stream(&mut &plain[..], plain.len() as u64, &mut out)?;
            Ok(out)
        }
    }
}

/// Decodes a generation object held in memory (tests; the daemon reads objects with
/// [`open_object`]).
pub fn decode_for(b: &[u8], key: Option<&crate::crypto::Key>) -> Result<Generation> {
    let dir = std::env::temp_dir();
    let mut f = tempfile::tempfile_in(&dir)?;
    f.write_all(b)?;
    open_object(f, key, &dir)?.into_generation()
}

/// Decodes a plain generation object held in memory (tests).
pub fn decode(b: &[u8]) -> Result<Generation> {
    decode_for(b, None)
}

/// An unnamed scratch file in `dir` (gone when closed).
pub fn scratch_file(dir: &Path) -> Result<File> {
    Ok(tempfile::tempfile_in(dir)?)
}

/// Downloads generation object `key` into a scratch file in `scratch` and opens it
/// ([`open_object`]). Memory stays bounded: the object is read in ranges, written to disk and
/// checked as a stream.
pub fn fetch(
    client: &crate::store::remote::RemoteStore,
    key: &str,
    volume_key: Option<&crate::crypto::Key>,
    scratch: &Path,
) -> Result<GenerationFile> {
    let mut obj = scratch_file(scratch)?;
    client.get_to(key, &mut obj)?;
    open_object(obj, volume_key, scratch)
}

/// Opens a downloaded generation object of a volume encrypted with `key` (`None`: not
/// encrypted): checks it whole (tag of every segment, checksum) before anything is read from
/// it. A sealed object without a key, or a plain one when a key is given (the bucket is not
/// trusted to downgrade a volume), is refused. The plaintext of a sealed object goes to a
/// scratch file in `scratch`.
pub fn open_object(
    mut obj: File,
    key: Option<&crate::crypto::Key>,
    scratch: &Path,
) -> Result<GenerationFile> {
    let mut start = [0u8; 20];
    let n = read_up_to(&obj, 0, &mut start)?;
    let start = &start[..n];
    match (key, crate::crypto::sealed_generation_key_id(start)) {
        (None, None) => GenerationFile::open_plain(obj),
        (Some(k), Some(_)) if crate::crypto::is_sealed_generation_stream(start) => {
            obj.seek(SeekFrom::Start(0))?;
            let mut plain = scratch_file(scratch)?;
            {
                let mut w = std::io::BufWriter::new(&mut plain);
                k.open_generation_stream(&mut std::io::BufReader::new(&mut obj), &mut w)?;
                w.flush()?;
            }
            drop(obj);
            GenerationFile::open_plain(plain)
        }
        (Some(k), Some(_)) => {
            // The whole-object envelope of dedupfs before the segmented one: such an object
            // was written from memory, and is opened in memory.
            let mut sealed = Vec::new();
            obj.seek(SeekFrom::Start(0))?;
            obj.read_to_end(&mut sealed)?;
            let plain = k.open_generation(&sealed)?;
            drop(sealed);
            let mut f = scratch_file(scratch)?;
            f.write_all(&plain)?;
            GenerationFile::open_plain(f)
        }
        (None, Some(id)) => Err(FsError::Refused(format!(
            "the volume is encrypted (key id {id}): its metadata opens only with its key (--encrypt KEYFILE)"
        ))),
        (Some(_), None) => Err(bad(
            "not encrypted, but the volume is (refused: an unencrypted object in an encrypted volume is not its own)",
        )),
    }
}

/// Reads into `buf` from `at` until it is full or the file ends; returns the bytes read.
fn read_up_to(f: &File, at: u64, buf: &mut [u8]) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// Where a section's stored bytes lie in an encoded generation.
#[derive(Clone, Copy, Debug)]
struct Section {
    flags: u32,
    raw_len: u64,
    offset: u64,
    stored_len: u64,
}

/// Bytes `[pos, end)` of a file, as a reader.
struct Region<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Region<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min((self.end - self.pos) as usize);
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += got as u64;
        Ok(got)
    }
}

/// A checked generation in a file: header, pack table and gc acknowledgement read; the large
/// sections (metadata, index, snapshot files) copied out on demand, as streams.
pub struct GenerationFile {
    file: File,
    pub header: Header,
    pub packs: Vec<PackRef>,
    /// The newest bucket gc mark installed before the durable point (0: none).
    pub gc_ack: u64,
    meta: Section,
    index: Section,
    /// (file name, section, bytes before the file: 4 + the name's length)
    snapshots: Vec<(String, Section, u64)>,
}

impl GenerationFile {
    /// Checks the plain encoding in `file` (magic, format, checksum of every byte, section
    /// table) and reads its small sections.
    pub fn open_plain(file: File) -> Result<GenerationFile> {
        let len = file.metadata()?.len();
        let mut head = [0u8; HEADER_LEN];
        if len < (HEADER_LEN + 32) as u64 || read_up_to(&file, 0, &mut head)? != HEADER_LEN {
            return Err(bad("not a dedupfs generation (no magic)"));
        }
        let format = decode_format(&head)?;
        let header = decode_header(&head)?;
        let entry = if format == FORMAT_V1 { 32 } else { 48 };
        let body_end = len - 32;
        let mut sum = blake3::Hasher::new();
        std::io::copy(
            &mut Region {
                file: &file,
                pos: 0,
                end: body_end,
            },
            &mut sum,
        )?;
        let mut want = [0u8; 32];
        read_up_to(&file, body_end, &mut want)?;
        if sum.finalize().as_bytes() != &want {
            return Err(bad("checksum mismatch (damaged or incomplete object)"));
        }
        let count = u32_at(&head, 44)?;
        let mut g = GenerationFile {
            file,
            header,
            packs: Vec::new(),
            gc_ack: 0,
            meta: Section {
                flags: 0,
                raw_len: 0,
                offset: 0,
                stored_len: 0,
            },
            index: Section {
                flags: 0,
                raw_len: 0,
                offset: 0,
                stored_len: 0,
            },
            snapshots: Vec::new(),
        };
        let mut at = HEADER_LEN as u64;
        let mut seen = [false; 5];
        for _ in 0..count {
            let mut sh = [0u8; SECTION_HEADER_LEN];
            if at + SECTION_HEADER_LEN as u64 > body_end
                || read_up_to(&g.file, at, &mut sh)? != SECTION_HEADER_LEN
            {
                return Err(bad("truncated"));
            }
            let kind = Kind::of(u32_at(&sh, 0)?).ok_or_else(|| bad("unknown section kind"))?;
            let s = Section {
                flags: u32_at(&sh, 4)?,
                raw_len: u64_at(&sh, 8)?,
                offset: at + SECTION_HEADER_LEN as u64,
                stored_len: u64_at(&sh, 16)?,
            };
            let end = s
                .offset
                .checked_add(s.stored_len)
                .filter(|&e| e <= body_end)
                .ok_or_else(|| bad("section runs past the end"))?;
            if s.flags & !FLAG_ZSTD != 0 {
                return Err(bad("bad section header"));
            }
            // Every section decodes to exactly its length, with nothing after its zstd frame,
            // before the generation counts as good (as when it was decoded in memory): a
            // damaged one is skipped for an older one here, not found half-way through an
            // install. Streamed: CPU, no memory.
            g.check(&s)?;
            match kind {
                Kind::Meta => g.meta = s,
                Kind::Index => g.index = s,
                Kind::Packs => {
                    if s.raw_len > MAX_SMALL_SECTION {
                        return Err(bad("pack table length"));
                    }
                    let raw = g.read_small(&s)?;
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
                Kind::Gc if seen[4] || s.raw_len != 8 => return Err(bad("gc section")),
                Kind::Gc => g.gc_ack = u64_at(&g.read_small(&s)?, 0)?,
                Kind::Snapshot => {
                    let mut name = Vec::new();
                    let mut r = g.reader(&s)?;
                    let mut n = [0u8; 4];
                    r.read_exact(&mut n)
                        .map_err(|_| bad("snapshot file name"))?;
                    let n = u32::from_le_bytes(n) as u64;
                    if n > 255 {
                        return Err(bad("snapshot file name"));
                    }
                    r.take(n)
                        .read_to_end(&mut name)
                        .map_err(|_| bad("snapshot file name"))?;
                    let name = String::from_utf8(name)
                        .ok()
                        .filter(|s| {
                            s.len() as u64 == n
                                && !s.is_empty()
                                && !s.contains('/')
                                && !s.starts_with('.')
                        })
                        .ok_or_else(|| bad("snapshot file name"))?;
                    g.snapshots.push((name, s, 4 + n));
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

    /// A section's stored bytes, as a reader.
    fn region(&self, s: &Section) -> Region<'_> {
        Region {
            file: &self.file,
            pos: s.offset,
            end: s.offset + s.stored_len,
        }
    }

    /// Checks that a section's stored bytes are exactly one zstd frame (or raw bytes) of
    /// its raw length.
    fn check(&self, s: &Section) -> Result<()> {
        let region = self.region(s);
        if s.flags & FLAG_ZSTD == 0 {
            return if s.raw_len == s.stored_len {
                Ok(())
            } else {
                Err(bad("section length mismatch"))
            };
        }
        let undecodable = |e: std::io::Error| bad(&format!("section does not decompress: {e}"));
        let mut d = zstd::stream::read::Decoder::with_buffer(std::io::BufReader::new(region))
            .map_err(undecodable)?
            .single_frame();
        let n = std::io::copy(&mut d, &mut std::io::sink()).map_err(undecodable)?;
        if n != s.raw_len {
            return Err(bad("section length mismatch"));
        }
        let rest = d.finish();
        if !rest.buffer().is_empty() || rest.get_ref().pos != rest.get_ref().end {
            return Err(bad("bytes after a section's compressed frame"));
        }
        Ok(())
    }

    /// The raw bytes of a section, as a stream.
    fn reader<'a>(&'a self, s: &Section) -> Result<Box<dyn Read + 'a>> {
        let region = self.region(s);
        Ok(if s.flags & FLAG_ZSTD != 0 {
            Box::new(zstd::stream::read::Decoder::new(region)?.single_frame())
        } else {
            Box::new(region)
        })
    }

    /// Copies a section's raw bytes after the first `skip` to `out`, checking its length.
    fn copy(&self, s: &Section, skip: u64, out: &mut dyn Write) -> Result<u64> {
        let mut r = self.reader(s)?;
        let undecodable = |e: std::io::Error| bad(&format!("section does not decompress: {e}"));
        let skipped =
            std::io::copy(&mut (&mut r).take(skip), &mut std::io::sink()).map_err(undecodable)?;
        let mut copied = 0u64;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(undecodable(e)),
            };
            copied += n as u64;
            if skipped + copied > s.raw_len {
                return Err(bad("section length mismatch"));
            }
            out.write_all(&buf[..n])?;
        }
        if skipped + copied != s.raw_len {
            return Err(bad("section length mismatch"));
        }
        Ok(copied)
    }

    /// A small section whole (pack table, gc acknowledgement).
    fn read_small(&self, s: &Section) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.copy(s, 0, &mut v)?;
        Ok(v)
    }

    /// Writes the volume's `meta.redb` to `out`.
    pub fn copy_meta(&self, out: &mut dyn Write) -> Result<u64> {
        self.copy(&self.meta, 0, out)
    }

    /// Writes the volume's pack index (`index.redb`) to `out`.
    pub fn copy_index(&self, out: &mut dyn Write) -> Result<u64> {
        self.copy(&self.index, 0, out)
    }

    /// The file names of the snapshots, in the generation's order.
    pub fn snapshot_names(&self) -> Vec<&str> {
        self.snapshots.iter().map(|(n, _, _)| n.as_str()).collect()
    }

    /// Writes snapshot `i`'s redb file to `out`.
    pub fn copy_snapshot(&self, i: usize, out: &mut dyn Write) -> Result<u64> {
        let (_, s, skip) = &self.snapshots[i];
        self.copy(s, *skip, out)
    }

    /// Everything in memory (tests).
    pub fn into_generation(self) -> Result<Generation> {
        let mut meta = Vec::new();
        self.copy_meta(&mut meta)?;
        let mut index = Vec::new();
        self.copy_index(&mut index)?;
        let mut snapshots = Vec::new();
        for i in 0..self.snapshots.len() {
            let mut b = Vec::new();
            self.copy_snapshot(i, &mut b)?;
            snapshots.push((self.snapshots[i].0.clone(), b));
        }
        Ok(Generation {
            header: self.header,
            meta,
            index,
            packs: self.packs,
            snapshots,
            gc_ack: self.gc_ack,
        })
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
    if b.len() < HEADER_LEN || &b[..8] != MAGIC {
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
