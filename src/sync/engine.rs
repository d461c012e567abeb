//! The configured accounts with their connected sources, and what every sync job does
//! around a provider call: find the account, pace the request, and decide what a
//! provider error means for the job and the account.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{Duration, Utc};
use sqlx::PgPool;

use crate::config::AccountConfig;
use crate::queue::RetryPolicy;
use crate::worker::group_commit::GroupCommit;
use crate::worker::{JobCtx, JobError, JobResult};

use super::flow::{Flow, FlowError, Slot};
use super::runs::RunEnds;
use super::store::ConversationPages;
use super::vocab::{MessageStream, ProviderError, Source, ThreadSource};

/// Where provider secrets come from.
pub enum Tokens {
    /// The environment variables jobs.toml names (workers in production).
    Env,
    /// Given by account id (the demo and tests, whose simulator issues the tokens).
    Given(HashMap<String, String>),
}

impl Tokens {
    pub fn get(&self, account: &AccountConfig) -> Option<String> {
        match self {
            Tokens::Env => std::env::var(&account.token_env).ok(),
            Tokens::Given(m) => m.get(&account.id).cloned(),
        }
    }
}

/// A parked job looks at its account's pause again after at most this long.
const PARK_RECHECK_SECS: i64 = 60;

/// A throttle the provider says lasts longer than this pauses the whole account.
const LOCKOUT_PAUSE_SECS: i64 = 5;

/// How long an account whose credential was refused stays paused.
const UNAUTHORIZED_PAUSE_MINUTES: i64 = 5;

pub struct Account {
    pub cfg: AccountConfig,
    source: Result<Source, String>,
}

/// One per worker runtime: shared by every sync job kind it runs.
pub struct Engine {
    accounts: HashMap<String, Account>,
    pub(super) flow: Flow,
    pub(super) run_ends: RunEnds,
    /// Conversation pages of concurrent jobs commit together.
    pub(super) pages: GroupCommit<ConversationPages>,
    /// Status checks' backoff while the provider is unreachable, per provider.
    check_retry: HashMap<&'static str, RetryPolicy>,
}

impl Engine {
    pub fn new(
        accounts: &[AccountConfig],
        tokens: &Tokens,
        check_retry: HashMap<&'static str, RetryPolicy>,
    ) -> Self {
        let accounts = accounts
            .iter()
            .map(|a| {
                let source = match tokens.get(a) {
                    Some(secret) if !secret.is_empty() => a
                        .settings
                        .connect(a, secret)
                        .map_err(|e| format!("account {}: cannot connect: {e:#}", a.id)),
                    _ => Err(format!(
                        "account {}: environment variable {} (its {} token) is not set in the worker's environment",
                        a.id, a.token_env, a.provider
                    )),
                };
                (
                    a.id.clone(),
                    Account {
                        cfg: a.clone(),
                        source,
                    },
                )
            })
            .collect();
        Engine {
            accounts,
            flow: Flow::default(),
            run_ends: RunEnds::default(),
            pages: GroupCommit::default(),
            check_retry,
        }
    }

    pub(super) fn account(&self, id: &str) -> Option<&Account> {
        self.accounts.get(id)
    }

    /// The account, checked to belong to `provider` (a job kind names its provider).
    pub(super) fn get(&self, provider: &str, id: &str) -> Result<&Account, JobError> {
        match self.accounts.get(id) {
            Some(a) if a.cfg.provider == provider => Ok(a),
            Some(a) => Err(JobError::Permanent(format!(
                "account {id:?} is a {} account, not {provider}",
                a.cfg.provider
            ))),
            None => Err(JobError::Permanent(format!(
                "no account {id:?} in jobs.toml"
            ))),
        }
    }

    pub(super) fn check_retry(&self, provider: &str) -> RetryPolicy {
        self.check_retry.get(provider).copied().unwrap_or_default()
    }
}

impl Account {
    pub(super) fn source(&self) -> Result<&Source, JobError> {
        self.source
            .as_ref()
            .map_err(|e| JobError::Permanent(e.clone()))
    }

    pub(super) fn threads(&self) -> Result<&Arc<dyn ThreadSource>, JobError> {
        match self.source()? {
            Source::Threads(t) => Ok(t),
            Source::Stream(_) => Err(self.wrong_shape("thread lists")),
        }
    }

    pub(super) fn stream(&self) -> Result<&Arc<dyn MessageStream>, JobError> {
        match self.source()? {
            Source::Stream(s) => Ok(s),
            Source::Threads(_) => Err(self.wrong_shape("message streams")),
        }
    }

    fn wrong_shape(&self, what: &str) -> JobError {
        JobError::Permanent(format!(
            "account {} ({}) has no {what}",
            self.cfg.id, self.cfg.provider
        ))
    }

    /// Counts one provider call's outcome.
    pub(super) fn observe<T>(&self, r: &Result<T, ProviderError>) {
        super::metrics::request(self.cfg.provider, &self.cfg.id, r);
    }

    /// Takes the account's next request slot: waits for a near one, snoozes the job until
    /// a later one (it sends at once when it runs again), and parks the job while the
    /// account is paused.
    pub(super) async fn pace(&self, engine: &Engine, job: &JobCtx) -> JobResult {
        let t = std::time::Instant::now();
        let usage = match &self.source {
            Ok(Source::Threads(t)) => t.usage(),
            _ => None,
        };
        let rate = super::flow::slowed(self.cfg.requests_per_second, usage);
        let slot = engine
            .flow
            .acquire(
                &job.pool,
                &self.cfg.id,
                rate,
                &self.cfg.windows,
                job.take_woke_late(),
            )
            .await;
        super::metrics::paced(self.cfg.provider, &self.cfg.id, t.elapsed());
        match slot {
            Ok(Slot::Now) => Ok(()),
            Ok(Slot::WakeAt(at)) => Err(JobError::Snooze { at }),
            // Parked until the pause ends, but looking again at least every minute: a
            // worker that saw the pause a moment late (its cache) after a resume must not
            // park the job for the pause's whole length.
            Err(FlowError::Paused { until, reason }) => Err(self.park(until, &reason)),
            Err(FlowError::Db(e)) => Err(e.into()),
        }
    }

    /// The job waits for its account's pause to end, looking again at least every minute;
    /// a resume brings it back at once (it finds parked jobs by their reason).
    fn park(&self, until: chrono::DateTime<Utc>, reason: &str) -> JobError {
        JobError::RetryAfter {
            at: until.min(Utc::now() + Duration::seconds(PARK_RECHECK_SECS))
                + Duration::milliseconds(rand::random::<u16>() as i64 % 2000),
            reason: format!("{}{reason}", super::flow::parked_prefix(&self.cfg.id)),
        }
    }

    /// What a provider error means for the job, pausing the account where the provider
    /// said its budget is spent or its credential refused.
    pub(super) async fn classify(
        &self,
        engine: &Engine,
        pool: &PgPool,
        e: ProviderError,
    ) -> JobError {
        let provider = &self.cfg.provider;
        match e {
            // The provider locked the account out until `at`: every call before then only
            // prolongs it, so all its jobs wait, not just this one.
            ProviderError::Throttled {
                until: Some(at),
                detail,
            } if at > Utc::now() + Duration::seconds(LOCKOUT_PAUSE_SECS) => {
                let reason = format!("{provider}: {detail}; regains access at {at}");
                if let Err(e) = engine.flow.pause(pool, &self.cfg.id, at, &reason).await {
                    return e.into();
                }
                self.park(at, &reason)
            }
            ProviderError::Throttled {
                until: Some(at),
                detail,
            } => JobError::RetryAfter {
                at,
                reason: format!("{provider}: {detail}"),
            },
            ProviderError::Throttled {
                until: None,
                detail,
            } => JobError::Transient(anyhow::anyhow!("{provider}: {detail}")),
            ProviderError::QuotaSpent { until, detail } => {
                let reason = format!("{provider}: {detail}; resets at {until}");
                if let Err(e) = engine.flow.pause(pool, &self.cfg.id, until, &reason).await {
                    return e.into();
                }
                self.park(until, &reason)
            }
            ProviderError::Unauthorized(detail) => {
                let reason = format!(
                    "{provider}: {detail}: set a fresh token in {} and restart the workers",
                    self.cfg.token_env
                );
                let until = Utc::now() + Duration::minutes(UNAUTHORIZED_PAUSE_MINUTES);
                if let Err(e) = engine.flow.pause(pool, &self.cfg.id, until, &reason).await {
                    return e.into();
                }
                JobError::Permanent(reason)
            }
            ProviderError::NotFound | ProviderError::Rejected(_) => {
                JobError::Permanent(format!("{provider}: {e}"))
            }
            ProviderError::Transient(_)
            | ProviderError::Malformed(_)
            | ProviderError::StaleCursor(_) => {
                JobError::Transient(anyhow::anyhow!("{provider}: {e}"))
            }
        }
    }
}
