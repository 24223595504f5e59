//! Daily range partitions of `events` and `deliveries` by `created_at` (unix seconds).
//!
//! Partitions are created ahead of time by the maintenance pass and, should one be missing,
//! by the write that needs it; retention drops whole partitions older than it keeps. Every
//! change happens inside a write group, under the write lock, so processes never race.

use chrono::DateTime;
use postgres::GenericClient;

use crate::error::{Context, StoreError};

/// The partitioned tables.
pub(crate) const TABLES: [&str; 2] = ["events", "deliveries"];

const DAY: i64 = 86_400;

/// How many days ahead of today the maintenance pass keeps partitions ready.
pub(crate) const DAYS_AHEAD: i64 = 7;

pub(crate) fn day_of(secs: i64) -> i64 {
    secs.div_euclid(DAY)
}

fn name(table: &str, day: i64) -> String {
    let date = DateTime::from_timestamp(day * DAY, 0)
        .map_or_else(|| format!("x{day}"), |d| d.format("%Y%m%d").to_string());
    format!("{table}_{date}")
}

/// Creates the partition of `table` for `day` unless it exists.
pub(crate) fn create(c: &mut impl GenericClient, table: &str, day: i64) -> Result<(), StoreError> {
    c.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF {table} FOR VALUES FROM ({}) TO ({})",
        name(table, day),
        day * DAY,
        (day + 1) * DAY
    ))
    .context("creating a partition")
}

/// Creates the partitions of every partitioned table from `today` to `DAYS_AHEAD` days later.
pub(crate) fn create_ahead(c: &mut impl GenericClient, now_secs: i64) -> Result<(), StoreError> {
    let today = day_of(now_secs);
    for table in TABLES {
        for day in today..=today + DAYS_AHEAD {
            create(c, table, day)?;
        }
    }
    Ok(())
}

/// Drops the partitions of `table` that hold only rows created before `cutoff` (unix
/// seconds); returns how many rows they held.
pub(crate) fn drop_before(
    c: &mut impl GenericClient,
    table: &str,
    cutoff: i64,
) -> Result<usize, StoreError> {
    let rows = c
        .query(
            "SELECT child.relname::text FROM pg_inherits
             JOIN pg_class child ON child.oid = pg_inherits.inhrelid
             WHERE pg_inherits.inhparent = $1::text::regclass",
            &[&table],
        )
        .context("listing partitions")?;
    let mut dropped = 0usize;
    for row in rows {
        let partition: String = row.get(0);
        let Some(day) = partition
            .strip_prefix(table)
            .and_then(|rest| rest.strip_prefix('_'))
            .and_then(|date| chrono::NaiveDate::parse_from_str(date, "%Y%m%d").ok())
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| day_of(t.and_utc().timestamp()))
        else {
            continue;
        };
        if (day + 1) * DAY <= cutoff {
            let count: i64 = c
                .query_one(&format!("SELECT count(*) FROM {partition}"), &[])
                .context("counting a partition")?
                .get(0);
            c.batch_execute(&format!("DROP TABLE {partition}"))
                .context("dropping a partition")?;
            dropped += count.max(0) as usize;
        }
    }
    Ok(dropped)
}
