//! Command line: `init`, `mount`, `sync`, `stats`, `fsck`, `gc`, `set`, `completions`, `man`,
//! and the subcommand-less form `dedupfs STORE MOUNTPOINT -o OPTIONS` that `mount(8)` runs
//! through the fuse3 helper. Parses arguments, calls the library, renders reports (text or
//! `--json`) and maps failures to one clear line and a non-zero exit.

use crate::chunker::{ChunkParams, DEFAULT_AVG};
use crate::fs::{Fs, FsConfig};
use crate::fuse::DedupFuse;
use crate::maint::fsck::{FsckOptions, FsckReport, Progress, Severity, fsck};
use crate::maint::gc::{GcOptions, GcReport, gc_with};
use crate::maint::stats::{StatsReport, stats};
use crate::store::codec::Codec;
use crate::volume::{self, VolumeError};
use anyhow::{Context, Result, anyhow, bail};

mod control;
mod logging;
mod notify;
mod options;
mod remote;
use crate::mounts::{self, is_mountpoint};
use clap::{CommandFactory, Parser, Subcommand};
use options::MountOpts;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Text at the end of `--help` and of the man page.
const AFTER_HELP: &str = "\
Mounting like any filesystem: `mount -t fuse.dedupfs STORE MOUNTPOINT -o OPTIONS`, or an
/etc/fstab line `STORE MOUNTPOINT fuse.dedupfs OPTIONS 0 0`, runs `dedupfs STORE MOUNTPOINT -o
OPTIONS` through mount.fuse3 (fuse3), which looks for dedupfs in /usr/local/sbin,
/usr/local/bin, /usr/sbin, /usr/bin, /sbin or /bin. That form mounts in the background and
returns once the mount is live, silently; the daemon logs to STORE/daemon.log.

The kernel does not pass sync(2) or syncfs(2) on to FUSE filesystems: run `dedupfs sync
MOUNTPOINT` to make everything written so far durable (fsync(2) of a file works as usual).";

#[derive(Parser)]
#[command(
    name = "dedupfs",
    version,
    about = "A deduplicating FUSE filesystem with content-defined chunking",
    after_help = AFTER_HELP,
    override_usage = "dedupfs <COMMAND>\n       dedupfs STORE MOUNTPOINT [-o OPTIONS]",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Store to mount, in the form mount(8) runs through mount.fuse3 for
    /// `mount -t fuse.dedupfs` and fstab: like `dedupfs mount STORE MOUNTPOINT --background`,
    /// silent on success.
    #[arg(required = true, value_name = "STORE")]
    store: Option<PathBuf>,
    /// Where to mount it (an empty directory).
    #[arg(required = true, value_name = "MOUNTPOINT")]
    mountpoint: Option<PathBuf>,
    /// Mount options, comma separated (see `dedupfs mount --help`).
    #[arg(short = 'o', value_delimiter = ',', value_name = "OPTIONS")]
    options: Vec<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an empty store (a backing directory).
    Init {
        store: PathBuf,
        /// Average chunk size in bytes (a power of two); min = avg/4, max = avg*4. Fixed for
        /// the life of the store.
        #[arg(long, default_value_t = DEFAULT_AVG)]
        avg_chunk: u32,
        /// Comma-separated name patterns (e.g. '*.img,*.qcow2,*.raw') whose new files are cut
        /// into fixed blocks of the average chunk size instead of content-defined chunks. A
        /// file's policy can also be set with the xattr user.dedupfs.chunking=fixed|cdc.
        #[arg(long, value_delimiter = ',')]
        fixed_for: Vec<String>,
        /// Compression of new chunks: zstd[:LEVEL] (1-19), lz4 or none. A chunk is kept raw
        /// when compressing it saves less than 1/8. Changeable later with `dedupfs set`.
        #[arg(long, default_value_t = Codec::default())]
        compression: Codec,
        /// Size in MiB at which pack files are sealed (1 to 1024). Larger packs mean fewer
        /// files; smaller ones let compaction rewrite less at a time.
        #[arg(long, default_value_t = 32)]
        pack_mib: u64,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Write a new random volume key (32 bytes, mode 0600) to KEYFILE, for `init --encrypt`.
    /// Never overwrites a file.
    Keygen { keyfile: PathBuf },
    /// Make STORE (a new directory) a local cache of a remote volume that exists in a bucket:
    /// another machine's, or this one's after its disk was lost. It holds the volume as of
    /// its last publication (`dedupfs sync` or unmount on the writing machine).
    Attach {
        store: PathBuf,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Serve a store at a mountpoint until it is unmounted (umount, fusermount3 -u, Ctrl-C).
    Mount {
        store: PathBuf,
        mountpoint: PathBuf,
        /// Return once the mount is ready; the daemon logs to STORE/daemon.log.
        #[arg(long)]
        background: bool,
        /// Mount options, comma separated: ro, rw, allow_other, allow_root,
        /// default_permissions (always on), dev/nodev, suid/nosuid, exec/noexec,
        /// relatime (default; also atime)/strictatime/noatime, nodiratime/diratime (when reads
        /// update access times), sync/async, dirsync, cache_mib=N, meta_cache_mib=N (pages kept
        /// for each of the metadata database and the pack index; default 256), backup_interval=SECS (metadata
        /// backups while it changes; default 3600, 0: only at unmount), direct_reads (every read
        /// past the kernel's page cache). Ignored, as meaningful
        /// only to mount(8), fstab or systemd: defaults, auto, noauto, nofail, _netdev, user,
        /// users, owner, group, x-*, comment=*; lazytime/nolazytime. Anything else is refused.
        #[arg(short = 'o', value_delimiter = ',', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Read cache size in MiB (verified chunks kept mapped; the pages are the backing
        /// filesystem's page cache, which the kernel can reclaim). Default: an eighth of the
        /// RAM, between 64 and 1024.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
        cache_mib: Option<u32>,
    },
    /// Check the metadata, the pack index and the packs; with --repair, fix what can be fixed
    /// without guessing.
    Fsck {
        store: PathBuf,
        /// Fix refcounts, counters, link counts and orphans; reattach lost inodes under
        /// /lost+found (store must not be mounted).
        #[arg(long)]
        repair: bool,
        /// Read every record of every pack, check its checksum and re-hash its chunk against
        /// its id (reads all data; for a remote volume, also the packs only the bucket has).
        #[arg(long)]
        verify_data: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove chunks no metadata references and compact packs whose dead share is high
    /// (mounted or not).
    Gc {
        store: PathBuf,
        /// Report what would be removed and reclaimed without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Also move the loose chunk files of a store made before packs into packs.
        #[arg(long)]
        repack: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete the pack objects of a bucket that no volume under its prefix names any more
    /// (volumes there share packs: a chunk one uploaded is named by the others).
    ///
    /// Safe while volumes write: a run marks what no volume's newest generation names, and a
    /// later run deletes what is still unnamed once every volume has acknowledged the mark
    /// (each mounted volume does within a minute, by publishing; an unmounted one at its next
    /// mount and `dedupfs sync`). Until then the run says which volumes it waits for.
    GcBucket {
        /// s3://BUCKET/PREFIX (credentials and endpoint from AWS_* as for `init --remote`).
        url: String,
        /// The object store's URL (http(s)://HOST:PORT), instead of AWS_ENDPOINT_URL.
        #[arg(long)]
        endpoint: Option<String>,
        /// Report what would be marked and deleted without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// The key file of encrypted volumes under the prefix (once per key): their
        /// generations are sealed, and gc-bucket must read what they name.
        #[arg(long, value_name = "KEYFILE")]
        encrypt: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Delete a volume from a bucket: its generations, reader holds, identity and lease.
    ///
    /// Refused while it is mounted anywhere (for writing: its lease; read-only: a live reader
    /// hold). Its pack objects stay until `gc-bucket` finds that no other volume names them.
    /// A store of the deleted volume keeps its data locally but can no longer publish.
    DeleteVolume {
        /// s3://BUCKET/PREFIX (credentials and endpoint from AWS_* as for `init --remote`).
        url: String,
        /// The volume to delete (never inferred).
        #[arg(long)]
        volume: String,
        /// Also when its lease has expired without being released (a writer that crashed,
        /// or that only lost the bucket: what it has not published is then lost).
        #[arg(long)]
        force: bool,
        /// The object store's URL (http(s)://HOST:PORT), instead of AWS_ENDPOINT_URL.
        #[arg(long)]
        endpoint: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Change a store setting (mounted or not): `dedupfs set STORE compression zstd:3`.
    Set {
        store: PathBuf,
        #[command(subcommand)]
        setting: Setting,
    },
    /// Show logical and physical bytes, chunk count and dedup ratio (mounted or not).
    Stats {
        store: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Space of trees on a mounted volume: logical bytes, bytes on disk no other file shares
    /// (what deleting the tree frees) and bytes on disk shared with files outside it.
    Du {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Read-only point-in-time copies of a mounted volume, or of one directory tree in it,
    /// costing metadata only; each appears at MOUNTPOINT/.snapshots/NAME.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Copy the metadata database into STORE/backups now (mounted or not), keeping the newest
    /// three copies. A mounted volume is also backed up when its metadata changed, hourly
    /// (mount option backup_interval=SECS) and at unmount; `fsck --repair` restores the
    /// newest good copy when meta.redb is damaged.
    Backup {
        store: PathBuf,
        /// List the copies instead of taking one.
        #[arg(long)]
        list: bool,
        #[arg(long)]
        json: bool,
    },
    /// Make everything written to a mounted volume so far durable, and wait for it.
    ///
    /// The data and metadata reach the store's disk (sync(1) does not reach FUSE
    /// filesystems). Exits non-zero if that failed, e.g. because the store's disk is full.
    Sync {
        /// The mountpoint, or any path inside the mount.
        path: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or with --dir write one page per command into DIR.
    Man {
        /// Write dedupfs.1 and dedupfs-COMMAND.1 into this directory instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Where a remote volume lives (`init --remote`, `attach`).
#[derive(clap::Args, Clone)]
struct RemoteArgs {
    /// Keep the volume in an S3-compatible bucket: s3://BUCKET/PREFIX. STORE becomes its
    /// local cache and journal. Credentials and endpoint come from AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION and AWS_ENDPOINT_URL.
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    remote: Option<String>,
    /// The object store's URL (http(s)://HOST:PORT), instead of AWS_ENDPOINT_URL.
    #[arg(long, requires = "remote")]
    endpoint: Option<String>,
    /// The volume's name under the prefix (several volumes may share one). Default for init:
    /// "default"; for attach: the only volume there.
    #[arg(long, requires = "remote")]
    volume: Option<String>,
    /// Local disk the cache may use, in GiB (packs not uploaded yet count too: past this,
    /// writes get ENOSPC until uploads catch up).
    #[arg(long, default_value_t = 10.0, requires = "remote")]
    cache_disk_gib: f64,
    /// Encrypt the volume (init), or the key of an encrypted one (attach): a file of 32
    /// random bytes or 64 hex digits (`dedupfs keygen KEYFILE`). Packs and metadata in the
    /// bucket are sealed with XChaCha20-Poly1305 and chunks named by keyed blake3. remote.json
    /// records the file's path and the key's id, never the key: mount reads the file
    /// (DEDUPFS_KEY_FILE overrides the path). Losing the key loses the volume; volumes dedup
    /// against each other only when they share the key.
    #[arg(long, value_name = "KEYFILE", requires = "remote")]
    encrypt: Option<PathBuf>,
}

impl RemoteArgs {
    fn config(&self, default_volume: &str) -> Result<Option<crate::remote::config::VolumeConfig>> {
        let Some(url) = &self.remote else {
            return Ok(None);
        };
        crate::store::remote::parse_s3_url(url)?;
        if !(self.cache_disk_gib >= 0.125 && self.cache_disk_gib <= 1e6) {
            bail!(
                "--cache-disk-gib {}: use 0.125 or more",
                self.cache_disk_gib
            );
        }
        let mut c = crate::remote::config::VolumeConfig::new(
            url,
            self.endpoint.clone(),
            self.volume.as_deref().unwrap_or(default_volume),
            (self.cache_disk_gib * (1u64 << 30) as f64) as u64,
        );
        if let Some((path, key)) = self.key()? {
            c.key_file = Some(path);
            c.key_id = Some(key.id_hex());
        }
        Ok(Some(c))
    }

    /// The key file given with --encrypt (absolute) and its key.
    fn key(&self) -> Result<Option<(PathBuf, crate::crypto::Key)>> {
        let Some(p) = &self.encrypt else {
            return Ok(None);
        };
        let path = std::path::absolute(p).with_context(|| format!("{}", p.display()))?;
        let key = crate::crypto::Key::load(&path)?;
        Ok(Some((path, key)))
    }
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Take a snapshot: every write that returned before this command started is in it.
    Create {
        mountpoint: PathBuf,
        name: String,
        /// Snapshot only this directory (inside the mount) instead of the whole volume.
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// Each snapshot's creation time, logical size and exclusive bytes (what deleting it
    /// would free).
    List {
        mountpoint: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot and free what only it kept.
    Delete { mountpoint: PathBuf, name: String },
}

#[derive(Subcommand)]
enum Setting {
    /// Compression of chunks written from now on: zstd[:LEVEL], lz4 or none. Chunks already
    /// stored keep their codec (ids are hashes of the plaintext, so dedup is unaffected).
    Compression { codec: Codec },
}

/// For a first argument that names neither a command nor an existing store (one path
/// component: most likely a mistyped command), the error to give, with the nearest command.
fn mistyped_command(first: &std::ffi::OsStr) -> Option<String> {
    let p = Path::new(first);
    if p.exists() || p.components().count() != 1 {
        return None;
    }
    let word = first.to_string_lossy();
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for j in 0..b.len() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != b[j]))
                    .min(row[j] + 1)
                    .min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    };
    let cmd = <Cli as clap::CommandFactory>::command();
    // A command given wrong arguments: clap's own error says what is wrong with them.
    if cmd
        .get_subcommands()
        .any(|c| c.get_name() == word || c.get_all_aliases().any(|a| a == word))
    {
        return None;
    }
    let nearest = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .filter(|n| n != "help")
        .map(|n| (distance(&word, &n), n))
        .min()
        .filter(|(d, n)| *d <= 2.max(n.len() / 3))
        .map(|(_, n)| format!("; did you mean '{n}'?"))
        .unwrap_or_default();
    Some(format!(
        "'{word}' is neither a command nor an existing store{nearest} (see dedupfs --help)"
    ))
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            // `dedupfs moutn STORE MNT` reads as the mount form with an extra argument, and
            // clap's complaint about it names the wrong word.
            let first = std::env::args_os().nth(1);
            let usage = !matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            );
            if usage
                && let Some(msg) = first.as_deref().and_then(mistyped_command)
                && !first
                    .as_deref()
                    .is_some_and(|f| f.to_string_lossy().starts_with('-'))
            {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "dedupfs: error: {msg}");
                return ExitCode::from(2);
            }
            e.exit()
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DEDUPFS_LOG")
        // fuser warns "Failed to umount filesystem" at every unmount the kernel already did
        // (umount, fusermount3 -u): noise in every daemon log. Commands that wait for the
        // object store report its failure in one line; object_store's retry lines are noise
        // there.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "info,fuser::session=error,object_store::client::retry=warn",
            )
        });
    // A log line that cannot be written (the log's disk is full, often the store's own) is
    // dropped: the default reports it with eprintln!, which panics when stderr fails too, and
    // a panic on a FUSE or write-back thread takes the mount down or hangs a caller.
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false);
    tracing_subscriber::registry()
        .with(filter)
        .with(logging::QuietLateReplies)
        .with(lines)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "dedupfs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let Some(cmd) = cli.cmd else {
        // clap requires both paths when there is no subcommand.
        let (Some(store), Some(mountpoint)) = (cli.store, cli.mountpoint) else {
            bail!("a command, or STORE MOUNTPOINT, is needed (see dedupfs --help)");
        };
        mount_helper(&store, &mountpoint, &cli.options)?;
        return Ok(ExitCode::SUCCESS);
    };
    match cmd {
        Cmd::Init {
            store,
            avg_chunk,
            fixed_for,
            compression,
            pack_mib,
            remote,
        } => {
            let params = ChunkParams::from_avg(avg_chunk).map_err(|e| anyhow!(e))?;
            let key = remote.key()?.map(|(_, k)| k);
            let remote = remote.config("default")?;
            if let Some(r) = &remote {
                crate::remote::attach::check_volume_name(&r.volume)?;
                // Before anything is made locally: the bucket answers and takes our key.
                crate::store::remote::RemoteStore::open(&r.client_config()?)?;
            }
            let existed = store.exists();
            if !(1..=1024).contains(&pack_mib) {
                bail!("--pack-mib {pack_mib}: use 1 to 1024");
            }
            let patterns: Vec<String> = fixed_for
                .into_iter()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect();
            volume::init_keyed(
                &store,
                params,
                &patterns,
                compression,
                pack_mib.saturating_mul(1 << 20),
                key.clone(),
            )?;
            if let Some(r) = &remote {
                // Not a store until the volume exists in the bucket and remote.json says so:
                // a crash in between must not leave a store that opens as a local volume.
                let made = volume::unmark(&store)
                    .map_err(crate::error::FsError::from)
                    .and_then(|()| crate::remote::attach::init_remote(&store, r, key.as_ref()))
                    .and_then(|_| {
                        volume::write_marker(&store).map_err(|e| {
                            crate::error::FsError::Io(std::io::Error::other(e.to_string()))
                        })
                    });
                if let Err(e) = made {
                    undo_init(&store, existed);
                    return Err(e)
                        .context("the remote volume was not created (nothing was kept locally)");
                }
                println!(
                    "created remote volume {} in {}; {} is its local cache (up to {})",
                    r.volume,
                    r.url,
                    store.display(),
                    human(r.cache_bytes)
                );
            }
            println!(
                "initialised dedupfs store {} (chunks: min {} / avg {} / max {} bytes; compression {compression})",
                store.display(),
                params.min,
                params.avg,
                params.max
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Keygen { keyfile } => {
            let key = crate::crypto::keygen(&keyfile)?;
            println!(
                "wrote a new key to {} (key id {}): keep a copy somewhere safe, without it an \
                 encrypted volume cannot be read",
                keyfile.display(),
                key.id_hex()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Attach { store, remote } => {
            let key = remote.key()?.map(|(_, k)| k);
            let Some(config) = remote.config("")? else {
                bail!("attach needs --remote s3://BUCKET/PREFIX");
            };
            let existed = store.exists();
            let r = match crate::remote::attach::attach(&store, config, key.as_ref()) {
                Ok(r) => r,
                Err(e) => {
                    if !matches!(e, crate::error::FsError::Refused(_)) {
                        undo_init(&store, existed);
                    }
                    return Err(e.into());
                }
            };
            for s in &r.skipped {
                eprintln!("skipped a damaged generation: {s}");
            }
            println!(
                "attached volume {} of {} at {}: generation {} published {}, {} packs, {} snapshots",
                r.volume,
                r.url,
                store.display(),
                r.generation,
                crate::meta::backup::show_time(r.published_unix),
                r.packs,
                r.snapshots
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Mount {
            store,
            mountpoint,
            background,
            options,
            cache_mib,
        } => {
            let opts = MountOpts::parse(&options)?;
            let cache_mib = cache_mib
                .map(|m| m as usize)
                .or(opts.cache_mib)
                .unwrap_or_else(default_cache_mib);
            check_mountpoint(&mountpoint)?;
            if background {
                spawn_background(&store, &mountpoint, &options, cache_mib, false)?;
            } else {
                serve(&store, &mountpoint, &opts, cache_mib)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Fsck {
            store,
            repair,
            verify_data,
            json,
        } => {
            let opts = FsckOptions {
                repair,
                verify_data,
            };
            let mut restored = None;
            let mut opened = match volume::open(&store) {
                Err(VolumeError::MetaDamaged { err, .. }) if repair => {
                    restored = Some(restore_meta(&store, &err.to_string())?);
                    volume::open(&store)
                }
                Err(VolumeError::IndexDamaged { err, .. }) if repair => {
                    let aside = volume::set_aside_index(&store)?;
                    eprintln!(
                        "the pack index was damaged ({err}); moved it to {} and rebuilt it from the packs",
                        aside.display()
                    );
                    volume::open(&store)
                }
                other => other,
            };
            if repair && let Ok(vol) = &opened {
                // Damage redb finds only by reading every page (a checksum mismatch deep in
                // a table): the same remedy as a header it cannot open.
                match vol.meta.check_integrity() {
                    Ok(true) => {}
                    Ok(false) => eprintln!("redb found and repaired damage in meta.redb"),
                    Err(e) => {
                        drop(opened);
                        restored = Some(restore_meta(&store, &e.to_string())?);
                        opened = volume::open(&store);
                    }
                }
            }
            let report = match opened {
                Ok(vol) => {
                    let mut report = run_fsck(&vol, opts, !json)?;
                    let index_damage = report.findings.iter().any(|f| {
                        f.kind == crate::maint::fsck::FindingKind::PackDamaged
                            && f.severity == Severity::Error
                    });
                    if repair && index_damage {
                        // Live chunks whose records are damaged or missing where the index
                        // points: the index is rebuilt from what the packs really hold (a chunk
                        // with an intact copy anywhere is found again), then checked again.
                        let rb = vol.chunks.rebuild_index()?;
                        eprintln!(
                            "rebuilt the pack index from {} packs ({} records, {} damaged places)",
                            rb.packs,
                            rb.records,
                            rb.damaged.len()
                        );
                        report = run_fsck(&vol, opts, !json)?;
                    }
                    report
                }
                Err(VolumeError::Locked(_)) if repair => {
                    bail!(
                        "store {} is mounted: unmount it before fsck --repair",
                        store.display()
                    )
                }
                Err(VolumeError::Locked(_)) => {
                    control::request(&store, &control::Request::Fsck { verify_data })?
                        .into_fsck()?
                }
                Err(e) => return Err(e.into()),
            };
            let mut report = report;
            report.restored_from_backup = restored;
            crate::maint::fsck::check_backups(&store, &mut report);
            crate::maint::fsck::check_generations(&store, verify_data, &mut report);
            if json {
                out(&format!("{}\n", serde_json::to_string_pretty(&report)?));
            } else {
                out(&render_fsck(&report));
            }
            Ok(if report.has_errors() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Gc {
            store,
            dry_run,
            repack,
            json,
        } => {
            let opts = GcOptions {
                dry_run,
                repack,
                ..GcOptions::default()
            };
            let report = match volume::open(&store) {
                Ok(vol) => {
                    let holders = crate::meta::snapshot::Holders::open(&vol.dir)?;
                    gc_with(&vol.meta, vol.chunks.as_ref(), &holders, opts)?
                }
                Err(VolumeError::Locked(_)) => {
                    control::request(&store, &control::Request::Gc { dry_run, repack })?
                        .into_gc()?
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                out(&format!("{}\n", serde_json::to_string_pretty(&report)?));
            } else {
                out(&render_gc(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::GcBucket {
            url,
            endpoint,
            dry_run,
            encrypt,
            json,
        } => {
            let keys = encrypt
                .iter()
                .map(|p| crate::crypto::Key::load(p))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let mut cfg = crate::store::remote::RemoteConfig::from_env(&url)?;
            if let Some(e) = endpoint {
                cfg.endpoint = Some(e);
            }
            let client = crate::store::remote::RemoteStore::open(&cfg)?;
            let r = crate::remote::gc::gc_bucket(std::sync::Arc::new(client), &keys, dry_run)?;
            if json {
                out(&format!("{}\n", serde_json::to_string_pretty(&r)?));
            } else {
                out(&render_gc_bucket(&r));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::DeleteVolume {
            url,
            volume,
            force,
            endpoint,
            json,
        } => {
            let mut cfg = crate::store::remote::RemoteConfig::from_env(&url)?;
            if let Some(e) = endpoint {
                cfg.endpoint = Some(e);
            }
            let client = crate::store::remote::RemoteStore::open(&cfg)?;
            let r =
                crate::remote::delete::delete_volume(std::sync::Arc::new(client), &volume, force)?;
            if json {
                out(&format!("{}\n", serde_json::to_string_pretty(&r)?));
            } else {
                out(&format!(
                    "deleted volume {} ({} generations, {} reader holds); {} of its pack objects \
                     ({}) stay until `dedupfs gc-bucket {url}` finds no other volume naming them\n",
                    r.volume,
                    r.generations_deleted,
                    r.holds_deleted,
                    r.pack_objects_left,
                    human(r.pack_bytes_left)
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Set {
            store,
            setting: Setting::Compression { codec },
        } => {
            match volume::open(&store) {
                Ok(vol) => {
                    vol.chunks.set_codec(codec);
                    crate::store::ChunkStore::sync(vol.chunks.as_ref())?;
                }
                Err(VolumeError::Locked(_)) => {
                    control::request(
                        &store,
                        &control::Request::SetCompression {
                            codec: codec.to_string(),
                        },
                    )?;
                }
                Err(e) => return Err(e.into()),
            }
            println!("compression of new chunks: {codec}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Backup { store, list, json } => {
            if list {
                // Only to check that STORE is a store: a mounted one is fine.
                match volume::lock(&store) {
                    Ok(_) | Err(VolumeError::Locked(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                let copies = crate::meta::backup::list(&store)?;
                if json {
                    out(&format!("{}\n", serde_json::to_string_pretty(&copies)?));
                } else {
                    let mut s = String::new();
                    for b in &copies {
                        s += &format!(
                            "{:>8}  {}  {:>10}  {}\n",
                            b.seq,
                            crate::meta::backup::show_time(b.taken_unix),
                            human(b.bytes),
                            b.path.display()
                        );
                    }
                    if copies.is_empty() {
                        s += "no metadata backups\n";
                    }
                    out(&s);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let report = match volume::open(&store) {
                Ok(vol) => {
                    crate::maint::backup::backup_offline(&vol.dir, &vol.meta, vol.chunks.as_ref())?
                }
                Err(VolumeError::Locked(_)) => {
                    control::request(&store, &control::Request::Backup)?.into_backup()?
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                out(&format!("{}\n", serde_json::to_string_pretty(&report)?));
            } else {
                out(&format!(
                    "metadata backup {} ({}, {} rows, {} ms){}\n",
                    report.backup.path.display(),
                    human(report.backup.bytes),
                    report.rows,
                    report.elapsed_ms,
                    if report.rotated_out.is_empty() {
                        String::new()
                    } else {
                        format!("; removed {} older", report.rotated_out.len())
                    }
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Du { paths, json } => {
            let mut reports = Vec::new();
            for p in &paths {
                let store = PathBuf::from(mounts::dedupfs_mount_of(p)?.source);
                let meta = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
                let req = control::Request::Du {
                    items: vec![(
                        std::os::unix::fs::MetadataExt::ino(&meta),
                        p.display().to_string(),
                    )],
                };
                reports.extend(control::request(&store, &req)?.into_du()?);
            }
            if json {
                out(&format!("{}\n", serde_json::to_string_pretty(&reports)?));
            } else {
                let mut s = format!(
                    "{:>12}  {:>12}  {:>12}  path\n",
                    "logical", "exclusive", "shared"
                );
                for r in &reports {
                    s += &format!(
                        "{:>12}  {:>12}  {:>12}  {}\n",
                        human(r.logical_bytes),
                        human(r.exclusive_bytes),
                        human(r.shared_bytes),
                        r.path
                    );
                }
                out(&s);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Snapshot(cmd) => snapshot_cmd(cmd),
        Cmd::Stats { store, json } => {
            let report = stats_of(&store)?;
            if json {
                out(&format!("{}\n", serde_json::to_string_pretty(&report)?));
            } else {
                out(&render_stats(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sync { path } => {
            let mount = mounts::dedupfs_mount_of(&path)?;
            // The daemon mounts with its canonical store directory as the source.
            control::request(Path::new(&mount.source), &control::Request::Sync)
                .with_context(|| format!("sync of {} failed", mount.mount_point.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "dedupfs", &mut buf);
            out(&String::from_utf8_lossy(&buf));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man { dir } => {
            let cmd = Cli::command();
            match dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    clap_mangen::generate_to(cmd, &dir)
                        .with_context(|| format!("cannot write man pages to {}", dir.display()))?;
                }
                None => {
                    let mut buf = Vec::new();
                    clap_mangen::Man::new(cmd).render(&mut buf)?;
                    out(&String::from_utf8_lossy(&buf));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Removes what a failed `init --remote` or `attach` made in `store` (which was missing or
/// empty before).
fn undo_init(store: &Path, existed: bool) {
    if existed {
        if let Ok(entries) = std::fs::read_dir(store) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    } else {
        let _ = std::fs::remove_dir_all(store);
    }
}

/// `dedupfs STORE MOUNTPOINT -o OPTIONS`, as mount.fuse3 runs it for `mount -t fuse.dedupfs`
/// and fstab: the options are checked, then the daemon starts in the background and this
/// returns once the mount is live (mount(8) waits for it), printing nothing on success.
fn mount_helper(store: &Path, mountpoint: &Path, options: &[String]) -> Result<()> {
    let opts = MountOpts::parse(options)?;
    if mountpoint.starts_with("/dev/fd") {
        // mount.fuse3's drop_privileges mounts itself and passes the /dev/fuse descriptor.
        bail!(
            "mountpoint {}: a pre-mounted /dev/fuse descriptor (mount.fuse3 -o drop_privileges) is not supported",
            mountpoint.display()
        );
    }
    if let Some(msg) = mistyped_command(store.as_os_str()) {
        bail!("{msg}");
    }
    if opts.remount {
        return remount(mountpoint, &opts);
    }
    check_mountpoint(mountpoint)?;
    let cache_mib = opts.cache_mib.unwrap_or_else(default_cache_mib);
    spawn_background(store, mountpoint, options, cache_mib, true)
}

/// `mount -o remount,OPTIONS MOUNTPOINT` of a live dedupfs mount: the flags the kernel
/// enforces change (`ro`/`rw`, `nosuid`, `nodev`, `noexec`: those given change, the others
/// stay), the daemon goes on as it is. Options of the daemon itself (access times,
/// `cache_mib=`, `allow_other`, ...) come again from fstab with every remount and are left as
/// they were at the mount. `rw` is refused when the daemon itself serves the volume read-only (mounted
/// `ro`, or fenced): unmount and mount it read-write instead.
fn remount(mountpoint: &Path, opts: &MountOpts) -> Result<()> {
    use rustix::mount::MountFlags as F;
    let canon = mountpoint
        .canonicalize()
        .with_context(|| format!("cannot access {}", mountpoint.display()))?;
    let m = mounts::dedupfs_mount_of(&canon)?;
    if m.mount_point != canon {
        bail!(
            "{} is not a dedupfs mount point (it is inside the one at {})",
            mountpoint.display(),
            m.mount_point.display()
        );
    }
    if !opts.read_only {
        let writable = control::request(Path::new(&m.source), &control::Request::Writable)
            .and_then(|a| a.into_bool());
        if let Ok(false) = writable {
            bail!(
                "cannot remount {} read-write: its daemon serves the volume read-only (mounted ro, or fenced: see its log); unmount it and mount it read-write",
                mountpoint.display()
            );
        }
    }
    // The flags the mount has now, then those the options change.
    let has = |o: &str| m.options.split(',').any(|x| x == o);
    let mut flags = F::empty();
    for (name, flag) in [
        ("nosuid", F::NOSUID),
        ("nodev", F::NODEV),
        ("noexec", F::NOEXEC),
        ("noatime", F::NOATIME),
        ("nodiratime", F::NODIRATIME),
        ("relatime", F::RELATIME),
    ] {
        if has(name) {
            flags |= flag;
        }
    }
    let mut set = |on: Option<bool>, flag: F| match on {
        Some(true) => flags.remove(flag),
        Some(false) => flags.insert(flag),
        None => {}
    };
    set(opts.suid, F::NOSUID);
    set(opts.dev, F::NODEV);
    set(opts.exec, F::NOEXEC);
    if !has("noatime") && !has("relatime") {
        // Neither shows for strictatime, which the kernel would otherwise turn into relatime.
        flags |= F::STRICTATIME;
    }
    if opts.read_only {
        flags.insert(F::RDONLY);
    }
    rustix::mount::mount_remount(&canon, flags, "")
        .with_context(|| format!("cannot remount {}", mountpoint.display()))
}

fn stats_of(store: &Path) -> Result<StatsReport> {
    match volume::lock(store) {
        Ok(lock) => {
            drop(lock);
            let vol = match volume::open(store) {
                Err(VolumeError::Locked(_)) => return stats_of(store),
                other => other?,
            };
            let mut r = stats(&vol.meta, vol.chunks.as_ref())?;
            if let Some(remote) = &vol.remote {
                let rv = crate::remote::sync::RemoteVolume::new(
                    &vol.dir,
                    vol.chunks.clone(),
                    remote.clone(),
                )?;
                r.remote = Some(rv.status()?);
            }
            Ok(r)
        }
        Err(VolumeError::Locked(_)) => {
            let u = volume::read_published_stats(store).with_context(|| {
                format!(
                    "store {} is mounted and has not published statistics yet",
                    store.display()
                )
            })?;
            let mut r = StatsReport::from_usage(u, true);
            // An older daemon, or one without a control socket, has no counts: not an error.
            let wait = Some(Duration::from_secs(2));
            r.requests = control::request_within(store, &control::Request::Requests, wait)
                .and_then(|a| a.into_requests())
                .ok();
            r.remote = std::fs::read(store.join("remote").join("status.json"))
                .ok()
                .and_then(|raw| serde_json::from_slice(&raw).ok());
            Ok(r)
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes a report to stdout. A closed pipe (`dedupfs stats | head`) is not an error worth
/// a panic: the reader has what it wanted.
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// `fsck --repair` of a store whose meta.redb cannot be read: puts the newest good backup in
/// its place (the damaged file is kept) and has the pack index rebuilt from the packs.
fn restore_meta(store: &Path, why: &str) -> Result<crate::meta::backup::Backup> {
    let _lock = volume::lock(store)?;
    let (r, index_aside) = crate::maint::backup::restore(store).with_context(|| {
        format!("meta.redb cannot be read ({why}) and cannot be restored from a backup")
    })?;
    eprintln!("meta.redb cannot be read: {why}");
    for (path, e) in &r.skipped {
        eprintln!("backup {} cannot be used: {e}", path.display());
    }
    eprintln!(
        "restored the metadata from backup {} taken {}: every change made after that time is lost",
        r.restored.seq,
        crate::meta::backup::show_time(r.restored.taken_unix)
    );
    if let Some(p) = &r.damaged_kept_as {
        eprintln!("the damaged database is kept as {}", p.display());
    }
    if let Some(p) = index_aside {
        eprintln!(
            "the pack index was moved to {} and is rebuilt from the packs",
            p.display()
        );
    }
    Ok(r.restored)
}

fn human(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", U[i])
    }
}

pub fn render_stats(r: &StatsReport) -> String {
    let mut s = String::new();
    s += &format!("files:            {}\n", r.files);
    s += &format!(
        "logical bytes:    {} ({})\n",
        r.logical_bytes,
        human(r.logical_bytes)
    );
    s += &format!(
        "referenced bytes: {} ({})\n",
        r.referenced_bytes,
        human(r.referenced_bytes)
    );
    s += &format!(
        "physical bytes:   {} ({})\n",
        r.physical_bytes,
        human(r.physical_bytes)
    );
    s += &format!(
        "stored bytes:     {} ({}, after compression)\n",
        r.stored_bytes,
        human(r.stored_bytes)
    );
    s += &format!(
        "on disk:          {} ({} in {} packs, {} dead)\n",
        r.disk_bytes,
        human(r.disk_bytes),
        r.packs,
        human(r.dead_bytes)
    );
    s += &format!("chunks:           {}\n", r.chunk_count);
    s += &format!("dedup ratio:      {:.2}\n", r.dedup_ratio);
    s += &format!("compression:      {:.2}\n", r.compression_ratio);
    if let Some(q) = &r.requests {
        let ops: Vec<String> = q.by_op.iter().map(|(k, v)| format!("{k} {v}")).collect();
        s += &format!("requests served:  {} ({})\n", q.total, ops.join(", "));
    }
    if let Some(rs) = &r.remote {
        s += &format!("remote volume:    {} in {}\n", rs.volume, rs.url);
        s += &format!(
            "not uploaded:     {} ({} packs); {} packs in the bucket, {} of them also local; {} of ranges cached\n",
            human(rs.not_uploaded_bytes),
            rs.not_uploaded_packs,
            rs.uploaded_packs,
            rs.local_packs.saturating_sub(rs.not_uploaded_packs),
            human(rs.cached_range_bytes)
        );
        if rs.shared_packs > 0 {
            s += &format!(
                "shared:           {} packs of other volumes under the prefix named\n",
                rs.shared_packs
            );
        }
        s += &format!(
            "published:        generation {} at {}\n",
            rs.generation,
            crate::meta::backup::show_time(rs.published_unix)
        );
        if let Some(f) = &rs.fenced {
            s += &format!("READ-ONLY:        {f}\n");
        }
        if let Some(e) = &rs.last_error {
            s += &format!("last error:       {e}\n");
        }
    }
    if r.from_mounted_daemon {
        s += "(store is mounted: figures from the daemon's last sync, at most a few seconds old)\n";
    }
    s
}

/// The dedupfs mount MOUNTPOINT is the root of (its store directory and mount point).
fn volume_root(mountpoint: &Path) -> Result<mounts::MountEntry> {
    let m = mounts::dedupfs_mount_of(mountpoint)?;
    let given = mountpoint
        .canonicalize()
        .with_context(|| format!("cannot access {}", mountpoint.display()))?;
    if given != m.mount_point {
        bail!(
            "{} is not the mount point of a dedupfs volume (it is inside the one mounted at {})",
            mountpoint.display(),
            m.mount_point.display()
        );
    }
    Ok(m)
}

fn snapshot_cmd(cmd: SnapshotCmd) -> Result<ExitCode> {
    match cmd {
        SnapshotCmd::Create {
            mountpoint,
            name,
            path,
        } => {
            let m = volume_root(&mountpoint)?;
            let (ino, rel) = match &path {
                None => (crate::meta::ROOT_INO, String::new()),
                Some(p) => {
                    let full = p
                        .canonicalize()
                        .with_context(|| format!("cannot access {}", p.display()))?;
                    let rel = full.strip_prefix(&m.mount_point).map_err(|_| {
                        anyhow!(
                            "{} is outside the volume mounted at {}",
                            p.display(),
                            m.mount_point.display()
                        )
                    })?;
                    let meta = std::fs::metadata(&full)?;
                    if mounts::dedupfs_mount_of(&full)?.mount_point != m.mount_point {
                        bail!("{} is on another mount", p.display());
                    }
                    if !meta.is_dir() {
                        bail!("{} is not a directory", p.display());
                    }
                    let ino = std::os::unix::fs::MetadataExt::ino(&meta);
                    let ino = if rel.as_os_str().is_empty() {
                        crate::meta::ROOT_INO
                    } else {
                        ino
                    };
                    (ino, rel.display().to_string())
                }
            };
            let req = control::Request::SnapshotCreate {
                name: name.clone(),
                ino,
                path: rel,
            };
            let r = control::request(Path::new(&m.source), &req)
                .with_context(|| format!("snapshot {name:?} not created"))?
                .into_snapshot()?;
            out(&format!(
                "snapshot {} of {} ({} files, {}) at {}\n",
                r.name,
                if r.path.is_empty() {
                    "the volume".to_string()
                } else {
                    format!("/{}", r.path)
                },
                r.files,
                human(r.logical_bytes),
                m.mount_point.join(".snapshots").join(&r.name).display()
            ));
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCmd::List { mountpoint, json } => {
            let m = volume_root(&mountpoint)?;
            let list = control::request(Path::new(&m.source), &control::Request::SnapshotList)?
                .into_snapshots()?;
            if json {
                out(&format!("{}\n", serde_json::to_string_pretty(&list)?));
            } else {
                let mut s = format!(
                    "{:<20}  {:<23}  {:>12}  {:>12}  path\n",
                    "name", "created", "logical", "exclusive"
                );
                for r in &list {
                    s += &format!(
                        "{:<20}  {:<23}  {:>12}  {:>12}  /{}\n",
                        r.name,
                        crate::meta::backup::show_time(r.created.max(0) as u64),
                        human(r.logical_bytes),
                        human(r.exclusive_bytes),
                        r.path
                    );
                }
                out(&s);
            }
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCmd::Delete { mountpoint, name } => {
            let m = volume_root(&mountpoint)?;
            let req = control::Request::SnapshotDelete { name: name.clone() };
            let r = control::request(Path::new(&m.source), &req)
                .with_context(|| format!("snapshot {name:?} not deleted"))?
                .into_snapshot()?;
            out(&format!(
                "deleted snapshot {} (freed about {})\n",
                r.name,
                human(r.exclusive_bytes)
            ));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_fsck(vol: &volume::Volume, opts: FsckOptions, show_progress: bool) -> Result<FsckReport> {
    let holders = crate::meta::snapshot::Holders::open(&vol.dir)?;
    let bar = if show_progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let report = fsck(
        &vol.meta,
        vol.chunks.as_ref(),
        &holders,
        opts,
        &mut |p: Progress| {
            if let Some(b) = &bar {
                b.set_message(format!("{:?}", p.phase));
                b.set_length(p.total.unwrap_or(p.done));
                b.set_position(p.done);
            }
        },
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(report)
}

pub fn render_fsck(r: &FsckReport) -> String {
    let mut s = String::new();
    if let Some(b) = &r.restored_from_backup {
        s += &format!(
            "RESTORED: meta.redb was unreadable; the metadata is now backup {} taken {}. Changes made after it are lost; files whose data was freed since are listed as errors below.\n",
            b.seq,
            crate::meta::backup::show_time(b.taken_unix)
        );
    }
    for f in &r.findings {
        let sev = match f.severity {
            Severity::Error => "ERROR",
            Severity::Warning => "warning",
            Severity::Info => "info",
        };
        s += &format!("{sev}: {:?}: {}", f.kind, f.message);
        if let Some(p) = &f.path {
            s += &format!(" (file {p})");
        }
        if f.repaired {
            s += " [repaired]";
        }
        s.push('\n');
    }
    s += &format!(
        "checked {} inodes, {} chunks, verified {} bytes; {} errors, {} warnings remain; {} repaired\n",
        r.inodes_checked,
        r.chunks_checked,
        r.bytes_verified,
        r.remaining(Severity::Error),
        r.remaining(Severity::Warning),
        r.repaired
    );
    match r.backups.first() {
        Some(b) => {
            s += &format!(
                "metadata backups: {}, newest taken {}\n",
                r.backups.len(),
                crate::meta::backup::show_time(b.taken_unix)
            )
        }
        None => s += "metadata backups: none\n",
    }
    s += if r.has_errors() {
        "store has ERRORS\n"
    } else {
        "store is consistent\n"
    };
    s
}

fn render_gc_bucket(r: &crate::remote::gc::BucketGcReport) -> String {
    let would = |done: &'static str, not: &'static str| if r.dry_run { not } else { done };
    let mut s = format!(
        "{} volumes, {} pack objects ({})\n",
        r.volumes.len(),
        r.pack_objects,
        human(r.pack_bytes)
    );
    for h in &r.readers {
        s += &if h.live {
            format!(
                "volume {}: a read-only mount ({}) holds generation {} ({} packs kept for it)\n",
                h.volume, h.holder, h.generation, h.packs_named
            )
        } else {
            format!(
                "volume {}: the hold of a read-only mount ({}) on generation {} expired (last \
                 renewed {} s ago): it keeps nothing (delete {} if that mount is gone)\n",
                h.volume, h.holder, h.generation, h.age_secs, h.key
            )
        };
    }
    if let Some(e) = r.swept {
        s += &format!(
            "mark {e}: {} {} packs ({}); {} packs were named again and stay\n",
            would("deleted", "would delete"),
            r.deleted_packs,
            human(r.deleted_bytes),
            r.kept_named
        );
    }
    if let Some(e) = r.waiting {
        s += &format!(
            "mark {e} waits for these volumes to publish (a mounted volume does within a \
             minute; otherwise mount it and run `dedupfs sync`): {}\n",
            r.waiting_for.join(", ")
        );
    }
    if let Some(e) = r.marked {
        s += &format!(
            "marked {} packs ({}) no volume names as mark {e}: a later run deletes those still \
             unnamed once every volume has acknowledged it\n",
            r.marked_packs,
            human(r.marked_bytes)
        );
    } else if r.dry_run && r.waiting.is_none() && r.marked_packs > 0 {
        s += &format!(
            "would mark {} packs ({}) no volume names\n",
            r.marked_packs,
            human(r.marked_bytes)
        );
    } else if r.waiting.is_none() && r.marked_packs == 0 {
        s += "every pack object is named by a volume: nothing to mark\n";
    }
    s
}

pub fn render_gc(r: &GcReport) -> String {
    let mut s = format!(
        "{} {} chunks ({}); kept {} live; forgot {} refcount-0 entries; scanned {} chunks \
         (index: {} bytes per live chunk)\n",
        if r.dry_run { "would remove" } else { "removed" },
        r.removed_chunks,
        human(r.removed_bytes),
        r.kept_chunks,
        r.forgotten_chunks,
        r.scanned_files,
        r.bytes_per_chunk_index
    );
    if r.unknown_packs_removed > 0 {
        s += &format!(
            "{} {} pack files the index does not know ({})\n",
            if r.dry_run { "would remove" } else { "removed" },
            r.unknown_packs_removed,
            human(r.unknown_pack_bytes)
        );
    }
    for k in &r.unknown_packs_kept {
        s += &format!("{k}\n");
    }
    if let Some(p) = &r.repacked {
        s += &format!(
            "moved {} loose chunk files ({}) into packs; {} damaged ones left in place\n",
            p.chunks,
            human(p.bytes),
            p.damaged
        );
    }
    if let Some(c) = &r.compaction {
        s += &format!(
            "compaction: {} {} of {} sealed packs, moving {} live chunks ({}); {} {} on disk\n",
            if r.dry_run {
                "would rewrite"
            } else {
                "rewrote"
            },
            c.packs_compacted,
            c.packs_examined,
            c.chunks_moved,
            human(c.bytes_copied),
            if r.dry_run {
                "would reclaim"
            } else {
                "reclaimed"
            },
            human(c.bytes_reclaimed)
        );
        for why in &c.skipped {
            s += &format!("compaction skipped {why}\n");
        }
    }
    s
}

fn check_mountpoint(mp: &Path) -> Result<()> {
    let meta = std::fs::metadata(mp)
        .with_context(|| format!("mountpoint {} does not exist", mp.display()))?;
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", mp.display());
    }
    if is_mountpoint(mp) {
        bail!(
            "mountpoint {} is busy: something is already mounted there",
            mp.display()
        );
    }
    Ok(())
}

/// The read cache's default size: an eighth of the RAM, between 64 MiB and 1 GiB.
fn default_cache_mib() -> usize {
    let ram_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(2048);
    (ram_mib / 8).clamp(64, 1024)
}

/// Starts the daemon as a child process and waits until the mount is ready; `quiet` leaves
/// out the line saying so (mount(8) helpers print nothing on success).
fn spawn_background(
    store: &Path,
    mp: &Path,
    options: &[String],
    cache_mib: usize,
    quiet: bool,
) -> Result<()> {
    // Fail fast, in this process, on the errors a user most often makes.
    drop(volume::lock(store)?);
    let exe = std::env::current_exe().context("cannot find the dedupfs executable")?;
    let log_path = store.join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount").arg(store).arg(mp);
    if !options.is_empty() {
        cmd.arg("-o").arg(options.join(","));
    }
    cmd.arg("--cache-mib").arg(cache_mib.to_string());
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("cannot start the daemon")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if is_mountpoint(mp) {
            if quiet {
                return Ok(());
            }
            println!(
                "mounted {} at {} (daemon pid {}, log {})",
                store.display(),
                mp.display(),
                child.id(),
                log_path.display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = log
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            // The daemon's own error line, without its "dedupfs: error: " (ours adds one).
            let last = last.strip_prefix("dedupfs: error: ").unwrap_or(last);
            bail!("daemon exited ({status}) before the mount was ready: {last}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("mount not ready after 60 s; see {}", log_path.display())
}

/// How often dirty data is written back and committed durably, like ext4's commit interval.
const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Raises the daemon's soft limit of open files to its hard limit (pack files, scratch files,
/// the control socket and the object store's connections all take descriptors; a soft limit
/// of 1,024 is easy to reach and makes unrelated operations fail with EMFILE).
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    // (An unlimited hard limit is left alone: the kernel caps the soft one at nr_open.)
    if let (Some(cur), Some(max)) = (l.current, l.maximum)
        && cur < max
    {
        l.current = Some(max);
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::debug!("cannot raise the open files limit: {e}");
        }
    }
}

fn serve(store: &Path, mp: &Path, opts: &MountOpts, cache_mib: usize) -> Result<()> {
    raise_open_files_limit();
    if let Some(m) = opts.meta_cache_mib {
        crate::meta::set_db_cache(m << 20);
    }
    // Before the metadata is opened: was it changed since the newest backup?
    let backups = Arc::new(parking_lot::Mutex::new(
        crate::maint::backup::BackupTimer::new(store, opts.backup_interval),
    ));
    let vol = volume::open_to_mount(store)?;
    // The mount's source names the store absolutely: `dedupfs sync MOUNTPOINT` finds the
    // daemon's control socket through it.
    let dir = vol.dir.canonicalize().unwrap_or_else(|_| vol.dir.clone());
    let publish_dir = dir.clone();
    let cfg = FsConfig {
        cache_bytes: cache_mib << 20,
        read_only: opts.read_only,
        atime: opts.access_times,
        dir_atime: opts.dir_atime,
        store_dir: Some(dir.clone()),
        on_durable: Some(Arc::new(move |u| {
            if let Err(e) = volume::publish_stats(&publish_dir, &u) {
                tracing::warn!("cannot publish stats: {e}");
            }
        })),
        ..FsConfig::default()
    };
    let lock = vol.lock;
    // A remote volume mounted writable: its lease first (refused while another machine
    // holds it), before anything changes.
    let mut remote = match &vol.remote {
        Some(r) if !opts.read_only => Some(remote::RemoteDaemon::start(
            &dir,
            vol.chunks.clone(),
            r.clone(),
        )?),
        _ => None,
    };
    // Mounted read-only: the generation it serves is held against bucket gc.
    let reader = match &vol.remote {
        Some(r) if opts.read_only => Some(remote::ReadHolder::start(&dir, r.clone())),
        _ => None,
    };
    let fs = Arc::new(
        Fs::new(vol.meta, vol.chunks, cfg)
            .with_context(|| format!("cannot open store {}", store.display()))?,
    );
    fs.start_background();
    publish(&fs, &dir);
    if let Some(r) = &mut remote {
        r.run(&fs);
    }
    control::serve(&dir, fs.clone(), remote.as_ref().map(|r| r.vol.clone()));

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(dir.display().to_string()),
        // The type in the mount table is then `fuse.dedupfs` (what `mount -t` and fstab name,
        // and how `dedupfs sync` recognises a dedupfs mount). fuser's own Subtype option
        // reaches only fusermount, not the mount(2) a root daemon calls itself; the kernel's
        // `subtype=` option works for both.
        fuser::MountOption::CUSTOM("subtype=dedupfs".into()),
        fuser::MountOption::DefaultPermissions,
        if opts.read_only {
            fuser::MountOption::RO
        } else {
            fuser::MountOption::RW
        },
    ];
    config.mount_options.extend(opts.kernel_flags());
    // Two request threads: one can copy a request in while the other is being served.
    config.n_threads = Some(2);
    config.clone_fd = true;
    config.acl = if opts.allow_other {
        fuser::SessionACL::All
    } else if opts.allow_root {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    // The same open file (and so the same flock) as `lock`: notes that the mount has ended.
    let unmount_note = lock
        .try_clone()
        .context("cannot duplicate the store lock")?;
    let fuse = DedupFuse::new(fs.clone())
        .with_direct_reads(opts.direct_reads)
        .on_unmount(move || volume::mark_unmounting(&unmount_note));
    let mut session = fuser::Session::new(fuse, mp, &config)
        .with_context(|| format!("cannot mount at {}", mp.display()))?;
    tracing::info!(store = %dir.display(), mountpoint = %mp.display(), "mounted");
    notify::notify("READY=1");

    // Ctrl-C / SIGTERM unmount cleanly: the session then ends and we sync below.
    let mut unmounter = session.unmount_callable();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])?;
    let sig_handle = signals.handle();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(signal = sig, "unmounting on signal");
            if let Err(e) = unmounter.unmount() {
                tracing::error!("unmount failed: {e}");
            }
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let backup_thread = (!opts.read_only).then(|| {
        let (fs, stop, backups) = (fs.clone(), stop.clone(), backups.clone());
        let tick = opts
            .backup_interval
            .map_or(Duration::from_millis(200), |i| {
                i.min(Duration::from_millis(200))
            });
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                backups.lock().tick(&fs);
            }
        })
    });
    let flusher = {
        let (fs, stop) = (fs.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if let Err(e) = fs.reap_some() {
                    tracing::error!("deleting unlinked files failed: {e}");
                }
                if last.elapsed() >= FLUSH_INTERVAL {
                    last = Instant::now();
                    if let Err(e) = fs.sync_all(false) {
                        tracing::error!("periodic flush failed: {e}");
                    } else if let Err(e) = fs.compact_step() {
                        tracing::warn!("background compaction: {e}");
                    }
                }
            }
        })
    };

    // Started last: nothing may return early between here and the end of the session, which
    // ends it (`end_listings`).
    let invalidator = crate::fuse::spawn_listing_invalidator(fs.clone(), session.notifier())
        .context("cannot start the listing invalidator thread")?;
    let result = session.run();
    // From here a new mount of the store waits for this process instead of failing (also
    // when the session ended without DESTROY).
    volume::mark_unmounting(&lock);
    fs.end_listings();
    notify::notify("STOPPING=1");
    stop.store(true, Ordering::Relaxed);
    sig_handle.close();
    let _ = flusher.join();
    let _ = invalidator.join();
    if let Some(t) = backup_thread {
        let _ = t.join();
    }
    fs.stop_background();
    let synced = fs.sync_all(true);
    if synced.is_ok() && !opts.read_only {
        backups.lock().at_unmount(&fs);
    }
    let uploaded = match remote {
        Some(r) if synced.is_ok() => r.finish(&fs),
        _ => Ok(()),
    };
    if let Some(r) = reader {
        r.finish();
    }
    publish(&fs, &dir);
    control::remove(&dir);
    close_then_unlock(fs, lock);
    result.with_context(|| format!("FUSE session at {} failed", mp.display()))?;
    synced.context("final sync failed: some data may not be on disk")?;
    uploaded?;
    tracing::info!("unmounted cleanly");
    Ok(())
}

/// Closes the store's databases, then releases the store lock. In the other order, a
/// process that takes the lock at once (`umount MP && mount MP`, a service restart) finds
/// the databases still open (redb holds its own file lock until its close, which writes and
/// syncs), and volume::open takes that for a damaged index. Background threads hold only
/// weak references, upgraded for one item at a time: wait a little for the last of them.
fn close_then_unlock(fs: Arc<Fs>, lock: std::fs::File) {
    let mut fs = fs;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Arc::try_unwrap(fs) {
            Ok(alone) => {
                drop(alone);
                break;
            }
            Err(shared) if Instant::now() < deadline => {
                fs = shared;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => {
                tracing::warn!(
                    "the filesystem is still in use at exit; its store is unlocked anyway"
                );
                break;
            }
        }
    }
    // The note `mark_unmounting` left goes with the lock: a store at rest is left as it was.
    let _ = lock.set_len(0);
    drop(lock);
}

fn publish(fs: &Fs, dir: &Path) {
    match fs.usage() {
        Ok(u) => {
            if let Err(e) = volume::publish_stats(dir, &u) {
                tracing::warn!("cannot publish stats: {e}");
            }
        }
        Err(e) => tracing::warn!("cannot compute stats: {e}"),
    }
}
