//! One simulated client session: connect, Hello, Identify, heartbeat with jitter, verify
//! every dispatch, and resume at `resume_gateway_url` with jittered backoff when the
//! connection drops or the node sends op 7.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use concord_protocol::codec::{Compression, Decoder};
use concord_protocol::zstd_dict::{self, DictSet, Dictionary};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::run::Shared;
use crate::track::{PublisherTracker, SeqCheck, SeqVerdict};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The transport a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain JSON, zlib-stream or zstd-stream.
    Stream(Compression),
    /// `zstd-dict` with the shipped dictionary.
    Dict,
}

impl Transport {
    /// Parses `none`, `zlib-stream`, `zstd-stream` or `zstd-dict`.
    pub fn parse(s: &str) -> Option<Transport> {
        match s {
            "none" => Some(Transport::Stream(Compression::None)),
            "zstd-dict" => Some(Transport::Dict),
            other => Compression::from_query(Some(other))
                .ok()
                .map(Transport::Stream),
        }
    }

    fn query(self) -> String {
        match self {
            Transport::Stream(c) => c
                .as_query()
                .map(|c| format!("&compress={c}"))
                .unwrap_or_default(),
            Transport::Dict => "&compress=zstd-dict".into(),
        }
    }
}

/// Decodes whatever the transport sends into JSON text.
enum ClientDecoder {
    Stream(Decoder),
    Dict(zstd_dict::Decoder, DictSet),
}

impl ClientDecoder {
    fn new(t: Transport) -> anyhow::Result<ClientDecoder> {
        Ok(match t {
            Transport::Stream(c) => ClientDecoder::Stream(Decoder::new(c, 16 << 20)?),
            Transport::Dict => ClientDecoder::Dict(
                zstd_dict::Decoder::new(16 << 20),
                [Dictionary::default_shipped()].into_iter().collect(),
            ),
        })
    }

    fn decode(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        match self {
            ClientDecoder::Stream(d) => d.decode(bytes, out)?,
            ClientDecoder::Dict(d, dicts) => {
                d.decode(bytes, dicts, out)?;
            }
        }
        Ok(())
    }
}

/// Microseconds since the Unix epoch (publisher and clients share this box's clock).
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What one session needs to know.
#[derive(Debug, Clone)]
pub struct SessionPlan {
    /// The gateway URL to connect to first.
    pub url: String,
    /// The token to identify with.
    pub token: String,
    /// A hard bound on the session's life.
    pub until: Instant,
    /// Turns `true` when the run is over.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// Runs one session until `plan.until`; all counts go to `shared`.
pub async fn run_session(plan: SessionPlan, transport: Transport, shared: Arc<Shared>, seed: u64) {
    let mut rng = seed | 1;
    let mut seq = SeqCheck::default();
    let mut tracker = PublisherTracker::default();
    let mut session: Option<(String, String)> = None; // (session_id, resume url)
    let mut attempt = 0u32;
    let mut url = plan.url.clone();
    while Instant::now() < plan.until && !stopped(&plan.stop) {
        let started = Instant::now();
        match connect(&url, transport).await {
            Ok((mut ws, mut dec)) => {
                if attempt == 0 && session.is_none() {
                    shared.established.fetch_add(1, Ordering::Relaxed);
                }
                let outcome = drive(
                    &mut ws,
                    &mut dec,
                    &plan,
                    &shared,
                    &mut seq,
                    &mut tracker,
                    &mut session,
                    started,
                    &mut rng,
                )
                .await;
                match outcome {
                    Ended::Done => {
                        let _ = ws.close(None).await;
                        break;
                    }
                    Ended::Reconnect => {
                        attempt = 0;
                    }
                    Ended::Invalid => {
                        session = None;
                        seq = SeqCheck::default();
                    }
                }
            }
            Err(_) => {
                if session.is_none() && attempt == 0 {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                }
                attempt += 1;
                if attempt > 8 {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        if let Some((_, resume)) = &session {
            url = resume.clone();
        }
        // Jittered exponential backoff: 50 ms x 2^attempt, +-50%.
        let base = 50u64 << attempt.min(6);
        let jitter = next(&mut rng) % base.max(1);
        tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
    }
    shared.add_tracker(&tracker);
}

enum Ended {
    Done,
    Reconnect,
    Invalid,
}

async fn connect(url: &str, transport: Transport) -> anyhow::Result<(Ws, ClientDecoder)> {
    let url = format!(
        "{}/?v=10&encoding=json{}",
        url.trim_end_matches('/'),
        transport.query()
    );
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_with_config(url, Some(config), true),
    )
    .await??;
    Ok((ws, ClientDecoder::new(transport)?))
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    ws: &mut Ws,
    dec: &mut ClientDecoder,
    plan: &SessionPlan,
    shared: &Shared,
    seq: &mut SeqCheck,
    tracker: &mut PublisherTracker,
    session: &mut Option<(String, String)>,
    started: Instant,
    rng: &mut u64,
) -> Ended {
    let mut out = Vec::new();
    let mut heartbeat: Option<tokio::time::Interval> = None;
    let mut acked = true;
    let until = tokio::time::Instant::from_std(plan.until);
    let mut stop = plan.stop.clone();
    loop {
        let tick = async {
            match heartbeat.as_mut() {
                Some(h) => {
                    h.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        let msg = tokio::select! {
            m = ws.next() => m,
            () = tick => {
                if !acked {
                    // A zombie connection: no ACK since the last heartbeat.
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    return Ended::Reconnect;
                }
                acked = false;
                let hb = json!({"op": 1, "d": seq.last()});
                if ws.send(Message::text(hb.to_string())).await.is_err() {
                    return Ended::Reconnect;
                }
                continue;
            }
            () = tokio::time::sleep_until(until) => return Ended::Done,
            _ = stop.changed() => return Ended::Done,
        };
        let bytes = match msg {
            Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
            Some(Ok(Message::Binary(b))) => b.to_vec(),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ended::Reconnect,
            Some(Ok(_)) => continue,
        };
        shared
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if dec.decode(&bytes, &mut out).is_err() {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            return Ended::Reconnect;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&out) else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match v["op"].as_u64() {
            Some(10) => {
                let interval = v["d"]["heartbeat_interval"].as_u64().unwrap_or(41_250);
                let first = next(rng) % interval.max(1);
                heartbeat = Some(tokio::time::interval_at(
                    tokio::time::Instant::now() + Duration::from_millis(first),
                    Duration::from_millis(interval),
                ));
                let hello = match session {
                    Some((id, _)) => {
                        json!({"op": 6, "d": {"token": plan.token, "session_id": id, "seq": seq.last()}})
                    }
                    None => {
                        json!({"op": 2, "d": {"token": plan.token, "intents": 513, "properties": {"os": "linux", "browser": "concord-loadtest", "device": "concord-loadtest"}}})
                    }
                };
                if ws.send(Message::text(hello.to_string())).await.is_err() {
                    return Ended::Reconnect;
                }
            }
            Some(11) => acked = true,
            Some(7) => return Ended::Reconnect,
            Some(9) => {
                if session.is_some() {
                    shared.resumes_failed.fetch_add(1, Ordering::Relaxed);
                }
                return Ended::Invalid;
            }
            Some(0) => {
                let s = v["s"].as_u64().unwrap_or(0);
                match seq.observe(s) {
                    SeqVerdict::Next => {}
                    _ => {
                        shared.seq_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                match v["t"].as_str() {
                    Some("READY") => {
                        shared.record_ready(started.elapsed());
                        let id = v["d"]["session_id"].as_str().unwrap_or_default().to_owned();
                        let resume = v["d"]["resume_gateway_url"]
                            .as_str()
                            .unwrap_or(&plan.url)
                            .to_owned();
                        *session = Some((id, resume));
                    }
                    Some("RESUMED") => {
                        shared.resumes_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        let d = &v["d"];
                        if let (Some(g), Some(pseq), Some(sent)) = (
                            d["lt_g"].as_u64(),
                            d["lt_pseq"].as_u64(),
                            d["lt_sent_us"].as_u64(),
                        ) {
                            shared.deliveries.fetch_add(1, Ordering::Relaxed);
                            shared.record_latency(sent, unix_us());
                            // The tracker keeps the gap and duplicate totals itself.
                            let _ = tracker.observe(g, pseq);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Whether the run is over (the guard is dropped before any await).
fn stopped(stop: &tokio::sync::watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

/// xorshift64*: a tiny seeded generator for jitter.
pub fn next(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}
