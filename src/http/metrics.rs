//! Prometheus metrics. `/metrics` on `serve`: the queue and the sync as the database holds
//! them, read at each scrape (queue depth by kind and status, the oldest due job's age,
//! runs by state, paused accounts, live workers). `threadsync worker --metrics ADDR`: what
//! that process counts (its jobs by kind and outcome, provider requests, pacing).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::AppState;

type Labels = Vec<(&'static str, String)>;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn serve(State(s): State<AppState>) -> impl IntoResponse {
    match render(&s).await {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(e) => {
            tracing::warn!(error = %e, "metrics scrape failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "database unavailable\n".to_string(),
            )
        }
    }
}

async fn render(s: &AppState) -> anyhow::Result<String> {
    let mut registry = Registry::with_prefix("threadsync");
    let jobs = Family::<Labels, Gauge>::default();
    let depth = crate::queue::admin::depth(&s.pool).await?;
    for k in &depth.by_kind {
        jobs.get_or_create(&vec![
            ("kind", k.kind.clone()),
            ("status", k.status.clone()),
        ])
        .set(k.jobs);
    }
    registry.register("jobs", "Jobs by kind and status", jobs);
    let oldest = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    oldest.set(depth.oldest_pending_secs.unwrap_or(0.0));
    registry.register(
        "oldest_pending_seconds",
        "Age of the oldest due pending job (0: none)",
        oldest,
    );
    let runs = Family::<Labels, Gauge>::default();
    let by_state: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM threadsync.sync_runs GROUP BY state")
            .fetch_all(&s.pool)
            .await?;
    for (state, n) in by_state {
        runs.get_or_create(&vec![("state", state)]).set(n);
    }
    registry.register("sync_runs", "Sync runs by state", runs);
    let paused = Gauge::<i64>::default();
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM threadsync.accounts WHERE paused_until > now()")
            .fetch_one(&s.pool)
            .await?;
    paused.set(n);
    registry.register("accounts_paused", "Accounts paused now", paused);
    let alive = Gauge::<i64>::default();
    let w: i64 =
        sqlx::query_scalar("SELECT count(*) FROM threadsync.workers WHERE alive_until > now()")
            .fetch_one(&s.pool)
            .await?;
    alive.set(w);
    registry.register("workers_alive", "Worker runtimes heartbeating", alive);
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

/// Serves this process's own counters (worker and engine) at /metrics until `shutdown`.
pub async fn serve_process(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            let mut registry = Registry::with_prefix("threadsync");
            crate::worker::metrics::register(&mut registry);
            crate::sync::metrics::register(&mut registry);
            let mut out = String::new();
            match encode(&mut out, &registry) {
                Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], out),
                Err(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    "encoding failed\n".to_string(),
                ),
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "the metrics server stopped");
    }
}
