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

// ---------- inquiries, expected rows, poison, webhooks ----------

use axum::http::HeaderMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use threadsync::sim::hostaway::WebhookTarget;
use threadsync::sim::{ExpectedMessage, ExpectedThread};

/// Every row of an offset-paged list, checking `count` against what was walked.
async fn walk(c: &Client, h: &SimHandle, path: &str, token: &str, limit: usize) -> Vec<Value> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut out = Vec::new();
    for off in (0..).step_by(limit) {
        let (s, v) = get(
            c,
            h,
            &format!("{path}{sep}limit={limit}&offset={off}"),
            token,
        )
        .await;
        assert_eq!(s, 200, "{path}: {v}");
        let page = v["result"].as_array().unwrap();
        if page.is_empty() {
            assert_eq!(v["count"].as_u64().unwrap() as usize, out.len(), "{path}");
            break;
        }
        out.extend(page.iter().cloned());
    }
    out
}

fn time(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .and_utc()
}

fn digest(parts: &[Value]) -> String {
    use sha2::Digest;
    let joined: Vec<String> = parts
        .iter()
        .map(|p| serde_json::to_string(p).unwrap())
        .collect();
    hex::encode(sha2::Sha256::digest(joined.join("|").as_bytes()))
}

/// Each account's reservations from truth, without the `poisoned` marker truth adds.
fn reservations_of(truth: &Value) -> Vec<Value> {
    truth["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let mut r = a["reservations"].clone();
            for x in r.as_array_mut().unwrap() {
                assert_eq!(x["poisoned"], false);
                x.as_object_mut().unwrap().remove("poisoned");
            }
            r
        })
        .collect()
}

#[tokio::test]
async fn zero_inquiry_share_keeps_the_seeded_data() {
    // Digests of the data these seeds produced before inquiries existed.
    let h = sim::start(cfg()).await.unwrap();
    assert_eq!(
        digest(&reservations_of(&h.truth(None))),
        "1d07101469311d47655149efd0e95139e28ebc8e4b1df10d667207ca5379caf2"
    );
    assert!(h.truth(None)["accounts"][0]["inquiries"]
        .as_array()
        .unwrap()
        .is_empty());
    let big = SimConfig {
        accounts: 2,
        threads: 300,
        messages: 20,
        seed: 9,
        ..cfg()
    };
    let h2 = sim::start(big.clone()).await.unwrap();
    assert_eq!(
        digest(&reservations_of(&h2.truth(None))),
        "e77b58d54ee388216470c83d1ba0375315f71dc7731423dde89abbb198b8889b"
    );
    // A share only turns some of the same conversations into inquiries.
    let h3 = sim::start(SimConfig {
        hostaway_inquiry_share: 0.3,
        ..big
    })
    .await
    .unwrap();
    let (plain, mixed) = (h2.truth(None), h3.truth(None));
    for (p, m) in plain["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(mixed["accounts"].as_array().unwrap())
    {
        let all: Vec<&Value> = p["reservations"].as_array().unwrap().iter().collect();
        let kept = m["reservations"].as_array().unwrap();
        let inquiries = m["inquiries"].as_array().unwrap();
        assert_eq!(kept.len() + inquiries.len(), all.len());
        assert!(
            (60..=120).contains(&inquiries.len()),
            "about 30% of 300: {}",
            inquiries.len()
        );
        for r in kept {
            let twin = all.iter().find(|x| x["id"] == r["id"]).unwrap();
            assert_eq!(*twin, r, "reservation {} unchanged", r["id"]);
        }
        for q in inquiries {
            let twin = all
                .iter()
                .find(|x| x["conversationId"] == q["conversationId"])
                .unwrap();
            assert_eq!(twin["guestName"], q["guestName"]);
            let msgs = q["messages"].as_array().unwrap();
            assert_eq!(msgs.len(), twin["messages"].as_array().unwrap().len());
            assert!(msgs.iter().all(|m| m["reservationId"].is_null()));
        }
    }
    for x in [h, h2, h3] {
        x.shutdown().await;
    }
}

#[tokio::test]
async fn inquiries_are_listed_as_conversations_but_never_as_reservations() {
    let h = sim::start(SimConfig {
        hostaway_inquiry_share: 0.3,
        ..cfg()
    })
    .await
    .unwrap();
    let c = Client::new();
    let t = h.token("acct-0");
    let made = h
        .mutate(&json!({"account": "acct-0", "new_inquiries": 2}))
        .unwrap();
    let new_ids: Vec<u64> = made["newInquiries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["conversationId"].as_u64().unwrap())
        .collect();
    assert_eq!(new_ids.len(), 2);
    let convs = walk(&c, &h, "/v1/conversations", &t, 20).await;
    assert_eq!(convs.len(), 47);
    let inquiry_ids: HashSet<u64> = convs
        .iter()
        .filter(|x| x["reservationId"].is_null())
        .map(|x| x["id"].as_u64().unwrap())
        .collect();
    assert!(inquiry_ids.len() >= 5, "{}", inquiry_ids.len());
    // The new inquiries lead the list: their guest message is the newest.
    let head: HashSet<u64> = convs[..2]
        .iter()
        .map(|x| x["id"].as_u64().unwrap())
        .collect();
    assert_eq!(head, new_ids.iter().copied().collect());
    for x in &convs[..2] {
        assert_eq!(x["hasUnreadMessages"], 1);
        assert_eq!(x["conversationMessages"][0]["isIncoming"], 1);
    }
    // One order for both kinds: latest message (scheduled ones included) desc.
    let truth = h.truth(Some("acct-0"));
    let acct = &truth["accounts"][0];
    let mut latest: Vec<(String, u64)> = acct["reservations"]
        .as_array()
        .unwrap()
        .iter()
        .chain(acct["inquiries"].as_array().unwrap())
        .map(|r| {
            let last = r["messages"].as_array().unwrap().last().unwrap();
            (
                last["insertedOn"].as_str().unwrap().to_string(),
                r["conversationId"].as_u64().unwrap(),
            )
        })
        .collect();
    latest.sort_by(|a, b| b.0.cmp(&a.0));
    let listed: Vec<String> = convs
        .iter()
        .map(|x| {
            let id = x["id"].as_u64().unwrap();
            latest.iter().find(|l| l.1 == id).unwrap().0.clone()
        })
        .collect();
    assert!(listed.windows(2).all(|w| w[0] >= w[1]), "latest desc");
    let truth_inquiries: HashSet<u64> = acct["inquiries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["conversationId"].as_u64().unwrap())
        .collect();
    assert_eq!(truth_inquiries, inquiry_ids);
    // Never among the reservations.
    let res = walk(&c, &h, "/v1/reservations", &t, 25).await;
    assert_eq!(res.len(), 47 - inquiry_ids.len());
    let res_ids: HashSet<u64> = res.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    let truth_res: HashSet<u64> = acct["reservations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(res_ids, truth_res);
    for x in &convs {
        if let Some(rid) = x["reservationId"].as_u64() {
            assert!(res_ids.contains(&rid));
        }
    }
    // Node and messages of an inquiry.
    let id = *new_ids.first().unwrap();
    let (s, node) = get(&c, &h, &format!("/v1/conversations/{id}"), &t).await;
    assert_eq!(s, 200);
    assert!(node["result"]["reservationId"].is_null());
    assert_eq!(node["result"]["id"], id);
    let msgs = walk(&c, &h, &format!("/v1/conversations/{id}/messages"), &t, 10).await;
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0]["reservationId"].is_null());
    assert_eq!(msgs[0]["conversationId"], id);
    assert_eq!(
        msgs[0]["id"], made["newInquiries"][0]["messageId"],
        "its first guest message"
    );
    // Reservation lookups never reach one; a reservationId filter never lists one.
    for x in convs
        .iter()
        .filter(|x| x["reservationId"].is_null())
        .take(3)
    {
        let cid = x["id"].as_u64().unwrap();
        let (s, v) = get(
            &c,
            &h,
            &format!("/v1/conversations?reservationId={cid}"),
            &t,
        )
        .await;
        assert_eq!((s, v["count"].as_u64()), (StatusCode::OK, Some(0)));
    }
    let rid = res[0]["id"].as_u64().unwrap();
    let (_, v) = get(
        &c,
        &h,
        &format!("/v1/conversations?reservationId={rid}"),
        &t,
    )
    .await;
    assert_eq!(v["count"], 1);
    assert_eq!(v["result"][0]["reservationId"], rid);
    let (_, v) = get(&c, &h, &format!("/v1/reservations/{rid}/conversations"), &t).await;
    assert_eq!(v["result"][0]["reservationId"], rid);
    // Replies and targeted messages reach inquiries like any conversation.
    let r = c
        .post(format!("{}/v1/conversations/{id}/messages", h.base_url()))
        .bearer_auth(&t)
        .json(&json!({"body": "The flat is free that week", "communicationType": "email"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sent: Value = r.json().await.unwrap();
    assert!(sent["result"]["reservationId"].is_null());
    let m = h
        .mutate(&json!({"thread_ids": [id], "new_messages": 1}))
        .unwrap();
    assert_eq!(m["newMessages"][0]["conversationId"], id);
    // update_reservations only ever picks reservations.
    let up = h.mutate(&json!({"update_reservations": 30})).unwrap();
    for rid in up["updatedReservationIds"].as_array().unwrap() {
        assert!(res_ids.contains(&rid.as_u64().unwrap()));
    }
    h.shutdown().await;
}

/// The rows a sync would build from what the API serves.
async fn served_rows(c: &Client, h: &SimHandle, t: &str) -> Vec<ExpectedThread> {
    let party = |guest: bool| Some(if guest { "guest" } else { "host" }.to_string());
    let mut rows = Vec::new();
    for conv in walk(c, h, "/v1/conversations", t, 20).await {
        let id = conv["id"].as_u64().unwrap();
        let rid = conv["reservationId"].as_u64();
        let status = match rid {
            Some(r) => {
                let (s, v) = get(c, h, &format!("/v1/reservations/{r}"), t).await;
                assert_eq!(s, 200);
                v["result"]["status"].as_str().map(str::to_string)
            }
            None => {
                assert!(conv["reservationId"].is_null());
                None
            }
        };
        let served = walk(c, h, &format!("/v1/conversations/{id}/messages"), t, 7).await;
        let messages: Vec<ExpectedMessage> = served
            .iter()
            .map(|m| {
                assert_eq!(m["conversationId"], id);
                assert_eq!(m["reservationId"], conv["reservationId"]);
                let incoming = m["isIncoming"] == 1;
                ExpectedMessage {
                    message_id: m["id"].as_u64().unwrap().to_string(),
                    sender: party(incoming),
                    recipient: party(!incoming),
                    subject: None,
                    body: m["body"].as_str().map(str::to_string),
                    is_read: None,
                    sent_at: time(m["insertedOn"].as_str().unwrap()),
                    media: None,
                    status: m["status"].as_str().map(str::to_string),
                }
            })
            .collect();
        let latest = &conv["conversationMessages"][0];
        rows.push(ExpectedThread {
            thread_id: id.to_string(),
            conversation_type: conv["type"].as_str().map(str::to_string),
            title: conv["recipientName"].as_str().map(str::to_string),
            status,
            reference_id: rid.map(|r| r.to_string()),
            reference_type: rid.map(|_| "reservation".to_string()),
            unread_count: conv["hasUnreadMessages"].as_i64().unwrap() as i32,
            latest_message_id: latest["id"].as_u64().map(|x| x.to_string()),
            latest_message_at: latest["insertedOn"].as_str().map(time),
            created_at: None,
            messages,
        });
    }
    rows
}

#[tokio::test]
async fn expected_rows_equal_what_paging_the_api_serves() {
    let h = sim::start(SimConfig {
        hostaway_inquiry_share: 0.3,
        ..cfg()
    })
    .await
    .unwrap();
    let c = Client::new();
    let t = h.token("acct-0");
    // Live additions carry millisecond times, which the API shows to the second.
    h.mutate(&json!({"new_messages": 40, "direction": "outbound"}))
        .unwrap();
    h.mutate(
        &json!({"new_threads": 2, "new_inquiries": 2, "delete_threads": 2,
                     "update_reservations": 3, "new_messages": 4}),
    )
    .unwrap();
    let served = {
        let mut s = served_rows(&c, &h, &t).await;
        s.sort_by(|a, b| a.thread_id.cmp(&b.thread_id));
        s
    };
    let expected = h.expected("acct-0").unwrap();
    let mut rows = expected.threads.clone();
    rows.sort_by(|a, b| a.thread_id.cmp(&b.thread_id));
    let ids =
        |v: &[ExpectedThread]| -> Vec<String> { v.iter().map(|t| t.thread_id.clone()).collect() };
    assert_eq!(ids(&rows), ids(&served), "same conversations both ways");
    for (e, s) in rows.iter().zip(&served) {
        assert_eq!(e, s, "conversation {}", e.thread_id);
    }
    assert!(
        expected.message_count() > 400,
        "{}",
        expected.message_count()
    );
    // Both kinds, several statuses, and scheduled messages that neither side holds.
    let inquiries = rows.iter().filter(|r| r.reference_id.is_none()).count();
    assert!(inquiries >= 5, "{inquiries}");
    assert!(rows
        .iter()
        .filter(|r| r.reference_id.is_none())
        .all(|r| r.status.is_none() && r.reference_type.is_none()));
    assert!(rows.iter().any(|r| r.status.as_deref() == Some("modified")));
    assert!(rows.iter().any(|r| r.unread_count == 0) && rows.iter().any(|r| r.unread_count == 1));
    let truth = h.truth(Some("acct-0"));
    let acct = &truth["accounts"][0];
    let all: Vec<&Value> = acct["reservations"]
        .as_array()
        .unwrap()
        .iter()
        .chain(acct["inquiries"].as_array().unwrap())
        .collect();
    let awaiting: Vec<String> = all
        .iter()
        .flat_map(|r| r["messages"].as_array().unwrap())
        .filter(|m| m["status"] == "awaiting")
        .map(|m| m["id"].as_u64().unwrap().to_string())
        .collect();
    assert!(!awaiting.is_empty(), "some scheduled messages exist");
    for r in &rows {
        assert!(r.messages.iter().all(|m| !awaiting.contains(&m.message_id)));
    }
    // Deleted conversations are in neither.
    let deleted = acct["deleted_conversation_ids"].as_array().unwrap();
    assert_eq!(deleted.len(), 2);
    for d in deleted {
        assert!(expected.thread(&d.as_u64().unwrap().to_string()).is_none());
    }
    // `since` is ignored; the HTTP endpoint serves the same rows.
    assert_eq!(
        h.expected_since("acct-0", chrono::Utc::now()).unwrap(),
        expected
    );
    let r = c
        .get(format!("{}/_sim/expected?account=acct-0", h.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let over_http: threadsync::sim::Expected = r.json().await.unwrap();
    assert_eq!(over_http, expected);
    assert!(h.expected("acct-9").is_err());
    h.shutdown().await;
}

#[tokio::test]
async fn poisoned_conversations_show_an_undecodable_latest_message_time() {
    let h = sim::start(SimConfig {
        threads: 30,
        hostaway_inquiry_share: 0.3,
        ..cfg()
    })
    .await
    .unwrap();
    let c = Client::new();
    let t = h.token("acct-0");
    let r = h
        .mutate(&json!({"account": "acct-0", "poison_threads": 3, "new_messages": 2}))
        .unwrap();
    assert_eq!(r["newMessages"].as_array().unwrap().len(), 2);
    let poisoned: HashSet<u64> = r["poisonedConversationIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(poisoned.len(), 3);
    let decodes = |v: &Value| {
        chrono::NaiveDateTime::parse_from_str(v.as_str().unwrap_or(""), "%Y-%m-%d %H:%M:%S").is_ok()
    };
    let list = walk(&c, &h, "/v1/conversations", &t, 100).await;
    assert_eq!(list.len(), 30, "still listed");
    for x in &list {
        let id = x["id"].as_u64().unwrap();
        let latest = &x["conversationMessages"][0];
        if poisoned.contains(&id) {
            assert_eq!(latest["insertedOn"], "not-a-date");
        } else {
            assert!(decodes(&latest["insertedOn"]), "{x}");
        }
        // Only that field: the id and the other times stay usable.
        assert!(latest["id"].is_u64());
        assert!(decodes(&latest["updatedOn"]));
    }
    for &id in &poisoned {
        let (s, node) = get(&c, &h, &format!("/v1/conversations/{id}"), &t).await;
        assert_eq!(s, 200);
        assert_eq!(
            node["result"]["conversationMessages"][0]["insertedOn"],
            "not-a-date"
        );
        if let Some(rid) = node["result"]["reservationId"].as_u64() {
            let (_, v) = get(&c, &h, &format!("/v1/reservations/{rid}/conversations"), &t).await;
            assert_eq!(
                v["result"][0]["conversationMessages"][0]["insertedOn"],
                "not-a-date"
            );
        }
        // Its messages stay normal.
        let msgs = walk(&c, &h, &format!("/v1/conversations/{id}/messages"), &t, 50).await;
        assert!(!msgs.is_empty());
        assert!(msgs.iter().all(|m| decodes(&m["insertedOn"])));
    }
    // A sync must show them missing: they stay expected.
    let expected = h.expected("acct-0").unwrap();
    assert_eq!(expected.threads.len(), 30);
    assert!(poisoned
        .iter()
        .all(|p| expected.thread(&p.to_string()).is_some()));
    let truth = h.truth(Some("acct-0"));
    let acct = &truth["accounts"][0];
    let marked: HashSet<u64> = acct["reservations"]
        .as_array()
        .unwrap()
        .iter()
        .chain(acct["inquiries"].as_array().unwrap())
        .filter(|x| x["poisoned"] == true)
        .map(|x| x["conversationId"].as_u64().unwrap())
        .collect();
    assert_eq!(marked, poisoned);
    // Already poisoned ones are not picked again.
    let more = h.mutate(&json!({"poison_threads": 2})).unwrap();
    let more: Vec<u64> = more["poisonedConversationIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(more.len(), 2);
    assert!(more.iter().all(|m| !poisoned.contains(m)));
    h.shutdown().await;
}

/// What the receiver got: headers, the exact body bytes, the status it answered.
type Got = Arc<Mutex<Vec<(HeaderMap, Vec<u8>, u16)>>>;

/// A webhook receiver on loopback that answers 500 to its first `fail_first` posts.
async fn receiver(fail_first: usize) -> (String, Got) {
    use axum::extract::State;
    use axum::http::StatusCode as S;
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

fn bodies(got: &Got) -> Vec<Value> {
    got.lock()
        .unwrap()
        .iter()
        .filter(|x| x.2 == 200)
        .map(|(_, b, _)| serde_json::from_slice(b).unwrap())
        .collect()
}

/// The message ids of the delivered `message.received` events, in arrival order.
fn message_ids(got: &Got) -> Vec<u64> {
    bodies(got)
        .iter()
        .filter(|b| b["event"] == "message.received")
        .map(|b| b["data"]["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn webhook_events_are_hostaway_shaped_with_basic_auth() {
    let h = sim::start(SimConfig {
        threads: 10,
        ..cfg()
    })
    .await
    .unwrap();
    let (hook, got) = receiver(0).await;
    let c = Client::new();
    let t = h.token("acct-0");
    let r = c
        .post(format!("{}/_sim/webhook", h.base_url()))
        .json(&json!({"url": hook, "basic_user": "Aladdin", "basic_password": "open sesame"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["target"],
        json!({"url": hook, "basic_user": "Aladdin", "duplicate_rate": 0.0,
               "shuffle": false, "retries": 3}),
        "the password is not echoed"
    );
    let truth = h.truth(Some("acct-0"));
    let cid = truth["accounts"][0]["reservations"][0]["conversationId"]
        .as_u64()
        .unwrap();
    let m1 = h
        .mutate(&json!({"thread_ids": [cid], "new_messages": 1}))
        .unwrap();
    let up = h.mutate(&json!({"update_reservations": 1})).unwrap();
    let nt = h.mutate(&json!({"new_threads": 1})).unwrap();
    let inq = h.mutate(&json!({"new_inquiries": 1})).unwrap();
    assert!(h.webhook_idle(Duration::from_secs(10)).await);
    // Webhook posts are not provider requests.
    assert_eq!(h.stats().totals.requests, 0);
    let got_now = got.lock().unwrap().clone();
    assert_eq!(got_now.len(), 5);
    for (headers, _, status) in &got_now {
        assert_eq!(*status, 200);
        // base64("Aladdin:open sesame"), RFC 7617's example.
        assert_eq!(
            headers["authorization"],
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(headers["content-type"], "application/json");
    }
    let b = bodies(&got);
    let events: Vec<&str> = b.iter().map(|x| x["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        [
            "message.received",
            "reservation.updated",
            "reservation.created",
            "message.received",
            "message.received"
        ]
    );
    for x in &b {
        assert_eq!(x.as_object().unwrap().len(), 3, "{x}");
        assert_eq!(x["accountId"], 0);
    }
    // `data` is the object exactly as the API renders it.
    let message = |cid: u64, mid: u64| {
        let (c, h, t) = (&c, &h, &t);
        async move {
            walk(c, h, &format!("/v1/conversations/{cid}/messages"), t, 100)
                .await
                .into_iter()
                .find(|m| m["id"] == mid)
                .unwrap()
        }
    };
    let reservation = |rid: u64| {
        let (c, h, t) = (&c, &h, &t);
        async move {
            let (s, v) = get(c, h, &format!("/v1/reservations/{rid}"), t).await;
            assert_eq!(s, 200);
            v["result"].clone()
        }
    };
    let mid = m1["newMessages"][0]["messageId"].as_u64().unwrap();
    assert_eq!(b[0]["data"], message(cid, mid).await);
    assert_eq!(b[0]["data"]["conversationId"], cid);
    assert!(b[0]["data"]["reservationId"].is_u64());
    let rid = up["updatedReservationIds"][0].as_u64().unwrap();
    assert_eq!(b[1]["data"], reservation(rid).await);
    assert_eq!(b[1]["data"]["status"], "modified");
    let (nrid, ncid, nmid) = (
        nt["newThreads"][0]["reservationId"].as_u64().unwrap(),
        nt["newThreads"][0]["conversationId"].as_u64().unwrap(),
        nt["newThreads"][0]["messageId"].as_u64().unwrap(),
    );
    assert_eq!(b[2]["data"], reservation(nrid).await);
    assert_eq!(b[3]["data"], message(ncid, nmid).await);
    assert_eq!(b[3]["data"]["reservationId"], nrid);
    let (icid, imid) = (
        inq["newInquiries"][0]["conversationId"].as_u64().unwrap(),
        inq["newInquiries"][0]["messageId"].as_u64().unwrap(),
    );
    assert_eq!(b[4]["data"], message(icid, imid).await);
    assert!(b[4]["data"]["reservationId"].is_null());
    assert_eq!(b[4]["data"]["conversationId"], icid);
    // A reply sent through the API is an event too.
    let r = c
        .post(format!("{}/v1/conversations/{cid}/messages", h.base_url()))
        .bearer_auth(&t)
        .json(&json!({"body": "See you soon", "communicationType": "email"}))
        .send()
        .await
        .unwrap();
    let sent: Value = r.json().await.unwrap();
    assert!(h.webhook_idle(Duration::from_secs(10)).await);
    assert_eq!(bodies(&got)[5]["data"], sent["result"]);
    let stats = h.hostaway_webhook_stats().unwrap();
    assert_eq!(
        (
            stats.queued,
            stats.delivered,
            stats.duplicates_sent,
            stats.retried,
            stats.failed,
            stats.dropped
        ),
        (6, 6, 0, 0, 0, 0)
    );
    assert_eq!(stats.last_status, Some(200));
    let r = c
        .get(format!("{}/_sim/webhook", h.base_url()))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["delivered"].as_u64(), v["pending"].as_u64()),
        (Some(6), Some(0))
    );
    // Bad bodies are refused and change nothing; null stops the sender.
    for bad in [
        json!({"basic_user": "x"}),
        json!({"url": hook, "duplicate_rate": 2.0}),
        json!({"url": "not a url"}),
        json!({"url": "ftp://example.com/hook"}),
        json!({"url": hook, "basic_password": "p"}),
        json!({"url": hook, "retries": 99}),
        json!({"url": hook, "app_secret": "s"}),
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
    h.mutate(&json!({"new_messages": 3, "new_threads": 1}))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.hostaway_webhook_stats().unwrap().queued, 6);
    assert_eq!(got.lock().unwrap().len(), 6);
    h.shutdown().await;
}

#[tokio::test]
async fn webhook_duplicates_retries_after_a_500_and_shuffled_order() {
    let h = sim::start(SimConfig {
        threads: 10,
        ..cfg()
    })
    .await
    .unwrap();
    // Every delivery twice, and one 500 that is retried.
    let (hook, got) = receiver(1).await;
    h.set_hostaway_webhook(Some(WebhookTarget {
        duplicate_rate: 1.0,
        ..WebhookTarget::new(hook)
    }))
    .unwrap();
    let r = h.mutate(&json!({"new_messages": 3})).unwrap();
    assert!(h.webhook_idle(Duration::from_secs(10)).await);
    let made: Vec<u64> = r["newMessages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["messageId"].as_u64().unwrap())
        .collect();
    let twice: Vec<u64> = made.iter().flat_map(|m| [*m, *m]).collect();
    assert_eq!(message_ids(&got), twice, "each delivery twice, in order");
    let got_now = got.lock().unwrap().clone();
    let statuses: Vec<u16> = got_now.iter().map(|x| x.2).collect();
    assert_eq!(statuses, [500, 200, 200, 200, 200, 200, 200]);
    assert_eq!(got_now[0].1, got_now[1].1, "the retry posts the same bytes");
    assert!(
        got_now.iter().all(|x| x.0.get("authorization").is_none()),
        "no auth unless configured"
    );
    let s = h.hostaway_webhook_stats().unwrap();
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
    // A receiver that always answers 500, with one retry: then failed.
    let (hook, got) = receiver(usize::MAX).await;
    let before = h.hostaway_webhook_stats().unwrap();
    h.set_hostaway_webhook(Some(WebhookTarget {
        retries: 1,
        ..WebhookTarget::new(hook)
    }))
    .unwrap();
    h.mutate(&json!({"new_messages": 1})).unwrap();
    assert!(h.webhook_idle(Duration::from_secs(10)).await);
    let s = h.hostaway_webhook_stats().unwrap();
    assert_eq!(got.lock().unwrap().len(), 2, "first attempt and one retry");
    assert_eq!(
        (s.failed - before.failed, s.retried - before.retried),
        (1, 1)
    );
    assert_eq!(s.delivered, before.delivered);
    assert_eq!(s.last_status, Some(500));
    // Default retries against a closed port: 3 retries, then failed.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", dead.local_addr().unwrap());
    drop(dead);
    let before = s;
    h.set_hostaway_webhook(Some(WebhookTarget::new(url)))
        .unwrap();
    h.mutate(&json!({"new_messages": 1})).unwrap();
    assert!(h.webhook_idle(Duration::from_secs(10)).await);
    let s = h.hostaway_webhook_stats().unwrap();
    assert_eq!(
        (s.failed - before.failed, s.retried - before.retried),
        (1, 3)
    );
    assert!(s.last_error.is_some());
    // Shuffled: every delivery arrives once, not in the order the messages were made.
    let (hook, got) = receiver(0).await;
    h.set_hostaway_webhook(Some(WebhookTarget {
        shuffle: true,
        ..WebhookTarget::new(hook)
    }))
    .unwrap();
    let r = h.mutate(&json!({"new_messages": 20})).unwrap();
    assert!(h.webhook_idle(Duration::from_secs(10)).await);
    let made: Vec<u64> = r["newMessages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["messageId"].as_u64().unwrap())
        .collect();
    let seen = message_ids(&got);
    assert_ne!(seen, made, "shuffled");
    let (mut a, mut b) = (seen.clone(), made.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b, "each exactly once");
    h.shutdown().await;
}

#[tokio::test]
async fn background_steps_queue_webhooks_and_other_providers_refuse_the_control() {
    let h = sim::start(SimConfig {
        threads: 10,
        mutate_rate: 50.0,
        hostaway_inquiry_share: 0.5,
        ..cfg()
    })
    .await
    .unwrap();
    let (hook, got) = receiver(0).await;
    h.set_hostaway_webhook(Some(WebhookTarget::new(hook)))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    h.set_hostaway_webhook(None).unwrap();
    let s = h.hostaway_webhook_stats().unwrap();
    assert!(s.queued >= 5, "{s:?}");
    assert_eq!(s.queued, s.delivered + s.dropped + s.pending, "{s:?}");
    assert!(h.webhook_idle(Duration::from_secs(10)).await);
    let s = h.hostaway_webhook_stats().unwrap();
    let b = bodies(&got);
    assert_eq!(b.len() as u64, s.delivered);
    assert!(!b.is_empty());
    assert!(b.iter().all(|x| matches!(
        x["event"].as_str(),
        Some("message.received" | "reservation.created")
    )));
    let queued = s.queued;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        h.hostaway_webhook_stats().unwrap().queued,
        queued,
        "stopped"
    );
    h.shutdown().await;
    let fb = sim::start(SimConfig {
        provider: Provider::Facebook,
        threads: 2,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    assert!(fb.set_hostaway_webhook(None).is_err());
    assert!(fb.hostaway_webhook_stats().is_err());
    fb.shutdown().await;
}

#[tokio::test]
async fn include_resources_adds_the_reservation_and_null_for_an_inquiry() {
    let h = sim::start(SimConfig {
        hostaway_inquiry_share: 0.3,
        ..cfg()
    })
    .await
    .unwrap();
    let c = Client::new();
    let t = h.token("acct-0");
    let plain = walk(&c, &h, "/v1/conversations", &t, 20).await;
    let with = walk(&c, &h, "/v1/conversations?includeResources=1", &t, 20).await;
    assert_eq!(plain.len(), 45);
    assert_eq!(with.len(), plain.len());
    assert!(plain.iter().all(|x| x.get("Reservation").is_none()));
    let (mut inquiries, mut booked) = (Vec::new(), Vec::new());
    for (p, w) in plain.iter().zip(&with) {
        let mut rest = w.clone();
        let res = rest.as_object_mut().unwrap().remove("Reservation");
        assert_eq!(&rest, p, "nothing else changes");
        let res = res.expect("Reservation present");
        match p["reservationId"].as_u64() {
            None => {
                assert!(res.is_null(), "an inquiry has no reservation: {res}");
                inquiries.push(p["id"].as_u64().unwrap());
            }
            Some(rid) => {
                let (s, v) = get(&c, &h, &format!("/v1/reservations/{rid}"), &t).await;
                assert_eq!(s, 200);
                assert_eq!(res, v["result"], "as /v1/reservations/{{id}} renders it");
                booked.push((p["id"].as_u64().unwrap(), rid));
            }
        }
    }
    assert!(!inquiries.is_empty() && !booked.is_empty());
    // One conversation, both kinds; any other value of the parameter changes nothing.
    let (s, v) = get(
        &c,
        &h,
        &format!("/v1/conversations/{}?includeResources=1", inquiries[0]),
        &t,
    )
    .await;
    assert_eq!(s, 200);
    assert!(v["result"]["Reservation"].is_null());
    assert!(v["result"].as_object().unwrap().contains_key("Reservation"));
    let (cid, rid) = booked[0];
    let (_, one) = get(&c, &h, &format!("/v1/reservations/{rid}"), &t).await;
    let (_, v) = get(
        &c,
        &h,
        &format!("/v1/conversations/{cid}?includeResources=1"),
        &t,
    )
    .await;
    assert_eq!(v["result"]["Reservation"], one["result"]);
    for q in ["", "?includeResources=0"] {
        let (_, v) = get(&c, &h, &format!("/v1/conversations/{cid}{q}"), &t).await;
        assert!(v["result"].get("Reservation").is_none(), "{q}");
        let (_, v) = get(
            &c,
            &h,
            &format!("/v1/reservations/{rid}/conversations{q}"),
            &t,
        )
        .await;
        assert!(v["result"][0].get("Reservation").is_none(), "{q}");
    }
    let (s, v) = get(
        &c,
        &h,
        &format!("/v1/reservations/{rid}/conversations?includeResources=1"),
        &t,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["result"][0]["id"], cid);
    assert_eq!(v["result"][0]["Reservation"], one["result"]);
    h.shutdown().await;
}

#[tokio::test]
async fn a_numeric_client_id_mints_a_token_for_that_account() {
    let h = sim::start(SimConfig {
        accounts: 3,
        threads: 5,
        ..cfg()
    })
    .await
    .unwrap();
    let c = Client::new();
    let mint = |client: &'static str, secret: &'static str| {
        let c = c.clone();
        let u = format!("{}/v1/accessTokens", h.base_url());
        async move {
            let r = c
                .post(u)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client),
                    ("client_secret", secret),
                    ("scope", "general"),
                ])
                .send()
                .await
                .unwrap();
            let s = r.status();
            (s, r.json::<Value>().await.unwrap())
        }
    };
    let (s, v) = mint("2", "sim-secret-acct-2").await;
    assert_eq!(s, 200, "{v}");
    let tok = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(get(&c, &h, "/v1/conversations?limit=1", &tok).await.0, 403);
    h.advance_clock(1.0);
    let (s, v) = get(&c, &h, "/v1/conversations?limit=1", &tok).await;
    assert_eq!(s, 200, "valid 1 s after issue");
    assert_eq!(v["result"][0]["accountId"], 2);
    // The account-name form still works; the secret is the same for both.
    let (s, _) = mint("acct-2", "sim-secret-acct-2").await;
    assert_eq!(s, 200);
    for (client, secret) in [
        ("2", "sim-secret-2"),
        ("2", "sim-secret-acct-1"),
        ("3", "sim-secret-acct-3"),
        ("02", "sim-secret-acct-2"),
        ("-1", "sim-secret-acct--1"),
        ("", "sim-secret-acct-"),
    ] {
        let (s, v) = mint(client, secret).await;
        assert_eq!(
            (s, v["status"].as_str()),
            (StatusCode::FORBIDDEN, Some("fail")),
            "{client}"
        );
    }
    h.shutdown().await;
}

/// One metered request from `ip` with `token`.
async fn from_ip(c: &Client, h: &SimHandle, token: &str, ip: &str) -> StatusCode {
    c.get(format!("{}/v1/conversations?limit=1", h.base_url()))
        .bearer_auth(token)
        .header("X-Sim-Client-IP", ip)
        .send()
        .await
        .unwrap()
        .status()
}

async fn windows(c: &Client, h: &SimHandle) -> Value {
    let r = c
        .get(format!("{}/_sim/windows", h.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn window_peaks_count_admitted_and_throttled_requests_until_a_reset() {
    let h = sim::start(cfg()).await.unwrap();
    let c = Client::new();
    h.set_hostaway_limits(5, 100, 1000).unwrap();
    let t = h.token("acct-0");
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(from_ip(&c, &h, &t, "10.1.0.1").await);
    }
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert!(throttled > 0, "{statuses:?}");
    assert!(statuses[..5].iter().all(|s| *s == 200), "{statuses:?}");
    // Neither a bad token nor the token endpoint counts.
    assert_eq!(from_ip(&c, &h, "nope", "10.1.0.1").await, 403);
    let r = c
        .post(format!("{}/v1/accessTokens", h.base_url()))
        .header("X-Sim-Client-IP", "10.1.0.1")
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "0"),
            ("client_secret", "sim-secret-acct-0"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let p = h.hostaway_window_peaks().unwrap();
    assert_eq!(p.window_ms, 1000);
    assert_eq!(p.by_ip.get("10.1.0.1"), Some(&12), "{p:?}");
    assert_eq!(p.by_ip.len(), 1, "{p:?}");
    assert_eq!(p.by_account.get("acct-0"), Some(&12), "{p:?}");
    assert_eq!(p.by_account.len(), 1, "{p:?}");
    assert_eq!(h.stats().accounts["acct-0"].throttled_429, throttled as u64);
    let v = windows(&c, &h).await;
    assert_eq!(
        v,
        json!({"window_ms": 1000, "by_ip": {"10.1.0.1": 12}, "by_account": {"acct-0": 12}})
    );
    h.reset_stats();
    let p = h.hostaway_window_peaks().unwrap();
    assert!(p.by_ip.is_empty() && p.by_account.is_empty(), "{p:?}");
    assert_eq!(p.window_ms, 1000);
    // The peak windows were cleared too: the account's next requests start from zero.
    assert_eq!(from_ip(&c, &h, &t, "10.1.0.2").await, 200);
    assert_eq!(from_ip(&c, &h, &t, "10.1.0.2").await, 200);
    let v = windows(&c, &h).await;
    assert_eq!(v["by_ip"], json!({"10.1.0.2": 2}));
    assert_eq!(v["by_account"], json!({"acct-0": 2}));
    // The HTTP reset clears them as well.
    let r = c
        .post(format!("{}/_sim/stats/reset", h.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = windows(&c, &h).await;
    assert_eq!(v, json!({"window_ms": 1000, "by_ip": {}, "by_account": {}}));
    h.shutdown().await;
}

#[tokio::test]
async fn runtime_limits_replace_what_is_admitted() {
    let h = sim::start(cfg()).await.unwrap();
    let c = Client::new();
    let t = h.token("acct-0");
    for _ in 0..4 {
        assert_eq!(from_ip(&c, &h, &t, "10.2.0.1").await, 200);
    }
    h.set_hostaway_limits(2, 3, 60_000).unwrap();
    // Fresh windows: the four earlier requests do not count, and the peaks restarted.
    let p = h.hostaway_window_peaks().unwrap();
    assert_eq!(p.window_ms, 60_000);
    assert!(p.by_ip.is_empty() && p.by_account.is_empty(), "{p:?}");
    assert_eq!(from_ip(&c, &h, &t, "10.2.0.1").await, 200);
    assert_eq!(from_ip(&c, &h, &t, "10.2.0.1").await, 200);
    assert_eq!(from_ip(&c, &h, &t, "10.2.0.1").await, 429, "ip limit 2");
    assert_eq!(from_ip(&c, &h, &t, "10.2.0.2").await, 200);
    assert_eq!(
        from_ip(&c, &h, &t, "10.2.0.3").await,
        429,
        "account limit 3"
    );
    let p = h.hostaway_window_peaks().unwrap();
    assert_eq!(p.by_ip["10.2.0.1"], 3);
    assert_eq!(p.by_account["acct-0"], 5);
    // Over HTTP: the answer is the limits now enforced, and everything restarts.
    let post = |body: Value| {
        let c = c.clone();
        let u = format!("{}/_sim/hostaway_limits", h.base_url());
        async move {
            let r = c.post(u).json(&body).send().await.unwrap();
            let s = r.status();
            (s, r.json::<Value>().await.unwrap())
        }
    };
    let want = json!({"ip_limit": 1, "account_limit": 10, "window_ms": 60_000});
    let (s, v) = post(want.clone()).await;
    assert_eq!((s, &v), (StatusCode::OK, &want));
    let r = c
        .get(format!("{}/_sim/hostaway_limits", h.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), want);
    assert_eq!(windows(&c, &h).await["by_ip"], json!({}));
    assert_eq!(from_ip(&c, &h, &t, "10.2.0.3").await, 200);
    assert_eq!(from_ip(&c, &h, &t, "10.2.0.3").await, 429, "ip limit 1");
    // A short window admits again once it has passed.
    h.set_hostaway_limits(1, 100, 200).unwrap();
    assert_eq!(from_ip(&c, &h, &t, "10.2.0.4").await, 200);
    assert_eq!(from_ip(&c, &h, &t, "10.2.0.4").await, 429);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(from_ip(&c, &h, &t, "10.2.0.4").await, 200);
    assert_eq!(h.hostaway_window_peaks().unwrap().window_ms, 200);
    // Bad bodies: 400 with one message, and nothing changes.
    for (body, needle) in [
        (
            json!({"ip_limit": 1, "account_limit": 1}),
            "missing window_ms",
        ),
        (json!({"window_ms": 5}), "missing ip_limit, account_limit"),
        (
            json!({"ip_limit": 1, "account_limit": 1, "window_ms": 0}),
            "at least 1",
        ),
        (
            json!({"ip_limit": -1, "account_limit": 1, "window_ms": 5}),
            "invalid value",
        ),
        (
            json!({"ip_limit": 1, "account_limit": 1, "window_ms": 5, "burst": 2}),
            "unknown field",
        ),
        (json!("15/20"), "invalid type"),
    ] {
        let (s, v) = post(body.clone()).await;
        assert_eq!(s, 400, "{body}");
        let e = v["error"].as_str().unwrap();
        assert!(e.contains("\"window_ms\": u64 >= 1"), "{e}");
        assert!(e.contains(needle), "{body}: {e}");
    }
    let r = c
        .post(format!("{}/_sim/hostaway_limits", h.base_url()))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(h.set_hostaway_limits(1, 1, 0).is_err());
    let r = c
        .get(format!("{}/_sim/hostaway_limits", h.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"ip_limit": 1, "account_limit": 100, "window_ms": 200})
    );
    h.shutdown().await;
    let fb = sim::start(SimConfig {
        provider: Provider::Facebook,
        threads: 2,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    assert!(fb.hostaway_window_peaks().is_err());
    assert!(fb.set_hostaway_limits(15, 20, 10_000).is_err());
    fb.shutdown().await;
}

/// The contract tests' dataset: 120 conversations, a fifth of them inquiries.
fn contract_cfg() -> SimConfig {
    SimConfig {
        threads: 120,
        messages: 6,
        seed: 4,
        hostaway_inquiry_share: 0.2,
        ..cfg()
    }
}

/// Live conversation ids in the truth, both kinds.
fn live_conversations(h: &SimHandle) -> HashSet<u64> {
    let truth = h.truth(Some("acct-0"));
    let a = &truth["accounts"][0];
    ["reservations", "inquiries"]
        .iter()
        .flat_map(|k| a[*k].as_array().unwrap().iter())
        .map(|r| r["conversationId"].as_u64().unwrap())
        .collect()
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn delete_threads_deletes_exactly_n_distinct_conversations_of_either_kind() {
    let h = sim::start(contract_cfg()).await.unwrap();
    let before = live_conversations(&h);
    assert_eq!(before.len(), 120);
    let gone = u64s(&h.mutate(&json!({"delete_threads": 4})).unwrap()["deletedConversationIds"]);
    assert_eq!(gone.len(), 4, "{gone:?}");
    let distinct: HashSet<u64> = gone.iter().copied().collect();
    assert_eq!(distinct.len(), 4);
    let after = live_conversations(&h);
    assert_eq!(
        before.difference(&after).copied().collect::<HashSet<_>>(),
        distinct
    );
    h.shutdown().await;
}

#[tokio::test]
async fn delete_ids_deletes_exactly_those_conversations_numbers_or_strings() {
    let h = sim::start(contract_cfg()).await.unwrap();
    let c = Client::new();
    let t = h.token("acct-0");
    let truth = h.truth(Some("acct-0"));
    let a = &truth["accounts"][0];
    let booked = a["reservations"][0]["conversationId"].as_u64().unwrap();
    let inquiry = a["inquiries"][0]["conversationId"].as_u64().unwrap();
    let before = live_conversations(&h);
    // A decimal string (as the shared contract test sends), a number, an unknown id.
    let v = h
        .mutate(&json!({"delete_ids": [inquiry.to_string(), booked, 999]}))
        .unwrap();
    assert_eq!(u64s(&v["deletedConversationIds"]), vec![inquiry, booked]);
    let after = live_conversations(&h);
    assert_eq!(
        before.difference(&after).copied().collect::<HashSet<_>>(),
        HashSet::from([inquiry, booked])
    );
    let deleted = u64s(&h.truth(Some("acct-0"))["accounts"][0]["deleted_conversation_ids"]);
    assert_eq!(
        deleted.into_iter().collect::<HashSet<_>>(),
        HashSet::from([inquiry, booked])
    );
    for id in [inquiry, booked] {
        let (s, _) = get(&c, &h, &format!("/v1/conversations/{id}"), &t).await;
        assert_eq!(s, 404);
    }
    // Ids no longer live are ignored; delete_threads deletes N others besides.
    let v = h
        .mutate(&json!({"delete_ids": [booked.to_string()], "delete_threads": 2}))
        .unwrap();
    let gone = u64s(&v["deletedConversationIds"]);
    assert_eq!(gone.len(), 2, "{gone:?}");
    assert!(gone.iter().all(|id| after.contains(id)));
    assert_eq!(live_conversations(&h).len(), 116);
    // An id that is neither a number nor a decimal string is refused, and nothing changes.
    for bad in [
        json!(["12a"]),
        json!([""]),
        json!([-1]),
        json!(["+5"]),
        json!([1.5]),
    ] {
        assert!(h.mutate(&json!({"delete_ids": bad})).is_err(), "{bad}");
    }
    assert_eq!(live_conversations(&h).len(), 116);
    h.shutdown().await;
}

#[tokio::test]
async fn reservation_ids_target_update_reservations() {
    let h = sim::start(contract_cfg()).await.unwrap();
    let (hook, got) = receiver(0).await;
    let c = Client::new();
    let t = h.token("acct-0");
    let r = c
        .post(format!("{}/_sim/webhook", h.base_url()))
        .json(&json!({"url": hook}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let truth = h.truth(Some("acct-0"));
    let res = truth["accounts"][0]["reservations"].as_array().unwrap();
    let (r1, r2) = (
        res[3]["id"].as_u64().unwrap(),
        res[7]["id"].as_u64().unwrap(),
    );
    let not_a_reservation = res[0]["conversationId"].as_u64().unwrap();
    h.advance_clock(5.0);
    // update_reservations omitted: each of reservation_ids once; unknown ids ignored.
    let v = h
        .mutate(&json!({"reservation_ids": [r1.to_string(), r2, 77, not_a_reservation, r1]}))
        .unwrap();
    assert_eq!(u64s(&v["updatedReservationIds"]), vec![r1, r2]);
    assert!(h.webhook_idle(Duration::from_secs(10)).await);
    let events: Vec<(String, u64)> = bodies(&got)
        .iter()
        .map(|b| {
            (
                b["event"].as_str().unwrap().to_string(),
                b["data"]["id"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        events,
        vec![
            ("reservation.updated".to_string(), r1),
            ("reservation.updated".to_string(), r2)
        ]
    );
    for id in [r1, r2] {
        let (s, v) = get(&c, &h, &format!("/v1/reservations/{id}"), &t).await;
        assert_eq!(s, 200);
        assert_eq!(v["result"]["status"], "modified");
    }
    // They are now the most recently updated ones.
    let (_, v) = get(&c, &h, "/v1/reservations?limit=2", &t).await;
    assert_eq!(
        ids(&v).into_iter().collect::<HashSet<_>>(),
        HashSet::from([r1, r2])
    );
    // With a count they are updated in turn; with none known nothing is.
    let v = h
        .mutate(&json!({"reservation_ids": [r2, r1], "update_reservations": 3}))
        .unwrap();
    assert_eq!(u64s(&v["updatedReservationIds"]), vec![r2, r1, r2]);
    let v = h
        .mutate(&json!({"reservation_ids": [77], "update_reservations": 2}))
        .unwrap();
    assert!(u64s(&v["updatedReservationIds"]).is_empty());
    assert!(h.mutate(&json!({"reservation_ids": ["r1"]})).is_err());
    h.shutdown().await;
}

/// `POST /v1/accessTokens` for `client` with its right secret: status and body.
async fn mint(c: &Client, h: &SimHandle, client: &str) -> (StatusCode, Value) {
    let name = if client.starts_with("acct-") {
        client.to_string()
    } else {
        format!("acct-{client}")
    };
    let secret = format!("sim-secret-{name}");
    let r = c
        .post(format!("{}/v1/accessTokens", h.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("client_secret", secret.as_str()),
            ("scope", "general"),
        ])
        .send()
        .await
        .unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn access_token(v: &Value) -> String {
    v["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn expire_token_revokes_minted_tokens_and_the_client_secret() {
    let h = sim::start(SimConfig {
        accounts: 2,
        threads: 5,
        ..cfg()
    })
    .await
    .unwrap();
    let c = Client::new();
    let (s, v) = mint(&c, &h, "acct-0").await;
    assert_eq!(s, 200);
    let minted = access_token(&v);
    let other = access_token(&mint(&c, &h, "acct-1").await.1);
    h.advance_clock(1.0);
    let q = "/v1/conversations?limit=1";
    assert_eq!(get(&c, &h, q, &minted).await.0, 200);
    let r = c
        .post(format!("{}/_sim/expire_token", h.base_url()))
        .json(&json!({"account": "acct-0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for tok in [minted, h.token("acct-0")] {
        let (s, v) = get(&c, &h, q, &tok).await;
        assert_eq!(
            (s, v["status"].as_str()),
            (StatusCode::FORBIDDEN, Some("fail"))
        );
    }
    // The secret is refused under either form of the client id.
    for client in ["acct-0", "0"] {
        let (s, v) = mint(&c, &h, client).await;
        assert_eq!(
            (s, v["status"].as_str()),
            (StatusCode::FORBIDDEN, Some("fail"))
        );
        assert!(v["message"].as_str().unwrap().contains("revoked"), "{v}");
    }
    // Other accounts are untouched.
    assert_eq!(get(&c, &h, q, &other).await.0, 200);
    assert_eq!(get(&c, &h, q, &h.token("acct-1")).await.0, 200);
    assert_eq!(mint(&c, &h, "1").await.0, 200);
    assert!(h.expire_token("acct-1"));
    assert_eq!(get(&c, &h, q, &other).await.0, 403);
    assert_eq!(mint(&c, &h, "acct-1").await.0, 403);
    assert!(!h.expire_token("acct-2"));
    h.shutdown().await;
}

#[tokio::test]
async fn revoke_minted_revokes_the_tokens_minted_so_far_but_not_the_secret() {
    let h = sim::start(SimConfig {
        accounts: 2,
        threads: 5,
        ..cfg()
    })
    .await
    .unwrap();
    let c = Client::new();
    let t1 = access_token(&mint(&c, &h, "acct-0").await.1);
    let t2 = access_token(&mint(&c, &h, "0").await.1);
    let other = access_token(&mint(&c, &h, "acct-1").await.1);
    h.advance_clock(1.0);
    let q = "/v1/conversations?limit=1";
    for tok in [&t1, &t2, &other] {
        assert_eq!(get(&c, &h, q, tok).await.0, 200);
    }
    let v = h.mutate(&json!({"revoke_minted": true})).unwrap();
    assert_eq!(v["revokedTokens"], 2);
    for tok in [&t1, &t2] {
        assert_eq!(get(&c, &h, q, tok).await.0, 403);
    }
    // The static token, other accounts and minting again still work.
    assert_eq!(get(&c, &h, q, &h.token("acct-0")).await.0, 200);
    assert_eq!(get(&c, &h, q, &other).await.0, 200);
    let (s, v) = mint(&c, &h, "acct-0").await;
    assert_eq!(s, 200);
    let t3 = access_token(&v);
    h.advance_clock(1.0);
    assert_eq!(get(&c, &h, q, &t3).await.0, 200);
    // Only what is not revoked yet is counted; without the flag nothing is revoked.
    assert_eq!(
        h.mutate(&json!({"new_messages": 1})).unwrap()["revokedTokens"],
        0
    );
    assert_eq!(get(&c, &h, q, &t3).await.0, 200);
    let v = h
        .mutate(&json!({"account": "acct-0", "revoke_minted": true}))
        .unwrap();
    assert_eq!(v["revokedTokens"], 1);
    assert_eq!(get(&c, &h, q, &t3).await.0, 403);
    assert_eq!(get(&c, &h, q, &other).await.0, 200);
    h.shutdown().await;
}
