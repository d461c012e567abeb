use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "threadsync",
    about = "Message-thread sync worker and provider simulators"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one provider simulator until Ctrl-C.
    Sim(threadsync::sim::SimArgs),
    /// Load-test an in-process eBay simulator.
    BenchSim(threadsync::sim::SimBenchArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Sim(args) => threadsync::sim::run_cli(args).await,
        Command::BenchSim(args) => threadsync::sim::bench_cli(args).await,
    }
}
