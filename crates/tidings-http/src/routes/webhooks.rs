//! `/v1/webhooks`: subscriptions, their signing secrets, and the verification challenge.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tidings_domain::audit::AuditContext;
use tidings_domain::ids::WebhookId;
use tidings_domain::webhook::{ROTATION_OVERLAP, SigningSecret, Webhook, WebhookStatus};
use tidings_domain::{OrgId, Params, Scope, TypePattern, WorkspaceId};
use tidings_store::{NewWebhook, WebhookUpdate};
use tidings_webhooks::guard;

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::{ApiError, ErrorBody};
use crate::pagination::{ListResponse, Paginator, query_pairs};

/// A webhook together with its signing secret (create, rotate).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookWithSecret {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// `whsec_…`: verify deliveries with it (any Standard Webhooks library does).
    pub secret: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SecretResponse {
    pub secret: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeletedResponse {
    pub id: String,
    pub deleted: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Required for platform keys; an organization key may leave it out.
    pub organization_id: Option<String>,
    pub workspace_id: Option<String>,
    pub url: String,
    /// Exact types, `domain.*`, or `["*"]`.
    pub event_types: Vec<String>,
    pub description: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "explicit_null")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// `false` disables; `true` re-enables (after passing the verification challenge again).
    pub enabled: Option<bool>,
}

/// Tells a field sent as `null` (Some(None)) from a field left out (None).
fn explicit_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

pub(crate) const MAX_DESCRIPTION: usize = 1_024;
pub(crate) const MAX_EVENT_TYPES: usize = 100;

/// Parses a JSON body into `T`, with errors a person can act on.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| ApiError::bad_request("body_unreadable", e.body_text()))?;
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "body_invalid",
            "the request needs a JSON body",
        ));
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("body_invalid", format!("the body is not valid: {e}")))
}

pub(crate) fn parse_webhook_id(id: &str) -> Result<WebhookId, ApiError> {
    id.parse().map_err(|e: tidings_domain::IdError| {
        ApiError::bad_request("parameter_invalid", e.0).with_param("id")
    })
}

pub(crate) fn webhook_not_found(id: WebhookId) -> ApiError {
    ApiError::not_found(format!("no webhook {id}"))
}

fn parse_event_types(state: &AppState, types: &[String]) -> Result<Vec<TypePattern>, ApiError> {
    let invalid =
        |m: String| ApiError::bad_request("parameter_invalid", m).with_param("event_types");
    if types.is_empty() || types.len() > MAX_EVENT_TYPES {
        return Err(invalid(format!(
            "event_types needs 1–{MAX_EVENT_TYPES} entries (use [\"*\"] for every type)"
        )));
    }
    let mut out = Vec::with_capacity(types.len());
    for t in types {
        let pattern = TypePattern::parse(t).map_err(|e| invalid(format!("event_types: {e}")))?;
        if !state.catalog.matches_any(&pattern) {
            return Err(invalid(format!(
                "event_types: `{t}` matches no event type in the catalog (GET /v1/event-types)"
            )));
        }
        out.push(pattern);
    }
    out.sort();
    out.dedup();
    if out.contains(&TypePattern::All) {
        out = vec![TypePattern::All];
    }
    Ok(out)
}

async fn check_url(state: &AppState, url: &str) -> Result<(), ApiError> {
    let allow = state.webhooks.client.allow_private();
    let invalid = |e: guard::GuardError| {
        ApiError::bad_request("parameter_invalid", format!("url: {e}")).with_param("url")
    };
    let parsed = guard::check_url(url, allow).map_err(invalid)?;
    guard::check_target(&parsed, allow).await.map_err(invalid)
}

fn check_description(d: &Option<String>) -> Result<(), ApiError> {
    if d.as_ref()
        .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION)
    {
        return Err(ApiError::bad_request(
            "parameter_invalid",
            format!("description must be at most {MAX_DESCRIPTION} characters"),
        )
        .with_param("description"));
    }
    Ok(())
}

fn fresh_secret() -> SigningSecret {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    SigningSecret::from_random(bytes)
}

/// Runs the verification challenge against `url` with `secret`, before anything is
/// written, so that the write that follows records the outcome in one step (and one audit
/// record): `active`, or `unverified` with the reason.
async fn challenge(
    state: &AppState,
    url: &str,
    secret: &SigningSecret,
) -> (WebhookStatus, Option<String>) {
    let now = state.webhooks.clock.now();
    let msg_id = format!("verification-{}-{}", now.timestamp(), rand::random::<u32>());
    match tidings_webhooks::verify_endpoint(&state.webhooks.client, url, &msg_id, secret, now).await
    {
        Ok(()) => (WebhookStatus::Active, None),
        Err(reason) => (
            WebhookStatus::Unverified,
            Some(format!("verification failed: {reason}")),
        ),
    }
}

/// After a failed challenge: the `webhook.verification_failed` event. After a passed one:
/// wake the dispatcher.
async fn after_challenge(state: &AppState, webhook: &Webhook) -> Result<(), ApiError> {
    match (&webhook.status, &webhook.disabled_reason) {
        (WebhookStatus::Unverified, Some(reason)) => {
            tracing::info!(webhook = %webhook.id, reason, "webhook verification failed");
            if let Some(event) = tidings_webhooks::verification_failed_event(
                &webhook.organization_id,
                &webhook.id.to_string(),
                &webhook.url,
                reason,
            ) {
                state
                    .store
                    .ingest(vec![event], &AuditContext::system())
                    .await?;
            }
        }
        _ => state.webhooks.wake.notify_one(),
    }
    Ok(())
}

/// Subscribe an endpoint. It is sent a verification challenge at once; the response shows
/// whether it passed (`active`) or not (`unverified`, with the reason).
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks",
    security(("bearer" = [])),
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "Created; `secret` is shown in full only here, on rotation and at /secret", body = WebhookWithSecret),
        (status = 400, description = "Invalid field", body = ErrorBody),
        (status = 403, description = "Another organization, or a missing scope", body = ErrorBody)))]
pub async fn create_webhook(
    State(state): State<AppState>,
    key: Authenticated,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<WebhookWithSecret>), ApiError> {
    key.require(Scope::WebhooksWrite)?;
    let req: CreateWebhook = json_body(body)?;
    let requested: Option<OrgId> = req
        .organization_id
        .as_deref()
        .map(|o| {
            o.parse().map_err(|e: tidings_domain::IdError| {
                ApiError::bad_request("parameter_invalid", e.0).with_param("organization_id")
            })
        })
        .transpose()?;
    let organization_id = match (key.tenant_for_list(requested.as_ref())?, requested) {
        (_, Some(org)) => org,
        (tidings_domain::Tenant::Org(org), None) => org,
        (tidings_domain::Tenant::Platform, None) => {
            return Err(ApiError::bad_request(
                "parameter_missing",
                "organization_id is required with a platform key",
            )
            .with_param("organization_id"));
        }
    };
    let workspace_id: Option<WorkspaceId> = req
        .workspace_id
        .as_deref()
        .map(|w| {
            w.parse().map_err(|e: tidings_domain::IdError| {
                ApiError::bad_request("parameter_invalid", e.0).with_param("workspace_id")
            })
        })
        .transpose()?;
    if let Some(ws) = &workspace_id
        && state
            .store
            .workspace_org(ws)
            .await?
            .is_some_and(|owner| owner != organization_id)
    {
        return Err(ApiError::bad_request(
            "parameter_invalid",
            format!("workspace {ws} is not a workspace of {organization_id}"),
        )
        .with_param("workspace_id"));
    }
    let event_types = parse_event_types(&state, &req.event_types)?;
    check_description(&req.description)?;
    check_url(&state, &req.url).await?;
    let secret = fresh_secret();
    let status = challenge(&state, &req.url, &secret).await;
    let webhook = state
        .store
        .create_webhook(
            NewWebhook {
                organization_id,
                workspace_id,
                url: req.url,
                event_types,
                description: req.description,
                status,
            },
            secret.clone(),
            key.audit(),
        )
        .await?;
    after_challenge(&state, &webhook).await?;
    Ok((
        StatusCode::CREATED,
        Json(WebhookWithSecret {
            webhook,
            secret: secret.as_str().to_string(),
        }),
    ))
}

/// An organization's webhooks, newest first.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    security(("bearer" = [])),
    params(
        ("organization_id" = Option<String>, Query, description = "Required for platform keys"),
        ("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query), ("order" = Option<String>, Query)),
    responses(
        (status = 200, body = ListResponse<Webhook>),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_webhooks(
    State(state): State<AppState>,
    key: Authenticated,
    RawQuery(query): RawQuery,
) -> Result<Json<ListResponse<Webhook>>, ApiError> {
    key.require(Scope::WebhooksRead)?;
    let mut params = Params::new(query_pairs(query.as_deref()))?;
    let org = params.take_parsed("organization_id", |v| v.parse::<OrgId>().map_err(|e| e.0))?;
    let page = params.take_page()?;
    params.finish()?;
    if org.is_none() && key.is_platform() {
        return Err(ApiError::bad_request(
            "parameter_missing",
            "organization_id is required with a platform key",
        )
        .with_param("organization_id"));
    }
    let tenant = key.tenant_for_list(org.as_ref())?;
    let filters = format!("org={}", org.as_ref().map(OrgId::as_str).unwrap_or(""));
    let paginator = Paginator::new(
        state.store.cursor_key(),
        "webhooks",
        &tenant,
        &filters,
        &page,
    );
    let found = state
        .store
        .list_webhooks(&tenant, org.as_ref(), paginator.request()?)
        .await?;
    Ok(Json(paginator.respond(found, |w| w.id.number)))
}

/// One webhook.
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path, example = "WHK-26-000004")),
    responses((status = 200, body = Webhook), (status = 404, body = ErrorBody)))]
pub async fn get_webhook(
    State(state): State<AppState>,
    key: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Webhook>, ApiError> {
    key.require(Scope::WebhooksRead)?;
    let id = parse_webhook_id(&id)?;
    state
        .store
        .get_webhook(&key.tenant(), id)
        .await?
        .map(Json)
        .ok_or_else(|| webhook_not_found(id))
}

/// Change the URL, event types, description, or enable/disable. A new URL, or
/// `enabled: true`, runs the verification challenge again.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path)),
    request_body = UpdateWebhook,
    responses((status = 200, body = Webhook), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_webhook(
    State(state): State<AppState>,
    key: Authenticated,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Webhook>, ApiError> {
    key.require(Scope::WebhooksWrite)?;
    let id = parse_webhook_id(&id)?;
    let req: UpdateWebhook = json_body(body)?;
    let tenant = key.tenant();
    let current = state
        .store
        .get_webhook(&tenant, id)
        .await?
        .ok_or_else(|| webhook_not_found(id))?;
    let event_types = req
        .event_types
        .as_deref()
        .map(|t| parse_event_types(&state, t))
        .transpose()?;
    if let Some(d) = &req.description {
        check_description(d)?;
    }
    let url_changed = req.url.as_ref().is_some_and(|u| *u != current.url);
    if let Some(url) = &req.url {
        check_url(&state, url).await?;
    }
    let target_url = req.url.clone().unwrap_or_else(|| current.url.clone());
    let reverify = req.enabled != Some(false)
        && (url_changed || (req.enabled == Some(true) && current.status != WebhookStatus::Active));
    let status = if req.enabled == Some(false) {
        Some((
            WebhookStatus::Disabled,
            Some("disabled through the API".to_string()),
        ))
    } else if reverify {
        let secrets = state
            .store
            .webhook_secrets(&tenant, id)
            .await?
            .ok_or_else(|| webhook_not_found(id))?;
        let secret = secrets
            .first()
            .ok_or_else(|| ApiError::internal(&"a webhook without a signing secret"))?;
        Some(challenge(&state, &target_url, secret).await)
    } else {
        None
    };
    let updated = state
        .store
        .update_webhook(
            &tenant,
            id,
            WebhookUpdate {
                url: req.url,
                event_types,
                description: req.description,
                status,
            },
            key.audit(),
        )
        .await?
        .ok_or_else(|| webhook_not_found(id))?;
    if reverify {
        after_challenge(&state, &updated).await?;
    }
    Ok(Json(updated))
}

/// Delete a webhook, with its deliveries.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = DeletedResponse), (status = 404, body = ErrorBody)))]
pub async fn delete_webhook(
    State(state): State<AppState>,
    key: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<DeletedResponse>, ApiError> {
    key.require(Scope::WebhooksWrite)?;
    let id = parse_webhook_id(&id)?;
    state
        .store
        .delete_webhook(&key.tenant(), id, key.audit())
        .await?
        .ok_or_else(|| webhook_not_found(id))?;
    Ok(Json(DeletedResponse {
        id: id.to_string(),
        deleted: true,
    }))
}

/// The current signing secret.
#[utoipa::path(get, path = "/v1/webhooks/{id}/secret", tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = SecretResponse), (status = 404, body = ErrorBody)))]
pub async fn get_secret(
    State(state): State<AppState>,
    key: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<SecretResponse>, ApiError> {
    key.require(Scope::WebhooksWrite)?;
    let id = parse_webhook_id(&id)?;
    let secrets = state
        .store
        .webhook_secrets(&key.tenant(), id)
        .await?
        .ok_or_else(|| webhook_not_found(id))?;
    let current = secrets
        .first()
        .ok_or_else(|| ApiError::internal(&"a webhook without a signing secret"))?;
    Ok(Json(SecretResponse {
        secret: current.as_str().to_string(),
    }))
}

/// A new signing secret. The previous one keeps signing for 24 hours: deliveries carry
/// both signatures, so receivers can switch without dropping any.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = WebhookWithSecret), (status = 404, body = ErrorBody)))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    key: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<WebhookWithSecret>, ApiError> {
    key.require(Scope::WebhooksWrite)?;
    let id = parse_webhook_id(&id)?;
    let secret = fresh_secret();
    let webhook = state
        .store
        .rotate_webhook_secret(
            &key.tenant(),
            id,
            secret.clone(),
            ROTATION_OVERLAP,
            key.audit(),
        )
        .await?
        .ok_or_else(|| webhook_not_found(id))?;
    Ok(Json(WebhookWithSecret {
        webhook,
        secret: secret.as_str().to_string(),
    }))
}
