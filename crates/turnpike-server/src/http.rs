//! HTTP endpoints: `/healthz`, `/readyz` on the `--http` address, `/metrics` on `--metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Shared;

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if let Some(failure) = shared.failure() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {failure}\n"),
        )
    } else if shared.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n".to_owned(),
        )
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

async fn until_shutdown(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The router of the `--http` listener.
pub fn health_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

/// Serves `/healthz` and `/readyz` until shutdown.
pub async fn serve_health(listener: TcpListener, shared: Arc<Shared>, rx: watch::Receiver<bool>) {
    if let Err(e) = axum::serve(listener, health_router(shared))
        .with_graceful_shutdown(until_shutdown(rx))
        .await
    {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

/// Serves `/metrics` until shutdown.
pub async fn serve_metrics(listener: TcpListener, shared: Arc<Shared>, rx: watch::Receiver<bool>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(until_shutdown(rx))
        .await
    {
        tracing::error!(error = %e, "metrics server failed");
    }
}
