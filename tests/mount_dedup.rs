//! Deduplication and durability, measured through a real mount and `dedupfs stats`.
//!
//! Guards against a store that silently stops deduplicating (identical data written twice, or data
//! shifted by one byte, must mostly reuse existing chunks: content-defined chunking must survive
//! the kernel splitting writes into page-sized or 128 KiB requests), against stats that do not
//! measure what they claim (a fresh random file must grow physical bytes by about its size), and
//! against fsync that returns before the data is durable (kill -9 right after fsync must lose
//! nothing that was fsynced).

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{MIB, Volume, assert_bytes_eq, fuse_available, random_bytes, read_all};

/// Write `data` to a new file with plain write(2) calls of `piece` bytes (no cp, no reflink,
/// no copy_file_range), then fsync.
fn write_file(p: &Path, data: &[u8], piece: usize) {
    let mut f = File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    for part in data.chunks(piece) {
        f.write_all(part).unwrap();
    }
    f.sync_all().unwrap();
}

fn stats_summary(vol: &Volume) -> String {
    vol.stats().to_string()
}

#[test]
fn identical_256_mib_written_twice_adds_at_most_one_percent_physical() {
    if !fuse_available() {
        return;
    }
    const SIZE: usize = 256 * MIB as usize;
    let data = random_bytes(0xD0D0, SIZE);
    let mut vol = Volume::new();
    vol.unmount();
    let p0 = vol.stat_u64("physical_bytes");

    vol.remount();
    write_file(&vol.path("first"), &data, 1 << 20);
    vol.unmount();
    let s1 = vol.stats();
    let p1 = vol.stat_u64("physical_bytes");
    let first_growth = p1.saturating_sub(p0);
    // Random data does not compress or dedup within itself: the first copy must cost about its
    // size. This also proves the measurement below can fail.
    assert!(
        first_growth as f64 >= 0.95 * SIZE as f64,
        "first 256 MiB of random data grew physical_bytes by only {first_growth}: {s1}"
    );

    // The second copy under another name, written with a different write size so the kernel
    // request boundaries differ from the first time.
    vol.remount();
    fs::create_dir(vol.path("elsewhere")).unwrap();
    write_file(&vol.path("elsewhere/second"), &data, 100_000);
    vol.unmount();
    let p2 = vol.stat_u64("physical_bytes");
    let second_growth = p2.saturating_sub(p1);
    eprintln!(
        "256 MiB twice: first copy +{first_growth} physical bytes, second copy +{second_growth}"
    );
    assert!(
        second_growth as f64 <= 0.01 * first_growth as f64,
        "identical second copy grew physical_bytes by {second_growth} (first copy: {first_growth}); stats {}",
        stats_summary(&vol)
    );
    let logical = vol.stat_u64("logical_bytes");
    assert!(
        logical >= 2 * SIZE as u64,
        "logical_bytes {logical} < 2 x 256 MiB; stats {}",
        stats_summary(&vol)
    );
    let ratio = vol.stats()["dedup_ratio"]
        .as_f64()
        .expect("dedup_ratio is a number");
    assert!(
        ratio > 1.9,
        "dedup_ratio {ratio} for two identical copies; stats {}",
        stats_summary(&vol)
    );

    vol.remount();
    assert_bytes_eq(
        "second copy",
        &read_all(&vol.path("elsewhere/second")),
        &data,
    );
    assert_bytes_eq("first copy", &read_all(&vol.path("first")), &data);
    vol.unmount();
}

#[test]
fn file_shifted_by_one_inserted_byte_shares_at_least_90_percent_of_chunks() {
    if !fuse_available() {
        return;
    }
    const SIZE: usize = 64 * MIB as usize;
    let data = random_bytes(0x5417, SIZE);
    let mut shifted = Vec::with_capacity(SIZE + 1);
    shifted.push(0x42);
    shifted.extend_from_slice(&data);

    let mut vol = Volume::new();
    vol.unmount();
    let p0 = vol.stat_u64("physical_bytes");
    let c0 = vol.stat_u64("chunk_count");

    vol.remount();
    write_file(&vol.path("original"), &data, 1 << 20);
    vol.unmount();
    let p1 = vol.stat_u64("physical_bytes");
    let c1 = vol.stat_u64("chunk_count");
    assert!(
        p1.saturating_sub(p0) as f64 >= 0.95 * SIZE as f64,
        "64 MiB of random data grew physical_bytes by only {}; stats {}",
        p1.saturating_sub(p0),
        stats_summary(&vol)
    );
    assert!(
        c1 > c0 + 16,
        "64 MiB stored in only {} chunks",
        c1.saturating_sub(c0)
    );

    vol.remount();
    write_file(&vol.path("shifted"), &shifted, 1 << 20);
    vol.unmount();
    let p2 = vol.stat_u64("physical_bytes");
    let c2 = vol.stat_u64("chunk_count");
    let growth = p2.saturating_sub(p1);
    eprintln!(
        "64 MiB shifted by one byte: original +{} physical bytes in {} chunks; shifted copy +{growth} in {} new chunks",
        p1 - p0,
        c1 - c0,
        c2.saturating_sub(c1)
    );
    assert!(
        growth as f64 <= 0.10 * SIZE as f64,
        "one inserted byte cost {growth} new physical bytes ({:.1} % of 64 MiB), {} new chunks of {}; stats {}",
        100.0 * growth as f64 / SIZE as f64,
        c2.saturating_sub(c1),
        c1 - c0,
        stats_summary(&vol)
    );
    assert!(
        (c2.saturating_sub(c1) as f64) <= 0.10 * (c1 - c0) as f64,
        "shifted copy added {} chunks, original had {}",
        c2 - c1,
        c1 - c0
    );

    vol.remount();
    assert_bytes_eq("shifted", &read_all(&vol.path("shifted")), &shifted);
    assert_bytes_eq("original", &read_all(&vol.path("original")), &data);
    vol.unmount();
}

#[test]
fn different_random_file_is_not_deduplicated() {
    // The negative control for the two tests above, within one mount session: a second file of
    // *different* random data must cost its full size.
    if !fuse_available() {
        return;
    }
    const SIZE: usize = 32 * MIB as usize;
    let mut vol = Volume::new();
    write_file(&vol.path("a"), &random_bytes(1, SIZE), 1 << 20);
    vol.unmount();
    let p1 = vol.stat_u64("physical_bytes");
    vol.remount();
    write_file(&vol.path("b"), &random_bytes(2, SIZE), 1 << 20);
    vol.unmount();
    let growth = vol.stat_u64("physical_bytes").saturating_sub(p1);
    assert!(
        growth as f64 >= 0.95 * SIZE as f64,
        "32 MiB of fresh random data grew physical_bytes by only {growth}"
    );
}

#[test]
fn stats_while_mounted_reflect_fsynced_file() {
    if !fuse_available() {
        return;
    }
    const SIZE: usize = 8 * MIB as usize;
    let mut vol = Volume::new();
    let before = vol.stat_u64("physical_bytes");
    write_file(&vol.path("f"), &random_bytes(3, SIZE), 1 << 20);
    // After fsync of the file the contract says stats are exact while mounted.
    let s = vol.stats();
    let physical = s["physical_bytes"].as_u64().unwrap();
    let logical = s["logical_bytes"].as_u64().unwrap();
    assert!(
        physical.saturating_sub(before) as f64 >= 0.95 * SIZE as f64,
        "stats while mounted, after fsync: physical grew by {} for 8 MiB; {s}",
        physical.saturating_sub(before)
    );
    assert!(
        logical >= SIZE as u64,
        "logical_bytes {logical} < 8 MiB: {s}"
    );
    vol.unmount();
}

#[test]
fn fsynced_data_survives_kill_9_byte_exact() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    // An existing file, cleanly persisted, that we will patch and fsync before the crash.
    let base = random_bytes(10, 6 * MIB as usize);
    write_file(&vol.path("existing"), &base, 1 << 20);
    vol.remount();

    // 1. A new file in a new directory: fsync the file and its directory (POSIX requires the
    //    directory fsync for the name to be durable).
    fs::create_dir(vol.path("dir")).unwrap();
    let fresh = random_bytes(11, 5 * MIB as usize + 777);
    write_file(&vol.path("dir/fresh"), &fresh, 128 * 1024);
    File::open(vol.path("dir")).unwrap().sync_all().unwrap();
    File::open(&vol.mnt).unwrap().sync_all().unwrap();

    // 2. Patch the middle of the existing file and grow it; fsync the file only.
    let mut patched = base.clone();
    let patch = random_bytes(12, 300_000);
    let f = OpenOptions::new()
        .write(true)
        .open(vol.path("existing"))
        .unwrap();
    f.write_all_at(&patch, 2 * MIB + 5).unwrap();
    patched[2 * MIB as usize + 5..2 * MIB as usize + 5 + patch.len()].copy_from_slice(&patch);
    f.write_all_at(b"tail", patched.len() as u64).unwrap();
    patched.extend_from_slice(b"tail");
    f.sync_all().unwrap();

    // 3. fdatasync path.
    let g = vol.path("dir/datasynced");
    let gdata = random_bytes(13, 2 * MIB as usize);
    let mut gf = File::create(&g).unwrap();
    gf.write_all(&gdata).unwrap();
    gf.sync_data().unwrap();
    File::open(vol.path("dir")).unwrap().sync_all().unwrap();

    // Crash with descriptors still open and nothing flushed on close.
    vol.kill9();
    drop(f);
    drop(gf);
    vol.remount();
    assert_bytes_eq(
        "fsynced new file",
        &read_all(&vol.path("dir/fresh")),
        &fresh,
    );
    assert_bytes_eq(
        "patched + fsynced file",
        &read_all(&vol.path("existing")),
        &patched,
    );
    assert_bytes_eq("fdatasynced file", &read_all(&g), &gdata);

    // The store is usable after the crash: write more, unmount cleanly.
    fs::write(vol.path("after-crash"), b"ok").unwrap();
    vol.unmount();
    vol.remount();
    assert_eq!(read_all(&vol.path("after-crash")), b"ok");
    assert_bytes_eq(
        "fresh after clean remount",
        &read_all(&vol.path("dir/fresh")),
        &fresh,
    );
    vol.unmount();
}

#[test]
fn init_avg_chunk_option_changes_chunk_count() {
    // `--avg-chunk` is part of the on-disk format chosen at init: a 4x smaller average must give
    // clearly more chunks for the same data.
    if !fuse_available() {
        return;
    }
    let data = random_bytes(40, 16 * MIB as usize);
    let mut counts = Vec::new();
    for avg in ["16384", "262144"] {
        let mut vol = Volume::with_args(&["--avg-chunk", avg], &["--cache-mib", "8"]);
        write_file(&vol.path("f"), &data, 1 << 20);
        assert_bytes_eq(&format!("avg {avg}"), &read_all(&vol.path("f")), &data);
        vol.unmount();
        counts.push(vol.stat_u64("chunk_count"));
    }
    let (small, large) = (counts[0], counts[1]);
    assert!(
        small >= 4 * large && small > 500,
        "avg 16 KiB gave {small} chunks, avg 256 KiB gave {large}, for 16 MiB"
    );
}

#[test]
fn deleting_or_overwriting_one_of_two_identical_files_keeps_the_other_intact() {
    // Shared chunks are reference counted: dropping one user must not free chunks another
    // file still needs (which would surface as EIO or wrong bytes after the next remount).
    if !fuse_available() {
        return;
    }
    let data = random_bytes(50, 24 * MIB as usize);
    let mut vol = Volume::new();
    for name in ["a", "b", "c", "d"] {
        write_file(&vol.path(name), &data, 1 << 20);
    }
    vol.remount();
    fs::remove_file(vol.path("a")).unwrap();
    // Overwrite the first half of b, shrink c to a few bytes, truncate d to zero and refill.
    let patch = random_bytes(51, 12 * MIB as usize);
    OpenOptions::new()
        .write(true)
        .open(vol.path("b"))
        .unwrap()
        .write_all_at(&patch, 0)
        .unwrap();
    File::options()
        .write(true)
        .open(vol.path("c"))
        .unwrap()
        .set_len(10)
        .unwrap();
    write_file(&vol.path("d"), b"small", 1 << 20);
    fs::hard_link(vol.path("d"), vol.path("d-link")).unwrap();
    fs::write(vol.path("keeper"), &data).unwrap();
    vol.unmount();
    let s = vol.stats();
    vol.remount();

    let mut b = patch.clone();
    b.extend_from_slice(&data[patch.len()..]);
    assert_bytes_eq("keeper", &read_all(&vol.path("keeper")), &data);
    assert_bytes_eq("b", &read_all(&vol.path("b")), &b);
    assert_eq!(read_all(&vol.path("c")), &data[..10]);
    assert_eq!(read_all(&vol.path("d-link")), b"small");
    fs::remove_file(vol.path("keeper")).unwrap();
    fs::remove_file(vol.path("b")).unwrap();
    vol.unmount();
    vol.remount();
    assert_eq!(read_all(&vol.path("c")), &data[..10]);
    assert_eq!(read_all(&vol.path("d")), b"small");
    vol.unmount();

    // With every big file gone, nothing may still count as referenced.
    let end = vol.stats();
    let referenced = end["referenced_bytes"].as_u64().unwrap();
    let logical = end["logical_bytes"].as_u64().unwrap();
    assert_eq!(
        logical, 15,
        "logical_bytes after deletions; before: {s}, after: {end}"
    );
    assert!(
        referenced <= 15,
        "referenced_bytes {referenced} after deleting all large files; before: {s}, after: {end}"
    );
}
