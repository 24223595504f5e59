//! One bounded pass of the retention sweep on PostgreSQL, as one writer job.
//!
//! Events and deliveries live in daily partitions: whole days older than the policy are
//! dropped (no row-by-row delete, no vacuum debt), and the rows of the one day that straddles
//! the cutoff are deleted in a bounded batch. The pass also creates the partitions of the
//! coming days. Audit records are deleted oldest first, moving each chain's checkpoint, as on
//! SQLite.

use std::collections::BTreeMap;

use chrono::Duration as ChronoDuration;
use postgres::Transaction;

use super::partitions;
use super::writer::WriterCtx;
use crate::error::{Context, StoreError};
use crate::retention::{RetentionPolicy, SweepReport};

fn cutoff(ctx: &WriterCtx<'_>, keep: std::time::Duration) -> i64 {
    let keep = ChronoDuration::from_std(keep).unwrap_or(ChronoDuration::MAX);
    ctx.now
        .checked_sub_signed(keep)
        .map_or(i64::MIN, |t| t.timestamp())
}

/// Drops the whole days of `table` before `cutoff`, then deletes at most `batch` rows of
/// the day that straddles it.
fn sweep_partitioned(
    tx: &mut Transaction<'_>,
    table: &str,
    cutoff: i64,
    batch: usize,
) -> Result<usize, StoreError> {
    let dropped = partitions::drop_before(tx, table, cutoff)?;
    let deleted = tx
        .execute(
            &format!(
                "DELETE FROM {table} WHERE (seq, created_at) IN (
                     SELECT seq, created_at FROM {table} WHERE created_at < $1 LIMIT $2)"
            ),
            &[&cutoff, &(batch as i64)],
        )
        .context("sweeping rows")?;
    Ok(dropped + deleted as usize)
}

pub(crate) fn sweep(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    policy: RetentionPolicy,
    batch: usize,
) -> Result<SweepReport, StoreError> {
    // The coming days' partitions (cached: a day known to exist costs nothing).
    let today = ctx.now.timestamp();
    for table in partitions::TABLES {
        for day in 0..=partitions::DAYS_AHEAD {
            ctx.ensure_partition(tx, table, today + day * 86_400)?;
        }
    }

    let events_cutoff = cutoff(ctx, policy.events);
    // Keys go with their events (first, so none outlives its event).
    tx.execute(
        "DELETE FROM event_idempotency WHERE created_at < $1",
        &[&events_cutoff],
    )
    .context("sweeping idempotency keys")?;
    let events = sweep_partitioned(tx, "events", events_cutoff, batch)?;
    let deliveries = sweep_partitioned(tx, "deliveries", cutoff(ctx, policy.deliveries), batch)?;

    // Audit records go oldest first per chain; each chain's checkpoint moves to the hash of
    // its last removed record, so the shortened chain still verifies.
    let old: Vec<(i64, String, Vec<u8>)> = tx
        .query(
            "SELECT seq, chain, hash FROM audit_records
             WHERE created_at < $1 ORDER BY seq LIMIT $2",
            &[&cutoff(ctx, policy.audit_records), &(batch as i64)],
        )
        .context("reading old audit records")?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut last_per_chain: BTreeMap<&str, (i64, &[u8])> = BTreeMap::new();
    for (seq, chain, hash) in &old {
        last_per_chain.insert(chain, (*seq, hash));
    }
    for (chain, (seq, hash)) in &last_per_chain {
        tx.execute(
            "INSERT INTO audit_checkpoints (chain, first_seq, prev_hash, created_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (chain) DO UPDATE SET first_seq = excluded.first_seq,
                 prev_hash = excluded.prev_hash, created_at = excluded.created_at",
            &[chain, &(seq + 1), hash, &ctx.now.timestamp()],
        )
        .context("moving an audit checkpoint")?;
    }
    let seqs: Vec<i64> = old.iter().map(|(s, ..)| *s).collect();
    tx.execute("DELETE FROM audit_records WHERE seq = ANY($1)", &[&seqs])
        .context("sweeping audit records")?;
    Ok(SweepReport {
        events,
        deliveries,
        audit_records: old.len(),
    })
}
