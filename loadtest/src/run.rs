//! `concord-loadtest run`: open the sessions, publish at a fixed rate, watch, report.
//!
//! One process for now: connections are spread over the `--targets` round robin, ramped at
//! `--ramp`; a publisher shard per group of guilds keeps each guild's publishes in order so
//! clients can check the per-guild publisher sequence. Every loop stops at `--duration`.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Args;
use concord_protocol::token::{self, Claims};
use serde_json::json;

use crate::client::{self, SessionPlan, Transport};
use crate::report::{self, Report};
use crate::track::{LatencyRecorder, PublisherTracker, Totals};

/// `concord-loadtest run` options.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Gateway URLs, comma-separated; sessions are spread over them.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080")]
    pub targets: Vec<String>,
    /// The API URL publishes go to.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub api: String,
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
    /// Number of guilds.
    #[arg(long, default_value_t = 100)]
    pub guilds: u64,
    /// Guild size distribution: `zipf:S` or `uniform`.
    #[arg(long, default_value = "zipf:1.1")]
    pub guild_size: String,
    /// Publish rate, e.g. `2000/s`.
    #[arg(long, default_value = "100/s")]
    pub publish_rate: String,
    /// How long to publish, e.g. `60s`.
    #[arg(long, default_value = "30s")]
    pub duration: String,
    /// `none`, `zlib-stream`, `zstd-stream` or `zstd-dict`.
    #[arg(long, default_value = "none")]
    pub compress: String,
    /// Bytes of filler content in each published event.
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// Local node pids to read RSS from (`/proc`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
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

/// Counters every session and the reporter share.
#[derive(Debug, Default)]
pub struct Shared {
    /// Sessions that connected at least once.
    pub established: AtomicU64,
    /// Sessions that got READY.
    pub ready_sessions: AtomicU64,
    /// Sessions that never connected.
    pub failed: AtomicU64,
    /// Sessions connected right now.
    pub connected: AtomicI64,
    /// Protocol or decoding errors, zombies.
    pub errors: AtomicU64,
    /// Load-test events received.
    pub deliveries: AtomicU64,
    /// Events the API accepted.
    pub published: AtomicU64,
    /// Bytes received on the wire.
    pub bytes: AtomicU64,
    /// Resumes that ended in RESUMED.
    pub resumes_ok: AtomicU64,
    /// Resumes answered with op 9.
    pub resumes_failed: AtomicU64,
    /// Dispatches whose `s` was not the last plus one.
    pub seq_errors: AtomicU64,
    latency: Mutex<LatencyRecorder>,
    interval: Mutex<LatencyRecorder>,
    ready: Mutex<LatencyRecorder>,
    totals: Mutex<Totals>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Records one delivery's publish-to-receive latency.
    pub fn record_latency(&self, sent_us: u64, received_us: u64) {
        lock(&self.latency).record(sent_us, received_us);
        lock(&self.interval).record(sent_us, received_us);
    }

    /// Records the time from connecting to READY.
    pub fn record_ready(&self, d: Duration) {
        self.ready_sessions.fetch_add(1, Ordering::Relaxed);
        lock(&self.ready).record(0, d.as_micros() as u64);
    }

    /// Adds a finished session's gap and duplicate counts.
    pub fn add_tracker(&self, t: &PublisherTracker) {
        lock(&self.totals).add(&t.totals());
    }
}

/// Parses `N/s`.
pub fn parse_rate(s: &str) -> anyhow::Result<f64> {
    let n = s.trim().strip_suffix("/s").unwrap_or(s.trim());
    let r: f64 = n
        .parse()
        .with_context(|| format!("invalid rate {s:?}; use e.g. 2000/s"))?;
    if !(r > 0.0 && r.is_finite()) {
        bail!("rate must be positive: {s:?}");
    }
    Ok(r)
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

const GUILD_BASE: u64 = 1_000_000;
const PUBLISHER_SHARDS: u64 = 16;
/// The longest publishing waits for sessions to become READY after the ramp.
const READY_WAIT: Duration = Duration::from_secs(30);
/// How long sessions keep reading after the last publish was accepted.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// Runs the load and returns the report.
pub async fn run(args: RunArgs) -> anyhow::Result<Report> {
    let transport = Transport::parse(&args.compress)
        .with_context(|| format!("unknown --compress {:?}", args.compress))?;
    let ramp = parse_rate(&args.ramp)?;
    let rate = parse_rate(&args.publish_rate)?;
    let duration = parse_duration(&args.duration)?;
    let weights = guild_weights(&args.guild_size, args.guilds)?;
    if args.targets.is_empty() {
        bail!("--targets needs at least one ws:// URL");
    }
    let shared = Arc::new(Shared::default());
    let mut rng = 0x5eed_u64;
    let ramp_time = Duration::from_secs_f64(args.connections as f64 / ramp);
    let start = Instant::now();
    // A hard bound on every session; normally they stop when `stop` turns true.
    let until = start + ramp_time + READY_WAIT + duration + Duration::from_secs(10);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 86_400;

    // Sessions, ramped.
    let mut sessions = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let guild = GUILD_BASE + pick(&weights, unit(&mut rng)) as u64;
        let claims = Claims {
            uid: i as u64 + 1,
            name: format!("lt{}", i + 1),
            guilds: vec![guild],
            exp,
            bot: false,
        };
        let plan = SessionPlan {
            url: args.targets[i % args.targets.len()].clone(),
            token: token::mint(args.token_secret.as_bytes(), &claims),
            until,
            stop: stop_rx.clone(),
        };
        let due = start + Duration::from_secs_f64(i as f64 / ramp);
        let shared = shared.clone();
        let seed = client::next(&mut rng);
        sessions.push(tokio::spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            shared.connected.fetch_add(1, Ordering::Relaxed);
            client::run_session(plan, transport, shared.clone(), seed).await;
            shared.connected.fetch_sub(1, Ordering::Relaxed);
        }));
    }

    // Publishers: one scheduler ticks at the publish rate and picks each event's guild;
    // the guild's shard publishes it, so each guild's events go out in order.
    // Publishing starts once every session is READY (or failed), so each one sees its
    // guilds' whole publisher sequence; at most READY_WAIT after the ramp.
    let ramp_end = start + ramp_time;
    tokio::time::sleep_until(ramp_end.into()).await;
    let wait_until = Instant::now() + READY_WAIT;
    while Instant::now() < wait_until {
        let done =
            shared.ready_sessions.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed);
        if done >= args.connections as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let publish_start = Instant::now() + Duration::from_millis(100);
    let publish_end = publish_start + duration;
    let http = reqwest::Client::new();
    let mut shard_txs = Vec::new();
    let mut publishers = Vec::new();
    for _ in 0..PUBLISHER_SHARDS {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1024);
        shard_txs.push(tx);
        let (http, shared) = (http.clone(), shared.clone());
        let (api, secret) = (args.api.clone(), args.publish_secret.clone());
        let filler = "x".repeat(args.payload_bytes);
        publishers.push(tokio::spawn(async move {
            let mut pseq = std::collections::HashMap::<u64, u64>::new();
            while let Some(g) = rx.recv().await {
                let n = pseq.entry(g).or_default();
                *n += 1;
                let body = json!({"t": "MESSAGE_CREATE", "d": {"lt_g": g, "lt_pseq": *n, "lt_sent_us": client::unix_us(), "content": filler}});
                let ok = http
                    .post(format!("{api}/v1/guilds/{g}/events"))
                    .bearer_auth(&secret)
                    .json(&body)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    shared.published.fetch_add(1, Ordering::Relaxed);
                } else {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let scheduler = {
        let (weights, shared) = (weights.clone(), shared.clone());
        let interval = Duration::from_secs_f64(1.0 / rate);
        tokio::spawn(async move {
            let mut rng = 0xabcd_u64;
            let mut n: u32 = 0;
            loop {
                let at = publish_start + interval * n;
                if at >= publish_end {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                n += 1;
                let g = GUILD_BASE + pick(&weights, unit(&mut rng)) as u64;
                let shard = (g % PUBLISHER_SHARDS) as usize;
                // A full shard queue means the API cannot keep up: count it, never block
                // the schedule.
                if shard_txs[shard].try_send(g).is_err() {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    // The reporter: one line per second.
    let timeline = Arc::new(Mutex::new(Vec::new()));
    let reporter = {
        let (shared, timeline) = (shared.clone(), timeline.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last = 0u64;
            let tty = std::io::stderr().is_terminal();
            loop {
                tick.tick().await;
                let delivered = shared.deliveries.load(Ordering::Relaxed);
                let lat = std::mem::take(&mut *lock(&shared.interval)).percentiles();
                let sample = report::TimelineSample {
                    t_sec: start.elapsed().as_secs_f64(),
                    connections: shared.connected.load(Ordering::Relaxed).max(0) as u64,
                    deliveries_per_sec: (delivered - last) as f64,
                    p50_ms: lat.p50,
                    p99_ms: lat.p99,
                    errors: shared.errors.load(Ordering::Relaxed),
                    resumes: shared.resumes_ok.load(Ordering::Relaxed),
                };
                last = delivered;
                if tty {
                    eprintln!(
                        "t={:>5.1}s conns={} deliveries/s={} p50={:.1}ms p99={:.1}ms errors={} resumes={}",
                        sample.t_sec,
                        sample.connections,
                        sample.deliveries_per_sec,
                        sample.p50_ms,
                        sample.p99_ms,
                        sample.errors,
                        sample.resumes
                    );
                } else if let Ok(line) = serde_json::to_string(&sample) {
                    eprintln!("{line}");
                }
                lock(&timeline).push(sample);
            }
        })
    };

    let _ = scheduler.await;
    for p in publishers {
        let _ = p.await;
    }
    // Let the last events arrive, then end every session.
    tokio::time::sleep(DRAIN_WAIT).await;
    let _ = stop_tx.send(true);
    for s in sessions {
        let _ = s.await;
    }
    reporter.abort();
    let elapsed = publish_end
        .saturating_duration_since(publish_start)
        .as_secs_f64()
        .max(1e-9);
    let timeline = std::mem::take(&mut *lock(&timeline));
    Ok(build_report(&args, &shared, timeline, ramp_time, elapsed))
}

fn build_report(
    args: &RunArgs,
    shared: &Shared,
    timeline: Vec<report::TimelineSample>,
    ramp_time: Duration,
    publish_secs: f64,
) -> Report {
    let deliveries = shared.deliveries.load(Ordering::Relaxed);
    let established = shared.established.load(Ordering::Relaxed);
    let totals = lock(&shared.totals).clone();
    let lat = lock(&shared.latency).percentiles();
    let ready = lock(&shared.ready).percentiles();
    let per_node = (args.connections / args.pids.len().max(1)).max(1) as u64;
    let server = args
        .pids
        .iter()
        .map(|pid| {
            let rss = rss_bytes(*pid).unwrap_or(0);
            report::ServerNode {
                node: format!("pid:{pid}"),
                rss_bytes: rss,
                rss_bytes_per_session: rss as f64 / per_node as f64,
            }
        })
        .collect();
    Report {
        target: "concord".into(),
        connections: report::Connections {
            established,
            failed: shared.failed.load(Ordering::Relaxed),
        },
        connect_rate_per_sec: established as f64 / ramp_time.as_secs_f64().max(1e-9),
        ready_latency_ms: report::ReadyLatency {
            p50: ready.p50,
            p99: ready.p99,
        },
        deliveries: report::Deliveries {
            total: deliveries,
            per_sec: deliveries as f64 / publish_secs,
        },
        latency_ms: lat,
        bytes_received_per_delivery: shared.bytes.load(Ordering::Relaxed) as f64
            / deliveries.max(1) as f64,
        gaps: totals.gaps + shared.seq_errors.load(Ordering::Relaxed),
        duplicates: totals.duplicates,
        resumes: report::Resumes {
            ok: shared.resumes_ok.load(Ordering::Relaxed),
            failed: shared.resumes_failed.load(Ordering::Relaxed),
        },
        errors: shared.errors.load(Ordering::Relaxed),
        server,
        config: json!({
            "targets": args.targets, "connections": args.connections, "ramp": args.ramp,
            "guilds": args.guilds, "guild_size": args.guild_size, "publish_rate": args.publish_rate,
            "duration": args.duration, "compress": args.compress, "payload_bytes": args.payload_bytes,
        }),
        timeline,
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
}
