//! Fleet-wide flow control per account, shared by every worker process through PostgreSQL:
//! - pacing: each request reserves the account's next send slot (slots 1/rate apart), so
//!   any number of processes together stay under the provider's rate without retry storms;
//! - windows: at most N requests in any W seconds, per account and per named limit group
//!   (accounts that leave through one IP), from the send times the fleet recorded;
//! - waiting: a slot more than a moment away is waited for snoozed, without a worker slot
//!   (the job keeps its place under its concurrency key and sends when it runs again), so
//!   a few worker slots keep any number of accounts at their own rates;
//! - in-flight cap: the queue's concurrency key (one HTTP call per running or snoozed job);
//! - pauses: an account paused (daily quota spent, token rejected) parks its jobs until then.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::config::Window;

/// Slots are spaced for this share of the configured rate: request arrival jitters by a few
/// milliseconds, and a provider counting a sliding 1 s window must never see more than its limit.
pub const PACE_MARGIN: f64 = 0.96;
/// How late a paced request may leave after its slot: the spacing's margin lets a sliding
/// 1 s window take a send up to 1/PACE_MARGIN - 1 s (about 40 ms) late, and half of that
/// is kept for the provider's own jitter. A later request gives the slot up and takes a
/// new one, so a stalled process never fires two requests back to back.
const SLOT_LATE_SECS: f64 = 0.02;
const MAX_RESLOTS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("account paused until {until}: {reason}")]
    Paused {
        until: DateTime<Utc>,
        reason: String,
    },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

type PauseState = Option<(DateTime<Utc>, String)>;

/// Flow control as one worker process sees it. Holds that an unpaced account is not
/// paused, for a second (paced accounts read it with every slot reservation anyway).
#[derive(Default)]
pub struct Flow {
    pauses: Mutex<BTreeMap<String, (Instant, PauseState)>>,
}

/// What pacing decided for one request.
#[derive(Debug, PartialEq)]
pub enum Slot {
    /// Send now.
    Now,
    /// The request's reserved send time is too far off to wait for in a worker slot: the
    /// job waits snoozed until this time, [`WAKE_LEAD_SECS`] before its slot, and then for
    /// the rest in the worker slot, so it sends on time though claims take a moment.
    WakeAt(DateTime<Utc>),
}

/// A reserved send time closer than this is waited for in the worker slot: snoozing costs
/// two more round trips to the queue.
const SNOOZE_AFTER_SECS: f64 = 0.025;
/// A snoozed job is woken this long before its slot.
const WAKE_LEAD_SECS: f64 = 0.01;

impl Flow {
    /// Reserves this account's next request slot and room in each of its windows. A slot
    /// due within [`SNOOZE_AFTER_SECS`] is waited for here; for a later one the job is to
    /// wait without holding a worker slot. `woke_late` is set for a job that waited so (how
    /// long after its wake time it was claimed): its reserved slot is now, unless it woke
    /// too late to keep the spacing.
    /// `requests_per_second = 0` means unpaced: then only pauses and windows apply.
    pub async fn acquire(
        &self,
        pool: &PgPool,
        account: &str,
        requests_per_second: f64,
        windows: &[Window],
        woke_late: Option<Duration>,
    ) -> Result<Slot, FlowError> {
        let paced = requests_per_second > 0.0;
        let interval = paced.then(|| 1.0 / (requests_per_second * PACE_MARGIN));
        let tolerance = interval
            .map(|i| (i / 2.0).min(SLOT_LATE_SECS))
            .into_iter()
            .chain(windows.iter().map(window_tolerance))
            .fold(f64::INFINITY, f64::min);
        if let Some(woke) = woke_late {
            // The reserved slot, in seconds from `woken` (negative: it has passed).
            let woken = Instant::now();
            let slot_in = WAKE_LEAD_SECS - woke.as_secs_f64();
            if slot_in >= -tolerance {
                match paced {
                    true => check_pause(pool, account).await?,
                    false => self.check_cached(pool, account).await?,
                }
                if let Ok(rest) = Duration::try_from_secs_f64(slot_in) {
                    tokio::time::sleep_until((woken + rest).into()).await;
                }
                // A stalled process gives the slot up rather than send into the next one.
                if woken.elapsed().as_secs_f64() - slot_in <= tolerance {
                    return Ok(Slot::Now);
                }
            }
        }
        for attempt in 0..=MAX_RESLOTS {
            let mut slot = match interval {
                // None: not registered yet, so unpaced until it is (windows still apply).
                Some(interval) => reserve_slot(pool, account, interval).await?,
                None => {
                    self.check_cached(pool, account).await?;
                    None
                }
            };
            if let Some(w) = reserve_windows(pool, windows, slot.map(|s| s.at)).await? {
                slot = Some(w);
            }
            let Some(slot) = slot else {
                return Ok(Slot::Now);
            };
            let wait = (slot.at - slot.now).to_std().unwrap_or_default();
            if wait.as_secs_f64() > SNOOZE_AFTER_SECS {
                let lead = chrono::Duration::milliseconds((WAKE_LEAD_SECS * 1000.0) as i64);
                return Ok(Slot::WakeAt(slot.at - lead));
            }
            let at = Instant::now() + wait;
            tokio::time::sleep_until(at.into()).await;
            // A send much later than its slot would crowd the next one (and make a window
            // look emptier than it is): take a new slot.
            let late = Instant::now().saturating_duration_since(at).as_secs_f64();
            if late <= tolerance || attempt == MAX_RESLOTS {
                return Ok(Slot::Now);
            }
        }
        Ok(Slot::Now)
    }

    async fn check_cached(&self, pool: &PgPool, account: &str) -> Result<(), FlowError> {
        // Only "not paused" is served from the cache: parking a job on a pause that was
        // lifted a moment ago would hold it back after the resume woke the others.
        let cached = self.pauses.lock().ok().and_then(|m| {
            m.get(account)
                .filter(|(at, p)| p.is_none() && at.elapsed() < Duration::from_secs(1))
                .map(|(_, p)| p.clone())
        });
        let pause = match cached {
            Some(p) => p,
            None => {
                let p = match check_pause(pool, account).await {
                    Ok(()) => None,
                    Err(FlowError::Paused { until, reason }) => Some((until, reason)),
                    Err(e) => return Err(e),
                };
                if let Ok(mut m) = self.pauses.lock() {
                    m.insert(account.to_string(), (Instant::now(), p.clone()));
                }
                p
            }
        };
        match pause {
            Some((until, reason)) if until > Utc::now() => Err(FlowError::Paused { until, reason }),
            _ => Ok(()),
        }
    }

    /// Parks every job of the account until `until`, with the reason `threadsync status` shows.
    pub async fn pause(
        &self,
        pool: &PgPool,
        account: &str,
        until: DateTime<Utc>,
        reason: &str,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE threadsync.accounts
                SET paused_until = greatest(coalesce(paused_until, $2), $2), pause_reason = $3, updated_at = now()
              WHERE id = $1",
        )
        .bind(account)
        .bind(until)
        .bind(reason)
        .execute(pool)
        .await?;
        if let Ok(mut m) = self.pauses.lock() {
            m.remove(account);
        }
        Ok(())
    }
}

/// Usage of the provider's budget above which pacing slows down.
const SLOW_FROM: f64 = 0.8;

/// The rate to pace at when the provider reports `usage` (0..=1) of the account's budget
/// spent: the configured rate up to [`SLOW_FROM`], then falling linearly to a twentieth of
/// it at 100%, so the budget lasts until the provider's window moves on. Unknown usage is
/// not headroom, but not a reason to slow down either.
pub fn slowed(requests_per_second: f64, usage: Option<f64>) -> f64 {
    match usage {
        Some(u) if u > SLOW_FROM && requests_per_second > 0.0 => {
            requests_per_second * ((1.0 - u) / (1.0 - SLOW_FROM)).clamp(0.05, 1.0)
        }
        _ => requests_per_second,
    }
}

/// How long an operator's pause lasts: until resumed.
pub const OPERATOR_PAUSE_DAYS: i64 = 36_500;

/// An operator pauses an account: its jobs park without using attempts until it resumes.
/// Returns false for an unknown account.
pub async fn pause_by_operator(pool: &PgPool, account: &str, reason: &str) -> sqlx::Result<bool> {
    let n = sqlx::query(
        "UPDATE threadsync.accounts
            SET paused_until = now() + make_interval(days => $2), pause_reason = $3, updated_at = now()
          WHERE id = $1",
    )
    .bind(account)
    .bind(OPERATOR_PAUSE_DAYS as i32)
    .bind(reason)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// The start of the reason a job parked by its account's pause carries.
pub fn parked_prefix(account: &str) -> String {
    format!("account {account} paused: ")
}

/// Ends any pause of the account (an operator's, a quota's, a refused token's) and brings
/// its parked jobs back to now. Returns false for an unknown account.
pub async fn resume(pool: &PgPool, account: &str) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let found = sqlx::query(
        "UPDATE threadsync.accounts SET paused_until = NULL, pause_reason = NULL, updated_at = now()
          WHERE id = $1",
    )
    .bind(account)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if found == 0 {
        return Ok(false);
    }
    // Parked jobs say why they wait: that is how they are found.
    let prefix = parked_prefix(account);
    sqlx::query(
        "UPDATE threadsync.jobs SET run_at = now()
          WHERE status = 'pending' AND payload->>'account' = $1 AND run_at > now()
            AND left(last_error, length($2)) = $2",
    )
    .bind(account)
    .bind(&prefix)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// A reserved send time, and the database's clock when it was reserved.
#[derive(Clone, Copy)]
struct Reserved {
    at: DateTime<Utc>,
    now: DateTime<Utc>,
}

/// Reserves the account's next send slot (slots `interval` seconds apart, shared by the
/// fleet), unless the account is paused. None: the account has no flow row yet (it is
/// created, and this request goes unpaced).
async fn reserve_slot(
    pool: &PgPool,
    account: &str,
    interval: f64,
) -> Result<Option<Reserved>, FlowError> {
    let row: Option<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "UPDATE threadsync.flow f
            SET next_slot = greatest(f.next_slot, clock_timestamp()) + make_interval(secs => $2)
          WHERE f.account_id = $1
            AND NOT EXISTS (SELECT 1 FROM threadsync.accounts a WHERE a.id = $1 AND a.paused_until > now())
      RETURNING f.next_slot - make_interval(secs => $2), clock_timestamp()",
    )
    .bind(account)
    .bind(interval)
    .fetch_optional(pool)
    .await?;
    if let Some((at, now)) = row {
        return Ok(Some(Reserved { at, now }));
    }
    check_pause(pool, account).await?;
    sqlx::query("INSERT INTO threadsync.flow (account_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(account)
        .execute(pool)
        .await?;
    Ok(None)
}

/// Extra seconds a window's sends are spaced by, of the window's length, beyond a fixed
/// part: a request leaves a few milliseconds after its slot and the provider counts its
/// arrival.
const WINDOW_MARGIN: f64 = 0.02;
const WINDOW_PAD_SECS: f64 = 0.1;

fn window_pad(w: &Window) -> f64 {
    f64::from(w.secs) * (1.0 + WINDOW_MARGIN) + WINDOW_PAD_SECS
}

/// How late a send may leave after the time it recorded in the window.
fn window_tolerance(w: &Window) -> f64 {
    (window_pad(w) - f64::from(w.secs)) / 2.0
}

/// Reserves room in every window, counting this request in each: the send time is the
/// earliest at or after `not_before` at which each window's N-th latest send is a whole
/// window (and a margin) old, and never before a send already recorded, so each window's
/// times stay in order. The rows are locked in key order, so accounts sharing a group never
/// deadlock. None when there are no windows.
async fn reserve_windows(
    pool: &PgPool,
    windows: &[Window],
    not_before: Option<DateTime<Utc>>,
) -> Result<Option<Reserved>, FlowError> {
    if windows.is_empty() {
        return Ok(None);
    }
    let mut windows: Vec<&Window> = windows.iter().collect();
    windows.sort_by(|a, b| a.key.cmp(&b.key));
    let keys: Vec<String> = windows.iter().map(|w| w.key.clone()).collect();
    let room = |w: &Window| chrono::Duration::milliseconds((window_pad(w) * 1000.0) as i64);
    let mut tx = pool.begin().await?;
    let mut rows: Vec<(String, Vec<DateTime<Utc>>, DateTime<Utc>)> = Vec::new();
    for first_use in [false, true] {
        if first_use {
            sqlx::query(
                "INSERT INTO threadsync.limit_windows (key) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
            )
            .bind(&keys)
            .execute(&mut *tx)
            .await?;
        }
        rows = sqlx::query_as(
            "SELECT key, sends, clock_timestamp() FROM threadsync.limit_windows
              WHERE key = ANY($1) ORDER BY key FOR UPDATE",
        )
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?;
        if rows.len() == keys.len() {
            break;
        }
    }
    let now = rows.first().map_or_else(Utc::now, |r| r.2);
    // Both are in key order, one row per key.
    let held: Vec<(&Window, &Vec<DateTime<Utc>>)> = windows
        .iter()
        .copied()
        .zip(rows.iter().map(|r| &r.1))
        .collect();
    let mut slot = not_before.map_or(now, |t| t.max(now));
    for (w, sends) in &held {
        if let Some(last) = sends.last() {
            slot = slot.max(*last);
        }
        let n = w.requests as usize;
        if sends.len() >= n {
            slot = slot.max(sends[sends.len() - n] + room(w));
        }
    }
    // Sends older than a window constrain nothing: keep the rest and this one, at most N.
    let lists: Vec<String> = held
        .iter()
        .map(|(w, sends)| {
            let mut kept: Vec<DateTime<Utc>> = sends
                .iter()
                .copied()
                .filter(|t| *t > now - room(w))
                .collect();
            kept.push(slot);
            let from = kept.len().saturating_sub(w.requests as usize);
            let literal: Vec<String> = kept[from..].iter().map(|t| t.to_rfc3339()).collect();
            format!("{{{}}}", literal.join(","))
        })
        .collect();
    sqlx::query(
        "UPDATE threadsync.limit_windows w SET sends = u.sends::timestamptz[]
           FROM unnest($1::text[], $2::text[]) AS u(key, sends) WHERE w.key = u.key",
    )
    .bind(&keys)
    .bind(&lists)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(Reserved { at: slot, now }))
}

async fn check_pause(pool: &PgPool, account: &str) -> Result<(), FlowError> {
    let row: Option<(DateTime<Utc>, Option<String>)> = sqlx::query_as(
        "SELECT paused_until, pause_reason FROM threadsync.accounts WHERE id = $1 AND paused_until > now()",
    )
    .bind(account)
    .fetch_optional(pool)
    .await?;
    match row {
        Some((until, reason)) => Err(FlowError::Paused {
            until,
            reason: reason.unwrap_or_default(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::slowed;

    #[test]
    fn pacing_slows_as_the_budget_nears_its_end() {
        assert_eq!(slowed(2.0, None), 2.0);
        assert_eq!(slowed(2.0, Some(0.5)), 2.0);
        assert!((slowed(2.0, Some(0.9)) - 1.0).abs() < 1e-9);
        assert!((slowed(2.0, Some(0.95)) - 0.5).abs() < 1e-9);
        assert!((slowed(2.0, Some(1.0)) - 0.1).abs() < 1e-9);
        assert_eq!(slowed(0.0, Some(0.99)), 0.0, "unpaced stays unpaced");
    }
}
