//! Castor's app side: declare background tasks as ordinary typed Rust functions in a
//! library, dispatch them from your app, and let the `castor` worker run them, with
//! nothing between the two but one SQLite file.
//!
//! A task library is built as both a `cdylib` (which `castor ./libmyapp.so:manager`
//! loads) and an `rlib` (which your app links to call `delay`). `#[task]` keeps the
//! function callable as it is and adds a module of the same name with a typed `delay`;
//! [`manager!`] names a task set and its database; [`export_managers!`] makes the
//! library loadable by the worker.
//!
//! # Example
//!
//! ```
//! use castor_abi::TaskState;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! pub struct Sent {
//!     pub recipient: String,
//!     pub status: String,
//! }
//!
//! /// Runs on the worker's thread pool.
//! #[castor_abi::task(thread)]
//! pub fn send_email(recipient: String) -> Sent {
//!     Sent { recipient, status: "sent".into() }
//! }
//!
//! castor_abi::manager!(pub manager, db = "tasks.db", tasks = [send_email]);
//! castor_abi::export_managers!(manager);
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("castor-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! // The function is still a function:
//! assert_eq!(send_email("ada@example.com".into()).status, "sent");
//!
//! // The app opens the manager (no global state) and dispatches through it.
//! let client = manager().with_database(dir.join("tasks.db")).open()?;
//! let handle = send_email::delay(&client, "ada@example.com".into())?;
//! assert_eq!(handle.status()?, TaskState::Available);
//! // With `castor ./libmyapp.so:manager` running: `handle.join(timeout)?` returns a `Sent`.
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`task`], [`manager!`], [`export_managers!`]: declaring tasks and managers.
//! - [`Manager`], [`Client`]: a task set and its database; the same, opened.
//! - [`TaskHandle`]: `id`, `status`, `join`, `resolve`.
//! - [`TaskContext`], [`TaskError`]: what a running task can use and return.
//! - [`TaskState`], [`state`]: the lifecycle and its transition function.
//! - [`Database`]: where the tasks are (`tasks.db`, `sqlite:///abs/path.db`).
//! - [`abi`]: the stable boundary the worker loads libraries through (used by the
//!   generated code and the worker, not by your code).
//! - [`codec`]: the bincode wire format of arguments and results.
//!
//! The database itself is reached through `castor-store`, Castor's storage engine, which
//! apps never name: the types an app sees (states, errors, log lines) are re-exported
//! here.
#![deny(missing_docs)]

// Lets the macros' `::castor_abi::` paths resolve inside this crate's own tests.
extern crate self as castor_abi;

/// The stable boundary the worker loads libraries through: the `castor-plugin-abi` crate,
/// whose version is the plugin ABI version ([`abi::ABI_VERSION`]), not castor-abi's.
pub use castor_plugin_abi as abi;
mod backend;
mod capture;
pub mod codec;
mod error;
pub mod fingerprint;
mod handle;
mod manager;
pub mod schedule;
mod task;

#[doc(hidden)]
pub mod __private;

pub use castor_abi_macros::{export_managers, task};

pub use crate::abi::TaskMode;
pub use crate::error::{DispatchError, JoinError, StatusError};
pub use crate::fingerprint::{FingerprintSource, Fingerprints};
pub use crate::handle::{Resolve, TaskHandle, TaskInfo};
pub use crate::manager::{Client, Dispatch, Manager, OpenError, is_valid_manager_name};
pub use crate::schedule::{Periodic, PeriodicSpec, Schedule, ScheduleHandle};
pub use crate::task::{DelayOptions, TaskContext, TaskError, TaskLimits, TaskSpec};
pub use castor_store::{
    AttemptError, Backoff, Cadence, CancelOutcome, CertificateFault, Database, ErrorKind, LogLevel,
    Missed, Progress, Rate, ScheduleInfo, SslMode, StoreError, TaskLog, TaskState, TlsProblem,
};
pub use uuid::Uuid;

/// The synchronous `postgres` client crate castor's PostgreSQL driver is built on, for
/// `my_task::delay_in(&mut tx, &client, ..)`, which dispatches inside the app's own
/// transaction: open the connection with [`Client::connect_postgres`] (TLS as the
/// manager's URL says), or with this crate (`castor_abi::postgres::Client`), so that the
/// versions match.
#[cfg(feature = "postgres")]
pub use postgres;

/// Expands its input with castor-abi's `postgres` feature, to nothing without (the
/// `#[task]` macro's `delay_in` goes through it: the feature is castor-abi's, not the
/// app's).
#[cfg(feature = "postgres")]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_postgres {
    ($($item:tt)*) => { $($item)* };
}

/// Expands its input with castor-abi's `postgres` feature, to nothing without.
#[cfg(not(feature = "postgres"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_postgres {
    ($($item:tt)*) => {};
}

/// castor-abi's crate version: the release, which may change without the plugin
/// ABI changing ([`abi::ABI_VERSION`] is what a worker and a library must agree on).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Declares a manager: a function returning the [`Manager`] with this name, database
/// file and tasks, and optionally its periodic tasks ([`Periodic`]: an interval or a cron
/// expression in UTC, with the arguments of every run).
///
/// ```
/// #[castor_abi::task(thread)]
/// fn add(a: i64, b: i64) -> i64 { a + b }
///
/// #[castor_abi::task(thread)]
/// fn cleanup() {}
///
/// castor_abi::manager!(
///     /// The tasks of the accounting app.
///     pub manager, db = "tasks.db", tasks = [add, cleanup],
///     periodic = [
///         cleanup: castor_abi::Periodic::every(std::time::Duration::from_secs(3600)),
///         add: castor_abi::Periodic::cron("0 9 * * mon-fri").with((1, 2)),
///     ]
/// );
///
/// # fn main() {
/// let m = manager();
/// assert_eq!(m.name(), "manager");
/// assert_eq!(m.tasks()[0].name, "add");
/// assert_eq!(m.periodic_tasks().len(), 2);
/// assert!(m.validate().is_ok());
/// # }
/// ```
#[macro_export]
macro_rules! manager {
    (
        $(#[$meta:meta])*
        $vis:vis $name:ident,
        db = $db:expr,
        tasks = [$($($task:ident)::+),* $(,)?]
        $(, periodic = [$($($ptask:ident)::+ : $pwhen:expr),* $(,)?])?
        $(,)?
    ) => {
        $(#[$meta])*
        $vis fn $name() -> $crate::Manager {
            $crate::Manager::new(::core::stringify!($name), $db)
                $(.task($($task)::+::SPEC))*
                $($(.periodic($($ptask)::+::periodic($pwhen)))*)?
        }
    };
}
