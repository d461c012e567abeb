//! Hostaway's unified webhooks: `{"event","accountId","data"}` deliveries, authenticated
//! with the HTTP basic-auth credentials configured in Hostaway. A new message names its
//! conversation; a reservation created or updated names the reservation, whose
//! conversations are refreshed.

use base64::Engine as _;
use reqwest::header::{HeaderMap, AUTHORIZATION};
use serde::Deserialize;
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::sync::provider::{ThreadRef, Touch, Webhook, WebhookSecrets};

pub struct HostawayWebhook;

pub const USER_ENV: &str = "THREADSYNC_HOSTAWAY_WEBHOOK_USER";
pub const PASSWORD_ENV: &str = "THREADSYNC_HOSTAWAY_WEBHOOK_PASSWORD";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Delivery {
    event: String,
    account_id: Value,
    #[serde(default)]
    data: Value,
}

/// An id Hostaway renders as a number (or, defensively, a string).
fn id(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

impl Webhook for HostawayWebhook {
    fn secret_envs(&self) -> (&'static str, Option<&'static str>) {
        (PASSWORD_ENV, Some(USER_ENV))
    }

    /// Unified webhooks have no subscription handshake.
    fn handshake(&self, _query: &[(String, String)], _secrets: &WebhookSecrets) -> Option<String> {
        None
    }

    /// `Authorization: Basic base64(user:password)`, compared in constant time.
    fn authentic(&self, headers: &HeaderMap, _body: &[u8], secrets: &WebhookSecrets) -> bool {
        let Some(password) = secrets.signing.as_deref() else {
            return false;
        };
        let user = secrets.verify.as_deref().unwrap_or("");
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        headers
            .get(AUTHORIZATION)
            .is_some_and(|h| bool::from(h.as_bytes().ct_eq(expected.as_bytes())))
    }

    fn touches(&self, body: &[u8]) -> Result<Vec<Touch>, String> {
        let d: Delivery =
            serde_json::from_slice(body).map_err(|e| format!("not a Hostaway delivery: {e}"))?;
        let address = id(Some(&d.account_id)).ok_or("the delivery names no accountId")?;
        let thread = match d.event.as_str() {
            "message.received" => id(d.data.get("conversationId")).map(ThreadRef::Id),
            "reservation.created" | "reservation.updated" => {
                id(d.data.get("id")).map(ThreadRef::Reference)
            }
            // Other events change no thread.
            _ => return Ok(Vec::new()),
        };
        let thread =
            thread.ok_or_else(|| format!("{} names no conversation or reservation", d.event))?;
        Ok(vec![Touch { address, thread }])
    }

    /// Hostaway delivers again on a 5xx: a thread not held yet is answered so, and the
    /// incremental run started meanwhile finds it.
    fn retry_unknown(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> WebhookSecrets {
        WebhookSecrets {
            signing: Some("pw".into()),
            verify: Some("hook".into()),
        }
    }

    #[test]
    fn only_the_configured_credentials_pass() {
        let mut h = HeaderMap::new();
        assert!(!HostawayWebhook.authentic(&h, b"", &secrets()));
        // base64("hook:pw")
        h.insert(AUTHORIZATION, "Basic aG9vazpwdw==".parse().expect("header"));
        assert!(HostawayWebhook.authentic(&h, b"", &secrets()));
        h.insert(AUTHORIZATION, "Basic aG9vazpweA==".parse().expect("header"));
        assert!(!HostawayWebhook.authentic(&h, b"", &secrets()));
        assert!(!HostawayWebhook.authentic(&h, b"", &WebhookSecrets::default()));
    }

    #[test]
    fn messages_name_their_conversation_and_reservations_themselves() {
        let t = HostawayWebhook
            .touches(br#"{"event":"message.received","accountId":7,"data":{"conversationId":12,"reservationId":null}}"#)
            .expect("touches");
        assert_eq!(
            t,
            vec![Touch {
                address: "7".into(),
                thread: ThreadRef::Id("12".into())
            }]
        );
        let t = HostawayWebhook
            .touches(br#"{"event":"reservation.updated","accountId":7,"data":{"id":99}}"#)
            .expect("touches");
        assert_eq!(t[0].thread, ThreadRef::Reference("99".into()));
        assert!(HostawayWebhook.touches(b"[]").is_err());
        assert!(HostawayWebhook
            .touches(br#"{"event":"listing.updated","accountId":7}"#)
            .expect("touches")
            .is_empty());
    }
}
