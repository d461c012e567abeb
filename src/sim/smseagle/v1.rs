//! SMSEagle API v1 (`/http_api/...`), the documented legacy API: token in
//! the `access_token` query parameter, Gammu column names, dates in
//! `YYYYmmDDHHMMSS`, and errors reported inside HTTP 200 bodies:
//! `{"result":{"error_text":"Invalid access token","status":"error"}}`.
//! Which responses are JSON vs plain text for `responsetype=simple` is
//! unverified; here every read is JSON and `simple` only changes send and
//! length answers to the manual's `OK; ID=[N]` / bare number text.

use super::*;

fn v1_error(text: &str) -> Response {
    json(
        StatusCode::OK,
        &json!({"result": {"error_text": text, "status": "error"}}),
    )
}

fn text_response(body: String) -> Response {
    let mut r = Response::new(axum::body::Body::from(body));
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn v1_auth(sim: &SmsEagleSim, q: &Query) -> Result<usize, Response> {
    sim.token_index(q.get(&["access_token"]).unwrap_or(""))
        .ok_or_else(|| v1_error("Invalid access token"))
}

/// Gammu stores `Text` as hex of UCS-2 (UTF-16BE) code units.
fn ucs2_hex(s: &str) -> String {
    s.encode_utf16().map(|u| format!("{u:04X}")).collect()
}

fn v1_date(q: &Query, name: &str) -> Result<Option<i64>, Response> {
    match q.get(&[name]) {
        None | Some("") => Ok(None),
        Some(v) => NaiveDateTime::parse_from_str(v, "%Y%m%d%H%M%S")
            .map(|t| Some(t.and_utc().timestamp_millis()))
            .map_err(|_| v1_error("Wrong parameters")),
    }
}

fn v1_num(q: &Query, name: &str) -> Result<Option<u64>, Response> {
    match q.get(&[name]) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| v1_error("Wrong parameters")),
    }
}

/// One row with the Gammu column names of its table.
fn row(m: &Sms, now: i64) -> Value {
    let v = m.view(now);
    let date = fmt_date(m.created_ms);
    match v.folder {
        "inbox" => json!({
            "ID": m.id.to_string(), "UpdatedInDB": date, "ReceivingDateTime": date,
            "Text": ucs2_hex(&m.text), "TextDecoded": m.text, "SenderNumber": m.number,
            "Coding": "Default_No_Compression", "UDH": "", "SMSCNumber": "+48790998250",
            "Class": "-1", "RecipientID": "smseagle1", "Processed": "true", "id_folder": "1",
            "readed": if m.read { "true" } else { "false" }, "oid": "", "Status": "0",
        }),
        "outbox" => json!({
            "ID": m.id.to_string(), "UpdatedInDB": date, "InsertIntoDB": date,
            "SendingDateTime": date, "Text": ucs2_hex(&m.text), "TextDecoded": m.text,
            "DestinationNumber": m.number, "Coding": "Default_No_Compression", "UDH": "",
            "Class": "-1", "MultiPart": "false", "RelativeValidity": "255",
            "SenderID": "smseagle1", "DeliveryReport": "default", "CreatorID": "",
            "Status": St::Reserved.name(StatusStyle::Gammu),
        }),
        _ => json!({
            "ID": m.id.to_string(), "UpdatedInDB": fmt_date(v.updated_ms), "InsertIntoDB": date,
            "SendingDateTime": fmt_date(m.pickup_ms),
            "DeliveryDateTime": v.delivery_ms.map(fmt_date),
            "Text": ucs2_hex(&m.text), "TextDecoded": m.text, "DestinationNumber": m.number,
            "Coding": "Default_No_Compression", "UDH": "", "SMSCNumber": "+48790998250",
            "Class": "-1", "SenderID": "smseagle1", "SequencePosition": "1",
            // v1 always shows the Gammu spelling.
            "Status": v.status.name(StatusStyle::Gammu), "StatusError": "-1",
            "TPMR": (m.id % 256).to_string(), "RelativeValidity": "255", "CreatorID": "",
            "id_folder": "3", "StatusCode": "-1",
        }),
    }
}

/// `GET /http_api/read_sms?access_token=&folder=inbox|outbox|sentitems&idfrom=&idto=&from=&to=&datefrom=&dateto=&limit=&unread=1`
pub(super) async fn read_sms(
    State(sim): State<Arc<SmsEagleSim>>,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = Query::parse(raw.as_deref());
    let i = match v1_auth(&sim, &q) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let folder = match q.get(&["folder"]) {
        Some(f @ ("inbox" | "outbox" | "sentitems")) => f,
        _ => return v1_error("Wrong parameters"),
    };
    let parsed = (|| {
        Ok::<_, Response>((
            v1_num(&q, "idfrom")?,
            v1_num(&q, "idto")?,
            v1_date(&q, "datefrom")?,
            v1_date(&q, "dateto")?,
            v1_num(&q, "limit")?,
            v1_num(&q, "unread")?,
        ))
    })();
    let (id_from, id_to, date_from, date_to, limit, unread) = match parsed {
        Ok(p) => p,
        Err(r) => return r,
    };
    if let (Some(a), Some(b)) = (id_from, id_to) {
        if a == b {
            sim.h
                .stats
                .record_lookup(&format!("acct-{i}"), &a.to_string());
        }
    }
    let (from, to) = (q.get(&["from"]), q.get(&["to"]));
    let now = sim.h.clock.now_ms();
    let Ok(d) = sim.devices[i].read() else {
        return v1_error("Device store unavailable");
    };
    let mut rows: Vec<&Sms> = d
        .messages
        .iter()
        .filter(|m| {
            m.view(now).folder == folder
                && id_from.is_none_or(|x| m.id >= x)
                && id_to.is_none_or(|x| m.id <= x)
                && date_from.is_none_or(|x| m.created_ms >= x)
                && date_to.is_none_or(|x| m.created_ms <= x)
                && (unread != Some(1) || (m.inbound && !m.read))
                && from.is_none_or(|f| !m.inbound || m.number == f)
                && to.is_none_or(|t| m.inbound || m.number == t)
        })
        .collect();
    rows.sort_by_key(|m| m.id);
    let rows: Vec<Value> = rows
        .into_iter()
        .take(limit.map(|l| l as usize).unwrap_or(usize::MAX))
        .map(|m| row(m, now))
        .collect();
    if rows.is_empty() {
        return json(StatusCode::OK, &json!({"result": "No data to display"}));
    }
    json(StatusCode::OK, &json!({ "result": rows }))
}

/// `GET /http_api/send_sms?access_token=&to=N[,N...]&message=...[&responsetype=extended]`
pub(super) async fn send_sms_v1(
    State(sim): State<Arc<SmsEagleSim>>,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = Query::parse(raw.as_deref());
    let i = match v1_auth(&sim, &q) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let (Some(to), Some(text)) = (q.get(&["to"]), q.get(&["message"])) else {
        return v1_error("Wrong parameters");
    };
    let numbers: Vec<&str> = to
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let valid = |n: &str| {
        n.len() >= 3
            && n.chars()
                .enumerate()
                .all(|(k, c)| c.is_ascii_digit() || (k == 0 && c == '+'))
    };
    if text.is_empty() || numbers.is_empty() || !numbers.iter().all(|n| valid(n)) {
        return v1_error("Wrong parameters");
    }
    let now = sim.h.clock.now_ms();
    let Ok(mut d) = sim.devices[i].write() else {
        return v1_error("Device store unavailable");
    };
    let ids: Vec<u64> = numbers
        .iter()
        .map(|n| {
            sim.with_rng(|r| {
                d.send(
                    r,
                    &sim.h.config,
                    n.to_string(),
                    text.to_string(),
                    "max",
                    now,
                )
            })
        })
        .collect();
    if q.get(&["responsetype"]) == Some("extended") {
        let first = ids.first().copied().unwrap_or_default();
        json(
            StatusCode::OK,
            &json!({"result": {"message_id": first.to_string(), "status": "ok"}}),
        )
    } else {
        text_response(
            ids.iter()
                .map(|id| format!("OK; ID=[{id}]"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }
}

/// `get_inbox_length`, `get_outbox_length` / `get_queue_length`, `get_sentitems_length`.
async fn folder_length(sim: Arc<SmsEagleSim>, raw: Option<String>, folder: &str) -> Response {
    let q = Query::parse(raw.as_deref());
    let i = match v1_auth(&sim, &q) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let now = sim.h.clock.now_ms();
    let Ok(d) = sim.devices[i].read() else {
        return v1_error("Device store unavailable");
    };
    let n = d
        .messages
        .iter()
        .filter(|m| m.view(now).folder == folder)
        .count();
    if q.get(&["responsetype"]) == Some("extended") {
        json(StatusCode::OK, &json!({ "result": n }))
    } else {
        text_response(n.to_string())
    }
}

pub(super) async fn inbox_length(
    State(sim): State<Arc<SmsEagleSim>>,
    RawQuery(raw): RawQuery,
) -> Response {
    folder_length(sim, raw, "inbox").await
}

pub(super) async fn outbox_length(
    State(sim): State<Arc<SmsEagleSim>>,
    RawQuery(raw): RawQuery,
) -> Response {
    folder_length(sim, raw, "outbox").await
}

pub(super) async fn sentitems_length(
    State(sim): State<Arc<SmsEagleSim>>,
    RawQuery(raw): RawQuery,
) -> Response {
    folder_length(sim, raw, "sentitems").await
}
