//! # concord-loadtest
//!
//! The load generator load testers point at a Concord cluster, and the tool that backs
//! every performance claim in `BENCHMARKS.md`. It speaks to nodes only over the network,
//! like real clients and backends: WebSocket sessions that Hello, Identify, heartbeat with
//! jitter and resume at `resume_gateway_url`, and HTTP publishes.
//!
//! Every published event carries, in `d`, the guild (`lt_g`), a per-guild publisher
//! sequence (`lt_pseq`) and the publisher's clock (`lt_sent_us`). Clients measure
//! end-to-end latency from it and detect gaps and duplicates independently of the
//! gateway's own `s`, which they also check.
//!
//! A run past one process's open-file limit re-executes this binary as worker processes
//! and, on loopback, connects from several 127.0.0.x source addresses ([`fleet`],
//! [`run::Layout`]). `--peer redis://...` and `--peer nats://...` run the same load
//! through Redis and NATS pub/sub for comparison ([`peer`]). `--preset` and `--scenario`
//! expand into flags before parsing ([`preset`]).
//!
//! # Layout
//! - [`run`] — options and the run: ramped sessions, sharded publishers, the reporter.
//! - [`fleet`] — which process runs which session; worker processes and their protocol.
//! - [`stats`] — per-process counters and the snapshots workers send.
//! - [`client`] — one session's protocol loop (gateway or peer subscriber).
//! - [`preset`] — `--preset` and `--scenario` expansion.
//! - [`track`] — `s` continuity, publisher-sequence gaps and duplicates, latency.
//! - [`report`] — the JSON report schema and the per-interval line.
//! - [`assert`] — `--assert` bounds.
//! - [`html`] — the HTML report with inline SVG charts.
//! - [`peer`] — minimal Redis and NATS pub/sub clients for `--peer` comparisons.

pub mod assert;
pub mod client;
pub mod fleet;
pub mod html;
pub mod peer;
pub mod preset;
pub mod report;
pub mod run;
pub mod stats;
pub mod track;
