//! Job kinds: what each fetches, writes and enqueues next. This is where the queue and the
//! providers meet.

pub mod diag;
pub mod ebay;

use std::collections::HashMap;

use crate::config::{Account, Config};
use crate::worker::Registry;

/// Where provider tokens come from.
pub enum Tokens {
    /// The environment variables jobs.toml names (workers in production).
    Env,
    /// Given by account id (the demo and tests, whose simulator issues the tokens).
    Given(HashMap<String, String>),
}

impl Tokens {
    pub fn get(&self, account: &Account) -> Option<String> {
        match self {
            Tokens::Env => std::env::var(&account.token_env).ok(),
            Tokens::Given(m) => m.get(&account.id).cloned(),
        }
    }
}

/// Every job kind threadsync runs, with the accounts `cfg` configures.
pub fn registry(cfg: &Config, tokens: &Tokens) -> Registry {
    let mut r = Registry::default();
    diag::register(&mut r);
    ebay::register(&mut r, cfg, tokens);
    r
}
