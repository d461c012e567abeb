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
            sync::start_run(&mut tx, &p.account, p.mode).await?;
            return job.commit(tx).await;
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
        if self
            .sms
            .has(job.payload["account"].as_str().unwrap_or_default())
        {
            smseagle::advance_run(job).await
        } else {
            ebay::advance_run(&self.ebay, job).await
        }
    }
}
