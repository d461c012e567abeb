//! Sync runs: registering accounts, starting a run (one per account at a time), deciding
//! when a run is finished (after every job end, and from every worker's maintenance loop,
//! so no run stays open), retrying a failed run, and reading its status.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use crate::config::AccountConfig;
use crate::queue::{enqueue, NewJob};

use super::keys::START_KIND;
use super::vocab::Shape;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    serde::Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Walk every list and every changed thread: what an admin asks for.
    Full,
    /// Only what changed since the last completed run.
    Incremental,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Incremental => "incremental",
        }
    }
}

/// Copies the configured accounts (and their limits) into the database, so SQL callers and
/// every worker agree on them.
pub async fn register_accounts(pool: &PgPool, accounts: &[AccountConfig]) -> sqlx::Result<()> {
    for a in accounts {
        sqlx::query(
            "INSERT INTO threadsync.accounts (id, provider, max_in_flight, fetches_threads, address)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET provider = excluded.provider, max_in_flight = excluded.max_in_flight,
                                            fetches_threads = excluded.fetches_threads, address = excluded.address,
                                            updated_at = now()",
        )
        .bind(&a.id)
        .bind(a.provider)
        .bind(a.max_in_flight)
        .bind(a.shape == Shape::Threads)
        .bind(a.settings.address())
        .execute(pool)
        .await?;
        sqlx::query("INSERT INTO threadsync.flow (account_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(&a.id)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Starts a run unless one is already active for the account. Returns the run id and
/// whether it is new. The planning job commits with the run row.
pub async fn start_run(
    conn: &mut PgConnection,
    account: &str,
    mode: Mode,
) -> sqlx::Result<(i64, bool)> {
    let created: Option<i64> = sqlx::query_scalar(
        "INSERT INTO threadsync.sync_runs (account_id, mode) VALUES ($1, $2)
         ON CONFLICT (account_id) WHERE state IN ('running', 'catching_up') DO NOTHING RETURNING id",
    )
    .bind(account)
    .bind(mode.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = created {
        let job = NewJob::new(
            START_KIND,
            json!({"account": account, "mode": mode, "run_id": id}),
        )
        .priority(20)
        .run(id);
        enqueue(&mut *conn, &job).await?;
        return Ok((id, true));
    }
    let running: i64 = sqlx::query_scalar(
        "SELECT id FROM threadsync.sync_runs WHERE account_id = $1 AND state IN ('running', 'catching_up')",
    )
    .bind(account)
    .fetch_one(&mut *conn)
    .await?;
    Ok((running, false))
}

/// What asking for a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Requested {
    /// A new run.
    Started { run_id: i64 },
    /// A run of the account was already active and covers what was asked.
    Active { run_id: i64 },
    /// A full resync was asked while an incremental run is active: it starts when that
    /// run ends.
    Queued { after_run: i64 },
}

/// What an operator's request for a run does: starts one, finds the active one, or (a full
/// resync while an incremental run is active) queues the full one behind it.
pub async fn request_run(
    conn: &mut PgConnection,
    account: &str,
    mode: Mode,
) -> sqlx::Result<Requested> {
    let (id, created) = start_run(&mut *conn, account, mode).await?;
    if created {
        return Ok(Requested::Started { run_id: id });
    }
    let active: String = sqlx::query_scalar("SELECT mode FROM threadsync.sync_runs WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    if mode == Mode::Full && active == Mode::Incremental.as_str() {
        sqlx::query(
            "UPDATE threadsync.accounts SET queued_mode = 'full', updated_at = now() WHERE id = $1",
        )
        .bind(account)
        .execute(&mut *conn)
        .await?;
        return Ok(Requested::Queued { after_run: id });
    }
    Ok(Requested::Active { run_id: id })
}

/// What finishing a run's current phase should do next.
pub enum Phase {
    /// Jobs of the run are still pending or running.
    Busy,
    /// The main pass just ended and the catch-up pass was enqueued.
    CatchUp,
    /// The run is over.
    Finished,
}

/// What the catch-up pass is planned from.
#[derive(Debug, Clone)]
pub struct MainPass {
    pub started_at: DateTime<Utc>,
    /// The main pass walked whole lists (a full run, or the first incremental one), not
    /// only what changed since the last run.
    pub walked_whole_lists: bool,
    /// The lists the main pass read a page of beyond the head.
    pub paged: Vec<String>,
}

/// Called after each run job commits: the last job to finish moves the run on. Cheap when
/// other jobs remain (one index probe); the run row is locked only at the very end.
/// `catch_up` plans the pass after the main one; with `reconcile`, a complete run that
/// walked whole lists marks the threads it did not meet as deleted.
pub async fn advance_if_idle(
    pool: &PgPool,
    run_id: i64,
    reconcile: bool,
    catch_up: impl FnOnce(&MainPass) -> Vec<NewJob>,
) -> sqlx::Result<Phase> {
    if active_jobs(pool, run_id).await? {
        return Ok(Phase::Busy);
    }
    let mut tx = pool.begin().await?;
    // The same rule as the planner's: an incremental run without a watermark walks
    // whole lists. The watermark only moves when a run of this account finishes, and
    // there is one run per account at a time.
    let row: Option<(String, String, DateTime<Utc>, bool)> = sqlx::query_as(
        "SELECT r.state, r.account_id, r.started_at,
                r.mode = 'full' OR a.synced_from IS NULL
           FROM threadsync.sync_runs r JOIN threadsync.accounts a ON a.id = r.account_id
          WHERE r.id = $1 FOR UPDATE OF r",
    )
    .bind(run_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((state, account, started_at, walked_whole_lists)) = row else {
        return Ok(Phase::Busy);
    };
    if active_jobs(&mut *tx, run_id).await? {
        return Ok(Phase::Busy);
    }
    match state.as_str() {
        "running" => {
            sqlx::query("UPDATE threadsync.sync_runs SET state = 'catching_up' WHERE id = $1")
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
            // List pages carry a cursor or an offset beyond the first page.
            let paged: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT payload->>'list' FROM threadsync.jobs
                  WHERE run_id = $1 AND kind LIKE '%.list_page'
                    AND (payload->>'cursor' IS NOT NULL OR coalesce((payload->>'offset')::bigint, 0) > 0)",
            )
            .bind(run_id)
            .fetch_all(&mut *tx)
            .await?;
            let main = MainPass {
                started_at,
                walked_whole_lists,
                paged,
            };
            crate::queue::enqueue_batch(&mut *tx, &catch_up(&main)).await?;
            tx.commit().await?;
            Ok(Phase::CatchUp)
        }
        "catching_up" => {
            // A cancelled job did not do its part either.
            let failed: Option<String> = sqlx::query_scalar(
                "SELECT kind || ' job ' || id || ' ' || status || ': ' || coalesce(last_error, '?') FROM threadsync.jobs
                  WHERE run_id = $1 AND status IN ('failed', 'cancelled') ORDER BY id LIMIT 1",
            )
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE threadsync.sync_runs SET state = $2, finished_at = now(), last_error = $3 WHERE id = $1",
            )
            .bind(run_id)
            .bind(if failed.is_some() { "failed" } else { "done" })
            .bind(&failed)
            .execute(&mut *tx)
            .await?;
            if failed.is_none() {
                // Only a complete run moves the watermark, and only to its start: whatever
                // changed while it ran is looked at again next time.
                sqlx::query(
                    "UPDATE threadsync.accounts SET synced_from = $2, updated_at = now() WHERE id = $1",
                )
                .bind(&account)
                .bind(started_at)
                .execute(&mut *tx)
                .await?;
                if reconcile && walked_whole_lists {
                    let gone =
                        super::store::reconcile_deleted(&mut tx, &account, started_at).await?;
                    let counted = super::store::Progress {
                        threads_deleted: i32::try_from(gone).unwrap_or(i32::MAX),
                        ..Default::default()
                    };
                    super::store::add_progress(&mut tx, Some(run_id), None, &counted).await?;
                }
            }
            // A run asked for while this one was active starts now.
            let queued: Option<String> = sqlx::query_scalar(
                "UPDATE threadsync.accounts a SET queued_mode = NULL FROM threadsync.accounts old
                  WHERE a.id = $1 AND old.id = a.id AND old.queued_mode IS NOT NULL RETURNING old.queued_mode",
            )
            .bind(&account)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(mode) = queued {
                let mode = if mode == Mode::Full.as_str() {
                    Mode::Full
                } else {
                    Mode::Incremental
                };
                start_run(&mut tx, &account, mode).await?;
            }
            tx.commit().await?;
            Ok(Phase::Finished)
        }
        _ => Ok(Phase::Busy),
    }
}

async fn active_jobs<'c>(db: impl sqlx::PgExecutor<'c>, run_id: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM threadsync.jobs WHERE run_id = $1 AND status IN ('pending', 'running'))",
    )
    .bind(run_id)
    .fetch_one(db)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RunStatus {
    pub run_id: i64,
    pub account_id: String,
    pub mode: String,
    pub state: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub pages_listed: i64,
    pub threads_seen: i64,
    pub threads_fetched: i64,
    pub threads_skipped: i64,
    pub threads_deleted: i64,
    pub messages_written: i64,
    pub http_calls: i64,
    /// Delivery-status checks made for messages this run found, statuses they saw
    /// change, and messages whose following ended with a final status or expired.
    pub checks_made: i64,
    pub statuses_changed: i64,
    pub settled: i64,
    pub expired: i64,
    /// Provider rows skipped as undecodable, and why the first was.
    pub bad_rows: i64,
    pub first_bad_row: Option<String>,
    /// Streams (SMS folders): messages written per stream.
    #[schema(value_type = Object)]
    pub messages_by_stream: sqlx::types::Json<std::collections::BTreeMap<String, i64>>,
    /// Jobs of the run still pending or running.
    #[sqlx(default)]
    pub jobs_active: i64,
    #[sqlx(default)]
    pub jobs_failed: i64,
}

pub async fn run_status(pool: &PgPool, run_id: i64) -> sqlx::Result<Option<RunStatus>> {
    let mut s: Option<RunStatus> =
        sqlx::query_as("SELECT * FROM threadsync.sync_run_totals WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(pool)
            .await?;
    if let Some(s) = s.as_mut() {
        // Two counts, each within one partial index (jobs_run_active, jobs_run_failed): one
        // count over all three statuses matches neither and scans the jobs table.
        let (active, failed): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM threadsync.jobs WHERE run_id = $1 AND status IN ('pending', 'running')),
                    (SELECT count(*) FROM threadsync.jobs WHERE run_id = $1 AND status = 'failed')",
        )
        .bind(run_id)
        .fetch_one(pool)
        .await?;
        s.jobs_active = active;
        s.jobs_failed = failed;
    }
    Ok(s)
}

pub async fn latest_run(pool: &PgPool, account: &str) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar("SELECT max(id) FROM threadsync.sync_runs WHERE account_id = $1")
        .bind(account)
        .fetch_one(pool)
        .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AccountStatus {
    pub id: String,
    pub provider: String,
    pub paused_until: Option<DateTime<Utc>>,
    pub pause_reason: Option<String>,
    pub synced_from: Option<DateTime<Utc>>,
    pub threads: i64,
    pub messages: i64,
}

pub async fn account_status(pool: &PgPool, account: &str) -> sqlx::Result<Option<AccountStatus>> {
    sqlx::query_as(
        "SELECT a.id, a.provider, a.paused_until, a.pause_reason, a.synced_from,
                (SELECT count(*) FROM threadsync.threads t WHERE t.account_id = a.id AND t.deleted_at IS NULL) AS threads,
                (SELECT count(*) FROM threadsync.messages m WHERE m.account_id = a.id) AS messages
           FROM threadsync.accounts a WHERE a.id = $1",
    )
    .bind(account)
    .fetch_optional(pool)
    .await
}

/// Open runs with no job left to end them: their last job's end hook never ran (its
/// worker died between commit and hook), or their jobs were cancelled or reaped.
pub async fn idle_open_runs(pool: &PgPool) -> sqlx::Result<Vec<(i64, String)>> {
    sqlx::query_as(
        "SELECT r.id, r.account_id FROM threadsync.sync_runs r
          WHERE r.state IN ('running', 'catching_up')
            AND NOT EXISTS (SELECT 1 FROM threadsync.jobs j
                             WHERE j.run_id = r.id AND j.status IN ('pending', 'running'))",
    )
    .fetch_all(pool)
    .await
}

/// Puts every failed or cancelled job of a run back to pending (attempts reset) and
/// reopens the run, which then ends `done` once they succeed. Returns how many jobs.
pub async fn retry_run(pool: &PgPool, run_id: i64) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT state, account_id FROM threadsync.sync_runs WHERE id = $1 FOR UPDATE",
    )
    .bind(run_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((state, account)) = row else {
        anyhow::bail!("no sync run {run_id}");
    };
    let retried = sqlx::query(
        "UPDATE threadsync.jobs SET status = 'pending', attempts = 0, run_at = now(), finished_at = NULL,
                lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
          WHERE run_id = $1 AND status IN ('failed', 'cancelled')",
    )
    .bind(run_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if retried == 0 {
        anyhow::bail!("run {run_id} ({state}) has no failed or cancelled jobs to retry");
    }
    if state == "failed" {
        // Back to the phase that decides the outcome: done once the retried jobs succeed.
        let reopened = sqlx::query(
            "UPDATE threadsync.sync_runs SET state = 'catching_up', finished_at = NULL, last_error = NULL
              WHERE id = $1",
        )
        .bind(run_id)
        .execute(&mut *tx)
        .await;
        if let Err(e) = reopened {
            if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("23505") {
                anyhow::bail!(
                    "account {account} has another run open; retry run {run_id} after it ends"
                );
            }
            return Err(e.into());
        }
    }
    tx.commit().await?;
    Ok(retried)
}

/// Coalesces the "has this run ended?" check that follows every job of a run. At most one
/// check per run is under way in this worker; a job ending meanwhile asks that one to check
/// once more, `RECHECK` later. So the last job's end is always followed by a check that
/// sees it, while a busy run costs a few checks a second instead of one per job.
#[derive(Default)]
pub struct RunEnds {
    /// Runs being checked here, and whether another job ended since the check began.
    checking: Mutex<HashMap<i64, bool>>,
}

const RECHECK: std::time::Duration = std::time::Duration::from_millis(20);

impl RunEnds {
    pub async fn settle<F, Fut>(&self, run_id: i64, check: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ()>,
    {
        {
            let mut checking = crate::worker::lock(&self.checking);
            if let Some(again) = checking.get_mut(&run_id) {
                *again = true;
                return;
            }
            checking.insert(run_id, false);
        }
        loop {
            check().await;
            tokio::time::sleep(RECHECK).await;
            let mut checking = crate::worker::lock(&self.checking);
            match checking.get_mut(&run_id) {
                Some(again) if *again => *again = false,
                _ => {
                    checking.remove(&run_id);
                    return;
                }
            }
        }
    }
}

/// An account as operators see it: its pause, watermark and last run.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AccountRow {
    pub id: String,
    pub provider: String,
    pub paused_until: Option<DateTime<Utc>>,
    pub pause_reason: Option<String>,
    pub synced_from: Option<DateTime<Utc>>,
    /// A run asked for while another was active, which starts when that one ends.
    pub queued_mode: Option<String>,
    pub last_run_id: Option<i64>,
    pub last_run_mode: Option<String>,
    pub last_run_state: Option<String>,
    pub last_run_started_at: Option<DateTime<Utc>>,
    pub last_run_finished_at: Option<DateTime<Utc>>,
}

/// Every registered account, or one.
pub async fn accounts(pool: &PgPool, id: Option<&str>) -> sqlx::Result<Vec<AccountRow>> {
    sqlx::query_as(
        "SELECT a.id, a.provider, a.paused_until, a.pause_reason, a.synced_from, a.queued_mode,
                r.id AS last_run_id, r.mode AS last_run_mode, r.state AS last_run_state,
                r.started_at AS last_run_started_at, r.finished_at AS last_run_finished_at
           FROM threadsync.accounts a
           LEFT JOIN LATERAL (SELECT * FROM threadsync.sync_runs s WHERE s.account_id = a.id
                               ORDER BY s.id DESC LIMIT 1) r ON true
          WHERE $1::text IS NULL OR a.id = $1
          ORDER BY a.id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}

/// An account's newest `limit` runs with their counters, newest first. The run ids are
/// picked first, so only those runs' progress rows are summed, however long the history.
/// `jobs_active` and `jobs_failed` are left at zero (`run_status` counts them for one run).
pub async fn recent_runs(pool: &PgPool, account: &str, limit: i64) -> sqlx::Result<Vec<RunStatus>> {
    sqlx::query_as(
        "SELECT * FROM threadsync.sync_run_totals
          WHERE run_id = ANY (ARRAY(SELECT id FROM threadsync.sync_runs WHERE account_id = $1
                                     ORDER BY id DESC LIMIT $2))
          ORDER BY run_id DESC",
    )
    .bind(account)
    .bind(limit)
    .fetch_all(pool)
    .await
}
