//! Job kinds: what each fetches, writes and enqueues next. This is where the queue and the
//! providers meet.

pub mod diag;
pub mod ebay;

use crate::config::Config;
use crate::worker::Registry;

/// Every job kind threadsync runs, with the accounts `cfg` configures.
pub fn registry(cfg: &Config) -> Registry {
    let mut r = Registry::default();
    diag::register(&mut r);
    ebay::register(&mut r, cfg);
    r
}
