//! Bearer-key authentication, scopes and tenancy checks (SPEC §6).
//!
//! Keys are looked up on every request (by the SHA-256 of the secret), so a key created or
//! revoked with `tidings keys` takes effect at once, in every process.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use tidings_domain::keys::{KEY_SECRET_PREFIX, hash_secret};
use tidings_domain::{ApiKey, OrgId, Scope, Tenant};

use tidings_domain::audit::{AuditActor, AuditContext};

use crate::AppState;
use crate::error::ApiError;
use crate::rate_limit::DecisionSlot;
use crate::request_id;

/// The key a request authenticated with, and who/where the request came from (for the
/// audit log).
#[derive(Debug, Clone)]
pub struct Authenticated(pub ApiKey, pub AuditContext);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::unauthenticated("no API key: send it as `Authorization: Bearer <key>`")
            })?
            .to_str()
            .map_err(|_| ApiError::unauthenticated("the Authorization header is not valid text"))?;
        let secret = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthenticated("use the Bearer scheme: `Authorization: Bearer <key>`")
            })?;
        if !secret.starts_with(KEY_SECRET_PREFIX) || secret.len() > 128 {
            return Err(ApiError::unauthenticated(
                "invalid API key: keys look like tdk_…",
            ));
        }
        let key = state
            .store
            .authenticate(hash_secret(secret))
            .await?
            .ok_or_else(|| ApiError::unauthenticated("invalid or revoked API key"))?;
        if let Some(limits) = &state.rate_limits {
            let decision = limits.check(&key);
            if let Some(slot) = parts.extensions.get::<DecisionSlot>() {
                slot.set(decision);
            }
            if let Some(after) = decision.retry_after_secs {
                return Err(ApiError::rate_limited(after));
            }
        }
        let audit = AuditContext {
            actor: AuditActor {
                actor_type: "api_key".into(),
                id: key.id.to_string(),
            },
            request_id: Some(request_id::current()),
            source_ip: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string()),
            user_agent: parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(512).collect()),
        };
        Ok(Authenticated(key, audit))
    }
}

impl Authenticated {
    /// Who is acting, for the audit log.
    pub fn audit(&self) -> &AuditContext {
        &self.1
    }

    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.0.has_scope(scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "scope_missing",
                format!("this key ({}) lacks the `{scope}` scope", self.0.id),
            ))
        }
    }

    /// The tenant for a list request that names `requested` (if any). An organization key
    /// asking about another organization gets a 403 (SPEC §6).
    pub fn tenant_for_list(&self, requested: Option<&OrgId>) -> Result<Tenant, ApiError> {
        match (&self.0.organization_id, requested) {
            (Some(mine), Some(asked)) if mine != asked => Err(ApiError::forbidden(
                "organization_forbidden",
                format!("this key belongs to another organization and cannot read {asked}"),
            )
            .with_param("organization_id")),
            _ => Ok(self.0.tenant()),
        }
    }

    /// The tenant for single-resource requests: another organization's resources simply do
    /// not exist for this key (404, never 403).
    pub fn tenant(&self) -> Tenant {
        self.0.tenant()
    }

    pub fn is_platform(&self) -> bool {
        self.0.organization_id.is_none()
    }
}
