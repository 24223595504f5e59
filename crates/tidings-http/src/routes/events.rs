//! `GET /v1/events`, `GET /v1/events/{id}`, and the 405s that keep events read-only.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use tidings_domain::{Event, EventId, EventQuery, Scope};

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::{ApiError, ErrorBody};
use crate::pagination::{ListResponse, Paginator, query_pairs};

/// Query the event stream of an organization (or one workspace), newest first.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    security(("bearer" = [])),
    params(
        ("organization_id" = Option<String>, Query, description = "Required unless workspace_id is given", example = "ORG-26-090500"),
        ("workspace_id" = Option<String>, Query, description = "Filter to one workspace", example = "WS-26-000021"),
        ("type" = Option<String>, Query, description = "Exact type, comma-separated list, or `domain.*`", example = "invoice.*"),
        ("subject_type" = Option<String>, Query, description = "Resource type of the subject"),
        ("subject_id" = Option<String>, Query, description = "ID of the subject resource"),
        ("actor_id" = Option<String>, Query, description = "Filter by actor"),
        ("from" = Option<String>, Query, description = "Inclusive start: RFC 3339 or YYYY-MM-DD"),
        ("to" = Option<String>, Query, description = "Exclusive end: RFC 3339 or YYYY-MM-DD"),
        ("cursor" = Option<String>, Query, description = "meta.cursor of the previous page"),
        ("limit" = Option<u32>, Query, description = "1–100, default 25"),
        ("order" = Option<String>, Query, description = "`desc` (default) or `asc`"),
    ),
    responses(
        (status = 200, description = "One page of events", body = ListResponse<Event>),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Another organization, or a missing scope", body = ErrorBody)))]
pub async fn list_events(
    State(state): State<AppState>,
    key: Authenticated,
    RawQuery(query): RawQuery,
) -> Result<Json<ListResponse<Event>>, ApiError> {
    key.require(Scope::EventsRead)?;
    let EventQuery { mut filter, page } = EventQuery::from_pairs(query_pairs(query.as_deref()))?;
    let tenant = key.tenant_for_list(filter.organization_id.as_ref())?;
    filter.resolve_types(&state.catalog)?;
    let paginator = Paginator::new(
        state.store.cursor_key(),
        "events",
        &tenant,
        &filter.canonical(),
        &page,
    );
    let request = paginator.request()?;
    let found = state.store.list_events(&tenant, &filter, request).await?;
    Ok(Json(paginator.respond(found, |e| e.id.number)))
}

/// One event with its full payload.
#[utoipa::path(get, path = "/v1/events/{id}", tag = "events",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The event ID", example = "EVT-26-044912")),
    responses(
        (status = 200, description = "The event", body = Event),
        (status = 400, description = "Malformed ID or unexpected parameter", body = ErrorBody),
        (status = 404, description = "No such event for this key", body = ErrorBody)))]
pub async fn get_event(
    State(state): State<AppState>,
    key: Authenticated,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Event>, ApiError> {
    key.require(Scope::EventsRead)?;
    tidings_domain::Params::new(query_pairs(query.as_deref()))?.finish()?;
    let id: EventId = id.parse().map_err(|e: tidings_domain::IdError| {
        ApiError::bad_request("parameter_invalid", e.0).with_param("id")
    })?;
    state
        .store
        .get_event(&key.tenant(), id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no event {id}")))
}

fn read_only() -> ApiError {
    ApiError::method_not_allowed(
        "GET",
        "events are read-only: they are produced only by the platform and cannot be created, changed or deleted through the API",
    )
}

/// Declares one refused write (a 405 handler with its own OpenAPI operation).
macro_rules! refused_write {
    ($name:ident, $method:ident, $path:literal) => {
        /// Events are produced only by the platform and never change: refused with a 405.
        #[utoipa::path($method, path = $path, tag = "events",
            params(("id" = Option<String>, Path, description = "An event ID, where the path has one")),
            responses((status = 405, description = "Events are read-only", body = ErrorBody)))]
        pub async fn $name() -> ApiError {
            read_only()
        }
    };
}

refused_write!(create_event_refused, post, "/v1/events");
refused_write!(replace_events_refused, put, "/v1/events");
refused_write!(update_events_refused, patch, "/v1/events");
refused_write!(delete_events_refused, delete, "/v1/events");
refused_write!(post_event_refused, post, "/v1/events/{id}");
refused_write!(replace_event_refused, put, "/v1/events/{id}");
refused_write!(update_event_refused, patch, "/v1/events/{id}");
refused_write!(delete_event_refused, delete, "/v1/events/{id}");
