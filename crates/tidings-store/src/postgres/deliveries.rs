//! Deliveries: fan-out from the event log, leases for workers, attempts, and the log the
//! API shows, on PostgreSQL.
//!
//! Fan-out reads the event log oldest-first from a persisted cursor, in the same
//! transaction that creates the deliveries and advances the cursor, so every event is fanned
//! out exactly once, also across crashes. (Write groups of all processes commit one at a
//! time under the write lock, in event-number order, so every event up to the newest number
//! the writer has minted is committed or in this very transaction: that is the high-water
//! mark fan-out reads up to.)
//!
//! Claiming is the one delivery write outside the write groups: its own short transaction
//! takes due rows with `FOR UPDATE SKIP LOCKED`, so processes claim side by side and never
//! the same delivery. Recording an attempt locks the delivery row before it reads the lease.
//!
//! Attempts live in their delivery's row, a JSON array, so dropping a day's partition drops
//! them with their deliveries.

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use postgres::{Client, GenericClient, Row, Transaction};
use serde_json::Value;
use tidings_domain::ids::{DeliveryId, WebhookId};
use tidings_domain::webhook::SigningSecret;
use tidings_domain::webhook::{Attempt, AttemptTrigger, Delivery};
use tidings_domain::{Event, EventId, Tenant, TimeRange};

use serde_json::json;
use tidings_domain::audit::AuditContext;

use super::events::{EVENT_COLUMNS, event_from_row, insert_events};
use super::list_query::ListQuery;
use super::statements::Statements;
use super::webhooks::{find, newest_event_seq};
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
fn routed_event(r: &Row) -> RoutedEvent {
    RoutedEvent {
        seq: r.get(0),
        org: r.get(1),
        workspace: r.get(2),
        event_type: r.get(3),
        subject_type: r.get(4),
        subject_id: r.get(5),
        created_at: r.get(6),
    }
}

/// A delivery to create.
struct NewDelivery<'a> {
    webhook_seq: i64,
    event: Option<(i64, u8)>,
    event_type: &'a str,
    trigger: AttemptTrigger,
    due: Option<DateTime<Utc>>,
    lease_owner: Option<&'a str>,
}

/// Inserts pending deliveries created now, all with one statement (fan-out and replay make
/// many at once, under the write lock); returns their numbers, in order.
fn insert_deliveries(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    rows: &[NewDelivery<'_>],
) -> Result<Vec<u64>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let created_at = ctx.now.timestamp();
    ctx.ensure_partition(tx, "deliveries", created_at)?;
    let mut seqs = Vec::with_capacity(rows.len());
    for _ in rows {
        seqs.push(ctx.next_id(tx, "DLV")?);
    }
    let lease_until = millis(ctx.now) + 60_000;
    let numbers: Vec<i64> = seqs.iter().map(|s| *s as i64).collect();
    let webhooks: Vec<i64> = rows.iter().map(|r| r.webhook_seq).collect();
    let events: Vec<Option<i64>> = rows.iter().map(|r| r.event.map(|e| e.0)).collect();
    let years: Vec<Option<i32>> = rows
        .iter()
        .map(|r| r.event.map(|e| i32::from(e.1)))
        .collect();
    let types: Vec<&str> = rows.iter().map(|r| r.event_type).collect();
    let dues: Vec<Option<i64>> = rows.iter().map(|r| r.due.map(millis)).collect();
    let triggers: Vec<&str> = rows.iter().map(|r| r.trigger.as_str()).collect();
    let owners: Vec<Option<&str>> = rows.iter().map(|r| r.lease_owner).collect();
    let leases: Vec<Option<i64>> = rows
        .iter()
        .map(|r| r.lease_owner.map(|_| lease_until))
        .collect();
    tx.execute(
        "INSERT INTO deliveries (seq, webhook_seq, event_seq, event_year, event_type, status,
                                 next_attempt_at, next_trigger, lease_owner, lease_until, created_at)
         SELECT seq, webhook_seq, event_seq, event_year, event_type, 'pending',
                next_attempt_at, next_trigger, lease_owner, lease_until, $10
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::integer[], $5::text[],
                     $6::bigint[], $7::text[], $8::text[], $9::bigint[])
              AS d(seq, webhook_seq, event_seq, event_year, event_type, next_attempt_at,
                   next_trigger, lease_owner, lease_until)",
        &[
            &numbers,
            &webhooks,
            &events,
            &years,
            &types,
            &dues,
            &triggers,
            &owners,
            &leases,
            &created_at,
        ],
    )
    .context("inserting deliveries")?;
    Ok(seqs)
}

pub(crate) fn fan_out(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    max_events: usize,
) -> Result<FanoutReport, StoreError> {
    let cursor: i64 = tx
        .query_one("SELECT last_event_seq FROM fanout_cursor WHERE id = 1", &[])
        .context("reading the fan-out cursor")?
        .get(0);
    let high_water = newest_event_seq(tx, ctx)?;
    let any_active = ctx.prepared(
        tx,
        "SELECT EXISTS(SELECT 1 FROM webhooks WHERE status = 'active')",
    )?;
    if !tx
        .query_one(&any_active, &[])
        .context("checking for active webhooks")?
        .get::<_, bool>(0)
    {
        // Nobody to deliver to: a webhook activated later starts after the newest event
        // anyway, so the cursor skips ahead without reading the events.
        let skip = ctx.prepared(
            tx,
            "UPDATE fanout_cursor SET last_event_seq = greatest(last_event_seq, $1) WHERE id = 1",
        )?;
        tx.execute(&skip, &[&high_water])
            .context("advancing the fan-out cursor")?;
        return Ok(FanoutReport::default());
    }
    let events: Vec<RoutedEvent> = tx
        .query(
            &format!(
                "SELECT {ROUTING_COLUMNS} FROM events WHERE seq > $1 AND seq <= $2
                 ORDER BY seq LIMIT $3"
            ),
            &[&cursor, &high_water, &(max_events as i64)],
        )
        .context("reading events to fan out")?
        .iter()
        .map(routed_event)
        .collect();
    let Some(last) = events.last().map(|e| e.seq) else {
        return Ok(FanoutReport::default());
    };

    let mut by_org: HashMap<String, Vec<ActiveWebhook>> = HashMap::new();
    let rows = tx
        .query(
            "SELECT seq, org, workspace, event_types, start_after_seq, created_at FROM webhooks
             WHERE status = 'active'",
            &[],
        )
        .context("reading active webhooks")?;
    for row in rows {
        let seq: i64 = row.get(0);
        let types: String = row.get(3);
        by_org
            .entry(row.get(1))
            .or_default()
            .push(ActiveWebhook::new(
                seq,
                row.get(2),
                &types,
                row.get(4),
                row.get(5),
            )?);
    }

    let created = wanted(&events, &by_org)
        .into_iter()
        .map(|(webhook_seq, event)| {
            Ok(NewDelivery {
                webhook_seq,
                event: Some((event.seq, event.year()?)),
                event_type: &event.event_type,
                trigger: AttemptTrigger::Scheduled,
                due: Some(ctx.now),
                lease_owner: None,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    insert_deliveries(tx, ctx, &created)?;
    tx.execute(
        "UPDATE fanout_cursor SET last_event_seq = $1 WHERE id = 1",
        &[&last],
    )
    .context("advancing the fan-out cursor")?;
    Ok(FanoutReport {
        events_scanned: events.len(),
        deliveries_created: created.len(),
    })
}

/// What [`claimed`] reads of a delivery and its webhook, in this order.
const CLAIMED_COLUMNS: &str = "d.seq, d.webhook_seq, w.org, w.url, w.created_at, d.event_seq,
    d.event_type, d.next_trigger, d.attempt_count, d.final_on_failure, w.failing_since,
    d.created_at";

/// Deliveries `seqs` with their webhooks.
static DELIVERIES_BY_SEQ: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {CLAIMED_COLUMNS} FROM deliveries d JOIN webhooks w ON w.seq = d.webhook_seq
         WHERE d.seq = ANY($1)"
    )
});

/// Per endpoint, its most overdue deliveries, at most what it has left, locked with SKIP
/// LOCKED so that other processes' claims pass them by: an endpoint with every slot taken (a
/// dead one holding its requests until they time out) is not read at all, however many
/// deliveries it owes. Then the most overdue of all of them, read as [`CLAIMED_COLUMNS`]
/// in the same statement.
static DUE_DELIVERIES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH busy (webhook_seq, n) AS (SELECT * FROM unnest($2::bigint[], $3::bigint[]))
         SELECT {CLAIMED_COLUMNS} FROM webhooks w
         LEFT JOIN busy b ON b.webhook_seq = w.seq
         CROSS JOIN LATERAL (
             SELECT seq, webhook_seq, event_seq, event_type, next_trigger, attempt_count,
                    final_on_failure, created_at, next_attempt_at
             FROM deliveries
             WHERE webhook_seq = w.seq AND status = 'pending' AND next_attempt_at <= $1
               AND (lease_until IS NULL OR lease_until < $1)
             ORDER BY next_attempt_at
             LIMIT greatest(least($4::bigint - coalesce(b.n, 0), $5::bigint), 0)
             FOR UPDATE SKIP LOCKED
         ) d
         WHERE w.status = 'active'
         ORDER BY d.next_attempt_at, d.seq LIMIT $5"
    )
});

/// The events of claimed deliveries, by number.
static CLAIMED_EVENTS: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq = ANY($1)"));

/// Everything a worker needs about deliveries `seqs`, in that order; the second list holds
/// those with nothing left to deliver (their event is gone, or the delivery itself).
fn claimed_all(
    c: &mut impl GenericClient,
    statements: &mut Statements,
    seqs: &[i64],
    now: DateTime<Utc>,
) -> Result<(Vec<ClaimedDelivery>, Vec<i64>), StoreError> {
    if seqs.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let read = statements.get(c, &DELIVERIES_BY_SEQ)?;
    let rows = c
        .query(&read, &[&seqs])
        .context("reading claimed deliveries")?;
    let by_seq: HashMap<i64, &postgres::Row> = rows.iter().map(|r| (r.get(0), r)).collect();
    let (found, mut gone): (Vec<i64>, Vec<i64>) =
        seqs.iter().partition(|seq| by_seq.contains_key(seq));
    let ordered: Vec<&postgres::Row> = found
        .iter()
        .filter_map(|s| by_seq.get(s).copied())
        .collect();
    let (out, gone_events) = claimed(c, statements, &ordered, now)?;
    gone.extend(gone_events);
    Ok((out, gone))
}

/// Deliveries from rows of [`CLAIMED_COLUMNS`], in their order, with their events and
/// webhook secrets (two queries whatever their number). The second list holds those whose
/// event is gone (retention): nothing is left to deliver.
fn claimed(
    c: &mut impl GenericClient,
    statements: &mut Statements,
    rows: &[&postgres::Row],
    now: DateTime<Utc>,
) -> Result<(Vec<ClaimedDelivery>, Vec<i64>), StoreError> {
    if rows.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let event_seqs: Vec<i64> = rows
        .iter()
        .filter_map(|r| r.get::<_, Option<i64>>(5))
        .collect();
    let mut events: HashMap<i64, Event> = HashMap::new();
    if !event_seqs.is_empty() {
        let read = statements.get(c, &CLAIMED_EVENTS)?;
        for r in c
            .query(&read, &[&event_seqs])
            .context("reading the deliveries' events")?
        {
            let e = event_from_row(&r)?;
            events.insert(e.id.number as i64, e);
        }
    }
    let mut webhooks: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
    webhooks.sort_unstable();
    webhooks.dedup();
    let mut secrets: HashMap<i64, Vec<SigningSecret>> = HashMap::new();
    let read = statements.get(
        c,
        "SELECT webhook_seq, secret FROM webhook_secrets
         WHERE webhook_seq = ANY($1) AND (expires_at IS NULL OR expires_at > $2)
         ORDER BY webhook_seq, expires_at IS NULL DESC, created_at DESC",
    )?;
    for r in c
        .query(&read, &[&webhooks, &now.timestamp()])
        .context("reading webhook secrets")?
    {
        let secret =
            SigningSecret::parse(r.get::<_, &str>(1)).map_err(|e| corrupt("webhook secret", e))?;
        secrets.entry(r.get(0)).or_default().push(secret);
    }

    let (mut out, mut gone) = (Vec::with_capacity(rows.len()), Vec::new());
    for row in rows {
        let seq: i64 = row.get(0);
        let webhook_seq: i64 = row.get(1);
        let org: String = row.get(2);
        let event_seq: Option<i64> = row.get(5);
        let event = event_seq.and_then(|e| events.get(&e).cloned());
        if event_seq.is_some() && event.is_none() {
            // The event is gone (retention); there is nothing left to deliver.
            gone.push(seq);
            continue;
        }
        let trigger: String = row.get(7);
        let attempt_count: i32 = row.get(8);
        let failing_since: Option<i64> = row.get(10);
        let created_at = timestamp(row.get(11))?;
        out.push(ClaimedDelivery {
            id: DeliveryId::new(two_digit_year(created_at), seq as u64),
            webhook_id: webhook_id(webhook_seq, timestamp(row.get(4))?),
            organization_id: org.parse().map_err(|e| corrupt("webhook org", e))?,
            url: row.get(3),
            secrets: secrets.get(&webhook_seq).cloned().unwrap_or_default(),
            event,
            event_type: row.get(6),
            trigger: trigger.parse().map_err(|e| corrupt("trigger", e))?,
            attempt_number: attempt_count as u32 + 1,
            final_on_failure: row.get(9),
            failing_since: failing_since.map(timestamp).transpose()?,
            created_at,
        });
    }
    Ok((out, gone))
}

/// Leases due deliveries to `request.owner`. Its own transaction on `c`, outside the write
/// groups: rows another claim holds are skipped, so two processes never take one delivery.
///
/// The claim commits without waiting for its WAL flush (`synchronous_commit = off` for this
/// transaction only). Other transactions see the lease at once; what a crash of the
/// database server can take back is only the lease (and the closing of deliveries whose
/// event is gone), never an attempt or a delivery: those are recorded by the write groups,
/// durably. A lost lease makes the delivery due again, so it is sent again, which
/// at-least-once delivery allows (receivers deduplicate on `webhook-id`).
pub(crate) fn claim(
    c: &mut Client,
    statements: &mut Statements,
    now: DateTime<Utc>,
    request: ClaimRequest,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let now_ms = millis(now);
    let (busy_webhooks, busy_counts): (Vec<i64>, Vec<i64>) = request
        .busy
        .iter()
        .map(|(w, n)| (w.number as i64, *n as i64))
        .unzip();
    let mut tx = c.transaction().context("starting a claim")?;
    tx.batch_execute(
        "SET LOCAL synchronous_commit = off; SET LOCAL plan_cache_mode = force_custom_plan",
    )
    .context("starting a claim")?;
    let due = statements.get(&mut tx, &DUE_DELIVERIES)?;
    let rows = tx
        .query(
            &due,
            &[
                &now_ms,
                &busy_webhooks,
                &busy_counts,
                &(request.per_webhook as i64),
                &(request.limit as i64),
            ],
        )
        .context("finding due deliveries")?;
    let rows: Vec<&postgres::Row> = rows.iter().collect();
    let until = now_ms + request.lease.as_millis() as i64;
    let (out, gone) = claimed(&mut tx, statements, &rows, now)?;
    let leased: Vec<i64> = out.iter().map(|d| d.id.number as i64).collect();
    if !leased.is_empty() {
        let lease = statements.get(
            &mut tx,
            "UPDATE deliveries SET lease_owner = $2, lease_until = $3 WHERE seq = ANY($1)",
        )?;
        tx.execute(&lease, &[&leased, &request.owner, &until])
            .context("leasing deliveries")?;
    }
    if !gone.is_empty() {
        tx.execute(
            "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL WHERE seq = ANY($1)",
            &[&gone],
        )
        .context("closing undeliverable deliveries")?;
    }
    tx.commit().context("committing a claim")?;
    Ok(out)
}

/// One attempt as kept in its delivery's `attempts` array.
fn attempt_to_json(a: &Attempt) -> Value {
    json!({
        "number": a.attempt,
        "trigger": a.trigger.as_str(),
        "started_at_ms": millis(a.started_at),
        "duration_ms": a.duration_ms,
        "status_code": a.status_code,
        "error": a.error.map(|e| e.as_str()),
        "response_body": a.response_body,
    })
}

fn attempt_number(v: &Value) -> Option<u32> {
    v.get("number")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

fn attempt_from_json(v: &Value) -> Result<Attempt, StoreError> {
    let bad = |key: &str| corrupt("delivery attempt", format!("missing or bad `{key}`"));
    // A field that is absent or null.
    let field = |key: &str| v.get(key).filter(|x| !x.is_null());
    let text = |key: &str| {
        field(key)
            .map(|x| x.as_str().map(str::to_string).ok_or_else(|| bad(key)))
            .transpose()
    };
    let trigger = text("trigger")?.ok_or_else(|| bad("trigger"))?;
    let started_at = field("started_at_ms")
        .and_then(Value::as_i64)
        .ok_or_else(|| bad("started_at_ms"))?;
    Ok(Attempt {
        attempt: attempt_number(v).ok_or_else(|| bad("number"))?,
        trigger: trigger.parse().map_err(|e| corrupt("trigger", e))?,
        started_at: from_millis(started_at)?,
        duration_ms: field("duration_ms")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("duration_ms"))?,
        status_code: field("status_code")
            .map(|s| {
                s.as_u64()
                    .and_then(|s| u16::try_from(s).ok())
                    .ok_or_else(|| bad("status_code"))
            })
            .transpose()?,
        error: text("error")?
            .map(|e| e.parse())
            .transpose()
            .map_err(|e| corrupt("attempt error", e))?,
        response_body: text("response_body")?,
    })
}

/// The stored `attempts` array, as JSON values.
fn attempt_values(stored: &str) -> Result<Vec<Value>, StoreError> {
    serde_json::from_str(stored).map_err(|e| corrupt("delivery attempts", e))
}

/// The stored `attempts` array, oldest first.
fn parse_attempts(stored: &str) -> Result<Vec<Attempt>, StoreError> {
    let mut attempts = attempt_values(stored)?
        .iter()
        .map(attempt_from_json)
        .collect::<Result<Vec<_>, _>>()?;
    attempts.sort_by_key(|a| a.attempt);
    Ok(attempts)
}

/// Records the attempts reported to one write group, in order, with one read and one update
/// of their deliveries and one update of the endpoints' failure streaks, whatever their
/// number. A report from a worker that lost its lease records the attempt but does not
/// change the delivery (the new lease holder's report decides it).
pub(crate) fn record_attempts(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    reports: Vec<AttemptReport>,
) -> Result<(), StoreError> {
    // FOR UPDATE: a claim running now skips these rows, or we wait for it to commit and
    // read the lease it set.
    let seqs: Vec<i64> = reports
        .iter()
        .map(|r| r.delivery_id.number as i64)
        .collect();
    let read = ctx.prepared(
        tx,
        "SELECT seq, lease_owner, attempts::text FROM deliveries WHERE seq = ANY($1) FOR UPDATE",
    )?;
    /// A delivery as the reports leave it.
    struct Row {
        lease_owner: Option<String>,
        attempts: Vec<Value>,
        /// Set by the lease holder's report: status, attempt count, next attempt.
        decided: Option<(&'static str, i32, Option<i64>)>,
    }
    let mut rows: HashMap<i64, Row> = HashMap::new();
    for r in tx
        .query(&read, &[&seqs])
        .context("reading delivery leases")?
    {
        rows.insert(
            r.get(0),
            Row {
                lease_owner: r.get(1),
                attempts: attempt_values(r.get(2))?,
                decided: None,
            },
        );
    }
    // Per endpoint: whether an attempt succeeded, and the first failure after the last
    // success (or the first at all).
    let mut streaks: HashMap<i64, (bool, Option<i64>)> = HashMap::new();
    let mut disable: Vec<(i64, String)> = Vec::new();
    let mut events = Vec::new();
    for report in reports {
        let seq = report.delivery_id.number as i64;
        // A delivery deleted with its webhook while the attempt was in flight is skipped.
        let Some(row) = rows.get_mut(&seq) else {
            continue;
        };
        let a = &report.attempt;
        // A second report of the same attempt number replaces the first.
        row.attempts
            .retain(|v| attempt_number(v) != Some(a.attempt));
        row.attempts.push(attempt_to_json(a));
        row.attempts.sort_by_key(attempt_number);
        if row.lease_owner.as_deref() != Some(report.owner.as_str()) {
            continue;
        }
        row.lease_owner = None;
        row.decided = Some((
            report.status.as_str(),
            a.attempt as i32,
            report.next_attempt_at.map(millis),
        ));
        let webhook = report.webhook_id.number as i64;
        let streak = streaks.entry(webhook).or_insert((false, None));
        if a.succeeded() {
            *streak = (true, None);
        } else if a.trigger != AttemptTrigger::Test && streak.1.is_none() {
            streak.1 = Some(a.started_at.timestamp());
        }
        if let Some(reason) = report.disable_webhook {
            disable.push((webhook, reason));
        }
        if let Some(event) = report.event {
            events.push(event);
        }
    }

    let mut columns: (Vec<i64>, Vec<String>, Vec<bool>, Vec<Option<String>>) = Default::default();
    let mut decided: (Vec<Option<i32>>, Vec<Option<i64>>) = Default::default();
    for (seq, row) in &rows {
        columns.0.push(*seq);
        columns
            .1
            .push(Value::Array(row.attempts.clone()).to_string());
        columns.2.push(row.decided.is_some());
        columns.3.push(row.decided.map(|d| d.0.to_string()));
        decided.0.push(row.decided.map(|d| d.1));
        decided.1.push(row.decided.and_then(|d| d.2));
    }
    if !columns.0.is_empty() {
        let update = ctx.prepared(
            tx,
            "UPDATE deliveries d SET attempts = u.attempts::jsonb,
                 status = CASE WHEN u.decided THEN u.status ELSE d.status END,
                 attempt_count = CASE WHEN u.decided THEN u.attempt_count
                                      ELSE d.attempt_count END,
                 next_attempt_at = CASE WHEN u.decided THEN u.next_attempt_at
                                        ELSE d.next_attempt_at END,
                 next_trigger = CASE WHEN u.decided THEN 'scheduled' ELSE d.next_trigger END,
                 final_on_failure = CASE WHEN u.decided THEN false ELSE d.final_on_failure END,
                 lease_owner = CASE WHEN u.decided THEN NULL ELSE d.lease_owner END,
                 lease_until = CASE WHEN u.decided THEN NULL ELSE d.lease_until END
             FROM unnest($1::bigint[], $2::text[], $3::bool[], $4::text[], $5::int[],
                         $6::bigint[])
                  AS u(seq, attempts, decided, status, attempt_count, next_attempt_at)
             WHERE d.seq = u.seq AND d.seq = ANY($1)",
        )?;
        tx.execute(
            &update,
            &[
                &columns.0, &columns.1, &columns.2, &columns.3, &decided.0, &decided.1,
            ],
        )
        .context("recording attempts")?;
    }
    if !streaks.is_empty() {
        let (mut hooks, mut since, mut reset) = (Vec::new(), Vec::new(), Vec::new());
        for (webhook, (succeeded, first_failure)) in streaks {
            hooks.push(webhook);
            reset.push(succeeded);
            since.push(first_failure);
        }
        let streak = ctx.prepared(
            tx,
            "UPDATE webhooks w
             SET failing_since = CASE WHEN u.reset THEN u.since
                                      ELSE coalesce(w.failing_since, u.since) END
             FROM unnest($1::bigint[], $2::bigint[], $3::bool[]) AS u(seq, since, reset)
             WHERE w.seq = u.seq
               AND (u.reset OR (w.failing_since IS NULL AND u.since IS NOT NULL))",
        )?;
        tx.execute(&streak, &[&hooks, &since, &reset])
            .context("updating the endpoints' failure streaks")?;
    }
    for (webhook, reason) in disable {
        tx.execute(
            "UPDATE webhooks SET status = 'disabled', disabled_reason = $2, updated_at = $3
             WHERE seq = $1",
            &[&webhook, &reason, &ctx.now.timestamp()],
        )
        .context("disabling a webhook")?;
    }
    if !events.is_empty() {
        insert_events(tx, ctx, &events)?;
    }
    Ok(())
}

/// When the earliest delivery that no worker holds is due: per endpoint, a walk from the
/// head of its pending deliveries that skips only the leased (in-flight) rows; a lease that
/// runs out because its worker died is found by the dispatcher's regular poll.
pub(crate) fn next_due(
    c: &mut impl GenericClient,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    c.query_one(
        "SELECT min((SELECT next_attempt_at FROM deliveries
                     WHERE webhook_seq = w.seq AND status = 'pending'
                       AND next_attempt_at IS NOT NULL
                       AND (lease_until IS NULL OR lease_until < $1)
                     ORDER BY next_attempt_at LIMIT 1))
         FROM webhooks w WHERE w.status = 'active'",
        &[&millis(now)],
    )
    .context("finding the next due delivery")?
    .get::<_, Option<i64>>(0)
    .map(from_millis)
    .transpose()
}

/// The attempts come with the row, as text (the driver is built without JSON support).
const DELIVERY_COLUMNS: &str = "seq, webhook_seq, event_seq, event_year, event_type, status, next_attempt_at, created_at, attempts::text";

fn delivery_from_row(row: &Row, webhook: WebhookId) -> Result<Delivery, StoreError> {
    let seq: i64 = row.get(0);
    let event_seq: Option<i64> = row.get(2);
    let event_year: Option<i32> = row.get(3);
    let status: String = row.get(5);
    let next_attempt_at: Option<i64> = row.get(6);
    let created_at = timestamp(row.get(7))?;
    let event_year = event_year
        .map(u8::try_from)
        .transpose()
        .map_err(|e| corrupt("delivery event year", e))?;
    Ok(Delivery {
        id: DeliveryId::new(two_digit_year(created_at), seq as u64),
        webhook_id: webhook,
        event_id: event_seq
            .zip(event_year)
            .map(|(s, y)| EventId::new(y, s as u64)),
        event_type: row.get(4),
        status: status.parse().map_err(|e| corrupt("delivery status", e))?,
        attempts: parse_attempts(row.get(8))?,
        next_attempt_at: next_attempt_at.map(from_millis).transpose()?,
        created_at,
    })
}

pub(crate) fn list(
    c: &mut impl GenericClient,
    tenant: &Tenant,
    webhook: WebhookId,
    filter: &DeliveryFilter,
    page: PageRequest,
) -> Result<Option<Page<Delivery>>, StoreError> {
    let Some(_) = find(c, tenant, webhook)? else {
        return Ok(None);
    };
    let mut query = ListQuery::default();
    query.eq("webhook_seq", webhook.number as i64);
    if let Some(s) = filter.status {
        query.eq("status", s.as_str().to_string());
    }
    if let Some(e) = filter.event_id {
        query.eq("event_seq", e.number as i64);
        query.eq("event_year", i32::from(e.year));
    }
    query.created_within(&filter.range);
    let found = query.page(c, DELIVERY_COLUMNS, "deliveries", page, |r| {
        delivery_from_row(r, webhook)
    })?;
    Ok(Some(found))
}

fn get(
    c: &mut impl GenericClient,
    webhook: WebhookId,
    delivery: DeliveryId,
) -> Result<Option<Delivery>, StoreError> {
    Ok(c.query_opt(
        &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE seq = $1 AND webhook_seq = $2"),
        &[&(delivery.number as i64), &(webhook.number as i64)],
    )
    .context("looking up a delivery")?
    .map(|r| delivery_from_row(&r, webhook))
    .transpose()?
    .filter(|d| d.id == delivery))
}

pub(crate) fn retry(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    tenant: &Tenant,
    webhook: WebhookId,
    delivery: DeliveryId,
    audit: &AuditContext,
) -> Result<Option<Delivery>, StoreError> {
    let Some(hook) = find(tx, tenant, webhook)? else {
        return Ok(None);
    };
    let Some(before) = get(tx, webhook, delivery)? else {
        return Ok(None);
    };
    tx.execute(
        "UPDATE deliveries SET final_on_failure = (status <> 'pending'), status = 'pending',
                next_attempt_at = $2, next_trigger = 'manual'
         WHERE seq = $1",
        &[&(delivery.number as i64), &millis(ctx.now)],
    )
    .context("scheduling a manual retry")?;
    super::audit::append(
        tx,
        ctx,
        audit,
        audit_entries::delivery_retried(hook.organization_id, webhook, delivery, before.status),
    )?;
    get(tx, webhook, delivery)
}

pub(crate) fn replay(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    tenant: &Tenant,
    webhook: WebhookId,
    range: TimeRange,
    limit: usize,
    audit: &AuditContext,
) -> Result<Option<usize>, StoreError> {
    let Some(hook) = find(tx, tenant, webhook)? else {
        return Ok(None);
    };
    let (from, to) = range.as_unix_seconds();
    let org = hook.organization_id.as_str().to_string();
    let read = tx
        .prepare(&format!(
            "SELECT {ROUTING_COLUMNS} FROM events
             WHERE org = $1 AND seq > $2 AND created_at >= $3 AND created_at < $4
             ORDER BY seq LIMIT $5"
        ))
        .context("preparing the replay read")?;
    let wanted = replay_selection(&hook, limit, |after| {
        Ok(tx
            .query(
                &read,
                &[
                    &org,
                    &after,
                    &from.unwrap_or(i64::MIN),
                    &to.unwrap_or(i64::MAX),
                    &REPLAY_PAGE,
                ],
            )
            .context("reading events to replay")?
            .iter()
            .map(routed_event)
            .collect())
    })?;
    let now = ctx.now;
    let replayed = wanted
        .iter()
        .map(|event| {
            Ok(NewDelivery {
                webhook_seq: webhook.number as i64,
                event: Some((event.seq, event.year()?)),
                event_type: &event.event_type,
                trigger: AttemptTrigger::Replay,
                due: Some(now),
                lease_owner: None,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    insert_deliveries(tx, ctx, &replayed)?;
    super::audit::append(
        tx,
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
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    tenant: &Tenant,
    webhook: WebhookId,
    owner: &str,
    audit: &AuditContext,
) -> Result<Option<ClaimedDelivery>, StoreError> {
    let Some(hook) = find(tx, tenant, webhook)? else {
        return Ok(None);
    };
    let test = NewDelivery {
        webhook_seq: webhook.number as i64,
        event: None,
        event_type: "webhook.test",
        trigger: AttemptTrigger::Test,
        due: None,
        lease_owner: Some(owner),
    };
    let Some(seq) = insert_deliveries(tx, ctx, &[test])?.pop() else {
        return Err(StoreError::Corrupt("a test delivery got no number".into()));
    };
    let now = ctx.now;
    let delivery = claimed_all(tx, ctx.statements(), &[seq as i64], now)?
        .0
        .pop();
    super::audit::append(
        tx,
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
