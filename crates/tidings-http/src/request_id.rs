//! Every request gets an id (`req_…`), returned in `X-Request-Id` and in error bodies, and
//! attached to log lines, so a client's report can be matched with the server's logs. The
//! same middleware times the request for the metrics.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use rand::Rng;
use rand::distr::Alphanumeric;

tokio::task_local! {
    static REQUEST_ID: String;
}

pub const HEADER: &str = "x-request-id";

/// The id of the request being served, or `req_unknown` outside of one.
pub fn current() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "req_unknown".to_string())
}

fn fresh() -> String {
    let body: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(20)
        .map(char::from)
        .collect();
    format!("req_{body}")
}

/// Middleware: assigns the id, runs the request inside its scope, sets the header.
pub async fn assign(request: Request, next: Next) -> Response {
    let id = fresh();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = request.method().to_string();
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path()
    );
    let started = std::time::Instant::now();
    let mut response = REQUEST_ID
        .scope(
            id.clone(),
            tracing::Instrument::instrument(next.run(request), span.clone()),
        )
        .await;
    // Successes are logged at debug level: at tens of thousands of requests a second an
    // info line each would cost more than the request.
    let status = response.status().as_u16();
    let elapsed = started.elapsed().as_secs_f64();
    let elapsed_ms = elapsed * 1000.0;
    metrics::histogram!("tidings_http_request_duration_seconds", "route" => route.clone(), "method" => method.clone())
        .record(elapsed);
    metrics::counter!("tidings_http_requests_total", "route" => route, "method" => method, "status" => status.to_string())
        .increment(1);
    span.in_scope(|| match status {
        500.. => tracing::error!(status, elapsed_ms, "served"),
        400..=499 => tracing::info!(status, elapsed_ms, "served"),
        _ => tracing::debug!(status, elapsed_ms, "served"),
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, v);
    }
    response
}
