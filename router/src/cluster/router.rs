//! [`ClusterRouter`]: the per-node state machine.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::frame::{GuildEvent, PeerFrame};
use super::{
    ClusterConfig, ClusterCounters, FetchId, GuildId, GuildSeq, NodeId, Placement, Placements,
    PublishError, PublishId,
};

/// What the router wants done. Drain with [`ClusterRouter::poll_output`] after every
/// input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `frame` to peer `to` on its link (drop it if the peer is gone: the protocol
    /// repairs lost frames).
    Send {
        /// The peer.
        to: NodeId,
        /// The frame.
        frame: PeerFrame,
    },
    /// Hand `event` to this node's sessions in the guild. Events of one guild come in
    /// sequence order, each sequence once.
    DeliverLocal {
        /// The event.
        event: GuildEvent,
    },
    /// Tell the backend that published `publish_id` here that the event is sequenced and
    /// replicated.
    AckPublisher {
        /// The id given to [`ClusterRouter::publish`].
        publish_id: PublishId,
        /// The guild.
        guild: GuildId,
        /// The sequence it got.
        seq: GuildSeq,
    },
    /// Tell the backend that `publish_id` was not sequenced; it may retry.
    RejectPublisher {
        /// The id given to [`ClusterRouter::publish`].
        publish_id: PublishId,
        /// The guild.
        guild: GuildId,
        /// Why (transient).
        error: PublishError,
    },
    /// Events of `guild` were lost for this node (they left the owner's log before they
    /// reached it, or the owner's sequence restarted): its sessions must resynchronise
    /// the guild (for example, by a fresh GUILD_CREATE).
    Resync {
        /// The guild.
        guild: GuildId,
    },
    /// The answer to [`ClusterRouter::fetch`]: the replicated events of `guild` after
    /// the asked seq that its owner (or this node) holds, in order. They may start later
    /// than asked (the log no longer reaches back) or be empty.
    Fetched {
        /// The id given to `fetch`.
        fetch: FetchId,
        /// The guild.
        guild: GuildId,
        /// The events.
        events: Vec<GuildEvent>,
    },
}

/// A fetch this node asked a guild's owner for, not answered yet.
#[derive(Debug)]
struct PendingFetch {
    guild: GuildId,
    after: GuildSeq,
    sent_to: NodeId,
    /// Set by [`ClusterRouter::resend_stale`]; still pending at the next call: sent again.
    marked: bool,
}

/// A guild this node owns: its sequence, log, replica and unacknowledged publishes.
#[derive(Debug)]
struct OwnedGuild {
    /// The last sequence given out.
    last_seq: GuildSeq,
    /// The last sequence the replica holds (everything up to it may be acknowledged and
    /// fanned out).
    replicated: GuildSeq,
    /// The newest events, oldest first. Holds every unreplicated event, plus up to
    /// `log_capacity` replicated ones.
    log: VecDeque<GuildEvent>,
    /// `(origin, publish id) -> seq` for every logged event: the forward dedup memory.
    by_publish: HashMap<(NodeId, PublishId), GuildSeq>,
    /// Where events are replicated, if anywhere.
    replica: Option<NodeId>,
    /// Publishes sequenced but not yet replicated, in sequence order.
    awaiting: VecDeque<(GuildSeq, NodeId, PublishId)>,
    /// `replicated` at the last [`ClusterRouter::resend_stale`] tick: no progress by the
    /// next one, with events awaiting, sends them to the replica again (it may have
    /// refused them while its ring disagreed, or lost them with a link).
    replicated_at_tick: Option<GuildSeq>,
}

impl OwnedGuild {
    fn fresh(replica: Option<NodeId>) -> Self {
        OwnedGuild {
            last_seq: GuildSeq(0),
            replicated: GuildSeq(0),
            log: VecDeque::new(),
            by_publish: HashMap::new(),
            replica,
            awaiting: VecDeque::new(),
            replicated_at_tick: None,
        }
    }

    /// The owner a replica becomes: the replicated log is its history, all of it
    /// replicated (the old owner had it, and this node has it).
    fn promoted(replica_log: ReplicaLog, replica: Option<NodeId>) -> Self {
        let by_publish = replica_log
            .log
            .iter()
            .map(|e| ((e.origin.clone(), e.publish_id), e.seq))
            .collect();
        OwnedGuild {
            last_seq: replica_log.last,
            replicated: replica_log.last,
            log: replica_log.log,
            by_publish,
            replica,
            awaiting: VecDeque::new(),
            replicated_at_tick: None,
        }
    }

    /// The log kept after demotion, for the next owner's log request: the replicated
    /// part only (the rest was never acknowledged).
    fn retire(self) -> ReplicaLog {
        let last = self.replicated;
        let log = self.log.into_iter().filter(|e| e.seq <= last).collect();
        ReplicaLog { log, last }
    }

    /// The replicated events after `cursor`, and, if the log no longer reaches back to
    /// `cursor + 1`, the cursor the subscriber must resync to.
    fn events_after(&self, cursor: GuildSeq) -> (Option<GuildSeq>, Vec<GuildEvent>) {
        let oldest = self.log.front().map_or(self.replicated.next(), |e| e.seq);
        let resync = (cursor.next() < oldest).then(|| GuildSeq(oldest.0 - 1));
        let events = self
            .log
            .iter()
            .filter(|e| e.seq > cursor && e.seq <= self.replicated)
            .cloned()
            .collect();
        (resync, events)
    }

    /// Drops the oldest replicated events past `capacity`.
    fn evict(&mut self, capacity: usize) {
        while self.log.len() > capacity {
            match self.log.front() {
                Some(e) if e.seq <= self.replicated => {
                    self.by_publish.remove(&(e.origin.clone(), e.publish_id));
                    self.log.pop_front();
                }
                _ => break,
            }
        }
    }
}

/// A copy of another node's guild log, kept while this node is the guild's replica.
#[derive(Debug, Default)]
struct ReplicaLog {
    log: VecDeque<GuildEvent>,
    last: GuildSeq,
}

/// A guild this node became owner of without holding its log: the previous placement's
/// holders are asked for theirs, and inputs for the guild wait until they answered (or
/// [`HANDOFF_TICKS`] resend ticks passed), so the sequence continues instead of
/// restarting.
#[derive(Debug, Default)]
struct Handoff {
    /// Previous holders not done yet (nor declared down), each with the requests sent
    /// to it and not answered yet: links are FIFO, so only the answer to the last
    /// request reflects everything the holder had when it was asked. A holder that
    /// answered "still the owner" stays here (with 0) until its final transfer.
    waiting: BTreeMap<NodeId, u32>,
    /// [`ClusterRouter::resend_stale`] calls since it began.
    ticks: u32,
    /// Events learned so far, at most `log_capacity` (the newest are kept: they are the
    /// ones subscribers still miss).
    events: BTreeMap<GuildSeq, GuildEvent>,
    /// The highest replicated sequence any holder reported.
    last_seq: GuildSeq,
    /// Forwards that arrived meanwhile, in arrival order, at most `max_unreplicated`.
    held: VecDeque<HeldForward>,
    /// Every holder asked.
    asked: BTreeSet<NodeId>,
    /// Holders that answered while still sequencing the guild: if one goes down before
    /// its final transfer, its replica holds what it acknowledged since, so the others
    /// are asked again.
    still_owner: BTreeSet<NodeId>,
}

impl Handoff {
    /// The log learned: the newest contiguous run of events ending at the highest
    /// replicated seq reported (none if they do not reach it: a log with a hole would
    /// serve gap fills wrongly, so subscribers behind resync instead).
    fn into_log(self) -> ReplicaLog {
        let mut log = VecDeque::new();
        for (seq, e) in self.events.into_iter().rev() {
            if log
                .front()
                .is_some_and(|f: &GuildEvent| f.seq.0 != seq.0 + 1)
            {
                break;
            }
            log.push_front(e);
        }
        if log
            .back()
            .is_some_and(|e: &GuildEvent| e.seq != self.last_seq)
        {
            log.clear();
        }
        ReplicaLog {
            log,
            last: self.last_seq,
        }
    }
}

/// A forward waiting for its guild's handoff to end.
#[derive(Debug)]
struct HeldForward {
    origin: NodeId,
    publish_id: PublishId,
    event_type: Arc<str>,
    body: Bytes,
}

/// Rings remembered for log handoffs (the current one aside).
const RING_HISTORY: usize = 4;

/// Resend ticks after which a handoff proceeds with what it learned: a holder that was
/// neither declared down nor answered by then is treated as gone.
const HANDOFF_TICKS: u32 = 3;

/// Nodes remembered as declared down (so a lazily started handoff does not wait for
/// them); the oldest are forgotten past this.
const MAX_DOWN: usize = 1024;

/// This node's interest in a guild: its local sessions and its delivery cursor.
#[derive(Debug)]
struct Subscription {
    /// Local sessions in the guild.
    sessions: usize,
    /// The last sequence delivered locally; `None` until the owner says where "now" is.
    last_delivered: Option<GuildSeq>,
    /// Events that arrived ahead of a gap, waiting for it to fill.
    early: BTreeMap<GuildSeq, GuildEvent>,
    /// The owner this node subscribed to (itself when it owns the guild), `None` while
    /// there is no ring.
    owner: Option<NodeId>,
    /// Batches received since a gap was re-requested; `None` when no request is out.
    gap_request: Option<u32>,
}

/// Batches without progress after which a gap is requested again (the request or its
/// answer may have been lost with a broken link).
const GAP_RETRY_BATCHES: u32 = 16;

/// A publish this node originated that awaits its owner's acknowledgement.
#[derive(Debug)]
struct PendingPublish {
    guild: GuildId,
    event_type: Arc<str>,
    body: Bytes,
    /// The node it was sent to (this node when it owns the guild).
    sent_to: NodeId,
    /// Set by [`ClusterRouter::resend_stale`]; a publish still pending at the next call
    /// is sent again.
    marked: bool,
}

/// A forward this node relayed because its ring named another owner. Kept until the
/// next ring change: if our ring was the stale one, the relay went to a node that may
/// be gone, and the new ring tells us where it really belongs.
#[derive(Debug)]
struct Relayed {
    origin: NodeId,
    publish_id: PublishId,
    guild: GuildId,
    event_type: Arc<str>,
    body: Bytes,
    relayed_to: NodeId,
}

/// Queued outputs and counters, apart from the tables so both can be borrowed at once.
#[derive(Debug, Default)]
struct Effects {
    outputs: VecDeque<Output>,
    counters: ClusterCounters,
}

impl Effects {
    fn send(&mut self, to: NodeId, frame: PeerFrame) {
        self.counters.frames_sent[frame.kind().index()] += 1;
        if let PeerFrame::FanoutBatch { events } = &frame {
            let n = events.len() as u64;
            self.counters.fanout_events += n;
            self.counters.max_batch_events = self.counters.max_batch_events.max(n);
        }
        if matches!(frame, PeerFrame::Resync { .. }) {
            self.counters.resyncs += 1;
        }
        self.outputs.push_back(Output::Send { to, frame });
    }

    fn push(&mut self, output: Output) {
        self.outputs.push_back(output);
    }
}

/// The cluster router of one node. See the [module docs](super) for roles and call
/// order.
#[derive(Debug)]
pub struct ClusterRouter<P> {
    me: NodeId,
    config: ClusterConfig,
    placements: P,
    /// The placements before the last ring change: whom a new owner asks for a log.
    previous: VecDeque<P>,
    /// Guilds this node owns but whose log it is still collecting, at most
    /// `max_handoffs`.
    handoffs: BTreeMap<GuildId, Handoff>,
    /// Logs this node held (as owner or replica) before the last ring change and no
    /// longer does, kept until the next one so a new owner can ask for them.
    retired: BTreeMap<GuildId, ReplicaLog>,
    /// Nodes declared down and not heard from since, at most [`MAX_DOWN`].
    down: BTreeSet<NodeId>,
    /// Guilds this node owns.
    owned: BTreeMap<GuildId, OwnedGuild>,
    /// Guild logs this node replicates for their owners.
    replicas: BTreeMap<GuildId, ReplicaLog>,
    /// Peer nodes subscribed to a guild, with the last sequence sent to each (`None`:
    /// subscribed "from now", not answered yet). Kept for guilds this node does not own
    /// too: a subscriber whose ring is ahead of ours is served once ours catches up.
    peers: BTreeMap<GuildId, BTreeMap<NodeId, Option<GuildSeq>>>,
    /// Guilds with local sessions.
    subscriptions: BTreeMap<GuildId, Subscription>,
    /// Publishes this node originated, not yet acknowledged (ordered, so a re-send keeps
    /// publish order).
    pending: BTreeMap<PublishId, PendingPublish>,
    /// Forwards relayed since the last ring change, oldest first, at most
    /// `max_pending_publishes`.
    relayed: VecDeque<Relayed>,
    /// Events to replicate at the next flush, per replica node.
    to_replicate: BTreeMap<NodeId, Vec<GuildEvent>>,
    /// Owned guilds whose replicated sequence advanced since the last flush.
    dirty: BTreeSet<GuildId>,
    /// Log fetches this node asked for, by id.
    fetches: BTreeMap<FetchId, PendingFetch>,
    /// Whether an owner needs a replica to acknowledge (see
    /// [`ClusterRouter::require_replica`]).
    require_replica: bool,
    /// Replicated events from a node our ring does not name as their owner, held until
    /// the next ring change (ours may be the stale ring), at most `max_unreplicated` per
    /// sender.
    fenced: BTreeMap<NodeId, Vec<GuildEvent>>,
    /// Nodes that asked for the log of a guild we still owned in our ring: each gets a
    /// final [`PeerFrame::LogTransfer`] once our ring demotes us.
    asked_while_owner: BTreeMap<GuildId, BTreeSet<NodeId>>,
    /// Logs demoted owners handed us unasked, for when we take their guilds over.
    offered: BTreeMap<GuildId, ReplicaLog>,
    fx: Effects,
}

impl<P: Placements> ClusterRouter<P> {
    /// The router of node `me`, with the current ring's `placements`.
    pub fn new(me: NodeId, config: ClusterConfig, placements: P) -> Self {
        ClusterRouter {
            me,
            config,
            placements,
            previous: VecDeque::new(),
            handoffs: BTreeMap::new(),
            retired: BTreeMap::new(),
            down: BTreeSet::new(),
            owned: BTreeMap::new(),
            replicas: BTreeMap::new(),
            peers: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            pending: BTreeMap::new(),
            relayed: VecDeque::new(),
            to_replicate: BTreeMap::new(),
            dirty: BTreeSet::new(),
            fetches: BTreeMap::new(),
            require_replica: false,
            fenced: BTreeMap::new(),
            asked_while_owner: BTreeMap::new(),
            offered: BTreeMap::new(),
            fx: Effects::default(),
        }
    }

    /// While on, an owner acknowledges (and fans out) an event only once a replica holds
    /// it, even when its ring has no other node: a node cut off from the rest of its
    /// cluster then refuses publishes ([`PublishError::NoReplica`]) instead of
    /// acknowledging events the other side never sees. The shell turns it on while
    /// another member is known that did not leave by draining; a lone node (standalone,
    /// a cluster of one, or the last after the others drained) acknowledges alone.
    pub fn require_replica(&mut self, on: bool) {
        self.require_replica = on;
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.me
    }

    /// The next queued output, oldest first.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.fx.outputs.pop_front()
    }

    /// What the router has done so far.
    pub fn counters(&self) -> &ClusterCounters {
        &self.fx.counters
    }

    /// Guilds this node owns whose log it is still collecting from their previous
    /// holders (it is not ready to serve them yet).
    pub fn handoffs_in_progress(&self) -> usize {
        self.handoffs.len()
    }

    /// Publishes this node originated that await acknowledgement.
    pub fn pending_publishes(&self) -> usize {
        self.pending.len()
    }

    /// The last sequence this node's sessions received in `guild`, if it is subscribed
    /// and knows where it stands.
    pub fn delivered_seq(&self, guild: GuildId) -> Option<GuildSeq> {
        self.subscriptions
            .get(&guild)
            .and_then(|s| s.last_delivered)
    }

    /// The last sequence given out in `guild`, if this node owns it.
    pub fn owned_seq(&self, guild: GuildId) -> Option<GuildSeq> {
        self.owned.get(&guild).map(|g| g.last_seq)
    }

    /// Publishes an event from a local backend. On `Ok`, an [`Output::AckPublisher`] or
    /// [`Output::RejectPublisher`] with `publish_id` follows (at once, or when the
    /// owner answers).
    ///
    /// # Errors
    /// [`PublishError::NoRing`], [`PublishError::Overloaded`] (here, or this node owns
    /// the guild and its replica is behind) or [`PublishError::DuplicatePublishId`].
    /// Nothing changes on an error.
    pub fn publish(
        &mut self,
        guild: GuildId,
        event_type: &str,
        body: Bytes,
        publish_id: PublishId,
    ) -> Result<(), PublishError> {
        let placement = self
            .placements
            .placement(guild)
            .ok_or(PublishError::NoRing)?;
        if self.pending.contains_key(&publish_id) {
            return Err(PublishError::DuplicatePublishId(publish_id));
        }
        if self.pending.len() >= self.config.max_pending_publishes {
            return Err(PublishError::Overloaded);
        }
        let event_type: Arc<str> = event_type.into();
        self.pending.insert(
            publish_id,
            PendingPublish {
                guild,
                event_type: Arc::clone(&event_type),
                body: body.clone(),
                sent_to: placement.owner.clone(),
                marked: false,
            },
        );
        if placement.owner == self.me {
            let me = self.me.clone();
            if let Err(e) = self.sequence(guild, me, publish_id, event_type, body) {
                self.pending.remove(&publish_id);
                return Err(e);
            }
        } else {
            self.send_forward(placement.owner, publish_id, guild, event_type, body);
        }
        Ok(())
    }

    /// A frame from peer `from`.
    pub fn peer_frame(&mut self, from: &NodeId, frame: PeerFrame) {
        // A node we hear from is up again, whatever membership said before.
        if !self.down.is_empty() {
            self.down.remove(from);
        }
        match frame {
            PeerFrame::Forward {
                origin,
                publish_id,
                guild,
                event_type,
                body,
                hops,
            } => self.on_forward(origin, publish_id, guild, event_type, body, hops),
            PeerFrame::ForwardAck {
                publish_id,
                guild,
                seq,
            } => self.settle(publish_id, guild, Ok(seq)),
            PeerFrame::ForwardReject {
                publish_id,
                guild,
                error,
            } => self.settle(publish_id, guild, Err(error)),
            PeerFrame::Replicate { events } => self.on_replicate(from, events),
            PeerFrame::ReplicateAck { acks } => {
                for (guild, seq) in acks {
                    let from_replica = self
                        .owned
                        .get(&guild)
                        .is_some_and(|g| g.replica.as_ref() == Some(from));
                    if from_replica {
                        self.commit(guild, seq);
                    }
                }
            }
            PeerFrame::Subscribe { guild, after_seq } => {
                self.peers
                    .entry(guild)
                    .or_default()
                    .insert(from.clone(), after_seq);
                self.serve_peer(guild, from);
            }
            PeerFrame::Unsubscribe { guild } => {
                if let Some(peers) = self.peers.get_mut(&guild) {
                    peers.remove(from);
                    if peers.is_empty() {
                        self.peers.remove(&guild);
                    }
                }
            }
            PeerFrame::Subscribed { guild, after_seq } => {
                if let Some(sub) = subscription_from(&mut self.subscriptions, guild, from)
                    && sub.last_delivered.is_none()
                {
                    sub.last_delivered = Some(after_seq);
                    deliver_ready(sub, &mut self.fx);
                }
            }
            PeerFrame::Resync { guild, after_seq } => {
                if let Some(sub) = subscription_from(&mut self.subscriptions, guild, from) {
                    sub.last_delivered = Some(after_seq);
                    sub.early.clear();
                    sub.gap_request = None;
                    self.fx.push(Output::Resync { guild });
                }
            }
            PeerFrame::FanoutBatch { events } => self.on_batch(from, events),
            PeerFrame::LogRequest { guild } => self.on_log_request(from, guild),
            PeerFrame::LogTransfer {
                guild,
                events,
                last_seq,
                still_owner,
            } => self.on_log_transfer(from, guild, events, last_seq, still_owner),
            PeerFrame::LogFetch {
                guild,
                after,
                fetch,
            } => {
                let events = self.held_after(guild, after);
                self.fx.send(
                    from.clone(),
                    PeerFrame::LogFetched {
                        guild,
                        fetch,
                        events,
                    },
                );
            }
            PeerFrame::LogFetched {
                guild,
                fetch,
                events,
            } => {
                // Only the node it was last sent to answers it (a re-routed fetch's old
                // target may answer late, with less).
                let ours = self
                    .fetches
                    .get(&fetch)
                    .is_some_and(|f| &f.sent_to == from && f.guild == guild);
                if ours && self.fetches.remove(&fetch).is_some() {
                    self.fx.push(Output::Fetched {
                        fetch,
                        guild,
                        events,
                    });
                }
            }
            // Not the router's: the shell handles continuity frames itself.
            PeerFrame::Session(_) => {}
        }
    }

    /// Asks for the replicated events of `guild` after `after`, from the guild's owner
    /// (or at once from this node's own log when it owns the guild). An
    /// [`Output::Fetched`] with `fetch` follows; a fetch whose owner changes or does not
    /// answer is sent again on ring changes and [`ClusterRouter::resend_stale`] ticks.
    pub fn fetch(&mut self, guild: GuildId, after: GuildSeq, fetch: FetchId) {
        let owner = self.placements.placement(guild).map(|p| p.owner);
        match owner {
            Some(owner) if owner != self.me => {
                self.fetches.insert(
                    fetch,
                    PendingFetch {
                        guild,
                        after,
                        sent_to: owner.clone(),
                        marked: false,
                    },
                );
                self.fx.send(
                    owner,
                    PeerFrame::LogFetch {
                        guild,
                        after,
                        fetch,
                    },
                );
            }
            // We own it, or there is no ring: what we hold is all there is.
            _ => {
                let events = self.held_after(guild, after);
                self.fx.push(Output::Fetched {
                    fetch,
                    guild,
                    events,
                });
            }
        }
    }

    /// Drops a fetch nobody waits for any more; a late answer is ignored.
    pub fn cancel_fetch(&mut self, fetch: FetchId) {
        self.fetches.remove(&fetch);
    }

    /// The replicated events of `guild` after `after` this node holds, as owner,
    /// replica or retired holder.
    fn held_after(&self, guild: GuildId, after: GuildSeq) -> Vec<GuildEvent> {
        if let Some(o) = self.owned.get(&guild) {
            return o.events_after(after).1;
        }
        self.replicas
            .get(&guild)
            .or(self.retired.get(&guild))
            .map(|r| r.log.iter().filter(|e| e.seq > after).cloned().collect())
            .unwrap_or_default()
    }

    /// Sends pending fetches whose guild's owner changed (or all, with `again`) to the
    /// owner the ring names now.
    fn route_fetches(&mut self, again: bool) {
        let ids: Vec<FetchId> = self.fetches.keys().copied().collect();
        for id in ids {
            let Some(f) = self.fetches.get_mut(&id) else {
                continue;
            };
            let owner = self.placements.placement(f.guild).map(|p| p.owner);
            let Some(owner) = owner else {
                continue;
            };
            let moved = owner != f.sent_to;
            if again && !moved && !f.marked {
                f.marked = true;
                continue;
            }
            if !again && !moved {
                continue;
            }
            let (guild, after) = (f.guild, f.after);
            if owner == self.me {
                self.fetches.remove(&id);
                let events = self.held_after(guild, after);
                self.fx.push(Output::Fetched {
                    fetch: id,
                    guild,
                    events,
                });
            } else {
                f.sent_to = owner.clone();
                f.marked = false;
                self.fx.send(
                    owner,
                    PeerFrame::LogFetch {
                        guild,
                        after,
                        fetch: id,
                    },
                );
            }
        }
    }

    /// A session on this node joined `guild`. The first one subscribes the node.
    pub fn local_subscribe(&mut self, guild: GuildId) {
        self.subscribe_local(guild, None);
    }

    /// Like [`ClusterRouter::local_subscribe`], for a session that must continue after
    /// guild seq `after` (it resumed here from another node): if this is the node's
    /// first session in the guild, the node subscribes from `after` and the owner fills
    /// in what followed it. A node already subscribed just counts the session; the
    /// caller catches it up from its own topic log.
    pub fn local_subscribe_from(&mut self, guild: GuildId, after: GuildSeq) {
        self.subscribe_local(guild, Some(after));
    }

    fn subscribe_local(&mut self, guild: GuildId, after: Option<GuildSeq>) {
        let sub = self
            .subscriptions
            .entry(guild)
            .or_insert_with(|| Subscription {
                sessions: 0,
                last_delivered: None,
                early: BTreeMap::new(),
                owner: None,
                gap_request: None,
            });
        sub.sessions += 1;
        if sub.sessions == 1 {
            if after.is_some() {
                sub.last_delivered = after;
            }
            self.subscribe_to_owner(guild);
        }
    }

    /// A session on this node left `guild`. The last one unsubscribes the node.
    pub fn local_unsubscribe(&mut self, guild: GuildId) {
        let Some(sub) = self.subscriptions.get_mut(&guild) else {
            return;
        };
        sub.sessions = sub.sessions.saturating_sub(1);
        if sub.sessions > 0 {
            return;
        }
        let owner = sub.owner.take();
        self.subscriptions.remove(&guild);
        if let Some(owner) = owner
            && owner != self.me
        {
            self.fx.send(owner, PeerFrame::Unsubscribe { guild });
        }
    }

    /// The ring changed: take the new placements. Demotes and promotes guild owners,
    /// re-points replication, re-subscribes to moved guilds from the last delivered
    /// sequence, and sends pending publishes to their new owners. Guilds this node now
    /// owns without their log start a log handoff from their previous placement (see
    /// the module docs); the placements replaced here are kept for that, the last only.
    pub fn ring_changed(&mut self, placements: P) {
        // The last few rings are kept: they name who held each guild's log (a guild
        // this node owned in the last one but never touched is looked up further back).
        self.previous
            .push_front(std::mem::replace(&mut self.placements, placements));
        self.previous.truncate(RING_HISTORY);
        // Logs we stop holding now are kept until the next ring change, for new owners'
        // log requests; older retired logs are dropped (bounded by what we held).
        let mut retired = BTreeMap::new();

        // Handoffs of guilds we no longer own: the held forwards go where the new ring
        // says (our own publishes are re-routed from `pending` below).
        let handoffs: Vec<GuildId> = self.handoffs.keys().copied().collect();
        for guild in handoffs {
            let still_owner = self
                .placements
                .placement(guild)
                .is_some_and(|p| p.owner == self.me);
            if still_owner {
                continue;
            }
            let Some(mut h) = self.handoffs.remove(&guild) else {
                continue;
            };
            for f in std::mem::take(&mut h.held) {
                if f.origin != self.me {
                    self.on_forward(f.origin, f.publish_id, guild, f.event_type, f.body, 1);
                }
            }
            // What it collected may be the only copy a later owner can find (the holders
            // it came from may be gone by then): keep it like any log we stop holding.
            if h.last_seq > GuildSeq(0) {
                retired.insert(guild, h.into_log());
            }
        }

        // Owned guilds: demote, or follow a replica change.
        let owned: Vec<GuildId> = self.owned.keys().copied().collect();
        for guild in owned {
            let placement = self.placements.placement(guild);
            match placement {
                Some(p) if p.owner == self.me => self.set_replica(guild, p.replica),
                // Not the owner any more: the new owner continues from its own copy.
                // Our own unacknowledged publishes are re-sent below; others' origins
                // re-send theirs.
                _ => {
                    if let Some(owned) = self.owned.remove(&guild) {
                        let log = owned.retire();
                        // Hand the log to the new owner now (a drain or rebalance),
                        // rather than only when it asks: we may be gone by then.
                        if let Some(p) = placement.filter(|p| p.owner != self.me) {
                            self.fx.send(
                                p.owner,
                                PeerFrame::LogTransfer {
                                    guild,
                                    events: log.log.iter().cloned().collect(),
                                    last_seq: log.last,
                                    still_owner: false,
                                },
                            );
                        }
                        retired.insert(guild, log);
                    }
                    self.dirty.remove(&guild);
                }
            }
        }

        // Replica logs: promote, keep, or drop.
        let replicated: Vec<GuildId> = self.replicas.keys().copied().collect();
        for guild in replicated {
            match self.placements.placement(guild) {
                Some(p) if p.owner == self.me => {
                    self.ensure_owned(guild, &p);
                }
                Some(p) if p.replica.as_ref() == Some(&self.me) => {}
                _ => {
                    if let Some(log) = self.replicas.remove(&guild) {
                        retired.insert(guild, log);
                    }
                }
            }
        }

        self.retired = retired;

        // Nodes that asked for a log while we still owned the guild: now that we do not,
        // they get everything we acknowledged.
        let demoted: Vec<GuildId> = self
            .asked_while_owner
            .keys()
            .filter(|g| !self.owned.contains_key(g) && !self.handoffs.contains_key(g))
            .copied()
            .collect();
        for guild in demoted {
            for node in self.asked_while_owner.remove(&guild).unwrap_or_default() {
                self.send_log(&node, guild, false);
            }
        }

        // Peers that subscribed to us: serve those of guilds we now own.
        let peer_guilds: Vec<GuildId> = self.peers.keys().copied().collect();
        for guild in peer_guilds {
            self.serve_peers(guild);
        }

        // Local subscriptions: follow the owner.
        let subscribed: Vec<GuildId> = self.subscriptions.keys().copied().collect();
        for guild in subscribed {
            let new_owner = self.placements.placement(guild).map(|p| p.owner);
            let Some(sub) = self.subscriptions.get_mut(&guild) else {
                continue;
            };
            if sub.owner == new_owner {
                continue;
            }
            if let Some(old) = sub.owner.take()
                && old != self.me
            {
                self.fx.send(old, PeerFrame::Unsubscribe { guild });
            }
            self.subscribe_to_owner(guild);
        }

        // Our pending publishes: to the new owner.
        let ids: Vec<PublishId> = self.pending.keys().copied().collect();
        for id in ids {
            self.route_pending(id, false);
        }

        self.route_fetches(false);

        // Logs handed to us for guilds the new ring does not give us are not ours to keep.
        let placements = &self.placements;
        let me = &self.me;
        self.offered
            .retain(|g, _| placements.placement(*g).is_some_and(|p| &p.owner == me));

        // Replication we fenced on the old ring: apply what the new ring vouches for.
        for (from, events) in std::mem::take(&mut self.fenced) {
            self.replicate_from(&from, events, false);
        }

        // Forwards we relayed on the old ring: where the new one says, if that moved.
        for r in std::mem::take(&mut self.relayed) {
            let Some(p) = self.placements.placement(r.guild) else {
                continue;
            };
            if p.owner == self.me {
                let origin = r.origin.clone();
                if let Err(e) = self.sequence(r.guild, r.origin, r.publish_id, r.event_type, r.body)
                {
                    self.answer(origin, r.publish_id, r.guild, Err(e));
                }
            } else if p.owner != r.relayed_to {
                self.fx.send(
                    p.owner,
                    PeerFrame::Forward {
                        origin: r.origin,
                        publish_id: r.publish_id,
                        guild: r.guild,
                        event_type: r.event_type,
                        body: r.body,
                        hops: 1,
                    },
                );
            }
        }
    }

    /// Membership declared `node` dead: forget its subscriptions. (Its guilds move with
    /// the next [`ClusterRouter::ring_changed`].)
    pub fn peer_down(&mut self, node: &NodeId) {
        self.fenced.remove(node);
        self.peers.retain(|_, peers| {
            peers.remove(node);
            !peers.is_empty()
        });
        self.to_replicate.remove(node);
        if self.down.len() >= MAX_DOWN {
            self.down.pop_first();
        }
        self.down.insert(node.clone());
        // A dead holder will not answer: handoffs stop waiting for it. One that gave no
        // final answer (none at all, or "still the owner") may have replicated to the
        // others after they answered: ask them again.
        let mut done = Vec::new();
        for (guild, h) in &mut self.handoffs {
            let unfinished = h.still_owner.remove(node) | h.waiting.contains_key(node);
            if unfinished {
                for other in h
                    .asked
                    .iter()
                    .filter(|n| *n != node && !self.down.contains(*n))
                {
                    *h.waiting.entry(other.clone()).or_default() += 1;
                    self.fx
                        .send(other.clone(), PeerFrame::LogRequest { guild: *guild });
                }
            }
            if h.waiting.remove(node).is_some() && h.waiting.is_empty() {
                done.push(*guild);
            }
        }
        for guild in done {
            self.finish_handoff(guild);
        }
    }

    /// Peer `node` restarted (membership saw a new generation of it): it lost every
    /// subscription, log and pending answer it had, while the ring may not have changed
    /// at all (it came back before anyone saw it leave). Forget its subscriptions to
    /// us, send it again our subscriptions, forwards, fetches and log requests, and our
    /// owned guilds' logs if it is their replica.
    pub fn peer_restarted(&mut self, node: &NodeId) {
        self.down.remove(node);
        // What its old incarnation sent us and we held is not its to vouch for now.
        self.fenced.remove(node);
        self.peers.retain(|_, peers| {
            peers.remove(node);
            !peers.is_empty()
        });
        let replicated: Vec<GuildId> = self
            .owned
            .iter()
            .filter(|(_, o)| o.replica.as_ref() == Some(node))
            .map(|(g, _)| *g)
            .collect();
        for guild in replicated {
            if let Some(owned) = self.owned.get(&guild) {
                self.to_replicate
                    .entry(node.clone())
                    .or_default()
                    .extend(owned.log.iter().cloned());
            }
        }
        let subscribed: Vec<GuildId> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.owner.as_ref() == Some(node))
            .map(|(g, _)| *g)
            .collect();
        for guild in subscribed {
            self.subscribe_to_owner(guild);
        }
        let pending: Vec<PublishId> = self
            .pending
            .iter()
            .filter(|(_, p)| &p.sent_to == node)
            .map(|(id, _)| *id)
            .collect();
        for id in pending {
            self.route_pending(id, true);
        }
        for (id, f) in &mut self.fetches {
            if &f.sent_to == node {
                self.fx.send(
                    node.clone(),
                    PeerFrame::LogFetch {
                        guild: f.guild,
                        after: f.after,
                        fetch: *id,
                    },
                );
            }
        }
        for (guild, h) in &mut self.handoffs {
            if h.waiting.contains_key(node) {
                // Its answers in flight died with it: one request, fresh.
                h.waiting.insert(node.clone(), 1);
                h.still_owner.remove(node);
                self.fx
                    .send(node.clone(), PeerFrame::LogRequest { guild: *guild });
            }
        }
    }

    /// Sends again every publish that was already pending at the previous call and still
    /// is. Call it on a timer (for example once a second): it repairs forwards lost with
    /// a broken link or relayed by a node whose ring was stale. A re-sent forward is
    /// sequenced once (see the module docs). It also asks log handoff holders that have
    /// not answered again, and ends handoffs that waited too many ticks.
    pub fn resend_stale(&mut self) {
        // Handoffs: ask again (the request or answer may have been lost with a link),
        // and after HANDOFF_TICKS proceed with what arrived.
        let mut expired = Vec::new();
        for (guild, h) in &mut self.handoffs {
            h.ticks += 1;
            // An old owner that said it still sequences is waited for: taking over
            // beside it would fork the sequence. It sends its final transfer when its
            // ring demotes it, or is declared down.
            if h.ticks >= HANDOFF_TICKS && h.still_owner.is_empty() {
                expired.push(*guild);
            } else {
                for (node, outstanding) in &mut h.waiting {
                    *outstanding += 1;
                    self.fx
                        .send(node.clone(), PeerFrame::LogRequest { guild: *guild });
                }
            }
        }
        for guild in expired {
            self.fx.counters.handoff_timeouts += 1;
            self.finish_handoff(guild);
        }

        self.route_fetches(true);

        // Replication that made no progress for a tick: send the events again.
        for owned in self.owned.values_mut() {
            let stuck =
                owned.replicated_at_tick == Some(owned.replicated) && !owned.awaiting.is_empty();
            owned.replicated_at_tick = Some(owned.replicated);
            if let (true, Some(replica)) = (stuck, &owned.replica) {
                let replicated = owned.replicated;
                self.to_replicate
                    .entry(replica.clone())
                    .or_default()
                    .extend(owned.log.iter().filter(|e| e.seq > replicated).cloned());
            }
        }

        let ids: Vec<PublishId> = self.pending.keys().copied().collect();
        for id in ids {
            let Some(p) = self.pending.get_mut(&id) else {
                continue;
            };
            if p.marked {
                self.route_pending(id, true);
            } else {
                p.marked = true;
            }
        }
    }

    /// Sends what accumulated since the last flush: one `Replicate` frame per replica
    /// node, then one `FanoutBatch` per subscribed peer node, and delivers local events
    /// of owned guilds.
    pub fn flush(&mut self) {
        for (node, events) in std::mem::take(&mut self.to_replicate) {
            if !events.is_empty() {
                self.fx.send(node, PeerFrame::Replicate { events });
            }
        }

        let mut batches: BTreeMap<NodeId, Vec<GuildEvent>> = BTreeMap::new();
        for guild in std::mem::take(&mut self.dirty) {
            let Some(owned) = self.owned.get(&guild) else {
                continue;
            };
            if let Some(peers) = self.peers.get_mut(&guild) {
                for (node, cursor) in peers.iter_mut() {
                    let Some(c) = *cursor else { continue };
                    if c >= owned.replicated {
                        continue;
                    }
                    let (resync, events) = owned.events_after(c);
                    if let Some(after_seq) = resync {
                        // Sent now, so it arrives before the batch it precedes.
                        self.fx
                            .send(node.clone(), PeerFrame::Resync { guild, after_seq });
                    }
                    batches.entry(node.clone()).or_default().extend(events);
                    *cursor = Some(owned.replicated);
                }
            }
            if let Some(sub) = self.subscriptions.get_mut(&guild)
                && sub.owner.as_ref() == Some(&self.me)
            {
                deliver_from_log(guild, sub, owned, &mut self.fx);
            }
        }
        for (node, events) in batches {
            if !events.is_empty() {
                self.fx.send(node, PeerFrame::FanoutBatch { events });
            }
        }
    }

    // --- owner side ---

    /// Makes the owned state of `guild` on first use: promoted from our replica log if
    /// we hold one; else, if the previous ring placed the guild on other nodes, a log
    /// handoff from them begins; else a fresh sequence. Returns whether the guild is
    /// owned now (`false`: a handoff is under way, and the caller holds its input).
    fn ensure_owned(&mut self, guild: GuildId, placement: &Placement) -> bool {
        if self.owned.contains_key(&guild) {
            self.replicas.remove(&guild);
            return true;
        }
        if self.handoffs.contains_key(&guild) {
            return false;
        }
        let mut holders = self.previous_holders(guild);
        // After a ring flap (a node out and back), the previous ring may not name who
        // holds the log, but the replica of the ring that is back often still does.
        if !holders.is_empty()
            && let Some(r) = placement.replica.clone().filter(|r| !self.down.contains(r))
        {
            holders.insert(r);
        }
        // Our replica copy and a log a demoted owner handed us: the newer seeds it.
        let own_copy = match (self.replicas.remove(&guild), self.offered.remove(&guild)) {
            (Some(a), Some(b)) => Some(if b.last > a.last { b } else { a }),
            (a, b) => a.or(b),
        };
        if let Some(log) = own_copy.as_ref().filter(|_| holders.is_empty()) {
            // The previous owner is gone and we held its log: we are its successor.
            let log = ReplicaLog {
                log: log.log.clone(),
                last: log.last,
            };
            self.install(guild, OwnedGuild::promoted(log, placement.replica.clone()));
            return true;
        }
        // Past `max_handoffs` a guild starts fresh, as if nobody held it: degraded
        // (subscribers ahead resync) but live, and memory stays bounded.
        if holders.is_empty() || self.handoffs.len() >= self.config.max_handoffs {
            if !self.previous.is_empty() {
                self.fx.counters.fresh_sequences += 1;
            }
            self.owned
                .insert(guild, OwnedGuild::fresh(placement.replica.clone()));
            return true;
        }
        for node in &holders {
            self.fx.send(node.clone(), PeerFrame::LogRequest { guild });
        }
        // A copy of our own (we were a replica) may have gone stale while the ring
        // moved: it counts as one holder's answer, not as the log.
        let (events, last_seq) = match own_copy {
            Some(r) => (r.log.into_iter().map(|e| (e.seq, e)).collect(), r.last),
            None => (BTreeMap::new(), GuildSeq(0)),
        };
        self.handoffs.insert(
            guild,
            Handoff {
                waiting: holders.iter().map(|n| (n.clone(), 1)).collect(),
                asked: holders,
                events,
                last_seq,
                ..Handoff::default()
            },
        );
        false
    }

    /// Installs a promoted or handed-off log as owned state: the replica gets the whole
    /// log (so it can fill gaps if we die) and the guild is marked for fan-out.
    fn install(&mut self, guild: GuildId, owned: OwnedGuild) {
        if let Some(r) = &owned.replica {
            self.to_replicate
                .entry(r.clone())
                .or_default()
                .extend(owned.log.iter().cloned());
        }
        self.dirty.insert(guild);
        self.owned.insert(guild, owned);
    }

    /// The nodes other than us, not declared down, that held `guild`'s log before: its
    /// owner and replica in the newest remembered ring where another node owned it (a
    /// ring where we owned it but never touched it tells nothing). Empty if no ring is
    /// remembered or we owned it in all of them.
    fn previous_holders(&self, guild: GuildId) -> BTreeSet<NodeId> {
        let Some(prev) = self
            .previous
            .iter()
            .filter_map(|p| p.placement(guild))
            .find(|p| p.owner != self.me)
        else {
            return BTreeSet::new();
        };
        std::iter::once(prev.owner)
            .chain(prev.replica)
            .filter(|n| *n != self.me && !self.down.contains(n))
            .collect()
    }

    /// A new owner asks for our copy of `guild`'s log: answer with whatever we hold,
    /// replicated events only (unreplicated ones were never acknowledged, and their
    /// origins send them again).
    fn on_log_request(&mut self, from: &NodeId, guild: GuildId) {
        // Our ring still makes us the owner: the asker's ring is newer, or its request
        // is stale. Either way it must not take over yet; it hears from us again when
        // our ring demotes us, with everything we acknowledged meanwhile.
        let still_owner = self.owned.contains_key(&guild) || self.handoffs.contains_key(&guild);
        if still_owner {
            self.asked_while_owner
                .entry(guild)
                .or_default()
                .insert(from.clone());
        }
        self.send_log(from, guild, still_owner);
    }

    /// Answers a log request with what we hold of `guild`.
    fn send_log(&mut self, to: &NodeId, guild: GuildId, still_owner: bool) {
        let (events, last_seq) = if let Some(o) = self.owned.get(&guild) {
            let events = o
                .log
                .iter()
                .filter(|e| e.seq <= o.replicated)
                .cloned()
                .collect();
            (events, o.replicated)
        } else if let Some(r) = self.replicas.get(&guild).or(self.retired.get(&guild)) {
            (r.log.iter().cloned().collect(), r.last)
        } else {
            (Vec::new(), GuildSeq(0))
        };
        self.fx.send(
            to.clone(),
            PeerFrame::LogTransfer {
                guild,
                events,
                last_seq,
                still_owner,
            },
        );
    }

    fn on_log_transfer(
        &mut self,
        from: &NodeId,
        guild: GuildId,
        events: Vec<GuildEvent>,
        last_seq: GuildSeq,
        still_owner: bool,
    ) {
        let capacity = self.config.log_capacity;
        let Some(h) = self.handoffs.get_mut(&guild) else {
            // Unasked: a demoted owner handing us its log before we need it. Kept (the
            // newest per guild, at most `max_handoffs` guilds) for when we take over.
            let room =
                self.offered.len() < self.config.max_handoffs || self.offered.contains_key(&guild);
            let newer = self.offered.get(&guild).is_none_or(|o| o.last < last_seq);
            if !still_owner && !self.owned.contains_key(&guild) && newer && room {
                let log: VecDeque<GuildEvent> = events
                    .into_iter()
                    .filter(|e| e.guild == guild && e.seq <= last_seq)
                    .collect();
                self.offered.insert(
                    guild,
                    ReplicaLog {
                        log,
                        last: last_seq,
                    },
                );
            }
            return;
        };
        // A holder that still sequences the guild stays awaited: its final transfer
        // comes when its ring demotes it.
        match h.waiting.get_mut(from) {
            Some(outstanding) => {
                *outstanding = outstanding.saturating_sub(1);
                if still_owner {
                    h.still_owner.insert(from.clone());
                } else {
                    h.still_owner.remove(from);
                    if *outstanding == 0 {
                        h.waiting.remove(from);
                    }
                }
            }
            // Not awaited from this node (handed unasked): its replicated events count.
            None if !still_owner => {}
            None => return,
        }
        h.last_seq = h.last_seq.max(last_seq);
        for e in events {
            // Only what the holder vouches for as replicated, of this guild.
            if e.guild == guild && e.seq <= last_seq {
                h.events.insert(e.seq, e);
            }
        }
        while h.events.len() > capacity {
            h.events.pop_first();
        }
        if h.waiting.is_empty() {
            self.finish_handoff(guild);
        }
    }

    /// Ends `guild`'s handoff with what it learned: the sequence continues after the
    /// highest replicated seq any holder reported, the log (and so the dedupe memory) is
    /// the newest contiguous run of transferred events ending there, waiting subscribers
    /// are served (a cursor it cannot serve gets a resync) and held forwards are
    /// sequenced in arrival order.
    fn finish_handoff(&mut self, guild: GuildId) {
        let Some(mut h) = self.handoffs.remove(&guild) else {
            return;
        };
        let Some(placement) = self.placements.placement(guild) else {
            for f in h.held {
                self.answer(f.origin, f.publish_id, guild, Err(PublishError::NoRing));
            }
            return;
        };
        let held = std::mem::take(&mut h.held);
        self.install(
            guild,
            OwnedGuild::promoted(h.into_log(), placement.replica.clone()),
        );
        if let Some(sub) = self.subscriptions.get_mut(&guild)
            && sub.owner.as_ref() == Some(&self.me)
        {
            sub.gap_request = None;
        }
        self.serve_peers(guild);
        for f in held {
            let origin = f.origin.clone();
            if let Err(e) = self.sequence(guild, f.origin, f.publish_id, f.event_type, f.body) {
                self.answer(origin, f.publish_id, guild, Err(e));
            }
        }
    }

    /// Points replication of an owned guild at `replica`; a new replica gets the whole
    /// log, so it can fill gaps if we die.
    fn set_replica(&mut self, guild: GuildId, replica: Option<NodeId>) {
        let Some(owned) = self.owned.get_mut(&guild) else {
            return;
        };
        if owned.replica == replica {
            return;
        }
        owned.replica = replica;
        match owned.replica.clone() {
            Some(r) => self
                .to_replicate
                .entry(r)
                .or_default()
                .extend(owned.log.iter().cloned()),
            // Fenced: what awaits a replica waits (its publishers time out).
            None if self.require_replica => {}
            None => {
                let last = owned.last_seq;
                self.commit(guild, last);
            }
        }
    }

    /// Sequences a publish in an owned guild (or answers a duplicate from memory).
    fn sequence(
        &mut self,
        guild: GuildId,
        origin: NodeId,
        publish_id: PublishId,
        event_type: Arc<str>,
        body: Bytes,
    ) -> Result<(), PublishError> {
        let placement = self
            .placements
            .placement(guild)
            .ok_or(PublishError::NoRing)?;
        let max_unreplicated = self.config.max_unreplicated as u64;
        if !self.ensure_owned(guild, &placement) {
            // Handoff under way: hold it, bounded like unreplicated events.
            let Some(h) = self.handoffs.get_mut(&guild) else {
                return Err(PublishError::Overloaded);
            };
            if h.held.len() as u64 >= max_unreplicated {
                return Err(PublishError::Overloaded);
            }
            h.held.push_back(HeldForward {
                origin,
                publish_id,
                event_type,
                body,
            });
            return Ok(());
        }
        let require_replica = self.require_replica;
        let Some(owned) = self.owned.get_mut(&guild) else {
            return Err(PublishError::Overloaded);
        };
        if owned.replica.is_none() && require_replica {
            return Err(PublishError::NoReplica);
        }
        if let Some(&seq) = owned.by_publish.get(&(origin.clone(), publish_id)) {
            let replicated = owned.replicated;
            self.fx.counters.duplicate_forwards += 1;
            if seq <= replicated {
                self.answer(origin, publish_id, guild, Ok(seq));
            }
            // Otherwise it is already awaiting the replica and is acknowledged then.
            return Ok(());
        }
        if owned.last_seq.0 - owned.replicated.0 >= max_unreplicated {
            return Err(PublishError::Overloaded);
        }
        let seq = owned.last_seq.next();
        owned.last_seq = seq;
        let event = GuildEvent {
            guild,
            seq,
            origin: origin.clone(),
            publish_id,
            event_type,
            body,
        };
        owned.by_publish.insert((origin.clone(), publish_id), seq);
        owned.awaiting.push_back((seq, origin, publish_id));
        owned.log.push_back(event.clone());
        match owned.replica.clone() {
            Some(r) => self.to_replicate.entry(r).or_default().push(event),
            None => self.commit(guild, seq),
        }
        Ok(())
    }

    /// The replica holds everything up to `upto`: acknowledge those publishes and mark
    /// the guild for fan-out.
    fn commit(&mut self, guild: GuildId, upto: GuildSeq) {
        let capacity = self.config.log_capacity;
        let Some(owned) = self.owned.get_mut(&guild) else {
            return;
        };
        let upto = upto.min(owned.last_seq);
        if upto <= owned.replicated {
            return;
        }
        owned.replicated = upto;
        let mut done = Vec::new();
        while owned
            .awaiting
            .front()
            .is_some_and(|(seq, _, _)| *seq <= upto)
        {
            if let Some(entry) = owned.awaiting.pop_front() {
                done.push(entry);
            }
        }
        owned.evict(capacity);
        self.dirty.insert(guild);
        for (seq, origin, publish_id) in done {
            self.answer(origin, publish_id, guild, Ok(seq));
        }
    }

    /// Tells the publisher of `publish_id` how it ended: this node's backend through an
    /// [`Output`], another origin through a frame.
    fn answer(
        &mut self,
        origin: NodeId,
        publish_id: PublishId,
        guild: GuildId,
        outcome: Result<GuildSeq, PublishError>,
    ) {
        if origin == self.me {
            self.settle(publish_id, guild, outcome);
            return;
        }
        let frame = match outcome {
            Ok(seq) => PeerFrame::ForwardAck {
                publish_id,
                guild,
                seq,
            },
            Err(error) => PeerFrame::ForwardReject {
                publish_id,
                guild,
                error,
            },
        };
        self.fx.send(origin, frame);
    }

    /// Ends one of this node's pending publishes (once: a late second answer is ignored).
    fn settle(
        &mut self,
        publish_id: PublishId,
        guild: GuildId,
        outcome: Result<GuildSeq, PublishError>,
    ) {
        if self.pending.remove(&publish_id).is_none() {
            return;
        }
        self.fx.push(match outcome {
            Ok(seq) => Output::AckPublisher {
                publish_id,
                guild,
                seq,
            },
            Err(error) => Output::RejectPublisher {
                publish_id,
                guild,
                error,
            },
        });
    }

    fn on_forward(
        &mut self,
        origin: NodeId,
        publish_id: PublishId,
        guild: GuildId,
        event_type: Arc<str>,
        body: Bytes,
        hops: u8,
    ) {
        match self.placements.placement(guild) {
            None => self.answer(origin, publish_id, guild, Err(PublishError::NoRing)),
            Some(p) if p.owner == self.me => {
                if let Err(e) = self.sequence(guild, origin.clone(), publish_id, event_type, body) {
                    self.answer(origin, publish_id, guild, Err(e));
                }
            }
            // Our ring names another owner: relay, a bounded number of times.
            Some(_) if hops >= self.config.max_forward_hops => {
                self.answer(
                    origin,
                    publish_id,
                    guild,
                    Err(PublishError::OwnerUnreachable),
                );
            }
            Some(p) => {
                if self.relayed.len() >= self.config.max_pending_publishes {
                    self.relayed.pop_front();
                }
                self.relayed.push_back(Relayed {
                    origin: origin.clone(),
                    publish_id,
                    guild,
                    event_type: Arc::clone(&event_type),
                    body: body.clone(),
                    relayed_to: p.owner.clone(),
                });
                self.fx.send(
                    p.owner,
                    PeerFrame::Forward {
                        origin,
                        publish_id,
                        guild,
                        event_type,
                        body,
                        hops: hops + 1,
                    },
                );
            }
        }
    }

    /// [`Self::serve_peer`] for every peer node subscribed to `guild`.
    fn serve_peers(&mut self, guild: GuildId) {
        let nodes: Vec<NodeId> = self
            .peers
            .get(&guild)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        for node in nodes {
            self.serve_peer(guild, &node);
        }
    }

    /// Serves peer `node`'s subscription to `guild` if we own it: "now" for a fresh
    /// one, else the gap after its cursor (with a resync first if the log falls short).
    fn serve_peer(&mut self, guild: GuildId, node: &NodeId) {
        let Some(placement) = self.placements.placement(guild) else {
            return;
        };
        if placement.owner != self.me {
            return;
        }
        let Some(cursor) = self.peers.get(&guild).and_then(|p| p.get(node)).copied() else {
            return;
        };
        if !self.ensure_owned(guild, &placement) {
            return; // Served when the handoff ends.
        }
        let Some(owned) = self.owned.get(&guild) else {
            return;
        };
        let replicated = owned.replicated;
        match cursor {
            None => self.fx.send(
                node.clone(),
                PeerFrame::Subscribed {
                    guild,
                    after_seq: replicated,
                },
            ),
            // Ahead of us: our sequence restarted (we were not the replica).
            Some(c) if c > replicated => self.fx.send(
                node.clone(),
                PeerFrame::Resync {
                    guild,
                    after_seq: replicated,
                },
            ),
            Some(c) => {
                let (resync, events) = owned.events_after(c);
                if let Some(after_seq) = resync {
                    self.fx
                        .send(node.clone(), PeerFrame::Resync { guild, after_seq });
                }
                if !events.is_empty() {
                    self.fx
                        .send(node.clone(), PeerFrame::FanoutBatch { events });
                }
            }
        }
        if let Some(c) = self.peers.get_mut(&guild).and_then(|p| p.get_mut(node)) {
            *c = Some(replicated);
        }
    }

    // --- replica side ---

    fn on_replicate(&mut self, from: &NodeId, events: Vec<GuildEvent>) {
        self.replicate_from(from, events, true);
    }

    /// Applies replicated events; with `hold`, keeps the fenced ones until the next ring
    /// change (our ring may be the stale one), else drops them.
    fn replicate_from(&mut self, from: &NodeId, events: Vec<GuildEvent>, hold: bool) {
        let capacity = self.config.log_capacity;
        let mut acks: BTreeMap<GuildId, GuildSeq> = BTreeMap::new();
        for event in events {
            let guild = event.guild;
            // Fencing: only the owner our ring names may replicate to us (and never to
            // a guild we own). An old owner whose ring is stale gets no ack, so it
            // cannot acknowledge events the new owner's log misses; it sends them
            // again, and once the rings agree they are acknowledged or re-routed.
            let from_owner = self
                .placements
                .placement(guild)
                .is_some_and(|p| &p.owner == from && p.owner != self.me);
            if !from_owner {
                // Held only while a third node owns it in our ring (ours may be stale and
                // the sender the new owner). If we own it ourselves, the sender is a
                // rival owner on a stale ring: never apply its events.
                let ours = self.owned.contains_key(&guild) || self.handoffs.contains_key(&guild);
                let held = self.fenced.entry(from.clone()).or_default();
                if hold && !ours && held.len() < self.config.max_unreplicated {
                    held.push(event);
                } else {
                    self.fx.counters.fenced += 1;
                }
                continue;
            }
            let replica = self.replicas.entry(guild).or_default();
            let diverged = event.seq <= replica.last
                && replica.log.iter().any(|e| {
                    e.seq == event.seq
                        && (e.origin != event.origin || e.publish_id != event.publish_id)
                });
            if diverged {
                // An old owner's unacknowledged tail: the current owner's log wins.
                replica.log.retain(|e| e.seq < event.seq);
                replica.last = GuildSeq(event.seq.0 - 1);
            }
            if event.seq > replica.last {
                if event.seq != replica.last.next() {
                    // We missed events (we just became the replica): our copy starts here.
                    replica.log.clear();
                }
                replica.last = event.seq;
                replica.log.push_back(event);
                while replica.log.len() > capacity {
                    replica.log.pop_front();
                }
            }
            acks.insert(guild, replica.last);
        }
        if !acks.is_empty() {
            self.fx.send(
                from.clone(),
                PeerFrame::ReplicateAck {
                    acks: acks.into_iter().collect(),
                },
            );
        }
    }

    // --- subscriber side ---

    /// Subscribes this node's sessions in `guild` to its current owner.
    fn subscribe_to_owner(&mut self, guild: GuildId) {
        let Some(placement) = self.placements.placement(guild) else {
            return;
        };
        if placement.owner == self.me {
            // During a handoff the cursor stays as it is; the flush after the handoff
            // delivers from it (or resyncs).
            let replicated = self
                .ensure_owned(guild, &placement)
                .then(|| self.owned.get(&guild).map(|o| o.replicated))
                .flatten();
            if let Some(sub) = self.subscriptions.get_mut(&guild) {
                sub.owner = Some(self.me.clone());
                if let Some(r) = replicated {
                    sub.last_delivered.get_or_insert(r);
                }
                sub.gap_request = None;
            }
            // Delivers what we hold beyond the cursor at the next flush.
            self.dirty.insert(guild);
        } else if let Some(sub) = self.subscriptions.get_mut(&guild) {
            sub.owner = Some(placement.owner.clone());
            sub.gap_request = None;
            let after_seq = sub.last_delivered;
            self.fx
                .send(placement.owner, PeerFrame::Subscribe { guild, after_seq });
        }
    }

    fn on_batch(&mut self, from: &NodeId, events: Vec<GuildEvent>) {
        let capacity = self.config.max_out_of_order;
        let mut touched = BTreeSet::new();
        for event in events {
            let guild = event.guild;
            let Some(sub) = subscription_from(&mut self.subscriptions, guild, from) else {
                self.fx.counters.stray_events += 1;
                continue;
            };
            touched.insert(guild);
            match sub.last_delivered {
                Some(last) if event.seq <= last => self.fx.counters.duplicates_dropped += 1,
                Some(last) if event.seq == last.next() => {
                    sub.last_delivered = Some(event.seq);
                    sub.gap_request = None;
                    self.fx.push(Output::DeliverLocal { event });
                    deliver_ready(sub, &mut self.fx);
                }
                _ => {
                    if sub.early.contains_key(&event.seq) {
                        self.fx.counters.duplicates_dropped += 1;
                    } else if sub.early.len() < capacity {
                        sub.early.insert(event.seq, event);
                    }
                    // Else dropped: the gap fill brings it again.
                }
            }
        }
        for guild in touched {
            let Some(sub) = self.subscriptions.get_mut(&guild) else {
                continue;
            };
            let Some(last) = sub.last_delivered else {
                continue;
            };
            if sub.early.is_empty() {
                continue;
            }
            let ask = match &mut sub.gap_request {
                None => true,
                Some(n) => {
                    *n += 1;
                    *n > GAP_RETRY_BATCHES
                }
            };
            if ask {
                sub.gap_request = Some(0);
                self.fx.counters.gap_requests += 1;
                self.fx.send(
                    from.clone(),
                    PeerFrame::Subscribe {
                        guild,
                        after_seq: Some(last),
                    },
                );
            }
        }
    }

    // --- origin side ---

    fn send_forward(
        &mut self,
        to: NodeId,
        publish_id: PublishId,
        guild: GuildId,
        event_type: Arc<str>,
        body: Bytes,
    ) {
        let origin = self.me.clone();
        self.fx.send(
            to,
            PeerFrame::Forward {
                origin,
                publish_id,
                guild,
                event_type,
                body,
                hops: 0,
            },
        );
    }

    /// Sends pending publish `id` to its guild's current owner if that changed (or
    /// always, with `again`).
    fn route_pending(&mut self, id: PublishId, again: bool) {
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        let guild = p.guild;
        let Some(placement) = self.placements.placement(guild) else {
            return;
        };
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        let owner = placement.owner;
        if owner == p.sent_to && !again {
            return;
        }
        p.sent_to = owner.clone();
        p.marked = false;
        let (guild, event_type, body) = (p.guild, Arc::clone(&p.event_type), p.body.clone());
        if owner == self.me {
            let me = self.me.clone();
            if let Err(e) = self.sequence(guild, me.clone(), id, event_type, body) {
                self.answer(me, id, guild, Err(e));
            }
        } else {
            self.send_forward(owner, id, guild, event_type, body);
        }
    }
}

/// Our subscription to `guild`, if `from` is the owner we subscribed to.
fn subscription_from<'a>(
    subscriptions: &'a mut BTreeMap<GuildId, Subscription>,
    guild: GuildId,
    from: &NodeId,
) -> Option<&'a mut Subscription> {
    subscriptions
        .get_mut(&guild)
        .filter(|s| s.owner.as_ref() == Some(from))
}

/// Delivers the early events of `sub` that are now in order.
fn deliver_ready(sub: &mut Subscription, fx: &mut Effects) {
    let Some(mut last) = sub.last_delivered else {
        return;
    };
    while let Some(entry) = sub.early.first_entry() {
        let seq = *entry.key();
        if seq <= last {
            entry.remove();
            fx.counters.duplicates_dropped += 1;
        } else if seq == last.next() {
            fx.push(Output::DeliverLocal {
                event: entry.remove(),
            });
            last = seq;
            sub.gap_request = None;
        } else {
            break;
        }
    }
    sub.last_delivered = Some(last);
}

/// Delivers an owned guild's replicated events past the local cursor.
fn deliver_from_log(guild: GuildId, sub: &mut Subscription, owned: &OwnedGuild, fx: &mut Effects) {
    let last = *sub.last_delivered.get_or_insert(owned.replicated);
    if last > owned.replicated {
        // Our sequence restarted (we became owner without the replica log).
        sub.last_delivered = Some(owned.replicated);
        fx.counters.resyncs += 1;
        fx.push(Output::Resync { guild });
        return;
    }
    let (resync, events) = owned.events_after(last);
    if resync.is_some() {
        fx.counters.resyncs += 1;
        fx.push(Output::Resync { guild });
    }
    for event in events {
        sub.last_delivered = Some(event.seq);
        fx.push(Output::DeliverLocal { event });
    }
    sub.early.clear();
}
