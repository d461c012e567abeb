//! Request accounting for `/_sim/stats`: per account, by route and status,
//! 429 counts and the highest request count seen in any 1 s sliding window.

use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts for one account (or the `_unauthenticated` bucket).
#[derive(Default, Serialize, Clone, Debug)]
pub struct AccountStats {
    pub total: u64,
    /// "METHOD /matched/path" -> status -> count
    pub by_route: BTreeMap<String, BTreeMap<u16, u64>>,
    pub throttled_429: u64,
    /// Highest number of provider requests in any 1 s sliding window.
    pub max_rps_1s: u64,
    /// Provider-specific counters, e.g. SMSEagle status lookups per message id.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub lookups_by_id: BTreeMap<String, u64>,
    #[serde(skip)]
    window: VecDeque<Instant>,
}

#[derive(Default, Serialize, Clone, Debug)]
pub struct Totals {
    pub requests: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub throttled_429: u64,
}

#[derive(Default, Serialize, Clone, Debug)]
pub struct StatsSnapshot {
    pub accounts: BTreeMap<String, AccountStats>,
    pub totals: Totals,
}

#[derive(Default)]
struct Inner {
    accounts: BTreeMap<String, AccountStats>,
    totals: Totals,
}

/// Thread-safe stats store. One short mutex section per request.
#[derive(Default)]
pub struct Stats {
    inner: Mutex<Inner>,
    /// How many times [`Stats::reset`] ran, so provider-side counters can follow it.
    resets: AtomicU64,
}

pub const UNAUTHENTICATED: &str = "_unauthenticated";

impl Stats {
    pub fn record(&self, account: Option<&str>, route: &str, status: u16, metered: bool) {
        let now = Instant::now();
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.totals.requests += 1;
        *inner.totals.by_status.entry(status).or_default() += 1;
        if status == 429 {
            inner.totals.throttled_429 += 1;
        }
        let key = account.unwrap_or(UNAUTHENTICATED);
        let acct = match inner.accounts.get_mut(key) {
            Some(a) => a,
            None => inner.accounts.entry(key.to_string()).or_default(),
        };
        acct.total += 1;
        if status == 429 {
            acct.throttled_429 += 1;
        }
        match acct.by_route.get_mut(route) {
            Some(m) => *m.entry(status).or_default() += 1,
            None => {
                acct.by_route
                    .entry(route.to_string())
                    .or_default()
                    .insert(status, 1);
            }
        }
        if !metered {
            return;
        }
        acct.window.push_back(now);
        while let Some(front) = acct.window.front() {
            if now.duration_since(*front) >= Duration::from_secs(1) {
                acct.window.pop_front();
            } else {
                break;
            }
        }
        acct.max_rps_1s = acct.max_rps_1s.max(acct.window.len() as u64);
    }

    /// Count a lookup of one specific id (e.g. SMSEagle `id_from=id_to=N`).
    pub fn record_lookup(&self, account: &str, id: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            *inner
                .accounts
                .entry(account.to_string())
                .or_default()
                .lookups_by_id
                .entry(id.to_string())
                .or_default() += 1;
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        match self.inner.lock() {
            Ok(inner) => StatsSnapshot {
                accounts: inner.accounts.clone(),
                totals: inner.totals.clone(),
            },
            Err(_) => StatsSnapshot::default(),
        }
    }

    pub fn reset(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            *inner = Inner::default();
        }
        self.resets.fetch_add(1, Ordering::SeqCst);
    }

    /// The number of resets so far: a provider keeping counters of its own clears them when
    /// this differs from the value it last saw.
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::SeqCst)
    }
}

/// Sliding-window counter keyed by anything (account, page, client IP).
/// Only admitted requests are logged, so a client that keeps hammering a
/// throttled key regains access once its earlier admitted calls age out.
pub struct SlidingWindow {
    window: Duration,
    hits: Mutex<std::collections::HashMap<String, VecDeque<Instant>>>,
}

impl SlidingWindow {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            hits: Mutex::default(),
        }
    }

    /// Admit one request for `key` if fewer than `limit` were admitted in the
    /// window. On refusal returns the time until the oldest hit ages out.
    pub fn try_acquire(&self, key: &str, limit: f64) -> Result<(), Duration> {
        let now = Instant::now();
        let Ok(mut hits) = self.hits.lock() else {
            return Ok(());
        };
        let q = match hits.get_mut(key) {
            Some(q) => q,
            None => hits.entry(key.to_string()).or_default(),
        };
        while let Some(front) = q.front() {
            if now.duration_since(*front) >= self.window {
                q.pop_front();
            } else {
                break;
            }
        }
        if (q.len() as f64) < limit {
            q.push_back(now);
            Ok(())
        } else {
            let oldest = q.front().copied().unwrap_or(now);
            Err(self.window.saturating_sub(now.duration_since(oldest)))
        }
    }

    pub fn clear(&self) {
        if let Ok(mut hits) = self.hits.lock() {
            hits.clear();
        }
    }
}

/// The largest number of events per key seen in any sliding window of `window`
/// (counted over windows `(t - window, t]`, the same ageing as [`SlidingWindow`]).
/// Not locked: the owner keeps it behind its own mutex.
pub struct PeakWindow {
    window: Duration,
    /// key -> (event times still in the window, peak so far)
    keys: HashMap<String, (VecDeque<Instant>, u64)>,
}

impl PeakWindow {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            keys: HashMap::new(),
        }
    }

    /// Count one event for `key` now (read under the owner's lock, so times stay in order).
    pub fn record(&mut self, key: &str) {
        let now = Instant::now();
        let (q, peak) = match self.keys.get_mut(key) {
            Some(e) => e,
            None => self.keys.entry(key.to_string()).or_default(),
        };
        while let Some(front) = q.front() {
            if now.saturating_duration_since(*front) >= self.window {
                q.pop_front();
            } else {
                break;
            }
        }
        q.push_back(now);
        *peak = (*peak).max(q.len() as u64);
    }

    pub fn peaks(&self) -> BTreeMap<String, u64> {
        self.keys
            .iter()
            .map(|(k, (_, peak))| (k.clone(), *peak))
            .collect()
    }

    pub fn clear(&mut self) {
        self.keys.clear();
    }
}
