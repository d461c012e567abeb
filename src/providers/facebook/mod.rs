//! Facebook Pages and Instagram professional accounts (Graph API): one list per account,
//! its conversations by `after` cursor, newest activity first, each with its newest
//! messages inline; a conversation with more new messages than that pages its own
//! messages, newest first. Meta's limit is 2 calls/s per Page.

mod client;
mod webhook;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::{AccountConfig, AccountKeys, ConfigError};
use crate::sync::vocab::{
    decode, Decoded, Incremental, ListRole, ListSpec, MessagePage, MessageRow, PageAt,
    ProviderError, Shape, Source, ThreadPage, ThreadRow, ThreadSource,
};
use crate::sync::{Connect, Provider};

use client::{Conversation, Edge, Message};
pub use client::{GraphClient, Options, Usage};
pub use webhook::{signed, MetaWebhook, APP_SECRET_ENV, VERIFY_TOKEN_ENV};

/// Graph's largest page, for conversations and messages alike.
pub const MAX_PAGE: u32 = 100;

pub struct Facebook;

impl Provider for Facebook {
    fn name(&self) -> &'static str {
        "facebook"
    }

    fn shape(&self) -> Shape {
        Shape::Threads
    }

    /// The Conversations API allows 2 calls per second per Page.
    fn default_rate(&self) -> f64 {
        2.0
    }

    fn settings(&self, keys: &mut AccountKeys) -> Result<Box<dyn Connect>, ConfigError> {
        Ok(Box::new(Settings::read(keys)?))
    }

    fn webhook(&self) -> Option<&'static dyn crate::sync::provider::Webhook> {
        Some(&MetaWebhook)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub page_id: String,
    /// Instagram: the professional account's own id, which its conversations list as a
    /// participant and its webhooks name.
    pub instagram_account_id: Option<String>,
    /// `messenger` or `instagram`.
    pub platform: &'static str,
    /// Graph API version in URLs, e.g. `v21.0`.
    pub api_version: String,
    /// Conversations per list page and messages per message page.
    pub page_size: u32,
    /// Newest messages carried inline with each listed conversation.
    pub inline_messages: u32,
}

fn page_bound(n: &u32) -> Result<(), String> {
    if (1..=MAX_PAGE).contains(n) {
        Ok(())
    } else {
        Err(format!("must be 1..={MAX_PAGE}"))
    }
}

impl Settings {
    fn read(keys: &mut AccountKeys) -> Result<Settings, ConfigError> {
        let page_id: String = keys
            .take_with("page_id", |id: &String| {
                if id.is_empty() || id.contains('/') {
                    Err("must be the Page's id".into())
                } else {
                    Ok(())
                }
            })?
            .ok_or_else(|| keys.invalid("a facebook account needs page_id (the Page's id)"))?;
        let instagram_account_id: Option<String> = keys.take("instagram_account_id")?;
        let platform = match keys
            .take_with("platform", |p: &String| match p.as_str() {
                "messenger" | "instagram" => Ok(()),
                other => Err(format!("{other:?} is not messenger or instagram")),
            })?
            .as_deref()
        {
            Some("instagram") => "instagram",
            _ => "messenger",
        };
        let api_version = keys
            .take_with("api_version", |v: &String| {
                let digits = v.strip_prefix('v').unwrap_or("");
                if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit() || c == '.') {
                    Ok(())
                } else {
                    Err("must look like v21.0".into())
                }
            })?
            .unwrap_or_else(|| "v21.0".into());
        let page_size = keys.take_with("page_size", page_bound)?.unwrap_or(MAX_PAGE);
        let inline_messages = keys
            .take_with("inline_messages", page_bound)?
            .unwrap_or(MAX_PAGE);
        if instagram_account_id.is_some() && platform != "instagram" {
            return Err(
                keys.invalid("instagram_account_id is for platform = \"instagram\" accounts")
            );
        }
        Ok(Settings {
            page_id,
            instagram_account_id,
            platform,
            api_version,
            page_size,
            inline_messages,
        })
    }
}

impl Connect for Settings {
    fn connect(&self, a: &AccountConfig, secret: String) -> anyhow::Result<Source> {
        let client = GraphClient::new(
            &a.base_url,
            secret,
            a.request_timeout,
            Options {
                version: self.api_version.clone(),
                own_id: self
                    .instagram_account_id
                    .clone()
                    .unwrap_or_else(|| self.page_id.clone()),
                page_id: self.page_id.clone(),
                platform: self.platform,
                page_size: self.page_size,
                inline: self.inline_messages,
            },
        )?;
        Ok(Source::Threads(Arc::new(client)))
    }

    fn address(&self) -> Option<String> {
        Some(
            self.instagram_account_id
                .clone()
                .unwrap_or_else(|| self.page_id.clone()),
        )
    }
}

/// The cursor of a page; the first page has none.
fn cursor_of(at: &PageAt) -> Result<Option<&str>, ProviderError> {
    match at {
        PageAt::Offset(0) => Ok(None),
        PageAt::Cursor(c) => Ok(Some(c)),
        PageAt::Offset(_) => Err(ProviderError::Rejected(
            "Graph pages by cursor, not by offset".into(),
        )),
    }
}

impl GraphClient {
    fn message_page(&self, edge: Edge) -> MessagePage {
        MessagePage {
            next: edge.next(),
            messages: edge
                .data
                .into_iter()
                .map(|v| decode::<Message>("message", v).map(message_row))
                .collect(),
        }
    }

    /// A conversation as a thread row, and its inline messages.
    fn thread(&self, c: Conversation) -> (ThreadRow, Option<MessagePage>) {
        let inline = c.messages.map(|m| self.message_page(m));
        let newest = inline
            .as_ref()
            .and_then(|p| p.messages.iter().find_map(|m| m.as_ref().ok()));
        // The person: the party that is not the Page (Instagram lists the professional
        // account under its own id, so fall back to the first party).
        let person = c
            .participants
            .data
            .iter()
            .find(|p| p.id != self.page_id && p.id != self.own_id)
            .or(c.participants.data.first());
        let row = ThreadRow {
            thread_id: c.id,
            conversation_type: Some(self.platform.to_string()),
            title: person.and_then(|p| p.name.clone().or_else(|| p.username.clone())),
            status: None,
            reference_id: person.map(|p| p.id.clone()),
            reference_type: Some(
                match self.platform {
                    "instagram" => "igsid",
                    _ => "psid",
                }
                .to_string(),
            ),
            unread_count: c.unread_count.unwrap_or(0).max(0),
            latest_message_id: newest.map(|m| m.message_id.clone()),
            latest_message_at: Some(newest.map_or(c.updated_time, |m| m.sent_at)),
            created_at: None,
            details: None,
        };
        (row, inline)
    }
}

#[async_trait::async_trait]
impl ThreadSource for GraphClient {
    fn lists(&self) -> Vec<ListSpec> {
        // Graph has no time filter on conversations: newest first with an early stop.
        vec![ListSpec {
            name: self.platform.to_string(),
            incremental: Incremental::EarlyStop,
            role: ListRole::Threads,
        }]
    }

    fn page_size(&self) -> u32 {
        MAX_PAGE
    }

    async fn list(
        &self,
        _list: &str,
        at: &PageAt,
        _since: Option<DateTime<Utc>>,
    ) -> Result<ThreadPage, ProviderError> {
        let edge = self.conversations(cursor_of(at)?).await?;
        let next = edge.next();
        let mut inline = HashMap::new();
        let threads: Vec<Decoded<ThreadRow>> = edge
            .data
            .into_iter()
            .map(|v| {
                decode::<Conversation>("conversation", v).map(|c| {
                    let (row, messages) = self.thread(c);
                    if let Some(m) = messages {
                        inline.insert(row.thread_id.clone(), m);
                    }
                    row
                })
            })
            .collect();
        Ok(ThreadPage {
            threads,
            total: None,
            next,
            inline,
            groups: Vec::new(),
        })
    }

    async fn messages(
        &self,
        thread_id: &str,
        _list: Option<&str>,
        at: &PageAt,
    ) -> Result<MessagePage, ProviderError> {
        let edge = GraphClient::messages(self, thread_id, cursor_of(at)?).await?;
        Ok(self.message_page(edge))
    }

    fn newest_first(&self) -> bool {
        true
    }

    fn usage(&self) -> Option<f64> {
        GraphClient::usage(self)
    }
}

fn message_row(m: Message) -> MessageRow {
    MessageRow {
        message_id: m.id,
        sender: m.from.map(|p| p.id),
        recipient: m.to.and_then(|t| t.data.into_iter().next()).map(|p| p.id),
        subject: None,
        body: m.message,
        is_read: None,
        sent_at: m.created_time,
        media: m
            .attachments
            .and_then(|a| a.get("data").cloned().or(Some(a)))
            .filter(|v| !v.is_null()),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const FB: &str = "[[accounts]]\nid = \"p\"\nprovider = \"facebook\"\nbase_url = \"http://g\"\ntoken_env = \"T\"\n";

    #[test]
    fn a_page_is_paced_at_metas_limit_unless_told_otherwise() {
        let c = Config::parse(&format!("{FB}page_id = \"42\"\n"), "jobs.toml").expect("config");
        assert_eq!(c.accounts[0].requests_per_second, 2.0);
        assert_eq!(c.accounts[0].settings.address().as_deref(), Some("42"));
        let c = Config::parse(
            &format!("{FB}page_id = \"42\"\nrequests_per_second = 1.5\n"),
            "jobs.toml",
        )
        .expect("config");
        assert_eq!(c.accounts[0].requests_per_second, 1.5);
    }

    #[test]
    fn bad_facebook_keys_name_their_line() {
        let e = Config::parse(FB, "jobs.toml").unwrap_err();
        assert!(e.problem.contains("page_id"), "{e}");
        let e = Config::parse(
            &format!("{FB}page_id = \"42\"\nplatform = \"whatsapp\"\n"),
            "jobs.toml",
        )
        .unwrap_err();
        assert_eq!(e.line, 7, "{e}");
        assert!(e.problem.contains("messenger or instagram"), "{e}");
        let e = Config::parse(
            &format!("{FB}page_id = \"42\"\ninline_messages = 101\n"),
            "jobs.toml",
        )
        .unwrap_err();
        assert_eq!(e.line, 7, "{e}");
        let e = Config::parse(
            &format!("{FB}page_id = \"42\"\ninstagram_account_id = \"9\"\n"),
            "jobs.toml",
        )
        .unwrap_err();
        assert!(e.problem.contains("instagram"), "{e}");
    }
}
