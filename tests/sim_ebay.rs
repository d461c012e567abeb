//! Contract tests for the eBay simulator over real loopback HTTP.

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::collections::HashSet;
use threadsync::sim::{self, Faults, Limits, SimConfig, SimHandle, StartTimeSemantics};

const BASE: &str = "/commerce/message/v1";

async fn start(cfg: SimConfig) -> (SimHandle, Client) {
    let h = sim::start(cfg).await.expect("start sim");
    (h, Client::new())
}

async fn get(c: &Client, url: &str, token: &str) -> (StatusCode, Value) {
    let r = c.get(url).bearer_auth(token).send().await.expect("send");
    let s = r.status();
    let text = r.text().await.expect("body");
    (s, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn first_error(v: &Value) -> &Value {
    &v["errors"][0]
}

/// Truth threads of one type that a default (unfiltered) list shows.
fn truth_ids(truth: &Value, account: usize, ctype: &str) -> HashSet<String> {
    truth["accounts"][account]["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["conversationType"] == ctype && t["conversationStatus"] != "DELETE")
        .map(|t| t["conversationId"].as_str().unwrap().to_string())
        .collect()
}

async fn walk_list(c: &Client, h: &SimHandle, token: &str, ctype: &str, limit: u32) -> Vec<Value> {
    let mut url = format!(
        "{}{BASE}/conversation?conversation_type={ctype}&limit={limit}",
        h.base_url()
    );
    let mut out = Vec::new();
    let mut first = true;
    loop {
        let (s, v) = get(c, &url, token).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["limit"], limit);
        assert_eq!(
            v.get("prev").is_none(),
            first,
            "prev only after the first page"
        );
        assert!(v["href"].as_str().unwrap().starts_with("http://127.0.0.1:"));
        out.extend(v["conversations"].as_array().unwrap().iter().cloned());
        first = false;
        match v.get("next").and_then(Value::as_str) {
            Some(n) => url = n.to_string(),
            None => {
                assert_eq!(out.len() as u64, v["total"].as_u64().unwrap());
                return out;
            }
        }
    }
}

#[tokio::test]
async fn list_pagination_sees_every_thread_once() {
    let (h, c) = start(SimConfig {
        accounts: 2,
        threads: 137,
        ..SimConfig::default()
    })
    .await;
    let truth = h.truth(None);
    for (acct, name) in ["acct-0", "acct-1"].iter().enumerate() {
        let token = h.token(name);
        for ctype in ["FROM_MEMBERS", "FROM_EBAY"] {
            let convs = walk_list(&c, &h, &token, ctype, 20).await;
            let ids: Vec<String> = convs
                .iter()
                .map(|t| t["conversationId"].as_str().unwrap().to_string())
                .collect();
            let unique: HashSet<String> = ids.iter().cloned().collect();
            assert_eq!(unique.len(), ids.len(), "duplicates without mutation");
            assert_eq!(unique, truth_ids(&truth, acct, ctype));
            assert!(convs.iter().all(|t| t["conversationType"] == ctype));
            // Recency order: latestMessage.createdDate descending.
            let dates: Vec<&str> = convs
                .iter()
                .map(|t| t["latestMessage"]["createdDate"].as_str().unwrap())
                .collect();
            assert!(dates.windows(2).all(|w| w[0] >= w[1]));
        }
    }
    // Two accounts hold different data.
    assert_ne!(
        truth_ids(&truth, 0, "FROM_MEMBERS"),
        truth_ids(&truth, 1, "FROM_MEMBERS")
    );
    // A single page past the end: empty, no next, prev present.
    let (s, v) = get(
        &c,
        &format!(
            "{}{BASE}/conversation?conversation_type=FROM_MEMBERS&offset=5000",
            h.base_url()
        ),
        &h.token("acct-0"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["conversations"].as_array().unwrap().len(), 0);
    assert!(v.get("next").is_none() && v.get("prev").is_some());
    assert_eq!(v["limit"], 25, "default limit");
    h.shutdown().await;
}

#[tokio::test]
async fn detail_pages_through_a_long_thread() {
    let (h, c) = start(SimConfig {
        threads: 60,
        messages: 30,
        ..SimConfig::default()
    })
    .await;
    let truth = h.truth(Some("acct-0"));
    let longest = truth["accounts"][0]["threads"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|t| t["messages"].as_array().unwrap().len())
        .unwrap()
        .clone();
    let expected: Vec<&str> = longest["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["messageId"].as_str().unwrap())
        .collect();
    assert!(
        expected.len() > 50,
        "needs several pages: {}",
        expected.len()
    );
    let mut url = format!(
        "{}{BASE}/conversation/{}?conversation_type={}&limit=50",
        h.base_url(),
        longest["conversationId"].as_str().unwrap(),
        longest["conversationType"].as_str().unwrap()
    );
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (s, v) = get(&c, &url, &h.token("acct-0")).await;
        assert_eq!(s, 200);
        pages += 1;
        assert_eq!(v["total"].as_u64().unwrap() as usize, expected.len());
        for m in v["messages"].as_array().unwrap() {
            seen.push(m["messageId"].as_str().unwrap().to_string());
        }
        match v.get("next").and_then(Value::as_str) {
            Some(n) => url = n.to_string(),
            None => break,
        }
    }
    assert_eq!(pages, expected.len().div_ceil(50));
    assert_eq!(seen, expected, "ascending by createdDate, nothing missing");
    h.shutdown().await;
}

#[tokio::test]
async fn validation_errors_use_the_ebay_envelope() {
    let (h, c) = start(SimConfig::default()).await;
    let t = h.token("acct-0");
    let base = format!("{}{BASE}/conversation", h.base_url());
    let cases = [
        ("", "conversation_type", 355_001),
        (
            "?conversation_type=FROM_OWNERS",
            "conversation_type",
            355_001,
        ),
        ("?conversation_type=FROM_MEMBERS&limit=0", "limit", 355_002),
        ("?conversation_type=FROM_MEMBERS&limit=51", "limit", 355_002),
        (
            "?conversation_type=FROM_MEMBERS&limit=abc",
            "limit",
            355_002,
        ),
        (
            "?conversation_type=FROM_MEMBERS&offset=-1",
            "offset",
            355_003,
        ),
        (
            "?conversation_type=FROM_EBAY&start_time=2025-01-01T00:00:00.000Z",
            "start_time",
            355_004,
        ),
        (
            "?conversation_type=FROM_MEMBERS&start_time=yesterday",
            "start_time",
            355_004,
        ),
        (
            "?conversation_type=FROM_MEMBERS&reference_id=123",
            "reference_type",
            355_005,
        ),
        (
            "?conversation_type=FROM_MEMBERS&reference_id=1&reference_type=ORDER",
            "reference_type",
            355_005,
        ),
        (
            "?conversation_type=FROM_MEMBERS&conversation_status=ARCHIVED",
            "conversation_status",
            355_012,
        ),
    ];
    for (q, param, id) in cases {
        let (s, v) = get(&c, &format!("{base}{q}"), &t).await;
        assert_eq!(s, 400, "{q}");
        let e = first_error(&v);
        assert_eq!(e["errorId"], id, "{q}: {v}");
        assert_eq!(e["domain"], "API_MESSAGE");
        assert_eq!(e["category"], "REQUEST");
        assert_eq!(e["parameters"][0]["name"], param, "{q}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(e["longMessage"].is_string());
    }
    // Limit accepted as a (quoted) string value.
    let (s, v) = get(
        &c,
        &format!("{base}?conversation_type=FROM_MEMBERS&limit=%2250%22"),
        &t,
    )
    .await;
    assert_eq!(s, 400, "quotes are not digits: {v}");
    let (s, v) = get(
        &c,
        &format!("{base}?conversation_type=FROM_MEMBERS&limit=50"),
        &t,
    )
    .await;
    assert_eq!((s, v["limit"].as_u64()), (StatusCode::OK, Some(50)));
    // Detail: type required, unknown id 404.
    let (s, _) = get(&c, &format!("{base}/123"), &t).await;
    assert_eq!(s, 400);
    let (s, v) = get(
        &c,
        &format!("{base}/nope?conversation_type=FROM_MEMBERS"),
        &t,
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(first_error(&v)["parameters"][0]["value"], "nope");
    // Bodies that are not JSON get the envelope too.
    let r = c
        .post(format!("{}{BASE}/send_message", h.base_url()))
        .bearer_auth(&t)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(first_error(&v)["errorId"], 355_010);
    let r = c
        .post(format!("{}{BASE}/send_message", h.base_url()))
        .bearer_auth(&t)
        .json(&json!({"otherPartyUsername": "bob", "messageText": "x".repeat(2001)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(format!("{}{BASE}/bulk_update_conversation", h.base_url()))
        .bearer_auth(&t)
        .json(&json!({"conversations": vec![json!({"conversationId":"1"}); 11]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    h.shutdown().await;
}

#[tokio::test]
async fn auth_failures_are_401_1001() {
    let (h, c) = start(SimConfig {
        token_ttl_secs: 60,
        ..SimConfig::default()
    })
    .await;
    let url = format!(
        "{}{BASE}/conversation?conversation_type=FROM_MEMBERS",
        h.base_url()
    );
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(first_error(&v)["errorId"], 1001);
    let (s, _) = get(&c, &url, "sim-ebay-acct-7").await;
    assert_eq!(s, 401, "acct-7 does not exist");
    // Minted token works until its TTL passes on the simulated clock.
    let r = c
        .post(format!("{}/identity/v1/oauth2/token", h.base_url()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "sim-ebay-refresh-acct-0"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tok: Value = r.json().await.unwrap();
    assert_eq!(tok["expires_in"], 60);
    let minted = tok["access_token"].as_str().unwrap().to_string();
    assert_eq!(get(&c, &url, &minted).await.0, 200);
    c.post(format!("{}/_sim/clock/advance", h.base_url()))
        .json(&json!({"seconds": 61}))
        .send()
        .await
        .unwrap();
    let (s, v) = get(&c, &url, &minted).await;
    assert_eq!(
        (s, first_error(&v)["errorId"].as_u64()),
        (StatusCode::UNAUTHORIZED, Some(1001))
    );
    // Static tokens never expire... unless the control endpoint expires them.
    assert_eq!(get(&c, &url, &h.token("acct-0")).await.0, 200);
    assert!(h.expire_token("acct-0"));
    assert_eq!(get(&c, &url, &h.token("acct-0")).await.0, 401);
    h.shutdown().await;
}

#[tokio::test]
async fn daily_quota_429_2001_then_analytics_shows_zero() {
    let (h, c) = start(SimConfig {
        daily_quota: Some(5),
        ..SimConfig::default()
    })
    .await;
    let t = h.token("acct-0");
    let url = format!(
        "{}{BASE}/conversation?conversation_type=FROM_MEMBERS",
        h.base_url()
    );
    for _ in 0..5 {
        assert_eq!(get(&c, &url, &t).await.0, 200);
    }
    let r = c.get(&url).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(
        r.headers().get("retry-after").is_none(),
        "eBay sends no Retry-After"
    );
    let v: Value = r.json().await.unwrap();
    let e = first_error(&v);
    assert_eq!(e["errorId"], 2001);
    assert_eq!(e["domain"], "ACCESS");
    assert_eq!(e["category"], "REQUEST");
    assert_eq!(e["message"], "Too many requests.");
    assert_eq!(
        e["longMessage"],
        "The request limit has been reached for the resource."
    );
    // The analytics call is not charged and reports exhaustion.
    let analytics = format!("{}/developer/analytics/v1_beta/rate_limit/", h.base_url());
    for _ in 0..2 {
        let (s, v) = get(&c, &analytics, &t).await;
        assert_eq!(s, 200);
        let rate = &v["rateLimits"][0]["resources"][0]["rates"][0];
        assert_eq!(rate["remaining"], 0);
        assert_eq!(rate["limit"], 5);
        assert_eq!(rate["count"], 5);
        assert_eq!(rate["timeWindow"], 86400);
        assert!(rate["reset"].as_str().unwrap().ends_with("T00:00:00.000Z"));
    }
    // Another account is unaffected.
    // (single account sim: acct-0 only) -> the reset instant restores access.
    h.advance_clock(86_400.0);
    assert_eq!(get(&c, &url, &t).await.0, 200);
    // Control endpoint can exhaust / refill.
    let r = c
        .post(format!("{}/_sim/quota", h.base_url()))
        .json(&json!({"used": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get(&c, &url, &t).await.0, 429);
    c.post(format!("{}/_sim/quota", h.base_url()))
        .json(&json!({"account": "acct-0", "used": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(get(&c, &url, &t).await.0, 200);
    h.shutdown().await;
}

#[tokio::test]
async fn rps_limit_throttles_bursts_and_stats_show_peak() {
    let (h, c) = start(SimConfig {
        rps_limit: Some(5.0),
        ..SimConfig::default()
    })
    .await;
    let t = h.token("acct-0");
    let url = format!(
        "{}{BASE}/conversation?conversation_type=FROM_EBAY",
        h.base_url()
    );
    let started = std::time::Instant::now();
    let results = futures::future::join_all((0..20).map(|_| get(&c, &url, &t))).await;
    assert!(
        started.elapsed().as_millis() < 900,
        "burst must fit in one window"
    );
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let throttled: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert_eq!(ok, 5);
    assert_eq!(throttled.len(), 15);
    assert_eq!(throttled[0].1["errors"][0]["errorId"], 2001);
    // Analytics tells a burst from quota exhaustion: remaining is not 0.
    let (_, v) = get(
        &c,
        &format!("{}/developer/analytics/v1_beta/rate_limit/", h.base_url()),
        &t,
    )
    .await;
    assert!(
        v["rateLimits"][0]["resources"][0]["rates"][0]["remaining"]
            .as_u64()
            .unwrap()
            > 0
    );
    let stats: Value = c
        .get(format!("{}/_sim/stats", h.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let a = &stats["accounts"]["acct-0"];
    assert_eq!(
        a["max_rps_1s"], 20,
        "analytics call is not a message-API call"
    );
    assert_eq!(a["throttled_429"], 15);
    assert_eq!(
        a["by_route"]["GET /commerce/message/v1/conversation"]["429"],
        15
    );
    assert_eq!(stats["totals"]["requests"], 21);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(get(&c, &url, &t).await.0, 200, "window slid");
    // Limits can be lifted at runtime.
    h.set_limits(Limits::default());
    let results = futures::future::join_all((0..20).map(|_| get(&c, &url, &t))).await;
    assert!(results.iter().all(|r| r.0 == 200));
    c.post(format!("{}/_sim/stats/reset", h.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(h.stats().totals.requests, 0);
    h.shutdown().await;
}

#[tokio::test]
async fn faults_change_at_runtime() {
    let (h, c) = start(SimConfig::default()).await;
    let t = h.token("acct-0");
    let url = format!(
        "{}{BASE}/conversation?conversation_type=FROM_MEMBERS",
        h.base_url()
    );
    for _ in 0..10 {
        assert_eq!(get(&c, &url, &t).await.0, 200);
    }
    let set = |body: Value| {
        let c = c.clone();
        let u = format!("{}/_sim/faults", h.base_url());
        async move {
            let r = c.post(u).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let v = set(json!({"error_5xx": 1.0})).await;
    assert_eq!(v["error_5xx"], 1.0);
    let (s, v) = get(&c, &url, &t).await;
    assert_eq!(s, 500);
    assert_eq!(first_error(&v)["category"], "APPLICATION");
    set(json!({"error_5xx": 0.0, "burst_429": 1.0})).await;
    let (s, v) = get(&c, &url, &t).await;
    assert_eq!(
        (s, first_error(&v)["errorId"].as_u64()),
        (StatusCode::TOO_MANY_REQUESTS, Some(2001))
    );
    set(json!({"burst_429": 0.0, "malformed": 1.0})).await;
    let r = c.get(&url).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        serde_json::from_str::<Value>(&text).is_err(),
        "body must not parse"
    );
    set(json!({"malformed": 0.0, "timeout": 1.0, "timeout_ms": 300})).await;
    let started = std::time::Instant::now();
    let r = c.get(&url).bearer_auth(&t).send().await;
    assert!(r.is_err(), "connection dropped without a response");
    assert!(started.elapsed().as_millis() >= 290);
    let route = &h.stats().accounts["acct-0"].by_route["GET /commerce/message/v1/conversation"];
    assert_eq!(
        route.get(&0),
        Some(&1),
        "dropped request recorded as status 0"
    );
    set(json!({"timeout": 0.0, "slow": 1.0, "slow_ms": 300})).await;
    let started = std::time::Instant::now();
    assert_eq!(get(&c, &url, &t).await.0, 200);
    assert!(started.elapsed().as_millis() >= 290);
    h.set_faults(Faults::default());
    assert_eq!(get(&c, &url, &t).await.0, 200);
    // Bad control input is rejected, not applied.
    let r = c
        .post(format!("{}/_sim/faults", h.base_url()))
        .json(&json!({"error_5xx": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(h.faults(), Faults::default());
    h.shutdown().await;
}

#[tokio::test]
async fn same_seed_same_data_and_same_fault_sequence() {
    let cfg = SimConfig {
        seed: 42,
        accounts: 2,
        threads: 50,
        faults: Faults {
            error_5xx: 0.3,
            burst_429: 0.2,
            ..Faults::default()
        },
        ..SimConfig::default()
    };
    let (a, c) = start(cfg.clone()).await;
    let (b, _) = start(cfg.clone()).await;
    let (other, _) = start(SimConfig { seed: 43, ..cfg }).await;
    assert_eq!(a.truth(None), b.truth(None));
    assert_ne!(a.truth(None), other.truth(None));
    let mut seqs = Vec::new();
    for h in [&a, &b, &other] {
        let url = format!(
            "{}{BASE}/conversation?conversation_type=FROM_MEMBERS",
            h.base_url()
        );
        let mut seq = Vec::new();
        for _ in 0..40 {
            seq.push(get(&c, &url, &h.token("acct-0")).await.0.as_u16());
        }
        seqs.push(seq);
    }
    assert_eq!(seqs[0], seqs[1]);
    assert_ne!(seqs[0], seqs[2]);
    assert!(seqs[0].contains(&200) && seqs[0].contains(&500) && seqs[0].contains(&429));
    for h in [a, b, other] {
        h.shutdown().await;
    }
}

async fn page_ids(c: &Client, h: &SimHandle, offset: usize) -> (Vec<String>, u64) {
    let (s, v) = get(
        c,
        &format!(
            "{}{BASE}/conversation?conversation_type=FROM_MEMBERS&limit=10&offset={offset}",
            h.base_url()
        ),
        &h.token("acct-0"),
    )
    .await;
    assert_eq!(s, 200);
    let ids = v["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["conversationId"].as_str().unwrap().to_string())
        .collect();
    (ids, v["total"].as_u64().unwrap())
}

#[tokio::test]
async fn mutations_move_threads_and_shift_offsets() {
    let (h, c) = start(SimConfig::default()).await;
    let (p1, total) = page_ids(&c, &h, 0).await;
    let (p2, _) = page_ids(&c, &h, 10).await;
    let target = p2[5].clone();
    let r = c
        .post(format!("{}/_sim/mutate", h.base_url()))
        .json(&json!({"account": "acct-0", "new_messages": 1, "thread_ids": [target]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let changed: Value = r.json().await.unwrap();
    let new_mid = changed["newMessages"][0]["messageId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(changed["newMessages"][0]["conversationId"], target);
    let (q1, total2) = page_ids(&c, &h, 0).await;
    let (q2, _) = page_ids(&c, &h, 10).await;
    assert_eq!(total2, total);
    assert_eq!(q1[0], target, "bumped to the head");
    assert_eq!(q1[1..], p1[..9], "everything before it shifted down by one");
    assert_eq!(
        q2[0], p1[9],
        "the old last item of page 1 is now on page 2 (boundary duplicate)"
    );
    // The detail shows the new message last.
    let (_, d) = get(
        &c,
        &format!(
            "{}{BASE}/conversation/{target}?conversation_type=FROM_MEMBERS&offset=0&limit=50",
            h.base_url()
        ),
        &h.token("acct-0"),
    )
    .await;
    let total_msgs = d["total"].as_u64().unwrap() as usize;
    let (_, last) = get(
        &c,
        &format!(
            "{}{BASE}/conversation/{target}?conversation_type=FROM_MEMBERS&limit=1&offset={}",
            h.base_url(),
            total_msgs - 1
        ),
        &h.token("acct-0"),
    )
    .await;
    assert_eq!(last["messages"][0]["messageId"], new_mid.as_str());
    assert_eq!(
        last["messages"][0]["senderUsername"],
        d["messages"][0]["senderUsername"]
    );
    // New thread joins at the head, deletion removes it and shifts pages up. (Wait a few
    // milliseconds first: a tie on the latest message's timestamp is broken by id.)
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let changed = h
        .mutate(&json!({"account": "acct-0", "new_threads": 1, "delete_ids": [p1[0].clone()]}))
        .unwrap();
    let new_thread = changed["newThreads"][0]["conversationId"]
        .as_str()
        .unwrap()
        .to_string();
    let (r1, total3) = page_ids(&c, &h, 0).await;
    assert_eq!(total3, total, "one added, one deleted");
    assert_eq!(r1[0], new_thread);
    assert!(!r1.contains(&p1[0]));
    let (s, _) = get(
        &c,
        &format!(
            "{}{BASE}/conversation/{}?conversation_type=FROM_MEMBERS",
            h.base_url(),
            p1[0]
        ),
        &h.token("acct-0"),
    )
    .await;
    assert_eq!(s, 404, "deleted thread");
    let truth = h.truth(Some("acct-0"));
    assert!(truth["accounts"][0]["deletedThreadIds"]
        .as_array()
        .unwrap()
        .contains(&json!(p1[0])));
    h.shutdown().await;
}

#[tokio::test]
async fn start_time_semantics_inbound_only_hides_seller_replies() {
    for (semantics, expect_visible) in [
        (StartTimeSemantics::AnyMessage, true),
        (StartTimeSemantics::InboundOnly, false),
    ] {
        let (h, c) = start(SimConfig {
            start_time_semantics: semantics,
            ..SimConfig::default()
        })
        .await;
        let changed = h
            .mutate(&json!({"account": "acct-0", "new_messages": 1, "direction": "outbound"}))
            .unwrap();
        let tid = changed["newMessages"][0]["conversationId"]
            .as_str()
            .unwrap()
            .to_string();
        let created = changed["newMessages"][0]["createdDate"]
            .as_str()
            .unwrap()
            .to_string();
        let (s, v) = get(
            &c,
            &format!(
                "{}{BASE}/conversation?conversation_type=FROM_MEMBERS&start_time={created}",
                h.base_url()
            ),
            &h.token("acct-0"),
        )
        .await;
        assert_eq!(s, 200);
        let ids: Vec<&str> = v["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["conversationId"].as_str().unwrap())
            .collect();
        assert_eq!(ids.contains(&tid.as_str()), expect_visible, "{semantics:?}");
        assert_eq!(v["total"].as_u64().unwrap() as usize, ids.len());
        h.shutdown().await;
    }
}

#[tokio::test]
async fn send_update_and_bulk_update_change_state() {
    let (h, c) = start(SimConfig::default()).await;
    let t = h.token("acct-0");
    let r = c
        .post(format!("{}{BASE}/send_message", h.base_url()))
        .bearer_auth(&t)
        .json(&json!({"otherPartyUsername": "buyer_x", "messageText": "hello there"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let sent: Value = r.json().await.unwrap();
    assert_eq!(sent["senderUserName"], "seller_0");
    assert_eq!(sent["recipientUserName"], "buyer_x");
    assert!(sent.get("senderUsername").is_none());
    assert_eq!(sent["messageBody"], "hello there");
    let (_, list) = get(
        &c,
        &format!(
            "{}{BASE}/conversation?conversation_type=FROM_MEMBERS&limit=1",
            h.base_url()
        ),
        &t,
    )
    .await;
    let head = &list["conversations"][0];
    assert_eq!(head["latestMessage"]["messageId"], sent["messageId"]);
    let cid = head["conversationId"].as_str().unwrap().to_string();
    // Find an unread thread and mark it read.
    let truth = h.truth(Some("acct-0"));
    let unread = truth["accounts"][0]["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["unreadCount"].as_u64().unwrap() > 0 && t["conversationType"] == "FROM_MEMBERS")
        .unwrap()["conversationId"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .post(format!("{}{BASE}/update_conversation", h.base_url()))
        .bearer_auth(&t)
        .json(
            &json!({"conversationId": unread, "conversationType": "FROM_MEMBERS",
                      "read": true, "conversationStatus": "ARCHIVE"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let after = h.truth(Some("acct-0"));
    let th = after["accounts"][0]["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["conversationId"] == unread.as_str())
        .unwrap()
        .clone();
    assert_eq!(th["unreadCount"], 0);
    assert_ne!(th["conversationStatus"], "ARCHIVE", "read wins over status");
    let r = c
        .post(format!("{}{BASE}/bulk_update_conversation", h.base_url()))
        .bearer_auth(&t)
        .json(&json!({"conversations": [
            {"conversationId": cid, "conversationType": "FROM_MEMBERS", "conversationStatus": "ARCHIVE"},
            {"conversationId": "missing", "conversationType": "FROM_MEMBERS", "conversationStatus": "ARCHIVE"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["conversationsMetadata"]["updateSuccessCount"], 1);
    assert_eq!(v["conversationsMetadata"]["updateFailureCount"], 1);
    assert_eq!(v["conversationsResponse"][1]["updateStatus"], "FAILURE");
    let (_, archived) = get(
        &c,
        &format!(
            "{}{BASE}/conversation?conversation_type=FROM_MEMBERS&conversation_status=ARCHIVE&limit=50",
            h.base_url()
        ),
        &t,
    )
    .await;
    assert!(archived["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["conversationStatus"] == "ARCHIVE"));
    assert!(archived["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["conversationId"] == cid.as_str()));
    h.shutdown().await;
}

#[tokio::test]
async fn scripted_delete_after_page_one_skips_an_item_at_the_boundary() {
    let (h, c) = start(SimConfig::default()).await;
    let list = |offset: usize, limit: usize| {
        let c = c.clone();
        let u = format!(
            "{}{BASE}/conversation?conversation_type=FROM_MEMBERS&limit={limit}&offset={offset}",
            h.base_url()
        );
        let t = h.token("acct-0");
        async move {
            let (s, v) = get(&c, &u, &t).await;
            assert_eq!(s, 200);
            v["conversations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["conversationId"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let before = list(0, 30).await;
    // "Delete the item at offset 3 right after page 1 is served."
    let r = c
        .post(format!("{}/_sim/script", h.base_url()))
        .json(&json!({"in_requests": 1, "mutate": {"account": "acct-0", "delete_offsets": [3]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page1 = list(0, 10).await;
    assert_eq!(page1, before[..10], "page 1 was served before the deletion");
    let page2 = list(10, 10).await;
    assert_eq!(page2, before[11..21], "everything shifted up by one");
    assert!(
        !page1.contains(&before[10]) && !page2.contains(&before[10]),
        "skipped"
    );
    let done = h.scheduled();
    assert_eq!(done[0].after_request, 2);
    assert_eq!(
        done[0].result.as_ref().unwrap()["deletedThreadIds"][0],
        before[3].as_str()
    );
    // "Bump item 25 to the head between pages 2 and 3": missed by this pass.
    h.schedule_mutation(1, json!({"account": "acct-0", "bump_offsets": [25]}));
    let now = list(0, 30).await;
    let p3 = list(20, 10).await;
    assert!(!p3.contains(&now[25]), "moved ahead of the reader");
    assert_eq!(list(0, 1).await[0], now[25]);
    h.shutdown().await;
}

#[tokio::test]
async fn hostile_inputs_get_error_shapes_not_crashes() {
    let (h, c) = start(SimConfig::default()).await;
    let t = h.token("acct-0");
    let base = format!("{}{BASE}/conversation", h.base_url());
    for q in [
        "?conversation_type=FROM_MEMBERS&offset=9223372036854775807&limit=50",
        "?conversation_type=FROM_MEMBERS&offset=99999999999999999999999",
        "?conversation_type=%FF%FE&limit=%",
        "?conversation_type=FROM_MEMBERS&start_time=2025-01-01T00:00:00Z&end_time=2024-01-01T00:00:00Z",
        "?&&&=&conversation_type=FROM_MEMBERS",
    ] {
        let (s, v) = get(&c, &format!("{base}{q}"), &t).await;
        assert!(s == 200 || s == 400, "{q}: {s}");
        assert!(v.is_object(), "{q}: JSON body");
    }
    let r = c
        .post(format!("{}/_sim/clock/advance", h.base_url()))
        .json(&json!({"seconds": 1e300}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for body in ["", "[]", "{\"conversations\": 5}", "\u{0}"] {
        let r = c
            .post(format!("{}{BASE}/bulk_update_conversation", h.base_url()))
            .bearer_auth(&t)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body:?}");
    }
    let r = c
        .post(format!("{}/_sim/mutate", h.base_url()))
        .json(&json!({"account": "acct-0", "delete_offsets": [100000]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        get(&c, &format!("{base}?conversation_type=FROM_MEMBERS"), &t)
            .await
            .0,
        200
    );
    h.shutdown().await;
}

#[tokio::test]
async fn list_sort_knob_and_missing_scope() {
    use threadsync::sim::ListSort;
    let (h, c) = start(SimConfig {
        list_sort: ListSort::LatestAsc,
        ..SimConfig::default()
    })
    .await;
    let convs = walk_list(&c, &h, &h.token("acct-0"), "FROM_MEMBERS", 50).await;
    let dates: Vec<&str> = convs
        .iter()
        .map(|t| t["latestMessage"]["createdDate"].as_str().unwrap())
        .collect();
    assert!(dates.windows(2).all(|w| w[0] <= w[1]), "ascending");
    let (s, v) = get(
        &c,
        &format!(
            "{}{BASE}/conversation?conversation_type=FROM_MEMBERS",
            h.base_url()
        ),
        "sim-ebay-noscope-acct-0",
    )
    .await;
    assert_eq!(s, 403);
    assert_eq!(first_error(&v)["errorId"], 1100);
    h.shutdown().await;
    let (h, c) = start(SimConfig {
        list_sort: ListSort::CreatedDesc,
        ..SimConfig::default()
    })
    .await;
    let convs = walk_list(&c, &h, &h.token("acct-0"), "FROM_MEMBERS", 50).await;
    let created: Vec<&str> = convs
        .iter()
        .map(|t| t["createdDate"].as_str().unwrap())
        .collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "created desc");
    h.shutdown().await;
}

#[tokio::test]
async fn user_ids_second_resolution_detail_lag_and_status_flips() {
    let (h, c) = start(SimConfig {
        ebay_user_ids: true,
        second_resolution: true,
        list_detail_lag_ms: 60_000,
        ..SimConfig::default()
    })
    .await;
    let t = h.token("acct-0");
    let list_url = |q: &str| {
        format!(
            "{}{BASE}/conversation?conversation_type=FROM_MEMBERS&limit=50{q}",
            h.base_url()
        )
    };
    let (_, v) = get(&c, &list_url(""), &t).await;
    for conv in v["conversations"].as_array().unwrap() {
        let m = &conv["latestMessage"];
        for who in ["senderUsername", "recipientUsername"] {
            let u = m[who].as_str().unwrap();
            assert!(u.starts_with('u') && u.len() == 17, "opaque id, got {u}");
        }
        assert!(m["createdDate"].as_str().unwrap().ends_with(".000Z"));
    }
    // The list shows the new message at once; the detail only after the lag.
    let target = v["conversations"][10]["conversationId"]
        .as_str()
        .unwrap()
        .to_string();
    let changed = h
        .mutate(&json!({"account": "acct-0", "thread_ids": [target], "new_messages": 1}))
        .unwrap();
    let mid = changed["newMessages"][0]["messageId"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, v) = get(&c, &list_url(""), &t).await;
    assert_eq!(
        v["conversations"][0]["latestMessage"]["messageId"],
        mid.as_str()
    );
    let detail = format!(
        "{}{BASE}/conversation/{target}?conversation_type=FROM_MEMBERS&limit=50",
        h.base_url()
    );
    let all_ids = |v: &Value| -> Vec<String> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["messageId"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, d) = get(&c, &format!("{detail}&offset=0"), &t).await;
    let total = d["total"].as_u64().unwrap();
    let (_, last) = get(
        &c,
        &format!("{detail}&offset={}", total.saturating_sub(1)),
        &t,
    )
    .await;
    assert!(!all_ids(&last).contains(&mid), "detail lags the list");
    h.advance_clock(61.0);
    let (_, d2) = get(&c, &format!("{detail}&offset={total}"), &t).await;
    assert_eq!(d2["total"].as_u64().unwrap(), total + 1);
    assert_eq!(all_ids(&d2), vec![mid]);
    // Status flips move threads in and out of filtered lists.
    let (_, unread) = get(&c, &list_url("&conversation_status=UNREAD"), &t).await;
    let flip = unread["conversations"][0]["conversationId"]
        .as_str()
        .unwrap()
        .to_string();
    let before = unread["total"].as_u64().unwrap();
    let out = h
        .mutate(&json!({"account": "acct-0", "set_status": {flip.clone(): "READ"}}))
        .unwrap();
    assert_eq!(out["statusChangedIds"][0], flip.as_str());
    let (_, unread2) = get(&c, &list_url("&conversation_status=UNREAD"), &t).await;
    assert_eq!(unread2["total"].as_u64().unwrap(), before - 1);
    assert!(h
        .mutate(&json!({"account": "acct-0", "set_status": {flip: "ARCHIVED"}}))
        .is_err());
    h.shutdown().await;
}

#[tokio::test]
async fn background_workload_adds_messages_and_reorders_the_list() {
    let (h, c) = start(SimConfig {
        mutate_rate: 500.0,
        ..SimConfig::default()
    })
    .await;
    let count = |v: &Value| v["accounts"][0]["messageCount"].as_u64().unwrap();
    let before = count(&h.truth(None));
    let head = |c: Client, url: String, t: String| async move {
        let (_, v) = get(&c, &url, &t).await;
        v["conversations"][0]["latestMessage"]["messageId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let url = format!(
        "{}{BASE}/conversation?conversation_type=FROM_MEMBERS&limit=1",
        h.base_url()
    );
    let t = h.token("acct-0");
    let first = head(c.clone(), url.clone(), t.clone()).await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let after = count(&h.truth(None));
    assert!(after >= before + 100, "{before} -> {after}");
    assert_ne!(
        head(c, url, t).await,
        first,
        "a newer message now heads the list"
    );
    h.shutdown().await;
}

/// The API's list and detail views agree with /_sim/truth after every kind
/// of change (the simulator serves pre-rendered JSON; this catches staleness).
#[tokio::test]
async fn api_views_match_truth_after_changes() {
    let (h, c) = start(SimConfig {
        threads: 40,
        ..SimConfig::default()
    })
    .await;
    let t = h.token("acct-0");
    let truth0 = h.truth(Some("acct-0"));
    let ids: Vec<String> = truth0["accounts"][0]["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["conversationType"] == "FROM_MEMBERS")
        .map(|x| x["conversationId"].as_str().unwrap().to_string())
        .collect();
    h.mutate(&json!({"account": "acct-0", "new_messages": 5, "new_threads": 2, "delete_threads": 1,
                     "set_status": {ids[0].clone(): "ARCHIVE", ids[1].clone(): "READ", ids[2].clone(): "UNREAD"}}))
        .unwrap();
    let post = |path: &str, body: Value| {
        let c = c.clone();
        let u = format!("{}{BASE}/{path}", h.base_url());
        let t = t.clone();
        async move {
            c.post(u)
                .bearer_auth(t)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        post(
            "update_conversation",
            json!({"conversationId": ids[3], "conversationType": "FROM_MEMBERS", "read": true})
        )
        .await,
        204
    );
    assert_eq!(post("update_conversation", json!({"conversationId": ids[4], "conversationType": "FROM_MEMBERS", "conversationStatus": "ARCHIVE"})).await, 204);
    assert_eq!(post("send_message", json!({"conversationId": ids[5], "messageText": "reply",
        "messageMedia": [{"mediaName": "x.txt", "mediaType": "TXT", "mediaUrl": "https://x.test/x.txt"}]})).await, 201);
    assert_eq!(post("bulk_update_conversation", json!({"conversations": [{"conversationId": ids[6], "conversationType": "FROM_MEMBERS", "conversationStatus": "UNREAD"}]})).await, 200);

    let truth = h.truth(Some("acct-0"));
    let listed = walk_list(&c, &h, &t, "FROM_MEMBERS", 50).await;
    let by_id: std::collections::HashMap<&str, &Value> = truth["accounts"][0]["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["conversationId"].as_str().unwrap(), x))
        .collect();
    assert_eq!(listed.len(), truth_ids(&truth, 0, "FROM_MEMBERS").len());
    for conv in &listed {
        let id = conv["conversationId"].as_str().unwrap();
        let tr = by_id[id];
        assert_eq!(conv["unreadCount"], tr["unreadCount"], "{id}");
        assert_eq!(conv["conversationStatus"], tr["conversationStatus"], "{id}");
        assert_eq!(
            conv["latestMessage"]["messageId"], tr["latestMessageId"],
            "{id}"
        );
        let (s, d) = get(
            &c,
            &format!(
                "{}{BASE}/conversation/{id}?conversation_type=FROM_MEMBERS&limit=50",
                h.base_url()
            ),
            &t,
        )
        .await;
        assert_eq!(s, 200);
        for (api, want) in d["messages"]
            .as_array()
            .unwrap()
            .iter()
            .zip(tr["messages"].as_array().unwrap())
        {
            let mut want = want.clone();
            let w = want.as_object_mut().unwrap();
            w.remove("direction");
            if w["messageMedia"].as_array().unwrap().is_empty() {
                w.remove("messageMedia");
            }
            assert_eq!(api, &want, "{id}");
        }
    }
    h.shutdown().await;
}

#[tokio::test]
async fn background_deletes_and_status_flips() {
    let (h, _c) = start(SimConfig {
        mutate_rate: 500.0,
        mutate_delete_share: 0.3,
        mutate_flip_share: 0.3,
        ..SimConfig::default()
    })
    .await;
    let archived = |v: &Value| {
        v["accounts"][0]["threads"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["conversationStatus"] == "ARCHIVE")
            .map(|t| t["conversationId"].as_str().unwrap().to_string())
            .collect::<HashSet<_>>()
    };
    let before = h.truth(None);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let after = h.truth(None);
    let deleted = after["accounts"][0]["deletedThreadIds"]
        .as_array()
        .unwrap()
        .len();
    assert!(deleted >= 10, "about 45 deletes expected, got {deleted}");
    assert_ne!(
        archived(&before),
        archived(&after),
        "some threads flipped status"
    );
    h.shutdown().await;
}
