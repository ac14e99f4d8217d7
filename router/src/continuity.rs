//! # Session continuity: replicas of sessions, and rebuilding one on another node
//!
//! A session lives on the node its client is connected to (its **host**). So that the
//! client can resume on ANY node, even after the host crashed, the host streams every
//! change of every session to the session's **replica** node (the first node of the
//! session partition's preference list that is not the host). This module is the
//! sans-IO core of both ends, with no IO and no clock:
//!
//! - The host describes what its hub did as [`SessionOp`]s, in the hub's order.
//!   Deliveries are node-level: one [`SessionOp::Deliver`] per event per replica node,
//!   never one per session. The replica knows which of its sessions from that host are
//!   subscribed, and applies the same rules the host applied (the guild cursor, the
//!   intents, the passive guilds), so it assigns each session the same `s` the host did.
//! - [`SessionReplicas`] keeps those replicas: for each session its identity, guilds,
//!   passive guilds and, for each `s` still resumable, what it carried (a guild event by
//!   `(guild, guild seq)`, whose body is in the guild's log, or a session-only event
//!   with its body inline). [`SessionReplicas::snapshot`] answers a resume at a client
//!   `seq`.
//! - [`fetch_plan`] and [`rebuild`] turn such a [`SessionSnapshot`] back into a replay on
//!   the node the client resumed on: which guild events to fetch from the guild logs,
//!   then the exact replay (`s` continuing after the client's seq) and where each guild
//!   continues live.
//!
//! ## Guarantee
//! Given the ops in order, the replica's `s` for every event equals the host's (checked
//! by a property test against a model of the host). With `sync` replication the host
//! writes a frame only after the replica acknowledged the op that assigned its `s`, so
//! any `s` a client can resume from is known to the replica.
//!
//! ## Layout
//! - [`SessionOp`], [`SessionSnapshot`], [`Entry`]: what a host says and what a replica
//!   answers.
//! - [`SessionReplicas`]: the replica store.
//! - [`fetch_plan`], [`rebuild`], [`Rebuilt`], [`ReplayItem`]: the resuming side.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use concord_protocol::{GuildId, SessionId, UserId};

use crate::cluster::{GuildEvent, GuildSeq, NodeId};
use crate::event::{Topic, required_intent};

/// Who a session belongs to and what it asked for; fixed for its lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionIdentity {
    /// The session id clients resume with.
    pub id: SessionId,
    /// The user the token named.
    pub user: UserId,
    /// The user's name.
    pub username: Arc<str>,
    /// Whether the user is a bot.
    pub bot: bool,
    /// The Identify intents.
    pub intents: u64,
}

/// What one `s` of a session carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A guild event, by its place in the guild's sequence (the body is in the guild log).
    Guild {
        /// The guild.
        guild: GuildId,
        /// Its guild seq.
        seq: GuildSeq,
    },
    /// An event with its body: a session's own (READY, GUILD_CREATE, RESUMED, ...) or a
    /// direct user event (user topics keep no cluster log).
    Inline {
        /// `t`.
        event_type: Arc<str>,
        /// `d`, serialised JSON.
        body: Bytes,
    },
}

/// A session's whole replicated state: sent as [`SessionOp::Open`] when a host starts
/// replicating a session (or moves its replica), and answered to a resume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSnapshot {
    /// Identity and intents.
    pub identity: SessionIdentity,
    /// Guilds the session is subscribed to, each with its cursor: the last guild seq the
    /// session was offered (delivered, or filtered out).
    pub guilds: Vec<(GuildId, GuildSeq)>,
    /// Guilds marked passive (op 40).
    pub passive: Vec<GuildId>,
    /// The `s` before the first entry.
    pub base_seq: u64,
    /// `entries[i]` is what `s = base_seq + 1 + i` carried.
    pub entries: Vec<Entry>,
}

impl SessionSnapshot {
    /// The last `s` given out.
    pub fn last_seq(&self) -> u64 {
        self.base_seq + self.entries.len() as u64
    }

    /// This snapshot cut at a client's `client_seq`: the entries are what follows it.
    ///
    /// # Errors
    /// [`SnapshotError::Ahead`] or [`SnapshotError::TooOld`].
    pub fn cut(mut self, client_seq: u64) -> Result<SessionSnapshot, SnapshotError> {
        let last = self.last_seq();
        if client_seq > last {
            return Err(SnapshotError::Ahead {
                client: client_seq,
                last,
            });
        }
        if client_seq < self.base_seq {
            return Err(SnapshotError::TooOld {
                client: client_seq,
                oldest: self.base_seq + 1,
            });
        }
        let skip = usize::try_from(client_seq - self.base_seq).unwrap_or(usize::MAX);
        self.entries.drain(..skip.min(self.entries.len()));
        self.base_seq = client_seq;
        Ok(self)
    }
}

/// What nodes say to each other about sessions (carried as
/// [`crate::PeerFrame::Session`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionFrame {
    /// Host -> replica node: apply these ops in order, then acknowledge `batch`.
    Ops {
        /// The host's batch number for this replica node (increasing).
        batch: u64,
        /// The ops.
        ops: Vec<SessionOp>,
    },
    /// Replica node -> host: every batch up to this one is applied.
    OpsAck {
        /// The batch.
        batch: u64,
    },
    /// Resuming node -> a node that may know the session (its directory, or its host).
    ResumeRequest {
        /// The asker's id.
        request: u64,
        /// The session.
        session: SessionId,
        /// The user the resuming client's token names (a session is handed only to its
        /// own user).
        user: UserId,
        /// The client's last `s`.
        client_seq: u64,
    },
    /// Answer to a resume request.
    ResumeAnswer {
        /// The asker's id.
        request: u64,
        /// The session cut at the client's seq, and how it was found.
        answer: Result<(SessionSnapshot, Takeover), ResumeRefusal>,
    },
    /// Directory -> live host: let the session go, and send its final state from
    /// `client_seq` on (the host cuts it there, so only what the client misses travels).
    Release {
        /// The directory's id.
        request: u64,
        /// The session.
        session: SessionId,
        /// The user the resuming client's token names.
        user: UserId,
        /// The resuming client's last `s`.
        client_seq: u64,
    },
    /// Host -> directory: the session was let go (with its state), or was not here.
    Released {
        /// The directory's id.
        request: u64,
        /// The session.
        session: SessionId,
        /// Its final state, if the host had it.
        snapshot: Option<Box<SessionSnapshot>>,
    },
}

/// How a resumed session was taken over from its old host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Takeover {
    /// The old host was alive and let it go.
    Migrated,
    /// The old host was gone; its replica was promoted.
    Promoted,
}

/// Why a node could not hand over a session. Permanent for that node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResumeRefusal {
    /// This node knows no such session.
    #[error("unknown session")]
    Unknown,
    /// The client's seq is ahead of what the session sent (close 4007).
    #[error("resume seq is ahead of the session")]
    Ahead,
    /// What follows the client's seq is no longer kept (op 9).
    #[error("resume seq is too old")]
    TooOld,
}

impl From<SnapshotError> for ResumeRefusal {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Unknown => ResumeRefusal::Unknown,
            SnapshotError::Ahead { .. } => ResumeRefusal::Ahead,
            SnapshotError::TooOld { .. } => ResumeRefusal::TooOld,
        }
    }
}

/// One change a host made to its sessions, in its hub's order. Ops from one host to one
/// replica node must be applied in the order they were made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionOp {
    /// Start (or restart) replicating a session from this state; replaces any replica
    /// of the same id.
    Open(Box<SessionSnapshot>),
    /// A session-only event took the session's next `s`.
    Push {
        /// The session.
        session: SessionId,
        /// `t`.
        event_type: Arc<str>,
        /// `d`.
        body: Bytes,
    },
    /// An event was offered to every session of the host subscribed to `topic`.
    Deliver {
        /// The guild or user it was published to.
        topic: Topic,
        /// Its topic seq (the guild seq, for guilds).
        seq: u64,
        /// `t` (intents filter on it).
        event_type: Arc<str>,
        /// `d`, for user topics only: guild bodies are in the guild logs.
        body: Option<Bytes>,
    },
    /// The session joined a guild; its cursor there starts at `after`.
    Join {
        /// The session.
        session: SessionId,
        /// The guild.
        guild: GuildId,
        /// The guild seq it starts after.
        after: GuildSeq,
    },
    /// The session left a guild.
    Leave {
        /// The session.
        session: SessionId,
        /// The guild.
        guild: GuildId,
    },
    /// The session marked a guild passive (`true`) or active.
    Passive {
        /// The session.
        session: SessionId,
        /// The guild.
        guild: GuildId,
        /// Passive or not.
        passive: bool,
    },
    /// The session is over here (ended, expired, or moved to another host): drop it.
    End {
        /// The session.
        session: SessionId,
    },
}

/// Why a replica cannot answer a resume. Nothing changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// No replica of this session is held here. Permanent for this node.
    #[error("no replica of this session here")]
    Unknown,
    /// The client claims an `s` the replica never saw (close 4007, or, with async
    /// replication, ops lost with the host). Permanent.
    #[error("resume seq {client} is ahead of the replica's last seq {last}")]
    Ahead {
        /// The client's seq.
        client: u64,
        /// The replica's last seq.
        last: u64,
    },
    /// Entries after the client's seq were trimmed (op 9). Permanent.
    #[error("events after seq {client} left the replica (oldest kept: {oldest})")]
    TooOld {
        /// The client's seq.
        client: u64,
        /// The oldest seq kept.
        oldest: u64,
    },
}

/// One session's replica.
#[derive(Debug)]
struct Replica {
    host: NodeId,
    identity: SessionIdentity,
    cursors: BTreeMap<GuildId, GuildSeq>,
    passive: BTreeSet<GuildId>,
    base_seq: u64,
    entries: VecDeque<Entry>,
}

impl Replica {
    fn push(&mut self, entry: Entry, max_entries: usize) {
        self.entries.push_back(entry);
        while self.entries.len() > max_entries {
            self.entries.pop_front();
            self.base_seq += 1;
        }
    }
}

/// The session replicas one node holds for other nodes' sessions.
#[derive(Debug)]
pub struct SessionReplicas {
    sessions: HashMap<SessionId, Replica>,
    /// `(host, guild) -> sessions of that host subscribed to it`.
    by_guild: HashMap<(NodeId, GuildId), BTreeSet<SessionId>>,
    /// `(host, user) -> that user's sessions on that host`.
    by_user: HashMap<(NodeId, UserId), BTreeSet<SessionId>>,
    max_entries: usize,
}

impl SessionReplicas {
    /// A store that keeps at most `max_entries` resumable `s` per session (the host's
    /// replay limit in events).
    pub fn new(max_entries: usize) -> Self {
        SessionReplicas {
            sessions: HashMap::new(),
            by_guild: HashMap::new(),
            by_user: HashMap::new(),
            max_entries: max_entries.max(1),
        }
    }

    /// The user of a replicated session.
    pub fn user_of(&self, session: SessionId) -> Option<UserId> {
        self.sessions.get(&session).map(|r| r.identity.user)
    }

    /// Drops every replica whose host is `host` (it died and its resume window passed).
    pub fn drop_host(&mut self, host: &NodeId) -> usize {
        let ids: Vec<SessionId> = self.sessions_of(host).collect();
        for id in &ids {
            self.remove(*id);
        }
        ids.len()
    }

    /// How many sessions are replicated here.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The host of a replicated session.
    pub fn host_of(&self, session: SessionId) -> Option<&NodeId> {
        self.sessions.get(&session).map(|r| &r.host)
    }

    /// The sessions replicated here whose host is `host`.
    pub fn sessions_of<'a>(&'a self, host: &'a NodeId) -> impl Iterator<Item = SessionId> + 'a {
        self.sessions
            .iter()
            .filter(move |(_, r)| &r.host == host)
            .map(|(id, _)| *id)
    }

    /// Applies one op from `host`. Ops naming a session this node does not replicate
    /// for `host` are ignored (it moved, or its `Open` was lost with a link; the host
    /// re-opens it on the next ring change).
    pub fn apply(&mut self, host: &NodeId, op: SessionOp) {
        let max = self.max_entries;
        match op {
            SessionOp::Open(snapshot) => self.open(host, *snapshot),
            SessionOp::Push {
                session,
                event_type,
                body,
            } => {
                if let Some(r) = self.replica_mut(host, session) {
                    r.push(Entry::Inline { event_type, body }, max);
                }
            }
            SessionOp::Deliver {
                topic,
                seq,
                event_type,
                body,
            } => self.deliver(host, topic, seq, &event_type, body),
            SessionOp::Join {
                session,
                guild,
                after,
            } => {
                if let Some(r) = self.replica_mut(host, session) {
                    r.cursors.insert(guild, after);
                    self.by_guild
                        .entry((host.clone(), guild))
                        .or_default()
                        .insert(session);
                }
            }
            SessionOp::Leave { session, guild } => {
                if let Some(r) = self.replica_mut(host, session) {
                    r.cursors.remove(&guild);
                    r.passive.remove(&guild);
                    self.unindex_guild(host, guild, session);
                }
            }
            SessionOp::Passive {
                session,
                guild,
                passive,
            } => {
                if let Some(r) = self.replica_mut(host, session) {
                    if passive {
                        r.passive.insert(guild);
                    } else {
                        r.passive.remove(&guild);
                    }
                }
            }
            SessionOp::End { session } => {
                if self.host_of(session) == Some(host) {
                    self.remove(session);
                }
            }
        }
    }

    /// Drops a session's replica (it resumed elsewhere, or its window passed).
    pub fn remove(&mut self, session: SessionId) {
        let Some(r) = self.sessions.remove(&session) else {
            return;
        };
        for guild in r.cursors.keys() {
            self.unindex_guild(&r.host, *guild, session);
        }
        let key = (r.host, r.identity.user);
        if let Some(set) = self.by_user.get_mut(&key) {
            set.remove(&session);
            if set.is_empty() {
                self.by_user.remove(&key);
            }
        }
    }

    /// What a client resuming `session` from `client_seq` must be sent: the replica cut
    /// at `client_seq` (its entries are the `s` after it), and the host it came from.
    ///
    /// # Errors
    /// [`SnapshotError`]; nothing changes.
    pub fn snapshot(
        &self,
        session: SessionId,
        client_seq: u64,
    ) -> Result<(NodeId, SessionSnapshot), SnapshotError> {
        let r = self.sessions.get(&session).ok_or(SnapshotError::Unknown)?;
        let full = SessionSnapshot {
            identity: r.identity.clone(),
            guilds: r.cursors.iter().map(|(g, c)| (*g, *c)).collect(),
            passive: r.passive.iter().copied().collect(),
            base_seq: r.base_seq,
            entries: r.entries.iter().cloned().collect(),
        };
        Ok((r.host.clone(), full.cut(client_seq)?))
    }

    fn open(&mut self, host: &NodeId, snapshot: SessionSnapshot) {
        let id = snapshot.identity.id;
        self.remove(id);
        let mut entries: VecDeque<Entry> = snapshot.entries.into();
        let mut base_seq = snapshot.base_seq;
        while entries.len() > self.max_entries {
            entries.pop_front();
            base_seq += 1;
        }
        let cursors: BTreeMap<GuildId, GuildSeq> = snapshot.guilds.into_iter().collect();
        for guild in cursors.keys() {
            self.by_guild
                .entry((host.clone(), *guild))
                .or_default()
                .insert(id);
        }
        self.by_user
            .entry((host.clone(), snapshot.identity.user))
            .or_default()
            .insert(id);
        self.sessions.insert(
            id,
            Replica {
                host: host.clone(),
                identity: snapshot.identity,
                cursors,
                passive: snapshot.passive.into_iter().collect(),
                base_seq,
                entries,
            },
        );
    }

    fn deliver(
        &mut self,
        host: &NodeId,
        topic: Topic,
        seq: u64,
        event_type: &Arc<str>,
        body: Option<Bytes>,
    ) {
        let max = self.max_entries;
        let required = required_intent(topic, event_type);
        let ids = match topic {
            Topic::Guild(g) => self.by_guild.get(&(host.clone(), g)),
            Topic::User(u) => self.by_user.get(&(host.clone(), u)),
        };
        let Some(ids) = ids else {
            return;
        };
        for id in ids {
            let Some(r) = self.sessions.get_mut(id) else {
                continue;
            };
            if let Some(entry) = offer(r, topic, seq, required, event_type, body.as_ref()) {
                r.push(entry, max);
            }
        }
    }

    fn replica_mut(&mut self, host: &NodeId, session: SessionId) -> Option<&mut Replica> {
        self.sessions.get_mut(&session).filter(|r| &r.host == host)
    }

    fn unindex_guild(&mut self, host: &NodeId, guild: GuildId, session: SessionId) {
        let key = (host.clone(), guild);
        if let Some(set) = self.by_guild.get_mut(&key) {
            set.remove(&session);
            if set.is_empty() {
                self.by_guild.remove(&key);
            }
        }
    }
}

/// The rule every host and replica applies when an event of `topic` is offered to a
/// session: a guild event at or below the session's cursor was offered before (skip);
/// otherwise the cursor moves, and the event takes the next `s` unless the intents or a
/// passive guild filter it out. Returns the entry it took, if any.
fn offer(
    r: &mut Replica,
    topic: Topic,
    seq: u64,
    required: Option<u64>,
    event_type: &Arc<str>,
    body: Option<&Bytes>,
) -> Option<Entry> {
    let wanted = required.is_none_or(|i| r.identity.intents & i != 0);
    match topic {
        Topic::Guild(g) => {
            let cursor = r.cursors.get_mut(&g)?;
            if seq <= cursor.0 {
                return None;
            }
            *cursor = GuildSeq(seq);
            (wanted && !r.passive.contains(&g)).then_some(Entry::Guild {
                guild: g,
                seq: GuildSeq(seq),
            })
        }
        Topic::User(_) => wanted.then(|| Entry::Inline {
            event_type: Arc::clone(event_type),
            body: body.cloned().unwrap_or_default(),
        }),
    }
}

/// For each guild whose events a rebuild needs, the guild seq after which to fetch
/// them from the guild's log: the entries after the client's seq, and every event the
/// old host had not offered yet.
pub fn fetch_plan(snapshot: &SessionSnapshot) -> BTreeMap<GuildId, GuildSeq> {
    let mut plan: BTreeMap<GuildId, GuildSeq> = snapshot.guilds.iter().copied().collect();
    for entry in &snapshot.entries {
        if let Entry::Guild { guild, seq } = entry {
            let from = GuildSeq(seq.0.saturating_sub(1));
            plan.entry(*guild)
                .and_modify(|f| *f = (*f).min(from))
                .or_insert(from);
        }
    }
    plan
}

/// One event of a rebuilt replay, in `s` order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayItem {
    /// The guild it belongs to (`None` for inline events).
    pub guild: Option<GuildId>,
    /// Its guild seq (0 for inline events).
    pub seq: GuildSeq,
    /// `t`.
    pub event_type: Arc<str>,
    /// `d`.
    pub body: Bytes,
}

/// A session rebuilt on the node its client resumed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebuilt {
    /// What the client must get after its seq, in order (`s` = client seq + 1 + i).
    pub replay: Vec<ReplayItem>,
    /// Each subscribed guild with the guild seq live delivery continues after.
    pub cursors: Vec<(GuildId, GuildSeq)>,
}

/// Why a rebuild failed: an event the session must replay is in no log any more. The
/// client gets op 9 (identify again). Permanent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("guild {guild} event {seq} is past every log")]
pub struct RebuildError {
    /// The guild.
    pub guild: GuildId,
    /// The missing guild seq.
    pub seq: GuildSeq,
}

/// Rebuilds the replay of `snapshot` (cut at the client's seq) from `fetched`: for each
/// guild of [`fetch_plan`], the guild's replicated events after the planned seq, in
/// order (more than needed is fine). First the entries the old host assigned, in their
/// order; then, per guild, the events it had not offered yet, filtered by the same
/// rule the host applies.
///
/// # Errors
/// [`RebuildError`] when an entry's event is not in `fetched`.
pub fn rebuild(
    snapshot: &SessionSnapshot,
    fetched: &BTreeMap<GuildId, Vec<GuildEvent>>,
) -> Result<Rebuilt, RebuildError> {
    let find = |guild: GuildId, seq: GuildSeq| {
        fetched
            .get(&guild)
            .and_then(|events| {
                events
                    .binary_search_by_key(&seq, |e| e.seq)
                    .ok()
                    .map(|i| &events[i])
            })
            .ok_or(RebuildError { guild, seq })
    };
    let mut replay = Vec::with_capacity(snapshot.entries.len());
    for entry in &snapshot.entries {
        replay.push(match entry {
            Entry::Guild { guild, seq } => {
                let e = find(*guild, *seq)?;
                ReplayItem {
                    guild: Some(*guild),
                    seq: *seq,
                    event_type: Arc::clone(&e.event_type),
                    body: e.body.clone(),
                }
            }
            Entry::Inline { event_type, body } => ReplayItem {
                guild: None,
                seq: GuildSeq(0),
                event_type: Arc::clone(event_type),
                body: body.clone(),
            },
        });
    }
    let mut rebuilt = Rebuilt {
        replay,
        cursors: snapshot.guilds.clone(),
    };
    for &(guild, _) in &snapshot.guilds {
        let events = fetched.get(&guild).map_or(&[][..], Vec::as_slice);
        extend(
            &mut rebuilt,
            snapshot.identity.intents,
            &snapshot.passive,
            guild,
            events,
        )?;
    }
    Ok(rebuilt)
}

/// Appends to `rebuilt` the events of `guild` past its cursor there, in order and
/// filtered by the host's rule (intents, passive guilds), and moves the cursor. Used by
/// [`rebuild`], and again when the node the session resumed on has delivered further in
/// that guild than the rebuild reached.
///
/// # Errors
/// [`RebuildError`] when `events` skip a seq after the cursor; `rebuilt` is then
/// unchanged for `guild`'s cursor but may hold some of its events.
pub fn extend(
    rebuilt: &mut Rebuilt,
    intents: u64,
    passive: &[GuildId],
    guild: GuildId,
    events: &[GuildEvent],
) -> Result<(), RebuildError> {
    let Some(slot) = rebuilt.cursors.iter().position(|(g, _)| *g == guild) else {
        return Ok(());
    };
    let mut last = rebuilt.cursors[slot].1;
    for e in events {
        if e.seq <= last {
            continue;
        }
        if e.seq != last.next() {
            // The log skipped events the session never got.
            return Err(RebuildError {
                guild,
                seq: last.next(),
            });
        }
        last = e.seq;
        let required = required_intent(Topic::Guild(guild), &e.event_type);
        let wanted = required.is_none_or(|i| intents & i != 0);
        if wanted && !passive.contains(&guild) {
            rebuilt.replay.push(ReplayItem {
                guild: Some(guild),
                seq: e.seq,
                event_type: Arc::clone(&e.event_type),
                body: e.body.clone(),
            });
        }
    }
    rebuilt.cursors[slot].1 = last;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cluster::PublishId;
    use concord_protocol::intents;
    use proptest::prelude::*;

    fn identity(id: u128, user: u64, intents: u64) -> SessionIdentity {
        SessionIdentity {
            id: SessionId(id),
            user: UserId(user),
            username: "u".into(),
            bot: false,
            intents,
        }
    }

    fn open(id: u128, user: u64, intents: u64) -> SessionOp {
        SessionOp::Open(Box::new(SessionSnapshot {
            identity: identity(id, user, intents),
            guilds: vec![],
            passive: vec![],
            base_seq: 0,
            entries: vec![],
        }))
    }

    fn push(id: u128, t: &str) -> SessionOp {
        SessionOp::Push {
            session: SessionId(id),
            event_type: t.into(),
            body: Bytes::from_static(b"{}"),
        }
    }

    fn deliver(guild: u64, seq: u64, t: &str) -> SessionOp {
        SessionOp::Deliver {
            topic: Topic::Guild(GuildId(guild)),
            seq,
            event_type: t.into(),
            body: None,
        }
    }

    fn event(guild: u64, seq: u64, t: &str) -> GuildEvent {
        GuildEvent {
            guild: GuildId(guild),
            seq: GuildSeq(seq),
            origin: NodeId::new("o"),
            publish_id: PublishId(seq),
            event_type: t.into(),
            body: Bytes::from(format!("{{\"n\":{seq}}}")),
        }
    }

    fn join(id: u128, guild: u64, after: u64) -> SessionOp {
        SessionOp::Join {
            session: SessionId(id),
            guild: GuildId(guild),
            after: GuildSeq(after),
        }
    }

    #[test]
    fn deliveries_take_the_same_s_as_on_the_host() {
        let h = NodeId::new("h");
        let mut r = SessionReplicas::new(100);
        for op in [
            open(1, 10, intents::ALL),
            push(1, "READY"),
            push(1, "GUILD_CREATE"),
            join(1, 5, 3),
            deliver(5, 3, "MESSAGE_CREATE"), // at the cursor: offered before
            deliver(5, 4, "MESSAGE_CREATE"),
            deliver(6, 1, "MESSAGE_CREATE"), // not subscribed
            SessionOp::Passive {
                session: SessionId(1),
                guild: GuildId(5),
                passive: true,
            },
            deliver(5, 5, "MESSAGE_CREATE"), // passive: cursor moves, no s
            SessionOp::Passive {
                session: SessionId(1),
                guild: GuildId(5),
                passive: false,
            },
            deliver(5, 6, "MESSAGE_CREATE"),
        ] {
            r.apply(&h, op);
        }
        let (host, snap) = r.snapshot(SessionId(1), 2).unwrap();
        assert_eq!(host, h);
        assert_eq!(snap.last_seq(), 4);
        assert_eq!(
            snap.entries,
            vec![
                Entry::Guild {
                    guild: GuildId(5),
                    seq: GuildSeq(4)
                },
                Entry::Guild {
                    guild: GuildId(5),
                    seq: GuildSeq(6)
                },
            ]
        );
        assert_eq!(snap.guilds, vec![(GuildId(5), GuildSeq(6))]);
        assert_eq!(
            r.snapshot(SessionId(1), 5),
            Err(SnapshotError::Ahead { client: 5, last: 4 })
        );
        assert_eq!(r.snapshot(SessionId(2), 0), Err(SnapshotError::Unknown));
    }

    #[test]
    fn ops_from_another_host_do_not_touch_a_replica() {
        let (h, other) = (NodeId::new("h"), NodeId::new("x"));
        let mut r = SessionReplicas::new(100);
        r.apply(&h, open(1, 10, intents::ALL));
        r.apply(&h, join(1, 5, 0));
        r.apply(&other, push(1, "X"));
        r.apply(&other, deliver(5, 1, "MESSAGE_CREATE"));
        r.apply(
            &other,
            SessionOp::End {
                session: SessionId(1),
            },
        );
        assert_eq!(r.snapshot(SessionId(1), 0).unwrap().1.last_seq(), 0);
        // The host moved it: a new Open from the new host replaces it.
        r.apply(&other, open(1, 10, intents::ALL));
        assert_eq!(r.host_of(SessionId(1)), Some(&other));
        r.apply(&h, deliver(5, 2, "MESSAGE_CREATE"));
        assert_eq!(r.snapshot(SessionId(1), 0).unwrap().1.last_seq(), 0);
        r.apply(
            &other,
            SessionOp::End {
                session: SessionId(1),
            },
        );
        assert!(r.is_empty());
        assert!(r.by_guild.is_empty() && r.by_user.is_empty());
    }

    #[test]
    fn the_oldest_entries_are_trimmed_past_the_limit() {
        let h = NodeId::new("h");
        let mut r = SessionReplicas::new(3);
        r.apply(&h, open(1, 10, intents::ALL));
        for _ in 0..5 {
            r.apply(&h, push(1, "X"));
        }
        assert_eq!(
            r.snapshot(SessionId(1), 1),
            Err(SnapshotError::TooOld {
                client: 1,
                oldest: 3
            })
        );
        assert_eq!(r.snapshot(SessionId(1), 2).unwrap().1.entries.len(), 3);
    }

    #[test]
    fn user_events_are_inline_and_filtered_by_intents() {
        let h = NodeId::new("h");
        let mut r = SessionReplicas::new(100);
        r.apply(&h, open(1, 10, 0));
        r.apply(&h, open(2, 10, intents::ALL));
        r.apply(
            &h,
            SessionOp::Deliver {
                topic: Topic::User(UserId(10)),
                seq: 1,
                event_type: "TYPING_START".into(),
                body: Some(Bytes::from_static(b"{\"a\":1}")),
            },
        );
        assert!(r.snapshot(SessionId(1), 0).unwrap().1.entries.is_empty());
        let (_, snap) = r.snapshot(SessionId(2), 0).unwrap();
        assert_eq!(
            snap.entries,
            vec![Entry::Inline {
                event_type: "TYPING_START".into(),
                body: Bytes::from_static(b"{\"a\":1}")
            }]
        );
    }

    #[test]
    fn rebuild_replays_entries_then_what_the_host_never_offered() {
        let snap = SessionSnapshot {
            identity: identity(1, 10, intents::ALL),
            guilds: vec![(GuildId(5), GuildSeq(4)), (GuildId(6), GuildSeq(0))],
            passive: vec![GuildId(6)],
            base_seq: 7,
            entries: vec![
                Entry::Guild {
                    guild: GuildId(5),
                    seq: GuildSeq(3),
                },
                Entry::Inline {
                    event_type: "GUILD_CREATE".into(),
                    body: Bytes::from_static(b"{}"),
                },
                Entry::Guild {
                    guild: GuildId(5),
                    seq: GuildSeq(4),
                },
            ],
        };
        let plan = fetch_plan(&snap);
        assert_eq!(
            plan.into_iter().collect::<Vec<_>>(),
            vec![(GuildId(5), GuildSeq(2)), (GuildId(6), GuildSeq(0))]
        );
        let mut fetched = BTreeMap::new();
        fetched.insert(GuildId(5), (1..=6).map(|s| event(5, s, "X")).collect());
        fetched.insert(GuildId(6), vec![event(6, 1, "X")]);
        let rebuilt = rebuild(&snap, &fetched).unwrap();
        let got: Vec<(Option<u64>, u64)> = rebuilt
            .replay
            .iter()
            .map(|i| (i.guild.map(|g| g.0), i.seq.0))
            .collect();
        // Guild 6 is passive: its event moves the cursor but is not replayed.
        assert_eq!(
            got,
            vec![
                (Some(5), 3),
                (None, 0),
                (Some(5), 4),
                (Some(5), 5),
                (Some(5), 6)
            ]
        );
        assert_eq!(
            rebuilt.cursors,
            vec![(GuildId(5), GuildSeq(6)), (GuildId(6), GuildSeq(1))]
        );

        fetched.insert(GuildId(5), vec![event(5, 4, "X")]);
        assert_eq!(
            rebuild(&snap, &fetched),
            Err(RebuildError {
                guild: GuildId(5),
                seq: GuildSeq(3)
            })
        );
        // A log that skips what the host never offered is a loss too.
        fetched.insert(
            GuildId(5),
            vec![event(5, 3, "X"), event(5, 4, "X"), event(5, 6, "X")],
        );
        assert_eq!(
            rebuild(&snap, &fetched),
            Err(RebuildError {
                guild: GuildId(5),
                seq: GuildSeq(5)
            })
        );
    }

    /// A model of the host: what its hub does to one session's log.
    #[derive(Default)]
    struct HostModel {
        log: Vec<Entry>,
        cursors: BTreeMap<GuildId, GuildSeq>,
        passive: BTreeSet<GuildId>,
    }

    #[derive(Clone, Debug)]
    enum Step {
        Join(u64),
        Leave(u64),
        Passive(u64, bool),
        Publish(u64, bool),
        Push,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3u64).prop_map(Step::Join),
            (0..3u64).prop_map(Step::Leave),
            (0..3u64, any::<bool>()).prop_map(|(g, p)| Step::Passive(g, p)),
            (0..3u64, any::<bool>()).prop_map(|(g, t)| Step::Publish(g, t)),
            Just(Step::Push),
        ]
    }

    proptest! {
        /// For any op sequence, the replica's entries equal the host's log, and a
        /// rebuild from any client seq replays exactly the host's events after it,
        /// followed by what the host had not been offered yet.
        #[test]
        fn the_replica_matches_the_host(steps in proptest::collection::vec(step(), 0..80), cut in 0usize..100) {
            let h = NodeId::new("h");
            // Intents without GUILD_MESSAGE_TYPING: typing events are filtered.
            let intents = intents::ALL & !intents::GUILD_MESSAGE_TYPING;
            let mut replicas = SessionReplicas::new(1000);
            replicas.apply(&h, open(1, 10, intents));
            let mut host = HostModel::default();
            let mut guild_seq = [0u64; 3];
            let mut logs: BTreeMap<GuildId, Vec<GuildEvent>> = BTreeMap::new();
            for s in steps {
                match s {
                    Step::Join(g) => {
                        let g = GuildId(g);
                        if host.cursors.contains_key(&g) { continue; }
                        host.cursors.insert(g, GuildSeq(guild_seq[g.0 as usize]));
                        replicas.apply(&h, join(1, g.0, guild_seq[g.0 as usize]));
                    }
                    Step::Leave(g) => {
                        let g = GuildId(g);
                        host.cursors.remove(&g);
                        host.passive.remove(&g);
                        replicas.apply(&h, SessionOp::Leave { session: SessionId(1), guild: g });
                    }
                    Step::Passive(g, p) => {
                        let g = GuildId(g);
                        if !host.cursors.contains_key(&g) { continue; }
                        if p { host.passive.insert(g); } else { host.passive.remove(&g); }
                        replicas.apply(&h, SessionOp::Passive { session: SessionId(1), guild: g, passive: p });
                    }
                    Step::Publish(g, typing) => {
                        let t = if typing { "TYPING_START" } else { "MESSAGE_CREATE" };
                        guild_seq[g as usize] += 1;
                        let seq = guild_seq[g as usize];
                        logs.entry(GuildId(g)).or_default().push(event(g, seq, t));
                        let gid = GuildId(g);
                        if let Some(c) = host.cursors.get_mut(&gid) {
                            *c = GuildSeq(seq);
                            if !typing && !host.passive.contains(&gid) {
                                host.log.push(Entry::Guild { guild: gid, seq: GuildSeq(seq) });
                            }
                        }
                        replicas.apply(&h, deliver(g, seq, t));
                    }
                    Step::Push => {
                        host.log.push(Entry::Inline { event_type: "X".into(), body: Bytes::from_static(b"{}") });
                        replicas.apply(&h, push(1, "X"));
                    }
                }
            }
            let (_, full) = replicas.snapshot(SessionId(1), 0).unwrap();
            prop_assert_eq!(&full.entries, &host.log);
            let c = cut.min(host.log.len());
            let (_, snap) = replicas.snapshot(SessionId(1), c as u64).unwrap();
            let rebuilt = rebuild(&snap, &logs).unwrap();
            let want: Vec<(Option<GuildId>, GuildSeq)> = host.log[c..]
                .iter()
                .map(|e| match e {
                    Entry::Guild { guild, seq } => (Some(*guild), *seq),
                    Entry::Inline { .. } => (None, GuildSeq(0)),
                })
                .collect();
            let got: Vec<(Option<GuildId>, GuildSeq)> =
                rebuilt.replay.iter().map(|i| (i.guild, i.seq)).collect();
            prop_assert_eq!(got, want);
            let cursors: BTreeMap<GuildId, GuildSeq> = rebuilt.cursors.into_iter().collect();
            prop_assert_eq!(cursors, host.cursors);
        }
    }
}
