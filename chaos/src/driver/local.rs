//! The `local` driver: `concord serve` processes on 127.0.0.1, node k on ports
//! base + 10 (k - 1) + 0..4, logs in the run directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use super::{Bins, NodeSpec, seed_args, serve_args, spawn_logged, wait_exit};
use crate::scenario::ClusterSpec;
use crate::schedule::Op;

/// Node processes on loopback.
#[derive(Debug)]
pub struct Local {
    /// The nodes.
    pub nodes: Vec<NodeSpec>,
    concord: PathBuf,
    dir: PathBuf,
    args: Vec<Vec<String>>,
    children: Vec<Option<tokio::process::Child>>,
}

/// The first port of a block of `10 * n` free ones (TCP and UDP), from 7300 up.
pub fn free_base(n: usize) -> anyhow::Result<u16> {
    'next: for base in (7300..=15_000).step_by(100) {
        for port in base..base + 10 * n as u16 {
            let a = SocketAddr::from(([127, 0, 0, 1], port));
            if std::net::TcpListener::bind(a).is_err() || std::net::UdpSocket::bind(a).is_err() {
                continue 'next;
            }
        }
        return Ok(base);
    }
    anyhow::bail!("no block of {} free ports on 127.0.0.1", 10 * n)
}

impl Local {
    /// Plans `spec.nodes` nodes on a free port block.
    ///
    /// # Errors
    /// When no port block is free.
    pub fn new(spec: &ClusterSpec, bins: &Bins, dir: &Path) -> anyhow::Result<Local> {
        let n = usize::from(spec.nodes);
        let base = free_base(n)?;
        let block = |k: usize| base + 10 * (k as u16 - 1);
        let mut nodes = Vec::new();
        let mut args = Vec::new();
        for k in 1..=n {
            let mut a = serve_args(k, "127.0.0.1", block, "127.0.0.1", &spec.serve_args);
            a.extend(seed_args(k, n, |j| format!("127.0.0.1:{}", block(j) + 3)));
            args.push(a);
            nodes.push(NodeSpec {
                id: format!("n{k}"),
                client_url: format!("ws://127.0.0.1:{}", block(k)),
                api_url: format!("http://127.0.0.1:{}", block(k) + 1),
                admin: SocketAddr::from(([127, 0, 0, 1], block(k) + 2)),
            });
        }
        Ok(Local {
            nodes,
            concord: bins.concord.clone(),
            dir: dir.to_path_buf(),
            children: (0..n).map(|_| None).collect(),
            args,
        })
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let mut cmd = tokio::process::Command::new(&self.concord);
        cmd.args(&self.args[i]);
        let log = self.dir.join(format!("{}.log", self.nodes[i].id));
        self.children[i] = Some(spawn_logged(cmd, &log)?);
        Ok(())
    }

    /// Starts every node.
    ///
    /// # Errors
    /// When one cannot be started.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            self.spawn(i)?;
        }
        Ok(())
    }

    fn pid(&self, i: usize) -> anyhow::Result<u32> {
        self.children[i]
            .as_ref()
            .and_then(tokio::process::Child::id)
            .with_context(|| format!("{} is not running", self.nodes[i].id))
    }

    /// Applies one op to node `i`.
    ///
    /// # Errors
    /// When the node is not in a state the op fits, or the signal failed.
    pub async fn apply(&mut self, i: usize, op: Op) -> anyhow::Result<()> {
        match op {
            Op::Kill => {
                let mut child = self.children[i]
                    .take()
                    .with_context(|| format!("{} is not running", self.nodes[i].id))?;
                child.kill().await.context("SIGKILL")?;
                Ok(())
            }
            Op::Restart => {
                if let Some(mut old) = self.children[i].take() {
                    wait_exit(&mut old, Duration::from_secs(1)).await;
                }
                self.spawn(i)
            }
            Op::Stop => super::signal(self.pid(i)?, "-STOP").await,
            Op::Cont => super::signal(self.pid(i)?, "-CONT").await,
            Op::Drain => {
                let (status, body) =
                    super::http(self.nodes[i].admin, "POST", "/admin/drain").await?;
                anyhow::ensure!(status == 202, "drain answered {status} {body}");
                if let Some(child) = self.children[i].as_mut() {
                    anyhow::ensure!(
                        wait_exit(child, Duration::from_secs(60)).await,
                        "{} did not exit within 60 s of its drain",
                        self.nodes[i].id
                    );
                }
                self.children[i] = None;
                Ok(())
            }
            Op::Partition { .. } | Op::Heal | Op::Loss(_) | Op::Latency(_) => {
                anyhow::bail!("the local driver cannot apply {op:?}")
            }
        }
    }

    /// Kills every node (the run is over; nothing is measured any more).
    pub async fn teardown(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill().await;
        }
        self.children.iter_mut().for_each(|c| *c = None);
    }
}
