//! Hostaway-only `/_sim/*` endpoints: the unified-webhook sender (`/_sim/webhook`).

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
