//! A real Discord client library, twilight-gateway 0.18 with `compress=zstd-stream`,
//! against an in-process node: Hello, Identify, READY (checked against twilight-model's
//! own READY type), GUILD_CREATE, heartbeats, dispatches, and a resume after a drop.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Publisher, config, start, token};
use futures_util::StreamExt;
use serde_json::{Value, json};
use twilight_gateway::{CloseFrame, ConfigBuilder, Intents, Message, Shard, ShardId};

/// The next text frame as JSON; `None` on a close.
async fn next(shard: &mut Shard) -> Option<Value> {
    let msg = tokio::time::timeout(common::WAIT, shard.next())
        .await
        .expect("timed out waiting for the shard")
        .expect("the shard stream ended")
        .expect("the shard reported an error");
    match msg {
        Message::Text(text) => Some(serde_json::from_str(&text).unwrap()),
        Message::Close(_) => None,
    }
}

async fn next_dispatch(shard: &mut Shard) -> Value {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dispatch within {:?}",
            common::WAIT
        );
        match next(shard).await {
            Some(v) if v["op"] == 0 => return v,
            Some(v) if std::env::var_os("TWILIGHT_TRACE").is_some() => eprintln!("frame {v}"),
            None if std::env::var_os("TWILIGHT_TRACE").is_some() => eprintln!("close"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn twilight_session_heartbeats_dispatches_and_resume() {
    let mut cfg = config();
    cfg.heartbeat_interval = Duration::from_millis(300);
    let node = start(cfg.clone()).await;
    let publisher = Publisher::new(&node, &cfg);
    let config = ConfigBuilder::new(
        token(&cfg, 42, &[1, 2]),
        Intents::GUILDS | Intents::GUILD_MESSAGES,
    )
    .proxy_url(node.public_url.clone())
    .build();
    let mut shard = Shard::with_config(ShardId::ONE, config);

    let ready = next_dispatch(&mut shard).await;
    assert_eq!(
        (ready["t"].as_str(), ready["s"].as_u64()),
        (Some("READY"), Some(1))
    );
    let typed: twilight_model::gateway::payload::incoming::Ready =
        serde_json::from_value(ready["d"].clone()).expect("READY parses as twilight-model's Ready");
    assert_eq!(typed.user.id.get(), 42);
    assert_eq!(typed.guilds.len(), 2);
    assert_eq!(typed.resume_gateway_url, node.public_url);
    assert_eq!(shard.session().unwrap().id(), typed.session_id);
    for g in ["1", "2"] {
        let gc = next_dispatch(&mut shard).await;
        assert_eq!(
            (gc["t"].as_str(), gc["d"]["id"].as_str()),
            (Some("GUILD_CREATE"), Some(g))
        );
    }

    for n in 1..=3 {
        publisher.guild(1, "MESSAGE_CREATE", json!({"n": n})).await;
    }
    for n in 1..=3 {
        let e = next_dispatch(&mut shard).await;
        assert_eq!(
            (e["d"]["n"].as_u64(), e["s"].as_u64()),
            (Some(n), Some(3 + n))
        );
    }

    // Twilight heartbeats on its own; wait for the node's ACK.
    loop {
        if let Some(v) = next(&mut shard).await
            && v["op"] == 11
        {
            break;
        }
    }
    assert!(
        !shard.latency().recent().is_empty(),
        "twilight recorded a heartbeat round trip"
    );

    // Drop the connection the way twilight does for a resumable close, publish while it
    // is away, and let it resume on its own.
    shard.close(CloseFrame::RESUME);
    while next(&mut shard).await.is_some() {}
    for n in 4..=5 {
        publisher.guild(1, "MESSAGE_CREATE", json!({"n": n})).await;
    }
    for n in 4..=5 {
        let e = next_dispatch(&mut shard).await;
        assert_eq!(
            (e["d"]["n"].as_u64(), e["s"].as_u64()),
            (Some(n), Some(3 + n))
        );
    }
    let resumed = next_dispatch(&mut shard).await;
    assert_eq!(
        (resumed["t"].as_str(), &resumed["d"]),
        (Some("RESUMED"), &json!({}))
    );
    assert_eq!(shard.session().unwrap().sequence(), 9);
}

/// Publishes `MESSAGE_CREATE` `d` to guild 1, retrying refusals for up to 10 s.
async fn publish_retrying(publisher: &Publisher, d: Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = publisher
            .raw(
                reqwest::Method::POST,
                "/v1/guilds/1/events",
                Some(json!({"t": "MESSAGE_CREATE", "d": d})),
            )
            .await;
        if status == 202 {
            return;
        }
        assert!(
            status == 503 && tokio::time::Instant::now() < deadline,
            "publish refused: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// twilight-gateway resumes on another node: node A's `public_url` (READY's
/// `resume_gateway_url`, as a load balancer would be) names node B. twilight's
/// connection to A drops (a resumable close); it reconnects to B and resumes there (B
/// takes the live session over from A), and the events published meanwhile and after
/// arrive once, in order, with `s` continuing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilight_resumes_on_another_node() {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let clustered = |id: &str, seeds: Vec<std::net::SocketAddr>| {
        let mut c = config();
        c.node_id = id.into();
        c.gossip_listen = Some(any);
        c.peer_listen = Some(any);
        c.cluster_secret = Some("twilight-test-secret".into());
        c.seeds = seeds.into_iter().map(Into::into).collect();
        c.heartbeat_interval = Duration::from_millis(500);
        c
    };
    let b_cfg = clustered("b", vec![]);
    let b = start(b_cfg.clone()).await;
    let mut a_cfg = clustered("a", vec![b.gossip_addr.unwrap()]);
    a_cfg.public_url = Some(b.public_url.clone());
    let a = start(a_cfg.clone()).await;
    // Both nodes on one two-member ring.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (va, vb) = (a.cluster().borrow().clone(), b.cluster().borrow().clone());
        let two = |v: &concord_gateway::cluster::ClusterView| {
            v.ring.as_ref().is_some_and(|r| r.members().len() == 2)
        };
        if two(&va) && two(&vb) && va.ring_version() == vb.ring_version() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no common ring");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let publisher = Publisher::new(&b, &b_cfg);
    let config = ConfigBuilder::new(
        token(&b_cfg, 7, &[1]),
        Intents::GUILDS | Intents::GUILD_MESSAGES,
    )
    .proxy_url(a.public_url.clone())
    .build();
    let mut shard = Shard::with_config(ShardId::ONE, config);
    let ready = next_dispatch(&mut shard).await;
    assert_eq!(ready["t"], "READY");
    assert_eq!(ready["d"]["resume_gateway_url"], b.public_url.as_str());
    assert_eq!(next_dispatch(&mut shard).await["t"], "GUILD_CREATE");
    // The node subscribes to the guild's owner asynchronously, and the routers apply the
    // ring a moment after the views show it (a publish refused meanwhile is a 503 to
    // retry): publish until one lands.
    let mut n = 0;
    let first = loop {
        n += 1;
        let (status, _) = publisher
            .raw(
                reqwest::Method::POST,
                "/v1/guilds/1/events",
                Some(json!({"t": "MESSAGE_CREATE", "d": {"n": n}})),
            )
            .await;
        if status != 202 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        if let Ok(e) =
            tokio::time::timeout(Duration::from_millis(300), next_dispatch(&mut shard)).await
        {
            break e;
        }
        assert!(n < 50, "no event reached the session");
    };
    let mut want = first["d"]["n"].as_u64().unwrap() + 1;
    let mut last_s = first["s"].as_u64().unwrap();

    shard.close(CloseFrame::RESUME);
    while next(&mut shard).await.is_some() {}
    for k in 0..5 {
        publish_retrying(&publisher, json!({"n": n + 1 + k})).await;
    }
    let end = n + 5;
    let mut resumed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while want <= end || !resumed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no resume on b (resumed {resumed}, next event {want} of {end})"
        );
        let e = next_dispatch(&mut shard).await;
        let s = e["s"].as_u64().unwrap();
        assert_eq!(s, last_s + 1, "s continues on the other node: {e}");
        last_s = s;
        match e["t"].as_str() {
            Some("MESSAGE_CREATE") => {
                assert_eq!(e["d"]["n"].as_u64(), Some(want), "in order, once");
                want += 1;
            }
            Some("RESUMED") => resumed = true,
            other => panic!("unexpected dispatch {other:?} (no second READY)"),
        }
    }
    // Now on b: new events keep coming.
    publish_retrying(&publisher, json!({"n": end + 1})).await;
    let e = next_dispatch(&mut shard).await;
    assert_eq!(
        (e["d"]["n"].as_u64(), e["s"].as_u64()),
        (Some(end + 1), Some(last_s + 1))
    );
    // A let the session go: it no longer holds it.
    assert_eq!(a_sessions(&a).await, 0);
}

/// `concord_sessions` in a node's `/metrics` is process-wide here (two nodes share one
/// recorder), so ask the node's `/readyz`, which counts its own registry.
async fn a_sessions(node: &concord_gateway::Node) -> u64 {
    let text = reqwest::get(format!("http://{}/readyz", node.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}
