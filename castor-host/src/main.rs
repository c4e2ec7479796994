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
mod limits;
mod logging;
mod metrics;
mod migrate;
mod plugin;
mod protocol;
mod reload;
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
        Some(Command::CheckLibrary(args)) => reload::check_mode(&args),
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
    let Some(pending) = result? else {
        return Ok(());
    };
    // The worker stopped for a reload: stdout back in place (the dashboard already gave
    // the terminal back), then this process becomes castor on the new build.
    drop(logging);
    Err(reload::exec(&pending).into())
}

/// Runs the worker; `Some` when it stopped for a reload onto that build.
fn run_logged(
    target: cli::PluginTarget,
    args: WorkerArgs,
    logging: &logging::Logging,
) -> anyhow::Result<Option<reload::Pending>> {
    // With --reload the worker runs a private copy: a build written over the watched file
    // never changes the code it has mapped.
    let copies = if args.reload {
        Some(reload::Copies::start(&target.library)?)
    } else {
        None
    };
    let (plugin, shown_library) = match &copies {
        Some(copies) => (
            Plugin::load(copies.current()).map_err(|e| e.shown_as(&target.library))?,
            target
                .library
                .canonicalize()
                .unwrap_or_else(|_| target.library.clone()),
        ),
        None => {
            let plugin = Plugin::load(&target.library)?;
            let path = plugin.path().to_path_buf();
            (plugin, path)
        }
    };
    let library = plugin.path().to_path_buf();
    let attach = plugin.attach();
    let manager = plugin
        .into_manager(&target.manager)
        .map_err(|e| e.shown_as(&shown_library))?;
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
    let checked_tasks = reload::checked_tasks(&manager);
    let manager_name = manager.name.to_string();
    let worker = Worker::new(WorkerConfig {
        library,
        shown_library: shown_library.clone(),
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
        library = %shown_library.display(),
        manager = %manager_name,
        tasks = %tasks,
        database = %database_line,
        threads,
        processes = worker.processes(),
        "castor {} worker {} started",
        env!("CARGO_PKG_VERSION"),
        worker.id()
    );
    if let Some(after) = copies.as_ref().and_then(reload::Copies::reloaded_after) {
        tracing::info!(
            target: logging::BANNER,
            "castor: reloaded {} ({} after the old build stopped claiming)",
            shown_library.display(),
            castor_store::format::format_duration(after)
        );
    }
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
    let slot = reload::Slot::default();
    if let Some(copies) = &copies {
        reload::watch(
            copies,
            manager_name.clone(),
            checked_tasks,
            controller.clone(),
            slot.clone(),
        )?;
        tracing::info!(
            target: logging::BANNER,
            "watching {} for new builds (--reload)",
            shown_library.display()
        );
    }
    let summary = if args.interactive {
        let header = dashboard::Header {
            library: shown_library.display().to_string(),
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
        summary
    } else {
        tracing::info!(target: logging::BANNER, "Ctrl+C to stop");
        let mut reporter = PlainReporter::new();
        worker.run(&mut reporter)?
    };
    let pending = if summary.reload {
        reload::take(&slot)
    } else {
        None
    };
    if pending.is_none()
        && let Some(copies) = copies
    {
        copies.remove_all();
    }
    Ok(pending)
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
