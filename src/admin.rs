//! The HTTP server on `http_addr`: `/healthz`, `/readyz`, `/metrics`.
//!
//! [`router`] returns a plain axum [`Router`]; other HTTP features (the
//! WebSocket API) merge their routes into it before [`serve`] runs it, so
//! one port serves them all through the shared [`Acceptor`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use gateway_api::Backend;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::listener::Acceptor;

/// The content type of the OpenMetrics text format `/metrics` answers in.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long `/readyz` waits for the backend's answer before calling it
/// not ready.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// Asked by `/readyz` whether it can serve requests.
    pub backend: Arc<dyn Backend>,
    /// Every metric of the gateway, encoded by `/metrics`.
    pub registry: Arc<Registry>,
    /// Cancelled when the gateway stops; `/readyz` then answers 503 so that
    /// load balancers stop sending clients here.
    pub shutdown: CancellationToken,
}

/// Registers the gateway's own metrics (`pulsar_gateway_build_info`, with
/// the version as a label) next to those of [`gateway_api::Metrics`].
pub fn register_build_info(registry: &mut Registry) {
    let info = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
    registry
        .sub_registry_with_prefix("pulsar_gateway")
        .register("build", "The running gateway's version", info);
}

/// The admin routes, ready to be merged with other HTTP routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves `app` on the connections `acceptor` admits until `shutdown` is
/// cancelled, then waits for open requests to finish.
pub async fn serve(
    acceptor: Acceptor,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = app.into_make_service_with_connect_info::<crate::listener::PeerAddr>();
    axum::serve(acceptor, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Liveness: the process runs and answers HTTP.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the backend can serve requests and the gateway is not
/// stopping.
async fn readyz(State(state): State<AdminState>) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match tokio::time::timeout(READY_TIMEOUT, state.backend.ready()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "backend did not answer within {} s\n",
                READY_TIMEOUT.as_secs()
            ),
        )
            .into_response(),
    }
}

/// Every metric, in the OpenMetrics text format.
async fn metrics(State(state): State<AdminState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}
