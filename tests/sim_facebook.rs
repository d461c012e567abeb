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

// ---------- expected rows, poison, Instagram, BUC control, webhooks ----------

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use threadsync::sim::facebook::WebhookTarget;
use threadsync::sim::{ExpectedMessage, ExpectedThread};

/// Every item of a Graph edge, following `paging.next` to the end.
async fn walk(c: &Client, first: String) -> Vec<Value> {
    let mut next = Some(first);
    let mut out = Vec::new();
    while let Some(u) = next {
        let (s, v, _) = get(c, &u).await;
        assert_eq!(s, 200, "{u}: {v}");
        out.extend(v["data"].as_array().unwrap().iter().cloned());
        next = v["paging"]["next"].as_str().map(str::to_string);
    }
    out
}

fn graph_time(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z")
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&chrono::Utc)
}

fn b64url(s: &str) -> Option<String> {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        bits = (bits << 6) | T.iter().position(|x| *x == c)? as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    String::from_utf8(out).ok()
}

/// The rows a sync would build from what the API serves for one platform.
async fn served_rows(c: &Client, h: &SimHandle, platform: &str) -> Vec<ExpectedThread> {
    let convs = walk(
        c,
        url(
            h,
            "acct-0/conversations",
            &format!(
                "platform={platform}&limit=25&fields=id,updated_time,unread_count,participants"
            ),
        ),
    )
    .await;
    let name_key = if platform == "instagram" {
        "username"
    } else {
        "name"
    };
    let mut rows = Vec::new();
    for conv in convs {
        let id = conv["id"].as_str().unwrap().to_string();
        let user = conv["participants"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] != "acct-0")
            .unwrap()
            .clone();
        let served = walk(
            c,
            url(
                h,
                &format!("{id}/messages"),
                "limit=100&fields=id,created_time,from,to,message",
            ),
        )
        .await;
        let messages: Vec<ExpectedMessage> = served
            .iter()
            .rev()
            .map(|m| ExpectedMessage {
                message_id: m["id"].as_str().unwrap().to_string(),
                sender: m["from"]["id"].as_str().map(str::to_string),
                recipient: m["to"]["data"][0]["id"].as_str().map(str::to_string),
                subject: None,
                body: m["message"].as_str().map(str::to_string),
                is_read: None,
                sent_at: graph_time(m["created_time"].as_str().unwrap()),
                media: None,
                status: None,
            })
            .collect();
        rows.push(ExpectedThread {
            thread_id: id,
            conversation_type: Some(platform.to_string()),
            title: user[name_key].as_str().map(str::to_string),
            status: None,
            reference_id: user["id"].as_str().map(str::to_string),
            reference_type: Some(
                if platform == "instagram" {
                    "igsid"
                } else {
                    "psid"
                }
                .into(),
            ),
            unread_count: conv["unread_count"].as_i64().unwrap() as i32,
            latest_message_id: messages.last().map(|m| m.message_id.clone()),
            latest_message_at: Some(graph_time(conv["updated_time"].as_str().unwrap())),
            created_at: None,
            messages,
        });
    }
    rows
}

#[tokio::test]
async fn expected_rows_equal_what_paging_the_api_serves() {
    let h = sim::start(SimConfig {
        drop_rate: 0.25,
        instagram_share: 0.4,
        ..cfg()
    })
    .await
    .unwrap();
    let c = Client::new();
    // Live additions carry millisecond times, which the API shows to the second.
    h.mutate(&json!({"new_messages": 6, "new_threads": 2, "direction": "outbound"}))
        .unwrap();
    h.mutate(&json!({"new_threads": 2, "platform": "instagram", "delete_threads": 1}))
        .unwrap();
    let mut served = served_rows(&c, &h, "messenger").await;
    served.extend(served_rows(&c, &h, "instagram").await);
    served.sort_by(|a, b| a.thread_id.cmp(&b.thread_id));
    let expected = h.expected("acct-0").unwrap();
    let mut rows = expected.threads.clone();
    rows.sort_by(|a, b| a.thread_id.cmp(&b.thread_id));
    assert_eq!(rows.len(), served.len(), "same conversations");
    for (e, s) in rows.iter().zip(&served) {
        assert_eq!(e, s, "conversation {}", e.thread_id);
    }
    assert!(expected.message_count() > 500);
    let types: BTreeSet<_> = rows.iter().map(|t| t.conversation_type.clone()).collect();
    assert_eq!(types.len(), 2, "both platforms: {types:?}");
    // Privacy-filtered and deleted conversations are in neither.
    let truth = h.truth(Some("acct-0"));
    let acct = &truth["accounts"][0];
    let filtered: Vec<&str> = acct["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["privacy_filtered"] == true)
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(!filtered.is_empty());
    let deleted = acct["deleted_ids"].as_array().unwrap();
    assert_eq!(deleted.len(), 1);
    for id in filtered
        .iter()
        .copied()
        .chain(deleted.iter().filter_map(|d| d.as_str()))
    {
        assert!(expected.thread(id).is_none(), "{id} must not be expected");
    }
    // `since` is ignored; the HTTP endpoint serves the same rows.
    let since = chrono::Utc::now();
    assert_eq!(h.expected_since("acct-0", since).unwrap(), expected);
    let (s, v, _) = get(
        &c,
        &format!("{}/_sim/expected?account=acct-0", h.base_url()),
    )
    .await;
    assert_eq!(s, 200);
    let over_http: threadsync::sim::Expected = serde_json::from_value(v).unwrap();
    assert_eq!(over_http, expected);
    h.shutdown().await;
}

#[tokio::test]
async fn poisoned_conversations_are_undecodable_in_lists_and_reported() {
    let h = sim::start(SimConfig {
        threads: 30,
        ..cfg()
    })
    .await
    .unwrap();
    let c = Client::new();
    let r = h
        .mutate(&json!({"account": "acct-0", "poison_threads": 3, "new_messages": 2}))
        .unwrap();
    assert_eq!(r["new_messages"].as_array().unwrap().len(), 2);
    let poisoned: BTreeSet<String> = r["poisoned_thread_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    assert_eq!(poisoned.len(), 3);
    let list = walk(
        &c,
        url(
            &h,
            "acct-0/conversations",
            "limit=100&fields=id,updated_time",
        ),
    )
    .await;
    assert_eq!(list.len(), 30);
    for t in &list {
        let id = t["id"].as_str().unwrap();
        let updated = t["updated_time"].as_str().unwrap();
        if poisoned.contains(id) {
            assert_eq!(updated, "not-a-time");
        } else {
            graph_time(updated);
        }
    }
    let id = poisoned.iter().next().unwrap();
    let (s, node, _) = get(&c, &url(&h, id, "fields=id,updated_time")).await;
    assert_eq!(s, 200);
    assert_eq!(node["updated_time"], "not-a-time");
    // Its messages stay normal.
    let msgs = walk(
        &c,
        url(&h, &format!("{id}/messages"), "fields=id,created_time"),
    )
    .await;
    assert!(!msgs.is_empty());
    for m in &msgs {
        graph_time(m["created_time"].as_str().unwrap());
    }
    // A sync must show them missing: they stay expected.
    let expected = h.expected("acct-0").unwrap();
    assert!(poisoned.iter().all(|p| expected.thread(p).is_some()));
    let truth = h.truth(Some("acct-0"));
    let marked: BTreeSet<String> = truth["accounts"][0]["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["poisoned"] == true)
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(marked, poisoned);
    // Already poisoned ones are not picked again.
    let more = h.mutate(&json!({"poison_threads": 2})).unwrap();
    let more: Vec<&str> = more["poisoned_thread_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(more.len(), 2);
    assert!(more.iter().all(|m| !poisoned.contains(*m)));
    h.shutdown().await;
}

#[tokio::test]
async fn instagram_conversations_are_listed_apart_with_username_parties() {
    let config = SimConfig {
        threads: 50,
        instagram_share: 0.4,
        ..cfg()
    };
    let h = sim::start(config.clone()).await.unwrap();
    let c = Client::new();
    let fields = "fields=id,participants,messages.limit(2){id,from,to,message}&limit=100";
    let ig = walk(
        &c,
        url(
            &h,
            "acct-0/conversations",
            &format!("platform=instagram&{fields}"),
        ),
    )
    .await;
    let ms = walk(
        &c,
        url(
            &h,
            "acct-0/conversations",
            &format!("platform=messenger&{fields}"),
        ),
    )
    .await;
    let default = walk(&c, url(&h, "acct-0/conversations", fields)).await;
    assert_eq!(default, ms, "Messenger is the default platform");
    assert!(
        ig.len() >= 10 && ms.len() >= 10,
        "{} / {}",
        ig.len(),
        ms.len()
    );
    assert_eq!(ig.len() + ms.len(), 50);
    for t in &ig {
        let id = t["id"].as_str().unwrap();
        assert!(
            b64url(id).is_some_and(|d| d.starts_with("ig_thread:")),
            "opaque Instagram id {id}"
        );
        for p in t["participants"]["data"].as_array().unwrap() {
            assert!(p["username"].is_string() && p["id"].is_string(), "{p}");
            assert!(p.get("name").is_none() && p.get("email").is_none(), "{p}");
        }
        for m in t["messages"]["data"].as_array().unwrap() {
            let mid = m["id"].as_str().unwrap();
            assert!(
                b64url(mid).is_some_and(|d| d.starts_with("ig_message:")),
                "{mid}"
            );
            assert!(m["from"]["username"].is_string() && m["from"].get("name").is_none());
            assert!(m["to"]["data"][0]["username"].is_string());
        }
    }
    for t in &ms {
        assert!(t["id"].as_str().unwrap().starts_with("t_"));
        for p in t["participants"]["data"].as_array().unwrap() {
            assert!(p["name"].is_string() && p["email"].is_string(), "{p}");
        }
        let mid = t["messages"]["data"][0]["id"].as_str().unwrap();
        assert!(mid.starts_with("m_"));
    }
    // Truth shows each conversation's platform.
    let truth = h.truth(Some("acct-0"));
    let by_platform: HashMap<String, String> = truth["accounts"][0]["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                t["platform"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(ig
        .iter()
        .all(|t| by_platform[t["id"].as_str().unwrap()] == "instagram"));
    assert!(ms
        .iter()
        .all(|t| by_platform[t["id"].as_str().unwrap()] == "messenger"));
    // user_id finds the one conversation with a person, on either platform.
    for (platform, list) in [("instagram", &ig), ("messenger", &ms)] {
        let t = &list[3];
        let user = t["participants"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] != "acct-0")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (s, v, _) = get(
            &c,
            &url(
                &h,
                "acct-0/conversations",
                &format!("platform={platform}&user_id={user}"),
            ),
        )
        .await;
        assert_eq!(s, 200);
        let ids: Vec<&Value> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| &x["id"])
            .collect();
        assert_eq!(ids, vec![&t["id"]], "{platform} user_id={user}");
    }
    let (s, v, _) = get(&c, &url(&h, "acct-0/conversations", "platform=whatsapp")).await;
    assert_eq!((s.as_u16(), v["error"]["code"].as_u64()), (400, Some(100)));
    // New threads can be Instagram ones explicitly.
    let r = h
        .mutate(&json!({"new_threads": 1, "platform": "instagram"}))
        .unwrap();
    assert_eq!(r["new_threads"][0]["platform"], "instagram");
    let (_, v, _) = get(
        &c,
        &url(&h, "acct-0/conversations", "platform=instagram&limit=1"),
    )
    .await;
    assert_eq!(v["data"][0]["id"], r["new_threads"][0]["conversation_id"]);
    assert!(h
        .mutate(&json!({"new_threads": 1, "platform": "sms"}))
        .is_err());
    // The share is deterministic from the seed.
    let again = sim::start(config).await.unwrap();
    assert_eq!(
        again.truth(Some("acct-0"))["accounts"][0]["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["id"].clone(), t["platform"].clone()))
            .collect::<Vec<_>>(),
        truth["accounts"][0]["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["id"].clone(), t["platform"].clone()))
            .collect::<Vec<_>>()
    );
    again.shutdown().await;
    h.shutdown().await;
}

fn usage_pct(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let raw = headers.get("x-business-use-case-usage")?.to_str().ok()?;
    let v: Value = serde_json::from_str(raw).ok()?;
    v["acct-0"][0]["call_count"].as_u64()
}

#[tokio::test]
async fn buc_usage_preset_to_95_percent_then_80006() {
    let h = sim::start(SimConfig {
        accounts: 2,
        daily_quota: Some(100),
        ..cfg()
    })
    .await
    .unwrap();
    let c = Client::new();
    let r = c
        .post(format!("{}/_sim/quota", h.base_url()))
        .json(&json!({"account": "acct-0", "used": 95}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["accounts"][0]["account"], "acct-0");
    assert_eq!(v["accounts"][0]["used"], 95);
    assert_eq!(v["accounts"][0]["budget"], 100);
    let end =
        chrono::DateTime::parse_from_rfc3339(v["accounts"][0]["window_end"].as_str().unwrap())
            .unwrap();
    let left = end.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(left > chrono::Duration::hours(23), "{left}");
    assert_eq!(v["accounts"][1]["used"], 0, "other Page untouched");
    assert!(v["accounts"][1]["window_end"].is_null());
    for k in 0..5 {
        let (s, _, hd) = get(&c, &url(&h, "acct-0/conversations", "limit=1")).await;
        assert_eq!(s, 200, "call {k}");
        let pct = usage_pct(&hd).expect("usage header");
        assert!(pct >= 95, "call {k}: {pct}%");
    }
    let (s, v, hd) = get(&c, &url(&h, "acct-0/conversations", "limit=1")).await;
    assert_eq!(
        (s.as_u16(), v["error"]["code"].as_u64()),
        (400, Some(80006))
    );
    assert_eq!(usage_pct(&hd), Some(100));
    let w = h.buc_windows().unwrap();
    assert_eq!((w[0].used, w[0].budget), (100, Some(100)));
    // The handle method resets the same counter; bad input gets 400.
    h.set_buc_used("acct-0", 0).unwrap();
    let (s, _, hd) = get(&c, &url(&h, "acct-0/conversations", "limit=1")).await;
    assert_eq!(s, 200);
    assert_eq!(usage_pct(&hd), None, "1% is below the header threshold");
    assert_eq!(h.buc_windows().unwrap()[0].used, 1);
    assert!(h.set_buc_used("acct-9", 1).is_err());
    for body in [json!({"account": "acct-9", "used": 1}), json!({"usd": 1})] {
        let r = c
            .post(format!("{}/_sim/quota", h.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
    }
    let (s, v, _) = get(&c, &format!("{}/_sim/quota", h.base_url())).await;
    assert_eq!(s, 200);
    assert_eq!(v["accounts"].as_array().unwrap().len(), 2);
    h.shutdown().await;
}

/// What the receiver got: headers, the exact body bytes, the status it answered.
type Got = Arc<Mutex<Vec<(reqwest::header::HeaderMap, Vec<u8>, u16)>>>;

/// A webhook receiver on loopback that answers 500 to its first `fail_first` posts.
async fn receiver(fail_first: usize) -> (String, Got) {
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode as S};
    #[derive(Clone)]
    struct Rx {
        got: Got,
        fail: Arc<AtomicUsize>,
    }
    async fn hook(State(rx): State<Rx>, headers: HeaderMap, body: axum::body::Bytes) -> S {
        let fail = rx
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let status = if fail {
            S::INTERNAL_SERVER_ERROR
        } else {
            S::OK
        };
        rx.got
            .lock()
            .unwrap()
            .push((headers, body.to_vec(), status.as_u16()));
        status
    }
    let rx = Rx {
        got: Got::default(),
        fail: Arc::new(AtomicUsize::new(fail_first)),
    };
    let got = rx.got.clone();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(rx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), got)
}

fn verify(secret: &str, headers: &reqwest::header::HeaderMap, body: &[u8]) -> bool {
    use hmac::{Hmac, KeyInit, Mac};
    let Some(sig) = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
    else {
        return false;
    };
    let Ok(raw) = hex::decode(sig) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.verify_slice(&raw).is_ok() && sig.chars().all(|c| !c.is_ascii_uppercase())
}

fn mids(got: &Got) -> Vec<String> {
    got.lock()
        .unwrap()
        .iter()
        .filter(|x| x.2 == 200)
        .map(|(_, b, _)| {
            let v: Value = serde_json::from_slice(b).unwrap();
            v["entry"][0]["messaging"][0]["message"]["mid"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn webhook_deliveries_are_meta_shaped_escaped_and_signed() {
    let h = sim::start(SimConfig {
        threads: 10,
        instagram_share: 0.5,
        ..cfg()
    })
    .await
    .unwrap();
    let (hook, got) = receiver(0).await;
    let c = Client::new();
    let secret = "app-secret-é";
    let r = c
        .post(format!("{}/_sim/webhook", h.base_url()))
        .json(&json!({"url": hook, "app_secret": secret}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["target"]["url"], hook.as_str());
    assert!(
        v["target"].get("app_secret").is_none(),
        "the secret is not echoed"
    );
    let truth = h.truth(Some("acct-0"));
    let convs = truth["accounts"][0]["conversations"].as_array().unwrap();
    let msgr = convs.iter().find(|t| t["platform"] == "messenger").unwrap();
    let text = "a/b café 😀 \"ok\"";
    let inbound = h
        .mutate(&json!({"thread_ids": [msgr["id"]], "new_messages": 1, "text": text}))
        .unwrap();
    let echo = h
        .mutate(&json!({"thread_ids": [msgr["id"]], "new_messages": 1, "direction": "outbound"}))
        .unwrap();
    let ig = h
        .mutate(&json!({"new_threads": 1, "platform": "instagram"}))
        .unwrap();
    assert!(h.webhook_idle(Duration::from_secs(10)).await);
    let got_now = got.lock().unwrap().clone();
    assert_eq!(got_now.len(), 3);
    for (headers, body, _) in &got_now {
        assert!(
            verify(secret, headers, body),
            "signature over the raw bytes"
        );
        assert_eq!(headers["content-type"], "application/json");
        assert!(body.is_ascii(), "non-ASCII is escaped");
        let unescaped_slash = body
            .iter()
            .enumerate()
            .any(|(i, b)| *b == b'/' && (i == 0 || body[i - 1] != b'\\'));
        assert!(!unescaped_slash, "every / is escaped");
    }
    // Meta's escaping: a receiver that re-serialises the JSON gets other bytes.
    let raw = String::from_utf8(got_now[0].1.clone()).unwrap();
    assert!(
        raw.contains(r#"a\/b caf\u00e9 \ud83d\ude00 \"ok\""#),
        "{raw}"
    );
    let reserialised = serde_json::to_vec(&serde_json::from_str::<Value>(&raw).unwrap()).unwrap();
    assert!(!verify(secret, &got_now[0].0, &reserialised));
    let body = |i: usize| -> Value { serde_json::from_slice(&got_now[i].1).unwrap() };
    let ts = |v: &Value| v["entry"][0]["messaging"][0]["timestamp"].as_i64().unwrap();
    let time = |v: &Value| v["entry"][0]["time"].as_i64().unwrap();
    let (b0, b1, b2) = (body(0), body(1), body(2));
    let psid = msgr["user_id"].as_str().unwrap();
    assert_eq!(
        b0,
        json!({"object": "page", "entry": [{"id": "acct-0", "time": time(&b0), "messaging": [{
            "sender": {"id": psid}, "recipient": {"id": "acct-0"}, "timestamp": ts(&b0),
            "message": {"mid": inbound["new_messages"][0]["message_id"], "text": text}}]}]})
    );
    assert!(ts(&b0) > 1_700_000_000_000, "epoch ms");
    let echo_text = h.truth(Some("acct-0"))["accounts"][0]["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == msgr["id"])
        .unwrap()["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["message"]
        .clone();
    assert_eq!(
        b1,
        json!({"object": "page", "entry": [{"id": "acct-0", "time": time(&b1), "messaging": [{
            "sender": {"id": "acct-0"}, "recipient": {"id": psid}, "timestamp": ts(&b1),
            "message": {"is_echo": true, "mid": echo["new_messages"][0]["message_id"], "text": echo_text}}]}]})
    );
    let ig_id = ig["new_threads"][0]["conversation_id"].as_str().unwrap();
    let truth = h.truth(Some("acct-0"));
    let igsid = truth["accounts"][0]["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == ig_id)
        .unwrap()["user_id"]
        .clone();
    assert_eq!(b2["object"], "instagram");
    assert_eq!(b2["entry"][0]["messaging"][0]["sender"]["id"], igsid);
    assert_eq!(b2["entry"][0]["messaging"][0]["recipient"]["id"], "acct-0");
    assert_eq!(
        b2["entry"][0]["messaging"][0]["message"]["mid"],
        ig["new_threads"][0]["message_id"]
    );
    let stats = h.webhook_stats().unwrap();
    assert_eq!(
        (
            stats.queued,
            stats.delivered,
            stats.duplicates_sent,
            stats.retried,
            stats.failed
        ),
        (3, 3, 0, 0, 0)
    );
    assert_eq!(stats.last_status, Some(200));
    // Webhook posts are not provider requests.
    assert_eq!(h.stats().totals.requests, 0);
    let (s, v, _) = get(&c, &format!("{}/_sim/webhook", h.base_url())).await;
    assert_eq!(s, 200);
    assert_eq!(
        (v["delivered"].as_u64(), v["pending"].as_u64()),
        (Some(3), Some(0))
    );
    // Bad bodies are refused; null stops the sender.
    for bad in [
        json!({"app_secret": "x"}),
        json!({"url": hook, "app_secret": "x", "duplicate_rate": 2.0}),
        json!({"url": "not a url", "app_secret": "x"}),
        json!({"url": hook}),
    ] {
        let r = c
            .post(format!("{}/_sim/webhook", h.base_url()))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = c
        .post(format!("{}/_sim/webhook", h.base_url()))
        .json(&json!({"url": null}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert!(v["target"].is_null());
    h.mutate(&json!({"new_messages": 3})).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.webhook_stats().unwrap().queued, 3);
    assert_eq!(got.lock().unwrap().len(), 3);
    h.shutdown().await;
}

#[tokio::test]
async fn webhook_duplicates_retries_and_shuffled_order() {
    let h = sim::start(SimConfig {
        threads: 10,
        ..cfg()
    })
    .await
    .unwrap();
    // Duplicates, and one 500 that is retried.
    let (hook, got) = receiver(1).await;
    h.set_webhook(Some(WebhookTarget {
        url: hook,
        app_secret: "s".into(),
        duplicate_rate: 1.0,
        shuffle: false,
    }))
    .unwrap();
    let r = h.mutate(&json!({"new_messages": 3})).unwrap();
    assert!(h.webhook_idle(Duration::from_secs(10)).await);
    let made: Vec<String> = r["new_messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_string())
        .collect();
    let twice: Vec<String> = made.iter().flat_map(|m| [m.clone(), m.clone()]).collect();
    assert_eq!(mids(&got), twice, "each delivery twice, in order");
    let statuses: Vec<u16> = got.lock().unwrap().iter().map(|x| x.2).collect();
    assert_eq!(statuses, [500, 200, 200, 200, 200, 200, 200]);
    let s = h.webhook_stats().unwrap();
    assert_eq!(
        (
            s.queued,
            s.delivered,
            s.duplicates_sent,
            s.retried,
            s.failed,
            s.pending
        ),
        (3, 3, 3, 1, 0, 0)
    );
    // Shuffled: every delivery arrives once, not in the order the messages were made.
    let (hook, got) = receiver(0).await;
    h.set_webhook(Some(WebhookTarget {
        url: hook,
        app_secret: "s".into(),
        duplicate_rate: 0.0,
        shuffle: true,
    }))
    .unwrap();
    let r = h.mutate(&json!({"new_messages": 20})).unwrap();
    assert!(h.webhook_idle(Duration::from_secs(10)).await);
    let made: Vec<String> = r["new_messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_string())
        .collect();
    let seen = mids(&got);
    assert_ne!(seen, made, "shuffled");
    let (mut a, mut b) = (seen.clone(), made.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b, "each exactly once");
    // A receiver that never answers: retried, then counted failed.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", dead.local_addr().unwrap());
    drop(dead);
    let before = h.webhook_stats().unwrap();
    h.set_webhook(Some(WebhookTarget {
        url,
        app_secret: "s".into(),
        duplicate_rate: 0.0,
        shuffle: false,
    }))
    .unwrap();
    h.mutate(&json!({"new_messages": 1})).unwrap();
    assert!(h.webhook_idle(Duration::from_secs(10)).await);
    let s = h.webhook_stats().unwrap();
    assert_eq!(s.failed - before.failed, 1);
    assert_eq!(s.retried - before.retried, 3);
    assert!(s.last_error.is_some());
    h.shutdown().await;
}

#[tokio::test]
async fn background_steps_queue_webhooks() {
    let h = sim::start(SimConfig {
        threads: 10,
        mutate_rate: 50.0,
        ..cfg()
    })
    .await
    .unwrap();
    let (hook, got) = receiver(0).await;
    h.set_webhook(Some(WebhookTarget {
        url: hook,
        app_secret: "s".into(),
        duplicate_rate: 0.0,
        shuffle: false,
    }))
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    h.set_webhook(None).unwrap();
    let s = h.webhook_stats().unwrap();
    assert!(s.queued >= 5, "{s:?}");
    assert_eq!(s.queued, s.delivered + s.dropped + s.pending, "{s:?}");
    assert!(h.webhook_idle(Duration::from_secs(10)).await);
    let n = got.lock().unwrap().len() as u64;
    let s = h.webhook_stats().unwrap();
    assert_eq!(n, s.delivered);
    assert!(n >= 1);
    let queued = s.queued;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.webhook_stats().unwrap().queued, queued, "stopped");
    h.shutdown().await;
}
