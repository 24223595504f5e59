//! One bounded pass of the retention sweep, as one writer job.

use std::collections::BTreeMap;

use chrono::Duration as ChronoDuration;
use rusqlite::{Connection, params};

use super::events::{delete_events_below, first_seq_at_or_after};
use super::writer::WriterCtx;
use crate::error::{Context, StoreError};
use crate::retention::{RetentionPolicy, SweepReport};

fn cutoff(ctx: &WriterCtx<'_>, keep: std::time::Duration) -> i64 {
    let keep = ChronoDuration::from_std(keep).unwrap_or(ChronoDuration::MAX);
    ctx.now
        .checked_sub_signed(keep)
        .map_or(i64::MIN, |t| t.timestamp())
}

pub(crate) fn sweep(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    policy: RetentionPolicy,
    batch: usize,
) -> Result<SweepReport, StoreError> {
    // Events are numbered in time order: those before the cutoff are those numbered below
    // the first one at or after it.
    let event_cutoff = cutoff(ctx, policy.events);
    let below = first_seq_at_or_after(conn, event_cutoff)?.map_or(i64::MAX, |s| s as i64);
    let events = delete_events_below(conn, below, batch)?;
    // A second's row goes once no event of it is left: seconds before the oldest event.
    conn.prepare_cached(
        "DELETE FROM event_seconds WHERE second <
             coalesce((SELECT created_at FROM events ORDER BY seq LIMIT 1), ?1)",
    )
    .context("preparing the event second sweep")?
    .execute([event_cutoff])
    .context("sweeping event seconds")?;
    let deliveries = conn
        .prepare_cached(
            "DELETE FROM deliveries WHERE seq IN (
                 SELECT seq FROM deliveries INDEXED BY deliveries_created_at
                 WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)",
        )
        .context("preparing the delivery sweep")?
        .execute(params![cutoff(ctx, policy.deliveries), batch as i64])
        .context("sweeping deliveries")?;

    // Audit records go oldest first per chain; each chain's checkpoint moves to the hash of
    // its last removed record, so the shortened chain still verifies.
    let old: Vec<(i64, String, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT seq, chain, hash FROM audit_records
             WHERE created_at < ?1 ORDER BY seq LIMIT ?2",
        )
        .context("preparing the audit sweep")?
        .query_map(
            params![cutoff(ctx, policy.audit_records), batch as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .context("reading old audit records")?
        .collect::<Result<_, _>>()
        .context("reading an old audit record")?;
    let mut last_per_chain: BTreeMap<&str, (i64, &[u8])> = BTreeMap::new();
    for (seq, chain, hash) in &old {
        last_per_chain.insert(chain, (*seq, hash));
    }
    for (chain, (seq, hash)) in &last_per_chain {
        conn.execute(
            "INSERT INTO audit_checkpoints (chain, first_seq, prev_hash, created_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (chain) DO UPDATE SET first_seq = excluded.first_seq,
                 prev_hash = excluded.prev_hash, created_at = excluded.created_at",
            params![chain, seq + 1, hash, ctx.now.timestamp()],
        )
        .context("moving an audit checkpoint")?;
    }
    let mut per_chain: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (seq, chain, _) in &old {
        per_chain.entry(chain).or_default().push(*seq);
    }
    for (chain, seqs) in &per_chain {
        super::audit::delete_records(conn, chain, seqs)?;
    }
    Ok(SweepReport {
        events,
        deliveries,
        audit_records: old.len(),
    })
}
