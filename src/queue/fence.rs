//! Fenced writes. Every state change a worker makes to a claimed job is guarded by
//! `id = $1 AND lease_token = $2 AND status = 'running'`: a worker whose lease was lost
//! (partitioned, paused, reaped) changes nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;

use crate::db::PgQuery;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fence {
    pub id: i64,
    pub token: Uuid,
}

/// What a fenced transaction does to the job itself when it commits.
#[derive(Debug, Clone)]
pub enum Finish {
    /// The job is done.
    Done,
    /// Save progress; the job keeps running.
    Checkpoint(Value),
    /// Done for now: run again at `at` (attempts reset), keeping `checkpoint` when given.
    Reschedule {
        at: DateTime<Utc>,
        checkpoint: Option<Value>,
    },
}

impl Finish {
    /// Whether committing it ends the job (a checkpoint keeps it running).
    pub fn ends_job(&self) -> bool {
        !matches!(self, Finish::Checkpoint(_))
    }

    /// The last three arguments of `threadsync.fence` / `fence_or_raise`.
    fn fence_args(&self) -> (&'static str, Option<DateTime<Utc>>, Option<&Value>) {
        match self {
            Finish::Done => ("done", None, None),
            Finish::Checkpoint(cp) => ("checkpoint", None, Some(cp)),
            Finish::Reschedule { at, checkpoint } => ("reschedule", Some(*at), checkpoint.as_ref()),
        }
    }
}

/// `BEGIN` and `finish` under the fence, as one simple-protocol round trip: the fence is the
/// first statement of the caller's transaction, so the job row stays locked until the
/// handler's own writes commit with it. The statement returns one row while the lease is
/// ours and none once it is lost. Values are inlined as literals (a simple query has no
/// parameters): integers, a UUID, an RFC 3339 time and dollar-quoted JSON, none of which
/// can end its literal early.
pub fn begin_sql(fence: Fence, finish: &Finish) -> String {
    let (kind, at, checkpoint) = finish.fence_args();
    let at = at.map_or("NULL".to_string(), |t| {
        format!(
            "'{}'",
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        )
    });
    let checkpoint = checkpoint.map_or("NULL".to_string(), json_literal);
    format!(
        "BEGIN; SELECT 1 WHERE threadsync.fence({}, '{}', '{kind}', {at}, {checkpoint})",
        fence.id, fence.token
    )
}

/// SQLSTATE of `threadsync.fence_or_raise` when the lease is lost.
pub const LEASE_LOST: &str = "TS001";

/// Binds the five parameters of `threadsync.fence_or_raise` (after the statement's own) for
/// a one-statement fenced transaction.
pub fn bind<'q>(q: PgQuery<'q>, fence: Fence, finish: &Finish) -> PgQuery<'q> {
    let (kind, at, checkpoint) = finish.fence_args();
    q.bind(fence.id)
        .bind(fence.token)
        .bind(kind)
        .bind(at)
        .bind(checkpoint.cloned())
}

/// The fence of a group statement (see `worker::group_commit`), as the CTE `fenced`: applies
/// each job's finish, as `threadsync.fence` does for one job, to the jobs whose lease still
/// holds, and returns their ids. Parameters $1..$5, bound by [`bind_group`]. The statement
/// writes only for jobs in `fenced` and ends with `SELECT id FROM fenced`.
macro_rules! group_fence_cte {
    () => {
        "fenced AS (
            UPDATE threadsync.jobs j
               SET status = CASE f.finish WHEN 'done' THEN 'done' WHEN 'reschedule' THEN 'pending' ELSE j.status END,
                   finished_at = CASE f.finish WHEN 'done' THEN now() ELSE j.finished_at END,
                   run_at = CASE f.finish WHEN 'reschedule' THEN f.at ELSE j.run_at END,
                   checkpoint = CASE f.finish WHEN 'checkpoint' THEN f.checkpoint
                                              WHEN 'reschedule' THEN coalesce(f.checkpoint, j.checkpoint)
                                              ELSE j.checkpoint END,
                   attempts = CASE f.finish WHEN 'reschedule' THEN 0 ELSE j.attempts END,
                   last_error = CASE f.finish WHEN 'reschedule' THEN NULL ELSE j.last_error END,
                   lease_owner = CASE f.finish WHEN 'reschedule' THEN NULL ELSE j.lease_owner END,
                   lease_token = CASE f.finish WHEN 'reschedule' THEN NULL ELSE j.lease_token END,
                   lease_expires_at = CASE f.finish WHEN 'checkpoint' THEN j.lease_expires_at END
              FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::timestamptz[], $5::jsonb[])
                   AS f(id, token, finish, at, checkpoint)
             WHERE j.id = f.id AND j.lease_token = f.token AND j.status = 'running'
            RETURNING j.id)"
    };
}
pub(crate) use group_fence_cte;

/// Binds $1..$5 of [`group_fence_cte`]: one array element per job, in the order given
/// (job id order, so concurrent statements lock job rows in one order).
pub fn bind_group<'q, 'a>(
    q: PgQuery<'q>,
    jobs: impl Iterator<Item = (Fence, &'a Finish)> + Clone,
) -> PgQuery<'q> {
    let args = || jobs.clone().map(|(f, finish)| (f, finish.fence_args()));
    q.bind(args().map(|(f, _)| f.id).collect::<Vec<_>>())
        .bind(args().map(|(f, _)| f.token).collect::<Vec<_>>())
        .bind(args().map(|(_, (kind, _, _))| kind).collect::<Vec<_>>())
        .bind(args().map(|(_, (_, at, _))| at).collect::<Vec<_>>())
        .bind(
            args()
                .map(|(_, (_, _, cp))| cp.cloned())
                .collect::<Vec<_>>(),
        )
}

/// A jsonb literal in dollar quotes whose tag does not occur in the text.
fn json_literal(v: &Value) -> String {
    let text = v.to_string();
    let tag = (0..)
        .map(|n| format!("$j{n}$"))
        .find(|t| !text.contains(t.as_str()))
        .unwrap_or_default();
    format!("{tag}{text}{tag}::jsonb")
}

/// Completes jobs that wrote nothing, many per statement.
pub async fn complete_batch<'c>(db: impl PgExecutor<'c>, fences: &[Fence]) -> sqlx::Result<u64> {
    let ids: Vec<i64> = fences.iter().map(|f| f.id).collect();
    let tokens: Vec<Uuid> = fences.iter().map(|f| f.token).collect();
    let r = sqlx::query(
        "UPDATE threadsync.jobs j SET status = 'done', finished_at = now(), lease_expires_at = NULL
           FROM unnest($1::bigint[], $2::uuid[]) AS a(id, token)
          WHERE j.id = a.id AND j.lease_token = a.token AND j.status = 'running'",
    )
    .bind(&ids)
    .bind(&tokens)
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

/// The job failed in a way worth retrying: back to pending after `backoff`, or failed
/// when it has used its attempts: the job's own `max_attempts` (set at enqueue) when it
/// has one, else `kind_max_attempts` (the kind's policy). Returns the new status, or None
/// if the lease was lost.
pub async fn fail_transient<'c>(
    db: impl PgExecutor<'c>,
    fence: Fence,
    kind_max_attempts: i32,
    backoff: Duration,
    error: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "UPDATE threadsync.jobs
            SET status = CASE WHEN attempts >= coalesce(max_attempts, $3) THEN 'failed' ELSE 'pending' END,
                finished_at = CASE WHEN attempts >= coalesce(max_attempts, $3) THEN now() END,
                run_at = now() + make_interval(secs => $4),
                last_error = $5, lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
          WHERE id = $1 AND lease_token = $2 AND status = 'running'
      RETURNING status",
    )
    .bind(fence.id)
    .bind(fence.token)
    .bind(kind_max_attempts)
    .bind(backoff.as_secs_f64())
    .bind(error)
    .fetch_optional(db)
    .await
}

/// The provider said when to come back: reschedule without using an attempt.
pub async fn retry_at<'c>(
    db: impl PgExecutor<'c>,
    fence: Fence,
    at: DateTime<Utc>,
    reason: &str,
) -> sqlx::Result<bool> {
    let n = sqlx::query(
        "UPDATE threadsync.jobs
            SET status = 'pending', run_at = $3, attempts = greatest(attempts - 1, 0),
                last_error = $4, lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
          WHERE id = $1 AND lease_token = $2 AND status = 'running'",
    )
    .bind(fence.id)
    .bind(fence.token)
    .bind(at)
    .bind(reason)
    .execute(db)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Sends the job back to pending until `at` without using an attempt, keeping its place
/// under its concurrency key until it is claimed again (see migration 0012). Returns the
/// seconds from now to `at` by the database's clock, which is the one `run_at` is read by.
pub async fn snooze<'c>(
    db: impl PgExecutor<'c>,
    fence: Fence,
    at: DateTime<Utc>,
) -> sqlx::Result<Option<f64>> {
    sqlx::query_scalar(
        "UPDATE threadsync.jobs
            SET status = 'pending', run_at = $3, attempts = greatest(attempts - 1, 0),
                holds_key = concurrency_key IS NOT NULL,
                lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
          WHERE id = $1 AND lease_token = $2 AND status = 'running'
      RETURNING extract(epoch FROM $3 - clock_timestamp())::float8",
    )
    .bind(fence.id)
    .bind(fence.token)
    .bind(at)
    .fetch_optional(db)
    .await
}

/// Retrying cannot help: fail now and keep the reason.
pub async fn fail_permanent<'c>(
    db: impl PgExecutor<'c>,
    fence: Fence,
    error: &str,
) -> sqlx::Result<bool> {
    let n = sqlx::query(
        "UPDATE threadsync.jobs
            SET status = 'failed', finished_at = now(), last_error = $3,
                lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
          WHERE id = $1 AND lease_token = $2 AND status = 'running'",
    )
    .bind(fence.id)
    .bind(fence.token)
    .bind(error)
    .execute(db)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Hands jobs back to pending at once, giving back the attempt, with `reason` as their
/// last error (shutdown, or claimed past a per-kind limit and never started).
pub async fn release_batch<'c>(
    db: impl PgExecutor<'c>,
    fences: &[Fence],
    reason: &str,
) -> sqlx::Result<u64> {
    let ids: Vec<i64> = fences.iter().map(|f| f.id).collect();
    let tokens: Vec<Uuid> = fences.iter().map(|f| f.token).collect();
    let r = sqlx::query(
        "UPDATE threadsync.jobs j
            SET status = 'pending', attempts = greatest(j.attempts - 1, 0), run_at = now(),
                last_error = $3,
                lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
           FROM unnest($1::bigint[], $2::uuid[]) AS a(id, token)
          WHERE j.id = a.id AND j.lease_token = a.token AND j.status = 'running'",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(reason)
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}
