//! The per-connection protocol state machine, with no IO and no clock.
//!
//! It decides what a client frame means for the connection: answer a heartbeat, hand an
//! Identify or Resume to the shell, or close with which code. Time arrives as `now` on
//! every call, so tests drive heartbeats, zombies and rate limits on a virtual clock.

use std::time::{Duration, Instant};

use concord_protocol::command::RequestGuildMembers;
use concord_protocol::{ClientCommand, CloseCode, GuildActivity, Identify, Resume, Seq};

/// Discord's command rate limit: 120 commands per 60 s per connection.
pub const COMMANDS_PER_WINDOW: u32 = 120;
/// The window of [`COMMANDS_PER_WINDOW`].
pub const COMMAND_WINDOW: Duration = Duration::from_secs(60);

/// What the shell must do with a client frame.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Answer with Heartbeat ACK; the client has everything up to this seq.
    AckHeartbeat(Option<Seq>),
    /// Verify this Identify and start a session (then call [`Machine::identified`]).
    Identify(Box<Identify>),
    /// Verify this Resume and reattach its session (then call [`Machine::identified`]).
    Resume(Resume),
    /// Answer with an empty GUILD_MEMBERS_CHUNK.
    RequestGuildMembers(RequestGuildMembers),
    /// Switch a guild between active and passive delivery.
    SetGuildActivity(GuildActivity),
    /// Nothing to do (a presence update).
    Ignore,
    /// Close the connection with this code.
    Close(CloseCode),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Hello sent; only heartbeats, Identify and Resume are allowed.
    AwaitingIdentify,
    /// Identify or Resume in progress: the shell is verifying it.
    Authenticating,
    /// A session is attached.
    Identified,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Machine {
    phase: Phase,
    heartbeat_interval: Duration,
    last_heartbeat: Instant,
    window_start: Instant,
    window_count: u32,
}

impl Machine {
    /// A connection that was sent Hello at `now`.
    pub fn new(now: Instant, heartbeat_interval: Duration) -> Machine {
        Machine {
            phase: Phase::AwaitingIdentify,
            heartbeat_interval,
            last_heartbeat: now,
            window_start: now,
            window_count: 0,
        }
    }

    /// Handles one client message.
    pub fn handle_message(&mut self, bytes: &[u8], now: Instant) -> Action {
        if now.duration_since(self.window_start) >= COMMAND_WINDOW {
            self.window_start = now;
            self.window_count = 0;
        }
        self.window_count += 1;
        if self.window_count > COMMANDS_PER_WINDOW {
            return Action::Close(CloseCode::RateLimited);
        }
        let command = match ClientCommand::decode(bytes) {
            Ok(c) => c,
            Err(e) => return Action::Close(e.close_code()),
        };
        match (command, self.phase) {
            (ClientCommand::Heartbeat(seq), _) => {
                self.last_heartbeat = now;
                Action::AckHeartbeat(seq)
            }
            (ClientCommand::Identify(i), Phase::AwaitingIdentify) => {
                self.phase = Phase::Authenticating;
                Action::Identify(i)
            }
            (ClientCommand::Resume(r), Phase::AwaitingIdentify) => {
                self.phase = Phase::Authenticating;
                Action::Resume(r)
            }
            (ClientCommand::Identify(_) | ClientCommand::Resume(_), _) => {
                Action::Close(CloseCode::AlreadyAuthenticated)
            }
            (_, Phase::AwaitingIdentify | Phase::Authenticating) => {
                Action::Close(CloseCode::NotAuthenticated)
            }
            (ClientCommand::PresenceUpdate, Phase::Identified) => Action::Ignore,
            (ClientCommand::RequestGuildMembers(r), Phase::Identified) => {
                Action::RequestGuildMembers(r)
            }
            (ClientCommand::GuildActivity(a), Phase::Identified) => Action::SetGuildActivity(a),
        }
    }

    /// The shell accepted the Identify or Resume.
    pub fn identified(&mut self) {
        self.phase = Phase::Identified;
    }

    /// Whether a session is attached.
    pub fn is_identified(&self) -> bool {
        self.phase == Phase::Identified
    }

    /// When the connection becomes a zombie unless a heartbeat arrives: one and a half
    /// intervals after the last one (or after Hello), which leaves room for the jittered
    /// first heartbeat and a late one.
    pub fn deadline(&self) -> Instant {
        self.last_heartbeat + self.heartbeat_interval + self.heartbeat_interval / 2
    }

    /// Checks the deadline; returns the close code if the client is a zombie.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<CloseCode> {
        (now >= self.deadline()).then_some(CloseCode::SessionTimedOut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_millis(41_250);
    const IDENTIFY: &[u8] = br#"{"op":2,"d":{"token":"t","intents":1,"properties":{}}}"#;

    fn code(a: Action) -> u16 {
        match a {
            Action::Close(c) => c.code(),
            other => panic!("expected a close, got {other:?}"),
        }
    }

    #[test]
    fn heartbeat_before_identify_is_answered() {
        let t0 = Instant::now();
        let mut m = Machine::new(t0, HB);
        assert_eq!(
            m.handle_message(br#"{"op":1,"d":null}"#, t0),
            Action::AckHeartbeat(None)
        );
    }

    #[test]
    fn anything_else_before_identify_closes_4003() {
        let t0 = Instant::now();
        let mut m = Machine::new(t0, HB);
        assert_eq!(code(m.handle_message(br#"{"op":3,"d":{}}"#, t0)), 4003);
        let mut m = Machine::new(t0, HB);
        let r = br#"{"op":8,"d":{"guild_id":"1"}}"#;
        assert_eq!(code(m.handle_message(r, t0)), 4003);
    }

    #[test]
    fn second_identify_closes_4005() {
        let t0 = Instant::now();
        let mut m = Machine::new(t0, HB);
        assert!(matches!(
            m.handle_message(IDENTIFY, t0),
            Action::Identify(_)
        ));
        // Even while the first one is being verified.
        assert_eq!(code(m.handle_message(IDENTIFY, t0)), 4005);
        m.identified();
        assert_eq!(code(m.handle_message(IDENTIFY, t0)), 4005);
        let resume = br#"{"op":6,"d":{"token":"t","session_id":"x","seq":1}}"#;
        assert_eq!(code(m.handle_message(resume, t0)), 4005);
    }

    #[test]
    fn unknown_opcode_and_bad_json() {
        let t0 = Instant::now();
        assert_eq!(
            code(Machine::new(t0, HB).handle_message(br#"{"op":42}"#, t0)),
            4001
        );
        assert_eq!(
            code(Machine::new(t0, HB).handle_message(b"{nope", t0)),
            4002
        );
        let big = vec![b'x'; 5000];
        assert_eq!(code(Machine::new(t0, HB).handle_message(&big, t0)), 4002);
    }

    #[test]
    fn rate_limit_is_120_per_60s() {
        let t0 = Instant::now();
        let mut m = Machine::new(t0, HB);
        let hb = br#"{"op":1,"d":null}"#;
        for i in 0..120 {
            let now = t0 + Duration::from_millis(i * 10);
            assert!(matches!(m.handle_message(hb, now), Action::AckHeartbeat(_)));
        }
        assert_eq!(
            code(m.handle_message(hb, t0 + Duration::from_secs(2))),
            4008
        );

        // A new window starts 60 s after the first command.
        let mut m = Machine::new(t0, HB);
        for _ in 0..120 {
            m.handle_message(hb, t0);
        }
        assert!(matches!(
            m.handle_message(hb, t0 + COMMAND_WINDOW),
            Action::AckHeartbeat(_)
        ));
    }

    #[test]
    fn zombie_after_one_and_a_half_missed_intervals() {
        let t0 = Instant::now();
        let mut m = Machine::new(t0, HB);
        assert_eq!(m.handle_timeout(t0 + HB), None);
        m.handle_message(br#"{"op":1,"d":null}"#, t0 + HB);
        assert_eq!(m.handle_timeout(t0 + HB * 2), None);
        assert_eq!(m.deadline(), t0 + HB + HB + HB / 2);
        assert_eq!(
            m.handle_timeout(t0 + HB * 5 / 2),
            Some(CloseCode::SessionTimedOut)
        );
    }
}
