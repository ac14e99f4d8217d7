//! Test fixtures: in-process nodes on port-0 loopback sockets, tokens, a raw protocol
//! client and an HTTP publisher.
#![allow(dead_code, clippy::unwrap_used)]

pub mod procs;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use concord_gateway::{Config, Listeners, Node};
use concord_protocol::codec::{Compression, Decoder};
use concord_protocol::token::{self, Claims};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

pub async fn start(config: Config) -> Node {
    let listeners = Listeners::bind(&config).await.unwrap();
    concord_gateway::start(config, listeners).await.unwrap()
}

pub fn token(config: &Config, uid: u64, guilds: &[u64]) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = Claims {
        uid,
        name: format!("user{uid}"),
        guilds: guilds.to_vec(),
        exp,
        bot: true,
    };
    token::mint(config.token_secret.as_bytes(), &claims)
}

pub struct Publisher {
    http: reqwest::Client,
    base: String,
    secret: String,
}

impl Publisher {
    pub fn new(node: &Node, config: &Config) -> Publisher {
        Publisher {
            http: reqwest::Client::new(),
            base: format!("http://{}", node.api_addr),
            secret: config.publish_secret.clone(),
        }
    }

    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.secret);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Publishes to a guild; returns the guild seq.
    pub async fn guild(&self, guild: u64, t: &str, d: Value) -> u64 {
        let (status, body) = self
            .raw(
                reqwest::Method::POST,
                &format!("/v1/guilds/{guild}/events"),
                Some(json!({"t": t, "d": d})),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body["guild_seq"].as_u64().unwrap()
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The next binary message on `ws` (a zstd-dict frame), skipping any other kind; fails
/// the test after [`WAIT`].
pub async fn next_binary(ws: &mut Ws) -> tokio_tungstenite::tungstenite::Bytes {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Binary(b) = msg {
            return b;
        }
    }
}

/// A raw gateway client that speaks the protocol by hand.
pub struct Client {
    pub ws: Ws,
    decoder: Decoder,
    pub last_seq: u64,
}

/// What the server sent next.
#[derive(Debug)]
pub enum Received {
    Frame(Value),
    Closed(Option<u16>),
}

impl Client {
    pub async fn connect(node: &Node, query: &str) -> Client {
        Client::connect_addr(node.client_addr, query).await
    }

    /// Connects to a node's client listener by address (a node in another process).
    pub async fn connect_addr(addr: std::net::SocketAddr, query: &str) -> Client {
        let mode = if query.contains("zlib-stream") {
            Compression::ZlibStream
        } else if query.contains("zstd-stream") {
            Compression::ZstdStream
        } else {
            Compression::None
        };
        let url = format!("ws://{addr}/?{query}");
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Client {
            ws,
            decoder: Decoder::new(mode, 16 << 20).unwrap(),
            last_seq: 0,
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_raw(&mut self, text: String) {
        let _ = self.ws.send(Message::text(text)).await;
    }

    /// The next frame or close, skipping pings.
    pub async fn recv(&mut self) -> Received {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for the server");
            let bytes: Vec<u8> = match msg {
                None | Some(Err(_)) => return Received::Closed(None),
                Some(Ok(Message::Close(f))) => {
                    return Received::Closed(f.map(|f| u16::from(f.code)));
                }
                Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                Some(Ok(Message::Binary(b))) => b.to_vec(),
                Some(Ok(_)) => continue,
            };
            let mut out = Vec::new();
            self.decoder.decode(&bytes, &mut out).unwrap();
            let v: Value = serde_json::from_slice(&out).unwrap();
            if v["op"] == 0 {
                let s = v["s"].as_u64().unwrap();
                assert_eq!(s, self.last_seq + 1, "s must increase by one: {v}");
                self.last_seq = s;
            }
            return Received::Frame(v);
        }
    }

    pub async fn frame(&mut self) -> Value {
        match self.recv().await {
            Received::Frame(v) => v,
            Received::Closed(c) => panic!("expected a frame, got close {c:?}"),
        }
    }

    /// The next dispatch, skipping heartbeat ACKs.
    pub async fn dispatch(&mut self) -> Value {
        loop {
            let v = self.frame().await;
            if v["op"] == 0 {
                return v;
            }
            assert_eq!(v["op"], 11, "unexpected frame {v}");
        }
    }

    /// Waits for the server's close code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            if let Received::Closed(c) = self.recv().await {
                return c;
            }
        }
    }

    /// Hello, then Identify; returns READY's `d` after checking the GUILD_CREATEs.
    pub async fn identify(&mut self, token: &str, guilds: &[u64]) -> Value {
        let hello = self.frame().await;
        assert_eq!(hello["op"], 10);
        self.send(json!({"op": 2, "d": {"token": token, "intents": 513, "properties": {"os": "linux", "browser": "test", "device": "test"}}})).await;
        let ready = self.dispatch().await;
        assert_eq!(ready["t"], "READY");
        for g in guilds {
            let gc = self.dispatch().await;
            assert_eq!(gc["t"], "GUILD_CREATE");
            assert_eq!(gc["d"]["id"], g.to_string());
        }
        ready["d"].clone()
    }
}

/// A config for tests, with tweaks.
pub fn config() -> Config {
    Config::for_tests()
}
