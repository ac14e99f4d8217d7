//! Client commands: what a client may send, decoded once at the edge.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::ids::{GuildId, Seq};
use crate::opcode::{CloseCode, OpCode};

/// A decoded client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientCommand {
    /// Op 1: the client's last seen `s`, if any.
    Heartbeat(Option<Seq>),
    /// Op 2: start a session.
    Identify(Box<Identify>),
    /// Op 3: a presence update (accepted and ignored).
    PresenceUpdate,
    /// Op 6: resume a session.
    Resume(Resume),
    /// Op 8: ask for members of a guild.
    RequestGuildMembers(RequestGuildMembers),
    /// Op 40 (Concord): mark a guild active or passive for this session.
    GuildActivity(GuildActivity),
}

/// Op 2 Identify.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Identify {
    /// The client token, with or without a `Bot ` prefix.
    pub token: String,
    /// The gateway intents bit set.
    pub intents: u64,
    /// Whether the client asked for per-payload compression (not supported; ignored).
    #[serde(default)]
    pub compress: Option<bool>,
    /// `[shard_id, num_shards]`, echoed in READY.
    #[serde(default)]
    pub shard: Option<[u32; 2]>,
    /// The client's large guild threshold (accepted and ignored).
    #[serde(default)]
    pub large_threshold: Option<u32>,
}

/// Op 6 Resume.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Resume {
    /// The client token, with or without a `Bot ` prefix.
    pub token: String,
    /// The session to resume, as received in READY.
    pub session_id: String,
    /// The last `s` the client received (`null` is taken as 0).
    #[serde(default, deserialize_with = "nullable_seq")]
    pub seq: Seq,
}

/// Op 8 Request Guild Members.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RequestGuildMembers {
    /// The guild asked about.
    pub guild_id: GuildId,
    /// Echoed in the chunk so the client can match it.
    #[serde(default)]
    pub nonce: Option<String>,
}

/// Op 40 (Concord) guild activity: `{"guild_id": "1", "active": false}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GuildActivity {
    /// The guild whose delivery mode changes.
    pub guild_id: GuildId,
    /// `true`: full events; `false`: passive (events are skipped for this session).
    pub active: bool,
}

fn nullable_seq<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Seq, D::Error> {
    Ok(Seq(Option::<u64>::deserialize(d)?.unwrap_or(0)))
}

/// Why a client frame was rejected. Each variant maps to a close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame is larger than [`crate::MAX_CLIENT_PAYLOAD`] bytes (4002).
    #[error("payload of {0} bytes is over the 4096-byte limit")]
    TooLarge(usize),
    /// The frame is not valid JSON, or not a valid envelope (4002).
    #[error("invalid envelope: {0}")]
    Envelope(String),
    /// The `d` of a known opcode has the wrong shape (4002).
    #[error("invalid payload for op {op}: {reason}")]
    Payload {
        /// The opcode whose payload failed.
        op: u8,
        /// What serde said.
        reason: String,
    },
    /// The opcode is not one a client may send (4001).
    #[error("unknown opcode {0}")]
    UnknownOpcode(u64),
}

impl DecodeError {
    /// The close code this error must be answered with.
    pub fn close_code(&self) -> CloseCode {
        match self {
            DecodeError::UnknownOpcode(_) => CloseCode::UnknownOpcode,
            _ => CloseCode::DecodeError,
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    op: u64,
    #[serde(borrow, default)]
    d: Option<&'a RawValue>,
}

impl ClientCommand {
    /// Decodes one client frame (a text or binary WebSocket message holding JSON).
    pub fn decode(bytes: &[u8]) -> Result<ClientCommand, DecodeError> {
        if bytes.len() > crate::MAX_CLIENT_PAYLOAD {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let env: Envelope<'_> =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Envelope(e.to_string()))?;
        let op = u8::try_from(env.op)
            .ok()
            .and_then(OpCode::from_u8)
            .ok_or(DecodeError::UnknownOpcode(env.op))?;
        let d = env.d.map(RawValue::get).unwrap_or("null");
        let payload = |op: OpCode| {
            move |e: serde_json::Error| DecodeError::Payload {
                op: op as u8,
                reason: e.to_string(),
            }
        };
        Ok(match op {
            OpCode::Heartbeat => ClientCommand::Heartbeat(
                serde_json::from_str::<Option<u64>>(d)
                    .map_err(payload(op))?
                    .map(Seq),
            ),
            OpCode::Identify => {
                ClientCommand::Identify(Box::new(serde_json::from_str(d).map_err(payload(op))?))
            }
            OpCode::PresenceUpdate => ClientCommand::PresenceUpdate,
            OpCode::Resume => ClientCommand::Resume(serde_json::from_str(d).map_err(payload(op))?),
            OpCode::RequestGuildMembers => {
                ClientCommand::RequestGuildMembers(serde_json::from_str(d).map_err(payload(op))?)
            }
            OpCode::GuildActivity => {
                ClientCommand::GuildActivity(serde_json::from_str(d).map_err(payload(op))?)
            }
            // Server-to-client opcodes are not commands.
            OpCode::Dispatch
            | OpCode::Reconnect
            | OpCode::InvalidSession
            | OpCode::Hello
            | OpCode::HeartbeatAck => return Err(DecodeError::UnknownOpcode(env.op)),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn decodes_commands() {
        assert_eq!(
            ClientCommand::decode(br#"{"op":1,"d":null}"#).unwrap(),
            ClientCommand::Heartbeat(None)
        );
        assert_eq!(
            ClientCommand::decode(br#"{"op":1,"d":5}"#).unwrap(),
            ClientCommand::Heartbeat(Some(Seq(5)))
        );
        let identify = br#"{"op":2,"d":{"token":"Bot x","intents":513,"properties":{"os":"linux"},"shard":[0,1]}}"#;
        match ClientCommand::decode(identify).unwrap() {
            ClientCommand::Identify(i) => {
                assert_eq!(i.intents, 513);
                assert_eq!(i.shard, Some([0, 1]));
            }
            other => panic!("{other:?}"),
        }
        let resume = br#"{"op":6,"d":{"token":"t","session_id":"abc","seq":null}}"#;
        assert!(matches!(
            ClientCommand::decode(resume).unwrap(),
            ClientCommand::Resume(Resume { seq: Seq(0), .. })
        ));
    }

    #[test]
    fn rejects_with_the_right_close_code() {
        let cases: &[(&[u8], u16)] = &[
            (b"not json", 4002),
            (br#"{"d":1}"#, 4002),
            (br#"{"op":2,"d":{"intents":1}}"#, 4002),
            (br#"{"op":99,"d":null}"#, 4001),
            (br#"{"op":0,"d":null}"#, 4001),
            (br#"{"op":100000000000,"d":null}"#, 4001),
        ];
        for (bytes, code) in cases {
            let err = ClientCommand::decode(bytes).unwrap_err();
            assert_eq!(err.close_code().code(), *code, "{err}");
        }
        let big = vec![b' '; 4097];
        assert_eq!(
            ClientCommand::decode(&big).unwrap_err(),
            DecodeError::TooLarge(4097)
        );
    }
}
