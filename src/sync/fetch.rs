//! `<provider>.conversation`: every page of one thread's messages. It checkpoints its
//! page after each one, in the same group commit as that page's messages, and upserts by
//! message id. The same kind at priority 100 is the web app's refresh.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::queue::Finish;
use crate::worker::{Handler, JobCtx, JobError, JobResult};

use super::engine::Engine;
use super::plan::FetchPayload;
use super::store::{self, Progress};
use super::vocab::{ListRole, PageAt, ProviderError};

pub struct FetchThread {
    pub provider: &'static str,
    pub engine: Arc<Engine>,
}

/// Where the fetch resumes: the page after the last one committed.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    #[serde(default)]
    offset: u32,
    #[serde(default)]
    cursor: Option<String>,
}

impl Checkpoint {
    fn at(&self) -> PageAt {
        match &self.cursor {
            Some(c) => PageAt::Cursor(c.clone()),
            None => PageAt::Offset(self.offset),
        }
    }

    fn of(at: &PageAt) -> Checkpoint {
        match at {
            PageAt::Offset(o) => Checkpoint {
                offset: *o,
                cursor: None,
            },
            PageAt::Cursor(c) => Checkpoint {
                offset: 0,
                cursor: Some(c.clone()),
            },
        }
    }
}

#[async_trait::async_trait]
impl Handler for FetchThread {
    async fn run(&self, job: &JobCtx) -> JobResult {
        let p: FetchPayload = job.payload()?;
        let account = self.engine.get(self.provider, &p.account)?;
        let source = account.threads()?;
        let a = &account.cfg;
        let run_id = job.run_id;
        let list = match p.list {
            Some(l) => Some(l),
            None => store::thread_list(&job.pool, &a.id, &p.thread_id).await?,
        };
        let checkpoint = job
            .checkpoint
            .as_ref()
            .and_then(|c| serde_json::from_value::<Checkpoint>(c.clone()).ok());
        let head = Checkpoint::default().at();
        let fresh = checkpoint.is_none() && p.from.is_none();
        let mut at = match (checkpoint, p.from) {
            (Some(c), _) => c.at(),
            (None, Some(from)) => from,
            (None, None) => head.clone(),
        };
        // Where a groups feed and a list both name a thread (a booking's conversations and
        // the head of the conversation list), a run's second fetch of it, enqueued while the
        // first was ending, has nothing left to read: the newest message listed is held.
        let named_twice = source.lists().iter().any(|l| l.role == ListRole::Groups);
        if fresh
            && named_twice
            && run_id.is_some()
            && store::listed_message_held(&job.pool, &a.id, &p.thread_id).await?
        {
            let mut tx = job.begin(Finish::Done).await?;
            store::add_progress(&mut tx, run_id, None, &Progress::default()).await?;
            return job.commit(tx).await;
        }
        let held = match source.newest_first() || (source.appends() && fresh) {
            true => store::fetched_ids(&job.pool, &a.id, std::slice::from_ref(&p.thread_id))
                .await?
                .remove(&p.thread_id),
            false => None,
        };
        // Appended pages resume at the newest message a complete fetch holds, which the
        // first page must show first (else messages were removed and offsets moved: read
        // from the head). Newest-first pages stop where they reach it.
        let mut resume_at: Option<String> = None;
        if let (true, Some(k)) = (source.appends(), &held) {
            let count = store::message_count(&job.pool, &a.id, &p.thread_id).await?;
            if let Some(offset) = u32::try_from(count).ok().and_then(|c| c.checked_sub(1)) {
                at = PageAt::Offset(offset);
                resume_at = Some(k.message_id.clone());
            }
        }
        let marker = held.filter(|_| source.newest_first());
        let mut restarted = false;
        loop {
            if let Err(e) = source.ready().await {
                return Err(account.classify(&self.engine, &job.pool, e).await);
            }
            account.pace(&self.engine, job).await?;
            let page = source.messages(&p.thread_id, list.as_deref(), &at).await;
            account.observe(&page);
            let page = match page {
                Ok(page) => page,
                // The message the cursor pointed to is gone: read the thread from its first
                // page again (rows already written are upserted unchanged), once per attempt.
                Err(ProviderError::StaleCursor(_)) if !restarted && at != head => {
                    restarted = true;
                    at = head.clone();
                    continue;
                }
                // A refresh (no run) of a thread the provider does not have fails saying so,
                // after marking the thread deleted where it is held.
                Err(ProviderError::NotFound) if run_id.is_none() => {
                    let mut tx = job
                        .begin(Finish::Checkpoint(json!(Checkpoint::of(&at))))
                        .await?;
                    store::mark_deleted(&mut tx, &a.id, &p.thread_id).await?;
                    job.commit(tx).await?;
                    return Err(JobError::Permanent(format!(
                        "{}: thread {} not found at the provider",
                        a.provider, p.thread_id
                    )));
                }
                Err(ProviderError::NotFound) => {
                    // Deleted between list and fetch: not an error for the run.
                    let mut tx = job.begin(Finish::Done).await?;
                    store::mark_deleted(&mut tx, &a.id, &p.thread_id).await?;
                    let progress = Progress {
                        threads_deleted: 1,
                        http_calls: 1,
                        ..Progress::default()
                    };
                    store::add_progress(&mut tx, run_id, None, &progress).await?;
                    return job.commit(tx).await;
                }
                Err(e) => return Err(account.classify(&self.engine, &job.pool, e).await),
            };
            let listed = page.messages.len();
            let mut progress = Progress::default();
            let rows = progress.take_good(page.messages);
            if let Some(expected) = resume_at.take() {
                if rows.first().map(|m| &m.message_id) != Some(&expected) {
                    at = head.clone();
                    continue;
                }
            }
            // An offset page with no rows is the end, whatever `next` says; a cursor page
            // may be empty while more follow.
            let next = match page.next {
                Some(PageAt::Offset(_)) if listed == 0 => None,
                _ if marker.as_ref().is_some_and(|k| k.reached_by(rows.iter())) => None,
                next => next.filter(|n| *n != at),
            };
            let finish = match &next {
                Some(n) => Finish::Checkpoint(json!(Checkpoint::of(n))),
                None => Finish::Done,
            };
            let commit = store::ConversationPage {
                account: a.id.clone(),
                provider: a.provider,
                thread_id: p.thread_id.clone(),
                rows,
                complete: next.is_none(),
                run_id,
                bad_rows: progress.bad_rows,
                bad_row: progress.bad_row,
            };
            job.commit_grouped(&self.engine.pages, finish, commit)
                .await?;
            match next {
                Some(n) => at = n,
                None => return Ok(()),
            }
        }
    }

    async fn after(&self, job: &JobCtx) {
        super::start::advance_run(&self.engine, &job.pool, job.run_id).await
    }
}
