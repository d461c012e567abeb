//! Hostaway public API simulator: `/v1/accessTokens`, `/v1/reservations`
//! (limit/offset/afterId, default `updatedOn DESC, id DESC`,
//! `sortOrder=updatedOn` ascending), `/v1/conversations` and
//! `/v1/conversations/{id}/messages` (limit/offset), all in the standard
//! envelope `{status,result,limit,offset,count,page,totalPages}`.
//!
//! Limits: `hostaway_ip_limit` requests per `hostaway_window_ms` per client IP
//! (the `X-Sim-Client-IP` header overrides the socket address) and
//! `hostaway_account_limit` per account, answered with 429
//! `{"status":"fail","message":...}`; replaceable at run time
//! (`/_sim/hostaway_limits`). Every request with a valid token, admitted or not, also
//! counts toward the window peaks (`/_sim/windows`). Bad, revoked or not-yet-valid
//! tokens (minted tokens become valid 1 s after issue) get 403. `expire_token` revokes
//! the static token and the client secret: every token minted for the account, and minting
//! again (403). Mutate `revoke_minted` revokes only the minted tokens.
//!
//! `includeResources=1` on the conversation routes adds each conversation's
//! `Reservation` (null for an inquiry).
//!
//! Inquiries (`hostaway_inquiry_share`, mutate `new_inquiries`) are conversations with
//! `reservationId: null`: listed among the conversations, never under the reservations.
//! A webhook sender (webhook.rs) posts unified-webhook events while a target is set.

mod control;
mod routes;
pub mod webhook;

pub use webhook::{WebhookStats, WebhookTarget};

use super::expected::{utc_ms, Expected, ExpectedMessage, ExpectedThread};
use super::faults::mix;
use super::http::{bearer, json, Query};
use super::stats::{PeakWindow, SlidingWindow};
use super::{Harness, SimConfig, SimProvider};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use routes::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

const ANCHOR_MS: i64 = super::ebay::data::ANCHOR_MS;
pub const TOKEN_PREFIX: &str = "sim-hostaway-";
const DAY_MS: i64 = 86_400_000;
const CONVERSATION_TYPE: &str = "host-guest-email";
/// What a poisoned conversation shows as its latest message's `insertedOn`.
pub const POISON_DATE: &str = "not-a-date";
const RATE_MESSAGE: &str = "This error occurs because a server detects that your application has exceeded the rate limits or has made too many requests in a given period of time.";

#[derive(Clone, Debug)]
struct Msg {
    id: u64,
    body: String,
    incoming: bool,
    status: &'static str,
    inserted_ms: i64,
}

/// A reservation and its conversation, or (`inquiry`) a conversation alone.
#[derive(Clone, Debug)]
struct Reservation {
    id: u64,
    conversation_id: u64,
    listing_id: u64,
    guest: String,
    arrival_ms: i64,
    status: &'static str,
    inserted_ms: i64,
    updated_ms: i64,
    archived: bool,
    messages: Vec<Msg>,
    deleted: bool,
    /// No reservation is shown: `reservationId` is null and `id` only keeps the id
    /// sequence (and so the conversation ids) the same as for a reservation.
    inquiry: bool,
    /// The conversation's latest-message `insertedOn` renders as [`POISON_DATE`].
    poisoned: bool,
}

impl Reservation {
    fn latest_activity(&self) -> i64 {
        self.messages
            .last()
            .map(|m| m.inserted_ms)
            .unwrap_or(self.inserted_ms)
    }

    /// The reservation id as the API shows it (null for an inquiry).
    fn reservation_id(&self) -> Option<u64> {
        (!self.inquiry).then_some(self.id)
    }

    /// The newest message the API returns without `includeScheduledMessages`.
    fn latest_sent(&self) -> Option<&Msg> {
        self.messages.iter().rev().find(|m| m.status == "sent")
    }

    fn has_unread(&self) -> bool {
        self.messages.last().is_some_and(|m| m.incoming)
    }
}

struct Account {
    name: String,
    acct_no: usize,
    reservations: Vec<Reservation>,
    by_res: HashMap<u64, usize>,
    by_conv: HashMap<u64, usize>,
    next_msg: u64,
    next_res: u64,
}

/// Live conversations as `/v1/conversations` orders them: latest message desc (a live
/// order: new messages move threads up), then id.
fn conversation_order(a: &Account) -> Vec<&Reservation> {
    let mut rows: Vec<&Reservation> = a.reservations.iter().filter(|r| !r.deleted).collect();
    rows.sort_by(|x, y| {
        y.latest_activity()
            .cmp(&x.latest_activity())
            .then(x.id.cmp(&y.id))
    });
    rows
}

/// A time as the API prints it (whole seconds).
fn api_time(ms: i64) -> chrono::DateTime<Utc> {
    utc_ms(ms - ms.rem_euclid(1000))
}

fn fmt(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

const GUEST_LINES: &[&str] = &[
    "What time is check-in?",
    "Is parking available?",
    "We arrived, thanks!",
    "Can we check out late?",
];
const HOST_LINES: &[&str] = &[
    "Check-in is from 3pm.",
    "Yes, free parking on site.",
    "Enjoy your stay!",
    "Late checkout until 12 is fine.",
];

impl Account {
    fn add_reservation(&mut self, rng: &mut ChaCha8Rng, at: i64, inquiry: bool) -> usize {
        self.next_res += 1;
        let base = 10_000_000 + self.acct_no as u64 * 1_000_000;
        let r = Reservation {
            id: base + self.next_res,
            conversation_id: base + 500_000 + self.next_res,
            listing_id: 50_000 + rng.gen_range(0..40),
            guest: format!("Guest {}", rng.gen_range(100..999)),
            arrival_ms: at + rng.gen_range(DAY_MS..60 * DAY_MS),
            status: if rng.gen_bool(0.7) {
                "new"
            } else {
                ["modified", "cancelled", "inquiry"][rng.gen_range(0..3)]
            },
            inserted_ms: at,
            updated_ms: at,
            archived: rng.gen_bool(0.05),
            messages: Vec::new(),
            deleted: false,
            inquiry,
            poisoned: false,
        };
        let idx = self.reservations.len();
        if !inquiry {
            self.by_res.insert(r.id, idx);
        }
        self.by_conv.insert(r.conversation_id, idx);
        self.reservations.push(r);
        idx
    }

    fn add_message(&mut self, rng: &mut ChaCha8Rng, idx: usize, incoming: bool, at: i64) -> u64 {
        self.next_msg += 1;
        let id = 900_000_000 + self.acct_no as u64 * 10_000_000 + self.next_msg;
        let r = &mut self.reservations[idx];
        let at = at.max(r.latest_activity() + 1000);
        let lines = if incoming { GUEST_LINES } else { HOST_LINES };
        r.messages.push(Msg {
            id,
            body: lines[rng.gen_range(0..lines.len())].to_string(),
            incoming,
            // A few host messages are scheduled and hidden by default.
            status: if !incoming && rng.gen_bool(0.05) {
                "awaiting"
            } else {
                "sent"
            },
            inserted_ms: at,
        });
        r.updated_ms = r.updated_ms.max(at);
        id
    }
}

/// The largest number of requests with a valid token (admitted or answered 429) seen in
/// any sliding window of `window_ms`, per client IP (the limiter's key) and per account.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowPeaks {
    pub window_ms: u64,
    pub by_ip: BTreeMap<String, u64>,
    pub by_account: BTreeMap<String, u64>,
}

struct Peaks {
    /// `Stats::resets()` when these were last cleared: a stats reset clears them too.
    resets_seen: u64,
    by_ip: PeakWindow,
    by_account: PeakWindow,
}

/// The limits enforced now, their windows, and the peaks counted over the same window.
/// Replaced whole by [`HostawaySim::set_limits`], so everything restarts empty.
struct Limiter {
    ip_limit: u32,
    account_limit: u32,
    window_ms: u64,
    ip_window: SlidingWindow,
    acct_window: SlidingWindow,
    peaks: Mutex<Peaks>,
}

impl Limiter {
    fn new(ip_limit: u32, account_limit: u32, window_ms: u64, resets_seen: u64) -> Self {
        let window = Duration::from_millis(window_ms);
        Self {
            ip_limit,
            account_limit,
            window_ms,
            ip_window: SlidingWindow::new(window),
            acct_window: SlidingWindow::new(window),
            peaks: Mutex::new(Peaks {
                resets_seen,
                by_ip: PeakWindow::new(window),
                by_account: PeakWindow::new(window),
            }),
        }
    }

    /// The peaks, cleared first if the stats were reset since they were last looked at.
    fn peaks(&self, resets: u64) -> std::sync::MutexGuard<'_, Peaks> {
        let mut p = self.peaks.lock().unwrap_or_else(|e| e.into_inner());
        if p.resets_seen != resets {
            p.by_ip.clear();
            p.by_account.clear();
            p.resets_seen = resets;
        }
        p
    }
}

/// The limits as `/_sim/hostaway_limits` shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
struct LimitsView {
    ip_limit: u32,
    account_limit: u32,
    window_ms: u64,
}

pub struct HostawaySim {
    h: Harness,
    accounts: Vec<RwLock<Account>>,
    limiter: RwLock<Arc<Limiter>>,
    /// Minted token -> (account, valid from ms).
    minted: RwLock<HashMap<String, (usize, i64)>>,
    revoked: RwLock<HashSet<String>>,
    /// Accounts whose client secret was revoked (`expire_token`): no more minting.
    refused: RwLock<HashSet<usize>>,
    rng: Mutex<ChaCha8Rng>,
    webhook: Arc<webhook::WebhookSender>,
}

fn fail(status: StatusCode, message: &str) -> Response {
    json(status, &json!({"status": "fail", "message": message}))
}

fn envelope(result: Vec<Value>, limit: usize, offset: usize, count: usize) -> Response {
    let total_pages = if limit == 0 { 0 } else { count.div_ceil(limit) };
    json(
        StatusCode::OK,
        &json!({"status": "success", "result": result, "limit": limit, "offset": offset,
                "count": count, "page": (offset / limit.max(1)).saturating_add(1), "totalPages": total_pages}),
    )
}

impl HostawaySim {
    pub fn new(config: SimConfig) -> Arc<Self> {
        let share = config.hostaway_inquiry_share;
        let mut accounts = Vec::new();
        for i in 0..config.accounts {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(config.seed, 0x405 + i as u64));
            // A stream of its own, so the share changes nothing but which are inquiries.
            let mut pick = ChaCha8Rng::seed_from_u64(mix(config.seed, 0x4051 + i as u64));
            let mut a = Account {
                name: format!("acct-{i}"),
                acct_no: i,
                reservations: Vec::new(),
                by_res: HashMap::new(),
                by_conv: HashMap::new(),
                next_msg: 0,
                next_res: 0,
            };
            for _ in 0..config.threads {
                let at = ANCHOR_MS - rng.gen_range(DAY_MS..200 * DAY_MS);
                let inquiry = share > 0.0 && pick.gen_bool(share.min(1.0));
                let idx = a.add_reservation(&mut rng, at, inquiry);
                let n = {
                    let u: f64 = rng.gen_range(f64::EPSILON..1.0);
                    ((-u.ln() * config.messages.max(1) as f64).round() as usize).max(1)
                };
                let mut t = at;
                for k in 0..n {
                    let incoming = k == 0 || rng.gen_bool(0.5);
                    a.add_message(&mut rng, idx, incoming, t);
                    t += rng.gen_range(60_000..24 * 3_600_000);
                }
            }
            accounts.push(RwLock::new(a));
        }
        let rng = ChaCha8Rng::seed_from_u64(mix(config.seed, 0x4054));
        let limiter = Limiter::new(
            config.hostaway_ip_limit,
            config.hostaway_account_limit,
            config.hostaway_window_ms.max(1),
            0,
        );
        let webhook = Arc::new(webhook::WebhookSender::new(config.seed));
        Arc::new(Self {
            h: Harness::new(config),
            accounts,
            limiter: RwLock::new(Arc::new(limiter)),
            minted: RwLock::default(),
            revoked: RwLock::default(),
            refused: RwLock::default(),
            rng: Mutex::new(rng),
            webhook,
        })
    }

    /// The webhook sender; `run` it in a task to post deliveries.
    pub fn webhook(&self) -> &Arc<webhook::WebhookSender> {
        &self.webhook
    }

    fn account_index(&self, name: &str) -> Option<usize> {
        let i: usize = name.strip_prefix("acct-")?.parse().ok()?;
        (i < self.accounts.len()).then_some(i)
    }

    fn owner(&self, token: &str) -> Option<(usize, bool)> {
        if self
            .revoked
            .read()
            .map(|r| r.contains(token))
            .unwrap_or(false)
        {
            return self.token_account(token).map(|i| (i, false));
        }
        if let Some(i) = token
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|n| self.account_index(n))
        {
            return Some((i, true));
        }
        let m = self.minted.read().ok()?;
        let (i, from) = m.get(token)?;
        Some((*i, self.h.clock.now_ms() >= *from))
    }

    fn token_account(&self, token: &str) -> Option<usize> {
        token
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|n| self.account_index(n))
            .or_else(|| self.minted.read().ok()?.get(token).map(|x| x.0))
    }

    /// Revoke every token minted so far for account `i`; how many were not revoked yet.
    fn revoke_minted(&self, i: usize) -> usize {
        let tokens: Vec<String> = self
            .minted
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, (owner, _))| *owner == i)
            .map(|(t, _)| t.clone())
            .collect();
        let mut r = self.revoked.write().unwrap_or_else(|e| e.into_inner());
        let mut newly = 0;
        for t in tokens {
            newly += usize::from(r.insert(t));
        }
        newly
    }

    /// Whether account `i`'s client secret was revoked (minting refused).
    fn secret_refused(&self, i: usize) -> bool {
        self.refused
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&i)
    }

    fn limiter(&self) -> Arc<Limiter> {
        match self.limiter.read() {
            Ok(l) => l.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The limits enforced now.
    fn limits(&self) -> LimitsView {
        let l = self.limiter();
        LimitsView {
            ip_limit: l.ip_limit,
            account_limit: l.account_limit,
            window_ms: l.window_ms,
        }
    }

    /// Enforce these limits from now on, with empty windows; the peaks restart over the
    /// new window. Refuses a zero window.
    pub fn set_limits(
        &self,
        ip_limit: u32,
        account_limit: u32,
        window_ms: u64,
    ) -> Result<(), String> {
        if window_ms == 0 {
            return Err("window_ms must be at least 1".into());
        }
        let fresh = Arc::new(Limiter::new(
            ip_limit,
            account_limit,
            window_ms,
            self.h.stats.resets(),
        ));
        match self.limiter.write() {
            Ok(mut l) => *l = fresh,
            Err(p) => *p.into_inner() = fresh,
        }
        Ok(())
    }

    /// The window peaks since start, the last stats reset or the last limits change.
    pub fn window_peaks(&self) -> WindowPeaks {
        let l = self.limiter();
        let p = l.peaks(self.h.stats.resets());
        WindowPeaks {
            window_ms: l.window_ms,
            by_ip: p.by_ip.peaks(),
            by_account: p.by_account.peaks(),
        }
    }

    /// 403 for bad tokens, then the per-IP and per-account windows (a request with a valid
    /// token counts toward the peaks whether it is admitted or not).
    fn admit(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<usize, Response> {
        let i = match bearer(headers).and_then(|t| self.owner(t)) {
            Some((i, true)) => i,
            _ => {
                return Err(fail(
                    StatusCode::FORBIDDEN,
                    "Unauthorized: invalid or expired access token",
                ))
            }
        };
        let ip = headers
            .get("x-sim-client-ip")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| peer.ip().to_string());
        let account = format!("acct-{i}");
        let l = self.limiter();
        {
            let mut p = l.peaks(self.h.stats.resets());
            p.by_ip.record(&ip);
            p.by_account.record(&account);
        }
        if l.ip_window.try_acquire(&ip, f64::from(l.ip_limit)).is_err()
            || l.acct_window
                .try_acquire(&account, f64::from(l.account_limit))
                .is_err()
        {
            return Err(fail(StatusCode::TOO_MANY_REQUESTS, RATE_MESSAGE));
        }
        Ok(i)
    }

    fn reservation_json(a: &Account, r: &Reservation) -> Value {
        json!({
            "id": r.id, "listingMapId": r.listing_id, "channelId": 2000, "channelName": "direct",
            "guestName": r.guest, "guestEmail": format!("guest{}@example.com", r.id),
            "arrivalDate": fmt(r.arrival_ms).get(..10), "departureDate": fmt(r.arrival_ms + 3 * DAY_MS).get(..10),
            "status": r.status, "isArchived": i32::from(r.archived),
            "hasUnreadConversationMessages": i32::from(r.messages.last().is_some_and(|m| m.incoming)),
            "insertedOn": fmt(r.inserted_ms), "updatedOn": fmt(r.updated_ms),
            "latestActivityOn": fmt(r.latest_activity()), "accountId": a.acct_no,
        })
    }

    fn message_json(a: &Account, r: &Reservation, m: &Msg) -> Value {
        json!({
            "id": m.id, "accountId": a.acct_no, "listingMapId": r.listing_id, "reservationId": r.reservation_id(),
            "conversationId": r.conversation_id, "communicationId": Value::Null, "airbnbThreadMessageId": Value::Null,
            "body": m.body, "communicationType": "email", "status": m.status,
            "isIncoming": i32::from(m.incoming), "isSeen": 1, "sentUsingHostaway": i32::from(!m.incoming),
            "hash": format!("{:016x}", mix(m.id, 7)), "listingTimeZoneName": "Europe/Warsaw",
            "date": fmt(m.inserted_ms), "sentChannelDate": fmt(m.inserted_ms),
            "insertedOn": fmt(m.inserted_ms), "updatedOn": fmt(m.inserted_ms), "attachments": [],
        })
    }

    /// The latest message, `messageSentOn` and `messageReceivedOn` count only sent messages,
    /// as the messages endpoint shows them by default (a scheduled one is not sent yet).
    fn conversation_json(a: &Account, r: &Reservation) -> Value {
        let sent = r
            .messages
            .iter()
            .rev()
            .find(|m| !m.incoming && m.status == "sent")
            .map(|m| fmt(m.inserted_ms));
        let recv = r
            .messages
            .iter()
            .rev()
            .find(|m| m.incoming)
            .map(|m| fmt(m.inserted_ms));
        let latest: Vec<Value> = r
            .latest_sent()
            .map(|m| {
                let mut v = Self::message_json(a, r, m);
                if r.poisoned {
                    v["insertedOn"] = json!(POISON_DATE);
                }
                v
            })
            .into_iter()
            .collect();
        json!({
            "id": r.conversation_id, "accountId": a.acct_no, "listingMapId": r.listing_id,
            "reservationId": r.reservation_id(), "type": CONVERSATION_TYPE, "recipientName": r.guest,
            "recipientEmail": format!("guest{}@example.com", r.id),
            "hasUnreadMessages": i32::from(r.has_unread()),
            "messageSentOn": sent, "messageReceivedOn": recv, "conversationMessages": latest,
        })
    }

    /// A conversation as the conversation routes render it; with `includeResources=1` it
    /// carries its `Reservation` as `/v1/reservations/{id}` renders it (null for an inquiry).
    fn conversation_view(a: &Account, r: &Reservation, resources: bool) -> Value {
        let mut v = Self::conversation_json(a, r);
        if resources {
            v["Reservation"] = if r.inquiry {
                Value::Null
            } else {
                Self::reservation_json(a, r)
            };
        }
        v
    }

    fn message_event(a: &Account, idx: usize) -> Option<Vec<u8>> {
        let r = &a.reservations[idx];
        // Only what the API shows by default: a scheduled message is not an event yet.
        let m = r.messages.last().filter(|m| m.status == "sent")?;
        Some(webhook::event_body(
            "message.received",
            a.acct_no,
            Self::message_json(a, r, m),
        ))
    }

    fn reservation_event(a: &Account, idx: usize, event: &str) -> Vec<u8> {
        let r = &a.reservations[idx];
        webhook::event_body(event, a.acct_no, Self::reservation_json(a, r))
    }

    /// Every live conversation, in list order, as a synced copy holds it.
    fn expected_of(a: &Account) -> Expected {
        let party = |guest: bool| Some(if guest { "guest" } else { "host" }.to_string());
        let threads = conversation_order(a)
            .into_iter()
            .map(|r| {
                let messages: Vec<ExpectedMessage> = r
                    .messages
                    .iter()
                    .filter(|m| m.status == "sent")
                    .map(|m| ExpectedMessage {
                        message_id: m.id.to_string(),
                        sender: party(m.incoming),
                        recipient: party(!m.incoming),
                        subject: None,
                        body: Some(m.body.clone()),
                        is_read: None,
                        sent_at: api_time(m.inserted_ms),
                        media: None,
                        status: Some(m.status.to_string()),
                    })
                    .collect();
                let latest = r.latest_sent();
                ExpectedThread {
                    thread_id: r.conversation_id.to_string(),
                    conversation_type: Some(CONVERSATION_TYPE.to_string()),
                    title: Some(r.guest.clone()),
                    status: (!r.inquiry).then(|| r.status.to_string()),
                    reference_id: r.reservation_id().map(|id| id.to_string()),
                    reference_type: (!r.inquiry).then(|| "reservation".to_string()),
                    unread_count: i32::from(r.has_unread()),
                    latest_message_id: latest.map(|m| m.id.to_string()),
                    latest_message_at: latest.map(|m| api_time(m.inserted_ms)),
                    // The conversation object has no creation time.
                    created_at: None,
                    messages,
                }
            })
            .collect();
        Expected { threads }
    }

    fn with_rng<T>(&self, f: impl FnOnce(&mut ChaCha8Rng) -> T) -> T {
        match self.rng.lock() {
            Ok(mut r) => f(&mut r),
            Err(p) => f(&mut p.into_inner()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MutateBody {
    #[serde(default = "acct0")]
    account: String,
    #[serde(default)]
    new_messages: usize,
    #[serde(default)]
    new_threads: usize,
    #[serde(default)]
    delete_threads: usize,
    /// Bump `updatedOn` of N random reservations (the afterId shift pitfall), or of the
    /// `reservation_ids` in turn (omitted: each of them once).
    update_reservations: Option<usize>,
    /// Reservation ids to target with `update_reservations` (unknown ones are ignored).
    #[serde(default, deserialize_with = "opt_ids")]
    reservation_ids: Option<Vec<u64>>,
    /// Conversation ids to target with new messages.
    #[serde(default, deserialize_with = "ids")]
    thread_ids: Vec<u64>,
    /// Conversation ids to delete (either kind; ones not live are ignored), before the
    /// `delete_threads` random ones.
    #[serde(default, deserialize_with = "ids")]
    delete_ids: Vec<u64>,
    /// Revoke every token minted so far for the account (minting still works).
    #[serde(default)]
    revoke_minted: bool,
    direction: Option<String>,
    /// New conversations without a reservation, each with one guest message.
    #[serde(default)]
    new_inquiries: usize,
    /// Serve this many live conversations with an undecodable latest-message `insertedOn`.
    #[serde(default)]
    poison_threads: usize,
}

fn acct0() -> String {
    "acct-0".into()
}

/// Ids given as JSON numbers or decimal strings (`10500007` or `"10500007"`).
fn ids<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    Vec::<Value>::deserialize(d)?
        .iter()
        .map(|v| {
            match v {
                Value::Number(n) => n.as_u64(),
                Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                    s.parse().ok()
                }
                _ => None,
            }
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "id {v} is neither a non-negative integer nor a decimal string"
                ))
            })
        })
        .collect()
}

fn opt_ids<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u64>>, D::Error> {
    ids(d).map(Some)
}

impl SimProvider for HostawaySim {
    fn harness(&self) -> &Harness {
        &self.h
    }

    fn identify(&self, parts: &Parts) -> Option<String> {
        bearer(&parts.headers)
            .and_then(|t| self.token_account(t))
            .map(|i| format!("acct-{i}"))
    }

    fn is_metered(&self, path: &str) -> bool {
        path != "/v1/accessTokens"
    }

    fn error_5xx(&self) -> Response {
        fail(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
    }

    fn burst_429(&self) -> Response {
        fail(StatusCode::TOO_MANY_REQUESTS, RATE_MESSAGE)
    }

    fn accounts(&self) -> Vec<String> {
        (0..self.accounts.len())
            .map(|i| format!("acct-{i}"))
            .collect()
    }

    fn token(&self, account: &str) -> String {
        format!("{TOKEN_PREFIX}{account}")
    }

    fn truth(&self, account: Option<&str>) -> Value {
        let accounts: Vec<Value> = self
            .accounts
            .iter()
            .filter_map(|a| a.read().ok())
            .filter(|a| account.is_none_or(|n| n == a.name))
            .map(|a| {
                let messages = |r: &Reservation| -> Value {
                    r.messages
                        .iter()
                        .map(|m| Self::message_json(&a, r, m))
                        .collect()
                };
                let live = a.reservations.iter().filter(|r| !r.deleted);
                let res: Vec<Value> = live
                    .clone()
                    .filter(|r| !r.inquiry)
                    .map(|r| {
                        let mut v = Self::reservation_json(&a, r);
                        v["conversationId"] = json!(r.conversation_id);
                        v["messages"] = messages(r);
                        v["poisoned"] = json!(r.poisoned);
                        v
                    })
                    .collect();
                let inquiries: Vec<Value> = live
                    .filter(|r| r.inquiry)
                    .map(|r| {
                        json!({"conversationId": r.conversation_id, "listingMapId": r.listing_id,
                               "guestName": r.guest, "insertedOn": fmt(r.inserted_ms),
                               "poisoned": r.poisoned, "messages": messages(r)})
                    })
                    .collect();
                let deleted: Vec<u64> = a
                    .reservations
                    .iter()
                    .filter(|r| r.deleted)
                    .map(|r| r.conversation_id)
                    .collect();
                json!({"account": a.name, "reservations": res, "inquiries": inquiries,
                       "deleted_conversation_ids": deleted})
            })
            .collect();
        json!({"provider": "hostaway", "accounts": accounts})
    }

    fn mutate(&self, body: &Value) -> Result<Value, String> {
        let req: MutateBody = serde_json::from_value(body.clone())
            .map_err(|e| format!("invalid mutate body: {e}"))?;
        let i = self
            .account_index(&req.account)
            .ok_or_else(|| format!("unknown account {}", req.account))?;
        let now = self.h.clock.now_ms();
        let mut a = self.accounts[i].write().map_err(|_| "store poisoned")?;
        let targets: Vec<usize> = req
            .thread_ids
            .iter()
            .map(|c| {
                a.by_conv
                    .get(c)
                    .copied()
                    .filter(|x| !a.reservations[*x].deleted)
                    .ok_or(format!("unknown conversation {c}"))
            })
            .collect::<Result<_, _>>()?;
        let incoming = req.direction.as_deref() != Some("outbound");
        let live: Vec<usize> = (0..a.reservations.len())
            .filter(|x| !a.reservations[*x].deleted)
            .collect();
        let booked: Vec<usize> = live
            .iter()
            .copied()
            .filter(|x| !a.reservations[*x].inquiry)
            .collect();
        // `reservation_ids`: the live reservations named, once each, in the order given.
        let chosen: Option<Vec<usize>> = req.reservation_ids.as_ref().map(|rs| {
            let mut seen = HashSet::new();
            rs.iter()
                .filter_map(|id| a.by_res.get(id).copied())
                .filter(|x| !a.reservations[*x].deleted && seen.insert(*x))
                .collect()
        });
        let updates = req
            .update_reservations
            .unwrap_or_else(|| chosen.as_ref().map_or(0, Vec::len));
        let (mut msgs, mut threads, mut deleted, mut updated) = (vec![], vec![], vec![], vec![]);
        let (mut inquiries, mut poisoned) = (vec![], vec![]);
        // Webhook bodies, rendered as each change is made.
        let hooks = self.webhook.is_active();
        let mut events: Vec<Vec<u8>> = Vec::new();
        self.with_rng(|rng| {
            for n in 0..req.new_messages {
                if live.is_empty() {
                    break;
                }
                let idx = if targets.is_empty() {
                    live[rng.gen_range(0..live.len())]
                } else {
                    targets[n % targets.len()]
                };
                let id = a.add_message(rng, idx, incoming, now);
                msgs.push(
                    json!({"conversationId": a.reservations[idx].conversation_id, "messageId": id}),
                );
                if hooks {
                    events.extend(Self::message_event(&a, idx));
                }
            }
            for _ in 0..req.new_threads {
                let idx = a.add_reservation(rng, now, false);
                let id = a.add_message(rng, idx, true, now);
                threads.push(json!({"reservationId": a.reservations[idx].id,
                    "conversationId": a.reservations[idx].conversation_id, "messageId": id}));
                if hooks {
                    // Rendered with its first message, as the API shows it from now on.
                    events.push(Self::reservation_event(&a, idx, "reservation.created"));
                    events.extend(Self::message_event(&a, idx));
                }
            }
            for _ in 0..req.new_inquiries {
                let idx = a.add_reservation(rng, now, true);
                let id = a.add_message(rng, idx, true, now);
                inquiries.push(
                    json!({"conversationId": a.reservations[idx].conversation_id,
                                      "messageId": id}),
                );
                if hooks {
                    events.extend(Self::message_event(&a, idx));
                }
            }
            for n in 0..updates {
                let idx = match &chosen {
                    Some(c) => c.get(n % c.len().max(1)).copied(),
                    None => (!booked.is_empty()).then(|| booked[rng.gen_range(0..booked.len())]),
                };
                if let Some(idx) = idx {
                    let r = &mut a.reservations[idx];
                    r.updated_ms = now.max(r.updated_ms + 1000);
                    r.status = "modified";
                    updated.push(r.id);
                    if hooks {
                        events.push(Self::reservation_event(&a, idx, "reservation.updated"));
                    }
                }
            }
            // The `delete_ids` first, then N distinct others drawn from what is still live.
            for c in &req.delete_ids {
                if let Some(idx) = a.by_conv.get(c).copied() {
                    if !a.reservations[idx].deleted {
                        a.reservations[idx].deleted = true;
                        deleted.push(*c);
                    }
                }
            }
            let mut pool: Vec<usize> = live
                .iter()
                .copied()
                .filter(|x| !a.reservations[*x].deleted)
                .collect();
            for _ in 0..req.delete_threads {
                if pool.is_empty() {
                    break;
                }
                let idx = pool.swap_remove(rng.gen_range(0..pool.len()));
                a.reservations[idx].deleted = true;
                deleted.push(a.reservations[idx].conversation_id);
            }
            for _ in 0..req.poison_threads {
                let pool: Vec<usize> = (0..a.reservations.len())
                    .filter(|x| !a.reservations[*x].deleted && !a.reservations[*x].poisoned)
                    .collect();
                if pool.is_empty() {
                    break;
                }
                let idx = pool[rng.gen_range(0..pool.len())];
                a.reservations[idx].poisoned = true;
                poisoned.push(a.reservations[idx].conversation_id);
            }
        });
        for body in events {
            self.webhook.enqueue(body);
        }
        let revoked = if req.revoke_minted {
            self.revoke_minted(i)
        } else {
            0
        };
        Ok(
            json!({"account": a.name, "newMessages": msgs, "newThreads": threads,
                  "newInquiries": inquiries, "updatedReservationIds": updated,
                  "deletedConversationIds": deleted, "poisonedConversationIds": poisoned,
                  "revokedTokens": revoked}),
        )
    }

    fn background_step(&self) {
        if self.accounts.is_empty() {
            return;
        }
        let share = self.h.config.hostaway_inquiry_share;
        let (i, new_thread, incoming, inquiry) = self.with_rng(|r| {
            let i = r.gen_range(0..self.accounts.len());
            let (new_thread, incoming) = (r.gen_bool(0.1), r.gen_bool(0.6));
            // Drawn only with a share, so a zero share keeps the same sequence.
            let inquiry = new_thread && share > 0.0 && r.gen_bool(share.min(1.0));
            (i, new_thread, incoming, inquiry)
        });
        let _ = self.mutate(&json!({"account": format!("acct-{i}"), "new_messages": usize::from(!new_thread),
            "new_threads": usize::from(new_thread && !inquiry), "new_inquiries": usize::from(inquiry),
            "direction": if incoming {"inbound"} else {"outbound"}}));
    }

    /// Every live conversation, inquiries included (poisoned ones too: a sync must show
    /// them missing). `since` is ignored: conversations have no date filter, so a first
    /// sync reads every conversation whole.
    fn expected(
        &self,
        account: &str,
        _since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Expected, String> {
        let i = self
            .account_index(account)
            .ok_or_else(|| format!("unknown account {account}"))?;
        let a = self.accounts[i].read().map_err(|_| "store poisoned")?;
        Ok(Self::expected_of(&a))
    }

    /// Revokes the static token and the client secret: every token minted so far for the
    /// account gets 403, and `POST /v1/accessTokens` refuses its client id from then on.
    fn expire_token(&self, account: &str) -> bool {
        let Some(i) = self.account_index(account) else {
            return false;
        };
        // Refused before the minted tokens are revoked: a mint racing this one either
        // sees the refusal or is already among the minted (see `mint_token`).
        self.refused
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(i);
        self.revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(format!("{TOKEN_PREFIX}acct-{i}"));
        self.revoke_minted(i);
        true
    }

    fn api_routes(self: Arc<Self>) -> Router {
        Router::new()
            .route(
                "/v1/accessTokens",
                axum::routing::post(mint_token).delete(revoke_token),
            )
            .route("/v1/reservations", get(reservations))
            .route("/v1/conversations", get(conversations))
            .route("/v1/conversations/{id}", get(conversation))
            .route(
                "/v1/conversations/{id}/messages",
                get(conversation_messages).post(send_message),
            )
            .route("/v1/reservations/{id}", get(reservation))
            .route(
                "/v1/reservations/{id}/conversations",
                get(reservation_conversations),
            )
            .with_state(self)
    }

    fn control_routes(self: Arc<Self>) -> Router {
        control::routes(self)
    }
}
