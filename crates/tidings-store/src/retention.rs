//! Retention (SPEC §12): what the sweep deletes, and what one bounded pass did.

use std::time::Duration;

/// How long each kind of record is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub events: Duration,
    pub deliveries: Duration,
    pub audit_records: Duration,
}

impl Default for RetentionPolicy {
    /// 90 days of events, 30 days of deliveries, 365 days of audit records.
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Self {
            events: Duration::from_secs(90 * DAY),
            deliveries: Duration::from_secs(30 * DAY),
            audit_records: Duration::from_secs(365 * DAY),
        }
    }
}

/// Rows one pass deleted. A pass deletes at most its batch size of each kind, so the sweep
/// runs as many short transactions between which ingest and queries proceed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub events: usize,
    pub deliveries: usize,
    pub audit_records: usize,
}

impl SweepReport {
    pub fn total(&self) -> usize {
        self.events + self.deliveries + self.audit_records
    }
}
