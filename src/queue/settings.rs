//! The queue's own settings: lease and polling, retry policies, per-kind limits and cron
//! schedules. jobs.toml fills them in (config.rs); the queue and the worker read nothing else.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub tuning: Tuning,
    pub retry: RetryPolicy,
    pub kinds: BTreeMap<String, KindConfig>,
    pub schedules: Vec<Schedule>,
}

impl Settings {
    /// The retry policy of a kind: its own from `[kinds]`, else `[retry]`.
    pub fn policy(&self, kind: &str) -> RetryPolicy {
        self.kinds.get(kind).map(|k| k.retry).unwrap_or(self.retry)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.tuning.lease_secs)
    }
}

/// `[queue]` in jobs.toml.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// How long a claim is valid without a heartbeat.
    pub lease_secs: u64,
    /// Poll floor when no NOTIFY arrives (at most 1000).
    pub poll_ms: u64,
    /// Job slots per worker process.
    pub concurrency: usize,
    /// SIGTERM: how long in-flight jobs may run before they are released.
    pub shutdown_grace_secs: u64,
    /// Finished jobs older than this are pruned.
    pub retention_hours: u64,
    /// Rows deleted per prune statement.
    pub prune_batch: i64,
    /// false: handlers' transactions commit without waiting for the WAL flush. A database
    /// crash can then lose the last moments of finished jobs, each with everything it
    /// wrote (they commit together), so those jobs simply run again.
    pub synchronous_commit: bool,
}

/// The values jobs.toml may set, each key's range (config.rs checks them at the key's line).
/// Outside them the worker could not run: a lease shorter than its heartbeat round trip,
/// a retention whose age overflows, a prune that never ends.
impl Tuning {
    pub const LEASE_SECS: RangeInclusive<i64> = 2..=86_400;
    pub const POLL_MS: RangeInclusive<i64> = 1..=1000;
    pub const CONCURRENCY: RangeInclusive<i64> = 1..=10_000;
    pub const SHUTDOWN_GRACE_SECS: RangeInclusive<i64> = 0..=86_400;
    /// Ten years: `retention_hours * 3600` seconds stays far from overflowing.
    pub const RETENTION_HOURS: RangeInclusive<i64> = 1..=87_600;
    /// At least one row, or the prune loop would never end.
    pub const PRUNE_BATCH: RangeInclusive<i64> = 1..=100_000;
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            lease_secs: 30,
            poll_ms: 1000,
            concurrency: 32,
            shutdown_grace_secs: 20,
            retention_hours: 24 * 7,
            prune_batch: 1000,
            synchronous_commit: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: i32,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff_base_ms: 1000,
            backoff_cap_ms: 300_000,
        }
    }
}

impl RetryPolicy {
    pub const MAX_ATTEMPTS: RangeInclusive<i64> = 1..=1000;
    /// Both `backoff_base_ms` and `backoff_cap_ms` (a day at most); cap >= base.
    pub const BACKOFF_MS: RangeInclusive<i64> = 1..=86_400_000;

    /// Exponential backoff with jitter: the n-th failure waits between half and all of
    /// min(cap, base * 2^(n-1)), so a burst of failures spreads out instead of retrying in step.
    pub fn backoff(&self, attempts: i32) -> Duration {
        let exp = attempts.clamp(1, 30) as u32 - 1;
        let full = self
            .backoff_base_ms
            .saturating_mul(1u64 << exp)
            .min(self.backoff_cap_ms);
        let jittered = full / 2 + rand::random::<u64>() % (full / 2 + 1);
        Duration::from_millis(jittered)
    }
}

#[derive(Debug, Clone, Default)]
pub struct KindConfig {
    pub retry: RetryPolicy,
    /// Running jobs of this kind per worker process (None: no limit beyond the slots).
    pub concurrency: Option<usize>,
}

impl KindConfig {
    pub const CONCURRENCY: RangeInclusive<i64> = 1..=10_000;
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub cron: croner::Cron,
    pub kind: String,
    pub payload: serde_json::Value,
    pub priority: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            backoff_base_ms: 100,
            backoff_cap_ms: 1000,
        };
        for _ in 0..100 {
            let d1 = p.backoff(1).as_millis();
            let d3 = p.backoff(3).as_millis();
            let d9 = p.backoff(9).as_millis();
            assert!((50..=100).contains(&d1), "{d1}");
            assert!((200..=400).contains(&d3), "{d3}");
            assert!((500..=1000).contains(&d9), "{d9}");
        }
    }
}
