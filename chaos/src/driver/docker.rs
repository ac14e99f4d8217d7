//! The `docker` driver: containers of the `concord` image (`deploy/image/build.sh`) on a
//! private network `concord-chaos-<pid>` with fixed addresses (10.213.x.(10 + k)). The
//! tool and the load tester reach them at those addresses (the host routes to its bridge
//! networks), not through published ports: Docker's userland proxy accepts a connection
//! even when the container behind it is dead, which a publisher would have to count as
//! an unknown outcome. kill is `docker kill`, stop
//! and cont are `docker pause` / `unpause` (the freezer: a gray failure), restart is
//! `docker start`, drain runs `concord drain` inside the container (the Kubernetes preStop
//! hook), a partition disconnects the container from the network. Teardown removes the
//! containers and the network.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use super::{CLUSTER_SECRET, NodeSpec, PUBLISH_SECRET, TOKEN_SECRET, run};
use crate::scenario::ClusterSpec;
use crate::schedule::Op;

/// Node containers.
#[derive(Debug)]
pub struct Docker {
    /// The nodes.
    pub nodes: Vec<NodeSpec>,
    image: String,
    network: String,
    subnet: u8,
    containers: Vec<String>,
    made: Vec<String>,
    network_made: bool,
    serve_args: Vec<String>,
    base: u16,
    dir: PathBuf,
}

impl Docker {
    /// Plans the containers.
    ///
    /// # Errors
    /// When no host port block is free.
    pub fn new(spec: &ClusterSpec, dir: &Path) -> anyhow::Result<Docker> {
        let n = usize::from(spec.nodes);
        let base = super::local::free_base(n)?;
        let tag = format!("concord-chaos-{}", std::process::id());
        // Addresses are filled in by `start`, once the network's subnet is known.
        let nodes = (1..=n)
            .map(|k| NodeSpec {
                id: format!("n{k}"),
                client_url: String::new(),
                api_url: String::new(),
                admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            })
            .collect();
        Ok(Docker {
            nodes,
            image: spec.image.clone(),
            network: tag.clone(),
            subnet: 0,
            containers: (1..=n).map(|k| format!("{tag}-n{k}")).collect(),
            made: Vec::new(),
            network_made: false,
            serve_args: spec.serve_args.clone(),
            base,
            dir: dir.to_path_buf(),
        })
    }

    fn ip(&self, k: usize) -> String {
        format!("10.213.{}.{}", self.subnet, 10 + k)
    }

    /// Creates the network and starts every container.
    ///
    /// # Errors
    /// When the image is missing or docker refuses.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        run("docker", &["image", "inspect", &self.image])
            .await
            .with_context(|| {
                format!(
                    "no image {}: build it with deploy/image/build.sh",
                    self.image
                )
            })?;
        // A /24 no other network on this engine uses.
        let first = (std::process::id() % 200) as u8;
        let mut last_err = None;
        for offset in 0..20u8 {
            let subnet = first.wrapping_add(offset * 7) % 250;
            let cidr = format!("10.213.{subnet}.0/24");
            match run(
                "docker",
                &["network", "create", "--subnet", &cidr, &self.network],
            )
            .await
            {
                Ok(_) => {
                    self.subnet = subnet;
                    self.network_made = true;
                    last_err = None;
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        if let Some(e) = last_err {
            return Err(e.context("docker network create"));
        }
        let n = self.nodes.len();
        for k in 1..=n {
            let ip = self.ip(k);
            let node = &mut self.nodes[k - 1];
            node.client_url = format!("ws://{ip}:8080");
            node.api_url = format!("http://{ip}:8081");
            node.admin = format!("{ip}:9090").parse().context("container address")?;
        }
        for k in 1..=n {
            let port = self.base + 10 * (k as u16 - 1);
            let seeds: Vec<String> = (1..=n)
                .filter(|j| *j != k)
                .map(|j| format!("{}:7946", self.ip(j)))
                .collect();
            let ip = self.ip(k);
            let env = [
                format!("CONCORD_NODE_ID=n{k}"),
                "CONCORD_GOSSIP_LISTEN=0.0.0.0:7946".into(),
                format!("CONCORD_GOSSIP_ADVERTISE={ip}:7946"),
                "CONCORD_PEER_LISTEN=0.0.0.0:7947".into(),
                format!("CONCORD_PEER_ADVERTISE={ip}:7947"),
                format!("CONCORD_SEEDS={}", seeds.join(",")),
                "CONCORD_BOOTSTRAP_NODE=n1".into(),
                format!("CONCORD_PUBLIC_URL=ws://{ip}:8080"),
                format!("CONCORD_PUBLIC_API_URL=http://{ip}:8081"),
                format!("CONCORD_TOKEN_SECRET={TOKEN_SECRET}"),
                format!("CONCORD_PUBLISH_SECRET={PUBLISH_SECRET}"),
                format!("CONCORD_CLUSTER_SECRET={CLUSTER_SECRET}"),
            ];
            let ports = [
                format!("127.0.0.1:{port}:8080"),
                format!("127.0.0.1:{}:8081", port + 1),
                format!("127.0.0.1:{}:9090", port + 2),
            ];
            let name = self.containers[k - 1].clone();
            let hostname = format!("n{k}");
            let mut args: Vec<&str> = vec![
                "run",
                "-d",
                "--name",
                &name,
                "--hostname",
                &hostname,
                "--network",
                &self.network,
                "--ip",
                &ip,
            ];
            for e in &env {
                args.extend(["-e", e.as_str()]);
            }
            for p in &ports {
                args.extend(["-p", p.as_str()]);
            }
            args.push(&self.image);
            args.push("serve");
            args.extend(self.serve_args.iter().map(String::as_str));
            run("docker", &args).await?;
            self.made.push(name);
        }
        Ok(())
    }

    async fn running(&self, i: usize) -> bool {
        run(
            "docker",
            &["inspect", "-f", "{{.State.Running}}", &self.containers[i]],
        )
        .await
        .is_ok_and(|s| s.trim() == "true")
    }

    /// Applies one op to node `i`.
    ///
    /// # Errors
    /// When docker refuses.
    pub async fn apply(&mut self, i: usize, op: Op) -> anyhow::Result<()> {
        let c = self.containers[i].clone();
        match op {
            Op::Kill => run("docker", &["kill", &c]).await.map(drop),
            Op::Restart => run("docker", &["start", &c]).await.map(drop),
            Op::Stop => run("docker", &["pause", &c]).await.map(drop),
            Op::Cont => run("docker", &["unpause", &c]).await.map(drop),
            Op::Drain => {
                // The hook is killed with the container when the node exits (137).
                let _ = run(
                    "docker",
                    &[
                        "exec",
                        &c,
                        "/usr/local/bin/concord",
                        "drain",
                        "--wait",
                        "60s",
                    ],
                )
                .await;
                for _ in 0..600 {
                    if !self.running(i).await {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                anyhow::bail!("{c} still runs 60 s after its drain")
            }
            Op::Partition {
                inbound_only: false,
            } => run("docker", &["network", "disconnect", &self.network, &c])
                .await
                .map(drop),
            Op::Heal => {
                let ip = self.ip(i + 1);
                run(
                    "docker",
                    &["network", "connect", "--ip", &ip, &self.network, &c],
                )
                .await
                .map(drop)
            }
            Op::Partition { inbound_only: true } | Op::Loss(_) | Op::Latency(_) => {
                anyhow::bail!("the docker driver cannot apply {op:?} (use netns)")
            }
        }
    }

    /// Saves each container's log to the run directory, then removes the containers and
    /// the network.
    pub async fn teardown(&mut self) {
        for c in self.made.drain(..).collect::<Vec<_>>() {
            if let Ok(out) = tokio::process::Command::new("docker")
                .args(["logs", &c])
                .output()
                .await
            {
                let mut log = out.stdout;
                log.extend_from_slice(&out.stderr);
                let id = c.rsplit('-').next().unwrap_or("node");
                let _ = std::fs::write(self.dir.join(format!("{id}.log")), log);
            }
            let _ = run("docker", &["unpause", &c]).await;
            if let Err(e) = run("docker", &["rm", "-f", &c]).await {
                eprintln!("concord-chaos: could not remove container {c}: {e:#}");
            }
        }
        if self.network_made {
            self.network_made = false;
            if let Err(e) = run("docker", &["network", "rm", &self.network]).await {
                eprintln!(
                    "concord-chaos: could not remove network {}: {e:#}",
                    self.network
                );
            }
        }
    }
}
