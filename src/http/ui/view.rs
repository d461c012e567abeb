//! The dashboard's page frame, its small pieces (badges, times, forms), error pages and the
//! headers every page carries. maud escapes every value it interpolates.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::session::{nonce, Session};

const STYLE: &str = r#"
:root { --fg:#1d2430; --muted:#687386; --line:#e3e7ee; --bg:#f6f8fb; --card:#fff; --accent:#2457c5;
        --ok:#1a7f45; --bad:#c0352b; --warn:#a15c00; --run:#2457c5; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:var(--bg); }
header.top { display:flex; align-items:center; gap:24px; padding:10px 24px; background:#1d2430; color:#fff; }
header.top .brand { font-weight:700; letter-spacing:.3px; }
header.top nav a { color:#cfd8e6; text-decoration:none; margin-right:16px; }
header.top nav a.here { color:#fff; font-weight:600; }
header.top form { margin-left:auto; }
main { padding:20px 24px 40px; max-width:1280px; }
h1 { font-size:20px; margin:0 0 14px; }
h2 { font-size:15px; margin:26px 0 8px; color:#2d3748; }
a { color:var(--accent); }
table { border-collapse:collapse; width:100%; background:var(--card); border:1px solid var(--line); }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#eef2f7; font-weight:600; font-size:12px; text-transform:uppercase; letter-spacing:.4px; color:#4a5568; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
td.err { color:var(--bad); max-width:420px; overflow-wrap:anywhere; font-family:ui-monospace,monospace; font-size:12px; }
.cards { display:flex; gap:14px; flex-wrap:wrap; }
.card { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:12px 16px; min-width:170px; }
.card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.4px; }
.card .v { font-size:22px; font-weight:600; font-variant-numeric:tabular-nums; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; background:#e9edf3; color:#4a5568; }
.badge.done { background:#dff3e6; color:var(--ok); }
.badge.failed { background:#fbe3e1; color:var(--bad); }
.badge.cancelled { background:#f1e6da; color:var(--warn); }
.badge.running, .badge.catching_up { background:#e1e9fa; color:var(--run); }
.badge.pending { background:#eceff3; color:#4a5568; }
.badge.paused { background:#fff0d6; color:var(--warn); }
.badge.active { background:#dff3e6; color:var(--ok); }
.muted { color:var(--muted); }
.note { background:#e8f1fd; border:1px solid #c3d7f5; padding:8px 12px; border-radius:6px; margin-bottom:14px; }
.alert { background:#fdecea; border:1px solid #f3c2bd; padding:8px 12px; border-radius:6px; margin-bottom:14px; }
form.inline { display:inline; margin:0; }
button { font:inherit; padding:4px 12px; border:1px solid #b9c3d3; border-radius:5px; background:#fff; cursor:pointer; }
button.primary { background:var(--accent); border-color:var(--accent); color:#fff; }
button.danger { border-color:#e2a39c; color:var(--bad); }
input, select { font:inherit; padding:4px 8px; border:1px solid #b9c3d3; border-radius:5px; background:#fff; }
.filters { display:flex; gap:10px; align-items:end; flex-wrap:wrap; margin-bottom:12px; }
.filters label { display:flex; flex-direction:column; font-size:12px; color:var(--muted); gap:2px; }
.actions { display:flex; gap:10px; flex-wrap:wrap; align-items:center; margin:10px 0 4px; }
.live { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:12px 16px; }
.live dl { display:grid; grid-template-columns:repeat(auto-fill,minmax(150px,1fr)); gap:8px 18px; margin:10px 0 0; }
.live dt { color:var(--muted); font-size:12px; }
.live dd { margin:0; font-size:18px; font-weight:600; font-variant-numeric:tabular-nums; }
meter.bar { width:100%; height:14px; }
th.wide { width:50%; }
.login { max-width:380px; margin:80px auto; background:var(--card); border:1px solid var(--line); border-radius:8px; padding:24px; }
.login input { width:100%; margin:8px 0 14px; }
.pager { margin-top:12px; display:flex; gap:16px; }
"#;

/// A whole page. `session` adds the navigation and the logout button; `script` is inline
/// JavaScript allowed by this response's CSP nonce.
pub struct Page<'a> {
    pub title: &'a str,
    pub here: &'a str,
    pub session: Option<&'a Session>,
    pub body: Markup,
    pub script: Option<&'static str>,
    pub status: StatusCode,
}

impl<'a> Page<'a> {
    pub fn new(title: &'a str, here: &'a str, session: &'a Session, body: Markup) -> Page<'a> {
        Page {
            title,
            here,
            session: Some(session),
            body,
            script: None,
            status: StatusCode::OK,
        }
    }
}

impl IntoResponse for Page<'_> {
    fn into_response(self) -> Response {
        let nonce = nonce();
        let markup = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    meta name="referrer" content="same-origin";
                    title { (self.title) " · threadsync" }
                    style nonce=(nonce) { (PreEscaped(STYLE)) }
                }
                body {
                    @if let Some(s) = self.session {
                        header.top {
                            span.brand { "threadsync" }
                            nav {
                                a href="/ui" class=[(self.here == "overview").then_some("here")] { "Overview" }
                                a href="/ui/jobs" class=[(self.here == "jobs").then_some("here")] { "Jobs" }
                            }
                            form.inline method="post" action="/ui/logout" {
                                (csrf_field(s))
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                    main { (self.body) }
                    @if let Some(js) = self.script {
                        script nonce=(nonce) { (PreEscaped(js)) }
                    }
                }
            }
        };
        let mut r = (self.status, markup).into_response();
        let h = r.headers_mut();
        let csp = format!(
            "default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; \
             connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        );
        if let Ok(v) = HeaderValue::from_str(&csp) {
            h.insert(header::CONTENT_SECURITY_POLICY, v);
        }
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

/// The hidden field every POST form carries.
pub fn csrf_field(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// A one-button POST form.
pub fn button_form(s: &Session, action: &str, label: &str, class: &str, extra: Markup) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf_field(s))
            (extra)
            button type="submit" class=(class) { (label) }
        }
    }
}

pub fn badge(state: &str) -> Markup {
    html! { span class={ "badge " (state) } { (state) } }
}

/// "5 s ago", "3 min ago", … with the exact instant on hover.
pub fn when(t: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(t.to_rfc3339()) title=(t.format("%Y-%m-%d %H:%M:%S UTC")) { (ago(t)) }
    }
}

pub fn when_opt(t: Option<DateTime<Utc>>) -> Markup {
    match t {
        Some(t) => when(t),
        None => html! { span.muted { "–" } },
    }
}

pub fn ago(t: DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_seconds();
    let (future, secs) = (secs < 0, secs.unsigned_abs());
    let span = duration(secs as f64);
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// 42 s, 3 min, 5.2 h, 2.0 d.
pub fn duration(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 60.0 {
        format!("{secs:.0} s")
    } else if secs < 3600.0 {
        format!("{:.0} min", secs / 60.0)
    } else if secs < 86_400.0 {
        format!("{:.1} h", secs / 3600.0)
    } else {
        format!("{:.1} d", secs / 86_400.0)
    }
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// At most `n` characters.
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut c: String = s.chars().take(n).collect();
        c.push('…');
        c
    }
}

/// A page for a request that went wrong: why, and the way back.
pub fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = html! {
        h1 { (title) }
        p.alert { (message) }
        p { a href="/ui" { "Back to the overview" } }
    };
    Page {
        title,
        here: "",
        session: None,
        body,
        script: None,
        status,
    }
    .into_response()
}

pub fn forbidden_csrf() -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "Refused",
        "This form did not carry this session's CSRF token (it is out of date, or it was \
         sent from another page). Nothing was changed: go back, reload and try again.",
    )
}

pub fn forbidden_cross_origin() -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "Refused",
        "This request came from another site (its Origin is not this host). Nothing was changed.",
    )
}

/// Errors of a dashboard handler, shown as a page.
pub struct UiError(Box<Response>);

pub type UiResult<T> = Result<T, UiError>;

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        *self.0
    }
}

impl From<sqlx::Error> for UiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::warn!(error = %e, "database error behind a dashboard page");
        let unavailable = matches!(
            e,
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed
        );
        UiError::page(if unavailable {
            error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Database unavailable",
                "The database did not answer. Try again in a moment.",
            )
        } else {
            error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error",
                "Something went wrong reading the database; the server log has the details.",
            )
        })
    }
}

impl UiError {
    fn page(r: Response) -> Self {
        UiError(Box::new(r))
    }
    pub fn not_found(what: &str) -> Self {
        Self::page(error_page(StatusCode::NOT_FOUND, "Not found", what))
    }
    pub fn bad_request(what: &str) -> Self {
        Self::page(error_page(StatusCode::BAD_REQUEST, "Bad request", what))
    }
    pub fn conflict(what: &str) -> Self {
        Self::page(error_page(StatusCode::CONFLICT, "Not done", what))
    }
}
