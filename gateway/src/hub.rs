//! The hub: the one task that owns this node's [`TopicTable`].
//!
//! Publishes, joins, leaves and membership changes arrive as [`HubInput`] over a bounded
//! channel and are applied in order, so a session's GUILD_CREATE always precedes the
//! guild's events, and every subscriber of a topic sees its events in topic order. Each
//! published event is serialised once; the hub pushes the same `Arc` into every
//! subscribed session's log and wakes its connection, which does the writing. The hub is
//! the only one that assigns a session's `s`.
//!
//! On a clustered node, guild events arrive already sequenced by the guild's owner
//! ([`HubInput::DeliverSequenced`], from the router task, in guild order; their topic seq
//! is the guild seq), and the hub tells that task, as [`HubEvent`]s:
//! - each guild's local subscriber count going 0 -> 1 and 1 -> 0, so the node subscribes
//!   to the owner once, not once per session;
//! - with session replication on, the replication stream: every change it makes to a
//!   session, as `concord_router::continuity` [`SessionOp`]s for the session's replica
//!   node, one batch per replica node per burst of inputs. Deliveries are node-level (one
//!   op per event per replica node, never one per session). With `sync` replication a
//!   session's log is gated: a dispatch is written only after the replica acknowledged
//!   the batch that assigned its `s` ([`HubInput::ReplicaAck`]);
//! - sessions it let go for another node ([`HubInput::Release`]).
//!
//! The hub owns these types; the router task (`crate::peer`) uses them, never the
//! other way round.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use concord_protocol::{GuildId, Seq, SessionId, UserId};
use concord_ring::{Ring, RingVersion};
use concord_router::cluster::{GuildSeq, NodeId};
use concord_router::continuity::{ReplayItem, SessionOp, SessionSnapshot};
use concord_router::{Event, Subscriber, Topic, TopicTable};
use tokio::sync::{mpsc, oneshot, watch};

use crate::cluster::ClusterView;
use crate::config::SessionReplication;
use crate::metrics::Metrics;
use crate::session::{Delivered, Registry, SessionRef, snapshot_of};

/// How many inputs may wait for the hub before callers are slowed down.
pub const HUB_QUEUE: usize = 8192;

/// A request to the hub.
#[derive(Debug)]
pub enum HubInput {
    /// Sequence an event on a topic and deliver it; the reply is its topic seq.
    Publish {
        /// Where it goes.
        topic: Topic,
        /// `t`.
        event_type: Box<str>,
        /// `d`, serialised JSON.
        body: Bytes,
        /// When the API accepted it.
        accepted_at: Instant,
        /// Gets the topic seq.
        reply: oneshot::Sender<u64>,
    },
    /// A new session: send READY, subscribe it to its user topic and guilds (GUILD_CREATE
    /// for each first), and start replicating it.
    Join {
        /// The session (nothing pushed yet).
        session: SessionRef,
        /// READY's `d`.
        ready: Bytes,
        /// Its guilds.
        guilds: Vec<GuildId>,
    },
    /// A session resumed here from another node: replay what it missed, subscribe it
    /// where it left off, send RESUMED, and replicate it from here on.
    Adopt {
        /// The session, its log continuing after the client's seq, passive guilds set.
        session: SessionRef,
        /// What the client must get first, in order.
        replay: Vec<ReplayItem>,
        /// Its guilds, each with the guild seq live delivery continues after.
        cursors: Vec<(GuildId, GuildSeq)>,
    },
    /// Unsubscribe an ended session from everything.
    Leave {
        /// The session.
        session: SessionRef,
    },
    /// A session-only dispatch for one session (RESUMED, GUILD_MEMBERS_CHUNK).
    Push {
        /// The session.
        session: SessionRef,
        /// `t`.
        event_type: &'static str,
        /// `d`.
        body: Bytes,
    },
    /// Op 40: mark a guild of a session active or passive.
    SetPassive {
        /// The session.
        session: SessionRef,
        /// The guild (ignored if the session is not in it).
        guild: GuildId,
        /// Passive (`true`) or active.
        passive: bool,
    },
    /// Subscribe the user's live sessions to a guild and send them GUILD_CREATE; the
    /// reply is how many sessions joined.
    AddMember {
        /// The guild.
        guild: GuildId,
        /// The user.
        user: UserId,
        /// Gets the count.
        reply: oneshot::Sender<usize>,
    },
    /// Unsubscribe the user's live sessions from a guild and send them GUILD_DELETE.
    RemoveMember {
        /// The guild.
        guild: GuildId,
        /// The user.
        user: UserId,
        /// Gets the count.
        reply: oneshot::Sender<usize>,
    },
    /// Deliver a guild event the guild's owner already sequenced (clustered mode). The
    /// cluster router hands these over in guild order, each once; the hub delivers them
    /// in the order given and does not sequence guild events of its own in that mode.
    DeliverSequenced {
        /// The guild.
        guild: GuildId,
        /// Its guild seq.
        seq: u64,
        /// `t`.
        event_type: Box<str>,
        /// `d`, serialised JSON.
        body: Bytes,
    },
    /// This node lost events of `guild` (the owner's log no longer reached back to what it
    /// had delivered): invalidate every local session in it, so each gets op 9 and
    /// identifies again instead of silently missing events.
    InvalidateGuild {
        /// The guild.
        guild: GuildId,
    },
    /// Store the guild object GUILD_CREATE carries.
    StoreGuild {
        /// The guild.
        guild: GuildId,
        /// A JSON object.
        object: Bytes,
    },
    /// Another node asks for a session hosted here (its client resumed there): if it is
    /// here and belongs to `user`, end it here and answer [`HubEvent::Released`] with its
    /// state; else answer with none.
    Release {
        /// The asker's id, given back.
        request: u64,
        /// The session.
        session: SessionId,
        /// The user the resuming client's token names.
        user: UserId,
        /// The client's last `s`: the state sent starts there (all of it if the log
        /// does not reach back so far).
        client_seq: u64,
    },
    /// Node `node` restarted: the session replicas it held are gone; open them again.
    ReplicaRestarted {
        /// The node.
        node: NodeId,
    },
    /// Replica node `node` applied every op batch up to `batch`.
    ReplicaAck {
        /// The replica node.
        node: NodeId,
        /// The batch.
        batch: u64,
    },
}

/// What the hub tells the cluster router task (clustered mode), in order.
#[derive(Debug, Clone, PartialEq)]
pub enum HubEvent {
    /// The first local session joined the guild; subscribe from now (`None`) or after a
    /// guild seq (a session resumed from another node continues there).
    Subscribe(GuildId, Option<GuildSeq>),
    /// The last local session left the guild.
    Unsubscribe(GuildId),
    /// Replication ops for one replica node: send them as one frame.
    Ops {
        /// The replica node.
        to: NodeId,
        /// The batch number (per replica node, increasing).
        batch: u64,
        /// The ops, in order.
        ops: Vec<SessionOp>,
    },
    /// Answer to [`HubInput::Release`]; comes after the ops the release made.
    Released {
        /// The asker's id.
        request: u64,
        /// The session.
        session: SessionId,
        /// Its final state, if it was here.
        snapshot: Option<Box<SessionSnapshot>>,
    },
}

/// The hub stopped (the node is shutting down). Nothing was applied; permanent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the node is shutting down")]
pub struct HubClosed;

/// A cheap handle to send inputs to the hub.
#[derive(Clone, Debug)]
pub struct HubHandle {
    tx: mpsc::Sender<HubInput>,
}

impl HubHandle {
    /// Publishes an event; returns its topic seq.
    pub async fn publish(
        &self,
        topic: Topic,
        event_type: &str,
        body: Bytes,
    ) -> Result<u64, HubClosed> {
        let (reply, rx) = oneshot::channel();
        self.send(HubInput::Publish {
            topic,
            event_type: event_type.into(),
            body,
            accepted_at: Instant::now(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| HubClosed)
    }

    /// Sends an input without waiting for a reply.
    pub async fn send(&self, input: HubInput) -> Result<(), HubClosed> {
        self.tx.send(input).await.map_err(|_| HubClosed)
    }

    /// Changes a user's membership of a guild; returns how many live sessions changed.
    pub async fn set_member(
        &self,
        guild: GuildId,
        user: UserId,
        member: bool,
    ) -> Result<usize, HubClosed> {
        let (reply, rx) = oneshot::channel();
        let input = if member {
            HubInput::AddMember { guild, user, reply }
        } else {
            HubInput::RemoveMember { guild, user, reply }
        };
        self.send(input).await?;
        rx.await.map_err(|_| HubClosed)
    }
}

/// The nodes that may hold a session's replica, in the order a resume asks them: the
/// preference list of the session's partition.
pub fn session_nodes(ring: &Ring, session: SessionId) -> Vec<NodeId> {
    ring.preference_list(ring.partition_for_session(&session.0.to_be_bytes()))
        .iter()
        .cloned()
        .collect()
}

/// Where a session hosted on `me` is replicated: the first node of its partition's
/// preference list that is not `me` (none on a ring of one).
pub fn replica_node(ring: &Ring, me: &NodeId, session: SessionId) -> Option<NodeId> {
    session_nodes(ring, session).into_iter().find(|n| n != me)
}

/// What the hub needs for session continuity on a clustered node.
#[derive(Debug)]
pub struct Continuity {
    /// `sync`, `async` or `off`.
    pub mode: SessionReplication,
    /// This node.
    pub me: NodeId,
    /// The ring, for where each session is replicated.
    pub view: watch::Receiver<Arc<ClusterView>>,
    /// Every local session, for releases and for moving replicas when the ring changes.
    pub registry: Arc<Registry>,
}

/// Sessions, each with the `s` its writes wait for.
type Waiters = Vec<(SessionRef, Seq)>;

/// The replication stream's state.
#[derive(Debug)]
struct Replication {
    mode: SessionReplication,
    me: NodeId,
    view: watch::Receiver<Arc<ClusterView>>,
    ring_version: Option<RingVersion>,
    registry: Arc<Registry>,
    /// How many local sessions each node replicates: every one of them hears of each
    /// event (node-level, no body for guilds) and ignores what none of its sessions wants.
    nodes: BTreeMap<NodeId, usize>,
    /// Ops of this burst, per replica node.
    outbox: BTreeMap<NodeId, Vec<SessionOp>>,
    /// The last batch number sent to each node.
    batches: BTreeMap<NodeId, u64>,
    /// `sync`: sessions (with the `s` pushed) whose writes wait for this burst's batch.
    touched: BTreeMap<NodeId, Waiters>,
    /// `sync`: batches sent and not acknowledged, per node, oldest first.
    waiting: BTreeMap<NodeId, VecDeque<(u64, Waiters)>>,
}

impl Replication {
    fn sync(&self) -> bool {
        self.mode == SessionReplication::Sync
    }

    fn ring(&self) -> Option<Arc<Ring>> {
        self.view.borrow().ring.clone()
    }

    fn send(&mut self, node: &NodeId, op: SessionOp) {
        self.outbox.entry(node.clone()).or_default().push(op);
    }

    /// `session` waits for `node`'s acknowledgement of this burst before writing `seq`.
    fn wait(&mut self, node: &NodeId, session: &SessionRef, seq: Seq) {
        if self.sync() {
            self.touched
                .entry(node.clone())
                .or_default()
                .push((session.clone(), seq));
        }
    }

    fn count(&mut self, node: &NodeId, delta: isize) {
        let n = self.nodes.entry(node.clone()).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.nodes.remove(node);
        }
    }
}

/// The hub's state.
#[derive(Debug)]
pub struct Hub {
    table: TopicTable<SessionRef>,
    guild_objects: HashMap<GuildId, Bytes>,
    queue_limit: u64,
    metrics: Metrics,
    /// Clustered mode: where [`HubEvent`]s go. Unbounded because the router task waits
    /// on the hub; bounded in practice by the hub's own input queue (a few events per
    /// input).
    events: Option<mpsc::UnboundedSender<HubEvent>>,
    /// Clustered mode: session continuity.
    replication: Option<Replication>,
    /// Events that must follow this burst's ops.
    after_flush: Vec<HubEvent>,
}

impl Hub {
    /// A hub whose topic logs keep `log_events` events and whose sessions may queue
    /// `queue_limit` unwritten dispatches.
    pub fn new(log_events: usize, queue_limit: u64, metrics: Metrics) -> Hub {
        Hub {
            table: TopicTable::new(log_events),
            guild_objects: HashMap::new(),
            queue_limit,
            metrics,
            events: None,
            replication: None,
            after_flush: Vec::new(),
        }
    }

    /// Clustered mode: reports [`HubEvent`]s on `tx`, and replicates sessions as
    /// `continuity` says.
    #[must_use]
    pub fn clustered(mut self, tx: mpsc::UnboundedSender<HubEvent>, continuity: Continuity) -> Hub {
        self.events = Some(tx);
        let ring_version = continuity.view.borrow().ring_version();
        self.replication = Some(Replication {
            mode: continuity.mode,
            me: continuity.me,
            view: continuity.view,
            ring_version,
            registry: continuity.registry,
            nodes: BTreeMap::new(),
            outbox: BTreeMap::new(),
            batches: BTreeMap::new(),
            touched: BTreeMap::new(),
            waiting: BTreeMap::new(),
        });
        self
    }

    /// Starts the hub task; it ends when every handle is dropped.
    pub fn spawn(self) -> (HubHandle, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(HUB_QUEUE);
        (HubHandle { tx }, tokio::spawn(self.run(rx)))
    }

    async fn run(mut self, mut rx: mpsc::Receiver<HubInput>) {
        let mut batch = Vec::with_capacity(256);
        let mut view = self.replication.as_ref().map(|r| r.view.clone());
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, 256) => if n == 0 { break },
                Ok(()) = async {
                    match &mut view {
                        Some(v) => v.changed().await,
                        None => std::future::pending().await,
                    }
                } => self.ring_changed(),
            }
            let now = Instant::now();
            for input in batch.drain(..) {
                self.handle(input, now);
            }
            self.flush();
        }
    }

    /// Sends this burst's replication ops (one batch per replica node) and the events
    /// that follow them. The task calls it after each burst of inputs.
    pub fn flush(&mut self) {
        if let Some(r) = &mut self.replication {
            for (node, ops) in std::mem::take(&mut r.outbox) {
                if ops.is_empty() {
                    continue;
                }
                let batch = r.batches.entry(node.clone()).or_default();
                *batch += 1;
                let batch = *batch;
                if let Some(touched) = r.touched.remove(&node) {
                    r.waiting
                        .entry(node.clone())
                        .or_default()
                        .push_back((batch, touched));
                }
                if let Some(tx) = &self.events {
                    let _ = tx.send(HubEvent::Ops {
                        to: node,
                        batch,
                        ops,
                    });
                }
            }
            r.touched.clear();
        }
        for event in self.after_flush.drain(..) {
            if let Some(tx) = &self.events {
                let _ = tx.send(event);
            }
        }
    }

    /// Applies one input.
    pub fn handle(&mut self, input: HubInput, now: Instant) {
        match input {
            HubInput::Publish {
                topic,
                event_type,
                body,
                accepted_at,
                reply,
            } => {
                let seq = self.publish(topic, None, &event_type, body, accepted_at);
                let _ = reply.send(seq);
            }
            HubInput::Join {
                session,
                ready,
                guilds,
            } => {
                self.table
                    .subscribe(Topic::User(session.user), session.clone());
                self.open(&session);
                self.replicate_open(&session);
                self.push(&session, "READY", ready, now);
                for guild in guilds {
                    self.join_guild(&session, guild, now);
                }
            }
            HubInput::Adopt {
                session,
                replay,
                cursors,
            } => self.adopt(&session, replay, cursors, now),
            HubInput::Leave { session } => {
                self.leave_all(&session);
                self.close(&session);
            }
            HubInput::Push {
                session,
                event_type,
                body,
            } => self.push(&session, event_type, body, now),
            HubInput::SetPassive {
                session,
                guild,
                passive,
            } => {
                let changed = {
                    let mut st = session.lock();
                    let was = st.passive.contains(&guild);
                    st.passive.retain(|g| *g != guild);
                    if passive && st.in_guild(guild) {
                        st.passive.push(guild);
                    }
                    was != st.passive.contains(&guild)
                };
                if changed {
                    self.replicate(
                        &session,
                        SessionOp::Passive {
                            session: session.id,
                            guild,
                            passive,
                        },
                    );
                }
            }
            HubInput::AddMember { guild, user, reply } => {
                let sessions = self.table.subscribers(Topic::User(user)).to_vec();
                let joined = sessions
                    .iter()
                    .filter(|s| self.join_guild(s, guild, now))
                    .count();
                let _ = reply.send(joined);
            }
            HubInput::RemoveMember { guild, user, reply } => {
                let sessions = self.table.subscribers(Topic::User(user)).to_vec();
                let mut left = 0;
                for s in sessions {
                    if self.leave_guild(&s, guild) {
                        left += 1;
                        let body = format!(r#"{{"id":"{guild}"}}"#);
                        self.push(&s, "GUILD_DELETE", body.into(), now);
                    }
                }
                let _ = reply.send(left);
            }
            HubInput::DeliverSequenced {
                guild,
                seq,
                event_type,
                body,
            } => {
                self.publish(Topic::Guild(guild), Some(seq), &event_type, body, now);
            }
            HubInput::StoreGuild { guild, object } => {
                self.guild_objects.insert(guild, object);
            }
            HubInput::InvalidateGuild { guild } => {
                for session in self.table.subscribers(Topic::Guild(guild)) {
                    let mut st = session.lock();
                    st.invalidated = true;
                    // The connection sees the cancel and sends op 9 (see `conn::let_go`).
                    if let Some(attachment) = &st.attachment {
                        attachment.cancel();
                    }
                }
            }
            HubInput::Release {
                request,
                session,
                user,
                client_seq,
            } => self.release(request, session, user, client_seq),
            HubInput::ReplicaAck { node, batch } => self.replica_ack(&node, batch),
            HubInput::ReplicaRestarted { node } => self.replica_restarted(&node),
        }
    }

    fn publish(
        &mut self,
        topic: Topic,
        seq: Option<u64>,
        event_type: &str,
        body: Bytes,
        now: Instant,
    ) -> u64 {
        self.metrics.events_published.increment(1);
        let Hub {
            table,
            queue_limit,
            metrics,
            replication,
            ..
        } = self;
        let delivery = match seq {
            Some(seq) => table.publish_sequenced(topic, seq, event_type, body, now),
            None => table.publish(topic, event_type, body, now),
        };
        let mut replication = replication
            .as_mut()
            .filter(|r| r.mode != SessionReplication::Off);
        for session in delivery.subscribers {
            let outcome = session.deliver_with(&delivery.event, *queue_limit, |st, seq| {
                if let (Some(r), Some(node)) = (replication.as_deref_mut(), &st.replica) {
                    r.wait(node, session, seq);
                }
            });
            if outcome == Delivered::Overflowed {
                metrics.queue_overflows.increment(1);
            }
        }
        if let Some(r) = replication
            && !delivery.subscribers.is_empty()
        {
            // Node-level: each replica node applies it to its sessions from here.
            let event = &delivery.event;
            let op = SessionOp::Deliver {
                topic,
                seq: event.topic_seq,
                event_type: event.event_type.as_ref().into(),
                body: matches!(topic, Topic::User(_)).then(|| event.body.clone()),
            };
            for node in r.nodes.keys() {
                r.outbox.entry(node.clone()).or_default().push(op.clone());
            }
        }
        delivery.event.topic_seq
    }

    /// Pushes a session-only event and replicates it.
    fn push(&mut self, session: &SessionRef, event_type: &str, body: Bytes, now: Instant) {
        let seq = session.push(Event::session_only(event_type, body.clone(), now));
        let node = session.lock().replica.clone();
        if let (Some(r), Some(node)) = (&mut self.replication, node) {
            r.send(
                &node,
                SessionOp::Push {
                    session: session.id,
                    event_type: event_type.into(),
                    body,
                },
            );
            r.wait(&node, session, seq);
        }
    }

    /// Sends `op` to the session's replica node, if it has one.
    fn replicate(&mut self, session: &SessionRef, op: SessionOp) {
        let node = session.lock().replica.clone();
        if let (Some(r), Some(node)) = (&mut self.replication, node) {
            r.send(&node, op);
        }
    }

    /// Picks the session's replica node and, with `sync`, gates its writes from here.
    /// Call [`Hub::replicate_open`] once its first events are pushed.
    fn open(&mut self, session: &SessionRef) {
        let Some(r) = self
            .replication
            .as_mut()
            .filter(|r| r.mode != SessionReplication::Off)
        else {
            return;
        };
        let node = r
            .ring()
            .and_then(|ring| replica_node(&ring, &r.me, session.id));
        let mut st = session.lock();
        if node.is_some() && r.sync() {
            st.log.gate_on_replication();
        }
        if let Some(node) = &node {
            r.count(node, 1);
        }
        st.replica = node;
    }

    /// Sends the session's whole state to its replica node (which replaces what it had).
    fn replicate_open(&mut self, session: &SessionRef) {
        let Some(r) = &mut self.replication else {
            return;
        };
        let (node, snapshot, last) = {
            let st = session.lock();
            let Some(node) = st.replica.clone() else {
                return;
            };
            let Ok(snapshot) = snapshot_of(session.identity(), &st, None) else {
                return;
            };
            (node, snapshot, st.log.last_seq())
        };
        r.send(&node, SessionOp::Open(Box::new(snapshot)));
        r.wait(&node, session, last);
    }

    /// The session is over here: its replica node drops it.
    fn close(&mut self, session: &SessionRef) {
        let node = session.lock().replica.take();
        if let (Some(r), Some(node)) = (&mut self.replication, node) {
            r.count(&node, -1);
            r.send(
                &node,
                SessionOp::End {
                    session: session.id,
                },
            );
        }
    }

    fn adopt(
        &mut self,
        session: &SessionRef,
        replay: Vec<ReplayItem>,
        cursors: Vec<(GuildId, GuildSeq)>,
        now: Instant,
    ) {
        self.table
            .subscribe(Topic::User(session.user), session.clone());
        self.open(session);
        for item in replay {
            let event = match item.guild {
                Some(g) => Event::replayed(
                    Topic::Guild(g),
                    item.seq.0,
                    &item.event_type,
                    item.body,
                    now,
                ),
                None => Event::session_only(&item.event_type, item.body, now),
            };
            session.push(event);
        }
        for (guild, cursor) in cursors {
            session.lock().guilds.push((guild, cursor.0));
            let topic = Topic::Guild(guild);
            if !self.table.subscribe(topic, session.clone()) {
                continue;
            }
            if self.table.subscribers(topic).len() == 1 {
                // The node was not subscribed: the owner sends what follows the cursor.
                self.report(HubEvent::Subscribe(guild, Some(cursor)));
            } else if self.table.seq(topic) > cursor.0 {
                // This node is ahead of the cursor: catch up from the topic log.
                match self.table.log_since(topic, cursor.0) {
                    Some(events) => {
                        for event in events {
                            session.deliver(&event, self.queue_limit);
                        }
                    }
                    None => session.lock().invalidated = true,
                }
            }
        }
        self.replicate_open(session);
        self.push(session, "RESUMED", Bytes::from_static(b"{}"), now);
    }

    fn release(&mut self, request: u64, id: SessionId, user: UserId, client_seq: u64) {
        let session = self
            .replication
            .as_ref()
            .and_then(|r| r.registry.find(id))
            .filter(|s| s.user == user);
        let snapshot = session.as_ref().and_then(|session| {
            let mut st = session.lock();
            if st.ended || st.invalidated {
                return None;
            }
            st.ended = true;
            // The connection, if any, leaves quietly: the client is elsewhere.
            if let Some(k) = st.attachment.take() {
                k.cancel();
            }
            snapshot_of(session.identity(), &st, Some(Seq(client_seq)))
                .or_else(|_| snapshot_of(session.identity(), &st, None))
                .ok()
        });
        if let (Some(session), Some(_)) = (&session, &snapshot) {
            if let Some(r) = &self.replication {
                r.registry.remove(id);
            }
            self.metrics.sessions.decrement(1);
            self.leave_all(session);
            self.close(session);
        }
        tracing::debug!(session = %id, found = session.is_some(), released = snapshot.is_some(), "release asked");
        self.after_flush.push(HubEvent::Released {
            request,
            session: id,
            snapshot: snapshot.map(Box::new),
        });
    }

    fn replica_ack(&mut self, node: &NodeId, batch: u64) {
        let Some(r) = &mut self.replication else {
            return;
        };
        let Some(queue) = r.waiting.get_mut(node) else {
            return;
        };
        while queue.front().is_some_and(|(b, _)| *b <= batch) {
            let Some((_, sessions)) = queue.pop_front() else {
                break;
            };
            for (session, seq) in sessions {
                {
                    let mut st = session.lock();
                    // A session whose replica moved waits for its new node instead.
                    if st.replica.as_ref() != Some(node) {
                        continue;
                    }
                    st.log.mark_replicated(seq);
                }
                session.wake.notify_one();
            }
        }
    }

    /// `node` restarted: every session replicated there is opened again (with `sync`,
    /// writes wait for the new incarnation's ack; the old one's never comes).
    fn replica_restarted(&mut self, node: &NodeId) {
        let Some(r) = &mut self.replication else {
            return;
        };
        r.waiting.remove(node);
        let sessions: Vec<SessionRef> = r
            .registry
            .all()
            .into_iter()
            .filter(|s| s.lock().replica.as_ref() == Some(node))
            .collect();
        if !sessions.is_empty() {
            tracing::info!(peer = %node, sessions = sessions.len(), "replica node restarted: opening its session replicas again");
        }
        for session in sessions {
            self.replicate_open(&session);
        }
    }

    /// The ring changed: sessions whose replica node moved are opened on the new one
    /// (and ended on the old), so replicas follow the ring; with `sync`, their writes
    /// wait for the new node.
    fn ring_changed(&mut self) {
        let Some(r) = &mut self.replication else {
            return;
        };
        let version = r.view.borrow().ring_version();
        if version == r.ring_version || r.mode == SessionReplication::Off {
            r.ring_version = version;
            return;
        }
        r.ring_version = version;
        let ring = r.ring();
        // Off the ring ourselves (draining): our sessions are about to move to other
        // hosts, which replicate them anew; moving their replicas now would only ship
        // every session's whole state across the cluster for nothing.
        let on_ring = ring
            .as_ref()
            .is_some_and(|ring| ring.members().iter().any(|m| m.id() == &r.me));
        if !on_ring {
            return;
        }
        let sessions = r.registry.all();
        let mut moved = Vec::new();
        for session in sessions {
            let new = ring
                .as_ref()
                .and_then(|ring| replica_node(ring, &r.me, session.id));
            let mut st = session.lock();
            if st.ended || st.replica == new {
                continue;
            }
            let old = std::mem::replace(&mut st.replica, new.clone());
            if let Some(old) = &old {
                r.count(old, -1);
                r.send(
                    old,
                    SessionOp::End {
                        session: session.id,
                    },
                );
            }
            match &new {
                Some(new) => {
                    r.count(new, 1);
                    if old.is_none() && r.sync() {
                        st.log.gate_on_replication();
                    }
                    drop(st);
                    moved.push(session);
                }
                None => {
                    // Nowhere to replicate: nothing to wait for.
                    let last = st.log.last_seq();
                    st.log.mark_replicated(last);
                    drop(st);
                    session.wake.notify_one();
                }
            }
        }
        let live: Vec<NodeId> = r.nodes.keys().cloned().collect();
        r.waiting.retain(|n, _| live.contains(n));
        if !moved.is_empty() {
            tracing::info!(
                sessions = moved.len(),
                "ring changed: moving session replicas"
            );
        }
        for session in moved {
            self.replicate_open(&session);
        }
    }

    /// Sends GUILD_CREATE, then subscribes; returns false if already subscribed.
    fn join_guild(&mut self, session: &SessionRef, guild: GuildId, now: Instant) -> bool {
        let topic = Topic::Guild(guild);
        if self.table.is_subscribed(topic, session.key()) {
            return false;
        }
        // One body per guild, shared by every session's GUILD_CREATE.
        let body = self
            .guild_objects
            .entry(guild)
            .or_insert_with(|| minimal_guild(guild))
            .clone();
        self.push(session, "GUILD_CREATE", body, now);
        // The session is offered what this node delivers from now on.
        let after = self.table.seq(topic);
        session.lock().guilds.push((guild, after));
        self.replicate(
            session,
            SessionOp::Join {
                session: session.id,
                guild,
                after: GuildSeq(after),
            },
        );
        let joined = self.table.subscribe(topic, session.clone());
        if joined && self.table.subscribers(topic).len() == 1 {
            self.report(HubEvent::Subscribe(guild, None));
        }
        joined
    }

    /// Unsubscribes a session from a guild; returns false if it was not subscribed.
    fn leave_guild(&mut self, session: &SessionRef, guild: GuildId) -> bool {
        let left = self.table.unsubscribe(Topic::Guild(guild), session.key());
        if !left {
            return false;
        }
        {
            let mut st = session.lock();
            st.guilds.retain(|(g, _)| *g != guild);
            st.passive.retain(|g| *g != guild);
        }
        self.replicate(
            session,
            SessionOp::Leave {
                session: session.id,
                guild,
            },
        );
        if self.table.subscribers(Topic::Guild(guild)).is_empty() {
            self.report(HubEvent::Unsubscribe(guild));
        }
        true
    }

    /// Unsubscribes a session from its guilds and user topic.
    fn leave_all(&mut self, session: &SessionRef) {
        let guilds: Vec<GuildId> = session.lock().guilds.iter().map(|(g, _)| *g).collect();
        for g in guilds {
            self.leave_guild(session, g);
        }
        self.table
            .unsubscribe(Topic::User(session.user), session.key());
    }

    fn report(&self, event: HubEvent) {
        if let Some(tx) = &self.events {
            // Fails only when the router task stopped (shutdown): nothing to tell.
            let _ = tx.send(event);
        }
    }
}

/// The GUILD_CREATE body used until a guild object is stored.
pub fn minimal_guild(guild: GuildId) -> Bytes {
    format!(
        r#"{{"id":"{guild}","name":"guild {guild}","unavailable":false,"member_count":0,"large":false,"channels":[],"threads":[],"roles":[],"emojis":[],"stickers":[],"members":[],"presences":[],"voice_states":[],"features":[]}}"#
    )
    .into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::session::Session;
    use concord_protocol::{SessionId, intents};
    use concord_router::ReplayLimits;
    use std::sync::Arc;

    fn session(id: u128, user: u64, intents: u64) -> SessionRef {
        Arc::new(Session::new(
            SessionId(id),
            UserId(user),
            "u".into(),
            false,
            intents,
            ReplayLimits::default(),
        ))
    }

    fn types(s: &SessionRef) -> Vec<String> {
        s.lock()
            .log
            .unwritten()
            .map(|(_, e)| e.event_type.to_string())
            .collect()
    }

    #[test]
    fn guild_create_precedes_events_and_intents_filter() {
        let now = Instant::now();
        let mut hub = Hub::new(16, 100, Metrics::new());
        let all = session(1, 10, intents::ALL);
        let none = session(2, 11, 0);
        for s in [&all, &none] {
            hub.handle(
                HubInput::Join {
                    session: s.clone(),
                    ready: Bytes::new(),
                    guilds: vec![GuildId(5)],
                },
                now,
            );
        }
        let seq = hub.publish(
            Topic::Guild(GuildId(5)),
            None,
            "MESSAGE_CREATE",
            "{}".into(),
            now,
        );
        assert_eq!(seq, 1);
        hub.publish(Topic::Guild(GuildId(5)), None, "CUSTOM", "{}".into(), now);
        assert_eq!(
            types(&all),
            ["READY", "GUILD_CREATE", "MESSAGE_CREATE", "CUSTOM"]
        );
        assert_eq!(types(&none), ["READY", "GUILD_CREATE", "CUSTOM"]);
    }

    #[test]
    fn a_lost_guild_invalidates_only_its_sessions() {
        let now = Instant::now();
        let mut hub = Hub::new(16, 100, Metrics::new());
        let inside = session(1, 10, intents::ALL);
        let outside = session(2, 11, intents::ALL);
        for (s, g) in [(&inside, 5), (&outside, 6)] {
            hub.handle(
                HubInput::Join {
                    session: s.clone(),
                    ready: Bytes::new(),
                    guilds: vec![GuildId(g)],
                },
                now,
            );
        }
        let attached = tokio_util::sync::CancellationToken::new();
        inside.lock().attachment = Some(attached.clone());
        hub.handle(HubInput::InvalidateGuild { guild: GuildId(5) }, now);
        assert!(inside.lock().invalidated);
        assert!(attached.is_cancelled(), "the connection is told to let go");
        assert!(!outside.lock().invalidated);
    }

    #[test]
    fn membership_changes_reach_live_sessions() {
        let now = Instant::now();
        let mut hub = Hub::new(16, 100, Metrics::new());
        let s = session(1, 10, intents::ALL);
        hub.handle(
            HubInput::Join {
                session: s.clone(),
                ready: Bytes::new(),
                guilds: vec![],
            },
            now,
        );
        hub.handle(
            HubInput::StoreGuild {
                guild: GuildId(7),
                object: r#"{"id":"7","name":"seven"}"#.into(),
            },
            now,
        );
        let (reply, mut rx) = oneshot::channel();
        hub.handle(
            HubInput::AddMember {
                guild: GuildId(7),
                user: UserId(10),
                reply,
            },
            now,
        );
        assert_eq!(rx.try_recv().unwrap(), 1);
        hub.publish(Topic::Guild(GuildId(7)), None, "X", "{}".into(), now);
        let (reply, mut rx) = oneshot::channel();
        hub.handle(
            HubInput::RemoveMember {
                guild: GuildId(7),
                user: UserId(10),
                reply,
            },
            now,
        );
        assert_eq!(rx.try_recv().unwrap(), 1);
        hub.publish(Topic::Guild(GuildId(7)), None, "Y", "{}".into(), now);
        assert_eq!(types(&s), ["READY", "GUILD_CREATE", "X", "GUILD_DELETE"]);
        let first = s.lock().log.unwritten().nth(1).unwrap().1.body.clone();
        assert_eq!(&first[..], br#"{"id":"7","name":"seven"}"#);
    }
}
