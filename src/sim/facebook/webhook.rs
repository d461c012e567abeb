//! Messenger / Instagram webhook sender: every message the simulator adds while a target
//! is configured is posted to it as Meta does, signed over the exact bytes with
//! `X-Hub-Signature-256`, serialised with `/` and non-ASCII escaped (so a receiver that
//! checks a re-serialised body fails), optionally duplicated and reordered, and retried
//! with a short backoff on a non-2xx answer or a connection error.

use super::super::faults::mix;
use futures::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

type HmacSha256 = Hmac<sha2::Sha256>;

/// Retries after the first attempt, and the first backoff (doubled on each retry).
const RETRIES: u32 = 3;
const BACKOFF_MS: u64 = 50;
/// Deliveries posted at once when `shuffle` is on.
const PARALLEL: usize = 4;

/// Where and how deliveries are posted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WebhookTarget {
    pub url: String,
    pub app_secret: String,
    /// Probability that a delivery is posted a second time.
    #[serde(default)]
    pub duplicate_rate: f64,
    /// Post queued deliveries in a seeded random order, several at once.
    #[serde(default)]
    pub shuffle: bool,
}

impl WebhookTarget {
    pub fn validate(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| format!("url: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("url must be http or https".into());
        }
        if !(0.0..=1.0).contains(&self.duplicate_rate) {
            return Err("duplicate_rate must be within 0..=1".into());
        }
        Ok(())
    }
}

/// Counters since the simulator started.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WebhookStats {
    /// Deliveries queued (one per added message).
    pub queued: u64,
    /// Queued deliveries that got a 2xx answer.
    pub delivered: u64,
    /// Second copies that got a 2xx answer.
    pub duplicates_sent: u64,
    /// Retry attempts (after a non-2xx answer or a connection error).
    pub retried: u64,
    /// Posts (originals or copies) that still failed after the last retry.
    pub failed: u64,
    /// Deliveries discarded because the target was removed.
    pub dropped: u64,
    /// Posts queued or in flight; 0 when the sender is idle.
    pub pending: u64,
    /// HTTP status of the latest answer.
    pub last_status: Option<u16>,
    /// The latest connection error.
    pub last_error: Option<String>,
}

struct Item {
    body: Arc<Vec<u8>>,
    copy: bool,
}

pub struct WebhookSender {
    target: RwLock<Option<WebhookTarget>>,
    queue: Mutex<VecDeque<Arc<Vec<u8>>>>,
    stats: Mutex<WebhookStats>,
    notify: Notify,
    rng: Mutex<ChaCha8Rng>,
}

enum Outcome {
    Delivered,
    Failed,
    Dropped,
}

impl WebhookSender {
    pub fn new(seed: u64) -> Self {
        Self {
            target: RwLock::new(None),
            queue: Mutex::default(),
            stats: Mutex::default(),
            notify: Notify::new(),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(mix(seed, 0x3EB))),
        }
    }

    /// Set or remove the target; removing it discards what is still queued.
    pub fn set_target(&self, target: Option<WebhookTarget>) -> Result<(), String> {
        if let Some(t) = &target {
            t.validate()?;
        }
        let stop = target.is_none();
        // Under the queue lock, so no delivery is queued after the drain below.
        let mut q = match self.queue.lock() {
            Ok(q) => q,
            Err(p) => p.into_inner(),
        };
        if let Ok(mut t) = self.target.write() {
            *t = target;
        }
        if stop {
            let dropped = q.drain(..).count() as u64;
            self.with_stats(|s| {
                s.dropped += dropped;
                s.pending = s.pending.saturating_sub(dropped);
            });
        }
        drop(q);
        self.notify.notify_one();
        Ok(())
    }

    pub fn target(&self) -> Option<WebhookTarget> {
        self.target.read().ok().and_then(|t| t.clone())
    }

    pub fn is_active(&self) -> bool {
        self.target.read().map(|t| t.is_some()).unwrap_or(false)
    }

    pub fn stats(&self) -> WebhookStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn with_stats(&self, f: impl FnOnce(&mut WebhookStats)) {
        match self.stats.lock() {
            Ok(mut s) => f(&mut s),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// Queue one delivery (already serialised) if a target is configured.
    pub fn enqueue(&self, body: Vec<u8>) {
        let Ok(mut q) = self.queue.lock() else {
            return;
        };
        if !self.is_active() {
            return;
        }
        // Counted before the sender can take it, so `pending` never undercounts.
        self.with_stats(|s| {
            s.queued += 1;
            s.pending += 1;
        });
        q.push_back(Arc::new(body));
        drop(q);
        self.notify.notify_one();
    }

    /// Wait until nothing is queued or in flight; false on timeout.
    pub async fn idle(&self, timeout: Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            if self.stats().pending == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The next posts: one delivery (and its copy) in order, or everything queued in a
    /// seeded random order when shuffling.
    fn take(&self) -> Vec<Item> {
        let Some(target) = self.target() else {
            return Vec::new();
        };
        let bodies: Vec<Arc<Vec<u8>>> = match self.queue.lock() {
            Ok(mut q) if target.shuffle => q.drain(..).collect(),
            Ok(mut q) => q.pop_front().into_iter().collect(),
            Err(_) => Vec::new(),
        };
        let mut rng = match self.rng.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        let mut items = Vec::new();
        for body in bodies {
            let dup = rng.gen_bool(target.duplicate_rate.clamp(0.0, 1.0));
            items.push(Item {
                body: body.clone(),
                copy: false,
            });
            if dup {
                items.push(Item { body, copy: true });
            }
        }
        let copies = items.iter().filter(|i| i.copy).count() as u64;
        if copies > 0 {
            self.with_stats(|s| s.pending += copies);
        }
        if target.shuffle {
            items.shuffle(&mut *rng);
        }
        items
    }

    /// Post queued deliveries until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        loop {
            let items = self.take();
            if items.is_empty() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.notify.notified() => continue,
                }
            }
            let parallel = if items.len() > 1 { PARALLEL } else { 1 };
            let sends = futures::stream::iter(items.into_iter().map(|item| {
                let (me, client) = (self.clone(), client.clone());
                async move {
                    let outcome = me.post(&client, &item.body).await;
                    me.with_stats(|s| {
                        s.pending = s.pending.saturating_sub(1);
                        match outcome {
                            Outcome::Delivered if item.copy => s.duplicates_sent += 1,
                            Outcome::Delivered => s.delivered += 1,
                            Outcome::Failed => s.failed += 1,
                            Outcome::Dropped => s.dropped += 1,
                        }
                    });
                }
            }))
            .buffer_unordered(parallel)
            .collect::<Vec<()>>();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = sends => {}
            }
        }
    }

    async fn post(&self, client: &reqwest::Client, body: &Arc<Vec<u8>>) -> Outcome {
        for attempt in 0..=RETRIES {
            if attempt > 0 {
                self.with_stats(|s| s.retried += 1);
                tokio::time::sleep(Duration::from_millis(BACKOFF_MS << (attempt - 1))).await;
            }
            // Read the target on every attempt: it may have been removed or changed.
            let Some(target) = self.target() else {
                return Outcome::Dropped;
            };
            let r = client
                .post(&target.url)
                .header("content-type", "application/json")
                .header(
                    "x-hub-signature-256",
                    signature(&target.app_secret, body.as_slice()),
                )
                .body(body.as_slice().to_vec())
                .send()
                .await;
            match r {
                Ok(r) => {
                    let status = r.status();
                    self.with_stats(|s| s.last_status = Some(status.as_u16()));
                    if status.is_success() {
                        return Outcome::Delivered;
                    }
                }
                Err(e) => self.with_stats(|s| s.last_error = Some(e.to_string())),
            }
        }
        Outcome::Failed
    }
}

/// `sha256=<lowercase hex HMAC-SHA256(app_secret, body)>`.
pub fn signature(app_secret: &str, body: &[u8]) -> String {
    let mut mac = match HmacSha256::new_from_slice(app_secret.as_bytes()) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm is unreachable.
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[derive(Serialize)]
struct Envelope<'a> {
    object: &'a str,
    entry: [Entry<'a>; 1],
}

#[derive(Serialize)]
struct Entry<'a> {
    id: &'a str,
    time: i64,
    messaging: [Messaging<'a>; 1],
}

#[derive(Serialize)]
struct Messaging<'a> {
    sender: Party<'a>,
    recipient: Party<'a>,
    timestamp: i64,
    message: Message<'a>,
}

#[derive(Serialize)]
struct Party<'a> {
    id: &'a str,
}

#[derive(Serialize)]
struct Message<'a> {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    is_echo: bool,
    mid: &'a str,
    text: &'a str,
}

/// One message event as Meta posts it.
pub struct Event<'a> {
    /// `page` (Messenger) or `instagram`.
    pub object: &'a str,
    pub page_id: &'a str,
    pub user_id: &'a str,
    /// Sent by the user to the Page; otherwise an echo of what the Page sent.
    pub inbound: bool,
    pub mid: &'a str,
    pub text: &'a str,
    pub timestamp_ms: i64,
    pub time_ms: i64,
}

impl Event<'_> {
    pub fn body(&self) -> Vec<u8> {
        let (sender, recipient) = if self.inbound {
            (self.user_id, self.page_id)
        } else {
            (self.page_id, self.user_id)
        };
        let env = Envelope {
            object: self.object,
            entry: [Entry {
                id: self.page_id,
                time: self.time_ms,
                messaging: [Messaging {
                    sender: Party { id: sender },
                    recipient: Party { id: recipient },
                    timestamp: self.timestamp_ms,
                    message: Message {
                        is_echo: !self.inbound,
                        mid: self.mid,
                        text: self.text,
                    },
                }],
            }],
        };
        meta_json(&env)
    }
}

/// JSON as Meta writes it: `/` as `\/` and every non-ASCII character as `\uXXXX`
/// (UTF-16, so astral characters become surrogate pairs).
pub fn meta_json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, MetaFormatter);
    // Serialising plain structs into a Vec cannot fail.
    if v.serialize(&mut ser).is_err() {
        return Vec::new();
    }
    out
}

struct MetaFormatter;

impl serde_json::ser::Formatter for MetaFormatter {
    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        let mut buf = [0u16; 2];
        let mut start = 0;
        for (i, ch) in fragment.char_indices() {
            if ch.is_ascii() && ch != '/' {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..i])?;
            if ch == '/' {
                writer.write_all(b"\\/")?;
            } else {
                for unit in ch.encode_utf16(&mut buf) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
            start = i + ch.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_slash_and_non_ascii_like_meta() {
        let e = Event {
            object: "page",
            page_id: "acct-0",
            user_id: "7",
            inbound: false,
            mid: "m_1",
            text: "a/b é 😀 \"q\"",
            timestamp_ms: 5,
            time_ms: 6,
        };
        let body = String::from_utf8(e.body()).unwrap();
        assert_eq!(
            body,
            r#"{"object":"page","entry":[{"id":"acct-0","time":6,"messaging":[{"sender":{"id":"acct-0"},"recipient":{"id":"7"},"timestamp":5,"message":{"is_echo":true,"mid":"m_1","text":"a\/b \u00e9 \ud83d\ude00 \"q\""}}]}]}"#
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["entry"][0]["messaging"][0]["message"]["text"], e.text);
        // Known HMAC-SHA256 vector (RFC 4231 style: key "key", the fox sentence).
        assert_eq!(
            signature("key", b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }
}
