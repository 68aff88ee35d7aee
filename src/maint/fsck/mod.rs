//! `dedupfs fsck`: checks every invariant the metadata and the chunk store promise each other,
//! reports findings as data, and (with `repair`) fixes what can be fixed without guessing.
//!
//! Checked (see `meta`'s invariants and docs/design.md):
//! - the directory tree: the root exists; every dirent names an existing inode of the kind it
//!   claims and sits in a directory; each directory has one name, in the directory its `parent`
//!   field names; every inode is reachable from `/` (no detached subtrees, no cycles); `nlink`
//!   is the number of names (files) or 2 + subdirectories (directories); `next_ino` is past
//!   every inode; orphan-table entries;
//! - chunk lists: every extent names a chunk the `chunks` table knows, with the same length;
//!   a file's extents do not overlap and end within its size; only regular files have extents;
//! - accounting: each refcount equals the number of extents naming the chunk; zero-refcount
//!   chunks are listed in `zero_refs` and nothing else is; the counters and per-file
//!   `allocated` bytes equal their recomputed values;
//! - the store: every referenced chunk file exists with the right length (and, with
//!   `verify_data`, the right blake3 hash); the files that lost data are named by path; chunk
//!   files no metadata knows are reported as garbage for `gc`.
//!
//! Repair (`repair: true`; the store must not be mounted, since an orphan may be open in a
//! running daemon) recomputes refcounts, counters, `allocated` and nlink, completes the
//! `zero_refs` list, deletes orphaned inodes as a mount would, drops dirents naming missing
//! inodes, gives a directory back its one name, and reattaches unreachable inodes under
//! `/lost+found` rather than deleting them. It never invents data: extents naming missing or
//! corrupt chunks are left in place and reported as errors naming the file (reads of those
//! ranges keep failing with EIO rather than silently returning zeros).
//!
//! A `meta.redb` that cannot be read at all is not fixed here: the CLI's `fsck --repair`
//! first restores the newest metadata backup (`maint::backup::restore`) and then runs this
//! check, which names the files whose data was freed after the backup was taken.
//!
//! Memory: per-inode facts (kind, nlink, parent, size) are held in a map; chunk references
//! are counted through a sorted `Vec<u64>` of 8-byte id prefixes (8 bytes per extent), with an
//! exact recount for the rare prefixes two chunks share.

use crate::error::{FsError, Ino, Result};
use crate::hash::ChunkId;
use crate::meta::snapshot::Holders;
use crate::meta::{
    Attr, C_CHUNKS, C_FILES, C_LOGICAL, C_PHYSICAL, C_REFERENCED, Extent, Kind, MetaDb, ROOT_INO,
    RTx, WTx,
};
use crate::store::ChunkStore;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

mod backups;
mod generations;
mod store;
pub use backups::check_backups;
pub use generations::check_generations;
use store::scan_store;

/// Name of the directory (in `/`) that repair reattaches unreachable inodes under.
pub const LOST_FOUND: &[u8] = b"lost+found";
/// Garbage chunk files listed one by one; beyond this a single summary finding counts them.
const GARBAGE_LISTED: usize = 100;
/// Items between two progress reports within a phase.
const PROGRESS_EVERY: u64 = 8192;

#[derive(Clone, Copy, Debug, Default)]
pub struct FsckOptions {
    /// Fix what can be fixed without guessing (store must not be mounted).
    pub repair: bool,
    /// Re-hash every referenced chunk and compare with its name (reads all data).
    pub verify_data: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Data is lost or an invariant is broken in a way that can lose data.
    Error,
    /// Bookkeeping is off (figures, orphans) but no data is at risk.
    Warning,
    /// Expected after a crash; `gc` or the next mount cleans it up.
    Info,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    RootMissing,
    InodeCounterBehind,
    DanglingDirent,
    DirentInNonDir,
    DirentKindMismatch,
    DirParentMismatch,
    DirMultipleNames,
    DirCycle,
    Unreachable,
    NlinkMismatch,
    Orphan,
    SymlinkWithoutTarget,
    ExtentsWithoutInode,
    ExtentsOnNonFile,
    ExtentOverlap,
    ExtentBeyondSize,
    ExtentLengthMismatch,
    UnknownChunk,
    RefcountMismatch,
    ZeroRefUnlisted,
    ZeroRefStale,
    PendingRemoval,
    CounterMismatch,
    AllocatedMismatch,
    MissingChunkFile,
    ChunkLengthMismatch,
    CorruptChunk,
    FileDataLost,
    GarbageChunk,
    /// A pack record fails its checks, or the index points where no matching record is.
    PackDamaged,
    /// A pack file the index does not know (garbage after a crash).
    UnknownPack,
    /// A chunk a snapshot names is not in the store.
    SnapshotChunkMissing,
    /// A metadata backup cannot be read (a restore would pass it over).
    BackupDamaged,
    /// The store has no metadata backup yet.
    NoBackup,
    /// A remote volume's generation object (its own last one, or the volume's newest) is
    /// missing from the bucket or cannot be read.
    GenerationDamaged,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub severity: Severity,
    pub message: String,
    pub ino: Option<Ino>,
    /// Path of `ino` from `/`, when it has one.
    pub path: Option<String>,
    /// Hex id of the chunk concerned.
    pub chunk: Option<String>,
    /// Repair fixed this finding.
    pub repaired: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FsckReport {
    pub findings: Vec<Finding>,
    /// Chunk files checked against the metadata (existence and length, hash with verify).
    pub chunks_checked: u64,
    pub inodes_checked: u64,
    /// Bytes re-hashed (verify_data).
    pub bytes_verified: u64,
    /// Pack files whose every record was checked.
    #[serde(default)]
    pub packs_checked: u64,
    /// Findings repair fixed.
    pub repaired: usize,
    /// `meta.redb` could not be read and repair put this backup in its place: every change
    /// made after it was taken is lost, and files whose data was freed since are named in
    /// the findings.
    #[serde(default)]
    pub restored_from_backup: Option<crate::meta::backup::Backup>,
    /// Metadata backups found in the store, newest first.
    #[serde(default)]
    pub backups: Vec<crate::meta::backup::Backup>,
}

impl FsckReport {
    /// Errors that remain (not repaired): the CLI exits non-zero when true.
    pub fn has_errors(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.severity == Severity::Error && !f.repaired)
    }

    /// Findings of `kind`.
    pub fn of_kind(&self, kind: FindingKind) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.kind == kind)
    }

    /// Number of findings of `severity` that remain (not repaired).
    pub fn remaining(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity && !f.repaired)
            .count()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Inodes,
    Dirents,
    Extents,
    Chunks,
    Packs,
    StoreFiles,
    Repair,
    Verify,
}

/// Progress of a running fsck, for a progress bar. `total` is known only for some phases.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Progress {
    pub phase: Phase,
    pub done: u64,
    pub total: Option<u64>,
}

/// Checks (and with `opts.repair`, repairs) the store. Returns `Err` only when the check itself
/// cannot proceed (I/O error, unreadable database); damage is reported in the findings.
/// Chunks the snapshots in `holders` name are not garbage, and must be in the store.
pub fn fsck(
    meta: &MetaDb,
    store: &dyn ChunkStore,
    holders: &Holders,
    opts: FsckOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<FsckReport> {
    let mut report = FsckReport::default();
    let r = meta.begin_read()?;
    let scan = scan_meta(&r, progress)?;
    report.inodes_checked = scan.inodes_checked;
    let mut items = scan.items;
    let mut extra_items = scan_store(
        &r,
        store,
        opts.verify_data,
        &scan.extra,
        holders,
        &mut report,
        progress,
    )?;
    items.append(&mut extra_items);
    resolve_paths(&r, &scan.dir_names, &mut items)?;
    drop(r);

    let any_fix = items.iter().any(|i| !i.fixes.is_empty());
    if opts.repair && any_fix {
        progress(Progress {
            phase: Phase::Repair,
            done: 0,
            total: None,
        });
        let mut tx = meta.begin_write()?;
        apply(&mut tx, items.iter().flat_map(|i| i.fixes.iter()))?;
        // Counts depend on the structure just fixed (a reattached file gains a name,
        // /lost+found gains subdirectories): recompute from the repaired state.
        for _ in 0..2 {
            let again = scan_meta(&tx, &mut |_| {})?;
            if !again.items.iter().any(|i| !i.fixes.is_empty()) {
                break;
            }
            apply(&mut tx, again.items.iter().flat_map(|i| i.fixes.iter()))?;
        }
        // No new chunk is referenced, but honour the ordering contract anyway: chunk files
        // are durable before any durable metadata commit.
        store.sync()?;
        tx.commit(true)?;
        for i in items.iter_mut().filter(|i| !i.fixes.is_empty()) {
            i.finding.repaired = true;
            report.repaired += 1;
        }
        progress(Progress {
            phase: Phase::Verify,
            done: 0,
            total: None,
        });
        let r = meta.begin_read()?;
        let after = scan_meta(&r, &mut |_| {})?;
        let mut left: Vec<Item> = after
            .items
            .into_iter()
            .filter(|i| i.finding.severity != Severity::Info)
            .filter(|i| {
                !items.iter().any(|o| {
                    !o.finding.repaired
                        && o.finding.kind == i.finding.kind
                        && o.finding.ino == i.finding.ino
                        && o.finding.chunk == i.finding.chunk
                })
            })
            .collect();
        resolve_paths(&r, &after.dir_names, &mut left)?;
        for mut i in left {
            i.finding.message = format!("still present after repair: {}", i.finding.message);
            items.push(i);
        }
    }
    report.findings = items.into_iter().map(|i| i.finding).collect();
    Ok(report)
}

/// Visitor of directory entries: `(parent, name, ino, kind)`.
type DirentFn<'a> = dyn FnMut(Ino, &[u8], Ino, Kind) + 'a;

/// The read operations fsck needs, over a read or a write transaction (repair re-checks
/// inside its write transaction, seeing its own changes).
trait MetaRead {
    fn for_each_inode(&self, f: &mut dyn FnMut(Ino, Attr) -> Result<()>) -> Result<()>;
    fn for_each_dirent(&self, f: &mut DirentFn) -> Result<()>;
    fn for_each_extent(&self, f: &mut dyn FnMut(Ino, Extent)) -> Result<()>;
    fn for_each_chunk(&self, f: &mut dyn FnMut(ChunkId, u64, u32)) -> Result<()>;
    fn for_each_allocated(&self, f: &mut dyn FnMut(Ino, u64)) -> Result<()>;
    fn chunk(&self, id: &ChunkId) -> Result<Option<(u64, u32)>>;
    fn counter(&self, key: &str) -> Result<u64>;
    fn meta_u64(&self, key: &str) -> Result<Option<u64>>;
    fn orphans(&self) -> Result<Vec<Ino>>;
    fn zero_refs(&self) -> Result<Vec<ChunkId>>;
    fn symlink(&self, ino: Ino) -> Result<Option<Vec<u8>>>;
}

macro_rules! impl_meta_read {
    ($($t:ty),*) => {$(
        impl MetaRead for $t {
            fn for_each_inode(&self, f: &mut dyn FnMut(Ino, Attr) -> Result<()>) -> Result<()> {
                <$t>::for_each_inode(self, f)
            }
            fn for_each_dirent(&self, f: &mut DirentFn) -> Result<()> {
                <$t>::for_each_dirent(self, f)
            }
            fn for_each_extent(&self, f: &mut dyn FnMut(Ino, Extent)) -> Result<()> {
                <$t>::for_each_extent(self, f)
            }
            fn for_each_chunk(&self, f: &mut dyn FnMut(ChunkId, u64, u32)) -> Result<()> {
                <$t>::for_each_chunk(self, f)
            }
            fn for_each_allocated(&self, f: &mut dyn FnMut(Ino, u64)) -> Result<()> {
                <$t>::for_each_allocated(self, f)
            }
            fn chunk(&self, id: &ChunkId) -> Result<Option<(u64, u32)>> {
                <$t>::chunk(self, id)
            }
            fn counter(&self, key: &str) -> Result<u64> {
                <$t>::counter(self, key)
            }
            fn meta_u64(&self, key: &str) -> Result<Option<u64>> {
                <$t>::meta_u64(self, key)
            }
            fn orphans(&self) -> Result<Vec<Ino>> {
                <$t>::orphans(self)
            }
            fn zero_refs(&self) -> Result<Vec<ChunkId>> {
                <$t>::zero_refs(self)
            }
            fn symlink(&self, ino: Ino) -> Result<Option<Vec<u8>>> {
                <$t>::symlink(self, ino)
            }
        }
    )*};
}
impl_meta_read!(RTx, WTx);

/// One repair step. Each is idempotent and checks its target still exists, so a stale step
/// (planned before an earlier step changed the state) does no harm; the re-check that follows
/// corrects any figure it left behind.
#[derive(Clone, Debug)]
enum Fix {
    SetNextIno(u64),
    SetChunkRef(ChunkId, u64, u32),
    ForgetZeroRef(ChunkId),
    SetCounter(&'static str, u64),
    SetAllocated(Ino, u64),
    SetNlink(Ino, u32),
    SetParent(Ino, Ino),
    DelDirent(Ino, Vec<u8>),
    PutDirent(Ino, Vec<u8>, Ino, Kind),
    RecreateInode(Ino, u64),
    RemoveOrphan(Ino),
    Reattach(Ino),
    DeleteOrphan(Ino),
}

impl Fix {
    /// Application order: figures first (so later structural steps, which adjust them
    /// incrementally, start from correct values), then names, then reattachment, then deletes.
    fn order(&self) -> u8 {
        match self {
            Fix::SetNextIno(_)
            | Fix::SetChunkRef(..)
            | Fix::ForgetZeroRef(_)
            | Fix::SetCounter(..)
            | Fix::SetAllocated(..)
            | Fix::SetNlink(..) => 0,
            Fix::SetParent(..)
            | Fix::DelDirent(..)
            | Fix::PutDirent(..)
            | Fix::RecreateInode(..)
            | Fix::RemoveOrphan(_) => 1,
            Fix::Reattach(_) => 2,
            Fix::DeleteOrphan(_) => 3,
        }
    }
}

struct Item {
    finding: Finding,
    fixes: Vec<Fix>,
}

fn item(kind: FindingKind, severity: Severity, message: String) -> Item {
    Item {
        finding: Finding {
            kind,
            severity,
            message,
            ino: None,
            path: None,
            chunk: None,
            repaired: false,
        },
        fixes: Vec::new(),
    }
}

impl Item {
    fn ino(mut self, ino: Ino) -> Item {
        self.finding.ino = Some(ino);
        self
    }
    fn chunk(mut self, id: &ChunkId) -> Item {
        self.finding.chunk = Some(id.to_hex());
        self
    }
    fn fix(mut self, f: Fix) -> Item {
        self.fixes.push(f);
        self
    }
}

#[derive(Clone, Copy)]
struct Node {
    kind: Kind,
    nlink: u32,
    parent: Ino,
    size: u64,
}

struct MetaScan {
    items: Vec<Item>,
    inodes_checked: u64,
    /// The one name of each directory: `(parent, name)`, for paths.
    dir_names: HashMap<Ino, (Ino, Vec<u8>)>,
    /// Chunks to check in the store besides those with refcount > 0: referenced chunks whose
    /// refcount says otherwise, with their length.
    extra: Vec<(ChunkId, u32)>,
}

fn prefix(id: &ChunkId) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id.0[..8]);
    u64::from_be_bytes(b)
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn start(progress: &mut dyn FnMut(Progress), phase: Phase) {
    progress(Progress {
        phase,
        done: 0,
        total: None,
    });
}

/// Every metadata-only check; the fixes are planned, not applied.
fn scan_meta<R: MetaRead>(r: &R, progress: &mut dyn FnMut(Progress)) -> Result<MetaScan> {
    let mut items = Vec::new();
    start(progress, Phase::Inodes);
    let (nodes, inos, root_ok) = check_inodes(r, &mut items)?;
    start(progress, Phase::Dirents);
    let dir_names = check_tree(r, &nodes, &inos, root_ok, &mut items)?;
    start(progress, Phase::Extents);
    let refs = check_extents(r, &nodes, &mut items, progress)?;
    start(progress, Phase::Chunks);
    let extra = check_chunks(r, &nodes, &refs, &mut items)?;
    check_allocated(r, &refs.allocated, &mut items)?;
    Ok(MetaScan {
        items,
        inodes_checked: inos.len() as u64,
        dir_names,
        extra,
    })
}

/// Facts per inode, inodes in order, and whether the root is a directory. Checks `next_ino`
/// and symlink targets.
fn check_inodes<R: MetaRead>(
    r: &R,
    items: &mut Vec<Item>,
) -> Result<(HashMap<Ino, Node>, Vec<Ino>, bool)> {
    use FindingKind as K;
    use Severity::Error;
    let mut nodes: HashMap<Ino, Node> = HashMap::new();
    let mut max_ino = 0;
    r.for_each_inode(&mut |ino, a| {
        nodes.insert(
            ino,
            Node {
                kind: a.kind,
                nlink: a.nlink,
                parent: a.parent,
                size: a.size,
            },
        );
        max_ino = max_ino.max(ino);
        Ok(())
    })?;
    let mut inos: Vec<Ino> = nodes.keys().copied().collect();
    inos.sort_unstable();
    match r.meta_u64("next_ino")? {
        Some(n) if n > max_ino => {}
        n => items.push(
            item(
                K::InodeCounterBehind,
                Error,
                format!(
                    "next inode number {n:?} is not past the highest inode {max_ino}: new files would overwrite existing ones"
                ),
            )
            .fix(Fix::SetNextIno(max_ino + 1)),
        ),
    }
    for &ino in &inos {
        if nodes[&ino].kind == Kind::Symlink && r.symlink(ino)?.is_none() {
            items.push(
                item(
                    K::SymlinkWithoutTarget,
                    Error,
                    "symlink has no target".into(),
                )
                .ino(ino),
            );
        }
    }
    let root_ok = nodes.get(&ROOT_INO).is_some_and(|n| n.kind == Kind::Dir);
    if !root_ok {
        items.push(
            item(
                K::RootMissing,
                Error,
                "the root directory is missing or not a directory; tree checks skipped".into(),
            )
            .ino(ROOT_INO),
        );
    }

    Ok((nodes, inos, root_ok))
}

/// Directory entries, names of directories, reachability from `/`, orphans and link counts.
/// Returns the one name kept for each directory.
fn check_tree<R: MetaRead>(
    r: &R,
    nodes: &HashMap<Ino, Node>,
    inos: &[Ino],
    root_ok: bool,
    items: &mut Vec<Item>,
) -> Result<HashMap<Ino, (Ino, Vec<u8>)>> {
    use FindingKind as K;
    use Severity::{Error, Warning};
    let orphans: HashSet<Ino> = r.orphans()?.into_iter().collect();
    // --- directory entries ---
    // Names of non-directories, and every name of each directory (normally one).
    let mut links: HashMap<Ino, u32> = HashMap::new();
    let mut dir_all_names: BTreeMap<Ino, Vec<(Ino, Vec<u8>)>> = BTreeMap::new();
    let mut children: HashMap<Ino, u32> = HashMap::new();
    r.for_each_dirent(&mut |parent, name, ino, kind| {
        let del = Fix::DelDirent(parent, name.to_vec());
        if !nodes.get(&parent).is_some_and(|n| n.kind == Kind::Dir) {
            items.push(
                item(
                    K::DirentInNonDir,
                    Error,
                    format!(
                        "entry {:?} -> inode {ino} sits in inode {parent}, which is not an existing directory",
                        show(name)
                    ),
                )
                .ino(ino)
                .fix(del),
            );
            return;
        }
        let Some(node) = nodes.get(&ino) else {
            items.push(
                item(
                    K::DanglingDirent,
                    Error,
                    format!(
                        "entry {:?} in directory {parent} names missing inode {ino}",
                        show(name)
                    ),
                )
                .ino(parent)
                .fix(del),
            );
            return;
        };
        if ino == ROOT_INO {
            items.push(
                item(
                    K::DirMultipleNames,
                    Error,
                    format!("entry {:?} in directory {parent} names the root", show(name)),
                )
                .ino(parent)
                .fix(del),
            );
            return;
        }
        if node.kind != kind {
            items.push(
                item(
                    K::DirentKindMismatch,
                    Error,
                    format!(
                        "entry {:?} says {kind:?} but inode {ino} is a {:?}",
                        show(name),
                        node.kind
                    ),
                )
                .ino(ino)
                .fix(Fix::PutDirent(parent, name.to_vec(), ino, node.kind)),
            );
        }
        *children.entry(parent).or_default() += 1;
        if node.kind == Kind::Dir {
            dir_all_names
                .entry(ino)
                .or_default()
                .push((parent, name.to_vec()));
        } else {
            *links.entry(ino).or_default() += 1;
        }
    })?;

    // Each directory keeps one name: the one in its `parent`, else its first.
    let mut dir_names: HashMap<Ino, (Ino, Vec<u8>)> = HashMap::new();
    for (ino, mut names) in dir_all_names {
        let parent = nodes.get(&ino).map(|n| n.parent).unwrap_or(0);
        let keep = match names.iter().position(|(p, _)| *p == parent) {
            Some(i) => i,
            None => {
                let p = names[0].0;
                items.push(
                    item(
                        K::DirParentMismatch,
                        Error,
                        format!("directory's parent field says {parent}, but its entry is in {p}"),
                    )
                    .ino(ino)
                    .fix(Fix::SetParent(ino, p)),
                );
                0
            }
        };
        let canon = names.swap_remove(keep);
        for (p, n) in names {
            items.push(
                item(
                    K::DirMultipleNames,
                    Error,
                    format!(
                        "directory has a second name {:?} in directory {p}; it keeps {:?} in {}",
                        show(&n),
                        show(&canon.1),
                        canon.0
                    ),
                )
                .ino(ino)
                .fix(Fix::DelDirent(p, n)),
            );
        }
        dir_names.insert(ino, canon);
    }

    // --- reachability: walk each directory's name chain up to the root ---
    let mut reach: HashMap<Ino, bool> = HashMap::new();
    reach.insert(ROOT_INO, true);
    let mut cycle_breaks: Vec<Ino> = Vec::new();
    if root_ok {
        for &d in inos {
            if nodes[&d].kind != Kind::Dir || reach.contains_key(&d) {
                continue;
            }
            let mut path = Vec::new();
            let mut on_path = HashSet::new();
            let mut cur = d;
            let reachable = loop {
                if let Some(&known) = reach.get(&cur) {
                    break known;
                }
                if !on_path.insert(cur) {
                    let start = path.iter().position(|&x| x == cur).unwrap_or(0);
                    let m = path[start..].iter().copied().min().unwrap_or(cur);
                    cycle_breaks.push(m);
                    break false;
                }
                path.push(cur);
                match dir_names.get(&cur) {
                    Some((p, _)) => cur = *p,
                    // Nameless: the top of a detached subtree, reported below.
                    None => break false,
                }
            };
            for x in path {
                reach.insert(x, reachable);
            }
        }
    }
    let mut subdirs: HashMap<Ino, u32> = HashMap::new();
    for (p, _) in dir_names.values() {
        *subdirs.entry(*p).or_default() += 1;
    }
    let mut reattached: HashSet<Ino> = HashSet::new();
    for &m in &cycle_breaks {
        if let Some((p, n)) = dir_names.get(&m) {
            items.push(
                item(
                    K::DirCycle,
                    Error,
                    format!(
                        "directory is in a cycle of directories unreachable from /; its name {:?} in {p} is dropped and it moves to /lost+found",
                        show(n)
                    ),
                )
                .ino(m)
                .fix(Fix::DelDirent(*p, n.clone()))
                .fix(Fix::Reattach(m)),
            );
            reattached.insert(m);
        }
    }

    // --- orphans and unreachable inodes ---
    let mut deleted: HashSet<Ino> = HashSet::new();
    let mut orphan_list: Vec<Ino> = orphans.iter().copied().collect();
    orphan_list.sort_unstable();
    for &o in &orphan_list {
        let Some(node) = nodes.get(&o) else {
            items.push(
                item(
                    K::Orphan,
                    Warning,
                    format!("orphan entry for missing inode {o}"),
                )
                .ino(o)
                .fix(Fix::RemoveOrphan(o)),
            );
            continue;
        };
        let named = if node.kind == Kind::Dir {
            dir_names.contains_key(&o)
        } else {
            links.contains_key(&o)
        };
        if named {
            items.push(
                item(
                    K::Orphan,
                    Warning,
                    "inode is marked orphaned but still has a name".into(),
                )
                .ino(o)
                .fix(Fix::RemoveOrphan(o)),
            );
        } else if children.get(&o).copied().unwrap_or(0) == 0 {
            items.push(
                item(
                    K::Orphan,
                    Warning,
                    "inode was unlinked (while open, or just before the volume went down) and not yet deleted; the next mount deletes it".into(),
                )
                .ino(o)
                .fix(Fix::DeleteOrphan(o)),
            );
            deleted.insert(o);
        }
        // An orphaned directory that still has entries is reattached below, not deleted.
    }
    if root_ok {
        for &ino in inos {
            if ino == ROOT_INO || deleted.contains(&ino) || reattached.contains(&ino) {
                continue;
            }
            let node = nodes[&ino];
            let nameless = if node.kind == Kind::Dir {
                !dir_names.contains_key(&ino)
            } else {
                !links.contains_key(&ino)
            };
            if !nameless {
                continue;
            }
            let what = if node.kind == Kind::Dir {
                "directory (and everything below it)"
            } else {
                "inode"
            };
            items.push(
                item(
                    K::Unreachable,
                    Error,
                    format!("{what} has no name and is not reachable from /; repair moves it to /lost+found"),
                )
                .ino(ino)
                .fix(Fix::RemoveOrphan(ino))
                .fix(Fix::Reattach(ino)),
            );
            reattached.insert(ino);
        }

        // --- link counts ---
        for &ino in inos {
            if deleted.contains(&ino) {
                continue;
            }
            let node = nodes[&ino];
            let want = if node.kind == Kind::Dir {
                2 + subdirs.get(&ino).copied().unwrap_or(0)
            } else if reattached.contains(&ino) {
                1
            } else {
                links.get(&ino).copied().unwrap_or(0)
            };
            if node.nlink != want {
                items.push(
                    item(
                        K::NlinkMismatch,
                        Error,
                        format!("link count is {} but should be {want}", node.nlink),
                    )
                    .ino(ino)
                    .fix(Fix::SetNlink(ino, want)),
                );
            }
        }
    }

    Ok(dir_names)
}

/// What the chunk lists add up to.
struct Refs {
    /// 8-byte prefix of the chunk of every extent, sorted.
    prefixes: Vec<u64>,
    /// Bytes of chunk data per inode, in inode order.
    allocated: Vec<(Ino, u64)>,
    referenced: u64,
    /// Chunks the table does not know: reference count, length, lengths agree, first file.
    unknown: BTreeMap<ChunkId, (u64, u32, bool, Ino)>,
}

/// Each file's extents: overlap, size, owner kind, chunk known with the same length.
fn check_extents<R: MetaRead>(
    r: &R,
    nodes: &HashMap<Ino, Node>,
    items: &mut Vec<Item>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Refs> {
    let mut prefixes: Vec<u64> = Vec::new();
    let mut allocated: Vec<(Ino, u64)> = Vec::new();
    let mut referenced: u64 = 0;
    // Chunks the table does not know: reference count, length, lengths agree, first file.
    let mut unknown: BTreeMap<ChunkId, (u64, u32, bool, Ino)> = BTreeMap::new();
    let mut err: Option<FsError> = None;
    let mut acc: Option<FileAcc> = None;
    let mut seen: u64 = 0;
    r.for_each_extent(&mut |ino, e| {
        if err.is_some() {
            return;
        }
        seen += 1;
        if seen.is_multiple_of(PROGRESS_EVERY) {
            progress(Progress {
                phase: Phase::Extents,
                done: seen,
                total: None,
            });
        }
        if acc.as_ref().is_some_and(|a| a.ino != ino)
            && let Some(a) = acc.take()
        {
            a.finish(nodes, items, &mut allocated);
        }
        let a = acc.get_or_insert_with(|| FileAcc::new(ino));
        prefixes.push(prefix(&e.id));
        referenced += e.len as u64;
        a.bytes += e.len as u64;
        if e.offset < a.end {
            a.overlap = true;
        }
        a.end = a.end.max(e.end());
        match r.chunk(&e.id) {
            Ok(Some((_, len))) if len == e.len => {}
            Ok(Some(_)) => {
                a.len_mismatch += 1;
                a.first_bad.get_or_insert(e.id);
            }
            Ok(None) => {
                let u = unknown.entry(e.id).or_insert((0, e.len, true, ino));
                u.0 += 1;
                u.2 &= u.1 == e.len;
            }
            Err(x) => err = Some(x),
        }
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    if let Some(a) = acc.take() {
        a.finish(nodes, items, &mut allocated);
    }
    prefixes.sort_unstable();

    Ok(Refs {
        prefixes,
        allocated,
        referenced,
        unknown,
    })
}

/// Refcounts against the extents, the `zero_refs` list, and the counters. Returns the
/// referenced chunks the store check must visit although their refcount is 0 or unknown.
fn check_chunks<R: MetaRead>(
    r: &R,
    nodes: &HashMap<Ino, Node>,
    refs: &Refs,
    items: &mut Vec<Item>,
) -> Result<Vec<(ChunkId, u32)>> {
    use FindingKind as K;
    use Severity::{Error, Info, Warning};
    // Prefixes shared by two distinct chunks (two table entries, or a table entry and an
    // unknown chunk) are counted exactly; every other count comes from the prefix vector.
    let mut ambiguous: HashSet<u64> = refs.unknown.keys().map(prefix).collect();
    let mut last: Option<u64> = None;
    r.for_each_chunk(&mut |id, _, _| {
        let p = prefix(&id);
        if last == Some(p) {
            ambiguous.insert(p);
        }
        last = Some(p);
    })?;
    let mut exact: HashMap<ChunkId, u64> = HashMap::new();
    if !ambiguous.is_empty() {
        r.for_each_extent(&mut |_, e| {
            if ambiguous.contains(&prefix(&e.id)) {
                *exact.entry(e.id).or_default() += 1;
            }
        })?;
    }
    let count_of = |id: &ChunkId| -> u64 {
        let p = prefix(id);
        if ambiguous.contains(&p) {
            return exact.get(id).copied().unwrap_or(0);
        }
        let lo = refs.prefixes.partition_point(|&x| x < p);
        let hi = refs.prefixes.partition_point(|&x| x <= p);
        (hi - lo) as u64
    };
    let zero_refs: HashSet<ChunkId> = r.zero_refs()?.into_iter().collect();
    let mut physical: u64 = 0;
    let mut chunk_count: u64 = 0;
    let mut pending: u64 = 0;
    let mut extra: Vec<(ChunkId, u32)> = Vec::new();
    let mut table_rc: HashMap<ChunkId, (u64, u32)> = HashMap::new();
    r.for_each_chunk(&mut |id, rc, len| {
        let actual = count_of(&id);
        if actual > 0 {
            physical += len as u64;
            chunk_count += 1;
        }
        if zero_refs.contains(&id) {
            table_rc.insert(id, (rc, len));
        }
        if rc != actual {
            let risk = if rc < actual {
                " (too low: the chunk could be removed while still in use)"
            } else {
                ""
            };
            items.push(
                item(
                    K::RefcountMismatch,
                    Error,
                    format!("refcount is {rc} but {actual} extents name the chunk{risk}"),
                )
                .chunk(&id)
                .fix(Fix::SetChunkRef(id, actual, len)),
            );
            if rc == 0 && actual > 0 {
                extra.push((id, len));
            }
        } else if rc == 0 {
            if zero_refs.contains(&id) {
                pending += 1;
            } else {
                items.push(
                    item(
                        K::ZeroRefUnlisted,
                        Warning,
                        "chunk has refcount 0 but is not listed for removal".into(),
                    )
                    .chunk(&id)
                    .fix(Fix::SetChunkRef(id, 0, len)),
                );
            }
        }
    })?;
    for (id, (count, len, consistent, first)) in &refs.unknown {
        physical += *len as u64;
        chunk_count += 1;
        extra.push((*id, *len));
        let mut it = item(
            K::UnknownChunk,
            Error,
            format!("{count} extents name a chunk the chunks table does not know"),
        )
        .chunk(id)
        .ino(*first);
        if *consistent {
            it = it.fix(Fix::SetChunkRef(*id, *count, *len));
        } else {
            it.finding
                .message
                .push_str(" (with differing lengths: not registered)");
        }
        items.push(it);
    }
    let mut zr: Vec<&ChunkId> = zero_refs.iter().collect();
    zr.sort_unstable();
    for id in zr {
        match table_rc.get(id) {
            None => items.push(
                item(
                    K::ZeroRefStale,
                    Warning,
                    "chunk listed for removal is not in the chunks table".into(),
                )
                .chunk(id)
                .fix(Fix::ForgetZeroRef(*id)),
            ),
            Some(&(rc, len)) if rc > 0 && count_of(id) == rc => items.push(
                item(
                    K::ZeroRefStale,
                    Warning,
                    format!("chunk with refcount {rc} is listed for removal"),
                )
                .chunk(id)
                .fix(Fix::SetChunkRef(*id, rc, len)),
            ),
            // Refcount mismatches were reported (and fixed) above.
            Some(_) => {}
        }
    }
    if pending > 0 {
        items.push(item(
            K::PendingRemoval,
            Info,
            format!("{pending} chunks without references await removal (run gc, or mount)"),
        ));
    }
    let mut logical: u64 = 0;
    let mut files: u64 = 0;
    for n in nodes.values().filter(|n| n.kind == Kind::File) {
        logical += n.size;
        files += 1;
    }
    for (key, want) in [
        (C_PHYSICAL, physical),
        (C_CHUNKS, chunk_count),
        (C_REFERENCED, refs.referenced),
        (C_LOGICAL, logical),
        (C_FILES, files),
    ] {
        let have = r.counter(key)?;
        if have != want {
            items.push(
                item(
                    K::CounterMismatch,
                    Warning,
                    format!("counter {key} is {have} but the metadata adds up to {want}"),
                )
                .fix(Fix::SetCounter(key, want)),
            );
        }
    }

    Ok(extra)
}

/// The `allocated` table against the extents (both lists are in inode order).
fn check_allocated<R: MetaRead>(
    r: &R,
    allocated: &[(Ino, u64)],
    items: &mut Vec<Item>,
) -> Result<()> {
    use FindingKind as K;
    use Severity::Warning;
    let mut table: Vec<(Ino, u64)> = Vec::new();
    r.for_each_allocated(&mut |ino, b| table.push((ino, b)))?;
    let (mut i, mut j) = (0, 0);
    while i < allocated.len() || j < table.len() {
        let a = allocated.get(i).copied();
        let t = table.get(j).copied();
        let (ino, want, have) = match (a, t) {
            (Some(a), Some(t)) if a.0 == t.0 => {
                i += 1;
                j += 1;
                (a.0, a.1, t.1)
            }
            (Some(a), Some(t)) if a.0 < t.0 => {
                i += 1;
                (a.0, a.1, 0)
            }
            (Some(a), None) => {
                i += 1;
                (a.0, a.1, 0)
            }
            (_, Some(t)) => {
                j += 1;
                (t.0, 0, t.1)
            }
            (None, None) => break,
        };
        if want != have {
            items.push(
                item(
                    K::AllocatedMismatch,
                    Warning,
                    format!("allocated bytes are recorded as {have} but the extents hold {want}"),
                )
                .ino(ino)
                .fix(Fix::SetAllocated(ino, want)),
            );
        }
    }

    Ok(())
}

/// What the extents of one inode add up to (they arrive in offset order).
struct FileAcc {
    ino: Ino,
    bytes: u64,
    /// Furthest end of the extents so far.
    end: u64,
    overlap: bool,
    len_mismatch: u32,
    first_bad: Option<ChunkId>,
}

impl FileAcc {
    fn new(ino: Ino) -> FileAcc {
        FileAcc {
            ino,
            bytes: 0,
            end: 0,
            overlap: false,
            len_mismatch: 0,
            first_bad: None,
        }
    }

    fn finish(
        self,
        nodes: &HashMap<Ino, Node>,
        items: &mut Vec<Item>,
        allocated: &mut Vec<(Ino, u64)>,
    ) {
        use FindingKind as K;
        use Severity::Error;
        allocated.push((self.ino, self.bytes));
        match nodes.get(&self.ino) {
            None => items.push(
                item(
                    K::ExtentsWithoutInode,
                    Error,
                    format!(
                        "{} bytes of file data belong to no inode; repair recreates the file in /lost+found",
                        self.bytes
                    ),
                )
                .ino(self.ino)
                .fix(Fix::RecreateInode(self.ino, self.end))
                .fix(Fix::Reattach(self.ino)),
            ),
            Some(n) if n.kind != Kind::File => items.push(
                item(
                    K::ExtentsOnNonFile,
                    Error,
                    format!("a {:?} has file data", n.kind),
                )
                .ino(self.ino),
            ),
            Some(n) => {
                if self.end > n.size {
                    items.push(
                        item(
                            K::ExtentBeyondSize,
                            Error,
                            format!(
                                "data reaches byte {} but the file size is {}: growing the file would expose stale bytes",
                                self.end, n.size
                            ),
                        )
                        .ino(self.ino),
                    );
                }
            }
        }
        if self.overlap {
            items.push(
                item(
                    K::ExtentOverlap,
                    Error,
                    "the file's chunk list has overlapping extents".into(),
                )
                .ino(self.ino),
            );
        }
        if let Some(id) = self.first_bad {
            items.push(
                item(
                    K::ExtentLengthMismatch,
                    Error,
                    format!(
                        "{} extents disagree with the chunks table about a chunk's length",
                        self.len_mismatch
                    ),
                )
                .ino(self.ino)
                .chunk(&id),
            );
        }
    }
}

/// Fills in `path` for findings about an inode, from the directories' names and one pass
/// over the dirents for non-directories.
fn resolve_paths(
    r: &RTx,
    dir_names: &HashMap<Ino, (Ino, Vec<u8>)>,
    items: &mut [Item],
) -> Result<()> {
    let wanted: HashSet<Ino> = items
        .iter()
        .filter_map(|i| i.finding.ino)
        .filter(|i| *i != ROOT_INO && !dir_names.contains_key(i))
        .collect();
    let mut names: HashMap<Ino, (Ino, Vec<u8>)> = HashMap::new();
    if !wanted.is_empty() {
        r.for_each_dirent(&mut |parent, name, ino, _| {
            if wanted.contains(&ino) {
                names.entry(ino).or_insert_with(|| (parent, name.to_vec()));
            }
        })?;
    }
    for i in items.iter_mut() {
        let Some(ino) = i.finding.ino else { continue };
        i.finding.path = path_of(ino, dir_names, &names);
    }
    Ok(())
}

fn path_of(
    ino: Ino,
    dir_names: &HashMap<Ino, (Ino, Vec<u8>)>,
    names: &HashMap<Ino, (Ino, Vec<u8>)>,
) -> Option<String> {
    if ino == ROOT_INO {
        return Some("/".into());
    }
    let &(mut parent, ref name) = dir_names.get(&ino).or_else(|| names.get(&ino))?;
    let mut parts = vec![show(name)];
    // Bounded: a cycle of directories must not hang the report.
    for _ in 0..4096 {
        if parent == ROOT_INO {
            parts.reverse();
            return Some(format!("/{}", parts.join("/")));
        }
        match dir_names.get(&parent) {
            Some((p, n)) => {
                parts.push(show(n));
                parent = *p;
            }
            None => break,
        }
    }
    parts.reverse();
    Some(format!("<detached directory {parent}>/{}", parts.join("/")))
}

/// Applies repair steps in [`Fix::order`].
fn apply<'a>(tx: &mut WTx, fixes: impl Iterator<Item = &'a Fix>) -> Result<()> {
    let mut fixes: Vec<&Fix> = fixes.collect();
    fixes.sort_by_key(|f| f.order());
    let mut lost_found: Option<Ino> = None;
    for f in fixes {
        match f {
            Fix::SetNextIno(n) => {
                let cur = tx.meta_u64("next_ino")?.unwrap_or(0);
                tx.set_meta("next_ino", &cur.max(*n).to_le_bytes())?;
            }
            Fix::SetChunkRef(id, rc, len) => tx.set_chunk_ref(id, *rc, *len)?,
            Fix::ForgetZeroRef(id) => tx.forget_chunk(id)?,
            Fix::SetCounter(key, v) => tx.set_counter(key, *v)?,
            Fix::SetAllocated(ino, b) => tx.set_allocated(*ino, *b)?,
            Fix::SetNlink(ino, n) => {
                if let Some(mut a) = tx.inode(*ino)? {
                    a.nlink = *n;
                    tx.put_inode(*ino, &a)?;
                }
            }
            Fix::SetParent(ino, p) => {
                if let Some(mut a) = tx.inode(*ino)? {
                    a.parent = *p;
                    tx.put_inode(*ino, &a)?;
                }
            }
            Fix::DelDirent(p, n) => tx.del_dirent(*p, n)?,
            Fix::PutDirent(p, n, ino, kind) => {
                if tx.lookup(*p, n)?.is_some_and(|(i, _)| i == *ino) {
                    tx.put_dirent(*p, n, *ino, *kind)?;
                }
            }
            Fix::RecreateInode(ino, size) => {
                if tx.inode(*ino)?.is_none() {
                    let root = tx.inode(ROOT_INO)?.ok_or(FsError::NotFound)?;
                    let mut a = Attr::new(Kind::File, 0o600, root.uid, root.gid);
                    a.size = *size;
                    a.nlink = 0;
                    tx.put_inode(*ino, &a)?;
                }
            }
            Fix::RemoveOrphan(ino) => tx.remove_orphan(*ino)?,
            Fix::Reattach(ino) => reattach(tx, &mut lost_found, *ino)?,
            Fix::DeleteOrphan(ino) => {
                if tx.inode(*ino)?.is_some() {
                    tx.delete_inode(*ino)?;
                } else {
                    tx.remove_orphan(*ino)?;
                }
            }
        }
    }
    Ok(())
}

/// Gives `ino` the name `#<ino>` in /lost+found (created if needed), as e2fsck does.
fn reattach(tx: &mut WTx, lost_found: &mut Option<Ino>, ino: Ino) -> Result<()> {
    let Some(mut attr) = tx.inode(ino)? else {
        return Ok(());
    };
    let lf = match *lost_found {
        Some(lf) => lf,
        None => {
            let lf = find_or_make_lost_found(tx)?;
            *lost_found = Some(lf);
            lf
        }
    };
    if ino == lf || ino == ROOT_INO {
        return Ok(());
    }
    let mut name = format!("#{ino}").into_bytes();
    let mut n = 1;
    while tx.lookup(lf, &name)?.is_some() {
        name = format!("#{ino}.{n}").into_bytes();
        n += 1;
    }
    tx.put_dirent(lf, &name, ino, attr.kind)?;
    if attr.kind == Kind::Dir {
        attr.parent = lf;
        if let Some(mut l) = tx.inode(lf)? {
            l.nlink += 1;
            tx.put_inode(lf, &l)?;
        }
    } else {
        attr.nlink = 1;
    }
    tx.put_inode(ino, &attr)?;
    tx.remove_orphan(ino)
}

fn find_or_make_lost_found(tx: &mut WTx) -> Result<Ino> {
    for n in 0..100u32 {
        let name = if n == 0 {
            LOST_FOUND.to_vec()
        } else {
            format!("lost+found.{n}").into_bytes()
        };
        match tx.lookup(ROOT_INO, &name)? {
            Some((ino, Kind::Dir)) if tx.inode(ino)?.is_some() => return Ok(ino),
            Some(_) => continue,
            None => {
                let mut root = tx.inode(ROOT_INO)?.ok_or(FsError::NotFound)?;
                let ino = tx.alloc_ino()?;
                let mut a = Attr::new(Kind::Dir, 0o700, root.uid, root.gid);
                a.nlink = 2;
                a.parent = ROOT_INO;
                tx.put_inode(ino, &a)?;
                tx.put_dirent(ROOT_INO, &name, ino, Kind::Dir)?;
                root.nlink += 1;
                tx.put_inode(ROOT_INO, &root)?;
                return Ok(ino);
            }
        }
    }
    Err(FsError::Corrupt(
        "no free name for lost+found in the root directory".into(),
    ))
}
