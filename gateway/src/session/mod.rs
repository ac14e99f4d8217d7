//! Sessions: the state a client keeps across connections, and the registry that finds
//! it on resume.
//!
//! A session lives on the node its client connected to. Its [`SessionLog`] is both the
//! outbound queue and the replay buffer: the hub pushes every delivery into it and wakes
//! the connection, the connection writes what is unwritten, and a resume rewinds it.
//! Each session has its own small lock, taken by the hub for one push and by the
//! connection for one batch; no lock is shared by all connections.

pub mod machine;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use concord_protocol::{GuildId, Seq, SessionId, UserId};
use concord_router::cluster::{GuildSeq, NodeId};
use concord_router::continuity::{Entry, SessionIdentity, SessionSnapshot};
use concord_router::{ReplayLimits, ResumeError, SessionLog, SharedEvent, Subscriber, Topic};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Who a session belongs to and what it asked for; fixed for its lifetime.
#[derive(Debug)]
pub struct Session {
    /// The session id clients resume with.
    pub id: SessionId,
    /// The user the token named.
    pub user: UserId,
    /// The user's name.
    pub username: String,
    /// Whether the user is a bot.
    pub bot: bool,
    /// The Identify intents.
    pub intents: u64,
    state: Mutex<SessionState>,
    /// Woken when the log has something to write, or the session was taken over.
    pub wake: Notify,
}

/// A session's mutable state.
#[derive(Debug)]
pub struct SessionState {
    /// Sequence, replay index and write cursor.
    pub log: SessionLog,
    /// Guilds the session is subscribed to, each with its cursor: the last topic seq
    /// offered to the session (delivered or filtered), so an event offered twice (a
    /// replay overlapping live delivery after a resume elsewhere) is skipped.
    pub guilds: Vec<(GuildId, u64)>,
    /// Guilds marked passive (op 40): their events are skipped for this session.
    pub passive: Vec<GuildId>,
    /// Cancelled when the current connection must let go: a resume elsewhere, the end of
    /// the session, or a queue overflow. `None` while no connection is attached.
    pub attachment: Option<CancellationToken>,
    /// Bumped on every attach, so a stale detach is ignored.
    pub epoch: u64,
    /// Set when a delivery found the connection's queue over its limit.
    pub overflowed: bool,
    /// Set once the session is over; a late resume must not revive it.
    pub ended: bool,
    /// Set when the node lost events of one of this session's guilds (a cluster resync
    /// past the owner's log): the session cannot be resumed and must identify again.
    pub invalidated: bool,
    /// The node this session's changes are replicated to, if any (clustered, with
    /// session replication on, and another node on the ring).
    pub replica: Option<NodeId>,
}

impl SessionState {
    /// Whether the session is subscribed to `guild`.
    pub fn in_guild(&self, guild: GuildId) -> bool {
        self.guilds.iter().any(|(g, _)| *g == guild)
    }
}

/// A shared handle to a session; the hub subscribes these to topics.
pub type SessionRef = Arc<Session>;

impl Subscriber for Session {
    fn key(&self) -> u128 {
        self.id.0
    }
}

/// What happened to one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Queued for the session.
    Queued,
    /// Queued, and it put the connection over its queue limit: it will be closed with a
    /// resumable code.
    Overflowed,
    /// Not for this session (intents, or a passive guild).
    Skipped,
}

impl Session {
    /// A new session with an empty log and no connection attached.
    pub fn new(
        id: SessionId,
        user: UserId,
        username: String,
        bot: bool,
        intents: u64,
        replay: ReplayLimits,
    ) -> Session {
        Session::with_log(id, user, username, bot, intents, SessionLog::new(replay))
    }

    /// A session with no connection attached whose sequence and replay are `log`'s
    /// (a session resumed from another node continues its `s`).
    pub fn with_log(
        id: SessionId,
        user: UserId,
        username: String,
        bot: bool,
        intents: u64,
        log: SessionLog,
    ) -> Session {
        Session {
            id,
            user,
            username,
            bot,
            intents,
            state: Mutex::new(SessionState {
                log,
                guilds: Vec::new(),
                passive: Vec::new(),
                attachment: None,
                epoch: 0,
                overflowed: false,
                invalidated: false,
                ended: false,
                replica: None,
            }),
            wake: Notify::new(),
        }
    }

    /// Locks the session's state. A poisoned lock means a panic mid-update elsewhere;
    /// the log's invariants hold between calls, so the state is still usable.
    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        lock(&self.state)
    }

    /// Delivers a topic event: filters, assigns `s`, and wakes the connection.
    pub fn deliver(&self, event: &SharedEvent, queue_limit: u64) -> Delivered {
        self.deliver_with(event, queue_limit, |_, _| {})
    }

    /// [`Session::deliver`], calling `pushed` with the state and the `s` it assigned
    /// (under the session's lock) when the event was queued.
    ///
    /// The rule (the replica applies the same one, see `concord_router::continuity`): a
    /// guild event at or below the session's cursor there was offered before and is
    /// skipped; otherwise the cursor moves, then intents and passive guilds filter.
    pub fn deliver_with(
        &self,
        event: &SharedEvent,
        queue_limit: u64,
        pushed: impl FnOnce(&SessionState, Seq),
    ) -> Delivered {
        let outcome = {
            let mut st = self.lock();
            if let Some(Topic::Guild(g)) = event.topic {
                let Some((_, cursor)) = st.guilds.iter_mut().find(|(id, _)| *id == g) else {
                    return Delivered::Skipped;
                };
                if event.topic_seq <= *cursor {
                    return Delivered::Skipped;
                }
                *cursor = event.topic_seq;
                if st.passive.contains(&g) {
                    return Delivered::Skipped;
                }
            }
            if !event.wanted_by(self.intents) {
                return Delivered::Skipped;
            }
            let seq = st.log.push(Arc::clone(event));
            pushed(&st, seq);
            if st.attachment.is_some() && !st.overflowed && st.log.pending() > queue_limit {
                st.overflowed = true;
                // The writer may be stuck on a full socket: cut it loose.
                if let Some(token) = &st.attachment {
                    token.cancel();
                }
                Delivered::Overflowed
            } else {
                Delivered::Queued
            }
        };
        self.wake.notify_one();
        outcome
    }

    /// Pushes a session-only event (READY, GUILD_CREATE, ...) and wakes the connection;
    /// returns its `s`.
    pub fn push(&self, event: SharedEvent) -> Seq {
        let seq = self.lock().log.push(event);
        self.wake.notify_one();
        seq
    }

    /// Who the session is, for its replica.
    pub fn identity(&self) -> SessionIdentity {
        SessionIdentity {
            id: self.id,
            user: self.user,
            username: self.username.as_str().into(),
            bot: self.bot,
            intents: self.intents,
        }
    }

    /// The session's state for a replica or another node, with every `s` after
    /// `after` (`None`: all it keeps).
    ///
    /// # Errors
    /// `after` is ahead of the session, or older than what it keeps.
    pub fn snapshot(&self, after: Option<Seq>) -> Result<SessionSnapshot, ResumeError> {
        let st = self.lock();
        snapshot_of(self.identity(), &st, after)
    }
}

/// [`Session::snapshot`] on state the caller has locked.
pub fn snapshot_of(
    identity: SessionIdentity,
    st: &SessionState,
    after: Option<Seq>,
) -> Result<SessionSnapshot, ResumeError> {
    let base = after.unwrap_or_else(|| st.log.oldest_resumable());
    let entries = st
        .log
        .after(base)?
        .map(|(_, e)| match e.topic {
            Some(Topic::Guild(guild)) => Entry::Guild {
                guild,
                seq: GuildSeq(e.topic_seq),
            },
            _ => Entry::Inline {
                event_type: e.event_type.as_ref().into(),
                body: e.body.clone(),
            },
        })
        .collect();
    Ok(SessionSnapshot {
        identity,
        guilds: st.guilds.iter().map(|(g, c)| (*g, GuildSeq(*c))).collect(),
        passive: st.passive.clone(),
        base_seq: base.0,
        entries,
    })
}

/// Every session on this node, by id, plus the queue of detached sessions waiting to
/// expire.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<SessionId, SessionRef>>,
    expiry: Mutex<ExpiryQueue>,
}

impl Registry {
    /// Adds a session.
    pub fn insert(&self, session: SessionRef) {
        lock(&self.sessions).insert(session.id, session);
    }

    /// Finds a session.
    pub fn find(&self, id: SessionId) -> Option<SessionRef> {
        lock(&self.sessions).get(&id).cloned()
    }

    /// Removes a session.
    pub fn remove(&self, id: SessionId) -> Option<SessionRef> {
        lock(&self.sessions).remove(&id)
    }

    /// Every session, in no order.
    pub fn all(&self) -> Vec<SessionRef> {
        lock(&self.sessions).values().cloned().collect()
    }

    /// How many sessions there are.
    pub fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Schedules a detached session to expire at `deadline` unless reattached.
    pub fn schedule_expiry(&self, id: SessionId, epoch: u64, deadline: Instant) {
        lock(&self.expiry).push(id, epoch, deadline);
    }

    /// Removes and returns the sessions whose resume window passed by `now` without a
    /// reattach.
    pub fn expire(&self, now: Instant) -> Vec<SessionRef> {
        let due = lock(&self.expiry).pop_due(now);
        let mut expired = Vec::new();
        for (id, epoch) in due {
            let Some(session) = self.find(id) else {
                continue;
            };
            let still_detached = {
                let mut st = session.lock();
                let stale = st.attachment.is_none() && st.epoch == epoch;
                if stale {
                    st.ended = true;
                }
                stale
            };
            if still_detached {
                self.remove(id);
                expired.push(session);
            }
        }
        expired
    }
}

/// Locks `m`, taking the data even if a panic poisoned it: every state guarded this way
/// keeps its invariants between calls.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Detached sessions by deadline. The resume window is the same for every session, so
/// deadlines arrive in order and a queue suffices.
#[derive(Debug, Default)]
pub struct ExpiryQueue {
    queue: VecDeque<(Instant, SessionId, u64)>,
}

impl ExpiryQueue {
    /// Adds an entry.
    pub fn push(&mut self, id: SessionId, epoch: u64, deadline: Instant) {
        self.queue.push_back((deadline, id, epoch));
    }

    /// Removes and returns the entries due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Vec<(SessionId, u64)> {
        let mut due = Vec::new();
        while let Some(&(deadline, id, epoch)) = self.queue.front() {
            if deadline > now {
                break;
            }
            self.queue.pop_front();
            due.push((id, epoch));
        }
        due
    }
}

/// How often the reaper looks for expired sessions.
pub const EXPIRY_TICK: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;
    use concord_router::Event;

    fn session(id: u128) -> SessionRef {
        Arc::new(Session::new(
            SessionId(id),
            UserId(1),
            "u".into(),
            false,
            0,
            ReplayLimits::default(),
        ))
    }

    #[test]
    fn expiry_skips_reattached_sessions() {
        let t0 = Instant::now();
        let reg = Registry::default();
        let (a, b) = (session(1), session(2));
        reg.insert(a.clone());
        reg.insert(b.clone());
        reg.schedule_expiry(a.id, 0, t0);
        reg.schedule_expiry(b.id, 0, t0);
        // b reattached (new epoch) before its deadline.
        {
            let mut st = b.lock();
            st.epoch = 1;
            st.attachment = Some(CancellationToken::new());
        }
        let expired = reg.expire(t0);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].id, a.id);
        assert!(a.lock().ended);
        assert!(reg.find(a.id).is_none() && reg.find(b.id).is_some());
    }

    #[test]
    fn overflow_is_reported_once_while_attached() {
        let s = session(1);
        s.lock().attachment = Some(CancellationToken::new());
        let ev = Event::session_only("X", Bytes::new(), Instant::now());
        assert_eq!(s.deliver(&ev, 1), Delivered::Queued);
        assert_eq!(s.deliver(&ev, 1), Delivered::Overflowed);
        assert_eq!(s.deliver(&ev, 1), Delivered::Queued);
        assert_eq!(s.lock().log.pending(), 3);
    }
}
