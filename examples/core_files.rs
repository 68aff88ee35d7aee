//! Profiling aid: creates many small files through the filesystem core (no FUSE), the way
//! `tar x` does (create, write, close, utimens, chown, chmod), and prints files per second.
//! `cargo run --release --example core_files -- [count] [mem|DIR]`

use dedupfs::chunker::ChunkParams;
use dedupfs::fs::{Caller, Fs, FsConfig, SetAttr, TimeSet};
use dedupfs::meta::{MetaDb, ROOT_INO, Ts};
use dedupfs::store::{ChunkStore, LocalDirStore, MemoryStore};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn ChunkStore> = match args.get(2).map(String::as_str) {
        None | Some("mem") => Arc::new(MemoryStore::new()),
        Some(d) => Arc::new(LocalDirStore::open(std::path::Path::new(d)).expect("store dir")),
    };
    let meta =
        MetaDb::create(&dir.path().join("m.redb"), ChunkParams::default(), 0, 0).expect("meta");
    let fs = Arc::new(Fs::new(meta, store, FsConfig::default()).expect("fs"));
    fs.start_background();
    let who = Caller::default();
    let t = Instant::now();
    let (d, _) = fs.mkdir(who, ROOT_INO, b"d", 0o755).expect("mkdir");
    for i in 0..count {
        let name = format!("file-{i}");
        let (ino, _, fh) = fs.create(who, d, name.as_bytes(), 0o644).expect("create");
        let body = format!("file number {i} with some text that differs\n").repeat(20);
        fs.write(ino, 0, body.as_bytes()).expect("write");
        fs.flush(ino).expect("flush");
        fs.release(fh).expect("release");
        let at = TimeSet::At(Ts {
            secs: 1_600_000_000,
            nsecs: 0,
        });
        for set in [
            SetAttr {
                atime: Some(at),
                mtime: Some(at),
                ..SetAttr::default()
            },
            SetAttr {
                uid: Some(0),
                gid: Some(0),
                ..SetAttr::default()
            },
            SetAttr {
                mode: Some(0o644),
                ..SetAttr::default()
            },
        ] {
            fs.setattr(ino, set).expect("setattr");
        }
    }
    let dt = t.elapsed().as_secs_f64();
    println!(
        "{count} files in {dt:.2} s: {:.0} files/s",
        count as f64 / dt
    );
}
