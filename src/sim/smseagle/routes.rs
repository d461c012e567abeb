//! HTTP handlers.

use super::*;

type S = Arc<SmsEagleSim>;

#[derive(Deserialize)]
struct SendBody {
    to: Option<Vec<String>>,
    text: Option<String>,
    validity: Option<String>,
}

pub(super) async fn send_sms(State(sim): State<S>, headers: HeaderMap, body: Bytes) -> Response {
    let i = match sim.auth(&headers) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let req: SendBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return wrong_params(&format!("invalid JSON body ({e})")),
    };
    let to = req.to.unwrap_or_default();
    let Some(text) = req.text.filter(|t| !t.is_empty()) else {
        return wrong_params("text is required");
    };
    if to.is_empty() {
        return wrong_params("to must list at least one number");
    }
    let validity: &'static str = match req.validity.as_deref() {
        None => "max",
        Some(v) => match ["5m", "10m", "30m", "1h", "max"]
            .into_iter()
            .find(|x| *x == v)
        {
            Some(x) => x,
            None => return wrong_params("validity must be 5m|10m|30m|1h|max"),
        },
    };
    let now = sim.h.clock.now_ms();
    let Ok(mut d) = sim.devices[i].write() else {
        return wrong_params("device store unavailable");
    };
    let out: Vec<Value> = to
        .into_iter()
        .map(|number| {
            let valid = number.len() >= 3
                && number
                    .chars()
                    .enumerate()
                    .all(|(k, c)| c.is_ascii_digit() || (k == 0 && c == '+'));
            if !valid {
                return json!({"status": "error", "message": "Invalid phone number", "number": number});
            }
            let id = sim.with_rng(|r| d.send(r, &sim.h.config, number.clone(), text.clone(), validity, now));
            json!({"status": "queued", "message": "OK", "number": number, "id": id})
        })
        .collect();
    json(StatusCode::OK, &out)
}

fn num_param(q: &Query, names: &[&str]) -> Result<Option<u64>, Response> {
    match q.get(names) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .map(Some)
            .map_err(|_| wrong_params(&format!("{} must be a non-negative integer", names[0]))),
    }
}

fn date_param(q: &Query, names: &[&str]) -> Result<Option<i64>, Response> {
    match q.get(names) {
        None | Some("") => Ok(None),
        Some(v) => parse_date(v).map(Some).ok_or_else(|| {
            wrong_params(&format!("{} must be YYYYmmDDHHMMSS or ISO-8601", names[0]))
        }),
    }
}

fn normalize_folder(f: &str) -> Option<&'static str> {
    Some(match f {
        "inbox" => "inbox",
        "outbox" => "outbox",
        "sentitems" | "sent" => "sentitems",
        "error" => "error",
        _ => return None,
    })
}

fn unknown_folder(f: &str) -> Response {
    json(
        StatusCode::NOT_FOUND,
        &json!({"status": "error", "message": format!("Unknown folder '{f}'")}),
    )
}

/// `error` is a view over sent messages that failed.
fn in_folder(folder: &str, m: &Sms, v: &View) -> bool {
    match folder {
        "error" => {
            !m.inbound && matches!(v.status, St::SendingError | St::Error | St::DeliveryFailed)
        }
        f => v.folder == f,
    }
}

fn not_found() -> Response {
    json(
        StatusCode::NOT_FOUND,
        &json!({"status": "error", "message": "Message not found"}),
    )
}

/// `GET /api/v2/messages/{folder}/{id}` (path shape unverified, [U]).
pub(super) async fn read_one(
    State(sim): State<S>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let i = match sim.auth(&headers) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let (folder, id) = path.map(|Path(p)| p).unwrap_or_default();
    let Some(folder) = normalize_folder(&folder) else {
        return unknown_folder(&folder);
    };
    let Ok(id) = id.parse::<u64>() else {
        return wrong_params("id must be a non-negative integer");
    };
    sim.h
        .stats
        .record_lookup(&format!("acct-{i}"), &id.to_string());
    let now = sim.h.clock.now_ms();
    let Ok(d) = sim.devices[i].read() else {
        return wrong_params("device store unavailable");
    };
    let inbound = folder == "inbox";
    d.messages
        .iter()
        .find(|m| m.id == id && m.inbound == inbound && in_folder(folder, m, &m.view(now)))
        .map(|m| json(StatusCode::OK, &sim.render(m, now)))
        .unwrap_or_else(not_found)
}

/// `DELETE /api/v2/messages/{folder}/{id}`: the row disappears (a deletion
/// the sync must tolerate); listed in truth as deleted.
pub(super) async fn delete_one(
    State(sim): State<S>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let i = match sim.auth(&headers) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let (folder, id) = path.map(|Path(p)| p).unwrap_or_default();
    let Some(folder) = normalize_folder(&folder) else {
        return unknown_folder(&folder);
    };
    let Ok(id) = id.parse::<u64>() else {
        return wrong_params("id must be a non-negative integer");
    };
    let now = sim.h.clock.now_ms();
    let Ok(mut d) = sim.devices[i].write() else {
        return wrong_params("device store unavailable");
    };
    let inbound = folder == "inbox";
    let Some(pos) = d
        .messages
        .iter()
        .position(|m| m.id == id && m.inbound == inbound && in_folder(folder, m, &m.view(now)))
    else {
        return not_found();
    };
    d.messages.remove(pos);
    d.deleted.push(json!({"folder": folder, "id": id}));
    json(
        StatusCode::OK,
        &json!({"status": "success", "message": "Message deleted", "id": id}),
    )
}

pub(super) async fn read_folder(
    State(sim): State<S>,
    headers: HeaderMap,
    folder: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Response {
    let i = match sim.auth(&headers) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let folder = folder.map(|Path(f)| f).unwrap_or_default();
    let Some(folder) = normalize_folder(&folder) else {
        return unknown_folder(&folder);
    };
    let q = Query::parse(raw.as_deref());
    let parsed = (|| {
        Ok::<_, Response>((
            num_param(&q, &["id_from", "idfrom"])?,
            num_param(&q, &["id_to", "idto"])?,
            date_param(&q, &["date_from", "datefrom"])?,
            date_param(&q, &["date_to", "dateto"])?,
            date_param(&q, &["updated_from"])?,
            num_param(&q, &["limit"])?,
            num_param(&q, &["offset"])?,
            num_param(&q, &["unread"])?,
        ))
    })();
    let (id_from, id_to, date_from, date_to, updated_from, limit, offset, unread) = match parsed {
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
    let now = sim.h.clock.now_ms();
    let Ok(d) = sim.devices[i].read() else {
        return wrong_params("device store unavailable");
    };
    let mut rows: Vec<&Sms> = d
        .messages
        .iter()
        .filter(|m| {
            let v = m.view(now);
            let in_folder = in_folder(folder, m, &v);
            in_folder
                && id_from.is_none_or(|x| m.id >= x)
                && id_to.is_none_or(|x| m.id <= x)
                && date_from.is_none_or(|x| m.created_ms >= x)
                && date_to.is_none_or(|x| m.created_ms <= x)
                && updated_from.is_none_or(|x| v.updated_ms >= x)
                && (unread != Some(1) || (m.inbound && !m.read))
        })
        .collect();
    rows.sort_by_key(|m| m.id);
    let rows: Vec<Value> = rows
        .into_iter()
        .skip(offset.unwrap_or(0) as usize)
        .take(limit.map(|l| l as usize).unwrap_or(usize::MAX))
        .map(|m| sim.render(m, now))
        .collect();
    json(StatusCode::OK, &rows)
}
