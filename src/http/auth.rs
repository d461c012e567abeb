//! Bearer tokens with two scopes. An app token may enqueue refreshes and read runs and
//! threads; an admin token may do everything. Tokens come from the environment and are
//! compared in constant time; they never reach a log, an error or the OpenAPI document.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;

pub const ADMIN_TOKEN_ENV: &str = "THREADSYNC_ADMIN_TOKEN";
pub const APP_TOKEN_ENV: &str = "THREADSYNC_APP_TOKEN";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    App,
    Admin,
}

/// The tokens `serve` accepts.
#[derive(Clone)]
pub struct Tokens {
    admin: String,
    app: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(..)")
    }
}

impl Tokens {
    /// From the environment; the admin token is required.
    pub fn from_env() -> anyhow::Result<Tokens> {
        let get = |v: &str| std::env::var(v).ok().filter(|t| !t.trim().is_empty());
        let admin = get(ADMIN_TOKEN_ENV).ok_or_else(|| {
            anyhow::anyhow!(
                "set {ADMIN_TOKEN_ENV} (the admin API token; {APP_TOKEN_ENV} optionally sets the app token)"
            )
        })?;
        Ok(Tokens::new(admin, get(APP_TOKEN_ENV)))
    }

    pub fn new(admin: String, app: Option<String>) -> Tokens {
        Tokens { admin, app }
    }

    /// The scope a presented token grants, if any.
    pub fn scope_of(&self, presented: &str) -> Option<Scope> {
        let p = presented.as_bytes();
        // Both comparisons always run: the time taken says nothing about which matched.
        let admin = bool::from(p.ct_eq(self.admin.as_bytes()));
        let app = self
            .app
            .as_ref()
            .is_some_and(|a| bool::from(p.ct_eq(a.as_bytes())));
        if admin {
            Some(Scope::Admin)
        } else if app {
            Some(Scope::App)
        } else {
            None
        }
    }
}

/// The bearer token of a request, or the dashboard's session cookie.
pub fn presented(parts: &Parts) -> Option<String> {
    let bearer = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    bearer
}

/// A request authenticated with at least the app scope.
pub struct AppAuth(pub Scope);
/// A request authenticated with the admin scope.
pub struct AdminAuth;

fn authenticate(parts: &Parts, state: &AppState) -> Result<Scope, ApiError> {
    let token = presented(parts).ok_or_else(|| {
        ApiError::unauthorized("missing bearer token (Authorization: Bearer <token>)")
    })?;
    state
        .tokens
        .scope_of(&token)
        .ok_or_else(|| ApiError::unauthorized("unknown token"))
}

impl FromRequestParts<AppState> for AppAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(parts, state).map(AppAuth)
    }
}

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match authenticate(parts, state)? {
            Scope::Admin => Ok(AdminAuth),
            Scope::App => Err(ApiError::forbidden("this needs the admin token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let t = Tokens::new("a-secret".into(), Some("b-secret".into()));
        assert_eq!(t.scope_of("a-secret"), Some(Scope::Admin));
        assert_eq!(t.scope_of("b-secret"), Some(Scope::App));
        assert_eq!(t.scope_of("a-secre"), None);
        assert_eq!(t.scope_of(""), None);
        assert!(!format!("{t:?}").contains("secret"));
        let no_app = Tokens::new("a".into(), None);
        assert_eq!(no_app.scope_of(""), None);
    }
}
