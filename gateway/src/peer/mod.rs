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
//! channel is unbounded on purpose: the router task waits on the hub to deliver, so the
//! hub must never wait on the router; it carries one message per transition.
//!
//! ## What is clustered and what is not (yet)
//! Guild events published over HTTP or gRPC go through the owner. User events, guild
//! membership changes and stored guild objects stay local to the node they were sent to.

pub mod auth;
pub mod link;
pub mod wire;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use concord_protocol::GuildId;
use concord_ring::Ring;
use concord_ring::RingVersion;
use concord_router::cluster::{
    ClusterConfig, ClusterCounters, ClusterRouter, FrameKind, NodeId, Output, PeerFrame,
    PublishError, PublishId,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterView, NodeState};
use crate::hub::{HubHandle, HubInput};

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

/// A change of this node's local subscriptions, from the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionChange {
    /// The first local session joined the guild.
    Subscribe(GuildId),
    /// The last local session left the guild.
    Unsubscribe(GuildId),
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
    /// The first local session joined a guild.
    LocalSubscribe(GuildId),
    /// The last local session left a guild.
    LocalUnsubscribe(GuildId),
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
}

impl RouterTask {
    /// A router task for node `me`, delivering to `hub`, following `view`.
    pub fn new(me: NodeId, hub: HubHandle, view: watch::Receiver<Arc<ClusterView>>) -> Self {
        let ring = view.borrow().ring.clone();
        let ring_version = view.borrow().ring_version();
        RouterTask {
            router: ClusterRouter::new(me.clone(), ClusterConfig::default(), ring),
            me,
            hub,
            view,
            ring_version,
            down: BTreeSet::new(),
            links: HashMap::new(),
            outbox: HashMap::new(),
            replies: HashMap::new(),
            next_publish_id: 0,
            exported: ClusterCounters::default(),
        }
    }

    /// Starts the task; it ends on `stop` or when every handle is dropped. `subs` is
    /// where the hub reports subscription changes ([`crate::hub::Hub::with_subscriptions`]).
    pub fn spawn(
        self,
        subs: mpsc::UnboundedReceiver<SubscriptionChange>,
        stop: CancellationToken,
    ) -> (RouterHandle, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(ROUTER_QUEUE);
        let task = tokio::spawn(self.run(rx, subs, stop));
        (RouterHandle { tx }, task)
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Input>,
        mut subs: mpsc::UnboundedReceiver<SubscriptionChange>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut burst: Vec<Input> = Vec::with_capacity(256);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                n = rx.recv_many(&mut burst, 256) => if n == 0 { break },
                Some(change) = subs.recv() => burst.push(change.into()),
                Ok(()) = self.view.changed() => burst.push(Input::ViewChanged),
                _ = tick.tick() => burst.push(Input::Tick),
            }
            // Subscription changes first: a join the hub already applied must reach the
            // router before the events that follow it.
            while let Ok(change) = subs.try_recv() {
                burst.push(change.into());
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
            for reply in counters_replies {
                let _ = reply.send(self.router.counters().clone());
            }
        }
        for (_, reply) in self.replies.drain() {
            let _ = reply.send(Err(ClusterPublishError::ShuttingDown));
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
                    self.router.peer_frame(&from, frame);
                }
            }
            Input::LocalSubscribe(guild) => self.router.local_subscribe(guild),
            Input::LocalUnsubscribe(guild) => self.router.local_unsubscribe(guild),
            Input::ViewChanged => self.view_changed(),
            Input::Tick => self.router.resend_stale(),
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
        for m in &view.members {
            if m.node_id == self.me {
                continue;
            }
            if m.state == NodeState::Down {
                if self.down.insert(m.node_id.clone()) {
                    self.router.peer_down(&m.node_id);
                    self.links.remove(&m.node_id);
                }
            } else {
                self.down.remove(&m.node_id);
            }
        }
        let version = view.ring_version();
        if version != self.ring_version {
            self.ring_version = version;
            self.router.ring_changed(view.ring.clone());
        }
    }

    async fn drain_outputs(&mut self) {
        while let Some(out) = self.router.poll_output() {
            match out {
                Output::Send { to, frame } => self.outbox.entry(to).or_default().push(frame),
                Output::DeliverLocal { event } => {
                    // Waits if the hub is busy: it never waits on this task, so no cycle.
                    let input = HubInput::DeliverSequenced {
                        guild: event.guild,
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
        crate::metrics::peer_router_counters(&self.exported, now);
        self.exported = now.clone();
    }
}

impl From<SubscriptionChange> for Input {
    fn from(c: SubscriptionChange) -> Input {
        match c {
            SubscriptionChange::Subscribe(g) => Input::LocalSubscribe(g),
            SubscriptionChange::Unsubscribe(g) => Input::LocalUnsubscribe(g),
        }
    }
}
