//! HostawaySim (not implemented yet).
use super::{SimConfig, SimProvider};
use std::sync::Arc;

pub struct HostawaySim;

impl HostawaySim {
    pub fn build(_config: SimConfig) -> anyhow::Result<Arc<dyn SimProvider>> {
        anyhow::bail!("hostaway simulator not implemented yet")
    }
}
