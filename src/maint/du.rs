//! `dedupfs du PATH...`: space accounting of a tree, like `btrfs filesystem du`.
//!
//! For each tree (a directory and everything under it, or one file):
//! - `logical_bytes`: the sizes of its regular files (a file with several names in the tree
//!   counted once);
//! - `exclusive_bytes`: bytes on disk of the chunks that nothing outside the tree references:
//!   what deleting the tree would free (chunk records as stored, compressed, with their
//!   headers; a chunk the tree references several times counts once);
//! - `shared_bytes`: bytes on disk of the chunks the tree references that something outside it
//!   references too.
//!
//! Memory is bounded whatever the tree: the chunk references of the tree are collected in
//! sorted runs of at most [`RUN`] ids, spilled to temporary files in `spill_dir`, and merged in
//! one pass that counts references per chunk and compares them with the chunk's refcount.
//! Only the inodes with several names are remembered (so each is counted once), and the
//! directories still to visit.

use crate::error::{FsError, Ino, Result};
use crate::hash::ChunkId;
use crate::meta::{Kind, RTx};
use crate::store::ChunkStore;
use crate::store::pack::RECORD_HEADER_LEN;
use serde::{Deserialize, Serialize};
use std::collections::{BinaryHeap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Chunk references held in memory before a sorted run is spilled (32 bytes each: 8 MiB).
const RUN: usize = 256 * 1024;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuReport {
    /// The tree's path as the caller named it.
    pub path: String,
    pub files: u64,
    pub dirs: u64,
    pub logical_bytes: u64,
    /// Distinct chunks the tree references.
    pub chunks: u64,
    pub exclusive_bytes: u64,
    pub shared_bytes: u64,
}

/// Accounts the tree rooted at `root` in the snapshot `r`.
pub fn du(
    r: &RTx,
    store: &dyn ChunkStore,
    root: Ino,
    path: &str,
    spill_dir: &Path,
    held: &dyn Fn(&ChunkId) -> bool,
) -> Result<DuReport> {
    let mut report = DuReport {
        path: path.to_string(),
        ..DuReport::default()
    };
    let mut refs = Sorter::new(spill_dir);
    let mut seen_links: HashSet<Ino> = HashSet::new();
    let mut dirs = vec![root];
    let mut first = true;
    while let Some(ino) = dirs.pop() {
        let attr = r.inode(ino)?.ok_or(FsError::NotFound)?;
        match attr.kind {
            Kind::Dir => {
                report.dirs += 1;
                r.each_in_dir(ino, &mut |e| {
                    match e.kind {
                        Kind::Dir => dirs.push(e.ino),
                        Kind::File => {
                            let a = r.inode(e.ino)?.ok_or_else(|| {
                                FsError::Corrupt(format!("dirent names missing inode {}", e.ino))
                            })?;
                            if a.nlink > 1 && !seen_links.insert(e.ino) {
                                return Ok(());
                            }
                            add_file(r, &mut refs, &mut report, e.ino, a.size)?;
                        }
                        _ => {}
                    }
                    Ok(())
                })?;
            }
            Kind::File if first => add_file(r, &mut refs, &mut report, ino, attr.size)?,
            _ => {}
        }
        first = false;
    }
    refs.merge(&mut |id, n| {
        report.chunks += 1;
        let (rc, raw_len) = r.chunk(&id)?.ok_or(FsError::MissingChunk { id })?;
        let on_disk = on_disk(store, &id, raw_len)?;
        // A chunk a snapshot keeps is not freed by deleting the tree.
        if n >= rc && !held(&id) {
            report.exclusive_bytes += on_disk;
        } else {
            report.shared_bytes += on_disk;
        }
        Ok(())
    })?;
    Ok(report)
}

/// Bytes chunk `id` (of `raw_len` bytes) takes on disk: its record as stored, header
/// included (its raw length when it is a loose chunk file).
pub fn on_disk(store: &dyn ChunkStore, id: &ChunkId, raw_len: u32) -> Result<u64> {
    Ok(
        match store.packs().map(|p| p.locate(id)).transpose()?.flatten() {
            Some(loc) => {
                loc.stored_len as u64
                    + RECORD_HEADER_LEN as u64
                    + loc.nonce_len as u64
                    + loc.mac_len as u64
            }
            None => raw_len as u64,
        },
    )
}

fn add_file(r: &RTx, refs: &mut Sorter, report: &mut DuReport, ino: Ino, size: u64) -> Result<()> {
    report.files += 1;
    report.logical_bytes += size;
    r.for_each_extent_of(ino, &mut |e| refs.push(e.id))
}

/// Chunk ids sorted in bounded memory: sorted runs spilled to files, merged at the end.
struct Sorter {
    dir: PathBuf,
    buf: Vec<[u8; 32]>,
    runs: Vec<PathBuf>,
}

impl Sorter {
    fn new(dir: &Path) -> Sorter {
        Sorter {
            dir: dir.to_path_buf(),
            buf: Vec::new(),
            runs: Vec::new(),
        }
    }

    fn push(&mut self, id: ChunkId) -> Result<()> {
        self.buf.push(id.0);
        if self.buf.len() >= RUN {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        self.buf.sort_unstable();
        let path = self
            .dir
            .join(format!("du-{}-{}.tmp", std::process::id(), self.runs.len()));
        let mut w = BufWriter::new(File::create(&path)?);
        self.runs.push(path);
        for id in self.buf.drain(..) {
            w.write_all(&id)?;
        }
        w.flush()?;
        Ok(())
    }

    /// Calls `f(id, references)` for each distinct id, in id order; removes the spill files.
    fn merge(mut self, f: &mut dyn FnMut(ChunkId, u64) -> Result<()>) -> Result<()> {
        let result = self.merge_inner(f);
        for p in &self.runs {
            let _ = std::fs::remove_file(p);
        }
        result
    }

    fn merge_inner(&mut self, f: &mut dyn FnMut(ChunkId, u64) -> Result<()>) -> Result<()> {
        self.buf.sort_unstable();
        let mut sources: Vec<Box<dyn Iterator<Item = Result<[u8; 32]>>>> = Vec::new();
        for p in &self.runs {
            let mut rd = BufReader::new(File::open(p)?);
            sources.push(Box::new(std::iter::from_fn(move || {
                let mut id = [0u8; 32];
                match rd.read_exact(&mut id) {
                    Ok(()) => Some(Ok(id)),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
                    Err(e) => Some(Err(e.into())),
                }
            })));
        }
        sources.push(Box::new(std::mem::take(&mut self.buf).into_iter().map(Ok)));
        // A min-heap of (next id, source).
        let mut heap = BinaryHeap::new();
        for (i, s) in sources.iter_mut().enumerate() {
            if let Some(id) = s.next() {
                heap.push(std::cmp::Reverse((id?, i)));
            }
        }
        let mut current: Option<([u8; 32], u64)> = None;
        while let Some(std::cmp::Reverse((id, i))) = heap.pop() {
            if let Some(next) = sources[i].next() {
                heap.push(std::cmp::Reverse((next?, i)));
            }
            match &mut current {
                Some((c, n)) if *c == id => *n += 1,
                _ => {
                    if let Some((c, n)) = current.take() {
                        f(ChunkId(c), n)?;
                    }
                    current = Some((id, 1));
                }
            }
        }
        if let Some((c, n)) = current {
            f(ChunkId(c), n)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sorter_counts_every_id_across_spilled_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sorter::new(dir.path());
        let n = RUN * 2 + 1000;
        for i in 0..n {
            // Ids 0..1000, each pushed about n/1000 times, in scattered order.
            let k = (i * 7919) % 1000;
            s.push(ChunkId::of(&(k as u64).to_le_bytes())).unwrap();
        }
        assert_eq!(s.runs.len(), 2, "two runs spilled");
        let mut seen = Vec::new();
        s.merge(&mut |id, c| {
            seen.push((id, c));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 1000);
        assert_eq!(seen.iter().map(|(_, c)| c).sum::<u64>(), n as u64);
        assert!(seen.windows(2).all(|w| w[0].0.0 < w[1].0.0), "in id order");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "spill files removed"
        );
    }
}
