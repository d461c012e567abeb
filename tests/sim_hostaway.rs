//! Contract tests for the Hostaway simulator.

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::collections::HashSet;
use threadsync::sim::{self, Provider, SimConfig, SimHandle};

fn cfg() -> SimConfig {
    SimConfig {
        provider: Provider::Hostaway,
        threads: 45,
        messages: 12,
        hostaway_ip_limit: 10_000,
        hostaway_account_limit: 10_000,
        ..SimConfig::default()
    }
}

async fn get(c: &Client, h: &SimHandle, path: &str, token: &str) -> (StatusCode, Value) {
    let r = c
        .get(format!("{}{path}", h.base_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn ids(v: &Value) -> Vec<u64> {
    v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn reservations_offset_and_after_id_pagination() {
    let h = sim::start(cfg()).await.unwrap();
    let c = Client::new();
    let t = h.token("acct-0");
    let truth = h.truth(Some("acct-0"));
    let expected: HashSet<u64> = truth["accounts"][0]["reservations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    // Offset walk in the default order (updatedOn desc).
    let mut seen = Vec::new();
    let mut updated = Vec::new();
    for page in 0.. {
        let (s, v) = get(
            &c,
            &h,
            &format!("/v1/reservations?limit=10&offset={}", page * 10),
            &t,
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(v["status"], "success");
        assert_eq!(v["count"], 45);
        assert_eq!(v["totalPages"], 5);
        assert_eq!(v["page"], page + 1);
        if ids(&v).is_empty() {
            assert_eq!(page, 5);
            break;
        }
        seen.extend(ids(&v));
        updated.extend(
            v["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["updatedOn"].as_str().unwrap().to_string()),
        );
    }
    assert_eq!(seen.iter().copied().collect::<HashSet<_>>(), expected);
    assert_eq!(seen.len(), expected.len());
    assert!(
        updated.windows(2).all(|w| w[0] >= w[1]),
        "updatedOn desc by default"
    );
    assert!(
        updated[0].len() == 19 && !updated[0].contains('T'),
        "YYYY-MM-DD HH:MM:SS"
    );
    // afterId walk with sortOrder=updatedOn (ascending) until an empty result.
    let mut after = None::<u64>;
    let mut asc = Vec::new();
    loop {
        let q = match after {
            Some(a) => {
                format!("/v1/reservations?sortOrder=updatedOn&limit=8&afterId={a}&offset=999")
            }
            None => "/v1/reservations?sortOrder=updatedOn&limit=8".to_string(),
        };
        let (s, v) = get(&c, &h, &q, &t).await;
        assert_eq!(s, 200);
        let page = ids(&v);
        let Some(last) = page.last().copied() else {
            break;
        };
        asc.extend(page);
        after = Some(last);
    }
    let mut rev = seen.clone();
    rev.reverse();
    assert_eq!(
        asc, rev,
        "ascending afterId walk is the reverse of the default order"
    );
    let (s, v) = get(&c, &h, "/v1/reservations?limit=abc", &t).await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::BAD_REQUEST, Some("fail"))
    );
    h.shutdown().await;
}

#[tokio::test]
async fn conversations_and_messages_paginate_and_move_on_new_messages() {
    let h = sim::start(cfg()).await.unwrap();
    let c = Client::new();
    let t = h.token("acct-0");
    let mut convs = Vec::new();
    for off in (0..).step_by(20) {
        let (_, v) = get(
            &c,
            &h,
            &format!("/v1/conversations?limit=20&offset={off}"),
            &t,
        )
        .await;
        if ids(&v).is_empty() {
            break;
        }
        convs.extend(v["result"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(convs.len(), 45);
    let truth = h.truth(Some("acct-0"));
    let longest = truth["accounts"][0]["reservations"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|r| r["messages"].as_array().unwrap().len())
        .unwrap()
        .clone();
    let cid = longest["conversationId"].as_u64().unwrap();
    let expected: Vec<u64> = longest["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["status"] == "sent")
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    let mut seen = Vec::new();
    for off in (0..).step_by(5) {
        let (s, v) = get(
            &c,
            &h,
            &format!("/v1/conversations/{cid}/messages?limit=5&offset={off}"),
            &t,
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(v["count"].as_u64().unwrap() as usize, expected.len());
        if ids(&v).is_empty() {
            break;
        }
        seen.extend(ids(&v));
    }
    assert_eq!(seen, expected);
    assert_eq!(get(&c, &h, "/v1/conversations/1/messages", &t).await.0, 404);
    // A new guest message moves the conversation to the head.
    let last = convs.last().unwrap()["id"].as_u64().unwrap();
    h.mutate(&json!({"account": "acct-0", "new_messages": 1, "thread_ids": [last]}))
        .unwrap();
    let (_, v) = get(&c, &h, "/v1/conversations?limit=1", &t).await;
    assert_eq!(v["result"][0]["id"], last);
    assert_eq!(v["result"][0]["hasUnreadMessages"], 1);
    h.shutdown().await;
}

#[tokio::test]
async fn rate_limits_per_ip_and_per_account() {
    let h = sim::start(SimConfig {
        hostaway_ip_limit: 15,
        hostaway_account_limit: 20,
        ..cfg()
    })
    .await
    .unwrap();
    let c = Client::new();
    let t = h.token("acct-0");
    let call = |ip: &'static str| {
        let c = c.clone();
        let u = format!("{}/v1/conversations?limit=1", h.base_url());
        let t = t.clone();
        async move {
            let r = c
                .get(u)
                .bearer_auth(t)
                .header("X-Sim-Client-IP", ip)
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    for _ in 0..15 {
        assert_eq!(call("10.0.0.1").await.0, 200);
    }
    let (s, v) = call("10.0.0.1").await;
    assert_eq!(s, 429);
    assert_eq!(v["status"], "fail");
    assert!(v["message"].as_str().unwrap().contains("rate limits"));
    // Another IP has its own budget, but the account allows 20 per window.
    for _ in 0..5 {
        assert_eq!(call("10.0.0.2").await.0, 200);
    }
    assert_eq!(call("10.0.0.3").await.0, 429, "account limit reached");
    let stats = h.stats();
    assert_eq!(stats.accounts["acct-0"].throttled_429, 2);
    h.shutdown().await;
}

#[tokio::test]
async fn tokens_403_until_valid_and_after_revocation() {
    let h = sim::start(cfg()).await.unwrap();
    let c = Client::new();
    assert_eq!(get(&c, &h, "/v1/conversations", "nope").await.0, 403);
    let mint = |secret: &'static str| {
        let c = c.clone();
        let u = format!("{}/v1/accessTokens", h.base_url());
        async move {
            c.post(u)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", "acct-0"),
                    ("client_secret", secret),
                    ("scope", "general"),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(mint("wrong").await.status(), 403);
    let r = mint("sim-secret-acct-0").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token_type"], "Bearer");
    let tok = v["access_token"].as_str().unwrap().to_string();
    let (s, v) = get(&c, &h, "/v1/conversations?limit=1", &tok).await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::FORBIDDEN, Some("fail")),
        "valid 1 s after issue"
    );
    h.advance_clock(1.5);
    assert_eq!(get(&c, &h, "/v1/conversations?limit=1", &tok).await.0, 200);
    let r = c
        .delete(format!("{}/v1/accessTokens?token={tok}", h.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get(&c, &h, "/v1/conversations?limit=1", &tok).await.0, 403);
    h.shutdown().await;
}

#[tokio::test]
async fn send_message_reservation_lookup_and_activity_window() {
    let h = sim::start(cfg()).await.unwrap();
    let c = Client::new();
    let t = h.token("acct-0");
    let (_, v) = get(
        &c,
        &h,
        "/v1/reservations?limit=1&sortOrder=latestActivity",
        &t,
    )
    .await;
    let oldest = v["result"][0].clone();
    let rid = oldest["id"].as_u64().unwrap();
    let (s, one) = get(&c, &h, &format!("/v1/reservations/{rid}"), &t).await;
    assert_eq!(s, 200);
    assert_eq!(one["result"]["id"], rid);
    let (_, convs) = get(&c, &h, &format!("/v1/reservations/{rid}/conversations"), &t).await;
    let cid = convs["result"][0]["id"].as_u64().unwrap();
    assert_eq!(convs["result"][0]["reservationId"], rid);
    assert_eq!(get(&c, &h, "/v1/reservations/42", &t).await.0, 404);
    // Only reservations active on or after the oldest one's day.
    let day = &oldest["latestActivityOn"].as_str().unwrap()[..10];
    let (s, v) = get(
        &c,
        &h,
        &format!("/v1/reservations?latestActivityEnd={day}"),
        &t,
    )
    .await;
    assert_eq!(s, 200);
    assert!(ids(&v).contains(&rid));
    assert!(v["result"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| &r["latestActivityOn"].as_str().unwrap()[..10] <= day));
    let (s, _) = get(&c, &h, "/v1/reservations?latestActivityStart=soon", &t).await;
    assert_eq!(s, 400);
    // Sending a reply makes it the newest message and moves the conversation up.
    let r = c
        .post(format!("{}/v1/conversations/{cid}/messages", h.base_url()))
        .bearer_auth(&t)
        .json(&json!({"body": "See you soon", "communicationType": "email"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sent: Value = r.json().await.unwrap();
    assert_eq!(sent["result"]["isIncoming"], 0);
    assert_eq!(sent["result"]["body"], "See you soon");
    let (_, head) = get(&c, &h, "/v1/conversations?limit=1", &t).await;
    assert_eq!(head["result"][0]["id"], cid);
    assert_eq!(
        head["result"][0]["conversationMessages"][0]["id"],
        sent["result"]["id"]
    );
    let r = c
        .post(format!("{}/v1/conversations/{cid}/messages", h.base_url()))
        .bearer_auth(&t)
        .json(&json!({"communicationType": "fax"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    h.shutdown().await;
}

#[tokio::test]
async fn injected_faults_use_hostaway_shapes() {
    use threadsync::sim::Faults;
    let h = sim::start(cfg()).await.unwrap();
    let c = Client::new();
    let t = h.token("acct-0");
    h.set_faults(Faults {
        error_5xx: 1.0,
        ..Faults::default()
    });
    let (s, v) = get(&c, &h, "/v1/conversations", &t).await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, Some("fail"))
    );
    h.set_faults(Faults {
        burst_429: 1.0,
        ..Faults::default()
    });
    let r = c
        .get(format!("{}/v1/conversations", h.base_url()))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_none());
    h.set_faults(Faults::default());
    assert_eq!(get(&c, &h, "/v1/conversations?limit=1", &t).await.0, 200);
    h.shutdown().await;
}
