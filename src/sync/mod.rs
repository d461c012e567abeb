//! The sync engine: the vocabulary providers speak (vocab.rs), the generic job kinds
//! written once (list a page, fetch a thread, read a stream batch, check a delivery, plan
//! a run), accounts and their secrets, pacing and pauses, run planning and advancement,
//! and the domain SQL. It names no provider: src/providers/ lists them.

pub mod engine;
pub mod fetch;
pub mod flow;
#[cfg(test)]
mod group_statement_tests;
pub mod keys;
pub mod list;
pub mod metrics;
pub mod plan;
pub mod provider;
pub mod pushes;
pub mod runs;
pub mod start;
pub mod status;
pub mod store;
pub mod stream;
pub mod vocab;

use std::collections::HashMap;
use std::sync::Arc;

pub use engine::{Engine, Tokens};
pub use provider::{Connect, Provider};
pub use runs::{
    account_status, latest_run, register_accounts, request_run, retry_run, run_status, start_run,
    AccountStatus, Mode, Requested, RunStatus,
};
pub use vocab::Shape;

use crate::config::AccountConfig;
use crate::queue::Settings;
use crate::worker::Registry;

/// Registers every sync job kind of every provider, for the accounts given, and the
/// periodic sweep that closes idle runs.
pub fn register(
    r: &mut Registry,
    providers: &[&'static dyn Provider],
    accounts: &[AccountConfig],
    queue: &Settings,
    tokens: &Tokens,
) {
    let check_retry = providers
        .iter()
        .map(|p| (p.name(), queue.policy(&keys::check_kind(p.name()))))
        .collect::<HashMap<_, _>>();
    let engine = Arc::new(Engine::new(accounts, tokens, check_retry));
    for p in providers {
        let provider = p.name();
        match p.shape() {
            Shape::Threads => {
                r.register(
                    &keys::list_kind(provider),
                    list::ListPage {
                        provider,
                        engine: engine.clone(),
                    },
                )
                .register(
                    &keys::fetch_kind(provider),
                    fetch::FetchThread {
                        provider,
                        engine: engine.clone(),
                    },
                );
            }
            Shape::Stream => {
                r.register(
                    &keys::stream_kind(provider),
                    stream::StreamBatchJob {
                        provider,
                        engine: engine.clone(),
                    },
                )
                .register(
                    &keys::check_kind(provider),
                    status::StatusCheck {
                        provider,
                        engine: engine.clone(),
                    },
                );
            }
        }
    }
    r.register(
        keys::START_KIND,
        start::Start {
            engine: engine.clone(),
        },
    )
    .periodic(start::CloseIdleRuns { engine });
}
