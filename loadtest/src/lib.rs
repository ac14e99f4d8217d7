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
//! Status: one process, one source address; worker processes past the open-file cap,
//! several 127.0.0.x sources, Redis/NATS peers, presets and a progress bar are not built
//! yet (issue 5).
//!
//! # Layout
//! - [`run`] — options and the run: ramped sessions, sharded publishers, the reporter.
//! - [`client`] — one session's protocol loop.
//! - [`track`] — `s` continuity, publisher-sequence gaps and duplicates, latency.
//! - [`report`] — the JSON report schema and the per-interval line.
//! - [`assert`] — `--assert` bounds.
//! - [`html`] — the HTML report with inline SVG charts.

pub mod assert;
pub mod client;
pub mod html;
pub mod report;
pub mod run;
pub mod track;
