//! eBay Commerce Message API client (commerce/message/v1) and the Developer Analytics
//! rate-limit lookup that tells a daily-quota 429 from a burst 429.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

pub const FROM_MEMBERS: &str = "FROM_MEMBERS";
pub const FROM_EBAY: &str = "FROM_EBAY";
/// eBay's maximum page size for both list and detail.
pub const PAGE_LIMIT: u32 = 50;

#[derive(Debug, thiserror::Error)]
pub enum EbayError {
    /// HTTP 429 (errorId 2001): a burst limit or the daily quota; ask `quota()` which.
    #[error("eBay answered 429 Too Many Requests (errorId 2001)")]
    RateLimited,
    #[error("eBay rejected the access token (HTTP {0})")]
    Unauthorized(u16),
    #[error("not found (HTTP 404)")]
    NotFound,
    #[error("eBay refused the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("eBay server error (HTTP {0})")]
    Server(u16),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("malformed response from eBay: {0}")]
    Malformed(String),
}

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
    #[serde(default)]
    pub conversations: Vec<Conversation>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagesPage {
    #[serde(default)]
    pub total: Option<i64>,
    #[serde(default)]
    pub next: Option<String>,
    #[serde(default)]
    pub messages: Vec<MessageDetail>,
}

/// The Analytics API's view of the Message API quota.
#[derive(Debug, Clone)]
pub struct Quota {
    pub remaining: i64,
    pub reset: Option<DateTime<Utc>>,
}

#[derive(Clone)]
pub struct EbayClient {
    http: reqwest::Client,
    /// Host root, e.g. https://api.ebay.com (paths are appended).
    base: String,
    token: String,
}

impl std::fmt::Debug for EbayClient {
    // Never print the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbayClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl EbayClient {
    pub fn new(base: &str, token: String, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(EbayClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// getConversations: one page of a conversation list.
    pub async fn conversations(
        &self,
        conversation_type: &str,
        offset: u32,
        start_time: Option<DateTime<Utc>>,
    ) -> Result<ConversationsPage, EbayError> {
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
    pub async fn messages(
        &self,
        conversation_id: &str,
        conversation_type: &str,
        offset: u32,
    ) -> Result<MessagesPage, EbayError> {
        let q = [
            ("conversation_type", conversation_type.to_string()),
            ("limit", PAGE_LIMIT.to_string()),
            ("offset", offset.to_string()),
        ];
        let path = format!(
            "/commerce/message/v1/conversation/{}",
            urlencode(conversation_id)
        );
        self.get(&path, &q).await
    }

    /// Remaining Message API quota, from the Developer Analytics API.
    pub async fn quota(&self) -> Result<Option<Quota>, EbayError> {
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
    ) -> Result<T, EbayError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .bearer_auth(&self.token)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| EbayError::Transport(describe(e)))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| EbayError::Transport(describe(e)))?;
        match status {
            200..=299 => {
                serde_json::from_slice(&body).map_err(|e| EbayError::Malformed(e.to_string()))
            }
            429 => Err(EbayError::RateLimited),
            401 => Err(EbayError::Unauthorized(status)),
            404 => Err(EbayError::NotFound),
            500..=599 => Err(EbayError::Server(status)),
            _ => Err(EbayError::Rejected {
                status,
                message: error_message(&body),
            }),
        }
    }
}

/// The first error's message from eBay's error envelope, or a snippet of the body.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

/// reqwest errors without the URL (no secrets live there, but keep lines short).
fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        e.without_url().to_string()
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
