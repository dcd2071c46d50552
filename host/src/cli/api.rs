//! `dp3 api`: the HTTP API alone, for multi-process deployments. It validates datapoints,
//! publishes tasks to RabbitMQ in DP3's topology and message format (so DP3's Python workers
//! can consume them too) and reads entities from the shared store. `dp3 rabbitmq-setup`
//! declares that topology.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tracing::{info, warn};

use super::run::{app_name, open_store, shutdown_signal};
use crate::api::{self, ApiSettings, AppState};
use crate::queue::rabbitmq::{RabbitConfig, RabbitPublisher, check_topology, rabbitmq_setup};

/// Options of `dp3 api`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Configuration directory.
    #[arg(long, default_value = "config", env = "DP3_CONFIG")]
    pub config: PathBuf,
    /// Address to serve the HTTP API on (default: `api.yml: listen`, else 127.0.0.1:5000).
    #[arg(long, env = "DP3_LISTEN")]
    pub listen: Option<String>,
    /// Directory of the embedded store (when `database.yml` selects SQLite, the file is shared
    /// with the workers on this machine).
    #[arg(long, default_value = "data", env = "DP3_DATA")]
    pub data: PathBuf,
}

/// Options of `dp3 rabbitmq-setup`.
#[derive(Debug, Clone, clap::Args)]
pub struct SetupArgs {
    /// Configuration directory (`processing_core.yml`: broker and worker count).
    #[arg(long, default_value = "config", env = "DP3_CONFIG")]
    pub config: PathBuf,
    /// Also delete the (empty) queues of worker indexes that no longer exist.
    #[arg(long)]
    pub remove_stale: bool,
}

fn rabbit_config(config: &dp3_model::config::Config) -> RabbitConfig {
    let pc = &config.processing_core;
    RabbitConfig::new(&pc.msg_broker, &app_name(), pc.worker_processes)
}

/// Serve the API until SIGINT/SIGTERM.
pub fn api(args: &ApiArgs) -> anyhow::Result<()> {
    let config = super::load_config(&args.config)?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create data directory {}", args.data.display()))?;
    let store = open_store(&config, &args.data)?;
    let rabbit = rabbit_config(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("dp3-http")
        .build()
        .context("cannot start the async runtime")?;
    runtime
        .block_on(check_topology(&rabbit))
        .context("RabbitMQ topology check failed (run `dp3 rabbitmq-setup`)")?;
    let publisher = Arc::new(RabbitPublisher::start(rabbit)?);
    // Until the publisher is connected, ingestion answers 503; give it a moment at start.
    if !publisher.wait_connected(std::time::Duration::from_secs(10)) {
        warn!("RabbitMQ not connected yet; /datapoints answers 503 until it is");
    }
    let state = AppState::new(
        Arc::new(config.model.clone()),
        ApiSettings::from_config(&config, &app_name()),
        store,
        publisher.clone(),
        publisher.clone(),
    )?;
    let listen: SocketAddr = args
        .listen
        .clone()
        .or_else(|| config.api.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:5000".to_owned())
        .parse()
        .context("invalid listen address (expected e.g. 127.0.0.1:5000)")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        info!(%listen, "dp3 api is ready (tasks go to RabbitMQ)");
        axum::serve(
            listener,
            api::router(state).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP server failed")
    })?;
    publisher.close();
    Ok(())
}

/// Declare DP3's exchanges and queues; print the queue depths.
pub fn setup(args: &SetupArgs) -> anyhow::Result<()> {
    let config = super::load_config(&args.config)?;
    let rabbit = rabbit_config(&config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(rabbitmq_setup(&rabbit, args.remove_stale))?;
    println!("topology declared for {} worker(s)", report.workers);
    for (queue, depth) in &report.queues {
        println!("  {queue}: {depth} message(s)");
    }
    for stale in &report.stale {
        println!("  stale: {stale:?}");
    }
    Ok(())
}
