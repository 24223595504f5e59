//! Query parameters of list endpoints, parsed and validated (SPEC §4, §8).
//!
//! The HTTP layer hands over the raw `(name, value)` pairs; this module decides what they
//! mean. Unknown names, repeated names and bad values are errors naming the parameter.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde::Serialize;

use crate::catalog::{Catalog, EventType, TypePattern};
use crate::ids::{OrgId, Token, WorkspaceId, truncate_for_message};

/// A query parameter that could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParamError {
    pub param: String,
    /// `parameter_unknown`, `parameter_invalid`, `parameter_missing`, `parameter_duplicated`.
    pub code: &'static str,
    pub message: String,
}

impl ParamError {
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            code: "parameter_invalid",
            message: message.into(),
        }
    }

    pub fn missing(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            code: "parameter_missing",
            message: message.into(),
        }
    }
}

/// Reading direction of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Newest first (the default).
    #[default]
    Desc,
    /// Oldest first, for catching up.
    Asc,
}

pub const DEFAULT_LIMIT: u32 = 25;
pub const MAX_LIMIT: u32 = 100;

/// The generic part of every list request: where to start and how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageParams {
    pub limit: u32,
    pub order: Order,
    /// The raw, still-undecoded cursor.
    pub cursor: Option<String>,
}

/// Parsed raw parameters with a check that every one of them was consumed.
/// The endpoint asks for each parameter it accepts; whatever nobody asked for is an error,
/// and the names asked for are the list of accepted ones in that error.
pub struct Params {
    pairs: Vec<(String, String)>,
    used: Vec<bool>,
    asked: Vec<String>,
}

impl Params {
    /// Rejects repeated parameters (an ambiguous request) up front.
    pub fn new(pairs: Vec<(String, String)>) -> Result<Self, ParamError> {
        for (i, (k, _)) in pairs.iter().enumerate() {
            if pairs[..i].iter().any(|(prev, _)| prev == k) {
                return Err(ParamError {
                    param: k.clone(),
                    code: "parameter_duplicated",
                    message: format!(
                        "`{k}` is given more than once; give it once (lists are comma-separated)"
                    ),
                });
            }
        }
        let used = vec![false; pairs.len()];
        Ok(Self {
            pairs,
            used,
            asked: Vec::new(),
        })
    }

    /// Takes a parameter's value; an empty value counts as absent.
    pub fn take(&mut self, name: &str) -> Option<String> {
        if !self.asked.iter().any(|a| a == name) {
            self.asked.push(name.to_string());
        }
        let i = self.pairs.iter().position(|(k, _)| k == name)?;
        self.used[i] = true;
        let v = self.pairs[i].1.trim().to_string();
        (!v.is_empty()).then_some(v)
    }

    pub fn take_parsed<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ParamError> {
        self.take(name)
            .map(|v| parse(&v).map_err(|m| ParamError::invalid(name, format!("{name}: {m}"))))
            .transpose()
    }

    /// Fails on the first parameter nobody asked for (catches typos like `organisation_id`).
    /// Call it after taking every parameter the endpoint accepts.
    pub fn finish(self) -> Result<(), ParamError> {
        let Some(((k, _), _)) = self.pairs.iter().zip(&self.used).find(|(_, used)| !**used) else {
            return Ok(());
        };
        let accepted = if self.asked.is_empty() {
            "this endpoint takes no query parameters".to_string()
        } else {
            format!("this endpoint accepts: {}", self.asked.join(", "))
        };
        Err(ParamError {
            param: k.clone(),
            code: "parameter_unknown",
            message: format!(
                "unknown parameter `{}`; {accepted}",
                truncate_for_message(k)
            ),
        })
    }

    /// `limit`, `order` and `cursor`, shared by every list endpoint.
    pub fn take_page(&mut self) -> Result<PageParams, ParamError> {
        let limit = self
            .take_parsed("limit", |v| {
                v.parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "must be a whole number between 1 and {MAX_LIMIT}, got `{}`",
                            truncate_for_message(v)
                        )
                    })
            })?
            .unwrap_or(DEFAULT_LIMIT);
        let order = self
            .take_parsed("order", |v| match v {
                "desc" => Ok(Order::Desc),
                "asc" => Ok(Order::Asc),
                other => Err(format!(
                    "must be `asc` or `desc`, got `{}`",
                    truncate_for_message(other)
                )),
            })?
            .unwrap_or_default();
        let cursor = self.take("cursor");
        Ok(PageParams {
            limit,
            order,
            cursor,
        })
    }

    pub fn take_time_range(&mut self) -> Result<TimeRange, ParamError> {
        let from = self.take_parsed("from", parse_time_bound)?;
        let to = self.take_parsed("to", parse_time_bound)?;
        if let (Some(f), Some(t)) = (from, to)
            && f > t
        {
            return Err(ParamError::invalid(
                "from",
                "from must not be later than to (from is inclusive, to is exclusive)",
            ));
        }
        Ok(TimeRange { from, to })
    }
}

/// `from` inclusive, `to` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeRange {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

impl TimeRange {
    /// The bounds as whole unix seconds for stores that keep whole-second timestamps:
    /// `from_secs <= t < to_secs` selects exactly the instants in the range.
    pub fn as_unix_seconds(&self) -> (Option<i64>, Option<i64>) {
        let ceil = |t: DateTime<Utc>| {
            let s = t.timestamp();
            if t.timestamp_subsec_nanos() > 0 {
                s + 1
            } else {
                s
            }
        };
        (self.from.map(ceil), self.to.map(ceil))
    }
}

/// RFC 3339 (offsets allowed) or a plain date meaning 00:00:00 UTC.
pub fn parse_time_bound(v: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d")
        && v.len() == 10
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(Utc.from_utc_datetime(&t));
    }
    Err(format!(
        "`{}` is not a date or time: use RFC 3339 (2026-04-14T00:00:00Z) or a date (2026-04-01)",
        truncate_for_message(v)
    ))
}

/// Which tenant a request acts for. Store queries take it as a required argument, so no
/// query can forget the organization.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tenant {
    /// Scoped to one organization.
    Org(OrgId),
    /// A platform key: every organization (the query's own filters still apply).
    Platform,
}

/// Filters of `GET /v1/events` (and the stream), after validation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventFilter {
    pub organization_id: Option<OrgId>,
    pub workspace_id: Option<WorkspaceId>,
    /// Empty means every type.
    pub types: Vec<TypePattern>,
    pub subject_type: Option<Token>,
    pub subject_id: Option<Token>,
    pub actor_id: Option<Token>,
    pub range: TimeRange,
}

/// A parsed `GET /v1/events` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    pub filter: EventFilter,
    pub page: PageParams,
}

/// Upper bound on entries in a comma-separated `type` list.
pub const MAX_TYPE_PATTERNS: usize = 20;

impl EventFilter {
    /// Reads the event filters out of `params` (shared by the list and the stream).
    pub fn take_from(params: &mut Params) -> Result<Self, ParamError> {
        let organization_id =
            params.take_parsed("organization_id", |v| v.parse::<OrgId>().map_err(|e| e.0))?;
        let workspace_id = params.take_parsed("workspace_id", |v| {
            v.parse::<WorkspaceId>().map_err(|e| e.0)
        })?;
        if organization_id.is_none() && workspace_id.is_none() {
            return Err(ParamError::missing(
                "organization_id",
                "organization_id is required (or give workspace_id)",
            ));
        }
        let types = params
            .take_parsed("type", |v| {
                let parts: Vec<&str> = v.split(',').map(str::trim).collect();
                if parts.len() > MAX_TYPE_PATTERNS {
                    return Err(format!("at most {MAX_TYPE_PATTERNS} types at once"));
                }
                let mut out: Vec<TypePattern> = parts
                    .into_iter()
                    .map(TypePattern::parse)
                    .collect::<Result<_, _>>()?;
                out.sort();
                out.dedup();
                if out.contains(&TypePattern::All) {
                    out.clear();
                }
                Ok(out)
            })?
            .unwrap_or_default();
        let token = |v: &str| v.parse::<Token>().map_err(|e| e.0);
        let subject_type = params.take_parsed("subject_type", token)?;
        let subject_id = params.take_parsed("subject_id", token)?;
        let actor_id = params.take_parsed("actor_id", token)?;
        let range = params.take_time_range()?;
        Ok(Self {
            organization_id,
            workspace_id,
            types,
            subject_type,
            subject_id,
            actor_id,
            range,
        })
    }

    /// Replaces `domain.*` patterns by the catalog's exact types they cover, so stores can
    /// scan one index range per type, and rejects patterns that match nothing in the catalog
    /// (a typo would otherwise silently return an empty list).
    pub fn resolve_types(&mut self, catalog: &Catalog) -> Result<(), ParamError> {
        let mut exact = Vec::new();
        for pattern in &self.types {
            let matching: Vec<TypePattern> = catalog
                .iter()
                .filter(|info| pattern.matches(&info.name))
                .filter_map(|info| EventType::parse(&info.name).ok().map(TypePattern::Exact))
                .collect();
            if matching.is_empty() {
                return Err(ParamError::invalid(
                    "type",
                    format!(
                        "type: `{pattern}` matches no event type in the catalog (GET /v1/event-types)"
                    ),
                ));
            }
            exact.extend(matching);
        }
        exact.sort();
        exact.dedup();
        self.types = exact;
        Ok(())
    }

    /// A canonical rendering of the filter, for cursor fingerprints.
    pub fn canonical(&self) -> String {
        let opt = |o: Option<&str>| o.unwrap_or("").to_string();
        let types: Vec<String> = self.types.iter().map(ToString::to_string).collect();
        let (from, to) = self.range.as_unix_seconds();
        format!(
            "org={}|ws={}|type={}|st={}|sid={}|aid={}|from={}|to={}",
            opt(self.organization_id.as_ref().map(OrgId::as_str)),
            opt(self.workspace_id.as_ref().map(WorkspaceId::as_str)),
            types.join(","),
            opt(self.subject_type.as_ref().map(Token::as_str)),
            opt(self.subject_id.as_ref().map(Token::as_str)),
            opt(self.actor_id.as_ref().map(Token::as_str)),
            from.map(|s| s.to_string()).unwrap_or_default(),
            to.map(|s| s.to_string()).unwrap_or_default(),
        )
    }
}

impl EventQuery {
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self, ParamError> {
        let mut params = Params::new(pairs)?;
        let filter = EventFilter::take_from(&mut params)?;
        let page = params.take_page()?;
        params.finish()?;
        Ok(Self { filter, page })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Result<EventQuery, ParamError> {
        let pairs = form_pairs(s);
        EventQuery::from_pairs(pairs)
    }

    fn form_pairs(s: &str) -> Vec<(String, String)> {
        s.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    #[test]
    fn seed_queries_parse() {
        let e =
            q("organization_id=ORG-26-090500&type=service_line.activated&from=2026-04-01").unwrap();
        assert_eq!(e.page.limit, 25);
        assert_eq!(e.page.order, Order::Desc);
        assert_eq!(
            e.filter.range.from.unwrap().to_rfc3339(),
            "2026-04-01T00:00:00+00:00"
        );
        let feed = q("workspace_id=WS-26-000021&from=2026-04-14T00:00:00Z&to=2026-04-15T00:00:00Z")
            .unwrap();
        assert!(feed.filter.organization_id.is_none());
    }

    #[test]
    fn limit_is_validated_not_clamped() {
        for bad in ["0", "101", "abc", "-1", "2.5"] {
            let err = q(&format!("organization_id=ORG-26-090500&limit={bad}")).unwrap_err();
            assert_eq!(err.param, "limit");
            assert_eq!(err.code, "parameter_invalid");
        }
        assert_eq!(
            q("organization_id=ORG-26-090500&limit=100")
                .unwrap()
                .page
                .limit,
            100
        );
    }

    #[test]
    fn unknown_missing_and_duplicated_parameters_are_errors() {
        let e = q("organisation_id=ORG-26-090500").unwrap_err();
        assert_eq!(e.code, "parameter_missing");
        let e = q("organization_id=ORG-26-090500&organisation_id=x").unwrap_err();
        assert_eq!(
            (e.code, e.param.as_str()),
            ("parameter_unknown", "organisation_id")
        );
        // The accepted names are the ones the parser asked for.
        for accepted in [
            "organization_id",
            "type",
            "from",
            "cursor",
            "limit",
            "order",
        ] {
            assert!(e.message.contains(accepted), "{}", e.message);
        }
        let e = q("organization_id=ORG-26-090500&type=a.b&type=c.d").unwrap_err();
        assert_eq!(e.code, "parameter_duplicated");
    }

    #[test]
    fn type_lists_and_wildcards() {
        let e = q("organization_id=ORG-26-090500&type=invoice.*,task.created,invoice.*").unwrap();
        assert_eq!(e.filter.types.len(), 2);
        let all = q("organization_id=ORG-26-090500&type=*,task.created").unwrap();
        assert!(all.filter.types.is_empty());
        assert_eq!(
            q("organization_id=ORG-26-090500&type=invoice")
                .unwrap_err()
                .param,
            "type"
        );
    }

    #[test]
    fn time_bounds_accept_dates_and_offsets() {
        let t = parse_time_bound("2026-04-14T02:00:00+02:00").unwrap();
        assert_eq!(t, parse_time_bound("2026-04-14").unwrap());
        assert!(parse_time_bound("2026-4-1").is_err());
        assert!(parse_time_bound("yesterday").is_err());
        assert!(parse_time_bound("2026-02-30").is_err());
        let e = q("organization_id=ORG-26-090500&from=2026-04-15&to=2026-04-14").unwrap_err();
        assert_eq!(e.param, "from");
    }

    #[test]
    fn sub_second_bounds_round_up_to_whole_seconds() {
        let r = TimeRange {
            from: Some(parse_time_bound("2026-04-14T00:00:00.5Z").unwrap()),
            to: Some(parse_time_bound("2026-04-14T00:00:10Z").unwrap()),
        };
        let base = parse_time_bound("2026-04-14T00:00:00Z")
            .unwrap()
            .timestamp();
        assert_eq!(r.as_unix_seconds(), (Some(base + 1), Some(base + 10)));
    }
}
