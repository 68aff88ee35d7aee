//! Helpers of the remote-volume tests: a Garage rig, the CLI with its environment, store
//! directories.

use super::garage::{self, Garage};
use super::{BIN, Volume, fuse_available};
use dedupfs::store::remote::RemoteStore;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn available() -> bool {
    if !fuse_available() {
        eprintln!("SKIP: no FUSE");
        return false;
    }
    garage::garage_available()
}

/// Environment variables of a process.
pub type Env = Vec<(String, String)>;

/// The daemon's and the CLI's environment for `g`.
pub fn env_of(g: &Garage) -> Env {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), g.key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY".into(), g.secret.clone()),
        ("AWS_REGION".into(), g.region.clone()),
        ("AWS_ENDPOINT_URL".into(), g.endpoint.clone()),
    ]
}

pub fn url_of(g: &Garage, prefix: &str) -> String {
    format!("s3://{}/{prefix}", g.bucket)
}

/// `dedupfs ARGS` with `env`, never failing itself.
pub fn dedupfs(env: &[(String, String)], args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .expect("run dedupfs")
}

#[track_caller]
pub fn ok(o: Output, what: &str) -> String {
    assert!(o.status.success(), "{what}: {}", super::output_text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
pub fn fails(o: Output, what: &str) -> String {
    assert!(
        !o.status.success(),
        "{what} was expected to fail: {}",
        super::output_text(&o)
    );
    super::output_text(&o)
}

pub fn client(g: &Garage, prefix: &str) -> RemoteStore {
    let mut c = g.client_config();
    c.prefix = prefix.to_string();
    RemoteStore::open(&c).expect("open bucket")
}

/// A temp dir holding store directories.
pub struct Dirs {
    pub tmp: tempfile::TempDir,
}

impl Dirs {
    pub fn new() -> Dirs {
        Dirs {
            tmp: tempfile::Builder::new()
                .prefix("dedupfs-remote-")
                .tempdir()
                .expect("temp dir"),
        }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

pub fn init_remote(g: &Garage, store: &Path, prefix: &str, extra: &[&str]) {
    let env = env_of(g);
    let url = url_of(g, prefix);
    let mut args = vec!["init", store.to_str().unwrap(), "--remote", &url];
    args.extend_from_slice(extra);
    ok(dedupfs(&env, &args), "init --remote");
}

pub fn attach(g: &Garage, store: &Path, prefix: &str, extra: &[&str]) -> String {
    let env = env_of(g);
    let url = url_of(g, prefix);
    let mut args = vec!["attach", store.to_str().unwrap(), "--remote", &url];
    args.extend_from_slice(extra);
    ok(dedupfs(&env, &args), "attach")
}

/// `attach` into `dirs/name`, then a read-only mount of it: another machine's view of what
/// was published.
pub fn attached_ro(g: &Garage, dirs: &Dirs, name: &str, prefix: &str) -> Volume {
    let store = dirs.path(name);
    attach(g, &store, prefix, &[]);
    Volume::mount_existing(&store, &["-o", "ro"], &env_of(g))
}

/// A test's Garage (skipped when FUSE or garage is missing), its environment and a temp dir
/// for store directories.
pub fn rig(cluster: bool) -> Option<(Garage, Env, Dirs)> {
    if !available() {
        return None;
    }
    let g = if cluster {
        Garage::cluster3()
    } else {
        Garage::single()
    };
    let env = env_of(&g);
    Some((g, env, Dirs::new()))
}

pub fn stats(env: &[(String, String)], store: &Path) -> serde_json::Value {
    let out = ok(
        dedupfs(env, &["stats", store.to_str().unwrap(), "--json"]),
        "stats",
    );
    serde_json::from_str(&out).expect("stats json")
}

pub fn sync(env: &[(String, String)], mnt: &Path) -> Output {
    dedupfs(env, &["sync", mnt.to_str().unwrap()])
}

/// The pack objects under the client's prefix larger than 512 KiB (at least three, asserted),
/// in key order; the first has one byte flipped in place (same size: only reading it tells).
pub fn damage_first_big_pack(c: &RemoteStore) -> Vec<dedupfs::store::remote::ObjectInfo> {
    let packs: Vec<_> = c
        .list("packs")
        .unwrap()
        .into_iter()
        .filter(|o| o.size > 512 << 10)
        .collect();
    assert!(packs.len() >= 3, "{packs:?}");
    let mut raw = c.get(&packs[0].key).unwrap();
    raw[300_000] ^= 1;
    c.put(&packs[0].key, raw).unwrap();
    packs
}

/// The volume id of a remote store (names its packs in the bucket).
pub fn volume_id(store: &Path) -> String {
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("remote.json")).unwrap()).unwrap();
    c["volume_id"].as_str().unwrap().to_string()
}

/// Bytes of the pack objects volume `store` uploaded itself.
pub fn own_pack_bytes(g: &Garage, prefix: &str, store: &Path) -> u64 {
    client(g, prefix)
        .list(&format!("packs/{}", volume_id(store)))
        .unwrap()
        .iter()
        .map(|o| o.size)
        .sum()
}
