//! The one keyset pagination used by every list endpoint (SPEC §8).

use serde::Serialize;
use tidings_domain::{CursorKey, Order, PageParams, Tenant};
use tidings_store::{Page, PageRequest};

use crate::error::ApiError;

/// `{"data": [...], "meta": {"cursor": ..., "has_more": ...}}`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ListResponse<T> {
    pub data: Vec<T>,
    pub meta: ListMeta,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ListMeta {
    /// Pass as `cursor` (with the same filters) for the next page; `null` on the last page.
    pub cursor: Option<String>,
    pub has_more: bool,
}

/// Seals and opens cursors for one list request.
pub struct Paginator<'a> {
    key: &'a CursorKey,
    scope: String,
    params: &'a PageParams,
}

impl<'a> Paginator<'a> {
    /// `list` names the endpoint, `filters` is the canonical form of its filters: a cursor
    /// is only valid for the same list, tenant, filters and order.
    pub fn new(
        key: &'a CursorKey,
        list: &str,
        tenant: &Tenant,
        filters: &str,
        params: &'a PageParams,
    ) -> Self {
        let tenant = match tenant {
            Tenant::Org(o) => o.as_str(),
            Tenant::Platform => "*",
        };
        let order = match params.order {
            Order::Desc => "desc",
            Order::Asc => "asc",
        };
        Self {
            key,
            scope: format!("{list}|{tenant}|{filters}|{order}"),
            params,
        }
    }

    pub fn request(&self) -> Result<PageRequest, ApiError> {
        let after = self
            .params
            .cursor
            .as_deref()
            .map(|c| self.key.decode(&self.scope, c))
            .transpose()?;
        Ok(PageRequest {
            limit: self.params.limit,
            order: self.params.order,
            after,
        })
    }

    pub fn respond<T>(&self, page: Page<T>, position: impl Fn(&T) -> u64) -> ListResponse<T> {
        let cursor = page
            .has_more
            .then(|| {
                page.items
                    .last()
                    .map(|last| self.key.encode(&self.scope, position(last)))
            })
            .flatten();
        ListResponse {
            meta: ListMeta {
                has_more: cursor.is_some(),
                cursor,
            },
            data: page.items,
        }
    }
}

/// Splits a raw query string into decoded pairs.
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}
