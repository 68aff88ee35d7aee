//! Golden chunk boundaries: chunk boundaries are part of the on-disk format.
//!
//! Guards against a silent change of where the chunker cuts (a fastcdc upgrade, a different
//! normalization level, a changed mask or min/avg/max default): existing stores would keep
//! working, but every rewritten file would stop sharing chunks with its old self and with the
//! rest of the store, so deduplication quietly collapses. The committed list
//! `tests/data/golden_boundaries.txt` holds the chunk lengths of a seeded input cut with the
//! default parameters; it must never change. If a change is intended (a new format version),
//! rewrite the file with `GOLDEN_REGENERATE=1 cargo test --test golden_chunks` and bump
//! `meta::FORMAT_VERSION`.

use dedupfs::chunker::{ChunkParams, Chunker, DEFAULT_AVG};
use std::path::PathBuf;

const RANDOM_BYTES: usize = 8 << 20;
const TEXT_BYTES: usize = 1 << 20;

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden_boundaries.txt")
}

/// xorshift64 (Marsaglia), written out here so the input never depends on a crate's version.
fn xorshift(n: usize, mut s: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// 4 MiB of noise, 1 MiB of repeated text, 4 MiB of noise: content-defined cuts in random
/// data, max-size or periodic cuts in the text, and the transitions between them.
fn golden_input() -> Vec<u8> {
    let noise = xorshift(RANDOM_BYTES, 0x5EED_DEDF_5001_2345);
    let (a, b) = noise.split_at(RANDOM_BYTES / 2);
    let mut data = Vec::with_capacity(RANDOM_BYTES + TEXT_BYTES);
    data.extend_from_slice(a);
    let text = b"The quick brown fox jumps over the lazy dog; dedupfs cuts it into chunks. ";
    let mut line = 0u64;
    while data.len() < a.len() + TEXT_BYTES {
        // Numbered lines: repetitive but not strictly periodic, like a log file.
        data.extend_from_slice(format!("{line:08} ").as_bytes());
        data.extend_from_slice(text);
        line += 1;
    }
    data.truncate(a.len() + TEXT_BYTES);
    data.extend_from_slice(b);
    data
}

fn render(lengths: &[usize]) -> String {
    lengths.iter().map(|l| format!("{l}\n")).collect()
}

fn parse(text: &str) -> Vec<usize> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.parse()
                .unwrap_or_else(|_| panic!("bad line {l:?} in golden file"))
        })
        .collect()
}

#[test]
fn default_params_are_the_pinned_format() {
    let p = ChunkParams::default();
    assert_eq!((p.min, p.avg, p.max), (16 * 1024, 64 * 1024, 256 * 1024));
    assert_eq!(DEFAULT_AVG, 64 * 1024);
}

#[test]
fn golden_boundaries_do_not_change() {
    let data = golden_input();
    let got = Chunker::new(ChunkParams::default()).cut_all(&data);
    assert_eq!(
        got.iter().sum::<usize>(),
        data.len(),
        "chunks cover the input exactly"
    );
    let path = golden_path();
    if std::env::var_os("GOLDEN_REGENERATE").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, render(&got)).unwrap();
        eprintln!("rewrote {} ({} chunks)", path.display(), got.len());
        return;
    }
    let want = parse(&std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with GOLDEN_REGENERATE=1",
            path.display()
        )
    }));
    if got != want {
        let first = got
            .iter()
            .zip(&want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "chunk boundaries changed (an on-disk format change!): {} chunks now, {} pinned; \
             first difference at chunk {first}: got {:?}, pinned {:?}",
            got.len(),
            want.len(),
            got.get(first),
            want.get(first)
        );
    }
}

#[test]
fn golden_input_exercises_every_chunk_size_regime() {
    let p = ChunkParams::default();
    let want = parse(&std::fs::read_to_string(golden_path()).unwrap_or_default());
    if want.is_empty() {
        return; // golden_boundaries_do_not_change reports the missing file
    }
    assert!(
        want.len() > 100,
        "enough chunks to mean something: {}",
        want.len()
    );
    let (last, body) = want.split_last().unwrap();
    assert!(*last <= p.max as usize);
    assert!(
        body.iter()
            .all(|&l| (p.min as usize..=p.max as usize).contains(&l))
    );
    assert!(
        body.iter().any(|&l| l < p.avg as usize),
        "some chunks below average"
    );
    assert!(
        body.iter().any(|&l| l > p.avg as usize),
        "some chunks above average"
    );
}

#[test]
fn other_params_give_other_boundaries() {
    let data = golden_input();
    let default = Chunker::new(ChunkParams::default()).cut_all(&data);
    let small = Chunker::new(ChunkParams::from_avg(16384).unwrap()).cut_all(&data);
    assert_ne!(default, small, "the golden list depends on the parameters");
    assert!(
        small.len() > default.len() * 2,
        "{} vs {}",
        small.len(),
        default.len()
    );
    assert_eq!(small.iter().sum::<usize>(), data.len());
}

#[test]
fn cutting_is_deterministic_and_local() {
    // Same input twice gives the same cuts; a change in the first chunk leaves the cuts of the
    // rest alone (what makes shifted files share chunks).
    let data = golden_input();
    let c = Chunker::new(ChunkParams::default());
    let a = c.cut_all(&data);
    assert_eq!(a, c.cut_all(&data));
    let mut shifted = vec![0xAB];
    shifted.extend_from_slice(&data);
    let b = c.cut_all(&shifted);
    let ends = |v: &[usize], skew: usize| -> std::collections::BTreeSet<usize> {
        v.iter()
            .scan(0, |p, l| {
                *p += l;
                Some(*p - skew)
            })
            .collect()
    };
    let common = ends(&a, 0).intersection(&ends(&b, 1)).count();
    assert!(
        common * 10 >= a.len() * 9,
        "{common} of {} boundaries survive a 1-byte shift",
        a.len()
    );
}
