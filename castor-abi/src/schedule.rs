//! Repeating tasks: schedules an app creates ([`Schedule`], with `my_task::schedule`)
//! and periodic tasks a manager declares ([`Periodic`]). Each run is its own task row,
//! with its own id and result, linked to its schedule.
//!
//! A worker of the schedule's manager creates each run when it is due, in the same
//! transaction that moves the schedule on, so with several workers on one file every tick
//! runs once. After downtime, [`Missed`] decides what happens to the ticks nobody ran.

use std::any::TypeId;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::Backend;
use crate::error::StatusError;
use crate::handle::TaskHandle;
use crate::task::{DelayOptions, TaskSpec};
use castor_store::cron::Cron;
pub use castor_store::{Cadence, Missed, ScheduleInfo};
use castor_store::{duration_us, now_us};

/// A repeating dispatch: every interval, optionally a number of times or until a time.
///
/// ```
/// use std::time::Duration;
/// use castor_abi::{DelayOptions, Schedule};
///
/// // Five runs, a minute apart, the first in ten seconds, at priority 5.
/// let schedule = Schedule::every(Duration::from_secs(60))
///     .times(5)
///     .options(DelayOptions::new().after(Duration::from_secs(10)).priority(5));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    interval: Option<Duration>,
    times: Option<u32>,
    until: Option<SystemTime>,
    options: DelayOptions,
    missed: Missed,
}

/// A schedule, checked and resolved against its task's declaration.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct ResolvedSchedule {
    /// The interval, in milliseconds.
    pub every_ms: i64,
    /// The run limit.
    pub times: Option<u32>,
    /// No run after this time.
    pub until_us: Option<i64>,
    /// The first tick.
    pub first_run_us: i64,
    /// What happens to missed ticks.
    pub missed: Missed,
    /// Every run's options.
    pub options: crate::abi::DispatchOptionsAbi,
}

impl Schedule {
    /// A schedule with nothing set yet: give it an interval with [`interval`](Self::interval).
    pub fn new() -> Schedule {
        Schedule::default()
    }

    /// A schedule that runs every `interval`, starting now, without end.
    pub fn every(interval: Duration) -> Schedule {
        Schedule::new().interval(interval)
    }

    /// Sets the interval between runs.
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Schedule {
        self.interval = Some(interval);
        self
    }

    /// Stops after this many runs.
    #[must_use]
    pub fn times(mut self, times: u32) -> Schedule {
        self.times = Some(times);
        self
    }

    /// Stops once the next run would be after this time.
    #[must_use]
    pub fn until(mut self, until: SystemTime) -> Schedule {
        self.until = Some(until);
        self
    }

    /// Options of every run: the first run's start (`at` or `after`), priority, attempts,
    /// timeout and backoff. A unique key does not apply to schedules.
    #[must_use]
    pub fn options(mut self, options: DelayOptions) -> Schedule {
        self.options = options;
        self
    }

    /// What to do with ticks missed while no worker ran (default: run them once).
    #[must_use]
    pub fn missed(mut self, missed: Missed) -> Schedule {
        self.missed = missed;
        self
    }

    /// Checks the combination before anything is written.
    pub(crate) fn resolve(&self, spec: &TaskSpec) -> Result<ResolvedSchedule, String> {
        let Some(interval) = self.interval else {
            let given = match (self.times, self.until) {
                (Some(_), _) => "a count (times)",
                (None, Some(_)) => "an end time (until)",
                (None, None) => "a schedule",
            };
            return Err(format!(
                "{given} needs an interval: use Schedule::every(duration)"
            ));
        };
        if interval.is_zero() {
            return Err("the interval must be longer than zero".into());
        }
        if self.times == Some(0) {
            return Err("`times` must be at least 1".into());
        }
        if self.options.has_unique_key() {
            return Err("a unique key applies to single dispatches, not to schedules".into());
        }
        let options = self.options.resolve(spec)?;
        let now = now_us();
        let first_run_us = options.run_at_us.into_option().unwrap_or(now);
        let until_us = match self.until {
            None => None,
            Some(until) => {
                let until = until
                    .duration_since(UNIX_EPOCH)
                    .map_err(|_| "the end time is before 1970".to_owned())
                    .map(duration_us)?;
                if until <= now {
                    return Err("the end time (until) is in the past".into());
                }
                if until < first_run_us {
                    return Err("the end time (until) is before the first run".into());
                }
                Some(until)
            }
        };
        Ok(ResolvedSchedule {
            every_ms: i64::try_from(interval.as_millis())
                .unwrap_or(i64::MAX)
                .max(1),
            times: self.times,
            until_us,
            first_run_us,
            missed: self.missed,
            options,
        })
    }
}

/// A periodic task of a manager: when it runs, with what arguments. Declared in
/// [`manager!`](crate::manager) as `periodic = [my_task: Periodic::every(..)]`.
#[derive(Debug, Clone)]
pub struct Periodic<A> {
    cadence: Result<Cadence, String>,
    args: Option<A>,
    missed: Missed,
    name: Option<String>,
}

impl<A> Periodic<A> {
    /// Every `interval`, counted from when the first worker first saw the declaration.
    pub fn every(interval: Duration) -> Periodic<A> {
        Periodic {
            cadence: if interval.is_zero() {
                Err("the interval must be longer than zero".into())
            } else {
                Ok(Cadence::Every(interval))
            },
            args: None,
            missed: Missed::Skip,
            name: None,
        }
    }

    /// At the times a cron expression matches, in UTC (see [`Cron`]).
    pub fn cron(expression: &str) -> Periodic<A> {
        Periodic {
            cadence: expression
                .parse::<Cron>()
                .map(Cadence::Cron)
                .map_err(|e| e.to_string()),
            args: None,
            missed: Missed::Skip,
            name: None,
        }
    }

    /// The arguments of every run (needed unless the task takes none).
    #[must_use]
    pub fn with(mut self, args: A) -> Periodic<A> {
        self.args = Some(args);
        self
    }

    /// What to do with ticks missed while no worker ran (default: skip them).
    #[must_use]
    pub fn missed(mut self, missed: Missed) -> Periodic<A> {
        self.missed = missed;
        self
    }

    /// Names the schedule (default: the task's name); needed to declare one task twice.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Periodic<A> {
        self.name = Some(name.into());
        self
    }
}

impl<A: Serialize + 'static> Periodic<A> {
    /// Binds the declaration to its task.
    pub fn into_spec(self, spec: TaskSpec) -> PeriodicSpec {
        self.into_spec_encoded(spec, crate::codec::encode::<A>)
    }
}

impl<A: 'static> Periodic<A> {
    /// [`into_spec`](Self::into_spec) with the task's own encoder, which carries the
    /// serde bounds (the generated `my_task::periodic` does this).
    #[doc(hidden)]
    pub fn into_spec_encoded(
        self,
        spec: TaskSpec,
        encode: fn(&A) -> Result<Vec<u8>, crate::codec::EncodeError>,
    ) -> PeriodicSpec {
        let args = match &self.args {
            Some(args) => encode(args).map_err(|e| e.to_string()),
            None if TypeId::of::<A>() == TypeId::of::<()>() => {
                crate::codec::encode(&()).map_err(|e| e.to_string())
            }
            None => Err(format!(
                "periodic task `{}` takes arguments: give them with .with(..)",
                spec.name
            )),
        };
        PeriodicSpec {
            task: spec.name,
            name: self.name.unwrap_or_else(|| spec.name.to_owned()),
            cadence: self.cadence,
            args,
            missed: self.missed,
        }
    }
}

/// A periodic declaration bound to its task, as a [`Manager`](crate::Manager) holds it.
/// Problems (a bad cron expression, missing arguments) are kept and reported by
/// [`Manager::validate`](crate::Manager::validate).
#[derive(Debug, Clone)]
pub struct PeriodicSpec {
    /// The task it runs.
    pub task: &'static str,
    /// The schedule's name, unique within the manager.
    pub name: String,
    /// When it runs.
    pub cadence: Result<Cadence, String>,
    /// The encoded arguments of every run.
    pub args: Result<Vec<u8>, String>,
    /// What happens to missed ticks.
    pub missed: Missed,
}

/// A repeating dispatch whose runs return `R`.
pub struct ScheduleHandle<R> {
    id: i64,
    task: &'static str,
    backend: Arc<dyn Backend>,
    result: PhantomData<fn() -> R>,
}

impl<R> Clone for ScheduleHandle<R> {
    fn clone(&self) -> Self {
        ScheduleHandle {
            id: self.id,
            task: self.task,
            backend: Arc::clone(&self.backend),
            result: PhantomData,
        }
    }
}

impl<R> fmt::Debug for ScheduleHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScheduleHandle")
            .field("id", &self.id)
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

impl<R> ScheduleHandle<R> {
    pub(crate) fn new(id: i64, task: &'static str, backend: Arc<dyn Backend>) -> Self {
        ScheduleHandle {
            id,
            task,
            backend,
            result: PhantomData,
        }
    }
}

impl<R: DeserializeOwned> ScheduleHandle<R> {
    /// The schedule's id (`castor schedules` lists it).
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The schedule: its cadence, runs so far, next run.
    ///
    /// # Errors
    /// The schedule was removed, or a database error.
    pub fn info(&self) -> Result<ScheduleInfo, StatusError> {
        self.backend.schedule(self.id)
    }

    /// Every run so far, oldest first.
    ///
    /// # Errors
    /// A database error.
    pub fn runs(&self) -> Result<Vec<TaskHandle<R>>, StatusError> {
        Ok(self
            .backend
            .schedule_runs(self.id)?
            .into_iter()
            .map(|id| TaskHandle::dispatched(id, self.task, Arc::clone(&self.backend)))
            .collect())
    }

    /// The latest run, if there is one yet.
    ///
    /// # Errors
    /// A database error.
    pub fn latest(&self) -> Result<Option<TaskHandle<R>>, StatusError> {
        Ok(self.runs()?.pop())
    }

    /// Stops creating runs until [`resume`](Self::resume). Runs already created go on.
    ///
    /// # Errors
    /// The schedule was removed, or a database error.
    pub fn pause(&self) -> Result<(), StatusError> {
        self.backend.set_schedule_paused(self.id, true)
    }

    /// Creates runs again; ticks missed while paused follow the [`Missed`] policy.
    ///
    /// # Errors
    /// The schedule was removed, or a database error.
    pub fn resume(&self) -> Result<(), StatusError> {
        self.backend.set_schedule_paused(self.id, false)
    }

    /// Deletes the schedule; its runs stay.
    ///
    /// # Errors
    /// The schedule was already removed, or a database error.
    pub fn remove(&self) -> Result<(), StatusError> {
        self.backend.remove_schedule(self.id)
    }
}
