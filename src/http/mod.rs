//! `threadsync serve`: the HTTP face for admins and web apps. The JSON API under /v1
//! (api.rs) with scoped bearer tokens (auth.rs), health checks, the OpenAPI document and
//! Prometheus metrics, and the operators' dashboard under /ui (ui.rs). Behind it are the same
//! library calls the CLI makes.

pub mod api;
pub mod auth;
pub mod error;
pub mod metrics;
mod ui;
pub mod webhooks;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use sqlx::PgPool;
use tower_http::compression::CompressionLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use error::ApiError;

/// Largest request body the API reads.
pub const BODY_LIMIT: usize = 64 * 1024;
/// A request that has not produced its response by then gets 408 (event streams count
/// from their first byte: their body runs on).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub tokens: auth::Tokens,
    pub webhooks: webhooks::Secrets,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "threadsync", description = "Sync runs, thread refreshes, jobs and workers of a threadsync deployment. Every /v1 call takes `Authorization: Bearer <token>`: the admin token may do everything, the app token may refresh threads and read runs and threads."),
    paths(
        api::list_accounts, api::pause_account, api::resume_account,
        api::start_run, api::get_run, api::run_events, api::retry_run,
        api::refresh_thread, api::get_thread,
        api::list_jobs, api::get_job, api::retry_job, api::cancel_job,
        api::list_workers,
    ),
    modifiers(&BearerScheme),
    tags((name = "accounts"), (name = "runs"), (name = "threads"), (name = "jobs"), (name = "workers"))
)]
pub struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/accounts", get(api::list_accounts))
        .route("/accounts/{id}/pause", post(api::pause_account))
        .route("/accounts/{id}/resume", post(api::resume_account))
        .route(
            "/accounts/{account}/threads/{thread_id}",
            get(api::get_thread),
        )
        .route(
            "/accounts/{account}/threads/{thread_id}/refresh",
            post(api::refresh_thread),
        )
        .route("/runs", post(api::start_run))
        .route("/runs/{id}", get(api::get_run))
        .route("/runs/{id}/events", get(api::run_events))
        .route("/runs/{id}/retry", post(api::retry_run))
        .route("/jobs", get(api::list_jobs))
        .route("/jobs/{id}", get(api::get_job))
        .route("/jobs/{id}/retry", post(api::retry_job))
        .route("/jobs/{id}/cancel", post(api::cancel_job))
        .route("/workers", get(api::list_workers))
        .route("/openapi.json", get(openapi));
    Router::new()
        .nest("/v1", v1)
        .nest("/ui", ui::routes())
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::serve))
        .route(
            "/webhooks/{provider}",
            get(webhooks::handshake)
                .post(webhooks::deliver)
                .layer(DefaultBodyLimit::max(webhooks::BODY_LIMIT)),
        )
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(CompressionLayer::new())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

/// Ready: the database answers and holds every migration this build knows.
async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let want = crate::db::MIGRATOR.iter().map(|m| m.version).max();
    let have: Result<Option<i64>, sqlx::Error> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&s.pool)
            .await;
    match have {
        Ok(have) if have == want => (StatusCode::OK, Json(serde_json::json!({"ready": true}))),
        Ok(have) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"ready": false, "error": format!(
                "migrations not current: the database is at {have:?}, this build needs {want:?} (run threadsync migrate)"
            ), "code": "unavailable"})),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({"ready": false, "error": "database unavailable", "code": "unavailable"}),
            ),
        ),
    }
}

/// Serves until SIGTERM or Ctrl-C.
pub async fn serve(
    pool: PgPool,
    tokens: auth::Tokens,
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    tracing::info!(%listen, "serving the threadsync API");
    let webhooks = webhooks::secrets_from_env();
    for (provider, s) in &webhooks {
        if s.signing.is_some() {
            tracing::info!(provider, "receiving webhooks at /webhooks/{provider}");
        }
    }
    let state = AppState {
        pool,
        tokens,
        webhooks: std::sync::Arc::new(webhooks),
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
