//! SMSEagle API v2 client: folder reads by message-id range and one message's status.
//! The v2 read endpoint is unverified, so every path and parameter name lives in
//! [`ReadApi`], which jobs.toml can override per account.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::providers::http::{self, Secret};
use crate::sync::vocab::ProviderError;

/// Where and how the gateway serves folder reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadApi {
    /// Folder read path; `{folder}` is replaced by the folder name.
    pub folder_path: String,
    pub token_header: String,
    pub id_from_param: String,
    pub id_to_param: String,
    pub date_from_param: String,
    pub limit_param: String,
    /// chrono format of `date_from` values.
    pub date_format: String,
    /// The folder where a sent message's delivery status is read.
    pub status_folder: String,
}

impl Default for ReadApi {
    fn default() -> Self {
        ReadApi {
            folder_path: "/api/v2/messages/{folder}".into(),
            token_header: "access-token".into(),
            id_from_param: "id_from".into(),
            id_to_param: "id_to".into(),
            date_from_param: "date_from".into(),
            limit_param: "limit".into(),
            date_format: "%Y%m%d%H%M%S".into(),
            status_folder: "sentitems".into(),
        }
    }
}

/// One row of a folder as the gateway shows it (v2 names, v1/Gammu names as aliases).
#[derive(Debug, Clone, Deserialize)]
pub struct Sms {
    #[serde(alias = "ID")]
    pub id: u64,
    #[serde(default)]
    pub folder: Option<String>,
    #[serde(default, alias = "SenderNumber", alias = "DestinationNumber")]
    pub number: Option<String>,
    #[serde(default, alias = "TextDecoded")]
    pub text: Option<String>,
    #[serde(default, alias = "Status")]
    pub status: Option<String>,
    #[serde(
        alias = "ReceivingDateTime",
        alias = "SendingDateTime",
        alias = "InsertIntoDB"
    )]
    pub date: String,
    #[serde(default, alias = "RelativeValidity")]
    pub validity: Option<String>,
    #[serde(default)]
    pub read: Option<bool>,
    #[serde(default, alias = "SequencePosition")]
    pub sequence_position: Option<u32>,
}

impl Sms {
    /// The message date, on the gateway's clock.
    pub fn sent_at(&self) -> Option<DateTime<Utc>> {
        parse_gateway_date(&self.date)
    }
}

/// What one request returned, with the gateway's clock when it answered (from the HTTP
/// `Date` header; our own clock when the header is missing).
#[derive(Debug)]
pub struct Reply<T> {
    pub value: T,
    pub gateway_now: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct SmsEagleClient {
    http: reqwest::Client,
    base: String,
    token: Secret,
    api: ReadApi,
}

impl SmsEagleClient {
    pub fn new(base: &str, token: String, timeout: Duration, api: ReadApi) -> anyhow::Result<Self> {
        Ok(SmsEagleClient {
            http: http::client(timeout, 8)?,
            base: base.trim_end_matches('/').to_string(),
            token: Secret::new(token),
            api,
        })
    }

    pub fn api(&self) -> &ReadApi {
        &self.api
    }

    /// Up to `limit` messages of `folder` with id above `after_id`, ascending; with no
    /// `after_id`, those dated from `date_from` on. Rows are decoded one at a time.
    pub async fn folder(
        &self,
        folder: &str,
        after_id: Option<u64>,
        date_from: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Reply<Vec<Value>>, ProviderError> {
        let mut q = vec![(self.api.limit_param.as_str(), limit.to_string())];
        if let Some(id) = after_id {
            q.push((
                self.api.id_from_param.as_str(),
                id.saturating_add(1).to_string(),
            ));
        } else if let Some(d) = date_from {
            q.push((
                self.api.date_from_param.as_str(),
                d.format(&self.api.date_format).to_string(),
            ));
        }
        self.read(folder, &q).await
    }

    /// One sent message as the status folder shows it now (None: not there, e.g. still
    /// in the outbox, or deleted).
    pub async fn status(&self, id: u64) -> Result<Reply<Option<Sms>>, ProviderError> {
        let q = [
            (self.api.id_from_param.as_str(), id.to_string()),
            (self.api.id_to_param.as_str(), id.to_string()),
        ];
        let a = self.read(&self.api.status_folder, &q).await?;
        Ok(Reply {
            value: a
                .value
                .into_iter()
                .filter_map(|v| serde_json::from_value::<Sms>(v).ok())
                .find(|m| m.id == id),
            gateway_now: a.gateway_now,
        })
    }

    async fn read(
        &self,
        folder: &str,
        query: &[(&str, String)],
    ) -> Result<Reply<Vec<Value>>, ProviderError> {
        let path = self.api.folder_path.replace("{folder}", folder);
        let mut token =
            reqwest::header::HeaderValue::from_str(self.token.expose()).map_err(|_| {
                ProviderError::Rejected(
                    "the token holds characters an HTTP header cannot carry".into(),
                )
            })?;
        token.set_sensitive(true);
        let req = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .header(self.api.token_header.as_str(), token)
            .header("Accept", "application/json");
        let answer = http::send(req).await?;
        let gateway_now = answer
            .headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| DateTime::parse_from_rfc2822(s).ok())
            .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
        if answer.is_success() {
            return Ok(Reply {
                value: answer.json()?,
                gateway_now,
            });
        }
        Err(match answer.status {
            403 => {
                ProviderError::Unauthorized("SMSEagle rejected the access token (HTTP 403)".into())
            }
            _ => answer.error("SMSEagle", answer.message(&["/message", "/error"])),
        })
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC, as the device stores it) or RFC 3339.
pub fn parse_gateway_date(s: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .map(|t| t.and_utc())
        .ok()
        .or_else(|| {
            DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        })
}

/// Gammu (`SendingOKNoReport`) and snake (`sending_ok_no_report`) spellings to snake.
pub fn normalize_status(s: &str) -> String {
    let chars: Vec<char> = s.trim().chars().collect();
    let mut out = String::with_capacity(chars.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            if prev.is_ascii_lowercase() || (prev.is_ascii_uppercase() && next_lower) {
                out.push('_');
            }
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// No later report can change these (a send without a report request included).
pub fn is_final(status: &str) -> bool {
    matches!(
        status,
        "delivery_ok" | "delivery_failed" | "sending_error" | "error" | "sending_ok_no_report"
    )
}

/// A validity such as `5m`, `10m`, `30m`, `1h`, `2d` as a duration; None for `max` (or
/// anything unreadable, which we treat as unbounded too).
pub fn validity(v: &str) -> Option<chrono::Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = v.split_at(split);
    let n: i64 = n.parse().ok()?;
    match unit {
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        "w" => chrono::Duration::try_weeks(n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_normalize() {
        assert_eq!(
            normalize_status("SendingOKNoReport"),
            "sending_ok_no_report"
        );
        assert_eq!(normalize_status("DeliveryOK"), "delivery_ok");
        assert_eq!(normalize_status("delivery_failed"), "delivery_failed");
        assert_eq!(normalize_status("Error"), "error");
        assert!(is_final("delivery_ok") && !is_final("sending_ok") && !is_final("reserved"));
    }

    #[test]
    fn validities() {
        assert_eq!(validity("5m"), chrono::Duration::try_minutes(5));
        assert_eq!(validity("1h"), chrono::Duration::try_hours(1));
        assert_eq!(validity("max"), None);
        assert_eq!(validity(""), None);
    }
}
