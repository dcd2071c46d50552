use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

// glibc malloc (arena locking, consolidation of the large request buffers) was about a fifth
// of the CPU time of ingestion.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// DP3: the Dynamic Profile Processing Platform.
#[derive(Parser)]
#[command(name = "dp3", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration directory: print a summary, or every error (exit status 1).
    Check(dp3::cli::check::CheckArgs),
    /// Run the whole platform in one process: HTTP API, workers, snapshots and background
    /// jobs, on the embedded store.
    Run(dp3::cli::run::RunArgs),
    /// Serve only the HTTP API; tasks are published to RabbitMQ (multi-process deployments).
    Api(dp3::cli::api::ApiArgs),
    /// Run worker INDEX of a multi-process deployment: consume its RabbitMQ task queues and
    /// apply them to the shared store (worker 0 also runs snapshots and background jobs).
    Worker(dp3::cli::worker::WorkerArgs),
    /// Declare DP3's RabbitMQ exchanges and queues for `worker_processes` workers.
    RabbitmqSetup(dp3::cli::api::SetupArgs),
    /// Generate load against a running dp3 and report throughput and latency.
    Load(dp3::cli::load::LoadArgs),
}

/// The allocator's memory is not backed by transparent huge pages: request and batch buffers
/// are freed and re-faulted all the time, and every fault of a huge page clears 2 MiB
/// (measured under ingestion: 1.8 µs of CPU per datapoint in the HTTP, lane and acceptor
/// threads, about a tenth of the whole).
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE only sets a flag of this process; no memory is touched.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// SQLite counts every allocation under a global mutex unless told not to, and dp3 never reads
/// those statistics (every store and queue connection allocates on each statement). Must run
/// before the first connection opens; afterwards SQLite refuses it, which changes nothing.
fn disable_sqlite_memory_statistics() {
    // SAFETY: sqlite3_config before sqlite3_initialize, with the documented int argument.
    unsafe {
        rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0);
    }
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    disable_sqlite_memory_statistics();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => dp3::cli::check::run(&args),
        Command::Run(args) => dp3::cli::run::run(&args),
        Command::Load(args) => dp3::cli::load::run(&args),
        Command::Api(args) => dp3::cli::api::api(&args),
        Command::Worker(args) => dp3::cli::worker::worker(&args),
        Command::RabbitmqSetup(args) => dp3::cli::api::setup(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            if e.downcast_ref::<dp3::cli::ConfigInvalid>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
