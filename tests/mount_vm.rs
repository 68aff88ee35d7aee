//! VM images on a real mount: guards against image tools (qemu-img) producing corrupt images,
//! against O_DIRECT and mmap disagreeing about a file's bytes, and against a second, slightly
//! different image costing much more than its differences.

mod common;

use common::*;
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;

const MIB: u64 = 1 << 20;

fn have(prog: &str) -> bool {
    if which(prog).is_some() {
        return true;
    }
    eprintln!("SKIP: {prog} absent; VM image test not run");
    false
}

#[test]
fn qemu_img_convert_of_a_real_ext4_image_round_trips_and_checks_clean() {
    if !fuse_available() || !have("qemu-img") || !have("mkfs.ext4") {
        return;
    }
    let mut vol = Volume::new();
    // A real filesystem image, built outside the volume from a real tree.
    let src_tree = vol.scratch().join("tree");
    tree::make_tree(&src_tree, 4, 600);
    let raw = vol.scratch().join("img.raw");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&src_tree)
        .arg(&raw)
        .arg("64M"));
    let qcow = vol.path("img.qcow2");
    // -t none / -T none: qemu's cache=none, i.e. O_DIRECT on both sides, as a VM would.
    run(Command::new("qemu-img")
        .args(["convert", "-T", "none", "-t", "none", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow));
    run(Command::new("qemu-img").arg("check").arg(&qcow));
    let back = vol.path("back.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&qcow)
        .arg(&back));
    assert_bytes_eq("raw -> qcow2 -> raw", &read_all(&back), &read_all(&raw));
    run(Command::new("qemu-img").arg("compare").arg(&raw).arg(&qcow));
    // And again after a remount, from the store.
    vol.remount();
    run(Command::new("qemu-img").arg("check").arg(&qcow));
    assert_bytes_eq("after remount", &read_all(&back), &read_all(&raw));
    vol.unmount();
}

#[test]
fn qemu_img_create_of_a_large_sparse_qcow2_is_clean_and_costs_nothing() {
    if !fuse_available() || !have("qemu-img") {
        return;
    }
    let mut vol = Volume::new();
    let img = vol.path("big.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-f", "qcow2"])
        .arg(&img)
        .arg("100G"));
    run(Command::new("qemu-img").arg("check").arg(&img));
    let raw = vol.path("big.raw");
    run(Command::new("qemu-img")
        .args(["create", "-f", "raw"])
        .arg(&raw)
        .arg("1T"));
    assert_eq!(fs::metadata(&raw).unwrap().len(), 1 << 40);
    vol.unmount();
    assert!(
        vol.stat_u64("physical_bytes") < MIB,
        "empty images stored {} bytes",
        vol.stat_u64("physical_bytes")
    );
}

/// A 4 KiB-aligned buffer for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = Layout::from_size_align(len, 4096).unwrap();
        // SAFETY (test): non-zero size, freed in Drop with the same layout.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Aligned { ptr, len }
    }
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY (test): ptr is a live allocation of len bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY (test): allocated in new() with this layout.
        unsafe { dealloc(self.ptr, Layout::from_size_align(self.len, 4096).unwrap()) }
    }
}

#[test]
fn o_direct_and_mmap_see_the_same_bytes() {
    if !fuse_available() {
        return;
    }
    let mut vol = Volume::new();
    let p = vol.path("disk.img");
    let data = random_bytes(41, 4 * MIB as usize);
    // Write with O_DIRECT...
    {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&p)
            .unwrap();
        let mut buf = Aligned::new(MIB as usize);
        for piece in data.chunks(MIB as usize) {
            buf.bytes().copy_from_slice(piece);
            f.write_all(buf.bytes()).unwrap();
        }
        f.sync_all().unwrap();
    }
    // ...read through a shared mapping...
    let mut want = data.clone();
    {
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        // SAFETY (test): the file is not truncated while mapped.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&f).unwrap() };
        assert_bytes_eq("mmap after O_DIRECT write", &map[..], &data);
        // ...write through the mapping...
        map[12345..12345 + 5000].fill(0x5A);
        want[12345..12345 + 5000].fill(0x5A);
        map.flush().unwrap();
    }
    // ...and read it back with O_DIRECT.
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&p)
        .unwrap();
    let mut got = Vec::new();
    let mut buf = Aligned::new(MIB as usize);
    f.seek(SeekFrom::Start(0)).unwrap();
    loop {
        let n = f.read(buf.bytes()).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf.bytes()[..n]);
    }
    assert_bytes_eq("O_DIRECT read after mmap write", &got, &want);
    drop(f);
    vol.remount();
    assert_bytes_eq("after remount", &read_all(&p), &want);
    vol.unmount();
}

/// Writes `base` as `a`, then a copy with `patches` random 64 KiB changes as `b` (plain
/// writes, no reflink), and returns (changed bytes, physical bytes the second image added).
fn second_image_cost(vol: &mut Volume, name: &str, base: &[u8], patches: usize) -> (u64, u64) {
    fs::write(vol.path(&format!("{name}-a")), base).unwrap();
    vol.unmount();
    let before = vol.stat_u64("physical_bytes");
    vol.remount();
    let mut img = base.to_vec();
    let mut seed = 7u64;
    for i in 0..patches {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let at = ((seed >> 16) % (base.len() as u64 - 65536)) as usize & !4095;
        img[at..at + 65536].copy_from_slice(&random_bytes(100 + i as u64, 65536));
    }
    let mut f = fs::File::create(vol.path(&format!("{name}-b"))).unwrap();
    for piece in img.chunks(MIB as usize) {
        f.write_all(piece).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    vol.unmount();
    let added = vol.stat_u64("physical_bytes") - before;
    vol.remount();
    assert_bytes_eq(
        "second image",
        &read_all(&vol.path(&format!("{name}-b"))),
        &img,
    );
    ((patches * 65536) as u64, added)
}

#[test]
fn second_image_with_a_few_changes_costs_about_the_changes() {
    if !fuse_available() {
        return;
    }
    let base = random_bytes(42, 128 * MIB as usize);
    // Content-defined chunks (64 KiB average): each 64 KiB patch rewrites the one or two
    // chunks it touches plus, at most, a neighbour before CDC resynchronises.
    let mut vol = Volume::new();
    let (changed, added) = second_image_cost(&mut vol, "cdc", &base, 16);
    eprintln!("cdc: second image changed {changed} bytes, added {added} physical bytes");
    assert!(
        added >= changed / 2,
        "added {added} < half of changed {changed}: not measuring"
    );
    assert!(
        added <= 5 * changed,
        "added {added} for {changed} changed bytes"
    );
    vol.unmount();
    // Fixed blocks for *.img: a 4 KiB-aligned 64 KiB patch touches at most two blocks.
    let mut vol = Volume::with_args(&["--fixed-for", "*-a,*-b"], &[]);
    let (changed, added) = second_image_cost(&mut vol, "fixed", &base, 16);
    eprintln!("fixed: second image changed {changed} bytes, added {added} physical bytes");
    assert!(
        added <= 2 * changed,
        "added {added} for {changed} changed bytes"
    );
    vol.unmount();
}
