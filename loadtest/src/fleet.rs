//! Who runs which session: in this process, or spread over worker processes.
//!
//! One process can hold only as many sessions as its open-file limit allows (20,000 here,
//! and it cannot be raised), so a large run re-executes this binary as `concord-loadtest
//! worker` children. The coordinator keeps the publishers and the report; each worker
//! runs every `workers`-th session of one shared [`FleetPlan`] and streams [`Snapshot`]s
//! back as JSON lines on stdout. Control flows the other way as JSON lines on stdin:
//! the [`Phase`] changes. A worker whose stdin closes stops, so a dying coordinator never
//! leaves sessions behind.
//!
//! Session `i` always gets the same guild, target URL and source address, whichever
//! process runs it: each is a pure function of the plan and `i`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use concord_protocol::token::{self, Claims};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{self, SessionPlan, Transport};
use crate::peer::PeerUrl;
use crate::stats::{Counters, Shared, Snapshot, Whole, lock};
use crate::track::{LatencyRecorder, Totals};
use concord_protocol::zstd_dict::DictSet;

/// Guild ids start here, so they look like ids and never collide with 0.
pub const GUILD_BASE: u64 = 1_000_000;
/// The first source port sessions bind when the run spreads over source addresses.
pub const SOURCE_PORT_BASE: usize = 10_000;
/// Past this many sessions on one source address, the OS picks the port.
pub const MAX_PORTS_PER_SOURCE: usize = 50_000;

/// What sessions connect to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Concord gateway URLs; session `i` starts at `urls[i % urls.len()]`.
    Concord {
        /// `ws://` URLs.
        urls: Vec<String>,
        /// Resume on the next URL of `urls` after a disconnect (`--resume-via any`)
        /// instead of READY's `resume_gateway_url`.
        #[serde(default)]
        resume_any: bool,
    },
    /// A Redis or NATS server: each session subscribes to its guild's channel.
    Peer {
        /// `redis://` or `nats://`.
        url: String,
    },
}

/// Everything any process needs to run its share of the sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetPlan {
    /// What to connect to.
    pub target: Target,
    /// Secret to mint client tokens with.
    pub token_secret: String,
    /// API URLs to fetch zstd-dict dictionaries from.
    pub apis: Vec<String>,
    /// `none`, `zlib-stream`, `zstd-stream` or `zstd-dict`.
    pub compress: String,
    /// Sessions in the whole run.
    pub connections: usize,
    /// Sessions started per second, over the whole run.
    pub ramp_per_sec: f64,
    /// Guild count.
    pub guilds: u64,
    /// `zipf:S` or `uniform`.
    pub guild_size: String,
    /// Local addresses to bind before connecting, round-robin; empty: the OS picks.
    pub sources: Vec<IpAddr>,
    /// Seeds guild choice and jitter.
    pub seed: u64,
    /// Unix µs at which session 0 is due.
    pub start_unix_us: u64,
    /// Unix µs by which every session ends, whatever happens.
    pub deadline_unix_us: u64,
}

/// How publishing ended, per guild: the last `pseq` the API accepted, and the numbers
/// whose outcome is unknown (a 504, or a connection broken after the request went out).
/// An event at an unknown number may or may not arrive: it is neither required nor a gap.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Published {
    /// Guild -> last accepted `pseq`.
    pub last: HashMap<u64, u64>,
    /// Guild -> `pseq`s with an unknown outcome, ascending.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub unknown: HashMap<u64, Vec<u64>>,
}

impl Published {
    /// The last accepted `pseq` of `guild` (0: none).
    pub fn last(&self, guild: u64) -> u64 {
        self.last.get(&guild).copied().unwrap_or(0)
    }

    /// The `pseq`s of `guild` whose outcome is unknown.
    pub fn unknown(&self, guild: u64) -> &[u64] {
        self.unknown.get(&guild).map_or(&[], Vec::as_slice)
    }
}

/// Where the run is; every session watches it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Sessions are connecting; nothing is published yet.
    Ramp,
    /// Publishing has begun: a session that gets READY now may have missed events.
    Publishing,
    /// Publishing is over; it holds each guild's last accepted publisher sequence.
    /// Sessions end once they have it, and count what never came as gaps.
    Final(Published),
    /// Stop now. Carries the same as `Final` (a session may see only this one): events
    /// not received by now count as lost. Empty when the run was cut short.
    Stop(Published),
}

/// A coordinator-to-worker line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToWorker {
    /// The first line: the plan and which sessions are this worker's.
    Plan {
        /// The shared plan.
        plan: FleetPlan,
        /// This worker runs sessions `i` with `i % of == index`.
        index: usize,
        /// Worker count.
        of: usize,
    },
    /// A phase change.
    Phase(Phase),
}

/// A worker-to-coordinator line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromWorker {
    /// Once per second.
    Tick(Snapshot),
    /// The last line: every session has ended.
    Done(Snapshot),
}

impl FleetPlan {
    /// The guild session `i` belongs to.
    pub fn guild_of(&self, weights: &[f64], i: usize) -> u64 {
        let mut h = self.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let u = (client::next(&mut h) >> 11) as f64 / (1u64 << 53) as f64;
        GUILD_BASE + crate::run::pick(weights, u) as u64
    }

    /// The address session `i` connects from: source `i % n`, and a port of its own
    /// (`SOURCE_PORT_BASE + i / n`), so no two sessions of the run ever ask for the same
    /// one and the kernel never has to search.
    pub fn source_of(&self, i: usize) -> Option<SocketAddr> {
        let n = self.sources.len();
        let ip = *self.sources.get(i % n.max(1))?;
        let port = u16::try_from(SOURCE_PORT_BASE + i / n)
            .ok()
            .filter(|_| i / n < MAX_PORTS_PER_SOURCE)
            .unwrap_or(0);
        Some(SocketAddr::new(ip, port))
    }

    /// Starts sessions `i` with `i % of == index` in this process.
    pub async fn spawn(
        &self,
        index: usize,
        of: usize,
        shared: &Arc<Shared>,
        phase: &watch::Receiver<Phase>,
    ) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let weights = crate::run::guild_weights(&self.guild_size, self.guilds)?;
        let transport = Transport::parse(&self.compress)
            .with_context(|| format!("unknown --compress {:?}", self.compress))?;
        let peer = match &self.target {
            Target::Peer { url } => Some(PeerUrl::parse(url)?),
            Target::Concord { urls, .. } if urls.is_empty() => bail!("no target URLs"),
            Target::Concord { .. } => None,
        };
        let dicts = Arc::new(match (transport, &self.target) {
            (Transport::Dict, Target::Concord { .. }) => {
                let claims = Claims {
                    uid: u64::MAX,
                    name: "concord-loadtest".into(),
                    guilds: Vec::new(),
                    exp: self.deadline_unix_us / 1_000_000 + 86_400,
                    bot: false,
                };
                let token = token::mint(self.token_secret.as_bytes(), &claims);
                client::fetch_dictionaries(&self.apis, &token)
                    .await
                    .context("cannot fetch the nodes' zstd-dict dictionaries")?
            }
            _ => DictSet::new(),
        });
        let start = instant_at(self.start_unix_us);
        let deadline = instant_at(self.deadline_unix_us);
        let exp = self.deadline_unix_us / 1_000_000 + 86_400;
        let mut handles = Vec::new();
        for i in (index..self.connections).step_by(of.max(1)) {
            let guild = self.guild_of(&weights, i);
            let source = self.source_of(i);
            let due = start + Duration::from_secs_f64(i as f64 / self.ramp_per_sec);
            let seed = self.seed ^ (i as u64 + 1).wrapping_mul(0xff51_afd7_ed55_8ccd);
            let shared = shared.clone();
            let phase = phase.clone();
            let handle = match (&self.target, &peer) {
                (Target::Concord { urls, resume_any }, _) => {
                    let claims = Claims {
                        uid: i as u64 + 1,
                        name: format!("lt{}", i + 1),
                        guilds: vec![guild],
                        exp,
                        bot: false,
                    };
                    let plan = SessionPlan {
                        url: urls[i % urls.len()].clone(),
                        token: token::mint(self.token_secret.as_bytes(), &claims),
                        guild,
                        source,
                        until: deadline,
                        dicts: dicts.clone(),
                        phase,
                        resume_targets: resume_any.then(|| Arc::new(urls.clone())),
                    };
                    tokio::spawn(async move {
                        tokio::time::sleep_until(due.into()).await;
                        client::run_session(plan, transport, &shared, seed).await;
                        shared
                            .sessions_done
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    })
                }
                (Target::Peer { .. }, Some(url)) => {
                    let url = url.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep_until(due.into()).await;
                        let ip = source.map(|a| a.ip());
                        client::run_peer_session(&url, guild, ip, deadline, phase, &shared).await;
                        shared
                            .sessions_done
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    })
                }
                (Target::Peer { .. }, None) => bail!("peer target without a URL"),
            };
            handles.push(handle);
        }
        Ok(handles)
    }
}

/// The `Instant` at Unix time `unix_us` (processes on one box share the clock).
pub fn instant_at(unix_us: u64) -> Instant {
    let now_us = client::unix_us();
    let now = Instant::now();
    if unix_us >= now_us {
        now + Duration::from_micros(unix_us - now_us)
    } else {
        now.checked_sub(Duration::from_micros(now_us - unix_us))
            .unwrap_or(now)
    }
}

/// What the coordinator knows about its workers.
#[derive(Debug, Default)]
struct WorkersView {
    latest: Vec<Counters>,
    interval: LatencyRecorder,
    finals: Vec<Option<Whole>>,
    /// Lines that did not parse: a worker bug, reported as errors.
    bad_lines: u64,
}

/// The sessions of one run, wherever they live; the coordinator's handle on them.
#[derive(Debug)]
pub struct Fleet {
    local_sessions: Vec<JoinHandle<()>>,
    phase: watch::Sender<Phase>,
    workers: Vec<WorkerProcess>,
    view: FleetView,
}

/// A cheap, cloneable read view of a [`Fleet`]'s counters (for the reporter).
#[derive(Debug, Clone)]
pub struct FleetView {
    local: Arc<Shared>,
    workers: Arc<Mutex<WorkersView>>,
}

impl FleetView {
    /// Counters summed over this process and every worker.
    pub fn counters(&self) -> Counters {
        let mut c = self.local.counters();
        let v = lock(&self.workers);
        for w in &v.latest {
            c += *w;
        }
        c.errors += v.bad_lines;
        c
    }

    /// Latencies recorded anywhere since the last call.
    pub fn take_interval(&self) -> LatencyRecorder {
        let mut r = self.local.take_interval();
        let _ = r.merge(&std::mem::take(&mut lock(&self.workers).interval));
        r
    }
}

#[derive(Debug)]
struct WorkerProcess {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    reader: JoinHandle<()>,
}

impl Fleet {
    /// Starts the plan's sessions: here when `workers` is 0, otherwise in that many
    /// children of `exe` (this binary).
    pub async fn start(
        plan: &FleetPlan,
        workers: usize,
        exe: &std::path::Path,
        local: Arc<Shared>,
    ) -> anyhow::Result<Fleet> {
        let (phase, phase_rx) = watch::channel(Phase::Ramp);
        let view = Arc::new(Mutex::new(WorkersView {
            latest: vec![Counters::default(); workers],
            finals: vec![None; workers],
            ..WorkersView::default()
        }));
        let mut fleet = Fleet {
            local_sessions: Vec::new(),
            phase,
            workers: Vec::new(),
            view: FleetView {
                local: local.clone(),
                workers: view.clone(),
            },
        };
        if workers == 0 {
            fleet.local_sessions = plan.spawn(0, 1, &local, &phase_rx).await?;
            return Ok(fleet);
        }
        for index in 0..workers {
            let mut child = tokio::process::Command::new(exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start worker {} ({})", index, exe.display()))?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let line = serde_json::to_string(&ToWorker::Plan {
                plan: plan.clone(),
                index,
                of: workers,
            })?;
            stdin.write_all(format!("{line}\n").as_bytes()).await?;
            let view = view.clone();
            let reader = tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut v = lock(&view);
                    match serde_json::from_str::<FromWorker>(&line) {
                        Ok(FromWorker::Tick(s)) => {
                            v.latest[index] = s.counters;
                            let _ = v.interval.merge(&LatencyRecorder::from_wire(&s.interval));
                        }
                        Ok(FromWorker::Done(s)) => {
                            v.latest[index] = s.counters;
                            let _ = v.interval.merge(&LatencyRecorder::from_wire(&s.interval));
                            v.finals[index] = s.whole;
                        }
                        Err(_) => v.bad_lines += 1,
                    }
                }
            });
            fleet.workers.push(WorkerProcess {
                child,
                stdin: Some(stdin),
                reader,
            });
        }
        Ok(fleet)
    }

    /// A read view for the reporter.
    pub fn view(&self) -> FleetView {
        self.view.clone()
    }

    /// Moves every session, here and in the workers, to `phase`.
    pub async fn set_phase(&mut self, phase: Phase) {
        let line = serde_json::to_string(&ToWorker::Phase(phase.clone())).unwrap_or_default();
        let _ = self.phase.send(phase);
        for w in &mut self.workers {
            if let Some(stdin) = w.stdin.as_mut()
                && stdin
                    .write_all(format!("{line}\n").as_bytes())
                    .await
                    .is_err()
            {
                w.stdin = None;
            }
        }
    }

    /// Waits up to `grace` for every session to end (then stops the rest) and returns the
    /// whole run's counters, latency, READY latency and gap totals.
    pub async fn finish(
        mut self,
        grace: Duration,
    ) -> (Counters, LatencyRecorder, LatencyRecorder, Totals) {
        let deadline = tokio::time::Instant::now() + grace;
        for s in &mut self.local_sessions {
            if tokio::time::timeout_at(deadline, &mut *s).await.is_err() {
                s.abort();
            }
        }
        for w in &mut self.workers {
            if tokio::time::timeout_at(deadline, &mut w.reader)
                .await
                .is_err()
            {
                // A worker that will not finish is stopped; what it sent so far counts.
                w.stdin = None;
                let _ = w.child.start_kill();
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), w.child.wait()).await;
        }
        let counters = self.view.counters();
        let (mut latency, mut ready, mut totals) = self.view.local.whole();
        let v = lock(&self.view.workers);
        for whole in v.finals.iter().flatten() {
            let _ = latency.merge(&LatencyRecorder::from_wire(&whole.latency));
            let _ = ready.merge(&LatencyRecorder::from_wire(&whole.ready));
            totals.add(&whole.totals);
        }
        (counters, latency, ready, totals)
    }
}

/// `concord-loadtest worker`: runs the sessions the coordinator assigns on stdin and
/// reports on stdout until they have all ended.
pub async fn worker_main() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines
        .next_line()
        .await?
        .context("the coordinator closed stdin before sending a plan")?;
    let ToWorker::Plan { plan, index, of } =
        serde_json::from_str(&first).context("the first line must be a plan")?
    else {
        bail!("the first line must be a plan");
    };
    let shared = Arc::new(Shared::default());
    let (phase_tx, phase_rx) = watch::channel(Phase::Ramp);
    let sessions = plan.spawn(index, of, &shared, &phase_rx).await?;
    // Control lines; a closed stdin means the coordinator is gone: stop.
    tokio::spawn(async move {
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => {
                    if let Ok(ToWorker::Phase(p)) = serde_json::from_str(&line) {
                        let _ = phase_tx.send(p);
                    }
                }
                _ => {
                    let _ = phase_tx.send(Phase::Stop(Published::default()));
                    break;
                }
            }
        }
    });
    let ticker = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                emit(&FromWorker::Tick(shared.snapshot(false)));
            }
        })
    };
    for s in sessions {
        let _ = s.await;
    }
    ticker.abort();
    emit(&FromWorker::Done(shared.snapshot(true)));
    Ok(())
}

fn emit(msg: &FromWorker) {
    use std::io::Write as _;
    if let Ok(line) = serde_json::to_string(msg) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> FleetPlan {
        FleetPlan {
            target: Target::Concord {
                resume_any: false,
                urls: vec!["ws://127.0.0.1:1".into()],
            },
            token_secret: "s".into(),
            apis: Vec::new(),
            compress: "none".into(),
            connections: 1000,
            ramp_per_sec: 1000.0,
            guilds: 50,
            guild_size: "zipf:1.1".into(),
            sources: Vec::new(),
            seed: 42,
            start_unix_us: 0,
            deadline_unix_us: 0,
        }
    }

    #[test]
    fn a_session_has_the_same_guild_in_every_process() {
        let p = plan();
        let w = crate::run::guild_weights(&p.guild_size, p.guilds).unwrap();
        let a: Vec<u64> = (0..1000).map(|i| p.guild_of(&w, i)).collect();
        let b: Vec<u64> = (0..1000).map(|i| p.guild_of(&w, i)).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|g| (GUILD_BASE..GUILD_BASE + 50).contains(g)));
        // Zipf: the first guild is the most common.
        let first = a.iter().filter(|&&g| g == GUILD_BASE).count();
        let last = a.iter().filter(|&&g| g == GUILD_BASE + 49).count();
        assert!(first > 5 * last.max(1), "{first} vs {last}");
    }

    #[test]
    fn every_session_gets_its_own_source_port() {
        let mut p = plan();
        assert_eq!(p.source_of(5), None);
        p.sources = vec!["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()];
        let a: std::collections::HashSet<SocketAddr> =
            (0..1000).filter_map(|i| p.source_of(i)).collect();
        assert_eq!(a.len(), 1000);
        assert_eq!(p.source_of(3), Some("127.0.0.3:10001".parse().unwrap()));
        // Past the per-address budget the OS picks.
        assert_eq!(p.source_of(2 * MAX_PORTS_PER_SOURCE).unwrap().port(), 0);
    }

    #[test]
    fn control_lines_round_trip() {
        let msg = ToWorker::Phase(Phase::Final(Published {
            last: HashMap::from([(GUILD_BASE, 7)]),
            unknown: HashMap::from([(GUILD_BASE, vec![3])]),
        }));
        let line = serde_json::to_string(&msg).unwrap();
        let ToWorker::Phase(Phase::Final(m)) = serde_json::from_str(&line).unwrap() else {
            panic!("{line}");
        };
        assert_eq!(m.last(GUILD_BASE), 7);
        assert_eq!(m.unknown(GUILD_BASE), &[3]);
        let plan_line = serde_json::to_string(&ToWorker::Plan {
            plan: plan(),
            index: 1,
            of: 3,
        })
        .unwrap();
        assert!(matches!(
            serde_json::from_str(&plan_line).unwrap(),
            ToWorker::Plan {
                index: 1,
                of: 3,
                ..
            }
        ));
    }
}
