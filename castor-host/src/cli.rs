//! Defines castor's command line: the worker's flags, the `LIB[:MANAGER]` target (parsed
//! once into a [`PluginTarget`]), and the subcommands.

use std::path::PathBuf;

use castor_store::Database;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::logging::LogFormat;

/// The manager used when a target names none, as in Python's `main:manager`.
pub const DEFAULT_MANAGER: &str = "manager";

/// Runs the background tasks of a Castor task library.
#[derive(Debug, Parser)]
#[command(
    name = "castor",
    version,
    about = "Runs the background tasks of a Castor task library.",
    long_about = "Runs the background tasks of a Castor task library.\n\n\
        castor ./target/release/libmyapp.so:manager loads the library, opens the manager's \
        SQLite database and runs its tasks until Ctrl+C.\n\n\
        Exit codes: 0 on a clean stop, 1 on an error, 2 on bad usage.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// The worker's flags.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The task library and manager: PATH/TO/libNAME.so[:MANAGER] (MANAGER defaults to
    /// `manager`).
    #[arg(value_name = "LIB[:MANAGER]", required = true)]
    pub target: Option<PluginTarget>,

    /// Threads for thread tasks [default: number of cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,

    /// Child processes for process tasks [default: number of cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub processes: Option<u16>,

    /// Replace a process-mode child after it ran this many tasks.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub child_max_tasks: u32,

    /// Cap each process-mode child's memory (address space), e.g. 512M or 2G; a task
    /// that needs more fails with an out-of-memory error instead of starving the machine.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub child_memory: Option<u64>,

    /// When a process task must stop (timeout, cancellation, shutdown): how long between
    /// SIGTERM and SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub kill_grace: Duration,

    /// Use this database instead of the manager's: a SQLite file (`tasks.db`,
    /// `sqlite:///abs/path.db`) or a PostgreSQL URL (`postgres://user@host/db`). Also read
    /// from CASTOR_DATABASE.
    #[arg(long, value_name = "DATABASE", env = "CASTOR_DATABASE", value_parser = parse_database)]
    pub db: Option<Database>,

    /// On Ctrl+C or SIGTERM, how long running tasks may take to finish before the worker
    /// gives up on them (they are retried elsewhere under their retry policy).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub grace: Duration,

    /// How long a claimed task stays owned by this worker without a heartbeat; another
    /// worker rescues it after that.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub lease: Duration,

    /// Delete finished tasks (completed, discarded, cancelled) this long after they
    /// finish; `join` on a deleted task says it was pruned.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    pub retention: Duration,

    /// Make every commit survive a power loss (synchronous=FULL); slower.
    #[arg(long)]
    pub durable: bool,

    /// Refuse a database that needs a schema migration instead of applying it, for
    /// operators who run `castor migrate up` themselves. Also set by CASTOR_NO_MIGRATE=1.
    #[arg(long, env = "CASTOR_NO_MIGRATE", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_migrate: bool,

    /// Show a live dashboard instead of log lines.
    #[arg(short, long)]
    pub interactive: bool,

    /// Watch the library file and switch to each new build once it is complete and a
    /// check in a separate process loaded it: claims stop, running tasks finish within
    /// --grace, and castor re-executes itself on the new build. A build that fails the
    /// check is reported and the running one keeps serving. The worker loads a private
    /// copy of the library, so a build written in place never touches it.
    #[arg(long)]
    pub reload: bool,

    /// Print only failures and lifecycle events, not every completed task (the log
    /// filter `info,castor::task=warn`; RUST_LOG, when set, wins).
    #[arg(short, long)]
    pub quiet: bool,

    /// More detail: debug log lines (task logs among them; -vv: trace) and in errors
    /// (e.g. abi_stable's full report on an incompatible library).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log lines as text, or as one JSON object per line (with task_id, task, attempt,
    /// duration_ms, outcome, ..). Filter them with RUST_LOG (default info).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Serve Prometheus metrics (OpenMetrics text) on http://ADDR/metrics, e.g.
    /// 127.0.0.1:9464 (0.0.0.0:9464 to be scraped from other hosts).
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_address)]
    pub metrics: Option<std::net::SocketAddr>,
}

/// `127.0.0.1:9464`, `[::1]:9464` or `localhost:9464`: an address to listen on.
fn parse_listen_address(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let expected = "expected HOST:PORT, e.g. 127.0.0.1:9464";
    s.to_socket_addrs()
        .map_err(|e| format!("{e} ({expected})"))?
        .next()
        .ok_or_else(|| format!("`{s}` names no address ({expected})"))
}

/// Subcommands (besides running a worker).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List tasks, newest first.
    List(ListArgs),
    /// Show one task: arguments, result, every attempt's error, and its log.
    Show(ShowArgs),
    /// Give discarded or cancelled tasks another attempt.
    Retry(IdsArgs),
    /// Cancel tasks: one not started never runs; a running one is stopped.
    Cancel(IdsArgs),
    /// Delete tasks in the given states (never running ones).
    Purge(PurgeArgs),
    /// Counts by state and task, throughput, workers, and tasks no worker runs.
    Stats(DbArgs),
    /// List repeating and periodic schedules with their next run; pause, resume or
    /// remove one.
    Schedules(SchedulesArgs),
    /// Global concurrency and rate limits: those in force (declared or overridden), what
    /// runs and what they hold back; `set` or `clear` a run-time override.
    Limits(LimitsArgs),
    /// Check a database for damage (PRAGMA integrity_check) and show its schema version
    /// and task counts; exits 1 on a problem.
    Check(CheckArgs),
    /// Show the database's applied and pending schema migrations (`status`, the default;
    /// exits 3 when some are pending), or apply the pending ones (`up`).
    Migrate(MigrateArgs),
    /// Internal: a process-mode child (started by the worker itself).
    #[command(name = "__child", hide = true)]
    Child(ChildArgs),
    /// Internal: checks a new build for `--reload` (started by the worker itself).
    #[command(name = "__check-library", hide = true)]
    CheckLibrary(CheckLibraryArgs),
}

/// `castor __check-library`: load a library, check its ABI, find a manager, print its
/// tasks as JSON.
#[derive(Debug, Args)]
pub struct CheckLibraryArgs {
    /// The library to load (a private copy of the watched file).
    pub library: PathBuf,
    /// The manager that must exist.
    #[arg(long)]
    pub manager: String,
    /// The watched file, named in errors instead of the copy.
    #[arg(long)]
    pub shown_as: PathBuf,
}

/// Which database a subcommand reads, and how it prints.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// The database (default: the library's manager's, with --lib; else ./tasks.db): a
    /// SQLite file (`sqlite:///abs/path.db`) or a PostgreSQL URL. Also read from
    /// CASTOR_DATABASE.
    #[arg(long, value_name = "DATABASE", global = true, env = "CASTOR_DATABASE", value_parser = parse_database)]
    pub db: Option<Database>,

    /// The task library: finds the manager's database, and decodes arguments and results.
    #[arg(long, value_name = "LIB[:MANAGER]", global = true)]
    pub lib: Option<PluginTarget>,

    /// Print JSON instead of a table, for scripts.
    #[arg(long, global = true)]
    pub json: bool,

    /// Refuse a database that needs a schema migration instead of applying it, for
    /// operators who run `castor migrate up` themselves. Also set by CASTOR_NO_MIGRATE=1.
    #[arg(long, global = true, env = "CASTOR_NO_MIGRATE", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_migrate: bool,
}

/// Which database `check` and `migrate` read, and how they print (as [`DbArgs`], without
/// `--no-migrate`: neither applies a migration it was not asked to).
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The database (default: the library's manager's, with --lib; else ./tasks.db): a
    /// SQLite file (`sqlite:///abs/path.db`) or a PostgreSQL URL. Also read from
    /// CASTOR_DATABASE.
    #[arg(long, value_name = "DATABASE", global = true, env = "CASTOR_DATABASE", value_parser = parse_database)]
    pub db: Option<Database>,

    /// The task library whose manager's database to use.
    #[arg(long, value_name = "LIB[:MANAGER]", global = true)]
    pub lib: Option<PluginTarget>,

    /// Print JSON instead of a table, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `castor list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Only tasks in this state (repeatable).
    #[arg(long, value_name = "STATE")]
    pub state: Vec<castor_abi::TaskState>,

    /// Only tasks with this name.
    #[arg(long, value_name = "NAME")]
    pub task: Option<String>,

    /// Only tasks of this manager.
    #[arg(long, value_name = "NAME")]
    pub manager: Option<String>,

    /// At most this many.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

/// `castor show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The task's id.
    pub id: castor_abi::Uuid,

    #[command(flatten)]
    pub db: DbArgs,
}

/// Subcommands that act on tasks by id.
#[derive(Debug, Args)]
pub struct IdsArgs {
    /// The tasks' ids.
    #[arg(required = true)]
    pub ids: Vec<castor_abi::Uuid>,

    #[command(flatten)]
    pub db: DbArgs,
}

/// `castor schedules`.
#[derive(Debug, Args)]
pub struct SchedulesArgs {
    #[command(subcommand)]
    pub action: Option<ScheduleAction>,

    #[command(flatten)]
    pub db: DbArgs,
}

/// `castor limits`.
#[derive(Debug, Args)]
pub struct LimitsArgs {
    #[command(subcommand)]
    pub action: Option<LimitAction>,

    /// The manager whose tasks' limits to show or change (default: --lib's manager; when
    /// showing, every manager's).
    #[arg(long, value_name = "NAME", global = true)]
    pub manager: Option<String>,

    #[command(flatten)]
    pub db: DbArgs,
}

/// What `castor limits` changes.
#[derive(Debug, Subcommand)]
pub enum LimitAction {
    /// Override a task's declared limits for every worker on the database (a flag not
    /// given keeps the override's value for it).
    Set {
        /// The task's name.
        task: String,
        /// At most this many attempts running at once across all workers (per key, if
        /// the task declares a concurrency key).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        concurrency: Option<u32>,
        /// At most this many starts per second, minute or hour (`20/s`, `600/m`, `5/h`).
        #[arg(long, value_name = "N/UNIT")]
        rate: Option<castor_store::Rate>,
    },
    /// Remove a task's override: its declared limits apply again.
    Clear {
        /// The task's name.
        task: String,
    },
}

/// What `castor schedules` does to one schedule.
#[derive(Debug, Subcommand)]
pub enum ScheduleAction {
    /// Stop creating runs until resumed.
    Pause {
        /// The schedule's id.
        id: i64,
    },
    /// Create runs again.
    Resume {
        /// The schedule's id.
        id: i64,
    },
    /// Delete the schedule (its runs stay).
    Remove {
        /// The schedule's id.
        id: i64,
    },
}

/// `castor check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The task library whose manager's database to check (as `--lib`).
    #[arg(value_name = "LIB[:MANAGER]")]
    pub target: Option<PluginTarget>,

    #[command(flatten)]
    pub db: InspectArgs,
}

/// `castor migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(subcommand)]
    pub action: Option<MigrateAction>,

    #[command(flatten)]
    pub db: InspectArgs,
}

/// What `castor migrate` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum MigrateAction {
    /// The applied migrations (with when) and the pending ones; never writes. Exits 0 when
    /// the database is up to date, 3 when migrations are pending, 1 on an error (a
    /// database newer than this castor among them).
    Status,
    /// Apply the pending migrations, oldest first, each in its own transaction (creates
    /// the database if there is none). Exits 0 when the database is up to date, 1 on an
    /// error.
    Up,
}

/// `castor purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Delete tasks in this state (repeatable; `finished` means completed, discarded and
    /// cancelled).
    #[arg(long, value_name = "STATE", required = true, value_parser = parse_purge_state)]
    pub state: Vec<Vec<castor_abi::TaskState>>,

    /// Only tasks that finished (or were dispatched, if unfinished) longer ago than this.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub older_than: Duration,

    #[command(flatten)]
    pub db: DbArgs,
}

fn parse_purge_state(s: &str) -> Result<Vec<castor_abi::TaskState>, String> {
    use castor_store::TaskState;
    match s {
        "finished" => Ok(vec![
            TaskState::Completed,
            TaskState::Discarded,
            TaskState::Cancelled,
        ]),
        "running" => Err("running tasks cannot be purged (cancel them first)".into()),
        other => other
            .parse::<TaskState>()
            .map(|s| vec![s])
            .map_err(|e| e.to_string()),
    }
}

/// Arguments of the hidden child mode.
#[derive(Debug, Args)]
pub struct ChildArgs {
    /// The library to load.
    #[arg(long)]
    pub library: PathBuf,
    /// The manager whose tasks to run.
    #[arg(long)]
    pub manager: String,
    /// The worker's pid (the child exits if its parent is not this process).
    #[arg(long)]
    pub parent: u32,
    /// Address-space limit in bytes.
    #[arg(long)]
    pub memory_limit: Option<u64>,
    /// What the library forwards to task logs (the worker's, see `logging`).
    #[arg(long, default_value = "info")]
    pub log_filter: String,
}

/// Parses the command line. A first argument that names no file but is a near miss of a
/// subcommand's name (`lsit`, `shwo`) is a usage error with a hint (exit 2), instead of a
/// library path that is not found.
pub fn parse() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(word) = args.get(1).and_then(|a| a.to_str())
        && let Some(meant) = mistyped_subcommand(word)
    {
        use clap::CommandFactory;
        Cli::command()
            .error(
                clap::error::ErrorKind::InvalidSubcommand,
                format!(
                    "unrecognized subcommand `{word}` (and no library file by that name): did \
                     you mean `{meant}`?"
                ),
            )
            .exit();
    }
    Cli::parse_from(args)
}

/// The subcommand `word` looks like a typo of: none if `word` could be a library (an
/// existing file, or anything with a `/`, `.` or `:`), is a subcommand, or is not close to
/// any. Close means one or two edits (a swap of neighbours is one), and at most a third of
/// the name.
pub fn mistyped_subcommand(word: &str) -> Option<String> {
    use clap::CommandFactory;
    if word.is_empty()
        || word.starts_with('-')
        || word.contains(['/', '.', ':'])
        || std::path::Path::new(word).exists()
    {
        return None;
    }
    Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| {
            let name = c.get_name();
            (strsim::osa_distance(word, name), name.to_owned())
        })
        .filter(|(distance, name)| (1..=2).contains(distance) && distance * 3 <= name.len())
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name)
}

/// `path/to/lib.so[:MANAGER]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginTarget {
    /// The library path.
    pub library: PathBuf,
    /// The manager's name.
    pub manager: String,
    /// False when the target named no manager and [`DEFAULT_MANAGER`] was assumed.
    pub explicit_manager: bool,
}

/// A target that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Nothing before the colon.
    #[error(
        "the target has no library path before the colon (expected LIB[:MANAGER], e.g. ./target/release/libmyapp.so:manager)"
    )]
    EmptyLibrary,
    /// A colon with nothing after it.
    #[error(
        "the target has an empty manager name after the colon (expected LIB[:MANAGER], e.g. {library}:manager)"
    )]
    EmptyManager {
        /// The library part.
        library: String,
    },
    /// A manager name with characters a manager name cannot have.
    #[error("invalid manager name {name:?} in the target: use letters, digits and underscores")]
    InvalidManager {
        /// The name given.
        name: String,
    },
}

impl FromStr for PluginTarget {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The manager is after the last colon, unless that colon is part of the path
        // (a `/` after it).
        let (library, manager) = match s.rfind(':') {
            Some(i) if !s[i + 1..].contains('/') => (&s[..i], Some(&s[i + 1..])),
            _ => (s, None),
        };
        if library.is_empty() {
            return Err(TargetError::EmptyLibrary);
        }
        let (manager, explicit_manager) = match manager {
            Some("") => {
                return Err(TargetError::EmptyManager {
                    library: library.to_owned(),
                });
            }
            Some(name) if !castor_abi::is_valid_manager_name(name) => {
                return Err(TargetError::InvalidManager {
                    name: name.to_owned(),
                });
            }
            Some(name) => (name.to_owned(), true),
            None => (DEFAULT_MANAGER.to_owned(), false),
        };
        Ok(PluginTarget {
            library: PathBuf::from(library),
            manager,
            explicit_manager,
        })
    }
}

/// Parses `250ms`, `30s`, `5m`, `2h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 250ms, 30s, 5m, 2h"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1e3,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        "d" => number * 86400.0,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {s:?}: use ms, s, m, h or d"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Parses `512M`, `2G`, `64k` or a number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 512M or 2G"))?;
    let factor: u64 = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches(['B', 'I'])
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {s:?}: use K, M, G or T"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// A `--db` setting: never fails to parse (a setting no driver takes is refused when it is
/// opened, with the list of what castor accepts).
fn parse_database(text: &str) -> Result<Database, String> {
    Ok(Database::parse(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("64kib"), Ok(64 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    fn target(s: &str) -> Result<PluginTarget, TargetError> {
        s.parse()
    }

    #[test]
    fn targets_parse_like_python_module_colon_attr() {
        assert_eq!(
            target("./target/release/libquickstart.so:manager"),
            Ok(PluginTarget {
                library: "./target/release/libquickstart.so".into(),
                manager: "manager".into(),
                explicit_manager: true,
            })
        );
        assert_eq!(
            target("libx.so"),
            Ok(PluginTarget {
                library: "libx.so".into(),
                manager: "manager".into(),
                explicit_manager: false,
            })
        );
        assert_eq!(
            target("libx.so:reports").map(|t| t.manager),
            Ok("reports".into())
        );
        // A colon inside the path is part of the path.
        assert_eq!(
            target("/mnt/c:/libx.so").map(|t| (t.library, t.explicit_manager)),
            Ok(("/mnt/c:/libx.so".into(), false))
        );
    }

    #[test]
    fn malformed_targets_say_what_is_wrong() {
        assert_eq!(
            target("libx.so:"),
            Err(TargetError::EmptyManager {
                library: "libx.so".into()
            })
        );
        assert_eq!(target(":manager"), Err(TargetError::EmptyLibrary));
        assert_eq!(
            target("libx.so:my-manager"),
            Err(TargetError::InvalidManager {
                name: "my-manager".into()
            })
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn near_misses_of_subcommands_are_typos() {
        for (typo, meant) in [
            ("lsit", "list"),
            ("shwo", "show"),
            ("lst", "list"),
            ("retyr", "retry"),
            ("cancle", "cancel"),
            ("stat", "stats"),
            ("schedule", "schedules"),
        ] {
            assert_eq!(mistyped_subcommand(typo).as_deref(), Some(meant), "{typo}");
        }
        for word in [
            "list",
            "frobnicate",
            "ls",
            "libtasks.so",
            "./list",
            "lsit:manager",
            "",
            "-v",
        ] {
            assert_eq!(mistyped_subcommand(word), None, "{word}");
        }
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
