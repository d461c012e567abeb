//! `sync.start`: opens a run when a schedule asks, and plans a run's first jobs by the
//! account's provider.

use std::sync::Arc;

use serde::Deserialize;

use crate::queue::Finish;
use crate::sync::{self, Mode};
use crate::worker::{Handler, JobCtx, JobError, JobResult, Registry};

use super::{ebay, smseagle};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartPayload {
    account: String,
    mode: Mode,
    #[serde(default)]
    run_id: Option<i64>,
}

pub fn register(r: &mut Registry, ebay: Arc<ebay::Accounts>, sms: Arc<smseagle::Accounts>) {
    r.register(sync::START_KIND, Start { ebay, sms });
}

struct Start {
    ebay: Arc<ebay::Accounts>,
    sms: Arc<smseagle::Accounts>,
}

impl Start {
    async fn advance(&self, pool: &sqlx::PgPool, account: &str, run_id: Option<i64>) {
        if self.sms.has(account) {
            smseagle::advance_run(&self.sms, pool, run_id).await
        } else {
            ebay::advance_run(&self.ebay, pool, account, run_id).await
        }
    }
}

#[async_trait::async_trait]
impl Handler for Start {
    async fn run(&self, job: &JobCtx) -> JobResult {
        let p: StartPayload = job.payload()?;
        if !self.ebay.has(&p.account) && !self.sms.has(&p.account) {
            return Err(JobError::Permanent(format!(
                "no account {:?} in jobs.toml",
                p.account
            )));
        }
        let Some(run_id) = p.run_id else {
            // A schedule asked: open a run (or find the active one) and let its own start job plan it.
            let mut tx = job.begin(Finish::Done).await?;
            let (active, created) = sync::start_run(&mut tx, &p.account, p.mode).await?;
            job.commit(tx).await?;
            if !created {
                // A run still open at the next tick may only be waiting for the job end that
                // would close it (its worker died between commit and hook): move it on.
                self.advance(&job.pool, &p.account, Some(active)).await;
            }
            return Ok(());
        };
        let jobs = if self.ebay.has(&p.account) {
            ebay::plan(&self.ebay, &job.pool, &p.account, run_id, p.mode).await?
        } else {
            smseagle::plan(&self.sms, &p.account, run_id, p.mode)?
        };
        let mut tx = job.begin(Finish::Done).await?;
        crate::queue::enqueue_batch(&mut *tx, &jobs).await?;
        job.commit(tx).await
    }

    async fn after(&self, job: &JobCtx) {
        let account = job.payload["account"].as_str().unwrap_or_default();
        self.advance(&job.pool, account, job.run_id).await
    }
}
