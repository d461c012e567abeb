//! Heartbeats, the reaper for expired leases, and retention pruning.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::Fence;
use super::Settings;

/// Extends the leases this worker holds. Returns the ids still held: a job missing from the
/// answer was reaped, cancelled or finished elsewhere, and its handler must stop.
pub async fn heartbeat(pool: &PgPool, held: &[Fence], lease: Duration) -> sqlx::Result<Vec<i64>> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    // In id order, the order group commits lock job rows in, so the two never deadlock.
    let mut held = held.to_vec();
    held.sort_by_key(|f| f.id);
    let ids: Vec<i64> = held.iter().map(|f| f.id).collect();
    let tokens: Vec<Uuid> = held.iter().map(|f| f.token).collect();
    sqlx::query_scalar(
        "UPDATE threadsync.jobs j SET lease_expires_at = now() + make_interval(secs => $3)
           FROM unnest($1::bigint[], $2::uuid[]) AS a(id, token)
          WHERE j.id = a.id AND j.lease_token = a.token AND j.status = 'running'
      RETURNING j.id",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// Returns jobs whose lease expired (their worker died or hung) to pending. The attempt
/// counts, so a job that kills its worker every time ends failed after max_attempts.
pub async fn reap(pool: &PgPool, cfg: &Settings) -> sqlx::Result<u64> {
    let kinds: Vec<&str> = cfg.kinds.keys().map(String::as_str).collect();
    let maxes: Vec<i32> = cfg.kinds.values().map(|k| k.retry.max_attempts).collect();
    let r = sqlx::query(
        "WITH expired AS (
            SELECT id, kind, attempts,
                   coalesce(max_attempts,
                            (SELECT m FROM unnest($1::text[], $2::int[]) AS p(k, m) WHERE p.k = kind),
                            $3) AS max_attempts,
                   lease_owner
              FROM threadsync.jobs
             WHERE status = 'running' AND lease_expires_at < now()
             FOR UPDATE SKIP LOCKED)
         UPDATE threadsync.jobs j
            SET status = CASE WHEN e.attempts >= e.max_attempts THEN 'failed' ELSE 'pending' END,
                finished_at = CASE WHEN e.attempts >= e.max_attempts THEN now() END,
                run_at = now(),
                last_error = 'lease expired: worker ' || coalesce(e.lease_owner, '?')
                             || ' stopped heartbeating (crashed, killed or partitioned)',
                lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
           FROM expired e
          WHERE j.id = e.id",
    )
    .bind(&kinds)
    .bind(&maxes)
    .bind(cfg.retry.max_attempts)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Deletes finished jobs older than the retention age, `batch` rows per statement so the
/// table is never locked for long. Returns how many were deleted.
pub async fn prune(pool: &PgPool, older_than: Duration, batch: i64) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let n = sqlx::query(
            "DELETE FROM threadsync.jobs WHERE id IN (
                SELECT id FROM threadsync.jobs
                 WHERE status IN ('done', 'failed', 'cancelled')
                   AND finished_at < now() - make_interval(secs => $1)
                 LIMIT $2)",
        )
        .bind(older_than.as_secs_f64())
        .bind(batch)
        .execute(pool)
        .await?
        .rows_affected();
        total += n;
        if n < batch as u64 {
            return Ok(total);
        }
    }
}
