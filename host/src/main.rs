use clap::{Parser, Subcommand};

/// DP3: the Dynamic Profile Processing Platform.
#[derive(Parser)]
#[command(name = "dp3", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {}
}
