//! HTTP handlers.

use super::*;

type S = Arc<FacebookSim>;

fn check_version(v: &str) -> Result<(), Response> {
    let ok = v
        .strip_prefix('v')
        .and_then(|r| r.strip_suffix(".0"))
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(graph_error(
            2500,
            None,
            &format!("Unknown path components: /{v}"),
            false,
        ))
    }
}

fn with_usage(mut r: Response, usage: Option<String>) -> Response {
    if let Some(u) = usage.and_then(|u| HeaderValue::from_str(&u).ok()) {
        r.headers_mut().insert("x-business-use-case-usage", u);
    }
    r
}

pub(super) async fn conversations(
    State(sim): State<S>,
    headers: HeaderMap,
    Path((version, page_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = Query::parse(raw.as_deref());
    if let Err(r) = check_version(&version) {
        return r;
    }
    let (i, usage) = match sim.admit(&headers, &q) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if page_id != format!("acct-{i}") {
        return no_object(&page_id);
    }
    let result = (|| {
        let fields = fields_param(&q, "id,updated_time")?;
        check_fields(&fields, CONV_FIELDS, "UnifiedThread")?;
        let limit = limit_param(&q, 25)?;
        // Graph lists one inbox at a time; Messenger is the default.
        let platform = match q.get(&["platform"]) {
            None => Platform::Messenger,
            Some(pl) => Platform::parse(pl).ok_or_else(|| {
                graph_error(
                    100,
                    None,
                    "(#100) platform must be one of {messenger, instagram}",
                    false,
                )
            })?,
        };
        let p = sim.pages[i].read().map_err(|_| no_object(&page_id))?;
        let user = q.get(&["user_id"]);
        let ids: Vec<&str> = p
            .order
            .iter()
            .map(|ci| &p.convs[*ci])
            .filter(|c| c.platform == platform)
            .filter(|c| user.is_none_or(|u| c.user_id == u))
            .map(|c| c.id.as_str())
            .collect();
        let w = window(&ids, &q, limit)?;
        let data: Vec<Value> = ids[w.start..w.end]
            .iter()
            .filter_map(|id| p.by_id.get(*id).map(|ci| &p.convs[*ci]))
            .filter(|c| !c.filtered)
            .map(|c| sim.conv_json(&p, c, &fields, &headers, &version))
            .collect();
        let mut body = json!({ "data": data });
        let pg = paging(
            &headers,
            &format!("/{version}/{page_id}/conversations"),
            &q,
            &ids,
            &w,
            limit,
        );
        if !pg.is_null() {
            body["paging"] = pg;
        }
        Ok(json(StatusCode::OK, &body))
    })();
    with_usage(result.unwrap_or_else(|r| r), usage)
}

pub(super) async fn node(
    State(sim): State<S>,
    headers: HeaderMap,
    Path((version, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = Query::parse(raw.as_deref());
    if let Err(r) = check_version(&version) {
        return r;
    }
    let (i, usage) = match sim.admit(&headers, &q) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let result = (|| {
        let p = sim.pages[i].read().map_err(|_| no_object(&id))?;
        if let Some(ci) = p.by_id.get(&id).copied().filter(|ci| !p.convs[*ci].deleted) {
            let fields = fields_param(&q, "id,updated_time")?;
            check_fields(&fields, CONV_FIELDS, "UnifiedThread")?;
            return Ok(json(
                StatusCode::OK,
                &sim.conv_json(&p, &p.convs[ci], &fields, &headers, &version),
            ));
        }
        if let Some((ci, mi)) = p
            .msg_index
            .get(&id)
            .copied()
            .filter(|(ci, _)| !p.convs[*ci].deleted)
        {
            let fields = fields_param(&q, "id,created_time")?;
            check_fields(&fields, MSG_FIELDS, "Message")?;
            let c = &p.convs[ci];
            // Only the newest `detail_window` messages can be read by id.
            if c.messages.len() - mi > sim.h.config.detail_window {
                return Err(graph_error(
                    100,
                    Some(2018278),
                    "(#100) This message has been deleted or is outside the readable window of the 20 most recent messages.",
                    false,
                ));
            }
            return Ok(json(
                StatusCode::OK,
                &sim.msg_json(&p, c, &c.messages[mi], &fields),
            ));
        }
        Err(no_object(&id))
    })();
    with_usage(result.unwrap_or_else(|r| r), usage)
}

pub(super) async fn messages(
    State(sim): State<S>,
    headers: HeaderMap,
    Path((version, conv_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = Query::parse(raw.as_deref());
    if let Err(r) = check_version(&version) {
        return r;
    }
    let (i, usage) = match sim.admit(&headers, &q) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let result = (|| {
        let fields = fields_param(&q, "id,created_time")?;
        check_fields(&fields, MSG_FIELDS, "Message")?;
        let limit = limit_param(&q, 25)?;
        let p = sim.pages[i].read().map_err(|_| no_object(&conv_id))?;
        let Some(ci) = p
            .by_id
            .get(&conv_id)
            .copied()
            .filter(|ci| !p.convs[*ci].deleted)
        else {
            return Err(no_object(&conv_id));
        };
        let c = &p.convs[ci];
        let ids: Vec<&str> = c.messages.iter().rev().map(|m| m.id.as_str()).collect();
        let w = window(&ids, &q, limit)?;
        let n = c.messages.len();
        let data: Vec<Value> = (w.start..w.end)
            .map(|k| sim.msg_json(&p, c, &c.messages[n - 1 - k], &fields))
            .collect();
        let mut body = json!({ "data": data });
        let pg = paging(
            &headers,
            &format!("/{version}/{conv_id}/messages"),
            &q,
            &ids,
            &w,
            limit,
        );
        if !pg.is_null() {
            body["paging"] = pg;
        }
        Ok(json(StatusCode::OK, &body))
    })();
    with_usage(result.unwrap_or_else(|r| r), usage)
}
