//! How a provider plugs in: its name, its shape, its own account keys, and how a
//! configured account connects. src/providers/mod.rs lists every provider.

use crate::config::{AccountConfig, AccountKeys, ConfigError};

use super::vocab::{Shape, Source};

pub trait Provider: Send + Sync + 'static {
    /// As written in jobs.toml (`provider = "..."`) and in job kind names.
    fn name(&self) -> &'static str;
    fn shape(&self) -> Shape;
    /// The account's pacing when jobs.toml sets no `requests_per_second`.
    fn default_rate(&self) -> f64 {
        10.0
    }
    /// The account's sliding-window limit (requests, seconds) when jobs.toml sets none.
    fn default_window(&self) -> Option<(u32, u32)> {
        None
    }
    /// Reads the provider's own keys of one `[[accounts]]` entry (the common keys are
    /// already taken); errors name the key's line.
    fn settings(&self, keys: &mut AccountKeys) -> Result<Box<dyn Connect>, ConfigError>;
    /// How the provider pushes changes, if it does.
    fn webhook(&self) -> Option<&'static dyn Webhook> {
        None
    }
}

/// A provider's parsed account settings, ready to connect once the secret is known.
pub trait Connect: std::fmt::Debug + Send + Sync + 'static {
    fn connect(&self, account: &AccountConfig, secret: String) -> anyhow::Result<Source>;
    /// The id the provider's pushes name the account by (a page or account id of its own).
    fn address(&self) -> Option<String> {
        None
    }
}

/// The secrets a webhook receiver checks deliveries with, as the environment gives them.
#[derive(Clone, Default)]
pub struct WebhookSecrets {
    /// Signs or authenticates deliveries.
    pub signing: Option<String>,
    /// Answers the subscription handshake.
    pub verify: Option<String>,
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSecrets")
            .field("signing", &self.signing.as_ref().map(|_| ".."))
            .field("verify", &self.verify.as_ref().map(|_| ".."))
            .finish()
    }
}

/// A thread a delivery says changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThreadRef {
    /// By the provider's thread id.
    Id(String),
    /// By the reference thread rows carry (`reference_id`, e.g. the person the thread is with).
    Reference(String),
}

/// One change a delivery reports: which account (by its address) and which thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touch {
    pub address: String,
    pub thread: ThreadRef,
}

/// A provider's webhooks: the handshake, the authenticity check and what a delivery says.
/// The receiver (src/http/webhooks.rs) turns touches into refreshes.
pub trait Webhook: Send + Sync + 'static {
    /// Environment variables of the signing secret and of the handshake's verify token.
    fn secret_envs(&self) -> (&'static str, Option<&'static str>);
    /// The subscription handshake (GET): the body to answer, or None to refuse.
    fn handshake(&self, query: &[(String, String)], secrets: &WebhookSecrets) -> Option<String>;
    /// Whether a delivery (POST) comes from the provider.
    fn authentic(
        &self,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        secrets: &WebhookSecrets,
    ) -> bool;
    /// The changes a delivery reports.
    fn touches(&self, body: &[u8]) -> Result<Vec<Touch>, String>;
    /// Answer a delivery naming a thread not held yet with a 5xx, so the provider delivers
    /// it again (by then the incremental run it started has found the thread).
    fn retry_unknown(&self) -> bool {
        false
    }
}
