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
                lease_token = NULL, lease_expires_at = NULL
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
