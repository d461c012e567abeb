//! `GET /_sim/expected`: the rows a synced copy must hold, per provider, over HTTP and on
//! the handle.

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use threadsync::sim::{self, Expected, Provider, SimConfig, SimHandle};

async fn get(h: &SimHandle, query: &str) -> (StatusCode, Value) {
    let r = Client::new()
        .get(format!("{}/_sim/expected?{query}", h.base_url()))
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn ebay_expects_live_listed_threads_with_their_messages() {
    let h = sim::start(SimConfig {
        threads: 30,
        messages: 5,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let (status, body) = get(&h, "account=acct-0").await;
    assert_eq!(status, 200, "{body}");
    let served: Expected = serde_json::from_value(body).unwrap();
    let expected = h.expected("acct-0").unwrap();
    assert_eq!(served, expected);
    assert_eq!(expected.threads.len(), 30);

    let truth = h.truth(Some("acct-0"));
    let truth = &truth["accounts"][0];
    assert_eq!(
        expected.message_count() as u64,
        truth["messageCount"].as_u64().unwrap()
    );
    let t = &truth["threads"][0];
    let e = expected
        .thread(t["conversationId"].as_str().unwrap())
        .unwrap();
    assert_eq!(e.title.as_deref(), t["conversationTitle"].as_str());
    assert_eq!(e.status.as_deref(), t["conversationStatus"].as_str());
    assert_eq!(
        i64::from(e.unread_count),
        t["unreadCount"].as_i64().unwrap()
    );
    assert_eq!(
        e.latest_message_id.as_deref(),
        t["latestMessageId"].as_str()
    );
    let m = &t["messages"][0];
    assert_eq!(e.messages[0].message_id, m["messageId"].as_str().unwrap());
    assert_eq!(
        e.messages[0].sender.as_deref(),
        m["senderUsername"].as_str()
    );
    assert_eq!(e.messages[0].body.as_deref(), m["messageBody"].as_str());
    assert_eq!(e.messages[0].status, None);

    // Deleted threads and threads in the trash (status DELETE) are not listed: not expected.
    let ids: Vec<String> = expected.threads[..2]
        .iter()
        .map(|t| t.thread_id.clone())
        .collect();
    h.mutate(&json!({"account": "acct-0", "delete_ids": [ids[0]], "set_status": {ids[1].clone(): "DELETE"}}))
        .unwrap();
    let after = h.expected("acct-0").unwrap();
    assert_eq!(after.threads.len(), 28);
    assert!(ids.iter().all(|id| after.thread(id).is_none()));

    for (query, error) in [
        ("", "account is required"),
        ("account=acct-9", "unknown account acct-9"),
        (
            "account=acct-0&since=2026-01-01T00:00:00Z",
            "since is not supported",
        ),
    ] {
        let (status, body) = get(&h, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(error),
            "{query}: {body}"
        );
    }
    h.shutdown().await;
}

#[tokio::test]
async fn smseagle_expects_numbers_as_threads_within_the_window() {
    let h = sim::start(SimConfig {
        provider: Provider::Smseagle,
        threads: 5,
        messages: 20,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let all = h.expected("acct-0").unwrap();
    let truth = h.truth(Some("acct-0"));
    let rows = truth["accounts"][0]["messages"].as_array().unwrap();
    assert_eq!(all.message_count(), rows.len());
    for t in &all.threads {
        assert!(t.thread_id.starts_with("+48"), "{}", t.thread_id);
        assert_eq!((t.title.as_deref(), t.unread_count), (None, 0));
        let newest = t
            .messages
            .iter()
            .max_by_key(|m| (m.sent_at, m.message_id.clone()))
            .unwrap();
        assert_eq!(t.latest_message_id.as_ref(), Some(&newest.message_id));
        for m in &t.messages {
            let inbound = m.message_id.starts_with("in:");
            assert_eq!(m.sender.is_some(), inbound, "{m:?}");
            assert_eq!(m.recipient.is_some(), !inbound, "{m:?}");
            let status = m.status.as_deref().unwrap();
            assert!(
                status.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "snake_case status: {status}"
            );
            assert_eq!(m.sent_at.timestamp_subsec_millis(), 0, "whole seconds");
        }
    }

    // A window keeps what is dated from its start on, to the whole second.
    let mut dates: Vec<_> = all
        .threads
        .iter()
        .flat_map(|t| t.messages.iter().map(|m| m.sent_at))
        .collect();
    dates.sort();
    let since = dates[dates.len() / 2];
    let windowed = h.expected_since("acct-0", since).unwrap();
    let want = dates.iter().filter(|d| **d >= since).count();
    assert_eq!(windowed.message_count(), want);
    let (status, body) = get(
        &h,
        &format!(
            "account=acct-0&since={}",
            since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_value::<Expected>(body).unwrap(), windowed);
    let (status, _) = get(&h, "account=acct-0&since=yesterday").await;
    assert_eq!(status, 400);
    h.shutdown().await;
}

#[tokio::test]
async fn facebook_and_hostaway_serve_the_same_rows_over_http() {
    for provider in [Provider::Facebook, Provider::Hostaway] {
        let h = sim::start(SimConfig {
            provider,
            threads: 3,
            messages: 2,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let rows = h.expected("acct-0").unwrap();
        assert_eq!(rows.threads.len(), 3, "{provider:?}");
        let (status, body) = get(&h, "account=acct-0").await;
        assert_eq!(status, 200, "{provider:?}: {body}");
        let served: threadsync::sim::Expected = serde_json::from_value(body).unwrap();
        assert_eq!(served, rows, "{provider:?}");
        let (status, _) = get(&h, "account=acct-9").await;
        assert_eq!(status, 400, "{provider:?}: an unknown account");
        h.shutdown().await;
    }
}
