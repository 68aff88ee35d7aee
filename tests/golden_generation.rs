//! Golden test of a remote volume's formats: the metadata generation object
//! (`remote::generation`, tests/data/generation-v1.bin and generation-v2.bin), the object keys in the bucket and the
//! local pack table line. A generation written by this version must decode exactly in every
//! later one (an attach of an older volume), and the keys must not move (a store would no
//! longer find its packs), so a change fails here and must be made on purpose, with a
//! migration.
//!
//! `cargo test --release --test golden_generation -- --ignored write_golden_file` rewrites the
//! file of the current format (only when it changes on purpose, as a new version's file).

use dedupfs::remote::config::{
    Keys, VolumeConfig, foreign_pack_key, gen_name, parse_gen_name, parse_pack_key,
};
use dedupfs::remote::generation::{self, Generation, Header, Origin, PackRef};
use std::path::{Path, PathBuf};

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/generation-v1.bin")
}

fn golden_v2() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/generation-v2.bin")
}

/// generation-v2.bin sealed (encrypted volume) with `golden_key()` and `GOLDEN_NONCE`.
fn golden_sealed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/generation-sealed-v1.bin")
}

/// generation-v2.bin sealed in segments with `golden_key()` and `GOLDEN_SALT`.
fn golden_sealed_v2() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/generation-sealed-v2.bin")
}

const GOLDEN_SALT: [u8; 16] = [0x5a; 16];

fn golden_key() -> dedupfs::crypto::Key {
    dedupfs::crypto::Key::from_bytes(&[0x42; 32])
}

const GOLDEN_NONCE: [u8; 24] = [0x24; 24];

/// Format 2: format 1's sample plus a pack of another volume (shared dedup) and a gc
/// acknowledgement.
fn sample_v2() -> Generation {
    let mut g = sample();
    g.packs.push(PackRef {
        id: (1 << 62) + 3,
        len: 1_048_576,
        hash: [0x5c; 16],
        origin: Some(Origin {
            volume: 0x0000_0000_feed_f00d,
            pack: 0x77,
        }),
    });
    g.gc_ack = 9;
    g
}

/// What the format-1 file holds (written by dedupfs of session 7).
fn sample() -> Generation {
    Generation {
        header: Header {
            generation: 42,
            writer: 0x0123_4567_89ab_cdef,
            parent: 41,
            created_ns: 1_796_000_000_123_456_789,
        },
        // Stand-ins for the redb files: the object carries them as bytes.
        meta: (0..70_000u32).map(|i| (i % 251) as u8).collect(),
        index: b"index bytes".repeat(100),
        packs: vec![
            PackRef::own(1, 33_554_999, [0xaa; 16]),
            PackRef::own(0x1_0000_0002, 64, *b"0123456789abcdef"),
        ],
        snapshots: vec![("00007.redb".into(), b"snapshot file".to_vec())],
        gc_ack: 0,
    }
}

/// `g` is exactly what `sample_v2()` holds.
fn assert_is_sample_v2(g: &Generation) {
    assert_same(g, &sample_v2());
}

/// `g` holds exactly what `want` does.
fn assert_same(g: &Generation, want: &Generation) {
    assert_eq!(g.header, want.header);
    assert_eq!(g.meta, want.meta);
    assert_eq!(g.index, want.index);
    assert_eq!(g.packs, want.packs);
    assert_eq!(g.snapshots, want.snapshots);
    assert_eq!(g.gc_ack, want.gc_ack);
}

/// A sealed generation is refused, saying what is wrong, with another key and with none.
fn assert_refused_without_its_key(raw: &[u8]) {
    let other = dedupfs::crypto::Key::from_bytes(&[0x43; 32]);
    let e = generation::decode_for(raw, Some(&other))
        .unwrap_err()
        .to_string();
    assert!(e.contains("wrong key"), "{e}");
    let e = generation::decode_for(raw, None).unwrap_err().to_string();
    assert!(e.contains("encrypted") && e.contains("--encrypt"), "{e}");
}

fn keys() -> Keys {
    let mut c = VolumeConfig::new("s3://bucket/prefix", None, "vm-images", 1 << 30);
    c.volume_id = "00000000deadbeef".into();
    c.keys()
}

#[test]
#[ignore]
fn write_golden_file() {
    std::fs::write(golden_v2(), generation::encode(&sample_v2()).unwrap()).unwrap();
}

#[test]
#[ignore]
fn write_golden_sealed_file() {
    let plain = std::fs::read(golden_v2()).unwrap();
    let sealed = golden_key()
        .seal_generation_with_nonce(&plain, GOLDEN_NONCE)
        .unwrap();
    std::fs::write(golden_sealed(), sealed).unwrap();
}

#[test]
#[ignore]
fn write_golden_sealed_v2_file() {
    let plain = std::fs::read(golden_v2()).unwrap();
    let mut sealed = Vec::new();
    golden_key()
        .seal_generation_stream_with_salt(
            &mut &plain[..],
            plain.len() as u64,
            &mut sealed,
            GOLDEN_SALT,
        )
        .unwrap();
    std::fs::write(golden_sealed_v2(), sealed).unwrap();
}

fn seal_stream(key: &dedupfs::crypto::Key, plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    key.seal_generation_stream(&mut &plain[..], plain.len() as u64, &mut out)
        .unwrap();
    out
}

/// The envelope written since generations are sealed in segments: its bytes, what it opens
/// to, and that it opens with its key only and refuses any damage.
#[test]
fn the_golden_segmented_generation_opens_exactly_with_its_key_only() {
    let raw = std::fs::read(golden_sealed_v2()).expect("tests/data/generation-sealed-v2.bin");
    let key = golden_key();
    let plain = std::fs::read(golden_v2()).unwrap();
    assert_eq!(&raw[..8], b"DDFSGENS");
    assert_eq!(u32::from_le_bytes(raw[8..12].try_into().unwrap()), 1);
    assert_eq!(raw[12..20], key.id(), "key id");
    assert_eq!(
        u32::from_le_bytes(raw[20..24].try_into().unwrap()),
        1 << 20,
        "segment"
    );
    assert_eq!(
        u64::from_le_bytes(raw[24..32].try_into().unwrap()),
        plain.len() as u64
    );
    assert_eq!(raw[32..48], GOLDEN_SALT, "salt");
    assert_eq!(raw.len(), 48 + plain.len() + 16, "one segment and its tag");
    let mut opened = Vec::new();
    assert_eq!(
        key.open_generation_stream(&mut &raw[..], &mut opened)
            .unwrap(),
        plain.len() as u64
    );
    assert_eq!(opened, plain);
    let g = generation::decode_for(&raw, Some(&key)).unwrap();
    assert_is_sample_v2(&g);
    let want = sample_v2();
    let mut again = Vec::new();
    key.seal_generation_stream_with_salt(
        &mut &plain[..],
        plain.len() as u64,
        &mut again,
        GOLDEN_SALT,
    )
    .unwrap();
    assert_eq!(again, raw);
    // What this version writes for an encrypted volume is this envelope, with a fresh salt.
    let written = generation::encode_for(&want, Some(&key)).unwrap();
    assert_eq!(&written[..8], b"DDFSGENS");
    assert_ne!(written[32..48], raw[32..48], "salt reused");
    assert_eq!(
        generation::decode_for(&written, Some(&key)).unwrap().meta,
        want.meta
    );
    assert_refused_without_its_key(&raw);
    for at in [9, 21, 25, 33, 47, 48, raw.len() / 2, raw.len() - 1] {
        let mut bad = raw.clone();
        bad[at] ^= 0x10;
        assert!(
            generation::decode_for(&bad, Some(&key)).is_err(),
            "flip at {at} accepted"
        );
    }
    assert!(generation::decode_for(&raw[..raw.len() - 1], Some(&key)).is_err());
    let mut longer = raw.clone();
    longer.push(0);
    assert!(generation::decode_for(&longer, Some(&key)).is_err());
}

/// Segments of a generation longer than one: reordered, dropped, appended or taken from
/// another object sealed with the same key, each is refused.
#[test]
fn segments_of_a_sealed_generation_cannot_be_moved() {
    let key = golden_key();
    let seg = 1 << 20;
    let plain: Vec<u8> = (0..3 * seg + 1000).map(|i| (i * 7 % 253) as u8).collect();
    let a = seal_stream(&key, &plain);
    let b = seal_stream(&key, &plain);
    let stride = seg + 16;
    assert_eq!(a.len(), 48 + 3 * stride + 1000 + 16);
    let open = |raw: &[u8]| {
        let mut out = Vec::new();
        key.open_generation_stream(&mut &raw[..], &mut out)
            .map(|_| out)
    };
    assert_eq!(open(&a).unwrap(), plain);
    assert_eq!(open(&b).unwrap(), plain);
    let seg_at = |i: usize| 48 + i * stride..48 + (i + 1) * stride;
    // Segments 0 and 1 swapped.
    let mut swapped = a.clone();
    swapped[seg_at(0)].copy_from_slice(&a[seg_at(1)]);
    swapped[seg_at(1)].copy_from_slice(&a[seg_at(0)]);
    assert!(open(&swapped).is_err(), "swapped segments accepted");
    // Segment 1 from another object of the same plaintext and key.
    let mut spliced = a.clone();
    spliced[seg_at(1)].copy_from_slice(&b[seg_at(1)]);
    assert!(
        open(&spliced).is_err(),
        "a segment of another object accepted"
    );
    // The last segment dropped, with the length in the header made to match.
    let mut cut = a[..48 + 3 * stride].to_vec();
    cut[24..32].copy_from_slice(&(3 * seg as u64).to_le_bytes());
    assert!(open(&cut).is_err(), "a dropped last segment accepted");
    assert!(open(&a[..48 + 3 * stride]).is_err(), "truncation accepted");
}

/// A generation far larger than what may be held in memory is written, sealed, opened and
/// copied out as streams: the process's peak memory grows by a small fraction of it.
#[test]
fn a_large_generation_is_written_and_read_in_bounded_memory() {
    use std::io::{Read, Seek};
    const LEN: u64 = 256 << 20;
    /// Incompressible bytes, made as they are read.
    struct Noise(u64, u64);
    impl Read for Noise {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.1 as usize) / 8 * 8;
            for c in buf[..n].chunks_exact_mut(8) {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                c.copy_from_slice(&self.0.to_le_bytes());
            }
            self.1 -= n as u64;
            Ok(n)
        }
    }
    fn peak_kib() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
    let mut want = blake3::Hasher::new();
    std::io::copy(&mut Noise(0x9e37_79b9_7f4a_7c15, LEN), &mut want).unwrap();
    let before = peak_kib();
    let dir = tempfile::tempdir().unwrap();
    let key = golden_key();
    let (mut meta, mut index) = (Noise(0x9e37_79b9_7f4a_7c15, LEN), &b"index"[..]);
    let parts = generation::Parts {
        header: sample().header,
        meta: (&mut meta, LEN),
        index: (&mut index, 5),
        packs: &sample().packs,
        snapshots: Vec::new(),
        gc_ack: 3,
    };
    let (mut plain, plain_len) =
        generation::write(parts, generation::scratch_file(dir.path()).unwrap()).unwrap();
    plain.rewind().unwrap();
    let mut sealed = generation::scratch_file(dir.path()).unwrap();
    key.seal_generation_stream(&mut std::io::BufReader::new(plain), plain_len, &mut sealed)
        .unwrap();
    let g = generation::open_object(sealed, Some(&key), dir.path()).unwrap();
    assert_eq!((g.header.generation, g.gc_ack), (42, 3));
    let mut got = blake3::Hasher::new();
    assert_eq!(g.copy_meta(&mut got).unwrap(), LEN);
    assert_eq!(
        got.finalize(),
        want.finalize(),
        "the metadata read back differs"
    );
    let grown_mib = peak_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib < 64,
        "peak memory grew by {grown_mib} MiB for a {} MiB generation",
        LEN >> 20
    );
}

#[test]
fn the_golden_sealed_generation_opens_exactly_with_its_key_only() {
    let raw = std::fs::read(golden_sealed()).expect("tests/data/generation-sealed-v1.bin");
    let key = golden_key();
    // The envelope header, field by field.
    assert_eq!(&raw[..8], b"DDFSGENX");
    assert_eq!(u32::from_le_bytes(raw[8..12].try_into().unwrap()), 1);
    assert_eq!(raw[12..20], key.id(), "key id");
    assert_eq!(raw[20..44], GOLDEN_NONCE, "nonce");
    let plain = std::fs::read(golden_v2()).unwrap();
    assert_eq!(raw.len(), 44 + plain.len() + 16, "ciphertext and tag");
    // The key id and the derivations are format too: pinned.
    assert_eq!(key.id_hex(), "8d59d26d06ca7eae");
    assert_eq!(key.open_generation(&raw).unwrap(), plain);
    let g = generation::decode_for(&raw, Some(&key)).unwrap();
    let want = sample_v2();
    assert_eq!(g.header, want.header);
    assert_eq!(g.meta, want.meta);
    assert_eq!(g.packs, want.packs);
    assert_eq!(g.gc_ack, 9);
    // This version writes exactly these bytes for this key and nonce.
    assert_eq!(
        key.seal_generation_with_nonce(&plain, GOLDEN_NONCE)
            .unwrap(),
        raw
    );
    // Another key, no key, and a flipped byte are refused with what is wrong.
    assert_refused_without_its_key(&raw);
    for at in [12, 30, 44, raw.len() / 2, raw.len() - 1] {
        let mut bad = raw.clone();
        bad[at] ^= 0x10;
        assert!(
            generation::decode_for(&bad, Some(&key)).is_err(),
            "flip at {at} accepted"
        );
    }
    // An unencrypted generation is not accepted for an encrypted volume.
    assert!(generation::decode_for(&plain, Some(&key)).is_err());
}

#[test]
fn the_golden_v2_generation_decodes_exactly() {
    let raw = std::fs::read(golden_v2()).expect("tests/data/generation-v2.bin");
    assert_eq!(&raw[..8], b"DDFSGEN\0");
    assert_eq!(u32::from_le_bytes(raw[8..12].try_into().unwrap()), 2);
    // meta, index, pack table, gc, one snapshot
    assert_eq!(u32::from_le_bytes(raw[44..48].try_into().unwrap()), 5);
    let g = generation::decode(&raw).unwrap();
    assert_is_sample_v2(&g);
    let want = sample_v2();
    // This version writes exactly these bytes.
    assert_eq!(generation::encode(&want).unwrap(), raw);
}

#[test]
fn the_golden_generation_decodes_exactly() {
    let raw = std::fs::read(golden()).expect("tests/data/generation-v1.bin");
    // The fixed header, byte by byte.
    assert_eq!(&raw[..8], b"DDFSGEN\0");
    assert_eq!(u32::from_le_bytes(raw[8..12].try_into().unwrap()), 1);
    assert_eq!(u64::from_le_bytes(raw[12..20].try_into().unwrap()), 42);
    assert_eq!(
        u64::from_le_bytes(raw[20..28].try_into().unwrap()),
        0x0123_4567_89ab_cdef
    );
    assert_eq!(u64::from_le_bytes(raw[28..36].try_into().unwrap()), 41);
    assert_eq!(u32::from_le_bytes(raw[44..48].try_into().unwrap()), 4);
    let g = generation::decode(&raw).unwrap();
    let want = sample();
    assert_same(&g, &want);
    assert_eq!(generation::decode_header(&raw).unwrap(), want.header);
}

#[test]
fn this_version_round_trips_and_refuses_damage() {
    let raw = generation::encode(&sample_v2()).unwrap();
    let g = generation::decode(&raw).unwrap();
    assert_eq!(g.packs, sample_v2().packs);
    assert_eq!(g.gc_ack, 9);
    // Any flipped byte, a cut object and trailing bytes are refused, never misread.
    for at in [
        0,
        9,
        13,
        47,
        60,
        raw.len() / 2,
        raw.len() - 33,
        raw.len() - 1,
    ] {
        let mut bad = raw.clone();
        bad[at] ^= 0x10;
        assert!(generation::decode(&bad).is_err(), "flip at {at} accepted");
    }
    assert!(generation::decode(&raw[..raw.len() - 1]).is_err());
    assert!(generation::decode(&raw[..40]).is_err());
    let mut longer = raw.clone();
    longer.push(0);
    assert!(generation::decode(&longer).is_err());
}

/// Sections are decoded when a generation is opened, not later: a generation whose checksum
/// is right but whose section does not decode to exactly its length, as one zstd frame with
/// nothing after it, is refused (a reader then skips it for an older one).
#[test]
fn a_generation_with_a_section_that_does_not_decode_is_refused_whole() {
    let raw = generation::encode(&sample_v2()).unwrap();
    let resum = |mut b: Vec<u8>| {
        let body = b.len() - 32;
        let sum = *blake3::hash(&b[..body]).as_bytes();
        b[body..].copy_from_slice(&sum);
        b
    };
    assert!(generation::decode(&resum(raw.clone())).is_ok());
    let stored = u64::from_le_bytes(raw[64..72].try_into().unwrap()) as usize;
    // The frame's magic broken.
    let mut b = raw.clone();
    b[72] ^= 0xff;
    let e = generation::decode(&resum(b)).unwrap_err().to_string();
    assert!(e.contains("decompress"), "{e}");
    // A raw length one more than the frame holds.
    let mut b = raw.clone();
    let raw_len = u64::from_le_bytes(b[56..64].try_into().unwrap());
    b[56..64].copy_from_slice(&(raw_len + 1).to_le_bytes());
    let e = generation::decode(&resum(b)).unwrap_err().to_string();
    assert!(e.contains("length"), "{e}");
    // A byte after the frame, inside the section.
    let mut b = raw.clone();
    b.insert(72 + stored, 0);
    b[64..72].copy_from_slice(&(stored as u64 + 1).to_le_bytes());
    let e = generation::decode(&resum(b)).unwrap_err().to_string();
    assert!(e.contains("after"), "{e}");
}

#[test]
fn object_keys_and_generation_names_are_pinned() {
    let k = keys();
    assert_eq!(k.volume_json(), "volumes/vm-images/volume.json");
    assert_eq!(k.lease(), "volumes/vm-images/lease");
    assert_eq!(
        k.gen_key(42, 0x0123_4567_89ab_cdef),
        "volumes/vm-images/gens/000000000000002a-0123456789abcdef"
    );
    assert_eq!(
        k.pack(0x1f, b"0123456789abcdef"),
        "packs/00000000deadbeef/000000000000001f-30313233343536373839616263646566"
    );
    assert_eq!(gen_name(1, 2), "0000000000000001-0000000000000002");
    assert_eq!(
        parse_gen_name("x/volumes/v/gens/000000000000002a-0123456789abcdef"),
        Some((42, 0x0123_4567_89ab_cdef))
    );
    assert_eq!(parse_gen_name("volumes/v/gens/2a-1"), None);
    // Another volume's pack, and the bucket gc's objects.
    let o = Origin {
        volume: 0xfeed_f00d,
        pack: 0x77,
    };
    let key = foreign_pack_key(o, b"0123456789abcdef");
    assert_eq!(
        key,
        "packs/00000000feedf00d/0000000000000077-30313233343536373839616263646566"
    );
    assert_eq!(
        parse_pack_key(&key),
        Some((0xfeed_f00d, 0x77, *b"0123456789abcdef"))
    );
    assert_eq!(
        k.pack_of(&PackRef {
            id: (1 << 62) + 1,
            len: 1,
            hash: *b"0123456789abcdef",
            origin: Some(o)
        }),
        key
    );
    assert_eq!(
        dedupfs::remote::config::gc_mark_key(5),
        "gc/marks/0000000000000005"
    );
    assert_eq!(
        dedupfs::remote::config::gc_swept_key(5),
        "gc/swept/0000000000000005"
    );
}

#[test]
fn the_pack_table_reads_its_lines_and_ignores_a_torn_one() {
    use dedupfs::remote::packs::PackTable;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("remote")).unwrap();
    // Two whole lines as this version writes them, then one a crash cut short.
    std::fs::write(
        dir.path().join("remote/packs.log"),
        "000000000000001f 33554999 30313233343536373839616263646566\n\
         0000000100000002 64 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n\
         4000000000000001 99 bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb 00000000feedf00d:0000000000000077\n\
         0000000000000003 12 aaaa",
    )
    .unwrap();
    let t = PackTable::open(dir.path()).unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(
        t.get(0x1f),
        Some(PackRef::own(0x1f, 33_554_999, *b"0123456789abcdef"))
    );
    // Another volume's pack this one names.
    let o = Origin {
        volume: 0xfeed_f00d,
        pack: 0x77,
    };
    assert_eq!(
        t.get((1 << 62) + 1),
        Some(PackRef {
            id: (1 << 62) + 1,
            len: 99,
            hash: [0xbb; 16],
            origin: Some(o)
        })
    );
    assert_eq!(t.foreign_id(o, 99, [0xbb; 16]).unwrap(), (1 << 62) + 1);
    let next = Origin {
        volume: 0xfeed_f00d,
        pack: 0x78,
    };
    assert_eq!(t.foreign_id(next, 7, [0xcc; 16]).unwrap(), (1 << 62) + 2);
    assert_eq!(t.get(0x1_0000_0002).unwrap().hash, [0xaa; 16]);
    assert!(!t.contains(3), "a torn line counted as an upload");
    // Appending after the torn line starts a new line.
    t.add(PackRef::own(4, 5, [1; 16])).unwrap();
    drop(t);
    let t = PackTable::open(dir.path()).unwrap();
    assert_eq!(t.len(), 5);
    assert_eq!(t.get(4).unwrap().len, 5);
    assert_eq!(t.foreign_id(next, 7, [0xcc; 16]).unwrap(), (1 << 62) + 2);
}
