//! The FUSE adapter: each callback converts its arguments, calls one core method and replies.
//! No filesystem semantics live here (see `fs`); errno values come from `FsError::errno`.

use crate::error::FsError;
use crate::fs::{
    CacheMode, Caller, Fs, Op, RenameFlags as CoreRename, SNAPDIR_INO, SNAPDIR_NAME, SeekWhence,
    SetAttr, TimeSet, set_id_to_drop,
};
use crate::meta::{Attr, DirEntry, Kind, ROOT_INO, Ts};
use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long the kernel may cache attributes, names and the absence of names. The daemon is
/// the only writer of its volume and every change reaches it through a kernel request, which
/// updates or drops the kernel's copy itself (no atime updates happen behind the kernel's
/// back), so nothing goes stale while cached, with one exception: st_blocks of a file with
/// data not yet written back counts that data as allocated, and the write-back may lower it
/// (runs of zeros become holes), so such a file's attributes get `UNSETTLED_TTL`. Whatever may
/// later change names or attributes outside a request must invalidate them through the
/// notifier, off the request threads.
const TTL: Duration = Duration::from_secs(60);
/// Entry and attribute timeout of `.snapshots` and of each snapshot's root, and no negative
/// entries for their names: snapshots appear and go through the control socket, not through
/// a kernel request, so the kernel must ask again rather than be told. (Telling it through the
/// notifier was tried: an invalidation waits for the directory's lock, which a request in that
/// directory holds while it waits for the daemon; a daemon killed then never finished dying.)
const SNAPSHOT_TTL: Duration = Duration::ZERO;
/// Attribute timeout of a file whose write-back is pending (see `TTL`).
const UNSETTLED_TTL: Duration = Duration::from_secs(1);
/// Attribute timeout of a regular file with set-user-ID or set-group-ID: a write by a user
/// without CAP_FSETID clears them here (FUSE_WRITE_KILL_SUIDGID), and the kernel keeps the
/// mode it cached across a direct write, so it would go on showing the old bits (and exec on
/// honouring them) until the timeout. Such files are rare; their names keep `TTL`.
const SET_ID_TTL: Duration = Duration::ZERO;
/// Largest write request we ask the kernel for (the kernel caps requests at 1 MiB).
const MAX_WRITE: u32 = 1 << 20;

pub struct DedupFuse {
    fs: Arc<Fs>,
    /// Open files with FOPEN_DIRECT_IO: writes and reads skip the page cache (measured 2-5x
    /// faster through FUSE). Only when the kernel can still mmap such files
    /// (FUSE_DIRECT_IO_ALLOW_MMAP, Linux 6.6+): git, sqlite and executables need mmap.
    direct_io: bool,
    /// Directories are opened without handles (the kernel offers it: Linux 5.1+): the first
    /// OPENDIR is answered ENOSYS, and the kernel then sends no OPENDIR or RELEASEDIR again
    /// and keeps every listing it reads (`fs::kernel_listings`, whose invalidations
    /// `spawn_listing_invalidator` sends).
    handleless_dirs: bool,
    /// Read-only opens may use the page cache (see `fs::page_cache`): only with direct I/O,
    /// and on kernels that drop a direct write's range from the page cache again after the
    /// write (`CACHED_READS_FROM`), so that a read racing the write does not keep old bytes.
    cached_reads: bool,
    /// The daemon drops set-ID bits itself on a change of owner or group, truncate,
    /// fallocate and copy_file_range (FUSE_HANDLE_KILLPRIV), so the kernel does not first
    /// read the file's attributes again (a GETATTR before every chown: one request per file
    /// of a `tar x` or `cp -a` as root). Only with direct I/O for writers: their writes then
    /// carry FUSE_WRITE_KILL_SUIDGID, which writes through the page cache would not.
    handle_killpriv: bool,
    /// See [`DedupFuse::on_unmount`].
    on_unmount: Option<Box<dyn FnOnce() + Send + Sync>>,
}

/// Kernels from which read-only opens get the page cache: the invalidation after a direct
/// write (upstream b359af8275a9, in 6.19) came to 6.18 stable with 6.18.3.
const CACHED_READS_FROM: (u32, u32, u32) = (6, 18, 3);

/// (major, minor, patch) of a kernel release string such as "6.18.44-fc-v657" (patch 0 when
/// absent).
fn kernel_version(release: &str) -> Option<(u32, u32, u32)> {
    let mut it = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    let patch = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

impl DedupFuse {
    pub fn new(fs: Arc<Fs>) -> DedupFuse {
        DedupFuse {
            fs,
            direct_io: false,
            handleless_dirs: false,
            cached_reads: true,
            handle_killpriv: false,
            on_unmount: None,
        }
    }

    /// Called first when the kernel ends the session (the mount is gone; the final sync
    /// follows): the daemon notes in the store's lock that it is only finishing.
    pub fn on_unmount(mut self, f: impl FnOnce() + Send + Sync + 'static) -> DedupFuse {
        self.on_unmount = Some(Box::new(f));
        self
    }

    /// Every read past the page cache, whatever the kernel (mount option `direct_reads`).
    pub fn with_direct_reads(mut self, direct: bool) -> DedupFuse {
        self.cached_reads = !direct;
        self
    }

    /// Flags of an open served as `mode` decided. Without FUSE_DIRECT_IO_ALLOW_MMAP every
    /// open goes through the page cache, dropping it at open (the kernel keeps it coherent for
    /// its own writes, but not what an earlier open cached).
    fn open_flags(&self, mode: CacheMode) -> FopenFlags {
        match mode {
            _ if !self.direct_io => FopenFlags::empty(),
            _ if !self.cached_reads => FopenFlags::FOPEN_DIRECT_IO,
            CacheMode::Direct => FopenFlags::FOPEN_DIRECT_IO,
            CacheMode::Cached { keep: true } => FopenFlags::FOPEN_KEEP_CACHE,
            CacheMode::Cached { keep: false } => FopenFlags::empty(),
        }
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

/// The generation number of an inode: the low 32 bits (all the kernel keeps) of its creation
/// time in nanoseconds. File handles carry it. An inode number is never handed out twice
/// within a mount, but a file whose creation was lost to a crash (kill -9 before a durable
/// point) leaves its number to the next file created after the remount; that file's
/// creation time differs, so a handle of the lost file is stale (ESTALE) instead of opening
/// it. The root keeps 0, the generation the kernel gives its root inode.
fn generation(ino: u64, a: &Attr) -> Generation {
    if ino == ROOT_INO {
        return Generation(0);
    }
    let ns = (a.crtime.secs as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(a.crtime.nsecs as u64);
    Generation(ns & 0xffff_ffff)
}

fn file_attr(ino: u64, a: &Attr, used: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: used.div_ceil(512),
        atime: a.atime.to_system(),
        mtime: a.mtime.to_system(),
        ctime: a.ctime.to_system(),
        crtime: a.crtime.to_system(),
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(s) => TimeSet::At(Ts::from_system(s)),
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// Tells the kernel which directory listings it keeps went stale (`Fs::stale_listings`): one
/// inode invalidation each, from this thread only (never a request thread, never under the
/// state lock: the kernel may wait for the daemon while it handles a notification), until
/// `Fs::end_listings`.
pub fn spawn_listing_invalidator(
    fs: Arc<Fs>,
    notifier: fuser::Notifier,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("dedupfs-inval".into())
        .spawn(move || {
            while let Some((dirs, upto)) = fs.stale_listings(Duration::from_secs(1)) {
                for ino in dirs {
                    // (An inode the kernel does not know is not an error: nothing kept.)
                    if let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0) {
                        tracing::warn!(ino, "cannot invalidate the kernel's listing: {e}");
                    }
                }
                fs.listings_invalidated(upto);
            }
        })
}

/// Whether the process behind `req` is in group `gid`: its filesystem gid (in the request)
/// or one of its supplementary groups (`/proc/PID/status`). A process already gone, or one
/// in a pid namespace the daemon cannot see (the kernel then sends pid 0), counts as in no
/// other group: its write then clears set-group-ID where Linux might keep it.
fn in_group(req: &Request, gid: u32) -> bool {
    req.gid() == gid
        || std::fs::read_to_string(format!("/proc/{}/status", req.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Groups:"))
                    .map(|g| g.split_whitespace().any(|g| g.parse() == Ok(gid)))
            })
            .unwrap_or(false)
}

/// Whether the process behind `req` holds CAP_FSETID (`CapEff` in `/proc/PID/status`); a
/// process the daemon cannot see counts as holding it when it runs as root.
fn has_fsetid(req: &Request) -> bool {
    const CAP_FSETID: u32 = 4;
    std::fs::read_to_string(format!("/proc/{}/status", req.pid()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|c| u64::from_str_radix(c.trim(), 16).ok())
        })
        .map_or(req.uid() == 0, |caps| caps & (1 << CAP_FSETID) != 0)
}

impl DedupFuse {
    /// What Linux's `file_modified` does to the set-ID bits of a file that FALLOCATE or
    /// COPY_FILE_RANGE is about to change, for a caller without CAP_FSETID. The kernel sends
    /// a SETATTR first that drops set-user-ID, and set-group-ID only from a
    /// group-executable file (FUSE's own rule, in fuse_setattr); Linux's rule
    /// (setattr_should_drop_sgid, as ext4 applies it) drops set-group-ID also when the
    /// caller is outside the file's group. This applies the whole rule (fstests
    /// generic/683-685).
    fn drop_set_id_as_modified(&self, req: &Request, ino: u64) -> Result<(), FsError> {
        let set_id = (libc::S_ISUID | libc::S_ISGID) as u16;
        if self.fs.getattr(ino).is_ok_and(|a| a.perm & set_id != 0) && !has_fsetid(req) {
            self.fs.kill_suid(ino, &|gid| in_group(req, gid))
        } else {
            Ok(())
        }
    }

    /// Attributes for a reply, and how long the kernel may keep them: `TTL`, or
    /// `UNSETTLED_TTL` while the file has data not written back (its st_blocks may still drop).
    fn attr(&self, ino: u64, a: &Attr) -> (FileAttr, Duration) {
        // st_blocks shows data actually referenced (holes cost nothing); on failure fall back
        // to the apparent size rather than failing the whole request.
        let (used, settled) = if a.kind == Kind::File {
            self.fs.allocated_settled(ino).unwrap_or((a.size, false))
        } else {
            (a.size, true)
        };
        let ttl = if ino == SNAPDIR_INO || a.parent == SNAPDIR_INO {
            // `.snapshots` and the snapshots' roots come and go outside any request: the
            // kernel asks again each time instead of being told (see `SNAPSHOT_TTL`).
            SNAPSHOT_TTL
        } else if set_id(a) {
            SET_ID_TTL
        } else if settled {
            TTL
        } else {
            UNSETTLED_TTL
        };
        (file_attr(ino, a, used), ttl)
    }

    fn entry(&self, reply: ReplyEntry, r: Result<(u64, Attr), FsError>) {
        match r {
            Ok((ino, a)) => {
                let (attr, ttl) = self.attr(ino, &a);
                // A set-ID file's name stays as long as any other's (see `SET_ID_TTL`).
                let entry_ttl = if set_id(&a) { TTL } else { ttl };
                reply.entry_with_ttls(&ttl, &entry_ttl, &attr, generation(ino, &a))
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// A lookup's answer. A missing name is answered as node 0 with a timeout, so the kernel
    /// caches its absence (a negative dentry) instead of asking again; creating the name
    /// through the kernel replaces it. Not so for `.snapshots` in the root and names in it:
    /// a snapshot appears without a request (see `SNAPSHOT_TTL`).
    fn lookup_entry(
        &self,
        reply: ReplyEntry,
        parent: u64,
        name: &[u8],
        r: Result<(u64, Attr), FsError>,
    ) {
        let snapshot_name = parent == SNAPDIR_INO || (parent == ROOT_INO && name == SNAPDIR_NAME);
        match r {
            Err(FsError::NotFound) if snapshot_name => reply.error(Errno::ENOENT),
            Err(FsError::NotFound) => {
                let none = file_attr(0, &Attr::new(Kind::File, 0, 0, 0), 0);
                reply.entry(&TTL, &none, Generation(0))
            }
            r => self.entry(reply, r),
        }
    }
}

/// A regular file with set-user-ID or set-group-ID (see `SET_ID_TTL`).
fn set_id(a: &Attr) -> bool {
    a.kind == Kind::File && a.perm & (libc::S_ISUID | libc::S_ISGID) as u16 != 0
}

fn empty(reply: ReplyEmpty, r: Result<(), FsError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn xattr_reply(reply: ReplyXattr, r: Result<Vec<u8>, FsError>, size: u32) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(&e)),
    }
}

impl Filesystem for DedupFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        self.direct_io = config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok();
        // Each is an optimisation the kernel may lack: symlink targets cached (a symlink's
        // target never changes), lookups and readdirs of one directory in parallel (the core
        // is thread-safe), and directory listings carrying attributes when the kernel expects
        // them to save lookups.
        // ... and file handles that outlive the kernel's inode (open_by_handle_at, NFS
        // export): the kernel looks up "." of the handle's inode (`Fs::lookup`).
        for flag in [
            InitFlags::FUSE_EXPORT_SUPPORT,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO,
        ] {
            let _ = config.add_capabilities(flag);
        }
        self.handle_killpriv = self.direct_io
            && config
                .add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV)
                .is_ok();
        self.handleless_dirs = config
            .capabilities()
            .contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        if self.handleless_dirs {
            self.fs.hold_listings();
        }
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        self.cached_reads = self.cached_reads
            && self.direct_io
            && kernel_version(&release).is_some_and(|v| v >= CACHED_READS_FROM);
        tracing::info!(
            direct_io = self.direct_io,
            cached_reads = self.cached_reads,
            handleless_dirs = self.handleless_dirs,
            handle_killpriv = self.handle_killpriv,
            kernel = release.trim(),
            "FUSE session initialised"
        );
        Ok(())
    }

    fn destroy(&mut self) {
        if let Some(f) = self.on_unmount.take() {
            f();
        }
        if let Err(e) = self.fs.sync_all(true) {
            tracing::error!("final sync at unmount failed: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.fs.counters().count(Op::Lookup);
        let name = name.as_bytes();
        self.lookup_entry(reply, parent.0, name, self.fs.lookup(parent.0, name));
    }

    // Inodes live in the metadata database, not in a lookup-counted table: a forget only lets
    // an unlinked inode go (`fs::ghosts`; fuser's batch_forget calls this for each).
    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        self.fs.counters().count(Op::Forget);
        self.fs.forget(ino.0);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.fs.counters().count(Op::Getattr);
        match self.fs.getattr(ino.0) {
            Ok(a) => {
                let (attr, ttl) = self.attr(ino.0, &a);
                reply.attr(&ttl, &attr)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.fs.counters().count(Op::Setattr);
        // A size change by a caller without CAP_FSETID drops set-ID bits as a write does
        // (Linux's do_truncate); the kernel's FUSE side drops set-group-ID only from a
        // group-executable file, so the daemon applies the rest: set-group-ID goes when the
        // caller is outside the file's group too.
        //
        // A change of owner or group of anything but a directory drops set-user-ID whoever
        // asks, and set-group-ID when the file is group-executable or the caller, without
        // CAP_FSETID, is outside the file's group (Linux's chown_common and
        // setattr_should_drop_sgid, as on ext4). The kernel's FUSE side sends the new mode
        // for the first two cases only; the last is the daemon's.
        //
        // With FUSE_HANDLE_KILLPRIV the kernel sends no new mode at all, and a chown(2) that
        // changes neither (-1, -1) arrives as a SETATTR that sets nothing. So does the one
        // the kernel sends before FALLOCATE or COPY_FILE_RANGE from a caller without
        // CAP_FSETID, for which the same rule holds (a caller with it, of a file that also
        // has file capabilities, would lose set-user-ID there too: not worth telling apart).
        let mut mode = mode;
        let sets_nothing = mode.is_none()
            && size.is_none()
            && atime.is_none()
            && mtime.is_none()
            && ctime.is_none();
        let chown = uid.is_some() || gid.is_some() || (self.handle_killpriv && sets_nothing);
        if (size.is_some() || chown)
            && let Ok(a) = self.fs.getattr(ino.0)
            && a.perm & (libc::S_ISUID | libc::S_ISGID) as u16 != 0
            && !(chown && a.kind == Kind::Dir)
        {
            let perm = mode.map_or(a.perm, |m| (m & 0o7777) as u16);
            let kill = if chown {
                set_id_to_drop(perm, || has_fsetid(req) || in_group(req, a.gid))
            } else if !has_fsetid(req) {
                set_id_to_drop(perm, || in_group(req, a.gid))
            } else {
                0
            };
            if kill != 0 {
                mode = Some((perm & !kill) as u32);
            }
        }
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime: ctime.map(Ts::from_system),
        };
        match self.fs.setattr(ino.0, set) {
            Ok(a) => {
                let (attr, ttl) = self.attr(ino.0, &a);
                reply.attr(&ttl, &attr)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.fs.counters().count(Op::Readlink);
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.fs.counters().count(Op::Mknod);
        let r = self
            .fs
            .mknod(caller(req), parent.0, name.as_bytes(), mode, rdev);
        self.entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.fs.counters().count(Op::Mkdir);
        let r = self.fs.mkdir(caller(req), parent.0, name.as_bytes(), mode);
        self.entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.fs.counters().count(Op::Unlink);
        empty(reply, self.fs.unlink(parent.0, name.as_bytes()));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.fs.counters().count(Op::Rmdir);
        empty(reply, self.fs.rmdir(parent.0, name.as_bytes()));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.fs.counters().count(Op::Symlink);
        let r = self.fs.symlink(
            caller(req),
            parent.0,
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
        );
        self.entry(reply, r);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.counters().count(Op::Rename);
        let f = CoreRename {
            noreplace: flags.contains(RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(RenameFlags::RENAME_EXCHANGE),
            // The kernel checked CAP_MKNOD.
            whiteout: flags
                .contains(RenameFlags::RENAME_WHITEOUT)
                .then(|| caller(req)),
        };
        let r = self.fs.rename(
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            f,
        );
        empty(reply, r);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.fs.counters().count(Op::Link);
        let r = self
            .fs
            .link(ino.0, newparent.0, newname.as_bytes())
            .map(|a| (ino.0, a));
        self.entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.fs.counters().count(Op::Open);
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        match self.fs.open_with_mode(ino.0, write) {
            Ok((fh, mode)) => {
                let mut flags = self.open_flags(mode);
                if !write {
                    // A read-only descriptor has nothing to flush (it cannot dirty pages, not
                    // even through mmap): its close(2) sends no FLUSH.
                    flags |= FopenFlags::FOPEN_NOFLUSH;
                }
                reply.opened(FileHandle(fh), flags)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.fs.counters().count(Op::Read);
        match self.fs.read(ino.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.fs.counters().count(Op::Write);
        // As Linux does, the set-ID bits and capabilities go before the data is written (also
        // if that fails).
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let killed = if kill {
            self.fs.kill_suid(ino.0, &|gid| in_group(req, gid))
        } else {
            Ok(())
        };
        // O_SYNC or O_DSYNC (the open's flags, RWF_DSYNC/RWF_SYNC of this write, or a `sync`
        // mount: the kernel sets the flag in every case): the write returns once its data is
        // durable. The kernel syncs after such a write only through the page cache, and
        // direct I/O bypasses it, so the daemon does it.
        let sync = flags.0 & libc::O_DSYNC != 0;
        let written = killed
            .and_then(|()| self.fs.kill_priv(ino.0))
            .and_then(|()| self.fs.write(ino.0, offset, data))
            .and_then(|n| {
                if sync {
                    self.fs.fsync(ino.0).map(|()| n)
                } else {
                    Ok(n)
                }
            });
        match written {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.fs.counters().count(Op::Flush);
        self.fs.note_flushed(_fh.0);
        empty(reply, self.fs.flush(ino.0));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.counters().count(Op::Release);
        empty(reply, self.fs.release(fh.0));
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.counters().count(Op::Fsync);
        empty(reply, self.fs.fsync(ino.0));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.fs.counters().count(Op::Opendir);
        if self.handleless_dirs {
            // The kernel takes this as a successful open without a handle, for this and
            // every later directory open (`handleless_dirs`).
            return reply.error(Errno::ENOSYS);
        }
        // An older kernel: a handle per open, and no listing kept by the kernel (it could not
        // be told when one goes stale behind its back).
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.fs.counters().count(Op::Readdir);
        let mut add = |next, e: &DirEntry| {
            reply.add(
                INodeNo(e.ino),
                next,
                kind(e.kind),
                OsStr::from_bytes(&e.name),
            )
        };
        // Offsets are cookies that mean the same in every listing of the directory, as the
        // kernel's cache requires (`fs::dir_listing`).
        let r = if self.handleless_dirs {
            self.fs.readdir_at(ino.0, offset, &mut add)
        } else {
            self.fs.readdir(fh.0, offset, &mut add)
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.fs.counters().count(Op::Readdirplus);
        // The kernel links no dentry for "." and "..": their attributes are only carried.
        let mut add = |next, e: &DirEntry, a: &Attr| {
            let (attr, ttl) = self.attr(e.ino, a);
            reply.add(
                INodeNo(e.ino),
                next,
                OsStr::from_bytes(&e.name),
                &ttl,
                &attr,
                generation(e.ino, a),
            )
        };
        let r = if self.handleless_dirs {
            self.fs.readdir_plus_at(ino.0, offset, &mut add)
        } else {
            self.fs.readdir_plus(fh.0, offset, &mut add)
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.counters().count(Op::Releasedir);
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.counters().count(Op::Fsyncdir);
        empty(reply, self.fs.sync_dir());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.fs.counters().count(Op::Statfs);
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.fs.counters().count(Op::Setxattr);
        empty(
            reply,
            self.fs.setxattr(ino.0, name.as_bytes(), value, flags),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.fs.counters().count(Op::Getxattr);
        xattr_reply(reply, self.fs.getxattr(ino.0, name.as_bytes()), size);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.fs.counters().count(Op::Listxattr);
        xattr_reply(reply, self.fs.listxattr(ino.0), size);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.fs.counters().count(Op::Removexattr);
        empty(reply, self.fs.removexattr(ino.0, name.as_bytes()));
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        self.fs.counters().count(Op::Access);
        // Permission checks are the kernel's (default_permissions); we only confirm existence.
        empty(reply, self.fs.getattr(ino.0).map(|_| ()));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        self.fs.counters().count(Op::Create);
        match self.fs.create(caller(req), parent.0, name.as_bytes(), mode) {
            Ok((ino, a, fh)) => {
                let (attr, ttl) = self.attr(ino, &a);
                reply.created(
                    &ttl,
                    &attr,
                    generation(ino, &a),
                    FileHandle(fh),
                    // A new file has no other opens: direct, as `Fs::open` decides for it.
                    self.open_flags(CacheMode::Direct),
                )
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.fs.counters().count(Op::Fallocate);
        empty(
            reply,
            self.drop_set_id_as_modified(req, ino.0)
                .and_then(|()| self.fs.fallocate(ino.0, offset, length, mode)),
        );
    }

    /// No ioctl is supported (FS_IOC_GETFLAGS, FIEMAP, ...): ENOTTY, as for a file that
    /// has no such request, without fuser's warning per call (tools such as `cp` and
    /// `fsstress` ask for flags on every file, and the kernel never stops asking).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        tracing::debug!("ioctl {cmd:#x}: not supported");
        reply.error(Errno::ENOTTY);
    }

    /// poll(2) on a file: ENOSYS, after which the kernel stops asking and reports regular
    /// files always ready, as a disk filesystem does (fuser's default answers the same but
    /// logs a warning at every mount).
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.fs.counters().count(Op::Lseek);
        let w = match whence {
            libc::SEEK_DATA => SeekWhence::Data,
            libc::SEEK_HOLE => SeekWhence::Hole,
            _ => return reply.error(Errno::EINVAL),
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        match self.fs.seek(ino.0, offset, w) {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.fs.counters().count(Op::CopyFileRange);
        // A reply carries a u32 count; the caller loops for the rest.
        let len = len.min(1 << 30);
        match self.drop_set_id_as_modified(req, ino_out.0).and_then(|()| {
            self.fs
                .copy_range(ino_in.0, offset_in, ino_out.0, offset_out, len)
        }) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse_and_order() {
        assert_eq!(kernel_version("6.18.44-fc-v657\n"), Some((6, 18, 44)));
        assert_eq!(kernel_version("6.6.0"), Some((6, 6, 0)));
        assert_eq!(kernel_version("7.0-rc1"), Some((7, 0, 0)));
        assert_eq!(kernel_version("6.19"), Some((6, 19, 0)));
        assert_eq!(kernel_version("garbage"), None);
        for new in ["6.18.3", "6.18.44-fc-v657", "6.19", "6.19.0-rc1", "7.1.2"] {
            assert!(kernel_version(new).unwrap() >= CACHED_READS_FROM, "{new}");
        }
        for old in ["6.18", "6.18.2-arch1", "6.17.9", "5.15.0"] {
            assert!(kernel_version(old).unwrap() < CACHED_READS_FROM, "{old}");
        }
    }
}
