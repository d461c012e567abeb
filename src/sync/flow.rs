//! Fleet-wide flow control per account, shared by every worker process through PostgreSQL:
//! - pacing: each request reserves the account's next send slot (slots 1/rate apart), so
//!   any number of processes together stay under the provider's rate without retry storms;
//! - windows: at most N requests in any W seconds, per account and per named limit group
//!   (accounts that leave through one IP), from the send times the fleet recorded;
//! - in-flight cap: the queue's concurrency key (one HTTP call per running job);
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
/// A request that wakes later than half a slot after its reserved time gives the slot up
/// and takes a new one, so a stalled process never fires two requests back to back.
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

impl Flow {
    /// Waits for this account's next request slot, then for room in each of its windows.
    /// `requests_per_second = 0` means unpaced: then only pauses and windows apply.
    pub async fn acquire(
        &self,
        pool: &PgPool,
        account: &str,
        requests_per_second: f64,
        windows: &[Window],
    ) -> Result<(), FlowError> {
        if requests_per_second <= 0.0 {
            self.check_cached(pool, account).await?;
        } else {
            reserve_slot(pool, account, requests_per_second).await?;
        }
        reserve_windows(pool, windows).await
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

/// Reserves the account's next send slot (slots 1/rate apart, shared by the fleet) and
/// waits for it, unless the account is paused.
async fn reserve_slot(
    pool: &PgPool,
    account: &str,
    requests_per_second: f64,
) -> Result<(), FlowError> {
    let interval = 1.0 / (requests_per_second * PACE_MARGIN);
    for attempt in 0..=MAX_RESLOTS {
        let wait: Option<f64> = sqlx::query_scalar(
            "UPDATE threadsync.flow f
                SET next_slot = greatest(f.next_slot, clock_timestamp()) + make_interval(secs => $2)
              WHERE f.account_id = $1
                AND NOT EXISTS (SELECT 1 FROM threadsync.accounts a WHERE a.id = $1 AND a.paused_until > now())
          RETURNING extract(epoch FROM f.next_slot - make_interval(secs => $2) - clock_timestamp())::float8",
        )
        .bind(account)
        .bind(interval)
        .fetch_optional(pool)
        .await?;
        let Some(wait) = wait else {
            check_pause(pool, account).await?;
            // Not paused: the flow row is missing (accounts not registered yet). Create it.
            sqlx::query(
                "INSERT INTO threadsync.flow (account_id) VALUES ($1) ON CONFLICT DO NOTHING",
            )
            .bind(account)
            .execute(pool)
            .await?;
            return Ok(());
        };
        let slot = Instant::now() + Duration::from_secs_f64(wait.max(0.0));
        tokio::time::sleep_until(slot.into()).await;
        let late = Instant::now().saturating_duration_since(slot).as_secs_f64();
        if late <= interval / 2.0 || attempt == MAX_RESLOTS {
            return Ok(());
        }
    }
    Ok(())
}

/// Extra seconds a window's sends are spaced by, of the window's length, beyond a fixed
/// part: a request leaves a few milliseconds after its slot and the provider counts its
/// arrival.
const WINDOW_MARGIN: f64 = 0.02;
const WINDOW_PAD_SECS: f64 = 0.1;

/// Waits until every window has room, counting this request in each: the send time is the
/// earliest at which each window's N-th latest send is a whole window (and a margin) old,
/// and never before a send already recorded, so each window's times stay in order. The
/// rows are locked in key order, so accounts sharing a group never deadlock.
async fn reserve_windows(pool: &PgPool, windows: &[Window]) -> Result<(), FlowError> {
    if windows.is_empty() {
        return Ok(());
    }
    let mut windows: Vec<&Window> = windows.iter().collect();
    windows.sort_by(|a, b| a.key.cmp(&b.key));
    let keys: Vec<String> = windows.iter().map(|w| w.key.clone()).collect();
    let pad = |w: &Window| f64::from(w.secs) * (1.0 + WINDOW_MARGIN) + WINDOW_PAD_SECS;
    let tolerance = windows
        .iter()
        .map(|w| (pad(w) - f64::from(w.secs)) / 2.0)
        .fold(f64::INFINITY, f64::min);
    let room = |w: &Window| chrono::Duration::milliseconds((pad(w) * 1000.0) as i64);
    for attempt in 0..=MAX_RESLOTS {
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
        let mut slot = now;
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
        let wait = (slot - now).to_std().unwrap_or_default();
        let at = Instant::now() + wait;
        tokio::time::sleep_until(at.into()).await;
        let late = Instant::now().saturating_duration_since(at).as_secs_f64();
        // A send much later than the time it recorded would make its window look emptier
        // than it is: record a new time (the stale one only makes the window stricter).
        if late <= tolerance || attempt == MAX_RESLOTS {
            return Ok(());
        }
    }
    Ok(())
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
