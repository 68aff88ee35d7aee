//! The space of deleted chunks comes back at the durable point's reclaim, on a real (small)
//! filesystem, without FUSE.
//!
//! Guards against two ways a full disk stayed full after the file that filled it was deleted
//! (seen intermittently in `mount_enospc::deleting_the_file_that_filled_the_disk_makes_room_again`:
//! 35 of 53 MiB came back):
//! - the deleted file's records sharing packs with live data, which reclaim compacted only while
//!   the free space was below a fixed bound, however much of it the dead bytes were;
//! - a compaction on a nearly full disk that started copying a pack whose live records could not
//!   fit: the copy failed part-way and its bytes stayed behind in a pack file nothing named.
//!
//! The store lives in a tmpfs the test mounts, so these tests need root; they print a `SKIP:`
//! line and pass otherwise.

mod common;

use common::random_bytes;
use dedupfs::hash::ChunkId;
use dedupfs::store::codec::Codec;
use dedupfs::store::compact::verify_packs;
use dedupfs::store::{ChunkStore, PackStore};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

fn put(store: &dyn ChunkStore, data: &[u8]) -> ChunkId {
    let id = ChunkId::of(data);
    store.put(&id, data).unwrap();
    id
}

/// A tmpfs of `mib` MiB, detached on drop; `None` (with a `SKIP:` line) when not root.
struct Tmpfs {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Option<Tmpfs> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIP: mounting a small tmpfs for the store needs root");
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("disk");
        fs::create_dir(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={mib}m"))
            .arg("tmpfs")
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIP: cannot mount a tmpfs");
            return None;
        }
        Some(Tmpfs { dir, _tmp: tmp })
    }

    fn free(&self) -> u64 {
        let s = rustix::fs::statvfs(&self.dir).unwrap();
        s.f_bavail * s.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        let Ok(c) = std::ffi::CString::new(self.dir.as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// Bytes of the `*.pack` files in `store`.
fn pack_bytes(store: &Path) -> u64 {
    fs::read_dir(store.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn deleted_data_sharing_packs_with_live_data_is_compacted_away_at_the_next_reclaim() {
    let Some(disk) = Tmpfs::mount(256) else {
        return;
    };
    let dir = disk.dir.join("store");
    let store = PackStore::open(&dir).unwrap();
    store.set_codec(Codec::None);
    // 96 chunks of 1 MiB in three 32 MiB packs (one thread: one open pack at a time), a kept
    // chunk at the start of each: every pack holds live data and 31 MiB of the big file.
    let (mut kept, mut big) = (Vec::new(), Vec::new());
    for i in 0..96u64 {
        let data = random_bytes(i, MIB as usize);
        if i % 32 == 0 {
            kept.push((put(&store, &data), data));
        } else {
            big.push(put(&store, &data));
        }
    }
    store.sync().unwrap();
    assert!(pack_bytes(&dir) >= 96 * MIB);
    for id in &big {
        store.remove(id).unwrap();
    }
    store.sync().unwrap();
    // Plenty of free space (well over 96 MiB), but the dead bytes are most of what it would be.
    let free_before = disk.free();
    let dead = store.usage().unwrap().dead_bytes;
    assert!(
        free_before > 128 * MIB && dead * 2 >= free_before,
        "setup: free {free_before}, dead {dead}"
    );

    let freed = store.reclaim(false).unwrap();
    let left = pack_bytes(&dir);
    assert!(
        left <= kept.len() as u64 * MIB + MIB,
        "after reclaim the packs hold {left} bytes for {} MiB live (freed {freed})",
        kept.len()
    );
    assert!(
        disk.free() >= free_before + 90 * MIB,
        "free {} -> {}",
        free_before,
        disk.free()
    );
    assert_eq!(
        store.usage().unwrap().disk_bytes,
        left,
        "usage matches the files"
    );
    for (id, data) in &kept {
        assert_eq!(&*store.get(id).unwrap(), &data[..]);
    }
    let check = verify_packs(&store, true).unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    drop(store);
    let store = PackStore::open(&dir).unwrap();
    for (id, data) in &kept {
        assert_eq!(&*store.get(id).unwrap(), &data[..], "after a reopen");
    }
}

#[test]
fn a_pack_whose_live_data_cannot_fit_is_passed_over_without_filling_the_disk() {
    let Some(disk) = Tmpfs::mount(80) else {
        return;
    };
    let dir = disk.dir.join("store");
    let store = PackStore::open(&dir).unwrap();
    store.set_codec(Codec::None);
    // A sealed pack of 32 MiB, a quarter dead (24 MiB live), and a small open one.
    let ids: Vec<(ChunkId, Vec<u8>)> = (0..33u64)
        .map(|i| {
            let data = random_bytes(i, MIB as usize);
            (put(&store, &data), data)
        })
        .collect();
    for (id, _) in ids.iter().step_by(4).take(8) {
        store.remove(id).unwrap();
    }
    store.sync().unwrap();
    // Fill the disk from outside until ~10 MiB are free: too little for 24 MiB of copies.
    let mut filler = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(disk.dir.join("filler"))
        .unwrap();
    let zeros = vec![0u8; MIB as usize];
    while disk.free() > 10 * MIB {
        filler.write_all(&zeros).unwrap();
    }
    filler.sync_all().unwrap();
    let packs_before = pack_bytes(&dir);
    let free_before = disk.free();

    store.reclaim(true).unwrap();
    assert!(
        store.unknown_pack_files().unwrap().is_empty(),
        "a failed copy left a pack nothing names: {:?}",
        store.unknown_pack_files().unwrap()
    );
    assert_eq!(
        pack_bytes(&dir),
        packs_before,
        "the pack that cannot be compacted stays, and nothing else is left"
    );
    assert_eq!(store.usage().unwrap().disk_bytes, pack_bytes(&dir));
    assert!(
        disk.free() + MIB >= free_before,
        "reclaim took space: free {free_before} -> {}",
        disk.free()
    );

    // Once there is room, the next reclaim compacts it.
    drop(filler);
    fs::remove_file(disk.dir.join("filler")).unwrap();
    store.reclaim(true).unwrap();
    assert!(
        pack_bytes(&dir) <= 26 * MIB,
        "compacted once there is room: {} bytes of packs",
        pack_bytes(&dir)
    );
    for (i, (id, data)) in ids.iter().enumerate() {
        if i % 4 != 0 || i >= 32 {
            assert_eq!(&*store.get(id).unwrap(), &data[..], "chunk {i}");
        }
    }
    let check = verify_packs(&store, true).unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
}
