//! Job kinds: what each fetches, writes and enqueues next. This is where the queue and the
//! providers meet.

pub mod diag;
pub mod ebay;
pub mod smseagle;
pub mod start;

use std::collections::HashMap;
use std::sync::Arc;

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
