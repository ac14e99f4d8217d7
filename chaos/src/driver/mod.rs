//! Drivers: where the nodes run and how a fault is applied to one. They are thin: each
//! op is one process signal, one `docker` command, or a few `ip`/`iptables`/`tc`
//! commands in a namespace the tool made. Every driver undoes everything in
//! [`Driver::teardown`], which the runner calls on every way out.
//!
//! - [`local`]: `concord serve` processes on 127.0.0.1, one port block each.
//! - [`netns`]: each node in its own network namespace, with a veth pair into a bridge in
//!   a hub namespace where the load tester runs (root only).
//! - [`docker`]: containers of the `concord` image on a private network with fixed
//!   addresses, ports published on 127.0.0.1.

pub mod docker;
pub mod local;
pub mod netns;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use concord_protocol::admin_http;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::scenario::{ClusterSpec, DriverKind};
use crate::schedule::Op;

/// The secrets every node of a run shares (the load tester mints tokens with them).
pub const TOKEN_SECRET: &str = "chaos-token-secret";
/// The publish secret.
pub const PUBLISH_SECRET: &str = "chaos-publish-secret";
/// The cluster (gossip) secret.
pub const CLUSTER_SECRET: &str = "chaos-cluster-secret";

/// How the tool and the load tester reach one node.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeSpec {
    /// Its id (`n1`...).
    pub id: String,
    /// Its client WebSocket URL, as the load tester reaches it.
    pub client_url: String,
    /// Its API URL, as the load tester reaches it.
    pub api_url: String,
    /// Its admin address, as the tool reaches it (through the hub namespace for netns).
    pub admin: SocketAddr,
}

/// The programs a run starts.
#[derive(Clone, Debug)]
pub struct Bins {
    /// `concord`.
    pub concord: PathBuf,
    /// `concord-loadtest`.
    pub loadtest: PathBuf,
    /// This program (the netns driver runs its `http-get` inside the hub namespace).
    pub me: PathBuf,
}

impl Bins {
    /// The binaries next to this one (one cargo target directory), or where
    /// `CONCORD_BIN` and `CONCORD_LOADTEST_BIN` say.
    ///
    /// # Errors
    /// When one is missing, naming the build command.
    pub fn find() -> anyhow::Result<Bins> {
        let me = std::env::current_exe().context("cannot find this program's path")?;
        let dir = me.parent().map(Path::to_path_buf).unwrap_or_default();
        let pick = |env: &str, name: &str| -> anyhow::Result<PathBuf> {
            let path = std::env::var_os(env).map_or_else(|| dir.join(name), PathBuf::from);
            anyhow::ensure!(
                path.is_file(),
                "{} not found: build it (cargo build --release -p concord-gateway -p concord-loadtest) or set {env}",
                path.display()
            );
            Ok(path)
        };
        Ok(Bins {
            concord: pick("CONCORD_BIN", "concord")?,
            loadtest: pick("CONCORD_LOADTEST_BIN", "concord-loadtest")?,
            me,
        })
    }
}

/// A running cluster under one driver.
#[derive(Debug)]
pub enum Driver {
    /// Processes on loopback.
    Local(local::Local),
    /// Processes in network namespaces.
    Netns(netns::Netns),
    /// Containers.
    Docker(docker::Docker),
}

impl Driver {
    /// Starts `spec.nodes` nodes; logs go to `dir`.
    ///
    /// # Errors
    /// When the nodes cannot be started; whatever was started is torn down first.
    pub async fn start(
        kind: DriverKind,
        spec: &ClusterSpec,
        bins: &Bins,
        dir: &Path,
    ) -> anyhow::Result<Driver> {
        let mut driver = match kind {
            DriverKind::Local => Driver::Local(local::Local::new(spec, bins, dir)?),
            DriverKind::Netns => Driver::Netns(netns::Netns::new(spec, bins, dir)?),
            DriverKind::Docker => Driver::Docker(docker::Docker::new(spec, dir)?),
        };
        let started = match &mut driver {
            Driver::Local(d) => d.start().await,
            Driver::Netns(d) => d.start().await,
            Driver::Docker(d) => d.start().await,
        };
        if let Err(e) = started {
            driver.teardown().await;
            return Err(e);
        }
        Ok(driver)
    }

    /// The nodes, in id order.
    pub fn nodes(&self) -> &[NodeSpec] {
        match self {
            Driver::Local(d) => &d.nodes,
            Driver::Netns(d) => &d.nodes,
            Driver::Docker(d) => &d.nodes,
        }
    }

    /// Applies `op` to node `i` (index into [`Driver::nodes`]).
    ///
    /// # Errors
    /// When the signal, command or drain failed.
    pub async fn apply(&mut self, i: usize, op: Op) -> anyhow::Result<()> {
        match self {
            Driver::Local(d) => d.apply(i, op).await,
            Driver::Netns(d) => d.apply(i, op).await,
            Driver::Docker(d) => d.apply(i, op).await,
        }
    }

    /// One request to node `i`'s admin port: status and body.
    ///
    /// # Errors
    /// When the node does not answer within a second or two.
    pub async fn http(&self, i: usize, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
        let admin = self.nodes()[i].admin;
        match self {
            Driver::Netns(d) => d.http(admin, method, path).await,
            _ => http(admin, method, path).await,
        }
    }

    /// The command that runs the load tester where it reaches every node.
    pub fn load_command(&self, loadtest: &Path) -> tokio::process::Command {
        match self {
            Driver::Netns(d) => d.in_hub(loadtest),
            _ => tokio::process::Command::new(loadtest),
        }
    }

    /// Stops every node and removes everything the driver made. Never fails; what it
    /// could not remove is logged.
    pub async fn teardown(&mut self) {
        match self {
            Driver::Local(d) => d.teardown().await,
            Driver::Netns(d) => d.teardown().await,
            Driver::Docker(d) => d.teardown().await,
        }
    }
}

/// One HTTP/1.0 request to an admin port ([`admin_http`]), bounded to 2 s in all.
///
/// # Errors
/// Connect, write or read failed or timed out, or the answer is not HTTP.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(&admin_http::request(method, path, &addr.to_string()))
            .await?;
        let mut answer = Vec::new();
        stream.take(4 << 20).read_to_end(&mut answer).await?;
        anyhow::Ok(admin_http::parse_response(&answer)?)
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .with_context(|| format!("{addr}{path}: no answer within 2 s"))?
        .with_context(|| format!("{addr}{path}"))
}

/// `concord serve` flags for node `k` at `ip` with the port block `base(k)` (+0 client,
/// +1 API, +2 admin, +3 gossip, +4 peer); n1 bootstraps (add [`seed_args`]).
pub fn serve_args(
    k: usize,
    ip: &str,
    base: impl Fn(usize) -> u16,
    public_host: &str,
    extra: &[String],
) -> Vec<String> {
    let port = |k: usize, off: u16| base(k) + off;
    let addr = |k: usize, off: u16| format!("{ip}:{}", port(k, off));
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--exit-with-stdin".into(),
        "--node-id".into(),
        format!("n{k}"),
        "--listen".into(),
        addr(k, 0),
        "--api-listen".into(),
        addr(k, 1),
        "--admin-listen".into(),
        addr(k, 2),
        "--gossip-listen".into(),
        addr(k, 3),
        "--peer-listen".into(),
        addr(k, 4),
        "--public-url".into(),
        format!("ws://{public_host}:{}", port(k, 0)),
        "--public-api-url".into(),
        format!("http://{public_host}:{}", port(k, 1)),
        "--cluster-secret".into(),
        CLUSTER_SECRET.into(),
        "--token-secret".into(),
        TOKEN_SECRET.into(),
        "--publish-secret".into(),
        PUBLISH_SECRET.into(),
        "--bootstrap-node".into(),
        "n1".into(),
    ];
    args.extend(extra.iter().cloned());
    args
}

/// The `--seed` flags naming every node but `k` (gossip port `gossip(j)` at `ip(j)`).
pub fn seed_args(k: usize, n: usize, gossip: impl Fn(usize) -> String) -> Vec<String> {
    (1..=n)
        .filter(|j| *j != k)
        .flat_map(|j| ["--seed".to_owned(), gossip(j)])
        .collect()
}

/// Spawns `cmd` with its output appended to `log` and a piped stdin (a node started with
/// `--exit-with-stdin` drains when the tool goes away, even by SIGKILL).
///
/// # Errors
/// When the log cannot be opened or the program not started.
pub fn spawn_logged(
    mut cmd: tokio::process::Command,
    log: &Path,
) -> anyhow::Result<tokio::process::Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = file.try_clone()?;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    cmd.spawn().context("cannot start a node")
}

/// Runs a command to completion; fails with its stderr when it fails.
///
/// # Errors
/// The command could not start or exited non-zero.
pub async fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {program}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sends `signal` (`-STOP`, `-CONT`) to a process.
///
/// # Errors
/// When `kill` fails (the process is gone).
pub async fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    run("kill", &[signal, &pid.to_string()]).await.map(drop)
}

/// Waits up to `limit` for a child to exit; kills it after that.
pub async fn wait_exit(child: &mut tokio::process::Child, limit: Duration) -> bool {
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(_) => true,
        Err(_) => {
            let _ = child.kill().await;
            false
        }
    }
}
