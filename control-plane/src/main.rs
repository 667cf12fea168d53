//! `switchyard-controller run --config FILE` | `switchyard-controller status --controller URL`.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use switchyard_controller::{app::App, config::StaticConfig, status};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// With an `https://` controller: the CA to trust, and a client certificate and key.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        #[arg(long)]
        tls_key: Option<PathBuf>,
    },
    /// Join tokens for new proxies (needs `controller.ca`).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a one-time join token: `switchyard-proxy run --join-token TOKEN …`.
    Create {
        /// The controller's static configuration (for `controller.ca.dir`).
        #[arg(long)]
        config: PathBuf,
        /// How long the token stays usable (e.g. `30m`, `24h`).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Only this node id may use the token.
        #[arg(long)]
        node_id: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(config).await,
        Command::Status {
            controller,
            json,
            tls_ca,
            tls_cert,
            tls_key,
        } => {
            let tls = status::TlsFiles {
                ca: tls_ca,
                cert: tls_cert,
                key: tls_key,
            };
            status::run_with_tls(&controller, json, &tls)
                .await
                .map(|text| print!("{text}"))
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    config,
                    ttl,
                    node_id,
                },
        } => create_token(config, &ttl, node_id.as_deref()).map(|t| println!("{t}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn create_token(path: PathBuf, ttl: &str, node_id: Option<&str>) -> anyhow::Result<String> {
    let config = StaticConfig::load(&path)?;
    let ttl = switchyard_controller::config::parse_duration(ttl)
        .map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    let ca =
        config.controller.ca.as_ref().ok_or_else(|| {
            anyhow::anyhow!("{}: controller.ca is not configured", path.display())
        })?;
    let ca = switchyard_controller::ca::Ca::open(ca)?;
    Ok(ca.create_token(ttl, node_id)?)
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = StaticConfig::load(&path)?;
    switchyard_shared::telemetry::init();
    let app = App::build(config).await?;
    app.run(switchyard_shared::shutdown::signal()).await
}
