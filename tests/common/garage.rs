//! A real Garage object store on loopback for the remote-store tests: one node, or three with
//! replication factor 3 for fault tests (stop a node, restart it).
//!
//! Guards against what goes wrong with such harnesses: ports taken by another test (each
//! server gets fresh free ports and its own temp dir), racing the server's start (we wait
//! until the node answers the admin CLI and its S3 port accepts connections, and on a cluster
//! until every node sees the whole layout), losing the server's diagnostics (each node logs to
//! a file that panics quote), and servers outliving the test (Drop kills them).
//!
//! Tests skip (with a `SKIP:` line) only when the `garage` binary is absent; CI installs it
//! (scripts/install-deps). `GARAGE_BIN` names another binary.
#![allow(dead_code)]

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use rand::RngCore;
use tempfile::TempDir;

/// Garage's S3 region in every test config.
pub const REGION: &str = "garage";
/// How long a node may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Data capacity given to each node in the layout (Garage needs one; nothing fills it).
const NODE_CAPACITY: &str = "1G";

/// The garage binary: `$GARAGE_BIN` (if it is a file), else `garage` on PATH, else
/// /usr/local/bin/garage (where scripts/install-deps puts it; a non-login PATH may lack it).
pub fn garage_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("GARAGE_BIN") {
        let bin = PathBuf::from(bin);
        return bin.is_file().then_some(bin);
    }
    super::which("garage").or_else(|| {
        let p = PathBuf::from("/usr/local/bin/garage");
        p.is_file().then_some(p)
    })
}

/// True when Garage tests can run here; otherwise prints a `SKIP:` line and the caller returns.
pub fn garage_available() -> bool {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    match BIN.get_or_init(garage_bin) {
        Some(_) => true,
        None => {
            match std::env::var_os("GARAGE_BIN") {
                Some(bin) => eprintln!("SKIP: GARAGE_BIN={} is not a file", bin.display()),
                None => eprintln!("SKIP: garage not installed (scripts/install-deps installs it)"),
            }
            false
        }
    }
}

/// A running Garage: one node, or a cluster. Clients talk to node 0 (`endpoint`) unless they
/// pick another with [`Garage::endpoint_of`]. The bucket exists and the key may read, write
/// and own it.
pub struct Garage {
    pub endpoint: String,
    pub region: String,
    pub key_id: String,
    pub secret: String,
    pub bucket: String,
    nodes: Vec<Node>,
    bin: PathBuf,
    _tmp: TempDir,
}

struct Node {
    config: PathBuf,
    log: PathBuf,
    s3_port: u16,
    child: Option<Child>,
}

impl Garage {
    /// One node, replication factor 1.
    pub fn single() -> Garage {
        Garage::start(1)
    }

    /// Three nodes in three zones, replication factor 3: any one may stop and the others keep
    /// read and write quorums (2 of 3).
    pub fn cluster3() -> Garage {
        Garage::start(3)
    }

    fn start(n: usize) -> Garage {
        let bin = garage_bin().expect("garage binary (call garage_available first)");
        let tmp = tempfile::Builder::new()
            .prefix("dedupfs-garage-")
            .tempdir()
            .expect("create temp dir");
        let secret = random_hex(32);
        let ports = free_ports(2 * n);
        let mut nodes = Vec::new();
        for i in 0..n {
            let dir = tmp.path().join(format!("node{i}"));
            fs::create_dir(&dir).expect("create node dir");
            let (s3_port, rpc_port) = (ports[2 * i], ports[2 * i + 1]);
            let config = dir.join("garage.toml");
            // Garage 2.5 configuration keys (garage_util::config::Config). sqlite: no 1 TiB
            // sparse map as with lmdb, and built in (bundled-libs). No fsync: test data.
            fs::write(
                &config,
                format!(
                    "metadata_dir = \"{dir}/meta\"\n\
                     data_dir = \"{dir}/data\"\n\
                     db_engine = \"sqlite\"\n\
                     replication_factor = {n}\n\
                     rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
                     rpc_secret = \"{secret}\"\n\
                     \n\
                     [s3_api]\n\
                     api_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                     s3_region = \"{REGION}\"\n",
                    dir = dir.display(),
                ),
            )
            .expect("write garage.toml");
            nodes.push(Node {
                config,
                log: dir.join("garage.log"),
                s3_port,
                child: None,
            });
        }
        let mut g = Garage {
            endpoint: format!("http://127.0.0.1:{}", nodes[0].s3_port),
            region: REGION.to_string(),
            key_id: String::new(),
            secret: String::new(),
            bucket: "dedupfs-test".to_string(),
            nodes,
            bin,
            _tmp: tmp,
        };
        for i in 0..n {
            g.spawn(i);
        }
        for i in 0..n {
            g.wait_answering(i);
        }
        g.setup(n);
        g
    }

    /// Connects the nodes, assigns every node a zone and capacity, applies the layout, then
    /// makes the key and the bucket.
    fn setup(&mut self, n: usize) {
        let ids: Vec<String> = (0..n)
            .map(|i| {
                let out = self.cli(i, &["node", "id", "--quiet"]);
                out.trim().to_string()
            })
            .collect();
        for id in &ids[1..] {
            self.cli(0, &["node", "connect", id]);
        }
        for (i, id) in ids.iter().enumerate() {
            let short = id.split('@').next().unwrap_or(id);
            let zone = format!("dc{i}");
            self.cli(
                0,
                &["layout", "assign", "-z", &zone, "-c", NODE_CAPACITY, short],
            );
        }
        self.cli(0, &["layout", "apply", "--version", "1"]);
        // Bucket and key tables need a quorum of nodes that know the layout.
        for i in 0..n {
            self.wait_for(i, "the layout", |g| {
                let out = g.try_cli(i, &["status"])?;
                (healthy_nodes(&out) >= n && !out.contains("NO ROLE ASSIGNED")).then_some(())
            });
        }
        let key = self.cli(0, &["key", "create", "dedupfs-test-key"]);
        self.key_id = field(&key, "Key ID:").unwrap_or_else(|| panic!("no key id in:\n{key}"));
        self.secret =
            field(&key, "Secret key:").unwrap_or_else(|| panic!("no secret key in:\n{key}"));
        let bucket = self.bucket.clone();
        self.cli(0, &["bucket", "create", &bucket]);
        self.cli(
            0,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                &bucket,
                "--key",
                "dedupfs-test-key",
            ],
        );
    }

    /// The S3 endpoint of node `i`.
    /// Client settings for the bucket through node 0.
    pub fn client_config(&self) -> dedupfs::store::remote::RemoteConfig {
        dedupfs::store::remote::RemoteConfig {
            endpoint: Some(self.endpoint.clone()),
            region: self.region.clone(),
            ..dedupfs::store::remote::RemoteConfig::new(&self.bucket, &self.key_id, &self.secret)
        }
    }

    /// A client of the bucket through node 0 (checked: it answers).
    pub fn client(&self) -> dedupfs::store::remote::RemoteStore {
        dedupfs::store::remote::RemoteStore::open(&self.client_config())
            .unwrap_or_else(|e| panic!("open: {e}\nlog:\n{}", self.log(0)))
    }

    pub fn endpoint_of(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].s3_port)
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Kills node `i` (SIGKILL: a crash, nothing flushed) and waits until it is gone.
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its directories and ports; returns once it answers and every
    /// running node sees every running node as healthy (it has rejoined the cluster, in the
    /// eyes of the others too: under load node 0 has been seen to lag behind node `i`).
    pub fn restart_node(&mut self, i: usize) {
        self.stop_node(i);
        self.spawn(i);
        self.wait_answering(i);
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| self.nodes[n].child.is_some())
            .collect();
        for &n in &running {
            self.wait_for(n, "the node to rejoin", |g| {
                (g.healthy_seen_by(n) >= running.len()).then_some(())
            });
        }
    }

    /// How many nodes node `i` currently lists as healthy (0 if it does not answer).
    pub fn healthy_seen_by(&self, i: usize) -> usize {
        self.try_cli(i, &["status"])
            .map(|out| healthy_nodes(&out))
            .unwrap_or(0)
    }

    /// Stops a single-node server (as [`Garage::stop_node`] of node 0).
    pub fn stop(&mut self) {
        self.stop_node(0);
    }

    /// Restarts a single-node server.
    pub fn restart(&mut self) {
        self.restart_node(0);
    }

    /// Node `i`'s log, for failure messages.
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open garage log");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.config)
            .arg("server")
            .env("RUST_LOG", "garage=info,garage_api_s3=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        node.child = Some(child);
    }

    /// Waits until node `i` answers the admin CLI (its RPC is up) and its S3 port accepts
    /// connections.
    fn wait_answering(&mut self, i: usize) {
        let s3 = self.nodes[i].s3_port;
        self.wait_for(i, "the node to answer", |g| {
            g.try_cli(i, &["status"])?;
            TcpStream::connect(("127.0.0.1", s3)).ok().map(|_| ())
        });
    }

    /// Polls `ready` until it returns Some, failing (with node `i`'s log) if the node exits
    /// or START_TIMEOUT passes.
    fn wait_for<T>(&mut self, i: usize, what: &str, ready: impl Fn(&Garage) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(t) = ready(self) {
                return t;
            }
            if let Some(child) = self.nodes[i].child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "garage node {i} exited ({status}) while waiting for {what}; log:\n{}",
                    self.log(i)
                );
            }
            if start.elapsed() > START_TIMEOUT {
                panic!(
                    "garage node {i}: no {what} after {START_TIMEOUT:?}; log:\n{}",
                    self.log(i)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `garage -c <node i's config> args...`; its stdout, or None if it failed.
    fn try_cli(&self, i: usize, args: &[&str]) -> Option<String> {
        let out = self.run_cli(i, args);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// As [`Garage::try_cli`], panicking with the command's output and the node's log.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        let out = self.run_cli(i, args);
        if !out.status.success() {
            panic!(
                "garage {} failed ({}):\n{}{}\nnode {i} log:\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log(i)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn run_cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("-c")
            .arg(&self.nodes[i].config)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bin.display()))
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i);
        }
    }
}

/// Rows of the `==== HEALTHY NODES ====` table of `garage status` (one per node, each with
/// its RPC address; failed nodes are listed in another table).
fn healthy_nodes(status: &str) -> usize {
    status
        .lines()
        .skip_while(|l| !l.contains("HEALTHY NODES"))
        .skip(1)
        .take_while(|l| !l.starts_with("===="))
        .filter(|l| l.contains("127.0.0.1:"))
        .count()
}

/// The value after `label` on the line that starts with it (`Key ID:\tGK...`).
fn field(text: &str, label: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` distinct ports free on 127.0.0.1 right now (all bound at once, so distinct; released
/// together just before the servers bind them).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// A port on 127.0.0.1 where nothing listens (for unreachable-endpoint tests).
pub fn closed_port() -> u16 {
    free_ports(1)[0]
}
