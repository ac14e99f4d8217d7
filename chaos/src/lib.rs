//! # concord-chaos
//!
//! Kills, pauses, drains and partitions the nodes of a Concord cluster while
//! `concord-loadtest` drives sessions and publishes through it, then says, from what the
//! clients saw, whether any acknowledged event was lost, duplicated or reordered, how
//! long sessions took to come back, whether the nodes agreed on the ring within the
//! documented bound after each fault, and whether node memory stayed bounded. It reaches
//! the nodes and the load tester only over the network and through processes, as a user
//! would, and imports only `concord-protocol`.
//!
//! ```text
//! concord-chaos run --scenario chaos/scenarios/kill-session-host.toml
//! concord-chaos explore --seed 7 --duration 5m --driver netns
//! ```
//!
//! ## Main types
//! - [`scenario::Scenario`]: a TOML file: the cluster (driver, nodes, `concord serve`
//!   flags), the load (`concord-loadtest run` flags), the faults with their times and
//!   targets, and the [`scenario::Invariants`] with their bounds.
//! - [`schedule`]: sans IO. [`schedule::expand`] turns faults into timed
//!   [`schedule::Step`]s (each fault, then its revert); [`schedule::explore`] draws a
//!   schedule from a seed (the same seed, the same schedule).
//! - [`check`]: sans IO. [`check::check`] turns an [`check::Observed`] into one
//!   [`check::Verdict`] per invariant.
//! - [`driver::Driver`]: `local` processes, `netns` namespaces, `docker` containers;
//!   thin, and every one removes everything it made in `teardown`.
//! - [`run::exercise`]: the runner; [`run::RunReport`] is the JSON report, and
//!   [`report::html`] draws it as a timeline.
//!
//! ## What the load tester gives the checker
//! `concord-loadtest run` prints one JSON line per second on stderr (`t_sec`,
//! `connections`, `deliveries_per_sec`, `p50_ms`, `p99_ms`, `errors`, `resumes`): the
//! runner timestamps each line as it arrives, takes the first as the start of publishing
//! (fault times count from there), and measures how long sessions took to come back after
//! each fault from `connections`. Its final report (`--report`) counts, per session and
//! guild, acknowledged events that never arrived (`gaps`), `duplicates` and `reordered`,
//! and `resumes.failed`; those are the event invariants.
//!
//! # Layout
//! - [`scenario`], [`schedule`], [`check`]: the pure parts, unit-tested.
//! - [`driver`]: `local.rs`, `netns.rs`, `docker.rs`.
//! - [`run`]: the runner. [`report`]: the HTML page.
//! - `main.rs`: the command line; `scenarios/`: the shipped scenarios.

pub mod check;
pub mod driver;
pub mod report;
pub mod run;
pub mod scenario;
pub mod schedule;
