//! The pack file format: append-only files of self-describing chunk records.
//!
//! ```text
//! pack file  = pack header (32 bytes), then records back to back
//! pack header: 0 magic "DDFSPACK" | 8 version u32 LE (1) | 12 flags u32 (0)
//!              | 16 pack id u64 LE | 24 reserved u32 (0) | 28 crc32c of bytes 0..28
//! record     = header (64 bytes) | nonce (nonce_len) | stored bytes (stored_len) | MAC (mac_len)
//! record header:
//!   0 magic "DDRC"     4 version u8 (1)   5 codec u8        6 key id u8 (0: plaintext, 1: sealed)
//!   7 nonce_len u8     8 chunk id [32]    40 raw_len u32    44 stored_len u32
//!   48 mac_len u8      49 reserved [3]    52 crc32c of nonce|stored|MAC
//!   56 reserved u32    60 crc32c of header bytes 0..60
//! ```
//!
//! Invariants: every record states its chunk id, lengths, codec and a checksum of what follows
//! it, so the chunk index can be rebuilt from the packs alone; the header checksum lets a scan
//! tell a record from garbage and resynchronise on the next magic after damage. The key id,
//! nonce and MAC fields are zero/empty in plaintext records; an encrypted volume's records
//! (`crypto.rs`: key id 1, a 24-byte nonce, a 16-byte Poly1305 tag around the stored bytes)
//! use them without changing the layout, and the payload checksum covers all three. All integers are little-endian. Changing any
//! constant here is a format change: `tests/golden_pack.rs` pins them.

use crate::hash::ChunkId;

pub const PACK_MAGIC: [u8; 8] = *b"DDFSPACK";
pub const PACK_VERSION: u32 = 1;
pub const PACK_HEADER_LEN: u64 = 32;
pub const RECORD_MAGIC: [u8; 4] = *b"DDRC";
pub const RECORD_VERSION: u8 = 1;
pub const RECORD_HEADER_LEN: usize = 64;

/// File name of pack `id` inside `STORE/packs/`.
pub fn pack_file_name(id: u64) -> String {
    format!("{id:016x}.pack")
}

/// The pack id a file name stands for (`None` for anything else in the directory).
pub fn parse_pack_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".pack")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

pub fn encode_pack_header(pack_id: u64) -> [u8; PACK_HEADER_LEN as usize] {
    let mut h = [0u8; PACK_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&PACK_MAGIC);
    h[8..12].copy_from_slice(&PACK_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&pack_id.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The pack id a pack header names, or why it is not a pack header.
pub fn decode_pack_header(h: &[u8]) -> Result<u64, String> {
    if h.len() < PACK_HEADER_LEN as usize || h[0..8] != PACK_MAGIC {
        return Err("not a dedupfs pack (bad magic)".into());
    }
    if crc32c::crc32c(&h[0..28]) != u32::from_le_bytes(h[28..32].try_into().unwrap_or_default()) {
        return Err("pack header checksum mismatch".into());
    }
    let version = u32::from_le_bytes(h[8..12].try_into().unwrap_or_default());
    if version != PACK_VERSION {
        return Err(format!(
            "pack format version {version} (this dedupfs reads {PACK_VERSION})"
        ));
    }
    Ok(u64::from_le_bytes(h[16..24].try_into().unwrap_or_default()))
}

/// The fixed header of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub id: ChunkId,
    pub codec: u8,
    pub key_id: u8,
    pub nonce_len: u8,
    pub mac_len: u8,
    pub raw_len: u32,
    pub stored_len: u32,
    /// crc32c of nonce | stored bytes | MAC.
    pub payload_crc: u32,
}

impl RecordHeader {
    /// A plaintext record of `stored` bytes.
    pub fn plain(id: ChunkId, codec: u8, raw_len: u32, stored: &[u8]) -> RecordHeader {
        RecordHeader {
            id,
            codec,
            key_id: 0,
            nonce_len: 0,
            mac_len: 0,
            raw_len,
            stored_len: stored.len() as u32,
            payload_crc: crc32c::crc32c(stored),
        }
    }

    /// Bytes after the header: nonce, stored bytes, MAC.
    pub fn payload_len(&self) -> u64 {
        self.nonce_len as u64 + self.stored_len as u64 + self.mac_len as u64
    }

    /// The whole record, header included.
    pub fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + self.payload_len()
    }

    /// Offset of the stored bytes from the start of the record.
    pub fn stored_offset(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + self.nonce_len as u64
    }

    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[0..4].copy_from_slice(&RECORD_MAGIC);
        h[4] = RECORD_VERSION;
        h[5] = self.codec;
        h[6] = self.key_id;
        h[7] = self.nonce_len;
        h[8..40].copy_from_slice(&self.id.0);
        h[40..44].copy_from_slice(&self.raw_len.to_le_bytes());
        h[44..48].copy_from_slice(&self.stored_len.to_le_bytes());
        h[48] = self.mac_len;
        h[52..56].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes a header; `None` when the bytes are not a valid record header.
    pub fn decode(h: &[u8]) -> Option<RecordHeader> {
        if h.len() < RECORD_HEADER_LEN || h[0..4] != RECORD_MAGIC || h[4] != RECORD_VERSION {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        if crc32c::crc32c(&h[0..60]) != u32_at(60) {
            return None;
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&h[8..40]);
        Some(RecordHeader {
            id: ChunkId(id),
            codec: h[5],
            key_id: h[6],
            nonce_len: h[7],
            raw_len: u32_at(40),
            stored_len: u32_at(44),
            mac_len: h[48],
            payload_crc: u32_at(52),
        })
    }
}

/// What a scan of a pack's bytes finds, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanItem {
    /// A record with a valid header at `offset`; `payload_ok` says whether its payload
    /// checksum matched.
    Record {
        offset: u64,
        header: RecordHeader,
        payload_ok: bool,
    },
    /// Bytes `[offset, offset+len)` are no valid record (damage); the scan resumed after them.
    Garbage { offset: u64, len: u64 },
    /// A valid record header at `offset` whose payload runs past the end of the data (a torn
    /// tail after a crash).
    Torn { offset: u64 },
}

/// Walks the records of a whole pack file held in `data` (header included), resynchronising
/// on the next valid record header after damage. The pack header itself is not checked here.
pub fn scan(data: &[u8], mut f: impl FnMut(ScanItem)) {
    let mut pos = PACK_HEADER_LEN as usize;
    let end = data.len();
    while pos < end {
        if let Some(h) = RecordHeader::decode(&data[pos..]) {
            let rec_end = pos as u64 + h.record_len();
            if rec_end > end as u64 {
                f(ScanItem::Torn { offset: pos as u64 });
                return;
            }
            let payload = &data[pos + RECORD_HEADER_LEN..rec_end as usize];
            f(ScanItem::Record {
                offset: pos as u64,
                header: h,
                payload_ok: crc32c::crc32c(payload) == h.payload_crc,
            });
            pos = rec_end as usize;
            continue;
        }
        // Resynchronise: the next offset where a valid header starts.
        let start = pos;
        pos += 1;
        while pos < end {
            match data[pos..].windows(4).position(|w| w == RECORD_MAGIC) {
                Some(i) => {
                    pos += i;
                    if RecordHeader::decode(&data[pos..]).is_some() {
                        break;
                    }
                    pos += 1;
                }
                None => pos = end,
            }
        }
        f(ScanItem::Garbage {
            offset: start as u64,
            len: (pos - start) as u64,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id_seed: u8, payload: &[u8]) -> Vec<u8> {
        let id = ChunkId::of(&[id_seed]);
        let h = RecordHeader::plain(id, 0, payload.len() as u32, payload);
        let mut v = h.encode().to_vec();
        v.extend_from_slice(payload);
        v
    }

    fn items(data: &[u8]) -> Vec<ScanItem> {
        let mut v = Vec::new();
        scan(data, |i| v.push(i));
        v
    }

    #[test]
    fn scan_finds_records_and_resynchronises_after_damage() {
        let mut pack = encode_pack_header(7).to_vec();
        assert_eq!(decode_pack_header(&pack), Ok(7));
        let r1 = record(1, b"first chunk");
        let r2 = record(2, &[9u8; 1000]);
        let r3 = record(3, b"third");
        pack.extend_from_slice(&r1);
        let r2_at = pack.len();
        pack.extend_from_slice(&r2);
        pack.extend_from_slice(&r3);
        let all = items(&pack);
        assert_eq!(all.len(), 3);
        assert!(all.iter().all(|i| matches!(
            i,
            ScanItem::Record {
                payload_ok: true,
                ..
            }
        )));

        // A flipped header byte of r2: r2 becomes garbage, r3 is found again.
        let mut bad = pack.clone();
        bad[r2_at + 10] ^= 0x40;
        let got = items(&bad);
        assert!(matches!(
            got[0],
            ScanItem::Record {
                payload_ok: true,
                ..
            }
        ));
        assert!(matches!(got[1], ScanItem::Garbage { offset, .. } if offset == r2_at as u64));
        assert!(
            matches!(got[2], ScanItem::Record { header, payload_ok: true, .. } if header.id == ChunkId::of(&[3]))
        );

        // A flipped payload byte: the record is found, its payload flagged.
        let mut bad = pack.clone();
        bad[r2_at + RECORD_HEADER_LEN + 5] ^= 1;
        assert!(matches!(
            items(&bad)[1],
            ScanItem::Record {
                payload_ok: false,
                ..
            }
        ));

        // A torn tail.
        let torn = &pack[..pack.len() - 2];
        assert!(matches!(items(torn).last(), Some(ScanItem::Torn { .. })));
    }

    #[test]
    fn pack_names_round_trip() {
        assert_eq!(pack_file_name(0x1f), "000000000000001f.pack");
        assert_eq!(parse_pack_file_name("000000000000001f.pack"), Some(0x1f));
        assert_eq!(parse_pack_file_name("1f.pack"), None);
        assert_eq!(parse_pack_file_name("index.redb"), None);
        assert!(decode_pack_header(b"DDFSPACKxxxxxxxxxxxxxxxxxxxxxxxxxxxx").is_err());
    }
}
