//! Pre-rendered JSON fragments. Every message and every conversation keeps
//! its own serialised `MessageDetail` / `ConversationDetail` object, rendered
//! when it changes; list and detail pages are then spliced together from
//! these fragments instead of escaping every string on every request.

use super::data::{AccountData, ConvStatus, ConvType, Media, Message, Thread};
use serde::Serialize;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MessageView<'a> {
    message_id: &'a str,
    created_date: &'a str,
    sender_username: &'a str,
    recipient_username: &'a str,
    subject: &'a str,
    message_body: &'a str,
    read_status: bool,
    #[serde(skip_serializing_if = "<[Media]>::is_empty")]
    message_media: &'a [Media],
}

/// Conversation fields except `latestMessage`, which is spliced in raw.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConversationHead<'a> {
    conversation_id: &'a str,
    conversation_status: ConvStatus,
    conversation_title: &'a str,
    conversation_type: ConvType,
    created_date: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference_type: Option<&'static str>,
    unread_count: u32,
}

fn to_string<T: Serialize>(v: &T) -> String {
    // Serialising these plain borrowed structs cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "{}".to_string())
}

pub fn message(a: &AccountData, t: &Thread, m: &Message) -> String {
    let (sender, recipient) = a.parties(t, m);
    to_string(&MessageView {
        message_id: &m.id,
        created_date: &m.created,
        sender_username: sender,
        recipient_username: recipient,
        subject: &m.subject,
        message_body: &m.body,
        read_status: m.read,
        message_media: &m.media,
    })
}

/// `latest` is the already rendered fragment of the thread's last message.
pub fn conversation(t: &Thread, latest: Option<&str>) -> String {
    let mut s = to_string(&ConversationHead {
        conversation_id: &t.id,
        conversation_status: t.status,
        conversation_title: &t.title,
        conversation_type: t.ctype,
        created_date: &t.created,
        reference_id: t.reference_id.as_deref(),
        reference_type: t.reference_id.as_ref().map(|_| "LISTING"),
        unread_count: t.unread,
    });
    if let Some(latest) = latest {
        s.pop(); // closing brace
        s.push_str(",\"latestMessage\":");
        s.push_str(latest);
        s.push('}');
    }
    s
}

/// Builds a page object field by field: `{"a":...,"b":[frag,frag],...}`.
pub struct PageWriter {
    out: Vec<u8>,
    first: bool,
}

impl PageWriter {
    pub fn new(capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity);
        out.push(b'{');
        Self { out, first: true }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    pub fn value<T: Serialize + ?Sized>(&mut self, k: &str, v: &T) {
        self.key(k);
        if serde_json::to_writer(&mut self.out, v).is_err() {
            self.out.extend_from_slice(b"null");
        }
    }

    pub fn opt(&mut self, k: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.value(k, v);
        }
    }

    pub fn fragments<'a>(&mut self, k: &str, frags: impl Iterator<Item = &'a str>) {
        self.key(k);
        self.out.push(b'[');
        for (i, f) in frags.enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.out.extend_from_slice(f.as_bytes());
        }
        self.out.push(b']');
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.out.push(b'}');
        self.out
    }
}
