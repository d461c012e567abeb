//! Hostaway public API client: the access token it mints itself (client credentials, one
//! mint at a time per account across the process, reused until Hostaway refuses it), the
//! standard envelope, and what Hostaway's statuses mean.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::providers::http::{self, Answer, Secret};
use crate::sync::vocab::ProviderError;

/// A fresh token is valid one second after it is issued; a little more, for clock steps.
const TOKEN_DELAY: Duration = Duration::from_millis(1100);

/// Hostaway's rate windows are 10 s long and its 429 says nothing more: wait one out
/// (the account's own window where jobs.toml sets one).
pub const WINDOW_SECS: u32 = 10;

/// Hostaway's time format, always UTC: `2026-11-30 18:04:05`.
pub fn hostaway_time<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = String::deserialize(d)?;
    parse_time(&s).map_err(serde::de::Error::custom)
}

pub fn optional_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(s) => parse_time(&s).map(Some).map_err(serde::de::Error::custom),
        None => Ok(None),
    }
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .map(|t| t.and_utc())
        .map_err(|e| format!("time {s:?}: {e}"))
}

/// The standard envelope: `result` holds the rows, `count` all that match.
#[derive(Debug, Deserialize)]
pub struct Envelope {
    #[serde(default)]
    pub result: Vec<Value>,
    #[serde(default)]
    pub count: Option<u32>,
}

#[derive(Deserialize)]
struct Minted {
    access_token: String,
}

/// A minted token, and whether any request has been served with it.
struct Token {
    value: Secret,
    valid_at: Instant,
    proven: Arc<AtomicBool>,
}

impl Token {
    fn share(&self) -> Token {
        Token {
            value: self.value.clone(),
            valid_at: self.valid_at,
            proven: self.proven.clone(),
        }
    }
}

/// One account's token, shared by every client of it in the process.
#[derive(Default)]
struct TokenCell {
    /// Held while minting: one mint at a time.
    mint: tokio::sync::Mutex<()>,
    current: Mutex<Option<Token>>,
}

/// (API root, client id, secret).
type Credential = (String, String, String);

/// Token cells by credential: worker runtimes of one process share them.
static TOKENS: LazyLock<Mutex<HashMap<Credential, Arc<TokenCell>>>> =
    LazyLock::new(Default::default);

fn cell(root: &str, client_id: &str, secret: &Secret) -> Arc<TokenCell> {
    let key = (
        root.to_string(),
        client_id.to_string(),
        secret.expose().to_string(),
    );
    match TOKENS.lock() {
        Ok(mut m) => m.entry(key).or_default().clone(),
        Err(_) => Arc::default(),
    }
}

pub struct HostawayClient {
    http: reqwest::Client,
    /// `{base_url}/v1`.
    root: String,
    client_id: String,
    secret: Secret,
    token: Arc<TokenCell>,
    /// How long a 429 holds the account back.
    throttle_secs: u32,
}

impl HostawayClient {
    pub fn new(
        base_url: &str,
        client_id: &str,
        secret: String,
        timeout: Duration,
        throttle_secs: u32,
    ) -> anyhow::Result<Self> {
        let root = format!("{}/v1", base_url.trim_end_matches('/'));
        let secret = Secret::new(secret);
        Ok(HostawayClient {
            http: http::client(timeout, 16)?,
            token: cell(&root, client_id, &secret),
            root,
            client_id: client_id.to_string(),
            secret,
            throttle_secs,
        })
    }

    /// A token valid now: the one held, or a fresh one (minted once however many ask).
    pub async fn ready(&self) -> Result<(), ProviderError> {
        self.token().await.map(|_| ())
    }

    async fn token(&self) -> Result<Token, ProviderError> {
        let held = self.held();
        let t = match held {
            Some(t) => t,
            None => {
                let _minting = self.token.mint.lock().await;
                match self.held() {
                    Some(t) => t,
                    None => {
                        let t = self.mint().await?;
                        let shared = t.share();
                        if let Ok(mut c) = self.token.current.lock() {
                            *c = Some(t);
                        }
                        shared
                    }
                }
            }
        };
        tokio::time::sleep_until(t.valid_at.into()).await;
        Ok(t)
    }

    fn held(&self) -> Option<Token> {
        self.token
            .current
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(Token::share))
    }

    async fn mint(&self) -> Result<Token, ProviderError> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.secret.expose()),
            ("scope", "general"),
        ];
        let req = self
            .http
            .post(format!("{}/accessTokens", self.root))
            .form(&form);
        let answer = http::send(req).await?;
        if !answer.is_success() {
            return Err(match answer.status {
                400 | 401 | 403 => ProviderError::Unauthorized(format!(
                    "Hostaway refused the client id {} or its secret (HTTP {})",
                    self.client_id, answer.status
                )),
                _ => self.error(&answer),
            });
        }
        let minted: Minted = answer.json()?;
        Ok(Token {
            value: Secret::new(minted.access_token),
            valid_at: Instant::now() + TOKEN_DELAY,
            proven: Arc::default(),
        })
    }

    /// A token Hostaway refused: forget it, so the next request mints a fresh one.
    fn forget(&self, refused: &Token) {
        if let Ok(mut c) = self.token.current.lock() {
            if c.as_ref()
                .is_some_and(|t| t.value.expose() == refused.value.expose())
            {
                *c = None;
            }
        }
    }

    /// GETs `path` under `/v1` and reads the envelope.
    pub async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Envelope, ProviderError> {
        let token = self.token().await?;
        let req = self
            .http
            .get(format!("{}{path}", self.root))
            .query(query)
            .bearer_auth(token.value.expose());
        let answer = http::send(req).await?;
        if answer.is_success() {
            token.proven.store(true, Ordering::Relaxed);
            return answer.json();
        }
        if answer.status == 403 {
            self.forget(&token);
            // A token that served requests was revoked or expired: the retry mints a fresh
            // one. A fresh token refused means the credential itself is wrong.
            return Err(match token.proven.load(Ordering::Relaxed) {
                true => ProviderError::Transient(
                    "Hostaway refused the access token (HTTP 403); the retry mints a fresh one"
                        .into(),
                ),
                false => ProviderError::Unauthorized(
                    "Hostaway refused a freshly minted access token (HTTP 403)".into(),
                ),
            });
        }
        Err(self.error(&answer))
    }

    fn error(&self, answer: &Answer) -> ProviderError {
        match answer.status {
            429 => ProviderError::Throttled {
                until: Some(Utc::now() + chrono::Duration::seconds(i64::from(self.throttle_secs))),
                detail: "Hostaway answered 429 Too Many Requests".into(),
            },
            _ => answer.error("hostaway", answer.message(&["/message", "/result"])),
        }
    }
}
