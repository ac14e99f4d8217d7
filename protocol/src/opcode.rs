//! Opcodes and close codes: the numbers of the Discord gateway v10 protocol, plus
//! Concord's own guild-activity opcode.

/// A gateway opcode (`op` in the envelope).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    /// Server -> client: an event (`t`, `s` and `d` are set).
    Dispatch = 0,
    /// Both ways: keep the connection alive; the server answers with `HeartbeatAck`.
    Heartbeat = 1,
    /// Client -> server: start a new session.
    Identify = 2,
    /// Client -> server: update the client's presence (accepted and ignored).
    PresenceUpdate = 3,
    /// Client -> server: resume a dropped session.
    Resume = 6,
    /// Server -> client: reconnect and resume (sent on drain).
    Reconnect = 7,
    /// Client -> server: ask for guild members (answered with an empty chunk).
    RequestGuildMembers = 8,
    /// Server -> client: the session is invalid; `d` says whether it may be resumed.
    InvalidSession = 9,
    /// Server -> client: first frame, carries `heartbeat_interval`.
    Hello = 10,
    /// Server -> client: answer to a heartbeat.
    HeartbeatAck = 11,
    /// Client -> server (Concord): mark a guild active or passive for this session.
    GuildActivity = 40,
}

impl OpCode {
    /// The opcode for a number, if Concord knows it.
    pub fn from_u8(op: u8) -> Option<OpCode> {
        Some(match op {
            0 => OpCode::Dispatch,
            1 => OpCode::Heartbeat,
            2 => OpCode::Identify,
            3 => OpCode::PresenceUpdate,
            6 => OpCode::Resume,
            7 => OpCode::Reconnect,
            8 => OpCode::RequestGuildMembers,
            9 => OpCode::InvalidSession,
            10 => OpCode::Hello,
            11 => OpCode::HeartbeatAck,
            40 => OpCode::GuildActivity,
            _ => return None,
        })
    }
}

/// A WebSocket close code the node sends. The 4xxx ones are Discord's gateway codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the session is over (sent only when the client asked for it).
    Normal,
    /// 1001: the node is going away.
    GoingAway,
    /// 4000: something went wrong on our side, or the client could not keep up with its
    /// queue; reconnect and resume.
    UnknownError,
    /// 4001: the client sent an opcode Concord does not accept from clients.
    UnknownOpcode,
    /// 4002: the client sent a payload that could not be decoded, or one over 4096 bytes.
    DecodeError,
    /// 4003: the client sent something other than a heartbeat before identifying.
    NotAuthenticated,
    /// 4004: the token was invalid, expired, or did not match the session.
    AuthenticationFailed,
    /// 4005: the client identified twice.
    AlreadyAuthenticated,
    /// 4007: the client resumed with a sequence number the server never sent.
    InvalidSeq,
    /// 4008: more than 120 commands in 60 s, or too many identifies on this node.
    RateLimited,
    /// 4009: the client stopped heartbeating (a zombie connection).
    SessionTimedOut,
    /// 4012: the `v` query parameter is not 10.
    InvalidApiVersion,
    /// 4013: the intents field has bits Concord does not know.
    InvalidIntents,
}

impl CloseCode {
    /// The number on the wire.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::UnknownError => 4000,
            CloseCode::UnknownOpcode => 4001,
            CloseCode::DecodeError => 4002,
            CloseCode::NotAuthenticated => 4003,
            CloseCode::AuthenticationFailed => 4004,
            CloseCode::AlreadyAuthenticated => 4005,
            CloseCode::InvalidSeq => 4007,
            CloseCode::RateLimited => 4008,
            CloseCode::SessionTimedOut => 4009,
            CloseCode::InvalidApiVersion => 4012,
            CloseCode::InvalidIntents => 4013,
        }
    }

    /// The close reason text sent with the code.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "session ended",
            CloseCode::GoingAway => "node going away",
            CloseCode::UnknownError => "unknown error, resume",
            CloseCode::UnknownOpcode => "unknown opcode",
            CloseCode::DecodeError => "decode error",
            CloseCode::NotAuthenticated => "not authenticated",
            CloseCode::AuthenticationFailed => "authentication failed",
            CloseCode::AlreadyAuthenticated => "already authenticated",
            CloseCode::InvalidSeq => "invalid seq",
            CloseCode::RateLimited => "rate limited",
            CloseCode::SessionTimedOut => "session timed out",
            CloseCode::InvalidApiVersion => "invalid api version",
            CloseCode::InvalidIntents => "invalid intents",
        }
    }

    /// Whether the server keeps the session resumable after closing with this code.
    ///
    /// Codes about a broken client (bad token, bad version, bad intents) end the session;
    /// everything else leaves it resumable for the resume window.
    pub fn keeps_session(self) -> bool {
        !matches!(
            self,
            CloseCode::Normal
                | CloseCode::AuthenticationFailed
                | CloseCode::InvalidApiVersion
                | CloseCode::InvalidIntents
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_round_trip() {
        for op in 0..=255u8 {
            if let Some(code) = OpCode::from_u8(op) {
                assert_eq!(code as u8, op);
            }
        }
    }

    #[test]
    fn close_codes_are_discords() {
        assert_eq!(CloseCode::DecodeError.code(), 4002);
        assert_eq!(CloseCode::InvalidIntents.code(), 4013);
        assert!(CloseCode::UnknownError.keeps_session());
        assert!(!CloseCode::AuthenticationFailed.keeps_session());
    }
}
