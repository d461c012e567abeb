//! eBay Commerce Message API simulator (`/commerce/message/v1`), plus the
//! OAuth token endpoint and the Developer Analytics rate-limit endpoint.
//!
//! Accounts are identified by bearer token: `sim-ebay-acct-<i>` is the static,
//! never-expiring token of `acct-<i>`; `POST /identity/v1/oauth2/token` mints
//! tokens that expire after `token_ttl_secs` of simulated time.

pub mod data;
mod render;
mod routes;

use super::clock::next_utc_midnight;
use super::expected::{utc_ms, Expected, ExpectedMessage, ExpectedThread};
use super::faults::mix;
use super::http::json;
use super::stats::SlidingWindow;
use super::{Harness, SimConfig, SimProvider};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Router;
use data::{AccountData, ConvType};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub const TOKEN_PREFIX: &str = "sim-ebay-";
pub const REFRESH_PREFIX: &str = "sim-ebay-refresh-";
pub const NOSCOPE_PREFIX: &str = "sim-ebay-noscope-";

#[derive(Clone, Debug)]
pub struct Quota {
    pub used: u64,
    pub reset_at_ms: i64,
}

pub struct EbaySim {
    pub(crate) h: Harness,
    pub(crate) accounts: Vec<RwLock<AccountData>>,
    pub(crate) quotas: Mutex<Vec<Quota>>,
    pub(crate) rps: SlidingWindow,
    /// Minted token -> (account index, expiry in simulated epoch ms).
    pub(crate) minted: RwLock<HashMap<String, (usize, i64)>>,
    pub(crate) expired_static: RwLock<HashSet<usize>>,
    pub(crate) rng: Mutex<ChaCha8Rng>,
}

/// One error of eBay's `{"errors":[...]}` envelope.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EbayError {
    pub error_id: u32,
    pub domain: &'static str,
    pub category: &'static str,
    pub message: String,
    pub long_message: String,
    pub parameters: Vec<ErrorParam>,
}

#[derive(Serialize)]
pub struct ErrorParam {
    pub name: String,
    pub value: String,
}

pub fn error_response(status: StatusCode, err: EbayError) -> Response {
    json(status, &json!({ "errors": [err] }))
}

/// 400 with the simulator's Message-API error ids (eBay's real ids are unpublished).
pub fn bad_param(error_id: u32, param: &str, value: &str, message: &str) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        EbayError {
            error_id,
            domain: "API_MESSAGE",
            category: "REQUEST",
            message: message.to_string(),
            long_message: format!("{message} (parameter '{param}')"),
            parameters: vec![ErrorParam {
                name: param.to_string(),
                value: value.to_string(),
            }],
        },
    )
}

pub fn too_many_requests() -> Response {
    error_response(
        StatusCode::TOO_MANY_REQUESTS,
        EbayError {
            error_id: 2001,
            domain: "ACCESS",
            category: "REQUEST",
            message: "Too many requests.".into(),
            long_message: "The request limit has been reached for the resource.".into(),
            parameters: vec![],
        },
    )
}

pub fn invalid_token() -> Response {
    error_response(
        StatusCode::UNAUTHORIZED,
        EbayError {
            error_id: 1001,
            domain: "OAuth",
            category: "REQUEST",
            message: "Invalid access token".into(),
            long_message:
                "Invalid access token. Check the value of the Authorization HTTP request header."
                    .into(),
            parameters: vec![],
        },
    )
}

pub fn insufficient_scope() -> Response {
    error_response(
        StatusCode::FORBIDDEN,
        EbayError {
            error_id: 1100,
            domain: "ACCESS",
            category: "REQUEST",
            message: "Access denied".into(),
            long_message: "Insufficient permissions to fulfill the request.".into(),
            parameters: vec![],
        },
    )
}

impl EbaySim {
    pub fn build(config: SimConfig) -> anyhow::Result<Arc<dyn SimProvider>> {
        Ok(Arc::new(Self::new(config)))
    }

    pub fn new(config: SimConfig) -> Self {
        let accounts: Vec<RwLock<AccountData>> = (0..config.accounts)
            .map(|i| {
                RwLock::new(AccountData::generate(
                    config.seed,
                    i,
                    config
                        .threads_by_account
                        .get(i)
                        .copied()
                        .unwrap_or(config.threads),
                    config.messages,
                    data::DataOptions {
                        user_ids: config.ebay_user_ids,
                        second_resolution: config.second_resolution,
                    },
                ))
            })
            .collect();
        let h = Harness::new(config);
        let reset = h
            .config
            .quota_reset_at_ms
            .unwrap_or_else(|| next_utc_midnight(h.clock.now_ms()));
        let quotas = vec![
            Quota {
                used: 0,
                reset_at_ms: reset
            };
            accounts.len()
        ];
        let rng = ChaCha8Rng::seed_from_u64(mix(h.config.seed, 0xEBA1));
        Self {
            h,
            accounts,
            quotas: Mutex::new(quotas),
            rps: SlidingWindow::new(Duration::from_secs(1)),
            minted: RwLock::default(),
            expired_static: RwLock::default(),
            rng: Mutex::new(rng),
        }
    }

    fn account_index(&self, name: &str) -> Option<usize> {
        let i: usize = name.strip_prefix("acct-")?.parse().ok()?;
        (i < self.accounts.len()).then_some(i)
    }

    /// Account of a token, if the token is known (valid or not).
    fn token_owner(&self, token: &str) -> Option<(usize, bool)> {
        if let Some(name) = token.strip_prefix(TOKEN_PREFIX) {
            if let Some(i) = self.account_index(name) {
                let expired = self
                    .expired_static
                    .read()
                    .map(|s| s.contains(&i))
                    .unwrap_or(false);
                return Some((i, !expired));
            }
        }
        let minted = self.minted.read().ok()?;
        let (i, exp) = minted.get(token)?;
        Some((*i, self.h.clock.now_ms() < *exp))
    }

    /// Quota state after applying any due reset.
    pub(crate) fn quota_state(&self, i: usize) -> Quota {
        let now = self.h.clock.now_ms();
        let Ok(mut q) = self.quotas.lock() else {
            return Quota {
                used: 0,
                reset_at_ms: now,
            };
        };
        let Some(entry) = q.get_mut(i) else {
            return Quota {
                used: 0,
                reset_at_ms: now,
            };
        };
        roll_quota(entry, now);
        entry.clone()
    }

    /// Charge one message-API call, or refuse it with 429 2001.
    fn charge(&self, i: usize) -> Result<(), Response> {
        let limits = self.h.limits();
        if let Some(rps) = limits.rps_limit {
            let name = format!("acct-{i}");
            if self.rps.try_acquire(&name, rps).is_err() {
                return Err(too_many_requests());
            }
        }
        let now = self.h.clock.now_ms();
        let Ok(mut q) = self.quotas.lock() else {
            return Ok(());
        };
        if let Some(entry) = q.get_mut(i) {
            roll_quota(entry, now);
            if let Some(limit) = limits.daily_quota {
                if entry.used >= limit {
                    return Err(too_many_requests());
                }
            }
            entry.used += 1;
        }
        Ok(())
    }

    /// Authenticate and charge a message-API call.
    pub(crate) fn admit(&self, headers: &axum::http::HeaderMap) -> Result<usize, Response> {
        let i = self.authenticate(headers)?;
        self.charge(i)?;
        Ok(i)
    }

    pub(crate) fn authenticate(&self, headers: &axum::http::HeaderMap) -> Result<usize, Response> {
        let token = super::http::bearer(headers);
        // `sim-ebay-noscope-acct-N`: a valid user token without the
        // commerce.message scope.
        if let Some(name) = token.and_then(|t| t.strip_prefix(NOSCOPE_PREFIX)) {
            if self.account_index(name).is_some() {
                return Err(insufficient_scope());
            }
        }
        match token.and_then(|t| self.token_owner(t)) {
            Some((i, true)) => Ok(i),
            _ => Err(invalid_token()),
        }
    }

    fn with_rng<T>(&self, f: impl FnOnce(&mut ChaCha8Rng) -> T) -> T {
        match self.rng.lock() {
            Ok(mut r) => f(&mut r),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    fn truth_of(&self, a: &AccountData) -> Value {
        let threads: Vec<Value> = a
            .threads
            .iter()
            .filter(|t| !t.deleted)
            .map(|t| {
                let messages: Vec<Value> = t
                    .messages
                    .iter()
                    .map(|m| {
                        let (s, r) = a.parties(t, m);
                        json!({
                            "messageId": m.id, "createdDate": m.created,
                            "senderUsername": s, "recipientUsername": r,
                            "subject": m.subject, "messageBody": m.body,
                            "readStatus": m.read, "messageMedia": m.media,
                            "direction": if m.inbound { "inbound" } else { "outbound" },
                        })
                    })
                    .collect();
                json!({
                    "conversationId": t.id,
                    "conversationType": t.ctype.as_str(),
                    "conversationStatus": t.status,
                    "conversationTitle": t.title,
                    "createdDate": t.created,
                    "referenceId": t.reference_id,
                    "referenceType": t.reference_id.as_ref().map(|_| "LISTING"),
                    "unreadCount": t.unread,
                    "latestMessageId": t.latest().map(|m| m.id.as_str()),
                    "latestMessageDate": t.latest().map(|m| m.created.as_str()),
                    "messages": messages,
                })
            })
            .collect();
        json!({
            "account": a.name,
            "threadCount": threads.len(),
            "messageCount": a.threads.iter().filter(|t| !t.deleted).map(|t| t.messages.len()).sum::<usize>(),
            "threads": threads,
            "deletedThreadIds": a.deleted_ids,
        })
    }

    /// The rows a synced copy holds: every live thread the default conversation list shows
    /// (deleted threads and threads in eBay's trash, status DELETE, are not listed), with
    /// its list fields, and all of its messages as the detail shows them.
    fn expected_of(a: &AccountData) -> Expected {
        let threads = a
            .threads
            .iter()
            .filter(|t| !t.deleted && t.status != data::ConvStatus::Delete)
            .map(|t| {
                let messages = t
                    .messages
                    .iter()
                    .map(|m| {
                        let (sender, recipient) = a.parties(t, m);
                        ExpectedMessage {
                            message_id: m.id.clone(),
                            sender: Some(sender.to_string()),
                            recipient: Some(recipient.to_string()),
                            subject: Some(m.subject.clone()),
                            body: Some(m.body.clone()),
                            is_read: Some(m.read),
                            sent_at: utc_ms(m.created_ms),
                            // The detail omits `messageMedia` when a message has none.
                            media: (!m.media.is_empty())
                                .then(|| serde_json::to_value(&m.media).ok())
                                .flatten(),
                            status: None,
                        }
                    })
                    .collect();
                ExpectedThread {
                    thread_id: t.id.clone(),
                    conversation_type: Some(t.ctype.as_str().to_string()),
                    title: Some(t.title.clone()),
                    status: Some(t.status.as_str().to_string()),
                    reference_id: t.reference_id.clone(),
                    reference_type: t.reference_id.as_ref().map(|_| "LISTING".to_string()),
                    unread_count: i32::try_from(t.unread).unwrap_or(i32::MAX),
                    latest_message_id: t.latest().map(|m| m.id.clone()),
                    latest_message_at: t.latest().map(|m| utc_ms(m.created_ms)),
                    created_at: chrono::DateTime::parse_from_rfc3339(&t.created)
                        .ok()
                        .map(|d| d.with_timezone(&chrono::Utc)),
                    messages,
                }
            })
            .collect();
        Expected { threads }
    }

    fn mutate_account(&self, i: usize, req: &MutateRequest) -> Result<Value, String> {
        let now = self.h.clock.now_ms();
        let Ok(mut a) = self.accounts[i].write() else {
            return Err("account store poisoned".into());
        };
        let inbound = match req.direction.as_deref() {
            None | Some("inbound") => Some(true),
            Some("outbound") => Some(false),
            Some("mixed") => None,
            Some(other) => {
                return Err(format!(
                    "direction must be inbound|outbound|mixed, got {other}"
                ))
            }
        };
        // Offsets refer to the unfiltered FROM_MEMBERS list as it is now.
        let at_offset = |offs: &[usize]| -> Result<Vec<usize>, String> {
            let order = &a.order[ConvType::FromMembers.slot()];
            offs.iter()
                .map(|o| {
                    order
                        .get(*o)
                        .copied()
                        .ok_or(format!("no thread at offset {o}"))
                })
                .collect()
        };
        let bump_at = at_offset(&req.bump_offsets)?;
        let delete_at = at_offset(&req.delete_offsets)?;
        let mut status_changes = Vec::new();
        for (id, st) in &req.set_status {
            let idx = a
                .live(id)
                .ok_or_else(|| format!("unknown or deleted thread {id}"))?;
            let parsed = match st.as_str() {
                "READ" | "UNREAD" => None,
                other => Some(
                    data::ConvStatus::parse(other)
                        .ok_or_else(|| format!("invalid status {other}"))?,
                ),
            };
            status_changes.push((idx, st.clone(), parsed));
        }
        for (idx, st, parsed) in &status_changes {
            match parsed {
                Some(s) => a.set_status(*idx, *s),
                None => a.set_read(*idx, st == "READ"),
            }
        }
        let status_changed: Vec<&str> = req.set_status.keys().map(String::as_str).collect();
        let targets: Vec<usize> = req
            .thread_ids
            .iter()
            .map(|id| {
                a.live(id)
                    .ok_or_else(|| format!("unknown or deleted thread {id}"))
            })
            .collect::<Result<_, _>>()?;
        let mut new_messages = Vec::new();
        self.with_rng(|rng| {
            for n in 0..req.new_messages {
                let idx = if targets.is_empty() {
                    let members = &a.order[ConvType::FromMembers.slot()];
                    if members.is_empty() {
                        return;
                    }
                    members[rng.gen_range(0..members.len())]
                } else {
                    targets[n % targets.len()]
                };
                let dir = inbound.unwrap_or_else(|| rng.gen_bool(0.6));
                let (mid, created) = a.add_message(rng, idx, dir, now, None);
                new_messages.push(json!({
                    "conversationId": a.threads[idx].id, "messageId": mid, "createdDate": created,
                }));
            }
        });
        self.with_rng(|rng| {
            for idx in bump_at {
                let dir = inbound.unwrap_or_else(|| rng.gen_bool(0.6));
                let (mid, created) = a.add_message(rng, idx, dir, now, None);
                new_messages.push(json!({
                    "conversationId": a.threads[idx].id, "messageId": mid, "createdDate": created,
                }));
            }
        });
        let mut new_threads = Vec::new();
        self.with_rng(|rng| {
            for _ in 0..req.new_threads {
                let dir = inbound.unwrap_or(true);
                let idx = a.add_thread(rng, None, dir, now);
                let t = &a.threads[idx];
                new_threads.push(json!({
                    "conversationId": t.id,
                    "messageId": t.latest().map(|m| m.id.clone()),
                    "createdDate": t.created,
                }));
            }
        });
        let mut deleted = Vec::new();
        let explicit: Vec<usize> = req
            .delete_ids
            .iter()
            .map(|id| {
                a.live(id)
                    .ok_or_else(|| format!("unknown or deleted thread {id}"))
            })
            .collect::<Result<_, _>>()?;
        for idx in explicit.into_iter().chain(delete_at) {
            if a.delete_thread(idx) {
                deleted.push(a.threads[idx].id.clone());
            }
        }
        self.with_rng(|rng| {
            for _ in 0..req.delete_threads {
                let live: usize = a.order.iter().map(Vec::len).sum();
                if live == 0 {
                    break;
                }
                let members = &a.order[ConvType::FromMembers.slot()];
                let pool = if members.is_empty() {
                    &a.order[1]
                } else {
                    members
                };
                let idx = pool[rng.gen_range(0..pool.len())];
                if a.delete_thread(idx) {
                    deleted.push(a.threads[idx].id.clone());
                }
            }
        });
        let mut poisoned = Vec::new();
        self.with_rng(|rng| {
            for _ in 0..req.poison_threads {
                let live: Vec<usize> = a.order.iter().flatten().copied().collect();
                if live.is_empty() {
                    break;
                }
                let idx = live[rng.gen_range(0..live.len())];
                a.threads[idx].created = "not a date".into();
                let len = a.threads[idx].messages.len();
                a.rerender(idx, len);
                poisoned.push(a.threads[idx].id.clone());
            }
        });
        Ok(json!({
            "account": a.name,
            "newMessages": new_messages,
            "newThreads": new_threads,
            "deletedThreadIds": deleted,
            "statusChangedIds": status_changed,
            "poisonedThreadIds": poisoned,
        }))
    }
}

fn roll_quota(q: &mut Quota, now: i64) {
    if now >= q.reset_at_ms {
        q.used = 0;
        while q.reset_at_ms <= now {
            q.reset_at_ms += 86_400_000;
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MutateRequest {
    #[serde(default = "default_account")]
    account: String,
    #[serde(default)]
    new_messages: usize,
    #[serde(default)]
    new_threads: usize,
    #[serde(default)]
    delete_threads: usize,
    /// Targets for new messages (cycled); random FROM_MEMBERS threads otherwise.
    #[serde(default)]
    thread_ids: Vec<String>,
    /// Threads to delete explicitly (in addition to `delete_threads` random ones).
    #[serde(default)]
    delete_ids: Vec<String>,
    /// One new message each for the FROM_MEMBERS threads now at these offsets.
    #[serde(default)]
    bump_offsets: Vec<usize>,
    /// Delete the FROM_MEMBERS threads now at these offsets.
    #[serde(default)]
    delete_offsets: Vec<usize>,
    /// Serve this many random live threads with an unreadable `createdDate` in the lists
    /// (rows a client cannot decode).
    #[serde(default)]
    poison_threads: usize,
    /// conversationId -> ACTIVE | ARCHIVE | DELETE | READ | UNREAD
    /// (moves threads in or out of filtered lists).
    #[serde(default)]
    set_status: std::collections::BTreeMap<String, String>,
    /// inbound (default) | outbound | mixed
    direction: Option<String>,
}

fn default_account() -> String {
    "acct-0".into()
}

impl SimProvider for EbaySim {
    fn harness(&self) -> &Harness {
        &self.h
    }

    fn identify(&self, parts: &Parts) -> Option<String> {
        let token = super::http::bearer(&parts.headers)?;
        self.token_owner(token).map(|(i, _)| format!("acct-{i}"))
    }

    fn is_metered(&self, path: &str) -> bool {
        path.starts_with("/commerce/")
    }

    fn error_5xx(&self) -> Response {
        error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            EbayError {
                error_id: 355_100,
                domain: "API_MESSAGE",
                category: "APPLICATION",
                message: "There was a problem with an eBay internal system or process. Contact eBay developer support for assistance.".into(),
                long_message: "Internal server error (simulated).".into(),
                parameters: vec![],
            },
        )
    }

    fn burst_429(&self) -> Response {
        too_many_requests()
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
            .map(|a| self.truth_of(&a))
            .collect();
        json!({ "provider": "ebay", "accounts": accounts })
    }

    fn expected(
        &self,
        account: &str,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Expected, String> {
        if since.is_some() {
            return Err("eBay threads are synced whole: since is not supported".into());
        }
        let i = self
            .account_index(account)
            .ok_or_else(|| format!("unknown account {account}"))?;
        let a = self.accounts[i]
            .read()
            .map_err(|_| "account store poisoned".to_string())?;
        Ok(Self::expected_of(&a))
    }

    fn mutate(&self, body: &Value) -> Result<Value, String> {
        let req: MutateRequest = serde_json::from_value(body.clone())
            .map_err(|e| format!("invalid mutate body: {e}"))?;
        let i = self
            .account_index(&req.account)
            .ok_or_else(|| format!("unknown account {}", req.account))?;
        self.mutate_account(i, &req)
    }

    /// One step of the background workload. Shares of deletes and status
    /// flips come from the config; of the rest, 10% start a new thread and
    /// 90% add a message (60% inbound).
    fn background_step(&self) {
        if self.accounts.is_empty() {
            return;
        }
        let cfg = &self.h.config;
        let (i, roll, new_thread, inbound, flip, pick) = self.with_rng(|r| {
            (
                r.gen_range(0..self.accounts.len()),
                r.gen::<f64>(),
                r.gen_bool(0.1),
                r.gen_bool(0.6),
                r.gen_range(0..4usize),
                r.gen::<u32>() as usize,
            )
        });
        let mut req = MutateRequest {
            account: format!("acct-{i}"),
            new_messages: 0,
            new_threads: 0,
            delete_threads: 0,
            thread_ids: vec![],
            delete_ids: vec![],
            bump_offsets: vec![],
            delete_offsets: vec![],
            poison_threads: 0,
            set_status: Default::default(),
            direction: Some(if inbound { "inbound" } else { "outbound" }.into()),
        };
        if roll < cfg.mutate_delete_share {
            req.delete_threads = 1;
        } else if roll < cfg.mutate_delete_share + cfg.mutate_flip_share {
            // Flip a random member thread in or out of a filtered list.
            let target = self.accounts[i].read().ok().and_then(|a| {
                let order = &a.order[ConvType::FromMembers.slot()];
                order
                    .get(pick % order.len().max(1))
                    .map(|idx| a.threads[*idx].id.clone())
            });
            let Some(id) = target else { return };
            let status = ["ACTIVE", "ARCHIVE", "READ", "UNREAD"][flip];
            req.set_status.insert(id, status.to_string());
        } else if new_thread {
            req.new_threads = 1;
        } else {
            req.new_messages = 1;
        }
        let _ = self.mutate_account(i, &req);
    }

    fn expire_token(&self, account: &str) -> bool {
        let Some(i) = self.account_index(account) else {
            return false;
        };
        if let Ok(mut s) = self.expired_static.write() {
            s.insert(i);
        }
        true
    }

    fn api_routes(self: Arc<Self>) -> Router {
        routes::api(self)
    }

    fn control_routes(self: Arc<Self>) -> Router {
        routes::control(self)
    }
}
