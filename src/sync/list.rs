//! `<provider>.list_page`: one page of a thread list. It upserts the thread rows, enqueues
//! a fetch for every thread whose latest message differs from the newest one held, and
//! plans the pages after it, all in one fenced transaction with its counters.

use std::sync::Arc;

use crate::queue::Finish;
use crate::worker::{Handler, JobCtx, JobResult};

use super::engine::Engine;
use super::plan::{self, ListPayload, Walk, MAX_FANOUT};
use super::store::{self, Progress};
use super::vocab::{PageAt, ThreadPage};

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
        account.pace(&self.engine, &job.pool).await?;
        let page = source.list(&p.list, &at, p.since).await;
        account.observe(&page);
        let page = match page {
            Ok(page) => page,
            Err(e) => return Err(account.classify(&self.engine, &job.pool, e).await),
        };
        let ThreadPage {
            threads,
            total,
            next,
        } = page;
        let mut progress = Progress {
            pages_listed: 1,
            http_calls: 1,
            ..Progress::default()
        };
        let listed = threads.len();
        let mut rows = progress.take_good(threads);
        for r in &mut rows {
            r.conversation_type.get_or_insert_with(|| p.list.clone());
        }

        let ids: Vec<String> = rows.iter().map(|r| r.thread_id.clone()).collect();
        let fetched = store::fetched_ids(&job.pool, &a.id, &ids).await?;
        let cutoff = match p.walk {
            Walk::EarlyStop { cutoff, .. } => Some(cutoff),
            _ => None,
        };
        let mut follow_ups = Vec::new();
        let mut recent = false;
        for r in &rows {
            let changed = match &r.latest_message_id {
                Some(m) => fetched.get(&r.thread_id) != Some(m),
                None => !fetched.contains_key(&r.thread_id),
            };
            if changed {
                follow_ups.push(plan::fetch_job(
                    a,
                    run_id,
                    &r.thread_id,
                    r.conversation_type.as_deref(),
                ));
            }
            if let (Some(at), Some(cut)) = (r.latest_message_at, cutoff) {
                recent |= at >= cut;
            }
        }
        let changed = follow_ups.len();
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
                let seen = store::threads_listed_in_run(&job.pool, &a.id, &p.list, run_id).await?;
                i64::from(total) > seen
            }
            _ => false,
        };
        if let Some(run_id) = run_id {
            let page = PageSeen {
                total,
                next,
                listed,
                page_size: source.page_size(),
            };
            let keep_going = changed > 0 || recent || unseen;
            follow_ups.extend(
                next_pages(&p, &page, keep_going)
                    .into_iter()
                    .map(|next| plan::list_job(a, run_id, next)),
            );
        }

        progress.threads_seen = i32::try_from(rows.len()).unwrap_or(i32::MAX);
        progress.threads_skipped = i32::try_from(rows.len() - changed).unwrap_or(i32::MAX);
        let mut tx = job.begin(Finish::Done).await?;
        crate::queue::enqueue_batch(&mut *tx, &follow_ups).await?;
        store::add_progress(&mut tx, run_id, None, &progress).await?;
        // Last, so the thread rows (which overlapping pages also write) stay locked briefly.
        store::upsert_threads(&mut tx, &a.id, a.provider, &rows).await?;
        job.commit(tx).await
    }

    async fn after(&self, job: &JobCtx) {
        super::start::advance_run(&self.engine, &job.pool, job.run_id).await
    }
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
