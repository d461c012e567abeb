//! Webhook receivers, `GET` and `POST /webhooks/{provider}`, for every provider with
//! pushes: the subscription handshake, then deliveries checked for authenticity and turned
//! into refreshes. A receiver only enqueues, so it answers at once.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::sync::provider::{Webhook, WebhookSecrets};

use super::error::ApiError;
use super::AppState;

/// Largest delivery a receiver reads: Meta batches many events into one.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// Webhook secrets by provider name.
pub type Secrets = Arc<HashMap<&'static str, WebhookSecrets>>;

/// The secrets every provider's webhooks need, from the environment variables they name.
pub fn secrets_from_env() -> HashMap<&'static str, WebhookSecrets> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    crate::providers::ALL
        .iter()
        .filter_map(|p| {
            let hook = p.webhook()?;
            let (signing, verify) = hook.secret_envs();
            Some((
                p.name(),
                WebhookSecrets {
                    signing: var(signing),
                    verify: verify.and_then(var),
                },
            ))
        })
        .collect()
}

fn hook(provider: &str) -> Result<&'static dyn Webhook, ApiError> {
    crate::providers::find(provider)
        .and_then(|p| p.webhook())
        .ok_or_else(|| ApiError::not_found(format!("no webhooks for {provider:?}")))
}

pub async fn handshake(
    State(s): State<AppState>,
    Path(provider): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let hook = hook(&provider)?;
    let secrets = s
        .webhooks
        .get(provider.as_str())
        .cloned()
        .unwrap_or_default();
    match hook.handshake(&query, &secrets) {
        Some(challenge) => Ok((StatusCode::OK, challenge).into_response()),
        None => Err(ApiError::forbidden(
            "handshake refused: wrong mode or verify token, or no verify token configured",
        )),
    }
}

pub async fn deliver(
    State(s): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let hook = hook(&provider)?;
    let secrets = s
        .webhooks
        .get(provider.as_str())
        .cloned()
        .unwrap_or_default();
    if secrets.signing.is_none() {
        let (env, _) = hook.secret_envs();
        return Err(ApiError::forbidden(format!(
            "{provider} webhooks are not configured: set {env} for threadsync serve"
        )));
    }
    if !hook.authentic(&headers, &body, &secrets) {
        return Err(ApiError::forbidden(
            "delivery refused: bad or missing signature",
        ));
    }
    let touches = hook.touches(&body).map_err(ApiError::bad_request)?;
    let provider = crate::providers::find(&provider).map_or("", |p| p.name());
    let applied = crate::sync::pushes::apply(&s.pool, provider, &touches).await?;
    let status = match hook.retry_unknown() && applied.runs > 0 {
        true => StatusCode::SERVICE_UNAVAILABLE,
        false => StatusCode::OK,
    };
    Ok((status, Json(applied)).into_response())
}
