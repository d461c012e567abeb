//! Job kinds: what each fetches, writes and enqueues next. This is where the queue and the
//! providers meet.

pub mod diag;

use crate::worker::Registry;

/// Every job kind threadsync runs.
pub fn registry() -> Registry {
    let mut r = Registry::default();
    diag::register(&mut r);
    r
}
