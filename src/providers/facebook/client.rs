//! Graph API client for a Page's conversations (`/{page}/conversations`, with messages
//! expanded inline) and a conversation's messages, and the meaning of Graph's error codes
//! and usage headers.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::providers::http::{self, Answer, Secret};
use crate::sync::vocab::{PageAt, ProviderError};

/// Fields of a message, inline and on the messages edge alike.
const MESSAGE_FIELDS: &str = "id,created_time,from,to,message,attachments";

/// Usage reported longer ago than this is no longer known.
const USAGE_FRESH: Duration = Duration::from_secs(120);

/// Graph's time format: `2025-12-26T09:46:38+0000`.
fn graph_time<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = String::deserialize(d)?;
    DateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%z")
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| serde::de::Error::custom(format!("time {s:?}: {e}")))
}

/// A party of a conversation or a message: Messenger gives `name`, Instagram `username`.
#[derive(Debug, Clone, Deserialize)]
pub struct Party {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Parties {
    #[serde(default)]
    pub data: Vec<Party>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub id: String,
    #[serde(deserialize_with = "graph_time")]
    pub created_time: DateTime<Utc>,
    #[serde(default)]
    pub from: Option<Party>,
    #[serde(default)]
    pub to: Option<Parties>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub attachments: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Cursors {
    #[serde(default)]
    pub after: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Paging {
    #[serde(default)]
    pub cursors: Cursors,
    /// Present while more items follow; its absence is the only end of a list.
    #[serde(default)]
    pub next: Option<String>,
}

impl Paging {
    /// The page after this one: `after`, but only while `next` says there is one.
    pub fn following(&self) -> Option<PageAt> {
        self.next.as_ref()?;
        self.cursors.after.clone().map(PageAt::Cursor)
    }
}

/// A list of rows decoded one at a time, with its paging.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Edge {
    #[serde(default)]
    pub data: Vec<Value>,
    #[serde(default)]
    pub paging: Option<Paging>,
}

impl Edge {
    pub fn next(&self) -> Option<PageAt> {
        self.paging.as_ref().and_then(Paging::following)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Conversation {
    pub id: String,
    #[serde(deserialize_with = "graph_time")]
    pub updated_time: DateTime<Utc>,
    #[serde(default)]
    pub unread_count: Option<i32>,
    #[serde(default)]
    pub participants: Parties,
    /// The newest messages, inline.
    #[serde(default)]
    pub messages: Option<Edge>,
}

pub struct GraphClient {
    http: reqwest::Client,
    /// `{base_url}/{version}`.
    root: String,
    token: Secret,
    pub page_id: String,
    /// The business's own id among a conversation's participants.
    pub own_id: String,
    pub platform: &'static str,
    page_size: u32,
    inline: u32,
    /// The highest usage percentage the last answer carried, and when.
    usage: Mutex<Option<(f64, Instant)>>,
}

pub struct Options {
    pub version: String,
    pub page_id: String,
    pub own_id: String,
    pub platform: &'static str,
    pub page_size: u32,
    pub inline: u32,
}

impl GraphClient {
    pub fn new(
        base_url: &str,
        token: String,
        timeout: Duration,
        o: Options,
    ) -> anyhow::Result<Self> {
        Ok(GraphClient {
            http: http::client(timeout, 16)?,
            root: format!("{}/{}", base_url.trim_end_matches('/'), o.version),
            token: Secret::new(token),
            page_id: o.page_id,
            own_id: o.own_id,
            platform: o.platform,
            page_size: o.page_size,
            inline: o.inline,
            usage: Mutex::new(None),
        })
    }

    /// One page of the Page's conversations, newest activity first, with each one's
    /// newest messages inline.
    pub async fn conversations(&self, after: Option<&str>) -> Result<Edge, ProviderError> {
        let fields = format!(
            "id,updated_time,unread_count,participants,messages.limit({}){{{MESSAGE_FIELDS}}}",
            self.inline
        );
        let url = format!(
            "{}/{}/conversations",
            self.root,
            http::path_segment(&self.page_id)
        );
        let limit = self.page_size.to_string();
        let mut q = vec![
            ("platform", self.platform),
            ("fields", fields.as_str()),
            ("limit", limit.as_str()),
        ];
        if let Some(a) = after {
            q.push(("after", a));
        }
        self.get(&url, &q, after.is_some()).await
    }

    /// One page of a conversation's messages, newest first.
    pub async fn messages(
        &self,
        conversation: &str,
        after: Option<&str>,
    ) -> Result<Edge, ProviderError> {
        let url = format!(
            "{}/{}/messages",
            self.root,
            http::path_segment(conversation)
        );
        let limit = self.page_size.to_string();
        let mut q = vec![("fields", MESSAGE_FIELDS), ("limit", limit.as_str())];
        if let Some(a) = after {
            q.push(("after", a));
        }
        self.get(&url, &q, after.is_some()).await
    }

    async fn get(
        &self,
        url: &str,
        query: &[(&str, &str)],
        with_cursor: bool,
    ) -> Result<Edge, ProviderError> {
        let req = self
            .http
            .get(url)
            .query(query)
            .bearer_auth(self.token.expose());
        let answer = http::send(req).await?;
        let usage = Usage::of(&answer.headers);
        if answer.is_success() {
            // An answer without the header says nothing: keep what the last one said. A
            // refusal's usage (100%) is not kept: the pause it causes covers it.
            if let (Some(now), Ok(mut u)) = (usage, self.usage.lock()) {
                *u = Some((now.percent, Instant::now()));
            }
            return answer.json();
        }
        Err(error(&answer, usage, with_cursor))
    }

    /// The share of the Page's budget in use, while the last report is fresh.
    pub fn usage(&self) -> Option<f64> {
        let u = self.usage.lock().ok()?;
        u.filter(|(_, at)| at.elapsed() < USAGE_FRESH)
            .map(|(pct, _)| pct / 100.0)
    }
}

/// `X-Business-Use-Case-Usage`: `{"<id>": [{"type", "call_count", "total_cputime",
/// "total_time", "estimated_time_to_regain_access"}]}`, percentages and minutes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// The highest of the percentages.
    pub percent: f64,
    pub regain_minutes: f64,
}

impl Usage {
    pub fn of(headers: &HeaderMap) -> Option<Usage> {
        let raw = headers.get("x-business-use-case-usage")?.to_str().ok()?;
        let v: Value = serde_json::from_str(raw).ok()?;
        let entries = v
            .as_object()?
            .values()
            .filter_map(Value::as_array)
            .flatten();
        let mut found: Option<Usage> = None;
        for e in entries {
            let num = |k: &str| e.get(k).and_then(Value::as_f64).filter(|n| n.is_finite());
            let percent = ["call_count", "total_cputime", "total_time"]
                .iter()
                .filter_map(|k| num(k))
                .fold(0.0, f64::max);
            let regain = num("estimated_time_to_regain_access").unwrap_or(0.0);
            let u = found.get_or_insert(Usage {
                percent: 0.0,
                regain_minutes: 0.0,
            });
            u.percent = u.percent.max(percent.clamp(0.0, 100.0));
            u.regain_minutes = u.regain_minutes.max(regain.clamp(0.0, 7.0 * 24.0 * 60.0));
        }
        found
    }

    fn regain_at(&self) -> Option<DateTime<Utc>> {
        (self.regain_minutes > 0.0).then(|| {
            Utc::now() + chrono::Duration::milliseconds((self.regain_minutes * 60_000.0) as i64)
        })
    }
}

#[derive(Debug, Default, Deserialize)]
struct GraphError {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    error_subcode: Option<i64>,
    #[serde(default)]
    is_transient: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: GraphError,
}

/// What a Graph error answer means (Meta's error codes; HTTP status only as a fallback).
fn error(answer: &Answer, usage: Option<Usage>, with_cursor: bool) -> ProviderError {
    let body: ErrorBody = serde_json::from_slice(&answer.body).unwrap_or_default();
    let e = body.error;
    let message = answer.message(&["/error/message"]);
    let code = e.code.unwrap_or(0);
    let detail = |what: &str| format!("{what} (Graph code {code}): {message}");
    match code {
        4 | 17 | 32 | 341 | 613 => ProviderError::Throttled {
            until: usage.and_then(|u| u.regain_at()),
            detail: detail("Facebook rate limit"),
        },
        80000..=80014 => ProviderError::QuotaSpent {
            until: usage
                .and_then(|u| u.regain_at())
                .unwrap_or_else(|| Utc::now() + chrono::Duration::minutes(1)),
            detail: detail("Facebook business use case budget spent"),
        },
        102 | 104 | 190 => ProviderError::Unauthorized(format!(
            "Facebook refused the Page token (Graph code {code}{}): re-authorize the Page token",
            e.error_subcode
                .map(|s| format!(", subcode {s}"))
                .unwrap_or_default()
        )),
        10 | 200..=299 => ProviderError::Rejected(detail("permission missing")),
        100 if e.error_subcode == Some(33) => ProviderError::NotFound,
        // Graph's answer to a cursor whose item was deleted.
        100 if with_cursor => ProviderError::StaleCursor(detail("stale cursor")),
        1 | 2 => ProviderError::Transient(detail("temporary Graph error")),
        _ if e.is_transient == Some(true) => {
            ProviderError::Transient(detail("temporary Graph error"))
        }
        _ => answer.error("Facebook", message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn answer(status: u16, body: &str, usage: Option<&str>) -> Answer {
        let mut headers = HeaderMap::new();
        if let Some(u) = usage {
            headers.insert(
                "x-business-use-case-usage",
                HeaderValue::from_str(u).expect("header"),
            );
        }
        Answer {
            status,
            headers,
            body: bytes::Bytes::from(body.to_string()),
        }
    }

    fn classify(code: i64, sub: Option<i64>, usage: Option<&str>, cursor: bool) -> ProviderError {
        let mut e =
            serde_json::json!({"error": {"message": "m", "type": "OAuthException", "code": code}});
        if let Some(s) = sub {
            e["error"]["error_subcode"] = s.into();
        }
        let a = answer(400, &e.to_string(), usage);
        error(&a, Usage::of(&a.headers), cursor)
    }

    #[test]
    fn graph_codes_mean_what_meta_documents() {
        let regain = r#"{"p":[{"type":"messenger","call_count":100,"total_cputime":3,"total_time":4,"estimated_time_to_regain_access":7}]}"#;
        for code in [4, 17, 32, 613] {
            match classify(code, None, Some(regain), false) {
                ProviderError::Throttled {
                    until: Some(at), ..
                } => {
                    let mins = (at - Utc::now()).num_minutes();
                    assert!((6..=7).contains(&mins), "{code}: {mins}");
                }
                e => panic!("{code}: {e:?}"),
            }
            assert!(matches!(
                classify(code, None, None, false),
                ProviderError::Throttled { until: None, .. }
            ));
        }
        assert!(matches!(
            classify(80006, None, Some(regain), false),
            ProviderError::QuotaSpent { .. }
        ));
        assert!(matches!(
            classify(80001, None, None, false),
            ProviderError::QuotaSpent { .. }
        ));
        match classify(190, Some(463), None, false) {
            ProviderError::Unauthorized(m) => assert!(m.contains("re-authorize"), "{m}"),
            e => panic!("{e:?}"),
        }
        for code in [10, 200, 299] {
            assert!(matches!(
                classify(code, None, None, false),
                ProviderError::Rejected(_)
            ));
        }
        for code in [1, 2] {
            assert!(matches!(
                classify(code, None, None, false),
                ProviderError::Transient(_)
            ));
        }
        assert!(matches!(
            classify(100, Some(33), None, true),
            ProviderError::NotFound
        ));
        assert!(matches!(
            classify(100, None, None, true),
            ProviderError::StaleCursor(_)
        ));
        assert!(matches!(
            classify(100, None, None, false),
            ProviderError::Rejected(_)
        ));
    }

    #[test]
    fn usage_is_the_highest_percentage_and_absent_is_unknown() {
        let a = answer(
            200,
            "{}",
            Some(
                r#"{"p":[{"call_count":12,"total_cputime":96,"total_time":40,"estimated_time_to_regain_access":0}]}"#,
            ),
        );
        let u = Usage::of(&a.headers).expect("usage");
        assert_eq!(u.percent, 96.0);
        assert_eq!(u.regain_at(), None);
        assert_eq!(Usage::of(&answer(200, "{}", None).headers), None);
        assert_eq!(
            Usage::of(&answer(200, "{}", Some("not json")).headers),
            None
        );
    }

    #[test]
    fn the_end_of_a_list_is_only_the_absence_of_next() {
        let empty_with_next: Edge = serde_json::from_str(
            r#"{"data": [], "paging": {"cursors": {"after": "c2"}, "next": "https://x/y?after=c2"}}"#,
        )
        .expect("edge");
        assert_eq!(empty_with_next.next(), Some(PageAt::Cursor("c2".into())));
        let last: Edge = serde_json::from_str(
            r#"{"data": [{"id": "t_1"}], "paging": {"cursors": {"after": "c9"}}}"#,
        )
        .expect("edge");
        assert_eq!(last.next(), None);
    }
}
