//! Run planning: the jobs a run starts with, the catch-up pass after its main pass, and
//! the constructors of every sync job (payloads, priorities, keys).

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::config::AccountConfig;
use crate::queue::NewJob;

use super::keys;
use super::runs::{MainPass, Mode};
use super::vocab::{Incremental, ListRole, ListSpec, PageAt};

/// Incremental `since` and catch-up cutoffs reach back this far: clock skew between us
/// and the provider, and messages committed late on their side.
pub const LOOKBACK_MINUTES: i64 = 10;

const PRIORITY_LIST: i32 = 10;
const PRIORITY_FETCH: i32 = 0;
const PRIORITY_STREAM: i32 = 10;
const PRIORITY_CHECK: i32 = 5;

/// How a list page decides which page comes next.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "walk")]
pub enum Walk {
    /// First page: fan out the remaining pages at once from `total` (at most
    /// [`MAX_FANOUT`]; the last planned page follows `next` beyond them).
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
        /// The list is strictly in recency order: a page reaching back before `cutoff` is
        /// the last one, changed threads on it or not.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ordered: bool,
    },
}

/// Pages one list page may plan at once: a provider's `total` is data, not a promise.
pub const MAX_FANOUT: u32 = 200;

// No deny_unknown_fields here: serde does not support it together with `flatten`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListPayload {
    pub account: String,
    #[serde(alias = "conversation_type")]
    pub list: String,
    #[serde(default)]
    pub offset: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(default, alias = "start_time")]
    pub since: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub walk: Walk,
    /// The cursor the page before this one was read at: where paging resumes when this
    /// page's cursor went stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back: Option<String>,
    /// Times this walk started again from the head because its cursors went stale.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
    /// A group's list ([`super::vocab::Group`]): the version recorded once it is read to
    /// its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_version: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchPayload {
    pub account: String,
    pub thread_id: String,
    #[serde(default, alias = "conversation_type")]
    pub list: Option<String>,
    /// Where the fetch starts (the list carried the messages before it inline); None: the
    /// thread's first page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<PageAt>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamPayload {
    pub account: String,
    #[serde(alias = "folder")]
    pub stream: String,
    /// Read positions above this one (a next batch); None: above the stream's cursor.
    #[serde(default, alias = "after_id")]
    pub after: Option<i64>,
    /// Full resync: ignore the cursor and read the cold-start window again.
    #[serde(default)]
    pub full: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckPayload {
    pub account: String,
    /// The provider's id of the followed message.
    pub id: i64,
    /// The run that found the message; checks do not belong to it (they outlive it), but
    /// count in its counters.
    #[serde(default)]
    pub origin_run: Option<i64>,
}

pub fn list_job(a: &AccountConfig, run_id: i64, p: ListPayload) -> NewJob {
    NewJob::new(
        keys::list_kind(a.provider),
        serde_json::to_value(p).unwrap_or_default(),
    )
    .priority(PRIORITY_LIST)
    .concurrency(keys::requests_key(a.provider, &a.id), a.max_in_flight)
    .run(run_id)
}

pub fn list_head(
    a: &AccountConfig,
    list: &str,
    since: Option<DateTime<Utc>>,
    walk: Walk,
) -> ListPayload {
    ListPayload {
        account: a.id.clone(),
        list: list.to_string(),
        offset: 0,
        cursor: None,
        since,
        walk,
        back: None,
        restarts: 0,
        group_version: None,
    }
}

pub fn fetch_job(
    a: &AccountConfig,
    run_id: Option<i64>,
    thread_id: &str,
    list: Option<&str>,
    from: Option<PageAt>,
) -> NewJob {
    let payload = FetchPayload {
        account: a.id.clone(),
        thread_id: thread_id.to_string(),
        list: list.map(String::from),
        from,
    };
    let mut job = NewJob::new(
        keys::fetch_kind(a.provider),
        serde_json::to_value(payload).unwrap_or_default(),
    )
    .priority(PRIORITY_FETCH)
    .dedupe(keys::fetch_dedupe(a.provider, &a.id, thread_id))
    .concurrency(keys::requests_key(a.provider, &a.id), a.max_in_flight);
    if let Some(r) = run_id {
        job = job.run(r);
    }
    job
}

/// Streams run one at a time, in the configured order (SMS: outbox before sentitems, so a
/// message the modem picks up between the two reads is seen in one of them).
pub fn stream_job(a: &AccountConfig, streams: &[String], run_id: i64, p: StreamPayload) -> NewJob {
    let rank = streams.iter().position(|s| *s == p.stream).unwrap_or(0);
    let rank = i32::try_from(rank).unwrap_or(i32::MAX);
    NewJob::new(
        keys::stream_kind(a.provider),
        serde_json::to_value(p).unwrap_or_default(),
    )
    .priority(PRIORITY_STREAM.saturating_sub(rank))
    .concurrency(keys::streams_key(a.provider, &a.id), 1)
    .run(run_id)
}

pub fn check_job(a: &AccountConfig, id: i64, origin_run: Option<i64>, at: DateTime<Utc>) -> NewJob {
    let payload = CheckPayload {
        account: a.id.clone(),
        id,
        origin_run,
    };
    // No run_id: a run would stay open until the last delivery settles.
    NewJob::new(
        keys::check_kind(a.provider),
        serde_json::to_value(payload).unwrap_or_default(),
    )
    .priority(PRIORITY_CHECK)
    .run_at(at)
    .dedupe(keys::check_dedupe(a.provider, &a.id, id))
    .concurrency(keys::requests_key(a.provider, &a.id), a.max_in_flight)
}

/// The first jobs of a thread-list run: every list, from the watermark when incremental.
/// Lists of groups are a changes feed: a walk of whole lists skips them.
pub fn plan_lists(
    a: &AccountConfig,
    lists: &[ListSpec],
    run_id: i64,
    mode: Mode,
    watermark: Option<DateTime<Utc>>,
) -> Vec<NewJob> {
    let since = match (mode, watermark) {
        (Mode::Incremental, Some(w)) => Some(w - Duration::minutes(LOOKBACK_MINUTES)),
        // Full, or incremental with no completed run yet: walk every list.
        _ => None,
    };
    lists
        .iter()
        .filter(|l| since.is_some() || l.role != ListRole::Groups)
        .map(|l| {
            let head = match since {
                Some(since) => match l.incremental {
                    Incremental::Since => list_head(a, &l.name, Some(since), Walk::Fanout),
                    Incremental::EarlyStop | Incremental::Ordered => list_head(
                        a,
                        &l.name,
                        None,
                        Walk::EarlyStop {
                            cutoff: since,
                            until_all_seen: false,
                            ordered: l.incremental == Incremental::Ordered,
                        },
                    ),
                },
                None => list_head(a, &l.name, None, Walk::Fanout),
            };
            list_job(a, run_id, head)
        })
        .collect()
}

/// Jobs that re-read the head of lists after the main pass: threads that gained
/// messages while the run paged through them jumped ahead of its offsets or cursors.
///
/// Each jump also pushes every thread above the old position one place down. The main
/// pass reads its fanned-out pages in parallel, in no set order, so a thread pushed from a
/// page not yet read onto one already read is listed by neither. After a main pass over
/// whole lists the catch-up therefore reads on, page by page (where a push only repeats a
/// thread), until the run has listed as many threads as the list holds. An incremental
/// pass re-reads the lists it read through a time filter, and those it paged past the head
/// of: a walk that ended on its first page cannot have been overtaken, and what changed
/// after it is the next run's.
pub fn catch_up(
    a: &AccountConfig,
    lists: &[ListSpec],
    run_id: i64,
    main: &MainPass,
) -> Vec<NewJob> {
    let cutoff = main.started_at - Duration::minutes(LOOKBACK_MINUTES);
    lists
        .iter()
        .filter(|l| match main.walked_whole_lists {
            true => l.role != ListRole::Groups,
            // A time filter can hide changes (replies it does not count as activity):
            // its catch-up reads the unfiltered head.
            false => l.incremental == Incremental::Since || main.paged.contains(&l.name),
        })
        .map(|l| {
            let walk = Walk::EarlyStop {
                cutoff,
                until_all_seen: main.walked_whole_lists,
                ordered: l.incremental == Incremental::Ordered && !main.walked_whole_lists,
            };
            list_job(a, run_id, list_head(a, &l.name, None, walk))
        })
        .collect()
}
