//! SmsEagleSim (not implemented yet).
use super::{SimConfig, SimProvider};
use std::sync::Arc;

pub struct SmsEagleSim;

impl SmsEagleSim {
    pub fn build(_config: SimConfig) -> anyhow::Result<Arc<dyn SimProvider>> {
        anyhow::bail!("smseagle simulator not implemented yet")
    }
}
