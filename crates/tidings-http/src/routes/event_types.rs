//! `GET /v1/event-types`: the catalog.

use axum::Json;
use axum::extract::State;
use tidings_domain::EventTypeInfo;

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::pagination::{ListMeta, ListResponse};

/// Every event type this installation accepts, sorted by name. Any valid key may read it.
#[utoipa::path(get, path = "/v1/event-types", tag = "events",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The catalog", body = ListResponse<EventTypeInfo>),
        (status = 401, body = crate::error::ErrorBody)))]
pub async fn list_event_types(
    State(state): State<AppState>,
    _key: Authenticated,
) -> Result<Json<ListResponse<EventTypeInfo>>, ApiError> {
    Ok(Json(ListResponse {
        data: state.catalog.iter().cloned().collect(),
        meta: ListMeta {
            cursor: None,
            has_more: false,
        },
    }))
}
