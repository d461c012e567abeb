//! Every job kind threadsync runs: the queue's diagnostics (diag.rs) and the sync engine's
//! kinds for every provider (src/sync).

pub mod diag;

use crate::config::Config;
use crate::sync::Tokens;
use crate::worker::Registry;

/// Every job kind, with the accounts `cfg` configures and their secrets from `tokens`.
pub fn registry(cfg: &Config, tokens: &Tokens) -> Registry {
    let mut r = Registry::default();
    diag::register(&mut r);
    crate::sync::register(
        &mut r,
        crate::providers::ALL,
        &cfg.accounts,
        &cfg.queue,
        tokens,
    );
    r
}
