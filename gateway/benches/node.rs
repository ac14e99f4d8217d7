//! Node benchmarks against the real `concord` binary on loopback.
//!
//! `cargo bench -p concord-gateway --bench node` starts fresh node processes and drives
//! them with WebSocket clients from this process, reading the node's RSS and CPU time from
//! `/proc`. It prints one JSON line per scenario:
//!
//! - `idle`: node RSS per idle identified session (10,000 sessions by default);
//! - `fanout`: publish-to-receive latency at a fan-out of 1,000 sessions on one node;
//! - `cpu`: node CPU time per delivered dispatch with no compression, zlib-stream and
//!   zstd-stream, plus wire bytes per dispatch from the node's own metrics;
//! - `compressor`: per-connection compressor memory at the lean and Discord zstd settings.
//!
//! Options: `--sessions N` (idle), `--fanout N`, `--events N`, `--rate N` (events/s).
//! Load stays on 127.0.0.1 and every loop is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use concord_protocol::codec::{Compression, Decoder, Encoder, ZstdParams};
use concord_protocol::token::{self, Claims};
use concord_protocol::zstd_dict::{self, DictSet, Dictionary};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const TOKEN_SECRET: &str = "bench-token-secret";
const PUBLISH_SECRET: &str = "bench-publish-secret";

struct Args {
    only: Option<String>,
    sessions: usize,
    fanout: usize,
    events: usize,
    rate: u64,
}

fn args() -> Args {
    let mut a = Args {
        only: None,
        sessions: 10_000,
        fanout: 1_000,
        events: 1_000,
        rate: 200,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let v = || argv.get(i + 1).and_then(|s| s.parse().ok());
        match argv[i].as_str() {
            "--sessions" => a.sessions = v().unwrap_or(a.sessions),
            "--fanout" => a.fanout = v().unwrap_or(a.fanout),
            "--events" => a.events = v().unwrap_or(a.events),
            "--only" => a.only = argv.get(i + 1).cloned(),
            "--rate" => a.rate = v().map(|x: usize| x as u64).unwrap_or(a.rate),
            _ => {}
        }
        i += 1;
    }
    a
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A node process that is killed on drop (with an optional `perf record` attached).
struct NodeProc {
    child: Child,
    perf: Option<Child>,
    client: u16,
    api: u16,
    admin: u16,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Some(mut perf) = self.perf.take() {
            let _ = Command::new("kill")
                .args(["-INT", &perf.id().to_string()])
                .status();
            let _ = perf.wait();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProc {
    async fn start(extra: &[&str]) -> NodeProc {
        let (client, api, admin) = (free_port(), free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_concord"))
            .args([
                "serve",
                "--log",
                "warn",
                "--token-secret",
                TOKEN_SECRET,
                "--publish-secret",
                PUBLISH_SECRET,
            ])
            .args(["--listen", &format!("127.0.0.1:{client}")])
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args([
                "--identify-max-concurrency",
                "1000000",
                "--max-connections",
                "19000",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn concord");
        // CONCORD_BENCH_PERF=prefix profiles every node with `perf record -e cpu-clock -g`.
        let perf = std::env::var("CONCORD_BENCH_PERF").ok().map(|prefix| {
            Command::new("perf")
                .args([
                    "record",
                    "-q",
                    "-e",
                    "cpu-clock",
                    "-g",
                    "-p",
                    &child.id().to_string(),
                ])
                .args(["-o", &format!("{prefix}.{client}.data")])
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn perf")
        });
        let node = NodeProc {
            child,
            perf,
            client,
            api,
            admin,
        };
        let url = format!("http://127.0.0.1:{}/healthz", node.admin);
        for _ in 0..200 {
            if reqwest::get(&url).await.is_ok() {
                return node;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node did not start");
    }

    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb * 1024
    }

    /// utime + stime in nanoseconds.
    fn cpu_ns(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        // Fields 14 and 15 of /proc/pid/stat, counted from the state field (3).
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks * 10_000_000 // USER_HZ = 100
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    async fn publish(&self, http: &reqwest::Client, guild: u64, d: Value) {
        let r = http
            .post(format!(
                "http://127.0.0.1:{}/v1/guilds/{guild}/events",
                self.api
            ))
            .bearer_auth(PUBLISH_SECRET)
            .json(&json!({"t": "MESSAGE_CREATE", "d": d}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
}

fn mint(uid: u64, guilds: Vec<u64>) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    token::mint(
        TOKEN_SECRET.as_bytes(),
        &Claims {
            uid,
            name: format!("u{uid}"),
            guilds,
            exp,
            bot: false,
        },
    )
}

fn client_ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects, identifies and waits for READY and the GUILD_CREATEs.
/// The transport a bench client asks for.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Stream(Compression),
    Dict,
}

impl Mode {
    fn query(self) -> String {
        match self {
            Mode::Stream(c) => c
                .as_query()
                .map(|c| format!("&compress={c}"))
                .unwrap_or_default(),
            Mode::Dict => "&compress=zstd-dict".into(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Stream(c) => c.as_query().unwrap_or("none"),
            Mode::Dict => "zstd-dict",
        }
    }
}

/// A client-side decoder for either kind of transport.
struct ClientDecoder {
    stream: Option<Decoder>,
    dict: Option<(zstd_dict::Decoder, DictSet)>,
}

impl ClientDecoder {
    fn new(mode: Mode) -> ClientDecoder {
        match mode {
            Mode::Stream(c) => ClientDecoder {
                stream: Some(Decoder::new(c, 1 << 24).unwrap()),
                dict: None,
            },
            Mode::Dict => ClientDecoder {
                stream: None,
                dict: Some((
                    zstd_dict::Decoder::new(1 << 24),
                    [Dictionary::default_shipped()].into_iter().collect(),
                )),
            },
        }
    }

    fn decode(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        match (&mut self.stream, &mut self.dict) {
            (Some(d), _) => d.decode(bytes, out).unwrap(),
            (None, Some((d, dicts))) => {
                d.decode(bytes, dicts, out).unwrap();
            }
            (None, None) => unreachable!(),
        }
    }
}

async fn session(port: u16, compress: Mode, uid: u64, guilds: Vec<u64>) -> (Ws, ClientDecoder) {
    let q = compress.query();
    let url = format!("ws://127.0.0.1:{port}/?v=10&encoding=json{q}");
    let mut attempt = 0;
    let (mut ws, _) = loop {
        match tokio_tungstenite::connect_async_with_config(&url, Some(client_ws_config()), true)
            .await
        {
            Ok(x) => break x,
            Err(e) if attempt < 20 => {
                attempt += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
            }
            Err(e) => panic!("connect: {e}"),
        }
    };
    let mut dec = ClientDecoder::new(compress);
    let n_guilds = guilds.len();
    let identify =
        json!({"op": 2, "d": {"token": mint(uid, guilds), "intents": 513, "properties": {}}});
    ws.send(Message::text(identify.to_string())).await.unwrap();
    let mut dispatches = 0;
    let mut last_seq = 0;
    while dispatches < 1 + n_guilds {
        let v = next_json(&mut ws, &mut dec)
            .await
            .expect("session closed during identify");
        if v["op"] == 0 {
            dispatches += 1;
            last_seq = v["s"].as_u64().unwrap();
        }
    }
    // Heartbeat once with the last seq, as every real client soon does; the ACK follows.
    ws.send(Message::text(json!({"op": 1, "d": last_seq}).to_string()))
        .await
        .unwrap();
    loop {
        let v = next_json(&mut ws, &mut dec)
            .await
            .expect("session closed before the heartbeat ack");
        if v["op"] == 11 {
            break;
        }
    }
    (ws, dec)
}

async fn next_json(ws: &mut Ws, dec: &mut ClientDecoder) -> Option<Value> {
    loop {
        let bytes = match ws.next().await? {
            Ok(Message::Text(t)) => t.as_bytes().to_vec(),
            Ok(Message::Binary(b)) => b.to_vec(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        };
        let mut out = Vec::new();
        dec.decode(&bytes, &mut out);
        return serde_json::from_slice(&out).ok();
    }
}

/// Opens `n` sessions with `concurrency` in flight at once.
async fn open_sessions(
    port: u16,
    compress: Mode,
    n: usize,
    guilds: impl Fn(usize) -> Vec<u64>,
) -> Vec<(Ws, ClientDecoder)> {
    let mut out = Vec::with_capacity(n);
    let mut pending = futures_util::stream::iter(
        (0..n).map(|i| session(port, compress, i as u64 + 1, guilds(i))),
    )
    .buffer_unordered(256);
    while let Some(s) = pending.next().await {
        out.push(s);
    }
    out
}

async fn idle(sessions: usize) {
    let node = NodeProc::start(&[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = node.rss_bytes();
    let t0 = Instant::now();
    let conns = open_sessions(
        node.client,
        Mode::Stream(Compression::None),
        sessions,
        |i| vec![(i % 100) as u64 + 1],
    )
    .await;
    let connect_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = node.rss_bytes();
    println!(
        "{}",
        json!({
            "scenario": "idle",
            "sessions": conns.len(),
            "connect_per_sec": (conns.len() as f64 / connect_secs).round(),
            "node_rss_base_bytes": base,
            "node_rss_bytes": rss,
            "rss_per_session_bytes": ((rss - base) as f64 / conns.len() as f64).round(),
        })
    );
}

/// Publishes `events` to one guild at `rate`/s and measures publish-to-receive latency on
/// every subscribed session. Returns (deliveries, elapsed, histogram).
async fn drive(
    node: &NodeProc,
    conns: Vec<(Ws, ClientDecoder)>,
    events: usize,
    rate: u64,
    payload: &str,
) -> (u64, Duration, Histogram<u64>) {
    let start = Instant::now();
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let barrier = Arc::new(Barrier::new(conns.len() + 1));
    let mut tasks = Vec::new();
    for (mut ws, mut dec) in conns {
        let hist = hist.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new(3).unwrap();
            barrier.wait().await;
            let mut got = 0;
            while got < events {
                let Ok(Some(v)) =
                    tokio::time::timeout(Duration::from_secs(30), next_json(&mut ws, &mut dec))
                        .await
                else {
                    break;
                };
                if v["op"] != 0 {
                    continue;
                }
                let sent = v["d"]["sent_ns"].as_u64().unwrap();
                let now = start.elapsed().as_nanos() as u64;
                local
                    .record((now.saturating_sub(sent) / 1000).max(1))
                    .unwrap();
                got += 1;
            }
            hist.lock().unwrap().add(&local).unwrap();
            (got, ws)
        }));
    }
    barrier.wait().await;
    let http = reqwest::Client::new();
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let t0 = Instant::now();
    for n in 0..events {
        let due = t0 + interval * n as u32;
        tokio::time::sleep_until(due.into()).await;
        let sent_ns = start.elapsed().as_nanos() as u64;
        node.publish(
            &http,
            7,
            json!({"n": n, "sent_ns": sent_ns, "content": payload}),
        )
        .await;
    }
    let mut delivered = 0u64;
    let mut keep = Vec::new();
    for t in tasks {
        let (got, ws) = t.await.unwrap();
        delivered += got as u64;
        keep.push(ws);
    }
    let elapsed = t0.elapsed();
    let h = hist.lock().unwrap().clone();
    (delivered, elapsed, h)
}

/// A realistic MESSAGE_CREATE content of about 600 bytes of JSON in total.
fn payload() -> String {
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur. Excepteur sint occaecat cupidatat non proident, sunt in culpa qui officia deserunt mollit anim id est laborum. Sed ut perspiciatis unde omnis iste natus error sit voluptatem.".into()
}

async fn fanout(fanout: usize, events: usize, rate: u64) {
    let node = NodeProc::start(&[]).await;
    let conns = open_sessions(node.client, Mode::Stream(Compression::None), fanout, |_| {
        vec![7]
    })
    .await;
    let (delivered, elapsed, h) = drive(&node, conns, events, rate, &payload()).await;
    println!(
        "{}",
        json!({
            "scenario": "fanout",
            "fanout": fanout,
            "events": events,
            "publish_rate_per_sec": rate,
            "deliveries": delivered,
            "deliveries_per_sec": (delivered as f64 / elapsed.as_secs_f64()).round(),
            "latency_ms": {
                "p50": h.value_at_quantile(0.50) as f64 / 1000.0,
                "p99": h.value_at_quantile(0.99) as f64 / 1000.0,
                "p999": h.value_at_quantile(0.999) as f64 / 1000.0,
                "max": h.max() as f64 / 1000.0,
            },
        })
    );
}

async fn cpu(fanout: usize, events: usize, rate: u64) {
    for (mode, extra) in [
        (Mode::Stream(Compression::None), vec![]),
        (Mode::Stream(Compression::ZlibStream), vec![]),
        (
            Mode::Stream(Compression::ZstdStream),
            vec!["--zstd", "lean"],
        ),
        (
            Mode::Stream(Compression::ZstdStream),
            vec!["--zstd", "discord"],
        ),
        (Mode::Dict, vec![]),
    ] {
        let node = NodeProc::start(&extra).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let base = node.rss_bytes();
        let conns = open_sessions(node.client, mode, fanout, |_| vec![7]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rss0, cpu0) = (node.rss_bytes(), node.cpu_ns());
        let (raw0, wire0) = (
            node.metric("concord_bytes_out_total{stage=\"raw\"}").await,
            node.metric("concord_bytes_out_total{stage=\"wire\"}").await,
        );
        let (delivered, _elapsed, h) = drive(&node, conns, events, rate, &payload()).await;
        let cpu = node.cpu_ns() - cpu0;
        let rss = node.rss_bytes();
        let (raw, wire) = (
            node.metric("concord_bytes_out_total{stage=\"raw\"}").await - raw0,
            node.metric("concord_bytes_out_total{stage=\"wire\"}").await - wire0,
        );
        println!(
            "{}",
            json!({
                "scenario": "cpu",
                "mode": mode.name(),
                "zstd": extra.get(1).copied(),
                "fanout": fanout,
                "deliveries": delivered,
                "node_cpu_ns_per_dispatch": (cpu as f64 / delivered as f64).round(),
                "raw_bytes_per_dispatch": (raw / delivered as f64).round(),
                "wire_bytes_per_dispatch": (wire / delivered as f64).round(),
                "rss_per_session_bytes": ((rss as f64 - base as f64) / fanout as f64).round(),
                "rss_growth_during_run_per_session_bytes": ((rss as f64 - rss0 as f64) / fanout as f64).round(),
                "latency_ms_p99": h.value_at_quantile(0.99) as f64 / 1000.0,
            })
        );
    }
}

fn compressor() {
    let frame = |n: usize| {
        concord_protocol::frame::dispatch(
            concord_protocol::Seq(n as u64),
            "MESSAGE_CREATE",
            json!({"n": n, "content": payload()}).to_string().as_bytes(),
        )
    };
    let mut report = serde_json::Map::new();
    for (name, mode, params) in [
        ("zstd_lean", Compression::ZstdStream, ZstdParams::LEAN),
        ("zstd_discord", Compression::ZstdStream, ZstdParams::DISCORD),
        ("zlib", Compression::ZlibStream, ZstdParams::LEAN),
    ] {
        let mut enc = Encoder::new(mode, params).unwrap();
        let idle = enc.memory_bytes();
        let mut out = Vec::new();
        for n in 0..100 {
            out.clear();
            enc.encode(&frame(n), &mut out).unwrap();
        }
        report.insert(
            name.into(),
            json!({"idle_bytes": idle, "in_use_bytes": enc.memory_bytes()}),
        );
    }
    println!(
        "{}",
        json!({"scenario": "compressor", "per_connection": report})
    );
}

fn main() {
    // `cargo bench` passes `--bench`; ignore it.
    let a = args();
    let run = |name: &str| a.only.as_deref().is_none_or(|o| o == name);
    if run("compressor") {
        compressor();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if run("idle") {
            idle(a.sessions).await;
        }
        if run("fanout") {
            fanout(a.fanout, a.events, a.rate).await;
        }
        if run("cpu") {
            cpu(a.fanout, a.events, a.rate).await;
        }
    });
}
