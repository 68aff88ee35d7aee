//! The control socket of a mounted daemon (`STORE/control.sock`): lets `gc` and a read-only
//! `fsck` and `backup` run against a mounted store, in the daemon, on its own metadata handle,
//! with its write-backs quiesced (`Fs::with_quiesced`), `dedupfs sync` wait for a durable point
//! (`Fs::sync_fs`) and `dedupfs du` account trees. One JSON request line, one JSON answer
//! line, sent once the work is done.

use crate::fs::Fs;
use crate::maint::du::{DuReport, du};
use crate::maint::fsck::{FsckOptions, FsckReport, fsck};
use crate::maint::gc::{GcOptions, GcReport, gc_with};
use crate::meta::backup::TakeReport;
use crate::remote::sync::RemoteVolume;
use crate::store::ChunkStore;
use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Gc {
        dry_run: bool,
        #[serde(default)]
        repack: bool,
    },
    SetCompression {
        codec: String,
    },
    Fsck {
        verify_data: bool,
    },
    /// Take a metadata backup now.
    Backup,
    /// Space accounting of trees: (inode, path as the user named it).
    Du {
        items: Vec<(u64, String)>,
    },
    /// Everything written so far durable (answered only then).
    Sync,
    /// Requests served since the mount, by operation.
    Requests,
    /// Whether the daemon writes to the volume (false: mounted `ro`, or fenced).
    Writable,
    /// A snapshot of the live directory `ino` (`path` as the user named it, relative to the
    /// volume root).
    SnapshotCreate {
        name: String,
        ino: u64,
        path: String,
    },
    SnapshotList,
    SnapshotDelete {
        name: String,
    },
}

/// The daemon's answer: a report as JSON, or an error message.
#[derive(Serialize, Deserialize, Debug)]
pub struct Answer {
    pub report: Option<serde_json::Value>,
    pub error: Option<String>,
}

/// A report received from the daemon.
pub struct Remote {
    answer: Answer,
}

impl Remote {
    fn report<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        let v = self
            .answer
            .report
            .ok_or_else(|| anyhow!("daemon sent no report"))?;
        serde_json::from_value(v).context("cannot read the daemon's report")
    }

    pub fn into_gc(self) -> Result<GcReport> {
        self.report()
    }

    pub fn into_fsck(self) -> Result<FsckReport> {
        self.report()
    }

    pub fn into_backup(self) -> Result<TakeReport> {
        self.report()
    }

    pub fn into_du(self) -> Result<Vec<DuReport>> {
        self.report()
    }

    pub fn into_snapshot(self) -> Result<crate::fs::SnapshotReport> {
        self.report()
    }

    pub fn into_snapshots(self) -> Result<Vec<crate::fs::SnapshotReport>> {
        self.report()
    }

    pub fn into_requests(self) -> Result<crate::fs::RequestCounts> {
        self.report()
    }

    pub fn into_bool(self) -> Result<bool> {
        self.report()
    }
}

fn socket_path(store: &Path) -> PathBuf {
    store.join("control.sock")
}

/// Sends one request to the daemon serving `store`.
pub fn request(store: &Path, req: &Request) -> Result<Remote> {
    request_within(store, req, None)
}

/// `request`, giving up after `timeout` without an answer (the daemon answers one request at
/// a time: a figure that is only nice to have must not wait behind a long gc).
pub fn request_within(
    store: &Path,
    req: &Request,
    timeout: Option<std::time::Duration>,
) -> Result<Remote> {
    let path = socket_path(store);
    let mut s = UnixStream::connect(&path).with_context(|| {
        format!(
            "store {} is mounted but its daemon does not answer on {}",
            store.display(),
            path.display()
        )
    })?;
    s.set_read_timeout(timeout)?;
    s.set_write_timeout(timeout)?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    let answer: Answer = serde_json::from_str(&answer).context("bad answer from the daemon")?;
    if let Some(e) = answer.error {
        return Err(anyhow!("daemon: {e}"));
    }
    Ok(Remote { answer })
}

/// An error's errno by name, for the one-line messages of `dedupfs sync`.
fn errno_label(n: i32) -> String {
    match n {
        libc::ENOSPC => "ENOSPC".into(),
        libc::EDQUOT => "EDQUOT".into(),
        libc::EIO => "EIO".into(),
        libc::EROFS => "EROFS".into(),
        n => format!("errno {n}"),
    }
}

/// A snapshot operation's failure in one line: a refusal as is, anything else with its errno.
fn snapshot_error(e: &crate::error::FsError) -> String {
    match e {
        crate::error::FsError::Refused(m) => m.clone(),
        crate::error::FsError::ReadOnly => "the volume is mounted read-only".into(),
        e => format!("{e} ({})", errno_label(e.errno())),
    }
}

fn handle(fs: &Fs, store: &Path, remote: Option<&RemoteVolume>, req: Request) -> Answer {
    let changes = matches!(
        req,
        Request::SetCompression { .. } | Request::Gc { dry_run: false, .. }
    );
    if changes && !fs.is_writable() {
        return Answer {
            report: None,
            error: Some(
                "the volume is mounted read-only (or was fenced: see its log): nothing changed"
                    .into(),
            ),
        };
    }
    let result = match req {
        Request::SnapshotCreate { name, ino, path } => fs
            .snapshot_create(&name, ino, &path)
            .map_err(|e| snapshot_error(&e))
            .and_then(|r| serde_json::to_value(r).map_err(|e| e.to_string())),
        Request::SnapshotList => fs
            .snapshot_list()
            .map_err(|e| e.to_string())
            .and_then(|r| serde_json::to_value(r).map_err(|e| e.to_string())),
        Request::SnapshotDelete { name } => fs
            .snapshot_delete(&name)
            .map_err(|e| snapshot_error(&e))
            .and_then(|r| serde_json::to_value(r).map_err(|e| e.to_string())),
        Request::Requests => {
            serde_json::to_value(fs.counters().snapshot()).map_err(|e| e.to_string())
        }
        Request::Writable => Ok(serde_json::Value::Bool(fs.is_writable())),
        Request::Sync => fs
            .sync_fs()
            .and_then(|()| remote.map(|r| r.publish(fs)).transpose())
            .map(|published| serde_json::json!({ "durable": true, "published": published }))
            .map_err(|e| format!("{e} ({})", errno_label(e.errno()))),
        Request::Du { items } => du_of(fs, store, &items)
            .map_err(|e| e.to_string())
            .and_then(|r| serde_json::to_value(r).map_err(|e| e.to_string())),
        Request::Backup => crate::maint::backup::backup_fs(fs, store)
            .map_err(|e| e.to_string())
            .and_then(|(r, _)| serde_json::to_value(r).map_err(|e| e.to_string())),
        Request::SetCompression { codec } => {
            codec.parse::<crate::store::codec::Codec>().and_then(|c| {
                let packs = fs
                    .store()
                    .packs()
                    .ok_or_else(|| "this store has no pack store".to_string())?;
                packs.set_codec(c);
                packs.sync().map_err(|e| e.to_string())?;
                Ok(serde_json::json!({ "compression": c.to_string() }))
            })
        }
        Request::Gc { dry_run, repack } => fs
            .with_quiesced(|meta, store| {
                let holders = fs.snapshot_holders()?;
                let opts = GcOptions {
                    dry_run,
                    repack,
                    ..GcOptions::default()
                };
                gc_with(meta, store, &holders, opts)
            })
            .map_err(|e| e.to_string())
            .and_then(|r| serde_json::to_value(r).map_err(|e| e.to_string())),
        Request::Fsck { verify_data } => fs
            .with_quiesced(|meta, store| {
                let holders = fs.snapshot_holders()?;
                let opts = FsckOptions {
                    repair: false,
                    verify_data,
                };
                fsck(meta, store, &holders, opts, &mut |_| {})
            })
            .map_err(|e| e.to_string())
            .and_then(|r| serde_json::to_value(r).map_err(|e| e.to_string())),
    };
    match result {
        Ok(v) => Answer {
            report: Some(v),
            error: None,
        },
        Err(e) => Answer {
            report: None,
            error: Some(e),
        },
    }
}

/// `dedupfs du`: everything written so far is written back and committed first, then each
/// tree is accounted in one snapshot (other operations go on meanwhile).
fn du_of(fs: &Fs, store: &Path, items: &[(u64, String)]) -> crate::error::Result<Vec<DuReport>> {
    fs.sync_all(false)?;
    let snap = fs.meta().begin_read()?;
    items
        .iter()
        .map(|(ino, path)| {
            if crate::fs::in_snapshot(*ino) {
                return Err(crate::error::FsError::Refused(format!(
                    "{path} is inside a snapshot: `dedupfs snapshot list` shows what each holds"
                )));
            }
            let holders = fs.snapshot_holders()?;
            du(&snap, fs.store().as_ref(), *ino, path, store, &|id| {
                holders.holds(id)
            })
        })
        .collect()
}

/// Starts answering requests on `STORE/control.sock` (a thread; it lives as long as the
/// process). A failure to bind is logged: the mount works without it.
pub fn serve(store: &Path, fs: Arc<Fs>, remote: Option<Arc<RemoteVolume>>) {
    let path = socket_path(store);
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("no control socket at {}: {e}", path.display());
            return;
        }
    };
    let weak = Arc::downgrade(&fs);
    drop(fs);
    let store = store.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("dedupfs-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let Some(fs) = weak.upgrade() else { break };
                let mut reader = BufReader::new(&conn);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let answer = match serde_json::from_str::<Request>(&line) {
                    Ok(req) => {
                        tracing::info!(?req, "control request");
                        handle(&fs, &store, remote.as_deref(), req)
                    }
                    Err(e) => Answer {
                        report: None,
                        error: Some(format!("bad request: {e}")),
                    },
                };
                if let Ok(mut out) = serde_json::to_vec(&answer) {
                    out.push(b'\n');
                    let _ = (&conn).write_all(&out);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the control thread: {e}");
    }
}

pub fn remove(store: &Path) {
    let _ = std::fs::remove_file(socket_path(store));
}
