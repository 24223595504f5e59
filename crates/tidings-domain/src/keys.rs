//! API keys and scopes (SPEC §6). Only a SHA-256 hash of a key's secret is ever stored.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ids::{KeyId, OrgId};
use crate::query::Tenant;

/// Every secret starts with this, so leaked keys are easy to recognise and scan for.
pub const KEY_SECRET_PREFIX: &str = "tdk_";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
pub enum Scope {
    #[serde(rename = "events:read")]
    EventsRead,
    #[serde(rename = "webhooks:read")]
    WebhooksRead,
    #[serde(rename = "webhooks:write")]
    WebhooksWrite,
    #[serde(rename = "audit_logs:read")]
    AuditLogsRead,
    #[serde(rename = "events:ingest")]
    EventsIngest,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::EventsRead,
        Scope::WebhooksRead,
        Scope::WebhooksWrite,
        Scope::AuditLogsRead,
        Scope::EventsIngest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::EventsRead => "events:read",
            Scope::WebhooksRead => "webhooks:read",
            Scope::WebhooksWrite => "webhooks:write",
            Scope::AuditLogsRead => "audit_logs:read",
            Scope::EventsIngest => "events:ingest",
        }
    }

    /// Parses a comma-separated list, rejecting unknown names.
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, String> {
        let mut out: Vec<Scope> = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err("at least one scope is required".into());
        }
        Ok(out)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scope::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<_> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown scope `{s}`; known scopes: {}", all.join(", "))
            })
    }
}

/// A stored API key (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKey {
    pub id: KeyId,
    /// `None` for a platform key, which may act for any organization.
    pub organization_id: Option<OrgId>,
    pub scopes: Vec<Scope>,
    /// Requests per second allowed for this key; `None` means the server default.
    pub rate_limit: Option<u32>,
    pub description: Option<String>,
    #[serde(serialize_with = "crate::event::serialize_timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::event::serialize_opt_timestamp")]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    pub fn tenant(&self) -> Tenant {
        match &self.organization_id {
            Some(org) => Tenant::Org(org.clone()),
            None => Tenant::Platform,
        }
    }
}

/// What to store for a new key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    pub organization_id: Option<OrgId>,
    pub scopes: Vec<Scope>,
    pub rate_limit: Option<u32>,
    pub description: Option<String>,
}

/// The stored form of a secret.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_lists_parse_strictly() {
        assert_eq!(
            Scope::parse_list("events:read, webhooks:write,events:read").unwrap(),
            vec![Scope::EventsRead, Scope::WebhooksWrite]
        );
        assert!(Scope::parse_list("events:write").is_err());
        assert!(Scope::parse_list("").is_err());
    }
}
