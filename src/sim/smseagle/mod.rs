//! SMSEagle API v2 simulator: `access-token` header, `POST /api/v2/messages/sms`
//! and `GET /api/v2/messages/{folder}`.
//!
//! Sent messages go through the Gammu lifecycle on the simulated clock:
//! outbox (`Reserved`) -> sentitems `SendingOK` -> a delivery report that
//! changes the status IN PLACE (`DeliveryOK`/`DeliveryFailed`/`Error`) at a
//! random instant within the validity, or never (stays `SendingOK` /
//! `DeliveryPending`). States are computed from the clock when read, so
//! advancing the clock makes reports "arrive". Sent ids are serial with gaps.

mod routes;
mod v1;

use super::clock::parse_iso;
use super::expected::{utc_ms, Expected, ExpectedMessage, ExpectedThread};
use routes::*;

use super::faults::mix;
use super::http::{json, Query};
use super::{Harness, SimConfig, SimProvider, StatusStyle};
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, NaiveDateTime, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

const ANCHOR_MS: i64 = super::ebay::data::ANCHOR_MS;
pub const TOKEN_PREFIX: &str = "sim-smseagle-";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Reserved,
    Received,
    SendingOK,
    SendingError,
    DeliveryOK,
    DeliveryFailed,
    DeliveryPending,
    Error,
}

impl St {
    fn name(self, style: StatusStyle) -> &'static str {
        match (self, style) {
            (St::Reserved, StatusStyle::Gammu) => "Reserved",
            (St::Received, StatusStyle::Gammu) => "Received",
            (St::SendingOK, StatusStyle::Gammu) => "SendingOK",
            (St::SendingError, StatusStyle::Gammu) => "SendingError",
            (St::DeliveryOK, StatusStyle::Gammu) => "DeliveryOK",
            (St::DeliveryFailed, StatusStyle::Gammu) => "DeliveryFailed",
            (St::DeliveryPending, StatusStyle::Gammu) => "DeliveryPending",
            (St::Error, StatusStyle::Gammu) => "Error",
            (St::Reserved, StatusStyle::Snake) => "reserved",
            (St::Received, StatusStyle::Snake) => "received",
            (St::SendingOK, StatusStyle::Snake) => "sending_ok",
            (St::SendingError, StatusStyle::Snake) => "sending_error",
            (St::DeliveryOK, StatusStyle::Snake) => "delivery_ok",
            (St::DeliveryFailed, StatusStyle::Snake) => "delivery_failed",
            (St::DeliveryPending, StatusStyle::Snake) => "delivery_pending",
            (St::Error, StatusStyle::Snake) => "error",
        }
    }
}

#[derive(Clone, Debug)]
struct Sms {
    id: u64,
    inbound: bool,
    number: String,
    text: String,
    created_ms: i64,
    read: bool,
    // Sent messages only.
    validity: &'static str,
    pickup_ms: i64,
    /// Status after pickup until a report arrives.
    sent_status: St,
    report: Option<(i64, St)>,
    /// Served without its `date`: a row a client cannot read.
    poison: bool,
}

/// What a reader sees at `now`.
struct View {
    folder: &'static str,
    status: St,
    delivery_ms: Option<i64>,
    updated_ms: i64,
}

impl Sms {
    fn view(&self, now: i64) -> View {
        if self.inbound {
            return View {
                folder: "inbox",
                status: St::Received,
                delivery_ms: None,
                updated_ms: self.created_ms,
            };
        }
        if now < self.pickup_ms {
            return View {
                folder: "outbox",
                status: St::Reserved,
                delivery_ms: None,
                updated_ms: self.created_ms,
            };
        }
        match self.report {
            Some((at, st)) if now >= at => View {
                folder: "sentitems",
                status: st,
                delivery_ms: Some(at),
                updated_ms: at,
            },
            _ => View {
                folder: "sentitems",
                status: self.sent_status,
                delivery_ms: None,
                updated_ms: self.pickup_ms,
            },
        }
    }
}

fn validity_secs(v: &str) -> Option<i64> {
    Some(match v {
        "5m" => 300,
        "10m" => 600,
        "30m" => 1800,
        "1h" => 3600,
        "max" => 7 * 86_400,
        _ => return None,
    })
}

struct Device {
    name: String,
    /// Ascending id within each direction; inbox and sent ids are separate series.
    messages: Vec<Sms>,
    next_inbox: u64,
    next_sent: u64,
    skipped_ids: Vec<u64>,
    numbers: Vec<String>,
    /// `{folder, id}` of rows deleted through the API.
    deleted: Vec<Value>,
}

pub struct SmsEagleSim {
    h: Harness,
    devices: Vec<RwLock<Device>>,
    expired: RwLock<HashSet<usize>>,
    rng: Mutex<ChaCha8Rng>,
}

impl Device {
    fn new_sent_id(&mut self, rng: &mut ChaCha8Rng, gap_rate: f64) -> u64 {
        // Gammu ids come from one autoincrement shared by outbox and
        // sentitems; deleted/failed rows leave gaps a client must tolerate.
        while rng.gen_bool(gap_rate.clamp(0.0, 0.99)) {
            self.skipped_ids.push(self.next_sent);
            self.next_sent += 1;
        }
        let id = self.next_sent;
        self.next_sent += 1;
        id
    }

    fn receive(&mut self, number: String, text: String, at: i64) -> u64 {
        let id = self.next_inbox;
        self.next_inbox += 1;
        self.messages.push(Sms {
            id,
            inbound: true,
            number,
            text,
            created_ms: at,
            read: false,
            validity: "",
            pickup_ms: at,
            sent_status: St::Received,
            report: None,
            poison: false,
        });
        id
    }

    fn send(
        &mut self,
        rng: &mut ChaCha8Rng,
        cfg: &SimConfig,
        number: String,
        text: String,
        validity: &'static str,
        at: i64,
    ) -> u64 {
        let id = self.new_sent_id(rng, cfg.id_gap_rate);
        let pickup = at + rng.gen_range(2_000..6_000);
        let valid_ms = validity_secs(validity).unwrap_or(7 * 86_400) * 1000;
        let (sent_status, report) = if rng.gen_bool(0.03) {
            // The modem refused it: no report will ever come.
            (St::SendingError, None)
        } else if rng.gen_bool(cfg.no_report_rate.clamp(0.0, 1.0)) {
            let st = if rng.gen_bool(0.5) {
                St::SendingOK
            } else {
                St::DeliveryPending
            };
            (st, None)
        } else {
            let at = pickup + rng.gen_range(1_000..valid_ms.max(2_000));
            let r: f64 = rng.gen();
            let st = if r < 0.85 {
                St::DeliveryOK
            } else if r < 0.95 {
                St::DeliveryFailed
            } else {
                St::Error
            };
            (St::SendingOK, Some((at, st)))
        };
        self.messages.push(Sms {
            id,
            inbound: false,
            number,
            text,
            created_ms: at,
            read: true,
            validity,
            pickup_ms: pickup,
            sent_status,
            report,
            poison: false,
        });
        id
    }
}

const TEXTS: &[&str] = &[
    "Your appointment is confirmed for tomorrow.",
    "Reply STOP to unsubscribe.",
    "Thanks, see you then!",
    "Can we move it to 3pm?",
    "Alarm: door sensor triggered",
    "OK",
];

impl SmsEagleSim {
    pub fn build(config: SimConfig) -> anyhow::Result<Arc<dyn SimProvider>> {
        let mut devices = Vec::with_capacity(config.accounts);
        for i in 0..config.accounts {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(config.seed, 0x5E5 + i as u64));
            let numbers: Vec<String> = (0..config.threads.max(1))
                .map(|_| format!("+48{:09}", rng.gen_range(500_000_000u64..800_000_000)))
                .collect();
            let mut d = Device {
                name: format!("acct-{i}"),
                messages: Vec::new(),
                next_inbox: 1,
                next_sent: 1,
                skipped_ids: Vec::new(),
                numbers,
                deleted: Vec::new(),
            };
            let total = config.threads * config.messages;
            // Seed history ends at the anchor, one event every ~7 minutes.
            for k in 0..total {
                let at = ANCHOR_MS - (total - k) as i64 * 420_000 + rng.gen_range(0..60_000);
                let number = d.numbers[rng.gen_range(0..d.numbers.len())].clone();
                let text = TEXTS[rng.gen_range(0..TEXTS.len())].to_string();
                if rng.gen_bool(0.55) {
                    let id = d.receive(number, text, at);
                    if let Some(m) = d
                        .messages
                        .iter_mut()
                        .rev()
                        .find(|m| m.id == id && m.inbound)
                    {
                        m.read = rng.gen_bool(0.9);
                    }
                } else {
                    d.send(&mut rng, &config, number, text, "max", at);
                }
            }
            devices.push(RwLock::new(d));
        }
        let rng = ChaCha8Rng::seed_from_u64(mix(config.seed, 0x5E5E));
        Ok(Arc::new(Self {
            h: Harness::new(config),
            devices,
            expired: RwLock::default(),
            rng: Mutex::new(rng),
        }))
    }

    fn account_index(&self, name: &str) -> Option<usize> {
        let i: usize = name.strip_prefix("acct-")?.parse().ok()?;
        (i < self.devices.len()).then_some(i)
    }

    /// Account of a valid (known, not expired) token.
    fn token_index(&self, token: &str) -> Option<usize> {
        token
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|n| self.account_index(n))
            .filter(|i| !self.expired.read().map(|e| e.contains(i)).unwrap_or(false))
    }

    fn auth(&self, headers: &HeaderMap) -> Result<usize, Response> {
        let token = headers
            .get("access-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        self.token_index(token).ok_or_else(|| {
            json(
                StatusCode::UNAUTHORIZED,
                &json!({"status": "error", "message": "Invalid access token"}),
            )
        })
    }

    fn with_rng<T>(&self, f: impl FnOnce(&mut ChaCha8Rng) -> T) -> T {
        match self.rng.lock() {
            Ok(mut r) => f(&mut r),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    fn render(&self, m: &Sms, now: i64) -> Value {
        let v = m.view(now);
        let style = self.h.config.status_style;
        let mut row = json!({
            "id": m.id,
            "folder": v.folder,
            "number": m.number,
            "text": m.text,
            "status": v.status.name(style),
            "date": fmt_date(m.created_ms),
            "validity": if m.inbound { Value::Null } else { json!(m.validity) },
            "delivery_date": v.delivery_ms.map(fmt_date),
            "updated": fmt_date(v.updated_ms),
            "read": m.read,
            "modem_no": 1,
            "sequence_position": 1,
        });
        if m.poison {
            if let Some(o) = row.as_object_mut() {
                o.remove("date");
            }
        }
        row
    }
}

/// The device's web server stamps `Date` from its own clock: the simulated one, so a
/// client can judge validity expiry on the gateway's time.
async fn stamp_device_date(State(sim): State<Arc<SmsEagleSim>>, mut r: Response) -> Response {
    let now = sim
        .h
        .clock
        .now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    if let Ok(v) = axum::http::HeaderValue::from_str(&now) {
        r.headers_mut().insert(axum::http::header::DATE, v);
    }
    r
}

/// SMSEagle/Gammu database style: `YYYY-MM-DD HH:MM:SS` UTC.
fn fmt_date(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// Accepts `YYYYmmDDHHMMSS` (v1), `YYYY-MM-DD HH:MM:SS` and ISO-8601.
fn parse_date(s: &str) -> Option<i64> {
    NaiveDateTime::parse_from_str(s, "%Y%m%d%H%M%S")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S"))
        .map(|t| t.and_utc().timestamp_millis())
        .ok()
        .or_else(|| parse_iso(s))
}

fn wrong_params(detail: &str) -> Response {
    json(
        StatusCode::BAD_REQUEST,
        &json!({"status": "error", "message": format!("Wrong parameters: {detail}")}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MutateBody {
    #[serde(default = "acct0")]
    account: String,
    #[serde(default)]
    inbox: usize,
    #[serde(default)]
    send: usize,
    /// Optional validity for the sends (default max).
    validity: Option<String>,
    /// Received messages served without their `date` (rows a client cannot read).
    #[serde(default)]
    poison: usize,
}

fn acct0() -> String {
    "acct-0".into()
}

impl SimProvider for SmsEagleSim {
    fn harness(&self) -> &Harness {
        &self.h
    }

    fn identify(&self, parts: &Parts) -> Option<String> {
        // v2: `access-token` header; v1: `access_token` query parameter.
        let q = Query::parse(parts.uri.query());
        let t = match parts
            .headers
            .get("access-token")
            .and_then(|v| v.to_str().ok())
        {
            Some(t) => t.to_string(),
            None => q.get(&["access_token"])?.to_string(),
        };
        let i = self.account_index(t.strip_prefix(TOKEN_PREFIX)?)?;
        Some(format!("acct-{i}"))
    }

    fn error_5xx(&self) -> Response {
        json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"status": "error", "message": "Internal server error"}),
        )
    }

    /// SMSEagle has no rate limits; a burst fault models a busy device.
    fn burst_429(&self) -> Response {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "error", "message": "Device busy"}),
        )
    }

    fn accounts(&self) -> Vec<String> {
        (0..self.devices.len())
            .map(|i| format!("acct-{i}"))
            .collect()
    }

    fn token(&self, account: &str) -> String {
        format!("{TOKEN_PREFIX}{account}")
    }

    fn truth(&self, account: Option<&str>) -> Value {
        let now = self.h.clock.now_ms();
        let accounts: Vec<Value> = self
            .devices
            .iter()
            .filter_map(|d| d.read().ok())
            .filter(|d| account.is_none_or(|a| a == d.name))
            .map(|d| {
                let msgs: Vec<Value> = d.messages.iter().map(|m| self.render(m, now)).collect();
                let pending: Vec<u64> = d
                    .messages
                    .iter()
                    .filter(|m| !m.inbound && m.report.is_none_or(|(at, _)| at > now))
                    .map(|m| m.id)
                    .collect();
                json!({"account": d.name, "messages": msgs, "skipped_ids": d.skipped_ids,
                       "pending_ids": pending, "deleted": d.deleted, "next_sent_id": d.next_sent, "next_inbox_id": d.next_inbox})
            })
            .collect();
        json!({"provider": "smseagle", "now": fmt_date(now), "accounts": accounts})
    }

    /// One thread per remote number ("unknown" when empty), holding the rows a folder sync
    /// reads: every message dated from `since` on (to the whole second, as the gateway's
    /// `date_from` filter compares), with its status as the gateway shows it now in
    /// snake_case. Ids are `in:ID` / `out:ID` (the simulator sends no multipart messages).
    /// Threads carry no title, status or unread count; the latest message is the newest by
    /// (date, id).
    fn expected(&self, account: &str, since: Option<DateTime<Utc>>) -> Result<Expected, String> {
        let i = self
            .account_index(account)
            .ok_or_else(|| format!("unknown account {account}"))?;
        let now = self.h.clock.now_ms();
        let from = since.map(|t| {
            let ms = t.timestamp_millis();
            ms - ms.rem_euclid(1000)
        });
        let d = self.devices[i]
            .read()
            .map_err(|_| "device store poisoned".to_string())?;
        let mut threads: BTreeMap<String, Vec<ExpectedMessage>> = BTreeMap::new();
        for m in d
            .messages
            .iter()
            .filter(|m| from.is_none_or(|f| m.created_ms >= f))
        {
            let number = if m.number.is_empty() {
                "unknown".to_string()
            } else {
                m.number.clone()
            };
            let dir = if m.inbound { "in" } else { "out" };
            threads
                .entry(number.clone())
                .or_default()
                .push(ExpectedMessage {
                    message_id: format!("{dir}:{}", m.id),
                    sender: m.inbound.then(|| number.clone()),
                    recipient: (!m.inbound).then(|| number.clone()),
                    subject: None,
                    body: Some(m.text.clone()),
                    is_read: Some(m.read),
                    // The gateway's dates have whole seconds.
                    sent_at: utc_ms(m.created_ms - m.created_ms.rem_euclid(1000)),
                    media: None,
                    status: Some(m.view(now).status.name(StatusStyle::Snake).to_string()),
                });
        }
        let threads = threads
            .into_iter()
            .map(|(number, messages)| {
                let latest = messages
                    .iter()
                    .max_by(|a, b| (a.sent_at, &a.message_id).cmp(&(b.sent_at, &b.message_id)));
                ExpectedThread {
                    thread_id: number,
                    conversation_type: None,
                    title: None,
                    status: None,
                    reference_id: None,
                    reference_type: None,
                    unread_count: 0,
                    latest_message_id: latest.map(|m| m.message_id.clone()),
                    latest_message_at: latest.map(|m| m.sent_at),
                    // The first message the copy holds of the number.
                    created_at: messages.iter().map(|m| m.sent_at).min(),
                    messages,
                }
            })
            .collect();
        Ok(Expected { threads })
    }

    fn mutate(&self, body: &Value) -> Result<Value, String> {
        let req: MutateBody = serde_json::from_value(body.clone())
            .map_err(|e| format!("invalid mutate body: {e}"))?;
        let i = self
            .account_index(&req.account)
            .ok_or_else(|| format!("unknown account {}", req.account))?;
        let validity: &'static str = match req.validity.as_deref() {
            None => "max",
            Some(v) => ["5m", "10m", "30m", "1h", "max"]
                .into_iter()
                .find(|x| *x == v)
                .ok_or("validity must be 5m|10m|30m|1h|max")?,
        };
        let now = self.h.clock.now_ms();
        let mut d = self.devices[i].write().map_err(|_| "store poisoned")?;
        let (mut inbox, mut sent) = (Vec::new(), Vec::new());
        self.with_rng(|r| {
            for _ in 0..req.inbox {
                let n = d.numbers[r.gen_range(0..d.numbers.len())].clone();
                inbox.push(d.receive(n, TEXTS[r.gen_range(0..TEXTS.len())].into(), now));
            }
            for _ in 0..req.send {
                let n = d.numbers[r.gen_range(0..d.numbers.len())].clone();
                let text = TEXTS[r.gen_range(0..TEXTS.len())].to_string();
                sent.push(d.send(r, &self.h.config, n, text, validity, now));
            }
        });
        let mut poisoned = Vec::new();
        for _ in 0..req.poison {
            let n = self.with_rng(|r| d.numbers[r.gen_range(0..d.numbers.len())].clone());
            let id = d.receive(n, "unreadable".into(), now);
            if let Some(m) = d.messages.last_mut() {
                m.poison = true;
            }
            poisoned.push(id);
        }
        Ok(
            json!({"account": d.name, "inbox_ids": inbox, "sent_ids": sent, "poisoned_ids": poisoned}),
        )
    }

    fn background_step(&self) {
        if self.devices.is_empty() {
            return;
        }
        let (i, inbox) = self.with_rng(|r| (r.gen_range(0..self.devices.len()), r.gen_bool(0.5)));
        let body = json!({"account": format!("acct-{i}"), "inbox": usize::from(inbox), "send": usize::from(!inbox)});
        let _ = self.mutate(&body);
    }

    fn expire_token(&self, account: &str) -> bool {
        match self.account_index(account) {
            Some(i) => {
                if let Ok(mut e) = self.expired.write() {
                    e.insert(i);
                }
                true
            }
            None => false,
        }
    }

    fn api_routes(self: Arc<Self>) -> Router {
        Router::new()
            .route("/api/v2/messages/sms", post(send_sms))
            .route("/api/v2/messages/{folder}", get(read_folder))
            .route(
                "/api/v2/messages/{folder}/{id}",
                get(read_one).delete(delete_one),
            )
            .route("/http_api/read_sms", get(v1::read_sms))
            .route("/http_api/send_sms", get(v1::send_sms_v1))
            .route("/http_api/get_inbox_length", get(v1::inbox_length))
            .route("/http_api/get_outbox_length", get(v1::outbox_length))
            .route("/http_api/get_queue_length", get(v1::outbox_length))
            .route("/http_api/get_sentitems_length", get(v1::sentitems_length))
            .layer(axum::middleware::map_response_with_state(
                self.clone(),
                stamp_device_date,
            ))
            .with_state(self)
    }
}
