//! # Cross-node publishing: the sans-IO cluster router
//!
//! One [`ClusterRouter`] per node decides, for every guild event, who sequences it, who
//! must hold a copy before the publisher hears "ok", and which peer nodes get it. It has
//! no sockets, tasks or clocks: inputs are method calls, outputs are queued [`Output`]s
//! that the caller drains with [`ClusterRouter::poll_output`]. The gateway's peer-link
//! task owns it, moves each [`PeerFrame`] over the tonic stream to its peer, and hands
//! local deliveries to the session layer.
//!
//! ## Roles, per guild
//! - **Owner** (the ring's first node for the guild's partition): assigns the guild
//!   sequence, keeps a bounded log of recent events (the gap-fill source), replicates
//!   each event to the replica, acknowledges the publisher once the replica holds it,
//!   then sends one [`PeerFrame::FanoutBatch`] per subscribed peer node per flush (never
//!   one per session).
//! - **Replica** (the ring's second node): keeps a copy of the owner's log, so that when
//!   the owner dies it continues the sequence and fills subscribers' gaps from it.
//! - **Subscriber** (any node with local sessions in the guild): subscribes to the owner
//!   with its cursor, delivers events in sequence order exactly once, buffers early ones
//!   and re-requests gaps.
//! - **Origin** (the node a backend published on): keeps each publish until the owner
//!   acknowledges it, and forwards it again to a new owner after a ring change.
//!
//! ## Main types
//! - [`ClusterRouter`]: the state machine. [`ClusterConfig`] sizes every bound.
//! - [`Placements`]: where a guild lives (owner and replica). Implemented for
//!   [`concord_ring::Ring`] (and `Arc` of anything that implements it), so the gateway
//!   passes its ring snapshot as is.
//! - [`PeerFrame`]: what nodes say to each other; [`GuildEvent`]: one sequenced event.
//! - [`Output`]: frames to send, events to deliver locally, publisher acks and rejections,
//!   resync notices.
//! - [`PublishError`]: why a publish was refused (all transient except a reused id).
//! - [`ClusterCounters`]: frames sent by kind, events per batch, duplicates, gaps.
//!
//! ## Call order (one task owns the router)
//! 1. `ClusterRouter::new(me, config, placements)`.
//! 2. Feed inputs as they come: [`ClusterRouter::publish`] from a local backend,
//!    [`ClusterRouter::peer_frame`] for each frame a peer sent,
//!    [`ClusterRouter::local_subscribe`] / [`ClusterRouter::local_unsubscribe`] when the
//!    first session joins or the last leaves a guild on this node (per session calls are
//!    fine: the router counts), [`ClusterRouter::ring_changed`] with every new ring, and
//!    [`ClusterRouter::peer_down`] when membership declares a node dead.
//! 3. After a burst of inputs (for example, after draining the input channel), call
//!    [`ClusterRouter::flush`]: it sends the pending replication and fan-out batches, at
//!    most one of each per peer node.
//! 4. Drain [`ClusterRouter::poll_output`] after every call, before the next input.
//!
//! ## Guarantees it keeps (given FIFO links, as a tonic stream is)
//! - An event is fanned out and acknowledged only after the guild's replica holds it
//!   (or at once when the ring has no replica), so every acknowledged or delivered event
//!   survives the crash of the owner.
//! - Subscribers deliver each guild's events in sequence order, each sequence once. A
//!   gap is re-requested from the owner's log; if the log no longer reaches back, the
//!   node gets [`Output::Resync`] and continues from the oldest event the owner has.
//! - A publish forwarded twice (retry after an owner change) is sequenced once: owners
//!   remember `(origin node, publish id) -> seq` for everything in their log, and a
//!   promoted replica rebuilds that map from the replicated log.
//!
//! - Forwards survive owner changes: on a ring change, the origin sends each pending
//!   publish to the new owner, and a node that relayed a forward on a ring that turned
//!   out stale routes it again by the new ring.
//! - The sequence survives an owner change that does not promote the replica (a ring
//!   where another node comes first, or a graceful rebalance when a node joins): the
//!   router remembers the placements before the last [`ClusterRouter::ring_changed`],
//!   and a node that becomes owner of a guild without holding its log (found when the
//!   ring changes, or lazily on the guild's first forward or subscribe) sends
//!   [`PeerFrame::LogRequest`] to the guild's previous owner and replica (minus nodes
//!   declared down by [`ClusterRouter::peer_down`]). Each answers
//!   [`PeerFrame::LogTransfer`] with the replicated events it holds as owner, replica,
//!   or as a holder retired by that last ring change (possibly none). Meanwhile
//!   forwards for the guild are held (at most `max_unreplicated`, then
//!   [`PublishError::Overloaded`]) and subscribes wait. Once every asked node answered
//!   or was declared down, or after a few [`ClusterRouter::resend_stale`] ticks (each
//!   of which asks again), the new owner continues after the highest replicated seq it
//!   learned, keeps the newest contiguous run of transferred events as its log (and
//!   rebuilds the dedupe map from it), replicates that log to its replica, serves the
//!   waiting subscribers (a cursor it cannot serve gets [`Output::Resync`]) and
//!   sequences the held forwards. Handoffs under way are capped by
//!   [`ClusterConfig::max_handoffs`].
//!
//! ## What it does not do
//! - No IO, no timers: it never retries on its own. A lost frame is repaired by the next
//!   frame on the same link (gap detection), by the next ring change, or by
//!   [`ClusterRouter::resend_stale`], which the shell calls on a timer (forwards still
//!   pending one tick later are sent again). The shell decides when a peer is down.
//! - The log handoff is exact only if the previous holders answer with everything that
//!   was acknowledged. An old owner whose ring still makes it the owner answers
//!   `still_owner`, and the new owner waits for its final transfer (sent when its ring
//!   demotes it, or the others are asked again if it dies first); a demoted owner also
//!   pushes its log to the new owner unasked; the holders asked are those of the newest
//!   of the last four rings where another node owned the guild, plus the current
//!   replica; our own replica copy only seeds the handoff. Replicas fence: they hold
//!   back replication from a node their ring does not name as owner, and truncate a
//!   diverged tail. It still falls back to a fresh (or shorter) sequence, with
//!   [`Output::Resync`] for subscribers ahead of it, when every holder is gone, a silent
//!   (not `still_owner`) holder outlasts the resend ticks, or more than `max_handoffs`
//!   guilds are in handoff at once (counted as `fresh_sequences` and `handoff_timeouts`).
//!   Open: under continuous publishing a rolling restart can still fork a sequence in
//!   some interleavings (the ignored reshuffling simulation in the tests).
//! - No per-session work: it delivers each event once per node; sessions, intents and
//!   `s` numbers belong to [`crate::TopicTable`] and [`crate::SessionLog`].
//! - No encoding: [`PeerFrame`] is a Rust value; the peer transport maps it to protobuf.

mod frame;
mod router;

#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use concord_protocol::GuildId;
/// A node's id: the same `Arc<str>` newtype the ring and membership use, so a ring
/// lookup result goes into the router without conversion.
pub use concord_ring::NodeId;
use concord_ring::Ring;

pub use frame::{FrameKind, GuildEvent, PeerFrame};
pub use router::{ClusterRouter, Output};

/// A position in one guild's sequence. The first event of a guild is 1; 0 means "before
/// the first event".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuildSeq(pub u64);

impl GuildSeq {
    /// The position after this one.
    #[must_use]
    pub fn next(self) -> GuildSeq {
        GuildSeq(self.0 + 1)
    }
}

impl std::fmt::Display for GuildSeq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The caller's id for one publish, unique among the publishes of its origin node,
/// across its restarts too (a counter that starts from the node's generation; see the
/// gateway's `first_publish_id`). The pair (origin node, publish id) identifies a publish
/// in the whole cluster, which is what makes a re-sent forward idempotent: an owner that
/// sees the pair again answers with the seq it already gave, so a reused id is
/// acknowledged and never delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishId(pub u64);

/// The caller's id for one [`ClusterRouter::fetch`], unique among this node's fetches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FetchId(pub u64);

/// Where one guild lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The node that sequences its events.
    pub owner: NodeId,
    /// The node that holds a copy of its log, if the ring has more than one node.
    pub replica: Option<NodeId>,
}

/// Guild placement, computed from the ring. Must be a pure function of the snapshot, so
/// nodes with the same ring agree.
pub trait Placements {
    /// The owner and replica of `guild`, or `None` while there is no ring (no active
    /// member).
    fn placement(&self, guild: GuildId) -> Option<Placement>;
}

impl Placements for Ring {
    fn placement(&self, guild: GuildId) -> Option<Placement> {
        let list = self.preference_list(self.partition_for_guild(guild.0));
        Some(Placement {
            owner: list.owner().clone(),
            replica: list.replicas().next().cloned(),
        })
    }
}

impl<T: Placements + ?Sized> Placements for Arc<T> {
    fn placement(&self, guild: GuildId) -> Option<Placement> {
        (**self).placement(guild)
    }
}

impl<T: Placements> Placements for Option<T> {
    fn placement(&self, guild: GuildId) -> Option<Placement> {
        self.as_ref().and_then(|p| p.placement(guild))
    }
}

/// The bounds of one router. Every queue and log it keeps is capped by one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Events an owner (and a replica) keeps per guild for gap fills. Events not yet
    /// replicated are never evicted; they are capped by `max_unreplicated` instead.
    pub log_capacity: usize,
    /// Events an owner holds per guild waiting for the replica; past it, publishes to
    /// that guild are shed with [`PublishError::Overloaded`].
    pub max_unreplicated: usize,
    /// Publishes this node originated that await their owner's acknowledgement; past it,
    /// [`ClusterRouter::publish`] sheds with [`PublishError::Overloaded`].
    pub max_pending_publishes: usize,
    /// Early events a subscriber buffers per guild while it waits for a gap fill; later
    /// ones are dropped and come again with the fill.
    pub max_out_of_order: usize,
    /// How many nodes may relay one forward (stale rings can disagree on the owner for a
    /// moment); past it the publish is rejected so the publisher retries.
    pub max_forward_hops: u8,
    /// Guilds whose log handoff (a new owner collecting the log from the previous
    /// placement) may be under way at once; past it, a newly owned guild starts a fresh
    /// sequence as if nobody held its log.
    pub max_handoffs: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            log_capacity: 1024,
            max_unreplicated: 256,
            max_pending_publishes: 4096,
            max_out_of_order: 1024,
            max_forward_hops: 2,
            max_handoffs: 4096,
        }
    }
}

/// Why a publish was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Too many publishes await acknowledgement (here, or at the guild's owner waiting
    /// for its replica). Nothing changed; transient: shed or retry later.
    #[error("overloaded: too many publishes await acknowledgement")]
    Overloaded,
    /// There is no ring yet (no active member), so the guild has no owner. Nothing
    /// changed; transient: retry once the node has joined.
    #[error("no ring: the guild has no owner yet")]
    NoRing,
    /// The publish id is already pending on this node. Nothing changed; permanent for
    /// this id (the caller's id counter is broken).
    #[error("publish id {0:?} is already pending")]
    DuplicatePublishId(PublishId),
    /// The publish went through more relays than [`ClusterConfig::max_forward_hops`]
    /// while rings disagreed. It was not sequenced; transient: retry.
    #[error("the owner could not be reached while rings disagree")]
    OwnerUnreachable,
    /// The guild's owner has no replica to hold the event (it is cut off from the rest
    /// of the cluster, see [`ClusterRouter::require_replica`]). It was not sequenced;
    /// transient: retry (another node may own the guild).
    #[error("the guild's owner has no replica")]
    NoReplica,
}

/// What the router has done since it was made, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterCounters {
    /// Frames queued for peers, indexed by [`FrameKind::index`].
    pub frames_sent: [u64; FrameKind::COUNT],
    /// Events carried by fan-out batches (divide by the `FanoutBatch` frame count for
    /// events per batch).
    pub fanout_events: u64,
    /// The largest fan-out batch so far, in events.
    pub max_batch_events: u64,
    /// Events a subscriber received again (sequence at or below what it delivered).
    pub duplicates_dropped: u64,
    /// Gaps a subscriber re-requested from the owner.
    pub gap_requests: u64,
    /// Resyncs: gaps the owner's log could no longer fill.
    pub resyncs: u64,
    /// Forwards an owner answered from its memory instead of sequencing them again.
    pub duplicate_forwards: u64,
    /// Events dropped because this node no longer wanted them (no local session, or the
    /// sender is not the owner this node knows).
    pub stray_events: u64,
    /// Replicated events refused because the sender is not the guild's owner in this
    /// node's ring (fencing a stale owner).
    pub fenced: u64,
    /// Guilds this node began to own with a fresh sequence although a previous ring
    /// existed (nobody to ask, or past `max_handoffs`): subscribers ahead resync.
    pub fresh_sequences: u64,
    /// Log handoffs that ended on the tick bound with holders still silent.
    pub handoff_timeouts: u64,
}

impl ClusterCounters {
    /// Frames of `kind` queued for peers.
    pub fn sent(&self, kind: FrameKind) -> u64 {
        self.frames_sent[kind.index()]
    }
}
