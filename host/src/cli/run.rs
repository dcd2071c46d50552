//! `dp3 run`: the whole platform in one process on the embedded store — the HTTP API, the
//! worker lanes, snapshots and background jobs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dp3_model::config::{Config, DatabaseBackend};
use dp3_store::Store;
use dp3_store::sqlite::SqliteStore;
use tracing::{info, warn};

use super::platform::{
    EntityRefresher, allowed_actions, control_handler, install_metrics, register_module_jobs,
    run_snapshots, start_modules,
};
use crate::api::{self, ApiSettings, AppState};
use crate::background::jobs::{BackgroundDeps, register_jobs};
use crate::background::scheduler::{Scheduler, schedule_of};
use crate::clock::{Clock, SystemClock};
use crate::control::Control;
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::queue::accept_log::AcceptLog;
use crate::snapshot::SnapShooter;

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
    let config = super::load_config(&args.config)?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create data directory {}", args.data.display()))?;
    let store = open_store(&config, &args.data)?;
    let accept_log = Arc::new(AcceptLog::open(&args.data.join("accept.sqlite"))?);
    let model = Arc::new(config.model.clone());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    let pc = &config.processing_core;
    let modules = start_modules(&config, &model, &args.data, 0)?;
    let (loader, hooks, telemetry) = (
        modules.loader.clone(),
        modules.hooks.clone(),
        modules.telemetry.clone(),
    );

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
        Arc::new(hooks.clone()),
        clock.clone(),
    )?);

    let snapshooter = Arc::new(SnapShooter::new(
        model.clone(),
        store.clone(),
        Arc::new(hooks.clone()),
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
            schedule_of(&config.snapshots.creation_rate).context("snapshots.yml: creation_rate")?,
            Arc::new(move || run_snapshots(&shooter)),
        );
    }
    let background = register_jobs(
        &scheduler,
        &config,
        BackgroundDeps {
            store: store.clone(),
            submitter: pipeline.clone(),
            clock: clock.clone(),
            updater_hooks: Arc::new(hooks.clone()),
            telemetry,
        },
    )?;
    let stopping = Arc::new(AtomicBool::new(false));
    register_module_jobs(&scheduler, &loader, pipeline.clone(), &stopping);

    let control = Arc::new(Control::start(
        allowed_actions(&config),
        control_handler(
            Some(snapshooter.clone()),
            loader.clone(),
            EntityRefresher {
                store: store.clone(),
                hooks: hooks.clone(),
                submitter: pipeline.clone(),
                partition: (0, 1),
                stop: stopping.clone(),
            },
        ),
    )?);

    let metrics = install_metrics(&pipeline, &model, &store, &modules)?;
    scheduler.start()?;

    let listen = listen_address(args, &config)?;
    let state = AppState::new(
        model,
        // One process, no broker: the RabbitMQ telemetry endpoint answers 503.
        ApiSettings {
            rabbitmq: None,
            ..ApiSettings::from_config(&config, &app_name())
        },
        store.clone(),
        pipeline.clone(),
        control.clone(),
    )?;
    let app = api::router(state).merge(metrics.router());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("dp3-http")
        .on_thread_start(|| {
            crate::pipeline::priority::defer_to_writer(crate::pipeline::priority::HTTP_NICENESS)
        })
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
    stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    background.stop();
    scheduler.stop(Duration::from_secs(args.shutdown_timeout_secs));
    control.stop();
    let drained = pipeline.shutdown(Duration::from_secs(args.shutdown_timeout_secs));
    loader.stop_all();
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

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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

/// The store `database.yml` selects: the embedded SQLite store (default, under the data
/// directory unless `sqlite.path` is set) or MongoDB in DP3's layout.
pub fn open_store(config: &Config, data: &std::path::Path) -> anyhow::Result<Arc<dyn Store>> {
    match config.database.backend {
        DatabaseBackend::Sqlite => {
            let path = config
                .database
                .sqlite
                .path
                .clone()
                .unwrap_or_else(|| data.join("dp3.sqlite"));
            Ok(Arc::new(SqliteStore::open(&path)?))
        }
        #[cfg(feature = "mongodb")]
        DatabaseBackend::Mongodb => {
            let mongo = dp3_store_mongo::MongoConfig::from_database_config(&config.database)
                .context("database.yml: backend mongodb needs a `connection` block")?;
            Ok(Arc::new(dp3_store_mongo::MongoStore::open(
                &mongo,
                Some(&config.model),
            )?))
        }
        #[cfg(not(feature = "mongodb"))]
        DatabaseBackend::Mongodb => bail!(
            "database.yml selects backend 'mongodb', but this dp3 was built without MongoDB support (rebuild with `--features mongodb`)"
        ),
    }
}

/// `APP_NAME` (DP3's prefix of RabbitMQ names), default `dp3`.
pub fn app_name() -> String {
    std::env::var("APP_NAME").unwrap_or_else(|_| "dp3".into())
}
