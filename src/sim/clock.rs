//! Simulated clock: wall time plus an offset that `/_sim/clock/advance`
//! moves forward. Drives token expiry, quota resets and delivery reports.

use chrono::{DateTime, Duration, Utc};
use std::sync::atomic::{AtomicI64, Ordering};

pub struct SimClock {
    offset_ms: AtomicI64,
}

impl Default for SimClock {
    fn default() -> Self {
        Self::new()
    }
}

impl SimClock {
    pub fn new() -> Self {
        Self {
            offset_ms: AtomicI64::new(0),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        let now = Utc::now();
        Duration::try_milliseconds(self.offset_ms.load(Ordering::Relaxed))
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(now)
    }

    pub fn now_ms(&self) -> i64 {
        self.now().timestamp_millis()
    }

    /// Move time forward; at most ~100 years in total so dates stay valid.
    pub fn advance(&self, seconds: f64) {
        const MAX_MS: i64 = 100 * 366 * 86_400_000;
        let add = (seconds.clamp(0.0, MAX_MS as f64 / 1000.0) * 1000.0) as i64;
        let _ = self
            .offset_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| {
                Some(o.saturating_add(add).min(MAX_MS))
            });
    }
}

/// eBay style timestamp: `2024-11-06T10:00:00.000Z`.
pub fn iso_ms(ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => String::from("1970-01-01T00:00:00.000Z"),
    }
}

/// Parse ISO-8601 (with zone) into epoch milliseconds.
pub fn parse_iso(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc).timestamp_millis())
}

/// Next UTC midnight strictly after `ms`.
pub fn next_utc_midnight(ms: i64) -> i64 {
    let day = 86_400_000;
    (ms.div_euclid(day) + 1) * day
}
