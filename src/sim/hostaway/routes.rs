//! HTTP handlers.

use super::*;

type S = Arc<HostawaySim>;

/// `includeResources=1`: conversations carry their `Reservation`.
fn include_resources(q: &Query) -> bool {
    q.get(&["includeResources"]) == Some("1")
}

fn usize_param(q: &Query, name: &str, default: usize) -> Result<usize, Response> {
    match q.get(&[name]) {
        None | Some("") => Ok(default),
        Some(v) => v.parse().map_err(|_| {
            fail(
                StatusCode::BAD_REQUEST,
                &format!("Invalid value for {name}"),
            )
        }),
    }
}

pub(super) async fn reservations(
    State(sim): State<S>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let i = match sim.admit(&headers, peer) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let q = Query::parse(raw.as_deref());
    let (limit, offset) = match (usize_param(&q, "limit", 100), usize_param(&q, "offset", 0)) {
        (Ok(l), Ok(o)) => (l, o),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let after_id = match q.get(&["afterId"]).map(str::parse::<u64>) {
        None => None,
        Some(Ok(x)) => Some(x),
        Some(Err(_)) => return fail(StatusCode::BAD_REQUEST, "Invalid value for afterId"),
    };
    let Ok(a) = sim.accounts[i].read() else {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, "store unavailable");
    };
    let mut rows: Vec<&Reservation> = a
        .reservations
        .iter()
        .filter(|r| !r.deleted && !r.inquiry)
        .collect();
    if let Some(v) = q.get(&["isArchived"]) {
        let want = v == "1" || v == "true";
        rows.retain(|r| r.archived == want);
    }
    // latestActivityStart/End: `YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS`, inclusive.
    for (name, is_start) in [("latestActivityStart", true), ("latestActivityEnd", false)] {
        if let Some(v) = q.get(&[name]) {
            let Some(ms) = parse_day_or_time(v, is_start) else {
                return fail(
                    StatusCode::BAD_REQUEST,
                    &format!("Invalid value for {name}"),
                );
            };
            rows.retain(|r| {
                if is_start {
                    r.latest_activity() >= ms
                } else {
                    r.latest_activity() <= ms
                }
            });
        }
    }
    let sort = q.get(&["sortOrder"]).unwrap_or("updatedOnDesc");
    let key = |r: &Reservation| -> i64 {
        match sort {
            "arrivalDate" | "arrivalDateDesc" => r.arrival_ms,
            "latestActivity" | "latestActivityDesc" => r.latest_activity(),
            _ => r.updated_ms,
        }
    };
    let asc = matches!(sort, "updatedOn" | "arrivalDate" | "latestActivity");
    if !matches!(
        sort,
        "updatedOn"
            | "updatedOnDesc"
            | "arrivalDate"
            | "arrivalDateDesc"
            | "latestActivity"
            | "latestActivityDesc"
    ) {
        return fail(StatusCode::BAD_REQUEST, "Invalid sortOrder");
    }
    rows.sort_by(|x, y| {
        let o = key(x).cmp(&key(y)).then(x.id.cmp(&y.id));
        if asc {
            o
        } else {
            o.reverse()
        }
    });
    let count = rows.len();
    // afterId is a keyset cursor over the active sort; offset is ignored then.
    let (start, offset_out) = match after_id {
        Some(id) => match rows.iter().position(|r| r.id == id) {
            Some(p) => (p + 1, 0),
            None => (count, 0),
        },
        None => (offset, offset),
    };
    let result: Vec<Value> = rows
        .iter()
        .skip(start)
        .take(limit)
        .map(|r| HostawaySim::reservation_json(&a, r))
        .collect();
    envelope(result, limit, offset_out, count)
}

pub(super) async fn conversations(
    State(sim): State<S>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let i = match sim.admit(&headers, peer) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let q = Query::parse(raw.as_deref());
    let (limit, offset) = match (usize_param(&q, "limit", 100), usize_param(&q, "offset", 0)) {
        (Ok(l), Ok(o)) => (l, o),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let Ok(a) = sim.accounts[i].read() else {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, "store unavailable");
    };
    let res_filter = q
        .get(&["reservationId"])
        .and_then(|v| v.parse::<u64>().ok());
    let mut rows = conversation_order(&a);
    if let Some(x) = res_filter {
        rows.retain(|r| r.reservation_id() == Some(x));
    }
    let resources = include_resources(&q);
    let count = rows.len();
    let result = rows
        .iter()
        .skip(offset)
        .take(limit)
        .map(|r| HostawaySim::conversation_view(&a, r, resources))
        .collect();
    envelope(result, limit, offset, count)
}

pub(super) async fn conversation_messages(
    State(sim): State<S>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let i = match sim.admit(&headers, peer) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let q = Query::parse(raw.as_deref());
    let (limit, offset) = match (usize_param(&q, "limit", 100), usize_param(&q, "offset", 0)) {
        (Ok(l), Ok(o)) => (l, o),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let scheduled = q.get(&["includeScheduledMessages"]) == Some("1");
    let Ok(a) = sim.accounts[i].read() else {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, "store unavailable");
    };
    let Some(r) = id
        .parse::<u64>()
        .ok()
        .and_then(|c| a.by_conv.get(&c))
        .map(|idx| &a.reservations[*idx])
        .filter(|r| !r.deleted)
    else {
        return fail(StatusCode::NOT_FOUND, "Conversation not found");
    };
    let msgs: Vec<&Msg> = r
        .messages
        .iter()
        .filter(|m| scheduled || m.status == "sent")
        .collect();
    let count = msgs.len();
    let result = msgs
        .iter()
        .skip(offset)
        .take(limit)
        .map(|m| HostawaySim::message_json(&a, r, m))
        .collect();
    envelope(result, limit, offset, count)
}

fn parse_day_or_time(v: &str, start_of_day: bool) -> Option<i64> {
    use chrono::{NaiveDate, NaiveDateTime};
    if let Ok(t) = NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S") {
        return Some(t.and_utc().timestamp_millis());
    }
    let d = NaiveDate::parse_from_str(v, "%Y-%m-%d").ok()?;
    let t = if start_of_day {
        d.and_hms_opt(0, 0, 0)?
    } else {
        d.and_hms_milli_opt(23, 59, 59, 999)?
    };
    Some(t.and_utc().timestamp_millis())
}

pub(super) async fn reservation(
    State(sim): State<S>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let i = match sim.admit(&headers, peer) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let Ok(a) = sim.accounts[i].read() else {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, "store unavailable");
    };
    match id
        .parse::<u64>()
        .ok()
        .and_then(|x| a.by_res.get(&x))
        .map(|idx| &a.reservations[*idx])
    {
        Some(r) if !r.deleted => json(
            StatusCode::OK,
            &json!({"status": "success", "result": HostawaySim::reservation_json(&a, r)}),
        ),
        _ => fail(StatusCode::NOT_FOUND, "Reservation not found"),
    }
}

pub(super) async fn reservation_conversations(
    State(sim): State<S>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let i = match sim.admit(&headers, peer) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let resources = include_resources(&Query::parse(raw.as_deref()));
    let Ok(a) = sim.accounts[i].read() else {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, "store unavailable");
    };
    match id
        .parse::<u64>()
        .ok()
        .and_then(|x| a.by_res.get(&x))
        .map(|idx| &a.reservations[*idx])
    {
        Some(r) if !r.deleted => envelope(
            vec![HostawaySim::conversation_view(&a, r, resources)],
            100,
            0,
            1,
        ),
        _ => fail(StatusCode::NOT_FOUND, "Reservation not found"),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendBody {
    body: Option<String>,
    communication_type: Option<String>,
}

/// `POST /v1/conversations/{id}/messages` with `{body, communicationType}`.
pub(super) async fn send_message(
    State(sim): State<S>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let i = match sim.admit(&headers, peer) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let req: SendBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return fail(StatusCode::BAD_REQUEST, &format!("Invalid JSON body: {e}")),
    };
    let Some(text) = req.body.filter(|b| !b.is_empty()) else {
        return fail(StatusCode::BAD_REQUEST, "body is required");
    };
    if let Some(t) = req.communication_type.as_deref() {
        if !["email", "channel", "sms", "whatsapp"].contains(&t) {
            return fail(StatusCode::BAD_REQUEST, "Invalid communicationType");
        }
    }
    let now = sim.h.clock.now_ms();
    let Ok(mut a) = sim.accounts[i].write() else {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, "store unavailable");
    };
    let Some(idx) = id
        .parse::<u64>()
        .ok()
        .and_then(|c| a.by_conv.get(&c).copied())
        .filter(|idx| !a.reservations[*idx].deleted)
    else {
        return fail(StatusCode::NOT_FOUND, "Conversation not found");
    };
    sim.with_rng(|r| a.add_message(r, idx, false, now));
    let r = &mut a.reservations[idx];
    if let Some(m) = r.messages.last_mut() {
        m.body = text;
        m.status = "sent";
    }
    if sim.webhook.is_active() {
        if let Some(body) = HostawaySim::message_event(&a, idx) {
            sim.webhook.enqueue(body);
        }
    }
    let r = &a.reservations[idx];
    match r.messages.last() {
        Some(m) => json(
            StatusCode::OK,
            &json!({"status": "success", "result": HostawaySim::message_json(&a, r, m)}),
        ),
        None => fail(StatusCode::INTERNAL_SERVER_ERROR, "store unavailable"),
    }
}

pub(super) async fn conversation(
    State(sim): State<S>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let i = match sim.admit(&headers, peer) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let resources = include_resources(&Query::parse(raw.as_deref()));
    let Ok(a) = sim.accounts[i].read() else {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, "store unavailable");
    };
    match id
        .parse::<u64>()
        .ok()
        .and_then(|c| a.by_conv.get(&c))
        .map(|idx| &a.reservations[*idx])
    {
        Some(r) if !r.deleted => json(
            StatusCode::OK,
            &json!({"status": "success",
                    "result": HostawaySim::conversation_view(&a, r, resources)}),
        ),
        _ => fail(StatusCode::NOT_FOUND, "Conversation not found"),
    }
}

/// The account a `client_id` names: `acct-N`, or `N` (the numeric `accountId`, written as
/// the API renders it), with the secret `sim-secret-acct-N` either way.
fn client_account(sim: &HostawaySim, client: &str, secret: Option<&str>) -> Option<usize> {
    let numeric = client
        .parse::<usize>()
        .ok()
        .filter(|i| i.to_string() == client);
    let (i, name) = match numeric {
        Some(i) => ((i < sim.accounts.len()).then_some(i)?, format!("acct-{i}")),
        None => (sim.account_index(client)?, client.to_string()),
    };
    (secret == Some(format!("sim-secret-{name}").as_str())).then_some(i)
}

/// Form body: grant_type=client_credentials&client_id=acct-N (or N)&client_secret=sim-secret-acct-N&scope=general
pub(super) async fn mint_token(State(sim): State<S>, body: Bytes) -> Response {
    let form = Query::parse(std::str::from_utf8(&body).ok());
    if form.get(&["grant_type"]) != Some("client_credentials") {
        return fail(
            StatusCode::BAD_REQUEST,
            "grant_type must be client_credentials",
        );
    }
    let client = form.get(&["client_id"]).unwrap_or("");
    let Some(i) = client_account(&sim, client, form.get(&["client_secret"])) else {
        return fail(StatusCode::FORBIDDEN, "Invalid client credentials");
    };
    let Ok(mut m) = sim.minted.write() else {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, "store unavailable");
    };
    // Checked under the minted lock, so `expire_token` revokes whatever got through.
    if sim.secret_refused(i) {
        return fail(
            StatusCode::FORBIDDEN,
            "Invalid client credentials: the client secret was revoked",
        );
    }
    let token = format!("sim-hostaway-jwt-{i}-{}", m.len() + 1);
    // Tokens become usable 1 s after issue, as Hostaway documents.
    m.insert(token.clone(), (i, sim.h.clock.now_ms() + 1000));
    json(
        StatusCode::OK,
        &json!({"token_type": "Bearer", "expires_in": 15_897_600, "access_token": token}),
    )
}

pub(super) async fn revoke_token(State(sim): State<S>, RawQuery(raw): RawQuery) -> Response {
    let q = Query::parse(raw.as_deref());
    let Some(t) = q.get(&["token"]) else {
        return fail(StatusCode::BAD_REQUEST, "token is required");
    };
    if let Ok(mut r) = sim.revoked.write() {
        r.insert(t.to_string());
    }
    json(
        StatusCode::OK,
        &json!({"status": "success", "result": null}),
    )
}
