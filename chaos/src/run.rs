//! The runner: start the cluster, wait for one ring, start the load, apply the schedule
//! while measuring ring agreement, session recovery and memory, then read the load
//! tester's report and check the invariants. The driver is torn down by the caller on
//! every way out (see `main.rs`), so a failed or interrupted run leaves nothing behind.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::io::AsyncBufReadExt as _;

use crate::check::{self, Memory, Observed, Timed, Verdict};
use crate::driver::{Bins, Driver, NodeSpec, PUBLISH_SECRET, TOKEN_SECRET};
use crate::scenario::{Fault, Scenario, Target};
use crate::schedule::{self, Op, Step};

/// The load tester's first (and, under its default zipf weights, busiest) guild.
pub const BUSIEST_GUILD: u64 = 1_000_000;

/// One applied step, as the report shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepRecord {
    /// Seconds from the start of publishing.
    pub at: f64,
    /// The fault it belongs to (index into `faults`).
    pub fault: usize,
    /// What was done.
    pub op: Op,
    /// To whom.
    pub node: String,
    /// Why it could not be applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One per-second sample of the load, as the load tester printed it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// Seconds from the start of publishing (the tool's clock).
    #[serde(default)]
    pub at: f64,
    /// Sessions connected.
    pub connections: u64,
    /// Deliveries per second.
    pub deliveries_per_sec: f64,
    /// Latency p99 in this second, ms.
    pub p99_ms: f64,
}

/// What `concord-chaos run` writes (JSON) and draws (HTML).
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunReport {
    /// The scenario's name.
    pub scenario: String,
    /// Its description.
    pub description: String,
    /// The driver.
    pub driver: &'static str,
    /// The seed of `random` targets (and of the schedule, for `explore`).
    pub seed: u64,
    /// The nodes.
    pub nodes: Vec<NodeSpec>,
    /// The faults as scheduled.
    pub faults: Vec<Fault>,
    /// The steps as applied.
    pub steps: Vec<StepRecord>,
    /// The load's seconds.
    pub timeline: Vec<Sample>,
    /// What was measured.
    pub observed: Observed,
    /// Each invariant.
    pub verdicts: Vec<Verdict>,
    /// Every invariant held and every fault was applied.
    pub pass: bool,
    /// Where the logs and the load tester's report are.
    pub dir: PathBuf,
    /// How long the run took, seconds.
    pub wall_secs: f64,
}

/// A node's condition, as the schedule left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Condition {
    Up,
    Gone,
    Stopped,
    Cut,
    Degraded,
}

impl Condition {
    /// Whether the others should count it in the ring.
    fn in_ring(self) -> bool {
        matches!(self, Condition::Up | Condition::Degraded)
    }
}

/// What `/cluster` says: the ring version and the active member ids.
async fn view(driver: &Driver, i: usize) -> Option<(String, BTreeSet<String>)> {
    let (status, body) = driver.http(i, "GET", "/cluster").await.ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let version = v.get("ring_version")?.as_str()?.to_owned();
    let active = v
        .get("members")?
        .as_array()?
        .iter()
        .filter(|m| m.get("state").and_then(|s| s.as_str()) == Some("active"))
        .filter_map(|m| m.get("node_id").and_then(|s| s.as_str()).map(str::to_owned))
        .collect();
    Some((version, active))
}

/// Whether every node in `expected` sees a ring of exactly `expected`, the same one.
async fn agree(driver: &Driver, expected: &BTreeSet<usize>) -> bool {
    let want: BTreeSet<String> = expected
        .iter()
        .map(|i| driver.nodes()[*i].id.clone())
        .collect();
    let mut version = None;
    for i in expected {
        match view(driver, *i).await {
            Some((v, active)) if active == want => {
                if version.get_or_insert_with(|| v.clone()) != &v {
                    return false;
                }
            }
            _ => return false,
        }
    }
    !expected.is_empty()
}

/// A metric's value (the first series of that name) in a Prometheus text page.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Every series of `name` with its `label` value: `(value of label, sample)`.
fn labelled(page: &str, name: &str, label: &str) -> Vec<(String, f64)> {
    let prefix = format!("{name}{{");
    let key = format!("{label}=\"");
    page.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let value = rest.split_once(&key)?.1.split('"').next()?.to_owned();
            let n = l.rsplit(' ').next()?.parse().ok()?;
            Some((value, n))
        })
        .collect()
}

async fn metrics_of(driver: &Driver, i: usize, name: &str) -> Option<f64> {
    let (status, body) = driver.http(i, "GET", "/metrics").await.ok()?;
    (status == 200).then(|| metric(&body, name)).flatten()
}

/// Waits until all nodes agree on one ring.
async fn wait_formed(driver: &Driver, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let all: BTreeSet<usize> = (0..driver.nodes().len()).collect();
    while !agree(driver, &all).await {
        anyhow::ensure!(
            started.elapsed() < limit,
            "the nodes did not agree on one ring within {limit:?} (see the node logs)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(started.elapsed())
}

struct Pending {
    label: String,
    since: Instant,
    expected: BTreeSet<usize>,
}

struct Recovery {
    label: String,
    since: Instant,
    dipped: bool,
}

fn say(line: &str) {
    eprintln!("[chaos] {line}");
}

/// Runs `scenario` on a started `driver`. Does not tear the driver down.
///
/// # Errors
/// When the cluster never formed or the load tester could not run; a fault that fails
/// is recorded and fails the verdict instead.
#[allow(clippy::too_many_lines)]
pub async fn exercise(
    scenario: &Scenario,
    driver: &mut Driver,
    bins: &Bins,
    dir: &Path,
) -> anyhow::Result<RunReport> {
    let wall = Instant::now();
    let formed = wait_formed(driver, Duration::from_secs(60)).await?;
    say(&format!(
        "{} nodes on one ring after {:.1} s",
        driver.nodes().len(),
        formed.as_secs_f64()
    ));

    let load_report = dir.join("load.json");
    let join = |f: fn(&NodeSpec) -> &String| {
        driver
            .nodes()
            .iter()
            .map(f)
            .cloned()
            .collect::<Vec<_>>()
            .join(",")
    };
    let apis = driver
        .nodes()
        .iter()
        .filter(|n| scenario.load.api_nodes.is_empty() || scenario.load.api_nodes.contains(&n.id))
        .map(|n| n.api_url.clone())
        .collect::<Vec<_>>()
        .join(",");
    anyhow::ensure!(
        !apis.is_empty(),
        "load.api-nodes names no node of the cluster"
    );
    let mut cmd = driver.load_command(&bins.loadtest);
    cmd.arg("run")
        .args(["--targets", &join(|n| &n.client_url)])
        .args(["--api", &apis])
        .args([
            "--token-secret",
            TOKEN_SECRET,
            "--publish-secret",
            PUBLISH_SECRET,
        ])
        .args(["--duration", &scenario.load.duration.to_string()])
        .arg("--report")
        .arg(&load_report);
    if !scenario.load.args.iter().any(|a| a == "--resume-via") {
        // Behind a balancer: a session of a dead node resumes on another one.
        cmd.args(["--resume-via", "any"]);
    }
    cmd.args(&scenario.load.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut load = cmd.spawn().context("cannot start concord-loadtest")?;
    let stderr = load.stderr.take().context("load tester stderr")?;
    let (tx, mut samples) = tokio::sync::mpsc::unbounded_channel::<(Instant, Sample)>();
    let load_log = dir.join("load.log");
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut log = std::fs::File::create(&load_log).ok();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(f) = log.as_mut() {
                use std::io::Write as _;
                let _ = writeln!(f, "{line}");
            }
            if let Ok(s) = serde_json::from_str::<Sample>(&line) {
                let _ = tx.send((Instant::now(), s));
            }
        }
    });

    // Fault times count from the start of publishing: the first per-second line.
    let ramp_limit = Duration::from_secs(120);
    let (first_at, first) = tokio::time::timeout(ramp_limit, samples.recv())
        .await
        .context("the load tester printed no progress within 2 minutes (see load.log)")?
        .context("the load tester exited before publishing (see load.log)")?;
    let t0 = first_at - Duration::from_secs(1);
    let secs = |at: Instant| at.saturating_duration_since(t0).as_secs_f64();
    let mut timeline = vec![Sample {
        at: secs(first_at),
        ..first
    }];
    let full = first.connections;
    say(&format!("load running: {full} sessions"));

    let steps: Vec<Step> = schedule::expand(&scenario.faults);
    let mut next = 0;
    let mut records = Vec::new();
    let mut condition = vec![Condition::Up; driver.nodes().len()];
    let mut restarted = vec![false; driver.nodes().len()];
    let mut targets: HashMap<usize, usize> = HashMap::new();
    let mut rng = SmallRng::seed_from_u64(scenario.seed);
    let mut convergence: Option<Pending> = None;
    let mut recoveries: Vec<Recovery> = Vec::new();
    let mut observed = Observed::default();
    let mut rss_first: HashMap<usize, u64> = HashMap::new();
    let mut rss_last: HashMap<usize, u64> = HashMap::new();
    let baseline_at = t0 + memory_baseline(steps.first().map(|s| s.at), scenario.load.duration.0);
    let mut next_rss = baseline_at;
    let deadline = t0 + scenario.load.duration.0 + Duration::from_secs(120);
    let mut tick = tokio::time::interval(Duration::from_millis(100));

    let finished = loop {
        tick.tick().await;
        let now = Instant::now();
        while let Ok((at, s)) = samples.try_recv() {
            let sample = Sample { at: secs(at), ..s };
            recoveries.retain_mut(|p| {
                // A sample taken before the load tester noticed the fault still shows
                // every session: wait for the dip, or 3 s without one (none dropped).
                let waited = at.saturating_duration_since(p.since);
                if sample.connections < full {
                    p.dipped = true;
                    return true;
                }
                let secs = if p.dipped {
                    waited.as_secs_f64()
                } else if waited > Duration::from_secs(3) {
                    0.0
                } else {
                    return true;
                };
                observed.recoveries.push(Timed {
                    after: p.label.clone(),
                    secs: Some(secs),
                });
                false
            });
            timeline.push(sample);
        }
        if let Some(status) = load.try_wait().context("load tester")? {
            break status.success() || load_report.is_file();
        }
        if now > deadline {
            let _ = load.kill().await;
            say("the load tester ran 2 minutes past its duration: stopped");
            break false;
        }

        while next < steps.len() && now >= t0 + steps[next].at {
            let step = steps[next].clone();
            next += 1;
            let target = match targets.get(&step.fault) {
                Some(i) => Some(*i),
                None => {
                    let t = resolve(
                        &scenario.faults[step.fault].target,
                        driver,
                        &condition,
                        &mut rng,
                    )
                    .await;
                    if let Some(i) = t {
                        targets.insert(step.fault, i);
                    }
                    t
                }
            };
            let at = secs(Instant::now());
            let Some(i) = target else {
                records.push(StepRecord {
                    at,
                    fault: step.fault,
                    op: step.op,
                    node: "?".into(),
                    error: Some("no live node fits the target".into()),
                });
                continue;
            };
            let id = driver.nodes()[i].id.clone();
            let label = format!("{} {id} at {at:.1}s", op_name(step.op));
            say(&label);
            let applied_at = Instant::now();
            let error = driver
                .apply(i, step.op)
                .await
                .err()
                .map(|e| format!("{e:#}"));
            if let Some(e) = &error {
                say(&format!("  failed: {e}"));
            }
            records.push(StepRecord {
                at,
                fault: step.fault,
                op: step.op,
                node: id,
                error: error.clone(),
            });
            if error.is_some() {
                continue;
            }
            condition[i] = match step.op {
                Op::Kill | Op::Drain => Condition::Gone,
                Op::Stop => Condition::Stopped,
                Op::Partition { .. } => Condition::Cut,
                Op::Loss(_) | Op::Latency(_) => Condition::Degraded,
                Op::Restart | Op::Cont | Op::Heal => Condition::Up,
            };
            if step.op == Op::Restart {
                restarted[i] = true;
            }
            if step.op.takes_node_out() || step.op.brings_node_back() {
                // A newer change supersedes a measurement still waiting: its ring can
                // no longer come.
                convergence = Some(Pending {
                    label: label.clone(),
                    since: applied_at,
                    expected: (0..condition.len())
                        .filter(|j| condition[*j].in_ring())
                        .collect(),
                });
            }
            if step.op.takes_node_out() {
                recoveries.push(Recovery {
                    label,
                    since: applied_at,
                    dipped: false,
                });
            }
        }

        if let Some(p) = &convergence {
            if agree(driver, &p.expected).await {
                let took = p.since.elapsed().as_secs_f64();
                say(&format!("  ring agreed {took:.2} s after {}", p.label));
                observed.convergences.push(Timed {
                    after: p.label.clone(),
                    secs: Some(took),
                });
                convergence = None;
            } else if p.since.elapsed() > Duration::from_secs(30) {
                observed.convergences.push(Timed {
                    after: p.label.clone(),
                    secs: None,
                });
                convergence = None;
            }
        }

        if now >= next_rss {
            next_rss = now + Duration::from_secs(2);
            for (i, c) in condition.iter().enumerate() {
                if *c != Condition::Up {
                    // Not measured throughout: no growth figure for it.
                    rss_first.remove(&i);
                } else if let Some(rss) =
                    metrics_of(driver, i, "concord_process_resident_bytes").await
                {
                    rss_first.entry(i).or_insert(rss as u64);
                    rss_last.insert(i, rss as u64);
                }
            }
        }
    };

    if let Some(p) = convergence.take() {
        observed.convergences.push(Timed {
            after: p.label,
            secs: None,
        });
    }
    for p in recoveries {
        observed.recoveries.push(Timed {
            after: p.label,
            secs: None,
        });
    }
    for (i, first) in &rss_first {
        if !restarted[*i] {
            observed.memory.push(Memory {
                node: driver.nodes()[*i].id.clone(),
                first: *first,
                last: rss_last.get(i).copied().unwrap_or(*first),
            });
        }
    }
    observed.memory.sort_by(|a, b| a.node.cmp(&b.node));
    // Resume outcomes as the nodes counted them (a node restarted during the run counts
    // only since its restart).
    for i in 0..condition.len() {
        if let Ok((200, page)) = driver.http(i, "GET", "/metrics").await {
            for (outcome, n) in labelled(&page, "concord_resumes_total", "outcome") {
                *observed.resume_outcomes.entry(outcome).or_default() += n as u64;
            }
            // The peer layer's counters (resyncs, gap requests, fresh sequences, ...):
            // where to look when an event invariant fails.
            let counters = page
                .lines()
                .filter(|l| l.starts_with("concord_peer_") && l.contains("_total"))
                .filter_map(|l| {
                    let (name, v) = l.rsplit_once(' ')?;
                    Some((name.to_owned(), v.parse::<f64>().ok()?))
                })
                .filter(|(_, v)| *v > 0.0)
                .collect();
            observed
                .node_counters
                .insert(driver.nodes()[i].id.clone(), counters);
        }
    }
    if finished && let Ok(text) = std::fs::read_to_string(&load_report) {
        let r: serde_json::Value = serde_json::from_str(&text).context("the load report")?;
        let n = |path: &[&str]| {
            path.iter()
                .try_fold(&r, |v, k| v.get(k))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        observed.load_finished = true;
        observed.lost = n(&["gaps"]);
        observed.duplicates = n(&["duplicates"]);
        observed.reordered = n(&["reordered"]);
        observed.resume_failures = n(&["resumes", "failed"]);
        observed.connections_failed = n(&["connections", "failed"]);
    }
    let verdicts = check::check(&scenario.invariants, &observed);
    let applied = records.iter().all(|r| r.error.is_none());
    Ok(RunReport {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        driver: scenario.cluster.driver.as_str(),
        seed: scenario.seed,
        nodes: driver.nodes().to_vec(),
        faults: scenario.faults.clone(),
        steps: records,
        timeline,
        pass: applied && verdicts.iter().all(|v| v.pass),
        observed,
        verdicts,
        dir: dir.to_path_buf(),
        wall_secs: wall.elapsed().as_secs_f64(),
    })
}

/// When memory growth starts counting, from the start of publishing: not before a
/// quarter of the load (guild logs and replay buffers fill in the first seconds), and not
/// before the second before the first fault. Nodes that were restarted or stopped after
/// it are left out of the figure.
fn memory_baseline(first_fault: Option<Duration>, load: Duration) -> Duration {
    let warm = load / 4;
    first_fault.map_or(warm, |at| {
        at.saturating_sub(Duration::from_secs(1)).max(warm)
    })
}

fn op_name(op: Op) -> String {
    match op {
        Op::Kill => "kill".into(),
        Op::Restart => "restart".into(),
        Op::Stop => "stop".into(),
        Op::Cont => "cont".into(),
        Op::Drain => "drain".into(),
        Op::Partition {
            inbound_only: false,
        } => "partition".into(),
        Op::Partition { inbound_only: true } => "partition-inbound".into(),
        Op::Heal => "heal".into(),
        Op::Loss(p) => format!("loss {p}%"),
        Op::Latency(ms) => format!("latency {ms}ms"),
    }
}

/// Which node a fault's target names now.
async fn resolve(
    target: &Target,
    driver: &Driver,
    condition: &[Condition],
    rng: &mut SmallRng,
) -> Option<usize> {
    let up: Vec<usize> = (0..condition.len())
        .filter(|i| condition[*i] == Condition::Up)
        .collect();
    match target {
        Target::Node(id) => driver.nodes().iter().position(|n| &n.id == id),
        Target::Random => (!up.is_empty()).then(|| up[rng.random_range(0..up.len())]),
        Target::SessionHost => {
            let mut best: Option<(usize, f64)> = None;
            for i in &up {
                let n = metrics_of(driver, *i, "concord_sessions")
                    .await
                    .unwrap_or(0.0);
                if best.is_none_or(|(_, b)| n > b) {
                    best = Some((*i, n));
                }
            }
            best.map(|(i, _)| i)
        }
        Target::BusiestGuildOwner => {
            for i in &up {
                let path = format!("/cluster/guilds/{BUSIEST_GUILD}");
                if let Ok((200, body)) = driver.http(*i, "GET", &path).await {
                    let owner = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("owner")?.as_str().map(str::to_owned))?;
                    return driver.nodes().iter().position(|n| n.id == owner);
                }
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_counts_from_the_warm_state() {
        let s = Duration::from_secs;
        assert_eq!(memory_baseline(None, s(20)), s(5));
        assert_eq!(memory_baseline(Some(s(10)), s(20)), s(9));
        // An early fault in a long exploration: still after the warm-up.
        assert_eq!(memory_baseline(Some(s(3)), s(60)), s(15));
    }

    #[test]
    fn metrics_are_read_from_the_text_page() {
        let page = "# HELP x\nconcord_sessions 42\nconcord_sessions_other 1\nconcord_process_resident_bytes{a=\"b\"} 1.5e7\n";
        assert_eq!(metric(page, "concord_sessions"), Some(42.0));
        assert_eq!(metric(page, "concord_process_resident_bytes"), Some(1.5e7));
        assert_eq!(metric(page, "concord_nothing"), None);
        let page = "concord_resumes_total{outcome=\"local\"} 3\nconcord_resumes_total{outcome=\"promoted\"} 97\n";
        assert_eq!(
            labelled(page, "concord_resumes_total", "outcome"),
            vec![("local".to_owned(), 3.0), ("promoted".to_owned(), 97.0)]
        );
    }
}
