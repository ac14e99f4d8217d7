//! Topics and events.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use concord_protocol::zstd_dict::{DictId, SharedBody};
use concord_protocol::{GuildId, UserId, intents};

/// What an event is published to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Every session subscribed to a guild.
    Guild(GuildId),
    /// Every session of one user (direct events).
    User(UserId),
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Guild(g) => write!(f, "guild:{g}"),
            Topic::User(u) => write!(f, "user:{u}"),
        }
    }
}

/// One event: a dispatch name and a JSON body serialised once.
#[derive(Debug)]
pub struct Event {
    /// The topic it was published to, or `None` for a session's own events (READY,
    /// GUILD_CREATE, RESUMED).
    pub topic: Option<Topic>,
    /// Its sequence number within the topic (0 for session-only events).
    pub topic_seq: u64,
    /// The dispatch name (`t`).
    pub event_type: Box<str>,
    /// The dispatch payload (`d`), as JSON.
    pub body: Bytes,
    /// The intent a session needs to receive it, if any.
    pub required_intent: Option<u64>,
    /// When the node accepted it, for publish-to-write latency.
    pub published_at: Instant,
    /// Its `zstd-dict` bodies, one per dictionary, compressed by the first connection
    /// that needed each and shared by every other (see [`Event::dict_body`]).
    pub dict_bodies: Mutex<Vec<SharedBody>>,
}

/// An event shared by every session that receives it.
pub type SharedEvent = Arc<Event>;

impl Event {
    /// An event that belongs to one session only (READY, GUILD_CREATE, RESUMED, ...).
    pub fn session_only(event_type: &str, body: Bytes, now: Instant) -> SharedEvent {
        Arc::new(Event {
            topic: None,
            topic_seq: 0,
            event_type: event_type.into(),
            body,
            required_intent: None,
            published_at: now,
            dict_bodies: Mutex::new(Vec::new()),
        })
    }

    /// A topic event another node sequenced, replayed into one session's log (a session
    /// rebuilt after a resume elsewhere): already filtered for it, so it needs no intent.
    pub fn replayed(
        topic: Topic,
        topic_seq: u64,
        event_type: &str,
        body: Bytes,
        now: Instant,
    ) -> SharedEvent {
        Arc::new(Event {
            topic: Some(topic),
            topic_seq,
            event_type: event_type.into(),
            body,
            required_intent: None,
            published_at: now,
            dict_bodies: Mutex::new(Vec::new()),
        })
    }

    /// This event's body compressed against dictionary `id`: from the cache, or made by
    /// `compress` and cached, so a node compresses each event once per dictionary however
    /// many sessions receive it. Returns the body and whether this call compressed it.
    pub fn dict_body<E>(
        &self,
        id: DictId,
        compress: impl FnOnce() -> Result<SharedBody, E>,
    ) -> Result<(SharedBody, bool), E> {
        let mut bodies = self
            .dict_bodies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(b) = bodies.iter().find(|b| b.dict_id() == id) {
            return Ok((b.clone(), false));
        }
        let body = compress()?;
        bodies.push(body.clone());
        Ok((body, true))
    }

    /// The bytes this event pins in a replay buffer.
    pub fn weight(&self) -> usize {
        self.body.len() + self.event_type.len()
    }

    /// Whether a session with `intents` receives it.
    pub fn wanted_by(&self, intents: u64) -> bool {
        self.required_intent.is_none_or(|i| intents & i != 0)
    }
}

pub(crate) fn required_intent(topic: Topic, event_type: &str) -> Option<u64> {
    match topic {
        Topic::Guild(_) => intents::for_guild_event(event_type),
        Topic::User(_) => intents::for_direct_event(event_type),
    }
}
