//! eBay HTTP handlers. Responses are serialised straight from borrowed store
//! data while the account's read lock is held; nothing clones the list.

use super::data::{ConvStatus, ConvType, Media, Thread};
use super::render::PageWriter;
use super::{
    bad_param, error_response, EbayError, EbaySim, ErrorParam, REFRESH_PREFIX, TOKEN_PREFIX,
};
use crate::sim::clock::{iso_ms, parse_iso};
use crate::sim::control::{bad_request, parse_body};
use crate::sim::http::{empty, host, json, json_bytes, Query};
use crate::sim::{ListSort, MessageOrder, StartTimeSemantics};
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;

type S = Arc<EbaySim>;

const BASE: &str = "/commerce/message/v1";

pub fn api(sim: S) -> Router {
    Router::new()
        .route(&format!("{BASE}/conversation"), get(list))
        .route(
            &format!("{BASE}/conversation/{{conversation_id}}"),
            get(detail),
        )
        .route(&format!("{BASE}/send_message"), post(send_message))
        .route(
            &format!("{BASE}/update_conversation"),
            post(update_conversation),
        )
        .route(
            &format!("{BASE}/bulk_update_conversation"),
            post(bulk_update),
        )
        .route("/identity/v1/oauth2/token", post(mint_token))
        .route("/developer/analytics/v1_beta/rate_limit/", get(rate_limits))
        .route("/developer/analytics/v1_beta/rate_limit", get(rate_limits))
        .with_state(sim)
}

pub fn control(sim: S) -> Router {
    Router::new()
        .route("/_sim/quota", get(quota_get).post(quota_post))
        .with_state(sim)
}

// ---------- validation helpers ----------

fn conversation_type(q: &Query) -> Result<ConvType, Response> {
    match q.get(&["conversation_type"]) {
        None | Some("") => Err(bad_param(
            355_001,
            "conversation_type",
            "",
            "The 'conversation_type' query parameter is required.",
        )),
        Some(v) => ConvType::parse(v).ok_or_else(|| {
            bad_param(
                355_001,
                "conversation_type",
                v,
                "Invalid 'conversation_type'. Valid values are FROM_EBAY and FROM_MEMBERS.",
            )
        }),
    }
}

/// `limit` 1..=50 (default 25) and `offset` >= 0 (default 0), both accepted as strings.
fn paging(q: &Query) -> Result<(usize, usize), Response> {
    let limit = match q.get(&["limit"]) {
        None => 25,
        Some(v) => match v.trim().parse::<i64>() {
            Ok(n) if (1..=50).contains(&n) => n as usize,
            _ => {
                return Err(bad_param(
                    355_002,
                    "limit",
                    v,
                    "Invalid 'limit'. It must be an integer between 1 and 50.",
                ))
            }
        },
    };
    let offset = match q.get(&["offset"]) {
        None => 0,
        Some(v) => match v.trim().parse::<i64>() {
            Ok(n) if n >= 0 => n as usize,
            _ => {
                return Err(bad_param(
                    355_003,
                    "offset",
                    v,
                    "Invalid 'offset'. It must be an integer greater than or equal to 0.",
                ))
            }
        },
    };
    Ok((limit, offset))
}

/// Absolute link to the same resource with another offset.
fn link(headers: &HeaderMap, path: &str, q: &Query, limit: usize, offset: usize) -> String {
    let rest = q.encode_without(&["limit", "offset"]);
    let sep = if rest.is_empty() { "" } else { "&" };
    format!(
        "http://{}{path}?{rest}{sep}limit={limit}&offset={offset}",
        host(headers)
    )
}

fn page_links(
    headers: &HeaderMap,
    path: &str,
    q: &Query,
    limit: usize,
    offset: usize,
    total: usize,
) -> (String, Option<String>, Option<String>) {
    let href = link(headers, path, q, limit, offset);
    let next = (offset + limit < total).then(|| link(headers, path, q, limit, offset + limit));
    let prev = (offset > 0).then(|| link(headers, path, q, limit, offset.saturating_sub(limit)));
    (href, next, prev)
}

enum StatusFilter {
    Default,
    Status(ConvStatus),
    Read,
    Unread,
}

struct ListFilter {
    status: StatusFilter,
    window: Option<(i64, i64)>,
    inbound_only: bool,
    other: Option<String>,
    reference: Option<String>,
}

impl ListFilter {
    fn is_trivial(&self) -> bool {
        matches!(self.status, StatusFilter::Default)
            && self.window.is_none()
            && self.other.is_none()
            && self.reference.is_none()
    }

    fn matches(&self, t: &Thread) -> bool {
        let status_ok = match self.status {
            StatusFilter::Default => t.status != ConvStatus::Delete,
            StatusFilter::Status(s) => t.status == s,
            StatusFilter::Read => t.status != ConvStatus::Delete && t.unread == 0,
            StatusFilter::Unread => t.status != ConvStatus::Delete && t.unread > 0,
        };
        if !status_ok {
            return false;
        }
        if let Some(o) = &self.other {
            if &t.other != o {
                return false;
            }
        }
        if let Some(r) = &self.reference {
            if t.reference_id.as_ref() != Some(r) {
                return false;
            }
        }
        if let Some((start, end)) = self.window {
            let from = t.messages.partition_point(|m| m.created_ms < start);
            return t.messages[from..]
                .iter()
                .take_while(|m| m.created_ms <= end)
                .any(|m| m.inbound || !self.inbound_only);
        }
        true
    }
}

fn list_filter(sim: &EbaySim, q: &Query, ctype: ConvType) -> Result<ListFilter, Response> {
    let status = match q.get(&["conversation_status"]) {
        None => StatusFilter::Default,
        Some("READ") => StatusFilter::Read,
        Some("UNREAD") => StatusFilter::Unread,
        Some(v) => StatusFilter::Status(ConvStatus::parse(v).ok_or_else(|| {
            bad_param(
                355_012,
                "conversation_status",
                v,
                "Invalid 'conversation_status'. Valid values are ACTIVE, ARCHIVE, DELETE, READ and UNREAD.",
            )
        })?),
    };
    let mut bounds = [None, None];
    for (k, name) in ["start_time", "end_time"].iter().enumerate() {
        if let Some(v) = q.get(&[name]) {
            if ctype != ConvType::FromMembers {
                return Err(bad_param(
                    355_004,
                    name,
                    v,
                    "The 'start_time' and 'end_time' filters are only supported for FROM_MEMBERS conversations.",
                ));
            }
            bounds[k] = Some(parse_iso(v).ok_or_else(|| {
                bad_param(
                    355_004,
                    name,
                    v,
                    "Invalid date format. Use ISO 8601 UTC, e.g. 2024-11-06T10:00:00.000Z.",
                )
            })?);
        }
    }
    let window = match bounds {
        [None, None] => None,
        [s, e] => {
            let (s, e) = (s.unwrap_or(i64::MIN), e.unwrap_or(i64::MAX));
            if s > e {
                return Err(bad_param(
                    355_004,
                    "start_time",
                    &iso_ms(s),
                    "'start_time' must not be after 'end_time'.",
                ));
            }
            Some((s, e))
        }
    };
    let reference = match (q.get(&["reference_id"]), q.get(&["reference_type"])) {
        (Some(id), Some("LISTING")) => Some(id.to_string()),
        (None, None) => None,
        (Some(id), None) => {
            return Err(bad_param(
                355_005,
                "reference_type",
                id,
                "'reference_type' is required when 'reference_id' is given.",
            ))
        }
        (_, Some(t)) if t != "LISTING" => {
            return Err(bad_param(
                355_005,
                "reference_type",
                t,
                "Invalid 'reference_type'. The only supported value is LISTING.",
            ))
        }
        (None, Some(t)) => {
            return Err(bad_param(
                355_005,
                "reference_id",
                t,
                "'reference_id' is required when 'reference_type' is given.",
            ))
        }
        _ => None,
    };
    Ok(ListFilter {
        status,
        window,
        inbound_only: sim.h.config.start_time_semantics == StartTimeSemantics::InboundOnly,
        other: q.get(&["other_party_username"]).map(str::to_string),
        reference,
    })
}

fn not_found(id: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        EbayError {
            error_id: 355_006,
            domain: "API_MESSAGE",
            category: "REQUEST",
            message: "The conversation was not found.".into(),
            long_message: format!(
                "No conversation with ID {id} exists for this user and conversation_type."
            ),
            parameters: vec![ErrorParam {
                name: "conversation_id".into(),
                value: id.to_string(),
            }],
        },
    )
}

fn store_error() -> Response {
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        EbayError {
            error_id: 355_100,
            domain: "API_MESSAGE",
            category: "APPLICATION",
            message: "Internal error.".into(),
            long_message: "The simulator store is unavailable.".into(),
            parameters: vec![],
        },
    )
}

// ---------- handlers ----------

async fn list(State(sim): State<S>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let i = match sim.admit(&headers) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let q = Query::parse(raw.as_deref());
    let ctype = match conversation_type(&q) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let (limit, offset) = match paging(&q) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let filter = match list_filter(&sim, &q, ctype) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Ok(a) = sim.accounts[i].read() else {
        return store_error();
    };
    let order = &a.order[ctype.slot()];
    let sort = sim.h.config.list_sort;
    let filtered: Vec<usize>;
    let matching: &[usize] = if filter.is_trivial() && sort == ListSort::LatestDesc {
        // Fast path: a slice of the pre-sorted index, no copying.
        order
    } else {
        let mut v: Vec<usize> = order
            .iter()
            .copied()
            .filter(|idx| filter.matches(&a.threads[*idx]))
            .collect();
        match sort {
            ListSort::LatestDesc => {}
            ListSort::LatestAsc => v.reverse(),
            ListSort::CreatedDesc => v.sort_by(|x, y| {
                let (tx, ty) = (&a.threads[*x], &a.threads[*y]);
                ty.created.cmp(&tx.created).then_with(|| tx.id.cmp(&ty.id))
            }),
        }
        filtered = v;
        &filtered
    };
    let total = matching.len();
    let page = &matching[offset.min(total)..(offset + limit).min(total)];
    let (href, next, prev) = page_links(
        &headers,
        &format!("{BASE}/conversation"),
        &q,
        limit,
        offset,
        total,
    );
    // Same field order as the serde views would give (alphabetical).
    let mut w = PageWriter::new(1024 + page.len() * 900);
    w.fragments(
        "conversations",
        page.iter().map(|idx| a.threads[*idx].json.as_str()),
    );
    w.value("href", &href);
    w.value("limit", &limit);
    w.opt("next", next.as_deref());
    w.value("offset", &offset);
    w.opt("prev", prev.as_deref());
    w.value("total", &total);
    json_bytes(StatusCode::OK, w.finish())
}

async fn detail(
    State(sim): State<S>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Response {
    let i = match sim.admit(&headers) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let Ok(Path(id)) = id else {
        return bad_param(355_006, "conversation_id", "", "Invalid conversation_id.");
    };
    let q = Query::parse(raw.as_deref());
    let ctype = match conversation_type(&q) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let (limit, offset) = match paging(&q) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Ok(a) = sim.accounts[i].read() else {
        return store_error();
    };
    let Some(idx) = a.live(&id).filter(|idx| a.threads[*idx].ctype == ctype) else {
        return not_found(&id);
    };
    let t = &a.threads[idx];
    // With list_detail_lag_ms, the newest messages are not visible here yet.
    let lag = sim.h.config.list_detail_lag_ms as i64;
    let total = if lag > 0 {
        let cutoff = sim.h.clock.now_ms() - lag;
        t.messages.partition_point(|m| m.created_ms <= cutoff)
    } else {
        t.messages.len()
    };
    let range = offset.min(total)..(offset + limit).min(total);
    let (href, next, prev) = page_links(
        &headers,
        &format!("{BASE}/conversation/{id}"),
        &q,
        limit,
        offset,
        total,
    );
    let mut w = PageWriter::new(1024 + range.len() * 400);
    w.value("conversationStatus", &t.status);
    w.value("conversationTitle", &t.title);
    w.value("conversationType", &t.ctype);
    w.value("href", &href);
    w.value("limit", &limit);
    match sim.h.config.message_order {
        MessageOrder::Asc => w.fragments(
            "messages",
            t.messages[range.clone()].iter().map(|m| m.json.as_str()),
        ),
        MessageOrder::Desc => w.fragments(
            "messages",
            t.messages[..total]
                .iter()
                .rev()
                .skip(range.start)
                .take(range.len())
                .map(|m| m.json.as_str()),
        ),
    }
    w.opt("next", next.as_deref());
    w.value("offset", &offset);
    w.opt("prev", prev.as_deref());
    w.value("total", &total);
    json_bytes(StatusCode::OK, w.finish())
}

fn invalid_body(e: impl std::fmt::Display) -> Response {
    bad_param(355_010, "body", "", &format!("Invalid request body: {e}"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendMessageRequest {
    conversation_id: Option<String>,
    other_party_username: Option<String>,
    message_text: Option<String>,
    #[serde(default)]
    message_media: Vec<serde_json::Value>,
    reference: Option<ReferenceIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReferenceIn {
    reference_id: Option<String>,
    reference_type: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SendMessageResponse<'a> {
    created_date: &'a str,
    message_body: &'a str,
    message_id: &'a str,
    #[serde(skip_serializing_if = "<[Media]>::is_empty")]
    message_media: &'a [Media],
    read_status: bool,
    // eBay's send response spells these `UserName`, unlike MessageDetail.
    recipient_user_name: &'a str,
    sender_user_name: &'a str,
    subject: &'a str,
}

async fn send_message(State(sim): State<S>, headers: HeaderMap, body: Bytes) -> Response {
    let i = match sim.admit(&headers) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let req: SendMessageRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return invalid_body(e),
    };
    let text = match req.message_text.as_deref() {
        None | Some("") => {
            return bad_param(355_007, "messageText", "", "'messageText' is required.")
        }
        Some(t) if t.chars().count() > 2000 => {
            return bad_param(
                355_007,
                "messageText",
                &t.chars().count().to_string(),
                "'messageText' must not exceed 2000 characters.",
            )
        }
        Some(t) => t.to_string(),
    };
    if req.message_media.len() > 5 {
        return bad_param(
            355_008,
            "messageMedia",
            &req.message_media.len().to_string(),
            "At most 5 media items can be attached to a message.",
        );
    }
    if let Some(r) = &req.reference {
        if r.reference_type.as_deref() != Some("LISTING") || r.reference_id.is_none() {
            return bad_param(
                355_005,
                "reference",
                r.reference_type.as_deref().unwrap_or(""),
                "'reference' needs referenceType LISTING and a referenceId.",
            );
        }
    }
    let media: Vec<Media> = req
        .message_media
        .iter()
        .enumerate()
        .map(|(k, v)| Media {
            media_name: v
                .get("mediaName")
                .and_then(|x| x.as_str())
                .unwrap_or("attachment")
                .to_string(),
            media_type: match v.get("mediaType").and_then(|x| x.as_str()) {
                Some("PDF") => "PDF",
                Some("DOC") => "DOC",
                Some("TXT") => "TXT",
                _ => "IMAGE",
            },
            media_url: v
                .get("mediaUrl")
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| format!("https://media.sim/{k}")),
        })
        .collect();
    let now = sim.h.clock.now_ms();
    let Ok(mut a) = sim.accounts[i].write() else {
        return store_error();
    };
    let idx = match (&req.conversation_id, &req.other_party_username) {
        (Some(cid), _) => match a.live(cid) {
            Some(idx) if a.threads[idx].ctype == ConvType::FromMembers => {
                let _ = sim.with_rng(|r| a.add_message(r, idx, false, now, Some(text)));
                idx
            }
            _ => {
                return bad_param(
                    355_013,
                    "conversationId",
                    cid,
                    "Invalid 'conversationId': no member conversation with this ID.",
                )
            }
        },
        (None, Some(user)) if !user.is_empty() => {
            let idx = sim.with_rng(|r| a.add_thread(r, Some(user.clone()), false, now));
            if let Some(m) = a.threads[idx].messages.last_mut() {
                m.body = text;
            }
            a.threads[idx].reference_id =
                req.reference.as_ref().and_then(|r| r.reference_id.clone());
            idx
        }
        _ => {
            return bad_param(
                355_011,
                "conversationId",
                "",
                "Either 'conversationId' or 'otherPartyUsername' is required.",
            )
        }
    };
    if let Some(m) = a.threads[idx].messages.last_mut() {
        m.media = media;
    }
    let last = a.threads[idx].messages.len().saturating_sub(1);
    a.rerender(idx, last);
    let t = &a.threads[idx];
    let Some(m) = t.latest() else {
        return store_error();
    };
    let (sender, recipient) = a.parties(t, m);
    json(
        StatusCode::CREATED,
        &SendMessageResponse {
            created_date: &m.created,
            message_body: &m.body,
            message_id: &m.id,
            message_media: &m.media,
            read_status: m.read,
            recipient_user_name: recipient,
            sender_user_name: sender,
            subject: &m.subject,
        },
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateRequest {
    conversation_id: Option<String>,
    conversation_type: Option<String>,
    conversation_status: Option<String>,
    read: Option<bool>,
}

async fn update_conversation(State(sim): State<S>, headers: HeaderMap, body: Bytes) -> Response {
    let i = match sim.admit(&headers) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let req: UpdateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return invalid_body(e),
    };
    let Some(cid) = req.conversation_id.filter(|c| !c.is_empty()) else {
        return bad_param(
            355_014,
            "conversationId",
            "",
            "'conversationId' is required.",
        );
    };
    let ctype = match req.conversation_type.as_deref().map(ConvType::parse) {
        Some(Some(t)) => t,
        other => {
            return bad_param(
                355_001,
                "conversationType",
                if other.is_some() { "invalid" } else { "" },
                "'conversationType' is required: FROM_EBAY or FROM_MEMBERS.",
            )
        }
    };
    let status =
        match (req.read, req.conversation_status.as_deref()) {
            (Some(_), _) => None,
            (None, Some(s)) => match ConvStatus::parse(s) {
                Some(st) => Some(st),
                None => return bad_param(
                    355_012,
                    "conversationStatus",
                    s,
                    "Invalid 'conversationStatus'. Valid values are ACTIVE, ARCHIVE and DELETE.",
                ),
            },
            (None, None) => {
                return bad_param(
                    355_015,
                    "read",
                    "",
                    "Either 'read' or 'conversationStatus' is required.",
                )
            }
        };
    let Ok(mut a) = sim.accounts[i].write() else {
        return store_error();
    };
    let Some(idx) = a.live(&cid).filter(|idx| a.threads[*idx].ctype == ctype) else {
        return bad_param(
            355_013,
            "conversationId",
            &cid,
            "Invalid 'conversationId' for this conversationType.",
        );
    };
    // `read` wins when both are given, as eBay documents.
    match (req.read, status) {
        (Some(read), _) => a.set_read(idx, read),
        (None, Some(st)) => a.set_status(idx, st),
        (None, None) => {}
    }
    empty(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct BulkRequest {
    conversations: Option<Vec<BulkItem>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkItem {
    conversation_id: Option<String>,
    conversation_type: Option<String>,
    conversation_status: Option<String>,
}

async fn bulk_update(State(sim): State<S>, headers: HeaderMap, body: Bytes) -> Response {
    let i = match sim.admit(&headers) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let req: BulkRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return invalid_body(e),
    };
    let items = req.conversations.unwrap_or_default();
    if items.is_empty() || items.len() > 10 {
        return bad_param(
            355_009,
            "conversations",
            &items.len().to_string(),
            "Between 1 and 10 conversations can be updated per call.",
        );
    }
    let Ok(mut a) = sim.accounts[i].write() else {
        return store_error();
    };
    let mut results = Vec::with_capacity(items.len());
    let mut ok = 0;
    for item in &items {
        let cid = item.conversation_id.clone().unwrap_or_default();
        let ctype = item.conversation_type.as_deref().and_then(ConvType::parse);
        let target = ctype.and_then(|t| a.live(&cid).filter(|idx| a.threads[*idx].ctype == t));
        let success = match (target, item.conversation_status.as_deref()) {
            (Some(idx), Some("READ")) => {
                a.set_read(idx, true);
                true
            }
            (Some(idx), Some("UNREAD")) => {
                a.set_read(idx, false);
                true
            }
            (Some(idx), Some(s)) => match ConvStatus::parse(s) {
                Some(st) => {
                    a.set_status(idx, st);
                    true
                }
                None => false,
            },
            _ => false,
        };
        ok += usize::from(success);
        results.push(json!({
            "conversationId": cid,
            "updateStatus": if success { "SUCCESS" } else { "FAILURE" },
        }));
    }
    json(
        StatusCode::OK,
        &json!({
            "conversationsMetadata": {
                "totalConversationsCount": items.len(),
                "updateSuccessCount": ok,
                "updateFailureCount": items.len() - ok,
            },
            "conversationsResponse": results,
        }),
    )
}

fn oauth_error(error: &str, description: &str) -> Response {
    json(
        StatusCode::BAD_REQUEST,
        &json!({"error": error, "error_description": description}),
    )
}

/// `POST /identity/v1/oauth2/token` (form body). Which account the token is
/// for: `refresh_token=sim-ebay-refresh-acct-N`, `code=acct-N`, or
/// `account=acct-N` (any grant type). The token expires after
/// `token_ttl_secs` of simulated time.
async fn mint_token(State(sim): State<S>, body: Bytes) -> Response {
    let form = Query::parse(std::str::from_utf8(&body).ok());
    let grant = form.get(&["grant_type"]).unwrap_or("");
    let account = match grant {
        "refresh_token" => form
            .get(&["refresh_token"])
            .and_then(|t| t.strip_prefix(REFRESH_PREFIX)),
        "authorization_code" => form.get(&["code"]),
        "client_credentials" => form.get(&["account"]).or(Some("acct-0")),
        "" => return oauth_error("invalid_request", "grant_type is required"),
        _ => return oauth_error("unsupported_grant_type", "unsupported grant_type"),
    }
    .or_else(|| form.get(&["account"]));
    let Some(idx) = account.and_then(|a| sim.account_index(a)) else {
        return oauth_error(
            "invalid_grant",
            "the provided authorization grant is invalid",
        );
    };
    let ttl = sim.h.config.token_ttl_secs;
    let expires = sim.h.clock.now_ms() + ttl as i64 * 1000;
    let token = {
        let Ok(mut minted) = sim.minted.write() else {
            return store_error();
        };
        let t = format!("{TOKEN_PREFIX}minted-{}-{}", idx, minted.len() + 1);
        minted.insert(t.clone(), (idx, expires));
        t
    };
    json(
        StatusCode::OK,
        &json!({
            "access_token": token,
            "expires_in": ttl,
            "token_type": "User Access Token",
            "refresh_token": format!("{REFRESH_PREFIX}acct-{idx}"),
            "refresh_token_expires_in": 47_304_000,
        }),
    )
}

async fn rate_limits(State(sim): State<S>, headers: HeaderMap) -> Response {
    let i = match sim.authenticate(&headers) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let q = sim.quota_state(i);
    let limit = sim.h.limits().daily_quota.unwrap_or(i32::MAX as u64);
    json(
        StatusCode::OK,
        &json!({"rateLimits": [{
            "apiContext": "commerce", "apiName": "message", "apiVersion": "v1",
            "resources": [{"name": "commerce.message", "rates": [{
                "count": q.used, "limit": limit, "remaining": limit.saturating_sub(q.used),
                "reset": iso_ms(q.reset_at_ms), "timeWindow": 86400,
            }]}],
        }]}),
    )
}

// ---------- control ----------

async fn quota_get(State(sim): State<S>) -> Response {
    let limit = sim.h.limits().daily_quota;
    let accounts: Vec<_> = (0..sim.accounts.len())
        .map(|i| {
            let q = sim.quota_state(i);
            json!({"account": format!("acct-{i}"), "used": q.used, "limit": limit,
                   "remaining": limit.map(|l| l.saturating_sub(q.used)),
                   "reset": iso_ms(q.reset_at_ms)})
        })
        .collect();
    json(StatusCode::OK, &json!({ "accounts": accounts }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaUpdate {
    /// Omit for every account.
    account: Option<String>,
    /// Set the used count (0 = fresh quota).
    used: Option<u64>,
    /// ISO-8601 instant of the next reset.
    reset_at: Option<String>,
}

async fn quota_post(State(sim): State<S>, body: Bytes) -> Response {
    let u: QuotaUpdate = match parse_body(&body) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let targets: Vec<usize> = match &u.account {
        Some(a) => match sim.account_index(a) {
            Some(i) => vec![i],
            None => return bad_request(format!("unknown account {a}")),
        },
        None => (0..sim.accounts.len()).collect(),
    };
    let reset = match u.reset_at.as_deref().map(parse_iso) {
        Some(None) => return bad_request("reset_at must be ISO-8601"),
        Some(Some(ms)) => Some(ms),
        None => None,
    };
    if let Ok(mut q) = sim.quotas.lock() {
        for i in targets {
            if let Some(used) = u.used {
                q[i].used = used;
            }
            if let Some(ms) = reset {
                q[i].reset_at_ms = ms;
            }
        }
    }
    quota_get(State(sim)).await
}
