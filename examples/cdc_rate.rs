//! In-process reference rates for `scripts/bench`: FastCDC (the store's chunker), blake3 (the
//! store's chunk id) and optionally per-chunk compression over a file, without any filesystem in
//! the way.
//!
//! Usage: cargo run --release --example cdc_rate -- FILE [--avg BYTES] [--reps N] [--rate-bytes N]
//!        [--codec zstd[:LEVEL]|lz4|none] [--tar] [--sizes-only]
//!
//! Prints one JSON object: GB/s (1e9 bytes/s, median of `reps` passes after one warm-up pass)
//! for FastCDC alone, FastCDC + blake3 per chunk on one thread, the same pipelined on two threads
//! (chunking on one, hashing on the other, as the write path is meant to overlap them), and
//! blake3 alone over 1 MiB pieces (the cost of verifying data on read). Also the chunk count and
//! the number of distinct chunks, which a store holding exactly this file should report
//! (always over the whole file; the timed passes cover only the first `--rate-bytes` of it when
//! given, to bound the run time on large inputs).
//!
//! `--codec` adds the store's write path with compression: FastCDC + blake3 + compressing each
//! chunk not seen before in the pass (a store compresses only new chunks), on one thread and on
//! two (one thread cuts and hands batches of chunks to the other; it also takes batches itself
//! while a backlog waits, so both cores hash and compress when that is the slower part). Also
//! `compressed_bytes`: what the distinct chunks of the whole file take when each is compressed
//! alone, keeping a chunk raw when compression saves less than 1/8 of it (the store's rule;
//! per-chunk headers not counted), and `raw_chunks`, how many distinct chunks stay raw.
//!
//! `--tar`: FILE is a tar archive; chunk each regular member's content on its own, as a store
//! holding the extracted tree cuts each file (`unit_bytes` is then the tree's logical bytes).
//! `--sizes-only`: skip the timed passes (the rates are null), only count chunks and bytes.

use std::collections::HashSet;
use std::fs::File;
use std::time::Instant;

use dedupfs::chunker::{ChunkParams, Chunker};
use dedupfs::hash::ChunkId;
use dedupfs::store::codec::Codec;
use parking_lot::Mutex;
use serde_json::json;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Calls `f(pos, len)` for each chunk of each unit (a byte range of `data` chunked on its own),
/// streaming the chunker over the unit as a writer would (at_end only at the unit's end).
fn for_each_chunk(
    chunker: &Chunker,
    data: &[u8],
    units: &[(usize, usize)],
    mut f: impl FnMut(usize, usize),
) {
    for &(start, ulen) in units {
        let unit = &data[start..start + ulen];
        let mut pos = 0;
        while pos < unit.len() {
            let len = chunker
                .next_cut(&unit[pos..], true)
                .expect("non-empty window always cuts at end");
            f(start + pos, len);
            pos += len;
        }
    }
}

fn rate(bytes: usize, reps: usize, mut pass: impl FnMut()) -> f64 {
    pass(); // warm-up
    let mut v = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        pass();
        v.push(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    median(v)
}

/// Per-chunk compression exactly as the store does it (`dedupfs::store::codec`: the codec's
/// level, the lz4 probe that keeps incompressible chunks raw, the 1/8 rule).
struct Compressor {
    codec: Codec,
}

impl Compressor {
    fn new(codec: Codec) -> Compressor {
        Compressor { codec }
    }

    /// Bytes the store keeps for `chunk`: its compressed size, or its own size when the store
    /// would keep it raw.
    fn stored_len(&mut self, chunk: &[u8]) -> usize {
        self.codec.compress(chunk).map_or(chunk.len(), |c| c.len())
    }
}

/// The regular members' contents of a tar archive, as (offset, length); empty ones left out.
fn tar_members(all: &[u8]) -> Result<Vec<(usize, usize)>, String> {
    fn size_field(f: &[u8]) -> Result<usize, String> {
        if f[0] & 0x80 != 0 {
            // GNU base-256
            return Ok(f[1..].iter().fold(0usize, |a, &b| (a << 8) | b as usize));
        }
        let s = std::str::from_utf8(f).map_err(|_| "size field is not ASCII")?;
        let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
        if s.is_empty() {
            return Ok(0);
        }
        usize::from_str_radix(s, 8).map_err(|_| format!("bad size field {s:?}"))
    }
    let mut units = Vec::new();
    let mut off = 0;
    while off + 512 <= all.len() {
        let h = &all[off..off + 512];
        if h.iter().all(|&b| b == 0) {
            break; // end-of-archive blocks
        }
        let size = size_field(&h[124..136]).map_err(|e| format!("tar header at {off}: {e}"))?;
        let data = off + 512;
        if data + size > all.len() {
            return Err(format!("tar member at {off} runs past the end of the file"));
        }
        // Regular files ('0', old-style NUL, contiguous '7'). Hard links, directories, GNU
        // long-name and pax headers carry no file content (their data blocks are skipped).
        if matches!(h[156], b'0' | 0 | b'7') && size > 0 {
            units.push((data, size));
        }
        off = data + size.div_ceil(512) * 512;
    }
    Ok(units)
}

/// `units` cut to the first `limit` bytes of the file.
fn units_before(units: &[(usize, usize)], limit: usize) -> Vec<(usize, usize)> {
    units
        .iter()
        .filter(|&&(s, _)| s < limit)
        .map(|&(s, l)| (s, l.min(limit - s)))
        .collect()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    let mut avg: u32 = dedupfs::chunker::DEFAULT_AVG;
    let mut reps = 3usize;
    let mut rate_bytes = usize::MAX;
    let mut codec = None;
    let mut tar = false;
    let mut sizes_only = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--avg" => avg = args.next().expect("--avg N").parse().expect("--avg N"),
            "--reps" => reps = args.next().expect("--reps N").parse().expect("--reps N"),
            "--rate-bytes" => {
                rate_bytes = args
                    .next()
                    .expect("--rate-bytes N")
                    .parse()
                    .expect("--rate-bytes N")
            }
            "--codec" => {
                let s = args.next().expect("--codec zstd[:LEVEL]|lz4|none");
                codec = Some(s.parse::<Codec>().unwrap_or_else(|e| {
                    eprintln!("cdc_rate: {e}");
                    std::process::exit(2)
                }))
            }
            "--tar" => tar = true,
            "--sizes-only" => sizes_only = true,
            _ => path = Some(a),
        }
    }
    let path = path.expect(
        "usage: cdc_rate FILE [--avg BYTES] [--reps N] [--rate-bytes N] \
         [--codec zstd[:LEVEL]|lz4|none] [--tar] [--sizes-only]",
    );
    let file = File::open(&path).expect("open input");
    // SAFETY: the input is a private benchmark file nobody modifies while we run.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.expect("mmap input");
    let all: &[u8] = &map;
    let params = ChunkParams::from_avg(avg).expect("chunk params");
    let chunker = Chunker::new(params);
    let units = if tar {
        tar_members(all).unwrap_or_else(|e| {
            eprintln!("cdc_rate: {path}: {e}");
            std::process::exit(1)
        })
    } else if all.is_empty() {
        Vec::new()
    } else {
        vec![(0, all.len())]
    };
    let unit_bytes: usize = units.iter().map(|u| u.1).sum();

    // Chunk count, distinct chunks and, with a codec, their compressed size (one untimed pass).
    let mut chunks = 0u64;
    let mut distinct = HashSet::new();
    let mut distinct_bytes = 0u64;
    let mut compressed_bytes = 0u64;
    let mut raw_chunks = 0u64;
    let mut comp = Compressor::new(codec.unwrap_or(Codec::None));
    for_each_chunk(&chunker, all, &units, |p, l| {
        chunks += 1;
        let chunk = &all[p..p + l];
        if distinct.insert(ChunkId::of(chunk)) {
            distinct_bytes += l as u64;
            let c = comp.stored_len(chunk);
            compressed_bytes += c as u64;
            raw_chunks += (c == l) as u64;
        }
    });

    let timed = units_before(&units, rate_bytes);
    let timed_bytes: usize = timed.iter().map(|u| u.1).sum();
    let data = &all[..all.len().min(rate_bytes)];
    let mut sink = 0u8;
    let mut rates = serde_json::Map::new();
    let mut put = |k: &str, v: f64| {
        rates.insert(k.into(), json!(round3(v)));
    };
    if !sizes_only {
        put(
            "cdc_gbps",
            rate(timed_bytes, reps, || {
                for_each_chunk(&chunker, data, &timed, |_, l| sink ^= l as u8)
            }),
        );
        put(
            "cdc_blake3_1t_gbps",
            rate(timed_bytes, reps, || {
                for_each_chunk(&chunker, data, &timed, |p, l| {
                    sink ^= ChunkId::of(&data[p..p + l]).0[0]
                })
            }),
        );
        put(
            "cdc_blake3_2t_gbps",
            rate(timed_bytes, reps, || {
                let (tx, rx) = crossbeam_channel::bounded::<Vec<(usize, usize)>>(64);
                let x = std::thread::scope(|s| {
                    let h = s.spawn(|| {
                        let mut x = 0u8;
                        for batch in rx {
                            for (p, l) in batch {
                                x ^= ChunkId::of(&data[p..p + l]).0[0];
                            }
                        }
                        x
                    });
                    let mut batch = Vec::with_capacity(16);
                    for_each_chunk(&chunker, data, &timed, |p, l| {
                        batch.push((p, l));
                        if batch.len() == 16 {
                            tx.send(std::mem::replace(&mut batch, Vec::with_capacity(16)))
                                .unwrap();
                        }
                    });
                    tx.send(batch).unwrap();
                    drop(tx);
                    h.join().unwrap()
                });
                sink ^= x;
            }),
        );
        put(
            "blake3_gbps",
            rate(data.len(), reps, || {
                for piece in data.chunks(1 << 20) {
                    sink ^= ChunkId::of(piece).0[0];
                }
            }),
        );
        if let Some(codec) = codec {
            put(
                "cdc_blake3_codec_1t_gbps",
                rate(timed_bytes, reps, || {
                    let mut seen = HashSet::new();
                    let mut comp = Compressor::new(codec);
                    for_each_chunk(&chunker, data, &timed, |p, l| {
                        let chunk = &data[p..p + l];
                        let id = ChunkId::of(chunk);
                        if seen.insert(id.0) {
                            sink ^= comp.stored_len(chunk) as u8;
                        }
                    })
                }),
            );
            put(
                "cdc_blake3_codec_2t_gbps",
                rate(timed_bytes, reps, || {
                    sink ^= codec_pipelined(&chunker, data, &timed, codec);
                }),
            );
        }
    }
    std::hint::black_box(sink);

    let mut out = json!({
        "bytes": all.len(),
        "rate_bytes": if tar { timed_bytes } else { data.len() },
        "avg_chunk": avg,
        "reps": if sizes_only { 0 } else { reps },
        "cdc_gbps": null,
        "cdc_blake3_1t_gbps": null,
        "cdc_blake3_2t_gbps": null,
        "blake3_gbps": null,
        "chunks": chunks,
        "distinct_chunks": distinct.len(),
        "distinct_bytes": distinct_bytes,
        "units": units.len(),
        "unit_bytes": unit_bytes,
    });
    let o = out.as_object_mut().unwrap();
    if let Some(codec) = codec {
        o.insert("codec".into(), json!(codec.to_string()));
        o.insert("compressed_bytes".into(), json!(compressed_bytes));
        o.insert("raw_chunks".into(), json!(raw_chunks));
        if sizes_only {
            o.insert("cdc_blake3_codec_1t_gbps".into(), json!(null));
            o.insert("cdc_blake3_codec_2t_gbps".into(), json!(null));
        }
    }
    o.extend(rates);
    println!("{out}");
}

/// FastCDC + blake3 + compressing each new chunk on two threads: this one cuts and sends batches
/// of chunks; a second one hashes and compresses them, and this one takes batches too while at
/// least 8 wait, and once the cutting is done.
fn codec_pipelined(chunker: &Chunker, data: &[u8], units: &[(usize, usize)], codec: Codec) -> u8 {
    let seen = Mutex::new(HashSet::new());
    let work = |batch: Vec<(usize, usize)>, comp: &mut Compressor| -> u8 {
        let mut x = 0u8;
        for (p, l) in batch {
            let chunk = &data[p..p + l];
            let id = ChunkId::of(chunk);
            if seen.lock().insert(id.0) {
                x ^= comp.stored_len(chunk) as u8;
            }
        }
        x
    };
    let (tx, rx) = crossbeam_channel::bounded::<Vec<(usize, usize)>>(64);
    std::thread::scope(|s| {
        let rx2 = rx.clone();
        let h = s.spawn(|| {
            let mut comp = Compressor::new(codec);
            let mut x = 0u8;
            for batch in rx2 {
                x ^= work(batch, &mut comp);
            }
            x
        });
        let mut comp = Compressor::new(codec);
        let mut x = 0u8;
        let mut batch = Vec::with_capacity(16);
        for_each_chunk(chunker, data, units, |p, l| {
            batch.push((p, l));
            if batch.len() == 16 {
                tx.send(std::mem::replace(&mut batch, Vec::with_capacity(16)))
                    .unwrap();
                while rx.len() >= 8 {
                    match rx.try_recv() {
                        Ok(b) => x ^= work(b, &mut comp),
                        Err(_) => break,
                    }
                }
            }
        });
        tx.send(batch).unwrap();
        drop(tx);
        for b in rx.iter() {
            x ^= work(b, &mut comp);
        }
        x ^ h.join().unwrap()
    })
}
