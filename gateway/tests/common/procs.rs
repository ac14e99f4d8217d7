//! Node processes for whole-cluster tests: `concord serve` on reserved loopback ports,
//! killed (SIGKILL) and reaped when dropped, logs printed when a test fails.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The cluster secret every test node uses.
pub const SECRET: &str = "cluster-test-secret";

/// A client token for a node process (their token secret is `t`), valid for an hour.
pub fn token(uid: u64, guilds: &[u64]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = concord_protocol::token::Claims {
        uid,
        name: format!("user{uid}"),
        guilds: guilds.to_vec(),
        exp,
        bot: true,
    };
    concord_protocol::token::mint(b"t", &claims)
}

/// Ports of one node, reserved up front so a restart reuses them.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub client: SocketAddr,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    pub gossip: SocketAddr,
    pub peer: SocketAddr,
}

pub fn reserve_ports(n: usize) -> Vec<Ports> {
    // Hold every socket until all are chosen, so no two nodes get the same port.
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for _ in 0..n {
        for _ in 0..4 {
            tcp.push(TcpListener::bind("127.0.0.1:0").unwrap());
        }
        udp.push(UdpSocket::bind("127.0.0.1:0").unwrap());
    }
    let addr = |l: &TcpListener| l.local_addr().unwrap();
    (0..n)
        .map(|i| Ports {
            client: addr(&tcp[4 * i]),
            api: addr(&tcp[4 * i + 1]),
            admin: addr(&tcp[4 * i + 2]),
            gossip: udp[i].local_addr().unwrap(),
            peer: addr(&tcp[4 * i + 3]),
        })
        .collect()
}

/// A node process; killed (SIGKILL) and reaped on drop. Its log goes to a file, printed
/// when the test fails.
pub struct NodeProc {
    pub id: String,
    pub child: Child,
    pub log: PathBuf,
}

impl NodeProc {
    pub fn spawn(id: &str, ports: Ports, seeds: &[SocketAddr]) -> NodeProc {
        NodeProc::spawn_with(id, ports, seeds, &[])
    }

    pub fn spawn_with(id: &str, ports: Ports, seeds: &[SocketAddr], extra: &[&str]) -> NodeProc {
        static SPAWNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SPAWNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!(
            "concord-cluster-test-{}-{id}-{n}.log",
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_concord"));
        cmd.arg("serve")
            // If the test process dies, the node sees its stdin close and exits.
            .arg("--exit-with-stdin")
            .args(["--node-id", id])
            .args(["--listen", &ports.client.to_string()])
            .args(["--api-listen", &ports.api.to_string()])
            .args(["--admin-listen", &ports.admin.to_string()])
            .args(["--gossip-listen", &ports.gossip.to_string()])
            .args(["--peer-listen", &ports.peer.to_string()])
            .args(["--cluster-secret", SECRET])
            .args(if extra.contains(&"--drain-grace") {
                &[][..]
            } else {
                &["--drain-grace", "1s"][..]
            })
            // CONCORD_TEST_NODE_LOG=concord_gateway=debug shows more when a test fails.
            .args([
                "--log",
                &std::env::var("CONCORD_TEST_NODE_LOG").unwrap_or_else(|_| "info".into()),
            ])
            .env("CONCORD_TOKEN_SECRET", "t")
            .env("CONCORD_PUBLISH_SECRET", "p")
            .stdin(Stdio::piped())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file));
        for seed in seeds {
            cmd.args(["--seed", &seed.to_string()]);
        }
        cmd.args(extra);
        NodeProc {
            id: id.into(),
            child: cmd.spawn().unwrap(),
            log,
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(&self.log) {
                let _ = f.read_to_string(&mut text);
            }
            let tail: Vec<&str> = text
                .lines()
                .rev()
                .take(
                    std::env::var("CONCORD_TEST_LOG_LINES")
                        .ok()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(60),
                )
                .collect();
            eprintln!("--- {} log (newest first) ---", self.id);
            for line in tail {
                eprintln!("{line}");
            }
        }
        // CONCORD_TEST_KEEP_LOGS=1 keeps them (in the temp dir) for a closer look.
        if std::env::var_os("CONCORD_TEST_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
