//! HTTP plumbing every provider client shares: the client builder, a secret that never
//! prints, sending a request and mapping its status, and error texts without URLs or
//! bodies beyond the provider's own error message.

use std::time::Duration;

use reqwest::header::HeaderMap;

use crate::sync::vocab::ProviderError;

/// A credential: Debug and Display never show it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

pub fn client(timeout: Duration, idle_per_host: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(idle_per_host)
        .build()?)
}

/// An answer: its status, headers and body.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The whole body as JSON (rows inside it decode one at a time elsewhere).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ProviderError> {
        serde_json::from_slice(&self.body).map_err(|e| ProviderError::Malformed(e.to_string()))
    }

    /// The provider's own error message at one of `pointers` in a JSON error body,
    /// bounded; never the raw body, which may echo the request and its credential.
    pub fn message(&self, pointers: &[&str]) -> String {
        let v: Option<serde_json::Value> = serde_json::from_slice(&self.body).ok();
        let found = v.as_ref().and_then(|v| {
            pointers
                .iter()
                .find_map(|p| v.pointer(p).and_then(|m| m.as_str()))
        });
        match found {
            Some(m) => m.chars().take(200).collect(),
            None => "no error message in the answer".into(),
        }
    }

    /// The usual meaning of a failed status; providers decide the statuses they treat
    /// otherwise before asking this.
    pub fn error(&self, provider: &str, message: String) -> ProviderError {
        match self.status {
            401 => ProviderError::Unauthorized(format!(
                "{provider} rejected the credential (HTTP 401)"
            )),
            404 => ProviderError::NotFound,
            429 => ProviderError::Throttled {
                until: None,
                detail: format!("{provider} answered 429 Too Many Requests"),
            },
            500..=599 => {
                ProviderError::Transient(format!("{provider} server error (HTTP {})", self.status))
            }
            s => ProviderError::Rejected(format!(
                "{provider} refused the request (HTTP {s}): {message}"
            )),
        }
    }
}

/// Sends the request and reads the whole answer.
pub async fn send(req: reqwest::RequestBuilder) -> Result<Answer, ProviderError> {
    let resp = req.send().await.map_err(transport)?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(transport)?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// reqwest errors without the URL (it can carry a query-string credential).
fn transport(e: reqwest::Error) -> ProviderError {
    ProviderError::Transient(if e.is_timeout() {
        "request timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        format!("request failed: {}", e.without_url())
    })
}

/// Percent-encodes a path segment.
pub fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
