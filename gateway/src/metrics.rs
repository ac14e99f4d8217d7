//! Prometheus metrics. Handles for the per-delivery counters are resolved once, so the
//! hot path increments an atomic instead of looking a name up.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls share it). Returns
/// `None` if another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let buckets = [
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

/// Runs the exporter's upkeep (drains histogram samples) so memory stays bounded even
/// when nobody scrapes.
pub async fn upkeep(handle: PrometheusHandle, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            () = stop.cancelled() => return,
        }
    }
}

/// Metric handles used on hot paths.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// `concord_connections_open`.
    pub connections_open: Gauge,
    /// `concord_sessions`.
    pub sessions: Gauge,
    /// `concord_events_published_total`.
    pub events_published: Counter,
    /// `concord_dispatches_delivered_total`: dispatches written to a client.
    pub dispatches_delivered: Counter,
    /// `concord_bytes_out_total{stage="raw"}`: frame bytes before compression.
    pub bytes_raw: Counter,
    /// `concord_bytes_out_total{stage="wire"}`: bytes after compression.
    pub bytes_wire: Counter,
    /// `concord_publish_to_write_seconds`: from accepting a publish to writing it.
    pub publish_to_write: Histogram,
    /// `concord_session_queue_overflows_total`.
    pub queue_overflows: Counter,
}

impl Metrics {
    /// Resolves the handles (against whatever recorder is installed).
    pub fn new() -> Metrics {
        Metrics {
            connections_open: gauge!("concord_connections_open"),
            sessions: gauge!("concord_sessions"),
            events_published: counter!("concord_events_published_total"),
            dispatches_delivered: counter!("concord_dispatches_delivered_total"),
            bytes_raw: counter!("concord_bytes_out_total", "stage" => "raw"),
            bytes_wire: counter!("concord_bytes_out_total", "stage" => "wire"),
            publish_to_write: histogram!("concord_publish_to_write_seconds"),
            queue_overflows: counter!("concord_session_queue_overflows_total"),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Counts an identify by outcome (`ok`, `bad_token`, `bad_intents`, `rate_limited`).
pub fn identify(outcome: &'static str) {
    counter!("concord_identifies_total", "outcome" => outcome).increment(1);
}

/// Counts a resume by outcome: `local` (the session was on this node), `migrated` (its
/// live host let it go), `promoted` (its host was gone; its replica was used),
/// `unknown`, `too_old`, `lost` (an event it needs is in no log), `unavailable` (the
/// cluster did not answer in time), `bad_seq`, `bad_token`.
pub fn resume(outcome: &'static str) {
    counter!("concord_resumes_total", "outcome" => outcome).increment(1);
}

/// Counts a close the node sent, by code.
pub fn close(code: u16) {
    counter!("concord_closes_total", "code" => code.to_string()).increment(1);
}

/// Counts a connection dropped for not finishing the WebSocket handshake in time.
pub fn handshake_timeout() {
    counter!("concord_handshake_timeouts_total").increment(1);
}

/// Counts one zstd-dict body compression (once per node per event and dictionary), with
/// the bytes before and after by event type. Unknown event types share one label, so
/// publishers cannot grow the label set.
pub fn dict_compression(event_type: &str, raw: usize, compressed: usize) {
    let t = known_event_type(event_type);
    counter!("concord_dict_compressions_total").increment(1);
    counter!("concord_dict_body_bytes_total", "t" => t, "stage" => "raw").increment(raw as u64);
    counter!("concord_dict_body_bytes_total", "t" => t, "stage" => "compressed")
        .increment(compressed as u64);
    counter!("concord_dict_bytes_saved_total").increment(raw.saturating_sub(compressed) as u64);
}

/// Counts one dictionary rotation (a retrained dictionary became the newest).
pub fn dict_rotated() {
    counter!("concord_dict_rotations_total").increment(1);
}

/// Sets how many zstd-dict dictionaries the node serves.
pub fn dictionaries(n: usize) {
    gauge!("concord_dictionaries").set(n as f64);
}

/// Counts a gossip datagram dropped before it could change anything, by reason (`mac`,
/// `version`, `short`, `decode`).
pub fn gossip_dropped(reason: &'static str) {
    counter!("concord_gossip_dropped_total", "reason" => reason).increment(1);
}

/// Sets how many members this node sees in `state` (`joining`, `active`, `draining`,
/// `down`).
pub fn cluster_members(state: &'static str, n: usize) {
    gauge!("concord_cluster_members", "state" => state).set(n as f64);
}

/// Counts a ring change and sets how many partitions this node now owns, and
/// `concord_ring_version`: the ring version's top 53 bits (exact in a float; 0 without a
/// ring). One series per node, so an alert sees nodes that disagree on the ring as
/// `max(concord_ring_version) != min(concord_ring_version)`.
pub fn ring_changed(owned: usize, version: Option<u64>) {
    counter!("concord_ring_changes_total").increment(1);
    gauge!("concord_ring_owned_partitions").set(owned as f64);
    gauge!("concord_ring_version").set(version.map_or(0.0, |v| (v >> 11) as f64));
}

fn known_event_type(t: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "READY",
        "RESUMED",
        "GUILD_CREATE",
        "GUILD_DELETE",
        "GUILD_MEMBERS_CHUNK",
        "MESSAGE_CREATE",
        "MESSAGE_UPDATE",
        "MESSAGE_DELETE",
        "MESSAGE_REACTION_ADD",
        "MESSAGE_REACTION_REMOVE",
        "TYPING_START",
        "PRESENCE_UPDATE",
        "GUILD_MEMBER_ADD",
        "GUILD_MEMBER_UPDATE",
        "GUILD_MEMBER_REMOVE",
        "VOICE_STATE_UPDATE",
        "CHANNEL_CREATE",
        "CHANNEL_UPDATE",
        "CHANNEL_DELETE",
        "THREAD_CREATE",
        "THREAD_UPDATE",
        "GUILD_ROLE_CREATE",
        "GUILD_ROLE_UPDATE",
        "GUILD_UPDATE",
    ];
    KNOWN.iter().copied().find(|k| *k == t).unwrap_or("other")
}

/// Frames the cluster router queued for peers, by kind (`concord_peer_frames_total`).
pub fn peer_frames(kind: &'static str, n: u64) {
    counter!("concord_peer_frames_total", "kind" => kind).increment(n);
}

/// The other router counters, as deltas between two snapshots.
pub fn peer_router_counters(
    before: &concord_router::cluster::ClusterCounters,
    now: &concord_router::cluster::ClusterCounters,
) {
    let pairs = [
        (
            "concord_peer_fanout_events_total",
            before.fanout_events,
            now.fanout_events,
        ),
        (
            "concord_peer_duplicates_dropped_total",
            before.duplicates_dropped,
            now.duplicates_dropped,
        ),
        (
            "concord_peer_gap_requests_total",
            before.gap_requests,
            now.gap_requests,
        ),
        (
            "concord_peer_duplicate_forwards_total",
            before.duplicate_forwards,
            now.duplicate_forwards,
        ),
        (
            "concord_peer_stray_events_total",
            before.stray_events,
            now.stray_events,
        ),
        ("concord_peer_fenced_total", before.fenced, now.fenced),
        (
            "concord_peer_fresh_sequences_total",
            before.fresh_sequences,
            now.fresh_sequences,
        ),
        (
            "concord_peer_handoff_timeouts_total",
            before.handoff_timeouts,
            now.handoff_timeouts,
        ),
    ];
    for (name, b, n) in pairs {
        if n > b {
            counter!(name).increment(n - b);
        }
    }
    gauge!("concord_peer_max_batch_events").set(now.max_batch_events as f64);
}

/// Protobuf bytes this node sent on its peer links, before HTTP/2 framing
/// (`concord_peer_bytes_sent_total`).
pub fn peer_bytes_out(n: usize) {
    counter!("concord_peer_bytes_sent_total").increment(n as u64);
}

/// Session replication ops this node sent as a host (`concord_session_ops_total`).
pub fn session_ops(n: usize) {
    counter!("concord_session_ops_total").increment(n as u64);
}

/// Sessions of other nodes replicated here (`concord_session_replicas`).
pub fn session_replicas(n: usize) {
    gauge!("concord_session_replicas").set(n as f64);
}

/// Resyncs: guild events lost for this node (`concord_peer_resyncs_total`).
pub fn peer_resync() {
    counter!("concord_peer_resyncs_total").increment(1);
}

/// Peer link events: `up`, `down`, `full` (dropped: queue full), `closed`, `waiting_full`,
/// `bad_frame`, `unauthenticated` (`concord_peer_link_events_total{event}`).
pub fn peer_link_event(event: &'static str) {
    counter!("concord_peer_link_events_total", "event" => event).increment(1);
}
