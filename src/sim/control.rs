//! `/_sim/*` control endpoints shared by every simulator. They are not
//! counted in provider stats and never see injected faults.

use super::http::{json, Query};
use super::{Faults, Limits, SimProvider};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;

type P = Arc<dyn SimProvider>;

pub fn routes(p: P) -> Router {
    Router::new()
        .route("/_sim/stats", get(stats))
        .route("/_sim/stats/reset", post(stats_reset))
        .route("/_sim/truth", get(truth))
        .route("/_sim/expected", get(expected))
        .route("/_sim/faults", get(faults_get).post(faults_post))
        .route("/_sim/mutate", post(mutate))
        .route("/_sim/clock", get(clock_get))
        .route("/_sim/clock/advance", post(clock_advance))
        .route("/_sim/expire_token", post(expire_token))
        .route("/_sim/script", get(script_get).post(script_post))
        .with_state(p)
}

pub fn bad_request(msg: impl Into<String>) -> Response {
    json(StatusCode::BAD_REQUEST, &json!({"error": msg.into()}))
}

/// Parse a JSON body, answering 400 with a readable message when it is not.
pub fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, Response> {
    let slice: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(slice).map_err(|e| bad_request(format!("invalid JSON body: {e}")))
}

async fn stats(State(p): State<P>) -> Response {
    json(StatusCode::OK, &p.harness().stats.snapshot())
}

async fn stats_reset(State(p): State<P>) -> Response {
    p.harness().stats.reset();
    json(StatusCode::OK, &json!({"reset": true}))
}

async fn truth(State(p): State<P>, RawQuery(q): RawQuery) -> Response {
    let q = Query::parse(q.as_deref());
    json(StatusCode::OK, &p.truth(q.get(&["account"])))
}

/// `?account=A[&since=RFC3339]`: what a synced copy of A should hold.
async fn expected(State(p): State<P>, RawQuery(q): RawQuery) -> Response {
    let q = Query::parse(q.as_deref());
    let Some(account) = q.get(&["account"]).filter(|a| !a.is_empty()) else {
        return bad_request("account is required");
    };
    let since = match q.get(&["since"]).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.with_timezone(&chrono::Utc)),
            Err(e) => return bad_request(format!("since must be RFC 3339 ({e})")),
        },
    };
    match p.expected(account, since) {
        Ok(e) => json(StatusCode::OK, &e),
        Err(e) => bad_request(e),
    }
}

#[derive(Serialize)]
struct FaultsView {
    #[serde(flatten)]
    faults: Faults,
    #[serde(flatten)]
    limits: Limits,
    latency_ms: u64,
    requests_seen: u64,
}

fn faults_view(p: &P) -> FaultsView {
    let h = p.harness();
    FaultsView {
        faults: h.faults.get(),
        limits: h.limits(),
        latency_ms: h.latency_ms.load(Ordering::Relaxed),
        requests_seen: h.faults.requests_seen(),
    }
}

async fn faults_get(State(p): State<P>) -> Response {
    json(StatusCode::OK, &faults_view(&p))
}

/// Absent field = keep; `null` = clear (for the optional limits).
fn some_or_null<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Partial update accepted by `POST /_sim/faults`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FaultsUpdate {
    error_5xx: Option<f64>,
    burst_429: Option<f64>,
    timeout: Option<f64>,
    malformed: Option<f64>,
    slow: Option<f64>,
    slow_ms: Option<u64>,
    timeout_ms: Option<u64>,
    latency_ms: Option<u64>,
    #[serde(default, deserialize_with = "some_or_null")]
    rps_limit: Option<Option<f64>>,
    #[serde(default, deserialize_with = "some_or_null")]
    daily_quota: Option<Option<u64>>,
}

async fn faults_post(State(p): State<P>, body: Bytes) -> Response {
    let u: FaultsUpdate = match parse_body(&body) {
        Ok(u) => u,
        Err(r) => return r,
    };
    for v in [u.error_5xx, u.burst_429, u.timeout, u.malformed, u.slow]
        .into_iter()
        .flatten()
    {
        if !(0.0..=1.0).contains(&v) {
            return bad_request("probabilities must be within 0..=1");
        }
    }
    let h = p.harness();
    let mut f = h.faults.get();
    f.error_5xx = u.error_5xx.unwrap_or(f.error_5xx);
    f.burst_429 = u.burst_429.unwrap_or(f.burst_429);
    f.timeout = u.timeout.unwrap_or(f.timeout);
    f.malformed = u.malformed.unwrap_or(f.malformed);
    f.slow = u.slow.unwrap_or(f.slow);
    f.slow_ms = u.slow_ms.unwrap_or(f.slow_ms);
    f.timeout_ms = u.timeout_ms.unwrap_or(f.timeout_ms);
    h.faults.set(f);
    if let Some(l) = u.latency_ms {
        h.latency_ms.store(l, Ordering::Relaxed);
    }
    if let Ok(mut limits) = h.limits.write() {
        if let Some(r) = u.rps_limit {
            limits.rps_limit = r;
        }
        if let Some(q) = u.daily_quota {
            limits.daily_quota = q;
        }
    }
    json(StatusCode::OK, &faults_view(&p))
}

async fn mutate(State(p): State<P>, body: Bytes) -> Response {
    let v: serde_json::Value = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    match p.mutate(&v) {
        Ok(out) => json(StatusCode::OK, &out),
        Err(e) => bad_request(e),
    }
}

async fn clock_get(State(p): State<P>) -> Response {
    let now = p.harness().clock.now();
    json(
        StatusCode::OK,
        &json!({"now": now.to_rfc3339(), "now_ms": now.timestamp_millis()}),
    )
}

#[derive(Deserialize)]
struct Advance {
    seconds: f64,
}

async fn clock_advance(State(p): State<P>, body: Bytes) -> Response {
    let a: Advance = match parse_body(&body) {
        Ok(a) => a,
        Err(r) => return r,
    };
    if !a.seconds.is_finite() || a.seconds < 0.0 {
        return bad_request("seconds must be a non-negative number");
    }
    p.harness().clock.advance(a.seconds);
    clock_get(State(p)).await
}

#[derive(Deserialize)]
struct ExpireToken {
    account: String,
}

async fn expire_token(State(p): State<P>, body: Bytes) -> Response {
    let e: ExpireToken = match parse_body(&body) {
        Ok(e) => e,
        Err(r) => return r,
    };
    if p.expire_token(&e.account) {
        json(StatusCode::OK, &json!({"expired": e.account}))
    } else {
        bad_request(format!("unknown account {}", e.account))
    }
}

async fn script_get(State(p): State<P>) -> Response {
    let s = p
        .harness()
        .scripts
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    json(
        StatusCode::OK,
        &json!({"requests_seen": p.harness().faults.requests_seen(), "scheduled": s}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptBody {
    /// Run after this many more provider requests (default 1 = after the next one).
    in_requests: Option<u64>,
    /// Or after this absolute (1-based) provider request number.
    after_request: Option<u64>,
    mutate: serde_json::Value,
}

async fn script_post(State(p): State<P>, body: Bytes) -> Response {
    let b: ScriptBody = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let h = p.harness();
    let seen = h.faults.requests_seen();
    let in_requests = match (b.in_requests, b.after_request) {
        (Some(k), None) => k,
        (None, Some(n)) if n > seen => n - seen,
        (None, Some(n)) => {
            return bad_request(format!("request {n} already happened ({seen} seen)"))
        }
        (None, None) => 1,
        (Some(_), Some(_)) => return bad_request("give in_requests or after_request, not both"),
    };
    let at = h.schedule(in_requests, b.mutate);
    json(StatusCode::OK, &json!({"after_request": at}))
}
