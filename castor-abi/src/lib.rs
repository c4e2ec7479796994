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
//! - [`store`]: the only code that speaks SQL (used by the `castor` worker and CLI too).
//! - [`abi`], [`host`]: the stable boundary the worker loads libraries through.
//! - [`codec`]: the bincode wire format of arguments and results.
#![deny(missing_docs)]

// Lets the macros' `::castor_abi::` paths resolve inside this crate's own tests.
extern crate self as castor_abi;

pub mod abi;
mod backend;
mod capture;
pub mod codec;
pub mod cron;
mod error;
mod handle;
pub mod host;
mod manager;
pub mod schedule;
pub mod state;
pub mod store;
mod task;

#[doc(hidden)]
pub mod __private;

pub use castor_abi_macros::{export_managers, task};

pub use crate::abi::TaskMode;
pub use crate::backend::LogLevel;
pub use crate::error::{DispatchError, JoinError, StatusError, StoreError};
pub use crate::handle::{Resolve, TaskHandle, TaskInfo};
pub use crate::manager::{Client, Dispatch, Manager, OpenError, is_valid_manager_name};
pub use crate::schedule::{Missed, Periodic, PeriodicSpec, Schedule, ScheduleHandle, ScheduleInfo};
pub use crate::state::{AttemptOutcome, Backoff, TaskState};
pub use crate::store::{AttemptError, CancelOutcome, TaskLog};
pub use crate::task::{DelayOptions, TaskContext, TaskError, TaskSpec};
pub use uuid::Uuid;

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

/// Formats microseconds since the Unix epoch as `2026-11-27T15:04:05.123Z` (UTC).
pub fn format_timestamp(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let millis = us.rem_euclid(1_000_000) / 1000;
    let (year, month, day) = cron::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Formats a duration for people: `850us`, `12.3ms`, `2.0s`, `3m 20s`, `2h 5m`.
pub fn format_duration(d: std::time::Duration) -> String {
    let micros = d.as_micros();
    if micros < 1_000 {
        format!("{micros}us")
    } else if micros < 1_000_000 {
        format!("{:.1}ms", micros as f64 / 1e3)
    } else if micros < 60_000_000 {
        format!("{:.1}s", micros as f64 / 1e6)
    } else if micros < 3_600_000_000 {
        let secs = d.as_secs();
        format!("{}m {}s", secs / 60, secs % 60)
    } else {
        let secs = d.as_secs();
        format!("{}h {}m", secs / 3600, (secs % 3600) / 60)
    }
}

/// Formats a byte count for people: `312 bytes`, `1,048,575 bytes`, `64 MiB`,
/// `100.0 MiB (104,857,605 bytes)` (exact where rounding would hide a limit's edge).
pub fn format_size(bytes: usize) -> String {
    const MIB: usize = 1 << 20;
    let digits = bytes.to_string();
    let mut exact = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            exact.push(',');
        }
        exact.push(c);
    }
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= MIB {
        format!("{:.1} MiB ({exact} bytes)", bytes as f64 / MIB as f64)
    } else {
        format!("{exact} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::{format_duration, format_size};
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_iso() {
        assert_eq!(super::format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::format_timestamp(1_795_791_845_123_456),
            "2026-11-27T15:04:05.123Z"
        );
        assert_eq!(
            super::format_timestamp(951_782_400_000_000),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(Duration::from_micros(850)), "850us");
        assert_eq!(format_duration(Duration::from_micros(12_345)), "12.3ms");
        assert_eq!(format_duration(Duration::from_secs(2)), "2.0s");
        assert_eq!(format_duration(Duration::from_secs(200)), "3m 20s");
        assert_eq!(format_duration(Duration::from_secs(7500)), "2h 5m");
    }

    #[test]
    fn sizes_read_plainly() {
        assert_eq!(format_size(312), "312 bytes");
        assert_eq!(format_size(1_048_575), "1,048,575 bytes");
        assert_eq!(format_size(64 << 20), "64 MiB");
        assert_eq!(format_size(100 << 20 | 5), "100.0 MiB (104,857,605 bytes)");
    }
}
