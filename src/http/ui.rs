//! The dashboard under /ui: server-rendered pages for operators, behind the admin token.
//! An overview of the queue, workers and accounts; an account's runs (the running one live
//! over Server-Sent Events), recent errors and buttons; the jobs with filters, keyset pages
//! and retry/cancel. Every button calls the same library functions as the /v1 API.
//!
//! Log in with the admin token once (session.rs): the browser then holds only a random
//! session id in an `HttpOnly; SameSite=Strict; Path=/ui` cookie. That cookie never reaches
//! /v1, so the page's live progress comes from a cookie-authenticated twin of the API's
//! event stream, /ui/runs/{id}/events, which runs the same stream (api::run_event_stream).
//! Every POST form carries the session's CSRF token.

mod session;
mod view;

use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::json;

use crate::queue::admin::{self, Filter, JobRow};
use crate::queue::workers;
use crate::sync::runs::{self, AccountRow, Mode, Requested, RunStatus};

use super::auth::Scope;
use super::AppState;
use session::{Admin, CsrfForm, Post, Sessions, StreamAdmin};
use view::{
    badge, button_form, clip, csrf_field, urlencode, when, when_opt, Page, UiError, UiResult,
};

/// The dashboard's routes, to nest at /ui. Its sessions live in this router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/accounts/{id}", get(account_page))
        .route("/accounts/{id}/runs", post(start_run))
        .route("/accounts/{id}/pause", post(pause))
        .route("/accounts/{id}/resume", post(resume))
        .route("/runs/{id}/events", get(run_events))
        .route("/jobs", get(jobs_page))
        .route("/jobs/{id}/retry", post(retry_job))
        .route("/jobs/{id}/cancel", post(cancel_job))
        .fallback(no_such_page)
        .layer(Extension(Sessions::default()))
}

async fn no_such_page() -> UiError {
    UiError::not_found("No such dashboard page.")
}

/// How many minutes the overview's throughput covers, and how many of the newest jobs it
/// reads for them at most.
const RATE_MINUTES: i32 = 10;
const RATE_SCAN: i64 = 200_000;
/// Rows per jobs page, runs and errors on an account page.
const JOBS_PER_PAGE: i64 = 50;
const RECENT_RUNS: i64 = 15;
const RECENT_ERRORS: i64 = 20;

// ---------------------------------------------------------------- login and logout

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_form(
    Extension(sessions): Extension<Sessions>,
    headers: HeaderMap,
    q: Result<Query<LoginQuery>, QueryRejection>,
) -> Response {
    let next = q.ok().and_then(|q| q.0.next);
    if session::session_in(&sessions, &headers).is_some() {
        let to = next
            .as_deref()
            .and_then(session::safe_next)
            .unwrap_or("/ui");
        return Redirect::to(to).into_response();
    }
    login_page(StatusCode::OK, next.as_deref(), None)
}

fn login_page(status: StatusCode, next: Option<&str>, error: Option<&str>) -> Response {
    let next = next.and_then(session::safe_next);
    let body = html! {
        form.login method="post" action="/ui/login" {
            h1 { "threadsync dashboard" }
            @if let Some(e) = error { p.alert { (e) } }
            label for="token" { "Admin token" }
            input #token type="password" name="token" autocomplete="current-password" required autofocus;
            @if let Some(n) = next { input type="hidden" name="next" value=(n); }
            button.primary type="submit" { "Log in" }
            p.muted { "The admin token of this server (" code { "THREADSYNC_ADMIN_TOKEN" } "). The browser keeps only a session id." }
        }
    };
    Page {
        title: "Log in",
        here: "",
        session: None,
        body,
        script: None,
        status,
    }
    .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

/// Checks the admin token and starts a session. No CSRF token here (there is no session
/// yet, and only the admin token itself logs in); a POST from another site is refused.
async fn login(
    State(s): State<AppState>,
    Extension(sessions): Extension<Sessions>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !session::same_origin(&headers) {
        return view::forbidden_cross_origin();
    }
    let Ok(Form(form)) = form else {
        return login_page(
            StatusCode::BAD_REQUEST,
            None,
            Some("Enter the admin token."),
        );
    };
    let next = form.next.as_deref();
    match s.tokens.scope_of(form.token.trim()) {
        Some(Scope::Admin) => {
            // A new id at every login; a session this browser already had ends.
            if let Some(old) = session::session_in(&sessions, &headers) {
                sessions.remove(&old.id);
            }
            let started = sessions.create();
            let to = next.and_then(session::safe_next).unwrap_or("/ui");
            let mut r = Redirect::to(to).into_response();
            r.headers_mut()
                .insert(header::SET_COOKIE, session::set_cookie(&started, &headers));
            r
        }
        Some(Scope::App) => login_page(
            StatusCode::FORBIDDEN,
            next,
            Some("That is the app token: the dashboard needs the admin token."),
        ),
        None => {
            // Slows guessing; the comparison itself is constant-time.
            tokio::time::sleep(Duration::from_millis(250)).await;
            login_page(StatusCode::UNAUTHORIZED, next, Some("Wrong token."))
        }
    }
}

#[derive(Deserialize)]
struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

impl CsrfForm for CsrfOnly {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

async fn logout(
    Extension(sessions): Extension<Sessions>,
    Post(session, _): Post<CsrfOnly>,
) -> Response {
    sessions.remove(&session.id);
    let mut r = Redirect::to("/ui/login").into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    r
}

// ---------------------------------------------------------------- notes after a POST

/// What the page after a successful POST says. Only these fixed messages: a link cannot
/// make a page say anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Note {
    Started(i64),
    Queued(i64),
    Active(i64),
    Paused,
    Resumed,
    Retried(i64),
    Cancelled(i64),
}

impl Note {
    fn code(self) -> String {
        match self {
            Note::Started(n) => format!("started-{n}"),
            Note::Queued(n) => format!("queued-{n}"),
            Note::Active(n) => format!("active-{n}"),
            Note::Paused => "paused".into(),
            Note::Resumed => "resumed".into(),
            Note::Retried(n) => format!("retried-{n}"),
            Note::Cancelled(n) => format!("cancelled-{n}"),
        }
    }

    fn parse(s: &str) -> Option<Note> {
        let (code, n) = match s.split_once('-') {
            Some((c, n)) => (c, n.parse::<i64>().ok()),
            None => (s, None),
        };
        Some(match (code, n) {
            ("started", Some(n)) => Note::Started(n),
            ("queued", Some(n)) => Note::Queued(n),
            ("active", Some(n)) => Note::Active(n),
            ("paused", None) => Note::Paused,
            ("resumed", None) => Note::Resumed,
            ("retried", Some(n)) => Note::Retried(n),
            ("cancelled", Some(n)) => Note::Cancelled(n),
            _ => return None,
        })
    }

    fn show(self) -> Markup {
        let text = match self {
            Note::Started(n) => format!("Started run {n}."),
            Note::Queued(n) => format!("A full resync starts when run {n} (incremental) ends."),
            Note::Active(n) => {
                format!("Run {n} of this account is already active: nothing new started.")
            }
            Note::Paused => "Paused: the account's jobs park until it is resumed.".into(),
            Note::Resumed => "Resumed: its parked jobs run again.".into(),
            Note::Retried(n) => format!("Job {n} is pending again."),
            Note::Cancelled(n) => format!("Job {n} was cancelled."),
        };
        html! { p.note role="status" { (text) } }
    }
}

fn note_of(q: Option<&str>) -> Option<Note> {
    q.and_then(Note::parse)
}

// ---------------------------------------------------------------- overview

async fn overview(Admin(sess): Admin, State(s): State<AppState>) -> UiResult<Response> {
    let (depth, rate, alive, accounts) = tokio::try_join!(
        admin::depth(&s.pool),
        admin::done_per_minute(&s.pool, RATE_MINUTES, RATE_SCAN),
        workers::list(&s.pool, false),
        runs::accounts(&s.pool, None),
    )?;
    let mut kinds: Vec<&str> = depth.by_kind.iter().map(|d| d.kind.as_str()).collect();
    kinds.dedup();
    let count = |kind: Option<&str>, status: &str| -> i64 {
        depth
            .by_kind
            .iter()
            .filter(|d| d.status == status && kind.is_none_or(|k| d.kind == k))
            .map(|d| d.jobs)
            .sum()
    };
    let last_minute = rate.per_minute.first().copied().unwrap_or(0);
    let peak = rate.per_minute.iter().copied().max().unwrap_or(0).max(1);
    let paused = accounts.iter().filter(|a| is_paused(a)).count();
    let body = html! {
        h1 { "Overview" }
        div.cards {
            div.card { div.k { "Pending now" } div.v #pending-jobs { (count(None, "pending")) } }
            div.card { div.k { "Oldest due pending" } div.v #oldest-pending {
                @match depth.oldest_pending_secs { Some(secs) => { (view::duration(secs)) }, None => { "–" } }
            } }
            div.card { div.k { "Done jobs/s, last 60 s" } div.v #jobs-per-second { (format!("{:.1}", last_minute as f64 / 60.0)) } }
            div.card { div.k { "Failed" } div.v #failed-jobs { (count(None, "failed")) } }
            div.card { div.k { "Workers alive" } div.v #workers-alive { (alive.len()) } }
            div.card { div.k { "Accounts paused" } div.v { (paused) " / " (accounts.len()) } }
        }

        h2 { "Done jobs per minute" }
        table #throughput {
            thead { tr { th { "minute" } th.num { "done" } th.num { "jobs/s" } th.wide { "" } } }
            tbody {
                @for (i, done) in rate.per_minute.iter().enumerate() {
                    @let end = rate.until - chrono::Duration::minutes(i as i64);
                    tr {
                        td { @if i == 0 { "last 60 s" } @else { (i) "–" (i + 1) " min ago" }
                             span.muted { " (" ((end - chrono::Duration::minutes(1)).format("%H:%M:%S")) "–" (end.format("%H:%M:%S")) " UTC)" } }
                        td.num { (done) }
                        td.num { (format!("{:.1}", *done as f64 / 60.0)) }
                        td { meter.bar min="0" max=(peak) value=(done) {} }
                    }
                }
            }
        }
        @if !rate.complete {
            p.muted { "Counted over the newest " (RATE_SCAN) " jobs, which all began inside this window: the figures are lower bounds." }
        }

        h2 { "Queue depth" }
        table #depth {
            thead { tr { th { "kind" } @for st in admin::STATUSES { th.num { (st) } } } }
            tbody {
                @for k in &kinds {
                    tr {
                        td { a href={ "/ui/jobs?kind=" (urlencode(k)) } { (k) } }
                        @for st in admin::STATUSES {
                            td.num { @let c = count(Some(k), st);
                                @if c > 0 { a href={ "/ui/jobs?kind=" (urlencode(k)) "&status=" (st) } { (c) } } @else { span.muted { "0" } } }
                        }
                    }
                }
                @if kinds.is_empty() { tr { td.muted colspan="6" { "No jobs." } } }
            }
            tfoot { tr { th { "all" } @for st in admin::STATUSES { th.num { (count(None, st)) } } } }
        }

        h2 { "Workers" }
        table #workers {
            thead { tr { th { "name" } th { "host" } th.num { "pid" } th.num { "slots in use" } th { "started" } th { "last heartbeat" } } }
            tbody {
                @for w in &alive {
                    tr { td { (w.name) } td { (w.host) } td.num { (w.pid) } td.num { (w.slots_in_use) " / " (w.slots) }
                         td { (when(w.started_at)) } td { (when(w.last_heartbeat)) } }
                }
                @if alive.is_empty() { tr { td.muted colspan="6" { "No worker is alive." } } }
            }
        }

        h2 { "Accounts" }
        (accounts_table(&accounts))
    };
    Ok(Page::new("Overview", "overview", &sess, body).into_response())
}

fn is_paused(a: &AccountRow) -> bool {
    a.paused_until.is_some_and(|t| t > chrono::Utc::now())
}

fn account_state(a: &AccountRow) -> Markup {
    html! {
        @if is_paused(a) {
            (badge("paused")) " " span.pause-reason { (a.pause_reason.as_deref().unwrap_or("")) }
        } @else {
            (badge("active"))
        }
    }
}

fn accounts_table(accounts: &[AccountRow]) -> Markup {
    html! {
        table #accounts {
            thead { tr { th { "account" } th { "provider" } th { "state" } th { "last run" } th { "started" } th { "finished" } th { "queued" } th { "synced from" } } }
            tbody {
                @for a in accounts {
                    tr data-account=(a.id) {
                        td { a href={ "/ui/accounts/" (urlencode(&a.id)) } { (a.id) } }
                        td { (a.provider) }
                        td { (account_state(a)) }
                        td { @if let Some(r) = a.last_run_id {
                                "run " (r) " " (a.last_run_mode.as_deref().unwrap_or("")) " "
                                (badge(a.last_run_state.as_deref().unwrap_or("?")))
                             } @else { span.muted { "none yet" } } }
                        td { (when_opt(a.last_run_started_at)) }
                        td { (when_opt(a.last_run_finished_at)) }
                        td { (a.queued_mode.as_deref().unwrap_or("")) }
                        td { (when_opt(a.synced_from)) }
                    }
                }
                @if accounts.is_empty() { tr { td.muted colspan="8" { "No accounts registered." } } }
            }
        }
    }
}

// ---------------------------------------------------------------- an account

#[derive(Deserialize)]
struct NoteQuery {
    note: Option<String>,
}

/// The counters the live panel shows, in order.
const RUN_FIELDS: [(&str, &str); 10] = [
    ("pages_listed", "pages listed"),
    ("threads_seen", "threads seen"),
    ("threads_fetched", "threads fetched"),
    ("threads_skipped", "threads skipped"),
    ("threads_deleted", "threads deleted"),
    ("messages_written", "messages written"),
    ("http_calls", "HTTP calls"),
    ("bad_rows", "bad rows"),
    ("jobs_active", "jobs active"),
    ("jobs_failed", "jobs failed"),
];
const DELIVERY_FIELDS: [(&str, &str); 4] = [
    ("checks_made", "status checks"),
    ("statuses_changed", "statuses changed"),
    ("settled", "settled"),
    ("expired", "expired"),
];

fn field(st: &RunStatus, name: &str) -> i64 {
    match name {
        "pages_listed" => st.pages_listed,
        "threads_seen" => st.threads_seen,
        "threads_fetched" => st.threads_fetched,
        "threads_skipped" => st.threads_skipped,
        "threads_deleted" => st.threads_deleted,
        "messages_written" => st.messages_written,
        "http_calls" => st.http_calls,
        "bad_rows" => st.bad_rows,
        "jobs_active" => st.jobs_active,
        "jobs_failed" => st.jobs_failed,
        "checks_made" => st.checks_made,
        "statuses_changed" => st.statuses_changed,
        "settled" => st.settled,
        "expired" => st.expired,
        _ => 0,
    }
}

fn run_is_over(state: &str) -> bool {
    state == "done" || state == "failed"
}

async fn account_page(
    Admin(sess): Admin,
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<NoteQuery>, QueryRejection>,
) -> UiResult<Response> {
    let Path(id) = id.map_err(|_| UiError::bad_request("Bad account id."))?;
    let note = note_of(q.ok().and_then(|q| q.0.note).as_deref());
    let account = runs::accounts(&s.pool, Some(&id))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| UiError::not_found(&format!("No account {id:?}.")))?;
    let errors_filter = Filter {
        status: Some("failed".into()),
        payload: Some(json!({ "account": id })),
        limit: RECENT_ERRORS,
        ..Filter::default()
    };
    let live = async {
        match account.last_run_id {
            Some(r) => runs::run_status(&s.pool, r).await,
            None => Ok(None),
        }
    };
    let (recent, errors, live) = tokio::try_join!(
        runs::recent_runs(&s.pool, &id, RECENT_RUNS),
        admin::list(&s.pool, &errors_filter),
        live,
    )?;
    let show_deliveries = account.provider == "smseagle"
        || live
            .as_ref()
            .is_some_and(|l| l.checks_made > 0 || l.statuses_changed > 0);
    let base = format!("/ui/accounts/{}", urlencode(&id));
    let body = html! {
        p.muted { a href="/ui" { "Overview" } " / account" }
        h1 { "Account " (id) " " (account_state(&account)) }
        @if let Some(n) = note { (n.show()) }
        p.muted {
            "provider " (account.provider) " · synced from " (when_opt(account.synced_from))
            @if let Some(m) = &account.queued_mode { " · queued: " (m) " run" }
        }
        div.actions {
            (button_form(&sess, &format!("{base}/runs"), "Full resync", "primary", html! { input type="hidden" name="mode" value="full"; }))
            (button_form(&sess, &format!("{base}/runs"), "Incremental sync", "", html! { input type="hidden" name="mode" value="incremental"; }))
            @if is_paused(&account) {
                (button_form(&sess, &format!("{base}/resume"), "Resume", "", html! {}))
            } @else {
                form.inline method="post" action={ (base) "/pause" } {
                    (csrf_field(&sess))
                    input type="text" name="reason" maxlength="200" placeholder="reason (optional)";
                    " "
                    button.danger type="submit" { "Pause" }
                }
            }
        }

        @if let Some(st) = &live {
            h2 { "Run " (st.run_id) }
            div.live #live-run data-run=(st.run_id) data-state=(st.state) data-live=(if run_is_over(&st.state) { "over" } else { "connecting" }) {
                div {
                    span data-field="state" data-badge="1" class={ "badge " (st.state) } { (st.state) }
                    " " (st.mode) " · started " (when(st.started_at))
                    " · finished " span data-when="finished_at" { (when_opt(st.finished_at)) }
                    " · " span.muted #live-status { @if run_is_over(&st.state) { "ended" } @else { "live" } }
                }
                dl {
                    @for (name, label) in RUN_FIELDS { div { dt { (label) } dd data-field=(name) { (field(st, name)) } } }
                    @if show_deliveries {
                        @for (name, label) in DELIVERY_FIELDS { div { dt { (label) } dd data-field=(name) { (field(st, name)) } } }
                    }
                }
                p.err data-field="last_error" { (st.last_error.as_deref().unwrap_or("")) }
                p { a href={ "/ui/jobs?run=" (st.run_id) } { "this run's jobs" } " · "
                    a href={ "/ui/jobs?run=" (st.run_id) "&status=failed" } { "its failed jobs" } }
            }
        }

        h2 { "Recent runs" }
        table #runs {
            thead { tr { th.num { "run" } th { "mode" } th { "state" } th { "started" } th { "finished" }
                         th.num { "threads fetched" } th.num { "messages" } th.num { "HTTP calls" } th.num { "bad rows" } th { "error" } } }
            tbody {
                @for r in &recent {
                    tr data-run=(r.run_id) {
                        td.num { a href={ "/ui/jobs?run=" (r.run_id) } { (r.run_id) } }
                        td { (r.mode) }
                        td { span data-field="state" data-badge="1" class={ "badge " (r.state) } { (r.state) } }
                        td { (when(r.started_at)) }
                        td data-when="finished_at" { (when_opt(r.finished_at)) }
                        td.num data-field="threads_fetched" { (r.threads_fetched) }
                        td.num data-field="messages_written" { (r.messages_written) }
                        td.num data-field="http_calls" { (r.http_calls) }
                        td.num data-field="bad_rows" { (r.bad_rows) }
                        td.err data-field="last_error" { (clip(r.last_error.as_deref().unwrap_or(""), 300)) }
                    }
                }
                @if recent.is_empty() { tr { td.muted colspan="10" { "No runs yet." } } }
            }
        }

        h2 { "Recent errors" }
        (errors_table(&errors))
        p { a href={ "/ui/jobs?status=failed&account=" (urlencode(&id)) } { "all failed jobs of " (id) } }
    };
    let mut page = Page::new(&id, "account", &sess, body);
    page.script = Some(LIVE_JS);
    Ok(page.into_response())
}

fn errors_table(errors: &[JobRow]) -> Markup {
    html! {
        table #errors {
            thead { tr { th.num { "job" } th { "kind" } th.num { "run" } th { "finished" } th.num { "attempts" } th { "last error" } } }
            tbody {
                @for j in errors {
                    tr { td.num { a href={ "/ui/jobs?status=failed&before=" (j.id + 1) } { (j.id) } } td { (j.kind) }
                         td.num { (j.run_id.map(|r| r.to_string()).unwrap_or_default()) }
                         td { (when_opt(j.finished_at)) } td.num { (j.attempts) }
                         td.err { (clip(j.last_error.as_deref().unwrap_or(""), 500)) } }
                }
                @if errors.is_empty() { tr { td.muted colspan="6" { "No failed jobs." } } }
            }
        }
    }
}

/// Follows the shown run over /ui/runs/{id}/events: every element inside `[data-run=ID]`
/// with a `data-field` shows that field of each event (`data-when`: "just now" once the
/// field is set). Text only, never HTML.
const LIVE_JS: &str = r#"
(function () {
  var panel = document.getElementById('live-run');
  if (!panel || panel.dataset.live === 'over') return;
  var run = panel.dataset.run;
  var status = document.getElementById('live-status');
  var es = new EventSource('/ui/runs/' + encodeURIComponent(run) + '/events');
  function show(st) {
    document.querySelectorAll('[data-run="' + run + '"] [data-field]').forEach(function (el) {
      var v = st[el.dataset.field];
      if (v === undefined) return;
      el.textContent = v === null ? '' : String(v);
      if (el.dataset.badge) el.className = 'badge ' + String(v);
    });
    document.querySelectorAll('[data-run="' + run + '"] [data-when]').forEach(function (el) {
      var v = st[el.dataset.when];
      if (v) { el.textContent = 'just now'; el.title = String(v); }
    });
    panel.dataset.state = st.state;
  }
  es.addEventListener('open', function () { panel.dataset.live = 'live'; status.textContent = 'live'; });
  es.addEventListener('progress', function (e) { show(JSON.parse(e.data)); });
  es.addEventListener('end', function (e) {
    es.close();
    show(JSON.parse(e.data));
    panel.dataset.live = 'over';
    status.textContent = 'ended';
  });
  es.addEventListener('error', function () {
    if (es.readyState !== EventSource.CLOSED) { status.textContent = 'reconnecting'; }
  });
})();
"#;

#[derive(Deserialize)]
struct RunForm {
    #[serde(default)]
    csrf: String,
    mode: Mode,
}

impl CsrfForm for RunForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

async fn known_account(s: &AppState, id: &str) -> UiResult<AccountRow> {
    runs::accounts(&s.pool, Some(id))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| UiError::not_found(&format!("No account {id:?}.")))
}

fn back_to_account(id: &str, note: Note) -> Response {
    Redirect::to(&format!(
        "/ui/accounts/{}?note={}",
        urlencode(id),
        note.code()
    ))
    .into_response()
}

/// Starts a run as `POST /v1/runs` does (runs::request_run).
async fn start_run(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    Post(_, form): Post<RunForm>,
) -> UiResult<Response> {
    let Path(id) = id.map_err(|_| UiError::bad_request("Bad account id."))?;
    known_account(&s, &id).await?;
    let mut tx = s.pool.begin().await?;
    let outcome = runs::request_run(&mut tx, &id, form.mode).await?;
    tx.commit().await?;
    let note = match outcome {
        Requested::Started { run_id } => Note::Started(run_id),
        Requested::Queued { after_run } => Note::Queued(after_run),
        Requested::Active { run_id } => Note::Active(run_id),
    };
    Ok(back_to_account(&id, note))
}

#[derive(Deserialize)]
struct PauseForm {
    #[serde(default)]
    csrf: String,
    reason: Option<String>,
}

impl CsrfForm for PauseForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

async fn pause(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    Post(_, form): Post<PauseForm>,
) -> UiResult<Response> {
    let Path(id) = id.map_err(|_| UiError::bad_request("Bad account id."))?;
    let reason = super::api::pause_reason(form.reason);
    if !crate::sync::flow::pause_by_operator(&s.pool, &id, &reason).await? {
        return Err(UiError::not_found(&format!("No account {id:?}.")));
    }
    Ok(back_to_account(&id, Note::Paused))
}

async fn resume(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    Post(_, _): Post<CsrfOnly>,
) -> UiResult<Response> {
    let Path(id) = id.map_err(|_| UiError::bad_request("Bad account id."))?;
    if !crate::sync::flow::resume(&s.pool, &id).await? {
        return Err(UiError::not_found(&format!("No account {id:?}.")));
    }
    Ok(back_to_account(&id, Note::Resumed))
}

/// The run's progress for the account page: the API's event stream, behind the session.
async fn run_events(
    _: StreamAdmin,
    State(s): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> Response {
    let Ok(Path(id)) = id else {
        return (StatusCode::BAD_REQUEST, "bad run id").into_response();
    };
    match super::api::run_event_stream(s, id).await {
        Ok(sse) => sse.into_response(),
        Err(e) => e.into_response(),
    }
}

// ---------------------------------------------------------------- jobs

/// The jobs page's filters, as the form sends them (empty fields are "any").
#[derive(Debug, Default, Deserialize)]
struct JobsQuery {
    status: Option<String>,
    kind: Option<String>,
    account: Option<String>,
    run: Option<String>,
    before: Option<String>,
    note: Option<String>,
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// The filters, checked.
struct JobsView {
    status: Option<String>,
    kind: Option<String>,
    account: Option<String>,
    run: Option<i64>,
    before: Option<i64>,
}

impl JobsView {
    fn parse(q: &JobsQuery) -> Result<JobsView, String> {
        let status = given(&q.status).map(str::to_string);
        if let Some(st) = &status {
            if !admin::STATUSES.contains(&st.as_str()) {
                return Err(format!(
                    "Unknown status {st:?}: one of {}.",
                    admin::STATUSES.join(", ")
                ));
            }
        }
        let number = |v: &Option<String>, what: &str| -> Result<Option<i64>, String> {
            given(v)
                .map(|n| {
                    n.parse::<i64>()
                        .map_err(|_| format!("{what} must be a number."))
                })
                .transpose()
        };
        Ok(JobsView {
            status,
            kind: given(&q.kind).map(str::to_string),
            account: given(&q.account).map(str::to_string),
            run: number(&q.run, "Run")?,
            before: number(&q.before, "Before")?,
        })
    }

    /// This view's query string, on the page before `before` (or the first page).
    fn query(&self, before: Option<i64>) -> String {
        let mut parts = Vec::new();
        if let Some(v) = &self.status {
            parts.push(format!("status={}", urlencode(v)));
        }
        if let Some(v) = &self.kind {
            parts.push(format!("kind={}", urlencode(v)));
        }
        if let Some(v) = &self.account {
            parts.push(format!("account={}", urlencode(v)));
        }
        if let Some(v) = self.run {
            parts.push(format!("run={v}"));
        }
        if let Some(v) = before {
            parts.push(format!("before={v}"));
        }
        parts.join("&")
    }

    fn filter(&self) -> Filter {
        Filter {
            status: self.status.clone(),
            kind: self.kind.clone(),
            run_id: self.run,
            payload: self.account.as_ref().map(|a| json!({ "account": a })),
            before_id: self.before,
            limit: JOBS_PER_PAGE,
        }
    }
}

async fn jobs_page(
    Admin(sess): Admin,
    State(s): State<AppState>,
    q: Result<Query<JobsQuery>, QueryRejection>,
) -> UiResult<Response> {
    let q = q.map(|q| q.0).unwrap_or_default();
    let v = JobsView::parse(&q).map_err(|e| UiError::bad_request(&e))?;
    let note = note_of(given(&q.note));
    let filter = v.filter();
    let (jobs, accounts) =
        tokio::try_join!(admin::list(&s.pool, &filter), runs::accounts(&s.pool, None))?;
    let next = (jobs.len() as i64 == JOBS_PER_PAGE)
        .then(|| jobs.last().map(|j| j.id))
        .flatten();
    let here = v.query(v.before);
    let kinds = crate::jobs::kinds();
    let body = html! {
        h1 { "Jobs" }
        @if let Some(n) = note { (n.show()) }
        form.filters method="get" action="/ui/jobs" {
            label { "status" select name="status" {
                option value="" { "any" }
                @for st in admin::STATUSES { option value=(st) selected[v.status.as_deref() == Some(st)] { (st) } }
            } }
            label { "kind" input name="kind" list="kinds" value=[v.kind.as_deref()] placeholder="any"; }
            datalist #kinds { @for k in &kinds { option value=(k) {} } }
            label { "account" select name="account" {
                option value="" { "any" }
                @for a in &accounts { option value=(a.id) selected[v.account.as_deref() == Some(a.id.as_str())] { (a.id) } }
            } }
            label { "run" input name="run" type="number" min="1" value=[v.run] placeholder="any"; }
            button type="submit" { "Filter" }
            a href="/ui/jobs" { "clear" }
        }
        table #jobs {
            thead { tr { th.num { "id" } th { "kind" } th { "status" } th.num { "attempts" } th.num { "run" } th { "account" }
                         th { "created" } th { "finished" } th { "last error" } th { "" } } }
            tbody {
                @for j in &jobs {
                    tr data-job=(j.id) {
                        td.num { (j.id) }
                        td { (j.kind) }
                        td { (badge(&j.status)) }
                        td.num { (j.attempts) @if let Some(m) = j.max_attempts { " / " (m) } }
                        td.num { @if let Some(r) = j.run_id { a href={ "/ui/jobs?run=" (r) } { (r) } } }
                        td { @if let Some(a) = j.payload.get("account").and_then(|a| a.as_str()) {
                                a href={ "/ui/accounts/" (urlencode(a)) } { (a) } } }
                        td { (when(j.created_at)) }
                        td { (when_opt(j.finished_at)) }
                        td.err { (clip(j.last_error.as_deref().unwrap_or(""), 300)) }
                        td {
                            @if j.status == "failed" || j.status == "cancelled" {
                                (button_form(&sess, &format!("/ui/jobs/{}/retry", j.id), "Retry", "",
                                    html! { input type="hidden" name="back" value=(here); }))
                            }
                            @if j.status == "pending" || j.status == "running" {
                                (button_form(&sess, &format!("/ui/jobs/{}/cancel", j.id), "Cancel", "danger",
                                    html! { input type="hidden" name="back" value=(here); }))
                            }
                        }
                    }
                }
                @if jobs.is_empty() { tr { td.muted colspan="10" { "No jobs match." } } }
            }
        }
        div.pager {
            @if v.before.is_some() { a href={ "/ui/jobs?" (v.query(None)) } { "← newest" } }
            @if let Some(n) = next { a #older href={ "/ui/jobs?" (v.query(Some(n))) } { "older →" } }
        }
    };
    Ok(Page::new("Jobs", "jobs", &sess, body).into_response())
}

#[derive(Deserialize)]
struct JobActionForm {
    #[serde(default)]
    csrf: String,
    /// The jobs page's query string to come back to.
    back: Option<String>,
}

impl CsrfForm for JobActionForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// Back to the jobs page the button was on, rebuilt from its filters (so never elsewhere).
fn back_to_jobs(back: Option<&str>, note: Note) -> Response {
    let view = back
        .and_then(|b| format!("/ui/jobs?{b}").parse::<Uri>().ok())
        .and_then(|u| Query::<JobsQuery>::try_from_uri(&u).ok())
        .and_then(|q| JobsView::parse(&q.0).ok());
    let query = view.map(|v| v.query(v.before)).unwrap_or_default();
    let sep = if query.is_empty() { "" } else { "&" };
    Redirect::to(&format!("/ui/jobs?{query}{sep}note={}", note.code())).into_response()
}

fn job_action(r: anyhow::Result<()>) -> UiResult<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) => Err(match e.downcast::<sqlx::Error>() {
            Ok(db) => db.into(),
            Err(e) if e.to_string().starts_with("no job") => UiError::not_found(&e.to_string()),
            Err(e) => UiError::conflict(&e.to_string()),
        }),
    }
}

/// As `POST /v1/jobs/{id}/retry` (admin::retry).
async fn retry_job(
    State(s): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
    Post(_, form): Post<JobActionForm>,
) -> UiResult<Response> {
    let Path(id) = id.map_err(|_| UiError::bad_request("Bad job id."))?;
    job_action(admin::retry(&s.pool, id).await)?;
    Ok(back_to_jobs(form.back.as_deref(), Note::Retried(id)))
}

/// As `POST /v1/jobs/{id}/cancel` (admin::cancel).
async fn cancel_job(
    State(s): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
    Post(_, form): Post<JobActionForm>,
) -> UiResult<Response> {
    let Path(id) = id.map_err(|_| UiError::bad_request("Bad job id."))?;
    job_action(admin::cancel(&s.pool, id).await)?;
    Ok(back_to_jobs(form.back.as_deref(), Note::Cancelled(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_fixed_messages() {
        for n in [
            Note::Started(3),
            Note::Queued(4),
            Note::Active(5),
            Note::Paused,
            Note::Resumed,
            Note::Retried(6),
            Note::Cancelled(7),
        ] {
            assert_eq!(Note::parse(&n.code()), Some(n));
        }
        assert_eq!(Note::parse("<script>"), None);
        assert_eq!(Note::parse("started-x"), None);
        assert_eq!(Note::parse("paused-1"), None);
    }

    #[test]
    fn job_filters_round_trip_and_redirects_stay_on_the_jobs_page() {
        let q = JobsQuery {
            status: Some("failed".into()),
            kind: Some("".into()),
            account: Some("a b&c".into()),
            run: Some("12".into()),
            before: Some("99".into()),
            note: None,
        };
        let v = JobsView::parse(&q).expect("parses");
        assert_eq!(
            v.query(v.before),
            "status=failed&account=a%20b%26c&run=12&before=99"
        );
        let r = back_to_jobs(Some("status=failed&run=12"), Note::Retried(5));
        let loc = r
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok());
        assert_eq!(loc, Some("/ui/jobs?status=failed&run=12&note=retried-5"));
        let r = back_to_jobs(Some("x=//evil.example&status=bogus"), Note::Retried(5));
        let loc = r
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok());
        assert_eq!(loc, Some("/ui/jobs?note=retried-5"));
        assert!(JobsView::parse(&JobsQuery {
            run: Some("1; drop".into()),
            ..JobsQuery::default()
        })
        .is_err());
    }
}
