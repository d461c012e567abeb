//! The JSON API under /v1: accounts, runs (with live progress over SSE), thread refreshes,
//! jobs and workers. Every handler is a thin call into the library, as the CLI is.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use crate::queue::admin::{self, JobRow};
use crate::queue::workers::{self, WorkerRow};
use crate::sync::runs::{self, AccountRow, Mode, Requested, RunStatus};
use crate::sync::store::{self, ThreadView};

use super::auth::{AdminAuth, AppAuth};
use super::error::{ApiError, ApiResult, ErrorBody};
use super::AppState;

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn body<T>(b: Body<T>) -> ApiResult<T> {
    Ok(b?.0)
}

async fn account_exists(s: &AppState, id: &str) -> ApiResult<AccountRow> {
    runs::accounts(&s.pool, Some(id))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(format!("no account {id:?}")))
}

#[utoipa::path(get, path = "/v1/accounts", tag = "accounts",
    responses((status = 200, body = [AccountRow]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_accounts(
    _: AdminAuth,
    State(s): State<AppState>,
) -> ApiResult<Json<Vec<AccountRow>>> {
    Ok(Json(runs::accounts(&s.pool, None).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    /// Shown with the pause (default "paused by an operator").
    #[serde(default)]
    pub reason: Option<String>,
}

#[utoipa::path(post, path = "/v1/accounts/{id}/pause", tag = "accounts",
    params(("id" = String, Path, description = "account id")),
    request_body(content = PauseRequest, description = "optional reason"),
    responses((status = 200, body = AccountRow), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn pause_account(
    _: AdminAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    b: Option<Json<PauseRequest>>,
) -> ApiResult<Json<AccountRow>> {
    let reason = pause_reason(b.and_then(|b| b.0.reason));
    if !crate::sync::flow::pause_by_operator(&s.pool, &id, &reason).await? {
        return Err(ApiError::not_found(format!("no account {id:?}")));
    }
    Ok(Json(account_exists(&s, &id).await?))
}

/// An operator's pause reason as stored: its first line, at most 200 characters, or the
/// default when blank.
pub fn pause_reason(reason: Option<String>) -> String {
    reason
        .map(|r| {
            r.lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect::<String>()
        })
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "paused by an operator".into())
}

#[utoipa::path(post, path = "/v1/accounts/{id}/resume", tag = "accounts",
    params(("id" = String, Path, description = "account id")),
    responses((status = 200, body = AccountRow), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn resume_account(
    _: AdminAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<AccountRow>> {
    if !crate::sync::flow::resume(&s.pool, &id).await? {
        return Err(ApiError::not_found(format!("no account {id:?}")));
    }
    Ok(Json(account_exists(&s, &id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub account: String,
    pub mode: Mode,
}

#[utoipa::path(post, path = "/v1/runs", tag = "runs", request_body = RunRequest,
    responses(
        (status = 201, description = "a new run", body = Requested),
        (status = 202, description = "a full resync queued behind the active incremental run", body = Requested),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "a run of the account is already active", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn start_run(
    _: AdminAuth,
    State(s): State<AppState>,
    b: Body<RunRequest>,
) -> ApiResult<impl IntoResponse> {
    let r = body(b)?;
    account_exists(&s, &r.account).await?;
    let mut tx = s.pool.begin().await?;
    let outcome = runs::request_run(&mut tx, &r.account, r.mode).await?;
    tx.commit().await?;
    match outcome {
        Requested::Started { .. } => Ok((StatusCode::CREATED, Json(outcome))),
        Requested::Queued { .. } => Ok((StatusCode::ACCEPTED, Json(outcome))),
        Requested::Active { run_id } => Err(ApiError::conflict(format!(
            "a sync of {} is already running: run {run_id}",
            r.account
        ))),
    }
}

async fn run_or_404(s: &AppState, id: i64) -> ApiResult<RunStatus> {
    runs::run_status(&s.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no sync run {id}")))
}

#[utoipa::path(get, path = "/v1/runs/{id}", tag = "runs",
    params(("id" = i64, Path, description = "run id")),
    responses((status = 200, body = RunStatus), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_run(
    _: AppAuth,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<RunStatus>> {
    Ok(Json(run_or_404(&s, id).await?))
}

/// How often a run's event stream reports.
const EVENT_EVERY: Duration = Duration::from_secs(1);

#[utoipa::path(get, path = "/v1/runs/{id}/events", tag = "runs",
    params(("id" = i64, Path, description = "run id")),
    responses((status = 200, description = "text/event-stream: `progress` events with the run's status about once a second, then one `end` event with its outcome"),
               (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn run_events(
    _: AppAuth,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    run_event_stream(s, id).await
}

/// A run's event stream: its status now, then about once a second until it ends (one
/// `end` event), or 404 when there is no such run. The API's and the dashboard's streams.
pub async fn run_event_stream(
    s: AppState,
    id: i64,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let first = run_or_404(&s, id).await?;
    let stream = futures::stream::unfold(
        (s, Some(first), false),
        move |(s, next, ended)| async move {
            if ended {
                return None;
            }
            let status = match next {
                Some(st) => Ok(Some(st)),
                None => {
                    tokio::time::sleep(EVENT_EVERY).await;
                    runs::run_status(&s.pool, id).await
                }
            };
            let (event, ended) = match status {
                Ok(Some(st)) => {
                    let over = st.state == "done" || st.state == "failed";
                    let name = if over { "end" } else { "progress" };
                    (
                        Event::default()
                            .event(name)
                            .json_data(&st)
                            .unwrap_or_default(),
                        over,
                    )
                }
                Ok(None) => (
                    Event::default().event("end").data("{\"state\":\"gone\"}"),
                    true,
                ),
                // A database hiccup: say so and keep going.
                Err(e) => {
                    tracing::debug!(error = %e, "run events: status read failed");
                    (
                        Event::default()
                            .event("error")
                            .data("{\"error\":\"database unavailable\"}"),
                        false,
                    )
                }
            };
            Some((Ok(event), (s, None, ended)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Retried {
    pub run_id: i64,
    pub jobs_retried: u64,
}

#[utoipa::path(post, path = "/v1/runs/{id}/retry", tag = "runs",
    params(("id" = i64, Path, description = "run id")),
    responses((status = 200, body = Retried), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn retry_run(
    _: AdminAuth,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<Retried>> {
    run_or_404(&s, id).await?;
    match runs::retry_run(&s.pool, id).await {
        Ok(n) => Ok(Json(Retried {
            run_id: id,
            jobs_retried: n,
        })),
        Err(e) => match e.downcast::<sqlx::Error>() {
            Ok(db) => Err(db.into()),
            Err(other) => Err(ApiError::conflict(other.to_string())),
        },
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Enqueued {
    /// The refresh job (the one already pending for this thread, when there is one).
    pub job_id: i64,
}

#[utoipa::path(post, path = "/v1/accounts/{account}/threads/{thread_id}/refresh", tag = "threads",
    params(("account" = String, Path), ("thread_id" = String, Path)),
    responses((status = 202, body = Enqueued), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn refresh_thread(
    _: AppAuth,
    State(s): State<AppState>,
    Path((account, thread_id)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Enqueued>)> {
    let r = sqlx::query_scalar::<_, i64>("SELECT threadsync.refresh_thread($1, $2)")
        .bind(&account)
        .bind(&thread_id)
        .fetch_one(&s.pool)
        .await;
    match r {
        Ok(job_id) => Ok((StatusCode::ACCEPTED, Json(Enqueued { job_id }))),
        // The function's own checks: an unknown account, one without thread fetches, a bad id.
        Err(sqlx::Error::Database(d)) if d.code().as_deref() == Some("22023") => {
            let m = d.message().trim_start_matches("threadsync: ").to_string();
            if m.starts_with("no account") {
                Err(ApiError::not_found(m))
            } else {
                Err(ApiError::bad_request(m))
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[utoipa::path(get, path = "/v1/accounts/{account}/threads/{thread_id}", tag = "threads",
    params(("account" = String, Path), ("thread_id" = String, Path)),
    responses((status = 200, description = "the thread and its newest 100 messages", body = ThreadView),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_thread(
    _: AppAuth,
    State(s): State<AppState>,
    Path((account, thread_id)): Path<(String, String)>,
) -> ApiResult<Json<ThreadView>> {
    store::thread_view(&s.pool, &account, &thread_id, 100)
        .await?
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!("no thread {thread_id:?} of account {account:?}"))
        })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    /// pending, running, done, failed or cancelled.
    pub status: Option<String>,
    pub kind: Option<String>,
    /// Jobs whose payload names this account.
    pub account: Option<String>,
    pub run: Option<i64>,
    /// JSON the payload must contain, e.g. {"thread_id":"42"}.
    pub payload: Option<String>,
    /// Only jobs with a smaller id (the `next_before_id` of the previous page).
    pub before_id: Option<i64>,
    /// 1..=500, default 50.
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobRow>,
    /// Pass as `before_id` for the next page; absent on the last one.
    pub next_before_id: Option<i64>,
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(JobQuery),
    responses((status = 200, body = JobPage), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_jobs(
    _: AdminAuth,
    State(s): State<AppState>,
    q: Result<Query<JobQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<JobPage>> {
    let q = q?.0;
    if let Some(st) = &q.status {
        if !admin::STATUSES.contains(&st.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown status {st:?} (one of {})",
                admin::STATUSES.join(", ")
            )));
        }
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1..=500"));
    }
    let mut payload: Option<Value> = match &q.payload {
        Some(p) => match serde_json::from_str::<Value>(p) {
            Ok(v @ Value::Object(_)) => Some(v),
            _ => return Err(ApiError::bad_request("payload must be a JSON object")),
        },
        None => None,
    };
    if let Some(a) = &q.account {
        let p = payload.get_or_insert_with(|| json!({}));
        if let Some(o) = p.as_object_mut() {
            o.insert("account".into(), json!(a));
        }
    }
    let filter = admin::Filter {
        status: q.status,
        kind: q.kind,
        run_id: q.run,
        payload,
        before_id: q.before_id,
        limit,
    };
    let jobs = admin::list(&s.pool, &filter).await?;
    let next_before_id = (jobs.len() as i64 == limit)
        .then(|| jobs.last().map(|j| j.id))
        .flatten();
    Ok(Json(JobPage {
        jobs,
        next_before_id,
    }))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, body = JobRow), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_job(
    _: AdminAuth,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<JobRow>> {
    admin::show(&s.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))
}

async fn job_action(s: &AppState, id: i64, r: anyhow::Result<()>) -> ApiResult<Json<JobRow>> {
    if let Err(e) = r {
        return Err(match e.downcast::<sqlx::Error>() {
            Ok(db) => db.into(),
            Err(e) if e.to_string().starts_with("no job") => ApiError::not_found(e.to_string()),
            Err(e) => ApiError::conflict(e.to_string()),
        });
    }
    get_job_row(s, id).await
}

async fn get_job_row(s: &AppState, id: i64) -> ApiResult<Json<JobRow>> {
    admin::show(&s.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, body = JobRow), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn retry_job(
    _: AdminAuth,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<JobRow>> {
    let r = admin::retry(&s.pool, id).await;
    job_action(&s, id, r).await
}

#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, body = JobRow), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel_job(
    _: AdminAuth,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<JobRow>> {
    let r = admin::cancel(&s.pool, id).await;
    job_action(&s, id, r).await
}

#[utoipa::path(get, path = "/v1/workers", tag = "workers",
    responses((status = 200, description = "live worker runtimes", body = [WorkerRow])),
    security(("bearer" = [])))]
pub async fn list_workers(
    _: AdminAuth,
    State(s): State<AppState>,
) -> ApiResult<Json<Vec<WorkerRow>>> {
    Ok(Json(workers::list(&s.pool, false).await?))
}
