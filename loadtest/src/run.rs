//! `concord-loadtest run`: open the sessions, publish at a fixed rate, watch, report.
//!
//! Sessions are spread over the `--targets` round robin and ramped at `--ramp`; past
//! one process's open-file limit they are spread over worker processes too, and past
//! one source address's ephemeral ports over several 127.0.0.x sources (see [`Layout`]).
//! A publisher shard per group of guilds keeps each guild's publishes in order, so
//! clients can check the per-guild publisher sequence. When publishing ends every
//! session learns each guild's last accepted sequence and waits for it, so events lost
//! at the tail count as gaps too. With `--peer`, the same load then runs against Redis
//! or NATS pub/sub. Every loop is bounded by `--duration` plus fixed waits.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Parser};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::client::{self, Transport};
use crate::fleet::{Fleet, FleetPlan, GUILD_BASE, Phase, Published, Target};
use crate::peer::{self, PeerUrl};
use crate::report::{self, Report};
use crate::stats::{Counters, Shared, lock};

/// `concord-loadtest run` options.
#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct RunArgs {
    /// Gateway URLs, comma-separated; sessions are spread over them.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080")]
    pub targets: Vec<String>,
    /// The API URL publishes go to. Several, comma-separated, are for standalone nodes
    /// that do not form a cluster: every event is then published to each of them.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8081")]
    pub api: Vec<String>,
    /// With several `--api` URLs: `any` publishes each event to one of them (a cluster
    /// forwards it to the guild's owner; spread by guild), `each` to every one of them
    /// (standalone nodes that do not form a cluster).
    #[arg(long, default_value = "any")]
    pub publish_to: String,
    /// Where a session resumes after its connection ends: `resume-url` (READY's
    /// `resume_gateway_url`, as Discord clients do) or `any` (the next `--targets` URL, as
    /// behind a load balancer; with a cluster, sessions then resume on other nodes).
    #[arg(long, default_value = "resume-url")]
    pub resume_via: String,
    /// The nodes' token secret (to mint client tokens).
    #[arg(
        long,
        env = "CONCORD_TOKEN_SECRET",
        default_value = "concord-dev-token-secret"
    )]
    pub token_secret: String,
    /// The nodes' publish secret.
    #[arg(
        long,
        env = "CONCORD_PUBLISH_SECRET",
        default_value = "concord-dev-publish-secret"
    )]
    pub publish_secret: String,
    /// Sessions to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Connection ramp, e.g. `5000/s`.
    #[arg(long, default_value = "2000/s")]
    pub ramp: String,
    /// Number of guilds; each session is a member of one.
    #[arg(long, default_value_t = 100)]
    pub guilds: u64,
    /// Guild size distribution: `zipf:S` or `uniform`. Publishes pick guilds by the same
    /// weights, so large guilds are busier, as in real chat.
    #[arg(long, default_value = "zipf:1.1")]
    pub guild_size: String,
    /// Publish rate, e.g. `2000/s`; `0/s` publishes nothing (idle runs).
    #[arg(long, default_value = "100/s")]
    pub publish_rate: String,
    /// How long to publish (or, at `0/s`, to hold the sessions), e.g. `60s`.
    #[arg(long, default_value = "30s")]
    pub duration: String,
    /// `none`, `zlib-stream`, `zstd-stream` or `zstd-dict`.
    #[arg(long, default_value = "none")]
    pub compress: String,
    /// Bytes of filler content in each published event (`--payload filler`).
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// What events carry: `filler` (`--payload-bytes` of one repeated letter, as cheap as
    /// an event gets) or `corpus` (realistic MESSAGE_CREATE bodies from the seeded
    /// generator `concord dict corpus` uses, for compression figures that mean something).
    #[arg(long, default_value = "filler")]
    pub payload: String,
    /// Skip this many corpus bodies first: a later stretch of the same world's traffic
    /// (for measuring a dictionary retrained on an earlier run).
    #[arg(long, default_value_t = 0)]
    pub payload_skip: usize,
    /// Also run the same load through Redis or NATS pub/sub, e.g. `redis://127.0.0.1:6379`
    /// or `nats://127.0.0.1:4222`; repeat for both. Reported under `peers`.
    #[arg(long)]
    pub peer: Vec<String>,
    /// Worker processes to spread sessions over; 0 starts as many as the open-file
    /// limit requires.
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Sessions one process may hold; 0 derives it from the open-file limit.
    #[arg(long, default_value_t = 0)]
    pub sessions_per_process: usize,
    /// Local addresses to connect from, comma-separated. By default a loopback run that
    /// would exhaust one address's ephemeral ports uses 127.0.0.2, 127.0.0.3, ...
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<IpAddr>,
    /// Local node pids to read RSS from (`/proc`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Node admin URLs to read RSS and session counts from (`/metrics`:
    /// `concord_process_resident_bytes`, `concord_sessions`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// Seeds guild choice, publish order and jitter.
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
    /// A preset (`idle`, `fanout`, `chat`); its options come first, yours override them.
    #[arg(long)]
    pub preset: Option<String>,
    /// A TOML file of options (keys are the long flag names); flags override it.
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write the HTML report here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Bounds that fail the run, e.g. `latency_ms.p99<50,gaps==0,duplicates==0`.
    #[arg(long)]
    pub assert: Option<String>,
}

impl Default for RunArgs {
    /// Every option at its documented default.
    fn default() -> RunArgs {
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            args: RunArgs,
        }
        Defaults::parse_from(["run"]).args
    }
}

/// Parses `N/s`; `0/s` is allowed only where `allow_zero`.
pub fn parse_rate_with(s: &str, allow_zero: bool) -> anyhow::Result<f64> {
    let n = s.trim().strip_suffix("/s").unwrap_or(s.trim());
    let r: f64 = n
        .parse()
        .with_context(|| format!("invalid rate {s:?}; use e.g. 2000/s"))?;
    if !(r.is_finite() && (r > 0.0 || (allow_zero && r == 0.0))) {
        bail!("rate must be positive: {s:?}");
    }
    Ok(r)
}

/// Parses `N/s` (positive).
pub fn parse_rate(s: &str) -> anyhow::Result<f64> {
    parse_rate_with(s, false)
}

/// Parses `60s`, `5m`, `500ms`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .with_context(|| format!("invalid duration {s:?}"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => bail!("invalid duration unit in {s:?}"),
    })
}

/// Cumulative weights of guild sizes: `zipf:S` (guild k has weight 1/k^S) or `uniform`.
pub fn guild_weights(spec: &str, guilds: u64) -> anyhow::Result<Vec<f64>> {
    if guilds == 0 {
        bail!("--guilds must be at least 1");
    }
    let exponent = match spec {
        "uniform" => 0.0,
        s => s
            .strip_prefix("zipf:")
            .and_then(|e| e.parse::<f64>().ok())
            .filter(|e| e.is_finite() && *e >= 0.0)
            .with_context(|| format!("invalid --guild-size {s:?}; use zipf:1.1 or uniform"))?,
    };
    let mut acc = 0.0;
    Ok((1..=guilds)
        .map(|k| {
            acc += 1.0 / (k as f64).powf(exponent);
            acc
        })
        .collect())
}

/// Picks an index by cumulative weight with a uniform `u` in [0, 1).
pub fn pick(cumulative: &[f64], u: f64) -> usize {
    let total = cumulative.last().copied().unwrap_or(0.0);
    let x = u * total;
    cumulative
        .partition_point(|&c| c <= x)
        .min(cumulative.len().saturating_sub(1))
}

fn unit(rng: &mut u64) -> f64 {
    (client::next(rng) >> 11) as f64 / (1u64 << 53) as f64
}

const PUBLISHER_SHARDS: u64 = 16;
/// The longest publishing waits for sessions to become READY after the ramp.
const READY_WAIT: Duration = Duration::from_secs(30);
/// How long sessions may take to receive the last events once publishing is over.
const FINAL_WAIT: Duration = Duration::from_secs(6);
/// Ports one source address is given toward one destination: the ephemeral range here is
/// 32768-60999 (28,232 ports), less headroom for other traffic.
pub const PORTS_PER_SOURCE: usize = 25_000;
/// File descriptors a process keeps for everything but sessions: stdio, the runtime,
/// publisher connections, sockets in TIME_WAIT-free reconnects.
const FD_HEADROOM: u64 = 1_000;

/// How a run spreads its sessions over processes and source addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Worker processes; 0 runs every session in this process.
    pub workers: usize,
    /// Sessions one process may hold.
    pub per_process: usize,
    /// Source addresses, round robin; empty lets the OS pick.
    pub sources: Vec<IpAddr>,
}

impl Layout {
    /// Decides the layout for `args` given this process's open-file limit `nofile`.
    pub fn plan(args: &RunArgs, nofile: u64) -> Layout {
        let per_process = match args.sessions_per_process {
            0 => nofile.saturating_sub(FD_HEADROOM).max(100) as usize,
            n => n,
        };
        let workers = match args.workers {
            0 if args.connections <= per_process => 0,
            0 => args.connections.div_ceil(per_process),
            n => n,
        };
        let loopback = args.targets.iter().all(|t| {
            let host = t.trim_start_matches("ws://").split(['/', ':']).next();
            matches!(host, Some(h) if h == "localhost" || h.starts_with("127."))
        });
        let sources = if !args.sources.is_empty() {
            args.sources.clone()
        } else if loopback && args.connections > PORTS_PER_SOURCE {
            (0..args.connections.div_ceil(PORTS_PER_SOURCE))
                .map(|k| {
                    let n = 2 + k;
                    IpAddr::V4(Ipv4Addr::new(127, 0, (n >> 8) as u8, (n & 0xff) as u8))
                })
                .collect()
        } else {
            Vec::new()
        };
        Layout {
            workers,
            per_process,
            sources,
        }
    }

    /// One line telling the user what the run will do.
    pub fn describe(&self, connections: usize, nofile: u64) -> String {
        let procs = match self.workers {
            0 => "in this process".to_owned(),
            n => format!(
                "over {n} worker processes (at most {} sessions each; open-file limit {nofile})",
                self.per_process
            ),
        };
        let sources = match self.sources.as_slice() {
            [] => String::new(),
            [one] => format!(" from source address {one}"),
            [first, .., last] => format!(
                " from {} source addresses {first}..{last} (one address has about {PORTS_PER_SOURCE} ports per destination)",
                self.sources.len()
            ),
        };
        format!("{connections} sessions {procs}{sources}")
    }
}

/// The soft open-file limit of this process (`/proc/self/limits`), or 1024 if unknown.
pub fn open_file_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(1024)
}

/// Runs the load against Concord, then against each `--peer`, and returns the report
/// (peers under `peers`).
pub async fn run(args: RunArgs) -> anyhow::Result<Report> {
    // Check everything before the first session opens.
    Transport::parse(&args.compress)
        .with_context(|| format!("unknown --compress {:?}", args.compress))?;
    let peers = args
        .peer
        .iter()
        .map(|p| PeerUrl::parse(p).with_context(|| format!("invalid --peer {p:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.targets.is_empty() {
        bail!("--targets needs at least one ws:// URL");
    }
    let payloads = Arc::new(payloads(&args.payload, args.payload_bytes, args.seed)?);
    if !matches!(args.publish_to.as_str(), "any" | "each") {
        bail!(
            "invalid --publish-to {:?}; use any (a cluster) or each (standalone nodes)",
            args.publish_to
        );
    }
    if !matches!(args.resume_via.as_str(), "resume-url" | "any") {
        bail!(
            "invalid --resume-via {:?}; use resume-url or any",
            args.resume_via
        );
    }
    let mut report = run_target(
        &args,
        Target::Concord {
            urls: args.targets.clone(),
            resume_any: args.resume_via == "any",
        },
        &payloads,
    )
    .await?;
    for p in peers {
        let mut peer_args = args.clone();
        peer_args.pids.clear();
        peer_args.metrics.clear();
        let r = run_target(&peer_args, Target::Peer { url: p.to_string() }, &payloads).await?;
        report.peers.push(r);
    }
    Ok(report)
}

/// How publishes reach the system under test.
enum Backend {
    Http {
        client: reqwest::Client,
        apis: Vec<String>,
        /// Publish to every API (standalone nodes) rather than to one.
        each: bool,
        secret: String,
    },
    Peer(peer::Publisher),
}

impl Backend {
    /// Publishes one event. `Ok(true)`: accepted. `Ok(false)`: not published (every API
    /// refused it with 503 or could not be reached), so the publisher sequence number was
    /// not used. `Err`: unknown (a 504, a timeout or a connection broken after the
    /// request went out), so the number counts as used.
    async fn publish(&mut self, guild: u64, body: &[u8]) -> Result<bool, ()> {
        match self {
            Backend::Http {
                client,
                apis,
                each,
                secret,
            } => {
                let send = |api: &String| {
                    client
                        .post(format!("{api}/v1/guilds/{guild}/events"))
                        .bearer_auth(&**secret)
                        .header("content-type", "application/json")
                        .body(body.to_vec())
                        .timeout(Duration::from_secs(10))
                        .send()
                };
                if *each {
                    // Every API in turn, so each standalone node's copy stays in order.
                    let mut accepted = !apis.is_empty();
                    for api in apis.iter() {
                        match send(api).await {
                            Ok(r) if r.status().as_u16() == 504 => return Err(()),
                            Ok(r) => accepted &= r.status().is_success(),
                            Err(e) if e.is_connect() => accepted = false,
                            Err(_) => return Err(()),
                        }
                    }
                    return Ok(accepted);
                }
                // One API per guild (any node accepts any guild); when it is down or
                // refuses (503: draining, or cut off from the guild's owner), the next
                // one, as a backend behind a balancer would.
                let n = apis.len();
                for i in 0..n {
                    let api = &apis[(guild as usize + i) % n];
                    match send(api).await {
                        // The owner did not acknowledge in time and may still sequence it.
                        Ok(r) if r.status().as_u16() == 504 => return Err(()),
                        Ok(r) if r.status().is_success() => return Ok(true),
                        Ok(r) if r.status().as_u16() == 503 => continue,
                        Ok(_) => return Ok(false),
                        // Never reached the node: nothing was published.
                        Err(e) if e.is_connect() => continue,
                        Err(_) => return Err(()),
                    }
                }
                Ok(false)
            }
            Backend::Peer(p) => p
                .publish(&peer::channel(guild), body)
                .await
                .map(|_| true)
                .map_err(|_| ()),
        }
    }
}

/// One load against one target: a Concord cluster or one peer.
async fn run_target(
    args: &RunArgs,
    target: Target,
    payloads: &Arc<Payloads>,
) -> anyhow::Result<Report> {
    let ramp = parse_rate(&args.ramp)?;
    let rate = parse_rate_with(&args.publish_rate, true)?;
    let duration = parse_duration(&args.duration)?;
    let weights = guild_weights(&args.guild_size, args.guilds)?;
    let nofile = open_file_limit();
    let layout = Layout::plan(args, nofile);
    let name = match &target {
        Target::Concord { .. } => "concord".to_owned(),
        Target::Peer { url } => PeerUrl::parse(url)?.name().to_owned(),
    };
    eprintln!("{name}: {}", layout.describe(args.connections, nofile));

    let ramp_time = Duration::from_secs_f64(args.connections as f64 / ramp);
    // Workers need a moment to start before session 0 is due.
    let lead = if layout.workers > 0 {
        Duration::from_millis(500)
    } else {
        Duration::ZERO
    };
    let start_us = client::unix_us() + lead.as_micros() as u64;
    let bound = lead + ramp_time + READY_WAIT + duration + FINAL_WAIT + Duration::from_secs(30);
    let plan = FleetPlan {
        target: target.clone(),
        token_secret: args.token_secret.clone(),
        apis: args.api.clone(),
        compress: args.compress.clone(),
        connections: args.connections,
        ramp_per_sec: ramp,
        guilds: args.guilds,
        guild_size: args.guild_size.clone(),
        sources: layout.sources.clone(),
        seed: args.seed,
        start_unix_us: start_us,
        deadline_unix_us: start_us + bound.as_micros() as u64,
    };
    let start = Instant::now();
    let shared = Arc::new(Shared::default());
    let exe = std::env::current_exe().context("cannot find this executable to start workers")?;
    let mut fleet = Fleet::start(&plan, layout.workers, &exe, shared.clone()).await?;

    // The reporter: one sample per second.
    let timeline = Arc::new(Mutex::new(Vec::new()));
    let reporter = {
        let (view, timeline) = (fleet.view(), timeline.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = 0u64;
            let tty = std::io::stderr().is_terminal();
            loop {
                tick.tick().await;
                let c = view.counters();
                let lat = view.take_interval().percentiles();
                let sample = report::TimelineSample {
                    t_sec: start.elapsed().as_secs_f64(),
                    connections: c.connected.max(0) as u64,
                    deliveries_per_sec: c.deliveries.saturating_sub(last) as f64,
                    p50_ms: lat.p50,
                    p99_ms: lat.p99,
                    errors: c.errors,
                    resumes: c.resumes_ok,
                };
                last = c.deliveries;
                if tty {
                    eprint!("\r\x1b[2K{}", progress_line(&name, &sample, &c));
                } else {
                    eprintln!("{}", report::IntervalLine(&sample));
                }
                lock(&timeline).push(sample);
            }
        })
    };

    // Publishing starts once every session is READY (or failed), so each one sees its
    // guild's whole publisher sequence; at most READY_WAIT after the ramp.
    tokio::time::sleep_until((start + lead + ramp_time).into()).await;
    let wait_until = Instant::now() + READY_WAIT;
    while Instant::now() < wait_until {
        let c = fleet.view().counters();
        if c.ready_sessions + c.failed >= args.connections as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fleet.set_phase(Phase::Publishing).await;
    let publish_start = Instant::now() + Duration::from_millis(100);
    let publish_end = publish_start + duration;
    let last_accepted = if rate > 0.0 {
        publish(
            args,
            &target,
            &weights,
            rate,
            publish_start..publish_end,
            payloads,
            &shared,
        )
        .await?
    } else {
        tokio::time::sleep_until(publish_end.into()).await;
        Published::default()
    };

    // Server memory while every session is still connected.
    let server = server_figures(args).await;
    // Every session waits for its guild's last accepted event, then ends.
    fleet.set_phase(Phase::Final(last_accepted.clone())).await;
    let give_up = Instant::now() + FINAL_WAIT + Duration::from_secs(1);
    while Instant::now() < give_up
        && fleet.view().counters().sessions_done < args.connections as u64
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fleet.set_phase(Phase::Stop(last_accepted)).await;
    let (counters, latency, ready, totals) = fleet.finish(Duration::from_secs(15)).await;
    reporter.abort();
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    let timeline = std::mem::take(&mut *lock(&timeline));
    let publish_secs = publish_end
        .saturating_duration_since(publish_start)
        .as_secs_f64()
        .max(1e-9);
    Ok(build_report(
        args,
        &layout,
        &target,
        server,
        Measured {
            counters,
            latency,
            ready,
            totals,
            ramp_time,
            publish_secs,
        },
        timeline,
    ))
}

fn progress_line(name: &str, s: &report::TimelineSample, c: &Counters) -> String {
    format!(
        "{name} t={:>5.1}s conns={} ready={} deliveries/s={:.0} p50={:.1}ms p99={:.1}ms errors={} resumes={}",
        s.t_sec,
        s.connections,
        c.ready_sessions,
        s.deliveries_per_sec,
        s.p50_ms,
        s.p99_ms,
        s.errors,
        s.resumes
    )
}

/// Publishes from `start` to `end` at `rate`, and returns each guild's last accepted
/// publisher sequence. One scheduler ticks at the rate and picks each event's guild; the
/// guild's shard publishes it, so each guild's events go out in order.
async fn publish(
    args: &RunArgs,
    target: &Target,
    weights: &[f64],
    rate: f64,
    window: std::ops::Range<Instant>,
    payloads: &Arc<Payloads>,
    shared: &Arc<Shared>,
) -> anyhow::Result<Published> {
    let cursor = Arc::new(std::sync::atomic::AtomicUsize::new(args.payload_skip));
    let http = reqwest::Client::new();
    let mut shard_txs = Vec::new();
    let mut shards = Vec::new();
    for _ in 0..PUBLISHER_SHARDS {
        let mut backend = match target {
            Target::Concord { .. } => Backend::Http {
                client: http.clone(),
                apis: args.api.clone(),
                each: args.publish_to == "each",
                secret: args.publish_secret.clone(),
            },
            Target::Peer { url } => Backend::Peer(
                peer::Publisher::connect(&PeerUrl::parse(url)?)
                    .await
                    .with_context(|| format!("cannot connect a publisher to {url}"))?,
            ),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1024);
        shard_txs.push(tx);
        let shared = shared.clone();
        let payloads = payloads.clone();
        let cursor = cursor.clone();
        shards.push(tokio::spawn(async move {
            let mut next_pseq = HashMap::<u64, u64>::new();
            let mut accepted = Published::default();
            while let Some(g) = rx.recv().await {
                let n = next_pseq.entry(g).or_insert(1);
                // One cursor for all shards: the run walks the corpus in order.
                let k = cursor.fetch_add(1, Ordering::Relaxed);
                let mut d = payloads[k % payloads.len()].clone();
                d.insert("lt_g".into(), g.into());
                d.insert("lt_pseq".into(), (*n).into());
                d.insert("lt_sent_us".into(), client::unix_us().into());
                let body = json!({"t": "MESSAGE_CREATE", "d": d});
                let bytes = body.to_string().into_bytes();
                match backend.publish(g, &bytes).await {
                    Ok(true) => {
                        accepted.last.insert(g, *n);
                        *n += 1;
                        shared.published.fetch_add(1, Ordering::Relaxed);
                    }
                    // Refused: nothing was published under this number; reuse it.
                    Ok(false) => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    // Unknown: it may still arrive; sessions neither require it nor
                    // count it missing.
                    Err(()) => {
                        accepted.unknown.entry(g).or_default().push(*n);
                        *n += 1;
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            accepted
        }));
    }
    let mut rng = args.seed ^ 0xabcd;
    let mut n: u64 = 0;
    loop {
        // n / rate, not n x (1 / rate): the rounded interval would fit one extra publish.
        let at = window.start + Duration::from_secs_f64(n as f64 / rate);
        if at >= window.end {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        n += 1;
        let g = GUILD_BASE + pick(weights, unit(&mut rng)) as u64;
        let shard = (g % PUBLISHER_SHARDS) as usize;
        // A full shard queue means the target cannot keep up: count it, never block the
        // schedule.
        if shard_txs[shard].try_send(g).is_err() {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    drop(shard_txs);
    let mut all = Published::default();
    for s in shards {
        if let Ok(accepted) = s.await {
            all.last.extend(accepted.last);
            all.unknown.extend(accepted.unknown);
        }
    }
    Ok(all)
}

/// The `d` objects events are built from (the `lt_*` marks are added per publish).
pub type Payloads = Vec<serde_json::Map<String, serde_json::Value>>;

/// Builds the [`Payloads`] of `--payload` (once per run, shared by every target).
pub fn payloads(kind: &str, filler_bytes: usize, seed: u64) -> anyhow::Result<Payloads> {
    match kind {
        "filler" => {
            let mut d = serde_json::Map::new();
            d.insert("content".into(), "x".repeat(filler_bytes).into());
            Ok(vec![d])
        }
        "corpus" => {
            let bodies: Vec<_> = concord_protocol::corpus::Corpus::generate(seed, 50_000)
                .into_iter()
                .filter(|e| e.t == "MESSAGE_CREATE")
                .filter_map(|e| serde_json::from_slice(&e.d).ok())
                .collect();
            if bodies.is_empty() {
                bail!("the corpus generator produced no MESSAGE_CREATE bodies");
            }
            Ok(bodies)
        }
        other => bail!("unknown --payload {other:?}; use filler or corpus"),
    }
}

/// What a run measured, before it becomes a report.
struct Measured {
    counters: Counters,
    latency: crate::track::LatencyRecorder,
    ready: crate::track::LatencyRecorder,
    totals: crate::track::Totals,
    ramp_time: Duration,
    publish_secs: f64,
}

/// Each node's memory: from `--metrics` (RSS over the node's own session count), and
/// from `/proc` for `--pids` (RSS over an even share of the sessions).
async fn server_figures(args: &RunArgs) -> Vec<report::ServerNode> {
    let mut out = Vec::new();
    let http = reqwest::Client::new();
    for url in &args.metrics {
        let text = match http
            .get(format!("{}/metrics", url.trim_end_matches('/')))
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let rss = metric(&text, "concord_process_resident_bytes").unwrap_or(0.0);
        let sessions = metric(&text, "concord_sessions").unwrap_or(0.0);
        out.push(report::ServerNode {
            node: url.clone(),
            rss_bytes: rss as u64,
            rss_bytes_per_session: if sessions > 0.0 { rss / sessions } else { 0.0 },
        });
    }
    let per_node = (args.connections / args.pids.len().max(1)).max(1) as u64;
    out.extend(args.pids.iter().map(|pid| {
        let rss = rss_bytes(*pid).unwrap_or(0);
        report::ServerNode {
            node: format!("pid:{pid}"),
            rss_bytes: rss,
            rss_bytes_per_session: rss as f64 / per_node as f64,
        }
    }));
    out
}

/// The value of an unlabelled Prometheus sample `name` in `text`.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

fn build_report(
    args: &RunArgs,
    layout: &Layout,
    target: &Target,
    server: Vec<report::ServerNode>,
    m: Measured,
    timeline: Vec<report::TimelineSample>,
) -> Report {
    let c = m.counters;
    let lat = m.latency.percentiles();
    let ready = m.ready.percentiles();
    let (name, targets) = match target {
        Target::Concord { urls, .. } => ("concord".to_owned(), json!(urls)),
        Target::Peer { url } => (
            PeerUrl::parse(url).map_or("peer", |p| p.name()).to_owned(),
            json!([url]),
        ),
    };
    Report {
        target: name,
        connections: report::Connections {
            established: c.established,
            failed: c.failed,
        },
        connect_rate_per_sec: c.established as f64 / m.ramp_time.as_secs_f64().max(1e-9),
        ready_latency_ms: report::ReadyLatency {
            p50: ready.p50,
            p99: ready.p99,
        },
        deliveries: report::Deliveries {
            total: c.deliveries,
            per_sec: c.deliveries as f64 / m.publish_secs,
        },
        latency_ms: lat,
        bytes_received_per_delivery: if c.deliveries == 0 {
            0.0
        } else {
            c.bytes as f64 / c.deliveries as f64
        },
        gaps: m.totals.gaps + c.seq_errors,
        duplicates: m.totals.duplicates,
        reordered: m.totals.reordered,
        resumes: report::Resumes {
            ok: c.resumes_ok,
            failed: c.resumes_failed,
        },
        errors: c.errors,
        published: c.published,
        server,
        config: json!({
            "targets": targets, "connections": args.connections, "ramp": args.ramp,
            "guilds": args.guilds, "guild_size": args.guild_size, "publish_rate": args.publish_rate,
            "duration": args.duration, "compress": args.compress, "payload_bytes": args.payload_bytes, "payload": args.payload, "payload_skip": args.payload_skip, "publish_to": args.publish_to, "resume_via": args.resume_via,
            "seed": args.seed, "preset": args.preset,
            "workers": layout.workers, "sources": layout.sources,
        }),
        timeline,
        peers: Vec::new(),
    }
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_durations() {
        assert_eq!(parse_rate("5000/s").unwrap(), 5000.0);
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("fast").is_err());
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("1h").is_err());
    }

    #[test]
    fn zipf_weights_make_the_first_guild_the_largest() {
        let w = guild_weights("zipf:1.1", 100).unwrap();
        let mut counts = vec![0u32; 100];
        let mut rng = 7;
        for _ in 0..20_000 {
            counts[pick(&w, unit(&mut rng))] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[9] && counts[9] > counts[99]);
        let u = guild_weights("uniform", 4).unwrap();
        assert_eq!(u, vec![1.0, 2.0, 3.0, 4.0]);
        assert!(guild_weights("pareto", 4).is_err());
        assert_eq!(pick(&u, 0.0), 0);
        assert_eq!(pick(&u, 0.999), 3);
    }

    #[test]
    fn layout_spreads_past_the_open_file_limit_and_the_port_range() {
        let small = RunArgs {
            connections: 5_000,
            ..RunArgs::default()
        };
        let l = Layout::plan(&small, 20_000);
        assert_eq!((l.workers, l.per_process), (0, 19_000));
        assert!(l.sources.is_empty());
        let big = RunArgs {
            connections: 100_000,
            ..RunArgs::default()
        };
        let l = Layout::plan(&big, 20_000);
        assert_eq!(l.workers, 6);
        assert_eq!(l.sources.len(), 4);
        assert_eq!(l.sources[0], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert!(l.describe(100_000, 20_000).contains("6 worker processes"));
        // Not loopback: the tool cannot invent source addresses.
        let remote = RunArgs {
            targets: vec!["ws://10.0.0.5:8080".into()],
            ..big.clone()
        };
        assert!(Layout::plan(&remote, 20_000).sources.is_empty());
        // Explicit choices win.
        let forced = RunArgs {
            workers: 2,
            connections: 10,
            ..RunArgs::default()
        };
        assert_eq!(Layout::plan(&forced, 20_000).workers, 2);
    }

    #[test]
    fn payloads_are_filler_or_realistic_messages() {
        let f = payloads("filler", 10, 1).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0]["content"], "xxxxxxxxxx");
        let c = payloads("corpus", 0, 1).unwrap();
        assert!(c.len() > 1_000);
        assert!(c.iter().all(|d| d.contains_key("channel_id")));
        assert!(payloads("lorem", 0, 1).is_err());
    }

    #[test]
    fn prometheus_samples_are_read_by_name() {
        let text = "# TYPE concord_sessions gauge\nconcord_sessions 17000\nconcord_sessions_x 3\nconcord_process_resident_bytes 1.5e8\n";
        assert_eq!(metric(text, "concord_sessions"), Some(17_000.0));
        assert_eq!(metric(text, "concord_process_resident_bytes"), Some(1.5e8));
        assert_eq!(metric(text, "concord_missing"), None);
    }

    #[test]
    fn zero_rate_only_where_allowed() {
        assert_eq!(parse_rate_with("0/s", true).unwrap(), 0.0);
        assert!(parse_rate_with("0/s", false).is_err());
        assert!(parse_rate_with("-1/s", true).is_err());
    }
}
