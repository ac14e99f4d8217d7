//! # concord-router
//!
//! The fan-out core of Concord, with no IO, no clocks and no tasks. It decides who gets
//! an event and in which order; the `concord-gateway` shell moves the bytes.
//!
//! It does **not** hold sockets, serialise frames per session, or talk to peers: the
//! [`cluster`] module decides what to say to peers, and the gateway's peer links carry it.
//!
//! ## Main types
//! - [`Topic`] — what an event is published to, a guild or a user.
//! - [`Event`] — one published event, its body serialised once and shared through an
//!   `Arc` by every session that receives it ([`SharedEvent`]).
//! - [`TopicTable`] — for each topic, its sequence counter, a bounded log of recent events
//!   (the replay source for subscribers that fall behind) and its local subscribers.
//!   [`TopicTable::publish`] returns a [`Delivery`]: the one shared event plus the
//!   subscribers to hand it to.
//! - [`SessionLog`] — one session's dispatch sequence, replay index and write cursor. It
//!   assigns `s`, keeps what a resume must replay within count and byte limits, and says
//!   what the connection has not written yet.
//! - [`ClusterRouter`] — one per node: forwards publishes to the guild's owner, sequences,
//!   replicates and acknowledges owned guilds, and sends one fan-out batch per subscribed
//!   peer node ([`PeerFrame`]s in, [`cluster::Output`]s out).
//! - [`continuity::SessionReplicas`] — the replicas this node holds of sessions hosted
//!   elsewhere, fed by node-level [`continuity::SessionOp`]s; with
//!   [`continuity::rebuild`], a session resumes on any node.
//!
//! ## Call order
//! 1. `TopicTable::subscribe(topic, subscriber)` when a session joins a guild.
//! 2. `TopicTable::publish(topic, event_type, body, now)` for every published event,
//!    then, for each subscriber of the returned [`Delivery`], `SessionLog::push`.
//! 3. The connection drains `SessionLog::unwritten` and calls `SessionLog::mark_written`.
//! 4. On resume, `SessionLog::rewind(client_seq)`, then write what is unwritten again.
//!
//! In a cluster, the [`ClusterRouter`] sits in front of step 2: a publish goes to
//! `ClusterRouter::publish`, and each `Output::DeliverLocal` it yields is what this node
//! hands to its topic table (see [`cluster`] for its own call order).
//!
//! # Layout
//! - [`event`] — topics and events.
//! - [`table`] — the topic table and delivery planning.
//! - [`session_log`] — per-session sequence, replay index and write cursor.
//! - [`cluster`] — cross-node publishing: guild owners, replicas, forwards, per-node
//!   fan-out batches, subscriptions with cursors and gap fills ([`ClusterRouter`]).
//! - [`continuity`] — session replicas on another node, and rebuilding a resumed
//!   session's replay from them and the guild logs ([`continuity::SessionReplicas`]).

pub mod cluster;
pub mod continuity;
pub mod event;
pub mod session_log;
pub mod table;

pub use cluster::{ClusterRouter, PeerFrame, Placements};
pub use event::{Event, SharedEvent, Topic};
pub use session_log::{ReplayLimits, ResumeError, SessionLog};
pub use table::{Delivery, Subscriber, TopicTable};
