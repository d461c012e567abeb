//! Hostaway (vacation-rental PMS): threads are conversations, messages their conversation
//! messages. A full run reads every conversation (`/v1/conversations`, offset pages); an
//! incremental run reads reservations by last update with an early stop, each changed
//! reservation's conversations, and the head of the conversation list (latest message
//! first) for conversations without a reservation. The token is minted from the client
//! secret (client.rs). Hostaway allows 15 requests per 10 s per IP and 20 per account.

mod client;
mod webhook;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{AccountConfig, AccountKeys, ConfigError};
use crate::sync::vocab::{
    decode, Decoded, Group, Incremental, ListRole, ListSpec, MessagePage, MessageRow, PageAt,
    ProviderError, Shape, Source, ThreadPage, ThreadRow, ThreadSource,
};
use crate::sync::{Connect, Provider};

pub use client::HostawayClient;
use client::{hostaway_time, optional_time, Envelope};
pub use webhook::{HostawayWebhook, PASSWORD_ENV, USER_ENV};

/// Hostaway's largest page.
pub const MAX_PAGE: u32 = 100;

/// The list of every conversation, and the reservations feed.
const CONVERSATIONS: &str = "conversations";
const RESERVATIONS: &str = "reservations";
/// A reservation's conversations are listed under `reservation/{id}`.
const RESERVATION_PREFIX: &str = "reservation/";

pub struct Hostaway;

impl Provider for Hostaway {
    fn name(&self) -> &'static str {
        "hostaway"
    }

    fn shape(&self) -> Shape {
        Shape::Threads
    }

    /// Paced by its window, not by spacing.
    fn default_rate(&self) -> f64 {
        0.0
    }

    /// 15 per 10 s: the per-IP limit, which is what binds one account leaving through one
    /// IP (the per-account limit is 20). Accounts sharing an IP share a limit group.
    fn default_window(&self) -> Option<(u32, u32)> {
        Some((15, client::WINDOW_SECS))
    }

    fn settings(&self, keys: &mut AccountKeys) -> Result<Box<dyn Connect>, ConfigError> {
        Ok(Box::new(Settings::read(keys)?))
    }

    fn webhook(&self) -> Option<&'static dyn crate::sync::provider::Webhook> {
        Some(&HostawayWebhook)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The Hostaway account id: the client id tokens are minted for, and the account
    /// webhooks name.
    pub client_id: String,
    /// Conversations, reservations and messages per page.
    pub page_size: u32,
    /// Also sync scheduled (not yet sent) messages.
    pub scheduled_messages: bool,
}

impl Settings {
    fn read(keys: &mut AccountKeys) -> Result<Settings, ConfigError> {
        let client_id: String = keys
            .take_with("client_id", |id: &String| {
                if !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                    Ok(())
                } else {
                    Err("must be the Hostaway account id, e.g. \"12345\"".into())
                }
            })?
            .ok_or_else(|| {
                keys.invalid("a hostaway account needs client_id (the Hostaway account id)")
            })?;
        let page_size = keys
            .take_with("page_size", |n: &u32| match (1..=MAX_PAGE).contains(n) {
                true => Ok(()),
                false => Err(format!("must be 1..={MAX_PAGE}")),
            })?
            .unwrap_or(MAX_PAGE);
        let scheduled_messages = keys.take("scheduled_messages")?.unwrap_or(false);
        Ok(Settings {
            client_id,
            page_size,
            scheduled_messages,
        })
    }
}

impl Connect for Settings {
    fn connect(&self, a: &AccountConfig, secret: String) -> anyhow::Result<Source> {
        // A 429 holds the account back for its window, Hostaway's 10 s unless set.
        let throttle = a
            .windows
            .iter()
            .map(|w| w.secs)
            .max()
            .unwrap_or(client::WINDOW_SECS);
        let client = HostawayClient::new(
            &a.base_url,
            &self.client_id,
            secret,
            a.request_timeout,
            throttle,
        )?;
        Ok(Source::Threads(Arc::new(Account {
            client,
            settings: self.clone(),
        })))
    }

    fn address(&self) -> Option<String> {
        Some(self.client_id.clone())
    }
}

struct Account {
    client: HostawayClient,
    settings: Settings,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reservation {
    id: u64,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    listing_map_id: Option<u64>,
    #[serde(default)]
    arrival_date: Option<String>,
    #[serde(default)]
    departure_date: Option<String>,
    #[serde(default, deserialize_with = "optional_time")]
    updated_on: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "optional_time")]
    latest_activity_on: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message {
    id: u64,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    is_incoming: u8,
    #[serde(deserialize_with = "hostaway_time")]
    inserted_on: DateTime<Utc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conversation {
    id: u64,
    #[serde(default)]
    reservation_id: Option<u64>,
    #[serde(default)]
    listing_map_id: Option<u64>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    recipient_name: Option<String>,
    #[serde(default)]
    has_unread_messages: u8,
    /// The latest sent message.
    #[serde(default)]
    conversation_messages: Vec<Message>,
    /// With `includeResources=1`; null for an inquiry.
    #[serde(default, rename = "Reservation")]
    reservation: Option<Reservation>,
}

fn thread_row(c: Conversation) -> ThreadRow {
    let latest = c
        .conversation_messages
        .into_iter()
        .max_by_key(|m| m.inserted_on);
    let r = c.reservation.as_ref();
    let details = json!({
        "listing_id": c.listing_map_id.or(r.and_then(|r| r.listing_map_id)),
        "arrival_date": r.and_then(|r| r.arrival_date.clone()),
        "departure_date": r.and_then(|r| r.departure_date.clone()),
    });
    ThreadRow {
        thread_id: c.id.to_string(),
        conversation_type: c.kind,
        title: c.recipient_name,
        status: r.and_then(|r| r.status.clone()),
        reference_id: c.reservation_id.map(|id| id.to_string()),
        reference_type: c.reservation_id.map(|_| "reservation".to_string()),
        unread_count: i32::from(c.has_unread_messages.min(1)),
        latest_message_id: latest.as_ref().map(|m| m.id.to_string()),
        latest_message_at: latest.as_ref().map(|m| m.inserted_on),
        created_at: None,
        details: Some(details),
    }
}

fn message_row(m: Message) -> MessageRow {
    let party = |guest: bool| Some(if guest { "guest" } else { "host" }.to_string());
    let incoming = m.is_incoming != 0;
    MessageRow {
        message_id: m.id.to_string(),
        sender: party(incoming),
        recipient: party(!incoming),
        subject: None,
        body: m.body,
        is_read: None,
        sent_at: m.inserted_on,
        media: None,
        status: m.status,
    }
}

fn offset_of(at: &PageAt) -> Result<u32, ProviderError> {
    match at {
        PageAt::Offset(o) => Ok(*o),
        PageAt::Cursor(_) => Err(ProviderError::Rejected(
            "Hostaway pages conversations and messages by offset".into(),
        )),
    }
}

/// The page after one of `len` rows read at `offset`: offset pages end short, or where
/// the envelope's `count` of all rows says this page reached it.
fn next_offset(offset: u32, len: usize, limit: u32, count: Option<u32>) -> Option<PageAt> {
    let end = offset.saturating_add(u32::try_from(len).unwrap_or(u32::MAX));
    let more = len >= limit as usize && count.is_none_or(|c| end < c);
    more.then(|| PageAt::Offset(offset.saturating_add(limit)))
}

impl Account {
    fn conversations(&self, e: Envelope) -> Vec<Decoded<ThreadRow>> {
        e.result
            .into_iter()
            .map(|v| decode::<Conversation>("conversation", v).map(thread_row))
            .collect()
    }

    fn group(v: Value) -> Decoded<Group> {
        decode::<Reservation>("reservation", v).map(|r| {
            let stamp = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp()).unwrap_or(0);
            Group {
                list: format!("{RESERVATION_PREFIX}{}", r.id),
                activity: r.updated_on.or(r.latest_activity_on),
                version: format!(
                    "{}:{}:{}",
                    stamp(r.updated_on),
                    stamp(r.latest_activity_on),
                    r.status.as_deref().unwrap_or("")
                ),
            }
        })
    }
}

fn empty(threads: Vec<Decoded<ThreadRow>>) -> ThreadPage {
    ThreadPage {
        threads,
        total: None,
        next: None,
        inline: HashMap::new(),
        groups: Vec::new(),
    }
}

#[async_trait::async_trait]
impl ThreadSource for Account {
    fn lists(&self) -> Vec<ListSpec> {
        vec![
            ListSpec {
                name: CONVERSATIONS.into(),
                incremental: Incremental::Ordered,
                role: ListRole::All,
            },
            ListSpec {
                name: RESERVATIONS.into(),
                incremental: Incremental::Ordered,
                role: ListRole::Groups,
            },
        ]
    }

    fn page_size(&self) -> u32 {
        self.settings.page_size
    }

    async fn ready(&self) -> Result<(), ProviderError> {
        self.client.ready().await
    }

    async fn list(
        &self,
        list: &str,
        at: &PageAt,
        _since: Option<DateTime<Utc>>,
    ) -> Result<ThreadPage, ProviderError> {
        let limit = self.settings.page_size;
        if let Some(id) = list.strip_prefix(RESERVATION_PREFIX) {
            let id: u64 = id
                .parse()
                .map_err(|_| ProviderError::Rejected(format!("no reservation list {list:?}")))?;
            let e = self
                .client
                .get(
                    &format!("/reservations/{id}/conversations"),
                    &[("includeResources", "1".into())],
                )
                .await?;
            return Ok(empty(self.conversations(e)));
        }
        match list {
            CONVERSATIONS => {
                let offset = offset_of(at)?;
                let e = self
                    .client
                    .get(
                        "/conversations",
                        &[
                            ("limit", limit.to_string()),
                            ("offset", offset.to_string()),
                            ("includeResources", "1".into()),
                        ],
                    )
                    .await?;
                let total = e.count;
                let len = e.result.len();
                Ok(ThreadPage {
                    total,
                    next: next_offset(offset, len, limit, total),
                    ..empty(self.conversations(e))
                })
            }
            RESERVATIONS => {
                // Hostaway's default order, `updatedOn` newest first: a new message and a
                // booking change both move a reservation up. `afterId` follows the current
                // order, so one updated meanwhile moves ahead of it (the run's catch-up
                // pass reads the head again).
                let mut query = vec![("limit", limit.to_string())];
                if let PageAt::Cursor(after) = at {
                    query.push(("afterId", after.clone()));
                }
                let e = self.client.get("/reservations", &query).await?;
                let last = e
                    .result
                    .last()
                    .and_then(|v| v.get("id"))
                    .and_then(Value::as_u64);
                let next = match (e.result.len() >= limit as usize, last) {
                    (true, Some(id)) => Some(PageAt::Cursor(id.to_string())),
                    _ => None,
                };
                Ok(ThreadPage {
                    next,
                    groups: e.result.into_iter().map(Account::group).collect(),
                    ..empty(Vec::new())
                })
            }
            other => Err(ProviderError::Rejected(format!(
                "Hostaway has no list {other:?}"
            ))),
        }
    }

    /// Messages come oldest first (`insertedOn`) by offset.
    fn appends(&self) -> bool {
        true
    }

    async fn messages(
        &self,
        thread_id: &str,
        _list: Option<&str>,
        at: &PageAt,
    ) -> Result<MessagePage, ProviderError> {
        // Conversation ids are numbers: any other id names no conversation.
        let id: u64 = thread_id.parse().map_err(|_| ProviderError::NotFound)?;
        let limit = self.settings.page_size;
        let offset = offset_of(at)?;
        let mut query = vec![("limit", limit.to_string()), ("offset", offset.to_string())];
        if self.settings.scheduled_messages {
            query.push(("includeScheduledMessages", "1".into()));
        }
        let e = self
            .client
            .get(&format!("/conversations/{id}/messages"), &query)
            .await?;
        let (len, count) = (e.result.len(), e.count);
        Ok(MessagePage {
            messages: e
                .result
                .into_iter()
                .map(|v| decode::<Message>("message", v).map(message_row))
                .collect(),
            next: next_offset(offset, len, limit, count),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Window};

    const HA: &str = "[[accounts]]\nid = \"h\"\nprovider = \"hostaway\"\nbase_url = \"http://h\"\ntoken_env = \"T\"\n";

    #[test]
    fn an_account_keeps_under_the_ip_window_unless_told_otherwise() {
        let c = Config::parse(&format!("{HA}client_id = \"42\"\n"), "jobs.toml").expect("config");
        let a = &c.accounts[0];
        assert_eq!(a.requests_per_second, 0.0);
        assert_eq!(
            a.windows,
            vec![Window {
                key: "account:h".into(),
                requests: 15,
                secs: 10
            }]
        );
        assert_eq!(a.settings.address().as_deref(), Some("42"));
    }

    #[test]
    fn accounts_of_a_limit_group_share_its_window() {
        let text = format!(
            "[limit_groups.office]\nrequests = 15\nwindow_secs = 10\n\n{HA}client_id = \"42\"\nwindow_requests = 20\nwindow_secs = 10\nlimit_group = \"office\"\n"
        );
        let c = Config::parse(&text, "jobs.toml").expect("config");
        let keys: Vec<&str> = c.accounts[0]
            .windows
            .iter()
            .map(|w| w.key.as_str())
            .collect();
        assert_eq!(keys, ["account:h", "group:office"]);
        let e = Config::parse(
            &format!("{HA}client_id = \"42\"\nlimit_group = \"home\"\n"),
            "jobs.toml",
        )
        .unwrap_err();
        assert_eq!(e.line, 7, "{e}");
        assert!(e.problem.contains("limit_groups.home"), "{e}");
        let e = Config::parse(
            &format!("{HA}client_id = \"42\"\nwindow_requests = 20\n"),
            "jobs.toml",
        )
        .unwrap_err();
        assert!(e.problem.contains("go together"), "{e}");
        let e = Config::parse(
            "[limit_groups.x]\nrequests = 0\nwindow_secs = 10\n",
            "jobs.toml",
        )
        .unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn bad_hostaway_keys_name_their_line() {
        let e = Config::parse(HA, "jobs.toml").unwrap_err();
        assert!(e.problem.contains("client_id"), "{e}");
        let e = Config::parse(
            &format!("{HA}client_id = \"42\"\npage_size = 500\n"),
            "jobs.toml",
        )
        .unwrap_err();
        assert_eq!(e.line, 7, "{e}");
    }
}
