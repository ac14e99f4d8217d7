//! Protocol-level tests against in-process nodes on loopback: sessions, publish, resume,
//! close codes, compression, membership, the REST shim, metrics and drain.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Client, Publisher, Received, config, start, token};
use reqwest::Method;
use serde_json::json;
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn plain_json_session_receives_events_in_order() {
    let cfg = config();
    let node = start(cfg.clone()).await;
    let publisher = Publisher::new(&node, &cfg);
    let mut c = Client::connect(&node, "v=10&encoding=json").await;

    let hello = c.frame().await;
    assert_eq!(hello["d"]["heartbeat_interval"], 41250);
    assert!(hello["s"].is_null() && hello["t"].is_null());
    // A heartbeat before Identify is answered.
    c.send(json!({"op": 1, "d": null})).await;
    assert_eq!(c.frame().await["op"], 11);

    c.send(json!({"op": 2, "d": {"token": format!("Bot {}", token(&cfg, 42, &[1, 2])), "intents": 513, "properties": {}}})).await;
    let ready = c.dispatch().await;
    assert_eq!(
        (ready["t"].as_str(), ready["s"].as_u64()),
        (Some("READY"), Some(1))
    );
    let d = &ready["d"];
    assert_eq!(d["v"], 10);
    assert_eq!(d["user"]["id"], "42");
    for field in [
        "username",
        "discriminator",
        "global_name",
        "avatar",
        "bot",
        "flags",
        "mfa_enabled",
    ] {
        assert!(d["user"].get(field).is_some(), "user.{field} missing");
    }
    assert_eq!(
        d["guilds"],
        json!([{"id": "1", "unavailable": true}, {"id": "2", "unavailable": true}])
    );
    assert_eq!(d["session_id"].as_str().unwrap().len(), 32);
    assert_eq!(d["resume_gateway_url"], node.public_url);
    assert_eq!(d["application"]["id"], "42");
    for g in ["1", "2"] {
        let gc = c.dispatch().await;
        assert_eq!(
            (gc["t"].as_str(), gc["d"]["id"].as_str()),
            (Some("GUILD_CREATE"), Some(g))
        );
    }

    for i in 1..=3u64 {
        assert_eq!(
            publisher
                .guild(1, "MESSAGE_CREATE", json!({"content": i}))
                .await,
            i
        );
    }
    publisher
        .guild(99, "MESSAGE_CREATE", json!({"content": "not yours"}))
        .await;
    publisher
        .guild(
            2,
            "TYPING_START",
            json!({"filtered": "no GUILD_MESSAGE_TYPING intent"}),
        )
        .await;
    publisher
        .guild(2, "MESSAGE_CREATE", json!({"content": "last"}))
        .await;
    for i in 1..=3u64 {
        let e = c.dispatch().await;
        assert_eq!(
            (e["t"].as_str(), e["d"]["content"].as_u64()),
            (Some("MESSAGE_CREATE"), Some(i))
        );
    }
    assert_eq!(c.dispatch().await["d"]["content"], "last");
    assert_eq!(c.last_seq, 7);
}

#[tokio::test]
async fn zlib_stream_session() {
    let cfg = config();
    let node = start(cfg.clone()).await;
    let publisher = Publisher::new(&node, &cfg);
    let mut c = Client::connect(&node, "v=10&encoding=json&compress=zlib-stream").await;
    c.identify(&token(&cfg, 1, &[5]), &[5]).await;
    for i in 0..20 {
        publisher
            .guild(
                5,
                "MESSAGE_CREATE",
                json!({"content": format!("hello {i}")}),
            )
            .await;
    }
    for i in 0..20 {
        assert_eq!(c.dispatch().await["d"]["content"], format!("hello {i}"));
    }
}

#[tokio::test]
async fn zstd_stream_session() {
    let cfg = config();
    let node = start(cfg.clone()).await;
    let publisher = Publisher::new(&node, &cfg);
    let mut c = Client::connect(&node, "v=10&encoding=json&compress=zstd-stream").await;
    c.identify(&token(&cfg, 1, &[5]), &[5]).await;
    publisher
        .guild(5, "MESSAGE_CREATE", json!({"content": "z"}))
        .await;
    assert_eq!(c.dispatch().await["d"]["content"], "z");
}

#[tokio::test]
async fn resume_replays_missed_events_then_resumed() {
    let cfg = config();
    let node = start(cfg.clone()).await;
    let publisher = Publisher::new(&node, &cfg);
    let tok = token(&cfg, 7, &[3]);
    let mut c = Client::connect(&node, "v=10&encoding=json").await;
    let ready = c.identify(&tok, &[3]).await;
    publisher.guild(3, "MESSAGE_CREATE", json!({"n": 1})).await;
    assert_eq!(c.dispatch().await["d"]["n"], 1);
    let seen = c.last_seq;
    // Drop the TCP connection without a close frame.
    drop(c);
    for n in 2..=4 {
        publisher.guild(3, "MESSAGE_CREATE", json!({"n": n})).await;
    }

    let url = ready["resume_gateway_url"].as_str().unwrap();
    assert_eq!(url, node.public_url);
    let mut r = Client::connect(&node, "v=10&encoding=json").await;
    r.last_seq = seen;
    assert_eq!(r.frame().await["op"], 10);
    r.send(json!({"op": 6, "d": {"token": tok, "session_id": ready["session_id"], "seq": seen}}))
        .await;
    for n in 2..=4 {
        assert_eq!(r.dispatch().await["d"]["n"], n);
    }
    let resumed = r.dispatch().await;
    assert_eq!(
        (resumed["t"].as_str(), &resumed["d"]),
        (Some("RESUMED"), &json!({}))
    );
    publisher.guild(3, "MESSAGE_CREATE", json!({"n": 5})).await;
    assert_eq!(r.dispatch().await["d"]["n"], 5);
}

#[tokio::test]
async fn resume_refusals() {
    let cfg = config();
    let node = start(cfg.clone()).await;
    let tok = token(&cfg, 7, &[]);

    // Unknown session: op 9 false, and the client may identify on the same connection.
    let mut c = Client::connect(&node, "").await;
    c.frame().await;
    c.send(json!({"op": 6, "d": {"token": tok, "session_id": "0".repeat(32), "seq": 1}}))
        .await;
    assert_eq!(
        c.frame().await,
        json!({"op": 9, "d": false, "s": null, "t": null})
    );
    c.send(json!({"op": 2, "d": {"token": tok, "intents": 1, "properties": {}}}))
        .await;
    let ready = c.dispatch().await;
    assert_eq!(ready["t"], "READY");

    // A seq ahead of the server: 4007.
    let mut r = Client::connect(&node, "").await;
    r.frame().await;
    r.send(
        json!({"op": 6, "d": {"token": tok, "session_id": ready["d"]["session_id"], "seq": 1000}}),
    )
    .await;
    assert_eq!(r.close_code().await, Some(4007));

    // Another user's token: 4004.
    let mut r = Client::connect(&node, "").await;
    r.frame().await;
    r.send(json!({"op": 6, "d": {"token": token(&cfg, 8, &[]), "session_id": ready["d"]["session_id"], "seq": 1}})).await;
    assert_eq!(r.close_code().await, Some(4004));
}

#[tokio::test]
async fn expired_session_cannot_resume() {
    let mut cfg = config();
    cfg.resume_window = Duration::from_millis(200);
    let node = start(cfg.clone()).await;
    let tok = token(&cfg, 7, &[]);
    let mut c = Client::connect(&node, "").await;
    let ready = c.identify(&tok, &[]).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut r = Client::connect(&node, "").await;
    r.frame().await;
    r.send(json!({"op": 6, "d": {"token": tok, "session_id": ready["session_id"], "seq": 1}}))
        .await;
    assert_eq!(r.frame().await["op"], 9);
}

#[tokio::test]
async fn bad_clients_get_their_close_codes_and_others_keep_going() {
    let cfg = config();
    let node = start(cfg.clone()).await;
    let publisher = Publisher::new(&node, &cfg);
    let mut good = Client::connect(&node, "v=10&encoding=json").await;
    good.identify(&token(&cfg, 1, &[1]), &[1]).await;
    let tok = token(&cfg, 2, &[1]);
    let identify =
        json!({"op": 2, "d": {"token": tok, "intents": 1, "properties": {}}}).to_string();

    let cases: Vec<(&str, Vec<String>, u16)> = vec![
        ("unknown opcode", vec![r#"{"op":99,"d":null}"#.into()], 4001),
        ("bad json", vec!["{not json".into()], 4002),
        (
            "oversized",
            vec![format!(r#"{{"op":1,"d":null,"x":"{}"}}"#, "a".repeat(5000))],
            4002,
        ),
        (
            "presence before identify",
            vec![r#"{"op":3,"d":{}}"#.into()],
            4003,
        ),
        (
            "bad token",
            vec![r#"{"op":2,"d":{"token":"a.b.c","intents":1,"properties":{}}}"#.into()],
            4004,
        ),
        (
            "second identify",
            vec![identify.clone(), identify.clone()],
            4005,
        ),
        (
            "invalid intents",
            vec![
                json!({"op": 2, "d": {"token": tok, "intents": 1u64 << 40, "properties": {}}})
                    .to_string(),
            ],
            4013,
        ),
        (
            "rate limited",
            vec![r#"{"op":1,"d":null}"#.to_string(); 121],
            4008,
        ),
    ];
    for (name, frames, code) in cases {
        let mut c = Client::connect(&node, "v=10&encoding=json").await;
        c.frame().await;
        for f in frames {
            c.send_raw(f).await;
        }
        assert_eq!(c.close_code().await, Some(code), "{name}");
    }
    let mut c = Client::connect(&node, "v=9&encoding=json").await;
    assert_eq!(c.close_code().await, Some(4012), "invalid version");

    publisher
        .guild(1, "MESSAGE_CREATE", json!({"still": "here"}))
        .await;
    assert_eq!(good.dispatch().await["d"]["still"], "here");
}

#[tokio::test]
async fn zombie_connections_are_closed() {
    let mut cfg = config();
    cfg.heartbeat_interval = Duration::from_millis(200);
    let node = start(cfg.clone()).await;
    let mut c = Client::connect(&node, "").await;
    c.identify(&token(&cfg, 1, &[]), &[]).await;
    assert_eq!(c.close_code().await, Some(4009));
}

#[tokio::test]
async fn stalled_handshakes_are_dropped() {
    let mut cfg = config();
    cfg.handshake_timeout = Duration::from_millis(200);
    let node = start(cfg).await;
    let mut tcp = tokio::net::TcpStream::connect(node.client_addr)
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(common::WAIT, tcp.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "the node closes the socket");
}

#[tokio::test]
async fn slow_client_is_closed_and_resumes_without_loss() {
    let mut cfg = config();
    cfg.session_queue = 8;
    cfg.replay.max_events = 2000;
    cfg.replay.max_bytes = 256 << 20;
    let node = start(cfg.clone()).await;
    let publisher = Publisher::new(&node, &cfg);
    let tok = token(&cfg, 1, &[1]);
    let mut c = Client::connect(&node, "").await;
    let ready = c.identify(&tok, &[1]).await;

    // The client stops reading; 600 x 32 KiB is far more than the socket buffers hold.
    let blob = "x".repeat(32 * 1024);
    for n in 0..600 {
        publisher
            .guild(1, "MESSAGE_CREATE", json!({"n": n, "blob": blob}))
            .await;
    }
    let mut next = 0;
    loop {
        match c.recv().await {
            Received::Frame(v) if v["op"] == 0 => {
                assert_eq!(v["d"]["n"], next);
                next += 1;
            }
            Received::Frame(_) => {}
            Received::Closed(code) => {
                assert!(
                    matches!(code, None | Some(4000)),
                    "resumable close, got {code:?}"
                );
                break;
            }
        }
    }
    assert!(next < 600, "the client was cut off before the end");

    let mut r = Client::connect(&node, "").await;
    r.last_seq = c.last_seq;
    r.frame().await;
    r.send(
        json!({"op": 6, "d": {"token": tok, "session_id": ready["session_id"], "seq": c.last_seq}}),
    )
    .await;
    while next < 600 {
        assert_eq!(r.dispatch().await["d"]["n"], next);
        next += 1;
    }
    assert_eq!(r.dispatch().await["t"], "RESUMED");
    let metrics = reqwest::get(format!("http://{}/metrics", node.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("concord_session_queue_overflows_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn user_events_and_membership_changes() {
    let cfg = config();
    let node = start(cfg.clone()).await;
    let p = Publisher::new(&node, &cfg);
    let (status, _) = p
        .raw(Method::PUT, "/v1/guilds/8", Some(json!({"name": "eight"})))
        .await;
    assert_eq!(status, 204);

    let mut a = Client::connect(&node, "").await;
    let mut b = Client::connect(&node, "").await;
    a.identify(&token(&cfg, 5, &[]), &[]).await;
    b.identify(&token(&cfg, 5, &[]), &[]).await;

    let (status, body) = p
        .raw(
            Method::POST,
            "/v1/users/5/events",
            Some(json!({"t": "NOTIFY", "d": {"x": 1}})),
        )
        .await;
    assert_eq!((status, body["user_seq"].as_u64()), (202, Some(1)));
    for c in [&mut a, &mut b] {
        assert_eq!(c.dispatch().await["t"], "NOTIFY");
    }

    let (status, body) = p.raw(Method::PUT, "/v1/guilds/8/members/5", None).await;
    assert_eq!((status, body["sessions"].as_u64()), (200, Some(2)));
    for c in [&mut a, &mut b] {
        let gc = c.dispatch().await;
        assert_eq!(
            (
                gc["t"].as_str(),
                gc["d"]["name"].as_str(),
                gc["d"]["id"].as_str()
            ),
            (Some("GUILD_CREATE"), Some("eight"), Some("8"))
        );
    }
    p.guild(8, "MESSAGE_CREATE", json!({"in": true})).await;
    for c in [&mut a, &mut b] {
        assert_eq!(c.dispatch().await["d"]["in"], true);
    }
    p.raw(Method::DELETE, "/v1/guilds/8/members/5", None).await;
    p.guild(8, "MESSAGE_CREATE", json!({"in": false})).await;
    p.raw(
        Method::POST,
        "/v1/users/5/events",
        Some(json!({"t": "NOTIFY", "d": {"x": 2}})),
    )
    .await;
    for c in [&mut a, &mut b] {
        assert_eq!(c.dispatch().await["t"], "GUILD_DELETE");
        assert_eq!(
            c.dispatch().await["d"]["x"],
            2,
            "the guild event after leaving is not delivered"
        );
    }
}

#[tokio::test]
async fn passive_guilds_skip_events() {
    let cfg = config();
    let node = start(cfg.clone()).await;
    let p = Publisher::new(&node, &cfg);
    let mut c = Client::connect(&node, "").await;
    c.identify(&token(&cfg, 5, &[1, 2]), &[1, 2]).await;
    c.send(json!({"op": 40, "d": {"guild_id": "1", "active": false}}))
        .await;
    // Heartbeat round trip: the op 40 before it has been applied.
    c.send(json!({"op": 1, "d": c.last_seq})).await;
    assert_eq!(c.frame().await["op"], 11);
    p.guild(1, "MESSAGE_CREATE", json!({"g": 1})).await;
    p.guild(2, "MESSAGE_CREATE", json!({"g": 2})).await;
    assert_eq!(c.dispatch().await["d"]["g"], 2);
}

#[tokio::test]
async fn publish_api_rejects_bad_requests() {
    let cfg = config();
    let node = start(cfg.clone()).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/guilds/1/events", node.api_addr);
    let r = http
        .post(&url)
        .json(&json!({"t": "X", "d": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(&url)
        .bearer_auth("wrong")
        .json(&json!({"t": "X", "d": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(&url)
        .bearer_auth(&cfg.publish_secret)
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(&url)
        .bearer_auth(&cfg.publish_secret)
        .json(&json!({"t": "lower", "d": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn grpc_publish_unary_and_stream() {
    use concord_gateway::grpc::pb::publish_request::Target;
    use concord_gateway::grpc::pb::{PublishRequest, publisher_client::PublisherClient};

    let cfg = config();
    let node = start(cfg.clone()).await;
    let mut c = Client::connect(&node, "").await;
    c.identify(&token(&cfg, 5, &[4]), &[4]).await;

    let mut client = PublisherClient::connect(format!("http://{}", node.api_addr))
        .await
        .unwrap();
    let req = |n: u64| {
        let mut r = tonic::Request::new(PublishRequest {
            target: Some(Target::GuildId(4)),
            event_type: "MESSAGE_CREATE".into(),
            data_json: format!(r#"{{"n":{n}}}"#).into_bytes(),
        });
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", cfg.publish_secret).parse().unwrap(),
        );
        r
    };
    assert_eq!(client.publish(req(1)).await.unwrap().into_inner().seq, 1);
    let unauth = client
        .publish(PublishRequest {
            target: Some(Target::GuildId(4)),
            event_type: "X".into(),
            data_json: b"1".to_vec(),
        })
        .await;
    assert_eq!(unauth.unwrap_err().code(), tonic::Code::Unauthenticated);

    let items: Vec<PublishRequest> = (2..=4).map(|n| req(n).into_inner()).collect();
    let mut stream_req = tonic::Request::new(futures_util::stream::iter(items));
    stream_req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", cfg.publish_secret).parse().unwrap(),
    );
    let reply = client
        .publish_stream(stream_req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.accepted, reply.last_seq), (3, 4));
    for n in 1..=4 {
        assert_eq!(c.dispatch().await["d"]["n"], n);
    }
}

#[tokio::test]
async fn rest_shim_answers_with_exact_json_content_type() {
    let cfg = config();
    let node = start(cfg.clone()).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", node.api_addr);
    let tok = token(&cfg, 9, &[]);
    for path in [
        "/api/v10/gateway",
        "/api/v10/gateway/bot",
        "/api/v10/users/@me",
        "/api/v10/oauth2/applications/@me",
    ] {
        let r = http
            .get(format!("{base}{path}"))
            .header("Authorization", format!("Bot {tok}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], "application/json", "{path}");
        let v: serde_json::Value = r.json().await.unwrap();
        match path {
            "/api/v10/gateway" => assert_eq!(v["url"], node.public_url),
            "/api/v10/gateway/bot" => assert!(
                v["session_start_limit"]["max_concurrency"]
                    .as_u64()
                    .unwrap()
                    > 0
            ),
            "/api/v10/users/@me" => assert_eq!(v["id"], "9"),
            _ => assert_eq!(v["id"], "9"),
        }
    }
    let r = http
        .get(format!("{base}/api/v10/users/@me"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn drain_sends_reconnect_and_stops() {
    let cfg = config();
    let node = start(cfg.clone()).await;
    let mut c = Client::connect(&node, "").await;
    c.identify(&token(&cfg, 1, &[]), &[]).await;
    let admin = format!("http://{}", node.admin_addr);
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{admin}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "concord_connections_open",
        "concord_sessions",
        "concord_identifies_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert_eq!(
        http.post(format!("{admin}/admin/drain"))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(c.frame().await["op"], 7);
    assert_eq!(c.close_code().await, Some(4000));
    tokio::time::timeout(common::WAIT, node.wait())
        .await
        .unwrap();
}

#[tokio::test]
async fn zstd_dict_sends_every_session_the_same_compressed_body() {
    use concord_protocol::zstd_dict::{self, DictSet, Dictionary};
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let cfg = config();
    let node = start(cfg.clone()).await;
    let publisher = Publisher::new(&node, &cfg);
    let shipped = Dictionary::default_shipped();
    let dicts: DictSet = [shipped.clone()].into_iter().collect();

    // A dictionary the node does not have: 4002.
    let url = format!(
        "ws://{}/?v=10&encoding=json&compress=zstd-dict&dict=12345",
        node.client_addr
    );
    let (mut bad, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let code = loop {
        match bad.next().await {
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            _ => break None,
        }
    };
    assert_eq!(code, Some(4002));

    let url = format!(
        "ws://{}/?v=10&encoding=json&compress=zstd-dict&dict={}",
        node.client_addr,
        shipped.id()
    );
    let mut sessions = Vec::new();
    for uid in [1, 2] {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.clone()).await.unwrap();
        let mut decoder = zstd_dict::Decoder::new(1 << 20);
        let next = async |ws: &mut common::Ws,
                          decoder: &mut zstd_dict::Decoder|
               -> (Vec<u8>, serde_json::Value) {
            let b = common::next_binary(ws).await;
            let mut out = Vec::new();
            decoder.decode(&b, &dicts, &mut out).unwrap();
            (b.to_vec(), serde_json::from_slice(&out).unwrap())
        };
        let (_, hello) = next(&mut ws, &mut decoder).await;
        assert_eq!(hello["op"], 10);
        assert_eq!(hello["d"]["dictionaries"], json!([shipped.id().0]));
        let identify = json!({"op": 2, "d": {"token": token(&cfg, uid, &[9]), "intents": 513, "properties": {}}});
        ws.send(Message::text(identify.to_string())).await.unwrap();
        let (_, ready) = next(&mut ws, &mut decoder).await;
        assert_eq!(
            (ready["t"].as_str(), ready["s"].as_u64()),
            (Some("READY"), Some(1))
        );
        let listed = &ready["d"]["dictionaries"][0];
        assert_eq!(listed["id"], shipped.id().0);
        let bytes = reqwest::get(listed["url"].as_str().unwrap())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(
            &bytes[..],
            shipped.bytes(),
            "the node serves the dictionary it lists"
        );
        let (_, gc) = next(&mut ws, &mut decoder).await;
        assert_eq!(gc["t"], "GUILD_CREATE");
        sessions.push((ws, decoder));
    }

    let bodies: Vec<Vec<u8>> = (1..=3)
        .map(|n| format!(r#"{{"n":{n}}}"#).into_bytes())
        .collect();
    for n in 1..=3 {
        publisher.guild(9, "MESSAGE_CREATE", json!({"n": n})).await;
    }
    let mut wire: Vec<Vec<Vec<u8>>> = Vec::new();
    for (ws, decoder) in &mut sessions {
        let mut got = Vec::new();
        for n in 1..=3u64 {
            let msg = common::next_binary(ws).await;
            let mut out = Vec::new();
            let header = decoder.decode(&msg, &dicts, &mut out).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(
                (v["op"].as_u64(), v["s"].as_u64(), v["d"]["n"].as_u64()),
                (Some(0), Some(2 + n), Some(n))
            );
            got.push(header.body.to_vec());
        }
        wire.push(got);
    }
    assert_eq!(
        wire[0], wire[1],
        "both sessions got the very same compressed bodies"
    );

    // Compressed once per node, not once per session: the raw-bytes counter saw each
    // MESSAGE_CREATE body once.
    let expected: usize = bodies
        .iter()
        .map(|d| {
            zstd_dict::body_json(0, Some("MESSAGE_CREATE"), d)
                .unwrap()
                .len()
        })
        .sum();
    let metrics = reqwest::get(format!("http://{}/metrics", node.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let raw: f64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("concord_dict_body_bytes_total")
                && l.contains("stage=\"raw\"")
                && l.contains("t=\"MESSAGE_CREATE\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert_eq!(raw as usize, expected, "{metrics}");
}

/// Retraining makes a new newest dictionary without breaking anyone: a connected session
/// keeps decoding with the one it started with (still served), a new session that names
/// none gets the retrained one, and both go on receiving every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retraining_rotates_dictionaries_without_breaking_sessions() {
    use concord_protocol::corpus::Corpus;
    use concord_protocol::zstd_dict::{self, DictId, DictSet, Dictionary};
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    use common::Ws;
    /// The next binary frame, decoded with `dicts`.
    async fn next(ws: &mut Ws, dicts: &DictSet) -> serde_json::Value {
        let b = common::next_binary(ws).await;
        let mut out = Vec::new();
        zstd_dict::Decoder::new(1 << 20)
            .decode(&b, dicts, &mut out)
            .unwrap();
        serde_json::from_slice(&out).unwrap()
    }
    async fn join(
        node: &concord_gateway::Node,
        cfg: &concord_gateway::Config,
        query: &str,
        uid: u64,
        dicts: &DictSet,
    ) -> Ws {
        let url = format!(
            "ws://{}/?v=10&encoding=json&compress=zstd-dict{query}",
            node.client_addr
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        assert_eq!(next(&mut ws, dicts).await["op"], 10);
        let identify = json!({"op": 2, "d": {"token": token(cfg, uid, &[9]), "intents": 513, "properties": {}}});
        ws.send(Message::text(identify.to_string())).await.unwrap();
        assert_eq!(next(&mut ws, dicts).await["t"], "READY");
        assert_eq!(next(&mut ws, dicts).await["t"], "GUILD_CREATE");
        ws
    }

    let cfg = config();
    let node = start(cfg.clone()).await;
    let publisher = Publisher::new(&node, &cfg);
    let http = reqwest::Client::new();
    let admin = format!("http://{}", node.admin_addr);
    let retrain = || {
        http.post(format!("{admin}/admin/dictionaries/retrain"))
            .send()
    };
    let shipped = Dictionary::default_shipped();
    let old: DictSet = [shipped.clone()].into_iter().collect();

    // Too little traffic to train on: a clear 409.
    let r = retrain().await.unwrap();
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("sampled event bodies"));

    // A session on the shipped dictionary sees 1,100 realistic messages; each is
    // compressed once and sampled.
    let mut a = join(&node, &cfg, "", 1, &old).await;
    let messages: Vec<serde_json::Value> = Corpus::generate(3, 20_000)
        .into_iter()
        .filter(|e| e.t == "MESSAGE_CREATE")
        .take(1_100)
        .map(|e| serde_json::from_slice(&e.d).unwrap())
        .collect();
    assert_eq!(messages.len(), 1_100);
    for chunk in messages.chunks(100) {
        for d in chunk {
            publisher.guild(9, "MESSAGE_UPDATE", d.clone()).await;
        }
        for d in chunk {
            assert_eq!(&next(&mut a, &old).await["d"], d);
        }
    }

    let r = retrain().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let fresh_id = DictId(body["id"].as_u64().unwrap() as u32);
    assert_ne!(fresh_id, shipped.id());
    // The published messages only; never READY or the session's GUILD_CREATE.
    assert_eq!(body["samples"], 1_100);

    // The retrained dictionary is listed as the newest and downloadable; the shipped one
    // is still served.
    let api = format!("http://{}", node.api_addr);
    let list: serde_json::Value = reqwest::get(format!("{api}/v1/dictionaries"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["newest"], fresh_id.0);
    let fetch = |id: DictId, auth: &str| {
        http.get(format!("{api}/v1/dictionaries/{id}"))
            .header("authorization", auth)
            .send()
    };
    assert_eq!(fetch(shipped.id(), "").await.unwrap().status(), 200);
    // A retrained dictionary holds fragments of traffic: clients only.
    assert_eq!(fetch(fresh_id, "").await.unwrap().status(), 401);
    let fresh_bytes = fetch(fresh_id, &token(&cfg, 1, &[9]))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let fresh = Dictionary::from_bytes(fresh_bytes.to_vec()).unwrap();
    assert_eq!(fresh.id(), fresh_id);

    // A new session that names no dictionary gets the retrained one (its frames decode
    // with that dictionary alone); the old session keeps its own. Both receive the next
    // events.
    let new_only: DictSet = [fresh.clone()].into_iter().collect();
    let mut b = join(&node, &cfg, "", 2, &new_only).await;
    let tail = &messages[..50];
    for d in tail {
        publisher.guild(9, "MESSAGE_UPDATE", d.clone()).await;
    }
    for d in tail {
        assert_eq!(
            &next(&mut a, &old).await["d"],
            d,
            "the old session still decodes"
        );
        assert_eq!(&next(&mut b, &new_only).await["d"], d);
    }
    let _ = (a.close(None).await, b.close(None).await);
}
