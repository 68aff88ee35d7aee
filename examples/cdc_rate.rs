//! In-process reference rates for `scripts/bench`: FastCDC (the store's chunker) and blake3
//! (the store's chunk id) over a file, without any filesystem in the way.
//!
//! Usage: cargo run --release --example cdc_rate -- FILE [--avg BYTES] [--reps N] [--rate-bytes N]
//!
//! Prints one JSON object: GB/s (1e9 bytes/s, median of `reps` passes after one warm-up pass)
//! for FastCDC alone, FastCDC + blake3 per chunk on one thread, the same pipelined on two threads
//! (chunking on one, hashing on the other, as the write path is meant to overlap them), and
//! blake3 alone over 1 MiB pieces (the cost of verifying data on read). Also the chunk count and
//! the number of distinct chunks, which a store holding exactly this file should report
//! (always over the whole file; the timed passes cover only the first `--rate-bytes` of it when
//! given, to bound the run time on large inputs).

use std::collections::HashSet;
use std::fs::File;
use std::time::Instant;

use dedupfs::chunker::{ChunkParams, Chunker};
use dedupfs::hash::ChunkId;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Chunk lengths of `data`, streaming the chunker over it as a writer would (at_end only at EOF).
fn for_each_chunk(chunker: &Chunker, data: &[u8], mut f: impl FnMut(usize, usize)) {
    let mut pos = 0;
    while pos < data.len() {
        let len = chunker
            .next_cut(&data[pos..], true)
            .expect("non-empty window always cuts at end");
        f(pos, len);
        pos += len;
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

fn main() {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    let mut avg: u32 = dedupfs::chunker::DEFAULT_AVG;
    let mut reps = 3usize;
    let mut rate_bytes = usize::MAX;
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
            _ => path = Some(a),
        }
    }
    let path = path.expect("usage: cdc_rate FILE [--avg BYTES] [--reps N]");
    let file = File::open(&path).expect("open input");
    // SAFETY: the input is a private benchmark file nobody modifies while we run.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.expect("mmap input");
    let all: &[u8] = &map;
    let params = ChunkParams::from_avg(avg).expect("chunk params");
    let chunker = Chunker::new(params);

    // Chunk count and distinct chunks (one untimed pass).
    let mut chunks = 0u64;
    let mut distinct = HashSet::new();
    let mut distinct_bytes = 0u64;
    for_each_chunk(&chunker, all, |p, l| {
        chunks += 1;
        if distinct.insert(ChunkId::of(&all[p..p + l])) {
            distinct_bytes += l as u64;
        }
    });

    let data = &all[..all.len().min(rate_bytes)];
    let mut sink = 0u8;
    let cdc = rate(data.len(), reps, || {
        for_each_chunk(&chunker, data, |_, l| sink ^= l as u8)
    });
    let cdc_blake3_1t = rate(data.len(), reps, || {
        for_each_chunk(&chunker, data, |p, l| {
            sink ^= ChunkId::of(&data[p..p + l]).0[0]
        })
    });
    let cdc_blake3_2t = rate(data.len(), reps, || {
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
            for_each_chunk(&chunker, data, |p, l| {
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
    });
    let blake3_1m = rate(data.len(), reps, || {
        for piece in data.chunks(1 << 20) {
            sink ^= ChunkId::of(piece).0[0];
        }
    });
    std::hint::black_box(sink);

    println!(
        "{{\"bytes\": {}, \"rate_bytes\": {}, \"avg_chunk\": {}, \"reps\": {}, \"cdc_gbps\": {:.3}, \
         \"cdc_blake3_1t_gbps\": {:.3}, \"cdc_blake3_2t_gbps\": {:.3}, \"blake3_gbps\": {:.3}, \
         \"chunks\": {}, \"distinct_chunks\": {}, \"distinct_bytes\": {}}}",
        all.len(),
        data.len(),
        avg,
        reps,
        cdc,
        cdc_blake3_1t,
        cdc_blake3_2t,
        blake3_1m,
        chunks,
        distinct.len(),
        distinct_bytes
    );
}
