//! Compares the synced copy with a simulator's ground truth (`/_sim/truth`).

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Comparison {
    pub truth_threads: usize,
    pub truth_messages: usize,
    pub db_threads: usize,
    pub db_messages: usize,
    /// Threads or messages the provider has and we do not.
    pub missing_threads: usize,
    pub missing_messages: usize,
    /// Messages we hold twice (impossible by the primary key, counted to prove it) or under
    /// the wrong thread.
    pub duplicated: usize,
    /// Messages whose body or time differs from the provider's.
    pub stale: usize,
}

impl Comparison {
    pub fn is_exact(&self) -> bool {
        self.missing_threads == 0
            && self.missing_messages == 0
            && self.duplicated == 0
            && self.stale == 0
    }
}

/// `truth` is the simulator's truth for one account: {"threads": [{conversationId, messages: [...]}]}.
/// `account` is our account id holding that data.
pub async fn compare(pool: &PgPool, account: &str, truth: &Value) -> anyhow::Result<Comparison> {
    let mut c = Comparison::default();
    let threads = truth["threads"].as_array().cloned().unwrap_or_default();
    let db_threads: HashSet<String> = sqlx::query_scalar(
        "SELECT thread_id FROM threadsync.threads WHERE account_id = $1 AND deleted_at IS NULL",
    )
    .bind(account)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let rows: Vec<(String, String, Option<String>, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT message_id, thread_id, body, sent_at FROM threadsync.messages WHERE account_id = $1")
            .bind(account)
            .fetch_all(pool)
            .await?;
    let (dups, _) = sqlx::query_as::<_, (i64, i64)>(
        "SELECT count(*) - count(DISTINCT message_id), 0::int8 FROM threadsync.messages WHERE account_id = $1",
    )
    .bind(account)
    .fetch_one(pool)
    .await?;
    c.duplicated = dups as usize;
    c.db_threads = db_threads.len();
    c.db_messages = rows.len();
    let db_messages: HashMap<&str, (&str, Option<&str>, chrono::DateTime<chrono::Utc>)> = rows
        .iter()
        .map(|(m, t, b, at)| (m.as_str(), (t.as_str(), b.as_deref(), *at)))
        .collect();

    c.truth_threads = threads.len();
    for t in &threads {
        let tid = t["conversationId"].as_str().unwrap_or_default();
        if !db_threads.contains(tid) {
            c.missing_threads += 1;
        }
        for m in t["messages"].as_array().into_iter().flatten() {
            c.truth_messages += 1;
            let mid = m["messageId"].as_str().unwrap_or_default();
            match db_messages.get(mid) {
                None => c.missing_messages += 1,
                Some((thread, _, _)) if *thread != tid => c.duplicated += 1,
                Some((_, body, at)) => {
                    let same_time = m["createdDate"]
                        .as_str()
                        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                        .is_some_and(|d| d.with_timezone(&chrono::Utc) == *at);
                    if *body != m["messageBody"].as_str() || !same_time {
                        c.stale += 1;
                    }
                }
            }
        }
    }
    Ok(c)
}
