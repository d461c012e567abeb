//! eBay Commerce Message API client (commerce/message/v1) and the Developer Analytics
//! rate-limit lookup that tells a daily-quota 429 from a burst 429.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::providers::http::{self, Secret};
use crate::sync::vocab::ProviderError;

use super::PAGE_LIMIT;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageDetail {
    pub message_id: String,
    pub created_date: DateTime<Utc>,
    #[serde(default)]
    pub sender_username: Option<String>,
    #[serde(default)]
    pub recipient_username: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub message_body: Option<String>,
    #[serde(default)]
    pub read_status: Option<bool>,
    #[serde(default)]
    pub message_media: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    pub conversation_id: String,
    #[serde(default)]
    pub conversation_status: Option<String>,
    #[serde(default)]
    pub conversation_title: Option<String>,
    #[serde(default)]
    pub conversation_type: Option<String>,
    #[serde(default)]
    pub created_date: Option<DateTime<Utc>>,
    #[serde(default)]
    pub reference_id: Option<String>,
    #[serde(default)]
    pub reference_type: Option<String>,
    #[serde(default)]
    pub unread_count: Option<i32>,
    #[serde(default)]
    pub latest_message: Option<MessageDetail>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationsPage {
    #[serde(default)]
    pub total: Option<i64>,
    #[serde(default)]
    pub next: Option<String>,
    /// Decoded one at a time: one bad row must not sink the page.
    #[serde(default)]
    pub conversations: Vec<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagesPage {
    #[serde(default)]
    pub next: Option<String>,
    #[serde(default)]
    pub messages: Vec<Value>,
}

/// The Analytics API's view of the Message API quota.
#[derive(Debug, Clone)]
pub struct Quota {
    pub remaining: i64,
    pub reset: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug)]
pub struct EbayClient {
    http: reqwest::Client,
    /// Host root, e.g. https://api.ebay.com (paths are appended).
    base: String,
    token: Secret,
}

impl EbayClient {
    pub fn new(base: &str, token: String, timeout: Duration) -> anyhow::Result<Self> {
        Ok(EbayClient {
            http: http::client(timeout, 64)?,
            base: base.trim_end_matches('/').to_string(),
            token: Secret::new(token),
        })
    }

    /// getConversations: one page of a conversation list.
    pub async fn conversations(
        &self,
        conversation_type: &str,
        offset: u32,
        start_time: Option<DateTime<Utc>>,
    ) -> Result<ConversationsPage, ProviderError> {
        let mut q = vec![
            ("conversation_type", conversation_type.to_string()),
            ("limit", PAGE_LIMIT.to_string()),
            ("offset", offset.to_string()),
        ];
        if let Some(t) = start_time {
            q.push(("start_time", t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()));
        }
        self.get("/commerce/message/v1/conversation", &q).await
    }

    /// getConversation: one page of one conversation's messages.
    pub async fn conversation(
        &self,
        conversation_id: &str,
        conversation_type: &str,
        offset: u32,
    ) -> Result<MessagesPage, ProviderError> {
        let q = [
            ("conversation_type", conversation_type.to_string()),
            ("limit", PAGE_LIMIT.to_string()),
            ("offset", offset.to_string()),
        ];
        let path = format!(
            "/commerce/message/v1/conversation/{}",
            http::path_segment(conversation_id)
        );
        self.get(&path, &q).await
    }

    /// Remaining Message API quota, from the Developer Analytics API.
    pub async fn quota(&self) -> Result<Option<Quota>, ProviderError> {
        let v: Value = self
            .get(
                "/developer/analytics/v1_beta/rate_limit/",
                &[("api_name", "message".into())],
            )
            .await?;
        let rate = v["rateLimits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| {
                l["apiName"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case("message"))
            })
            .flat_map(|l| l["resources"].as_array().cloned().unwrap_or_default())
            .flat_map(|r| r["rates"].as_array().cloned().unwrap_or_default())
            .next();
        Ok(rate.and_then(|r| {
            Some(Quota {
                remaining: r["remaining"].as_i64()?,
                reset: r["reset"]
                    .as_str()
                    .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    .map(|t| t.with_timezone(&Utc)),
            })
        }))
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ProviderError> {
        let req = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .bearer_auth(self.token.expose())
            .header("Accept", "application/json");
        let answer = http::send(req).await?;
        if answer.is_success() {
            return answer.json();
        }
        Err(answer.error("eBay", answer.message(&["/errors/0/message"])))
    }
}
