//! Compares the synced copy of one account with what the provider holds (a simulator's
//! [`Expected`] rows), both ways and field by field: what we lack, what we hold that the
//! provider does not, messages filed under the wrong thread, and rows whose fields differ.
//!
//! Every field is compared as the provider has it now, including those that change on the
//! provider without a new message (eBay's unread count, conversation status and read
//! flags). A sync that has not caught such a change shows it as a difference: an
//! incremental sync re-reads only threads near the head of the lists, and a full resync
//! re-reads every thread row but refetches only threads whose latest message changed, so
//! read flags flipped on eBay stay stale on our messages until the thread gains a message.

use std::collections::{HashMap, HashSet};
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use crate::sim::{Expected, ExpectedMessage, ExpectedThread};

/// How many ids of each kind of difference a [`Comparison`] keeps for its messages.
pub const SAMPLES: usize = 5;

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Comparison {
    /// What the provider has.
    pub truth_threads: usize,
    pub truth_messages: usize,
    /// Live threads (`deleted_at IS NULL`) and messages we hold, except `kept_of_deleted`.
    pub db_threads: usize,
    pub db_messages: usize,
    /// Messages we keep, on purpose, under threads marked deleted that the provider no
    /// longer has: neither expected nor extra.
    pub kept_of_deleted: usize,
    /// Provider threads we hold no live row for.
    pub missing_threads: usize,
    /// Live threads we hold that the provider does not have.
    pub extra_threads: usize,
    /// Provider messages we do not hold under any thread.
    pub missing_messages: usize,
    /// Messages we hold that the provider does not have.
    pub extra_messages: usize,
    /// Provider messages we hold under another thread.
    pub misfiled_messages: usize,
    /// Threads we hold whose fields (title, status, unread count, latest message, type,
    /// reference, creation time) differ from the provider's.
    pub differing_threads: usize,
    /// Messages we hold under the right thread whose fields (sender, recipient, subject,
    /// body, read flag, media, time, status) differ from the provider's.
    pub differing_messages: usize,
    /// The first few of each kind, for error messages.
    pub samples: Samples,
}

/// Ids of the first [`SAMPLES`] differences of each kind; differing rows also name the
/// first field that differs, with our value and the provider's.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Samples {
    pub missing_threads: Vec<String>,
    pub extra_threads: Vec<String>,
    pub missing_messages: Vec<String>,
    pub extra_messages: Vec<String>,
    pub misfiled_messages: Vec<String>,
    pub differing_threads: Vec<String>,
    pub differing_messages: Vec<String>,
}

impl Comparison {
    /// No difference of any kind, either way.
    pub fn is_exact(&self) -> bool {
        self.missing_threads == 0
            && self.extra_threads == 0
            && self.missing_messages == 0
            && self.extra_messages == 0
            && self.misfiled_messages == 0
            && self.differing_threads == 0
            && self.differing_messages == 0
    }

    /// The counts as two lines, threads then messages, for people.
    pub fn table(&self) -> String {
        format!(
            "  threads   {} of {}   missing {}   extra {}   differing {}\n  \
             messages  {} of {}   missing {}   extra {}   misfiled {}   differing {}\n",
            self.db_threads,
            self.truth_threads,
            self.missing_threads,
            self.extra_threads,
            self.differing_threads,
            self.db_messages,
            self.truth_messages,
            self.missing_messages,
            self.extra_messages,
            self.misfiled_messages,
            self.differing_messages
        )
    }

    /// Every count on one line.
    pub fn summary(&self) -> String {
        format!(
            "threads {} held of {}, messages {} held of {} ({} kept of deleted threads); \
             missing {} threads {} messages, extra {} threads {} messages, \
             misfiled {} messages, differing {} threads {} messages",
            self.db_threads,
            self.truth_threads,
            self.db_messages,
            self.truth_messages,
            self.kept_of_deleted,
            self.missing_threads,
            self.missing_messages,
            self.extra_threads,
            self.extra_messages,
            self.misfiled_messages,
            self.differing_threads,
            self.differing_messages,
        )
    }
}

/// The summary, then the sample ids of each kind of difference found.
impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())?;
        let s = &self.samples;
        for (name, ids) in [
            ("missing threads", &s.missing_threads),
            ("extra threads", &s.extra_threads),
            ("missing messages", &s.missing_messages),
            ("extra messages", &s.extra_messages),
            ("misfiled messages", &s.misfiled_messages),
            ("differing threads", &s.differing_threads),
            ("differing messages", &s.differing_messages),
        ] {
            if !ids.is_empty() {
                write!(f, "; {name}: {}", ids.join(", "))?;
            }
        }
        Ok(())
    }
}

/// Counts one difference and keeps the first few descriptions.
fn note(count: &mut usize, samples: &mut Vec<String>, what: impl FnOnce() -> String) {
    *count += 1;
    if samples.len() < SAMPLES {
        samples.push(what());
    }
}

/// The first field whose values differ: "field: ours X, provider Y".
#[derive(Default)]
struct FirstDiff(Option<String>);

impl FirstDiff {
    fn field<T: PartialEq + fmt::Debug + ?Sized>(&mut self, name: &str, ours: &T, theirs: &T) {
        if self.0.is_none() && ours != theirs {
            self.0 = Some(format!("{name}: ours {ours:?}, provider {theirs:?}"));
        }
    }
}

struct DbThread {
    conversation_type: Option<String>,
    title: Option<String>,
    status: Option<String>,
    reference_id: Option<String>,
    reference_type: Option<String>,
    unread_count: i32,
    latest_message_id: Option<String>,
    latest_message_at: Option<DateTime<Utc>>,
    created_at: Option<DateTime<Utc>>,
    deleted: bool,
}

struct DbMessage {
    thread_id: String,
    sender: Option<String>,
    recipient: Option<String>,
    subject: Option<String>,
    body: Option<String>,
    is_read: Option<bool>,
    sent_at: DateTime<Utc>,
    media: Option<Value>,
    status: Option<String>,
}

type ThreadTuple = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i32,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    bool,
);

type MessageTuple = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<bool>,
    DateTime<Utc>,
    Option<Value>,
    Option<String>,
);

async fn load(
    pool: &PgPool,
    account: &str,
) -> anyhow::Result<(HashMap<String, DbThread>, HashMap<String, DbMessage>)> {
    let threads: Vec<ThreadTuple> = sqlx::query_as(
        "SELECT thread_id, conversation_type, title, status, reference_id, reference_type, unread_count,
                latest_message_id, latest_message_at, created_at, deleted_at IS NOT NULL
           FROM threadsync.threads WHERE account_id = $1",
    )
    .bind(account)
    .fetch_all(pool)
    .await?;
    let threads = threads
        .into_iter()
        .map(
            |(id, ctype, title, status, rid, rtype, unread, lid, lat, created, deleted)| {
                (
                    id,
                    DbThread {
                        conversation_type: ctype,
                        title,
                        status,
                        reference_id: rid,
                        reference_type: rtype,
                        unread_count: unread,
                        latest_message_id: lid,
                        latest_message_at: lat,
                        created_at: created,
                        deleted,
                    },
                )
            },
        )
        .collect();
    let messages: Vec<MessageTuple> = sqlx::query_as(
        "SELECT message_id, thread_id, sender, recipient, subject, body, is_read, sent_at, media, status
           FROM threadsync.messages WHERE account_id = $1",
    )
    .bind(account)
    .fetch_all(pool)
    .await?;
    let messages = messages
        .into_iter()
        .map(
            |(id, thread_id, sender, recipient, subject, body, is_read, sent_at, media, status)| {
                (
                    id,
                    DbMessage {
                        thread_id,
                        sender,
                        recipient,
                        subject,
                        body,
                        is_read,
                        sent_at,
                        media,
                        status,
                    },
                )
            },
        )
        .collect();
    Ok((threads, messages))
}

fn thread_diff(ours: &DbThread, want: &ExpectedThread) -> Option<String> {
    let mut d = FirstDiff::default();
    d.field("title", &ours.title, &want.title);
    d.field("status", &ours.status, &want.status);
    d.field("unread_count", &ours.unread_count, &want.unread_count);
    d.field(
        "latest_message_id",
        &ours.latest_message_id,
        &want.latest_message_id,
    );
    d.field(
        "latest_message_at",
        &ours.latest_message_at,
        &want.latest_message_at,
    );
    d.field(
        "conversation_type",
        &ours.conversation_type,
        &want.conversation_type,
    );
    d.field("reference_id", &ours.reference_id, &want.reference_id);
    d.field("reference_type", &ours.reference_type, &want.reference_type);
    if want.created_at.is_some() {
        d.field("created_at", &ours.created_at, &want.created_at);
    }
    d.0
}

fn message_diff(ours: &DbMessage, want: &ExpectedMessage) -> Option<String> {
    let mut d = FirstDiff::default();
    d.field("sender", &ours.sender, &want.sender);
    d.field("recipient", &ours.recipient, &want.recipient);
    d.field("subject", &ours.subject, &want.subject);
    d.field("body", &ours.body, &want.body);
    d.field("is_read", &ours.is_read, &want.is_read);
    d.field("media", &ours.media, &want.media);
    d.field("sent_at", &ours.sent_at, &want.sent_at);
    d.field("status", &ours.status, &want.status);
    d.0
}

/// Compares what `account` holds in the database with `expected`, the provider's rows for
/// it (`SimHandle::expected`).
pub async fn compare(
    pool: &PgPool,
    account: &str,
    expected: &Expected,
) -> anyhow::Result<Comparison> {
    let (threads, messages) = load(pool, account).await?;
    let mut c = Comparison {
        truth_threads: expected.threads.len(),
        truth_messages: expected.message_count(),
        db_threads: threads.values().filter(|t| !t.deleted).count(),
        ..Comparison::default()
    };
    let s = &mut c.samples;

    let mut want_threads: HashSet<&str> = HashSet::with_capacity(expected.threads.len());
    let mut want_messages: HashSet<&str> = HashSet::with_capacity(c.truth_messages);
    for t in &expected.threads {
        want_threads.insert(&t.thread_id);
        match threads.get(&t.thread_id).filter(|ours| !ours.deleted) {
            None => note(&mut c.missing_threads, &mut s.missing_threads, || {
                t.thread_id.clone()
            }),
            Some(ours) => {
                if let Some(d) = thread_diff(ours, t) {
                    note(&mut c.differing_threads, &mut s.differing_threads, || {
                        format!("{} ({d})", t.thread_id)
                    });
                }
            }
        }
        for m in &t.messages {
            want_messages.insert(&m.message_id);
            match messages.get(&m.message_id) {
                None => note(&mut c.missing_messages, &mut s.missing_messages, || {
                    m.message_id.clone()
                }),
                Some(ours) if ours.thread_id != t.thread_id => {
                    note(&mut c.misfiled_messages, &mut s.misfiled_messages, || {
                        format!(
                            "{} (under {}, provider {})",
                            m.message_id, ours.thread_id, t.thread_id
                        )
                    })
                }
                Some(ours) => {
                    if let Some(d) = message_diff(ours, m) {
                        note(&mut c.differing_messages, &mut s.differing_messages, || {
                            format!("{} ({d})", m.message_id)
                        });
                    }
                }
            }
        }
    }

    let mut extra_threads: Vec<&str> = threads
        .iter()
        .filter(|(id, t)| !t.deleted && !want_threads.contains(id.as_str()))
        .map(|(id, _)| id.as_str())
        .collect();
    extra_threads.sort_unstable();
    for id in extra_threads {
        note(&mut c.extra_threads, &mut s.extra_threads, || {
            id.to_string()
        });
    }

    let mut extra_messages: Vec<&str> = Vec::new();
    for (id, m) in &messages {
        if want_messages.contains(id.as_str()) {
            continue;
        }
        let of_deleted = threads.get(&m.thread_id).is_some_and(|t| t.deleted)
            && !want_threads.contains(m.thread_id.as_str());
        if of_deleted {
            c.kept_of_deleted += 1;
        } else {
            extra_messages.push(id);
        }
    }
    extra_messages.sort_unstable();
    for id in extra_messages {
        note(&mut c.extra_messages, &mut s.extra_messages, || {
            id.to_string()
        });
    }
    c.db_messages = messages.len() - c.kept_of_deleted;
    Ok(c)
}
