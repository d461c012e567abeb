//! Operator commands: list, show, retry, cancel.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub status: String,
    pub priority: i32,
    pub attempts: i32,
    pub max_attempts: Option<i32>,
    pub run_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub dedupe_key: Option<String>,
    pub concurrency_key: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub run_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    #[schema(value_type = Object)]
    pub payload: Value,
    #[schema(value_type = Option<Object>)]
    pub checkpoint: Option<Value>,
}

macro_rules! columns {
    () => {
        "id, kind, status, priority, attempts, max_attempts, run_at, last_error, dedupe_key,
         concurrency_key, lease_owner, lease_expires_at, run_id, created_at, started_at,
         finished_at, payload, checkpoint"
    };
}

pub const STATUSES: [&str; 5] = ["pending", "running", "done", "failed", "cancelled"];

/// Which jobs a listing shows; every field narrows it.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub status: Option<String>,
    pub kind: Option<String>,
    pub run_id: Option<i64>,
    /// JSON the payload must contain (`payload @> match`).
    pub payload: Option<Value>,
    /// Keyset pagination: only ids below this one.
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// Jobs matching `f`, newest first.
pub async fn list(pool: &PgPool, f: &Filter) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM threadsync.jobs
          WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR kind = $2)
            AND ($3::bigint IS NULL OR run_id = $3) AND ($4::jsonb IS NULL OR payload @> $4)
            AND ($5::bigint IS NULL OR id < $5)
          ORDER BY id DESC LIMIT $6"
    ))
    .bind(&f.status)
    .bind(&f.kind)
    .bind(f.run_id)
    .bind(&f.payload)
    .bind(f.before_id)
    .bind(f.limit)
    .fetch_all(pool)
    .await
}

/// Jobs by kind and status, and the age of the oldest due pending job: the queue's health.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Depth {
    pub by_kind: Vec<KindDepth>,
    pub oldest_pending_secs: Option<f64>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct KindDepth {
    pub kind: String,
    pub status: String,
    pub jobs: i64,
}

pub async fn depth(pool: &PgPool) -> sqlx::Result<Depth> {
    let by_kind = sqlx::query_as(
        "SELECT kind, status, count(*) AS jobs FROM threadsync.jobs GROUP BY kind, status ORDER BY kind, status",
    )
    .fetch_all(pool)
    .await?;
    let oldest_pending_secs = sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - min(run_at))::float8 FROM threadsync.jobs
          WHERE status = 'pending' AND run_at <= now()",
    )
    .fetch_one(pool)
    .await?;
    Ok(Depth {
        by_kind,
        oldest_pending_secs,
    })
}

pub async fn show(pool: &PgPool, id: i64) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM threadsync.jobs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Puts a failed or cancelled job back to pending with fresh attempts.
pub async fn retry(pool: &PgPool, id: i64) -> anyhow::Result<()> {
    let r = sqlx::query(
        "UPDATE threadsync.jobs SET status = 'pending', attempts = 0, run_at = now(), finished_at = NULL
          WHERE id = $1 AND status IN ('failed', 'cancelled')",
    )
    .bind(id)
    .execute(pool)
    .await;
    match r {
        Ok(r) if r.rows_affected() == 1 => Ok(()),
        Ok(_) => Err(state_error(pool, id, "retry", "failed or cancelled").await),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            anyhow::bail!(
                "job {id}: another job with the same dedupe key is already pending or running"
            )
        }
        Err(e) => Err(e.into()),
    }
}

/// Cancels a pending or running job. A running handler's commit is then rejected by the fence.
pub async fn cancel(pool: &PgPool, id: i64) -> anyhow::Result<()> {
    let r = sqlx::query(
        "UPDATE threadsync.jobs
            SET status = 'cancelled', finished_at = now(), last_error = coalesce(last_error, 'cancelled by operator'),
                lease_token = NULL, lease_expires_at = NULL, holds_key = false
          WHERE id = $1 AND status IN ('pending', 'running')",
    )
    .bind(id)
    .execute(pool)
    .await?;
    if r.rows_affected() == 1 {
        Ok(())
    } else {
        Err(state_error(pool, id, "cancel", "pending or running").await)
    }
}

async fn state_error(pool: &PgPool, id: i64, verb: &str, wanted: &str) -> anyhow::Error {
    match show(pool, id).await {
        Ok(Some(j)) => anyhow::anyhow!("cannot {verb} job {id}: it is {}, not {wanted}", j.status),
        Ok(None) => anyhow::anyhow!("no job with id {id}"),
        Err(e) => e.into(),
    }
}

/// Jobs that ended `done` in each of the last few minutes: the queue's recent throughput.
#[derive(Debug, Clone, Serialize)]
pub struct DoneRate {
    /// The instant counted back from.
    pub until: DateTime<Utc>,
    /// Done jobs per 60 s, newest first: `per_minute[0]` ended in the last 60 s before
    /// `until`, `per_minute[1]` in the 60 s before that, and so on.
    pub per_minute: Vec<i64>,
    /// False when even the newest `scan` jobs were all created inside the window, so older
    /// jobs that also finished in it went uncounted: the figures are then lower bounds.
    /// (Jobs created before the window that finished in it, late retries, are missed
    /// either way.)
    pub complete: bool,
}

/// Counts done jobs per minute over the last `minutes` minutes among the newest `scan`
/// jobs by id: a primary-key range of at most `scan` rows however large the table, and no
/// index on finished_at, which every completion would have to update.
pub async fn done_per_minute(pool: &PgPool, minutes: i32, scan: i64) -> sqlx::Result<DoneRate> {
    let minutes = minutes.clamp(1, 60);
    let (until, top): (DateTime<Utc>, i64) =
        sqlx::query_as("SELECT now(), (SELECT coalesce(max(id), 0) FROM threadsync.jobs)")
            .fetch_one(pool)
            .await?;
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT floor(extract(epoch FROM $1 - finished_at) / 60)::int AS ago, count(*)
           FROM threadsync.jobs
          WHERE id > $2 - $3 AND status = 'done'
            AND finished_at > $1 - make_interval(mins => $4) AND finished_at <= $1
          GROUP BY 1",
    )
    .bind(until)
    .bind(top)
    .bind(scan)
    .bind(minutes)
    .fetch_all(pool)
    .await?;
    let mut per_minute = vec![0; minutes as usize];
    for (ago, n) in rows {
        if let Some(slot) = usize::try_from(ago)
            .ok()
            .and_then(|m| per_minute.get_mut(m))
        {
            *slot += n;
        }
    }
    // The newest job below the scanned range: created before the window, or none at all.
    let below: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT created_at FROM threadsync.jobs WHERE id <= $1 - $2 ORDER BY id DESC LIMIT 1",
    )
    .bind(top)
    .bind(scan)
    .fetch_optional(pool)
    .await?;
    let since = until - chrono::Duration::minutes(i64::from(minutes));
    Ok(DoneRate {
        until,
        per_minute,
        complete: below.is_none_or(|c| c <= since),
    })
}
