//! The peer clients against real brokers: a `redis-server` and a `nats-server` started on
//! loopback ports for the test. Both binaries must be on PATH; a missing one fails the
//! test rather than skipping it, so a comparison can never silently stop being checked.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use concord_loadtest::peer::{PeerError, PeerKind, PeerUrl, Publisher, Subscriber, channel};
use tokio::time::{Instant, sleep, timeout};

/// Generous: CI machines stall, and a healthy run takes milliseconds.
const WAIT: Duration = Duration::from_secs(10);
const SUBSCRIBERS: usize = 3;
const MESSAGES: usize = 20;

/// A broker process, killed when dropped.
struct Broker {
    child: Child,
    url: PeerUrl,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago. The broker binds it next; a clash is unlikely on a
/// test machine and shows up as the broker exiting.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// Starts `program` with `args` (given the port) and waits until the port accepts.
async fn start(kind: PeerKind, program: &str, args: impl Fn(u16) -> Vec<String>) -> Broker {
    let port = free_port();
    let child = match Command::new(program)
        .args(args(port))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{program}` is not on PATH; these tests need real brokers: \
             `apt-get install redis-server nats-server` (CI installs them)"
        ),
        Err(e) => panic!("cannot start `{program}`: {e}"),
    };
    let mut broker = Broker {
        child,
        url: PeerUrl {
            kind,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        },
    };
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = broker.child.try_wait().unwrap() {
            panic!("`{program}` exited with {status} before accepting on port {port}");
        }
        if tokio::net::TcpStream::connect(broker.url.addr)
            .await
            .is_ok()
        {
            return broker;
        }
        assert!(
            Instant::now() < deadline,
            "`{program}` did not accept on port {port} within {WAIT:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

async fn redis() -> Broker {
    start(PeerKind::Redis, "redis-server", |port| {
        [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .map(String::from)
        .to_vec()
    })
    .await
}

async fn nats() -> Broker {
    start(PeerKind::Nats, "nats-server", |port| {
        ["-a", "127.0.0.1", "-p", &port.to_string()]
            .map(String::from)
            .to_vec()
    })
    .await
}

fn payload(i: usize) -> Bytes {
    Bytes::from(format!("payload-{i:02}"))
}

/// Three subscribers on one channel, one from an explicit source address; one publisher
/// sends 20 payloads; every subscriber gets all 20 in order. Returns each publish's
/// result and the wire size of every delivery.
async fn fan_out(url: &PeerUrl) -> (Vec<Option<u64>>, Vec<usize>) {
    let chan = channel(7);
    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let source = (i == 0).then_some(Ipv4Addr::LOCALHOST.into());
        let sub = timeout(WAIT, Subscriber::connect(url, &chan, source))
            .await
            .expect("subscribe timed out")
            .unwrap_or_else(|e| panic!("subscribe to {url}: {e}"));
        subscribers.push(sub);
    }
    let mut publisher = timeout(WAIT, Publisher::connect(url))
        .await
        .expect("publisher connect timed out")
        .unwrap();
    let mut replies = Vec::new();
    for i in 0..MESSAGES {
        let reply = timeout(WAIT, publisher.publish(&chan, &payload(i)))
            .await
            .expect("publish timed out")
            .unwrap();
        replies.push(reply);
    }
    let mut sizes = Vec::new();
    for (s, sub) in subscribers.iter_mut().enumerate() {
        for i in 0..MESSAGES {
            let (got, size) = timeout(WAIT, sub.next_message())
                .await
                .unwrap_or_else(|_| panic!("subscriber {s} waited too long for message {i}"))
                .unwrap()
                .unwrap_or_else(|| panic!("subscriber {s}: connection ended before message {i}"));
            assert_eq!(got, payload(i), "subscriber {s}, message {i}");
            sizes.push(size);
        }
    }
    (replies, sizes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_fans_out_to_every_subscriber_in_order() {
    let broker = redis().await;
    let (replies, sizes) = fan_out(&broker.url).await;
    assert_eq!(replies, vec![Some(SUBSCRIBERS as u64); MESSAGES]);
    let frame = format!(
        "*3\r\n$7\r\nmessage\r\n$12\r\n{}\r\n$10\r\n{}\r\n",
        channel(7),
        "payload-00"
    );
    assert_eq!(sizes, vec![frame.len(); SUBSCRIBERS * MESSAGES]);

    // Nobody listens on another guild's channel.
    let mut publisher = Publisher::connect(&broker.url).await.unwrap();
    let reply = timeout(WAIT, publisher.publish(&channel(8), b"x")).await;
    assert_eq!(reply.unwrap().unwrap(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_fans_out_to_every_subscriber_in_order() {
    let broker = nats().await;
    let (replies, sizes) = fan_out(&broker.url).await;
    assert_eq!(replies, vec![None; MESSAGES]);
    // `MSG concord-lt.7 <sid> 10\r\npayload-NN\r\n`, whatever the sid.
    let least = format!("MSG {} 1 10\r\npayload-00\r\n", channel(7)).len();
    assert!(sizes.iter().all(|&n| n >= least), "{sizes:?}");

    // A subject with a space would corrupt the stream, so it is refused before sending.
    let mut publisher = Publisher::connect(&broker.url).await.unwrap();
    let refused = publisher.publish("two words", b"x").await;
    assert!(
        matches!(refused, Err(PeerError::InvalidChannel(_))),
        "{refused:?}"
    );
}

/// A whole `run` with `--peer` for both brokers: the same load goes through Concord, Redis
/// and NATS, and each report counts every delivery exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_compares_concord_with_redis_and_nats() {
    use concord_loadtest::run::{RunArgs, run};
    let (redis, nats) = (redis().await, nats().await);
    let (node, config) = common::node().await;
    let args = RunArgs {
        connections: 30,
        ramp: "300/s".into(),
        guilds: 3,
        guild_size: "uniform".into(),
        publish_rate: "30/s".into(),
        duration: "1s".into(),
        payload_bytes: 20,
        peer: vec![redis.url.to_string(), nats.url.to_string()],
        ..common::args_for(&node, &config)
    };
    let report = timeout(Duration::from_secs(90), run(args))
        .await
        .unwrap()
        .unwrap();
    let names: Vec<&str> = report.peers.iter().map(|p| p.target.as_str()).collect();
    assert_eq!(names, ["redis", "nats"]);
    // Every target saw the same guild layout and publish schedule (the same seed), so
    // each delivered exactly the same count.
    let expected = report.deliveries.total;
    assert!(expected > 0);
    for r in std::iter::once(&report).chain(&report.peers) {
        assert_eq!(r.connections.established, 30, "{}", r.target);
        assert_eq!(r.published, 30, "{}", r.target);
        assert_eq!((r.gaps, r.duplicates, r.errors), (0, 0, 0), "{}", r.target);
        assert_eq!(r.deliveries.total, expected, "{}", r.to_json_pretty());
        assert!(r.bytes_received_per_delivery > 20.0, "{}", r.target);
    }
    node.drain();
    node.wait().await;
}
