//! `<provider>.list_page`: one page of a thread list. It upserts the thread rows, enqueues
//! a fetch for every thread whose latest message differs from the newest one held, and
//! plans the pages after it, all in one fenced transaction with its counters.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::AccountConfig;
use crate::queue::Finish;
use crate::worker::{Handler, JobCtx, JobError, JobResult};

use super::engine::Engine;
use super::plan::{self, ListPayload, Walk, MAX_FANOUT};
use super::store::{self, Progress};
use super::vocab::{Group, ListRole, MessageRow, PageAt, ProviderError, ThreadPage};

pub struct ListPage {
    pub provider: &'static str,
    pub engine: Arc<Engine>,
}

#[async_trait::async_trait]
impl Handler for ListPage {
    async fn run(&self, job: &JobCtx) -> JobResult {
        let p: ListPayload = job.payload()?;
        let account = self.engine.get(self.provider, &p.account)?;
        let source = account.threads()?;
        let a = &account.cfg;
        let run_id = job.run_id;
        let at = match &p.cursor {
            Some(c) => PageAt::Cursor(c.clone()),
            None => PageAt::Offset(p.offset),
        };
        if let Err(e) = source.ready().await {
            return Err(account.classify(&self.engine, &job.pool, e).await);
        }
        account.pace(&self.engine, job).await?;
        let page = source.list(&p.list, &at, p.since).await;
        account.observe(&page);
        let page = match page {
            Ok(page) => page,
            Err(ProviderError::StaleCursor(detail)) if p.cursor.is_some() => {
                return restart(job, a, &p, &detail).await;
            }
            // A group gone since it was listed (a deleted booking) holds nothing to read.
            Err(ProviderError::NotFound) if p.group_version.is_some() => {
                let progress = Progress {
                    http_calls: 1,
                    ..Progress::default()
                };
                let mut tx = job.begin(Finish::Done).await?;
                store::add_progress(&mut tx, run_id, None, &progress).await?;
                return job.commit(tx).await;
            }
            Err(e) => return Err(account.classify(&self.engine, &job.pool, e).await),
        };
        let ThreadPage {
            threads,
            total,
            next,
            mut inline,
            groups,
        } = page;
        let mut progress = Progress {
            pages_listed: 1,
            http_calls: 1,
            ..Progress::default()
        };
        let listed = threads.len() + groups.len();
        let mut rows = progress.take_good(threads);
        let groups = progress.take_good(groups);
        for r in &mut rows {
            r.conversation_type.get_or_insert_with(|| p.list.clone());
        }

        let ids: Vec<String> = rows.iter().map(|r| r.thread_id.clone()).collect();
        let fetched = store::fetched_ids(&job.pool, &a.id, &ids).await?;
        let (cutoff, ordered) = match p.walk {
            Walk::EarlyStop {
                cutoff, ordered, ..
            } => (Some(cutoff), ordered),
            _ => (None, false),
        };
        // Entries with a time before the cutoff: in a strictly ordered list, the end.
        let mut older = 0;
        let mut follow_ups = Vec::new();
        // Messages the list carried inline, and the threads they complete.
        let mut messages: BTreeMap<String, Vec<MessageRow>> = BTreeMap::new();
        let mut complete: Vec<(String, String)> = Vec::new();
        let mut changed = 0;
        let mut recent = false;
        for r in &rows {
            let marker = fetched.get(&r.thread_id);
            let is_changed = match &r.latest_message_id {
                Some(m) => marker.map(|k| &k.message_id) != Some(m),
                None => marker.is_none(),
            };
            if let (Some(at), Some(cut)) = (r.latest_message_at, cutoff) {
                recent |= at >= cut;
                older += usize::from(at < cut);
            }
            if !is_changed {
                continue;
            }
            changed += 1;
            let list = r.conversation_type.as_deref();
            let Some(first) = inline.remove(&r.thread_id) else {
                follow_ups.push(plan::fetch_job(a, run_id, &r.thread_id, list, None));
                continue;
            };
            let rows = progress.take_good(first.messages);
            // Inline messages complete the thread when they are all of it or reach back
            // to what a complete fetch already holds; else a fetch reads on from there.
            match first.next {
                Some(next) if !marker.is_some_and(|k| k.reached_by(rows.iter())) => {
                    follow_ups.push(plan::fetch_job(a, run_id, &r.thread_id, list, Some(next)));
                }
                _ => {
                    let newest = r
                        .latest_message_id
                        .clone()
                        .or_else(|| rows.first().map(|m| m.message_id.clone()));
                    complete.extend(newest.map(|m| (r.thread_id.clone(), m)));
                }
            }
            messages.insert(r.thread_id.clone(), rows);
        }
        let scan = scan_groups(&job.pool, a, run_id, &groups, cutoff).await?;
        recent |= scan.recent;
        older += scan.older;
        let groups_changed = scan.jobs.len();
        follow_ups.extend(scan.jobs);
        // Counted before this page's threads are written: at worst one page too many.
        let unseen = match (p.walk, run_id, total) {
            (
                Walk::EarlyStop {
                    until_all_seen: true,
                    ..
                },
                Some(run_id),
                Some(total),
            ) => {
                // A list of every thread counts them all; else those of its type.
                let every = source
                    .lists()
                    .iter()
                    .any(|l| l.name == p.list && l.role == ListRole::All);
                let of_type = (!every).then_some(p.list.as_str());
                let seen = store::threads_listed_in_run(&job.pool, &a.id, of_type, run_id).await?;
                i64::from(total) > seen
            }
            _ => false,
        };
        let mut group_done = false;
        if let Some(run_id) = run_id {
            let page = PageSeen {
                total,
                next,
                listed,
                page_size: source.page_size(),
            };
            let keep_going = unseen
                || match ordered {
                    true => listed > 0 && older == 0,
                    false => changed + groups_changed > 0 || recent,
                };
            let after = next_pages(&p, &page, keep_going);
            group_done = after.is_empty() && p.group_version.is_some();
            follow_ups.extend(
                after
                    .into_iter()
                    .map(|next| plan::list_job(a, run_id, next)),
            );
        }

        let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        progress.threads_seen = count(rows.len());
        progress.threads_skipped = count(rows.len().saturating_sub(changed));
        progress.threads_fetched = count(complete.len());
        let mut tx = job.begin(Finish::Done).await?;
        crate::queue::enqueue_batch(&mut *tx, &follow_ups).await?;
        let written = store::upsert_messages(&mut tx, &a.id, &messages).await?;
        progress.messages_written = i32::try_from(written).unwrap_or(i32::MAX);
        store::mark_fetched(&mut tx, &a.id, &complete).await?;
        store::add_progress(&mut tx, run_id, None, &progress).await?;
        if let (true, Some(version)) = (group_done, &p.group_version) {
            store::set_group_version(&mut tx, &a.id, &p.list, version).await?;
        }
        // Last, so the thread rows (which overlapping pages also write) stay locked briefly.
        store::upsert_threads(&mut tx, &a.id, a.provider, &rows).await?;
        job.commit(tx).await
    }

    async fn after(&self, job: &JobCtx) {
        super::start::advance_run(&self.engine, &job.pool, job.run_id).await
    }
}

/// What a page's groups say: the list jobs of those that changed since they were last
/// read in full, and their activity against the walk's cutoff.
struct GroupScan {
    jobs: Vec<crate::queue::NewJob>,
    recent: bool,
    older: usize,
}

async fn scan_groups(
    pool: &sqlx::PgPool,
    a: &AccountConfig,
    run_id: Option<i64>,
    groups: &[Group],
    cutoff: Option<chrono::DateTime<chrono::Utc>>,
) -> sqlx::Result<GroupScan> {
    let mut scan = GroupScan {
        jobs: Vec::new(),
        recent: false,
        older: 0,
    };
    let (Some(run_id), false) = (run_id, groups.is_empty()) else {
        return Ok(scan);
    };
    let names: Vec<String> = groups.iter().map(|g| g.list.clone()).collect();
    let held = store::group_versions(pool, &a.id, &names).await?;
    for g in groups {
        if let (Some(at), Some(cut)) = (g.activity, cutoff) {
            scan.recent |= at >= cut;
            scan.older += usize::from(at < cut);
            if at < cut {
                continue;
            }
        }
        if held.get(&g.list) != Some(&g.version) {
            let mut head = plan::list_head(a, &g.list, None, Walk::Next { total: None });
            head.group_version = Some(g.version.clone());
            scan.jobs.push(plan::list_job(a, run_id, head));
        }
    }
    Ok(scan)
}

/// Restarts from the head after which a walk gives up: the list keeps losing the items
/// its cursors point to faster than it can be paged. Counted over the whole walk, so a
/// walk never loops.
const MAX_RESTARTS: u32 = 3;

/// This page's cursor went stale (its item was deleted): page again from the cursor the
/// page before was read at, or else from the head of the list. Threads read twice are
/// unchanged the second time and cost no fetch.
async fn restart(job: &JobCtx, a: &AccountConfig, p: &ListPayload, detail: &str) -> JobResult {
    let Some(run_id) = job.run_id else {
        return Err(JobError::Permanent(format!("{}: {detail}", a.provider)));
    };
    let again = match &p.back {
        Some(back) => ListPayload {
            cursor: Some(back.clone()),
            back: None,
            ..p.clone()
        },
        None if p.restarts < MAX_RESTARTS => ListPayload {
            cursor: None,
            offset: 0,
            restarts: p.restarts + 1,
            ..p.clone()
        },
        None => {
            return Err(JobError::Permanent(format!(
                "{}: the list's cursors went stale {} times during one walk: {detail}",
                a.provider,
                p.restarts + 1
            )))
        }
    };
    let progress = Progress {
        http_calls: 1,
        ..Progress::default()
    };
    let mut tx = job.begin(Finish::Done).await?;
    crate::queue::enqueue_batch(&mut *tx, &[plan::list_job(a, run_id, again)]).await?;
    store::add_progress(&mut tx, Some(run_id), None, &progress).await?;
    job.commit(tx).await
}

/// What a page said about the list.
struct PageSeen {
    total: Option<u32>,
    next: Option<PageAt>,
    /// Rows on the page, undecodable ones included.
    listed: usize,
    page_size: u32,
}

fn next_pages(p: &ListPayload, page: &PageSeen, keep_going: bool) -> Vec<ListPayload> {
    let at = |offset: u32, walk| ListPayload {
        offset,
        cursor: None,
        walk,
        ..p.clone()
    };
    // The page to read after this one. An offset list's next page needs rows on this
    // one (an empty page at an offset is its end whatever `next` says); a cursor list's
    // page may be empty while `next` is present.
    let following = |walk| match &page.next {
        Some(PageAt::Offset(o)) if page.listed > 0 => Some(at(*o, walk)),
        Some(PageAt::Cursor(c)) => Some(ListPayload {
            offset: 0,
            cursor: Some(c.clone()),
            back: p.cursor.clone(),
            walk,
            ..p.clone()
        }),
        _ => None,
    };
    let step = page.page_size.max(1);
    let mut jobs = Vec::new();
    // Offset pages over a live list: if entries ahead of this page vanished since the page
    // before was planned (deleted threads), everything moved up and the first entries of this
    // page's range slid into a page already read. Re-read that strip.
    let expected = match p.walk {
        Walk::Planned { total, .. } => Some(total),
        Walk::Next { total } => total,
        _ => None,
    };
    if let (Some(expected), Some(now), None) = (expected, page.total, &p.cursor) {
        if now < expected && p.offset > 0 {
            let shift = (expected - now).min(step);
            jobs.push(at(
                p.offset.saturating_sub(shift),
                Walk::Planned {
                    last: false,
                    total: now,
                },
            ));
        }
    }
    match p.walk {
        Walk::Fanout => match (page.total, &page.next) {
            (Some(total), Some(PageAt::Offset(_))) if page.listed > 0 => {
                let offsets: Vec<u32> = (1..=MAX_FANOUT)
                    .filter_map(|k| k.checked_mul(step))
                    .take_while(|o| *o < total)
                    .collect();
                let n = offsets.len();
                jobs.extend(offsets.into_iter().enumerate().map(|(i, o)| {
                    at(
                        o,
                        Walk::Planned {
                            last: i + 1 == n,
                            total,
                        },
                    )
                }));
            }
            _ => jobs.extend(following(Walk::Next { total: page.total })),
        },
        // The list grew since the first page, or holds more than one fan-out plans:
        // keep following it.
        Walk::Planned { last: true, .. } | Walk::Next { .. } => {
            jobs.extend(following(Walk::Next { total: page.total }))
        }
        Walk::EarlyStop { .. } if keep_going => jobs.extend(following(p.walk)),
        _ => {}
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(walk: Walk) -> ListPayload {
        ListPayload {
            account: "a".into(),
            list: "L".into(),
            offset: 0,
            cursor: None,
            since: None,
            walk,
            back: None,
            restarts: 0,
            group_version: None,
        }
    }

    #[test]
    fn fanout_is_bounded_and_its_last_page_follows_next() {
        let page = PageSeen {
            total: Some(u32::MAX),
            next: Some(PageAt::Offset(50)),
            listed: 50,
            page_size: 50,
        };
        let jobs = next_pages(&head(Walk::Fanout), &page, false);
        assert_eq!(jobs.len(), MAX_FANOUT as usize);
        assert!(matches!(
            jobs.last().map(|j| j.walk),
            Some(Walk::Planned { last: true, .. })
        ));
        let last = jobs.last().cloned().expect("planned pages");
        let more = next_pages(
            &last,
            &PageSeen {
                next: Some(PageAt::Offset(last.offset + 50)),
                ..page
            },
            false,
        );
        assert_eq!(more.len(), 1);
        assert_eq!(more[0].offset, last.offset + 50);
    }

    #[test]
    fn cursor_lists_follow_next_through_empty_pages() {
        let page = PageSeen {
            total: None,
            next: Some(PageAt::Cursor("c2".into())),
            listed: 0,
            page_size: 100,
        };
        let jobs = next_pages(&head(Walk::Fanout), &page, false);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].cursor.as_deref(), Some("c2"));
        let end = PageSeen { next: None, ..page };
        assert!(next_pages(&jobs[0], &end, false).is_empty());
    }
}
