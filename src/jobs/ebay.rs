//! eBay sync jobs: plan a run, list one page, fetch one conversation. Each does its HTTP
//! calls first, then commits rows, follow-up jobs, checkpoint, run progress and its own
//! completion in one fenced transaction.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;

use crate::config::{Account, Config, Provider};
use crate::flow::Flow;
use crate::providers::ebay::{self, EbayClient, EbayError, FROM_EBAY, FROM_MEMBERS, PAGE_LIMIT};
use crate::queue::{Finish, NewJob};
use crate::store::{self, MessageRow, Progress, ThreadRow};
use crate::sync::{self, Mode};
use crate::worker::group_commit::GroupCommit;
use crate::worker::{Handler, JobCtx, JobError, JobResult, Registry};

use super::Tokens;

pub const LIST_KIND: &str = "ebay.list_page";
pub const CONVERSATION_KIND: &str = "ebay.conversation";

/// Incremental start_time and catch-up cutoffs reach back this far: clock skew between us
/// and eBay, and messages committed late on their side.
const LOOKBACK_MINUTES: i64 = 10;

const PRIORITY_LIST: i32 = 10;
const PRIORITY_CONVERSATION: i32 = 0;

/// How a list page decides which page comes next.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "walk")]
enum Walk {
    /// First page: fan out every remaining page at once from `total`.
    Fanout,
    /// A fanned-out page planned when the list had `total` entries; the last one follows
    /// `next` if the list grew.
    Planned { last: bool, total: u32 },
    /// Follow `next` one page at a time; `total` as the previous page saw it.
    Next { total: Option<u32> },
    /// Recency order: keep going only while a page still holds changed threads or
    /// activity since `cutoff` or, with `until_all_seen`, while the list holds more threads
    /// than the run has listed.
    EarlyStop {
        cutoff: DateTime<Utc>,
        #[serde(default)]
        until_all_seen: bool,
    },
}

// No deny_unknown_fields here: serde does not support it together with `flatten`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ListPayload {
    account: String,
    conversation_type: String,
    offset: u32,
    #[serde(default)]
    start_time: Option<DateTime<Utc>>,
    #[serde(flatten)]
    walk: Walk,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConversationPayload {
    account: String,
    thread_id: String,
    #[serde(default)]
    conversation_type: Option<String>,
}

/// The configured eBay accounts with their clients (built once per worker).
pub struct Accounts {
    map: HashMap<String, AccountCtx>,
    flow: Flow,
    run_ends: super::RunEnds,
    /// Conversation pages of concurrent jobs commit together.
    pages: GroupCommit<store::ConversationPages>,
}

struct AccountCtx {
    cfg: Account,
    client: Result<EbayClient, String>,
}

impl Accounts {
    pub fn from_config(cfg: &Config, tokens: &Tokens) -> Self {
        let map = cfg
            .accounts
            .iter()
            .filter(|a| a.provider == Provider::Ebay)
            .map(|a| {
                let client = match tokens.get(a) {
                    Some(token) if !token.is_empty() => EbayClient::new(&a.base_url, token, a.request_timeout)
                        .map_err(|e| format!("account {}: cannot build HTTP client: {e}", a.id)),
                    _ => Err(format!(
                        "account {}: environment variable {} (its eBay token) is not set in the worker's environment",
                        a.id, a.token_env
                    )),
                };
                (a.id.clone(), AccountCtx { cfg: a.clone(), client })
            })
            .collect();
        Accounts {
            map,
            flow: Flow::default(),
            run_ends: super::RunEnds::default(),
            pages: GroupCommit::default(),
        }
    }

    pub(super) fn has(&self, id: &str) -> bool {
        self.map.contains_key(id)
    }

    fn get(&self, id: &str) -> Result<(&Account, &EbayClient), JobError> {
        let a = self
            .map
            .get(id)
            .ok_or_else(|| JobError::Permanent(format!("no eBay account {id:?} in jobs.toml")))?;
        let client = a
            .client
            .as_ref()
            .map_err(|e| JobError::Permanent(e.clone()))?;
        Ok((&a.cfg, client))
    }
}

pub fn register(r: &mut Registry, accounts: Arc<Accounts>) {
    r.register(
        LIST_KIND,
        ListPage {
            accounts: accounts.clone(),
        },
    )
    .register(CONVERSATION_KIND, FetchConversation { accounts });
}

fn list_job(
    account: &Account,
    run_id: i64,
    ctype: &str,
    offset: u32,
    start_time: Option<DateTime<Utc>>,
    walk: Walk,
) -> NewJob {
    let payload = ListPayload {
        account: account.id.clone(),
        conversation_type: ctype.to_string(),
        offset,
        start_time,
        walk,
    };
    NewJob::new(LIST_KIND, serde_json::to_value(payload).unwrap_or_default())
        .priority(PRIORITY_LIST)
        .concurrency(account_key(&account.id), account.max_in_flight)
        .run(run_id)
}

/// One fetch per thread at a time, whoever asks (a run, or the web app's refresh).
pub fn conversation_dedupe_key(account: &str, thread_id: &str) -> String {
    format!("ebay:conversation:{account}:{thread_id}")
}

fn account_key(account: &str) -> String {
    format!("ebay:{account}")
}

fn conversation_job(
    account: &Account,
    run_id: Option<i64>,
    thread_id: &str,
    ctype: &str,
) -> NewJob {
    let mut job = NewJob::new(
        CONVERSATION_KIND,
        json!({"account": account.id, "thread_id": thread_id, "conversation_type": ctype}),
    )
    .priority(PRIORITY_CONVERSATION)
    .dedupe(conversation_dedupe_key(&account.id, thread_id))
    .concurrency(account_key(&account.id), account.max_in_flight);
    if let Some(r) = run_id {
        job = job.run(r);
    }
    job
}

/// Jobs that re-read the head of both lists after the main pass: threads that gained
/// messages while the run paged through them jumped ahead of its offsets.
///
/// Each jump also pushes every thread above the old position one place down. The main
/// pass reads its fanned-out pages in parallel, in no set order, so a thread pushed from a
/// page not yet read onto one already read is listed by neither. After a main pass over
/// whole lists the catch-up therefore reads on, page by page (where a push only repeats a
/// thread), until the run has listed as many threads as the list holds.
fn catch_up_jobs(account: &Account, run_id: i64, main: sync::MainPass) -> Vec<NewJob> {
    let walk = Walk::EarlyStop {
        cutoff: main.started_at - Duration::minutes(LOOKBACK_MINUTES),
        until_all_seen: main.walked_whole_lists,
    };
    [FROM_MEMBERS, FROM_EBAY]
        .into_iter()
        .map(|t| list_job(account, run_id, t, 0, None, walk))
        .collect()
}

/// After any job of a run ends (done or failed for good), the last one moves the run on.
pub(super) async fn advance_run(
    accounts: &Accounts,
    pool: &PgPool,
    account: &str,
    run_id: Option<i64>,
) {
    let Some(run_id) = run_id else { return };
    let Some(account) = accounts.map.get(account) else {
        return;
    };
    let account = &account.cfg;
    let check = || async {
        if let Err(e) =
            sync::advance_if_idle(pool, run_id, |main| catch_up_jobs(account, run_id, main)).await
        {
            tracing::warn!(run = run_id, error = %e, "could not advance the sync run; the next job end or scheduled start will");
        }
    };
    accounts.run_ends.settle(run_id, check).await
}

/// What an eBay error means for the job (and maybe for the whole account).
async fn classify(
    flow: &Flow,
    pool: &PgPool,
    account: &Account,
    client: &EbayClient,
    e: EbayError,
) -> JobError {
    match e {
        EbayError::RateLimited => match client.quota().await {
            Ok(Some(q)) if q.remaining <= 0 => {
                let until = q.reset.unwrap_or_else(|| Utc::now() + Duration::hours(1));
                let reason =
                    format!("eBay daily quota exhausted (429 errorId 2001); resets at {until}");
                if let Err(e) = flow.pause(pool, &account.id, until, &reason).await {
                    return e.into();
                }
                JobError::RetryAfter { at: until, reason }
            }
            Ok(_) => JobError::Transient(anyhow::anyhow!(
                "eBay burst rate limit (429 errorId 2001, quota not exhausted)"
            )),
            Err(q) => JobError::Transient(anyhow::anyhow!(
                "eBay 429, and the quota lookup failed: {q}"
            )),
        },
        EbayError::Unauthorized(status) => {
            let reason = format!(
                "eBay rejected the token in {} (HTTP {status}): set a fresh token and restart the workers",
                account.token_env
            );
            if let Err(e) = flow
                .pause(
                    pool,
                    &account.id,
                    Utc::now() + Duration::minutes(5),
                    &reason,
                )
                .await
            {
                return e.into();
            }
            JobError::Permanent(reason)
        }
        EbayError::Rejected { .. } | EbayError::NotFound => JobError::Permanent(e.to_string()),
        EbayError::Server(_) | EbayError::Transport(_) | EbayError::Malformed(_) => {
            JobError::Transient(e.into())
        }
    }
}

/// The first jobs of a run: both lists, from the watermark when incremental.
pub(super) async fn plan(
    accounts: &Accounts,
    pool: &PgPool,
    account_id: &str,
    run_id: i64,
    mode: Mode,
) -> Result<Vec<NewJob>, JobError> {
    let (account, _) = accounts.get(account_id)?;
    let watermark: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT members_synced_from FROM threadsync.accounts WHERE id = $1")
            .bind(&account.id)
            .fetch_optional(pool)
            .await?
            .flatten();
    Ok(match (mode, watermark) {
        (Mode::Incremental, Some(w)) => {
            let since = w - Duration::minutes(LOOKBACK_MINUTES);
            vec![
                // start_time works only for FROM_MEMBERS; eBay's own messages come newest first.
                list_job(account, run_id, FROM_MEMBERS, 0, Some(since), Walk::Fanout),
                list_job(
                    account,
                    run_id,
                    FROM_EBAY,
                    0,
                    None,
                    Walk::EarlyStop {
                        cutoff: since,
                        until_all_seen: false,
                    },
                ),
            ]
        }
        // Full, or incremental with no completed run yet: walk both lists.
        _ => vec![
            list_job(account, run_id, FROM_MEMBERS, 0, None, Walk::Fanout),
            list_job(account, run_id, FROM_EBAY, 0, None, Walk::Fanout),
        ],
    })
}

struct ListPage {
    accounts: Arc<Accounts>,
}

#[async_trait::async_trait]
impl Handler for ListPage {
    async fn run(&self, job: &JobCtx) -> JobResult {
        let p: ListPayload = job.payload()?;
        let (account, client) = self.accounts.get(&p.account)?;
        let run_id = job.run_id;
        super::pace(&self.accounts.flow, &job.pool, account).await?;
        let page = match client
            .conversations(&p.conversation_type, p.offset, p.start_time)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                return Err(classify(&self.accounts.flow, &job.pool, account, client, e).await)
            }
        };

        let ids: Vec<String> = page
            .conversations
            .iter()
            .map(|c| c.conversation_id.clone())
            .collect();
        let fetched = store::fetched_ids(&job.pool, &account.id, &ids).await?;
        let mut follow_ups = Vec::new();
        let mut recent = false;
        let cutoff = match p.walk {
            Walk::EarlyStop { cutoff, .. } => Some(cutoff),
            _ => None,
        };
        for c in &page.conversations {
            let latest = c.latest_message.as_ref();
            let changed = match latest {
                Some(m) => fetched.get(&c.conversation_id) != Some(&m.message_id),
                None => !fetched.contains_key(&c.conversation_id),
            };
            if changed {
                let ctype = c
                    .conversation_type
                    .as_deref()
                    .unwrap_or(&p.conversation_type);
                follow_ups.push(conversation_job(account, run_id, &c.conversation_id, ctype));
            }
            if let (Some(m), Some(cut)) = (latest, cutoff) {
                recent |= m.created_date >= cut;
            }
        }
        let changed = follow_ups.len();
        // Counted before this page's threads are written: at worst one page too many.
        let unseen = match (p.walk, run_id, page.total) {
            (
                Walk::EarlyStop {
                    until_all_seen: true,
                    ..
                },
                Some(run_id),
                Some(total),
            ) => {
                let seen = store::threads_listed_in_run(
                    &job.pool,
                    &account.id,
                    &p.conversation_type,
                    run_id,
                )
                .await?;
                total > seen
            }
            _ => false,
        };
        let rows: Vec<ThreadRow> = page
            .conversations
            .iter()
            .map(|c| thread_row(c, &p.conversation_type))
            .collect();
        if let Some(run_id) = run_id {
            follow_ups.extend(next_pages(
                account,
                run_id,
                &p,
                &page,
                changed > 0 || recent || unseen,
            ));
        }

        let mut tx = job.begin(Finish::Done).await?;
        crate::queue::enqueue_batch(&mut *tx, &follow_ups).await?;
        let progress = Progress {
            pages_listed: 1,
            threads_seen: rows.len() as i32,
            threads_skipped: (rows.len() - changed) as i32,
            http_calls: 1,
            ..Progress::default()
        };
        store::add_progress(&mut tx, run_id, progress).await?;
        // Last, so the thread rows (which overlapping pages also write) stay locked briefly.
        store::upsert_threads(&mut tx, &account.id, "ebay", &rows).await?;
        job.commit(tx).await
    }

    async fn after(&self, job: &JobCtx) {
        let account = job.payload["account"].as_str().unwrap_or_default();
        advance_run(&self.accounts, &job.pool, account, job.run_id).await
    }
}

fn next_pages(
    account: &Account,
    run_id: i64,
    p: &ListPayload,
    page: &ebay::ConversationsPage,
    keep_going: bool,
) -> Vec<NewJob> {
    let has_next = page.next.is_some() && !page.conversations.is_empty();
    let total = page.total.map(|t| t.max(0) as u32);
    let job = |offset, walk| {
        list_job(
            account,
            run_id,
            &p.conversation_type,
            offset,
            p.start_time,
            walk,
        )
    };
    let mut jobs = Vec::new();
    // Offset pages over a live list: if entries ahead of this page vanished since the page
    // before was planned (deleted threads), everything moved up and the first entries of this
    // page's range slid into a page already read. Re-read that strip.
    let expected = match p.walk {
        Walk::Planned { total, .. } => Some(total),
        Walk::Next { total } => total,
        _ => None,
    };
    if let (Some(expected), Some(now)) = (expected, total) {
        if now < expected && p.offset > 0 {
            let shift = (expected - now).min(PAGE_LIMIT);
            jobs.push(job(
                p.offset.saturating_sub(shift),
                Walk::Planned {
                    last: false,
                    total: now,
                },
            ));
        }
    }
    match p.walk {
        Walk::Fanout => match total {
            Some(total) if has_next => {
                let offsets: Vec<u32> = (1..)
                    .map(|k| k * PAGE_LIMIT)
                    .take_while(|o| *o < total)
                    .collect();
                let n = offsets.len();
                jobs.extend(offsets.into_iter().enumerate().map(|(i, o)| {
                    job(
                        o,
                        Walk::Planned {
                            last: i + 1 == n,
                            total,
                        },
                    )
                }));
            }
            _ if has_next => jobs.push(job(p.offset + PAGE_LIMIT, Walk::Next { total })),
            _ => {}
        },
        // The list grew since the first page: keep following it.
        Walk::Planned { last: true, .. } | Walk::Next { .. } if has_next => {
            jobs.push(job(p.offset + PAGE_LIMIT, Walk::Next { total }))
        }
        Walk::EarlyStop { .. } if has_next && keep_going => {
            jobs.push(job(p.offset + PAGE_LIMIT, p.walk))
        }
        _ => {}
    }
    jobs
}

fn thread_row(c: &ebay::Conversation, listed_type: &str) -> ThreadRow {
    ThreadRow {
        thread_id: c.conversation_id.clone(),
        conversation_type: Some(
            c.conversation_type
                .clone()
                .unwrap_or_else(|| listed_type.to_string()),
        ),
        title: c.conversation_title.clone(),
        status: c.conversation_status.clone(),
        reference_id: c.reference_id.clone(),
        reference_type: c.reference_type.clone(),
        unread_count: c.unread_count.unwrap_or(0),
        latest_message_id: c.latest_message.as_ref().map(|m| m.message_id.clone()),
        latest_message_at: c.latest_message.as_ref().map(|m| m.created_date),
        created_at: c.created_date,
    }
}

fn message_row(m: ebay::MessageDetail) -> MessageRow {
    MessageRow {
        message_id: m.message_id,
        sender: m.sender_username,
        recipient: m.recipient_username,
        subject: m.subject,
        body: m.message_body,
        is_read: m.read_status,
        sent_at: m.created_date,
        media: m.message_media.filter(|v| !v.is_null()),
        status: None,
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ConversationCheckpoint {
    offset: u32,
}

struct FetchConversation {
    accounts: Arc<Accounts>,
}

#[async_trait::async_trait]
impl Handler for FetchConversation {
    async fn run(&self, job: &JobCtx) -> JobResult {
        let p: ConversationPayload = job.payload()?;
        let (account, client) = self.accounts.get(&p.account)?;
        let run_id = job.run_id;
        let ctype = match p.conversation_type {
            Some(t) => t,
            None => sqlx::query_scalar::<_, Option<String>>(
                "SELECT conversation_type FROM threadsync.threads WHERE account_id = $1 AND thread_id = $2",
            )
            .bind(&account.id)
            .bind(&p.thread_id)
            .fetch_optional(&job.pool)
            .await?
            .flatten()
            .unwrap_or_else(|| FROM_MEMBERS.to_string()),
        };
        let mut offset = job
            .checkpoint
            .as_ref()
            .and_then(|c| serde_json::from_value::<ConversationCheckpoint>(c.clone()).ok())
            .unwrap_or_default()
            .offset;
        loop {
            super::pace(&self.accounts.flow, &job.pool, account).await?;
            let page = match client.messages(&p.thread_id, &ctype, offset).await {
                Ok(page) => page,
                Err(EbayError::NotFound) => {
                    // Deleted between list and fetch: not an error for the run.
                    let mut tx = job.begin(Finish::Done).await?;
                    store::mark_deleted(&mut tx, &account.id, &p.thread_id).await?;
                    let progress = Progress {
                        threads_deleted: 1,
                        http_calls: 1,
                        ..Progress::default()
                    };
                    store::add_progress(&mut tx, run_id, progress).await?;
                    return job.commit(tx).await;
                }
                Err(e) => {
                    return Err(classify(&self.accounts.flow, &job.pool, account, client, e).await)
                }
            };
            let more = page.next.is_some() && !page.messages.is_empty();
            let rows: Vec<MessageRow> = page.messages.into_iter().map(message_row).collect();
            let finish = if more {
                Finish::Checkpoint(json!({"offset": offset + PAGE_LIMIT}))
            } else {
                Finish::Done
            };
            let page = store::ConversationPage {
                account: account.id.clone(),
                provider: "ebay",
                thread_id: p.thread_id.clone(),
                rows,
                complete: !more,
                run_id,
            };
            job.commit_grouped(&self.accounts.pages, finish, page)
                .await?;
            if !more {
                return Ok(());
            }
            offset += PAGE_LIMIT;
        }
    }

    async fn after(&self, job: &JobCtx) {
        let account = job.payload["account"].as_str().unwrap_or_default();
        advance_run(&self.accounts, &job.pool, account, job.run_id).await
    }
}
