//! SMSEagle sync jobs: one batch of one folder above its message-id cursor, and one
//! pending-status check of one sent message. Each does its HTTP call first, then commits
//! rows, cursor, follow-up jobs, run counters and its own outcome in one fenced
//! transaction.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{Account, Config, Provider, RetryPolicy, SmsSettings};
use crate::flow::Flow;
use crate::providers::smseagle::{self as api, Sms, SmsEagleClient, SmsEagleError};
use crate::queue::{Finish, NewJob};
use crate::store::{self, MessageRow, SmsProgress};
use crate::sync::{self, Mode, Phase};
use crate::worker::{Handler, JobCtx, JobError, JobResult, Registry};

use super::Tokens;

pub const FOLDER_KIND: &str = "smseagle.folder";
pub const CHECK_KIND: &str = "smseagle.status_check";

const PROVIDER: &str = "smseagle";
const PRIORITY_FOLDER: i32 = 10;
const PRIORITY_CHECK: i32 = 5;
/// A validity counts from the modem's pickup, a few seconds after the message date; a
/// report may also land just after. Wait this long past date + validity before expiring.
const EXPIRY_GRACE_SECS: i64 = 120;
/// How long a "max" validity message may sit in the outbox before we stop following it.
const OUTBOX_FOLLOW_HOURS: i64 = 24;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FolderPayload {
    account: String,
    folder: String,
    /// Read ids above this one (a next batch); None: above the folder's cursor.
    #[serde(default)]
    after_id: Option<u64>,
    /// Full resync: ignore the cursor and read the cold-start window again.
    #[serde(default)]
    full: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckPayload {
    account: String,
    /// The gateway's message id.
    id: u64,
    /// The run that found the message; checks do not belong to it (they outlive it), but
    /// count in its counters.
    #[serde(default)]
    origin_run: Option<i64>,
}

/// Consecutive gateway failures of a check, kept across its reschedules.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CheckCheckpoint {
    failures: i32,
}

/// The configured SMSEagle accounts with their clients (built once per worker).
pub struct Accounts {
    map: HashMap<String, AccountCtx>,
    flow: Flow,
    check_retry: RetryPolicy,
    run_ends: super::RunEnds,
}

struct AccountCtx {
    cfg: Account,
    sms: SmsSettings,
    client: Result<SmsEagleClient, String>,
}

impl Accounts {
    pub fn from_config(cfg: &Config, tokens: &Tokens) -> Self {
        let map = cfg
            .accounts
            .iter()
            .filter(|a| a.provider == Provider::Smseagle)
            .filter_map(|a| {
                let sms = a.sms.clone()?;
                let client = match tokens.get(a) {
                    Some(token) if !token.is_empty() => {
                        SmsEagleClient::new(&a.base_url, token, a.request_timeout, sms.api.clone())
                            .map_err(|e| format!("account {}: cannot build HTTP client: {e}", a.id))
                    }
                    _ => Err(format!(
                        "account {}: environment variable {} (its SMSEagle token) is not set in the worker's environment",
                        a.id, a.token_env
                    )),
                };
                Some((a.id.clone(), AccountCtx { cfg: a.clone(), sms, client }))
            })
            .collect();
        Accounts {
            map,
            flow: Flow::default(),
            check_retry: cfg.policy(CHECK_KIND),
            run_ends: super::RunEnds::default(),
        }
    }

    pub(super) fn has(&self, id: &str) -> bool {
        self.map.contains_key(id)
    }

    fn get(&self, id: &str) -> Result<(&AccountCtx, &SmsEagleClient), JobError> {
        let a = self.map.get(id).ok_or_else(|| {
            JobError::Permanent(format!("no SMSEagle account {id:?} in jobs.toml"))
        })?;
        let client = a
            .client
            .as_ref()
            .map_err(|e| JobError::Permanent(e.clone()))?;
        Ok((a, client))
    }
}

pub fn register(r: &mut Registry, accounts: Arc<Accounts>) {
    r.register(
        FOLDER_KIND,
        FolderSync {
            accounts: accounts.clone(),
        },
    )
    .register(CHECK_KIND, StatusCheck { accounts });
}

/// A run's first jobs: one folder sync per configured folder.
pub(super) fn plan(
    accounts: &Accounts,
    account: &str,
    run_id: i64,
    mode: Mode,
) -> Result<Vec<NewJob>, JobError> {
    let (a, _) = accounts.get(account)?;
    Ok(a.sms
        .folders
        .iter()
        .map(|f| folder_job(a, run_id, f, None, mode == Mode::Full))
        .collect())
}

fn folder_job(
    a: &AccountCtx,
    run_id: i64,
    folder: &str,
    after_id: Option<u64>,
    full: bool,
) -> NewJob {
    let payload = FolderPayload {
        account: a.cfg.id.clone(),
        folder: folder.to_string(),
        after_id,
        full,
    };
    // Folders run one at a time, in the configured order (outbox before sentitems: a
    // message the modem picks up between the two reads is then seen in one of them).
    let rank = a.sms.folders.iter().position(|f| f == folder).unwrap_or(0);
    let rank = i32::try_from(rank).unwrap_or(i32::MAX);
    NewJob::new(
        FOLDER_KIND,
        serde_json::to_value(payload).unwrap_or_default(),
    )
    .priority(PRIORITY_FOLDER.saturating_sub(rank))
    .concurrency(format!("smseagle:{}:folders", a.cfg.id), 1)
    .run(run_id)
}

fn check_job(a: &AccountCtx, id: u64, origin_run: Option<i64>, at: DateTime<Utc>) -> NewJob {
    let payload = CheckPayload {
        account: a.cfg.id.clone(),
        id,
        origin_run,
    };
    // No run_id: a run would stay open until the last delivery settles.
    NewJob::new(
        CHECK_KIND,
        serde_json::to_value(payload).unwrap_or_default(),
    )
    .priority(PRIORITY_CHECK)
    .run_at(at)
    .dedupe(format!("smseagle:check:{}:{id}", a.cfg.id))
    .concurrency(format!("smseagle:{}", a.cfg.id), a.cfg.max_in_flight)
}

/// A run has no catch-up pass for SMS: when its last folder batch ends, it is done.
pub(super) async fn advance_run(accounts: &Accounts, pool: &sqlx::PgPool, run_id: Option<i64>) {
    let Some(run_id) = run_id else { return };
    let check = || async {
        for _ in 0..2 {
            match sync::advance_if_idle(pool, run_id, |_| Vec::new()).await {
                Ok(Phase::CatchUp) => continue,
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(run = run_id, error = %e, "could not advance the sync run; the next job end or scheduled start will");
                    return;
                }
            }
        }
    };
    accounts.run_ends.settle(run_id, check).await
}

fn classify(account: &Account, e: SmsEagleError) -> JobError {
    match e {
        SmsEagleError::Unauthorized(status) => JobError::Permanent(format!(
            "SMSEagle rejected the token in {} (HTTP {status}): set a valid token and restart the workers",
            account.token_env
        )),
        SmsEagleError::Rejected { .. } => JobError::Permanent(e.to_string()),
        SmsEagleError::Server(_) | SmsEagleError::Transport(_) | SmsEagleError::Malformed(_) => {
            JobError::Transient(e.into())
        }
    }
}

/// Our id for a gateway row: inbox and sent ids are separate series on the device, and a
/// multipart message shares its id across parts.
fn message_id(inbound: bool, id: u64, part: Option<u32>) -> String {
    let dir = if inbound { "in" } else { "out" };
    match part {
        Some(p) if p > 1 => format!("{dir}:{id}/{p}"),
        _ => format!("{dir}:{id}"),
    }
}

/// A sent message whose status we should follow, with when following ends.
struct Follow {
    id: u64,
    message_id: String,
    validity: String,
    expires_at: DateTime<Utc>,
}

/// Rows for one batch, grouped by thread (the remote number), and the sends to follow.
fn rows_of(
    batch: &[Sms],
    folder: &str,
    gateway_now: DateTime<Utc>,
) -> (BTreeMap<String, Vec<MessageRow>>, Vec<Follow>) {
    let mut threads: BTreeMap<String, Vec<MessageRow>> = BTreeMap::new();
    let mut follow = Vec::new();
    for m in batch {
        let inbound = m.folder.as_deref().unwrap_or(folder) == "inbox";
        let number = m
            .number
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "unknown".into());
        let sent_at = m.sent_at().unwrap_or_else(|| {
            tracing::warn!(
                folder,
                id = m.id,
                "unreadable message date; using the gateway's clock"
            );
            gateway_now
        });
        let status = m.status.as_deref().map(api::normalize_status);
        let id = message_id(inbound, m.id, m.sequence_position);
        let first_part = m.sequence_position.unwrap_or(1) <= 1;
        if !inbound && first_part {
            let st = status.as_deref().unwrap_or("reserved");
            let validity = m.validity.clone().unwrap_or_else(|| "max".into());
            let until = match api::validity(&validity) {
                Some(v) if !api::is_final(st) => Some(sent_at + v),
                None if st == "reserved" => Some(sent_at + Duration::hours(OUTBOX_FOLLOW_HOURS)),
                _ => None,
            };
            if let Some(expires_at) = until {
                follow.push(Follow {
                    id: m.id,
                    message_id: id.clone(),
                    validity,
                    expires_at,
                });
            }
        }
        threads.entry(number.clone()).or_default().push(MessageRow {
            message_id: id,
            sender: inbound.then(|| number.clone()),
            recipient: (!inbound).then(|| number.clone()),
            subject: None,
            body: m.text.clone(),
            is_read: m.read,
            sent_at,
            media: None,
            status,
        });
    }
    (threads, follow)
}

struct FolderSync {
    accounts: Arc<Accounts>,
}

#[async_trait::async_trait]
impl Handler for FolderSync {
    async fn run(&self, job: &JobCtx) -> JobResult {
        let p: FolderPayload = job.payload()?;
        let (a, client) = self.accounts.get(&p.account)?;
        let after_id = match (p.after_id, p.full) {
            (Some(id), _) => Some(id),
            (None, true) => None,
            (None, false) => sqlx::query_scalar::<_, i64>(
                "SELECT last_id FROM threadsync.sms_folder_cursors WHERE account_id = $1 AND folder = $2",
            )
            .bind(&a.cfg.id)
            .bind(&p.folder)
            .fetch_optional(&job.pool)
            .await?
            .and_then(|id| u64::try_from(id).ok()),
        };
        let date_from = after_id.is_none().then(|| Utc::now() - a.sms.cold_start);
        super::pace(&self.accounts.flow, &job.pool, &a.cfg).await?;
        let answer = client
            .folder(&p.folder, after_id, date_from, a.sms.batch_size)
            .await
            .map_err(|e| classify(&a.cfg, e))?;
        let full_page = answer.value.len() >= a.sms.batch_size as usize;
        // Defensive: a gateway that ignored the id parameter must not rewind the cursor.
        let batch: Vec<Sms> = answer
            .value
            .into_iter()
            .filter(|m| after_id.is_none_or(|c| m.id > c))
            .collect();
        if full_page && batch.is_empty() {
            return Err(JobError::Permanent(format!(
                "SMSEagle returned a full batch of {} with no id above {after_id:?}: it ignores the `{}` parameter (see api.id_from_param in jobs.toml)",
                p.folder,
                client.api().id_from_param
            )));
        }
        let highest = batch.iter().map(|m| m.id).max();
        let more = full_page && highest.is_some();
        let (threads, follow) = rows_of(&batch, &p.folder, answer.gateway_now);

        let mut jobs = Vec::new();
        if let (true, Some(run_id)) = (more, job.run_id) {
            jobs.push(folder_job(a, run_id, &p.folder, highest, p.full));
        }

        let mut tx = job.begin(Finish::Done).await?;
        let mut written = 0;
        for (number, rows) in &threads {
            written += store::upsert_messages(&mut tx, &a.cfg.id, number, rows).await?;
        }
        let numbers: Vec<String> = threads.into_keys().collect();
        store::upsert_threads_from_messages(&mut tx, &a.cfg.id, PROVIDER, &numbers).await?;
        if let Some(h) = highest.and_then(|h| i64::try_from(h).ok()) {
            sqlx::query(
                "INSERT INTO threadsync.sms_folder_cursors AS c (account_id, folder, last_id) VALUES ($1, $2, $3)
                 ON CONFLICT (account_id, folder) DO UPDATE SET last_id = greatest(c.last_id, excluded.last_id),
                        updated_at = now()
                  WHERE c.last_id < excluded.last_id",
            )
            .bind(&a.cfg.id)
            .bind(&p.folder)
            .bind(h)
            .execute(&mut *tx)
            .await?;
        }
        if !more && a.sms.folders.last() == Some(&p.folder) {
            // Safety net: a check that failed for good (say, a rejected token) comes back.
            jobs.extend(orphaned_checks(&mut tx, a, job.run_id).await?);
        }
        // Only messages followed from now on get a check; the others have theirs already.
        let first_check =
            Utc::now() + chrono::Duration::from_std(a.sms.check_first).unwrap_or_default();
        let tracked = track(&mut tx, &a.cfg.id, &follow).await?;
        jobs.extend(
            follow
                .iter()
                .filter(|f| tracked.contains(&f.message_id))
                .map(|f| check_job(a, f.id, job.run_id, first_check)),
        );
        crate::queue::enqueue_batch(&mut *tx, &jobs).await?;
        let progress = SmsProgress {
            sms_new: i32::try_from(written).unwrap_or(i32::MAX),
            http_calls: 1,
            ..SmsProgress::default()
        };
        store::add_sms_progress(&mut tx, job.run_id, Some(&p.folder), progress).await?;
        job.commit(tx).await
    }

    async fn after(&self, job: &JobCtx) {
        advance_run(&self.accounts, &job.pool, job.run_id).await
    }
}

/// Starts following sends first seen now (one row per message, kept when seen again).
/// Returns the message ids that were not followed before.
async fn track(
    conn: &mut sqlx::PgConnection,
    account: &str,
    follow: &[Follow],
) -> sqlx::Result<Vec<String>> {
    if follow.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "INSERT INTO threadsync.sms_deliveries (account_id, message_id, validity, expires_at)
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::timestamptz[])
         ON CONFLICT (account_id, message_id) DO NOTHING
         RETURNING message_id",
    )
    .bind(account)
    .bind(
        follow
            .iter()
            .map(|f| f.message_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        follow
            .iter()
            .map(|f| f.validity.clone())
            .collect::<Vec<_>>(),
    )
    .bind(follow.iter().map(|f| f.expires_at).collect::<Vec<_>>())
    .fetch_all(conn)
    .await
}

/// Checks for every message still followed; the dedupe key skips those already queued.
async fn orphaned_checks(
    conn: &mut sqlx::PgConnection,
    a: &AccountCtx,
    run_id: Option<i64>,
) -> sqlx::Result<Vec<NewJob>> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT d.message_id FROM threadsync.sms_deliveries d
          WHERE d.account_id = $1 AND d.outcome = 'pending'
            AND NOT EXISTS (SELECT 1 FROM threadsync.jobs j
                             WHERE j.dedupe_key = 'smseagle:check:' || d.account_id || ':' || substr(d.message_id, 5)
                               AND j.status IN ('pending', 'running'))",
    )
    .bind(&a.cfg.id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(ids
        .iter()
        .filter_map(|m| m.strip_prefix("out:")?.parse::<u64>().ok())
        .map(|id| check_job(a, id, run_id, Utc::now()))
        .collect())
}

struct StatusCheck {
    accounts: Arc<Accounts>,
}

/// Where a followed message stands after one check.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Pending,
    Final,
    Sent,
    Expired,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Final => "final",
            Outcome::Sent => "sent",
            Outcome::Expired => "expired",
        }
    }
}

fn outcome(
    status: Option<&str>,
    validity: &str,
    expires_at: DateTime<Utc>,
    gateway_now: DateTime<Utc>,
) -> Outcome {
    match status {
        Some(s) if api::is_final(s) => Outcome::Final,
        Some(s) if api::validity(validity).is_none() && s != "reserved" => Outcome::Sent,
        _ if gateway_now >= expires_at + Duration::seconds(EXPIRY_GRACE_SECS) => Outcome::Expired,
        _ => Outcome::Pending,
    }
}

/// Checks come sooner at first (most reports arrive early): `first`, then twice that,
/// and so on up to `interval`.
fn next_check(s: &SmsSettings, checks: i32) -> std::time::Duration {
    let doublings = checks.clamp(1, 20) as u32 - 1;
    s.check_first
        .saturating_mul(1u32 << doublings)
        .min(s.check_interval)
}

#[async_trait::async_trait]
impl Handler for StatusCheck {
    async fn run(&self, job: &JobCtx) -> JobResult {
        let p: CheckPayload = job.payload()?;
        let (a, client) = self.accounts.get(&p.account)?;
        let message_id = message_id(false, p.id, None);
        let row: Option<(String, DateTime<Utc>, String, i32)> = sqlx::query_as(
            "SELECT validity, expires_at, outcome, checks FROM threadsync.sms_deliveries
              WHERE account_id = $1 AND message_id = $2",
        )
        .bind(&a.cfg.id)
        .bind(&message_id)
        .fetch_optional(&job.pool)
        .await?;
        let Some((validity, expires_at, _, checks)) = row.filter(|r| r.2 == "pending") else {
            // Already settled (or never followed): nothing to ask the gateway.
            let tx = job.begin(Finish::Done).await?;
            return job.commit(tx).await;
        };
        super::pace(&self.accounts.flow, &job.pool, &a.cfg).await?;
        let answer = match client.status(p.id).await {
            Ok(answer) => answer,
            Err(
                e @ (SmsEagleError::Server(_)
                | SmsEagleError::Transport(_)
                | SmsEagleError::Malformed(_)),
            ) => {
                return self.gateway_failed(job, a, &message_id, e).await;
            }
            Err(e) => return Err(classify(&a.cfg, e)),
        };
        let status = answer
            .value
            .as_ref()
            .and_then(|m| m.status.as_deref())
            .map(api::normalize_status);
        let out = outcome(status.as_deref(), &validity, expires_at, answer.gateway_now);
        let checks = checks.saturating_add(1);
        let finish = match out {
            Outcome::Pending => Finish::Reschedule {
                at: Utc::now()
                    + chrono::Duration::from_std(next_check(&a.sms, checks)).unwrap_or_default(),
                checkpoint: Some(json!(CheckCheckpoint::default())),
            },
            _ => Finish::Done,
        };
        let mut tx = job.begin(finish).await?;
        let changed = match &status {
            Some(s) => sqlx::query(
                "UPDATE threadsync.messages SET status = $3, synced_at = now()
                  WHERE account_id = $1 AND message_id = $2 AND status IS DISTINCT FROM $3",
            )
            .bind(&a.cfg.id)
            .bind(&message_id)
            .bind(s)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            None => 0,
        };
        sqlx::query(
            "UPDATE threadsync.sms_deliveries
                SET checks = checks + 1, last_checked_at = now(), outcome = $3, last_error = NULL,
                    settled_at = CASE WHEN $3 <> 'pending' THEN now() END
              WHERE account_id = $1 AND message_id = $2",
        )
        .bind(&a.cfg.id)
        .bind(&message_id)
        .bind(out.as_str())
        .execute(&mut *tx)
        .await?;
        let progress = SmsProgress {
            checks_made: 1,
            statuses_changed: i32::from(changed > 0),
            settled: i32::from(matches!(out, Outcome::Final | Outcome::Sent)),
            expired: i32::from(out == Outcome::Expired),
            http_calls: 1,
            ..SmsProgress::default()
        };
        store::add_sms_progress(&mut tx, p.origin_run, None, progress).await?;
        job.commit(tx).await
    }
}

impl StatusCheck {
    /// The gateway is down or busy: come back after a backoff that grows with consecutive
    /// failures (capped at the check interval), without using the job's attempts, so an
    /// outage of any length delays the check and never drops it.
    async fn gateway_failed(
        &self,
        job: &JobCtx,
        a: &AccountCtx,
        message_id: &str,
        e: SmsEagleError,
    ) -> JobResult {
        let failures = job
            .checkpoint
            .as_ref()
            .and_then(|c| serde_json::from_value::<CheckCheckpoint>(c.clone()).ok())
            .unwrap_or_default()
            .failures
            .saturating_add(1);
        let wait = self
            .accounts
            .check_retry
            .backoff(failures)
            .min(a.sms.check_interval);
        tracing::warn!(account = %a.cfg.id, message = message_id, failures, error = %e, "status check failed; retrying after {wait:?}");
        let finish = Finish::Reschedule {
            at: Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default(),
            checkpoint: Some(json!(CheckCheckpoint { failures })),
        };
        let mut tx = job.begin(finish).await?;
        sqlx::query(
            "UPDATE threadsync.sms_deliveries SET last_error = $3 WHERE account_id = $1 AND message_id = $2",
        )
        .bind(&a.cfg.id)
        .bind(message_id)
        .bind(e.to_string())
        .execute(&mut *tx)
        .await?;
        job.commit(tx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        let t0 = Utc::now();
        let exp = t0 + Duration::minutes(5);
        assert_eq!(outcome(Some("delivery_ok"), "5m", exp, t0), Outcome::Final);
        assert_eq!(outcome(Some("sending_ok"), "5m", exp, t0), Outcome::Pending);
        assert_eq!(outcome(None, "5m", exp, t0), Outcome::Pending);
        assert_eq!(
            outcome(Some("sending_ok"), "5m", exp, exp + Duration::minutes(3)),
            Outcome::Expired
        );
        assert_eq!(outcome(Some("sending_ok"), "max", exp, t0), Outcome::Sent);
        assert_eq!(outcome(Some("reserved"), "max", exp, t0), Outcome::Pending);
    }

    #[test]
    fn checks_come_sooner_at_first() {
        let s = SmsSettings {
            folders: vec!["inbox".into()],
            batch_size: 500,
            cold_start: Duration::days(7),
            check_first: std::time::Duration::from_secs(30),
            check_interval: std::time::Duration::from_secs(300),
            api: Default::default(),
        };
        let secs: Vec<u64> = (1..=6).map(|n| next_check(&s, n).as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 300, 300]);
    }
}
