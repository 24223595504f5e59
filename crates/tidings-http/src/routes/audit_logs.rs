//! `GET /v1/audit-logs`: every write made through the API and every ingest batch.

use axum::Json;
use axum::extract::{RawQuery, State};
use tidings_domain::audit::AuditRecord;
use tidings_domain::ids::truncate_for_message;
use tidings_domain::{OrgId, Params, Scope};
use tidings_store::AuditFilter;

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::{ApiError, ErrorBody};
use crate::pagination::{ListResponse, Paginator, query_pairs};

fn short_text(v: &str) -> Result<String, String> {
    if v.len() > 128 || v.chars().any(char::is_control) {
        Err(format!(
            "`{}` is not a valid value",
            truncate_for_message(v)
        ))
    } else {
        Ok(v.to_string())
    }
}

/// An organization's audit records, newest first.
#[utoipa::path(get, path = "/v1/audit-logs", tag = "audit logs",
    security(("bearer" = [])),
    params(
        ("organization_id" = Option<String>, Query, description = "Required for platform keys; an organization key reads its own"),
        ("actor_id" = Option<String>, Query, description = "e.g. KEY-26-000003"),
        ("action" = Option<String>, Query, description = "e.g. webhook.created"),
        ("resource_type" = Option<String>, Query), ("resource_id" = Option<String>, Query),
        ("from" = Option<String>, Query), ("to" = Option<String>, Query),
        ("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query), ("order" = Option<String>, Query)),
    responses(
        (status = 200, body = ListResponse<AuditRecord>),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_audit_logs(
    State(state): State<AppState>,
    key: Authenticated,
    RawQuery(query): RawQuery,
) -> Result<Json<ListResponse<AuditRecord>>, ApiError> {
    key.require(Scope::AuditLogsRead)?;
    let mut params = Params::new(query_pairs(query.as_deref()))?;
    let organization_id =
        params.take_parsed("organization_id", |v| v.parse::<OrgId>().map_err(|e| e.0))?;
    if organization_id.is_none() && key.is_platform() {
        return Err(ApiError::bad_request(
            "parameter_missing",
            "organization_id is required with a platform key",
        )
        .with_param("organization_id"));
    }
    let filter = AuditFilter {
        actor_id: params.take_parsed("actor_id", short_text)?,
        action: params.take_parsed("action", short_text)?,
        resource_type: params.take_parsed("resource_type", short_text)?,
        resource_id: params.take_parsed("resource_id", short_text)?,
        range: params.take_time_range()?,
        organization_id,
    };
    let page = params.take_page()?;
    params.finish()?;
    let tenant = key.tenant_for_list(filter.organization_id.as_ref())?;
    let (from, to) = filter.range.as_unix_seconds();
    let fingerprint = format!(
        "org={}|actor={}|action={}|rtype={}|rid={}|from={}|to={}",
        filter
            .organization_id
            .as_ref()
            .map(OrgId::as_str)
            .unwrap_or(""),
        filter.actor_id.as_deref().unwrap_or(""),
        filter.action.as_deref().unwrap_or(""),
        filter.resource_type.as_deref().unwrap_or(""),
        filter.resource_id.as_deref().unwrap_or(""),
        from.map(|f| f.to_string()).unwrap_or_default(),
        to.map(|t| t.to_string()).unwrap_or_default(),
    );
    let paginator = Paginator::new(
        state.store.cursor_key(),
        "audit-logs",
        &tenant,
        &fingerprint,
        &page,
    );
    let found = state
        .store
        .list_audit_records(&tenant, &filter, paginator.request()?)
        .await?;
    Ok(Json(paginator.respond(found, |r| r.id.number)))
}
