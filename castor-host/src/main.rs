//! `castor`: runs the tasks of a Castor task library.
//!
//! Exit codes: 0 after a clean stop, 1 on an error (printed with its causes), 2 on bad
//! usage (from clap), 3 from `castor migrate status` when migrations are pending.

mod check;
mod child_mode;
mod cli;
mod commands;
mod dashboard;
mod host;
mod logging;
mod metrics;
mod migrate;
mod plugin;
mod protocol;
mod worker;

use std::process::ExitCode;

use crate::cli::{Command, WorkerArgs};
use crate::plugin::Plugin;
use crate::worker::{Controller, PlainReporter, Worker, WorkerConfig};
use anyhow::Context;

fn main() -> ExitCode {
    let cli = cli::parse();
    let verbose = cli.worker.verbose;
    let result = match cli.command {
        Some(Command::Child(args)) => child_mode::run(args),
        Some(Command::Check(args)) => check::run(&args),
        Some(Command::Migrate(args)) => migrate::run(&args),
        Some(other) => commands::run(other),
        None => run_worker(cli.worker),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("castor: error: {err:#}");
            if verbose > 0
                && let Some(plugin::LoadError::IncompatibleAbi {
                    details: Some(details),
                    ..
                }) = err.downcast_ref::<plugin::LoadError>()
            {
                eprintln!("\n{details}");
            }
            if err.downcast_ref::<logging::LogError>().is_some() {
                return ExitCode::from(2);
            }
            if err.downcast_ref::<migrate::Pending>().is_some() {
                return ExitCode::from(migrate::PENDING_EXIT);
            }
            ExitCode::FAILURE
        }
    }
}

fn run_worker(mut args: WorkerArgs) -> anyhow::Result<()> {
    let target = args
        .target
        .take()
        .context("no LIB[:MANAGER] target given")?;
    let directives = logging::directives(args.quiet, args.verbose);
    let format = args.log_format;
    let logging = logging::init(&directives, format, args.interactive)?;
    let result = run_logged(target, args, &logging);
    if let Err(err) = &result
        && format == logging::LogFormat::Json
    {
        // The error main prints on stderr, in the JSON stream too.
        tracing::error!(target: "castor", error = %format!("{err:#}"), "castor: error: {err:#}");
    }
    result
}

fn run_logged(
    target: cli::PluginTarget,
    args: WorkerArgs,
    logging: &logging::Logging,
) -> anyhow::Result<()> {
    let plugin = Plugin::load(&target.library)?;
    let library = plugin.path().to_path_buf();
    let attach = plugin.attach();
    let manager = plugin.into_manager(&target.manager)?;
    // Said once the library loaded and has that manager, so it never precedes an error
    // it has nothing to do with.
    if !target.explicit_manager {
        tracing::info!(
            target: logging::BANNER,
            "castor: no manager named in the target; using `{}` ({}:{})",
            target.manager,
            target.library.display(),
            target.manager
        );
    }
    let database = args
        .db
        .clone()
        .unwrap_or_else(|| manager.database.as_str().into());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = args.threads.map_or(cores, usize::from);
    let processes = args.processes.map_or(cores, usize::from);
    // Bound before anything runs: an address in use is an error at start.
    let metrics = args.metrics.map(metrics::Endpoint::bind).transpose()?;
    let metrics_addr = metrics.as_ref().and_then(metrics::Endpoint::local_addr);
    let tasks = plugin::describe_tasks(&manager.tasks);
    let manager_name = manager.name.to_string();
    let worker = Worker::new(WorkerConfig {
        library: library.clone(),
        manager,
        database: database.clone(),
        threads,
        processes,
        max_tasks_per_child: args.child_max_tasks,
        child_memory: args.child_memory,
        kill_grace: args.kill_grace,
        grace: args.grace,
        lease: args.lease,
        durable: args.durable,
        migrate: !args.no_migrate,
        retention: args.retention,
        attach,
        log_filter: logging.task_filter().to_owned(),
        metrics,
    })?;
    let check = worker.start_check();
    let database_line = if check.whole {
        database.to_string()
    } else {
        format!(
            "{} (checked for {} without reaching the end of its {}; `castor check` checks \
             all of it)",
            database,
            castor_store::format::format_duration(check.took),
            castor_store::format::format_size(usize::try_from(check.bytes).unwrap_or(usize::MAX))
        )
    };
    tracing::info!(
        target: logging::BANNER,
        worker_id = worker.id(),
        version = env!("CARGO_PKG_VERSION"),
        library = %library.display(),
        manager = %manager_name,
        tasks = %tasks,
        database = %database_line,
        threads,
        processes = worker.processes(),
        "castor {} worker {} started",
        env!("CARGO_PKG_VERSION"),
        worker.id()
    );
    if let Some(addr) = metrics_addr {
        tracing::info!(
            target: logging::BANNER,
            metrics = %addr,
            "metrics on http://{addr}/metrics"
        );
    }
    // Handlers first: "Ctrl+C to stop" is a promise.
    let controller = worker.controller();
    forward_signals(controller.clone())?;
    if args.interactive {
        let header = dashboard::Header {
            library: library.display().to_string(),
            manager: manager_name,
            database: database.to_string(),
            worker_id: worker.id().to_owned(),
            uptime: std::time::Duration::ZERO,
            threads,
            threads_busy: 0,
            processes: worker.processes(),
            processes_busy: 0,
        };
        let summary = dashboard::run(worker, header, &database, controller)?;
        tracing::info!(
            target: logging::BANNER,
            completed = summary.completed,
            failed = summary.failed,
            abandoned = summary.abandoned,
            "castor: stopped: {} completed, {} failed, {} abandoned",
            summary.completed,
            summary.failed,
            summary.abandoned
        );
        return Ok(());
    }
    tracing::info!(target: logging::BANNER, "Ctrl+C to stop");
    let mut reporter = PlainReporter::new();
    worker.run(&mut reporter)?;
    Ok(())
}

/// Ctrl+C or SIGTERM stops the worker gracefully; a second one stops it now.
fn forward_signals(controller: Controller) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("castor-signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                controller.shutdown();
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}
