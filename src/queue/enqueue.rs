//! Enqueue: one job through the `threadsync.enqueue` SQL function (the same path other apps
//! use), or many with one UNNEST insert.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;

#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub payload: Value,
    pub priority: i32,
    pub run_at: Option<DateTime<Utc>>,
    pub dedupe_key: Option<String>,
    pub concurrency_key: Option<String>,
    pub concurrency_limit: i32,
    pub max_attempts: Option<i32>,
    pub run_id: Option<i64>,
}

impl NewJob {
    pub fn new(kind: impl Into<String>, payload: Value) -> Self {
        Self {
            kind: kind.into(),
            payload,
            priority: 0,
            run_at: None,
            dedupe_key: None,
            concurrency_key: None,
            concurrency_limit: 1,
            max_attempts: None,
            run_id: None,
        }
    }
    pub fn priority(mut self, p: i32) -> Self {
        self.priority = p;
        self
    }
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }
    pub fn dedupe(mut self, key: impl Into<String>) -> Self {
        self.dedupe_key = Some(key.into());
        self
    }
    pub fn concurrency(mut self, key: impl Into<String>, limit: i32) -> Self {
        self.concurrency_key = Some(key.into());
        self.concurrency_limit = limit.max(1);
        self
    }
    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = Some(n);
        self
    }
    pub fn run(mut self, run_id: i64) -> Self {
        self.run_id = Some(run_id);
        self
    }
}

/// Enqueues one job inside the caller's transaction (pass `&mut *tx`) or on a pool.
/// Returns the new id, or the id of the active job already holding the dedupe key.
pub async fn enqueue<'c>(db: impl PgExecutor<'c>, job: &NewJob) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT threadsync.enqueue($1, $2, $3, coalesce($4, now()), $5, $6, $7, $8, $9)",
    )
    .bind(&job.kind)
    .bind(&job.payload)
    .bind(job.priority)
    .bind(job.run_at)
    .bind(&job.dedupe_key)
    .bind(&job.concurrency_key)
    .bind(job.concurrency_limit)
    .bind(job.max_attempts)
    .bind(job.run_id)
    .fetch_one(db)
    .await
}

/// Enqueues many jobs in one statement. Jobs whose dedupe key is already active are
/// skipped. Returns how many were inserted.
pub async fn enqueue_batch<'c>(db: impl PgExecutor<'c>, jobs: &[NewJob]) -> sqlx::Result<u64> {
    if jobs.is_empty() {
        return Ok(0);
    }
    let kinds: Vec<&str> = jobs.iter().map(|j| j.kind.as_str()).collect();
    let payloads: Vec<&Value> = jobs.iter().map(|j| &j.payload).collect();
    let priorities: Vec<i32> = jobs.iter().map(|j| j.priority).collect();
    let run_ats: Vec<Option<DateTime<Utc>>> = jobs.iter().map(|j| j.run_at).collect();
    let dedupes: Vec<Option<&str>> = jobs.iter().map(|j| j.dedupe_key.as_deref()).collect();
    let ckeys: Vec<Option<&str>> = jobs.iter().map(|j| j.concurrency_key.as_deref()).collect();
    let climits: Vec<i32> = jobs.iter().map(|j| j.concurrency_limit).collect();
    let maxes: Vec<Option<i32>> = jobs.iter().map(|j| j.max_attempts).collect();
    let runs: Vec<Option<i64>> = jobs.iter().map(|j| j.run_id).collect();
    let res = sqlx::query(
        "INSERT INTO threadsync.jobs (kind, payload, priority, run_at, dedupe_key, concurrency_key,
                                      concurrency_limit, max_attempts, run_id)
         SELECT k, p, pr, coalesce(ra, now()), d, ck, cl, ma, r
           FROM unnest($1::text[], $2::jsonb[], $3::int[], $4::timestamptz[], $5::text[],
                       $6::text[], $7::int[], $8::int[], $9::bigint[])
                AS t(k, p, pr, ra, d, ck, cl, ma, r)
         ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND status IN ('pending', 'running')
         DO NOTHING",
    )
    .bind(&kinds)
    .bind(&payloads)
    .bind(&priorities)
    .bind(&run_ats)
    .bind(&dedupes)
    .bind(&ckeys)
    .bind(&climits)
    .bind(&maxes)
    .bind(&runs)
    .execute(db)
    .await?;
    Ok(res.rows_affected())
}
