//! Cost of a metadata backup per GiB of metadata: builds a metadata database with N extents
//! (one large image) and M small files, then times `meta::backup::take`.
//!
//! `cargo run --release --example backup_cost -- DIR EXTENTS FILES`

use dedupfs::chunker::ChunkParams;
use dedupfs::hash::ChunkId;
use dedupfs::meta::{Attr, Extent, Kind, MetaDb, backup};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let extents: u64 = args[2].parse().unwrap();
    let files: u64 = args[3].parse().unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let meta = MetaDb::create(&dir.join("meta.redb"), ChunkParams::default(), 0, 0).unwrap();
    let t = Instant::now();
    let batch = 100_000;
    let mut tx = meta.begin_write().unwrap();
    let image = tx.alloc_ino().unwrap();
    let mut a = Attr::new(Kind::File, 0o644, 0, 0);
    a.size = extents * 65536;
    tx.put_inode(image, &a).unwrap();
    tx.put_dirent(1, b"image", image, Kind::File).unwrap();
    for n in 0..extents {
        let id = ChunkId::of(&n.to_le_bytes());
        tx.set_chunk_ref(&id, 0, 65536).unwrap();
        let e = Extent {
            offset: n * 65536,
            len: 65536,
            id,
        };
        tx.replace_extents(image, &[], &[e]).unwrap();
        if n % batch == batch - 1 {
            tx.commit(false).unwrap();
            tx = meta.begin_write().unwrap();
        }
    }
    for n in 0..files {
        let ino = tx.alloc_ino().unwrap();
        let mut a = Attr::new(Kind::File, 0o644, 0, 0);
        a.size = 3000;
        tx.put_inode(ino, &a).unwrap();
        tx.put_dirent(1, format!("file-{n}").as_bytes(), ino, Kind::File)
            .unwrap();
        let id = ChunkId::of(&(n + extents).to_le_bytes());
        tx.set_chunk_ref(&id, 0, 3000).unwrap();
        let e = Extent {
            offset: 0,
            len: 3000,
            id,
        };
        tx.replace_extents(ino, &[], &[e]).unwrap();
        if n % batch == batch - 1 {
            tx.commit(false).unwrap();
            tx = meta.begin_write().unwrap();
        }
    }
    tx.commit(true).unwrap();
    let size = std::fs::metadata(dir.join("meta.redb")).unwrap().len();
    eprintln!(
        "built {extents} extents + {files} files: meta.redb {:.1} MiB in {:.1?}",
        size as f64 / (1 << 20) as f64,
        t.elapsed()
    );
    let r = meta.begin_read().unwrap();
    let rep = backup::take(&dir, &r, backup::KEEP).unwrap();
    let secs = rep.elapsed_ms as f64 / 1000.0;
    println!(
        "backup: {} rows, meta.redb {:.1} MiB -> copy {:.1} MiB in {:.2} s: {:.1} s per GiB of metadata, {:.0} k rows/s",
        rep.rows,
        size as f64 / (1 << 20) as f64,
        rep.backup.bytes as f64 / (1 << 20) as f64,
        secs,
        secs / (size as f64 / (1u64 << 30) as f64),
        rep.rows as f64 / secs / 1000.0
    );
}
