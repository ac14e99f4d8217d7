//! The `netns` driver (root only): a hub namespace `cc<pid>h` holding a bridge
//! (10.77.0.1/24) and the load tester, and one namespace `cc<pid>n<k>` per node, joined to
//! the bridge by a veth pair, the node at 10.77.0.(10 + k). Faults are real network
//! faults inside the node's namespace: partitions are iptables DROP rules for the other
//! nodes' addresses (clients in the hub still reach it), loss is an iptables `statistic`
//! rule, latency is `tc netem`. The machine's own namespaces and settings are never
//! touched; teardown deletes the namespaces, which removes everything in them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use super::{Bins, NodeSpec, run, seed_args, serve_args, spawn_logged, wait_exit};
use crate::scenario::ClusterSpec;
use crate::schedule::Op;

const PORTS: u16 = 7000;

/// Nodes in network namespaces.
#[derive(Debug)]
pub struct Netns {
    /// The nodes.
    pub nodes: Vec<NodeSpec>,
    hub: String,
    spaces: Vec<String>,
    made: Vec<String>,
    concord: PathBuf,
    me: PathBuf,
    dir: PathBuf,
    args: Vec<Vec<String>>,
    children: Vec<Option<tokio::process::Child>>,
}

fn ip(k: usize) -> String {
    format!("10.77.0.{}", 10 + k)
}

impl Netns {
    /// Plans the namespaces.
    ///
    /// # Errors
    /// When not root.
    pub fn new(spec: &ClusterSpec, bins: &Bins, dir: &Path) -> anyhow::Result<Netns> {
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            });
        anyhow::ensure!(
            uid.as_deref() == Some("0"),
            "the netns driver needs root (ip netns, iptables)"
        );
        let n = usize::from(spec.nodes);
        let tag = format!("cc{}", std::process::id());
        let block = |_k: usize| PORTS;
        let mut nodes = Vec::new();
        let mut args = Vec::new();
        for k in 1..=n {
            let mut a = serve_args(k, &ip(k), block, &ip(k), &spec.serve_args);
            a.extend(seed_args(k, n, |j| format!("{}:{}", ip(j), PORTS + 3)));
            args.push(a);
            nodes.push(NodeSpec {
                id: format!("n{k}"),
                client_url: format!("ws://{}:{PORTS}", ip(k)),
                api_url: format!("http://{}:{}", ip(k), PORTS + 1),
                admin: format!("{}:{}", ip(k), PORTS + 2)
                    .parse()
                    .context("node address")?,
            });
        }
        Ok(Netns {
            nodes,
            hub: format!("{tag}h"),
            spaces: (1..=n).map(|k| format!("{tag}n{k}")).collect(),
            made: Vec::new(),
            concord: bins.concord.clone(),
            me: bins.me.clone(),
            dir: dir.to_path_buf(),
            args,
            children: (0..n).map(|_| None).collect(),
        })
    }

    async fn add_namespace(&mut self, name: &str) -> anyhow::Result<()> {
        run("ip", &["netns", "add", name]).await?;
        self.made.push(name.to_owned());
        run("ip", &["-n", name, "link", "set", "lo", "up"]).await?;
        Ok(())
    }

    /// Makes the namespaces and links, then starts every node.
    ///
    /// # Errors
    /// When a command fails (the runner tears down what was made).
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let hub = self.hub.clone();
        self.add_namespace(&hub).await?;
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"]).await?;
        run(
            "ip",
            &["-n", &hub, "addr", "add", "10.77.0.1/24", "dev", "br0"],
        )
        .await?;
        run("ip", &["-n", &hub, "link", "set", "br0", "up"]).await?;
        for (i, space) in self.spaces.clone().iter().enumerate() {
            let k = i + 1;
            self.add_namespace(space).await?;
            let veth = format!("v{k}");
            run(
                "ip",
                &[
                    "-n", &hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                    "netns", space,
                ],
            )
            .await?;
            run(
                "ip",
                &["-n", &hub, "link", "set", &veth, "master", "br0", "up"],
            )
            .await?;
            let cidr = format!("{}/24", ip(k));
            run("ip", &["-n", space, "addr", "add", &cidr, "dev", "eth0"]).await?;
            run("ip", &["-n", space, "link", "set", "eth0", "up"]).await?;
        }
        for i in 0..self.nodes.len() {
            self.spawn(i)?;
        }
        Ok(())
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.spaces[i]])
            .arg(&self.concord)
            .args(&self.args[i]);
        let log = self.dir.join(format!("{}.log", self.nodes[i].id));
        // `ip netns exec` execs the program: the child's pid is the node's.
        self.children[i] = Some(spawn_logged(cmd, &log)?);
        Ok(())
    }

    /// A command that runs `program` in the hub namespace.
    pub fn in_hub(&self, program: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.hub]).arg(program);
        cmd
    }

    /// One admin request from the hub namespace (this program's `http-get`).
    ///
    /// # Errors
    /// When the node does not answer.
    pub async fn http(
        &self,
        admin: SocketAddr,
        method: &str,
        path: &str,
    ) -> anyhow::Result<(u16, String)> {
        let mut cmd = self.in_hub(&self.me);
        cmd.args(["http-get", "--method", method, &admin.to_string(), path])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(4), cmd.output())
            .await
            .with_context(|| format!("{admin}{path}: no answer"))??;
        anyhow::ensure!(
            out.status.success(),
            "{admin}{path}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
        Ok((
            status.trim().parse().context("http-get status")?,
            body.to_owned(),
        ))
    }

    async fn tc(&self, i: usize, qdisc: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["netns", "exec", &self.spaces[i], "tc", "qdisc"];
        args.extend_from_slice(qdisc);
        run("ip", &args).await.map(drop)
    }

    async fn iptables(&self, i: usize, rule: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["netns", "exec", &self.spaces[i], "iptables", "-w"];
        args.extend_from_slice(rule);
        run("ip", &args).await.map(drop)
    }

    /// Applies one op to node `i`.
    ///
    /// # Errors
    /// When the command failed (e.g. no `sch_netem` in this kernel for latency).
    pub async fn apply(&mut self, i: usize, op: Op) -> anyhow::Result<()> {
        match op {
            Op::Kill => {
                let mut child = self.children[i].take().context("not running")?;
                child.kill().await.context("SIGKILL")
            }
            Op::Restart => {
                if let Some(mut old) = self.children[i].take() {
                    wait_exit(&mut old, Duration::from_secs(1)).await;
                }
                self.spawn(i)
            }
            Op::Stop | Op::Cont => {
                let pid = self.children[i]
                    .as_ref()
                    .and_then(tokio::process::Child::id)
                    .context("not running")?;
                super::signal(pid, if op == Op::Stop { "-STOP" } else { "-CONT" }).await
            }
            Op::Drain => {
                let (status, body) = self
                    .http(self.nodes[i].admin, "POST", "/admin/drain")
                    .await?;
                anyhow::ensure!(status == 202, "drain answered {status} {body}");
                if let Some(child) = self.children[i].as_mut() {
                    anyhow::ensure!(
                        wait_exit(child, Duration::from_secs(60)).await,
                        "did not exit within 60 s of its drain"
                    );
                }
                self.children[i] = None;
                Ok(())
            }
            Op::Partition { inbound_only } => {
                for j in (1..=self.nodes.len()).filter(|j| *j != i + 1) {
                    let other = ip(j);
                    self.iptables(i, &["-A", "INPUT", "-s", &other, "-j", "DROP"])
                        .await?;
                    if !inbound_only {
                        self.iptables(i, &["-A", "OUTPUT", "-d", &other, "-j", "DROP"])
                            .await?;
                    }
                }
                Ok(())
            }
            Op::Loss(percent) => {
                let p = format!("{:.2}", f64::from(percent) / 100.0);
                self.iptables(
                    i,
                    &[
                        "-A",
                        "INPUT",
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &p,
                        "-j",
                        "DROP",
                    ],
                )
                .await
            }
            Op::Latency(ms) => {
                let delay = format!("{ms}ms");
                self.tc(i, &["add", "dev", "eth0", "root", "netem", "delay", &delay])
                    .await
                    .context("tc netem (this kernel may lack sch_netem)")
            }
            Op::Heal => {
                self.iptables(i, &["-F", "INPUT"]).await?;
                self.iptables(i, &["-F", "OUTPUT"]).await?;
                // Only there after a latency fault.
                let _ = self.tc(i, &["del", "dev", "eth0", "root"]).await;
                Ok(())
            }
        }
    }

    /// Kills the nodes and deletes every namespace made (links, rules and qdiscs go with
    /// them).
    pub async fn teardown(&mut self) {
        for child in self.children.iter_mut().flatten() {
            if let Some(pid) = child.id() {
                let _ = super::signal(pid, "-CONT").await;
            }
            let _ = child.kill().await;
        }
        self.children.iter_mut().for_each(|c| *c = None);
        for space in self.made.drain(..).rev() {
            if let Err(e) = run("ip", &["netns", "del", &space]).await {
                eprintln!("concord-chaos: could not delete namespace {space}: {e:#}");
            }
        }
    }
}
