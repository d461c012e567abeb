//! `sync.start`: opens a run when a schedule asks, and plans a run's first jobs by the
//! account's shape. Also where a run moves on when one of its jobs ends, and the worker's
//! periodic sweep that moves on runs whose jobs all ended without that.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sqlx::PgPool;

use crate::queue::{Finish, NewJob};
use crate::worker::{Handler, JobCtx, JobError, JobResult, Periodic};

use super::engine::Engine;
use super::plan::{self, StreamPayload};
use super::runs::{self, Mode, Phase};
use super::store;
use super::vocab::Source;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartPayload {
    account: String,
    mode: Mode,
    #[serde(default)]
    run_id: Option<i64>,
}

pub struct Start {
    pub engine: Arc<Engine>,
}

#[async_trait::async_trait]
impl Handler for Start {
    async fn run(&self, job: &JobCtx) -> JobResult {
        let p: StartPayload = job.payload()?;
        let Some(account) = self.engine.account(&p.account) else {
            return Err(JobError::Permanent(format!(
                "no account {:?} in jobs.toml",
                p.account
            )));
        };
        let Some(run_id) = p.run_id else {
            // A schedule asked: open a run (or find the active one) and let its own start job plan it.
            let mut tx = job.begin(Finish::Done).await?;
            let (active, created) = runs::start_run(&mut tx, &p.account, p.mode).await?;
            job.commit(tx).await?;
            if !created {
                // A run still open at the next tick may only be waiting for the job end that
                // would close it: move it on.
                advance_run(&self.engine, &job.pool, Some(active)).await;
            }
            return Ok(());
        };
        let a = &account.cfg;
        let jobs: Vec<NewJob> = match account.source()? {
            Source::Threads(t) => {
                let watermark = store::watermark(&job.pool, &a.id).await?;
                plan::plan_lists(a, &t.lists(), run_id, p.mode, watermark)
            }
            Source::Stream(s) => {
                let streams = s.streams();
                streams
                    .iter()
                    .map(|stream| {
                        let first = StreamPayload {
                            account: a.id.clone(),
                            stream: stream.clone(),
                            after: None,
                            full: p.mode == Mode::Full,
                        };
                        plan::stream_job(a, &streams, run_id, first)
                    })
                    .collect()
            }
        };
        let mut tx = job.begin(Finish::Done).await?;
        crate::queue::enqueue_batch(&mut *tx, &jobs).await?;
        job.commit(tx).await
    }

    async fn after(&self, job: &JobCtx) {
        advance_run(&self.engine, &job.pool, job.run_id).await
    }
}

/// After any job of a run ends (done or failed for good), the last one moves the run on:
/// a thread-list run to its catch-up pass, then to its outcome; a stream run straight to
/// its outcome.
pub async fn advance_run(engine: &Engine, pool: &PgPool, run_id: Option<i64>) {
    let Some(run_id) = run_id else { return };
    let check = || async {
        if let Err(e) = advance_once(engine, pool, run_id).await {
            tracing::warn!(run = run_id, error = %e, "could not advance the sync run; the next job end or the periodic sweep will");
        }
    };
    engine.run_ends.settle(run_id, check).await
}

async fn advance_once(engine: &Engine, pool: &PgPool, run_id: i64) -> sqlx::Result<()> {
    let account: Option<String> =
        sqlx::query_scalar("SELECT account_id FROM threadsync.sync_runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(pool)
            .await?;
    let source = account
        .as_deref()
        .and_then(|a| engine.account(a))
        .and_then(|a| Some((a, a.source().ok()?.clone())));
    let Some((account, source)) = source else {
        // Not an account this worker can plan for: another worker's config will.
        return Ok(());
    };
    let a = &account.cfg;
    match source {
        Source::Threads(t) => {
            let lists = t.lists();
            runs::advance_if_idle(pool, run_id, true, |main| {
                plan::catch_up(a, &lists, run_id, main)
            })
            .await?;
        }
        // No catch-up pass for streams: the cursor already covers what arrived meanwhile.
        Source::Stream(_) => {
            for _ in 0..2 {
                match runs::advance_if_idle(pool, run_id, false, |_| Vec::new()).await? {
                    Phase::CatchUp => continue,
                    _ => break,
                }
            }
        }
    }
    Ok(())
}

/// Moves on every open run that has no job left to end it.
pub struct CloseIdleRuns {
    pub engine: Arc<Engine>,
}

#[async_trait::async_trait]
impl Periodic for CloseIdleRuns {
    fn every(&self) -> Duration {
        Duration::from_secs(2)
    }

    async fn tick(&self, pool: &PgPool) {
        match runs::idle_open_runs(pool).await {
            Ok(idle) => {
                for (run, _) in idle {
                    advance_run(&self.engine, pool, Some(run)).await;
                }
            }
            Err(e) => tracing::debug!(error = %e, "idle run sweep failed; will retry"),
        }
    }
}
