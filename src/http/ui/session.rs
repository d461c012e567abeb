//! Dashboard sessions: a random id in an `HttpOnly; SameSite=Strict; Path=/ui` cookie,
//! mapped in this process's memory to nothing but "admin, until" and the session's CSRF
//! token. The admin token itself is only read at login (compared in constant time by
//! `auth::Tokens`) and never stored or sent back. Every POST under /ui must carry the
//! session's CSRF token in a form field and, when the browser says where it comes from
//! (`Origin`), come from this host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use rand::RngCore;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use super::view;
use crate::http::auth::Scope;
use crate::http::AppState;

pub const COOKIE: &str = "threadsync_session";
/// How long a session lasts from its login, however active.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most: a login past this drops the one closest to expiring.
const MAX_SESSIONS: usize = 1024;

#[derive(Clone)]
struct Entry {
    /// What the session may do: only admin sessions are made.
    scope: Scope,
    expires: Instant,
    csrf: String,
}

/// The live sessions of this `serve` process (a restart logs everyone out).
#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
}

/// A request's valid admin session.
#[derive(Clone)]
pub struct Session {
    pub id: String,
    /// The value every POST form of this session carries.
    pub csrf: String,
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A fresh value for a page's Content-Security-Policy nonce.
pub fn nonce() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock cannot leave the map half-changed.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new admin session.
    pub fn create(&self) -> Session {
        let now = Instant::now();
        let id = random_hex();
        let csrf = random_hex();
        let mut m = self.lock();
        m.retain(|_, e| e.expires > now);
        while m.len() >= MAX_SESSIONS {
            let Some(oldest) = m
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            m.remove(&oldest);
        }
        m.insert(
            id.clone(),
            Entry {
                scope: Scope::Admin,
                expires: now + SESSION_TTL,
                csrf: csrf.clone(),
            },
        );
        Session { id, csrf }
    }

    /// The live admin session with this id.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut m = self.lock();
        let e = m.get(id)?;
        if e.expires <= Instant::now() {
            m.remove(id);
            return None;
        }
        (e.scope == Scope::Admin).then(|| Session {
            id: id.to_string(),
            csrf: e.csrf.clone(),
        })
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The session id a request's cookies hold.
fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn sessions_of(parts: &Parts) -> Sessions {
    parts
        .extensions
        .get::<Sessions>()
        .cloned()
        .unwrap_or_default()
}

/// The request's valid session, if it has one.
pub fn session_of(parts: &Parts) -> Option<Session> {
    session_in(&sessions_of(parts), &parts.headers)
}

/// The valid session these request headers carry, if any.
pub fn session_in(sessions: &Sessions, headers: &HeaderMap) -> Option<Session> {
    sessions.get(&cookie_value(headers)?)
}

/// The Set-Cookie value that starts `s`: a browser-session cookie (gone when the browser
/// closes); the server forgets the session after [`SESSION_TTL`] in any case.
pub fn set_cookie(s: &Session, headers: &HeaderMap) -> HeaderValue {
    let secure = if behind_https(headers) {
        "; Secure"
    } else {
        ""
    };
    let v = format!(
        "{COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict{secure}",
        s.id
    );
    // Hex and fixed text only.
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The Set-Cookie value that ends the session in the browser.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("threadsync_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// A TLS-terminating proxy in front says the browser used https: the cookie is then
/// marked Secure.
fn behind_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// A POST whose `Origin` names another site is refused. Browsers send Origin with every
/// form POST; a client that sends none (curl) still needs the CSRF token.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(authority) = origin.to_str().ok().and_then(|o| {
        o.strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))
    }) else {
        return false;
    };
    ["x-forwarded-host", "host"].iter().any(|h| {
        headers
            .get(*h)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(authority))
    })
}

/// Where a page without a session sends the browser: the login form, which comes back here.
fn to_login(parts: &Parts) -> Response {
    // The URI as the browser asked for it, before /ui was stripped by the nesting.
    let uri = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map(|u| &u.0)
        .unwrap_or(&parts.uri);
    let next = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let target = if parts.method == axum::http::Method::GET && safe_next(&next).is_some() {
        format!("/ui/login?next={}", view::urlencode(&next))
    } else {
        "/ui/login".to_string()
    };
    let mut r = Redirect::to(&target).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `next` when it is a dashboard page of this site (never another host).
pub fn safe_next(next: &str) -> Option<&str> {
    let ok = (next == "/ui" || next.starts_with("/ui/") || next.starts_with("/ui?"))
        && !next.contains("//")
        && !next.contains('\\')
        && !next.chars().any(|c| c.is_control())
        && !next.starts_with("/ui/login")
        && !next.starts_with("/ui/logout");
    ok.then_some(next)
}

/// A dashboard page's session; without one the browser goes to the login form.
pub struct Admin(pub Session);

impl FromRequestParts<AppState> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Response> {
        session_of(parts).map(Admin).ok_or_else(|| to_login(parts))
    }
}

/// The session of an event stream: 401 without one (an EventSource cannot follow a login).
pub struct StreamAdmin;

impl FromRequestParts<AppState> for StreamAdmin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Response> {
        match session_of(parts) {
            Some(_) => Ok(StreamAdmin),
            None => Err((StatusCode::UNAUTHORIZED, "log in at /ui/login").into_response()),
        }
    }
}

/// A form that carries the session's CSRF token.
pub trait CsrfForm: DeserializeOwned {
    fn csrf(&self) -> &str;
}

/// A dashboard POST: a valid session, same origin, and a form whose CSRF token is the
/// session's (compared in constant time). Anything else changes nothing: 403 (or, without
/// a session, the login form).
pub struct Post<T>(pub Session, pub T);

impl<T: CsrfForm + Send> FromRequest<AppState> for Post<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let Admin(session) = Admin::from_request_parts(&mut parts, state).await?;
        if !same_origin(&parts.headers) {
            return Err(view::forbidden_cross_origin());
        }
        let Form(form) = Form::<T>::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|e| {
                view::error_page(
                    StatusCode::BAD_REQUEST,
                    "Bad form",
                    &first_line(&e.body_text()),
                )
            })?;
        if !bool::from(form.csrf().as_bytes().ct_eq(session.csrf.as_bytes())) {
            return Err(view::forbidden_csrf());
        }
        Ok(Post(session, form))
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_are_bounded() {
        let s = Sessions::default();
        let a = s.create();
        assert_eq!(a.id.len(), 64);
        assert_ne!(a.id, a.csrf);
        assert!(s.get(&a.id).is_some());
        assert!(s.get("nope").is_none());
        s.remove(&a.id);
        assert!(s.get(&a.id).is_none());
        for _ in 0..MAX_SESSIONS + 10 {
            s.create();
        }
        assert_eq!(s.len(), MAX_SESSIONS);
    }

    #[test]
    fn cookies_and_origins() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; threadsync_session=abc ; b=2"),
        );
        assert_eq!(cookie_value(&h).as_deref(), Some("abc"));
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&h), "no Origin");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
        let c = set_cookie(
            &Session {
                id: "ff".into(),
                csrf: "ee".into(),
            },
            &h,
        );
        let c = c.to_str().unwrap_or_default();
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Path=/ui"));
        assert!(!c.contains("Secure"));
    }

    #[test]
    fn next_stays_on_the_dashboard() {
        assert_eq!(
            safe_next("/ui/jobs?status=failed"),
            Some("/ui/jobs?status=failed")
        );
        assert_eq!(safe_next("/ui"), Some("/ui"));
        for bad in [
            "//evil.example",
            "/ui//evil",
            "https://evil.example/ui",
            "/uix",
            "/ui/login",
            "/ui\\x",
            "/v1/jobs",
        ] {
            assert_eq!(safe_next(bad), None, "{bad}");
        }
    }
}
