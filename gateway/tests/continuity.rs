//! Session continuity on a real three-node cluster (`concord serve` processes on
//! loopback), with `--session-replication sync` (the default).
//!
//! Every session lives on n3. While a publisher keeps publishing to two guilds (one
//! owned by n3, one by another node) through n1, n3 is SIGKILLed (or drained); every
//! client reconnects to n1 or n2 and resumes with its last `s`. Each client must then
//! have every acknowledged event of both guilds exactly once, in guild order, with `s`
//! contiguous across the move, and no client may be told to identify again.
//!
//! Every process is killed when the test ends, pass or fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use common::procs::{NodeProc, Ports, reserve_ports};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Held by every test here: only three node processes run at once.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sessions on the node that dies.
const SESSIONS: u64 = 40;
/// Events per guild.
const EVENTS: u64 = 120;
/// The fault comes after this many events per guild were acknowledged.
const FAULT_AFTER: u64 = 40;
/// Bound on the whole scenario.
const DEADLINE: Duration = Duration::from_secs(90);

fn token(uid: u64, guilds: &[u64]) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
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

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    Drain,
}

/// Publishes `t` with `d` to `api`; true when acknowledged (202).
async fn publish(http: &reqwest::Client, api: SocketAddr, guild: u64, t: &str, d: Value) -> bool {
    let resp = http
        .post(format!("http://{api}/v1/guilds/{guild}/events"))
        .bearer_auth("p")
        .timeout(Duration::from_secs(15))
        .json(&json!({"t": t, "d": d}))
        .send()
        .await;
    resp.is_ok_and(|r| r.status().as_u16() == 202)
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

async fn host_fault_loses_nothing(fault: Fault) {
    let _serial = SERIAL.lock().await;
    let ports: Vec<Ports> = reserve_ports(3);
    let seed = [ports[0].gossip];
    let mut nodes = [
        Some(NodeProc::spawn("n1", ports[0], &[])),
        Some(NodeProc::spawn("n2", ports[1], &seed)),
        // A drain waits (up to its grace) for its sessions to move.
        Some(NodeProc::spawn_with(
            "n3",
            ports[2],
            &seed,
            &["--drain-grace", "10s"],
        )),
    ];
    let http = reqwest::Client::new();
    let admins: Vec<SocketAddr> = ports.iter().map(|p| p.admin).collect();
    wait_ring(&http, &admins, &["n1", "n2", "n3"]).await;

    // One guild owned by the victim, one by n1.
    let ring = concord_gateway::cluster::view::build_ring(
        concord_ring::RingConfig::default(),
        ["n1", "n2", "n3"].map(concord_ring::NodeId::from),
    )
    .unwrap();
    let owned_by = |n: &str| {
        (1..10_000u64)
            .find(|g| ring.owner_of_guild(*g).as_str() == n)
            .unwrap()
    };
    let guilds = vec![owned_by("n3"), owned_by("n1")];

    let others = vec![ports[0].client, ports[1].client];
    let mut clients = Vec::new();
    for k in 0..SESSIONS {
        clients.push(tokio::spawn(client(
            1000 + k,
            guilds.clone(),
            ports[2].client,
            others.clone(),
        )));
    }
    // Every session identifies and its node subscribes to both guilds' owners well
    // within this (milliseconds on loopback).
    tokio::time::sleep(Duration::from_secs(2)).await;

    let api = ports[0].api;
    let mut acked: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut fault_at = None;
    for i in 0..EVENTS {
        if i == FAULT_AFTER {
            let victim = nodes[2].as_mut().unwrap();
            match fault {
                Fault::Kill => {
                    victim.child.kill().unwrap();
                    victim.child.wait().unwrap();
                }
                Fault::Drain => {
                    let r = http
                        .post(format!("http://{}/admin/drain", ports[2].admin))
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success());
                }
            }
            fault_at = Some(Instant::now());
        }
        for &g in &guilds {
            if publish(&http, api, g, "E", json!({"g": g, "i": i})).await {
                acked.entry(g).or_default().push(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for &g in &guilds {
        assert!(
            publish(&http, api, g, "END", json!({"g": g})).await,
            "END was not acknowledged"
        );
    }

    let mut resumed = 0;
    for (k, c) in clients.into_iter().enumerate() {
        let seen = c.await.unwrap();
        resumed += seen.resumed;
        assert!(seen.connections >= 2, "client {k} never moved: {seen:?}");
        for g in &guilds {
            let got = seen.events.get(g).cloned().unwrap_or_default();
            let unique: BTreeSet<u64> = got.iter().copied().collect();
            assert_eq!(
                unique.len(),
                got.len(),
                "client {k} guild {g}: duplicates in {got:?}"
            );
            let got_acked: Vec<u64> = got
                .iter()
                .copied()
                .filter(|i| acked[g].binary_search(i).is_ok())
                .collect();
            assert_eq!(
                got_acked, acked[g],
                "client {k} guild {g}: every acknowledged event once, in order"
            );
        }
    }
    let elapsed = fault_at.map_or(0, |t| t.elapsed().as_millis());
    let outcomes = resume_outcomes(&http, &admins[..2]).await;
    eprintln!(
        "{fault:?} of the host of {SESSIONS} sessions: {resumed} resumed on other nodes ({outcomes:?}), {} acknowledged events per guild, all delivered ({elapsed} ms from the fault to the last client done)",
        acked[&guilds[0]].len(),
    );
    assert_eq!(resumed as u64, SESSIONS, "every client resumed once");
    let moved = outcomes.get("migrated").unwrap_or(&0) + outcomes.get("promoted").unwrap_or(&0);
    assert_eq!(
        moved, SESSIONS,
        "every resume moved the session: {outcomes:?}"
    );
    let want = match fault {
        // The host is gone: its replicas take over.
        Fault::Kill => "promoted",
        // The host stays up until each session was taken over from it.
        Fault::Drain => "migrated",
    };
    assert_eq!(
        outcomes.get(want),
        Some(&SESSIONS),
        "every session {want}: {outcomes:?}"
    );
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_session_host_loses_no_event() {
    host_fault_loses_nothing(Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_session_host_loses_no_event() {
    host_fault_loses_nothing(Fault::Drain).await;
}
