//! Facebook-only `/_sim/*` endpoints: BUC windows (`/_sim/quota`) and the webhook sender
//! (`/_sim/webhook`).

use super::webhook::WebhookTarget;
use super::FacebookSim;
use crate::sim::control::{bad_request, parse_body};
use crate::sim::http::json;
use crate::sim::SimProvider;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use std::sync::Arc;

type S = Arc<FacebookSim>;

pub(super) fn routes(sim: S) -> Router {
    Router::new()
        .route("/_sim/quota", get(quota_get).post(quota_post))
        .route("/_sim/webhook", get(webhook_get).post(webhook_post))
        .with_state(sim)
}

async fn quota_get(State(sim): State<S>) -> Response {
    json(StatusCode::OK, &json!({ "accounts": sim.buc_windows() }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaUpdate {
    /// Omit for every Page.
    account: Option<String>,
    /// Calls already used in the current BUC window.
    used: u64,
}

async fn quota_post(State(sim): State<S>, body: Bytes) -> Response {
    let u: QuotaUpdate = match parse_body(&body) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let targets = match u.account {
        Some(a) => vec![a],
        None => sim.accounts(),
    };
    for a in targets {
        if let Err(e) = sim.set_buc_used(&a, u.used) {
            return bad_request(e);
        }
    }
    quota_get(State(sim)).await
}

fn webhook_view(sim: &FacebookSim) -> Value {
    let target = sim
        .webhook
        .target()
        .map(|t| json!({"url": t.url, "duplicate_rate": t.duplicate_rate, "shuffle": t.shuffle}));
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
    app_secret: Option<String>,
    #[serde(default)]
    duplicate_rate: f64,
    #[serde(default)]
    shuffle: bool,
}

async fn webhook_post(State(sim): State<S>, body: Bytes) -> Response {
    let b: WebhookBody = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let target = match b.url {
        None => return bad_request("url is required (null stops the sender)"),
        Some(None) => None,
        Some(Some(url)) => {
            let Some(app_secret) = b.app_secret else {
                return bad_request("app_secret is required with a url");
            };
            Some(WebhookTarget {
                url,
                app_secret,
                duplicate_rate: b.duplicate_rate,
                shuffle: b.shuffle,
            })
        }
    };
    if let Err(e) = sim.webhook.set_target(target) {
        return bad_request(e);
    }
    json(StatusCode::OK, &webhook_view(&sim))
}
