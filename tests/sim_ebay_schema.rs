//! Validates real eBay-simulator responses against the response schemas of
//! eBay's OpenAPI file, vendored as tests/fixtures/ebay-commerce-message-v1.oas3.json.
//!
//! The published schemas list no required fields and allow extra properties,
//! so on their own they would accept almost anything. The test therefore
//! also runs a strict variant (`additionalProperties: false` on every object)
//! which catches misspelled or invented fields, e.g. `senderUsername` in the
//! send response where eBay uses `senderUserName`.

use reqwest::Client;
use serde_json::{json, Value};
use std::path::PathBuf;
use threadsync::sim::{self, SimConfig};

/// The vendored spec; a missing or unreadable file fails the test.
fn load_spec() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ebay-commerce-message-v1.oas3.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Recursively forbid unknown properties on object schemas.
fn strict(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.contains_key("properties") {
                map.insert("additionalProperties".into(), json!(false));
            }
            for (_, child) in map.iter_mut() {
                strict(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strict),
        _ => {}
    }
}

struct Schemas {
    components: Value,
    strict_components: Value,
}

impl Schemas {
    fn new(spec: &Value) -> Self {
        let mut errors_wrapper = spec["components"].clone();
        errors_wrapper["schemas"]["ErrorResponse"] = json!({
            "type": "object",
            "required": ["errors"],
            "properties": {"errors": {"type": "array", "minItems": 1,
                                      "items": {"$ref": "#/components/schemas/Error"}}}
        });
        let mut strict_components = errors_wrapper.clone();
        strict(&mut strict_components);
        Self {
            components: errors_wrapper,
            strict_components,
        }
    }

    fn check(&self, name: &str, instance: &Value) -> Vec<String> {
        let mut problems = Vec::new();
        for (label, comps) in [
            ("spec", &self.components),
            ("strict", &self.strict_components),
        ] {
            let schema = json!({
                "$ref": format!("#/components/schemas/{name}"),
                "components": comps,
            });
            let validator = jsonschema::draft202012::new(&schema).expect("schema compiles");
            for e in validator.iter_errors(instance) {
                problems.push(format!("[{label}] {name} at {}: {e}", e.instance_path));
            }
        }
        problems
    }

    fn assert_valid(&self, name: &str, instance: &Value) {
        let problems = self.check(name, instance);
        assert!(problems.is_empty(), "{problems:#?}\ninstance: {instance}");
    }
}

#[tokio::test]
async fn responses_match_the_published_schemas() {
    let spec = load_spec();
    let schemas = Schemas::new(&spec);
    let h = sim::start(SimConfig {
        threads: 80,
        messages: 25,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let c = Client::new();
    let t = h.token("acct-0");
    let base = format!("{}/commerce/message/v1", h.base_url());

    for (ctype, offsets) in [("FROM_MEMBERS", &[0, 25][..]), ("FROM_EBAY", &[0][..])] {
        for offset in offsets {
            let v: Value = c
                .get(format!(
                    "{base}/conversation?conversation_type={ctype}&offset={offset}"
                ))
                .bearer_auth(&t)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(!v["conversations"].as_array().unwrap().is_empty());
            schemas.assert_valid("GetAllMyConversationsResponse", &v);
        }
    }

    // Detail of a thread with media, so MessageMedia is exercised too.
    let truth = h.truth(Some("acct-0"));
    let with_media = truth["accounts"][0]["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| {
            t["messages"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| !m["messageMedia"].as_array().unwrap().is_empty())
        })
        .expect("some message has media");
    let r = c
        .get(format!(
            "{base}/conversation/{}?conversation_type={}&limit=50",
            with_media["conversationId"].as_str().unwrap(),
            with_media["conversationType"].as_str().unwrap()
        ))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let detail: Value = r.json().await.unwrap();
    schemas.assert_valid("GetMessagesByConversationIdResponse", &detail);

    let sent: Value = c
        .post(format!("{base}/send_message"))
        .bearer_auth(&t)
        .json(
            &json!({"otherPartyUsername": "buyer_schema", "messageText": "hi",
                      "messageMedia": [{"mediaName": "a.pdf", "mediaType": "PDF",
                                        "mediaUrl": "https://x.test/a.pdf"}]}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    schemas.assert_valid("SendMessageResponse", &sent);

    let bulk: Value = c
        .post(format!("{base}/bulk_update_conversation"))
        .bearer_auth(&t)
        .json(
            &json!({"conversations": [{"conversationId": with_media["conversationId"],
            "conversationType": with_media["conversationType"], "conversationStatus": "ARCHIVE"}]}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    schemas.assert_valid("BulkUpdateConversationsResponse", &bulk);

    for url in [
        format!("{base}/conversation"),
        format!("{base}/conversation?conversation_type=FROM_MEMBERS&limit=99"),
        format!("{base}/conversation/missing?conversation_type=FROM_MEMBERS"),
    ] {
        let v: Value = c
            .get(&url)
            .bearer_auth(&t)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        schemas.assert_valid("ErrorResponse", &v);
    }
    let unauth: Value = c
        .get(format!(
            "{base}/conversation?conversation_type=FROM_MEMBERS"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    schemas.assert_valid("ErrorResponse", &unauth);

    // The strict check is not vacuous: MessageDetail casing in a send
    // response, or a string total, is rejected.
    let mut wrong = sent.clone();
    let sender = wrong["senderUserName"].take();
    wrong["senderUsername"] = sender;
    if let Some(o) = wrong.as_object_mut() {
        o.remove("senderUserName");
    }
    assert!(!schemas.check("SendMessageResponse", &wrong).is_empty());
    let mut wrong_total = detail.clone();
    wrong_total["total"] = json!("61");
    assert!(!schemas
        .check("GetMessagesByConversationIdResponse", &wrong_total)
        .is_empty());
    h.shutdown().await;
}
