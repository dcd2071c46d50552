//! `dp3 worker --config DIR INDEX`: one of `processing_core.worker_processes` worker
//! processes of a multi-process deployment (core.md §1). It consumes its own normal and
//! priority task queues from RabbitMQ, runs the ingestion hooks and applies the tasks to the
//! shared store (MongoDB, or the SQLite file shared by processes on one machine), and
//! acknowledges each delivery only after its writes are committed.
//!
//! Duties (core.md §1.3): every worker consumes its task and control queues, runs every
//! module's cron jobs and follows module hot reload / config refresh. Worker 0 also runs the
//! snapshot runs (scheduled and `make_snapshots`), the updater and the background jobs
//! (history aggregation, archiving, garbage collection, telemetry) — over the whole store,
//! where DP3 spreads garbage collection and aggregation over the workers' partitions; their
//! outputs (delete tasks, correlation and updater outputs) are published to the queues of the
//! workers that own the entities.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use dp3_model::DataPointTask;
use tracing::{info, warn};

use super::platform::{
    EntityRefresher, allowed_actions, control_handler, install_metrics, register_module_jobs,
    run_snapshots, start_modules,
};
use super::run::{app_name, open_store, shutdown_signal};
use crate::background::jobs::{BackgroundDeps, register_jobs};
use crate::background::scheduler::{Scheduler, schedule_of};
use crate::clock::{Clock, SystemClock};
use crate::control::Control;
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::queue::rabbitmq::{
    ControlConsumer, RabbitConfig, RabbitConsumer, RabbitLink, RabbitPublisher, check_topology,
};
use crate::queue::{Accepted, ControlSink, SubmitError, TaskSubmitter};
use crate::snapshot::SnapShooter;

/// Options of `dp3 worker`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Configuration directory (the same as the API's: both route by `worker_processes`).
    #[arg(long, default_value = "config", env = "DP3_CONFIG")]
    pub config: PathBuf,
    /// Directory of the embedded store (shared by the API and every worker on this machine)
    /// and of module state.
    #[arg(long, default_value = "data", env = "DP3_DATA")]
    pub data: PathBuf,
    /// This worker's index, 0 … worker_processes − 1.
    pub index: u32,
    /// Unacknowledged deliveries per queue. Tasks are acked after their batch commits, so
    /// this bounds the tasks one flush can apply.
    #[arg(long, default_value_t = 10_000)]
    pub prefetch: u16,
    /// Serve Prometheus `/metrics` on this address (e.g. 127.0.0.1:9101).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// How long a graceful shutdown may take to finish the tasks in flight.
    #[arg(long, default_value_t = 60)]
    pub shutdown_timeout_secs: u64,
}

/// Hook outputs of control actions go to the priority queues, as DP3 publishes them.
struct PriorityPublisher(Arc<RabbitPublisher>);

impl TaskSubmitter for PriorityPublisher {
    fn submit(&self, tasks: Vec<DataPointTask>) -> Result<Accepted, SubmitError> {
        self.0.publish_priority(&tasks)
    }
}

/// Run worker `args.index` until SIGINT/SIGTERM.
pub fn worker(args: &WorkerArgs) -> anyhow::Result<()> {
    let config = super::load_config(&args.config)?;
    let pc = &config.processing_core;
    let index = args.index;
    if index >= pc.worker_processes {
        // A configuration mismatch: exit status 2, restarting cannot help.
        return Err(super::ConfigInvalid {
            path: args.config.clone(),
            errors: format!(
                "worker index {index} is out of range: processing_core.yml has \
                 worker_processes: {} (indexes 0 … {})",
                pc.worker_processes,
                pc.worker_processes.saturating_sub(1)
            ),
        }
        .into());
    }
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create data directory {}", args.data.display()))?;
    let store = open_store(&config, &args.data)?;
    let model = Arc::new(config.model.clone());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // Module state (e.g. hot-reload generations) is per worker.
    let state_dir = args.data.join(format!("worker-{index}"));
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let modules = start_modules(&config, &model, &state_dir, index)?;
    let hooks = modules.hooks.clone();

    let mut rabbit = RabbitConfig::new(&pc.msg_broker, &app_name(), pc.worker_processes);
    rabbit.prefetch = args.prefetch;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("dp3-worker-rt")
        .build()
        .context("cannot start the async runtime")?;
    runtime
        .block_on(check_topology(&rabbit))
        .context("RabbitMQ topology check failed (run `dp3 rabbitmq-setup`)")?;
    let publisher = Arc::new(RabbitPublisher::start(rabbit.clone())?);
    if !publisher.wait_connected(Duration::from_secs(10)) {
        warn!("RabbitMQ not connected yet; hook outputs wait until it is");
    }
    let normal: Arc<dyn TaskSubmitter> = publisher.clone();
    let priority: Arc<dyn TaskSubmitter> = Arc::new(PriorityPublisher(publisher.clone()));

    let link = Arc::new(RabbitLink::new(publisher.clone()));
    let pipeline = Arc::new(Pipeline::start_worker(
        PipelineConfig {
            shards: pc.worker_processes,
            threads: pc.worker_threads,
            max_inline: pc.max_inline_generated_tasks as usize,
            flush_interval: Duration::from_millis(100),
            ..PipelineConfig::default()
        },
        model.clone(),
        store.clone(),
        link.clone(),
        index,
        Arc::new(hooks.clone()),
        clock.clone(),
    )?);

    // Worker 0's duties: snapshots, updater, background jobs.
    let stopping = Arc::new(AtomicBool::new(false));
    let scheduler = Scheduler::new(clock.clone());
    let (snapshooter, background) = if index == 0 {
        let shooter = Arc::new(SnapShooter::new(
            model.clone(),
            store.clone(),
            Arc::new(hooks.clone()),
            normal.clone(),
            clock.clone(),
            config.snapshots.keep_empty,
            2,
        ));
        let s = shooter.clone();
        scheduler.add(
            "snapshots",
            schedule_of(&config.snapshots.creation_rate).context("snapshots.yml: creation_rate")?,
            Arc::new(move || run_snapshots(&s)),
        );
        let background = register_jobs(
            &scheduler,
            &config,
            BackgroundDeps {
                store: store.clone(),
                submitter: normal.clone(),
                clock: clock.clone(),
                updater_hooks: Arc::new(hooks.clone()),
                telemetry: modules.telemetry.clone(),
            },
        )?;
        (Some(shooter), Some(background))
    } else {
        (None, None)
    };
    register_module_jobs(&scheduler, &modules.loader, normal.clone(), &stopping);

    let control = Arc::new(Control::start(
        allowed_actions(&config),
        control_handler(
            snapshooter,
            modules.loader.clone(),
            EntityRefresher {
                store: store.clone(),
                hooks: hooks.clone(),
                submitter: priority,
                partition: (index, pc.worker_processes),
                stop: stopping.clone(),
            },
        ),
    )?);

    // Consumers last: everything they hand work to is running.
    let tasks = {
        let (link, pipeline) = (link.clone(), pipeline.clone());
        Arc::new(RabbitConsumer::tasks(
            rabbit.clone(),
            index,
            model.clone(),
            move |consumed| {
                let delivery = link.delivery(consumed);
                let token = delivery.token;
                if !pipeline.deliver(delivery) {
                    link.forget(token);
                }
            },
        )?)
    };
    link.set_consumer(tasks.clone());
    let control_consumer = start_control_consumer(&rabbit, index, control.clone())?;

    let metrics = install_metrics(&pipeline, &model, &store, &modules)?;
    scheduler.start()?;
    info!(
        worker = index,
        workers = pc.worker_processes,
        "dp3 worker is ready"
    );
    runtime.block_on(async {
        match &args.metrics_listen {
            Some(addr) => {
                let addr: SocketAddr = addr
                    .parse()
                    .with_context(|| format!("invalid --metrics-listen address '{addr}'"))?;
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                axum::serve(listener, metrics.router())
                    .with_graceful_shutdown(shutdown_signal())
                    .await
                    .context("metrics server failed")
            }
            None => {
                shutdown_signal().await;
                Ok(())
            }
        }
    })?;

    // Graceful stop (core.md §1.13): no new deliveries, finish and ack what is in flight.
    info!("stopping: finishing the tasks in flight");
    stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    tasks.pause();
    control_consumer.close();
    if let Some(b) = &background {
        b.stop();
    }
    let timeout = Duration::from_secs(args.shutdown_timeout_secs);
    scheduler.stop(timeout);
    control.stop();
    let drained = pipeline.shutdown(timeout);
    tasks.close();
    publisher.close();
    modules.loader.stop_all();
    if drained {
        info!("stopped cleanly");
    } else {
        warn!("stopped with unfinished tasks; RabbitMQ redelivers them");
    }
    Ok(())
}

/// Consume this worker's control queue: ack, then hand the action to the control thread
/// (DP3 acks control messages first as well; an action lost in a crash is re-requested).
fn start_control_consumer(
    rabbit: &RabbitConfig,
    index: u32,
    control: Arc<Control>,
) -> anyhow::Result<Arc<ControlConsumer>> {
    let me: Arc<OnceLock<Arc<ControlConsumer>>> = Arc::new(OnceLock::new());
    let handle = me.clone();
    let consumer = Arc::new(RabbitConsumer::control(
        rabbit.clone(),
        index,
        move |consumed| {
            if let Some(c) = handle.get() {
                c.ack(&consumed.tag);
            }
            if let Err(e) = control.send(consumed.message) {
                warn!(error = %e, "control action dropped");
            }
        },
    )?);
    let _ = me.set(consumer.clone());
    Ok(consumer)
}
