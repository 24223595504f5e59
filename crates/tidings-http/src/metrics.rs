//! Prometheus metrics (`GET /metrics`). Counters and histograms are recorded where things
//! happen (requests, ingest, delivery attempts, streams); backlog and store size are read
//! from the store when scraped.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::AppState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder on first use. `None` if another recorder was
/// installed first (then `/metrics` reports only what this module adds at scrape time).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 15.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("tidings_ingest_batch_size".into()),
                        &[1.0, 10.0, 100.0, 250.0, 500.0, 1000.0],
                    )
                })
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Prometheus text exposition of every metric.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics_endpoint(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.delivery_backlog().await {
        Ok((pending, oldest)) => {
            metrics::gauge!("tidings_webhook_backlog").set(pending as f64);
            let age = oldest
                .map(|t| (state.webhooks.clock.now() - t).num_seconds().max(0) as f64)
                .unwrap_or(0.0);
            metrics::gauge!("tidings_webhook_oldest_pending_seconds").set(age);
        }
        Err(e) => tracing::warn!(error = %e, "reading the delivery backlog for metrics"),
    }
    if let Ok(bytes) = state.store.size_bytes().await {
        metrics::gauge!("tidings_store_size_bytes").set(bytes as f64);
    }
    let body = handle().map(|h| h.render()).unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}
