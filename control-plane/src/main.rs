//! `switchyard-controller run --config FILE` | `switchyard-controller status --controller URL`.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use switchyard_controller::{app::App, config::StaticConfig, status};

#[derive(Parser)]
#[command(
    name = "switchyard-controller",
    version,
    about = "Switchyard controller"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Watch the providers and stream snapshots to proxies.
    Run {
        /// Static configuration (YAML or TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Show the controller's version, diagnostics and every proxy's state.
    Status {
        #[arg(long, default_value = "http://127.0.0.1:7070")]
        controller: String,
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(config).await,
        Command::Status { controller, json } => status::run(&controller, json)
            .await
            .map(|text| print!("{text}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = StaticConfig::load(&path)?;
    switchyard_shared::telemetry::init();
    let app = App::build(config).await?;
    app.run(switchyard_shared::shutdown::signal()).await
}
