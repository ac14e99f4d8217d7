//! # concord-gateway
//!
//! The Concord node: a Discord-gateway-v10-compatible WebSocket edge that holds client
//! sessions, takes events from backends over HTTP and gRPC, and fans each one out to
//! every subscribed session with its own `s`, resumable across reconnects. The binary is
//! `concord` (`concord serve`, `concord token`).
//!
//! The logic lives in sans-IO cores: the connection protocol [`session::machine`], the
//! identify limiter [`limits`], and the topic tables and session logs of
//! `concord-router`. This crate is the tokio shell around them. Nodes form a cluster
//! through gossip and agree on the ring ([`cluster`]); on a clustered node, guild events go
//! through the guild's owner over peer links ([`peer`]) and reach every subscribed session
//! on every node, and every session is replicated to another node, so its client can
//! resume on any node after a drain or a crash (the hub streams the replication, the
//! router task keeps the replicas and runs resumes; see [`peer`]'s "Session continuity").
//!
//! ## Main types
//! - [`node::start`] with [`node::Listeners`]: runs a node on sockets the caller bound;
//!   [`node::Node::drain`] stops it gracefully.
//! - [`config::ServeArgs`] and [`config::Config`]: settings from flags, `CONCORD_*`
//!   variables, a TOML file and defaults.
//! - [`hub::Hub`] — the single task that owns the topic table and assigns every session's
//!   `s`; publishes, joins, resumes from other nodes and membership changes go through it
//!   in order, and it emits the session replication stream ([`hub::HubEvent`]).
//! - [`cluster::Cluster`] and [`cluster::ClusterView`] — gossip membership and the ring
//!   snapshot every other part reads.
//! - [`session::Session`] — a session's identity and its log (outbound queue and replay
//!   buffer in one), shared between the hub and the connection.
//!
//! ## Flow of one event
//! Clustered, for a guild event: `POST /v1/guilds/{id}/events` or gRPC `Publish` ->
//! [`peer::RouterHandle::publish`] -> forwarded to the owner, sequenced, replicated, one
//! fan-out batch per subscribed node -> each node's router task hands it to its hub as
//! [`hub::HubInput::DeliverSequenced`], in guild order -> as below.
//!
//! Standalone (and for user events): `POST /v1/guilds/{id}/events` or gRPC `Publish` ->
//! [`hub::HubHandle::publish`] -> the hub sequences it and pushes the one shared event into each subscribed session's log
//! -> each connection task wakes, writes its unwritten dispatches in one batch, and
//! records publish-to-write latency.
//!
//! # Layout
//! - [`config`] — settings.
//! - [`node`] — start, run, drain.
//! - [`conn`] — the accept loop and the connection task.
//! - [`session`] — sessions, the registry, resume expiry; [`session::machine`] is the
//!   per-connection protocol state machine.
//! - [`hub`] — the topic-table owner.
//! - [`limits`] — the identify rate limiter.
//! - [`api`] — HTTP publish and the Discord REST shim; [`grpc`]: the gRPC publish service.
//! - [`cluster`] — gossip membership (foca over authenticated UDP), node states, the ring.
//! - [`peer`] — the cluster router task and the tonic peer links between nodes.
//! - [`admin`] — metrics, health, readiness, `/cluster`, drain.
//! - [`dict_cli`] — `concord dict corpus|train|bench`.
//! - [`metrics`] — metric names and handles.
//! - [`wsframe`] — outbound WebSocket framing for `writev` from shared bytes.

pub mod admin;
pub mod api;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod dict_cli;
pub mod dicts;
pub mod grpc;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod session;
pub mod wsframe;

pub use config::{Config, ServeArgs};
pub use node::{Listeners, Node, start};
