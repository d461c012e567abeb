//! SMSEagle SMS gateways: each folder is a message stream read by ascending message id;
//! an SMS thread is one remote number; sent messages with a limited validity are followed
//! until their delivery status is final or they expire.

mod client;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::config::{AccountConfig, AccountKeys, ConfigError};
use crate::sync::vocab::{
    decode, BadRow, Decoded, Delivery, DeliveryCheck, Follow, MessageRow, MessageStream,
    ProviderError, Shape, Source, StreamBatch, StreamMessage,
};
use crate::sync::{Connect, Provider};

pub use client::{
    is_final, normalize_status, parse_gateway_date, validity, ReadApi, Sms, SmsEagleClient,
};

/// A validity counts from the modem's pickup, a few seconds after the message date; a
/// report may also land just after. Wait this long past date + validity before expiring.
const EXPIRY_GRACE_SECS: i64 = 120;
/// How long a "max" validity message may sit in the outbox before we stop following it.
const OUTBOX_FOLLOW_HOURS: i64 = 24;

pub struct SmsEagle;

impl Provider for SmsEagle {
    fn name(&self) -> &'static str {
        "smseagle"
    }

    fn shape(&self) -> Shape {
        Shape::Stream
    }

    fn settings(&self, keys: &mut AccountKeys) -> Result<Box<dyn Connect>, ConfigError> {
        Ok(Box::new(Settings::read(keys)?))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Folders synced by message id, in this order (outbox before sentitems, so a
    /// message picked up between two reads is seen in one of them).
    pub folders: Vec<String>,
    /// Messages per folder request.
    pub batch_size: u32,
    /// A folder with no cursor yet starts this far back, not at the whole history.
    pub cold_start: chrono::Duration,
    /// Pending-status checks: the first comes after `check_first`, each next one twice
    /// as late, up to `check_interval`.
    pub check_first: Duration,
    pub check_interval: Duration,
    pub api: ReadApi,
}

/// Seconds as a duration, bounded so that nothing derived from it can overflow.
fn secs(max: f64) -> impl Fn(&f64) -> Result<(), String> {
    move |v: &f64| {
        if v.is_finite() && *v > 0.0 && *v <= max {
            Ok(())
        } else {
            Err(format!("must be > 0 and at most {max}"))
        }
    }
}

impl Settings {
    fn read(keys: &mut AccountKeys) -> Result<Settings, ConfigError> {
        let folders: Vec<String> = keys
            .take_with("folders", |folders: &Vec<String>| {
                if folders.is_empty() {
                    return Err("must list at least one folder".into());
                }
                for (i, f) in folders.iter().enumerate() {
                    if f.is_empty() || !f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(format!("folder {f:?} must be letters, digits or _"));
                    }
                    if folders[..i].contains(f) {
                        return Err(format!("folder {f:?} is listed twice"));
                    }
                }
                Ok(())
            })?
            .unwrap_or_else(|| ["inbox", "outbox", "sentitems"].map(String::from).to_vec());
        let batch_size = keys
            .take_with("batch_size", |b: &u32| {
                if (1..=10_000).contains(b) {
                    Ok(())
                } else {
                    Err("must be 1..=10000".into())
                }
            })?
            .unwrap_or(500);
        let cold_days: f64 = keys
            .take_with("cold_start_days", secs(100_000.0))?
            .unwrap_or(7.0);
        let check_interval: f64 = keys
            .take_with("status_check_interval_secs", secs(86_400.0))?
            .unwrap_or(300.0);
        let check_first: f64 = keys
            .take_with("status_check_first_secs", secs(86_400.0))?
            .unwrap_or(30.0);
        if check_first > check_interval {
            return Err(
                keys.invalid("status_check_first_secs must not exceed status_check_interval_secs")
            );
        }
        let api: ReadApi = keys
            .take_with("api", |api: &ReadApi| {
                if api.folder_path.starts_with("/http_api") {
                    Err(
                        ".folder_path: SMSEagle's legacy API v1 (/http_api) is not supported; \
                         use the device's API v2 (SMSEagle firmware with /api/v2)"
                            .into(),
                    )
                } else if api.folder_path.starts_with('/') && api.folder_path.contains("{folder}") {
                    Ok(())
                } else {
                    Err(".folder_path must start with / and contain {folder}".into())
                }
            })?
            .unwrap_or_default();
        Ok(Settings {
            folders,
            batch_size,
            // Bounded above: 100,000 days fits in a chrono duration.
            cold_start: chrono::Duration::seconds((cold_days * 86_400.0) as i64),
            check_first: Duration::from_secs_f64(check_first),
            check_interval: Duration::from_secs_f64(check_interval),
            api,
        })
    }
}

impl Connect for Settings {
    fn connect(&self, a: &AccountConfig, secret: String) -> anyhow::Result<Source> {
        let client = SmsEagleClient::new(&a.base_url, secret, a.request_timeout, self.api.clone())?;
        Ok(Source::Stream(Arc::new(Gateway {
            client,
            settings: self.clone(),
        })))
    }
}

/// A connected gateway.
struct Gateway {
    client: SmsEagleClient,
    settings: Settings,
}

/// Our id for a gateway row: inbox and sent ids are separate series on the device, and a
/// multipart message shares its id across parts.
fn message_id(inbound: bool, id: u64, part: Option<u32>) -> String {
    let dir = if inbound { "in" } else { "out" };
    match part {
        Some(p) if p > 1 => format!("{dir}:{id}/{p}"),
        _ => format!("{dir}:{id}"),
    }
}

/// The id of a raw row, even one that does not decode.
fn raw_id(v: &Value) -> Option<u64> {
    let id = v.get("id").or_else(|| v.get("ID"))?;
    id.as_u64().or_else(|| id.as_str()?.parse().ok())
}

/// One gateway row as a stream message, with the follow-up its status asks for.
fn stream_message(m: Sms, folder: &str, gateway_now: DateTime<Utc>) -> Decoded<StreamMessage> {
    let remote_id = i64::try_from(m.id).map_err(|_| BadRow {
        reason: format!("message id {} is out of range", m.id),
    })?;
    let inbound = m.folder.as_deref().unwrap_or(folder) == "inbox";
    let number = m
        .number
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let sent_at = m.sent_at().unwrap_or_else(|| {
        tracing::warn!(
            folder,
            id = m.id,
            "unreadable message date; using the gateway's clock"
        );
        gateway_now
    });
    let status = m.status.as_deref().map(normalize_status);
    let first_part = m.sequence_position.unwrap_or(1) <= 1;
    let mut follow = None;
    if !inbound && first_part {
        let st = status.as_deref().unwrap_or("reserved");
        let validity_text = m.validity.clone().unwrap_or_else(|| "max".into());
        // A validity too long to add to the date is as good as "max".
        let bounded = validity(&validity_text).and_then(|v| sent_at.checked_add_signed(v));
        let until = match bounded {
            Some(t) if !is_final(st) => Some(t),
            None if st == "reserved" => {
                sent_at.checked_add_signed(chrono::Duration::hours(OUTBOX_FOLLOW_HOURS))
            }
            _ => None,
        };
        follow = until.map(|expires_at| Follow {
            remote_id,
            validity: if bounded.is_some() {
                validity_text
            } else {
                "max".into()
            },
            expires_at,
        });
    }
    Ok(StreamMessage {
        row: MessageRow {
            message_id: message_id(inbound, m.id, m.sequence_position),
            sender: inbound.then(|| number.clone()),
            recipient: (!inbound).then(|| number.clone()),
            subject: None,
            body: m.text,
            is_read: m.read,
            sent_at,
            media: None,
            status,
        },
        thread_id: number,
        follow,
    })
}

fn outcome(
    status: Option<&str>,
    validity_text: &str,
    expires_at: DateTime<Utc>,
    gateway_now: DateTime<Utc>,
) -> Delivery {
    let expired = expires_at
        .checked_add_signed(chrono::Duration::seconds(EXPIRY_GRACE_SECS))
        .is_some_and(|t| gateway_now >= t);
    match status {
        Some(s) if is_final(s) => Delivery::Final,
        Some(s) if validity(validity_text).is_none() && s != "reserved" => Delivery::Sent,
        _ if expired => Delivery::Expired,
        _ => Delivery::Pending,
    }
}

#[async_trait::async_trait]
impl MessageStream for Gateway {
    fn streams(&self) -> Vec<String> {
        self.settings.folders.clone()
    }

    fn cold_start(&self) -> chrono::Duration {
        self.settings.cold_start
    }

    async fn read(
        &self,
        stream: &str,
        after: Option<i64>,
        since: Option<DateTime<Utc>>,
    ) -> Result<StreamBatch, ProviderError> {
        let after = after.and_then(|a| u64::try_from(a).ok());
        let limit = self.settings.batch_size;
        let answer = self.client.folder(stream, after, since, limit).await?;
        let full = answer.value.len() >= limit as usize;
        // Defensive: a gateway that ignored the id parameter must not rewind the cursor.
        let rows: Vec<Value> = answer
            .value
            .into_iter()
            .filter(|v| match (raw_id(v), after) {
                (Some(id), Some(c)) => id > c,
                _ => true,
            })
            .collect();
        let highest = rows.iter().filter_map(raw_id).max();
        if full && highest.is_none() {
            return Err(ProviderError::Rejected(format!(
                "SMSEagle returned a full batch of {stream} with no id above {after:?}: it ignores the `{}` parameter (see api.id_from_param in jobs.toml)",
                self.client.api().id_from_param
            )));
        }
        let gateway_now = answer.gateway_now;
        Ok(StreamBatch {
            highest: highest.and_then(|h| i64::try_from(h).ok()),
            full,
            provider_now: gateway_now,
            messages: rows
                .into_iter()
                .map(|v| {
                    decode::<Sms>("SMS row", v).and_then(|m| stream_message(m, stream, gateway_now))
                })
                .collect(),
        })
    }

    fn check_times(&self) -> (Duration, Duration) {
        (self.settings.check_first, self.settings.check_interval)
    }

    async fn check(
        &self,
        remote_id: i64,
        validity_text: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<DeliveryCheck, ProviderError> {
        let id = u64::try_from(remote_id)
            .map_err(|_| ProviderError::Rejected(format!("message id {remote_id} is negative")))?;
        let answer = self.client.status(id).await?;
        let status = answer
            .value
            .as_ref()
            .and_then(|m| m.status.as_deref())
            .map(normalize_status);
        let outcome = outcome(
            status.as_deref(),
            validity_text,
            expires_at,
            answer.gateway_now,
        );
        Ok(DeliveryCheck { status, outcome })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use chrono::Duration as Span;

    #[test]
    fn outcomes() {
        let t0 = Utc::now();
        let exp = t0 + Span::minutes(5);
        assert_eq!(outcome(Some("delivery_ok"), "5m", exp, t0), Delivery::Final);
        assert_eq!(
            outcome(Some("sending_ok"), "5m", exp, t0),
            Delivery::Pending
        );
        assert_eq!(outcome(None, "5m", exp, t0), Delivery::Pending);
        assert_eq!(
            outcome(Some("sending_ok"), "5m", exp, exp + Span::minutes(3)),
            Delivery::Expired
        );
        assert_eq!(outcome(Some("sending_ok"), "max", exp, t0), Delivery::Sent);
        assert_eq!(outcome(Some("reserved"), "max", exp, t0), Delivery::Pending);
    }

    #[test]
    fn a_huge_validity_is_max_not_a_panic() {
        let now = Utc::now();
        let raw = serde_json::json!({"id": 7, "folder": "outbox", "number": "+1", "text": "x",
                                     "status": "reserved", "date": now.format("%Y-%m-%d %H:%M:%S").to_string(),
                                     "validity": "100000000w"});
        let m: Sms = serde_json::from_value(raw).unwrap();
        let s = stream_message(m, "outbox", now).unwrap();
        let f = s.follow.unwrap();
        assert_eq!(f.validity, "max");
        assert!(f.expires_at > now, "followed while it sits in the outbox");
        assert_eq!(
            outcome(Some("sending_ok"), &f.validity, f.expires_at, now),
            Delivery::Sent
        );
    }

    const SMS: &str = "[[accounts]]\nid = \"gw\"\nprovider = \"smseagle\"\nbase_url = \"http://gw\"\ntoken_env = \"T\"\n";

    fn settings(extra: &str) -> Result<String, crate::config::ConfigError> {
        Config::parse(&format!("{SMS}{extra}"), "jobs.toml")
            .map(|c| format!("{:?}", c.accounts[0].settings))
    }

    #[test]
    fn defaults() {
        let s = settings("").unwrap();
        assert!(
            s.contains("folders: [\"inbox\", \"outbox\", \"sentitems\"]"),
            "{s}"
        );
        assert!(s.contains("batch_size: 500"), "{s}");
        assert!(s.contains("/api/v2/messages/{folder}"), "{s}");
    }

    #[test]
    fn keys_are_validated_at_their_own_line() {
        let e = settings("folders = [\"inbox\", \"inbox\"]\n").unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(e.problem.contains("listed twice"), "{e}");
        let e = settings("batch_size = 0\n").unwrap_err();
        assert!(e.problem.contains("batch_size"), "{e}");
        let e = settings("cold_start_days = 1e300\n").unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(e.problem.contains("cold_start_days"), "{e}");
        let e = settings("status_check_first_secs = 900\n").unwrap_err();
        assert!(e.problem.contains("status_check_first_secs"), "{e}");
        let e = settings("[accounts.api]\nid_form = \"x\"\n").unwrap_err();
        assert!(e.problem.contains("id_form"), "{e}");
        let s = settings("[accounts.api]\nid_from_param = \"idfrom\"\n").unwrap();
        assert!(s.contains("id_from_param: \"idfrom\""), "{s}");
        let e = settings("[accounts.api]\nfolder_path = \"/http_api/read_sms?folder={folder}\"\n")
            .unwrap_err();
        assert!(
            e.problem.contains("API v1 (/http_api) is not supported"),
            "{e}"
        );
    }
}
