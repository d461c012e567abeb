//! FacebookSim (not implemented yet).
use super::{SimConfig, SimProvider};
use std::sync::Arc;

pub struct FacebookSim;

impl FacebookSim {
    pub fn build(_config: SimConfig) -> anyhow::Result<Arc<dyn SimProvider>> {
        anyhow::bail!("facebook simulator not implemented yet")
    }
}
