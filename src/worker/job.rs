//! What a handler sees: the claimed job, its fence, and how it reports the outcome.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::PgPool;

use super::group_commit::{Entry, GroupCommit, GroupStatement};
use super::tx_pool::{self, TxConn, TxPool};
use crate::queue::{fence, ClaimedJob, Fence, Finish};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth retrying with backoff (network, 5xx, database hiccup).
    #[error("{0:#}")]
    Transient(anyhow::Error),
    /// The provider said when to come back; does not use an attempt.
    #[error("retry after {at}: {reason}")]
    RetryAfter { at: DateTime<Utc>, reason: String },
    /// The handler waits for a time of its own choosing (a send slot) without a worker
    /// slot: pending until `at`, using no attempt and keeping the job's place under its
    /// concurrency key. When it runs again, [`JobCtx::take_woke_late`] says how late.
    #[error("snoozed until {at}")]
    Snooze { at: DateTime<Utc> },
    /// Retrying cannot help (bad payload, 4xx, unknown kind): fail now, keep the reason.
    #[error("{0}")]
    Permanent(String),
    /// Another worker owns the job now; this one must write nothing more.
    #[error("lease lost")]
    LeaseLost,
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::Transient(e.into())
    }
}

pub type JobResult = Result<(), JobError>;

#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn run(&self, job: &JobCtx) -> JobResult;

    /// Called once the job's outcome is recorded (done, failed or rescheduled), outside
    /// any transaction: where a job that ends a larger unit of work notices it.
    async fn after(&self, _job: &JobCtx) {}
}

/// Work a worker does on its own, beside its jobs, every [`Periodic::every`]: for example
/// closing a larger unit of work whose jobs all ended without the hook that would close it.
#[async_trait::async_trait]
pub trait Periodic: Send + Sync + 'static {
    fn every(&self) -> std::time::Duration;
    async fn tick(&self, pool: &PgPool);
}

/// Job kinds this worker can run, and its periodic tasks.
#[derive(Default, Clone)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
    periodic: Vec<Arc<dyn Periodic>>,
}

impl Registry {
    pub fn register(&mut self, kind: &str, handler: impl Handler) -> &mut Self {
        self.handlers.insert(kind.to_string(), Arc::new(handler));
        self
    }
    pub fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(kind).cloned()
    }
    pub fn has(&self, kind: &str) -> bool {
        self.handlers.contains_key(kind)
    }
    /// The kinds registered, in no particular order.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }
    pub fn periodic(&mut self, task: impl Periodic) -> &mut Self {
        self.periodic.push(Arc::new(task));
        self
    }
    pub(crate) fn periodic_tasks(&self) -> &[Arc<dyn Periodic>] {
        &self.periodic
    }
}

pub struct JobCtx {
    pub id: i64,
    pub kind: String,
    pub payload: Value,
    pub attempts: i32,
    pub checkpoint: Option<Value>,
    pub run_id: Option<i64>,
    pub worker: Arc<str>,
    /// For reads outside the fenced transaction.
    pub pool: PgPool,
    tx_pool: TxPool,
    pub(crate) fence: Fence,
    /// Set once a Done or Reschedule transaction committed.
    pub(crate) finished: AtomicBool,
    /// Set once the handler returned: its outcome is being recorded, so a heartbeat that no
    /// longer finds the lease must not treat it as lost.
    pub(crate) returned: AtomicBool,
    /// Set when the job was claimed after a snooze (how late, and when it was claimed);
    /// taken by the first to ask.
    woke_late: std::sync::Mutex<Option<(std::time::Duration, std::time::Instant)>>,
}

impl JobCtx {
    pub(crate) fn new(job: ClaimedJob, worker: Arc<str>, pool: PgPool, tx_pool: TxPool) -> Self {
        JobCtx {
            id: job.id,
            kind: job.kind,
            payload: job.payload,
            attempts: job.attempts,
            checkpoint: job.checkpoint,
            run_id: job.run_id,
            worker,
            pool,
            tx_pool,
            fence: Fence {
                id: job.id,
                token: job.lease_token,
            },
            finished: AtomicBool::new(false),
            returned: AtomicBool::new(false),
            woke_late: std::sync::Mutex::new(job.woke_late),
        }
    }

    /// For a job claimed after a [`JobError::Snooze`]: how long it is now past the time it
    /// was snoozed to. Given once per run, to the first caller.
    pub fn take_woke_late(&self) -> Option<std::time::Duration> {
        super::lock(&self.woke_late)
            .take()
            .map(|(late, claimed)| late + claimed.elapsed())
    }

    /// Decodes the payload; an undecodable payload fails this job only, permanently.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, JobError> {
        serde_json::from_value(self.payload.clone())
            .map_err(|e| JobError::Permanent(format!("undecodable payload for {}: {e}", self.kind)))
    }

    /// Opens the fenced transaction: applies `finish` to the job row first (which locks it
    /// and checks the lease), so the handler's writes, follow-up jobs, checkpoint and
    /// completion all commit together through [`JobCtx::commit`], or not at all.
    pub async fn begin(&self, finish: Finish) -> Result<Fenced, JobError> {
        let mut conn = tx_pool::get(&self.tx_pool).await?;
        let sql = fence::begin_sql(self.fence, &finish);
        let ours = match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
        {
            Ok(r) => r.rows_affected() == 1,
            Err(e) => {
                drop(TxConn::take(conn));
                return Err(e.into());
            }
        };
        let fenced = Fenced {
            conn: Some(conn),
            finishes: finish.ends_job(),
        };
        if !ours {
            fenced.end("ROLLBACK").await?;
            return Err(JobError::LeaseLost);
        }
        Ok(fenced)
    }

    pub async fn commit(&self, fenced: Fenced) -> JobResult {
        let finishes = fenced.finishes;
        fenced.end("COMMIT").await?;
        if finishes {
            self.finished.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// A fenced transaction that is one statement, committed in one round trip (no BEGIN, no
    /// COMMIT). `q` ends with `threadsync.fence_or_raise` on its last five parameters, bound
    /// here, in a MATERIALIZED CTE that its result reads: a lost lease aborts the statement.
    pub async fn commit_statement(&self, finish: Finish, q: crate::db::PgQuery<'_>) -> JobResult {
        let mut conn = tx_pool::get(&self.tx_pool).await?;
        let finishes = finish.ends_job();
        match fence::bind(q, self.fence, &finish)
            .execute(&mut *conn)
            .await
        {
            Ok(_) => {
                if finishes {
                    self.finished.store(true, Ordering::Release);
                }
                Ok(())
            }
            // The statement failed as a whole and the connection is idle again.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(fence::LEASE_LOST) => {
                Err(JobError::LeaseLost)
            }
            Err(e @ sqlx::Error::Database(_)) => Err(e.into()),
            Err(e) => {
                drop(TxConn::take(conn));
                Err(e.into())
            }
        }
    }

    /// A fenced transaction that is one statement shared with other jobs' (see
    /// [`group_commit`](super::group_commit)): `item` is written, and `finish` applied, only
    /// while this job holds its lease.
    pub async fn commit_grouped<G: GroupStatement>(
        &self,
        group: &GroupCommit<G>,
        finish: Finish,
        item: G::Item,
    ) -> JobResult {
        let finishes = finish.ends_job();
        let entry = Entry {
            fence: self.fence,
            finish,
            item,
        };
        if !group.commit(&self.tx_pool, entry).await? {
            return Err(JobError::LeaseLost);
        }
        if finishes {
            self.finished.store(true, Ordering::Release);
        }
        Ok(())
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    pub(crate) fn has_returned(&self) -> bool {
        self.returned.load(Ordering::Acquire)
    }
}

/// A transaction whose first statement passed the fence. Its connection returns to the
/// pool only through a `COMMIT` or `ROLLBACK` that succeeded; dropped any other way (an
/// error, an aborted handler) it is closed, and the server rolls the transaction back.
/// Handlers run statements on it; they must not open transactions or savepoints of their own.
pub struct Fenced {
    conn: Option<TxConn>,
    finishes: bool,
}

impl Fenced {
    async fn end(mut self, sql: &'static str) -> sqlx::Result<()> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        match sqlx::raw_sql(sql).execute(&mut *conn).await {
            Ok(_) => Ok(()),
            Err(e) => {
                drop(TxConn::take(conn));
                Err(e)
            }
        }
    }
}

impl Drop for Fenced {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(TxConn::take(conn));
        }
    }
}

impl std::ops::Deref for Fenced {
    type Target = sqlx::PgConnection;
    fn deref(&self) -> &Self::Target {
        self.conn
            .as_ref()
            .expect("a Fenced holds its connection until it ends")
    }
}

impl std::ops::DerefMut for Fenced {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.conn
            .as_mut()
            .expect("a Fenced holds its connection until it ends")
    }
}
