//! `switchyard-proxy run …` | `switchyard-proxy status --admin ADDR`.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use switchyard_proxy::{
    app::{App, ProxyConfig},
    join::{ChannelFlags, ChannelSecurity},
    listener::parse_listen_address,
    status,
};

#[derive(Parser)]
#[command(name = "switchyard-proxy", version, about = "Switchyard edge proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic from the controller's snapshots (and the persisted one while it is away).
    Run {
        /// Controller gRPC URL; repeat to give fallbacks, tried in turn.
        #[arg(long = "controller")]
        controllers: Vec<String>,
        #[arg(long)]
        node_id: String,
        /// Where the last snapshots are persisted.
        #[arg(long)]
        state_dir: PathBuf,
        /// Admin gRPC listen address (ProxyAdmin).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
        /// Local listen address for an entry point: NAME=ADDR (repeatable).
        #[arg(long = "entrypoint")]
        entry_points: Vec<String>,
        /// Client certificate (PEM) for mutual TLS with an `https://` controller; its DNS SAN
        /// (else CN) must equal --node-id.
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        /// Private key of --tls-cert.
        #[arg(long)]
        tls_key: Option<PathBuf>,
        /// CA that signed the controller's certificate.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// One-time token from `switchyard-controller token create`: the proxy obtains (and then
        /// renews) its certificate from the controller; kept in <state-dir>/identity.
        #[arg(long)]
        join_token: Option<String>,
        /// Allow a plaintext controller URL on a non-loopback address (snapshots carry keys).
        #[arg(long)]
        insecure: bool,
    },
    /// Show which snapshot this proxy serves.
    Status {
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: String,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // On one core (an edge box, or a proxy pinned with taskset/cpusets), the current-thread
    // scheduler serves the same work without the work-stealing machinery; otherwise one worker
    // per core the process may use.
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let runtime = if one_core {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match runtime {
        Ok(runtime) => runtime.block_on(main_async()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn main_async() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run {
            controllers,
            node_id,
            state_dir,
            admin,
            entry_points,
            tls_cert,
            tls_key,
            tls_ca,
            join_token,
            insecure,
        } => {
            let flags = ChannelFlags {
                tls_cert,
                tls_key,
                tls_ca,
                join_token,
                insecure,
            };
            run(controllers, node_id, state_dir, admin, entry_points, flags).await
        }
        Command::Status { admin, json } => {
            status::run(&admin, json).await.map(|text| print!("{text}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    controllers: Vec<String>,
    node_id: String,
    state_dir: PathBuf,
    admin: SocketAddr,
    entry_points: Vec<String>,
    flags: ChannelFlags,
) -> anyhow::Result<()> {
    if node_id.trim().is_empty() {
        bail!("--node-id must not be empty");
    }
    let mut overrides = BTreeMap::new();
    for spec in entry_points {
        let (name, addr) = spec
            .split_once('=')
            .with_context(|| format!("--entrypoint `{spec}`: expected NAME=ADDR"))?;
        let addr = parse_listen_address(addr)
            .map_err(|e| anyhow::anyhow!("--entrypoint `{spec}`: {e}"))?;
        overrides.insert(name.to_owned(), addr);
    }
    switchyard_shared::telemetry::init();
    let security = ChannelSecurity::from_flags(&flags, &controllers, &state_dir)?;
    let config = ProxyConfig {
        controllers,
        node_id,
        state_dir,
        admin,
        entry_point_overrides: overrides,
    };
    App::build_secure(config, security)
        .await?
        .run(switchyard_shared::shutdown::signal())
        .await
}
