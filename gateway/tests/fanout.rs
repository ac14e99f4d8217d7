//! Cross-node publishing on a three-node cluster of in-process nodes (gossip and peer
//! links on loopback): every client on every node receives every guild event exactly
//! once, in the same guild order, whichever node it was published on; and the owner
//! sends one fan-out batch per subscribed peer node, never one per session.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, Publisher};
use concord_gateway::cluster::NodeState;
use concord_gateway::{Config, Node};
use concord_router::cluster::FrameKind;
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};

const GUILDS: [u64; 4] = [101, 202, 303, 404];
const EVENTS_PER_GUILD: u64 = 20;
const CLIENTS_PER_NODE: usize = 2;

fn node_config(id: &str, seeds: Vec<SocketAddr>) -> Config {
    let mut c = common::config();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    c.node_id = id.into();
    c.gossip_listen = Some(any);
    c.peer_listen = Some(any);
    c.cluster_secret = Some("fanout-test-secret".into());
    c.seeds = seeds.into_iter().map(Into::into).collect();
    c
}

/// Starts three nodes and waits until all of them report the same three-member ring.
async fn start_cluster() -> (Vec<Node>, Config) {
    let first = common::start(node_config("n1", vec![])).await;
    let seed = first.gossip_addr.unwrap();
    let mut nodes = vec![first];
    for id in ["n2", "n3"] {
        nodes.push(common::start(node_config(id, vec![seed])).await);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let views: Vec<_> = nodes.iter().map(|n| n.cluster().borrow().clone()).collect();
        let agreed = views.iter().all(|v| {
            v.ring_version().is_some()
                && v.ring_version() == views[0].ring_version()
                && v.members
                    .iter()
                    .filter(|m| m.state == NodeState::Active)
                    .count()
                    == 3
        });
        if agreed {
            break;
        }
        assert!(Instant::now() < deadline, "no common ring in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (nodes, node_config("n1", vec![]))
}

/// `CLIENTS_PER_NODE` identified clients on every node, each a member of every guild.
async fn connect_clients(nodes: &[Node], config: &Config) -> Vec<Client> {
    let mut clients = Vec::new();
    let mut uid = 1000;
    for node in nodes {
        for _ in 0..CLIENTS_PER_NODE {
            uid += 1;
            let mut c = Client::connect(node, "v=10&encoding=json").await;
            c.identify(&common::token(config, uid, &GUILDS), &GUILDS)
                .await;
            clients.push(c);
        }
    }
    clients
}

/// Reads `client`'s dispatches until `done` says so or `within` passes; false on
/// timeout.
async fn read_until(
    client: &mut Client,
    within: Duration,
    mut done: impl FnMut(&Value) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, client.dispatch()).await {
            Ok(d) => {
                if done(&d) {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
}

/// Subscriptions travel to each guild's owner asynchronously after a client joins.
/// Publishes a marker to every guild until one round reaches every client, so the test
/// proper starts with every node subscribed (bounded: 30 rounds).
async fn warm_up(publishers: &[Publisher], clients: &mut [Client]) {
    for round in 0..30u64 {
        for (i, g) in GUILDS.iter().enumerate() {
            publishers[i % publishers.len()]
                .guild(*g, "WARMUP", json!({"g": g, "round": round}))
                .await;
        }
        let mut all = true;
        for c in clients.iter_mut() {
            let mut seen = 0;
            all &= read_until(c, Duration::from_millis(500), |d| {
                if d["t"] == "WARMUP" && d["d"]["round"] == round {
                    seen += 1;
                }
                seen == GUILDS.len()
            })
            .await;
        }
        if all {
            return;
        }
    }
    panic!("subscriptions never reached the owners");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_on_every_node_gets_every_event_once_in_guild_order() {
    let (nodes, config) = start_cluster().await;
    let publishers: Vec<_> = nodes.iter().map(|n| Publisher::new(n, &config)).collect();
    let mut clients = connect_clients(&nodes, &config).await;
    warm_up(&publishers, &mut clients).await;

    // Each event goes to a different node than the one before it, so most are forwarded.
    for g in GUILDS {
        let mut last = 0;
        for i in 0..EVENTS_PER_GUILD {
            let seq = publishers[(i as usize + g as usize) % 3]
                .guild(g, "MSG", json!({"g": g, "i": i}))
                .await;
            assert!(seq > last, "guild seqs increase: {seq} after {last}");
            last = seq;
        }
        publishers[0].guild(g, "END", json!({"g": g})).await;
    }

    let want: Vec<u64> = (0..EVENTS_PER_GUILD).collect();
    for (k, c) in clients.iter_mut().enumerate() {
        let mut got: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut ended = 0;
        let finished = read_until(c, Duration::from_secs(20), |d| {
            let g = d["d"]["g"].as_u64().unwrap_or(0);
            match d["t"].as_str() {
                Some("MSG") => got
                    .entry(g)
                    .or_default()
                    .push(d["d"]["i"].as_u64().unwrap()),
                Some("END") => ended += 1,
                _ => {}
            }
            ended == GUILDS.len()
        })
        .await;
        assert!(finished, "client {k} did not get every END marker: {got:?}");
        for g in GUILDS {
            assert_eq!(
                got.get(&g),
                Some(&want),
                "client {k} (node n{}) guild {g}",
                k / CLIENTS_PER_NODE + 1
            );
        }
    }

    // One publish on a guild's owner, with subscribers on both other nodes: exactly
    // one fan-out batch per peer node, whatever the number of sessions there.
    let guild = GUILDS[0];
    let owner_id = nodes[0]
        .cluster()
        .borrow()
        .owner_of_guild(guild)
        .unwrap()
        .clone();
    let owner = nodes
        .iter()
        .position(|n| n.cluster().borrow().node_id == owner_id)
        .unwrap();
    let router = nodes[owner].cluster_router().unwrap();
    let before = router.counters().await.unwrap();
    publishers[owner]
        .guild(guild, "ONE", json!({"g": guild}))
        .await;
    for c in &mut clients {
        assert!(read_until(c, Duration::from_secs(10), |d| d["t"] == "ONE").await);
    }
    let after = router.counters().await.unwrap();
    assert_eq!(
        after.sent(FrameKind::FanoutBatch) - before.sent(FrameKind::FanoutBatch),
        2,
        "one fan-out batch per subscribed peer node"
    );
    assert_eq!(after.fanout_events - before.fanout_events, 2);

    // The events published on non-owners went through their owner as forwards.
    let mut forwards = 0;
    for n in &nodes {
        forwards += n
            .cluster_router()
            .unwrap()
            .counters()
            .await
            .unwrap()
            .sent(FrameKind::Forward);
    }
    assert!(forwards > 0, "publishes on non-owners are forwarded");

    for n in &nodes {
        n.drain();
    }
    for n in nodes {
        timeout(Duration::from_secs(30), n.wait()).await.unwrap();
    }
}

/// A peer link needs the cluster secret: a dialer with a wrong token, or none, is
/// refused with `Unauthenticated`, and the node keeps serving.
#[tokio::test]
async fn peer_links_without_the_cluster_secret_are_refused() {
    use concord_gateway::grpc::pb::{PeerMessage, peer_client::PeerClient};
    use concord_gateway::peer::auth::PeerKey;

    let node = common::start(node_config("n1", vec![])).await;
    let addr = node.peer_addr.unwrap();
    let link = |node_id: &'static str, token: Option<String>| async move {
        let mut client = PeerClient::connect(format!("http://{addr}")).await.unwrap();
        let mut req = tonic::Request::new(futures_util::stream::pending::<PeerMessage>());
        req.metadata_mut()
            .insert("x-concord-node", node_id.parse().unwrap());
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        client.link(req).await.map(|_| ())
    };
    let wrong = PeerKey::new(b"not-the-secret").token("n0");
    let err = link("n0", Some(wrong)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = link("n0", None).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // Another node's valid token does not work under a different id.
    let stolen = PeerKey::new(b"fanout-test-secret").token("n9");
    let err = link("n0", Some(stolen)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // The right token opens the link.
    let right = PeerKey::new(b"fanout-test-secret").token("n0");
    link("n0", Some(right)).await.unwrap();
    node.drain();
    timeout(Duration::from_secs(30), node.wait()).await.unwrap();
}

/// Reads until an `END` marker per guild; returns each guild's `(t, i)` sequence.
async fn read_to_end(client: &mut Client, k: usize) -> BTreeMap<u64, Vec<(String, u64)>> {
    let mut got: BTreeMap<u64, Vec<(String, u64)>> = BTreeMap::new();
    let mut ended = 0;
    let finished = read_until(client, Duration::from_secs(20), |d| {
        let g = d["d"]["g"].as_u64().unwrap_or(0);
        match d["t"].as_str() {
            Some(t @ ("A" | "B")) => got
                .entry(g)
                .or_default()
                .push((t.to_owned(), d["d"]["i"].as_u64().unwrap())),
            Some("END") => ended += 1,
            _ => {}
        }
        ended == GUILDS.len()
    })
    .await;
    assert!(finished, "client {k} did not get every END marker: {got:?}");
    got
}

/// A guild's owner leaves (graceful drain): the survivors agree on a ring without it, the
/// replica takes the guild over, and the survivors' sessions get every event published
/// before and after, once each and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_keeps_working_when_an_owner_leaves() {
    let (nodes, config) = start_cluster().await;
    let publishers: Vec<_> = nodes.iter().map(|n| Publisher::new(n, &config)).collect();
    let mut clients = connect_clients(&nodes, &config).await;
    warm_up(&publishers, &mut clients).await;

    const EACH: u64 = 10;
    for g in GUILDS {
        for i in 0..EACH {
            publishers[(i as usize + g as usize) % 3]
                .guild(g, "A", json!({"g": g, "i": i}))
                .await;
        }
    }

    let owner_id = nodes[0]
        .cluster()
        .borrow()
        .owner_of_guild(GUILDS[0])
        .unwrap()
        .clone();
    let leaving = nodes
        .iter()
        .position(|n| n.cluster().borrow().node_id == owner_id)
        .unwrap();
    nodes[leaving].drain();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leaving).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let views: Vec<_> = survivors
            .iter()
            .map(|i| nodes[*i].cluster().borrow().clone())
            .collect();
        let agreed = views.iter().all(|v| {
            v.ring_version() == views[0].ring_version()
                && v.members
                    .iter()
                    .filter(|m| m.state == NodeState::Active)
                    .count()
                    == 2
                && v.owner_of_guild(GUILDS[0]) != Some(&owner_id)
        });
        if agreed {
            break;
        }
        assert!(Instant::now() < deadline, "survivors did not agree in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for g in GUILDS {
        for i in 0..EACH {
            publishers[survivors[i as usize % 2]]
                .guild(g, "B", json!({"g": g, "i": i}))
                .await;
        }
        publishers[survivors[0]]
            .guild(g, "END", json!({"g": g}))
            .await;
    }

    let want: Vec<(String, u64)> = ["A", "B"]
        .iter()
        .flat_map(|t| (0..EACH).map(move |i| ((*t).to_owned(), i)))
        .collect();
    for (k, c) in clients.iter_mut().enumerate() {
        if k / CLIENTS_PER_NODE == leaving {
            continue;
        }
        let got = read_to_end(c, k).await;
        for g in GUILDS {
            assert_eq!(got.get(&g), Some(&want), "client {k} guild {g}");
        }
    }

    for n in &nodes {
        n.drain();
    }
    for n in nodes {
        timeout(Duration::from_secs(30), n.wait()).await.unwrap();
    }
}
