//! Every job kind threadsync runs: the queue's diagnostics (diag.rs) and the sync engine's
//! kinds for every provider (src/sync).

pub mod diag;

use crate::config::Config;
use crate::sync::{keys, Tokens};
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

/// Every job kind [`registry`] registers, without building a worker: what jobs.toml's
/// schedules are checked against.
pub fn kinds() -> Vec<String> {
    let mut kinds: Vec<String> = diag::KINDS.iter().map(|k| k.to_string()).collect();
    kinds.push(keys::START_KIND.to_string());
    for p in crate::providers::ALL {
        kinds.extend(keys::provider_kinds(p.name(), p.shape()));
    }
    kinds
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    #[test]
    fn kinds_lists_exactly_what_the_registry_runs() {
        let registry = super::registry(
            &crate::config::Config::default(),
            &super::Tokens::Given(HashMap::new()),
        );
        let registered: BTreeSet<&str> = registry.kinds().collect();
        let listed = super::kinds();
        let listed_set: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
        assert_eq!(registered, listed_set);
        assert_eq!(
            listed.len(),
            listed_set.len(),
            "a kind listed twice: {listed:?}"
        );
    }
}
