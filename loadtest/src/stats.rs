//! Counters shared by the sessions of one process, and their wire form.
//!
//! Every session in a process updates one [`Shared`]. A worker process sends a
//! [`Snapshot`] of it to the coordinator once per interval, and a final one with whole
//! histograms when its sessions are done; the coordinator adds them up.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::track::{LatencyRecorder, PublisherTracker, Totals, WireLatency};

/// Counters every session of a process and the reporter share.
#[derive(Debug, Default)]
pub struct Shared {
    /// Sessions that connected at least once.
    pub established: AtomicU64,
    /// Sessions that got READY (or, against a peer, confirmed their subscription).
    pub ready_sessions: AtomicU64,
    /// Sessions that never connected.
    pub failed: AtomicU64,
    /// Sessions connected right now.
    pub connected: AtomicI64,
    /// Protocol or decoding errors, zombies, failed publishes.
    pub errors: AtomicU64,
    /// Load-test events received.
    pub deliveries: AtomicU64,
    /// Events the API (or the peer) accepted.
    pub published: AtomicU64,
    /// Bytes received on the wire.
    pub bytes: AtomicU64,
    /// Resumes that ended in RESUMED.
    pub resumes_ok: AtomicU64,
    /// Resumes answered with op 9.
    pub resumes_failed: AtomicU64,
    /// Dispatches whose `s` was not the last plus one.
    pub seq_errors: AtomicU64,
    /// Sessions that have ended.
    pub sessions_done: AtomicU64,
    /// (whole run, this interval) latency recorders, sharded by runtime thread so that
    /// thousands of deliveries a millisecond do not queue on one lock.
    latency: [Mutex<(LatencyRecorder, LatencyRecorder)>; LATENCY_SHARDS],
    ready: Mutex<LatencyRecorder>,
    totals: Mutex<Totals>,
}

const LATENCY_SHARDS: usize = 8;

/// This thread's latency shard: threads are numbered as they first record.
fn shard() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % LATENCY_SHARDS;
    }
    SHARD.with(|s| *s)
}

/// Locks `m`, taking the data even if a panic poisoned it: every state guarded this way
/// (counters, histograms, the timeline) stays usable between calls.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Records one delivery's publish-to-receive latency.
    pub fn record_latency(&self, sent_us: u64, received_us: u64) {
        let mut shard = lock(&self.latency[shard()]);
        shard.0.record(sent_us, received_us);
        shard.1.record(sent_us, received_us);
    }

    /// Records the time from connecting to READY.
    pub fn record_ready(&self, d: Duration) {
        self.ready_sessions.fetch_add(1, Ordering::Relaxed);
        lock(&self.ready).record(0, d.as_micros() as u64);
    }

    /// Adds a finished session's gap and duplicate counts.
    pub fn add_tracker(&self, t: &PublisherTracker) {
        lock(&self.totals).add(&t.totals());
    }

    /// The counters right now.
    pub fn counters(&self) -> Counters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            established: get(&self.established),
            ready_sessions: get(&self.ready_sessions),
            failed: get(&self.failed),
            connected: self.connected.load(Ordering::Relaxed),
            errors: get(&self.errors),
            deliveries: get(&self.deliveries),
            published: get(&self.published),
            bytes: get(&self.bytes),
            resumes_ok: get(&self.resumes_ok),
            resumes_failed: get(&self.resumes_failed),
            seq_errors: get(&self.seq_errors),
            sessions_done: get(&self.sessions_done),
        }
    }

    /// The latencies recorded since the last call, which starts a new interval.
    pub fn take_interval(&self) -> LatencyRecorder {
        let mut all = LatencyRecorder::new();
        for shard in &self.latency {
            let interval = std::mem::take(&mut lock(shard).1);
            let _ = all.merge(&interval);
        }
        all
    }

    fn whole_latency(&self) -> LatencyRecorder {
        let mut all = LatencyRecorder::new();
        for shard in &self.latency {
            let _ = all.merge(&lock(shard).0);
        }
        all
    }

    /// A snapshot for the coordinator: counters and this interval's latencies; with
    /// `whole`, also the whole-run histograms and gap totals.
    pub fn snapshot(&self, whole: bool) -> Snapshot {
        Snapshot {
            counters: self.counters(),
            interval: self.take_interval().to_wire(),
            whole: whole.then(|| Whole {
                latency: self.whole_latency().to_wire(),
                ready: lock(&self.ready).to_wire(),
                totals: lock(&self.totals).clone(),
            }),
        }
    }

    /// The whole-run latency, READY latency and gap totals.
    pub fn whole(&self) -> (LatencyRecorder, LatencyRecorder, Totals) {
        (
            self.whole_latency(),
            lock(&self.ready).clone(),
            lock(&self.totals).clone(),
        )
    }
}

/// Plain counter values, summed across processes with `+=`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Each field mirrors the same-named one on [`Shared`].
pub struct Counters {
    pub established: u64,
    pub ready_sessions: u64,
    pub failed: u64,
    pub connected: i64,
    pub errors: u64,
    pub deliveries: u64,
    pub published: u64,
    pub bytes: u64,
    pub resumes_ok: u64,
    pub resumes_failed: u64,
    pub seq_errors: u64,
    pub sessions_done: u64,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, o: Counters) {
        self.established += o.established;
        self.ready_sessions += o.ready_sessions;
        self.failed += o.failed;
        self.connected += o.connected;
        self.errors += o.errors;
        self.deliveries += o.deliveries;
        self.published += o.published;
        self.bytes += o.bytes;
        self.resumes_ok += o.resumes_ok;
        self.resumes_failed += o.resumes_failed;
        self.seq_errors += o.seq_errors;
        self.sessions_done += o.sessions_done;
    }
}

/// What a worker process reports each interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Cumulative counters.
    pub counters: Counters,
    /// Latencies recorded during this interval only.
    pub interval: WireLatency,
    /// Whole-run figures, in the final snapshot only.
    pub whole: Option<Whole>,
}

/// A worker's whole-run figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Whole {
    /// Publish-to-receive latency.
    pub latency: WireLatency,
    /// Connect-to-READY latency.
    pub ready: WireLatency,
    /// Gap, duplicate and reorder totals.
    pub totals: Totals,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_carry_counters_and_drain_the_interval() {
        let s = Shared::default();
        s.deliveries.fetch_add(3, Ordering::Relaxed);
        s.record_latency(0, 1_000);
        s.record_latency(0, 2_000);
        let first = s.snapshot(false);
        assert_eq!(first.counters.deliveries, 3);
        assert_eq!(first.interval.buckets.len(), 2);
        assert!(first.whole.is_none());
        let second = s.snapshot(true);
        assert!(second.interval.buckets.is_empty(), "the interval restarted");
        let whole = second.whole.unwrap();
        assert_eq!(LatencyRecorder::from_wire(&whole.latency).count(), 2);
        let mut sum = first.counters;
        sum += second.counters;
        assert_eq!(sum.deliveries, 6);
    }
}
