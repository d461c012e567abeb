//! eBay: two conversation lists (FROM_MEMBERS, FROM_EBAY), offset pages of 50 with a
//! `total`, and each conversation's messages in offset pages. A 429 is a burst limit or
//! the daily quota; the Analytics API tells which.

mod client;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use crate::config::{AccountConfig, AccountKeys, ConfigError};
use crate::sync::vocab::{
    decode, Incremental, ListRole, ListSpec, MessagePage, MessageRow, PageAt, ProviderError, Shape,
    Source, ThreadPage, ThreadRow, ThreadSource,
};
use crate::sync::{Connect, Provider};

pub use client::{Conversation, EbayClient, MessageDetail};

pub const FROM_MEMBERS: &str = "FROM_MEMBERS";
pub const FROM_EBAY: &str = "FROM_EBAY";
/// eBay's maximum page size for both list and detail.
pub const PAGE_LIMIT: u32 = 50;

pub struct Ebay;

impl Provider for Ebay {
    fn name(&self) -> &'static str {
        "ebay"
    }

    fn shape(&self) -> Shape {
        Shape::Threads
    }

    fn settings(&self, _keys: &mut AccountKeys) -> Result<Box<dyn Connect>, ConfigError> {
        Ok(Box::new(Settings))
    }
}

/// eBay accounts have no keys beyond the common ones.
#[derive(Debug)]
struct Settings;

impl Connect for Settings {
    fn connect(&self, a: &AccountConfig, secret: String) -> anyhow::Result<Source> {
        let client = EbayClient::new(&a.base_url, secret, a.request_timeout)?;
        Ok(Source::Threads(Arc::new(client)))
    }
}

fn offset_of(at: &PageAt) -> Result<u32, ProviderError> {
    match at {
        PageAt::Offset(o) => Ok(*o),
        PageAt::Cursor(_) => Err(ProviderError::Rejected(
            "eBay pages by offset, not by cursor".into(),
        )),
    }
}

/// The page after `offset` when eBay says there is one.
fn next(offset: u32, next: &Option<String>) -> Option<PageAt> {
    next.as_ref()
        .and_then(|_| offset.checked_add(PAGE_LIMIT))
        .map(PageAt::Offset)
}

impl EbayClient {
    /// A 429: the daily quota when the Analytics API says it is spent, else a burst.
    async fn throttled(&self) -> ProviderError {
        match self.quota().await {
            Ok(Some(q)) if q.remaining <= 0 => ProviderError::QuotaSpent {
                until: q.reset.unwrap_or_else(|| Utc::now() + Duration::hours(1)),
                detail: "eBay daily quota exhausted (429 errorId 2001)".into(),
            },
            Ok(_) => ProviderError::Throttled {
                until: None,
                detail: "eBay burst rate limit (429 errorId 2001, quota not exhausted)".into(),
            },
            Err(q) => ProviderError::Throttled {
                until: None,
                detail: format!("eBay 429, and the quota lookup failed: {q}"),
            },
        }
    }

    async fn checked<T>(&self, r: Result<T, ProviderError>) -> Result<T, ProviderError> {
        match r {
            Err(ProviderError::Throttled { .. }) => Err(self.throttled().await),
            r => r,
        }
    }
}

#[async_trait::async_trait]
impl ThreadSource for EbayClient {
    fn lists(&self) -> Vec<ListSpec> {
        vec![
            // start_time works only for FROM_MEMBERS; eBay's own messages come newest first.
            ListSpec {
                name: FROM_MEMBERS.into(),
                incremental: Incremental::Since,
                role: ListRole::Threads,
            },
            ListSpec {
                name: FROM_EBAY.into(),
                incremental: Incremental::EarlyStop,
                role: ListRole::Threads,
            },
        ]
    }

    fn page_size(&self) -> u32 {
        PAGE_LIMIT
    }

    async fn list(
        &self,
        list: &str,
        at: &PageAt,
        since: Option<DateTime<Utc>>,
    ) -> Result<ThreadPage, ProviderError> {
        let offset = offset_of(at)?;
        let page = self
            .checked(self.conversations(list, offset, since).await)
            .await?;
        Ok(ThreadPage {
            total: page
                .total
                .map(|t| u32::try_from(t.max(0)).unwrap_or(u32::MAX)),
            next: next(offset, &page.next),
            threads: page
                .conversations
                .into_iter()
                .map(|v| decode::<Conversation>("conversation", v).map(thread_row))
                .collect(),
            inline: Default::default(),
            groups: Vec::new(),
        })
    }

    async fn messages(
        &self,
        thread_id: &str,
        list: Option<&str>,
        at: &PageAt,
    ) -> Result<MessagePage, ProviderError> {
        let offset = offset_of(at)?;
        let list = list.unwrap_or(FROM_MEMBERS);
        let page = self
            .checked(self.conversation(thread_id, list, offset).await)
            .await?;
        Ok(MessagePage {
            next: next(offset, &page.next),
            messages: page
                .messages
                .into_iter()
                .map(|v| decode::<MessageDetail>("message", v).map(message_row))
                .collect(),
        })
    }
}

fn thread_row(c: Conversation) -> ThreadRow {
    ThreadRow {
        thread_id: c.conversation_id,
        conversation_type: c.conversation_type,
        title: c.conversation_title,
        status: c.conversation_status,
        reference_id: c.reference_id,
        reference_type: c.reference_type,
        unread_count: c.unread_count.unwrap_or(0),
        latest_message_id: c.latest_message.as_ref().map(|m| m.message_id.clone()),
        latest_message_at: c.latest_message.as_ref().map(|m| m.created_date),
        created_at: c.created_date,
        details: None,
    }
}

fn message_row(m: MessageDetail) -> MessageRow {
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
