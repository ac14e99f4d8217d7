//! One simulated client session: connect, Hello, Identify, heartbeat with jitter, verify
//! every dispatch, and resume at `resume_gateway_url` with jittered backoff when the
//! connection drops or the node sends op 7.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use concord_protocol::codec::{Compression, Decoder};
use concord_protocol::zstd_dict::{self, DictSet, Dictionary};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::fleet::Phase;
use crate::peer::{self, PeerUrl};
use crate::stats::Shared;
use crate::track::{FirstExpected, PublisherTracker, SeqCheck, SeqVerdict};

type Ws = WebSocketStream<TcpStream>;

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
    Dict(zstd_dict::Decoder, Arc<DictSet>),
}

impl ClientDecoder {
    fn new(t: Transport, dicts: &Arc<DictSet>) -> anyhow::Result<ClientDecoder> {
        Ok(match t {
            Transport::Stream(c) => ClientDecoder::Stream(Decoder::new(c, 16 << 20)?),
            Transport::Dict => {
                ClientDecoder::Dict(zstd_dict::Decoder::new(16 << 20), dicts.clone())
            }
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

/// The shipped dictionary plus every dictionary the nodes behind `apis` list
/// (`GET /v1/dictionaries`), so a client can decode whichever one its node picks, the
/// retrained ones included.
pub async fn fetch_dictionaries(apis: &[String], token: &str) -> anyhow::Result<DictSet> {
    let mut set: DictSet = [Dictionary::default_shipped()].into_iter().collect();
    let http = reqwest::Client::new();
    for api in apis {
        let list: Value = http
            .get(format!("{api}/v1/dictionaries"))
            .timeout(Duration::from_secs(10))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let ids = list["dictionaries"].as_array().cloned().unwrap_or_default();
        for id in ids.iter().filter_map(|d| d["id"].as_u64()) {
            if set.iter().any(|d| u64::from(d.id().0) == id) {
                continue;
            }
            // Retrained dictionaries are served to clients only.
            let bytes = http
                .get(format!("{api}/v1/dictionaries/{id}"))
                .header("authorization", token)
                .timeout(Duration::from_secs(10))
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            set.insert(Dictionary::from_bytes(bytes.to_vec())?);
        }
        // The node's newest last, so it is also this set's newest.
        let newest = list["newest"].as_u64();
        let newest = set
            .iter()
            .find(|d| Some(u64::from(d.id().0)) == newest)
            .cloned();
        if let Some(d) = newest {
            set.insert(d);
        }
    }
    Ok(set)
}

/// A gateway payload (or a peer message), parsed without copying: `d` stays raw until
/// something needs it, and a delivery needs only its three `lt_*` marks.
#[derive(Debug, Deserialize)]
struct Envelope<'a> {
    op: Option<u64>,
    s: Option<u64>,
    #[serde(borrow)]
    t: Option<Cow<'a, str>>,
    #[serde(borrow)]
    d: Option<&'a RawValue>,
}

/// The load tester's marks in a published event's `d`; other fields are skipped.
#[derive(Debug, Deserialize)]
struct Marks {
    lt_g: u64,
    lt_pseq: u64,
    lt_sent_us: u64,
}

impl Envelope<'_> {
    /// `d` as a JSON value, for the rare payloads that need more than the marks.
    fn d_value(&self) -> Option<Value> {
        serde_json::from_str(self.d?.get()).ok()
    }

    /// `(guild, publisher sequence, publisher clock)` if this is a load-test event.
    fn marks(&self) -> Option<(u64, u64, u64)> {
        let m: Marks = serde_json::from_str(self.d?.get()).ok()?;
        Some((m.lt_g, m.lt_pseq, m.lt_sent_us))
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
    /// The guild the token is a member of.
    pub guild: u64,
    /// The local address (and port, if not 0) to connect from first; `None` lets the OS
    /// pick. Reconnects keep the address but let the OS pick the port, since the first
    /// connection's port may still be in TIME_WAIT.
    pub source: Option<SocketAddr>,
    /// A hard bound on the session's life.
    pub until: Instant,
    /// The zstd-dict dictionaries this client knows (shared by the process's sessions).
    pub dicts: Arc<DictSet>,
    /// The run's phase.
    pub phase: watch::Receiver<Phase>,
    /// With `--resume-via any`: every target; each reconnect goes to the next one.
    pub resume_targets: Option<Arc<Vec<String>>>,
}

/// How long a session waits for its guild's last events once publishing is over.
const FINAL_WAIT: Duration = Duration::from_secs(5);

/// What the run's phase means for one session that has seen `highest` of its guild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Keep going.
    Running,
    /// Publishing is over and this session has everything up to `last`.
    CaughtUp,
    /// Publishing is over; keep reading until `last` arrives or time runs out.
    Awaiting { last: u64 },
    /// Stop now.
    Stop,
}

fn progress(phase: &Phase, guild: u64, highest: Option<u64>) -> Progress {
    match phase {
        Phase::Ramp | Phase::Publishing => Progress::Running,
        Phase::Stop(_) => Progress::Stop,
        Phase::Final(published) => match published.last(guild) {
            0 => Progress::CaughtUp,
            last if highest.is_some_and(|h| h >= last) => Progress::CaughtUp,
            last => Progress::Awaiting { last },
        },
    }
}

/// Runs one session until the run's phase says stop (or `plan.until`); all counts go
/// to `shared`.
pub async fn run_session(plan: SessionPlan, transport: Transport, shared: &Shared, seed: u64) {
    let mut rng = seed | 1;
    let mut seq = SeqCheck::default();
    let mut tracker = PublisherTracker::default();
    let mut session: Option<(String, String)> = None; // (session_id, resume url)
    let mut attempt = 0u32;
    let mut url = plan.url.clone();
    let mut counted = false;
    let mut connected = false;
    let mut phase = plan.phase.clone();
    // Publishing is over plus the wait for the last events: the end of this session.
    let mut final_deadline: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= plan.until || final_deadline.is_some_and(|d| now >= d) {
            break;
        }
        match progress(&phase.borrow(), plan.guild, tracker.highest(plan.guild)) {
            Progress::Running => {}
            Progress::Awaiting { .. } => {
                final_deadline.get_or_insert(now + FINAL_WAIT);
            }
            Progress::CaughtUp | Progress::Stop => break,
        }
        let started = Instant::now();
        let source = match plan.source {
            Some(a) if counted => Some(SocketAddr::new(a.ip(), 0)),
            other => other,
        };
        match connect(&url, source, transport, &plan.dicts).await {
            Ok((mut ws, mut dec)) => {
                if !counted {
                    counted = true;
                    shared.established.fetch_add(1, Ordering::Relaxed);
                }
                if !connected {
                    connected = true;
                    shared.connected.fetch_add(1, Ordering::Relaxed);
                }
                let outcome = drive(
                    &mut ws,
                    &mut dec,
                    &plan,
                    shared,
                    &mut seq,
                    &mut tracker,
                    &mut session,
                    started,
                    &mut rng,
                    &mut phase,
                    &mut final_deadline,
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
                if connected {
                    connected = false;
                    shared.connected.fetch_sub(1, Ordering::Relaxed);
                }
                attempt += 1;
                if attempt > 8 {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        match (&plan.resume_targets, &session) {
            // Behind a load balancer: the next target, whatever READY named.
            (Some(targets), _) if targets.len() > 1 => {
                let at = targets.iter().position(|t| *t == url).unwrap_or(0);
                url = targets[(at + 1) % targets.len()].clone();
            }
            (_, Some((_, resume))) => url = resume.clone(),
            _ => {}
        }
        // Jittered exponential backoff: 50 ms x 2^attempt, +-50%.
        let base = 50u64 << attempt.min(6);
        let jitter = next(&mut rng) % base.max(1);
        tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
    }
    if connected {
        shared.connected.fetch_sub(1, Ordering::Relaxed);
    }
    // Still retrying when the run ended counts as never connecting.
    if !counted {
        shared.failed.fetch_add(1, Ordering::Relaxed);
    }
    // Whatever the session last saw, Final or Stop carries the publisher's last sequence
    // numbers: events that had not arrived by now are lost (or too late) and count.
    if let Phase::Final(p) | Phase::Stop(p) = &*phase.borrow() {
        tracker.close(plan.guild, p.last(plan.guild), p.unknown(plan.guild));
    }
    shared.add_tracker(&tracker);
}

enum Ended {
    Done,
    Reconnect,
    Invalid,
}

/// Opens a TCP connection to `addr`, from `source` when given. Binding the source first
/// is what lets one box open more than the ~28k ephemeral ports one source address has
/// toward one destination.
///
/// The caller should pick the source port too: binding port 0 before connecting makes
/// Linux search for a port free of *any* binding (and only in half the range), which
/// turns quadratic past ~14k sockets per address. An explicit port that is taken falls
/// back to that search.
pub async fn tcp_connect(
    addr: SocketAddr,
    source: Option<SocketAddr>,
) -> std::io::Result<TcpStream> {
    let new = || {
        if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
    };
    let mut socket = new()?;
    if let Some(src) = source {
        socket.set_reuseaddr(true)?;
        if socket.bind(src).is_err() && src.port() != 0 {
            socket = new()?;
            socket.bind(SocketAddr::new(src.ip(), 0))?;
        }
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn connect(
    url: &str,
    source: Option<SocketAddr>,
    transport: Transport,
    dicts: &Arc<DictSet>,
) -> anyhow::Result<(Ws, ClientDecoder)> {
    let url = format!(
        "{}/?v=10&encoding=json{}",
        url.trim_end_matches('/'),
        transport.query()
    );
    let hostport = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| anyhow::anyhow!("only ws:// targets are supported: {url}"))?;
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let ws = tokio::time::timeout(Duration::from_secs(10), async {
        let addr = tokio::net::lookup_host(hostport)
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{hostport} has no address"))?;
        let stream = tcp_connect(addr, source).await?;
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config)).await?;
        anyhow::Ok(ws)
    })
    .await??;
    Ok((ws, ClientDecoder::new(transport, dicts)?))
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
    phase: &mut watch::Receiver<Phase>,
    final_deadline: &mut Option<Instant>,
) -> Ended {
    let mut out = Vec::new();
    let mut heartbeat: Option<tokio::time::Interval> = None;
    let mut acked = true;
    loop {
        let until = tokio::time::Instant::from_std(match *final_deadline {
            Some(d) => d.min(plan.until),
            None => plan.until,
        });
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
            changed = phase.changed() => {
                if changed.is_err() {
                    return Ended::Done;
                }
                match progress(&phase.borrow_and_update(), plan.guild, tracker.highest(plan.guild)) {
                    Progress::Running => {}
                    Progress::Awaiting { .. } => {
                        final_deadline.get_or_insert(Instant::now() + FINAL_WAIT);
                    }
                    Progress::CaughtUp | Progress::Stop => return Ended::Done,
                }
                continue;
            }
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
        let Ok(env) = serde_json::from_slice::<Envelope<'_>>(&out) else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match env.op {
            Some(10) => {
                let interval = env
                    .d_value()
                    .and_then(|d| d["heartbeat_interval"].as_u64())
                    .unwrap_or(41_250);
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
                let s = env.s.unwrap_or(0);
                match seq.observe(s) {
                    SeqVerdict::Next => {}
                    _ => {
                        shared.seq_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                match env.t.as_deref() {
                    Some("READY") => {
                        // Ready before publishing began: every event is this session's,
                        // from the first, so losing the first ones counts.
                        if session.is_none() && *phase.borrow() == Phase::Ramp {
                            *tracker = PublisherTracker::new(FirstExpected::At(1));
                        }
                        shared.record_ready(started.elapsed());
                        let d = env.d_value().unwrap_or_default();
                        let id = d["session_id"].as_str().unwrap_or_default().to_owned();
                        let resume = d["resume_gateway_url"]
                            .as_str()
                            .unwrap_or(&plan.url)
                            .to_owned();
                        *session = Some((id, resume));
                    }
                    Some("RESUMED") => {
                        shared.resumes_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        if let Some((g, pseq, sent)) = env.marks() {
                            shared.deliveries.fetch_add(1, Ordering::Relaxed);
                            shared.record_latency(sent, unix_us());
                            // The tracker keeps the gap and duplicate totals itself.
                            let _ = tracker.observe(g, pseq);
                            if final_deadline.is_some()
                                && progress(
                                    &phase.borrow(),
                                    plan.guild,
                                    tracker.highest(plan.guild),
                                ) == Progress::CaughtUp
                            {
                                return Ended::Done;
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// One subscriber of a Redis or NATS peer: subscribes to its guild's channel and checks
/// every message exactly as a gateway session checks its dispatches (latency, publisher
/// sequence gaps and duplicates). Pub/sub has no resume, so a dropped subscriber ends.
pub async fn run_peer_session(
    url: &PeerUrl,
    guild: u64,
    source: Option<IpAddr>,
    until: Instant,
    mut phase: watch::Receiver<Phase>,
    shared: &Shared,
) {
    let started = Instant::now();
    let channel = peer::channel(guild);
    let connected = tokio::time::timeout(
        Duration::from_secs(10),
        peer::Subscriber::connect(url, &channel, source),
    )
    .await;
    let Ok(Ok(mut sub)) = connected else {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        shared.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    shared.established.fetch_add(1, Ordering::Relaxed);
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let mut tracker = if *phase.borrow() == Phase::Ramp {
        PublisherTracker::new(FirstExpected::At(1))
    } else {
        PublisherTracker::default()
    };
    shared.record_ready(started.elapsed());
    let mut final_deadline: Option<Instant> = None;
    loop {
        match progress(&phase.borrow_and_update(), guild, tracker.highest(guild)) {
            Progress::Running => {}
            Progress::Awaiting { .. } => {
                final_deadline.get_or_insert(Instant::now() + FINAL_WAIT);
            }
            Progress::CaughtUp | Progress::Stop => break,
        }
        let end = tokio::time::Instant::from_std(final_deadline.map_or(until, |d| d.min(until)));
        let msg = tokio::select! {
            m = sub.next_message() => m,
            () = tokio::time::sleep_until(end) => break,
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
        };
        let (payload, wire) = match msg {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        };
        shared.bytes.fetch_add(wire as u64, Ordering::Relaxed);
        let Ok(env) = serde_json::from_slice::<Envelope<'_>>(&payload) else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if let Some((g, pseq, sent)) = env.marks() {
            shared.deliveries.fetch_add(1, Ordering::Relaxed);
            shared.record_latency(sent, unix_us());
            let _ = tracker.observe(g, pseq);
        }
    }
    shared.connected.fetch_sub(1, Ordering::Relaxed);
    if let Phase::Final(p) | Phase::Stop(p) = &*phase.borrow() {
        tracker.close(guild, p.last(guild), p.unknown(guild));
    }
    shared.add_tracker(&tracker);
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
