//! Job kinds: what each fetches, writes and enqueues next. This is where the queue and the
//! providers meet.

pub mod diag;
pub mod ebay;
pub mod smseagle;
pub mod start;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use chrono::Duration;
use sqlx::PgPool;

use crate::config::{Account, Config};
use crate::flow::{Flow, FlowError};
use crate::worker::{JobError, JobResult, Registry};

/// Where provider tokens come from.
pub enum Tokens {
    /// The environment variables jobs.toml names (workers in production).
    Env,
    /// Given by account id (the demo and tests, whose simulator issues the tokens).
    Given(HashMap<String, String>),
}

impl Tokens {
    pub fn get(&self, account: &Account) -> Option<String> {
        match self {
            Tokens::Env => std::env::var(&account.token_env).ok(),
            Tokens::Given(m) => m.get(&account.id).cloned(),
        }
    }
}

/// Every job kind threadsync runs, with the accounts `cfg` configures.
pub fn registry(cfg: &Config, tokens: &Tokens) -> Registry {
    let mut r = Registry::default();
    diag::register(&mut r);
    let ebay = Arc::new(ebay::Accounts::from_config(cfg, tokens));
    let sms = Arc::new(smseagle::Accounts::from_config(cfg, tokens));
    ebay::register(&mut r, ebay.clone());
    smseagle::register(&mut r, sms.clone());
    start::register(&mut r, ebay, sms);
    r
}

/// Waits for the account's next request slot; a paused account parks the job.
async fn pace(flow: &Flow, pool: &PgPool, account: &Account) -> JobResult {
    match flow
        .acquire(pool, &account.id, account.requests_per_second)
        .await
    {
        Ok(()) => Ok(()),
        Err(FlowError::Paused { until, reason }) => Err(JobError::RetryAfter {
            at: until + Duration::milliseconds(rand::random::<u16>() as i64 % 2000),
            reason: format!("account {} paused: {reason}", account.id),
        }),
        Err(FlowError::Db(e)) => Err(e.into()),
    }
}

/// Coalesces the "has this run ended?" check that follows every job of a run. At most one
/// check per run is under way in this worker; a job ending meanwhile asks that one to check
/// once more, `RECHECK` later. So the last job's end is always followed by a check that
/// sees it, while a busy run costs a few checks a second instead of one per job.
#[derive(Default)]
pub struct RunEnds {
    /// Runs being checked here, and whether another job ended since the check began.
    checking: Mutex<HashMap<i64, bool>>,
}

const RECHECK: std::time::Duration = std::time::Duration::from_millis(20);

impl RunEnds {
    pub async fn settle<F, Fut>(&self, run_id: i64, check: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ()>,
    {
        {
            let mut checking = crate::worker::lock(&self.checking);
            if let Some(again) = checking.get_mut(&run_id) {
                *again = true;
                return;
            }
            checking.insert(run_id, false);
        }
        loop {
            check().await;
            tokio::time::sleep(RECHECK).await;
            let mut checking = crate::worker::lock(&self.checking);
            match checking.get_mut(&run_id) {
                Some(again) if *again => *again = false,
                _ => {
                    checking.remove(&run_id);
                    return;
                }
            }
        }
    }
}
