//! `/v1/webhooks/{id}/deliveries`, retries, replays and test sends.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tidings_domain::ids::DeliveryId;
use tidings_domain::query::parse_time_bound;
use tidings_domain::webhook::{Delivery, DeliveryStatus};
use tidings_domain::{EventId, Params, Scope, TimeRange};
use tidings_store::{DeliveryFilter, StoreError};

use super::webhooks::{json_body, parse_webhook_id, webhook_not_found};
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::{ApiError, ErrorBody};
use crate::pagination::{ListResponse, Paginator, query_pairs};

/// Most events one replay may cover; narrow the range for more.
pub const MAX_REPLAY: usize = 10_000;

/// A webhook's deliveries, newest first, each with its attempts.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    security(("bearer" = [])),
    params(
        ("id" = String, Path),
        ("status" = Option<String>, Query, description = "pending, succeeded or failed"),
        ("event_id" = Option<String>, Query),
        ("from" = Option<String>, Query), ("to" = Option<String>, Query),
        ("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query), ("order" = Option<String>, Query)),
    responses((status = 200, body = ListResponse<Delivery>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    key: Authenticated,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<ListResponse<Delivery>>, ApiError> {
    key.require(Scope::WebhooksRead)?;
    let webhook = parse_webhook_id(&id)?;
    let mut params = Params::new(query_pairs(query.as_deref()))?;
    let status = params.take_parsed("status", |v| v.parse::<DeliveryStatus>())?;
    let event_id = params.take_parsed("event_id", |v| v.parse::<EventId>().map_err(|e| e.0))?;
    let range = params.take_time_range()?;
    let page = params.take_page()?;
    params.finish()?;
    let filter = DeliveryFilter {
        status,
        event_id,
        range,
    };
    let tenant = key.tenant();
    let (from, to) = range.as_unix_seconds();
    let filters = format!(
        "webhook={webhook}|status={}|event={}|from={}|to={}",
        status.map(|s| s.as_str()).unwrap_or(""),
        event_id.map(|e| e.to_string()).unwrap_or_default(),
        from.map(|f| f.to_string()).unwrap_or_default(),
        to.map(|t| t.to_string()).unwrap_or_default(),
    );
    let paginator = Paginator::new(
        state.store.cursor_key(),
        "deliveries",
        &tenant,
        &filters,
        &page,
    );
    let found = state
        .store
        .list_deliveries(&tenant, webhook, &filter, paginator.request()?)
        .await?
        .ok_or_else(|| webhook_not_found(webhook))?;
    Ok(Json(paginator.respond(found, |d| d.id.number)))
}

/// Attempt one delivery again now (trigger `manual`).
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{delivery_id}/retry", tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path), ("delivery_id" = String, Path)),
    responses((status = 202, description = "Scheduled now", body = Delivery), (status = 404, body = ErrorBody)))]
pub async fn retry_delivery(
    State(state): State<AppState>,
    key: Authenticated,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Delivery>), ApiError> {
    key.require(Scope::WebhooksWrite)?;
    let webhook = parse_webhook_id(&id)?;
    let delivery: DeliveryId = delivery_id.parse().map_err(|e: tidings_domain::IdError| {
        ApiError::bad_request("parameter_invalid", e.0).with_param("delivery_id")
    })?;
    let scheduled = state
        .store
        .retry_delivery(&key.tenant(), webhook, delivery, key.audit())
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("no delivery {delivery} for webhook {webhook}"))
        })?;
    state.webhooks.wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(scheduled)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Inclusive start: RFC 3339 or YYYY-MM-DD.
    pub from: String,
    /// Exclusive end; defaults to now.
    pub to: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayResponse {
    /// Deliveries created (one per matching event in the range).
    pub replayed: usize,
}

/// Send every matching event recorded in `[from, to)` again (trigger `replay`).
#[utoipa::path(post, path = "/v1/webhooks/{id}/replay", tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path)),
    request_body = ReplayRequest,
    responses((status = 202, body = ReplayResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn replay(
    State(state): State<AppState>,
    key: Authenticated,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<ReplayResponse>), ApiError> {
    key.require(Scope::WebhooksWrite)?;
    let webhook = parse_webhook_id(&id)?;
    let req: ReplayRequest = json_body(body)?;
    let bound = |name: &str, v: &str| {
        parse_time_bound(v).map_err(|m| {
            ApiError::bad_request("parameter_invalid", format!("{name}: {m}")).with_param(name)
        })
    };
    let range = TimeRange {
        from: Some(bound("from", &req.from)?),
        to: req.to.as_deref().map(|t| bound("to", t)).transpose()?,
    };
    if let (Some(f), Some(t)) = (range.from, range.to)
        && f > t
    {
        return Err(
            ApiError::bad_request("parameter_invalid", "from must not be later than to")
                .with_param("from"),
        );
    }
    let replayed = match state
        .store
        .replay(&key.tenant(), webhook, range, MAX_REPLAY, key.audit())
        .await
    {
        Ok(Some(n)) => n,
        Ok(None) => return Err(webhook_not_found(webhook)),
        Err(StoreError::TooMany { limit }) => {
            return Err(ApiError::bad_request(
                "replay_too_large",
                format!(
                    "the range holds more than {limit} matching events; replay at most {limit} at once by narrowing from/to"
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    state.webhooks.wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(ReplayResponse { replayed })))
}

/// Send a signed test message now and return the delivery with its attempt.
#[utoipa::path(post, path = "/v1/webhooks/{id}/test", tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Delivery), (status = 404, body = ErrorBody)))]
pub async fn send_test(
    State(state): State<AppState>,
    key: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Delivery>, ApiError> {
    key.require(Scope::WebhooksWrite)?;
    let webhook = parse_webhook_id(&id)?;
    let owner = format!("api-test-{}", crate::request_id::current());
    let claimed = state
        .store
        .create_test_delivery(&key.tenant(), webhook, &owner, key.audit())
        .await?
        .ok_or_else(|| webhook_not_found(webhook))?;
    let (delivery_id, created_at) = (claimed.id, claimed.created_at);
    let attempt = tidings_webhooks::attempt_delivery(
        state.store.as_ref(),
        &state.webhooks.client,
        state.webhooks.clock.as_ref(),
        &state.webhooks.schedule,
        &owner,
        claimed,
    )
    .await?;
    Ok(Json(Delivery {
        id: delivery_id,
        webhook_id: webhook,
        event_id: None,
        event_type: "webhook.test".into(),
        status: if attempt.succeeded() {
            DeliveryStatus::Succeeded
        } else {
            DeliveryStatus::Failed
        },
        attempts: vec![attempt],
        next_attempt_at: None,
        created_at,
    }))
}
