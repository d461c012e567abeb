//! Unified-webhook sender: while a target is configured, every event the simulator produces
//! (a message added, a reservation created or updated) is posted to it as
//! `{"event","accountId","data"}`, with HTTP basic auth when configured, optionally duplicated
//! and reordered, and retried with a short backoff on a non-2xx answer or a connection error
//! (Hostaway retries any delivery not acknowledged with a 2xx, up to 3 times).

use super::super::faults::mix;
use futures::StreamExt;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Retries after the first attempt unless the target says otherwise, and the most allowed.
pub const DEFAULT_RETRIES: u32 = 3;
pub const MAX_RETRIES: u32 = 10;
/// First backoff, doubled on each retry up to the cap.
const BACKOFF_MS: u64 = 50;
const BACKOFF_CAP_MS: u64 = 800;
/// Deliveries posted at once when `shuffle` is on.
const PARALLEL: usize = 4;
/// Hostaway expects an acknowledgement within 10 s.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

fn default_retries() -> u32 {
    DEFAULT_RETRIES
}

/// Where and how deliveries are posted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WebhookTarget {
    pub url: String,
    /// With a user, every post carries `Authorization: Basic base64(user:password)`.
    #[serde(default)]
    pub basic_user: Option<String>,
    #[serde(default)]
    pub basic_password: Option<String>,
    /// Probability that a delivery is posted a second time.
    #[serde(default)]
    pub duplicate_rate: f64,
    /// Post queued deliveries in a seeded random order, several at once.
    #[serde(default)]
    pub shuffle: bool,
    /// Retries after a failed first attempt.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

impl WebhookTarget {
    /// A target with no auth, no duplicates, in order, 3 retries.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            basic_user: None,
            basic_password: None,
            duplicate_rate: 0.0,
            shuffle: false,
            retries: DEFAULT_RETRIES,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| format!("url: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("url must be http or https".into());
        }
        if !(0.0..=1.0).contains(&self.duplicate_rate) {
            return Err("duplicate_rate must be within 0..=1".into());
        }
        if self.retries > MAX_RETRIES {
            return Err(format!("retries must be at most {MAX_RETRIES}"));
        }
        if self.basic_password.is_some() && self.basic_user.is_none() {
            return Err("basic_password needs basic_user".into());
        }
        Ok(())
    }
}

/// Counters since the simulator started.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WebhookStats {
    /// Deliveries queued (one per event).
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

/// One unified-webhook body: `event` is `message.received`, `reservation.created` or
/// `reservation.updated`; `data` the object as the API renders it.
pub fn event_body(event: &str, account_id: usize, data: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"event": event, "accountId": account_id, "data": data}))
        .unwrap_or_default()
}

struct Item {
    body: Arc<Vec<u8>>,
    copy: bool,
}

enum Outcome {
    Delivered,
    Failed,
    Dropped,
}

pub struct WebhookSender {
    target: RwLock<Option<WebhookTarget>>,
    queue: Mutex<VecDeque<Arc<Vec<u8>>>>,
    stats: Mutex<WebhookStats>,
    notify: Notify,
    rng: Mutex<ChaCha8Rng>,
}

impl WebhookSender {
    pub fn new(seed: u64) -> Self {
        Self {
            target: RwLock::new(None),
            queue: Mutex::default(),
            stats: Mutex::default(),
            notify: Notify::new(),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(mix(seed, 0x40B))),
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
            .timeout(ACK_TIMEOUT)
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
        let mut attempt = 0u32;
        loop {
            if attempt > 0 {
                match self.target() {
                    None => return Outcome::Dropped,
                    Some(t) if attempt > t.retries => return Outcome::Failed,
                    Some(_) => {}
                }
                self.with_stats(|s| s.retried += 1);
                let backoff = (BACKOFF_MS << (attempt - 1).min(8)).min(BACKOFF_CAP_MS);
                tokio::time::sleep(Duration::from_millis(backoff)).await;
            }
            attempt += 1;
            // Read the target on every attempt: it may have been removed or changed.
            let Some(target) = self.target() else {
                return Outcome::Dropped;
            };
            let mut req = client
                .post(&target.url)
                .header("content-type", "application/json")
                .body(body.as_slice().to_vec());
            if let Some(user) = &target.basic_user {
                req = req.basic_auth(user, Some(target.basic_password.as_deref().unwrap_or("")));
            }
            match req.send().await {
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
    }
}
