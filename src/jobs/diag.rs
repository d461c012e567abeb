//! Diagnostic kinds for benchmarks and fire drills: they exercise the queue itself.
//! `diag.write` and `diag.sleep` record each committed execution in `threadsync.diag_writes`.

use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;

use crate::queue::Finish;
use crate::worker::{Handler, JobCtx, JobError, JobResult, Registry};

/// The kinds [`register`] registers.
pub const KINDS: [&str; 5] = [
    "diag.noop",
    "diag.write",
    "diag.sleep",
    "diag.fail",
    "diag.crash",
];

pub fn register(r: &mut Registry) {
    r.register("diag.noop", Noop)
        .register("diag.write", Write)
        .register("diag.sleep", SleepThenWrite)
        .register("diag.fail", Fail)
        .register("diag.crash", Crash);
}

/// Writes nothing; its completion is batched.
struct Noop;
#[async_trait::async_trait]
impl Handler for Noop {
    async fn run(&self, _job: &JobCtx) -> JobResult {
        Ok(())
    }
}

/// One small row, committed with its own fenced completion: the path every sync job takes.
struct Write;
#[async_trait::async_trait]
impl Handler for Write {
    async fn run(&self, job: &JobCtx) -> JobResult {
        write_row(job).await
    }
}

/// The row and the job's completion commit together, in one statement.
async fn write_row(job: &JobCtx) -> JobResult {
    let q = sqlx::query(
        "WITH fence AS MATERIALIZED (SELECT threadsync.fence_or_raise($3, $4, $5, $6, $7))
         INSERT INTO threadsync.diag_writes (job_id, worker) SELECT $1, $2 FROM fence",
    )
    .bind(job.id)
    .bind(job.worker.to_string());
    job.commit_statement(Finish::Done, q).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepPayload {
    ms: u64,
}

/// Sleeps (standing in for slow HTTP calls), then writes like `diag.write`.
struct SleepThenWrite;
#[async_trait::async_trait]
impl Handler for SleepThenWrite {
    async fn run(&self, job: &JobCtx) -> JobResult {
        let p: SleepPayload = job.payload()?;
        tokio::time::sleep(Duration::from_millis(p.ms)).await;
        write_row(job).await
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "mode")]
enum FailPayload {
    Transient,
    Permanent,
    RetryAfter { secs: u64 },
}

/// Fails the way its payload says.
struct Fail;
#[async_trait::async_trait]
impl Handler for Fail {
    async fn run(&self, job: &JobCtx) -> JobResult {
        Err(match job.payload()? {
            FailPayload::Transient => {
                JobError::Transient(anyhow::anyhow!("diag: transient failure"))
            }
            FailPayload::Permanent => JobError::Permanent("diag: permanent failure".into()),
            FailPayload::RetryAfter { secs } => JobError::RetryAfter {
                at: Utc::now() + chrono::Duration::seconds(secs as i64),
                reason: "diag: provider asked to retry later".into(),
            },
        })
    }
}

/// Kills its worker process, as a segfaulting dependency or the OOM killer would.
struct Crash;
#[async_trait::async_trait]
impl Handler for Crash {
    async fn run(&self, _job: &JobCtx) -> JobResult {
        tracing::error!("diag.crash: aborting the worker process on purpose");
        std::process::abort()
    }
}
