//! The hub: the one task that owns this node's [`TopicTable`].
//!
//! Publishes, joins, leaves and membership changes arrive as [`HubInput`] over a bounded
//! channel and are applied in order, so a session's GUILD_CREATE always precedes the
//! guild's events, and every subscriber of a topic sees its events in topic order. Each
//! published event is serialised once; the hub pushes the same `Arc` into every
//! subscribed session's log and wakes its connection, which does the writing.
//!
//! On a clustered node, guild events arrive already sequenced by the guild's owner
//! ([`HubInput::DeliverSequenced`], from the [`crate::peer`] router task, in guild order),
//! and the hub reports each guild's local subscriber count going 0 -> 1 and 1 -> 0 to
//! that task, so the node subscribes to the owner once, not once per session.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use concord_protocol::{GuildId, UserId};
use concord_router::{Event, Subscriber, Topic, TopicTable};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::peer::SubscriptionChange;
use crate::session::{Delivered, SessionRef};

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
    /// Subscribe a new session to its user topic and guilds, sending GUILD_CREATE for
    /// each guild first.
    Join {
        /// The session (READY already pushed).
        session: SessionRef,
        /// Its guilds.
        guilds: Vec<GuildId>,
    },
    /// Unsubscribe an ended session from everything.
    Leave {
        /// The session.
        session: SessionRef,
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

/// The hub's state.
#[derive(Debug)]
pub struct Hub {
    table: TopicTable<SessionRef>,
    guild_objects: HashMap<GuildId, Bytes>,
    queue_limit: u64,
    metrics: Metrics,
    /// Clustered mode: where guild subscription changes (0 -> 1 and 1 -> 0 local
    /// subscribers) go. Unbounded because the router task waits on the hub; one message
    /// per transition.
    subscriptions: Option<mpsc::UnboundedSender<SubscriptionChange>>,
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
            subscriptions: None,
        }
    }

    /// Reports guild subscription changes to the cluster router on `tx`.
    #[must_use]
    pub fn with_subscriptions(mut self, tx: mpsc::UnboundedSender<SubscriptionChange>) -> Hub {
        self.subscriptions = Some(tx);
        self
    }

    /// Starts the hub task; it ends when every handle is dropped.
    pub fn spawn(self) -> (HubHandle, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(HUB_QUEUE);
        (HubHandle { tx }, tokio::spawn(self.run(rx)))
    }

    async fn run(mut self, mut rx: mpsc::Receiver<HubInput>) {
        let mut batch = Vec::with_capacity(256);
        while rx.recv_many(&mut batch, 256).await > 0 {
            let now = Instant::now();
            for input in batch.drain(..) {
                self.handle(input, now);
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
                let seq = self.publish(topic, &event_type, body, accepted_at);
                let _ = reply.send(seq);
            }
            HubInput::Join { session, guilds } => {
                self.table
                    .subscribe(Topic::User(session.user), session.clone());
                for guild in guilds {
                    self.join_guild(&session, guild, now);
                }
            }
            HubInput::Leave { session } => {
                let guilds = std::mem::take(&mut session.lock().guilds);
                for g in guilds {
                    self.leave_guild(&session, g);
                }
                self.table
                    .unsubscribe(Topic::User(session.user), session.key());
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
                        s.lock().guilds.retain(|g| *g != guild);
                        let body = format!(r#"{{"id":"{guild}"}}"#);
                        s.push(Event::session_only("GUILD_DELETE", body.into(), now));
                    }
                }
                let _ = reply.send(left);
            }
            HubInput::DeliverSequenced {
                guild,
                event_type,
                body,
            } => {
                // The topic table numbers it locally, in the order given: the same
                // order as the owner's guild sequence.
                self.publish(Topic::Guild(guild), &event_type, body, now);
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
        }
    }

    fn publish(&mut self, topic: Topic, event_type: &str, body: Bytes, now: Instant) -> u64 {
        self.metrics.events_published.increment(1);
        let delivery = self.table.publish(topic, event_type, body, now);
        for session in delivery.subscribers {
            if session.deliver(&delivery.event, self.queue_limit) == Delivered::Overflowed {
                self.metrics.queue_overflows.increment(1);
            }
        }
        delivery.event.topic_seq
    }

    /// Sends GUILD_CREATE, then subscribes; returns false if already subscribed.
    fn join_guild(&mut self, session: &SessionRef, guild: GuildId, now: Instant) -> bool {
        if self.table.is_subscribed(Topic::Guild(guild), session.key()) {
            return false;
        }
        // One body per guild, shared by every session's GUILD_CREATE.
        let body = self
            .guild_objects
            .entry(guild)
            .or_insert_with(|| minimal_guild(guild))
            .clone();
        session.lock().guilds.push(guild);
        session.push(Event::session_only("GUILD_CREATE", body, now));
        let joined = self.table.subscribe(Topic::Guild(guild), session.clone());
        if joined && self.table.subscribers(Topic::Guild(guild)).len() == 1 {
            self.report(SubscriptionChange::Subscribe(guild));
        }
        joined
    }

    /// Unsubscribes a session from a guild; returns false if it was not subscribed.
    fn leave_guild(&mut self, session: &SessionRef, guild: GuildId) -> bool {
        let left = self.table.unsubscribe(Topic::Guild(guild), session.key());
        if left && self.table.subscribers(Topic::Guild(guild)).is_empty() {
            self.report(SubscriptionChange::Unsubscribe(guild));
        }
        left
    }

    fn report(&self, change: SubscriptionChange) {
        if let Some(tx) = &self.subscriptions {
            // Fails only when the router task stopped (shutdown): nothing to tell.
            let _ = tx.send(change);
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
                    guilds: vec![GuildId(5)],
                },
                now,
            );
        }
        let seq = hub.publish(Topic::Guild(GuildId(5)), "MESSAGE_CREATE", "{}".into(), now);
        assert_eq!(seq, 1);
        hub.publish(Topic::Guild(GuildId(5)), "CUSTOM", "{}".into(), now);
        assert_eq!(types(&all), ["GUILD_CREATE", "MESSAGE_CREATE", "CUSTOM"]);
        assert_eq!(types(&none), ["GUILD_CREATE", "CUSTOM"]);
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
        hub.publish(Topic::Guild(GuildId(7)), "X", "{}".into(), now);
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
        hub.publish(Topic::Guild(GuildId(7)), "Y", "{}".into(), now);
        assert_eq!(types(&s), ["GUILD_CREATE", "X", "GUILD_DELETE"]);
        let first = s.lock().log.unwritten().next().unwrap().1.body.clone();
        assert_eq!(&first[..], br#"{"id":"7","name":"seven"}"#);
    }
}
