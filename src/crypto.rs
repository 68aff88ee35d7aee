//! Encryption at rest of a remote volume (`init --encrypt KEYFILE`): the volume key, the keys
//! derived from it, sealed pack records and the sealed metadata generation envelope.
//!
//! The volume key is 32 random bytes in a file the user keeps (`dedupfs keygen`); it is never
//! written anywhere by dedupfs. From it, with blake3's key derivation (distinct contexts, so
//! no two uses share a key):
//!
//! - the key id, `derive_key("dedupfs 2026 key id")[..8]`: recorded in `remote.json`,
//!   `volume.json` and the index, so a wrong key is refused before anything is written;
//! - the chunk naming key, `derive_key("dedupfs 2026 chunk id")`: chunks are named by keyed
//!   blake3, so the bucket holds no plain content hashes. A key therefore defines a dedup
//!   domain: volumes dedup against each other only when they share the key;
//! - the pack key, `derive_key("dedupfs 2026 pack")`, and the generation key,
//!   `derive_key("dedupfs 2026 generation")`: XChaCha20-Poly1305.
//!
//! Nonces are 24 random bytes, never counters: a counter would repeat after an `attach` of
//! the same volume elsewhere or a restore of older metadata, and a repeated nonce under one
//! key gives away the XOR of two plaintexts and the MAC key. With 192-bit random nonces a
//! repeat is out of reach however many records a volume writes.
//!
//! Invariants: a record's AAD binds its ciphertext to the chunk id, codec and raw length in
//! its header, so a record cannot be moved under another name or have its header edited
//! unnoticed; a generation's AAD is its envelope header (magic, format, key id, nonce).

use crate::error::{FsError, Result};
use crate::hash::{ChunkId, Hasher};
use crate::store::pack::RecordHeader;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use std::path::Path;

/// Bytes of a volume key.
pub const KEY_LEN: usize = 32;
/// Bytes of an XChaCha20 nonce.
pub const NONCE_LEN: usize = 24;
/// Bytes of a Poly1305 tag.
pub const MAC_LEN: usize = 16;
/// The record header's key id of a record sealed with the volume's pack key (0: plaintext).
pub const RECORD_KEY_ID: u8 = 1;
/// Environment variable naming the key file, over the one `remote.json` records.
pub const KEY_FILE_ENV: &str = "DEDUPFS_KEY_FILE";

const CTX_KEY_ID: &str = "dedupfs 2026 key id";
const CTX_CHUNK_ID: &str = "dedupfs 2026 chunk id";
const CTX_PACK: &str = "dedupfs 2026 pack";
const CTX_GENERATION: &str = "dedupfs 2026 generation";

/// Magic of a sealed metadata generation.
pub const GEN_MAGIC: &[u8; 8] = b"DDFSGENX";
const GEN_FORMAT: u32 = 1;
/// magic 8 | format 4 | key id 8 | nonce 24.
pub const GEN_HEADER_LEN: usize = 44;

/// Magic of a metadata generation sealed in segments (the envelope written since format 1
/// needed the whole generation in memory).
pub const GEN_STREAM_MAGIC: &[u8; 8] = b"DDFSGENS";
const GEN_STREAM_FORMAT: u32 = 1;
/// magic 8 | format 4 | key id 8 | segment length 4 | plaintext length 8 | salt 16.
pub const GEN_STREAM_HEADER_LEN: usize = 48;
/// Plaintext bytes per segment of a sealed generation (the last one may be shorter).
pub const GEN_SEGMENT: u32 = 1 << 20;
/// Largest segment length a sealed generation may declare (bounds a reader's buffer).
const GEN_SEGMENT_MAX: u32 = 64 << 20;

/// A volume key and what is derived from it. Debug output never shows key bytes.
#[derive(Clone)]
pub struct Key {
    id: [u8; 8],
    chunk: [u8; 32],
    pack: XChaCha20Poly1305,
    generation: XChaCha20Poly1305,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key(id {})", self.id_hex())
    }
}

fn refused(msg: String) -> FsError {
    FsError::Refused(msg)
}

/// The 32 key bytes of a key file's content: 32 raw bytes, or 64 hex digits and an optional
/// newline.
pub fn parse_key_file(raw: &[u8]) -> std::result::Result<[u8; KEY_LEN], String> {
    if raw.len() == KEY_LEN {
        let mut k = [0u8; KEY_LEN];
        k.copy_from_slice(raw);
        return Ok(k);
    }
    let text = raw.strip_suffix(b"\n").unwrap_or(raw);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if text.len() == 2 * KEY_LEN && text.iter().all(u8::is_ascii_hexdigit) {
        let mut k = [0u8; KEY_LEN];
        for (i, b) in k.iter_mut().enumerate() {
            let s = std::str::from_utf8(&text[2 * i..2 * i + 2]).map_err(|e| e.to_string())?;
            *b = u8::from_str_radix(s, 16).map_err(|e| e.to_string())?;
        }
        return Ok(k);
    }
    Err(format!(
        "{} bytes: a key file holds {KEY_LEN} random bytes, or {} hex digits (`dedupfs keygen` makes one)",
        raw.len(),
        2 * KEY_LEN
    ))
}

/// Fills `buf` from the kernel's random source.
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::rand::getrandom(&mut buf[done..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(FsError::Io(std::io::Error::other(format!(
                    "no random bytes for a nonce or key: {e}"
                ))));
            }
        }
    }
    Ok(())
}

/// `dedupfs keygen`: writes a new random key to `path` (mode 0600); refuses an existing file.
pub fn keygen(path: &Path) -> Result<Key> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut k = [0u8; KEY_LEN];
    random_bytes(&mut k)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => refused(format!(
                "{} exists: keygen never overwrites a key file (losing a key loses its volumes)",
                path.display()
            )),
            _ => FsError::Io(e),
        })?;
    f.write_all(&k)?;
    f.sync_all()?;
    Ok(Key::from_bytes(&k))
}

impl Key {
    pub fn from_bytes(k: &[u8; KEY_LEN]) -> Key {
        let id_full = blake3::derive_key(CTX_KEY_ID, k);
        let mut id = [0u8; 8];
        id.copy_from_slice(&id_full[..8]);
        let pack = blake3::derive_key(CTX_PACK, k);
        let generation = blake3::derive_key(CTX_GENERATION, k);
        Key {
            id,
            chunk: blake3::derive_key(CTX_CHUNK_ID, k),
            pack: XChaCha20Poly1305::new((&pack).into()),
            generation: XChaCha20Poly1305::new((&generation).into()),
        }
    }

    /// The key in file `path`, or a message saying what is wrong with it.
    pub fn load(path: &Path) -> Result<Key> {
        let raw = std::fs::read(path)
            .map_err(|e| refused(format!("cannot read the key file {}: {e}", path.display())))?;
        let k = parse_key_file(&raw)
            .map_err(|e| refused(format!("the key file {} is no key: {e}", path.display())))?;
        Ok(Key::from_bytes(&k))
    }

    /// The key file to use: `DEDUPFS_KEY_FILE` when set, else `recorded`.
    pub fn load_for_volume(recorded: &Path, want_id: &str) -> Result<Key> {
        let path = std::env::var_os(KEY_FILE_ENV)
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| recorded.to_path_buf());
        let key = Key::load(&path).map_err(|e| {
            refused(format!(
                "{e} (the volume is encrypted and needs its key; {KEY_FILE_ENV} names another \
                 key file)"
            ))
        })?;
        key.check_id(want_id, &path.display().to_string())?;
        Ok(key)
    }

    /// Refuses this key unless its id is `want` (hex).
    pub fn check_id(&self, want: &str, what: &str) -> Result<()> {
        if self.id_hex() != want {
            return Err(refused(format!(
                "wrong key: {what} has key id {}, the volume was encrypted with key id {want}",
                self.id_hex()
            )));
        }
        Ok(())
    }

    pub fn id(&self) -> [u8; 8] {
        self.id
    }

    pub fn id_hex(&self) -> String {
        crate::remote::config::hex(&self.id)
    }

    /// How the volume names chunks.
    pub fn hasher(&self) -> Hasher {
        Hasher::keyed(self.chunk)
    }

    /// Seals the stored (compressed) bytes of chunk `id`: the record header and its payload,
    /// nonce | ciphertext | tag.
    pub fn seal_record(
        &self,
        id: &ChunkId,
        codec: u8,
        raw_len: u32,
        stored: &[u8],
    ) -> Result<(RecordHeader, Vec<u8>)> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        self.seal_record_with_nonce(id, codec, raw_len, stored, nonce)
    }

    /// [`Key::seal_record`] with a given nonce (golden tests; never reuse one).
    pub fn seal_record_with_nonce(
        &self,
        id: &ChunkId,
        codec: u8,
        raw_len: u32,
        stored: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Result<(RecordHeader, Vec<u8>)> {
        let stored_len: u32 = stored.len().try_into().map_err(|_| FsError::TooBig)?;
        let mut payload = Vec::with_capacity(NONCE_LEN + stored.len() + MAC_LEN);
        payload.extend_from_slice(&nonce);
        payload.extend_from_slice(stored);
        let tag = self
            .pack
            .encrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                &record_aad(id, codec, raw_len),
                &mut payload[NONCE_LEN..],
            )
            .map_err(|_| FsError::Io(std::io::Error::other("record encryption failed")))?;
        payload.extend_from_slice(&tag);
        let header = RecordHeader {
            id: *id,
            codec,
            key_id: RECORD_KEY_ID,
            nonce_len: NONCE_LEN as u8,
            mac_len: MAC_LEN as u8,
            raw_len,
            stored_len,
            payload_crc: crc32c::crc32c(&payload),
        };
        Ok((header, payload))
    }

    /// The stored (compressed) bytes of a sealed record of chunk `id`, from its payload
    /// (nonce | ciphertext | tag); `None` when the tag fails (damage, or another key).
    pub fn open_record(
        &self,
        id: &ChunkId,
        codec: u8,
        raw_len: u32,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        if payload.len() < NONCE_LEN + MAC_LEN {
            return None;
        }
        let (nonce, rest) = payload.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - MAC_LEN);
        let mut buf = ct.to_vec();
        self.pack
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                &record_aad(id, codec, raw_len),
                &mut buf,
                Tag::from_slice(tag),
            )
            .ok()?;
        Some(buf)
    }

    /// Seals an encoded metadata generation whole, in the envelope dedupfs wrote before
    /// [`Key::seal_generation_stream`] (golden tests of that envelope, which is still read;
    /// never reuse a nonce).
    pub fn seal_generation_with_nonce(
        &self,
        plain: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(GEN_HEADER_LEN + plain.len() + MAC_LEN);
        out.extend_from_slice(GEN_MAGIC);
        out.extend_from_slice(&GEN_FORMAT.to_le_bytes());
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let (aad, body) = out.split_at_mut(GEN_HEADER_LEN);
        let tag = self
            .generation
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), aad, body)
            .map_err(|_| FsError::Io(std::io::Error::other("generation encryption failed")))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Seals an encoded generation of `plain_len` bytes read from `plain` into `out`, in
    /// segments of [`GEN_SEGMENT`] bytes: memory stays bounded whatever the generation's size.
    /// Returns the bytes written.
    ///
    /// ```text
    ///  0   8  magic "DDFSGENS"
    ///  8   4  format (u32 LE) = 1
    /// 12   8  key id
    /// 20   4  segment length L (u32 LE)
    /// 24   8  plaintext length P (u64 LE)
    /// 32  16  salt (random per object)
    /// 48      ceil(P / L) segments (one empty segment when P = 0), segment i:
    ///           ciphertext of plaintext bytes [i*L, min((i+1)*L, P)), then its 16-byte tag;
    ///           nonce = salt | i (u64 LE), AAD = bytes 0..48
    /// ```
    ///
    /// The header is every segment's AAD, so a changed length, key id or salt fails every
    /// segment; the index in the nonce and the length in the header catch reordered, dropped
    /// or appended segments; the random salt keeps segments of other objects out.
    pub fn seal_generation_stream(
        &self,
        plain: &mut dyn std::io::Read,
        plain_len: u64,
        out: &mut dyn std::io::Write,
    ) -> Result<u64> {
        let mut salt = [0u8; 16];
        random_bytes(&mut salt)?;
        self.seal_generation_stream_with_salt(plain, plain_len, out, salt)
    }

    /// [`Key::seal_generation_stream`] with a given salt (golden tests; never reuse one).
    pub fn seal_generation_stream_with_salt(
        &self,
        plain: &mut dyn std::io::Read,
        plain_len: u64,
        out: &mut dyn std::io::Write,
        salt: [u8; 16],
    ) -> Result<u64> {
        let mut header = [0u8; GEN_STREAM_HEADER_LEN];
        header[..8].copy_from_slice(GEN_STREAM_MAGIC);
        header[8..12].copy_from_slice(&GEN_STREAM_FORMAT.to_le_bytes());
        header[12..20].copy_from_slice(&self.id);
        header[20..24].copy_from_slice(&GEN_SEGMENT.to_le_bytes());
        header[24..32].copy_from_slice(&plain_len.to_le_bytes());
        header[32..48].copy_from_slice(&salt);
        out.write_all(&header)?;
        let mut buf = vec![0u8; GEN_SEGMENT as usize];
        let (mut left, mut i, mut written) = (plain_len, 0u64, GEN_STREAM_HEADER_LEN as u64);
        loop {
            let n = left.min(GEN_SEGMENT as u64) as usize;
            plain.read_exact(&mut buf[..n])?;
            let tag = self
                .generation
                .encrypt_in_place_detached(&segment_nonce(&salt, i), &header, &mut buf[..n])
                .map_err(|_| FsError::Io(std::io::Error::other("generation encryption failed")))?;
            out.write_all(&buf[..n])?;
            out.write_all(&tag)?;
            written += (n + MAC_LEN) as u64;
            left -= n as u64;
            i += 1;
            if left == 0 {
                return Ok(written);
            }
        }
    }

    /// Opens a generation sealed by [`Key::seal_generation_stream`], writing the plaintext to
    /// `out` segment by segment (a segment is written only once its tag is checked; a later
    /// failure leaves `out` partly written, and the caller discards it). Returns the plaintext
    /// length. Refuses another key's generation (by its key id), a damaged or truncated one,
    /// and bytes after the last segment.
    pub fn open_generation_stream(
        &self,
        sealed: &mut dyn std::io::Read,
        out: &mut dyn std::io::Write,
    ) -> Result<u64> {
        let bad = |what: &str| FsError::Corrupt(format!("encrypted metadata generation: {what}"));
        let eof = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bad("truncated")
            } else {
                FsError::Io(e)
            }
        };
        let mut header = [0u8; GEN_STREAM_HEADER_LEN];
        sealed.read_exact(&mut header).map_err(eof)?;
        if &header[..8] != GEN_STREAM_MAGIC {
            return Err(bad("not an encrypted generation (no magic)"));
        }
        let format = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
        if format != GEN_STREAM_FORMAT {
            return Err(bad(&format!(
                "segmented format {format} is not supported by this dedupfs ({GEN_STREAM_FORMAT})"
            )));
        }
        if header[12..20] != self.id {
            return Err(refused(format!(
                "wrong key: the metadata generation was encrypted with key id {}, this key's id is {}",
                crate::remote::config::hex(&header[12..20]),
                self.id_hex()
            )));
        }
        let seg = u32::from_le_bytes(header[20..24].try_into().unwrap_or_default());
        if seg == 0 || seg > GEN_SEGMENT_MAX {
            return Err(bad("bad segment length"));
        }
        let plain_len = u64::from_le_bytes(header[24..32].try_into().unwrap_or_default());
        let salt: [u8; 16] = header[32..48].try_into().unwrap_or_default();
        let mut buf = vec![0u8; seg as usize + MAC_LEN];
        let (mut left, mut i) = (plain_len, 0u64);
        loop {
            let n = left.min(seg as u64) as usize;
            sealed.read_exact(&mut buf[..n + MAC_LEN]).map_err(eof)?;
            let (ct, tag) = buf[..n + MAC_LEN].split_at_mut(n);
            self.generation
                .decrypt_in_place_detached(
                    &segment_nonce(&salt, i),
                    &header,
                    ct,
                    Tag::from_slice(tag),
                )
                .map_err(|_| bad("authentication failed (damaged object)"))?;
            out.write_all(ct)?;
            left -= n as u64;
            i += 1;
            if left == 0 {
                break;
            }
        }
        let mut extra = [0u8; 1];
        loop {
            match sealed.read(&mut extra) {
                Ok(0) => return Ok(plain_len),
                Ok(_) => return Err(bad("bytes after the last segment")),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The encoded generation inside a sealed one; refuses another key's generation (by its
    /// key id) and a damaged one (by its tag).
    pub fn open_generation(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        let bad = |what: &str| FsError::Corrupt(format!("encrypted metadata generation: {what}"));
        if !is_sealed_generation(sealed) || sealed.len() < GEN_HEADER_LEN + MAC_LEN {
            return Err(bad("not an encrypted generation (no magic)"));
        }
        let format = u32::from_le_bytes(sealed[8..12].try_into().unwrap_or_default());
        if format != GEN_FORMAT {
            return Err(bad(&format!(
                "format {format} is not supported by this dedupfs ({GEN_FORMAT})"
            )));
        }
        if sealed[12..20] != self.id {
            return Err(refused(format!(
                "wrong key: the metadata generation was encrypted with key id {}, this key's id is {}",
                crate::remote::config::hex(&sealed[12..20]),
                self.id_hex()
            )));
        }
        let (aad, rest) = sealed.split_at(GEN_HEADER_LEN);
        let (ct, tag) = rest.split_at(rest.len() - MAC_LEN);
        let mut buf = ct.to_vec();
        self.generation
            .decrypt_in_place_detached(
                XNonce::from_slice(&aad[20..44]),
                aad,
                &mut buf,
                Tag::from_slice(tag),
            )
            .map_err(|_| bad("authentication failed (damaged object)"))?;
        Ok(buf)
    }
}

/// Whether `b` starts like a sealed generation (the whole-object envelope; see
/// [`is_sealed_generation_stream`] for the segmented one).
pub fn is_sealed_generation(b: &[u8]) -> bool {
    b.len() >= 8 && &b[..8] == GEN_MAGIC
}

/// Whether `b` starts like a generation sealed in segments.
pub fn is_sealed_generation_stream(b: &[u8]) -> bool {
    b.len() >= 8 && &b[..8] == GEN_STREAM_MAGIC
}

/// The key id (hex) a sealed generation (either envelope) names; `None` for a plain one.
pub fn sealed_generation_key_id(b: &[u8]) -> Option<String> {
    ((is_sealed_generation(b) || is_sealed_generation_stream(b)) && b.len() >= 20)
        .then(|| crate::remote::config::hex(&b[12..20]))
}

/// Nonce of segment `i` of a generation sealed in segments: the object's salt, then `i`.
fn segment_nonce(salt: &[u8; 16], i: u64) -> XNonce {
    let mut n = [0u8; NONCE_LEN];
    n[..16].copy_from_slice(salt);
    n[16..].copy_from_slice(&i.to_le_bytes());
    XNonce::from(n)
}

/// AAD of a record: chunk id | codec | raw length (u32 LE).
fn record_aad(id: &ChunkId, codec: u8, raw_len: u32) -> [u8; 37] {
    let mut a = [0u8; 37];
    a[..32].copy_from_slice(&id.0);
    a[32] = codec;
    a[33..].copy_from_slice(&raw_len.to_le_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_detects_tampering() {
        let key = Key::from_bytes(&[7; 32]);
        let id = key.hasher().id(b"hello world");
        let (h, payload) = key.seal_record(&id, 0, 11, b"hello world").unwrap();
        assert_eq!((h.nonce_len, h.mac_len, h.key_id), (24, 16, 1));
        assert_eq!(payload.len() as u64, h.payload_len());
        assert!(!payload.windows(5).any(|w| w == b"hello"));
        assert_eq!(
            key.open_record(&id, 0, 11, &payload).as_deref(),
            Some(&b"hello world"[..])
        );
        // Every byte of the payload is covered: nonce, ciphertext, tag.
        for i in [0, 23, 24, 30, payload.len() - 1] {
            let mut bad = payload.clone();
            bad[i] ^= 1;
            assert_eq!(key.open_record(&id, 0, 11, &bad), None, "byte {i}");
        }
        // The header fields are bound: another name, codec or length fails.
        assert_eq!(key.open_record(&ChunkId([0; 32]), 0, 11, &payload), None);
        assert_eq!(key.open_record(&id, 1, 11, &payload), None);
        assert_eq!(key.open_record(&id, 0, 12, &payload), None);
        // Another key fails.
        assert_eq!(
            Key::from_bytes(&[8; 32]).open_record(&id, 0, 11, &payload),
            None
        );
        // Two seals of the same bytes differ (random nonces).
        let (_, again) = key.seal_record(&id, 0, 11, b"hello world").unwrap();
        assert_ne!(again, payload);
    }

    #[test]
    fn generation_round_trips_and_refuses_other_keys() {
        let key = Key::from_bytes(&[7; 32]);
        let sealed = key
            .seal_generation_with_nonce(b"generation bytes", [3; NONCE_LEN])
            .unwrap();
        assert!(is_sealed_generation(&sealed));
        assert_eq!(sealed_generation_key_id(&sealed), Some(key.id_hex()));
        assert_eq!(key.open_generation(&sealed).unwrap(), b"generation bytes");
        let other = Key::from_bytes(&[8; 32]);
        let e = other.open_generation(&sealed).unwrap_err().to_string();
        assert!(e.contains("wrong key"), "{e}");
        let mut bad = sealed.clone();
        bad[50] ^= 1;
        assert!(key.open_generation(&bad).is_err());
        let mut bad = sealed.clone();
        bad[25] ^= 1; // the nonce, part of the AAD
        assert!(key.open_generation(&bad).is_err());
    }

    #[test]
    fn segmented_generation_round_trips_and_refuses_other_keys() {
        let key = Key::from_bytes(&[7; 32]);
        let plain = b"generation bytes";
        let mut sealed = Vec::new();
        key.seal_generation_stream(&mut &plain[..], plain.len() as u64, &mut sealed)
            .unwrap();
        assert!(is_sealed_generation_stream(&sealed) && !is_sealed_generation(&sealed));
        assert_eq!(sealed_generation_key_id(&sealed), Some(key.id_hex()));
        let mut out = Vec::new();
        key.open_generation_stream(&mut &sealed[..], &mut out)
            .unwrap();
        assert_eq!(out, plain);
        let other = Key::from_bytes(&[8; 32]);
        let e = other
            .open_generation_stream(&mut &sealed[..], &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("wrong key"), "{e}");
        // An empty generation is one empty segment (its tag only).
        let mut empty = Vec::new();
        key.seal_generation_stream(&mut &b""[..], 0, &mut empty)
            .unwrap();
        assert_eq!(empty.len(), GEN_STREAM_HEADER_LEN + MAC_LEN);
        let mut out = Vec::new();
        assert_eq!(
            key.open_generation_stream(&mut &empty[..], &mut out)
                .unwrap(),
            0
        );
        // An absurd segment length is refused before anything is allocated.
        let mut bad = sealed.clone();
        bad[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = key
            .open_generation_stream(&mut &bad[..], &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("segment length"), "{e}");
    }

    #[test]
    fn key_files_are_raw_or_hex() {
        let raw = [0xabu8; 32];
        assert_eq!(parse_key_file(&raw).unwrap(), raw);
        let hex = "ab".repeat(32);
        assert_eq!(parse_key_file(hex.as_bytes()).unwrap(), raw);
        assert_eq!(parse_key_file(format!("{hex}\n").as_bytes()).unwrap(), raw);
        assert!(parse_key_file(b"short").is_err());
        assert!(parse_key_file("zz".repeat(32).as_bytes()).is_err());
        // Distinct derived keys: the id is not the chunk key's prefix.
        let k = Key::from_bytes(&raw);
        assert_ne!(&k.chunk[..8], &k.id[..]);
    }
}
