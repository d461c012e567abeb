//! The words providers and the engine share: rows as the tables hold them, one provider
//! error type, and the two shapes a provider's API can take (the seam's two traits).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Default)]
pub struct ThreadRow {
    pub thread_id: String,
    /// The provider list the thread was found in (a conversation type); a fetch
    /// passes it back.
    pub conversation_type: Option<String>,
    pub title: Option<String>,
    pub status: Option<String>,
    pub reference_id: Option<String>,
    pub reference_type: Option<String>,
    pub unread_count: i32,
    pub latest_message_id: Option<String>,
    pub latest_message_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    /// What else the provider says about the thread that a web app reads (a booking's
    /// listing and dates), as one JSON object; None keeps what is held.
    pub details: Option<Value>,
}

#[derive(Debug, Clone)]
pub struct MessageRow {
    pub message_id: String,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub subject: Option<String>,
    pub body: Option<String>,
    pub is_read: Option<bool>,
    pub sent_at: DateTime<Utc>,
    pub media: Option<Value>,
    /// Delivery status of a sent message, where the provider reports one.
    pub status: Option<String>,
}

/// A row the provider sent that could not be decoded: skipped and counted, never fatal
/// to the page or stream it came in.
#[derive(Debug, Clone)]
pub struct BadRow {
    pub reason: String,
}

/// Each row of a page decodes on its own.
pub type Decoded<T> = Result<T, BadRow>;

/// Decodes one row of a provider answer.
pub fn decode<T: serde::de::DeserializeOwned>(what: &str, v: Value) -> Decoded<T> {
    serde_json::from_value(v).map_err(|e| BadRow {
        reason: format!("{what}: {e}"),
    })
}

/// What went wrong with a provider call, in the terms the engine acts on.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Slow down: a burst limit. `until` when the provider says when to come back.
    #[error("{detail}")]
    Throttled {
        until: Option<DateTime<Utc>>,
        detail: String,
    },
    /// The account's budget (a daily quota) is spent until `until`: pause the account.
    #[error("{detail}")]
    QuotaSpent {
        until: DateTime<Utc>,
        detail: String,
    },
    /// The credential was refused: pause the account and say which variable to fix.
    #[error("{0}")]
    Unauthorized(String),
    /// The thread (or message) is gone at the provider.
    #[error("not found at the provider")]
    NotFound,
    /// The provider refused this request; retrying cannot help.
    #[error("{0}")]
    Rejected(String),
    /// Worth retrying: a 5xx, a timeout, a dropped connection.
    #[error("{0}")]
    Transient(String),
    /// The answer could not be read as a whole (single bad rows are [`BadRow`]s).
    #[error("{0}")]
    Malformed(String),
    /// The page cursor no longer points anywhere (its item was deleted): page again from
    /// an earlier position.
    #[error("{0}")]
    StaleCursor(String),
}

/// Where a page of a list or of a thread starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PageAt {
    Offset(u32),
    Cursor(String),
}

/// One page of a thread list, newest activity first.
#[derive(Debug)]
pub struct ThreadPage {
    pub threads: Vec<Decoded<ThreadRow>>,
    /// Entries in the whole list, where the provider says (offset lists fan out from it).
    pub total: Option<u32>,
    /// The next page; None is the end of the list.
    pub next: Option<PageAt>,
    /// The newest messages of listed threads, where the list carries them inline, by
    /// thread id: their first message page (newest first, `next` going back in time).
    pub inline: HashMap<String, MessagePage>,
    /// Entries of a [`ListRole::Groups`] list: each a list of threads of its own.
    pub groups: Vec<Decoded<Group>>,
}

/// An entry of a list that is itself a short list of threads (a booking's conversations),
/// read by a list job of its own when it changed.
#[derive(Debug, Clone)]
pub struct Group {
    /// The list name its threads are read under (passed back to [`ThreadSource::list`]).
    pub list: String,
    /// Its latest activity: an early stop ends the walk at the first page older than the
    /// cutoff.
    pub activity: Option<DateTime<Utc>>,
    /// Changes whenever anything in the group does (e.g. its update and activity times):
    /// a group whose version is held is not read again.
    pub version: String,
}

/// One page of a thread's messages.
#[derive(Debug)]
pub struct MessagePage {
    pub messages: Vec<Decoded<MessageRow>>,
    pub next: Option<PageAt>,
}

/// How an incremental run reads one list.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Incremental {
    /// The provider filters by time itself: read every page of what it returns.
    Since,
    /// Newest first, stopping at the first page with nothing changed since the watermark.
    EarlyStop,
    /// Strictly newest activity first: the walk ends with the first page that reaches
    /// back before the watermark.
    Ordered,
}

/// What a list's entries are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListRole {
    /// Threads of one type: the list's name is their `conversation_type` unless the rows
    /// say otherwise.
    Threads,
    /// Every thread of the account, whatever its type.
    All,
    /// Groups of threads ([`Group`]): a changes feed for incremental runs, which whole
    /// walks (full runs, a first run) skip.
    Groups,
}

#[derive(Debug, Clone)]
pub struct ListSpec {
    pub name: String,
    pub incremental: Incremental,
    pub role: ListRole,
}

/// "List threads, then fetch each thread": providers whose threads are listed and fetched.
#[async_trait::async_trait]
pub trait ThreadSource: Send + Sync + 'static {
    /// The lists a run walks.
    fn lists(&self) -> Vec<ListSpec>;
    /// Entries per list page (offset lists step by it).
    fn page_size(&self) -> u32;
    /// Makes the credential usable (a token minted and valid) before a request takes its
    /// send slot, so the request leaves at its slot.
    async fn ready(&self) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn list(
        &self,
        list: &str,
        at: &PageAt,
        since: Option<DateTime<Utc>>,
    ) -> Result<ThreadPage, ProviderError>;
    async fn messages(
        &self,
        thread_id: &str,
        list: Option<&str>,
        at: &PageAt,
    ) -> Result<MessagePage, ProviderError>;
    /// A thread's message pages come newest first: a fetch stops at the page that reaches
    /// what a complete earlier fetch already holds.
    fn newest_first(&self) -> bool {
        false
    }
    /// A thread's message pages come oldest first at offsets that only grow as messages
    /// are added: a fetch of a thread held in full starts at its newest message held.
    fn appends(&self) -> bool {
        false
    }
    /// The share (0..=1) of the account's provider budget in use, as the provider's last
    /// answers reported it; None: unknown. Pacing slows down as it nears 1.
    fn usage(&self) -> Option<f64> {
        None
    }
}

/// A sent message whose delivery status is followed until it is final or expires.
#[derive(Debug, Clone)]
pub struct Follow {
    /// The provider's own id of the message, which status checks ask about.
    pub remote_id: i64,
    pub validity: String,
    /// On the provider's clock.
    pub expires_at: DateTime<Utc>,
}

/// One message of a stream, with the thread it belongs to.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    pub thread_id: String,
    pub row: MessageRow,
    pub follow: Option<Follow>,
}

#[derive(Debug)]
pub struct StreamBatch {
    pub messages: Vec<Decoded<StreamMessage>>,
    /// The highest position in the batch, bad rows included: the cursor moves past them.
    pub highest: Option<i64>,
    /// The batch was full: more may follow.
    pub full: bool,
    /// The provider's clock when it answered.
    pub provider_now: DateTime<Utc>,
}

/// Where a followed message stands after one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Pending,
    Final,
    Sent,
    Expired,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Pending => "pending",
            Delivery::Final => "final",
            Delivery::Sent => "sent",
            Delivery::Expired => "expired",
        }
    }
}

#[derive(Debug)]
pub struct DeliveryCheck {
    /// The status as the message row stores it (None: not visible yet).
    pub status: Option<String>,
    pub outcome: Delivery,
}

/// "Stream messages by cursor": providers whose messages come in ascending positions
/// (SMS folders by message id), with delivery statuses to follow.
#[async_trait::async_trait]
pub trait MessageStream: Send + Sync + 'static {
    /// The streams a run reads, one at a time in this order.
    fn streams(&self) -> Vec<String>;
    /// A stream with no cursor yet starts this far back.
    fn cold_start(&self) -> chrono::Duration;
    async fn read(
        &self,
        stream: &str,
        after: Option<i64>,
        since: Option<DateTime<Utc>>,
    ) -> Result<StreamBatch, ProviderError>;
    /// Status checks: the first after `.0`, each next one twice as late, up to `.1`.
    fn check_times(&self) -> (Duration, Duration);
    /// One check of a followed message.
    async fn check(
        &self,
        remote_id: i64,
        validity: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<DeliveryCheck, ProviderError>;
}

/// A connected account's side of the seam.
#[derive(Clone)]
pub enum Source {
    Threads(std::sync::Arc<dyn ThreadSource>),
    Stream(std::sync::Arc<dyn MessageStream>),
}

/// Which of the two shapes a provider has (known before any account connects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Threads,
    Stream,
}
