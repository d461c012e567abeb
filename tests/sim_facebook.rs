//! Contract tests for the Facebook Graph conversations simulator.

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use threadsync::sim::{self, Provider, SimConfig, SimHandle};

fn cfg() -> SimConfig {
    SimConfig {
        provider: Provider::Facebook,
        threads: 60,
        messages: 15,
        rps_limit: Some(10_000.0),
        ..SimConfig::default()
    }
}

async fn get(c: &Client, url: &str) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let r = c.get(url).send().await.unwrap();
    let (s, h) = (r.status(), r.headers().clone());
    (s, r.json().await.unwrap_or(Value::Null), h)
}

fn url(h: &SimHandle, path: &str, q: &str) -> String {
    format!(
        "{}/v21.0/{path}?access_token={}&{q}",
        h.base_url(),
        h.token("acct-0")
    )
}

#[tokio::test]
async fn cursor_pagination_with_short_pages_sees_every_visible_thread() {
    let h = sim::start(SimConfig {
        drop_rate: 0.3,
        ..cfg()
    })
    .await
    .unwrap();
    let c = Client::new();
    let mut next = Some(url(
        &h,
        "acct-0/conversations",
        "limit=10&fields=id,updated_time,unread_count",
    ));
    let mut seen = Vec::new();
    let mut short_with_next = 0;
    let mut pages = 0;
    while let Some(u) = next {
        let (s, v, _) = get(&c, &u).await;
        assert_eq!(s, 200, "{v}");
        pages += 1;
        let data = v["data"].as_array().unwrap();
        next = v["paging"]["next"].as_str().map(str::to_string);
        if data.len() < 10 && next.is_some() {
            short_with_next += 1;
        }
        seen.extend(data.iter().map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                t["updated_time"].as_str().unwrap().to_string(),
            )
        }));
    }
    assert_eq!(pages, 6, "60 threads / 10 per page");
    assert!(
        short_with_next > 0,
        "privacy filtering must shorten some pages"
    );
    let truth = h.truth(Some("acct-0"));
    let visible: Vec<String> = truth["accounts"][0]["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["privacy_filtered"] == false)
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    let ids: Vec<String> = seen.iter().map(|x| x.0.clone()).collect();
    assert_eq!(ids, visible);
    assert!(
        seen.windows(2).all(|w| w[0].1 >= w[1].1),
        "updated_time desc"
    );
    assert!(seen[0].1.ends_with("+0000"));
    h.shutdown().await;
}

#[tokio::test]
async fn deleting_the_cursor_item_invalidates_the_cursor() {
    let h = sim::start(cfg()).await.unwrap();
    let c = Client::new();
    let (_, v, _) = get(&c, &url(&h, "acct-0/conversations", "limit=5")).await;
    let last = v["data"][4]["id"].as_str().unwrap().to_string();
    let next = v["paging"]["next"].as_str().unwrap().to_string();
    assert!(v["paging"].get("previous").is_none());
    // Another item's deletion does not break the cursor.
    let other = v["data"][0]["id"].as_str().unwrap().to_string();
    h.mutate(&json!({"account": "acct-0", "delete_ids": [other]}))
        .unwrap();
    let (s, page2, _) = get(&c, &next).await;
    assert_eq!(s, 200);
    assert!(page2["paging"]["previous"].is_string());
    h.mutate(&json!({"account": "acct-0", "delete_ids": [last]}))
        .unwrap();
    let (s, e, _) = get(&c, &next).await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["code"], 100);
    assert_eq!(e["error"]["type"], "OAuthException");
    let (s, _, _) = get(
        &c,
        &url(&h, "acct-0/conversations", "after=bm90LWEtY3Vyc29y"),
    )
    .await;
    assert_eq!(s, 400, "garbage cursor");
    h.shutdown().await;
}

#[tokio::test]
async fn two_calls_per_second_per_page_then_613() {
    let h = sim::start(SimConfig {
        rps_limit: None,
        ..cfg()
    })
    .await
    .unwrap();
    let c = Client::new();
    let mut codes = Vec::new();
    let mut header = None;
    for _ in 0..5 {
        let (s, v, hd) = get(&c, &url(&h, "acct-0/conversations", "limit=1")).await;
        codes.push((s.as_u16(), v["error"]["code"].as_u64()));
        if s == 400 {
            header = hd
                .get("x-business-use-case-usage")
                .map(|x| x.to_str().unwrap().to_string());
        }
    }
    assert_eq!(&codes[..2], &[(200, None), (200, None)]);
    assert!(
        codes[2..].iter().all(|c| *c == (400, Some(613))),
        "{codes:?}"
    );
    let usage: Value = serde_json::from_str(&header.expect("usage header")).unwrap();
    assert!(usage["acct-0"][0]["estimated_time_to_regain_access"]
        .as_u64()
        .is_some());
    tokio::time::sleep(std::time::Duration::from_millis(1050)).await;
    assert_eq!(
        get(&c, &url(&h, "acct-0/conversations", "limit=1")).await.0,
        200
    );
    h.shutdown().await;
}

#[tokio::test]
async fn buc_budget_exhaustion_is_80006_with_regain_time() {
    let h = sim::start(SimConfig {
        daily_quota: Some(5),
        ..cfg()
    })
    .await
    .unwrap();
    let c = Client::new();
    for k in 0..5 {
        let (s, _, hd) = get(&c, &url(&h, "acct-0/conversations", "limit=1")).await;
        assert_eq!(s, 200);
        assert!(
            hd.get("x-business-use-case-usage").is_some(),
            "usage >= 10% after call {k}"
        );
    }
    let (s, v, hd) = get(&c, &url(&h, "acct-0/conversations", "limit=1")).await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], 80006);
    let usage: Value =
        serde_json::from_str(hd["x-business-use-case-usage"].to_str().unwrap()).unwrap();
    let regain = usage["acct-0"][0]["estimated_time_to_regain_access"]
        .as_u64()
        .unwrap();
    assert!(
        regain > 1000,
        "minutes until the 24 h window clears: {regain}"
    );
    h.advance_clock(86_401.0);
    assert_eq!(
        get(&c, &url(&h, "acct-0/conversations", "limit=1")).await.0,
        200
    );
    h.shutdown().await;
}

#[tokio::test]
async fn tokens_fields_messages_and_detail_window() {
    let h = sim::start(SimConfig {
        messages: 40,
        ..cfg()
    })
    .await
    .unwrap();
    let c = Client::new();
    let base = h.base_url();
    let (s, v, _) = get(&c, &format!("{base}/v21.0/acct-0/conversations")).await;
    assert_eq!((s.as_u16(), v["error"]["code"].as_u64()), (400, Some(104)));
    let (s, v, _) = get(
        &c,
        &format!("{base}/v21.0/acct-0/conversations?access_token=nope"),
    )
    .await;
    assert_eq!((s.as_u16(), v["error"]["code"].as_u64()), (400, Some(190)));
    let (s, v, _) = get(&c, &url(&h, "acct-0/conversations", "fields=id,bogus")).await;
    assert_eq!(s, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("bogus"));
    let (s, _, _) = get(
        &c,
        &url(&h, "acct-0/conversations", "fields=messages{id,nope}"),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _, _) = get(&c, &url(&h, "acct-1/conversations", "")).await;
    assert_eq!(s, 400, "another page's id");
    // Nested expansion returns the newest messages first.
    let (s, v, _) = get(
        &c,
        &url(
            &h,
            "acct-0/conversations",
            "limit=3&fields=participants,messages.limit(3){message,from,created_time}",
        ),
    )
    .await;
    assert_eq!(s, 200);
    let msgs = v["data"][0]["messages"]["data"].as_array().unwrap();
    assert!(msgs.len() <= 3 && !msgs.is_empty());
    assert_eq!(
        v["data"][0]["participants"]["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let nested_next = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|c| c["messages"]["paging"]["next"].as_str())
        .expect("a thread with more than 3 messages");
    assert!(nested_next.contains("/v21.0/t_"), "{nested_next}");
    // Walk the messages edge of the longest thread.
    let truth = h.truth(Some("acct-0"));
    let longest = truth["accounts"][0]["conversations"]
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
        .rev()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(expected.len() > 25);
    let cid = longest["id"].as_str().unwrap();
    let mut next = Some(url(
        &h,
        &format!("{cid}/messages"),
        "limit=10&fields=id,message,created_time",
    ));
    let mut seen = Vec::new();
    while let Some(u) = next {
        let (s, v, _) = get(&c, &u).await;
        assert_eq!(s, 200);
        seen.extend(
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string()),
        );
        next = v["paging"]["next"].as_str().map(str::to_string);
    }
    assert_eq!(seen, expected);
    // Only the 20 newest messages can be read by id.
    let (s, v, _) = get(&c, &url(&h, expected[19], "fields=id,message,from")).await;
    assert_eq!(s, 200);
    assert_eq!(v["id"], expected[19]);
    let (s, v, _) = get(&c, &url(&h, expected[20], "")).await;
    assert_eq!((s.as_u16(), v["error"]["code"].as_u64()), (400, Some(100)));
    // Expired Page token: 190 / 463.
    assert!(h.expire_token("acct-0"));
    let (s, v, _) = get(&c, &url(&h, "acct-0/conversations", "")).await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], 190);
    assert_eq!(v["error"]["error_subcode"], 463);
    h.shutdown().await;
}

#[tokio::test]
async fn injected_faults_use_graph_error_shapes() {
    use threadsync::sim::Faults;
    let h = sim::start(cfg()).await.unwrap();
    let c = Client::new();
    h.set_faults(Faults {
        error_5xx: 1.0,
        ..Faults::default()
    });
    let (s, v, _) = get(&c, &url(&h, "acct-0/conversations", "")).await;
    assert_eq!(s, 500);
    assert_eq!(v["error"]["is_transient"], true);
    h.set_faults(Faults {
        burst_429: 1.0,
        ..Faults::default()
    });
    let (s, v, _) = get(&c, &url(&h, "acct-0/conversations", "")).await;
    assert_eq!((s.as_u16(), v["error"]["code"].as_u64()), (400, Some(613)));
    h.set_faults(Faults::default());
    assert_eq!(get(&c, &url(&h, "acct-0/conversations", "")).await.0, 200);
    let stats = h.stats();
    assert_eq!(stats.totals.by_status[&500], 1);
    assert_eq!(stats.totals.by_status[&400], 1);
    h.shutdown().await;
}
