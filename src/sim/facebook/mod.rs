//! Facebook Graph simulator for Page conversations:
//! `GET /v{N}.0/{page-id}/conversations`, `GET /v{N}.0/{conversation-id}`,
//! `GET /v{N}.0/{conversation-id}/messages`, `GET /v{N}.0/{message-id}`.
//!
//! The page id is the account name (`acct-0`, ...); the Page token is
//! `sim-fb-acct-<i>` (query `access_token` or `Authorization: Bearer`).
//! Reproduced quirks: opaque base64 cursors that die with their item,
//! privacy-filtered items making pages short or empty while `next` stays,
//! 2 calls/s per Page answered as HTTP 400 OAuthException 613, a daily BUC
//! budget answered as 80006 with `X-Business-Use-Case-Usage`, token expiry 190,
//! and only the newest `detail_window` messages readable by id.
//!
//! Conversations are Messenger or Instagram ones (`instagram_share`); a webhook sender
//! (webhook.rs) posts every added message while a target is configured.

mod control;
mod fields;
mod routes;
pub mod webhook;

pub use fields::{parse_fields, Field};
pub use webhook::{WebhookStats, WebhookTarget};

use super::expected::{utc_ms, Expected, ExpectedMessage, ExpectedThread};
use super::faults::{mix, unit};
use super::http::{b64_decode, b64_encode, bearer, host, json, Query};
use super::stats::SlidingWindow;
use super::{Harness, SimConfig, SimProvider};
use axum::extract::{Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

const ANCHOR_MS: i64 = super::ebay::data::ANCHOR_MS;
pub const TOKEN_PREFIX: &str = "sim-fb-";
const DAY_MS: i64 = 86_400_000;

#[derive(Clone, Debug)]
struct FbMessage {
    id: String,
    created_ms: i64,
    inbound: bool,
    text: String,
}

/// Which inbox a conversation belongs to; `GET /{page}/conversations` lists one at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Messenger,
    Instagram,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Messenger => "messenger",
            Platform::Instagram => "instagram",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "messenger" => Some(Platform::Messenger),
            "instagram" => Some(Platform::Instagram),
            _ => None,
        }
    }
}

/// Knobs `add_conv` needs from the config.
#[derive(Clone, Copy)]
struct Gen {
    drop_rate: f64,
    instagram_share: f64,
    seed: u64,
}

#[derive(Clone, Debug)]
struct Conv {
    id: String,
    platform: Platform,
    /// PSID (Messenger) or IGSID (Instagram).
    user_id: String,
    /// Display name (Messenger) or username (Instagram).
    user_name: String,
    /// Oldest first; the API serves newest first.
    messages: Vec<FbMessage>,
    unread: u32,
    deleted: bool,
    /// Permanently hidden by "privacy filtering" (see `drop_rate`).
    filtered: bool,
    /// `updated_time` renders as an undecodable string (mutate `poison_threads`).
    poisoned: bool,
}

impl Conv {
    fn updated_ms(&self) -> i64 {
        self.messages.last().map(|m| m.created_ms).unwrap_or(0)
    }
}

struct Page {
    name: String,
    convs: Vec<Conv>,
    by_id: HashMap<String, usize>,
    msg_index: HashMap<String, (usize, usize)>,
    /// Live conversations, updated_time desc, ties by id.
    order: Vec<usize>,
    deleted_ids: Vec<String>,
    next_id: u64,
    acct_no: usize,
    /// Daily BUC budget window: (window start ms, calls in window).
    buc: (i64, u64),
}

impl Page {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        (self.acct_no as u64 + 1) * 1_000_000_000 + self.next_id
    }

    fn cmp(&self, a: usize, b: usize) -> std::cmp::Ordering {
        let (x, y) = (&self.convs[a], &self.convs[b]);
        y.updated_ms()
            .cmp(&x.updated_ms())
            .then_with(|| x.id.cmp(&y.id))
    }

    fn resort(&mut self) {
        let mut order = std::mem::take(&mut self.order);
        order.sort_by(|a, b| self.cmp(*a, *b));
        self.order = order;
    }

    fn add_message(&mut self, ci: usize, inbound: bool, at: i64, text: String) -> String {
        let n = self.next_id();
        let id = match self.convs[ci].platform {
            Platform::Messenger => format!("m_{n}"),
            // Instagram ids are long opaque base64 strings, not `m_` ids.
            Platform::Instagram => b64_encode(format!("ig_message:{n}").as_bytes()),
        };
        let at = at.max(self.convs[ci].updated_ms() + 1);
        let c = &mut self.convs[ci];
        c.messages.push(FbMessage {
            id: id.clone(),
            created_ms: at,
            inbound,
            text,
        });
        if inbound {
            c.unread += 1;
        } else {
            c.unread = 0;
        }
        let mi = c.messages.len() - 1;
        self.msg_index.insert(id.clone(), (ci, mi));
        id
    }

    /// A new empty conversation; `platform` None draws it from `instagram_share`.
    fn add_conv(&mut self, rng: &mut ChaCha8Rng, g: Gen, platform: Option<Platform>) -> usize {
        let n = self.next_id();
        let filtered = unit(g.seed ^ 0xF11, n) < g.drop_rate;
        let platform = platform.unwrap_or(if unit(g.seed ^ 0x16A, n) < g.instagram_share {
            Platform::Instagram
        } else {
            Platform::Messenger
        });
        // The same two draws for either platform, so the share does not shift the data.
        let (uid, uname) = (
            rng.gen_range(0..999_999_999u64),
            rng.gen_range(1000..9999u32),
        );
        let (id, user_id, user_name) = match platform {
            Platform::Messenger => (
                format!("t_{n}"),
                format!("{}", 7_000_000_000_000_000u64 + uid),
                format!("User {uname}"),
            ),
            Platform::Instagram => (
                b64_encode(format!("ig_thread:{n}").as_bytes()),
                format!("{}", 6_000_000_000_000_000u64 + uid),
                format!("ig_user_{uname}"),
            ),
        };
        self.convs.push(Conv {
            id: id.clone(),
            platform,
            user_id,
            user_name,
            messages: Vec::new(),
            unread: 0,
            deleted: false,
            filtered,
            poisoned: false,
        });
        let ci = self.convs.len() - 1;
        self.by_id.insert(id, ci);
        ci
    }
}

const LINES: &[&str] = &[
    "Hi! Is this still available?",
    "What are your opening hours?",
    "Thanks for reaching out, we'll get back to you shortly.",
    "Can I book for Saturday?",
    "Yes, see you then.",
];

pub struct FacebookSim {
    h: Harness,
    pages: Vec<RwLock<Page>>,
    rate: SlidingWindow,
    expired: RwLock<HashSet<usize>>,
    rng: Mutex<ChaCha8Rng>,
    webhook: Arc<webhook::WebhookSender>,
}

/// One Page's BUC window as `GET /_sim/quota` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BucWindow {
    pub account: String,
    /// Calls counted in the current window (0 when no window is open).
    pub used: u64,
    /// `daily_quota`; None = unlimited.
    pub budget: Option<u64>,
    /// When the current window ends and the count clears; None when no window is open.
    pub window_end: Option<DateTime<Utc>>,
}

fn graph_time(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S+0000").to_string())
        .unwrap_or_default()
}

/// A time as the API shows it: `graph_time` prints whole seconds only.
fn api_time(ms: i64) -> DateTime<Utc> {
    utc_ms(ms.div_euclid(1000) * 1000)
}

/// Graph error body, always with HTTP 400 as Graph does for OAuthException.
fn graph_error(code: u32, subcode: Option<u32>, message: &str, transient: bool) -> Response {
    let mut e = json!({
        "message": message, "type": "OAuthException", "code": code,
        "is_transient": transient, "fbtrace_id": "AsimTraceId000",
    });
    if let Some(s) = subcode {
        e["error_subcode"] = json!(s);
    }
    json(StatusCode::BAD_REQUEST, &json!({ "error": e }))
}

fn bad_field(name: &str, node: &str) -> Response {
    graph_error(
        100,
        None,
        &format!("(#100) Tried accessing nonexisting field ({name}) on node type ({node})"),
        false,
    )
}

fn no_object(id: &str) -> Response {
    graph_error(
        100,
        Some(33),
        &format!("Unsupported get request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation."),
        false,
    )
}

const CONV_FIELDS: &[&str] = &[
    "id",
    "updated_time",
    "message_count",
    "unread_count",
    "snippet",
    "participants",
    "senders",
    "can_reply",
    "link",
    "name",
    "subject",
    "is_subscribed",
    "former_participants",
    "scoped_thread_key",
    "wallpaper",
    "messages",
];
const MSG_FIELDS: &[&str] = &[
    "id",
    "created_time",
    "from",
    "to",
    "message",
    "attachments",
    "sticker",
    "tags",
    "shares",
];

fn check_fields(fields: &[Field], allowed: &[&str], node: &str) -> Result<(), Response> {
    for f in fields {
        if !allowed.contains(&f.name.as_str()) {
            return Err(bad_field(&f.name, node));
        }
        if f.name == "messages" {
            check_fields(f.sub.as_deref().unwrap_or(&[]), MSG_FIELDS, "Message")?;
        }
    }
    Ok(())
}

fn fields_param(q: &Query, default: &str) -> Result<Vec<Field>, Response> {
    let raw = q.get(&["fields"]).unwrap_or(default);
    parse_fields(raw).map_err(|e| {
        graph_error(
            100,
            None,
            &format!("(#100) Syntax error in fields: {e}"),
            false,
        )
    })
}

fn limit_param(q: &Query, default: usize) -> Result<usize, Response> {
    match q.get(&["limit"]) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n.min(100)),
            _ => Err(graph_error(
                100,
                None,
                "(#100) Param limit must be a positive integer",
                false,
            )),
        },
    }
}

fn cursor(id: &str) -> String {
    b64_encode(format!("sim:{id}").as_bytes())
}

fn decode_cursor(c: &str) -> Option<String> {
    let raw = String::from_utf8(b64_decode(c)?).ok()?;
    raw.strip_prefix("sim:").map(str::to_string)
}

fn invalid_cursor() -> Response {
    graph_error(
        100,
        None,
        "(#100) The cursor is invalid: the item it points to was deleted or removed. Restart pagination from the first page.",
        false,
    )
}

/// A window over an ordered list of ids addressed by cursors.
struct Window {
    start: usize,
    end: usize,
}

/// Resolve after/before cursors against the current order.
fn window(ids: &[&str], q: &Query, limit: usize) -> Result<Window, Response> {
    if let Some(a) = q.get(&["after"]) {
        let id = decode_cursor(a).ok_or_else(invalid_cursor)?;
        let p = ids
            .iter()
            .position(|x| *x == id)
            .ok_or_else(invalid_cursor)?;
        let start = p + 1;
        return Ok(Window {
            start,
            end: (start + limit).min(ids.len()),
        });
    }
    if let Some(b) = q.get(&["before"]) {
        let id = decode_cursor(b).ok_or_else(invalid_cursor)?;
        let p = ids
            .iter()
            .position(|x| *x == id)
            .ok_or_else(invalid_cursor)?;
        return Ok(Window {
            start: p.saturating_sub(limit),
            end: p,
        });
    }
    Ok(Window {
        start: 0,
        end: limit.min(ids.len()),
    })
}

fn paging(
    headers: &HeaderMap,
    path: &str,
    q: &Query,
    ids: &[&str],
    w: &Window,
    limit: usize,
) -> Value {
    if w.start >= w.end {
        return Value::Null;
    }
    let base = q.encode_without(&["after", "before", "limit"]);
    let sep = if base.is_empty() { "" } else { "&" };
    let url = |k: &str, c: &str| {
        format!(
            "http://{}{path}?{base}{sep}limit={limit}&{k}={c}",
            host(headers)
        )
    };
    let (first, last) = (cursor(ids[w.start]), cursor(ids[w.end - 1]));
    let mut p = json!({"cursors": {"before": first, "after": last}});
    if w.end < ids.len() {
        p["next"] = json!(url("after", &last));
    }
    if w.start > 0 {
        p["previous"] = json!(url("before", &first));
    }
    p
}

impl FacebookSim {
    pub fn build(config: SimConfig) -> anyhow::Result<Arc<dyn SimProvider>> {
        Ok(Self::new(config))
    }

    pub fn new(config: SimConfig) -> Arc<Self> {
        let g = Gen {
            drop_rate: config.drop_rate,
            instagram_share: config.instagram_share,
            seed: config.seed,
        };
        let mut pages = Vec::new();
        for i in 0..config.accounts {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(config.seed, 0xFB00 + i as u64));
            let mut p = Page {
                name: format!("acct-{i}"),
                convs: Vec::new(),
                by_id: HashMap::new(),
                msg_index: HashMap::new(),
                order: Vec::new(),
                deleted_ids: Vec::new(),
                next_id: 0,
                acct_no: i,
                buc: (0, 0),
            };
            for _ in 0..config.threads {
                let ci = p.add_conv(&mut rng, g, None);
                let n = {
                    let u: f64 = rng.gen_range(f64::EPSILON..1.0);
                    ((-u.ln() * config.messages.max(1) as f64).round() as usize).max(1)
                };
                let mut at = ANCHOR_MS - rng.gen_range(DAY_MS..200 * DAY_MS);
                for k in 0..n {
                    let inbound = k == 0 || rng.gen_bool(0.55);
                    let text = LINES[rng.gen_range(0..LINES.len())].to_string();
                    p.add_message(ci, inbound, at, text);
                    at += rng.gen_range(60_000..12 * 3_600_000);
                }
                p.convs[ci].unread = rng.gen_range(0..2);
            }
            p.order = (0..p.convs.len()).collect();
            p.resort();
            pages.push(RwLock::new(p));
        }
        let rng = ChaCha8Rng::seed_from_u64(mix(config.seed, 0xFBFB));
        let webhook = Arc::new(webhook::WebhookSender::new(config.seed));
        Arc::new(Self {
            h: Harness::new(config),
            pages,
            rate: SlidingWindow::new(Duration::from_secs(1)),
            expired: RwLock::default(),
            rng: Mutex::new(rng),
            webhook,
        })
    }

    /// The webhook sender; `run` it in a task to post deliveries.
    pub fn webhook(&self) -> &Arc<webhook::WebhookSender> {
        &self.webhook
    }

    fn gen(&self) -> Gen {
        let c = &self.h.config;
        Gen {
            drop_rate: c.drop_rate,
            instagram_share: c.instagram_share,
            seed: c.seed,
        }
    }

    /// BUC windows of every Page, without opening or rolling any.
    pub fn buc_windows(&self) -> Vec<BucWindow> {
        let now = self.h.clock.now_ms();
        let budget = self.h.limits().daily_quota;
        self.pages
            .iter()
            .filter_map(|p| p.read().ok())
            .map(|p| {
                let open = now - p.buc.0 < DAY_MS;
                BucWindow {
                    account: p.name.clone(),
                    used: if open { p.buc.1 } else { 0 },
                    budget,
                    window_end: open.then(|| utc_ms(p.buc.0 + DAY_MS)),
                }
            })
            .collect()
    }

    /// Set the calls already used in `account`'s BUC window, opening a window now if none
    /// is open (as the next call would).
    pub fn set_buc_used(&self, account: &str, used: u64) -> Result<(), String> {
        let i = self
            .account_index(account)
            .ok_or_else(|| format!("unknown account {account}"))?;
        let now = self.h.clock.now_ms();
        let mut p = self.pages[i].write().map_err(|_| "store poisoned")?;
        if now - p.buc.0 >= DAY_MS {
            p.buc.0 = now;
        }
        p.buc.1 = used;
        Ok(())
    }

    fn account_index(&self, name: &str) -> Option<usize> {
        let i: usize = name.strip_prefix("acct-")?.parse().ok()?;
        (i < self.pages.len()).then_some(i)
    }

    fn token_of<'a>(headers: &'a HeaderMap, q: &'a Query) -> Option<&'a str> {
        q.get(&["access_token"]).or_else(|| bearer(headers))
    }

    /// Token check (190), per-Page 2 calls/s (613) and daily BUC budget (80006).
    fn admit(&self, headers: &HeaderMap, q: &Query) -> Result<(usize, Option<String>), Response> {
        let Some(token) = Self::token_of(headers, q) else {
            return Err(graph_error(
                104,
                None,
                "An access token is required to request this resource.",
                false,
            ));
        };
        let Some(i) = token
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|n| self.account_index(n))
        else {
            return Err(graph_error(
                190,
                None,
                "Invalid OAuth access token - Cannot parse access token",
                false,
            ));
        };
        if self.expired.read().map(|e| e.contains(&i)).unwrap_or(false) {
            return Err(graph_error(
                190,
                Some(463),
                "Error validating access token: Session has expired.",
                false,
            ));
        }
        let limits = self.h.limits();
        let rps = limits.rps_limit.unwrap_or(2.0);
        let name = format!("acct-{i}");
        if self.rate.try_acquire(&name, rps).is_err() {
            let mut r = graph_error(
                613,
                None,
                "(#613) Calls to this api have exceeded the rate limit.",
                true,
            );
            let usage = json!({ name: [{"type": "messenger", "call_count": 100, "total_cputime": 10,
                                        "total_time": 10, "estimated_time_to_regain_access": 1}] });
            if let Ok(v) = HeaderValue::from_str(&usage.to_string()) {
                r.headers_mut().insert("x-business-use-case-usage", v);
            }
            return Err(r);
        }
        let now = self.h.clock.now_ms();
        let Ok(mut p) = self.pages[i].write() else {
            return Ok((i, None));
        };
        if now - p.buc.0 >= DAY_MS {
            p.buc = (now, 0);
        }
        let Some(budget) = limits.daily_quota else {
            return Ok((i, None));
        };
        let regain_min = ((p.buc.0 + DAY_MS - now) as f64 / 60_000.0).ceil() as i64;
        let header = |pct: u64, regain: i64| {
            json!({ name.clone(): [{"type": "messenger", "call_count": pct, "total_cputime": pct / 2,
                                    "total_time": pct / 2, "estimated_time_to_regain_access": regain}] })
            .to_string()
        };
        if p.buc.1 >= budget {
            let mut r = graph_error(
                80006,
                None,
                "(#80006) There have been too many messenger api calls to this Page account. Wait a while before retrying.",
                true,
            );
            if let Ok(v) = HeaderValue::from_str(&header(100, regain_min)) {
                r.headers_mut().insert("x-business-use-case-usage", v);
            }
            return Err(r);
        }
        p.buc.1 += 1;
        let pct = p.buc.1 * 100 / budget.max(1);
        // Meta only sends usage headers once usage is noticeable.
        Ok((i, (pct >= 10).then(|| header(pct, 0))))
    }

    /// (user, page) as participants and message parties show them: Instagram parties carry
    /// `username` instead of `name`/`email`.
    fn parties(p: &Page, c: &Conv) -> (Value, Value) {
        match c.platform {
            Platform::Messenger => (
                json!({"id": c.user_id, "name": c.user_name, "email": format!("{}@facebook.com", c.user_id)}),
                json!({"id": p.name, "name": format!("Page {}", p.name), "email": format!("{}@facebook.com", p.name)}),
            ),
            Platform::Instagram => (
                json!({"username": c.user_name, "id": c.user_id}),
                json!({"username": format!("page_{}", p.name.replace('-', "_")), "id": p.name}),
            ),
        }
    }

    fn conv_json(
        &self,
        p: &Page,
        c: &Conv,
        fields: &[Field],
        headers: &HeaderMap,
        version: &str,
    ) -> Value {
        let mut o = Map::new();
        let (user_party, page_party) = Self::parties(p, c);
        for f in fields {
            let v = match f.name.as_str() {
                "id" => json!(c.id),
                "updated_time" if c.poisoned => json!("not-a-time"),
                "updated_time" => json!(graph_time(c.updated_ms())),
                "message_count" => json!(c.messages.len()),
                "unread_count" => json!(c.unread),
                "snippet" => json!(c.messages.last().map(|m| m.text.clone())),
                "participants" => json!({"data": [user_party, page_party]}),
                "senders" => json!({"data": [user_party, page_party]}),
                "can_reply" => json!(true),
                "is_subscribed" => json!(true),
                "link" => json!(format!("/{}/inbox/{}", p.name, c.id)),
                "name" | "subject" => Value::Null,
                "former_participants" => json!({"data": []}),
                "scoped_thread_key" => json!(format!("t_{}", c.user_id)),
                "wallpaper" => Value::Null,
                "messages" => {
                    let sub = f.sub.clone().unwrap_or_else(|| {
                        vec![
                            Field {
                                name: "id".into(),
                                limit: None,
                                sub: None,
                            },
                            Field {
                                name: "created_time".into(),
                                limit: None,
                                sub: None,
                            },
                        ]
                    });
                    let limit = f.limit.unwrap_or(25);
                    let ids: Vec<&str> = c.messages.iter().rev().map(|m| m.id.as_str()).collect();
                    let w = Window {
                        start: 0,
                        end: limit.min(ids.len()),
                    };
                    let data: Vec<Value> = c
                        .messages
                        .iter()
                        .rev()
                        .take(limit)
                        .map(|m| self.msg_json(p, c, m, &sub))
                        .collect();
                    let mut v = json!({"data": data});
                    let paging = paging(
                        headers,
                        &format!("/{version}/{}/messages", c.id),
                        &Query::default(),
                        &ids,
                        &w,
                        limit,
                    );
                    if !paging.is_null() {
                        v["paging"] = paging;
                    }
                    v
                }
                _ => continue,
            };
            if !v.is_null() {
                o.insert(f.name.clone(), v);
            }
        }
        Value::Object(o)
    }

    fn msg_json(&self, p: &Page, c: &Conv, m: &FbMessage, fields: &[Field]) -> Value {
        let (user_party, page_party) = Self::parties(p, c);
        let (from, to) = if m.inbound {
            (user_party, page_party)
        } else {
            (page_party, user_party)
        };
        let mut o = Map::new();
        for f in fields {
            let v = match f.name.as_str() {
                "id" => json!(m.id),
                "created_time" => json!(graph_time(m.created_ms)),
                "from" => from.clone(),
                "to" => json!({"data": [to.clone()]}),
                "message" => json!(m.text),
                "attachments" | "sticker" | "tags" | "shares" => continue,
                _ => continue,
            };
            o.insert(f.name.clone(), v);
        }
        Value::Object(o)
    }

    /// One webhook delivery per added message of a visible conversation: a privacy-filtered
    /// conversation is one the API never shows, so no event reveals it either.
    fn queue_webhooks(&self, p: &Page, added: &[(usize, usize)], now: i64) {
        if !self.webhook.is_active() {
            return;
        }
        for &(ci, mi) in added {
            let c = &p.convs[ci];
            let Some(m) = c.messages.get(mi).filter(|_| !c.filtered) else {
                continue;
            };
            let event = webhook::Event {
                object: match c.platform {
                    Platform::Messenger => "page",
                    Platform::Instagram => "instagram",
                },
                page_id: &p.name,
                user_id: &c.user_id,
                inbound: m.inbound,
                mid: &m.id,
                text: &m.text,
                timestamp_ms: m.created_ms,
                time_ms: now,
            };
            self.webhook.enqueue(event.body());
        }
    }

    fn expected_of(p: &Page) -> Expected {
        let threads = p
            .order
            .iter()
            .map(|ci| &p.convs[*ci])
            .filter(|c| !c.deleted && !c.filtered)
            .map(|c| {
                // `user_name` is the display name on Messenger, the username on Instagram.
                let reference_type = match c.platform {
                    Platform::Messenger => "psid",
                    Platform::Instagram => "igsid",
                };
                let messages = c
                    .messages
                    .iter()
                    .map(|m| {
                        let (from, to) = if m.inbound {
                            (&c.user_id, &p.name)
                        } else {
                            (&p.name, &c.user_id)
                        };
                        ExpectedMessage {
                            message_id: m.id.clone(),
                            sender: Some(from.clone()),
                            recipient: Some(to.clone()),
                            subject: None,
                            body: Some(m.text.clone()),
                            is_read: None,
                            sent_at: api_time(m.created_ms),
                            media: None,
                            status: None,
                        }
                    })
                    .collect();
                ExpectedThread {
                    thread_id: c.id.clone(),
                    conversation_type: Some(c.platform.as_str().to_string()),
                    title: Some(c.user_name.clone()),
                    status: None,
                    reference_id: Some(c.user_id.clone()),
                    reference_type: Some(reference_type.to_string()),
                    unread_count: i32::try_from(c.unread).unwrap_or(i32::MAX),
                    latest_message_id: c.messages.last().map(|m| m.id.clone()),
                    latest_message_at: c.messages.last().map(|m| api_time(m.created_ms)),
                    // Graph has no creation time for conversations.
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
    #[serde(default)]
    thread_ids: Vec<String>,
    #[serde(default)]
    delete_ids: Vec<String>,
    direction: Option<String>,
    /// Serve this many live, visible conversations with an undecodable `updated_time`.
    #[serde(default)]
    poison_threads: usize,
    /// Platform of the new threads; default: drawn from `instagram_share`.
    platform: Option<String>,
    /// Text of the new messages and threads; default: a stock line.
    text: Option<String>,
}

fn acct0() -> String {
    "acct-0".into()
}

impl SimProvider for FacebookSim {
    fn harness(&self) -> &Harness {
        &self.h
    }

    fn identify(&self, parts: &Parts) -> Option<String> {
        let q = Query::parse(parts.uri.query());
        let t = Self::token_of(&parts.headers, &q)?;
        let i = self.account_index(t.strip_prefix(TOKEN_PREFIX)?)?;
        Some(format!("acct-{i}"))
    }

    fn error_5xx(&self) -> Response {
        let mut r = graph_error(
            2,
            None,
            "An unexpected error has occurred. Please retry your request later.",
            true,
        );
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    }

    fn burst_429(&self) -> Response {
        graph_error(
            613,
            None,
            "(#613) Calls to this api have exceeded the rate limit.",
            true,
        )
    }

    fn accounts(&self) -> Vec<String> {
        (0..self.pages.len()).map(|i| format!("acct-{i}")).collect()
    }

    fn token(&self, account: &str) -> String {
        format!("{TOKEN_PREFIX}{account}")
    }

    /// Every live conversation the API shows, of both platforms; `since` is ignored, as
    /// Graph has no time filter and a first sync reads every conversation whole.
    fn expected(
        &self,
        account: &str,
        _since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Expected, String> {
        let i = self
            .account_index(account)
            .ok_or_else(|| format!("unknown account {account}"))?;
        let p = self.pages[i].read().map_err(|_| "store poisoned")?;
        Ok(Self::expected_of(&p))
    }

    fn truth(&self, account: Option<&str>) -> Value {
        let pages: Vec<Value> = self
            .pages
            .iter()
            .filter_map(|p| p.read().ok())
            .filter(|p| account.is_none_or(|a| a == p.name))
            .map(|p| {
                let convs: Vec<Value> = p
                    .order
                    .iter()
                    .map(|ci| &p.convs[*ci])
                    .map(|c| {
                        let msgs: Vec<Value> = c
                            .messages
                            .iter()
                            .map(|m| json!({"id": m.id, "created_time": graph_time(m.created_ms),
                                            "message": m.text, "direction": if m.inbound {"inbound"} else {"outbound"}}))
                            .collect();
                        json!({"id": c.id, "platform": c.platform.as_str(), "updated_time": graph_time(c.updated_ms()),
                               "user_id": c.user_id, "user_name": c.user_name, "unread_count": c.unread,
                               "privacy_filtered": c.filtered, "poisoned": c.poisoned, "messages": msgs})
                    })
                    .collect();
                json!({"account": p.name, "page_id": p.name, "conversations": convs, "deleted_ids": p.deleted_ids})
            })
            .collect();
        json!({"provider": "facebook", "accounts": pages})
    }

    fn mutate(&self, body: &Value) -> Result<Value, String> {
        let req: MutateBody = serde_json::from_value(body.clone())
            .map_err(|e| format!("invalid mutate body: {e}"))?;
        let i = self
            .account_index(&req.account)
            .ok_or_else(|| format!("unknown account {}", req.account))?;
        let platform = match req.platform.as_deref() {
            None => None,
            Some(s) => Some(
                Platform::parse(s)
                    .ok_or_else(|| format!("platform must be messenger|instagram, got {s}"))?,
            ),
        };
        let inbound = req.direction.as_deref() != Some("outbound");
        let now = self.h.clock.now_ms();
        let g = self.gen();
        let mut p = self.pages[i].write().map_err(|_| "store poisoned")?;
        let targets: Vec<usize> = req
            .thread_ids
            .iter()
            .map(|id| {
                p.by_id
                    .get(id)
                    .copied()
                    .filter(|ci| !p.convs[*ci].deleted)
                    .ok_or_else(|| format!("unknown thread {id}"))
            })
            .collect::<Result<_, _>>()?;
        let mut new_messages = Vec::new();
        let mut new_threads = Vec::new();
        let mut deleted = Vec::new();
        let mut poisoned = Vec::new();
        // (conversation, message) of every message added, for the webhook.
        let mut added = Vec::new();
        self.with_rng(|r| {
            for n in 0..req.new_messages {
                if p.order.is_empty() {
                    break;
                }
                let ci = if targets.is_empty() {
                    p.order[r.gen_range(0..p.order.len())]
                } else {
                    targets[n % targets.len()]
                };
                let line = LINES[r.gen_range(0..LINES.len())];
                let text = req.text.clone().unwrap_or_else(|| line.to_string());
                let mid = p.add_message(ci, inbound, now, text);
                added.push((ci, p.convs[ci].messages.len() - 1));
                new_messages.push(json!({"conversation_id": p.convs[ci].id, "message_id": mid}));
            }
            for _ in 0..req.new_threads {
                let ci = p.add_conv(r, g, platform);
                let text = req.text.clone().unwrap_or_else(|| LINES[0].to_string());
                let mid = p.add_message(ci, true, now, text);
                p.order.push(ci);
                added.push((ci, 0));
                new_threads.push(json!({"conversation_id": p.convs[ci].id, "message_id": mid,
                                        "platform": p.convs[ci].platform.as_str()}));
            }
            let mut victims: Vec<usize> = req
                .delete_ids
                .iter()
                .filter_map(|id| p.by_id.get(id).copied())
                .collect();
            for _ in 0..req.delete_threads {
                if !p.order.is_empty() {
                    victims.push(p.order[r.gen_range(0..p.order.len())]);
                }
            }
            for ci in victims {
                if !p.convs[ci].deleted {
                    p.convs[ci].deleted = true;
                    p.order.retain(|x| *x != ci);
                    let id = p.convs[ci].id.clone();
                    p.deleted_ids.push(id.clone());
                    deleted.push(id);
                }
            }
            for _ in 0..req.poison_threads {
                let pool: Vec<usize> = p
                    .order
                    .iter()
                    .copied()
                    .filter(|ci| !p.convs[*ci].filtered && !p.convs[*ci].poisoned)
                    .collect();
                if pool.is_empty() {
                    break;
                }
                let ci = pool[r.gen_range(0..pool.len())];
                p.convs[ci].poisoned = true;
                poisoned.push(p.convs[ci].id.clone());
            }
        });
        p.resort();
        self.queue_webhooks(&p, &added, now);
        Ok(
            json!({"account": p.name, "new_messages": new_messages, "new_threads": new_threads,
                  "deleted_ids": deleted, "poisoned_thread_ids": poisoned}),
        )
    }

    fn background_step(&self) {
        if self.pages.is_empty() {
            return;
        }
        let (i, new_thread, inbound) = self.with_rng(|r| {
            (
                r.gen_range(0..self.pages.len()),
                r.gen_bool(0.1),
                r.gen_bool(0.6),
            )
        });
        let _ = self.mutate(&json!({"account": format!("acct-{i}"), "new_messages": usize::from(!new_thread),
            "new_threads": usize::from(new_thread), "direction": if inbound {"inbound"} else {"outbound"}}));
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
            .route(
                "/{version}/{node}/conversations",
                get(routes::conversations),
            )
            .route("/{version}/{node}/messages", get(routes::messages))
            .route("/{version}/{node}", get(routes::node))
            .with_state(self)
    }

    fn control_routes(self: Arc<Self>) -> Router {
        control::routes(self)
    }
}
