//! [`PeerFrame`] <-> protobuf, in one place. Network bytes are never trusted: a frame
//! that does not map to a router frame is a [`WireError`], and the link that sent it is
//! dropped.

use std::sync::Arc;

use bytes::Bytes;
use concord_protocol::{GuildId, SessionId, UserId};
use concord_router::Topic;
use concord_router::cluster::{
    FetchId, GuildEvent, GuildSeq, NodeId, PeerFrame, PublishError, PublishId,
};
use concord_router::continuity::{
    Entry, ResumeRefusal, SessionFrame, SessionIdentity, SessionOp, SessionSnapshot, Takeover,
};

use crate::grpc::pb;
use pb::peer_frame::Kind;

/// A peer sent a frame that is not a router frame. Nothing was applied; permanent for
/// that message (the link is dropped and re-dialled).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The `oneof` was empty (or a kind this build does not know).
    #[error("peer frame has no kind")]
    MissingKind,
    /// A node id was empty.
    #[error("peer frame names an empty node id")]
    EmptyNodeId,
    /// A `hops` count does not fit in a byte.
    #[error("peer frame hop count {0} is out of range")]
    Hops(u32),
    /// An unknown or unspecified publish error code.
    #[error("peer frame carries unknown publish error code {0}")]
    ErrorCode(i32),
    /// A session id that is not 16 bytes.
    #[error("peer frame carries a session id of {0} bytes (16 expected)")]
    SessionId(usize),
    /// A session message without a part it cannot do without (identity, topic, entry,
    /// op kind, or a known takeover or refusal code).
    #[error("peer frame lacks its {0}")]
    Missing(&'static str),
}

/// A batch of frames as one message.
pub fn encode_batch(frames: Vec<PeerFrame>) -> pb::PeerMessage {
    pb::PeerMessage {
        frames: frames.into_iter().map(encode).collect(),
    }
}

/// The frames of one message.
///
/// # Errors
/// The first frame that does not map (see [`WireError`]); nothing of the message is used.
pub fn decode_batch(message: pb::PeerMessage) -> Result<Vec<PeerFrame>, WireError> {
    message.frames.into_iter().map(decode).collect()
}

/// One frame to protobuf.
pub fn encode(frame: PeerFrame) -> pb::PeerFrame {
    let kind = match frame {
        PeerFrame::Forward {
            origin,
            publish_id,
            guild,
            event_type,
            body,
            hops,
        } => Kind::Forward(pb::Forward {
            origin: origin.as_str().to_owned(),
            publish_id: publish_id.0,
            guild_id: guild.0,
            event_type: event_type.to_string(),
            body: body.to_vec(),
            hops: u32::from(hops),
        }),
        PeerFrame::ForwardAck {
            publish_id,
            guild,
            seq,
        } => Kind::ForwardAck(pb::ForwardAck {
            publish_id: publish_id.0,
            guild_id: guild.0,
            seq: seq.0,
        }),
        PeerFrame::ForwardReject {
            publish_id,
            guild,
            error,
        } => Kind::ForwardReject(pb::ForwardReject {
            publish_id: publish_id.0,
            guild_id: guild.0,
            error: encode_error(error) as i32,
        }),
        PeerFrame::Replicate { events } => Kind::Replicate(pb::Replicate {
            events: events.into_iter().map(encode_event).collect(),
        }),
        PeerFrame::ReplicateAck { acks } => Kind::ReplicateAck(pb::ReplicateAck {
            acks: acks
                .into_iter()
                .map(|(g, s)| pb::GuildCursor {
                    guild_id: g.0,
                    seq: s.0,
                })
                .collect(),
        }),
        PeerFrame::Subscribe { guild, after_seq } => Kind::Subscribe(pb::Subscribe {
            guild_id: guild.0,
            after_seq: after_seq.map(|s| s.0),
        }),
        PeerFrame::Subscribed { guild, after_seq } => Kind::Subscribed(pb::Subscribed {
            guild_id: guild.0,
            after_seq: after_seq.0,
        }),
        PeerFrame::Unsubscribe { guild } => {
            Kind::Unsubscribe(pb::Unsubscribe { guild_id: guild.0 })
        }
        PeerFrame::FanoutBatch { events } => Kind::FanoutBatch(pb::FanoutBatch {
            events: events.into_iter().map(encode_event).collect(),
        }),
        PeerFrame::Resync { guild, after_seq } => Kind::Resync(pb::Resync {
            guild_id: guild.0,
            after_seq: after_seq.0,
        }),
        PeerFrame::LogRequest { guild } => Kind::LogRequest(pb::LogRequest { guild_id: guild.0 }),
        PeerFrame::LogTransfer {
            guild,
            events,
            last_seq,
            still_owner,
        } => Kind::LogTransfer(pb::LogTransfer {
            guild_id: guild.0,
            events: events.into_iter().map(encode_event).collect(),
            last_seq: last_seq.0,
            still_owner,
        }),
        PeerFrame::LogFetch {
            guild,
            after,
            fetch,
        } => Kind::LogFetch(pb::LogFetch {
            guild_id: guild.0,
            after: after.0,
            fetch: fetch.0,
        }),
        PeerFrame::LogFetched {
            guild,
            fetch,
            events,
        } => Kind::LogFetched(pb::LogFetched {
            guild_id: guild.0,
            fetch: fetch.0,
            events: events.into_iter().map(encode_event).collect(),
        }),
        PeerFrame::Session(f) => encode_session(f),
    };
    pb::PeerFrame { kind: Some(kind) }
}

fn encode_session(frame: SessionFrame) -> Kind {
    match frame {
        SessionFrame::Ops { batch, ops } => Kind::SessionOps(pb::SessionOps {
            batch,
            ops: ops.into_iter().map(encode_op).collect(),
        }),
        SessionFrame::OpsAck { batch } => Kind::SessionOpsAck(pb::SessionOpsAck { batch }),
        SessionFrame::ResumeRequest {
            request,
            session,
            user,
            client_seq,
        } => Kind::ResumeRequest(pb::ResumeRequest {
            request,
            session_id: sid(session),
            client_seq,
            user_id: user.0,
        }),
        SessionFrame::ResumeAnswer { request, answer } => {
            let (snapshot, takeover, refusal) = match answer {
                Ok((snap, t)) => (
                    Some(encode_snapshot(snap)),
                    match t {
                        Takeover::Migrated => pb::Takeover::Migrated,
                        Takeover::Promoted => pb::Takeover::Promoted,
                    },
                    pb::ResumeRefusal::None,
                ),
                Err(r) => (
                    None,
                    pb::Takeover::Unspecified,
                    match r {
                        ResumeRefusal::Unknown => pb::ResumeRefusal::Unknown,
                        ResumeRefusal::Ahead => pb::ResumeRefusal::Ahead,
                        ResumeRefusal::TooOld => pb::ResumeRefusal::TooOld,
                    },
                ),
            };
            Kind::ResumeAnswer(pb::ResumeAnswer {
                request,
                snapshot,
                takeover: takeover as i32,
                refusal: refusal as i32,
            })
        }
        SessionFrame::Release {
            request,
            session,
            user,
            client_seq,
        } => Kind::Release(pb::Release {
            request,
            session_id: sid(session),
            user_id: user.0,
            client_seq,
        }),
        SessionFrame::Released {
            request,
            session,
            snapshot,
        } => Kind::Released(pb::Released {
            request,
            session_id: sid(session),
            snapshot: snapshot.map(|s| encode_snapshot(*s)),
        }),
    }
}

fn sid(id: SessionId) -> Vec<u8> {
    id.0.to_be_bytes().to_vec()
}

fn decode_sid(bytes: &[u8]) -> Result<SessionId, WireError> {
    let raw: [u8; 16] = bytes
        .try_into()
        .map_err(|_| WireError::SessionId(bytes.len()))?;
    Ok(SessionId(u128::from_be_bytes(raw)))
}

fn encode_snapshot(s: SessionSnapshot) -> pb::SessionSnapshot {
    pb::SessionSnapshot {
        identity: Some(pb::SessionIdentity {
            session_id: sid(s.identity.id),
            user_id: s.identity.user.0,
            username: s.identity.username.to_string(),
            bot: s.identity.bot,
            intents: s.identity.intents,
        }),
        guilds: s
            .guilds
            .into_iter()
            .map(|(g, c)| pb::GuildCursor {
                guild_id: g.0,
                seq: c.0,
            })
            .collect(),
        passive: s.passive.into_iter().map(|g| g.0).collect(),
        base_seq: s.base_seq,
        entries: s
            .entries
            .into_iter()
            .map(|e| pb::SessionEntry {
                kind: Some(match e {
                    Entry::Guild { guild, seq } => {
                        pb::session_entry::Kind::Guild(pb::GuildCursor {
                            guild_id: guild.0,
                            seq: seq.0,
                        })
                    }
                    Entry::Inline { event_type, body } => {
                        pb::session_entry::Kind::Inline(pb::InlineEvent {
                            event_type: event_type.to_string(),
                            body: body.to_vec(),
                        })
                    }
                }),
            })
            .collect(),
    }
}

fn decode_snapshot(s: pb::SessionSnapshot) -> Result<SessionSnapshot, WireError> {
    let id = s.identity.ok_or(WireError::Missing("session identity"))?;
    let entries = s
        .entries
        .into_iter()
        .map(
            |e| match e.kind.ok_or(WireError::Missing("session entry"))? {
                pb::session_entry::Kind::Guild(c) => Ok(Entry::Guild {
                    guild: GuildId(c.guild_id),
                    seq: GuildSeq(c.seq),
                }),
                pb::session_entry::Kind::Inline(i) => Ok(Entry::Inline {
                    event_type: Arc::from(i.event_type),
                    body: Bytes::from(i.body),
                }),
            },
        )
        .collect::<Result<_, WireError>>()?;
    Ok(SessionSnapshot {
        identity: SessionIdentity {
            id: decode_sid(&id.session_id)?,
            user: UserId(id.user_id),
            username: Arc::from(id.username),
            bot: id.bot,
            intents: id.intents,
        },
        guilds: s
            .guilds
            .into_iter()
            .map(|c| (GuildId(c.guild_id), GuildSeq(c.seq)))
            .collect(),
        passive: s.passive.into_iter().map(GuildId).collect(),
        base_seq: s.base_seq,
        entries,
    })
}

fn encode_op(op: SessionOp) -> pb::SessionOp {
    use pb::session_op::Kind as K;
    let kind = match op {
        SessionOp::Open(snap) => K::Open(encode_snapshot(*snap)),
        SessionOp::Push {
            session,
            event_type,
            body,
        } => K::Push(pb::OpPush {
            session_id: sid(session),
            event_type: event_type.to_string(),
            body: body.to_vec(),
        }),
        SessionOp::Deliver {
            topic,
            seq,
            event_type,
            body,
        } => K::Deliver(pb::OpDeliver {
            topic: Some(match topic {
                Topic::Guild(g) => pb::op_deliver::Topic::GuildId(g.0),
                Topic::User(u) => pb::op_deliver::Topic::UserId(u.0),
            }),
            seq,
            event_type: event_type.to_string(),
            body: body.map(|b| b.to_vec()),
        }),
        SessionOp::Join {
            session,
            guild,
            after,
        } => K::Join(pb::OpJoin {
            session_id: sid(session),
            guild_id: guild.0,
            after: after.0,
        }),
        SessionOp::Leave { session, guild } => K::Leave(pb::OpLeave {
            session_id: sid(session),
            guild_id: guild.0,
        }),
        SessionOp::Passive {
            session,
            guild,
            passive,
        } => K::Passive(pb::OpPassive {
            session_id: sid(session),
            guild_id: guild.0,
            passive,
        }),
        SessionOp::End { session } => K::End(pb::OpEnd {
            session_id: sid(session),
        }),
    };
    pb::SessionOp { kind: Some(kind) }
}

fn decode_op(op: pb::SessionOp) -> Result<SessionOp, WireError> {
    use pb::session_op::Kind as K;
    Ok(match op.kind.ok_or(WireError::Missing("session op"))? {
        K::Open(s) => SessionOp::Open(Box::new(decode_snapshot(s)?)),
        K::Push(p) => SessionOp::Push {
            session: decode_sid(&p.session_id)?,
            event_type: Arc::from(p.event_type),
            body: Bytes::from(p.body),
        },
        K::Deliver(d) => SessionOp::Deliver {
            topic: match d.topic.ok_or(WireError::Missing("topic"))? {
                pb::op_deliver::Topic::GuildId(g) => Topic::Guild(GuildId(g)),
                pb::op_deliver::Topic::UserId(u) => Topic::User(UserId(u)),
            },
            seq: d.seq,
            event_type: Arc::from(d.event_type),
            body: d.body.map(Bytes::from),
        },
        K::Join(j) => SessionOp::Join {
            session: decode_sid(&j.session_id)?,
            guild: GuildId(j.guild_id),
            after: GuildSeq(j.after),
        },
        K::Leave(l) => SessionOp::Leave {
            session: decode_sid(&l.session_id)?,
            guild: GuildId(l.guild_id),
        },
        K::Passive(p) => SessionOp::Passive {
            session: decode_sid(&p.session_id)?,
            guild: GuildId(p.guild_id),
            passive: p.passive,
        },
        K::End(e) => SessionOp::End {
            session: decode_sid(&e.session_id)?,
        },
    })
}

fn decode_answer(
    a: pb::ResumeAnswer,
) -> Result<Result<(SessionSnapshot, Takeover), ResumeRefusal>, WireError> {
    let refusal = match pb::ResumeRefusal::try_from(a.refusal) {
        Ok(pb::ResumeRefusal::None) => None,
        Ok(pb::ResumeRefusal::Unknown) => Some(ResumeRefusal::Unknown),
        Ok(pb::ResumeRefusal::Ahead) => Some(ResumeRefusal::Ahead),
        Ok(pb::ResumeRefusal::TooOld) => Some(ResumeRefusal::TooOld),
        Err(_) => return Err(WireError::Missing("resume refusal code")),
    };
    if let Some(r) = refusal {
        return Ok(Err(r));
    }
    let takeover = match pb::Takeover::try_from(a.takeover) {
        Ok(pb::Takeover::Migrated) => Takeover::Migrated,
        Ok(pb::Takeover::Promoted) => Takeover::Promoted,
        _ => return Err(WireError::Missing("takeover kind")),
    };
    let snap = a.snapshot.ok_or(WireError::Missing("resume snapshot"))?;
    Ok(Ok((decode_snapshot(snap)?, takeover)))
}

/// One frame from protobuf.
///
/// # Errors
/// See [`WireError`].
pub fn decode(frame: pb::PeerFrame) -> Result<PeerFrame, WireError> {
    Ok(match frame.kind.ok_or(WireError::MissingKind)? {
        Kind::Forward(f) => PeerFrame::Forward {
            origin: node_id(f.origin)?,
            publish_id: PublishId(f.publish_id),
            guild: GuildId(f.guild_id),
            event_type: Arc::from(f.event_type),
            body: Bytes::from(f.body),
            hops: u8::try_from(f.hops).map_err(|_| WireError::Hops(f.hops))?,
        },
        Kind::ForwardAck(f) => PeerFrame::ForwardAck {
            publish_id: PublishId(f.publish_id),
            guild: GuildId(f.guild_id),
            seq: GuildSeq(f.seq),
        },
        Kind::ForwardReject(f) => PeerFrame::ForwardReject {
            publish_id: PublishId(f.publish_id),
            guild: GuildId(f.guild_id),
            error: decode_error(f.error)?,
        },
        Kind::Replicate(r) => PeerFrame::Replicate {
            events: decode_events(r.events)?,
        },
        Kind::ReplicateAck(r) => PeerFrame::ReplicateAck {
            acks: r
                .acks
                .into_iter()
                .map(|c| (GuildId(c.guild_id), GuildSeq(c.seq)))
                .collect(),
        },
        Kind::Subscribe(s) => PeerFrame::Subscribe {
            guild: GuildId(s.guild_id),
            after_seq: s.after_seq.map(GuildSeq),
        },
        Kind::Subscribed(s) => PeerFrame::Subscribed {
            guild: GuildId(s.guild_id),
            after_seq: GuildSeq(s.after_seq),
        },
        Kind::Unsubscribe(u) => PeerFrame::Unsubscribe {
            guild: GuildId(u.guild_id),
        },
        Kind::FanoutBatch(b) => PeerFrame::FanoutBatch {
            events: decode_events(b.events)?,
        },
        Kind::Resync(r) => PeerFrame::Resync {
            guild: GuildId(r.guild_id),
            after_seq: GuildSeq(r.after_seq),
        },
        Kind::LogRequest(r) => PeerFrame::LogRequest {
            guild: GuildId(r.guild_id),
        },
        Kind::LogTransfer(t) => PeerFrame::LogTransfer {
            guild: GuildId(t.guild_id),
            events: decode_events(t.events)?,
            last_seq: GuildSeq(t.last_seq),
            still_owner: t.still_owner,
        },
        Kind::LogFetch(f) => PeerFrame::LogFetch {
            guild: GuildId(f.guild_id),
            after: GuildSeq(f.after),
            fetch: FetchId(f.fetch),
        },
        Kind::LogFetched(f) => PeerFrame::LogFetched {
            guild: GuildId(f.guild_id),
            fetch: FetchId(f.fetch),
            events: decode_events(f.events)?,
        },
        Kind::SessionOps(o) => PeerFrame::Session(SessionFrame::Ops {
            batch: o.batch,
            ops: o.ops.into_iter().map(decode_op).collect::<Result<_, _>>()?,
        }),
        Kind::SessionOpsAck(a) => PeerFrame::Session(SessionFrame::OpsAck { batch: a.batch }),
        Kind::ResumeRequest(r) => PeerFrame::Session(SessionFrame::ResumeRequest {
            request: r.request,
            session: decode_sid(&r.session_id)?,
            user: UserId(r.user_id),
            client_seq: r.client_seq,
        }),
        Kind::ResumeAnswer(a) => PeerFrame::Session(SessionFrame::ResumeAnswer {
            request: a.request,
            answer: decode_answer(a)?,
        }),
        Kind::Release(r) => PeerFrame::Session(SessionFrame::Release {
            request: r.request,
            session: decode_sid(&r.session_id)?,
            user: UserId(r.user_id),
            client_seq: r.client_seq,
        }),
        Kind::Released(r) => PeerFrame::Session(SessionFrame::Released {
            request: r.request,
            session: decode_sid(&r.session_id)?,
            snapshot: match r.snapshot {
                Some(s) => Some(Box::new(decode_snapshot(s)?)),
                None => None,
            },
        }),
    })
}

fn node_id(id: String) -> Result<NodeId, WireError> {
    if id.is_empty() {
        return Err(WireError::EmptyNodeId);
    }
    Ok(NodeId::from(id))
}

fn encode_event(e: GuildEvent) -> pb::GuildEvent {
    pb::GuildEvent {
        guild_id: e.guild.0,
        seq: e.seq.0,
        origin: e.origin.as_str().to_owned(),
        publish_id: e.publish_id.0,
        event_type: e.event_type.to_string(),
        body: e.body.to_vec(),
    }
}

fn decode_events(events: Vec<pb::GuildEvent>) -> Result<Vec<GuildEvent>, WireError> {
    events
        .into_iter()
        .map(|e| {
            Ok(GuildEvent {
                guild: GuildId(e.guild_id),
                seq: GuildSeq(e.seq),
                origin: node_id(e.origin)?,
                publish_id: PublishId(e.publish_id),
                event_type: Arc::from(e.event_type),
                body: Bytes::from(e.body),
            })
        })
        .collect()
}

fn encode_error(e: PublishError) -> pb::PublishErrorCode {
    match e {
        PublishError::Overloaded => pb::PublishErrorCode::PublishErrorOverloaded,
        PublishError::NoRing => pb::PublishErrorCode::PublishErrorNoRing,
        // The id is the origin's, so the origin maps it back from its own pending table.
        PublishError::DuplicatePublishId(_) => pb::PublishErrorCode::PublishErrorDuplicatePublishId,
        PublishError::OwnerUnreachable => pb::PublishErrorCode::PublishErrorOwnerUnreachable,
        PublishError::NoReplica => pb::PublishErrorCode::PublishErrorNoReplica,
    }
}

fn decode_error(code: i32) -> Result<PublishError, WireError> {
    match pb::PublishErrorCode::try_from(code) {
        Ok(pb::PublishErrorCode::PublishErrorOverloaded) => Ok(PublishError::Overloaded),
        Ok(pb::PublishErrorCode::PublishErrorNoRing) => Ok(PublishError::NoRing),
        // The wire does not carry the id twice; the frame's own publish id is the one.
        Ok(pb::PublishErrorCode::PublishErrorDuplicatePublishId) => {
            Ok(PublishError::DuplicatePublishId(PublishId(0)))
        }
        Ok(pb::PublishErrorCode::PublishErrorOwnerUnreachable) => {
            Ok(PublishError::OwnerUnreachable)
        }
        Ok(pb::PublishErrorCode::PublishErrorNoReplica) => Ok(PublishError::NoReplica),
        Ok(pb::PublishErrorCode::PublishErrorUnspecified) | Err(_) => {
            Err(WireError::ErrorCode(code))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(seq: u64) -> GuildEvent {
        GuildEvent {
            guild: GuildId(7),
            seq: GuildSeq(seq),
            origin: NodeId::from("n2"),
            publish_id: PublishId(seq * 10),
            event_type: "MESSAGE_CREATE".into(),
            body: Bytes::from_static(b"{\"a\":1}"),
        }
    }

    #[test]
    fn every_frame_round_trips() {
        let g = GuildId(7);
        let frames = vec![
            PeerFrame::Forward {
                origin: "n1".into(),
                publish_id: PublishId(3),
                guild: g,
                event_type: "X".into(),
                body: Bytes::from_static(b"{}"),
                hops: 1,
            },
            PeerFrame::ForwardAck {
                publish_id: PublishId(3),
                guild: g,
                seq: GuildSeq(9),
            },
            PeerFrame::ForwardReject {
                publish_id: PublishId(3),
                guild: g,
                error: PublishError::Overloaded,
            },
            PeerFrame::Replicate {
                events: vec![event(1), event(2)],
            },
            PeerFrame::ReplicateAck {
                acks: vec![(g, GuildSeq(2))],
            },
            PeerFrame::Subscribe {
                guild: g,
                after_seq: None,
            },
            PeerFrame::Subscribe {
                guild: g,
                after_seq: Some(GuildSeq(0)),
            },
            PeerFrame::Subscribed {
                guild: g,
                after_seq: GuildSeq(4),
            },
            PeerFrame::Unsubscribe { guild: g },
            PeerFrame::FanoutBatch {
                events: vec![event(3)],
            },
            PeerFrame::Resync {
                guild: g,
                after_seq: GuildSeq(5),
            },
            PeerFrame::LogRequest { guild: g },
            PeerFrame::LogTransfer {
                guild: g,
                events: vec![event(4), event(5)],
                last_seq: GuildSeq(5),
                still_owner: true,
            },
            PeerFrame::LogTransfer {
                guild: g,
                events: Vec::new(),
                last_seq: GuildSeq(0),
                still_owner: false,
            },
            PeerFrame::LogFetch {
                guild: g,
                after: GuildSeq(3),
                fetch: FetchId(8),
            },
            PeerFrame::LogFetched {
                guild: g,
                fetch: FetchId(8),
                events: vec![event(4)],
            },
        ];
        let sid = SessionId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let snapshot = SessionSnapshot {
            identity: SessionIdentity {
                id: sid,
                user: UserId(42),
                username: "alice".into(),
                bot: true,
                intents: 513,
            },
            guilds: vec![(g, GuildSeq(9))],
            passive: vec![GuildId(8)],
            base_seq: 4,
            entries: vec![
                Entry::Guild {
                    guild: g,
                    seq: GuildSeq(9),
                },
                Entry::Inline {
                    event_type: "GUILD_CREATE".into(),
                    body: Bytes::from_static(b"{}"),
                },
            ],
        };
        let ops = vec![
            SessionOp::Open(Box::new(snapshot.clone())),
            SessionOp::Push {
                session: sid,
                event_type: "RESUMED".into(),
                body: Bytes::from_static(b"{}"),
            },
            SessionOp::Deliver {
                topic: Topic::Guild(g),
                seq: 10,
                event_type: "MESSAGE_CREATE".into(),
                body: None,
            },
            SessionOp::Deliver {
                topic: Topic::User(UserId(42)),
                seq: 3,
                event_type: "X".into(),
                body: Some(Bytes::from_static(b"{\"x\":1}")),
            },
            SessionOp::Join {
                session: sid,
                guild: g,
                after: GuildSeq(10),
            },
            SessionOp::Leave {
                session: sid,
                guild: g,
            },
            SessionOp::Passive {
                session: sid,
                guild: g,
                passive: true,
            },
            SessionOp::End { session: sid },
        ];
        let frames: Vec<PeerFrame> = frames
            .into_iter()
            .chain(
                [
                    SessionFrame::Ops { batch: 3, ops },
                    SessionFrame::OpsAck { batch: 3 },
                    SessionFrame::ResumeRequest {
                        request: 1,
                        session: sid,
                        user: UserId(42),
                        client_seq: 4,
                    },
                    SessionFrame::ResumeAnswer {
                        request: 1,
                        answer: Ok((snapshot.clone(), Takeover::Promoted)),
                    },
                    SessionFrame::ResumeAnswer {
                        request: 2,
                        answer: Err(ResumeRefusal::TooOld),
                    },
                    SessionFrame::Release {
                        request: 5,
                        session: sid,
                        user: UserId(42),
                        client_seq: 3,
                    },
                    SessionFrame::Released {
                        request: 5,
                        session: sid,
                        snapshot: Some(Box::new(snapshot)),
                    },
                    SessionFrame::Released {
                        request: 6,
                        session: sid,
                        snapshot: None,
                    },
                ]
                .map(PeerFrame::Session),
            )
            .collect();
        let decoded = decode_batch(encode_batch(frames.clone())).unwrap();
        assert_eq!(decoded, frames);
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        assert_eq!(
            decode(pb::PeerFrame { kind: None }),
            Err(WireError::MissingKind)
        );
        let forward = |origin: &str, hops| pb::PeerFrame {
            kind: Some(Kind::Forward(pb::Forward {
                origin: origin.into(),
                hops,
                ..Default::default()
            })),
        };
        assert_eq!(decode(forward("", 0)), Err(WireError::EmptyNodeId));
        assert_eq!(decode(forward("n1", 300)), Err(WireError::Hops(300)));
        let reject = pb::PeerFrame {
            kind: Some(Kind::ForwardReject(pb::ForwardReject {
                error: 99,
                ..Default::default()
            })),
        };
        assert_eq!(decode(reject), Err(WireError::ErrorCode(99)));
        let transfer = pb::PeerFrame {
            kind: Some(Kind::LogTransfer(pb::LogTransfer {
                guild_id: 7,
                events: vec![pb::GuildEvent::default()],
                last_seq: 1,
                still_owner: false,
            })),
        };
        assert_eq!(decode(transfer), Err(WireError::EmptyNodeId));
        let short_id = pb::PeerFrame {
            kind: Some(Kind::Release(pb::Release {
                request: 1,
                session_id: vec![1, 2, 3],
                user_id: 1,
                client_seq: 0,
            })),
        };
        assert_eq!(decode(short_id), Err(WireError::SessionId(3)));
        let no_identity = pb::PeerFrame {
            kind: Some(Kind::SessionOps(pb::SessionOps {
                batch: 1,
                ops: vec![pb::SessionOp {
                    kind: Some(pb::session_op::Kind::Open(pb::SessionSnapshot::default())),
                }],
            })),
        };
        assert_eq!(
            decode(no_identity),
            Err(WireError::Missing("session identity"))
        );
    }
}
