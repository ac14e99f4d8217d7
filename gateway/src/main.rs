//! `concord`: run a node, run a local cluster, or mint a client token.

use std::io::{IsTerminal as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use concord_gateway::ServeArgs;
use concord_gateway::config::{Config, HumanDuration};
use concord_protocol::admin_http;
use concord_protocol::token::{self, Claims};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "concord", version, about = "Concord gateway node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (embedded, in-memory; no external services needed).
    Serve(Box<ServeCommand>),
    /// A local cluster: `concord cluster up --nodes 3`.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Mint a client token.
    Token(TokenArgs),
    /// Ask a node's admin port whether it is healthy (`/healthz`) or ready (`/readyz`);
    /// exits 0 if so. The container image's health check, which has no shell or curl.
    Health(HealthArgs),
    /// Drain a node through its admin port (`POST /admin/drain`) and wait for it to exit:
    /// a preStop hook for images without curl.
    Drain(DrainArgs),
    /// zstd-dict dictionaries: build a corpus, train, benchmark.
    Dict {
        #[command(subcommand)]
        command: concord_gateway::dict_cli::DictCommand,
    },
}

#[derive(Args)]
struct ServeCommand {
    #[command(flatten)]
    args: ServeArgs,
    /// Drain and exit when standard input closes, so a parent that dies (even by SIGKILL)
    /// takes the node with it. `concord cluster up` starts its nodes this way.
    #[arg(long, hide = true)]
    exit_with_stdin: bool,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Start N nodes on loopback, each its own `concord serve` process on its own ports,
    /// print their URLs, and stop them all on Ctrl-C or SIGTERM.
    Up(UpArgs),
}

#[derive(Args)]
struct UpArgs {
    /// How many nodes (n1..nN).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
    nodes: u16,
    /// Node k listens on base + 10 (k - 1) + 0 client, 1 API, 2 admin, 3 gossip (UDP),
    /// 4 peer.
    #[arg(long, default_value_t = 7000)]
    base_port: u16,
    /// The cluster secret [default: a random one for this run].
    #[arg(long, env = "CONCORD_CLUSTER_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// The address every node binds and advertises.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// More `concord serve` flags for every node, after `--`.
    #[arg(last = true)]
    serve_args: Vec<String>,
}

#[derive(Args)]
struct HealthArgs {
    /// The node's admin address; an unspecified IP (0.0.0.0) means loopback.
    #[arg(long, env = "CONCORD_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    admin: SocketAddr,
    /// Check `/readyz` (on the ring, no handoff running) instead of `/healthz`.
    #[arg(long)]
    ready: bool,
    /// How long to wait for the answer.
    #[arg(long, default_value = "2s")]
    timeout: HumanDuration,
}

#[derive(Args)]
struct DrainArgs {
    /// The node's admin address; an unspecified IP (0.0.0.0) means loopback.
    #[arg(long, env = "CONCORD_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    admin: SocketAddr,
    /// Wait up to this long for the node to hand off and exit, e.g. `50s`.
    #[arg(long)]
    wait: Option<HumanDuration>,
}

#[derive(Args)]
struct TokenArgs {
    /// The node's token secret.
    #[arg(long, env = "CONCORD_TOKEN_SECRET", hide_env_values = true)]
    secret: String,
    /// The user's id.
    #[arg(long)]
    user_id: u64,
    /// The user's name.
    #[arg(long)]
    username: String,
    /// Guild ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    guilds: Vec<u64>,
    /// How long the token is valid.
    #[arg(long, default_value = "24h")]
    ttl: HumanDuration,
    /// Mark the user as a bot.
    #[arg(long)]
    bot: bool,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Token(args) => {
            println!(
                "{}",
                mint(
                    &args.secret,
                    args.user_id,
                    &args.username,
                    args.guilds,
                    args.ttl.0,
                    args.bot
                )
            );
            Ok(())
        }
        Command::Dict { command } => concord_gateway::dict_cli::run(command),
        Command::Health(args) => health(&args),
        Command::Drain(args) => drain(&args),
        Command::Serve(command) => {
            let ServeCommand {
                args,
                exit_with_stdin,
            } = *command;
            let config = args.with_file()?.resolve()?;
            init_tracing(&config.log);
            runtime()?.block_on(serve(config, exit_with_stdin))
        }
        Command::Cluster {
            command: ClusterCommand::Up(args),
        } => runtime()?.block_on(cluster_up(args)),
    }
}

/// `/healthz` or `/readyz`: exits 0 on 200.
fn health(args: &HealthArgs) -> anyhow::Result<()> {
    let path = if args.ready { "/readyz" } else { "/healthz" };
    let addr = loopback_if_unspecified(args.admin);
    let (status, body) = admin_request(addr, "GET", path, args.timeout.0)?;
    if status == 200 {
        println!("{path}: {body}");
        Ok(())
    } else {
        anyhow::bail!("{path} at {addr}: {status} {body}")
    }
}

/// `POST /admin/drain`, then (with `--wait`) waits until the node has handed off and
/// exited: a Kubernetes preStop hook, so the pod's SIGTERM finds nothing left to do.
fn drain(args: &DrainArgs) -> anyhow::Result<()> {
    let addr = loopback_if_unspecified(args.admin);
    let step = Duration::from_secs(2);
    let (status, body) = admin_request(addr, "POST", "/admin/drain", step)?;
    if status != 202 {
        anyhow::bail!("/admin/drain at {addr}: {status} {body}");
    }
    println!("draining {addr}");
    let Some(wait) = args.wait else {
        return Ok(());
    };
    let until = Instant::now() + wait.0;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(250));
        if admin_request(addr, "GET", "/healthz", step).is_err() {
            println!("drained: the node has exited");
            return Ok(());
        }
    }
    anyhow::bail!("{addr} still runs {wait} after the drain began")
}

fn loopback_if_unspecified(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => IpAddr::from([127, 0, 0, 1]),
            SocketAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        });
    }
    addr
}

/// One HTTP/1.0 request to the admin port ([`admin_http`]): its status and body.
fn admin_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot reach the admin port at {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&admin_http::request(method, path, &addr.to_string()))?;
    let mut answer = Vec::new();
    stream
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .with_context(|| format!("no answer from {addr}{path}"))?;
    let (status, body) =
        admin_http::parse_response(&answer).with_context(|| format!("{addr}{path}"))?;
    Ok((status, body.trim().to_owned()))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

fn mint(
    secret: &str,
    user_id: u64,
    username: &str,
    guilds: Vec<u64>,
    ttl: Duration,
    bot: bool,
) -> String {
    let now = concord_gateway::conn::unix_now();
    let claims = Claims {
        uid: user_id,
        name: username.to_owned(),
        guilds,
        exp: now + ttl.as_secs(),
        bot,
    };
    token::mint(secret.as_bytes(), &claims)
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: a container's log is read by machines.
        .with_ansi(std::io::stdout().is_terminal())
        // By default a failed log write is reported with `eprintln!`, which panics when
        // stderr is a closed pipe (a `cluster up` parent that died): a node must outlive
        // its log reader, so drop such events instead.
        .log_internal_errors(false)
        .init();
}

async fn serve(config: Config, exit_with_stdin: bool) -> anyhow::Result<()> {
    let listeners = concord_gateway::Listeners::bind(&config).await?;
    let dev_mode = config.dev_mode;
    let token_secret = config.token_secret.clone();
    let publish_secret = config.publish_secret.clone();
    let node = concord_gateway::start(config, listeners).await?;
    tracing::info!(
        client = %node.public_url,
        api = %format!("http://{}", node.api_addr),
        admin = %format!("http://{}", node.admin_addr),
        "concord node ready"
    );
    if dev_mode {
        tracing::warn!(
            "DEV MODE: no --token-secret/--publish-secret set; using well-known dev secrets. Do not expose this node."
        );
        let dev_token = mint(
            &token_secret,
            1,
            "dev",
            vec![1],
            Duration::from_secs(86_400),
            true,
        );
        // Printing must never take the node down (stdout may be a closed pipe).
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "dev token (user 1, guild 1): {dev_token}");
        let _ = writeln!(
            out,
            "publish:  curl -X POST http://{}/v1/guilds/1/events -H 'Authorization: Bearer {publish_secret}' -d '{{\"t\":\"MESSAGE_CREATE\",\"d\":{{\"content\":\"hi\"}}}}'",
            node.api_addr
        );
        let _ = out.flush();
    }
    if let Some(gossip) = node.gossip_addr {
        tracing::info!(%gossip, "clustered: GET /cluster on the admin port shows members and ring");
    }
    if exit_with_stdin {
        let drain = node.drain_token();
        // A plain thread: reading stdin blocks, and this one only ever waits for EOF.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            // Drain first: a parent that died took our stderr with it.
            drain.cancel();
            tracing::info!("stdin closed, draining");
        });
    }
    let drain = node.drain_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received, draining");
        drain.cancel();
    });
    node.wait().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// One node of `concord cluster up`.
struct UpNode {
    id: String,
    client: SocketAddr,
    api: SocketAddr,
    admin: SocketAddr,
    gossip: SocketAddr,
    child: tokio::process::Child,
    exited: Option<std::process::ExitStatus>,
}

/// Writes a line to stdout, ignoring a closed pipe (printing must not kill the parent,
/// whose job is to stop the children).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn cluster_up(args: UpArgs) -> anyhow::Result<()> {
    let n = args.nodes;
    let top = u32::from(args.base_port) + 10 * u32::from(n - 1) + 4;
    anyhow::ensure!(
        args.base_port > 0 && top <= u32::from(u16::MAX),
        "--base-port {} leaves no room for {n} nodes (10 ports each)",
        args.base_port
    );
    let exe = std::env::current_exe().context("cannot find the concord binary to re-run")?;
    let secret = args.secret.unwrap_or_else(|| {
        let bytes: [u8; 16] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    });
    let at = |port: u32| SocketAddr::new(args.host, u16::try_from(port).unwrap_or(u16::MAX));
    let seed = at(u32::from(args.base_port) + 3);
    let wants_log = args.serve_args.iter().any(|a| a.starts_with("--log"))
        || std::env::var_os("CONCORD_LOG").is_some();

    let mut nodes: Vec<UpNode> = Vec::new();
    for k in 1..=n {
        let base = u32::from(args.base_port) + 10 * u32::from(k - 1);
        let id = format!("n{k}");
        let (client, api, admin, gossip, peer) = (
            at(base),
            at(base + 1),
            at(base + 2),
            at(base + 3),
            at(base + 4),
        );
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("serve")
            .arg("--exit-with-stdin")
            .args(["--node-id", &id])
            .args(["--listen", &client.to_string()])
            .args(["--api-listen", &api.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--gossip-listen", &gossip.to_string()])
            .args(["--peer-listen", &peer.to_string()]);
        if k > 1 {
            cmd.args(["--seed", &seed.to_string()]);
        }
        if !wants_log {
            cmd.args(["--log", "warn,concord=info,concord_gateway::cluster=info"]);
        }
        if !std::io::stdout().is_terminal() {
            // Colour codes only help a terminal.
            cmd.env("NO_COLOR", "1");
        }
        cmd.args(&args.serve_args)
            // In the environment, not on the command line, where `ps` would show it.
            .env("CONCORD_CLUSTER_SECRET", &secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Killed if this process unwinds; if it is killed outright, the children see
            // their stdin close and drain.
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                stop_all(&mut nodes).await;
                return Err(e).context(format!("cannot start node {id}"));
            }
        };
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward(id.clone(), out));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward(id.clone(), err));
        }
        nodes.push(UpNode {
            id,
            client,
            api,
            admin,
            gossip,
            child,
            exited: None,
        });
    }

    say(&format!(
        "{:<4} {:<24} {:<24} {:<24} gossip",
        "node", "client", "api", "admin"
    ));
    for node in &nodes {
        say(&format!(
            "{:<4} {:<24} {:<24} {:<24} {}",
            node.id,
            format!("ws://{}", node.client),
            format!("http://{}", node.api),
            format!("http://{}", node.admin),
            node.gossip
        ));
    }

    let started = Instant::now();
    let outcome = tokio::select! {
        converged = converge(&mut nodes, Duration::from_secs(30)) => Some(converged),
        () = wait_for_signal() => None,
    };
    match outcome {
        Some(Ok(version)) => {
            say(&format!(
                "cluster up: {n} active nodes agree on ring {version} ({} ms). GET /cluster on any admin URL; Ctrl-C stops every node.",
                started.elapsed().as_millis()
            ));
        }
        Some(Err(e)) => {
            stop_all(&mut nodes).await;
            return Err(e);
        }
        None => {
            say("stopping every node");
            stop_all(&mut nodes).await;
            return Ok(());
        }
    }

    // A node may drain on its own (`POST /admin/drain`): report it and keep the rest.
    let signal = wait_for_signal();
    tokio::pin!(signal);
    let mut running = nodes.len();
    loop {
        tokio::select! {
            () = &mut signal => break,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        for node in &mut nodes {
            if node.exited.is_none()
                && let Ok(Some(status)) = node.child.try_wait()
            {
                say(&format!("{} exited ({status})", node.id));
                node.exited = Some(status);
                running -= 1;
            }
        }
        if running == 0 {
            say("every node has exited");
            return Ok(());
        }
    }
    say("stopping every node");
    stop_all(&mut nodes).await;
    Ok(())
}

/// Copies a child's output to ours, each line prefixed with the node id.
async fn forward(id: String, stream: impl tokio::io::AsyncRead + Unpin) {
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        say(&format!("[{id}] {line}"));
    }
}

/// Waits until every node reports the same ring version with every node active. Fails
/// if a node exits first or `limit` passes.
async fn converge(nodes: &mut [UpNode], limit: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        for node in nodes.iter_mut() {
            if let Ok(Some(status)) = node.child.try_wait() {
                anyhow::bail!("node {} exited during startup ({status})", node.id);
            }
        }
        let mut versions = std::collections::BTreeSet::new();
        let mut all_active = true;
        for node in nodes.iter() {
            let view = get_json(node.admin, "/cluster").await;
            let active = view.as_ref().map_or(0, |v| {
                v["members"]
                    .as_array()
                    .map_or(0, |m| m.iter().filter(|m| m["state"] == "active").count())
            });
            all_active &= active == nodes.len();
            versions.insert(view.and_then(|v| v["ring_version"].as_str().map(str::to_owned)));
        }
        if all_active
            && versions.len() == 1
            && let Some(Some(version)) = versions.pop_first()
        {
            return Ok(version);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the nodes did not agree on a ring within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drains every node and waits for it; kills one that has not exited in time.
async fn stop_all(nodes: &mut [UpNode]) {
    // Closing a node's stdin drains it exactly as SIGTERM does (op 7 to clients, leave
    // the ring, tell the cluster it left), without needing a signal API.
    for node in nodes.iter_mut() {
        drop(node.child.stdin.take());
    }
    // The default drain grace is 10 s; leave room beyond it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for node in nodes.iter_mut().filter(|n| n.exited.is_none()) {
        match tokio::time::timeout_at(deadline, node.child.wait()).await {
            Ok(Ok(status)) => say(&format!("{} stopped ({status})", node.id)),
            _ => {
                let _ = node.child.start_kill();
                let _ = node.child.wait().await;
                say(&format!("{} did not stop in time and was killed", node.id));
            }
        }
    }
}

/// `GET path` on `addr` over plain HTTP/1.1, parsed as JSON. `None` on any failure (the
/// node may still be starting).
async fn get_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        Some(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(2), io)
        .await
        .ok()??;
    let text = String::from_utf8(response).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    serde_json::from_str(body).ok()
}
