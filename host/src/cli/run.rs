//! `dp3 run`: the whole platform in one process on the embedded store — the HTTP API, the
//! worker lanes, snapshots and background jobs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dp3_model::config::{Config, DatabaseBackend, load_config_dir};
use dp3_store::Store;
use dp3_store::sqlite::SqliteStore;
use tracing::{error, info, warn};

use crate::api::{self, ApiSettings, AppState};
use crate::background::scheduler::{Scheduler, schedule_of};
use crate::clock::{Clock, SystemClock};
use crate::control::Control;
use crate::metrics::{EntityCounts, MetricsState, PipelineMetrics};
use crate::pipeline::executor::HookSource;
use crate::pipeline::hooks::{IngestionHooks, NoHooks};
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::queue::ControlAction;
use crate::queue::accept_log::AcceptLog;
use crate::snapshot::hooks::{NoSnapshotHooks, SnapshotHooks};
use crate::snapshot::{SnapShooter, SnapshotError};

/// Options of `dp3 run` (flags win over the configuration files).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Configuration directory.
    #[arg(long, default_value = "config", env = "DP3_CONFIG")]
    pub config: PathBuf,
    /// Address to serve the HTTP API on (default: `api.yml: listen`, else 127.0.0.1:5000).
    #[arg(long, env = "DP3_LISTEN")]
    pub listen: Option<String>,
    /// Directory of the embedded store and the accept log.
    #[arg(long, default_value = "data", env = "DP3_DATA")]
    pub data: PathBuf,
    /// How long a graceful shutdown may take to drain the queues.
    #[arg(long, default_value_t = 60)]
    pub shutdown_timeout_secs: u64,
}

/// Run until SIGINT/SIGTERM, then shut down gracefully.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = load_config_dir(&args.config).map_err(|errors| {
        anyhow::anyhow!(
            "configuration {} is invalid:\n{}",
            args.config.display(),
            errors
        )
    })?;
    for w in &config.warnings {
        warn!("{w}");
    }
    if config.database.backend != DatabaseBackend::Sqlite {
        bail!(
            "`dp3 run` uses the embedded store; database.yml selects backend '{}' (use `dp3 api` and `dp3 worker` for MongoDB deployments)",
            config.database.backend.name()
        );
    }
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create data directory {}", args.data.display()))?;
    let store_path = config
        .database
        .sqlite
        .path
        .clone()
        .unwrap_or_else(|| args.data.join("dp3.sqlite"));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&store_path)?);
    let accept_log = Arc::new(AcceptLog::open(&args.data.join("accept.sqlite"))?);
    let model = Arc::new(config.model.clone());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    let hooks: Arc<dyn IngestionHooks> = Arc::new(NoHooks);
    let hook_source: Arc<dyn HookSource> = Arc::new(hooks);
    let pc = &config.processing_core;
    let pipeline = Arc::new(Pipeline::start(
        PipelineConfig {
            shards: pc.worker_processes,
            threads: pc.worker_threads,
            max_inline: pc.max_inline_generated_tasks as usize,
            ..PipelineConfig::default()
        },
        model.clone(),
        store.clone(),
        accept_log,
        hook_source,
        clock.clone(),
    )?);

    let snapshot_hooks: Arc<dyn SnapshotHooks> = Arc::new(NoSnapshotHooks);
    let snapshooter = Arc::new(SnapShooter::new(
        model.clone(),
        store.clone(),
        Arc::new(snapshot_hooks),
        pipeline.clone(),
        clock.clone(),
        config.snapshots.keep_empty,
        2,
    ));
    let scheduler = Scheduler::new(clock.clone());
    {
        let shooter = snapshooter.clone();
        scheduler.add(
            "snapshots",
            schedule_of(&config.snapshots.creation_rate)
                .context("snapshots.yml: creation_rate")?,
            Arc::new(move || run_snapshots(&shooter)),
        );
    }

    let control = {
        let shooter = snapshooter.clone();
        Arc::new(Control::start(
            config
                .control
                .allowed_actions
                .iter()
                .map(|a| a.name().to_owned())
                .collect(),
            Arc::new(move |action: &ControlAction| match action {
                ControlAction::MakeSnapshots => run_snapshots(&shooter),
                other => warn!(action = other.name(), "control action has no handler yet"),
            }),
        )?)
    };

    let metrics = {
        let p = pipeline.clone();
        MetricsState::install(vec![
            Arc::new(PipelineMetrics {
                stats: pipeline.stats().clone(),
                in_flight: Arc::new(move || p.in_flight()),
            }),
            Arc::new(EntityCounts {
                model: model.clone(),
                store: store.clone(),
            }),
        ])?
    };
    scheduler.start()?;

    let listen = listen_address(args, &config)?;
    let state = AppState::new(
        model,
        api_settings(&config),
        store.clone(),
        pipeline.clone(),
        control.clone(),
    )?;
    let app = api::router(state).merge(metrics.router());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("dp3-http")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        info!(
            %listen,
            config = %args.config.display(),
            data = %args.data.display(),
            startup_ms = started.elapsed().as_millis() as u64,
            "dp3 is ready"
        );
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP server failed")
    })?;

    info!("stopping: draining the queues");
    scheduler.stop(Duration::from_secs(args.shutdown_timeout_secs));
    control.stop();
    let drained = pipeline.shutdown(Duration::from_secs(args.shutdown_timeout_secs));
    if drained {
        info!("stopped cleanly");
    } else {
        warn!("stopped with unfinished tasks; they will be replayed at the next start");
    }
    Ok(())
}

fn listen_address(args: &RunArgs, config: &Config) -> anyhow::Result<SocketAddr> {
    let text = args
        .listen
        .clone()
        .or_else(|| config.api.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:5000".to_owned());
    text.parse()
        .with_context(|| format!("invalid listen address '{text}' (expected e.g. 127.0.0.1:5000)"))
}

/// The API's view of the configuration.
pub fn api_settings(config: &Config) -> ApiSettings {
    let pc = &config.processing_core;
    ApiSettings {
        app_name: std::env::var("APP_NAME").unwrap_or_else(|_| "dp3".into()),
        cors_allow_origins: config.api.cors.allow_origins.clone(),
        good_log: config.api.datapoint_logger.good_log.clone(),
        bad_log: config.api.datapoint_logger.bad_log.clone(),
        enabled_modules: pc.enabled_modules.clone(),
        worker_processes: pc.worker_processes,
        allowed_control_actions: config
            .control
            .allowed_actions
            .iter()
            .map(|a| a.name().to_owned())
            .collect(),
        rabbitmq: None,
        ..ApiSettings::default()
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    info!("shutdown signal received");
}

/// A snapshot run from the scheduler or the control channel.
fn run_snapshots(shooter: &SnapShooter) {
    match shooter.run() {
        Ok(_) => {}
        Err(SnapshotError::AlreadyRunning) => {
            info!("snapshot run requested while one is running; skipped")
        }
        Err(e) => error!(error = %e, "snapshot run failed"),
    }
}
