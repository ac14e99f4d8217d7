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
    loop {
        if let Some(v) = next(shard).await
            && v["op"] == 0
        {
            return v;
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
