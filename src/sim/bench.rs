//! Load client for the eBay simulator (placeholder).
#[derive(clap::Args, Debug)]
pub struct SimBenchArgs {}

pub async fn bench_cli(_args: SimBenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
