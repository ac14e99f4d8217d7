//! What nodes say to each other about guild events.

use std::sync::Arc;

use bytes::Bytes;

use super::{FetchId, GuildId, GuildSeq, NodeId, PublishId};
use crate::continuity::SessionFrame;

/// One sequenced guild event, as logged, replicated and fanned out. Cheap to clone (the
/// name and body are shared).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuildEvent {
    /// The guild it was published to.
    pub guild: GuildId,
    /// Its position in the guild's sequence.
    pub seq: GuildSeq,
    /// The node a backend published it on.
    pub origin: NodeId,
    /// The origin's id for the publish (with `origin`, the idempotency key).
    pub publish_id: PublishId,
    /// The dispatch name (`t`).
    pub event_type: Arc<str>,
    /// The dispatch payload (`d`), serialised once.
    pub body: Bytes,
}

/// A frame on a peer link. Links are FIFO per (sender, receiver) pair; nothing else is
/// assumed (frames can be lost when a link breaks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerFrame {
    /// Origin (or a relay) -> owner: sequence this publish.
    Forward {
        /// The node the backend published on; acknowledgements go there.
        origin: NodeId,
        /// The origin's id for the publish.
        publish_id: PublishId,
        /// The guild.
        guild: GuildId,
        /// The dispatch name.
        event_type: Arc<str>,
        /// The payload.
        body: Bytes,
        /// How many nodes relayed it because their ring named another owner.
        hops: u8,
    },
    /// Owner -> origin: the publish is sequenced and replicated.
    ForwardAck {
        /// The origin's id for the publish.
        publish_id: PublishId,
        /// The guild.
        guild: GuildId,
        /// The sequence it got.
        seq: GuildSeq,
    },
    /// Owner (or relay) -> origin: the publish was not sequenced; tell the publisher.
    ForwardReject {
        /// The origin's id for the publish.
        publish_id: PublishId,
        /// The guild.
        guild: GuildId,
        /// Why.
        error: super::PublishError,
    },
    /// Owner -> replica: append these events (any guilds, each guild in order).
    Replicate {
        /// The events.
        events: Vec<GuildEvent>,
    },
    /// Replica -> owner: for each guild, the highest sequence now held.
    ReplicateAck {
        /// `(guild, highest seq held)` pairs.
        acks: Vec<(GuildId, GuildSeq)>,
    },
    /// Subscriber -> owner: send me this guild's events after `after_seq`, then every new
    /// one. `None` means "from now on" (answered with [`PeerFrame::Subscribed`]).
    Subscribe {
        /// The guild.
        guild: GuildId,
        /// The last sequence the subscriber delivered, if it has one.
        after_seq: Option<GuildSeq>,
    },
    /// Owner -> subscriber: answer to a `Subscribe` from now on; deliver what follows
    /// `after_seq`.
    Subscribed {
        /// The guild.
        guild: GuildId,
        /// The owner's last replicated sequence when the subscription began.
        after_seq: GuildSeq,
    },
    /// Subscriber -> owner: this node has no session in the guild any more.
    Unsubscribe {
        /// The guild.
        guild: GuildId,
    },
    /// Owner -> subscriber: events of one or more guilds, each guild in sequence order.
    /// One frame per subscribed node per flush.
    FanoutBatch {
        /// The events.
        events: Vec<GuildEvent>,
    },
    /// Owner -> subscriber: the log no longer covers the subscriber's cursor (or the
    /// owner's sequence restarted); continue after `after_seq`. Events that fell out of
    /// the log are lost for this node, so its sessions must be told.
    Resync {
        /// The guild.
        guild: GuildId,
        /// Where the subscriber's cursor now stands.
        after_seq: GuildSeq,
    },
    /// New owner -> a member of the guild's previous placement (old owner, old
    /// replica): send me what you hold of this guild's log. Sent by a node that became
    /// the owner without holding the log, so it continues the sequence instead of
    /// restarting it.
    LogRequest {
        /// The guild.
        guild: GuildId,
    },
    /// Answer to a [`PeerFrame::LogRequest`]: the replicated events this node holds for
    /// the guild (as owner, replica, or retired holder), oldest first, possibly none.
    LogTransfer {
        /// The guild.
        guild: GuildId,
        /// The events, in sequence order.
        events: Vec<GuildEvent>,
        /// The highest sequence this node knows was replicated (0 if it holds nothing).
        last_seq: GuildSeq,
        /// The answering node's ring still makes it the guild's owner: the asker must
        /// not take over yet (a final transfer follows when the answerer is demoted).
        still_owner: bool,
    },
    /// Any node -> the guild's owner: send me the replicated events after `after` that
    /// you hold (a resumed session's replay is rebuilt from them).
    LogFetch {
        /// The guild.
        guild: GuildId,
        /// Send what follows this seq.
        after: GuildSeq,
        /// The asker's id for the fetch.
        fetch: FetchId,
    },
    /// Answer to [`PeerFrame::LogFetch`]: the replicated events held after `after`, in
    /// order (possibly none, possibly starting later than asked).
    LogFetched {
        /// The guild.
        guild: GuildId,
        /// The asker's id.
        fetch: FetchId,
        /// The events.
        events: Vec<GuildEvent>,
    },
    /// Session continuity (replicas, resumes, releases): not the router's; the node's
    /// router task handles these with [`crate::continuity`].
    Session(SessionFrame),
}

/// The kinds of [`PeerFrame`], for counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrameKind {
    /// [`PeerFrame::Forward`].
    Forward,
    /// [`PeerFrame::ForwardAck`].
    ForwardAck,
    /// [`PeerFrame::ForwardReject`].
    ForwardReject,
    /// [`PeerFrame::Replicate`].
    Replicate,
    /// [`PeerFrame::ReplicateAck`].
    ReplicateAck,
    /// [`PeerFrame::Subscribe`].
    Subscribe,
    /// [`PeerFrame::Subscribed`].
    Subscribed,
    /// [`PeerFrame::Unsubscribe`].
    Unsubscribe,
    /// [`PeerFrame::FanoutBatch`].
    FanoutBatch,
    /// [`PeerFrame::Resync`].
    Resync,
    /// [`PeerFrame::LogRequest`].
    LogRequest,
    /// [`PeerFrame::LogTransfer`].
    LogTransfer,
    /// [`PeerFrame::LogFetch`].
    LogFetch,
    /// [`PeerFrame::LogFetched`].
    LogFetched,
    /// [`PeerFrame::Session`].
    Session,
}

impl FrameKind {
    /// How many kinds there are.
    pub const COUNT: usize = 15;

    /// Every kind, in [`FrameKind::index`] order.
    pub const ALL: [FrameKind; FrameKind::COUNT] = [
        FrameKind::Forward,
        FrameKind::ForwardAck,
        FrameKind::ForwardReject,
        FrameKind::Replicate,
        FrameKind::ReplicateAck,
        FrameKind::Subscribe,
        FrameKind::Subscribed,
        FrameKind::Unsubscribe,
        FrameKind::FanoutBatch,
        FrameKind::Resync,
        FrameKind::LogRequest,
        FrameKind::LogTransfer,
        FrameKind::LogFetch,
        FrameKind::LogFetched,
        FrameKind::Session,
    ];

    /// A dense index, for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// A metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameKind::Forward => "forward",
            FrameKind::ForwardAck => "forward_ack",
            FrameKind::ForwardReject => "forward_reject",
            FrameKind::Replicate => "replicate",
            FrameKind::ReplicateAck => "replicate_ack",
            FrameKind::Subscribe => "subscribe",
            FrameKind::Subscribed => "subscribed",
            FrameKind::Unsubscribe => "unsubscribe",
            FrameKind::FanoutBatch => "fanout_batch",
            FrameKind::Resync => "resync",
            FrameKind::LogRequest => "log_request",
            FrameKind::LogTransfer => "log_transfer",
            FrameKind::LogFetch => "log_fetch",
            FrameKind::LogFetched => "log_fetched",
            FrameKind::Session => "session",
        }
    }
}

impl PeerFrame {
    /// This frame's kind.
    pub fn kind(&self) -> FrameKind {
        match self {
            PeerFrame::Forward { .. } => FrameKind::Forward,
            PeerFrame::ForwardAck { .. } => FrameKind::ForwardAck,
            PeerFrame::ForwardReject { .. } => FrameKind::ForwardReject,
            PeerFrame::Replicate { .. } => FrameKind::Replicate,
            PeerFrame::ReplicateAck { .. } => FrameKind::ReplicateAck,
            PeerFrame::Subscribe { .. } => FrameKind::Subscribe,
            PeerFrame::Subscribed { .. } => FrameKind::Subscribed,
            PeerFrame::Unsubscribe { .. } => FrameKind::Unsubscribe,
            PeerFrame::FanoutBatch { .. } => FrameKind::FanoutBatch,
            PeerFrame::Resync { .. } => FrameKind::Resync,
            PeerFrame::LogRequest { .. } => FrameKind::LogRequest,
            PeerFrame::LogTransfer { .. } => FrameKind::LogTransfer,
            PeerFrame::LogFetch { .. } => FrameKind::LogFetch,
            PeerFrame::LogFetched { .. } => FrameKind::LogFetched,
            PeerFrame::Session(_) => FrameKind::Session,
        }
    }
}
