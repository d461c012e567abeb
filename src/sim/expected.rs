//! What a synced copy of one simulated account must hold: provider-neutral thread and
//! message rows, derived from the simulator's own data (never from threadsync's provider
//! mapping, so the comparison in `verify` is an independent oracle). Served as
//! `GET /_sim/expected?account=A` and by `SimHandle::expected`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Every thread of one account, as `threadsync.threads` and `threadsync.messages` should
/// hold them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Expected {
    pub threads: Vec<ExpectedThread>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExpectedThread {
    pub thread_id: String,
    pub conversation_type: Option<String>,
    pub title: Option<String>,
    pub status: Option<String>,
    pub reference_id: Option<String>,
    pub reference_type: Option<String>,
    pub unread_count: i32,
    pub latest_message_id: Option<String>,
    pub latest_message_at: Option<DateTime<Utc>>,
    /// The thread's creation time as the provider gives it. None: the provider has none
    /// (SMS numbers); the stored value is then not compared.
    pub created_at: Option<DateTime<Utc>>,
    pub messages: Vec<ExpectedMessage>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExpectedMessage {
    pub message_id: String,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub subject: Option<String>,
    pub body: Option<String>,
    pub is_read: Option<bool>,
    pub sent_at: DateTime<Utc>,
    pub media: Option<serde_json::Value>,
    pub status: Option<String>,
}

impl Expected {
    pub fn message_count(&self) -> usize {
        self.threads.iter().map(|t| t.messages.len()).sum()
    }

    pub fn thread(&self, thread_id: &str) -> Option<&ExpectedThread> {
        self.threads.iter().find(|t| t.thread_id == thread_id)
    }
}

/// Epoch milliseconds as a UTC time (the epoch itself for an out-of-range value, which
/// the simulators never produce).
pub(crate) fn utc_ms(ms: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default()
}
