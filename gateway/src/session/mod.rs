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

use concord_protocol::{GuildId, SessionId, UserId};
use concord_router::{ReplayLimits, SessionLog, SharedEvent, Subscriber, Topic};
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
    /// Guilds the session is subscribed to.
    pub guilds: Vec<GuildId>,
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
        Session {
            id,
            user,
            username,
            bot,
            intents,
            state: Mutex::new(SessionState {
                log: SessionLog::new(replay),
                guilds: Vec::new(),
                passive: Vec::new(),
                attachment: None,
                epoch: 0,
                overflowed: false,
                invalidated: false,
                ended: false,
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
        if !event.wanted_by(self.intents) {
            return Delivered::Skipped;
        }
        let outcome = {
            let mut st = self.lock();
            if let Some(Topic::Guild(g)) = event.topic
                && st.passive.contains(&g)
            {
                return Delivered::Skipped;
            }
            st.log.push(Arc::clone(event));
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

    /// Pushes a session-only event (READY, GUILD_CREATE, ...) and wakes the connection.
    pub fn push(&self, event: SharedEvent) {
        self.lock().log.push(event);
        self.wake.notify_one();
    }
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
