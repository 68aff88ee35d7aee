//! Mount options (`-o a,b,c`), for `dedupfs mount` and for the form `mount(8)` runs through
//! the fuse3 helper `mount.fuse3` (`dedupfs STORE MOUNTPOINT -o OPTIONS`).
//!
//! Every option is either honoured, or accepted and ignored because it means something to
//! `mount(8)`, fstab or systemd rather than to the filesystem; anything else is refused by
//! name before anything is mounted. When an option and its opposite both appear (`ro,rw`,
//! `nodev,dev`), the last one wins, as with `mount(8)`.

use crate::fs::Atime;
use anyhow::{Result, bail};

/// What the options ask for. The kernel flags are `None` when not given, which keeps the
/// defaults of a FUSE mount (nodev, nosuid; exec; relatime; async).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MountOpts {
    pub read_only: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub dev: Option<bool>,
    pub suid: Option<bool>,
    pub exec: Option<bool>,
    pub atime: Option<bool>,
    /// When reads update access times: `relatime` (default, also `atime`), `strictatime`,
    /// `noatime` (the last one given wins).
    pub access_times: Atime,
    /// Directory reads update access times too (`nodiratime`: no).
    pub dir_atime: bool,
    pub sync: Option<bool>,
    pub dirsync: bool,
    /// `cache_mib=N`: the read cache size, for fstab lines (which cannot pass `--cache-mib`).
    pub cache_mib: Option<usize>,
    /// `meta_cache_mib=N`: pages kept in memory for each of the metadata database and the pack
    /// index (default `meta::CACHE`).
    pub meta_cache_mib: Option<usize>,
    /// `backup_interval=SECS`: time between metadata backups while the metadata changes
    /// (`None`: only at unmount; default one hour).
    pub backup_interval: Option<std::time::Duration>,
    /// `direct_reads`: every read past the kernel's page cache, as on kernels older than the
    /// ones read-only opens get it on (see `fs::page_cache`).
    pub direct_reads: bool,
    /// `remount` (mount(8)'s `-o remount,...` through the helper): change the flags of a live
    /// mount instead of mounting.
    pub remount: bool,
}

/// Honoured options, listed in the error for an unknown one.
const KNOWN: &str = "ro, rw, allow_other, allow_root, default_permissions, dev, nodev, suid, \
                     nosuid, exec, noexec, atime, noatime, relatime, strictatime, \
                     nodiratime, diratime, sync, async, dirsync, cache_mib=N, \
                     meta_cache_mib=N, backup_interval=SECS, direct_reads, remount; ignored: defaults, \
                     auto, noauto, nofail, _netdev, user, users, owner, group, x-*, comment=*, \
                     lazytime, nolazytime";

impl MountOpts {
    /// Parses options as given after `-o` (already split at commas, or not).
    pub fn parse(options: &[String]) -> Result<MountOpts> {
        let mut o = MountOpts {
            backup_interval: Some(crate::maint::backup::DEFAULT_INTERVAL),
            dir_atime: true,
            ..MountOpts::default()
        };
        let all = options
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty());
        // A remount through mount(8) passes the live mount's options back, the FUSE kernel
        // options among them (`user_id=0,group_id=0`): meaningless to change, so ignored then.
        let remount = all.clone().any(|o| o == "remount");
        for opt in all {
            match opt {
                "ro" => o.read_only = true,
                "rw" => o.read_only = false,
                "allow_other" => o.allow_other = true,
                "allow_root" => o.allow_root = true,
                // The daemon always mounts with default_permissions: the kernel checks modes
                // and owners, and the core trusts the caller's credentials.
                "default_permissions" => {}
                "dev" => o.dev = Some(true),
                "nodev" => o.dev = Some(false),
                "suid" => o.suid = Some(true),
                "nosuid" => o.suid = Some(false),
                "exec" => o.exec = Some(true),
                "noexec" => o.exec = Some(false),
                // Access times are the daemon's to update (module `fs::atime`); the kernel
                // flag only shows in /proc/mounts.
                "atime" | "relatime" | "norelatime" | "nostrictatime" => {
                    o.atime = None;
                    o.access_times = Atime::Relative;
                }
                "noatime" => {
                    o.atime = Some(false);
                    o.access_times = Atime::Never;
                }
                "strictatime" => {
                    o.atime = None;
                    o.access_times = Atime::Strict;
                }
                "nodiratime" => o.dir_atime = false,
                "diratime" => o.dir_atime = true,
                // Access-time changes are already written lazily: with the file's other
                // attributes at its write-back or close, or with the next group commit.
                "lazytime" | "nolazytime" => {}
                "sync" => o.sync = Some(true),
                "async" => o.sync = Some(false),
                "dirsync" => o.dirsync = true,
                "direct_reads" => o.direct_reads = true,
                "remount" => o.remount = true,
                k if remount
                    && [
                        "user_id=",
                        "group_id=",
                        "rootmode=",
                        "max_read=",
                        "blksize=",
                    ]
                    .iter()
                    .any(|p| k.starts_with(p)) => {}
                // Meaningful to mount(8), fstab or systemd only (mount.fuse3 removes most of
                // them, but a hand-written `dedupfs mount -o` or a .mount unit may pass them).
                "defaults" | "auto" | "noauto" | "nofail" | "_netdev" | "user" | "users"
                | "nouser" | "owner" | "group" => {}
                x if x.starts_with("x-") || x.starts_with("comment=") => {}
                b if b.starts_with("backup_interval=") => {
                    let secs = b["backup_interval=".len()..]
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && (0.0..=1e9).contains(s))
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "mount option '{b}': backup_interval takes seconds (0: only at unmount)"
                            )
                        })?;
                    o.backup_interval =
                        (secs > 0.0).then(|| std::time::Duration::from_secs_f64(secs));
                }
                c if c.starts_with("cache_mib=") => {
                    match c["cache_mib=".len()..].parse::<usize>() {
                        Ok(n) if (1..=1 << 20).contains(&n) => o.cache_mib = Some(n),
                        _ => bail!(
                            "mount option '{c}': cache_mib takes a number of MiB (1 to 1048576)"
                        ),
                    }
                }
                c if c.starts_with("meta_cache_mib=") => {
                    match c["meta_cache_mib=".len()..].parse::<usize>() {
                        Ok(n) if (1..=1 << 20).contains(&n) => o.meta_cache_mib = Some(n),
                        _ => bail!(
                            "mount option '{c}': meta_cache_mib takes a number of MiB (1 to 1048576)"
                        ),
                    }
                }
                other => bail!("unknown mount option '{other}' (known: {KNOWN})"),
            }
        }
        Ok(o)
    }

    /// The kernel mount flags asked for, as fuser options (read-only and the access options
    /// are set by the caller, which also decides the fsname and subtype).
    pub fn kernel_flags(&self) -> Vec<fuser::MountOption> {
        use fuser::MountOption as M;
        let pick = |v: Option<bool>, yes: M, no: M| v.map(|v| if v { yes } else { no });
        [
            pick(self.dev, M::Dev, M::NoDev),
            pick(self.suid, M::Suid, M::NoSuid),
            pick(self.exec, M::Exec, M::NoExec),
            pick(self.atime, M::Atime, M::NoAtime),
            pick(self.sync, M::Sync, M::Async),
            self.dirsync.then_some(M::DirSync),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<MountOpts> {
        MountOpts::parse(&[s.to_string()])
    }

    #[test]
    fn what_mount_fuse3_passes_is_accepted() {
        // As observed from mount.fuse3 3.14 (fstab `defaults,users,noatime` and a direct `-o`).
        let o = parse("rw,noatime,noexec,nosuid,nodev").unwrap();
        assert_eq!(
            (o.read_only, o.atime, o.exec, o.suid, o.dev),
            (false, Some(false), Some(false), Some(false), Some(false))
        );
        let o = parse("ro,allow_other,noatime,x-systemd.automount,default_permissions,dev,suid")
            .unwrap();
        assert!(o.read_only && o.allow_other);
        assert_eq!((o.dev, o.suid), (Some(true), Some(true)));
    }

    #[test]
    fn last_of_a_pair_wins_and_fstab_only_options_are_ignored() {
        let o =
            parse("ro,rw,nodev,dev,_netdev,nofail,noauto,users,comment=x,cache_mib=64").unwrap();
        assert!(!o.read_only);
        assert!(!o.direct_reads);
        assert!(parse("direct_reads").unwrap().direct_reads);
        assert_eq!(parse("cache_mib=512").unwrap().cache_mib, Some(512));
        assert_eq!(
            parse("meta_cache_mib=1024").unwrap().meta_cache_mib,
            Some(1024)
        );
        for bad in [
            "meta_cache_mib=0",
            "meta_cache_mib=1048577",
            "meta_cache_mib=x",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("MiB"), "{e}");
        }
        for bad in [
            "cache_mib=0",
            "cache_mib=1048577",
            "cache_mib=18446744073709551615",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(o.dev, Some(true));
        assert_eq!(o.cache_mib, Some(64));
        assert_eq!(o.kernel_flags(), vec![fuser::MountOption::Dev]);
        // Access times are the daemon's: only noatime reaches the kernel's flags.
        let t = parse("nodiratime,strictatime,lazytime").unwrap();
        assert_eq!(
            (t.atime, t.access_times, t.dir_atime),
            (None, Atime::Strict, false)
        );
        assert!(t.kernel_flags().is_empty());
        let d = parse("").unwrap();
        assert_eq!((d.access_times, d.dir_atime), (Atime::Relative, true));
        let n = parse("strictatime,noatime").unwrap();
        assert_eq!((n.atime, n.access_times), (Some(false), Atime::Never));
        assert_eq!(n.kernel_flags(), vec![fuser::MountOption::NoAtime]);
        let r = parse("noatime,nodiratime,relatime,diratime").unwrap();
        assert_eq!(
            (r.atime, r.access_times, r.dir_atime),
            (None, Atime::Relative, true)
        );
        // A security option that cannot be honoured is refused, not ignored.
        assert!(parse("nosymfollow").is_err());
    }

    #[test]
    fn a_remount_takes_back_the_fuse_kernel_options_of_the_live_mount() {
        // What mount(8) passed for `mount -o remount,ro MNT` of a mount made with allow_other.
        let o = parse("remount,ro,relatime,user_id=0,group_id=0,default_permissions,allow_other")
            .unwrap();
        assert!(o.remount && o.read_only);
        // Not otherwise: they are the kernel's, not an option of a new mount.
        assert!(parse("ro,user_id=0").is_err());
        assert!(!parse("ro").unwrap().remount);
    }

    #[test]
    fn an_unknown_option_is_named() {
        let e = parse("ro,bogus_opt").unwrap_err().to_string();
        assert!(e.contains("'bogus_opt'"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = parse("cache_mib=lots").unwrap_err().to_string();
        assert!(e.contains("cache_mib=lots"), "{e}");
    }
}
