//! eBay dataset: deterministic generation from the seed, the per-account
//! store with recency-ordered indexes, and mutations that keep them sorted.

use super::render;
use crate::sim::clock::iso_ms;
use crate::sim::faults::mix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::HashMap;

/// Seed data ends at 2026-01-01T00:00:00Z so the same seed always gives the
/// same timestamps; live mutations use the simulated clock.
pub const ANCHOR_MS: i64 = 1_767_225_600_000;
const DAY_MS: i64 = 86_400_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ConvType {
    #[serde(rename = "FROM_MEMBERS")]
    FromMembers,
    #[serde(rename = "FROM_EBAY")]
    FromEbay,
}

impl ConvType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "FROM_MEMBERS" => Some(Self::FromMembers),
            "FROM_EBAY" => Some(Self::FromEbay),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FromMembers => "FROM_MEMBERS",
            Self::FromEbay => "FROM_EBAY",
        }
    }
    pub fn slot(self) -> usize {
        match self {
            Self::FromMembers => 0,
            Self::FromEbay => 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ConvStatus {
    #[serde(rename = "ACTIVE")]
    Active,
    #[serde(rename = "ARCHIVE")]
    Archive,
    #[serde(rename = "DELETE")]
    Delete,
}

impl ConvStatus {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ACTIVE" => Some(Self::Active),
            "ARCHIVE" => Some(Self::Archive),
            "DELETE" => Some(Self::Delete),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Archive => "ARCHIVE",
            Self::Delete => "DELETE",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Media {
    pub media_name: String,
    pub media_type: &'static str,
    pub media_url: String,
}

#[derive(Clone, Debug)]
pub struct Message {
    pub id: String,
    pub created_ms: i64,
    pub created: String,
    /// Buyer (or eBay) -> seller.
    pub inbound: bool,
    pub subject: String,
    pub body: String,
    pub read: bool,
    pub media: Vec<Media>,
    /// Rendered `MessageDetail` JSON (see render.rs).
    pub json: String,
}

#[derive(Clone, Debug)]
pub struct Thread {
    pub id: String,
    pub ctype: ConvType,
    pub status: ConvStatus,
    pub title: String,
    pub created: String,
    /// The other party: a buyer username, or "eBay".
    pub other: String,
    pub other_uid: String,
    pub reference_id: Option<String>,
    /// Ascending by createdDate.
    pub messages: Vec<Message>,
    pub unread: u32,
    pub deleted: bool,
    /// Rendered `ConversationDetail` JSON including `latestMessage`.
    pub json: String,
}

impl Thread {
    pub fn latest_ms(&self) -> i64 {
        self.messages.last().map(|m| m.created_ms).unwrap_or(0)
    }
    pub fn latest(&self) -> Option<&Message> {
        self.messages.last()
    }
    fn recount_unread(&mut self) {
        self.unread = self
            .messages
            .iter()
            .filter(|m| m.inbound && !m.read)
            .count() as u32;
    }
}

/// Generation switches that change what clients see.
#[derive(Clone, Copy, Debug, Default)]
pub struct DataOptions {
    /// Show opaque immutable user ids instead of usernames (eBay's
    /// username -> user id migration).
    pub user_ids: bool,
    /// Truncate timestamps to whole seconds, producing ties.
    pub second_resolution: bool,
}

/// Stable opaque id for a username (FNV-1a).
pub fn user_id(name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("u{h:016x}")
}

pub struct AccountData {
    pub name: String,
    pub seller: String,
    pub seller_uid: String,
    pub opts: DataOptions,
    pub threads: Vec<Thread>,
    pub by_id: HashMap<String, usize>,
    /// Live thread indexes per conversation type, latest message desc, ties by id.
    pub order: [Vec<usize>; 2],
    pub deleted_ids: Vec<String>,
    acct_no: usize,
    next_thread: u64,
    next_msg: u64,
}

const BUYER_LINES: &[&str] = &[
    "Hi, is this item still available?",
    "Can you combine shipping if I buy two?",
    "When will my order ship?",
    "The package has not arrived yet, can you check tracking?",
    "Would you accept a lower offer?",
    "Does it come with the original box?",
    "Item arrived damaged, what can we do?",
    "Thanks, received it today. Great seller!",
];
const SELLER_LINES: &[&str] = &[
    "Yes, it is still available.",
    "Shipped today, tracking is uploaded.",
    "I can combine shipping, please add both to the cart.",
    "Sorry to hear that, I will open a return for you.",
    "Thanks for your purchase!",
    "Let me check and get back to you.",
];
const EBAY_LINES: &[&str] = &[
    "Your item sold. Ship it by the date shown.",
    "A buyer opened a return request.",
    "Your payout has been sent.",
    "Policy reminder: keep communication on eBay.",
];

/// Thread size: exponential around `mean`, at least one message, so most
/// threads are short and a few need several 50-message pages.
fn thread_size(rng: &mut ChaCha8Rng, mean: usize) -> usize {
    let u: f64 = rng.gen_range(f64::EPSILON..1.0);
    ((-u.ln() * mean.max(1) as f64).round() as usize).max(1)
}

impl AccountData {
    pub fn generate(
        seed: u64,
        acct_no: usize,
        threads: usize,
        mean: usize,
        opts: DataOptions,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, acct_no as u64 + 1));
        let seller = format!("seller_{acct_no}");
        let mut a = AccountData {
            name: format!("acct-{acct_no}"),
            seller_uid: user_id(&seller),
            seller,
            opts,
            threads: Vec::with_capacity(threads),
            by_id: HashMap::with_capacity(threads),
            order: [Vec::new(), Vec::new()],
            deleted_ids: Vec::new(),
            acct_no,
            next_thread: 0,
            next_msg: 0,
        };
        for _ in 0..threads {
            let ctype = if rng.gen_bool(0.1) {
                ConvType::FromEbay
            } else {
                ConvType::FromMembers
            };
            let start = ANCHOR_MS - rng.gen_range(DAY_MS..300 * DAY_MS);
            let n = thread_size(&mut rng, mean);
            let mut t = a.new_thread(&mut rng, ctype, start);
            let mut at = start;
            for k in 0..n {
                let inbound = ctype == ConvType::FromEbay || k == 0 || rng.gen_bool(0.55);
                let m = a.new_message(&mut rng, &t, inbound, at);
                t.messages.push(m);
                at += rng.gen_range(60_000..36 * 3_600_000);
            }
            // Older messages were read; inbound messages in a short tail may
            // still be unread (so unreadCount and the latest readStatus agree).
            let len = t.messages.len();
            let unread_tail = if rng.gen_bool(0.6) {
                0
            } else {
                rng.gen_range(1..=3)
            };
            for (k, m) in t.messages.iter_mut().enumerate() {
                m.read = !m.inbound || k + unread_tail < len;
            }
            t.recount_unread();
            let idx = a.threads.len();
            a.by_id.insert(t.id.clone(), idx);
            a.threads.push(t);
            a.rerender(idx, 0);
        }
        for slot in 0..2 {
            let mut ids: Vec<usize> = (0..a.threads.len())
                .filter(|i| a.threads[*i].ctype.slot() == slot)
                .collect();
            ids.sort_by(|x, y| a.cmp_recency(*x, *y));
            a.order[slot] = ids;
        }
        a
    }

    fn new_thread(&mut self, rng: &mut ChaCha8Rng, ctype: ConvType, created_ms: i64) -> Thread {
        self.next_thread += 1;
        let id = format!("{}{:03}{:07}", 1, self.acct_no % 1000, self.next_thread);
        let (other, title, reference_id) = match ctype {
            ConvType::FromEbay => ("eBay".to_string(), "Message from eBay".to_string(), None),
            ConvType::FromMembers => {
                let buyer = format!("buyer_{:05}", rng.gen_range(0..100_000));
                let item = rng.gen_range(100_000_000_000u64..400_000_000_000);
                let reference = rng.gen_bool(0.7).then(|| item.to_string());
                (buyer, format!("Item {item}"), reference)
            }
        };
        Thread {
            id,
            other_uid: if other == "eBay" {
                other.clone()
            } else {
                user_id(&other)
            },
            ctype,
            status: if rng.gen_bool(0.1) {
                ConvStatus::Archive
            } else {
                ConvStatus::Active
            },
            title,
            created: iso_ms(created_ms),
            other,
            reference_id,
            messages: Vec::new(),
            unread: 0,
            deleted: false,
            json: String::new(),
        }
    }

    fn new_message(&mut self, rng: &mut ChaCha8Rng, t: &Thread, inbound: bool, at: i64) -> Message {
        self.next_msg += 1;
        let at = if self.opts.second_resolution {
            at - at.rem_euclid(1000)
        } else {
            at
        };
        let lines = match (t.ctype, inbound) {
            (ConvType::FromEbay, _) => EBAY_LINES,
            (_, true) => BUYER_LINES,
            (_, false) => SELLER_LINES,
        };
        let media = if rng.gen_bool(0.05) {
            vec![Media {
                media_name: format!("photo_{}.jpg", self.next_msg),
                media_type: "IMAGE",
                media_url: format!("https://i.ebayimg.sim/{}.jpg", self.next_msg),
            }]
        } else {
            Vec::new()
        };
        Message {
            id: format!("{}{:03}{:09}", 7, self.acct_no % 1000, self.next_msg),
            created_ms: at,
            created: iso_ms(at),
            inbound,
            subject: format!("Re: {}", t.title),
            body: lines[rng.gen_range(0..lines.len())].to_string(),
            read: !inbound,
            media,
            json: String::new(),
        }
    }

    pub fn cmp_recency(&self, x: usize, y: usize) -> std::cmp::Ordering {
        let (a, b) = (&self.threads[x], &self.threads[y]);
        b.latest_ms()
            .cmp(&a.latest_ms())
            .then_with(|| a.id.cmp(&b.id))
    }

    /// Usernames of a message: (sender, recipient).
    pub fn parties<'a>(&'a self, t: &'a Thread, m: &Message) -> (&'a str, &'a str) {
        let (me, other) = if self.opts.user_ids {
            (&self.seller_uid, &t.other_uid)
        } else {
            (&self.seller, &t.other)
        };
        if m.inbound {
            (other, me)
        } else {
            (me, other)
        }
    }

    pub fn live(&self, id: &str) -> Option<usize> {
        self.by_id
            .get(id)
            .copied()
            .filter(|i| !self.threads[*i].deleted)
    }

    fn unlink(&mut self, idx: usize) {
        let slot = self.threads[idx].ctype.slot();
        if let Some(pos) = self.order[slot].iter().position(|i| *i == idx) {
            self.order[slot].remove(pos);
        }
    }

    fn link(&mut self, idx: usize) {
        let slot = self.threads[idx].ctype.slot();
        let pos = {
            let order = &self.order[slot];
            order.partition_point(|i| self.cmp_recency(*i, idx) == std::cmp::Ordering::Less)
        };
        self.order[slot].insert(pos, idx);
    }

    /// Append a message now (never before the thread's latest one), moving the
    /// thread to its new recency position.
    pub fn add_message(
        &mut self,
        rng: &mut ChaCha8Rng,
        idx: usize,
        inbound: bool,
        now_ms: i64,
        body: Option<String>,
    ) -> (String, String) {
        let at = now_ms.max(self.threads[idx].latest_ms() + 1);
        let t = self.threads[idx].clone_header();
        let mut m = self.new_message(rng, &t, inbound, at);
        if let Some(b) = body {
            m.body = b;
        }
        let out = (m.id.clone(), m.created.clone());
        self.unlink(idx);
        let thread = &mut self.threads[idx];
        thread.messages.push(m);
        thread.recount_unread();
        let last = thread.messages.len() - 1;
        self.rerender(idx, last);
        self.link(idx);
        out
    }

    /// Start a FROM_MEMBERS thread with one message; returns its index.
    pub fn add_thread(
        &mut self,
        rng: &mut ChaCha8Rng,
        other: Option<String>,
        inbound: bool,
        now_ms: i64,
    ) -> usize {
        let mut t = self.new_thread(rng, ConvType::FromMembers, now_ms);
        t.status = ConvStatus::Active;
        if let Some(o) = other {
            t.other_uid = user_id(&o);
            t.other = o;
        }
        let m = self.new_message(rng, &t, inbound, now_ms);
        t.messages.push(m);
        t.recount_unread();
        let idx = self.threads.len();
        self.by_id.insert(t.id.clone(), idx);
        self.threads.push(t);
        self.rerender(idx, 0);
        self.link(idx);
        idx
    }

    pub fn delete_thread(&mut self, idx: usize) -> bool {
        if self.threads[idx].deleted {
            return false;
        }
        self.unlink(idx);
        self.threads[idx].deleted = true;
        self.deleted_ids.push(self.threads[idx].id.clone());
        true
    }

    pub fn set_read(&mut self, idx: usize, read: bool) {
        let t = &mut self.threads[idx];
        if read {
            for m in t.messages.iter_mut().filter(|m| m.inbound) {
                m.read = true;
            }
        } else if let Some(m) = t.messages.iter_mut().rev().find(|m| m.inbound) {
            m.read = false;
        }
        t.recount_unread();
        self.rerender(idx, 0);
    }

    pub fn set_status(&mut self, idx: usize, status: ConvStatus) {
        self.threads[idx].status = status;
        let len = self.threads[idx].messages.len();
        self.rerender(idx, len);
    }

    /// Re-render the JSON of messages `from..` and of the conversation.
    /// Call after changing any field a client can see.
    pub fn rerender(&mut self, idx: usize, from: usize) {
        let t = &self.threads[idx];
        let fresh: Vec<String> = t.messages[from.min(t.messages.len())..]
            .iter()
            .map(|m| render::message(self, t, m))
            .collect();
        let t = &mut self.threads[idx];
        let start = from.min(t.messages.len());
        for (m, j) in t.messages[start..].iter_mut().zip(fresh) {
            m.json = j;
        }
        let conv = render::conversation(t, t.messages.last().map(|m| m.json.as_str()));
        t.json = conv;
    }
}

impl Thread {
    /// The fields message generation needs, without cloning all messages.
    fn clone_header(&self) -> Thread {
        Thread {
            id: self.id.clone(),
            ctype: self.ctype,
            status: self.status,
            title: self.title.clone(),
            created: String::new(),
            other: self.other.clone(),
            other_uid: self.other_uid.clone(),
            reference_id: None,
            messages: Vec::new(),
            unread: 0,
            deleted: false,
            json: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_sorted() {
        let a = AccountData::generate(5, 0, 200, 20, DataOptions::default());
        let b = AccountData::generate(5, 0, 200, 20, DataOptions::default());
        let ids = |d: &AccountData| {
            d.threads
                .iter()
                .flat_map(|t| t.messages.iter().map(|m| (m.id.clone(), m.created.clone())))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&a), ids(&b));
        let total: usize = a.threads.iter().map(|t| t.messages.len()).sum();
        let mean = total as f64 / 200.0;
        assert!((14.0..26.0).contains(&mean), "mean {mean}");
        for o in &a.order {
            for w in o.windows(2) {
                assert_ne!(a.cmp_recency(w[0], w[1]), std::cmp::Ordering::Greater);
            }
        }
    }
}
