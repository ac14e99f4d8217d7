//! The admin listener: `/metrics`, `/healthz`, `/readyz` and `POST /admin/drain`.

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
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/admin/drain", post(drain))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> (StatusCode, String) {
    match &s.prometheus {
        Some(p) => (StatusCode::OK, p.render()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n".into(),
        ),
    }
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, String) {
    if s.drain.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
    } else {
        (
            StatusCode::OK,
            format!("ready, {} sessions\n", s.registry.len()),
        )
    }
}

async fn drain(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    tracing::info!("drain requested over the admin API");
    s.drain.cancel();
    (StatusCode::ACCEPTED, "draining\n")
}
