//! Hostaway-only `/_sim/*` endpoints: the unified-webhook sender (`/_sim/webhook`), the
//! window peaks (`/_sim/windows`) and the limits enforced (`/_sim/hostaway_limits`).

use super::webhook::{WebhookTarget, DEFAULT_RETRIES};
use super::HostawaySim;
use crate::sim::control::{bad_request, parse_body};
use crate::sim::http::json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use std::sync::Arc;

type S = Arc<HostawaySim>;

pub(super) fn routes(sim: S) -> Router {
    Router::new()
        .route("/_sim/webhook", get(webhook_get).post(webhook_post))
        .route("/_sim/windows", get(windows_get))
        .route("/_sim/hostaway_limits", get(limits_get).post(limits_post))
        .with_state(sim)
}

/// Counters plus the target without its password.
fn webhook_view(sim: &HostawaySim) -> Value {
    let target = sim.webhook.target().map(|t| {
        json!({"url": t.url, "basic_user": t.basic_user, "duplicate_rate": t.duplicate_rate,
               "shuffle": t.shuffle, "retries": t.retries})
    });
    let mut v = serde_json::to_value(sim.webhook.stats()).unwrap_or_else(|_| json!({}));
    v["target"] = target.unwrap_or(Value::Null);
    v
}

async fn webhook_get(State(sim): State<S>) -> Response {
    json(StatusCode::OK, &webhook_view(&sim))
}

/// Present-but-null (stop) is told apart from absent (a mistake).
fn some_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookBody {
    #[serde(default, deserialize_with = "some_or_null")]
    url: Option<Option<String>>,
    basic_user: Option<String>,
    basic_password: Option<String>,
    #[serde(default)]
    duplicate_rate: f64,
    #[serde(default)]
    shuffle: bool,
    retries: Option<u32>,
}

async fn webhook_post(State(sim): State<S>, body: Bytes) -> Response {
    let b: WebhookBody = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let target = match b.url {
        None => return bad_request("url is required (null stops the sender)"),
        Some(None) => None,
        Some(Some(url)) => Some(WebhookTarget {
            url,
            basic_user: b.basic_user,
            basic_password: b.basic_password,
            duplicate_rate: b.duplicate_rate,
            shuffle: b.shuffle,
            retries: b.retries.unwrap_or(DEFAULT_RETRIES),
        }),
    };
    if let Err(e) = sim.webhook.set_target(target) {
        return bad_request(e);
    }
    json(StatusCode::OK, &webhook_view(&sim))
}

async fn windows_get(State(sim): State<S>) -> Response {
    json(StatusCode::OK, &sim.window_peaks())
}

async fn limits_get(State(sim): State<S>) -> Response {
    json(StatusCode::OK, &sim.limits())
}

const LIMITS_USAGE: &str = "expected {\"ip_limit\": u32, \"account_limit\": u32, \"window_ms\": u64 >= 1}, all three and nothing else";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    ip_limit: Option<u32>,
    account_limit: Option<u32>,
    window_ms: Option<u64>,
}

/// Every mistake gets the same usage line, followed by what was wrong.
fn parse_limits(body: &[u8]) -> Result<(u32, u32, u64), String> {
    let b: LimitsBody = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let missing: Vec<&str> = [
        ("ip_limit", b.ip_limit.is_none()),
        ("account_limit", b.account_limit.is_none()),
        ("window_ms", b.window_ms.is_none()),
    ]
    .into_iter()
    .filter_map(|(name, absent)| absent.then_some(name))
    .collect();
    match (b.ip_limit, b.account_limit, b.window_ms) {
        (Some(_), Some(_), Some(0)) => Err("window_ms must be at least 1".into()),
        (Some(ip), Some(acct), Some(w)) => Ok((ip, acct, w)),
        _ => Err(format!("missing {}", missing.join(", "))),
    }
}

async fn limits_post(State(sim): State<S>, body: Bytes) -> Response {
    let (ip, acct, window) = match parse_limits(&body) {
        Ok(x) => x,
        Err(e) => return bad_request(format!("{LIMITS_USAGE}: {e}")),
    };
    if let Err(e) = sim.set_limits(ip, acct, window) {
        return bad_request(format!("{LIMITS_USAGE}: {e}"));
    }
    json(StatusCode::OK, &sim.limits())
}
