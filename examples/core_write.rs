//! Profiling aid: streams data through the filesystem core (no FUSE) into a chosen store and
//! prints the rate of each phase. `cargo run --release --example core_write -- [MiB] [mem|DIR]`

use dedupfs::chunker::ChunkParams;
use dedupfs::fs::{Caller, Fs, FsConfig};
use dedupfs::meta::{MetaDb, ROOT_INO};
use dedupfs::store::{ChunkStore, LocalDirStore, MemoryStore};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn ChunkStore> = match args.get(2).map(String::as_str) {
        None | Some("mem") => Arc::new(MemoryStore::new()),
        Some(d) => Arc::new(LocalDirStore::open(std::path::Path::new(d)).expect("store dir")),
    };
    let meta =
        MetaDb::create(&dir.path().join("m.redb"), ChunkParams::default(), 0, 0).expect("meta");
    let fs = Arc::new(Fs::new(meta, store, FsConfig::default()).expect("fs"));
    fs.start_background();
    let mut seed = 0x9E3779B97F4A7C15u64;
    let data: Vec<u8> = (0..64 << 20)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    for name in ["a", "b"] {
        let (ino, _, fh) = fs
            .create(Caller::default(), ROOT_INO, name.as_bytes(), 0o644)
            .expect("create");
        let t = Instant::now();
        let mut off = 0u64;
        for i in 0..mib {
            // Vary the data per MiB so every 64 MiB block is new.
            let base = (i % 64) << 20;
            let mut piece = data[base..base + (1 << 20)].to_vec();
            piece[0..8].copy_from_slice(&(i as u64).to_le_bytes());
            fs.write(ino, off, &piece).expect("write");
            off += piece.len() as u64;
        }
        let w = t.elapsed();
        fs.fsync(ino).expect("fsync");
        let total = t.elapsed();
        fs.release(fh).expect("release");
        let gb = (mib << 20) as f64 / 1e9;
        println!(
            "{name}: write {:.2} GB/s, write+fsync {:.2} GB/s",
            gb / w.as_secs_f64(),
            gb / total.as_secs_f64()
        );
    }
}
