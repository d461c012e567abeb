//! Meta's webhooks for Messenger and Instagram: the `hub.challenge` handshake, deliveries
//! signed with `X-Hub-Signature-256` (HMAC-SHA256 of the raw body with the app secret),
//! and the messaging events in them, which name the Page and the person, not the
//! conversation.

use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::HeaderMap;
use serde::Deserialize;
use sha2::Sha256;

use crate::sync::provider::{ThreadRef, Touch, Webhook, WebhookSecrets};

pub struct MetaWebhook;

pub const APP_SECRET_ENV: &str = "THREADSYNC_FACEBOOK_APP_SECRET";
pub const VERIFY_TOKEN_ENV: &str = "THREADSYNC_FACEBOOK_VERIFY_TOKEN";

#[derive(Deserialize)]
struct Delivery {
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    /// The Page (or Instagram professional account) id.
    id: String,
    #[serde(default)]
    messaging: Vec<Event>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(default)]
    sender: Option<Id>,
    #[serde(default)]
    recipient: Option<Id>,
    #[serde(default)]
    message: Option<EventMessage>,
}

#[derive(Deserialize)]
struct Id {
    id: String,
}

#[derive(Deserialize)]
struct EventMessage {
    #[serde(default)]
    is_echo: bool,
}

/// Whether `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`,
/// compared in constant time.
pub fn signed(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

impl Webhook for MetaWebhook {
    fn secret_envs(&self) -> (&'static str, Option<&'static str>) {
        (APP_SECRET_ENV, Some(VERIFY_TOKEN_ENV))
    }

    fn handshake(&self, query: &[(String, String)], secrets: &WebhookSecrets) -> Option<String> {
        let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let want = secrets.verify.as_deref()?;
        let given = get("hub.verify_token")?;
        let same: bool = subtle::ConstantTimeEq::ct_eq(want.as_bytes(), given.as_bytes()).into();
        (get("hub.mode") == Some("subscribe") && same)
            .then(|| get("hub.challenge").map(String::from))
            .flatten()
    }

    fn authentic(&self, headers: &HeaderMap, body: &[u8], secrets: &WebhookSecrets) -> bool {
        let header = headers
            .get("x-hub-signature-256")
            .and_then(|v| v.to_str().ok());
        secrets
            .signing
            .as_deref()
            .is_some_and(|s| signed(s, body, header))
    }

    /// Every message event touches the conversation of its person: the sender of a
    /// message to the Page, the recipient of the Page's own (an echo).
    fn touches(&self, body: &[u8]) -> Result<Vec<Touch>, String> {
        let d: Delivery = serde_json::from_slice(body)
            .map_err(|e| format!("not a Meta webhook delivery: {e}"))?;
        let mut touches = Vec::new();
        for entry in d.entry {
            for ev in entry.messaging {
                let Some(m) = ev.message else { continue };
                let person = if m.is_echo { ev.recipient } else { ev.sender };
                if let Some(p) = person {
                    let t = Touch {
                        address: entry.id.clone(),
                        thread: ThreadRef::Reference(p.id),
                    };
                    if !touches.contains(&t) {
                        touches.push(t);
                    }
                }
            }
        }
        Ok(touches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn the_signature_covers_the_exact_bytes() {
        let body =
            br#"{"object":"page","entry":[{"id":"p","messaging":[{"sender":{"id":"u\/1"}}]}]}"#;
        let good = sign("s3cret", body);
        assert!(signed("s3cret", body, Some(&good)));
        assert!(!signed("other", body, Some(&good)));
        assert!(!signed("s3cret", &body[1..], Some(&good)));
        assert!(!signed("s3cret", body, None));
        assert!(!signed("s3cret", body, Some("sha256=zz")));
        assert!(!signed(
            "s3cret",
            body,
            Some(good.trim_start_matches("sha256="))
        ));
    }

    #[test]
    fn message_events_touch_their_person_echoes_their_recipient() {
        let body = br#"{"object":"page","entry":[{"id":"PAGE","time":1,"messaging":[
            {"sender":{"id":"U1"},"recipient":{"id":"PAGE"},"timestamp":1,"message":{"mid":"m1","text":"hi"}},
            {"sender":{"id":"U1"},"recipient":{"id":"PAGE"},"timestamp":2,"message":{"mid":"m2","text":"again"}},
            {"sender":{"id":"PAGE"},"recipient":{"id":"U2"},"timestamp":3,"message":{"mid":"m3","is_echo":true}},
            {"sender":{"id":"U3"},"recipient":{"id":"PAGE"},"timestamp":4,"read":{"watermark":4}}]}]}"#;
        let t = MetaWebhook.touches(body).expect("touches");
        let refs: Vec<&ThreadRef> = t.iter().map(|t| &t.thread).collect();
        assert_eq!(
            refs,
            [
                &ThreadRef::Reference("U1".into()),
                &ThreadRef::Reference("U2".into())
            ]
        );
        assert!(t.iter().all(|t| t.address == "PAGE"));
        assert!(MetaWebhook.touches(b"[1,2]").is_err());
    }

    #[test]
    fn the_handshake_echoes_the_challenge_only_for_the_verify_token() {
        let secrets = WebhookSecrets {
            signing: None,
            verify: Some("vt".into()),
        };
        let q = |token: &str| {
            vec![
                ("hub.mode".to_string(), "subscribe".to_string()),
                ("hub.verify_token".to_string(), token.to_string()),
                ("hub.challenge".to_string(), "12345".to_string()),
            ]
        };
        assert_eq!(
            MetaWebhook.handshake(&q("vt"), &secrets),
            Some("12345".into())
        );
        assert_eq!(MetaWebhook.handshake(&q("nope"), &secrets), None);
        assert_eq!(
            MetaWebhook.handshake(&q("vt"), &WebhookSecrets::default()),
            None
        );
    }
}
