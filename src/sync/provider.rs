//! How a provider plugs in: its name, its shape, its own account keys, and how a
//! configured account connects. src/providers/mod.rs lists every provider.

use crate::config::{AccountConfig, AccountKeys, ConfigError};

use super::vocab::{Shape, Source};

pub trait Provider: Send + Sync + 'static {
    /// As written in jobs.toml (`provider = "..."`) and in job kind names.
    fn name(&self) -> &'static str;
    fn shape(&self) -> Shape;
    /// Reads the provider's own keys of one `[[accounts]]` entry (the common keys are
    /// already taken); errors name the key's line.
    fn settings(&self, keys: &mut AccountKeys) -> Result<Box<dyn Connect>, ConfigError>;
}

/// A provider's parsed account settings, ready to connect once the secret is known.
pub trait Connect: std::fmt::Debug + Send + Sync + 'static {
    fn connect(&self, account: &AccountConfig, secret: String) -> anyhow::Result<Source>;
}
