//! Session continuity on a real cluster (`concord serve` processes on loopback), with
//! `--session-replication sync` (the default).
//!
//! Each scenario runs sessions on the nodes while a publisher keeps publishing to two
//! guilds with different owners, and applies faults: SIGKILL of the node hosting every
//! session, a drain of it, a rolling restart of all three nodes, a node joining (then
//! a kill, which only the re-homed replicas survive). A client whose connection ends,
//! or that gets op 7, reconnects to the next node and resumes with its last `s`. At the
//! end each client must have every acknowledged event of both guilds exactly once, in
//! guild order, with `s` contiguous across every move, and no client may ever be told
//! to identify again (op 9).
//!
//! Every process is killed when the test ends, pass or fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod common;

use common::procs::{NodeProc, Ports, reserve_ports, token};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Held by every test here: only three node processes run at once.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bound on a whole scenario.
const DEADLINE: Duration = Duration::from_secs(120);
/// Pause between two publishes to each guild.
const PUBLISH_EVERY: Duration = Duration::from_millis(15);

/// Waits until every node in `admins` reports a ring of exactly `members`.
async fn wait_ring(http: &reqwest::Client, admins: &[SocketAddr], members: &[&str]) {
    let want: BTreeSet<String> = members.iter().map(|m| (*m).to_owned()).collect();
    let start = Instant::now();
    loop {
        let mut all = true;
        for a in admins {
            let got: Option<BTreeSet<String>> = async {
                let v: Value = http
                    .get(format!("http://{a}/cluster"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                Some(
                    v["ring_members"]
                        .as_array()?
                        .iter()
                        .filter_map(|m| m.as_str().map(str::to_owned))
                        .collect(),
                )
            }
            .await;
            all &= got.as_ref() == Some(&want);
        }
        if all {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nodes never agreed on a ring of {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one client saw.
#[derive(Debug, Default)]
struct Seen {
    /// Per guild, the `i` of every event received, in order.
    events: BTreeMap<u64, Vec<u64>>,
    /// Connections it made (1 + resumes).
    connections: u32,
    /// Resumes answered with RESUMED.
    resumed: u32,
}

/// One session's client: identifies on `first`, and whenever its connection ends (or it
/// gets op 7) resumes on the next node of `others`, until it has END of every guild.
async fn client(uid: u64, guilds: Vec<u64>, first: SocketAddr, others: Vec<SocketAddr>) -> Seen {
    assert!(!others.is_empty());
    let token = token(uid, &guilds);
    let mut seen = Seen::default();
    let mut session_id: Option<String> = None;
    let mut last_s = 0u64;
    let mut ended = BTreeSet::new();
    let mut target = first;
    let mut next_other = uid as usize;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    'connections: loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "client {uid} ran out of time: {seen:?}"
        );
        let Ok((mut ws, _)) =
            tokio_tungstenite::connect_async(format!("ws://{target}/?v=10&encoding=json")).await
        else {
            target = others[next_other % others.len()];
            next_other += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        seen.connections += 1;
        loop {
            let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(m) => m,
                Err(_) => panic!("client {uid} timed out reading: {seen:?}"),
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t.to_string(),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    // Its node died or closed it: resume on another one.
                    target = others[next_other % others.len()];
                    next_other += 1;
                    continue 'connections;
                }
                Some(Ok(_)) => continue,
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            match v["op"].as_u64().unwrap() {
                10 => {
                    let cmd = match &session_id {
                        None => json!({"op": 2, "d": {"token": token, "intents": 513,
                            "properties": {"os": "linux", "browser": "t", "device": "t"}}}),
                        Some(id) => {
                            json!({"op": 6, "d": {"token": token, "session_id": id, "seq": last_s}})
                        }
                    };
                    ws.send(Message::text(cmd.to_string())).await.unwrap();
                }
                0 => {
                    let s = v["s"].as_u64().unwrap();
                    assert_eq!(
                        s,
                        last_s + 1,
                        "client {uid}: s must continue by one across nodes: {v}"
                    );
                    last_s = s;
                    match v["t"].as_str().unwrap() {
                        "READY" => session_id = Some(v["d"]["session_id"].as_str().unwrap().into()),
                        "RESUMED" => seen.resumed += 1,
                        "E" => seen
                            .events
                            .entry(v["d"]["g"].as_u64().unwrap())
                            .or_default()
                            .push(v["d"]["i"].as_u64().unwrap()),
                        "END" => {
                            ended.insert(v["d"]["g"].as_u64().unwrap());
                            if ended.len() == guilds.len() {
                                let _ = ws.close(None).await;
                                return seen;
                            }
                        }
                        _ => {}
                    }
                }
                7 => {
                    // Reconnect: the node is draining.
                    target = others[next_other % others.len()];
                    next_other += 1;
                    continue 'connections;
                }
                9 => panic!("client {uid} was told to identify again (op 9): {seen:?}"),
                _ => {}
            }
        }
    }
}

/// Publishes `t` with `d` to `api`; true when acknowledged (202).
async fn publish(http: &reqwest::Client, api: SocketAddr, guild: u64, t: &str, d: Value) -> bool {
    publish_seq(http, api, guild, t, d).await.is_some()
}

/// Publishes `t` with `d` to `api`; the guild seq it was acknowledged with (202).
async fn publish_seq(
    http: &reqwest::Client,
    api: SocketAddr,
    guild: u64,
    t: &str,
    d: Value,
) -> Option<u64> {
    let resp = http
        .post(format!("http://{api}/v1/guilds/{guild}/events"))
        .bearer_auth("p")
        .timeout(Duration::from_secs(15))
        .json(&json!({"t": t, "d": d}))
        .send()
        .await
        .ok()?;
    if resp.status().as_u16() != 202 {
        return None;
    }
    let v: Value = resp.json().await.ok()?;
    v["guild_seq"].as_u64()
}

/// `concord_resumes_total` by outcome, summed over `admins`.
async fn resume_outcomes(http: &reqwest::Client, admins: &[SocketAddr]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for a in admins {
        let text = http
            .get(format!("http://{a}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("concord_resumes_total{outcome=\"") else {
                continue;
            };
            let Some((outcome, value)) = rest.split_once("\"} ") else {
                continue;
            };
            *out.entry(outcome.to_owned()).or_default() += value.trim().parse::<u64>().unwrap_or(0);
        }
    }
    out
}

/// A cluster of node processes on reserved ports.
struct Cluster {
    ports: Vec<Ports>,
    procs: Vec<Option<NodeProc>>,
    http: reqwest::Client,
}

impl Cluster {
    /// Reserves ports for `total` nodes and starts the first `running`.
    async fn start(running: usize, total: usize) -> Cluster {
        let mut c = Cluster {
            ports: reserve_ports(total),
            procs: (0..total).map(|_| None).collect(),
            http: reqwest::Client::new(),
        };
        // The seedless first node must be up before the others seed from it: two seeded
        // nodes that come up first can otherwise form a cluster of their own.
        c.spawn(0);
        c.wait_ring(&[0]).await;
        for i in 1..running {
            c.spawn(i);
        }
        c.wait_ring(&(0..running).collect::<Vec<_>>()).await;
        c
    }

    fn id(i: usize) -> String {
        format!("n{}", i + 1)
    }

    /// Starts node `i`, seeded by every other node (so the first node can restart too).
    fn spawn(&mut self, i: usize) {
        let seeds: Vec<SocketAddr> = (0..self.ports.len())
            .filter(|&j| j != i && self.procs[j].is_some())
            .map(|j| self.ports[j].gossip)
            .collect();
        self.procs[i] = Some(NodeProc::spawn_with(
            &Cluster::id(i),
            self.ports[i],
            &seeds,
            // A drain waits (up to its grace) for its sessions to move.
            &["--drain-grace", "10s"],
        ));
    }

    async fn wait_ring(&self, members: &[usize]) {
        let admins: Vec<SocketAddr> = members.iter().map(|&i| self.ports[i].admin).collect();
        let ids: Vec<String> = members.iter().map(|&i| Cluster::id(i)).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        wait_ring(&self.http, &admins, &ids).await;
    }

    /// Waits until node `i` answers `/readyz` with 200: on the ring, and done taking
    /// over its guilds' logs (what a rolling restart waits for before the next node).
    async fn wait_ready(&self, i: usize) {
        let start = Instant::now();
        loop {
            let ok = self
                .http
                .get(format!("http://{}/readyz", self.ports[i].admin))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "n{} never got ready",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            p.child.kill().unwrap();
            p.child.wait().unwrap();
        }
    }

    /// `POST /admin/drain` on node `i`, then waits for the process to exit.
    async fn drain(&mut self, i: usize) {
        let r = self
            .http
            .post(format!("http://{}/admin/drain", self.ports[i].admin))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let mut p = self.procs[i].take().unwrap();
        let start = Instant::now();
        while p.child.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "n{} never exited",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn clients(&self) -> Vec<SocketAddr> {
        self.ports.iter().map(|p| p.client).collect()
    }

    /// A guild node `i` owns on the full ring.
    fn guild_owned_by(&self, i: usize) -> u64 {
        let ids: Vec<String> = (0..self.ports.len()).map(Cluster::id).collect();
        let ring = concord_gateway::cluster::view::build_ring(
            concord_ring::RingConfig::default(),
            ids.iter().map(|s| concord_ring::NodeId::from(s.as_str())),
        )
        .unwrap();
        (1..10_000u64)
            .find(|g| ring.owner_of_guild(*g).as_str() == Cluster::id(i))
            .unwrap()
    }
}

/// Publishes `E {g, i}` to every guild, round after round, through whichever API
/// answers, until `stop`; then `END {g}`. Returns the acknowledged `i` per guild.
/// What the publisher got acknowledged: per guild the `i`s, per `(guild, i)` the API
/// (node index) and guild seq that acknowledged it, the `(guild, i)`s it had to send
/// again after a failed attempt, and how many rounds it ran.
type Published = (
    BTreeMap<u64, Vec<u64>>,
    BTreeMap<(u64, u64), (usize, u64)>,
    BTreeSet<(u64, u64)>,
    u64,
);

fn publisher(
    apis: Vec<SocketAddr>,
    guilds: Vec<u64>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Published> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut acked: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut via: BTreeMap<(u64, u64), (usize, u64)> = BTreeMap::new();
        // Publishes sent again after a failed attempt: a 503 may still be sequenced (it
        // says so), so such an event may arrive twice.
        let mut retried: BTreeSet<(u64, u64)> = BTreeSet::new();
        let mut next_api = 0;
        let mut i = 0;
        while !*stop.borrow() {
            for &g in &guilds {
                // An API that refuses (node down or draining) is skipped; the event
                // counts only if acknowledged.
                for attempt in 0..apis.len() {
                    if attempt > 0 {
                        retried.insert((g, i));
                    }
                    let index = next_api % apis.len();
                    next_api += 1;
                    if let Some(seq) =
                        publish_seq(&http, apis[index], g, "E", json!({"g": g, "i": i})).await
                    {
                        acked.entry(g).or_default().push(i);
                        via.insert((g, i), (index, seq));
                        break;
                    }
                }
            }
            i += 1;
            tokio::time::sleep(PUBLISH_EVERY).await;
        }
        for &g in &guilds {
            let mut done = false;
            for k in 0..apis.len() * 20 {
                if publish(&http, apis[k % apis.len()], g, "END", json!({"g": g})).await {
                    done = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(done, "END was never acknowledged");
        }
        (acked, via, retried, i)
    })
}

/// Runs `sessions` clients (client k starts on node `homes[k % homes.len()]` and
/// resumes on the others in turn) while publishing, applies `faults`, and checks what
/// every client saw. Returns resumes by outcome.
async fn scenario<F>(
    cluster: &mut Cluster,
    sessions: u64,
    homes: &[usize],
    faults: F,
) -> BTreeMap<String, u64>
where
    F: AsyncFnOnce(&mut Cluster),
{
    let guilds = vec![cluster.guild_owned_by(2), cluster.guild_owned_by(0)];
    let all = cluster.clients();
    let mut clients = Vec::new();
    for k in 0..sessions {
        let home = homes[k as usize % homes.len()];
        let others: Vec<SocketAddr> = (1..all.len())
            .map(|d| all[(home + d) % all.len()])
            .collect();
        clients.push(tokio::spawn(client(
            1000 + k,
            guilds.clone(),
            all[home],
            others,
        )));
    }
    // Every session identifies and its node subscribes to both guilds' owners well
    // within this (milliseconds on loopback).
    tokio::time::sleep(Duration::from_secs(2)).await;

    let apis: Vec<SocketAddr> = cluster.ports.iter().map(|p| p.api).collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let publishing = publisher(apis, guilds.clone(), stop_rx);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    faults(cluster).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true).unwrap();
    let (acked, via, retried, rounds) = publishing.await.unwrap();

    let mut resumed = 0;
    let mut wrong = Vec::new();
    for (k, c) in clients.into_iter().enumerate() {
        let seen = c.await.unwrap();
        resumed += seen.resumed;
        for g in &guilds {
            let mut got = seen.events.get(g).cloned().unwrap_or_default();
            // A publish sent again after an ambiguous failure may be there twice; only
            // its first copy counts (a second copy of anything else is a duplicate).
            let mut first = BTreeSet::new();
            got.retain(|i| first.insert(*i) || !retried.contains(&(*g, *i)));
            let unique: BTreeSet<u64> = got.iter().copied().collect();
            let got_acked: Vec<u64> = got
                .iter()
                .copied()
                .filter(|i| acked[g].binary_search(i).is_ok())
                .collect();
            if unique.len() != got.len() || got_acked != acked[g] {
                let missing: Vec<String> = acked[g]
                    .iter()
                    .filter(|i| !unique.contains(i))
                    .map(|i| {
                        let (node, seq) = via[&(*g, *i)];
                        format!("{i} (via n{}, seq {seq})", node + 1)
                    })
                    .collect();
                wrong.push(format!(
                    "client {k} (home n{}) guild {g}: {} duplicates, missing {missing:?}",
                    homes[k % homes.len()] + 1,
                    got.len() - unique.len()
                ));
            }
        }
    }
    // Two events acknowledged at one guild seq: two nodes sequenced the guild at once.
    let mut at: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for (&(g, i), &(_, seq)) in &via {
        if let Some(other) = at.insert((g, seq), i) {
            wrong.push(format!(
                "guild {g} seq {seq} acknowledged twice: i {other} and i {i}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "every client must get every acknowledged event once, in order:\n{}",
        wrong.join("\n")
    );
    let live: Vec<SocketAddr> = (0..cluster.ports.len())
        .filter(|&i| cluster.procs[i].is_some())
        .map(|i| cluster.ports[i].admin)
        .collect();
    let outcomes = resume_outcomes(&cluster.http, &live).await;
    eprintln!(
        "{sessions} sessions, {rounds} publish rounds ({} + {} acknowledged), faults took {} ms; {resumed} resumes: {outcomes:?}",
        acked[&guilds[0]].len(),
        acked[&guilds[1]].len(),
        started.elapsed().as_millis()
    );
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_session_host_loses_no_event() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, 3).await;
    let outcomes = scenario(&mut cluster, 40, &[2], async |c: &mut Cluster| {
        c.kill(2);
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    // Its host is gone: every session was promoted from its replica.
    assert_eq!(outcomes.get("promoted"), Some(&40), "{outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_session_host_loses_no_event() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, 3).await;
    let outcomes = scenario(&mut cluster, 40, &[2], async |c: &mut Cluster| {
        c.drain(2).await;
    })
    .await;
    // The host stays up until each session was taken over from it.
    assert_eq!(outcomes.get("migrated"), Some(&40), "{outcomes:?}");
}

/// A rolling restart under continuous publishing, each node back and ready before the
/// next goes. It used to fork a guild's sequence: a restarted node counted its publish
/// ids from 0 again, and an owner that still remembered an id of its previous
/// incarnation acknowledged the new publish with the old event's seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_loses_no_event() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, 3).await;
    scenario(&mut cluster, 30, &[0, 1, 2], async |c: &mut Cluster| {
        for i in 0..3 {
            c.drain(i).await;
            c.spawn(i);
            c.wait_ring(&[0, 1, 2]).await;
            c.wait_ready(i).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_under_load_moves_guilds_and_replicas_without_loss() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(2, 3).await;
    // Sessions on n1 and n2; n3 joins (guilds and session replicas move to it), then
    // n2 dies: its sessions resume from replicas, some of them re-homed by the join.
    let outcomes = scenario(&mut cluster, 30, &[0, 1], async |c: &mut Cluster| {
        c.spawn(2);
        c.wait_ring(&[0, 1, 2]).await;
        c.wait_ready(2).await;
        c.kill(1);
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    assert_eq!(outcomes.get("promoted"), Some(&15), "{outcomes:?}");
}
