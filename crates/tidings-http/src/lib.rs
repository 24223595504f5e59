//! The HTTP layer: the public API (read-only events, catalog, operations) and the internal
//! ingest port, as two routers over one [`AppState`]. Handlers stay thin: parse with the
//! domain, call the store, render.

pub mod auth;
pub mod error;
pub mod metrics;
pub mod pagination;
pub mod rate_limit;
pub mod request_id;
pub mod routes;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use tidings_domain::Catalog;
use tidings_store::Store;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub catalog: Arc<Catalog>,
    /// Behind an `Arc`: the state is cloned for every request, and the retry schedule and
    /// client inside would be copied each time.
    pub webhooks: Arc<tidings_webhooks::WebhookServices>,
    /// Per-key limits on the public API; `None` on the ingest port, which the platform's own
    /// producers use (they are bounded by batch and body sizes instead).
    pub rate_limits: Option<Arc<rate_limit::RateLimits>>,
    /// The newest event number this process committed; wakes live streams.
    pub committed: Arc<tokio::sync::watch::Sender<u64>>,
    /// The public API's OpenAPI document, set when the router is built.
    pub openapi: Arc<std::sync::OnceLock<utoipa::openapi::OpenApi>>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Tidings", description = "The platform event stream: read-only events, webhooks, audit logs."),
    modifiers(&BearerAuth),
    tags(
        (name = "events", description = "Immutable platform events"),
        (name = "webhooks", description = "Subscriptions, signed deliveries, retries and replays"),
        (name = "audit logs", description = "Every write through the API, hash-chained per organization"),
        (name = "operations", description = "Health and readiness"),
    )
)]
struct PublicApi;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The public API router and its OpenAPI document.
pub fn public_router(state: AppState) -> Router {
    metrics::handle();
    let (router, openapi) = OpenApiRouter::with_openapi(PublicApi::openapi())
        .routes(routes!(routes::events::list_events))
        .routes(routes!(
            routes::events::create_event_refused,
            routes::events::replace_events_refused,
            routes::events::update_events_refused,
            routes::events::delete_events_refused
        ))
        .routes(routes!(
            routes::events::post_event_refused,
            routes::events::replace_event_refused,
            routes::events::update_event_refused,
            routes::events::delete_event_refused
        ))
        .routes(routes!(routes::stream::stream_events))
        .routes(routes!(routes::events::get_event))
        .routes(routes!(routes::event_types::list_event_types))
        .routes(routes!(
            routes::webhooks::create_webhook,
            routes::webhooks::list_webhooks
        ))
        .routes(routes!(
            routes::webhooks::get_webhook,
            routes::webhooks::update_webhook,
            routes::webhooks::delete_webhook
        ))
        .routes(routes!(routes::webhooks::get_secret))
        .routes(routes!(routes::webhooks::rotate_secret))
        .routes(routes!(routes::deliveries::list_deliveries))
        .routes(routes!(routes::deliveries::retry_delivery))
        .routes(routes!(routes::deliveries::replay))
        .routes(routes!(routes::deliveries::send_test))
        .routes(routes!(routes::audit_logs::list_audit_logs))
        .routes(routes!(routes::health::healthz))
        .routes(routes!(routes::health::readyz))
        .routes(routes!(metrics::metrics_endpoint))
        .routes(routes!(openapi_document))
        .split_for_parts();
    // The document is complete only now; the handler serves it from the state.
    let _ = state.openapi.set(openapi);
    let router = router.layer(DefaultBodyLimit::max(1024 * 1024));
    finish(router, state)
}

/// This document, generated from the handlers themselves.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of the public API", body = Object)))]
async fn openapi_document(
    State(state): State<AppState>,
) -> Result<axum::Json<utoipa::openapi::OpenApi>, ApiError> {
    state
        .openapi
        .get()
        .cloned()
        .map(axum::Json)
        .ok_or_else(|| ApiError::unavailable("the OpenAPI document is not built yet"))
}

/// The ingest router (internal port).
pub fn ingest_router(mut state: AppState) -> Router {
    state.rate_limits = None;
    let (router, _openapi) = OpenApiRouter::new()
        .routes(routes!(routes::ingest::ingest_events))
        .routes(routes!(routes::health::healthz))
        .split_for_parts();
    let router = router.layer(DefaultBodyLimit::max(routes::ingest::MAX_BODY_BYTES));
    finish(router, state)
}

/// Layers shared by both routers: JSON 404/405, panics as 500s, request ids.
fn finish(router: Router<AppState>, state: AppState) -> Router {
    router
        .fallback(|| async { ApiError::not_found("no such route; see /v1/openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::method_not_allowed("GET", "this route does not accept that method")
        })
        .layer(CatchPanicLayer::custom(|_panic| -> Response {
            ApiError::internal(&"a handler panicked").into_response()
        }))
        .layer(axum::middleware::from_fn(rate_limit::add_headers))
        .layer(axum::middleware::from_fn(request_id::assign))
        .with_state(state)
}
