//! Contract tests for the SMSEagle v2 simulator over loopback HTTP.

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::collections::HashSet;
use threadsync::sim::{self, Faults, Provider, SimConfig, SimHandle, StatusStyle};

fn cfg() -> SimConfig {
    SimConfig {
        provider: Provider::Smseagle,
        threads: 20,
        messages: 20,
        id_gap_rate: 0.1,
        ..SimConfig::default()
    }
}

async fn get(c: &Client, h: &SimHandle, path: &str, token: &str) -> (StatusCode, Value) {
    let r = c
        .get(format!("{}{path}", h.base_url()))
        .header("access-token", token)
        .send()
        .await
        .unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn folders_paginate_and_id_watermarks_skip_gaps() {
    let h = sim::start(cfg()).await.unwrap();
    let c = Client::new();
    let t = h.token("acct-0");
    let truth = h.truth(Some("acct-0"));
    let msgs = truth["accounts"][0]["messages"].as_array().unwrap();
    let truth_inbox: Vec<u64> = msgs
        .iter()
        .filter(|m| m["folder"] == "inbox")
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    let truth_sent: Vec<u64> = msgs
        .iter()
        .filter(|m| m["folder"] == "sentitems")
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert!(!truth_inbox.is_empty() && !truth_sent.is_empty());
    // limit/offset walk over the inbox.
    let mut seen = Vec::new();
    for offset in (0..).step_by(50) {
        let (s, v) = get(
            &c,
            &h,
            &format!("/api/v2/messages/inbox?limit=50&offset={offset}"),
            &t,
        )
        .await;
        assert_eq!(s, 200);
        let page = ids(&v);
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 50);
        seen.extend(page);
    }
    assert_eq!(seen, truth_inbox);
    // id watermark walk over sentitems (v1 spelling idfrom), ids ascending with gaps.
    let mut seen = Vec::new();
    let mut from = 0;
    loop {
        let (s, v) = get(
            &c,
            &h,
            &format!("/api/v2/messages/sent?idfrom={from}&limit=40"),
            &t,
        )
        .await;
        assert_eq!(s, 200);
        let page = ids(&v);
        let Some(last) = page.last().copied() else {
            break;
        };
        assert!(v
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["folder"] == "sentitems"));
        seen.extend(page);
        from = last + 1;
    }
    assert_eq!(seen, truth_sent);
    let skipped = truth["accounts"][0]["skipped_ids"].as_array().unwrap();
    assert!(!skipped.is_empty(), "gap rate 0.1 must leave gaps");
    let seen: HashSet<u64> = seen.into_iter().collect();
    assert!(skipped.iter().all(|g| !seen.contains(&g.as_u64().unwrap())));
    // Date window filters on the message date.
    let first_date = msgs[0]["date"].as_str().unwrap().to_string();
    let compact: String = first_date.chars().filter(|c| c.is_ascii_digit()).collect();
    let (s, v) = get(
        &c,
        &h,
        &format!("/api/v2/messages/inbox?date_to={compact}"),
        &t,
    )
    .await;
    assert_eq!(s, 200);
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["date"].as_str().unwrap() <= first_date.as_str()));
    // unread=1 returns only unread inbox rows.
    let (_, v) = get(&c, &h, "/api/v2/messages/inbox?unread=1", &t).await;
    let unread = v.as_array().unwrap();
    assert!(!unread.is_empty() && unread.len() < truth_inbox.len());
    assert!(unread.iter().all(|m| m["read"] == false));
    h.shutdown().await;
}

#[tokio::test]
async fn sent_message_lifecycle_changes_status_in_place() {
    let h = sim::start(SimConfig {
        no_report_rate: 0.2,
        ..cfg()
    })
    .await
    .unwrap();
    let c = Client::new();
    let t = h.token("acct-0");
    let r = c
        .post(format!("{}/api/v2/messages/sms", h.base_url()))
        .header("access-token", &t)
        .json(&json!({"to": ["+48500100200", "+48500100201", "bad-number"], "text": "hi", "validity": "5m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out: Value = r.json().await.unwrap();
    assert_eq!(out[0]["status"], "queued");
    assert_eq!(out[0]["message"], "OK");
    assert_eq!(out[0]["number"], "+48500100200");
    assert_eq!(out[2]["status"], "error");
    let id = out[0]["id"].as_u64().unwrap();
    assert!(out[1]["id"].as_u64().unwrap() > id);
    let lookup = format!("/api/v2/messages/outbox?id_from={id}&id_to={id}");
    let (_, v) = get(&c, &h, &lookup, &t).await;
    assert_eq!(v[0]["status"], "Reserved");
    // Many more sends so every outcome shows up.
    let sent = h
        .mutate(&json!({"account": "acct-0", "send": 60, "validity": "5m"}))
        .unwrap();
    let sent: Vec<u64> = sent["sent_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    h.advance_clock(10.0);
    let (_, v) = get(
        &c,
        &h,
        &format!("/api/v2/messages/sentitems?id_from={id}&id_to={id}"),
        &t,
    )
    .await;
    assert_eq!(v[0]["id"], id);
    let before = v[0].clone();
    assert!(["SendingOK", "DeliveryPending", "SendingError"]
        .contains(&before["status"].as_str().unwrap()));
    h.advance_clock(600.0);
    let (_, v) = get(
        &c,
        &h,
        &format!("/api/v2/messages/sentitems?id_from={}", sent[0]),
        &t,
    )
    .await;
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), sent.len());
    let statuses: HashSet<&str> = rows.iter().map(|m| m["status"].as_str().unwrap()).collect();
    assert!(statuses.contains("DeliveryOK"), "{statuses:?}");
    assert!(
        statuses.contains("SendingOK") || statuses.contains("DeliveryPending"),
        "some never get a report: {statuses:?}"
    );
    for m in rows {
        let final_ =
            ["DeliveryOK", "DeliveryFailed", "Error"].contains(&m["status"].as_str().unwrap());
        assert_eq!(final_, m["delivery_date"].is_string(), "{m}");
        if final_ {
            assert!(m["updated"].as_str().unwrap() > m["date"].as_str().unwrap());
        }
    }
    // The error view lists failed sends only.
    let (_, errs) = get(&c, &h, "/api/v2/messages/error", &t).await;
    assert!(errs
        .as_array()
        .unwrap()
        .iter()
        .all(|m| ["DeliveryFailed", "Error", "SendingError"]
            .contains(&m["status"].as_str().unwrap())));
    let stats = h.stats();
    assert_eq!(stats.accounts["acct-0"].lookups_by_id[&id.to_string()], 2);
    h.shutdown().await;
}

#[tokio::test]
async fn errors_auth_and_device_busy() {
    let h = sim::start(SimConfig {
        status_style: StatusStyle::Snake,
        ..cfg()
    })
    .await
    .unwrap();
    let c = Client::new();
    let t = h.token("acct-0");
    let (s, v) = get(&c, &h, "/api/v2/messages/inbox", "wrong").await;
    assert_eq!(s, 401);
    assert_eq!(v["status"], "error");
    for q in ["limit=ten", "id_from=-1", "date_from=yesterday"] {
        let (s, v) = get(&c, &h, &format!("/api/v2/messages/inbox?{q}"), &t).await;
        assert_eq!(s, 400, "{q}");
        assert!(v["message"]
            .as_str()
            .unwrap()
            .starts_with("Wrong parameters"));
    }
    assert_eq!(get(&c, &h, "/api/v2/messages/drafts", &t).await.0, 404);
    let r = c
        .post(format!("{}/api/v2/messages/sms", h.base_url()))
        .header("access-token", &t)
        .body("{\"to\": []")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (_, v) = get(&c, &h, "/api/v2/messages/sentitems?limit=30", &t).await;
    assert!(v.as_array().unwrap().iter().all(|m| m["status"]
        .as_str()
        .unwrap()
        .chars()
        .all(|c| c.is_ascii_lowercase() || c == '_')));
    h.set_faults(Faults {
        burst_429: 1.0,
        ..Faults::default()
    });
    let (s, v) = get(&c, &h, "/api/v2/messages/inbox", &t).await;
    assert_eq!(
        (s, v["message"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("Device busy"))
    );
    h.set_faults(Faults::default());
    assert_eq!(
        get(&c, &h, "/api/v2/messages/inbox?limit=1", &t).await.0,
        200
    );
    assert!(h.expire_token("acct-0"));
    assert_eq!(
        get(&c, &h, "/api/v2/messages/inbox?limit=1", &t).await.0,
        401
    );
    h.shutdown().await;
}

#[tokio::test]
async fn single_message_read_and_delete() {
    let h = sim::start(cfg()).await.unwrap();
    let c = Client::new();
    let t = h.token("acct-0");
    let (_, inbox) = get(&c, &h, "/api/v2/messages/inbox?limit=3", &t).await;
    let id = inbox[1]["id"].as_u64().unwrap();
    let (s, one) = get(&c, &h, &format!("/api/v2/messages/inbox/{id}"), &t).await;
    assert_eq!(s, 200);
    assert_eq!(one, inbox[1]);
    assert_eq!(get(&c, &h, "/api/v2/messages/inbox/abc", &t).await.0, 400);
    assert_eq!(
        get(&c, &h, "/api/v2/messages/inbox/99999999", &t).await.0,
        404
    );
    let r = c
        .delete(format!("{}/api/v2/messages/inbox/{id}", h.base_url()))
        .header("access-token", &t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        get(&c, &h, &format!("/api/v2/messages/inbox/{id}"), &t)
            .await
            .0,
        404
    );
    let (_, after) = get(&c, &h, "/api/v2/messages/inbox?limit=3", &t).await;
    assert!(!ids(&after).contains(&id));
    let truth = h.truth(Some("acct-0"));
    assert_eq!(
        truth["accounts"][0]["deleted"][0],
        json!({"folder": "inbox", "id": id})
    );
    h.shutdown().await;
}

#[tokio::test]
async fn v1_http_api_reads_sends_and_reports_errors_in_200_bodies() {
    let h = sim::start(cfg()).await.unwrap();
    let c = Client::new();
    let t = h.token("acct-0");
    let v1 = |path: String| {
        let c = c.clone();
        let u = format!("{}/http_api/{path}", h.base_url());
        async move {
            let r = c.get(u).send().await.unwrap();
            assert_eq!(r.status(), 200, "v1 reports errors in the body");
            r.text().await.unwrap()
        }
    };
    let body: Value =
        serde_json::from_str(&v1("read_sms?access_token=bad&folder=inbox".into()).await).unwrap();
    assert_eq!(body["result"]["error_text"], "Invalid access token");
    let body: Value =
        serde_json::from_str(&v1(format!("read_sms?access_token={t}&folder=drafts")).await)
            .unwrap();
    assert_eq!(body["result"]["error_text"], "Wrong parameters");
    let body: Value = serde_json::from_str(
        &v1(format!(
            "read_sms?access_token={t}&folder=inbox&datefrom=2026-01-01"
        ))
        .await,
    )
    .unwrap();
    assert_eq!(
        body["result"]["error_text"], "Wrong parameters",
        "dates are YYYYmmDDHHMMSS"
    );
    // Same rows as v2, with Gammu column names.
    let (_, v2) = get(&c, &h, "/api/v2/messages/inbox?limit=10", &t).await;
    let body: Value =
        serde_json::from_str(&v1(format!("read_sms?access_token={t}&folder=inbox&limit=10")).await)
            .unwrap();
    let rows = body["result"].as_array().unwrap();
    assert_eq!(rows.len(), 10);
    for (a, b) in rows.iter().zip(v2.as_array().unwrap()) {
        assert_eq!(a["ID"], b["id"].to_string());
        assert_eq!(a["TextDecoded"], b["text"]);
        assert_eq!(a["SenderNumber"], b["number"]);
        let hex = a["Text"].as_str().unwrap();
        let units: Vec<u16> = (0..hex.len())
            .step_by(4)
            .map(|k| u16::from_str_radix(&hex[k..k + 4], 16).unwrap())
            .collect();
        assert_eq!(
            String::from_utf16(&units).unwrap(),
            b["text"].as_str().unwrap()
        );
    }
    let body: Value = serde_json::from_str(
        &v1(format!(
            "read_sms?access_token={t}&folder=inbox&idfrom=99999999"
        ))
        .await,
    )
    .unwrap();
    assert_eq!(body["result"], "No data to display");
    // Send, then follow the id through outbox and sentitems.
    let sent = v1(format!(
        "send_sms?access_token={t}&to=%2B48500100200&message=hello%20v1"
    ))
    .await;
    let id: u64 = sent
        .trim()
        .strip_prefix("OK; ID=[")
        .and_then(|s| s.strip_suffix(']'))
        .unwrap()
        .parse()
        .unwrap();
    let q =
        |folder: &str| format!("read_sms?access_token={t}&folder={folder}&idfrom={id}&idto={id}");
    let out: Value = serde_json::from_str(&v1(q("outbox")).await).unwrap();
    assert_eq!(out["result"][0]["Status"], "Reserved");
    assert_eq!(out["result"][0]["TextDecoded"], "hello v1");
    assert_eq!(
        v1(format!("get_queue_length?access_token={t}"))
            .await
            .trim(),
        "1"
    );
    h.advance_clock(10.0);
    let sent: Value = serde_json::from_str(&v1(q("sentitems")).await).unwrap();
    assert_eq!(sent["result"][0]["ID"], id.to_string());
    assert_eq!(
        v1(format!("get_queue_length?access_token={t}"))
            .await
            .trim(),
        "0"
    );
    let n: usize = v1(format!("get_inbox_length?access_token={t}"))
        .await
        .trim()
        .parse()
        .unwrap();
    let truth = h.truth(Some("acct-0"));
    let inbox = truth["accounts"][0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["folder"] == "inbox")
        .count();
    assert_eq!(n, inbox);
    assert_eq!(
        h.stats().accounts["acct-0"].lookups_by_id[&id.to_string()],
        2
    );
    h.shutdown().await;
}
