//! Client connections: the accept loop and one task per WebSocket connection.
//!
//! The task owns its socket, its [`Machine`] and its transport [`Encoder`]. It waits on
//! four things at once: a client message, its session's wake-up (new dispatches in the
//! log), its zombie deadline, and the node draining. Dispatches are written in batches:
//! every unwritten frame is fed to the socket, then flushed once.

use std::io::IoSlice;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use concord_protocol::codec::{Compression, Encoder};
use concord_protocol::zstd_dict::{self, BodyCompressor, DictId, Dictionary, SharedBody};
use concord_protocol::{
    CloseCode, CurrentUser, GATEWAY_VERSION, GuildId, Identify, Ready, ReadyApplication,
    ReadyDictionary, Resume, Seq, SessionId, UnavailableGuild, frame, intents, token,
};
use concord_router::continuity::Takeover;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hub::{HubHandle, HubInput};
use crate::limits::IdentifyLimiter;
use crate::metrics::{self, Metrics};
use crate::peer::{RemoteResume, RemoteResumeError, RouterHandle};
use crate::session::machine::{Action, Machine};
use crate::session::{Registry, Session, SessionRef};
use crate::wsframe::{self, Part};

/// Most dispatches written per batch before the task checks its other inputs again.
const WRITE_BATCH: usize = 64;
/// How long a closing connection waits for the client's close reply.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Node-wide state every connection uses.
#[derive(Debug)]
pub struct Shared {
    /// Settings.
    pub config: Arc<Config>,
    /// The gateway URL clients resume at.
    pub public_url: String,
    /// The hub.
    pub hub: HubHandle,
    /// Every session on this node.
    pub registry: Arc<Registry>,
    /// The node's identify limiter.
    pub identify_limiter: Mutex<IdentifyLimiter>,
    /// Metric handles.
    pub metrics: Metrics,
    /// Cancelled when the node drains: every connection sends op 7 and closes.
    pub drain: CancellationToken,
    /// The zstd-dict dictionaries this node serves, and their rotation.
    pub dicts: Arc<crate::dicts::DictStore>,
    /// Where clients download dictionaries (`<public API URL>/v1/dictionaries/`).
    pub dict_url_base: String,
    /// The cluster router task, when clustered: resumes of sessions hosted elsewhere.
    pub router: Option<RouterHandle>,
}

/// The WebSocket settings: a small read buffer and a 4096-byte message cap (DESIGN's
/// client payload limit), so an idle connection owns little memory.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(0)
        .max_write_buffer_size(4 << 20)
        .max_message_size(Some(concord_protocol::MAX_CLIENT_PAYLOAD))
        .max_frame_size(Some(concord_protocol::MAX_CLIENT_PAYLOAD))
}

/// Accepts client connections until `stop` is cancelled. At most `max_connections` are
/// open at once; beyond that, new ones wait in the listen backlog.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(shared.config.max_connections));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = stop.cancelled() => return,
        };
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tracker.spawn(async move {
            serve(stream, shared).await;
            drop(permit);
        });
    }
}

/// The query parameters of the gateway URL.
#[derive(Debug, Default, PartialEq)]
struct GatewayQuery {
    v: Option<String>,
    encoding: Option<String>,
    compress: Option<String>,
    dict: Option<String>,
}

/// What a connection's messages look like on the wire.
#[derive(Debug, PartialEq)]
enum Transport {
    /// Text JSON, or one zlib/zstd stream per connection.
    Stream(Compression),
    /// `zstd-dict`: bodies compressed once per node against a dictionary; `None` asks for
    /// the newest.
    Dict(Option<u32>),
}

impl GatewayQuery {
    fn parse(query: &str) -> GatewayQuery {
        let mut q = GatewayQuery::default();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "v" => q.v = Some(v.to_owned()),
                "encoding" => q.encoding = Some(v.to_owned()),
                "compress" => q.compress = Some(v.to_owned()),
                "dict" => q.dict = Some(v.to_owned()),
                _ => {}
            }
        }
        q
    }

    /// The transport, or the close code to refuse the connection with.
    fn check(&self) -> Result<Transport, CloseCode> {
        if self
            .v
            .as_deref()
            .is_some_and(|v| v != GATEWAY_VERSION.to_string())
        {
            return Err(CloseCode::InvalidApiVersion);
        }
        if self.encoding.as_deref().is_some_and(|e| e != "json") {
            return Err(CloseCode::DecodeError);
        }
        if self.compress.as_deref() == Some("zstd-dict") {
            return match self.dict.as_deref() {
                None | Some("") => Ok(Transport::Dict(None)),
                Some(id) => id
                    .parse()
                    .map(|id| Transport::Dict(Some(id)))
                    .map_err(|_| CloseCode::DecodeError),
            };
        }
        Compression::from_query(self.compress.as_deref())
            .map(Transport::Stream)
            .map_err(|_| CloseCode::DecodeError)
    }
}

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let mut query = String::new();
    // The error type is tungstenite's, not ours.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        query = req.uri().query().unwrap_or_default().to_owned();
        Ok(resp)
    };
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config()));
    let ws = match tokio::time::timeout(shared.config.handshake_timeout, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "websocket handshake failed");
            return;
        }
        Err(_) => {
            metrics::handshake_timeout();
            tracing::debug!("websocket handshake timed out");
            return;
        }
    };
    shared.metrics.connections_open.increment(1);
    let mut conn = Connection {
        ws,
        encoder: Encoder::new(Compression::None, shared.config.zstd).ok(),
        dict: None,
        machine: Machine::new(Instant::now(), shared.config.heartbeat_interval),
        attached: None,
        shared: shared.clone(),
    };
    conn.run(GatewayQuery::parse(&query)).await;
    shared.metrics.connections_open.decrement(1);
}

/// The session a connection is attached to.
struct Attached {
    session: SessionRef,
    epoch: u64,
    kicked: CancellationToken,
}

/// Why the connection loop stopped.
enum Stop {
    /// The socket is gone or closed; detach and leave.
    Dropped,
    /// A close was sent with this code.
    Closed(CloseCode),
    /// Another connection took the session over.
    Kicked,
}

struct Connection {
    ws: WebSocketStream<TcpStream>,
    encoder: Option<Encoder>,
    /// Set in `zstd-dict` mode (then `encoder` stays the uncompressed one, unused).
    dict: Option<Dictionary>,
    machine: Machine,
    attached: Option<Attached>,
    shared: Arc<Shared>,
}

impl Connection {
    async fn run(&mut self, query: GatewayQuery) {
        let stop = match query.check() {
            Err(code) => Err(code),
            Ok(Transport::Stream(mode)) => match Encoder::new(mode, self.shared.config.zstd) {
                Ok(enc) => {
                    self.encoder = Some(enc);
                    Ok(())
                }
                Err(_) => Err(CloseCode::UnknownError),
            },
            Ok(Transport::Dict(id)) => {
                let dicts = self.shared.dicts.current();
                let dict = match id {
                    Some(id) => dicts.find(DictId(id)),
                    None => dicts.newest(),
                };
                match dict {
                    Some(d) => {
                        self.dict = Some(d.clone());
                        Ok(())
                    }
                    // An unknown dictionary id is a bad query, like an unknown mode.
                    None => Err(CloseCode::DecodeError),
                }
            }
        };
        let stop = match stop {
            Err(code) => self.close(code).await,
            Ok(()) => {
                let ids: Vec<u32> = self
                    .shared
                    .dicts
                    .current()
                    .iter()
                    .map(|d| d.id().0)
                    .collect();
                let hello = frame::hello_with_dictionaries(
                    self.shared.config.heartbeat_interval.as_millis() as u64,
                    &ids,
                );
                match self.send_control(hello.as_bytes()).await {
                    Ok(()) => self.event_loop().await,
                    Err(s) => s,
                }
            }
        };
        self.finish(stop).await;
    }

    async fn event_loop(&mut self) -> Stop {
        let drain = self.shared.drain.clone();
        // One timer per connection, moved only when the deadline moves.
        let mut deadline = tokio::time::Instant::from_std(self.machine.deadline());
        let zombie = tokio::time::sleep_until(deadline);
        tokio::pin!(zombie);
        loop {
            let next = tokio::time::Instant::from_std(self.machine.deadline());
            if next != deadline {
                deadline = next;
                zombie.as_mut().reset(deadline);
            }
            let (wake, kicked) = match &self.attached {
                Some(a) => (Some(a.session.clone()), Some(a.kicked.clone())),
                None => (None, None),
            };
            let step = tokio::select! {
                biased;
                () = drain.cancelled() => Box::pin(self.drain()).await,
                () = async { match &kicked { Some(k) => k.cancelled().await, None => std::future::pending().await } } => Err(self.let_go().await),
                msg = self.ws.next() => self.on_message(msg).await,
                () = async { match &wake { Some(s) => s.wake.notified().await, None => std::future::pending().await } } => self.write_pending().await,
                () = &mut zombie => match self.machine.handle_timeout(Instant::now()) {
                    Some(code) => Err(self.close(code).await),
                    None => Ok(()),
                },
            };
            if let Err(stop) = step {
                return stop;
            }
        }
    }

    async fn on_message(&mut self, msg: Option<Result<Message, WsError>>) -> Result<(), Stop> {
        let bytes = match msg {
            None => return Err(Stop::Dropped),
            Some(Ok(Message::Text(t))) => Bytes::from(t),
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| u16::from(f.code));
                // The client ended the session on purpose with 1000 or 1001; any other
                // close keeps it resumable.
                if matches!(code, Some(1000 | 1001)) {
                    self.end_session().await;
                }
                return Err(Stop::Dropped);
            }
            Some(Ok(_)) => return Ok(()), // ping, pong: tungstenite answers pings itself
            Some(Err(WsError::Capacity(_))) => {
                return Err(self.close(CloseCode::DecodeError).await);
            }
            Some(Err(WsError::Utf8(_)) | Err(WsError::Protocol(_))) => {
                return Err(self.close(CloseCode::DecodeError).await);
            }
            Some(Err(_)) => return Err(Stop::Dropped),
        };
        match self.machine.handle_message(&bytes, Instant::now()) {
            Action::AckHeartbeat(seq) => {
                if let (Some(seq), Some(a)) = (seq, &self.attached) {
                    a.session.lock().log.acknowledge(seq);
                }
                self.send_control(frame::heartbeat_ack().as_bytes()).await
            }
            // Boxed: these run once per connection, and their state would otherwise sit
            // in every idle connection's future.
            Action::Identify(identify) => Box::pin(self.identify(*identify)).await,
            Action::Resume(resume) => Box::pin(self.resume(resume)).await,
            Action::RequestGuildMembers(r) => {
                let Some(a) = &self.attached else {
                    return Ok(());
                };
                let body = serde_json::json!({
                    "guild_id": r.guild_id, "members": [], "chunk_index": 0,
                    "chunk_count": 1, "not_found": [], "nonce": r.nonce,
                });
                let input = HubInput::Push {
                    session: a.session.clone(),
                    event_type: "GUILD_MEMBERS_CHUNK",
                    body: Bytes::from(body.to_string()),
                };
                self.shared.hub.send(input).await.map_err(|_| Stop::Dropped)
            }
            Action::SetGuildActivity(activity) => {
                let Some(a) = &self.attached else {
                    return Ok(());
                };
                let input = HubInput::SetPassive {
                    session: a.session.clone(),
                    guild: activity.guild_id,
                    passive: !activity.active,
                };
                self.shared.hub.send(input).await.map_err(|_| Stop::Dropped)
            }
            Action::Ignore => Ok(()),
            Action::Close(code) => Err(self.close(code).await),
        }
    }

    async fn identify(&mut self, identify: Identify) -> Result<(), Stop> {
        let config = &self.shared.config;
        let claims =
            match token::verify(config.token_secret.as_bytes(), &identify.token, unix_now()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "identify refused");
                    metrics::identify("bad_token");
                    return Err(self.close(CloseCode::AuthenticationFailed).await);
                }
            };
        if !intents::is_valid(identify.intents) {
            metrics::identify("bad_intents");
            return Err(self.close(CloseCode::InvalidIntents).await);
        }
        if !self.acquire_identify_slot().await {
            metrics::identify("rate_limited");
            return Err(self.close(CloseCode::RateLimited).await);
        }
        let session = Arc::new(Session::new(
            SessionId(rand::random()),
            claims.user_id(),
            claims.name.clone(),
            claims.bot,
            identify.intents,
            config.replay,
        ));
        let guilds: Vec<GuildId> = claims.guild_ids().collect();
        let ready = Ready {
            v: GATEWAY_VERSION,
            user: CurrentUser::new(claims.user_id(), &claims.name, claims.bot),
            guilds: guilds
                .iter()
                .map(|&id| UnavailableGuild {
                    id,
                    unavailable: true,
                })
                .collect(),
            session_id: session.id,
            resume_gateway_url: self.shared.public_url.clone(),
            shard: identify.shard,
            application: ReadyApplication {
                id: claims.user_id(),
                flags: 0,
            },
            dictionaries: self
                .shared
                .dicts
                .current()
                .iter()
                .map(|d| ReadyDictionary {
                    id: d.id().0,
                    size: d.bytes().len(),
                    url: format!("{}{}", self.shared.dict_url_base, d.id()),
                })
                .collect(),
        };
        let ready = Bytes::from(serde_json::to_vec(&ready).unwrap_or_default());
        let kicked = CancellationToken::new();
        {
            let mut st = session.lock();
            st.attachment = Some(kicked.clone());
            st.epoch = 1;
        }
        self.shared.registry.insert(session.clone());
        self.shared.metrics.sessions.increment(1);
        self.attached = Some(Attached {
            session: session.clone(),
            epoch: 1,
            kicked,
        });
        self.machine.identified();
        metrics::identify("ok");
        self.shared
            .hub
            .send(HubInput::Join {
                session,
                ready,
                guilds,
            })
            .await
            .map_err(|_| Stop::Dropped)
    }

    /// Waits for an identify slot for at most one identify window.
    async fn acquire_identify_slot(&self) -> bool {
        for _ in 0..2 {
            let next = {
                let mut limiter = crate::session::lock(&self.shared.identify_limiter);
                match limiter.try_acquire(Instant::now()) {
                    Ok(()) => return true,
                    Err(at) => at,
                }
            };
            tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
        }
        false
    }

    async fn resume(&mut self, resume: Resume) -> Result<(), Stop> {
        let config = &self.shared.config;
        let Ok(id) = resume.session_id.parse::<SessionId>() else {
            metrics::resume("unknown");
            return self.invalid_session().await;
        };
        let claims = token::verify(config.token_secret.as_bytes(), &resume.token, unix_now());
        let session = self.shared.registry.find(id);
        let Some(session) = session else {
            // Not here: hosted on (or replicated to) another node of the cluster.
            let Ok(claims) = claims else {
                metrics::resume("bad_token");
                return Err(self.close(CloseCode::AuthenticationFailed).await);
            };
            return Box::pin(self.resume_remote(id, claims.user_id(), resume.seq)).await;
        };
        if claims.map(|c| c.user_id()) != Ok(session.user) {
            metrics::resume("bad_token");
            return Err(self.close(CloseCode::AuthenticationFailed).await);
        }
        let outcome = {
            let mut st = session.lock();
            if st.ended || st.invalidated {
                Err(None)
            } else {
                match st.log.rewind(resume.seq) {
                    Err(concord_router::ResumeError::Ahead { .. }) => {
                        Err(Some(CloseCode::InvalidSeq))
                    }
                    Err(concord_router::ResumeError::TooOld { .. }) => Err(None),
                    Ok(()) => {
                        if let Some(old) = st.attachment.take() {
                            old.cancel();
                        }
                        let kicked = CancellationToken::new();
                        st.attachment = Some(kicked.clone());
                        st.epoch += 1;
                        st.overflowed = false;
                        Ok((st.epoch, kicked))
                    }
                }
            }
        };
        match outcome {
            Err(Some(code)) => {
                metrics::resume("bad_seq");
                Err(self.close(code).await)
            }
            Err(None) => {
                metrics::resume("too_old");
                end_session(&self.shared, &session).await;
                self.invalid_session().await
            }
            Ok((epoch, kicked)) => {
                metrics::resume("local");
                self.attached = Some(Attached {
                    session: session.clone(),
                    epoch,
                    kicked,
                });
                self.machine.identified();
                self.shared
                    .hub
                    .send(HubInput::Push {
                        session,
                        event_type: "RESUMED",
                        body: Bytes::from_static(b"{}"),
                    })
                    .await
                    .map_err(|_| Stop::Dropped)
            }
        }
    }

    /// Resumes a session this node does not host: its old host lets it go, or its
    /// replica is promoted, and the replay is rebuilt from the guild logs (see
    /// [`crate::peer`]). Standalone nodes know only their own sessions.
    async fn resume_remote(
        &mut self,
        id: SessionId,
        user: concord_protocol::UserId,
        seq: Seq,
    ) -> Result<(), Stop> {
        let Some(router) = self.shared.router.clone() else {
            metrics::resume("unknown");
            return self.invalid_session().await;
        };
        let resumed = match router.resume(id, user, seq.0).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(session = %id, error = %e, "resume from another node failed");
                let (outcome, close) = match e {
                    RemoteResumeError::Unknown => ("unknown", None),
                    RemoteResumeError::Ahead => ("bad_seq", Some(CloseCode::InvalidSeq)),
                    RemoteResumeError::TooOld => ("too_old", None),
                    RemoteResumeError::Lost(_) => ("lost", None),
                    RemoteResumeError::TimedOut | RemoteResumeError::ShuttingDown => {
                        ("unavailable", None)
                    }
                };
                metrics::resume(outcome);
                return match close {
                    Some(code) => Err(self.close(code).await),
                    None => self.invalid_session().await,
                };
            }
        };
        let RemoteResume {
            snapshot,
            rebuilt,
            takeover,
        } = resumed;
        let identity = snapshot.identity;
        let log = concord_router::SessionLog::continuing_after(self.shared.config.replay, seq);
        let session = Arc::new(Session::with_log(
            identity.id,
            identity.user,
            identity.username.to_string(),
            identity.bot,
            identity.intents,
            log,
        ));
        let kicked = CancellationToken::new();
        {
            let mut st = session.lock();
            st.passive = snapshot.passive;
            st.attachment = Some(kicked.clone());
            st.epoch = 1;
        }
        self.shared.registry.insert(session.clone());
        self.shared.metrics.sessions.increment(1);
        metrics::resume(match takeover {
            Takeover::Migrated => "migrated",
            Takeover::Promoted => "promoted",
        });
        self.attached = Some(Attached {
            session: session.clone(),
            epoch: 1,
            kicked,
        });
        self.machine.identified();
        router
            .adopt(session, rebuilt)
            .await
            .map_err(|_| Stop::Dropped)
    }

    /// Op 9 `false`: the client must identify again (on this or a new connection).
    async fn invalid_session(&mut self) -> Result<(), Stop> {
        self.machine = Machine::new(Instant::now(), self.shared.config.heartbeat_interval);
        self.send_control(frame::invalid_session(false).as_bytes())
            .await
    }

    /// Writes every unwritten dispatch of the session. Each batch goes out as one
    /// `writev`: per frame, a header and prefix from a scratch buffer, then the event body
    /// shared by every session (or, compressed, this connection's own bytes).
    async fn write_pending(&mut self) -> Result<(), Stop> {
        let Some(a) = &self.attached else {
            return Ok(());
        };
        let session = a.session.clone();
        let kicked = a.kicked.clone();
        loop {
            let batch: Option<Vec<_>> = {
                let st = session.lock();
                // An overflowed queue, or events that left the log unwritten: this
                // connection can no longer deliver in order, so it closes and the
                // client resumes from what it really received.
                (!st.overflowed && !st.log.has_write_gap()).then(|| {
                    st.log
                        .unwritten()
                        .take(WRITE_BATCH)
                        .map(|(s, e)| (s, e.clone()))
                        .collect()
                })
            };
            let Some(batch) = batch else {
                return Err(self.close(CloseCode::UnknownError).await);
            };
            let Some(&(last, _)) = batch.last() else {
                return Ok(());
            };
            let now = Instant::now();
            let mut scratch = Vec::with_capacity(batch.len() * 64);
            let mut compressed: Vec<Bytes> = Vec::new();
            let mut plan = Vec::with_capacity(batch.len());
            for (seq, event) in &batch {
                if event.topic.is_some() {
                    self.shared
                        .metrics
                        .publish_to_write
                        .record(now.duration_since(event.published_at).as_secs_f64());
                }
                plan.push(self.frame_dispatch(*seq, event, &mut scratch, &mut compressed)?);
            }
            let parts: Vec<Part<'_>> = plan
                .iter()
                .zip(&batch)
                .flat_map(|(p, (_, event))| p.parts(&event.body, &compressed))
                .collect();
            let mut slices = wsframe::slices(&scratch, &parts);
            tokio::select! {
                r = write_all_vectored(&mut self.ws, &mut slices) => r.map_err(|_| Stop::Dropped)?,
                () = kicked.cancelled() => return Err(self.let_go().await),
            }
            drop(slices);
            self.shared
                .metrics
                .dispatches_delivered
                .increment(batch.len() as u64);
            session.lock().log.mark_written(last);
            if batch.len() < WRITE_BATCH {
                return Ok(());
            }
        }
    }

    /// Frames one dispatch: its header and (uncompressed) prefix go to `scratch`; a
    /// compressed frame's bytes go to `compressed`.
    fn frame_dispatch(
        &mut self,
        seq: Seq,
        event: &concord_router::Event,
        scratch: &mut Vec<u8>,
        compressed: &mut Vec<Bytes>,
    ) -> Result<Planned, Stop> {
        let m = &self.shared.metrics;
        let start = scratch.len();
        if let Some(dict) = &self.dict {
            // The body is compressed once per node per dictionary and shared; only the
            // few header bytes are this session's.
            let (body, fresh) = event
                .dict_body(dict.id(), || {
                    // Train on published traffic only: a session's own READY is
                    // private, and one GUILD_CREATE per identify would crowd the
                    // sample with near-copies.
                    if event.topic.is_some() {
                        self.shared.dicts.sample(&event.event_type, &event.body);
                    }
                    dict_compress(dict, 0, Some(&event.event_type), &event.body)
                })
                .map_err(|_| Stop::Dropped)?;
            if fresh {
                crate::metrics::dict_compression(
                    &event.event_type,
                    body.content_len(),
                    body.frame().len(),
                );
            }
            let header = zstd_dict::header(dict.id(), Some(seq));
            let len = header.as_bytes().len() + body.frame().len();
            m.bytes_raw.increment((body.content_len() + 16) as u64);
            m.bytes_wire.increment(len as u64);
            wsframe::header_into(scratch, wsframe::BINARY, len);
            scratch.extend_from_slice(header.as_bytes());
            compressed.push(body.frame().clone());
            return Ok(Planned::Compressed {
                head: (start, scratch.len()),
                index: compressed.len() - 1,
            });
        }
        let Some(encoder) = self.encoder.as_mut() else {
            return Err(Stop::Dropped);
        };
        if encoder.is_binary() {
            let mut frame = Vec::new();
            frame::dispatch_into(&mut frame, seq, &event.event_type, &event.body);
            let mut wire = Vec::with_capacity(frame.len() / 2 + 16);
            encoder
                .encode(&frame, &mut wire)
                .map_err(|_| Stop::Dropped)?;
            m.bytes_raw.increment(frame.len() as u64);
            m.bytes_wire.increment(wire.len() as u64);
            wsframe::header_into(scratch, wsframe::BINARY, wire.len());
            compressed.push(Bytes::from(wire));
            Ok(Planned::Compressed {
                head: (start, scratch.len()),
                index: compressed.len() - 1,
            })
        } else {
            let mut prefix = Vec::with_capacity(48 + event.event_type.len());
            frame::dispatch_prefix_into(&mut prefix, seq, &event.event_type);
            let len = prefix.len() + event.body.len() + frame::DISPATCH_SUFFIX.len();
            m.bytes_raw.increment(len as u64);
            m.bytes_wire.increment(len as u64);
            wsframe::header_into(scratch, wsframe::TEXT, len);
            scratch.extend_from_slice(&prefix);
            Ok(Planned::Plain {
                head: (start, scratch.len()),
            })
        }
    }

    /// Sends one non-dispatch frame (Hello, Heartbeat ACK, op 7, op 9).
    async fn send_control(&mut self, payload: &[u8]) -> Result<(), Stop> {
        let m = &self.shared.metrics;
        let Some(encoder) = self.encoder.as_mut() else {
            return Err(Stop::Dropped);
        };
        m.bytes_raw.increment(payload.len() as u64);
        let mut out = Vec::with_capacity(payload.len() + 10);
        if let Some(dict) = &self.dict {
            // Control frames are rare: compress each on its own.
            let (op, d) = control_parts(payload).ok_or(Stop::Dropped)?;
            let body = dict_compress(dict, op, None, d).map_err(|_| Stop::Dropped)?;
            let header = zstd_dict::header(dict.id(), None);
            let len = header.as_bytes().len() + body.frame().len();
            m.bytes_wire.increment(len as u64);
            wsframe::header_into(&mut out, wsframe::BINARY, len);
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(body.frame());
        } else if encoder.is_binary() {
            let mut wire = Vec::with_capacity(payload.len() + 16);
            encoder
                .encode(payload, &mut wire)
                .map_err(|_| Stop::Dropped)?;
            m.bytes_wire.increment(wire.len() as u64);
            wsframe::header_into(&mut out, wsframe::BINARY, wire.len());
            out.extend_from_slice(&wire);
        } else {
            m.bytes_wire.increment(payload.len() as u64);
            wsframe::header_into(&mut out, wsframe::TEXT, payload.len());
            out.extend_from_slice(payload);
        }
        let mut slices = [IoSlice::new(&out)];
        write_all_vectored(&mut self.ws, &mut slices)
            .await
            .map_err(|_| Stop::Dropped)
    }

    /// Drain: op 7, then a resumable close.
    async fn drain(&mut self) -> Result<(), Stop> {
        let _ = self.send_control(frame::reconnect().as_bytes()).await;
        Err(self.close(CloseCode::UnknownError).await)
    }

    /// The attachment was cancelled: the node lost events of one of the session's guilds
    /// (op 9, the session ends, the client identifies again), the queue overflowed (close
    /// with 4000, stay resumable) or another connection resumed the session (leave
    /// quietly).
    async fn let_go(&mut self) -> Stop {
        let invalidated = self.attached.as_ref().is_some_and(|a| {
            let st = a.session.lock();
            st.invalidated && st.epoch == a.epoch && !st.ended
        });
        if invalidated {
            // Events of one of its guilds were lost for this node: no resume can replay
            // them, so end the session and make the client identify again.
            self.end_session().await;
            let _ = self.invalid_session().await;
            return self.close(CloseCode::UnknownError).await;
        }
        let overflowed = self.attached.as_ref().is_some_and(|a| {
            let st = a.session.lock();
            st.overflowed && st.epoch == a.epoch && !st.ended
        });
        if overflowed {
            self.close(CloseCode::UnknownError).await
        } else {
            Stop::Kicked
        }
    }

    /// Sends a close frame with `code` and returns the stop reason. A client that does
    /// not read (its socket is full) gets no close frame, only the TCP close.
    async fn close(&mut self, code: CloseCode) -> Stop {
        metrics::close(code.code());
        let frame = CloseFrame {
            code: WsCloseCode::from(code.code()),
            reason: code.reason().into(),
        };
        let _ = tokio::time::timeout(CLOSE_LINGER, self.ws.close(Some(frame))).await;
        Stop::Closed(code)
    }

    async fn end_session(&mut self) {
        if let Some(a) = self.attached.take() {
            end_session(&self.shared, &a.session).await;
        }
    }

    /// After the loop: detach (keeping the session resumable) or end the session, then
    /// let the client's close reply arrive.
    async fn finish(&mut self, stop: Stop) {
        match stop {
            Stop::Kicked => {
                self.attached = None;
            }
            Stop::Closed(code) if !code.keeps_session() => self.end_session().await,
            Stop::Closed(_) | Stop::Dropped => self.detach(),
        }
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    fn detach(&mut self) {
        let Some(a) = self.attached.take() else {
            return;
        };
        let mut st = a.session.lock();
        if st.epoch == a.epoch && !st.ended {
            st.attachment = None;
            let deadline = Instant::now() + self.shared.config.resume_window;
            self.shared
                .registry
                .schedule_expiry(a.session.id, a.epoch, deadline);
        }
    }
}

/// Ends a session for good: it can no longer be resumed.
pub async fn end_session(shared: &Shared, session: &SessionRef) {
    let was_live = {
        let mut st = session.lock();
        let live = !st.ended;
        st.ended = true;
        if let Some(k) = st.attachment.take() {
            k.cancel();
        }
        live
    };
    if was_live {
        shared.registry.remove(session.id);
        shared.metrics.sessions.decrement(1);
        let _ = shared
            .hub
            .send(HubInput::Leave {
                session: session.clone(),
            })
            .await;
    }
}

/// Removes sessions whose resume window passed, until `stop`.
pub async fn reap_expired(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(crate::session::EXPIRY_TICK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        for session in shared.registry.expire(Instant::now()) {
            shared.metrics.sessions.decrement(1);
            let _ = shared.hub.send(HubInput::Leave { session }).await;
        }
    }
}

/// Where a framed dispatch's bytes live until the batch is written.
enum Planned {
    /// Header and prefix in scratch, then the shared body, then `}`.
    Plain { head: (usize, usize) },
    /// Header in scratch, then this connection's compressed bytes.
    Compressed { head: (usize, usize), index: usize },
}

impl Planned {
    fn parts<'a>(&self, body: &'a [u8], compressed: &'a [Bytes]) -> Vec<Part<'a>> {
        match *self {
            Planned::Plain { head: (s, e) } => vec![
                Part::Scratch(s, e),
                Part::Bytes(body),
                Part::Bytes(frame::DISPATCH_SUFFIX),
            ],
            Planned::Compressed {
                head: (s, e),
                index,
            } => vec![Part::Scratch(s, e), Part::Bytes(&compressed[index])],
        }
    }
}

thread_local! {
    /// One zstd-dict body compressor per worker thread: its context is reused for every
    /// event, and no connection owns one.
    static DICT_COMPRESSOR: std::cell::RefCell<Option<BodyCompressor>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses `{"op":op,"t":t,"d":d}` against `dict` with this thread's compressor.
fn dict_compress(
    dict: &Dictionary,
    op: u8,
    t: Option<&str>,
    d: &[u8],
) -> Result<SharedBody, zstd_dict::EncodeError> {
    DICT_COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(BodyCompressor::new(zstd_dict::DEFAULT_LEVEL)?);
        }
        match slot.as_mut() {
            Some(c) => c.compress(Some(dict), op, t, d),
            None => Err(zstd_dict::EncodeError::Zstd("no compressor")),
        }
    })
}

/// The `op` and raw `d` of a control envelope this node built.
fn control_parts(payload: &[u8]) -> Option<(u8, &[u8])> {
    #[derive(serde::Deserialize)]
    struct Control<'a> {
        op: u8,
        #[serde(borrow)]
        d: &'a serde_json::value::RawValue,
    }
    let c: Control<'_> = serde_json::from_slice(payload).ok()?;
    Some((c.op, c.d.get().as_bytes()))
}

/// Writes whole frames straight to the socket, past tungstenite, which keeps reading,
/// answering pings and closing. Its own queue is flushed first so frames never interleave.
async fn write_all_vectored(
    ws: &mut WebSocketStream<TcpStream>,
    slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    ws.flush().await.map_err(std::io::Error::other)?;
    let stream = ws.get_mut();
    let mut slices = slices;
    while !slices.is_empty() {
        let n = stream.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Seconds since the Unix epoch: the clock token expiries are checked against.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_checks() {
        let ok = GatewayQuery::parse("v=10&encoding=json&compress=zstd-stream");
        assert_eq!(ok.check(), Ok(Transport::Stream(Compression::ZstdStream)));
        assert_eq!(
            GatewayQuery::parse("").check(),
            Ok(Transport::Stream(Compression::None))
        );
        assert_eq!(
            GatewayQuery::parse("compress=zstd-dict&dict=42").check(),
            Ok(Transport::Dict(Some(42)))
        );
        assert_eq!(
            GatewayQuery::parse("compress=zstd-dict").check(),
            Ok(Transport::Dict(None))
        );
        assert_eq!(
            GatewayQuery::parse("compress=zstd-dict&dict=x").check(),
            Err(CloseCode::DecodeError)
        );
        assert_eq!(
            GatewayQuery::parse("v=9").check(),
            Err(CloseCode::InvalidApiVersion)
        );
        assert_eq!(
            GatewayQuery::parse("v=10&encoding=etf").check(),
            Err(CloseCode::DecodeError)
        );
        assert_eq!(
            GatewayQuery::parse("v=10&compress=gzip").check(),
            Err(CloseCode::DecodeError)
        );
    }
}
