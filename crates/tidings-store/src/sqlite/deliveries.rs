//! Deliveries: fan-out from the event log, leases for workers, attempts, and the log the
//! API shows.
//!
//! Fan-out reads the event log oldest-first from a persisted cursor, in the same
//! transaction that creates the deliveries and advances the cursor, so every event is fanned
//! out exactly once, also across crashes. (On SQLite one writer commits in event-number
//! order, so the newest committed number is the high-water mark.)

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use tidings_domain::ids::{DeliveryId, WebhookId};
use tidings_domain::webhook::{Attempt, AttemptTrigger, Delivery};
use tidings_domain::{EventId, Tenant, TimeRange};

use tidings_domain::audit::AuditContext;

use super::events::{EVENT_COLUMNS, event_from_row, insert_events};
use super::index_keys::index_key;
use super::list_query::{ListQuery, qualified};
use super::webhooks::{find, live_secrets};
use super::writer::WriterCtx;
use crate::audit_entries;
use crate::delivery_types::{
    AttemptReport, ClaimRequest, ClaimedDelivery, DeliveryFilter, FanoutReport,
};
use crate::error::{Context, StoreError};
use crate::routing::{
    ActiveWebhook, REPLAY_PAGE, ROUTING_COLUMNS, RoutedEvent, replay_selection, wanted,
};
use crate::rows::{corrupt, from_millis, millis, timestamp, two_digit_year, webhook_id};
use crate::{Page, PageRequest};

/// A [`RoutedEvent`] from a row selected with [`ROUTING_COLUMNS`].
fn routed_event(r: &Row<'_>) -> rusqlite::Result<RoutedEvent> {
    Ok(RoutedEvent {
        seq: r.get(0)?,
        org: r.get(1)?,
        workspace: r.get(2)?,
        event_type: r.get(3)?,
        subject_type: r.get(4)?,
        subject_id: r.get(5)?,
        created_at: r.get(6)?,
    })
}

#[allow(clippy::too_many_arguments)]
fn insert_delivery(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    webhook_seq: i64,
    event: Option<(i64, u8)>,
    event_type: &str,
    trigger: AttemptTrigger,
    due: Option<DateTime<Utc>>,
    lease_owner: Option<&str>,
) -> Result<u64, StoreError> {
    let seq = ctx.next_id(conn, "DLV")?;
    conn.prepare_cached(
        "INSERT INTO deliveries (seq, webhook_seq, event_seq, event_year, event_type, status,
                                 next_attempt_at, next_trigger, lease_owner, lease_until, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?8, ?9, ?10)",
    )
    .context("preparing the delivery insert")?
    .execute(params![
        seq as i64,
        webhook_seq,
        event.map(|e| e.0),
        event.map(|e| e.1),
        event_type,
        due.map(millis),
        trigger.as_str(),
        lease_owner,
        lease_owner.map(|_| millis(ctx.now) + 60_000),
        ctx.now.timestamp(),
    ])
    .context("inserting a delivery")?;
    Ok(seq)
}

pub(crate) fn fan_out(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    max_events: usize,
) -> Result<FanoutReport, StoreError> {
    let cursor: i64 = conn
        .query_row(
            "SELECT last_event_seq FROM fanout_cursor WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .context("reading the fan-out cursor")?;
    let any_active: bool = conn
        .prepare_cached("SELECT EXISTS(SELECT 1 FROM webhooks WHERE status = 'active')")
        .context("preparing the active webhook check")?
        .query_row([], |r| r.get(0))
        .context("checking for active webhooks")?;
    if !any_active {
        // Nobody to deliver to: a webhook activated later starts after the newest event
        // anyway, so the cursor skips ahead without reading the events.
        conn.prepare_cached(
            "UPDATE fanout_cursor SET last_event_seq =
                 (SELECT coalesce(max(seq), last_event_seq) FROM events) WHERE id = 1",
        )
        .context("preparing the fan-out skip")?
        .execute([])
        .context("advancing the fan-out cursor")?;
        return Ok(FanoutReport::default());
    }
    let events: Vec<RoutedEvent> = conn
        .prepare_cached(&format!(
            "SELECT {ROUTING_COLUMNS} FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2 + 0"
        ))
        .context("preparing the fan-out read")?
        .query_map(params![cursor, max_events as i64], routed_event)
        .context("reading events to fan out")?
        .collect::<Result<_, _>>()
        .context("reading an event to fan out")?;
    let Some(last) = events.last().map(|e| e.seq) else {
        return Ok(FanoutReport::default());
    };

    let mut by_org: HashMap<String, Vec<ActiveWebhook>> = HashMap::new();
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, org, workspace, event_types, start_after_seq, created_at FROM webhooks
             WHERE status = 'active'",
        )
        .context("preparing the active webhook read")?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
        .context("reading active webhooks")?;
    for row in rows {
        let (seq, org, workspace, types, start_after_seq, created_at) =
            row.context("reading a webhook")?;
        by_org.entry(org).or_default().push(ActiveWebhook::new(
            seq,
            workspace,
            &types,
            start_after_seq,
            created_at,
        )?);
    }

    let pairs = wanted(&events, &by_org);
    let now = ctx.now;
    for (webhook_seq, event) in &pairs {
        insert_delivery(
            conn,
            ctx,
            *webhook_seq,
            Some((event.seq, event.year()?)),
            &event.event_type,
            AttemptTrigger::Scheduled,
            Some(now),
            None,
        )?;
    }
    let created = pairs.len();
    conn.execute(
        "UPDATE fanout_cursor SET last_event_seq = ?1 WHERE id = 1",
        [last],
    )
    .context("advancing the fan-out cursor")?;
    Ok(FanoutReport {
        events_scanned: events.len(),
        deliveries_created: created,
    })
}

/// Everything a worker needs about delivery `seq`.
fn claimed(
    conn: &Connection,
    seq: i64,
    now: DateTime<Utc>,
) -> Result<Option<ClaimedDelivery>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT d.webhook_seq, w.org, w.url, w.created_at, d.event_seq, d.event_type,
                    d.next_trigger, d.attempt_count, d.final_on_failure, w.failing_since,
                    d.created_at
             FROM deliveries d JOIN webhooks w ON w.seq = d.webhook_seq WHERE d.seq = ?1",
        )
        .context("preparing the claimed delivery read")?
        .query_row([seq], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, bool>(8)?,
                r.get::<_, Option<i64>>(9)?,
                r.get::<_, i64>(10)?,
            ))
        })
        .optional()
        .context("reading a claimed delivery")?;
    let Some((
        webhook_seq,
        org,
        url,
        webhook_created,
        event_seq,
        event_type,
        trigger,
        attempt_count,
        final_on_failure,
        failing_since,
        created_at,
    )) = row
    else {
        return Ok(None);
    };
    let event = match event_seq {
        Some(e) => conn
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1"
            ))
            .context("preparing the event read")?
            .query_row([e], event_from_row)
            .optional()
            .context("reading a delivery's event")?
            .transpose()?,
        None => None,
    };
    if event_seq.is_some() && event.is_none() {
        // The event is gone (retention); there is nothing left to deliver.
        return Ok(None);
    }
    let created_at = timestamp(created_at)?;
    Ok(Some(ClaimedDelivery {
        id: DeliveryId::new(two_digit_year(created_at), seq as u64),
        webhook_id: webhook_id(webhook_seq, timestamp(webhook_created)?),
        organization_id: org.parse().map_err(|e| corrupt("webhook org", e))?,
        url,
        secrets: live_secrets(conn, webhook_seq as u64, now)?,
        event,
        event_type,
        trigger: trigger.parse().map_err(|e| corrupt("trigger", e))?,
        attempt_number: attempt_count as u32 + 1,
        final_on_failure,
        failing_since: failing_since.map(timestamp).transpose()?,
        created_at,
    }))
}

pub(crate) fn claim(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    request: ClaimRequest,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let now = millis(ctx.now);
    // Per endpoint, its most overdue deliveries, at most what it has left: an endpoint with
    // every slot taken (a dead one holding its requests until they time out) is not read at
    // all, however many deliveries it owes. Then the most overdue of all of them.
    let webhooks: Vec<i64> = conn
        // Only active webhooks are sent anything: a disabled or unverified one keeps its
        // pending deliveries until it is active again.
        .prepare_cached("SELECT seq FROM webhooks WHERE status = 'active'")
        .context("preparing the webhook list")?
        .query_map([], |r| r.get(0))
        .context("listing webhooks")?
        .collect::<Result<_, _>>()
        .context("reading a webhook")?;
    let mut due_of = conn
        .prepare_cached(
            "SELECT next_attempt_at, seq FROM deliveries INDEXED BY deliveries_pending
             WHERE webhook_seq = ?1 AND status = 'pending' AND next_attempt_at <= ?2
               AND (lease_until IS NULL OR lease_until < ?2)
             ORDER BY next_attempt_at LIMIT ?3 + 0",
        )
        .context("preparing the claim")?;
    let mut due: Vec<(i64, i64)> = Vec::new();
    for webhook in webhooks {
        let busy = request
            .busy
            .iter()
            .find(|(w, _)| w.number as i64 == webhook)
            .map_or(0, |(_, n)| *n);
        let room = request.per_webhook.saturating_sub(busy).min(request.limit);
        if room == 0 {
            continue;
        }
        let rows = due_of
            .query_map(params![webhook, now, room as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .context("finding due deliveries")?;
        for row in rows {
            due.push(row.context("reading a due delivery")?);
        }
    }
    due.sort_unstable();
    due.truncate(request.limit);
    let seqs: Vec<i64> = due.into_iter().map(|(_, seq)| seq).collect();
    let until = now + request.lease.as_millis() as i64;
    let mut lease = conn
        .prepare_cached("UPDATE deliveries SET lease_owner = ?2, lease_until = ?3 WHERE seq = ?1")
        .context("preparing the lease")?;
    let mut out = Vec::with_capacity(seqs.len());
    for seq in seqs {
        match claimed(conn, seq, ctx.now)? {
            Some(c) => {
                lease
                    .execute(params![seq, request.owner, until])
                    .context("leasing a delivery")?;
                out.push(c);
            }
            None => {
                conn.execute(
                    "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL WHERE seq = ?1",
                    [seq],
                )
                .context("closing an undeliverable delivery")?;
            }
        }
    }
    Ok(out)
}

pub(crate) fn record_attempt(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    report: AttemptReport,
) -> Result<(), StoreError> {
    let seq = report.delivery_id.number as i64;
    let lease: Option<Option<String>> = conn
        .query_row(
            "SELECT lease_owner FROM deliveries WHERE seq = ?1",
            [seq],
            |r| r.get(0),
        )
        .optional()
        .context("reading a delivery lease")?;
    let Some(lease_owner) = lease else {
        // Deleted with its webhook while the attempt was in flight.
        return Ok(());
    };
    let a = &report.attempt;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO attempts (delivery_seq, number, trigger, started_at, duration_ms,
                               status_code, error, response_body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .context("preparing the attempt insert")?
    .execute(params![
        seq,
        a.attempt,
        a.trigger.as_str(),
        millis(a.started_at),
        a.duration_ms as i64,
        a.status_code,
        a.error.map(|e| e.as_str()),
        a.response_body,
    ])
    .context("recording an attempt")?;
    if lease_owner.as_deref() != Some(report.owner.as_str()) {
        // Another worker took this delivery over after our lease ran out; its own report
        // decides the delivery's state.
        return Ok(());
    }
    conn.prepare_cached(
        "UPDATE deliveries SET status = ?2, attempt_count = ?3, next_attempt_at = ?4,
                next_trigger = 'scheduled', final_on_failure = 0, lease_owner = NULL,
                lease_until = NULL
         WHERE seq = ?1",
    )
    .context("preparing the delivery update")?
    .execute(params![
        seq,
        report.status.as_str(),
        a.attempt,
        report.next_attempt_at.map(millis),
    ])
    .context("updating a delivery")?;
    let webhook = report.webhook_id.number as i64;
    if a.succeeded() {
        conn.execute(
            "UPDATE webhooks SET failing_since = NULL WHERE seq = ?1 AND failing_since IS NOT NULL",
            [webhook],
        )
        .context("clearing a webhook's failure streak")?;
    } else if a.trigger != AttemptTrigger::Test {
        conn.execute(
            "UPDATE webhooks SET failing_since = ?2 WHERE seq = ?1 AND failing_since IS NULL",
            params![webhook, a.started_at.timestamp()],
        )
        .context("starting a webhook's failure streak")?;
    }
    if let Some(reason) = &report.disable_webhook {
        conn.execute(
            "UPDATE webhooks SET status = 'disabled', disabled_reason = ?2, updated_at = ?3
             WHERE seq = ?1",
            params![webhook, reason, ctx.now.timestamp()],
        )
        .context("disabling a webhook")?;
    }
    if let Some(event) = report.event {
        insert_events(conn, ctx, vec![event])?;
    }
    Ok(())
}

/// When the earliest delivery that no worker holds is due: per endpoint, a walk from the
/// head of its pending deliveries that skips only the leased (in-flight) rows; a lease that
/// runs out because its worker died is found by the dispatcher's regular poll.
pub(crate) fn next_due(
    conn: &Connection,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    conn.prepare_cached(
        "SELECT min((SELECT next_attempt_at FROM deliveries INDEXED BY deliveries_pending
                     WHERE webhook_seq = w.seq AND status = 'pending'
                       AND next_attempt_at IS NOT NULL
                       AND (lease_until IS NULL OR lease_until < ?1)
                     ORDER BY next_attempt_at LIMIT 1))
         FROM webhooks w WHERE w.status = 'active'",
    )
    .context("preparing the next-due lookup")?
    .query_row([millis(now)], |r| r.get::<_, Option<i64>>(0))
    .context("finding the next due delivery")?
    .map(from_millis)
    .transpose()
}

const DELIVERY_COLUMNS: &str =
    "seq, webhook_seq, event_seq, event_year, event_type, status, next_attempt_at, created_at";

fn delivery_from_row(
    row: &Row<'_>,
    webhook: WebhookId,
) -> rusqlite::Result<Result<Delivery, StoreError>> {
    let seq: i64 = row.get(0)?;
    let event_seq: Option<i64> = row.get(2)?;
    let event_year: Option<u8> = row.get(3)?;
    let event_type: String = row.get(4)?;
    let status: String = row.get(5)?;
    let next_attempt_at: Option<i64> = row.get(6)?;
    let created_at: i64 = row.get(7)?;
    Ok((|| {
        let created_at = timestamp(created_at)?;
        Ok(Delivery {
            id: DeliveryId::new(two_digit_year(created_at), seq as u64),
            webhook_id: webhook,
            event_id: event_seq
                .zip(event_year)
                .map(|(s, y)| EventId::new(y, s as u64)),
            event_type,
            status: status.parse().map_err(|e| corrupt("delivery status", e))?,
            attempts: Vec::new(),
            next_attempt_at: next_attempt_at.map(from_millis).transpose()?,
            created_at,
        })
    })())
}

fn attach_attempts(conn: &Connection, deliveries: &mut [Delivery]) -> Result<(), StoreError> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let marks: Vec<String> = (1..=deliveries.len()).map(|i| format!("?{i}")).collect();
    let sql = format!(
        "SELECT delivery_seq, number, trigger, started_at, duration_ms, status_code, error,
                response_body
         FROM attempts WHERE delivery_seq IN ({}) ORDER BY delivery_seq, number",
        marks.join(", ")
    );
    let seqs: Vec<i64> = deliveries.iter().map(|d| d.id.number as i64).collect();
    let mut stmt = conn.prepare(&sql).context("preparing the attempt read")?;
    let rows = stmt
        .query_map(params_from_iter(seqs.iter()), |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<u16>>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<String>>(7)?,
            ))
        })
        .context("reading attempts")?;
    let mut by_seq: HashMap<i64, Vec<Attempt>> = HashMap::new();
    for row in rows {
        let (seq, number, trigger, started_at, duration_ms, status_code, error, body) =
            row.context("reading an attempt")?;
        by_seq.entry(seq).or_default().push(Attempt {
            attempt: number,
            trigger: trigger.parse().map_err(|e| corrupt("trigger", e))?,
            started_at: from_millis(started_at)?,
            duration_ms: duration_ms.max(0) as u64,
            status_code,
            error: error
                .map(|e| e.parse())
                .transpose()
                .map_err(|e| corrupt("attempt error", e))?,
            response_body: body,
        });
    }
    for d in deliveries {
        d.attempts = by_seq.remove(&(d.id.number as i64)).unwrap_or_default();
    }
    Ok(())
}

pub(crate) fn list(
    conn: &Connection,
    tenant: &Tenant,
    webhook: WebhookId,
    filter: &DeliveryFilter,
    page: PageRequest,
) -> Result<Option<Page<Delivery>>, StoreError> {
    let Some(_) = find(conn, tenant, webhook)? else {
        return Ok(None);
    };
    let mut query = ListQuery::default();
    query.eq("webhook_seq", webhook.number as i64);
    if let Some(s) = filter.status {
        query.eq("status", s.as_str().to_string());
    }
    if let Some(e) = filter.event_id {
        query.eq("event_seq", e.number as i64);
        query.eq("event_year", e.year as i64);
    }
    query.created_within(&filter.range);
    let mut found = query.page(
        conn,
        DELIVERY_COLUMNS,
        "deliveries INDEXED BY deliveries_webhook",
        page,
        |r| delivery_from_row(r, webhook),
    )?;
    attach_attempts(conn, &mut found.items)?;
    Ok(Some(found))
}

fn get(
    conn: &Connection,
    webhook: WebhookId,
    delivery: DeliveryId,
) -> Result<Option<Delivery>, StoreError> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE seq = ?1 AND webhook_seq = ?2"
        ))
        .context("preparing a delivery lookup")?
        .query_row(
            params![delivery.number as i64, webhook.number as i64],
            |r| delivery_from_row(r, webhook),
        )
        .optional()
        .context("looking up a delivery")?
        .transpose()?
        .filter(|d| d.id == delivery);
    let mut found: Vec<Delivery> = found.into_iter().collect();
    attach_attempts(conn, &mut found)?;
    Ok(found.pop())
}

pub(crate) fn retry(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    tenant: &Tenant,
    webhook: WebhookId,
    delivery: DeliveryId,
    audit: &AuditContext,
) -> Result<Option<Delivery>, StoreError> {
    let Some(hook) = find(conn, tenant, webhook)? else {
        return Ok(None);
    };
    let Some(before) = get(conn, webhook, delivery)? else {
        return Ok(None);
    };
    conn.execute(
        "UPDATE deliveries SET final_on_failure = (status != 'pending'), status = 'pending',
                next_attempt_at = ?2, next_trigger = 'manual'
         WHERE seq = ?1",
        params![delivery.number as i64, millis(ctx.now)],
    )
    .context("scheduling a manual retry")?;
    super::audit::append(
        conn,
        ctx,
        audit,
        audit_entries::delivery_retried(hook.organization_id, webhook, delivery, before.status),
    )?;
    get(conn, webhook, delivery)
}

pub(crate) fn replay(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    tenant: &Tenant,
    webhook: WebhookId,
    range: TimeRange,
    limit: usize,
    audit: &AuditContext,
) -> Result<Option<usize>, StoreError> {
    let Some(hook) = find(conn, tenant, webhook)? else {
        return Ok(None);
    };
    // The read walks the organization's index: index the tail first (a replay is rare;
    // a rolled-back one takes these entries back with it).
    super::events::index_tail(conn, 0)?;
    let (from, to) = range.as_unix_seconds();
    let org = hook.organization_id.as_str().to_string();
    let org_key = index_key(&[&org]);
    let mut read = conn
        .prepare_cached(&format!(
            "SELECT {} FROM event_keys_org AS k CROSS JOIN events AS e ON e.seq = k.seq
             WHERE k.key = ?6 AND e.org = ?1 AND k.seq > ?2 AND e.created_at >= ?3
               AND e.created_at < ?4
             ORDER BY k.seq LIMIT ?5 + 0",
            qualified("e", ROUTING_COLUMNS)
        ))
        .context("preparing the replay read")?;
    let wanted = replay_selection(&hook, limit, |after| {
        read.query_map(
            params![
                org,
                after,
                from.unwrap_or(i64::MIN),
                to.unwrap_or(i64::MAX),
                REPLAY_PAGE,
                org_key
            ],
            routed_event,
        )
        .context("reading events to replay")?
        .collect::<Result<_, _>>()
        .context("reading an event to replay")
    })?;
    let now = ctx.now;
    for event in &wanted {
        insert_delivery(
            conn,
            ctx,
            webhook.number as i64,
            Some((event.seq, event.year()?)),
            &event.event_type,
            AttemptTrigger::Replay,
            Some(now),
            None,
        )?;
    }
    super::audit::append(
        conn,
        ctx,
        audit,
        audit_entries::webhook_replayed(
            hook.organization_id.clone(),
            webhook,
            &range,
            wanted.len(),
        ),
    )?;
    Ok(Some(wanted.len()))
}

pub(crate) fn create_test(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    tenant: &Tenant,
    webhook: WebhookId,
    owner: &str,
    audit: &AuditContext,
) -> Result<Option<ClaimedDelivery>, StoreError> {
    let Some(hook) = find(conn, tenant, webhook)? else {
        return Ok(None);
    };
    let seq = insert_delivery(
        conn,
        ctx,
        webhook.number as i64,
        None,
        "webhook.test",
        AttemptTrigger::Test,
        None,
        Some(owner),
    )?;
    let delivery = claimed(conn, seq as i64, ctx.now)?;
    super::audit::append(
        conn,
        ctx,
        audit,
        audit_entries::webhook_tested(
            hook.organization_id,
            webhook,
            delivery.as_ref().map(|d| d.id),
        ),
    )?;
    Ok(delivery)
}
