//! [`PeerFrame`] <-> protobuf, in one place. Network bytes are never trusted: a frame
//! that does not map to a router frame is a [`WireError`], and the link that sent it is
//! dropped.

use std::sync::Arc;

use bytes::Bytes;
use concord_protocol::GuildId;
use concord_router::cluster::{GuildEvent, GuildSeq, NodeId, PeerFrame, PublishError, PublishId};

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
        } => Kind::LogTransfer(pb::LogTransfer {
            guild_id: guild.0,
            events: events.into_iter().map(encode_event).collect(),
            last_seq: last_seq.0,
        }),
    };
    pb::PeerFrame { kind: Some(kind) }
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
        },
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
            },
            PeerFrame::LogTransfer {
                guild: g,
                events: Vec::new(),
                last_seq: GuildSeq(0),
            },
        ];
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
            })),
        };
        assert_eq!(decode(transfer), Err(WireError::EmptyNodeId));
    }
}
