//! `<provider>.status_check`: one delivery-status check of a followed message. It
//! reschedules itself until the provider's answer is final or the message expired; a
//! provider outage delays the check without using attempts, so it is never dropped.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::queue::Finish;
use crate::worker::{Handler, JobCtx, JobResult};

use super::engine::{Account, Engine};
use super::plan::CheckPayload;
use super::store::{self, Progress};
use super::vocab::{Delivery, ProviderError};

pub struct StatusCheck {
    pub provider: &'static str,
    pub engine: Arc<Engine>,
}

/// Consecutive provider failures of a check, kept across its reschedules.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CheckCheckpoint {
    failures: i32,
}

/// Checks come sooner at first (most reports arrive early): `first`, then twice that,
/// and so on up to `interval`.
fn next_check(first: Duration, interval: Duration, checks: i32) -> Duration {
    let doublings = checks.clamp(1, 20) as u32 - 1;
    first.saturating_mul(1u32 << doublings).min(interval)
}

fn after(wait: Duration) -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default()
}

#[async_trait::async_trait]
impl Handler for StatusCheck {
    async fn run(&self, job: &JobCtx) -> JobResult {
        let p: CheckPayload = job.payload()?;
        let account = self.engine.get(self.provider, &p.account)?;
        let source = account.stream()?;
        let a = &account.cfg;
        let followed = store::followed(&job.pool, &a.id, p.id).await?;
        let Some(f) = followed.filter(|f| f.outcome == Delivery::Pending.as_str()) else {
            // Already settled (or never followed): nothing to ask the provider.
            let tx = job.begin(Finish::Done).await?;
            return job.commit(tx).await;
        };
        account.pace(&self.engine, job).await?;
        let answer = source.check(p.id, &f.validity, f.expires_at).await;
        account.observe(&answer);
        let answer = match answer {
            Ok(answer) => answer,
            Err(e @ (ProviderError::Transient(_) | ProviderError::Malformed(_))) => {
                return self.provider_failed(job, account, &f.message_id, e).await;
            }
            Err(e) => return Err(account.classify(&self.engine, &job.pool, e).await),
        };
        let checks = f.checks.saturating_add(1);
        let (first, interval) = source.check_times();
        let finish = match answer.outcome {
            Delivery::Pending => Finish::Reschedule {
                at: after(next_check(first, interval, checks)),
                checkpoint: Some(json!(CheckCheckpoint::default())),
            },
            _ => Finish::Done,
        };
        let mut tx = job.begin(finish).await?;
        let changed = store::record_check(
            &mut tx,
            &a.id,
            &f.message_id,
            answer.status.as_deref(),
            answer.outcome.as_str(),
        )
        .await?;
        let progress = Progress {
            checks_made: 1,
            statuses_changed: i32::from(changed),
            settled: i32::from(matches!(answer.outcome, Delivery::Final | Delivery::Sent)),
            expired: i32::from(answer.outcome == Delivery::Expired),
            http_calls: 1,
            ..Progress::default()
        };
        store::add_progress(&mut tx, p.origin_run, None, &progress).await?;
        job.commit(tx).await
    }
}

impl StatusCheck {
    /// The provider is down or busy: come back after a backoff that grows with
    /// consecutive failures (capped at the check interval), without using the job's
    /// attempts, so an outage of any length delays the check and never drops it.
    async fn provider_failed(
        &self,
        job: &JobCtx,
        account: &Account,
        message_id: &str,
        e: ProviderError,
    ) -> JobResult {
        let a = &account.cfg;
        let failures = job
            .checkpoint
            .as_ref()
            .and_then(|c| serde_json::from_value::<CheckCheckpoint>(c.clone()).ok())
            .unwrap_or_default()
            .failures
            .saturating_add(1);
        let (_, interval) = account.stream()?.check_times();
        let wait = self
            .engine
            .check_retry(self.provider)
            .backoff(failures)
            .min(interval);
        tracing::warn!(account = %a.id, message = message_id, failures, error = %e, "status check failed; retrying after {wait:?}");
        let finish = Finish::Reschedule {
            at: after(wait),
            checkpoint: Some(json!(CheckCheckpoint { failures })),
        };
        let mut tx = job.begin(finish).await?;
        store::record_check_failure(&mut tx, &a.id, message_id, &e.to_string()).await?;
        job.commit(tx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_come_sooner_at_first() {
        let (first, interval) = (Duration::from_secs(30), Duration::from_secs(300));
        let secs: Vec<u64> = (1..=6)
            .map(|n| next_check(first, interval, n).as_secs())
            .collect();
        assert_eq!(secs, [30, 60, 120, 240, 300, 300]);
    }
}
