//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/cluster`,
//! `/cluster/guilds/{id}` (who owns a guild in this node's ring), `POST /admin/drain` and
//! `POST /admin/dictionaries/retrain`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

/// What the admin handlers share.
#[derive(Clone, Debug)]
pub struct AdminState {
    /// The Prometheus exporter, if this process installed it.
    pub prometheus: Option<PrometheusHandle>,
    /// Cancelling it drains the node.
    pub drain: CancellationToken,
    /// Sessions on this node, for `/readyz`.
    pub registry: Arc<crate::session::Registry>,
    /// The zstd-dict dictionaries, for retraining on demand.
    pub dicts: Arc<crate::dicts::DictStore>,
    /// Membership and ring, for `/cluster`.
    pub cluster: tokio::sync::watch::Receiver<Arc<crate::cluster::ClusterView>>,
    /// Clustered: guild handoffs under way (the node is not ready until none is).
    pub handoffs: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/cluster", get(cluster))
        .route("/cluster/guilds/{guild_id}", get(guild_placement))
        .route("/admin/drain", post(drain))
        .route("/admin/dictionaries/retrain", post(retrain))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> (StatusCode, String) {
    match &s.prometheus {
        Some(p) => {
            // Sampled at scrape time: load testers divide it by `concord_sessions`.
            if let Some(rss) = resident_bytes() {
                metrics::gauge!("concord_process_resident_bytes").set(rss as f64);
            }
            (StatusCode::OK, p.render())
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n".into(),
        ),
    }
}

/// This process's resident set size, from `/proc/self/status` (Linux only).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// This node's view of the cluster: its id and generation, every member with its state
/// and addresses, the ring version and the partitions this node owns.
async fn cluster(State(s): State<AdminState>) -> axum::Json<serde_json::Value> {
    // Clone the Arc and release the watch lock before serialising.
    let view = s.cluster.borrow().clone();
    axum::Json(view.to_json())
}

/// `{"guild", "owner", "replicas", "ring_version"}` in this node's ring; 503 without one.
async fn guild_placement(
    State(s): State<AdminState>,
    axum::extract::Path(guild): axum::extract::Path<u64>,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    let view = s.cluster.borrow().clone();
    match view.replicas_of_guild(guild) {
        Some(list) => {
            let nodes: Vec<String> = list.iter().map(ToString::to_string).collect();
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({
                    "guild": guild.to_string(),
                    "owner": nodes.first(),
                    "replicas": nodes.get(1..).unwrap_or_default(),
                    "ring_version": view.ring_version().map(|v| v.to_string()),
                })),
            )
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"error": "this node has no ring yet"})),
        ),
    }
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, String) {
    let on_ring = {
        let view = s.cluster.borrow();
        view.ring
            .as_ref()
            .is_some_and(|r| r.members().iter().any(|m| m.id() == &view.node_id))
    };
    let handoffs = s
        .handoffs
        .as_ref()
        .map_or(0, |h| h.load(std::sync::atomic::Ordering::Relaxed));
    if s.drain.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
    } else if !on_ring {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "joining: not on the ring yet\n".into(),
        )
    } else if handoffs > 0 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("taking over: collecting the logs of {handoffs} guilds\n"),
        )
    } else {
        (
            StatusCode::OK,
            format!("ready, {} sessions\n", s.registry.len()),
        )
    }
}

/// Trains a dictionary on the node's recent zstd-dict traffic now and makes it the
/// newest: `200 {"id", "size", "samples"}`, or `409 {"error"}` with too little traffic.
async fn retrain(State(s): State<AdminState>) -> (StatusCode, axum::Json<serde_json::Value>) {
    let store = s.dicts.clone();
    let samples = store.sampled();
    match tokio::task::spawn_blocking(move || store.retrain()).await {
        Ok(Ok(dict)) => {
            crate::metrics::dict_rotated();
            tracing::info!(id = %dict.id(), samples, "retrained a zstd-dict dictionary");
            (
                StatusCode::OK,
                axum::Json(
                    serde_json::json!({"id": dict.id().0, "size": dict.bytes().len(), "samples": samples}),
                ),
            )
        }
        Ok(Err(e)) => (
            StatusCode::CONFLICT,
            axum::Json(serde_json::json!({"error": e.to_string()})),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(serde_json::json!({"error": format!("retrain task failed: {e}")})),
        ),
    }
}

async fn drain(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    tracing::info!("drain requested over the admin API");
    s.drain.cancel();
    (StatusCode::ACCEPTED, "draining\n")
}
