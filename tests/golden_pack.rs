//! Golden test of the pack format: the byte layout of pack headers, record headers and index
//! entries, and the codec ids, are on-disk format. A change to any of them would make existing
//! packs unreadable (or, worse, misread), so it must fail here and be made on purpose, with a
//! new format version and a migration.

use dedupfs::hash::ChunkId;
use dedupfs::store::codec::{CODEC_LZ4, CODEC_NONE, CODEC_ZSTD, Codec};
use dedupfs::store::pack::{
    PACK_HEADER_LEN, PACK_MAGIC, PACK_VERSION, RECORD_HEADER_LEN, RECORD_MAGIC, RECORD_VERSION,
    RecordHeader, encode_pack_header, pack_file_name,
};
use dedupfs::store::pack_index::{INDEX_FORMAT, Loc, PackRow, PackState};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn format_constants_are_pinned() {
    assert_eq!(&PACK_MAGIC, b"DDFSPACK");
    assert_eq!(PACK_VERSION, 1);
    assert_eq!(PACK_HEADER_LEN, 32);
    assert_eq!(&RECORD_MAGIC, b"DDRC");
    assert_eq!(RECORD_VERSION, 1);
    assert_eq!(RECORD_HEADER_LEN, 64);
    assert_eq!((CODEC_NONE, CODEC_ZSTD, CODEC_LZ4), (0, 1, 2));
    assert_eq!(Codec::Zstd(3).id(), 1);
    assert_eq!(Codec::Lz4.id(), 2);
    assert_eq!(Codec::None.id(), 0);
    assert_eq!(INDEX_FORMAT, 1);
    assert_eq!(pack_file_name(0xabc), "0000000000000abc.pack");
}

#[test]
fn pack_header_bytes_are_pinned() {
    assert_eq!(
        hex(&encode_pack_header(0x0102_0304_0506_0708)),
        "444446535041434b01000000000000000807060504030201000000000002749b"
    );
}

#[test]
fn record_header_bytes_are_pinned() {
    let stored = b"stored bytes of a chunk";
    let h = RecordHeader::plain(ChunkId::of(b"plaintext"), CODEC_ZSTD, 1000, stored);
    let bytes = h.encode();
    // Field by field, so a failure says which one moved.
    assert_eq!(&bytes[0..4], b"DDRC");
    assert_eq!(bytes[4], 1, "record version");
    assert_eq!(bytes[5], CODEC_ZSTD, "codec");
    assert_eq!(bytes[6], 0, "key id");
    assert_eq!(bytes[7], 0, "nonce length");
    assert_eq!(&bytes[8..40], &ChunkId::of(b"plaintext").0, "chunk id");
    assert_eq!(&bytes[40..44], &1000u32.to_le_bytes(), "raw length");
    assert_eq!(
        &bytes[44..48],
        &(stored.len() as u32).to_le_bytes(),
        "stored length"
    );
    assert_eq!(bytes[48], 0, "MAC length");
    assert_eq!(&bytes[49..52], &[0, 0, 0], "reserved");
    assert_eq!(
        &bytes[52..56],
        &crc32c::crc32c(stored).to_le_bytes(),
        "payload checksum"
    );
    assert_eq!(&bytes[56..60], &[0, 0, 0, 0], "reserved");
    assert_eq!(
        &bytes[60..64],
        &crc32c::crc32c(&bytes[0..60]).to_le_bytes(),
        "header checksum"
    );
    // And the whole, once, as bytes.
    assert_eq!(
        hex(&bytes),
        format!(
            "4444524301010000{}e8030000{}00000000{}00000000{}",
            hex(&ChunkId::of(b"plaintext").0),
            hex(&(stored.len() as u32).to_le_bytes()),
            hex(&crc32c::crc32c(stored).to_le_bytes()),
            hex(&crc32c::crc32c(&bytes[0..60]).to_le_bytes())
        )
    );
    assert_eq!(RecordHeader::decode(&bytes), Some(h));
}

#[test]
fn index_entry_bytes_are_pinned() {
    let loc = Loc {
        pack: 0x11,
        offset: 0x2233,
        stored_len: 0x44,
        raw_len: 0x55,
        codec: 1,
        nonce_len: 0,
        mac_len: 0,
        key_id: 0,
    };
    assert_eq!(
        hex(&loc.encode()),
        "1100000000000000332200000000000044000000550000000100000000000000"
    );
    assert_eq!(Loc::decode(&loc.encode()), loc);
    let row = PackRow {
        len: 0x100,
        live_bytes: 0x80,
        live_records: 2,
        state: PackState::Sealed,
    };
    assert_eq!(
        hex(&row.encode()),
        "0001000000000000800000000000000002000000000000000100000000000000"
    );
    assert_eq!(PackRow::decode(&row.encode()), row);
}

/// An encrypted record (XChaCha20-Poly1305, crypto.rs) with a fixed key and nonce: the
/// header fields, the payload layout (nonce | ciphertext | tag) and every byte, pinned.
#[test]
fn encrypted_record_bytes_are_pinned() {
    let key = dedupfs::crypto::Key::from_bytes(&[0x42; 32]);
    let stored = b"stored bytes of a chunk";
    // Chunk names of an encrypted volume are keyed blake3: pinned too.
    let id = key.hasher().id(b"plaintext");
    assert_ne!(id, ChunkId::of(b"plaintext"));
    assert_eq!(
        id.to_hex(),
        "c85082b7c48cbcaaf3390e2a96044de9849ce58b10961b0e516cf676077be0df"
    );
    let (h, payload) = key
        .seal_record_with_nonce(&id, CODEC_NONE, 23, stored, [0x24; 24])
        .unwrap();
    let bytes = h.encode();
    assert_eq!(bytes[6], 1, "key id");
    assert_eq!(bytes[7], 24, "nonce length");
    assert_eq!(bytes[48], 16, "MAC length");
    assert_eq!(&bytes[44..48], &23u32.to_le_bytes(), "stored length");
    assert_eq!(
        &bytes[52..56],
        &crc32c::crc32c(&payload).to_le_bytes(),
        "payload checksum covers nonce, ciphertext and tag"
    );
    assert_eq!(payload.len(), 24 + 23 + 16);
    assert_eq!(&payload[..24], &[0x24; 24], "nonce first");
    assert_eq!(h.record_len(), 64 + 24 + 23 + 16);
    assert_eq!(
        hex(&payload),
        "242424242424242424242424242424242424242424242424a45a1e8b067a7d494e925ebd6b7cb6c91da617901374f45adf4ec674550963a499d4224f9c678a"
    );
    assert_eq!(RecordHeader::decode(&bytes), Some(h));
    assert_eq!(
        key.open_record(&id, CODEC_NONE, 23, &payload).as_deref(),
        Some(&stored[..])
    );
}
