//! Request types of the audit part of the [`crate::Store`] trait.

use tidings_domain::{OrgId, TimeRange};

/// Filters of `GET /v1/audit-logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// `None` with a platform key: the platform chain (keys without an organization).
    pub organization_id: Option<OrgId>,
    pub actor_id: Option<String>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub range: TimeRange,
}
