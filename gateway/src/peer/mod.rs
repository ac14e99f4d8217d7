//! # Peer links and the cluster router task
//!
//! Wires the sans-IO [`ClusterRouter`] (in `concord-router`) to the network and to this
//! node's hub, so a guild event published on any node reaches every subscribed session on
//! every node, exactly once and in guild order, with one batched copy per subscribed
//! peer node. Runs only on a clustered node (`--gossip-listen`); a standalone node keeps
//! the hub-only publish path.
//!
//! ## Pieces
//! - **Router task** ([`RouterTask`]): the one owner of the [`ClusterRouter`]. Inputs
//!   arrive as [`Input`] over a bounded channel ([`RouterHandle`]), plus the hub's
//!   subscription changes, the [`ClusterView`] watch (ring changes, nodes marked down) and
//!   a 1 s tick (`resend_stale`). After each burst of inputs it calls `flush` and sends
//!   the frames of that flush to each peer as ONE [`pb::PeerMessage`].
//! - **Links** ([`link`]): the tonic `concord.v1.Peer/Link` bidirectional stream, one
//!   per peer pair. The node with the lexicographically smaller id dials the other at its
//!   advertised `peer_addr`, with jittered exponential backoff; both directions use that
//!   stream. Every queue is bounded: a link whose queue is full is dropped, and the
//!   router's gap detection, gap fill and `resend_stale` repair what was lost.
//! - **Wire** ([`wire`]): `PeerFrame` <-> protobuf, with [`wire::WireError`] for bad
//!   frames; **auth** ([`auth`]): the HMAC bearer token a dialing node presents.
//!
//! ## Subscriptions
//! The hub tells the router task when a guild's local subscriber count goes 0 -> 1
//! and 1 -> 0 (not per session), so the router's own count is 0 or 1 per guild. That
//! channel ([`HubEvent`]) is unbounded on purpose: the router task waits on the hub to
//! deliver, so the hub must never wait on the router.
//!
//! ## Session continuity
//! The same channel carries the hub's replication ops, which this task sends as one
//! [`SessionFrame::Ops`] per replica node per hub burst; a replica node applies them to
//! its [`SessionReplicas`] and acknowledges the batch ([`HubInput::ReplicaAck`] on the
//! host, which releases `sync`-gated writes). A client that resumes on a node that does
//! not host its session ([`RouterHandle::resume`]):
//! 1. the node asks the session partition's preference list, in order, for the session
//!    ([`SessionFrame::ResumeRequest`]; a node on the list may be the asker itself);
//! 2. a node with a replica asks the live host to let the session go
//!    ([`SessionFrame::Release`]; the host's hub ends it and answers with its final
//!    state: **migrated**) or, if the host is down or silent for [`RELEASE_TICKS`]
//!    ticks, answers from its replica (**promoted**); a node that hosts the session
//!    itself releases it directly;
//! 3. the asker fetches what the replay needs from the guild logs (`LogFetch` to each
//!    guild's owner) and rebuilds it with [`rebuild`]; the connection then hands the
//!    session to the hub ([`HubInput::Adopt`]).
//!
//! Replicas of a host that went down are dropped one resume window later.
//!
//! ## What is clustered and what is not (yet)
//! Guild events published over HTTP or gRPC go through the owner, and sessions resume on
//! any node. User events, guild membership changes and stored guild objects stay local to
//! the node they were sent to.

pub mod auth;
pub mod link;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use concord_protocol::{GuildId, SessionId, UserId};
use concord_ring::Ring;
use concord_ring::RingVersion;
use concord_router::cluster::{
    ClusterConfig, ClusterCounters, ClusterRouter, FetchId, FrameKind, GuildEvent, NodeId, Output,
    PeerFrame, PublishError, PublishId,
};
use concord_router::continuity::{
    RebuildError, Rebuilt, ResumeRefusal, SessionFrame, SessionReplicas, SessionSnapshot, Takeover,
    extend, fetch_plan, rebuild,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::cluster::view::build_ring;
use crate::cluster::{ClusterView, NodeState};
use crate::hub::{HubEvent, HubHandle, HubInput, session_nodes};
use crate::session::SessionRef;

#[cfg(doc)]
use crate::grpc::pb;

/// How many inputs may wait for the router task before callers wait.
pub const ROUTER_QUEUE: usize = 4096;
/// Batches (one per flush) queued for one link; past it the link is dropped.
pub const LINK_QUEUE: usize = 1024;
/// Batches kept for a peer whose link is not up yet (startup, reconnect); past it
/// newer batches are dropped and the router's repair paths recover them.
pub const WAITING_BATCHES: usize = 256;
/// How long a publisher waits for the owner before it gets "unavailable".
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// `resend_stale` period: a forward still unacknowledged one tick later is sent again.
pub const TICK: Duration = Duration::from_secs(1);
/// Ticks a directory waits for a live host to release a session before it promotes
/// the replica instead (the host is presumed dead before membership says so).
pub const RELEASE_TICKS: u32 = 3;
/// Ticks a resume on another node may take (asking, releasing, fetching) before the
/// client is told to identify again.
pub const RESUME_TICKS: u32 = 15;
/// Ticks a resume waits for one node's answer before it also asks the next (the node
/// may have died before membership says so). Above [`RELEASE_TICKS`], so a directory
/// that waits for a silent host answers first.
pub const ASK_TICKS: u32 = RELEASE_TICKS + 2;

/// Why a clustered guild publish failed. Nothing was delivered by this node for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClusterPublishError {
    /// The router (here or at the owner) refused it; transient, retry (see
    /// [`PublishError`]).
    #[error("cluster publish refused: {0}")]
    Refused(PublishError),
    /// The owner did not acknowledge within [`PUBLISH_TIMEOUT`]. It may still be
    /// sequenced later (the router keeps resending it); transient.
    #[error("the guild's owner did not acknowledge in time")]
    TimedOut,
    /// The node is shutting down; permanent for this node.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// A session resumed from another node: what the connection hands to the hub.
#[derive(Debug)]
pub struct RemoteResume {
    /// The session's state, cut at the client's seq.
    pub snapshot: SessionSnapshot,
    /// Its replay and where each guild continues.
    pub rebuilt: Rebuilt,
    /// Whether the old host let it go or its replica was promoted.
    pub takeover: Takeover,
}

/// Why a session could not be resumed from another node. Nothing changed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RemoteResumeError {
    /// No node knows the session (never existed, expired, or its replica was lost with
    /// its host and `async` replication). Permanent: identify again.
    #[error("no node knows this session")]
    Unknown,
    /// The client's seq is ahead of the session (close 4007). Permanent.
    #[error("resume seq is ahead of the session")]
    Ahead,
    /// What follows the client's seq is no longer kept. Permanent.
    #[error("resume seq is too old")]
    TooOld,
    /// An event the replay needs is in no guild log any more. Permanent.
    #[error("replay lost: {0}")]
    Lost(RebuildError),
    /// The cluster did not answer within [`RESUME_TICKS`] ticks. Transient.
    #[error("the cluster did not answer in time")]
    TimedOut,
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

impl From<ResumeRefusal> for RemoteResumeError {
    fn from(r: ResumeRefusal) -> Self {
        match r {
            ResumeRefusal::Unknown => RemoteResumeError::Unknown,
            ResumeRefusal::Ahead => RemoteResumeError::Ahead,
            ResumeRefusal::TooOld => RemoteResumeError::TooOld,
        }
    }
}

/// What bounds the task's session replicas.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// Most resumable `s` kept per replicated session (the replay limit).
    pub max_entries: usize,
    /// How long replicas of a dead host are kept.
    pub resume_window: Duration,
}

type ResumeReply = oneshot::Sender<Result<RemoteResume, RemoteResumeError>>;

/// A resume this node is carrying out for one of its clients.
#[derive(Debug)]
struct ResumeJob {
    session: SessionId,
    user: UserId,
    client_seq: u64,
    reply: ResumeReply,
    /// Nodes still to ask, in order.
    candidates: VecDeque<NodeId>,
    /// Set once a node handed the session over: the replay's guild events are fetched.
    fetching: Option<Fetching>,
    /// The peer asked last, and ticks since.
    asking: Option<(NodeId, u32)>,
    /// Nodes asked that have not answered yet (a slow one may still hand it over).
    awaiting: BTreeSet<NodeId>,
    ticks: u32,
}

/// A session resumed here, on its way to the hub: its replay must reach at least as
/// far as this node's own delivery in each guild, or the hub could not continue it
/// from the node's stream without a gap.
#[derive(Debug)]
struct AdoptJob {
    session: SessionRef,
    rebuilt: Rebuilt,
    /// Fetches that extend the replay, by guild.
    waiting: BTreeMap<FetchId, GuildId>,
}

/// Who asked for a log fetch.
#[derive(Debug, Clone, Copy)]
enum FetchFor {
    Resume(u64),
    Adopt(u64),
}

#[derive(Debug)]
struct Fetching {
    snapshot: SessionSnapshot,
    takeover: Takeover,
    fetched: BTreeMap<GuildId, Vec<GuildEvent>>,
    waiting: BTreeSet<FetchId>,
}

/// A release this node (as directory, or host) is waiting for.
#[derive(Debug)]
struct PendingRelease {
    asker: NodeId,
    asker_request: u64,
    session: SessionId,
    client_seq: u64,
    /// The host asked (this node when it asked its own hub).
    host: NodeId,
    ticks: u32,
}

/// What the router task is told.
#[derive(Debug)]
pub enum Input {
    /// A backend published a guild event on this node.
    Publish {
        /// The guild.
        guild: GuildId,
        /// `t`.
        event_type: Box<str>,
        /// `d`, serialised JSON.
        body: Bytes,
        /// Gets the guild seq, or why not.
        reply: oneshot::Sender<Result<u64, ClusterPublishError>>,
    },
    /// Frames one peer sent in one message.
    PeerFrames {
        /// The authenticated peer.
        from: NodeId,
        /// The frames, in order.
        frames: Vec<PeerFrame>,
    },
    /// A client resumed a session this node does not host.
    Resume {
        /// The session.
        session: SessionId,
        /// The user its token names.
        user: UserId,
        /// The client's last `s`.
        client_seq: u64,
        /// Gets the rebuilt session, or why not.
        reply: ResumeReply,
    },
    /// The cluster view changed (maybe the ring, maybe a node went down).
    ViewChanged,
    /// Timer: resend stale forwards.
    Tick,
    /// A link to `node` is up; frames for it go into `tx`.
    LinkUp {
        /// The peer.
        node: NodeId,
        /// This link's id (a newer link replaces an older one).
        link: u64,
        /// Its outbound queue.
        tx: mpsc::Sender<Vec<PeerFrame>>,
    },
    /// Link `link` to `node` ended.
    LinkDown {
        /// The peer.
        node: NodeId,
        /// The link's id; ignored if a newer link replaced it.
        link: u64,
    },
    /// Something the hub reported.
    Hub(HubEvent),
    /// Hand a session resumed from another node to the hub, once its replay reaches
    /// this node's delivery in each of its guilds.
    Adopt {
        /// The session (attached to its connection).
        session: SessionRef,
        /// Its replay and cursors.
        rebuilt: Rebuilt,
    },
    /// Read the router's counters (answered after every earlier input is applied and
    /// flushed).
    Counters {
        /// Gets them.
        reply: oneshot::Sender<ClusterCounters>,
    },
}

/// A cheap handle to the router task.
#[derive(Clone, Debug)]
pub struct RouterHandle {
    tx: mpsc::Sender<Input>,
}

impl RouterHandle {
    /// Publishes a guild event through its owner; returns its guild seq once the owner
    /// has sequenced and replicated it.
    ///
    /// # Errors
    /// See [`ClusterPublishError`].
    pub async fn publish(
        &self,
        guild: GuildId,
        event_type: &str,
        body: Bytes,
    ) -> Result<u64, ClusterPublishError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Publish {
                guild,
                event_type: event_type.into(),
                body,
                reply,
            })
            .await
            .map_err(|_| ClusterPublishError::ShuttingDown)?;
        match tokio::time::timeout(PUBLISH_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClusterPublishError::ShuttingDown),
            Err(_) => Err(ClusterPublishError::TimedOut),
        }
    }

    /// Resumes a session this node does not host from the node that does, or from its
    /// replica (see the module docs).
    ///
    /// # Errors
    /// See [`RemoteResumeError`].
    pub async fn resume(
        &self,
        session: SessionId,
        user: UserId,
        client_seq: u64,
    ) -> Result<RemoteResume, RemoteResumeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Resume {
                session,
                user,
                client_seq,
                reply,
            })
            .await
            .map_err(|_| RemoteResumeError::ShuttingDown)?;
        rx.await.map_err(|_| RemoteResumeError::ShuttingDown)?
    }

    /// Hands a session [`RouterHandle::resume`] rebuilt to the hub (through this task,
    /// so it continues exactly where this node's delivery stands).
    ///
    /// # Errors
    /// The router task has stopped.
    pub async fn adopt(
        &self,
        session: SessionRef,
        rebuilt: Rebuilt,
    ) -> Result<(), ClusterPublishError> {
        self.send(Input::Adopt { session, rebuilt }).await
    }

    /// The router's counters so far (frames sent by kind, fan-out events, ...).
    ///
    /// # Errors
    /// The router task has stopped.
    pub async fn counters(&self) -> Result<ClusterCounters, ClusterPublishError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Counters { reply })
            .await
            .map_err(|_| ClusterPublishError::ShuttingDown)?;
        rx.await.map_err(|_| ClusterPublishError::ShuttingDown)
    }

    /// Resolves once the router task has stopped.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }

    pub(crate) async fn send(&self, input: Input) -> Result<(), ClusterPublishError> {
        self.tx
            .send(input)
            .await
            .map_err(|_| ClusterPublishError::ShuttingDown)
    }
}

/// One peer's outbound side as the router task sees it.
#[derive(Debug)]
enum LinkSlot {
    Up {
        link: u64,
        tx: mpsc::Sender<Vec<PeerFrame>>,
    },
    /// No link yet: batches wait here (bounded) until one comes up.
    Waiting(VecDeque<Vec<PeerFrame>>),
}

/// The task that owns this node's [`ClusterRouter`].
#[derive(Debug)]
pub struct RouterTask {
    router: ClusterRouter<Option<Arc<Ring>>>,
    me: NodeId,
    hub: HubHandle,
    view: watch::Receiver<Arc<ClusterView>>,
    ring_version: Option<RingVersion>,
    down: BTreeSet<NodeId>,
    links: HashMap<NodeId, LinkSlot>,
    outbox: HashMap<NodeId, Vec<PeerFrame>>,
    replies: HashMap<PublishId, oneshot::Sender<Result<u64, ClusterPublishError>>>,
    next_publish_id: u64,
    exported: ClusterCounters,
    replicas: SessionReplicas,
    settings: SessionSettings,
    resumes: HashMap<u64, ResumeJob>,
    releases: HashMap<u64, PendingRelease>,
    fetches: HashMap<FetchId, FetchFor>,
    adopts: HashMap<u64, AdoptJob>,
    /// Guilds this node is not subscribed to yet, for which an adopted session was
    /// forwarded: the node will subscribe after this seq, so later adoptions must
    /// reach it.
    adopting: HashMap<GuildId, concord_router::cluster::GuildSeq>,
    next_request: u64,
    /// Hosts that went down, and when their replicas are dropped.
    orphans: VecDeque<(Instant, NodeId)>,
    /// What this task's synchronous handlers have for the hub (adoptions, releases,
    /// replica acks, restarted replica nodes), sent in order with the outputs: the hub
    /// is awaited there.
    to_hub: Vec<HubInput>,
    /// Releases our hub is doing for another node: our id -> (that node, its id).
    remote_releases: HashMap<u64, (NodeId, u64)>,
    /// Whether the last ring given to the router had this node on it.
    was_on_ring: bool,
    /// Guild handoffs under way, for readiness (`/readyz`).
    handoffs: Arc<std::sync::atomic::AtomicUsize>,
    /// Members' generations, to notice a restart the ring does not show.
    generations: HashMap<NodeId, u64>,
    /// Members (by generation) seen draining: when they go down they left on purpose.
    drained: BTreeSet<(NodeId, u64)>,
}

/// Where this incarnation's publish ids start: its generation (Unix ms) times 2^20.
/// Owners recognise a re-sent forward by (origin, publish id) for as long as the event is
/// in the guild's log, on every node the log travels to; a restarted node counting from 0
/// again would reuse ids of its previous incarnation, and each such publish would be
/// acknowledged with the old event's seq and never delivered. Ids of two incarnations
/// overlap only if the first made 2^20 publishes per millisecond it ran.
fn first_publish_id(generation: u64) -> u64 {
    generation.saturating_mul(1 << 20)
}

impl RouterTask {
    /// A router task for node `me`, delivering to `hub`, following `view`.
    pub fn new(
        me: NodeId,
        hub: HubHandle,
        view: watch::Receiver<Arc<ClusterView>>,
        settings: SessionSettings,
    ) -> Self {
        let ring = view.borrow().ring.clone();
        let ring_version = view.borrow().ring_version();
        let next_publish_id = first_publish_id(view.borrow().generation);
        let was_on_ring = ring
            .as_ref()
            .is_some_and(|r| r.members().iter().any(|m| m.id() == &me));
        // A node that comes up already on a ring with others (it rejoined at once)
        // starts from the ring as it stood without it, like a joining node, so it asks
        // the guilds' previous holders for their logs instead of restarting sequences.
        let before = ring
            .as_ref()
            .filter(|_| was_on_ring)
            .and_then(|r| without(r, view.borrow().ring_config, &me));
        let mut router = ClusterRouter::new(
            me.clone(),
            ClusterConfig::default(),
            before.clone().or_else(|| ring.clone()),
        );
        if before.is_some() {
            router.ring_changed(ring);
        }
        RouterTask {
            router,
            me,
            hub,
            view,
            ring_version,
            down: BTreeSet::new(),
            links: HashMap::new(),
            outbox: HashMap::new(),
            replies: HashMap::new(),
            next_publish_id,
            exported: ClusterCounters::default(),
            replicas: SessionReplicas::new(settings.max_entries),
            settings,
            resumes: HashMap::new(),
            releases: HashMap::new(),
            fetches: HashMap::new(),
            adopts: HashMap::new(),
            adopting: HashMap::new(),
            next_request: 0,
            orphans: VecDeque::new(),
            to_hub: Vec::new(),
            remote_releases: HashMap::new(),
            was_on_ring,
            handoffs: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            generations: HashMap::new(),
            drained: BTreeSet::new(),
        }
    }

    /// How many guild handoffs are under way (updated after every burst of inputs): a
    /// node that just joined is not ready until its guilds' logs arrived.
    pub fn handoff_gauge(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.handoffs.clone()
    }

    /// Starts the task; it ends on `stop` or when every handle is dropped. `subs` is
    /// where the hub reports to it ([`crate::hub::Hub::clustered`]).
    pub fn spawn(
        self,
        subs: mpsc::UnboundedReceiver<HubEvent>,
        stop: CancellationToken,
    ) -> (RouterHandle, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(ROUTER_QUEUE);
        let task = tokio::spawn(self.run(rx, subs, stop));
        (RouterHandle { tx }, task)
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Input>,
        mut subs: mpsc::UnboundedReceiver<HubEvent>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut burst: Vec<Input> = Vec::with_capacity(256);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                n = rx.recv_many(&mut burst, 256) => if n == 0 { break },
                Some(event) = subs.recv() => burst.push(Input::Hub(event)),
                Ok(()) = self.view.changed() => burst.push(Input::ViewChanged),
                _ = tick.tick() => burst.push(Input::Tick),
            }
            // Subscription changes first: a join the hub already applied must reach the
            // router before the events that follow it.
            while let Ok(event) = subs.try_recv() {
                burst.push(Input::Hub(event));
            }
            let mut counters_replies = Vec::new();
            for input in burst.drain(..) {
                if let Input::Counters { reply } = input {
                    counters_replies.push(reply);
                    continue;
                }
                self.handle(input);
                self.drain_outputs().await;
            }
            self.router.flush();
            self.drain_outputs().await;
            self.send_outbox();
            self.export_metrics();
            self.handoffs.store(
                self.router.handoffs_in_progress(),
                std::sync::atomic::Ordering::Relaxed,
            );
            for reply in counters_replies {
                let _ = reply.send(self.router.counters().clone());
            }
        }
        for (_, reply) in self.replies.drain() {
            let _ = reply.send(Err(ClusterPublishError::ShuttingDown));
        }
        for (_, job) in self.resumes.drain() {
            let _ = job.reply.send(Err(RemoteResumeError::ShuttingDown));
        }
        for (_, job) in self.adopts.drain() {
            job.session.lock().invalidated = true;
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Publish {
                guild,
                event_type,
                body,
                reply,
            } => {
                // Draining: take no new publish this node may not live to acknowledge
                // (an ack lost with it would make the publisher send the event again).
                if self.view.borrow().state == NodeState::Draining {
                    let _ = reply.send(Err(ClusterPublishError::ShuttingDown));
                    return;
                }
                self.next_publish_id += 1;
                let id = PublishId(self.next_publish_id);
                match self.router.publish(guild, &event_type, body, id) {
                    Ok(()) => {
                        self.replies.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ClusterPublishError::Refused(e)));
                    }
                }
            }
            Input::PeerFrames { from, frames } => {
                for frame in frames {
                    match frame {
                        PeerFrame::Session(f) => self.session_frame(&from, f),
                        frame => self.router.peer_frame(&from, frame),
                    }
                }
            }
            Input::Hub(event) => self.hub_event(event),
            Input::Resume {
                session,
                user,
                client_seq,
                reply,
            } => self.start_resume(session, user, client_seq, reply),
            Input::Adopt { session, rebuilt } => {
                let id = self.next_request();
                self.adopts.insert(
                    id,
                    AdoptJob {
                        session,
                        rebuilt,
                        waiting: BTreeMap::new(),
                    },
                );
                self.try_adopt(id);
            }
            Input::ViewChanged => self.view_changed(),
            Input::Tick => {
                self.router.resend_stale();
                self.session_tick();
            }
            Input::LinkUp { node, link, tx } => {
                let old = self.links.insert(
                    node.clone(),
                    LinkSlot::Up {
                        link,
                        tx: tx.clone(),
                    },
                );
                tracing::info!(peer = %node, link, "peer link up");
                crate::metrics::peer_link_event("up");
                if let Some(LinkSlot::Waiting(queued)) = old {
                    for batch in queued {
                        if tx.try_send(batch).is_err() {
                            self.drop_link(&node, "full");
                            break;
                        }
                    }
                }
            }
            Input::LinkDown { node, link } => {
                if matches!(self.links.get(&node), Some(LinkSlot::Up { link: l, .. }) if *l == link)
                {
                    self.links.remove(&node);
                    tracing::info!(peer = %node, link, "peer link down");
                    crate::metrics::peer_link_event("down");
                }
            }
            Input::Counters { .. } => {}
        }
    }

    fn view_changed(&mut self) {
        let view = self.view.borrow_and_update().clone();
        // An owner alone on its ring acknowledges only if every other node it knew left
        // by draining: one that went down without draining may be alive on the other
        // side of a partition, owning the same guilds.
        for m in &view.members {
            if m.state == NodeState::Draining {
                self.drained.insert((m.node_id.clone(), m.generation));
            }
        }
        let lost = view.members.iter().any(|m| {
            m.node_id != self.me
                && match m.state {
                    NodeState::Draining => false,
                    NodeState::Down => !self.drained.contains(&(m.node_id.clone(), m.generation)),
                    NodeState::Joining | NodeState::Active => true,
                }
        });
        tracing::debug!(
            require_replica = lost,
            "fencing: another member that did not drain is known"
        );
        self.router.require_replica(lost);
        for m in &view.members {
            if m.node_id == self.me {
                continue;
            }
            // A new generation: it restarted and lost everything it held, even if it
            // came back before the ring changed.
            let before = self.generations.insert(m.node_id.clone(), m.generation);
            if before.is_some_and(|g| g < m.generation) {
                tracing::info!(peer = %m.node_id, "peer restarted: sending it our state again");
                self.router.peer_restarted(&m.node_id);
                self.to_hub.push(HubInput::ReplicaRestarted {
                    node: m.node_id.clone(),
                });
            }
            if m.state == NodeState::Down {
                if self.down.insert(m.node_id.clone()) {
                    self.router.peer_down(&m.node_id);
                    self.links.remove(&m.node_id);
                    self.host_down(&m.node_id);
                }
            } else {
                self.down.remove(&m.node_id);
            }
        }
        let version = view.ring_version();
        if version != self.ring_version {
            self.ring_version = version;
            let on_ring = |ring: &Option<Arc<Ring>>| {
                ring.as_ref()
                    .is_some_and(|r| r.members().iter().any(|m| m.id() == &self.me))
            };
            if on_ring(&view.ring) && !self.was_on_ring {
                // Joining (or rejoining after a restart): the guilds this node takes
                // over were held by the other members. The router asks a guild's
                // previous placement for its log, so first give it the ring as it
                // stood without this node; a router that never saw it would restart
                // those guilds' sequences.
                if let Some(before) = view
                    .ring
                    .as_ref()
                    .and_then(|r| without(r, view.ring_config, &self.me))
                {
                    self.router.ring_changed(Some(before));
                }
            }
            self.was_on_ring = on_ring(&view.ring);
            self.router.ring_changed(view.ring.clone());
        }
    }

    fn hub_event(&mut self, event: HubEvent) {
        match event {
            HubEvent::Subscribe(guild, None) => {
                // An adoption forwarded before this join continues after its cursor: the
                // node must subscribe from there, not from now.
                match self.adopting.remove(&guild) {
                    Some(after) => self.router.local_subscribe_from(guild, after),
                    None => self.router.local_subscribe(guild),
                }
            }
            HubEvent::Subscribe(guild, Some(after)) => {
                self.adopting.remove(&guild);
                self.router.local_subscribe_from(guild, after);
            }
            HubEvent::Unsubscribe(guild) => {
                self.adopting.remove(&guild);
                self.router.local_unsubscribe(guild);
            }
            HubEvent::Ops { to, batch, ops } => {
                crate::metrics::session_ops(ops.len());
                self.send_session(to, SessionFrame::Ops { batch, ops });
            }
            HubEvent::Released {
                request,
                session,
                snapshot,
            } => match self.remote_releases.remove(&request) {
                Some((directory, request)) => self.send_session(
                    directory,
                    SessionFrame::Released {
                        request,
                        session,
                        snapshot,
                    },
                ),
                None => self.released(request, session, snapshot),
            },
        }
    }

    fn send_session(&mut self, to: NodeId, frame: SessionFrame) {
        crate::metrics::peer_frames(FrameKind::Session.as_str(), 1);
        self.outbox
            .entry(to)
            .or_default()
            .push(PeerFrame::Session(frame));
    }

    fn session_frame(&mut self, from: &NodeId, frame: SessionFrame) {
        match frame {
            SessionFrame::Ops { batch, ops } => {
                for op in ops {
                    self.replicas.apply(from, op);
                }
                self.send_session(from.clone(), SessionFrame::OpsAck { batch });
            }
            SessionFrame::OpsAck { batch } => {
                // Sent with the outputs (the hub is awaited there).
                self.to_hub.push(HubInput::ReplicaAck {
                    node: from.clone(),
                    batch,
                });
            }
            SessionFrame::ResumeRequest {
                request,
                session,
                user,
                client_seq,
            } => self.resume_request(from.clone(), request, session, user, client_seq),
            SessionFrame::ResumeAnswer { request, answer } => {
                self.resume_answer(from, request, answer);
            }
            SessionFrame::Release {
                request,
                session,
                user,
                client_seq,
            } => {
                // A directory asks our hub to let a session go; its answer goes back.
                let local = self.next_request();
                self.remote_releases.insert(local, (from.clone(), request));
                self.to_hub.push(HubInput::Release {
                    request: local,
                    session,
                    user,
                    client_seq,
                });
            }
            SessionFrame::Released {
                request,
                session,
                snapshot,
            } => {
                // Only the host we asked may answer.
                let expected = self
                    .releases
                    .get(&request)
                    .is_some_and(|p| &p.host == from && p.session == session);
                if expected {
                    self.released(request, session, snapshot);
                }
            }
        }
    }

    fn next_request(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    fn start_resume(
        &mut self,
        session: SessionId,
        user: UserId,
        client_seq: u64,
        reply: ResumeReply,
    ) {
        let ring = self.view.borrow().ring.clone();
        let candidates: VecDeque<NodeId> = ring
            .map(|r| session_nodes(&r, session))
            .unwrap_or_default()
            .into_iter()
            .filter(|n| !self.down.contains(n))
            .collect();
        let id = self.next_request();
        self.resumes.insert(
            id,
            ResumeJob {
                session,
                user,
                client_seq,
                reply,
                candidates,
                fetching: None,
                asking: None,
                awaiting: BTreeSet::new(),
                ticks: 0,
            },
        );
        self.ask_next(id);
    }

    /// Forwards adoption `id` to the hub if its replay reaches this node's delivery in
    /// every guild; else fetches what is missing first.
    fn try_adopt(&mut self, id: u64) {
        let Some(job) = self.adopts.get(&id) else {
            return;
        };
        let mut short = Vec::new();
        for &(guild, cursor) in &job.rebuilt.cursors {
            let floor = self
                .router
                .delivered_seq(guild)
                .into_iter()
                .chain(self.adopting.get(&guild).copied())
                .max();
            if floor.is_some_and(|f| cursor < f) {
                short.push((guild, cursor));
            }
        }
        if short.is_empty() {
            let Some(job) = self.adopts.remove(&id) else {
                return;
            };
            for &(guild, cursor) in &job.rebuilt.cursors {
                if self.router.delivered_seq(guild).is_none() {
                    self.adopting.entry(guild).or_insert(cursor);
                }
            }
            self.to_hub.push(HubInput::Adopt {
                session: job.session,
                replay: job.rebuilt.replay,
                cursors: job.rebuilt.cursors,
            });
            return;
        }
        for (guild, cursor) in short {
            self.next_request += 1;
            let fetch = FetchId(self.next_request);
            self.fetches.insert(fetch, FetchFor::Adopt(id));
            if let Some(job) = self.adopts.get_mut(&id) {
                job.waiting.insert(fetch, guild);
            }
            self.router.fetch(guild, cursor, fetch);
        }
    }

    fn adopt_fetched(&mut self, id: u64, fetch: FetchId, guild: GuildId, events: &[GuildEvent]) {
        let Some(job) = self.adopts.get_mut(&id) else {
            return;
        };
        job.waiting.remove(&fetch);
        let (intents, passive) = (job.session.intents, job.session.lock().passive.clone());
        let cursor = |job: &AdoptJob| {
            job.rebuilt
                .cursors
                .iter()
                .find(|(g, _)| *g == guild)
                .map(|c| c.1)
        };
        let before = cursor(job);
        let extended = extend(&mut job.rebuilt, intents, &passive, guild, events);
        let after = cursor(job);
        // The owner had nothing past the cursor (it may still be collecting the guild's
        // log): do not ask again in a loop; the session identifies again.
        let stuck = extended.is_ok() && before == after;
        if let Err(e) = extended.as_ref().map_err(|e| e.to_string()).and_then(|()| {
            if stuck {
                Err("the guild's owner has nothing past the session's cursor yet".to_owned())
            } else {
                Ok(())
            }
        }) {
            tracing::warn!(session = %job.session.id, error = %e, "cannot continue a resumed session; it must identify again");
            let mut st = job.session.lock();
            st.invalidated = true;
            if let Some(k) = &st.attachment {
                k.cancel();
            }
            drop(st);
            if let Some(job) = self.adopts.remove(&id) {
                for fetch in job.waiting.keys() {
                    self.fetches.remove(fetch);
                    self.router.cancel_fetch(*fetch);
                }
            }
            return;
        }
        if job.waiting.is_empty() {
            self.try_adopt(id);
        }
    }

    /// Asks the next candidate for the session of resume `id`, or ends it.
    fn ask_next(&mut self, id: u64) {
        let Some(job) = self.resumes.get_mut(&id).filter(|j| j.fetching.is_none()) else {
            return;
        };
        let (session, user, client_seq) = (job.session, job.user, job.client_seq);
        let next = job.candidates.pop_front();
        if let Some(node) = &next {
            job.awaiting.insert(node.clone());
        }
        match next {
            // Nobody left to ask, and nobody asked still owes an answer.
            None if job.awaiting.is_empty() => {
                self.finish_resume(id, Err(RemoteResumeError::Unknown));
            }
            None => job.asking = None,
            Some(node) if node == self.me => {
                let me = self.me.clone();
                self.resume_request(me, id, session, user, client_seq);
            }
            Some(node) => {
                job.asking = Some((node.clone(), 0));
                self.send_session(
                    node,
                    SessionFrame::ResumeRequest {
                        request: id,
                        session,
                        user,
                        client_seq,
                    },
                );
            }
        }
    }

    /// Someone (maybe this node) asks for a session: release it from its live host,
    /// promote our replica, or ask our own hub whether it hosts it.
    fn resume_request(
        &mut self,
        asker: NodeId,
        asker_request: u64,
        session: SessionId,
        user: UserId,
        client_seq: u64,
    ) {
        let rid = self.next_request();
        let host = self
            .replicas
            .host_of(session)
            .filter(|_| self.replicas.user_of(session) == Some(user))
            .cloned();
        let host = match host {
            Some(host) if self.down.contains(&host) => {
                let answer = self.replica_answer(session, client_seq);
                self.answer(asker, asker_request, answer);
                return;
            }
            Some(host) => host,
            // Not replicated here: perhaps hosted here.
            None => {
                self.to_hub.push(HubInput::Release {
                    request: rid,
                    session,
                    user,
                    client_seq,
                });
                self.me.clone()
            }
        };
        if host != self.me {
            self.send_session(
                host.clone(),
                SessionFrame::Release {
                    request: rid,
                    session,
                    user,
                    client_seq,
                },
            );
        }
        self.releases.insert(
            rid,
            PendingRelease {
                asker,
                asker_request,
                session,
                client_seq,
                host,
                ticks: 0,
            },
        );
    }

    /// Our replica of `session` cut at `client_seq`, as a promotion.
    fn replica_answer(
        &self,
        session: SessionId,
        client_seq: u64,
    ) -> Result<(SessionSnapshot, Takeover), ResumeRefusal> {
        self.replicas
            .snapshot(session, client_seq)
            .map(|(_, snap)| (snap, Takeover::Promoted))
            .map_err(ResumeRefusal::from)
    }

    /// The host answered a release (or was given up on: `snapshot` is `None`).
    fn released(
        &mut self,
        request: u64,
        session: SessionId,
        snapshot: Option<Box<SessionSnapshot>>,
    ) {
        let Some(p) = self.releases.remove(&request) else {
            // Not ours: a host answering a directory's Release through this task.
            return;
        };
        let answer = match snapshot {
            Some(snap) => snap
                .cut(p.client_seq)
                .map(|s| (s, Takeover::Migrated))
                .map_err(ResumeRefusal::from),
            None if p.host == self.me || self.replicas.host_of(session).is_none() => {
                Err(ResumeRefusal::Unknown)
            }
            None => self.replica_answer(session, p.client_seq),
        };
        self.answer(p.asker, p.asker_request, answer);
    }

    fn answer(
        &mut self,
        asker: NodeId,
        request: u64,
        answer: Result<(SessionSnapshot, Takeover), ResumeRefusal>,
    ) {
        if asker == self.me {
            let me = self.me.clone();
            self.resume_answer(&me, request, answer);
        } else {
            self.send_session(asker, SessionFrame::ResumeAnswer { request, answer });
        }
    }

    /// Node `from` answered one of our resumes.
    fn resume_answer(
        &mut self,
        from: &NodeId,
        request: u64,
        answer: Result<(SessionSnapshot, Takeover), ResumeRefusal>,
    ) {
        let Some(job) = self.resumes.get_mut(&request) else {
            return; // Late: it timed out.
        };
        if job.fetching.is_some() {
            return; // Answered twice.
        }
        job.awaiting.remove(from);
        if job.asking.as_ref().is_some_and(|(n, _)| n == from) {
            job.asking = None;
        }
        let (snapshot, takeover) = match answer {
            Ok(x) => x,
            Err(ResumeRefusal::Unknown) => return self.ask_next(request),
            Err(e) => return self.finish_resume(request, Err(e.into())),
        };
        let plan = fetch_plan(&snapshot);
        let mut waiting = BTreeSet::new();
        let mut ids = Vec::new();
        for (guild, after) in plan {
            self.next_request += 1;
            let fetch = FetchId(self.next_request);
            waiting.insert(fetch);
            ids.push((guild, after, fetch));
        }
        job.fetching = Some(Fetching {
            snapshot,
            takeover,
            fetched: BTreeMap::new(),
            waiting,
        });
        if ids.is_empty() {
            return self.complete_resume(request);
        }
        for (guild, after, fetch) in ids {
            self.fetches.insert(fetch, FetchFor::Resume(request));
            self.router.fetch(guild, after, fetch);
        }
    }

    fn fetched(&mut self, fetch: FetchId, guild: GuildId, events: Vec<GuildEvent>) {
        let request = match self.fetches.remove(&fetch) {
            None => return,
            Some(FetchFor::Adopt(id)) => return self.adopt_fetched(id, fetch, guild, &events),
            Some(FetchFor::Resume(request)) => request,
        };
        let Some(f) = self
            .resumes
            .get_mut(&request)
            .and_then(|j| j.fetching.as_mut())
        else {
            return;
        };
        f.fetched.insert(guild, events);
        f.waiting.remove(&fetch);
        if f.waiting.is_empty() {
            self.complete_resume(request);
        }
    }

    fn complete_resume(&mut self, request: u64) {
        let Some(f) = self
            .resumes
            .get_mut(&request)
            .and_then(|j| j.fetching.take())
        else {
            return;
        };
        let result = match rebuild(&f.snapshot, &f.fetched) {
            Ok(rebuilt) => Ok(RemoteResume {
                snapshot: f.snapshot,
                rebuilt,
                takeover: f.takeover,
            }),
            Err(e) => Err(RemoteResumeError::Lost(e)),
        };
        self.finish_resume(request, result);
    }

    fn finish_resume(&mut self, request: u64, result: Result<RemoteResume, RemoteResumeError>) {
        let Some(job) = self.resumes.remove(&request) else {
            return;
        };
        if let Some(f) = &job.fetching {
            for fetch in &f.waiting {
                self.fetches.remove(fetch);
                self.router.cancel_fetch(*fetch);
            }
        }
        let _ = job.reply.send(result);
    }

    /// A host went down: releases waiting for it promote, and its replicas are dropped
    /// one resume window from now.
    fn host_down(&mut self, node: &NodeId) {
        let waiting: Vec<(u64, SessionId)> = self
            .releases
            .iter()
            .filter(|(_, p)| &p.host == node)
            .map(|(id, p)| (*id, p.session))
            .collect();
        for (id, session) in waiting {
            self.released(id, session, None);
        }
        // Resumes that asked it: it will not answer.
        let asked: Vec<u64> = self
            .resumes
            .iter_mut()
            .filter_map(|(id, j)| j.awaiting.remove(node).then_some(*id))
            .collect();
        for id in asked {
            self.ask_next(id);
        }
        self.orphans
            .push_back((Instant::now() + self.settings.resume_window, node.clone()));
    }

    fn session_tick(&mut self) {
        let silent: Vec<(u64, SessionId)> = self
            .releases
            .iter_mut()
            .filter_map(|(id, p)| {
                p.ticks += 1;
                (p.ticks > RELEASE_TICKS && p.host != self.me).then_some((*id, p.session))
            })
            .collect();
        for (id, session) in silent {
            tracing::warn!(%session, "session host did not release it in time; promoting its replica");
            self.released(id, session, None);
        }
        let mut late = Vec::new();
        let mut silent = Vec::new();
        for (id, j) in &mut self.resumes {
            j.ticks += 1;
            if j.ticks > RESUME_TICKS {
                late.push(*id);
            } else if let Some((_, asked)) = &mut j.asking {
                *asked += 1;
                if *asked > ASK_TICKS {
                    silent.push(*id);
                }
            }
        }
        for id in late {
            self.finish_resume(id, Err(RemoteResumeError::TimedOut));
        }
        for id in silent {
            self.ask_next(id);
        }
        let now = Instant::now();
        while self.orphans.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, node)) = self.orphans.pop_front()
                && self.down.contains(&node)
            {
                let n = self.replicas.drop_host(&node);
                tracing::info!(host = %node, sessions = n, "dropped the session replicas of a dead host");
            }
        }
        crate::metrics::session_replicas(self.replicas.len());
    }

    async fn drain_outputs(&mut self) {
        while let Some(out) = self.router.poll_output() {
            match out {
                Output::Send { to, frame } => self.outbox.entry(to).or_default().push(frame),
                Output::DeliverLocal { event } => {
                    // Waits if the hub is busy: it never waits on this task, so no cycle.
                    let input = HubInput::DeliverSequenced {
                        guild: event.guild,
                        seq: event.seq.0,
                        event_type: event.event_type.as_ref().into(),
                        body: event.body,
                    };
                    if self.hub.send(input).await.is_err() {
                        tracing::debug!("hub stopped; dropping a local delivery");
                    }
                }
                Output::AckPublisher {
                    publish_id, seq, ..
                } => {
                    if let Some(reply) = self.replies.remove(&publish_id) {
                        let _ = reply.send(Ok(seq.0));
                    }
                }
                Output::RejectPublisher {
                    publish_id, error, ..
                } => {
                    if let Some(reply) = self.replies.remove(&publish_id) {
                        let _ = reply.send(Err(ClusterPublishError::Refused(error)));
                    }
                }
                Output::Resync { guild } => {
                    tracing::warn!(
                        %guild,
                        owned_seq = ?self.router.owned_seq(guild),
                        delivered_seq = ?self.router.delivered_seq(guild),
                        "guild events were lost for this node (resync); invalidating its sessions"
                    );
                    crate::metrics::peer_resync();
                    if self
                        .hub
                        .send(HubInput::InvalidateGuild { guild })
                        .await
                        .is_err()
                    {
                        tracing::debug!("hub stopped; cannot invalidate sessions");
                    }
                }
                Output::Fetched {
                    fetch,
                    guild,
                    events,
                } => self.fetched(fetch, guild, events),
            }
        }
        for input in std::mem::take(&mut self.to_hub) {
            if self.hub.send(input).await.is_err() {
                tracing::debug!("hub stopped; dropping what this task had for it");
                break;
            }
        }
    }

    /// Sends each peer the frames of this flush as one batch.
    fn send_outbox(&mut self) {
        let outbox: Vec<_> = self.outbox.drain().collect();
        for (to, frames) in outbox {
            match self
                .links
                .entry(to.clone())
                .or_insert_with(|| LinkSlot::Waiting(VecDeque::new()))
            {
                LinkSlot::Up { tx, .. } => match tx.try_send(frames) {
                    Ok(()) => {}
                    // A slow peer: drop the link rather than block; the dialer
                    // reconnects and the router repairs the gap.
                    Err(mpsc::error::TrySendError::Full(_)) => self.drop_link(&to, "full"),
                    // The link ended and its LinkDown is on the way.
                    Err(mpsc::error::TrySendError::Closed(_)) => self.drop_link(&to, "closed"),
                },
                LinkSlot::Waiting(queue) => {
                    if self.down.contains(&to) {
                        continue;
                    }
                    if queue.len() < WAITING_BATCHES {
                        queue.push_back(frames);
                    } else {
                        crate::metrics::peer_link_event("waiting_full");
                    }
                }
            }
        }
    }

    fn drop_link(&mut self, node: &NodeId, why: &'static str) {
        tracing::warn!(peer = %node, why, "dropping peer link");
        crate::metrics::peer_link_event(why);
        self.links.remove(node);
    }

    fn export_metrics(&mut self) {
        let now = self.router.counters();
        for kind in FrameKind::ALL {
            let d = now.sent(kind) - self.exported.sent(kind);
            if d > 0 {
                crate::metrics::peer_frames(kind.as_str(), d);
            }
        }
        if now.fresh_sequences > self.exported.fresh_sequences
            || now.handoff_timeouts > self.exported.handoff_timeouts
        {
            tracing::warn!(
                fresh_sequences = now.fresh_sequences - self.exported.fresh_sequences,
                handoff_timeouts = now.handoff_timeouts - self.exported.handoff_timeouts,
                "took over guilds without their whole log; subscribers ahead resync"
            );
        }
        crate::metrics::peer_router_counters(&self.exported, now);
        self.exported = now.clone();
    }
}

/// `ring` without `me`: what the other members had before `me` joined (`None` if no one
/// else is on it).
fn without(ring: &Ring, config: concord_ring::RingConfig, me: &NodeId) -> Option<Arc<Ring>> {
    let others: Vec<NodeId> = ring
        .members()
        .iter()
        .map(|m| m.id().clone())
        .filter(|id| id != me)
        .collect();
    build_ring(config, others)
}

#[cfg(test)]
mod tests {
    use super::first_publish_id;

    #[test]
    fn a_restarted_node_never_reuses_a_publish_id() {
        // Generations are Unix milliseconds. An incarnation that ran an hour at 100,000
        // publishes a second used 3.6e8 ids; the next one starts 3.6e6 x 2^20 further on.
        let first = 1_796_420_546_223_u64;
        let lived_ms = 3_600_000;
        let used = first_publish_id(first) + 100 * lived_ms;
        assert!(used < first_publish_id(first + lived_ms));
        // Even a restart 1 ms later leaves 2^20 ids of room.
        assert_eq!(
            first_publish_id(first + 1) - first_publish_id(first),
            1 << 20
        );
        // And u64 holds generations for centuries: 2^64 / 2^20 ms is about 557 years.
        assert!(first_publish_id(first * 9) < u64::MAX);
    }
}
