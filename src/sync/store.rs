//! Writes to the synced copy: bulk, idempotent upserts of threads and messages, and run
//! progress. Every function takes the caller's (fenced) transaction, except fetched
//! conversation pages, which are a group statement (see `worker::group_commit`).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::db::PgQuery;
use crate::queue::fence;
use crate::worker::group_commit::{Attempt, Entry, GroupStatement};

use super::vocab::{Follow, MessageRow, ThreadRow};

/// Counters one job contributes to its run, committed with its data.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub pages_listed: i32,
    pub threads_seen: i32,
    pub threads_fetched: i32,
    pub threads_skipped: i32,
    pub threads_deleted: i32,
    pub messages_written: i32,
    pub http_calls: i32,
    /// Delivery-status checks made, statuses they saw change, and followed messages that
    /// settled (final or sent) or expired.
    pub checks_made: i32,
    pub statuses_changed: i32,
    pub settled: i32,
    pub expired: i32,
    /// Provider rows skipped as undecodable, and why the first of them was.
    pub bad_rows: i32,
    pub bad_row: Option<String>,
}

impl Progress {
    /// Counts the rows that did not decode and keeps the good ones.
    pub fn take_good<T>(&mut self, rows: Vec<super::vocab::Decoded<T>>) -> Vec<T> {
        let mut good = Vec::with_capacity(rows.len());
        for r in rows {
            match r {
                Ok(r) => good.push(r),
                Err(bad) => {
                    self.bad_rows = self.bad_rows.saturating_add(1);
                    if self.bad_row.is_none() {
                        self.bad_row = Some(bad.reason);
                    }
                }
            }
        }
        good
    }
}

/// Upserts thread metadata as a provider list shows it, in thread id order so concurrent
/// pages that overlap lock rows in the same order.
pub async fn upsert_threads(
    conn: &mut PgConnection,
    account: &str,
    provider: &str,
    rows: &[ThreadRow],
) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut rows: Vec<&ThreadRow> = rows.iter().collect();
    rows.sort_by(|a, b| a.thread_id.cmp(&b.thread_id));
    rows.dedup_by(|a, b| a.thread_id == b.thread_id);
    let col = |f: fn(&ThreadRow) -> Option<String>| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO threadsync.threads AS t (account_id, provider, thread_id, conversation_type, title, status,
                reference_id, reference_type, unread_count, latest_message_id, latest_message_at, created_at,
                details)
         SELECT $1, $2, * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                                       $9::int[], $10::text[], $11::timestamptz[], $12::timestamptz[],
                                       $13::jsonb[])
         ON CONFLICT (account_id, thread_id) DO UPDATE SET
                conversation_type = coalesce(excluded.conversation_type, t.conversation_type),
                title = excluded.title, status = excluded.status,
                reference_id = excluded.reference_id, reference_type = excluded.reference_type,
                unread_count = excluded.unread_count,
                latest_message_id = excluded.latest_message_id,
                latest_message_at = excluded.latest_message_at,
                created_at = coalesce(excluded.created_at, t.created_at),
                details = coalesce(excluded.details, t.details),
                deleted_at = NULL, synced_at = now()",
    )
    .bind(account)
    .bind(provider)
    .bind(rows.iter().map(|r| r.thread_id.clone()).collect::<Vec<_>>())
    .bind(col(|r| r.conversation_type.clone()))
    .bind(col(|r| r.title.clone()))
    .bind(col(|r| r.status.clone()))
    .bind(col(|r| r.reference_id.clone()))
    .bind(col(|r| r.reference_type.clone()))
    .bind(rows.iter().map(|r| r.unread_count).collect::<Vec<_>>())
    .bind(col(|r| r.latest_message_id.clone()))
    .bind(rows.iter().map(|r| r.latest_message_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.details.clone()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// The versions held of the named groups (a group read in full records its version).
pub async fn group_versions(
    pool: &PgPool,
    account: &str,
    lists: &[String],
) -> sqlx::Result<HashMap<String, String>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT list, version FROM threadsync.list_groups WHERE account_id = $1 AND list = ANY($2)",
    )
    .bind(account)
    .bind(lists)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// A group was read to its end at `version`.
pub async fn set_group_version(
    conn: &mut PgConnection,
    account: &str,
    list: &str,
    version: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO threadsync.list_groups (account_id, list, version) VALUES ($1, $2, $3)
         ON CONFLICT (account_id, list) DO UPDATE SET version = excluded.version, read_at = now()",
    )
    .bind(account)
    .bind(list)
    .bind(version)
    .execute(conn)
    .await?;
    Ok(())
}

/// Threads of one list (conversation type; None: of every type) that a run has written so far and that are not
/// known to be deleted: every list page upserts the threads it lists, stamping `synced_at`.
pub async fn threads_listed_in_run(
    pool: &PgPool,
    account: &str,
    conversation_type: Option<&str>,
    run_id: i64,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM threadsync.threads t, threadsync.sync_runs r
          WHERE r.id = $3 AND t.account_id = $1 AND ($2::text IS NULL OR t.conversation_type = $2)
            AND t.synced_at >= r.started_at AND t.deleted_at IS NULL",
    )
    .bind(account)
    .bind(conversation_type)
    .bind(run_id)
    .fetch_one(pool)
    .await
}

/// The newest message of a thread held in full: every message up to it is held.
#[derive(Debug, Clone)]
pub struct Marker {
    pub message_id: String,
    /// Its time, while the message is still held.
    pub sent_at: Option<DateTime<Utc>>,
}

impl Marker {
    /// A newest-first page reaches what is held once it holds the marker or anything older.
    pub fn reached_by<'a>(&self, mut page: impl Iterator<Item = &'a MessageRow>) -> bool {
        page.any(|m| {
            m.message_id == self.message_id || self.sent_at.is_some_and(|at| m.sent_at < at)
        })
    }
}

/// Markers per thread (absent: never fetched in full, or unknown thread).
pub async fn fetched_ids<'c>(
    db: impl sqlx::PgExecutor<'c>,
    account: &str,
    thread_ids: &[String],
) -> sqlx::Result<HashMap<String, Marker>> {
    let rows: Vec<(String, String, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT f.thread_id, f.fetched_message_id, m.sent_at FROM threadsync.thread_fetches f
           LEFT JOIN threadsync.messages m ON m.account_id = f.account_id AND m.message_id = f.fetched_message_id
          WHERE f.account_id = $1 AND f.thread_id = ANY($2)",
    )
    .bind(account)
    .bind(thread_ids)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(t, message_id, sent_at)| {
            (
                t,
                Marker {
                    message_id,
                    sent_at,
                },
            )
        })
        .collect())
}

/// How a message upsert treats a message we hold: rows that did not change are not rewritten.
macro_rules! on_message_conflict {
    () => {
        "ON CONFLICT (account_id, message_id) DO UPDATE SET
                thread_id = excluded.thread_id, sender = excluded.sender, recipient = excluded.recipient,
                subject = excluded.subject, body = excluded.body, is_read = excluded.is_read,
                sent_at = excluded.sent_at, media = excluded.media, status = excluded.status, synced_at = now()
          WHERE (m.thread_id, m.sender, m.recipient, m.subject, m.body, m.is_read, m.sent_at, m.media, m.status)
                IS DISTINCT FROM
                (excluded.thread_id, excluded.sender, excluded.recipient, excluded.subject, excluded.body,
                 excluded.is_read, excluded.sent_at, excluded.media, excluded.status)"
    };
}

/// Upserts messages of several threads by provider id, in thread order (the order
/// concurrent writers lock rows in); returns how many rows were inserted or changed.
pub async fn upsert_messages(
    conn: &mut PgConnection,
    account: &str,
    threads: &BTreeMap<String, Vec<MessageRow>>,
) -> sqlx::Result<u64> {
    let rows = || {
        threads
            .iter()
            .flat_map(|(t, rows)| rows.iter().map(move |r| (t, r)))
    };
    if rows().next().is_none() {
        return Ok(0);
    }
    let col = |f: fn(&MessageRow) -> &Option<String>| {
        rows().map(|(_, r)| f(r).as_deref()).collect::<Vec<_>>()
    };
    let sql = concat!(
        "INSERT INTO threadsync.messages AS m (account_id, thread_id, message_id, sender, recipient, subject, body,
                is_read, sent_at, media, status)
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                                  $8::bool[], $9::timestamptz[], $10::jsonb[], $11::text[]) ",
        on_message_conflict!()
    );
    let q = sqlx::query(sql)
        .bind(account)
        .bind(rows().map(|(t, _)| t.as_str()).collect::<Vec<_>>())
        .bind(
            rows()
                .map(|(_, r)| r.message_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(col(|r| &r.sender))
        .bind(col(|r| &r.recipient))
        .bind(col(|r| &r.subject))
        .bind(col(|r| &r.body))
        .bind(rows().map(|(_, r)| r.is_read).collect::<Vec<_>>())
        .bind(rows().map(|(_, r)| r.sent_at).collect::<Vec<_>>())
        .bind(rows().map(|(_, r)| r.media.as_ref()).collect::<Vec<_>>())
        .bind(col(|r| &r.status));
    Ok(q.execute(conn).await?.rows_affected())
}

/// Records that we hold every message of these threads up to the given newest one (what
/// list pages compare a thread's latest message with).
pub async fn mark_fetched(
    conn: &mut PgConnection,
    account: &str,
    fetched: &[(String, String)],
) -> sqlx::Result<()> {
    if fetched.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO threadsync.thread_fetches (account_id, thread_id, fetched_message_id)
         SELECT $1, * FROM unnest($2::text[], $3::text[])
         ON CONFLICT (account_id, thread_id) DO UPDATE SET fetched_message_id = excluded.fetched_message_id,
                                                           fetched_at = now()",
    )
    .bind(account)
    .bind(fetched.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>())
    .bind(fetched.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// One fetched page of a conversation, to be committed with its job (see [`ConversationPages`]).
pub struct ConversationPage {
    pub account: String,
    pub provider: &'static str,
    pub thread_id: String,
    pub rows: Vec<MessageRow>,
    /// The last page: the fetch is complete.
    pub complete: bool,
    pub run_id: Option<i64>,
    /// Rows of the page that did not decode, and why the first did not.
    pub bad_rows: i32,
    pub bad_row: Option<String>,
}

/// Everything fetched conversation pages write, for many jobs in one statement (a group
/// commit), each page only if its job's fence holds: its messages, the run's counters (one
/// HTTP call per page, the rows written, the thread when complete) and, for a complete fetch:
/// - the newest message we now hold, which list pages compare with to skip unchanged threads;
/// - the thread's latest message moved forward if the fetch saw a newer one than the list
///   did (a refresh after a send), and the thread created if it was never listed.
///
/// Messages of a thread we hold none of are plain inserts: the unique key still rejects a
/// duplicate (a concurrent fetch of the same thread, an id already filed under another
/// thread), which fails the shared statement, and the job retried alone upserts every row.
/// That skips the upsert's extra index probe and speculative-insertion work for the bulk of
/// a full resync.
///
/// Thread rows are found through their key and only written when they change, in thread
/// order like list pages write them. Every part reads the statement's snapshot, which does
/// not include the messages being written, so "newest" also reads what the upsert returns.
pub struct ConversationPages;

impl GroupStatement for ConversationPages {
    type Item = ConversationPage;

    fn key(page: &ConversationPage) -> String {
        format!("{}/{}", page.account, page.thread_id)
    }

    fn statement(entries: &[Entry<ConversationPage>], attempt: Attempt) -> PgQuery<'_> {
        let sql = concat!(
            "WITH ",
            fence::group_fence_cte!(),
            ", pages AS MATERIALIZED (
                SELECT p.*, $21 OR EXISTS (SELECT 1 FROM threadsync.messages m
                                            WHERE m.account_id = p.account_id AND m.thread_id = p.thread_id) AS held
                  FROM unnest($1::bigint[], $6::text[], $7::text[], $8::text[], $9::bool[], $10::bigint[],
                              $22::int[], $23::text[])
                       AS p(job_id, account_id, provider, thread_id, complete, run_id, bad_rows, bad_row)
                 WHERE p.job_id IN (SELECT id FROM fenced)),
             input AS MATERIALIZED (
                SELECT f.account_id, f.thread_id, m.message_id, m.sender, m.recipient, m.subject, m.body,
                       m.is_read, m.sent_at, m.media, m.status, f.held
                  FROM unnest($11::bigint[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[],
                              $17::bool[], $18::timestamptz[], $19::jsonb[], $20::text[])
                       AS m(job_id, message_id, sender, recipient, subject, body, is_read, sent_at, media, status)
                  JOIN pages f ON f.job_id = m.job_id),
             added AS (
                INSERT INTO threadsync.messages (account_id, thread_id, message_id, sender, recipient,
                                                 subject, body, is_read, sent_at, media, status)
                SELECT account_id, thread_id, message_id, sender, recipient, subject, body, is_read, sent_at,
                       media, status
                  FROM input WHERE NOT held
                RETURNING account_id, thread_id, message_id, sent_at),
             upserted AS (
                INSERT INTO threadsync.messages AS m (account_id, thread_id, message_id, sender, recipient,
                                                      subject, body, is_read, sent_at, media, status)
                SELECT account_id, thread_id, message_id, sender, recipient, subject, body, is_read, sent_at,
                       media, status
                  FROM input WHERE held ",
            on_message_conflict!(),
            " RETURNING m.account_id, m.thread_id, m.message_id, m.sent_at),
             written AS (SELECT * FROM added UNION ALL SELECT * FROM upserted),
             newest AS (
                SELECT DISTINCT ON (account_id, thread_id) account_id, thread_id, message_id, sent_at
                  FROM (SELECT m.account_id, m.thread_id, m.message_id, m.sent_at
                          FROM pages f JOIN threadsync.messages m
                               ON m.account_id = f.account_id AND m.thread_id = f.thread_id
                         WHERE f.complete AND f.held
                        UNION ALL
                        SELECT account_id, thread_id, message_id, sent_at FROM written) AS held
                 ORDER BY account_id, thread_id, sent_at DESC, message_id DESC),
             complete AS (
                SELECT n.account_id, n.thread_id, n.message_id, n.sent_at, f.provider
                  FROM newest n JOIN pages f ON f.account_id = n.account_id AND f.thread_id = n.thread_id
                 WHERE f.complete),
             fetched AS (
                INSERT INTO threadsync.thread_fetches (account_id, thread_id, fetched_message_id)
                SELECT account_id, thread_id, message_id FROM complete
                ON CONFLICT (account_id, thread_id) DO UPDATE SET fetched_message_id = excluded.fetched_message_id,
                                                                  fetched_at = now()),
             thread AS (
                INSERT INTO threadsync.threads AS t (account_id, provider, thread_id, latest_message_id, latest_message_at)
                SELECT c.account_id, c.provider, c.thread_id, c.message_id, c.sent_at FROM complete c
                 -- Most threads are already up to date: skip them before ON CONFLICT locks their rows.
                 WHERE NOT EXISTS (SELECT 1 FROM threadsync.threads o
                                    WHERE o.account_id = c.account_id AND o.thread_id = c.thread_id
                                      AND o.latest_message_at >= c.sent_at AND o.deleted_at IS NULL)
                ON CONFLICT (account_id, thread_id) DO UPDATE
                   SET latest_message_id = excluded.latest_message_id, latest_message_at = excluded.latest_message_at,
                       deleted_at = NULL, synced_at = now()
                 WHERE t.latest_message_at IS NULL OR t.latest_message_at < excluded.latest_message_at
                    OR t.deleted_at IS NOT NULL),
             progress AS (
                INSERT INTO threadsync.sync_run_progress (run_id, threads_fetched, messages_written, http_calls,
                                                          bad_rows, bad_row)
                SELECT f.run_id, count(*) FILTER (WHERE f.complete), coalesce(sum(w.n), 0), count(*),
                       sum(f.bad_rows), min(f.bad_row)
                  FROM pages f
                  LEFT JOIN (SELECT account_id, thread_id, count(*) AS n FROM written GROUP BY 1, 2) w
                         ON w.account_id = f.account_id AND w.thread_id = f.thread_id
                 WHERE f.run_id IS NOT NULL
                 GROUP BY f.run_id)
             SELECT id FROM fenced"
        );
        // Bound by reference: the entries outlive the statement.
        let pages = || entries.iter().map(|e| &e.item);
        let q = fence::bind_group(
            sqlx::query(sql),
            entries.iter().map(|e| (e.fence, &e.finish)),
        )
        .bind(pages().map(|p| p.account.as_str()).collect::<Vec<_>>())
        .bind(pages().map(|p| p.provider).collect::<Vec<_>>())
        .bind(pages().map(|p| p.thread_id.as_str()).collect::<Vec<_>>())
        .bind(pages().map(|p| p.complete).collect::<Vec<_>>())
        .bind(pages().map(|p| p.run_id).collect::<Vec<_>>());
        let rows = || {
            entries
                .iter()
                .flat_map(|e| e.item.rows.iter().map(move |r| (e.fence.id, r)))
        };
        let col = |f: fn(&MessageRow) -> &Option<String>| {
            rows().map(|(_, r)| f(r).as_deref()).collect::<Vec<_>>()
        };
        q.bind(rows().map(|(job, _)| job).collect::<Vec<_>>())
            .bind(
                rows()
                    .map(|(_, r)| r.message_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(col(|r| &r.sender))
            .bind(col(|r| &r.recipient))
            .bind(col(|r| &r.subject))
            .bind(col(|r| &r.body))
            .bind(rows().map(|(_, r)| r.is_read).collect::<Vec<_>>())
            .bind(rows().map(|(_, r)| r.sent_at).collect::<Vec<_>>())
            .bind(rows().map(|(_, r)| r.media.as_ref()).collect::<Vec<_>>())
            .bind(col(|r| &r.status))
            .bind(attempt == Attempt::Alone)
            .bind(pages().map(|p| p.bad_rows).collect::<Vec<_>>())
            .bind(pages().map(|p| p.bad_row.as_deref()).collect::<Vec<_>>())
    }
}

/// The provider no longer has the thread: keep its messages, mark it deleted.
pub async fn mark_deleted(
    conn: &mut PgConnection,
    account: &str,
    thread_id: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE threadsync.threads SET deleted_at = now() WHERE account_id = $1 AND thread_id = $2",
    )
    .bind(account)
    .bind(thread_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends the job's counters to its run (`stream` for stream batches).
pub async fn add_progress(
    conn: &mut PgConnection,
    run_id: Option<i64>,
    stream: Option<&str>,
    p: &Progress,
) -> sqlx::Result<()> {
    let Some(run_id) = run_id else { return Ok(()) };
    sqlx::query(
        "INSERT INTO threadsync.sync_run_progress (run_id, stream, pages_listed, threads_seen, threads_fetched,
                threads_skipped, threads_deleted, messages_written, http_calls, checks_made, statuses_changed,
                settled, expired, bad_rows, bad_row)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(run_id)
    .bind(stream)
    .bind(p.pages_listed)
    .bind(p.threads_seen)
    .bind(p.threads_fetched)
    .bind(p.threads_skipped)
    .bind(p.threads_deleted)
    .bind(p.messages_written)
    .bind(p.http_calls)
    .bind(p.checks_made)
    .bind(p.statuses_changed)
    .bind(p.settled)
    .bind(p.expired)
    .bind(p.bad_rows)
    .bind(&p.bad_row)
    .execute(conn)
    .await?;
    Ok(())
}

/// Creates or moves forward the threads of messages just written (threads whose
/// messages arrive without a thread list, like SMS conversations keyed by number), in
/// thread id order so concurrent writers lock rows in the same order. `created_at` is the
/// oldest message held, whichever stream brought it.
pub async fn upsert_threads_from_messages(
    conn: &mut PgConnection,
    account: &str,
    provider: &str,
    thread_ids: &[String],
) -> sqlx::Result<()> {
    if thread_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO threadsync.threads AS t (account_id, provider, thread_id, latest_message_id,
                latest_message_at, created_at)
         SELECT * FROM (
             SELECT DISTINCT ON (thread_id) account_id, $2, thread_id, message_id, sent_at,
                    min(sent_at) OVER (PARTITION BY thread_id)
               FROM threadsync.messages WHERE account_id = $1 AND thread_id = ANY($3)
              ORDER BY thread_id, sent_at DESC, message_id DESC) newest
         ON CONFLICT (account_id, thread_id) DO UPDATE SET
                latest_message_id = excluded.latest_message_id,
                latest_message_at = excluded.latest_message_at,
                created_at = least(t.created_at, excluded.created_at),
                deleted_at = NULL, synced_at = now()
          WHERE t.latest_message_id IS DISTINCT FROM excluded.latest_message_id OR t.deleted_at IS NOT NULL
             OR t.created_at IS NULL OR excluded.created_at < t.created_at",
    )
    .bind(account)
    .bind(provider)
    .bind(thread_ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// The list a thread was last seen in (passed back to the provider when fetching it).
pub async fn thread_list(
    pool: &PgPool,
    account: &str,
    thread_id: &str,
) -> sqlx::Result<Option<String>> {
    Ok(sqlx::query_scalar::<_, Option<String>>(
        "SELECT conversation_type FROM threadsync.threads WHERE account_id = $1 AND thread_id = $2",
    )
    .bind(account)
    .bind(thread_id)
    .fetch_optional(pool)
    .await?
    .flatten())
}

/// Whether a complete fetch of the thread already reached the newest message its list
/// row names.
pub async fn listed_message_held(
    pool: &PgPool,
    account: &str,
    thread_id: &str,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM threadsync.threads t JOIN threadsync.thread_fetches f
                         ON f.account_id = t.account_id AND f.thread_id = t.thread_id
                      WHERE t.account_id = $1 AND t.thread_id = $2
                        AND f.fetched_message_id = t.latest_message_id)",
    )
    .bind(account)
    .bind(thread_id)
    .fetch_one(pool)
    .await
}

/// Messages held of one thread.
pub async fn message_count(pool: &PgPool, account: &str, thread_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM threadsync.messages WHERE account_id = $1 AND thread_id = $2",
    )
    .bind(account)
    .bind(thread_id)
    .fetch_one(pool)
    .await
}

/// The account's incremental watermark: the start of its last complete run.
pub async fn watermark(pool: &PgPool, account: &str) -> sqlx::Result<Option<DateTime<Utc>>> {
    Ok(
        sqlx::query_scalar("SELECT synced_from FROM threadsync.accounts WHERE id = $1")
            .bind(account)
            .fetch_optional(pool)
            .await?
            .flatten(),
    )
}

/// After a complete run that walked whole lists: threads the provider no longer listed
/// (not written since the run started) are marked deleted. Returns how many.
pub async fn reconcile_deleted(
    conn: &mut PgConnection,
    account: &str,
    run_started: DateTime<Utc>,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE threadsync.threads SET deleted_at = now()
          WHERE account_id = $1 AND deleted_at IS NULL AND synced_at < $2",
    )
    .bind(account)
    .bind(run_started)
    .execute(conn)
    .await?
    .rows_affected())
}

/// The stream's cursor: the highest position read so far.
pub async fn cursor(pool: &PgPool, account: &str, stream: &str) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "SELECT position FROM threadsync.stream_cursors WHERE account_id = $1 AND stream = $2",
    )
    .bind(account)
    .bind(stream)
    .fetch_optional(pool)
    .await
}

/// Moves the stream's cursor forward to `position` (never back).
pub async fn advance_cursor(
    conn: &mut PgConnection,
    account: &str,
    stream: &str,
    position: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO threadsync.stream_cursors AS c (account_id, stream, position) VALUES ($1, $2, $3)
         ON CONFLICT (account_id, stream) DO UPDATE SET position = excluded.position, updated_at = now()
          WHERE c.position < excluded.position",
    )
    .bind(account)
    .bind(stream)
    .bind(position)
    .execute(conn)
    .await?;
    Ok(())
}

/// Starts following sends first seen now (one row per message, kept when seen again).
/// Returns the remote ids that were not followed before.
pub async fn follow_deliveries(
    conn: &mut PgConnection,
    account: &str,
    follows: &[(&str, &Follow)],
) -> sqlx::Result<Vec<i64>> {
    if follows.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "INSERT INTO threadsync.deliveries (account_id, message_id, remote_id, validity, expires_at)
         SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::text[], $5::timestamptz[])
         ON CONFLICT (account_id, message_id) DO NOTHING
         RETURNING remote_id",
    )
    .bind(account)
    .bind(follows.iter().map(|(m, _)| *m).collect::<Vec<_>>())
    .bind(follows.iter().map(|(_, f)| f.remote_id).collect::<Vec<_>>())
    .bind(follows.iter().map(|(_, f)| f.validity.as_str()).collect::<Vec<_>>())
    .bind(follows.iter().map(|(_, f)| f.expires_at).collect::<Vec<_>>())
    .fetch_all(conn)
    .await
}

/// Remote ids of followed messages with no status check queued (one that failed for good,
/// say on a rejected token). A check's dedupe key is `dedupe_prefix` and the remote id.
pub async fn unchecked_deliveries(
    conn: &mut PgConnection,
    account: &str,
    dedupe_prefix: &str,
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT d.remote_id FROM threadsync.deliveries d
          WHERE d.account_id = $1 AND d.outcome = 'pending' AND d.remote_id IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM threadsync.jobs j
                             WHERE j.dedupe_key = $2 || d.remote_id
                               AND j.status IN ('pending', 'running'))",
    )
    .bind(account)
    .bind(dedupe_prefix)
    .fetch_all(conn)
    .await
}

/// A followed message as its last check left it.
#[derive(Debug, sqlx::FromRow)]
pub struct Followed {
    pub message_id: String,
    pub validity: String,
    pub expires_at: DateTime<Utc>,
    pub outcome: String,
    pub checks: i32,
}

pub async fn followed(
    pool: &PgPool,
    account: &str,
    remote_id: i64,
) -> sqlx::Result<Option<Followed>> {
    sqlx::query_as(
        "SELECT message_id, validity, expires_at, outcome, checks FROM threadsync.deliveries
          WHERE account_id = $1 AND remote_id = $2",
    )
    .bind(account)
    .bind(remote_id)
    .fetch_optional(pool)
    .await
}

/// Records one check: the message's status (when visible) and where following stands.
/// Returns whether the status changed.
pub async fn record_check(
    conn: &mut PgConnection,
    account: &str,
    message_id: &str,
    status: Option<&str>,
    outcome: &str,
) -> sqlx::Result<bool> {
    let changed = match status {
        Some(s) => sqlx::query(
            "UPDATE threadsync.messages SET status = $3, synced_at = now()
              WHERE account_id = $1 AND message_id = $2 AND status IS DISTINCT FROM $3",
        )
        .bind(account)
        .bind(message_id)
        .bind(s)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        None => 0,
    };
    sqlx::query(
        "UPDATE threadsync.deliveries
            SET checks = checks + 1, last_checked_at = now(), outcome = $3, last_error = NULL,
                settled_at = CASE WHEN $3 <> 'pending' THEN now() END
          WHERE account_id = $1 AND message_id = $2",
    )
    .bind(account)
    .bind(message_id)
    .bind(outcome)
    .execute(conn)
    .await?;
    Ok(changed > 0)
}

/// Keeps the last provider failure of a check (cleared by the next answer).
pub async fn record_check_failure(
    conn: &mut PgConnection,
    account: &str,
    message_id: &str,
    error: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE threadsync.deliveries SET last_error = $3 WHERE account_id = $1 AND message_id = $2",
    )
    .bind(account)
    .bind(message_id)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// A thread as the web app reads it, with its newest messages.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ThreadView {
    pub account_id: String,
    pub thread_id: String,
    pub provider: String,
    pub conversation_type: Option<String>,
    pub title: Option<String>,
    pub status: Option<String>,
    pub unread_count: i32,
    pub latest_message_id: Option<String>,
    pub latest_message_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub synced_at: DateTime<Utc>,
    #[sqlx(skip)]
    pub messages: Vec<MessageView>,
}

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct MessageView {
    pub message_id: String,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub subject: Option<String>,
    pub body: Option<String>,
    pub is_read: Option<bool>,
    pub sent_at: DateTime<Utc>,
    #[schema(value_type = Option<Object>)]
    pub media: Option<serde_json::Value>,
    pub status: Option<String>,
}

/// One thread and its newest `limit` messages, newest first.
pub async fn thread_view(
    pool: &PgPool,
    account: &str,
    thread_id: &str,
    limit: i64,
) -> sqlx::Result<Option<ThreadView>> {
    let t: Option<ThreadView> = sqlx::query_as(
        "SELECT account_id, thread_id, provider, conversation_type, title, status, unread_count,
                latest_message_id, latest_message_at, created_at, deleted_at, synced_at
           FROM threadsync.threads WHERE account_id = $1 AND thread_id = $2",
    )
    .bind(account)
    .bind(thread_id)
    .fetch_optional(pool)
    .await?;
    let Some(mut t) = t else { return Ok(None) };
    t.messages = sqlx::query_as(
        "SELECT message_id, sender, recipient, subject, body, is_read, sent_at, media, status
           FROM threadsync.messages WHERE account_id = $1 AND thread_id = $2
          ORDER BY sent_at DESC, message_id DESC LIMIT $3",
    )
    .bind(account)
    .bind(thread_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(Some(t))
}
