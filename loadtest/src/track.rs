//! Delivery checking for one session, with no IO and no clocks inside.
//!
//! - [`SeqCheck`] verifies the gateway's `s`: each dispatch must be the last plus one.
//! - [`PublisherTracker`] verifies the publisher's own per-guild sequence (`lt_pseq` in `d`),
//!   so gaps and duplicates are caught even if the gateway's `s` looks right.
//! - [`LatencyRecorder`] turns (publisher clock, receive clock) pairs into percentiles.
//!
//! Counts are kept per session and summed afterwards ([`Totals`], [`LatencyRecorder::merge`]),
//! so the hot path never shares state between sessions.

use std::collections::HashMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Errors from combining tracking state.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    /// Merging two latency histograms failed because the target could not grow to hold the
    /// other's values. The target is unchanged; permanent for these two recorders.
    #[error("cannot merge latency histograms: {0}")]
    Merge(#[from] hdrhistogram::AdditionError),
}

/// What one dispatch's `s` says about the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// Exactly the last plus one.
    Next,
    /// Dispatches between `expected` and `got` never arrived; the check resyncs at `got`.
    Gap {
        /// The `s` that should have come.
        expected: u64,
        /// The `s` that came.
        got: u64,
    },
    /// `got` is at or below the last `s` seen: a repeated or stale dispatch.
    Repeat {
        /// The `s` that came.
        got: u64,
    },
}

/// Checks that the gateway's `s` increases by exactly one per dispatch.
///
/// A fresh session expects `s = 1` first (READY). After a resume the next `s` must be the
/// last one the client saw plus one; [`SeqCheck::reset_for_resume`] sets that up when the
/// check did not live through the reconnect.
#[derive(Debug, Clone, Default)]
pub struct SeqCheck {
    /// The last accepted `s`; 0 before the first dispatch (the gateway starts at 1).
    last: u64,
}

impl SeqCheck {
    /// Checks one dispatch's `s`. A gap resyncs at `s` so one loss is reported once; a
    /// repeat leaves the state alone.
    pub fn observe(&mut self, s: u64) -> SeqVerdict {
        let expected = self.last.saturating_add(1);
        if s == expected {
            self.last = s;
            SeqVerdict::Next
        } else if s > expected {
            self.last = s;
            SeqVerdict::Gap { expected, got: s }
        } else {
            SeqVerdict::Repeat { got: s }
        }
    }

    /// After a resume, the next `s` must be `last_seen + 1`.
    pub fn reset_for_resume(&mut self, last_seen: u64) {
        self.last = last_seen;
    }

    /// The last `s` seen, for heartbeats and resumes; `None` before the first dispatch.
    pub fn last(&self) -> Option<u64> {
        (self.last > 0).then_some(self.last)
    }
}

/// What one published event's `pseq` says about its guild's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// The next one, or the first one of a guild this session joined mid-stream.
    InOrder,
    /// `missing` events between the highest seen and this one have not arrived (yet).
    Gap {
        /// How many events were skipped.
        missing: u64,
    },
    /// Seen before.
    Duplicate,
    /// Below the highest seen, never seen before: it arrived late and fills a hole.
    Reordered,
}

/// Where a session's tracking of a guild starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirstExpected {
    /// Start at the first `pseq` seen: for sessions that may join mid-stream. Losses before
    /// the first delivery go unnoticed.
    #[default]
    FirstSeen,
    /// Expect this `pseq` first (1 when the session was ready before publishing began), so
    /// losing the first events counts as a gap.
    At(u64),
}

/// Gap, duplicate and reorder counts; sums across sessions with [`Totals::add`] or `+=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Events that were skipped and never arrived late.
    pub gaps: u64,
    /// Events received more than once.
    pub duplicates: u64,
    /// Events that arrived after a later one of the same guild.
    pub reordered: u64,
}

impl Totals {
    /// Adds another session's counts.
    pub fn add(&mut self, other: &Totals) {
        self.gaps += other.gaps;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
    }
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, other: Totals) {
        self.add(&other);
    }
}

impl std::iter::Sum for Totals {
    fn sum<I: Iterator<Item = Totals>>(iter: I) -> Totals {
        iter.fold(Totals::default(), |mut acc, t| {
            acc += t;
            acc
        })
    }
}

/// Open hole ranges kept per guild. A healthy stream has none; past this many the oldest
/// are forgotten (still counted as gaps) so a broken stream cannot grow memory per session.
pub const MAX_HOLES_PER_GUILD: usize = 64;

/// One guild's stream as one session saw it.
#[derive(Debug, Clone)]
struct GuildStream {
    highest: u64,
    /// Inclusive ranges of missing `pseq`s below `highest`, sorted and disjoint.
    holes: Vec<(u64, u64)>,
    /// The first `pseq` tracked; earlier ones were never expected.
    start: u64,
    /// Holes at or below this were forgotten (0: none); whether an event there was seen
    /// is unknown.
    forgotten_through: u64,
}

impl GuildStream {
    /// Takes `pseq` out of the hole it is in; `false` if it is in none.
    fn fill(&mut self, pseq: u64) -> bool {
        let Some(i) = self
            .holes
            .iter()
            .position(|&(lo, hi)| lo <= pseq && pseq <= hi)
        else {
            return false;
        };
        let (lo, hi) = self.holes[i];
        match (pseq == lo, pseq == hi) {
            (true, true) => {
                self.holes.remove(i);
            }
            (true, false) => self.holes[i].0 = pseq + 1,
            (false, true) => self.holes[i].1 = pseq - 1,
            (false, false) => {
                self.holes[i].1 = pseq - 1;
                self.holes.insert(i + 1, (pseq + 1, hi));
                if self.holes.len() > MAX_HOLES_PER_GUILD {
                    let (_, end) = self.holes.remove(0);
                    self.forgotten_through = end;
                }
            }
        }
        true
    }
}

/// Tracks each guild's publisher sequence for one session: the highest `pseq` seen plus a
/// bounded list of holes below it, so gaps, duplicates and late arrivals are told apart
/// without remembering every event.
///
/// An event lost after the last one a session received cannot be seen here; compare
/// deliveries with what was published for that.
#[derive(Debug, Clone, Default)]
pub struct PublisherTracker {
    first_expected: FirstExpected,
    guilds: HashMap<u64, GuildStream>,
    totals: Totals,
}

impl PublisherTracker {
    /// A tracker whose guilds start as `first_expected` says.
    pub fn new(first_expected: FirstExpected) -> PublisherTracker {
        PublisherTracker {
            first_expected,
            ..PublisherTracker::default()
        }
    }

    /// Checks one event of `guild` carrying `pseq`.
    pub fn observe(&mut self, guild: u64, pseq: u64) -> Observation {
        let first_expected = self.first_expected;
        let stream = match self.guilds.entry(guild) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let (start, highest) = match first_expected {
                    FirstExpected::FirstSeen => {
                        e.insert(GuildStream {
                            highest: pseq,
                            holes: Vec::new(),
                            start: pseq,
                            forgotten_through: 0,
                        });
                        return Observation::InOrder;
                    }
                    FirstExpected::At(first) => (first, first.saturating_sub(1)),
                };
                e.insert(GuildStream {
                    highest,
                    holes: Vec::new(),
                    start,
                    forgotten_through: 0,
                })
            }
        };
        let totals = &mut self.totals;
        if pseq == stream.highest.saturating_add(1) {
            stream.highest = pseq;
            return Observation::InOrder;
        }
        if pseq > stream.highest {
            let missing = pseq - stream.highest - 1;
            stream.holes.push((stream.highest + 1, pseq - 1));
            if stream.holes.len() > MAX_HOLES_PER_GUILD {
                let (_, end) = stream.holes.remove(0);
                stream.forgotten_through = end;
            }
            stream.highest = pseq;
            totals.gaps += missing;
            return Observation::Gap { missing };
        }
        // Below or at the highest: a late arrival filling a hole, or a duplicate.
        match stream.fill(pseq) {
            true => {
                totals.gaps = totals.gaps.saturating_sub(1);
                totals.reordered += 1;
                Observation::Reordered
            }
            // Before tracking began, or in a forgotten hole: whether this one was seen is
            // unknown, so it is reported late and any gap it belonged to stays counted.
            false if pseq < stream.start || pseq <= stream.forgotten_through => {
                totals.reordered += 1;
                Observation::Reordered
            }
            false => {
                totals.duplicates += 1;
                Observation::Duplicate
            }
        }
    }

    /// Ends tracking of `guild` knowing the publisher's last accepted `pseq` was `last`:
    /// events after the highest one seen never arrived, and count as gaps. Returns how
    /// many that was. A guild this session never saw is counted from its expected first
    /// `pseq` under [`FirstExpected::At`], and not at all under `FirstSeen` (where the
    /// session could not know which events were meant for it).
    ///
    /// `unknown` are the `pseq`s whose publish had an unknown outcome (ascending): one
    /// that never arrived is not a gap, whether it is in a hole or after the last seen.
    pub fn close(&mut self, guild: u64, last: u64, unknown: &[u64]) -> u64 {
        let tail_from = match (self.guilds.get(&guild), self.first_expected) {
            (Some(stream), _) => Some(stream.highest + 1),
            (None, FirstExpected::At(first)) => Some(first),
            (None, FirstExpected::FirstSeen) => None,
        };
        let mut missing = tail_from.map_or(0, |from| (last + 1).saturating_sub(from));
        if let Some(from) = tail_from {
            let excused = unknown.iter().filter(|u| (from..=last).contains(u)).count();
            missing = missing.saturating_sub(excused as u64);
        }
        // Unknown numbers in holes below the highest seen were counted as gaps already.
        if let Some(stream) = self.guilds.get_mut(&guild) {
            for &u in unknown {
                if stream.fill(u) {
                    self.totals.gaps = self.totals.gaps.saturating_sub(1);
                }
            }
        }
        if let Some(stream) = self.guilds.get_mut(&guild) {
            stream.highest = stream.highest.max(last);
        }
        self.totals.gaps += missing;
        missing
    }

    /// The highest `pseq` seen for `guild`.
    pub fn highest(&self, guild: u64) -> Option<u64> {
        self.guilds.get(&guild).map(|s| s.highest)
    }

    /// This session's counts so far.
    pub fn totals(&self) -> Totals {
        self.totals.clone()
    }

    /// How many guilds this session has received events for.
    pub fn guilds(&self) -> usize {
        self.guilds.len()
    }
}

/// Publisher-to-client latency, in microseconds, with 3 significant digits.
#[derive(Debug, Clone)]
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
    clock_skew: u64,
    dropped: u64,
}

/// Latencies above an hour are clamped: a value that large is a broken clock, not a delay,
/// and bounding it keeps the auto-resizing histogram from ever failing to grow.
const MAX_LATENCY_US: u64 = 3_600_000_000;

impl Default for LatencyRecorder {
    fn default() -> LatencyRecorder {
        LatencyRecorder::new()
    }
}

impl LatencyRecorder {
    /// An empty recorder.
    pub fn new() -> LatencyRecorder {
        let histogram = match Histogram::new(3) {
            Ok(h) => h,
            // hdrhistogram only rejects more than 5 significant digits; 3 is a constant.
            Err(e) => unreachable!("3 significant digits is always valid: {e}"),
        };
        LatencyRecorder {
            histogram,
            clock_skew: 0,
            dropped: 0,
        }
    }

    /// Records one delivery published at `sent_unix_us` and received at `received_unix_us`.
    /// A receive time before the send time means the clocks disagree: it records 0 and
    /// counts one `clock_skew`.
    pub fn record(&mut self, sent_unix_us: u64, received_unix_us: u64) {
        let latency = match received_unix_us.checked_sub(sent_unix_us) {
            Some(us) => us.min(MAX_LATENCY_US),
            None => {
                self.clock_skew += 1;
                0
            }
        };
        if self.histogram.record(latency).is_err() {
            self.dropped += 1;
        }
    }

    /// Adds another recorder's samples and counts.
    pub fn merge(&mut self, other: &LatencyRecorder) -> Result<(), TrackError> {
        self.histogram.add(&other.histogram)?;
        self.clock_skew += other.clock_skew;
        self.dropped += other.dropped;
        Ok(())
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Samples whose receive time came before their send time.
    pub fn clock_skew(&self) -> u64 {
        self.clock_skew
    }

    /// Samples the histogram could not hold (should stay 0).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The histogram as `(value_us, count)` pairs plus the two side counts, for sending
    /// between processes; [`LatencyRecorder::from_wire`] rebuilds it.
    pub fn to_wire(&self) -> WireLatency {
        WireLatency {
            buckets: self
                .histogram
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
            clock_skew: self.clock_skew,
            dropped: self.dropped,
        }
    }

    /// Rebuilds a recorder from [`LatencyRecorder::to_wire`]'s output. Values are clamped
    /// as [`LatencyRecorder::record`] clamps them, so hostile input cannot fail it.
    pub fn from_wire(wire: &WireLatency) -> LatencyRecorder {
        let mut r = LatencyRecorder::new();
        for &(value, count) in &wire.buckets {
            if r.histogram
                .record_n(value.min(MAX_LATENCY_US), count)
                .is_err()
            {
                r.dropped += count;
            }
        }
        r.clock_skew = wire.clock_skew;
        r.dropped += wire.dropped;
        r
    }

    /// The percentiles in milliseconds; all zero when nothing was recorded.
    pub fn percentiles(&self) -> LatencyMs {
        let ms = |us: u64| us as f64 / 1000.0;
        let h = &self.histogram;
        LatencyMs {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// A [`LatencyRecorder`] in transit between a worker process and the coordinator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireLatency {
    /// `(value in µs, count)` for every non-empty histogram bucket.
    pub buckets: Vec<(u64, u64)>,
    /// See [`LatencyRecorder::clock_skew`].
    pub clock_skew: u64,
    /// See [`LatencyRecorder::dropped`].
    pub dropped: u64,
}

/// Latency percentiles in milliseconds, as they appear in the report (`latency_ms.*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// The largest sample.
    pub max: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_accepts_consecutive_and_flags_gaps_and_repeats() {
        let mut s = SeqCheck::default();
        assert_eq!(s.last(), None);
        assert_eq!(s.observe(1), SeqVerdict::Next);
        assert_eq!(s.observe(2), SeqVerdict::Next);
        assert_eq!(
            s.observe(5),
            SeqVerdict::Gap {
                expected: 3,
                got: 5
            }
        );
        // Resynced at 5: one loss is reported once.
        assert_eq!(s.observe(6), SeqVerdict::Next);
        assert_eq!(s.observe(6), SeqVerdict::Repeat { got: 6 });
        assert_eq!(s.observe(3), SeqVerdict::Repeat { got: 3 });
        assert_eq!(s.observe(7), SeqVerdict::Next);
        assert_eq!(s.last(), Some(7));
    }

    #[test]
    fn seq_fresh_session_expects_one() {
        let mut s = SeqCheck::default();
        assert_eq!(
            s.observe(2),
            SeqVerdict::Gap {
                expected: 1,
                got: 2
            }
        );
    }

    #[test]
    fn seq_after_resume_expects_last_seen_plus_one() {
        let mut s = SeqCheck::default();
        s.reset_for_resume(41);
        assert_eq!(s.last(), Some(41));
        assert_eq!(s.observe(42), SeqVerdict::Next);
        let mut s = SeqCheck::default();
        s.reset_for_resume(41);
        assert_eq!(s.observe(41), SeqVerdict::Repeat { got: 41 });
        let mut s = SeqCheck::default();
        s.reset_for_resume(41);
        assert_eq!(
            s.observe(44),
            SeqVerdict::Gap {
                expected: 42,
                got: 44
            }
        );
    }

    #[test]
    fn tracker_in_order_stream_has_no_errors() {
        let mut t = PublisherTracker::default();
        for p in 1..=100 {
            assert_eq!(t.observe(7, p), Observation::InOrder);
        }
        assert_eq!(t.totals(), Totals::default());
    }

    #[test]
    fn tracker_joins_mid_stream_at_first_seen() {
        let mut t = PublisherTracker::default();
        assert_eq!(t.observe(7, 500), Observation::InOrder);
        assert_eq!(t.observe(7, 501), Observation::InOrder);
        assert_eq!(t.observe(7, 500), Observation::Duplicate);
        assert_eq!(t.observe(7, 499), Observation::Reordered);
        assert_eq!(t.totals().gaps, 0);
        // Even a stream that starts at 0.
        assert_eq!(t.observe(8, 0), Observation::InOrder);
        assert_eq!(t.observe(8, 1), Observation::InOrder);
    }

    #[test]
    fn tracker_first_expected_counts_lost_first_events() {
        let mut t = PublisherTracker::new(FirstExpected::At(1));
        assert_eq!(t.observe(7, 3), Observation::Gap { missing: 2 });
        assert_eq!(t.observe(7, 1), Observation::Reordered);
        assert_eq!(t.observe(7, 1), Observation::Duplicate);
        assert_eq!(t.totals().gaps, 1);
        let mut t = PublisherTracker::new(FirstExpected::At(1));
        assert_eq!(t.observe(9, 1), Observation::InOrder);
    }

    #[test]
    fn tracker_gap_duplicate_and_late_fill() {
        let mut t = PublisherTracker::default();
        assert_eq!(t.observe(1, 1), Observation::InOrder);
        assert_eq!(t.observe(1, 2), Observation::InOrder);
        assert_eq!(t.observe(1, 6), Observation::Gap { missing: 3 });
        assert_eq!(t.observe(1, 6), Observation::Duplicate);
        assert_eq!(t.observe(1, 2), Observation::Duplicate);
        // Fill the middle of the hole 3..=5, then its ends.
        assert_eq!(t.observe(1, 4), Observation::Reordered);
        assert_eq!(t.observe(1, 4), Observation::Duplicate);
        assert_eq!(t.observe(1, 3), Observation::Reordered);
        assert_eq!(
            t.totals(),
            Totals {
                gaps: 1,
                duplicates: 3,
                reordered: 2
            }
        );
        assert_eq!(t.observe(1, 5), Observation::Reordered);
        assert_eq!(t.observe(1, 7), Observation::InOrder);
        assert_eq!(t.totals().gaps, 0);
        assert_eq!(t.totals().reordered, 3);
    }

    #[test]
    fn tracker_guilds_are_independent() {
        let mut t = PublisherTracker::default();
        assert_eq!(t.observe(1, 10), Observation::InOrder);
        assert_eq!(t.observe(2, 1), Observation::InOrder);
        assert_eq!(t.observe(1, 11), Observation::InOrder);
        assert_eq!(t.observe(2, 3), Observation::Gap { missing: 1 });
        assert_eq!(t.guilds(), 2);
    }

    #[test]
    fn tracker_holes_are_bounded() {
        let mut t = PublisherTracker::default();
        t.observe(1, 1);
        // Every other event lost: one hole each.
        let n = MAX_HOLES_PER_GUILD as u64 * 3;
        for i in 1..=n {
            assert_eq!(t.observe(1, 1 + 2 * i), Observation::Gap { missing: 1 });
        }
        assert!(t.guilds[&1].holes.len() <= MAX_HOLES_PER_GUILD);
        assert_eq!(t.totals().gaps, n);
        // A late arrival in a forgotten hole is reported, but stays counted as missing.
        assert_eq!(t.observe(1, 2), Observation::Reordered);
        assert_eq!(t.totals().gaps, n);
        // A late arrival in a remembered hole closes it.
        assert_eq!(t.observe(1, 2 * n), Observation::Reordered);
        assert_eq!(t.totals().gaps, n - 1);
    }

    #[test]
    fn totals_sum_across_sessions() {
        let a = Totals {
            gaps: 1,
            duplicates: 2,
            reordered: 3,
        };
        let mut b = a.clone();
        b.add(&a);
        assert_eq!(b.gaps, 2);
        let s: Totals = [a.clone(), a.clone(), a].into_iter().sum();
        assert_eq!(
            s,
            Totals {
                gaps: 3,
                duplicates: 6,
                reordered: 9
            }
        );
    }

    #[test]
    fn latency_percentiles_in_milliseconds() {
        let mut r = LatencyRecorder::default();
        assert_eq!(r.percentiles(), LatencyMs::default());
        // 1..=1000 ms.
        for ms in 1..=1000u64 {
            r.record(1_000_000, 1_000_000 + ms * 1000);
        }
        let p = r.percentiles();
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 0.001;
        assert!(close(p.p50, 500.0), "{p:?}");
        assert!(close(p.p90, 900.0), "{p:?}");
        assert!(close(p.p99, 990.0), "{p:?}");
        assert!(close(p.p999, 999.0), "{p:?}");
        assert!(close(p.max, 1000.0), "{p:?}");
        assert_eq!(r.count(), 1000);
    }

    #[test]
    fn latency_clamps_negative_and_counts_skew() {
        let mut r = LatencyRecorder::new();
        r.record(2_000, 1_000);
        r.record(1_000, 1_500);
        assert_eq!(r.clock_skew(), 1);
        assert_eq!(r.count(), 2);
        assert_eq!(r.percentiles().p50, 0.0);
        assert_eq!(r.percentiles().max, 0.5);
        // Absurd values are clamped, not dropped.
        r.record(0, u64::MAX);
        assert_eq!(r.dropped(), 0);
        assert!(r.percentiles().max >= 3_599_000.0);
    }

    #[test]
    fn latency_merge_combines_samples_and_skew() {
        let mut a = LatencyRecorder::new();
        let mut b = LatencyRecorder::new();
        a.record(0, 1_000);
        b.record(0, 250_000);
        b.record(10, 5);
        a.merge(&b).unwrap();
        assert_eq!(a.count(), 3);
        assert_eq!(a.clock_skew(), 1);
        assert!((a.percentiles().max - 250.0).abs() < 0.5);
    }

    #[test]
    fn close_counts_events_lost_after_the_last_one_seen() {
        let mut t = PublisherTracker::new(FirstExpected::At(1));
        for p in 1..=5 {
            t.observe(9, p);
        }
        // Published through 8: 6, 7 and 8 never came.
        assert_eq!(t.close(9, 8, &[]), 3);
        assert_eq!(t.totals().gaps, 3);
        // Caught up: nothing more is lost, and closing again changes nothing.
        assert_eq!(t.close(9, 8, &[]), 0);
        // A guild that never delivered loses everything it published.
        assert_eq!(t.close(10, 4, &[]), 4);
        assert_eq!(t.highest(9), Some(8));
        let mut late = PublisherTracker::default();
        assert_eq!(
            late.close(3, 10, &[]),
            0,
            "FirstSeen cannot know what it missed"
        );
    }

    #[test]
    fn publishes_of_unknown_outcome_are_neither_required_nor_gaps() {
        let mut t = PublisherTracker::new(FirstExpected::At(1));
        // 3 and 7 had unknown outcomes (the node died mid-request); 3 never came, 9 and
        // 10 (after the last seen) are unknown too; 11 was accepted and lost.
        for p in [1, 2, 4, 5, 6, 7, 8] {
            t.observe(4, p);
        }
        assert_eq!(t.totals().gaps, 1);
        assert_eq!(t.close(4, 11, &[3, 7, 9, 10]), 1);
        assert_eq!(t.totals().gaps, 1, "only 11 is lost");
        // A guild never seen: its unknown numbers are excused too.
        assert_eq!(t.close(5, 3, &[2]), 2);
    }

    #[test]
    fn latency_survives_the_wire() {
        let mut r = LatencyRecorder::new();
        for us in [100, 250, 250, 9_000, 1_000_000] {
            r.record(0, us);
        }
        r.record(10, 5);
        let back = LatencyRecorder::from_wire(&r.to_wire());
        assert_eq!(back.count(), r.count());
        assert_eq!(back.clock_skew(), 1);
        assert_eq!(back.percentiles(), r.percentiles());
        // Hostile buckets are clamped, never a panic.
        let hostile = WireLatency {
            buckets: vec![(u64::MAX, 3)],
            ..WireLatency::default()
        };
        assert_eq!(LatencyRecorder::from_wire(&hostile).count(), 3);
    }
}
