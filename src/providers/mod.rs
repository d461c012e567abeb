//! The providers: each folder holds one provider's typed HTTP client and its side of the
//! engine's seam (src/sync/vocab.rs). They import nothing of the queue, the worker or the
//! store. Adding a provider is a folder here and one line in [`ALL`].

pub mod ebay;
pub mod facebook;
pub mod hostaway;
mod http;
pub mod smseagle;

use crate::sync::Provider;

/// Every provider threadsync syncs.
pub static ALL: &[&dyn Provider] = &[
    &ebay::Ebay,
    &facebook::Facebook,
    &hostaway::Hostaway,
    &smseagle::SmsEagle,
];

pub fn find(name: &str) -> Option<&'static dyn Provider> {
    ALL.iter().copied().find(|p| p.name() == name)
}
